//! The durable index of a node's store: which files it holds, their writes, and which block
//! holds each part, kept in the same [`Storage`] as the blocks so that one sync makes a part and
//! the index entry naming it durable together.
//!
//! The index is a sequence of *index blocks*, stored under block ids from [`INDEX_BASE`] up
//! (`INDEX_BASE + seq`), each one frame:
//!
//! ```text
//! offset  size  field
//! 0       2     magic "HX"
//! 2       1     format version (currently 1)
//! 3       4     payload length, little endian (at most MAX_INDEX_BLOCK_BYTES)
//! 7       len   payload: the bincode-encoded IndexBlock (variable-length integers)
//! 7+len   4     CRC32C over bytes [0, 7+len)
//! ```
//!
//! A block is either a part of a *snapshot* (every file, cut into parts of a bounded size) or
//! the *changes* one sync made durable. Recovery starts at the newest snapshot whose parts are
//! all present and valid and applies the change blocks after it in sequence order, stopping at
//! the first one missing or invalid: a sync makes every block before it durable, so nothing
//! after a gap was ever synced, and nothing acknowledged depended on it.
//!
//! Invariants kept here:
//! * decoding any bytes returns a block or a typed [`IndexError`], never panics, never allocates
//!   past the frame limit;
//! * applying a snapshot and the changes after it gives the index that was synced (a proptest
//!   in `store.rs` checks recovery against the store it came from);
//! * data blocks and index blocks never share an id: data blocks are numbered below
//!   [`INDEX_BASE`].

use super::storage::BlobId;
use super::types::{PartMeta, Stamp, WriteMeta};
use super::FileName;
use crate::wire::bincode_options as options;
use bincode::Options;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The first block id of the index; data blocks are numbered below it.
pub const INDEX_BASE: BlobId = 1 << 62;
/// The largest accepted index block payload.
pub const MAX_INDEX_BLOCK_BYTES: usize = 64 * 1024 * 1024;
/// A snapshot is cut into blocks of about this many payload bytes.
pub const SNAPSHOT_PART_BYTES: usize = 4 * 1024 * 1024;
/// The current frame format version.
pub const INDEX_VERSION: u8 = 1;

const MAGIC: [u8; 2] = *b"HX";
const HEADER_BYTES: usize = 7;
const CRC_BYTES: usize = 4;

/// One stored part: which block holds it and what its bytes were checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartEntry {
    pub stamp: Stamp,
    pub part: u32,
    pub blob: BlobId,
    pub meta: PartMeta,
}

/// One file's whole record: its writes and its stored parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: FileName,
    pub create: Option<WriteMeta>,
    pub generation: u64,
    pub merged: Vec<WriteMeta>,
    pub pending: Vec<WriteMeta>,
    pub parts: Vec<PartEntry>,
}

/// What one sync changed about one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileChange {
    /// The file's whole record (a file new to the index, or one whose merged order was
    /// replaced rather than extended).
    Whole(FileEntry),
    /// The file's record changed in place.
    Delta {
        name: FileName,
        /// The new create, when it changed.
        create: Option<WriteMeta>,
        generation: u64,
        /// How much of the merged order stays; `merged_tail` follows it.
        merged_keep: u32,
        merged_tail: Vec<WriteMeta>,
        pending_added: Vec<WriteMeta>,
        pending_removed: Vec<Stamp>,
    },
    /// The file is gone, with its parts.
    Dropped(FileName),
}

/// What one sync changed about stored parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartChange {
    Stored(FileName, PartEntry),
    Removed(FileName, Stamp, u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexBody {
    /// Part `part` of `of` of a snapshot whose first block is `first` (the tombstones of deleted
    /// files travel in part 0).
    Snapshot { first: u64, part: u32, of: u32, files: Vec<FileEntry>, tombstones: Vec<(FileName, Stamp)> },
    /// The changes one sync made durable: files, then parts, then tombstones.
    Changes {
        files: Vec<FileChange>,
        parts: Vec<PartChange>,
        tombstones_kept: Vec<(FileName, Stamp)>,
        tombstones_forgotten: Vec<(FileName, Stamp)>,
    },
}

/// One index block, numbered by its place in the sequence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBlock {
    pub seq: u64,
    pub body: IndexBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum IndexError {
    #[error("index block is {len} bytes, over the limit of {MAX_INDEX_BLOCK_BYTES}")]
    TooLarge { len: usize },
    #[error("index block is truncated: {available} bytes where {needed} are needed")]
    Truncated { needed: usize, available: usize },
    #[error("index block does not start with the index magic")]
    BadMagic,
    #[error("index block has format version {found}; this build reads version {INDEX_VERSION}")]
    UnknownVersion { found: u8 },
    #[error("index block fails its checksum")]
    BadChecksum,
    #[error("index block has trailing bytes after its frame")]
    Trailing,
    #[error("index block is malformed: {0}")]
    Malformed(String),
}

/// The block id of index block `seq`.
pub fn blob_of(seq: u64) -> BlobId {
    INDEX_BASE + seq
}

/// The index sequence number of a block id, if it is an index block (ids from `INDEX_BASE`
/// below `2 * INDEX_BASE`; higher ids are neither, and recovery removes them as strays).
pub fn seq_of(blob: BlobId) -> Option<u64> {
    blob.checked_sub(INDEX_BASE).filter(|s| *s < INDEX_BASE)
}

/// Encodes one index block as one frame.
pub fn encode(block: &IndexBlock) -> Result<Vec<u8>, IndexError> {
    let len = options(usize::MAX)
        .serialized_size(block)
        .map_err(|_| IndexError::TooLarge { len: usize::MAX })? as usize;
    if len > MAX_INDEX_BLOCK_BYTES {
        return Err(IndexError::TooLarge { len });
    }
    let mut frame = Vec::with_capacity(HEADER_BYTES + len + CRC_BYTES);
    frame.extend_from_slice(&MAGIC);
    frame.push(INDEX_VERSION);
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    options(MAX_INDEX_BLOCK_BYTES)
        .serialize_into(&mut frame, block)
        .map_err(|e| IndexError::Malformed(e.to_string()))?;
    let crc = crc32c::crc32c(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(
        frame.len(),
        HEADER_BYTES + len + CRC_BYTES,
        "the frame is exactly header, payload, CRC"
    );
    Ok(frame)
}

/// Decodes one index block. Never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<IndexBlock, IndexError> {
    if bytes.len() < HEADER_BYTES + CRC_BYTES {
        return Err(IndexError::Truncated { needed: HEADER_BYTES + CRC_BYTES, available: bytes.len() });
    }
    if bytes[0..2] != MAGIC {
        return Err(IndexError::BadMagic);
    }
    if bytes[2] != INDEX_VERSION {
        return Err(IndexError::UnknownVersion { found: bytes[2] });
    }
    let len = u32::from_le_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]) as usize;
    if len > MAX_INDEX_BLOCK_BYTES {
        return Err(IndexError::TooLarge { len });
    }
    let needed = HEADER_BYTES + len + CRC_BYTES;
    if bytes.len() < needed {
        return Err(IndexError::Truncated { needed, available: bytes.len() });
    }
    if bytes.len() > needed {
        return Err(IndexError::Trailing);
    }
    let (body, trailer) = bytes.split_at(HEADER_BYTES + len);
    if crc32c::crc32c(body).to_le_bytes() != trailer {
        return Err(IndexError::BadChecksum);
    }
    options(len).deserialize(&body[HEADER_BYTES..]).map_err(|e| IndexError::Malformed(e.to_string()))
}

/// The encoded size of a file entry (to cut snapshots into bounded blocks).
pub fn entry_bytes(entry: &FileEntry) -> usize {
    crate::wire::payload_size(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hydfs::types::WriteKind;
    use crate::id::MemberId;

    fn entry() -> FileEntry {
        let stamp = Stamp { ts: 1, client: MemberId::new("127.0.0.1:1".parse().unwrap(), 5), seq: 1 };
        let w = WriteMeta::describe(stamp, WriteKind::Create, b"hello\n", 1024);
        FileEntry {
            name: FileName::new("a/b").unwrap(),
            create: Some(w.clone()),
            generation: 0,
            merged: vec![],
            pending: vec![],
            parts: vec![PartEntry { stamp, part: 0, blob: 7, meta: w.parts[0] }],
        }
    }

    #[test]
    fn a_block_round_trips() {
        let block = IndexBlock {
            seq: 3,
            body: IndexBody::Snapshot { first: 3, part: 0, of: 1, files: vec![entry()], tombstones: vec![] },
        };
        assert_eq!(decode(&encode(&block).unwrap()).unwrap(), block);
    }

    #[test]
    fn damaged_blocks_are_typed_errors() {
        let block = IndexBlock {
            seq: 0,
            body: IndexBody::Changes {
                files: vec![],
                parts: vec![],
                tombstones_kept: vec![],
                tombstones_forgotten: vec![],
            },
        };
        let good = encode(&block).unwrap();
        assert!(matches!(decode(&good[..good.len() - 1]), Err(IndexError::Truncated { .. })));
        let mut flipped = good.clone();
        flipped[8] ^= 1;
        assert_eq!(decode(&flipped), Err(IndexError::BadChecksum));
        let mut version = good.clone();
        version[2] = 9;
        assert_eq!(decode(&version), Err(IndexError::UnknownVersion { found: 9 }));
        assert_eq!(decode(b"XX\x01\0\0\0\0\0\0\0\0"), Err(IndexError::BadMagic));
        let mut long = good;
        long.push(0);
        assert_eq!(decode(&long), Err(IndexError::Trailing));
        assert!(decode(&[]).is_err());
    }

    proptest::proptest! {
        /// Any bytes decode to a block or a typed error, never a panic; so does any damage to a
        /// valid block, which is never taken for another block.
        #[test]
        fn decoding_never_panics(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            at in 0usize..4096,
            bit in 0u8..8,
        ) {
            let _ = decode(&junk);
            let block = IndexBlock { seq: 9, body: IndexBody::Snapshot { first: 9, part: 0, of: 1, files: vec![entry()], tombstones: vec![] } };
            let mut bytes = encode(&block).unwrap();
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
            proptest::prop_assert!(decode(&bytes).is_err(), "a flipped bit is always noticed");
        }
    }

    #[test]
    fn ids_of_index_blocks_are_above_every_data_block() {
        assert_eq!(seq_of(blob_of(42)), Some(42));
        assert_eq!(seq_of(INDEX_BASE - 1), None);
        assert_eq!(seq_of(u64::MAX), None, "far above the index: a stray");
    }
}
