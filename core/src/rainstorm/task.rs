//! An operator task: one stage's operator over the batches of its upstream links, exactly once.
//!
//! The task takes the next input batch in order from one of its upstream links (round robin),
//! applies its operator to every tuple with the keyed state the framework keeps, partitions the
//! derived tuples over the next stage by key ([`partition`]), and asks its driver to append one
//! [`Record::Processed`] to its journal. Only when that append is acknowledged does it commit the
//! input (acknowledging it upstream), update its state and send the output batches, numbered on
//! their links as the record says. A task restarted from its journal ([`Recovered`]) resends the
//! outputs not known acknowledged with the same numbers, so receivers drop the ones they had.
//! Downstream acknowledgements are journaled lazily, as [`Record::Acked`] frames in front of the
//! next record, so a restarted task resends only the outputs not known acknowledged (the
//! receivers' duplicate check keeps that exactly-once).
//!
//! Invariants kept here:
//! * one journal append in flight at a time, and nothing of a batch is visible (acknowledgement,
//!   state, outputs) before its record is durable;
//! * a batch is processed only when every downstream link has room (backpressure: a slow stage
//!   slows its upstream instead of growing memory);
//! * the task's link numbering and its journal never diverge: output `seq`s come from the
//!   journal's `next_out`, and the senders are rebuilt from it;
//! * end of stream is out of band: the leader tells a task the last batch number of each
//!   upstream link once that upstream has finished; the task finishes when it has processed all
//!   of them and every output is acknowledged, and reports its own last numbers.

use super::config::PlantedBug;
use super::journal::{encode, OutBatch, Record, Recovered, TaskId, TupleCounts};
use super::link::{Arrival, LinkReceiver, LinkSender, LinkSeq};
use super::operator::{derive, Applied, Output, ProgramSpec, StageOp};
use super::tuple::Tuple;
use crate::time::{Millis, Time};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Batches in flight per link, and how long a sender waits for an acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskConfig {
    pub window: usize,
    pub retry: Millis,
    /// A deliberate bug (tests only; see [`PlantedBug`]).
    pub planted: Option<PlantedBug>,
}

impl Default for TaskConfig {
    fn default() -> Self {
        TaskConfig { window: 8, retry: Millis(1_000), planted: None }
    }
}

impl TaskConfig {
    fn bug(&self, bug: PlantedBug) -> bool {
        cfg!(feature = "planted-bugs") && self.planted == Some(bug)
    }
}

/// What travels on a link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMsg {
    Batch { seq: LinkSeq, tuples: Vec<Tuple> },
    Ack { upto: LinkSeq },
}

/// What a task asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskOutput {
    /// Send `msg` to task `to` (a batch downstream, an acknowledgement upstream).
    Send { to: TaskId, msg: LinkMsg },
    /// Append these bytes (one journal record) to the task's journal; answer with
    /// [`Task::on_appended`].
    Append { bytes: Vec<u8> },
    /// Every input was processed and every output acknowledged; these are the last batch
    /// numbers sent on each downstream link.
    Finished { last: BTreeMap<TaskId, LinkSeq> },
    /// The task cannot go on (its operator failed on an input, or a record cannot be encoded).
    Failed { reason: String },
    /// Run this batch through the stage's operator program; answer with [`Task::on_applied`].
    /// One batch is out at a time.
    Apply { program: ProgramSpec, batch: ProgramBatch },
    /// A source sent a batch for the first time: input lines `first..=last` entered the job.
    /// (Informational: where tuple latency is measured from.)
    SourceSent { first: u64, last: u64 },
}

/// A batch for an operator program: the tuples in order, and the stored state of each of their
/// keys that has one (the state as of the start of the batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramBatch {
    pub tuples: Vec<Tuple>,
    pub state: BTreeMap<String, String>,
}

/// What an operator program answered for a [`ProgramBatch`]: one list of outputs per input
/// tuple, in order, and the new state of the keys that changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramResult {
    pub outputs: Vec<Vec<Output>>,
    pub state: BTreeMap<String, String>,
}

/// The stable hash partitioning of keys over `n` tasks (FNV-1a, identical on every node).
pub fn partition(key: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % n.max(1) as u64) as usize
}

/// A batch being journaled: its records (acknowledgements first, then the batch itself).
struct Pending {
    from: TaskId,
    seq: LinkSeq,
    tuples: Vec<Tuple>,
    records: Vec<Record>,
}

pub struct Task {
    id: TaskId,
    operator: StageOp,
    /// The next stage's operator: outputs go to the task owning their key under it.
    next: Option<StageOp>,
    upstream: Vec<TaskId>,
    downstream: Vec<TaskId>,
    receivers: BTreeMap<TaskId, LinkReceiver<Vec<Tuple>>>,
    senders: BTreeMap<TaskId, LinkSender<Vec<Tuple>>>,
    journal: Recovered,
    /// The last batch number of each upstream link that has finished.
    ended: BTreeMap<TaskId, LinkSeq>,
    pending: Option<Pending>,
    /// A batch out at the operator program: (upstream, seq, tuples).
    applying: Option<(TaskId, LinkSeq, Vec<Tuple>)>,
    /// After a failed append, no batch is processed before this time.
    paused_until: Option<Time>,
    retry: Millis,
    next_upstream: usize,
    done: bool,
    cfg: TaskConfig,
    out: VecDeque<TaskOutput>,
}

impl Task {
    /// A task (new, or restarted from `journal`) reading `upstream` and feeding `downstream`
    /// (the next stage's tasks in partition order; for the last stage, the sink alone). Each
    /// output goes to the downstream task that owns its key under `next` (the next stage's
    /// operator: its state key), or its tuple key when there is no next operator.
    pub fn new(
        id: TaskId,
        cfg: &TaskConfig,
        operator: StageOp,
        next: Option<StageOp>,
        upstream: Vec<TaskId>,
        downstream: Vec<TaskId>,
        journal: Recovered,
    ) -> Task {
        let receivers = upstream
            .iter()
            .map(|u| (*u, LinkReceiver::new(journal.delivered.get(u).copied().unwrap_or(0), cfg.window)))
            .collect();
        // Each link resumes after its last known acknowledgement; the batches sent since (all
        // journaled) are due again, which also brings the numbering back to `next_out`.
        let mut senders: BTreeMap<TaskId, LinkSender<Vec<Tuple>>> = downstream
            .iter()
            .map(|d| {
                let acked = journal.acked.get(d).copied().unwrap_or(0);
                (*d, LinkSender::new(acked + 1, cfg.window, cfg.retry))
            })
            .collect();
        for b in &journal.unacked {
            if let Some(s) = senders.get_mut(&b.to) {
                s.restore(b.seq, b.tuples.clone());
            }
        }
        Task {
            id,
            operator,
            next,
            upstream,
            downstream,
            receivers,
            senders,
            journal,
            ended: BTreeMap::new(),
            pending: None,
            applying: None,
            paused_until: None,
            retry: cfg.retry,
            next_upstream: 0,
            done: false,
            cfg: cfg.clone(),
            out: VecDeque::new(),
        }
    }

    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The keyed state as journaled so far.
    pub fn state(&self) -> &BTreeMap<String, String> {
        &self.journal.state
    }

    /// Tuples taken in and put out, as journaled (a restarted task goes on from its journal's).
    pub fn counts(&self) -> TupleCounts {
        self.journal.counts
    }

    /// Where the task stands: per upstream delivered (held), per downstream acknowledged / next.
    pub fn progress(&self) -> String {
        let ins: Vec<String> =
            self.receivers.iter().map(|(u, r)| format!("{u}:{}+{}", r.delivered(), r.held())).collect();
        let outs: Vec<String> =
            self.senders.iter().map(|(d, s)| format!("{d}:{}/{}", s.acked(), s.next_seq())).collect();
        format!(
            "in {} out {} pending {} applying {} paused {:?}",
            ins.join(" "),
            outs.join(" "),
            self.pending.is_some(),
            self.applying.is_some(),
            self.paused_until
        )
    }

    /// Everything journaled so far, as one record (what a new journal generation starts with).
    pub fn snapshot(&self) -> Record {
        Record::Snapshot(self.journal.snapshot())
    }

    /// A message from another task.
    pub fn on_message(&mut self, now: Time, from: TaskId, msg: LinkMsg) {
        match msg {
            LinkMsg::Batch { seq, tuples } => {
                let window = self.cfg.window;
                let forgets = self.cfg.bug(PlantedBug::ForgetsSeenIds);
                let Some(r) = self.receivers.get_mut(&from) else { return };
                if forgets && r.delivered() == 0 && r.held() == 0 && seq > 1 {
                    // Planted: the receiver takes up the sender's numbering where it finds it.
                    *r = LinkReceiver::new(seq - 1, window);
                }
                if let Arrival::Duplicate { ack } = r.arrive(seq, tuples) {
                    self.out.push_back(TaskOutput::Send { to: from, msg: LinkMsg::Ack { upto: ack } });
                }
            }
            LinkMsg::Ack { upto } => {
                if let Some(s) = self.senders.get_mut(&from) {
                    s.on_ack(upto);
                }
            }
        }
        self.step(now);
    }

    /// The leader says upstream `from` has finished after batch `last`.
    pub fn upstream_ended(&mut self, now: Time, from: TaskId, last: LinkSeq) {
        if self.receivers.contains_key(&from) {
            self.ended.insert(from, last);
        }
        self.step(now);
    }

    /// The driver's answer to the last [`TaskOutput::Append`].
    pub fn on_appended(&mut self, now: Time, result: Result<(), String>) {
        let Some(p) = self.pending.take() else { return };
        match result {
            Ok(()) => {
                if self.cfg.bug(PlantedBug::ForgetsSeenIds) {
                    // Planted: whatever the receiver took is "next", whatever was recovered.
                    self.journal.delivered.insert(p.from, p.seq - 1);
                }
                for record in &p.records {
                    if let Err(e) = self.journal.apply(record) {
                        return self.fail(format!("journal record rejected: {e}"));
                    }
                }
                let ack = self.receivers.get_mut(&p.from).map_or(0, |r| r.commit(p.seq));
                if !self.cfg.bug(PlantedBug::AckBeforeJournal) {
                    self.out.push_back(TaskOutput::Send { to: p.from, msg: LinkMsg::Ack { upto: ack } });
                }
                if let Some(Record::Processed { outputs, .. }) = p.records.into_iter().last() {
                    for b in outputs {
                        let Some(s) = self.senders.get_mut(&b.to) else { continue };
                        if s.push(now, b.tuples.clone()) != Some(b.seq) {
                            return self.fail(format!("link to {} out of step with the journal", b.to));
                        }
                        self.out.push_back(TaskOutput::Send {
                            to: b.to,
                            msg: LinkMsg::Batch { seq: b.seq, tuples: b.tuples },
                        });
                    }
                }
            }
            Err(_) => {
                // Not journaled: nothing happened; the batch is processed again after a pause.
                if let Some(r) = self.receivers.get_mut(&p.from) {
                    r.abandon(p.seq, p.tuples);
                }
                self.paused_until = Some(now + self.retry);
            }
        }
        self.step(now);
    }

    pub fn handle_timeout(&mut self, now: Time) {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
        }
        for (to, s) in &mut self.senders {
            for (seq, tuples) in s.due(now) {
                self.out.push_back(TaskOutput::Send { to: *to, msg: LinkMsg::Batch { seq, tuples } });
            }
        }
        self.step(now);
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        self.senders.values().filter_map(|s| s.next_deadline()).chain(self.paused_until).min()
    }

    pub fn poll_output(&mut self) -> Option<TaskOutput> {
        self.out.pop_front()
    }

    fn fail(&mut self, reason: String) {
        if !self.done {
            self.done = true;
            self.out.push_back(TaskOutput::Failed { reason });
        }
    }

    /// Starts processing the next batch if nothing is being journaled and every link has room;
    /// reports the end once everything is processed and acknowledged.
    fn step(&mut self, now: Time) {
        if self.done
            || self.pending.is_some()
            || self.applying.is_some()
            || self.paused_until.is_some_and(|t| t > now)
        {
            return;
        }
        if !self.senders.values().all(|s| s.has_room()) {
            return;
        }
        let n = self.upstream.len();
        for i in 0..n {
            let from = self.upstream[(self.next_upstream + i) % n];
            let Some((seq, tuples)) = self.receivers.get_mut(&from).and_then(|r| r.next_ready()) else {
                continue;
            };
            self.next_upstream = (self.next_upstream + i + 1) % n.max(1);
            return self.process(from, seq, tuples);
        }
        let all_in = self.upstream.iter().all(|u| {
            self.ended
                .get(u)
                .is_some_and(|last| self.receivers.get(u).is_some_and(|r| r.delivered() >= *last))
        });
        if all_in && self.senders.values().all(|s| s.is_idle()) {
            self.done = true;
            let last = self.senders.iter().map(|(d, s)| (*d, s.next_seq() - 1)).collect();
            self.out.push_back(TaskOutput::Finished { last });
        }
    }

    /// The operator program's answer to the last [`TaskOutput::Apply`]. An error (the program
    /// crashed, hung or answered nonsense) fails the task: nothing of the batch happened, and a
    /// new incarnation processes it again from the journal.
    pub fn on_applied(&mut self, now: Time, result: Result<ProgramResult, String>) {
        let Some((from, seq, tuples)) = self.applying.take() else { return };
        let name = self.operator.name();
        let first = tuples.first().map_or_else(String::new, |t| t.id.to_string());
        let what = format!("batch {seq} from {from} ({} tuples from {first})", tuples.len());
        let result = result.and_then(|r| {
            if r.outputs.len() != tuples.len() {
                return Err(format!("answered {} output lists for {} tuples", r.outputs.len(), tuples.len()));
            }
            if let Some(key) = r.state.keys().find(|k| !tuples.iter().any(|t| &t.key == *k)) {
                return Err(format!("returned state for key {key:?}, which is not in the batch"));
            }
            Ok(r)
        });
        match result {
            Ok(r) => {
                let applied = r.outputs.into_iter().map(|outputs| Applied { outputs, state: None });
                let changes = r.state.into_iter().map(|(k, v)| (k, Some(v))).collect();
                self.finish_batch(from, seq, tuples, applied.collect(), changes);
            }
            Err(e) => self.fail(format!("operator `{name}` failed on {what}: {e}")),
        }
        self.step(now);
    }

    /// Applies the operator to a batch: in place for a built-in, through the driver for a
    /// program (the batch then waits for [`Task::on_applied`]).
    fn process(&mut self, from: TaskId, seq: LinkSeq, tuples: Vec<Tuple>) {
        let op = match &self.operator {
            StageOp::Builtin(op) => op,
            StageOp::Program(program) => {
                let state = (tuples.iter())
                    .filter_map(|t| self.journal.state.get(&t.key).map(|s| (t.key.clone(), s.clone())))
                    .collect();
                let batch = ProgramBatch { tuples: tuples.clone(), state };
                self.out.push_back(TaskOutput::Apply { program: program.clone(), batch });
                self.applying = Some((from, seq, tuples));
                return;
            }
        };
        let mut changes: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut applied = Vec::with_capacity(tuples.len());
        for t in &tuples {
            let result = op.state_key(t).and_then(|key| {
                let state = match changes.get(&key) {
                    Some(s) => s.as_deref(),
                    None => self.journal.state.get(&key).map(String::as_str),
                };
                let a = op.apply(t, state)?;
                if let Some(s) = &a.state {
                    changes.insert(key, Some(s.clone()));
                }
                Ok(a)
            });
            match result {
                Ok(a) => applied.push(a),
                Err(e) => return self.fail(format!("operator `{}` failed on {}: {e}", op.name(), t.id)),
            }
        }
        self.finish_batch(from, seq, tuples, applied, changes);
    }

    /// Routes a processed batch's outputs, and journals it with its state changes.
    fn finish_batch(
        &mut self,
        from: TaskId,
        seq: LinkSeq,
        tuples: Vec<Tuple>,
        applied: Vec<Applied>,
        changes: BTreeMap<String, Option<String>>,
    ) {
        let mut per_dest: BTreeMap<TaskId, Vec<Tuple>> = BTreeMap::new();
        for (t, applied) in tuples.iter().zip(&applied) {
            for d in derive(t, applied) {
                let key = match &self.next {
                    Some(next) => match next.state_key(&d) {
                        Ok(key) => key,
                        Err(e) => {
                            return self.fail(format!("operator `{}` cannot key {}: {e}", next.name(), d.id))
                        }
                    },
                    None => d.key.clone(),
                };
                let Some(to) = self.downstream.get(partition(&key, self.downstream.len())).copied() else {
                    return self.fail(format!("{} has outputs but no downstream task", self.id));
                };
                per_dest.entry(to).or_default().push(d);
            }
        }
        let outputs: Vec<OutBatch> = per_dest
            .into_iter()
            .map(|(to, tuples)| OutBatch {
                to,
                seq: self.journal.next_out.get(&to).copied().unwrap_or(1),
                tuples,
            })
            .collect();
        // Acknowledgements received since the last record ride along in front of this one.
        let mut records: Vec<Record> = self
            .senders
            .iter()
            .filter(|(to, s)| s.acked() > self.journal.acked.get(to).copied().unwrap_or(0))
            .map(|(to, s)| Record::Acked { to: *to, upto: s.acked() })
            .collect();
        let consumed = tuples.len() as u64;
        records.push(Record::Processed {
            from,
            seq,
            consumed,
            outputs,
            state: changes.into_iter().collect(),
        });
        let mut bytes = Vec::new();
        for record in &records {
            match encode(record) {
                Ok(frame) => bytes.extend_from_slice(&frame),
                Err(e) => return self.fail(format!("batch {seq} from {from} cannot be journaled: {e}")),
            }
        }
        if self.cfg.bug(PlantedBug::AckBeforeJournal) {
            let ack = self.receivers.get(&from).map_or(0, |r| r.delivered()) + 1;
            self.out.push_back(TaskOutput::Send { to: from, msg: LinkMsg::Ack { upto: ack } });
        }
        self.out.push_back(TaskOutput::Append { bytes });
        self.pending = Some(Pending { from, seq, tuples, records });
    }
}

#[cfg(test)]
mod tests;
