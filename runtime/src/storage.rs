//! [`FileStorage`]: the HyDFS block storage of a real node, one file per block in a directory
//! (usually `<data_dir>/blocks`) that it owns entirely.
//!
//! Block `id` lives in `dir/<id as 16 hex digits>`; `dir/<id>.tmp` is the scratch name a `put`
//! writes through. Invariants kept here:
//! * a block is visible under its name only complete: `put` writes the temporary file and renames
//!   it over the final name, and on any error removes the temporary file, so a failed `put` leaves
//!   the previous state (no block, or the old block) under the final name;
//! * nothing is durable until [`Storage::sync`] returns: `put`, `delete` and `wipe` only record
//!   what changed. After a crash, blocks written or deleted since the last completed sync may be
//!   present, absent or hold any bytes; the store recovers its index at start, checks every
//!   block's checksum and removes blocks its index does not name, so this never yields wrong
//!   data;
//! * a sync covers both file data and directory entries: it fsyncs every block file written since
//!   the last sync, then the directory itself, which makes renames and deletes durable;
//! * the directory is 0700 (tightened if it was looser) and every block and temporary file is
//!   created 0600, whatever the umask ([`crate::private`]): blocks are the node's user's alone.
//!
//! Every I/O error becomes [`StorageError::Io`] naming the path and the OS error; nothing here
//! panics on I/O.

use rainstorm_core::hydfs::storage::{BlobId, Storage, StorageError};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use tracing::warn;

/// Above this many unsynced blocks, `sync` flushes the file system with one syncfs(2).
const SYNCFS_ABOVE_BLOCKS: usize = 16;

/// A sync slower than this is logged: the node waits for it, so its other work stalls meanwhile.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(50);

/// Block storage in a directory, one file per block, durable at [`Storage::sync`].
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    /// Blocks written since the last sync whose data still needs an fsync (reopened by path at
    /// sync time, so no file handle is held between calls).
    dirty: BTreeSet<BlobId>,
    /// Directory entries changed (rename, delete, wipe) since the last sync.
    dir_dirty: bool,
    /// A flush of many blocks runs on its own thread (a node keeps answering pings meanwhile).
    flush: Option<Flush>,
}

/// A background syncfs(2) of the block directory's file system.
#[derive(Debug)]
struct Flush {
    thread: std::thread::JoinHandle<Result<(), String>>,
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> StorageError {
    StorageError::Io(format!("cannot {what} {}: {e}", path.display()))
}

impl FileStorage {
    /// Opens (creating it if needed) the block directory `dir`, 0700.
    pub fn open(dir: &Path) -> Result<FileStorage, StorageError> {
        crate::private::dir(dir).map_err(|e| io_err("create", dir, &e))?;
        Ok(FileStorage { dir: dir.to_path_buf(), dirty: BTreeSet::new(), dir_dirty: false, flush: None })
    }

    /// The directory holding the blocks.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_path(&self, blob: BlobId) -> PathBuf {
        self.dir.join(format!("{blob:016x}"))
    }

    fn tmp_path(&self, blob: BlobId) -> PathBuf {
        self.dir.join(format!("{blob:016x}.tmp"))
    }

    fn write_tmp(tmp: &Path, data: &[u8]) -> std::io::Result<()> {
        let mut f = crate::private::file_options().write(true).create(true).truncate(true).open(tmp)?;
        f.write_all(data)?;
        f.flush()
    }
}

impl Storage for FileStorage {
    fn put(&mut self, blob: BlobId, data: &[u8]) -> Result<(), StorageError> {
        let path = self.blob_path(blob);
        let tmp = self.tmp_path(blob);
        let result = Self::write_tmp(&tmp, data).and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = result {
            // Best effort: the temporary name is never read, and `wipe` removes leftovers.
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write block", &path, &e));
        }
        self.dirty.insert(blob);
        self.dir_dirty = true;
        Ok(())
    }

    fn read(&mut self, blob: BlobId) -> Result<Vec<u8>, StorageError> {
        let path = self.blob_path(blob);
        fs::read(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => StorageError::Missing(blob),
            _ => io_err("read block", &path, &e),
        })
    }

    fn delete(&mut self, blob: BlobId) -> Result<(), StorageError> {
        let path = self.blob_path(blob);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("delete block", &path, &e)),
        }
        self.dirty.remove(&blob);
        self.dir_dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        // A background flush covers everything written before it started (those blocks left
        // `dirty` then); until it ends, nothing written since can be reported durable either.
        if let Some(flush) = self.flush.take() {
            if !flush.thread.is_finished() {
                self.flush = Some(flush);
                return Err(StorageError::InProgress);
            }
            match flush.thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StorageError::Io(e)),
                Err(_) => return Err(StorageError::Io("the flush thread panicked".into())),
            }
        }
        // Many blocks at once (a large transfer): one syncfs(2) flushes the data, the inodes and
        // the directory entries of the whole file system in one journal commit, where an fsync
        // per block would commit the journal once per block. It runs on its own thread and the
        // caller asks again: a flush of a gigabyte must not stall the node's other work.
        if self.dirty.len() > SYNCFS_ABOVE_BLOCKS {
            let dir = self.dir.clone();
            let thread = std::thread::Builder::new()
                .name("hydfs-flush".into())
                .spawn(move || {
                    let d = File::open(&dir).map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
                    rustix::fs::syncfs(&d).map_err(|e| format!("cannot sync {}: {e}", dir.display()))
                })
                .map_err(|e| io_err("start a flush of", &self.dir, &e))?;
            self.dirty.clear();
            self.dir_dirty = false;
            self.flush = Some(Flush { thread });
            return Err(StorageError::InProgress);
        }
        // Blocks are forgotten one by one as they are synced: after an error, a retry redoes
        // only what is left (plus the directory).
        let started = std::time::Instant::now();
        let blocks = self.dirty.len();
        while let Some(&blob) = self.dirty.first() {
            let path = self.blob_path(blob);
            match File::open(&path).and_then(|f| f.sync_all()) {
                Ok(()) => {}
                // Removed behind our back: nothing of it to make durable.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("sync block", &path, &e)),
            }
            self.dirty.remove(&blob);
        }
        if self.dir_dirty {
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io_err("sync", &self.dir, &e))?;
            self.dir_dirty = false;
        }
        let took = started.elapsed();
        if took >= SLOW_SYNC {
            warn!(
                event = "slow_sync",
                ms = took.as_millis() as u64,
                blocks,
                "a sync of {blocks} blocks took {} ms: the disk is slow, and this node waited for it",
                took.as_millis()
            );
        }
        Ok(())
    }

    fn list(&mut self) -> Result<Vec<BlobId>, StorageError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err("list", &self.dir, &e))?;
        let mut blobs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &self.dir, &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(".tmp") {
                // A put that a crash interrupted: never a block, so never listed; removed so
                // that it does not linger.
                if stem.len() == 16 && u64::from_str_radix(stem, 16).is_ok() {
                    let _ = fs::remove_file(entry.path());
                    self.dir_dirty = true;
                }
                continue;
            }
            if name.len() == 16 {
                if let Ok(blob) = u64::from_str_radix(name, 16) {
                    blobs.push(blob);
                }
            }
        }
        Ok(blobs)
    }

    fn wipe(&mut self) -> Result<(), StorageError> {
        crate::private::dir(&self.dir).map_err(|e| io_err("create", &self.dir, &e))?;
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err("list", &self.dir, &e))?;
        // Whatever happens below, directory entries may have changed.
        self.dir_dirty = true;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &self.dir, &e))?;
            let path = entry.path();
            let is_dir = entry.file_type().map_err(|e| io_err("inspect", &path, &e))?.is_dir();
            let removed = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path, &e)),
            }
        }
        self.dirty.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir()
                .join(format!("rainstorm-storage-{tag}-{}-{n}-{nanos}", std::process::id()));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn blocks(&self) -> PathBuf {
            self.0.join("blocks")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = fs::set_permissions(self.blocks(), fs::Permissions::from_mode(0o755));
            }
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn open_creates_the_directory() {
        let t = TempDir::new("open");
        let s = FileStorage::open(&t.blocks()).unwrap();
        assert!(t.blocks().is_dir());
        assert_eq!(s.dir(), t.blocks());
        // Opening an existing directory is fine too.
        FileStorage::open(&t.blocks()).unwrap();
    }

    #[test]
    fn the_directory_is_0700_and_every_block_0600() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let t = TempDir::new("modes");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(mode(&t.blocks()), 0o700);
        s.put(1, b"private").unwrap();
        s.put(1, b"private, replaced").unwrap();
        s.put(2, b"").unwrap();
        assert_eq!((mode(&s.blob_path(1)), mode(&s.blob_path(2))), (0o600, 0o600));
        // A directory left looser (by an older node) is tightened when opened, and by wipe.
        fs::set_permissions(t.blocks(), fs::Permissions::from_mode(0o755)).unwrap();
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(mode(&t.blocks()), 0o700);
        fs::set_permissions(t.blocks(), fs::Permissions::from_mode(0o777)).unwrap();
        s.wipe().unwrap();
        assert_eq!(mode(&t.blocks()), 0o700);
    }

    #[test]
    fn open_error_names_the_path() {
        let t = TempDir::new("openerr");
        let file = t.0.join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = FileStorage::open(&file.join("blocks")).unwrap_err();
        let StorageError::Io(msg) = err else { panic!("expected Io, got {err:?}") };
        assert!(msg.contains(&*file.join("blocks").to_string_lossy()), "{msg}");
        assert!(msg.contains("os error"), "{msg}");
    }

    #[test]
    fn round_trip() {
        let t = TempDir::new("rt");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.wipe().unwrap();
        s.sync().unwrap();
        let big = vec![0xabu8; 1 << 20];
        s.put(1, b"hello").unwrap();
        s.put(0x1234_5678_9abc_def0, &big).unwrap();
        s.put(3, b"").unwrap();
        assert_eq!(names(&t.blocks()), ["0000000000000001", "0000000000000003", "123456789abcdef0"]);
        assert_eq!(s.read(1).unwrap(), b"hello");
        assert_eq!(s.read(0x1234_5678_9abc_def0).unwrap(), big);
        assert_eq!(s.read(3).unwrap(), b"");
        assert_eq!(s.dirty.len(), 3);
        s.sync().unwrap();
        assert!(s.dirty.is_empty() && !s.dir_dirty);
        // A replaced block reads back its new bytes.
        s.put(1, b"world!").unwrap();
        assert_eq!(s.read(1).unwrap(), b"world!");
        s.delete(1).unwrap();
        assert!(s.dirty.is_empty() && s.dir_dirty, "a deleted block needs no data sync, only the dir");
        assert_eq!(s.read(1), Err(StorageError::Missing(1)));
        // Deleting a missing block is fine.
        s.delete(1).unwrap();
        s.delete(77).unwrap();
        s.sync().unwrap();
        assert!(!s.dir_dirty);
        // Nothing changed: sync is a no-op (and still succeeds).
        s.sync().unwrap();
        s.wipe().unwrap();
        assert!(names(&t.blocks()).is_empty());
        assert!(s.dir_dirty);
        s.sync().unwrap();
        assert_eq!(s.read(0x1234_5678_9abc_def0), Err(StorageError::Missing(0x1234_5678_9abc_def0)));
    }

    #[test]
    fn read_missing_is_missing() {
        let t = TempDir::new("missing");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(s.read(42), Err(StorageError::Missing(42)));
    }

    #[test]
    fn read_other_error_is_io_with_path() {
        let t = TempDir::new("readerr");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        // A directory under a block's name cannot be read as a file.
        fs::create_dir(s.blob_path(5)).unwrap();
        let err = s.read(5).unwrap_err();
        let StorageError::Io(msg) = err else { panic!("expected Io, got {err:?}") };
        assert!(msg.contains("0000000000000005"), "{msg}");
    }

    #[test]
    fn wipe_removes_leftovers_and_foreign_files() {
        let t = TempDir::new("wipe");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.put(2, b"kept until wipe").unwrap();
        fs::write(t.blocks().join("0000000000000009.tmp"), b"torn half-wri").unwrap();
        fs::write(t.blocks().join("README"), b"foreign").unwrap();
        fs::create_dir(t.blocks().join("subdir")).unwrap();
        fs::write(t.blocks().join("subdir").join("x"), b"nested").unwrap();
        s.wipe().unwrap();
        assert!(names(&t.blocks()).is_empty());
        assert!(s.dirty.is_empty() && s.dir_dirty);
        s.sync().unwrap();
        // Wipe also recreates a directory removed behind its back.
        fs::remove_dir_all(t.blocks()).unwrap();
        s.wipe().unwrap();
        assert!(t.blocks().is_dir());
    }

    #[test]
    fn torn_temp_file_is_never_visible() {
        let t = TempDir::new("torn");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        // A crash mid-put left a torn temporary file: it is not the block.
        fs::write(s.tmp_path(4), b"\x00\xffgarbage").unwrap();
        assert_eq!(s.read(4), Err(StorageError::Missing(4)));
        // A new put of the same block writes over it and shows only the complete bytes.
        s.put(4, b"complete").unwrap();
        assert_eq!(s.read(4).unwrap(), b"complete");
        assert!(!s.tmp_path(4).exists());
        // A torn leftover for another block is removed by wipe.
        fs::write(s.tmp_path(6), b"garbage").unwrap();
        s.wipe().unwrap();
        s.sync().unwrap();
        assert_eq!(s.read(6), Err(StorageError::Missing(6)));
        assert_eq!(s.read(4), Err(StorageError::Missing(4)));
        assert!(names(&t.blocks()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn put_into_read_only_dir_fails_cleanly() {
        use std::os::unix::fs::PermissionsExt;
        let t = TempDir::new("ro");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        fs::set_permissions(t.blocks(), fs::Permissions::from_mode(0o555)).unwrap();
        // Root (or a filesystem ignoring modes) can still create files: nothing to assert then.
        let probe = t.blocks().join("probe");
        if fs::write(&probe, b"p").is_ok() {
            let _ = fs::remove_file(&probe);
            eprintln!("skipped: permissions are not enforced for this user");
            return;
        }
        let err = s.put(8, b"data").unwrap_err();
        let StorageError::Io(msg) = err else { panic!("expected Io, got {err:?}") };
        assert!(msg.contains(&*s.blob_path(8).to_string_lossy()), "{msg}");
        assert!(msg.contains("os error"), "{msg}");
        assert!(names(&t.blocks()).is_empty());
        assert!(s.dirty.is_empty());
    }

    /// A full disk, simulated without privileges: the temporary name is a symlink to `/dev/full`,
    /// so the write fails with ENOSPC like it would on a full filesystem.
    #[cfg(target_os = "linux")]
    #[test]
    fn put_on_full_disk_fails_cleanly() {
        let t = TempDir::new("full");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        if !Path::new("/dev/full").exists() {
            eprintln!("skipped: no /dev/full");
            return;
        }
        s.put(3, b"old complete block").unwrap();
        s.sync().unwrap();
        std::os::unix::fs::symlink("/dev/full", s.tmp_path(3)).unwrap();
        let err = s.put(3, &[7u8; 4096]).unwrap_err();
        let StorageError::Io(msg) = err else { panic!("expected Io, got {err:?}") };
        assert!(msg.contains(&*s.blob_path(3).to_string_lossy()), "{msg}");
        assert!(msg.contains("No space left on device"), "{msg}");
        // The temporary name is gone and the old block is untouched.
        assert_eq!(names(&t.blocks()), ["0000000000000003"]);
        assert_eq!(s.read(3).unwrap(), b"old complete block");
        assert!(s.dirty.is_empty() && !s.dir_dirty);
        assert!(Path::new("/dev/full").exists());
    }

    #[test]
    fn sync_tolerates_a_block_removed_behind_its_back() {
        let t = TempDir::new("gone");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.put(1, b"a").unwrap();
        fs::remove_file(s.blob_path(1)).unwrap();
        s.sync().unwrap();
        assert!(s.dirty.is_empty() && !s.dir_dirty);
    }

    #[test]
    fn many_blocks_are_flushed_in_the_background() {
        let t = TempDir::new("many");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        for b in 0..(SYNCFS_ABOVE_BLOCKS as u64 + 5) {
            s.put(b, &[b as u8; 100]).unwrap();
        }
        assert_eq!(s.sync(), Err(StorageError::InProgress));
        s.put(100, b"after the flush started").unwrap();
        let mut answers = 0;
        loop {
            answers += 1;
            match s.sync() {
                Ok(()) => break,
                Err(StorageError::InProgress) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(e) => panic!("{e}"),
            }
            assert!(answers < 10_000, "the flush never ended");
        }
        assert!(s.dirty.is_empty() && !s.dir_dirty && s.flush.is_none());
        assert_eq!(s.read(3).unwrap(), [3u8; 100]);
    }

    #[test]
    fn works_behind_the_trait_object() {
        let t = TempDir::new("dyn");
        let mut s: Box<dyn Storage + Send> = Box::new(FileStorage::open(&t.blocks()).unwrap());
        s.wipe().unwrap();
        s.sync().unwrap();
        s.put(10, b"part").unwrap();
        s.sync().unwrap();
        assert_eq!(s.read(10).unwrap(), b"part");
    }
}
