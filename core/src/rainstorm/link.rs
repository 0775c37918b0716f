//! Links: batches from one task to another, delivered to the receiver's operator exactly once
//! and in order, over a network that loses, duplicates and reorders.
//!
//! A [`LinkSender`] numbers batches 1, 2, 3... per link, keeps every batch until it is
//! acknowledged, lets at most `window` batches and `window_bytes` bytes be unacknowledged (a slow
//! receiver slows its sender: backpressure; one batch is always allowed, however large), and
//! resends a batch whose acknowledgement has not come within `retry`. A [`LinkReceiver`] hands
//! batches to its task strictly in sequence order: a batch at or below the last one taken is a
//! duplicate (acknowledged again, never taken again), one ahead of the next expected is held (at
//! most `window` of them) until the gap is filled. Acknowledgements are cumulative: "everything
//! up to `seq` is taken". A link lives for one attempt of its job; a rollback starts new ones.
//!
//! Invariants kept here: a receiver offers each sequence number to its task at most once and in
//! increasing order without gaps; a sender never forgets a batch before it is acknowledged and
//! never has more than `window` batches (or, beyond one batch, `window_bytes` bytes)
//! unacknowledged.

use crate::time::{Millis, Time};
use std::collections::BTreeMap;

/// A batch's number on its link (the first batch is 1; 0 means "none yet").
pub type LinkSeq = u64;

/// What a batch weighs in a window, in bytes.
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for super::message::Batch {
    fn weight(&self) -> usize {
        super::message::Batch::weight(self)
    }
}

/// The sending end of one link.
#[derive(Clone, Debug)]
pub struct LinkSender<T> {
    window: usize,
    window_bytes: usize,
    retry: Millis,
    next: LinkSeq,
    acked: LinkSeq,
    /// Unacknowledged batches, their weight and when each was last sent.
    unacked: BTreeMap<LinkSeq, (T, usize, Time)>,
    unacked_bytes: usize,
}

impl<T: Clone + Weigh> LinkSender<T> {
    /// A new link's sender.
    pub fn new(window: usize, window_bytes: usize, retry: Millis) -> LinkSender<T> {
        LinkSender {
            window: window.max(1),
            window_bytes: window_bytes.max(1),
            retry,
            next: 1,
            acked: 0,
            unacked: BTreeMap::new(),
            unacked_bytes: 0,
        }
    }

    /// Whether another batch may be sent now.
    pub fn has_room(&self) -> bool {
        self.unacked.is_empty()
            || (self.unacked.len() < self.window && self.unacked_bytes < self.window_bytes)
    }

    /// Numbers `batch` and records it as sent at `now`; the caller sends it. `None` (and
    /// nothing recorded) when the window is full.
    pub fn push(&mut self, now: Time, batch: T) -> Option<LinkSeq> {
        if !self.has_room() {
            return None;
        }
        let seq = self.next;
        self.next += 1;
        let weight = batch.weight();
        self.unacked_bytes += weight;
        self.unacked.insert(seq, (batch, weight, now));
        debug_assert!(self.unacked.len() <= self.window);
        Some(seq)
    }

    /// The receiver took everything up to `upto`. Returns how many batches this
    /// acknowledgement released.
    pub fn on_ack(&mut self, upto: LinkSeq) -> usize {
        if upto <= self.acked {
            return 0;
        }
        self.acked = upto.min(self.next - 1);
        let keep = self.unacked.split_off(&(self.acked + 1));
        let released = self.unacked.len();
        self.unacked_bytes -= self.unacked.values().map(|(_, w, _)| w).sum::<usize>();
        self.unacked = keep;
        released
    }

    /// Batches whose acknowledgement is overdue at `now`, oldest first; each is marked resent.
    pub fn due(&mut self, now: Time) -> Vec<(LinkSeq, T)> {
        let retry = self.retry;
        self.unacked
            .iter_mut()
            .filter(|(_, (_, _, sent))| *sent + retry <= now)
            .map(|(seq, (batch, _, sent))| {
                *sent = now;
                (*seq, batch.clone())
            })
            .collect()
    }

    /// When the oldest unacknowledged batch is due again.
    pub fn next_deadline(&self) -> Option<Time> {
        self.unacked.values().map(|(_, _, sent)| *sent + self.retry).min()
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

    /// Bytes of unacknowledged batches.
    pub fn unacked_bytes(&self) -> usize {
        self.unacked_bytes
    }

    /// Whether every batch sent so far is acknowledged.
    pub fn is_idle(&self) -> bool {
        self.unacked.is_empty()
    }
}

/// What a receiver made of an arriving batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Already taken: acknowledge `ack` again (the earlier acknowledgement may be lost).
    Duplicate { ack: LinkSeq },
    /// Kept until it is its turn (see [`LinkReceiver::take`]).
    Held,
    /// Too far ahead of the next expected batch: dropped; the sender resends it later.
    TooFarAhead,
}

/// The receiving end of one link.
#[derive(Clone, Debug)]
pub struct LinkReceiver<T> {
    window: usize,
    /// Everything up to this is taken.
    taken: LinkSeq,
    held: BTreeMap<LinkSeq, T>,
    held_bytes: usize,
}

impl<T: Weigh> LinkReceiver<T> {
    /// A new link's receiver.
    pub fn new(window: usize) -> LinkReceiver<T> {
        LinkReceiver { window: window.max(1), taken: 0, held: BTreeMap::new(), held_bytes: 0 }
    }

    /// A batch arrived.
    pub fn arrive(&mut self, seq: LinkSeq, batch: T) -> Arrival {
        if seq <= self.taken {
            return Arrival::Duplicate { ack: self.taken };
        }
        if seq > self.taken + self.window as u64 {
            return Arrival::TooFarAhead;
        }
        if !self.held.contains_key(&seq) {
            self.held_bytes += batch.weight();
            self.held.insert(seq, batch);
        }
        debug_assert!(self.held.len() <= self.window);
        Arrival::Held
    }

    /// Whether the next batch in order is here.
    pub fn ready(&self) -> bool {
        self.held.contains_key(&(self.taken + 1))
    }

    /// The next batch in order, if it has arrived; the caller acknowledges up to its number.
    pub fn take(&mut self) -> Option<(LinkSeq, T)> {
        let seq = self.taken + 1;
        let batch = self.held.remove(&seq)?;
        self.held_bytes -= batch.weight();
        self.taken = seq;
        Some((seq, batch))
    }

    /// Everything up to this was taken.
    pub fn taken(&self) -> LinkSeq {
        self.taken
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Bytes of batches held.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Test batches: a label and a weight.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct B(u64, usize);

    impl Weigh for B {
        fn weight(&self) -> usize {
            self.1
        }
    }

    #[test]
    fn the_window_bounds_unacknowledged_batches_and_acks_release_them() {
        let mut s = LinkSender::new(2, 1_000, Millis(100));
        assert_eq!(s.push(Time(0), B(1, 1)), Some(1));
        assert_eq!(s.push(Time(0), B(2, 1)), Some(2));
        assert_eq!(s.push(Time(0), B(3, 1)), None, "a full window pushes back");
        assert_eq!(s.on_ack(1), 1);
        assert_eq!(s.push(Time(5), B(3, 1)), Some(3));
        assert_eq!(s.on_ack(1), 0, "an old acknowledgement changes nothing");
        assert_eq!(s.on_ack(99), 2, "an acknowledgement past what was sent is capped");
        assert_eq!((s.acked(), s.unacked_bytes()), (3, 0));
        assert!(s.is_idle());
    }

    #[test]
    fn the_byte_window_bounds_bytes_in_flight_but_always_lets_one_batch_through() {
        let mut s = LinkSender::new(8, 100, Millis(100));
        assert_eq!(s.push(Time(0), B(1, 500)), Some(1), "one batch, however large");
        assert!(!s.has_room());
        s.on_ack(1);
        assert_eq!(s.push(Time(0), B(2, 60)), Some(2));
        assert_eq!(s.push(Time(0), B(3, 60)), Some(3), "under the limit before it");
        assert_eq!(s.push(Time(0), B(4, 1)), None, "120 bytes in flight");
        assert_eq!(s.unacked_bytes(), 120);
    }

    #[test]
    fn overdue_batches_are_resent_oldest_first() {
        let mut s = LinkSender::new(4, 1_000, Millis(100));
        s.push(Time(0), B(1, 1));
        s.push(Time(50), B(2, 1));
        assert!(s.due(Time(99)).is_empty());
        assert_eq!(s.due(Time(100)), vec![(1, B(1, 1))]);
        assert_eq!(s.next_deadline(), Some(Time(150)));
        assert_eq!(s.due(Time(200)), vec![(1, B(1, 1)), (2, B(2, 1))]);
    }

    #[test]
    fn a_receiver_hands_out_in_order_once_and_reacks_duplicates() {
        let mut r = LinkReceiver::new(4);
        assert_eq!(r.arrive(2, B(2, 3)), Arrival::Held);
        assert_eq!(r.take(), None, "1 has not arrived");
        assert_eq!(r.arrive(1, B(1, 5)), Arrival::Held);
        assert_eq!(r.held_bytes(), 8);
        assert_eq!(r.take(), Some((1, B(1, 5))));
        assert_eq!(r.arrive(1, B(1, 5)), Arrival::Duplicate { ack: 1 }, "taken: not taken twice");
        assert_eq!(r.take(), Some((2, B(2, 3))));
        assert_eq!((r.taken(), r.held_bytes()), (2, 0));
        assert_eq!(r.arrive(7, B(7, 1)), Arrival::TooFarAhead);
    }

    /// One link over a network that loses, duplicates and reorders, with the receiver taking
    /// at random moments: every batch is taken exactly once, in order, and all of them are.
    /// `forget` plants a bug: the receiver now and then forgets what it took.
    fn exactly_once_over(seed: u64, batches: u64, forget: bool) -> Result<(), String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (window, retry) = (rng.gen_range(1..6), Millis(rng.gen_range(5..50)));
        let mut sender: LinkSender<B> = LinkSender::new(window, 1 << 20, retry);
        let mut receiver: LinkReceiver<B> = LinkReceiver::new(window);
        let mut net: Vec<(Time, bool, u64, u64)> = Vec::new(); // (arrives, is_ack, seq, payload)
        let mut taken: Vec<u64> = Vec::new();
        let mut produced = 0u64;
        let mut now = Time(0);
        for _ in 0..200_000 {
            if taken.len() as u64 >= batches {
                return if taken == (1..=batches).collect::<Vec<_>>() {
                    Ok(())
                } else {
                    Err(format!("taken {taken:?}"))
                };
            }
            now = now + Millis(1);
            let send = |net: &mut Vec<_>, rng: &mut ChaCha8Rng, ack: bool, seq: u64, p: u64| {
                for _ in 0..[0, 1, 1, 1, 2][rng.gen_range(0..5)] {
                    net.push((now + Millis(rng.gen_range(1..30)), ack, seq, p));
                }
            };
            while produced < batches && sender.has_room() {
                let seq = sender.push(now, B(produced + 1, 1)).expect("room");
                produced += 1;
                send(&mut net, &mut rng, false, seq, produced);
            }
            for (seq, b) in sender.due(now) {
                send(&mut net, &mut rng, false, seq, b.0);
            }
            let (arrived, later): (Vec<_>, Vec<_>) = net.drain(..).partition(|m| m.0 <= now);
            net = later;
            for (_, is_ack, seq, p) in arrived {
                if is_ack {
                    sender.on_ack(seq);
                } else if let Arrival::Duplicate { ack } = receiver.arrive(seq, B(p, 1)) {
                    send(&mut net, &mut rng, true, ack, 0);
                }
            }
            if rng.gen_bool(0.5) {
                if let Some((seq, b)) = receiver.take() {
                    if seq != b.0 {
                        return Err(format!("batch {seq} carried {}", b.0));
                    }
                    taken.push(b.0);
                    send(&mut net, &mut rng, true, seq, 0);
                }
            }
            if forget && rng.gen_bool(0.01) {
                receiver = LinkReceiver::new(window);
            }
        }
        Err(format!("only {} of {batches} batches taken", taken.len()))
    }

    #[test]
    fn batches_are_taken_exactly_once_under_loss_duplication_and_reordering() {
        for seed in 0..200 {
            exactly_once_over(seed, 60, false).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
    }

    #[test]
    fn the_exactly_once_check_catches_a_receiver_that_forgets_what_it_took() {
        let caught = (0..200).filter(|seed| exactly_once_over(*seed, 60, true).is_err()).count();
        assert!(caught > 0, "a forgetful receiver went unnoticed in 200 seeds");
    }

    proptest! {
        #[test]
        fn receivers_never_offer_a_batch_twice(seqs in proptest::collection::vec(0u64..20, 0..200)) {
            let mut r = LinkReceiver::new(8);
            let mut offered = Vec::new();
            for s in seqs {
                r.arrive(s, B(s, 1));
                while let Some((seq, _)) = r.take() {
                    offered.push(seq);
                }
            }
            let expected: Vec<u64> = (1..=offered.len() as u64).collect();
            prop_assert_eq!(offered, expected);
        }
    }
}
