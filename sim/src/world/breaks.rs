//! Stream connections that break, and what becomes of the stream frames in flight on them.
//!
//! A stream frame travels on a TCP connection between its two nodes. The connection breaks when a
//! partition or a one-way cut separates the pair (TCP needs both directions) or when either end
//! crashes, and real TCP then loses what was in flight; a sender that connects again may send a
//! frame a second time. So when a connection breaks, each stream frame in flight between the pair
//! (either direction) is, independently, lost (`NetConfig::broken_stream_drop_permille`),
//! delivered twice (`broken_stream_duplicate_permille`, the copy one more latency later) or
//! delivered as it was. Reordering needs no model of its own: latencies already reorder.
//!
//! Invariants kept here:
//! * only stream frames between a pair whose connection breaks now are touched; a pair already
//!   cut has nothing in flight (the world refuses to send across a cut), so cutting it again
//!   draws nothing;
//! * fates are drawn from the world's own break RNG, frame by frame in (time, sequence) order,
//!   and each goes into the trace hash, so a run stays a pure function of its scenario; with both
//!   probabilities zero nothing is drawn and the run is what it was before breaks were modelled;
//! * a frame sent to a process that crashed since is never delivered, to it or to the process
//!   started after it at its slot (checked on delivery, `World::deliver`).

use super::{EventKind, Queued, World, TRACE_BREAK};
use crate::actor::Actor;
use crate::scenario::Slot;
use rainstorm_core::{Channel, Millis};
use rand::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

/// The fate of a stream frame, in the trace: its receiving process is gone.
pub(super) const FATE_GONE: u8 = 0;
const FATE_LOST: u8 = 1;
const FATE_DUPLICATED: u8 = 2;
const FATE_DELIVERED: u8 = 3;

impl<A: Actor> World<A> {
    /// Blocks every (from, to) of `pairs` and breaks the connections of the pairs that were
    /// whole until now.
    pub(super) fn cut(&mut self, pairs: Vec<(Slot, Slot)>) {
        let mut broken = BTreeSet::new();
        for (a, b) in pairs {
            if !self.blocked.contains(&(a, b)) && !self.blocked.contains(&(b, a)) {
                broken.insert((a.min(b), a.max(b)));
            }
            self.blocked.insert((a, b));
        }
        if !broken.is_empty() {
            self.break_streams(&|a, b| broken.contains(&(a.min(b), a.max(b))));
        }
    }

    /// The connections between the pairs `broken` names break now: every stream frame in flight
    /// on them meets its fate.
    pub(super) fn break_streams(&mut self, broken: &dyn Fn(Slot, Slot) -> bool) {
        let net = &self.scenario.net;
        let (drop, duplicate) = (net.broken_stream_drop_permille, net.broken_stream_duplicate_permille);
        let latency = (net.latency_min_ms, net.latency_max_ms.max(net.latency_min_ms));
        if drop == 0 && duplicate == 0 {
            return;
        }
        // A scenario file may say anything: the fates of a frame stay a distribution.
        let drop = drop.min(1000);
        let duplicate = duplicate.min(1000 - drop);
        let mut queued: Vec<Queued> =
            std::mem::take(&mut self.queue).into_iter().map(|Reverse(q)| q).collect();
        queued.sort_by_key(|q| (q.at, q.seq));
        let mut kept = BinaryHeap::with_capacity(queued.len());
        let mut copies = Vec::new();
        for q in queued {
            let (from, to) = match &q.kind {
                EventKind::Deliver { from, to, channel: Channel::Stream, .. } if broken(*from, *to) => {
                    (*from, *to)
                }
                _ => {
                    kept.push(Reverse(q));
                    continue;
                }
            };
            let roll = self.break_rng.gen_range(0..1000);
            let fate = if roll < drop {
                FATE_LOST
            } else if roll < drop + duplicate {
                FATE_DUPLICATED
            } else {
                FATE_DELIVERED
            };
            let mut record = vec![fate];
            record.extend_from_slice(&(from as u64).to_le_bytes());
            self.trace.record(TRACE_BREAK, self.now, to, &record);
            let word = ["", "lost", "duplicated", "still delivered"][usize::from(fate)];
            self.trace.line(self.now, Some(from), || {
                format!("connection to n{to} broke: a frame in flight {word}")
            });
            match fate {
                FATE_LOST => self.stats.stream_frames_lost += 1,
                FATE_DUPLICATED => {
                    if let EventKind::Deliver { from, to, channel, frame, to_generation } = &q.kind {
                        let again = Millis(self.break_rng.gen_range(latency.0..=latency.1));
                        let copy = EventKind::Deliver {
                            from: *from,
                            to: *to,
                            channel: *channel,
                            frame: frame.clone(),
                            to_generation: *to_generation,
                        };
                        copies.push((q.at + again, copy));
                    }
                    self.stats.stream_frames_duplicated += 1;
                    kept.push(Reverse(q));
                }
                _ => kept.push(Reverse(q)),
            }
        }
        self.queue = kept;
        for (at, copy) in copies {
            self.push(at, copy);
        }
    }
}
