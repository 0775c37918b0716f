//! The client's read cache: least recently used entries, bounded by the bytes they hold.
//!
//! Invariants kept here: the bytes held never exceed the capacity (an entry larger than the whole
//! cache is not kept; the client offers only files of at most a quarter of it); every entry
//! records the writes its content includes, so the client can refuse an entry that could miss one
//! of its own acknowledged writes.

use super::types::Stamp;
use super::FileName;
use crate::time::Time;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug)]
pub struct CachedFile {
    pub content: Vec<u8>,
    pub writes: BTreeSet<Stamp>,
    pub fetched_at: Time,
}

#[derive(Clone, Debug, Default)]
pub struct ReadCache {
    capacity: u64,
    used: u64,
    tick: u64,
    entries: BTreeMap<FileName, (u64, CachedFile)>,
    by_use: BTreeMap<u64, FileName>,
    pub hits: u64,
    pub misses: u64,
}

impl ReadCache {
    pub fn new(capacity_bytes: u64) -> ReadCache {
        ReadCache { capacity: capacity_bytes, ..ReadCache::default() }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn used_bytes(&self) -> u64 {
        self.used
    }

    /// The entry for `name`, marked as just used.
    pub fn get(&mut self, name: &FileName) -> Option<&CachedFile> {
        let (tick, _) = self.entries.get(name)?;
        let old = *tick;
        self.tick += 1;
        let now = self.tick;
        self.by_use.remove(&old);
        self.by_use.insert(now, name.clone());
        let entry = self.entries.get_mut(name)?;
        entry.0 = now;
        Some(&entry.1)
    }

    pub fn insert(&mut self, name: FileName, file: CachedFile) {
        self.invalidate(&name);
        let size = file.content.len() as u64;
        if size > self.capacity {
            return;
        }
        while self.used + size > self.capacity {
            let Some((_, victim)) = self.by_use.pop_first() else { break };
            if let Some((_, f)) = self.entries.remove(&victim) {
                self.used -= f.content.len() as u64;
            }
        }
        self.tick += 1;
        self.used += size;
        self.by_use.insert(self.tick, name.clone());
        self.entries.insert(name, (self.tick, file));
        debug_assert!(self.used <= self.capacity, "the cache holds at most its capacity");
    }

    pub fn invalidate(&mut self, name: &FileName) {
        if let Some((tick, f)) = self.entries.remove(name) {
            self.by_use.remove(&tick);
            self.used -= f.content.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> CachedFile {
        CachedFile { content: vec![0; n], writes: BTreeSet::new(), fetched_at: Time::ZERO }
    }

    fn name(s: &str) -> FileName {
        FileName::new(s).unwrap()
    }

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let mut c = ReadCache::new(100);
        c.insert(name("a"), entry(40));
        c.insert(name("b"), entry(40));
        assert!(c.get(&name("a")).is_some());
        c.insert(name("c"), entry(40));
        assert!(c.get(&name("b")).is_none(), "b was least recently used");
        assert!(c.get(&name("a")).is_some());
        assert!(c.used_bytes() <= 100);
        c.insert(name("huge"), entry(101));
        assert!(c.get(&name("huge")).is_none());
        c.invalidate(&name("a"));
        assert_eq!(c.used_bytes(), 40);
    }
}
