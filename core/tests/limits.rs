//! The limits against hostile or broken input, end to end through `Node`: a few nodes on an
//! in-memory network that delivers every frame at once, with time passing in steps.

use rainstorm_core::command::Command;
use rainstorm_core::hydfs::{FileName, HydfsConfig, HydfsError, HydfsEvent, HydfsMsg, OpId};
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

/// A frame from `from` to a node: a HyDFS `Stat` request, or a membership `Ack`.
fn frame(from: usize, body: Body) -> Vec<u8> {
    let envelope = Envelope { from: MemberId::new(addr(from), 1), seq: FrameSeq(1), body };
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
    let limits = LimitsConfig { stream_frame_bytes: 2 << 20, ..LimitsConfig::default() };
    let mut c = Cluster::new(2, HydfsConfig::default(), limits);
    let big = Body::Hydfs(HydfsMsg::RemoteAppend { req: 1, name: name("f"), data: vec![7; 3 << 20] });
    let now = c.now;
    c.nodes[0].handle_frame(now, Channel::Stream, &frame(1, big));
    assert_eq!(counter(&c.stats(0), "frames_rejected.oversized"), 1);
    // What a driver skipped without reading it whole is counted the same way.
    c.nodes[0].handle_oversized_frame();
    assert_eq!(counter(&c.stats(0), "frames_rejected.oversized"), 2);
    // A frame within the limit is taken.
    let small = Body::Hydfs(HydfsMsg::Stat { req: 2, name: name("f") });
    let before = counter(&c.stats(0), "frames_received");
    c.nodes[0].handle_frame(now, Channel::Stream, &frame(1, small));
    assert_eq!(counter(&c.stats(0), "frames_received"), before + 1);
}
