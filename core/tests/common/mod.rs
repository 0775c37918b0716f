//! A few `Node`s on an in-memory network that delivers every frame at once, with time passing
//! in steps: what the end-to-end tests through `Node` share.

#![allow(dead_code)] // each test binary uses its own part of it

use rainstorm_core::command::Command;
use rainstorm_core::hydfs::{ClientOp, FileName, HydfsConfig, HydfsError, HydfsEvent, OpId, ReadFrom};
use rainstorm_core::limits::LimitsConfig;
use rainstorm_core::membership::{MembershipConfig, Role};
use rainstorm_core::node::{CommandOutput, NodeConfig, NodeEvent};
use rainstorm_core::rainstorm::{RainstormConfig, RainstormEvent};
use rainstorm_core::wire::Codec;
use rainstorm_core::{Millis, Node, NodeAddr, Time};

pub fn addr(i: usize) -> NodeAddr {
    format!("10.2.0.{}:7000", i + 1).parse().expect("address")
}

/// How the nodes of a [`Cluster`] are set up.
#[derive(Clone, Default)]
pub struct Setup {
    pub hydfs: HydfsConfig,
    pub limits: LimitsConfig,
    pub rainstorm: RainstormConfig,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub now: Time,
    /// Finished client operations: (node, operation, result).
    pub done: Vec<(usize, OpId, Result<(), HydfsError>)>,
    /// Bytes read by client operations, by (node, operation), in order.
    pub read: Vec<(usize, OpId, Vec<u8>)>,
    /// RainStorm events, by node.
    pub jobs: Vec<(usize, RainstormEvent)>,
    /// Batches handed to operator programs, by node.
    pub program_calls: Vec<usize>,
}

impl Cluster {
    /// `n` joined nodes (node 0 the introducer).
    pub fn new(n: usize, hydfs: HydfsConfig, limits: LimitsConfig) -> Cluster {
        Cluster::with(n, Setup { hydfs, limits, ..Setup::default() })
    }

    pub fn with(n: usize, setup: Setup) -> Cluster {
        let nodes = (0..n)
            .map(|i| {
                let cfg = NodeConfig {
                    role: if i == 0 { Role::Introducer } else { Role::Member },
                    addr: addr(i),
                    introducer: addr(0),
                    membership: MembershipConfig::fast_local(),
                    hydfs: setup.hydfs.clone(),
                    rainstorm: setup.rainstorm.clone(),
                    limits: setup.limits.clone(),
                    codec: Codec::plain(),
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
            now: Time(0),
            done: Vec::new(),
            read: Vec::new(),
            jobs: Vec::new(),
            program_calls: Vec::new(),
        };
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
    pub fn settle(&mut self) {
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
                    match e {
                        NodeEvent::Hydfs(HydfsEvent::OpDone { op, result }) => {
                            self.done.push((i, op, result.map(|_| ())))
                        }
                        NodeEvent::Hydfs(HydfsEvent::ReadData { op, bytes, .. }) => {
                            self.read.push((i, op, bytes.into_vec()))
                        }
                        NodeEvent::Rainstorm(e) => self.jobs.push((i, e)),
                        NodeEvent::Program(_) => self.program_calls.push(i),
                        _ => {}
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    pub fn step(&mut self, ms: u64) {
        self.now = self.now + Millis(ms);
        for n in &mut self.nodes {
            if n.poll_timeout().is_some_and(|t| t <= self.now) {
                n.handle_timeout(self.now);
            }
        }
        self.settle();
    }

    /// Runs `op` at node `at` to its end.
    pub fn run(&mut self, at: usize, op: ClientOp) -> Result<(), HydfsError> {
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

    /// The content of file `name`, read at node `at` from the replicas.
    pub fn get(&mut self, at: usize, name: &FileName) -> Vec<u8> {
        let id = self.nodes[at]
            .submit(self.now, ClientOp::Download { name: name.clone(), from: ReadFrom::Latest });
        let id = id.expect("submitted");
        for _ in 0..10_000 {
            self.settle();
            if let Some(k) = self.done.iter().position(|(n, o, _)| *n == at && *o == id) {
                self.done.remove(k).2.expect("read");
                let bytes = self.read.iter().filter(|(n, o, _)| *n == at && *o == id);
                return bytes.flat_map(|(_, _, b)| b.iter().copied()).collect();
            }
            self.step(10);
        }
        panic!("the read did not finish");
    }

    pub fn stats(&mut self, at: usize) -> String {
        let out = self.nodes[at].handle_command(self.now, Command::Stats).expect("stats");
        assert!(matches!(out, CommandOutput::Stats { .. }));
        out.to_string()
    }
}

/// The value of counter `name` in a `stats` output.
pub fn counter(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{stats}"))
        .parse()
        .expect("a number")
}

pub fn name(s: &str) -> FileName {
    FileName::new(s).expect("valid name")
}
