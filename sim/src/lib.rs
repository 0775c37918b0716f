//! # rainstorm-sim
//!
//! A deterministic simulator for RainStorm's sans-IO state machines. A run is a pure function of
//! a [`Scenario`]: one seed determines every node's RNG, every latency, loss and duplicate, and
//! the fault plan. Checkers in [`check`] watch every run; a failing run prints its seed and the
//! one command that replays it, and the trace hash proves a replay is the same run.
//!
//! * [`scenario`]: scenarios as plain data, the swarm generator and a proptest strategy;
//! * [`world`]: the event queue, network, processes and faults;
//! * [`check`]: the invariant checkers;
//! * [`named`]: the named scenarios for SWIM's known trouble spots;
//! * [`shrink`]: cutting a failing scenario of any layer down to a small one that still fails;
//! * [`capsule`]: scenarios saved as JSON files, and the command that replays any scenario;
//! * [`actor`]: the trait the simulator drives (implemented for `rainstorm_core::Node`).

pub mod actor;
pub mod capsule;
pub mod check;
pub mod disk;
pub mod hydfs;
pub mod named;
pub mod rainstorm;
pub mod scenario;
pub mod shrink;
pub mod trace;
pub mod world;

pub use actor::{Actor, ActorStart};
pub use check::{CheckerKind, Violation};
pub use scenario::{Fault, FaultAt, NetConfig, Scenario};
pub use world::{Report, RunOptions, World};

use rainstorm_core::Node;

/// Runs `scenario` with RainStorm's own membership, turning a panic into a violation.
pub fn run_membership(scenario: &Scenario, opts: &RunOptions) -> Report {
    run_actor::<Node>(scenario, opts)
}

/// Runs `scenario` with any membership implementation.
pub fn run_actor<A: Actor>(scenario: &Scenario, opts: &RunOptions) -> Report {
    let world = World::<A>::new(scenario.clone(), opts.clone());
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.run())) {
        Ok(report) => report,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Report {
                scenario: scenario.clone(),
                violations: vec![Violation {
                    at: rainstorm_core::Time::ZERO,
                    checker: CheckerKind::Panic,
                    detail: format!("a node panicked: {msg}"),
                }],
                trace_hash: String::from("none (panicked)"),
                trace_lines: Vec::new(),
                events: Vec::new(),
                stats: Default::default(),
                detections: Vec::new(),
                false_failures: 0,
                max_queue: 0,
                workload: None,
                job: None,
            }
        }
    }
}

/// The command that replays a swarm seed, with its readable trace.
pub fn replay_command(layer: &str, seed: u64, plant: Option<&str>) -> String {
    match plant {
        Some(bug) => format!(
            "cargo run --release --features planted-bugs -- sim {layer} --seed {seed} --plant {bug} --trace"
        ),
        None => format!("cargo run --release -- sim {layer} --seed {seed} --trace"),
    }
}
