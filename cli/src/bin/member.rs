//! `member`: a RainStorm node that joins the group through the introducer.
fn main() -> std::process::ExitCode {
    rainstorm_cli::node_cmd::main(rainstorm_core::membership::Role::Member)
}
