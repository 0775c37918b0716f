//! The random sweep: thousands of swarm scenarios (3 to 64 nodes, 0–20% loss, crashes, restarts,
//! pauses, partitions, leaves, mode switches, clock offsets), each checked by every membership
//! checker. `RAINSTORM_SIM_SEEDS=100000 cargo test --release -p rainstorm-tests` soaks longer.
//! A seeded random 5% of the seeds run twice and must give the same trace hash (determinism).
//! Also: shrinking scenarios from proptest (the saved scenarios under `tests/scenarios/` replay
//! in `capsules.rs`).

use proptest::prelude::*;
use rainstorm_sim::scenario::scenario_strategy;
use rainstorm_sim::{run_membership, RunOptions, Scenario};
use rainstorm_tests::sweep_seeds;

fn sweep_part(part: u64) {
    rainstorm_tests::sweep_part(part, sweep_seeds(), Scenario::swarm);
}

#[test]
fn swarm_sweep_part_0() {
    sweep_part(0);
}

#[test]
fn swarm_sweep_part_1() {
    sweep_part(1);
}

#[test]
fn swarm_sweep_part_2() {
    sweep_part(2);
}

#[test]
fn swarm_sweep_part_3() {
    sweep_part(3);
}

/// Determinism itself is checked by the sweep, which runs a seeded random 5% of its seeds twice.
#[test]
fn different_seeds_give_different_trace_hashes() {
    let a = run_membership(&Scenario::swarm(1), &RunOptions::default());
    let b = run_membership(&Scenario::swarm(2), &RunOptions::default());
    assert_ne!(a.trace_hash, b.trace_hash, "different seeds must give different traces");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Generated scenarios; on failure proptest shrinks to a minimal fault plan. Save the
    /// printed scenario under `tests/scenarios/` so every later `cargo test` replays it.
    #[test]
    fn generated_scenarios_pass(scenario in scenario_strategy()) {
        rainstorm_tests::generated_case(&scenario)?;
    }
}
