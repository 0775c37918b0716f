//! `node_messages`: one [`Node`] driven by a script of inputs decoded from the fuzzer's bytes:
//! raw frames, framed messages of a layer built from the bytes that follow, console commands,
//! time passing, send failures, HyDFS operations, jobs and operator-program answers.
//!
//! After every step the outputs are drained and these invariants are checked:
//! * no panic;
//! * every datagram is at most the configured `max_datagram_bytes`, every frame decodes under
//!   its channel's limit and names the node as its sender, and no frame was unsendable (the
//!   simulator's **bounded** checker);
//! * every frame fed is counted once, as received or as rejected, in [`Node::stats`];
//! * timers make progress: once due timers have run, [`Node::poll_timeout`] is later than `now`
//!   within a few rounds;
//! * the node never lists itself as a member (nor reports itself joining);
//! * membership queues stay within the simulator's [`queue_bound`] of the member ids the node
//!   can have heard of (each takes at least [`MIN_ID_BYTES`] bytes of a frame);
//! * commands answer with typed values: file and job commands are left to the driver, the
//!   others never are, and every answer displays.
//!
//! A script starts with a flags byte (bit 0: a member that joins through the introducer,
//! otherwise the introducer itself, a group of one at once; bit 1: suspicion off), then steps;
//! each step is an op byte whose low 3 bits pick the kind (see [`Step`]). Scripts are cut at
//! [`MAX_STEPS`] steps so an execution stays cheap.

use crate::decode::{layer_frame, Layer};
use rainstorm_core::command::Command;
use rainstorm_core::hydfs::{ClientOp, FileName, HydfsConfig};
use rainstorm_core::membership::{MembershipConfig, MembershipEvent, Role};
use rainstorm_core::node::{CommandError, NodeConfig};
use rainstorm_core::rainstorm::{JobSpec, OperatorSpec, ProgramResult, RainstormConfig};
use rainstorm_core::wire::{Codec, MAX_STREAM_FRAME_BYTES};
use rainstorm_core::{Channel, MemberId, Node, NodeAddr, NodeEvent, Time};
use rainstorm_sim::check::queue_bound;
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
    /// Op 1 (bit 3: stream; bits 4-5: layer): a peer byte, a `u16` length, then the message
    /// bytes, delivered in a valid frame from [`peer_id`]`(peer)`.
    Message { layer: Layer, channel: Channel, peer: u8, bytes: Vec<u8> },
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

/// A decoded script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    pub member: bool,
    pub suspicion: bool,
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
                    let len = r.u16();
                    Step::Message { layer, channel: channel(op), peer, bytes: r.bytes(len.into()) }
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
        Script { member: flags & 1 != 0, suspicion: flags & 2 == 0, steps }
    }

    /// The bytes that decode to this script (lengths over their field's range are cut).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.member) | if self.suspicion { 0 } else { 2 }];
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
                Step::Message { layer, channel, peer, bytes } => {
                    let layer = match layer {
                        Layer::Membership => 0,
                        Layer::Hydfs => 1,
                        Layer::Rainstorm => 2,
                    };
                    out.extend([1 | channel_bit(*channel) | layer << 4, *peer]);
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

/// The node a script drives, and what the checks need to know about its past.
struct Run {
    node: Node,
    now: Time,
    max_datagram_bytes: usize,
    frames_fed: u64,
    /// Member ids the node can have heard of or held itself (an upper bound).
    ids_ever: usize,
    /// Operator-program calls not answered yet: token and tuple count.
    calls: Vec<(u64, usize)>,
}

/// `node_messages`.
pub fn node_messages(data: &[u8]) {
    let script = Script::decode(data);
    let membership = MembershipConfig { suspicion_at_start: script.suspicion, ..MembershipConfig::lan() };
    let max_datagram_bytes = membership.max_datagram_bytes;
    let cfg = NodeConfig {
        role: if script.member { Role::Member } else { Role::Introducer },
        addr: peer_addr(u8::from(script.member)),
        introducer: peer_addr(0),
        membership,
        hydfs: HydfsConfig::default(),
        rainstorm: RainstormConfig::default(),
        limits: rainstorm_core::limits::LimitsConfig::default(),
        codec: Codec::plain(),
    };
    let mut run = Run {
        node: Node::new(cfg, START, 7),
        now: START,
        max_datagram_bytes,
        frames_fed: 0,
        ids_ever: 2,
        calls: Vec::new(),
    };
    if script.member {
        run.command(Command::Join);
    }
    run.settle();
    for step in script.steps {
        run.step(step);
        run.settle();
    }
}

impl Run {
    fn step(&mut self, step: Step) {
        let now = self.now;
        match step {
            Step::Raw { channel, frame } => self.feed(channel, &frame),
            Step::Message { layer, channel, peer, bytes } => {
                self.feed(channel, &layer_frame(layer, peer_id(peer), &bytes))
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
                    2 => ClientOp::Get { name },
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
        self.node.handle_frame(self.now, channel, frame);
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
        let codec = Codec::plain();
        let me = self.node.id();
        while let Some(t) = self.node.poll_transmit() {
            let limit = match t.channel {
                Channel::Datagram => self.max_datagram_bytes,
                Channel::Stream => MAX_STREAM_FRAME_BYTES,
            };
            assert!(t.payload.len() <= limit, "a {:?} frame of {} bytes", t.channel, t.payload.len());
            let envelope = codec.decode(&t.payload, limit).expect("the node's own frames decode");
            assert_eq!(envelope.from, me, "a frame names another sender");
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
            stats.frames_received + stats.rejected_total(),
            self.frames_fed,
            "frames fed are counted once, received or rejected: {stats:?}"
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
