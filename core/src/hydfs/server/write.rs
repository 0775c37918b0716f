//! Writes: a coordinator's side of a create or an append (`on_write`: the checks and limits, a
//! create's exists-check of every other member, `Replicate` to every replica of its current
//! view) and a replica's (`on_replicate`: record the write, fetch its parts, answer once they are
//! stored and synced). The answers themselves are sent by `progress` (`tick.rs`).
//!
//! Invariants kept here:
//! * a write is recorded only if no other create of its name is here and the file it belongs to
//!   is not covered by a tombstone here; otherwise it is refused (`AlreadyExists`, `Deleted`);
//! * an append or seal bound to a create (`WriteRequest::of`) is coordinated only by a copy
//!   holding that create: one holding another create, or a tombstone of it, refuses it as
//!   `Deleted` naming the create it holds; a replica stores an append only into a copy of the
//!   file the coordinator bound it to (`ReplicateRequest::create`): one holding another create
//!   of the name answers `Unavailable`, and the coordinator tries again;
//! * a create goes on only once every other member answered (or could not be reached) that it
//!   holds no live create of the name; a copy of a deleted file met by this exists-check is no
//!   obstacle, and its holder is told (`Remove`);
//! * a create goes on only once this node lists, or knows to have left, every member the
//!   answers to its exists check list (`unseen` is empty), and has asked every member it lists:
//!   a node that joined knowing only some members (a whole-cluster restart, where the rest
//!   joined a moment later) waits until it hears of them and asks them too, instead of taking
//!   a name one of them holds;
//! * a retry of a write this node coordinates joins the running attempt (one per stamp);
//! * a new write to a sealed file is refused unless it is the current owner's append, a seal
//!   that extends the chain, or the owner's bound on an earlier owner (`Owners::admits`): for
//!   good (`Sealed`) if no seal this copy lacks could change that, else as `Unavailable` (the
//!   copy may be behind the writer);
//! * storage refusing a write's bytes fails the write at once, on the replica and on its
//!   coordinator (`StorageFailed`, naming the node), and a failed create releases its name; a
//!   write refused before this node held any of its bytes leaves the index at once;
//! * limits (each breach answered with a typed [`Refusal`] and counted where the limit is a
//!   node's own): a write over `max_write_bytes`, or with a part over a chunk, is refused
//!   (`TooLarge`); a coordinator takes at most `max_transfers` writes and merges at once (more
//!   are refused as `Busy`: clients retry) and refuses a new append to a file holding
//!   `max_pending_appends` pending appends, or that would take the description of its file's
//!   writes past `max_file_meta_bytes` (`FileFull`): a file's description travels whole in one
//!   frame (anti-entropy, merges, `Meta`), so it must stay under the frame limit.

use super::{Accepted, CoordWrite, FetchClass, Pending, ReplicaWait};
use crate::hydfs::message::{HydfsMsg, Refusal, ReplicateRequest, ReqId, WriteRequest};
use crate::hydfs::seal::Owners;
use crate::hydfs::types::{FileDigest, Stamp, WriteKind, WriteMeta};
use crate::hydfs::{FileName, Hydfs, PlantedBug};
use crate::id::{MemberId, NodeAddr};
use crate::time::Time;
use std::collections::{BTreeSet, VecDeque};

impl Hydfs {
    pub(in crate::hydfs) fn on_write(&mut self, now: Time, from: NodeAddr, msg: WriteRequest) {
        let WriteRequest { req, name, write, inline, source, of } = msg;
        let what = match write.kind {
            WriteKind::Create => "create",
            WriteKind::Append => "append",
            WriteKind::Seal(_) => "seal",
        };
        self.handled(what, &name, from);
        let refuse = |h: &mut Hydfs, r: Refusal| {
            h.send(from, HydfsMsg::WriteReply { req, result: Err(r), create: None })
        };
        if write.len() > self.cfg.max_write_bytes {
            return refuse(self, Refusal::TooLarge { limit: self.cfg.max_write_bytes });
        }
        if !self.parts_fit(&write) {
            return refuse(self, Refusal::TooLarge { limit: self.cfg.chunk_bytes as u64 });
        }
        if !self.replicas(&name).contains(&self.me) {
            return refuse(self, Refusal::NotReplica);
        }
        if self.ring.len() < self.min_copies() {
            let why = format!("{} live members; a write needs {} copies", self.ring.len(), self.min_copies());
            return refuse(self, Refusal::Unavailable(why));
        }
        let in_flight_create = self
            .server
            .writes
            .values()
            .find(|w| w.name == name && w.write.kind == WriteKind::Create)
            .map(|w| w.write.stamp);
        let existing =
            self.store.file(&name).and_then(|r| r.create.as_ref().map(|c| c.stamp)).or(in_flight_create);
        match write.kind {
            WriteKind::Create => {
                if self.tombstones.contains(&name, write.stamp) {
                    return refuse(self, Refusal::Deleted); // a retry of a create since deleted
                }
                if existing.is_some_and(|s| s != write.stamp) && !self.cfg.bug(PlantedBug::CreateNotExclusive)
                {
                    return refuse(self, Refusal::AlreadyExists);
                }
            }
            WriteKind::Append | WriteKind::Seal(_) => {
                let of = of.filter(|_| !self.cfg.bug(PlantedBug::AppendsUnbound));
                match (of, existing) {
                    // Issued against a file this copy knows was deleted, or against another file
                    // of the name than the one here: never stored in this one.
                    (Some(of), _) if self.tombstones.contains(&name, of) => {
                        return self.refuse_other_file(from, req, existing)
                    }
                    (Some(of), Some(here)) if of != here => {
                        return self.refuse_other_file(from, req, existing)
                    }
                    (_, None) => return refuse(self, Refusal::NotFound),
                    (None, Some(_)) | (Some(_), Some(_)) => {}
                }
                if let Some(r) = self.sealed_refusal(&name, &write) {
                    return refuse(self, r);
                }
                let limit = self.cfg.max_pending_appends;
                let pending = self.store.file(&name).map_or(0, |r| r.pending.len());
                if limit > 0 && pending >= limit && !self.store.holds_write(&name, &write.stamp) {
                    self.stats.pending_appends_refused += 1;
                    return refuse(self, Refusal::TooManyPending { limit });
                }
                let limit = self.cfg.max_file_meta_bytes;
                if write.kind == WriteKind::Append
                    && self.store.meta_bytes(&name).saturating_add(write.described_bytes()) > limit
                    && !self.store.holds_write(&name, &write.stamp)
                {
                    self.stats.full_file_appends_refused += 1;
                    return refuse(self, Refusal::FileFull { limit });
                }
            }
        }
        // A retry of a write this node already coordinates joins the running attempt.
        if let Some(w) =
            self.server.writes.values_mut().find(|w| w.name == name && w.write.stamp == write.stamp)
        {
            w.client = from;
            w.client_req = req;
            return;
        }
        if let Some(limit) = self.at_transfer_limit() {
            return refuse(self, Refusal::Busy { limit });
        }
        let create = if write.kind == WriteKind::Create { Some(write.stamp) } else { existing };
        match self.accept_write(now, &name, &write, inline.as_deref(), &[source], create) {
            Accepted::Yes => {}
            Accepted::OtherCreate => return refuse(self, Refusal::AlreadyExists),
            // (`OtherFile` cannot happen here: the write is bound to the file this copy holds.)
            Accepted::Deleted | Accepted::OtherFile => return refuse(self, Refusal::Deleted),
            Accepted::StorageFailed(why) => {
                return refuse(self, Refusal::StorageFailed(format!("{}: {why}", self.me)))
            }
        }
        self.stats.writes_coordinated += 1;
        let op = self.server.next_op;
        self.server.next_op += 1;
        // A create first asks every other member whether the name exists anywhere (a holder
        // outside the replica set, e.g. one still handing the file over, must not be missed),
        // and which members it lists (this node's view may lack some: it joined a moment ago):
        // `drive_write` asks them.
        self.server.writes.insert(
            op,
            CoordWrite {
                client: from,
                client_req: req,
                name,
                write,
                create,
                inline,
                source,
                acked: BTreeSet::new(),
                asked: BTreeSet::new(),
                checking: BTreeSet::new(),
                check_asked: BTreeSet::new(),
                unseen: BTreeSet::new(),
                next_round: None,
                started: now,
                durable_at: None,
            },
        );
        self.drive_write(now, op);
    }

    /// `Some(limit)` (and the refusal counted) if this node coordinates `max_transfers` writes and
    /// merges already.
    pub(super) fn at_transfer_limit(&mut self) -> Option<usize> {
        let limit = self.cfg.max_transfers;
        let s = &self.server;
        let queued: usize = s.merge_queue.values().map(VecDeque::len).sum();
        if limit == 0 || s.writes.len() + s.merges.len() + queued < limit {
            return None;
        }
        self.stats.busy_refusals += 1;
        Some(limit)
    }

    /// Copies a write needs before its acknowledgement (between 1 and the replication factor).
    pub(in crate::hydfs) fn min_copies(&self) -> usize {
        self.cfg.min_copies.clamp(1, self.cfg.replication.max(1))
    }

    /// Whether every part of `write` is at most one chunk (the unit that travels in one message).
    fn parts_fit(&self, write: &WriteMeta) -> bool {
        self.cfg.bug(PlantedBug::UnchunkedTransfers)
            || write.parts.iter().all(|p| p.len as usize <= self.cfg.chunk_bytes)
    }

    /// Records a write locally and starts fetching its parts (unless a different create of the
    /// name is already here, the file it belongs to (`create`) was deleted, or storage refused
    /// the inline bytes).
    pub(super) fn accept_write(
        &mut self,
        now: Time,
        name: &FileName,
        write: &WriteMeta,
        inline: Option<&[u8]>,
        sources: &[NodeAddr],
        create: Option<Stamp>,
    ) -> Accepted {
        let of = if write.kind == WriteKind::Create { Some(write.stamp) } else { create };
        if of.is_some_and(|c| self.tombstones.contains(name, c)) {
            return Accepted::Deleted;
        }
        let replace = self.cfg.bug(PlantedBug::CreateNotExclusive);
        // Whether this call put the write in the index (and must take it out if its bytes are
        // refused).
        let added = match write.kind {
            WriteKind::Create => {
                let rec = self.store.file_mut(name);
                match &rec.create {
                    Some(c) if c.stamp != write.stamp && !replace => return Accepted::OtherCreate,
                    Some(c) if c.stamp == write.stamp => false,
                    _ => {
                        rec.create = Some(write.clone());
                        true
                    }
                }
            }
            WriteKind::Append | WriteKind::Seal(_) => {
                // An append belongs to one file: never to another file of its name held here
                // (a stale copy of a deleted file, or the loser of a create race, until
                // anti-entropy settles which file is current).
                let here = self.store.file(name).and_then(|r| r.create.as_ref()).map(|c| c.stamp);
                if create.zip(here).is_some_and(|(of, here)| of != here)
                    && !self.cfg.bug(PlantedBug::AppendsUnbound)
                {
                    return Accepted::OtherFile;
                }
                let added = !self.store.holds_write(name, &write.stamp);
                if added {
                    self.store.add_pending(name, write.clone());
                }
                debug_assert!(
                    self.cfg.bug(PlantedBug::AppendsUnbound)
                        || create.zip(here).is_none_or(|(of, here)| of == here),
                    "an append is recorded only into a copy of the file it belongs to"
                );
                added
            }
        };
        if let (Some(bytes), [part]) = (inline, write.parts.as_slice()) {
            if let Err(e) = self.store.put_part(name, write.stamp, 0, *part, bytes) {
                self.storage_failed(&e.to_string());
                self.fail_writes(Some((name, write.stamp)), &e.to_string());
                if added {
                    // Refused here before this node held any of its bytes: the index must not
                    // keep it. A pending append left behind would never complete here, and would
                    // hold back every later write of its client wherever this copy's view is
                    // reconciled.
                    match write.kind {
                        WriteKind::Create => self.abandon_create(name, write.stamp),
                        WriteKind::Append | WriteKind::Seal(_) => self.forget_pending(name, write.stamp),
                    }
                    debug_assert!(
                        self.store.file(name).is_none_or(|r| !r.contains(&write.stamp)),
                        "a write refused before any of its bytes were held leaves the index"
                    );
                }
                return Accepted::StorageFailed(e.to_string());
            }
        }
        self.ensure_write(now, name, write, sources, FetchClass::Write);
        Accepted::Yes
    }

    /// Asks `to` whether they hold the name of create `op` (its exists check), and which
    /// members they list.
    fn ask_exists(&mut self, now: Time, op: u64, to: BTreeSet<NodeAddr>) {
        let Some(w) = self.server.writes.get_mut(&op) else { return };
        let name = w.name.clone();
        w.checking.extend(to.iter().copied());
        w.check_asked.extend(to.iter().copied());
        for a in to {
            let n = name.clone();
            self.ask(now, a, Pending::Exists { op }, |req| HydfsMsg::Stat { req, name: n });
        }
    }

    /// Whether this node lists `m` (or a later process at its address), or knows that it left.
    fn lists(&self, m: &MemberId) -> bool {
        let at = |ids: &std::collections::BTreeMap<NodeAddr, MemberId>| {
            ids.get(&m.addr).is_some_and(|id| id.join_time >= m.join_time)
        };
        at(&self.member_ids) || at(&self.departed)
    }

    /// The exists check of create `op`: `true` once it is done. Every member this node lists
    /// is asked (one that came to be listed while a round was out too); while answers name
    /// members this node neither lists nor knows to have left, it asks every member again
    /// each `retry_interval`, until they agree or the create times out.
    fn name_checked(&mut self, now: Time, op: u64) -> bool {
        let Some(w) = self.server.writes.get(&op) else { return false };
        if w.write.kind != WriteKind::Create {
            return true;
        }
        if !w.checking.is_empty() {
            return false;
        }
        let me = self.me;
        let new: BTreeSet<NodeAddr> =
            self.ring.members().map(|(_, a)| a).filter(|a| *a != me && !w.check_asked.contains(a)).collect();
        if !new.is_empty() {
            self.ask_exists(now, op, new);
            return false;
        }
        let unseen: BTreeSet<MemberId> = w.unseen.iter().filter(|m| !self.lists(m)).copied().collect();
        let next_round = w.next_round;
        let retry = self.cfg.retry_interval;
        let Some(w) = self.server.writes.get_mut(&op) else { return false };
        w.unseen = unseen;
        if w.unseen.is_empty() {
            w.next_round = None;
            return true;
        }
        match next_round {
            Some(at) if now >= at => {
                // A new round: the members that named the unseen ones may have dropped them.
                w.unseen.clear();
                w.check_asked.clear();
                w.next_round = None;
                let all: BTreeSet<NodeAddr> =
                    self.ring.members().map(|(_, a)| a).filter(|a| *a != me).collect();
                self.ask_exists(now, op, all);
            }
            Some(_) => self.arm_retry(now),
            None => {
                w.next_round = Some(now + retry);
                self.arm_retry(now);
            }
        }
        false
    }

    pub(super) fn drive_write(&mut self, now: Time, op: u64) {
        if !self.name_checked(now, op) {
            return;
        }
        let Some(w) = self.server.writes.get(&op) else { return };
        debug_assert!(w.checking.is_empty() && w.unseen.is_empty(), "a create goes on only once checked");
        let targets = self.replicas(&w.name);
        let (name, write, inline, source) = (w.name.clone(), w.write.clone(), w.inline.clone(), w.source);
        let create = if write.kind.is_append() {
            w.create.and_then(|c| self.create_meta(&name, c)).map(Box::new)
        } else {
            None
        };
        let to_ask: Vec<NodeAddr> = targets
            .iter()
            .copied()
            .filter(|t| *t != self.me && !w.acked.contains(t) && !w.asked.contains(t))
            .collect();
        for t in to_ask {
            let (n, wr, inl, cr) = (name.clone(), write.clone(), inline.clone(), create.clone());
            // The client first: this node pulls the same parts from it now, and asked first it
            // would answer `NotFound` for each part it does not hold yet, a round trip lost.
            let sources = vec![source, self.me];
            self.ask(now, t, Pending::Replicate { op }, |req| {
                HydfsMsg::Replicate(ReplicateRequest {
                    req,
                    name: n,
                    write: wr,
                    inline: inl,
                    sources,
                    create: cr,
                })
            });
            if let Some(w) = self.server.writes.get_mut(&op) {
                w.asked.insert(t);
            }
        }
        self.arm_retry(now);
    }

    /// Refuses an append or seal issued against another file of its name than the one this
    /// copy holds (`here`): `Deleted`, naming `here` so that a client whose write is still in
    /// progress can bind it to the file that exists now.
    fn refuse_other_file(&mut self, from: NodeAddr, req: ReqId, here: Option<Stamp>) {
        self.stats.stale_appends_refused += 1;
        self.send(from, HydfsMsg::WriteReply { req, result: Err(Refusal::Deleted), create: here });
    }

    pub(in crate::hydfs) fn on_replicate(&mut self, now: Time, from: NodeAddr, msg: ReplicateRequest) {
        let ReplicateRequest { req, name, write, inline, sources, create } = msg;
        self.handled("replicate", &name, from);
        if write.len() > self.cfg.max_write_bytes || !self.parts_fit(&write) {
            let limit = self.cfg.max_write_bytes;
            self.send(from, HydfsMsg::ReplicateReply { req, result: Err(Refusal::TooLarge { limit }) });
            return;
        }
        if let Some(r) = self.sealed_refusal(&name, &write) {
            self.send(from, HydfsMsg::ReplicateReply { req, result: Err(r) });
            return;
        }
        let of = create.as_ref().map(|c| c.stamp);
        let refusal = match self.accept_write(now, &name, &write, inline.as_deref(), &sources, of) {
            Accepted::Yes => {
                // An append reaching a replica that lacks its file's create (a replica new to
                // the file): the create comes with it, and its bytes follow.
                if let Some(c) = create.filter(|c| c.kind == WriteKind::Create) {
                    if self.store.file(&name).is_some_and(|r| r.create.is_none()) {
                        self.store.file_mut(&name).create = Some((*c).clone());
                        self.ensure_write(now, &name, &c, &sources, FetchClass::Repair);
                    }
                }
                None
            }
            Accepted::OtherCreate => Some(Refusal::AlreadyExists),
            // Not `Deleted`: this copy cannot tell whether the coordinator's file or its own is
            // the current one. The coordinator tries again until anti-entropy settles it.
            Accepted::OtherFile => Some(Refusal::Unavailable(format!(
                "{} holds another file of the name `{name}` than the one this write belongs to",
                self.me
            ))),
            Accepted::Deleted => Some(Refusal::Deleted),
            Accepted::StorageFailed(why) => Some(Refusal::StorageFailed(format!("{}: {why}", self.me))),
        };
        if let Some(r) = refusal {
            self.send(from, HydfsMsg::ReplicateReply { req, result: Err(r) });
            return;
        }
        let until = now + self.cfg.request_timeout;
        self.server.replica_waits.push(ReplicaWait {
            reply_to: from,
            req,
            name,
            stamp: write.stamp,
            until,
            durable_at: None,
        });
    }

    pub(in crate::hydfs) fn on_replicate_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<(), Refusal>,
    ) {
        let Some(Pending::Replicate { op }) = self.answered(req, from) else {
            return;
        };
        let Some(w) = self.server.writes.get_mut(&op) else { return };
        w.asked.remove(&from);
        match result {
            Ok(()) => {
                w.acked.insert(from);
            }
            Err(Refusal::Deleted) => {
                // The replica holds the tombstone of the file this write belongs to: so does
                // this node now (which fails the write).
                let (name, create) = (w.name.clone(), w.create);
                match create {
                    Some(c) => self.apply_tombstone(now, &name, c),
                    None => self.fail_write(op, Refusal::Deleted),
                }
            }
            Err(Refusal::AlreadyExists) => self.fail_write(op, Refusal::AlreadyExists),
            Err(Refusal::StorageFailed(why)) => self.fail_write(op, Refusal::StorageFailed(why)),
            Err(r @ (Refusal::NameTooLong { .. } | Refusal::Sealed { .. })) => self.fail_write(op, r),
            Err(_) => self.arm_retry(now),
        }
    }

    /// A member answered whether it holds the name a create is about to take.
    pub(in crate::hydfs) fn on_exists_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        digest: Option<FileDigest>,
        members: Vec<MemberId>,
    ) {
        let Some(Pending::Exists { op }) = self.answered(req, from) else {
            return;
        };
        let unseen: Vec<MemberId> = members.into_iter().filter(|m| !self.lists(m)).collect();
        let Some(w) = self.server.writes.get_mut(&op) else { return };
        w.checking.remove(&from);
        w.unseen.extend(unseen);
        let theirs = digest.and_then(|d| d.create);
        // A copy of a deleted file is no obstacle (and its holder is told to drop it).
        let name = w.name.clone();
        if let Some(c) = theirs.filter(|c| self.tombstones.contains(&name, *c)) {
            self.tell_deleted(now, from, &name, c);
        }
        let Some(w) = self.server.writes.get_mut(&op) else { return };
        let other = theirs.is_some_and(|c| c != w.write.stamp && !self.tombstones.contains(&w.name, c));
        if other && !self.cfg.bug(PlantedBug::CreateNotExclusive) {
            let w = self.server.writes.remove(&op).expect("present");
            self.abandon_create(&w.name, w.write.stamp);
            self.send(
                w.client,
                HydfsMsg::WriteReply { req: w.client_req, result: Err(Refusal::AlreadyExists), create: None },
            );
            return;
        }
        self.drive_write(now, op);
    }

    /// Removes this node's record of a create that was refused.
    pub(super) fn abandon_create(&mut self, name: &FileName, stamp: Stamp) {
        let Some(mut rec) = self.store.file(name).cloned() else { return };
        if rec.create.as_ref().is_some_and(|c| c.stamp == stamp) {
            rec.create = None;
            if rec.merged.is_empty() && rec.pending.is_empty() {
                self.store.drop_file(name);
            } else {
                self.store.set_file(name, rec);
            }
        }
    }

    /// Ends a coordinated write with `why`, releasing the name if it was a create.
    pub(super) fn fail_write(&mut self, op: u64, why: Refusal) {
        let Some(w) = self.server.writes.remove(&op) else { return };
        if w.write.kind == WriteKind::Create {
            self.abandon_create(&w.name, w.write.stamp);
        }
        self.send(w.client, HydfsMsg::WriteReply { req: w.client_req, result: Err(why), create: None });
    }

    /// Storage failed while storing `only` (or while syncing, for every write waiting on it):
    /// replicas refuse and coordinators fail those writes now, naming the cause.
    pub(super) fn fail_writes(&mut self, only: Option<(&FileName, Stamp)>, why: &str) {
        let reason = format!("{}: {why}", self.me);
        let hit = |name: &FileName, stamp: Stamp| only.is_none_or(|(n, s)| n == name && s == stamp);
        let waits = std::mem::take(&mut self.server.replica_waits);
        for w in waits {
            if hit(&w.name, w.stamp) {
                self.stats.writes_refused_storage += 1;
                let result = Err(Refusal::StorageFailed(reason.clone()));
                self.send(w.reply_to, HydfsMsg::ReplicateReply { req: w.req, result });
            } else {
                self.server.replica_waits.push(w);
            }
        }
        let ops: Vec<u64> = self
            .server
            .writes
            .iter()
            .filter(|(_, w)| hit(&w.name, w.write.stamp))
            .map(|(op, _)| *op)
            .collect();
        for op in ops {
            self.stats.writes_refused_storage += 1;
            self.fail_write(op, Refusal::StorageFailed(reason.clone()));
        }
        self.server.fetches.retain(|(n, s, _), _| !hit(n, *s));
    }

    /// Drops the pending append `stamp` of `name` from the index (and the file's record, if
    /// that leaves it empty).
    pub(super) fn forget_pending(&mut self, name: &FileName, stamp: Stamp) {
        let Some(mut rec) = self.store.file(name).cloned() else { return };
        if rec.pending.remove(&stamp).is_none() {
            return;
        }
        if rec.create.is_none() && rec.merged.is_empty() && rec.pending.is_empty() {
            self.store.drop_file(name);
        } else {
            self.store.set_file(name, rec);
        }
    }

    /// The owner chain the seals among `writes` make (`None` while seals mean nothing: a
    /// planted bug).
    pub(super) fn seal_owners<'a>(&self, writes: impl IntoIterator<Item = &'a WriteMeta>) -> Option<Owners> {
        if self.cfg.bug(PlantedBug::SealIgnored) {
            None
        } else {
            Owners::of(writes)
        }
    }

    /// Why `write` must be refused because the file is sealed (`seal.rs`), if it must: an append
    /// of anyone but the current owner, or a seal that does not extend the chain (a first
    /// seal must name the creator). For good (`Sealed`, counted) only if no seal this copy lacks
    /// could change that ([`Owners::stale`]); otherwise the copy may be behind the writer, who
    /// tries again (`Unavailable`).
    pub(super) fn sealed_refusal(&mut self, name: &FileName, write: &WriteMeta) -> Option<Refusal> {
        if self.cfg.bug(PlantedBug::SealIgnored) || write.kind == WriteKind::Create {
            return None;
        }
        let chain = self.store.owners_of(name);
        let held = self.store.holds_write(name, &write.stamp);
        let rec = self.store.file(name)?;
        let behind =
            || Some(Refusal::Unavailable("this copy has not caught up with the file's seals".into()));
        let Some(owners) = chain else {
            // Not sealed here: only a first seal naming the creator extends its chain.
            return match (write.kind, &rec.create) {
                (WriteKind::Seal(s), Some(c)) if s.prev != c.stamp.client && !held => behind(),
                _ => None,
            };
        };
        // A write this copy holds already is a retry: answered as the first time.
        let ok = held || owners.admits(write);
        if ok {
            return None;
        }
        if !owners.stale(write) {
            return behind();
        }
        self.stats.writes_refused_sealed += 1;
        Some(Refusal::Sealed { owner: owners.owner(), term: owners.term() })
    }

    /// The metadata of the create `stamp` of `name`: from this node's copy, or from a create it
    /// coordinates.
    fn create_meta(&self, name: &FileName, stamp: Stamp) -> Option<WriteMeta> {
        let stored = self.store.file(name).and_then(|r| r.create.clone()).filter(|c| c.stamp == stamp);
        stored.or_else(|| {
            self.server
                .writes
                .values()
                .find(|w| &w.name == name && w.write.stamp == stamp)
                .map(|w| w.write.clone())
        })
    }
}
