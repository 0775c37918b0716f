//! The dissemination queue: which updates to piggyback next.
//!
//! One entry per subject (member id, or the mode switch): newer news about a member replaces older
//! news, so a stale ALIVE can never circulate after its DEL. Each entry is sent about
//! λ·⌈log₂(n+1)⌉ times, least-sent first, then dropped.

use super::message::Update;
use crate::id::MemberId;
use crate::wire::payload_size;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    Mode,
    Member(MemberId),
}

#[derive(Debug, Clone)]
struct Entry {
    update: Update,
    sent: u32,
    size: usize,
    /// Insertion order among equally-sent entries: newer news first.
    serial: u64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Gossip {
    entries: BTreeMap<Subject, Entry>,
    serial: u64,
}

impl Gossip {
    pub(crate) fn push(&mut self, update: Update) {
        let subject = update.subject().map_or(Subject::Mode, Subject::Member);
        self.serial += 1;
        let size = payload_size(&update);
        self.entries.insert(subject, Entry { update, sent: 0, size, serial: self.serial });
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Picks updates that fit in `budget` bytes, least-sent first, counting each as sent once and
    /// dropping those sent `limit` times.
    pub(crate) fn select(&mut self, mut budget: usize, limit: u32) -> Vec<Update> {
        if self.entries.is_empty() {
            return Vec::new();
        }
        let mut order: Vec<(u32, std::cmp::Reverse<u64>, Subject)> =
            self.entries.iter().map(|(s, e)| (e.sent, std::cmp::Reverse(e.serial), *s)).collect();
        order.sort_unstable();
        let mut picked = Vec::new();
        for (_, _, subject) in order {
            let entry = self.entries.get_mut(&subject).expect("subject listed above");
            if entry.size > budget {
                continue;
            }
            budget -= entry.size;
            entry.sent += 1;
            picked.push(entry.update.clone());
            if entry.sent >= limit {
                self.entries.remove(&subject);
            }
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Incarnation;

    fn id(n: u64) -> MemberId {
        MemberId::new("10.0.0.1:1".parse().unwrap(), n)
    }

    #[test]
    fn newer_news_replaces_older_and_entries_retire() {
        let mut g = Gossip::default();
        g.push(Update::Alive { member: id(1), incarnation: Incarnation(0) });
        g.push(Update::Failed { member: id(1) });
        assert_eq!(g.len(), 1);
        assert_eq!(g.select(1000, 2), vec![Update::Failed { member: id(1) }]);
        assert_eq!(g.select(1000, 2), vec![Update::Failed { member: id(1) }]);
        assert!(g.select(1000, 2).is_empty());
    }

    #[test]
    fn respects_the_byte_budget() {
        let mut g = Gossip::default();
        for n in 0..100 {
            g.push(Update::Failed { member: id(n) });
        }
        let one = payload_size(&Update::Failed { member: id(0) });
        assert_eq!(g.select(one * 10 + one / 2, 5).len(), 10);
    }
}
