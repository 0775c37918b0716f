//! A job's sink, at its leader: the last stage's batches, aligned on checkpoint barriers and
//! cut into epochs.
//!
//! The outputs between barrier `c-1` and barrier `c` form epoch `c`: once every last-stage link
//! delivered barrier `c` (or ended), the sink closes the epoch. The leader commits a closed
//! epoch to the destination only once checkpoint `c` is complete (every task's snapshot of it
//! is in), so a rollback to the last complete checkpoint discards exactly the epochs after it,
//! and the outputs replayed after the rollback are the ones never committed. When every link
//! ended, what remains is the last epoch.
//!
//! Invariants kept here:
//! * the sink takes batches of one attempt only, each link in order, each batch once;
//! * epochs close in checkpoint order, each holding exactly the outputs between its barriers;
//! * a link that delivered the barrier being aligned on gives nothing more until the epoch
//!   closes; a paused sink (too many bytes waiting to be committed) takes nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::config::RainstormConfig;
use super::job::{Attempt, CheckpointId, TaskId};
use super::link::{Arrival, LinkReceiver};
use super::message::{Batch, LinkMsg};
use super::tuple::{dest_line, Tuple};

/// Outputs of one epoch, as tuples (for the console) and as destination lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Epoch {
    pub tuples: Vec<Tuple>,
    pub bytes: Vec<u8>,
    /// What it holds: its tuples' weights plus its destination bytes (what the sink's and the
    /// commits' bounds count).
    pub(super) weight: usize,
}

impl Epoch {
    fn add(&mut self, tuple: Tuple) {
        let line = dest_line(&tuple);
        self.weight += tuple.weight() + line.len();
        self.bytes.extend_from_slice(line.as_bytes());
        self.tuples.push(tuple);
    }

    /// The outputs of `later` after this epoch's.
    pub(super) fn append(&mut self, later: Epoch) {
        self.bytes.extend(later.bytes);
        self.tuples.extend(later.tuples);
        self.weight += later.weight;
    }

    /// Its tuples' weights plus its destination bytes.
    pub fn weight(&self) -> usize {
        self.weight
    }
}

/// What the sink found while taking batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkEvent {
    /// Every link delivered this barrier: the epoch up to it is closed.
    Aligned(CheckpointId),
    /// Every link ended: the rest is the last epoch.
    Ended,
}

struct SinkInput {
    rx: LinkReceiver<Batch>,
    blocked: bool,
    ended: bool,
}

pub struct Sink {
    attempt: Attempt,
    inputs: BTreeMap<TaskId, SinkInput>,
    window: usize,
    aligning: Option<CheckpointId>,
    open: Epoch,
    closed: BTreeMap<CheckpointId, Epoch>,
    ended: bool,
    /// Acknowledgements to send, and what was found.
    acks: VecDeque<(TaskId, LinkMsg)>,
    events: VecDeque<SinkEvent>,
}

impl Sink {
    pub fn new(cfg: &RainstormConfig, attempt: Attempt, upstream: &[TaskId]) -> Sink {
        let mut sink = Sink {
            attempt,
            inputs: BTreeMap::new(),
            window: cfg.window as usize,
            aligning: None,
            open: Epoch::default(),
            closed: BTreeMap::new(),
            ended: false,
            acks: VecDeque::new(),
            events: VecDeque::new(),
        };
        sink.reset(attempt, upstream);
        sink
    }

    /// A new attempt: new links, and every epoch not closed yet or closed for a checkpoint that
    /// was not complete is dropped (its outputs are produced again).
    pub fn reset(&mut self, attempt: Attempt, upstream: &[TaskId]) {
        self.attempt = attempt;
        self.inputs = upstream
            .iter()
            .map(|u| (*u, SinkInput { rx: LinkReceiver::new(self.window), blocked: false, ended: false }))
            .collect();
        self.aligning = None;
        self.open = Epoch::default();
        self.closed.clear();
        self.ended = false;
        self.events.clear();
    }

    pub fn attempt(&self) -> Attempt {
        self.attempt
    }

    /// A link message from a last-stage task of the sink's attempt.
    pub fn on_message(&mut self, from: TaskId, msg: LinkMsg) {
        let LinkMsg::Batch { seq, batch } = msg else { return };
        let Some(input) = self.inputs.get_mut(&from) else { return };
        if let Arrival::Duplicate { ack } = input.rx.arrive(seq, batch) {
            self.acks.push_back((from, LinkMsg::Ack { upto: ack }));
        }
    }

    /// Outputs taken outside the links (only a planted bug does this).
    pub fn inject(&mut self, tuples: Arc<Vec<Tuple>>) {
        Arc::unwrap_or_clone(tuples).into_iter().for_each(|t| self.open.add(t));
    }

    /// Takes every batch it may (none while `paused`).
    pub fn step(&mut self, paused: bool) {
        while !self.ended {
            if let Some(c) = self.aligning {
                if self.inputs.values().all(|i| i.ended || i.blocked) {
                    debug_assert!(
                        self.closed.keys().next_back().is_none_or(|last| *last < c),
                        "epochs close in checkpoint order"
                    );
                    self.closed.insert(c, std::mem::take(&mut self.open));
                    self.aligning = None;
                    for i in self.inputs.values_mut() {
                        i.blocked = false;
                    }
                    self.events.push_back(SinkEvent::Aligned(c));
                    continue;
                }
            } else if self.inputs.values().all(|i| i.ended) {
                self.ended = true;
                self.events.push_back(SinkEvent::Ended);
                return;
            }
            if paused {
                return;
            }
            let Some((from, batch)) = self.take() else { return };
            match batch {
                Batch::Tuples(tuples) => {
                    Arc::unwrap_or_clone(tuples).into_iter().for_each(|t| self.open.add(t))
                }
                Batch::Barrier(c) => {
                    debug_assert!(self.aligning.is_none_or(|a| a == c), "barriers out of order");
                    self.aligning = Some(c);
                    self.inputs.get_mut(&from).expect("taken from it").blocked = true;
                }
                Batch::End => self.inputs.get_mut(&from).expect("taken from it").ended = true,
            }
        }
    }

    fn take(&mut self) -> Option<(TaskId, Batch)> {
        for (from, input) in &mut self.inputs {
            if input.blocked || input.ended {
                continue;
            }
            if let Some((seq, batch)) = input.rx.take() {
                self.acks.push_back((*from, LinkMsg::Ack { upto: seq }));
                return Some((*from, batch));
            }
        }
        None
    }

    /// The closed epoch of checkpoint `c` (and any closed before it), for committing.
    pub fn take_closed(&mut self, c: CheckpointId) -> Epoch {
        let later = self.closed.split_off(&(c + 1));
        let upto = std::mem::replace(&mut self.closed, later);
        let mut epoch = Epoch::default();
        for (_, e) in upto {
            epoch.append(e);
        }
        epoch
    }

    /// Everything left once every link ended: the last epoch (closed ones included).
    pub fn take_rest(&mut self) -> Epoch {
        let mut epoch = self.take_closed(CheckpointId::MAX - 1);
        epoch.append(std::mem::take(&mut self.open));
        epoch
    }

    pub fn poll_ack(&mut self) -> Option<(TaskId, LinkMsg)> {
        self.acks.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SinkEvent> {
        self.events.pop_front()
    }

    /// Weight of the closed epochs (their checkpoints not complete yet).
    pub fn closed_weight(&self) -> usize {
        self.closed.values().map(Epoch::weight).sum()
    }

    /// Weight of the open epoch (outputs after the last barrier aligned on).
    pub fn open_weight(&self) -> usize {
        self.open.weight
    }

    /// Weight of the outputs held: the open epoch and the closed ones.
    pub fn held_weight(&self) -> usize {
        self.open_weight() + self.closed_weight()
    }

    /// Bytes of batches received and not taken.
    pub fn input_bytes(&self) -> usize {
        self.inputs.values().map(|i| i.rx.held_bytes()).sum()
    }

    /// Bytes held, batches in the links' receivers included.
    pub fn buffered_bytes(&self) -> usize {
        self.input_bytes() + self.held_weight()
    }

    /// Per link: taken, held and its mark.
    pub fn describe(&self) -> String {
        let links: Vec<String> = self
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
            "sink in {}, aligning {:?}, {} epochs closed",
            links.join(" "),
            self.aligning,
            self.closed.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: TaskId = TaskId { stage: 2, index: 0 };
    const B: TaskId = TaskId { stage: 2, index: 1 };

    fn batch(seq: u64, batch: Batch) -> LinkMsg {
        LinkMsg::Batch { seq, batch }
    }

    fn tuples(lines: &[u64]) -> Batch {
        Batch::Tuples(Arc::new(lines.iter().map(|l| Tuple::source("f", *l, format!("v{l}"))).collect()))
    }

    fn lines(e: &Epoch) -> Vec<u64> {
        e.tuples.iter().map(|t| t.id.line).collect()
    }

    #[test]
    fn epochs_hold_exactly_the_outputs_between_their_barriers() {
        let mut sink = Sink::new(&RainstormConfig::default(), 1, &[A, B]);
        sink.on_message(A, batch(1, tuples(&[1])));
        sink.on_message(A, batch(2, Batch::Barrier(5)));
        sink.on_message(A, batch(3, tuples(&[3])));
        sink.on_message(B, batch(1, tuples(&[2])));
        sink.step(false);
        assert_eq!(sink.poll_event(), None, "B has not delivered the barrier");
        assert_eq!(lines(&sink.open), [1, 2], "A's batch after the barrier waits");
        sink.on_message(B, batch(2, Batch::Barrier(5)));
        sink.on_message(B, batch(3, Batch::End));
        sink.step(false);
        assert_eq!(sink.poll_event(), Some(SinkEvent::Aligned(5)));
        assert_eq!(lines(&sink.take_closed(5)), [1, 2]);
        sink.on_message(A, batch(4, Batch::End));
        sink.step(false);
        assert_eq!(sink.poll_event(), Some(SinkEvent::Ended));
        let rest = sink.take_rest();
        assert_eq!(lines(&rest), [3]);
        assert_eq!(rest.bytes, b"v3\n");
        let acks: Vec<(TaskId, LinkMsg)> = std::iter::from_fn(|| sink.poll_ack()).collect();
        assert_eq!(acks.len(), 7, "every batch taken is acknowledged");
    }

    #[test]
    fn a_paused_sink_takes_nothing_and_a_reset_drops_what_was_not_committed() {
        let mut sink = Sink::new(&RainstormConfig::default(), 1, &[A]);
        sink.on_message(A, batch(1, tuples(&[1])));
        sink.step(true);
        assert_eq!(sink.held_weight(), 0);
        sink.step(false);
        let taken = Tuple::source("f", 1, "v1".to_owned());
        assert_eq!(sink.held_weight(), taken.weight() + dest_line(&taken).len(), "the tuple and its line");
        assert_eq!(sink.open_weight(), sink.held_weight());
        sink.reset(2, &[A]);
        assert_eq!(sink.held_weight(), 0);
        assert_eq!(sink.attempt(), 2);
    }
}
