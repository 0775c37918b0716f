//! HyDFS file commands on a real node: the part of each command that touches local files.
//!
//! The core never sees a local file. An upload (`create`, `append`) is described part by part
//! here (length, CRC32C and line ends of each chunk, computed off the node task) and then read part by part
//! through [`FileSource`] when a replica fetches it, so a file of any size passes through a
//! bounded amount of memory. A download (`get`, `getfromreplica`) arrives as in-order chunks that
//! [`Sink`] writes to a temporary file next to the target, renamed over it only when the whole
//! file has arrived: a failed `get` never leaves a partial file under the requested name.
//!
//! A download never writes through a link planted by someone else. Its temporary file has an
//! unguessable name and is created with `O_CREAT|O_EXCL` (`create_new`), which fails on any
//! existing name, a symbolic link (dangling or not) included, instead of following it: a taken
//! name is skipped for another. The end is a `rename(2)` over the target, which replaces
//! whatever is under the target's name (a symbolic link itself, never the file it points to).
//! A downloaded file, and its temporary file, are 0600 whatever the umask ([`crate::private`]):
//! `chmod` it to share it.
//!
//! Every whole-file transfer a user starts goes this way, with bounded memory: `get` and
//! `getfromreplica` ([`download`]), `create` and `append` ([`upload`]), and the operator programs
//! of `RainStorm` ([`download_file`], [`describe_hashed`]: uploaded, sized from their metadata
//! before they are fetched ([`file_len`]), fetched and hashed chunk by chunk). Only
//! `multiappend` reads its local files whole, and it refuses any over one chunk.

use crate::driver::{CommandReply, Input, NodeHandle};
use rainstorm_core::bulk::Bulk;
use rainstorm_core::command::FileCommand;
use rainstorm_core::hydfs::{
    ClientOp, FileName, HydfsError, OpOutput, PartMeta, PartSource, ReadFrom, UploadSource, WriteKind,
};
use rainstorm_core::NodeAddr;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Transfers at least this large show a progress bar when a terminal is attached.
pub const PROGRESS_MIN_BYTES: u64 = 8 << 20;

/// How far a transfer has come, shared with whoever draws a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    total: AtomicU64,
    /// Signalled once the total is known to be at least [`PROGRESS_MIN_BYTES`]: a reporter
    /// needs no timer of its own before that (most commands are small and end first).
    large: tokio::sync::Notify,
}

impl Progress {
    pub fn get(&self) -> (u64, u64) {
        (self.done.load(Ordering::Relaxed), self.total.load(Ordering::Relaxed))
    }

    /// Records the transfer's size (a download learns it with its first chunk, and again if
    /// the read starts over), and wakes [`Progress::large`]'s waiter if it is large.
    pub fn set_total(&self, total: u64) {
        let was = self.total.swap(total, Ordering::Relaxed);
        if total != was && total >= PROGRESS_MIN_BYTES {
            self.large.notify_one();
        }
    }

    /// Completes once the transfer is known to be large (at once if it already was).
    pub async fn large(&self) {
        self.large.notified().await
    }
}

/// A local file being uploaded, read at the offsets replicas ask for.
pub struct FileSource {
    file: File,
    path: PathBuf,
    progress: Arc<Progress>,
}

impl PartSource for FileSource {
    /// Reads with `pread` into fresh capacity rather than a zeroed buffer (zeroing a 1 MiB
    /// part cost a tenth of the uploading node's CPU).
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let fail = |why: String| format!("cannot read {} at offset {offset}: {why}", self.path.display());
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            match rustix::io::pread(&self.file, rustix::buffer::spare_capacity(&mut buf), at) {
                Ok(0) => {
                    return Err(fail(format!(
                        "it ends {} bytes in, not {len} (it changed while uploaded)",
                        buf.len()
                    )))
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(fail(std::io::Error::from(e).to_string())),
            }
        }
        buf.truncate(len);
        self.progress.done.fetch_max(offset + len as u64, Ordering::Relaxed);
        Ok(buf)
    }
}

/// The bytes of a small upload, read once when it was described and served from memory: the
/// part a replica is sent is the part that was described, with no second read of the file.
struct HeldSource {
    bytes: Vec<u8>,
    path: PathBuf,
    progress: Arc<Progress>,
}

impl PartSource for HeldSource {
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let span = usize::try_from(offset).ok().and_then(|at| self.bytes.get(at..at.checked_add(len)?));
        let Some(span) = span else {
            return Err(format!(
                "cannot read {} at offset {offset}: it was {} bytes when read, not {len} from there",
                self.path.display(),
                self.bytes.len()
            ));
        };
        self.progress.done.fetch_max(offset + len as u64, Ordering::Relaxed);
        Ok(span.to_vec())
    }
}

/// Files of at most this many bytes, read whole in one buffer, are uploaded from memory
/// ([`HeldSource`]) rather than read again when their part is sent.
const HOLD_UP_TO: u64 = 64 << 10;

/// Opens `path` and describes it part by part (blocking: run it off the node task).
fn describe(path: &Path, chunk: usize, limit: u64, progress: Arc<Progress>) -> Result<UploadSource, String> {
    describe_parts(path, chunk, limit, progress, None)
}

/// [`describe`], and the lowercase hex SHA-256 of the same bytes, in one pass (blocking).
pub(crate) fn describe_hashed(
    path: &Path,
    chunk: usize,
    limit: u64,
    progress: Arc<Progress>,
) -> Result<(UploadSource, String), String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let source = describe_parts(path, chunk, limit, progress, Some(&mut hasher))?;
    Ok((source, hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

/// Reads `path` once: the parts' metadata, and the whole file into `whole` if one is given (an
/// upload needs only the parts: each is hashed on its own).
fn describe_parts(
    path: &Path,
    chunk: usize,
    limit: u64,
    progress: Arc<Progress>,
    mut whole: Option<&mut sha2::Sha256>,
) -> Result<UploadSource, String> {
    use sha2::Digest;
    let file = File::open(path).map_err(|e| format!("cannot read local file {}: {e}", path.display()))?;
    let meta = file.metadata().map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let len = meta.len();
    if len > limit {
        return Err(format!("{} is {len} bytes, over the {limit}-byte limit for one write", path.display()));
    }
    if whole.is_none() && chunk > 0 && len.div_ceil(chunk as u64) >= SPLIT_DESCRIBE_PARTS {
        let parts = describe_split(&file, path, len, chunk)?;
        progress.set_total(len);
        let reader = Arc::new(FileSource { file, path: path.to_path_buf(), progress });
        return Ok(UploadSource { parts, reader });
    }
    let mut parts = Vec::with_capacity(len.div_ceil(chunk as u64) as usize);
    // A buffer no larger than the file and one byte (so that a file that grew is seen): a 4 KiB
    // append must not zero (and fault in) a whole chunk.
    let mut buf = vec![0u8; chunk.min(usize::try_from(len).unwrap_or(chunk).saturating_add(1))];
    let mut reader = &file;
    let mut seen = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = reader
                .read(&mut buf[filled..])
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        parts.push(PartMeta::of(&buf[..filled]));
        if let Some(h) = whole.as_deref_mut() {
            h.update(&buf[..filled]);
        }
        seen += filled as u64;
        if filled < chunk {
            break;
        }
    }
    if seen != len {
        return Err(format!("{} changed size while it was read ({len} then {seen} bytes)", path.display()));
    }
    progress.set_total(len);
    if parts.len() <= 1 && len <= HOLD_UP_TO {
        // Read whole into `buf` above (one part at most): keep those bytes, not the file.
        buf.truncate(len as usize);
        let reader = Arc::new(HeldSource { bytes: buf, path: path.to_path_buf(), progress });
        return Ok(UploadSource { parts, reader });
    }
    let reader = Arc::new(FileSource { file, path: path.to_path_buf(), progress });
    Ok(UploadSource { parts, reader })
}

/// Files of at least this many parts are described by two threads, each reading half of the
/// parts (a file hashed whole as well is read in one pass). Describing is all a create does
/// before its first byte travels, with the rest of the machine idle: a 1 GiB create refused
/// at once (the describe and one round trip) took 0.19 s with one pass, 0.13 s with two.
const SPLIT_DESCRIBE_PARTS: u64 = 64;

/// The parts of the `len` bytes of `file`, described by two threads (blocking), each reading
/// its half of them at their offsets; an error if the file is not `len` bytes long throughout.
fn describe_split(file: &File, path: &Path, len: u64, chunk: usize) -> Result<Vec<PartMeta>, String> {
    let count = len.div_ceil(chunk as u64);
    let describe_range = |from: u64, to: u64| -> Result<Vec<PartMeta>, String> {
        let mut buf = vec![0u8; chunk];
        let mut parts = Vec::with_capacity((to - from) as usize);
        for i in from..to {
            let at = i * chunk as u64;
            let n = (len - at).min(chunk as u64) as usize;
            file.read_exact_at(&mut buf[..n], at).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    format!("{} changed size while it was read (it was {len} bytes)", path.display())
                }
                _ => format!("cannot read {}: {e}", path.display()),
            })?;
            parts.push(PartMeta::of(&buf[..n]));
        }
        Ok(parts)
    };
    let half = count / 2;
    let (first, rest) = std::thread::scope(|scope| {
        let second = std::thread::Builder::new().spawn_scoped(scope, || describe_range(half, count));
        let first = describe_range(0, half);
        let rest = match second {
            Ok(handle) => {
                handle.join().unwrap_or_else(|_| Err(format!("describing {} failed", path.display())))
            }
            // No second thread: this one reads the rest too.
            Err(_) => describe_range(half, count),
        };
        (first, rest)
    });
    let mut parts = first?;
    parts.extend(rest?);
    let now = file.metadata().map_err(|e| format!("cannot stat {}: {e}", path.display()))?.len();
    if now != len {
        return Err(format!("{} changed size while it was read ({len} then {now} bytes)", path.display()));
    }
    debug_assert_eq!(parts.len() as u64, count, "one description per part");
    Ok(parts)
}

/// The lowercase hex SHA-256 and the length of a local file, read a chunk at a time
/// (blocking: run it off the node task).
pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64), String> {
    use sha2::Digest;
    let mut file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hasher.finalize().iter().map(|b| format!("{b:02x}")).collect(), len))
}

/// Downloads HyDFS file `name` into the local file `path`, chunk by chunk (the file appears
/// complete or not at all). Returns its length.
pub(crate) async fn download_file(
    node: &tokio::sync::mpsc::Sender<Input>,
    name: FileName,
    path: &Path,
) -> Result<u64, HydfsError> {
    let sink = Sink::create(path, Arc::new(Progress::default())).map_err(HydfsError::Storage)?;
    let (reply, rx) = oneshot::channel();
    let op = ClientOp::Download { name: name.clone(), from: ReadFrom::Any };
    let stopping = || HydfsError::Unavailable { name: name.clone(), reason: "node is stopping".into() };
    node.send(Input::Submit { op, sink: Some(sink), reply }).await.map_err(|_| stopping())?;
    match rx.await.map_err(|_| stopping())? {
        Ok(OpOutput::Downloaded { len, .. }) => Ok(len),
        Ok(other) => Err(HydfsError::Unavailable { name, reason: format!("unexpected answer: {other:?}") }),
        Err(e) => Err(e),
    }
}

/// The length of HyDFS file `name`, from its metadata as one replica holds it: none of its bytes
/// is read.
pub(crate) async fn file_len(
    node: &tokio::sync::mpsc::Sender<Input>,
    name: FileName,
) -> Result<u64, HydfsError> {
    let (reply, rx) = oneshot::channel();
    let op = ClientOp::Meta { name: name.clone() };
    let stopping = || HydfsError::Unavailable { name: name.clone(), reason: "node is stopping".into() };
    node.send(Input::Submit { op, sink: None, reply }).await.map_err(|_| stopping())?;
    match rx.await.map_err(|_| stopping())? {
        Ok(OpOutput::Meta { meta, .. }) => Ok(meta.len()),
        Ok(other) => Err(HydfsError::Unavailable { name, reason: format!("unexpected answer: {other:?}") }),
        Err(e) => Err(e),
    }
}

/// Chunks a download may have queued for its writer thread (at most this many MiB in memory).
const SINK_QUEUE_CHUNKS: usize = 8;

/// Where a download goes: a temporary file beside the target, renamed over it at the end. The
/// chunks are written by a thread of their own, so the node keeps receiving meanwhile. A chunk
/// of 256 KiB or more that starts at an aligned offset is written with direct I/O, past the
/// page cache (its tail padded with zeros that the next chunk, or the final cut, replaces); a
/// download that wrote any is synced before it is renamed into place, which costs little then.
pub struct Sink {
    tx: Option<std::sync::mpsc::SyncSender<(u64, Bulk)>>,
    /// The writer thread: the file, and whether any chunk went through direct I/O.
    writer: Option<std::thread::JoinHandle<Result<(File, bool), String>>>,
    tmp: PathBuf,
    target: PathBuf,
    progress: Arc<Progress>,
}

/// Names a download tries for its temporary file before it gives up.
const TEMP_NAME_TRIES: usize = 16;

/// An unguessable 64-bit number: std's hasher keys come from the OS's randomness.
fn unguessable() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Creates the first of `candidates` that does not exist, for writing, mode 0600. `create_new`
/// is `O_CREAT|O_EXCL`: a name already taken, by a symbolic link too, is never opened.
fn create_temp(candidates: impl IntoIterator<Item = PathBuf>) -> Result<(File, PathBuf), String> {
    let mut taken = Vec::new();
    for tmp in candidates {
        match crate::private::file_options().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((file, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => taken.push(tmp),
            Err(e) => return Err(format!("cannot write {}: {e}", tmp.display())),
        }
    }
    let names: Vec<String> = taken.iter().map(|p| p.display().to_string()).collect();
    Err(format!("cannot create a temporary file: every name tried is taken ({})", names.join(", ")))
}

impl Sink {
    fn create(target: &Path, progress: Arc<Progress>) -> Result<Sink, String> {
        let name = target.file_name().ok_or_else(|| format!("{} is not a file path", target.display()))?;
        let candidates = (0..TEMP_NAME_TRIES).map(|_| {
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".{}-{:016x}.part", std::process::id(), unguessable()));
            target.with_file_name(tmp_name)
        });
        Self::create_as(target, candidates, progress)
    }

    /// A sink for `target` whose temporary file is the first free name of `candidates`.
    fn create_as(
        target: &Path,
        candidates: impl IntoIterator<Item = PathBuf>,
        progress: Arc<Progress>,
    ) -> Result<Sink, String> {
        let (file, tmp) = create_temp(candidates)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Bulk)>(SINK_QUEUE_CHUNKS);
        let (path, done) = (tmp.clone(), progress.clone());
        let writer = std::thread::Builder::new()
            .name("hydfs-download".into())
            .spawn(move || {
                // Direct I/O is switched on the one descriptor `create_temp` opened (never a
                // second open by name: someone who can write the directory could have put a
                // link at that name meanwhile).
                let mut direct = crate::direct::Switch::new(&file);
                let mut aligned = crate::direct::AlignedBuf::default();
                let mut used_direct = false;
                for (offset, bytes) in rx {
                    let large =
                        bytes.len() >= crate::direct::LARGE && offset.is_multiple_of(crate::direct::ALIGN);
                    let wrote_direct = large && direct.set(true) && {
                        // A chunk that came at an aligned address, a whole number of blocks
                        // long (a received frame is laid out for it), is written as it is;
                        // any other is copied into an aligned buffer first.
                        let buf = if crate::direct::is_aligned(&bytes) {
                            &bytes[..]
                        } else {
                            let span =
                                (bytes.len() as u64).div_ceil(crate::direct::ALIGN) * crate::direct::ALIGN;
                            let buf = aligned.take(span as usize);
                            buf[..bytes.len()].copy_from_slice(&bytes);
                            buf[bytes.len()..].fill(0);
                            &buf[..]
                        };
                        match file.write_all_at(buf, offset) {
                            Ok(()) => true,
                            // Refused after all: this chunk and the rest go through the page cache.
                            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                                direct.refuse();
                                false
                            }
                            Err(e) => return Err(format!("cannot write {}: {e}", path.display())),
                        }
                    };
                    if !wrote_direct {
                        direct.set(false);
                        file.write_all_at(&bytes, offset)
                            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                    }
                    used_direct |= wrote_direct;
                    done.done.store(offset + bytes.len() as u64, Ordering::Relaxed);
                }
                direct.set(false);
                Ok((file, used_direct))
            })
            .map_err(|e| format!("cannot start writing {}: {e}", tmp.display()))?;
        Ok(Sink { tx: Some(tx), writer: Some(writer), tmp, target: target.to_path_buf(), progress })
    }

    /// Queues the next in-order chunk (offset 0 again means the download started over). Waits
    /// only if the writer is [`SINK_QUEUE_CHUNKS`] chunks behind.
    pub fn write(&mut self, offset: u64, bytes: Bulk) {
        if let Some(tx) = &self.tx {
            if tx.send((offset, bytes)).is_err() {
                self.tx = None; // the writer stopped on an error; `finish` reports it
            }
        }
    }

    pub fn set_total(&self, total: u64) {
        self.progress.set_total(total);
    }

    /// Waits for the writer and returns the file (and whether direct I/O wrote some of it), or
    /// why writing failed.
    fn close(&mut self) -> Result<(File, bool), String> {
        self.tx = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(format!("writing {} failed", self.tmp.display())),
            None => Err(format!("{} was already closed", self.tmp.display())),
        }
    }

    /// The download ended with `len` bytes: cut the file there and move it into place.
    pub fn finish(mut self, len: u64) -> Result<(), String> {
        let done = self.close().and_then(|(file, used_direct)| {
            file.set_len(len)
                .and_then(|_| if used_direct { file.sync_data() } else { Ok(()) })
                .and_then(|_| std::fs::rename(&self.tmp, &self.target))
                .map_err(|e| format!("cannot write {}: {e}", self.target.display()))
        });
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done
    }

    /// The download failed: nothing is left behind.
    pub fn abandon(mut self) {
        let _ = self.close();
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl Drop for Sink {
    /// A download dropped unfinished (the node stopped) leaves nothing behind either.
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = self.close();
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn fail(output: impl Into<String>) -> CommandReply {
    let mut output = output.into();
    if !output.ends_with('\n') {
        output.push('\n');
    }
    CommandReply { ok: false, output }
}

fn done(output: String) -> CommandReply {
    CommandReply { ok: true, output: output + "\n" }
}

fn resolve(base: &Path, local: &str) -> PathBuf {
    let p = Path::new(local);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn rate(bytes: u64, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64();
    if bytes < (1 << 20) || secs <= 0.0 {
        format!("{:.0} ms", secs * 1e3)
    } else {
        format!("{:.0} ms, {:.1} MiB/s", secs * 1e3, bytes as f64 / (1u64 << 20) as f64 / secs)
    }
}

fn addrs(list: &[NodeAddr]) -> String {
    list.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
}

async fn submit(
    handle: &NodeHandle,
    op: ClientOp,
    sink: Option<Sink>,
) -> Result<Result<OpOutput, HydfsError>, String> {
    let (reply, rx) = oneshot::channel();
    handle.send(Input::Submit { op, sink, reply }).await.map_err(|_| "node is stopping".to_string())?;
    rx.await.map_err(|_| "node is stopping".to_string())
}

/// Runs one file command; local paths are relative to `cwd`.
pub async fn run(handle: &NodeHandle, cmd: FileCommand, cwd: &Path, progress: Arc<Progress>) -> CommandReply {
    let started = Instant::now();
    match cmd {
        FileCommand::Create { local, name } => {
            upload(handle, WriteKind::Create, &resolve(cwd, &local), name, progress).await
        }
        FileCommand::Append { local, name } => {
            upload(handle, WriteKind::Append, &resolve(cwd, &local), name, progress).await
        }
        FileCommand::Get { name, local } => {
            download(handle, name, None, &resolve(cwd, &local), progress).await
        }
        FileCommand::GetFromReplica { node, name, local } => {
            download(handle, name, Some(node), &resolve(cwd, &local), progress).await
        }
        FileCommand::Merge { name } => match submit(handle, ClientOp::Merge { name }, None).await {
            Err(e) => fail(e),
            Ok(Err(e)) => fail(e.to_string()),
            Ok(Ok(OpOutput::Merged { name, summary })) => done(format!(
                "merged {name}: {} appends ordered on {} ({} bytes moved, {})",
                summary.appended,
                addrs(&summary.replicas),
                summary.bytes_moved,
                rate(0, started)
            )),
            Ok(Ok(other)) => fail(format!("unexpected answer: {other:?}")),
        },
        FileCommand::Delete { name } => match submit(handle, ClientOp::Delete { name }, None).await {
            Err(e) => fail(e),
            Ok(Err(e)) => fail(e.to_string()),
            Ok(Ok(OpOutput::Deleted { name, create, replicas })) if replicas.is_empty() => done(format!(
                "deleted {name} (created by {create}); it was already deleted ({})",
                rate(0, started)
            )),
            Ok(Ok(OpOutput::Deleted { name, create, replicas })) => done(format!(
                "deleted {name} (created by {create}) on {} ({})",
                addrs(&replicas),
                rate(0, started)
            )),
            Ok(Ok(other)) => fail(format!("unexpected answer: {other:?}")),
        },
        FileCommand::Ls { name } => match submit(handle, ClientOp::Ls { name }, None).await {
            Err(e) => fail(e),
            Ok(Err(e)) => fail(e.to_string()),
            Ok(Ok(OpOutput::Listed { name, ring_id, replicas })) => {
                let mut out = format!("{name}  ring id {ring_id}\n");
                for (addr, rid, digest) in replicas {
                    let state = match digest {
                        Some(d) if d.create.is_some() && d.incomplete == 0 => {
                            format!("holds it: {} merged appends, {} pending", d.merged, d.pending)
                        }
                        Some(d) if d.create.is_some() => {
                            format!("receiving it: {} of its writes still arriving", d.incomplete)
                        }
                        Some(_) | None => "does not hold it (yet)".to_string(),
                    };
                    out.push_str(&format!("  {addr}  ring id {rid}  {state}\n"));
                }
                CommandReply { ok: true, output: out }
            }
            Ok(Ok(other)) => fail(format!("unexpected answer: {other:?}")),
        },
        FileCommand::MultiAppend { name, nodes, locals } => {
            let mut appends = Vec::new();
            for (node, local) in nodes.into_iter().zip(locals) {
                let path = resolve(cwd, &local);
                let limit = handle.chunk_bytes as u64;
                match std::fs::metadata(&path) {
                    Ok(m) if m.len() > limit => {
                        return fail(format!(
                            "{} is {} bytes; multiappend carries each file in one message of at most {limit} bytes (use `append` on that node)",
                            path.display(),
                            m.len()
                        ))
                    }
                    Ok(_) => {}
                    Err(e) => return fail(format!("cannot read local file {}: {e}", path.display())),
                }
                match std::fs::read(&path) {
                    Ok(data) => appends.push((node, data)),
                    Err(e) => return fail(format!("cannot read local file {}: {e}", path.display())),
                }
            }
            let nodes: Vec<NodeAddr> = appends.iter().map(|(n, _)| *n).collect();
            match submit(handle, ClientOp::MultiAppend { name, appends }, None).await {
                Err(e) => fail(e),
                Ok(Err(e)) => fail(e.to_string()),
                Ok(Ok(OpOutput::MultiAppended { name, .. })) => done(format!(
                    "{} nodes appended to {name}: {} ({})",
                    nodes.len(),
                    addrs(&nodes),
                    rate(0, started)
                )),
                Ok(Ok(other)) => fail(format!("unexpected answer: {other:?}")),
            }
        }
        FileCommand::Store | FileCommand::ListMemIds => {
            let (reply, rx) = oneshot::channel();
            if handle.send(Input::Inspect { what: cmd, reply }).await.is_err() {
                return fail("node is stopping");
            }
            match rx.await {
                Ok(text) => CommandReply { ok: true, output: text },
                Err(_) => fail("node is stopping"),
            }
        }
    }
}

/// Local files up to this size are read for an upload on the command's own task.
const READ_HERE_UP_TO: u64 = 64 << 10;

async fn upload(
    handle: &NodeHandle,
    kind: WriteKind,
    path: &Path,
    name: FileName,
    progress: Arc<Progress>,
) -> CommandReply {
    let started = Instant::now();
    let (chunk, limit) = (handle.chunk_bytes, handle.max_write_bytes);
    let p = path.to_path_buf();
    // A small regular file is read right here: that takes microseconds, where the hop to the
    // blocking pool and back costs two context switches, a tenth of a small append's CPU.
    let small = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= READ_HERE_UP_TO);
    let described = if small {
        Ok(describe(&p, chunk, limit, progress))
    } else {
        tokio::task::spawn_blocking(move || describe(&p, chunk, limit, progress)).await
    };
    let source = match described {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(e),
        Err(e) => return fail(format!("reading {} failed: {e}", path.display())),
    };
    let len = source.len();
    match submit(handle, ClientOp::Upload { name, kind, source }, None).await {
        Err(e) => fail(e),
        Ok(Err(e)) => fail(e.to_string()),
        Ok(Ok(OpOutput::Written { name, replicas, .. })) => {
            let verb = if kind == WriteKind::Create { "created" } else { "appended to" };
            done(format!("{verb} {name}: {len} bytes on {} ({})", addrs(&replicas), rate(len, started)))
        }
        Ok(Ok(other)) => fail(format!("unexpected answer: {other:?}")),
    }
}

async fn download(
    handle: &NodeHandle,
    name: FileName,
    replica: Option<NodeAddr>,
    path: &Path,
    progress: Arc<Progress>,
) -> CommandReply {
    let started = Instant::now();
    let sink = match Sink::create(path, progress) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let from = replica.map_or(ReadFrom::Any, ReadFrom::Replica);
    match submit(handle, ClientOp::Download { name, from }, Some(sink)).await {
        Err(e) => fail(e),
        Ok(Err(e)) => fail(e.to_string()),
        Ok(Ok(OpOutput::Downloaded { name, len, writes, from })) => {
            let from = from.map_or("this node's cache".to_string(), |a| a.to_string());
            done(format!(
                "{name}: {len} bytes ({} writes) from {from} into {} ({})",
                writes.len(),
                path.display(),
                rate(len, started)
            ))
        }
        Ok(Ok(other)) => fail(format!("unexpected answer: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rainstorm-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Writes `data` to `dir/f` and describes it in parts of `chunk` bytes.
    fn write_and_describe(dir: &Path, data: &[u8], chunk: usize) -> (UploadSource, Arc<Progress>) {
        std::fs::write(dir.join("f"), data).unwrap();
        let progress = Arc::new(Progress::default());
        (describe(&dir.join("f"), chunk, 1 << 20, progress.clone()).unwrap(), progress)
    }

    #[test]
    fn an_upload_is_described_part_by_part_and_read_at_offsets() {
        let dir = temp_dir("upload");
        let data: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
        let (src, progress) = write_and_describe(&dir, &data, 1000);
        assert_eq!(src.parts.iter().map(|p| p.len).collect::<Vec<_>>(), vec![1000, 1000, 500]);
        assert_eq!(src.parts[1], PartMeta::of(&data[1000..2000]));
        assert_eq!(src.parts[1].crc, crc32c::crc32c(&data[1000..2000]));
        assert_eq!(src.reader.read_at(2000, 500).unwrap(), &data[2000..]);
        assert_eq!(progress.get(), (2500, 2500));
        assert!(src.reader.read_at(2400, 500).unwrap_err().contains("offset 2400"));
        let e = describe(&dir.join("f"), 1000, 2000, progress.clone()).err().unwrap();
        assert!(e.contains("over the 2000-byte limit"), "{e}");
        let e = describe(&dir.join("missing"), 1000, 1 << 20, progress).err().unwrap();
        assert!(e.contains("cannot read local file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A small file is sent as it was read when described, from memory: a change to the file
    /// afterwards is not read (one read of the file per upload); a file of several parts is
    /// still read at its offsets.
    #[test]
    fn a_small_upload_is_sent_from_the_bytes_it_was_described_from() {
        let dir = temp_dir("held");
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 11) as u8).collect();
        let (src, progress) = write_and_describe(&dir, &data, 1 << 20);
        assert_eq!(src.parts, vec![PartMeta::of(&data)]);
        std::fs::write(dir.join("f"), vec![7u8; 4096]).unwrap();
        assert_eq!(src.reader.read_at(0, 4096).unwrap(), data, "the bytes described, not the file now");
        assert_eq!(src.reader.read_at(4000, 96).unwrap(), &data[4000..]);
        assert_eq!(progress.get(), (4096, 4096));
        let e = src.reader.read_at(4000, 97).unwrap_err();
        assert!(e.contains("offset 4000") && e.contains("4096 bytes"), "{e}");
        assert!(src.reader.read_at(u64::MAX, 1).is_err());
        // Two parts: read from the file when sent.
        let (src, _) = write_and_describe(&dir, &data, 2048);
        std::fs::write(dir.join("f"), vec![9u8; 4096]).unwrap();
        assert_eq!(src.reader.read_at(2048, 2048).unwrap(), vec![9u8; 2048]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A reporter waiting for a large transfer is woken by a large total only.
    #[tokio::test]
    async fn only_a_large_total_wakes_the_progress_reporter() {
        let wait = std::time::Duration::from_millis(20);
        let progress = Progress::default();
        progress.set_total(PROGRESS_MIN_BYTES - 1);
        assert!(tokio::time::timeout(wait, progress.large()).await.is_err(), "a small total wakes nobody");
        progress.set_total(PROGRESS_MIN_BYTES);
        assert!(tokio::time::timeout(wait, progress.large()).await.is_ok(), "a large one does");
        assert_eq!(progress.get(), (0, PROGRESS_MIN_BYTES));
    }

    /// A file of many parts is described by two threads, part for part as one pass would.
    #[test]
    fn a_file_of_many_parts_is_described_in_two_halves_as_in_one_pass() {
        let dir = temp_dir("split");
        let chunk = 1000;
        for len in [SPLIT_DESCRIBE_PARTS * 1000, SPLIT_DESCRIBE_PARTS * 1000 + 1, 150_777] {
            let data: Vec<u8> = (0..len).map(|i| if i % 37 == 0 { b'\n' } else { (i * 7) as u8 }).collect();
            std::fs::write(dir.join("f"), &data).unwrap();
            let src = describe(&dir.join("f"), chunk, 1 << 20, Arc::new(Progress::default())).unwrap();
            let want: Vec<PartMeta> = data.chunks(chunk).map(PartMeta::of).collect();
            assert_eq!(src.parts, want, "{len} bytes");
            let file = File::open(dir.join("f")).unwrap();
            let e = describe_split(&file, &dir.join("f"), len + 5, chunk).unwrap_err();
            assert!(e.contains("changed size while it was read"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_program_is_described_and_hashed_in_one_pass_and_hashed_again_in_chunks() {
        use sha2::Digest;
        let dir = temp_dir("hashed");
        let data: Vec<u8> = (0..(3 << 20) + 7u32).map(|i| (i * 13) as u8).collect();
        std::fs::write(dir.join("p"), &data).unwrap();
        let want: String = sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
        let (src, sha) =
            describe_hashed(&dir.join("p"), 1 << 20, 1 << 30, Arc::new(Progress::default())).unwrap();
        assert_eq!((src.len(), src.parts.len()), (data.len() as u64, 4));
        assert_eq!(sha, want);
        assert_eq!(sha256_file(&dir.join("p")).unwrap(), (want, data.len() as u64));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_download_of_large_and_small_chunks_at_any_offsets_holds_exactly_its_bytes() {
        let dir = temp_dir("direct-sink");
        let target = dir.join("got");
        let large = crate::direct::LARGE;
        // Large chunks at aligned offsets (direct; the second's tail padded), a small one over
        // that padding, small ones back to an aligned offset, and a large last chunk there whose
        // padding the final cut removes.
        // The first chunk comes at an aligned address (as a received frame holds it), and is
        // written from there; the others are copied into an aligned buffer.
        let sizes = [large, large + 100, 3996, 7, 4089, 2 * large + 3];
        let mut want = Vec::new();
        let mut sink = Sink::create(&target, Arc::new(Progress::default())).unwrap();
        for (i, n) in sizes.iter().enumerate() {
            let chunk: Vec<u8> =
                (0..*n).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8 + 1)).collect();
            let bulk = if i == 0 { aligned_copy(&chunk) } else { Bulk::from(chunk.clone()) };
            assert_eq!(crate::direct::is_aligned(&bulk), i == 0);
            sink.write(want.len() as u64, bulk);
            want.extend_from_slice(&chunk);
        }
        sink.finish(want.len() as u64).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), want);
    }

    /// `bytes` in a buffer of their own that starts at an aligned address.
    fn aligned_copy(bytes: &[u8]) -> Bulk {
        let align = crate::direct::ALIGN as usize;
        let mut v = vec![0u8; bytes.len() + align];
        let skip = v.as_ptr().align_offset(align);
        v[skip..skip + bytes.len()].copy_from_slice(bytes);
        Bulk::from(bytes::Bytes::from(v).slice(skip..skip + bytes.len()))
    }

    #[test]
    fn a_download_appears_only_complete_and_a_failed_one_leaves_nothing() {
        let dir = temp_dir("download");
        let target = dir.join("out");
        let mut sink = Sink::create(&target, Arc::new(Progress::default())).unwrap();
        sink.write(0, b"stale first attempt, longer".to_vec().into());
        sink.write(0, b"hello ".to_vec().into());
        sink.write(6, b"world".to_vec().into());
        assert!(!target.exists(), "nothing under the target name before the end");
        sink.finish(11).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"hello world");
        let sink = Sink::create(&dir.join("other"), Arc::new(Progress::default())).unwrap();
        sink.abandon();
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("out")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_download_replaces_a_symlink_at_its_target_and_never_writes_through_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("symlink");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"someone else's file").unwrap();
        let target = dir.join("out");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        let mut sink = Sink::create(&target, Arc::new(Progress::default())).unwrap();
        sink.write(0, b"downloaded".to_vec().into());
        sink.finish(10).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"someone else's file");
        let meta = std::fs::symlink_metadata(&target).unwrap();
        assert!(meta.file_type().is_file(), "the link itself was replaced: {meta:?}");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read(&target).unwrap(), b"downloaded");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_planted_at_a_temporary_name_is_skipped_never_followed() {
        let dir = temp_dir("planted");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"someone else's file").unwrap();
        let (planted, dangling, free) =
            (dir.join(".out.1.part"), dir.join(".out.2.part"), dir.join(".out.3.part"));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        std::os::unix::fs::symlink(dir.join("nothing-here"), &dangling).unwrap();
        let target = dir.join("out");
        let candidates = [planted.clone(), dangling.clone(), free.clone()];
        let mut sink = Sink::create_as(&target, candidates, Arc::new(Progress::default())).unwrap();
        assert_eq!(sink.tmp, free);
        sink.write(0, b"downloaded".to_vec().into());
        sink.finish(10).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"someone else's file");
        assert!(!dir.join("nothing-here").exists(), "a dangling link is not followed either");
        assert_eq!(std::fs::read(&target).unwrap(), b"downloaded");
        assert!(std::fs::symlink_metadata(&planted).unwrap().file_type().is_symlink());
        // Every name taken: a clear error, naming them.
        let err = Sink::create_as(&target, [planted.clone(), dangling], Arc::new(Progress::default()))
            .err()
            .unwrap();
        assert!(err.contains("every name tried is taken") && err.contains(".out.1.part"), "{err}");
        // The names a download makes up are fresh ones.
        let a = Sink::create(&target, Arc::new(Progress::default())).unwrap();
        let b = Sink::create(&target, Arc::new(Progress::default())).unwrap();
        assert_ne!(a.tmp, b.tmp);
        a.abandon();
        b.abandon();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
