//! A task's outputs: for each downstream task, a buffer that coalesces tuples across the task's
//! input batches, a queue of sealed batches waiting for room in the link's window, and the
//! link's sender.
//!
//! A buffer is sealed into a batch when it reaches `batch_bytes` or `batch_tuples`, when its
//! first tuple has waited `linger`, or before a barrier or the end of the stream (which then
//! follow every tuple sent before them, on every link). So however many tasks a stage has, a
//! task sends each downstream task full batches, not a sliver of every input batch.
//!
//! Invariants kept here:
//! * on every link, batches leave in the order they were sealed or queued, numbered 1, 2, 3...,
//!   and a barrier or end is queued only after every buffered tuple was sealed before it;
//! * a sealed batch holds at most `batch_tuples` tuples and, unless one tuple is larger, at most
//!   `batch_bytes` bytes;
//! * the task is told to stop taking input ([`Outlets::blocked`]) while any link has a sealed
//!   batch of tuples that its window cannot take, so a slow receiver slows its senders instead
//!   of growing their memory.

use std::collections::{BTreeMap, VecDeque};

use super::config::RainstormConfig;
use super::job::TaskId;
use super::link::LinkSender;
use super::message::{Batch, LinkMsg};
use super::tuple::Tuple;
use crate::time::{Millis, Time};

struct Outlet {
    sender: LinkSender<Batch>,
    buffer: Vec<Tuple>,
    buffer_bytes: usize,
    /// When the buffer's first tuple came.
    since: Option<Time>,
    /// Sealed batches the window has no room for yet.
    queue: VecDeque<Batch>,
}

/// The outgoing links of one task.
pub struct Outlets {
    links: BTreeMap<TaskId, Outlet>,
    batch_bytes: usize,
    batch_tuples: usize,
    linger: Millis,
    out: VecDeque<(TaskId, LinkMsg)>,
    batches_sent: u64,
}

impl Outlets {
    pub fn new(downstream: &[TaskId], cfg: &RainstormConfig) -> Outlets {
        let links = downstream
            .iter()
            .map(|d| {
                let sender = LinkSender::new(cfg.window as usize, cfg.window_bytes as usize, cfg.retry);
                let outlet = Outlet {
                    sender,
                    buffer: Vec::new(),
                    buffer_bytes: 0,
                    since: None,
                    queue: VecDeque::new(),
                };
                (*d, outlet)
            })
            .collect();
        Outlets {
            links,
            batch_bytes: cfg.batch_bytes.max(1) as usize,
            batch_tuples: cfg.batch_tuples.max(1) as usize,
            linger: cfg.linger,
            out: VecDeque::new(),
            batches_sent: 0,
        }
    }

    /// Adds an output for `to`; seals its buffer if that fills it.
    pub fn push(&mut self, now: Time, to: TaskId, tuple: Tuple) {
        let Some(o) = self.links.get_mut(&to) else { return };
        o.buffer_bytes += tuple.weight();
        o.buffer.push(tuple);
        o.since.get_or_insert(now);
        if o.buffer_bytes >= self.batch_bytes || o.buffer.len() >= self.batch_tuples {
            Outlets::seal(o);
            self.pump(now);
        }
    }

    fn seal(o: &mut Outlet) {
        if o.buffer.is_empty() {
            return;
        }
        o.queue.push_back(Batch::Tuples(std::mem::take(&mut o.buffer).into()));
        o.buffer_bytes = 0;
        o.since = None;
    }

    /// Seals every buffer now (what a task does after each input batch only if it does not
    /// coalesce).
    pub fn seal_all(&mut self, now: Time) {
        for o in self.links.values_mut() {
            Outlets::seal(o);
        }
        self.pump(now);
    }

    /// Queues a barrier or the end of the stream on every link, after everything buffered.
    pub fn control(&mut self, now: Time, batch: Batch) {
        debug_assert!(!matches!(batch, Batch::Tuples(_)));
        for o in self.links.values_mut() {
            Outlets::seal(o);
            o.queue.push_back(batch.clone());
        }
        self.pump(now);
    }

    /// Sends queued batches while their windows have room.
    fn pump(&mut self, now: Time) {
        for (to, o) in &mut self.links {
            while o.sender.has_room() {
                let Some(batch) = o.queue.pop_front() else { break };
                if matches!(batch, Batch::Tuples(_)) {
                    self.batches_sent += 1;
                }
                let seq = o.sender.push(now, batch.clone()).expect("room was checked");
                self.out.push_back((*to, LinkMsg::Batch { seq, batch }));
            }
        }
    }

    /// Whether a sealed batch of tuples waits for window room on some link: take no more input.
    pub fn blocked(&self) -> bool {
        self.links.values().any(|o| o.queue.iter().any(|b| matches!(b, Batch::Tuples(_))))
    }

    /// `from` took our batches up to `upto`.
    pub fn on_ack(&mut self, now: Time, from: TaskId, upto: u64) {
        if let Some(o) = self.links.get_mut(&from) {
            o.sender.on_ack(upto);
        }
        self.pump(now);
    }

    /// Resends overdue batches and seals buffers that waited `linger`.
    pub fn handle_timeout(&mut self, now: Time) {
        for (to, o) in &mut self.links {
            for (seq, batch) in o.sender.due(now) {
                self.out.push_back((*to, LinkMsg::Batch { seq, batch }));
            }
            if o.since.is_some_and(|t| t + self.linger <= now) {
                Outlets::seal(o);
            }
        }
        self.pump(now);
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        let resends = self.links.values().filter_map(|o| o.sender.next_deadline());
        let lingers = self.links.values().filter_map(|o| o.since.map(|t| t + self.linger));
        resends.chain(lingers).min()
    }

    /// The next link message to send.
    pub fn poll(&mut self) -> Option<(TaskId, LinkMsg)> {
        self.out.pop_front()
    }

    /// Whether everything was sent and acknowledged.
    pub fn idle(&self) -> bool {
        self.links.values().all(|o| o.buffer.is_empty() && o.queue.is_empty() && o.sender.is_idle())
    }

    /// Bytes held: buffers, queued batches and unacknowledged ones.
    pub fn buffered_bytes(&self) -> usize {
        self.links
            .values()
            .map(|o| {
                o.buffer_bytes + o.queue.iter().map(Batch::weight).sum::<usize>() + o.sender.unacked_bytes()
            })
            .sum()
    }

    /// Bytes of batches sent and not acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.links.values().map(|o| o.sender.unacked_bytes()).sum()
    }

    /// Batches of tuples sent so far (resends not counted).
    pub fn batches_sent(&self) -> u64 {
        self.batches_sent
    }

    /// Per link: acknowledged / next number, and what waits.
    pub fn describe(&self) -> String {
        let links: Vec<String> = self
            .links
            .iter()
            .map(|(to, o)| {
                format!(
                    "{to}:{}/{}+{}q{}",
                    o.sender.acked(),
                    o.sender.next_seq(),
                    o.buffer.len(),
                    o.queue.len()
                )
            })
            .collect();
        links.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: TaskId = TaskId { stage: 1, index: 0 };
    const B: TaskId = TaskId { stage: 1, index: 1 };

    fn tuple(line: u64, value: &str) -> Tuple {
        Tuple::source("f", line, value)
    }

    fn cfg() -> RainstormConfig {
        RainstormConfig {
            batch_bytes: 200,
            batch_tuples: 3,
            linger: Millis(5),
            window: 2,
            ..RainstormConfig::default()
        }
    }

    fn drain(o: &mut Outlets) -> Vec<(TaskId, LinkMsg)> {
        std::iter::from_fn(|| o.poll()).collect()
    }

    #[test]
    fn outputs_are_coalesced_until_full_or_lingering() {
        let mut o = Outlets::new(&[A, B], &cfg());
        o.push(Time(0), A, tuple(1, "x"));
        o.push(Time(1), A, tuple(2, "y"));
        assert!(drain(&mut o).is_empty(), "two tuples wait for a third");
        o.push(Time(2), A, tuple(3, "z"));
        let sent = drain(&mut o);
        assert!(
            matches!(&sent[..], [(A, LinkMsg::Batch { seq: 1, batch: Batch::Tuples(t) })] if t.len() == 3)
        );
        o.push(Time(10), B, tuple(4, "w"));
        assert_eq!(o.poll_timeout(), Some(Time(15)));
        o.handle_timeout(Time(15));
        assert!(matches!(&drain(&mut o)[..], [(B, LinkMsg::Batch { seq: 1, .. })]), "it lingered 5 ms");
        assert_eq!(o.batches_sent(), 2);
    }

    #[test]
    fn a_barrier_follows_everything_buffered_on_every_link() {
        let mut o = Outlets::new(&[A, B], &cfg());
        o.push(Time(0), A, tuple(1, "x"));
        o.control(Time(0), Batch::Barrier(7));
        let sent: Vec<(TaskId, u64, bool)> = drain(&mut o)
            .into_iter()
            .map(|(to, m)| match m {
                LinkMsg::Batch { seq, batch } => (to, seq, matches!(batch, Batch::Barrier(7))),
                LinkMsg::Ack { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(sent, [(A, 1, false), (A, 2, true), (B, 1, true)]);
    }

    #[test]
    fn a_full_window_blocks_the_task_until_acknowledged() {
        let mut o = Outlets::new(&[A], &cfg());
        for line in 0..9 {
            o.push(Time(0), A, tuple(line, "v"));
        }
        assert_eq!(drain(&mut o).len(), 2, "the window holds two batches");
        assert!(o.blocked(), "the third waits");
        o.on_ack(Time(1), A, 1);
        assert_eq!(drain(&mut o).len(), 1);
        assert!(!o.blocked());
        assert!(!o.idle());
        o.on_ack(Time(2), A, 3);
        assert!(o.idle());
    }
}
