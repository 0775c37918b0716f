//! Links: batches from one task to another, delivered to the receiver's operator exactly once
//! and in order, over a network that loses, duplicates and reorders.
//!
//! A [`LinkSender`] numbers batches 1, 2, 3... per link, keeps every batch until it is
//! acknowledged, lets at most `window` batches be unacknowledged (a slow receiver slows its
//! sender: backpressure), and resends a batch whose acknowledgement has not come within `retry`.
//! A [`LinkReceiver`] hands batches to its task strictly in sequence order: a batch at or below
//! the last one committed is a duplicate (acknowledged again, never processed again), one ahead
//! of the next expected is held (at most `window` of them) until the gap is filled.
//! Acknowledgements are cumulative: "everything up to `seq` is processed and journaled".
//!
//! Invariants kept here: a receiver offers each sequence number to its task at most once and in
//! increasing order without gaps; a sender never forgets a batch before it is acknowledged and
//! never has more than `window` batches unacknowledged (restored batches aside); both sides
//! restart from a journal (`LinkSender::restore`, `LinkReceiver::new(delivered)`) with the same
//! numbering, so a restarted task's resent batches are recognised as duplicates downstream.

use crate::time::{Millis, Time};
use std::collections::BTreeMap;

/// A batch's number on its link (the first batch is 1; 0 means "none yet").
pub type LinkSeq = u64;

/// The sending end of one link.
#[derive(Clone, Debug)]
pub struct LinkSender<T> {
    window: usize,
    retry: Millis,
    next: LinkSeq,
    acked: LinkSeq,
    /// Unacknowledged batches and when each was last sent (`None`: restored, not sent yet).
    unacked: BTreeMap<LinkSeq, (T, Option<Time>)>,
}

impl<T: Clone> LinkSender<T> {
    /// A sender whose next batch gets `next` (1 for a new link).
    pub fn new(next: LinkSeq, window: usize, retry: Millis) -> LinkSender<T> {
        LinkSender {
            window: window.max(1),
            retry,
            next: next.max(1),
            acked: next.max(1) - 1,
            unacked: BTreeMap::new(),
        }
    }

    /// Whether another batch may be sent now (fewer than `window` unacknowledged).
    pub fn has_room(&self) -> bool {
        self.unacked.len() < self.window
    }

    /// Numbers `batch` and records it as sent at `now`; the caller sends it. `None` (and
    /// nothing recorded) when the window is full.
    pub fn push(&mut self, now: Time, batch: T) -> Option<LinkSeq> {
        if !self.has_room() {
            return None;
        }
        let seq = self.next;
        self.next += 1;
        self.unacked.insert(seq, (batch, Some(now)));
        Some(seq)
    }

    /// After a restart: a batch the journal says was sent and not known acknowledged. It is due
    /// at once. Sequence numbers must be restored in increasing order.
    pub fn restore(&mut self, seq: LinkSeq, batch: T) {
        if seq <= self.acked {
            return;
        }
        self.next = self.next.max(seq + 1);
        self.unacked.insert(seq, (batch, None));
    }

    /// The receiver has processed everything up to `upto`. Returns how many batches this
    /// acknowledgement released.
    pub fn on_ack(&mut self, upto: LinkSeq) -> usize {
        if upto <= self.acked {
            return 0;
        }
        self.acked = upto.min(self.next - 1);
        let keep = self.unacked.split_off(&(self.acked + 1));
        let released = self.unacked.len();
        self.unacked = keep;
        released
    }

    /// Batches whose acknowledgement is overdue at `now`, oldest first; each is marked resent.
    pub fn due(&mut self, now: Time) -> Vec<(LinkSeq, T)> {
        let retry = self.retry;
        self.unacked
            .iter_mut()
            .filter(|(_, (_, sent))| sent.is_none_or(|t| t + retry <= now))
            .map(|(seq, (batch, sent))| {
                *sent = Some(now);
                (*seq, batch.clone())
            })
            .collect()
    }

    /// When the oldest unacknowledged batch is due again.
    pub fn next_deadline(&self) -> Option<Time> {
        self.unacked.values().map(|(_, sent)| sent.map_or(Time(0), |t| t + self.retry)).min()
    }

    /// Everything up to this is acknowledged.
    pub fn acked(&self) -> LinkSeq {
        self.acked
    }

    /// The number the next batch gets.
    pub fn next_seq(&self) -> LinkSeq {
        self.next
    }

    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Whether every batch sent so far is acknowledged.
    pub fn is_idle(&self) -> bool {
        self.unacked.is_empty()
    }
}

/// What a receiver made of an arriving batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Already processed: acknowledge `ack` again (the earlier acknowledgement may be lost).
    Duplicate { ack: LinkSeq },
    /// Kept until it is its turn (see [`LinkReceiver::next_ready`]).
    Held,
    /// Too far ahead of the next expected batch: dropped; the sender resends it later.
    TooFarAhead,
}

/// The receiving end of one link.
#[derive(Clone, Debug)]
pub struct LinkReceiver<T> {
    window: usize,
    /// Everything up to this is processed and journaled.
    delivered: LinkSeq,
    /// The batch handed to the task and not yet committed.
    in_progress: Option<LinkSeq>,
    held: BTreeMap<LinkSeq, T>,
}

impl<T> LinkReceiver<T> {
    /// A receiver that has processed everything up to `delivered` (0 for a new link).
    pub fn new(delivered: LinkSeq, window: usize) -> LinkReceiver<T> {
        LinkReceiver { window: window.max(1), delivered, in_progress: None, held: BTreeMap::new() }
    }

    /// A batch arrived.
    pub fn arrive(&mut self, seq: LinkSeq, batch: T) -> Arrival {
        if seq <= self.delivered || self.in_progress == Some(seq) {
            return Arrival::Duplicate { ack: self.delivered };
        }
        if seq > self.delivered + self.window as u64 {
            return Arrival::TooFarAhead;
        }
        self.held.entry(seq).or_insert(batch);
        Arrival::Held
    }

    /// The next batch in order, if it has arrived and none is being processed. The task
    /// processes it, journals the result, then calls [`LinkReceiver::commit`].
    pub fn next_ready(&mut self) -> Option<(LinkSeq, T)> {
        if self.in_progress.is_some() {
            return None;
        }
        let seq = self.delivered + 1;
        let batch = self.held.remove(&seq)?;
        self.in_progress = Some(seq);
        Some((seq, batch))
    }

    /// The batch handed out by `next_ready` is journaled: acknowledge up to the returned seq.
    pub fn commit(&mut self, seq: LinkSeq) -> LinkSeq {
        if self.in_progress == Some(seq) {
            self.in_progress = None;
            self.delivered = seq;
        }
        self.delivered
    }

    /// Processing the batch in progress failed before it was journaled: offer it again later.
    pub fn abandon(&mut self, seq: LinkSeq, batch: T) {
        if self.in_progress == Some(seq) {
            self.in_progress = None;
            self.held.insert(seq, batch);
        }
    }

    pub fn delivered(&self) -> LinkSeq {
        self.delivered
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn the_window_bounds_unacknowledged_batches_and_acks_release_them() {
        let mut s = LinkSender::new(1, 2, Millis(100));
        assert_eq!(s.push(Time(0), "a"), Some(1));
        assert_eq!(s.push(Time(0), "b"), Some(2));
        assert_eq!(s.push(Time(0), "c"), None, "a full window pushes back");
        assert_eq!(s.on_ack(1), 1);
        assert_eq!(s.push(Time(5), "c"), Some(3));
        assert_eq!(s.on_ack(1), 0, "an old acknowledgement changes nothing");
        assert_eq!(s.on_ack(99), 2, "an acknowledgement past what was sent is capped");
        assert_eq!(s.acked(), 3);
        assert!(s.is_idle());
    }

    #[test]
    fn overdue_batches_are_resent_oldest_first() {
        let mut s = LinkSender::new(1, 4, Millis(100));
        s.push(Time(0), 'a');
        s.push(Time(50), 'b');
        assert!(s.due(Time(99)).is_empty());
        assert_eq!(s.due(Time(100)), vec![(1, 'a')]);
        assert_eq!(s.next_deadline(), Some(Time(150)));
        assert_eq!(s.due(Time(200)), vec![(1, 'a'), (2, 'b')]);
    }

    #[test]
    fn a_restored_sender_resends_at_once_with_the_same_numbers() {
        let mut s = LinkSender::new(3, 2, Millis(100));
        s.restore(3, 'x');
        s.restore(4, 'y');
        assert_eq!(s.due(Time(1_000)), vec![(3, 'x'), (4, 'y')]);
        assert_eq!(s.push(Time(1_000), 'z'), None, "restored batches fill the window too");
        s.on_ack(4);
        assert_eq!(s.push(Time(1_000), 'z'), Some(5));
    }

    #[test]
    fn a_receiver_processes_in_order_once_and_reacks_duplicates() {
        let mut r = LinkReceiver::new(0, 4);
        assert_eq!(r.arrive(2, 'b'), Arrival::Held);
        assert_eq!(r.next_ready(), None, "1 has not arrived");
        assert_eq!(r.arrive(1, 'a'), Arrival::Held);
        assert_eq!(r.next_ready(), Some((1, 'a')));
        assert_eq!(r.next_ready(), None, "one batch at a time");
        assert_eq!(r.arrive(1, 'a'), Arrival::Duplicate { ack: 0 }, "in progress: not processed twice");
        assert_eq!(r.commit(1), 1);
        assert_eq!(r.next_ready(), Some((2, 'b')));
        assert_eq!(r.commit(2), 2);
        assert_eq!(r.arrive(2, 'b'), Arrival::Duplicate { ack: 2 });
        assert_eq!(r.arrive(7, 'g'), Arrival::TooFarAhead);
    }

    #[test]
    fn an_abandoned_batch_is_offered_again() {
        let mut r = LinkReceiver::new(5, 4);
        r.arrive(6, 'f');
        let (seq, b) = r.next_ready().unwrap();
        r.abandon(seq, b);
        assert_eq!(r.next_ready(), Some((6, 'f')));
    }

    /// One link over a network that loses, duplicates and reorders, with the receiver committing
    /// at random moments and both ends restarting from what they had committed: every batch is
    /// processed exactly once, in order, and all of them are processed.
    /// `forget` plants a bug: a restarted receiver loses what it had committed.
    fn exactly_once_over(seed: u64, batches: u64, forget: bool) -> Result<(), String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (window, retry) = (rng.gen_range(1..6), Millis(rng.gen_range(5..50)));
        let mut sender: LinkSender<u64> = LinkSender::new(1, window, retry);
        let mut receiver: LinkReceiver<u64> = LinkReceiver::new(0, window);
        let mut net: Vec<(Time, bool, u64, u64)> = Vec::new(); // (arrives, is_ack, seq, payload)
        let mut processed: Vec<u64> = Vec::new();
        let mut produced = 0u64;
        let mut now = Time(0);
        for _ in 0..200_000 {
            if processed.len() as u64 == batches {
                return if processed == (1..=batches).collect::<Vec<_>>() {
                    Ok(())
                } else {
                    Err(format!("processed {processed:?}"))
                };
            }
            now = now + Millis(1);
            let send = |net: &mut Vec<_>, rng: &mut ChaCha8Rng, ack: bool, seq: u64, p: u64| {
                for _ in 0..[0, 1, 1, 1, 2][rng.gen_range(0..5)] {
                    net.push((now + Millis(rng.gen_range(1..30)), ack, seq, p));
                }
            };
            while produced < batches && sender.has_room() {
                let seq = sender.push(now, produced + 1).expect("room");
                produced += 1;
                send(&mut net, &mut rng, false, seq, produced);
            }
            for (seq, p) in sender.due(now) {
                send(&mut net, &mut rng, false, seq, p);
            }
            let (arrived, later): (Vec<_>, Vec<_>) = net.drain(..).partition(|m| m.0 <= now);
            net = later;
            for (_, is_ack, seq, p) in arrived {
                if is_ack {
                    sender.on_ack(seq);
                } else if let Arrival::Duplicate { ack } = receiver.arrive(seq, p) {
                    send(&mut net, &mut rng, true, ack, 0);
                }
            }
            if rng.gen_bool(0.5) {
                if let Some((seq, p)) = receiver.next_ready() {
                    if seq != p {
                        return Err(format!("batch {seq} carried {p}"));
                    }
                    if rng.gen_bool(0.1) {
                        receiver.abandon(seq, p); // processing failed before the journal
                    } else {
                        processed.push(p);
                        let ack = receiver.commit(seq);
                        send(&mut net, &mut rng, true, ack, 0);
                    }
                }
            }
            if rng.gen_bool(0.002) {
                // The receiver restarts from its journal: what it committed survives.
                let delivered = if forget { 0 } else { receiver.delivered() };
                receiver = LinkReceiver::new(delivered, window);
            }
        }
        Err(format!("only {} of {batches} batches processed", processed.len()))
    }

    #[test]
    fn batches_are_processed_exactly_once_under_loss_duplication_and_reordering() {
        for seed in 0..200 {
            exactly_once_over(seed, 60, false).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
    }

    #[test]
    fn the_exactly_once_check_catches_a_receiver_that_forgets_its_commits() {
        let caught = (0..200).filter(|seed| exactly_once_over(*seed, 60, true).is_err()).count();
        assert!(caught > 0, "a forgetful receiver went unnoticed in 200 seeds");
    }

    proptest! {
        #[test]
        fn receivers_never_offer_a_batch_twice(seqs in proptest::collection::vec(0u64..20, 0..200)) {
            let mut r = LinkReceiver::new(0, 8);
            let mut offered = Vec::new();
            for s in seqs {
                r.arrive(s, s);
                while let Some((seq, _)) = r.next_ready() {
                    offered.push(seq);
                    r.commit(seq);
                }
            }
            let expected: Vec<u64> = (1..=offered.len() as u64).collect();
            prop_assert_eq!(offered, expected);
        }
    }
}
