//! `rainstorm`: the RainStorm tool. Runs a local cluster, talks to running nodes, runs
//! simulations and benchmarks.

mod bench;
mod gen_signs;
mod sim_cmd;

use clap::{Parser, Subcommand};
use rainstorm_cli::{cluster, ctl, demo, node_cmd};
use rainstorm_core::membership::Role;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "rainstorm", version, about = "RainStorm: SWIM membership, HyDFS and stream processing", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
#[command(
    after_help = "Run one node with `rainstorm member [OPTIONS]` or `rainstorm introducer [OPTIONS]` (the same as the\n`member` and `introducer` programs; see `rainstorm member --help`)."
)]
enum Top {
    /// The main demonstration: a 10-process cluster runs App 1 and App 2 as operator programs,
    /// two workers are killed in each job, and the outputs are checked against a reference run.
    Demo(demo::DemoArgs),
    /// Start a local cluster: an introducer and members as separate processes on loopback.
    Cluster(cluster::ClusterArgs),
    /// Give a running node one console command through its control socket.
    Ctl(ctl::CtlArgs),
    /// Run deterministic simulations of a layer under seeded faults, and replay failures.
    Sim(sim_cmd::SimArgs),
    /// Run benchmarks and print their tables.
    Bench(bench::BenchArgs),
    /// Write a seeded input of any size shaped like data/Traffic_Signs.csv (header, N records).
    GenSigns(gen_signs::GenSignsArgs),
    /// Make a new random cluster key (32 bytes as 64 hex digits): printed, or written to a new
    /// file only its owner may read, for `cluster_key_file` / `--cluster-key-file`.
    Keygen(KeygenArgs),
}

#[derive(clap::Args)]
struct KeygenArgs {
    /// Write the key to this new file (mode 0600; an existing file is never overwritten).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = rainstorm_runtime::config::new_key()?;
    match args.out {
        None => println!("{key}"),
        Some(path) => {
            rainstorm_cli::cluster::write_key_file(&path, &key)?;
            eprintln!("wrote a new cluster key to {} (mode 0600)", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // `rainstorm member ...` / `rainstorm introducer ...` run a node, exactly as the `member`
    // and `introducer` binaries do; `rainstorm cluster` starts its nodes this way.
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_default();
    let first = args.next();
    let role = match first.as_ref().and_then(|a| a.to_str()) {
        Some("member") => Some(Role::Member),
        Some("introducer") => Some(Role::Introducer),
        _ => None,
    };
    if let (Some(role), Some(name)) = (role, first) {
        let mut display = program;
        display.push(" ");
        display.push(name);
        return node_cmd::main_from(role, std::iter::once(display).chain(args));
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Top::Demo(args) => demo::run(args),
        Top::Cluster(args) => cluster::run(args),
        Top::Ctl(args) => return ctl::run(args),
        Top::Sim(args) => sim_cmd::run(args),
        Top::Bench(args) => bench::run(args),
        Top::GenSigns(args) => gen_signs::run(args),
        Top::Keygen(args) => keygen(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
