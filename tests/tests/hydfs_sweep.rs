//! The HyDFS sweep: swarm scenarios (4 to 12 nodes, Zipf-skewed files from bytes to 3 MiB, up to
//! two crashes at a time, restarts, loss, partitions, pauses, disk corruption), each checked by
//! every HyDFS checker and every membership checker. `RAINSTORM_HYDFS_SEEDS=N` changes the count
//! (default 1000); a seeded random 5% of them run twice and must give the same trace hash.

use rainstorm_sim::{run_membership, RunOptions, Scenario};

fn seeds() -> u64 {
    std::env::var("RAINSTORM_HYDFS_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

fn sweep_part(part: u64) {
    rainstorm_tests::sweep_part(part, seeds(), Scenario::hydfs_swarm);
}

#[test]
fn hydfs_sweep_part_0() {
    sweep_part(0);
}

#[test]
fn hydfs_sweep_part_1() {
    sweep_part(1);
}

#[test]
fn hydfs_sweep_part_2() {
    sweep_part(2);
}

#[test]
fn hydfs_sweep_part_3() {
    sweep_part(3);
}

/// Determinism itself is checked by the sweep, which runs a seeded random 5% of its seeds twice.
#[test]
fn different_hydfs_seeds_run_their_workloads_to_different_traces() {
    let a = run_membership(&Scenario::hydfs_swarm(1), &RunOptions::default());
    let b = run_membership(&Scenario::hydfs_swarm(2), &RunOptions::default());
    assert!(a.stats.stream_frames_sent > 100, "the workload ran");
    assert_ne!(a.trace_hash, b.trace_hash);
}

#[test]
fn a_hydfs_scenario_round_trips_as_json() {
    let s = Scenario::hydfs_swarm(5);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<Scenario>(&json).unwrap(), s);
}

/// Generated HyDFS scenarios from random seeds past the sweep's; on failure proptest shrinks
/// the scenario and prints it to save under `tests/scenarios/`. Release builds only (the sweep
/// covers the debug suite).
#[cfg(not(debug_assertions))]
mod generated {
    use proptest::prelude::*;
    use rainstorm_sim::capsule::Layer;
    use rainstorm_sim::shrink::swarm_scenarios;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 8,
            max_shrink_iters: 300,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn generated_hydfs_scenarios_pass(scenario in swarm_scenarios(Layer::Hydfs)) {
            rainstorm_tests::generated_case(&scenario)?;
        }
    }
}
