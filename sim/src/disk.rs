//! A simulated disk behind HyDFS's storage trait: memory that keeps, for every block, what a
//! crash would leave (the last synced bytes) apart from what the process sees.
//!
//! Invariants kept here: a crash keeps exactly the synced state (unsynced puts and deletes are
//! lost); corruption flips bytes in both views of one block, as bit rot at rest would; nothing
//! here reads a clock or an unseeded RNG.

use rainstorm_core::hydfs::{BlobId, Storage, StorageError};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Clone, Debug, Default)]
struct Block {
    /// What the running process reads (`None`: deleted).
    current: Option<Arc<[u8]>>,
    /// What survives a crash.
    durable: Option<Arc<[u8]>>,
}

#[derive(Debug, Default)]
struct DiskState {
    blocks: BTreeMap<BlobId, Block>,
    /// Blocks put or deleted since a sync last made them durable (a superset is harmless), so
    /// that a sync costs what changed, not the whole disk.
    dirty: BTreeSet<BlobId>,
    syncs: u64,
    /// Flushes take two calls: the first snapshots and answers `InProgress`, the next makes
    /// the snapshot durable (not what was put since). A flush behind (`flush_behind`) completes
    /// only at the second `durable_mark` after it began, so its caller sees it under way.
    background: bool,
    flushing: Option<Flushing>,
    /// Puts and deletes so far: the mark a flush begun now makes durable.
    written: u64,
    /// The highest mark a completed flush made durable.
    durable_mark: u64,
    /// A `flush_behind` came while a flush was under way: another begins once it completes.
    wanted: bool,
    /// Blocks whose reads fail (bad sectors), until written again or deleted.
    unreadable: BTreeSet<BlobId>,
    /// Whether a block was ever corrupted or made unreadable on this disk.
    damaged: bool,
    /// The disk is full: every put fails as ENOSPC does (deletes and syncs work).
    full: bool,
}

/// A flush under way: what it makes durable, and the mark it reaches.
#[derive(Debug)]
struct Flushing {
    snapshot: BTreeMap<BlobId, Option<Arc<[u8]>>>,
    mark: u64,
    /// Begun since the last `durable_mark` call (it cannot have completed yet).
    fresh: bool,
}

impl DiskState {
    /// Completes the flush under way, if any.
    fn complete(&mut self) {
        if let Some(f) = self.flushing.take() {
            self.syncs += 1;
            self.make_durable(f.snapshot);
            self.durable_mark = self.durable_mark.max(f.mark);
        }
    }

    /// Begins a flush of everything not yet durable; `false` if everything is.
    fn begin(&mut self) -> bool {
        debug_assert!(self.flushing.is_none(), "one flush at a time");
        if self.all_durable() {
            self.dirty.clear();
            self.durable_mark = self.written;
            return false;
        }
        let snapshot = self.snapshot();
        self.flushing = Some(Flushing { snapshot, mark: self.written, fresh: true });
        true
    }

    /// Makes everything durable at once (a disk whose syncs do not run in the background).
    fn sync_now(&mut self) {
        self.syncs += 1;
        // Every block outside `dirty` already has its current bytes durable.
        for id in std::mem::take(&mut self.dirty) {
            let Some(b) = self.blocks.get_mut(&id) else { continue };
            b.durable = b.current.clone();
            if b.current.is_none() {
                self.blocks.remove(&id);
            }
        }
        self.durable_mark = self.written;
    }

    fn all_durable(&self) -> bool {
        self.blocks.values().all(|b| match (&b.current, &b.durable) {
            (Some(c), Some(d)) => Arc::ptr_eq(c, d),
            (None, None) => true,
            _ => false,
        })
    }

    fn snapshot(&self) -> BTreeMap<BlobId, Option<Arc<[u8]>>> {
        self.blocks.iter().map(|(id, b)| (*id, b.current.clone())).collect()
    }

    fn make_durable(&mut self, snapshot: BTreeMap<BlobId, Option<Arc<[u8]>>>) {
        for (id, bytes) in snapshot {
            if let Some(b) = self.blocks.get_mut(&id) {
                b.durable = bytes;
            }
        }
        self.blocks.retain(|_, b| b.current.is_some() || b.durable.is_some());
    }
}

/// One node's disk; clones share it (the node writes through one, the world inspects another).
#[derive(Clone, Debug, Default)]
pub struct SimDisk(Arc<Mutex<DiskState>>);

impl SimDisk {
    /// A disk whose syncs complete at once, or (`background`) on the call after they start.
    pub fn new(background: bool) -> SimDisk {
        let disk = SimDisk::default();
        disk.state().background = background;
        disk
    }

    fn state(&self) -> MutexGuard<'_, DiskState> {
        // A poisoned lock means a node panicked mid-write; the panic is reported by the world.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The process died: unsynced writes and deletes are lost.
    pub fn crash(&self) {
        let mut s = self.state();
        s.flushing = None;
        s.wanted = false;
        s.dirty.clear();
        for b in s.blocks.values_mut() {
            b.current = b.durable.clone();
        }
        s.blocks.retain(|_, b| b.current.is_some());
    }

    /// Flips one byte of one stored block (chosen by `rng`). Returns the block, if any.
    pub fn corrupt(&self, rng: &mut impl Rng) -> Option<BlobId> {
        let mut s = self.state();
        let ids: Vec<BlobId> = s
            .blocks
            .iter()
            .filter(|(_, b)| b.current.as_ref().is_some_and(|c| !c.is_empty()))
            .map(|(i, _)| *i)
            .collect();
        if ids.is_empty() {
            return None;
        }
        let id = ids[rng.gen_range(0..ids.len())];
        s.damaged = true;
        let b = s.blocks.get_mut(&id)?;
        let mut bytes = b.current.as_ref()?.to_vec();
        let at = rng.gen_range(0..bytes.len());
        bytes[at] ^= 1 << rng.gen_range(0..8);
        let bytes: Arc<[u8]> = bytes.into();
        if b.durable.is_some() {
            b.durable = Some(bytes.clone());
        }
        b.current = Some(bytes);
        Some(id)
    }

    /// Makes one stored block unreadable (chosen by `rng`): a bad sector, reads of which fail
    /// as EIO does, until the block is written again or deleted. Like bit rot, the damage is at
    /// rest: the block is still there for the durability checker. Returns the block, if any.
    pub fn lose(&self, rng: &mut impl Rng) -> Option<BlobId> {
        let mut s = self.state();
        let ids: Vec<BlobId> =
            s.blocks.iter().filter(|(_, b)| b.current.is_some()).map(|(i, _)| *i).collect();
        if ids.is_empty() {
            return None;
        }
        let id = ids[rng.gen_range(0..ids.len())];
        s.unreadable.insert(id);
        s.damaged = true;
        Some(id)
    }

    /// Fills the disk (`true`: every put fails as ENOSPC does) or frees space again.
    pub fn set_full(&self, full: bool) {
        self.state().full = full;
    }

    /// Whether a block of this disk was ever corrupted or made unreadable.
    pub fn damaged(&self) -> bool {
        self.state().damaged
    }

    /// The blocks the running process sees (for the leaked-blocks checker).
    pub fn live_blocks(&self) -> BTreeSet<BlobId> {
        self.state().blocks.iter().filter(|(_, b)| b.current.is_some()).map(|(id, _)| *id).collect()
    }

    /// Whether `blob` holds, durably, the bytes the process sees.
    pub fn is_durable(&self, blob: BlobId) -> bool {
        let s = self.state();
        s.blocks.get(&blob).is_some_and(|b| match (&b.current, &b.durable) {
            // A sync shares the bytes, so identity (not a byte compare) says they are durable.
            (Some(c), Some(d)) => std::sync::Arc::ptr_eq(c, d),
            _ => false,
        })
    }

    /// The bytes of a block as the process sees them.
    pub fn read(&self, blob: BlobId) -> Option<Vec<u8>> {
        self.state().blocks.get(&blob).and_then(|b| b.current.as_ref().map(|c| c.to_vec()))
    }

    pub fn syncs(&self) -> u64 {
        self.state().syncs
    }
}

impl Storage for SimDisk {
    fn put(&mut self, blob: BlobId, data: &[u8]) -> Result<(), StorageError> {
        let mut s = self.state();
        if s.full {
            return Err(StorageError::Io(format!(
                "cannot write block {blob}: No space left on device (os error 28)"
            )));
        }
        s.unreadable.remove(&blob);
        s.blocks.entry(blob).or_default().current = Some(data.into());
        s.dirty.insert(blob);
        s.written += 1;
        Ok(())
    }

    fn read(&mut self, blob: BlobId) -> Result<Vec<u8>, StorageError> {
        if self.state().unreadable.contains(&blob) {
            return Err(StorageError::Io(format!(
                "cannot read block {blob}: Input/output error (os error 5)"
            )));
        }
        SimDisk::read(self, blob).ok_or(StorageError::Missing(blob))
    }

    fn delete(&mut self, blob: BlobId) -> Result<(), StorageError> {
        let mut s = self.state();
        s.unreadable.remove(&blob);
        if let Some(b) = s.blocks.get_mut(&blob) {
            b.current = None;
            s.dirty.insert(blob);
        }
        s.written += 1;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        let mut s = self.state();
        if !s.background {
            s.sync_now();
            return Ok(());
        }
        s.complete();
        if s.begin() {
            return Err(StorageError::InProgress);
        }
        Ok(())
    }

    fn flush_behind(&mut self) -> Result<u64, StorageError> {
        let mut s = self.state();
        let mark = s.written;
        if !s.background {
            s.sync_now();
        } else if s.flushing.is_some() {
            s.wanted = true;
        } else {
            s.begin();
        }
        Ok(mark)
    }

    fn durable_mark(&mut self) -> Result<u64, StorageError> {
        let mut s = self.state();
        match s.flushing.as_mut() {
            Some(f) if f.fresh => f.fresh = false,
            Some(_) => {
                s.complete();
                if std::mem::take(&mut s.wanted) {
                    s.begin();
                }
            }
            None => {}
        }
        Ok(s.durable_mark)
    }

    fn list(&mut self) -> Result<Vec<BlobId>, StorageError> {
        Ok(self.live_blocks().into_iter().collect())
    }

    fn wipe(&mut self) -> Result<(), StorageError> {
        let mut s = self.state();
        s.blocks.clear();
        s.dirty.clear();
        s.flushing = None;
        s.wanted = false;
        s.durable_mark = s.written;
        s.unreadable.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_crash_keeps_only_synced_state() {
        let mut d = SimDisk::new(false);
        d.put(1, b"one").unwrap();
        d.sync().unwrap();
        d.put(2, b"two").unwrap();
        d.delete(1).unwrap();
        assert!(!d.is_durable(2));
        d.crash();
        assert_eq!(SimDisk::read(&d, 1).as_deref(), Some(&b"one"[..]));
        assert_eq!(SimDisk::read(&d, 2), None);
    }

    #[test]
    fn a_sync_makes_every_put_and_delete_since_the_last_one_durable() {
        let mut d = SimDisk::new(false);
        d.put(1, b"one").unwrap();
        d.put(2, b"two").unwrap();
        d.sync().unwrap();
        d.delete(1).unwrap();
        d.put(2, b"2").unwrap();
        d.sync().unwrap();
        d.put(3, b"three").unwrap();
        d.crash();
        assert_eq!(SimDisk::read(&d, 1), None);
        assert_eq!(SimDisk::read(&d, 2).as_deref(), Some(&b"2"[..]));
        assert_eq!(SimDisk::read(&d, 3), None);
        assert!(d.is_durable(2));
    }

    #[test]
    fn a_background_flush_covers_what_was_put_before_it_started() {
        let mut d = SimDisk::new(true);
        d.put(1, b"one").unwrap();
        assert_eq!(d.sync(), Err(StorageError::InProgress));
        d.put(2, b"two").unwrap();
        // The first flush finished (block 1) but block 2 came after it: another one starts.
        assert_eq!(d.sync(), Err(StorageError::InProgress));
        assert!(d.is_durable(1) && !d.is_durable(2));
        assert_eq!(d.sync(), Ok(()));
        assert!(d.is_durable(2));
        d.delete(1).unwrap();
        assert_eq!(d.sync(), Err(StorageError::InProgress));
        d.crash(); // the flush of the delete never finished
        assert_eq!(SimDisk::read(&d, 1).as_deref(), Some(&b"one"[..]));
    }

    #[test]
    fn a_flush_behind_is_seen_under_way_then_complete_and_covers_only_what_came_before_it() {
        let mut d = SimDisk::new(true);
        d.put(1, b"one").unwrap();
        let first = d.flush_behind().unwrap();
        assert!(d.durable_mark().unwrap() < first, "seen under way once");
        d.put(2, b"two").unwrap();
        let second = d.flush_behind().unwrap();
        assert!(second > first);
        assert_eq!(d.durable_mark().unwrap(), first, "the first completed; the second began");
        assert!(d.is_durable(1) && !d.is_durable(2));
        d.crash(); // the second never completed
        assert_eq!(SimDisk::read(&d, 2), None);
        assert_eq!(SimDisk::read(&d, 1).as_deref(), Some(&b"one"[..]));

        let mut d = SimDisk::new(true);
        d.put(1, b"one").unwrap();
        let mark = d.flush_behind().unwrap();
        d.durable_mark().unwrap();
        assert!(d.durable_mark().unwrap() >= mark);
        assert!(d.is_durable(1));
        // A disk whose syncs do not run in the background is durable at once.
        let mut d = SimDisk::new(false);
        d.put(1, b"one").unwrap();
        let mark = d.flush_behind().unwrap();
        assert!(d.durable_mark().unwrap() >= mark && d.is_durable(1));
    }

    #[test]
    fn corruption_changes_the_bytes() {
        let mut d = SimDisk::new(false);
        d.put(1, b"hello").unwrap();
        d.sync().unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(d.corrupt(&mut rng), Some(1));
        assert_ne!(SimDisk::read(&d, 1).as_deref(), Some(&b"hello"[..]));
        assert!(d.is_durable(1), "bit rot is at rest");
    }
}
