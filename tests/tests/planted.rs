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
    first_caught(PlantedBug::SuspicionNeverFires, CheckerKind::Completeness, (0..50).map(Scenario::swarm));
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
fn convergence_catches_missing_anti_entropy() {
    first_caught(PlantedBug::AntiEntropyDisabled, CheckerKind::Convergence, (200..260).map(Scenario::swarm));
}

#[test]
fn bounded_catches_piggybacking_past_the_datagram_limit() {
    first_caught(PlantedBug::PiggybackIgnoresLimit, CheckerKind::Bounded, (0..20).map(Scenario::swarm));
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
        first_caught_within(bug, checker, 60)
    }

    fn first_caught_within(bug: PlantedBug, checker: CheckerKind, seeds: u64) -> u64 {
        for seed in 0..seeds {
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
        first_caught(PlantedBug::ServesCorruptBlocks, CheckerKind::HydfsCorruptServed);
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
        // one of its holders is cut off, so more seeds are searched (first caught: seed 205).
        first_caught_within(PlantedBug::DeleteWithoutTombstone, CheckerKind::HydfsDeleted, 260);
    }

    #[test]
    fn leaked_blocks_catches_a_delete_that_keeps_blocks() {
        first_caught(PlantedBug::DeleteKeepsBlocks, CheckerKind::HydfsLeakedBlocks);
    }
}

mod rainstorm {
    //! Every RainStorm exactly-once checker is proven by a planted bug it catches, in the first
    //! RainStorm swarm seeds (and the same seed passes without the bug).
    use rainstorm_core::rainstorm::PlantedBug;
    use rainstorm_sim::{run_membership, CheckerKind, RunOptions, Scenario};

    fn first_caught(bug: PlantedBug, checkers: &[CheckerKind]) -> u64 {
        first_caught_within(bug, checkers, 200)
    }

    fn first_caught_within(bug: PlantedBug, checkers: &[CheckerKind], seeds: u64) -> u64 {
        for seed in 0..seeds {
            let s = Scenario::rainstorm_swarm(seed);
            let mut planted = s.clone();
            if let Some(w) = planted.rainstorm.as_mut() {
                w.config.planted = Some(bug);
            }
            let report = run_membership(&planted, &RunOptions::default());
            if let Some(kind) = checkers.iter().find(|k| report.caught(**k)) {
                let clean = run_membership(&s, &RunOptions::default());
                assert!(
                    clean.passed(),
                    "seed {seed} fails even without the planted bug: {:?}",
                    clean.violations
                );
                println!("{} caught by {kind} in rainstorm seed {seed}", bug.name());
                return seed;
            }
        }
        panic!("planted bug {} was never caught by {checkers:?}", bug.name());
    }

    #[test]
    fn committing_before_a_checkpoint_is_complete_duplicates_outputs() {
        first_caught(
            PlantedBug::CommitBeforeComplete,
            &[CheckerKind::RainstormDuplicate, CheckerKind::RainstormAggregate],
        );
    }

    #[test]
    fn a_source_resuming_a_line_late_loses_it() {
        first_caught(
            PlantedBug::SourceSkipsALine,
            &[CheckerKind::RainstormLoss, CheckerKind::RainstormOutput],
        );
    }

    #[test]
    fn a_sink_taking_old_attempts_duplicates_outputs() {
        first_caught(
            PlantedBug::SinkTakesOldAttempts,
            &[CheckerKind::RainstormDuplicate, CheckerKind::RainstormAggregate, CheckerKind::RainstormOutput],
        );
    }

    #[test]
    fn state_from_an_older_checkpoint_repeats_running_counts() {
        first_caught(
            PlantedBug::StateFromOlderCheckpoint,
            &[CheckerKind::RainstormDuplicate, CheckerKind::RainstormAggregate],
        );
    }

    #[test]
    fn unbounded_read_ahead_is_caught_by_the_buffer_bounds() {
        first_caught(PlantedBug::UnboundedReadAhead, &[CheckerKind::RainstormBounded]);
    }

    #[test]
    fn an_open_epoch_left_to_grow_is_caught_by_the_buffer_bounds() {
        // The bug shows only where commits lag while the pipeline runs on: rare in the swarm
        // (the first seed that shows it is past 400).
        first_caught_within(PlantedBug::OpenEpochUnbounded, &[CheckerKind::RainstormBounded], 600);
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
    fn job_files_left_behind_are_caught_by_the_cleanup_check() {
        first_caught(PlantedBug::KeepsJobFiles, &[CheckerKind::RainstormCleanup]);
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
