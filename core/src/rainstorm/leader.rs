//! The leader side: the jobs this node leads, their placement, checkpoints, rollbacks, commits
//! and completion.
//!
//! A job starts by reading its input's metadata (the parts and their line counts, and which
//! nodes hold it) and its header line, then creates its destination (which must not exist) and
//! its checkpoint log. Its tasks are placed on live members, sources on replicas of the input
//! where possible and each task chained to its upstream partner when the route is `Forward`;
//! every task of the attempt is deployed, and once all are ready the leader lets them go.
//!
//! Every `checkpoint_interval` the leader starts a checkpoint (unless `max_pending_checkpoints`
//! are open, or a complete epoch already waits behind the commit in flight: then the next one
//! starts when that clears, so checkpoints follow the commits' pace; an open epoch over a
//! quarter of `sink_buffer_bytes` starts one at once all the same): the sources emit its
//! barrier, the tasks snapshot as it passes, the sink closes the epoch before it. Checkpoint `c` is complete
//! when the sink closed epoch `c` and every task reported its snapshot of `c` (or finished
//! before seeing it); the leader then folds the snapshots into the job's restore point and
//! commits the epoch (see [`commit`](super::commit)). When a worker running a task is declared
//! failed (or leaves), or a task fails, the job rolls back: a new attempt is deployed from the
//! last complete checkpoint, with the failed worker's tasks placed elsewhere; every epoch after
//! that checkpoint is dropped and produced again.
//!
//! When a job's leader leaves the group, its successor takes the job over (see
//! [`takeover`](super::takeover)): it seals the destination, resumes from the newest log record
//! the destination holds, and places every task again under the first attempt of its term. A
//! leader whose commit meets a seal was deposed: it drops the job without a word to the
//! workers and without deleting anything, since the job goes on under its successor (unless
//! the member that sealed is gone too: then it takes the job back, as a successor would).
//!
//! Invariants kept here:
//! * checkpoints complete in order, and only with every task's snapshot and the sink's epoch;
//! * an epoch is committed only after its checkpoint is complete, each once;
//! * a rollback resumes from the newest complete checkpoint, and everything of the attempt it
//!   ends (snapshots, epochs not complete, link batches) is dropped;
//! * a sink whose open epoch is full while no barrier is on its way takes nothing more (its
//!   outputs stay within `sink_buffer_bytes` plus what precedes a coming barrier);
//! * a job completes exactly when its last epoch is committed (every output is in its
//!   destination); its own files are deleted then;
//! * a job's counts reach the user as [`RainstormEvent::Progress`] at most once per status
//!   interval while it runs, only when they changed, and once more before it completes if they
//!   changed since.

use std::collections::{BTreeMap, BTreeSet};

use super::checkpoint::{encode, encode_manifest, JobInfo, LogState, Record};
use super::commit::{CommitIo, Commits, ReadyEpoch, Step};
use super::config::{BatchError, PlantedBug, RainstormConfig};
use super::csv::split_record;
use super::directory::{JobNotice, JobState};
use super::input::{Layout, Manifest};
use super::job::{
    first_attempt, lines_read, term_of, Attempt, CheckpointId, JobId, JobPlan, JobSpec, Placement,
    RainstormEvent, Route, StageCounts, TaskId, Term, TupleCounts, SINK, STAGES,
};
use super::message::{LinkMsg, RainstormMsg, Restore, Snapshot, SourceCheckpoint, TaskPhase};
use super::reference::build_pair;
use super::sink::{Sink, SinkEvent};
use super::takeover::{Next, Resumed, Takeover};
use super::Outbox;
use crate::histogram::LatencyHistogram;
use crate::hydfs::{ClientOp, HydfsError, OpOutput, WriteKind};
use crate::id::{MemberId, NodeAddr};
use crate::time::Time;

/// The longest header line a leader reads.
const MAX_HEADER_BYTES: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotPhase {
    /// No live member to run it yet.
    Unplaced,
    /// Deployed in the current attempt; no report yet (or still starting).
    Deploying,
    Ready,
    Running,
    Finished,
}

struct Slot {
    host: MemberId,
    phase: SlotPhase,
    /// The latest counts it reported.
    counts: TupleCounts,
    /// Its final snapshot in this attempt, and whether a checkpoint took it in already.
    last: Option<Snapshot>,
    last_folded: bool,
    completed: bool,
    /// Times a rollback took it from a worker that was gone (and placed it elsewhere).
    moves: u32,
}

/// Where a job resumes from: its newest complete checkpoint.
#[derive(Clone, Debug, Default)]
struct RestorePoint {
    checkpoint: Option<CheckpointId>,
    sources: BTreeMap<TaskId, SourceCheckpoint>,
    state: BTreeMap<TaskId, BTreeMap<String, String>>,
    counts: BTreeMap<TaskId, TupleCounts>,
}

enum JobPhase {
    /// Reading the input's metadata and where it is stored.
    Reading {
        manifest: Option<Manifest>,
        holders: Option<Vec<NodeAddr>>,
    },
    /// Reading the header line, part by part from the first.
    Header {
        line: Vec<u8>,
        part: usize,
    },
    /// Creating the destination, the checkpoint log and the manifest file.
    Creating {
        dest: bool,
        log: bool,
        manifest: bool,
    },
    /// Tasks deployed in the current attempt (after `until`, for a backoff); waiting for all
    /// to be ready.
    Deploying {
        until: Option<Time>,
    },
    Running,
    /// Every output reached the sink; the last ones are being committed.
    Draining,
}

pub(super) struct LeaderJob {
    spec: JobSpec,
    plan: JobPlan,
    phase: JobPhase,
    manifest: Manifest,
    input_lines: u64,
    /// Nodes holding the input (sources go there first).
    holders: Vec<NodeAddr>,
    attempt: Attempt,
    slots: BTreeMap<TaskId, Slot>,
    restore: RestorePoint,
    /// The restore point before the current one (what a planted bug restores from).
    older: RestorePoint,
    /// The highest checkpoint id issued; ids above `base` are the current attempt's.
    issued: CheckpointId,
    base: CheckpointId,
    /// Incomplete checkpoints of this attempt, with the snapshots in so far.
    pending: BTreeMap<CheckpointId, BTreeMap<TaskId, Snapshot>>,
    /// Epochs the sink closed, whose checkpoints are not complete yet.
    closed: BTreeSet<CheckpointId>,
    next_checkpoint: Time,
    /// When the open epoch opened (the attempt started, or the last checkpoint was triggered),
    /// and when each triggered checkpoint's epoch opened: its outputs come from input read
    /// since then (what a tuple's latency is measured from).
    epoch_open: Time,
    opened: BTreeMap<CheckpointId, Time>,
    /// When this leader first said go to the job's tasks, and how long before the current
    /// attempt's go that was: a paced source of a later attempt may read at once what a live
    /// input delivered meanwhile.
    first_go: Option<Time>,
    paced_ms: u64,
    /// This job's share of [`super::RainstormStats::tuple_latency`].
    tuple_latency: LatencyHistogram,
    sink: Sink,
    commits: Commits,
    restarts: u32,
    failures: u32,
    next_resend: Time,
    reported: Option<(u64, Vec<StageCounts>)>,
    /// Planted: the job's files are left behind when it ends.
    keeps_files: bool,
}

#[derive(Default)]
pub(super) struct Leader {
    jobs: BTreeMap<JobId, LeaderJob>,
    /// Jobs this node is taking over, until it can run them, and the operations they wait to
    /// send (after a pause).
    takeovers: BTreeMap<JobId, Takeover>,
    takeover_waits: BTreeMap<JobId, (Time, ClientOp)>,
    next_job: u32,
    ios: BTreeMap<u64, (JobId, LeaderIo)>,
    stats: super::RainstormStats,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum LeaderIo {
    Meta,
    Holders,
    Header,
    Dest,
    Log,
    Manifest,
    Commit(CommitIo),
    Merge,
    /// Deleting a file of the job (ends silently).
    Cleanup,
    /// A step of taking the job over.
    Takeover,
}

impl Leader {
    pub(super) fn owns(&self, token: u64) -> bool {
        self.ios.contains_key(&token)
    }

    /// Counters of the jobs this node led.
    pub(super) fn stats(&self) -> super::RainstormStats {
        self.stats.clone()
    }

    pub(super) fn jobs(&self) -> impl Iterator<Item = JobId> + '_ {
        self.jobs.keys().copied()
    }

    /// Whether this node leads `job`, or is taking it over.
    pub(super) fn leads(&self, job: JobId) -> bool {
        self.jobs.contains_key(&job) || self.takeovers.contains_key(&job)
    }

    /// One line per task of each job this node leads: where it runs and what the leader knows.
    pub(super) fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (job, j) in &self.jobs {
            lines.push(format!(
                "job {job}: {} (attempt {}, checkpoint {} of {} issued, {} committed, {} outputs)",
                j.spec,
                j.attempt,
                j.restore.checkpoint.map_or_else(|| "none".to_owned(), |c| c.to_string()),
                j.issued,
                j.commits.committed().map_or_else(|| "none".to_owned(), |c| c.to_string()),
                j.commits.outputs()
            ));
            for (task, s) in &j.slots {
                lines.push(format!("  {task} on {}: {:?}", s.host, s.phase));
            }
            lines.push(format!("  {}", j.sink.describe()));
        }
        lines
    }

    /// What a status page shows of each job this node leads.
    pub(super) fn views(&self) -> Vec<super::JobView> {
        self.jobs
            .iter()
            .map(|(job, j)| super::JobView {
                job: *job,
                spec: j.spec.to_string(),
                phase: match j.phase {
                    JobPhase::Reading { .. } | JobPhase::Header { .. } => "reading input",
                    JobPhase::Creating { .. } => "creating files",
                    JobPhase::Deploying { .. } => "deploying",
                    JobPhase::Running => "running",
                    JobPhase::Draining => "draining",
                },
                attempt: j.attempt,
                restarts: j.restarts,
                outputs: j.commits.outputs(),
                input_lines: j.input_lines,
                stages: j.stage_counts(),
                tuple_latency: j.tuple_latency,
                tasks: j
                    .slots
                    .iter()
                    .map(|(task, s)| super::TaskView {
                        task: *task,
                        host: s.host,
                        state: match s.phase {
                            SlotPhase::Unplaced => "unplaced",
                            SlotPhase::Deploying | SlotPhase::Ready => "deploying",
                            SlotPhase::Running => "running",
                            SlotPhase::Finished => "done",
                        },
                        counts: s.counts,
                        moves: s.moves,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Bytes held for the jobs this node leads: the sinks and outputs waiting to be committed.
    pub(super) fn buffered_bytes(&self) -> usize {
        self.jobs.values().map(|j| j.sink.buffered_bytes() + j.commits.waiting_weight()).sum()
    }

    /// What each job's sink holds.
    pub(super) fn buffers(&self) -> Vec<super::Buffers> {
        self.jobs
            .iter()
            .map(|(job, j)| super::Buffers {
                job: *job,
                task: SINK,
                read_ahead: 0,
                inputs: j.sink.input_bytes(),
                unacked: 0,
                outputs: j.sink.held_weight() + j.commits.waiting_weight(),
                open_epoch: j.sink.open_weight(),
                barrier_coming: j.barrier_coming(),
            })
            .collect()
    }

    pub(super) fn poll_timeout(&self, cfg: &RainstormConfig) -> Option<Time> {
        self.jobs
            .values()
            .flat_map(|j| {
                let checkpoint = j.may_checkpoint(cfg).then_some(j.next_checkpoint);
                let backoff = match j.phase {
                    JobPhase::Deploying { until } => until,
                    _ => None,
                };
                [Some(j.next_resend), checkpoint, backoff]
            })
            .flatten()
            .chain(self.takeover_waits.values().map(|(t, _)| *t))
            .min()
    }

    /// Accepts a job: reads its input's metadata first.
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
            origin: me,
            ops: [spec.op1.to_string(), spec.op2.to_string()],
            src: spec.src.clone(),
            dest: spec.dest.clone(),
            tasks: spec.tasks,
            header: None,
            routes: [Route::Shuffle; 2],
            rate_per_source: spec.rate.map(|r| r.div_ceil(u64::from(spec.tasks.max(1)))),
        };
        out.event(RainstormEvent::JobReceived { job, spec: spec.to_string() });
        let commits = Commits::new(LogState::default(), cfg.compact_records, 0);
        let j = LeaderJob::new(now, cfg, spec, plan, first_attempt(0), commits);
        out.announce(j.notice(JobState::Running));
        self.io(job, ClientOp::Meta { name: j.spec.src.clone() }, LeaderIo::Meta, out);
        self.io(job, ClientOp::Ls { name: j.spec.src.clone() }, LeaderIo::Holders, out);
        self.jobs.insert(job, j);
        job
    }

    fn io(&mut self, job: JobId, op: ClientOp, io: LeaderIo, out: &mut Outbox) {
        let token = out.hydfs(op);
        self.ios.insert(token, (job, io));
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
        if let LeaderIo::Takeover = io {
            return self.on_takeover(now, cfg, members, job, result, out);
        }
        if let (LeaderIo::Commit(_), Err(HydfsError::Sealed { owner, term, .. })) = (io, &result) {
            let term = Term::try_from(*term).unwrap_or(Term::MAX);
            return self.depose(cfg, job, (*owner, term), members, out);
        }
        if let Err(reason) = self.on_io(now, cfg, members, job, io, result, out) {
            self.fail(job, reason, out);
        }
    }

    /// Starts taking over `known`'s job, whose leader is gone, as `me`.
    pub(super) fn take_over(
        &mut self,
        cfg: &RainstormConfig,
        me: MemberId,
        known: JobNotice,
        out: &mut Outbox,
    ) {
        let job = known.job;
        if self.leads(job) {
            return;
        }
        let hint = (known.term, known.generation);
        self.start_takeover(cfg, me, known, hint, out);
    }

    /// Starts a takeover; `hint`: a term whose log generation is known.
    fn start_takeover(
        &mut self,
        cfg: &RainstormConfig,
        me: MemberId,
        known: JobNotice,
        hint: (Term, u32),
        out: &mut Outbox,
    ) {
        let job = known.job;
        let (t, op) = Takeover::start(cfg, me, known, hint);
        out.event(RainstormEvent::JobReceived { job, spec: t.notice().spec.clone() });
        self.takeovers.insert(job, t);
        self.io(job, op, LeaderIo::Takeover, out);
    }

    fn on_takeover(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        members: &[MemberId],
        job: JobId,
        result: Result<OpOutput, HydfsError>,
        out: &mut Outbox,
    ) {
        let Some(t) = self.takeovers.get_mut(&job) else { return };
        let next = t.on_answer(members, result);
        if t.fenced && !t.announced {
            // The destination is this node's: it leads the job now (its log generation is 0).
            t.announced = true;
            let mut notice = t.notice().clone();
            (notice.leader, notice.term, notice.state, notice.generation) =
                (t.me(), t.term(), JobState::Running, 0);
            out.announce(notice);
        }
        match next {
            Next::Op(op) => self.io(job, op, LeaderIo::Takeover, out),
            Next::Later(op) => {
                self.takeover_waits.insert(job, (now + cfg.retry, op));
            }
            Next::Ready(resumed) => {
                let Some(t) = self.takeovers.remove(&job) else { return };
                let known = t.notice().clone();
                self.resume(now, cfg, members, &known, *resumed, out);
            }
            Next::Deposed { leader, term } => {
                self.takeovers.remove(&job);
                out.event(RainstormEvent::JobDeposed { job, leader, term });
            }
            Next::Completed { outputs, files } => {
                let Some(t) = self.takeovers.remove(&job) else { return };
                let mut notice = t.notice().clone();
                (notice.leader, notice.term, notice.state, notice.outputs) =
                    (t.me(), t.term(), JobState::Completed, outputs);
                let restarts = notice.restarts;
                out.announce(notice);
                for name in files {
                    self.delete(job, name, out);
                }
                out.event(RainstormEvent::JobCompleted { job, outputs, restarts });
            }
            Next::StandDown(reason) => {
                self.takeovers.remove(&job);
                out.event(RainstormEvent::JobLost { job, reason });
            }
            Next::Ended { files } => {
                let Some(t) = self.takeovers.remove(&job) else { return };
                let mut notice = t.notice().clone();
                (notice.leader, notice.term, notice.state) = (t.me(), t.term(), JobState::Ended);
                out.announce(notice);
                for name in files {
                    self.delete(job, name, out);
                }
                let reason = super::NOTHING_TO_RESUME.to_owned();
                out.event(RainstormEvent::JobLost { job, reason });
            }
            Next::Failed(reason) => {
                let Some(t) = self.takeovers.remove(&job) else { return };
                let mut notice = t.notice().clone();
                (notice.term, notice.state) = (t.term(), JobState::Failed(reason.clone()));
                notice.leader = t.me();
                out.announce(notice);
                out.event(RainstormEvent::JobFailed { job, reason });
            }
        }
    }

    /// A successor runs the job from where its files say it stands: every task placed again
    /// under the first attempt of its term, from the checkpoint the destination holds.
    fn resume(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        members: &[MemberId],
        known: &JobNotice,
        r: Resumed,
        out: &mut Outbox,
    ) {
        let job = known.job;
        let plan = r.info.plan.clone();
        let layout = Layout::new(r.manifest.clone());
        let spec = JobPlan::spec_of(&plan, r.info.rate);
        let parsed =
            spec.and_then(|spec| layout.map(|l| (spec, l)).map_err(|e| format!("input `{}`: {e}", plan.src)));
        let (spec, layout) = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                // Every member hears that it failed, and this term's log goes.
                let mut notice = known.clone();
                (notice.leader, notice.term, notice.state) =
                    (plan.leader, r.term, JobState::Failed(reason.clone()));
                out.announce(notice);
                if let Ok(name) = plan.checkpoint_log(r.term, 0) {
                    self.delete(job, name, out);
                }
                return out.event(RainstormEvent::JobFailed { job, reason });
            }
        };
        let attempt = first_attempt(r.term);
        let checkpoint = r.log.checkpoint.unwrap_or(0);
        let restore = RestorePoint {
            checkpoint: r.log.checkpoint,
            sources: r.log.sources.clone(),
            state: r.log.state.clone(),
            counts: r.log.counts.clone(),
        };
        out.event(RainstormEvent::JobTakenOver {
            job,
            term: r.term,
            previous: r.previous,
            checkpoint: r.log.checkpoint,
            outputs: r.log.outputs,
        });
        let commits = Commits::new(r.log, cfg.compact_records, r.term);
        let mut j = LeaderJob::new(now, cfg, spec, plan, attempt, commits);
        j.phase = JobPhase::Creating { dest: true, log: true, manifest: true };
        j.manifest = r.manifest;
        j.input_lines = layout.lines();
        j.older = restore.clone();
        j.restore = restore;
        (j.issued, j.base) = (checkpoint, checkpoint);
        j.restarts = known.restarts.saturating_add(1);
        for name in r.old_logs {
            self.delete(job, name, out);
        }
        j.place(members, out);
        j.deploy_all(now, cfg, out);
        out.announce(j.notice(JobState::Running));
        self.jobs.insert(job, j);
    }

    /// Another leader sealed the job's destination: this node stops leading it, and leaves the
    /// workers and the job's files to that leader. If that leader is gone from the group too
    /// (it sealed, then was declared failed itself), this node takes the job back over from it.
    fn depose(
        &mut self,
        cfg: &RainstormConfig,
        job: JobId,
        (leader, term): (MemberId, Term),
        members: &[MemberId],
        out: &mut Outbox,
    ) {
        let Some(j) = self.jobs.remove(&job) else { return };
        self.ios.retain(|_, (k, _)| *k != job);
        out.event(RainstormEvent::JobDeposed { job, leader, term });
        if members.contains(&leader) {
            return;
        }
        let me = j.plan.leader;
        let hint = (term_of(j.attempt), j.commits.generation());
        let mut known = j.notice(JobState::Running);
        (known.leader, known.term) = (leader, term);
        self.start_takeover(cfg, me, known, hint, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_io(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        members: &[MemberId],
        job: JobId,
        io: LeaderIo,
        result: Result<OpOutput, HydfsError>,
        out: &mut Outbox,
    ) -> Result<(), String> {
        let Some(j) = self.jobs.get_mut(&job) else { return Ok(()) };
        let src = j.spec.src.clone();
        match (io, result) {
            (LeaderIo::Meta, Ok(OpOutput::Meta { meta, .. })) => {
                if let JobPhase::Reading { manifest, .. } = &mut j.phase {
                    *manifest = Some(Manifest::of(&meta));
                }
            }
            (LeaderIo::Holders, Ok(OpOutput::Listed { replicas, .. })) => {
                if let JobPhase::Reading { holders, .. } = &mut j.phase {
                    *holders =
                        Some(replicas.iter().filter(|(_, _, d)| d.is_some()).map(|(a, _, _)| *a).collect());
                }
            }
            // Where the input is stored only helps placement.
            (LeaderIo::Holders, Err(_)) => {
                if let JobPhase::Reading { holders, .. } = &mut j.phase {
                    *holders = Some(Vec::new());
                }
            }
            (LeaderIo::Meta, Err(e)) => return Err(format!("cannot read the input `{src}`: {e}")),
            (LeaderIo::Header, Ok(OpOutput::Part { bytes, .. })) => {
                let JobPhase::Header { line, part } = &mut j.phase else { return Ok(()) };
                line.extend_from_slice(&bytes);
                *part += 1;
            }
            (LeaderIo::Header, Err(e)) => return Err(format!("cannot read the input `{src}`: {e}")),
            (LeaderIo::Dest, Ok(_)) => {
                if let JobPhase::Creating { dest, .. } = &mut j.phase {
                    *dest = true;
                }
            }
            (LeaderIo::Dest, Err(HydfsError::AlreadyExists(name))) => {
                return Err(format!("the destination `{name}` already exists (choose a new name)"))
            }
            (LeaderIo::Dest, Err(e)) => return Err(format!("cannot create the destination: {e}")),
            (LeaderIo::Log, Ok(_)) => {
                if let JobPhase::Creating { log, .. } = &mut j.phase {
                    *log = true;
                }
            }
            (LeaderIo::Log, Err(e)) => return Err(format!("cannot create the checkpoint log: {e}")),
            (LeaderIo::Manifest, Ok(_)) => {
                if let JobPhase::Creating { manifest, .. } = &mut j.phase {
                    *manifest = true;
                }
            }
            (LeaderIo::Manifest, Err(e)) => {
                return Err(format!("cannot create the job's manifest file: {e}"))
            }
            (LeaderIo::Commit(c), Ok(_)) => {
                match j.commits.on_done(&j.plan, c)? {
                    Step::Write(op, next) => self.commit_write(job, op, next, out),
                    Step::Committed(done) => {
                        for (opened, n) in &done.ages {
                            self.stats.tuple_latency.observe_n(now.since(*opened), *n);
                            j.tuple_latency.observe_n(now.since(*opened), *n);
                        }
                        self.stats.commit_latency.observe(now.since(done.ready_at));
                        let n = done.tuples.len();
                        if n > 0 {
                            out.event(RainstormEvent::Outputs { job, tuples: done.tuples });
                        }
                        let (checkpoint, outputs) = (j.commits.committed(), j.commits.outputs());
                        out.event(RainstormEvent::Committed { job, checkpoint, outputs });
                        self.merge_output(cfg, job, out);
                        if done.last {
                            return self.complete(job, out);
                        }
                    }
                    Step::Delete(old) => {
                        // A successor looks for the log from the generation announced last.
                        out.announce(j.notice(JobState::Running));
                        self.delete(job, old, out)
                    }
                }
                self.pump_commits(job, out)?;
                // Room at the sink again.
                self.step_sink(now, cfg, job, out);
                return Ok(());
            }
            (LeaderIo::Commit(_), Err(e)) => return Err(format!("cannot commit to the destination: {e}")),
            (LeaderIo::Merge, result) => {
                // A failed merge is tried again after the next append.
                let covered = j.commits.merging.take().unwrap_or(0);
                if result.is_ok() {
                    j.commits.appends_since_merge = j.commits.appends_since_merge.saturating_sub(covered);
                }
                return Ok(());
            }
            (LeaderIo::Cleanup | LeaderIo::Takeover, _) => return Ok(()),
            (io, Ok(other)) => return Err(format!("unexpected answer to {io:?}: {other:?}")),
        }
        self.advance(now, cfg, members, job, out)
    }

    /// Moves a starting job on once what it waits for is in.
    fn advance(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        members: &[MemberId],
        job: JobId,
        out: &mut Outbox,
    ) -> Result<(), String> {
        let Some(j) = self.jobs.get_mut(&job) else { return Ok(()) };
        if let JobPhase::Reading { manifest: Some(manifest), holders: Some(holders) } = &mut j.phase {
            j.manifest = std::mem::take(manifest);
            j.holders = std::mem::take(holders);
            let layout =
                Layout::new(j.manifest.clone()).map_err(|e| format!("input `{}`: {e}", j.spec.src))?;
            j.input_lines = layout.lines();
            j.phase = JobPhase::Header { line: Vec::new(), part: 0 };
        }
        if let JobPhase::Header { line, part } = &mut j.phase {
            let done = line.contains(&b'\n') || *part >= j.manifest.parts.len();
            if !done && line.len() > MAX_HEADER_BYTES {
                return Err(format!("the first line of `{}` is over {MAX_HEADER_BYTES} bytes", j.spec.src));
            }
            if !done {
                let p = j.manifest.parts[*part];
                let op = ClientOp::ReadPart {
                    name: j.spec.src.clone(),
                    stamp: p.stamp,
                    part: p.part,
                    prefer: None,
                };
                self.io(job, op, LeaderIo::Header, out);
                return Ok(());
            }
            let header = super::tuple::source_lines(line).next().map(|(_, l)| split_record(&l));
            let ops = build_pair(&j.spec.op1, &j.spec.op2, header.as_deref())
                .map_err(|e| format!("{e} (input `{}`)", j.spec.src))?;
            j.plan.header = header;
            j.plan.routes = [Route::into(&ops[0], true), Route::into(&ops[1], false)];
            j.phase = JobPhase::Creating { dest: false, log: false, manifest: false };
            let record = Record::Job(Box::new(JobInfo {
                job,
                leader: j.plan.leader,
                spec: j.spec.to_string(),
                plan: j.plan.clone(),
                rate: j.spec.rate,
            }));
            let data = encode(&record).map_err(|e| e.to_string())?;
            let log = LogState::fold(std::slice::from_ref(&record)).map_err(|e| e.to_string())?;
            j.commits.start_log(log);
            let log = j.commits.log_name(&j.plan).map_err(|e| e.to_string())?;
            let dest =
                ClientOp::Persist { name: j.spec.dest.clone(), kind: WriteKind::Create, data: Vec::new() };
            let log = ClientOp::Persist { name: log, kind: WriteKind::Create, data };
            let manifest = ClientOp::Persist {
                name: j.plan.manifest_file().map_err(|e| e.to_string())?,
                kind: WriteKind::Create,
                data: encode_manifest(&j.manifest),
            };
            self.io(job, dest, LeaderIo::Dest, out);
            self.io(job, log, LeaderIo::Log, out);
            self.io(job, manifest, LeaderIo::Manifest, out);
            return Ok(());
        }
        if let JobPhase::Creating { dest: true, log: true, manifest: true } = j.phase {
            j.place(members, out);
            j.deploy_all(now, cfg, out);
        }
        Ok(())
    }

    /// A task's status report.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_status(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        members: &[MemberId],
        sender: MemberId,
        (job, attempt, task): (JobId, Attempt, TaskId),
        (phase, counts, snapshots): (TaskPhase, TupleCounts, Vec<(CheckpointId, Snapshot)>),
        out: &mut Outbox,
    ) {
        let from = sender.addr;
        let Some(j) = self.jobs.get_mut(&job) else {
            // A job this leader does not run (it ended, or this process took the address of
            // one that ran it): every attempt of that term stops, and a later leader's may
            // still run.
            let before = first_attempt(term_of(attempt).saturating_add(1));
            out.send(from, RainstormMsg::Stop { job, before });
            return;
        };
        if attempt < j.attempt {
            out.send(from, RainstormMsg::Stop { job, before: j.attempt });
            return;
        }
        let Some(slot) = j.slots.get_mut(&task) else { return };
        // Only the process the attempt placed the task on speaks for it (not another process
        // at its address).
        if attempt != j.attempt || slot.host != sender {
            return;
        }
        slot.counts = counts;
        let mut failed = None;
        match phase {
            TaskPhase::Starting => {}
            TaskPhase::Ready => {
                if slot.phase == SlotPhase::Deploying {
                    slot.phase = SlotPhase::Ready;
                }
            }
            TaskPhase::Running => {
                if matches!(slot.phase, SlotPhase::Deploying | SlotPhase::Ready) {
                    slot.phase = SlotPhase::Running;
                }
            }
            TaskPhase::Finished { last } => {
                slot.phase = SlotPhase::Finished;
                if slot.last.is_none() {
                    slot.last = Some(last);
                }
                if !slot.completed {
                    slot.completed = true;
                    out.event(RainstormEvent::TaskCompleted { job, task });
                }
            }
            TaskPhase::Failed { reason, transient } => failed = Some((reason, transient)),
        }
        for (c, snapshot) in snapshots {
            j.add_snapshot(task, c, snapshot);
        }
        if let Some((reason, transient)) = failed {
            if matches!(j.phase, JobPhase::Draining) {
                return;
            }
            out.event(RainstormEvent::TaskFailed { job, task, attempt, reason: reason.clone() });
            let why = format!("task {task} failed: {reason}");
            let cause = if transient { Cause::Transient } else { Cause::Task };
            self.stats.rollbacks += 1;
            if let Err(e) = j.rollback(now, cfg, members, why, cause, out) {
                self.fail(job, e, out);
            }
            return;
        }
        out.send(from, j.control(task));
        j.maybe_go(now, cfg, out);
        self.complete_checkpoints(now, cfg, job, out);
    }

    /// Whether `from` may speak for `task` of `attempt` of `job` here: it hosts the task in the
    /// job's current attempt, or the message is not about an attempt this node leads (and
    /// changes nothing).
    pub(super) fn speaks_for(&self, job: JobId, attempt: Attempt, task: TaskId, from: MemberId) -> bool {
        match self.jobs.get(&job) {
            Some(j) if attempt == j.attempt => j.placement_of(task) == Some(from),
            _ => true,
        }
    }

    /// A task's snapshot of a checkpoint.
    pub(super) fn on_snapshot(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        (job, attempt, task): (JobId, Attempt, TaskId),
        checkpoint: CheckpointId,
        snapshot: Snapshot,
        out: &mut Outbox,
    ) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        if attempt != j.attempt {
            return;
        }
        j.add_snapshot(task, checkpoint, snapshot);
        self.complete_checkpoints(now, cfg, job, out);
    }

    /// A batch or acknowledgement addressed to a job's sink. A batch over `max_batch_tuples`
    /// fails the job.
    pub(super) fn on_link(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        (job, attempt, from): (JobId, Attempt, TaskId),
        msg: LinkMsg,
        out: &mut Outbox,
    ) -> Result<(), BatchError> {
        let Some(j) = self.jobs.get_mut(&job) else { return Ok(()) };
        let current = attempt == j.sink.attempt();
        let planted_old = cfg.bug(PlantedBug::SinkTakesOldAttempts) && attempt < j.sink.attempt();
        if !(current || planted_old) {
            return Ok(());
        }
        if let LinkMsg::Batch { batch: super::message::Batch::Tuples(tuples), .. } = &msg {
            if let Err(e) = cfg.check_batch(tuples.len()) {
                self.fail(job, format!("its destination refused a batch from task {from}: {e}"), out);
                return Err(e);
            }
        }
        if !current {
            // Planted: an old attempt's outputs go straight into the open epoch.
            if let LinkMsg::Batch { batch: super::message::Batch::Tuples(tuples), .. } = msg {
                j.sink.inject(tuples);
            }
            return Ok(());
        }
        j.sink.on_message(from, msg);
        self.step_sink(now, cfg, job, out);
        Ok(())
    }

    /// Lets a job's sink take what it may, and acts on what it found.
    fn step_sink(&mut self, now: Time, cfg: &RainstormConfig, job: JobId, out: &mut Outbox) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        // Closed epochs wait for their checkpoints and commits, which go on without the sink.
        // The open epoch closes only when its barrier comes through the sink: it pauses for a
        // full open epoch only while no barrier is on its way (the next checkpoint starts at
        // once, see `may_checkpoint`), and the links' windows bound what precedes a barrier.
        let waiting = j.commits.waiting_weight() + j.sink.closed_weight();
        let paused =
            waiting > cfg.sink_buffer_bytes as usize || (j.open_epoch_full(cfg) && !j.barrier_coming());
        let open_before = j.sink.open_weight();
        j.sink.step(paused);
        debug_assert!(!paused || j.sink.open_weight() <= open_before, "a paused sink took outputs");
        while let Some((to, msg)) = j.sink.poll_ack() {
            if let Some(host) = j.placement_of(to) {
                let attempt = j.sink.attempt();
                out.send(host.addr, RainstormMsg::Link { job, attempt, from: SINK, to, msg });
            }
        }
        let mut ended = false;
        while let Some(e) = j.sink.poll_event() {
            match e {
                SinkEvent::Aligned(c) => {
                    j.closed.insert(c);
                    if cfg.bug(PlantedBug::CommitBeforeComplete) {
                        // Planted: the epoch is committed before the checkpoint is complete.
                        let epoch = j.sink.take_closed(c);
                        let opened = j.epoch_open;
                        j.commits.push(j.ready_epoch(epoch, BTreeMap::new(), false, (opened, now)));
                    }
                }
                SinkEvent::Ended => ended = true,
            }
        }
        let never_last = cfg.bug(PlantedBug::LastEpochNeverCommitted);
        if ended && !matches!(j.phase, JobPhase::Draining) && !never_last {
            let epoch = j.sink.take_rest();
            j.phase = JobPhase::Draining;
            j.pending.clear();
            let opened = j.opened.values().next().copied().unwrap_or(j.epoch_open);
            j.opened.clear();
            j.commits.push(j.ready_epoch(epoch, BTreeMap::new(), true, (opened, now)));
        }
        // A large open epoch: start the next checkpoint now rather than at the interval.
        if j.sink.open_weight() > (cfg.sink_buffer_bytes / 4) as usize {
            j.next_checkpoint = j.next_checkpoint.min(now);
        }
        self.complete_checkpoints(now, cfg, job, out);
    }

    /// Completes every checkpoint that can be, in order, and commits their epochs.
    fn complete_checkpoints(&mut self, now: Time, cfg: &RainstormConfig, job: JobId, out: &mut Outbox) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        while let Some(c) = j.completable() {
            j.complete(now, cfg, c);
            self.stats.checkpoints += 1;
        }
        // A checkpoint that waited for room starts at the next timeout (now, if it is due).
        if let Err(e) = self.pump_commits(job, out) {
            self.fail(job, e, out);
        }
    }

    fn pump_commits(&mut self, job: JobId, out: &mut Outbox) -> Result<(), String> {
        let Some(j) = self.jobs.get_mut(&job) else { return Ok(()) };
        if let Some((op, io)) = j.commits.next(&j.plan)? {
            self.commit_write(job, op, io, out);
        }
        Ok(())
    }

    /// Sends one write of a commit, and counts it.
    fn commit_write(&mut self, job: JobId, op: ClientOp, io: CommitIo, out: &mut Outbox) {
        let bytes = match &op {
            ClientOp::Persist { data, .. } => data.len() as u64,
            _ => 0,
        };
        match io {
            CommitIo::Record | CommitIo::Rollover => {
                self.stats.log_writes += 1;
                self.stats.log_bytes += bytes;
                self.stats.commits += u64::from(io == CommitIo::Record);
            }
            CommitIo::Output => {
                self.stats.output_writes += 1;
                self.stats.output_bytes += bytes;
            }
        }
        let token = out.hydfs(op);
        self.ios.insert(token, (job, LeaderIo::Commit(io)));
    }

    /// Merges the destination once `merge_output_appends` appends are pending since the last
    /// merge (one merge at a time), so that its pending appends stay far below a server's
    /// `max_pending_appends`. Merging changes no byte: the leader is the file's only writer.
    fn merge_output(&mut self, cfg: &RainstormConfig, job: JobId, out: &mut Outbox) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        let every = cfg.merge_output_appends;
        if every == 0 || j.commits.merging.is_some() || j.commits.appends_since_merge < every {
            return;
        }
        j.commits.merging = Some(j.commits.appends_since_merge);
        let name = j.spec.dest.clone();
        self.io(job, ClientOp::Merge { name }, LeaderIo::Merge, out);
    }

    /// Membership declared `member` failed, or it left: jobs with tasks there roll back.
    pub(super) fn on_member_gone(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        member: MemberId,
        members: &[MemberId],
        out: &mut Outbox,
    ) {
        let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
        for job in jobs {
            let Some(j) = self.jobs.get_mut(&job) else { continue };
            let hosted = j.slots.values().any(|s| s.host == member && s.phase != SlotPhase::Unplaced);
            if !hosted || matches!(j.phase, JobPhase::Draining) {
                continue;
            }
            let why = format!("worker {} left or was declared failed", member.addr);
            self.stats.rollbacks += 1;
            if let Err(e) = j.rollback(now, cfg, members, why, Cause::Member(member), out) {
                self.fail(job, e, out);
            }
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
            if j.slots.values().any(|s| s.phase == SlotPhase::Unplaced)
                && !eligible(j.plan.leader, members).is_empty()
            {
                j.place_unplaced(members);
                j.deploy_all(now, cfg, out);
            }
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Time, cfg: &RainstormConfig, out: &mut Outbox) {
        let due: Vec<JobId> =
            self.takeover_waits.iter().filter(|(_, (t, _))| *t <= now).map(|(j, _)| *j).collect();
        for job in due {
            if let Some((_, op)) = self.takeover_waits.remove(&job) {
                self.io(job, op, LeaderIo::Takeover, out);
            }
        }
        let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
        for job in jobs {
            let Some(j) = self.jobs.get_mut(&job) else { continue };
            if let JobPhase::Deploying { until: Some(t) } = j.phase {
                if t <= now {
                    j.phase = JobPhase::Deploying { until: None };
                    j.deploy_all(now, cfg, out);
                }
            }
            let triggered = j.next_checkpoint <= now && j.may_checkpoint(cfg);
            if triggered {
                j.trigger(now, cfg, out);
            }
            if j.next_resend <= now {
                j.next_resend = now + cfg.status_interval;
                j.report_progress(out);
                out.announce(j.notice(JobState::Running));
                if matches!(j.phase, JobPhase::Deploying { until: None }) {
                    for (task, slot) in &j.slots {
                        if slot.phase == SlotPhase::Deploying {
                            out.send(slot.host.addr, j.deploy_msg(*task));
                        }
                    }
                }
            }
            if triggered {
                // A sink paused for its full open epoch takes batches again now that a barrier
                // is on its way (not only when the next batch or resend arrives).
                self.step_sink(now, cfg, job, out);
            }
        }
    }

    /// This node stopped being a member: every job it leads ends here.
    pub(super) fn lose_all(&mut self, reason: &str, out: &mut Outbox) {
        for (job, j) in std::mem::take(&mut self.jobs) {
            j.stop_all(out);
            out.event(RainstormEvent::JobLost { job, reason: reason.to_owned() });
        }
        self.takeover_waits.clear();
        for job in std::mem::take(&mut self.takeovers).into_keys() {
            out.event(RainstormEvent::JobLost { job, reason: reason.to_owned() });
        }
        self.ios.clear();
    }

    fn fail(&mut self, job: JobId, reason: String, out: &mut Outbox) {
        if let Some(j) = self.jobs.remove(&job) {
            j.stop_all(out);
            self.cleanup(&j, out);
            out.announce(j.notice(JobState::Failed(reason.clone())));
            out.event(RainstormEvent::JobFailed { job, reason });
        }
    }

    fn complete(&mut self, job: JobId, out: &mut Outbox) -> Result<(), String> {
        let Some(mut j) = self.jobs.remove(&job) else { return Ok(()) };
        j.report_progress(out);
        j.stop_all(out);
        self.cleanup(&j, out);
        out.announce(j.notice(JobState::Completed));
        out.event(RainstormEvent::JobCompleted { job, outputs: j.commits.outputs(), restarts: j.restarts });
        Ok(())
    }

    /// Deletes one of a job's own files (its answer is not waited for).
    fn delete(&mut self, job: JobId, name: crate::hydfs::FileName, out: &mut Outbox) {
        self.io(job, ClientOp::Delete { name }, LeaderIo::Cleanup, out);
    }

    /// Deletes the job's own files (its checkpoint log and manifest file).
    fn cleanup(&mut self, j: &LeaderJob, out: &mut Outbox) {
        if j.keeps_files {
            return;
        }
        let created = !matches!(j.phase, JobPhase::Reading { .. } | JobPhase::Header { .. });
        if !created {
            return;
        }
        for name in [j.commits.log_name(&j.plan), j.plan.manifest_file()].into_iter().flatten() {
            self.delete(j.plan.job, name, out);
        }
    }
}

impl LeaderJob {
    /// A job as its leader takes it on under `attempt`: reading its input (a new job), with
    /// nothing restored, nothing placed and no checkpoint issued; a successor sets where it
    /// resumes from.
    fn new(
        now: Time,
        cfg: &RainstormConfig,
        spec: JobSpec,
        plan: JobPlan,
        attempt: Attempt,
        mut commits: Commits,
    ) -> LeaderJob {
        commits.repeat_next_output = cfg.bug(PlantedBug::OutputAppendedTwice);
        LeaderJob {
            sink: Sink::new(cfg, attempt, &plan.stage(STAGES - 1)),
            spec,
            plan,
            phase: JobPhase::Reading { manifest: None, holders: None },
            manifest: Manifest::default(),
            input_lines: 0,
            holders: Vec::new(),
            attempt,
            slots: BTreeMap::new(),
            restore: RestorePoint::default(),
            older: RestorePoint::default(),
            issued: 0,
            base: 0,
            pending: BTreeMap::new(),
            closed: BTreeSet::new(),
            next_checkpoint: now,
            epoch_open: now,
            opened: BTreeMap::new(),
            first_go: None,
            paced_ms: 0,
            tuple_latency: LatencyHistogram::default(),
            commits,
            restarts: 0,
            failures: 0,
            next_resend: now + cfg.status_interval,
            reported: None,
            keeps_files: cfg.bug(PlantedBug::KeepsJobFiles),
        }
    }

    fn placement(&self) -> Placement {
        self.slots.iter().map(|(t, s)| (*t, s.host)).collect()
    }

    fn placement_of(&self, task: TaskId) -> Option<MemberId> {
        self.slots.get(&task).map(|s| s.host)
    }

    /// Places every task: sources on the input's holders where possible (spread), each
    /// `Forward` task with its upstream partner, the others on the least loaded members.
    fn place(&mut self, members: &[MemberId], out: &mut Outbox) {
        for task in self.plan.all_tasks().collect::<Vec<_>>() {
            let slot = Slot {
                host: self.plan.leader,
                phase: SlotPhase::Unplaced,
                counts: TupleCounts::default(),
                last: None,
                last_folded: false,
                completed: false,
                moves: 0,
            };
            self.slots.insert(task, slot);
        }
        self.place_unplaced(members);
        for (task, slot) in &self.slots {
            if slot.phase != SlotPhase::Unplaced {
                let (job, attempt, host) = (self.plan.job, self.attempt, slot.host);
                out.event(RainstormEvent::TaskScheduled { job, task: *task, attempt, host, restart: false });
            }
        }
    }

    /// Places the tasks that have no live host.
    fn place_unplaced(&mut self, members: &[MemberId]) {
        let hosts = eligible(self.plan.leader, members);
        if hosts.is_empty() {
            return;
        }
        let holders: Vec<MemberId> =
            hosts.iter().copied().filter(|h| self.holders.contains(&h.addr)).collect();
        let tasks: Vec<TaskId> =
            self.slots.iter().filter(|(_, s)| s.phase == SlotPhase::Unplaced).map(|(t, _)| *t).collect();
        for task in tasks {
            let load = |m: &MemberId, slots: &BTreeMap<TaskId, Slot>| {
                slots.values().filter(|s| s.host == *m && s.phase != SlotPhase::Unplaced).count()
            };
            let least = |pool: &[MemberId], slots: &BTreeMap<TaskId, Slot>| {
                pool.iter().min_by_key(|m| (load(m, slots), **m)).copied()
            };
            let partner = (task.stage > 0)
                .then(|| self.plan.routes[(task.stage - 1) as usize])
                .filter(|r| *r == Route::Forward)
                .and_then(|_| self.slots.get(&TaskId { stage: task.stage - 1, index: task.index }))
                .filter(|s| s.phase != SlotPhase::Unplaced)
                .map(|s| s.host);
            let host = match partner {
                Some(h) => Some(h),
                None if task.stage == 0 && !holders.is_empty() => least(&holders, &self.slots),
                None => least(&hosts, &self.slots),
            };
            if let (Some(host), Some(slot)) = (host, self.slots.get_mut(&task)) {
                slot.host = host;
                slot.phase = SlotPhase::Deploying;
            }
        }
    }

    /// Deploys every placed task of the current attempt.
    fn deploy_all(&mut self, now: Time, cfg: &RainstormConfig, out: &mut Outbox) {
        if self.slots.values().any(|s| s.phase == SlotPhase::Unplaced) {
            // All tasks of an attempt run together: wait for members.
            return;
        }
        self.phase = JobPhase::Deploying { until: None };
        for (task, slot) in &self.slots {
            out.send(slot.host.addr, self.deploy_msg(*task));
        }
        self.next_resend = now + cfg.status_interval;
    }

    fn deploy_msg(&self, task: TaskId) -> RainstormMsg {
        let restore = Restore {
            source: (task.stage == 0)
                .then(|| self.restore.sources.get(&task).copied().unwrap_or(SourceCheckpoint::Start)),
            state: self
                .restore
                .state
                .get(&task)
                .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            counts: self.restore.counts.get(&task).copied().unwrap_or_default(),
        };
        RainstormMsg::Deploy {
            plan: Box::new(self.plan.clone()),
            attempt: self.attempt,
            task,
            placement: self.placement(),
            restore,
            base: self.base,
            manifest: (task.stage == 0).then(|| self.manifest.clone()),
        }
    }

    /// Once every task of the attempt is ready: go.
    fn maybe_go(&mut self, now: Time, cfg: &RainstormConfig, out: &mut Outbox) {
        if !matches!(self.phase, JobPhase::Deploying { until: None }) {
            return;
        }
        if !self.slots.values().all(|s| s.phase != SlotPhase::Deploying && s.phase != SlotPhase::Unplaced) {
            return;
        }
        self.phase = JobPhase::Running;
        self.next_checkpoint = now + cfg.checkpoint_interval;
        self.epoch_open = now;
        self.paced_ms = now.0.saturating_sub(self.first_go.get_or_insert(now).0);
        for (task, slot) in &self.slots {
            out.send(slot.host.addr, self.control(*task));
        }
    }

    /// What the leader tells a task of the current attempt.
    fn control(&self, task: TaskId) -> RainstormMsg {
        RainstormMsg::Control {
            job: self.plan.job,
            attempt: self.attempt,
            task,
            go: matches!(self.phase, JobPhase::Running | JobPhase::Draining),
            paced_ms: if task.stage == 0 { self.paced_ms } else { 0 },
            trigger: if task.stage == 0 { self.issued.max(self.base) } else { 0 },
            confirmed: self.confirmed(),
        }
    }

    /// Every snapshot up to this checkpoint is in (the rest of the attempt's are not needed).
    fn confirmed(&self) -> CheckpointId {
        self.restore.checkpoint.unwrap_or(0).max(self.base)
    }

    /// Whether the next checkpoint may start once its time comes: the job runs, fewer than
    /// `max_pending_checkpoints` are open, and no complete epoch waits behind the commit in
    /// flight, unless the open epoch is full (it must close, or the sink stops).
    fn may_checkpoint(&self, cfg: &RainstormConfig) -> bool {
        matches!(self.phase, JobPhase::Running)
            && self.pending.len() < cfg.max_pending_checkpoints.max(1) as usize
            && (!self.commits.backlogged() || self.open_epoch_full(cfg))
    }

    /// Whether the open epoch holds more than a quarter of `sink_buffer_bytes`.
    fn open_epoch_full(&self, cfg: &RainstormConfig) -> bool {
        !cfg.bug(PlantedBug::OpenEpochUnbounded)
            && self.sink.open_weight() > (cfg.sink_buffer_bytes / 4) as usize
    }

    /// Whether a barrier is on its way to the sink: a checkpoint started whose epoch the sink
    /// has not closed.
    fn barrier_coming(&self) -> bool {
        self.pending.keys().any(|c| !self.closed.contains(c))
    }

    /// Starts the next checkpoint: its barrier from every source.
    fn trigger(&mut self, now: Time, cfg: &RainstormConfig, out: &mut Outbox) {
        self.issued += 1;
        self.pending.insert(self.issued, BTreeMap::new());
        self.opened.insert(self.issued, self.epoch_open);
        self.epoch_open = now;
        self.next_checkpoint = now + cfg.checkpoint_interval;
        for (task, slot) in &self.slots {
            if task.stage == 0 && slot.phase != SlotPhase::Finished {
                out.send(slot.host.addr, self.control(*task));
            }
        }
    }

    fn add_snapshot(&mut self, task: TaskId, c: CheckpointId, snapshot: Snapshot) {
        if let Some(p) = self.pending.get_mut(&c) {
            p.entry(task).or_insert(snapshot);
        }
    }

    /// The oldest pending checkpoint, if it is complete: the sink closed its epoch and every
    /// task reported its snapshot of it or finished without seeing it.
    fn completable(&self) -> Option<CheckpointId> {
        let (c, snapshots) = self.pending.first_key_value()?;
        let closed = self.closed.contains(c);
        let all = self.slots.iter().all(|(t, s)| snapshots.contains_key(t) || s.last.is_some());
        (closed && all).then_some(*c)
    }

    /// Folds checkpoint `c` into the restore point and queues its epoch for commit.
    fn complete(&mut self, now: Time, cfg: &RainstormConfig, c: CheckpointId) {
        debug_assert_eq!(self.pending.keys().next(), Some(&c), "checkpoints complete in order");
        let snapshots = self.pending.remove(&c).unwrap_or_default();
        let opened = self.opened.remove(&c).unwrap_or(self.epoch_open);
        self.opened.retain(|k, _| *k > c);
        debug_assert!(opened <= now, "an epoch opened after its checkpoint completed");
        self.closed.remove(&c);
        self.older = self.restore.clone();
        let mut changes: BTreeMap<TaskId, BTreeMap<String, Option<String>>> = BTreeMap::new();
        for (task, slot) in &mut self.slots {
            let snapshot = match snapshots.get(task) {
                Some(s) => s,
                None if !slot.last_folded => {
                    slot.last_folded = true;
                    match &slot.last {
                        Some(s) => s,
                        None => continue,
                    }
                }
                None => continue,
            };
            if let Some(pos) = snapshot.source {
                self.restore.sources.insert(*task, pos);
            }
            self.restore.counts.insert(*task, snapshot.counts);
            if !snapshot.changes.is_empty() {
                let state = self.restore.state.entry(*task).or_default();
                let changed = changes.entry(*task).or_default();
                for (key, value) in &snapshot.changes {
                    match value {
                        Some(v) => state.insert(key.clone(), v.clone()),
                        None => state.remove(key),
                    };
                    changed.insert(key.clone(), value.clone());
                }
            }
        }
        self.restore.checkpoint = Some(c);
        if !cfg.bug(PlantedBug::CommitBeforeComplete) {
            let epoch = self.sink.take_closed(c);
            let ready = self.ready_epoch(epoch, changes, false, (opened, now));
            self.commits.push(ready);
        }
    }

    /// Epoch `epoch`, opened at `opened` and ready to commit at `ready`.
    fn ready_epoch(
        &self,
        epoch: super::sink::Epoch,
        changes: BTreeMap<TaskId, BTreeMap<String, Option<String>>>,
        last: bool,
        (opened, ready): (Time, Time),
    ) -> ReadyEpoch {
        let ages = vec![(opened, epoch.tuples.len() as u64)];
        ReadyEpoch {
            checkpoint: self.restore.checkpoint,
            attempt: self.attempt,
            epoch,
            sources: self.restore.sources.clone(),
            changes,
            counts: self.restore.counts.clone(),
            last,
            ages,
            ready_at: ready,
        }
    }

    /// Goes back to the newest complete checkpoint under a new attempt: tasks on members that
    /// are gone move, and every task is deployed again (after a pause when the cause is
    /// transient, so a cluster in flux is not hammered).
    fn rollback(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        members: &[MemberId],
        reason: String,
        cause: Cause,
        out: &mut Outbox,
    ) -> Result<(), String> {
        if cause == Cause::Task {
            self.failures += 1;
            if self.failures > cfg.max_task_failures {
                return Err(format!("tasks failed {} times; last: {reason}", self.failures));
            }
        }
        let old_hosts: BTreeSet<MemberId> = self.slots.values().map(|s| s.host).collect();
        self.attempt += 1;
        self.restarts += 1;
        self.base = self.issued;
        self.pending.clear();
        self.opened.clear();
        self.closed.clear();
        if cfg.bug(PlantedBug::StateFromOlderCheckpoint) {
            self.restore.state = self.older.state.clone();
        }
        self.sink.reset(self.attempt, &self.plan.stage(STAGES - 1));
        let lost = match cause {
            Cause::Member(member) => Some(member),
            Cause::Task | Cause::Transient => None,
        };
        out.event(RainstormEvent::RolledBack {
            job: self.plan.job,
            attempt: self.attempt,
            checkpoint: self.restore.checkpoint,
            reason,
            lost,
        });
        let live: BTreeSet<MemberId> = members.iter().copied().collect();
        let mut moved = Vec::new();
        for (task, slot) in &mut self.slots {
            slot.last = None;
            slot.last_folded = false;
            slot.completed = false;
            if slot.phase == SlotPhase::Unplaced || !live.contains(&slot.host) {
                if slot.phase != SlotPhase::Unplaced {
                    slot.moves += 1;
                }
                slot.phase = SlotPhase::Unplaced;
                moved.push(*task);
            } else {
                slot.phase = SlotPhase::Deploying;
            }
        }
        self.place_unplaced(members);
        for task in moved {
            let slot = &self.slots[&task];
            if slot.phase != SlotPhase::Unplaced {
                let (job, attempt, host) = (self.plan.job, self.attempt, slot.host);
                out.event(RainstormEvent::TaskScheduled { job, task, attempt, host, restart: true });
            }
        }
        let new_hosts: BTreeSet<MemberId> = self.slots.values().map(|s| s.host).collect();
        for host in old_hosts.difference(&new_hosts) {
            if live.contains(host) {
                out.send(host.addr, RainstormMsg::Stop { job: self.plan.job, before: self.attempt });
            }
        }
        match cause {
            // A file operation failed: the cluster is in flux; try again a little later.
            Cause::Transient => self.phase = JobPhase::Deploying { until: Some(now + cfg.retry) },
            Cause::Member(_) | Cause::Task => self.deploy_all(now, cfg, out),
        }
        Ok(())
    }

    fn stage_counts(&self) -> Vec<StageCounts> {
        (0..STAGES)
            .map(|stage| {
                let sum = self
                    .slots
                    .iter()
                    .filter(|(t, _)| t.stage == stage)
                    .fold(TupleCounts::default(), |sum, (_, s)| sum.add(s.counts.consumed, s.counts.emitted));
                StageCounts { stage, consumed: sum.consumed, emitted: sum.emitted }
            })
            .collect()
    }

    /// Where the job stands, for every member's directory.
    fn notice(&self, state: JobState) -> JobNotice {
        JobNotice {
            job: self.plan.job,
            term: term_of(self.attempt),
            leader: self.plan.leader,
            spec: self.spec.to_string(),
            dest: self.plan.dest.clone(),
            state,
            outputs: self.commits.outputs(),
            input_lines: self.input_lines,
            lines_read: lines_read(&self.stage_counts()),
            restarts: self.restarts,
            generation: self.commits.generation(),
        }
    }

    /// Tells the user the job's counts if they changed since it last did.
    fn report_progress(&mut self, out: &mut Outbox) {
        if !matches!(self.phase, JobPhase::Running | JobPhase::Draining | JobPhase::Deploying { .. }) {
            return;
        }
        let counts = (self.input_lines, self.stage_counts());
        if self.reported.as_ref() == Some(&counts) {
            return;
        }
        out.event(RainstormEvent::Progress {
            job: self.plan.job,
            input_lines: counts.0,
            stages: counts.1.clone(),
        });
        self.reported = Some(counts);
    }

    fn stop_all(&self, out: &mut Outbox) {
        let hosts: BTreeSet<MemberId> = self.slots.values().map(|s| s.host).collect();
        for h in hosts {
            let before = first_attempt(term_of(self.attempt).saturating_add(1));
            out.send(h.addr, RainstormMsg::Stop { job: self.plan.job, before });
        }
    }
}

/// Why a job rolls back: a failure of a task's own (counted against `max_task_failures`), of
/// a file operation (the next attempt waits a little), or of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    Task,
    Transient,
    /// The worker that left or was declared failed.
    Member(MemberId),
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
