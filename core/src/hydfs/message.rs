//! HyDFS messages. All travel on the stream channel (TCP on real nodes); each request carries a
//! [`ReqId`] its reply echoes. Data moves only in parts of at most [`super::CHUNK_BYTES`], and
//! only in messages on the bulk lane ([`HydfsMsg::lane`]).
//!
//! Requests with many fields carry a named body ([`WriteRequest`], [`ReplicateRequest`],
//! [`InstallRequest`], [`ReadRequest`], [`FetchRequest`]), which their handler takes whole. A
//! variant holding a struct encodes exactly as a struct variant with the same fields in the same
//! order: the order of a body's fields is part of the wire format.

use super::pace::{Inventory, InventoryHash};
use super::types::{FileDigest, FileMeta, PartMeta, Stamp, WriteMeta};
use super::FileName;
use crate::bulk::Bulk;
use crate::id::{MemberId, NodeAddr};
use crate::node::Lane;
use serde::{Deserialize, Serialize};

/// Correlates a reply with its request (unique per sending node).
pub type ReqId = u64;

/// Why a node refused a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The file does not exist here.
    #[error("not found")]
    NotFound,
    /// A different create of this name exists.
    #[error("already exists")]
    AlreadyExists,
    /// This node is not one of the file's replicas (in its view).
    #[error("not a replica of this file")]
    NotReplica,
    /// This node's copy misses writes the client already has acknowledged; try another replica.
    #[error("its copy misses writes already acknowledged to this client")]
    Behind,
    /// The file changed between two chunks of one read.
    #[error("the file changed during the read")]
    ViewChanged,
    /// A stored block failed its checksum; it is being repaired.
    #[error("a stored block failed its checksum and is being repaired")]
    Corrupt,
    /// The request exceeds this node's size limit.
    #[error("over the {limit}-byte limit")]
    TooLarge { limit: u64 },
    /// The file name is longer than this node accepts.
    #[error("a file name of {len} bytes is over the {limit}-byte limit")]
    NameTooLong { len: usize, limit: usize },
    /// The file already has this many pending appends: it must be merged first.
    #[error("{limit} appends are pending; run merge")]
    TooManyPending { limit: usize },
    /// The node has as many transfers in flight as it takes: ask again later.
    #[error("busy: {limit} transfers in flight; retry later")]
    Busy { limit: usize },
    /// The node cannot complete the request now (replicas unreachable...).
    #[error("{0}")]
    Unavailable(String),
    /// A replica's storage refused the write (a full disk, an unwritable data dir): the write
    /// fails at once instead of waiting for a timeout.
    #[error("storage failed: {0}")]
    StorageFailed(String),
    /// The file is sealed (`seal.rs`) and the write is not its owner's: an append of a writer a
    /// seal cut off, or a seal that does not extend the file's chain of owners.
    #[error("sealed: the file's writer is {owner} (term {term})")]
    Sealed { owner: MemberId, term: u64 },
    /// The file the request is about was deleted (this node holds its tombstone).
    #[error("the file was deleted")]
    Deleted,
    /// The append would take the description of its file's writes past `limit` bytes
    /// (`max_file_meta_bytes`): the file takes no more appends.
    #[error("the file is full: its writes' description would pass {limit} bytes")]
    FileFull { limit: u64 },
}

/// Writes a client had acknowledged for one file, grouped by the create they belong to: a
/// replica that holds the tombstone of that create (the file was deleted) does not ask for them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Needs {
    pub create: Stamp,
    pub writes: Vec<Stamp>,
}

/// One chunk of a read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadChunk {
    /// Identifies the version of the file being read; later chunks must come from the same one.
    pub view: u64,
    pub total_len: u64,
    /// The writes in the file, in file order (sent with the first chunk only).
    pub writes: Vec<Stamp>,
    pub offset: u64,
    /// The last field, and `ReadChunk` the last of [`HydfsMsg::ReadReply`]: a frame keeps these
    /// bytes apart from the rest of its payload ([`crate::wire::Frame`]), which works only while
    /// they end it.
    pub bytes: Bulk,
}

/// One part's bytes, with the metadata its write declared for the part: the receiver checks the
/// bytes against it, so a part damaged anywhere between the writer and the reader is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartBytes {
    pub meta: PartMeta,
    /// The last field, and `PartBytes` the last of [`HydfsMsg::FetchReply`]: a frame keeps these
    /// bytes apart from the rest of its payload ([`crate::wire::Frame`]), which works only while
    /// they end it.
    pub bytes: Bulk,
}

/// An inventory reply: the whole list, or that it is the one the asker kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryList {
    /// Equal to the inventory whose hash the asker named.
    Unchanged,
    Files(Inventory),
}

/// The body of [`HydfsMsg::Write`]: a client asks a coordinator to store a write on every
/// replica. Small single-part writes travel inline; otherwise the coordinator fetches the parts
/// from `source`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRequest {
    pub req: ReqId,
    pub name: FileName,
    pub write: WriteMeta,
    #[serde(with = "serde_bytes")]
    pub inline: Option<Vec<u8>>,
    pub source: NodeAddr,
    /// For an append or a seal: the create of the file it was issued against. A coordinator
    /// whose copy of the name has another create (the file was deleted, and perhaps created
    /// again) refuses it as `Deleted`, naming the create it holds, so that a request still
    /// travelling after its write was reported never lands in a later file of the name. `None`
    /// for a create, and for a persistent append whose client knew no create of the name.
    pub of: Option<Stamp>,
}

/// The body of [`HydfsMsg::Replicate`]: a coordinator asks a replica to store this write
/// (fetching parts from `sources`), sync, then ack. `create` is the create of the file the
/// coordinator holds (for an append): a replica holding its tombstone refuses the write as
/// `Deleted`, and a replica without a create takes this one (so an append never sits on a
/// replica without the file it belongs to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateRequest {
    pub req: ReqId,
    pub name: FileName,
    pub write: WriteMeta,
    #[serde(with = "serde_bytes")]
    pub inline: Option<Vec<u8>>,
    pub sources: Vec<NodeAddr>,
    /// Boxed: it is rarely needed, and it would make every message as large as two writes.
    pub create: Option<Box<WriteMeta>>,
}

/// The body of [`HydfsMsg::Install`]: a merge's coordinator asks a replica to append `appended`
/// (in this order) to the merged content, if the merged content is still `base` (a merged-order
/// hash), fetching what it lacks from `sources`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRequest {
    pub req: ReqId,
    pub name: FileName,
    pub base: u64,
    pub appended: Vec<WriteMeta>,
    pub sources: Vec<NodeAddr>,
}

/// The body of [`HydfsMsg::Read`]: a client asks a replica for the chunk of the file at
/// `offset`, of the version `view` names (none for the first chunk). `needs` lists writes the
/// client knows are acknowledged; a replica missing one refuses with `Behind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub req: ReqId,
    pub name: FileName,
    pub offset: u64,
    pub view: Option<u64>,
    pub needs: Vec<Needs>,
    /// The client asked for this replica's copy as it is (`getfromreplica`): it is served even
    /// if it was recovered at start and not yet compared with the other replicas.
    pub pinned: bool,
}

/// The body of [`HydfsMsg::Fetch`]: the bytes of part `part` of write `stamp` of file `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub req: ReqId,
    pub name: FileName,
    pub stamp: Stamp,
    pub part: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HydfsMsg {
    /// Client to coordinator: store a write on every replica.
    Write(WriteRequest),
    /// The replicas that stored the write, and the create of the file it belongs to (its own
    /// stamp, for a create); with a `Deleted` refusal of an append, the create the coordinator
    /// holds now, if any.
    WriteReply {
        req: ReqId,
        result: Result<Vec<NodeAddr>, Refusal>,
        create: Option<Stamp>,
    },
    /// Coordinator to replica: store this write, sync, then ack.
    Replicate(ReplicateRequest),
    ReplicateReply {
        req: ReqId,
        result: Result<(), Refusal>,
    },

    /// Client to coordinator: merge the file on every replica.
    Merge {
        req: ReqId,
        name: FileName,
    },
    MergeReply {
        req: ReqId,
        result: Result<MergeSummary, Refusal>,
    },
    /// Coordinator to replica: which appends are pending here?
    Collect {
        req: ReqId,
        name: FileName,
    },
    CollectReply {
        req: ReqId,
        result: Result<Vec<WriteMeta>, Refusal>,
    },
    /// Coordinator to replica: install a merge on this copy.
    Install(InstallRequest),
    /// Carries the bytes the replica fetched to install the merge.
    InstallReply {
        req: ReqId,
        result: Result<u64, Refusal>,
    },

    /// Client to replica: a chunk of the file.
    Read(ReadRequest),
    ReadReply {
        req: ReqId,
        result: Result<ReadChunk, Refusal>,
    },
    /// Client to replica: does this node hold the file?
    Stat {
        req: ReqId,
        name: FileName,
    },
    StatReply {
        req: ReqId,
        digest: Option<FileDigest>,
        /// The members the answering node lists (itself included). A create's coordinator
        /// does not go on while an answer names a member it does not list itself: that member
        /// may hold the name.
        members: Vec<MemberId>,
    },
    /// Client to client: append these bytes as your own write (multiappend), to the file
    /// created by `of`, never to a later file of the name.
    RemoteAppend {
        req: ReqId,
        name: FileName,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        of: Stamp,
    },
    RemoteAppendReply {
        req: ReqId,
        result: Result<(), String>,
    },

    /// Anti-entropy: which files do you hold? `known` is the hash of the inventory the asker
    /// kept from this node's last reply, so an unchanged one is answered in one word.
    Inventory {
        req: ReqId,
        known: Option<InventoryHash>,
    },
    InventoryReply {
        req: ReqId,
        files: InventoryList,
    },
    /// Anti-entropy, and a client's [`super::ClientOp::Meta`]: your whole view of one file.
    /// `needs` as in `Read` (empty for anti-entropy). `client`: a client's, which a copy
    /// recovered at start and not yet compared refuses like a read; anti-entropy's (`false`)
    /// is answered from any copy, since it is what compares them.
    Describe {
        req: ReqId,
        name: FileName,
        needs: Vec<Needs>,
        client: bool,
    },
    DescribeReply {
        req: ReqId,
        meta: Result<FileMeta, Refusal>,
        /// The creates of the deleted files of this name the answering node holds tombstones
        /// for: the asker drops a copy of any of them before it reconciles.
        deleted: Vec<Stamp>,
    },
    /// Hand-off: a node that no longer owns a file offers it to an owner, which pulls what it lacks
    /// and answers `Taken` with the offered digest's hash.
    Offer {
        meta: FileMeta,
        /// As in `DescribeReply`: the creates of deleted files of this name the offering node
        /// holds tombstones for.
        deleted: Vec<Stamp>,
    },
    Taken {
        name: FileName,
        hash: u64,
    },
    /// One part of one write: a replica pulling what it lacks, or a client's
    /// [`super::ClientOp::ReadPart`].
    Fetch(FetchRequest),
    FetchReply {
        req: ReqId,
        result: Result<PartBytes, Refusal>,
    },

    /// Client to coordinator: delete the file on every replica.
    Delete {
        req: ReqId,
        name: FileName,
    },
    /// The create of the deleted file, and the replicas that dropped it.
    DeleteReply {
        req: ReqId,
        result: Result<(Stamp, Vec<NodeAddr>), Refusal>,
    },
    /// File `(name, create)` is deleted: drop any copy of it and keep its tombstone. Sent by a
    /// delete's coordinator to every member, and by any node that meets a copy of a file it
    /// holds the tombstone of (to that copy's holder).
    Remove {
        req: ReqId,
        name: FileName,
        create: Stamp,
    },
    RemoveReply {
        req: ReqId,
        result: Result<(), Refusal>,
    },
}

impl HydfsMsg {
    /// A request that only reads a replica's copy (a client's read, file metadata or part, and
    /// the same from a replica pulling a file): serving it changes nothing.
    pub fn is_read_request(&self) -> bool {
        match self {
            HydfsMsg::Read(_) | HydfsMsg::Describe { .. } | HydfsMsg::Fetch(_) | HydfsMsg::Stat { .. } => {
                true
            }
            HydfsMsg::Write(_)
            | HydfsMsg::Replicate(_)
            | HydfsMsg::RemoteAppend { .. }
            | HydfsMsg::ReadReply { .. }
            | HydfsMsg::FetchReply { .. }
            | HydfsMsg::WriteReply { .. }
            | HydfsMsg::ReplicateReply { .. }
            | HydfsMsg::Merge { .. }
            | HydfsMsg::MergeReply { .. }
            | HydfsMsg::Collect { .. }
            | HydfsMsg::CollectReply { .. }
            | HydfsMsg::Install(_)
            | HydfsMsg::InstallReply { .. }
            | HydfsMsg::StatReply { .. }
            | HydfsMsg::RemoteAppendReply { .. }
            | HydfsMsg::Inventory { .. }
            | HydfsMsg::InventoryReply { .. }
            | HydfsMsg::DescribeReply { .. }
            | HydfsMsg::Offer { .. }
            | HydfsMsg::Taken { .. }
            | HydfsMsg::Delete { .. }
            | HydfsMsg::DeleteReply { .. }
            | HydfsMsg::Remove { .. }
            | HydfsMsg::RemoveReply { .. } => false,
        }
    }

    /// The request id, if this is the answer to a read request (a chunk, a part, a description,
    /// an exists check). Such an answer reaches only a request of the receiver's that went to
    /// its sender (matched by id and address), whose own checks apply to it.
    pub fn read_answer_req(&self) -> Option<ReqId> {
        match self {
            HydfsMsg::ReadReply { req, .. }
            | HydfsMsg::FetchReply { req, .. }
            | HydfsMsg::DescribeReply { req, .. }
            | HydfsMsg::StatReply { req, .. } => Some(*req),
            _ => None,
        }
    }

    /// The lane this message travels on: [`Lane::Bulk`] when it carries file bytes (a write or a
    /// replication with its data inline, a multiappend's data, a fetched part, a read chunk),
    /// [`Lane::Control`] otherwise (requests, refusals, metadata), so that a large transfer
    /// never delays the small messages that coordinate it.
    pub fn lane(&self) -> Lane {
        match self {
            HydfsMsg::Write(WriteRequest { inline: Some(_), .. })
            | HydfsMsg::Replicate(ReplicateRequest { inline: Some(_), .. })
            | HydfsMsg::RemoteAppend { .. }
            | HydfsMsg::ReadReply { result: Ok(_), .. }
            | HydfsMsg::FetchReply { result: Ok(_), .. } => Lane::Bulk,
            HydfsMsg::Write(WriteRequest { inline: None, .. })
            | HydfsMsg::Replicate(ReplicateRequest { inline: None, .. })
            | HydfsMsg::ReadReply { result: Err(_), .. }
            | HydfsMsg::FetchReply { result: Err(_), .. }
            | HydfsMsg::WriteReply { .. }
            | HydfsMsg::ReplicateReply { .. }
            | HydfsMsg::Merge { .. }
            | HydfsMsg::MergeReply { .. }
            | HydfsMsg::Collect { .. }
            | HydfsMsg::CollectReply { .. }
            | HydfsMsg::Install(_)
            | HydfsMsg::InstallReply { .. }
            | HydfsMsg::Read(_)
            | HydfsMsg::Stat { .. }
            | HydfsMsg::StatReply { .. }
            | HydfsMsg::RemoteAppendReply { .. }
            | HydfsMsg::Inventory { .. }
            | HydfsMsg::InventoryReply { .. }
            | HydfsMsg::Describe { .. }
            | HydfsMsg::DescribeReply { .. }
            | HydfsMsg::Offer { .. }
            | HydfsMsg::Taken { .. }
            | HydfsMsg::Fetch(_)
            | HydfsMsg::Delete { .. }
            | HydfsMsg::DeleteReply { .. }
            | HydfsMsg::Remove { .. }
            | HydfsMsg::RemoveReply { .. } => Lane::Control,
        }
    }

    /// Whether this message asks something of its receiver (as opposed to answering it).
    pub fn is_request(&self) -> bool {
        match self {
            HydfsMsg::Write(_)
            | HydfsMsg::Replicate(_)
            | HydfsMsg::Merge { .. }
            | HydfsMsg::Collect { .. }
            | HydfsMsg::Install(_)
            | HydfsMsg::Read(_)
            | HydfsMsg::Stat { .. }
            | HydfsMsg::RemoteAppend { .. }
            | HydfsMsg::Inventory { .. }
            | HydfsMsg::Describe { .. }
            | HydfsMsg::Offer { .. }
            | HydfsMsg::Fetch(_)
            | HydfsMsg::Delete { .. }
            | HydfsMsg::Remove { .. } => true,
            HydfsMsg::WriteReply { .. }
            | HydfsMsg::ReplicateReply { .. }
            | HydfsMsg::MergeReply { .. }
            | HydfsMsg::CollectReply { .. }
            | HydfsMsg::InstallReply { .. }
            | HydfsMsg::ReadReply { .. }
            | HydfsMsg::StatReply { .. }
            | HydfsMsg::RemoteAppendReply { .. }
            | HydfsMsg::InventoryReply { .. }
            | HydfsMsg::DescribeReply { .. }
            | HydfsMsg::Taken { .. }
            | HydfsMsg::FetchReply { .. }
            | HydfsMsg::DeleteReply { .. }
            | HydfsMsg::RemoveReply { .. } => false,
        }
    }
}

/// What a merge did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeSummary {
    pub appended: u32,
    pub replicas: Vec<NodeAddr>,
    /// Bytes of file data the merge moved between nodes.
    pub bytes_moved: u64,
}
