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
                false_failure_slots: Vec::new(),
                max_queue: 0,
                workload: None,
                job: None,
            }
        }
    }
}

/// The share of a sweep's seeds that are run a second time to prove the sweep deterministic, in
/// percent.
pub const DETERMINISM_PERCENT: u64 = 5;

/// The seeds of the sweep `start..start + count` that run twice: a random [`DETERMINISM_PERCENT`]
/// of them (at least one), spread over the whole range, in increasing order. The sample is drawn
/// from a seed made of `start` and `count`, so a sweep always checks the same seeds, and another
/// range checks others.
pub fn determinism_seeds(start: u64, count: u64) -> Vec<u64> {
    use rand::SeedableRng;
    if count == 0 {
        return Vec::new();
    }
    let take = (count * DETERMINISM_PERCENT).div_ceil(100).clamp(1, count);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(start.rotate_left(32) ^ count ^ 0x5eed_d0c5);
    let mut seeds: Vec<u64> = rand::seq::index::sample(&mut rng, count as usize, take as usize)
        .into_iter()
        .map(|i| start + i as u64)
        .collect();
    seeds.sort_unstable();
    seeds
}

/// Runs `first`'s scenario again, here with its readable trace and events recorded (which must
/// change nothing), and compares the trace hashes: a difference is an error naming both hashes
/// and `replay`, the command that replays the run.
pub fn check_replays_alike(first: &Report, replay: &str) -> Result<(), String> {
    let again = run_membership(&first.scenario, &RunOptions { trace_lines: true, record_events: true });
    if again.trace_hash == first.trace_hash {
        return Ok(());
    }
    Err(format!(
        "scenario {} (seed {}) is not deterministic: trace {} on the first run, {} on the second\nreplay: {replay}",
        first.scenario.name, first.scenario.seed, first.trace_hash, again.trace_hash
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn determinism_seeds_are_a_fixed_spread_sample_of_the_range() {
        let seeds = determinism_seeds(0, 2000);
        assert_eq!(seeds.len(), 100);
        assert!(seeds.windows(2).all(|w| w[0] < w[1]) && seeds.iter().all(|s| *s < 2000));
        assert!(seeds[0] < 500 && seeds[99] >= 1500, "spread over the range: {seeds:?}");
        assert_eq!(seeds, determinism_seeds(0, 2000));
        let later = determinism_seeds(1000, 2000);
        assert!(later.iter().all(|s| (1000..3000).contains(s)));
        assert_ne!(later.iter().map(|s| s - 1000).collect::<Vec<_>>(), seeds);
        assert_eq!(determinism_seeds(7, 3), determinism_seeds(7, 3));
        assert_eq!(determinism_seeds(7, 3).len(), 1);
        assert!(determinism_seeds(7, 0).is_empty());
    }
}
