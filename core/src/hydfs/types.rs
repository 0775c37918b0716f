//! The values HyDFS messages and state are made of: write stamps, part and file metadata, digests.

use super::FileName;
use crate::id::MemberId;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The largest part of a write: files and appends travel and are stored in parts of at most
/// this many bytes, so no message holds a whole large file.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Identifies one write (a create or an append). The derived order — client timestamp, then
/// client id, then sequence — is the order a merge gives appends; one client's writes keep their
/// order because its timestamps and sequence numbers only grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The client's clock when it issued the write (monotonic per client).
    pub ts: u64,
    pub client: MemberId,
    /// The client's sequence number, one per write.
    pub seq: u64,
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}/{}", self.client, self.ts, self.seq)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteKind {
    Create,
    Append,
}

/// One part of a write: its length and CRC32C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartMeta {
    pub len: u32,
    pub crc: u32,
}

/// A write without its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteMeta {
    pub stamp: Stamp,
    pub kind: WriteKind,
    pub parts: Vec<PartMeta>,
}

impl WriteMeta {
    /// Describes `data` as a write cut into parts of at most `chunk` bytes.
    pub fn describe(stamp: Stamp, kind: WriteKind, data: &[u8], chunk: usize) -> WriteMeta {
        let parts = if data.is_empty() {
            Vec::new()
        } else {
            data.chunks(chunk.max(1))
                .map(|c| PartMeta { len: c.len() as u32, crc: crc32c::crc32c(c) })
                .collect()
        };
        WriteMeta { stamp, kind, parts }
    }

    pub fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.len as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Byte offset of part `i` within the write.
    pub fn part_offset(&self, i: usize) -> u64 {
        self.parts[..i].iter().map(|p| p.len as u64).sum()
    }
}

/// A replica's whole view of a file, without bytes: what a peer needs to reconcile with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub name: FileName,
    pub create: Option<WriteMeta>,
    /// Number of merges installed.
    pub generation: u64,
    /// Appends already merged, in file order.
    pub merged: Vec<WriteMeta>,
    /// Appends not merged yet, in stamp order.
    pub pending: Vec<WriteMeta>,
    /// Stamps whose bytes this replica lacks (not yet fetched, or lost to corruption).
    pub incomplete: Vec<Stamp>,
}

impl FileMeta {
    pub fn digest(&self) -> FileDigest {
        let mut h = Fnv64::new();
        let mut feed = |w: &WriteMeta, tag: u8| {
            h.write(&[tag, self.incomplete.contains(&w.stamp) as u8]);
            h.stamp(&w.stamp);
        };
        if let Some(c) = &self.create {
            feed(c, 0);
        }
        for w in &self.merged {
            feed(w, 1);
        }
        for w in &self.pending {
            feed(w, 2);
        }
        FileDigest {
            create: self.create.as_ref().map(|c| c.stamp),
            generation: self.generation,
            merged: self.merged.len() as u32,
            pending: self.pending.len() as u32,
            incomplete: self.incomplete.len() as u32,
            hash: h.finish(),
        }
    }

    /// Hash of the merged order alone (create and merged appends): equal on every replica after a
    /// merge.
    pub fn merged_hash(&self) -> u64 {
        order_hash(self.create.iter().chain(&self.merged).map(|w| &w.stamp))
    }

    pub fn all_writes(&self) -> impl Iterator<Item = &WriteMeta> {
        self.create.iter().chain(&self.merged).chain(&self.pending)
    }
}

/// A short summary of a replica's file, compared during anti-entropy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub create: Option<Stamp>,
    pub generation: u64,
    pub merged: u32,
    pub pending: u32,
    /// Writes whose bytes this replica is still fetching (it cannot serve the file until the
    /// merged ones are complete).
    pub incomplete: u32,
    pub hash: u64,
}

/// A hash of a sequence of stamps (a merged order). Stable across machines and versions: it is
/// compared between nodes.
pub fn order_hash<'a>(stamps: impl IntoIterator<Item = &'a Stamp>) -> u64 {
    let mut h = Fnv64::new();
    for s in stamps {
        h.stamp(s);
    }
    h.finish()
}

/// FNV-1a, 64 bits: a fixed, portable hash for digests that nodes compare (not a security
/// boundary: frames are authenticated separately).
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn stamp(&mut self, s: &Stamp) {
        self.write(&s.ts.to_le_bytes());
        self.write(&s.seq.to_le_bytes());
        self.write(&s.client.join_time.to_le_bytes());
        match s.client.addr.ip() {
            std::net::IpAddr::V4(ip) => self.write(&ip.octets()),
            std::net::IpAddr::V6(ip) => self.write(&ip.octets()),
        }
        self.write(&s.client.addr.port().to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
