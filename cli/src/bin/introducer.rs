//! `introducer`: the RainStorm node that onboards new members (and is a member itself).
fn main() -> std::process::ExitCode {
    rainstorm_cli::node_cmd::main(rainstorm_core::membership::Role::Introducer)
}
