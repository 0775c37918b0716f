//! The RainStorm sweep: one job per swarm seed (5 to 8 nodes, generated inputs or windows of the
//! Traffic Signs data, the two demo applications and more operator pairs, 1 to 4 tasks per
//! stage), under up to two worker crashes at a time, restarts, pauses, partitions, loss, delay
//! and duplication, and in some seeds a crash of the leader. Each run is judged against the
//! single-process reference run, and by every HyDFS and membership checker.
//! `RAINSTORM_JOB_SEEDS=N` changes the count (default 1000). Also: determinism of job runs.

use rainstorm_sim::{run_membership, RunOptions, Scenario};

fn seeds() -> u64 {
    std::env::var("RAINSTORM_JOB_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

fn sweep_part(part: u64) {
    rainstorm_tests::sweep_part(part, seeds(), Scenario::rainstorm_swarm);
}

#[test]
fn rainstorm_sweep_part_0() {
    sweep_part(0);
}

#[test]
fn rainstorm_sweep_part_1() {
    sweep_part(1);
}

#[test]
fn rainstorm_sweep_part_2() {
    sweep_part(2);
}

#[test]
fn rainstorm_sweep_part_3() {
    sweep_part(3);
}

#[test]
fn a_rainstorm_seed_replays_to_the_same_trace_hash() {
    for seed in [0, 21, 4242] {
        let scenario = Scenario::rainstorm_swarm(seed);
        let a = run_membership(&scenario, &RunOptions::default());
        let b = run_membership(&scenario, &RunOptions { trace_lines: true, record_events: false });
        assert_eq!(a.trace_hash, b.trace_hash, "RainStorm seed {seed} is not deterministic");
        let job = a.job.expect("the scenario runs a job");
        assert!(job.job.is_some(), "seed {seed}: the job was submitted");
    }
}

#[test]
fn most_seeds_complete_their_job_and_some_restart_tasks() {
    // The sweep is only as strong as the jobs it runs: most must complete (not end with their
    // leader) and a fair share must see tasks restarted from their journals.
    let (mut completed, mut restarted, mut replayed) = (0, 0, 0);
    for seed in 0..60 {
        let report = run_membership(&Scenario::rainstorm_swarm(seed), &RunOptions::default());
        let job = report.job.expect("a job");
        completed += job.completed_ms.is_some() as u32;
        restarted += (job.restarts > 0) as u32;
        replayed += (job.recovered_records > 0) as u32;
    }
    println!("of 60 seeds: {completed} completed, {restarted} restarted tasks, {replayed} replayed journals");
    assert!(completed >= 45, "only {completed} of 60 jobs completed");
    assert!(restarted >= 10, "only {restarted} of 60 jobs restarted a task");
    assert!(replayed >= 5, "only {replayed} of 60 jobs replayed a journal");
}
