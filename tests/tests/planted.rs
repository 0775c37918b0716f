//! Every membership checker is proven by a planted bug that it catches. Run with
//! `cargo test -p rainstorm-tests --features planted-bugs --test planted`.
#![cfg(feature = "planted-bugs")]

use rainstorm_core::membership::PlantedBug;
use rainstorm_sim::{named, run_membership, CheckerKind, RunOptions, Scenario};

fn planted(mut s: Scenario, bug: PlantedBug) -> Scenario {
    s.config.planted = Some(bug);
    s
}

/// Runs scenarios until one is caught by `checker`; returns the caught scenario's name and seed.
fn first_caught(
    bug: PlantedBug,
    checker: CheckerKind,
    scenarios: impl IntoIterator<Item = Scenario>,
) -> (String, u64) {
    for s in scenarios {
        let clean = run_membership(&s, &RunOptions::default());
        assert!(clean.passed(), "{} fails even without the planted bug: {:?}", s.name, clean.violations);
        let report = run_membership(&planted(s.clone(), bug), &RunOptions::default());
        if report.caught(checker) {
            println!("{} caught by {checker} in {} (seed {})", bug.name(), s.name, s.seed);
            return (s.name, s.seed);
        }
    }
    panic!("planted bug {} was never caught by the {checker} checker", bug.name());
}

#[test]
fn completeness_catches_a_suspicion_timer_that_never_fires() {
    // A calm cluster, where Lifeguard's confirmations arrive and the strict bound applies, then
    // the swarm (mostly faulty, where the longer unconfirmed bound applies).
    let calm = (1..=3).map(named::calm_crashes_leave_every_list_within_bound);
    first_caught(
        PlantedBug::SuspicionNeverFires,
        CheckerKind::Completeness,
        calm.chain((0..50).map(Scenario::swarm)),
    );
}

#[test]
fn strict_completeness_catches_del_not_disseminated() {
    first_caught(
        PlantedBug::DelNotDisseminated,
        CheckerKind::StrictCompleteness,
        (1..=3).map(named::calm_crashes_in_a_large_cluster),
    );
}

#[test]
fn accuracy_catches_suspicion_without_timeout() {
    first_caught(
        PlantedBug::SuspicionWithoutTimeout,
        CheckerKind::Accuracy,
        (1..=3).map(named::lossy_cluster_stays_accurate),
    );
}

#[test]
fn accuracy_catches_refutation_that_keeps_the_incarnation() {
    first_caught(
        PlantedBug::RefutationKeepsIncarnation,
        CheckerKind::Accuracy,
        (1..=3).map(named::lossy_cluster_stays_accurate),
    );
}

#[test]
fn accuracy_catches_probes_without_ping_req() {
    // Pairs cut off from each other, bridged by every other member: without the indirect
    // probe a pair's members suspect each other at each probe, and some suspicion times out.
    first_caught(
        PlantedBug::NoIndirectProbes,
        CheckerKind::Accuracy,
        (1..=3).map(named::cut_pairs_are_bridged_by_indirect_probes),
    );
}

#[test]
fn convergence_catches_missing_anti_entropy() {
    first_caught(PlantedBug::AntiEntropyDisabled, CheckerKind::Convergence, (200..260).map(Scenario::swarm));
}

#[test]
fn bounded_catches_piggybacking_past_the_datagram_limit() {
    // Datagrams of 400 bytes, so that a join wave queues more updates than one holds.
    let small_datagrams = (0..20).map(Scenario::swarm).map(|mut s| {
        s.config.max_datagram_bytes = 400;
        s
    });
    first_caught(PlantedBug::PiggybackIgnoresLimit, CheckerKind::Bounded, small_datagrams);
}

#[test]
fn convergence_catches_join_times_that_trust_a_stepped_back_clock() {
    first_caught(
        PlantedBug::JoinTimeTrustsTheClock,
        CheckerKind::Convergence,
        (1..=3).map(named::restart_after_the_wall_clock_stepped_back),
    );
}

#[test]
fn wire_catches_a_replay_window_that_refuses_reordered_frames() {
    let keyed = (0..200).map(Scenario::swarm).filter(|s| s.cluster_key).take(40);
    first_caught(PlantedBug::ReplayWindowOfOne, CheckerKind::Wire, keyed);
}

/// Lifeguard's local health: a member whose probes all go unanswered stretches its probe period
/// to (local_health_max + 1) periods; with the LHM stuck at 0 it keeps probing every period.
#[test]
fn local_health_check_catches_a_multiplier_that_never_grows() {
    use rainstorm_core::membership::MembershipConfig;
    let healthy = MembershipConfig::lan();
    let stretched = healthy.protocol_period * (u64::from(healthy.local_health_max) + 1);
    let gaps = rainstorm_tests::probe_gaps_when_nothing_answers(healthy.clone(), 12);
    assert!(gaps.contains(&stretched), "without the bug the period stretches: {gaps:?}");
    let planted = MembershipConfig { planted: Some(PlantedBug::LocalHealthNeverGrows), ..healthy };
    let gaps = rainstorm_tests::probe_gaps_when_nothing_answers(planted.clone(), 12);
    assert!(
        !gaps.contains(&stretched),
        "planted bug {} was never caught by the local health check: {gaps:?}",
        PlantedBug::LocalHealthNeverGrows.name()
    );
    println!(
        "{} caught by the local health check (probe gaps {gaps:?})",
        PlantedBug::LocalHealthNeverGrows.name()
    );
}

#[test]
fn no_panic_checker_reports_a_panicking_node() {
    use rainstorm_core::command::Command;
    use rainstorm_core::node::NodeEvent;
    use rainstorm_core::{Channel, Lane, MemberId, NodeAddr, Time, Transmit};
    use rainstorm_sim::{Actor, ActorStart};
    /// A node that sends one frame to the introducer and panics on the first frame it gets.
    struct Fragile(MemberId, bool);
    impl Actor for Fragile {
        fn start(s: &ActorStart) -> Self {
            Fragile(MemberId::new(s.addr, s.now.as_millis()), false)
        }
        fn handle_frame(&mut self, _: Time, _: Channel, _: &[u8]) {
            panic!("planted: frame handler panics");
        }
        fn handle_send_failed(&mut self, _: Time, _: NodeAddr) {}
        fn handle_timeout(&mut self, _: Time) {}
        fn command(&mut self, _: Time, _: Command) {}
        fn poll_transmit(&mut self) -> Option<Transmit> {
            let introducer = rainstorm_sim::world::slot_addr(0);
            if self.1 || self.0.addr == introducer {
                return None;
            }
            self.1 = true;
            Some(Transmit {
                to: introducer,
                channel: Channel::Datagram,
                lane: Lane::Control,
                payload: vec![1],
            })
        }
        fn poll_event(&mut self) -> Option<NodeEvent> {
            None
        }
        fn poll_timeout(&self) -> Option<Time> {
            None
        }
        fn id(&self) -> MemberId {
            self.0
        }
        fn is_joined(&self) -> bool {
            false
        }
        fn view(&self) -> Vec<MemberId> {
            Vec::new()
        }
        fn suspicion_enabled(&self) -> bool {
            true
        }
        fn queue_lengths(&self) -> Vec<(&'static str, usize)> {
            Vec::new()
        }
    }
    let mut calm = Scenario::swarm(3);
    calm.net.loss_permille = 0;
    let report = rainstorm_sim::run_actor::<Fragile>(&calm, &RunOptions::default());
    assert!(report.caught(CheckerKind::Panic));
}

mod hydfs {
    //! Every HyDFS checker is proven by a planted bug it catches, in the first HyDFS swarm seeds.
    use rainstorm_core::hydfs::PlantedBug;
    use rainstorm_sim::{run_membership, CheckerKind, RunOptions, Scenario};

    fn first_caught(bug: PlantedBug, checker: CheckerKind) -> u64 {
        first_caught_within(bug, checker, 0..60)
    }

    fn first_caught_within(bug: PlantedBug, checker: CheckerKind, seeds: std::ops::Range<u64>) -> u64 {
        for seed in seeds {
            let s = Scenario::hydfs_swarm(seed);
            let mut planted = s.clone();
            if let Some(w) = planted.hydfs.as_mut() {
                w.config.planted = Some(bug);
            }
            let report = run_membership(&planted, &RunOptions::default());
            if report.caught(checker) {
                let clean = run_membership(&s, &RunOptions::default());
                assert!(
                    clean.passed(),
                    "seed {seed} fails even without the planted bug: {:?}",
                    clean.violations
                );
                println!("{} caught by {checker} in hydfs seed {seed}", bug.name());
                return seed;
            }
        }
        panic!("planted bug {} was never caught by the {checker} checker", bug.name());
    }

    #[test]
    fn durability_catches_an_ack_before_sync() {
        first_caught(PlantedBug::AckBeforeSync, CheckerKind::HydfsDurability);
    }

    #[test]
    fn durability_catches_an_ack_when_a_flush_behind_begins() {
        first_caught(PlantedBug::AckWhenFlushBegins, CheckerKind::HydfsDurability);
    }

    #[test]
    fn durability_catches_an_ack_after_one_replica() {
        first_caught(PlantedBug::AckAfterOneReplica, CheckerKind::HydfsDurability);
    }

    #[test]
    fn identical_catches_a_merge_that_skips_replicas() {
        first_caught(PlantedBug::MergeSkipsReplicas, CheckerKind::HydfsIdentical);
    }

    #[test]
    fn loss_catches_a_last_writer_wins_merge() {
        first_caught(PlantedBug::MergeLastWriterWins, CheckerKind::HydfsLoss);
    }

    #[test]
    fn order_catches_a_merge_that_reverses_order() {
        first_caught(PlantedBug::MergeReversesOrder, CheckerKind::HydfsOrder);
    }

    #[test]
    fn read_your_writes_catches_a_cache_that_ignores_own_writes() {
        first_caught(PlantedBug::CacheIgnoresOwnWrites, CheckerKind::HydfsReadYourWrites);
    }

    #[test]
    fn placement_catches_missing_re_replication() {
        first_caught(PlantedBug::NoReReplication, CheckerKind::HydfsPlacement);
    }

    #[test]
    fn placement_catches_unowned_copies_kept() {
        first_caught(PlantedBug::KeepsUnownedCopies, CheckerKind::HydfsPlacement);
    }

    #[test]
    fn corrupt_served_catches_reads_without_checksums() {
        // Needs a rotten block read before a restart or a scrub finds it (every seed has a power
        // cut, and a restart checks every block): a release sweep finds seed 114 first.
        first_caught_within(PlantedBug::ServesCorruptBlocks, CheckerKind::HydfsCorruptServed, 114..300);
    }

    #[test]
    fn loss_catches_an_index_that_is_never_synced() {
        // Every seed has a power cut: without a synced index, the acknowledged writes are on disk
        // with nothing naming them, on every replica at once.
        first_caught(PlantedBug::IndexNotSynced, CheckerKind::HydfsLoss);
    }

    #[test]
    fn deleted_catches_tombstones_forgotten_at_a_restart() {
        // Needs a holder that missed a delete (down or cut off) and a power cut after it: a
        // release sweep finds seed 17 first.
        first_caught_within(PlantedBug::TombstonesNotDurable, CheckerKind::HydfsDeleted, 17..260);
    }

    #[test]
    fn recovered_catches_a_recovery_that_trusts_its_index() {
        // Needs a block that rotted on a node before a restart: a release sweep finds seed 17 first.
        first_caught_within(PlantedBug::RecoveryTrustsBlocks, CheckerKind::HydfsRecovered, 17..260);
    }

    #[test]
    fn read_your_writes_catches_a_restarted_node_serving_a_stale_copy() {
        // Needs a client reading, from a restarted replica, a file it appended to while that
        // replica was down: a release sweep finds seed 45 first.
        first_caught_within(PlantedBug::RecoveredCopyServedStale, CheckerKind::HydfsReadYourWrites, 45..400);
    }

    #[test]
    fn failed_create_catches_a_failure_reported_without_a_cancel() {
        let s = rainstorm_sim::named::hydfs_failed_creates_stay_failed(1);
        let clean = run_membership(&s, &RunOptions::default());
        assert!(clean.passed(), "fails even without the planted bug: {:?}", clean.violations);
        let mut planted = s.clone();
        if let Some(w) = planted.hydfs.as_mut() {
            w.config.planted = Some(PlantedBug::FailedCreateKept);
        }
        assert!(run_membership(&planted, &RunOptions::default()).caught(CheckerKind::HydfsFailedCreate));
    }

    #[test]
    fn create_once_catches_a_non_exclusive_create() {
        first_caught(PlantedBug::CreateNotExclusive, CheckerKind::HydfsCreateOnce);
    }

    #[test]
    fn liveness_catches_a_merge_that_never_answers() {
        first_caught(PlantedBug::MergeNeverAnswers, CheckerKind::HydfsLiveness);
    }

    #[test]
    fn chunking_catches_unchunked_transfers() {
        first_caught(PlantedBug::UnchunkedTransfers, CheckerKind::HydfsChunking);
    }

    #[test]
    fn deleted_catches_a_delete_without_tombstones() {
        // Needs a copy that missed the delete to come back; few swarm seeds delete a file while
        // one of its holders is down or cut off (a release sweep of 260 seeds: 17, 23, ...), so
        // the search starts at the first of them.
        first_caught_within(PlantedBug::DeleteWithoutTombstone, CheckerKind::HydfsDeleted, 17..260);
    }

    #[test]
    fn leaked_blocks_catches_a_delete_that_keeps_blocks() {
        first_caught(PlantedBug::DeleteKeepsBlocks, CheckerKind::HydfsLeakedBlocks);
    }
}

mod rainstorm {
    //! Every RainStorm checker is proven by a planted bug it catches, each in a RainStorm swarm
    //! seed recorded from a release sweep (`sim rainstorm --seeds N --plant <bug>` lists the
    //! seeds that catch a bug, with the checkers that fire) or in a named scenario, and the same
    //! run passes without the bug. Should the swarm's draws change, the seeds after the recorded
    //! one are tried.
    use rainstorm_core::rainstorm::PlantedBug;
    use rainstorm_sim::world::Report;
    use rainstorm_sim::{run_membership, CheckerKind, RunOptions, Scenario};

    /// Seeds tried from the recorded one on.
    const WINDOW: u64 = 10;

    // The first seed of the sweep that catches each bug with its checker (a release sweep of
    // 80 seeds; 2,000 for the open epoch): `sim rainstorm --seeds 80 --plant <bug>`.
    const SEED_COMMIT_BEFORE_COMPLETE: u64 = 7;
    const SEED_SOURCE_SKIPS_A_LINE: u64 = 3;
    const SEED_SINK_TAKES_OLD_ATTEMPTS: u64 = 31;
    const SEED_STATE_FROM_OLDER_CHECKPOINT: u64 = 8;
    const SEED_OUTPUT_APPENDED_TWICE: u64 = 0;
    const SEED_UNBOUNDED_READ_AHEAD: u64 = 5;
    const SEED_OPEN_EPOCH_UNBOUNDED: u64 = 1918;
    const SEED_KEEPS_JOB_FILES: u64 = 0;
    const SEED_TAKEOVER_FROM_STALE_POINT: u64 = 32;
    // A successor that does not fence the destination is caught where an append of the leader
    // it took the job from surfaces after it measured the destination (a crashed leader that
    // restarts with it on its disk): rarer (a sweep of 1,500 seeds).
    const SEED_TAKEOVER_WITHOUT_FENCE: u64 = 441;
    // A successor that reads after a merge on too few copies is caught where the copies it
    // merged are new to the destination (their nodes restarted and rejoined) while those that
    // took the last appends of the leader it took over from are out of its view.
    const SEED_TAKEOVER_ON_A_PARTIAL_MERGE: u64 = 539;

    fn with_bug(s: &Scenario, bug: PlantedBug) -> Scenario {
        let mut planted = s.clone();
        if let Some(w) = planted.rainstorm.as_mut() {
            w.config.planted = Some(bug);
        }
        planted
    }

    /// The first seed from `recorded` on (within [`WINDOW`]) whose run `checker` fails with `bug`
    /// planted and which passes without it.
    fn caught_from(bug: PlantedBug, checker: CheckerKind, recorded: u64) -> u64 {
        for seed in recorded..recorded + WINDOW {
            let s = Scenario::rainstorm_swarm(seed);
            let report = run_membership(&with_bug(&s, bug), &RunOptions::default());
            if report.caught(checker) {
                let clean = run_membership(&s, &RunOptions::default());
                assert!(
                    clean.passed(),
                    "seed {seed} fails even without the planted bug: {:?}",
                    clean.violations
                );
                println!("{} caught by {checker} in rainstorm seed {seed} ({})", bug.name(), fired(&report));
                return seed;
            }
        }
        panic!("planted bug {} was never caught by {checker} from seed {recorded} on", bug.name());
    }

    /// The checkers that fired in `report`.
    fn fired(report: &Report) -> String {
        let kinds: std::collections::BTreeSet<String> =
            report.violations.iter().map(|v| v.checker.to_string()).collect();
        kinds.into_iter().collect::<Vec<_>>().join(", ")
    }

    #[test]
    fn committing_before_a_checkpoint_is_complete_duplicates_outputs() {
        caught_from(
            PlantedBug::CommitBeforeComplete,
            CheckerKind::RainstormDuplicate,
            SEED_COMMIT_BEFORE_COMPLETE,
        );
    }

    #[test]
    fn a_source_resuming_a_line_late_loses_it() {
        caught_from(PlantedBug::SourceSkipsALine, CheckerKind::RainstormLoss, SEED_SOURCE_SKIPS_A_LINE);
    }

    #[test]
    fn a_sink_taking_old_attempts_duplicates_outputs() {
        caught_from(
            PlantedBug::SinkTakesOldAttempts,
            CheckerKind::RainstormDuplicate,
            SEED_SINK_TAKES_OLD_ATTEMPTS,
        );
    }

    #[test]
    fn state_from_an_older_checkpoint_breaks_the_running_counts() {
        caught_from(
            PlantedBug::StateFromOlderCheckpoint,
            CheckerKind::RainstormAggregate,
            SEED_STATE_FROM_OLDER_CHECKPOINT,
        );
    }

    #[test]
    fn outputs_appended_twice_to_the_destination_are_caught_by_the_output_check() {
        // The console reports each output once: only the destination's lines show the bug.
        let seed = caught_from(
            PlantedBug::OutputAppendedTwice,
            CheckerKind::RainstormOutput,
            SEED_OUTPUT_APPENDED_TWICE,
        );
        let s = with_bug(&Scenario::rainstorm_swarm(seed), PlantedBug::OutputAppendedTwice);
        let report = run_membership(&s, &RunOptions::default());
        assert_eq!(fired(&report), "rainstorm-output", "{:?}", report.violations);
    }

    #[test]
    fn a_job_whose_last_epoch_is_never_committed_is_caught_by_the_liveness_check() {
        // A fault-free job: nothing but the bug keeps it from completing.
        use rainstorm_sim::named::coalescing_scenario;
        let clean = coalescing_scenario();
        let report = run_membership(&clean, &RunOptions::default());
        assert!(report.passed(), "{:?}", report.violations);
        let report =
            run_membership(&with_bug(&clean, PlantedBug::LastEpochNeverCommitted), &RunOptions::default());
        assert_eq!(fired(&report), "rainstorm-liveness", "{:?}", report.violations);
    }

    #[test]
    fn unbounded_read_ahead_is_caught_by_the_buffer_bounds() {
        caught_from(PlantedBug::UnboundedReadAhead, CheckerKind::RainstormBounded, SEED_UNBOUNDED_READ_AHEAD);
    }

    #[test]
    fn an_open_epoch_left_to_grow_is_caught_by_the_buffer_bounds() {
        // The bug shows only where commits lag while the pipeline runs on: rare in the swarm.
        caught_from(PlantedBug::OpenEpochUnbounded, CheckerKind::RainstormBounded, SEED_OPEN_EPOCH_UNBOUNDED);
    }

    #[test]
    fn waiting_out_timeouts_after_a_crash_is_caught_by_the_resume_check() {
        use rainstorm_core::hydfs::PlantedBug as HydfsBug;
        use rainstorm_sim::named::workers_crash_mid_job;
        let caught = (1..=6).find(|seed| {
            let clean = workers_crash_mid_job(*seed);
            let mut planted = clean.clone();
            if let Some(w) = planted.hydfs.as_mut() {
                w.config.planted = Some(HydfsBug::WriteFailoverWaits);
            }
            let report = run_membership(&planted, &RunOptions::default());
            report.caught(CheckerKind::RainstormResume) && {
                let clean = run_membership(&clean, &RunOptions::default());
                assert!(clean.passed(), "seed {seed} fails without the planted bug: {:?}", clean.violations);
                true
            }
        });
        assert!(caught.is_some(), "write-failover-waits was never caught by the resume check");
    }

    #[test]
    fn a_successor_resuming_from_a_stale_point_duplicates_outputs() {
        caught_from(
            PlantedBug::TakeoverFromStalePoint,
            CheckerKind::RainstormDuplicate,
            SEED_TAKEOVER_FROM_STALE_POINT,
        );
    }

    #[test]
    fn a_successor_that_does_not_fence_the_destination_lets_the_old_leader_commit_too() {
        caught_from(
            PlantedBug::TakeoverWithoutFence,
            CheckerKind::RainstormOutput,
            SEED_TAKEOVER_WITHOUT_FENCE,
        );
    }

    #[test]
    fn a_successor_reading_after_a_merge_on_too_few_copies_duplicates_outputs() {
        caught_from(
            PlantedBug::TakeoverOnAPartialMerge,
            CheckerKind::RainstormDuplicate,
            SEED_TAKEOVER_ON_A_PARTIAL_MERGE,
        );
    }

    #[test]
    fn job_files_left_behind_are_caught_by_the_cleanup_check() {
        caught_from(PlantedBug::KeepsJobFiles, CheckerKind::RainstormCleanup, SEED_KEEPS_JOB_FILES);
    }

    #[test]
    fn batches_not_coalesced_are_caught_by_the_batch_count() {
        use rainstorm_sim::named::coalescing_scenario;
        let clean = coalescing_scenario();
        let report = run_membership(&clean, &RunOptions::default());
        assert!(report.passed(), "{:?}", report.violations);
        let mut planted = clean;
        if let Some(w) = planted.rainstorm.as_mut() {
            w.config.planted = Some(PlantedBug::NoCoalescing);
        }
        let report = run_membership(&planted, &RunOptions::default());
        assert!(report.caught(CheckerKind::RainstormCoalescing), "not caught: {:?}", report.violations);
    }
}

#[test]
fn node_messages_check_catches_a_replay_window_that_refuses_reordered_frames() {
    use rainstorm_core::membership::MembershipConfig;
    use rainstorm_fuzz_checks::node::{reordered_and_stale_script, run_script};
    let script = reordered_and_stale_script();
    run_script(&script, MembershipConfig::lan());
    let planted =
        MembershipConfig { planted: Some(PlantedBug::ReplayWindowOfOne), ..MembershipConfig::lan() };
    let caught = std::panic::catch_unwind(|| run_script(&script, planted)).expect_err("not caught");
    let message = caught.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("replay guard's verdict"), "caught for another reason: {message}");
}

#[test]
fn node_messages_check_catches_replay_windows_shared_by_the_lanes() {
    use rainstorm_core::membership::MembershipConfig;
    use rainstorm_fuzz_checks::node::{reordered_and_stale_script, run_script};
    let script = reordered_and_stale_script();
    run_script(&script, MembershipConfig::lan());
    let planted =
        MembershipConfig { planted: Some(PlantedBug::ReplayLanesShareAWindow), ..MembershipConfig::lan() };
    let caught = std::panic::catch_unwind(|| run_script(&script, planted)).expect_err("not caught");
    let message = caught.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("replay guard's verdict"), "caught for another reason: {message}");
}

mod shrinking {
    //! A sweep seed that a planted bug makes fail shrinks to a smaller scenario that a checker
    //! which caught it still catches, and that replays bit for bit from its JSON. The shrinks
    //! are bounded to a few runs to keep the suite fast; `sim <layer> --seed N --plant BUG
    //! --shrink` goes further.
    use rainstorm_sim::shrink::{shrink, Shrunk, Size};
    use rainstorm_sim::{run_membership, RunOptions, Scenario};

    fn shrinks_and_replays(original: Scenario, max_runs: u32) -> Shrunk {
        let shrunk = shrink(&original, max_runs, |_, _| {}).expect("the planted bug is caught");
        let (before, after) = (Size::of(&original), Size::of(shrunk.minimal()));
        println!("{}: {before} -> {after} in {} runs", original.name, shrunk.runs);
        assert!(after.smaller_than(&before), "{before} -> {after}");
        assert!(shrunk.runs <= max_runs + 1, "the shrink is bounded");
        let caught_before: Vec<_> = shrunk.original_violations.iter().map(|v| v.checker).collect();
        assert!(shrunk.report.violations.iter().any(|v| caught_before.contains(&v.checker)));
        let json = serde_json::to_string_pretty(shrunk.minimal()).expect("a scenario is JSON");
        let replayed: Scenario = serde_json::from_str(&json).expect("and back");
        let report = run_membership(&replayed, &RunOptions::default());
        assert_eq!(report.trace_hash, shrunk.report.trace_hash, "the JSON replays the same run");
        shrunk
    }

    #[test]
    fn a_hydfs_seed_caught_by_a_planted_bug_shrinks() {
        let mut s = Scenario::hydfs_swarm(0);
        if let Some(w) = s.hydfs.as_mut() {
            w.config.planted = Some(rainstorm_core::hydfs::PlantedBug::AckBeforeSync);
        }
        shrinks_and_replays(s, 8);
    }

    #[test]
    fn a_rainstorm_seed_caught_by_a_planted_bug_shrinks() {
        let mut s = Scenario::rainstorm_swarm(3);
        if let Some(w) = s.rainstorm.as_mut() {
            w.config.planted = Some(rainstorm_core::rainstorm::PlantedBug::SourceSkipsALine);
        }
        shrinks_and_replays(s, 8);
    }

    /// Two of the saved scenarios are these seeds shrunk further (by `--shrink`), saved without
    /// their planted bug: with it, they still catch it.
    #[test]
    fn saved_scenarios_catch_the_bugs_they_were_shrunk_from() {
        use rainstorm_sim::{capsule, CheckerKind};
        let load = |name: &str| {
            capsule::load(&rainstorm_tests::capsule_dir().join(name)).unwrap_or_else(|e| panic!("{e}"))
        };
        let mut files = load("hydfs-one-client-creates-and-reads-one-file.json");
        if let Some(w) = files.hydfs.as_mut() {
            w.config.planted = Some(rainstorm_core::hydfs::PlantedBug::AckBeforeSync);
        }
        assert!(run_membership(&files, &RunOptions::default()).caught(CheckerKind::HydfsDurability));
        let mut job = load("rainstorm-task-host-crashes-mid-job.json");
        if let Some(w) = job.rainstorm.as_mut() {
            w.config.planted = Some(rainstorm_core::rainstorm::PlantedBug::SourceSkipsALine);
        }
        assert!(run_membership(&job, &RunOptions::default()).caught(CheckerKind::RainstormLoss));
    }
}
