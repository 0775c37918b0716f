//! The storage a HyDFS node writes its blocks to, injected by the driver.
//!
//! Durability is explicit: [`Storage::put`] and [`Storage::delete`] may be lost in a crash until
//! [`Storage::sync`] returns, or until [`Storage::durable_mark`] reaches the mark a later
//! [`Storage::flush_behind`] returned. The runtime implements the trait with files and fsync;
//! the simulator with memory that loses unsynced writes on a crash and can corrupt a block.
//! [`MemStorage`] is a plain in-memory implementation for tests and tools.

use std::collections::BTreeMap;

/// One stored block, named by a node-local number.
pub type BlobId = u64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("block {0} is not in storage")]
    Missing(BlobId),
    #[error("storage failed: {0}")]
    Io(String),
    /// A sync is under way and has not finished; ask again (nothing failed).
    #[error("a sync is in progress")]
    InProgress,
}

/// Block storage with an explicit durability point.
pub trait Storage {
    /// Creates or replaces a block. Not durable until a sync or a flush covers it.
    fn put(&mut self, blob: BlobId, data: &[u8]) -> Result<(), StorageError>;
    /// Reads a block back (the bytes may have been corrupted at rest; callers check them).
    fn read(&mut self, blob: BlobId) -> Result<Vec<u8>, StorageError>;
    /// [`Storage::put`] of a block whose CRC32C the caller computed already (`crc`): a storage
    /// that checksums its blocks keeps this one instead of computing it again. The default
    /// ignores it.
    fn put_with_crc(&mut self, blob: BlobId, data: &[u8], crc: u32) -> Result<(), StorageError> {
        let _ = crc;
        self.put(blob, data)
    }
    /// [`Storage::read`], with the CRC32C of the bytes read when the storage computed it and
    /// found it equal to the one it kept for the block (`None` from a storage that keeps none):
    /// the caller need not compute it again.
    fn read_checked(&mut self, blob: BlobId) -> Result<(Vec<u8>, Option<u32>), StorageError> {
        self.read(blob).map(|data| (data, None))
    }
    /// Removes a block. Not durable until a sync or a flush covers it.
    fn delete(&mut self, blob: BlobId) -> Result<(), StorageError>;
    /// Removes several blocks, as [`Storage::delete`] of each in turn would. An implementation
    /// may write them together (one write for all, where a delete each costs a system call
    /// each); it stops at the first error, leaving the blocks not yet removed in place.
    fn delete_many(&mut self, blobs: &[BlobId]) -> Result<(), StorageError> {
        blobs.iter().try_for_each(|&blob| self.delete(blob))
    }
    /// Makes every earlier `put` and `delete` durable. `Ok` means they are; an implementation
    /// that flushes in the background (so a large flush never stalls the node) may instead
    /// return [`StorageError::InProgress`], and the caller asks again later.
    fn sync(&mut self) -> Result<(), StorageError>;
    /// Starts making every earlier `put` and `delete` durable without waiting for it, and
    /// returns the mark that [`Storage::durable_mark`] reaches once they are. A flush already
    /// under way is not waited for either: the next one, covering what it does not, starts
    /// when it ends (at a later call of either method). Marks only grow. By default this is
    /// [`Storage::sync`]: once it returns `Ok`, everything is durable. Implement both this and
    /// [`Storage::durable_mark`] or neither: the default mark says everything is durable.
    fn flush_behind(&mut self) -> Result<u64, StorageError> {
        self.sync().map(|()| 0)
    }
    /// The highest mark whose flush has completed; everything written before
    /// [`Storage::flush_behind`] returned it is durable. A flush may reach past the mark it was
    /// started for (writes made before it actually began), never past a write not yet made.
    /// It also starts the flush a call of `flush_behind` left waiting behind one under way. A
    /// failed flush is an error.
    fn durable_mark(&mut self) -> Result<u64, StorageError> {
        Ok(u64::MAX)
    }
    /// Every block stored now (as the running process sees them), in any order.
    fn list(&mut self) -> Result<Vec<BlobId>, StorageError>;
    /// Removes every block (`rainstorm cluster --fresh`, and tests that want an empty node).
    fn wipe(&mut self) -> Result<(), StorageError>;
}

/// Storage in memory, for tests and tools: every write is immediately "durable".
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    blobs: BTreeMap<BlobId, Vec<u8>>,
}

impl MemStorage {
    /// Blocks stored now.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }
}

impl Storage for MemStorage {
    fn put(&mut self, blob: BlobId, data: &[u8]) -> Result<(), StorageError> {
        self.blobs.insert(blob, data.to_vec());
        Ok(())
    }

    fn read(&mut self, blob: BlobId) -> Result<Vec<u8>, StorageError> {
        self.blobs.get(&blob).cloned().ok_or(StorageError::Missing(blob))
    }

    fn delete(&mut self, blob: BlobId) -> Result<(), StorageError> {
        self.blobs.remove(&blob);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn list(&mut self) -> Result<Vec<BlobId>, StorageError> {
        Ok(self.blobs.keys().copied().collect())
    }

    fn wipe(&mut self) -> Result<(), StorageError> {
        self.blobs.clear();
        Ok(())
    }
}
