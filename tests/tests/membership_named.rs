//! Named scenarios: SWIM's known trouble spots as small stories, each checked by every checker
//! and by assertions about what its story must show.

use rainstorm_core::membership::{FailureCause, MembershipEvent};
use rainstorm_core::MemberId;
use rainstorm_sim::named;
use rainstorm_sim::world::Report;
use rainstorm_sim::RunOptions;
use rainstorm_tests::run_and_check;

fn run(scenario: rainstorm_sim::Scenario) -> Report {
    run_and_check(&scenario, &RunOptions { trace_lines: false, record_events: true })
}

fn events(report: &Report) -> impl Iterator<Item = (u64, usize, &MembershipEvent)> {
    report.events.iter().map(|(t, slot, e)| (t.as_millis(), *slot, e))
}

/// Ids a slot joined under, in order.
fn ids_of(report: &Report, slot: usize) -> Vec<MemberId> {
    events(report)
        .filter(|(_, s, _)| *s == slot)
        .filter_map(|(_, _, e)| match e {
            MembershipEvent::SelfJoined { id, .. } => Some(*id),
            _ => None,
        })
        .collect()
}

#[test]
fn calm_crashes_leave_every_list_within_bound() {
    for seed in 1..=5 {
        let report = run(named::calm_crashes_leave_every_list_within_bound(seed));
        assert_eq!(report.detections.len(), 2);
        for d in &report.detections {
            let all = d.all_removed_ms.expect("every list dropped the crashed member");
            assert!(all <= named::DOCUMENTED_ALL_LISTS_MS, "seed {seed}: {all} ms");
        }
    }
}

#[test]
fn calm_crashes_without_suspicion() {
    for seed in 1..=5 {
        let report = run(named::calm_crashes_without_suspicion(seed));
        // PingAck mode: failures come from missed acks, never from suspicion timeouts.
        assert!(!events(&report).any(|(_, _, e)| matches!(
            e,
            MembershipEvent::MemberFailed { cause: FailureCause::SuspicionTimeout, .. }
        )));
        assert!(report.detections.iter().all(|d| d.all_removed_ms.is_some()));
    }
}

#[test]
fn calm_crashes_in_a_large_cluster() {
    let report = run(named::calm_crashes_in_a_large_cluster(1));
    assert_eq!(report.detections.len(), 3);
}

#[test]
fn fast_restart_at_same_address() {
    let report = run(named::fast_restart_at_same_address(1));
    let ids = ids_of(&report, 4);
    assert_eq!(ids.len(), 2, "the restarted process joins under a second id");
    assert_eq!(ids[0].addr, ids[1].addr);
    assert!(ids[1].join_time > ids[0].join_time);
}

/// Every id a slot joined under is later than the one before, whatever its clock read.
fn joins_again_under_later_ids(report: &Report, slot: usize) {
    let ids = ids_of(report, slot);
    assert!(ids.len() >= 2, "slot {slot} joins again after its restart: {ids:?}");
    assert!(ids.windows(2).all(|w| w[1].join_time > w[0].join_time), "slot {slot}: {ids:?}");
}

#[test]
fn restart_after_the_wall_clock_stepped_back() {
    joins_again_under_later_ids(&run(named::restart_after_the_wall_clock_stepped_back(1)), 4);
}

#[test]
fn introducer_restarts_after_its_wall_clock_stepped_back() {
    // The introducer starts the group on its own, under whatever its clock reads (no one to
    // ask), then renews past its predecessor as soon as it hears of it.
    let report = run(named::introducer_restarts_after_its_wall_clock_stepped_back(1));
    let ids = ids_of(&report, 0);
    let (first, last) = (ids[0], ids[ids.len() - 1]);
    assert!(ids.len() >= 3 && last.join_time > first.join_time, "{ids:?}");
}

#[test]
fn rolling_restart_in_batches() {
    let report = run(named::rolling_restart_in_batches(1));
    for slot in 0..10 {
        assert_eq!(ids_of(&report, slot).len(), 2, "slot {slot} restarted once");
    }
}

#[test]
fn live_member_wrongly_declared_failed_rejoins() {
    let report = run(named::live_member_wrongly_declared_failed_rejoins(1));
    assert!(
        events(&report).any(|(_, s, e)| s == 5 && matches!(e, MembershipEvent::SelfDeclaredFailed { .. }))
    );
    let ids = ids_of(&report, 5);
    assert_eq!(ids.len(), 2, "it rejoins as a new member");
}

#[test]
fn introducer_crash_and_return() {
    let report = run(named::introducer_crash_and_return(1));
    let failed_while_down = events(&report).any(|(t, s, e)| {
        s == 5 && (27_000..45_000).contains(&t) && matches!(e, MembershipEvent::JoinFailed { .. })
    });
    assert!(failed_while_down, "a join while the introducer is down fails with an error");
    let joined_after = events(&report)
        .any(|(t, s, e)| s == 5 && t >= 45_000 && matches!(e, MembershipEvent::SelfJoined { .. }));
    assert!(joined_after, "the join works once the introducer is back");
    // Members kept working meanwhile: nobody but the crashed ones was declared failed.
    assert!(!events(&report).any(|(t, _, e)| (20_000..45_000).contains(&t)
        && matches!(e, MembershipEvent::MemberFailed { cause: FailureCause::SuspicionTimeout, member }
            if member.addr != rainstorm_sim::world::slot_addr(0) && member.addr != rainstorm_sim::world::slot_addr(5))));
}

#[test]
fn isolated_member_rejoins_after_heal() {
    let report = run(named::isolated_member_rejoins_after_heal(1));
    assert!(ids_of(&report, 3).len() >= 2, "the isolated member ends under a new id");
}

#[test]
fn leave_is_reported_as_leave() {
    let report = run(named::leave_is_reported_as_leave(1));
    let left: Vec<usize> = events(&report)
        .filter(|(_, _, e)| matches!(e, MembershipEvent::MemberLeft { member } if member.addr == rainstorm_sim::world::slot_addr(6)))
        .map(|(_, s, _)| s)
        .collect();
    assert_eq!(left.len(), 9, "all nine others report the leave");
    assert!(!events(&report).any(|(_, _, e)| matches!(
        e,
        MembershipEvent::MemberFailed { member, .. } if member.addr == rainstorm_sim::world::slot_addr(6)
    )));
}

#[test]
fn mode_switch_reaches_everyone() {
    let report = run(named::mode_switch_reaches_everyone(1));
    for on in [false, true] {
        let switched = events(&report)
            .filter(|(_, _, e)| matches!(e, MembershipEvent::ModeChanged { suspicion } if *suspicion == on))
            .count();
        assert!(switched >= 9, "suspicion {on} reached {switched} members");
    }
}

#[test]
fn member_crashes_right_after_joining() {
    run(named::member_crashes_right_after_joining(1));
}

#[test]
fn member_crashes_while_its_refutation_spreads() {
    for seed in 1..=5 {
        run(named::member_crashes_while_its_refutation_spreads(seed));
    }
}

#[test]
fn lossy_cluster_stays_accurate() {
    let report = run(named::lossy_cluster_stays_accurate(1));
    assert_eq!(report.false_failures, 0);
}

#[test]
fn cut_pairs_are_bridged_by_indirect_probes() {
    for seed in 1..=2 {
        let report = run(named::cut_pairs_are_bridged_by_indirect_probes(seed));
        assert_eq!(report.false_failures, 0, "seed {seed}");
    }
}

#[test]
fn slow_member_is_not_declared_failed() {
    for seed in 1..=3 {
        let report = run(named::slow_member_is_not_declared_failed(seed));
        assert_eq!(report.false_failures, 0, "seed {seed}");
        // The slow member was suspected now and then, and refuted in time.
        let refuted =
            events(&report).any(|(_, slot, e)| slot == 4 && matches!(e, MembershipEvent::SelfRefuted { .. }));
        assert!(refuted, "seed {seed}: the slow member was never even suspected");
    }
}

/// Lifeguard's local health multiplier, seen from outside: a member whose probes all go
/// unanswered stretches its probe period up to (local_health_max + 1) periods; without Lifeguard
/// it never does.
#[test]
fn unanswered_probes_raise_local_health_and_stretch_the_probe_period() {
    use rainstorm_core::membership::MembershipConfig;
    use rainstorm_tests::probe_gaps_when_nothing_answers;
    let cfg = MembershipConfig { suspicion_at_start: true, ..MembershipConfig::lan() };
    let gaps = probe_gaps_when_nothing_answers(cfg.clone(), 12);
    let period = cfg.protocol_period;
    assert_eq!(gaps[0], period, "a healthy node probes once per period");
    let longest = *gaps.iter().max().expect("gaps");
    assert_eq!(longest, period * (cfg.local_health_max as u64 + 1), "the LHM reaches its bound: {gaps:?}");
    let off = probe_gaps_when_nothing_answers(MembershipConfig { lifeguard: false, ..cfg }, 12);
    assert!(off.iter().all(|g| *g == period), "without Lifeguard the period never stretches: {off:?}");
}
