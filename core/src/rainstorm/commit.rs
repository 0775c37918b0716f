//! A leader's commits of one job: each complete checkpoint's epoch of outputs goes to the
//! destination file, after the job's state as of that checkpoint is in the checkpoint log.
//!
//! One commit at a time: first a [`Record::Commit`] appended to the log, then the outputs
//! appended to the destination (one append), then the outputs are reported (the console sees
//! them). Epochs that complete while a commit is out wait, and the next commit takes all of
//! them at once (up to a size), so a slow HyDFS makes fewer, larger commits instead of a
//! queue. Both appends are HyDFS `Persist` writes: retried with one stamp until acknowledged,
//! never abandoned, so an epoch's outputs land once.
//!
//! Invariants kept here:
//! * epochs are committed in checkpoint order, each once, never before its record is durable;
//! * the log's records never go backwards (checkpoint, outputs, destination bytes);
//! * past `compact_records` records the log moves to a new generation starting with one full
//!   record, and only then is the old generation deleted.

use std::collections::{BTreeMap, VecDeque};

use super::checkpoint::{encode, LogState, Record};
use super::job::{Attempt, CheckpointId, JobPlan, TaskId, Term, TupleCounts};
use super::message::SourceCheckpoint;
use super::sink::Epoch;
use super::tuple::Tuple;
use crate::hydfs::{ClientOp, WriteKind};
use crate::time::Time;

/// Outputs of one commit, at most (more wait for the next one), unless one epoch is larger.
const COMMIT_BYTES: usize = 4 << 20;

/// An epoch whose checkpoint is complete, with the job's state as of it.
pub(super) struct ReadyEpoch {
    pub checkpoint: Option<CheckpointId>,
    pub attempt: Attempt,
    pub epoch: Epoch,
    pub sources: BTreeMap<TaskId, SourceCheckpoint>,
    pub changes: BTreeMap<TaskId, BTreeMap<String, Option<String>>>,
    pub counts: BTreeMap<TaskId, TupleCounts>,
    /// The job's last epoch: every output is in it.
    pub last: bool,
    /// Per epoch combined here: when it opened and how many outputs it holds (each output came
    /// from input read since its epoch opened).
    pub ages: Vec<(Time, u64)>,
    /// When the first epoch combined here was ready to commit.
    pub ready_at: Time,
}

/// What a commit's HyDFS write was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CommitIo {
    Record,
    Output,
    /// A new log generation was created; the old one can go.
    Rollover,
}

enum InFlight {
    Record(ReadyEpoch),
    Output(ReadyEpoch),
    Rollover,
}

/// Outputs committed just now.
pub(super) struct Committed {
    pub tuples: Vec<Tuple>,
    pub last: bool,
    pub ages: Vec<(Time, u64)>,
    pub ready_at: Time,
}

pub(super) struct Commits {
    ready: VecDeque<ReadyEpoch>,
    in_flight: Option<InFlight>,
    /// The log as committed so far, the leader's term and generation it is in, and records in it.
    log: LogState,
    term: Term,
    generation: u32,
    compact_records: u32,
    /// Destination appends since its last merge.
    pub appends_since_merge: u32,
    pub merging: Option<u32>,
    /// The last epoch was committed.
    pub done: bool,
    /// Planted bug `OutputAppendedTwice`: the next acknowledged output append is made again.
    pub repeat_next_output: bool,
}

impl Commits {
    pub fn new(log: LogState, compact_records: u32, term: Term) -> Commits {
        Commits {
            ready: VecDeque::new(),
            in_flight: None,
            log,
            term,
            generation: 0,
            compact_records: compact_records.max(2),
            appends_since_merge: 0,
            merging: None,
            done: false,
            repeat_next_output: false,
        }
    }

    /// The log's first record is written: commits fold onto it from now on.
    pub fn start_log(&mut self, log: LogState) {
        debug_assert!(
            self.log.records == 0 && self.ready.is_empty() && self.in_flight.is_none(),
            "the log starts before anything is committed"
        );
        self.log = log;
    }

    pub fn push(&mut self, epoch: ReadyEpoch) {
        debug_assert!(!self.done, "an epoch after the last one");
        debug_assert!(
            self.ready.back().is_none_or(|r| r.checkpoint <= epoch.checkpoint),
            "epochs committed out of order"
        );
        self.ready.push_back(epoch);
    }

    /// Outputs committed so far.
    pub fn outputs(&self) -> u64 {
        self.log.outputs
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The name of the log generation commits go to now.
    pub fn log_name(&self, plan: &JobPlan) -> Result<crate::hydfs::FileName, crate::hydfs::NameError> {
        plan.checkpoint_log(self.term, self.generation)
    }

    /// The newest checkpoint whose outputs are committed.
    pub fn committed(&self) -> Option<CheckpointId> {
        self.log.checkpoint
    }

    /// Whether a complete epoch waits behind the commit in flight: a checkpoint started now
    /// would only join it, so the leader starts the next one when this clears (checkpoints
    /// then follow the commits' pace, never the other way round).
    pub fn backlogged(&self) -> bool {
        self.in_flight.is_some() && !self.ready.is_empty()
    }

    /// Weight of the outputs waiting to be committed (or being committed).
    pub fn waiting_weight(&self) -> usize {
        let flight = match &self.in_flight {
            Some(InFlight::Record(r) | InFlight::Output(r)) => r.epoch.weight(),
            Some(InFlight::Rollover) | None => 0,
        };
        flight + self.ready.iter().map(|r| r.epoch.weight()).sum::<usize>()
    }

    /// The next write, if none is out: a record for the epochs ready (combined), or a log
    /// rollover when the generation is full and nothing waits.
    pub fn next(&mut self, plan: &JobPlan) -> Result<Option<(ClientOp, CommitIo)>, String> {
        if self.in_flight.is_some() {
            return Ok(None);
        }
        let Some(mut combined) = self.ready.pop_front() else {
            if self.log.records >= self.compact_records as usize {
                return self.rollover(plan).map(Some);
            }
            return Ok(None);
        };
        while combined.epoch.bytes.len() < COMMIT_BYTES {
            let Some(next) = self.ready.pop_front() else { break };
            combined = combine(combined, next);
        }
        let record = Record::Commit {
            checkpoint: combined.checkpoint,
            attempt: combined.attempt,
            sources: combined.sources.iter().map(|(t, s)| (*t, *s)).collect(),
            changes: combined.changes.iter().map(|(t, c)| (*t, c.clone().into_iter().collect())).collect(),
            counts: combined.counts.iter().map(|(t, c)| (*t, *c)).collect(),
            outputs: self.log.outputs + combined.epoch.tuples.len() as u64,
            dest_bytes: self.log.dest_bytes + combined.epoch.bytes.len() as u64,
            last: combined.last,
        };
        let bytes = encode(&record).map_err(|e| format!("cannot write the checkpoint log: {e}"))?;
        self.log.apply(&record).map_err(|e| format!("checkpoint log record refused: {e}"))?;
        let name = plan.checkpoint_log(self.term, self.generation).map_err(|e| e.to_string())?;
        self.in_flight = Some(InFlight::Record(combined));
        Ok(Some((ClientOp::Persist { name, kind: WriteKind::Append, data: bytes }, CommitIo::Record)))
    }

    fn rollover(&mut self, plan: &JobPlan) -> Result<(ClientOp, CommitIo), String> {
        let full = self.log.full().ok_or("the checkpoint log has no job record")?;
        let bytes = encode(&full).map_err(|e| format!("cannot write the checkpoint log: {e}"))?;
        let name = plan.checkpoint_log(self.term, self.generation + 1).map_err(|e| e.to_string())?;
        self.in_flight = Some(InFlight::Rollover);
        Ok((ClientOp::Persist { name, kind: WriteKind::Create, data: bytes }, CommitIo::Rollover))
    }

    /// A commit write was acknowledged. Returns the next write of the same commit (the outputs
    /// after the record), or what was committed; and for a rollover, the old log to delete.
    pub fn on_done(&mut self, plan: &JobPlan, io: CommitIo) -> Result<Step, String> {
        match (io, self.in_flight.take()) {
            (CommitIo::Record, Some(InFlight::Record(epoch))) => {
                if epoch.epoch.bytes.is_empty() {
                    return Ok(self.committed_epoch(epoch));
                }
                let data = epoch.epoch.bytes.clone();
                let op = ClientOp::Persist { name: plan.dest.clone(), kind: WriteKind::Append, data };
                self.in_flight = Some(InFlight::Output(epoch));
                Ok(Step::Write(op, CommitIo::Output))
            }
            (CommitIo::Output, Some(InFlight::Output(epoch))) => {
                self.appends_since_merge = self.appends_since_merge.saturating_add(1);
                if std::mem::take(&mut self.repeat_next_output) {
                    // Planted: the same outputs appended again, as a new write.
                    let data = epoch.epoch.bytes.clone();
                    let op = ClientOp::Persist { name: plan.dest.clone(), kind: WriteKind::Append, data };
                    self.in_flight = Some(InFlight::Output(epoch));
                    return Ok(Step::Write(op, CommitIo::Output));
                }
                Ok(self.committed_epoch(epoch))
            }
            (CommitIo::Rollover, Some(InFlight::Rollover)) => {
                let old = plan.checkpoint_log(self.term, self.generation).map_err(|e| e.to_string())?;
                self.generation += 1;
                self.log.records = 1;
                Ok(Step::Delete(old))
            }
            (io, other) => {
                self.in_flight = other;
                Err(format!("a commit answer ({io:?}) that nothing waits for"))
            }
        }
    }

    fn committed_epoch(&mut self, epoch: ReadyEpoch) -> Step {
        self.done |= epoch.last;
        Step::Committed(Committed {
            tuples: epoch.epoch.tuples,
            last: epoch.last,
            ages: epoch.ages,
            ready_at: epoch.ready_at,
        })
    }
}

/// What a commit does after a write.
pub(super) enum Step {
    Write(ClientOp, CommitIo),
    Committed(Committed),
    Delete(crate::hydfs::FileName),
}

/// Two consecutive epochs as one commit: the later one's positions and counts, the changes of
/// both (the later ones win), the outputs of both in order.
fn combine(mut a: ReadyEpoch, b: ReadyEpoch) -> ReadyEpoch {
    debug_assert!(a.checkpoint <= b.checkpoint && !a.last);
    a.epoch.append(b.epoch);
    a.ages.extend(b.ages);
    for (task, changes) in b.changes {
        a.changes.entry(task).or_default().extend(changes);
    }
    ReadyEpoch {
        checkpoint: b.checkpoint,
        attempt: b.attempt,
        epoch: a.epoch,
        sources: b.sources,
        changes: a.changes,
        counts: b.counts,
        last: b.last,
        ages: a.ages,
        ready_at: a.ready_at.min(b.ready_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hydfs::FileName;
    use crate::id::{MemberId, NodeAddr};
    use crate::rainstorm::checkpoint::JobInfo;
    use crate::rainstorm::job::{JobId, Route};

    fn plan() -> JobPlan {
        let leader = MemberId { addr: NodeAddr::from(([127, 0, 0, 1], 7001)), join_time: 1 };
        JobPlan {
            job: JobId { n: 1, tag: 7 },
            leader,
            origin: leader,
            ops: ["grep:a".to_owned(), "grep:b".to_owned()],
            src: FileName::new("in").expect("a name"),
            dest: FileName::new("out").expect("a name"),
            tasks: 1,
            header: None,
            routes: [Route::Shuffle; 2],
            rate_per_source: None,
        }
    }

    fn epoch(checkpoint: CheckpointId, bytes: &[u8]) -> ReadyEpoch {
        ReadyEpoch {
            checkpoint: Some(checkpoint),
            attempt: 1,
            epoch: Epoch { tuples: Vec::new(), bytes: bytes.to_vec(), weight: bytes.len() },
            sources: BTreeMap::new(),
            changes: BTreeMap::new(),
            counts: BTreeMap::new(),
            last: false,
            ages: vec![(Time(checkpoint), 0)],
            ready_at: Time(checkpoint),
        }
    }

    #[test]
    fn a_complete_epoch_behind_the_commit_in_flight_is_a_backlog_until_that_commit_is_done() {
        let plan = plan();
        let job = Record::Job(Box::new(JobInfo {
            job: plan.job,
            leader: plan.leader,
            spec: "spec".to_owned(),
            plan: plan.clone(),
            rate: None,
        }));
        let mut commits = Commits::new(LogState::fold(&[job]).expect("a log"), 1_000, 0);
        assert!(!commits.backlogged(), "nothing is out");
        commits.push(epoch(1, b"a\n"));
        assert!(!commits.backlogged(), "ready, but nothing is in flight");
        let (_, io) = commits.next(&plan).expect("a write").expect("the record");
        assert!(!commits.backlogged(), "one commit out, nothing behind it");
        commits.push(epoch(2, b"b\n"));
        assert!(commits.backlogged(), "epoch 2 waits behind the commit of epoch 1");
        let Step::Write(_, io) = commits.on_done(&plan, io).expect("the record is done") else {
            panic!("the outputs come next")
        };
        assert!(commits.backlogged(), "the commit of epoch 1 is still out");
        assert!(matches!(commits.on_done(&plan, io), Ok(Step::Committed(_))));
        assert!(!commits.backlogged(), "epoch 2 goes out next, and the leader may start another");
        assert_eq!(commits.committed(), Some(1));
    }
}
