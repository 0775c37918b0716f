//! RainStorm settings (with the limit on received batches, [`RainstormConfig::check_batch`])
//! and, behind the `planted-bugs` feature, the deliberate bugs the simulator's checkers must
//! catch.
//!
//! The defaults are the fast, safe settings: exactly-once always holds; these trade latency
//! (how often progress is made durable, how long a partial batch may wait) against per-message
//! and per-write overheads, and bound every buffer a job keeps on a node.

use crate::time::Millis;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RainstormConfig {
    /// How often a leader starts a checkpoint of each job it leads. Outputs reach the
    /// destination (and the console) when the checkpoint after them is complete and committed,
    /// so this bounds their latency; each checkpoint costs one barrier per link and, at most,
    /// two HyDFS appends (the checkpoint record and the outputs), grouped when commits lag.
    pub checkpoint_interval: Millis,
    /// Checkpoints started and not yet complete, at most (a slow pipeline gets fewer, larger
    /// ones).
    pub max_pending_checkpoints: u32,
    /// A batch between tasks is sent once it holds this many bytes of tuples...
    pub batch_bytes: u32,
    /// ...or this many tuples...
    pub batch_tuples: u32,
    /// ...or once its first tuple has waited this long (a task coalesces its outputs for each
    /// downstream task across its input batches).
    pub linger: Millis,
    /// Batches in flight per link, at most (backpressure: a full window stops the sender)...
    pub window: u32,
    /// ...and bytes in flight per link, at most (one batch is always allowed).
    pub window_bytes: u32,
    /// How long a sender waits for an acknowledgement before sending a batch again.
    pub retry: Millis,
    /// How often a task reports to its leader (and the leader re-sends what is unanswered).
    pub status_interval: Millis,
    /// Input parts (of at most one HyDFS chunk each) a source reads ahead.
    pub read_ahead: u32,
    /// Batches out at one operator program at a time.
    pub program_window: u32,
    /// Outputs a leader holds for a job, in bytes (tuple weights plus destination lines):
    /// epochs waiting for their checkpoints or commits may hold this much, above which the sink
    /// takes no more batches until commits catch up; the open epoch may hold a quarter of it
    /// before the next checkpoint starts at once (and, while no barrier is on its way, the sink
    /// pauses).
    pub sink_buffer_bytes: u64,
    /// A job's checkpoint log starts a new generation (one full record) after this many
    /// records.
    pub compact_records: u32,
    /// Times a job's tasks may fail on their own (operator error, a refused batch) before the
    /// job fails; failures of file operations and of members do not count.
    pub max_task_failures: u32,
    /// Tasks per stage accepted by `RainStorm`.
    pub max_tasks: u32,
    /// Tuples one received batch may hold (a task's input, or a job's outputs at its leader);
    /// a task receiving a larger batch fails with [`BatchError`] instead of processing it. A
    /// batch's bytes are bounded by the stream frame limit. 0 means unlimited.
    pub max_batch_tuples: u32,
    /// A leader merges its job's destination file after this many appends, which keeps the
    /// file's pending appends far below HyDFS's `max_pending_appends`. 0 means never.
    pub merge_output_appends: u32,
    /// How long after a job's leader left the group (or was declared failed) its successor takes
    /// it over: time for every member's view to agree on who left, so that one successor does.
    /// (Two that did anyway are settled by the seal on the job's destination.)
    pub takeover_delay: Millis,
    /// Whether this node runs operator programs (its own jobs' and other leaders'): code from
    /// whoever can reach it, so a node runs them only in a cluster with a key, unless its
    /// operator allows them without one. Off, a job with a program is refused at its leader
    /// and a task with one fails at its worker, with [`PROGRAMS_REFUSED`].
    pub run_programs: bool,
    /// Deliberate bugs (tests only).
    #[serde(default)]
    pub planted: Option<PlantedBug>,
    /// How many replicas a successor's merge of a job's files must cover before it reads them:
    /// HyDFS's copies per write (the node sets it from its HyDFS settings). A merge on fewer may
    /// miss an append acknowledged by copies it did not reach.
    #[serde(skip)]
    pub merge_copies: usize,
}

/// Why a node does not run operator programs: the setting that allows them.
pub const PROGRAMS_REFUSED: &str = "this node runs no operator programs without a cluster key \
     (set cluster_key_file, or rainstorm.allow_programs_without_key = true to run them anyway)";

impl Default for RainstormConfig {
    fn default() -> Self {
        RainstormConfig {
            checkpoint_interval: Millis(25),
            max_pending_checkpoints: 2,
            batch_bytes: 64 * 1024,
            batch_tuples: 1024,
            linger: Millis(5),
            window: 8,
            window_bytes: 1 << 20,
            retry: Millis(500),
            status_interval: Millis(500),
            read_ahead: 4,
            program_window: 4,
            sink_buffer_bytes: 16 << 20,
            compact_records: 1_000,
            max_task_failures: 3,
            max_tasks: 64,
            max_batch_tuples: 1 << 18,
            merge_output_appends: 1_000,
            takeover_delay: Millis(1_000),
            run_programs: false,
            planted: None,
            merge_copies: 3,
        }
    }
}

impl RainstormConfig {
    /// Whether a received batch of `tuples` tuples is within `max_batch_tuples`.
    pub fn check_batch(&self, tuples: usize) -> Result<(), BatchError> {
        let limit = self.max_batch_tuples;
        if limit > 0 && tuples > limit as usize {
            return Err(BatchError::TooManyTuples { tuples, limit });
        }
        Ok(())
    }

    pub(crate) fn bug(&self, bug: PlantedBug) -> bool {
        cfg!(feature = "planted-bugs") && self.planted == Some(bug)
    }
}

/// Why a received batch was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("a batch of {tuples} tuples is over the {limit}-tuple limit (max_batch_tuples)")]
    TooManyTuples { tuples: usize, limit: u32 },
}

/// A deliberate bug, each breaking exactly-once (or a bound) in a way a checker must report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlantedBug {
    /// The leader commits an epoch's outputs as soon as the sink has them, before every task's
    /// snapshot of that checkpoint is in: a rollback then replays outputs already committed.
    CommitBeforeComplete,
    /// A source resumes one line past its checkpointed position: a line is lost.
    SourceSkipsALine,
    /// The sink takes batches from any attempt of a task, not only the current one: outputs of
    /// an attempt that was rolled back reach the destination.
    SinkTakesOldAttempts,
    /// A rolled-back job restores keyed state from the checkpoint before the one it resumes
    /// from: counts go backwards.
    StateFromOlderCheckpoint,
    /// Tasks send every input batch's outputs at once instead of coalescing them per
    /// downstream task: batches grow with tasks squared.
    NoCoalescing,
    /// Sources read their whole range ahead instead of `read_ahead` parts: memory grows with
    /// the input.
    UnboundedReadAhead,
    /// The leader leaves a finished job's checkpoint log in HyDFS.
    KeepsJobFiles,
    /// The leader ignores the size of a job's open epoch: while commits lag, no checkpoint
    /// closes it and the sink never pauses for it, so it grows with the input.
    OpenEpochUnbounded,
    /// The leader appends the outputs of its first commit that has any to the destination a
    /// second time once the first append is acknowledged, as a retry under a new stamp would (HyDFS recognises a
    /// retried write only by its stamp): the destination holds those lines twice, while the
    /// console reports them once.
    OutputAppendedTwice,
    /// The leader never commits a job's last epoch (what the sink holds once every stream has
    /// ended), so the job never completes.
    LastEpochNeverCommitted,
    /// A successor resumes a job it takes over from the record before the one the
    /// destination's length gives: the outputs of that last commit reach the destination twice.
    TakeoverFromStalePoint,
    /// A successor takes a job over without sealing its destination: a leader declared failed
    /// while it still runs keeps committing, next to its successor.
    TakeoverWithoutFence,
    /// A successor reads the job's files after a merge on fewer copies than a write takes
    /// (copies new to the file, the ones holding the last appends out of its view): it misses
    /// outputs its predecessor had acknowledged and produces them again.
    TakeoverOnAPartialMerge,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 13] = [
        PlantedBug::CommitBeforeComplete,
        PlantedBug::SourceSkipsALine,
        PlantedBug::SinkTakesOldAttempts,
        PlantedBug::StateFromOlderCheckpoint,
        PlantedBug::NoCoalescing,
        PlantedBug::UnboundedReadAhead,
        PlantedBug::KeepsJobFiles,
        PlantedBug::OpenEpochUnbounded,
        PlantedBug::OutputAppendedTwice,
        PlantedBug::LastEpochNeverCommitted,
        PlantedBug::TakeoverFromStalePoint,
        PlantedBug::TakeoverWithoutFence,
        PlantedBug::TakeoverOnAPartialMerge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::CommitBeforeComplete => "commit-before-complete",
            PlantedBug::SourceSkipsALine => "source-skips-a-line",
            PlantedBug::SinkTakesOldAttempts => "sink-takes-old-attempts",
            PlantedBug::StateFromOlderCheckpoint => "state-from-older-checkpoint",
            PlantedBug::NoCoalescing => "no-coalescing",
            PlantedBug::UnboundedReadAhead => "unbounded-read-ahead",
            PlantedBug::KeepsJobFiles => "keeps-job-files",
            PlantedBug::OpenEpochUnbounded => "open-epoch-unbounded",
            PlantedBug::OutputAppendedTwice => "output-appended-twice",
            PlantedBug::LastEpochNeverCommitted => "last-epoch-never-committed",
            PlantedBug::TakeoverFromStalePoint => "takeover-from-stale-point",
            PlantedBug::TakeoverWithoutFence => "takeover-without-fence",
            PlantedBug::TakeoverOnAPartialMerge => "takeover-on-a-partial-merge",
        }
    }

    pub fn parse(s: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|b| b.name() == s)
    }
}
