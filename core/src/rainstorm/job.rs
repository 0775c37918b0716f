//! What a job is and what RainStorm nodes say to each other about it.
//!
//! A job has three stages of `tasks` tasks each: stage 0 reads the input (sources), stages 1
//! and 2 run the two operators. Its leader (the node where it was submitted) places the tasks on
//! workers, restarts them when membership declares their worker failed, and is also the job's
//! sink ([`SINK`]): the last stage sends its outputs there, and the leader appends each one to
//! the destination file once and streams it to its console.
//!
//! Every placement of a task is an *incarnation* with its own [`Epoch`]; links carry both ends'
//! epochs and a receiver drops anything from or to another incarnation than the one its
//! placement names. A task restarted from its journal only starts once every neighbour has the
//! new placement, and once the old incarnation's lease has run out: a task acts (sends batches
//! and acknowledgements) only within a lease its leader granted in answer to one of its status
//! reports, counted from when it sent that report. So an incarnation wrongly thought dead, even
//! one talking only to other such incarnations, can change nothing once its successor reads its
//! journal: whatever it journals later is never read, and nothing it did after is seen.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::journal::{journal_name, LinkSeq, TaskId, TupleCounts};
use super::operator::{OperatorSpec, SpecError};
use super::task::LinkMsg;
use super::tuple::Tuple;
use crate::hydfs::{FileName, NameError};
use crate::id::MemberId;
use crate::node::Lane;

/// One incarnation of a task (0 is the sink's, which never moves).
pub type Epoch = u32;

/// Stages of a job: the source, then the two operators.
pub const STAGES: u8 = 3;
/// The sink: the job's leader, downstream of the last operator stage.
pub const SINK: TaskId = TaskId { stage: STAGES, index: 0 };

/// A job's identity: the leader's job counter and a tag of the leader's member id, so that jobs
/// of different leaders (or of one address across restarts) never share journal files.
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

/// `RainStorm <op1> <op2> <src> <dest> <num_tasks>` as submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    pub op1: OperatorSpec,
    pub op2: OperatorSpec,
    pub src: FileName,
    pub dest: FileName,
    pub tasks: u32,
}

impl fmt::Display for JobSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RainStorm {} {} {} {} {}", self.op1, self.op2, self.src, self.dest, self.tasks)
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
    #[error("operator {stage}: {error}")]
    Spec { stage: u8, error: SpecError },
    #[error("bad file name: {0}")]
    Name(#[from] NameError),
}

/// What every task of a job needs to know about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPlan {
    pub job: JobId,
    pub leader: MemberId,
    /// The operator specs of stages 1 and 2, as text (parsed again by each worker).
    pub ops: [String; 2],
    pub src: FileName,
    pub dest: FileName,
    /// Tasks per stage.
    pub tasks: u32,
    pub batch_lines: u32,
    /// The input's first row, against which operators resolve column names.
    pub header: Option<Vec<String>>,
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

    /// The journal file of generation `generation` of incarnation `epoch` of `task`.
    pub fn journal(&self, task: TaskId, at: JournalPos) -> Result<FileName, NameError> {
        journal_name(&self.job.to_string(), task, at.epoch, at.generation)
    }
}

/// Where a task's journal stands: incarnation and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JournalPos {
    pub epoch: Epoch,
    pub generation: u32,
}

/// Which member runs which incarnation of every task (the sink included), versioned so that a
/// newer placement always wins.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub version: u64,
    pub tasks: BTreeMap<TaskId, (MemberId, Epoch)>,
}

/// A task's phase as it reports it to its leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskPhase {
    /// Reading its input or journal, writing its first journal record.
    Recovering,
    /// Its journal is set up; it waits for the leader's go.
    Ready,
    /// Processing; its journal is at `generation`; `counts` so far.
    Running { generation: u32, counts: TupleCounts },
    /// Everything processed and acknowledged; the last batch number sent on each link, and
    /// the final counts.
    Finished { generation: u32, last: Vec<(TaskId, LinkSeq)>, counts: TupleCounts },
    /// It cannot go on. `transient`: a file operation failed (the cluster is in flux), so a new
    /// incarnation may succeed; otherwise the operator or the journal itself is at fault.
    Failed { reason: String, transient: bool },
}

/// Messages between a job's leader and its workers, and between tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RainstormMsg {
    /// Leader → worker: run incarnation `epoch` of `task`, recovering from `recover` if given.
    /// Re-sent until the worker reports on it.
    Assign {
        plan: Box<JobPlan>,
        task: TaskId,
        epoch: Epoch,
        host: MemberId,
        placement: Placement,
        recover: Option<JournalPos>,
    },
    /// Worker → leader, on every change and every status interval.
    /// `nonce` names this report: a `Control` answering it grants a lease counted from when
    /// the task sent it.
    Status {
        job: JobId,
        task: TaskId,
        epoch: Epoch,
        phase: TaskPhase,
        placement: u64,
        ended_known: u32,
        nonce: u64,
    },
    /// Leader → worker: the answer to a status (and a push when the placement changes).
    Control {
        job: JobId,
        task: TaskId,
        epoch: Epoch,
        go: bool,
        placement: Option<Placement>,
        /// Upstream tasks that have finished, with the last batch number they sent this task.
        ended: Vec<(TaskId, LinkSeq)>,
        /// The status this answers (0: a push that grants no lease).
        nonce: u64,
    },
    /// Leader → worker: this incarnation (or, with no task, the whole job) is over.
    Stop { job: JobId, task: Option<(TaskId, Epoch)> },
    /// Task → task (or sink): a batch or an acknowledgement between two incarnations.
    Link { job: JobId, from: (TaskId, Epoch), to: (TaskId, Epoch), msg: LinkMsg },
}

impl RainstormMsg {
    /// The lane this message travels on: tuple batches on [`Lane::Data`], everything else
    /// (assignments, status reports and answers, stops, acknowledgements) on [`Lane::Control`],
    /// so that neither a stream of batches nor a HyDFS transfer delays a job's coordination.
    pub fn lane(&self) -> Lane {
        match self {
            RainstormMsg::Link { msg: LinkMsg::Batch { .. }, .. } => Lane::Data,
            RainstormMsg::Link { msg: LinkMsg::Ack { .. }, .. }
            | RainstormMsg::Assign { .. }
            | RainstormMsg::Status { .. }
            | RainstormMsg::Control { .. }
            | RainstormMsg::Stop { .. } => Lane::Control,
        }
    }
}

/// One stage's tuple counts: the sum of its tasks' latest reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageCounts {
    /// 0 for the sources, then the operator stages.
    pub stage: u8,
    /// Tuples the stage's tasks took in (the sources: input lines read and sent).
    pub consumed: u64,
    /// Tuples the stage's tasks put out.
    pub emitted: u64,
}

/// Input lines the sources have read and sent, from a job's stage counts.
pub fn lines_read(stages: &[StageCounts]) -> u64 {
    stages.iter().find(|s| s.stage == 0).map_or(0, |s| s.consumed)
}

/// What RainStorm reports to the node's user and driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RainstormEvent {
    /// Leader: a job was accepted.
    JobReceived { job: JobId, spec: String },
    /// Leader: an incarnation of a task was placed on a worker.
    TaskScheduled { job: JobId, task: TaskId, epoch: Epoch, host: MemberId, restart: bool },
    /// Worker: an incarnation started processing (its journal recovered and set up).
    TaskStarted { job: JobId, task: TaskId, epoch: Epoch, recovered_records: usize },
    /// Leader: a task processed all its input and every output was acknowledged.
    TaskCompleted { job: JobId, task: TaskId },
    /// Leader: a task failed by itself (operator error, storage refusal).
    TaskFailed { job: JobId, task: TaskId, epoch: Epoch, reason: String },
    /// Leader: one output, appended to the destination file (exactly once per output).
    Output { job: JobId, tuple: Tuple },
    /// Leader: how far a job has got: its input's line count (0 until read) and per stage the
    /// tuples taken in and put out, as the tasks' latest status reports say. At most once per
    /// status interval while the job runs, only when something changed, and once more, if
    /// anything changed, just before [`RainstormEvent::JobCompleted`].
    Progress { job: JobId, input_lines: u64, stages: Vec<StageCounts> },
    /// Leader: every output is in the destination file.
    JobCompleted { job: JobId, outputs: u64, restarts: u32 },
    /// Leader: the job cannot complete.
    JobFailed { job: JobId, reason: String },
    /// Leader: this node stopped being a member of the group (declared failed, or it left), so
    /// the jobs it led end here; what reached the destination stays, exactly once.
    JobLost { job: JobId, reason: String },
    /// Worker: the job's leader is gone, so its tasks here were dropped.
    JobAbandoned { job: JobId, reason: String },
    /// Worker: a source task sent input lines `first..=last` for the first time (where a
    /// tuple's latency starts).
    SourceSent { job: JobId, task: TaskId, epoch: Epoch, first: u64, last: u64 },
}
