//! The `Node`: one process's protocol state, composing the layers behind one sans-IO surface.
//!
//! Owns the wire codec and the three layers: membership, HyDFS and RainStorm. Membership changes
//! (joins, confirmed failures, leaves; never suspicion) set the HyDFS ring and RainStorm's member
//! list; RainStorm's file operations (input, checkpoint logs, job outputs) go through this node's
//! HyDFS client and their answers go back to RainStorm, never to the user.
//! Invariants kept here:
//! * every received frame is decoded under the size limit of its channel (`max_datagram_bytes`,
//!   `limits.stream_frame_bytes`); a bad frame is counted by cause and dropped, never panics and
//!   never reaches a layer;
//! * under a cluster key, a frame whose sequence number its sender already used on that channel
//!   (a duplicate or a replay) or that is older than the replay window is counted and dropped;
//! * under a cluster key, a frame addressed to another node ([`Envelope::to`]) is counted
//!   (`misaddressed`) and dropped: a frame captured on its way to one node is refused by all
//!   others;
//! * a HyDFS or RainStorm message reaches its layer only from this node itself or from a
//!   current member (its exact id: a restarted or declared-failed process is not one); others
//!   are counted (`not_a_member`) and dropped. Roles within a job are RainStorm's to check;
//! * except that a HyDFS read request ([`HydfsMsg::is_read_request`]: it changes nothing), or the
//!   answer to a read request this node sent to that very address ([`HydfsMsg::read_answer_req`],
//!   `Hydfs::awaits_answer`), from a process this node may simply not have heard of yet (a
//!   member that just joined: [`Membership::may_be_unheard_of`]) is held, in arrival order,
//!   for up to [`STRANGER_HOLD`], and reaches HyDFS the moment its sender is listed; at most
//!   [`HELD_FRAMES`] frames and [`HELD_BYTES`] bytes are held (the oldest make room), and one
//!   that makes room or whose hold ended is counted (`not_a_member`) and dropped, never
//!   delivered. So a member that joined a moment ago can read at once, its first reads served
//!   when the news of its join arrives, not lost to its request timeout; and a replica told to
//!   pull a new file's parts from a client it has not heard of yet gets them, instead of waiting
//!   for the coordinator to ask it again (10 s);
//! * a client's write (`HydfsMsg::Write`) from such a process is refused (`not_a_member`) and
//!   answered `Unavailable` (`Hydfs::refuse_stranger`), never served: the client tries again a
//!   moment later, instead of waiting out its timeout (40 s); such answers stay within the
//!   sender's request rate (`limits`). Every other request from it is refused without an
//!   answer (answering a coordinator's `Replicate` or a merge's messages too moves takeover
//!   timing into a gap ARCHITECTURE.md describes);
//! * a stream request from another node over its sender's rate (`limits`) is dropped and counted
//!   (`rate_limited`) before it reaches a layer; membership and replies are never rate-limited;
//! * every frame sent carries the next number of its (channel, lane) counter (1, 2, ...), and the
//!   lane of its message ([`Body::lane`]; datagrams are always [`Lane::Control`]);
//! * a message a layer addresses to this node's own address is handed to that layer inside the
//!   node: never encoded, sent, numbered, rate-limited or replay-checked, and counted in
//!   [`NodeStats::frames_local`] only (not as sent or received). Such messages are due at once
//!   ([`Node::poll_timeout`] is the time of the latest input while any wait) and are delivered in
//!   rounds by [`Node::handle_timeout`], each round those queued before it, so that a long local
//!   exchange (a large file read from the replica the node is itself) never holds the driver for
//!   longer than one round: its datagrams are served in between. All in the same order in every
//!   driver, since it all happens here;
//! * every datagram it emits is at most `max_datagram_bytes` long;
//! * outputs are queued until drained: after each `handle_*` call the driver drains
//!   [`Node::poll_transmit`] and [`Node::poll_event`], then re-arms from [`Node::poll_timeout`].

use crate::command::{Command, COMMAND_HELP};
use crate::hydfs::{
    ClientOp, Hydfs, HydfsConfig, HydfsError, HydfsEvent, HydfsMsg, HydfsStats, MemStorage, OpId, Storage,
    StorageError,
};
use crate::id::{MemberId, NodeAddr};
use crate::limits::{counts_against_rate, LimitsConfig, RateLimiter};
use crate::membership::{
    MemberStatus, MemberView, Membership, MembershipConfig, MembershipError, MembershipEvent,
    MembershipStats, Phase, Role,
};
use crate::rainstorm::{
    JobError, JobId, JobSpec, ProgramCall, ProgramResult, Rainstorm, RainstormConfig, RainstormEvent,
    RainstormStats,
};
use crate::replay::{FrameSeq, ReplayGuard, Verdict, DEFAULT_MAX_WINDOWS};
use crate::time::{Millis, Time};
use crate::wire::{Body, Codec, Envelope, Frame, VerifiedFrame, WireError};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// How a frame travels: an unreliable datagram (UDP) or a request/response stream (TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    Datagram,
    Stream,
}

/// Which of a peer's stream connections a frame travels on, by what it carries, so that bulk file
/// bytes never queue in front of control messages or RainStorm's tuples.
///
/// A driver keeps one connection per (peer, lane) and, on the receiving side, serves `Control`
/// before `Data` before `Bulk` (the order of the variants). Frames of different lanes are
/// reordered relative to each other, so every lane numbers its frames apart ([`FrameSeq`] per
/// (channel, lane)) and the replay guard keeps a window per (sender, channel, lane). Datagrams
/// are always `Control`. Which messages go on which lane: [`Body::lane`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// Membership; HyDFS requests and replies without file bytes; RainStorm's coordination.
    #[default]
    Control,
    /// RainStorm's tuple batches.
    Data,
    /// HyDFS messages carrying file bytes (inline writes, fetched parts, read chunks).
    Bulk,
}

impl Lane {
    /// Every lane, in the order a receiver serves them.
    pub const ALL: [Lane; 3] = [Lane::Control, Lane::Data, Lane::Bulk];

    /// The lane's position in [`Lane::ALL`] (and its byte in the frame header).
    pub fn index(self) -> usize {
        match self {
            Lane::Control => 0,
            Lane::Data => 1,
            Lane::Bulk => 2,
        }
    }

    /// The lane at `index` of [`Lane::ALL`], if there is one.
    pub fn from_index(index: usize) -> Option<Lane> {
        Lane::ALL.get(index).copied()
    }

    /// A short name, for logs and counters.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Control => "control",
            Lane::Data => "data",
            Lane::Bulk => "bulk",
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One encoded frame for the driver to send: sealed (`Vec<u8>`, from [`Node::poll_transmit`]),
/// or still to seal ([`Frame`], from [`Node::poll_transmit_unsealed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit<P = Vec<u8>> {
    pub to: NodeAddr,
    pub channel: Channel,
    /// The stream connection to send it on (always [`Lane::Control`] for datagrams).
    pub lane: Lane,
    pub payload: P,
}

impl Transmit<Frame> {
    /// The same transmit with its frame sealed ([`Frame::seal`]).
    pub fn seal(self) -> Transmit {
        let Transmit { to, channel, lane, payload } = self;
        Transmit { to, channel, lane, payload: payload.seal() }
    }
}

/// What a node reports to its driver and user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    Membership(MembershipEvent),
    Hydfs(HydfsEvent),
    Rainstorm(RainstormEvent),
    /// A request, not a notice: run this batch through its operator program and answer with
    /// [`Node::handle_program_result`].
    Program(ProgramCall),
}

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub role: Role,
    /// The address this node advertises (UDP and TCP share the port number).
    pub addr: NodeAddr,
    pub introducer: NodeAddr,
    pub membership: MembershipConfig,
    pub hydfs: HydfsConfig,
    pub rainstorm: RainstormConfig,
    pub limits: LimitsConfig,
    pub codec: Codec,
}

/// Frame and byte counters. Frames to this node itself are not frames on the wire: they count
/// in `frames_local` only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Messages a layer addressed to this node's own address, handed to it in-process.
    pub frames_local: u64,
    /// HyDFS read requests, and answers to this node's own reads, from a sender not listed
    /// yet, held until it was, then delivered (counted in `frames_received` too).
    pub frames_held: u64,
    /// Rejected frames by cause.
    pub frames_rejected: BTreeMap<&'static str, u64>,
    /// Frames that could not be encoded under their channel's limit (a bug if ever non-zero).
    pub frames_unsendable: u64,
    /// What the driver dropped on its stream connections to protect the node.
    pub streams: StreamDrops,
}

/// Stream connections and frames the driver dropped, counted by the driver since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamDrops {
    /// Inbound connections closed at once for the limit of inbound connections (a new one, or
    /// the oldest that had sent no frame, to make room for a new one).
    pub connections_refused: u64,
    /// Inbound connections closed by a read timeout: no frame started, or a frame not whole in
    /// time.
    pub connections_timed_out: u64,
    /// Frames not sent because the send queue to their peer was full (reported as failed sends).
    pub frames_send_dropped: u64,
}

impl NodeStats {
    pub fn rejected_total(&self) -> u64 {
        self.frames_rejected.values().sum()
    }

    /// Rejected frames by cause, the limits' causes always present (0 until they occur), so a
    /// reader sees them before the first breach.
    pub fn rejected_by_cause(&self) -> BTreeMap<&'static str, u64> {
        let mut rejected = self.frames_rejected.clone();
        for cause in ["oversized", RATE_LIMITED, MISADDRESSED, NOT_A_MEMBER] {
            rejected.entry(cause).or_default();
        }
        rejected
    }
}

/// The answer to a command.
// One answer per console command, moved once: the size of the counters' variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandOutput {
    Members { me: MemberId, rows: Vec<MemberView>, suspicion: bool },
    SelfId { me: MemberId, incarnation: crate::id::Incarnation, phase: Phase },
    Suspicion(bool),
    Suspected(Vec<MemberView>),
    Stats { node: NodeStats, membership: MembershipStats, hydfs: Box<HydfsStats>, rainstorm: RainstormStats },
    Done(String),
    Help,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("`{0}` reads or writes local files; the node's runtime runs it")]
    NeedsDriver(String),
}

/// Why the cluster keys could not be replaced at run time.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyChangeError {
    #[error(
        "this node runs {}; turning authentication {} takes a restart with the new configuration",
        if *keyed { "with a cluster key" } else { "without a cluster key" },
        if *keyed { "off" } else { "on" }
    )]
    NeedsRestart { keyed: bool },
}

/// A message a layer queued for another node, waiting to be encoded by
/// [`Node::poll_transmit`].
struct Outgoing {
    to: NodeAddr,
    channel: Channel,
    body: Body,
}

pub struct Node {
    /// The address this node advertises: messages to it are delivered in-process.
    addr: NodeAddr,
    membership: Membership,
    hydfs: Hydfs,
    rainstorm: Rainstorm,
    /// HyDFS operations RainStorm started, by operation id: their answers go back to it.
    rainstorm_ops: BTreeMap<OpId, u64>,
    codec: Codec,
    /// Present under a cluster key: without one, sequence numbers could be forged anyway.
    replay: Option<ReplayGuard>,
    /// The numbers of the last frame sent: datagrams, and stream frames per lane.
    sent_datagrams: FrameSeq,
    sent_stream_frames: [FrameSeq; Lane::ALL.len()],
    /// Messages for other nodes, in the order the layers queued them.
    outbox: VecDeque<Outgoing>,
    /// Messages to this node itself, waiting for the next round of [`Node::handle_timeout`].
    local: VecDeque<Body>,
    /// HyDFS read requests from senders not listed yet, in arrival order.
    held: VecDeque<Held>,
    /// The frame bytes of `held`.
    held_bytes: usize,
    /// The time of the latest input (what an in-process delivery found while draining runs at).
    now: Time,
    max_datagram_bytes: usize,
    stream_frame_bytes: usize,
    rate: RateLimiter,
    events: VecDeque<NodeEvent>,
    stats: NodeStats,
}

impl Node {
    /// A node started at `now`, its RNG seeded with `seed`, keeping HyDFS blocks in memory. An
    /// introducer is a group of one at once; a member is idle until it is given [`Command::Join`].
    pub fn new(cfg: NodeConfig, now: Time, seed: u64) -> Node {
        Node::with_storage(cfg, now, seed, Box::new(MemStorage::default()))
            .expect("in-memory storage never fails")
    }

    /// A node whose HyDFS store lives in `storage` (recovered from what it holds: see
    /// `LocalStore::open`).
    pub fn with_storage(
        cfg: NodeConfig,
        now: Time,
        seed: u64,
        storage: Box<dyn Storage + Send>,
    ) -> Result<Node, StorageError> {
        let max_datagram_bytes = cfg.membership.max_datagram_bytes;
        let mut replay = cfg.codec.is_authenticated().then(|| ReplayGuard::new(DEFAULT_MAX_WINDOWS));
        if let Some(guard) = &mut replay {
            if cfg.membership.plants(crate::membership::PlantedBug::ReplayWindowOfOne) {
                guard.plant_window_of_one();
            }
            if cfg.membership.plants(crate::membership::PlantedBug::ReplayLanesShareAWindow) {
                guard.plant_lanes_share_a_window();
            }
        }
        let membership = Membership::new(
            cfg.membership,
            cfg.role,
            cfg.addr,
            cfg.introducer,
            now,
            seed,
            cfg.codec.overhead(),
        );
        let mut rainstorm_cfg = cfg.rainstorm;
        rainstorm_cfg.merge_copies = cfg.hydfs.min_copies.clamp(1, cfg.hydfs.replication.max(1));
        let hydfs = Hydfs::new(cfg.hydfs, membership.me(), storage, now)?;
        let mut node = Node {
            addr: cfg.addr,
            membership,
            hydfs,
            rainstorm: Rainstorm::new(rainstorm_cfg),
            rainstorm_ops: BTreeMap::new(),
            replay,
            sent_datagrams: FrameSeq(0),
            sent_stream_frames: [FrameSeq(0); Lane::ALL.len()],
            outbox: VecDeque::new(),
            local: VecDeque::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            now,
            codec: cfg.codec,
            max_datagram_bytes,
            stream_frame_bytes: cfg.limits.stream_frame_bytes,
            rate: RateLimiter::new(&cfg.limits),
            events: VecDeque::new(),
            stats: NodeStats::default(),
        };
        node.sync_ring(now);
        node.collect_events(now);
        Ok(node)
    }

    pub fn hydfs(&self) -> &Hydfs {
        &self.hydfs
    }

    /// Starts a HyDFS operation; its result comes back as [`NodeEvent::Hydfs`] with
    /// [`HydfsEvent::OpDone`] and the returned id.
    pub fn submit(&mut self, now: Time, op: ClientOp) -> Result<OpId, HydfsError> {
        let id = self.hydfs.submit(now, op);
        self.collect_events(now);
        id
    }

    pub fn rainstorm(&self) -> &Rainstorm {
        &self.rainstorm
    }

    /// Starts a RainStorm job led by this node; its progress and outputs arrive as
    /// [`NodeEvent::Rainstorm`].
    pub fn start_job(&mut self, now: Time, spec: JobSpec) -> Result<JobId, JobError> {
        let job = self.rainstorm.start_job(now, spec);
        self.collect_events(now);
        job
    }

    /// An operator program's answer to a [`NodeEvent::Program`] call.
    pub fn handle_program_result(&mut self, now: Time, token: u64, result: Result<ProgramResult, String>) {
        self.rainstorm.on_program(now, token, result);
        self.collect_events(now);
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn id(&self) -> MemberId {
        self.membership.me()
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Frames held now for senders not listed yet: neither received nor refused so far.
    pub fn held_frames(&self) -> usize {
        self.held.len()
    }

    /// Replaces the cluster keys of a node that runs under one (a key rollover without a
    /// restart). Switching authentication on or off needs a restart: the frame overhead, which
    /// membership sizes its datagrams by, would change.
    pub fn set_codec(&mut self, codec: Codec) -> Result<(), KeyChangeError> {
        if codec.is_authenticated() != self.codec.is_authenticated() {
            return Err(KeyChangeError::NeedsRestart { keyed: self.codec.is_authenticated() });
        }
        self.codec = codec;
        Ok(())
    }

    /// A frame arrived on `channel`.
    pub fn handle_frame(&mut self, now: Time, channel: Channel, frame: &[u8]) {
        let decoded = self.codec.decode(frame, self.limit(channel));
        self.handle_decoded(now, channel, decoded, frame.len());
    }

    /// A stream frame arrived whose trailer the driver checked already ([`Codec::verify`], on
    /// a thread of its own): it is decoded and handled as [`Node::handle_frame`] would.
    pub fn handle_verified_frame(&mut self, now: Time, frame: &VerifiedFrame) {
        let decoded = self.codec.decode_verified(frame, self.limit(Channel::Stream));
        self.handle_decoded(now, Channel::Stream, decoded, frame.len());
    }

    /// A frame of `frame_len` bytes that arrived on `channel`, decoded (or refused).
    fn handle_decoded(
        &mut self,
        now: Time,
        channel: Channel,
        decoded: Result<Envelope, WireError>,
        frame_len: usize,
    ) {
        match decoded {
            Ok(envelope) => {
                if let Some(guard) = &mut self.replay {
                    let cause = match guard.check(now, envelope.from, channel, envelope.lane, envelope.seq) {
                        Verdict::Fresh => None,
                        Verdict::Replayed => Some(crate::replay::REPLAYED),
                        Verdict::Stale => Some(crate::replay::STALE),
                    };
                    if let Some(cause) = cause {
                        *self.stats.frames_rejected.entry(cause).or_default() += 1;
                        return;
                    }
                }
                match self.refusal(&envelope) {
                    Some(NOT_A_MEMBER) if self.may_hold(now, &envelope) => {
                        return self.hold(now, envelope.from, envelope.body, frame_len);
                    }
                    Some(NOT_A_MEMBER) => {
                        *self.stats.frames_rejected.entry(NOT_A_MEMBER).or_default() += 1;
                        if let Body::Hydfs(msg @ HydfsMsg::Write(_)) = &envelope.body {
                            // Answered within its sender's request rate: the answer goes to the
                            // address the frame names, which a keyless sender may choose freely.
                            if self.membership.may_be_unheard_of(now, &envelope.from)
                                && !self.over_rate_from(now, envelope.from, &envelope.body)
                            {
                                self.hydfs.refuse_stranger(envelope.from.addr, msg);
                                self.collect_events(now);
                            }
                        }
                        return;
                    }
                    Some(cause) => {
                        *self.stats.frames_rejected.entry(cause).or_default() += 1;
                        return;
                    }
                    None => {}
                }
                if channel == Channel::Stream && self.over_rate(now, &envelope) {
                    *self.stats.frames_rejected.entry(RATE_LIMITED).or_default() += 1;
                    return;
                }
                self.stats.frames_received += 1;
                self.stats.bytes_received += frame_len as u64;
                if self.held.iter().any(|h| h.from == envelope.from) {
                    // Its sender's earlier messages first.
                    self.release_held(now);
                }
                self.deliver(now, envelope.from, envelope.body);
                self.collect_events(now);
            }
            Err(e) => {
                *self.stats.frames_rejected.entry(e.cause()).or_default() += 1;
            }
        }
    }

    /// Why a decoded frame is refused before any layer sees it, if it is: under a cluster key,
    /// one addressed to another node (a capture replayed here); and HyDFS or RainStorm
    /// traffic from anyone but a current member (its id as this node knows it), so that only
    /// members store, read and run.
    fn refusal(&self, envelope: &Envelope) -> Option<&'static str> {
        if self.codec.is_authenticated() && envelope.to != self.addr {
            return Some(MISADDRESSED);
        }
        match envelope.body {
            Body::Membership(_) => None,
            Body::Hydfs(_) | Body::Rainstorm(_) => {
                (!self.membership.contains(&envelope.from)).then_some(NOT_A_MEMBER)
            }
        }
    }

    /// Frames the driver refused before they reached the node (by [`Codec::precheck`]), by
    /// [`crate::wire::WireError::cause`], so that the node's counters tell every refusal.
    pub fn record_rejected(&mut self, cause: &'static str, frames: u64) {
        *self.stats.frames_rejected.entry(cause).or_default() += frames;
    }

    /// The driver's counts of what it dropped on stream connections (they only grow).
    pub fn set_stream_drops(&mut self, drops: StreamDrops) {
        self.stats.streams = drops;
    }

    /// A datagram arrived.
    pub fn handle_datagram(&mut self, now: Time, frame: &[u8]) {
        self.handle_frame(now, Channel::Datagram, frame);
    }

    /// The driver could not deliver a stream frame to `to`.
    pub fn handle_send_failed(&mut self, now: Time, to: NodeAddr, error: &str) {
        self.membership.handle_send_failed(now, to, error);
        self.hydfs.handle_send_failed(now, to);
        self.collect_events(now);
    }

    /// Handles HyDFS messages in batches (group commit): the driver hands the node every frame
    /// already waiting, then calls [`Node::flush`], and one storage flush covers them all. The
    /// simulator hands over one frame at a time and leaves this off.
    pub fn set_batched(&mut self, on: bool) {
        self.hydfs.set_batched(on);
    }

    /// Ends a batch of frames: HyDFS answers what they completed once one flush covers them.
    pub fn flush(&mut self, now: Time) {
        self.hydfs.flush(now);
        self.collect_events(now);
    }

    /// Storage finished a flush it ran behind the node's back: the answers waiting for it go.
    pub fn storage_flushed(&mut self, now: Time) {
        self.hydfs.storage_flushed(now);
        self.collect_events(now);
    }

    /// Timers due at `now` fire, after one round of messages to this node itself (those queued
    /// before this call; what they send to the node waits for the next round).
    pub fn handle_timeout(&mut self, now: Time) {
        self.expire_held(now);
        let round = std::mem::take(&mut self.local);
        if !round.is_empty() {
            let me = self.membership.me();
            for body in round {
                self.deliver(now, me, body);
            }
            self.collect_events(now);
        }
        self.membership.handle_timeout(now);
        self.collect_events(now);
        self.hydfs.handle_timeout(now);
        self.collect_events(now);
        self.rainstorm.handle_timeout(now);
        self.collect_events(now);
    }

    /// A user command.
    pub fn handle_command(&mut self, now: Time, command: Command) -> Result<CommandOutput, CommandError> {
        let m = &mut self.membership;
        let out = match command {
            Command::ListMem => CommandOutput::Members {
                me: m.me(),
                rows: m.members().collect(),
                suspicion: m.suspicion_enabled(),
            },
            Command::ListSelf => {
                CommandOutput::SelfId { me: m.me(), incarnation: m.incarnation(), phase: m.phase() }
            }
            Command::Join => {
                m.join(now)?;
                CommandOutput::Done(format!("joining through the introducer as {}", m.me()))
            }
            Command::Leave => {
                let me = m.me();
                m.leave(now)?;
                CommandOutput::Done(format!("{me} left the group"))
            }
            Command::SetSuspicion(on) => {
                m.set_suspicion(now, on)?;
                CommandOutput::Done(format!(
                    "suspicion {} (spreading to every member)",
                    if on { "enabled" } else { "disabled" }
                ))
            }
            Command::StatusSus => CommandOutput::Suspicion(m.suspicion_enabled()),
            Command::ListSuspected => CommandOutput::Suspected(m.suspected().collect()),
            Command::Stats => CommandOutput::Stats {
                node: self.stats.clone(),
                membership: m.stats(),
                hydfs: Box::new(self.hydfs.stats()),
                rainstorm: self.rainstorm.stats(),
            },
            Command::Help => CommandOutput::Help,
            Command::File(f) => return Err(CommandError::NeedsDriver(f.to_string())),
            Command::Job(j) => return Err(CommandError::NeedsDriver(j.to_string())),
            Command::ReloadKeys => return Err(CommandError::NeedsDriver("reload_keys".into())),
        };
        self.collect_events(now);
        Ok(out)
    }

    /// The next frame to send. Drain until `None` after every input.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.poll_transmit_unsealed().map(Transmit::seal)
    }

    /// The next frame to send, as [`Node::poll_transmit`], but without its trailer: the driver
    /// seals it ([`Transmit::seal`]) before sending, on this thread or another. Frames of one
    /// (destination, lane) must still be sent in the order they were polled.
    #[must_use]
    pub fn poll_transmit_unsealed(&mut self) -> Option<Transmit<Frame>> {
        if self.outbox.is_empty() {
            // Every input routes what it produced; this only catches what a layer queued
            // outside one (nothing today), at the time of the latest input.
            self.collect_events(self.now);
        }
        while let Some(Outgoing { to, channel, body }) = self.outbox.pop_front() {
            debug_assert_ne!(to, self.addr, "a message to this node itself reached the outbox");
            let (lane, seq) = match channel {
                Channel::Datagram => (Lane::Control, &mut self.sent_datagrams),
                Channel::Stream => {
                    let lane = body.lane();
                    (lane, &mut self.sent_stream_frames[lane.index()])
                }
            };
            seq.0 += 1;
            let envelope = Envelope { from: self.membership.me(), to, lane, seq: *seq, body };
            match self.codec.encode_unsealed(envelope, self.limit(channel)) {
                Ok(payload) => {
                    self.stats.frames_sent += 1;
                    self.stats.bytes_sent += payload.len() as u64;
                    return Some(Transmit { to, channel, lane, payload });
                }
                Err(_) => self.stats.frames_unsendable += 1,
            }
        }
        None
    }

    /// Hands a message from `from` (another node, or this one) to its layer.
    fn deliver(&mut self, now: Time, from: MemberId, body: Body) {
        debug_assert!(
            matches!(body, Body::Membership(_))
                || from == self.membership.me()
                || self.membership.contains(&from),
            "only members reach HyDFS and RainStorm"
        );
        match body {
            Body::Membership(msg) => self.membership.handle_message(now, from, msg),
            Body::Hydfs(msg) => self.hydfs.handle_message(now, from, msg),
            Body::Rainstorm(msg) => self.rainstorm.handle_message(now, from, msg),
        }
    }

    /// Moves every message the layers queued to the outbox, in layer order (membership, HyDFS,
    /// RainStorm), except those addressed to this node itself, which wait for the next round of
    /// [`Node::handle_timeout`].
    fn route_outgoing(&mut self) {
        loop {
            let (to, channel, body) = match self.membership.poll_outgoing() {
                Some(out) => (out.to, out.channel, Body::Membership(out.msg)),
                None => match self.hydfs.poll_outgoing() {
                    Some((to, msg)) => (to, Channel::Stream, Body::Hydfs(msg)),
                    None => match self.rainstorm.poll_outgoing() {
                        Some((to, msg)) => (to, Channel::Stream, Body::Rainstorm(msg)),
                        None => return,
                    },
                },
            };
            if to == self.addr {
                self.stats.frames_local += 1;
                self.local.push_back(body);
            } else {
                self.outbox.push_back(Outgoing { to, channel, body });
            }
        }
    }

    /// The next event. Drain until `None` after every input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] must next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        let local = (!self.local.is_empty()).then_some(self.now);
        let held = self.held.front().map(|h| h.at + STRANGER_HOLD);
        [
            local,
            held,
            self.membership.poll_timeout(),
            self.hydfs.poll_timeout(),
            self.rainstorm.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn limit(&self, channel: Channel) -> usize {
        match channel {
            Channel::Datagram => self.max_datagram_bytes,
            Channel::Stream => self.stream_frame_bytes,
        }
    }

    /// Whether a stream request from another node is over its sender's rate (taking a token if
    /// not).
    fn over_rate(&mut self, now: Time, envelope: &Envelope) -> bool {
        self.over_rate_from(now, envelope.from, &envelope.body)
    }

    fn over_rate_from(&mut self, now: Time, from: MemberId, body: &Body) -> bool {
        from.addr != self.membership.me().addr
            && counts_against_rate(body)
            && !self.rate.allow(now, from.addr)
    }

    /// Whether a frame refused as `not_a_member` is held instead: a HyDFS read request, or the
    /// answer to a read this node is waiting on from that very address, from a process that
    /// may be a member this node has not heard of yet.
    fn may_hold(&self, now: Time, envelope: &Envelope) -> bool {
        matches!(&envelope.body, Body::Hydfs(msg) if msg.is_read_request()
            || self.hydfs.awaits_answer(msg, envelope.from.addr))
            && self.membership.may_be_unheard_of(now, &envelope.from)
    }

    /// Holds a message from `from`, a sender not listed yet, until it is (or the hold ends); the
    /// oldest held frames make room, counted as refused.
    fn hold(&mut self, now: Time, from: MemberId, body: Body, bytes: usize) {
        if bytes > HELD_BYTES {
            *self.stats.frames_rejected.entry(NOT_A_MEMBER).or_default() += 1;
            return;
        }
        while !self.held.is_empty()
            && (self.held.len() >= HELD_FRAMES || self.held_bytes + bytes > HELD_BYTES)
        {
            self.drop_oldest_held();
        }
        self.held.push_back(Held { at: now, from, body, bytes });
        self.held_bytes += bytes;
        debug_assert!(
            self.held.len() <= HELD_FRAMES && self.held_bytes <= HELD_BYTES,
            "held frames stay bounded"
        );
    }

    fn drop_oldest_held(&mut self) {
        if let Some(h) = self.held.pop_front() {
            self.held_bytes -= h.bytes;
            *self.stats.frames_rejected.entry(NOT_A_MEMBER).or_default() += 1;
        }
    }

    /// Drops the held frames whose hold ended.
    fn expire_held(&mut self, now: Time) {
        while self.held.front().is_some_and(|h| now >= h.at + STRANGER_HOLD) {
            self.drop_oldest_held();
        }
    }

    /// Hands the layers every held message whose sender is now listed, in arrival order (those
    /// whose hold ended are dropped first).
    fn release_held(&mut self, now: Time) {
        self.expire_held(now);
        if self.held.iter().all(|h| !self.membership.contains(&h.from)) {
            return;
        }
        let (listed, waiting): (VecDeque<Held>, VecDeque<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| self.membership.contains(&h.from));
        self.held = waiting;
        for h in listed {
            self.held_bytes -= h.bytes;
            if self.over_rate_from(now, h.from, &h.body) {
                *self.stats.frames_rejected.entry(RATE_LIMITED).or_default() += 1;
                continue;
            }
            self.stats.frames_held += 1;
            self.stats.frames_received += 1;
            self.stats.bytes_received += h.bytes as u64;
            self.deliver(now, h.from, h.body);
        }
        debug_assert_eq!(self.held_bytes, self.held.iter().map(|h| h.bytes).sum::<usize>());
    }

    /// Collects every layer's events and routes every message the layers queued.
    fn collect_events(&mut self, now: Time) {
        self.now = now;
        self.collect_layer_events(now);
        self.route_outgoing();
    }

    fn collect_layer_events(&mut self, now: Time) {
        let mut membership_changed = false;
        while let Some(e) = self.membership.poll_event() {
            membership_changed = true;
            self.events.push_back(NodeEvent::Membership(e));
        }
        if membership_changed {
            self.sync_ring(now);
            // Held messages reach their layers after the ring that lists their senders.
            self.release_held(now);
        }
        // RainStorm's file operations and their answers can chain (a cached read answers at
        // once), so go round until both layers are quiet.
        loop {
            let mut progressed = false;
            while let Some((token, op)) = self.rainstorm.poll_hydfs() {
                progressed = true;
                match self.hydfs.submit(now, op) {
                    Ok(id) => {
                        self.rainstorm_ops.insert(id, token);
                    }
                    Err(e) => self.rainstorm.on_hydfs(now, token, Err(e)),
                }
            }
            while let Some(e) = self.hydfs.poll_event() {
                progressed = true;
                match e {
                    HydfsEvent::OpDone { op, result } if self.rainstorm_ops.contains_key(&op) => {
                        let token = self.rainstorm_ops.remove(&op).expect("present");
                        self.rainstorm.on_hydfs(now, token, result);
                    }
                    e => self.events.push_back(NodeEvent::Hydfs(e)),
                }
            }
            while let Some(e) = self.rainstorm.poll_event() {
                progressed = true;
                self.events.push_back(NodeEvent::Rainstorm(e));
            }
            while let Some(call) = self.rainstorm.poll_program() {
                self.events.push_back(NodeEvent::Program(call));
            }
            if !progressed {
                break;
            }
        }
    }

    /// Gives HyDFS the current member list (suspected members included: only confirmed failures
    /// and leaves move files).
    fn sync_ring(&mut self, now: Time) {
        let me = self.membership.is_joined().then(|| self.membership.me());
        let others: Vec<MemberId> = self.membership.members().map(|v| v.id).collect();
        self.hydfs.set_members(now, me, others.clone());
        self.rainstorm.set_members(now, me, others);
    }
}

/// A read request from a sender not listed yet ([`Node::hold`]).
struct Held {
    at: Time,
    from: MemberId,
    body: Body,
    bytes: usize,
}

/// How long a read request (or the answer to one of this node's) from a sender not listed yet
/// is held for the sender to be listed:
/// time for the news of a join to spread (a few protocol periods), and well under a request's
/// timeout.
pub const STRANGER_HOLD: Millis = Millis(5_000);
/// Frames held from senders not listed yet, at most.
pub const HELD_FRAMES: usize = 256;
/// Bytes of frames held from senders not listed yet, at most.
pub const HELD_BYTES: usize = 32 << 20;

/// The cause frames refused by the per-peer request rate limit are counted under.
const RATE_LIMITED: &str = "rate_limited";
/// The cause frames addressed to another node are counted under (under a cluster key).
const MISADDRESSED: &str = "misaddressed";
/// The cause HyDFS and RainStorm frames from a non-member are counted under. Honest frames meet
/// it too while views differ: from a member that joined before this node heard of it, or from
/// one this node has declared failed.
pub const NOT_A_MEMBER: &str = "not_a_member";

impl fmt::Display for CommandOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandOutput::Members { me, rows, suspicion } => {
                writeln!(
                    f,
                    "{} members (mode {}):",
                    rows.len() + 1,
                    if *suspicion { "PingAck+S" } else { "PingAck" }
                )?;
                writeln!(f, "  {:<32} {:>11}  status", "id", "incarnation")?;
                writeln!(f, "  {:<32} {:>11}  self", me.to_string(), "-")?;
                for r in rows {
                    writeln!(
                        f,
                        "  {:<32} {:>11}  {}",
                        r.id.to_string(),
                        r.incarnation,
                        status_word(r.status)
                    )?;
                }
                Ok(())
            }
            CommandOutput::SelfId { me, incarnation, phase } => {
                writeln!(f, "{me} incarnation {incarnation} {}", phase_word(*phase))
            }
            CommandOutput::Suspicion(on) => {
                writeln!(f, "suspicion {}", if *on { "enabled (PingAck+S)" } else { "disabled (PingAck)" })
            }
            CommandOutput::Suspected(rows) => {
                if rows.is_empty() {
                    return writeln!(f, "no suspected members");
                }
                for r in rows {
                    writeln!(f, "{} incarnation {}", r.id, r.incarnation)?;
                }
                Ok(())
            }
            CommandOutput::Stats { node, membership, hydfs, rainstorm } => {
                writeln!(f, "frames_sent {}", node.frames_sent)?;
                writeln!(f, "bytes_sent {}", node.bytes_sent)?;
                writeln!(f, "frames_received {}", node.frames_received)?;
                writeln!(f, "bytes_received {}", node.bytes_received)?;
                writeln!(f, "frames_local {}", node.frames_local)?;
                writeln!(f, "frames_held {}", node.frames_held)?;
                // The limits' counters are always shown, other causes once they occur.
                for (cause, n) in &node.rejected_by_cause() {
                    writeln!(f, "frames_rejected.{cause} {n}")?;
                }
                writeln!(f, "connections_refused {}", node.streams.connections_refused)?;
                writeln!(f, "connections_timed_out {}", node.streams.connections_timed_out)?;
                writeln!(f, "frames_send_dropped {}", node.streams.frames_send_dropped)?;
                writeln!(f, "pings_sent {}", membership.pings_sent)?;
                writeln!(f, "ping_reqs_sent {}", membership.ping_reqs_sent)?;
                writeln!(f, "suspicions_raised {}", membership.suspicions_raised)?;
                writeln!(f, "refutations {}", membership.refutations)?;
                writeln!(f, "failures_declared {}", membership.failures_declared)?;
                writeln!(f, "hydfs.names_refused {}", hydfs.names_refused)?;
                writeln!(f, "hydfs.busy_refusals {}", hydfs.busy_refusals)?;
                writeln!(f, "hydfs.pending_appends_refused {}", hydfs.pending_appends_refused)?;
                writeln!(f, "hydfs.full_file_appends_refused {}", hydfs.full_file_appends_refused)?;
                writeln!(f, "hydfs.stale_appends_refused {}", hydfs.stale_appends_refused)?;
                writeln!(f, "hydfs.files_deleted {}", hydfs.files_deleted)?;
                writeln!(f, "hydfs.tombstones {}", hydfs.tombstones)?;
                writeln!(f, "hydfs.tombstones_evicted {}", hydfs.tombstones_evicted)?;
                writeln!(f, "hydfs.files_under_replicated {}", hydfs.files_under_replicated)?;
                writeln!(f, "hydfs.bytes_under_replicated {}", hydfs.bytes_under_replicated)?;
                writeln!(f, "rainstorm.batches_rejected {}", rainstorm.batches_rejected)?;
                for (cause, n) in &rainstorm.refused_by_cause() {
                    writeln!(f, "rainstorm.refused.{cause} {n}")?;
                }
                writeln!(f, "rainstorm.batches_sent {}", rainstorm.batches_sent)?;
                writeln!(f, "rainstorm.checkpoints {}", rainstorm.checkpoints)?;
                writeln!(f, "rainstorm.commits {}", rainstorm.commits)?;
                writeln!(f, "rainstorm.log_bytes {}", rainstorm.log_bytes)?;
                writeln!(f, "rainstorm.output_bytes {}", rainstorm.output_bytes)?;
                writeln!(f, "rainstorm.rollbacks {}", rainstorm.rollbacks)
            }
            CommandOutput::Done(msg) => writeln!(f, "{msg}"),
            CommandOutput::Help => {
                for (name, what) in COMMAND_HELP {
                    writeln!(f, "  {name:<16} {what}")?;
                }
                Ok(())
            }
        }
    }
}

fn status_word(s: MemberStatus) -> &'static str {
    match s {
        MemberStatus::Alive => "alive",
        MemberStatus::Suspect { .. } => "SUS",
    }
}

fn phase_word(p: Phase) -> &'static str {
    match p {
        Phase::Idle => "(not a member)",
        Phase::Joining { .. } => "(joining)",
        Phase::Joined => "(member)",
        Phase::Leaving { .. } => "(left)",
    }
}

#[cfg(test)]
mod tests;
