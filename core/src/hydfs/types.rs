//! The values HyDFS messages and state are made of: write stamps, part and file metadata, digests.
//!
//! Invariants kept here:
//! * a [`PartMeta`] describes its bytes exactly (length, CRC32C, count of `\n` bytes, whether the
//!   last byte is `\n`): [`PartMeta::of`] is the only way the system computes one, and a replica
//!   stores a part only if its bytes give back the metadata the write declared;
//! * [`FileMeta::part_positions`] derives the byte offset and line position of every part from
//!   metadata alone, so a reader can start at any part boundary with the right line number.

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
    /// An append with no bytes that hands the file to its client (`seal.rs`).
    Seal(Seal),
}

impl WriteKind {
    /// Whether the write is merged into the file's order like an append (every kind but a
    /// create).
    pub fn is_append(&self) -> bool {
        match self {
            WriteKind::Create => false,
            WriteKind::Append | WriteKind::Seal(_) => true,
        }
    }
}

/// What a seal says (see `seal.rs`): its client owns the file from `term` on; of the owner
/// before it, `prev`, the appends up to sequence `upto` stay part of the file and the later ones
/// do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub term: u64,
    pub prev: MemberId,
    pub upto: u64,
}

/// One part of a write: its length, CRC32C and line structure. Every field is a function of the
/// part's bytes ([`PartMeta::of`]); a part whose bytes disagree with any field is corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartMeta {
    pub len: u32,
    pub crc: u32,
    /// Number of `\n` bytes in the part.
    pub newlines: u32,
    /// Whether the part's last byte is `\n` (false for an empty part).
    pub ends_with_newline: bool,
}

impl PartMeta {
    /// Describes `bytes` (at most `u32::MAX` of them: parts are at most one chunk).
    pub fn of(bytes: &[u8]) -> PartMeta {
        debug_assert!(bytes.len() <= u32::MAX as usize, "a part is at most one chunk");
        PartMeta {
            len: bytes.len() as u32,
            crc: crc32c::crc32c(bytes),
            newlines: memchr::memchr_iter(b'\n', bytes).count() as u32,
            ends_with_newline: bytes.last() == Some(&b'\n'),
        }
    }

    /// Whether `bytes` are exactly the part this describes.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() == self.len as usize && PartMeta::of(bytes) == *self
    }

    /// Whether `bytes`, read back from where this node stored them after [`PartMeta::matches`]
    /// passed, are still that part: their length and CRC32C are checked, not their lines (the
    /// line count is a function of the same bytes, already checked when they were stored, and
    /// counting it again cost as much as the CRC on every read).
    pub fn still_matches(&self, bytes: &[u8]) -> bool {
        self.still_matches_crc(bytes, None)
    }

    /// [`PartMeta::still_matches`], given the CRC32C of `bytes` if the storage computed it
    /// while reading them (`crc`): it is not computed again.
    pub fn still_matches_crc(&self, bytes: &[u8], crc: Option<u32>) -> bool {
        debug_assert!(crc.is_none_or(|c| c == crc32c::crc32c(bytes)), "a given CRC is the bytes'");
        bytes.len() == self.len as usize
            && bytes.last().is_some_and(|b| *b == b'\n') == self.ends_with_newline
            && crc.unwrap_or_else(|| crc32c::crc32c(bytes)) == self.crc
    }
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
        let parts =
            if data.is_empty() { Vec::new() } else { data.chunks(chunk.max(1)).map(PartMeta::of).collect() };
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

    /// Number of `\n` bytes in the write.
    pub fn newlines(&self) -> u64 {
        self.parts.iter().map(|p| p.newlines as u64).sum()
    }

    /// The bytes this write's metadata takes in an encoded [`FileMeta`] (which is the
    /// concatenation of its writes' encodings, besides a few bytes of its own).
    pub fn described_bytes(&self) -> u64 {
        use bincode::Options;
        crate::wire::bincode_options(usize::MAX).serialized_size(self).unwrap_or(u64::MAX)
    }
}

/// Where one part sits in a file, computed from metadata alone ([`FileMeta::part_positions`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartPosition {
    pub stamp: Stamp,
    /// The part's index within its write.
    pub part: u32,
    pub meta: PartMeta,
    /// Byte offset of the part's first byte in the file.
    pub offset: u64,
    /// `\n` bytes in the file before this part: the part's first byte is on line
    /// `newlines_before + 1` (lines counted from 1).
    pub newlines_before: u64,
    /// Whether a line starts at the part's first byte: it is the file's first part, or the part
    /// before it ends with `\n`.
    pub starts_line: bool,
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
        let digest = FileDigest::of(
            self.create.as_ref(),
            self.generation,
            self.merged.iter(),
            self.pending.iter(),
            |w| self.incomplete.contains(&w.stamp),
        );
        // The stamps listed incomplete, even one whose write this description leaves out.
        FileDigest { incomplete: self.incomplete.len() as u32, ..digest }
    }

    /// Hash of the merged order alone (create and merged appends): equal on every replica after a
    /// merge.
    pub fn merged_hash(&self) -> u64 {
        order_hash(self.create.iter().chain(&self.merged).map(|w| &w.stamp))
    }

    pub fn all_writes(&self) -> impl Iterator<Item = &WriteMeta> {
        self.create.iter().chain(&self.merged).chain(&self.pending)
    }

    /// The file's length in bytes (every write, in file order).
    pub fn len(&self) -> u64 {
        self.all_writes().map(|w| w.len()).sum()
    }

    /// Whether the file holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every part of the file in file order (create, merged appends, pending appends), with its
    /// byte offset and line position. Writes without parts (empty ones) contribute nothing.
    pub fn part_positions(&self) -> Vec<PartPosition> {
        let mut out = Vec::new();
        let (mut offset, mut newlines_before, mut starts_line) = (0u64, 0u64, true);
        for w in self.all_writes() {
            for (i, p) in w.parts.iter().enumerate() {
                out.push(PartPosition {
                    stamp: w.stamp,
                    part: i as u32,
                    meta: *p,
                    offset,
                    newlines_before,
                    starts_line,
                });
                offset += p.len as u64;
                newlines_before += p.newlines as u64;
                // An empty part ends nothing: the next part starts a line iff this one did.
                if p.len > 0 {
                    starts_line = p.ends_with_newline;
                }
            }
        }
        out
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

impl FileDigest {
    /// The digest of a copy holding `create`, then `merged` in file order, then `pending` in
    /// stamp order, where `incomplete` says which of them still lack parts: what
    /// [`FileMeta::digest`] is, computed from borrowed writes (an inventory lists every file a
    /// node holds, and cloning each file's writes to describe it cost a node 5% of its CPU
    /// under appends).
    pub fn of<'a>(
        create: Option<&'a WriteMeta>,
        generation: u64,
        merged: impl Iterator<Item = &'a WriteMeta>,
        pending: impl Iterator<Item = &'a WriteMeta>,
        incomplete: impl Fn(&WriteMeta) -> bool,
    ) -> FileDigest {
        let mut h = Fnv64::new();
        let mut incompletes = 0u32;
        let mut feed = |w: &WriteMeta, tag: u8| {
            let lacking = incomplete(w);
            incompletes += u32::from(lacking);
            h.write(&[tag, lacking as u8]);
            h.stamp(&w.stamp);
        };
        if let Some(c) = create {
            feed(c, 0);
        }
        let mut merged_count = 0u32;
        for w in merged {
            feed(w, 1);
            merged_count += 1;
        }
        let mut pending_count = 0u32;
        for w in pending {
            feed(w, 2);
            pending_count += 1;
        }
        FileDigest {
            create: create.map(|c| c.stamp),
            generation,
            merged: merged_count,
            pending: pending_count,
            incomplete: incompletes,
            hash: h.finish(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ts: u64) -> Stamp {
        Stamp { ts, client: MemberId::new("10.0.0.1:7000".parse().unwrap(), 1), seq: ts }
    }

    #[test]
    fn part_meta_counts_line_ends() {
        let p = PartMeta::of(b"a\nbc\n\nd");
        assert_eq!((p.len, p.newlines, p.ends_with_newline), (7, 3, false));
        assert_eq!(p.crc, crc32c::crc32c(b"a\nbc\n\nd"));
        assert!(PartMeta::of(b"x\n").ends_with_newline);
        assert_eq!(PartMeta::of(b""), PartMeta { len: 0, crc: 0, newlines: 0, ends_with_newline: false });
        assert!(p.matches(b"a\nbc\n\nd"));
        assert!(!p.matches(b"a\nbc\n\ne"));
        let wrong_lines = PartMeta { newlines: 2, ..p };
        assert!(!wrong_lines.matches(b"a\nbc\n\nd"), "a wrong line count is a mismatch like a wrong CRC");
        assert!(p.still_matches(b"a\nbc\n\nd"));
        assert!(!p.still_matches(b"a\nbc\n\ne"), "a changed byte fails the CRC");
        assert!(!p.still_matches(b"a\nbc\n\n"), "a lost byte fails the length");
        // Given the CRC the storage checked the bytes against, the part's own is compared
        // with it: another block's bytes (of the same length and ending) are still refused.
        let other = b"a\nbc\n\ne";
        assert!(p.still_matches_crc(b"a\nbc\n\nd", Some(p.crc)));
        assert!(!p.still_matches_crc(other, Some(crc32c::crc32c(other))), "another block's bytes");
    }

    #[test]
    fn part_positions_give_the_line_at_every_part_boundary() {
        // "l1\nl2" | "\nl3\n" | (empty append) | "l4\nl5" | "\n"
        let create = WriteMeta::describe(stamp(1), WriteKind::Create, b"l1\nl2\nl3\n", 5);
        let empty = WriteMeta::describe(stamp(2), WriteKind::Append, b"", 5);
        let append = WriteMeta::describe(stamp(3), WriteKind::Append, b"l4\nl5\n", 5);
        let file = FileMeta {
            name: FileName::new("f").unwrap(),
            create: Some(create),
            generation: 1,
            merged: vec![empty],
            pending: vec![append],
            incomplete: vec![],
        };
        let whole = b"l1\nl2\nl3\nl4\nl5\n";
        let pos = file.part_positions();
        assert_eq!(pos.len(), 4);
        assert_eq!(file.len(), whole.len() as u64);
        for p in &pos {
            // Recompute from the bytes: what metadata says must be what the file holds.
            let before = &whole[..p.offset as usize];
            let lines = before.iter().filter(|b| **b == b'\n').count() as u64;
            assert_eq!(p.newlines_before, lines, "{p:?}");
            assert_eq!(p.starts_line, before.is_empty() || before.ends_with(b"\n"), "{p:?}");
        }
        assert_eq!(pos.iter().map(|p| p.starts_line).collect::<Vec<_>>(), vec![true, false, true, false]);
        assert_eq!(pos[2].stamp, stamp(3));
    }
}
