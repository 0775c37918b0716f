//! `rainstorm`: the RainStorm tool. Runs simulations and benchmarks.

mod bench;
mod sim_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "rainstorm", version, about = "RainStorm: SWIM membership, HyDFS and stream processing", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Run deterministic simulations of a layer under seeded faults, and replay failures.
    Sim(sim_cmd::SimArgs),
    /// Run benchmarks and print their tables.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
