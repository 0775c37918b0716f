//! The server half of [`Hydfs`]: replicas, write and merge coordination, fetching parts,
//! anti-entropy and hand-off. When the ring changes (or a member restarts), writes and merges
//! in flight re-target at once rather than at their next retry.
//!
//! Invariants kept here:
//! * a `Replicate`, `Install` or `Taken` answer and a coordinator's own acknowledgement are sent
//!   only after the writes they cover are complete and storage has been synced;
//! * a coordinator acknowledges a write only when every replica of its current view answered;
//! * one merge per file at a time on a coordinator; later requests queue behind it;
//! * a merge installs what it collected only on the merged order it collected against (its
//!   `base`, the fence), so a write is never merged twice, even when two coordinators merge one
//!   file at once;
//! * fetched bytes are checked against the write's declared CRC before they are stored;
//! * a copy covered by a tombstone is never kept, absorbed, accepted or handed on, and its
//!   holder is told (`Remove`) when one is met: in an inventory, a description, an offer or an
//!   exists-check;
//! * limits (each breach answered with a typed [`Refusal`] and counted): a request naming a file
//!   longer than `max_name_bytes` reaches no handler; a coordinator takes at most
//!   `max_transfers` writes and merges at once (more are refused as `Busy`: clients retry) and
//!   refuses a new append to a file holding `max_pending_appends` pending appends.

use super::message::{
    FetchRequest, HydfsMsg, InstallRequest, InventoryList, MergeSummary, Needs, PartBytes, ReadRequest,
    Refusal, ReplicateRequest, ReqId, WriteRequest,
};
use super::pace::inventory_hash;
use super::store::{reconcile, FileRec, PartError};
use super::types::{order_hash, FileDigest, FileMeta, PartMeta, Stamp, WriteKind, WriteMeta};
use super::{FileName, Hydfs, HydfsEvent, PlantedBug, StorageError};
use crate::id::NodeAddr;
use crate::time::Time;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Default)]
pub(super) struct ServerState {
    next_op: u64,
    writes: BTreeMap<u64, CoordWrite>,
    merges: BTreeMap<FileName, CoordMerge>,
    merge_queue: BTreeMap<FileName, VecDeque<(NodeAddr, ReqId, Time)>>,
    replica_waits: Vec<ReplicaWait>,
    installs: Vec<InstallWait>,
    offers_in: Vec<OfferIn>,
    offers_taken: BTreeMap<FileName, BTreeMap<NodeAddr, u64>>,
    fetches: BTreeMap<(FileName, Stamp, u32), FetchJob>,
    requests: BTreeMap<ReqId, Outstanding>,
    /// Pending appends this node lacks bytes for, since when.
    incomplete_since: BTreeMap<(FileName, Stamp), Time>,
    /// Bytes fetched for installs, per file, reported with the install's answer.
    install_bytes: BTreeMap<FileName, u64>,
    /// Ticks at which coordinators retry (the earliest matters).
    retry_at: Option<Time>,
    /// Repair bytes this node may still pull now (a token bucket; negative is a debt).
    repair_tokens: i64,
    repair_refilled: Time,
    /// When the bucket allows the next queued repair fetch.
    repair_wake: Option<Time>,
    /// Parts this node uploads as a client and stores as a replica: copied locally a few per
    /// tick (never all at once, so a large upload does not stall the node).
    local_copies: BTreeSet<(FileName, Stamp, u32)>,
    /// A background sync is running: look again at this time.
    sync_poll: Option<Time>,
}

impl ServerState {
    /// Replicas' answers still waiting for their writes (tests).
    #[cfg(test)]
    pub(super) fn waiting_answers(&self) -> usize {
        self.replica_waits.len()
    }

    pub(super) fn next_deadline(&self) -> Option<Time> {
        let req = self.requests.values().map(|r| r.deadline).min();
        let copy = (!self.local_copies.is_empty()).then_some(Time(0));
        [req, self.retry_at, self.repair_wake, copy, self.sync_poll].into_iter().flatten().min()
    }
}

struct CoordWrite {
    client: NodeAddr,
    client_req: ReqId,
    name: FileName,
    write: WriteMeta,
    /// The create of the file the write belongs to (its own stamp, for a create).
    create: Option<Stamp>,
    inline: Option<Vec<u8>>,
    source: NodeAddr,
    acked: BTreeSet<NodeAddr>,
    asked: BTreeSet<NodeAddr>,
    /// For a create: members not yet asked or not yet answered whether they hold the name.
    checking: BTreeSet<NodeAddr>,
    started: Time,
}

struct CoordMerge {
    client: NodeAddr,
    client_req: ReqId,
    started: Time,
    targets: Vec<NodeAddr>,
    phase: MergePhase,
    bytes_moved: u64,
}

enum MergePhase {
    Collecting {
        replied: BTreeSet<NodeAddr>,
        found: BTreeMap<Stamp, (WriteMeta, Vec<NodeAddr>)>,
    },
    /// `base`: the merged order the union was collected against (its hash), the merge's fence.
    Fetching {
        union: Vec<WriteMeta>,
        base: u64,
    },
    Installing {
        base: u64,
        appended: Vec<WriteMeta>,
        acked: BTreeSet<NodeAddr>,
        asked: BTreeSet<NodeAddr>,
    },
}

struct ReplicaWait {
    reply_to: NodeAddr,
    req: ReqId,
    name: FileName,
    stamp: Stamp,
    until: Time,
}

struct InstallWait {
    reply_to: NodeAddr,
    req: ReqId,
    name: FileName,
    base: u64,
    appended: Vec<WriteMeta>,
    until: Time,
}

struct OfferIn {
    from: NodeAddr,
    meta: FileMeta,
    until: Time,
}

/// How often the answers waiting for a background sync look again.
const SYNC_POLL_MS: u64 = 2;

/// Parts of a node's own upload copied into its store per tick.
const LOCAL_COPIES_PER_TICK: usize = 4;

/// What became of a write a node was asked to store.
enum Accepted {
    Yes,
    /// A different create of the name is here.
    OtherCreate,
    /// The file the write belongs to was deleted.
    Deleted,
    StorageFailed(String),
}

/// Why a part is fetched; client writes and merges go before repairs, and only repairs are
/// rate-limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FetchClass {
    Write,
    Merge,
    Repair,
}

/// One part to fetch. At most `fetch_window` jobs have a request in flight; the others wait
/// (`in_flight: None`) and start in class order as slots free up.
struct FetchJob {
    part: super::types::PartMeta,
    sources: Vec<NodeAddr>,
    next: usize,
    in_flight: Option<ReqId>,
    class: FetchClass,
}

struct Outstanding {
    to: NodeAddr,
    deadline: Time,
    what: Pending,
}

pub(super) enum Pending {
    Replicate {
        op: u64,
    },
    Collect {
        name: FileName,
    },
    Install {
        name: FileName,
    },
    Fetch {
        key: (FileName, Stamp, u32),
    },
    Inventory,
    Describe {
        name: FileName,
    },
    Exists {
        op: u64,
    },
    /// A delete's `Remove` (its coordinator's operation number), or a one-way notice (`None`).
    Remove {
        op: Option<u64>,
    },
}

impl Hydfs {
    pub(super) fn ask(
        &mut self,
        now: Time,
        to: NodeAddr,
        what: Pending,
        make: impl FnOnce(ReqId) -> HydfsMsg,
    ) -> ReqId {
        let req = self.req_id();
        let deadline = now + self.cfg.request_timeout;
        self.server.requests.insert(req, Outstanding { to, deadline, what });
        self.send(to, make(req));
        req
    }

    pub(super) fn arm_retry(&mut self, now: Time) {
        let at = now + self.cfg.retry_interval;
        self.server.retry_at = Some(self.server.retry_at.map_or(at, |t| t.min(at)));
    }

    // ---- writes -------------------------------------------------------------------------------

    pub(super) fn on_write(&mut self, now: Time, from: NodeAddr, msg: WriteRequest) {
        let WriteRequest { req, name, write, inline, source } = msg;
        let what = if write.kind == WriteKind::Create { "create" } else { "append" };
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
            WriteKind::Append => {
                if existing.is_none() {
                    return refuse(self, Refusal::NotFound);
                }
                let limit = self.cfg.max_pending_appends;
                let rec = self.store.file(&name);
                let pending = rec.map_or(0, |r| r.pending.len());
                if limit > 0 && pending >= limit && !rec.is_some_and(|r| r.contains(&write.stamp)) {
                    self.stats.pending_appends_refused += 1;
                    return refuse(self, Refusal::TooManyPending { limit });
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
            Accepted::Deleted => return refuse(self, Refusal::Deleted),
            Accepted::StorageFailed(why) => {
                return refuse(self, Refusal::StorageFailed(format!("{}: {why}", self.me)))
            }
        }
        self.stats.writes_coordinated += 1;
        let op = self.server.next_op;
        self.server.next_op += 1;
        // A create first asks every other member whether the name exists anywhere (a holder
        // outside the replica set, e.g. one still handing the file over, must not be missed).
        let targets = self.replicas(&name);
        let checking: BTreeSet<NodeAddr> = if write.kind == WriteKind::Create {
            self.ring.members().map(|(_, a)| a).filter(|a| *a != self.me && !targets.contains(a)).collect()
        } else {
            BTreeSet::new()
        };
        for a in &checking {
            let n = name.clone();
            self.ask(now, *a, Pending::Exists { op }, |req| HydfsMsg::Stat { req, name: n });
        }
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
                checking,
                started: now,
            },
        );
        self.drive_write(now, op);
    }

    /// `Some(limit)` (and the refusal counted) if this node coordinates `max_transfers` writes and
    /// merges already.
    fn at_transfer_limit(&mut self) -> Option<usize> {
        let limit = self.cfg.max_transfers;
        let s = &self.server;
        let queued: usize = s.merge_queue.values().map(VecDeque::len).sum();
        if limit == 0 || s.writes.len() + s.merges.len() + queued < limit {
            return None;
        }
        self.stats.busy_refusals += 1;
        Some(limit)
    }

    /// Refuses a request that names a file longer than `max_name_bytes` (answering it, if it
    /// expects an answer). Returns whether it did.
    pub(super) fn refuse_long_name(&mut self, from: NodeAddr, msg: &HydfsMsg) -> bool {
        let name = match msg {
            HydfsMsg::Write(WriteRequest { name, .. })
            | HydfsMsg::Replicate(ReplicateRequest { name, .. })
            | HydfsMsg::Merge { name, .. }
            | HydfsMsg::Collect { name, .. }
            | HydfsMsg::Install(InstallRequest { name, .. })
            | HydfsMsg::Read(ReadRequest { name, .. })
            | HydfsMsg::Stat { name, .. }
            | HydfsMsg::RemoteAppend { name, .. }
            | HydfsMsg::Describe { name, .. }
            | HydfsMsg::Taken { name, .. }
            | HydfsMsg::Fetch(FetchRequest { name, .. })
            | HydfsMsg::Delete { name, .. }
            | HydfsMsg::Remove { name, .. } => name,
            HydfsMsg::Offer { meta, .. } => &meta.name,
            _ => return false,
        };
        let (len, limit) = (name.as_str().len(), self.cfg.max_name_bytes);
        if len <= limit {
            return false;
        }
        self.stats.names_refused += 1;
        let no = Refusal::NameTooLong { len, limit };
        let reply = match *msg {
            HydfsMsg::Write(WriteRequest { req, .. }) => {
                HydfsMsg::WriteReply { req, result: Err(no), create: None }
            }
            HydfsMsg::Replicate(ReplicateRequest { req, .. }) => {
                HydfsMsg::ReplicateReply { req, result: Err(no) }
            }
            HydfsMsg::Merge { req, .. } => HydfsMsg::MergeReply { req, result: Err(no) },
            HydfsMsg::Collect { req, .. } => HydfsMsg::CollectReply { req, result: Err(no) },
            HydfsMsg::Install(InstallRequest { req, .. }) => HydfsMsg::InstallReply { req, result: Err(no) },
            HydfsMsg::Read(ReadRequest { req, .. }) => HydfsMsg::ReadReply { req, result: Err(no) },
            HydfsMsg::Fetch(FetchRequest { req, .. }) => HydfsMsg::FetchReply { req, result: Err(no) },
            HydfsMsg::Stat { req, .. } => HydfsMsg::StatReply { req, digest: None },
            HydfsMsg::Describe { req, .. } => {
                HydfsMsg::DescribeReply { req, meta: Err(no), deleted: Vec::new() }
            }
            HydfsMsg::Delete { req, .. } => HydfsMsg::DeleteReply { req, result: Err(no) },
            HydfsMsg::Remove { req, .. } => HydfsMsg::RemoveReply { req, result: Err(no) },
            HydfsMsg::RemoteAppend { req, .. } => {
                let result = Err(format!("{}: {no}", self.me));
                HydfsMsg::RemoteAppendReply { req, result }
            }
            _ => return true, // offers and hand-off answers expect no reply
        };
        self.send(from, reply);
        true
    }

    /// Copies a write needs before its acknowledgement (between 1 and the replication factor).
    pub(super) fn min_copies(&self) -> usize {
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
    fn accept_write(
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
        let rec = self.store.file_mut(name);
        match write.kind {
            WriteKind::Create => match &rec.create {
                Some(c) if c.stamp != write.stamp && !replace => return Accepted::OtherCreate,
                Some(c) if c.stamp == write.stamp => {}
                _ => rec.create = Some(write.clone()),
            },
            WriteKind::Append => {
                if !rec.contains(&write.stamp) {
                    rec.pending.insert(write.stamp, write.clone());
                }
            }
        }
        if let (Some(bytes), [part]) = (inline, write.parts.as_slice()) {
            if let Err(e) = self.store.put_part(name, write.stamp, 0, *part, bytes) {
                self.storage_failed(&e.to_string());
                self.fail_writes(Some((name, write.stamp)), &e.to_string());
                return Accepted::StorageFailed(e.to_string());
            }
        }
        self.ensure_write(now, name, write, sources, FetchClass::Write);
        Accepted::Yes
    }

    fn drive_write(&mut self, now: Time, op: u64) {
        let Some(w) = self.server.writes.get(&op) else { return };
        if !w.checking.is_empty() {
            return;
        }
        let targets = self.replicas(&w.name);
        let (name, write, inline, source) = (w.name.clone(), w.write.clone(), w.inline.clone(), w.source);
        let create = if write.kind == WriteKind::Append {
            w.create.and_then(|c| self.create_meta(&name, c))
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
            let sources = vec![self.me, source];
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

    pub(super) fn on_replicate(&mut self, now: Time, from: NodeAddr, msg: ReplicateRequest) {
        let ReplicateRequest { req, name, write, inline, sources, create } = msg;
        self.handled("replicate", &name, from);
        if write.len() > self.cfg.max_write_bytes || !self.parts_fit(&write) {
            let limit = self.cfg.max_write_bytes;
            self.send(from, HydfsMsg::ReplicateReply { req, result: Err(Refusal::TooLarge { limit }) });
            return;
        }
        let of = create.as_ref().map(|c| c.stamp);
        let refusal = match self.accept_write(now, &name, &write, inline.as_deref(), &sources, of) {
            Accepted::Yes => {
                // An append reaching a replica that lacks its file's create (a replica new to
                // the file): the create comes with it, and its bytes follow.
                if let Some(c) = create.filter(|c| c.kind == WriteKind::Create) {
                    if self.store.file(&name).is_some_and(|r| r.create.is_none()) {
                        self.store.file_mut(&name).create = Some(c.clone());
                        self.ensure_write(now, &name, &c, &sources, FetchClass::Repair);
                    }
                }
                None
            }
            Accepted::OtherCreate => Some(Refusal::AlreadyExists),
            Accepted::Deleted => Some(Refusal::Deleted),
            Accepted::StorageFailed(why) => Some(Refusal::StorageFailed(format!("{}: {why}", self.me))),
        };
        if let Some(r) = refusal {
            self.send(from, HydfsMsg::ReplicateReply { req, result: Err(r) });
            return;
        }
        let until = now + self.cfg.request_timeout;
        self.server.replica_waits.push(ReplicaWait { reply_to: from, req, name, stamp: write.stamp, until });
    }

    pub(super) fn on_replicate_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<(), Refusal>,
    ) {
        let Some(Outstanding { what: Pending::Replicate { op }, .. }) = self.server.requests.remove(&req)
        else {
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
            Err(r @ Refusal::NameTooLong { .. }) => self.fail_write(op, r),
            Err(_) => self.arm_retry(now),
        }
    }

    /// A member answered whether it holds the name a create is about to take.
    pub(super) fn on_exists_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        digest: Option<FileDigest>,
    ) {
        let Some(Outstanding { what: Pending::Exists { op }, .. }) = self.server.requests.remove(&req) else {
            return;
        };
        let Some(w) = self.server.writes.get_mut(&op) else { return };
        w.checking.remove(&from);
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
    fn abandon_create(&mut self, name: &FileName, stamp: Stamp) {
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

    pub(super) fn is_server_request(&self, req: ReqId) -> bool {
        self.server.requests.contains_key(&req)
    }

    /// Ends the wait for a server request's answer: where it went, and why it was sent.
    pub(super) fn take_server_request(&mut self, req: ReqId) -> Option<(NodeAddr, Pending)> {
        self.server.requests.remove(&req).map(|o| (o.to, o.what))
    }

    // ---- merges -------------------------------------------------------------------------------

    pub(super) fn on_merge(&mut self, now: Time, from: NodeAddr, req: ReqId, name: FileName) {
        self.handled("merge", &name, from);
        if self.store.file(&name).is_none_or(|r| r.create.is_none()) {
            self.send(from, HydfsMsg::MergeReply { req, result: Err(Refusal::NotFound) });
            return;
        }
        if !self.replicas(&name).contains(&self.me) {
            self.send(from, HydfsMsg::MergeReply { req, result: Err(Refusal::NotReplica) });
            return;
        }
        if let Some(limit) = self.at_transfer_limit() {
            self.send(from, HydfsMsg::MergeReply { req, result: Err(Refusal::Busy { limit }) });
            return;
        }
        if self.server.merges.contains_key(&name) {
            self.server.merge_queue.entry(name).or_default().push_back((from, req, now));
            return;
        }
        self.start_merge(now, from, req, name);
    }

    fn start_merge(&mut self, now: Time, client: NodeAddr, client_req: ReqId, name: FileName) {
        self.stats.merges_coordinated += 1;
        let targets = self.replicas(&name);
        let mut found = BTreeMap::new();
        if let Some(rec) = self.store.file(&name) {
            for w in rec.pending.values().filter(|w| self.store.is_complete(&name, w)) {
                found.insert(w.stamp, (w.clone(), vec![self.me]));
            }
        }
        let mut replied = BTreeSet::new();
        replied.insert(self.me);
        let me = self.me;
        for t in targets.iter().copied().filter(|t| *t != me) {
            let n = name.clone();
            self.ask(now, t, Pending::Collect { name: name.clone() }, |req| HydfsMsg::Collect {
                req,
                name: n,
            });
        }
        self.server.merges.insert(
            name,
            CoordMerge {
                client,
                client_req,
                started: now,
                targets,
                phase: MergePhase::Collecting { replied, found },
                bytes_moved: 0,
            },
        );
        self.arm_retry(now);
    }

    pub(super) fn on_collect(&mut self, from: NodeAddr, req: ReqId, name: FileName) {
        let result = match self.store.file(&name) {
            Some(rec) => {
                Ok(rec.pending.values().filter(|w| self.store.is_complete(&name, w)).cloned().collect())
            }
            None => Err(Refusal::NotFound),
        };
        self.send(from, HydfsMsg::CollectReply { req, result });
    }

    pub(super) fn on_collect_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<Vec<WriteMeta>, Refusal>,
    ) {
        let Some(Outstanding { what: Pending::Collect { name }, .. }) = self.server.requests.remove(&req)
        else {
            return;
        };
        let Some(m) = self.server.merges.get_mut(&name) else { return };
        let MergePhase::Collecting { replied, found } = &mut m.phase else { return };
        replied.insert(from);
        for w in result.unwrap_or_default() {
            found.entry(w.stamp).or_insert_with(|| (w.clone(), Vec::new())).1.push(from);
        }
        self.advance_merge(now, &name);
    }

    fn advance_merge(&mut self, now: Time, name: &FileName) {
        let Some(m) = self.server.merges.get_mut(name) else { return };
        match &mut m.phase {
            MergePhase::Collecting { replied, found } => {
                if !m.targets.iter().all(|t| replied.contains(t)) {
                    return;
                }
                let merged: BTreeSet<Stamp> = self
                    .store
                    .file(name)
                    .map(|r| r.merged.iter().map(|w| w.stamp).collect())
                    .unwrap_or_default();
                let found = std::mem::take(found);
                let union: Vec<WriteMeta> = found
                    .values()
                    .filter(|(w, _)| !merged.contains(&w.stamp))
                    .map(|(w, _)| w.clone())
                    .collect();
                let base = self.store.merged_hash(name).unwrap_or(0);
                m.phase = MergePhase::Fetching { union: union.clone(), base };
                for (w, sources) in found.into_values() {
                    if merged.contains(&w.stamp) {
                        continue;
                    }
                    let rec = self.store.file_mut(name);
                    if !rec.contains(&w.stamp) {
                        rec.pending.insert(w.stamp, w.clone());
                    }
                    self.ensure_write(now, name, &w, &sources, FetchClass::Merge);
                }
                self.advance_merge(now, name);
            }
            MergePhase::Fetching { union, base } => {
                if !union.iter().all(|w| self.store.is_complete(name, w)) {
                    return;
                }
                let collected_on = *base;
                let mut appended = std::mem::take(union);
                appended.sort_by_key(|w| w.stamp);
                if self.cfg.bug(PlantedBug::MergeReversesOrder) {
                    appended.reverse();
                }
                if self.cfg.bug(PlantedBug::MergeLastWriterWins) {
                    let mut last: BTreeMap<crate::id::MemberId, WriteMeta> = BTreeMap::new();
                    for w in appended {
                        last.insert(w.stamp.client, w);
                    }
                    appended = last.into_values().collect();
                    appended.sort_by_key(|w| w.stamp);
                    let keep: BTreeSet<Stamp> = appended.iter().map(|w| w.stamp).collect();
                    self.store.file_mut(name).pending.retain(|s, _| keep.contains(s));
                }
                // The fence: what was collected is installed only on the merged order it was
                // collected against. Another coordinator of the same file (a client that failed
                // over from a coordinator falsely declared failed, or whose ring differs) may have
                // merged some of these writes meanwhile; installing them again would append them
                // twice.
                let base = if self.cfg.bug(PlantedBug::MergeUnfenced) {
                    self.store.merged_hash(name).unwrap_or(0)
                } else {
                    collected_on
                };
                debug_assert!(
                    self.cfg.bug(PlantedBug::MergeUnfenced)
                        || self.store.merged_hash(name) != Some(base)
                        || self.store.file(name).is_none_or(|rec| {
                            let held: BTreeSet<&Stamp> = rec.merged.iter().map(|w| &w.stamp).collect();
                            appended.iter().all(|w| !held.contains(&w.stamp))
                        }),
                    "a merge installs only writes its base does not hold"
                );
                if !self.install_locally(name, base, &appended) {
                    let m = self.server.merges.remove(name).expect("present");
                    if self.store.file(name).is_none() || !self.replicas(name).contains(&self.me) {
                        // The copy was handed off or dropped meanwhile: another replica merges.
                        let r = Refusal::NotReplica;
                        self.send(m.client, HydfsMsg::MergeReply { req: m.client_req, result: Err(r) });
                        return self.next_merge(now, name);
                    }
                    // Someone else's merge changed the file meanwhile: collect again, on the
                    // merge's own clock (`coordinator_timeout` still bounds it).
                    self.start_merge(now, m.client, m.client_req, name.clone());
                    if let Some(again) = self.server.merges.get_mut(name) {
                        again.started = m.started;
                    }
                    return;
                }
                // The coordinator's own copy counts once it is synced (see `Installing`).
                let m = self.server.merges.get_mut(name).expect("present");
                let mut acked = BTreeSet::new();
                if self.cfg.bug(PlantedBug::MergeSkipsReplicas) {
                    acked.extend(m.targets.iter().copied());
                }
                m.phase = MergePhase::Installing { base, appended, acked, asked: BTreeSet::new() };
                self.send_installs(now, name);
                self.advance_merge(now, name);
            }
            MergePhase::Installing { acked, .. } if !acked.contains(&self.me) => {
                match self.store.sync() {
                    Ok(()) => {
                        self.stats.syncs += 1;
                        if let Some(CoordMerge { phase: MergePhase::Installing { acked, .. }, .. }) =
                            self.server.merges.get_mut(name)
                        {
                            acked.insert(self.me);
                        }
                        self.advance_merge(now, name);
                    }
                    Err(StorageError::InProgress) => self.poll_sync(now),
                    Err(e) => {
                        // The merge is installed in memory but not durable: give up on it; the
                        // client hears Unavailable and a later merge starts from what is on disk.
                        self.storage_failed(&e.to_string());
                        let m = self.server.merges.remove(name).expect("present");
                        let why = Refusal::Unavailable(format!("storage failed: {e}"));
                        self.send(m.client, HydfsMsg::MergeReply { req: m.client_req, result: Err(why) });
                        self.next_merge(now, name);
                    }
                }
            }
            MergePhase::Installing { acked, appended, .. } => {
                let targets: Vec<NodeAddr> =
                    m.targets.iter().copied().filter(|t| self.ring.contains(*t) || *t == self.me).collect();
                if !targets.iter().all(|t| acked.contains(t)) {
                    return;
                }
                let appended_n = appended.len() as u32;
                let m = self.server.merges.remove(name).expect("present");
                let summary = MergeSummary {
                    appended: appended_n,
                    replicas: targets.clone(),
                    bytes_moved: m.bytes_moved,
                };
                let merged_hash = self.store.merged_hash(name).unwrap_or(0);
                if !self.cfg.bug(PlantedBug::MergeNeverAnswers) {
                    self.send(m.client, HydfsMsg::MergeReply { req: m.client_req, result: Ok(summary) });
                }
                self.events.push_back(HydfsEvent::MergeCommitted {
                    name: name.clone(),
                    replicas: targets,
                    merged_hash,
                });
                self.next_merge(now, name);
            }
        }
    }

    fn next_merge(&mut self, now: Time, name: &FileName) {
        if let Some(q) = self.server.merge_queue.get_mut(name) {
            if let Some((client, req, _)) = q.pop_front() {
                if q.is_empty() {
                    self.server.merge_queue.remove(name);
                }
                self.start_merge(now, client, req, name.clone());
            }
        }
    }

    fn send_installs(&mut self, now: Time, name: &FileName) {
        let Some(m) = self.server.merges.get(name) else { return };
        let MergePhase::Installing { base, appended, acked, asked } = &m.phase else { return };
        let to: Vec<NodeAddr> =
            m.targets.iter().copied().filter(|t| !acked.contains(t) && !asked.contains(t)).collect();
        let (base, appended) = (*base, appended.clone());
        for t in to {
            let (n, a) = (name.clone(), appended.clone());
            let sources = vec![self.me];
            self.ask(now, t, Pending::Install { name: name.clone() }, |req| {
                HydfsMsg::Install(InstallRequest { req, name: n, base, appended: a, sources })
            });
            if let Some(CoordMerge { phase: MergePhase::Installing { asked, .. }, .. }) =
                self.server.merges.get_mut(name)
            {
                asked.insert(t);
            }
        }
    }

    /// Whether this copy's merged order already holds the install of `appended` on `base`: it is
    /// `base` followed by `appended` (with more merged after them, from later merges, allowed).
    /// A replica that applied an install answers a second copy of it as done; otherwise it would
    /// take its own progress for being behind, and the coordinator would ask again and again.
    fn install_applied(&self, name: &FileName, base: u64, appended: &[WriteMeta]) -> bool {
        let Some(rec) = self.store.file(name) else { return false };
        let at = match appended.first() {
            None => rec.merged.len(),
            Some(first) => match rec.merged.iter().position(|w| w.stamp == first.stamp) {
                Some(at) => at,
                None => return false,
            },
        };
        let holds = rec.merged[at..]
            .iter()
            .map(|w| w.stamp)
            .take(appended.len())
            .eq(appended.iter().map(|w| w.stamp));
        let prefix = || order_hash(rec.create.iter().chain(&rec.merged[..at]).map(|w| &w.stamp));
        holds && prefix() == base
    }

    /// Moves `appended` from pending to merged, in order, if the merged content is still `base`.
    fn install_locally(&mut self, name: &FileName, base: u64, appended: &[WriteMeta]) -> bool {
        if self.store.merged_hash(name) != Some(base) {
            return false;
        }
        let last_writer_wins = self.cfg.bug(PlantedBug::MergeLastWriterWins);
        let rec = self.store.file_mut(name);
        for w in appended {
            rec.pending.remove(&w.stamp);
            if last_writer_wins {
                rec.pending.retain(|s, _| s.client != w.stamp.client || *s > w.stamp);
            }
            rec.merged.push(w.clone());
        }
        rec.generation += 1;
        true
    }

    pub(super) fn on_install(&mut self, now: Time, from: NodeAddr, msg: InstallRequest) {
        let InstallRequest { req, name, base, appended, sources } = msg;
        self.handled("install merge", &name, from);
        if self.install_applied(&name, base, &appended) {
            // Already here: the same install again (a resend after a lost answer, a frame that
            // arrived twice), or nothing to install on a copy that is at `base`.
            self.send(from, HydfsMsg::InstallReply { req, result: Ok(0) });
            return;
        }
        let current = self.store.merged_hash(&name);
        if current != Some(base) {
            // This copy is not where the coordinator's is: repair it from the coordinator; the
            // coordinator asks again.
            self.send(from, HydfsMsg::InstallReply { req, result: Err(Refusal::Behind) });
            let n = name.clone();
            self.ask(now, from, Pending::Describe { name: name.clone() }, |req| HydfsMsg::Describe {
                req,
                name: n,
                needs: Vec::new(),
            });
            return;
        }
        for w in &appended {
            let rec = self.store.file_mut(&name);
            if !rec.contains(&w.stamp) {
                rec.pending.insert(w.stamp, w.clone());
            }
            self.ensure_write(now, &name, w, &sources, FetchClass::Merge);
        }
        let until = now + self.cfg.request_timeout;
        self.server.installs.push(InstallWait { reply_to: from, req, name, base, appended, until });
    }

    pub(super) fn on_install_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<u64, Refusal>,
    ) {
        let Some(Outstanding { what: Pending::Install { name }, .. }) = self.server.requests.remove(&req)
        else {
            return;
        };
        let Some(m) = self.server.merges.get_mut(&name) else { return };
        let MergePhase::Installing { acked, asked, .. } = &mut m.phase else { return };
        asked.remove(&from);
        match result {
            Ok(bytes) => {
                acked.insert(from);
                m.bytes_moved += bytes;
                self.advance_merge(now, &name);
            }
            Err(_) => self.arm_retry(now),
        }
    }

    // ---- parts --------------------------------------------------------------------------------

    /// Starts fetching every part of `w` this node lacks (as the fetch window allows).
    fn ensure_write(
        &mut self,
        now: Time,
        name: &FileName,
        w: &WriteMeta,
        sources: &[NodeAddr],
        class: FetchClass,
    ) {
        for (i, part) in w.parts.iter().enumerate() {
            let i = i as u32;
            let key = (name.clone(), w.stamp, i);
            if self.store.has_part(name, w.stamp, i) {
                continue;
            }
            if self.has_upload(name, w.stamp) {
                self.server.local_copies.insert(key);
                continue;
            }
            let srcs: Vec<NodeAddr> = sources.iter().copied().filter(|s| *s != self.me).collect();
            if let Some(job) = self.server.fetches.get_mut(&key) {
                for s in srcs {
                    if !job.sources.contains(&s) {
                        job.sources.push(s);
                    }
                }
                job.class = job.class.min(class);
                if job.in_flight.is_none() {
                    self.next_fetch(now, key);
                }
                continue;
            }
            if srcs.is_empty() {
                continue;
            }
            self.server.fetches.insert(
                key.clone(),
                FetchJob { part: *part, sources: srcs, next: 0, in_flight: None, class },
            );
            self.next_fetch(now, key);
        }
    }

    /// Asks the job's next source for its part, if the window (and, for a repair, the rate
    /// limit) allows; otherwise the job waits for [`Hydfs::pump_fetches`].
    fn next_fetch(&mut self, now: Time, key: (FileName, Stamp, u32)) {
        let Some(job) = self.server.fetches.get(&key) else { return };
        if job.next >= job.sources.len() {
            // Every source failed; anti-entropy will find another copy later.
            self.server.fetches.remove(&key);
            return self.pump_fetches(now);
        }
        let in_flight = self.server.fetches.values().filter(|j| j.in_flight.is_some()).count();
        if in_flight >= self.cfg.fetch_window.max(1) {
            return;
        }
        let (class, len) = (job.class, job.part.len as i64);
        if class == FetchClass::Repair && !self.take_repair_tokens(now, len) {
            return;
        }
        let job = self.server.fetches.get_mut(&key).expect("present");
        let to = job.sources[job.next];
        job.next += 1;
        let (name, stamp, part) = key.clone();
        let req = self.ask(now, to, Pending::Fetch { key: key.clone() }, |req| {
            HydfsMsg::Fetch(FetchRequest { req, name, stamp, part })
        });
        if let Some(job) = self.server.fetches.get_mut(&key) {
            job.in_flight = Some(req);
        }
    }

    /// Copies up to [`LOCAL_COPIES_PER_TICK`] parts of this node's own uploads into its store.
    fn copy_local_parts(&mut self) {
        for _ in 0..LOCAL_COPIES_PER_TICK {
            let Some((name, stamp, part)) = self.server.local_copies.pop_first() else { return };
            let meta = self
                .store
                .file(&name)
                .and_then(|r| r.find(&stamp))
                .and_then(|w| w.parts.get(part as usize).copied());
            let (Some(meta), Some(Ok(bytes))) = (meta, self.upload_part(&name, stamp, part)) else {
                continue; // the write is gone, or its source failed (which fails the write)
            };
            match self.store.put_part(&name, stamp, part, meta, &bytes) {
                Ok(_) => {}
                Err(e) => {
                    self.storage_failed(&e.to_string());
                    self.fail_writes(Some((&name, stamp)), &e.to_string());
                }
            }
        }
    }

    /// Starts waiting fetches while the window has room: writes, then merges, then repairs.
    fn pump_fetches(&mut self, now: Time) {
        let window = self.cfg.fetch_window.max(1);
        let mut in_flight = self.server.fetches.values().filter(|j| j.in_flight.is_some()).count();
        if in_flight >= window {
            return;
        }
        let mut waiting: Vec<(FetchClass, (FileName, Stamp, u32))> = self
            .server
            .fetches
            .iter()
            .filter(|(_, j)| j.in_flight.is_none())
            .map(|(k, j)| (j.class, k.clone()))
            .collect();
        waiting.sort();
        for (_, key) in waiting {
            if in_flight >= window {
                break;
            }
            self.next_fetch(now, key.clone());
            if self.server.fetches.get(&key).is_some_and(|j| j.in_flight.is_some()) {
                in_flight += 1;
            } else if self.server.repair_wake.is_some() {
                break; // the rate limit holds back every later repair too
            }
        }
    }

    /// Takes `len` bytes from the repair budget, or arms a wake-up for when it allows them.
    fn take_repair_tokens(&mut self, now: Time, len: i64) -> bool {
        let rate = self.cfg.repair_bytes_per_sec as i64;
        if rate <= 0 {
            return true;
        }
        let burst = (rate / 4).max(self.cfg.chunk_bytes as i64);
        let elapsed = now.0.saturating_sub(self.server.repair_refilled.0) as i64;
        let s = &mut self.server;
        s.repair_tokens = (s.repair_tokens + rate.saturating_mul(elapsed) / 1000).min(burst);
        s.repair_refilled = now;
        if s.repair_tokens >= 0 {
            s.repair_tokens -= len;
            return true;
        }
        let wait_ms = ((-s.repair_tokens) * 1000 + rate - 1) / rate;
        s.repair_wake = Some(now + crate::time::Millis(wait_ms.max(1) as u64));
        false
    }

    pub(super) fn on_fetch(&mut self, now: Time, from: NodeAddr, msg: FetchRequest) {
        let FetchRequest { req, name, stamp, part } = msg;
        let declared = self.store.part_meta(&name, stamp, part);
        let result = match self.store.read_part(&name, stamp, part) {
            Ok(bytes) => match declared {
                Some(meta) => Ok(PartBytes { meta, bytes }),
                None => Err(Refusal::NotFound),
            },
            Err(PartError::Corrupt) => {
                self.corruption(&name, stamp, part);
                Err(Refusal::Corrupt)
            }
            Err(PartError::Lost(e)) => {
                self.part_lost(&name, stamp, part, &e);
                Err(Refusal::Unavailable(format!("{}: {e}", self.me)))
            }
            Err(PartError::Missing) => match self.upload_part(&name, stamp, part) {
                Some(Ok(bytes)) => {
                    let meta =
                        self.upload_part_meta(&name, stamp, part).unwrap_or_else(|| PartMeta::of(&bytes));
                    Ok(PartBytes { meta, bytes })
                }
                Some(Err(e)) => {
                    self.upload_failed(now, &name, stamp, e.clone());
                    Err(Refusal::Unavailable(e))
                }
                None => Err(Refusal::NotFound),
            },
        };
        self.send(from, HydfsMsg::FetchReply { req, result });
    }

    pub(super) fn on_fetch_reply(
        &mut self,
        now: Time,
        _from: NodeAddr,
        req: ReqId,
        result: Result<PartBytes, Refusal>,
    ) {
        let Some(Outstanding { what: Pending::Fetch { key }, .. }) = self.server.requests.remove(&req) else {
            return;
        };
        let Some(job) = self.server.fetches.get_mut(&key) else { return };
        if job.in_flight != Some(req) {
            return;
        }
        job.in_flight = None;
        let (part, for_merge) = (job.part, job.class == FetchClass::Merge);
        let (name, stamp, i) = key.clone();
        if !self.store.file(&name).is_some_and(|r| r.contains(&stamp)) {
            // The write left this node's index meanwhile (dropped, deleted, lost a create race):
            // its bytes would be a block nothing points at.
            self.server.fetches.remove(&key);
            return self.pump_fetches(now);
        }
        // The bytes are checked against the metadata this node holds for the part (what the
        // source declares is for clients, which have nothing else to check against).
        if let Ok(PartBytes { bytes, .. }) = result {
            match self.store.put_part(&name, stamp, i, part, &bytes) {
                Ok(true) => {
                    self.server.fetches.remove(&key);
                    self.stats.parts_fetched += 1;
                    self.stats.bytes_fetched += bytes.len() as u64;
                    if for_merge {
                        self.stats.bytes_fetched_for_merges += bytes.len() as u64;
                        self.credit_merge_bytes(&name, bytes.len() as u64);
                    }
                    return self.pump_fetches(now);
                }
                Ok(false) => {} // wrong bytes: try the next source
                Err(e) => {
                    self.storage_failed(&e.to_string());
                    self.server.fetches.remove(&key);
                    self.fail_writes(Some((&name, stamp)), &e.to_string());
                    return self.pump_fetches(now);
                }
            }
        }
        self.next_fetch(now, key);
    }

    fn credit_merge_bytes(&mut self, name: &FileName, bytes: u64) {
        // As coordinator the bytes count towards its own merge; as replica they are reported back
        // with the install's answer. Never both, and nothing is kept when neither is running.
        if let Some(m) = self.server.merges.get_mut(name) {
            m.bytes_moved += bytes;
        } else if self.server.installs.iter().any(|w| &w.name == name) {
            *self.server.install_bytes.entry(name.clone()).or_default() += bytes;
        }
    }

    /// Reports a request this node began handling (one event per operation, for the node's log).
    pub(super) fn handled(&mut self, what: &'static str, name: &FileName, from: NodeAddr) {
        self.events.push_back(HydfsEvent::Handled { what, name: name.clone(), from });
    }

    pub(super) fn corruption(&mut self, name: &FileName, stamp: Stamp, part: u32) {
        self.stats.corrupt_parts_detected += 1;
        self.events.push_back(HydfsEvent::CorruptionDetected { name: name.clone(), stamp, part });
    }

    /// A part whose block storage no longer has or cannot read: the store dropped it from its
    /// index, so the copy is incomplete and anti-entropy fetches the part again from a replica.
    pub(super) fn part_lost(&mut self, name: &FileName, stamp: Stamp, part: u32, why: &StorageError) {
        self.stats.lost_parts_detected += 1;
        self.events.push_back(HydfsEvent::PartLost { name: name.clone(), stamp, part, why: why.to_string() });
    }

    /// Storage failed while storing `only` (or while syncing, for every write waiting on it):
    /// replicas refuse and coordinators fail those writes now, naming the cause.
    fn fail_writes(&mut self, only: Option<(&FileName, Stamp)>, why: &str) {
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

    /// This node dropped its copy of `name`, the file created by `create` (deleted): the work
    /// on that copy ends now. Writes of that file it coordinates, merges, installs and replica
    /// answers waiting for its writes are refused as `Deleted`; fetches, local copies, offers
    /// and hand-off state of the name are forgotten.
    pub(super) fn forget_file_work(&mut self, now: Time, name: &FileName, create: Stamp) {
        let ops: Vec<u64> = self
            .server
            .writes
            .iter()
            .filter(|(_, w)| &w.name == name && w.create.is_none_or(|c| c == create))
            .map(|(op, _)| *op)
            .collect();
        for op in ops {
            self.fail_write(op, Refusal::Deleted);
        }
        let held = |h: &Hydfs, s: &Stamp| h.store.file(name).is_some_and(|r| r.contains(s));
        let waits = std::mem::take(&mut self.server.replica_waits);
        for w in waits {
            if &w.name == name && !held(self, &w.stamp) {
                self.send(w.reply_to, HydfsMsg::ReplicateReply { req: w.req, result: Err(Refusal::Deleted) });
            } else {
                self.server.replica_waits.push(w);
            }
        }
        if self.store.file(name).is_none() {
            if let Some(m) = self.server.merges.remove(name) {
                self.send(
                    m.client,
                    HydfsMsg::MergeReply { req: m.client_req, result: Err(Refusal::Deleted) },
                );
            }
            for (client, req, _) in self.server.merge_queue.remove(name).unwrap_or_default() {
                self.send(client, HydfsMsg::MergeReply { req, result: Err(Refusal::Deleted) });
            }
            let installs = std::mem::take(&mut self.server.installs);
            for w in installs {
                if &w.name == name {
                    self.send(
                        w.reply_to,
                        HydfsMsg::InstallReply { req: w.req, result: Err(Refusal::Deleted) },
                    );
                } else {
                    self.server.installs.push(w);
                }
            }
            self.server.offers_in.retain(|o| &o.meta.name != name);
            self.server.offers_taken.remove(name);
            self.server.install_bytes.remove(name);
        }
        let gone = |h: &Hydfs, (n, s, _): &(FileName, Stamp, u32)| n == name && !held(h, s);
        let fetches: Vec<(FileName, Stamp, u32)> =
            self.server.fetches.keys().filter(|k| gone(self, k)).cloned().collect();
        for k in fetches {
            self.server.fetches.remove(&k);
        }
        let copies: Vec<(FileName, Stamp, u32)> =
            self.server.local_copies.iter().filter(|k| gone(self, k)).cloned().collect();
        for k in copies {
            self.server.local_copies.remove(&k);
        }
        let store = &self.store;
        self.server
            .incomplete_since
            .retain(|(n, s), _| n != name || store.file(n).is_some_and(|r| r.contains(s)));
        self.pump_fetches(now);
    }

    /// Ends a coordinated write with `why`, releasing the name if it was a create.
    pub(super) fn fail_write(&mut self, op: u64, why: Refusal) {
        let Some(w) = self.server.writes.remove(&op) else { return };
        if w.write.kind == WriteKind::Create {
            self.abandon_create(&w.name, w.write.stamp);
        }
        self.send(w.client, HydfsMsg::WriteReply { req: w.client_req, result: Err(why), create: None });
    }

    pub(super) fn storage_failed(&mut self, why: &str) {
        self.events.push_back(HydfsEvent::StorageFailed { reason: why.to_string() });
    }

    // ---- reads --------------------------------------------------------------------------------

    pub(super) fn on_read(&mut self, _now: Time, from: NodeAddr, msg: ReadRequest) {
        let ReadRequest { req, name, offset, view, needs } = msg;
        if offset == 0 {
            self.handled("get", &name, from);
        }
        let result = self.read_chunk(&name, offset, view, &needs);
        self.send(from, HydfsMsg::ReadReply { req, result });
    }

    fn read_chunk(
        &mut self,
        name: &FileName,
        offset: u64,
        view: Option<u64>,
        needs: &[Needs],
    ) -> Result<super::message::ReadChunk, Refusal> {
        let Some(mut meta) = self.store.meta(name) else { return Err(Refusal::NotFound) };
        if meta.create.is_none() {
            return Err(Refusal::NotFound);
        }
        if self.misses(&meta, needs) {
            return Err(Refusal::Behind);
        }
        // Pending appends still arriving are not part of this copy yet; a merged part that is
        // missing (lost to corruption) makes the copy unreadable until it is repaired.
        meta.pending.retain(|w| !meta.incomplete.contains(&w.stamp));
        if meta.create.iter().chain(&meta.merged).any(|w| meta.incomplete.contains(&w.stamp)) {
            return Err(Refusal::Unavailable("a copy of this file is being repaired".into()));
        }
        let id = meta.digest().hash;
        if view.is_some_and(|v| v != id) {
            return Err(Refusal::ViewChanged);
        }
        let total: u64 = meta.all_writes().map(|w| w.len()).sum();
        let end = total.min(offset.saturating_add(self.chunk_bytes_for_reads() as u64));
        let mut bytes = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = 0u64;
        for w in meta.all_writes() {
            for (i, p) in w.parts.iter().enumerate() {
                let (start, stop) = (pos, pos + p.len as u64);
                pos = stop;
                if stop <= offset || start >= end {
                    continue;
                }
                let data = match self.store.read_part(name, w.stamp, i as u32) {
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
                    bytes = data; // the chunk is exactly this part: no copy
                    continue;
                }
                bytes.extend_from_slice(&data[from as usize..(to as usize).min(data.len())]);
            }
        }
        let writes = if offset == 0 { meta.all_writes().map(|w| w.stamp).collect() } else { Vec::new() };
        Ok(super::message::ReadChunk { view: id, total_len: total, writes, offset, bytes })
    }

    /// Whether this node's copy `meta` lacks (or has not complete) a write a client needs.
    /// Writes of a file this node holds the tombstone of are needed no more.
    fn misses(&self, meta: &FileMeta, needs: &[Needs]) -> bool {
        let mut needed = needs.iter().filter(|n| !self.tombstones.contains(&meta.name, n.create)).peekable();
        if needed.peek().is_none() {
            return false;
        }
        let present: BTreeSet<Stamp> =
            meta.all_writes().map(|w| w.stamp).filter(|s| !meta.incomplete.contains(s)).collect();
        needed.any(|n| n.writes.iter().any(|s| !present.contains(s)))
    }

    /// Whether this node coordinates a create of `name` that is not committed yet. Its copy is
    /// then left out of anti-entropy (inventories, descriptions and hand-off offers): an
    /// unacknowledged create must never spread to replicas that hold another, acknowledged,
    /// create of the name and replace it there as the earlier one. Existence checks still see
    /// it, so two coordinators of one name never both go on.
    pub(super) fn creating(&self, name: &FileName) -> bool {
        self.server.writes.values().any(|w| w.name == *name && w.write.kind == WriteKind::Create)
    }

    /// This node's whole view of a file, for anti-entropy (no `needs`) and for clients.
    pub(super) fn describe(&self, name: &FileName, needs: &[Needs]) -> Result<FileMeta, Refusal> {
        if self.creating(name) {
            return Err(Refusal::NotFound);
        }
        let meta = self.store.meta(name).ok_or(Refusal::NotFound)?;
        if self.misses(&meta, needs) {
            return Err(Refusal::Behind);
        }
        Ok(meta)
    }

    fn chunk_bytes_for_reads(&self) -> usize {
        if self.cfg.bug(PlantedBug::UnchunkedTransfers) {
            usize::MAX >> 1
        } else {
            self.cfg.chunk_bytes
        }
    }

    // ---- anti-entropy and hand-off ------------------------------------------------------------

    pub(super) fn anti_entropy(&mut self, now: Time) {
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
            let local = inventory_hash(&self.inventory());
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
        let unowned: Vec<FileName> =
            self.store.files().keys().filter(|n| !self.replicas(n).contains(&self.me)).cloned().collect();
        for name in unowned {
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
        let mut incomplete: BTreeSet<(FileName, Stamp)> = BTreeSet::new();
        for (name, rec) in self.store.files() {
            for w in rec.pending.values().filter(|w| !self.store.is_complete(name, w)) {
                incomplete.insert((name.clone(), w.stamp));
            }
        }
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

    pub(super) fn on_inventory_reply(&mut self, now: Time, from: NodeAddr, req: ReqId, files: InventoryList) {
        if self.server.requests.remove(&req).is_none() {
            return;
        }
        let files = match files {
            InventoryList::Files(files) => self.inventory_pace.received(now, from, files).clone(),
            InventoryList::Unchanged => match self.inventory_pace.unchanged(now, from) {
                Some(files) => files.clone(),
                None => return,
            },
        };
        let mut behind = false;
        for (name, digest) in files {
            if name.as_str().len() > self.cfg.max_name_bytes {
                self.stats.names_refused += 1;
                continue;
            }
            if self.refuse_deleted_copy(now, from, &name, digest.create) {
                continue;
            }
            if !self.replicas(&name).contains(&self.me) {
                continue;
            }
            let mine = self.store.meta(&name).map(|m| m.digest());
            if mine == Some(digest) {
                continue;
            }
            let busy = self
                .server
                .requests
                .values()
                .any(|r| matches!(&r.what, Pending::Describe { name: n } if *n == name));
            behind = true;
            if !busy {
                let n = name.clone();
                self.ask(now, from, Pending::Describe { name }, |req| HydfsMsg::Describe {
                    req,
                    name: n,
                    needs: Vec::new(),
                });
            }
        }
        if behind {
            self.inventory_pace.disturb(now);
        }
    }

    pub(super) fn on_describe_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        meta: Result<FileMeta, Refusal>,
        deleted: Vec<Stamp>,
    ) {
        if self.server.requests.remove(&req).is_none() {
            return;
        }
        if let Ok(meta) = meta {
            self.absorb(now, from, &meta, &deleted);
        }
    }

    /// The creates of the deleted files of `name` this node holds tombstones for (the newest
    /// `MAX_DELETED_IN_REPLY`; copies of older ones are refused by inventories instead), sent
    /// with a file's view so that its receiver drops a copy of a deleted file first.
    pub(super) fn deleted_creates(&self, name: &FileName) -> Vec<Stamp> {
        let mut deleted: Vec<Stamp> = self.tombstones.of_name(name).collect();
        deleted.drain(..deleted.len().saturating_sub(super::MAX_DELETED_IN_REPLY));
        deleted
    }

    /// Reconciles a peer's view of a file into ours and fetches what we lack from it, unless it
    /// is a copy of a deleted file (whose holder is then told so). Returns whether it did.
    fn absorb(&mut self, now: Time, from: NodeAddr, meta: &FileMeta, deleted: &[Stamp]) -> bool {
        let name = &meta.name;
        // A copy of a deleted file this node kept (across a restart, or cut off during the
        // delete) goes before the peer's view is reconciled into it: reconciling would keep its
        // writes under a later file of the same name.
        for create in deleted {
            if self.store.file(name).is_some_and(|r| r.create.as_ref().is_none_or(|c| c.stamp == *create)) {
                self.apply_tombstone(now, name, *create);
            }
        }
        if self.refuse_deleted_copy(now, from, name, meta.create.as_ref().map(|c| c.stamp)) {
            return false;
        }
        let rec: FileRec = reconcile(self.store.file(name), meta);
        self.store.set_file(name, rec.clone());
        let mut sources = vec![from];
        sources.extend(self.replicas(name));
        for w in rec.writes() {
            if !self.store.is_complete(name, w) {
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

    pub(super) fn on_offer(&mut self, now: Time, from: NodeAddr, meta: FileMeta, deleted: Vec<Stamp>) {
        if !self.replicas(&meta.name).contains(&self.me) || self.cfg.bug(PlantedBug::NoReReplication) {
            return;
        }
        if !self.absorb(now, from, &meta, &deleted) {
            return; // a copy of a deleted file: its holder drops it instead of handing it over
        }
        let hash = meta.digest().hash;
        if !self.server.offers_in.iter().any(|o| o.from == from && o.meta.digest().hash == hash) {
            let until = now + self.cfg.request_timeout;
            self.server.offers_in.push(OfferIn { from, meta, until });
        }
    }

    pub(super) fn on_taken(&mut self, now: Time, from: NodeAddr, name: FileName, hash: u64) {
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

    /// Drops acknowledgements from members that have since failed or restarted.
    pub(super) fn forget_answers_from(&mut self, gone: &[NodeAddr]) {
        for w in self.server.writes.values_mut() {
            w.acked.retain(|a| !gone.contains(a));
            w.asked.retain(|a| !gone.contains(a));
        }
        for m in self.server.merges.values_mut() {
            if let MergePhase::Installing { acked, asked, .. } = &mut m.phase {
                acked.retain(|a| !gone.contains(a));
                asked.retain(|a| !gone.contains(a));
            }
            if let MergePhase::Collecting { replied, .. } = &mut m.phase {
                replied.retain(|a| !gone.contains(a));
            }
        }
        for taken in self.server.offers_taken.values_mut() {
            taken.retain(|a, _| !gone.contains(a));
        }
        self.forget_delete_answers(gone);
    }

    pub(super) fn on_ring_changed(&mut self, now: Time) {
        self.server.offers_taken.clear();
        self.inventory_pace.disturb(now);
        self.retarget_now(now);
    }

    /// Writes and merges in flight re-target at once (the ring changed, or a member restarted
    /// and may have lost what it acknowledged): writes stop waiting for replicas that left the
    /// ring and ask the ones that joined it or came back; merges stop waiting for replicas that
    /// left.
    pub(super) fn retarget_now(&mut self, now: Time) {
        if self.cfg.bug(PlantedBug::WriteFailoverWaits) {
            self.arm_retry(now);
        } else {
            self.server.retry_at = Some(now);
        }
    }

    // ---- driving ------------------------------------------------------------------------------

    pub(super) fn server_tick(&mut self, now: Time) {
        // Requests that got no answer in time.
        let expired: Vec<ReqId> =
            self.server.requests.iter().filter(|(_, r)| r.deadline <= now).map(|(id, _)| *id).collect();
        for req in expired {
            self.request_failed(now, req);
        }
        if self.server.retry_at.is_some_and(|t| t <= now) {
            self.server.retry_at = None;
            self.retry(now);
        }
        if self.server.repair_wake.is_some_and(|t| t <= now) {
            self.server.repair_wake = None;
        }
        if self.server.sync_poll.is_some_and(|t| t <= now) {
            self.server.sync_poll = None; // `progress` (after this tick) asks again
        }
        self.pump_fetches(now);
        self.copy_local_parts();
        let until = now;
        self.server.replica_waits.retain(|w| w.until > until);
        self.server.installs.retain(|w| w.until > until);
        // Bytes counted for installs that gave up are not kept for the name.
        let installs = &self.server.installs;
        self.server.install_bytes.retain(|n, _| installs.iter().any(|w| &w.name == n));
        self.server.offers_in.retain(|w| w.until > until);
    }

    fn retry(&mut self, now: Time) {
        let timeout = self.cfg.coordinator_timeout;
        let ops: Vec<u64> = self.server.writes.keys().copied().collect();
        for op in ops {
            let Some(w) = self.server.writes.get(&op) else { continue };
            let allowed = timeout + self.cfg.transfer_allowance(w.write.len());
            if now >= w.started + allowed {
                let w = self.server.writes.remove(&op).expect("present");
                let why = format!("replicas did not confirm the write within {allowed}");
                self.send(
                    w.client,
                    HydfsMsg::WriteReply {
                        req: w.client_req,
                        result: Err(Refusal::Unavailable(why)),
                        create: None,
                    },
                );
                continue;
            }
            // Replicas that left the ring are no longer waited for; new ones are asked.
            let (name, write, source, create) = (w.name.clone(), w.write.clone(), w.source, w.create);
            if !self.store.file(&name).is_some_and(|r| r.contains(&write.stamp)) {
                if let Accepted::Deleted = self.accept_write(now, &name, &write, None, &[source], create) {
                    self.fail_write(op, Refusal::Deleted);
                    continue;
                }
            } else {
                let mut sources = vec![source];
                sources.extend(self.replicas(&name));
                self.ensure_write(now, &name, &write, &sources, FetchClass::Write);
            }
            self.drive_write(now, op);
        }
        let names: Vec<FileName> = self.server.merges.keys().cloned().collect();
        for name in names {
            let Some(m) = self.server.merges.get_mut(&name) else { continue };
            if now >= m.started + timeout {
                let m = self.server.merges.remove(&name).expect("present");
                let why = format!("replicas did not complete the merge within {}", timeout);
                self.send(
                    m.client,
                    HydfsMsg::MergeReply { req: m.client_req, result: Err(Refusal::Unavailable(why)) },
                );
                self.next_merge(now, &name);
                continue;
            }
            let ring = &self.ring;
            let me = self.me;
            m.targets.retain(|t| *t == me || ring.contains(*t));
            if let MergePhase::Collecting { replied, .. } = &m.phase {
                let missing: Vec<NodeAddr> =
                    m.targets.iter().copied().filter(|t| !replied.contains(t)).collect();
                for t in missing {
                    let asked =
                        self.server.requests.values().any(|r| {
                            r.to == t && matches!(&r.what, Pending::Collect { name: n } if *n == name)
                        });
                    if !asked {
                        let n = name.clone();
                        self.ask(now, t, Pending::Collect { name: name.clone() }, |req| HydfsMsg::Collect {
                            req,
                            name: n,
                        });
                    }
                }
            }
            if let Some(CoordMerge { phase: MergePhase::Fetching { union, .. }, .. }) =
                self.server.merges.get(&name)
            {
                let union = union.clone();
                let mut sources = self.replicas(&name);
                sources.retain(|s| *s != self.me);
                for w in &union {
                    self.ensure_write(now, &name, w, &sources, FetchClass::Merge);
                }
            }
            self.send_installs(now, &name);
            self.advance_merge(now, &name);
        }
        self.retry_deletes(now);
        if !self.server.writes.is_empty() || !self.server.merges.is_empty() || self.deletes_running() {
            self.arm_retry(now);
        }
    }

    fn request_failed(&mut self, now: Time, req: ReqId) {
        let Some(r) = self.server.requests.remove(&req) else { return };
        match r.what {
            Pending::Replicate { op } => {
                if let Some(w) = self.server.writes.get_mut(&op) {
                    w.asked.remove(&r.to);
                }
                self.arm_retry(now);
            }
            Pending::Collect { name } => {
                // A replica that cannot be reached is waited for until the ring drops it.
                let _ = name;
                self.arm_retry(now);
            }
            Pending::Install { name } => {
                if let Some(CoordMerge { phase: MergePhase::Installing { asked, .. }, .. }) =
                    self.server.merges.get_mut(&name)
                {
                    asked.remove(&r.to);
                }
                self.arm_retry(now);
            }
            Pending::Fetch { key } => {
                if let Some(job) = self.server.fetches.get_mut(&key) {
                    job.in_flight = None;
                }
                self.next_fetch(now, key);
            }
            Pending::Exists { op } => {
                // An unreachable member cannot hold the name for a reader either; a create does not
                // wait for it.
                if let Some(w) = self.server.writes.get_mut(&op) {
                    w.checking.remove(&r.to);
                }
                self.drive_write(now, op);
            }
            Pending::Remove { op } => self.remove_failed(now, op, r.to),
            Pending::Inventory => self.inventory_pace.forget(now, r.to),
            Pending::Describe { .. } => self.inventory_pace.disturb(now),
        }
    }

    pub(super) fn server_send_failed(&mut self, now: Time, to: NodeAddr) {
        let failed: Vec<ReqId> =
            self.server.requests.iter().filter(|(_, r)| r.to == to).map(|(id, _)| *id).collect();
        for req in failed {
            self.request_failed(now, req);
        }
    }

    /// Sends every answer whose writes are now complete, after one sync that covers them all.
    pub(super) fn progress(&mut self, now: Time) {
        let skip_sync = self.cfg.bug(PlantedBug::AckBeforeSync);
        // One sync covers every answer below; if it fails, no answer that needs it is sent, and
        // the writes waiting for it fail at the end with the cause.
        let mut synced: Option<Result<(), StorageError>> = None;
        let mut sync = |h: &mut Hydfs| -> bool {
            if skip_sync {
                return true;
            }
            synced
                .get_or_insert_with(|| {
                    let was = h.store.is_synced();
                    let r = h.store.sync();
                    match &r {
                        Ok(()) if !was => h.stats.syncs += 1,
                        Ok(()) | Err(StorageError::InProgress) => {}
                        Err(e) => h.storage_failed(&e.to_string()),
                    }
                    r
                })
                .is_ok()
        };
        // Replicas' answers to coordinators.
        let waits = std::mem::take(&mut self.server.replica_waits);
        for w in waits {
            let complete = self.store.file(&w.name).and_then(|r| r.find(&w.stamp)).cloned();
            match complete {
                Some(wm) if self.store.is_complete(&w.name, &wm) && sync(self) => {
                    self.send(w.reply_to, HydfsMsg::ReplicateReply { req: w.req, result: Ok(()) });
                }
                _ => self.server.replica_waits.push(w),
            }
        }
        // Coordinators: own copy, then everyone's.
        let ops: Vec<u64> = self.server.writes.keys().copied().collect();
        for op in ops {
            let Some(w) = self.server.writes.get(&op) else { continue };
            let local = self
                .store
                .file(&w.name)
                .and_then(|r| r.find(&w.write.stamp))
                .is_some_and(|wm| self.store.is_complete(&w.name, wm));
            if local && !w.acked.contains(&self.me) {
                if sync(self) {
                    if let Some(w) = self.server.writes.get_mut(&op) {
                        w.acked.insert(self.me);
                    }
                }
            } else if !local && w.acked.contains(&self.me) {
                // The own copy was lost (a corrupt part found by the scrubber): fetch it again
                // before acknowledging.
                if let Some(w) = self.server.writes.get_mut(&op) {
                    w.acked.remove(&self.me);
                }
            }
            let w = &self.server.writes[&op];
            let targets = self.replicas(&w.name);
            // Every replica of the current view, and never fewer than `min_copies` of them: a view
            // shrunk by a partition must not acknowledge a write that two crashes could then lose.
            let done = if self.cfg.bug(PlantedBug::AckAfterOneReplica) {
                w.acked.contains(&self.me)
            } else {
                targets.len() >= self.min_copies() && targets.iter().all(|t| w.acked.contains(t))
            };
            if done {
                let w = self.server.writes.remove(&op).expect("present");
                let replicas: Vec<NodeAddr> = targets.into_iter().filter(|t| w.acked.contains(t)).collect();
                let create = w.create;
                self.send(
                    w.client,
                    HydfsMsg::WriteReply { req: w.client_req, result: Ok(replicas.clone()), create },
                );
                self.events.push_back(HydfsEvent::WriteCommitted {
                    name: w.name,
                    stamp: w.write.stamp,
                    replicas,
                });
            }
        }
        // Replicas' answers to merge installs.
        let installs = std::mem::take(&mut self.server.installs);
        for w in installs {
            if !w.appended.iter().all(|a| self.store.is_complete(&w.name, a)) {
                self.server.installs.push(w);
                continue;
            }
            let result = if self.install_applied(&w.name, w.base, &w.appended) && !w.appended.is_empty() {
                // A copy of this install that arrived earlier has applied it.
                if sync(self) {
                    Ok(0)
                } else {
                    Err(Refusal::Unavailable("storage failed to sync".into()))
                }
            } else if !self.install_locally(&w.name, w.base, &w.appended) {
                Err(Refusal::Behind)
            } else if sync(self) {
                Ok(self.server.install_bytes.remove(&w.name).unwrap_or(0))
            } else {
                Err(Refusal::Unavailable("storage failed to sync".into()))
            };
            self.send(w.reply_to, HydfsMsg::InstallReply { req: w.req, result });
        }
        // Owners' answers to hand-off offers.
        let offers = std::mem::take(&mut self.server.offers_in);
        for o in offers {
            let mine = self.store.file(&o.meta.name).cloned().unwrap_or_default();
            let covered = o.meta.all_writes().filter(|w| !o.meta.incomplete.contains(&w.stamp)).all(|w| {
                let losing_create =
                    w.kind == WriteKind::Create && mine.create.as_ref().is_some_and(|c| c.stamp < w.stamp);
                losing_create || mine.find(&w.stamp).is_some_and(|m| self.store.is_complete(&o.meta.name, m))
            });
            if covered && sync(self) {
                let hash = o.meta.digest().hash;
                self.send(o.from, HydfsMsg::Taken { name: o.meta.name.clone(), hash });
            } else {
                self.server.offers_in.push(o);
            }
        }
        // Deletes every replica has answered.
        self.progress_deletes(now);
        // Merges waiting for parts.
        let names: Vec<FileName> = self.server.merges.keys().cloned().collect();
        for name in names {
            self.advance_merge(now, &name);
        }
        match synced {
            Some(Err(StorageError::InProgress)) => self.poll_sync(now),
            Some(Err(e)) => self.fail_writes(None, &e.to_string()),
            _ => {}
        }
    }

    /// A background sync is running: come back to the answers waiting for it shortly.
    pub(super) fn poll_sync(&mut self, now: Time) {
        let at = now + crate::time::Millis(SYNC_POLL_MS);
        self.server.sync_poll = Some(self.server.sync_poll.map_or(at, |t| t.min(at)));
    }
}
