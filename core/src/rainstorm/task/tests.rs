//! A task between hand-driven upstream and downstream ends, its journal kept in memory.

use super::*;
use crate::rainstorm::journal::decode_all;
use crate::rainstorm::operator::OperatorSpec;
use crate::rainstorm::operator::{Output, ProgramSpec};

const UP: TaskId = TaskId { stage: 1, index: 0 };
const ME: TaskId = TaskId { stage: 2, index: 0 };
const DOWN: [TaskId; 2] = [TaskId { stage: 3, index: 0 }, TaskId { stage: 3, index: 1 }];

fn op(spec: &str) -> StageOp {
    OperatorSpec::parse(spec).and_then(|s| s.build(None)).expect("valid spec")
}

fn cfg() -> TaskConfig {
    TaskConfig { window: 2, retry: Millis(100), planted: None }
}

fn tuples(from: u64, words: &[&str]) -> Vec<Tuple> {
    words.iter().zip(from..).map(|(w, line)| Tuple::source("in", line, *w)).collect()
}

/// A task, its journal (the bytes of every acknowledged append) and what it sent.
struct Rig {
    task: Task,
    journal: Vec<u8>,
    sent: Vec<(TaskId, LinkMsg)>,
    finished: Option<BTreeMap<TaskId, LinkSeq>>,
    failed: Option<String>,
    /// Batches handed to the operator program, and how the program answers them.
    applied: Vec<ProgramBatch>,
    program: Option<Answer>,
}

type Answer = Box<dyn Fn(&ProgramBatch) -> Result<ProgramResult, String>>;

/// A counting program's answer: each tuple outputs `(key, "key,count")`; state by tuple key.
fn count_program(batch: &ProgramBatch) -> Result<ProgramResult, String> {
    let mut state = batch.state.clone();
    let mut result = ProgramResult::default();
    for t in &batch.tuples {
        let n = state.get(&t.key).map_or(0, |s| s.parse::<u64>().expect("a count")) + 1;
        state.insert(t.key.clone(), n.to_string());
        result.state.insert(t.key.clone(), n.to_string());
        result.outputs.push(vec![Output { key: t.key.clone(), value: format!("{},{n}", t.key) }]);
    }
    Ok(result)
}

fn keyed(from: u64, keys: &[&str]) -> Vec<Tuple> {
    keys.iter()
        .zip(from..)
        .map(|(k, line)| Tuple { key: k.to_string(), ..Tuple::source("in", line, *k) })
        .collect()
}

impl Rig {
    fn new(spec: &str, journal: Vec<u8>) -> Rig {
        let recovered = Recovered::replay(&decode_all(&journal).expect("journal decodes")).expect("replays");
        let task = Task::new(ME, &cfg(), op(spec), None, vec![UP], DOWN.to_vec(), recovered);
        Rig {
            task,
            journal,
            sent: Vec::new(),
            finished: None,
            failed: None,
            applied: Vec::new(),
            program: None,
        }
    }

    /// A task running an operator program that answers with `answer`.
    fn program(journal: Vec<u8>, answer: Answer) -> Rig {
        let mut r = Rig::new("split", journal);
        let recovered =
            Recovered::replay(&decode_all(&r.journal).expect("journal decodes")).expect("replays");
        let spec = ProgramSpec { file: "ops/count".into(), sha256: "0".repeat(64), args: Vec::new() };
        r.task = Task::new(ME, &cfg(), StageOp::Program(spec), None, vec![UP], DOWN.to_vec(), recovered);
        r.program = Some(answer);
        r
    }

    /// Drains the task's outputs; appends succeed (or fail) at once.
    fn drain(&mut self, appends_ok: bool) {
        while let Some(o) = self.task.poll_output() {
            match o {
                TaskOutput::Send { to, msg } => self.sent.push((to, msg)),
                TaskOutput::Append { bytes } => {
                    if appends_ok {
                        self.journal.extend_from_slice(&bytes);
                        self.task.on_appended(Time(0), Ok(()));
                    } else {
                        self.task.on_appended(Time(0), Err("replica unreachable".into()));
                    }
                }
                TaskOutput::Finished { last } => self.finished = Some(last),
                TaskOutput::Failed { reason } => self.failed = Some(reason),
                TaskOutput::SourceSent { .. } => panic!("an operator task reported a source batch"),
                TaskOutput::Apply { batch, .. } => {
                    self.applied.push(batch.clone());
                    if let Some(answer) = &self.program {
                        let result = answer(&batch);
                        self.task.on_applied(Time(0), result);
                    }
                }
            }
        }
    }

    fn batch(&mut self, seq: LinkSeq, tuples: Vec<Tuple>) {
        self.task.on_message(Time(0), UP, LinkMsg::Batch { seq, tuples });
        self.drain(true);
    }

    fn acks_upstream(&self) -> Vec<LinkSeq> {
        self.sent
            .iter()
            .filter_map(|(to, m)| matches!(m, LinkMsg::Ack { .. }).then_some((to, m)))
            .filter(|(to, _)| **to == UP)
            .map(|(_, m)| match m {
                LinkMsg::Ack { upto } => *upto,
                LinkMsg::Batch { .. } => unreachable!(),
            })
            .collect()
    }

    fn batches_to(&self, to: TaskId) -> Vec<(LinkSeq, Vec<String>)> {
        self.sent
            .iter()
            .filter(|(t, _)| *t == to)
            .filter_map(|(_, m)| match m {
                LinkMsg::Batch { seq, tuples } => {
                    Some((*seq, tuples.iter().map(|t| t.value.clone()).collect()))
                }
                LinkMsg::Ack { .. } => None,
            })
            .collect()
    }
}

#[test]
fn a_batch_is_acknowledged_and_its_outputs_sent_only_after_its_record_is_journaled() {
    let mut r = Rig::new("count:value", Vec::new());
    r.task.on_message(Time(0), UP, LinkMsg::Batch { seq: 1, tuples: tuples(1, &["a", "b", "a"]) });
    let first = r.task.poll_output();
    assert!(matches!(first, Some(TaskOutput::Append { .. })), "{first:?}");
    assert!(r.task.poll_output().is_none(), "no acknowledgement or output before the append is durable");
    if let Some(TaskOutput::Append { bytes }) = first {
        r.journal.extend_from_slice(&bytes);
    }
    r.task.on_appended(Time(0), Ok(()));
    r.drain(true);
    assert_eq!(r.acks_upstream(), [1]);
    let mut all: Vec<String> = DOWN.iter().flat_map(|d| r.batches_to(*d)).flat_map(|(_, v)| v).collect();
    all.sort();
    assert_eq!(all, ["a,1", "a,2", "b,1"]);
    // Every key goes to one task: "a" is always on the same link.
    let a_to = partition("a", 2);
    assert!(r.batches_to(DOWN[a_to]).iter().flat_map(|(_, v)| v).any(|v| v == "a,2"));
    assert_eq!(r.task.state().get("a").map(String::as_str), Some("2"));
}

#[test]
fn a_restarted_task_continues_its_counts_and_drops_duplicate_inputs() {
    let mut r = Rig::new("count:value", Vec::new());
    for seq in 1..=2 {
        r.batch(seq, tuples(seq * 10, &["x"; 5]));
        for d in DOWN {
            let upto = r.batches_to(d).last().map_or(0, |b| b.0);
            r.task.on_message(Time(0), d, LinkMsg::Ack { upto });
        }
        r.drain(true);
    }
    assert_eq!(r.task.state()["x"], "10");
    // The worker crashes; the task restarts elsewhere from its journal.
    let mut again = Rig::new("count:value", r.journal.clone());
    again.batch(2, tuples(20, &["x"; 5])); // the upstream resends what it was not sure of
    assert_eq!(again.acks_upstream(), [2], "a duplicate is acknowledged, not processed");
    // It resends its outputs; the receivers, which had them, acknowledge them again.
    again.task.handle_timeout(Time(0));
    again.drain(true);
    for d in DOWN {
        let upto = again.batches_to(d).last().map_or(0, |b| b.0);
        again.task.on_message(Time(0), d, LinkMsg::Ack { upto });
    }
    again.batch(3, tuples(30, &["x"]));
    assert_eq!(again.task.state()["x"], "11", "the count continues at 11, not 1");
    let to = DOWN[partition("x", 2)];
    assert_eq!(again.batches_to(to).last().map(|b| b.1.clone()), Some(vec!["x,11".to_string()]));
}

#[test]
fn unacknowledged_outputs_are_resent_with_their_numbers_after_a_restart() {
    let mut r = Rig::new("split", Vec::new());
    r.batch(1, tuples(1, &["one two", "three"]));
    let before: Vec<_> = DOWN.iter().map(|d| r.batches_to(*d)).collect();
    let mut again = Rig::new("split", r.journal.clone());
    again.task.handle_timeout(Time(1));
    again.drain(true);
    let after: Vec<_> = DOWN.iter().map(|d| again.batches_to(*d)).collect();
    assert_eq!(before, after, "the same batches with the same numbers");
}

#[test]
fn a_full_downstream_window_stops_processing() {
    let mut r = Rig::new("split", Vec::new());
    let words = ["a b c d e f g h"];
    for seq in 1..=4 {
        r.batch(seq, tuples(seq, &words));
    }
    assert_eq!(r.acks_upstream(), [1, 2], "window 2: two batches in flight per link, then it waits");
    for d in DOWN {
        r.task.on_message(Time(0), d, LinkMsg::Ack { upto: 2 });
    }
    r.drain(true);
    assert_eq!(r.acks_upstream(), [1, 2, 3, 4]);
}

#[test]
fn a_failed_append_leaves_no_trace_and_the_batch_is_processed_later() {
    let mut r = Rig::new("count:value", Vec::new());
    r.task.on_message(Time(0), UP, LinkMsg::Batch { seq: 1, tuples: tuples(1, &["k"]) });
    r.drain(false);
    assert!(r.acks_upstream().is_empty() && r.task.state().is_empty() && r.journal.is_empty());
    assert_eq!(r.task.poll_timeout(), Some(Time(100)), "it pauses before trying again");
    r.task.handle_timeout(Time(100));
    r.drain(true);
    assert_eq!(r.acks_upstream(), [1]);
    assert_eq!(r.task.state()["k"], "1");
}

#[test]
fn the_task_finishes_when_every_input_is_processed_and_every_output_acknowledged() {
    let mut r = Rig::new("grep:keep", Vec::new());
    r.batch(1, tuples(1, &["keep me", "drop me"]));
    r.task.upstream_ended(Time(0), UP, 2);
    r.drain(true);
    assert!(r.finished.is_none(), "batch 2 has not arrived");
    r.batch(2, tuples(3, &["drop"]));
    assert!(r.finished.is_none(), "an output is not acknowledged yet");
    let to = DOWN[partition("in:1", 2)];
    r.task.on_message(Time(0), to, LinkMsg::Ack { upto: 1 });
    r.drain(true);
    let last = r.finished.expect("finished");
    assert_eq!(last[&to], 1);
    assert_eq!(last.values().sum::<u64>(), 1);
}

#[test]
fn an_operator_failure_names_the_operator_and_the_input() {
    // A count whose stored state is not a number (a corrupt journal would look like this).
    let mut r = Rig::new("count:value", Vec::new());
    r.task.journal.state.insert("k".into(), "many".into());
    r.batch(1, tuples(7, &["k"]));
    let why = r.failed.expect("failed");
    assert!(why.contains("count:value") && why.contains("in:7"), "{why}");
}

#[test]
fn partitioning_is_stable_and_covers_every_task() {
    assert_eq!(partition("Street Name", 3), partition("Street Name", 3));
    let hit: std::collections::BTreeSet<usize> = (0..200).map(|i| partition(&format!("k{i}"), 5)).collect();
    assert_eq!(hit.len(), 5);
    assert_eq!(partition("anything", 0), 0);
}

#[test]
fn a_program_batch_is_journaled_with_its_state_and_a_restart_hands_the_state_back() {
    let mut r = Rig::program(Vec::new(), Box::new(count_program));
    r.batch(1, keyed(1, &["a", "b", "a"]));
    assert_eq!(r.applied.len(), 1);
    assert!(r.applied[0].state.is_empty(), "no state yet");
    assert_eq!(r.acks_upstream(), [1]);
    let mut all: Vec<String> = DOWN.iter().flat_map(|d| r.batches_to(*d)).flat_map(|(_, v)| v).collect();
    all.sort();
    assert_eq!(all, ["a,1", "a,2", "b,1"]);
    // A new incarnation from the journal gives the program the stored counts of the batch's keys.
    let mut again = Rig::program(r.journal.clone(), Box::new(count_program));
    again.batch(2, keyed(10, &["a", "c"]));
    let expected: BTreeMap<String, String> = [("a".to_owned(), "2".to_owned())].into();
    assert_eq!(again.applied[0].state, expected, "only keys of the batch, as journaled");
    let values: Vec<String> = DOWN.iter().flat_map(|d| again.batches_to(*d)).flat_map(|(_, v)| v).collect();
    assert!(values.contains(&"a,3".to_owned()), "the count goes on: {values:?}");
}

#[test]
fn nothing_of_a_batch_happens_until_the_program_answers() {
    let mut r = Rig::program(Vec::new(), Box::new(count_program));
    r.program = None;
    r.batch(1, keyed(1, &["a"]));
    r.batch(2, keyed(2, &["b"]));
    assert_eq!(r.applied.len(), 1, "one batch out at the program at a time");
    assert!(r.sent.is_empty() && r.journal.is_empty(), "no acknowledgement, output or record yet");
    let result = count_program(&r.applied[0]);
    r.task.on_applied(Time(0), result);
    r.drain(true);
    assert_eq!(r.acks_upstream(), [1]);
    assert_eq!(r.applied.len(), 2, "the next batch goes out once the first is journaled");
}

#[test]
fn a_program_failure_or_a_reply_against_the_protocol_fails_the_task_and_acknowledges_nothing() {
    let wrong_count: Answer = Box::new(|_| Ok(ProgramResult { outputs: vec![vec![]], ..Default::default() }));
    let foreign: Answer = Box::new(|b| {
        let mut r = count_program(b)?;
        r.state.insert("elsewhere".into(), "1".into());
        Ok(r)
    });
    let crashed: Answer = Box::new(|_| Err("the program exited (signal 9)".into()));
    let cases =
        [(wrong_count, "1 output lists for 2 tuples"), (foreign, "\"elsewhere\""), (crashed, "signal 9")];
    for (answer, needle) in cases {
        let mut r = Rig::program(Vec::new(), answer);
        r.batch(1, keyed(7, &["a", "b"]));
        let reason = r.failed.clone().expect("the task failed");
        assert!(reason.contains(needle) && reason.contains("program:ops/count"), "{reason}");
        assert!(reason.contains("in:7"), "names the batch's first input: {reason}");
        assert!(r.sent.is_empty() && r.journal.is_empty(), "{reason}");
    }
}

#[test]
fn counts_are_what_the_journal_holds_and_a_restart_or_a_compaction_goes_on_from_them() {
    let mut r = Rig::new("split", Vec::new());
    assert_eq!(r.task.counts(), TupleCounts::default());
    r.batch(1, tuples(1, &["one two", "three"]));
    assert_eq!(r.task.counts(), TupleCounts { consumed: 2, emitted: 3 });
    // A batch whose append fails is not counted until it is journaled, and then once.
    r.task.on_message(Time(0), UP, LinkMsg::Batch { seq: 2, tuples: tuples(3, &["four five six"]) });
    r.drain(false);
    assert_eq!(r.task.counts(), TupleCounts { consumed: 2, emitted: 3 });
    r.task.handle_timeout(Time(100));
    r.drain(true);
    assert_eq!(r.task.counts(), TupleCounts { consumed: 3, emitted: 6 });
    // A new incarnation goes on from the journal; a resent batch it already has is not counted.
    let mut again = Rig::new("split", r.journal.clone());
    assert_eq!(again.task.counts(), TupleCounts { consumed: 3, emitted: 6 });
    again.batch(2, tuples(3, &["four five six"]));
    assert_eq!(again.acks_upstream(), [2], "a duplicate is acknowledged, not processed");
    assert_eq!(again.task.counts(), TupleCounts { consumed: 3, emitted: 6 });
    again.task.handle_timeout(Time(200));
    again.drain(true);
    for d in DOWN {
        let upto = again.batches_to(d).last().map_or(0, |b| b.0);
        again.task.on_message(Time(200), d, LinkMsg::Ack { upto });
    }
    again.batch(3, tuples(4, &["seven"]));
    assert_eq!(again.task.counts(), TupleCounts { consumed: 4, emitted: 7 });
    // A compacted journal (one snapshot) carries the counts too.
    let snapshot = encode(&again.task.snapshot()).expect("encodes");
    let compacted = Rig::new("split", snapshot);
    assert_eq!(compacted.task.counts(), TupleCounts { consumed: 4, emitted: 7 });
}
