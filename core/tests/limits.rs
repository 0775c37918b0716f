//! The limits against hostile or broken input, end to end through `Node`: a few nodes on an
//! in-memory network that delivers every frame at once, with time passing in steps.

use rainstorm_core::command::Command;
use rainstorm_core::hydfs::{ClientOp, FileName, HydfsConfig, HydfsError, HydfsEvent, HydfsMsg, OpId};
use rainstorm_core::limits::LimitsConfig;
use rainstorm_core::membership::{MembershipConfig, MembershipMsg, ProbeSeq, Role};
use rainstorm_core::node::{CommandOutput, NodeConfig, NodeEvent};
use rainstorm_core::rainstorm::RainstormConfig;
use rainstorm_core::replay::FrameSeq;
use rainstorm_core::wire::{Body, Codec, Envelope};
use rainstorm_core::{Channel, MemberId, Millis, Node, NodeAddr, Time};

fn addr(i: usize) -> NodeAddr {
    format!("10.2.0.{}:7000", i + 1).parse().expect("address")
}

struct Cluster {
    nodes: Vec<Node>,
    now: Time,
    done: Vec<(usize, OpId, Result<(), HydfsError>)>,
}

impl Cluster {
    /// `n` joined nodes (node 0 the introducer).
    fn new(n: usize, hydfs: HydfsConfig, limits: LimitsConfig) -> Cluster {
        let nodes = (0..n)
            .map(|i| {
                let cfg = NodeConfig {
                    role: if i == 0 { Role::Introducer } else { Role::Member },
                    addr: addr(i),
                    introducer: addr(0),
                    membership: MembershipConfig::fast_local(),
                    hydfs: hydfs.clone(),
                    rainstorm: RainstormConfig::default(),
                    limits: limits.clone(),
                    codec: Codec::plain(),
                };
                let mut node = Node::new(cfg, Time(0), i as u64 + 1);
                if i > 0 {
                    node.handle_command(Time(0), Command::Join).expect("joins");
                }
                node
            })
            .collect();
        let mut c = Cluster { nodes, now: Time(0), done: Vec::new() };
        let joined = |c: &Cluster| c.nodes.iter().all(|node| node.membership().members().count() == n - 1);
        for _ in 0..1_000 {
            if joined(&c) {
                return c;
            }
            c.step(10);
        }
        panic!("the cluster did not form");
    }

    /// Delivers every frame until the network is quiet.
    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].poll_transmit() {
                    moved = true;
                    if let Some(j) = (0..self.nodes.len()).find(|j| addr(*j) == t.to) {
                        self.nodes[j].handle_frame(self.now, t.channel, &t.payload);
                    }
                }
                while let Some(e) = self.nodes[i].poll_event() {
                    if let NodeEvent::Hydfs(HydfsEvent::OpDone { op, result }) = e {
                        self.done.push((i, op, result.map(|_| ())));
                    }
                }
            }
            if !moved {
                return;
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

    fn run(&mut self, at: usize, op: ClientOp) -> Result<(), HydfsError> {
        let id = self.nodes[at].submit(self.now, op)?;
        for _ in 0..10_000 {
            self.settle();
            if let Some(k) = self.done.iter().position(|(n, o, _)| *n == at && *o == id) {
                return self.done.remove(k).2;
            }
            self.step(10);
        }
        panic!("the operation did not finish");
    }

    fn stats(&mut self, at: usize) -> String {
        let out = self.nodes[at].handle_command(self.now, Command::Stats).expect("stats");
        assert!(matches!(out, CommandOutput::Stats { .. }));
        out.to_string()
    }
}

/// The value of counter `name` in a `stats` output.
fn counter(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{stats}"))
        .parse()
        .expect("a number")
}

fn name(s: &str) -> FileName {
    FileName::new(s).expect("valid name")
}

#[test]
fn flooding_one_file_with_appends_meets_a_typed_error_until_it_is_merged() {
    let hydfs = HydfsConfig { max_pending_appends: 20, ..HydfsConfig::default() };
    let mut c = Cluster::new(4, hydfs, LimitsConfig::default());
    let f = name("flood.log");
    c.run(1, ClientOp::Create { name: f.clone(), data: Vec::new() }).expect("created");
    let mut accepted = 0;
    let refused = loop {
        match c.run(2, ClientOp::Append { name: f.clone(), data: b"line\n".to_vec() }) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted <= 20, "the limit held");
    };
    assert_eq!(accepted, 20);
    assert_eq!(refused, HydfsError::TooManyPending { name: f.clone(), limit: 20 });
    assert_eq!(refused.to_string(), "too many pending appends on `flood.log` (the limit is 20); run merge");
    let total: u64 = (0..4).map(|i| counter(&c.stats(i), "hydfs.pending_appends_refused")).sum();
    assert_eq!(total, 1);
    c.run(3, ClientOp::Merge { name: f.clone() }).expect("merged");
    c.run(2, ClientOp::Append { name: f, data: b"line\n".to_vec() }).expect("accepted after the merge");
}

#[test]
fn a_long_name_is_refused_with_the_limit_and_counted() {
    let hydfs = HydfsConfig { max_name_bytes: 16, ..HydfsConfig::default() };
    let mut c = Cluster::new(3, hydfs, LimitsConfig::default());
    let long = name("a-name-of-twenty-bytes");
    let e = c.run(1, ClientOp::Create { name: long, data: b"x".to_vec() }).unwrap_err();
    assert_eq!(e, HydfsError::NameTooLong { len: 22, limit: 16 });
    assert_eq!(e.to_string(), "file name is 22 bytes long; the limit is 16 bytes (max_name_bytes)");
    assert_eq!(counter(&c.stats(1), "hydfs.names_refused"), 1);
    c.run(1, ClientOp::Create { name: name("short"), data: b"x".to_vec() }).expect("within the limit");
}

/// A frame from `from` to a node: a HyDFS `Stat` request, or a membership `Ack`.
fn frame(from: usize, body: Body) -> Vec<u8> {
    let envelope = Envelope { from: MemberId::new(addr(from), 1), lane: body.lane(), seq: FrameSeq(1), body };
    Codec::plain().encode(&envelope, 64 << 20).expect("encodes")
}

#[test]
fn requests_over_a_peers_rate_are_dropped_and_counted_but_membership_never_is() {
    let limits =
        LimitsConfig { peer_requests_per_sec: 100, peer_request_burst: 10, ..LimitsConfig::default() };
    let mut c = Cluster::new(2, HydfsConfig::default(), limits);
    let before = c.stats(0);
    let stat = |req| Body::Hydfs(HydfsMsg::Stat { req, name: name("f") });
    let now = c.now;
    for req in 0..50 {
        c.nodes[0].handle_frame(now, Channel::Stream, &frame(7, stat(req)));
    }
    let ack = Body::Membership(MembershipMsg::Ack { seq: ProbeSeq(1), updates: vec![] });
    for _ in 0..500 {
        c.nodes[0].handle_frame(now, Channel::Datagram, &frame(7, ack.clone()));
    }
    let after = c.stats(0);
    let limited =
        counter(&after, "frames_rejected.rate_limited") - counter(&before, "frames_rejected.rate_limited");
    assert_eq!(limited, 40, "the burst of 10 passed, the other 40 requests were dropped");
    let received = counter(&after, "frames_received") - counter(&before, "frames_received");
    assert_eq!(received, 10 + 500, "every membership datagram was taken");
    // A tenth of a second later the peer has 10 more requests; another peer has its own bucket.
    let later = now + Millis(100);
    let answered = (100..120).filter(|req| {
        c.nodes[0].handle_frame(later, Channel::Stream, &frame(7, stat(*req)));
        counter(&c.stats(0), "frames_rejected.rate_limited") == limited
    });
    assert_eq!(answered.count(), 10);
    c.nodes[0].handle_frame(later, Channel::Stream, &frame(8, stat(1)));
    assert_eq!(counter(&c.stats(0), "frames_rejected.rate_limited"), limited + 10);
    // The cluster itself was never limited: its own requests come well under the rate.
    assert_eq!(counter(&c.stats(1), "frames_rejected.rate_limited"), 0);
}

#[test]
fn an_oversized_stream_frame_is_dropped_and_counted() {
    let limits = LimitsConfig { stream_frame_bytes: 10 << 20, ..LimitsConfig::default() };
    let mut c = Cluster::new(2, HydfsConfig::default(), limits);
    let big = Body::Hydfs(HydfsMsg::RemoteAppend { req: 1, name: name("f"), data: vec![7; 11 << 20] });
    let now = c.now;
    c.nodes[0].handle_frame(now, Channel::Stream, &frame(1, big));
    assert_eq!(counter(&c.stats(0), "frames_rejected.oversized"), 1);
    // What a driver skipped without reading it whole is counted the same way.
    c.nodes[0].record_rejected("oversized", 1);
    assert_eq!(counter(&c.stats(0), "frames_rejected.oversized"), 2);
    // A frame within the limit is taken.
    let small = Body::Hydfs(HydfsMsg::Stat { req: 2, name: name("f") });
    let before = counter(&c.stats(0), "frames_received");
    c.nodes[0].handle_frame(now, Channel::Stream, &frame(1, small));
    assert_eq!(counter(&c.stats(0), "frames_received"), before + 1);
}
