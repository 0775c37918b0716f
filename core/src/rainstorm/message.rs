//! What RainStorm nodes say to each other: a leader to the workers running its job's tasks,
//! tasks to their leader, and tasks to each other (links).
//!
//! A leader deploys every task of an attempt with what it resumes from, lets them go once all
//! are ready, and starts checkpoints by telling the sources to emit a barrier. Tasks report
//! their phase and counts, and each checkpoint's snapshot. Between tasks, links carry numbered
//! [`Batch`]es: tuples, checkpoint barriers and the end of the stream, in order.
//!
//! Every message names its job and attempt; a receiver drops messages of an attempt it does
//! not run, so a task rolled back (or wrongly thought dead) can change nothing in its
//! successor's attempt.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::directory::JobNotice;
use super::input::{Manifest, SourcePos};
use super::job::{Attempt, CheckpointId, JobId, JobPlan, Placement, TaskId, TupleCounts};
use super::link::LinkSeq;
use super::tuple::{Tuple, TUPLE_OVERHEAD_BYTES};
use crate::node::Lane;

/// What a link carries, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Batch {
    /// Shared, not copied, between the message sent and the sender's copy kept for resending
    /// (on the wire it is the list itself).
    Tuples(Arc<Vec<Tuple>>),
    /// Everything before this belongs to checkpoint `id` and earlier.
    Barrier(CheckpointId),
    /// The sender has no more tuples.
    End,
}

impl Batch {
    /// Bytes the batch takes in windows and buffers, roughly.
    pub fn weight(&self) -> usize {
        match self {
            Batch::Tuples(tuples) => TUPLE_OVERHEAD_BYTES + tuples.iter().map(Tuple::weight).sum::<usize>(),
            Batch::Barrier(_) | Batch::End => TUPLE_OVERHEAD_BYTES,
        }
    }
}

/// What travels on a link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMsg {
    Batch {
        seq: LinkSeq,
        batch: Batch,
    },
    /// The receiver took every batch up to `upto`.
    Ack {
        upto: LinkSeq,
    },
}

/// Where a source resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceCheckpoint {
    /// At the start of its range (nothing of it read yet).
    Start,
    /// At this line.
    At(SourcePos),
    /// Its range was read to the end.
    Done,
}

/// What a task resumes from when it is deployed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// Sources: where to read from (`None`: the start of the range).
    pub source: Option<SourceCheckpoint>,
    /// Operator tasks: their keyed state.
    pub state: Vec<(String, String)>,
    pub counts: TupleCounts,
}

/// A task's part of one checkpoint: what changed since its previous snapshot in this attempt
/// (or since what it was deployed with).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Sources: where the next line starts.
    pub source: Option<SourceCheckpoint>,
    /// Operator tasks: keyed-state changes (`None` deletes).
    pub changes: Vec<(String, Option<String>)>,
    pub counts: TupleCounts,
}

/// A task's phase as it reports it to its leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskPhase {
    /// Setting up (starting its operator program).
    Starting,
    /// Set up; waiting for the leader's go.
    Ready,
    Running,
    /// It sent its end of stream; `last` is its final snapshot (counts it as part of every
    /// checkpoint it did not see a barrier of).
    Finished {
        last: Snapshot,
    },
    /// It cannot go on. `transient`: a file operation failed (the cluster is in flux), so the
    /// next attempt may succeed; otherwise the operator or its input is at fault.
    Failed {
        reason: String,
        transient: bool,
    },
}

/// Messages between a job's leader and its workers, and between tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RainstormMsg {
    /// Leader → every member: where one of its jobs stands (`directory.rs`).
    Announce(Box<JobNotice>),
    /// Any member → the member it takes for a job's successor: the job's latest notice, whose
    /// leader is gone (the successor may have joined after the last announcement).
    Orphan(Box<JobNotice>),
    /// Leader → worker: run `task` in `attempt`, resuming from `restore`; checkpoint ids above
    /// `base` are this attempt's. Sources also get the input's manifest. Re-sent until the task
    /// reports in this attempt.
    Deploy {
        plan: Box<JobPlan>,
        attempt: Attempt,
        task: TaskId,
        placement: Placement,
        restore: Restore,
        base: CheckpointId,
        manifest: Option<Manifest>,
    },
    /// Task → leader, on every phase change and every status interval, with the snapshots the
    /// leader has not confirmed yet.
    Status {
        job: JobId,
        attempt: Attempt,
        task: TaskId,
        phase: TaskPhase,
        counts: TupleCounts,
        snapshots: Vec<(CheckpointId, Snapshot)>,
    },
    /// Leader → task: the answer to a status, and a push when the attempt goes or a checkpoint
    /// starts. `trigger`: sources emit barriers up to this checkpoint; `confirmed`: the leader
    /// has every snapshot up to this one.
    Control {
        job: JobId,
        attempt: Attempt,
        task: TaskId,
        go: bool,
        /// A source's pace: how long before this attempt's go its leader's first go to the job
        /// was, in ms.
        paced_ms: u64,
        trigger: CheckpointId,
        confirmed: CheckpointId,
    },
    /// Task → leader: its snapshot of checkpoint `checkpoint`, as soon as it took it.
    Snapshot { job: JobId, attempt: Attempt, task: TaskId, checkpoint: CheckpointId, snapshot: Snapshot },
    /// Leader → worker: the tasks of `job` of attempts before `before` stop, and those attempts
    /// never run there again. A leader ending a job bars every attempt of its term
    /// (`first_attempt(term + 1)`), so a later leader of the job can still place tasks there.
    Stop { job: JobId, before: Attempt },
    /// Task → task (or sink): a batch or an acknowledgement within one attempt.
    Link { job: JobId, attempt: Attempt, from: TaskId, to: TaskId, msg: LinkMsg },
}

impl RainstormMsg {
    /// The connection lane the message travels on: a link's batches (tuples, and the barriers
    /// and end of stream numbered among them) on [`Lane::Data`], everything else (deploys,
    /// status reports, checkpoint control and snapshots, stops, acknowledgements) on
    /// [`Lane::Control`], so that neither a stream of batches nor a HyDFS transfer delays a
    /// job's coordination.
    pub fn lane(&self) -> Lane {
        match self {
            RainstormMsg::Link { msg: LinkMsg::Batch { .. }, .. } => Lane::Data,
            RainstormMsg::Link { msg: LinkMsg::Ack { .. }, .. }
            | RainstormMsg::Deploy { .. }
            | RainstormMsg::Status { .. }
            | RainstormMsg::Control { .. }
            | RainstormMsg::Snapshot { .. }
            | RainstormMsg::Stop { .. }
            | RainstormMsg::Announce(_)
            | RainstormMsg::Orphan(_) => Lane::Control,
        }
    }

    /// Whether this asks something of its receiver (counted against the sender's request
    /// rate), as opposed to answering or acknowledging.
    pub fn is_request(&self) -> bool {
        !matches!(self, RainstormMsg::Link { msg: LinkMsg::Ack { .. }, .. })
    }
}
