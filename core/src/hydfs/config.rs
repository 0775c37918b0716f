//! HyDFS settings and, behind the `planted-bugs` feature, the deliberate bugs the simulator's
//! checkers must catch.

use super::name::MAX_NAME_BYTES;
use super::types::CHUNK_BYTES;
use crate::time::Millis;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HydfsConfig {
    /// Replicas per file.
    pub replication: usize,
    /// Copies a write needs before it is acknowledged (default: `replication`). With fewer live
    /// members, writes are refused rather than acknowledged with less redundancy.
    pub min_copies: usize,
    /// Largest part of a write, and largest chunk of a read.
    pub chunk_bytes: usize,
    /// Chunks a client keeps in flight while reading one file.
    pub read_window: usize,
    /// Part fetches a node keeps in flight at once (bounds the memory a transfer takes).
    pub fetch_window: usize,
    /// Bytes per second a node pulls for repair (re-replication and anti-entropy), so that
    /// repairs never crowd out client requests or membership traffic. 0 means unlimited.
    pub repair_bytes_per_sec: u64,
    /// Single-part writes up to this size travel inside the write request.
    pub inline_bytes: usize,
    /// Largest create or append accepted.
    pub max_write_bytes: u64,
    /// Longest file name accepted, in bytes (at most [`super::name::NAME_BYTES_CEILING`]): the
    /// client refuses longer names, and a server refuses requests naming one.
    pub max_name_bytes: usize,
    /// Transfers a node coordinates at once: writes in flight plus merges running or queued. A
    /// write or merge beyond it is refused as busy, and its client tries again (another replica,
    /// then the same ones after `retry_interval`). 0 means unlimited.
    pub max_transfers: usize,
    /// Pending (not yet merged) appends one file may hold on its coordinator; an append beyond it
    /// is refused until the file is merged. 0 means unlimited.
    pub max_pending_appends: usize,
    /// The most bytes the metadata of one file's writes may take
    /// ([`super::types::WriteMeta::described_bytes`] summed over its create and its merged and
    /// pending appends). Anti-entropy, a merge and a client's `Meta` send a file's description
    /// whole, in one stream frame, so a file whose description passed the frame limit could no
    /// longer be compared, repaired or merged: a coordinator refuses an append that would take
    /// its file past this (`FileFull`). At about 42 bytes per single-part append, the default
    /// (12 MiB) holds about 300,000 appends. `limits::check` keeps it, plus the slack of a
    /// frame, under the stream frame limit; the room between them absorbs appends a
    /// coordinator whose copy was behind let through.
    pub max_file_meta_bytes: u64,
    /// Capacity of the client's read cache, in bytes (0 turns it off).
    pub cache_bytes: u64,
    /// How long a cached read may be served (it is never served if it could miss one of the
    /// client's own acknowledged writes).
    pub cache_ttl: Millis,
    /// How often a node compares its files with its ring neighbours and pulls what it lacks.
    pub anti_entropy_interval: Millis,
    /// The longest interval between inventory exchanges in a calm cluster: each round that
    /// finds nothing to pull (and no ring change or local write happened) doubles the interval
    /// from `anti_entropy_interval` up to this one; anything else brings it back.
    pub anti_entropy_max_interval: Millis,
    /// Stored bytes verified against their checksums per anti-entropy round (scrubbing); a part
    /// counts as at least [`crate::hydfs::store::SCRUB_PART_MIN_BYTES`] (64 KiB).
    pub scrub_bytes_per_round: u64,
    /// How long a node waits for one reply before trying again or elsewhere.
    pub request_timeout: Millis,
    /// How often a coordinator re-sends to replicas that have not answered.
    pub retry_interval: Millis,
    /// How long a coordinator works on one write or merge before refusing it.
    pub coordinator_timeout: Millis,
    /// How long a client works on one operation before reporting failure.
    pub op_timeout: Millis,
    /// The slowest transfer rate a write is expected to reach: coordinators and clients allow a
    /// write of `n` bytes `n / min_transfer_bytes_per_sec` more time than their timeouts (a read
    /// gets `op_timeout` again whenever a chunk arrives).
    pub min_transfer_bytes_per_sec: u64,
    /// How long a node remembers a deleted file (its tombstone): a copy of it that was cut off
    /// from every node holding the tombstone for longer may come back when it reconnects.
    pub tombstone_ttl: Millis,
    /// Tombstones one node keeps at most; past it, the one closest to expiring is forgotten.
    pub max_tombstones: usize,
    /// Deliberate bugs (tests only).
    #[serde(default)]
    pub planted: Option<PlantedBug>,
}

impl Default for HydfsConfig {
    fn default() -> Self {
        HydfsConfig {
            replication: 3,
            min_copies: 3,
            chunk_bytes: CHUNK_BYTES,
            read_window: 8,
            fetch_window: 16,
            repair_bytes_per_sec: 128 << 20,
            inline_bytes: 64 * 1024,
            max_write_bytes: 1 << 30,
            max_name_bytes: MAX_NAME_BYTES,
            max_transfers: 1024,
            max_pending_appends: 10_000,
            max_file_meta_bytes: 12 << 20,
            cache_bytes: 64 << 20,
            cache_ttl: Millis::from_secs(30),
            anti_entropy_interval: Millis::from_secs(2),
            anti_entropy_max_interval: Millis::from_secs(32),
            scrub_bytes_per_round: 8 << 20,
            request_timeout: Millis::from_secs(10),
            retry_interval: Millis(1_000),
            coordinator_timeout: Millis::from_secs(30),
            op_timeout: Millis::from_secs(60),
            min_transfer_bytes_per_sec: 4 << 20,
            tombstone_ttl: Millis::from_secs(24 * 3600),
            max_tombstones: 100_000,
            planted: None,
        }
    }
}

impl HydfsConfig {
    /// Extra time a transfer of `len` bytes is allowed.
    pub fn transfer_allowance(&self, len: u64) -> Millis {
        Millis(len.saturating_mul(1000) / self.min_transfer_bytes_per_sec.max(1))
    }

    pub(crate) fn bug(&self, bug: PlantedBug) -> bool {
        cfg!(feature = "planted-bugs") && self.planted == Some(bug)
    }
}

/// A deliberate bug, each breaking one guarantee that a checker must then report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlantedBug {
    /// Replicas acknowledge a write before syncing it.
    AckBeforeSync,
    /// A write counts as durable once a flush behind the node's back has begun for it, not
    /// once the flush has completed: a crash meanwhile loses what was acknowledged.
    AckWhenFlushBegins,
    /// The coordinator acknowledges once its own copy is stored.
    AckAfterOneReplica,
    /// A merge is installed on the coordinator only.
    MergeSkipsReplicas,
    /// A merge keeps only each client's latest append.
    MergeLastWriterWins,
    /// A merge orders appends newest first.
    MergeReversesOrder,
    /// The read cache ignores the client's own appends.
    CacheIgnoresOwnWrites,
    /// Nodes never pull files they should hold.
    NoReReplication,
    /// Nodes never drop files they no longer own.
    KeepsUnownedCopies,
    /// Reads skip checksum verification.
    ServesCorruptBlocks,
    /// A create of an existing name replaces the file.
    CreateNotExclusive,
    /// Files travel whole instead of in chunks.
    UnchunkedTransfers,
    /// A merge coordinator never answers.
    MergeNeverAnswers,
    /// A delete drops the copies it reaches but keeps no tombstone.
    DeleteWithoutTombstone,
    /// Dropping a deleted file's copy leaves its blocks in storage.
    DeleteKeepsBlocks,
    /// No failover on a failure: a client waits out the timeouts of a request whose member was
    /// declared failed or could not be reached, and a coordinator its retry pause after the
    /// ring changed, instead of moving on at once.
    WriteFailoverWaits,
    /// A merge coordinator installs what it collected on whatever merged order the file has by
    /// then (no fence): a second coordinator of the same merge appends its writes again.
    MergeUnfenced,
    /// Syncs make the parts durable but never the index that names them: acknowledged writes
    /// survive a crash on disk with nothing pointing at them.
    IndexNotSynced,
    /// Tombstones stay in memory only: a node that restarts has forgotten every delete, so a
    /// copy of a deleted file that some node kept on disk is served as current again.
    TombstonesNotDurable,
    /// A create that failed is reported failed without being cancelled: a replica that kept
    /// its copy lets the file appear later.
    FailedCreateKept,
    /// Seals are stored but mean nothing: replicas take a deposed writer's appends and every
    /// copy keeps them.
    SealIgnored,
    /// Recovery at start trusts every part its index names without reading it back: a block
    /// that rotted or went missing while the node was down is still counted as held.
    RecoveryTrustsBlocks,
    /// A node serves the copies it recovered at start without checking them against the
    /// writes the client needs: a restarted replica answers with a copy that lacks writes
    /// acknowledged while it was down.
    RecoveredCopyServedStale,
    /// Coordinators ignore the create an append was issued against: a request still
    /// travelling after its write was reported failed lands in a later file of the name.
    AppendsUnbound,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 24] = [
        PlantedBug::AckBeforeSync,
        PlantedBug::AckWhenFlushBegins,
        PlantedBug::AckAfterOneReplica,
        PlantedBug::MergeSkipsReplicas,
        PlantedBug::MergeLastWriterWins,
        PlantedBug::MergeReversesOrder,
        PlantedBug::CacheIgnoresOwnWrites,
        PlantedBug::NoReReplication,
        PlantedBug::KeepsUnownedCopies,
        PlantedBug::ServesCorruptBlocks,
        PlantedBug::CreateNotExclusive,
        PlantedBug::UnchunkedTransfers,
        PlantedBug::MergeNeverAnswers,
        PlantedBug::DeleteWithoutTombstone,
        PlantedBug::DeleteKeepsBlocks,
        PlantedBug::WriteFailoverWaits,
        PlantedBug::MergeUnfenced,
        PlantedBug::IndexNotSynced,
        PlantedBug::TombstonesNotDurable,
        PlantedBug::FailedCreateKept,
        PlantedBug::SealIgnored,
        PlantedBug::RecoveryTrustsBlocks,
        PlantedBug::RecoveredCopyServedStale,
        PlantedBug::AppendsUnbound,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::AckBeforeSync => "ack-before-sync",
            PlantedBug::AckWhenFlushBegins => "ack-when-flush-begins",
            PlantedBug::AckAfterOneReplica => "ack-after-one-replica",
            PlantedBug::MergeSkipsReplicas => "merge-skips-replicas",
            PlantedBug::MergeLastWriterWins => "merge-last-writer-wins",
            PlantedBug::MergeReversesOrder => "merge-reverses-order",
            PlantedBug::CacheIgnoresOwnWrites => "cache-ignores-own-writes",
            PlantedBug::NoReReplication => "no-re-replication",
            PlantedBug::KeepsUnownedCopies => "keeps-unowned-copies",
            PlantedBug::ServesCorruptBlocks => "serves-corrupt-blocks",
            PlantedBug::CreateNotExclusive => "create-not-exclusive",
            PlantedBug::UnchunkedTransfers => "unchunked-transfers",
            PlantedBug::MergeNeverAnswers => "merge-never-answers",
            PlantedBug::DeleteWithoutTombstone => "delete-without-tombstone",
            PlantedBug::DeleteKeepsBlocks => "delete-keeps-blocks",
            PlantedBug::WriteFailoverWaits => "write-failover-waits",
            PlantedBug::MergeUnfenced => "merge-unfenced",
            PlantedBug::IndexNotSynced => "index-not-synced",
            PlantedBug::TombstonesNotDurable => "tombstones-not-durable",
            PlantedBug::FailedCreateKept => "failed-create-kept",
            PlantedBug::SealIgnored => "seal-ignored",
            PlantedBug::RecoveryTrustsBlocks => "recovery-trusts-blocks",
            PlantedBug::RecoveredCopyServedStale => "recovered-copy-served-stale",
            PlantedBug::AppendsUnbound => "appends-unbound",
        }
    }

    pub fn parse(s: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|b| b.name() == s)
    }
}
