//! File names: validated once at the edge, then carried as [`FileName`].
//!
//! A name is a relative, `/`-separated path of at most [`NAME_BYTES_CEILING`] bytes with no empty,
//! `.` or `..` component and no NUL byte. Validation never panics; every refusal says why. How
//! long a name a node accepts is its `HydfsConfig::max_name_bytes` (default [`MAX_NAME_BYTES`]),
//! enforced by the HyDFS client and server, which can then answer with the limit.
//!
//! Invariant: a [`FileName`] carries its place on the ring, worked out once when the name is
//! made (typed or received), and always [`RingId::of_file`] of the name (asserted): finding a
//! file's replicas hashes nothing, where a node walking every file it holds (anti-entropy, every
//! round) hashed every name again. Equality, order and hashing are the name's alone, and the
//! name travels alone: the wire carries it as it carried the plain string.

use super::ring::RingId;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fmt;

/// The default limit on a file name's length, in bytes (`HydfsConfig::max_name_bytes`).
pub const MAX_NAME_BYTES: usize = 255;
/// The longest name any configuration may allow: longer names never parse (off the wire either).
pub const NAME_BYTES_CEILING: usize = 4096;

/// A validated HyDFS file name, and its place on the ring.
#[derive(Clone)]
pub struct FileName {
    // A boxed `str` (two words): with the ring id, a name takes the three words a `String` did.
    name: Box<str>,
    ring: RingId,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("file name is empty")]
    Empty,
    #[error("file name is {len} bytes long; no name may be longer than {NAME_BYTES_CEILING}")]
    TooLong { len: usize },
    #[error("file name contains a NUL byte")]
    Nul,
    #[error("file name must be relative (no leading `/`)")]
    Absolute,
    #[error("file name has an empty, `.` or `..` component")]
    BadComponent,
}

impl FileName {
    pub fn new(name: &str) -> Result<FileName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > NAME_BYTES_CEILING {
            return Err(NameError::TooLong { len: name.len() });
        }
        if name.contains('\0') {
            return Err(NameError::Nul);
        }
        if name.starts_with('/') {
            return Err(NameError::Absolute);
        }
        if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(NameError::BadComponent);
        }
        Ok(FileName { name: name.into(), ring: RingId::of_file(name) })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Where the name falls on the ring ([`RingId::of_file`]).
    pub fn ring_id(&self) -> RingId {
        debug_assert_eq!(self.ring, RingId::of_file(&self.name), "a name's ring id is its name's hash");
        self.ring
    }
}

impl PartialEq for FileName {
    fn eq(&self, other: &FileName) -> bool {
        self.name == other.name
    }
}

impl Eq for FileName {}

impl PartialOrd for FileName {
    fn partial_cmp(&self, other: &FileName) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FileName {
    fn cmp(&self, other: &FileName) -> Ordering {
        self.name.cmp(&other.name)
    }
}

impl std::hash::Hash for FileName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl fmt::Debug for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FileName").field(&self.name).finish()
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

// The name alone, as the newtype `FileName(String)` it once was: the same bytes on the wire and
// in the index.
impl Serialize for FileName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct("FileName", &self.name)
    }
}

// Names arriving off the wire are validated like names typed by a user.
impl<'de> Deserialize<'de> for FileName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<FileName, D::Error> {
        let s = String::deserialize(d)?;
        FileName::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for n in ["a", "logs/2026/run.csv", "Traffic_Signs.csv", "x.y.z", "a/b..c"] {
            assert_eq!(FileName::new(n).unwrap().as_str(), n);
        }
    }

    #[test]
    fn bad_names_get_typed_errors() {
        assert_eq!(FileName::new(""), Err(NameError::Empty));
        let ceiling = NAME_BYTES_CEILING;
        assert_eq!(FileName::new(&"x".repeat(ceiling + 1)), Err(NameError::TooLong { len: ceiling + 1 }));
        assert!(FileName::new(&"x".repeat(ceiling)).is_ok());
        assert_eq!(FileName::new("a\0b"), Err(NameError::Nul));
        assert_eq!(FileName::new("/etc/passwd"), Err(NameError::Absolute));
        for n in ["../x", "a/../b", "a//b", "a/", "./a", "a/."] {
            assert_eq!(FileName::new(n), Err(NameError::BadComponent), "{n}");
        }
    }

    #[test]
    fn a_name_carries_its_ring_id_and_travels_as_before() {
        let n = FileName::new("logs/run.csv").unwrap();
        assert_eq!(n.ring_id(), RingId::of_file("logs/run.csv"));
        assert_ne!(n.ring_id(), FileName::new("logs/run2.csv").unwrap().ring_id());
        // The bytes of the plain name, as when the name was a newtype over `String`.
        let bytes = bincode::serialize(&n).unwrap();
        assert_eq!(bytes, bincode::serialize(&"logs/run.csv".to_string()).unwrap());
        let back: FileName = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, n);
        assert_eq!(back.ring_id(), n.ring_id());
        assert_eq!(format!("{n:?}"), "FileName(\"logs/run.csv\")");
        assert_eq!(std::mem::size_of::<FileName>(), std::mem::size_of::<String>(), "no larger than it was");
    }

    #[test]
    fn wire_names_are_validated() {
        let bytes = bincode::serialize(&"../../etc".to_string()).unwrap();
        assert!(bincode::deserialize::<FileName>(&bytes).is_err());
        let bytes = bincode::serialize(&"ok/name".to_string()).unwrap();
        assert_eq!(bincode::deserialize::<FileName>(&bytes).unwrap().as_str(), "ok/name");
    }
}
