//! Reads: a chunk of a file for a client (`on_read`), and this node's whole view of a file
//! (`describe`, for clients and anti-entropy).
//!
//! Invariants kept here:
//! * a copy that lacks (or has incomplete) a write the client needs answers `Behind`, never its
//!   stale content; writes of a file this node holds the tombstone of are needed no more;
//! * a copy recovered at start answers reads and clients' describes `Unavailable` (the client
//!   tries another replica) until a peer has described it or listed it alike (`unreconciled`),
//!   unless this node is its only replica or the client asked for this copy itself
//!   (`getfromreplica`): it may have been deleted or written while this node was down. A peer's
//!   describe is answered from it: that is how it is compared;
//! * a read serves the merged content followed by the complete pending appends only; a merged
//!   part that is missing makes the copy unreadable until it is repaired, and a corrupt part is
//!   reported and refused (`Corrupt`);
//! * a chunk is at most `chunk_bytes` and names the view it belongs to; a later chunk of
//!   another view is refused (`ViewChanged`);
//! * a create this node coordinates and has not committed is left out of descriptions,
//!   inventories and offers (`creating`).

use crate::bulk::Bulk;
use crate::hydfs::message::{HydfsMsg, Needs, ReadChunk, ReadRequest, Refusal};
use crate::hydfs::store::PartError;
use crate::hydfs::types::{FileMeta, Stamp, WriteKind};
use crate::hydfs::{FileName, Hydfs, PlantedBug};
use crate::id::NodeAddr;
use crate::time::Time;
use std::borrow::Cow;
use std::collections::BTreeSet;

impl Hydfs {
    pub(in crate::hydfs) fn on_read(&mut self, _now: Time, from: NodeAddr, msg: ReadRequest) {
        let ReadRequest { req, name, offset, view, needs, pinned } = msg;
        if offset == 0 {
            self.handled("get", &name, from);
        }
        let result = self.read_chunk(&name, offset, view, &needs, pinned);
        self.send(from, HydfsMsg::ReadReply { req, result });
    }

    fn read_chunk(
        &mut self,
        name: &FileName,
        offset: u64,
        view: Option<u64>,
        needs: &[Needs],
        pinned: bool,
    ) -> Result<ReadChunk, Refusal> {
        // The remembered view: worked out afresh at every chunk, a whole-file read cost time in
        // the square of the file's parts.
        let Some(shared) = self.store.meta_shared(name) else { return Err(Refusal::NotFound) };
        if shared.create.is_none() {
            return Err(Refusal::NotFound);
        }
        if self.misses(&shared, needs) {
            return Err(Refusal::Behind);
        }
        if !pinned && self.recovered_uncompared(name, &shared) {
            return Err(self.held_as_recovered());
        }
        // Pending appends still arriving are not part of this copy yet; a merged part that is
        // missing (lost to corruption) makes the copy unreadable until it is repaired.
        let meta = if shared.incomplete.is_empty() {
            Cow::Borrowed(&*shared)
        } else {
            let mut complete = (*shared).clone();
            complete.pending.retain(|w| !shared.incomplete.contains(&w.stamp));
            Cow::Owned(complete)
        };
        if meta.create.iter().chain(&meta.merged).any(|w| meta.incomplete.contains(&w.stamp)) {
            return Err(Refusal::Unavailable("a copy of this file is being repaired".into()));
        }
        // A copy with every write complete is its own view: the store remembers its digest.
        let remembered = if shared.incomplete.is_empty() { self.store.digest(name) } else { None };
        let id = remembered.map_or_else(|| meta.digest().hash, |d| d.hash);
        debug_assert_eq!(id, meta.digest().hash, "a chunk names the view it belongs to");
        if view.is_some_and(|v| v != id) {
            return Err(Refusal::ViewChanged);
        }
        let total: u64 = meta.all_writes().map(|w| w.len()).sum();
        let end = total.min(offset.saturating_add(self.chunk_bytes_for_reads() as u64));
        let mut bytes = Vec::with_capacity(end.saturating_sub(offset) as usize);
        // A chunk that is exactly one part is that part's bytes as read (no copy, and the slot
        // of their hash with them).
        let mut whole: Option<Bulk> = None;
        let mut pos = 0u64;
        for w in meta.all_writes() {
            for (i, p) in w.parts.iter().enumerate() {
                let (start, stop) = (pos, pos + p.len as u64);
                pos = stop;
                if stop <= offset || start >= end {
                    continue;
                }
                let data = match self.store.read_bulk_part(name, w.stamp, i as u32) {
                    Ok(d) => d,
                    Err(PartError::Corrupt) => {
                        self.corruption(name, w.stamp, i as u32);
                        return Err(Refusal::Corrupt);
                    }
                    Err(PartError::Missing) => return Err(Refusal::Unavailable("a part is missing".into())),
                    Err(PartError::Lost(e)) => {
                        self.part_lost(name, w.stamp, i as u32, &e);
                        return Err(Refusal::Unavailable(format!("{}: {e}", self.me)));
                    }
                };
                let from = offset.max(start) - start;
                let to = end.min(stop) - start;
                if bytes.is_empty() && from == 0 && to as usize == data.len() && stop >= end {
                    debug_assert!(whole.is_none(), "a chunk is at most one whole part");
                    whole = Some(data);
                    continue;
                }
                bytes.extend_from_slice(&data[from as usize..(to as usize).min(data.len())]);
            }
        }
        let bytes = whole.unwrap_or_else(|| bytes.into());
        debug_assert!(
            bytes.len() as u64 == end - offset.min(end) && bytes.len() <= self.chunk_bytes_for_reads(),
            "a chunk is the asked range of this view, at most one chunk long"
        );
        let writes = if offset == 0 { meta.all_writes().map(|w| w.stamp).collect() } else { Vec::new() };
        Ok(ReadChunk { view: id, total_len: total, writes, offset, bytes })
    }

    /// Whether this node's copy `meta` lacks (or has not complete) a write a client needs.
    /// Writes of a file this node holds the tombstone of are needed no more.
    fn misses(&self, meta: &FileMeta, needs: &[Needs]) -> bool {
        if self.served_unchecked.contains(&meta.name) {
            return false; // planted bug
        }
        let mut needed = needs.iter().filter(|n| !self.tombstones.contains(&meta.name, n.create)).peekable();
        if needed.peek().is_none() {
            return false;
        }
        let present: BTreeSet<Stamp> =
            meta.all_writes().map(|w| w.stamp).filter(|s| !meta.incomplete.contains(s)).collect();
        // An append a seal cut off is needed no more: no copy keeps it.
        let owners = self.seal_owners(meta.all_writes());
        let cut = |s: &Stamp| owners.as_ref().is_some_and(|o| o.cut(s));
        needed.any(|n| n.writes.iter().any(|s| !present.contains(s) && !cut(s)))
    }

    /// Whether this node coordinates a create of `name` that is not committed yet. Its copy is
    /// then left out of anti-entropy (inventories, descriptions and hand-off offers): an
    /// unacknowledged create must never spread to replicas that hold another, acknowledged,
    /// create of the name and replace it there as the earlier one. Existence checks still see
    /// it, so two coordinators of one name never both go on.
    pub(in crate::hydfs) fn creating(&self, name: &FileName) -> bool {
        self.server.writes.values().any(|w| w.name == *name && w.write.kind == WriteKind::Create)
    }

    /// Every name [`Hydfs::creating`] answers yes for, gathered in one pass over the writes.
    pub(in crate::hydfs) fn names_being_created(&self) -> BTreeSet<FileName> {
        self.server
            .writes
            .values()
            .filter(|w| w.write.kind == WriteKind::Create)
            .map(|w| w.name.clone())
            .collect()
    }

    /// This node's whole view of `name`, for a client's `Meta` (`client`) or a peer's
    /// anti-entropy. A client is refused a copy recovered at start and not yet compared, as a
    /// read is; a peer is not (its describes are what compare the copies).
    pub(in crate::hydfs) fn describe(
        &self,
        name: &FileName,
        needs: &[Needs],
        client: bool,
    ) -> Result<FileMeta, Refusal> {
        if self.creating(name) {
            return Err(Refusal::NotFound);
        }
        let meta = self.store.meta(name).ok_or(Refusal::NotFound)?;
        if self.misses(&meta, needs) {
            return Err(Refusal::Behind);
        }
        if client && self.recovered_uncompared(name, &meta) {
            return Err(self.held_as_recovered());
        }
        debug_assert_eq!(&meta.name, name, "a description is of the file asked about");
        Ok(meta)
    }

    /// Whether this node's copy `meta` of `name` was recovered at start and no peer has
    /// compared it yet, while the file has other replicas in this node's view: it may have been
    /// deleted or written since, so it is not served as current.
    fn recovered_uncompared(&self, name: &FileName, meta: &FileMeta) -> bool {
        self.unreconciled.get(name).is_some_and(|c| *c == meta.create.as_ref().map(|w| w.stamp))
            && self.replicas(name).iter().any(|r| *r != self.me)
    }

    fn held_as_recovered(&self) -> Refusal {
        Refusal::Unavailable(format!(
            "{}: its copy was recovered at start and is not yet compared with the other replicas",
            self.me
        ))
    }

    fn chunk_bytes_for_reads(&self) -> usize {
        if self.cfg.bug(PlantedBug::UnchunkedTransfers) {
            usize::MAX >> 1
        } else {
            self.cfg.chunk_bytes
        }
    }
}
