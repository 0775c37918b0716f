//! What a node puts on the wire, end to end through `Node`: every frame carries the lane of its
//! message and the next number of its (channel, lane) counter; lanes delivered out of order
//! relative to each other are all accepted under a cluster key; and a message a node addresses
//! to itself never becomes a frame. A few nodes on an in-memory network that delivers every
//! frame at once, with time passing in steps.

use rainstorm_core::command::Command;
use rainstorm_core::hydfs::{
    ClientOp, FileName, HydfsConfig, HydfsError, HydfsEvent, HydfsMsg, OpId, OpOutput, ReadFrom,
};
use rainstorm_core::limits::LimitsConfig;
use rainstorm_core::membership::{MembershipConfig, Role};
use rainstorm_core::node::{NodeConfig, NodeEvent};
use rainstorm_core::rainstorm::RainstormConfig;
use rainstorm_core::wire::{Body, ClusterKey, Codec};
use rainstorm_core::{Channel, Lane, Millis, Node, NodeAddr, Time, Transmit};
use std::collections::BTreeMap;

fn addr(i: usize) -> NodeAddr {
    format!("10.3.0.{}:7000", i + 1).parse().expect("address")
}

fn name(s: &str) -> FileName {
    FileName::new(s).expect("valid name")
}

/// How the network orders the frames it carries in one round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// As sent.
    AsSent,
    /// Bulk first, then data, then control: each lane overtakes those served before it.
    LanesReversed,
}

struct Cluster {
    nodes: Vec<Node>,
    codec: Codec,
    now: Time,
    order: Order,
    /// Every frame sent, by sender.
    sent: Vec<(usize, Transmit)>,
    done: Vec<(usize, OpId, Result<OpOutput, HydfsError>)>,
    /// The bytes streamed so far to each whole-file read, by node and operation.
    read: BTreeMap<(usize, OpId), Vec<u8>>,
}

/// A streamed read's chunk into its buffer: a chunk at offset 0 starts the read over.
fn take_chunk(buf: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    if offset == 0 {
        buf.clear();
    }
    assert_eq!(buf.len() as u64, offset, "chunks arrive in order");
    buf.extend_from_slice(bytes);
}

impl Cluster {
    /// `n` joined nodes (node 0 the introducer), all under one cluster key.
    fn new(n: usize, order: Order) -> Cluster {
        let codec = Codec::keyed(ClusterKey::from_passphrase("transport test"), Vec::new());
        let nodes = (0..n)
            .map(|i| {
                let cfg = NodeConfig {
                    role: if i == 0 { Role::Introducer } else { Role::Member },
                    addr: addr(i),
                    introducer: addr(0),
                    membership: MembershipConfig::fast_local(),
                    hydfs: HydfsConfig::default(),
                    rainstorm: RainstormConfig::default(),
                    limits: LimitsConfig::default(),
                    codec: codec.clone(),
                };
                let mut node = Node::new(cfg, Time(0), i as u64 + 1);
                if i > 0 {
                    node.handle_command(Time(0), Command::Join).expect("joins");
                }
                node
            })
            .collect();
        let mut c = Cluster {
            nodes,
            codec,
            now: Time(0),
            order,
            sent: Vec::new(),
            done: Vec::new(),
            read: BTreeMap::new(),
        };
        for _ in 0..1_000 {
            if c.nodes.iter().all(|node| node.membership().members().count() == n - 1) {
                return c;
            }
            c.step(10);
        }
        panic!("the cluster did not form");
    }

    /// Delivers every frame until the network is quiet, each round in the cluster's order.
    fn settle(&mut self) {
        loop {
            let mut round = Vec::new();
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].poll_transmit() {
                    round.push((i, t));
                }
                while let Some(e) = self.nodes[i].poll_event() {
                    match e {
                        NodeEvent::Hydfs(HydfsEvent::OpDone { op, result }) => {
                            self.done.push((i, op, result))
                        }
                        NodeEvent::Hydfs(HydfsEvent::ReadData { op, offset, bytes, .. }) => {
                            take_chunk(self.read.entry((i, op)).or_default(), offset, &bytes)
                        }
                        _ => {}
                    }
                }
            }
            if round.is_empty() {
                return;
            }
            if self.order == Order::LanesReversed {
                // A stable sort: within a lane, frames keep the order they were sent in.
                round.sort_by_key(|(_, t)| std::cmp::Reverse(t.lane));
            }
            for (from, t) in round {
                if let Some(j) = (0..self.nodes.len()).find(|j| addr(*j) == t.to) {
                    self.nodes[j].handle_frame(self.now, t.channel, &t.payload);
                }
                self.sent.push((from, t));
            }
        }
    }

    fn step(&mut self, ms: u64) {
        self.now = self.now + Millis(ms);
        for n in &mut self.nodes {
            if n.poll_timeout().is_some_and(|t| t <= self.now) {
                n.handle_timeout(self.now);
            }
        }
        self.settle();
    }

    fn run(&mut self, at: usize, op: ClientOp) -> Result<OpOutput, HydfsError> {
        self.run_op(at, op).1
    }

    fn run_op(&mut self, at: usize, op: ClientOp) -> (OpId, Result<OpOutput, HydfsError>) {
        let id = self.nodes[at].submit(self.now, op).expect("submitted");
        for _ in 0..10_000 {
            self.settle();
            if let Some(k) = self.done.iter().position(|(n, o, _)| *n == at && *o == id) {
                return (id, self.done.remove(k).2);
            }
            self.step(10);
        }
        panic!("the operation did not finish");
    }

    /// A whole-file read at node `at`: the bytes streamed to it, and the replica they came from.
    fn download(&mut self, at: usize, file: &str, from: ReadFrom) -> (Vec<u8>, Option<NodeAddr>) {
        let (id, result) = self.run_op(at, ClientOp::Download { name: name(file), from });
        let Ok(OpOutput::Downloaded { len, from, .. }) = result else { panic!("a read answers Downloaded") };
        let bytes = self.read.remove(&(at, id)).unwrap_or_default();
        assert_eq!(bytes.len() as u64, len, "the chunks add up to the length read");
        (bytes, from)
    }
}

/// A file of `len` bytes that says where each byte is.
fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn frames_carry_their_lane_and_each_lane_numbers_its_own_frames() {
    let mut c = Cluster::new(4, Order::AsSent);
    let big = content(300 * 1024);
    c.run(1, ClientOp::Create { name: name("big"), data: big.clone() }).expect("created");
    c.run(2, ClientOp::Append { name: name("big"), data: b"tail".to_vec() }).expect("appended");
    let (bytes, _) = c.download(3, "big", ReadFrom::Any);
    assert_eq!(bytes.len(), big.len() + 4);

    let mut numbers: BTreeMap<(usize, Channel, Lane), Vec<u64>> = BTreeMap::new();
    for (from, t) in &c.sent {
        let envelope = c.codec.decode(&t.payload, usize::MAX).expect("a node's frame decodes");
        assert_eq!(envelope.lane, t.lane, "the header names the transmit's lane");
        let lane = match t.channel {
            Channel::Datagram => Lane::Control,
            Channel::Stream => envelope.body.lane(),
        };
        assert_eq!(t.lane, lane, "{:?} on the {} lane", envelope.body, t.lane);
        numbers.entry((*from, t.channel, t.lane)).or_default().push(envelope.seq.0);
    }
    for ((from, channel, lane), seqs) in &numbers {
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, &expected, "node {from} numbers its {channel:?} {lane} frames 1, 2, 3...");
    }
    // (RainStorm's batches are the data lane; no job runs here.)
    for lane in [Lane::Control, Lane::Bulk] {
        assert!(
            numbers.keys().any(|(_, channel, l)| *channel == Channel::Stream && *l == lane),
            "no stream frame on the {lane} lane"
        );
    }
}

#[test]
fn lanes_overtaking_each_other_are_all_accepted_under_a_key() {
    let mut c = Cluster::new(4, Order::LanesReversed);
    let big = content(3 * 1024 * 1024 + 17);
    c.run(1, ClientOp::Create { name: name("big"), data: big.clone() }).expect("created");
    for i in 0..5u8 {
        c.run(2, ClientOp::Append { name: name("big"), data: vec![i; 70 * 1024] }).expect("appended");
    }
    c.run(3, ClientOp::Merge { name: name("big") }).expect("merged");
    let (bytes, _) = c.download(3, "big", ReadFrom::Any);
    assert_eq!(&bytes[..big.len()], &big[..]);
    for (i, n) in c.nodes.iter().enumerate() {
        assert_eq!(n.stats().rejected_total(), 0, "node {i} refused frames: {:?}", n.stats().frames_rejected);
    }
}

#[test]
fn a_node_reading_its_own_replica_hands_itself_the_messages_in_process() {
    let mut c = Cluster::new(3, Order::AsSent);
    let data = content(200 * 1024);
    c.run(1, ClientOp::Create { name: name("mine"), data: data.clone() }).expect("created");
    let sent_before = c.sent.len();
    let local_before = c.nodes[1].stats().frames_local;
    let stats_before: Vec<_> = c.nodes.iter().map(|n| n.stats().clone()).collect();
    // Every node of three holds a replica; node 1 reads its own copy.
    let (bytes, from) = c.download(1, "mine", ReadFrom::Replica(addr(1)));
    assert_eq!(bytes, data);
    assert_eq!(from, Some(addr(1)));
    assert!(c.nodes[1].stats().frames_local > local_before, "the read went through the node itself");

    // No node ever sent itself a frame, and the wire counters count only frames on the wire.
    for (from, t) in &c.sent {
        assert_ne!(t.to, addr(*from), "node {from} sent itself a {:?} frame", t.channel);
    }
    let reads_on_the_wire = c.sent[sent_before..]
        .iter()
        .filter(|(_, t)| t.channel == Channel::Stream)
        .map(|(_, t)| c.codec.decode(&t.payload, usize::MAX).expect("a node's frame decodes").body)
        .filter(|b| matches!(b, Body::Hydfs(HydfsMsg::Read { .. } | HydfsMsg::ReadReply { .. })))
        .count();
    assert_eq!(reads_on_the_wire, 0, "a read from oneself sends no read frame");
    for (i, n) in c.nodes.iter().enumerate() {
        let before = &stats_before[i];
        let sent = c.sent[sent_before..].iter().filter(|(from, _)| *from == i).count() as u64;
        assert_eq!(n.stats().frames_sent - before.frames_sent, sent, "node {i} counts what it sent");
        let received = c.sent[sent_before..].iter().filter(|(_, t)| t.to == addr(i)).count() as u64;
        assert_eq!(
            n.stats().frames_received - before.frames_received,
            received,
            "node {i} counts what it received"
        );
    }
}

#[test]
fn a_long_exchange_with_itself_runs_in_rounds_that_leave_room_for_other_input() {
    let mut c = Cluster::new(3, Order::AsSent);
    let data = content(6 * 1024 * 1024);
    c.run(1, ClientOp::Create { name: name("large"), data: data.clone() }).expect("created");
    c.settle();
    let now = c.now;
    let node = &mut c.nodes[1];
    let id = node
        .submit(now, ClientOp::Download { name: name("large"), from: ReadFrom::Replica(addr(1)) })
        .expect("submitted");
    let mut bytes = Vec::new();
    // The messages to itself are due at once, and each round delivers only those queued before
    // it: a 6 MiB read (chunks of at most 1 MiB) takes several rounds, not one input.
    let mut rounds = 0;
    let mut done = None;
    while done.is_none() {
        assert_eq!(node.poll_timeout(), Some(now), "messages to itself are due now");
        node.handle_timeout(now);
        rounds += 1;
        while node.poll_transmit().is_some() {}
        while let Some(e) = node.poll_event() {
            match e {
                NodeEvent::Hydfs(HydfsEvent::OpDone { op, result }) if op == id => done = Some(result),
                NodeEvent::Hydfs(HydfsEvent::ReadData { op, offset, bytes: chunk, .. }) if op == id => {
                    take_chunk(&mut bytes, offset, &chunk)
                }
                _ => {}
            }
        }
        assert!(rounds < 100, "the read did not finish");
    }
    let Ok(OpOutput::Downloaded { .. }) = done.expect("finished") else {
        panic!("a read answers Downloaded")
    };
    assert_eq!(bytes, data);
    assert!(rounds >= 3, "a 6 MiB local read took {rounds} rounds");
}
