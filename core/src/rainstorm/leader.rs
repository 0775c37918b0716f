//! The leader side: the jobs this node leads, their placement, restarts, completion, and the
//! sink that turns the last stage's batches into the destination file and the console stream.
//!
//! A job starts by reading its input (the header row names columns for the operators) and
//! creating its destination file, which must not exist. Each task is then placed on a live
//! member. When membership declares a member failed (or it leaves), each of its tasks gets a
//! new incarnation (epoch) on the least loaded live member; the new placement is pushed to
//! every task, and the new incarnation is assigned only once every live neighbour reports that
//! placement (fencing), so the old incarnation, even if it still runs, is ignored by everyone.
//!
//! Invariants kept here:
//! * an incarnation recovers from the newest journal position its predecessors reported after
//!   the leader said go to them: nothing an incarnation did before that go is ever relied on;
//! * the sink appends a batch's outputs to the destination with one never-abandoned write and
//!   acknowledges the batch, and reports its outputs, only once that write is acknowledged; its
//!   receivers drop batches they already took, so each output is appended and reported once;
//! * a job completes exactly when every last-stage task has finished (which means every one of
//!   its outputs was acknowledged by the sink);
//! * a job's counts reach the user as [`RainstormEvent::Progress`] at most once per status
//!   interval while it runs (not once per status report), only when they changed, and once more
//!   before it completes if they changed since.

use std::collections::{BTreeMap, BTreeSet};

use super::config::{BatchError, RainstormConfig};
use super::job::{
    Epoch, JobId, JobPlan, JobSpec, JournalPos, Placement, RainstormEvent, RainstormMsg, StageCounts,
    TaskPhase, SINK, STAGES,
};
use super::journal::{LinkSeq, TaskId, TupleCounts};
use super::link::{Arrival, LinkReceiver};
use super::reference::{build_pair, header_of};
use super::task::LinkMsg;
use super::tuple::{dest_line, source_lines, Tuple};
use super::Outbox;
use crate::hydfs::{ClientOp, HydfsError, OpOutput, WriteKind};
use crate::id::MemberId;
use crate::time::Time;

/// Bytes of output the sink appends to the destination in one write, at most (roughly).
const SINK_APPEND_BYTES: usize = 512 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// No live member to run it yet.
    Unplaced,
    /// Waiting for its neighbours to learn the new placement.
    Fencing {
        version: u64,
    },
    /// Assigned; waiting for the incarnation's first status.
    Assigned,
    /// Told to go (or recovering: it reported).
    Running,
    Finished,
    /// Its incarnation failed on a file operation; a new one is placed at this time.
    Backoff {
        until: Time,
    },
}

struct Slot {
    host: MemberId,
    epoch: Epoch,
    state: SlotState,
    /// The newest journal position of an incarnation that was told go.
    authority: Option<JournalPos>,
    /// The placement version the current incarnation reported.
    placement_known: u64,
    ended_known: u32,
    last: BTreeMap<TaskId, LinkSeq>,
    /// Until when an incarnation of this task may still act on a lease this leader granted.
    leased_until: Time,
    /// The latest counts the task reported (kept across a restart until the new incarnation
    /// reports its own, which go on from its journal).
    counts: TupleCounts,
}

/// A task's status report, as the leader reads it.
pub(super) struct Report {
    pub phase: TaskPhase,
    pub placement: u64,
    pub ended_known: u32,
    pub nonce: u64,
}

enum JobPhase {
    ReadingInput,
    CreatingDest,
    Running,
}

struct Sink {
    receivers: BTreeMap<TaskId, LinkReceiver<Vec<Tuple>>>,
    appending: Option<Vec<(TaskId, LinkSeq, Vec<Tuple>)>>,
    outputs: u64,
    /// Appends to the destination since the last merge that went through.
    appends_since_merge: u32,
    /// A merge of the destination is running; it covers this many of those appends.
    merging: Option<u32>,
}

pub(super) struct LeaderJob {
    spec: JobSpec,
    plan: JobPlan,
    phase: JobPhase,
    slots: BTreeMap<TaskId, Slot>,
    placement: Placement,
    sink: Sink,
    restarts: u32,
    failures: u32,
    next_resend: Time,
    /// When a fenced task's predecessor lease runs out next.
    wake: Option<Time>,
    /// Lines in the input (0 until it is read).
    input_lines: u64,
    /// The counts last reported to the user as [`RainstormEvent::Progress`].
    reported: Option<JobCounts>,
}

/// A job's counts as [`RainstormEvent::Progress`] carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
struct JobCounts {
    input_lines: u64,
    stages: Vec<StageCounts>,
}

#[derive(Default)]
pub(super) struct Leader {
    jobs: BTreeMap<JobId, LeaderJob>,
    /// Jobs that ended (completed or failed): their tasks are told to stop.
    ended: BTreeSet<JobId>,
    next_job: u32,
    ios: BTreeMap<u64, (JobId, LeaderIo)>,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum LeaderIo {
    Input,
    Dest,
    SinkAppend,
    SinkMerge,
}

impl Leader {
    pub(super) fn owns(&self, token: u64) -> bool {
        self.ios.contains_key(&token)
    }

    pub(super) fn jobs(&self) -> impl Iterator<Item = JobId> + '_ {
        self.jobs.keys().copied()
    }

    /// One line per task of each job this node leads: where it runs and what the leader knows.
    pub(super) fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (job, j) in &self.jobs {
            lines.push(format!("job {job}: {} (placement v{})", j.spec, j.placement.version));
            for (task, s) in &j.slots {
                lines.push(format!(
                    "  {task} e{} on {}: {:?}, knows placement v{}, ended {}, authority {:?}",
                    s.epoch, s.host, s.state, s.placement_known, s.ended_known, s.authority
                ));
            }
            for (from, r) in &j.sink.receivers {
                lines.push(format!("  sink from {from}: delivered {}, held {}", r.delivered(), r.held()));
            }
        }
        lines
    }

    pub(super) fn poll_timeout(&self) -> Option<Time> {
        let backoffs = self.jobs.values().flat_map(|j| j.slots.values()).filter_map(|s| match s.state {
            SlotState::Backoff { until } => Some(until),
            _ => None,
        });
        let backoffs = backoffs.chain(self.jobs.values().filter_map(|j| j.wake));
        self.jobs.values().map(|j| j.next_resend).chain(backoffs).min()
    }

    /// Accepts a job: reads its input first.
    pub(super) fn start(
        &mut self,
        now: Time,
        me: MemberId,
        cfg: &RainstormConfig,
        spec: JobSpec,
        out: &mut Outbox,
    ) -> JobId {
        self.next_job += 1;
        let job = JobId::new(me, self.next_job);
        let plan = JobPlan {
            job,
            leader: me,
            ops: [spec.op1.to_string(), spec.op2.to_string()],
            src: spec.src.clone(),
            dest: spec.dest.clone(),
            tasks: spec.tasks,
            batch_lines: cfg.batch_lines,
            header: None,
        };
        out.event(RainstormEvent::JobReceived { job, spec: spec.to_string() });
        let token = out.hydfs(ClientOp::GetLatest { name: spec.src.clone() });
        self.ios.insert(token, (job, LeaderIo::Input));
        let sink = Sink {
            receivers: BTreeMap::new(),
            appending: None,
            outputs: 0,
            appends_since_merge: 0,
            merging: None,
        };
        self.jobs.insert(
            job,
            LeaderJob {
                spec,
                plan,
                phase: JobPhase::ReadingInput,
                slots: BTreeMap::new(),
                placement: Placement::default(),
                sink,
                restarts: 0,
                failures: 0,
                next_resend: now + cfg.status_interval,
                wake: None,
                input_lines: 0,
                reported: None,
            },
        );
        job
    }

    pub(super) fn on_hydfs(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        members: &[MemberId],
        token: u64,
        result: Result<OpOutput, HydfsError>,
        out: &mut Outbox,
    ) {
        let Some((job, io)) = self.ios.remove(&token) else { return };
        let Some(j) = self.jobs.get_mut(&job) else { return };
        match (io, result) {
            (LeaderIo::Input, Ok(OpOutput::Content { bytes, .. })) => {
                let header = header_of(&bytes);
                if let Err(e) = build_pair(&j.spec.op1, &j.spec.op2, header.as_deref()) {
                    let why = format!("{e} (input `{}`)", j.spec.src);
                    return self.fail(job, why, out);
                }
                j.plan.header = header;
                j.input_lines = source_lines(&bytes).count() as u64;
                j.phase = JobPhase::CreatingDest;
                let op = ClientOp::Persist {
                    name: j.spec.dest.clone(),
                    kind: WriteKind::Create,
                    data: Vec::new(),
                };
                let token = out.hydfs(op);
                self.ios.insert(token, (job, LeaderIo::Dest));
            }
            (LeaderIo::Dest, Ok(_)) => {
                j.phase = JobPhase::Running;
                j.place_all(now, cfg, members, out);
            }
            (LeaderIo::SinkAppend, Ok(_)) => {
                let batches = j.sink.appending.take().unwrap_or_default();
                for (from, seq, tuples) in batches {
                    let upto = j.sink.receivers.get_mut(&from).map_or(0, |r| r.commit(seq));
                    j.ack(from, upto, out);
                    j.sink.outputs += tuples.len() as u64;
                    for tuple in tuples {
                        out.event(RainstormEvent::Output { job, tuple });
                    }
                }
                j.sink.appends_since_merge = j.sink.appends_since_merge.saturating_add(1);
                j.merge_output(cfg, out, &mut self.ios);
                j.step_sink(out, &mut self.ios);
                self.check_done(job, out);
            }
            (LeaderIo::SinkMerge, result) => {
                // A failed merge is tried again after the next append.
                let covered = j.sink.merging.take().unwrap_or(0);
                if result.is_ok() {
                    j.sink.appends_since_merge = j.sink.appends_since_merge.saturating_sub(covered);
                }
            }
            (io, Ok(other)) => self.fail(job, format!("unexpected answer to {io:?}: {other:?}"), out),
            (LeaderIo::Input, Err(e)) => self.fail(job, format!("cannot read the input: {e}"), out),
            (LeaderIo::Dest, Err(HydfsError::AlreadyExists(name))) => {
                self.fail(job, format!("the destination `{name}` already exists (choose a new name)"), out)
            }
            (LeaderIo::Dest, Err(e)) => self.fail(job, format!("cannot create the destination: {e}"), out),
            (LeaderIo::SinkAppend, Err(e)) => {
                self.fail(job, format!("cannot append to the destination: {e}"), out)
            }
        }
    }

    /// A worker's status report.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_status(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        members: &[MemberId],
        from: crate::id::NodeAddr,
        (job, task, epoch): (JobId, TaskId, Epoch),
        report: Report,
        out: &mut Outbox,
    ) {
        let Report { phase, placement, ended_known, nonce } = report;
        let Some(j) = self.jobs.get_mut(&job) else {
            out.send(from, RainstormMsg::Stop { job, task: None });
            return;
        };
        let Some(slot) = j.slots.get_mut(&task) else { return };
        if slot.epoch != epoch || slot.host.addr != from {
            out.send(from, RainstormMsg::Stop { job, task: Some((task, epoch)) });
            return;
        }
        slot.placement_known = slot.placement_known.max(placement);
        slot.ended_known = ended_known;
        let mut failed = None;
        let mut newly_finished = false;
        match phase {
            TaskPhase::Recovering => {}
            TaskPhase::Ready => {
                slot.authority = slot.authority.max(Some(JournalPos { epoch, generation: 0 }));
                if slot.state != SlotState::Finished {
                    slot.state = SlotState::Running;
                }
            }
            TaskPhase::Running { generation, counts } => {
                slot.counts = counts;
                slot.authority = slot.authority.max(Some(JournalPos { epoch, generation }));
                if slot.state != SlotState::Finished {
                    slot.state = SlotState::Running;
                }
            }
            TaskPhase::Finished { generation, last, counts } => {
                slot.counts = counts;
                slot.authority = slot.authority.max(Some(JournalPos { epoch, generation }));
                if slot.state != SlotState::Finished {
                    slot.state = SlotState::Finished;
                    slot.last = last.into_iter().collect();
                    newly_finished = true;
                    out.event(RainstormEvent::TaskCompleted { job, task });
                }
            }
            TaskPhase::Failed { reason, transient } => failed = Some((reason, transient)),
        }
        if let Some((reason, transient)) = failed {
            if matches!(slot.state, SlotState::Backoff { .. }) {
                return;
            }
            out.event(RainstormEvent::TaskFailed { job, task, epoch, reason: reason.clone() });
            if transient {
                // The cluster is in flux (a file unreachable for now): try again a little
                // later, without counting it against the job.
                slot.state = SlotState::Backoff { until: now + cfg.retry };
                return;
            }
            j.failures += 1;
            if j.failures > cfg.max_task_failures {
                let why = format!("task {task} failed {} times; last: {reason}", j.failures);
                return self.fail(job, why, out);
            }
            j.replace(now, cfg, task, members, out);
            return;
        }
        let mut reply = j.control(task);
        if let RainstormMsg::Control { nonce: n, .. } = &mut reply {
            *n = nonce;
        }
        if let Some(slot) = j.slots.get_mut(&task) {
            slot.leased_until = slot.leased_until.max(now + cfg.lease);
        }
        out.send(from, reply);
        if newly_finished {
            // The tasks it fed learn now, not at their next status report, that it has ended
            // (a push: it grants no lease).
            let running: Vec<(TaskId, crate::id::NodeAddr)> = j
                .slots
                .iter()
                .filter(|(d, s)| d.stage == task.stage + 1 && s.state == SlotState::Running)
                .map(|(d, s)| (*d, s.host.addr))
                .collect();
            for (d, addr) in running {
                out.send(addr, j.control(d));
            }
        }
        j.fence(now, out);
        self.check_done(job, out);
    }

    /// A batch or acknowledgement addressed to a job's sink.
    /// A batch over `max_batch_tuples` fails the job.
    pub(super) fn on_link(
        &mut self,
        job: JobId,
        from: (TaskId, Epoch),
        msg: LinkMsg,
        cfg: &RainstormConfig,
        out: &mut Outbox,
    ) -> Result<(), BatchError> {
        let Some(j) = self.jobs.get_mut(&job) else { return Ok(()) };
        if j.placement.tasks.get(&from.0).map(|p| p.1) != Some(from.1) {
            return Ok(());
        }
        let LinkMsg::Batch { seq, tuples } = msg else { return Ok(()) };
        if let Err(e) = cfg.check_batch(tuples.len()) {
            self.fail(job, format!("its destination refused a batch from task {}: {e}", from.0), out);
            return Err(e);
        }
        let Some(r) = j.sink.receivers.get_mut(&from.0) else { return Ok(()) };
        if let Arrival::Duplicate { ack } = r.arrive(seq, tuples) {
            j.ack(from.0, ack, out);
        }
        j.step_sink(out, &mut self.ios);
        Ok(())
    }

    /// Membership declared `member` failed, or it left: its tasks move.
    pub(super) fn on_member_gone(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        member: MemberId,
        members: &[MemberId],
        out: &mut Outbox,
    ) {
        for j in self.jobs.values_mut() {
            j.replace_where(now, cfg, members, out, |s| s.host == member);
        }
    }

    /// Membership changed: tasks waiting for a member get one.
    pub(super) fn on_members(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        members: &[MemberId],
        out: &mut Outbox,
    ) {
        for j in self.jobs.values_mut() {
            j.replace_where(now, cfg, members, out, |s| s.state == SlotState::Unplaced);
        }
    }

    pub(super) fn handle_timeout(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        members: &[MemberId],
        out: &mut Outbox,
    ) {
        for j in self.jobs.values_mut() {
            j.replace_where(
                now,
                cfg,
                members,
                out,
                |s| matches!(s.state, SlotState::Backoff { until } if until <= now),
            );
            j.fence(now, out);
            // Wake up when the next predecessor's lease runs out (later checks ride on the
            // status interval).
            j.wake = j
                .slots
                .values()
                .filter(|s| matches!(s.state, SlotState::Fencing { .. }) && s.leased_until > now)
                .map(|s| s.leased_until)
                .min();
            if j.next_resend > now {
                continue;
            }
            j.next_resend = now + cfg.status_interval;
            j.report_progress(out);
            for (task, slot) in &j.slots {
                match slot.state {
                    SlotState::Assigned => out.send(slot.host.addr, j.assign_msg(*task)),
                    SlotState::Running | SlotState::Finished
                        if slot.placement_known < j.placement.version =>
                    {
                        out.send(slot.host.addr, j.control(*task))
                    }
                    _ => {}
                }
            }
        }
    }

    /// This node stopped being a member: every job it leads ends here.
    pub(super) fn lose_all(&mut self, reason: &str, out: &mut Outbox) {
        let jobs: Vec<JobId> = std::mem::take(&mut self.jobs).into_keys().collect();
        for job in jobs {
            self.ended.insert(job);
            out.event(RainstormEvent::JobLost { job, reason: reason.to_owned() });
        }
    }

    fn fail(&mut self, job: JobId, reason: String, out: &mut Outbox) {
        if let Some(j) = self.jobs.remove(&job) {
            j.stop_all(out);
            self.ended.insert(job);
            out.event(RainstormEvent::JobFailed { job, reason });
        }
    }

    fn check_done(&mut self, job: JobId, out: &mut Outbox) {
        let Some(j) = self.jobs.get(&job) else { return };
        let last = STAGES - 1;
        let done = matches!(j.phase, JobPhase::Running)
            && j.sink.appending.is_none()
            && j.slots.iter().filter(|(t, _)| t.stage == last).all(|(_, s)| s.state == SlotState::Finished);
        if done {
            let mut j = self.jobs.remove(&job).expect("present");
            j.report_progress(out);
            j.stop_all(out);
            self.ended.insert(job);
            out.event(RainstormEvent::JobCompleted { job, outputs: j.sink.outputs, restarts: j.restarts });
        }
    }
}

impl LeaderJob {
    /// Places every task, spread over the members (the leader itself only if it is alone).
    fn place_all(&mut self, now: Time, cfg: &RainstormConfig, members: &[MemberId], out: &mut Outbox) {
        let hosts = eligible(self.plan.leader, members);
        self.placement.version = 1;
        self.placement.tasks.insert(SINK, (self.plan.leader, 0));
        for (i, task) in self.plan.all_tasks().enumerate() {
            let (host, state) = match hosts.get(i % hosts.len().max(1)) {
                Some(h) => (*h, SlotState::Assigned),
                None => (self.plan.leader, SlotState::Unplaced),
            };
            self.placement.tasks.insert(task, (host, 1));
            let slot = Slot {
                host,
                epoch: 1,
                state,
                authority: None,
                placement_known: 0,
                ended_known: 0,
                last: BTreeMap::new(),
                leased_until: Time::ZERO,
                counts: TupleCounts::default(),
            };
            self.slots.insert(task, slot);
            if task.stage == STAGES - 1 {
                self.sink.receivers.insert(task, LinkReceiver::new(0, cfg.window));
            }
        }
        for (task, slot) in &self.slots {
            if slot.state == SlotState::Assigned {
                out.event(RainstormEvent::TaskScheduled {
                    job: self.plan.job,
                    task: *task,
                    epoch: slot.epoch,
                    host: slot.host,
                    restart: false,
                });
                out.send(slot.host.addr, self.assign_msg(*task));
            }
        }
        self.next_resend = now + cfg.status_interval;
    }

    /// Gives every task whose slot matches `pick` a new incarnation.
    fn replace_where(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        members: &[MemberId],
        out: &mut Outbox,
        pick: impl Fn(&Slot) -> bool,
    ) {
        let tasks: Vec<TaskId> = self.slots.iter().filter(|(_, s)| pick(s)).map(|(t, _)| *t).collect();
        for task in tasks {
            self.replace(now, cfg, task, members, out);
        }
    }

    /// Gives `task` a new incarnation on the least loaded live member.
    fn replace(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        task: TaskId,
        members: &[MemberId],
        out: &mut Outbox,
    ) {
        let hosts = eligible(self.plan.leader, members);
        let load = |m: &MemberId| self.slots.values().filter(|s| s.host == *m).count();
        let Some(host) = hosts.iter().min_by_key(|m| (load(m), **m)).copied() else {
            if let Some(slot) = self.slots.get_mut(&task) {
                slot.state = SlotState::Unplaced;
            }
            return;
        };
        let Some(slot) = self.slots.get_mut(&task) else { return };
        self.restarts += 1;
        self.placement.version += 1;
        slot.host = host;
        slot.epoch += 1;
        slot.state = SlotState::Fencing { version: self.placement.version };
        slot.placement_known = 0;
        slot.ended_known = 0;
        self.placement.tasks.insert(task, (host, slot.epoch));
        out.event(RainstormEvent::TaskScheduled {
            job: self.plan.job,
            task,
            epoch: slot.epoch,
            host,
            restart: true,
        });
        // Everyone learns the new placement now; the new incarnation starts once its
        // neighbours have it.
        for (t, s) in &self.slots {
            if matches!(s.state, SlotState::Running | SlotState::Finished | SlotState::Assigned) {
                out.send(s.host.addr, self.control(*t));
            }
        }
        self.fence(now, out);
        if matches!(self.slots[&task].state, SlotState::Fencing { .. }) {
            let until = self.slots[&task].leased_until;
            self.wake = Some(self.wake.map_or(until, |w| w.min(until)));
        }
        let _ = cfg;
    }

    /// Assigns every fenced incarnation whose predecessor's lease has run out and whose live
    /// neighbours all know its placement.
    fn fence(&mut self, now: Time, out: &mut Outbox) {
        let ready: Vec<TaskId> = self
            .slots
            .iter()
            .filter_map(|(t, s)| match s.state {
                SlotState::Fencing { version } if s.leased_until <= now => Some((*t, version)),
                _ => None,
            })
            .filter(|(t, version)| {
                self.slots.iter().filter(|(n, _)| n.stage.abs_diff(t.stage) == 1).all(|(_, n)| {
                    match n.state {
                        SlotState::Unplaced | SlotState::Fencing { .. } | SlotState::Backoff { .. } => true,
                        SlotState::Assigned | SlotState::Running | SlotState::Finished => {
                            n.placement_known >= *version
                        }
                    }
                })
            })
            .map(|(t, _)| t)
            .collect();
        for task in ready {
            let slot = self.slots.get_mut(&task).expect("present");
            slot.state = SlotState::Assigned;
            let host = slot.host.addr;
            out.send(host, self.assign_msg(task));
        }
    }

    fn assign_msg(&self, task: TaskId) -> RainstormMsg {
        let slot = &self.slots[&task];
        RainstormMsg::Assign {
            plan: Box::new(self.plan.clone()),
            task,
            epoch: slot.epoch,
            host: slot.host,
            placement: self.placement.clone(),
            recover: slot.authority,
        }
    }

    /// What the leader tells a task's current incarnation.
    fn control(&self, task: TaskId) -> RainstormMsg {
        let slot = &self.slots[&task];
        let ended: Vec<(TaskId, LinkSeq)> = if task.stage == 0 {
            Vec::new()
        } else {
            self.slots
                .iter()
                .filter(|(u, s)| u.stage + 1 == task.stage && s.state == SlotState::Finished)
                .map(|(u, s)| (*u, s.last.get(&task).copied().unwrap_or(0)))
                .collect()
        };
        RainstormMsg::Control {
            job: self.plan.job,
            task,
            epoch: slot.epoch,
            go: matches!(slot.state, SlotState::Running | SlotState::Finished),
            placement: (slot.placement_known < self.placement.version).then(|| self.placement.clone()),
            ended: if (slot.ended_known as usize) < ended.len() { ended } else { Vec::new() },
            nonce: 0,
        }
    }

    fn ack(&self, from: TaskId, upto: LinkSeq, out: &mut Outbox) {
        if let Some((member, epoch)) = self.placement.tasks.get(&from) {
            out.send(
                member.addr,
                RainstormMsg::Link {
                    job: self.plan.job,
                    from: (SINK, 0),
                    to: (from, *epoch),
                    msg: LinkMsg::Ack { upto },
                },
            );
        }
    }

    /// Appends every batch ready at the sink, in one write, if none is in flight.
    /// Merges the destination once `merge_output_appends` appends are pending since the last
    /// merge (one merge at a time), so that its pending appends stay far below a server's
    /// `max_pending_appends`. Merging changes no byte: the leader is the file's only writer.
    fn merge_output(
        &mut self,
        cfg: &RainstormConfig,
        out: &mut Outbox,
        ios: &mut BTreeMap<u64, (JobId, LeaderIo)>,
    ) {
        let every = cfg.merge_output_appends;
        if every == 0 || self.sink.merging.is_some() || self.sink.appends_since_merge < every {
            return;
        }
        self.sink.merging = Some(self.sink.appends_since_merge);
        let token = out.hydfs(ClientOp::Merge { name: self.plan.dest.clone() });
        ios.insert(token, (self.plan.job, LeaderIo::SinkMerge));
    }

    fn step_sink(&mut self, out: &mut Outbox, ios: &mut BTreeMap<u64, (JobId, LeaderIo)>) {
        if self.sink.appending.is_some() {
            return;
        }
        let mut batches = Vec::new();
        let mut data = Vec::new();
        'fill: loop {
            let mut took = false;
            for (from, r) in &mut self.sink.receivers {
                if data.len() >= SINK_APPEND_BYTES {
                    break 'fill;
                }
                if let Some((seq, tuples)) = r.next_ready() {
                    for t in &tuples {
                        data.extend_from_slice(dest_line(t).as_bytes());
                    }
                    batches.push((*from, seq, tuples));
                    took = true;
                }
            }
            if !took {
                break;
            }
        }
        if batches.is_empty() {
            return;
        }
        if data.is_empty() {
            // Empty batches need no write.
            for (from, seq, _) in batches {
                let upto = self.sink.receivers.get_mut(&from).map_or(0, |r| r.commit(seq));
                self.ack(from, upto, out);
            }
            return self.step_sink(out, ios);
        }
        self.sink.appending = Some(batches);
        let token =
            out.hydfs(ClientOp::Persist { name: self.plan.dest.clone(), kind: WriteKind::Append, data });
        ios.insert(token, (self.plan.job, LeaderIo::SinkAppend));
    }

    /// Per stage, the sum of its tasks' latest counts.
    fn stage_counts(&self) -> Vec<StageCounts> {
        (0..STAGES)
            .map(|stage| {
                let tasks = self.slots.iter().filter(|(t, _)| t.stage == stage);
                let sum = tasks
                    .fold(TupleCounts::default(), |sum, (_, s)| sum.add(s.counts.consumed, s.counts.emitted));
                StageCounts { stage, consumed: sum.consumed, emitted: sum.emitted }
            })
            .collect()
    }

    /// Tells the user the job's counts if they changed since it last did (the caller sees to
    /// how often).
    fn report_progress(&mut self, out: &mut Outbox) {
        if !matches!(self.phase, JobPhase::Running) {
            return;
        }
        let counts = JobCounts { input_lines: self.input_lines, stages: self.stage_counts() };
        if self.reported.as_ref() == Some(&counts) {
            return;
        }
        out.event(RainstormEvent::Progress {
            job: self.plan.job,
            input_lines: counts.input_lines,
            stages: counts.stages.clone(),
        });
        self.reported = Some(counts);
    }

    fn stop_all(&self, out: &mut Outbox) {
        let hosts: BTreeSet<MemberId> = self.slots.values().map(|s| s.host).collect();
        for h in hosts {
            out.send(h.addr, RainstormMsg::Stop { job: self.plan.job, task: None });
        }
    }
}

/// Members that may run tasks: everyone but the leader, unless the leader is alone.
fn eligible(leader: MemberId, members: &[MemberId]) -> Vec<MemberId> {
    let others: Vec<MemberId> = members.iter().copied().filter(|m| *m != leader).collect();
    if others.is_empty() && members.contains(&leader) {
        vec![leader]
    } else {
        others
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hydfs::FileName;
    use crate::rainstorm::operator::OperatorSpec;
    use crate::time::Millis;

    fn member(port: u16) -> MemberId {
        MemberId { addr: format!("10.0.0.1:{port}").parse().expect("address"), join_time: 1 }
    }

    fn content(bytes: &[u8]) -> Result<OpOutput, HydfsError> {
        let name = FileName::new("in.csv").expect("name");
        Ok(OpOutput::Content { name, bytes: bytes.to_vec(), writes: Vec::new(), from: None })
    }

    /// A leader whose job (one task per stage, over a 5-line input) has placed its tasks.
    fn running(cfg: &RainstormConfig) -> (Leader, JobId, Vec<MemberId>, Outbox) {
        let members = vec![member(1), member(2), member(3)];
        let (mut leader, mut out) = (Leader::default(), Outbox::default());
        let spec = JobSpec {
            op1: OperatorSpec::parse("grep:a").expect("spec"),
            op2: OperatorSpec::parse("split").expect("spec"),
            src: FileName::new("in.csv").expect("name"),
            dest: FileName::new("out").expect("name"),
            tasks: 1,
        };
        let job = leader.start(Time(0), members[0], cfg, spec, &mut out);
        let (input, _) = out.hydfs.pop_front().expect("reads the input");
        leader.on_hydfs(Time(0), cfg, &members, input, content(b"a\nb\na b\nc\nd\n"), &mut out);
        let (dest, _) = out.hydfs.pop_front().expect("creates the destination");
        leader.on_hydfs(Time(0), cfg, &members, dest, content(b""), &mut out);
        (leader, job, members, out)
    }

    fn status(
        leader: &mut Leader,
        (cfg, members, out): (&RainstormConfig, &[MemberId], &mut Outbox),
        now: u64,
        (job, task): (JobId, TaskId),
        phase: TaskPhase,
    ) {
        let host = leader.jobs[&job].slots[&task].host.addr;
        let report = Report { phase, placement: 1, ended_known: 0, nonce: now };
        leader.on_status(Time(now), cfg, members, host, (job, task, 1), report, out);
    }

    /// The `Progress` events out so far (other events are dropped), with when they came.
    fn progress(out: &mut Outbox, now: u64, seen: &mut Vec<(u64, u64, Vec<StageCounts>)>) {
        for e in out.events.drain(..) {
            if let RainstormEvent::Progress { input_lines, stages, .. } = e {
                seen.push((now, input_lines, stages));
            }
        }
    }

    fn counts(consumed: u64, emitted: u64) -> TupleCounts {
        TupleCounts { consumed, emitted }
    }

    #[test]
    fn progress_is_reported_at_most_once_per_status_interval_and_only_when_it_changed() {
        let cfg = RainstormConfig { status_interval: Millis(500), ..RainstormConfig::default() };
        let (mut leader, job, members, mut out) = running(&cfg);
        let (source, op1, op2) =
            (TaskId { stage: 0, index: 0 }, TaskId { stage: 1, index: 0 }, TaskId { stage: 2, index: 0 });
        let mut seen = Vec::new();
        progress(&mut out, 0, &mut seen);
        assert!(seen.is_empty(), "nothing before the first interval");
        // Status reports every 10 ms, each with new counts, and a timer at each.
        for now in (10..=1_490).step_by(10) {
            let n = now / 10;
            let ctx = (&cfg, members.as_slice(), &mut out);
            let running = TaskPhase::Running { generation: 0, counts: counts(n.min(5), n.min(5)) };
            status(&mut leader, ctx, now, (job, source), running);
            let ctx = (&cfg, members.as_slice(), &mut out);
            status(
                &mut leader,
                ctx,
                now,
                (job, op1),
                TaskPhase::Running { generation: 0, counts: counts(n, n / 2) },
            );
            leader.handle_timeout(Time(now), &cfg, &members, &mut out);
            progress(&mut out, now, &mut seen);
        }
        let times: Vec<u64> = seen.iter().map(|(t, _, _)| *t).collect();
        assert_eq!(times, [500, 1_000], "once per interval, not once per report");
        let stage = |stage, consumed, emitted| StageCounts { stage, consumed, emitted };
        assert_eq!(seen[0].1, 5, "the input's line count");
        assert_eq!(seen[0].2, [stage(0, 5, 5), stage(1, 50, 25), stage(2, 0, 0)], "the latest counts");
        assert_eq!(seen[1].2, [stage(0, 5, 5), stage(1, 100, 50), stage(2, 0, 0)]);
        // Nothing changes: nothing more is reported, however many intervals pass.
        seen.clear();
        for now in (1_500..=4_000).step_by(100) {
            leader.handle_timeout(Time(now), &cfg, &members, &mut out);
            progress(&mut out, now, &mut seen);
        }
        let times: Vec<u64> = seen.iter().map(|(t, _, _)| *t).collect();
        assert_eq!(times, [1_500], "the counts at 1 490 ms, then silence");
        // The last stage finishing completes the job: its final counts come first.
        seen.clear();
        let ctx = (&cfg, members.as_slice(), &mut out);
        let last = vec![(SINK, 0)];
        status(
            &mut leader,
            ctx,
            4_010,
            (job, op2),
            TaskPhase::Finished { generation: 0, last, counts: counts(7, 7) },
        );
        let events: Vec<RainstormEvent> = out.events.drain(..).collect();
        let at = |f: fn(&RainstormEvent) -> bool| events.iter().position(f).expect("present");
        let (p, done) = (
            at(|e| matches!(e, RainstormEvent::Progress { .. })),
            at(|e| matches!(e, RainstormEvent::JobCompleted { .. })),
        );
        assert!(p < done, "{events:?}");
        let RainstormEvent::Progress { stages, .. } = &events[p] else { unreachable!() };
        assert_eq!(stages[2], stage(2, 7, 7));
    }

    #[test]
    fn the_destination_is_merged_every_few_appends_and_an_oversized_batch_fails_the_job() {
        use crate::hydfs::{MergeSummary, Stamp};
        let cfg =
            RainstormConfig { merge_output_appends: 2, max_batch_tuples: 3, ..RainstormConfig::default() };
        let (mut leader, job, members, mut out) = running(&cfg);
        out.hydfs.clear();
        let last = (TaskId { stage: 2, index: 0 }, 1);
        let dest = FileName::new("out").expect("name");
        let batch = |seq: u64, n: u64| LinkMsg::Batch {
            seq,
            tuples: (0..n).map(|i| Tuple::source("in.csv", seq * 10 + i, "x")).collect(),
        };
        let (mut appends, mut merges) = (0, 0);
        for seq in 1..=5 {
            leader.on_link(job, last, batch(seq, 3), &cfg, &mut out).expect("within the limit");
            while let Some((token, op)) = out.hydfs.pop_front() {
                let answer = match op {
                    ClientOp::Persist { .. } => {
                        appends += 1;
                        let stamp = Stamp { ts: seq, client: member(1), seq };
                        OpOutput::Written { name: dest.clone(), stamp, replicas: Vec::new() }
                    }
                    ClientOp::Merge { .. } => {
                        merges += 1;
                        let summary = MergeSummary { appended: 2, replicas: Vec::new(), bytes_moved: 0 };
                        OpOutput::Merged { name: dest.clone(), summary }
                    }
                    other => panic!("unexpected {other:?}"),
                };
                leader.on_hydfs(Time(seq), &cfg, &members, token, Ok(answer), &mut out);
            }
        }
        assert_eq!((appends, merges), (5, 2), "a merge after every second append");
        assert_eq!(leader.jobs[&job].sink.appends_since_merge, 1);
        // A batch over the limit is refused, and the job fails saying why.
        let e = leader.on_link(job, last, batch(6, 4), &cfg, &mut out).unwrap_err();
        assert_eq!(e, BatchError::TooManyTuples { tuples: 4, limit: 3 });
        let reason = out
            .events
            .iter()
            .find_map(|e| match e {
                RainstormEvent::JobFailed { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .expect("the job failed");
        assert!(reason.contains("4 tuples is over the 3-tuple limit (max_batch_tuples)"), "{reason}");
    }
}
