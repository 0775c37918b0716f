//! The client half of [`Hydfs`]: operations routed to replicas with fail-over, per-client stamps,
//! and the read cache.
//!
//! Invariants kept here:
//! * one write (or delete) per file in flight, in submission order, stamps assigned at
//!   submission with a growing timestamp and sequence: a client's writes to a file keep their
//!   order;
//! * the writes a client had acknowledged are kept per file and per create: a file this node
//!   learns was deleted stops counting toward them;
//! * a read (from a replica or the cache) or a file's metadata ([`ClientOp::Meta`]) is accepted
//!   only if it includes every write this client has had acknowledged for the file;
//! * a part read by [`ClientOp::ReadPart`] is returned only if its bytes match the metadata its
//!   write declared (length, CRC32C, line ends), whether it came from a peer or local storage;
//! * a whole-file read ([`ClientOp::Download`]) hands its bytes on in order as they arrive and
//!   holds at most `read_window` chunks ahead of them, whatever the file's size (plus the copy it
//!   keeps for the read cache, only of a file of at most a quarter of the cache), and never a
//!   byte past the file's length its replica gave (a chunk running past it is refused);
//! * no request waits on a member that failed, left or restarted: its operation moves at once
//!   to a new round on the new ring, with the same stamp for a write;
//! * a create that failed is reported only once its cancel ended (every replica dropped what it
//!   stored, or the cancel gave up after `coordinator_timeout`, which the error says), and is
//!   never sent again meanwhile;
//! * no read returns a copy whose create this node holds a tombstone for;
//! * every request of a non-persistent append or seal names the create of the file it was
//!   issued against (looked up first when unknown); a multiappend's parts are bound by its
//!   requester and never bound again; a local write is bound again (to the create a
//!   coordinator's refusal names) only while it is in progress, at most [`MAX_REBINDS`] times;
//! * an uploaded part is sent with the slot of its hash only when its bytes have the CRC32C the
//!   part was described with (`Upload::part`; [`Bulk::digest`] asserts the slot in debug builds);
//! * every operation ends with exactly one [`HydfsEvent::OpDone`] (or one reply to the node that
//!   asked for it, for a multiappend part), at the latest when its deadline passes (for a failed
//!   create, when its cancel ends).

use super::cache::{CachedFile, ReadCache};
use super::message::{
    FetchRequest, HydfsMsg, MergeSummary, Needs, PartBytes, ReadChunk, ReadRequest, Refusal, ReqId,
    WriteRequest,
};
use super::ring::RingId;
use super::store::PartError;
use super::types::{FileDigest, FileMeta, PartMeta, Stamp, WriteKind, WriteMeta};
use super::{FileName, Hydfs, HydfsConfig, HydfsError, HydfsEvent, PlantedBug};
use crate::bulk::{Bulk, BulkDigest};
use crate::id::NodeAddr;
use crate::time::Time;
use crate::wire::BULK_APART_BYTES;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

/// Bytes kept outside the state machine (a local file on a real node), read part by part when a
/// replica fetches them, so that an upload never has to fit in memory.
pub trait PartSource: Send + Sync {
    /// Reads exactly `len` bytes at `offset`, or says why it cannot.
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, String>;
}

/// The bytes of an upload, described part by part ([`PartMeta::of`] of each part of at most one
/// chunk), and where to read them. Replicas check every part against its metadata, so bytes that
/// changed after they were described are refused, never stored.
#[derive(Clone)]
pub struct UploadSource {
    pub parts: Vec<PartMeta>,
    pub reader: Arc<dyn PartSource>,
}

impl UploadSource {
    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

impl fmt::Debug for UploadSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadSource({} parts, {} bytes)", self.parts.len(), self.len())
    }
}

impl PartialEq for UploadSource {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts && Arc::ptr_eq(&self.reader, &other.reader)
    }
}

impl Eq for UploadSource {}

/// The bytes a client is uploading: held in memory, or read from a source on demand (with the
/// offset each part starts at, worked out once rather than summed for every part fetched).
///
/// Each replica fetches every part, so a part read from a source is read and sent three times.
/// A large part (one tagged by its hash, [`BULK_APART_BYTES`]) has a slot of that hash
/// (`digests`), filled by the first frame that sends it ([`Bulk::digest`]) and attached to every
/// later read whose bytes have the CRC32C the part was described with: a part that changed since
/// goes without it (hashed anew, and refused by its replica for its CRC32C).
enum Upload {
    Bytes(Vec<u8>),
    Source { source: UploadSource, offsets: Vec<u64>, digests: Vec<Option<BulkDigest>> },
}

impl Upload {
    fn source(source: UploadSource) -> Upload {
        let offsets = source
            .parts
            .iter()
            .scan(0u64, |at, p| {
                let start = *at;
                *at += p.len as u64;
                Some(start)
            })
            .collect();
        let digests = source
            .parts
            .iter()
            .map(|p| (p.len as usize >= BULK_APART_BYTES).then(BulkDigest::default))
            .collect();
        Upload::Source { source, offsets, digests }
    }

    /// The bytes of part `part` (parts of `chunk` bytes when held in memory): `None` if there is
    /// no such part, an error if the source cannot be read.
    fn part(&self, part: u32, chunk: usize) -> Option<Result<Bulk, String>> {
        match self {
            Upload::Bytes(data) => {
                let start = (part as usize).checked_mul(chunk)?;
                if start >= data.len() {
                    return None;
                }
                Some(Ok(data[start..data.len().min(start.saturating_add(chunk))].into()))
            }
            Upload::Source { source, offsets, digests } => {
                let (p, offset) = (source.parts.get(part as usize)?, offsets.get(part as usize)?);
                debug_assert_eq!(
                    *offset,
                    source.parts[..part as usize].iter().map(|p| p.len as u64).sum::<u64>(),
                    "a part starts where the parts before it end"
                );
                let read = source.reader.read_at(*offset, p.len as usize);
                Some(read.map(|bytes| match digests.get(part as usize) {
                    Some(Some(slot)) if p.len as usize == bytes.len() && p.crc == crc32c::crc32c(&bytes) => {
                        Bulk::from(bytes).with_digest(slot.clone())
                    }
                    _ => Bulk::from(bytes),
                }))
            }
        }
    }
}

/// Identifies one client operation on this node.
pub type OpId = u64;

/// An operation a user asks of HyDFS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Create {
        name: FileName,
        data: Vec<u8>,
    },
    Append {
        name: FileName,
        data: Vec<u8>,
    },
    Merge {
        name: FileName,
    },
    /// The file's ring id and which replicas hold it.
    Ls {
        name: FileName,
    },
    /// Each listed node appends its bytes to the file, all at once.
    MultiAppend {
        name: FileName,
        appends: Vec<(NodeAddr, Vec<u8>)>,
    },
    /// A create or append whose bytes are read from `source` part by part.
    Upload {
        name: FileName,
        kind: WriteKind,
        source: UploadSource,
    },
    /// A whole-file read (`get`, `getfromreplica`), streamed: the file's bytes arrive in order as
    /// [`HydfsEvent::ReadData`] chunks (a chunk at offset 0 means the read started over) and the
    /// operation ends with [`OpOutput::Downloaded`]. The reader keeps `read_window` chunks
    /// requested or waiting for their turn (one more while it fills a gap) ([`Hydfs::read_bytes_held`]), so a file of any
    /// size passes through a bounded amount of memory; `from` says which copies may answer.
    Download {
        name: FileName,
        from: ReadFrom,
    },
    /// A create or append that never ends on a timeout: it is retried with its one stamp (which
    /// replicas recognise) until it is acknowledged or refused for good (already exists, too
    /// large, storage failure; a create also on "not found on any replica", while an append goes
    /// on: its caller knows the file exists, and its replicas may be moving). So "not acknowledged" never means
    /// "maybe written": what a RainStorm job's checkpoint log and outputs need to stay
    /// exactly-once.
    Persist {
        name: FileName,
        kind: WriteKind,
        data: Vec<u8>,
    },
    /// The whole metadata of one replica's copy of the file: the create, the merged appends in
    /// file order and the pending appends in stamp order, each write with its parts (what a
    /// reader needs to read a file part by part, and to know the line number at every part
    /// boundary: [`FileMeta::part_positions`]). The copy includes every write this client had
    /// acknowledged for the file, and every write it lists is complete there (pending appends
    /// still arriving on that replica are left out, as a read leaves them out; its `incomplete`
    /// is empty). Fails over through the replicas like a read; [`HydfsError::NotFound`] when no
    /// replica holds the file.
    Meta {
        name: FileName,
    },
    /// The bytes of part `part` of the write `stamp` (as [`ClientOp::Meta`] listed them),
    /// checked against the metadata the write declared. Asked of `prefer` first, if given; then
    /// of this node itself when it holds the part (read from local storage: no message); then
    /// of the file's replicas in ring order; then again in rounds until `op_timeout`, like other
    /// reads. Parts never change once written, so any copy serves.
    ReadPart {
        name: FileName,
        stamp: Stamp,
        part: u32,
        prefer: Option<NodeAddr>,
    },
    /// Deletes the file on every replica (ordered after this client's writes to it). A later
    /// create of the name is a new file. Fails over like a write; [`HydfsError::NotFound`] when
    /// no replica holds the file.
    Delete {
        name: FileName,
    },
}

/// Which copies of a file a whole-file read ([`ClientOp::Download`]) may take its bytes from.
/// Whatever the source, the content is one replica's copy as of one moment: its create, its
/// merged appends in file order, then its complete pending appends in stamp order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// Any replica, failing over in ring order; this node's read cache answers if its copy is
    /// fresh (`cache_ttl`) and includes every write this client had acknowledged (`get`).
    Any,
    /// Any replica, failing over, never the cache: for files other nodes write (a job's
    /// destination, appended to by its leader, read from another node).
    Latest,
    /// This one replica's current copy, without fail-over or cache (`getfromreplica`).
    Replica(NodeAddr),
}

impl ClientOp {
    /// The console command this operation carries out (for logs and reports).
    pub fn command(&self) -> &'static str {
        match self {
            ClientOp::Create { .. }
            | ClientOp::Upload { kind: WriteKind::Create, .. }
            | ClientOp::Persist { kind: WriteKind::Create, .. } => "create",
            ClientOp::Append { .. }
            | ClientOp::Upload { kind: WriteKind::Append, .. }
            | ClientOp::Persist { kind: WriteKind::Append, .. } => "append",
            ClientOp::Upload { kind: WriteKind::Seal(_), .. }
            | ClientOp::Persist { kind: WriteKind::Seal(_), .. } => "seal",
            ClientOp::Download { from: ReadFrom::Replica(_), .. } => "getfromreplica",
            ClientOp::Download { .. } => "get",
            ClientOp::Merge { .. } => "merge",
            ClientOp::Ls { .. } => "ls",
            ClientOp::MultiAppend { .. } => "multiappend",
            ClientOp::Meta { .. } => "meta",
            ClientOp::ReadPart { .. } => "readpart",
            ClientOp::Delete { .. } => "delete",
        }
    }

    pub fn name(&self) -> &FileName {
        match self {
            ClientOp::Create { name, .. }
            | ClientOp::Append { name, .. }
            | ClientOp::Merge { name }
            | ClientOp::Ls { name }
            | ClientOp::MultiAppend { name, .. }
            | ClientOp::Upload { name, .. }
            | ClientOp::Download { name, .. }
            | ClientOp::Persist { name, .. }
            | ClientOp::Meta { name }
            | ClientOp::ReadPart { name, .. }
            | ClientOp::Delete { name } => name,
        }
    }
}

/// What a finished operation produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutput {
    Written {
        name: FileName,
        stamp: Stamp,
        replicas: Vec<NodeAddr>,
    },
    /// A whole-file read ([`ClientOp::Download`]) finished: `len` bytes were delivered as
    /// [`HydfsEvent::ReadData`], the content of `writes` in that order, read from replica `from`
    /// (`None`: from this node's read cache).
    Downloaded {
        name: FileName,
        len: u64,
        writes: Vec<Stamp>,
        from: Option<NodeAddr>,
    },
    Merged {
        name: FileName,
        summary: MergeSummary,
    },
    Listed {
        name: FileName,
        ring_id: RingId,
        replicas: Vec<(NodeAddr, RingId, Option<FileDigest>)>,
    },
    MultiAppended {
        name: FileName,
        nodes: Vec<NodeAddr>,
    },
    /// A file's metadata ([`ClientOp::Meta`]), as replica `from` holds it.
    Meta {
        name: FileName,
        meta: FileMeta,
        from: NodeAddr,
    },
    /// One part's bytes ([`ClientOp::ReadPart`]), served by `from` (this node's own address
    /// when read from its local storage).
    Part {
        name: FileName,
        stamp: Stamp,
        part: u32,
        bytes: Vec<u8>,
        from: NodeAddr,
    },
    /// A delete ([`ClientOp::Delete`]) of the file created by `create`, acknowledged by every
    /// listed replica (empty when a replica answered a retry of a delete already done).
    Deleted {
        name: FileName,
        create: Stamp,
        replicas: Vec<NodeAddr>,
    },
}

pub(super) struct ClientState {
    seq: u64,
    last_ts: u64,
    next_op: OpId,
    ops: BTreeMap<OpId, OpState>,
    queues: BTreeMap<FileName, VecDeque<OpId>>,
    /// Writes this client had acknowledged, per file, by the create they belong to.
    acked: BTreeMap<FileName, BTreeMap<Stamp, BTreeSet<Stamp>>>,
    uploads: BTreeMap<(FileName, Stamp), Upload>,
    requests: BTreeMap<ReqId, (OpId, NodeAddr, Time)>,
    pub(super) cache: ReadCache,
    /// The create of each name as the last answer about it said (at most
    /// [`MAX_KNOWN_CREATES`] names): what appends are bound to without a lookup.
    creates: BTreeMap<FileName, Stamp>,
}

impl ClientState {
    pub(super) fn new(cfg: &HydfsConfig, now: Time) -> ClientState {
        ClientState {
            seq: 0,
            last_ts: now.0,
            next_op: 1,
            ops: BTreeMap::new(),
            queues: BTreeMap::new(),
            acked: BTreeMap::new(),
            uploads: BTreeMap::new(),
            requests: BTreeMap::new(),
            cache: ReadCache::new(cfg.cache_bytes),
            creates: BTreeMap::new(),
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Time> {
        // A persistent write's deadline (`Time(u64::MAX)`) is "never", not a timer to arm.
        let ops = self
            .ops
            .values()
            .flat_map(|o| [Some(o.deadline).filter(|d| d.0 != u64::MAX), o.wait_until])
            .flatten();
        ops.chain(self.requests.values().map(|r| r.2)).min()
    }
}

struct OpState {
    name: FileName,
    kind: Kind,
    deadline: Time,
    candidates: Vec<NodeAddr>,
    next: usize,
    not_found: usize,
    last_error: Option<String>,
    wait_until: Option<Time>,
    /// A multiappend part run for another node: answer it instead of emitting an event.
    remote: Option<(NodeAddr, ReqId)>,
    queued: bool,
    /// A [`ClientOp::Persist`]: it never times out, and an append goes on through rounds in
    /// which no replica has the file yet (its replicas are moving).
    persistent: bool,
    /// When it was submitted, and its command (what its latency is counted under).
    started: Time,
    command: &'static str,
    /// A create that failed, being cancelled before it is reported (why it failed).
    cancelling: Option<HydfsError>,
    /// The cancel of this failed create has ended: its failure is reported as it is.
    cancel_ended: bool,
    /// An append's or seal's binding: the create of the file it was issued against, which
    /// every request of it names (`WriteRequest::of`). `None` until known: a non-persistent
    /// write looks it up (`Stat`) before its first request.
    of: Option<Stamp>,
    /// Times a local write was bound again to the create a coordinator named, after its
    /// binding turned out to be a deleted file's (at most [`MAX_REBINDS`] unless persistent).
    rebinds: u8,
}

/// Rebindings of one local write before it fails as `NotFound` (its file keeps being deleted
/// and created again under it).
const MAX_REBINDS: u8 = 3;

/// Names whose create a client remembers (its appends are bound without a lookup); the
/// lowest name is forgotten first beyond this.
const MAX_KNOWN_CREATES: usize = 4096;

impl OpState {
    /// Whether the next request looks up the file's create: an append or seal bound to none
    /// yet (a persistent one is sent unbound: it goes on even while no replica has its file),
    /// and a multiappend before its parts are sent.
    fn looks_up(&self) -> bool {
        match &self.kind {
            Kind::Write { meta } => meta.kind != WriteKind::Create && self.of.is_none() && !self.persistent,
            Kind::Multi { unsent, .. } => !unsent.is_empty(),
            _ => false,
        }
    }
}

enum Kind {
    Write {
        meta: WriteMeta,
    },
    /// [`ClientOp::Download`]: chunks delivered in order as [`HydfsEvent::ReadData`].
    Read {
        pinned: Option<NodeAddr>,
        /// Keep a copy of the content in `buf` for the read cache: only for a file of at most a
        /// quarter of the cache, read from any replica (decided at the first chunk).
        keep: bool,
        buf: Vec<u8>,
        view: Option<u64>,
        total: u64,
        writes: Vec<Stamp>,
        restarts: u32,
        /// Bytes delivered in order so far.
        done: u64,
        /// The next offset to ask for.
        next_ask: u64,
        /// Chunk requests outstanding, with their offsets.
        inflight: BTreeMap<ReqId, u64>,
        /// Chunks that arrived ahead of `done`.
        ahead: BTreeMap<u64, Bulk>,
    },
    Merge,
    Ls {
        waiting: BTreeSet<ReqId>,
        rows: Vec<(NodeAddr, RingId, Option<FileDigest>)>,
    },
    /// [`ClientOp::MultiAppend`]: first the file's create is looked up (`Stat`), then each
    /// node of `unsent` is asked to append its bytes to that file (`waiting`).
    Multi {
        waiting: BTreeMap<ReqId, NodeAddr>,
        nodes: Vec<NodeAddr>,
        failed: Vec<String>,
        unsent: Vec<(NodeAddr, Vec<u8>)>,
    },
    /// [`ClientOp::Meta`]: one `Describe` at a time.
    Meta,
    /// [`ClientOp::ReadPart`]: one `Fetch` at a time (or a local read).
    Part {
        stamp: Stamp,
        part: u32,
        prefer: Option<NodeAddr>,
    },
    /// [`ClientOp::Delete`], queued with the file's writes.
    Delete,
}

impl Kind {
    fn read(pinned: Option<NodeAddr>) -> Kind {
        Kind::Read {
            pinned,
            keep: false,
            buf: Vec::new(),
            view: None,
            total: 0,
            writes: Vec::new(),
            restarts: 0,
            done: 0,
            next_ask: 0,
            inflight: BTreeMap::new(),
            ahead: BTreeMap::new(),
        }
    }
}

impl Hydfs {
    /// Starts a client operation; its result arrives as [`HydfsEvent::OpDone`] with the returned
    /// id (at once, for a cached read).
    pub fn submit(&mut self, now: Time, op: ClientOp) -> Result<OpId, HydfsError> {
        self.submit_inner(now, op, None, None)
    }

    /// Bytes the whole-file reads ([`ClientOp::Download`]) of this node hold right now: chunks
    /// that arrived ahead of their turn (at most `read_window` chunks per read, whatever the
    /// file's size) and the copy kept for the read cache (only of a file of at most a quarter of
    /// the cache). Chunks already delivered as [`HydfsEvent::ReadData`] belong to the driver.
    pub fn read_bytes_held(&self) -> u64 {
        self.client
            .ops
            .values()
            .map(|o| match &o.kind {
                Kind::Read { buf, ahead, .. } => {
                    buf.len() as u64 + ahead.values().map(|c| c.len() as u64).sum::<u64>()
                }
                _ => 0,
            })
            .sum()
    }

    /// Writes this client had acknowledged, per file (what its reads must include).
    pub fn acknowledged(&self, name: &FileName) -> usize {
        self.client.acked.get(name).map_or(0, |g| g.values().map(BTreeSet::len).sum())
    }

    /// What a read of `name` must include: this client's acknowledged writes, by create,
    /// leaving out files this node knows were deleted.
    fn needs(&self, name: &FileName) -> Vec<Needs> {
        let Some(groups) = self.client.acked.get(name) else { return Vec::new() };
        groups
            .iter()
            .filter(|(c, _)| !self.tombstones.contains(name, **c))
            .map(|(c, w)| Needs { create: *c, writes: w.iter().copied().collect() })
            .collect()
    }

    /// File `(name, create)` was deleted: its writes no longer count toward what this client's
    /// reads must include, and no cached copy of the name is served.
    pub(super) fn client_forget_deleted(&mut self, name: &FileName, create: Stamp) {
        if self.client.creates.get(name) == Some(&create) {
            self.client.creates.remove(name);
        }
        if let Some(groups) = self.client.acked.get_mut(name) {
            groups.remove(&create);
            if groups.is_empty() {
                self.client.acked.remove(name);
            }
        }
        self.client.cache.invalidate(name);
    }

    /// Starts `op`; `remote`: a multiappend part run for another node, bound to the create
    /// `bound` that node looked up.
    fn submit_inner(
        &mut self,
        now: Time,
        op: ClientOp,
        remote: Option<(NodeAddr, ReqId)>,
        bound: Option<Stamp>,
    ) -> Result<OpId, HydfsError> {
        let command = op.command();
        let (len, limit) = (op.name().as_str().len(), self.cfg.max_name_bytes);
        if len > limit {
            self.stats.names_refused += 1;
            return Err(HydfsError::NameTooLong { len, limit });
        }
        if let ClientOp::Create { data, .. }
        | ClientOp::Append { data, .. }
        | ClientOp::Persist { data, .. } = &op
        {
            if data.len() as u64 > self.cfg.max_write_bytes {
                return Err(HydfsError::TooLarge { len: data.len() as u64, limit: self.cfg.max_write_bytes });
            }
        }
        if let ClientOp::Upload { source, .. } = &op {
            if source.len() > self.cfg.max_write_bytes {
                return Err(HydfsError::TooLarge { len: source.len(), limit: self.cfg.max_write_bytes });
            }
            if let Some(p) = source.parts.iter().find(|p| p.len as usize > self.cfg.chunk_bytes) {
                return Err(HydfsError::TooLarge { len: p.len as u64, limit: self.cfg.chunk_bytes as u64 });
            }
        }
        if let ClientOp::MultiAppend { appends, .. } = &op {
            if let Some((_, d)) = appends.iter().find(|(_, d)| d.len() as u64 > self.cfg.max_write_bytes) {
                return Err(HydfsError::TooLarge { len: d.len() as u64, limit: self.cfg.max_write_bytes });
            }
            if let Some((a, _)) = appends.iter().find(|(a, _)| !self.ring.contains(*a)) {
                return Err(HydfsError::NotAMember(*a));
            }
        }
        let id = self.client.next_op;
        self.client.next_op += 1;
        let name = op.name().clone();
        let is_create = matches!(op, ClientOp::Create { .. });
        let persistent = matches!(op, ClientOp::Persist { .. });
        let is_delete = matches!(op, ClientOp::Delete { .. });
        let kind = match op {
            ClientOp::Persist { kind, data, .. } => {
                let stamp = self.next_stamp(now);
                let meta = WriteMeta::describe(stamp, kind, &data, self.chunk_bytes());
                self.client.uploads.insert((name.clone(), stamp), Upload::Bytes(data));
                Kind::Write { meta }
            }
            ClientOp::Create { data, .. } | ClientOp::Append { data, .. } => {
                let wk = if is_create { WriteKind::Create } else { WriteKind::Append };
                let stamp = self.next_stamp(now);
                let meta = WriteMeta::describe(stamp, wk, &data, self.chunk_bytes());
                self.client.uploads.insert((name.clone(), stamp), Upload::Bytes(data));
                Kind::Write { meta }
            }
            ClientOp::Upload { kind, source, .. } => {
                let stamp = self.next_stamp(now);
                let meta = WriteMeta { stamp, kind, parts: source.parts.clone() };
                self.client.uploads.insert((name.clone(), stamp), Upload::source(source));
                Kind::Write { meta }
            }
            ClientOp::Download { from: ReadFrom::Any, .. } => {
                if let Some(out) = self.deliver_cached(now, id, &name) {
                    self.stats.request_latency.entry(command).or_default().observe(crate::time::Millis(0));
                    self.finish(now, id, remote, Ok(out));
                    return Ok(id);
                }
                Kind::read(None)
            }
            ClientOp::Download { from: ReadFrom::Latest, .. } => Kind::read(None),
            ClientOp::Download { from: ReadFrom::Replica(replica), .. } => Kind::read(Some(replica)),
            ClientOp::Merge { .. } => Kind::Merge,
            ClientOp::Meta { .. } => Kind::Meta,
            ClientOp::Delete { .. } => Kind::Delete,
            ClientOp::ReadPart { stamp, part, prefer, .. } => Kind::Part { stamp, part, prefer },
            ClientOp::Ls { .. } => Kind::Ls { waiting: BTreeSet::new(), rows: Vec::new() },
            ClientOp::MultiAppend { appends, .. } => {
                let nodes: Vec<NodeAddr> = appends.iter().map(|(a, _)| *a).collect();
                Kind::Multi { waiting: BTreeMap::new(), nodes, failed: Vec::new(), unsent: appends }
            }
        };
        // An append or seal is bound to the file it is issued against: the create a remote
        // requester looked up, else the one this node knows (looked up before the first request
        // when it knows none).
        let of = match &kind {
            Kind::Write { meta } if meta.kind != WriteKind::Create => {
                bound.or_else(|| self.known_create(&name))
            }
            _ => None,
        };
        let is_write = matches!(kind, Kind::Write { .. });
        let is_multi = matches!(kind, Kind::Multi { .. });
        let allowance = match &kind {
            Kind::Write { meta } => self.cfg.transfer_allowance(meta.len()),
            _ => crate::time::Millis(0),
        };
        self.client.ops.insert(
            id,
            OpState {
                name: name.clone(),
                kind,
                deadline: if persistent { Time(u64::MAX) } else { now + self.cfg.op_timeout + allowance },
                candidates: Vec::new(),
                next: 0,
                not_found: 0,
                last_error: None,
                wait_until: None,
                remote,
                queued: is_write || is_delete,
                persistent,
                started: now,
                command,
                cancelling: None,
                cancel_ended: false,
                of,
                rebinds: 0,
            },
        );
        if is_multi {
            // Looks the file's create up first: every part is bound to it.
            self.dispatch(now, id);
            return Ok(id);
        }
        if is_write || is_delete {
            let q = self.client.queues.entry(name).or_default();
            q.push_back(id);
            if q.len() > 1 {
                return Ok(id);
            }
        }
        self.dispatch(now, id);
        Ok(id)
    }

    /// The stamp of a new write: a growing timestamp and sequence keep this client's order.
    fn next_stamp(&mut self, now: Time) -> Stamp {
        self.client.seq += 1;
        self.client.last_ts = now.0.max(self.client.last_ts + 1);
        Stamp { ts: self.client.last_ts, client: self.client_id, seq: self.client.seq }
    }

    /// The create of `name` this node knows, from the last answer about it, else from its own
    /// copy; never a create it holds a tombstone for.
    fn known_create(&self, name: &FileName) -> Option<Stamp> {
        let held = || self.store.file(name).and_then(|r| r.create.as_ref()).map(|c| c.stamp);
        self.client.creates.get(name).copied().or_else(held).filter(|c| !self.tombstones.contains(name, *c))
    }

    /// Remembers that `name` was created by `create` (the lowest name is forgotten beyond
    /// [`MAX_KNOWN_CREATES`]).
    fn remember_create(&mut self, name: &FileName, create: Stamp) {
        self.client.creates.insert(name.clone(), create);
        while self.client.creates.len() > MAX_KNOWN_CREATES {
            self.client.creates.pop_first();
        }
    }

    fn chunk_bytes(&self) -> usize {
        if self.cfg.bug(PlantedBug::UnchunkedTransfers) {
            usize::MAX >> 1
        } else {
            self.cfg.chunk_bytes
        }
    }

    /// Serves a whole-file read from the read cache, if its copy is fresh and includes every
    /// write this client had acknowledged: the content as in-order chunks, then the summary. (A
    /// cached file is at most a quarter of the cache, so this is bounded by the cache's size.)
    fn deliver_cached(&mut self, now: Time, id: OpId, name: &FileName) -> Option<OpOutput> {
        let ignore_own = self.cfg.bug(PlantedBug::CacheIgnoresOwnWrites);
        let ttl = self.cfg.cache_ttl;
        let own: BTreeSet<Stamp> = self.needs(name).into_iter().flat_map(|n| n.writes).collect();
        let chunk = self.cfg.chunk_bytes.max(1);
        let hit = match self.client.cache.get(name) {
            Some(entry) if now <= entry.fetched_at + ttl && (ignore_own || own.is_subset(&entry.writes)) => {
                let (mut offset, total) = (0u64, entry.content.len() as u64);
                for c in entry.content.chunks(chunk) {
                    self.events.push_back(HydfsEvent::ReadData {
                        op: id,
                        offset,
                        total,
                        bytes: Bulk::from(c),
                    });
                    offset += c.len() as u64;
                }
                let writes = entry.writes.iter().copied().collect();
                Some(OpOutput::Downloaded { name: name.clone(), len: offset, writes, from: None })
            }
            Some(_) => {
                self.client.cache.invalidate(name);
                None
            }
            None => None,
        };
        match hit {
            Some(_) => self.client.cache.hits += 1,
            None => self.client.cache.misses += 1,
        }
        hit
    }

    /// Sends the operation's next attempt to its next candidate replica.
    fn dispatch(&mut self, now: Time, id: OpId) {
        let Some(op) = self.client.ops.get_mut(&id) else { return };
        if op.cancelling.is_some() {
            // A failed create being cancelled is never sent again (an op behind it in its
            // file's queue that ends would otherwise dispatch it).
            return;
        }
        op.wait_until = None;
        if op.candidates.is_empty() || op.next >= op.candidates.len() {
            let round_over = !op.candidates.is_empty();
            // A persistent append goes on when no replica has the file (its replicas may be
            // moving); a persistent seal does not: a file that is gone has nothing to hand over.
            let persistent_append =
                op.persistent && matches!(&op.kind, Kind::Write { meta } if meta.kind == WriteKind::Append);
            if round_over && op.not_found >= op.candidates.len() && !persistent_append {
                let name = op.name.clone();
                return self.finish(now, id, None, Err(HydfsError::NotFound(name)));
            }
            let candidates = match &op.kind {
                Kind::Read { pinned: Some(r), .. } => vec![*r],
                Kind::Part { stamp, part, prefer } => {
                    // The preferred node, then this node if it holds the part, then the replicas.
                    let mut c: Vec<NodeAddr> = prefer.iter().copied().collect();
                    if self.store.has_part(&op.name, *stamp, *part) && !c.contains(&self.me) {
                        c.push(self.me);
                    }
                    for r in self.ring.replicas_of(&op.name, self.cfg.replication) {
                        if !c.contains(&r) {
                            c.push(r);
                        }
                    }
                    c
                }
                _ => self.ring.replicas_of(&op.name, self.cfg.replication),
            };
            let op = self.client.ops.get_mut(&id).expect("present");
            if candidates.is_empty() {
                let name = op.name.clone();
                return self.finish(now, id, None, Err(HydfsError::NoLiveReplica(name)));
            }
            if matches!(op.kind, Kind::Read { pinned: Some(_), .. }) && round_over {
                let reason = op.last_error.clone().unwrap_or_else(|| "no answer".into());
                let name = op.name.clone();
                return self.finish(now, id, None, Err(HydfsError::Unavailable { name, reason }));
            }
            op.candidates = candidates;
            op.next = 0;
            op.not_found = 0;
            if round_over {
                op.wait_until = Some(now + self.cfg.retry_interval);
                return;
            }
        }
        let op = self.client.ops.get_mut(&id).expect("present");
        let to = op.candidates[op.next];
        op.next += 1;
        if to != self.me && !self.member_ids.is_empty() && !self.member_ids.contains_key(&to) {
            // A candidate of an earlier ring that has since left it: never ask it.
            return self.dispatch(now, id);
        }
        let name = op.name.clone();
        if let (true, Kind::Part { stamp, part, .. }) = (to == self.me, &op.kind) {
            let (stamp, part) = (*stamp, *part);
            return self.read_part_locally(now, id, name, stamp, part);
        }
        let looks_up = op.looks_up();
        let (of, persistent) = (op.of, op.persistent);
        // A single small part travels inside the write request.
        let inline_of = match &op.kind {
            _ if looks_up => None,
            Kind::Write { meta } if meta.parts.is_empty() => Some(None),
            Kind::Write { meta } if meta.parts.len() == 1 && meta.len() <= self.cfg.inline_bytes as u64 => {
                Some(Some(meta.stamp))
            }
            _ => None,
        };
        let inline = match inline_of {
            Some(None) => Some(Vec::new()),
            Some(Some(stamp)) => match self.upload_part(&name, stamp, 0) {
                Some(Ok(bytes)) => Some(bytes.into_vec()),
                Some(Err(e)) => return self.finish(now, id, None, Err(HydfsError::Storage(e))),
                None => None,
            },
            None => None,
        };
        if matches!(self.client.ops.get(&id).map(|o| &o.kind), Some(Kind::Read { .. })) {
            // Answers to an abandoned attempt no longer count.
            self.client.requests.retain(|_, r| r.0 != id);
        }
        let req = self.next_req + 1;
        self.next_req = req;
        // What a read must include (a write needs none: the list grows with the client's writes).
        let needs_now = match self.client.ops.get(&id).map(|o| &o.kind) {
            Some(Kind::Read { .. } | Kind::Meta) => self.needs(&name),
            _ => Vec::new(),
        };
        let op = self.client.ops.get_mut(&id).expect("present");
        let (msg, timeout) = match &mut op.kind {
            _ if looks_up => (HydfsMsg::Stat { req, name }, self.cfg.request_timeout),
            Kind::Write { meta } => {
                let wait = self.cfg.coordinator_timeout
                    + self.cfg.request_timeout
                    + self.cfg.transfer_allowance(meta.len());
                let of = if meta.kind == WriteKind::Create { None } else { of };
                debug_assert!(
                    meta.kind == WriteKind::Create || of.is_some() || persistent,
                    "every request of a non-persistent append names the file it was issued against"
                );
                let write = WriteRequest { req, name, write: meta.clone(), inline, source: self.me, of };
                (HydfsMsg::Write(write), wait)
            }
            Kind::Read { pinned, restarts, .. } => {
                let mut fresh = Kind::read(*pinned);
                if let Kind::Read { restarts: r, inflight, next_ask, .. } = &mut fresh {
                    *r = *restarts;
                    inflight.insert(req, 0);
                    *next_ask = self.cfg.chunk_bytes as u64;
                }
                let needs = if pinned.is_some() { Vec::new() } else { needs_now.clone() };
                let pinned = pinned.is_some();
                op.kind = fresh;
                let read = ReadRequest { req, name, offset: 0, view: None, needs, pinned };
                (HydfsMsg::Read(read), self.cfg.request_timeout)
            }
            Kind::Merge => {
                (HydfsMsg::Merge { req, name }, self.cfg.coordinator_timeout + self.cfg.request_timeout)
            }
            Kind::Meta => {
                (HydfsMsg::Describe { req, name, needs: needs_now, client: true }, self.cfg.request_timeout)
            }
            Kind::Delete => {
                (HydfsMsg::Delete { req, name }, self.cfg.coordinator_timeout + self.cfg.request_timeout)
            }
            Kind::Part { stamp, part, .. } => {
                let fetch = FetchRequest { req, name, stamp: *stamp, part: *part };
                (HydfsMsg::Fetch(fetch), self.cfg.request_timeout)
            }
            Kind::Ls { waiting, .. } => {
                // Ask every replica at once.
                let targets = op.candidates.clone();
                op.next = targets.len();
                waiting.clear();
                let until = now + self.cfg.request_timeout;
                for t in targets {
                    let r = self.next_req + 1;
                    self.next_req = r;
                    waiting.insert(r);
                    self.client.requests.insert(r, (id, t, until));
                    self.out.push_back((t, HydfsMsg::Stat { req: r, name: name.clone() }));
                }
                return;
            }
            Kind::Multi { .. } => return,
        };
        self.client.requests.insert(req, (id, to, now + timeout));
        self.send(to, msg);
    }

    /// A [`ClientOp::ReadPart`] served by this node's own storage: no message, no copy over the
    /// network. The bytes are checked against the part's declared metadata.
    fn read_part_locally(&mut self, now: Time, id: OpId, name: FileName, stamp: Stamp, part: u32) {
        let me = self.me;
        let declared = self.store.part_meta(&name, stamp, part);
        match (self.store.read_part(&name, stamp, part), declared) {
            (Ok(bytes), Some(meta)) if meta.matches(&bytes) => {
                let out = OpOutput::Part { name, stamp, part, bytes, from: me };
                self.finish(now, id, None, Ok(out));
            }
            (Ok(_), _) | (Err(PartError::Corrupt), _) => {
                self.corruption(&name, stamp, part);
                self.attempt_failed(now, id, format!("{me}: {}", Refusal::Corrupt), false);
            }
            (Err(PartError::Missing), _) => self.attempt_failed(now, id, format!("{me}: not found"), true),
            (Err(PartError::Lost(e)), _) => {
                self.part_lost(&name, stamp, part, &e);
                self.attempt_failed(now, id, format!("{me}: {e}"), false)
            }
        }
    }

    /// A replica's answer to a [`ClientOp::Meta`]: accepted only if the copy holds the file,
    /// includes every write this client had acknowledged, and is complete in its create and
    /// merged appends; pending appends still arriving there are left out.
    pub(super) fn on_meta_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        meta: Result<FileMeta, Refusal>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        let Some(OpState { name, kind: Kind::Meta, .. }) = self.client.ops.get(&id) else { return };
        let name = name.clone();
        // The replica judged the client's needs (it knows which files were deleted).
        let mut meta = match meta {
            Ok(m) if m.create.is_some() && m.name == name => m,
            Ok(_) => return self.attempt_failed(now, id, format!("{from}: not found"), true),
            Err(r) => return self.refusal(now, id, from, r),
        };
        let incomplete: BTreeSet<Stamp> = std::mem::take(&mut meta.incomplete).into_iter().collect();
        let present: BTreeSet<Stamp> =
            meta.all_writes().map(|w| w.stamp).filter(|s| !incomplete.contains(s)).collect();
        if meta.create.iter().chain(&meta.merged).any(|w| incomplete.contains(&w.stamp)) {
            let why = format!("{from}: its copy is being repaired");
            return self.attempt_failed(now, id, why, false);
        }
        meta.pending.retain(|w| !incomplete.contains(&w.stamp));
        debug_assert!(
            meta.all_writes().all(|w| present.contains(&w.stamp)),
            "only complete writes are listed"
        );
        self.finish(now, id, None, Ok(OpOutput::Meta { name, meta, from }));
    }

    /// A node's answer to a [`ClientOp::ReadPart`]: its bytes are accepted only if they match
    /// the metadata the part's write declared.
    pub(super) fn on_part_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<PartBytes, Refusal>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        let Some(OpState { name, kind: Kind::Part { stamp, part, .. }, .. }) = self.client.ops.get(&id)
        else {
            return;
        };
        let (name, stamp, part) = (name.clone(), *stamp, *part);
        match result {
            Ok(PartBytes { meta, bytes }) if meta.matches(&bytes) => {
                let out = OpOutput::Part { name, stamp, part, bytes: bytes.into_vec(), from };
                self.finish(now, id, None, Ok(out));
            }
            Ok(_) => {
                let why = format!("{from}: the part's bytes do not match its metadata");
                self.attempt_failed(now, id, why, false);
            }
            Err(r) => self.refusal(now, id, from, r),
        }
    }

    /// A coordinator's answer to a [`ClientOp::Delete`].
    pub(super) fn on_delete_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<(Stamp, Vec<NodeAddr>), Refusal>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        let Some(OpState { name, kind: Kind::Delete, .. }) = self.client.ops.get(&id) else { return };
        let name = name.clone();
        match result {
            Ok((create, replicas)) => {
                self.client_forget_deleted(&name, create);
                self.finish(now, id, None, Ok(OpOutput::Deleted { name, create, replicas }));
            }
            Err(r) => self.refusal(now, id, from, r),
        }
    }

    /// The attempt at `req` failed: try the next replica.
    fn attempt_failed(&mut self, now: Time, id: OpId, why: String, not_found: bool) {
        let Some(op) = self.client.ops.get_mut(&id) else { return };
        op.last_error = Some(why);
        if not_found {
            op.not_found += 1;
        }
        self.dispatch(now, id);
    }

    fn finish(
        &mut self,
        now: Time,
        id: OpId,
        remote: Option<(NodeAddr, ReqId)>,
        result: Result<OpOutput, HydfsError>,
    ) {
        if let Err(e) = &result {
            if self.cancel_failed_create(now, id, e) {
                return;
            }
        }
        let state = self.client.ops.remove(&id);
        if let Some(s) = &state {
            self.stats.request_latency.entry(s.command).or_default().observe(now.since(s.started));
        }
        self.client.requests.retain(|_, (op, _, _)| *op != id);
        let remote = remote.or_else(|| state.as_ref().and_then(|s| s.remote));
        if let Some(OpState { name, kind, queued: true, .. }) = &state {
            if let Kind::Write { meta } = kind {
                self.client.uploads.remove(&(name.clone(), meta.stamp));
                if result.is_ok() && !self.cfg.bug(PlantedBug::CacheIgnoresOwnWrites) {
                    self.client.cache.invalidate(name);
                }
            }
            if let Some(q) = self.client.queues.get_mut(name) {
                q.retain(|o| *o != id);
                let next = q.front().copied();
                if q.is_empty() {
                    self.client.queues.remove(name);
                }
                if let Some(next) = next {
                    self.dispatch(now, next);
                }
            }
        }
        if let Some(OpState { name, kind: Kind::Merge, .. }) = &state {
            self.client.cache.invalidate(name);
        }
        match remote {
            Some((to, req)) => {
                let result = result.map(|_| ()).map_err(|e| e.to_string());
                self.send(to, HydfsMsg::RemoteAppendReply { req, result });
            }
            None => self.events.push_back(HydfsEvent::OpDone { op: id, result }),
        }
    }

    /// A create failing with `e`: unless nothing can have been placed (the request was refused
    /// as malformed), some replica may have stored it, and anti-entropy would spread that copy.
    /// That holds even for `AlreadyExists`: a replica holding another create of the name refuses
    /// it after others stored it. The create is cancelled first, as a delete of its own stamp
    /// ([`Hydfs::cancel_create`]), and reported when every replica dropped it, or when the
    /// cancel gave up. Returns whether the cancel started (the operation is then not finished).
    fn cancel_failed_create(&mut self, now: Time, id: OpId, e: &HydfsError) -> bool {
        let Some(op) = self.client.ops.get_mut(&id) else { return false };
        let Kind::Write { meta } = &op.kind else { return false };
        let placed_nothing = matches!(
            e,
            HydfsError::TooLarge { .. }
                | HydfsError::NameTooLong { .. }
                | HydfsError::BadName(_)
                | HydfsError::CreateFailed { .. }
        );
        if meta.kind != WriteKind::Create || placed_nothing || op.cancelling.is_some() || op.cancel_ended {
            return false;
        }
        let (name, stamp) = (op.name.clone(), meta.stamp);
        if self.cfg.bug(PlantedBug::FailedCreateKept) {
            let e = HydfsError::CreateFailed { name, stamp, reason: e.to_string(), cancelled: true };
            self.finish(now, id, None, Err(e));
            return true;
        }
        // The operation leaves the dispatch loop: no requests, no deadline, no retry.
        op.cancelling = Some(e.clone());
        op.deadline = Time(u64::MAX);
        op.wait_until = None;
        self.client.requests.retain(|_, (o, _, _)| *o != id);
        self.cancel_create(now, id, name, stamp);
        true
    }

    /// The cancel of a failed create ended: `cancelled` when every replica dropped it. A create
    /// refused because the name is taken is reported as that, whatever the cancel found: the
    /// name stays taken either way.
    pub(super) fn create_cancel_ended(&mut self, now: Time, id: OpId, cancelled: bool) {
        let Some(op) = self.client.ops.get_mut(&id) else { return };
        debug_assert!(
            op.cancelling.is_some() && !op.cancel_ended,
            "a cancel ends once, for a create being cancelled"
        );
        let (Kind::Write { meta }, Some(error)) = (&op.kind, op.cancelling.take()) else { return };
        op.cancel_ended = true;
        let e = match error {
            HydfsError::AlreadyExists(name) => HydfsError::AlreadyExists(name),
            other => HydfsError::CreateFailed {
                name: op.name.clone(),
                stamp: meta.stamp,
                reason: other.to_string(),
                cancelled,
            },
        };
        self.finish(now, id, None, Err(e));
    }

    /// Whether this node's client waits for the answer to `req` from `from`.
    pub(super) fn client_awaits(&self, req: ReqId, from: NodeAddr) -> bool {
        self.client.requests.get(&req).is_some_and(|(_, to, _)| *to == from)
    }

    fn take_request(&mut self, req: ReqId, from: NodeAddr) -> Option<OpId> {
        match self.client.requests.get(&req) {
            Some((op, to, _)) if *to == from => {
                let op = *op;
                self.client.requests.remove(&req);
                Some(op)
            }
            _ => None,
        }
    }

    fn refusal(&mut self, now: Time, id: OpId, from: NodeAddr, r: Refusal) {
        let name = match self.client.ops.get(&id) {
            Some(op) => op.name.clone(),
            None => return,
        };
        match r {
            Refusal::AlreadyExists => self.finish(now, id, None, Err(HydfsError::AlreadyExists(name))),
            Refusal::TooLarge { limit } => {
                let len = match &self.client.ops[&id].kind {
                    Kind::Write { meta } => meta.len(),
                    _ => 0,
                };
                self.finish(now, id, None, Err(HydfsError::TooLarge { len, limit }))
            }
            Refusal::StorageFailed(why) => self.finish(now, id, None, Err(HydfsError::Storage(why))),
            Refusal::Sealed { owner, term } => {
                self.finish(now, id, None, Err(HydfsError::Sealed { name, owner, term }))
            }
            Refusal::NameTooLong { len, limit } => {
                self.finish(now, id, None, Err(HydfsError::NameTooLong { len, limit }))
            }
            Refusal::TooManyPending { limit } => {
                self.finish(now, id, None, Err(HydfsError::TooManyPending { name, limit }))
            }
            Refusal::FileFull { limit } => {
                self.finish(now, id, None, Err(HydfsError::FileFull { name, limit }))
            }
            Refusal::NotFound => self.attempt_failed(now, id, format!("{from}: not found"), true),
            Refusal::Deleted => self.attempt_failed(now, id, format!("{from}: {}", Refusal::Deleted), true),
            other => self.attempt_failed(now, id, format!("{from}: {other}"), false),
        }
    }

    pub(super) fn on_write_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<Vec<NodeAddr>, Refusal>,
        create: Option<Stamp>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        match result {
            Ok(replicas) => {
                let Some(OpState { name, kind: Kind::Write { meta }, .. }) = self.client.ops.get(&id) else {
                    return;
                };
                let (name, stamp) = (name.clone(), meta.stamp);
                // Grouped by the file the write belongs to, so that a delete of that file ends
                // what this client's reads must include.
                let create = create.unwrap_or(stamp);
                self.remember_create(&name, create);
                self.client.acked.entry(name.clone()).or_default().entry(create).or_default().insert(stamp);
                let out = OpOutput::Written { name, stamp, replicas };
                self.finish(now, id, None, Ok(out));
            }
            Err(Refusal::Deleted) if self.rebind(id, create) => self.ask_again(now, id),
            Err(r) => self.refusal(now, id, from, r),
        }
    }

    /// A coordinator refused local write `id` as issued against a deleted file, naming the
    /// create it holds (`current`): the write, still in progress, is bound to that file now
    /// (at most [`MAX_REBINDS`] times, unless persistent: that one goes on until it lands). A
    /// multiappend part is never rebound: its requester bound it, and may have reported it
    /// failed already.
    fn rebind(&mut self, id: OpId, current: Option<Stamp>) -> bool {
        let Some(op) = self.client.ops.get(&id) else { return false };
        let Some(current) = current.filter(|c| !self.tombstones.contains(&op.name, *c)) else { return false };
        let appends = matches!(&op.kind, Kind::Write { meta } if meta.kind != WriteKind::Create);
        let spent = op.rebinds >= MAX_REBINDS && !op.persistent;
        if !appends || op.remote.is_some() || op.of == Some(current) || spent {
            return false;
        }
        let name = op.name.clone();
        self.remember_create(&name, current);
        let op = self.client.ops.get_mut(&id).expect("present");
        op.of = Some(current);
        op.rebinds += 1;
        true
    }

    /// Sends operation `id` again to the candidate just asked (it holds the file).
    fn ask_again(&mut self, now: Time, id: OpId) {
        if let Some(op) = self.client.ops.get_mut(&id) {
            op.next = op.next.saturating_sub(1);
        }
        self.dispatch(now, id);
    }

    pub(super) fn on_merge_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<MergeSummary, Refusal>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        match result {
            Ok(summary) => {
                let name = self.client.ops[&id].name.clone();
                self.finish(now, id, None, Ok(OpOutput::Merged { name, summary }));
            }
            Err(r) => self.refusal(now, id, from, r),
        }
    }

    pub(super) fn on_read_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<ReadChunk, Refusal>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        let chunk = match result {
            Ok(c) => c,
            Err(Refusal::ViewChanged) => {
                let Some(OpState { kind: Kind::Read { restarts, .. }, next, .. }) =
                    self.client.ops.get_mut(&id)
                else {
                    return;
                };
                *restarts += 1;
                if *restarts <= 5 {
                    *next -= 1; // read the same replica again, from the start
                }
                return self.dispatch(now, id);
            }
            Err(r) => return self.refusal(now, id, from, r),
        };
        // A copy of a file this node knows was deleted (its holder missed the delete: it was down
        // or cut off) is never read; its holder is told, and another replica is asked.
        let create = chunk.writes.first().copied();
        if let (Some(op), Some(create)) = (self.client.ops.get(&id), create) {
            if self.tombstones.contains(&op.name, create) {
                let name = op.name.clone();
                self.tell_deleted(now, from, &name, create);
                return self.attempt_failed(now, id, format!("{from}: {}", Refusal::Deleted), true);
            }
        }
        let (window, chunk_bytes) = (self.cfg.read_window.max(1), self.cfg.chunk_bytes.max(1) as u64);
        // The cache takes a file only up to a quarter of its capacity: one file never evicts most
        // of it, and a larger file is never copied for it.
        let cacheable = self.client.cache.capacity() / 4;
        let timeout = self.cfg.request_timeout;
        let Some(op) = self.client.ops.get_mut(&id) else { return };
        let name = op.name.clone();
        let Kind::Read { pinned, keep, buf, view, total, writes, done, next_ask, inflight, ahead, .. } =
            &mut op.kind
        else {
            return;
        };
        let asked = inflight.remove(&req);
        if asked != Some(chunk.offset) || view.is_some_and(|v| v != chunk.view) {
            return self.attempt_failed(now, id, format!("{from}: inconsistent chunk"), false);
        }
        if view.is_none() {
            *view = Some(chunk.view);
            *total = chunk.total_len;
            *writes = chunk.writes;
            *keep = pinned.is_none() && *total <= cacheable;
        }
        if chunk.bytes.is_empty() && chunk.offset < *total {
            return self.attempt_failed(now, id, format!("{from}: empty chunk"), false);
        }
        if chunk.offset.saturating_add(chunk.bytes.len() as u64) > *total {
            // Bytes past the length the replica gave: never delivered, the read goes on
            // from another replica.
            return self.attempt_failed(now, id, format!("{from}: a chunk past the file's end"), false);
        }
        ahead.insert(chunk.offset, chunk.bytes);
        // Deliver what is now contiguous.
        while let Some(entry) = ahead.first_entry() {
            let (at, len) = (*entry.key(), entry.get().len() as u64);
            if at > *done {
                break;
            }
            let bytes = entry.remove();
            if at + len <= *done {
                continue; // already delivered by an overlapping chunk
            }
            let tail = if at == *done { bytes } else { bytes.tail((*done - at) as usize) };
            let offset = *done;
            *done += tail.len() as u64;
            debug_assert!(*done <= *total, "a chunk delivered ends within the file's length");
            if *keep {
                buf.extend_from_slice(&tail);
            }
            self.events.push_back(HydfsEvent::ReadData { op: id, offset, total: *total, bytes: tail });
        }
        debug_assert!(ahead.len() <= window, "a read holds at most `read_window` chunks out of order");
        if *done < *total {
            // Keep up to `window` chunks in flight (or waiting to be delivered): the bound on
            // what a read holds, whatever the file's size.
            let mut asks = Vec::new();
            while inflight.len() + ahead.len() + asks.len() < window && *next_ask < *total {
                asks.push(*next_ask);
                *next_ask += chunk_bytes;
            }
            if inflight.is_empty() && asks.is_empty() {
                // A replica answered with a shorter chunk than asked: fill the gap.
                asks.push(*done);
                *next_ask = (*next_ask).max(*done + chunk_bytes);
            }
            let v = *view;
            for offset in asks {
                let r = self.next_req + 1;
                self.next_req = r;
                inflight.insert(r, offset);
                self.client.requests.insert(r, (id, from, now + timeout));
                let pinned = pinned.is_some();
                let read =
                    ReadRequest { req: r, name: name.clone(), offset, view: v, needs: Vec::new(), pinned };
                let msg = HydfsMsg::Read(read);
                self.out.push_back((from, msg));
            }
            return;
        }
        let (cache_it, len) = (pinned.is_none() && *keep && *total <= cacheable, *done);
        let content = std::mem::take(buf);
        let writes = std::mem::take(writes);
        if cache_it {
            let set: BTreeSet<Stamp> = writes.iter().copied().collect();
            self.client.cache.insert(name.clone(), CachedFile { content, writes: set, fetched_at: now });
        }
        let out = OpOutput::Downloaded { name, len, writes, from: Some(from) };
        self.finish(now, id, None, Ok(out));
    }

    pub(super) fn on_stat_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        digest: Option<FileDigest>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        let Some(op) = self.client.ops.get_mut(&id) else { return };
        if let Kind::Ls { waiting, rows } = &mut op.kind {
            waiting.remove(&req);
            rows.push((from, RingId::of_node(from), digest));
            return self.ls_maybe_done(now, id);
        }
        // The lookup of an append's (or a multiappend's) create; any other answer is ignored.
        if !op.looks_up() {
            return;
        }
        let name = op.name.clone();
        let Some(create) = digest.and_then(|d| d.create).filter(|c| !self.tombstones.contains(&name, *c))
        else {
            return self.attempt_failed(now, id, format!("{from}: not found"), true);
        };
        self.remember_create(&name, create);
        let op = self.client.ops.get_mut(&id).expect("present");
        match &mut op.kind {
            Kind::Write { .. } => {
                op.of = Some(create);
                self.ask_again(now, id);
            }
            Kind::Multi { unsent, .. } => {
                let (unsent, until) = (std::mem::take(unsent), op.deadline);
                let mut sent = Vec::with_capacity(unsent.len());
                for (node, data) in unsent {
                    let req = self.req_id();
                    self.client.requests.insert(req, (id, node, until));
                    self.send(node, HydfsMsg::RemoteAppend { req, name: name.clone(), data, of: create });
                    sent.push((req, node));
                }
                if let Some(OpState { kind: Kind::Multi { waiting, .. }, .. }) = self.client.ops.get_mut(&id)
                {
                    waiting.extend(sent);
                }
                self.multi_maybe_done(now, id);
            }
            _ => {}
        }
    }

    fn ls_maybe_done(&mut self, now: Time, id: OpId) {
        let Some(OpState { name, kind: Kind::Ls { waiting, rows }, .. }) = self.client.ops.get(&id) else {
            return;
        };
        if !waiting.is_empty() {
            return;
        }
        let name = name.clone();
        let mut rows = rows.clone();
        let order = self.ring.replicas_of(&name, self.cfg.replication);
        rows.sort_by_key(|(a, _, _)| order.iter().position(|o| o == a).unwrap_or(usize::MAX));
        let result = if rows.iter().any(|(_, _, d)| d.is_some_and(|d| d.create.is_some())) {
            Ok(OpOutput::Listed { ring_id: name.ring_id(), name, replicas: rows })
        } else {
            Err(HydfsError::NotFound(name))
        };
        self.finish(now, id, None, result);
    }

    pub(super) fn on_remote_append(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        name: FileName,
        data: Vec<u8>,
        of: Stamp,
    ) {
        self.handled("multiappend", &name, from);
        if let Err(e) = self.submit_inner(now, ClientOp::Append { name, data }, Some((from, req)), Some(of)) {
            self.send(from, HydfsMsg::RemoteAppendReply { req, result: Err(e.to_string()) });
        }
    }

    pub(super) fn on_remote_append_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<(), String>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        let Some(OpState { kind: Kind::Multi { waiting, failed, .. }, .. }) = self.client.ops.get_mut(&id)
        else {
            return;
        };
        waiting.remove(&req);
        if let Err(e) = result {
            failed.push(format!("{from}: {e}"));
        }
        self.multi_maybe_done(now, id);
    }

    fn multi_maybe_done(&mut self, now: Time, id: OpId) {
        let Some(OpState { name, kind: Kind::Multi { waiting, nodes, failed, unsent }, .. }) =
            self.client.ops.get(&id)
        else {
            return;
        };
        if !waiting.is_empty() || !unsent.is_empty() {
            return;
        }
        let result = if failed.is_empty() {
            Ok(OpOutput::MultiAppended { name: name.clone(), nodes: nodes.clone() })
        } else {
            Err(HydfsError::MultiAppend {
                failed: failed.len(),
                total: nodes.len(),
                detail: failed.join("; "),
            })
        };
        self.finish(now, id, None, result);
    }

    /// The bytes of a part this client is uploading (coordinators fetch large writes from it):
    /// `None` if it uploads no such part, an error if its source cannot be read.
    pub(super) fn upload_part(
        &self,
        name: &FileName,
        stamp: Stamp,
        part: u32,
    ) -> Option<Result<Bulk, String>> {
        self.client.uploads.get(&(name.clone(), stamp))?.part(part, self.chunk_bytes())
    }

    /// The metadata of a part this client is uploading, as its write declared it.
    pub(super) fn upload_part_meta(&self, name: &FileName, stamp: Stamp, part: u32) -> Option<PartMeta> {
        match self.client.uploads.get(&(name.clone(), stamp))? {
            Upload::Source { source, .. } => source.parts.get(part as usize).copied(),
            Upload::Bytes(_) => self.client.ops.values().find_map(|o| match &o.kind {
                Kind::Write { meta } if meta.stamp == stamp && &o.name == name => {
                    meta.parts.get(part as usize).copied()
                }
                _ => None,
            }),
        }
    }

    /// Whether this client is uploading the write `stamp` of `name`.
    pub(super) fn has_upload(&self, name: &FileName, stamp: Stamp) -> bool {
        self.client.uploads.contains_key(&(name.clone(), stamp))
    }

    /// The source of an upload failed: the write cannot complete, so it fails now.
    pub(super) fn upload_failed(&mut self, now: Time, name: &FileName, stamp: Stamp, why: String) {
        let op = self.client.ops.iter().find_map(|(id, o)| match &o.kind {
            Kind::Write { meta } if meta.stamp == stamp && &o.name == name => Some(*id),
            _ => None,
        });
        if let Some(id) = op {
            self.finish(now, id, None, Err(HydfsError::Storage(format!("reading the upload: {why}"))));
        }
    }

    fn request_lost(&mut self, now: Time, req: ReqId) {
        let Some((id, to, _)) = self.client.requests.remove(&req) else { return };
        let Some(op) = self.client.ops.get_mut(&id) else { return };
        match &mut op.kind {
            Kind::Ls { waiting, rows } => {
                waiting.remove(&req);
                rows.push((to, RingId::of_node(to), None));
                self.ls_maybe_done(now, id);
            }
            Kind::Multi { waiting, failed, unsent, .. } if unsent.is_empty() => {
                waiting.remove(&req);
                failed.push(format!("{to}: no answer"));
                self.multi_maybe_done(now, id);
            }
            _ => self.attempt_failed(now, id, format!("{to}: no answer"), false),
        }
    }

    pub(super) fn client_tick(&mut self, now: Time) {
        let lost: Vec<ReqId> =
            self.client.requests.iter().filter(|(_, r)| r.2 <= now).map(|(id, _)| *id).collect();
        for req in lost {
            self.request_lost(now, req);
        }
        let due: Vec<OpId> = self
            .client
            .ops
            .iter()
            .filter(|(_, o)| o.wait_until.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.dispatch(now, id);
        }
        let expired: Vec<OpId> =
            self.client.ops.iter().filter(|(_, o)| o.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            let Some(op) = self.client.ops.get(&id) else { continue };
            let reason = op.last_error.clone().unwrap_or_else(|| "timed out".into());
            let name = op.name.clone();
            self.finish(now, id, None, Err(HydfsError::Unavailable { name, reason }));
        }
    }

    /// Members at `gone` failed, left or restarted: every request outstanding there is lost now,
    /// and its operation moves on to a candidate that is still a member (the ring no longer
    /// holds `gone`, and `dispatch` skips candidates that left it).
    pub(super) fn client_members_gone(&mut self, now: Time, gone: &[NodeAddr]) {
        if self.cfg.bug(PlantedBug::WriteFailoverWaits) {
            return;
        }
        let lost: Vec<ReqId> =
            self.client.requests.iter().filter(|(_, r)| gone.contains(&r.1)).map(|(id, _)| *id).collect();
        for req in lost {
            let Some(&(id, to, _)) = self.client.requests.get(&req) else { continue };
            let Some(op) = self.client.ops.get_mut(&id) else { continue };
            if matches!(op.kind, Kind::Ls { .. } | Kind::Multi { .. }) {
                self.request_lost(now, req);
                continue;
            }
            // A new round on the new ring, at once: the pause between rounds is for replicas
            // that refused, not for one that is gone.
            self.client.requests.remove(&req);
            op.candidates.clear();
            op.next = 0;
            op.last_error = Some(format!("{to}: left the group or was declared failed"));
            self.dispatch(now, id);
        }
        // A restarted member is back at its address under a new id: a new round may ask it.
        debug_assert!(
            self.client.requests.values().all(|r| !gone.contains(&r.1) || self.member_ids.contains_key(&r.1)),
            "no request waits on a member that is gone"
        );
    }

    pub(super) fn client_send_failed(&mut self, now: Time, to: NodeAddr) {
        if self.cfg.bug(PlantedBug::WriteFailoverWaits) {
            return;
        }
        let lost: Vec<ReqId> =
            self.client.requests.iter().filter(|(_, r)| r.1 == to).map(|(id, _)| *id).collect();
        for req in lost {
            self.request_lost(now, req);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Bytes in memory that a test can change under an upload.
    struct Changing(Mutex<Vec<u8>>);

    impl PartSource for Changing {
        fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
            let data = self.0.lock().unwrap();
            Ok(data[offset as usize..offset as usize + len].to_vec())
        }
    }

    /// Each replica fetches every part of an upload: the hash of a large part is computed once
    /// and shared by the reads after it, but only with bytes that are the part as described.
    #[test]
    fn reads_of_a_large_part_share_its_hash_while_it_is_unchanged() {
        let chunk = BULK_APART_BYTES;
        let data: Vec<u8> = (0..chunk * 5 / 2).map(|i| (i * 31 % 251) as u8).collect();
        let parts: Vec<PartMeta> = data.chunks(chunk).map(PartMeta::of).collect();
        let reader = Arc::new(Changing(Mutex::new(data.clone())));
        let upload = Upload::source(UploadSource { parts, reader: reader.clone() });
        let read = |i: u32| upload.part(i, chunk).unwrap().unwrap();
        let part = |i: usize| &data[i * chunk..((i + 1) * chunk).min(data.len())];
        // The hash of bytes that no slot holds.
        let hash = |bytes: &[u8]| Bulk::from(bytes).digest();

        let first = read(1);
        assert!(!first.digest_known(), "nothing sent yet");
        assert_eq!(first.digest(), hash(part(1)));
        let second = read(1);
        assert!(second.digest_known(), "a later read of the part shares the hash");
        assert_eq!((&second[..], second.digest()), (part(1), first.digest()));
        assert!(!read(0).digest_known(), "each part has its own");
        assert_eq!(read(2).digest(), hash(part(2)));
        assert!(!read(2).digest_known(), "a part too small to be tagged by its hash keeps none");
        assert!(upload.part(3, chunk).is_none());

        // The bytes change under the upload: they are sent hashed anew (and refused by the
        // replica for their CRC32C), never with the hash of what was there.
        reader.0.lock().unwrap()[chunk + 5] ^= 0xff;
        let now = read(1);
        assert!(!now.digest_known());
        assert_eq!(now.digest(), hash(&reader.0.lock().unwrap()[chunk..2 * chunk]));

        let held = Upload::Bytes(data.clone());
        assert_eq!(held.part(1, chunk).unwrap().unwrap(), part(1).to_vec());
        assert!(held.part(3, chunk).is_none());
    }
}
