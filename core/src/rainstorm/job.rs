//! What a job is: its identity, its spec, the plan every task gets, where its tasks run, and
//! what RainStorm reports about it.
//!
//! A job has three stages of `tasks` tasks each: stage 0 reads the input (sources), stages 1
//! and 2 run the two operators. Its leader (the node where it was submitted) places the tasks
//! on workers, coordinates its checkpoints, and is also the job's sink ([`SINK`]): the last
//! stage sends its outputs there, and the leader commits them to the destination file and
//! streams them to its console once the checkpoint after them is complete.
//!
//! Every placement of the whole job is an [`Attempt`]: a worker failure or a task failure
//! rolls the job back to its last complete checkpoint under a new attempt, and every message
//! between tasks names its attempt, so a receiver drops anything from another one.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::operator::{OperatorSpec, SpecError, StageOp};
use super::tuple::Tuple;
use crate::hydfs::{FileName, NameError};
use crate::id::MemberId;

/// One placement of a whole job; a rollback starts the next one. The high 32 bits are the
/// leadership term that placed it ([`first_attempt`]), so every attempt of a job's later leader
/// is above every attempt of the leaders before it.
pub type Attempt = u64;

/// A job's leadership term: 0 for the leader the job was submitted to, one more for each leader
/// that takes it over.
pub type Term = u32;

/// The first attempt of `term`: above every attempt of the terms before it.
pub fn first_attempt(term: Term) -> Attempt {
    (u64::from(term) << 32) | 1
}

/// The term that placed `attempt`.
pub fn term_of(attempt: Attempt) -> Term {
    (attempt >> 32) as Term
}
/// A checkpoint of a job: ids grow across attempts and are never reused.
pub type CheckpointId = u64;

/// Stages of a job: the source, then the two operators.
pub const STAGES: u8 = 3;

/// A task of a job: `stage` 0 is the source, 1.. the operator stages; `index` within the stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    pub stage: u8,
    pub index: u32,
}

/// `s<stage>-t<index>`.
impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}-t{}", self.stage, self.index)
    }
}

/// The sink: the job's leader, downstream of the last operator stage.
pub const SINK: TaskId = TaskId { stage: STAGES, index: 0 };

/// How many tuples a task has taken in and put out. A rolled-back task goes on from the counts
/// of the checkpoint it resumes from, so work redone after a rollback is counted once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleCounts {
    /// Input tuples processed (a source: input lines read).
    pub consumed: u64,
    /// Output tuples produced (a source: one per line read).
    pub emitted: u64,
}

impl TupleCounts {
    /// These counts plus `consumed` inputs that produced `emitted` outputs (saturating).
    pub fn add(self, consumed: u64, emitted: u64) -> TupleCounts {
        TupleCounts {
            consumed: self.consumed.saturating_add(consumed),
            emitted: self.emitted.saturating_add(emitted),
        }
    }
}

/// A job's identity: the leader's job counter and a tag of the leader's member id, so that jobs
/// of different leaders (or of one address across restarts) never share files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId {
    pub n: u32,
    pub tag: u32,
}

impl JobId {
    pub fn new(leader: MemberId, n: u32) -> JobId {
        let mut h: u32 = 0x811c_9dc5;
        let text = format!("{}/{}", leader.addr, leader.join_time);
        for b in text.bytes() {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
        JobId { n, tag: h & 0x00ff_ffff }
    }
}

/// `<n>-<tag>`, e.g. `3-a1f09c`.
impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:06x}", self.n, self.tag)
    }
}

/// `RainStorm <op1> <op2> <src> <dest> <num_tasks> [--rate <lines/s>]` as submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    pub op1: OperatorSpec,
    pub op2: OperatorSpec,
    pub src: FileName,
    pub dest: FileName,
    pub tasks: u32,
    /// Input lines per second over the whole job, at most (a paced source, as a live stream
    /// arrives); `None` reads as fast as the job goes.
    pub rate: Option<u64>,
}

impl fmt::Display for JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RainStorm {} {} {} {} {}", self.op1, self.op2, self.src, self.dest, self.tasks)?;
        if let Some(rate) = self.rate {
            write!(f, " --rate {rate}")?;
        }
        Ok(())
    }
}

/// Why a job cannot start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("num_tasks must be between 1 and {max}, not {found}")]
    BadTaskCount { found: u32, max: u32 },
    #[error("the source and the destination are the same file `{0}`")]
    SameFile(FileName),
    #[error("this node is not a member of a group: join first")]
    NotJoined,
    #[error("--rate must be at least 1 line per second")]
    BadRate,
    #[error("operator {stage}: {error}")]
    Spec { stage: u8, error: SpecError },
    #[error("bad file name: {0}")]
    Name(#[from] NameError),
    #[error("{}", super::config::PROGRAMS_REFUSED)]
    ProgramsRefused,
}

/// How one stage's outputs reach the next stage's tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    /// Task `i` feeds task `i` only, on the same worker: the next operator keeps no state by a
    /// key of its own (a stateless built-in, or a program keyed by the tuple key the previous
    /// stage gives each line), so no repartitioning is needed.
    Forward,
    /// By a stable hash of the next operator's state key, so every key has one task.
    Shuffle,
}

impl Route {
    /// How tuples reach the operator `next` from the stage before it. Source tuples have unique
    /// keys (`<file>:<line>`), so only a stateful built-in (which keys by something of its own)
    /// needs them shuffled; after an operator, a program (state by tuple key, which the stage
    /// before sets) and a stateful built-in do.
    pub fn into(next: &StageOp, from_source: bool) -> Route {
        match next {
            StageOp::Builtin(op) if !op.is_stateful() => Route::Forward,
            StageOp::Program(_) if from_source => Route::Forward,
            StageOp::Builtin(_) | StageOp::Program(_) => Route::Shuffle,
        }
    }
}

/// What every task of a job needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPlan {
    pub job: JobId,
    /// The member leading the job now (its sink): `origin` in term 0, a successor after.
    pub leader: MemberId,
    /// The member the job was submitted to, which its id names.
    pub origin: MemberId,
    /// The operator specs of stages 1 and 2, as text (parsed again by each worker).
    pub ops: [String; 2],
    pub src: FileName,
    pub dest: FileName,
    /// Tasks per stage.
    pub tasks: u32,
    /// The input's first row, against which operators resolve column names.
    pub header: Option<Vec<String>>,
    /// How stage 0 feeds stage 1, and stage 1 stage 2.
    pub routes: [Route; 2],
    /// Input lines per second per source task, at most.
    pub rate_per_source: Option<u64>,
}

impl JobPlan {
    /// The tasks of `stage`, in partition order.
    pub fn stage(&self, stage: u8) -> Vec<TaskId> {
        if stage >= STAGES {
            return vec![SINK];
        }
        (0..self.tasks).map(|index| TaskId { stage, index }).collect()
    }

    pub fn all_tasks(&self) -> impl Iterator<Item = TaskId> + '_ {
        (0..STAGES).flat_map(move |s| (0..self.tasks).map(move |index| TaskId { stage: s, index }))
    }

    /// The tasks `task` receives from.
    pub fn upstream(&self, task: TaskId) -> Vec<TaskId> {
        match task.stage {
            0 => Vec::new(),
            s if s >= STAGES => self.stage(STAGES - 1),
            s => match self.routes[(s - 1) as usize] {
                Route::Forward => vec![TaskId { stage: s - 1, index: task.index }],
                Route::Shuffle => self.stage(s - 1),
            },
        }
    }

    /// The tasks `task` sends to.
    pub fn downstream(&self, task: TaskId) -> Vec<TaskId> {
        match task.stage {
            s if s + 1 >= STAGES => vec![SINK],
            s => match self.routes[s as usize] {
                Route::Forward => vec![TaskId { stage: s + 1, index: task.index }],
                Route::Shuffle => self.stage(s + 1),
            },
        }
    }

    /// The operator of `stage` (1 or 2), built against the input's header.
    pub fn operator(&self, stage: u8) -> Result<StageOp, String> {
        let text = self.ops.get(usize::from(stage).wrapping_sub(1)).ok_or("no such stage")?;
        OperatorSpec::parse(text)
            .and_then(|s| s.build(self.header.as_deref()))
            .map_err(|e| format!("operator {stage} `{text}`: {e}"))
    }

    /// The job's files other than its destination: `rainstorm/<job>/...`. Each leadership term
    /// writes a log of its own (`checkpoints.g<gen>` in term 0, `checkpoints.t<term>.g<gen>`
    /// after), so a deposed leader never writes to its successor's.
    pub fn checkpoint_log(&self, term: Term, generation: u32) -> Result<FileName, NameError> {
        if term == 0 {
            FileName::new(&format!("rainstorm/{}/checkpoints.g{generation}", self.job))
        } else {
            FileName::new(&format!("rainstorm/{}/checkpoints.t{term}.g{generation}", self.job))
        }
    }

    /// The job as submitted, from its plan (what a successor runs it by).
    pub fn spec_of(plan: &JobPlan, rate: Option<u64>) -> Result<JobSpec, String> {
        let op = |i: usize| {
            OperatorSpec::parse(&plan.ops[i])
                .map_err(|e| format!("operator {} `{}`: {e}", i + 1, plan.ops[i]))
        };
        Ok(JobSpec {
            op1: op(0)?,
            op2: op(1)?,
            src: plan.src.clone(),
            dest: plan.dest.clone(),
            tasks: plan.tasks,
            rate,
        })
    }

    /// The input's parts as the job pinned them (`checkpoint::encode_manifest`).
    pub fn manifest_file(&self) -> Result<FileName, NameError> {
        FileName::new(&format!("rainstorm/{}/manifest", self.job))
    }
}

/// Which member runs each task in one attempt.
pub type Placement = BTreeMap<TaskId, MemberId>;

/// One stage's tuple counts: the sum of its tasks' latest reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageCounts {
    /// 0 for the sources, then the operator stages.
    pub stage: u8,
    /// Tuples the stage's tasks took in (the sources: input lines read).
    pub consumed: u64,
    /// Tuples the stage's tasks put out.
    pub emitted: u64,
}

/// Input lines the sources have read, from a job's stage counts.
pub fn lines_read(stages: &[StageCounts]) -> u64 {
    stages.iter().find(|s| s.stage == 0).map_or(0, |s| s.consumed)
}

/// What RainStorm reports to the node's user and driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RainstormEvent {
    /// Leader: a job was accepted.
    JobReceived { job: JobId, spec: String },
    /// Leader: a task was placed on a worker (`restart`: again, after a rollback moved it).
    TaskScheduled { job: JobId, task: TaskId, attempt: Attempt, host: MemberId, restart: bool },
    /// Worker: a task started processing in an attempt (`resumed`: from a checkpoint).
    TaskStarted { job: JobId, task: TaskId, attempt: Attempt, resumed: bool },
    /// Leader: a task processed all its input and sent all its outputs.
    TaskCompleted { job: JobId, task: TaskId },
    /// Leader: a task failed by itself (operator error, refused batch, unreadable input).
    TaskFailed { job: JobId, task: TaskId, attempt: Attempt, reason: String },
    /// Leader: the job went back to its last complete checkpoint and runs again as `attempt`.
    /// `lost`: the worker whose loss (a failure or a leave) caused it, if one did.
    RolledBack {
        job: JobId,
        attempt: Attempt,
        checkpoint: Option<CheckpointId>,
        reason: String,
        lost: Option<MemberId>,
    },
    /// Leader: outputs committed to the destination file, in order (each output exactly once
    /// over the whole job).
    Outputs { job: JobId, tuples: Vec<Tuple> },
    /// Leader: a checkpoint's epoch is durable (its record in the checkpoint log, its outputs,
    /// if any, in the destination): the job resumes from here or later. `outputs`: the job's
    /// outputs committed so far.
    Committed { job: JobId, checkpoint: Option<CheckpointId>, outputs: u64 },
    /// Leader: how far a job has got: its input's line count and per stage the tuples taken in
    /// and put out, as the tasks' latest reports say. At most once per status interval while
    /// the job runs, only when something changed, and once more, if anything changed, just
    /// before [`RainstormEvent::JobCompleted`].
    Progress { job: JobId, input_lines: u64, stages: Vec<StageCounts> },
    /// Leader: every output is in the destination file.
    JobCompleted { job: JobId, outputs: u64, restarts: u32 },
    /// Leader: the job cannot complete.
    JobFailed { job: JobId, reason: String },
    /// Leader: this node took the job over from `previous`, which left the group, as leader of
    /// `term`; it resumes from `checkpoint`, with `outputs` already in the destination.
    JobTakenOver {
        job: JobId,
        term: Term,
        previous: MemberId,
        checkpoint: Option<CheckpointId>,
        outputs: u64,
    },
    /// Leader: another leader sealed the job's destination, so this node no longer leads it and
    /// commits nothing more for it (it was declared failed while it still ran).
    JobDeposed { job: JobId, leader: MemberId, term: Term },
    /// Leader: this node stopped being a member of the group (declared failed, or it left), so
    /// the jobs it led end here; what reached the destination stays, exactly once.
    JobLost { job: JobId, reason: String },
    /// Worker: the job's leader is gone, so its tasks here were dropped.
    JobAbandoned { job: JobId, reason: String },
    /// Worker: a source task read input lines `first..=last` and sent them on (where a tuple's
    /// latency starts).
    SourceSent { job: JobId, task: TaskId, attempt: Attempt, first: u64, last: u64 },
}
