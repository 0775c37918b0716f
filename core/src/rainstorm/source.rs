//! A source task: its share of the input file as numbered batches, sent exactly once.
//!
//! The input's physical lines are cut into blocks of `batch_lines`; block `k` (from 0) belongs
//! to source task `k mod tasks`, and that task's batch `b` (from 1) is its `b`-th block. A batch
//! is split over the next stage by key, and each non-empty part becomes the next batch on its
//! link. All of this is a pure function of the file, so a source needs no record of what it
//! sent: after a restart it rebuilds the same batches with the same numbers and resumes after
//! what its journal says was acknowledged.
//!
//! Invariants kept here:
//! * the batches and their link numbers depend only on (file, batch_lines, tasks, index, keys);
//! * a batch is sent only when every link it uses has room (backpressure);
//! * the journal holds only acknowledgement snapshots, appended one at a time, never ahead of
//!   the acknowledgements received, so it can only make a restarted source resend more.

use std::collections::{BTreeMap, VecDeque};

use super::journal::{encode, Record, Recovered, Snapshot, TaskId, TupleCounts};
use super::link::{LinkSender, LinkSeq};
use super::operator::StageOp;
use super::task::{partition, LinkMsg, TaskConfig, TaskOutput};
use super::tuple::{source_lines, Tuple};
use crate::time::Time;

/// One source batch: its part for each link that gets one, with that part's link number.
struct SourceBatch {
    parts: Vec<(TaskId, LinkSeq, Vec<Tuple>)>,
    /// Input lines in the batch (one tuple each).
    lines: u64,
    /// The first and last physical line numbers of its tuples.
    span: (u64, u64),
}

pub struct SourceTask {
    id: TaskId,
    batches: Vec<SourceBatch>,
    /// The next batch to send.
    next: usize,
    /// Input lines in the batches before `next` (each sent at least once by this incarnation,
    /// or acknowledged before it).
    sent_lines: u64,
    senders: BTreeMap<TaskId, LinkSender<Vec<Tuple>>>,
    /// Acknowledgements as last journaled.
    journaled: BTreeMap<TaskId, LinkSeq>,
    appending: Option<BTreeMap<TaskId, LinkSeq>>,
    done: bool,
    out: VecDeque<TaskOutput>,
}

/// Where the task's lines come from and how they are cut.
pub struct SourceInput<'a> {
    pub file: &'a str,
    pub content: &'a [u8],
    pub batch_lines: u32,
    pub tasks: u32,
}

impl SourceTask {
    /// Source task `id` over `input`, feeding `downstream` (partitioned by `next`'s state key),
    /// resuming after the acknowledgements in `journal`.
    pub fn new(
        id: TaskId,
        cfg: &TaskConfig,
        input: SourceInput<'_>,
        next: &StageOp,
        downstream: &[TaskId],
        journal: &Recovered,
    ) -> Result<SourceTask, String> {
        let batch_lines = input.batch_lines.max(1) as u64;
        let tasks = input.tasks.max(1) as u64;
        let mut seqs: BTreeMap<TaskId, LinkSeq> = BTreeMap::new();
        let mut batches = Vec::new();
        let mut current: Option<(u64, BTreeMap<TaskId, Vec<Tuple>>)> = None;
        for (n, line) in source_lines(input.content) {
            let block = (n - 1) / batch_lines;
            if block % tasks != id.index as u64 {
                continue;
            }
            if current.as_ref().is_some_and(|(b, _)| *b != block) {
                let (_, parts) = current.take().expect("checked");
                batches.push(number(parts, &mut seqs));
            }
            let tuple = Tuple::source(input.file, n, line);
            let key = next.state_key(&tuple).map_err(|e| format!("cannot key {}: {e}", tuple.id))?;
            let to = downstream[partition(&key, downstream.len())];
            current.get_or_insert_with(|| (block, BTreeMap::new())).1.entry(to).or_default().push(tuple);
        }
        if let Some((_, parts)) = current {
            batches.push(number(parts, &mut seqs));
        }
        let senders = downstream
            .iter()
            .map(|d| {
                let acked = journal.acked.get(d).copied().unwrap_or(0);
                (*d, LinkSender::new(acked + 1, cfg.window, cfg.retry))
            })
            .collect::<BTreeMap<_, _>>();
        // Resume at the first batch with a part not acknowledged.
        let next = batches
            .iter()
            .position(|b| {
                b.parts.iter().any(|(to, seq, _)| *seq > journal.acked.get(to).copied().unwrap_or(0))
            })
            .unwrap_or(batches.len());
        let sent_lines = batches[..next].iter().map(|b| b.lines).sum();
        Ok(SourceTask {
            id,
            batches,
            next,
            sent_lines,
            senders,
            journaled: journal.acked.clone(),
            appending: None,
            done: false,
            out: VecDeque::new(),
        })
    }

    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Where the source stands: next batch of all, and per link acknowledged / next number.
    pub fn progress(&self) -> String {
        let links: Vec<String> =
            self.senders.iter().map(|(d, s)| format!("{d}:{}/{}", s.acked(), s.next_seq())).collect();
        format!("batch {} of {}, links {}", self.next, self.batches.len(), links.join(" "))
    }

    /// Input lines sent, each one tuple (after a restart: those of the batches acknowledged
    /// before it, then what this incarnation sends). No journal needed: the batches are a pure
    /// function of the file.
    pub fn counts(&self) -> TupleCounts {
        TupleCounts { consumed: self.sent_lines, emitted: self.sent_lines }
    }

    /// Source batches in this task's share.
    pub fn batches(&self) -> usize {
        self.batches.len()
    }

    /// The journal record standing for everything this task knows (its acknowledgements).
    pub fn snapshot(&self) -> Record {
        Record::Snapshot(ack_snapshot(&self.journaled))
    }

    pub fn on_message(&mut self, now: Time, from: TaskId, msg: LinkMsg) {
        match msg {
            LinkMsg::Ack { upto } => {
                if let Some(s) = self.senders.get_mut(&from) {
                    s.on_ack(upto);
                }
            }
            // Nothing flows into a source.
            LinkMsg::Batch { .. } => {}
        }
        self.step(now);
    }

    pub fn on_appended(&mut self, now: Time, result: Result<(), String>) {
        if let Some(acked) = self.appending.take() {
            if result.is_ok() {
                self.journaled = acked;
            }
        }
        self.step(now);
    }

    pub fn handle_timeout(&mut self, now: Time) {
        for (to, s) in &mut self.senders {
            for (seq, tuples) in s.due(now) {
                self.out.push_back(TaskOutput::Send { to: *to, msg: LinkMsg::Batch { seq, tuples } });
            }
        }
        self.step(now);
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        self.senders.values().filter_map(|s| s.next_deadline()).min()
    }

    pub fn poll_output(&mut self) -> Option<TaskOutput> {
        self.out.pop_front()
    }

    fn step(&mut self, now: Time) {
        if self.done {
            return;
        }
        while let Some(batch) = self.batches.get(self.next) {
            let fits = batch
                .parts
                .iter()
                .all(|(to, seq, _)| self.senders.get(to).is_some_and(|s| s.has_room() || *seq <= s.acked()));
            if !fits {
                break;
            }
            let mut sent = false;
            for (to, seq, tuples) in &batch.parts {
                let Some(s) = self.senders.get_mut(to) else { continue };
                if *seq <= s.acked() {
                    continue;
                }
                sent = true;
                if s.push(now, tuples.clone()) != Some(*seq) {
                    self.done = true;
                    let reason = format!("{}: link to {to} out of step at batch {seq}", self.id);
                    self.out.push_back(TaskOutput::Failed { reason });
                    return;
                }
                self.out.push_back(TaskOutput::Send {
                    to: *to,
                    msg: LinkMsg::Batch { seq: *seq, tuples: tuples.clone() },
                });
            }
            self.sent_lines += batch.lines;
            self.next += 1;
            if sent {
                self.out.push_back(TaskOutput::SourceSent { first: batch.span.0, last: batch.span.1 });
            }
        }
        let acked: BTreeMap<TaskId, LinkSeq> = self.senders.iter().map(|(d, s)| (*d, s.acked())).collect();
        if self.appending.is_none()
            && acked.iter().any(|(d, a)| *a > self.journaled.get(d).copied().unwrap_or(0))
        {
            match encode(&Record::Snapshot(ack_snapshot(&acked))) {
                Ok(bytes) => {
                    self.appending = Some(acked);
                    self.out.push_back(TaskOutput::Append { bytes });
                }
                Err(e) => {
                    self.done = true;
                    self.out.push_back(TaskOutput::Failed { reason: format!("cannot journal: {e}") });
                    return;
                }
            }
        }
        if self.next >= self.batches.len() && self.senders.values().all(|s| s.is_idle()) {
            self.done = true;
            let last = self.senders.iter().map(|(d, s)| (*d, s.next_seq() - 1)).collect();
            self.out.push_back(TaskOutput::Finished { last });
        }
    }
}

/// Numbers the non-empty parts of one batch on their links.
fn number(parts: BTreeMap<TaskId, Vec<Tuple>>, seqs: &mut BTreeMap<TaskId, LinkSeq>) -> SourceBatch {
    let lines = parts.values().map(|t| t.len() as u64).sum();
    let first = parts.values().flatten().map(|t| t.id.line).min().unwrap_or(0);
    let last = parts.values().flatten().map(|t| t.id.line).max().unwrap_or(0);
    let parts = parts
        .into_iter()
        .map(|(to, tuples)| {
            let seq = seqs.entry(to).or_insert(0);
            *seq += 1;
            (to, *seq, tuples)
        })
        .collect();
    SourceBatch { parts, lines, span: (first, last) }
}

/// A snapshot saying only "acknowledged up to here" on each link.
fn ack_snapshot(acked: &BTreeMap<TaskId, LinkSeq>) -> Snapshot {
    Snapshot {
        delivered: BTreeMap::new(),
        next_out: acked.iter().map(|(d, a)| (*d, a + 1)).collect(),
        acked: acked.clone(),
        state: BTreeMap::new(),
        unacked: Vec::new(),
        // A source's counts follow from its acknowledgements and the file.
        counts: TupleCounts::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rainstorm::journal::decode_all;
    use crate::rainstorm::operator::OperatorSpec;
    use crate::time::Millis;

    const ME: TaskId = TaskId { stage: 0, index: 0 };
    const DOWN: TaskId = TaskId { stage: 1, index: 0 };

    /// A source over five lines in batches of two (so batch `b` is link batch `b` to `DOWN`).
    fn source(journal: &Recovered) -> SourceTask {
        let next = OperatorSpec::parse("split").and_then(|s| s.build(None)).expect("valid spec");
        let input = SourceInput { file: "in", content: b"l1\nl2\nl3\nl4\nl5\n", batch_lines: 2, tasks: 1 };
        let cfg = TaskConfig { window: 8, retry: Millis(100), planted: None };
        SourceTask::new(ME, &cfg, input, &next, &[DOWN], journal).expect("source")
    }

    fn drain(s: &mut SourceTask) -> Vec<TaskOutput> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    #[test]
    fn a_source_counts_the_lines_it_sent_and_a_restart_goes_on_from_its_acknowledgements() {
        let mut s = source(&Recovered::default());
        assert_eq!(s.counts(), TupleCounts::default(), "nothing sent before it starts");
        s.handle_timeout(Time(0));
        let sent = drain(&mut s).iter().filter(|o| matches!(o, TaskOutput::Send { .. })).count();
        assert_eq!(sent, 3);
        assert_eq!(s.counts(), TupleCounts { consumed: 5, emitted: 5 }, "one tuple per line");
        // Batch 1 is acknowledged and journaled; the worker then crashes.
        s.on_message(Time(1), DOWN, LinkMsg::Ack { upto: 1 });
        let journal = match drain(&mut s).as_slice() {
            [TaskOutput::Append { bytes }] => bytes.clone(),
            other => panic!("expected one journal append, got {other:?}"),
        };
        let recovered = Recovered::replay(&decode_all(&journal).expect("decodes")).expect("replays");
        let mut again = source(&recovered);
        assert_eq!(again.counts(), TupleCounts { consumed: 2, emitted: 2 }, "the acknowledged batch");
        again.handle_timeout(Time(2));
        drain(&mut again);
        assert_eq!(again.counts(), TupleCounts { consumed: 5, emitted: 5 }, "not counted twice");
    }

    fn spans(outputs: &[TaskOutput]) -> Vec<(u64, u64)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                TaskOutput::SourceSent { first, last } => Some((*first, *last)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_source_reports_each_batch_once_when_first_sent_and_not_what_was_acknowledged() {
        let mut s = source(&Recovered::default());
        s.handle_timeout(Time(0));
        assert_eq!(spans(&drain(&mut s)), vec![(1, 2), (3, 4), (5, 5)]);
        // Resends after the retry interval are not first sends.
        s.handle_timeout(Time(500));
        assert_eq!(spans(&drain(&mut s)), vec![]);
        s.on_message(Time(501), DOWN, LinkMsg::Ack { upto: 1 });
        let journal = match drain(&mut s).as_slice() {
            [TaskOutput::Append { bytes }] => bytes.clone(),
            other => panic!("expected one journal append, got {other:?}"),
        };
        let recovered = Recovered::replay(&decode_all(&journal).expect("decodes")).expect("replays");
        let mut again = source(&recovered);
        again.handle_timeout(Time(502));
        assert_eq!(spans(&drain(&mut again)), vec![(3, 4), (5, 5)], "the acknowledged batch is not sent");
    }
}
