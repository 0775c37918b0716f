//! The HyDFS sweep: swarm scenarios (4 to 12 nodes, Zipf-skewed files from bytes to 3 MiB, up to
//! two crashes at a time, restarts, loss, partitions, pauses, disk corruption), each checked by
//! every HyDFS checker and every membership checker. `RAINSTORM_HYDFS_SEEDS=N` changes the count
//! (default 1000). Also: determinism of HyDFS runs.

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

#[test]
fn a_hydfs_seed_replays_to_the_same_trace_hash() {
    for seed in [0, 17, 4242] {
        let scenario = Scenario::hydfs_swarm(seed);
        let a = run_membership(&scenario, &RunOptions::default());
        let b = run_membership(&scenario, &RunOptions { trace_lines: true, record_events: false });
        assert_eq!(a.trace_hash, b.trace_hash, "HyDFS seed {seed} is not deterministic");
        assert_eq!(a.stats.stream_bytes, b.stats.stream_bytes);
        assert!(a.stats.stream_frames_sent > 100, "the workload ran");
    }
    let a = run_membership(&Scenario::hydfs_swarm(1), &RunOptions::default());
    let b = run_membership(&Scenario::hydfs_swarm(2), &RunOptions::default());
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
    use rainstorm_sim::{run_membership, RunOptions};

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 8,
            max_shrink_iters: 300,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn generated_hydfs_scenarios_pass(scenario in swarm_scenarios(Layer::Hydfs)) {
            let report = run_membership(&scenario, &RunOptions::default());
            prop_assert!(
                report.passed(),
                "violations {:?}\nscenario to save under tests/scenarios/:\n{}",
                report.violations,
                serde_json::to_string_pretty(&scenario).unwrap_or_default()
            );
        }
    }
}
