//! RainStorm settings (with the limit on received batches, [`RainstormConfig::check_batch`])
//! and, behind the `planted-bugs` feature, the deliberate bugs the simulator's checkers must
//! catch.

use super::journal::CompactionLimits;
use crate::time::Millis;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RainstormConfig {
    /// Input lines per source batch.
    pub batch_lines: u32,
    /// Batches in flight per link (backpressure: a full window stops the sender).
    pub window: usize,
    /// How long a sender waits for an acknowledgement before sending a batch again.
    pub retry: Millis,
    /// How often a task reports to its leader (and the leader re-sends what is unanswered).
    pub status_interval: Millis,
    /// How long a leader's answer lets a task act (send batches and acknowledgements): a task
    /// whose leader is silent this long stops acting, and a task taken from a member is placed
    /// again only once the old incarnation's lease has run out.
    pub lease: Millis,
    /// A journal starts a new generation (snapshot + tail) past this many records...
    pub compact_records: usize,
    /// ...or this many bytes since its last snapshot.
    pub compact_bytes: u64,
    /// Times a task may fail on its own (operator error, storage refusal) before the job fails.
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
    /// Deliberate bugs (tests only).
    #[serde(default)]
    pub planted: Option<PlantedBug>,
}

impl Default for RainstormConfig {
    fn default() -> Self {
        let limits = CompactionLimits::default();
        RainstormConfig {
            batch_lines: 64,
            window: 8,
            retry: Millis(1_000),
            status_interval: Millis(500),
            lease: Millis(2_000),
            compact_records: limits.max_records,
            compact_bytes: limits.max_bytes,
            max_task_failures: 3,
            max_tasks: 64,
            max_batch_tuples: 1 << 18,
            merge_output_appends: 1_000,
            planted: None,
        }
    }
}

impl RainstormConfig {
    pub fn limits(&self) -> CompactionLimits {
        CompactionLimits { max_records: self.compact_records, max_bytes: self.compact_bytes }
    }

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

/// A deliberate bug, each breaking exactly-once in a way a checker must report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlantedBug {
    /// A task acknowledges an input batch before its journal record is durable.
    AckBeforeJournal,
    /// A restarted task does not restore which input batches it processed (its receivers take
    /// up the sender's numbering wherever it is).
    ForgetsSeenIds,
    /// A restarted task takes its keyed state from the first snapshot it reads, dropping the
    /// state changes journaled after it.
    StateFromOldSnapshot,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 3] =
        [PlantedBug::AckBeforeJournal, PlantedBug::ForgetsSeenIds, PlantedBug::StateFromOldSnapshot];

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::AckBeforeJournal => "ack-before-journal",
            PlantedBug::ForgetsSeenIds => "forgets-seen-ids",
            PlantedBug::StateFromOldSnapshot => "state-from-old-snapshot",
        }
    }

    pub fn parse(s: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|b| b.name() == s)
    }
}
