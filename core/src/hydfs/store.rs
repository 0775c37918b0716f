//! A node's own replicas: the index of files (create, merged appends, pending appends) and the
//! checksummed parts in storage.
//!
//! Invariants kept here:
//! * a part enters storage only if its bytes match the [`PartMeta`] its write declared (length,
//!   CRC32C, line ends), and leaves a read only after the same check: a corrupt part is removed
//!   (to be fetched again), never returned;
//! * a write is *complete* when all its parts are stored; only complete writes are served;
//! * a part is stored only for a write the index holds, and leaves storage with it: every block
//!   in storage is one the index points at (no block outlives its file);
//! * [`reconcile`] never drops a write: the earlier create of a name wins, divergent merge orders
//!   resolve to one winner and the loser's extra appends become pending again.

use super::storage::{BlobId, Storage, StorageError};
use super::types::{FileMeta, PartMeta, Stamp, WriteMeta};
use super::FileName;
use std::collections::BTreeMap;

/// One file as this node holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileRec {
    pub create: Option<WriteMeta>,
    pub generation: u64,
    pub merged: Vec<WriteMeta>,
    pub pending: BTreeMap<Stamp, WriteMeta>,
}

impl FileRec {
    pub fn contains(&self, stamp: &Stamp) -> bool {
        self.create.as_ref().is_some_and(|c| c.stamp == *stamp)
            || self.pending.contains_key(stamp)
            || self.merged.iter().any(|w| w.stamp == *stamp)
    }

    pub fn find(&self, stamp: &Stamp) -> Option<&WriteMeta> {
        if let Some(c) = self.create.as_ref().filter(|c| c.stamp == *stamp) {
            return Some(c);
        }
        self.pending.get(stamp).or_else(|| self.merged.iter().find(|w| w.stamp == *stamp))
    }

    /// Every write in file order: create, merged appends, then pending appends by stamp.
    pub fn writes(&self) -> impl Iterator<Item = &WriteMeta> {
        self.create.iter().chain(&self.merged).chain(self.pending.values())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PartRec {
    blob: BlobId,
    /// What the write declared for this part (its bytes were checked against it when stored).
    meta: PartMeta,
}

/// Why a part could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartError {
    Missing,
    /// Failed its checksum; it has been removed so that it is fetched again.
    Corrupt,
    Storage(StorageError),
}

type PartKey = (FileName, Stamp, u32);

pub struct LocalStore {
    storage: Box<dyn Storage + Send>,
    files: BTreeMap<FileName, FileRec>,
    parts: BTreeMap<PartKey, PartRec>,
    next_blob: BlobId,
    unsynced: bool,
    scrub_cursor: Option<PartKey>,
    /// Verify checksums on read (off only for a planted bug).
    pub verify: bool,
}

impl LocalStore {
    pub fn new(mut storage: Box<dyn Storage + Send>) -> Result<LocalStore, StorageError> {
        storage.wipe()?;
        storage.sync()?;
        Ok(LocalStore {
            storage,
            files: BTreeMap::new(),
            parts: BTreeMap::new(),
            next_blob: 1,
            unsynced: false,
            scrub_cursor: None,
            verify: true,
        })
    }

    pub fn files(&self) -> &BTreeMap<FileName, FileRec> {
        &self.files
    }

    pub fn file(&self, name: &FileName) -> Option<&FileRec> {
        self.files.get(name)
    }

    pub fn file_mut(&mut self, name: &FileName) -> &mut FileRec {
        self.files.entry(name.clone()).or_default()
    }

    pub fn set_file(&mut self, name: &FileName, rec: FileRec) {
        // Parts of writes the record no longer holds are released.
        let keep: Vec<Stamp> = rec.writes().map(|w| w.stamp).collect();
        let stale: Vec<PartKey> = self
            .parts
            .range((name.clone(), Stamp::MIN, 0)..)
            .take_while(|((n, _, _), _)| n == name)
            .filter(|((_, s, _), _)| !keep.contains(s))
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.remove_part(&k);
        }
        self.files.insert(name.clone(), rec);
    }

    pub fn has_part(&self, name: &FileName, stamp: Stamp, part: u32) -> bool {
        self.parts.contains_key(&(name.clone(), stamp, part))
    }

    /// The metadata a stored part was checked against when it was stored.
    pub fn part_meta(&self, name: &FileName, stamp: Stamp, part: u32) -> Option<PartMeta> {
        self.parts.get(&(name.clone(), stamp, part)).map(|p| p.meta)
    }

    pub fn is_complete(&self, name: &FileName, w: &WriteMeta) -> bool {
        (0..w.parts.len() as u32).all(|i| self.has_part(name, w.stamp, i))
    }

    /// The merged-order hash of a file (create and merged appends).
    pub fn merged_hash(&self, name: &FileName) -> Option<u64> {
        let rec = self.files.get(name)?;
        Some(super::types::order_hash(rec.create.iter().chain(&rec.merged).map(|w| &w.stamp)))
    }

    /// Stores one part after checking its bytes against `meta` (every field: length, CRC32C and
    /// line ends). Returns false (and stores nothing) if they do not match.
    pub fn put_part(
        &mut self,
        name: &FileName,
        stamp: Stamp,
        part: u32,
        meta: PartMeta,
        bytes: &[u8],
    ) -> Result<bool, StorageError> {
        debug_assert!(
            self.files.get(name).is_some_and(|r| r.contains(&stamp)),
            "a part is stored only for a write the index holds"
        );
        if !meta.matches(bytes) {
            return Ok(false);
        }
        let key = (name.clone(), stamp, part);
        if self.parts.contains_key(&key) {
            return Ok(true);
        }
        let blob = self.next_blob;
        self.next_blob += 1;
        self.storage.put(blob, bytes)?;
        self.unsynced = true;
        self.parts.insert(key, PartRec { blob, meta });
        Ok(true)
    }

    /// Reads one part, verifying its checksum.
    pub fn read_part(&mut self, name: &FileName, stamp: Stamp, part: u32) -> Result<Vec<u8>, PartError> {
        let key = (name.clone(), stamp, part);
        let Some(rec) = self.parts.get(&key).copied() else { return Err(PartError::Missing) };
        let bytes = self.storage.read(rec.blob).map_err(PartError::Storage)?;
        if self.verify && !rec.meta.matches(&bytes) {
            self.remove_part(&key);
            return Err(PartError::Corrupt);
        }
        Ok(bytes)
    }

    fn remove_part(&mut self, key: &PartKey) {
        if let Some(rec) = self.parts.remove(key) {
            // A failed delete leaves garbage behind, never wrong data: the index no longer
            // points at the block.
            let _ = self.storage.delete(rec.blob);
            self.unsynced = true;
        }
    }

    /// Removes a file and its parts (their blocks are deleted from storage).
    pub fn drop_file(&mut self, name: &FileName) {
        self.set_file(name, FileRec::default());
        self.files.remove(name);
        debug_assert!(
            self.parts.range((name.clone(), Stamp::MIN, 0)..).next().is_none_or(|((n, _, _), _)| n != name),
            "no part of a dropped file stays indexed"
        );
    }

    /// Forgets a file without deleting its blocks: the planted bug the leaked-blocks checker
    /// must catch (never used otherwise).
    pub fn forget_file(&mut self, name: &FileName) {
        let keys: Vec<PartKey> = self
            .parts
            .range((name.clone(), Stamp::MIN, 0)..)
            .take_while(|((n, _, _), _)| n == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.parts.remove(&k);
        }
        self.files.remove(name);
    }

    /// Every block the index points at (for checkers: storage should hold exactly these).
    pub fn blobs(&self) -> impl Iterator<Item = BlobId> + '_ {
        self.parts.values().map(|p| p.blob)
    }

    /// Indexed parts of writes that no file record holds (for checkers: there should be none).
    pub fn stray_parts(&self) -> usize {
        self.parts.keys().filter(|(n, s, _)| !self.files.get(n).is_some_and(|r| r.contains(s))).count()
    }

    /// Makes every stored part durable (one sync covers all writes since the last one).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.unsynced {
            self.storage.sync()?;
            self.unsynced = false;
        }
        Ok(())
    }

    pub fn is_synced(&self) -> bool {
        !self.unsynced
    }

    /// The storage blocks holding one write's parts (for inspection by tests and the simulator).
    pub fn write_blobs(&self, name: &FileName, stamp: Stamp) -> Option<Vec<BlobId>> {
        let w = self.files.get(name)?.find(&stamp)?;
        (0..w.parts.len() as u32).map(|i| self.parts.get(&(name.clone(), stamp, i)).map(|p| p.blob)).collect()
    }

    /// This node's view of a file.
    pub fn meta(&self, name: &FileName) -> Option<FileMeta> {
        let rec = self.files.get(name)?;
        let incomplete = rec.writes().filter(|w| !self.is_complete(name, w)).map(|w| w.stamp).collect();
        Some(FileMeta {
            name: name.clone(),
            create: rec.create.clone(),
            generation: rec.generation,
            merged: rec.merged.clone(),
            pending: rec.pending.values().cloned().collect(),
            incomplete,
        })
    }

    /// Verifies up to `budget` bytes of stored parts, continuing where the last call stopped, and
    /// returns the parts that failed (they are removed, to be fetched again) and how many parts
    /// it verified. Its cost is in proportion to the budget (and never more than the parts held
    /// now): only the keys it verifies are visited.
    pub fn scrub(&mut self, budget: u64) -> (Vec<(FileName, Stamp, u32)>, usize) {
        let start = self.scrub_cursor.take();
        let mut todo: Vec<PartKey> = Vec::new();
        let mut planned = 0u64;
        {
            let from_cursor: Box<dyn Iterator<Item = (&PartKey, &PartRec)>> = match &start {
                Some(c) => Box::new(self.parts.range(c.clone()..).chain(self.parts.range(..c.clone()))),
                None => Box::new(self.parts.iter()),
            };
            for (key, rec) in from_cursor {
                if planned >= budget {
                    self.scrub_cursor = Some(key.clone());
                    break;
                }
                planned += rec.meta.len.max(1) as u64;
                todo.push(key.clone());
            }
        }
        debug_assert!(todo.len() <= self.parts.len(), "each part is verified at most once per round");
        let checked = todo.len();
        let mut bad = Vec::new();
        for key in todo {
            if let Err(PartError::Corrupt) = self.read_part(&key.0, key.1, key.2) {
                bad.push(key);
            }
        }
        (bad, checked)
    }

    /// Bytes stored for a file's complete writes.
    pub fn stored_bytes(&self) -> u64 {
        self.parts.values().map(|p| p.meta.len as u64).sum()
    }
}

impl Stamp {
    pub const MIN: Stamp = Stamp {
        ts: 0,
        client: crate::id::MemberId {
            addr: std::net::SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)),
            join_time: 0,
        },
        seq: 0,
    };
}

/// Combines a local record with a peer's view of the same file, losing no write.
pub fn reconcile(local: Option<&FileRec>, peer: &FileMeta) -> FileRec {
    let mut rec = local.cloned().unwrap_or_default();
    match (&rec.create, &peer.create) {
        (None, Some(theirs)) => rec.create = Some(theirs.clone()),
        // Two creates of one name raced: the earlier one is the file. Appends are kept either way.
        (Some(mine), Some(theirs)) if theirs.stamp < mine.stamp => rec.create = Some(theirs.clone()),
        _ => {}
    }
    let mine: Vec<Stamp> = rec.merged.iter().map(|w| w.stamp).collect();
    let theirs: Vec<Stamp> = peer.merged.iter().map(|w| w.stamp).collect();
    let mut leftovers: Vec<WriteMeta> = Vec::new();
    if theirs.len() > mine.len() && theirs.starts_with(&mine) {
        rec.merged = peer.merged.clone();
        rec.generation = rec.generation.max(peer.generation);
    } else if mine.starts_with(&theirs) {
        // Ours is the same or longer.
    } else {
        // Divergent merge orders (concurrent merges under a partition): one deterministic winner.
        let mine_key = (rec.generation, super::types::order_hash(&mine));
        let theirs_key = (peer.generation, super::types::order_hash(&theirs));
        if theirs_key > mine_key {
            leftovers.extend(rec.merged.iter().filter(|w| !theirs.contains(&w.stamp)).cloned());
            rec.merged = peer.merged.clone();
            rec.generation = peer.generation;
        } else {
            leftovers.extend(peer.merged.iter().filter(|w| !mine.contains(&w.stamp)).cloned());
        }
    }
    for w in leftovers.into_iter().chain(peer.pending.iter().cloned()) {
        rec.pending.entry(w.stamp).or_insert(w);
    }
    let merged: Vec<Stamp> = rec.merged.iter().map(|w| w.stamp).collect();
    rec.pending.retain(|s, _| !merged.contains(s));
    keep_client_order(&mut rec);
    rec
}

/// Cuts the merged list before the first append that a still-pending append of the same client
/// precedes, so that merging the pending ones later cannot put a client's writes out of order
/// (only possible after merge orders diverged under a partition).
///
/// "The same client" is one process: writes at one address, under one member id or several (a
/// process that rejoined gets a new id, and keeps its timestamps and sequence numbers growing).
/// A process restarted at the address starts its sequence again, so a merged write numbered no
/// higher than a pending one of an earlier member id is another process's: no order holds
/// between them, and a write its predecessor left pending (one that never completed, say) must
/// not pull the new process's merged writes out of the merged order.
fn keep_client_order(rec: &mut FileRec) {
    let mut pending_by_addr: BTreeMap<crate::id::NodeAddr, Vec<Stamp>> = BTreeMap::new();
    for s in rec.pending.keys() {
        pending_by_addr.entry(s.client.addr).or_default().push(*s);
    }
    // Within a process, stamps and member ids only grow together: an earlier stamp under a
    // later id is another process's (its clock read behind its predecessor's, a wall clock
    // stepped back between them), whatever the timestamps say.
    let same_process = |earlier: &Stamp, later: &Stamp| {
        debug_assert!(earlier < later && earlier.client.addr == later.client.addr);
        earlier.client == later.client
            || (later.seq > earlier.seq && earlier.client.join_time < later.client.join_time)
    };
    let cut = rec.merged.iter().position(|w| {
        pending_by_addr
            .get(&w.stamp.client.addr)
            .is_some_and(|ps| ps.iter().take_while(|p| **p < w.stamp).any(|p| same_process(p, &w.stamp)))
    });
    if let Some(i) = cut {
        for w in rec.merged.split_off(i) {
            rec.pending.insert(w.stamp, w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::storage::MemStorage;
    use super::super::types::WriteKind;
    use super::*;
    use crate::id::MemberId;

    fn stamp(ts: u64, seq: u64) -> Stamp {
        Stamp { ts, client: MemberId::new("10.0.0.1:7000".parse().unwrap(), 1), seq }
    }

    fn write(ts: u64, kind: WriteKind) -> WriteMeta {
        WriteMeta::describe(stamp(ts, ts), kind, format!("w{ts}").as_bytes(), 4)
    }

    fn meta(create: u64, merged: &[u64], pending: &[u64], generation: u64) -> FileMeta {
        FileMeta {
            name: FileName::new("f").unwrap(),
            create: Some(write(create, WriteKind::Create)),
            generation,
            merged: merged.iter().map(|t| write(*t, WriteKind::Append)).collect(),
            pending: pending.iter().map(|t| write(*t, WriteKind::Append)).collect(),
            incomplete: vec![],
        }
    }

    fn stamps(rec: &FileRec) -> (Vec<u64>, Vec<u64>) {
        (rec.merged.iter().map(|w| w.stamp.ts).collect(), rec.pending.keys().map(|s| s.ts).collect())
    }

    #[test]
    fn reconcile_adopts_longer_merges_and_unions_pending() {
        let local = reconcile(None, &meta(1, &[2], &[5], 1));
        let out = reconcile(Some(&local), &meta(1, &[2, 3], &[4], 2));
        assert_eq!(stamps(&out), (vec![2, 3], vec![4, 5]));
        assert_eq!(out.generation, 2);
        // A shorter peer changes nothing but adds its pending.
        let back = reconcile(Some(&out), &meta(1, &[2], &[6], 1));
        assert_eq!(stamps(&back), (vec![2, 3], vec![4, 5, 6]));
    }

    #[test]
    fn divergent_merges_lose_nothing_and_agree() {
        let a = reconcile(None, &meta(1, &[2, 3], &[], 1));
        let b_meta = meta(1, &[2, 4], &[], 1);
        let ab = reconcile(Some(&a), &b_meta);
        let b = reconcile(None, &b_meta);
        let a_meta = meta(1, &[2, 3], &[], 1);
        let ba = reconcile(Some(&b), &a_meta);
        assert_eq!(ab.merged, ba.merged, "both sides pick the same winner");
        let (m, p) = stamps(&ab);
        let mut all: Vec<u64> = m.into_iter().chain(p).collect();
        all.sort();
        assert_eq!(all, vec![2, 3, 4]);
    }

    #[test]
    fn a_clients_pending_append_is_never_overtaken_by_its_later_merged_one() {
        // Merged [2, 4] on one side; the same client's 3 is still pending on the other.
        let local = reconcile(None, &meta(1, &[2, 4], &[], 1));
        let out = reconcile(Some(&local), &meta(1, &[2], &[3], 1));
        assert_eq!(stamps(&out), (vec![2], vec![3, 4]));
    }

    #[test]
    fn a_pending_append_of_a_restarted_clients_predecessor_does_not_cut_the_merged_order() {
        let at = |join_time, ts, seq| {
            let stamp = Stamp { ts, client: MemberId::new("10.0.0.1:7000".parse().unwrap(), join_time), seq };
            WriteMeta::describe(stamp, WriteKind::Append, format!("w{ts}").as_bytes(), 4)
        };
        let meta = |merged: Vec<WriteMeta>, pending: Vec<WriteMeta>| FileMeta {
            name: FileName::new("f").unwrap(),
            create: Some(write(1, WriteKind::Create)),
            generation: 1,
            merged,
            pending,
            incomplete: vec![],
        };
        // The process that joined at 1 left its 7th write pending (it crashed during it); the
        // process restarted at the address (joined at 50) wrote twice, both merged.
        let orphan = at(1, 10, 7);
        let (first, second) = (at(50, 60, 1), at(50, 70, 2));
        let local = reconcile(None, &meta(vec![first.clone(), second.clone()], vec![]));
        let out = reconcile(Some(&local), &meta(vec![], vec![orphan.clone()]));
        assert_eq!(out.merged, vec![first.clone(), second.clone()], "the merged order stands");
        assert_eq!(out.pending.keys().copied().collect::<Vec<_>>(), vec![orphan.stamp]);
        // One process that rejoined under a new id keeps counting: its order is still kept.
        let rejoined = at(50, 80, 8);
        let local = reconcile(None, &meta(vec![first, rejoined.clone()], vec![]));
        let out = reconcile(Some(&local), &meta(vec![], vec![orphan.clone()]));
        assert_eq!(out.merged.len(), 1, "cut before the rejoined process's later write");
        assert!(out.pending.contains_key(&rejoined.stamp) && out.pending.contains_key(&orphan.stamp));
    }

    #[test]
    fn the_earlier_create_wins() {
        let late = reconcile(None, &meta(9, &[], &[10], 0));
        let out = reconcile(Some(&late), &meta(3, &[], &[], 0));
        assert_eq!(out.create.unwrap().stamp.ts, 3);
        assert_eq!(out.pending.len(), 1, "appends survive a create conflict");
    }

    #[test]
    fn a_part_whose_line_ends_disagree_with_its_metadata_is_refused() {
        let mut store = LocalStore::new(Box::new(MemStorage::default())).unwrap();
        let name = FileName::new("f").unwrap();
        let w = WriteMeta::describe(stamp(1, 1), WriteKind::Create, b"a\nb\n", 1024);
        store.file_mut(&name).create = Some(w.clone());
        let p = w.parts[0];
        for lie in [PartMeta { newlines: 1, ..p }, PartMeta { ends_with_newline: false, ..p }] {
            assert!(!store.put_part(&name, w.stamp, 0, lie, b"a\nb\n").unwrap(), "{lie:?} stored");
            assert!(!store.has_part(&name, w.stamp, 0));
        }
        assert!(store.put_part(&name, w.stamp, 0, p, b"a\nb\n").unwrap());
    }

    #[test]
    fn the_scrubber_visits_what_its_budget_covers_of_what_is_held_now() {
        let mut store = LocalStore::new(Box::new(MemStorage::default())).unwrap();
        let put = |store: &mut LocalStore, i: u64| {
            let name = FileName::new(&format!("f{i}")).unwrap();
            let w = WriteMeta::describe(stamp(i, i), WriteKind::Create, &[b'x'; 100], 1024);
            store.file_mut(&name).create = Some(w.clone());
            assert!(store.put_part(&name, w.stamp, 0, w.parts[0], &[b'x'; 100]).unwrap());
            name
        };
        let names: Vec<FileName> = (0..1000).map(|i| put(&mut store, i)).collect();
        assert_eq!(store.scrub(1000).1, 10, "a budget of 10 parts visits 10 parts of 1000");
        assert_eq!(store.scrub(1000).1, 10, "and the next round the next 10");
        for n in &names[10..] {
            store.drop_file(n);
        }
        assert_eq!(store.scrub(1 << 20).1, 10, "a store that held 1000 parts and holds 10 verifies 10");
        let mut fresh = LocalStore::new(Box::new(MemStorage::default())).unwrap();
        for i in 0..10 {
            put(&mut fresh, i);
        }
        assert_eq!(fresh.scrub(1 << 20).1, 10);
    }

    #[test]
    fn corrupt_parts_are_never_returned() {
        let mut store = LocalStore::new(Box::new(MemStorage::default())).unwrap();
        let name = FileName::new("f").unwrap();
        let w = WriteMeta::describe(stamp(1, 1), WriteKind::Create, b"hello", 1024);
        store.file_mut(&name).create = Some(w.clone());
        assert!(!store.put_part(&name, w.stamp, 0, w.parts[0], b"hellO").unwrap(), "bad bytes refused");
        assert!(store.put_part(&name, w.stamp, 0, w.parts[0], b"hello").unwrap());
        assert_eq!(store.read_part(&name, w.stamp, 0).unwrap(), b"hello");
        // Corrupt the stored block behind the store's back.
        let blob = store.write_blobs(&name, w.stamp).unwrap()[0];
        store.storage.put(blob, b"jello").unwrap();
        assert_eq!(store.read_part(&name, w.stamp, 0), Err(PartError::Corrupt));
        assert_eq!(store.read_part(&name, w.stamp, 0), Err(PartError::Missing), "removed for repair");
        assert!(!store.is_complete(&name, &w));
    }
}
