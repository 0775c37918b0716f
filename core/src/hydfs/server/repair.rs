//! Anti-entropy and hand-off: each round this node scrubs what it stores, drops orphaned
//! pending appends, expires tombstones, asks its ring neighbours for their inventories, pulls the
//! view of every file it should hold whose digest differs from its own (`Describe`, reconciled
//! by `store::reconcile`) and fetches what it lacks; and it offers every file it no longer owns
//! to the file's owners (`Offer`, answered `Taken`).
//!
//! Invariants kept here:
//! * a copy covered by a tombstone is never kept, absorbed, accepted or handed on, and its
//!   holder is told (`Remove`) when one is met: in an inventory, a description, an offer or an
//!   exists-check;
//! * a node drops a file it no longer owns only when every current owner has answered `Taken`
//!   for the digest of the copy it holds;
//! * a pending append is dropped as an orphan only after it stayed incomplete here for longer
//!   than a coordinator works on it, and never while this node coordinates it;
//! * a peer's pending append that the peer itself holds incomplete is never absorbed, so an
//!   orphan does not spread.

use super::{FetchClass, OfferIn, Pending};
use crate::hydfs::message::{HydfsMsg, InventoryList, Refusal, ReqId};
use crate::hydfs::store::{reconcile, FileRec, PartError};
use crate::hydfs::types::{FileMeta, Stamp};
use crate::hydfs::{FileName, Hydfs, HydfsEvent, PlantedBug};
use crate::id::NodeAddr;
use crate::time::Time;
use std::collections::BTreeSet;

impl Hydfs {
    pub(in crate::hydfs) fn anti_entropy(&mut self, now: Time) {
        self.scrub();
        self.drop_orphans(now);
        self.tombstones.expire(now);
        for (name, create) in self.tombstones.take_forgotten() {
            self.store.forget_tombstone(&name, create);
        }
        if self.ring.len() <= 1 || !self.ring.contains(self.me) {
            return;
        }
        if !self.cfg.bug(PlantedBug::NoReReplication) && self.inventory_pace.due(now) {
            let neighbours = self.ring.neighbours(self.me, self.cfg.replication);
            let (_, local) = self.inventory();
            self.inventory_pace.begin_round(now, local, &neighbours);
            for p in neighbours {
                let busy =
                    self.server.requests.values().any(|r| r.to == p && matches!(r.what, Pending::Inventory));
                if !busy {
                    let known = self.inventory_pace.known(p);
                    self.ask(now, p, Pending::Inventory, |req| HydfsMsg::Inventory { req, known });
                }
            }
        }
        if self.cfg.bug(PlantedBug::KeepsUnownedCopies) {
            return;
        }
        for name in self.unowned_files() {
            if self.creating(&name) {
                continue;
            }
            let Some(meta) = self.store.meta(&name) else { continue };
            let deleted = self.deleted_creates(&name);
            for r in self.replicas(&name) {
                self.send(r, HydfsMsg::Offer { meta: meta.clone(), deleted: deleted.clone() });
            }
        }
    }

    /// The files this node stores but is not a replica of, in name order: worked out again only
    /// when a file was added, changed or removed, or the ring changed, since the last round (a
    /// walk of every file, each placed on the ring, was most of an idle node's work).
    pub(in crate::hydfs) fn unowned_files(&mut self) -> Vec<FileName> {
        let epoch = self.store.files_epoch();
        if let Some((at, ring, unowned)) = &self.unowned_memo {
            if *at == epoch && *ring == self.ring {
                debug_assert_eq!(
                    *unowned,
                    self.fresh_unowned_files(),
                    "the remembered unowned files are a fresh walk's"
                );
                return unowned.clone();
            }
        }
        let unowned = self.fresh_unowned_files();
        self.unowned_memo = Some((epoch, self.ring.clone(), unowned.clone()));
        unowned
    }

    fn fresh_unowned_files(&self) -> Vec<FileName> {
        self.store.files().keys().filter(|n| !self.replicas(n).contains(&self.me)).cloned().collect()
    }

    /// Verifies a bounded number of stored bytes per round, so that rot is found (and repaired
    /// from another replica) before the other copies fail too.
    fn scrub(&mut self) {
        if self.cfg.bug(PlantedBug::ServesCorruptBlocks) {
            return;
        }
        let (bad, checked) = self.store.scrub(self.cfg.scrub_bytes_per_round);
        self.stats.scrubbed_parts += checked as u64;
        for ((name, stamp, part), e) in bad {
            match e {
                PartError::Lost(why) => self.part_lost(&name, stamp, part, &why),
                PartError::Corrupt | PartError::Missing => self.corruption(&name, stamp, part),
            }
        }
    }

    /// Pending appends that stayed incomplete here for longer than a coordinator would work on
    /// them, with no replica able to supply their bytes, were never acknowledged (an
    /// acknowledged append is complete on every replica of its time): they are dropped.
    fn drop_orphans(&mut self, now: Time) {
        let limit =
            self.cfg.coordinator_timeout + self.cfg.request_timeout + self.cfg.anti_entropy_interval * 2;
        let incomplete = self.incomplete_writes();
        self.server.incomplete_since.retain(|k, _| incomplete.contains(k));
        for k in incomplete {
            let since = *self.server.incomplete_since.entry(k.clone()).or_insert(now);
            let in_use = self.server.writes.values().any(|w| w.name == k.0 && w.write.stamp == k.1);
            if now >= since + limit && !in_use {
                let mut rec = self.store.file(&k.0).cloned().unwrap_or_default();
                rec.pending.remove(&k.1);
                self.store.set_file(&k.0, rec);
                self.server.incomplete_since.remove(&k);
                self.stats.orphans_dropped += 1;
            }
        }
    }

    /// The pending writes this node holds incompletely, remembered while no file's record or
    /// parts change.
    fn incomplete_writes(&mut self) -> BTreeSet<(FileName, Stamp)> {
        let epoch = self.store.files_epoch();
        if let Some((at, incomplete)) = &self.incomplete_memo {
            if *at == epoch {
                debug_assert_eq!(
                    *incomplete,
                    self.fresh_incomplete_writes(),
                    "the remembered incomplete writes are a fresh walk's"
                );
                return incomplete.clone();
            }
        }
        let incomplete = self.fresh_incomplete_writes();
        self.incomplete_memo = Some((epoch, incomplete.clone()));
        incomplete
    }

    fn fresh_incomplete_writes(&self) -> BTreeSet<(FileName, Stamp)> {
        let mut incomplete = BTreeSet::new();
        // Only files with pending appends have anything to check: the walk of a file's parts
        // is skipped for the others, which on a node holding many files are nearly all.
        for (name, rec) in self.store.files().iter().filter(|(_, rec)| !rec.pending.is_empty()) {
            let held = self.store.held_parts(name);
            for w in rec.pending.values().filter(|w| !held.is_complete(w)) {
                incomplete.insert((name.clone(), w.stamp));
            }
        }
        incomplete
    }

    pub(in crate::hydfs) fn on_inventory_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        files: InventoryList,
    ) {
        if self.answered(req, from).is_none() {
            return;
        }
        let files = match files {
            InventoryList::Files(files) => self.inventory_pace.received(now, from, files),
            InventoryList::Unchanged => match self.inventory_pace.unchanged(now, from) {
                Some(files) => files,
                None => return,
            },
        };
        let mut behind = false;
        for (name, digest) in files.iter() {
            if name.as_str().len() > self.cfg.max_name_bytes {
                self.stats.names_refused += 1;
                continue;
            }
            if self.refuse_deleted_copy(now, from, name, digest.create) {
                continue;
            }
            if !self.replicas(name).contains(&self.me) {
                continue;
            }
            let mine = self.store.digest(name);
            if mine.as_ref() == Some(digest) {
                self.unreconciled.remove(name);
                continue;
            }
            let busy = self
                .server
                .requests
                .values()
                .any(|r| matches!(&r.what, Pending::Describe { name: n } if n == name));
            behind = true;
            if !busy {
                let n = name.clone();
                self.ask(now, from, Pending::Describe { name: name.clone() }, |req| HydfsMsg::Describe {
                    req,
                    name: n,
                    needs: Vec::new(),
                    client: false,
                });
            }
        }
        if behind {
            self.inventory_pace.disturb(now);
        }
    }

    pub(in crate::hydfs) fn on_describe_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        meta: Result<FileMeta, Refusal>,
        deleted: Vec<Stamp>,
    ) {
        let Some(Pending::Describe { name }) = self.answered(req, from) else {
            return;
        };
        if meta.as_ref().is_ok_and(|m| m.name != name) {
            // Not about the file asked of: a late answer to a request of an earlier process at
            // this address (they number their requests alike). The next anti-entropy round asks
            // again.
            return;
        }
        match meta {
            Ok(meta) => {
                self.absorb(now, from, &meta, &deleted);
            }
            // The peer holds no copy, but may hold tombstones of the name.
            Err(_) => self.drop_deleted_copy(now, &name, &deleted),
        }
        self.unreconciled.remove(&name);
    }

    /// The creates of the deleted files of `name` this node holds tombstones for (the newest
    /// `MAX_DELETED_IN_REPLY`; copies of older ones are refused by inventories instead), sent
    /// with a file's view so that its receiver drops a copy of a deleted file first.
    pub(in crate::hydfs) fn deleted_creates(&self, name: &FileName) -> Vec<Stamp> {
        let mut deleted: Vec<Stamp> = self.tombstones.of_name(name).collect();
        deleted.drain(..deleted.len().saturating_sub(crate::hydfs::MAX_DELETED_IN_REPLY));
        deleted
    }

    /// Drops this node's copy of `name` if it is one of the deleted files `deleted` names (the
    /// creates a peer holds tombstones for), keeping their tombstones.
    fn drop_deleted_copy(&mut self, now: Time, name: &FileName, deleted: &[Stamp]) {
        for create in deleted {
            if self.store.file(name).is_some_and(|r| r.create.as_ref().is_none_or(|c| c.stamp == *create)) {
                self.apply_tombstone(now, name, *create);
            }
        }
    }

    /// Reconciles a peer's view of a file into ours and fetches what we lack from it, unless it
    /// is a copy of a deleted file (whose holder is then told so). Returns whether it did.
    fn absorb(&mut self, now: Time, from: NodeAddr, meta: &FileMeta, deleted: &[Stamp]) -> bool {
        let name = &meta.name;
        self.unreconciled.remove(name);
        // A copy of a deleted file this node kept (across a restart, or cut off during the
        // delete) goes before the peer's view is reconciled into it: reconciling would keep its
        // writes under a later file of the same name.
        self.drop_deleted_copy(now, name, deleted);
        if self.refuse_deleted_copy(now, from, name, meta.create.as_ref().map(|c| c.stamp)) {
            return false;
        }
        // A pending append the peer holds incomplete is not taken: the peer cannot supply its
        // bytes, and an acknowledged append is complete on every replica of its time. Taken, an
        // orphan (a write refused where it was first stored) would travel from copy to copy, and
        // outlive every node's orphan timeout.
        let stripped;
        let meta = if meta.pending.iter().any(|w| meta.incomplete.contains(&w.stamp)) {
            let mut m = meta.clone();
            m.pending.retain(|w| !meta.incomplete.contains(&w.stamp));
            stripped = m;
            &stripped
        } else {
            meta
        };
        debug_assert!(
            meta.pending.iter().all(|w| !meta.incomplete.contains(&w.stamp)),
            "a peer's pending append it holds incomplete is never absorbed"
        );
        let rec: FileRec = reconcile(self.store.file(name), meta);
        self.store.set_file(name, rec.clone());
        let mut sources = vec![from];
        sources.extend(self.replicas(name));
        let held = self.store.held_parts(name);
        for w in rec.writes() {
            if !held.is_complete(w) {
                let from_has =
                    !meta.incomplete.contains(&w.stamp) && meta.all_writes().any(|m| m.stamp == w.stamp);
                let srcs: Vec<NodeAddr> =
                    if from_has { sources.clone() } else { sources.iter().copied().skip(1).collect() };
                self.ensure_write(now, name, w, &srcs, FetchClass::Repair);
            }
        }
        true
    }

    /// If a copy of `name` created by `create` held by `holder` is covered by a tombstone here,
    /// tells the holder to drop it and returns true.
    fn refuse_deleted_copy(
        &mut self,
        now: Time,
        holder: NodeAddr,
        name: &FileName,
        create: Option<Stamp>,
    ) -> bool {
        if !self.tombstones.covers(name, create) {
            return false;
        }
        if let Some(stamp) = self.tombstones.for_copy(name, create) {
            self.tell_deleted(now, holder, name, stamp);
        }
        true
    }

    pub(in crate::hydfs) fn on_offer(
        &mut self,
        now: Time,
        from: NodeAddr,
        meta: FileMeta,
        deleted: Vec<Stamp>,
    ) {
        if !self.replicas(&meta.name).contains(&self.me) || self.cfg.bug(PlantedBug::NoReReplication) {
            return;
        }
        if !self.absorb(now, from, &meta, &deleted) {
            return; // a copy of a deleted file: its holder drops it instead of handing it over
        }
        let hash = meta.digest().hash;
        if !self.server.offers_in.iter().any(|o| o.from == from && o.meta.digest().hash == hash) {
            let until = now + self.cfg.request_timeout;
            self.server.offers_in.push(OfferIn { from, meta, until, durable_at: None });
        }
    }

    pub(in crate::hydfs) fn on_taken(&mut self, now: Time, from: NodeAddr, name: FileName, hash: u64) {
        let Some(meta) = self.store.meta(&name) else { return };
        if meta.digest().hash != hash {
            return;
        }
        self.server.offers_taken.entry(name.clone()).or_default().insert(from, hash);
        let owners = self.replicas(&name);
        if owners.contains(&self.me) || owners.is_empty() {
            return;
        }
        let taken = &self.server.offers_taken[&name];
        if owners.iter().all(|o| taken.get(o) == Some(&hash)) {
            self.store.drop_file(&name);
            self.server.offers_taken.remove(&name);
            self.stats.files_dropped += 1;
            self.events.push_back(HydfsEvent::FileDropped { name });
            let _ = now;
        }
    }
}
