//! HyDFS: a replicated file system on a consistent-hashing ring, as one sans-IO state machine.
//!
//! Each node runs [`Hydfs`], which is both a server (it stores replicas, coordinates writes and
//! merges, pulls what it should hold) and a client (it routes operations to replicas and caches
//! reads). The node feeds it the member list whenever membership changes; it emits messages to
//! send, events, and the time it next needs a tick.
//!
//! Guarantees (checked by the simulator, see `docs/ARCHITECTURE.md`):
//! * a write is acknowledged only after every current replica has it durably (synced);
//! * each client's writes keep their order (one write per file in flight, growing stamps);
//! * a client never reads a copy that misses one of its own acknowledged writes;
//! * a merge orders pending appends by (timestamp, client, sequence), installs the same order on
//!   every replica, and is acknowledged only when every replica has it;
//! * replicas pull what they should hold; a node drops a file it no longer owns only after every
//!   owner has taken everything it had;
//! * parts are checksummed, verified on every read and fetch, and never larger than a chunk;
//! * a whole-file read streams: it holds at most `read_window` chunks that arrived ahead of
//!   their turn (plus the copy it keeps for the read cache, of a file of at most a quarter of
//!   the cache), whatever the file's size;
//! * a sealed file (`seal.rs`) shows only its chain of owners' appends, on every copy holding
//!   the same writes, and a writer a seal cut off gets no further write acknowledged once every
//!   replica holds the seal;
//! * a delete is acknowledged only when every replica of the coordinator's view (never fewer
//!   than `min_copies`) dropped its copy and keeps the file's tombstone; no node keeps, absorbs
//!   or hands on a copy of a file it holds the tombstone of (`tombstone.rs` says for how long).

pub mod cache;
pub mod config;
pub mod index;
pub mod message;
pub mod name;
pub mod ring;
pub mod seal;
pub mod storage;
pub mod store;
pub mod tombstone;
pub mod types;

mod client;
mod delete;
mod pace;
mod server;

pub use cache::ReadCache;
pub use client::{ClientOp, OpId, OpOutput, PartSource, ReadFrom, UploadSource};
pub use config::{HydfsConfig, PlantedBug};
pub use message::{
    FetchRequest, HydfsMsg, InstallRequest, InventoryList, MergeSummary, Needs, PartBytes, ReadChunk,
    ReadRequest, Refusal, ReplicateRequest, ReqId, WriteRequest,
};
pub use name::{FileName, NameError, MAX_NAME_BYTES, NAME_BYTES_CEILING};
pub use pace::{inventory_hash, Inventory, InventoryHash};
pub use ring::{Ring, RingId};
pub use seal::Owners;
pub use storage::{BlobId, MemStorage, Storage, StorageError};
pub use store::{LocalStore, Recovery};
pub use tombstone::Tombstones;
pub use types::{
    FileDigest, FileMeta, PartMeta, PartPosition, Seal, Stamp, WriteKind, WriteMeta, CHUNK_BYTES,
};

use crate::bulk::Bulk;
use crate::histogram::LatencyHistogram;
use crate::id::{MemberId, NodeAddr};
#[cfg(test)]
use crate::time::Millis;
use crate::time::Time;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// The most departed members a node remembers (see `Hydfs::departed`).
const MAX_DEPARTED: usize = 4096;

/// What HyDFS reports to the node's user and driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HydfsEvent {
    /// A client operation finished.
    OpDone { op: OpId, result: Result<OpOutput, HydfsError> },
    /// This node, as coordinator, acknowledged a write: every listed replica stored it durably.
    WriteCommitted { name: FileName, stamp: Stamp, replicas: Vec<NodeAddr> },
    /// This node, as coordinator, completed a merge on every listed replica.
    MergeCommitted { name: FileName, replicas: Vec<NodeAddr>, merged_hash: u64 },
    /// A stored part failed its checksum and was removed; it will be fetched again.
    CorruptionDetected { name: FileName, stamp: Stamp, part: u32 },
    /// A stored part's block was missing or unreadable and was dropped from the index; it will
    /// be fetched again.
    PartLost { name: FileName, stamp: Stamp, part: u32, why: String },
    /// This node handed a file to its owners and dropped its copy.
    FileDropped { name: FileName },
    /// This node dropped its copy of a deleted file (the file created by `create`).
    FileDeleted { name: FileName, create: Stamp },
    /// Storage refused a write or sync; the affected answers are not sent.
    StorageFailed { reason: String },
    /// The next in-order bytes of a whole-file read ([`ClientOp::Download`]); offset 0 starts it
    /// over. `total` is the length of the file in the version being read (known from the
    /// first chunk on: what a progress report counts against).
    ReadData { op: OpId, offset: u64, total: u64, bytes: Bulk },
    /// This node began handling a request from another node (or itself), one per operation.
    Handled { what: &'static str, name: FileName, from: NodeAddr },
}

/// Why a client operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HydfsError {
    #[error("invalid file name: {0}")]
    BadName(#[from] NameError),
    #[error("`{0}` already exists (files are created once)")]
    AlreadyExists(FileName),
    #[error("`{0}` does not exist")]
    NotFound(FileName),
    #[error("no live replica for `{0}`: this node is not in a group, or every replica is unreachable")]
    NoLiveReplica(FileName),
    #[error("{len} bytes exceed the {limit}-byte limit for one write")]
    TooLarge { len: u64, limit: u64 },
    #[error("file name is {len} bytes long; the limit is {limit} bytes (max_name_bytes)")]
    NameTooLong { len: usize, limit: usize },
    #[error("too many pending appends on `{name}` (the limit is {limit}); run merge")]
    TooManyPending { name: FileName, limit: usize },
    /// The file holds as many writes as one file can: their description, which anti-entropy, a
    /// merge and `Meta` send in one frame, would pass `max_file_meta_bytes`.
    #[error(
        "`{name}` is full: the description of its writes would pass {limit} bytes \
         ([hydfs] max_file_meta_mb), the most a file may take; append to a new file"
    )]
    FileFull { name: FileName, limit: u64 },
    #[error("`{name}` is unavailable: {reason}")]
    Unavailable { name: FileName, reason: String },
    #[error("{0} is not a member of the group")]
    NotAMember(NodeAddr),
    #[error("multiappend failed on {failed} of {total} nodes: {detail}")]
    MultiAppend { failed: usize, total: usize, detail: String },
    #[error("storage failed: {0}")]
    Storage(String),
    /// The file is sealed and its writer is another member: this client's write is refused for
    /// good (a job's deposed leader meets this).
    #[error("`{name}` is sealed: its writer is {owner} since term {term}; this write is refused")]
    Sealed { name: FileName, owner: MemberId, term: u64 },
    /// A create that failed (it may have committed just before its client gave up: it is
    /// cancelled all the same). When `cancelled`, every replica of the client's view has
    /// dropped whatever copy it had and keeps the create's tombstone: the file will not appear
    /// from this create. Otherwise the cancel did not reach every replica in time, and a copy
    /// some replica kept may still surface (`delete` removes it).
    #[error("{}", create_failed(name, reason, *cancelled))]
    CreateFailed { name: FileName, stamp: Stamp, reason: String, cancelled: bool },
}

fn create_failed(name: &FileName, reason: &str, cancelled: bool) -> String {
    if cancelled {
        format!("creating `{name}` failed: {reason}; no replica keeps it (the create was cancelled)")
    } else {
        format!(
            "creating `{name}` failed: {reason}; the create could not be cancelled on every replica, \
             so a copy may still appear (`delete {name}` removes it)"
        )
    }
}

impl HydfsError {
    /// Whether the error says the file does not exist (or no longer does).
    pub fn is_not_found(&self) -> bool {
        matches!(self, HydfsError::NotFound(_))
    }
}

/// Counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HydfsStats {
    pub writes_coordinated: u64,
    pub merges_coordinated: u64,
    pub parts_fetched: u64,
    pub bytes_fetched: u64,
    pub bytes_fetched_for_merges: u64,
    pub corrupt_parts_detected: u64,
    /// Parts whose blocks were missing or unreadable when read (dropped, fetched again).
    pub lost_parts_detected: u64,
    /// Writes this node refused (as a replica) or failed (as their coordinator) because its
    /// storage refused a part, the index or a sync (a full disk, an unwritable data dir).
    pub writes_refused_storage: u64,
    pub files_dropped: u64,
    pub orphans_dropped: u64,
    pub stale_messages: u64,
    pub syncs: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Operations and requests refused for naming a file longer than `max_name_bytes`.
    pub names_refused: u64,
    /// Requests from a process this node did not list yet (a member that had just joined)
    /// answered `Unavailable` so that their senders try again ([`Hydfs::refuse_stranger`]).
    pub strangers_refused: u64,
    /// Writes and merges refused as busy (`max_transfers` in flight).
    pub busy_refusals: u64,
    /// Appends refused because their file had `max_pending_appends` pending appends.
    pub pending_appends_refused: u64,
    /// Appends refused because they would take their file's description past
    /// `max_file_meta_bytes`.
    pub full_file_appends_refused: u64,
    /// Appends and seals refused because they were issued against another file of their name
    /// than the one this copy holds (it was deleted, and perhaps created again).
    pub stale_appends_refused: u64,
    /// Writes refused because their file is sealed and they are not its owner's (`seal.rs`).
    pub writes_refused_sealed: u64,
    /// Deletes this node coordinated.
    pub deletes_coordinated: u64,
    /// Copies of deleted files this node dropped (its own, on a delete, and stale ones found
    /// later).
    pub files_deleted: u64,
    /// Tombstones held now.
    pub tombstones: u64,
    /// Cancels started for creates this node's client saw fail (a delete of their own stamp).
    pub creates_cancelled: u64,
    /// Tombstones forgotten before they expired, to stay within `max_tombstones`.
    pub tombstones_evicted: u64,
    /// Parts the scrubber verified (work in proportion to what the node holds).
    pub scrubbed_parts: u64,
    /// Files this node holds that lack `replication` complete copies on their replicas, as far
    /// as this node knows (see [`Hydfs::under_replicated`]), and those files' bytes.
    pub files_under_replicated: u64,
    pub bytes_under_replicated: u64,
    /// Client operations from submission to their end (success or error), by command.
    pub request_latency: BTreeMap<&'static str, LatencyHistogram>,
}

/// At most this many tombstones of one name travel in a `DescribeReply` or an `Offer`.
pub(crate) const MAX_DELETED_IN_REPLY: usize = 64;

pub struct Hydfs {
    cfg: HydfsConfig,
    me: NodeAddr,
    /// The client identity: the current member id (a new one after every rejoin).
    client_id: MemberId,
    /// The member id at each ring address.
    member_ids: BTreeMap<NodeAddr, MemberId>,
    /// The last process this node listed at each address it no longer lists (at most
    /// `MAX_DEPARTED`; past that, the one that joined earliest is forgotten first): a create's
    /// exists check does not wait for a member this node knows has left.
    departed: BTreeMap<NodeAddr, MemberId>,
    ring: Ring,
    store: LocalStore,
    /// Deleted files this node remembers.
    tombstones: Tombstones,
    next_req: ReqId,
    out: VecDeque<(NodeAddr, HydfsMsg)>,
    events: VecDeque<HydfsEvent>,
    next_anti_entropy: Time,
    /// When and what to ask ring neighbours for in anti-entropy.
    inventory_pace: pace::InventoryPace,
    /// This node's inventory and its hash, as of a [`LocalStore::files_epoch`] with no create in
    /// flight: in a calm cluster every anti-entropy round and every neighbour's ask takes it from
    /// here, where each walked and hashed every file again.
    inventory_memo: Option<(u64, Arc<Inventory>, InventoryHash)>,
    /// The files this node holds and does not own, as of a [`LocalStore::files_epoch`] and a
    /// ring (`server/repair.rs`).
    unowned_memo: Option<(u64, Ring, Vec<FileName>)>,
    /// The pending writes found incomplete here at [`LocalStore::files_epoch`], kept while it
    /// stays the same: they depend only on the files' records and parts (idle rounds no longer
    /// walk every file).
    incomplete_memo: Option<(u64, BTreeSet<(FileName, Stamp)>)>,
    stats: HydfsStats,
    /// What the store recovered from storage at start.
    recovery: Recovery,
    server: server::ServerState,
    deletes: delete::DeleteState,
    client: client::ClientState,
    /// Messages are handled in batches (group commit): what a message completes is answered
    /// at [`Hydfs::flush`], after one sync covering the whole batch, instead of at once.
    batched: bool,
    /// A batch is open: its answers are due at `flush`, or at this time at the latest.
    progress_due: Option<Time>,
    /// The files recovered at start, served unchecked (empty unless planted bug
    /// `RecoveredCopyServedStale` is on).
    served_unchecked: BTreeSet<FileName>,
    /// Files recovered at start (with the create they held) that no peer has yet described or
    /// listed alike: a read of one answers `Unavailable` (while another replica exists), since
    /// the file may have been deleted or written while this node was down.
    unreconciled: BTreeMap<FileName, Option<Stamp>>,
}

impl Hydfs {
    /// A HyDFS node at `me`, starting with what `storage` holds: the store recovers its durable
    /// index and keeps every part that passes its checksum (see [`LocalStore::open`]); what
    /// it found is [`Hydfs::recovery`]. Anti-entropy then reconciles the copies with the
    /// current replicas like any others: what this node lacks is fetched, what it no longer
    /// owns is offered to the owners and dropped once they hold it.
    pub fn new(
        cfg: HydfsConfig,
        me: MemberId,
        storage: Box<dyn Storage + Send>,
        now: Time,
    ) -> Result<Hydfs, StorageError> {
        let check = if cfg.bug(PlantedBug::RecoveryTrustsBlocks) {
            store::PartCheck::Trust
        } else if cfg.bug(PlantedBug::ServesCorruptBlocks) {
            store::PartCheck::ReadOnly
        } else {
            store::PartCheck::ReadAndVerify
        };
        let (mut store, recovery) = LocalStore::open_checked(storage, check)?;
        store.verify = !cfg.bug(PlantedBug::ServesCorruptBlocks);
        store.index_writes = !cfg.bug(PlantedBug::IndexNotSynced);
        store.seals = !cfg.bug(PlantedBug::SealIgnored);
        let mut tombstones = Tombstones::new(cfg.max_tombstones);
        for (name, create) in store.tombstones() {
            tombstones.insert(now, name, *create, cfg.tombstone_ttl);
        }
        for (name, create) in tombstones.take_forgotten() {
            store.forget_tombstone(&name, create);
        }
        let client = client::ClientState::new(&cfg, now);
        let (served_unchecked, unreconciled) = if cfg.bug(PlantedBug::RecoveredCopyServedStale) {
            (store.files().keys().cloned().collect(), BTreeMap::new())
        } else {
            let recovered =
                store.files().iter().map(|(n, r)| (n.clone(), r.create.as_ref().map(|c| c.stamp)));
            (BTreeSet::new(), recovered.collect())
        };
        Ok(Hydfs {
            me: me.addr,
            client_id: me,
            member_ids: BTreeMap::new(),
            departed: BTreeMap::new(),
            ring: Ring::default(),
            store,
            tombstones,
            next_req: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_anti_entropy: now + cfg.anti_entropy_interval,
            inventory_pace: pace::InventoryPace::new(
                cfg.anti_entropy_interval,
                cfg.anti_entropy_max_interval,
                now,
            ),
            inventory_memo: None,
            unowned_memo: None,
            incomplete_memo: None,
            stats: HydfsStats::default(),
            recovery,
            server: server::ServerState::default(),
            deletes: delete::DeleteState::default(),
            client,
            cfg,
            batched: false,
            progress_due: None,
            served_unchecked,
            unreconciled,
        })
    }

    pub fn config(&self) -> &HydfsConfig {
        &self.cfg
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn store(&self) -> &LocalStore {
        &self.store
    }

    /// What the store recovered from storage when this node started.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The counters, with the files under-replicated counted (which visits every write held).
    pub fn stats(&self) -> HydfsStats {
        let mut s = self.counters();
        (s.files_under_replicated, s.bytes_under_replicated) = self.under_replicated();
        s
    }

    /// The counters alone, at a cost that does not grow with the files held (the
    /// under-replicated ones are left at 0: see [`Hydfs::stats`]).
    pub fn counters(&self) -> HydfsStats {
        let mut s = self.stats.clone();
        s.cache_hits = self.client.cache.hits;
        s.cache_misses = self.client.cache.misses;
        s.tombstones = self.tombstones.len() as u64;
        s.tombstones_evicted = self.tombstones.evicted;
        s
    }

    /// The files this node holds (and their bytes) that do not have `replication` complete
    /// copies on their replicas of the current ring. A replica counts when it is this node and
    /// its copy is complete, or when the inventory it last sent this node lists the file
    /// complete under the same create; a replica not heard from yet does not count. Every
    /// replica of a file this node owns is among the ring neighbours it exchanges inventories
    /// with, so this is what an operator checks before restarting the next node: 0 on every
    /// node means every file it holds has its full set of copies.
    pub fn under_replicated(&self) -> (u64, u64) {
        let replication = self.cfg.replication;
        let (mut files, mut bytes) = (0, 0);
        let creating = self.names_being_created();
        for name in self.store.files().keys().filter(|n| !creating.contains(*n)) {
            let Some(meta) = self.store.meta(name) else { continue };
            let digest = meta.digest();
            let copies = self
                .ring
                .replicas_of(name, replication)
                .into_iter()
                .filter(|r| {
                    if *r == self.me {
                        digest.incomplete == 0
                    } else {
                        self.inventory_pace.holds_complete(*r, name, digest.create) == Some(true)
                    }
                })
                .count();
            debug_assert!(copies <= replication, "at most one copy per replica");
            if copies < replication {
                files += 1;
                bytes += meta.all_writes().map(|w| w.len()).sum::<u64>();
            }
        }
        (files, bytes)
    }

    /// The deleted files this node remembers.
    pub fn tombstones(&self) -> &Tombstones {
        &self.tombstones
    }

    /// The members on the ring changed (joins, confirmed failures, leaves; never suspicion).
    /// `me` is this node's current member id, `None` while it is not in a group.
    pub fn set_members(
        &mut self,
        now: Time,
        me: Option<MemberId>,
        others: impl IntoIterator<Item = MemberId>,
    ) {
        let mut ids: BTreeMap<NodeAddr, MemberId> = BTreeMap::new();
        if let Some(id) = me {
            self.client_id = id;
            ids.extend(others.into_iter().map(|m| (m.addr, m)));
            ids.insert(self.me, id);
        }
        // A member that failed or restarted (a new id at the same address) may have lost what it
        // acknowledged: its answers no longer count.
        let gone: Vec<NodeAddr> =
            self.member_ids.iter().filter(|(a, id)| ids.get(a) != Some(id)).map(|(a, _)| *a).collect();
        for addr in &gone {
            if let Some(id) = self.member_ids.get(addr) {
                self.departed.insert(*addr, *id);
            }
        }
        while self.departed.len() > MAX_DEPARTED {
            let Some(earliest) =
                self.departed.values().min_by_key(|id| (id.join_time, id.addr)).map(|id| id.addr)
            else {
                break;
            };
            self.departed.remove(&earliest);
        }
        self.member_ids = ids;
        if !gone.is_empty() {
            for addr in &gone {
                self.inventory_pace.forget(now, *addr);
            }
            self.forget_answers_from(&gone);
            self.retarget_now(now);
        }
        let ring = Ring::new(self.member_ids.keys().copied());
        if ring != self.ring {
            let old = std::mem::replace(&mut self.ring, ring);
            self.on_ring_changed(now);
            self.hand_on_tombstones(now, &old);
        }
        // What this node's client awaits from a member that failed or restarted will never come:
        // each such operation moves on to its next live replica now, not at its timeout (for a
        // write or a merge, the coordinator's whole timeout). A retried write keeps its stamp, so
        // every replica drops the copy a falsely declared coordinator may still bring; a merge
        // is fenced by the merged order it collected (see `advance_merge` in `server/merge.rs`).
        // A node that is itself out of the group keeps waiting: it has no live replica to move to.
        if me.is_some() && !gone.is_empty() {
            self.client_members_gone(now, &gone);
        }
    }

    /// This node's files with their digests, in name order (what it answers an inventory ask),
    /// and the list's hash. Files being created here are left out. Remembered while no file
    /// changes and no create is in flight; the remembered list is what a fresh walk gives
    /// (asserted).
    fn inventory(&mut self) -> (Arc<Inventory>, InventoryHash) {
        let creating = self.names_being_created();
        let epoch = self.store.files_epoch();
        if creating.is_empty() {
            if let Some((at, files, hash)) = &self.inventory_memo {
                if *at == epoch {
                    let (files, hash) = (files.clone(), *hash);
                    debug_assert!(
                        *files == self.fresh_inventory(&creating),
                        "the remembered inventory is what a fresh walk gives"
                    );
                    return (files, hash);
                }
            }
        }
        let files = Arc::new(self.fresh_inventory(&creating));
        let hash = inventory_hash(&files);
        self.inventory_memo = creating.is_empty().then(|| (epoch, files.clone(), hash));
        (files, hash)
    }

    /// [`Hydfs::inventory`]'s list, walked: every stored file but those in `creating`.
    fn fresh_inventory(&mut self, creating: &BTreeSet<FileName>) -> Inventory {
        let names: Vec<FileName> =
            self.store.files().keys().filter(|n| !creating.contains(*n)).cloned().collect();
        names
            .into_iter()
            .filter_map(|n| {
                let digest = self.store.digest(&n)?;
                Some((n, digest))
            })
            .collect()
    }

    /// The files this node stores, with their ring ids, digests and bytes (`store`).
    pub fn local_files(&self) -> Vec<(FileName, RingId, FileDigest, u64)> {
        self.store
            .files()
            .keys()
            .filter_map(|n| {
                let m = self.store.meta(n)?;
                let bytes = m.all_writes().map(|w| w.len()).sum();
                Some((n.clone(), n.ring_id(), m.digest(), bytes))
            })
            .collect()
    }

    pub fn poll_outgoing(&mut self) -> Option<(NodeAddr, HydfsMsg)> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<HydfsEvent> {
        self.events.pop_front()
    }

    /// Handles messages in batches: each message's answers wait for [`Hydfs::flush`] (at the
    /// latest for the next timeout, which [`Hydfs::poll_timeout`] makes due at once), so one
    /// flush (or sync) covers every write of the batch. A driver turns this on when it hands the
    /// node every frame that is waiting before it flushes.
    pub fn set_batched(&mut self, on: bool) {
        self.batched = on;
    }

    /// Ends a batch of messages: answers what they completed once durable, one flush (or
    /// sync) for them all.
    pub fn flush(&mut self, now: Time) {
        if self.progress_due.take().is_some() {
            self.progress(now);
        }
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        let mut next = Some(self.next_anti_entropy);
        let mut consider = |t: Option<Time>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Time| n.min(t)));
            }
        };
        consider(self.server.next_deadline());
        consider(self.client.next_deadline());
        consider(self.progress_due);
        next
    }

    pub fn handle_timeout(&mut self, now: Time) {
        // The progress below covers an open batch.
        self.progress_due = None;
        if now >= self.next_anti_entropy {
            self.next_anti_entropy = now + self.cfg.anti_entropy_interval;
            self.anti_entropy(now);
        }
        self.server_tick(now);
        self.client_tick(now);
        self.progress(now);
    }

    /// Storage finished a flush it ran behind the node's back: the answers waiting for it go.
    pub fn storage_flushed(&mut self, now: Time) {
        self.progress(now);
    }

    /// A stream frame to `to` could not be delivered.
    pub fn handle_send_failed(&mut self, now: Time, to: NodeAddr) {
        self.server_send_failed(now, to);
        self.client_send_failed(now, to);
        self.progress(now);
    }

    /// A message from `sender`. Messages from an older incarnation of a member (an id this node
    /// knows has been replaced at that address) are dropped: what it said may be lost.
    pub fn handle_message(&mut self, now: Time, sender: MemberId, msg: HydfsMsg) {
        if self
            .member_ids
            .get(&sender.addr)
            .is_some_and(|id| *id != sender && id.join_time > sender.join_time)
        {
            self.stats.stale_messages += 1;
            return;
        }
        let from = sender.addr;
        if self.refuse_long_name(from, &msg) {
            return;
        }
        match msg {
            HydfsMsg::Write(write) => self.on_write(now, from, write),
            HydfsMsg::Replicate(replicate) => self.on_replicate(now, from, replicate),
            HydfsMsg::ReplicateReply { req, result } => self.on_replicate_reply(now, from, req, result),
            HydfsMsg::Merge { req, name } => self.on_merge(now, from, req, name),
            HydfsMsg::Collect { req, name } => self.on_collect(from, req, name),
            HydfsMsg::CollectReply { req, result } => self.on_collect_reply(now, from, req, result),
            HydfsMsg::Install(install) => self.on_install(now, from, install),
            HydfsMsg::InstallReply { req, result } => self.on_install_reply(now, from, req, result),
            HydfsMsg::Read(read) => self.on_read(now, from, read),
            HydfsMsg::Stat { req, name } => {
                self.handled("stat", &name, from);
                let digest = self.store.digest(&name);
                let members = self.member_ids.values().copied().collect();
                self.send(from, HydfsMsg::StatReply { req, digest, members });
            }
            HydfsMsg::Inventory { req, known } => {
                let (files, hash) = self.inventory();
                let files = if known == Some(hash) {
                    InventoryList::Unchanged
                } else {
                    InventoryList::Files(Arc::unwrap_or_clone(files))
                };
                self.send(from, HydfsMsg::InventoryReply { req, files });
            }
            HydfsMsg::InventoryReply { req, files } => self.on_inventory_reply(now, from, req, files),
            HydfsMsg::Describe { req, name, needs, client } => {
                let meta = self.describe(&name, &needs, client);
                let deleted = self.deleted_creates(&name);
                self.send(from, HydfsMsg::DescribeReply { req, meta, deleted });
            }
            // Request ids are unique per node across its server and client halves.
            HydfsMsg::DescribeReply { req, meta, deleted } => {
                if self.is_server_request(req) {
                    self.on_describe_reply(now, from, req, meta, deleted)
                } else {
                    self.on_meta_reply(now, from, req, meta)
                }
            }
            HydfsMsg::Offer { meta, deleted } => self.on_offer(now, from, meta, deleted),
            HydfsMsg::Taken { name, hash } => self.on_taken(now, from, name, hash),
            HydfsMsg::Fetch(fetch) => self.on_fetch(now, from, fetch),
            HydfsMsg::FetchReply { req, result } => {
                if self.is_server_request(req) {
                    self.on_fetch_reply(now, from, req, result)
                } else {
                    self.on_part_reply(now, from, req, result)
                }
            }
            HydfsMsg::RemoteAppend { req, name, data, of } => {
                self.on_remote_append(now, from, req, name, data, of)
            }
            HydfsMsg::WriteReply { req, result, create } => {
                self.on_write_reply(now, from, req, result, create)
            }
            HydfsMsg::Delete { req, name } => self.on_delete(now, from, req, name),
            HydfsMsg::DeleteReply { req, result } => self.on_delete_reply(now, from, req, result),
            HydfsMsg::Remove { req, name, create } => self.on_remove(now, from, req, name, create),
            HydfsMsg::RemoveReply { req, result } => self.on_remove_reply(now, from, req, result),
            HydfsMsg::MergeReply { req, result } => self.on_merge_reply(now, from, req, result),
            HydfsMsg::ReadReply { req, result } => self.on_read_reply(now, from, req, result),
            HydfsMsg::StatReply { req, digest, members } => {
                if self.is_server_request(req) {
                    self.on_exists_reply(now, from, req, digest, members)
                } else {
                    self.on_stat_reply(now, from, req, digest)
                }
            }
            HydfsMsg::RemoteAppendReply { req, result } => {
                self.on_remote_append_reply(now, from, req, result)
            }
        }
        if self.batched {
            self.progress_due.get_or_insert(now);
        } else {
            self.progress(now);
        }
    }

    fn send(&mut self, to: NodeAddr, msg: HydfsMsg) {
        self.out.push_back((to, msg));
    }

    fn req_id(&mut self) -> ReqId {
        self.next_req += 1;
        self.next_req
    }

    fn replicas(&self, name: &FileName) -> Vec<NodeAddr> {
        self.ring.replicas_of(name, self.cfg.replication)
    }
}

#[cfg(test)]
mod tests;
