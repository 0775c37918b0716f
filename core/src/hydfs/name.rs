//! File names: validated once at the edge, then carried as [`FileName`].
//!
//! A name is a relative, `/`-separated path of at most [`NAME_BYTES_CEILING`] bytes with no empty,
//! `.` or `..` component and no NUL byte. Validation never panics; every refusal says why. How
//! long a name a node accepts is its `HydfsConfig::max_name_bytes` (default [`MAX_NAME_BYTES`]),
//! enforced by the HyDFS client and server, which can then answer with the limit.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The default limit on a file name's length, in bytes (`HydfsConfig::max_name_bytes`).
pub const MAX_NAME_BYTES: usize = 255;
/// The longest name any configuration may allow: longer names never parse (off the wire either).
pub const NAME_BYTES_CEILING: usize = 4096;

/// A validated HyDFS file name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FileName(String);

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
        Ok(FileName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    fn wire_names_are_validated() {
        let bytes = bincode::serialize(&"../../etc".to_string()).unwrap();
        assert!(bincode::deserialize::<FileName>(&bytes).is_err());
        let bytes = bincode::serialize(&"ok/name".to_string()).unwrap();
        assert_eq!(bincode::deserialize::<FileName>(&bytes).unwrap().as_str(), "ok/name");
    }
}
