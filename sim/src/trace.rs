//! The run's trace: a SHA-256 over every event in order (frames delivered, timers, faults, node
//! events), and optionally a readable log. Two runs of one scenario give the same hash on any
//! machine: only explicit little-endian bytes go into the hash.

use rainstorm_core::Time;
use sha2::{Digest, Sha256};

/// Records longer than this are hashed by head and tail.
const LARGE_RECORD_BYTES: usize = 8 * 1024;

pub struct Trace {
    hasher: Sha256,
    lines: Option<Vec<String>>,
}

impl Trace {
    pub fn new(readable: bool) -> Trace {
        Trace { hasher: Sha256::new(), lines: readable.then(Vec::new) }
    }

    /// Hashes one record: a kind tag, the time, the node slot and bytes.
    pub fn record(&mut self, kind: u8, at: Time, slot: usize, bytes: &[u8]) {
        self.hasher.update([kind]);
        self.hasher.update(at.as_millis().to_le_bytes());
        self.hasher.update((slot as u64).to_le_bytes());
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        // A large frame (a file chunk) is hashed by its head and its tail, which holds the
        // frame's own CRC32C of everything before it.
        if bytes.len() > LARGE_RECORD_BYTES {
            self.hasher.update(&bytes[..LARGE_RECORD_BYTES / 2]);
            self.hasher.update(&bytes[bytes.len() - 64..]);
        } else {
            self.hasher.update(bytes);
        }
    }

    /// A readable line (also hashed).
    pub fn line(&mut self, at: Time, slot: Option<usize>, text: impl FnOnce() -> String) {
        if let Some(lines) = self.lines.as_mut() {
            let who = slot.map_or_else(|| "sim".to_string(), |s| format!("n{s}"));
            lines.push(format!("{:>12} {:>4} {}", at.to_string(), who, text()));
        }
    }

    pub fn finish(self) -> (String, Vec<String>) {
        let digest = self.hasher.finalize();
        let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
        (hex, self.lines.unwrap_or_default())
    }
}
