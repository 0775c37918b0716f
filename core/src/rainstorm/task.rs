//! An operator task: one stage's operator over the batches of its upstream links, with keyed
//! state, aligned checkpoint barriers, and coalesced outputs.
//!
//! The task takes the next batch in order from one of its upstream links (round robin),
//! applies its operator to every tuple with the keyed state it keeps, and hands the derived
//! tuples to its [`Outlets`], which send each downstream task full batches. A built-in operator
//! runs in place; a program runs through the driver, with up to `program_window` batches out at
//! once, answered in order.
//!
//! Checkpoints are aligned (Chandy–Lamport, as in Flink): once a link delivers the barrier of
//! checkpoint `c`, the task takes nothing more from it until every other link has delivered that
//! barrier too (or ended); then, with every batch before the barriers processed and answered,
//! it reports its snapshot (the keyed state that changed since its previous one) and sends the
//! barrier on every outgoing link, after every output of those batches. So a snapshot holds
//! exactly the effect of the input before the barriers, and nothing after them.
//!
//! Invariants kept here:
//! * batches are taken from each link in order, each once per attempt, and acknowledged when
//!   taken;
//! * a snapshot is taken only when every link is aligned on its barrier (or ended), no batch is
//!   half processed and no program call is out; its barrier then follows every output of the
//!   input before it on every outgoing link;
//! * the end of the stream is sent once, after every link ended and everything before it was
//!   processed; the final snapshot goes with it;
//! * nothing is taken while an outgoing link is full (backpressure), or while the program
//!   window is full;
//! * a program is sent a key's stored state at most once per attempt, and only state restored
//!   from a snapshot (state the program answered in this attempt is already its own), and its
//!   answers are checked: one output list per input tuple, state only for the batch's keys;
//! * what the task holds per key is bounded by its keyed state, not by the keys it has seen: a
//!   stateless stage keyed by `file:line` holds nothing per tuple.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::config::{PlantedBug, RainstormConfig};
use super::job::{CheckpointId, Route, TaskId, TupleCounts};
use super::link::{Arrival, LinkReceiver};
use super::message::{Batch, LinkMsg, Snapshot};
use super::operator::{derive_owned, Output, ProgramSpec, StageOp};
use super::outlet::Outlets;
use super::tuple::{Tuple, MAX_TUPLE_BYTES};
use crate::time::Time;

/// What a task asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskOutput {
    /// Send `msg` to task `to` (a batch downstream, an acknowledgement upstream).
    Send { to: TaskId, msg: LinkMsg },
    /// Sources: fetch part `part` of the input; answer with `SourceTask::on_part`.
    Read { part: usize },
    /// Run this batch through the stage's operator program; answer with [`Task::on_applied`],
    /// in order.
    Apply { program: ProgramSpec, batch: ProgramBatch },
    /// The task is set up (its program answered an empty batch): it may be told to go.
    Ready,
    /// Its snapshot of a checkpoint, taken just now.
    Snapshot { checkpoint: CheckpointId, snapshot: Snapshot },
    /// It sent the end of its stream; this is its last snapshot.
    Finished { last: Snapshot },
    /// The task cannot go on (see `TaskPhase::Failed`).
    Failed { reason: String, transient: bool },
    /// A source read input lines `first..=last` and sent them on.
    SourceSent { first: u64, last: u64 },
}

/// A batch for an operator program: the tuples in order, and the stored state of those of
/// their keys that the program has not been sent before in this attempt (a key's state is
/// sent at most once per attempt; the program keeps it from then on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramBatch {
    /// Shared with the task, which keeps them until the answer.
    pub tuples: Arc<Vec<Tuple>>,
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

/// One upstream link.
struct Input {
    rx: LinkReceiver<Batch>,
    /// It delivered the barrier being aligned on.
    blocked: bool,
    ended: bool,
}

/// Where a task's outputs go.
struct Router {
    id: TaskId,
    /// The next stage's operator (outputs go to the task owning their key under it) and how
    /// they get there; `None` for the last stage, whose outputs all go to the sink.
    next: Option<(StageOp, Route)>,
    downstream: Vec<TaskId>,
}

impl Router {
    /// Sends one output to the downstream task that owns it.
    fn route(&self, outlets: &mut Outlets, now: Time, tuple: Tuple) -> Result<(), String> {
        let to = match &self.next {
            None | Some((_, Route::Forward)) => self.downstream.first().copied(),
            Some((next, Route::Shuffle)) => {
                let key = next
                    .state_key(&tuple)
                    .map_err(|e| format!("operator `{}` cannot key {}: {e}", next.name(), tuple.id))?;
                self.downstream.get(partition(&key, self.downstream.len())).copied()
            }
        };
        let to = to.ok_or_else(|| format!("{} has outputs but no downstream task", self.id))?;
        let bytes = tuple.key.len() + tuple.value.len();
        if bytes > MAX_TUPLE_BYTES {
            return Err(format!(
                "output {} is {bytes} bytes long, over the {MAX_TUPLE_BYTES}-byte limit of a tuple",
                tuple.id
            ));
        }
        outlets.push(now, to, tuple);
        Ok(())
    }
}

pub struct Task {
    id: TaskId,
    operator: StageOp,
    router: Router,
    inputs: BTreeMap<TaskId, Input>,
    next_input: usize,
    outlets: Outlets,
    state: BTreeMap<String, String>,
    /// Keys whose state changed since the last snapshot.
    changed: BTreeSet<String>,
    /// Keys restored from a snapshot whose state the program has not been sent yet in this
    /// attempt (a subset of `state`'s keys; empty for a built-in).
    unsent: BTreeSet<String>,
    /// The checkpoint being aligned on.
    aligning: Option<CheckpointId>,
    /// A built-in's batch being processed (backpressure may stop it midway).
    current: VecDeque<Tuple>,
    /// Program batches out, in order (the first one may be the empty warm-up).
    calls: VecDeque<Arc<Vec<Tuple>>>,
    program_window: usize,
    /// Whether the program answered its warm-up (always true for a built-in).
    ready: bool,
    counts: TupleCounts,
    ended: bool,
    failed: bool,
    coalesce: bool,
    out: VecDeque<TaskOutput>,
}

impl Task {
    /// A task reading `upstream` and feeding `downstream` (the next stage's tasks in partition
    /// order, or the sink alone), resuming with `state` and `counts`.
    pub fn new(
        id: TaskId,
        cfg: &RainstormConfig,
        (operator, next): (StageOp, Option<(StageOp, Route)>),
        upstream: &[TaskId],
        downstream: Vec<TaskId>,
        (state, counts): (BTreeMap<String, String>, TupleCounts),
    ) -> Task {
        let inputs = upstream
            .iter()
            .map(|u| (*u, Input { rx: LinkReceiver::new(cfg.window as usize), blocked: false, ended: false }))
            .collect();
        let mut task = Task {
            id,
            outlets: Outlets::new(&downstream, cfg),
            router: Router { id, next, downstream },
            inputs,
            next_input: 0,
            // Only a program is sent state; a built-in reads `state` in place.
            unsent: match &operator {
                StageOp::Program(_) => state.keys().cloned().collect(),
                StageOp::Builtin(_) => BTreeSet::new(),
            },
            state,
            changed: BTreeSet::new(),
            aligning: None,
            current: VecDeque::new(),
            calls: VecDeque::new(),
            program_window: cfg.program_window.max(1) as usize,
            ready: true,
            counts,
            ended: false,
            failed: false,
            coalesce: !cfg.bug(PlantedBug::NoCoalescing),
            out: VecDeque::new(),
            operator,
        };
        match &task.operator {
            StageOp::Program(program) => {
                // An empty batch starts the program (fetch, start, handshake) before the job
                // goes, and surfaces a program that cannot start at once.
                task.ready = false;
                let batch = ProgramBatch { tuples: Arc::default(), state: BTreeMap::new() };
                task.out.push_back(TaskOutput::Apply { program: program.clone(), batch });
                task.calls.push_back(Arc::default());
            }
            StageOp::Builtin(_) => task.out.push_back(TaskOutput::Ready),
        }
        task
    }

    pub fn id(&self) -> TaskId {
        self.id
    }

    pub fn counts(&self) -> TupleCounts {
        self.counts
    }

    /// The keyed state as of what was processed.
    pub fn state(&self) -> &BTreeMap<String, String> {
        &self.state
    }

    pub fn is_finished(&self) -> bool {
        self.ended
    }

    /// Where the task stands, for `job <id>` on its worker.
    pub fn describe(&self) -> String {
        let ins: Vec<String> = self
            .inputs
            .iter()
            .map(|(u, i)| {
                let mark = if i.ended {
                    " ended"
                } else if i.blocked {
                    " aligned"
                } else {
                    ""
                };
                format!("{u}:{}+{}{mark}", i.rx.taken(), i.rx.held())
            })
            .collect();
        format!(
            "in {} out {}, aligning {:?}, {} calls out, {} keys",
            ins.join(" "),
            self.outlets.describe(),
            self.aligning,
            self.calls.len(),
            self.state.len()
        )
    }

    /// Bytes held: input batches, the batch in progress, program calls out, outgoing batches.
    pub fn buffered_bytes(&self) -> usize {
        let inputs: usize = self.inputs.values().map(|i| i.rx.held_bytes()).sum();
        let current: usize = self.current.iter().map(Tuple::weight).sum();
        let calls: usize = self.calls.iter().flat_map(|c| c.iter()).map(Tuple::weight).sum();
        inputs + current + calls + self.outlets.buffered_bytes()
    }

    /// What the task holds, by kind: (read-ahead, inputs, unacknowledged, output side).
    pub fn buffers(&self) -> (usize, usize, usize, usize) {
        let inputs: usize = self.inputs.values().map(|i| i.rx.held_bytes()).sum();
        (0, inputs, self.outlets.unacked_bytes(), self.outlets.buffered_bytes())
    }

    /// Tuple batches sent so far.
    pub fn batches_sent(&self) -> u64 {
        self.outlets.batches_sent()
    }

    /// A message from another task.
    pub fn on_message(&mut self, now: Time, from: TaskId, msg: LinkMsg) {
        match msg {
            LinkMsg::Batch { seq, batch } => {
                let Some(input) = self.inputs.get_mut(&from) else { return };
                if let Arrival::Duplicate { ack } = input.rx.arrive(seq, batch) {
                    self.out.push_back(TaskOutput::Send { to: from, msg: LinkMsg::Ack { upto: ack } });
                }
            }
            LinkMsg::Ack { upto } => self.outlets.on_ack(now, from, upto),
        }
        self.step(now);
    }

    pub fn handle_timeout(&mut self, now: Time) {
        self.outlets.handle_timeout(now);
        self.step(now);
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        self.outlets.poll_timeout()
    }

    pub fn poll_output(&mut self) -> Option<TaskOutput> {
        if let Some(o) = self.out.pop_front() {
            return Some(o);
        }
        self.outlets.poll().map(|(to, msg)| TaskOutput::Send { to, msg })
    }

    fn fail(&mut self, reason: String) {
        if !self.failed {
            self.failed = true;
            self.out.push_back(TaskOutput::Failed { reason, transient: false });
        }
    }

    fn snapshot(&mut self) -> Snapshot {
        debug_assert!(self.calls.is_empty(), "a snapshot is taken only with no program call out");
        let changes = std::mem::take(&mut self.changed)
            .into_iter()
            .map(|key| {
                let value = self.state.get(&key).cloned();
                (key, value)
            })
            .collect();
        Snapshot { source: None, changes, counts: self.counts }
    }

    /// Takes batches and processes them until it has to wait; takes a snapshot once aligned,
    /// and ends the stream once every link ended.
    fn step(&mut self, now: Time) {
        while !self.failed && !self.ended {
            let settled = self.current.is_empty() && self.calls.is_empty();
            if let Some(c) = self.aligning {
                if settled && self.inputs.values().all(|i| i.ended || i.blocked) {
                    let snapshot = self.snapshot();
                    self.out.push_back(TaskOutput::Snapshot { checkpoint: c, snapshot });
                    self.outlets.control(now, Batch::Barrier(c));
                    self.aligning = None;
                    for i in self.inputs.values_mut() {
                        i.blocked = false;
                    }
                    continue;
                }
            } else if settled && self.ready && self.inputs.values().all(|i| i.ended) {
                self.ended = true;
                self.outlets.control(now, Batch::End);
                let last = self.snapshot();
                self.out.push_back(TaskOutput::Finished { last });
                return;
            }
            if self.outlets.blocked() {
                return;
            }
            if !self.current.is_empty() {
                self.process_current(now);
                continue;
            }
            if !self.ready || self.calls.len() >= self.program_window {
                return;
            }
            let Some((from, batch)) = self.take() else { return };
            match batch {
                Batch::Tuples(tuples) => self.process(now, Arc::unwrap_or_clone(tuples)),
                Batch::Barrier(c) => {
                    debug_assert!(self.aligning.is_none_or(|a| a == c), "barriers out of order");
                    self.aligning = Some(c);
                    if let Some(i) = self.inputs.get_mut(&from) {
                        i.blocked = true;
                    }
                }
                Batch::End => {
                    if let Some(i) = self.inputs.get_mut(&from) {
                        i.ended = true;
                    }
                }
            }
        }
    }

    /// The next batch of a link that is neither aligned nor ended, round robin; acknowledged.
    fn take(&mut self) -> Option<(TaskId, Batch)> {
        let links: Vec<TaskId> = self.inputs.keys().copied().collect();
        let n = links.len();
        for k in 0..n {
            let from = links[(self.next_input + k) % n];
            let input = self.inputs.get_mut(&from).expect("listed");
            if input.blocked || input.ended {
                continue;
            }
            if let Some((seq, batch)) = input.rx.take() {
                self.next_input = (self.next_input + k + 1) % n;
                self.out.push_back(TaskOutput::Send { to: from, msg: LinkMsg::Ack { upto: seq } });
                return Some((from, batch));
            }
        }
        None
    }

    fn process(&mut self, now: Time, tuples: Vec<Tuple>) {
        match &self.operator {
            StageOp::Builtin(_) => {
                self.current = tuples.into();
                self.process_current(now);
            }
            StageOp::Program(program) => {
                debug_assert!(self.unsent.len() <= self.state.len(), "unsent keys are restored state keys");
                let mut state = BTreeMap::new();
                for t in &tuples {
                    if self.unsent.remove(&t.key) {
                        let s = self.state.get(&t.key);
                        debug_assert!(s.is_some(), "an unsent key has restored state");
                        if let Some(s) = s {
                            state.insert(t.key.clone(), s.clone());
                        }
                    }
                }
                let tuples = Arc::new(tuples);
                let batch = ProgramBatch { tuples: Arc::clone(&tuples), state };
                self.out.push_back(TaskOutput::Apply { program: program.clone(), batch });
                self.calls.push_back(tuples);
            }
        }
    }

    /// Runs the built-in over the batch in progress until it is done or an outgoing link is
    /// full.
    fn process_current(&mut self, now: Time) {
        let StageOp::Builtin(op) = &self.operator else { return };
        let stateful = op.is_stateful();
        while let Some(t) = self.current.pop_front() {
            let applied = if stateful {
                op.state_key(&t).and_then(|key| {
                    let applied = op.apply(&t, self.state.get(&key).map(String::as_str))?;
                    if let Some(s) = &applied.state {
                        self.state.insert(key.clone(), s.clone());
                        self.changed.insert(key);
                    }
                    Ok(applied)
                })
            } else {
                op.apply(&t, None)
            };
            match applied {
                Ok(applied) => {
                    let emitted = applied.outputs.len() as u64;
                    for d in derive_owned(&t, applied.outputs) {
                        if let Err(e) = self.router.route(&mut self.outlets, now, d) {
                            return self.fail(e);
                        }
                    }
                    self.counts = self.counts.add(1, emitted);
                }
                Err(e) => return self.fail(format!("operator `{}` failed on {}: {e}", op.name(), t.id)),
            }
            if self.outlets.blocked() {
                return;
            }
        }
        if !self.coalesce {
            self.outlets.seal_all(now);
        }
    }

    /// The operator program's answer to the oldest batch out. An error (the program crashed,
    /// hung or answered nonsense) fails the task: the job rolls back, and nothing of the batch
    /// is used.
    pub fn on_applied(&mut self, now: Time, result: Result<ProgramResult, String>) {
        let Some(tuples) = self.calls.pop_front() else { return };
        if !self.ready {
            // The warm-up.
            match result {
                Ok(_) => {
                    self.ready = true;
                    self.out.push_back(TaskOutput::Ready);
                }
                Err(e) => self.fail(format!("the operator could not start: {e}")),
            }
            return self.step(now);
        }
        let name = self.operator.name();
        let first = tuples.first().map_or_else(String::new, |t| t.id.to_string());
        let what = format!("a batch of {} tuples from {first}", tuples.len());
        // The driver's failures name the operator and the batch themselves.
        let r = match result {
            Ok(r) => r,
            Err(e) => return self.fail(e),
        };
        let wrong = if r.outputs.len() != tuples.len() {
            Some(format!("answered {} output lists for {} tuples", r.outputs.len(), tuples.len()))
        } else if r.state.is_empty() {
            None
        } else {
            let keys: BTreeSet<&str> = tuples.iter().map(|t| t.key.as_str()).collect();
            r.state
                .keys()
                .find(|k| !keys.contains(k.as_str()))
                .map(|key| format!("returned state for key {key:?}, which is not in the batch"))
        };
        if let Some(e) = wrong {
            return self.fail(format!("operator `{name}` failed on {what}: {e}"));
        }
        for (key, value) in r.state {
            debug_assert!(!self.unsent.contains(&key), "restored state for {key} was sent before its answer");
            self.changed.insert(key.clone());
            self.state.insert(key, value);
        }
        let emitted: u64 = r.outputs.iter().map(|o| o.len() as u64).sum();
        for (t, outputs) in tuples.iter().zip(r.outputs) {
            for d in derive_owned(t, outputs) {
                if let Err(e) = self.router.route(&mut self.outlets, now, d) {
                    return self.fail(e);
                }
            }
        }
        self.counts = self.counts.add(tuples.len() as u64, emitted);
        if !self.coalesce {
            self.outlets.seal_all(now);
        }
        self.step(now);
    }
}

#[cfg(test)]
mod tests;
