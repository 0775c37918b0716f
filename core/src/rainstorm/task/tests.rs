//! An operator task between hand-driven upstream and downstream ends.

use super::*;
use crate::rainstorm::operator::OperatorSpec;
use crate::time::Millis;

const UP: [TaskId; 2] = [TaskId { stage: 1, index: 0 }, TaskId { stage: 1, index: 1 }];
const ME: TaskId = TaskId { stage: 2, index: 0 };
const SINKS: [TaskId; 1] = [crate::rainstorm::job::SINK];

fn op(spec: &str) -> StageOp {
    OperatorSpec::parse(spec).and_then(|s| s.build(None)).expect("valid spec")
}

fn cfg() -> RainstormConfig {
    RainstormConfig {
        batch_tuples: 4,
        window: 2,
        linger: Millis(5),
        program_window: 2,
        ..RainstormConfig::default()
    }
}

fn program() -> StageOp {
    StageOp::Program(ProgramSpec { file: "ops/count".into(), sha256: "0".repeat(64), args: Vec::new() })
}

/// Tuples keyed by `keys`, numbered from line `from`.
fn keyed(from: u64, keys: &[&str]) -> Vec<Tuple> {
    keys.iter()
        .zip(from..)
        .map(|(k, line)| Tuple { key: k.to_string(), ..Tuple::source("in", line, *k) })
        .collect()
}

/// A counting program's answer, keeping its session state as the protocol says.
fn count(session: &mut BTreeMap<String, String>, batch: &ProgramBatch) -> ProgramResult {
    session.extend(batch.state.clone());
    let mut result = ProgramResult::default();
    for t in batch.tuples.iter() {
        let n = session.get(&t.key).map_or(0, |s| s.parse::<u64>().expect("a count")) + 1;
        session.insert(t.key.clone(), n.to_string());
        result.state.insert(t.key.clone(), n.to_string());
        result.outputs.push(vec![Output { key: t.key.clone(), value: format!("{},{n}", t.key) }]);
    }
    result
}

/// What a task put out, sorted by kind.
#[derive(Default)]
struct Seen {
    batches: Vec<(TaskId, u64, Batch)>,
    acks: Vec<(TaskId, u64)>,
    calls: Vec<ProgramBatch>,
    snapshots: Vec<(CheckpointId, Snapshot)>,
    finished: Option<Snapshot>,
    failed: Option<String>,
    ready: bool,
}

fn drain(task: &mut Task, seen: &mut Seen) {
    while let Some(o) = task.poll_output() {
        match o {
            TaskOutput::Send { to, msg: LinkMsg::Batch { seq, batch } } => {
                seen.batches.push((to, seq, batch))
            }
            TaskOutput::Send { to, msg: LinkMsg::Ack { upto } } => seen.acks.push((to, upto)),
            TaskOutput::Apply { batch, .. } => seen.calls.push(batch),
            TaskOutput::Snapshot { checkpoint, snapshot } => seen.snapshots.push((checkpoint, snapshot)),
            TaskOutput::Finished { last } => seen.finished = Some(last),
            TaskOutput::Failed { reason, .. } => seen.failed = Some(reason),
            TaskOutput::Ready => seen.ready = true,
            TaskOutput::Read { .. } | TaskOutput::SourceSent { .. } => {
                panic!("an operator task does not read")
            }
        }
    }
}

fn send(task: &mut Task, now: u64, from: TaskId, seq: u64, batch: Batch) {
    task.on_message(Time(now), from, LinkMsg::Batch { seq, batch });
}

fn values(seen: &Seen) -> Vec<String> {
    seen.batches
        .iter()
        .flat_map(|(_, _, b)| match b {
            Batch::Tuples(t) => t.iter().map(|t| t.value.clone()).collect(),
            Batch::Barrier(c) => vec![format!("|{c}")],
            Batch::End => vec!["|end".to_owned()],
        })
        .collect()
}

#[test]
fn a_snapshot_waits_for_every_link_and_holds_exactly_the_state_before_the_barriers() {
    let mut task = Task::new(ME, &cfg(), (op("count:value"), None), &UP, SINKS.to_vec(), Default::default());
    let mut seen = Seen::default();
    drain(&mut task, &mut seen);
    assert!(seen.ready, "a built-in is ready at once");
    send(&mut task, 0, UP[0], 1, Batch::Tuples(keyed(1, &["a", "b"]).into()));
    send(&mut task, 0, UP[0], 2, Batch::Barrier(1));
    send(&mut task, 0, UP[0], 3, Batch::Tuples(keyed(3, &["a"]).into()));
    send(&mut task, 0, UP[1], 1, Batch::Tuples(keyed(4, &["a"]).into()));
    drain(&mut task, &mut seen);
    assert!(seen.snapshots.is_empty(), "the second link has not delivered the barrier");
    assert_eq!(task.state().get("a").map(String::as_str), Some("2"), "the batch after the barrier waits");
    send(&mut task, 1, UP[1], 2, Batch::Barrier(1));
    drain(&mut task, &mut seen);
    let (c, snapshot) = seen.snapshots.first().expect("a snapshot");
    assert_eq!(*c, 1);
    let changes: BTreeMap<String, Option<String>> = snapshot.changes.iter().cloned().collect();
    assert_eq!(changes, BTreeMap::from([("a".into(), Some("2".into())), ("b".into(), Some("1".into()))]));
    assert_eq!(snapshot.counts, TupleCounts { consumed: 3, emitted: 3 });
    // The barrier follows every output before it; then the held batch is processed.
    assert_eq!(values(&seen), ["a,1", "b,1", "a,2", "|1"]);
    assert_eq!(task.state().get("a").map(String::as_str), Some("3"));
    task.on_message(Time(2), SINKS[0], LinkMsg::Ack { upto: 2 });
    for up in UP {
        let last = if up == UP[0] { 4 } else { 3 };
        send(&mut task, 2, up, last, Batch::End);
    }
    drain(&mut task, &mut seen);
    let last = seen.finished.clone().expect("finished");
    assert_eq!(last.changes, vec![("a".to_owned(), Some("3".to_owned()))], "only what changed since");
    assert_eq!(values(&seen), ["a,1", "b,1", "a,2", "|1", "a,3", "|end"]);
    assert_eq!(seen.acks.len(), 7, "every batch is acknowledged when taken");
}

#[test]
fn outputs_are_coalesced_across_input_batches() {
    let mut task = Task::new(ME, &cfg(), (op("grep:x"), None), &UP[..1], SINKS.to_vec(), Default::default());
    let mut seen = Seen::default();
    for seq in 1..=4 {
        send(&mut task, 0, UP[0], seq, Batch::Tuples(keyed(seq, &["x"]).into()));
    }
    drain(&mut task, &mut seen);
    assert_eq!(seen.batches.len(), 1, "four one-tuple batches make one batch of four");
    send(&mut task, 1, UP[0], 5, Batch::Tuples(keyed(5, &["x"]).into()));
    task.handle_timeout(Time(6));
    drain(&mut task, &mut seen);
    assert_eq!(seen.batches.len(), 2, "a partial batch goes after lingering");
}

#[test]
fn a_full_downstream_window_stops_the_task_taking_input() {
    let mut task = Task::new(ME, &cfg(), (op("grep:x"), None), &UP[..1], SINKS.to_vec(), Default::default());
    let mut seen = Seen::default();
    let eight = vec!["x"; 8];
    for seq in 1..=3 {
        send(&mut task, 0, UP[0], seq, Batch::Tuples(keyed(seq * 10, &eight).into()));
    }
    drain(&mut task, &mut seen);
    // Two output batches fill the window; the third one sealed blocks the task.
    assert_eq!(seen.batches.len(), 2);
    assert_eq!(seen.acks, [(UP[0], 1), (UP[0], 2)], "the third input batch is not taken");
    task.on_message(Time(1), SINKS[0], LinkMsg::Ack { upto: 2 });
    drain(&mut task, &mut seen);
    assert_eq!(seen.batches.len(), 4);
    assert_eq!(seen.acks, [(UP[0], 1), (UP[0], 2), (UP[0], 3)]);
    assert!(task.buffered_bytes() > 0);
}

#[test]
fn program_batches_are_pipelined_and_a_keys_state_is_sent_once() {
    let state = BTreeMap::from([("a".to_owned(), "10".to_owned())]);
    let counts = TupleCounts { consumed: 10, emitted: 10 };
    let mut task = Task::new(ME, &cfg(), (program(), None), &UP[..1], SINKS.to_vec(), (state, counts));
    let mut seen = Seen::default();
    drain(&mut task, &mut seen);
    assert_eq!(seen.calls.len(), 1, "an empty batch starts the program");
    assert!(seen.calls[0].tuples.is_empty() && !seen.ready);
    send(&mut task, 0, UP[0], 1, Batch::Tuples(keyed(1, &["a", "b"]).into()));
    drain(&mut task, &mut seen);
    assert_eq!(seen.calls.len(), 1, "nothing is taken before the program answered");
    task.on_applied(Time(0), Ok(ProgramResult::default()));
    send(&mut task, 0, UP[0], 2, Batch::Tuples(keyed(3, &["a"]).into()));
    send(&mut task, 0, UP[0], 3, Batch::Tuples(keyed(4, &["a"]).into()));
    drain(&mut task, &mut seen);
    assert!(seen.ready);
    assert_eq!(seen.calls.len(), 3, "two batches out at once (the window)");
    assert_eq!(seen.calls[1].state, BTreeMap::from([("a".to_owned(), "10".to_owned())]));
    assert!(seen.calls[2].state.is_empty(), "the program has a's state already");
    let mut session = BTreeMap::new();
    let answers: Vec<ProgramResult> = seen.calls[1..].iter().map(|b| count(&mut session, b)).collect();
    for a in answers {
        task.on_applied(Time(1), Ok(a));
    }
    drain(&mut task, &mut seen);
    assert_eq!(task.state().get("a").map(String::as_str), Some("12"));
    assert_eq!(seen.calls.len(), 4, "the third batch went out once there was room");
    let r = count(&mut session, &seen.calls[3]);
    task.on_applied(Time(2), Ok(r));
    task.handle_timeout(Time(10));
    drain(&mut task, &mut seen);
    assert_eq!(values(&seen), ["a,11", "b,1", "a,12", "a,13"]);
    assert_eq!(task.counts(), TupleCounts { consumed: 14, emitted: 14 });
}

#[test]
fn state_the_program_answered_is_never_sent_back_and_unkeyed_input_holds_nothing() {
    let mut task = Task::new(ME, &cfg(), (program(), None), &UP[..1], SINKS.to_vec(), Default::default());
    let mut seen = Seen::default();
    task.on_applied(Time(0), Ok(ProgramResult::default()));
    let mut session = BTreeMap::new();
    let mut seq = 0;
    // Distinct keys, as a stage keyed by `file:line` sees them, then one key again and again.
    for keys in [vec!["l1", "l2", "l3"], vec!["l4", "l5", "l6"], vec!["b"], vec!["b"], vec!["b", "c"]] {
        seq += 1;
        send(&mut task, 0, UP[0], seq, Batch::Tuples(keyed(seq * 10, &keys).into()));
        drain(&mut task, &mut seen);
        let call = seen.calls.last().expect("a call").clone();
        assert!(call.state.is_empty(), "the program already holds every key's state: {call:?}");
        task.on_applied(Time(1), Ok(count(&mut session, &call)));
        task.on_message(Time(1), SINKS[0], LinkMsg::Ack { upto: seq });
        drain(&mut task, &mut seen);
        assert!(task.unsent.is_empty(), "nothing is held for the keys seen");
    }
    assert_eq!(task.state().get("b").map(String::as_str), Some("3"));
}

#[test]
fn a_program_answer_against_the_contract_fails_the_task() {
    for (answer, why) in [
        (ProgramResult { outputs: vec![vec![]], state: BTreeMap::new() }, "1 output lists for 2 tuples"),
        (
            ProgramResult {
                outputs: vec![vec![], vec![]],
                state: BTreeMap::from([("zz".to_owned(), "1".to_owned())]),
            },
            "not in the batch",
        ),
    ] {
        let mut task = Task::new(ME, &cfg(), (program(), None), &UP[..1], SINKS.to_vec(), Default::default());
        task.on_applied(Time(0), Ok(ProgramResult::default()));
        send(&mut task, 0, UP[0], 1, Batch::Tuples(keyed(1, &["a", "b"]).into()));
        task.on_applied(Time(0), Ok(answer));
        let mut seen = Seen::default();
        drain(&mut task, &mut seen);
        let reason = seen.failed.expect("failed");
        assert!(reason.contains(why), "{reason}");
    }
    let mut task = Task::new(ME, &cfg(), (program(), None), &UP[..1], SINKS.to_vec(), Default::default());
    task.on_applied(Time(0), Err("exit status 1".into()));
    let mut seen = Seen::default();
    drain(&mut task, &mut seen);
    assert!(seen.failed.expect("failed").contains("could not start"));
}

#[test]
fn outputs_go_to_the_task_that_owns_their_key() {
    let down = [TaskId { stage: 2, index: 0 }, TaskId { stage: 2, index: 1 }];
    let me = TaskId { stage: 1, index: 0 };
    let next = Some((op("count:value"), Route::Shuffle));
    let mut task = Task::new(me, &cfg(), (op("regex:."), next), &UP[..1], down.to_vec(), Default::default());
    let mut seen = Seen::default();
    let words = ["a", "b", "c", "d", "e", "f"];
    send(&mut task, 0, UP[0], 1, Batch::Tuples(keyed(1, &words).into()));
    send(&mut task, 0, UP[0], 2, Batch::End);
    drain(&mut task, &mut seen);
    for (to, _, batch) in &seen.batches {
        if let Batch::Tuples(tuples) = batch {
            for t in tuples.iter() {
                assert_eq!(down[partition(&t.value, 2)], *to, "{} went to {to}", t.value);
            }
        }
    }
    assert!(seen.finished.is_some());
}
