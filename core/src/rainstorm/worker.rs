//! The worker side: the tasks this node runs, one attempt of each, with their reports to their
//! leader, their input reads and their operator-program calls.
//!
//! A task is deployed for one attempt of its job; a deploy of a newer attempt replaces it, an
//! older one is ignored. It reports its phase to its leader on every change and every status
//! interval, and every snapshot it takes at once and again in each report until the leader
//! confirms it. A source reads its input parts through this node's HyDFS client (from this
//! node's own copy when it holds one).
//!
//! Invariants kept here:
//! * one attempt of a task runs here at a time, and a link message is taken only if it names
//!   that attempt;
//! * a task's file operations and program calls answer only the attempt that made them;
//! * nothing is sent by a task that failed or was stopped; a stopped job's older attempts are
//!   never deployed again here;
//! * a deploy of a later leadership term (a successor's) ends every task of the job's earlier
//!   terms here, and bars them from running here again.

use std::collections::BTreeMap;

use super::config::RainstormConfig;
use super::input::{Layout, Manifest};
use super::job::{
    first_attempt, term_of, Attempt, CheckpointId, JobId, JobPlan, Placement, RainstormEvent, TaskId,
    TupleCounts, SINK, STAGES,
};
use super::message::{LinkMsg, RainstormMsg, Restore, Snapshot, SourceCheckpoint, TaskPhase};
use super::source::{SourceInput, SourceTask};
use super::task::{ProgramResult, Task, TaskOutput};
use super::{Outbox, ProgramCall};
use crate::hydfs::{ClientOp, HydfsError, OpOutput};
use crate::id::MemberId;
use crate::time::Time;

enum Runner {
    Source(Box<SourceTask>),
    Op(Box<Task>),
}

impl Runner {
    fn poll_output(&mut self) -> Option<TaskOutput> {
        match self {
            Runner::Source(s) => s.poll_output(),
            Runner::Op(t) => t.poll_output(),
        }
    }

    fn poll_timeout(&self) -> Option<Time> {
        match self {
            Runner::Source(s) => s.poll_timeout(),
            Runner::Op(t) => t.poll_timeout(),
        }
    }

    fn handle_timeout(&mut self, now: Time) {
        match self {
            Runner::Source(s) => s.handle_timeout(now),
            Runner::Op(t) => t.handle_timeout(now),
        }
    }

    fn counts(&self) -> TupleCounts {
        match self {
            Runner::Source(s) => s.counts(),
            Runner::Op(t) => t.counts(),
        }
    }

    fn buffered_bytes(&self) -> usize {
        match self {
            Runner::Source(s) => s.buffered_bytes(),
            Runner::Op(t) => t.buffered_bytes(),
        }
    }

    fn buffers(&self) -> (usize, usize, usize, usize) {
        match self {
            Runner::Source(s) => s.buffers(),
            Runner::Op(t) => t.buffers(),
        }
    }

    fn batches_sent(&self) -> u64 {
        match self {
            Runner::Source(s) => s.batches_sent(),
            Runner::Op(t) => t.batches_sent(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Runner::Source(s) => s.describe(),
            Runner::Op(t) => t.describe(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Running,
    Finished(Snapshot),
    Failed { reason: String, transient: bool },
}

/// One task this node runs.
struct Hosted {
    plan: Box<JobPlan>,
    attempt: Attempt,
    placement: Placement,
    /// `None` once it failed.
    runner: Option<Runner>,
    /// Batches its runner had sent when it failed (the count never goes back).
    sent_before_failing: u64,
    /// Sources: the input's parts, to name the part a read asks for.
    manifest: Option<Manifest>,
    phase: Phase,
    go: bool,
    /// Snapshots the leader has not confirmed.
    unconfirmed: BTreeMap<CheckpointId, Snapshot>,
    next_status: Time,
    resumed: bool,
}

#[derive(Default)]
pub(super) struct Worker {
    hosted: BTreeMap<(JobId, TaskId), Hosted>,
    /// Input part reads, by token: which task and attempt, and which part.
    reads: BTreeMap<u64, (JobId, TaskId, Attempt, usize)>,
    /// Batches out at operator programs, by token.
    programs: BTreeMap<u64, (JobId, TaskId, Attempt)>,
    /// Jobs stopped here, with the attempt from which they may run again.
    stopped: BTreeMap<JobId, Attempt>,
    /// Tuple batches sent by tasks no longer hosted.
    batches_sent_before: u64,
}

/// How many stopped jobs a worker remembers (the oldest are forgotten first).
const STOPPED_JOBS_KEPT: usize = 1024;

impl Worker {
    pub(super) fn hosted(&self) -> impl Iterator<Item = (JobId, TaskId, Attempt)> + '_ {
        self.hosted.iter().map(|((j, t), h)| (*j, *t, h.attempt))
    }

    /// One line per hosted task.
    pub(super) fn describe(&self) -> Vec<String> {
        self.hosted
            .iter()
            .map(|((job, task), h)| {
                let phase = match &h.phase {
                    Phase::Starting => "starting".to_owned(),
                    Phase::Ready => "ready".to_owned(),
                    Phase::Running => "running".to_owned(),
                    Phase::Finished(_) => "finished".to_owned(),
                    Phase::Failed { reason, .. } => format!("failed: {reason}"),
                };
                let progress = h.runner.as_ref().map(Runner::describe).unwrap_or_default();
                format!("job {job} {task} attempt {}: {phase}, {progress}", h.attempt)
            })
            .collect()
    }

    pub(super) fn owns(&self, token: u64) -> bool {
        self.reads.contains_key(&token)
    }

    /// Bytes held by the tasks here.
    pub(super) fn buffered_bytes(&self) -> usize {
        self.hosted.values().filter_map(|h| h.runner.as_ref()).map(Runner::buffered_bytes).sum()
    }

    /// What each task here holds.
    pub(super) fn buffers(&self) -> Vec<super::Buffers> {
        self.hosted
            .iter()
            .filter_map(|((job, task), h)| {
                let (read_ahead, inputs, unacked, outputs) = h.runner.as_ref()?.buffers();
                Some(super::Buffers {
                    job: *job,
                    task: *task,
                    read_ahead,
                    inputs,
                    unacked,
                    outputs,
                    open_epoch: 0,
                    barrier_coming: false,
                })
            })
            .collect()
    }

    /// Tuple batches sent by the tasks here so far.
    pub(super) fn batches_sent(&self) -> u64 {
        self.batches_sent_before + self.hosted.values().map(Hosted::batches_sent).sum::<u64>()
    }

    pub(super) fn poll_timeout(&self) -> Option<Time> {
        self.hosted
            .values()
            .flat_map(|h| [Some(h.next_status), h.runner.as_ref().and_then(Runner::poll_timeout)])
            .flatten()
            .min()
    }

    /// A `Deploy` from a leader.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deploy(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        plan: Box<JobPlan>,
        (attempt, task, placement): (Attempt, TaskId, Placement),
        restore: Restore,
        base: CheckpointId,
        manifest: Option<Manifest>,
        out: &mut Outbox,
    ) {
        let job = plan.job;
        if task.stage >= STAGES || task.index >= plan.tasks {
            return;
        }
        if self.stopped.get(&job).is_some_and(|from| attempt < *from) {
            return;
        }
        let key = (job, task);
        if let Some(h) = self.hosted.get_mut(&key) {
            if h.attempt > attempt {
                return;
            }
            if h.attempt == attempt {
                h.next_status = now;
                return self.pump(now, key, cfg, out);
            }
        }
        // A later term's deploy: the job has a new leader, and every task of an earlier term
        // here ends and never runs here again (the new leader deploys what it places here).
        let later_term = term_of(attempt) > 0;
        if later_term && self.stopped.get(&job).is_none_or(|from| *from < first_attempt(term_of(attempt))) {
            self.stop(job, first_attempt(term_of(attempt)));
        }
        self.forget(|j, t, _| (j, t) == key);
        debug_assert!(
            self.reads.values().all(|(j, t, ..)| (*j, *t) != key)
                && self.programs.values().all(|(j, t, _)| (*j, *t) != key),
            "no read or program call of an attempt replaced here is still answered"
        );
        let resumed = restore != Restore::default() && restore.source != Some(SourceCheckpoint::Start);
        let runner = build(cfg, &plan, task, restore, base, manifest.clone());
        let (runner, phase) = match runner {
            Ok(r) => (Some(r), Phase::Starting),
            Err(reason) => (None, Phase::Failed { reason, transient: false }),
        };
        let h = Hosted {
            plan,
            attempt,
            placement,
            runner,
            sent_before_failing: 0,
            manifest,
            phase,
            go: false,
            unconfirmed: BTreeMap::new(),
            next_status: now,
            resumed,
        };
        let replaced = self.hosted.insert(key, h);
        debug_assert!(replaced.is_none(), "one attempt of a task runs here at a time");
        self.pump(now, key, cfg, out);
    }

    /// Drops the tasks `pick` names, with their pending reads and program calls (whose answers
    /// must never reach a later attempt).
    fn forget(&mut self, pick: impl Fn(JobId, TaskId, Attempt) -> bool) -> usize {
        let gone: Vec<(JobId, TaskId, Attempt)> =
            self.hosted().filter(|(j, t, a)| pick(*j, *t, *a)).collect();
        for (j, t, _) in &gone {
            if let Some(h) = self.hosted.remove(&(*j, *t)) {
                self.batches_sent_before += h.batches_sent();
            }
        }
        self.reads.retain(|_, (j, t, a, _)| !gone.contains(&(*j, *t, *a)));
        self.programs.retain(|_, k| !gone.contains(k));
        gone.len()
    }

    /// A leader's `Stop`: the job's tasks of attempts before `before` end here, and never run
    /// here again.
    pub(super) fn stop(&mut self, job: JobId, before: Attempt) {
        self.forget(|j, _, a| j == job && a < before);
        let entry = self.stopped.entry(job).or_insert(before);
        *entry = (*entry).max(before);
        while self.stopped.len() > STOPPED_JOBS_KEPT {
            self.stopped.pop_first();
        }
    }

    /// Drops every task of `job` (its leader left or was declared failed). Whether there was
    /// any. The attempts placed so far never run here again; a later one may: this node may
    /// have declared the leader failed falsely (a partition), and a leader that goes on starts a
    /// new attempt for every worker it loses, this node's own earlier id among them.
    pub(super) fn abandon(&mut self, job: JobId) -> bool {
        let Some(last) = self.hosted().filter(|(j, _, _)| *j == job).map(|(_, _, a)| a).max() else {
            return false;
        };
        self.stop(job, last.saturating_add(1));
        debug_assert!(!self.runs(job), "an abandoned job keeps no task here");
        true
    }

    /// The leader of `job`, if a task of it runs here.
    pub(super) fn leader_of(&self, job: JobId) -> Option<MemberId> {
        let first = self.hosted.range((job, TaskId { stage: 0, index: 0 })..).next();
        first.filter(|((j, _), _)| *j == job).map(|(_, h)| h.plan.leader)
    }

    /// The leader of `task` of `job` and the attempt it runs in, if it runs here.
    pub(super) fn leader_of_task(&self, job: JobId, task: TaskId) -> Option<(MemberId, Attempt)> {
        self.hosted.get(&(job, task)).map(|h| (h.plan.leader, h.attempt))
    }

    /// The oldest attempt of `job` running here.
    pub(super) fn oldest_attempt(&self, job: JobId) -> Option<Attempt> {
        self.hosted().filter(|(j, _, _)| *j == job).map(|(_, _, a)| a).min()
    }

    /// Whether any task of `job` runs here.
    pub(super) fn runs(&self, job: JobId) -> bool {
        self.leader_of(job).is_some()
    }

    pub(super) fn leaders(&self) -> BTreeMap<JobId, MemberId> {
        self.hosted.iter().map(|((j, _), h)| (*j, h.plan.leader)).collect()
    }

    pub(super) fn clear(&mut self) {
        self.forget(|_, _, _| true);
    }

    /// Whether `from` may send link messages from `task` to `to` of `attempt` of `job` here:
    /// the attempt's placement puts `task` on it (the sink is on the job's leader), or this node does not run `to` in that
    /// attempt (and the message changes nothing).
    pub(super) fn speaks_for(
        &self,
        job: JobId,
        attempt: Attempt,
        to: TaskId,
        task: TaskId,
        from: MemberId,
    ) -> bool {
        match self.hosted.get(&(job, to)) {
            // The sink (which acknowledges the last stage's batches) is the job's leader.
            Some(h) if h.attempt == attempt && task == SINK => h.plan.leader == from,
            Some(h) if h.attempt == attempt => h.placement.get(&task) == Some(&from),
            _ => true,
        }
    }

    /// A leader's `Control`; `go` is its go, with a source's `paced_ms`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn control(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        (job, attempt, task): (JobId, Attempt, TaskId),
        go: Option<u64>,
        trigger: CheckpointId,
        confirmed: CheckpointId,
        out: &mut Outbox,
    ) {
        let key = (job, task);
        let Some(h) = self.hosted.get_mut(&key) else { return };
        if h.attempt != attempt {
            return;
        }
        h.unconfirmed = h.unconfirmed.split_off(&(confirmed + 1));
        let startable = matches!(h.phase, Phase::Ready | Phase::Starting);
        if let (Some(paced_ms), false, true) = (go, h.go, startable) {
            h.go = true;
            if h.phase == Phase::Ready {
                h.phase = Phase::Running;
                h.next_status = now;
                out.event(RainstormEvent::TaskStarted { job, task, attempt, resumed: h.resumed });
            }
            if let Some(Runner::Source(s)) = &mut h.runner {
                s.go(now, paced_ms);
            }
        }
        if let Some(Runner::Source(s)) = &mut h.runner {
            if h.go && trigger > 0 {
                s.trigger(now, trigger);
            }
        }
        self.pump(now, key, cfg, out);
    }

    /// An operator program's answer to a [`ProgramCall`].
    pub(super) fn on_program(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        token: u64,
        result: Result<ProgramResult, String>,
        out: &mut Outbox,
    ) {
        let Some((job, task, attempt)) = self.programs.remove(&token) else { return };
        let key = (job, task);
        let Some(h) = self.hosted.get_mut(&key) else { return };
        if h.attempt != attempt {
            return;
        }
        if let Some(Runner::Op(t)) = &mut h.runner {
            t.on_applied(now, result);
        }
        self.pump(now, key, cfg, out);
    }

    /// A link message for one of the tasks here. A batch over `max_batch_tuples` fails the task.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn link(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        (job, attempt): (JobId, Attempt),
        from: TaskId,
        to: TaskId,
        msg: LinkMsg,
        out: &mut Outbox,
    ) -> Result<(), super::config::BatchError> {
        let key = (job, to);
        let Some(h) = self.hosted.get_mut(&key) else { return Ok(()) };
        if h.attempt != attempt {
            return Ok(());
        }
        if let LinkMsg::Batch { batch: super::message::Batch::Tuples(tuples), .. } = &msg {
            if let Err(e) = cfg.check_batch(tuples.len()) {
                h.fail(format!("refused a batch from {from}: {e}"), false);
                self.pump(now, key, cfg, out);
                return Err(e);
            }
        }
        match &mut h.runner {
            Some(Runner::Op(t)) => t.on_message(now, from, msg),
            Some(Runner::Source(s)) => s.on_message(now, from, msg),
            None => return Ok(()),
        }
        self.pump(now, key, cfg, out);
        Ok(())
    }

    pub(super) fn handle_timeout(&mut self, now: Time, cfg: &RainstormConfig, out: &mut Outbox) {
        let keys: Vec<(JobId, TaskId)> = self.hosted.keys().copied().collect();
        for key in keys {
            let Some(h) = self.hosted.get_mut(&key) else { continue };
            if let Some(r) = &mut h.runner {
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now);
                }
            }
            self.pump(now, key, cfg, out);
        }
    }

    /// An input part read by a source here.
    pub(super) fn on_hydfs(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        token: u64,
        result: Result<OpOutput, HydfsError>,
        out: &mut Outbox,
    ) {
        let Some((job, task, attempt, part)) = self.reads.remove(&token) else { return };
        let key = (job, task);
        let Some(h) = self.hosted.get_mut(&key) else { return };
        if h.attempt != attempt {
            return;
        }
        let bytes = match result {
            Ok(OpOutput::Part { bytes, .. }) => Ok(bytes),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        };
        if let Some(Runner::Source(s)) = &mut h.runner {
            s.on_part(now, part, bytes);
        }
        self.pump(now, key, cfg, out);
    }

    /// Drains a task's outputs: link messages, reads, program calls, snapshots, phase changes,
    /// and its status to the leader when due.
    fn pump(&mut self, now: Time, key: (JobId, TaskId), cfg: &RainstormConfig, out: &mut Outbox) {
        let Some(h) = self.hosted.get_mut(&key) else { return };
        let (job, task) = key;
        let leader = h.plan.leader.addr;
        while let Some(o) = h.runner.as_mut().and_then(Runner::poll_output) {
            match o {
                TaskOutput::Send { to, msg } => {
                    debug_assert!(
                        !matches!(h.phase, Phase::Failed { .. }),
                        "a failed task sends nothing (its runner is dropped)"
                    );
                    if let Some(member) =
                        h.placement.get(&to).or((to.stage == STAGES).then_some(&h.plan.leader))
                    {
                        let attempt = h.attempt;
                        out.send(member.addr, RainstormMsg::Link { job, attempt, from: task, to, msg });
                    }
                }
                TaskOutput::Read { part } => {
                    let Some(p) = h.manifest.as_ref().and_then(|m| m.parts.get(part)) else { continue };
                    let op = ClientOp::ReadPart {
                        name: h.plan.src.clone(),
                        stamp: p.stamp,
                        part: p.part,
                        prefer: None,
                    };
                    let token = out.hydfs(op);
                    self.reads.insert(token, (job, task, h.attempt, part));
                }
                TaskOutput::Apply { program, batch } => {
                    let call = ProgramCall {
                        token: 0,
                        job,
                        task,
                        attempt: h.attempt,
                        program,
                        header: h.plan.header.clone(),
                        batch,
                    };
                    let token = out.program(call);
                    self.programs.insert(token, (job, task, h.attempt));
                }
                TaskOutput::Ready => {
                    if h.phase == Phase::Starting {
                        h.phase = if h.go { Phase::Running } else { Phase::Ready };
                        h.next_status = now;
                        if h.go {
                            let (attempt, resumed) = (h.attempt, h.resumed);
                            out.event(RainstormEvent::TaskStarted { job, task, attempt, resumed });
                        }
                    }
                }
                TaskOutput::Snapshot { checkpoint, snapshot } => {
                    let attempt = h.attempt;
                    h.unconfirmed.insert(checkpoint, snapshot.clone());
                    out.send(leader, RainstormMsg::Snapshot { job, attempt, task, checkpoint, snapshot });
                }
                TaskOutput::Finished { last } => {
                    h.phase = Phase::Finished(last);
                    h.next_status = now;
                }
                TaskOutput::Failed { reason, transient } => h.fail(reason, transient),
                TaskOutput::SourceSent { first, last } => {
                    let attempt = h.attempt;
                    out.event(RainstormEvent::SourceSent { job, task, attempt, first, last });
                }
            }
        }
        if h.next_status <= now {
            h.next_status = now + cfg.status_interval;
            let counts = h.runner.as_ref().map_or_else(TupleCounts::default, Runner::counts);
            let phase = match &h.phase {
                Phase::Starting => TaskPhase::Starting,
                Phase::Ready => TaskPhase::Ready,
                Phase::Running => TaskPhase::Running,
                Phase::Finished(last) => TaskPhase::Finished { last: last.clone() },
                Phase::Failed { reason, transient } => {
                    TaskPhase::Failed { reason: reason.clone(), transient: *transient }
                }
            };
            let snapshots = h.unconfirmed.iter().map(|(c, s)| (*c, s.clone())).collect();
            let attempt = h.attempt;
            out.send(leader, RainstormMsg::Status { job, attempt, task, phase, counts, snapshots });
        }
    }
}

impl Hosted {
    fn batches_sent(&self) -> u64 {
        self.sent_before_failing + self.runner.as_ref().map_or(0, Runner::batches_sent)
    }

    fn fail(&mut self, reason: String, transient: bool) {
        if !matches!(self.phase, Phase::Failed { .. }) {
            self.phase = Phase::Failed { reason, transient };
            self.sent_before_failing = self.batches_sent();
            self.runner = None;
            self.next_status = Time::ZERO;
        }
    }
}

/// The task of `plan` a deploy names, resuming from `restore`.
fn build(
    cfg: &RainstormConfig,
    plan: &JobPlan,
    task: TaskId,
    restore: Restore,
    base: CheckpointId,
    manifest: Option<Manifest>,
) -> Result<Runner, String> {
    let downstream = plan.downstream(task);
    if task.stage == 0 {
        let manifest = manifest.ok_or("a source was deployed without the input's manifest")?;
        let layout = Layout::new(manifest).map_err(|e| format!("input `{}`: {e}", plan.src))?;
        let range = layout.ranges(plan.tasks)[task.index as usize];
        let input = SourceInput {
            file: plan.src.to_string(),
            layout,
            range,
            resume: restore.source.unwrap_or(SourceCheckpoint::Start),
            counts: restore.counts,
        };
        let next = (plan.operator(1)?, plan.routes[0]);
        let source = SourceTask::new(task, cfg, input, next, downstream, base, plan.rate_per_source);
        return Ok(Runner::Source(Box::new(source)));
    }
    let op = plan.operator(task.stage)?;
    if matches!(op, super::operator::StageOp::Program(_)) && !cfg.run_programs {
        return Err(super::config::PROGRAMS_REFUSED.to_owned());
    }
    let next = if task.stage + 1 < STAGES {
        Some((plan.operator(task.stage + 1)?, plan.routes[task.stage as usize]))
    } else {
        None
    };
    let state = restore.state.into_iter().collect();
    let t = Task::new(task, cfg, (op, next), &plan.upstream(task), downstream, (state, restore.counts));
    Ok(Runner::Op(Box::new(t)))
}
