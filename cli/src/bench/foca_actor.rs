//! The `foca` SWIM library behind [`rainstorm_sim::Actor`], so `bench membership` can run it under
//! the same simulated network, faults and checkers as RainStorm's own [`rainstorm_core::Node`].
//!
//! How foca's world maps onto the simulator's:
//! * identity: [`FocaId`] is `(address, join time)`, exactly a [`MemberId`]; when foca learns it
//!   was declared down it renews itself with the next join time (foca's auto-rejoin);
//! * wire: foca's own postcard codec; its frames are opaque datagrams to the simulator;
//! * timers: foca asks for `submit_after(timer, duration)`; the wrapper keeps them ordered by due
//!   time and hands the earliest to the simulator through `poll_timeout`;
//! * joining: a member announces to the introducer's address (slot 0) on start, and again every
//!   second until foca reports itself active (the driver's join retry);
//! * events: foca's notifications become [`MembershipEvent`]s. `ProbeFailed` (foca's own probe
//!   went unanswered; the member is now suspect) maps to `MemberSuspected`, which is what the
//!   detection measurement reads. `MemberDown` maps to `MemberFailed` with cause
//!   `SuspicionTimeout` when this node's own suspicion timer fired, else `Reported`, so the
//!   false-failure count means the same as for RainStorm. Foca has no suspicion switch: it always
//!   runs with suspicion, and `SetSuspicion` commands are ignored.

use foca::{Config, Foca, Identity, NoCustomBroadcast, Notification, PostcardCodec, Runtime, Timer};
use rainstorm_core::command::Command;
use rainstorm_core::membership::{FailureCause, MembershipEvent, Role};
use rainstorm_core::node::NodeEvent;
use rainstorm_core::{Channel, Incarnation, Lane, MemberId, NodeAddr, Time, Transmit};
use rainstorm_sim::{Actor, ActorStart};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::time::Duration;

/// How often a member that is not yet active announces itself to the introducer again.
const ANNOUNCE_RETRY_MS: u64 = 1_000;

/// A foca identity: one incarnation of one process, like [`MemberId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FocaId {
    pub addr: NodeAddr,
    pub join_time: u64,
}

impl FocaId {
    fn member_id(self) -> MemberId {
        MemberId::new(self.addr, self.join_time)
    }
}

impl Identity for FocaId {
    type Addr = NodeAddr;

    /// A process declared down comes back as a new member at the same address.
    fn renew(&self) -> Option<Self> {
        Some(FocaId { addr: self.addr, join_time: self.join_time.saturating_add(1) })
    }

    fn addr(&self) -> NodeAddr {
        self.addr
    }

    /// The later join wins, as in RainStorm.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.join_time > adversary.join_time
    }
}

/// The simulator's seeded ChaCha RNG (rand 0.8) behind the rand 0.10 traits foca draws from.
struct SeededRng(ChaCha8Rng);

impl foca_rand_core::TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.0.next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

/// What foca hands back during one call: frames, timers and notifications.
struct Io {
    now: Time,
    /// Foca's timers by (due time, submission order).
    timers: BTreeMap<(Time, u64), Timer<FocaId>>,
    seq: u64,
    out: VecDeque<Transmit>,
    events: VecDeque<MembershipEvent>,
    /// The identity foca runs under (updated on `Rejoin`).
    me: FocaId,
    /// The identity whose join was reported (`SelfJoined`), if any.
    joined_as: Option<FocaId>,
    /// Whether foca is connected (has at least one active member).
    active: bool,
    leaving: bool,
    /// The cause reported for a `MemberDown` during the current call.
    down_cause: FailureCause,
}

impl Runtime<FocaId> for Io {
    fn notify(&mut self, notification: Notification<'_, FocaId>) {
        let event = match notification {
            Notification::MemberUp(id) => MembershipEvent::MemberJoined { member: id.member_id() },
            Notification::MemberDown(id) => {
                MembershipEvent::MemberFailed { member: id.member_id(), cause: self.down_cause }
            }
            Notification::Rename(old, new) => {
                self.events.push_back(MembershipEvent::MemberFailed {
                    member: old.member_id(),
                    cause: FailureCause::Superseded,
                });
                MembershipEvent::MemberJoined { member: new.member_id() }
            }
            Notification::ProbeFailed(_, id) => {
                // Foca does not expose the incarnation it suspects; the checkers do not read it.
                MembershipEvent::MemberSuspected { member: id.member_id(), incarnation: Incarnation(0) }
            }
            Notification::Active => {
                self.active = true;
                if self.joined_as == Some(self.me) {
                    return;
                }
                self.joined_as = Some(self.me);
                // The member count is filled in once the call returns (see `FocaActor::settle`).
                MembershipEvent::SelfJoined { id: self.me.member_id(), members: 0 }
            }
            Notification::Idle => {
                self.active = false;
                return;
            }
            Notification::Defunct => {
                self.active = false;
                let Some(old) = self.joined_as.take() else { return };
                if self.leaving {
                    MembershipEvent::SelfLeft { id: old.member_id() }
                } else {
                    MembershipEvent::SelfDeclaredFailed { old: old.member_id() }
                }
            }
            Notification::Rejoin(new) => {
                self.me = *new;
                self.active = false;
                let Some(old) = self.joined_as.take() else { return };
                MembershipEvent::SelfDeclaredFailed { old: old.member_id() }
            }
            Notification::DataReceived(_) | Notification::DataSent(_) => return,
        };
        self.events.push_back(event);
    }

    fn send_to(&mut self, to: FocaId, data: &[u8]) {
        self.out.push_back(Transmit {
            to: to.addr,
            channel: Channel::Datagram,
            lane: Lane::Control,
            payload: data.to_vec(),
        });
    }

    fn submit_after(&mut self, event: Timer<FocaId>, after: Duration) {
        let ms = u64::try_from(after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        self.seq += 1;
        self.timers.insert((Time(self.now.0.saturating_add(ms)), self.seq), event);
    }
}

/// One foca node, sized by `Config::new_lan(N)` for a cluster of `N` members.
pub struct FocaActor<const N: u32> {
    foca: Foca<FocaId, PostcardCodec, SeededRng, NoCustomBroadcast>,
    io: Io,
    introducer: NodeAddr,
    /// When to announce to the introducer again, while not active.
    next_announce: Option<Time>,
}

impl<const N: u32> FocaActor<N> {
    /// Foca's LAN defaults for `N` members (1 s probe period, like RainStorm's).
    pub fn config() -> Config {
        Config::new_lan(NonZeroU32::new(N).unwrap_or(NonZeroU32::MIN))
    }

    fn announce(&mut self) {
        let to = FocaId { addr: self.introducer, join_time: 0 };
        // Errors (an encoding failure) only mean this announce is lost; the retry covers it.
        let _ = self.foca.announce(to, &mut self.io);
        self.next_announce = Some(self.io.now + rainstorm_core::Millis(ANNOUNCE_RETRY_MS));
    }

    /// After every call into foca: finish the events that needed foca's state.
    fn settle(&mut self) {
        let members = self.foca.num_members();
        for e in &mut self.io.events {
            if let MembershipEvent::SelfJoined { members: m, .. } = e {
                *m = members;
            }
        }
        if self.io.active {
            self.next_announce = None;
        }
    }
}

impl<const N: u32> Actor for FocaActor<N> {
    fn start(s: &ActorStart) -> Self {
        let me = FocaId { addr: s.addr, join_time: s.now.0 };
        let rng = SeededRng(ChaCha8Rng::seed_from_u64(s.seed));
        let mut actor = FocaActor {
            foca: Foca::new(me, Self::config(), rng, PostcardCodec),
            io: Io {
                now: s.now,
                timers: BTreeMap::new(),
                seq: 0,
                out: VecDeque::new(),
                events: VecDeque::new(),
                me,
                joined_as: None,
                active: false,
                leaving: false,
                down_cause: FailureCause::Reported,
            },
            introducer: s.introducer,
            next_announce: None,
        };
        if s.role == Role::Member {
            actor.announce();
        }
        actor.settle();
        actor
    }

    fn handle_frame(&mut self, now: Time, channel: Channel, frame: &[u8]) {
        if channel != Channel::Datagram {
            return;
        }
        self.io.now = now;
        self.io.down_cause = FailureCause::Reported;
        // Foca rejects malformed or misdirected data with an error; like a UDP agent, drop it.
        let _ = self.foca.handle_data(frame, &mut self.io);
        self.settle();
    }

    fn handle_send_failed(&mut self, _now: Time, _to: NodeAddr) {
        // Foca sends only datagrams; the simulator reports failures only for streams.
    }

    fn handle_timeout(&mut self, now: Time) {
        self.io.now = now;
        if self.next_announce.is_some_and(|t| t <= now) && !self.io.active && !self.io.leaving {
            self.announce();
        }
        while let Some(entry) = self.io.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.io.down_cause = match timer {
                Timer::ChangeSuspectToDown { .. } => FailureCause::SuspicionTimeout,
                _ => FailureCause::Reported,
            };
            // Errors here are foca's own bookkeeping (for example a probe cycle it resets).
            let _ = self.foca.handle_timer(timer, &mut self.io);
        }
        self.io.down_cause = FailureCause::Reported;
        self.settle();
    }

    fn command(&mut self, now: Time, command: Command) {
        self.io.now = now;
        match command {
            Command::Join => {
                if self.io.leaving {
                    // Foca cannot rejoin under an identity it declared down: come back as a new one.
                    let new =
                        FocaId { addr: self.io.me.addr, join_time: now.0.max(self.io.me.join_time + 1) };
                    if self.foca.change_identity(new, &mut self.io).is_ok() {
                        self.io.me = new;
                        self.io.leaving = false;
                    }
                }
                if !self.io.active {
                    self.announce();
                }
            }
            Command::Leave if !self.io.leaving => {
                self.io.leaving = true;
                self.next_announce = None;
                let _ = self.foca.leave_cluster(&mut self.io);
            }
            // A second leave, no suspicion switch in foca; the other commands only read state.
            _ => {}
        }
        self.settle();
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.io.out.pop_front()
    }

    fn poll_event(&mut self) -> Option<NodeEvent> {
        self.io.events.pop_front().map(NodeEvent::Membership)
    }

    fn poll_timeout(&self) -> Option<Time> {
        let timer = self.io.timers.first_key_value().map(|((at, _), _)| *at);
        match (timer, self.next_announce) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn id(&self) -> MemberId {
        self.io.me.member_id()
    }

    fn is_joined(&self) -> bool {
        self.io.active && self.io.joined_as == Some(self.io.me)
    }

    fn view(&self) -> Vec<MemberId> {
        self.foca.iter_members().map(|m| m.id().member_id()).collect()
    }

    fn suspicion_enabled(&self) -> bool {
        true
    }

    fn queue_lengths(&self) -> Vec<(&'static str, usize)> {
        vec![("foca updates", self.foca.updates_backlog()), ("foca timers", self.io.timers.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rainstorm_sim::{run_actor, NetConfig, RunOptions, Scenario};

    fn calm(nodes: usize, duration_ms: u64) -> Scenario {
        Scenario {
            name: "foca-calm".into(),
            seed: 3,
            nodes,
            config: rainstorm_core::membership::MembershipConfig::lan(),
            net: NetConfig::default(),
            clock_offsets_ms: Vec::new(),
            clock_drift_ppm: Vec::new(),
            faults: Vec::new(),
            calm_from_ms: 0,
            duration_ms,
            strict_detection_ms: None,
            hydfs: None,
            rainstorm: None,
            cluster_key: false,
        }
    }

    #[test]
    fn foca_cluster_forms_and_converges_in_the_simulator() {
        let report = run_actor::<FocaActor<6>>(&calm(6, 60_000), &RunOptions::default());
        assert!(report.passed(), "{:?}", report.violations);
        assert!(report.stats.datagrams_sent > 0);
    }

    #[test]
    fn foca_detects_a_crash() {
        let mut s = calm(6, 60_000);
        s.faults =
            vec![rainstorm_sim::FaultAt { at_ms: 20_000, fault: rainstorm_sim::Fault::Crash { node: 3 } }];
        s.calm_from_ms = 20_000;
        let report = run_actor::<FocaActor<6>>(&s, &RunOptions::default());
        let [sample] = report.detections[..] else { panic!("one crash, {:?}", report.detections) };
        assert!(sample.first_seen_ms.is_some() && sample.all_removed_ms.is_some(), "{sample:?}");
    }
}
