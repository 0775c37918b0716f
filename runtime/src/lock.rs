//! The data dir's lock: one node per data dir.
//!
//! A node takes an exclusive `flock(2)` on `<data dir>/lock` before it writes anything else
//! there (its log included) and holds it for as long as it runs. A second node pointed at the
//! same directory is refused at start with the pid and address written in the file by the node
//! that holds it, instead of sharing (and wiping) the first one's blocks.
//!
//! Invariants:
//! * at most one live [`DataDirLock`] exists per data dir, across processes and within one (each
//!   acquisition opens the file anew, and `flock` locks conflict between open file descriptions);
//! * the lock dies with its holder, however it ends (`kill -9` included): the kernel drops an
//!   `flock` when the last descriptor of its open file is closed, so a stale lock file never
//!   keeps a node from starting; its text is only there to name the holder.

use std::fs::{DirBuilder, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data dir.
pub const LOCK_FILE: &str = "lock";

/// Why a data dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data dir {dir} is in use by another node ({holder}); stop that node, or give this one \
         another --data-dir"
    )]
    InUse { dir: PathBuf, holder: String },
    #[error("cannot lock data dir {dir} ({file}): {source}")]
    Io { dir: PathBuf, file: PathBuf, source: std::io::Error },
}

/// An exclusive hold on a data dir, released when dropped or when the process dies.
#[derive(Debug)]
pub struct DataDirLock {
    dir: PathBuf,
    /// Holds the `flock`: closing it releases the lock.
    _file: File,
}

impl DataDirLock {
    /// Locks `dir` (created 0700 if missing) for a node that will serve at `addr`, and writes
    /// this process's pid and `addr` into the lock file for whoever is refused next.
    pub fn acquire(dir: &Path, addr: SocketAddr) -> Result<DataDirLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io { dir: dir.to_path_buf(), file: path.clone(), source };
        // Created private; an existing looser dir is tightened (and logged) by the node's start.
        DirBuilder::new().recursive(true).mode(crate::private::DIR_MODE).create(dir).map_err(io)?;
        let mut file = crate::private::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let holder = match file.read_to_string(&mut text) {
                    Ok(_) if !text.trim().is_empty() => text.trim().to_string(),
                    // Locked, but the holder has not written its name yet (it is starting).
                    _ => "a node that is starting".to_string(),
                };
                return Err(LockError::InUse { dir: dir.to_path_buf(), holder });
            }
            Err(e) => return Err(io(e.into())),
        }
        let holder = format!("pid {}, {addr}", std::process::id());
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(format!("{holder}\n").as_bytes()).map_err(io)?;
        Ok(DataDirLock { dir: dir.to_path_buf(), _file: file })
    }

    /// The data dir this lock holds.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rainstorm-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_second_node_on_the_same_data_dir_is_refused_with_the_holders_pid() {
        let dir = temp("second");
        let first = DataDirLock::acquire(&dir, addr(7001)).unwrap();
        assert_eq!(first.dir(), dir.as_path());
        let err = DataDirLock::acquire(&dir, addr(7002)).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, LockError::InUse { .. }), "{message}");
        assert!(message.contains(&format!("pid {}, 127.0.0.1:7001", std::process::id())), "{message}");
        assert!(message.contains("--data-dir"), "{message}");
        drop(first);
        let again = DataDirLock::acquire(&dir, addr(7002)).unwrap();
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(
            text,
            format!("pid {}, 127.0.0.1:7002\n", std::process::id()),
            "the new holder's name only"
        );
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_file_left_by_a_dead_node_does_not_hold() {
        let dir = temp("stale");
        std::fs::write(dir.join(LOCK_FILE), "pid 999999999, 127.0.0.1:7001\n").unwrap();
        let lock = DataDirLock::acquire(&dir, addr(7003)).unwrap();
        drop(lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
