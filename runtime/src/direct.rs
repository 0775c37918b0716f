//! Direct I/O (`O_DIRECT`) for large transfers, past the page cache: on a small machine,
//! copying a large transfer into the page cache (and finding memory for it) costs more CPU than
//! anything else a node does with it. Used by the block log for large blocks and by downloads
//! for large files.
//!
//! Invariants kept here:
//! * every buffer handed to direct I/O starts at an [`ALIGN`]-aligned address and is a multiple
//!   of [`ALIGN`] long ([`AlignedBuf::take`] asserts the length);
//! * a file system that refuses direct I/O is never an error: [`open`] answers `None`, and the
//!   caller goes through the page cache.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::Path;
use tracing::{debug, warn};

/// Offsets, lengths and buffer addresses of direct I/O are multiples of this (the largest
/// logical block size of the usual file systems).
pub const ALIGN: u64 = 4096;

/// Transfers of at least this many bytes go through direct I/O; smaller ones (most of them
/// appends, which group commit syncs together) through the page cache.
pub const LARGE: usize = 256 << 10;

/// Opens `path` with `options` plus `O_DIRECT`, or `None` where that is refused (`what` names
/// the file in the log).
pub fn open(path: &Path, options: &mut OpenOptions, what: &str) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
    match options.custom_flags(flags).open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == ErrorKind::InvalidInput => {
            debug!(path = %path.display(), error = %e, "no direct I/O on this file system: the {what} goes through the page cache");
            None
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot open the {what} for direct I/O: it goes through the page cache");
            None
        }
    }
}

/// `O_DIRECT` switched on and off on one open file (`fcntl(F_SETFL)`), for a writer that mixes
/// large aligned writes with small ones. Once the file system refuses it, it stays off.
pub struct Switch<'a> {
    file: &'a File,
    on: bool,
    refused: bool,
}

impl<'a> Switch<'a> {
    pub fn new(file: &'a File) -> Switch<'a> {
        Switch { file, on: false, refused: false }
    }

    /// Turns direct I/O on or off; returns whether it is now as asked.
    pub fn set(&mut self, on: bool) -> bool {
        if on && self.refused {
            return false;
        }
        if self.on == on {
            return true;
        }
        let switched = rustix::fs::fcntl_getfl(self.file).and_then(|flags| {
            let flags =
                if on { flags | rustix::fs::OFlags::DIRECT } else { flags - rustix::fs::OFlags::DIRECT };
            rustix::fs::fcntl_setfl(self.file, flags)
        });
        match switched {
            Ok(()) => {
                self.on = on;
                true
            }
            Err(e) => {
                debug!(error = %e, "cannot switch direct I/O: the file goes through the page cache");
                if on {
                    self.refused = true;
                }
                false
            }
        }
    }

    /// The file system refused a direct write: direct I/O stays off from now on.
    pub fn refuse(&mut self) {
        self.set(false);
        self.refused = true;
    }
}

/// Whether `bytes` can be written with direct I/O as they are: at an [`ALIGN`]-aligned address,
/// a whole number of [`ALIGN`] long.
pub fn is_aligned(bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(ALIGN as usize) && (bytes.len() as u64).is_multiple_of(ALIGN)
}

/// A buffer whose usable part starts at an [`ALIGN`]-aligned address, as direct I/O needs (kept
/// and reused, so that its memory is found once).
#[derive(Debug, Default)]
pub struct AlignedBuf {
    raw: Vec<u8>,
}

impl AlignedBuf {
    /// `len` bytes (a multiple of [`ALIGN`]) at an aligned address; the contents are whatever
    /// the last use left.
    pub fn take(&mut self, len: usize) -> &mut [u8] {
        assert!((len as u64).is_multiple_of(ALIGN), "direct I/O lengths are aligned");
        let align = ALIGN as usize;
        if self.raw.len() < len + align {
            self.raw = vec![0u8; len + align];
        }
        let skip = self.raw.as_ptr().align_offset(align);
        &mut self.raw[skip..skip + len]
    }
}
