//! `node_messages`: one [`Node`] driven by a script of inputs decoded from the fuzzer's bytes:
//! raw frames, framed messages of a layer built from the bytes that follow, console commands,
//! time passing, send failures, HyDFS operations, jobs and operator-program answers.
//!
//! After every step the outputs are drained and these invariants are checked:
//! * no panic;
//! * every datagram is at most the configured `max_datagram_bytes`, every frame decodes under
//!   its channel's limit and names the node as its sender, and no frame was unsendable (the
//!   simulator's **bounded** checker);
//! * no frame goes to the node's own address (those messages are delivered in-process), and
//!   every frame is on its message's lane (datagrams on the control lane), its header saying so;
//! * every frame fed is counted once, as received or as rejected, in [`Node::stats`], or is
//!   held for a sender not listed yet ([`Node::held_frames`]);
//! * timers make progress: once due timers have run, [`Node::poll_timeout`] is later than `now`
//!   within a few rounds;
//! * under a cluster key, the replay guard judges every authentic frame as a model that
//!   remembers every (sender, channel, lane, number) accepted does: a number seen before is
//!   refused as replayed, one [`REPLAY_WINDOW`] or more below the highest of its lane as stale,
//!   any other is delivered;
//! * the node never lists itself as a member (nor reports itself joining);
//! * membership queues stay within the simulator's [`queue_bound`] of the member ids the node
//!   can have heard of (each takes at least [`MIN_ID_BYTES`] bytes of a frame);
//! * commands answer with typed values: file and job commands are left to the driver, the
//!   others never are, and every answer displays.
//!
//! A script starts with a flags byte (bit 0: a member that joins through the introducer,
//! otherwise the introducer itself, a group of one at once; bit 1: suspicion off; bit 2: the
//! node and the scripted messages share a cluster key), then steps;
//! each step is an op byte whose low 3 bits pick the kind (see [`Step`]). Scripts are cut at
//! [`MAX_STEPS`] steps so an execution stays cheap.

use crate::decode::{layer_frame_with, Layer};
use rainstorm_core::command::Command;
use rainstorm_core::hydfs::{ClientOp, FileName, HydfsConfig, ReadFrom};
use rainstorm_core::limits::LimitsConfig;
use rainstorm_core::membership::{JoinKind, MembershipConfig, MembershipEvent, MembershipMsg, Role};
use rainstorm_core::node::{CommandError, NodeConfig, NodeStats};
use rainstorm_core::rainstorm::{JobSpec, OperatorSpec, ProgramResult, RainstormConfig};
use rainstorm_core::replay::{FrameSeq, Verdict, REPLAYED, REPLAY_WINDOW, STALE};
use rainstorm_core::wire::{canonical_bytes, ClusterKey, Codec};
use rainstorm_core::{Channel, Lane, MemberId, Node, NodeAddr, NodeEvent, Time};
use rainstorm_sim::check::queue_bound;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// Steps after which a script is cut.
pub const MAX_STEPS: usize = 32;
/// The fewest bytes a member id takes in a frame (an IPv4 address and port, and a join time).
pub const MIN_ID_BYTES: usize = 18;
/// When scripts start (join times of the scripted peers are earlier).
pub const START: Time = Time(1_000_000);
/// Rounds of due timers after which `poll_timeout` must be later than `now`.
const MAX_TIMER_ROUNDS: usize = 32;
/// Peer addresses: port `7000 + i`; 7000 is the introducer.
pub const PEERS: u16 = 5;
const FILES: [&str; 3] = ["in.csv", "out", "f"];
/// The cluster key of keyed scripts.
pub const KEY: &str = "node-messages fuzzing key";
const PROGRAM_HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The address of peer `i` (of [`PEERS`]): `127.0.0.1:7000 + i`.
pub fn peer_addr(i: u8) -> NodeAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + u16::from(i) % PEERS))
}

/// The sender id of a [`Step::Message`] from `peer`: the address `peer % PEERS`, the join time
/// `1000 + peer / PEERS` (so the same address can come as several incarnations, the node's own
/// address included).
pub fn peer_id(peer: u8) -> MemberId {
    MemberId::new(peer_addr(peer), 1_000 + u64::from(peer / PEERS as u8))
}

/// One input of a script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Op 0 (bit 3: stream): a `u16` length, then that many bytes delivered as they are.
    Raw { channel: Channel, frame: Vec<u8> },
    /// Op 1 (bit 3: stream; bits 4-5: layer; bits 6-7: [`SeqChoice`]): a peer byte, a lane
    /// byte (its value modulo 3 indexes [`Lane::ALL`]), the offset of [`SeqChoice::Offset`], a
    /// `u16` length, then the message bytes, delivered in a valid frame on that lane from
    /// [`peer_id`]`(peer)` (signed under [`KEY`] in a keyed script).
    Message { layer: Layer, channel: Channel, peer: u8, lane: Lane, seq: SeqChoice, bytes: Vec<u8> },
    /// Op 2: a length byte, then a console line (UTF-8, lossily).
    Command(String),
    /// Op 3: a `u16` of milliseconds to let pass, then the timers fire.
    Advance { ms: u16 },
    /// Op 4: a peer byte: a stream frame to that peer could not be delivered.
    SendFailed { peer: u8 },
    /// Op 5: a byte: HyDFS operation `b % 4` (create, append, get, merge) on file `b / 4`.
    Submit { op: u8 },
    /// Op 6: a byte: a job of `b % 4` tasks (0 is refused); bit 2: its second operator is a
    /// program rather than `split`.
    StartJob { spec: u8 },
    /// Op 7 (bit 3: success): answers the oldest operator-program call not answered yet.
    ProgramAnswer { ok: bool },
}

/// The frame number a [`Step::Message`] carries, from the numbers the script used before for
/// the same sender, channel and lane: what drives the replay guard of a keyed node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqChoice {
    /// One above the highest number used (1 at first): what an honest sender sends.
    Next,
    /// The last number used (1 at first): a duplicate, or a replay.
    Repeat,
    /// The highest number used plus this (an `i16` after the peer byte), at least 0: a frame
    /// reordered, replayed, or older than the window.
    Offset(i16),
    /// The highest number used plus [`REPLAY_WINDOW`]: what leaves the numbers before stale.
    Jump,
}

impl SeqChoice {
    fn bits(self) -> u8 {
        match self {
            SeqChoice::Next => 0,
            SeqChoice::Repeat => 1,
            SeqChoice::Offset(_) => 2,
            SeqChoice::Jump => 3,
        }
    }

    /// The number to send, given the (last, highest) numbers used so far.
    fn pick(self, (last, highest): (u64, u64)) -> u64 {
        match self {
            SeqChoice::Next => highest + 1,
            SeqChoice::Repeat => last.max(1),
            SeqChoice::Offset(d) => highest.saturating_add_signed(i64::from(d)),
            SeqChoice::Jump => highest + REPLAY_WINDOW,
        }
    }
}

/// A decoded script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    pub member: bool,
    pub suspicion: bool,
    /// The node runs under a cluster key ([`KEY`]), which turns its replay guard on.
    pub keyed: bool,
    pub steps: Vec<Step>,
}

struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(*b)
    }

    fn u16(&mut self) -> u16 {
        let lo = self.byte().unwrap_or(0);
        let hi = self.byte().unwrap_or(0);
        u16::from_le_bytes([lo, hi])
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let (taken, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        taken.to_vec()
    }
}

fn channel(op: u8) -> Channel {
    if op & 0b1000 == 0 {
        Channel::Datagram
    } else {
        Channel::Stream
    }
}

fn channel_bit(channel: Channel) -> u8 {
    match channel {
        Channel::Datagram => 0,
        Channel::Stream => 0b1000,
    }
}

impl Script {
    /// Any bytes are a script.
    pub fn decode(data: &[u8]) -> Script {
        let mut r = Reader { data };
        let flags = r.byte().unwrap_or(0);
        let mut steps = Vec::new();
        while steps.len() < MAX_STEPS {
            let Some(op) = r.byte() else { break };
            let step = match op & 0b111 {
                0 => {
                    let len = r.u16();
                    Step::Raw { channel: channel(op), frame: r.bytes(len.into()) }
                }
                1 => {
                    let layer = Layer::ALL[usize::from((op >> 4) & 0b11) % Layer::ALL.len()];
                    let peer = r.byte().unwrap_or(0);
                    let lane = Lane::ALL[usize::from(r.byte().unwrap_or(0)) % Lane::ALL.len()];
                    let seq = match op >> 6 {
                        0 => SeqChoice::Next,
                        1 => SeqChoice::Repeat,
                        2 => SeqChoice::Offset(r.u16() as i16),
                        _ => SeqChoice::Jump,
                    };
                    let len = r.u16();
                    Step::Message { layer, channel: channel(op), peer, lane, seq, bytes: r.bytes(len.into()) }
                }
                2 => {
                    let len = r.byte().unwrap_or(0);
                    Step::Command(String::from_utf8_lossy(&r.bytes(len.into())).into_owned())
                }
                3 => Step::Advance { ms: r.u16() },
                4 => Step::SendFailed { peer: r.byte().unwrap_or(0) },
                5 => Step::Submit { op: r.byte().unwrap_or(0) },
                6 => Step::StartJob { spec: r.byte().unwrap_or(0) },
                _ => Step::ProgramAnswer { ok: op & 0b1000 != 0 },
            };
            steps.push(step);
        }
        Script { member: flags & 1 != 0, suspicion: flags & 2 == 0, keyed: flags & 4 != 0, steps }
    }

    /// The bytes that decode to this script (lengths over their field's range are cut).
    pub fn encode(&self) -> Vec<u8> {
        let flags =
            u8::from(self.member) | if self.suspicion { 0 } else { 2 } | if self.keyed { 4 } else { 0 };
        let mut out = vec![flags];
        let with_len = |out: &mut Vec<u8>, bytes: &[u8]| {
            let len = bytes.len().min(usize::from(u16::MAX));
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&bytes[..len]);
        };
        for step in self.steps.iter().take(MAX_STEPS) {
            match step {
                Step::Raw { channel, frame } => {
                    out.push(channel_bit(*channel));
                    with_len(&mut out, frame);
                }
                Step::Message { layer, channel, peer, lane, seq, bytes } => {
                    let layer = match layer {
                        Layer::Membership => 0,
                        Layer::Hydfs => 1,
                        Layer::Rainstorm => 2,
                    };
                    out.extend([1 | channel_bit(*channel) | layer << 4 | seq.bits() << 6, *peer]);
                    out.push(lane.index() as u8);
                    if let SeqChoice::Offset(d) = seq {
                        out.extend_from_slice(&d.to_le_bytes());
                    }
                    with_len(&mut out, bytes);
                }
                Step::Command(line) => {
                    let bytes = &line.as_bytes()[..line.len().min(255)];
                    out.extend([2, bytes.len() as u8]);
                    out.extend_from_slice(bytes);
                }
                Step::Advance { ms } => {
                    out.push(3);
                    out.extend_from_slice(&ms.to_le_bytes());
                }
                Step::SendFailed { peer } => out.extend([4, *peer]),
                Step::Submit { op } => out.extend([5, *op]),
                Step::StartJob { spec } => out.extend([6, *spec]),
                Step::ProgramAnswer { ok } => out.push(if *ok { 0b1111 } else { 7 }),
            }
        }
        out
    }
}

/// A keyed script whose stream frames from one peer come reordered, replayed, and older than the
/// replay window: numbers 1, 2, 4098 (a jump), 4097 (reordered), 4097 (replayed), 3 (the oldest
/// the window holds), 2 (stale), 4099 on the control lane; then, on the bulk lane, numbers 1 and
/// 1 again (fresh, since each lane has its own window, then replayed). A seed of the corpus, and
/// what tests drive the check with.
pub fn reordered_and_stale_script() -> Script {
    let bytes = canonical_bytes(&MembershipMsg::SyncDigest { digest: 1 });
    let message = |lane, seq| Step::Message {
        layer: Layer::Membership,
        channel: Channel::Stream,
        peer: 3,
        lane,
        seq,
        bytes: bytes.clone(),
    };
    let steps = vec![
        message(Lane::Control, SeqChoice::Next),
        message(Lane::Control, SeqChoice::Next),
        message(Lane::Control, SeqChoice::Jump),
        message(Lane::Control, SeqChoice::Offset(-1)),
        message(Lane::Control, SeqChoice::Repeat),
        message(Lane::Control, SeqChoice::Offset(-4095)),
        message(Lane::Control, SeqChoice::Offset(-4096)),
        message(Lane::Control, SeqChoice::Next),
        message(Lane::Bulk, SeqChoice::Next),
        message(Lane::Bulk, SeqChoice::Repeat),
        Step::Advance { ms: 1_000 },
    ];
    Script { member: false, suspicion: true, keyed: true, steps }
}

/// The node a script drives, and what the checks need to know about its past.
struct Run {
    node: Node,
    now: Time,
    codec: Codec,
    max_datagram_bytes: usize,
    stream_frame_bytes: usize,
    frames_fed: u64,
    /// The (last, highest) frame numbers the script used, per sender, channel and lane.
    numbers: BTreeMap<(MemberId, Channel, Lane), (u64, u64)>,
    /// The model of the replay guard: the numbers accepted, per sender, channel and lane.
    accepted: BTreeMap<(MemberId, Channel, Lane), BTreeSet<u64>>,
    /// Member ids the node can have heard of or held itself (an upper bound).
    ids_ever: usize,
    /// Operator-program calls not answered yet: token and tuple count.
    calls: Vec<(u64, usize)>,
}

/// `node_messages`.
pub fn node_messages(data: &[u8]) {
    let _ = run_script(&Script::decode(data), MembershipConfig::lan());
}

/// Runs `script` on a node with `membership` (its suspicion setting taken from the script),
/// checking the invariants after every step; panics on a violation. Returns the node's counters.
pub fn run_script(script: &Script, membership: MembershipConfig) -> NodeStats {
    let membership = MembershipConfig { suspicion_at_start: script.suspicion, ..membership };
    let max_datagram_bytes = membership.max_datagram_bytes;
    let limits = LimitsConfig::default();
    let stream_frame_bytes = limits.stream_frame_bytes;
    let codec = if script.keyed {
        Codec::keyed(ClusterKey::from_passphrase(KEY), Vec::new())
    } else {
        Codec::plain()
    };
    let cfg = NodeConfig {
        role: if script.member { Role::Member } else { Role::Introducer },
        addr: peer_addr(u8::from(script.member)),
        introducer: peer_addr(0),
        membership,
        hydfs: HydfsConfig::default(),
        rainstorm: RainstormConfig { run_programs: true, ..RainstormConfig::default() },
        limits,
        codec: codec.clone(),
    };
    let mut run = Run {
        node: Node::new(cfg, START, 7),
        now: START,
        codec,
        max_datagram_bytes,
        stream_frame_bytes,
        frames_fed: 0,
        numbers: BTreeMap::new(),
        accepted: BTreeMap::new(),
        ids_ever: 2,
        calls: Vec::new(),
    };
    if script.member {
        run.command(Command::Join);
    } else {
        // The other peers join, so that their file and job traffic reaches the layers (the
        // node takes it from members only).
        for peer in 1..PEERS as u8 {
            let join = MembershipMsg::JoinRequest { nonce: u64::from(peer), kind: JoinKind::Fresh };
            let bytes = canonical_bytes(&join);
            let (layer, lane, seq) = (Layer::Membership, Lane::Control, SeqChoice::Next);
            run.step(Step::Message { layer, channel: Channel::Stream, peer, lane, seq, bytes });
        }
    }
    run.settle();
    for step in &script.steps {
        run.step(step.clone());
        run.settle();
    }
    run.node.stats().clone()
}

impl Run {
    fn step(&mut self, step: Step) {
        let now = self.now;
        match step {
            Step::Raw { channel, frame } => self.feed(channel, &frame),
            Step::Message { layer, channel, peer, lane, seq, bytes } => {
                let from = peer_id(peer);
                let used = self.numbers.entry((from, channel, lane)).or_default();
                let number = seq.pick(*used);
                *used = (number, used.1.max(number));
                let to = self.node.id().addr;
                let frame = layer_frame_with(&self.codec, layer, (from, to), lane, FrameSeq(number), &bytes);
                self.feed(channel, &frame)
            }
            Step::Command(line) => {
                if let Ok(command) = Command::parse(&line) {
                    self.command(command);
                }
            }
            Step::Advance { ms } => {
                self.now = Time(now.0 + u64::from(ms));
                self.node.handle_timeout(self.now);
            }
            Step::SendFailed { peer } => {
                self.node.handle_send_failed(now, peer_addr(peer), "connection refused")
            }
            Step::Submit { op } => {
                let name = FileName::new(FILES[usize::from(op / 4) % FILES.len()]).expect("a valid name");
                let data = b"a,b\n1,2\n3,4\n".to_vec();
                let op = match op % 4 {
                    0 => ClientOp::Create { name, data },
                    1 => ClientOp::Append { name, data },
                    2 => ClientOp::Download { name, from: ReadFrom::Any },
                    _ => ClientOp::Merge { name },
                };
                let _ = self.node.submit(now, op);
            }
            Step::StartJob { spec } => {
                let op2 = if spec & 0b100 == 0 {
                    "split".to_owned()
                } else {
                    format!("program:ops/p@{PROGRAM_HASH} x")
                };
                let spec = JobSpec {
                    op1: OperatorSpec::parse("grep:1").expect("a valid spec"),
                    op2: OperatorSpec::parse(&op2).expect("a valid spec"),
                    src: FileName::new(FILES[0]).expect("a valid name"),
                    dest: FileName::new(FILES[1]).expect("a valid name"),
                    tasks: u32::from(spec % 4),
                    rate: (spec & 0x80 != 0).then_some(u64::from(spec)),
                };
                let _ = self.node.start_job(now, spec);
            }
            Step::ProgramAnswer { ok } => {
                if !self.calls.is_empty() {
                    let (token, tuples) = self.calls.remove(0);
                    let result = if ok {
                        Ok(ProgramResult { outputs: vec![Vec::new(); tuples], ..ProgramResult::default() })
                    } else {
                        Err("the program failed".to_owned())
                    };
                    self.node.handle_program_result(now, token, result);
                }
            }
        }
    }

    fn feed(&mut self, channel: Channel, frame: &[u8]) {
        self.frames_fed += 1;
        self.ids_ever += frame.len() / MIN_ID_BYTES;
        let expected = match self.codec.decode(frame, self.limit(channel)) {
            Ok(envelope) if self.codec.is_authenticated() => {
                Some(self.judge(envelope.from, channel, envelope.lane, envelope.seq))
            }
            _ => None,
        };
        let before = self.guard_refusals();
        self.node.handle_frame(self.now, channel, frame);
        let after = self.guard_refusals();
        let judged = match (after.0 - before.0, after.1 - before.1) {
            (0, 0) => None,
            (1, 0) => Some(Verdict::Replayed),
            (0, 1) => Some(Verdict::Stale),
            counts => panic!("one frame counted as (replayed, stale) {counts:?}"),
        };
        let expected = expected.filter(|v| *v != Verdict::Fresh);
        assert_eq!(judged, expected, "the replay guard's verdict on a {channel:?} frame");
    }

    /// The model's verdict on frame `seq` of `from` on `channel` and `lane`, marked accepted if
    /// fresh.
    fn judge(&mut self, from: MemberId, channel: Channel, lane: Lane, seq: FrameSeq) -> Verdict {
        let accepted = self.accepted.entry((from, channel, lane)).or_default();
        let highest = accepted.last().copied().unwrap_or(0);
        let verdict = if seq.0 <= highest && highest - seq.0 >= REPLAY_WINDOW {
            Verdict::Stale
        } else if accepted.contains(&seq.0) {
            Verdict::Replayed
        } else {
            Verdict::Fresh
        };
        if verdict == Verdict::Fresh {
            accepted.insert(seq.0);
        }
        verdict
    }

    /// Frames the node refused as (replayed, stale).
    fn guard_refusals(&self) -> (u64, u64) {
        let rejected = &self.node.stats().frames_rejected;
        let count = |cause| rejected.get(cause).copied().unwrap_or(0);
        (count(REPLAYED), count(STALE))
    }

    fn limit(&self, channel: Channel) -> usize {
        match channel {
            Channel::Datagram => self.max_datagram_bytes,
            Channel::Stream => self.stream_frame_bytes,
        }
    }

    fn command(&mut self, command: Command) {
        let driver = matches!(command, Command::File(_) | Command::Job(_));
        match self.node.handle_command(self.now, command.clone()) {
            Ok(out) => {
                assert!(!driver, "`{command}` needs the driver but was answered: {out:?}");
                assert!(!out.to_string().is_empty(), "`{command}` answered nothing");
            }
            Err(CommandError::NeedsDriver(what)) => {
                assert!(driver, "`{command}` was left to the driver");
                assert_eq!(what, command.to_string());
            }
            Err(e @ CommandError::Membership(_)) => {
                assert!(!driver, "`{command}` failed in membership: {e}");
                assert!(!e.to_string().is_empty());
            }
        }
    }

    /// Drains the outputs, runs due timers until none is due, and checks the invariants.
    fn settle(&mut self) {
        self.drain();
        let mut rounds = 0;
        while self.node.poll_timeout().is_some_and(|t| t <= self.now) {
            rounds += 1;
            assert!(
                rounds <= MAX_TIMER_ROUNDS,
                "timers due at {:?} still due after {MAX_TIMER_ROUNDS} rounds at {}",
                self.node.poll_timeout(),
                self.now
            );
            self.node.handle_timeout(self.now);
            self.drain();
        }
        self.check();
    }

    fn drain(&mut self) {
        let me = self.node.id();
        while let Some(t) = self.node.poll_transmit() {
            let limit = self.limit(t.channel);
            assert!(t.payload.len() <= limit, "a {:?} frame of {} bytes", t.channel, t.payload.len());
            let envelope = self.codec.decode(&t.payload, limit).expect("the node's own frames decode");
            assert_eq!(envelope.from, me, "a frame names another sender");
            assert_ne!(t.to, me.addr, "a frame to the node itself left the node");
            let lane = if t.channel == Channel::Stream { envelope.body.lane() } else { Lane::Control };
            assert_eq!((t.lane, envelope.lane), (lane, lane), "a {:?} frame on another lane", envelope.body);
        }
        while let Some(event) = self.node.poll_event() {
            match event {
                NodeEvent::Program(call) => self.calls.push((call.token, call.batch.tuples.len())),
                NodeEvent::Membership(MembershipEvent::MemberJoined { member }) => {
                    assert_ne!(member, self.node.id(), "the node reported itself joining")
                }
                NodeEvent::Membership(
                    MembershipEvent::SelfJoined { .. } | MembershipEvent::SelfDeclaredFailed { .. },
                ) => self.ids_ever += 1,
                _ => {}
            }
        }
    }

    fn check(&self) {
        let stats = self.node.stats();
        assert_eq!(
            stats.frames_received + stats.rejected_total() + self.node.held_frames() as u64,
            self.frames_fed,
            "frames fed are counted once, received or rejected (or held for a sender not listed yet): {stats:?}"
        );
        assert_eq!(stats.frames_unsendable, 0, "frames over their channel's limit");
        let me = self.node.id();
        let membership = self.node.membership();
        assert!(membership.members().all(|v| v.id != me), "the node lists itself");
        let bound = queue_bound(self.ids_ever);
        for (name, len) in membership.queue_lengths() {
            assert!(len <= bound, "queue {name} holds {len} entries (bound {bound})");
        }
    }
}
