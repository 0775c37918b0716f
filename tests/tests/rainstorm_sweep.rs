//! The RainStorm sweep: one job per swarm seed (5 to 8 nodes, generated inputs or windows of the
//! Traffic Signs data, the two demo applications and more operator pairs, 1 to 4 tasks per
//! stage), under up to two worker crashes at a time, restarts, pauses, partitions, loss, delay
//! and duplication, and in some seeds a crash of the leader. Each run is judged against the
//! single-process reference run, and by every HyDFS and membership checker.
//! `RAINSTORM_JOB_SEEDS=N` changes the count (default 1000). Each part also requires that at
//! least 80% of its seeds crash a node running one of the job's tasks while the job runs (most
//! jobs are paced to last a few seconds, and the first fault of each seed is such a crash).
//! A seeded random 5% of the seeds run twice and must give the same trace hash.

use rainstorm_sim::{run_membership, RunOptions, Scenario};

fn seeds() -> u64 {
    std::env::var("RAINSTORM_JOB_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

fn sweep_part(part: u64) {
    let (mut seeds_run, mut crashed) = (0u64, 0u64);
    rainstorm_tests::sweep_part_with(part, seeds(), Scenario::rainstorm_swarm, |report| {
        seeds_run += 1;
        crashed += report.job.as_ref().is_some_and(|j| j.crashes_while_running > 0) as u64;
    });
    println!("part {part}: {crashed} of {seeds_run} seeds crashed a task's node while the job ran");
    assert!(
        crashed * 5 >= seeds_run * 4,
        "only {crashed} of {seeds_run} seeds crashed a task's node mid-job"
    );
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
fn most_seeds_complete_their_job_and_many_resume_from_a_checkpoint() {
    // The sweep is only as strong as the jobs it runs: most must complete (not end with their
    // leader) and a fair share must roll back and resume tasks from a checkpoint.
    let (mut completed, mut rolled_back, mut resumed) = (0, 0, 0);
    for seed in 0..60 {
        let report = run_membership(&Scenario::rainstorm_swarm(seed), &RunOptions::default());
        let job = report.job.expect("a job");
        completed += job.completed_ms.is_some() as u32;
        rolled_back += (job.rollbacks > 0) as u32;
        resumed += (job.tasks_resumed > 0) as u32;
    }
    println!(
        "of 60 seeds: {completed} completed, {rolled_back} rolled back, {resumed} resumed from a checkpoint"
    );
    assert!(completed >= 45, "only {completed} of 60 jobs completed");
    assert!(rolled_back >= 30, "only {rolled_back} of 60 jobs rolled back");
    assert!(resumed >= 15, "only {resumed} of 60 jobs resumed a task from a checkpoint");
}

#[test]
fn output_resumes_within_a_second_of_detecting_two_crashed_workers() {
    let mut measured = 0;
    for seed in 1..=6 {
        let report =
            run_membership(&rainstorm_sim::named::workers_crash_mid_job(seed), &RunOptions::default());
        assert!(report.passed(), "seed {seed}: {:?}", report.violations);
        let job = report.job.expect("the scenario runs a job");
        assert!(job.completed_ms.is_some(), "seed {seed}: the job completed");
        for (detect, resume) in &job.recoveries {
            println!("seed {seed}: detected {detect} ms after the crashes, output resumed {resume} ms later");
            measured += 1;
        }
    }
    assert!(measured >= 4, "only {measured} of 6 runs measured a recovery");
}

/// Generated RainStorm scenarios from random seeds past the sweep's; on failure proptest
/// shrinks the scenario and prints it to save under `tests/scenarios/`. Release builds only
/// (the sweep covers the debug suite).
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
        fn generated_rainstorm_scenarios_pass(scenario in swarm_scenarios(Layer::Rainstorm)) {
            rainstorm_tests::generated_case(&scenario)?;
        }
    }
}
