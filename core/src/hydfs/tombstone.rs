//! Tombstones: what a node remembers of deleted files, so that no copy of one comes back.
//!
//! A tombstone names one *file*, not a name: `(name, create stamp)`. A later create of the same
//! name has another stamp, so it is a new file and no tombstone touches it. A node holding a
//! tombstone never keeps, absorbs, accepts or hands on a copy whose create it names; a copy
//! without a create (appends that arrived before their create) is dropped as well, since it
//! cannot be told apart from leftovers of the deleted file (its appends come back with their
//! create from the replicas that hold both).
//!
//! Invariants kept here:
//! * bounded in time and count: a tombstone expires `ttl` after it was last recorded, and at
//!   most `max` are kept (the one closest to expiring is evicted first, and counted);
//! * the two indexes (by file, by expiry) always hold the same entries;
//! * expiring costs in proportion to what expires, never to how many tombstones are held.
//!
//! What the bounds mean: a copy cut off from every node that holds its tombstone for longer
//! than `ttl` (or past `max` later deletes) may come back when it reconnects. Tombstones are kept
//! in the store's durable index as well (the node tells it of every one recorded and forgotten),
//! and a node that restarts takes them back with a full `ttl`.

use super::ring::RingId;
use super::types::Stamp;
use super::FileName;
use crate::time::{Millis, Time};
use std::collections::{BTreeMap, BTreeSet};

/// One deleted file, as a node remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// Where the name sits on the ring (kept, so that a ring change need not hash every name).
    pub ring_id: RingId,
    /// When the tombstone is forgotten.
    pub expires: Time,
}

#[derive(Clone, Debug, Default)]
pub struct Tombstones {
    by_file: BTreeMap<(FileName, Stamp), Tombstone>,
    by_expiry: BTreeSet<(Time, FileName, Stamp)>,
    max: usize,
    /// Tombstones dropped to stay within `max` before they expired.
    pub evicted: u64,
    /// Tombstones forgotten because they expired.
    pub expired: u64,
    /// Tombstones forgotten (evicted or expired) since the last [`Tombstones::take_forgotten`].
    forgotten: Vec<(FileName, Stamp)>,
}

impl Tombstones {
    pub fn new(max: usize) -> Tombstones {
        Tombstones { max: max.max(1), ..Tombstones::default() }
    }

    pub fn len(&self) -> usize {
        debug_assert_eq!(self.by_file.len(), self.by_expiry.len(), "the two indexes agree");
        self.by_file.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_file.is_empty()
    }

    /// Records (or renews) the tombstone of file `(name, create)` until `now + ttl`. Returns
    /// whether it is new here.
    pub fn insert(&mut self, now: Time, name: &FileName, create: Stamp, ttl: Millis) -> bool {
        let expires = now + ttl;
        let key = (name.clone(), create);
        let new = match self.by_file.get_mut(&key) {
            Some(t) => {
                self.by_expiry.remove(&(t.expires, name.clone(), create));
                t.expires = t.expires.max(expires);
                self.by_expiry.insert((t.expires, name.clone(), create));
                false
            }
            None => {
                while self.by_file.len() >= self.max {
                    let Some((_, n, s)) = self.by_expiry.pop_first() else { break };
                    self.by_file.remove(&(n.clone(), s));
                    self.forgotten.push((n, s));
                    self.evicted += 1;
                }
                let ring_id = name.ring_id();
                self.by_file.insert(key, Tombstone { ring_id, expires });
                self.by_expiry.insert((expires, name.clone(), create));
                true
            }
        };
        debug_assert_eq!(self.by_file.len(), self.by_expiry.len(), "the two indexes agree");
        debug_assert!(self.by_file.len() <= self.max, "bounded by max_tombstones");
        new
    }

    /// Whether file `(name, create)` was deleted.
    pub fn contains(&self, name: &FileName, create: Stamp) -> bool {
        self.by_file.contains_key(&(name.clone(), create))
    }

    /// The create stamps of the deleted files of this name, oldest stamp first.
    pub fn of_name(&self, name: &FileName) -> impl Iterator<Item = Stamp> + '_ {
        let name = name.clone();
        self.by_file
            .range((name.clone(), Stamp::MIN)..)
            .take_while(move |((n, _), _)| *n == name)
            .map(|((_, s), _)| *s)
    }

    /// Whether a copy of `name` created by `create` (`None`: a copy holding appends only) is one
    /// this node must not keep.
    pub fn covers(&self, name: &FileName, create: Option<Stamp>) -> bool {
        match create {
            Some(c) => self.contains(name, c),
            None => self.of_name(name).next().is_some(),
        }
    }

    /// The tombstone this node would send a holder of a copy `covers` refuses: the one of its
    /// create, or (for a copy without a create) the newest of the name.
    pub fn for_copy(&self, name: &FileName, create: Option<Stamp>) -> Option<Stamp> {
        match create {
            Some(c) => self.contains(name, c).then_some(c),
            None => self.of_name(name).last(),
        }
    }

    /// Forgets the tombstones that expired by `now`; returns how many.
    pub fn expire(&mut self, now: Time) -> usize {
        let mut n = 0;
        while let Some((at, _, _)) = self.by_expiry.first() {
            if *at > now {
                break;
            }
            let (_, name, stamp) = self.by_expiry.pop_first().expect("present");
            self.by_file.remove(&(name.clone(), stamp));
            self.forgotten.push((name, stamp));
            n += 1;
        }
        self.expired += n as u64;
        debug_assert_eq!(self.by_file.len(), self.by_expiry.len(), "the two indexes agree");
        n
    }

    /// The tombstones forgotten (evicted or expired) since the last call.
    pub fn take_forgotten(&mut self) -> Vec<(FileName, Stamp)> {
        std::mem::take(&mut self.forgotten)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&FileName, Stamp, &Tombstone)> {
        self.by_file.iter().map(|((n, s), t)| (n, *s, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::MemberId;

    fn stamp(ts: u64) -> Stamp {
        Stamp { ts, client: MemberId::new("10.0.0.1:7000".parse().unwrap(), 1), seq: ts }
    }

    fn name(s: &str) -> FileName {
        FileName::new(s).unwrap()
    }

    #[test]
    fn a_tombstone_names_one_file_and_expires() {
        let mut t = Tombstones::new(10);
        assert!(t.insert(Time(0), &name("f"), stamp(1), Millis(100)));
        assert!(t.contains(&name("f"), stamp(1)));
        assert!(!t.contains(&name("f"), stamp(2)), "a later create of the name is another file");
        assert!(t.covers(&name("f"), None), "appends without their create are covered");
        assert!(!t.covers(&name("g"), None));
        assert!(!t.insert(Time(50), &name("f"), stamp(1), Millis(100)), "renewed, not added");
        assert_eq!(t.expire(Time(120)), 0, "renewed until 150");
        assert_eq!(t.expire(Time(150)), 1);
        assert!(t.is_empty() && t.expired == 1);
    }

    #[test]
    fn at_most_max_are_kept_the_nearest_to_expiring_evicted_first() {
        let mut t = Tombstones::new(3);
        for i in 0..5u64 {
            t.insert(Time(i), &name(&format!("f{i}")), stamp(i), Millis(100));
        }
        assert_eq!((t.len(), t.evicted), (3, 2));
        assert!(!t.contains(&name("f0"), stamp(0)) && t.contains(&name("f4"), stamp(4)));
        assert_eq!(t.of_name(&name("f3")).collect::<Vec<_>>(), vec![stamp(3)]);
        assert_eq!(t.for_copy(&name("f3"), None), Some(stamp(3)));
    }
}
