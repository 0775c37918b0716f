//! [`Bulk`]: the bytes of a message's large field (a read chunk's, a fetched part's), shared
//! instead of copied between the frame they arrived in, the node that takes them and the thread
//! that writes them to disk.
//!
//! On the wire a `Bulk` is a byte string (its length, then its bytes), as a `Vec<u8>` with
//! `serde_bytes` is. Decoding a frame the receiver owns takes the field's bytes as a view of the
//! frame's buffer ([`crate::wire`]), so that a 1 MiB chunk is not copied out of the frame it came
//! in; a frame buffer laid out so that its payload ends at an aligned address then holds the
//! chunk at an aligned address too, which lets the receiver write it with direct I/O as it is.
//!
//! Invariants kept here:
//! * a `Bulk` handed out holds its bytes. Deserialized from a borrowed slice it only notes where
//!   the bytes are (`Repr::Located`); the codec's decode ([`crate::wire`]) resolves every such
//!   field against the frame, copying only when it does not own the frame, before any message
//!   leaves it. A located `Bulk` is never read (debug builds assert it; release builds see no
//!   bytes, which every reader refuses as a short chunk or part);
//! * a view never reaches past the buffer it was resolved against: resolution checks the noted
//!   place against the payload's bounds, and refuses the frame otherwise;
//! * a [`BulkDigest`] attached to a `Bulk` holds, once set, the BLAKE3 hash of exactly its bytes
//!   ([`Bulk::digest`] asserts it in debug builds): whoever attaches one vouches that every
//!   `Bulk` sharing it holds the same bytes. Nothing derived from the bytes keeps it (a tail of
//!   them does not).
//!
//! A frame's tag covers a bulk field through that hash ([`crate::wire`]), so a sender that
//! already knows it (an upload's part sent to each of three replicas) tags the frame without
//! hashing the bytes again.

use bytes::Bytes;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

/// A large field's bytes: owned, or a view of the buffer of the frame they arrived in; with the
/// slot of their hash when their source shares it between reads of the same bytes.
#[derive(Clone, Default)]
pub struct Bulk {
    repr: Repr,
    digest: Option<BulkDigest>,
}

/// The BLAKE3 hash of some bytes, computed by the first that needs it and then shared by every
/// [`Bulk`] it is attached to ([`Bulk::with_digest`]). An empty slot is filled by the first
/// [`Bulk::digest`] asked of any of them.
#[derive(Clone, Default)]
pub struct BulkDigest(Arc<OnceLock<[u8; 32]>>);

impl BulkDigest {
    /// A slot that holds `hash` already: the hash of the bytes it will be attached to.
    pub fn known(hash: [u8; 32]) -> BulkDigest {
        BulkDigest(Arc::new(OnceLock::from(hash)))
    }

    /// Whether the hash is known yet.
    pub fn is_known(&self) -> bool {
        self.0.get().is_some()
    }
}

impl fmt::Debug for BulkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_known() { "BulkDigest(known)" } else { "BulkDigest(unknown)" })
    }
}

#[derive(Clone)]
enum Repr {
    Held(Bytes),
    /// Deserialized from a borrowed slice: where its bytes were (their address and length),
    /// until [`Bulk::resolve`] replaces it with the bytes themselves.
    Located {
        at: usize,
        len: usize,
    },
}

impl Default for Repr {
    fn default() -> Repr {
        Repr::Held(Bytes::new())
    }
}

impl Bulk {
    fn held(bytes: Bytes) -> Bulk {
        Bulk { repr: Repr::Held(bytes), digest: None }
    }

    /// These bytes with the slot of their hash, shared with every other `Bulk` of the same bytes
    /// (see the module header: the caller vouches that they are the same bytes).
    pub fn with_digest(self, digest: BulkDigest) -> Bulk {
        Bulk { digest: Some(digest), ..self }
    }

    /// The BLAKE3 hash of the bytes: taken from the shared slot when one is attached and set,
    /// else computed (and left in the slot, if there is one).
    pub fn digest(&self) -> [u8; 32] {
        let hash = || *blake3::hash(self).as_bytes();
        let Some(slot) = &self.digest else { return hash() };
        let digest = *slot.0.get_or_init(hash);
        debug_assert_eq!(
            digest,
            hash(),
            "a shared digest is the hash of the bytes of every bulk it is attached to"
        );
        digest
    }

    /// The slot of the bytes' hash attached to them, if any, to share with other bytes the
    /// caller vouches are the same.
    pub fn digest_slot(&self) -> Option<BulkDigest> {
        self.digest.clone()
    }

    /// Whether the hash of the bytes is known without computing it: a shared slot is attached
    /// and was filled.
    pub fn digest_known(&self) -> bool {
        self.digest.as_ref().is_some_and(BulkDigest::is_known)
    }

    /// The bytes, shared (no copy).
    pub fn bytes(&self) -> Bytes {
        match &self.repr {
            Repr::Held(b) => b.clone(),
            Repr::Located { .. } => {
                debug_assert!(false, "a located bulk field is resolved before it is read");
                Bytes::new()
            }
        }
    }

    /// The bytes as a vector: in their own buffer when nothing else shares it (moved to its
    /// front if this is a view of part of it), else a copy.
    pub fn into_vec(self) -> Vec<u8> {
        match self.repr {
            // Moved out, not cloned: a clone would share the buffer and force the copy.
            Repr::Held(b) => Vec::from(b),
            Repr::Located { .. } => {
                debug_assert!(false, "a located bulk field is resolved before it is read");
                Vec::new()
            }
        }
    }

    /// The bytes from `from` on, shared (no copy). `from` past the end gives no bytes.
    pub fn tail(&self, from: usize) -> Bulk {
        let b = self.bytes();
        Bulk::held(b.slice(from.min(b.len())..))
    }

    /// Takes the bytes out, leaving the field empty.
    pub fn take(&mut self) -> Bulk {
        std::mem::take(self)
    }

    /// Whether these bytes are still only noted by their place, and it is exactly `bytes`.
    pub(crate) fn is_located_at(&self, bytes: &[u8]) -> bool {
        matches!(self.repr, Repr::Located { at, len } if at == bytes.as_ptr() as usize && len == bytes.len())
    }

    /// Whether these bytes are still only noted by their place in a frame.
    fn is_located(&self) -> bool {
        matches!(self.repr, Repr::Located { .. })
    }

    /// Replaces a located field with its bytes: a view of `owner` (a buffer whose bytes
    /// `payload` is part of) when there is one, else a copy out of `payload`, which must hold
    /// the noted place. A field already holding its bytes is left as it is.
    pub(crate) fn resolve(&mut self, payload: &[u8], owner: Option<&Bytes>) -> Result<(), String> {
        let Repr::Located { at, len } = self.repr else { return Ok(()) };
        let start = at
            .checked_sub(payload.as_ptr() as usize)
            .filter(|start| start.checked_add(len).is_some_and(|end| end <= payload.len()))
            .ok_or_else(|| format!("a bulk field of {len} bytes lies outside its frame's payload"))?;
        let bytes = &payload[start..start + len];
        // The bytes' place in the owner (checked, so a caller's mismatched owner costs a copy,
        // never a panic).
        let in_owner = owner.and_then(|owner| {
            let at = (bytes.as_ptr() as usize).checked_sub(owner.as_ptr() as usize)?;
            (at.checked_add(len)? <= owner.len()).then(|| owner.slice(at..at + len))
        });
        debug_assert!(owner.is_none() || in_owner.is_some(), "the owner holds the payload");
        self.repr = Repr::Held(in_owner.unwrap_or_else(|| Bytes::copy_from_slice(bytes)));
        debug_assert!(!self.is_located());
        Ok(())
    }
}

impl Deref for Bulk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.repr {
            Repr::Held(b) => b,
            Repr::Located { .. } => {
                debug_assert!(false, "a located bulk field is resolved before it is read");
                &[]
            }
        }
    }
}

impl AsRef<[u8]> for Bulk {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<Vec<u8>> for Bulk {
    /// Takes the vector's buffer as it is (no copy).
    fn from(v: Vec<u8>) -> Bulk {
        Bulk::held(Bytes::from(v))
    }
}

impl From<Bytes> for Bulk {
    fn from(b: Bytes) -> Bulk {
        Bulk::held(b)
    }
}

impl From<&[u8]> for Bulk {
    fn from(b: &[u8]) -> Bulk {
        Bulk::held(Bytes::copy_from_slice(b))
    }
}

impl PartialEq for Bulk {
    fn eq(&self, other: &Bulk) -> bool {
        **self == **other
    }
}

impl Eq for Bulk {}

impl PartialEq<[u8]> for Bulk {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl PartialEq<Vec<u8>> for Bulk {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == other[..]
    }
}

impl fmt::Debug for Bulk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Held(b) if b.len() <= 32 => write!(f, "Bulk({:?})", &b[..]),
            Repr::Held(b) => write!(f, "Bulk({} bytes)", b.len()),
            Repr::Located { len, .. } => write!(f, "Bulk({len} bytes, located)"),
        }
    }
}

impl Serialize for Bulk {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self)
    }
}

impl<'de> Deserialize<'de> for Bulk {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bulk, D::Error> {
        deserializer.deserialize_bytes(BulkVisitor)
    }
}

struct BulkVisitor;

impl<'de> Visitor<'de> for BulkVisitor {
    type Value = Bulk;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    /// A slice of the input being decoded: only its place is noted (see the module header).
    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bulk, E> {
        Ok(Bulk { repr: Repr::Located { at: v.as_ptr() as usize, len: v.len() }, digest: None })
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bulk, E> {
        Ok(Bulk::from(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bulk, E> {
        Ok(Bulk::from(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::bincode_options;
    use bincode::Options;

    #[test]
    fn a_bulk_field_is_encoded_as_serde_bytes_encodes_a_vector() {
        let v: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        #[derive(Serialize)]
        struct Old<'a>(#[serde(with = "serde_bytes")] &'a Vec<u8>);
        let old = bincode_options(usize::MAX).serialize(&Old(&v)).unwrap();
        let new = bincode_options(usize::MAX).serialize(&Bulk::from(v.clone())).unwrap();
        assert_eq!(old, new);
    }

    #[test]
    fn a_located_field_becomes_a_view_of_its_owner_or_a_copy() {
        let v: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        let encoded = bincode_options(usize::MAX).serialize(&Bulk::from(v.clone())).unwrap();
        let owner = Bytes::from(encoded);
        let mut bulk: Bulk = bincode_options(usize::MAX).deserialize(&owner).unwrap();
        assert!(bulk.is_located(), "decoding from a slice notes the place only");
        bulk.resolve(&owner, Some(&owner)).unwrap();
        assert_eq!(bulk, v);
        let (inner, outer) = (bulk.bytes().as_ptr() as usize, owner.as_ptr() as usize);
        assert!(inner > outer && inner < outer + owner.len(), "a view of the owner, not a copy");

        let mut copied: Bulk = bincode_options(usize::MAX).deserialize(&owner).unwrap();
        copied.resolve(&owner, None).unwrap();
        assert_eq!(copied, v);
        let at = copied.bytes().as_ptr() as usize;
        assert!(at < outer || at >= outer + owner.len(), "without an owner, a copy");
    }

    #[test]
    fn a_place_outside_the_payload_is_refused() {
        let encoded = bincode_options(usize::MAX).serialize(&Bulk::from(vec![7u8; 64])).unwrap();
        let mut bulk: Bulk = bincode_options(usize::MAX).deserialize(&encoded).unwrap();
        // Resolved against a payload that does not hold the noted bytes.
        let elsewhere = vec![0u8; 64];
        assert!(bulk.resolve(&elsewhere, None).is_err());
        assert!(bulk.resolve(&encoded[..encoded.len() - 1], None).is_err(), "one byte short");
        bulk.resolve(&encoded, None).unwrap();
        assert_eq!(bulk, vec![7u8; 64]);
    }

    #[test]
    fn a_shared_digest_is_computed_once_for_every_bulk_that_shares_it() {
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let slot = BulkDigest::default();
        let (a, b) = (Bulk::from(bytes.clone()).with_digest(slot.clone()), Bulk::from(bytes.clone()));
        let b = b.with_digest(slot.clone());
        assert!(!a.digest_known() && !b.digest_known() && !slot.is_known());
        assert_eq!(a.digest(), *blake3::hash(&bytes).as_bytes());
        assert!(b.digest_known(), "filled by the first that needed it");
        assert_eq!(b.digest(), a.digest());
        assert!(!a.tail(1).digest_known(), "a tail is other bytes");
        assert_eq!(a.tail(1).digest(), *blake3::hash(&bytes[1..]).as_bytes());
        assert!(!Bulk::from(bytes).digest_known(), "no slot, nothing known");
    }

    /// A slot shared by other bytes is a caller's bug, which debug builds catch.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "a shared digest is the hash of the bytes of every bulk it is attached to")]
    fn a_slot_shared_by_other_bytes_is_caught() {
        let slot = BulkDigest::default();
        let _ = Bulk::from(vec![1u8, 2, 3]).with_digest(slot.clone()).digest();
        let _ = Bulk::from(vec![1u8, 2, 4]).with_digest(slot).digest();
    }

    #[test]
    fn a_bulk_nothing_else_shares_becomes_its_vector_without_a_copy() {
        let v = vec![5u8; 4096];
        let at = v.as_ptr();
        let bulk = Bulk::from(v).with_digest(BulkDigest::default());
        let v = bulk.into_vec();
        assert_eq!(v.as_ptr(), at, "the same buffer");
        let shared = Bulk::from(vec![6u8; 4096]);
        let other = shared.clone();
        let copied = shared.into_vec();
        assert_ne!(copied.as_ptr(), other.as_ptr(), "a shared buffer is copied");
    }

    #[test]
    fn a_tail_shares_the_bytes() {
        let b = Bulk::from(vec![1, 2, 3, 4]);
        assert_eq!(b.tail(1), vec![2, 3, 4]);
        assert_eq!(b.tail(1).bytes().as_ptr(), b.bytes()[1..].as_ptr());
        assert!(b.tail(9).is_empty());
    }
}
