//! RainStorm's limits in the simulator: jobs that merge their destination as they go stay exact
//! under the swarm's faults, and a batch over `max_batch_tuples` fails its job with the reason.

use rainstorm_sim::{run_membership, RunOptions, Scenario};

#[test]
fn jobs_that_merge_their_destination_every_few_appends_stay_exact() {
    let mut merged = 0;
    for seed in 0..12 {
        let mut scenario = Scenario::rainstorm_swarm(seed);
        scenario.rainstorm.as_mut().expect("a job").config.merge_output_appends = 2;
        let opts = RunOptions { trace_lines: true, record_events: false };
        let report = rainstorm_tests::run_and_check(&scenario, &opts);
        merged += report.trace_lines.iter().any(|l| l.contains("merged out/job.txt")) as u32;
    }
    assert!(merged >= 6, "only {merged} of 12 jobs merged their destination");
}

#[test]
fn a_batch_over_the_tuple_limit_fails_the_job_with_the_reason() {
    let mut scenario = (0..100)
        .map(Scenario::rainstorm_swarm)
        .find(|s| {
            s.rainstorm.as_ref().is_some_and(|j| j.config.batch_tuples >= 16 && j.leader_crash_ms.is_none())
        })
        .expect("a seed with batches of 16 tuples or more");
    scenario.faults.clear();
    scenario.rainstorm.as_mut().expect("a job").config.max_batch_tuples = 1;
    let report = run_membership(&scenario, &RunOptions::default());
    let job = report.job.expect("a job");
    let reason = job.failed.expect("the job failed");
    assert!(reason.contains("is over the 1-tuple limit (max_batch_tuples)"), "{reason}");
}
