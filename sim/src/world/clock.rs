//! A node's clocks as the runtime hands them to core (`runtime/src/clock.rs`).
//!
//! A machine has one oscillator, which runs fast or slow by a rate error (`drift_ppm`, parts per
//! million of simulated time), and two clocks driven by it: the monotonic clock, which only
//! advances at that rate, and the wall clock, which starts at an offset from simulated time and
//! can also be stepped, forward or back (an operator, a badly configured NTP). A process reads the
//! wall clock once, when it starts, and advances by the monotonic clock from then on. So:
//! * the core time of one process never goes back, and runs at the machine's rate: a step of the
//!   wall clock while the process runs changes nothing it sees;
//! * a process started after a step starts from the stepped wall clock: a step back can give it an
//!   earlier core time than the process before it at the same address ever had.
//!
//! Invariants kept here:
//! * `local` is non-decreasing in simulated time (the rate is positive: |drift| < 10⁶ ppm);
//! * `true_time_of(deadline, now)` is the earliest simulated time, not before `now`, at which
//!   `local` reaches `deadline` (a timer never fires before its deadline on the node's clock).

use crate::scenario::MAX_CLOCK_DRIFT_PPM;
use rainstorm_core::Time;

const PPM: i128 = 1_000_000;

/// One node slot's clocks (they outlive its processes: they belong to the machine).
#[derive(Clone, Copy, Debug)]
pub(super) struct NodeClock {
    /// The wall clock's offset from simulated time at time 0, in ms.
    offset_ms: u64,
    /// The oscillator's rate error: the clocks advance by 1 + drift_ppm/10⁶ ms per simulated ms.
    drift_ppm: i32,
    /// The sum of every step of the wall clock so far, in ms.
    stepped_ms: i64,
    /// The running process's anchor: the simulated time it started and its core time then.
    anchor: (Time, u64),
}

impl NodeClock {
    /// A machine's clocks; a rate error past the bound (a hand-edited scenario) is taken at it.
    pub(super) fn new(offset_ms: u64, drift_ppm: i32) -> NodeClock {
        let drift_ppm = drift_ppm.clamp(-MAX_CLOCK_DRIFT_PPM, MAX_CLOCK_DRIFT_PPM);
        NodeClock { offset_ms, drift_ppm, stepped_ms: 0, anchor: (Time::ZERO, offset_ms) }
    }

    /// `ms` of simulated time as the oscillator counts them (rounded down).
    fn elapsed(&self, ms: u64) -> i128 {
        let ms = i128::from(ms);
        ms + (ms * i128::from(self.drift_ppm)).div_euclid(PPM)
    }

    /// The wall clock at simulated time `now` (a clock stepped back past its epoch reads 0).
    fn wall(&self, now: Time) -> u64 {
        let wall = i128::from(self.offset_ms) + self.elapsed(now.0) + i128::from(self.stepped_ms);
        wall.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// The wall clock is stepped by `by_ms` (back if negative). The running process does not see
    /// it; the next one to start does.
    pub(super) fn step(&mut self, by_ms: i64) {
        self.stepped_ms = self.stepped_ms.saturating_add(by_ms);
    }

    /// A process starts at simulated time `now`: it reads the wall clock.
    pub(super) fn start_process(&mut self, now: Time) {
        self.anchor = (now, self.wall(now));
    }

    /// The running process's core time at simulated time `now`.
    pub(super) fn local(&self, now: Time) -> Time {
        let (start, at_start) = self.anchor;
        let local = i128::from(at_start) + self.elapsed(now.0.saturating_sub(start.0));
        Time(local.clamp(0, i128::from(u64::MAX)) as u64)
    }

    /// The earliest simulated time, not before `now`, at which the running process's core time
    /// reaches `deadline`.
    pub(super) fn true_time_of(&self, deadline: Time, now: Time) -> Time {
        if self.local(now) >= deadline {
            return now;
        }
        let (start, at_start) = self.anchor;
        let wanted = i128::from(deadline.0) - i128::from(at_start);
        let rate = PPM + i128::from(self.drift_ppm);
        // A first guess from the rate, then exact: `elapsed` rounds down.
        let mut ms = (wanted * PPM).div_euclid(rate).max(0);
        while ms > 0 && self.elapsed((ms - 1) as u64) >= wanted {
            ms -= 1;
        }
        while self.elapsed(ms as u64) < wanted {
            ms += 1;
        }
        let at = i128::from(start.0) + ms;
        let at = Time(at.clamp(0, i128::from(u64::MAX)) as u64).max(now);
        debug_assert!(self.local(at) >= deadline, "a timer fires at or after its deadline");
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_sees_drift_but_never_a_step_back() {
        let mut c = NodeClock::new(50_000, -10_000);
        c.start_process(Time(1_000));
        assert_eq!(c.local(Time(1_000)), Time(50_990));
        assert_eq!(c.local(Time(101_000)), Time(50_990 + 99_000), "1% slow");
        c.step(-40_000);
        assert_eq!(c.local(Time(101_000)), Time(50_990 + 99_000), "the step is not seen");
        c.start_process(Time(102_000));
        assert_eq!(c.local(Time(102_000)), Time(50_000 + 100_980 - 40_000), "the next process sees it");
    }

    #[test]
    fn timers_fire_at_the_first_simulated_ms_their_deadline_is_reached() {
        for drift in [-10_000, -333, 0, 1, 7_777, 10_000] {
            let mut c = NodeClock::new(123, drift);
            c.start_process(Time(17));
            for deadline in [0, 123, 124, 1_000, 99_999, 1_234_567] {
                let now = Time(17);
                let at = c.true_time_of(Time(deadline), now);
                assert!(c.local(at) >= Time(deadline));
                assert!(at == now || c.local(Time(at.0 - 1)) < Time(deadline), "drift {drift} {deadline}");
            }
        }
    }
}
