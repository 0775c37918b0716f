//! `rainstorm`: the RainStorm tool. Runs a local cluster, talks to running nodes, runs
//! simulations and benchmarks.

mod bench;
mod sim_cmd;

use clap::{Parser, Subcommand};
use rainstorm_cli::{cluster, ctl};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "rainstorm", version, about = "RainStorm: SWIM membership, HyDFS and stream processing", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Start a local cluster: an introducer and members as separate processes on loopback.
    Cluster(cluster::ClusterArgs),
    /// Give a running node one console command through its control socket.
    Ctl(ctl::CtlArgs),
    /// Run deterministic simulations of a layer under seeded faults, and replay failures.
    Sim(sim_cmd::SimArgs),
    /// Run benchmarks and print their tables.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Top::Cluster(args) => cluster::run(args),
        Top::Ctl(args) => return ctl::run(args),
        Top::Sim(args) => sim_cmd::run(args),
        Top::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
