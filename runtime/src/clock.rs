//! The OS clock as core time: milliseconds since the Unix epoch, read once at start and advanced
//! by the monotonic clock after that, so core time never goes backwards within a process even if
//! the wall clock is stepped. A process started after a step back can read an earlier time than
//! its predecessor did; membership's join protocol still gives it a later member id (see
//! "Clocks" in docs/ARCHITECTURE.md).

use rainstorm_core::Time;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_ms: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let start_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Clock { start: Instant::now(), start_ms }
    }

    pub fn now(&self) -> Time {
        Time(self.start_ms + self.start.elapsed().as_millis() as u64)
    }

    /// The instant at which core time `t` is reached (now, if it is already past).
    pub fn instant_of(&self, t: Time) -> Instant {
        self.start + Duration::from_millis(t.0.saturating_sub(self.start_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}
