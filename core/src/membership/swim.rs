//! The SWIM state machine of one node.
//!
//! Inputs: [`Membership::handle_message`], [`Membership::handle_timeout`], the commands
//! ([`Membership::join`], [`Membership::leave`], [`Membership::set_suspicion`]) and
//! [`Membership::handle_send_failed`]. Outputs: [`Membership::poll_outgoing`],
//! [`Membership::poll_event`], [`Membership::poll_timeout`].
//!
//! One probe per protocol period: PING the next member of a shuffled round-robin order; if no ACK
//! within `ping_timeout`, PING-REQ through k others; if still none by the next tick, the target
//! is suspected (PingAck+S) or declared failed (PingAck). The accusation is also sent to the
//! accused, which refutes with a higher incarnation.
//!
//! Lifeguard (`MembershipConfig::lifeguard`): a local health multiplier (LHM) stretches this
//! node's probe period and ping timeout when its own probes fail without nacks or it has to
//! refute; a helper nacks a ping-req whose target stays silent; a suspicion's timeout starts at
//! its maximum and shrinks as distinct accusers confirm it. Invariants: the LHM stays within
//! `0..=local_health_max`; a suspicion's deadline stays within `[min, max]` of its start and only
//! moves earlier; a suspicion counts each accuser once and at most the expected confirmations.

use super::config::{MembershipConfig, PlantedBug};
use super::gossip::Gossip;
use super::message::{JoinAccept, JoinKind, JoinRefusal, MembershipMsg, ModeStamp, ProbeSeq, Update};
use crate::histogram::LatencyHistogram;
use crate::id::{Incarnation, MemberId, NodeAddr};
use crate::node::Channel;
use crate::time::{Millis, Time};
use crate::timer::TimerQueue;
use crate::wire::{canonical_bytes, payload_size};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, VecDeque};

/// Relayed probes (PING-REQ) this node keeps in flight at once; further requests are dropped.
const MAX_RELAYS: usize = 64;
/// Removals (most recent first) carried by one anti-entropy sync.
const MAX_SYNC_REMOVED: usize = 256;

/// Whether this node onboards others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Introducer,
    Member,
}

/// Where this node stands in the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not a member: before the first join, after a failed join, or after leaving.
    Idle,
    /// Waiting for the introducer's reply.
    Joining {
        nonce: u64,
        attempts: u32,
    },
    Joined,
    /// Left; answers probes with its leave notice until `until`, then goes idle.
    Leaving {
        until: Time,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberStatus {
    Alive,
    Suspect { since: Time },
}

/// One row of `list_mem`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub id: MemberId,
    pub incarnation: Incarnation,
    pub status: MemberStatus,
}

/// Why a member was removed as failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCause {
    /// This node's own probe went unanswered (PingAck mode).
    NoAck,
    /// This node's suspicion timer ran out (PingAck+S mode).
    SuspicionTimeout,
    /// Another member disseminated the failure.
    Reported,
    /// A newer process joined at the same address.
    Superseded,
}

/// What happened, for the layers above and for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// This node joined (or rejoined) the group under `id`.
    SelfJoined {
        id: MemberId,
        members: usize,
    },
    /// The join did not succeed; the node is idle.
    JoinFailed {
        reason: String,
    },
    /// This node learned it was declared failed; it rejoins under a new id.
    SelfDeclaredFailed {
        old: MemberId,
    },
    /// This node refuted a suspicion of itself.
    SelfRefuted {
        incarnation: Incarnation,
    },
    /// This node left the group.
    SelfLeft {
        id: MemberId,
    },
    MemberJoined {
        member: MemberId,
    },
    MemberSuspected {
        member: MemberId,
        incarnation: Incarnation,
    },
    /// A suspected member refuted (ALIVE with a higher incarnation).
    MemberAlive {
        member: MemberId,
        incarnation: Incarnation,
    },
    MemberFailed {
        member: MemberId,
        cause: FailureCause,
    },
    MemberLeft {
        member: MemberId,
    },
    ModeChanged {
        suspicion: bool,
    },
}

/// A message for the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub to: NodeAddr,
    pub channel: Channel,
    pub msg: MembershipMsg,
}

/// Refused commands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("already a member (id {0}); leave first")]
    AlreadyMember(MemberId),
    #[error("a join is already in progress")]
    JoinInProgress,
    #[error("not a member of the group")]
    NotMember,
}

/// Counters a user can read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    pub pings_sent: u64,
    pub acks_sent: u64,
    pub ping_reqs_sent: u64,
    pub updates_sent: u64,
    pub suspicions_raised: u64,
    pub refutations: u64,
    pub failures_declared: u64,
    pub stale_messages: u64,
    pub relays_dropped: u64,
    /// Nacks sent as a helper whose target stayed silent, and received as a prober.
    pub nacks_sent: u64,
    pub nacks_received: u64,
    /// Suspicions shortened by an independent confirmation (Lifeguard).
    pub suspicion_confirmations: u64,
    /// Round trips of direct probes that were acknowledged (ping to ack).
    pub probe_rtt: LatencyHistogram,
}

#[derive(Clone, Copy, Debug)]
struct Member {
    incarnation: Incarnation,
    status: MemberStatus,
}

#[derive(Clone, Copy, Debug)]
struct Probe {
    seq: ProbeSeq,
    target: MemberId,
    acked: bool,
    sent: Time,
}

/// Lifeguard's state of one suspicion: when it started, who accused, and when it runs out.
#[derive(Clone, Debug)]
struct Suspicion {
    incarnation: Incarnation,
    start: Time,
    /// Distinct accusers, the first one included; at most `expected + 1`.
    accusers: Vec<MemberId>,
    expected: u32,
    min: Millis,
    max: Millis,
    deadline: Time,
}

impl Suspicion {
    /// Independent confirmations so far (accusers after the first).
    fn confirmations(&self) -> u32 {
        self.accusers.len().saturating_sub(1) as u32
    }
}

#[derive(Clone, Copy, Debug)]
struct Relay {
    origin: NodeAddr,
    origin_seq: ProbeSeq,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Timer {
    /// Start of a protocol period: resolve the last probe, start the next.
    ProbeTick,
    /// The direct ping of probe `seq` had its chance; go indirect.
    DirectTimeout {
        seq: ProbeSeq,
    },
    /// `ChangeSuspectToDown`: the suspicion of `member` at `incarnation` was not refuted in time.
    SuspicionTimeout {
        member: MemberId,
        incarnation: Incarnation,
    },
    RelayExpiry {
        seq: ProbeSeq,
    },
    /// A relayed probe had its helper's ping timeout: nack the requester if still unanswered.
    RelayNack {
        seq: ProbeSeq,
    },
    JoinRetry {
        nonce: u64,
    },
    AnnounceToIntroducer,
    Sync,
    TombstoneSweep,
    LeaveLingerEnd,
}

/// SWIM membership of one node. See the module documentation for the protocol.
pub struct Membership {
    cfg: MembershipConfig,
    role: Role,
    addr: NodeAddr,
    introducer: NodeAddr,
    me: MemberId,
    incarnation: Incarnation,
    phase: Phase,
    members: BTreeMap<MemberId, Member>,
    /// The listed member at each address (the list never holds two ids at one address).
    by_addr: BTreeMap<NodeAddr, MemberId>,
    /// Removed ids and when their tombstone expires.
    tombstones: BTreeMap<MemberId, Time>,
    gossip: Gossip,
    mode: ModeStamp,
    probe_order: Vec<MemberId>,
    probe_cursor: usize,
    probe: Option<Probe>,
    relays: BTreeMap<ProbeSeq, Relay>,
    /// Helpers asked to probe the current probe's target indirectly, and those of them that
    /// nacked (each counted once): Lifeguard expects a nack or an ack from each.
    probe_helpers: Vec<MemberId>,
    probe_nackers: Vec<MemberId>,
    /// Lifeguard's local health multiplier, `0..=local_health_max`.
    local_health: u32,
    /// Lifeguard's suspicions, one per suspected member (only of listed suspected members).
    suspicions: BTreeMap<MemberId, Suspicion>,
    next_seq: u64,
    next_nonce: u64,
    announce_nonce: Option<u64>,
    last_join_error: Option<String>,
    timers: TimerQueue<Timer>,
    rng: ChaCha8Rng,
    outgoing: VecDeque<Outgoing>,
    events: VecDeque<MembershipEvent>,
    stats: MembershipStats,
    /// Bytes every datagram spends outside the membership message's updates.
    frame_overhead: usize,
}

impl Membership {
    /// A node at `addr`. An introducer is a group of one from `now`; a member is idle until
    /// [`Membership::join`]. `frame_overhead` is what the envelope and frame add to a message.
    pub fn new(
        cfg: MembershipConfig,
        role: Role,
        addr: NodeAddr,
        introducer: NodeAddr,
        now: Time,
        seed: u64,
        frame_overhead: usize,
    ) -> Membership {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let next_seq = rng.gen::<u32>() as u64;
        let mode = ModeStamp::initial(cfg.suspicion_at_start);
        let mut m = Membership {
            cfg,
            role,
            addr,
            introducer,
            me: MemberId::new(addr, now.as_millis()),
            incarnation: Incarnation(0),
            phase: Phase::Idle,
            members: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            gossip: Gossip::default(),
            mode,
            probe_order: Vec::new(),
            probe_cursor: 0,
            probe: None,
            relays: BTreeMap::new(),
            probe_helpers: Vec::new(),
            probe_nackers: Vec::new(),
            local_health: 0,
            suspicions: BTreeMap::new(),
            next_seq,
            next_nonce: 1,
            announce_nonce: None,
            last_join_error: None,
            timers: TimerQueue::default(),
            rng,
            outgoing: VecDeque::new(),
            events: VecDeque::new(),
            stats: MembershipStats::default(),
            frame_overhead,
        };
        if role == Role::Introducer {
            m.become_joined(now);
            m.events.push_back(MembershipEvent::SelfJoined { id: m.me, members: 0 });
        }
        m
    }

    // ----- queries ------------------------------------------------------------------------

    pub fn me(&self) -> MemberId {
        self.me
    }

    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.cfg
    }

    pub fn is_joined(&self) -> bool {
        self.phase == Phase::Joined
    }

    pub fn suspicion_enabled(&self) -> bool {
        self.mode.suspicion
    }

    pub fn mode(&self) -> ModeStamp {
        self.mode
    }

    pub fn stats(&self) -> MembershipStats {
        self.stats
    }

    /// Lifeguard's local health multiplier (0 is healthy; always 0 without Lifeguard).
    pub fn local_health(&self) -> u32 {
        self.local_health
    }

    /// Other members, in id order.
    pub fn members(&self) -> impl Iterator<Item = MemberView> + '_ {
        self.members.iter().map(|(id, m)| MemberView {
            id: *id,
            incarnation: m.incarnation,
            status: m.status,
        })
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn contains(&self, id: &MemberId) -> bool {
        self.members.contains_key(id)
    }

    /// Whether `from`, a process this node does not list, may be a member it has not heard of
    /// yet (one that joined a moment ago): this node is in the group, and `from` is not one it
    /// removed, nor older than the process listed at its address.
    pub fn may_be_unheard_of(&self, now: Time, from: &MemberId) -> bool {
        let superseded =
            self.by_addr.get(&from.addr).is_some_and(|listed| listed.join_time >= from.join_time);
        self.phase == Phase::Joined
            && *from != self.me
            && !self.members.contains_key(from)
            && !superseded
            && !self.is_tombstoned(from, now)
    }

    pub fn suspected(&self) -> impl Iterator<Item = MemberView> + '_ {
        self.members().filter(|v| matches!(v.status, MemberStatus::Suspect { .. }))
    }

    /// Sizes of every internal queue, for the simulator's boundedness checker.
    pub fn queue_lengths(&self) -> [(&'static str, usize); 7] {
        [
            ("members", self.members.len()),
            ("tombstones", self.tombstones.len()),
            ("gossip", self.gossip.len()),
            ("probe_order", self.probe_order.len()),
            ("relays", self.relays.len()),
            ("suspicions", self.suspicions.len()),
            ("timers", self.timers.len()),
        ]
    }

    // ----- outputs ------------------------------------------------------------------------

    #[must_use]
    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.outgoing.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.events.pop_front()
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.next_deadline()
    }

    // ----- commands -----------------------------------------------------------------------

    /// Joins the group through the introducer under a fresh id.
    pub fn join(&mut self, now: Time) -> Result<(), MembershipError> {
        match self.phase {
            Phase::Joined => Err(MembershipError::AlreadyMember(self.me)),
            Phase::Joining { .. } => Err(MembershipError::JoinInProgress),
            Phase::Idle | Phase::Leaving { .. } => {
                self.renew_identity(now, 0);
                if self.role == Role::Introducer {
                    self.become_joined(now);
                    self.events.push_back(MembershipEvent::SelfJoined { id: self.me, members: 0 });
                } else {
                    self.start_join(now);
                }
                Ok(())
            }
        }
    }

    /// Leaves the group: tells every member, then lingers answering probes with the notice.
    pub fn leave(&mut self, now: Time) -> Result<(), MembershipError> {
        if self.phase != Phase::Joined {
            return Err(MembershipError::NotMember);
        }
        let notice = Update::Left { member: self.me };
        let targets: Vec<MemberId> = self.members.keys().copied().collect();
        for id in targets {
            self.send_datagram(id.addr, MembershipMsg::Gossip { updates: vec![notice.clone()] });
        }
        self.timers.clear();
        self.probe = None;
        self.relays.clear();
        self.gossip.clear();
        let until = now + self.cfg.leave_linger;
        self.phase = Phase::Leaving { until };
        self.timers.schedule(until, Timer::LeaveLingerEnd);
        self.events.push_back(MembershipEvent::SelfLeft { id: self.me });
        Ok(())
    }

    /// Switches suspicion on or off for the whole cluster (the newer switch wins everywhere).
    pub fn set_suspicion(&mut self, now: Time, enabled: bool) -> Result<(), MembershipError> {
        if self.phase != Phase::Joined {
            return Err(MembershipError::NotMember);
        }
        let stamp = ModeStamp { counter: self.mode.counter + 1, issuer: Some(self.me), suspicion: enabled };
        self.apply(now, Update::Mode(stamp));
        Ok(())
    }

    // ----- inputs -------------------------------------------------------------------------

    /// A message from the member `from` (as the envelope names it).
    pub fn handle_message(&mut self, now: Time, from: MemberId, msg: MembershipMsg) {
        match msg {
            MembershipMsg::Ping { seq, target_join_time, updates } => {
                self.on_ping(now, from, seq, target_join_time);
                self.apply_from(now, from, updates);
            }
            MembershipMsg::Ack { seq, updates } => {
                self.on_ack(now, from, seq);
                self.apply_from(now, from, updates);
            }
            MembershipMsg::PingReq { seq, target, updates } => {
                self.on_ping_req(now, from, seq, target);
                self.apply_from(now, from, updates);
            }
            MembershipMsg::Gossip { updates } => self.apply_from(now, from, updates),
            MembershipMsg::Nack { seq } => self.on_nack(from, seq),
            MembershipMsg::SyncDigest { digest } => {
                let joined = self.phase == Phase::Joined;
                if joined && !self.is_tombstoned(&from, now) && digest != self.view_digest() {
                    let msg = self.sync_message(false);
                    self.send_stream(from.addr, msg);
                }
            }
            MembershipMsg::Sync { members, removed, mode, reply } => {
                self.on_sync(now, from, members, removed, mode, reply)
            }
            MembershipMsg::JoinRequest { nonce, kind: _ } => self.on_join_request(now, from, nonce),
            MembershipMsg::JoinReply { nonce, result } => self.on_join_reply(now, nonce, result),
        }
    }

    /// The driver could not deliver a stream message to `to` (connection refused, reset...).
    pub fn handle_send_failed(&mut self, _now: Time, to: NodeAddr, error: &str) {
        if to == self.introducer {
            self.last_join_error = Some(error.to_string());
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        while let Some((_, timer)) = self.timers.pop_due(now) {
            self.on_timer(now, timer);
        }
    }

    // ----- message handlers ---------------------------------------------------------------

    /// A ping for the member at this address that joined at `target_join_time` (the datagram
    /// reached this address, so the join time alone tells whether it is meant for this process).
    fn on_ping(&mut self, now: Time, from: MemberId, seq: ProbeSeq, target_join_time: u64) {
        match self.phase {
            Phase::Leaving { .. } => {
                let notice = Update::Left { member: self.me };
                self.send_datagram(from.addr, MembershipMsg::Gossip { updates: vec![notice] });
            }
            Phase::Joined if target_join_time != self.me.join_time => {
                // Meant for an earlier process at this address: that one is gone, let the
                // prober find out by silence.
                self.stats.stale_messages += 1;
            }
            Phase::Joined if self.is_tombstoned(&from, now) => self.tell_declared_failed(from),
            Phase::Joined => {
                self.stats.acks_sent += 1;
                let updates = self.piggyback(&MembershipMsg::Ack { seq, updates: Vec::new() });
                self.send_datagram(from.addr, MembershipMsg::Ack { seq, updates });
            }
            Phase::Idle | Phase::Joining { .. } => self.stats.stale_messages += 1,
        }
    }

    fn on_ack(&mut self, now: Time, from: MemberId, seq: ProbeSeq) {
        if let Some(probe) = self.probe.as_mut() {
            if probe.seq == seq {
                // A relayed ack (from a helper) includes the ping timeout: not a round trip.
                if !probe.acked && from == probe.target {
                    self.stats.probe_rtt.observe(now.since(probe.sent));
                }
                probe.acked = true;
                return;
            }
        }
        if let Some(relay) = self.relays.remove(&seq) {
            let msg = MembershipMsg::Ack { seq: relay.origin_seq, updates: Vec::new() };
            let updates = self.piggyback(&msg);
            self.send_datagram(relay.origin, MembershipMsg::Ack { seq: relay.origin_seq, updates });
        }
    }

    fn on_ping_req(&mut self, now: Time, from: MemberId, origin_seq: ProbeSeq, target: MemberId) {
        if self.phase != Phase::Joined {
            return;
        }
        if self.is_tombstoned(&from, now) {
            self.tell_declared_failed(from);
            return;
        }
        if self.relays.len() >= MAX_RELAYS {
            self.stats.relays_dropped += 1;
            return;
        }
        let seq = self.next_probe_seq();
        self.relays.insert(seq, Relay { origin: from.addr, origin_seq });
        self.timers.schedule(now + self.cfg.protocol_period, Timer::RelayExpiry { seq });
        if self.cfg.lifeguard {
            // memberlist nacks after the helper's own probe timeout; the requester waits for
            // the rest of its period, so the nack arrives while it still counts.
            self.timers.schedule(now + self.cfg.ping_timeout, Timer::RelayNack { seq });
        }
        self.send_ping(seq, target);
    }

    /// A helper says the target of our probe `seq` did not answer it in time.
    fn on_nack(&mut self, from: MemberId, seq: ProbeSeq) {
        let Some(probe) = self.probe else { return };
        if probe.seq != seq || !self.probe_helpers.contains(&from) || self.probe_nackers.contains(&from) {
            return;
        }
        self.probe_nackers.push(from);
        self.stats.nacks_received += 1;
        debug_assert!(self.probe_nackers.len() <= self.probe_helpers.len(), "one nack per helper");
    }

    /// Fresh joins and announcements are admitted alike; only the joiner's phase differs.
    fn on_sync(
        &mut self,
        now: Time,
        from: MemberId,
        members: Vec<(MemberId, Incarnation)>,
        removed: Vec<MemberId>,
        mode: ModeStamp,
        reply: bool,
    ) {
        if self.phase != Phase::Joined {
            return;
        }
        if self.is_tombstoned(&from, now) {
            self.tell_declared_failed(from);
            return;
        }
        // Removals first, so that a member the sender buried is not re-added from its own list.
        // Only removals of listed members (or of this node) are news worth gossiping; an id
        // never seen here is only remembered as dead.
        for member in removed {
            if member == self.me || self.members.contains_key(&member) {
                self.apply(now, Update::Failed { member });
            } else if !self.is_tombstoned(&member, now) {
                self.tombstone(now, member);
            }
        }
        for (member, incarnation) in members {
            self.apply(now, Update::Alive { member, incarnation });
        }
        self.apply(now, Update::Mode(mode));
        if !reply && self.phase == Phase::Joined {
            let msg = self.sync_message(true);
            self.send_stream(from.addr, msg);
        }
    }

    /// A hash of the live view (every member with its incarnation, this node included) and the
    /// mode: equal on two members exactly when they agree.
    fn view_digest(&self) -> u64 {
        use sha2::{Digest, Sha256};
        let mut view: Vec<(MemberId, Incarnation)> =
            self.members.iter().map(|(id, m)| (*id, m.incarnation)).collect();
        view.push((self.me, self.incarnation));
        view.sort_unstable();
        let mut hasher = Sha256::new();
        hasher.update(canonical_bytes(&view));
        hasher.update(canonical_bytes(&self.mode));
        let digest = hasher.finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
    }

    /// This node's view for an anti-entropy exchange (itself included).
    fn sync_message(&self, reply: bool) -> MembershipMsg {
        let mut members: Vec<(MemberId, Incarnation)> =
            self.members.iter().map(|(id, m)| (*id, m.incarnation)).collect();
        members.push((self.me, self.incarnation));
        let mut removed: Vec<(Time, MemberId)> =
            self.tombstones.iter().map(|(id, expiry)| (*expiry, *id)).collect();
        removed.sort_unstable_by(|a, b| b.cmp(a));
        removed.truncate(MAX_SYNC_REMOVED);
        let removed = removed.into_iter().map(|(_, id)| id).collect();
        MembershipMsg::Sync { members, removed, mode: self.mode, reply }
    }

    fn on_join_request(&mut self, now: Time, from: MemberId, nonce: u64) {
        if self.role != Role::Introducer {
            let result = Err(JoinRefusal::NotIntroducer);
            self.send_stream(from.addr, MembershipMsg::JoinReply { nonce, result });
            return;
        }
        if self.phase != Phase::Joined || from == self.me {
            return;
        }
        if self.is_tombstoned(&from, now) {
            let result = Err(JoinRefusal::DeclaredFailed);
            self.send_stream(from.addr, MembershipMsg::JoinReply { nonce, result });
            return;
        }
        if let Some(by) = self.latest_id_at(from.addr, now).filter(|id| id.join_time > from.join_time) {
            // Join times order the processes of one address, but the joiner's clock reads
            // earlier than its predecessor's did: it takes an id after the latest one known.
            let result = Err(JoinRefusal::Superseded { by });
            self.send_stream(from.addr, MembershipMsg::JoinReply { nonce, result });
            return;
        }
        if !self.members.contains_key(&from) {
            self.apply(now, Update::Alive { member: from, incarnation: Incarnation(0) });
        }
        if !self.members.contains_key(&from) {
            // An older process at an address that a newer one holds: treat it as failed.
            let result = Err(JoinRefusal::DeclaredFailed);
            self.send_stream(from.addr, MembershipMsg::JoinReply { nonce, result });
            return;
        }
        let mut members: Vec<(MemberId, Incarnation)> =
            self.members.iter().map(|(id, m)| (*id, m.incarnation)).collect();
        members.push((self.me, self.incarnation));
        let result = Ok(JoinAccept { members, mode: self.mode });
        self.send_stream(from.addr, MembershipMsg::JoinReply { nonce, result });
    }

    fn on_join_reply(&mut self, now: Time, nonce: u64, result: Result<JoinAccept, JoinRefusal>) {
        match (self.phase, result) {
            (Phase::Joining { nonce: expected, .. }, Ok(accept)) if expected == nonce => {
                self.forget_members();
                self.mode = accept.mode;
                self.become_joined(now);
                for (id, incarnation) in accept.members {
                    // Our own earlier ids may still be listed: they are us, not members.
                    if id.addr != self.addr {
                        self.insert_member(now, id, incarnation);
                    }
                }
                let members = self.members.len();
                self.events.push_back(MembershipEvent::SelfJoined { id: self.me, members });
            }
            (Phase::Joining { nonce: expected, .. }, Err(refusal)) if expected == nonce => match refusal {
                JoinRefusal::DeclaredFailed => self.rejoin_as_new(now, 0),
                JoinRefusal::Superseded { by } => self.rejoin_as_new(now, by.join_time),
                JoinRefusal::NotIntroducer => {
                    self.phase = Phase::Idle;
                    self.timers.clear();
                    let reason = format!("{} is not an introducer", self.introducer);
                    self.events.push_back(MembershipEvent::JoinFailed { reason });
                }
            },
            (Phase::Joined, result) if self.announce_nonce == Some(nonce) => {
                self.announce_nonce = None;
                match result {
                    Ok(accept) => {
                        for (id, incarnation) in accept.members {
                            if id != self.me {
                                self.apply(now, Update::Alive { member: id, incarnation });
                            }
                        }
                        if accept.mode.is_newer_than(&self.mode) {
                            self.apply(now, Update::Mode(accept.mode));
                        }
                    }
                    Err(JoinRefusal::DeclaredFailed) => {
                        self.events.push_back(MembershipEvent::SelfDeclaredFailed { old: self.me });
                        self.rejoin_as_new(now, 0);
                    }
                    Err(JoinRefusal::Superseded { by }) => {
                        self.events.push_back(MembershipEvent::SelfDeclaredFailed { old: self.me });
                        self.rejoin_as_new(now, by.join_time);
                    }
                    Err(JoinRefusal::NotIntroducer) => {}
                }
            }
            _ => self.stats.stale_messages += 1,
        }
    }

    // ----- timers -------------------------------------------------------------------------

    fn on_timer(&mut self, now: Time, timer: Timer) {
        match timer {
            Timer::ProbeTick => self.on_probe_tick(now),
            Timer::DirectTimeout { seq } => self.on_direct_timeout(seq),
            Timer::SuspicionTimeout { member, incarnation } => {
                let still_suspect = self.members.get(&member).is_some_and(|m| {
                    m.incarnation == incarnation && matches!(m.status, MemberStatus::Suspect { .. })
                });
                // Under Lifeguard a confirmation may have brought the deadline earlier (a new
                // timer); the first timer then finds the member gone or its deadline passed.
                let due = self
                    .suspicions
                    .get(&member)
                    .is_none_or(|s| s.incarnation != incarnation || s.deadline <= now);
                if still_suspect && due && !self.cfg.plants(PlantedBug::SuspicionNeverFires) {
                    self.declare_failed(now, member, FailureCause::SuspicionTimeout);
                }
            }
            Timer::RelayExpiry { seq } => {
                self.relays.remove(&seq);
            }
            Timer::RelayNack { seq } => {
                if let Some(relay) = self.relays.get(&seq).copied() {
                    self.stats.nacks_sent += 1;
                    self.send_datagram(relay.origin, MembershipMsg::Nack { seq: relay.origin_seq });
                }
            }
            Timer::JoinRetry { nonce } => self.on_join_retry(now, nonce),
            Timer::AnnounceToIntroducer => {
                self.timers
                    .schedule(now + self.cfg.introducer_announce_interval, Timer::AnnounceToIntroducer);
                if !self.by_addr.contains_key(&self.introducer) {
                    self.announce_to_introducer();
                }
            }
            Timer::Sync => {
                self.timers.schedule(now + self.cfg.sync_interval, Timer::Sync);
                if self.phase == Phase::Joined && !self.cfg.plants(PlantedBug::AntiEntropyDisabled) {
                    if let Some(&peer) =
                        self.members.keys().nth(self.rng.gen_range(0..self.members.len().max(1)))
                    {
                        let digest = self.view_digest();
                        self.send_datagram(peer.addr, MembershipMsg::SyncDigest { digest });
                    }
                }
            }
            Timer::TombstoneSweep => {
                self.tombstones.retain(|_, expiry| *expiry > now);
                self.timers.schedule(now + self.cfg.protocol_period * 10, Timer::TombstoneSweep);
            }
            Timer::LeaveLingerEnd => {
                if matches!(self.phase, Phase::Leaving { .. }) {
                    self.phase = Phase::Idle;
                    self.forget_members();
                }
            }
        }
    }

    fn on_probe_tick(&mut self, now: Time) {
        if let Some(probe) = self.probe.take() {
            if probe.acked {
                self.adjust_local_health(-1);
            } else if self.members.contains_key(&probe.target) {
                // Lifeguard: with helpers asked, each missing nack is a sign that this node,
                // not the target, is the slow one; with none to ask, the failure itself is.
                let missing = self.probe_helpers.len() - self.probe_nackers.len();
                let delta = if self.probe_helpers.is_empty() { 1 } else { missing as i64 };
                self.adjust_local_health(delta);
                if self.phase == Phase::Joined {
                    self.on_probe_failed(now, probe.target);
                }
            }
        }
        // The LHM stretches this node's own probing (Lifeguard), not its answers to others.
        let period = self.scaled(self.cfg.protocol_period);
        self.timers.schedule(now + period, Timer::ProbeTick);
        if self.phase != Phase::Joined {
            return;
        }
        let Some(target) = self.next_probe_target() else {
            return;
        };
        let seq = self.next_probe_seq();
        self.probe = Some(Probe { seq, target, acked: false, sent: now });
        self.probe_helpers.clear();
        self.probe_nackers.clear();
        let ping_timeout = self.scaled(self.cfg.ping_timeout);
        debug_assert!(ping_timeout < period, "the ping timeout scales with the period");
        self.timers.schedule(now + ping_timeout, Timer::DirectTimeout { seq });
        self.send_ping(seq, target);
    }

    /// `d` stretched by the local health multiplier: (LHM + 1)·d.
    fn scaled(&self, d: Millis) -> Millis {
        debug_assert!(self.local_health <= self.cfg.local_health_max, "the LHM stays within its bound");
        Millis(d.0 * (self.local_health as u64 + 1))
    }

    /// Moves Lifeguard's local health multiplier by `delta`, within `0..=local_health_max`.
    fn adjust_local_health(&mut self, delta: i64) {
        if !self.cfg.lifeguard || (delta > 0 && self.cfg.plants(PlantedBug::LocalHealthNeverGrows)) {
            return;
        }
        let max = self.cfg.local_health_max as i64;
        self.local_health = (self.local_health as i64 + delta).clamp(0, max) as u32;
        debug_assert!(self.local_health <= self.cfg.local_health_max, "the LHM stays within its bound");
    }

    fn on_direct_timeout(&mut self, seq: ProbeSeq) {
        let Some(probe) = self.probe else { return };
        if probe.seq != seq || probe.acked || self.cfg.plants(PlantedBug::NoIndirectProbes) {
            return;
        }
        let mut helpers: Vec<MemberId> =
            self.members.keys().copied().filter(|id| *id != probe.target).collect();
        helpers.shuffle(&mut self.rng);
        helpers.truncate(self.cfg.indirect_probes);
        self.probe_helpers.clone_from(&helpers);
        for helper in helpers {
            self.stats.ping_reqs_sent += 1;
            let bare = MembershipMsg::PingReq { seq, target: probe.target, updates: Vec::new() };
            let updates = self.piggyback(&bare);
            self.send_datagram(helper.addr, MembershipMsg::PingReq { seq, target: probe.target, updates });
        }
    }

    fn on_probe_failed(&mut self, now: Time, target: MemberId) {
        let Some(member) = self.members.get(&target).copied() else { return };
        if !self.mode.suspicion {
            self.declare_failed(now, target, FailureCause::NoAck);
            return;
        }
        let accusation =
            Update::Suspect { member: target, incarnation: member.incarnation, accuser: self.me };
        match member.status {
            MemberStatus::Alive => {
                self.apply(now, accusation.clone());
                // Tell the accused at once, so it can refute before the timeout.
                self.send_datagram(target.addr, MembershipMsg::Gossip { updates: vec![accusation] });
            }
            // Under Lifeguard this node's own failed probe of a suspected member is an
            // independent confirmation, for itself and, gossiped, for the others.
            MemberStatus::Suspect { .. } if self.cfg.lifeguard => self.apply(now, accusation),
            MemberStatus::Suspect { .. } => {}
        }
    }

    fn on_join_retry(&mut self, now: Time, nonce: u64) {
        let Phase::Joining { nonce: current, attempts } = self.phase else { return };
        if current != nonce {
            return;
        }
        if attempts >= self.cfg.join_attempts {
            self.phase = Phase::Idle;
            self.timers.clear();
            let cause = self.last_join_error.take().unwrap_or_else(|| {
                "no reply: is it running, and do both use the same cluster key?".to_string()
            });
            let reason = format!(
                "introducer {} did not admit us after {} attempts ({cause})",
                self.introducer, attempts
            );
            self.events.push_back(MembershipEvent::JoinFailed { reason });
            return;
        }
        self.send_join_request(now, attempts + 1);
    }

    // ----- updates ------------------------------------------------------------------------

    /// Applies the updates a message from `from` carried; if one of them suspects this node,
    /// `from` is also told this node's current incarnation directly.
    ///
    /// A refutation otherwise reaches an accuser only by piggybacking, each copy to a random
    /// member: with bad luck (a few lost datagrams, a probe order that never pairs them) every
    /// member but one hears it, and that one's suspicion timer runs out on a live member. A
    /// message still carrying the suspicion is proof its sender has not heard the refutation
    /// (or has just raised the suspicion), so the answer goes where it is missing. It costs one
    /// datagram per such message, and stops when the sender's news about this node is the
    /// refutation (newer news replaces older in its gossip).
    fn apply_from(&mut self, now: Time, from: MemberId, updates: Vec<Update>) {
        let me = self.me;
        let suspects_me =
            updates.iter().any(|u| matches!(u, Update::Suspect { member, .. } if *member == me));
        self.apply_all(now, updates);
        if suspects_me && from != self.me && self.phase == Phase::Joined {
            debug_assert_eq!(self.me, me, "applying updates never renews this node's id while joined");
            let refutation = Update::Alive { member: self.me, incarnation: self.incarnation };
            self.send_datagram(from.addr, MembershipMsg::Gossip { updates: vec![refutation] });
        }
    }

    fn apply_all(&mut self, now: Time, updates: Vec<Update>) {
        if !matches!(self.phase, Phase::Joined) {
            // Only a member's own fate matters before it is joined or after it left.
            return;
        }
        for update in updates {
            self.apply(now, update);
        }
    }

    /// Applies one update under SWIM's precedence rules, disseminating it if it was news.
    fn apply(&mut self, now: Time, update: Update) {
        match update {
            Update::Alive { member, incarnation } => self.apply_alive(now, member, incarnation),
            Update::Suspect { member, incarnation, accuser } => {
                self.apply_suspect(now, member, incarnation, accuser)
            }
            Update::Failed { member } => {
                if member == self.me {
                    if self.phase == Phase::Joined {
                        self.events.push_back(MembershipEvent::SelfDeclaredFailed { old: self.me });
                        self.rejoin_as_new(now, 0);
                    }
                } else if self.members.contains_key(&member) {
                    self.declare_failed(now, member, FailureCause::Reported);
                } else if !self.is_tombstoned(&member, now) {
                    // Never knew it: remember it is dead and pass the news on.
                    self.tombstone(now, member);
                    self.disseminate(Update::Failed { member });
                    self.outrun_earlier_process(now, member);
                }
            }
            Update::Left { member } => {
                if member != self.me && self.members.contains_key(&member) {
                    self.remove_member(now, member);
                    self.events.push_back(MembershipEvent::MemberLeft { member });
                    self.disseminate(Update::Left { member });
                } else if member != self.me && !self.is_tombstoned(&member, now) {
                    self.tombstone(now, member);
                    self.disseminate(Update::Left { member });
                }
            }
            Update::Mode(stamp) => {
                if stamp.is_newer_than(&self.mode) {
                    let changed = stamp.suspicion != self.mode.suspicion;
                    self.mode = stamp;
                    if changed {
                        self.events.push_back(MembershipEvent::ModeChanged { suspicion: stamp.suspicion });
                    }
                    self.disseminate(Update::Mode(stamp));
                }
            }
        }
    }

    fn apply_alive(&mut self, now: Time, member: MemberId, incarnation: Incarnation) {
        if member == self.me || self.is_tombstoned(&member, now) {
            return;
        }
        match self.members.get_mut(&member) {
            Some(known) => {
                if incarnation > known.incarnation {
                    let was_suspect = matches!(known.status, MemberStatus::Suspect { .. });
                    known.incarnation = incarnation;
                    known.status = MemberStatus::Alive;
                    self.suspicions.remove(&member);
                    if was_suspect {
                        self.events.push_back(MembershipEvent::MemberAlive { member, incarnation });
                    }
                    self.disseminate(Update::Alive { member, incarnation });
                }
            }
            None => {
                if member.addr == self.addr {
                    // Another process claims our address: an earlier process of it (one process
                    // holds an address at a time). Its id is later than ours if our clock reads
                    // earlier than its did (a wall clock stepped back before we started): the
                    // group would take it for our successor, so we take an id after it.
                    self.tombstone(now, member);
                    self.outrun_earlier_process(now, member);
                    return;
                }
                if self.insert_member(now, member, incarnation) {
                    self.disseminate(Update::Alive { member, incarnation });
                    if member.addr == self.introducer && self.role == Role::Member {
                        // A new introducer process knows only who announced to it so far.
                        self.announce_to_introducer();
                    }
                }
            }
        }
    }

    fn apply_suspect(&mut self, now: Time, member: MemberId, incarnation: Incarnation, accuser: MemberId) {
        if member == self.me {
            if incarnation >= self.incarnation && self.phase == Phase::Joined {
                if !self.cfg.plants(PlantedBug::RefutationKeepsIncarnation) {
                    self.incarnation = incarnation.next();
                }
                // Lifeguard: being suspected is a sign this node is slow to answer.
                self.adjust_local_health(1);
                self.stats.refutations += 1;
                self.events.push_back(MembershipEvent::SelfRefuted { incarnation: self.incarnation });
                let refutation = Update::Alive { member: self.me, incarnation: self.incarnation };
                self.disseminate(refutation.clone());
                // The suspicion may already be spreading from several accusers: push the
                // refutation to a few members at once instead of waiting for the next probes.
                let mut targets: Vec<MemberId> = self.members.keys().copied().collect();
                targets.shuffle(&mut self.rng);
                targets.truncate(2 * self.cfg.indirect_probes);
                for to in targets {
                    let updates = vec![refutation.clone()];
                    self.send_datagram(to.addr, MembershipMsg::Gossip { updates });
                }
            }
            return;
        }
        let Some(known) = self.members.get_mut(&member) else { return };
        let news = incarnation > known.incarnation
            || (incarnation == known.incarnation && known.status == MemberStatus::Alive);
        if !news {
            if incarnation == known.incarnation && self.cfg.lifeguard {
                self.confirm_suspicion(now, member, incarnation, accuser);
            }
            return;
        }
        known.incarnation = incarnation;
        known.status = MemberStatus::Suspect { since: now };
        self.stats.suspicions_raised += 1;
        self.events.push_back(MembershipEvent::MemberSuspected { member, incarnation });
        self.disseminate(Update::Suspect { member, incarnation, accuser });
        if self.cfg.plants(PlantedBug::SuspicionWithoutTimeout) {
            self.declare_failed(now, member, FailureCause::SuspicionTimeout);
            return;
        }
        let members = self.members.len() + 1;
        let timeout = if self.cfg.lifeguard {
            // Lifeguard: start long; independent confirmations bring the deadline in.
            let expected = self.cfg.expected_confirmations(members);
            let min = self.cfg.suspicion_timeout_for(members);
            let max = self.cfg.lifeguard_suspicion_timeout(members, 0, expected);
            let suspicion = Suspicion {
                incarnation,
                start: now,
                accusers: vec![accuser],
                expected,
                min,
                max,
                deadline: now + max,
            };
            self.suspicions.insert(member, suspicion);
            max
        } else {
            self.cfg.suspicion_timeout_for(members)
        };
        self.timers.schedule(now + timeout, Timer::SuspicionTimeout { member, incarnation });
    }

    /// Lifeguard: `accuser` also suspects `member` at the incarnation it is suspected at. A new
    /// accuser, while confirmations are still expected, brings the deadline in and is passed on
    /// (so that the others count it too).
    fn confirm_suspicion(
        &mut self,
        now: Time,
        member: MemberId,
        incarnation: Incarnation,
        accuser: MemberId,
    ) {
        let members = self.members.len() + 1;
        let Some(suspicion) = self.suspicions.get_mut(&member) else { return };
        if suspicion.incarnation != incarnation
            || suspicion.confirmations() >= suspicion.expected
            || suspicion.accusers.contains(&accuser)
        {
            return;
        }
        suspicion.accusers.push(accuser);
        let timeout =
            self.cfg.lifeguard_suspicion_timeout(members, suspicion.confirmations(), suspicion.expected);
        let deadline =
            (suspicion.start + timeout.clamp(suspicion.min, suspicion.max)).min(suspicion.deadline);
        debug_assert!(
            suspicion.confirmations() <= suspicion.expected,
            "confirmations stop at the expected count"
        );
        debug_assert!(
            suspicion.start + suspicion.min <= deadline && deadline <= suspicion.start + suspicion.max,
            "a suspicion's deadline stays within [min, max] of its start"
        );
        suspicion.deadline = deadline;
        self.stats.suspicion_confirmations += 1;
        self.disseminate(Update::Suspect { member, incarnation, accuser });
        self.timers.schedule(deadline.max(now), Timer::SuspicionTimeout { member, incarnation });
    }

    /// Adds a member not seen before; returns false if a newer process holds its address.
    fn insert_member(&mut self, now: Time, member: MemberId, incarnation: Incarnation) -> bool {
        if let Some(&other) = self.by_addr.get(&member.addr) {
            if other.join_time > member.join_time {
                self.tombstone(now, member);
                return false;
            }
            self.remove_member(now, other);
            self.events
                .push_back(MembershipEvent::MemberFailed { member: other, cause: FailureCause::Superseded });
        }
        self.members.insert(member, Member { incarnation, status: MemberStatus::Alive });
        self.by_addr.insert(member.addr, member);
        // SWIM: a new member goes to a random position of the round-robin order.
        let at = self.rng.gen_range(self.probe_cursor..=self.probe_order.len());
        self.probe_order.insert(at, member);
        self.events.push_back(MembershipEvent::MemberJoined { member });
        true
    }

    fn declare_failed(&mut self, now: Time, member: MemberId, cause: FailureCause) {
        self.remove_member(now, member);
        self.stats.failures_declared += 1;
        self.events.push_back(MembershipEvent::MemberFailed { member, cause });
        if !self.cfg.plants(PlantedBug::DelNotDisseminated) {
            self.disseminate(Update::Failed { member });
        }
    }

    fn remove_member(&mut self, now: Time, member: MemberId) {
        self.members.remove(&member);
        self.suspicions.remove(&member);
        if self.by_addr.get(&member.addr) == Some(&member) {
            self.by_addr.remove(&member.addr);
        }
        self.tombstone(now, member);
        if self.probe_order.len() > 2 * self.members.len() + 16 {
            let members = &self.members;
            let cursor_id = self.probe_order.get(self.probe_cursor).copied();
            self.probe_order.retain(|id| members.contains_key(id));
            self.probe_cursor = cursor_id
                .and_then(|c| self.probe_order.iter().position(|id| *id == c))
                .unwrap_or(self.probe_order.len());
        }
    }

    fn tombstone(&mut self, now: Time, member: MemberId) {
        self.tombstones.insert(member, now + self.cfg.tombstone_ttl);
    }

    fn is_tombstoned(&self, member: &MemberId, now: Time) -> bool {
        self.tombstones.get(member).is_some_and(|expiry| *expiry > now)
    }

    /// `member`, an id at this node's address, is an earlier process of it (one process holds an
    /// address at a time). If its id is later than ours (our clock reads earlier than its did),
    /// the group would take it for our successor: we rejoin under an id after it.
    fn outrun_earlier_process(&mut self, now: Time, member: MemberId) {
        let ours_is_older = member.addr == self.addr
            && member.join_time > self.me.join_time
            && !self.cfg.plants(PlantedBug::JoinTimeTrustsTheClock);
        if ours_is_older && self.phase == Phase::Joined {
            self.events.push_back(MembershipEvent::SelfDeclaredFailed { old: self.me });
            self.rejoin_as_new(now, member.join_time);
        }
    }

    /// The latest id this node knows at `addr`: listed, or removed and still tombstoned.
    fn latest_id_at(&self, addr: NodeAddr, now: Time) -> Option<MemberId> {
        let removed = self
            .tombstones
            .range(MemberId::new(addr, 0)..=MemberId::new(addr, u64::MAX))
            .filter(|(_, expiry)| **expiry > now)
            .map(|(id, _)| *id)
            .next_back();
        removed.max(self.by_addr.get(&addr).copied())
    }

    fn disseminate(&mut self, update: Update) {
        self.gossip.push(update);
    }

    // ----- membership lifecycle -----------------------------------------------------------

    /// Drops all knowledge of other members. A node that (re)joins takes the introducer's list
    /// as it is: its own earlier verdicts (tombstones) may have been wrong, which is often why
    /// it is rejoining.
    fn forget_members(&mut self) {
        self.members.clear();
        self.suspicions.clear();
        self.by_addr.clear();
        self.tombstones.clear();
        self.probe_order.clear();
        self.probe_cursor = 0;
    }

    /// Takes a new id at this address: joined now, and later than every earlier id of this
    /// process and than `later_than` (the latest id another process had here, when the
    /// introducer told of one: this node's clock may read earlier than that process's did).
    fn renew_identity(&mut self, now: Time, later_than: u64) {
        let old = self.me;
        // Ids of this address that this node heard of and remembers are earlier processes too.
        let remembered = self.latest_id_at(self.addr, now).map_or(0, |id| id.join_time);
        let later_than = if self.cfg.plants(PlantedBug::JoinTimeTrustsTheClock) {
            old.join_time
        } else {
            later_than.max(remembered)
        };
        let join_time = now.as_millis().max(old.join_time + 1).max(later_than.saturating_add(1));
        debug_assert!(join_time > old.join_time, "a process's join times only grow");
        self.me = MemberId::new(self.addr, join_time);
        self.incarnation = Incarnation(0);
        self.tombstone(now, old);
    }

    fn become_joined(&mut self, now: Time) {
        self.phase = Phase::Joined;
        self.timers.clear();
        self.probe = None;
        self.relays.clear();
        self.announce_nonce = None;
        self.timers.schedule(now + self.cfg.protocol_period, Timer::ProbeTick);
        self.timers.schedule(now + self.cfg.protocol_period * 10, Timer::TombstoneSweep);
        let first_sync = self.rng.gen_range(1..=self.cfg.sync_interval.0);
        self.timers.schedule(now + Millis(first_sync), Timer::Sync);
        if self.role == Role::Member {
            self.timers.schedule(now + self.cfg.introducer_announce_interval, Timer::AnnounceToIntroducer);
        } else {
            self.disseminate(Update::Alive { member: self.me, incarnation: self.incarnation });
        }
    }

    fn start_join(&mut self, now: Time) {
        self.timers.clear();
        self.probe = None;
        self.relays.clear();
        self.gossip.clear();
        self.last_join_error = None;
        self.send_join_request(now, 1);
    }

    fn send_join_request(&mut self, now: Time, attempt: u32) {
        let nonce = self.fresh_nonce();
        self.phase = Phase::Joining { nonce, attempts: attempt };
        self.send_stream(self.introducer, MembershipMsg::JoinRequest { nonce, kind: JoinKind::Fresh });
        self.timers.schedule(now + self.cfg.join_retry, Timer::JoinRetry { nonce });
    }

    /// This node was declared failed: it rejoins as a new member.
    fn rejoin_as_new(&mut self, now: Time, later_than: u64) {
        self.renew_identity(now, later_than);
        self.gossip.clear();
        if self.role == Role::Introducer {
            // The introducer cannot ask itself: it stays up under its new id, keeps its directory
            // (which joiners rely on) and announces the new id.
            self.become_joined(now);
            self.events.push_back(MembershipEvent::SelfJoined { id: self.me, members: 0 });
        } else {
            self.forget_members();
            self.start_join(now);
        }
    }

    /// Tells the introducer this member exists: it merges us, or says we were declared failed.
    fn announce_to_introducer(&mut self) {
        if self.phase != Phase::Joined {
            return;
        }
        let nonce = self.fresh_nonce();
        self.announce_nonce = Some(nonce);
        self.send_stream(self.introducer, MembershipMsg::JoinRequest { nonce, kind: JoinKind::Announce });
    }

    fn tell_declared_failed(&mut self, member: MemberId) {
        self.stats.stale_messages += 1;
        let updates = vec![Update::Failed { member }];
        self.send_datagram(member.addr, MembershipMsg::Gossip { updates });
    }

    // ----- probing and sending ------------------------------------------------------------

    fn next_probe_target(&mut self) -> Option<MemberId> {
        if self.members.is_empty() {
            return None;
        }
        loop {
            if self.probe_cursor >= self.probe_order.len() {
                self.probe_order = self.members.keys().copied().collect();
                self.probe_order.shuffle(&mut self.rng);
                self.probe_cursor = 0;
            }
            let candidate = self.probe_order[self.probe_cursor];
            self.probe_cursor += 1;
            if self.members.contains_key(&candidate) {
                return Some(candidate);
            }
        }
    }

    fn next_probe_seq(&mut self) -> ProbeSeq {
        self.next_seq = self.next_seq.wrapping_add(1);
        ProbeSeq(self.next_seq)
    }

    fn fresh_nonce(&mut self) -> u64 {
        self.next_nonce += 1;
        (self.rng.gen::<u32>() as u64) << 32 | (self.next_nonce & 0xffff_ffff)
    }

    fn send_ping(&mut self, seq: ProbeSeq, target: MemberId) {
        self.stats.pings_sent += 1;
        let target_join_time = target.join_time;
        let updates = self.piggyback(&MembershipMsg::Ping { seq, target_join_time, updates: Vec::new() });
        self.send_datagram(target.addr, MembershipMsg::Ping { seq, target_join_time, updates });
    }

    /// Updates that fit beside `bare` (the message without updates) in one datagram.
    fn piggyback(&mut self, bare: &MembershipMsg) -> Vec<Update> {
        // envelope = sender id + destination address (sized as the longest: IPv6, the widest
        // port) + frame number (sized as the widest) + body variant tag (4 bytes, more than it
        // takes) + message
        let widest_addr = NodeAddr::from((std::net::Ipv6Addr::UNSPECIFIED, u16::MAX));
        let used = self.frame_overhead
            + payload_size(&self.me)
            + payload_size(&widest_addr)
            + payload_size(&crate::replay::FrameSeq(u64::MAX))
            + 4
            + payload_size(bare);
        let mut budget = self.cfg.max_datagram_bytes.saturating_sub(used);
        if self.cfg.plants(PlantedBug::PiggybackIgnoresLimit) {
            budget = usize::MAX;
        }
        let limit = self.cfg.retransmit_limit(self.members.len() + 1);
        let updates = self.gossip.select(budget, limit);
        self.stats.updates_sent += updates.len() as u64;
        updates
    }

    fn send_datagram(&mut self, to: NodeAddr, msg: MembershipMsg) {
        self.outgoing.push_back(Outgoing { to, channel: Channel::Datagram, msg });
    }

    fn send_stream(&mut self, to: NodeAddr, msg: MembershipMsg) {
        self.outgoing.push_back(Outgoing { to, channel: Channel::Stream, msg });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> NodeAddr {
        NodeAddr::from(([10, 0, 0, 1], port))
    }

    fn introducer() -> Membership {
        Membership::new(MembershipConfig::lan(), Role::Introducer, addr(1), addr(1), Time(0), 7, 40)
    }

    fn drain(m: &mut Membership) -> (Vec<Outgoing>, Vec<MembershipEvent>) {
        let mut out = Vec::new();
        while let Some(o) = m.poll_outgoing() {
            out.push(o);
        }
        let mut events = Vec::new();
        while let Some(e) = m.poll_event() {
            events.push(e);
        }
        (out, events)
    }

    fn admit(m: &mut Membership, id: MemberId) {
        m.handle_message(Time(10), id, MembershipMsg::JoinRequest { nonce: 1, kind: JoinKind::Fresh });
    }

    #[test]
    fn introducer_admits_a_joiner_and_replies_with_the_list() {
        let mut m = introducer();
        let joiner = MemberId::new(addr(2), 5);
        admit(&mut m, joiner);
        let (out, events) = drain(&mut m);
        assert!(events.contains(&MembershipEvent::MemberJoined { member: joiner }));
        let reply = out.iter().find(|o| o.to == joiner.addr).expect("a reply to the joiner");
        assert_eq!(reply.channel, Channel::Stream);
        let MembershipMsg::JoinReply { result: Ok(accept), .. } = &reply.msg else { panic!("accepted") };
        assert_eq!(accept.members.len(), 2, "the joiner and the introducer");
    }

    #[test]
    fn alive_only_beats_suspect_at_a_higher_incarnation() {
        let mut m = introducer();
        let x = MemberId::new(addr(2), 5);
        admit(&mut m, x);
        drain(&mut m);
        m.apply(Time(20), Update::Suspect { member: x, incarnation: Incarnation(1), accuser: x });
        m.apply(Time(21), Update::Alive { member: x, incarnation: Incarnation(1) });
        assert!(matches!(m.members[&x].status, MemberStatus::Suspect { .. }), "equal incarnation loses");
        m.apply(Time(22), Update::Alive { member: x, incarnation: Incarnation(0) });
        assert!(matches!(m.members[&x].status, MemberStatus::Suspect { .. }), "stale ALIVE loses");
        m.apply(Time(23), Update::Alive { member: x, incarnation: Incarnation(2) });
        assert_eq!(m.members[&x].status, MemberStatus::Alive);
        assert_eq!(m.members[&x].incarnation, Incarnation(2));
    }

    #[test]
    fn a_suspicion_of_self_is_refuted_with_a_higher_incarnation() {
        let mut m = introducer();
        let peers: Vec<MemberId> = (2..6).map(|p| MemberId::new(addr(p), p as u64)).collect();
        for &p in &peers {
            admit(&mut m, p);
        }
        drain(&mut m);
        let me = m.me();
        m.apply(Time(5), Update::Suspect { member: me, incarnation: Incarnation(0), accuser: me });
        assert_eq!(m.incarnation(), Incarnation(1));
        let (out, events) = drain(&mut m);
        assert!(events.contains(&MembershipEvent::SelfRefuted { incarnation: Incarnation(1) }));
        // The refutation is pushed to members at once, not only left for piggybacking.
        let refutation = Update::Alive { member: me, incarnation: Incarnation(1) };
        let pushed = out
            .iter()
            .filter(|o| matches!(&o.msg, MembershipMsg::Gossip { updates } if updates.contains(&refutation)))
            .count();
        assert_eq!(pushed, peers.len().min(2 * m.config().indirect_probes));
        // A stale accusation (older incarnation) is ignored.
        m.apply(Time(6), Update::Suspect { member: me, incarnation: Incarnation(0), accuser: me });
        assert_eq!(m.incarnation(), Incarnation(1));
        assert!(drain(&mut m).1.is_empty());
    }

    #[test]
    fn a_member_still_suspecting_this_node_after_its_refutation_is_answered_directly() {
        let mut m = introducer();
        let peers: Vec<MemberId> = (2..12).map(|p| MemberId::new(addr(p), p as u64)).collect();
        for &p in &peers {
            admit(&mut m, p);
        }
        drain(&mut m);
        let me = m.me();
        let refutation = Update::Alive { member: me, incarnation: Incarnation(1) };
        let told = |out: &[Outgoing], to: MemberId| {
            out.iter().any(|o| {
                o.to == to.addr
                    && matches!(&o.msg, MembershipMsg::Gossip { updates } if updates.contains(&refutation))
            })
        };
        // The accuser of a fresh suspicion hears the refutation, whichever members it is pushed to.
        let accuser = peers[9];
        let stale = vec![Update::Suspect { member: me, incarnation: Incarnation(0), accuser: me }];
        m.handle_message(Time(5), accuser, MembershipMsg::Gossip { updates: stale.clone() });
        assert_eq!(m.incarnation(), Incarnation(1));
        assert!(told(&drain(&mut m).0, accuser));
        // A member whose ack still carries the old suspicion has not heard it: it is told
        // directly, not left to piggybacking.
        let behind = peers[3];
        m.handle_message(Time(6), behind, MembershipMsg::Ack { seq: ProbeSeq(1), updates: stale });
        assert_eq!(m.incarnation(), Incarnation(1), "a stale accusation raises no new incarnation");
        let (out, events) = drain(&mut m);
        assert!(events.is_empty());
        assert_eq!(out.len(), 1, "one answer, to the sender only");
        assert!(told(&out, behind));
        // A message without news about this node gets no such answer.
        m.handle_message(Time(7), behind, MembershipMsg::Gossip { updates: vec![] });
        assert!(drain(&mut m).0.is_empty());
    }

    #[test]
    fn a_removed_id_is_never_readded_and_a_newer_process_supersedes_an_older() {
        let mut m = introducer();
        let old = MemberId::new(addr(2), 5);
        admit(&mut m, old);
        m.apply(Time(30), Update::Failed { member: old });
        assert!(!m.contains(&old));
        m.apply(Time(31), Update::Alive { member: old, incarnation: Incarnation(9) });
        assert!(!m.contains(&old), "the tombstone holds");
        let newer = MemberId::new(addr(2), 50);
        m.apply(Time(32), Update::Alive { member: newer, incarnation: Incarnation(0) });
        assert!(m.contains(&newer));
        let older = MemberId::new(addr(2), 40);
        m.apply(Time(33), Update::Alive { member: older, incarnation: Incarnation(0) });
        assert!(!m.contains(&older), "an older process at a held address is stale");
    }

    #[test]
    fn a_helper_nacks_a_silent_target_and_confirmations_shorten_a_suspicion() {
        let mut m = introducer();
        let peers: Vec<MemberId> = (2..8).map(|p| MemberId::new(addr(p), p as u64)).collect();
        for &p in &peers {
            admit(&mut m, p);
        }
        drain(&mut m);
        // A ping-req for a silent target: a nack to the requester after the ping timeout.
        m.handle_message(
            Time(100),
            peers[0],
            MembershipMsg::PingReq { seq: ProbeSeq(42), target: peers[1], updates: vec![] },
        );
        drain(&mut m);
        m.handle_timeout(Time(100) + m.config().ping_timeout);
        let (out, _) = drain(&mut m);
        assert!(out
            .iter()
            .any(|o| o.to == peers[0].addr && o.msg == MembershipMsg::Nack { seq: ProbeSeq(42) }));
        // One accuser: the longest timeout; a second distinct accuser brings it in; the same
        // accuser again counts nothing.
        let x = peers[2];
        let suspect = |accuser| Update::Suspect { member: x, incarnation: Incarnation(0), accuser };
        m.apply(Time(1000), suspect(peers[3]));
        let s = &m.suspicions[&x];
        assert_eq!(s.deadline, Time(1000) + s.max);
        m.apply(Time(2000), suspect(peers[3]));
        assert_eq!(m.suspicions[&x].confirmations(), 0);
        m.apply(Time(2000), suspect(peers[4]));
        let s = &m.suspicions[&x];
        assert_eq!(s.confirmations(), 1);
        assert!(s.deadline < Time(1000) + s.max && s.deadline > Time(1000) + s.min);
        m.apply(Time(2500), suspect(peers[5]));
        assert_eq!(m.suspicions[&x].deadline, Time(1000) + m.suspicions[&x].min);
        m.handle_timeout(Time(1000) + m.suspicions[&x].min);
        assert!(!m.contains(&x), "declared failed at the shortened deadline");
    }

    #[test]
    fn piggybacked_datagrams_never_exceed_the_limit() {
        let mut m = introducer();
        for port in 2..400 {
            admit(&mut m, MemberId::new(addr(port), port as u64));
        }
        drain(&mut m);
        for t in 1..30 {
            m.handle_timeout(Time(t * 1000));
            let (out, _) = drain(&mut m);
            for o in out.iter().filter(|o| o.channel == Channel::Datagram) {
                let size = 40 + payload_size(&m.me()) + 4 + payload_size(&o.msg);
                assert!(size <= m.config().max_datagram_bytes, "{size} bytes");
            }
        }
    }
}
