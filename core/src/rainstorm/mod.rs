//! # RainStorm stream layer
//!
//! RainStorm reads an input file stored in HyDFS line by line, turns each physical line into a
//! source [`Tuple`] `<file:line_number, line>` (lines numbered from 1) and runs it through two
//! operator stages. Outputs are exactly-once, so every operator is a deterministic pure function
//! of `(tuple, keyed state)`; partitioning, keyed state, checkpoints and rollback belong to the
//! job framework, never to an operator.
//!
//! Exactly-once comes from aligned checkpoints (Chandy–Lamport barriers, as in Flink and
//! Arroyo): the leader starts a checkpoint every `checkpoint_interval`; sources emit its
//! barrier into their streams; each task snapshots its keyed state when the barrier has come in
//! on every input; the leader (also the job's sink) commits the outputs before a barrier to the
//! destination only once every snapshot of its checkpoint is in. A failure rolls the whole job
//! back to its newest complete checkpoint; outputs after it were never committed, and are
//! produced again. Nothing is made durable per batch: one checkpoint record and one append of
//! outputs per commit.
//!
//! Roles: the node hands this layer messages from current members only. Within a job, a
//! message is refused and counted by cause ([`Refusal`], `RainstormStats::refused`) unless its
//! sender has the role it speaks in: deploys, controls and stops come from the job's leader (the
//! member its plan names: in term 0 the one the job's id names, after that a successor), with a
//! plan within `max_tasks`, for a task placed on this node; link messages and snapshots for a
//! task come from the member the attempt places it on. Messages of a leader deposed since (of an
//! earlier term) or of an earlier process at the sender's address change nothing, and are
//! dropped rather than refused.
//!
//! The parts:
//! * [`tuple`]: tuple identities ([`TupleId`]: source line plus derivation path) and tuples;
//! * [`csv`]: lenient single-line RFC 4180 splitting and joining of records;
//! * [`input`]: the input's parts, line numbers from metadata, and a source's line cursor;
//! * [`link`]: per-link batch numbering, windows, retries and in-order de-duplication;
//! * [`outlet`]: a task's outputs, coalesced per downstream task;
//! * [`source`], [`task`]: source tasks and operator tasks;
//! * [`sink`]: the leader's sink: aligned epochs of outputs;
//! * [`checkpoint`], `commit`: the checkpoint log and the commits of epochs;
//! * [`message`]: what nodes say to each other;
//! * [`operator`]: the [`Operator`] contract, the built-ins and their text specs
//!   ([`OperatorSpec`]), and [`derive`], which gives outputs their ids;
//! * [`reference`]: the single-process pipeline every job is judged against.

pub mod checkpoint;
pub mod config;
pub use rainstorm_csv as csv;
pub mod directory;
pub mod input;
pub mod job;
pub mod link;
pub mod message;
pub mod operator;
pub mod outlet;
pub mod reference;
pub mod sink;
pub mod source;
pub mod task;
pub mod tuple;

mod commit;
mod leader;
mod takeover;
mod worker;

pub use operator::{
    derive, derive_into, Applied, Operator, OperatorError, OperatorSpec, Output, ProgramSpec, SpecError,
    StageOp,
};
pub use task::{ProgramBatch, ProgramResult};
pub use tuple::{dest_line, source_lines, Tuple, TupleId};

pub use config::{BatchError, PlantedBug, RainstormConfig};
pub use job::{
    first_attempt, lines_read, term_of, Attempt, CheckpointId, JobError, JobId, JobPlan, JobSpec,
    RainstormEvent, StageCounts, TaskId, Term, TupleCounts, SINK,
};

pub use message::RainstormMsg;

/// Why a successor reports a job lost ([`RainstormEvent::JobLost`]) when nothing is
/// left to resume it from.
pub const NOTHING_TO_RESUME: &str =
    "nothing is left to resume it from: it ended under its previous leader (which deleted \
     its files), or that leader was lost before it had made them all and committed anything";

use crate::histogram::LatencyHistogram;
use crate::hydfs::{ClientOp, HydfsError, OpOutput};
use crate::id::{MemberId, NodeAddr};
use crate::time::Time;
use directory::{Directory, JobNotice};
use leader::Leader;
use std::collections::{BTreeMap, VecDeque};
use worker::Worker;

/// Everything the RainStorm state machines produce in one step, drained by [`Rainstorm`].
#[derive(Default)]
pub(crate) struct Outbox {
    /// This node's address: messages to it are handled here, never sent.
    me: Option<NodeAddr>,
    msgs: VecDeque<(NodeAddr, RainstormMsg)>,
    local: VecDeque<RainstormMsg>,
    hydfs: VecDeque<(u64, ClientOp)>,
    programs: VecDeque<ProgramCall>,
    events: VecDeque<RainstormEvent>,
    /// Notices of the jobs this node leads, for every member.
    announce: VecDeque<JobNotice>,
    next_token: u64,
}

impl Outbox {
    fn send(&mut self, to: NodeAddr, msg: RainstormMsg) {
        if Some(to) == self.me {
            self.local.push_back(msg);
        } else {
            self.msgs.push_back((to, msg));
        }
    }

    fn event(&mut self, e: RainstormEvent) {
        self.events.push_back(e);
    }

    /// Tells every member where a job this node leads stands.
    fn announce(&mut self, notice: JobNotice) {
        self.announce.push_back(notice);
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
/// The driver keeps one program process per hosted task attempt `(job, task, attempt)`
/// (stopping those no longer in [`Rainstorm::hosted`]), and answers every call exactly once
/// with [`Rainstorm::on_program`], in order per attempt: an error if the program could not be
/// fetched or started, crashed, hung, or answered against the protocol. Up to
/// `program_window` calls of one attempt are out at a time; the first one of an attempt is
/// empty (it starts the program).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramCall {
    pub token: u64,
    pub job: JobId,
    pub task: TaskId,
    pub attempt: Attempt,
    pub program: ProgramSpec,
    /// The input's first row (the program's handshake carries it).
    pub header: Option<Vec<String>>,
    pub batch: ProgramBatch,
}

/// What one task (or a job's sink) holds, by kind, in bytes: what bounded-buffer checks read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffers {
    pub job: JobId,
    /// The task ([`SINK`] for a job's sink at its leader).
    pub task: TaskId,
    /// Input parts a source read ahead.
    pub read_ahead: usize,
    /// Batches received and not taken yet.
    pub inputs: usize,
    /// Batches sent and not acknowledged yet.
    pub unacked: usize,
    /// Everything on the output side: unacknowledged, sealed and waiting, and coalescing
    /// (for a sink: epochs of outputs not committed yet).
    pub outputs: usize,
    /// A sink's open epoch (0 for a task), and whether a barrier is on its way to close it:
    /// while none is, the open epoch stays within a quarter of `sink_buffer_bytes` plus what
    /// the sink's links held when it last took batches.
    pub open_epoch: usize,
    pub barrier_coming: bool,
}

/// A job this node leads, as a status page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    pub job: JobId,
    pub spec: String,
    /// `reading input`, `creating files`, `deploying`, `running` or `draining`.
    pub phase: &'static str,
    pub attempt: Attempt,
    pub restarts: u32,
    /// Outputs committed to the destination so far.
    pub outputs: u64,
    /// Lines in the input (0 while unknown).
    pub input_lines: u64,
    pub stages: Vec<StageCounts>,
    /// Per output committed, as [`RainstormStats::tuple_latency`] counts them.
    pub tuple_latency: LatencyHistogram,
    pub tasks: Vec<TaskView>,
}

/// One task of a [`JobView`]: where it runs and the counts it last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    pub task: TaskId,
    pub host: MemberId,
    /// `unplaced`, `deploying`, `running` or `done`.
    pub state: &'static str,
    pub counts: TupleCounts,
    /// Times a rollback took it from a worker that was gone (and placed it elsewhere).
    pub moves: u32,
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RainstormStats {
    /// Batches refused for holding more than `max_batch_tuples` tuples.
    pub batches_rejected: u64,
    /// Messages refused because their sender has no such role in the job (see
    /// [`Refusal`]), by cause.
    pub refused: BTreeMap<&'static str, u64>,
    /// Checkpoints completed in the jobs this node led.
    pub checkpoints: u64,
    /// Commits (a checkpoint record, then the outputs) and the bytes and HyDFS writes they
    /// took: records in checkpoint logs, outputs in destinations.
    pub commits: u64,
    pub log_bytes: u64,
    pub log_writes: u64,
    pub output_bytes: u64,
    pub output_writes: u64,
    /// Rollbacks of the jobs this node led.
    pub rollbacks: u64,
    /// Tuple batches sent by the tasks this node ran.
    pub batches_sent: u64,
    /// Jobs this node led: per output, from the start of the checkpoint epoch it was read in
    /// to its commit (an upper bound on its latency: an epoch lasts about
    /// `checkpoint_interval`); per commit, from its epoch being ready (checkpoint complete)
    /// to its outputs being durable in the destination.
    pub tuple_latency: LatencyHistogram,
    pub commit_latency: LatencyHistogram,
}

impl RainstormStats {
    /// Refused messages by cause, every cause present (0 until it occurs).
    pub fn refused_by_cause(&self) -> BTreeMap<&'static str, u64> {
        let mut refused = self.refused.clone();
        for r in Refusal::ALL {
            refused.entry(r.cause()).or_default();
        }
        refused
    }
}

/// One node's RainStorm: the jobs it leads and the tasks it runs.
pub struct Rainstorm {
    cfg: RainstormConfig,
    stats: RainstormStats,
    me: Option<MemberId>,
    members: Vec<MemberId>,
    leader: Leader,
    worker: Worker,
    directory: Directory,
    /// When a job whose leader is gone is next due to be taken over.
    next_adoption: Option<Time>,
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
            directory: Directory::default(),
            next_adoption: None,
            out: Outbox::default(),
        }
    }

    pub fn config(&self) -> &RainstormConfig {
        &self.cfg
    }

    pub fn stats(&self) -> RainstormStats {
        let l = self.leader.stats();
        RainstormStats {
            checkpoints: l.checkpoints,
            commits: l.commits,
            log_bytes: l.log_bytes,
            log_writes: l.log_writes,
            output_bytes: l.output_bytes,
            output_writes: l.output_writes,
            rollbacks: l.rollbacks,
            batches_sent: self.worker.batches_sent(),
            tuple_latency: l.tuple_latency,
            commit_latency: l.commit_latency,
            ..self.stats.clone()
        }
    }

    /// The jobs this node leads that have not ended, as a status page shows them.
    pub fn job_views(&self) -> Vec<JobView> {
        self.leader.views()
    }

    /// Jobs this node leads that have not ended.
    pub fn jobs(&self) -> Vec<JobId> {
        self.leader.jobs().collect()
    }

    /// A readable account of the jobs this node leads and the tasks it runs.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = self.leader.describe();
        lines.extend(self.worker.describe());
        lines
    }

    /// Every job of the group this node heard of, with its leader (`directory.rs`).
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Task attempts this node runs.
    pub fn hosted(&self) -> Vec<(JobId, TaskId, Attempt)> {
        self.worker.hosted().collect()
    }

    /// Bytes RainStorm holds on this node: tasks' read-ahead, link windows, coalescing buffers,
    /// program calls out, and the sinks and uncommitted outputs of the jobs it leads.
    pub fn buffered_bytes(&self) -> usize {
        self.leader.buffered_bytes() + self.worker.buffered_bytes()
    }

    /// What each task here, and each sink of a job this node leads, holds.
    pub fn buffers(&self) -> Vec<Buffers> {
        let mut all = self.leader.buffers();
        all.extend(self.worker.buffers());
        all
    }

    /// Batches of tuples this node's tasks sent so far.
    pub fn batches_sent(&self) -> u64 {
        self.worker.batches_sent()
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
        if spec.rate == Some(0) {
            return Err(JobError::BadRate);
        }
        let programs = [&spec.op1, &spec.op2].into_iter().any(|op| matches!(op, OperatorSpec::Program(_)));
        if programs && !self.cfg.run_programs {
            return Err(JobError::ProgramsRefused);
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
        self.out.me = me.map(|m| m.addr);
        if was.is_some() && was != me {
            // This node was declared failed or left: its tasks were placed elsewhere, and the
            // jobs it leads cannot go on.
            self.worker.clear();
            self.leader.lose_all("this leader stopped being a member of the group", &mut self.out);
        }
        if me.is_some() {
            self.directory.members_are(&self.members);
        }
        for member in gone {
            if me.is_some() {
                // While this node is no member itself, its view says nothing of the others.
                self.directory.member_gone(now, member);
            }
            self.leader.on_member_gone(now, &self.cfg, member, &self.members, &mut self.out);
            for (job, leader) in self.worker.leaders() {
                if leader == member && self.worker.abandon(job) {
                    let reason = format!("its leader {} left or was declared failed", member.addr);
                    self.out.event(RainstormEvent::JobAbandoned { job, reason });
                }
            }
        }
        self.leader.on_members(now, &self.cfg, &self.members, &mut self.out);
        self.adopt_orphans(now);
        self.loopback(now);
    }

    /// Takes over every running job whose leader is gone (for `takeover_delay`) and whose
    /// successor, in this node's view of the group, is this node; tells the successor of each
    /// other such job about it (it may have joined since the job's last announcement).
    fn adopt_orphans(&mut self, now: Time) {
        let Some(me) = self.me else { return };
        let Some(since) = now.0.checked_sub(self.cfg.takeover_delay.0).map(Time) else { return };
        let orphans: Vec<(MemberId, JobNotice)> = self
            .directory
            .orphans(since)
            .filter_map(|k| {
                let successor = directory::successor(k.notice.job, k.notice.term, &self.members)?;
                Some((successor, k.notice.clone()))
            })
            .collect();
        for (successor, notice) in orphans {
            if successor == me {
                self.leader.take_over(&self.cfg, me, notice, &mut self.out);
            } else {
                self.out.send(successor.addr, RainstormMsg::Orphan(Box::new(notice)));
            }
        }
    }

    /// A message from member `from` (the node has checked that it is a current member).
    pub fn handle_message(&mut self, now: Time, from: MemberId, msg: RainstormMsg) {
        self.dispatch(now, from, msg);
        self.loopback(now);
    }

    pub fn handle_timeout(&mut self, now: Time) {
        if self.next_adoption.is_some_and(|t| t <= now) {
            self.adopt_orphans(now);
        }
        self.leader.handle_timeout(now, &self.cfg, &mut self.out);
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
        [self.leader.poll_timeout(&self.cfg), self.worker.poll_timeout(), self.next_adoption]
            .into_iter()
            .flatten()
            .min()
    }

    /// Messages to this node itself are handled here, in order, not sent; notices go to every
    /// member.
    fn loopback(&mut self, now: Time) {
        self.next_adoption = self.directory.next_orphan(now, self.cfg.takeover_delay);
        let Some(me) = self.me else {
            self.out.local.clear();
            self.out.announce.clear();
            return;
        };
        while let Some(notice) = self.out.announce.pop_front() {
            for m in &self.members {
                self.out.send(m.addr, RainstormMsg::Announce(Box::new(notice.clone())));
            }
        }
        while let Some(msg) = self.out.local.pop_front() {
            self.dispatch(now, me, msg);
        }
    }

    fn dispatch(&mut self, now: Time, from: MemberId, msg: RainstormMsg) {
        let Some(me) = self.me else { return };
        let leader = match &msg {
            RainstormMsg::Deploy { plan, .. } => Some(plan.leader),
            RainstormMsg::Announce(notice) => Some(notice.leader),
            _ => None,
        };
        if leader.is_some_and(|l| l.addr == from.addr && l.join_time < from.join_time) {
            // Sent by this address's earlier process as it left the group (it leads nothing
            // now): it means nothing.
            return;
        }
        if let Some(refusal) = self.refusal(me, from, &msg) {
            debug_assert_ne!(from, me, "a node never refuses its own messages: {refusal:?}");
            *self.stats.refused.entry(refusal.cause()).or_default() += 1;
            return;
        }
        let cfg = &self.cfg;
        let members = &self.members;
        let out = &mut self.out;
        let accepted = match msg {
            RainstormMsg::Deploy { plan, attempt, task, placement, restore, base, manifest } => {
                self.worker.deploy(now, cfg, plan, (attempt, task, placement), restore, base, manifest, out);
                Ok(())
            }
            RainstormMsg::Status { job, attempt, task, phase, counts, snapshots } => {
                self.leader.on_status(
                    now,
                    cfg,
                    members,
                    from,
                    (job, attempt, task),
                    (phase, counts, snapshots),
                    out,
                );
                Ok(())
            }
            RainstormMsg::Control { job, attempt, task, go, paced_ms, trigger, confirmed } => {
                let go = go.then_some(paced_ms);
                self.worker.control(now, cfg, (job, attempt, task), go, trigger, confirmed, out);
                Ok(())
            }
            RainstormMsg::Snapshot { job, attempt, task, checkpoint, snapshot } => {
                self.leader.on_snapshot(now, cfg, (job, attempt, task), checkpoint, snapshot, out);
                Ok(())
            }
            RainstormMsg::Announce(notice) => {
                self.directory.heard(now, from, *notice);
                Ok(())
            }
            RainstormMsg::Orphan(notice) => {
                // Only if this node's own view has the sender (it is up to date) and not the
                // job's leader.
                let leader = notice.leader;
                if members.contains(&from)
                    && !members.contains(&leader)
                    && Some(leader) != self.me
                    && self.directory.orphaned(now, *notice)
                {
                    self.adopt_orphans(now);
                }
                Ok(())
            }
            RainstormMsg::Stop { job, before } => {
                // A stop bars later deploys of the job here, so one of a job this node does
                // not run counts only from the member the job's id names: a stop from the
                // process that replaced a gone leader at its address is for a job already
                // dropped here.
                if self.worker.runs(job) || JobId::new(from, job.n) == job {
                    self.worker.stop(job, before);
                }
                Ok(())
            }
            RainstormMsg::Link { job, attempt, from: f, to, msg } => {
                if to == SINK {
                    self.leader.on_link(now, cfg, (job, attempt, f), msg, out)
                } else {
                    self.worker.link(now, cfg, (job, attempt), f, to, msg, out)
                }
            }
        };
        if accepted.is_err() {
            self.stats.batches_rejected += 1;
        }
    }

    /// Why `from` may not say `msg` to this node, if it may not: only a job's leader deploys,
    /// controls and stops its tasks, with a plan within this node's limits; only the current
    /// host of a task speaks for it on a link or to the leader. A message about a job or task
    /// this node does not run is not refused here: it changes nothing.
    fn refusal(&self, me: MemberId, from: MemberId, msg: &RainstormMsg) -> Option<Refusal> {
        match msg {
            RainstormMsg::Deploy { plan, attempt, task, placement, .. } => {
                let tasks_at_most = self.cfg.max_tasks;
                if plan.tasks == 0
                    || plan.tasks > tasks_at_most
                    || placement.len() > (job::STAGES as usize) * (plan.tasks as usize) + 1
                {
                    Some(Refusal::PlanOverLimits)
                } else if plan.leader != from
                    || JobId::new(plan.origin, plan.job.n) != plan.job
                    || (term_of(*attempt) == 0 && plan.leader != plan.origin)
                {
                    // Term 0 is led by the member the job was submitted to; a later term by a
                    // successor (whose claim the seal on the destination settles).
                    Some(Refusal::NotTheLeader)
                } else if placement.get(task) != Some(&me) {
                    Some(Refusal::NotPlacedHere)
                } else {
                    None
                }
            }
            RainstormMsg::Control { job, task, attempt, .. } => {
                match self.worker.leader_of_task(*job, *task) {
                    // A control of an earlier term's attempt (from a leader deposed since) changes
                    // nothing here.
                    Some((leader, running)) => (leader != from && term_of(*attempt) >= term_of(running))
                        .then_some(Refusal::NotTheLeader),
                    None => None,
                }
            }
            RainstormMsg::Stop { job, before } => {
                match self.worker.leader_of(*job) {
                    // A stop of attempts none of which runs here (from a leader deposed since)
                    // changes nothing.
                    Some(leader)
                        if leader != from
                            && self.worker.oldest_attempt(*job).is_some_and(|a| a >= *before) =>
                    {
                        None
                    }
                    // A stop may also come from the process that replaced the leader at its
                    // address: the leader is gone, and its jobs with it.
                    Some(leader) if leader.addr == from.addr && leader.join_time < from.join_time => None,
                    Some(leader) => (leader != from).then_some(Refusal::NotTheLeader),
                    // Not a job of ours: nothing to refuse (a stop of it is remembered only if
                    // its sender leads it, see `dispatch`).
                    None => None,
                }
            }
            RainstormMsg::Link { job, attempt, from: task, to, .. } => {
                let speaks = if *to == SINK {
                    self.leader.speaks_for(*job, *attempt, *task, from)
                } else {
                    self.worker.speaks_for(*job, *attempt, *to, *task, from)
                };
                (!speaks).then_some(Refusal::NotTheTaskHost)
            }
            RainstormMsg::Snapshot { job, attempt, task, .. } => {
                (!self.leader.speaks_for(*job, *attempt, *task, from)).then_some(Refusal::NotTheTaskHost)
            }
            // Only the job's leader announces it.
            RainstormMsg::Announce(notice) => {
                (!directory::Directory::may_announce(from, notice)).then_some(Refusal::NotTheLeader)
            }
            // Any member may say a job lost its leader: the receiver checks its own view.
            RainstormMsg::Orphan(_) => None,
            // A status from a member the leader does not place the task on is ignored by the
            // leader itself (and answered with a stop when its attempt or job is over).
            RainstormMsg::Status { .. } => None,
        }
    }
}

/// Why a RainStorm message was refused: its sender has no such role in its job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A deploy whose plan is over this node's limits (`max_tasks`).
    PlanOverLimits,
    /// A deploy, control, stop or job notice from a member that does not lead the job.
    NotTheLeader,
    /// A deploy of a task its placement puts on another member.
    NotPlacedHere,
    /// A link message or snapshot for a task from a member that does not host it.
    NotTheTaskHost,
}

impl Refusal {
    pub const ALL: [Refusal; 4] =
        [Refusal::PlanOverLimits, Refusal::NotTheLeader, Refusal::NotPlacedHere, Refusal::NotTheTaskHost];

    /// The name it is counted under.
    pub fn cause(self) -> &'static str {
        match self {
            Refusal::PlanOverLimits => "plan_over_limits",
            Refusal::NotTheLeader => "not_the_leader",
            Refusal::NotPlacedHere => "not_placed_here",
            Refusal::NotTheTaskHost => "not_the_task_host",
        }
    }
}
