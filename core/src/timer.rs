//! An ordered queue of deadlines.
//!
//! Deadlines fire in `(time, insertion sequence)` order, never out of order, however they were
//! scheduled. A timer whose purpose has lapsed (a probe that was answered, a member that was
//! removed, a node that rejoined) is not cancelled here: the owner checks, when it fires, that
//! the state it refers to still exists. Timers carry the owner's epoch so that a reset makes every
//! older timer stale at once.

use crate::time::Time;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct TimerQueue<T> {
    entries: BTreeMap<(Time, u64), T>,
    next_seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        TimerQueue { entries: BTreeMap::new(), next_seq: 0 }
    }
}

impl<T> TimerQueue<T> {
    pub fn schedule(&mut self, at: Time, timer: T) {
        self.entries.insert((at, self.next_seq), timer);
        self.next_seq += 1;
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Time> {
        self.entries.keys().next().map(|(t, _)| *t)
    }

    /// Removes and returns the earliest timer that is due at `now`.
    pub fn pop_due(&mut self, now: Time) -> Option<(Time, T)> {
        let (&(at, seq), _) = self.entries.iter().next()?;
        if at > now {
            return None;
        }
        self.entries.remove(&(at, seq)).map(|t| (at, t))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Drops every timer for which `keep` returns false.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.entries.retain(|_, t| keep(t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_time_then_insertion_order() {
        let mut q = TimerQueue::default();
        q.schedule(Time(20), "b");
        q.schedule(Time(10), "a1");
        q.schedule(Time(10), "a2");
        assert_eq!(q.next_deadline(), Some(Time(10)));
        assert_eq!(q.pop_due(Time(9)), None);
        assert_eq!(q.pop_due(Time(30)), Some((Time(10), "a1")));
        assert_eq!(q.pop_due(Time(30)), Some((Time(10), "a2")));
        assert_eq!(q.pop_due(Time(30)), Some((Time(20), "b")));
        assert!(q.is_empty());
    }
}
