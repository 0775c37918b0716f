//! The server half of [`Hydfs`]: replicas, write and merge coordination, fetching parts,
//! anti-entropy and hand-off. When the ring changes (or a member restarts), writes and merges
//! in flight re-target at once rather than at their next retry.
//!
//! This module holds the server's state (`ServerState`: the writes and merges this node
//! coordinates, the answers it owes, its fetches and hand-off offers), the requests it awaits
//! answers to, and the first check every request meets; the work itself is split by concern:
//! * `write.rs`: coordinating writes, and storing them as a replica;
//! * `merge.rs`: coordinating merges, and installing them as a replica;
//! * `fetch.rs`: pulling the parts of writes this node lacks, and serving parts;
//! * `read.rs`: serving reads and a file's whole view;
//! * `repair.rs`: anti-entropy (inventories, scrubbing, orphans) and hand-off;
//! * `tick.rs`: driving it all (timeouts, retries, the answers sent after a sync) and ending or
//!   re-targeting work in flight when the ring changes or a file is deleted.
//!
//! Invariants kept here:
//! * a request sent with `ask` is awaited in `requests` until its answer, its deadline or a
//!   failed send ends the wait; an answer whose `ReqId` is not awaited changes nothing;
//! * limits (each breach answered with a typed [`Refusal`] and counted): a request naming a file
//!   longer than `max_name_bytes` reaches no handler (the write limits: `write.rs`).

mod fetch;
mod merge;
mod read;
mod repair;
mod tick;
mod write;

use super::message::{
    FetchRequest, HydfsMsg, InstallRequest, ReadRequest, Refusal, ReplicateRequest, ReqId, WriteRequest,
};
use super::types::{FileMeta, Stamp, WriteMeta};
use super::{FileName, Hydfs, HydfsEvent, StorageError};
use crate::id::{MemberId, NodeAddr};
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
    /// Answers to coordinators' `Remove`s, waiting for the drop and the tombstone to be durable.
    removes: Vec<RemoveWait>,
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
    /// For a create: the members asked in the current round of its exists check.
    check_asked: BTreeSet<NodeAddr>,
    /// For a create: members this round's answers list that this node neither lists nor knows
    /// to have left. The create waits while there are any: one of them may hold the name.
    unseen: BTreeSet<MemberId>,
    /// For a create whose `unseen` is not empty: when to ask every member again.
    next_round: Option<Time>,
    started: Time,
    /// The store's change count when this node's own copy was first found complete: it
    /// counts as acknowledged once a flush has made that much durable.
    durable_at: Option<u64>,
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
        /// The store's change count when the coordinator's own copy was installed: it counts
        /// as acknowledged once a flush has made that much durable.
        durable_at: Option<u64>,
    },
}

struct ReplicaWait {
    reply_to: NodeAddr,
    req: ReqId,
    name: FileName,
    stamp: Stamp,
    until: Time,
    /// The store's change count when the copy was first found complete: the answer goes once
    /// a flush has made that much durable.
    durable_at: Option<u64>,
}

struct InstallWait {
    reply_to: NodeAddr,
    req: ReqId,
    name: FileName,
    base: u64,
    appended: Vec<WriteMeta>,
    until: Time,
    /// Applied here, with the bytes this wait fetched for it (none if an earlier copy of the
    /// same install applied it): only the flush is still awaited.
    applied: Option<u64>,
    /// The store's change count when it was first found applied: the answer goes once a flush
    /// has made that much durable.
    durable_at: Option<u64>,
}

pub(in crate::hydfs) struct RemoveWait {
    pub(in crate::hydfs) reply_to: NodeAddr,
    pub(in crate::hydfs) req: ReqId,
    pub(in crate::hydfs) until: Time,
    /// The store's change count once the drop and the tombstone were made: the answer goes
    /// once a flush has made that much durable.
    pub(in crate::hydfs) durable_at: Option<u64>,
}

struct OfferIn {
    from: NodeAddr,
    meta: FileMeta,
    until: Time,
    /// The store's change count when every write offered was first found held: the copy is
    /// taken once a flush has made that much durable.
    durable_at: Option<u64>,
}

/// What became of a write a node was asked to store.
enum Accepted {
    Yes,
    /// A different create of the name is here.
    OtherCreate,
    /// An append or seal of another file of the name than the one here.
    OtherFile,
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

    pub(super) fn is_server_request(&self, req: ReqId) -> bool {
        self.server.requests.contains_key(&req)
    }

    /// Ends the wait for the answer to `req` if it comes from the node `req` went to: the
    /// request it answers. An answer from any other node (a late one to an earlier process at
    /// this address, which numbered its requests alike) is ignored.
    pub(super) fn answered(&mut self, req: ReqId, from: NodeAddr) -> Option<Pending> {
        match self.server.requests.get(&req) {
            Some(o) if o.to == from => self.server.requests.remove(&req).map(|o| o.what),
            _ => None,
        }
    }

    /// Whether `msg` answers a request this node is waiting on from `from` (server or client).
    pub(crate) fn awaits_answer(&self, msg: &HydfsMsg, from: NodeAddr) -> bool {
        let Some(req) = msg.read_answer_req() else { return false };
        self.server.requests.get(&req).is_some_and(|o| o.to == from) || self.client_awaits(req, from)
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
        if let Some(reply) = refusal_answer(msg, Refusal::NameTooLong { len, limit }, self.me) {
            self.send(from, reply);
        }
        true
    }

    /// Answers a request from `from`, a process this node does not list yet but that may be a
    /// member it has not heard of (one that joined a moment ago), with `Unavailable`: its
    /// sender tries another node or again a moment later, where silence would cost it its whole
    /// timeout (40 s for a client's write). The request itself is not served (only members
    /// write). The node answers only a client's `Write` so.
    pub(crate) fn refuse_stranger(&mut self, from: NodeAddr, msg: &HydfsMsg) {
        debug_assert!(
            matches!(msg, HydfsMsg::Write(_)),
            "only a client's write from a process not listed yet is answered"
        );
        let why = format!("{} has not heard of {from} yet (it may have just joined); try again", self.me);
        if let Some(reply) = refusal_answer(msg, Refusal::Unavailable(why), self.me) {
            self.stats.strangers_refused += 1;
            self.send(from, reply);
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

    pub(super) fn storage_failed(&mut self, why: &str) {
        self.events.push_back(HydfsEvent::StorageFailed { reason: why.to_string() });
    }
}

/// The answer refusing request `msg` with `no` (`me` names this node in a multiappend's
/// refusal); `None` for a message that expects no answer (an answer itself, an offer, a
/// hand-off's acknowledgement, an inventory).
fn refusal_answer(msg: &HydfsMsg, no: Refusal, me: NodeAddr) -> Option<HydfsMsg> {
    Some(match *msg {
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
        HydfsMsg::Stat { req, .. } => HydfsMsg::StatReply { req, digest: None, members: Vec::new() },
        HydfsMsg::Describe { req, .. } => HydfsMsg::DescribeReply { req, meta: Err(no), deleted: Vec::new() },
        HydfsMsg::Delete { req, .. } => HydfsMsg::DeleteReply { req, result: Err(no) },
        HydfsMsg::Remove { req, .. } => HydfsMsg::RemoveReply { req, result: Err(no) },
        HydfsMsg::RemoteAppend { req, .. } => {
            HydfsMsg::RemoteAppendReply { req, result: Err(format!("{me}: {no}")) }
        }
        HydfsMsg::ReadReply { .. }
        | HydfsMsg::FetchReply { .. }
        | HydfsMsg::WriteReply { .. }
        | HydfsMsg::ReplicateReply { .. }
        | HydfsMsg::MergeReply { .. }
        | HydfsMsg::CollectReply { .. }
        | HydfsMsg::InstallReply { .. }
        | HydfsMsg::StatReply { .. }
        | HydfsMsg::RemoteAppendReply { .. }
        | HydfsMsg::Inventory { .. }
        | HydfsMsg::InventoryReply { .. }
        | HydfsMsg::DescribeReply { .. }
        | HydfsMsg::Offer { .. }
        | HydfsMsg::Taken { .. }
        | HydfsMsg::DeleteReply { .. }
        | HydfsMsg::RemoveReply { .. } => return None,
    })
}
