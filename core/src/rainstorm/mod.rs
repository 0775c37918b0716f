//! # RainStorm stream layer
//!
//! RainStorm reads an input file stored in HyDFS line by line, turns each physical line into a
//! source [`Tuple`] `<file:line_number, line>` (lines numbered from 1) and runs it through
//! operator stages. Outputs are exactly-once, so every operator is a deterministic pure function
//! of `(tuple, keyed state)`; partitioning, keyed state, acknowledgements and de-duplication by
//! [`TupleId`] belong to the job framework, never to an operator.
//!
//! What exists now:
//! * [`tuple`]: tuple identities ([`TupleId`]: source position plus derivation path) and tuples;
//! * [`csv`]: lenient single-line RFC 4180 splitting and joining of records;
//! * [`link`]: per-link batch numbering, windows, retries and in-order de-duplication;
//! * [`journal`]: task journals (framed, checksummed records), replay, snapshots and compaction;
//! * [`task`]: an operator task: in-order input, keyed state, journal before acknowledgement,
//!   partitioned output with backpressure, restart from the journal;
//! * [`operator`]: the [`Operator`] contract, the built-in operators and their text specs
//!   ([`OperatorSpec`]), and [`derive`] which gives outputs their ids.

pub mod config;
pub mod csv;
pub mod job;
pub mod journal;
pub mod link;
pub mod operator;
pub mod reference;
pub mod source;
pub mod task;
pub mod tuple;

mod leader;
mod worker;

pub use operator::{
    derive, derive_into, Applied, Operator, OperatorError, OperatorSpec, Output, ProgramSpec, SpecError,
    StageOp,
};
pub use task::{ProgramBatch, ProgramResult};
pub use tuple::{dest_line, source_lines, Tuple, TupleId};

pub use config::{BatchError, PlantedBug, RainstormConfig};
pub use job::{
    lines_read, Epoch, JobError, JobId, JobPlan, JobSpec, RainstormEvent, RainstormMsg, StageCounts, SINK,
};
pub use journal::{TaskId, TupleCounts};

use crate::hydfs::{ClientOp, HydfsError, OpOutput};
use crate::id::{MemberId, NodeAddr};
use crate::time::Time;
use leader::{Leader, Report};
use std::collections::VecDeque;
use worker::Worker;

/// Everything the RainStorm state machines produce in one step, drained by [`Rainstorm`].
#[derive(Default)]
pub(crate) struct Outbox {
    msgs: VecDeque<(NodeAddr, RainstormMsg)>,
    hydfs: VecDeque<(u64, ClientOp)>,
    programs: VecDeque<ProgramCall>,
    events: VecDeque<RainstormEvent>,
    next_token: u64,
}

impl Outbox {
    fn send(&mut self, to: NodeAddr, msg: RainstormMsg) {
        self.msgs.push_back((to, msg));
    }

    fn event(&mut self, e: RainstormEvent) {
        self.events.push_back(e);
    }

    /// Queues a batch for an operator program; its answer comes back to
    /// [`Rainstorm::on_program`] with the returned token.
    fn program(&mut self, mut call: ProgramCall) -> u64 {
        self.next_token += 1;
        call.token = self.next_token;
        self.programs.push_back(call);
        self.next_token
    }

    /// Queues a HyDFS operation; its answer comes back to [`Rainstorm::on_hydfs`] with the token.
    fn hydfs(&mut self, op: ClientOp) -> u64 {
        self.next_token += 1;
        self.hydfs.push_back((self.next_token, op));
        self.next_token
    }
}

/// A batch for an operator program, for the driver to run (protocol: `docs/OPERATORS.md`).
/// The driver keeps one program process per hosted incarnation `(job, task, epoch)` (stopping
/// those no longer in [`Rainstorm::hosted`]), and answers every call exactly once with
/// [`Rainstorm::on_program`]: an error if the program could not be fetched or started, crashed,
/// hung, or answered against the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramCall {
    pub token: u64,
    pub job: JobId,
    pub task: TaskId,
    pub epoch: Epoch,
    pub program: ProgramSpec,
    /// The input's first row (the program's handshake carries it).
    pub header: Option<Vec<String>>,
    pub batch: ProgramBatch,
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RainstormStats {
    /// Batches refused for holding more than `max_batch_tuples` tuples.
    pub batches_rejected: u64,
}

/// One node's RainStorm: the jobs it leads and the task incarnations it hosts.
pub struct Rainstorm {
    cfg: RainstormConfig,
    stats: RainstormStats,
    me: Option<MemberId>,
    members: Vec<MemberId>,
    leader: Leader,
    worker: Worker,
    out: Outbox,
}

impl Rainstorm {
    pub fn new(cfg: RainstormConfig) -> Rainstorm {
        Rainstorm {
            cfg,
            stats: RainstormStats::default(),
            me: None,
            members: Vec::new(),
            leader: Leader::default(),
            worker: Worker::default(),
            out: Outbox::default(),
        }
    }

    pub fn config(&self) -> &RainstormConfig {
        &self.cfg
    }

    pub fn stats(&self) -> RainstormStats {
        self.stats.clone()
    }

    /// Jobs this node leads that have not ended.
    pub fn jobs(&self) -> Vec<JobId> {
        self.leader.jobs().collect()
    }

    /// A readable account of the jobs this node leads and the tasks it hosts.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = self.leader.describe();
        lines.extend(self.worker.describe());
        lines
    }

    /// Task incarnations this node hosts.
    pub fn hosted(&self) -> Vec<(JobId, TaskId, Epoch)> {
        self.worker.hosted().collect()
    }

    /// Starts a job led by this node. Its progress arrives as [`RainstormEvent`]s.
    pub fn start_job(&mut self, now: Time, spec: JobSpec) -> Result<JobId, JobError> {
        let Some(me) = self.me else { return Err(JobError::NotJoined) };
        if spec.tasks == 0 || spec.tasks > self.cfg.max_tasks {
            return Err(JobError::BadTaskCount { found: spec.tasks, max: self.cfg.max_tasks });
        }
        if spec.src == spec.dest {
            return Err(JobError::SameFile(spec.src));
        }
        let job = self.leader.start(now, me, &self.cfg, spec, &mut self.out);
        self.loopback(now);
        Ok(job)
    }

    /// The member list changed (`me` is `None` while this node is not a member).
    pub fn set_members(&mut self, now: Time, me: Option<MemberId>, others: Vec<MemberId>) {
        let was = self.me;
        let mut members = others;
        members.extend(me);
        members.sort();
        let gone: Vec<MemberId> = self.members.iter().copied().filter(|m| !members.contains(m)).collect();
        self.members = members;
        self.me = me;
        if was.is_some() && was != me {
            // This node was declared failed or left: its tasks were placed elsewhere, and the
            // jobs it leads cannot go on.
            self.worker.clear();
            self.leader.lose_all("this leader stopped being a member of the group", &mut self.out);
        }
        for member in gone {
            self.leader.on_member_gone(now, &self.cfg, member, &self.members, &mut self.out);
            for (job, leader) in self.worker.leaders() {
                if leader == member && self.worker.abandon(job) {
                    let reason = format!("its leader {} left or was declared failed", member.addr);
                    self.out.event(RainstormEvent::JobAbandoned { job, reason });
                }
            }
        }
        self.leader.on_members(now, &self.cfg, &self.members, &mut self.out);
        self.loopback(now);
    }

    pub fn handle_message(&mut self, now: Time, from: NodeAddr, msg: RainstormMsg) {
        self.dispatch(now, from, msg);
        self.loopback(now);
    }

    pub fn handle_timeout(&mut self, now: Time) {
        self.leader.handle_timeout(now, &self.cfg, &self.members, &mut self.out);
        self.worker.handle_timeout(now, &self.cfg, &mut self.out);
        self.loopback(now);
    }

    /// Whether a HyDFS operation token is RainStorm's.
    pub fn owns(&self, token: u64) -> bool {
        self.leader.owns(token) || self.worker.owns(token)
    }

    /// The answer to a HyDFS operation queued by [`Rainstorm::poll_hydfs`].
    pub fn on_hydfs(&mut self, now: Time, token: u64, result: Result<OpOutput, HydfsError>) {
        if self.leader.owns(token) {
            self.leader.on_hydfs(now, &self.cfg, &self.members, token, result, &mut self.out);
        } else {
            self.worker.on_hydfs(now, &self.cfg, token, result, &mut self.out);
        }
        self.loopback(now);
    }

    /// An operator program's answer to the [`ProgramCall`] with this token.
    pub fn on_program(&mut self, now: Time, token: u64, result: Result<ProgramResult, String>) {
        self.worker.on_program(now, &self.cfg, token, result, &mut self.out);
        self.loopback(now);
    }

    /// The next batch for an operator program.
    pub fn poll_program(&mut self) -> Option<ProgramCall> {
        self.out.programs.pop_front()
    }

    pub fn poll_outgoing(&mut self) -> Option<(NodeAddr, RainstormMsg)> {
        self.out.msgs.pop_front()
    }

    pub fn poll_hydfs(&mut self) -> Option<(u64, ClientOp)> {
        self.out.hydfs.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<RainstormEvent> {
        self.out.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        match (self.leader.poll_timeout(), self.worker.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Messages to this node itself are handled here, not sent.
    fn loopback(&mut self, now: Time) {
        let Some(me) = self.me else { return };
        for _ in 0..10_000 {
            let Some(i) = self.out.msgs.iter().position(|(to, _)| *to == me.addr) else { return };
            let (_, msg) = self.out.msgs.remove(i).expect("present");
            self.dispatch(now, me.addr, msg);
        }
    }

    fn dispatch(&mut self, now: Time, from: NodeAddr, msg: RainstormMsg) {
        let Some(me) = self.me else { return };
        let cfg = &self.cfg;
        let out = &mut self.out;
        match msg {
            RainstormMsg::Assign { plan, task, epoch, host, placement, recover } => {
                self.worker.assign(now, me, cfg, *plan, task, epoch, host, placement, recover, out)
            }
            RainstormMsg::Status { job, task, epoch, phase, placement, ended_known, nonce } => {
                let report = Report { phase, placement, ended_known, nonce };
                self.leader.on_status(now, cfg, &self.members, from, (job, task, epoch), report, out)
            }
            RainstormMsg::Control { job, task, epoch, go, placement, ended, nonce } => {
                self.worker.control(now, cfg, (job, task, epoch), go, placement, ended, nonce, out)
            }
            RainstormMsg::Stop { job, task } => self.worker.stop(job, task),
            RainstormMsg::Link { job, from: f, to, msg } => {
                let accepted = if to.0 == SINK {
                    self.leader.on_link(job, f, msg, cfg, out)
                } else {
                    self.worker.link(now, cfg, job, f, to, msg, out)
                };
                if accepted.is_err() {
                    self.stats.batches_rejected += 1;
                }
            }
        }
    }
}
