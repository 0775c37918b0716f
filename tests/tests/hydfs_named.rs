//! The named HyDFS stories (two replicas crashing at once, rotting blocks, a rolling restart,
//! connections breaking with frames in flight, creates failing behind a partition), each over
//! several seeds, checked by every checker.

use rainstorm_sim::{named, run_membership, RunOptions};
use rainstorm_tests::assert_passed;

#[test]
fn two_replicas_crashing_at_once_lose_nothing() {
    for seed in 1..=4 {
        let report = run_membership(&named::hydfs_two_replicas_crash_at_once(seed), &RunOptions::default());
        assert_passed(&report);
        assert!(report.stats.stream_frames_sent > 200, "seed {seed}: the workload ran");
    }
}

#[test]
fn corrupt_blocks_are_repaired_and_never_served() {
    for seed in 1..=4 {
        let s = named::hydfs_corrupt_blocks_are_repaired(seed);
        let report = run_membership(&s, &RunOptions { trace_lines: true, record_events: false });
        assert_passed(&report);
        let found = report.trace_lines.iter().filter(|l| l.contains("corrupt part")).count();
        let rotted = report.trace_lines.iter().filter(|l| l.contains("corrupted")).count();
        assert!(rotted > 0, "seed {seed}: blocks rotted");
        assert!(found > 0, "seed {seed}: no corruption was detected");
    }
}

#[test]
fn a_rolling_restart_keeps_every_file() {
    for seed in 1..=3 {
        assert_passed(&run_membership(&named::hydfs_rolling_restart(seed), &RunOptions::default()));
    }
}

#[test]
fn connections_breaking_with_frames_in_flight_lose_nothing_acknowledged() {
    let (mut lost, mut duplicated) = (0, 0);
    for seed in 1..=4 {
        let report =
            run_membership(&named::hydfs_connections_break_while_files_move(seed), &RunOptions::default());
        assert_passed(&report);
        lost += report.stats.stream_frames_lost;
        duplicated += report.stats.stream_frames_duplicated;
    }
    assert!(lost > 0 && duplicated > 0, "frames in flight: {lost} lost, {duplicated} duplicated");
}

#[test]
fn creates_that_failed_behind_a_partition_never_appear() {
    let mut cancelled = 0;
    for seed in 1..=3 {
        let report = run_membership(&named::hydfs_failed_creates_stay_failed(seed), &RunOptions::default());
        assert_passed(&report);
        cancelled += report.workload.as_ref().map_or(0, |w| w.creates_cancelled);
    }
    assert!(cancelled > 0, "some create failed after a replica stored it, and was cancelled");
}
