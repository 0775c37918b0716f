//! [`FileStorage`]: the HyDFS block storage of a real node, a log of *segment* files in a
//! directory (usually `<data_dir>/blocks`) that it owns entirely.
//!
//! Every `put` appends one record (a header, then the block's bytes) to the active segment,
//! `dir/<n as 16 hex digits>.seg`; every `delete` appends a small tombstone record (a
//! `delete_many` writes all of its tombstones with one system call). A map held in
//! memory names, for each block, the segment and offset of its newest record; it is rebuilt at
//! [`FileStorage::open`] by reading the records' headers in segment order. A `sync` is then one
//! `fdatasync` of the active segment, however many blocks it covers, where one file per block
//! cost a file creation, a rename and two fsyncs each.
//!
//! Record: `"RB" | version 1 | kind (1 put, 2 delete, 3 pad) | block id u64 | length u32 |
//! data CRC32C u32 | header CRC32C u32`, all little-endian (24 bytes), then `length` bytes of
//! data. The header's CRC covers the 20 bytes before it, so a torn or zeroed header is told from
//! a valid one without reading the data; the data's CRC is checked on every read.
//!
//! A record written through the page cache that grows the file, after another such record, is
//! followed by zeros written ahead of it, up to [`ZEROED_AHEAD`] past its end: the next small
//! records then overwrite bytes the file already has, and their `fdatasync` flushes only data,
//! without writing the file's new size (its inode, or a journal entry) as well (on the ext4 of
//! the reference machine, that halved the time and the system CPU of a 4 KiB write and sync). A
//! scan that meets a header of zeros followed only by zeros to the end of the file is at that
//! tail: it is neither a torn write nor damage, and is left in place.
//!
//! A put of at least 256 KiB is written with `O_DIRECT` (one write from an aligned buffer, past
//! the page cache, where copying a large transfer costs a small machine more CPU than anything
//! else about it): it starts at a 4 KiB-aligned offset, and pad records (zeros, dead from the
//! start) fill the gaps before and after it. The write is made *behind* the caller, on the
//! flusher thread: the put makes sure the record's blocks are allocated (so that a full disk
//! refuses it at once), places it and returns, and the node task goes on with the next part
//! while the disk writes this one. A segment's blocks are allocated for all of it at its first
//! large put (`fallocate`, keeping the file's size), while no write behind is in flight on it:
//! `fallocate` waits for the file's lock, which a direct write growing the file holds until the
//! disk has its bytes. A disk without room for the rest of a segment gets each large record's
//! blocks allocated as it is put; a segment cut back after a failed write has lost the blocks
//! past the cut, and its next large put allocates again. A file system that refuses direct I/O
//! gets every record through the page cache, as smaller records always do.
//!
//! Invariants kept here:
//! * **newest wins:** the live version of a block is its last put record in (segment, offset)
//!   order, and a tombstone after it in that order deletes it. Segments are only ever appended
//!   to, and compaction copies a live record to the end of the log, so the order holds across
//!   restarts;
//! * nothing is durable until [`Storage::sync`] returns, or until [`Storage::durable_mark`]
//!   reaches the mark [`Storage::flush_behind`] returned: a sync or a flush `fdatasync`s every
//!   segment written since the last one began, and the directory when a segment was created or
//!   removed. Flushes run on the flusher thread, one at a time and in order, so a mark is
//!   durable only once every flush before it has completed. A flush handed over covers, as
//!   well, the writes made before it begins if each of them, and every one before it since the
//!   hand-over, went to the active segment it syncs with no directory entry changed: the mark
//!   of the last such write is read just before the `fdatasync`. Under a steady stream of small
//!   writes, those arriving while the flusher thread wakes need no flush of their own. After a
//!   crash, records written since the last completed sync or flush may be present, absent or
//!   torn; a torn header ends its segment's scan (the last segment is cut back to the last
//!   whole record, unless all that follows it is zeros: then it is the tail written ahead,
//!   kept); a record that would replace a block's version is taken only if its data passes its
//!   CRC (the older version stays the block otherwise); any other torn block fails its data CRC
//!   when read, which reports it as an I/O error, never as data;
//! * **writes behind:** at most [`WRITES_BEHIND`] large records are handed to the flusher thread
//!   and not yet written. The thread runs writes and flushes one at a time in the order handed
//!   over, so a flush handed over after a write syncs it; a flush handed over before a write
//!   covers no write made after it (it may begin before the write is made). A read waits for
//!   the writes behind of its record's bytes, and reads ahead only below the first write
//!   behind still unmade in its segment; an inline sync, a wipe and dropping the storage wait
//!   for every write handed over (so a storage opened next on the same directory never sees
//!   one land). A write that fails, or whose job is dropped unmade, fails every later flush;
//!   its block reads as an error (its CRC), never as data. Where the file system cannot
//!   allocate a record's blocks ahead, the put writes it itself;
//! * a sync that failed poisons the storage: the kernel may have dropped the pages it could not
//!   write, so no later sync succeeds (each says why) until the node restarts and its recovery
//!   checks every block;
//! * a failed `put` or `delete` leaves the previous state: the map changes only after the whole
//!   record is written, and the segment is cut back to its old length;
//! * **compaction** (after a sync, one sealed segment at a time, when at least half of it is
//!   dead): its live records are copied to the active segment, a tombstone is copied only while
//!   an older segment still holds a put of that block and the block is not live, the copies are
//!   synced, and only then is the segment removed and the directory synced (a segment leaves the
//!   map only once it is gone from the directory). So a removed segment never takes with it the
//!   last copy of a live block or a tombstone still needed. A segment that turns out unreadable
//!   while it is copied is kept as it is and never chosen again;
//! * the directory is 0700 (tightened if it was looser) and every segment is created 0600,
//!   whatever the umask ([`crate::private`]): blocks are the node's user's alone;
//! * a directory written by an older node (one file per block, `<id as 16 hex digits>`) is read
//!   into the log at open, synced, and then its files are removed.
//!
//! Every I/O error becomes [`StorageError::Io`] naming the path and the OS error; nothing here
//! panics on I/O or on what it reads back.

use rainstorm_core::hydfs::storage::{BlobId, Storage, StorageError};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tracing::{debug, info, warn};

/// A segment is sealed (a new one started) once it holds this many bytes.
const SEGMENT_BYTES: u64 = 32 << 20;

/// Zeros written past a record written through the page cache (the second of a run of them), so
/// that the next small records overwrite bytes the file has (see the module header). The zeros'
/// own sync allocates their blocks and writes the file's new size; 1 MiB of them serves about
/// 250 appends of 4 KiB, where 64 KiB made every sixteenth append's sync do that (on the
/// reference machine's ext4, 0.20 block allocations and 1.2 inodes dirtied per append under the
/// append load, against 0.02 and 0.3 with 1 MiB). Not more: a large record written with direct
/// I/O over zeros still dirty in the page cache makes the kernel write those zeros first.
const ZEROED_AHEAD: u64 = 1 << 20;

/// Above this many unsynced bytes, `sync` hands the flush to the flusher thread and answers
/// `InProgress` meanwhile (a flush of a large transfer must not stall the node's other work);
/// at most this many, it waits for a flush under way and syncs the rest itself.
const BACKGROUND_SYNC_ABOVE: u64 = 4 << 20;

/// Large records handed to the flusher thread to write and not yet written, at most: a put
/// beyond them waits for the oldest (so a fast sender cannot queue more memory than this many
/// blocks, and the disk is kept busy while the node task handles the next one).
const WRITES_BEHIND: u64 = 4;

/// A sync or flush slower than this is logged: the disk is slow, and what waits for it (the
/// node, for a sync; the answers to writes, for a flush) waits that long.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(50);

const MAGIC: [u8; 2] = *b"RB";
const VERSION: u8 = 1;
const HEADER: u64 = 24;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// Zeros that align the next record for direct I/O: dead from the start, never read as data.
const KIND_PAD: u8 = 3;

/// A record with fewer data bytes than this is written from one buffer and read into one, one
/// system call each: copying it costs less than a second call. A larger one is written and read
/// in two (its header, then its data), never copied.
const GATHER_BELOW: usize = 64 << 10;

/// A record with at least this many data bytes is written and read with `O_DIRECT`.
const DIRECT_AT_LEAST: usize = crate::direct::LARGE;

use crate::direct::{AlignedBuf, ALIGN};
use crate::read_ahead::ReadAhead;
use std::sync::Arc;

/// Block storage in a directory of segment files, durable at [`Storage::sync`] or once a flush
/// behind ([`Storage::flush_behind`]) has completed.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    segment_bytes: u64,
    /// Every segment, by number; the last one is the active one, the only one appended to.
    segments: BTreeMap<u64, Segment>,
    /// Where each live block's newest record is.
    blocks: HashMap<BlobId, Loc>,
    /// Segments written since their last sync, and how many bytes.
    unsynced: BTreeSet<u64>,
    unsynced_bytes: u64,
    /// Directory entries changed (a segment created or removed, a wipe) since the last sync.
    dir_dirty: bool,
    /// The thread that flushes behind the node's back (started at the first such flush).
    flusher: Option<Flusher>,
    /// The flush the flusher runs now, if any.
    in_flight: Option<InFlight>,
    /// Puts and deletes so far: the mark ([`Storage::flush_behind`]) a flush begun now reaches.
    written: u64,
    /// Every put and delete up to this mark is durable.
    durable: u64,
    /// A mark `flush_behind` returned while a flush was under way: the next flush, for what
    /// that one does not cover, begins once it ends.
    wanted: u64,
    /// Called on the flusher thread whenever a flush ends (the node task wakes to answer the
    /// writes it waited for). Shared with the thread, so that one set after it started (a
    /// flush at open) still reaches it.
    on_flushed: Arc<std::sync::OnceLock<FlushWake>>,
    /// Compacted segments, removed once the sync covering their copies completes.
    retiring: Vec<u64>,
    /// Why a sync failed, once one has. After a failed fdatasync the kernel may have dropped the
    /// pages it could not write, so a later sync that succeeds would prove nothing: every later
    /// sync fails with this until the node restarts (and its recovery checks every block).
    poisoned: Option<String>,
    /// The buffer large records are written from and read into with direct I/O (kept, so that
    /// its memory is found once, not for every block).
    aligned: AlignedBuf,
    /// Records with at least this many data bytes are written with direct I/O
    /// ([`DIRECT_AT_LEAST`]; tests lower it).
    direct_at_least: usize,
    /// Spans of segments read ahead for sequential large reads.
    read_ahead: ReadAhead,
    /// Whether the last record written went through the page cache. Zeros are written ahead
    /// only after two such records in a row: a large transfer's records go direct, and a
    /// direct write over zeros still dirty in the page cache would have to wait for them.
    after_small: bool,
    /// Writes of records through the page cache so far (tests count system calls with it).
    #[cfg(test)]
    record_writes: u64,
    /// The buffer a small record is gathered in (header then data) to be written with one
    /// system call (kept, like `aligned`).
    gather: Vec<u8>,
    /// Writes behind handed over and not yet known to be made, oldest first.
    behind: std::collections::VecDeque<Behind>,
    /// Set by a test: large puts find no room, as on a full disk (`Some(n)`: room for
    /// allocations of at most `n` bytes).
    #[cfg(test)]
    no_room: Option<u64>,
    /// Set by a test: blocks cannot be allocated ahead, as on a file system without
    /// `fallocate`.
    #[cfg(test)]
    no_reserve: bool,
}

#[derive(Debug)]
struct Segment {
    /// Shared with the flusher thread while it syncs the segment.
    file: Arc<File>,
    /// The same file opened with `O_DIRECT`, for large records (`None` where the file system
    /// refuses direct I/O: everything then goes through `file`).
    direct: Option<Arc<File>>,
    /// Bytes of whole records in it; the next record goes here.
    len: u64,
    /// Bytes of the file written: its records, then zeros written ahead of the next ones
    /// (`ZEROED_AHEAD`). At least `len`; every byte from `len` to it is zero.
    zeroed: u64,
    /// Bytes of records no longer needed: replaced or deleted blocks, and tombstones.
    dead: u64,
    /// Bytes from the start whose blocks were allocated ahead (`fallocate`) for large records:
    /// a write behind below it cannot fail for want of space. 0 in a segment found at open;
    /// lowered when the file is cut ([`Segment::cut`]: a truncation frees the blocks past it).
    reserved: u64,
    /// The disk had no room to allocate the rest of the segment at once: large puts in it
    /// allocate their own records' blocks.
    short_of_room: bool,
    /// Every block with a put record in this segment, live or not (to know which tombstones
    /// newer segments still need).
    puts: HashSet<BlobId>,
    /// Compaction found it unreadable where live blocks still are: it is left alone.
    damaged: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    segment: u64,
    /// Offset of the record's header.
    at: u64,
    len: u32,
}

impl Loc {
    fn record_bytes(&self) -> u64 {
        HEADER + u64::from(self.len)
    }
}

impl Segment {
    /// A segment whose file (and its direct handle) was just opened: nothing scanned yet.
    fn empty(file: File, direct: Option<Arc<File>>) -> Segment {
        Segment {
            file: Arc::new(file),
            direct,
            len: 0,
            zeroed: 0,
            dead: 0,
            reserved: 0,
            short_of_room: false,
            puts: HashSet::new(),
            damaged: false,
        }
    }

    /// Once the records have reached the end of the bytes written (the last record grew the
    /// file), writes zeros up to [`ZEROED_AHEAD`] past it (not past a segment of
    /// `segment_bytes`). Best effort: a disk too full for them still takes the records that
    /// fit, which then grow the file as they are written.
    fn zero_ahead(&mut self, segment_bytes: u64) {
        debug_assert!(self.zeroed >= self.len, "the bytes written cover the records");
        if self.zeroed > self.len {
            return;
        }
        let until = (self.len + ZEROED_AHEAD).min(segment_bytes.max(self.len));
        if self.zeroed >= until {
            return;
        }
        let zeros = vec![0u8; (until - self.zeroed) as usize];
        match self.file.write_all_at(&zeros, self.zeroed) {
            Ok(()) => self.zeroed = until,
            Err(_) => {
                let _ = self.cut(self.zeroed);
            }
        }
    }

    /// Makes sure the blocks up to `end` are allocated, so that a write below it cannot fail for
    /// want of space; `false` where the file system cannot allocate ahead. They are allocated
    /// up to `whole` (the segment's size) at once, at the segment's first large put, when no
    /// write behind is in flight on it: `fallocate` waits for the file's lock, which a direct
    /// write growing the file holds until the disk has it, so allocating record by record made
    /// the node task wait for the previous part's write at every part. A disk without room for
    /// that much still gives the record its own blocks, and so every record after it.
    fn allocate(&mut self, end: u64, whole: u64, room: Option<u64>) -> std::io::Result<bool> {
        debug_assert!(end <= whole, "a record ends within its segment's allocation");
        if end <= self.reserved {
            return Ok(true);
        }
        let from = self.len.max(self.reserved);
        if !self.short_of_room {
            match reserve(&self.file, from, whole - from, room) {
                Ok(done) => {
                    if done {
                        self.reserved = whole;
                    }
                    return Ok(done);
                }
                Err(_) if whole > end => {}
                Err(e) => return Err(e),
            }
        }
        // A put refused here changes nothing: the whole is tried again at the next one.
        let done = reserve(&self.file, from, end - from, room)?;
        self.short_of_room = true;
        if done {
            self.reserved = end;
        }
        Ok(done)
    }

    /// Cuts the file back to `at` bytes (after a failed write). A truncation frees the blocks
    /// allocated past the new end as well, so the allocation mark comes down with it.
    fn cut(&mut self, at: u64) -> std::io::Result<()> {
        self.zeroed = at;
        self.reserved = self.reserved.min(at);
        self.file.set_len(at)
    }
}

/// Whether a whole, valid record header is at `at` in `file` (of `size` bytes).
fn header_follows(file: &File, at: u64, size: u64) -> bool {
    let mut h = [0u8; HEADER as usize];
    at + HEADER <= size && file.read_exact_at(&mut h, at).is_ok() && Header::decode(&h).is_some()
}

/// Whether every byte of `file` from `from` to `to` is zero.
fn zeros_from(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// What the flusher thread calls when a flush ends.
#[derive(Clone)]
struct FlushWake(Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for FlushWake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlushWake")
    }
}

/// The thread that runs `fdatasync`s behind the node's back, one flush at a time, in order.
/// Dropping it (with its storage) ends the thread after the flush it runs.
struct Flusher {
    jobs: std::sync::mpsc::Sender<Job>,
    shared: Arc<FlushShared>,
    /// Flushes handed to the thread so far (each job's number).
    sent: u64,
    /// Large records handed to the thread to write behind, so far.
    writes_sent: u64,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flusher({} flushes and {} writes sent)", self.sent, self.writes_sent)
    }
}

/// A write behind not yet known to be made: its number (the writes handed over so far, it
/// included) and the bytes of its segment it writes.
#[derive(Clone, Copy, Debug)]
struct Behind {
    number: u64,
    segment: u64,
    start: u64,
    end: u64,
}

impl Behind {
    /// Whether it writes any byte of the record at `loc`.
    fn overlaps(&self, loc: Loc) -> bool {
        self.segment == loc.segment && self.start < loc.at + loc.record_bytes() && loc.at < self.end
    }
}

/// What the flusher thread does, one job at a time, in the order they were handed over: so a
/// flush handed over after a write behind syncs it.
enum Job {
    Flush(FlushJob),
    Write(WriteJob),
}

/// A large record written behind the node's back ([`FileStorage::append_direct`]): its aligned
/// span (the record and the pad after it), written with one `O_DIRECT` write at `at`.
struct WriteJob {
    direct: Arc<File>,
    /// The same file through the page cache, should the file system refuse the direct write.
    file: Arc<File>,
    path: PathBuf,
    at: u64,
    buf: AlignedBuf,
    len: usize,
    pending: Pending,
}

/// A write behind's place in the count of writes made. Dropped before it is made (its thread
/// gone, its job with it), it still counts as made, and as failed: nothing waits for it
/// forever, and no flush after it succeeds.
struct Pending {
    shared: Arc<FlushShared>,
    blob: BlobId,
    made: bool,
}

impl Pending {
    /// The write was made, or failed with `result`: counted, and the waiters woken.
    fn made(mut self, result: Result<(), String>, buf: Option<AlignedBuf>) {
        self.made = true;
        count_write(&self.shared, result, buf);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.made {
            let why = format!("the flusher thread stopped before writing block {:016x}", self.blob);
            count_write(&self.shared, Err(why), None);
        }
    }
}

/// Counts one write behind as made (failed, with `result`'s reason), keeps its buffer for the
/// next one, and wakes whoever waits for writes.
fn count_write(shared: &FlushShared, result: Result<(), String>, buf: Option<AlignedBuf>) {
    {
        let mut state = lock_flush(shared);
        state.writes_done += 1;
        if let Err(why) = result {
            state.failed.get_or_insert(why);
        }
        if let Some(buf) = buf.filter(|_| (state.spare.len() as u64) < WRITES_BEHIND) {
            state.spare.push(buf);
        }
    }
    shared.wake_waiters();
}

/// One flush: the segments written since the last one, and the directory if entries changed.
struct FlushJob {
    number: u64,
    /// The mark of the last write before the job was handed over: it reaches at least this.
    mark: u64,
    files: Vec<(Arc<File>, PathBuf)>,
    dir: Option<PathBuf>,
}

#[derive(Default)]
struct FlushShared {
    state: std::sync::Mutex<FlushState>,
    ended: std::sync::Condvar,
    /// Threads waiting on `ended` ([`FlushShared::wait_while`]): a flush or write behind that
    /// ends wakes them only if there are any (a wake costs a system call, and the node task
    /// rarely waits; it hears of ends through its own wake-up).
    waiters: std::sync::atomic::AtomicUsize,
    /// The mark of the last write the flush handed over but not yet begun covers as well
    /// ([`FileStorage::publish`]): read by the flusher just before it syncs.
    published: std::sync::atomic::AtomicU64,
    /// Held by a test to keep the flusher from beginning a flush it was handed.
    #[cfg(test)]
    hold: std::sync::Mutex<()>,
    /// Held by a test to keep the flusher between reading the mark and syncing.
    #[cfg(test)]
    hold_sync: std::sync::Mutex<()>,
    /// Set by a test: every write behind fails.
    #[cfg(test)]
    fail_writes: std::sync::atomic::AtomicBool,
    /// The number of the last flush whose mark the flusher read (tests).
    #[cfg(test)]
    loaded: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct FlushState {
    /// The number of the last flush that ended.
    finished: u64,
    /// The mark that flush reached: its job's, or a later one published before it began.
    reached: u64,
    /// Why a flush or a write behind failed, once one has (every later flush counts as failed
    /// too).
    failed: Option<String>,
    /// Writes behind completed (or failed) so far.
    writes_done: u64,
    /// Buffers of completed writes behind, for the next ones (at most [`WRITES_BEHIND`]).
    spare: Vec<AlignedBuf>,
}

/// The flush under way: its job number, the mark it reaches at least, and how many bytes it
/// covers (writes it covers as well, [`FileStorage::publish`], not counted).
#[derive(Clone, Copy, Debug)]
struct InFlight {
    number: u64,
    mark: u64,
    bytes: u64,
    /// The active segment when the flush was handed over, if the flush syncs it: a later write
    /// to it may be covered by the flush too ([`FileStorage::publish`]).
    extends: Option<u64>,
    /// Every write since the flush was handed over went to `extends`, with no directory entry
    /// changed: the next one may be published too.
    open: bool,
}

impl FlushShared {
    /// Waits on `ended` while `blocked` holds, counted among the waiters. The count is raised
    /// under the lock, before the wait releases it, so an end recorded after the check (under
    /// the lock, by [`FlushShared::wake_waiters`]'s caller) always sees it.
    fn wait_while<'a>(
        &self,
        mut state: std::sync::MutexGuard<'a, FlushState>,
        mut blocked: impl FnMut(&FlushState) -> bool,
    ) -> std::sync::MutexGuard<'a, FlushState> {
        while blocked(&state) {
            self.waiters.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            state = self.ended.wait(state).unwrap_or_else(|p| p.into_inner());
            self.waiters.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        state
    }

    /// Wakes whoever waits for an end, if anyone does: called after recording the end under
    /// the lock.
    fn wake_waiters(&self) {
        if self.waiters.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.ended.notify_all();
        }
    }
}

fn lock_flush(shared: &FlushShared) -> std::sync::MutexGuard<'_, FlushState> {
    // A panic on the flusher thread while holding the lock leaves a state still worth reading.
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Syncs the files and the directory of one flush.
fn run_flush(job: &FlushJob) -> Result<(), String> {
    for (file, path) in &job.files {
        file.sync_data().map_err(|e| format!("cannot sync {}: {e}", path.display()))?;
    }
    match &job.dir {
        Some(dir) => File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", dir.display())),
        None => Ok(()),
    }
}

/// Writes one record behind the node's back, on the flusher thread: with direct I/O, or through
/// the page cache if the file system refuses it (the same bytes at the same offset). A failure
/// fails every later flush, so nothing it held is ever reported durable. The buffer goes back
/// to the storage for the next write.
fn write_behind(write: WriteJob, refused_direct: &mut bool) {
    let WriteJob { direct, file, path, at, mut buf, len, pending } = write;
    #[cfg(test)]
    drop(pending.shared.hold.lock());
    #[cfg(test)]
    let planted = pending.shared.fail_writes.load(std::sync::atomic::Ordering::SeqCst);
    #[cfg(not(test))]
    let planted = false;
    let span = buf.take(len);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if planted {
            return Err(std::io::Error::other("a write failure planted by a test"));
        }
        match direct.write_all_at(span, at) {
            Err(e) if e.kind() == ErrorKind::InvalidInput => {
                if !*refused_direct {
                    *refused_direct = true;
                    warn!(segment = %path.display(), error = %e, "direct I/O refused: large blocks are written through the page cache");
                }
                file.write_all_at(span, at)
            }
            other => other,
        }
    }))
    .unwrap_or_else(|_| Err(std::io::Error::other("the flusher thread panicked")));
    let blob = pending.blob;
    let result = result.map_err(|e| format!("cannot write block {blob:016x} to {}: {e}", path.display()));
    pending.made(result, Some(buf));
}

/// How a record is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// With direct I/O if it is large and the file system allows it.
    DirectIfLarge,
    /// Through the page cache.
    PageCache,
}

/// One record's header, as read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    kind: u8,
    blob: BlobId,
    len: u32,
    data_crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER as usize] {
        let mut h = [0u8; HEADER as usize];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = VERSION;
        h[3] = self.kind;
        h[4..12].copy_from_slice(&self.blob.to_le_bytes());
        h[12..16].copy_from_slice(&self.len.to_le_bytes());
        h[16..20].copy_from_slice(&self.data_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[..20]);
        h[20..24].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The header in `h`, or `None` when it is not a whole, valid header.
    fn decode(h: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER as usize] = h.get(..HEADER as usize)?.try_into().ok()?;
        let crc = u32::from_le_bytes(h[20..24].try_into().ok()?);
        if h[0..2] != MAGIC || h[2] != VERSION || crc32c::crc32c(&h[..20]) != crc {
            return None;
        }
        let kind = h[3];
        if kind != KIND_PUT && kind != KIND_DELETE && kind != KIND_PAD {
            return None;
        }
        Some(Header {
            kind,
            blob: u64::from_le_bytes(h[4..12].try_into().ok()?),
            len: u32::from_le_bytes(h[12..16].try_into().ok()?),
            data_crc: u32::from_le_bytes(h[16..20].try_into().ok()?),
        })
    }

    /// The version and kind of a whole, valid header that this code does not know (one written
    /// by a newer version): not a torn write, and never to be cut off as one.
    fn unknown(h: &[u8]) -> Option<(u8, u8)> {
        let h: &[u8; HEADER as usize] = h.get(..HEADER as usize)?.try_into().ok()?;
        let crc = u32::from_le_bytes(h[20..24].try_into().ok()?);
        if h[0..2] != MAGIC || crc32c::crc32c(&h[..20]) != crc || Header::decode(h).is_some() {
            return None;
        }
        Some((h[2], h[3]))
    }
}

/// Opens `path` a second time with `O_DIRECT` (read and write), or `None` where the file system
/// does not allow it (tmpfs, say).
fn open_direct(path: &Path) -> Option<File> {
    crate::direct::open(path, crate::private::file_options().read(true).write(true), "segment")
}

/// Allocates the blocks of `len` bytes at `at` in `file` without changing its size, so that a
/// write there cannot fail for want of space (`room`, for tests: allocations of more bytes fail
/// as on a full disk). `false` on a file system without `fallocate`: the write must then find
/// its blocks itself.
fn reserve(file: &File, at: u64, len: u64, room: Option<u64>) -> std::io::Result<bool> {
    if room.is_some_and(|room| len > room) {
        return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, at, len) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The first offset at or after `at` where a record can start a direct write: `at` itself if
/// aligned, else the alignment after room for a pad record's header.
fn pad_end(at: u64) -> u64 {
    if at.is_multiple_of(ALIGN) {
        at
    } else {
        (at + HEADER).div_ceil(ALIGN) * ALIGN
    }
}

/// Fills `buf` (empty, or at least a header long) with one pad record.
fn fill_pad(buf: &mut [u8]) {
    if buf.is_empty() {
        return;
    }
    debug_assert!(buf.len() as u64 >= HEADER, "a pad record has room for its header");
    let data = &mut buf[HEADER as usize..];
    data.fill(0);
    let len = u32::try_from(data.len()).expect("a pad is shorter than an alignment and a header");
    let header = Header { kind: KIND_PAD, blob: 0, len, data_crc: crc32c::crc32c(data) };
    buf[..HEADER as usize].copy_from_slice(&header.encode());
}

/// Reads record `loc` through `direct`: the aligned span around it into `buf`, its header into
/// `h`, and returns its data. `None` if the file system refuses the read (then the page cache
/// serves it). A span that runs past the end of the file (a record not written by the direct
/// path) is read up to there.
fn read_direct(
    direct: &File,
    buf: &mut AlignedBuf,
    loc: Loc,
    h: &mut [u8; HEADER as usize],
) -> std::io::Result<Option<Vec<u8>>> {
    let from = loc.at / ALIGN * ALIGN;
    let need = (loc.at + loc.record_bytes() - from) as usize;
    let span = buf.take(need.div_ceil(ALIGN as usize) * ALIGN as usize);
    let mut got = 0;
    while got < need {
        match direct.read_at(&mut span[got..], from + got as u64) {
            Ok(0) => return Err(std::io::Error::from(ErrorKind::UnexpectedEof)),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::InvalidInput => return Ok(None),
            Err(e) => return Err(e),
        }
        // A short read ends on an aligned offset unless it hit the end of the file; the next
        // read then returns 0.
    }
    let skip = (loc.at - from) as usize;
    h.copy_from_slice(&span[skip..skip + HEADER as usize]);
    Ok(Some(span[skip + HEADER as usize..need].to_vec()))
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> StorageError {
    StorageError::Io(format!("cannot {what} {}: {e}", path.display()))
}

fn segment_name(n: u64) -> String {
    format!("{n:016x}.seg")
}

/// What a name in the block directory is.
enum Entry {
    Segment(u64),
    /// A block written by an older node, one file per block.
    OldBlock(BlobId),
    /// An older node's temporary file, left by a crash mid-put: never a block.
    OldTemporary,
    Other,
}

fn classify(name: &str) -> Entry {
    // Exactly the names this code writes: 16 lower-case hex digits.
    let hex = |s: &str| {
        let digits = s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        digits.then(|| u64::from_str_radix(s, 16).ok()).flatten()
    };
    if let Some(n) = name.strip_suffix(".seg").and_then(hex) {
        return Entry::Segment(n);
    }
    if let Some(stem) = name.strip_suffix(".tmp") {
        if hex(stem).is_some() {
            return Entry::OldTemporary;
        }
    }
    match hex(name) {
        Some(blob) => Entry::OldBlock(blob),
        None => Entry::Other,
    }
}

impl FileStorage {
    /// Opens (creating it if needed) the block directory `dir`, 0700, and reads back every
    /// segment's headers to know where each block is.
    pub fn open(dir: &Path) -> Result<FileStorage, StorageError> {
        FileStorage::open_with(dir, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, segment_bytes: u64) -> Result<FileStorage, StorageError> {
        crate::private::dir(dir).map_err(|e| io_err("create", dir, &e))?;
        let mut s = FileStorage {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: BTreeMap::new(),
            blocks: HashMap::new(),
            unsynced: BTreeSet::new(),
            unsynced_bytes: 0,
            dir_dirty: false,
            flusher: None,
            in_flight: None,
            written: 0,
            durable: 0,
            wanted: 0,
            on_flushed: Arc::default(),
            retiring: Vec::new(),
            poisoned: None,
            aligned: AlignedBuf::default(),
            direct_at_least: DIRECT_AT_LEAST,
            after_small: false,
            #[cfg(test)]
            record_writes: 0,
            gather: Vec::new(),
            behind: std::collections::VecDeque::new(),
            #[cfg(test)]
            no_room: None,
            #[cfg(test)]
            no_reserve: false,
            read_ahead: ReadAhead::default(),
        };
        let mut numbers = Vec::new();
        let mut old_blocks = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io_err("list", dir, &e))? {
            let entry = entry.map_err(|e| io_err("list", dir, &e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            match classify(name) {
                Entry::Segment(n) => numbers.push(n),
                Entry::OldBlock(blob) => old_blocks.push(blob),
                Entry::OldTemporary => {
                    let _ = fs::remove_file(entry.path());
                    s.dir_dirty = true;
                }
                Entry::Other => {}
            }
        }
        numbers.sort_unstable();
        let last = numbers.last().copied();
        for n in numbers {
            s.scan(n, Some(n) == last)?;
        }
        if !old_blocks.is_empty() {
            s.import_old_blocks(old_blocks)?;
        }
        Ok(s)
    }

    /// The directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn segment_path(&self, n: u64) -> PathBuf {
        self.dir.join(segment_name(n))
    }

    /// Reads segment `n`'s headers into the map. A header that is not whole and valid ends the
    /// scan: in the last segment that is a write a crash tore, and the segment is cut back to
    /// the record before it; in an earlier one it is damage, reported, and the records after it
    /// are unreachable.
    fn scan(&mut self, n: u64, last: bool) -> Result<(), StorageError> {
        let path = self.segment_path(n);
        let file = crate::private::file_options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("open segment", &path, &e))?;
        let size = file.metadata().map_err(|e| io_err("inspect segment", &path, &e))?.len();
        let direct = open_direct(&path).map(Arc::new);
        self.segments.insert(n, Segment::empty(file, direct));
        let mut at = 0u64;
        let mut h = [0u8; HEADER as usize];
        while at + HEADER <= size {
            let segment = self.segments.get_mut(&n).expect("inserted above");
            if let Err(e) = segment.file.read_exact_at(&mut h, at) {
                return Err(io_err("read segment", &path, &e));
            }
            if let Some((version, kind)) = Header::unknown(&h) {
                return Err(StorageError::Io(format!(
                    "{} holds at byte {at} a record of version {version}, kind {kind}, which this node does not know (written by a newer version of RainStorm?): the block log is left as it is, not cut off",
                    path.display()
                )));
            }
            let Some(header) = Header::decode(&h) else { break };
            let bytes = HEADER + u64::from(header.len);
            if at + bytes > size {
                break;
            }
            // The last record of the last segment may be a write a crash interrupted over the
            // zeros written ahead (its header whole, its data not): it is cut off, as it would
            // be where the file had ended with it.
            if last && header.kind == KIND_PUT && !header_follows(&segment.file, at + bytes, size) {
                let mut data = vec![0u8; header.len as usize];
                let whole = segment.file.read_exact_at(&mut data, at + HEADER).is_ok()
                    && crc32c::crc32c(&data) == header.data_crc;
                if !whole {
                    break;
                }
            }
            segment.len = at + bytes;
            // A record that replaces a block's version is taken only if its data is whole: a
            // crash may leave a new copy's header without its bytes (a compaction copy, say),
            // and the older version is then still the block.
            let replaces_torn = header.kind == KIND_PUT && self.blocks.contains_key(&header.blob) && {
                let mut data = vec![0u8; header.len as usize];
                let read = segment.file.read_exact_at(&mut data, at + HEADER);
                read.is_err() || crc32c::crc32c(&data) != header.data_crc
            };
            let segment = self.segments.get_mut(&n).expect("inserted above");
            let old = if replaces_torn || header.kind == KIND_PAD {
                segment.dead += bytes;
                None
            } else if header.kind == KIND_PUT {
                segment.puts.insert(header.blob);
                self.blocks.insert(header.blob, Loc { segment: n, at, len: header.len })
            } else {
                segment.dead += bytes;
                self.blocks.remove(&header.blob)
            };
            if let Some(old) = old {
                self.kill(old);
            }
            at += bytes;
        }
        let segment = self.segments.get_mut(&n).expect("inserted above");
        segment.zeroed = segment.len;
        // A tail that cannot be read is not taken for zeros: it is cut or reported below.
        if at < size && zeros_from(&segment.file, at, size).unwrap_or(false) {
            // The zeros written ahead of the next record: kept, the next record goes at `at`.
            segment.zeroed = size;
        } else if at < size {
            if last {
                info!(
                    segment = %path.display(),
                    kept = at,
                    cut = size - at,
                    "cut {} bytes of a write a crash interrupted off the end of {}",
                    size - at,
                    path.display()
                );
                segment.file.set_len(at).map_err(|e| io_err("cut the torn end of", &path, &e))?;
                segment.zeroed = at;
                self.unsynced.insert(n);
            } else {
                warn!(
                    event = "hydfs_segment_damaged",
                    segment = %path.display(),
                    at,
                    size,
                    "segment {} is damaged at byte {at} of {size}: the blocks after that point cannot be read, and HyDFS fetches them again from replicas",
                    path.display()
                );
                segment.dead += size - at;
                segment.len = size;
                segment.zeroed = size;
            }
        }
        Ok(())
    }

    /// A record that is no longer the live version of its block: its bytes are dead.
    fn kill(&mut self, old: Loc) {
        if let Some(segment) = self.segments.get_mut(&old.segment) {
            segment.dead += old.record_bytes();
        }
    }

    /// Reads the blocks an older node kept one file per block into the log, syncs them, and
    /// only then removes the old files (a crash in between reads them in again: newest wins).
    fn import_old_blocks(&mut self, mut old: Vec<BlobId>) -> Result<(), StorageError> {
        old.sort_unstable();
        for blob in &old {
            let path = self.dir.join(format!("{blob:016x}"));
            let data = fs::read(&path).map_err(|e| io_err("read old block", &path, &e))?;
            self.put(*blob, &data)?;
        }
        self.sync_until_done()?;
        for blob in &old {
            let path = self.dir.join(format!("{blob:016x}"));
            fs::remove_file(&path).map_err(|e| io_err("remove old block", &path, &e))?;
        }
        self.sync_dir()?;
        info!(
            event = "hydfs_blocks_converted",
            blocks = old.len(),
            "converted {} block files of an older node into the block log",
            old.len()
        );
        Ok(())
    }

    fn sync_until_done(&mut self) -> Result<(), StorageError> {
        loop {
            match self.sync() {
                Err(StorageError::InProgress) => std::thread::sleep(std::time::Duration::from_millis(1)),
                other => return other,
            }
        }
    }

    fn sync_dir(&mut self) -> Result<(), StorageError> {
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io_err("sync", &self.dir, &e))?;
        self.dir_dirty = false;
        Ok(())
    }

    /// The segment the next record of `bytes` bytes goes to: the active one, or a new one when
    /// the active one is full (a record larger than a segment gets a segment of its own).
    fn segment_for(&mut self, bytes: u64) -> Result<u64, StorageError> {
        if let Some((&n, active)) = self.segments.last_key_value() {
            if active.len == 0 || active.len + bytes <= self.segment_bytes {
                return Ok(n);
            }
        }
        let n = match self.segments.last_key_value() {
            None => 0,
            Some((&n, _)) => n
                .checked_add(1)
                .ok_or_else(|| StorageError::Io(format!("no segment number is left after {n:016x}")))?,
        };
        let path = self.segment_path(n);
        let file = crate::private::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_err("create segment", &path, &e))?;
        let direct = open_direct(&path).map(Arc::new);
        self.segments.insert(n, Segment::empty(file, direct));
        self.dir_dirty = true;
        Ok(n)
    }

    /// Appends one record at the end of the log, `data_crc` the CRC32C of `data`; returns where
    /// it went.
    fn append(&mut self, kind: u8, blob: BlobId, data: &[u8], data_crc: u32) -> Result<Loc, StorageError> {
        debug_assert_eq!(data_crc, crc32c::crc32c(data), "a record's CRC is its data's");
        let len = u32::try_from(data.len()).map_err(|_| {
            StorageError::Io(format!(
                "block {blob:016x} of {} bytes is larger than a record can hold",
                data.len()
            ))
        })?;
        let header = Header { kind, blob, len, data_crc };
        self.append_record(&header.encode(), data, blob, len, Via::DirectIfLarge)
    }

    /// Appends a whole record, its encoded header then its data (a fresh one, or one copied by
    /// compaction): a small one gathered into one write, a larger one in two so that it is never
    /// copied.
    fn append_record(
        &mut self,
        header: &[u8],
        data: &[u8],
        blob: BlobId,
        len: u32,
        via: Via,
    ) -> Result<Loc, StorageError> {
        if via == Via::DirectIfLarge && data.len() >= self.direct_at_least {
            if let Some(loc) = self.append_direct(header, data, blob, len)? {
                return Ok(loc);
            }
        }
        let bytes = (header.len() + data.len()) as u64;
        let n = self.segment_for(bytes)?;
        let path = self.segment_path(n);
        let segment = self.segments.get_mut(&n).expect("segment_for returns a segment");
        let at = segment.len;
        #[cfg(test)]
        {
            self.record_writes += 1;
        }
        let written = if data.len() < GATHER_BELOW {
            self.gather.clear();
            self.gather.extend_from_slice(header);
            self.gather.extend_from_slice(data);
            segment.file.write_all_at(&self.gather, at)
        } else {
            segment
                .file
                .write_all_at(header, at)
                .and_then(|()| segment.file.write_all_at(data, at + header.len() as u64))
        };
        if let Err(e) = written {
            // Best effort: the next record is written at `at` anyway, and a scan stops at the
            // first header that is not whole and valid.
            let _ = segment.cut(at);
            return Err(io_err(&format!("write block {blob:016x} to"), &path, &e));
        }
        segment.len = at + bytes;
        segment.zeroed = segment.zeroed.max(segment.len);
        if self.after_small {
            segment.zero_ahead(self.segment_bytes);
        }
        self.after_small = true;
        self.unsynced.insert(n);
        self.unsynced_bytes += bytes;
        Ok(Loc { segment: n, at, len })
    }

    /// Appends a large record with one `O_DIRECT` write at an aligned offset, made behind the
    /// node's back: a pad record first if the segment's end is not aligned (written through
    /// the page cache, now), then the header, the data and a pad record out to the next
    /// aligned offset, from an aligned buffer handed to the flusher thread. The record counts
    /// as written at once (a flush handed over later syncs it after writing it; a read of it
    /// waits for it). Where the file system cannot allocate the blocks ahead (`fallocate`), the
    /// write is made here instead, so that a full disk still fails this put alone. `None` if
    /// the segment has no direct handle (the caller writes it buffered).
    fn append_direct(
        &mut self,
        header: &[u8],
        data: &[u8],
        blob: BlobId,
        len: u32,
    ) -> Result<Option<Loc>, StorageError> {
        let record = HEADER + data.len() as u64;
        // Room for the worst case: a leading pad, the record, a trailing pad.
        let n = self.segment_for(record + 2 * (ALIGN + HEADER))?;
        let path = self.segment_path(n);
        let whole = pad_end(self.segment_bytes);
        let segment = self.segments.get_mut(&n).expect("segment_for returns a segment");
        let Some(direct) = segment.direct.clone() else { return Ok(None) };
        #[cfg(test)]
        let (room, no_reserve) = (self.no_room, self.no_reserve);
        #[cfg(not(test))]
        let (room, no_reserve) = (None, false);
        let was = segment.len;
        let start = pad_end(was);
        let end = pad_end(start + record);
        // The blocks the write needs are found now: a full disk refuses this put, here and with
        // its cause, instead of failing the write behind (which fails every flush after it).
        let allocated = segment
            .allocate(end, whole.max(end), room)
            .map_err(|e| io_err(&format!("write block {blob:016x} to"), &path, &e))?;
        let reserved = allocated && !no_reserve;
        debug_assert!(
            !reserved || end <= self.segments[&n].reserved,
            "a write behind lies within its segment's allocated blocks"
        );
        // A write made here uses the storage's own buffer, kept for the next one.
        let mut buf = if reserved { self.room_behind()? } else { std::mem::take(&mut self.aligned) };
        let segment = self.segments.get_mut(&n).expect("segment_for returns a segment");
        let span = buf.take((end - start) as usize);
        span[..HEADER as usize].copy_from_slice(header);
        span[HEADER as usize..record as usize].copy_from_slice(data);
        fill_pad(&mut span[record as usize..]);
        let written = (|| -> std::io::Result<()> {
            if start > was {
                let mut lead = vec![0u8; (start - was) as usize];
                fill_pad(&mut lead);
                segment.file.write_all_at(&lead, was)?;
            }
            if !reserved {
                direct.write_all_at(span, start)?;
            }
            Ok(())
        })();
        // The buffer to hand over, or back to the storage if the write was made here.
        let behind = if reserved {
            Some(buf)
        } else {
            self.aligned = buf;
            None
        };
        if let Err(e) = written {
            let _ = segment.cut(was);
            if e.kind() == ErrorKind::InvalidInput {
                // The file system opened the file for direct I/O but refuses the write (an
                // alignment it wants larger, say): this segment goes through the page cache.
                warn!(segment = %path.display(), error = %e, "direct I/O refused: large blocks in this segment go through the page cache");
                segment.direct = None;
                return Ok(None);
            }
            return Err(io_err(&format!("write block {blob:016x} to"), &path, &e));
        }
        if let Some(buf) = behind {
            let flusher = self.flusher.as_mut().expect("room_behind starts the flusher");
            flusher.writes_sent += 1;
            let number = flusher.writes_sent;
            let pending = Pending { shared: flusher.shared.clone(), blob, made: false };
            let len = (end - start) as usize;
            let job = WriteJob { direct, file: segment.file.clone(), path, at: start, buf, len, pending };
            if flusher.jobs.send(Job::Write(job)).is_err() {
                // The job came back and was dropped: counted as made, and failed.
                let _ = segment.cut(was);
                let why = format!("the flusher thread of {} has stopped", self.dir.display());
                return Err(self.poison(why));
            }
            self.behind.push_back(Behind { number, segment: n, start, end });
            // A flush handed over earlier begins before this write is made: it covers no write
            // from here on (see `publish`).
            if let Some(f) = self.in_flight.as_mut() {
                f.open = false;
            }
        }
        let segment = self.segments.get_mut(&n).expect("segment_for returns a segment");
        segment.len = end;
        segment.zeroed = segment.zeroed.max(end);
        self.after_small = false;
        segment.dead += (start - was) + (end - start - record);
        self.unsynced.insert(n);
        self.unsynced_bytes += end - was;
        Ok(Some(Loc { segment: n, at: start, len }))
    }

    /// A buffer for the next write behind, once fewer than [`WRITES_BEHIND`] are waiting to be
    /// written (starting the flusher thread if it is not running).
    fn room_behind(&mut self) -> Result<AlignedBuf, StorageError> {
        if self.flusher.is_none() {
            self.flusher = Some(self.spawn_flusher()?);
        }
        let flusher = self.flusher.as_ref().expect("started above");
        let (sent, shared) = (flusher.writes_sent, flusher.shared.clone());
        let state = lock_flush(&shared);
        debug_assert!(state.writes_done <= sent, "only writes handed over are made");
        let mut state = shared.wait_while(state, |s| sent - s.writes_done >= WRITES_BEHIND);
        debug_assert!(sent - state.writes_done < WRITES_BEHIND, "at most WRITES_BEHIND writes wait");
        Ok(state.spare.pop().unwrap_or_default())
    }

    /// Waits until every write handed to the flusher thread so far has been made (or has
    /// failed): what syncs the segments itself, or wipes or closes them, comes after it. The
    /// failure of one, if any.
    fn wait_behind(&mut self) -> Result<(), String> {
        let sent = self.flusher.as_ref().map_or(0, |f| f.writes_sent);
        self.wait_writes(sent, true)
    }

    /// Learns which writes behind have been made (waiting, with `wait`, until those numbered up
    /// to `number` have), and forgets them. The failure of one, if any.
    fn wait_writes(&mut self, number: u64, wait: bool) -> Result<(), String> {
        let Some(flusher) = self.flusher.as_ref() else {
            self.behind.clear();
            return Ok(());
        };
        let state = lock_flush(&flusher.shared);
        let state = flusher.shared.wait_while(state, |s| wait && s.writes_done < number);
        debug_assert!(state.writes_done <= flusher.writes_sent, "only writes handed over are made");
        let (done, failed) = (state.writes_done, state.failed.clone());
        drop(state);
        while self.behind.front().is_some_and(|b| b.number <= done) {
            self.behind.pop_front();
        }
        failed.map_or(Ok(()), Err)
    }

    /// Waits for the writes behind that write any byte of `loc`'s record, and returns where the
    /// bytes of its segment that no write behind still has to make end: a read ahead stays
    /// below it.
    fn wait_writes_of(&mut self, loc: Loc) -> u64 {
        let _ = self.wait_writes(0, false);
        if let Some(number) = self.behind.iter().filter(|b| b.overlaps(loc)).map(|b| b.number).max() {
            let _ = self.wait_writes(number, true);
        }
        debug_assert!(
            !self.behind.iter().any(|b| b.overlaps(loc)),
            "a record is read only once every write behind of its bytes is made"
        );
        let written = self.segments.get(&loc.segment).map_or(0, |s| s.len);
        let unmade = self.behind.iter().filter(|b| b.segment == loc.segment).map(|b| b.start).min();
        unmade.map_or(written, |u| u.min(written))
    }

    /// Reads one record, checking its header and its data's CRC; returns its data and that CRC.
    /// A large one is read with direct I/O, like it was written: filling the page cache with it
    /// would cost what writing past the cache saved.
    fn read_record(&mut self, loc: Loc, blob: BlobId) -> Result<(Vec<u8>, u32), StorageError> {
        // A record still being written behind is read once it is written; one whose write
        // failed fails its checksum below, like any other unreadable record.
        let written = self.wait_writes_of(loc);
        let path = self.segment_path(loc.segment);
        let segment = self.segments.get(&loc.segment).ok_or(StorageError::Missing(blob))?;
        let mut h = [0u8; HEADER as usize];
        let end = loc.at + loc.record_bytes();
        let direct = match &segment.direct {
            Some(direct) if loc.len as usize >= self.direct_at_least => {
                let read = match self.read_ahead.take(loc.segment, loc.at, end, &mut h) {
                    Some(data) => Some(data),
                    None => read_direct(direct, &mut self.aligned, loc, &mut h)
                        .map_err(|e| io_err("read a block from", &path, &e))?,
                };
                self.read_ahead.advise(loc.segment, loc.at, end, written, direct);
                read
            }
            _ => None,
        };
        let data = match direct {
            Some(data) => data,
            None if (loc.len as usize) < GATHER_BELOW => {
                // One read for the header and the data; the data is then moved to the front.
                let mut data = vec![0u8; loc.record_bytes() as usize];
                segment
                    .file
                    .read_exact_at(&mut data, loc.at)
                    .map_err(|e| io_err("read a block from", &path, &e))?;
                h.copy_from_slice(&data[..HEADER as usize]);
                data.drain(..HEADER as usize);
                data
            }
            None => {
                let mut data = vec![0u8; loc.len as usize];
                segment
                    .file
                    .read_exact_at(&mut h, loc.at)
                    .and_then(|()| segment.file.read_exact_at(&mut data, loc.at + HEADER))
                    .map_err(|e| io_err("read a block from", &path, &e))?;
                data
            }
        };
        match Header::decode(&h) {
            Some(h) if h.blob == blob && h.len == loc.len && crc32c::crc32c(&data) == h.data_crc => {
                Ok((data, h.data_crc))
            }
            _ => Err(StorageError::Io(format!(
                "block {blob:016x} in {} at byte {} fails its checksum",
                path.display(),
                loc.at
            ))),
        }
    }

    /// Flushes what `unsynced` names: inline for a few bytes, else on a thread of its own.
    fn start_sync(&mut self) -> Result<bool, StorageError> {
        if self.unsynced_bytes <= BACKGROUND_SYNC_ABOVE {
            // Inline, the same flush the flusher would run (numbered 0: never handed to it),
            // once the writes behind it syncs have been made.
            self.wait_behind().map_err(|e| self.poison(e))?;
            run_flush(&self.flush_job(0)).map_err(|e| self.poison(e))?;
            self.clear_unsynced();
            self.durable = self.written;
            return Ok(true);
        }
        // On the flusher thread.
        self.start_flush()?;
        Ok(false)
    }

    /// Hands everything unsynced to the flusher thread (started now if it is not running).
    /// Until the flush has begun, what is unsynced stays so (a failure here flushed nothing).
    fn start_flush(&mut self) -> Result<(), StorageError> {
        debug_assert!(self.in_flight.is_none(), "one flush at a time");
        if self.flusher.is_none() {
            self.flusher = Some(self.spawn_flusher()?);
        }
        let number = self.flusher.as_ref().expect("started above").sent + 1;
        let job = self.flush_job(number);
        let flusher = self.flusher.as_mut().expect("started above");
        // Each flight's published mark starts at its own: a value left by an earlier one can
        // never reach past what this job syncs.
        flusher.shared.published.store(job.mark, std::sync::atomic::Ordering::Release);
        if flusher.jobs.send(Job::Flush(job)).is_err() {
            // Writes handed to it may never have been made: nothing is made durable any more.
            let why = format!("the flusher thread of {} has stopped", self.dir.display());
            return Err(self.poison(why));
        }
        flusher.sent = number;
        let active = self.segments.last_key_value().map(|(&n, _)| n);
        let extends = active.filter(|n| self.unsynced.contains(n));
        let bytes = self.unsynced_bytes;
        self.in_flight =
            Some(InFlight { number, mark: self.written, bytes, extends, open: extends.is_some() });
        self.clear_unsynced();
        Ok(())
    }

    /// Flush `number`: the segments written since the last flush (their own handles, shared),
    /// and the directory if entries changed.
    fn flush_job(&self, number: u64) -> FlushJob {
        let files = self
            .unsynced
            .iter()
            .filter_map(|n| self.segments.get(n).map(|s| (s.file.clone(), self.segment_path(*n))))
            .collect();
        FlushJob { number, mark: self.written, files, dir: self.dir_dirty.then(|| self.dir.clone()) }
    }

    fn spawn_flusher(&self) -> Result<Flusher, StorageError> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let shared = Arc::new(FlushShared::default());
        let (theirs, on_flushed) = (shared.clone(), self.on_flushed.clone());
        std::thread::Builder::new()
            .name("hydfs-flush".into())
            .spawn(move || {
                let mut refused_direct = false;
                for job in queue {
                    let job = match job {
                        Job::Flush(job) => job,
                        Job::Write(write) => {
                            write_behind(write, &mut refused_direct);
                            continue;
                        }
                    };
                    #[cfg(test)]
                    let held = theirs.hold.lock();
                    // Read before the sync begins: every write published by now is in the
                    // segment the job syncs, and was written before the sync.
                    let reached = job.mark.max(theirs.published.load(std::sync::atomic::Ordering::Acquire));
                    #[cfg(test)]
                    {
                        drop(held);
                        theirs.loaded.store(job.number, std::sync::atomic::Ordering::SeqCst);
                        drop(theirs.hold_sync.lock());
                    }
                    let started = std::time::Instant::now();
                    // A panic fails the flush (and poisons the storage): it never leaves the
                    // node waiting for a flush that will not end.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_flush(&job)))
                        .unwrap_or_else(|_| Err("the flusher thread panicked".into()));
                    let took = started.elapsed();
                    if took >= SLOW_SYNC {
                        warn!(
                            event = "slow_sync",
                            ms = took.as_millis() as u64,
                            "a flush took {} ms: the disk is slow, and writes waited for it",
                            took.as_millis()
                        );
                    }
                    {
                        let mut state = lock_flush(&theirs);
                        state.finished = job.number;
                        state.reached = reached;
                        if let Err(e) = result {
                            state.failed.get_or_insert(e);
                        }
                    }
                    theirs.wake_waiters();
                    if let Some(FlushWake(wake)) = on_flushed.get() {
                        wake();
                    }
                }
            })
            .map_err(|e| io_err("start the flusher thread of", &self.dir, &e))?;
        Ok(Flusher { jobs, shared, sent: 0, writes_sent: 0 })
    }

    /// Takes in the flush under way if it has ended (waiting for it first with `wait`): what it
    /// covered is durable, or the storage is poisoned if it failed.
    fn finish_flush(&mut self, wait: bool) -> Result<(), StorageError> {
        let (Some(f), Some(flusher)) = (self.in_flight, self.flusher.as_ref()) else { return Ok(()) };
        let shared = flusher.shared.clone();
        let state = lock_flush(&shared);
        let state = shared.wait_while(state, |s| wait && s.finished < f.number && s.failed.is_none());
        if let Some(why) = state.failed.clone() {
            drop(state);
            self.in_flight = None;
            return Err(self.poison(why));
        }
        if state.finished < f.number {
            return Ok(());
        }
        let reached = state.reached;
        drop(state);
        self.in_flight = None;
        debug_assert!(f.mark >= self.durable, "flushes end in order");
        debug_assert!(
            reached >= f.mark && reached <= self.written,
            "a flush reaches its own mark, and no write not made"
        );
        debug_assert!(
            reached == f.mark || f.extends.is_some(),
            "only a flush of the active segment reaches further"
        );
        self.durable = reached;
        if reached == self.written && !self.dir_dirty {
            // Every write since the flush was handed over went to the segment it synced.
            self.clear_unsynced();
        }
        self.remove_retired()
    }

    /// Calls `wake` on another thread whenever a flush behind the node's back ends (set once;
    /// a later call changes nothing).
    pub fn set_flush_notifier(&mut self, wake: Arc<dyn Fn() + Send + Sync>) {
        let _ = self.on_flushed.set(FlushWake(wake));
    }

    /// After a write to `segment` while a flush waits to begin: if every write since the flush
    /// was handed over went to the segment it syncs, with no directory entry changed, the
    /// flush covers this write too (it syncs the segment after reading the mark), so that
    /// writes arriving in the meantime need no flush of their own. Once one does not qualify,
    /// none later in that flush does.
    fn publish(&mut self, segment: u64) {
        let Some(f) = self.in_flight.as_mut() else { return };
        match (f.extends, &self.flusher) {
            (Some(s), Some(flusher)) if f.open && s == segment && !self.dir_dirty => {
                flusher.shared.published.store(self.written, std::sync::atomic::Ordering::Release);
            }
            _ => f.open = false,
        }
    }

    /// A flush covering everything written so far has completed or begun.
    fn clear_unsynced(&mut self) {
        self.unsynced.clear();
        self.unsynced_bytes = 0;
        self.dir_dirty = false;
    }

    /// An earlier sync failed: nothing more is made durable (see `poisoned`).
    fn check_poisoned(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(why) => Err(StorageError::Io(format!(
                "an earlier sync failed ({why}); nothing is made durable until the node restarts"
            ))),
            None => Ok(()),
        }
    }

    /// A sync failed: no later sync may succeed (see `poisoned`).
    fn poison(&mut self, why: String) -> StorageError {
        tracing::error!(
            event = "hydfs_sync_failed",
            error = %why,
            "{why}: this node makes no more writes durable (and so acknowledges none) until it restarts"
        );
        self.poisoned = Some(why.clone());
        StorageError::Io(why)
    }

    /// Compacts at most one sealed segment at least half dead: copies what is still needed to
    /// the end of the log, syncs the copies, then removes the segment and syncs the directory.
    fn compact(&mut self) -> Result<(), StorageError> {
        let active = self.segments.last_key_value().map(|(&n, _)| n);
        let victim = self
            .segments
            .iter()
            .filter(|(n, s)| {
                Some(**n) != active && !self.retiring.contains(n) && !s.damaged && s.dead * 2 >= s.len
            })
            .max_by_key(|(_, s)| s.dead)
            .map(|(&n, _)| n);
        let Some(victim) = victim else { return Ok(()) };
        let started = std::time::Instant::now();
        let path = self.segment_path(victim);
        let len = self.segments[&victim].len;
        // The records still needed, in their order: live puts and the tombstones an older
        // segment needs (their relative order does not matter: each block has one live record,
        // and a needed tombstone's block is not live).
        let mut at = 0u64;
        let mut h = [0u8; HEADER as usize];
        let mut copied = 0u64;
        let mut unreadable = None;
        while at + HEADER <= len {
            let segment = &self.segments[&victim];
            if let Err(e) = segment.file.read_exact_at(&mut h, at) {
                unreadable = Some(e.to_string());
                break;
            }
            let Some(header) = Header::decode(&h) else {
                unreadable = Some(format!("no valid record header at byte {at}"));
                break;
            };
            let bytes = HEADER + u64::from(header.len);
            let loc = Loc { segment: victim, at, len: header.len };
            let needed = match header.kind {
                KIND_PUT => self.blocks.get(&header.blob) == Some(&loc),
                KIND_PAD => false,
                _ => {
                    !self.blocks.contains_key(&header.blob)
                        && self.segments.range(..victim).any(|(_, s)| s.puts.contains(&header.blob))
                }
            };
            if needed {
                let mut data = vec![0u8; header.len as usize];
                if let Err(e) = segment.file.read_exact_at(&mut data, at + HEADER) {
                    unreadable = Some(e.to_string());
                    break;
                }
                // Through the page cache: a compaction runs inside a sync on the node's task,
                // where tens of device writes of a large segment's blocks would stall it.
                let moved = self.append_record(&h, &data, header.blob, header.len, Via::PageCache)?;
                if header.kind == KIND_PUT {
                    self.segments.get_mut(&moved.segment).expect("appended").puts.insert(header.blob);
                    self.blocks.insert(header.blob, moved);
                } else {
                    self.segments.get_mut(&moved.segment).expect("appended").dead += bytes;
                }
                copied += bytes;
            }
            at += bytes;
        }
        // Damaged since it was opened, with live blocks still in it: it stays, and is never
        // chosen again (reads of those blocks fail and HyDFS fetches them from replicas).
        // (What could not be read may be a tombstone an older segment still needs, too.)
        if let Some(why) = unreadable {
            warn!(
                event = "hydfs_segment_damaged",
                segment = %path.display(),
                "segment {} cannot be compacted: {why}; it is kept as it is",
                path.display()
            );
            self.segments.get_mut(&victim).expect("victim").damaged = true;
            return Ok(());
        }
        // The segment goes once the copies are durable: now, or at the sync that sees the
        // background flush of a large copy end.
        self.retiring.push(victim);
        debug!(segment = %path.display(), copied, of = len, ms = started.elapsed().as_millis() as u64, "compacting a segment");
        if self.start_sync()? {
            self.remove_retired()?;
        }
        Ok(())
    }

    /// Removes the compacted segments whose copies the last completed sync made durable.
    fn remove_retired(&mut self) -> Result<(), StorageError> {
        if self.retiring.is_empty() {
            return Ok(());
        }
        // A segment leaves the map (and its puts stop counting for tombstones) only once it
        // is gone from the directory; one that cannot be removed stays retiring.
        while let Some(&victim) = self.retiring.first() {
            debug_assert!(
                self.blocks.values().all(|l| l.segment != victim),
                "no live block stays in a compacted segment"
            );
            let path = self.segment_path(victim);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove compacted segment", &path, &e)),
            }
            self.retiring.remove(0);
            self.read_ahead.forget(victim);
            self.segments.remove(&victim);
        }
        // Until the removals are durable a crash may bring the segments back, with tombstones
        // newer ones no longer carry: a failure here is a failed sync.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| {
            let why = format!("cannot sync {}: {e}", self.dir.display());
            self.poison(why)
        })?;
        self.dir_dirty = false;
        Ok(())
    }
}

impl Drop for FileStorage {
    /// Waits for the writes behind still queued: a storage opened on the same directory next
    /// must never see one land after it has read the segments.
    fn drop(&mut self) {
        let _ = self.wait_behind();
    }
}

impl Storage for FileStorage {
    fn put(&mut self, blob: BlobId, data: &[u8]) -> Result<(), StorageError> {
        self.put_with_crc(blob, data, crc32c::crc32c(data))
    }

    fn put_with_crc(&mut self, blob: BlobId, data: &[u8], crc: u32) -> Result<(), StorageError> {
        let loc = self.append(KIND_PUT, blob, data, crc)?;
        self.written += 1;
        self.publish(loc.segment);
        self.segments.get_mut(&loc.segment).expect("appended").puts.insert(blob);
        if let Some(old) = self.blocks.insert(blob, loc) {
            self.kill(old);
        }
        Ok(())
    }

    fn read(&mut self, blob: BlobId) -> Result<Vec<u8>, StorageError> {
        let loc = *self.blocks.get(&blob).ok_or(StorageError::Missing(blob))?;
        self.read_record(loc, blob).map(|(data, _)| data)
    }

    fn read_checked(&mut self, blob: BlobId) -> Result<(Vec<u8>, Option<u32>), StorageError> {
        let loc = *self.blocks.get(&blob).ok_or(StorageError::Missing(blob))?;
        self.read_record(loc, blob).map(|(data, crc)| (data, Some(crc)))
    }

    fn delete(&mut self, blob: BlobId) -> Result<(), StorageError> {
        if !self.blocks.contains_key(&blob) {
            return Ok(());
        }
        let loc = self.append(KIND_DELETE, blob, &[], crc32c::crc32c(&[]))?;
        self.written += 1;
        self.publish(loc.segment);
        self.segments.get_mut(&loc.segment).expect("appended").dead += loc.record_bytes();
        if let Some(old) = self.blocks.remove(&blob) {
            self.kill(old);
        }
        Ok(())
    }

    /// The tombstones of every live block named, in one write: a node removes the index blocks
    /// a snapshot replaced (about a thousand at a time) with one system call, not one each. All
    /// or none: a failed write changes nothing (the segment is cut back to its old length).
    fn delete_many(&mut self, blobs: &[BlobId]) -> Result<(), StorageError> {
        let mut live: Vec<BlobId> = blobs.iter().copied().filter(|b| self.blocks.contains_key(b)).collect();
        live.sort_unstable();
        live.dedup();
        let Some(&first) = live.first() else { return Ok(()) };
        let no_data = crc32c::crc32c(&[]);
        let mut tombstones = Vec::with_capacity(live.len() * HEADER as usize);
        for &blob in &live {
            tombstones
                .extend_from_slice(&Header { kind: KIND_DELETE, blob, len: 0, data_crc: no_data }.encode());
        }
        // Whole records back to back, written as one record's header with no data.
        let loc = self.append_record(&tombstones, &[], first, 0, Via::PageCache)?;
        self.written += live.len() as u64;
        self.publish(loc.segment);
        self.segments.get_mut(&loc.segment).expect("appended").dead += tombstones.len() as u64;
        for blob in live {
            if let Some(old) = self.blocks.remove(&blob) {
                self.kill(old);
            }
        }
        Ok(())
    }

    /// Hands what was written since the last flush to the flusher thread, or notes it as
    /// wanted after the flush under way (see [`FileStorage::durable_mark`]).
    fn flush_behind(&mut self) -> Result<u64, StorageError> {
        self.check_poisoned()?;
        self.finish_flush(false)?;
        let mark = self.written;
        if self.unsynced.is_empty() && !self.dir_dirty {
            // Everything written is in the flush under way, or durable already.
            return Ok(mark);
        }
        match self.in_flight {
            None => self.start_flush()?,
            Some(_) => self.wanted = self.wanted.max(mark),
        }
        Ok(mark)
    }

    /// Takes in a flush that ended, and begins the one a `flush_behind` left waiting.
    fn durable_mark(&mut self) -> Result<u64, StorageError> {
        self.check_poisoned()?;
        self.finish_flush(false)?;
        if self.in_flight.is_none() && self.wanted > self.durable {
            if self.unsynced.is_empty() && !self.dir_dirty {
                self.durable = self.written;
            } else {
                self.start_flush()?;
            }
        }
        debug_assert!(
            self.in_flight.is_some()
                || !self.unsynced.is_empty()
                || self.dir_dirty
                || self.durable == self.written,
            "with nothing unsynced and no flush under way, everything written is durable"
        );
        Ok(self.durable)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.check_poisoned()?;
        // A flush under way covers everything written before it started; until it ends,
        // nothing written since can be reported durable either. A small one ends within a
        // disk flush and is waited for; a large one is not (the node goes on meanwhile).
        if let Some(f) = self.in_flight {
            self.finish_flush(f.bytes <= BACKGROUND_SYNC_ABOVE)?;
            if self.in_flight.is_some() {
                return Err(StorageError::InProgress);
            }
        }
        if self.unsynced.is_empty() && !self.dir_dirty {
            self.durable = self.written;
            return Ok(());
        }
        let started = std::time::Instant::now();
        let bytes = self.unsynced_bytes;
        if !self.start_sync()? {
            return Err(StorageError::InProgress);
        }
        let took = started.elapsed();
        if took >= SLOW_SYNC {
            warn!(
                event = "slow_sync",
                ms = took.as_millis() as u64,
                bytes,
                "a sync of {bytes} bytes took {} ms: the disk is slow, and this node waited for it",
                took.as_millis()
            );
        }
        // Compaction is housekeeping: what was asked is durable whatever it meets.
        if let Err(e) = self.compact() {
            warn!(event = "hydfs_compaction_failed", error = %e, "could not compact a block segment: {e}");
        }
        Ok(())
    }

    fn list(&mut self) -> Result<Vec<BlobId>, StorageError> {
        Ok(self.blocks.keys().copied().collect())
    }

    fn wipe(&mut self) -> Result<(), StorageError> {
        // No write behind lands in a segment after it is gone (whether it failed no longer
        // matters: its segment goes).
        let _ = self.wait_behind();
        // Whatever happens below, directory entries may have changed.
        self.dir_dirty = true;
        self.read_ahead.clear();
        self.segments.clear();
        self.blocks.clear();
        self.unsynced.clear();
        self.unsynced_bytes = 0;
        self.retiring.clear();
        // A flush under way ends on its own; a new flusher starts with nothing failed.
        self.flusher = None;
        self.in_flight = None;
        self.wanted = 0;
        self.poisoned = None;
        crate::private::dir(&self.dir).map_err(|e| io_err("create", &self.dir, &e))?;
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err("list", &self.dir, &e))?;
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
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(self.blocks(), fs::Permissions::from_mode(0o755));
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

    fn sync(s: &mut FileStorage) {
        s.sync_until_done().unwrap();
    }

    fn listed(s: &mut FileStorage) -> Vec<BlobId> {
        let mut v = s.list().unwrap();
        v.sort_unstable();
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
    fn the_directory_is_0700_and_every_segment_0600() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let t = TempDir::new("modes");
        let mut s = FileStorage::open_with(&t.blocks(), 64).unwrap();
        assert_eq!(mode(&t.blocks()), 0o700);
        s.put(1, b"private, in a segment of its own").unwrap();
        s.put(2, b"private too, in the next one").unwrap();
        let segments = names(&t.blocks());
        assert_eq!(segments, ["0000000000000000.seg", "0000000000000001.seg"]);
        for name in segments {
            assert_eq!(mode(&t.blocks().join(name)), 0o600);
        }
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

    /// A block read back comes with the CRC32C the storage checked it against: the one given
    /// when it was put (small, and large through direct I/O), and reopening keeps it.
    #[test]
    fn a_block_is_read_with_the_crc_it_was_put_with() {
        let t = TempDir::new("crc");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        let big: Vec<u8> = (0..(1 << 20) + 5).map(|i| (i % 253) as u8).collect();
        for (blob, data) in [(1, b"a small block".to_vec()), (2, big.clone())] {
            s.put_with_crc(blob, &data, crc32c::crc32c(&data)).unwrap();
        }
        sync(&mut s);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        for (blob, data) in [(1, b"a small block".to_vec()), (2, big)] {
            let crc = crc32c::crc32c(&data);
            assert_eq!(s.read_checked(blob).unwrap(), (data, Some(crc)), "block {blob}");
        }
    }

    #[test]
    fn round_trip() {
        let t = TempDir::new("rt");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.wipe().unwrap();
        sync(&mut s);
        let big = vec![0xabu8; 1 << 20];
        s.put(1, b"hello").unwrap();
        s.put(0x1234_5678_9abc_def0, &big).unwrap();
        s.put(3, b"").unwrap();
        assert_eq!(names(&t.blocks()), ["0000000000000000.seg"], "one segment holds them all");
        assert_eq!(s.read(1).unwrap(), b"hello");
        assert_eq!(s.read(0x1234_5678_9abc_def0).unwrap(), big);
        assert_eq!(s.read(3).unwrap(), b"");
        assert_eq!(listed(&mut s), [1, 3, 0x1234_5678_9abc_def0]);
        assert!(!s.unsynced.is_empty());
        s.sync().unwrap();
        assert!(s.unsynced.is_empty() && !s.dir_dirty);
        // A replaced block reads back its new bytes.
        s.put(1, b"world!").unwrap();
        assert_eq!(s.read(1).unwrap(), b"world!");
        s.delete(1).unwrap();
        assert_eq!(s.read(1), Err(StorageError::Missing(1)));
        // Deleting a missing block is fine, and writes nothing.
        sync(&mut s);
        s.delete(1).unwrap();
        s.delete(77).unwrap();
        assert!(s.unsynced.is_empty());
        // Nothing changed: sync is a no-op (and still succeeds).
        s.sync().unwrap();
        s.wipe().unwrap();
        assert!(names(&t.blocks()).is_empty());
        assert!(s.dir_dirty);
        sync(&mut s);
        assert_eq!(s.read(0x1234_5678_9abc_def0), Err(StorageError::Missing(0x1234_5678_9abc_def0)));
        assert!(listed(&mut s).is_empty());
    }

    #[test]
    fn a_reopened_log_holds_the_newest_version_of_every_block_and_no_deleted_one() {
        let t = TempDir::new("reopen");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.put(1, b"one").unwrap();
        s.put(2, b"two").unwrap();
        s.put(1, b"one, again").unwrap();
        s.delete(2).unwrap();
        s.put(3, b"three").unwrap();
        sync(&mut s);
        drop(s);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(listed(&mut s), [1, 3]);
        assert_eq!(s.read(1).unwrap(), b"one, again");
        assert_eq!(s.read(2), Err(StorageError::Missing(2)));
        // Appends go on after what was there.
        s.put(2, b"two, back").unwrap();
        sync(&mut s);
        drop(s);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(s.read(2).unwrap(), b"two, back");
        assert_eq!(listed(&mut s), [1, 2, 3]);
    }

    #[test]
    fn many_deletes_are_one_write_of_their_tombstones_and_hold_across_a_reopen() {
        let t = TempDir::new("delmany");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        for blob in 1..=6u64 {
            s.put(blob, format!("block {blob}").as_bytes()).unwrap();
        }
        sync(&mut s);
        let active = *s.segments.keys().next_back().expect("a segment");
        let (end, written) = (s.segments[&active].len, s.written);
        // A block named twice, one never stored and one already gone cost nothing more.
        s.delete(6).unwrap();
        let end = end + HEADER;
        let writes = s.record_writes;
        s.delete_many(&[4, 2, 9, 2, 5, 6]).unwrap();
        assert_eq!(s.record_writes, writes + 1, "one write for all the tombstones");
        assert_eq!(s.segments[&active].len, end + 3 * HEADER, "a tombstone each for 2, 4 and 5");
        assert_eq!(s.written, written + 1 + 3, "one mark per removed block");
        assert_eq!(listed(&mut s), [1, 3]);
        assert_eq!(s.read(4), Err(StorageError::Missing(4)));
        s.delete_many(&[]).unwrap();
        s.delete_many(&[4, 9]).unwrap();
        assert_eq!(s.record_writes, writes + 1, "nothing left to remove, nothing written");
        assert_eq!(s.segments[&active].len, end + 3 * HEADER);
        sync(&mut s);
        drop(s);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(listed(&mut s), [1, 3]);
        assert_eq!(s.read(3).unwrap(), b"block 3");
        assert_eq!(s.read(5), Err(StorageError::Missing(5)));
    }

    #[test]
    fn a_torn_write_at_the_end_is_cut_off_and_never_read() {
        let t = TempDir::new("torn");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.put(4, b"complete").unwrap();
        sync(&mut s);
        let path = s.segment_path(0);
        let whole = s.segments[&0].len;
        drop(s);
        // A crash mid-append: a whole header whose data never came, then half a header.
        let mut torn = Header { kind: KIND_PUT, blob: 5, len: 1000, data_crc: 0 }.encode().to_vec();
        torn.extend_from_slice(&[9u8; 10]);
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&torn, whole).unwrap();
        drop(f);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(listed(&mut s), [4]);
        assert_eq!(fs::metadata(&path).unwrap().len(), whole, "the torn end is cut off");
        // Zeros where a record should be (a file extended but never written) end the scan too.
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        use std::io::Write;
        f.write_all(&[0u8; 100]).unwrap();
        drop(f);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(s.read(4).unwrap(), b"complete");
        s.put(6, b"after the cut").unwrap();
        sync(&mut s);
        drop(s);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(listed(&mut s), [4, 6]);
        assert_eq!(s.read(6).unwrap(), b"after the cut");
    }

    #[test]
    fn a_block_whose_bytes_rotted_is_an_error_naming_the_segment_never_data() {
        let t = TempDir::new("rot");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.put(5, b"precious bytes").unwrap();
        s.put(6, b"neighbour").unwrap();
        sync(&mut s);
        let at = s.blocks[&5].at + HEADER + 3;
        s.segments[&0].file.write_all_at(b"X", at).unwrap();
        let err = s.read(5).unwrap_err();
        let StorageError::Io(msg) = err else { panic!("expected Io, got {err:?}") };
        assert!(msg.contains("0000000000000000.seg") && msg.contains("checksum"), "{msg}");
        assert_eq!(s.read(6).unwrap(), b"neighbour");
        // Reopened, the rotten block is still listed (its header is whole) and still refused.
        drop(s);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(listed(&mut s), [5, 6]);
        assert!(matches!(s.read(5), Err(StorageError::Io(_))));
    }

    #[test]
    fn damage_in_an_earlier_segment_loses_only_what_follows_it_there() {
        let t = TempDir::new("damage");
        let mut s = FileStorage::open_with(&t.blocks(), 140).unwrap();
        s.put(1, &[1u8; 40]).unwrap();
        s.put(2, &[2u8; 40]).unwrap();
        s.put(3, &[3u8; 40]).unwrap();
        s.put(4, &[4u8; 40]).unwrap();
        sync(&mut s);
        assert_eq!(s.blocks[&2].segment, 0);
        assert_eq!(s.blocks[&3].segment, 1);
        // Block 2's header in segment 0 is overwritten.
        let at = s.blocks[&2].at;
        s.segments[&0].file.write_all_at(&[0xffu8; 8], at).unwrap();
        drop(s);
        let mut s = FileStorage::open_with(&t.blocks(), 140).unwrap();
        assert_eq!(listed(&mut s), [1, 3, 4]);
        assert_eq!(s.read(4).unwrap(), [4u8; 40]);
        // New records go to the last segment, never after the damage.
        s.put(5, b"new").unwrap();
        assert_ne!(s.blocks[&5].segment, 0);
    }

    #[test]
    fn a_torn_new_version_of_a_block_leaves_the_older_one_in_place() {
        let t = TempDir::new("torncopy");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.put(7, b"the durable version").unwrap();
        sync(&mut s);
        // A crash left a newer record's header but not its bytes (as a compaction copy or a
        // rewrite the crash interrupted can).
        let header = Header { kind: KIND_PUT, blob: 7, len: 5, data_crc: crc32c::crc32c(b"newer") };
        let at = s.segments[&0].len;
        s.segments[&0].file.write_all_at(&header.encode(), at).unwrap();
        s.segments[&0].file.write_all_at(&[0u8; 5], at + HEADER).unwrap();
        drop(s);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(s.read(7).unwrap(), b"the durable version");
    }

    #[test]
    fn a_segment_found_damaged_while_compacting_is_kept_and_left_alone() {
        let t = TempDir::new("damagedcompact");
        let mut s = FileStorage::open_with(&t.blocks(), 300).unwrap();
        for b in 0..4u64 {
            s.put(b, &[b as u8; 100]).unwrap();
        }
        s.put(9, &[9u8; 100]).unwrap();
        sync(&mut s);
        assert_eq!(s.blocks[&0].segment, 0);
        // Block 1's header rots after open; then most of segment 0 dies.
        let at = s.blocks[&1].at;
        s.segments[&0].file.write_all_at(&[0xffu8; 8], at).unwrap();
        s.delete(0).unwrap();
        sync(&mut s);
        assert!(s.segments.contains_key(&0), "the damaged segment stays");
        assert!(s.segments[&0].damaged);
        assert_eq!(s.read(9).unwrap(), [9u8; 100]);
        // It is never chosen again.
        sync(&mut s);
        s.put(10, b"more").unwrap();
        sync(&mut s);
        assert!(s.segments.contains_key(&0));
    }

    /// A full disk, simulated without privileges: the next segment's name is a symlink to
    /// `/dev/full`, so its writes fail with ENOSPC as on a full filesystem.
    #[test]
    fn put_on_full_disk_fails_cleanly_and_keeps_the_old_block() {
        let t = TempDir::new("full");
        if !Path::new("/dev/full").exists() {
            eprintln!("skipped: no /dev/full");
            return;
        }
        let mut s = FileStorage::open_with(&t.blocks(), 64).unwrap();
        s.put(3, b"old complete block").unwrap();
        sync(&mut s);
        std::os::unix::fs::symlink("/dev/full", s.segment_path(1)).unwrap();
        let err = s.put(3, &[7u8; 4096]).unwrap_err();
        let StorageError::Io(msg) = err else { panic!("expected Io, got {err:?}") };
        assert!(msg.contains(&*s.segment_path(1).to_string_lossy()), "{msg}");
        assert!(msg.contains("No space left on device"), "{msg}");
        assert_eq!(s.read(3).unwrap(), b"old complete block");
        let err = s.delete(3).unwrap_err();
        assert!(matches!(err, StorageError::Io(_)), "{err:?}");
        assert_eq!(s.read(3).unwrap(), b"old complete block", "a refused delete deletes nothing");
        assert!(Path::new("/dev/full").exists());
    }

    #[test]
    fn many_bytes_are_flushed_in_the_background() {
        let t = TempDir::new("many");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        let block = vec![3u8; 1 << 20];
        for b in 0..(BACKGROUND_SYNC_ABOVE >> 20) + 1 {
            s.put(b, &block).unwrap();
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
        assert!(s.unsynced.is_empty() && !s.dir_dirty && s.in_flight.is_none());
        assert_eq!(s.read(3).unwrap(), block);
    }

    /// Waits until `durable_mark` reaches `mark`; returns the first durable mark that does
    /// (with no later flush asked for, the one the flush covering `mark` reached).
    fn durable_by(s: &mut FileStorage, mark: u64) -> u64 {
        for _ in 0..10_000 {
            let durable = s.durable_mark().unwrap();
            if durable >= mark {
                return durable;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("mark {mark} never became durable");
    }

    #[test]
    fn a_flush_behind_ends_on_its_own_wakes_the_node_and_the_next_covers_what_came_during_it() {
        let t = TempDir::new("behind");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        // The flusher runs before the node sets its wake (as after a flush at open).
        s.put(9, b"before the wake").unwrap();
        let early = s.flush_behind().unwrap();
        durable_by(&mut s, early);
        let woken = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = woken.clone();
        s.set_flush_notifier(Arc::new(move || {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        s.put(1, b"one").unwrap();
        let first = s.flush_behind().unwrap();
        assert!(s.unsynced.is_empty(), "handed to the flusher");
        // Written while the first flush may still run: a second mark, beyond the first.
        s.put(2, b"two").unwrap();
        let second = s.flush_behind().unwrap();
        assert!(second > first);
        durable_by(&mut s, first);
        durable_by(&mut s, second);
        assert!(woken.load(std::sync::atomic::Ordering::SeqCst) >= 1, "each flush wakes the node");
        assert!(s.in_flight.is_none() && s.unsynced.is_empty());
        // Nothing new: the mark is the one already durable.
        assert_eq!(s.flush_behind().unwrap(), second);
        assert_eq!(s.durable_mark().unwrap(), second);
        // A sync after a flush behind waits for it and covers the rest.
        s.put(3, b"three").unwrap();
        s.flush_behind().unwrap();
        s.put(4, b"four").unwrap();
        s.sync().unwrap();
        assert!(s.in_flight.is_none() && s.unsynced.is_empty());
        assert_eq!(s.durable_mark().unwrap(), s.written);
        drop(s);
        let mut back = FileStorage::open(&t.blocks()).unwrap();
        for (b, data) in [(1, &b"one"[..]), (2, b"two"), (3, b"three"), (4, b"four")] {
            assert_eq!(back.read(b).unwrap(), data);
        }
    }

    /// Writes block `first` (id, bytes) and hands a flush over while the flusher is held, then
    /// writes the blocks of `after` and asks for a flush again before the flusher may begin:
    /// the marks of the two flushes asked for.
    fn hand_over_held(
        s: &mut FileStorage,
        shared: &FlushShared,
        first: (u64, usize),
        after: &[(u64, usize)],
    ) -> (u64, u64) {
        let held = shared.hold.lock().unwrap();
        s.put(first.0, &vec![first.0 as u8; first.1]).unwrap();
        let handed = s.flush_behind().unwrap();
        for &(blob, len) in after {
            s.put(blob, &vec![blob as u8; len]).unwrap();
        }
        let later = s.flush_behind().unwrap();
        drop(held);
        (handed, later)
    }

    #[test]
    fn a_flush_covers_writes_to_its_segment_made_before_it_reads_the_mark_and_no_others() {
        let t = TempDir::new("late");
        // Segments of 300 bytes: a record of 24 + 100 bytes does not fit after 260 bytes.
        let mut s = FileStorage::open_with(&t.blocks(), 300).unwrap();
        s.put(1, &[1; 100]).unwrap();
        let first = s.flush_behind().unwrap();
        durable_by(&mut s, first);
        let shared = s.flusher.as_ref().unwrap().shared.clone();
        let sent = |s: &FileStorage| s.flusher.as_ref().unwrap().sent;

        // Handed over, held before it begins: the writes meanwhile go to the segment it syncs.
        let (handed, later) = hand_over_held(&mut s, &shared, (2, 10), &[(3, 10), (4, 10)]);
        assert!(later > handed);
        durable_by(&mut s, later);
        assert_eq!(sent(&s), 2, "the flush handed over covered the writes made before it began");
        assert!(s.unsynced.is_empty() && s.in_flight.is_none());

        // A write to a new segment (and every one after it) is not covered: a flush follows.
        let (handed, later) = hand_over_held(&mut s, &shared, (5, 10), &[(6, 100), (7, 10)]);
        assert_eq!(later, handed + 2);
        let reached = durable_by(&mut s, handed);
        assert_eq!(reached, handed, "a write to another segment is not covered by the flush");
        durable_by(&mut s, later);
        assert_eq!(sent(&s), 4);

        // A write to the segment the flush syncs, made after the flusher read the mark, is not
        // covered: it stays unsynced, for the next flush.
        let held_sync = shared.hold_sync.lock().unwrap();
        s.put(8, &[8; 10]).unwrap();
        let handed = s.flush_behind().unwrap();
        while shared.loaded.load(std::sync::atomic::Ordering::SeqCst) < sent(&s) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        s.put(9, &[9; 10]).unwrap();
        drop(held_sync);
        let reached = durable_by(&mut s, handed);
        assert_eq!(reached, handed, "a write after the flusher read the mark is not covered");
        assert!(!s.unsynced.is_empty(), "the later write's segment still needs a sync");
        let last = s.flush_behind().unwrap();
        durable_by(&mut s, last);
        assert_eq!(sent(&s), 6);
        drop(s);
        let mut back = FileStorage::open_with(&t.blocks(), 300).unwrap();
        for b in 1..=9u64 {
            assert_eq!(back.read(b).unwrap()[0], b as u8);
        }
    }

    /// A large block of `len` bytes, different for each `seed`.
    fn large(seed: u8, len: u32) -> Vec<u8> {
        (0..len).map(|j| (j % 251) as u8 ^ seed).collect()
    }

    /// A storage in a fresh directory named by `tag` whose blocks of 150 bytes or more go
    /// direct, holding `large(0, 300_000)` as block 0, synced; `None` (with a note) where the
    /// file system refuses direct I/O, so that nothing is written behind.
    fn writing_behind(tag: &str) -> Option<(TempDir, FileStorage)> {
        writing_behind_in(tag, SEGMENT_BYTES)
    }

    /// [`writing_behind`] with segments of `segment_bytes`.
    fn writing_behind_in(tag: &str, segment_bytes: u64) -> Option<(TempDir, FileStorage)> {
        let t = TempDir::new(tag);
        let mut s = FileStorage::open_with(&t.blocks(), segment_bytes).unwrap();
        s.direct_at_least = 150;
        s.put(0, &large(0, 300_000)).unwrap();
        sync(&mut s);
        assert_eq!(s.read(0).unwrap(), large(0, 300_000));
        if s.segments.values().next().expect("a segment").direct.is_none() {
            eprintln!("no direct I/O on this file system: nothing is written behind");
            return None;
        }
        Some((t, s))
    }

    /// The flusher thread held (from another thread: a guard stays on the thread that took it)
    /// until [`Held::let_go_after`].
    struct Held {
        let_go: std::sync::mpsc::Sender<()>,
        holder: std::thread::JoinHandle<()>,
    }

    impl Held {
        /// Holds the flusher of `shared` before it begins its next job; returns once it does.
        fn hold(shared: &Arc<FlushShared>) -> Held {
            let (held_tx, held_rx) = std::sync::mpsc::channel();
            let (let_go, let_go_rx) = std::sync::mpsc::channel::<()>();
            let shared = shared.clone();
            let holder = std::thread::spawn(move || {
                let held = shared.hold.lock().unwrap();
                held_tx.send(()).unwrap();
                let _ = let_go_rx.recv_timeout(std::time::Duration::from_secs(30));
                drop(held);
            });
            held_rx.recv().unwrap();
            Held { let_go, holder }
        }

        /// Lets the flusher go `ms` milliseconds from now, on another thread; returns at once.
        fn let_go_after(self, ms: u64) -> std::thread::JoinHandle<()> {
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                let _ = self.let_go.send(());
                self.holder.join().unwrap();
            })
        }
    }

    /// A large put returns before its record is on disk: the flusher thread writes it behind,
    /// at most `WRITES_BEHIND` wait at once (a put beyond them waits), a read waits for the
    /// write, and the block is durable only once a flush after it completes.
    #[test]
    fn large_puts_are_written_behind_and_read_and_made_durable_only_after_their_writes() {
        let Some((t, mut s)) = writing_behind("write-behind") else { return };
        let shared = s.flusher.as_ref().expect("the first large put started the flusher").shared.clone();
        let durable = s.durable_mark().unwrap();
        let waited = |asked: std::time::Instant| asked.elapsed() >= std::time::Duration::from_millis(100);

        // Held: puts return with nothing of theirs on disk, and nothing of them is durable.
        let held = Held::hold(&shared);
        let behind = WRITES_BEHIND as u8;
        for b in 1..=behind {
            s.put(u64::from(b), &large(b, 300_000)).unwrap();
        }
        let first = s.blocks[&1];
        let on_disk = fs::metadata(s.segment_path(first.segment)).unwrap().len();
        assert!(
            on_disk <= first.at,
            "a put returned with its record on disk ({on_disk} bytes, record at {})",
            first.at
        );
        let mark = s.flush_behind().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            s.durable_mark().unwrap(),
            durable,
            "nothing written behind is durable before it is written"
        );
        // One put more waits for a write to be made.
        let asked = std::time::Instant::now();
        let released = held.let_go_after(100);
        s.put(u64::from(behind) + 1, &large(behind + 1, 300_000)).unwrap();
        assert!(waited(asked), "a put beyond WRITES_BEHIND waited for a write");
        released.join().unwrap();
        assert!(durable_by(&mut s, mark) >= mark);

        // Held again: a read of a block not yet written waits for its write, and only such a
        // read (the holder lets go after 30 s at the latest).
        let held = Held::hold(&shared);
        let late = u64::from(behind) + 2;
        s.put(late, &large(late as u8, 300_000)).unwrap();
        s.put(100, b"small, after the write behind").unwrap();
        let asked = std::time::Instant::now();
        assert_eq!(s.read(1).unwrap(), large(1, 300_000));
        assert_eq!(s.read(100).unwrap(), b"small, after the write behind");
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(10),
            "a read of a block written waits for nothing"
        );
        let asked = std::time::Instant::now();
        let released = held.let_go_after(100);
        assert_eq!(s.read(late).unwrap(), large(late as u8, 300_000), "the read waited for the write");
        assert!(waited(asked), "the read waited for the write");
        released.join().unwrap();

        for b in 1..=late {
            assert_eq!(s.read(b).unwrap(), large(b as u8, 300_000), "block {b}");
        }
        assert_eq!(s.read(100).unwrap(), b"small, after the write behind");
        let last = s.flush_behind().unwrap();
        durable_by(&mut s, last);
        drop(s);
        let mut back = FileStorage::open(&t.blocks()).unwrap();
        for b in 0..=late {
            assert_eq!(back.read(b).unwrap(), large(b as u8, 300_000), "block {b} after a reopen");
        }
    }

    /// Where blocks cannot be allocated ahead, a large put writes its record itself (so that a
    /// full disk fails that put alone): it is on disk when the put returns, flusher held or not.
    #[test]
    fn without_fallocate_a_large_put_writes_its_record_before_it_returns() {
        let Some((_t, mut s)) = writing_behind("write-behind-no-fallocate") else { return };
        let shared = s.flusher.as_ref().unwrap().shared.clone();
        let held = Held::hold(&shared);
        s.no_reserve = true;
        s.put(1, &large(1, 300_000)).unwrap();
        let loc = s.blocks[&1];
        let on_disk = fs::metadata(s.segment_path(loc.segment)).unwrap().len();
        assert!(on_disk >= loc.at + loc.record_bytes(), "the record is on disk ({on_disk} bytes)");
        assert_eq!(s.read(1).unwrap(), large(1, 300_000));
        held.let_go_after(0).join().unwrap();
    }

    /// A write behind whose job is dropped unmade (its thread gone) counts as made and failed:
    /// nothing waits for it, and nothing after it is made durable.
    #[test]
    fn a_write_behind_dropped_unmade_fails_instead_of_being_waited_for() {
        let Some((_t, mut s)) = writing_behind("write-behind-dropped") else { return };
        let flusher = s.flusher.as_mut().unwrap();
        flusher.writes_sent += 1;
        drop(Pending { shared: flusher.shared.clone(), blob: 7, made: false });
        let e = s.wait_behind().unwrap_err();
        assert!(e.contains("stopped before writing block 0000000000000007"), "{e}");
        s.put(2, b"small").unwrap();
        assert!(s.sync().is_err(), "nothing is made durable after it");
    }

    /// A large put on a full disk is refused at once, with its cause, and leaves the storage
    /// as it was: the older version of its block stays, and later puts and syncs succeed.
    #[test]
    fn a_large_put_that_finds_no_room_is_refused_at_once_and_poisons_nothing() {
        // Segments of 512 KiB: the second large put needs a segment whose blocks are not
        // allocated yet.
        let Some((t, mut s)) = writing_behind_in("write-behind-full", 512 << 10) else { return };
        let held = |s: &FileStorage| s.segments.values().map(|g| g.len).sum::<u64>();
        let before = held(&s);
        s.no_room = Some(0);
        let e = s.put(0, &large(9, 300_000)).unwrap_err();
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert_eq!(held(&s), before, "the refused put took no room");
        s.no_room = None;
        assert_eq!(s.read(0).unwrap(), large(0, 300_000), "the older version stays");
        s.put(2, &large(2, 300_000)).unwrap();
        sync(&mut s);
        drop(s);
        let mut back = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(back.read(0).unwrap(), large(0, 300_000));
        assert_eq!(back.read(2).unwrap(), large(2, 300_000));
    }

    /// A segment's blocks are allocated for all of it at its first large put, while no write
    /// behind is in flight on it (allocating record by record waited for the previous write
    /// every time): the later large puts into it need no more room.
    #[test]
    fn a_segment_is_allocated_whole_at_its_first_large_put() {
        let Some((_t, mut s)) = writing_behind("write-behind-allocated") else { return };
        let n = s.blocks[&0].segment;
        if s.segments[&n].reserved == 0 {
            return eprintln!("no fallocate on this file system: nothing is allocated ahead");
        }
        assert!(s.segments[&n].reserved >= SEGMENT_BYTES, "{} bytes allocated", s.segments[&n].reserved);
        use std::os::unix::fs::MetadataExt;
        let blocks = fs::metadata(s.segment_path(n)).unwrap().blocks() * 512;
        assert!(blocks >= SEGMENT_BYTES, "{blocks} bytes of blocks");
        s.no_room = Some(0);
        for b in 1..4 {
            s.put(b, &large(b as u8, 300_000)).unwrap();
            assert_eq!(s.blocks[&b].segment, n);
        }
        sync(&mut s);
        for b in 0..4 {
            assert_eq!(s.read(b).unwrap(), large(b as u8, 300_000));
        }
    }

    /// A disk without room for the rest of a segment still takes a large record that fits:
    /// the record's own blocks are allocated.
    #[test]
    fn without_room_for_the_rest_of_its_segment_a_large_put_allocates_its_own_blocks() {
        let t = TempDir::new("write-behind-little-room");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.direct_at_least = 150;
        s.no_room = Some(1 << 20);
        s.put(0, &large(0, 300_000)).unwrap();
        let loc = s.blocks[&0];
        if s.segments[&loc.segment].direct.is_none() {
            return eprintln!("no direct I/O on this file system: nothing is written behind");
        }
        let reserved = s.segments[&loc.segment].reserved;
        if reserved == 0 {
            return eprintln!("no fallocate on this file system: nothing is allocated ahead");
        }
        assert!(reserved >= loc.at + loc.record_bytes() && reserved < SEGMENT_BYTES, "{reserved}");
        assert!(s.segments[&loc.segment].short_of_room, "later puts allocate their records alone");
        s.put(1, &large(1, 300_000)).unwrap();
        s.no_room = Some(0);
        assert!(s.put(2, &large(2, 300_000)).is_err(), "no room is left for a third");
        sync(&mut s);
        assert_eq!(s.read(0).unwrap(), large(0, 300_000));
        assert_eq!(s.read(1).unwrap(), large(1, 300_000));
    }

    /// Cutting a segment back (after a failed write) frees the blocks allocated past the cut,
    /// so the next large put there allocates again (and a full disk refuses it).
    #[test]
    fn a_segment_cut_back_allocates_again() {
        let Some((_t, mut s)) = writing_behind("write-behind-cut") else { return };
        let n = s.blocks[&0].segment;
        if s.segments[&n].reserved == 0 {
            return eprintln!("no fallocate on this file system: nothing is allocated ahead");
        }
        s.wait_behind().unwrap();
        let len = s.segments[&n].len;
        s.segments.get_mut(&n).unwrap().cut(len).unwrap();
        assert_eq!(s.segments[&n].reserved, len);
        s.no_room = Some(0);
        assert!(s.put(1, &large(1, 300_000)).is_err(), "the blocks past the cut are gone");
        s.no_room = None;
        s.put(1, &large(1, 300_000)).unwrap();
        assert!(s.segments[&n].reserved >= SEGMENT_BYTES);
        sync(&mut s);
        assert_eq!(s.read(1).unwrap(), large(1, 300_000));
    }

    /// A write behind that fails fails the flush after it and every sync after that, and its
    /// block reads as an error, never as data.
    #[test]
    fn a_failed_write_behind_poisons_the_storage() {
        let Some((_t, mut s)) = writing_behind("write-behind-failed") else { return };
        let shared = s.flusher.as_ref().unwrap().shared.clone();
        shared.fail_writes.store(true, std::sync::atomic::Ordering::SeqCst);
        s.put(1, &large(1, 300_000)).unwrap();
        let mark = s.flush_behind().unwrap();
        let mut failed = None;
        for _ in 0..10_000 {
            match s.durable_mark() {
                Ok(d) => {
                    assert!(d < mark, "a block whose write failed is never durable");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let e = failed.expect("the failed write is reported");
        assert!(e.to_string().contains("planted by a test"), "{e}");
        assert!(s.read(1).is_err(), "a block whose write failed is not read as data");
        assert_eq!(s.read(0).unwrap(), large(0, 300_000));
        assert!(s.flush_behind().is_err() && s.sync().is_err(), "nothing is made durable after it");
    }

    #[test]
    fn a_failed_flush_behind_poisons_the_storage() {
        let t = TempDir::new("behind-failed");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.put(1, b"one").unwrap();
        // A flush that fails: the directory it must sync is gone (a disk error reaches the
        // flusher's result the same way).
        s.flusher = Some(s.spawn_flusher().unwrap());
        let files = Vec::new();
        let flusher = s.flusher.as_mut().unwrap();
        let number = flusher.sent + 1;
        let (mark, dir) = (s.written, Some(PathBuf::from("/nonexistent-dir")));
        flusher.jobs.send(Job::Flush(FlushJob { number, mark, files, dir })).unwrap();
        flusher.sent = number;
        s.in_flight = Some(InFlight { number, mark: s.written, bytes: 3, extends: None, open: false });
        s.unsynced.clear();
        let mut failed = None;
        for _ in 0..10_000 {
            match s.durable_mark() {
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let e = failed.expect("the failed flush is reported");
        assert!(e.to_string().contains("nonexistent-dir"), "{e}");
        assert!(s.flush_behind().is_err() && s.sync().is_err(), "nothing is made durable after it");
    }

    #[test]
    fn compaction_frees_dead_segments_and_keeps_every_live_block() {
        let t = TempDir::new("compact");
        let mut s = FileStorage::open_with(&t.blocks(), 1000).unwrap();
        for b in 0..100u64 {
            s.put(b, &[b as u8; 100]).unwrap();
            sync(&mut s);
        }
        let before = names(&t.blocks()).len();
        assert!(before >= 10, "{before} segments");
        for b in (0..100u64).filter(|b| b % 10 != 0) {
            s.delete(b).unwrap();
            sync(&mut s);
        }
        let after = names(&t.blocks()).len();
        assert!(after < before / 2, "{before} segments before, {after} after");
        for b in (0..100u64).step_by(10) {
            assert_eq!(s.read(b).unwrap(), [b as u8; 100]);
        }
        drop(s);
        let mut s = FileStorage::open_with(&t.blocks(), 1000).unwrap();
        assert_eq!(listed(&mut s), (0..100u64).step_by(10).collect::<Vec<_>>());
    }

    #[test]
    fn blocks_of_an_older_node_are_read_into_the_log() {
        let t = TempDir::new("convert");
        fs::create_dir_all(t.blocks()).unwrap();
        fs::write(t.blocks().join("0000000000000007"), b"kept one file per block").unwrap();
        fs::write(t.blocks().join("4000000000000001"), b"an index block").unwrap();
        fs::write(t.blocks().join("0000000000000009.tmp"), b"torn half-wri").unwrap();
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(listed(&mut s), [7, 0x4000_0000_0000_0001]);
        assert_eq!(s.read(7).unwrap(), b"kept one file per block");
        assert_eq!(names(&t.blocks()), ["0000000000000000.seg"]);
    }

    #[test]
    fn wipe_removes_everything_even_foreign_files() {
        let t = TempDir::new("wipe");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.put(2, b"kept until wipe").unwrap();
        fs::write(t.blocks().join("README"), b"foreign").unwrap();
        fs::create_dir(t.blocks().join("subdir")).unwrap();
        fs::write(t.blocks().join("subdir").join("x"), b"nested").unwrap();
        s.wipe().unwrap();
        assert!(names(&t.blocks()).is_empty());
        sync(&mut s);
        s.put(3, b"after the wipe").unwrap();
        sync(&mut s);
        drop(s);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(listed(&mut s), [3]);
        // Wipe also recreates a directory removed behind its back.
        fs::remove_dir_all(t.blocks()).unwrap();
        s.wipe().unwrap();
        assert!(t.blocks().is_dir());
    }

    #[test]
    fn small_records_are_written_over_zeros_written_ahead_and_the_zeros_survive_a_reopen() {
        let t = TempDir::new("ahead");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.put(1, b"first").unwrap();
        let path = s.segment_path(0);
        assert_eq!(fs::metadata(&path).unwrap().len(), s.segments[&0].len, "no zeros after one record");
        s.put(2, b"second").unwrap();
        sync(&mut s);
        let size = fs::metadata(&path).unwrap().len();
        let end = s.segments[&0].len;
        assert_eq!(size, end + ZEROED_AHEAD, "zeros follow the second record in a row");
        for b in 3..10 {
            s.put(b, &[b as u8; 1000]).unwrap();
        }
        sync(&mut s);
        assert_eq!(fs::metadata(&path).unwrap().len(), size, "small records go over the zeros");
        drop(s);
        // A crash or a restart: the zeros are the tail written ahead, not a torn write.
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(listed(&mut s), (1..10).collect::<Vec<_>>());
        assert_eq!(fs::metadata(&path).unwrap().len(), size, "the zeros are kept");
        assert_eq!(s.segments[&0].zeroed, size);
        s.put(10, b"after the reopen").unwrap();
        sync(&mut s);
        drop(s);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(s.read(10).unwrap(), b"after the reopen");
        assert_eq!(s.read(1).unwrap(), b"first");
    }

    #[test]
    fn a_record_left_past_a_gap_in_the_zeros_is_cut_off_never_taken() {
        // A crash may write back a later record's page and not an earlier one's: the scan stops
        // at the gap, and what follows it must go, or a later record written at the gap could
        // line up with it and bring a never-synced record back.
        let t = TempDir::new("gap");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.put(1, b"synced").unwrap();
        s.put(2, b"synced too").unwrap();
        sync(&mut s);
        let end = s.segments[&0].len;
        let path = s.segment_path(0);
        drop(s);
        assert!(fs::metadata(&path).unwrap().len() > end, "zeros were written ahead");
        let stray = Header { kind: KIND_PUT, blob: 7, len: 5, data_crc: crc32c::crc32c(b"stray") }.encode();
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&stray, end + 4096).unwrap();
        f.write_all_at(b"stray", end + 4096 + HEADER).unwrap();
        drop(f);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(listed(&mut s), [1, 2]);
        assert_eq!(fs::metadata(&path).unwrap().len(), end, "everything after the gap is cut off");
        // A sealed segment whose records end in zeros is whole, not damaged.
        let mut s = FileStorage::open_with(&t.blocks(), 200).unwrap();
        s.put(3, &[3u8; 150]).unwrap();
        s.put(4, &[4u8; 150]).unwrap();
        sync(&mut s);
        assert!(s.segments.len() >= 2, "the second record went to a new segment");
        drop(s);
        let mut s = FileStorage::open_with(&t.blocks(), 200).unwrap();
        assert_eq!(listed(&mut s), [1, 2, 3, 4]);
        assert!(s.segments.values().all(|g| g.dead == 0 && !g.damaged), "no segment is damaged");
    }

    /// Large blocks read in the order they were written are served from read-ahead, and
    /// blocks written or replaced after that are read as they are now, never as read ahead.
    #[test]
    fn sequential_large_reads_are_read_ahead_and_never_stale() {
        let t = TempDir::new("ahead");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.direct_at_least = 150;
        let block = |b: BlobId, round: u8| -> Vec<u8> {
            (0..300_000u32).map(|j| (j as u8) ^ (b as u8) ^ round).collect()
        };
        for b in 0..12 {
            s.put(b, &block(b, 0)).unwrap();
        }
        sync(&mut s);
        for b in 0..12 {
            assert_eq!(s.read(b).unwrap(), block(b, 0), "block {b}");
        }
        let direct = s.segments.values().next().expect("a segment").direct.is_some();
        if direct {
            assert!(s.read_ahead.served() >= 8, "served {} of 12 reads", s.read_ahead.served());
        }
        for b in 6..18 {
            s.put(b, &block(b, 1)).unwrap();
        }
        for round in 0..2 {
            for b in 0..18 {
                assert_eq!(s.read(b).unwrap(), block(b, u8::from(b >= 6)), "block {b}, pass {round}");
            }
        }
    }

    #[test]
    fn large_blocks_are_written_aligned_between_pad_records_and_read_back_after_a_reopen() {
        let t = TempDir::new("direct");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        let large = |seed: u8| -> Vec<u8> { (0..DIRECT_AT_LEAST + 1000).map(|i| (i as u8) ^ seed).collect() };
        s.put(1, b"small, so the next record starts unaligned").unwrap();
        s.put(2, &large(2)).unwrap();
        s.put(3, b"small again").unwrap();
        s.put(4, &large(4)).unwrap();
        let direct = s.segments.values().next().expect("a segment").direct.is_some();
        for b in [2, 4] {
            let at = s.blocks[&b].at;
            // Where the file system allows direct I/O (not tmpfs), large records are aligned.
            assert!(!direct || at.is_multiple_of(ALIGN), "block {b} at {at}");
        }
        sync(&mut s);
        drop(s);
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(listed(&mut s), vec![1, 2, 3, 4]);
        assert_eq!(s.read(2).unwrap(), large(2));
        assert_eq!(s.read(4).unwrap(), large(4));
        assert_eq!(s.read(3).unwrap(), b"small again");
        // A torn large write at the end (its data cut short) is cut off at the next open, and
        // the block keeps its older version.
        s.put(2, &large(9)).unwrap();
        let seg = *s.segments.keys().last().expect("a segment");
        let at = s.blocks[&2].at;
        drop(s);
        let path = t.blocks().join(segment_name(seg));
        File::options().write(true).open(&path).unwrap().set_len(at + HEADER + 100).unwrap();
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        assert_eq!(s.read(2).unwrap(), large(2), "the torn new version is not the block");
        assert_eq!(fs::metadata(&path).unwrap().len(), at, "the torn record is cut off");
        s.put(5, &large(5)).unwrap();
        sync(&mut s);
        assert_eq!(s.read(5).unwrap(), large(5));
    }

    #[test]
    fn a_record_of_a_kind_this_code_does_not_know_refuses_the_open_and_is_not_cut() {
        let t = TempDir::new("newer");
        let mut s = FileStorage::open(&t.blocks()).unwrap();
        s.put(1, b"kept").unwrap();
        sync(&mut s);
        let seg = *s.segments.keys().last().expect("a segment");
        let end = s.segments[&seg].len as usize;
        drop(s);
        let path = t.blocks().join(segment_name(seg));
        let before = fs::read(&path).unwrap()[..end].to_vec();
        let mut newer = Header { kind: 9, blob: 2, len: 0, data_crc: crc32c::crc32c(&[]) }.encode();
        newer[2] = VERSION + 1;
        let crc = crc32c::crc32c(&newer[..20]);
        newer[20..24].copy_from_slice(&crc.to_le_bytes());
        let mut after = before.clone();
        after.extend_from_slice(&newer);
        after.extend_from_slice(
            &Header { kind: KIND_PUT, blob: 3, len: 0, data_crc: crc32c::crc32c(&[]) }.encode(),
        );
        fs::write(&path, &after).unwrap();
        let e = FileStorage::open(&t.blocks()).unwrap_err().to_string();
        assert!(e.contains("does not know"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), after, "nothing was cut off");
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

    #[derive(Clone, Debug)]
    enum Op {
        Put(u8, u16),
        Delete(u8),
        Sync,
        Reopen,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            5 => (0u8..24, 0u16..300).prop_map(|(b, n)| Op::Put(b, n)),
            3 => (0u8..24).prop_map(Op::Delete),
            3 => Just(Op::Sync),
            1 => Just(Op::Reopen),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any sequence of puts, deletes, syncs (which compact) and reopens, with segments
        /// small enough to roll and compact often, leaves exactly the blocks a map would hold,
        /// each with its newest bytes.
        #[test]
        fn the_log_agrees_with_a_map(ops in proptest::collection::vec(op(), 1..200)) {
            let t = TempDir::new("model");
            // Blocks of 150 bytes and more go through direct I/O (aligned, between pad records).
            let open = |t: &TempDir| {
                let mut s = FileStorage::open_with(&t.blocks(), 700).unwrap();
                s.direct_at_least = 150;
                s
            };
            let mut s = open(&t);
            let mut model: BTreeMap<BlobId, Vec<u8>> = BTreeMap::new();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Put(b, n) => {
                        let data: Vec<u8> = (0..n).map(|j| (i as u16 ^ j) as u8).collect();
                        s.put(u64::from(b), &data).unwrap();
                        model.insert(u64::from(b), data);
                    }
                    Op::Delete(b) => {
                        s.delete(u64::from(b)).unwrap();
                        model.remove(&u64::from(b));
                    }
                    Op::Sync => sync(&mut s),
                    Op::Reopen => {
                        sync(&mut s);
                        drop(s);
                        s = open(&t);
                    }
                }
                proptest::prop_assert_eq!(listed(&mut s), model.keys().copied().collect::<Vec<_>>());
            }
            for (b, data) in &model {
                proptest::prop_assert_eq!(&s.read(*b).unwrap(), data);
            }
            drop(s);
            let mut s = open(&t);
            proptest::prop_assert_eq!(listed(&mut s), model.keys().copied().collect::<Vec<_>>());
            for (b, data) in &model {
                proptest::prop_assert_eq!(&s.read(*b).unwrap(), data);
            }
        }
    }
}
