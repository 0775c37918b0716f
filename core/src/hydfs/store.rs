//! A node's own replicas: the index of files (create, merged appends, pending appends) and the
//! checksummed parts in storage.
//!
//! Invariants kept here:
//! * a part enters storage only if its bytes match the [`PartMeta`] its write declared (length,
//!   CRC32C, line ends), and leaves a read only after its length and CRC32C are checked again
//!   ([`PartMeta::still_matches`]): a corrupt part is removed (to be fetched again), never
//!   returned;
//! * a large part's slot of its hash ([`BulkDigest`]), once filled, holds the hash of the part's
//!   bytes as stored: it is filled from bytes that matched the part's [`PartMeta`], and handed
//!   out only with bytes whose checksum was verified again (asserted in debug builds);
//! * a write is *complete* when all its parts are stored; only complete writes are served;
//! * a part is stored only for a write the index holds, and leaves storage with it: every block
//!   in storage is one the index points at (no block outlives its file);
//! * [`reconcile`] never drops a write: the earlier create of a name wins, divergent merge orders
//!   resolve to one winner and the loser's extra appends become pending again;
//! * a sealed file's view ([`LocalStore::meta`]) and its merged-order hash (the merge fence)
//!   leave out the appends its seals do not keep (`seal.rs`), which stay in the index: copies
//!   that hold the same writes show the same file and the same fence, whatever order they met
//!   the seals in;
//! * a file's remembered owner chain ([`LocalStore::owners_of`]) is always what its writes make
//!   of it: it is forgotten on any change but an added append, which cannot change it; its
//!   remembered merged appends ([`LocalStore::holds_write`]) are always its merged list: they
//!   are forgotten on any change but an added pending write; its remembered description size
//!   ([`LocalStore::meta_bytes`]) is always what its writes take: an added pending write adds
//!   its own bytes (less those of the write it replaces), any other change forgets it;
//! * a file's remembered digest ([`LocalStore::digest`]) and view ([`LocalStore::meta_shared`])
//!   are always what its writes and parts make of it: both are forgotten on any change to
//!   either; at most [`VIEWS_REMEMBERED`] files' views are remembered at once;
//! * the index is durable with the parts: [`LocalStore::sync`] writes what changed since the last
//!   sync as one index block (`index.rs`) before syncing storage, so after a crash
//!   [`LocalStore::open`] recovers exactly the files, writes and parts the last completed sync
//!   covered (and verifies every part's checksum); every block in storage is a part the index
//!   names or an index block in use, and recovery removes the rest;
//! * [`LocalStore::flush_behind`] starts the same without waiting for it (storage flushes behind
//!   the node's back), and [`LocalStore::durable_through`] says how far durability has come in
//!   changes counted by [`LocalStore::changes`]: a change counts as durable only once a flush
//!   that began after it (or a [`LocalStore::sync`]) has completed. The durable count never
//!   passes the change count and never falls.

use super::index::{self, FileChange, FileEntry, IndexBlock, IndexBody, PartChange, PartEntry};
use super::seal::Owners;
use super::storage::{BlobId, Storage, StorageError};
use super::types::{FileDigest, FileMeta, PartMeta, Stamp, WriteKind, WriteMeta};
use super::FileName;
use crate::bulk::{Bulk, BulkDigest};
use crate::wire::BULK_APART_BYTES;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

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

#[derive(Clone, Debug)]
struct PartRec {
    blob: BlobId,
    /// What the write declared for this part (its bytes were checked against it when stored).
    meta: PartMeta,
    /// For a part large enough to travel as a bulk field tagged by its hash
    /// ([`BULK_APART_BYTES`]), the slot of that hash: filled when the part arrived with it
    /// known, or by the first frame that sends the part, so that a part read again and again
    /// is hashed once (memory only: a restarted node hashes each part again once).
    digest: Option<BulkDigest>,
}

impl PartRec {
    /// A part stored in `blob`, with an empty slot of its hash if it is a large part.
    fn new(blob: BlobId, meta: PartMeta) -> PartRec {
        let digest = (meta.len as usize >= BULK_APART_BYTES).then(BulkDigest::default);
        PartRec { blob, meta, digest }
    }
}

/// Why a part could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartError {
    /// The index holds no such part.
    Missing,
    /// Failed its checksum; it has been removed so that it is fetched again.
    Corrupt,
    /// The index named it but its block is gone or unreadable (ENOENT, EIO): it has been
    /// removed so that it is fetched again.
    Lost(StorageError),
}

/// One part: its file, its write's stamp and its number in the write.
pub type PartKey = (FileName, Stamp, u32);

/// What the index last made durable about one file, to write only what changed at a sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Persisted {
    create: Option<Stamp>,
    generation: u64,
    merged: Vec<Stamp>,
    pending: BTreeSet<Stamp>,
}

impl Persisted {
    /// What the index holds after `change` (a delta computed against `self`) is durable: the
    /// cost is that of the change, not of the file.
    fn apply(&mut self, change: &FileChange) {
        let FileChange::Delta {
            create,
            generation,
            merged_keep,
            merged_tail,
            pending_added,
            pending_removed,
            ..
        } = change
        else {
            return;
        };
        if let Some(c) = create {
            self.create = Some(c.stamp);
        }
        self.generation = *generation;
        self.merged.truncate(*merged_keep as usize);
        self.merged.extend(merged_tail.iter().map(|w| w.stamp));
        for s in pending_removed {
            self.pending.remove(s);
        }
        self.pending.extend(pending_added.iter().map(|w| w.stamp));
    }

    fn of(rec: &FileRec) -> Persisted {
        Persisted {
            create: rec.create.as_ref().map(|c| c.stamp),
            generation: rec.generation,
            merged: rec.merged.iter().map(|w| w.stamp).collect(),
            pending: rec.pending.keys().copied().collect(),
        }
    }
}

/// Which writes of one file have every part stored ([`LocalStore::held_parts`]): per write with a
/// part stored, in stamp order, how many of its parts are and the highest part number among them.
#[derive(Clone, Debug, Default)]
pub struct HeldParts(Vec<(Stamp, u32, u32)>);

impl HeldParts {
    /// Whether every part of `w` is stored: as many parts of it as it has, none numbered past
    /// its last (so parts 0 to n - 1 each once).
    pub fn is_complete(&self, w: &WriteMeta) -> bool {
        let n = w.parts.len() as u32;
        n == 0
            || self
                .0
                .binary_search_by_key(&w.stamp, |(s, _, _)| *s)
                .is_ok_and(|i| self.0[i].1 == n && self.0[i].2 < n)
    }
}

/// How recovery checks the parts its index names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartCheck {
    /// Read every part back and verify its checksum; drop what is missing, unreadable or corrupt.
    ReadAndVerify,
    /// Read every part back, without its checksum (planted bug `serves-corrupt-blocks`).
    ReadOnly,
    /// Keep every part the index names (planted bug `recovery-trusts-blocks`).
    Trust,
}

/// What a node found in its storage when it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub files: u64,
    pub parts: u64,
    pub bytes: u64,
    /// Parts the index named whose blocks were missing, unreadable or failed their checksum:
    /// dropped from the index, to be fetched again from a replica.
    pub lost_parts: u64,
    /// Blocks that no synced index entry names (written after the last completed sync, or
    /// superseded index blocks): removed.
    pub stray_blocks: u64,
    /// Index blocks read (the snapshot and the changes after it).
    pub index_blocks: u64,
    /// Why reading the index stopped before its last block, if it did: after a crash the
    /// blocks written after the last completed sync may be torn, which is expected; a damaged
    /// block before valid ones means storage lost or damaged a synced block.
    pub index_damage: Option<String>,
    /// Why the fresh snapshot written at start failed (a full disk), if it did: the node runs
    /// on the index it recovered.
    pub snapshot_error: Option<String>,
}

pub struct LocalStore {
    storage: Box<dyn Storage + Send>,
    files: BTreeMap<FileName, FileRec>,
    parts: BTreeMap<PartKey, PartRec>,
    next_blob: BlobId,
    /// Changes not yet written to storage (the index's, or blocks put or deleted since the last
    /// sync or flush began).
    unsynced: bool,
    /// Changes made, counted (see [`LocalStore::changes`]).
    changes: u64,
    /// Changes known durable: every change up to this count.
    durable_changes: u64,
    /// The change count at the last removal of a part or a change of a file's whole record: a
    /// copy found complete before it may have been taken apart and put together again since.
    last_drop: u64,
    /// Flushes begun behind the node's back and not yet known complete: the change count each
    /// covers, and the storage mark that says it completed ([`Storage::flush_behind`]).
    behind: VecDeque<(u64, u64)>,
    scrub_cursor: Option<PartKey>,
    /// Verify checksums on read (off only for a planted bug).
    pub verify: bool,
    /// Files and parts changed since the index last recorded them.
    dirty_files: BTreeSet<FileName>,
    /// Files whose only change since the last index write is appends added by
    /// [`LocalStore::add_pending`] (never in `dirty_files`), with their stamps: their change is
    /// written from these alone, at a cost that does not grow with the file.
    appended: BTreeMap<FileName, Vec<Stamp>>,
    dirty_parts: BTreeSet<PartKey>,
    /// What the index holds about each file.
    persisted: BTreeMap<FileName, Persisted>,
    /// The next index block's sequence number.
    next_seq: u64,
    /// Index blocks in storage that recovery would read: the newest snapshot and the changes
    /// after it, plus any older blocks not yet removed.
    index_blocks: BTreeSet<u64>,
    /// Where the newest snapshot starts; blocks before it are removed after it is durable.
    snapshot_first: u64,
    snapshot_bytes: u64,
    /// Bytes of change blocks written since the newest snapshot.
    changes_bytes: u64,
    /// Change blocks after which the index is compacted.
    compact_blocks: usize,
    /// Whether syncs write the index (off only for a planted bug).
    pub index_writes: bool,
    /// Whether a sealed file's view leaves out the appends its seals do not keep (off only for
    /// a planted bug). Set once, before any file is looked at: the remembered owner chains,
    /// digests and views depend on it.
    pub seals: bool,
    /// The tombstones of deleted files this node keeps (see `tombstone.rs`), and the changes
    /// to them since the last index block.
    tombstones: BTreeSet<(FileName, Stamp)>,
    tombstones_kept: BTreeSet<(FileName, Stamp)>,
    tombstones_forgotten: BTreeSet<(FileName, Stamp)>,
    /// The owner chain ([`Owners::of`]) of files asked for since their creates and seals last
    /// changed: it depends on nothing else, so an append leaves it valid, and a write's seal
    /// check does not go over every write of the file.
    owners_memo: BTreeMap<FileName, Option<Owners>>,
    /// The stamps of the merged appends of files asked about since their merged lists last
    /// changed ([`LocalStore::holds_write`]): a merged list changes only through `file_mut`,
    /// `set_file` and `forget_file`, so an added pending write leaves it valid. Scanned instead,
    /// every append to a file merged many times went over all its merged appends.
    merged_memo: BTreeMap<FileName, BTreeSet<Stamp>>,
    /// The bytes of the description of files asked about ([`LocalStore::meta_bytes`]) since
    /// their records last changed other than by an added pending write, which adds its own
    /// bytes: a coordinator asks at every append, and summing every write of a long file each
    /// time would cost as much as the scan `merged_memo` saves.
    meta_bytes_memo: BTreeMap<FileName, u64>,
    /// The digest ([`LocalStore::digest`]) of files asked for since they or their parts last
    /// changed. An inventory lists the digest of every file a node holds, several times per
    /// anti-entropy round (its own, and its answers to its neighbours), and a node holding
    /// large files spent tens of milliseconds per inventory on files that had not changed,
    /// while appends waited.
    digest_memo: BTreeMap<FileName, FileDigest>,
    /// Changes of any file's record or parts, counted ([`LocalStore::files_epoch`]).
    files_epoch: u64,
    /// The views ([`LocalStore::meta_shared`]) of the files read last, oldest first, at most
    /// [`VIEWS_REMEMBERED`], each forgotten with its file's digest. A read asks for the view at
    /// every chunk: worked out afresh, a whole-file read cost time in the square of the file's
    /// parts.
    views: VecDeque<(FileName, Arc<FileMeta>)>,
}

/// Files whose views ([`LocalStore::meta_shared`]) are remembered at once, at most: a view is as
/// large as the file's record in the index, and only reads in progress need one.
pub const VIEWS_REMEMBERED: usize = 16;

/// Merged lists shorter than this are scanned rather than remembered as a set
/// ([`LocalStore::holds_write`]): the set would cost more memory than the scan costs time.
const MERGED_SCAN_MAX: usize = 64;

/// What one part costs the scrubber's budget at least, in bytes: reading a part has a fixed
/// cost (a system call, a lookup, a checksum's start), and counted by its bytes alone a round of
/// 4 KiB appends read 2,048 of them at once, holding the node task for about 15 ms.
pub const SCRUB_PART_MIN_BYTES: u64 = 64 << 10;

/// The index is compacted into a new snapshot once its change blocks hold more bytes than the
/// snapshot (and over 1 MiB), so that rewriting the snapshot costs at most as many bytes as the
/// changes it replaces, whatever the size of the index; or past this many change blocks, which
/// bounds what a start reads block by block. A bound by count alone rewrote a node's whole index
/// every 1,024 flushes: with about 90,000 appends held, 6 to 10% of each busy replica's CPU
/// went to snapshots.
const COMPACT_BLOCKS: usize = 16_384;
const COMPACT_MIN_BYTES: u64 = 1024 * 1024;

impl LocalStore {
    /// An empty store: wipes what `storage` holds first.
    pub fn new(mut storage: Box<dyn Storage + Send>) -> Result<LocalStore, StorageError> {
        storage.wipe()?;
        storage.sync()?;
        Ok(LocalStore::open(storage)?.0)
    }

    /// Opens the store `storage` holds: recovers its index (the newest complete snapshot and
    /// the changes after it), verifies every part's checksum (a missing, unreadable or corrupt
    /// part is dropped from the index, to be fetched again), removes every block the index does
    /// not name, and writes a fresh snapshot. Fails only if storage fails.
    pub fn open(storage: Box<dyn Storage + Send>) -> Result<(LocalStore, Recovery), StorageError> {
        LocalStore::open_checked(storage, PartCheck::ReadAndVerify)
    }

    /// [`LocalStore::open`], checking the parts the index names as `check` says (anything but
    /// [`PartCheck::ReadAndVerify`] only for planted bugs). Reads verify checksums either way
    /// ([`LocalStore::verify`]).
    pub fn open_checked(
        mut storage: Box<dyn Storage + Send>,
        check: PartCheck,
    ) -> Result<(LocalStore, Recovery), StorageError> {
        let mut recovery = Recovery::default();
        let listed = storage.list()?;
        let mut index_seqs: Vec<u64> = listed.iter().filter_map(|b| index::seq_of(*b)).collect();
        index_seqs.sort_unstable();
        // Everything that is not an index block is a data block or a stray (ids past the
        // index's range are strays: no store writes them).
        let data_blobs: Vec<BlobId> =
            listed.iter().copied().filter(|b| index::seq_of(*b).is_none()).collect();

        // Decode every index block; remember which are valid.
        let mut blocks: BTreeMap<u64, IndexBlock> = BTreeMap::new();
        let mut bad: BTreeMap<u64, String> = BTreeMap::new();
        for &seq in &index_seqs {
            let decoded = match storage.read(index::blob_of(seq)) {
                Ok(bytes) => index::decode(&bytes).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match decoded {
                Ok(b) if b.seq == seq => {
                    blocks.insert(seq, b);
                }
                Ok(b) => {
                    bad.insert(seq, format!("block {seq} holds index block {}", b.seq));
                }
                Err(e) => {
                    bad.insert(seq, e);
                }
            }
        }
        // The newest snapshot whose parts are all valid.
        let complete = |first: u64, of: u32| {
            (0..of as u64).all(|i| {
                matches!(blocks.get(&(first + i)), Some(IndexBlock { body: IndexBody::Snapshot { first: f, part, of: o, .. }, .. })
                    if *f == first && *part as u64 == i && *o == of)
            })
        };
        let start = blocks
            .values()
            .rev()
            .filter_map(|b| match b.body {
                IndexBody::Snapshot { first, of, .. } if complete(first, of) => Some((first, of)),
                _ => None,
            })
            .next();
        let mut files: BTreeMap<FileName, FileRec> = BTreeMap::new();
        let mut parts: BTreeMap<PartKey, PartRec> = BTreeMap::new();
        let mut tombstones: BTreeSet<(FileName, Stamp)> = BTreeSet::new();
        let mut used: BTreeSet<u64> = BTreeSet::new();
        match start {
            None if !index_seqs.is_empty() => {
                recovery.index_damage = Some(format!(
                    "no complete index snapshot among {} index blocks; starting empty, every file is fetched again from its replicas",
                    index_seqs.len()
                ));
            }
            None => {}
            Some((first, of)) => {
                let mut seq = first;
                loop {
                    let Some(block) = blocks.remove(&seq) else {
                        let later = index_seqs.iter().any(|s| *s > seq && !bad.contains_key(s));
                        if let Some(why) = bad.get(&seq).filter(|_| later) {
                            recovery.index_damage = Some(format!("index block {seq}: {why}"));
                        }
                        break;
                    };
                    match block.body {
                        IndexBody::Snapshot { first: f, .. } if f != first && seq >= first + of as u64 => {
                            // A later snapshot that is not complete: written after the last sync.
                            break;
                        }
                        body => apply(&mut files, &mut parts, &mut tombstones, body),
                    }
                    used.insert(seq);
                    seq += 1;
                }
            }
        }
        recovery.index_blocks = used.len() as u64;
        // Verify every part; drop the lost ones.
        let mut lost = Vec::new();
        for (key, rec) in &parts {
            let ok = match check {
                PartCheck::ReadAndVerify => storage
                    .read_checked(rec.blob)
                    .is_ok_and(|(bytes, crc)| rec.meta.still_matches_crc(&bytes, crc)),
                PartCheck::ReadOnly => storage.read(rec.blob).is_ok(),
                PartCheck::Trust => true,
            };
            if !ok {
                lost.push(key.clone());
            }
        }
        recovery.lost_parts = lost.len() as u64;
        for key in &lost {
            parts.remove(key);
        }
        // Parts of writes the files no longer hold cannot be named by a synced index; drop them.
        parts.retain(|(n, s, _), _| files.get(n).is_some_and(|r| r.contains(s)));
        let named: BTreeSet<BlobId> = parts.values().map(|p| p.blob).collect();
        let next_blob = data_blobs
            .iter()
            .copied()
            .filter(|b| *b < index::INDEX_BASE)
            .max()
            .unwrap_or(0)
            .max(named.iter().copied().max().unwrap_or(0))
            + 1;
        debug_assert!(next_blob < index::INDEX_BASE, "data blocks stay below the index's ids");
        recovery.files = files.len() as u64;
        recovery.parts = parts.len() as u64;
        recovery.bytes = parts.values().map(|p| p.meta.len as u64).sum();
        let persisted = files.iter().map(|(n, r)| (n.clone(), Persisted::of(r))).collect();
        // Every index block outside the chain (after a gap, damaged, an older snapshot) and
        // every block no entry names goes, durably, before a new index block may take one of
        // their numbers: the chain goes on right after its last block.
        for seq in index_seqs.iter().filter(|s| !used.contains(s)) {
            recovery.stray_blocks += 1;
            let _ = storage.delete(index::blob_of(*seq));
        }
        for blob in data_blobs.iter().filter(|b| !named.contains(b)) {
            recovery.stray_blocks += 1;
            let _ = storage.delete(*blob);
        }
        sync_until_done(&mut *storage)?;
        let mut store = LocalStore {
            storage,
            files,
            parts,
            next_blob,
            unsynced: false,
            changes: 0,
            durable_changes: 0,
            last_drop: 0,
            behind: VecDeque::new(),
            scrub_cursor: None,
            dirty_files: BTreeSet::new(),
            appended: BTreeMap::new(),
            dirty_parts: BTreeSet::new(),
            persisted,
            next_seq: used.last().map_or(0, |s| s + 1),
            index_blocks: used.clone(),
            snapshot_first: start.map_or(0, |(first, _)| first),
            snapshot_bytes: 0,
            changes_bytes: 0,
            compact_blocks: COMPACT_BLOCKS,
            index_writes: true,
            seals: true,
            verify: true,
            tombstones,
            tombstones_kept: BTreeSet::new(),
            tombstones_forgotten: BTreeSet::new(),
            owners_memo: BTreeMap::new(),
            merged_memo: BTreeMap::new(),
            meta_bytes_memo: BTreeMap::new(),
            digest_memo: BTreeMap::new(),
            files_epoch: 0,
            views: VecDeque::new(),
        };
        // A fresh snapshot of what was recovered, durable before the chain it replaces is
        // removed. A full disk refuses it: the node starts anyway on the chain it has (it can
        // still serve reads), and the parts dropped above are recorded by its next sync.
        match store.write_snapshot().and_then(|()| sync_until_done(&mut *store.storage)) {
            Ok(()) => {
                store.unsynced = false;
                store.remove_old_index_blocks();
                sync_until_done(&mut *store.storage)?;
                store.durable_changes = store.changes;
            }
            Err(e) => {
                recovery.snapshot_error = Some(e.to_string());
                store.dirty_parts.extend(lost);
                store.changed();
            }
        }
        store.check_index();
        Ok((store, recovery))
    }

    pub fn files(&self) -> &BTreeMap<FileName, FileRec> {
        &self.files
    }

    pub fn file(&self, name: &FileName) -> Option<&FileRec> {
        self.files.get(name)
    }

    pub fn file_mut(&mut self, name: &FileName) -> &mut FileRec {
        self.touch(name);
        self.owners_memo.remove(name);
        self.merged_memo.remove(name);
        self.meta_bytes_memo.remove(name);
        self.forget_digest_and_view(name);
        self.files.entry(name.clone()).or_default()
    }

    /// Records the tombstone of deleted file `(name, create)` in the index (durable at the next
    /// sync).
    pub fn keep_tombstone(&mut self, name: &FileName, create: Stamp) {
        let key = (name.clone(), create);
        if self.tombstones.insert(key.clone()) {
            self.tombstones_forgotten.remove(&key);
            self.tombstones_kept.insert(key);
            self.changed();
        }
    }

    /// Removes an expired or evicted tombstone from the index.
    pub fn forget_tombstone(&mut self, name: &FileName, create: Stamp) {
        let key = (name.clone(), create);
        if self.tombstones.remove(&key) {
            self.tombstones_kept.remove(&key);
            self.tombstones_forgotten.insert(key);
            self.changed();
        }
    }

    /// The tombstones the index holds (a restarted node takes them back).
    pub fn tombstones(&self) -> impl Iterator<Item = &(FileName, Stamp)> {
        self.tombstones.iter()
    }

    /// Marks a file's record changed: the next sync writes it to the index.
    fn touch(&mut self, name: &FileName) {
        if !self.dirty_files.contains(name) {
            self.dirty_files.insert(name.clone());
            // The whole comparison of a dirty file covers the appends too.
            self.appended.remove(name);
        }
        self.changed();
    }

    /// Adds pending append `w` to file `name` (a write arriving). For a file the index already
    /// holds and nothing else changed in since the last sync, the change written is these
    /// appends alone.
    pub fn add_pending(&mut self, name: &FileName, w: WriteMeta) {
        // A seal (or anything but an append, added or replaced) changes the chain: it is worked
        // out again.
        let replaces_other = self
            .files
            .get(name)
            .and_then(|rec| rec.pending.get(&w.stamp))
            .is_some_and(|old| old.kind != WriteKind::Append);
        let memo = self.owners_memo.remove(name).filter(|_| w.kind == WriteKind::Append && !replaces_other);
        // A pending write, whatever it is, leaves the merged list as it was.
        let merged = self.merged_memo.remove(name);
        // ... and adds its own bytes to the description, less those of a pending write it
        // replaces.
        let meta_bytes = self.meta_bytes_memo.remove(name).map(|bytes| {
            let replaced = self.files.get(name).and_then(|rec| rec.pending.get(&w.stamp));
            bytes
                .saturating_sub(replaced.map_or(0, WriteMeta::described_bytes))
                .saturating_add(w.described_bytes())
        });
        self.add_pending_write(name, w);
        if let Some(owners) = memo {
            self.owners_memo.insert(name.clone(), owners);
        }
        if let Some(merged) = merged {
            self.merged_memo.insert(name.clone(), merged);
        }
        if let Some(bytes) = meta_bytes {
            self.meta_bytes_memo.insert(name.clone(), bytes);
        }
    }

    fn add_pending_write(&mut self, name: &FileName, w: WriteMeta) {
        let exact = !self.dirty_files.contains(name)
            && self.persisted.contains_key(name)
            && self.files.contains_key(name);
        if !exact {
            self.file_mut(name).pending.insert(w.stamp, w);
            return;
        }
        let stamp = w.stamp;
        self.forget_digest_and_view(name);
        self.files.get_mut(name).expect("held, checked above").pending.insert(stamp, w);
        self.appended.entry(name.clone()).or_default().push(stamp);
        self.changed();
    }

    pub fn set_file(&mut self, name: &FileName, rec: FileRec) {
        self.touch(name);
        self.last_drop = self.changes;
        self.owners_memo.remove(name);
        self.merged_memo.remove(name);
        self.meta_bytes_memo.remove(name);
        self.forget_digest_and_view(name);
        // Parts of writes the record no longer holds are released (the stamps sorted: compared
        // one by one, the cost grew with the square of the file's writes).
        let mut keep: Vec<Stamp> = rec.writes().map(|w| w.stamp).collect();
        keep.sort_unstable();
        let stale: Vec<PartKey> = self
            .parts
            .range((name.clone(), Stamp::MIN, 0)..)
            .take_while(|((n, _, _), _)| n == name)
            .filter(|((_, s, _), _)| keep.binary_search(s).is_err())
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

    /// Whether every part of write `w` of file `name` is stored (one range of the index, not
    /// a lookup per part: a read asks this of every write for every chunk it serves).
    pub fn is_complete(&self, name: &FileName, w: &WriteMeta) -> bool {
        let n = w.parts.len() as u32;
        if n == 0 {
            return true;
        }
        let held = self.parts.range((name.clone(), w.stamp, 0)..=(name.clone(), w.stamp, n - 1)).count();
        debug_assert_eq!(
            held == n as usize,
            (0..n).all(|i| self.has_part(name, w.stamp, i)),
            "one range of the index says what a lookup per part would"
        );
        held == n as usize
    }

    /// [`LocalStore::is_complete`] for a write that had every part at change count `noted`
    /// (when a wait for its flush first found it complete): parts leave the store only through
    /// drops, which move [`LocalStore::last_drop`] to the count of the moment, so while that
    /// stays below `noted` the write is still complete and the index is not walked again. The
    /// coordinators' and replicas' waits ask this of every write in flight at every round.
    pub fn still_complete(&self, name: &FileName, w: &WriteMeta, noted: Option<u64>) -> bool {
        if noted.is_some_and(|at| self.last_drop < at) {
            debug_assert!(self.is_complete(name, w), "no part left the store since it was complete");
            return true;
        }
        self.is_complete(name, w)
    }

    /// Which writes of file `name` have every part stored, from one walk of the file's parts: for
    /// callers that ask it of many writes of one file (a description, a collect, the orphan
    /// check), where [`LocalStore::is_complete`] per write cost a descent of the index and two
    /// copies of the name each.
    pub fn held_parts(&self, name: &FileName) -> HeldParts {
        let mut held: Vec<(Stamp, u32, u32)> = Vec::new();
        let parts = self.parts.range((name.clone(), Stamp::MIN, 0)..).take_while(|((n, _, _), _)| n == name);
        for ((_, stamp, part), _) in parts {
            match held.last_mut() {
                Some((s, count, top)) if s == stamp => {
                    *count += 1;
                    *top = (*top).max(*part);
                }
                _ => held.push((*stamp, 1, *part)),
            }
        }
        debug_assert!(held.windows(2).all(|w| w[0].0 < w[1].0), "a file's parts are walked in stamp order");
        HeldParts(held)
    }

    /// Whether this node's record of `name` holds write `stamp` (its create, a pending or a
    /// merged append: [`FileRec::contains`]), the merged appends looked up in the memo.
    pub fn holds_write(&mut self, name: &FileName, stamp: &Stamp) -> bool {
        let Some(rec) = self.files.get(name) else { return false };
        if rec.create.as_ref().is_some_and(|c| c.stamp == *stamp) || rec.pending.contains_key(stamp) {
            return true;
        }
        if rec.merged.len() < MERGED_SCAN_MAX {
            return rec.merged.iter().any(|w| w.stamp == *stamp);
        }
        let merged = self
            .merged_memo
            .entry(name.clone())
            .or_insert_with(|| rec.merged.iter().map(|w| w.stamp).collect());
        let held = merged.contains(stamp);
        debug_assert_eq!(held, rec.contains(stamp), "the memo of {name}'s merged appends is its merged list");
        held
    }

    /// The bytes the description of file `name` takes: [`WriteMeta::described_bytes`] over its
    /// writes ([`FileRec::writes`]), which is all of an encoded [`FileMeta`] but a few bytes of
    /// its own. From the memo while only pending writes were added since it was worked out.
    pub fn meta_bytes(&mut self, name: &FileName) -> u64 {
        let Some(rec) = self.files.get(name) else { return 0 };
        let sum = |rec: &FileRec| rec.writes().fold(0u64, |n, w| n.saturating_add(w.described_bytes()));
        let bytes = *self.meta_bytes_memo.entry(name.clone()).or_insert_with(|| sum(rec));
        debug_assert_eq!(bytes, sum(rec), "the memo of {name}'s description bytes is what its writes take");
        bytes
    }

    /// The owner chain the seals of file `name` make ([`Owners::of`] over its writes; `None`:
    /// no seal counts), from the memo while only appends came since it was worked out.
    pub fn owners_of(&mut self, name: &FileName) -> Option<Owners> {
        if let Some(owners) = self.owners_memo.get(name) {
            debug_assert_eq!(
                *owners,
                self.files.get(name).and_then(|rec| Owners::of(rec.writes())),
                "the memo of {name}'s owner chain is what its writes make"
            );
            return owners.clone();
        }
        let owners = self.files.get(name).and_then(|rec| Owners::of(rec.writes()));
        if self.files.contains_key(name) {
            self.owners_memo.insert(name.clone(), owners.clone());
        }
        owners
    }

    /// The owner chain of a sealed file (`None`: every write is kept).
    fn owners(&self, rec: &FileRec) -> Option<Owners> {
        if self.seals {
            Owners::of(rec.writes())
        } else {
            None
        }
    }

    /// The merged-order hash of a file (create and merged appends, those its seals keep).
    pub fn merged_hash(&self, name: &FileName) -> Option<u64> {
        let rec = self.files.get(name)?;
        let owners = self.owners(rec);
        let merged = rec.merged.iter().filter(|w| owners.as_ref().is_none_or(|o| o.keeps(w)));
        Some(super::types::order_hash(rec.create.iter().chain(merged).map(|w| &w.stamp)))
    }

    /// The merged appends of a file its seals keep (all of them if it has none), in file order.
    pub fn kept_merged(&self, name: &FileName) -> Option<Vec<Stamp>> {
        let rec = self.files.get(name)?;
        let owners = self.owners(rec);
        Some(
            rec.merged
                .iter()
                .filter(|w| owners.as_ref().is_none_or(|o| o.keeps(w)))
                .map(|w| w.stamp)
                .collect(),
        )
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
        debug_assert!(blob < index::INDEX_BASE, "data blocks stay below the index's ids");
        // `matches` computed the bytes' CRC32C: the storage keeps it rather than computing it.
        self.storage.put_with_crc(blob, bytes, meta.crc)?;
        self.changed();
        self.forget_digest_and_view(name);
        self.dirty_parts.insert(key.clone());
        self.parts.insert(key, PartRec::new(blob, meta));
        Ok(true)
    }

    /// [`LocalStore::put_part`] of bytes that came as a bulk field: a large part stored now
    /// keeps the slot of their hash they came with, known or not ([`Bulk::digest`]), for every
    /// read of it.
    pub fn put_bulk_part(
        &mut self,
        at: (&FileName, Stamp, u32),
        meta: PartMeta,
        bytes: &Bulk,
    ) -> Result<bool, StorageError> {
        let (name, stamp, part) = at;
        let key = (name.clone(), stamp, part);
        let new = !self.parts.contains_key(&key);
        let stored = self.put_part(name, stamp, part, meta, bytes)?;
        if let (true, Some(slot), Some(rec)) = (stored && new, bytes.digest_slot(), self.parts.get_mut(&key))
        {
            if rec.digest.is_some() {
                rec.digest = Some(slot);
            }
        }
        Ok(stored)
    }

    /// Reads one part, verifying its checksum.
    pub fn read_part(&mut self, name: &FileName, stamp: Stamp, part: u32) -> Result<Vec<u8>, PartError> {
        self.read_bulk_part(name, stamp, part).map(Bulk::into_vec)
    }

    /// [`LocalStore::read_part`], as a bulk field to send: a large part's bytes come with the
    /// slot of their hash, once their checksum is verified against what the slot was filled
    /// from (the part as stored).
    pub fn read_bulk_part(&mut self, name: &FileName, stamp: Stamp, part: u32) -> Result<Bulk, PartError> {
        let key = (name.clone(), stamp, part);
        let Some(rec) = self.parts.get(&key).cloned() else { return Err(PartError::Missing) };
        let (bytes, crc) = match self.storage.read_checked(rec.blob) {
            Ok(read) => read,
            Err(e) => {
                self.remove_part(&key);
                return Err(PartError::Lost(e));
            }
        };
        if self.verify && !rec.meta.still_matches_crc(&bytes, crc) {
            self.remove_part(&key);
            return Err(PartError::Corrupt);
        }
        Ok(match rec.digest {
            // Unverified bytes may not be the ones the slot vouches for.
            Some(slot) if self.verify => {
                let bulk = Bulk::from(bytes).with_digest(slot);
                debug_assert!(!bulk.digest_known() || bulk.digest() == Bulk::from(&bulk[..]).digest());
                bulk
            }
            _ => Bulk::from(bytes),
        })
    }

    fn remove_part(&mut self, key: &PartKey) {
        if let Some(rec) = self.parts.remove(key) {
            self.forget_digest_and_view(&key.0);
            // A failed delete leaves garbage behind, never wrong data: the index no longer
            // points at the block.
            let _ = self.storage.delete(rec.blob);
            self.changed();
            self.last_drop = self.changes;
            self.dirty_parts.insert(key.clone());
        }
    }

    /// Removes a file and its parts (their blocks are deleted from storage).
    pub fn drop_file(&mut self, name: &FileName) {
        self.set_file(name, FileRec::default());
        self.files.remove(name);
        self.forget_digest_and_view(name);
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
            self.dirty_parts.insert(k);
        }
        self.files.remove(name);
        self.owners_memo.remove(name);
        self.merged_memo.remove(name);
        self.meta_bytes_memo.remove(name);
        self.forget_digest_and_view(name);
        self.touch(name);
        self.last_drop = self.changes;
    }

    /// Every block the store uses: the parts the index points at and the index's own blocks
    /// (for checkers: storage should hold exactly these).
    pub fn blobs(&self) -> impl Iterator<Item = BlobId> + '_ {
        self.parts.values().map(|p| p.blob).chain(self.index_blocks.iter().map(|s| index::blob_of(*s)))
    }

    /// Every part the index names: its file, write, number, block and checksum (for checkers:
    /// each block should hold bytes that match).
    pub fn indexed_parts(&self) -> impl Iterator<Item = (&FileName, Stamp, u32, BlobId, PartMeta)> + '_ {
        self.parts.iter().map(|((n, s, i), p)| (n, *s, *i, p.blob, p.meta))
    }

    /// Indexed parts of writes that no file record holds (for checkers: there should be none).
    pub fn stray_parts(&self) -> usize {
        self.parts.keys().filter(|(n, s, _)| !self.files.get(n).is_some_and(|r| r.contains(s))).count()
    }

    /// Makes every stored part and every index change durable (one sync covers all changes
    /// since the last one): what changed is written as one index block, then storage syncs.
    /// Past a bound, the index is compacted into a new snapshot in the same sync, and the
    /// blocks it replaces are removed once it is durable.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.unsynced {
            if self.index_writes {
                self.write_changes()?;
                if self.compaction_due() {
                    self.write_snapshot()?;
                }
            } else {
                self.forget_changes();
            }
            self.storage.sync()?;
            self.unsynced = false;
            self.remove_old_index_blocks();
        } else if self.durable_changes < self.changes {
            // Everything is written, but a flush behind has not been seen to complete.
            self.storage.sync()?;
        }
        self.durable_changes = self.changes;
        self.behind.clear();
        Ok(())
    }

    /// Starts making every change so far durable without waiting for it: what changed is
    /// written to the index as for [`LocalStore::sync`], and storage flushes it behind the
    /// node's back ([`Storage::flush_behind`]); [`LocalStore::durable_through`] tells when it
    /// is done. Returns whether a flush began (nothing new since the last one begins none). An
    /// index due for compaction is compacted by a whole [`LocalStore::sync`] instead: the
    /// blocks a snapshot replaces are removed only once it is durable.
    pub fn flush_behind(&mut self) -> Result<bool, StorageError> {
        if !self.unsynced {
            return Ok(false);
        }
        if self.index_writes {
            if self.compaction_due() {
                return self.sync().map(|()| true);
            }
            self.write_changes()?;
        } else {
            self.forget_changes();
        }
        let mark = self.storage.flush_behind()?;
        self.unsynced = false;
        debug_assert!(
            self.behind.back().is_none_or(|(changes, m)| *changes <= self.changes && *m <= mark),
            "flushes behind cover growing counts, with growing marks"
        );
        self.behind.push_back((self.changes, mark));
        Ok(true)
    }

    /// Every change up to this count is durable (see [`LocalStore::changes`]): those a
    /// completed flush behind covered, or everything at the last [`LocalStore::sync`]. A flush
    /// that failed is an error.
    pub fn durable_through(&mut self) -> Result<u64, StorageError> {
        if !self.behind.is_empty() {
            let mark = self.storage.durable_mark()?;
            while let Some(&(changes, m)) = self.behind.front() {
                if m > mark {
                    break;
                }
                self.durable_changes = self.durable_changes.max(changes);
                self.behind.pop_front();
            }
        }
        debug_assert!(self.durable_changes <= self.changes, "durability never runs ahead of the changes");
        Ok(self.durable_changes)
    }

    /// Changes made to this store so far, counted: every part stored or dropped and every
    /// change of the index adds one. A change is durable once [`LocalStore::durable_through`]
    /// reaches its count.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The change count at the last removal of a part, or of a change to a file's whole
    /// record ([`LocalStore::set_file`]): a copy noted complete at an earlier count may have
    /// lost a part or a write and got it back since, in changes a flush up to that count
    /// does not cover.
    pub fn last_drop(&self) -> u64 {
        self.last_drop
    }

    /// Something changed that the next sync or flush must cover.
    fn changed(&mut self) {
        self.unsynced = true;
        self.changes += 1;
    }

    /// Forgets what changed without writing it (the planted bug `index-not-synced`).
    fn forget_changes(&mut self) {
        let appended: Vec<FileName> = std::mem::take(&mut self.appended).into_keys().collect();
        for name in std::mem::take(&mut self.dirty_files).into_iter().chain(appended) {
            match self.files.get(&name) {
                Some(rec) => self.persisted.insert(name, Persisted::of(rec)),
                None => self.persisted.remove(&name),
            };
        }
        self.dirty_parts.clear();
        self.tombstones_kept.clear();
        self.tombstones_forgotten.clear();
    }

    fn compaction_due(&self) -> bool {
        // Blocks are numbered in the order they are written, from the snapshot's first on (a
        // count of the set's range cost every sync a walk of up to `compact_blocks` entries).
        let changes = self.next_seq.saturating_sub(self.snapshot_first) as usize;
        debug_assert!(
            self.index_blocks.range(self.next_seq..).next().is_none(),
            "the index blocks are numbered below the next one"
        );
        changes > self.compact_blocks
            || (self.changes_bytes > COMPACT_MIN_BYTES && self.changes_bytes > self.snapshot_bytes)
    }

    /// Writes what changed since the last index block as one more index block (not durable
    /// until storage syncs). Nothing is forgotten if storage refuses it.
    fn write_changes(&mut self) -> Result<(), StorageError> {
        if self.dirty_files.is_empty()
            && self.appended.is_empty()
            && self.dirty_parts.is_empty()
            && self.tombstones_kept.is_empty()
            && self.tombstones_forgotten.is_empty()
        {
            return Ok(());
        }
        let mut files = Vec::new();
        for name in &self.dirty_files {
            match (self.files.get(name), self.persisted.get(name)) {
                (None, None) => {}
                (None, Some(_)) => files.push(FileChange::Dropped(name.clone())),
                (Some(rec), None) => files.push(FileChange::Whole(self.entry(name, rec))),
                (Some(rec), Some(old)) => match delta(name, old, rec) {
                    Some(Some(change)) => files.push(change),
                    Some(None) => {}
                    None => files.push(FileChange::Whole(self.entry(name, rec))),
                },
            }
        }
        for (name, stamps) in &self.appended {
            debug_assert!(!self.dirty_files.contains(name), "a dirty file's appends are in its delta");
            let (Some(rec), Some(old)) = (self.files.get(name), self.persisted.get(name)) else { continue };
            let pending_added: Vec<WriteMeta> = stamps
                .iter()
                .filter(|s| !old.pending.contains(s))
                .filter_map(|s| rec.pending.get(s).cloned())
                .collect();
            if pending_added.is_empty() {
                continue;
            }
            files.push(FileChange::Delta {
                name: name.clone(),
                create: None,
                generation: rec.generation,
                merged_keep: old.merged.len() as u32,
                merged_tail: Vec::new(),
                pending_added,
                pending_removed: Vec::new(),
            });
        }
        let parts: Vec<PartChange> = self
            .dirty_parts
            .iter()
            .filter(|(n, _, _)| {
                // A whole entry written above already names the file's parts.
                !files.iter().any(|c| matches!(c, FileChange::Whole(e) if e.name == *n))
            })
            .map(|key| match self.parts.get(key) {
                Some(p) => PartChange::Stored(
                    key.0.clone(),
                    PartEntry { stamp: key.1, part: key.2, blob: p.blob, meta: p.meta },
                ),
                None => PartChange::Removed(key.0.clone(), key.1, key.2),
            })
            .collect();
        if files.is_empty()
            && parts.is_empty()
            && self.tombstones_kept.is_empty()
            && self.tombstones_forgotten.is_empty()
        {
            // Touched but unchanged: nothing to write.
            self.dirty_files.clear();
            self.appended.clear();
            return Ok(());
        }
        let body = IndexBody::Changes {
            files,
            parts,
            tombstones_kept: self.tombstones_kept.iter().cloned().collect(),
            tombstones_forgotten: self.tombstones_forgotten.iter().cloned().collect(),
        };
        let block = IndexBlock { seq: self.next_seq, body };
        let bytes =
            index::encode(&block).map_err(|e| StorageError::Io(format!("cannot write the index: {e}")))?;
        self.storage.put(index::blob_of(block.seq), &bytes)?;
        self.index_blocks.insert(block.seq);
        self.next_seq += 1;
        self.changes_bytes += bytes.len() as u64;
        // The index now holds each written change (a dirty file with no change is as it was).
        self.dirty_files.clear();
        self.appended.clear();
        let IndexBody::Changes { files, .. } = &block.body else { unreachable!("built above") };
        for change in files {
            match change {
                FileChange::Whole(e) => {
                    let rec = self.files.get(&e.name).expect("a whole entry names a held file");
                    self.persisted.insert(e.name.clone(), Persisted::of(rec));
                }
                FileChange::Delta { name, .. } => {
                    self.persisted.get_mut(name).expect("a delta is against a persisted file").apply(change)
                }
                FileChange::Dropped(name) => {
                    self.persisted.remove(name);
                }
            }
        }
        debug_assert!(
            files.iter().all(|c| {
                let name = match c {
                    FileChange::Whole(e) => &e.name,
                    FileChange::Delta { name, .. } | FileChange::Dropped(name) => name,
                };
                self.persisted.get(name) == self.files.get(name).map(Persisted::of).as_ref()
            }),
            "the index holds every changed file as it is"
        );
        self.dirty_parts.clear();
        self.tombstones_kept.clear();
        self.tombstones_forgotten.clear();
        Ok(())
    }

    /// Writes the whole index as a new snapshot (blocks of about `SNAPSHOT_PART_BYTES`), after
    /// every earlier index block: recovery starts from it once all its parts are durable.
    fn write_snapshot(&mut self) -> Result<(), StorageError> {
        debug_assert!(
            self.dirty_files.is_empty()
                && self.appended.is_empty()
                && self.dirty_parts.is_empty()
                && self.tombstones_kept.is_empty(),
            "changes are written first"
        );
        let mut groups: Vec<Vec<FileEntry>> = vec![Vec::new()];
        let mut size = 0;
        for (name, rec) in &self.files {
            let entry = self.entry(name, rec);
            let bytes = index::entry_bytes(&entry);
            if size + bytes > index::SNAPSHOT_PART_BYTES && !groups.last().is_some_and(|g| g.is_empty()) {
                groups.push(Vec::new());
                size = 0;
            }
            size += bytes;
            groups.last_mut().expect("one group at least").push(entry);
        }
        let first = self.next_seq;
        let of = groups.len() as u32;
        let mut total = 0u64;
        for (i, files) in groups.into_iter().enumerate() {
            let seq = first + i as u64;
            let tombstones = if i == 0 { self.tombstones.iter().cloned().collect() } else { Vec::new() };
            let block = IndexBlock {
                seq,
                body: IndexBody::Snapshot { first, part: i as u32, of, files, tombstones },
            };
            let bytes = index::encode(&block)
                .map_err(|e| StorageError::Io(format!("cannot write the index: {e}")))?;
            self.storage.put(index::blob_of(seq), &bytes)?;
            self.index_blocks.insert(seq);
            total += bytes.len() as u64;
        }
        self.next_seq = first + of as u64;
        self.snapshot_first = first;
        self.snapshot_bytes = total;
        self.changes_bytes = 0;
        self.changed();
        Ok(())
    }

    /// Removes index blocks older than the newest snapshot. Called only right after a sync that
    /// made the snapshot durable; a removal lost in a crash leaves an older block that recovery
    /// skips.
    fn remove_old_index_blocks(&mut self) {
        let old: Vec<u64> = self.index_blocks.range(..self.snapshot_first).copied().collect();
        let blobs: Vec<BlobId> = old.iter().map(|&seq| index::blob_of(seq)).collect();
        let _ = self.storage.delete_many(&blobs);
        for seq in old {
            self.index_blocks.remove(&seq);
        }
    }

    /// One file's whole index entry.
    fn entry(&self, name: &FileName, rec: &FileRec) -> FileEntry {
        let parts = self
            .parts
            .range((name.clone(), Stamp::MIN, 0)..)
            .take_while(|((n, _, _), _)| n == name)
            .map(|((_, stamp, part), p)| PartEntry { stamp: *stamp, part: *part, blob: p.blob, meta: p.meta })
            .collect();
        FileEntry {
            name: name.clone(),
            create: rec.create.clone(),
            generation: rec.generation,
            merged: rec.merged.clone(),
            pending: rec.pending.values().cloned().collect(),
            parts,
        }
    }

    /// Debug check: the index's view of every file matches the files (after recovery and
    /// after every sync that wrote everything).
    fn check_index(&self) {
        debug_assert!(
            self.files.iter().all(|(n, r)| self.persisted.get(n) == Some(&Persisted::of(r))),
            "the index holds every file as it is"
        );
        debug_assert!(self.next_blob < index::INDEX_BASE, "data blocks stay below the index's ids");
    }

    /// Every change is durable.
    pub fn is_synced(&self) -> bool {
        !self.unsynced && self.durable_changes == self.changes
    }

    /// The storage blocks holding one write's parts (for inspection by tests and the simulator).
    pub fn write_blobs(&self, name: &FileName, stamp: Stamp) -> Option<Vec<BlobId>> {
        let w = self.files.get(name)?.find(&stamp)?;
        (0..w.parts.len() as u32).map(|i| self.parts.get(&(name.clone(), stamp, i)).map(|p| p.blob)).collect()
    }

    /// This node's view of a file. A sealed file's view leaves out the appends its seals do not
    /// keep (`seal.rs`): they stay in the index, but no read, description or digest shows them,
    /// so every copy holding the same writes shows the same file.
    pub fn meta(&self, name: &FileName) -> Option<FileMeta> {
        let rec = self.files.get(name)?;
        let owners = self.owners(rec);
        let kept = |w: &&WriteMeta| owners.as_ref().is_none_or(|o| o.keeps(w));
        let held = self.held_parts(name);
        let incomplete: Vec<Stamp> =
            rec.writes().filter(kept).filter(|w| !held.is_complete(w)).map(|w| w.stamp).collect();
        debug_assert!(
            rec.writes().all(|w| held.is_complete(w) == self.is_complete(name, w)),
            "one walk of the parts says what a range per write would"
        );
        Some(FileMeta {
            name: name.clone(),
            create: rec.create.clone(),
            generation: rec.generation,
            merged: rec.merged.iter().filter(kept).cloned().collect(),
            pending: rec.pending.values().filter(kept).cloned().collect(),
            incomplete,
        })
    }

    /// The digest of this node's copy of `name`: `meta(name)`'s digest, from the memo while the
    /// file and its parts are unchanged, else worked out and remembered.
    pub fn digest(&mut self, name: &FileName) -> Option<FileDigest> {
        if let Some(&digest) = self.digest_memo.get(name) {
            debug_assert_eq!(
                Some(digest),
                self.fresh_digest(name),
                "the memo of {name}'s digest is what its writes and parts make"
            );
            return Some(digest);
        }
        let digest = self.fresh_digest(name)?;
        self.digest_memo.insert(name.clone(), digest);
        Some(digest)
    }

    /// [`LocalStore::meta`], shared: from the memo while the file and its parts are unchanged,
    /// else worked out and remembered.
    pub fn meta_shared(&mut self, name: &FileName) -> Option<Arc<FileMeta>> {
        if let Some((_, meta)) = self.views.iter().find(|(n, _)| n == name) {
            debug_assert_eq!(
                Some(&**meta),
                self.meta(name).as_ref(),
                "the memo of {name}'s view is what its writes and parts make"
            );
            return Some(meta.clone());
        }
        let meta = Arc::new(self.meta(name)?);
        if self.views.len() == VIEWS_REMEMBERED {
            self.views.pop_front();
        }
        self.views.push_back((name.clone(), meta.clone()));
        debug_assert!(self.views.len() <= VIEWS_REMEMBERED, "at most VIEWS_REMEMBERED views are remembered");
        Some(meta)
    }

    /// Changes of any file's record or parts so far, counted: every path that changes a file,
    /// adds or removes one, or stores or drops a part moves it ([`LocalStore::forget_digest_and_view`]).
    /// What is worked out of every file's digest at one count (an inventory) holds until it moves.
    pub fn files_epoch(&self) -> u64 {
        self.files_epoch
    }

    /// `name` or one of its parts changed: its remembered digest and view go.
    fn forget_digest_and_view(&mut self, name: &FileName) {
        self.files_epoch += 1;
        self.digest_memo.remove(name);
        self.views.retain(|(n, _)| n != name);
    }

    /// [`LocalStore::digest`] worked out: one walk of the file's writes without describing it
    /// (no write is cloned).
    fn fresh_digest(&self, name: &FileName) -> Option<FileDigest> {
        let rec = self.files.get(name)?;
        let owners = self.owners(rec);
        let kept = |w: &WriteMeta| owners.as_ref().is_none_or(|o| o.keeps(w));
        let held = self.held_parts(name);
        let digest = FileDigest::of(
            rec.create.as_ref(),
            rec.generation,
            rec.merged.iter().filter(|w| kept(w)),
            rec.pending.values().filter(|w| kept(w)),
            |w| kept(w) && !held.is_complete(w),
        );
        debug_assert_eq!(
            Some(digest),
            self.meta(name).map(|m| m.digest()),
            "the digest of {name} is that of its description"
        );
        Some(digest)
    }

    /// Verifies up to `budget` bytes of stored parts (a part counting as at least
    /// [`SCRUB_PART_MIN_BYTES`]), continuing where the last call stopped, and returns the parts
    /// that failed (they are removed, to be fetched again) and how many parts it verified. Its
    /// cost is in proportion to the budget (and never more than the parts held now): only the
    /// keys it verifies are visited.
    pub fn scrub(&mut self, budget: u64) -> (Vec<(PartKey, PartError)>, usize) {
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
                planned += (rec.meta.len as u64).max(SCRUB_PART_MIN_BYTES);
                todo.push(key.clone());
            }
        }
        debug_assert!(todo.len() <= self.parts.len(), "each part is verified at most once per round");
        let checked = todo.len();
        let mut bad = Vec::new();
        for key in todo {
            match self.read_part(&key.0, key.1, key.2) {
                Err(e @ (PartError::Corrupt | PartError::Lost(_))) => bad.push((key, e)),
                Ok(_) | Err(PartError::Missing) => {}
            }
        }
        (bad, checked)
    }

    /// Bytes stored for a file's complete writes.
    pub fn stored_bytes(&self) -> u64 {
        self.parts.values().map(|p| p.meta.len as u64).sum()
    }
}

/// Syncs until storage reports the sync finished (a background flush answers `InProgress` first).
fn sync_until_done(storage: &mut dyn Storage) -> Result<(), StorageError> {
    loop {
        match storage.sync() {
            Err(StorageError::InProgress) => std::hint::spin_loop(),
            other => return other,
        }
    }
}

/// What changed about a file since the index recorded `old`: `Some(None)` for nothing, `None`
/// when only a whole entry can say it (the create went away).
fn delta(name: &FileName, old: &Persisted, rec: &FileRec) -> Option<Option<FileChange>> {
    let create = match (&rec.create, old.create) {
        (None, Some(_)) => return None,
        (Some(c), old) if Some(c.stamp) != old => Some(c.clone()),
        _ => None,
    };
    let extends = rec.merged.len() >= old.merged.len()
        && rec.merged.iter().zip(&old.merged).all(|(w, s)| w.stamp == *s);
    let merged_keep = if extends { old.merged.len() } else { 0 };
    let merged_tail: Vec<WriteMeta> = rec.merged[merged_keep..].to_vec();
    // Both sides are in stamp order: one pass finds what was added and what was removed.
    let mut pending_added: Vec<WriteMeta> = Vec::new();
    let mut pending_removed: Vec<Stamp> = Vec::new();
    let mut now = rec.pending.iter().peekable();
    let mut was = old.pending.iter().peekable();
    loop {
        match (now.peek(), was.peek()) {
            (Some((s, w)), Some(o)) => match (*s).cmp(o) {
                std::cmp::Ordering::Less => {
                    pending_added.push((*w).clone());
                    now.next();
                }
                std::cmp::Ordering::Greater => {
                    pending_removed.push(**o);
                    was.next();
                }
                std::cmp::Ordering::Equal => {
                    now.next();
                    was.next();
                }
            },
            (Some((_, w)), None) => {
                pending_added.push((*w).clone());
                now.next();
            }
            (None, Some(o)) => {
                pending_removed.push(**o);
                was.next();
            }
            (None, None) => break,
        }
    }
    let unchanged = create.is_none()
        && rec.generation == old.generation
        && extends
        && merged_tail.is_empty()
        && pending_added.is_empty()
        && pending_removed.is_empty();
    if unchanged {
        return Some(None);
    }
    Some(Some(FileChange::Delta {
        name: name.clone(),
        create,
        generation: rec.generation,
        merged_keep: merged_keep as u32,
        merged_tail,
        pending_added,
        pending_removed,
    }))
}

/// Applies one index block to a recovering index.
fn apply(
    files: &mut BTreeMap<FileName, FileRec>,
    parts: &mut BTreeMap<PartKey, PartRec>,
    tombstones: &mut BTreeSet<(FileName, Stamp)>,
    body: IndexBody,
) {
    let put_whole =
        |files: &mut BTreeMap<FileName, FileRec>, parts: &mut BTreeMap<PartKey, PartRec>, e: FileEntry| {
            drop_parts(parts, &e.name);
            for p in e.parts {
                parts.insert((e.name.clone(), p.stamp, p.part), PartRec::new(p.blob, p.meta));
            }
            let rec = FileRec {
                create: e.create,
                generation: e.generation,
                merged: e.merged,
                pending: e.pending.into_iter().map(|w| (w.stamp, w)).collect(),
            };
            files.insert(e.name, rec);
        };
    match body {
        IndexBody::Snapshot { files: entries, tombstones: kept, .. } => {
            for e in entries {
                put_whole(files, parts, e);
            }
            tombstones.extend(kept);
        }
        IndexBody::Changes { files: changes, parts: part_changes, tombstones_kept, tombstones_forgotten } => {
            for t in tombstones_forgotten {
                tombstones.remove(&t);
            }
            tombstones.extend(tombstones_kept);
            for change in changes {
                match change {
                    FileChange::Whole(e) => put_whole(files, parts, e),
                    FileChange::Delta {
                        name,
                        create,
                        generation,
                        merged_keep,
                        merged_tail,
                        pending_added,
                        pending_removed,
                    } => {
                        let rec = files.entry(name).or_default();
                        if create.is_some() {
                            rec.create = create;
                        }
                        rec.generation = generation;
                        rec.merged.truncate(merged_keep as usize);
                        rec.merged.extend(merged_tail);
                        for s in pending_removed {
                            rec.pending.remove(&s);
                        }
                        for w in pending_added {
                            rec.pending.insert(w.stamp, w);
                        }
                    }
                    FileChange::Dropped(name) => {
                        files.remove(&name);
                        drop_parts(parts, &name);
                    }
                }
            }
            for change in part_changes {
                match change {
                    PartChange::Stored(name, p) => {
                        parts.insert((name, p.stamp, p.part), PartRec::new(p.blob, p.meta));
                    }
                    PartChange::Removed(name, stamp, part) => {
                        parts.remove(&(name, stamp, part));
                    }
                }
            }
        }
    }
}

fn drop_parts(parts: &mut BTreeMap<PartKey, PartRec>, name: &FileName) {
    let keys: Vec<PartKey> = parts
        .range((name.clone(), Stamp::MIN, 0)..)
        .take_while(|((n, _, _), _)| n == name)
        .map(|(k, _)| k.clone())
        .collect();
    for k in keys {
        parts.remove(&k);
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
            let theirs: BTreeSet<Stamp> = theirs.iter().copied().collect();
            leftovers.extend(rec.merged.iter().filter(|w| !theirs.contains(&w.stamp)).cloned());
            rec.merged = peer.merged.clone();
            rec.generation = peer.generation;
        } else {
            let mine: BTreeSet<Stamp> = mine.iter().copied().collect();
            leftovers.extend(peer.merged.iter().filter(|w| !mine.contains(&w.stamp)).cloned());
        }
    }
    for w in leftovers.into_iter().chain(peer.pending.iter().cloned()) {
        rec.pending.entry(w.stamp).or_insert(w);
    }
    // Looked up in a set: compared one by one, the cost grew with pending times merged appends.
    let merged: BTreeSet<Stamp> = rec.merged.iter().map(|w| w.stamp).collect();
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
    fn the_remembered_owner_chain_follows_seals_and_outlives_appends() {
        use super::super::types::Seal;
        let client = |port: u16| MemberId::new(format!("10.0.0.{port}:7000").parse().unwrap(), 1);
        let w = |who: u16, seq: u64, kind: WriteKind| WriteMeta {
            stamp: Stamp { ts: seq, client: client(who), seq },
            kind,
            parts: Vec::new(),
        };
        let seal = |who: u16, seq: u64, term: u64, prev: u16, upto: u64| {
            w(who, seq, WriteKind::Seal(Seal { term, prev: client(prev), upto }))
        };
        let name = FileName::new("f").unwrap();
        let mut store = LocalStore::new(Box::new(MemStorage::default())).unwrap();
        store.file_mut(&name).create = Some(w(1, 1, WriteKind::Create));
        assert_eq!(store.owners_of(&name), None, "no seal: no chain");
        store.add_pending(&name, w(1, 2, WriteKind::Append));
        assert_eq!(store.owners_of(&name), None);
        // The fence of term 1: the chain is worked out again, and an append keeps it.
        store.add_pending(&name, seal(2, 3, 1, 1, u64::MAX));
        let fenced = store.owners_of(&name).expect("sealed");
        assert_eq!((fenced.owner(), fenced.term()), (client(2), 1));
        store.add_pending(&name, w(2, 4, WriteKind::Append));
        assert_eq!(store.owners_of(&name), Some(fenced.clone()));
        // The bound on the creator, added the same way, changes the chain it remembers.
        store.add_pending(&name, seal(2, 5, 1, 1, 2));
        let bounded = store.owners_of(&name).expect("sealed");
        assert_ne!(bounded, fenced, "the bound is part of the chain");
        assert_eq!(Some(bounded), Owners::of(store.file(&name).unwrap().writes()));
        // So does any other change to the file.
        let mut rec = store.file(&name).unwrap().clone();
        rec.pending.retain(|_, w| !matches!(w.kind, WriteKind::Seal(_)));
        store.set_file(&name, rec);
        assert_eq!(store.owners_of(&name), None);
    }

    #[test]
    fn a_remembered_digest_and_view_follow_every_change_to_the_file_and_its_parts() {
        let (name, other) = (FileName::new("f").unwrap(), FileName::new("g").unwrap());
        let mut store = LocalStore::new(Box::new(MemStorage::default())).unwrap();
        let data = |ts: u64| format!("w{ts}").into_bytes();
        for n in [&name, &other] {
            store.file_mut(n).create = Some(write(1, WriteKind::Create));
            store.put_part(n, stamp(1, 1), 0, PartMeta::of(b"w1"), b"w1").unwrap();
        }
        let mut last = store.digest(&name);
        let mut last_view = store.meta_shared(&name);
        let untouched = (store.digest(&other), store.meta_shared(&other));
        let mut epoch = store.files_epoch();
        // Each step changes the digest and the view, and those remembered are the ones worked
        // out afresh; each moves the files' epoch too (what an inventory is remembered by).
        let mut step = |store: &mut LocalStore, what: &str| {
            assert!(store.files_epoch() > epoch, "{what} moves the files' epoch");
            epoch = store.files_epoch();
            let digest = store.digest(&name);
            assert_eq!(digest, store.fresh_digest(&name), "after {what}");
            assert_ne!(digest, last, "{what} changes the digest");
            last = digest;
            let view = store.meta_shared(&name);
            assert_eq!(view.as_deref(), store.meta(&name).as_ref(), "after {what}");
            assert_ne!(view, last_view, "{what} changes the view");
            last_view = view;
        };
        // Synced first, so that the append is recorded as an append alone (the path that does
        // not go through `file_mut`).
        store.sync().unwrap();
        store.add_pending(&name, write(2, WriteKind::Append));
        assert!(store.appended.contains_key(&name), "recorded as an append alone");
        step(&mut store, "an append arriving (its part not yet here)");
        store.put_part(&name, stamp(2, 2), 0, PartMeta::of(&data(2)), &data(2)).unwrap();
        step(&mut store, "its part stored");
        store.remove_part(&(name.clone(), stamp(2, 2), 0));
        step(&mut store, "its part lost");
        let mut rec = store.file(&name).unwrap().clone();
        let append = rec.pending.pop_first().expect("the append").1;
        rec.merged.push(append);
        store.set_file(&name, rec);
        step(&mut store, "a merge");
        store.file_mut(&name).generation += 1;
        step(&mut store, "a change through `file_mut`");
        let before_drop = store.files_epoch();
        store.drop_file(&name);
        assert!(store.files_epoch() > before_drop, "dropping a file moves the files' epoch");
        assert_eq!((store.digest(&name), store.meta_shared(&name)), (None, None), "a dropped file");
        assert_eq!(
            (store.digest(&other), store.meta_shared(&other)),
            untouched,
            "another file is left as it was"
        );
    }

    /// Whether a write is held follows every change to the file's merged appends, the lookup
    /// in the memo agreeing with a scan of the record (asserted at every lookup in debug builds).
    #[test]
    fn whether_a_merged_append_is_held_follows_every_change_to_the_merged_list() {
        let name = FileName::new("f").unwrap();
        let mut store = LocalStore::new(Box::new(MemStorage::default())).unwrap();
        store.file_mut(&name).create = Some(write(1, WriteKind::Create));
        let held = |store: &mut LocalStore, ts: u64| store.holds_write(&name, &stamp(ts, ts));
        assert!(held(&mut store, 1) && !held(&mut store, 2), "the create alone");
        store.add_pending(&name, write(2, WriteKind::Append));
        store.add_pending(&name, write(3, WriteKind::Append));
        assert!(held(&mut store, 2) && held(&mut store, 3), "pending appends");
        // Merged through `set_file`, with enough earlier merged appends that the memo is used.
        let mut rec = store.file(&name).unwrap().clone();
        rec.merged.extend((100..100 + MERGED_SCAN_MAX as u64).map(|ts| write(ts, WriteKind::Append)));
        rec.merged.push(rec.pending.remove(&stamp(2, 2)).unwrap());
        store.set_file(&name, rec);
        assert!(held(&mut store, 100));
        assert!(store.merged_memo.contains_key(&name), "a long merged list is remembered");
        assert!(held(&mut store, 2) && held(&mut store, 3) && !held(&mut store, 4));
        // A pending append added keeps the memo; it is held as pending.
        store.add_pending(&name, write(4, WriteKind::Append));
        assert!(held(&mut store, 4));
        // Merged through `file_mut`.
        let rec = store.file_mut(&name);
        let w = rec.pending.remove(&stamp(3, 3)).unwrap();
        rec.merged.push(w);
        assert!(held(&mut store, 3), "merged through file_mut");
        // Dropped from the merged list.
        let mut rec = store.file(&name).unwrap().clone();
        rec.merged.retain(|w| w.stamp != stamp(2, 2));
        store.set_file(&name, rec);
        assert!(!held(&mut store, 2) && held(&mut store, 3), "a merged append dropped");
        store.forget_file(&name);
        assert!(!held(&mut store, 3) && !held(&mut store, 1), "a forgotten file holds nothing");
    }

    /// The size of a file's description, remembered across appends, is what its writes take
    /// after every change: an append, a pending write replaced, a merge through `file_mut`, a
    /// record replaced through `set_file`, and the file forgotten.
    #[test]
    fn a_remembered_description_size_follows_every_change_to_the_file() {
        let name = FileName::new("f").unwrap();
        let mut store = LocalStore::new(Box::new(MemStorage::default())).unwrap();
        let check = |store: &mut LocalStore, what: &str| {
            let sum: u64 =
                store.file(&name).map_or(0, |rec| rec.writes().map(WriteMeta::described_bytes).sum());
            assert_eq!(store.meta_bytes(&name), sum, "{what}");
            assert_eq!(
                store.meta_bytes_memo.contains_key(&name),
                store.file(&name).is_some(),
                "{what}: remembered"
            );
        };
        check(&mut store, "no file");
        store.file_mut(&name).create = Some(write(1, WriteKind::Create));
        check(&mut store, "the create");
        for ts in 2..6 {
            store.add_pending(&name, write(ts, WriteKind::Append));
            check(&mut store, "an append");
        }
        // A pending write replaced by one of its stamp describing more parts.
        let longer = WriteMeta::describe(stamp(3, 3), WriteKind::Append, b"a longer write", 4);
        assert!(longer.described_bytes() > write(3, WriteKind::Append).described_bytes());
        store.add_pending(&name, longer);
        check(&mut store, "a pending write replaced");
        let rec = store.file_mut(&name);
        let w = rec.pending.remove(&stamp(2, 2)).unwrap();
        rec.merged.push(w);
        rec.merged.push(write(50, WriteKind::Append));
        check(&mut store, "merged through file_mut, one append more");
        let mut rec = store.file(&name).unwrap().clone();
        rec.pending.clear();
        store.set_file(&name, rec);
        check(&mut store, "pending appends dropped through set_file");
        store.forget_file(&name);
        check(&mut store, "forgotten");
    }

    /// However many files are read, at most `VIEWS_REMEMBERED` views are remembered, and each
    /// view handed out is the file's.
    #[test]
    fn at_most_a_bounded_number_of_views_are_remembered() {
        let mut store = LocalStore::new(Box::new(MemStorage::default())).unwrap();
        let names: Vec<FileName> =
            (0..VIEWS_REMEMBERED + 5).map(|i| FileName::new(&format!("f{i}")).unwrap()).collect();
        for name in &names {
            store.file_mut(name).create = Some(write(1, WriteKind::Create));
        }
        for _ in 0..2 {
            for name in &names {
                let view = store.meta_shared(name);
                assert_eq!(view.as_deref(), store.meta(name).as_ref());
                assert!(store.views.len() <= VIEWS_REMEMBERED, "{} views remembered", store.views.len());
            }
        }
        assert_eq!(store.views.len(), VIEWS_REMEMBERED);
    }

    /// Storage whose flushes behind complete only when the test says so.
    struct Gated {
        inner: MemStorage,
        written: u64,
        released: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl Storage for Gated {
        fn put(&mut self, blob: BlobId, data: &[u8]) -> Result<(), StorageError> {
            self.written += 1;
            self.inner.put(blob, data)
        }
        fn read(&mut self, blob: BlobId) -> Result<Vec<u8>, StorageError> {
            self.inner.read(blob)
        }
        fn delete(&mut self, blob: BlobId) -> Result<(), StorageError> {
            self.written += 1;
            self.inner.delete(blob)
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            self.released.store(self.written, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        fn flush_behind(&mut self) -> Result<u64, StorageError> {
            Ok(self.written)
        }
        fn durable_mark(&mut self) -> Result<u64, StorageError> {
            Ok(self.released.load(std::sync::atomic::Ordering::SeqCst))
        }
        fn list(&mut self) -> Result<Vec<BlobId>, StorageError> {
            self.inner.list()
        }
        fn wipe(&mut self) -> Result<(), StorageError> {
            self.inner.wipe()
        }
    }

    #[test]
    fn a_change_is_durable_only_once_a_flush_begun_after_it_completes() {
        use std::sync::atomic::Ordering;
        let released = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let gated = Gated { inner: MemStorage::default(), written: 0, released: released.clone() };
        let mut store = LocalStore::new(Box::new(gated)).unwrap();
        let name = FileName::new("f").unwrap();
        assert!(store.is_synced());
        store.file_mut(&name).create = Some(write(1, WriteKind::Create));
        store.touch(&name);
        let first = store.changes();
        assert!(store.flush_behind().unwrap(), "a flush begins");
        let first_mark = store.behind.back().unwrap().1;
        assert!(store.durable_through().unwrap() < first, "not durable before the flush ends");
        assert!(!store.is_synced());
        // A change while the first flush runs needs a flush of its own.
        store.add_pending(&name, write(2, WriteKind::Append));
        let second = store.changes();
        assert!(second > first);
        assert!(store.flush_behind().unwrap());
        assert!(!store.flush_behind().unwrap(), "nothing new: no other flush");
        released.store(first_mark, Ordering::SeqCst);
        assert_eq!(store.durable_through().unwrap(), first, "the first flush covers only the first");
        released.store(u64::MAX, Ordering::SeqCst);
        assert_eq!(store.durable_through().unwrap(), second);
        assert!(store.is_synced());
        // A file's record replaced (parts may leave and come back): noted as a drop.
        assert!(store.last_drop() < store.changes());
        let rec = store.file(&name).unwrap().clone();
        store.set_file(&name, rec);
        assert_eq!(store.last_drop(), store.changes());
        // A sync covers everything at once, a flush behind that never ended included.
        store.add_pending(&name, write(3, WriteKind::Append));
        released.store(0, Ordering::SeqCst);
        store.flush_behind().unwrap();
        store.sync().unwrap();
        assert_eq!(store.durable_through().unwrap(), store.changes());
        assert!(store.is_synced());
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
    fn one_walk_of_a_files_parts_says_which_writes_are_complete() {
        let mut store = LocalStore::new(Box::new(MemStorage::default())).unwrap();
        let (name, other) = (FileName::new("f").unwrap(), FileName::new("g").unwrap());
        let bytes = [b'x'; 300];
        let create = WriteMeta::describe(stamp(1, 1), WriteKind::Create, &bytes, 100);
        let whole = WriteMeta::describe(stamp(2, 1), WriteKind::Append, &bytes, 100);
        let gap = WriteMeta::describe(stamp(3, 1), WriteKind::Append, &bytes, 100);
        let none = WriteMeta::describe(stamp(4, 1), WriteKind::Append, &bytes, 100);
        let empty = WriteMeta::describe(stamp(5, 1), WriteKind::Append, b"", 100);
        assert_eq!((whole.parts.len(), empty.parts.len()), (3, 0));
        store.file_mut(&name).create = Some(create.clone());
        for w in [&whole, &gap, &none, &empty] {
            store.add_pending(&name, w.clone());
        }
        // The same stamp under another name, complete, must not count for `f`.
        store.file_mut(&other).create = Some(none.clone());
        let put = |store: &mut LocalStore, n: &FileName, w: &WriteMeta, part: u32| {
            let at = part as usize * 100;
            assert!(store.put_part(n, w.stamp, part, w.parts[part as usize], &bytes[at..at + 100]).unwrap());
        };
        for part in 0..3 {
            put(&mut store, &name, &create, part);
            put(&mut store, &name, &whole, part);
            put(&mut store, &other, &none, part);
        }
        put(&mut store, &name, &gap, 0);
        put(&mut store, &name, &gap, 2);
        let held = store.held_parts(&name);
        for (w, complete) in [(&create, true), (&whole, true), (&gap, false), (&none, false), (&empty, true)]
        {
            assert_eq!(held.is_complete(w), complete, "write {:?}", w.stamp);
            assert_eq!(store.is_complete(&name, w), complete, "write {:?}", w.stamp);
        }
        // A part numbered past a write's last never stands in for a missing one.
        let two = WriteMeta { parts: gap.parts[..2].to_vec(), ..gap.clone() };
        assert!(!held.is_complete(&two), "parts 0 and 2 are not parts 0 and 1");
        let incomplete = store.meta(&name).unwrap().incomplete;
        assert_eq!(incomplete, vec![gap.stamp, none.stamp]);
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
        let ten = 10 * SCRUB_PART_MIN_BYTES;
        assert_eq!(store.scrub(ten).1, 10, "a budget of 10 small parts visits 10 parts of 1000");
        assert_eq!(store.scrub(ten).1, 10, "and the next round the next 10");
        assert_eq!(store.scrub(1000 * 100).1, 2, "a small part costs the budget more than its bytes");
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

    /// A large part is hashed once for all the frames that send it: the hash it arrived with,
    /// or the one the first read's frame computed, comes with every later read of it; a small
    /// part keeps none, and a corrupt part's bytes are never handed out with it.
    #[test]
    fn a_large_part_keeps_the_hash_it_was_sent_by() {
        let mut store = LocalStore::new(Box::new(MemStorage::default())).unwrap();
        let name = FileName::new("f").unwrap();
        let big: Vec<u8> = (0..BULK_APART_BYTES * 3).map(|i| (i % 249) as u8).collect();
        let w = WriteMeta::describe(stamp(1, 1), WriteKind::Create, &big, BULK_APART_BYTES);
        store.file_mut(&name).create = Some(w.clone());
        let part = |i: usize| Bulk::from(&big[i * BULK_APART_BYTES..(i + 1) * BULK_APART_BYTES]);
        let hash = |i: usize| part(i).digest();

        // Arrived with its hash known (a frame checked through it).
        let known = part(0).with_digest(BulkDigest::known(hash(0)));
        assert!(store.put_bulk_part((&name, w.stamp, 0), w.parts[0], &known).unwrap());
        let read = store.read_bulk_part(&name, w.stamp, 0).unwrap();
        assert!(read.digest_known());
        assert_eq!((&read[..], read.digest()), (&part(0)[..], hash(0)));

        // Arrived without it: the first frame to send it computes it, for every read after.
        assert!(store.put_part(&name, w.stamp, 1, w.parts[1], &part(1)).unwrap());
        let first = store.read_bulk_part(&name, w.stamp, 1).unwrap();
        assert!(!first.digest_known());
        assert_eq!(first.digest(), hash(1));
        assert!(store.read_bulk_part(&name, w.stamp, 1).unwrap().digest_known());

        // Corrupt behind the store's back: refused, never handed out with the hash.
        assert!(store.put_bulk_part((&name, w.stamp, 2), w.parts[2], &part(2)).unwrap());
        assert_eq!(store.read_bulk_part(&name, w.stamp, 2).unwrap().digest(), hash(2));
        let blob = store.write_blobs(&name, w.stamp).unwrap()[2];
        store.storage.put(blob, &part(1)).unwrap();
        assert_eq!(store.read_bulk_part(&name, w.stamp, 2), Err(PartError::Corrupt));

        let small = WriteMeta::describe(stamp(2, 1), WriteKind::Append, b"small", 1024);
        store.add_pending(&name, small.clone());
        assert!(store
            .put_bulk_part((&name, small.stamp, 0), small.parts[0], &Bulk::from(&b"small"[..]))
            .unwrap());
        let read = store.read_bulk_part(&name, small.stamp, 0).unwrap();
        let _ = read.digest();
        assert!(
            !store.read_bulk_part(&name, small.stamp, 0).unwrap().digest_known(),
            "no slot for a small part"
        );
    }

    /// Storage that keeps, like a disk, what a crash would leave apart from what the process
    /// sees; clones share it.
    /// What the process sees, and what a crash would leave.
    type Blocks = BTreeMap<BlobId, Vec<u8>>;

    #[derive(Clone, Default)]
    struct CrashDisk(
        std::sync::Arc<std::sync::Mutex<(Blocks, Blocks)>>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    );

    impl CrashDisk {
        /// Every put fails as on a full disk while `full`.
        fn fill(&self, full: bool) {
            self.1.store(full, std::sync::atomic::Ordering::SeqCst);
        }
        fn crash(&self) {
            let mut d = self.0.lock().unwrap();
            d.0 = d.1.clone();
        }
        fn remove(&self, blob: BlobId) {
            let mut d = self.0.lock().unwrap();
            d.0.remove(&blob);
            d.1.remove(&blob);
        }
        fn blocks(&self) -> BTreeSet<BlobId> {
            self.0.lock().unwrap().0.keys().copied().collect()
        }
    }

    impl Storage for CrashDisk {
        fn put(&mut self, blob: BlobId, data: &[u8]) -> Result<(), StorageError> {
            if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StorageError::Io(format!("cannot write block {blob}: No space left on device")));
            }
            self.0.lock().unwrap().0.insert(blob, data.to_vec());
            Ok(())
        }
        fn read(&mut self, blob: BlobId) -> Result<Vec<u8>, StorageError> {
            self.0.lock().unwrap().0.get(&blob).cloned().ok_or(StorageError::Missing(blob))
        }
        fn delete(&mut self, blob: BlobId) -> Result<(), StorageError> {
            self.0.lock().unwrap().0.remove(&blob);
            Ok(())
        }
        fn sync(&mut self) -> Result<(), StorageError> {
            let mut d = self.0.lock().unwrap();
            d.1 = d.0.clone();
            Ok(())
        }
        fn list(&mut self) -> Result<Vec<BlobId>, StorageError> {
            Ok(self.0.lock().unwrap().0.keys().copied().collect())
        }
        fn wipe(&mut self) -> Result<(), StorageError> {
            self.0.lock().unwrap().0.clear();
            Ok(())
        }
    }

    type Contents = (BTreeMap<FileName, FileRec>, BTreeMap<PartKey, Vec<u8>>, BTreeSet<(FileName, Stamp)>);

    /// Everything the index says, with each part's bytes.
    fn contents(store: &mut LocalStore) -> Contents {
        let keys: Vec<PartKey> = store.parts.keys().cloned().collect();
        let parts = keys.into_iter().map(|k| (k.clone(), store.read_part(&k.0, k.1, k.2).unwrap())).collect();
        (store.files.clone(), parts, store.tombstones.clone())
    }

    fn put_write(store: &mut LocalStore, name: &FileName, w: &WriteMeta, data: &[u8]) {
        for (i, chunk) in data.chunks(4).enumerate() {
            assert!(store.put_part(name, w.stamp, i as u32, w.parts[i], chunk).unwrap());
        }
    }

    /// Creates file `name` holding `data` in 4-byte parts (not synced); returns its create.
    fn create_file(store: &mut LocalStore, name: &FileName, stamp: Stamp, data: &[u8]) -> WriteMeta {
        let w = WriteMeta::describe(stamp, WriteKind::Create, data, 4);
        store.file_mut(name).create = Some(w.clone());
        put_write(store, name, &w, data);
        w
    }

    #[test]
    fn a_restart_recovers_what_the_last_sync_covered_and_nothing_after_it() {
        let disk = CrashDisk::default();
        let (mut store, rec) = LocalStore::open(Box::new(disk.clone())).unwrap();
        assert_eq!(rec, Recovery::default(), "an empty disk recovers nothing");
        let name = FileName::new("keep.txt").unwrap();
        let create = WriteMeta::describe(stamp(1, 1), WriteKind::Create, b"hello world\n", 4);
        store.file_mut(&name).create = Some(create.clone());
        put_write(&mut store, &name, &create, b"hello world\n");
        let append = WriteMeta::describe(stamp(2, 2), WriteKind::Append, b"more\n", 4);
        store.file_mut(&name).pending.insert(append.stamp, append.clone());
        put_write(&mut store, &name, &append, b"more\n");
        store.sync().unwrap();
        let synced = contents(&mut store);
        // Not synced: a merge and a second file.
        let moved = store.file_mut(&name).pending.remove(&append.stamp).unwrap();
        store.file_mut(&name).merged.push(moved);
        let other = FileName::new("lost.txt").unwrap();
        let w = WriteMeta::describe(stamp(3, 3), WriteKind::Create, b"gone", 4);
        store.file_mut(&other).create = Some(w.clone());
        put_write(&mut store, &other, &w, b"gone");
        drop(store);
        disk.crash();
        let (mut back, rec) = LocalStore::open(Box::new(disk.clone())).unwrap();
        assert_eq!(contents(&mut back), synced);
        assert_eq!((rec.files, rec.parts, rec.lost_parts), (1, 5, 0));
        assert_eq!(disk.blocks(), back.blobs().collect(), "storage holds exactly what the store uses");
    }

    /// Compaction follows what changed, not how often the store synced: 2,000 syncs of one small
    /// append each write no snapshot (their change blocks are far under the 1 MiB the bytes rule
    /// asks for), and a restart still recovers every one of them; past the bound on change
    /// blocks, the index is compacted and the blocks before the snapshot removed.
    #[test]
    fn the_index_is_compacted_by_the_bytes_that_changed_not_by_the_number_of_syncs() {
        let disk = CrashDisk::default();
        let mut store = LocalStore::open(Box::new(disk.clone())).unwrap().0;
        let name = FileName::new("log.txt").unwrap();
        create_file(&mut store, &name, stamp(1, 1), b"head\n");
        store.sync().unwrap();
        let first = store.snapshot_first;
        for i in 0..2_000u64 {
            let w = WriteMeta::describe(stamp(10 + i, 10 + i), WriteKind::Append, b"abc\n", 4);
            store.file_mut(&name).pending.insert(w.stamp, w.clone());
            put_write(&mut store, &name, &w, b"abc\n");
            store.sync().unwrap();
        }
        assert_eq!(store.snapshot_first, first, "no snapshot: the changes are small");
        assert!(store.changes_bytes < COMPACT_MIN_BYTES);
        let synced = contents(&mut store);
        drop(store);
        disk.crash();
        let (mut back, rec) = LocalStore::open(Box::new(disk.clone())).unwrap();
        assert_eq!(contents(&mut back), synced);
        assert!(rec.index_blocks > 2_000, "recovered from the change blocks: {}", rec.index_blocks);
        // The bound on change blocks still compacts.
        back.compact_blocks = 8;
        for i in 0..10u64 {
            let w = WriteMeta::describe(stamp(5_000 + i, 5_000 + i), WriteKind::Append, b"x\n", 4);
            back.file_mut(&name).pending.insert(w.stamp, w.clone());
            put_write(&mut back, &name, &w, b"x\n");
            back.sync().unwrap();
        }
        assert!(back.next_seq - back.snapshot_first <= 8, "compacted past the bound");
        assert_eq!(disk.blocks(), back.blobs().collect(), "the blocks before the snapshot are removed");
    }

    #[test]
    fn a_lost_or_corrupt_block_is_dropped_from_the_index_at_start() {
        let disk = CrashDisk::default();
        let mut store = LocalStore::open(Box::new(disk.clone())).unwrap().0;
        let name = FileName::new("f").unwrap();
        let w = create_file(&mut store, &name, stamp(1, 1), b"aaaabbbbcccc");
        store.sync().unwrap();
        let blobs = store.write_blobs(&name, w.stamp).unwrap();
        drop(store);
        disk.remove(blobs[0]);
        disk.0.lock().unwrap().0.insert(blobs[1], b"xxxx".to_vec());
        let (back, rec) = LocalStore::open(Box::new(disk.clone())).unwrap();
        assert_eq!(rec.lost_parts, 2);
        assert!(
            back.has_part(&name, w.stamp, 2)
                && !back.has_part(&name, w.stamp, 0)
                && !back.has_part(&name, w.stamp, 1)
        );
        assert!(!back.is_complete(&name, &w), "the copy is incomplete until the parts are fetched again");
        assert_eq!(disk.blocks(), back.blobs().collect());
    }

    #[test]
    fn a_block_lost_while_running_is_dropped_when_read() {
        let disk = CrashDisk::default();
        let mut store = LocalStore::open(Box::new(disk.clone())).unwrap().0;
        let name = FileName::new("f").unwrap();
        let w = create_file(&mut store, &name, stamp(1, 1), b"aaaa");
        store.sync().unwrap();
        disk.remove(store.write_blobs(&name, w.stamp).unwrap()[0]);
        assert!(matches!(store.read_part(&name, w.stamp, 0), Err(PartError::Lost(StorageError::Missing(_)))));
        assert!(!store.has_part(&name, w.stamp, 0), "no longer claimed: it is fetched again");
    }

    /// A write found complete stays so without a walk of the index only until a part leaves the
    /// store: a part lost afterwards (of this write or, conservatively, any other) makes
    /// `still_complete` look again, and a write noted complete before the loss is seen to lack it.
    #[test]
    fn a_write_noted_complete_is_looked_at_again_once_a_part_has_left() {
        let disk = CrashDisk::default();
        let mut store = LocalStore::open(Box::new(disk.clone())).unwrap().0;
        let name = FileName::new("f").unwrap();
        let w = create_file(&mut store, &name, stamp(1, 1), b"aaaabbbb");
        let at = store.changes();
        let noted = Some(at);
        assert!(store.still_complete(&name, &w, noted));
        assert!(store.last_drop() < store.changes(), "nothing dropped yet: the index is not walked");
        disk.remove(store.write_blobs(&name, w.stamp).unwrap()[1]);
        assert!(store.read_part(&name, w.stamp, 1).is_err(), "the loss is found on a read");
        assert!(store.last_drop() >= at);
        assert!(!store.still_complete(&name, &w, noted), "the lost part is seen");
        assert!(!store.still_complete(&name, &w, None));
    }

    #[test]
    fn a_damaged_synced_index_block_is_reported() {
        let disk = CrashDisk::default();
        let mut store = LocalStore::open(Box::new(disk.clone())).unwrap().0;
        for i in 0..3 {
            let name = FileName::new(&format!("f{i}")).unwrap();
            create_file(&mut store, &name, stamp(i, i), b"aaaa");
            store.sync().unwrap();
        }
        drop(store);
        let middle = index::blob_of(disk.blocks().iter().filter_map(|b| index::seq_of(*b)).nth(2).unwrap());
        disk.0.lock().unwrap().0.get_mut(&middle).unwrap()[9] ^= 1;
        let (mut back, rec) = LocalStore::open(Box::new(disk.clone())).unwrap();
        assert!(rec.index_damage.as_deref().is_some_and(|d| d.contains("checksum")), "{rec:?}");
        assert_eq!(back.files().len(), 1, "the index stops at the damage; the rest is fetched again");
        assert_eq!(disk.blocks(), back.blobs().collect());
        // What the node writes next is recovered after the next crash: the index goes on
        // right after what it recovered, never behind a gap.
        let name = FileName::new("after").unwrap();
        create_file(&mut back, &name, stamp(9, 9), b"bbbb");
        back.sync().unwrap();
        let synced = contents(&mut back);
        drop(back);
        disk.crash();
        let (mut again, rec) = LocalStore::open(Box::new(disk.clone())).unwrap();
        assert_eq!(rec.index_damage, None);
        assert_eq!(contents(&mut again), synced);
    }

    #[test]
    fn a_node_whose_disk_is_full_starts_on_the_index_it_has() {
        let disk = CrashDisk::default();
        let mut store = LocalStore::open(Box::new(disk.clone())).unwrap().0;
        let name = FileName::new("f").unwrap();
        let w = create_file(&mut store, &name, stamp(1, 1), b"aaaabbbb");
        store.sync().unwrap();
        let blobs = store.write_blobs(&name, w.stamp).unwrap();
        drop(store);
        disk.remove(blobs[1]);
        disk.fill(true);
        let (mut back, rec) = LocalStore::open(Box::new(disk.clone())).unwrap();
        assert!(rec.snapshot_error.as_deref().is_some_and(|e| e.contains("No space")), "{rec:?}");
        assert_eq!((rec.files, rec.lost_parts), (1, 1));
        assert!(back.read_part(&name, w.stamp, 0).is_ok(), "still readable");
        assert!(back.sync().is_err(), "what changed cannot be written yet");
        disk.fill(false);
        back.sync().unwrap();
        let synced = contents(&mut back);
        drop(back);
        disk.crash();
        let (mut again, rec) = LocalStore::open(Box::new(disk.clone())).unwrap();
        assert_eq!((rec.lost_parts, rec.snapshot_error), (0, None), "the lost part was recorded as gone");
        assert_eq!(contents(&mut again), synced);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Create(u8),
        Append(u8, u8),
        Merge(u8),
        Reorder(u8),
        Drop(u8),
        Tombstone(u8),
        ForgetTombstone(u8),
        Sync,
        Crash,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..4).prop_map(Op::Create),
            (0u8..4, 1u8..12).prop_map(|(f, n)| Op::Append(f, n)),
            (0u8..4).prop_map(Op::Merge),
            (0u8..4).prop_map(Op::Reorder),
            (0u8..4).prop_map(Op::Drop),
            (0u8..4).prop_map(Op::Tombstone),
            (0u8..4).prop_map(Op::ForgetTombstone),
            Just(Op::Sync),
            Just(Op::Sync),
            Just(Op::Crash),
        ]
    }

    proptest::proptest! {
        /// Any mix of writes, merges, reorders, drops, syncs and crashes: each restart recovers
        /// exactly what the last sync covered, with the index compacted often along the way.
        #[test]
        fn recovery_gives_the_synced_store(ops in proptest::collection::vec(op(), 1..80)) {
            let disk = CrashDisk::default();
            let mut store = LocalStore::open(Box::new(disk.clone())).unwrap().0;
            store.compact_blocks = 3;
            let mut synced = contents(&mut store);
            let mut ts = 10;
            for op in ops {
                ts += 1;
                let name = |f: u8| FileName::new(&format!("file{f}")).unwrap();
                match op {
                    Op::Create(f) if store.file(&name(f)).is_none() => {
                        let w = WriteMeta::describe(stamp(ts, ts), WriteKind::Create, b"head\n", 4);
                        store.file_mut(&name(f)).create = Some(w.clone());
                        put_write(&mut store, &name(f), &w, b"head\n");
                    }
                    Op::Append(f, n) if store.file(&name(f)).is_some() => {
                        let data = vec![b'a' + n; n as usize];
                        let w = WriteMeta::describe(stamp(ts, ts), WriteKind::Append, &data, 4);
                        store.file_mut(&name(f)).pending.insert(w.stamp, w.clone());
                        put_write(&mut store, &name(f), &w, &data);
                    }
                    Op::Merge(f) if store.file(&name(f)).is_some() => {
                        let rec = store.file_mut(&name(f));
                        let pending = std::mem::take(&mut rec.pending);
                        rec.merged.extend(pending.into_values());
                    }
                    Op::Reorder(f) if store.file(&name(f)).is_some_and(|r| r.merged.len() > 1) => {
                        let mut rec = store.file(&name(f)).unwrap().clone();
                        rec.merged.reverse();
                        rec.generation += 1;
                        store.set_file(&name(f), rec);
                    }
                    Op::Drop(f) => store.drop_file(&name(f)),
                    Op::Tombstone(f) => store.keep_tombstone(&name(f), stamp(f as u64, 0)),
                    Op::ForgetTombstone(f) => store.forget_tombstone(&name(f), stamp(f as u64, 0)),
                    Op::Sync => {
                        store.sync().unwrap();
                        synced = contents(&mut store);
                    }
                    Op::Crash => {
                        drop(store);
                        disk.crash();
                        let (mut back, rec) = LocalStore::open(Box::new(disk.clone())).unwrap();
                        proptest::prop_assert_eq!(rec.lost_parts, 0);
                        proptest::prop_assert_eq!(rec.index_damage, None);
                        proptest::prop_assert_eq!(&contents(&mut back), &synced);
                        proptest::prop_assert_eq!(disk.blocks(), back.blobs().collect::<BTreeSet<_>>());
                        back.compact_blocks = 3;
                        store = back;
                    }
                    _ => {}
                }
            }
        }
    }
}
