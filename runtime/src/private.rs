//! The modes of what a node keeps on its local disk: its data dir and everything in it belong to
//! the node's user alone, whatever the process umask.
//!
//! Invariants kept by the callers of these helpers:
//! * every directory a node creates for its data (the data dir, `blocks/`, `programs/`) is
//!   [`DIR_MODE`] (0700), and an existing data dir with a looser mode is tightened to it at start
//!   (and the node logs that it did); the modes are given at creation (`mkdir(2)`'s mode, which
//!   the umask can only narrow), never set afterwards, so no directory is ever looser;
//! * every file a node writes (HyDFS block segments, logs, downloads and their
//!   temporary files, the output trace) is created [`FILE_MODE`] (0600) the same way;
//! * an operator program fetched into the cache is [`PROGRAM_MODE`] (0700): runnable by its owner
//!   and by nobody else.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every directory a node creates.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file a node writes.
pub const FILE_MODE: u32 = 0o600;
/// The mode of an operator program in the node's cache.
pub const PROGRAM_MODE: u32 = 0o700;

/// Creates `dir` (and any missing parent) with mode 0700, or tightens an existing `dir` whose
/// mode lets anyone else in to 0700. Returns the mode it had when it was tightened, so the
/// caller can log it.
pub fn dir(dir: &Path) -> std::io::Result<Option<u32>> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode == DIR_MODE {
        return Ok(None);
    }
    std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
    Ok(Some(mode))
}

/// Options that create a file with mode 0600 (the umask cannot widen it); a file that already
/// exists keeps its mode.
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Opens `path` for appending, creating it 0600; an existing file with a looser mode (from an
/// older node) is tightened to 0600 through the open handle.
pub fn append(path: &Path) -> std::io::Result<File> {
    let file = file_options().create(true).append(true).open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rainstorm-private-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_dir_and_its_new_parents_are_0700_and_a_loose_one_is_tightened() {
        let root = temp("dir");
        let leaf = root.join("a").join("b");
        assert_eq!(dir(&leaf).unwrap(), None);
        assert_eq!((mode(&root), mode(&root.join("a")), mode(&leaf)), (0o700, 0o700, 0o700));
        std::fs::set_permissions(&leaf, Permissions::from_mode(0o755)).unwrap();
        assert_eq!(dir(&leaf).unwrap(), Some(0o755));
        assert_eq!(mode(&leaf), 0o700);
        assert_eq!(dir(&leaf).unwrap(), None, "already private: nothing to tighten");
        let file = leaf.join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = dir(&file).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_appended_file_is_0600_even_if_it_was_looser() {
        let root = temp("append");
        dir(&root).unwrap();
        let path = root.join("log");
        drop(append(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        use std::io::Write;
        append(&path).unwrap().write_all(b"line\n").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"line\n");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
