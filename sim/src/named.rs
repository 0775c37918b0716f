//! Named scenarios: small, readable stories for SWIM's known trouble spots (identity renewal on
//! restart, members stuck dead after mass restarts, isolated members that never recover, stale
//! down-knowledge), run beside the random sweep. Each is calm apart from its story, so the strict
//! detection bound applies to its crashes.

use crate::scenario::{Fault, FaultAt, NetConfig, Scenario, Slot};
use rainstorm_core::membership::MembershipConfig;

/// The documented bound: a crash leaves every list within 10 s at a 1 s period.
pub const DOCUMENTED_ALL_LISTS_MS: u64 = 10_000;

fn story(name: &str, seed: u64, nodes: usize, suspicion: bool, faults: Vec<(u64, Fault)>) -> Scenario {
    let config = MembershipConfig { suspicion_at_start: suspicion, ..MembershipConfig::lan() };
    let calm_from_ms = faults.iter().map(|(t, _)| *t).max().unwrap_or(0) + 1;
    let mut s = Scenario {
        name: name.to_string(),
        seed,
        nodes,
        config,
        net: NetConfig {
            loss_permille: 10,
            duplicate_permille: 0,
            latency_min_ms: 1,
            latency_max_ms: 10,
            bandwidth_bytes_per_ms: 0,
            ..NetConfig::default()
        },
        clock_offsets_ms: Vec::new(),
        clock_drift_ppm: Vec::new(),
        faults: faults.into_iter().map(|(at_ms, fault)| FaultAt { at_ms, fault }).collect(),
        calm_from_ms,
        duration_ms: 0,
        strict_detection_ms: Some(DOCUMENTED_ALL_LISTS_MS),
        hydfs: None,
        rainstorm: None,
        cluster_key: false,
    };
    s.duration_ms = s.calm_from_ms + s.convergence_bound_ms();
    s
}

fn crash(node: Slot) -> Fault {
    Fault::Crash { node }
}

fn restart(node: Slot) -> Fault {
    Fault::Restart { node }
}

/// Two members crash in a calm 10-node cluster with suspicion on; every list drops them in 10 s.
pub fn calm_crashes_leave_every_list_within_bound(seed: u64) -> Scenario {
    story(
        "calm_crashes_leave_every_list_within_bound",
        seed,
        10,
        true,
        vec![(20_000, crash(3)), (20_000, crash(7))],
    )
}

/// Three members crash in a calm 32-node cluster in PingAck mode. Each member probes each other
/// only once per 31 periods, so meeting the bound depends on the DEL being disseminated.
pub fn calm_crashes_in_a_large_cluster(seed: u64) -> Scenario {
    let mut s = story(
        "calm_crashes_in_a_large_cluster",
        seed,
        32,
        false,
        vec![(30_000, crash(5)), (30_000, crash(17)), (45_000, crash(29))],
    );
    // Dissemination takes about log2(n) periods: two more than at n = 10.
    s.strict_detection_ms = Some(DOCUMENTED_ALL_LISTS_MS + 2_000);
    s
}

/// The same in PingAck mode: a missed ack (after the indirect round) is a failure.
pub fn calm_crashes_without_suspicion(seed: u64) -> Scenario {
    story("calm_crashes_without_suspicion", seed, 10, false, vec![(20_000, crash(3)), (35_000, crash(7))])
}

/// A member crashes and restarts at the same address within half a second: the old id is
/// removed everywhere and the new one is listed, never confused with the old.
pub fn fast_restart_at_same_address(seed: u64) -> Scenario {
    story("fast_restart_at_same_address", seed, 8, true, vec![(20_000, crash(4)), (20_500, restart(4))])
}

/// A member restarts after its wall clock was stepped back two minutes, on clocks that run up
/// to 1% fast or slow: the new process reads an earlier time than its predecessor joined at,
/// and still joins, under an id after it (never taken for the stale one).
pub fn restart_after_the_wall_clock_stepped_back(seed: u64) -> Scenario {
    let faults = vec![(15_000, clock_back(4)), (20_000, crash(4)), (20_500, restart(4))];
    drifting(story("restart_after_the_wall_clock_stepped_back", seed, 8, true, faults))
}

/// The same for the introducer, which starts on its own under its clock's earlier time while
/// the members still list its predecessor's later id: it renews past it once it hears of it.
pub fn introducer_restarts_after_its_wall_clock_stepped_back(seed: u64) -> Scenario {
    let faults = vec![(15_000, clock_back(0)), (20_000, restart(0))];
    drifting(story("introducer_restarts_after_its_wall_clock_stepped_back", seed, 8, true, faults))
}

fn clock_back(node: Slot) -> Fault {
    Fault::ClockJump { node, by_ms: -120_000 }
}

/// Wall clocks ten minutes ahead of simulated time (so a step back stays after their epoch),
/// running up to 1% fast or slow.
fn drifting(mut s: Scenario) -> Scenario {
    s.clock_offsets_ms = vec![600_000; s.nodes];
    s.clock_drift_ppm = (0..s.nodes).map(|i| [10_000, -10_000, 3_000, -7_000][i % 4]).collect();
    s.duration_ms = s.calm_from_ms + s.convergence_bound_ms();
    s
}

/// Every member, then the introducer, restarts in batches of three.
pub fn rolling_restart_in_batches(seed: u64) -> Scenario {
    let mut faults = Vec::new();
    for (batch, nodes) in [[1, 2, 3], [4, 5, 6], [7, 8, 9]].iter().enumerate() {
        for &n in nodes {
            faults.push((20_000 + 15_000 * batch as u64, restart(n)));
        }
    }
    faults.push((65_000, restart(0)));
    story("rolling_restart_in_batches", seed, 10, true, faults)
}

/// A live member stalls long enough to be declared failed; when it resumes it learns so and
/// rejoins under a new id.
pub fn live_member_wrongly_declared_failed_rejoins(seed: u64) -> Scenario {
    let mut s = story(
        "live_member_wrongly_declared_failed_rejoins",
        seed,
        8,
        true,
        vec![(20_000, Fault::Pause { node: 5, for_ms: 25_000 })],
    );
    s.strict_detection_ms = None;
    s
}

/// The introducer crashes: members keep working, a restarted member's join fails with a clear
/// error, and joins work again once the introducer is back.
pub fn introducer_crash_and_return(seed: u64) -> Scenario {
    story(
        "introducer_crash_and_return",
        seed,
        8,
        true,
        vec![(20_000, crash(0)), (26_000, crash(5)), (27_000, restart(5)), (45_000, restart(0))],
    )
}

/// One member is cut off from everyone for 30 s, then the partition heals; it ends as a member
/// again (under a new id, since the others declared it failed).
pub fn isolated_member_rejoins_after_heal(seed: u64) -> Scenario {
    let mut s = story(
        "isolated_member_rejoins_after_heal",
        seed,
        8,
        true,
        vec![(20_000, Fault::Partition { side: vec![3] }), (50_000, Fault::Heal)],
    );
    s.strict_detection_ms = None;
    s
}

/// A member leaves: every other member reports a leave, not a failure.
pub fn leave_is_reported_as_leave(seed: u64) -> Scenario {
    story("leave_is_reported_as_leave", seed, 10, false, vec![(20_000, Fault::Leave { node: 6 })])
}

/// Suspicion is switched off, then on again, from two different members; every member follows.
pub fn mode_switch_reaches_everyone(seed: u64) -> Scenario {
    story(
        "mode_switch_reaches_everyone",
        seed,
        10,
        true,
        vec![
            (20_000, Fault::SetSuspicion { node: 2, on: false }),
            (40_000, Fault::SetSuspicion { node: 6, on: true }),
        ],
    )
}

/// A member restarts and crashes again two seconds later, while the news of its join is still
/// being gossiped: stale ALIVE news must not cancel its suspicion.
pub fn member_crashes_right_after_joining(seed: u64) -> Scenario {
    story(
        "member_crashes_right_after_joining",
        seed,
        10,
        true,
        vec![(20_000, restart(4)), (22_000, crash(4))],
    )
}

/// A member stalls briefly (so it is suspected and refutes), then crashes while its ALIVE is
/// still being gossiped: that ALIVE carries the incarnation the new suspicion names, so it must
/// not cancel it.
pub fn member_crashes_while_its_refutation_spreads(seed: u64) -> Scenario {
    story(
        "member_crashes_while_its_refutation_spreads",
        seed,
        10,
        true,
        vec![(20_000, Fault::Pause { node: 4, for_ms: 2_500 }), (22_700, crash(4))],
    )
}

/// A 5%-loss cluster with suspicion on that runs for ten minutes: nobody live is declared failed.
pub fn lossy_cluster_stays_accurate(seed: u64) -> Scenario {
    let mut s = story("lossy_cluster_stays_accurate", seed, 10, true, vec![(600_000, Fault::Heal)]);
    s.net.loss_permille = 50;
    s
}

/// Two groups of members (1–4 and 5–8) are cut off inside: every pair within a group cannot
/// reach each other, both ways, for three minutes, while members 0 and 9 and the other group
/// reach everyone. A direct probe across a cut fails, and only the indirect probe (PING-REQ)
/// through a helper saves the target from being suspected; the three members cut from a target
/// accuse it independently, so under Lifeguard their suspicions confirm each other and time out
/// as fast as without it. Nobody live is declared failed.
pub fn cut_pairs_are_bridged_by_indirect_probes(seed: u64) -> Scenario {
    let mut faults = Vec::new();
    for group in [[1, 2, 3, 4], [5, 6, 7, 8]] {
        for a in group {
            let others: Vec<Slot> = group.iter().copied().filter(|b| *b != a).collect();
            faults.push((20_000, Fault::OneWay { from: vec![a], to: others }));
        }
    }
    faults.push((200_000, Fault::Heal));
    story("cut_pairs_are_bridged_by_indirect_probes", seed, 10, true, faults)
}

/// One member of ten is slow for five minutes (at times every frame it receives is handed to it
/// 0.2–2 s late, see `Fault::Slow`), and another crashes in the middle: nobody live is declared failed, the slow
/// member included, and the crash still leaves every list within the documented bound.
pub fn slow_member_is_not_declared_failed(seed: u64) -> Scenario {
    story(
        "slow_member_is_not_declared_failed",
        seed,
        10,
        true,
        vec![(20_000, Fault::Slow { node: 4, for_ms: 300_000 }), (170_000, crash(7)), (320_000, Fault::Heal)],
    )
}

/// Every named scenario, by name.
pub fn all(seed: u64) -> Vec<Scenario> {
    vec![
        calm_crashes_leave_every_list_within_bound(seed),
        calm_crashes_without_suspicion(seed),
        calm_crashes_in_a_large_cluster(seed),
        fast_restart_at_same_address(seed),
        restart_after_the_wall_clock_stepped_back(seed),
        introducer_restarts_after_its_wall_clock_stepped_back(seed),
        rolling_restart_in_batches(seed),
        live_member_wrongly_declared_failed_rejoins(seed),
        introducer_crash_and_return(seed),
        isolated_member_rejoins_after_heal(seed),
        leave_is_reported_as_leave(seed),
        mode_switch_reaches_everyone(seed),
        member_crashes_right_after_joining(seed),
        member_crashes_while_its_refutation_spreads(seed),
        lossy_cluster_stays_accurate(seed),
        cut_pairs_are_bridged_by_indirect_probes(seed),
        slow_member_is_not_declared_failed(seed),
    ]
}

/// A HyDFS story: the seed's workload on `nodes` calm nodes (1% loss, no partitions), with only
/// the given faults; the faults stop at `calm_from_ms`.
fn hydfs_story(
    name: &str,
    seed: u64,
    nodes: usize,
    calm_from_ms: u64,
    faults: Vec<(u64, Fault)>,
) -> Scenario {
    let mut s = Scenario::hydfs_swarm(seed);
    s.name = name.to_string();
    s.nodes = nodes;
    s.net = NetConfig {
        loss_permille: 10,
        duplicate_permille: 0,
        latency_min_ms: 1,
        latency_max_ms: 10,
        bandwidth_bytes_per_ms: 125_000,
        ..NetConfig::default()
    };
    s.clock_offsets_ms.clear();
    s.config.suspicion_at_start = true;
    s.faults = faults.into_iter().map(|(at_ms, fault)| FaultAt { at_ms, fault }).collect();
    s.calm_from_ms = calm_from_ms;
    if let Some(w) = s.hydfs.as_mut() {
        w.clients = vec![1, nodes / 2, nodes - 1];
        w.start_ms = 5_000;
        w.stop_ms = calm_from_ms;
        w.think_ms = 300;
    }
    s.end_faults();
    s
}

/// Two nodes crash in the same millisecond while clients write: every file that had two of its
/// three replicas on them survives on the third, and nothing acknowledged is lost.
pub fn hydfs_two_replicas_crash_at_once(seed: u64) -> Scenario {
    hydfs_story(
        "hydfs_two_replicas_crash_at_once",
        seed,
        7,
        40_000,
        vec![(20_000, crash(2)), (20_000, crash(3))],
    )
}

/// Blocks rot on several nodes (no crash): the scrubber or a read finds each, a replica repairs
/// it, and no read ever returns a rotten byte.
pub fn hydfs_corrupt_blocks_are_repaired(seed: u64) -> Scenario {
    let faults =
        (0..8).map(|i| (12_000 + i * 3_000, Fault::Corrupt { node: 1 + (i as usize % 5) })).collect();
    hydfs_story("hydfs_corrupt_blocks_are_repaired", seed, 6, 40_000, faults)
}

/// Every member restarts in turn, each coming back with what its disk synced; what it missed
/// while down is pulled again before the next one goes.
pub fn hydfs_rolling_restart(seed: u64) -> Scenario {
    let faults = (1..6).map(|n| (10_000 + n as u64 * 12_000, Fault::Restart { node: n })).collect();
    hydfs_story("hydfs_rolling_restart", seed, 6, 80_000, faults)
}

/// A busy cluster's stream connections break again and again (short partitions that cut one
/// node off, then a crash and a restart) and half of what is in flight on a breaking connection
/// is lost, a fifth arrives twice: nothing acknowledged is lost, no write lands twice, every read
/// is whole.
pub fn hydfs_connections_break_while_files_move(seed: u64) -> Scenario {
    // Off the workload's 100 ms ticks, so that requests are on the way when a connection breaks.
    let mut faults = Vec::new();
    for i in 0..8u64 {
        let at = 10_007 + i * 2_531;
        faults.push((at, Fault::Partition { side: vec![1 + (i as usize % 5)] }));
        faults.push((at + 700, Fault::Heal));
    }
    faults.push((31_013, crash(3)));
    faults.push((34_000, restart(3)));
    let mut s = hydfs_story("hydfs_connections_break_while_files_move", seed, 6, 40_000, faults);
    s.net.broken_stream_drop_permille = 500;
    s.net.broken_stream_duplicate_permille = 200;
    if let Some(w) = s.hydfs.as_mut() {
        w.think_ms = 100;
        w.large_permille = 40;
    }
    s
}

/// A client and one other node are cut off from the rest just as the client starts creating
/// its files, for longer than an operation may take: creates in flight fail after some replica
/// on the client's side stored them. Each is cancelled before it is reported, so once the
/// partition heals none of them appears (a replica that kept its copy would spread it).
pub fn hydfs_failed_creates_stay_failed(seed: u64) -> Scenario {
    let faults = vec![(5_150, Fault::Partition { side: vec![1, 2] }), (72_000, Fault::Heal)];
    let mut s = hydfs_story("hydfs_failed_creates_stay_failed", seed, 6, 75_000, faults);
    if let Some(w) = s.hydfs.as_mut() {
        w.clients = vec![1];
        w.think_ms = 50;
    }
    s
}

/// Every named HyDFS scenario.
pub fn hydfs_all(seed: u64) -> Vec<Scenario> {
    vec![
        hydfs_two_replicas_crash_at_once(seed),
        hydfs_corrupt_blocks_are_repaired(seed),
        hydfs_rolling_restart(seed),
        hydfs_connections_break_while_files_move(seed),
        hydfs_failed_creates_stay_failed(seed),
    ]
}

/// A fault-free RainStorm job with four tasks per stage that spread every input batch over all
/// four tasks of the next stage, batches of four tuples, and no checkpoint or linger flush
/// before the end: coalesced, the tasks send about one batch per four tuples; without
/// coalescing, one per input batch and downstream task.
pub fn coalescing_scenario() -> Scenario {
    use crate::rainstorm::harness::InputSpec;
    use rainstorm_core::Millis;
    let mut s = Scenario::rainstorm_swarm(1);
    s.name = "batches_are_coalesced_across_input_batches".to_owned();
    s.faults.clear();
    s.net = NetConfig {
        loss_permille: 0,
        duplicate_permille: 0,
        latency_min_ms: 1,
        latency_max_ms: 2,
        bandwidth_bytes_per_ms: 0,
        broken_stream_drop_permille: 0,
        broken_stream_duplicate_permille: 0,
    };
    let start = s.rainstorm.as_ref().map_or(0, |w| w.start_ms);
    s.calm_from_ms = start + 500;
    if let Some(w) = s.rainstorm.as_mut() {
        w.input = InputSpec::Generated { lines: 800 };
        w.op1 = "grep:,".to_owned();
        w.op2 = "count:Category".to_owned();
        w.tasks = 4;
        w.rate = None;
        w.leader_crash_ms = None;
        w.config = rainstorm_core::rainstorm::RainstormConfig {
            batch_tuples: 4,
            linger: Millis(1_000),
            checkpoint_interval: Millis(1_000),
            ..rainstorm_core::rainstorm::RainstormConfig::default()
        };
    }
    s.end_faults();
    s
}

/// A RainStorm job paced to run for about six seconds on a calm cluster (no loss), as the
/// demo's are: two nodes running its tasks crash in the same millisecond two seconds in, and
/// come back only after the job. One of them coordinates the writes to the job's destination
/// (its first replica), so the job's commits were waiting on it. Its output must resume within
/// a second of the crashes' being detected (the resume checker).
pub fn workers_crash_mid_job(seed: u64) -> Scenario {
    use crate::rainstorm::harness::InputSpec;
    let mut s = Scenario::rainstorm_swarm(seed);
    s.name = "workers_crash_mid_job".to_owned();
    s.nodes = 8;
    s.net = NetConfig {
        loss_permille: 0,
        duplicate_permille: 0,
        latency_min_ms: 1,
        latency_max_ms: 5,
        bandwidth_bytes_per_ms: 0,
        broken_stream_drop_permille: 0,
        broken_stream_duplicate_permille: 0,
    };
    s.clock_offsets_ms.clear();
    s.config.suspicion_at_start = true;
    let Some(w) = s.rainstorm.as_mut() else { return s };
    w.leader = 1;
    w.reader = 2;
    w.input = InputSpec::TrafficSigns { max_lines: 600 };
    w.tasks = 3;
    // Slow enough that the job still runs once every member dropped the crashed workers (its
    // sources read the backlog at once after the rollback).
    w.rate = Some(50);
    w.leader_crash_ms = None;
    let crash_at = w.start_ms + 2_000;
    s.calm_from_ms = crash_at + 15_000;
    let ring = rainstorm_core::hydfs::Ring::new((0..s.nodes).map(crate::world::slot_addr));
    let coordinator = ring.replicas("out/job.txt", 1)[0];
    let coordinator = (0..s.nodes).find(|i| crate::world::slot_addr(*i) == coordinator).unwrap_or(0);
    // The leader and the reader are spared: crash the coordinator unless it is one of them.
    let first = if coordinator == w.leader || coordinator == w.reader || coordinator == 0 {
        Fault::CrashTaskHost { pick: seed }
    } else {
        Fault::Crash { node: coordinator }
    };
    s.faults = vec![
        FaultAt { at_ms: crash_at, fault: first },
        FaultAt { at_ms: crash_at, fault: Fault::CrashTaskHost { pick: seed / 2 + 1 } },
        FaultAt { at_ms: s.calm_from_ms, fault: Fault::RestartCrashed { pick: 0 } },
        FaultAt { at_ms: s.calm_from_ms, fault: Fault::RestartCrashed { pick: 1 } },
    ];
    s.end_faults();
    s
}

/// Every named RainStorm scenario.
pub fn rainstorm_all(seed: u64) -> Vec<Scenario> {
    vec![coalescing_scenario(), workers_crash_mid_job(seed)]
}
