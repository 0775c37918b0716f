//! Invariant checkers for membership, fed by the simulator with ground truth and node output.
//!
//! * **completeness**: a member id whose process crashed, left or renewed its id leaves every
//!   live list within the deterministic own-probe bound, counted from when the lister could
//!   first know: each member probes every other at least once per 2(n−1) periods, so within
//!   W = (2(n−1)+2) periods every live member has probed the dead id, failed, and suspected it.
//!   Without Lifeguard the bound is W plus the suspicion timeout. Under Lifeguard a suspicion
//!   waits `suspicion_max_mult` times longer until k = `suspicion_confirmations` other accusers
//!   confirm it, so the bound depends on whether confirmations can arrive:
//!   - *confirmed* (the strict bound): while at least k + 1 live members run (the accuser and k
//!     confirmers), nobody is paused or slow, no link is cut and loss is at most 5%, every live
//!     member's own accusation is gossiped within W, each carried λ⌈log₂(n+1)⌉ times (the
//!     retransmit limit, one period each at worst; an epidemic's spread, which the strict bounds
//!     of the named scenarios count on too); with k of them in hand a suspicion ends at its
//!     shortest timeout. Bound: W + retransmit limit · T + the suspicion timeout.
//!   - *unconfirmed* otherwise, and for local health recovery after such a window (a raised LHM
//!     falls one step per acknowledged probe, so max·(max+1)/2 stretched periods): W + the
//!     longest (unconfirmed) suspicion timeout + that recovery.
//!
//!   A dead id is held to the strict bound unless a window where confirmations are not assured
//!   (with its recovery tail) overlaps the time since the lister could first know.
//! * **strict completeness** (scenarios that set `strict_detection_ms`): every crash leaves every
//!   list within the documented bound;
//! * **accuracy**: in PingAck+S mode, a live member whose messages get through (no partition
//!   but small disjoint groups of members cut off from each other that every other member
//!   reaches, so that some helper of every indirect probe bridges the cut, loss ≤ 5%,
//!   no pause longer than the suspicion timeout, latency well under the ping timeout) is never
//!   declared failed by anyone's own probe or timer. A slow member (`Fault::Slow`: every frame
//!   handed to it up to 2 s late, its timers on time) answers, late: it may be declared failed
//!   (its acks miss the ping timeout at every prober, whose suspicions confirm each other, and
//!   its refutation comes late), but under Lifeguard it must not declare healthy members failed
//!   (its local health stretches its ping timeout past its delay, and its lone accusations wait
//!   unconfirmed); without Lifeguard its accusations are excused too;
//! * **convergence**: after the faults stop, every live member lists exactly the other live
//!   members and agrees on the suspicion mode;
//! * **bounded**: every internal queue stays within a bound of the number of ids ever seen, and
//!   every datagram fits the datagram limit.
//!
//! Each checker is proven by a planted bug (feature `planted-bugs`) that a test shows it catches.

use crate::scenario::{Scenario, Slot};
use rainstorm_core::membership::{FailureCause, MembershipEvent};
use rainstorm_core::{MemberId, Time};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Which invariant a violation broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckerKind {
    Completeness,
    StrictCompleteness,
    Accuracy,
    Convergence,
    Bounded,
    Panic,
    HydfsDurability,
    HydfsCreateOnce,
    HydfsReadYourWrites,
    HydfsOrder,
    HydfsLoss,
    HydfsCorruptServed,
    HydfsIdentical,
    HydfsPlacement,
    HydfsLiveness,
    HydfsChunking,
    HydfsDeleted,
    HydfsLeakedBlocks,
    /// A create reported as failed (and cancelled) was served or kept afterwards.
    HydfsFailedCreate,
    /// A restarted node's recovered index named a part whose block is missing from its disk
    /// or fails its checksum.
    HydfsRecovered,
    RainstormOutput,
    RainstormDuplicate,
    RainstormLoss,
    RainstormAggregate,
    RainstormLiveness,
    /// A RainStorm task or sink held more bytes of a kind than its settings allow.
    RainstormBounded,
    /// RainStorm tasks sent more batches than coalescing allows.
    RainstormCoalescing,
    /// A finished job's own files (its checkpoint log) were still in HyDFS long after it ended.
    RainstormCleanup,
    /// A job's commits did not resume soon enough after its leader detected a worker's crash.
    RainstormResume,
    Wire,
}

impl fmt::Display for CheckerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckerKind::Completeness => "completeness",
            CheckerKind::StrictCompleteness => "strict-completeness",
            CheckerKind::Accuracy => "accuracy",
            CheckerKind::Convergence => "convergence",
            CheckerKind::Bounded => "bounded",
            CheckerKind::Wire => "wire",
            CheckerKind::Panic => "no-panic",
            CheckerKind::HydfsDurability => "hydfs-durability",
            CheckerKind::HydfsCreateOnce => "hydfs-create-once",
            CheckerKind::HydfsReadYourWrites => "hydfs-read-your-writes",
            CheckerKind::HydfsOrder => "hydfs-order",
            CheckerKind::HydfsLoss => "hydfs-loss",
            CheckerKind::HydfsCorruptServed => "hydfs-corrupt-served",
            CheckerKind::HydfsIdentical => "hydfs-identical",
            CheckerKind::HydfsPlacement => "hydfs-placement",
            CheckerKind::HydfsLiveness => "hydfs-liveness",
            CheckerKind::HydfsChunking => "hydfs-chunking",
            CheckerKind::HydfsDeleted => "hydfs-deleted",
            CheckerKind::HydfsLeakedBlocks => "hydfs-leaked-blocks",
            CheckerKind::HydfsFailedCreate => "hydfs-failed-create",
            CheckerKind::HydfsRecovered => "hydfs-recovered",
            CheckerKind::RainstormOutput => "rainstorm-output",
            CheckerKind::RainstormDuplicate => "rainstorm-duplicate",
            CheckerKind::RainstormLoss => "rainstorm-loss",
            CheckerKind::RainstormAggregate => "rainstorm-aggregate",
            CheckerKind::RainstormLiveness => "rainstorm-liveness",
            CheckerKind::RainstormBounded => "rainstorm-bounded",
            CheckerKind::RainstormCoalescing => "rainstorm-coalescing",
            CheckerKind::RainstormCleanup => "rainstorm-cleanup",
            CheckerKind::RainstormResume => "rainstorm-resume",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub at: Time,
    pub checker: CheckerKind,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] at {}: {}", self.checker, self.at, self.detail)
    }
}

/// Detection times of one crash, in ms after the crash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DetectionSample {
    /// First SUS or DEL of the crashed id in any list.
    pub first_seen_ms: Option<u64>,
    /// First DEL in any list.
    pub first_failed_ms: Option<u64>,
    /// When the last list that held it dropped it.
    pub all_removed_ms: Option<u64>,
}

/// What the world tells the checker about one slot at a check.
/// One running process (crashed ones have no snapshot).
pub struct SlotSnapshot {
    pub slot: Slot,
    pub paused: bool,
    pub joined: bool,
    pub id: MemberId,
    pub view: Vec<MemberId>,
    pub suspicion: bool,
    pub queues: Vec<(&'static str, usize)>,
    pub unsendable_frames: u64,
    /// Frames refused for a cause the simulated network never produces (see `Actor`).
    pub refused_frames: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Death {
    Crashed,
    Left,
    Renewed,
}

#[derive(Clone, Copy, Debug)]
struct IdLife {
    slot: Slot,
    died: Option<(Time, Death)>,
}

#[derive(Clone, Debug, Default)]
struct SlotTruth {
    current: Option<MemberId>,
    up: bool,
    /// When this slot's current id joined, or when it last resumed from a pause.
    knows_since: Time,
    left_by_choice: bool,
}

#[derive(Clone, Debug)]
struct Watch {
    id: MemberId,
    died_at: Time,
    pending: BTreeSet<Slot>,
    sample: DetectionSample,
    reported: bool,
}

#[derive(Clone, Copy, Debug)]
struct Excuse {
    start: Time,
    end: Option<Time>,
    slot: Option<Slot>,
}

/// What keeps Lifeguard's confirmations from being assured (see the module header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unassured {
    /// A cut link, loss over 5%, or suspicion off.
    Network,
    /// Fewer live members than an accuser and its confirmers.
    FewLive,
    /// A paused or slow member.
    Slot(Slot),
}

/// A time during which Lifeguard's confirmations are not assured: from `start` to `end` plus
/// the local health recovery tail; `end` is `None` while it lasts.
#[derive(Clone, Copy, Debug)]
struct Unconfirmable {
    start: Time,
    end: Option<Time>,
    cause: Unassured,
}

pub struct Checker {
    /// Completeness bound where confirmations can arrive (the strict one).
    confirmed_bound_ms: u64,
    /// Completeness bound where they cannot (equal to the strict one without Lifeguard).
    unconfirmed_bound_ms: u64,
    /// How long a window where confirmations were not assured still counts after it ends.
    recovery_tail_ms: u64,
    /// Live members needed for confirmations: the accuser and `suspicion_confirmations` more.
    confirmers_needed: usize,
    unconfirmable: Vec<Unconfirmable>,
    /// Whether the members run Lifeguard (a slow member excuses the failures it declares only
    /// without it).
    lifeguard: bool,
    /// Slow members (`Fault::Slow`) whose own failure is excused, but not those they declare.
    slow_accused: Vec<Excuse>,
    strict_ms: Option<u64>,
    /// How long after an excuse ends accuracy stays excused.
    excuse_tail_ms: u64,
    /// Latency too close to the ping timeout: accuracy is not promised anywhere in the run.
    always_excused: bool,
    ids: BTreeMap<MemberId, IdLife>,
    slots: Vec<SlotTruth>,
    excuses: Vec<Excuse>,
    watches: Vec<Watch>,
    violations: Vec<Violation>,
    reported_completeness: BTreeSet<(Slot, MemberId)>,
    reported_unsendable: BTreeSet<Slot>,
    reported_refused: BTreeSet<Slot>,
    false_failures: BTreeSet<MemberId>,
    samples: Vec<DetectionSample>,
    max_queue: usize,
}

/// The most entries any internal queue of a node may hold once `ids_ever` member ids exist
/// (the **bounded** invariant).
pub fn queue_bound(ids_ever: usize) -> usize {
    4 * ids_ever + 128
}

/// At most this many violations are kept per run.
const MAX_VIOLATIONS: usize = 20;

impl Checker {
    pub fn new(s: &Scenario) -> Checker {
        let c = &s.config;
        // Timeouts run on the nodes' clocks: the slowest one stretches them.
        let latency = s.net.latency_max_ms * 4;
        let slack = 2 * c.protocol_period.0;
        let unconfirmed_bound_ms =
            s.on_slowest_clock_ms(c.unconfirmed_detection_bound(s.nodes).0 + slack) + latency;
        let confirmed_bound_ms = if c.lifeguard {
            let spread = u64::from(c.retransmit_limit(s.nodes)) * c.protocol_period.0;
            let bound = c.own_probe_detection_bound(s.nodes).0 + spread + slack;
            (s.on_slowest_clock_ms(bound) + latency).min(unconfirmed_bound_ms)
        } else {
            unconfirmed_bound_ms
        };
        let lhm = u64::from(c.local_health_max);
        let mut checker = Checker {
            confirmed_bound_ms,
            unconfirmed_bound_ms,
            recovery_tail_ms: if c.lifeguard {
                s.on_slowest_clock_ms(lhm * (lhm + 1) / 2 * c.protocol_period.0)
            } else {
                0
            },
            confirmers_needed: c.suspicion_confirmations as usize + 1,
            unconfirmable: Vec::new(),
            lifeguard: c.lifeguard,
            slow_accused: Vec::new(),
            strict_ms: s.strict_detection_ms.map(|b| s.on_slowest_clock_ms(b)),
            // A suspicion raised while accuracy was excused may run out up to its longest
            // timeout later (under Lifeguard, the unconfirmed one).
            excuse_tail_ms: s
                .on_slowest_clock_ms(c.suspicion_timeout_max_for(s.nodes).0 + 4 * c.protocol_period.0),
            always_excused: 2 * s.net.latency_max_ms >= c.ping_timeout.0,
            ids: BTreeMap::new(),
            slots: vec![SlotTruth::default(); s.nodes],
            excuses: Vec::new(),
            watches: Vec::new(),
            violations: Vec::new(),
            reported_completeness: BTreeSet::new(),
            reported_unsendable: BTreeSet::new(),
            reported_refused: BTreeSet::new(),
            false_failures: BTreeSet::new(),
            samples: Vec::new(),
            max_queue: 0,
        };
        if s.net.loss_permille > 50 || !c.suspicion_at_start {
            checker.on_conditions(Time::ZERO, true);
            checker.on_confirmations(Time::ZERO, false);
        }
        checker
    }

    pub fn violate(&mut self, at: Time, checker: CheckerKind, detail: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(Violation { at, checker, detail });
        }
    }

    // ----- ground truth from the world ------------------------------------------------------

    pub fn on_start(&mut self, slot: Slot) {
        self.slots[slot].up = true;
        self.slots[slot].current = None;
        self.slots[slot].left_by_choice = false;
    }

    pub fn on_crash(&mut self, now: Time, slot: Slot) {
        if let Some(id) = self.slots[slot].current.take() {
            self.kill(now, id, Death::Crashed);
        }
        self.slots[slot].up = false;
        for w in &mut self.watches {
            w.pending.remove(&slot);
        }
    }

    pub fn on_leave_command(&mut self, slot: Slot) {
        self.slots[slot].left_by_choice = true;
    }

    pub fn on_join_command(&mut self, slot: Slot) {
        self.slots[slot].left_by_choice = false;
    }

    pub fn on_pause(&mut self, now: Time, slot: Slot, for_ms: u64, suspicion_timeout_ms: u64) {
        // A paused member confirms nothing until it resumes (and its backlog stretches its LHM).
        let end = Some(Time(now.0 + for_ms));
        self.unconfirmable.push(Unconfirmable { start: now, end, cause: Unassured::Slot(slot) });
        if for_ms > suspicion_timeout_ms {
            self.excuses.push(Excuse { start: now, end: Some(Time(now.0 + for_ms)), slot: Some(slot) });
        }
    }

    pub fn on_resume(&mut self, now: Time, slot: Slot) {
        self.slots[slot].knows_since = now;
    }

    /// Cluster-wide conditions under which Lifeguard's confirmations are assured (no link cut,
    /// loss at most 5%, suspicion on) begin (`assured`) or end: see the module header.
    pub fn on_confirmations(&mut self, now: Time, assured: bool) {
        self.mark_unconfirmable(now, Unassured::Network, !assured);
    }

    /// A slow member (`Fault::Slow`) confirms late and its own probing stretches: confirmations
    /// are not assured while it is slow.
    /// Its late handling excuses its own failure (its acks and refutations come up to 2 s late,
    /// and the members that find it silent confirm each other's suspicions); without Lifeguard it
    /// also excuses the failures it declares of others.
    pub fn on_slow(&mut self, now: Time, slot: Slot, for_ms: u64) {
        let end = Some(Time(now.0 + for_ms));
        self.unconfirmable.push(Unconfirmable { start: now, end, cause: Unassured::Slot(slot) });
        if self.lifeguard {
            self.slow_accused.push(Excuse { start: now, end, slot: Some(slot) });
        } else {
            self.excuses.push(Excuse { start: now, end, slot: Some(slot) });
        }
    }

    /// Opens (`on`) or closes the window where `cause` keeps confirmations from being assured.
    fn mark_unconfirmable(&mut self, now: Time, cause: Unassured, on: bool) {
        let open = self.unconfirmable.iter_mut().find(|u| u.cause == cause && u.end.is_none());
        match (on, open) {
            (true, None) => self.unconfirmable.push(Unconfirmable { start: now, end: None, cause }),
            (false, Some(u)) => u.end = Some(now),
            (true, Some(_)) | (false, None) => {}
        }
    }

    /// The completeness bound for an id its lister could first know dead at `since`.
    fn completeness_bound_ms(&self, since: Time, now: Time) -> u64 {
        let tail = self.recovery_tail_ms;
        let overlaps = self.unconfirmable.iter().any(|u| {
            let end = u.end.map_or(u64::MAX, |t| t.0.saturating_add(tail));
            u.start <= now && since.0 <= end
        });
        if overlaps {
            self.unconfirmed_bound_ms
        } else {
            self.confirmed_bound_ms
        }
    }

    /// Cluster-wide conditions under which accuracy is not promised (a partition other than
    /// cut groups every other member bridges, loss over 5%, suspicion off) begin (`bad`) or end.
    pub fn on_conditions(&mut self, now: Time, bad: bool) {
        let open = self.excuses.iter().any(|e| e.slot.is_none() && e.end.is_none());
        match (bad, open) {
            (true, false) => self.excuses.push(Excuse { start: now, end: None, slot: None }),
            (false, true) => {
                for e in self.excuses.iter_mut().filter(|e| e.slot.is_none() && e.end.is_none()) {
                    e.end = Some(now);
                }
            }
            _ => {}
        }
    }

    /// Whether accuracy is excused for `slots` = [the declared member's, the declarer's] at `at`.
    fn excused(&self, at: Time, slots: [Slot; 2]) -> bool {
        let tail = self.excuse_tail_ms;
        let slow_accused = self.slow_accused.iter().any(|e| {
            let end = e.end.map_or(u64::MAX, |t| t.0.saturating_add(tail));
            e.slot == Some(slots[0]) && e.start <= at && at.0 <= end
        });
        slow_accused
            || self.always_excused
            || self.excuses.iter().any(|e| {
                let applies = e.slot.is_none_or(|s| slots.contains(&s));
                let end = e.end.map_or(u64::MAX, |t| t.0.saturating_add(self.excuse_tail_ms));
                applies && e.start <= at && at.0 <= end
            })
    }

    fn kill(&mut self, now: Time, id: MemberId, death: Death) {
        if let Some(life) = self.ids.get_mut(&id) {
            if life.died.is_none() {
                life.died = Some((now, death));
            }
        }
    }

    /// Starts watching a crash's detection (the world passes who lists the id now).
    pub fn watch_crash(&mut self, now: Time, id: MemberId, listers: BTreeSet<Slot>) {
        self.watches.push(Watch {
            id,
            died_at: now,
            pending: listers,
            sample: DetectionSample::default(),
            reported: false,
        });
    }

    // ----- node output ----------------------------------------------------------------------

    pub fn on_event(&mut self, now: Time, slot: Slot, event: &MembershipEvent) {
        match event {
            MembershipEvent::SelfJoined { id, .. } => {
                if let Some(old) = self.slots[slot].current.replace(*id) {
                    if old != *id {
                        self.kill(now, old, Death::Renewed);
                    }
                }
                self.ids.insert(*id, IdLife { slot, died: None });
                self.slots[slot].knows_since = now;
            }
            MembershipEvent::SelfDeclaredFailed { old } => {
                self.kill(now, *old, Death::Renewed);
                self.stop_watching_at(slot);
            }
            MembershipEvent::SelfLeft { id } => {
                self.kill(now, *id, Death::Left);
                self.stop_watching_at(slot);
            }
            MembershipEvent::MemberSuspected { member, .. } => {
                self.with_watch(*member, |w| {
                    w.sample.first_seen_ms.get_or_insert(now.0 - w.died_at.0);
                });
            }
            MembershipEvent::MemberFailed { member, cause } => {
                self.check_accuracy(now, slot, *member, *cause);
                self.removed(now, slot, *member);
            }
            MembershipEvent::MemberLeft { member } => self.removed(now, slot, *member),
            MembershipEvent::JoinFailed { .. }
            | MembershipEvent::SelfRefuted { .. }
            | MembershipEvent::MemberJoined { .. }
            | MembershipEvent::MemberAlive { .. }
            | MembershipEvent::ModeChanged { .. } => {}
        }
    }

    fn stop_watching_at(&mut self, slot: Slot) {
        for w in &mut self.watches {
            w.pending.remove(&slot);
        }
    }

    fn with_watch(&mut self, id: MemberId, f: impl FnOnce(&mut Watch)) {
        if let Some(w) = self.watches.iter_mut().find(|w| w.id == id) {
            f(w);
        }
    }

    fn removed(&mut self, now: Time, slot: Slot, member: MemberId) {
        self.with_watch(member, |w| {
            let after = now.0 - w.died_at.0;
            w.sample.first_seen_ms.get_or_insert(after);
            w.sample.first_failed_ms.get_or_insert(after);
            if w.pending.remove(&slot) && w.pending.is_empty() {
                w.sample.all_removed_ms = Some(after);
            }
        });
    }

    fn check_accuracy(&mut self, now: Time, by: Slot, member: MemberId, cause: FailureCause) {
        let local = matches!(cause, FailureCause::NoAck | FailureCause::SuspicionTimeout);
        let Some(life) = self.ids.get(&member).copied() else { return };
        let live = life.died.is_none() && self.slots[life.slot].up;
        if !(local && live) {
            return;
        }
        self.false_failures.insert(member);
        if !self.excused(now, [life.slot, by]) {
            self.violate(
                now,
                CheckerKind::Accuracy,
                format!("n{by} declared live member {member} (n{}) failed ({cause:?})", life.slot),
            );
        }
    }

    // ----- periodic and final checks -------------------------------------------------------

    pub fn check(&mut self, now: Time, snapshots: &[SlotSnapshot]) {
        let ids_ever = self.ids.len().max(snapshots.len());
        let live = snapshots.iter().filter(|s| !s.paused && s.joined).count();
        self.mark_unconfirmable(now, Unassured::FewLive, live < self.confirmers_needed);
        for s in snapshots.iter().filter(|s| !s.paused && s.joined) {
            for x in &s.view {
                let Some(life) = self.ids.get(x) else { continue };
                let Some((died, death)) = life.died else { continue };
                let since = died.max(self.slots[s.slot].knows_since);
                let bound = self.completeness_bound_ms(since, now);
                if now.0 > since.0 + bound && self.reported_completeness.insert((s.slot, *x)) {
                    self.violate(
                        now,
                        CheckerKind::Completeness,
                        format!(
                            "n{} still lists {x} ({death:?} at {died}) after the {bound} ms bound",
                            s.slot
                        ),
                    );
                }
            }
            if s.unsendable_frames > 0 && self.reported_unsendable.insert(s.slot) {
                self.violate(
                    now,
                    CheckerKind::Bounded,
                    format!("n{} built {} frames over its channel's size limit", s.slot, s.unsendable_frames),
                );
            }
            if s.refused_frames > 0 && self.reported_refused.insert(s.slot) {
                self.violate(
                    now,
                    CheckerKind::Wire,
                    format!("n{} refused {} honest frames (see its stats)", s.slot, s.refused_frames),
                );
            }
            let bound = queue_bound(ids_ever);
            for (name, len) in &s.queues {
                self.max_queue = self.max_queue.max(*len);
                if *len > bound {
                    self.violate(
                        now,
                        CheckerKind::Bounded,
                        format!("n{} queue {name} holds {len} entries (bound {bound})", s.slot),
                    );
                }
            }
        }
        if let Some(strict) = self.strict_ms {
            let mut late = Vec::new();
            for w in &mut self.watches {
                if !w.reported && !w.pending.is_empty() && now.0 > w.died_at.0 + strict {
                    w.reported = true;
                    late.push(format!(
                        "crash of {} at {} still listed by {:?} after the {strict} ms bound",
                        w.id, w.died_at, w.pending
                    ));
                }
            }
            for detail in late {
                self.violate(now, CheckerKind::StrictCompleteness, detail);
            }
        }
    }

    /// At the end of a run long enough after the faults stopped: views must agree.
    pub fn check_convergence(&mut self, now: Time, snapshots: &[SlotSnapshot]) {
        let expected: BTreeSet<MemberId> = snapshots
            .iter()
            .filter(|s| s.joined && !self.slots[s.slot].left_by_choice)
            .map(|s| s.id)
            .collect();
        let mut modes = BTreeSet::new();
        let members: Vec<&SlotSnapshot> =
            snapshots.iter().filter(|s| !self.slots[s.slot].left_by_choice).collect();
        for s in members {
            if !s.joined {
                self.violate(now, CheckerKind::Convergence, format!("n{} is up but not a member", s.slot));
                continue;
            }
            modes.insert(s.suspicion);
            let mut view: BTreeSet<MemberId> = s.view.iter().copied().collect();
            view.insert(s.id);
            if view != expected {
                let missing: Vec<_> = expected.difference(&view).map(|m| m.to_string()).collect();
                let extra: Vec<_> = view.difference(&expected).map(|m| m.to_string()).collect();
                self.violate(
                    now,
                    CheckerKind::Convergence,
                    format!("n{} view differs: missing {missing:?}, extra {extra:?}", s.slot),
                );
            }
        }
        if modes.len() > 1 {
            self.violate(now, CheckerKind::Convergence, "members disagree on the suspicion mode".into());
        }
    }

    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Distinct live member ids declared failed by someone's own probe or timer.
    pub fn false_failures(&self) -> usize {
        self.false_failures.len()
    }

    /// The slot of each of [`Checker::false_failures`]' ids.
    pub fn false_failure_slots(&self) -> Vec<Slot> {
        self.false_failures.iter().filter_map(|id| self.ids.get(id)).map(|life| life.slot).collect()
    }

    pub fn max_queue(&self) -> usize {
        self.max_queue
    }

    pub fn finish_samples(&mut self) -> Vec<DetectionSample> {
        let watches = std::mem::take(&mut self.watches);
        self.samples.extend(watches.into_iter().map(|w| w.sample));
        std::mem::take(&mut self.samples)
    }
}
