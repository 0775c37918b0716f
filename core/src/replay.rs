//! Replay protection: which frames of each sender this node has already accepted.
//!
//! Every envelope carries its sender's [`FrameSeq`] for its channel and lane: a counter that
//! starts at 1 when the process starts and grows by one per frame sent on that channel and lane,
//! to any peer. Lanes are counted apart because a driver sends each lane on its own connection
//! and serves received lanes by priority, so frames of different lanes overtake each other by
//! any amount; within a lane they are reordered only as much as the network reorders. Under a
//! cluster key the sequence number and the lane are covered by the frame's tag, so an
//! attacker can record and resend a frame but cannot renumber it or move it to another lane.
//! The [`ReplayGuard`] keeps, per (sender, channel, lane), the highest number accepted and a
//! sliding bitmap of the [`REPLAY_WINDOW`] numbers below it (the anti-replay window of IPsec and
//! WireGuard): frames reordered by fewer than `REPLAY_WINDOW` positions are still accepted, once
//! each.
//!
//! Invariants kept here:
//! * a (sender, channel, lane, sequence number) is accepted at most once while the window is
//!   tracked;
//! * a number `REPLAY_WINDOW` or more below the highest accepted one of its window is refused as
//!   stale;
//! * memory is bounded: at most `max_windows` windows (of `REPLAY_WINDOW / 8` bytes each); when a
//!   new window is needed at the bound, the window heard from longest ago is forgotten.
//!
//! A restarted process is a new member id, so its counter starting again at 1 is a new window.
//! What the guard cannot see: a frame recorded from a sender that was forgotten (more than
//! `max_windows` (sender, channel, lane) windows since), or recorded before this node itself restarted.

use crate::id::MemberId;
use crate::node::{Channel, Lane};
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A sender's frame counter for one channel and lane (starts at 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FrameSeq(pub u64);

/// How far behind the newest accepted frame a frame may arrive and still be accepted.
pub const REPLAY_WINDOW: u64 = 4096;
const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// The default number of (sender, channel, lane) windows kept: a sender uses at most four
/// (datagrams, and the three lanes of the stream channel), so this tracks 1,024 busy senders.
pub const DEFAULT_MAX_WINDOWS: usize = 4096;

/// The cause under which a replayed frame is counted in the node's `frames_rejected`.
pub const REPLAYED: &str = "replayed";
/// The cause under which a frame older than the window is counted in `frames_rejected`.
pub const STALE: &str = "stale";

/// The guard's judgement of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: deliver it.
    Fresh,
    /// Seen before within the window: a duplicate or a replay.
    Replayed,
    /// Older than the window: cannot be told from a replay, so refused.
    Stale,
}

struct Window {
    highest: u64,
    /// Bit `n % REPLAY_WINDOW` is set when number `n` (within the window) was accepted.
    bits: [u64; WORDS],
    last_seen: Time,
}

impl Window {
    fn new(now: Time) -> Window {
        Window { highest: 0, bits: [0; WORDS], last_seen: now }
    }

    fn bit(n: u64) -> (usize, u64) {
        let i = n % REPLAY_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn check_and_mark(&mut self, seq: u64) -> Verdict {
        if seq > self.highest {
            if seq - self.highest >= REPLAY_WINDOW {
                self.bits = [0; WORDS];
            } else {
                for n in self.highest + 1..seq {
                    let (w, b) = Window::bit(n);
                    self.bits[w] &= !b;
                }
            }
            self.highest = seq;
            let (w, b) = Window::bit(seq);
            self.bits[w] |= b;
            return Verdict::Fresh;
        }
        if self.highest - seq >= REPLAY_WINDOW {
            return Verdict::Stale;
        }
        let (w, b) = Window::bit(seq);
        if self.bits[w] & b != 0 {
            Verdict::Replayed
        } else {
            self.bits[w] |= b;
            Verdict::Fresh
        }
    }
}

/// Remembers which frames each sender has had accepted.
pub struct ReplayGuard {
    windows: BTreeMap<(MemberId, Channel, Lane), Window>,
    max_windows: usize,
    /// A planted bug: refuse any frame numbered below the highest accepted one.
    refuse_reordered: bool,
    /// A planted bug: one window per (sender, channel), whatever the lane.
    lanes_share_a_window: bool,
}

impl ReplayGuard {
    pub fn new(max_windows: usize) -> ReplayGuard {
        ReplayGuard {
            windows: BTreeMap::new(),
            max_windows: max_windows.max(1),
            refuse_reordered: false,
            lanes_share_a_window: false,
        }
    }

    /// The planted bug the simulator's wire checker must catch (see `PlantedBug`).
    pub(crate) fn plant_window_of_one(&mut self) {
        self.refuse_reordered = true;
    }

    /// The planted bug the `node_messages` check's replay model must catch.
    pub(crate) fn plant_lanes_share_a_window(&mut self) {
        self.lanes_share_a_window = true;
    }

    /// Judges frame `seq` of `from` on `channel` and `lane` at `now`, and marks it accepted if
    /// fresh.
    pub fn check(
        &mut self,
        now: Time,
        from: MemberId,
        channel: Channel,
        lane: Lane,
        seq: FrameSeq,
    ) -> Verdict {
        let key = (from, channel, if self.lanes_share_a_window { Lane::Control } else { lane });
        if !self.windows.contains_key(&key) && self.windows.len() >= self.max_windows {
            let quietest = self.windows.iter().min_by_key(|(_, w)| w.last_seen).map(|(k, _)| *k);
            if let Some(k) = quietest {
                self.windows.remove(&k);
            }
        }
        let window = self.windows.entry(key).or_insert_with(|| Window::new(now));
        if self.refuse_reordered && seq.0 < window.highest {
            return Verdict::Stale;
        }
        let verdict = window.check_and_mark(seq.0);
        if verdict == Verdict::Fresh {
            window.last_seen = now;
        }
        debug_assert!(self.windows.len() <= self.max_windows, "more windows than the bound");
        verdict
    }

    /// How many (sender, channel, lane) windows are kept.
    pub fn tracked(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(port: u16) -> MemberId {
        MemberId::new(format!("127.0.0.1:{port}").parse().unwrap(), 1)
    }

    #[test]
    fn each_number_is_accepted_once_in_any_order_within_the_window() {
        let mut g = ReplayGuard::new(8);
        let a = member(1);
        for seq in [5, 1, 3, 2, 4, 6] {
            assert_eq!(
                g.check(Time(0), a, Channel::Datagram, Lane::Control, FrameSeq(seq)),
                Verdict::Fresh,
                "{seq}"
            );
        }
        for seq in 1..=6 {
            assert_eq!(
                g.check(Time(0), a, Channel::Datagram, Lane::Control, FrameSeq(seq)),
                Verdict::Replayed,
                "{seq}"
            );
        }
    }

    #[test]
    fn numbers_behind_the_window_are_stale_and_channels_and_senders_are_separate() {
        let mut g = ReplayGuard::new(8);
        let (a, b) = (member(1), member(2));
        assert_eq!(
            g.check(Time(0), a, Channel::Stream, Lane::Control, FrameSeq(REPLAY_WINDOW + 10)),
            Verdict::Fresh
        );
        assert_eq!(g.check(Time(0), a, Channel::Stream, Lane::Control, FrameSeq(10)), Verdict::Stale);
        assert_eq!(g.check(Time(0), a, Channel::Stream, Lane::Control, FrameSeq(11)), Verdict::Fresh);
        assert_eq!(g.check(Time(0), a, Channel::Datagram, Lane::Control, FrameSeq(10)), Verdict::Fresh);
        assert_eq!(g.check(Time(0), b, Channel::Stream, Lane::Control, FrameSeq(10)), Verdict::Fresh);
    }

    #[test]
    fn lanes_are_separate_windows() {
        let mut g = ReplayGuard::new(8);
        let a = member(1);
        // Bulk frames held back behind a long run of control frames are still fresh, and a
        // number is accepted once per lane.
        assert_eq!(
            g.check(Time(0), a, Channel::Stream, Lane::Control, FrameSeq(REPLAY_WINDOW + 5)),
            Verdict::Fresh
        );
        for lane in [Lane::Data, Lane::Bulk] {
            assert_eq!(g.check(Time(0), a, Channel::Stream, lane, FrameSeq(1)), Verdict::Fresh, "{lane}");
            assert_eq!(g.check(Time(0), a, Channel::Stream, lane, FrameSeq(1)), Verdict::Replayed, "{lane}");
        }
        assert_eq!(g.check(Time(0), a, Channel::Stream, Lane::Control, FrameSeq(1)), Verdict::Stale);
        assert_eq!(g.tracked(), 3);
    }

    #[test]
    fn a_jump_forward_forgets_the_numbers_it_passed_over() {
        let mut g = ReplayGuard::new(8);
        let a = member(1);
        assert_eq!(g.check(Time(0), a, Channel::Datagram, Lane::Control, FrameSeq(1)), Verdict::Fresh);
        // Number 1 + REPLAY_WINDOW shares number 1's bit; it must not read as a replay.
        assert_eq!(
            g.check(Time(0), a, Channel::Datagram, Lane::Control, FrameSeq(1 + REPLAY_WINDOW)),
            Verdict::Fresh
        );
        assert_eq!(g.check(Time(0), a, Channel::Datagram, Lane::Control, FrameSeq(2)), Verdict::Fresh);
        assert_eq!(g.check(Time(0), a, Channel::Datagram, Lane::Control, FrameSeq(1)), Verdict::Stale);
    }

    #[test]
    fn memory_is_bounded_and_the_quietest_sender_goes_first() {
        let mut g = ReplayGuard::new(3);
        for port in 1..=3 {
            g.check(Time(port as u64), member(port), Channel::Datagram, Lane::Control, FrameSeq(1));
        }
        g.check(Time(10), member(1), Channel::Datagram, Lane::Control, FrameSeq(2));
        g.check(Time(11), member(4), Channel::Datagram, Lane::Control, FrameSeq(1));
        assert_eq!(g.tracked(), 3);
        // Member 2 (heard from at time 2) was forgotten; member 1 was not.
        assert_eq!(
            g.check(Time(12), member(1), Channel::Datagram, Lane::Control, FrameSeq(2)),
            Verdict::Replayed
        );
        assert_eq!(
            g.check(Time(12), member(2), Channel::Datagram, Lane::Control, FrameSeq(1)),
            Verdict::Fresh
        );
    }

    proptest! {
        /// Against a model that remembers every number of every lane: fresh exactly when unseen
        /// and within the window of the highest number accepted so far on that lane.
        #[test]
        fn matches_a_model_that_remembers_everything(
            seqs in proptest::collection::vec((0usize..3, 0u64..10_000), 0..400),
        ) {
            let mut g = ReplayGuard::new(4);
            let mut seen = [(); 3].map(|_| std::collections::BTreeSet::new());
            let mut highest = [0u64; 3];
            for (lane, s) in seqs {
                let expected = if s > highest[lane] {
                    Verdict::Fresh
                } else if highest[lane] - s >= REPLAY_WINDOW {
                    Verdict::Stale
                } else if seen[lane].contains(&s) {
                    Verdict::Replayed
                } else {
                    Verdict::Fresh
                };
                let judged = g.check(Time(0), member(1), Channel::Stream, Lane::ALL[lane], FrameSeq(s));
                prop_assert_eq!(judged, expected, "lane {} seq {}", lane, s);
                if expected == Verdict::Fresh {
                    seen[lane].insert(s);
                    highest[lane] = highest[lane].max(s);
                }
            }
        }
    }
}
