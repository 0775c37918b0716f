//! Stream connections, one per (peer, lane): the sending side ([`Writers`]: one writer task and
//! one TCP connection per peer and [`Lane`]), and the receiving side ([`accept`] reads every
//! connection into one bounded queue per lane, and [`LaneQueues::recv`] hands the node task
//! control frames before data frames before bulk frames).
//!
//! Why lanes: a HyDFS transfer is a stream of 1 MiB frames; on one connection a membership sync,
//! a HyDFS request or a RainStorm acknowledgement queued behind them waits for every byte in
//! front of it, in the sender's queue, in both kernels' buffers and in the receiver's queue.
//! With a connection and a queue per lane, a bulk backlog fills only the bulk connection and the
//! bulk queue, and slows only the bulk sender (through TCP), while control frames take their own
//! way and are served first.
//!
//! Invariants kept here, whatever peers (or anyone reaching the port) send:
//! * frames of one (peer, lane) are written in the order they were given, on one connection at
//!   a time (reconnecting after a failure), and read in that order, also when a large one is
//!   sealed by a sealing thread ([`Writers::send_frame`]; at most [`SEALERS`] per node, however
//!   many frames wait); small frames waiting together
//!   are written with one system call, and a large one (at least [`COALESCE_BYTES`]) alone, from
//!   its own buffers (a chunk's bytes from the message's, [`SealedFrame::pieces`]), with its
//!   length prefix in one gathered write;
//! * a received frame of at least [`CHECK_APART_BYTES`] reaches the node task only as the
//!   verdict of a checking thread ([`FrameChecks`]; at most [`CHECKERS`] per node), under the
//!   node's current keys, and a connection's frames reach it in the order they arrived: its
//!   reader waits for each verdict before it reads on;
//! * at most [`StreamLimits::max_inbound_connections`] inbound connections are open at once
//!   (fewer if the open-file limit leaves less room, see [`connection_limit`]); past it, one
//!   connection is closed at once and counted, never queued: the oldest that has delivered no
//!   frame yet (making room for the new one), else the new one;
//! * an inbound connection that starts no frame within [`StreamLimits::idle_timeout`], or does
//!   not deliver a started frame whole within [`StreamLimits::frame_timeout`], is closed and
//!   counted; a frame's buffer grows only as its bytes arrive ([`crate::net`]);
//! * a failed `accept` (out of file descriptors, say) is retried after a pause that grows from
//!   100 ms to 1 s, never at once, and logged at most once per [`LOG_EVERY`];
//! * at most [`STREAM_QUEUE_FRAMES`] received frames wait per lane: a reader whose lane's queue
//!   is full stops reading its connection, so TCP slows that sender and nothing else;
//! * [`LaneQueues::recv`] never returns a frame of a lane while a frame of an earlier lane
//!   ([`Lane::ALL`] order) is waiting;
//! * at most [`StreamLimits::send_queue_bytes`] wait to be sent per (peer, lane) (a frame is
//!   always taken into an empty queue, whatever its size); a frame past it is dropped, counted,
//!   and reported to the node task as [`Input::SendFailed`] so its retries recover;
//! * frames that cannot be written are reported to the node task as [`Input::SendFailed`], once
//!   per failed write;
//! * an inbound connection is read through a buffer of [`READ_BUFFER`] bytes: the small frames a
//!   peer sent together are taken with one system call, not two each (a header, then a body),
//!   and a read larger than the buffer, with nothing buffered, goes straight to the frame.

use crate::driver::Input;
use crate::net::{read_frame, FrameLimits, Incoming, ReadError};
use bytes::Bytes;
use rainstorm_core::node::StreamDrops;
use rainstorm_core::wire::{frame_lane, Codec, Frame, SealedFrame, VerifiedFrame, WireError};
use rainstorm_core::Lane;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

/// How long a stream connection attempt may take before the send counts as failed.
const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one frame may take to write before the connection counts as broken.
const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A peer connection with nothing to send for this long is closed.
pub const STREAM_IDLE: Duration = Duration::from_secs(60);
/// Received stream frames waiting for the node task, per lane (each at most one chunk plus
/// headers).
pub const STREAM_QUEUE_FRAMES: usize = 8;

/// The bounds of a node's stream connections (the `[limits]` settings of the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Inbound connections open at once, at most.
    pub max_inbound_connections: usize,
    /// An inbound connection that starts no frame for this long is closed.
    pub idle_timeout: Duration,
    /// A started frame must arrive whole within this long, or its connection is closed.
    pub frame_timeout: Duration,
    /// Bytes of frames waiting to be sent per (peer, lane), at most.
    pub send_queue_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_inbound_connections: 1024,
            idle_timeout: crate::net::DEFAULT_IDLE_TIMEOUT,
            frame_timeout: crate::net::DEFAULT_FRAME_TIMEOUT,
            send_queue_bytes: 64 << 20,
        }
    }
}

/// What the stream side dropped, counted where it happens (the accept loop, the connection
/// readers, the node task's [`Writers`]) and copied into the node's counters when they are read.
#[derive(Debug, Default)]
pub struct StreamCounters {
    connections_refused: AtomicU64,
    connections_timed_out: AtomicU64,
    frames_send_dropped: AtomicU64,
}

impl StreamCounters {
    pub fn snapshot(&self) -> StreamDrops {
        StreamDrops {
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            connections_timed_out: self.connections_timed_out.load(Ordering::Relaxed),
            frames_send_dropped: self.frames_send_dropped.load(Ordering::Relaxed),
        }
    }
}

/// Log lines about one kind of trouble are written at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Says when a rate-limited log line is due, and how many occurrences it covers.
struct LogEvery {
    last: Option<Instant>,
    since: u64,
}

impl LogEvery {
    const fn new() -> LogEvery {
        LogEvery { last: None, since: 0 }
    }

    /// Counts one occurrence; `Some(n)` when a line is due, covering `n` occurrences.
    fn tick(&mut self) -> Option<u64> {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.since))
    }
}

/// Bytes a waiting frame is charged besides its own (its buffer's bookkeeping).
const QUEUED_FRAME_OVERHEAD: usize = 64;

/// A frame waiting for its writer task.
enum Queued {
    /// Ready to write.
    Sealed(Vec<u8>),
    /// A large frame being sealed by a [`Sealers`] thread ([`Writers::send_frame`]), in the
    /// pieces it is held in; `len` is its length once sealed.
    Sealing { len: usize, sealed: oneshot::Receiver<SealedFrame> },
}

impl Queued {
    fn len(&self) -> usize {
        match self {
            Queued::Sealed(frame) => frame.len(),
            Queued::Sealing { len, .. } => *len,
        }
    }

    /// The frame as written: waits for its sealing, if it is being sealed. `None` if the
    /// sealing thread failed (it never should: sealing is a hash).
    async fn sealed(self) -> Option<Written> {
        match self {
            Queued::Sealed(frame) => Some(Written::Whole(frame)),
            Queued::Sealing { sealed, .. } => sealed.await.ok().map(Written::Apart),
        }
    }
}

/// A sealed frame, whole or in pieces.
enum Written {
    Whole(Vec<u8>),
    Apart(SealedFrame),
}

impl Written {
    /// The frame's pieces, in order (one for a whole frame).
    fn pieces(&self) -> Vec<&[u8]> {
        match self {
            Written::Whole(frame) => vec![frame],
            Written::Apart(sealed) => sealed.pieces().to_vec(),
        }
    }
}

/// Frames at least this long are sealed ([`Frame::seal_apart`]: their CRC or keyed tag computed)
/// by a [`Sealers`] thread rather than the node task, so that the node task goes on with the
/// next chunk meanwhile. Smaller ones are sealed at once (a thread hand-off would cost more than
/// their tag) and can be gathered with other small frames into one write; the two thresholds
/// are one.
pub const SEAL_APART_BYTES: usize = COALESCE_BYTES;

/// Threads that seal large frames, per node.
const SEALERS: usize = 2;

/// Whether a node's [`Sealers`] run.
enum SealersState {
    NotStarted,
    Running(Sealers),
    /// No thread could be started: every frame is sealed where it is sent.
    Unavailable,
}

/// A frame to seal, and where its writer waits for it.
type SealJob = (Frame, oneshot::Sender<SealedFrame>);

/// A fixed set of [`SEALERS`] threads that seal large frames for the writers, started at the
/// first large frame: however many frames wait, the node never runs more sealing threads than
/// that. The threads end when the [`Writers`] are dropped.
struct Sealers {
    jobs: std::sync::mpsc::Sender<SealJob>,
}

impl Sealers {
    /// Starts the threads; `None` if not even one could be started (the caller seals itself).
    fn start() -> Option<Sealers> {
        let (jobs, rx) = std::sync::mpsc::channel::<SealJob>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut started = 0;
        for i in 0..SEALERS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("frame-seal-{i}")).spawn(move || loop {
                // One thread waits for the next job at a time; the lock is released as it seals.
                let job = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
                let Ok((frame, sealed)) = job else { return };
                let _ = sealed.send(frame.seal_apart());
            });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => warn!(error = %e, "cannot start a frame sealing thread"),
            }
        }
        (started > 0).then_some(Sealers { jobs })
    }

    /// Hands `frame` to a sealing thread; gives it back if none is left.
    fn seal(&self, frame: Frame) -> Result<oneshot::Receiver<SealedFrame>, Frame> {
        let (tx, rx) = oneshot::channel();
        match self.jobs.send((frame, tx)) {
            Ok(()) => Ok(rx),
            Err(std::sync::mpsc::SendError((frame, _))) => Err(frame),
        }
    }
}

/// Received frames at least this long are checked ([`Codec::verify`]: their CRC32C or keyed
/// tag) by a [`FrameChecks`] thread before they are queued for the node task, so that the node
/// task is not where a large transfer is hashed: in a 1 GiB `get`, checking the tags of the
/// chunks was the largest part of the receiving node task's work. Smaller frames are checked by
/// the node as they are decoded (a thread hand-off would cost more than their tag).
pub const CHECK_APART_BYTES: usize = SEAL_APART_BYTES;

/// Threads that check large received frames, per node.
const CHECKERS: usize = 2;

/// A frame to check, and where its connection's reader waits for the verdict.
type CheckJob = (Bytes, oneshot::Sender<Result<VerifiedFrame, WireError>>);

/// The codec received frames are checked with: the node's, replaced along with it when the
/// cluster keys are reloaded.
pub type SharedCodec = Arc<std::sync::RwLock<Codec>>;

/// Checks large received frames on [`CHECKERS`] threads of their own, started at the first
/// large frame and shared by every inbound connection of the node, each thread with its own
/// queue, taken in turn (a job wakes one thread, not one to take it and another to wait for the
/// next). A connection's reader waits for its frame's verdict before it reads the next frame,
/// so frames reach the node task in the order they came (the kernel keeps receiving meanwhile).
pub struct FrameChecks {
    codec: SharedCodec,
    /// The frame limit of the stream channel (what the node decodes stream frames under).
    limit: usize,
    threads: OnceLock<Vec<std::sync::mpsc::Sender<CheckJob>>>,
    /// Jobs handed out so far: the next goes to thread `turn % threads`.
    turn: AtomicUsize,
}

impl FrameChecks {
    pub fn new(codec: SharedCodec, limit: usize) -> FrameChecks {
        FrameChecks { codec, limit, threads: OnceLock::new(), turn: AtomicUsize::new(0) }
    }

    /// Starts the threads: the queues of those that started (none if none could).
    fn start(codec: &SharedCodec, limit: usize) -> Vec<std::sync::mpsc::Sender<CheckJob>> {
        let mut started = Vec::new();
        for i in 0..CHECKERS {
            let (jobs, rx) = std::sync::mpsc::channel::<CheckJob>();
            let codec = codec.clone();
            let spawned = std::thread::Builder::new().name(format!("frame-check-{i}")).spawn(move || {
                for (frame, verdict) in rx {
                    let codec = codec.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let _ = verdict.send(codec.verify(frame, limit));
                }
            });
            match spawned {
                Ok(_) => started.push(jobs),
                Err(e) => warn!(error = %e, "cannot start a frame checking thread"),
            }
        }
        started
    }

    /// What the node task is to receive for `frame`: a large frame checked by a checking thread
    /// ([`Incoming::Verified`] or [`Incoming::Refused`]), a small one (or any, if no checking
    /// thread could be started) as it came.
    async fn check(&self, frame: Bytes) -> Incoming {
        if frame.len() < CHECK_APART_BYTES {
            return Incoming::Frame(frame);
        }
        let threads = self.threads.get_or_init(|| Self::start(&self.codec, self.limit));
        if threads.is_empty() {
            return Incoming::Frame(frame);
        }
        let (tx, rx) = oneshot::channel();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % threads.len();
        if let Err(std::sync::mpsc::SendError((frame, _))) = threads[turn].send((frame, tx)) {
            return Incoming::Frame(frame);
        }
        match rx.await {
            Ok(Ok(verified)) => Incoming::Verified(verified),
            Ok(Err(e)) => Incoming::Refused(e),
            // A checking thread never drops a job unanswered but by panicking: the frame is lost
            // with it, as on a failed connection, and its sender's retries recover.
            Err(_) => Incoming::Refused(WireError::Malformed("the frame's check failed".into())),
        }
    }
}

/// One writer task's queue, as the sending side sees it.
struct Queue {
    tx: mpsc::UnboundedSender<Queued>,
    /// Bytes waiting in the queue (frames plus [`QUEUED_FRAME_OVERHEAD`] each).
    bytes: Arc<AtomicUsize>,
    /// A failed-send report for dropped frames is on its way to the node task.
    reporting: Arc<AtomicBool>,
}

/// The sending side: one writer task per (peer, lane) that frames were sent to recently.
pub struct Writers {
    peers: BTreeMap<(SocketAddr, Lane), Queue>,
    /// Where writers report frames they could not write.
    failures: mpsc::Sender<Input>,
    /// Bytes waiting per (peer, lane), at most.
    queue_bytes: usize,
    counters: Arc<StreamCounters>,
    dropped_log: LogEvery,
    /// The sealing threads, started at the first large frame.
    sealers: SealersState,
}

impl Writers {
    pub fn new(failures: mpsc::Sender<Input>, queue_bytes: usize, counters: Arc<StreamCounters>) -> Writers {
        Writers {
            peers: BTreeMap::new(),
            failures,
            queue_bytes,
            counters,
            dropped_log: LogEvery::new(),
            sealers: SealersState::NotStarted,
        }
    }

    /// Seals `frame` and queues it for `to` on `lane`'s connection (see [`Writers::send`]). A
    /// frame of at least [`SEAL_APART_BYTES`] is sealed by a sealing thread while the caller
    /// goes on; its writer waits for it in its turn, so frames of one (peer, lane) still go out
    /// in the order they were given.
    pub fn send_frame(&mut self, to: SocketAddr, lane: Lane, frame: Frame) {
        let len = frame.len();
        // A frame its queue has no room for is dropped before it costs a seal.
        if let Some(waiting) = self.full(to, lane, len) {
            return self.dropped(to, lane, waiting);
        }
        if len >= SEAL_APART_BYTES && matches!(self.sealers, SealersState::NotStarted) {
            self.sealers = match Sealers::start() {
                Some(sealers) => SealersState::Running(sealers),
                None => SealersState::Unavailable,
            };
        }
        let queued = match &self.sealers {
            SealersState::Running(sealers) if len >= SEAL_APART_BYTES => match sealers.seal(frame) {
                Ok(sealed) => Queued::Sealing { len, sealed },
                Err(frame) => Queued::Sealed(frame.seal()),
            },
            _ => Queued::Sealed(frame.seal()),
        };
        self.queue(to, lane, queued);
    }

    /// Queues `frame` (sealed) for `to` on `lane`'s connection, starting its writer if there is
    /// none. A frame that would take the queue past its bound is dropped, counted and reported
    /// as a failed send.
    pub fn send(&mut self, to: SocketAddr, lane: Lane, frame: Vec<u8>) {
        self.queue(to, lane, Queued::Sealed(frame));
    }

    /// The bytes waiting for `to` on `lane`, if a frame of `len` bytes would take them past the
    /// bound (a frame is always taken into an empty queue, or one whose writer has stopped).
    fn full(&self, to: SocketAddr, lane: Lane, len: usize) -> Option<usize> {
        let queue = self.peers.get(&(to, lane))?;
        let waiting = queue.bytes.load(Ordering::Acquire);
        let cost = len.saturating_add(QUEUED_FRAME_OVERHEAD);
        (waiting > 0 && waiting.saturating_add(cost) > self.queue_bytes && !queue.tx.is_closed())
            .then_some(waiting)
    }

    fn queue(&mut self, to: SocketAddr, lane: Lane, mut frame: Queued) {
        let cost = frame.len().saturating_add(QUEUED_FRAME_OVERHEAD);
        if let Some(waiting) = self.full(to, lane, frame.len()) {
            return self.dropped(to, lane, waiting);
        }
        if let Some(queue) = self.peers.get(&(to, lane)) {
            queue.bytes.fetch_add(cost, Ordering::AcqRel);
            match queue.tx.send(frame) {
                Ok(()) => return,
                Err(mpsc::error::SendError(f)) => {
                    // The writer closed: start another.
                    queue.bytes.fetch_sub(cost, Ordering::AcqRel);
                    frame = f;
                }
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let bytes = Arc::new(AtomicUsize::new(cost));
        let _ = tx.send(frame);
        let queue = Queue { tx, bytes: bytes.clone(), reporting: Arc::new(AtomicBool::new(false)) };
        self.peers.insert((to, lane), queue);
        tokio::spawn(peer_writer(to, lane, rx, bytes, self.failures.clone()));
    }

    /// A frame for `to` on `lane` was dropped: its queue held `waiting` bytes.
    fn dropped(&mut self, to: SocketAddr, lane: Lane, waiting: usize) {
        self.counters.frames_send_dropped.fetch_add(1, Ordering::Relaxed);
        let limit_mb = self.queue_bytes >> 20;
        if let Some(n) = self.dropped_log.tick() {
            warn!(
                %to, %lane, waiting, dropped = n,
                "stream frames to {to} dropped: its {lane} send queue holds {waiting} bytes, the most                  limits.max_send_queue_mb ({limit_mb} MiB) allows; the peer reads too slowly or not at all"
            );
        }
        let Some(queue) = self.peers.get(&(to, lane)) else { return };
        // One report at a time per queue: the node fails every request to the peer at once.
        if queue.reporting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (failures, reporting) = (self.failures.clone(), queue.reporting.clone());
        let error = format!("the {lane} send queue to {to} is full (limits.max_send_queue_mb)");
        // The node task itself calls `send`: report through a task, never by waiting on its
        // own input queue.
        tokio::spawn(async move {
            let _ = failures.send(Input::SendFailed { to, error }).await;
            reporting.store(false, Ordering::Release);
        });
    }
}

/// Writes frames to one peer on one lane over one TCP connection, reconnecting after a failure.
/// The small frames waiting when the writer wakes go out together, length-prefixed in one
/// buffer and one write (up to [`COALESCE_BYTES`]), so a burst of small messages costs one system
/// call and one TCP segment, not two of each per frame. A large frame (a chunk or a part) is
/// written alone, never copied into that buffer. Frames that cannot be written are reported as a
/// failed send; the node's own timeouts and retries recover.
async fn peer_writer(
    to: SocketAddr,
    lane: Lane,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    queued: Arc<AtomicUsize>,
    failures: mpsc::Sender<Input>,
) {
    let taken = |frame: &Queued| {
        queued.fetch_sub(frame.len().saturating_add(QUEUED_FRAME_OVERHEAD), Ordering::AcqRel);
    };
    let mut conn: Option<TcpStream> = None;
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout(STREAM_IDLE, rx.recv()).await {
            Ok(Some(frame)) => {
                taken(&frame);
                frame
            }
            Ok(None) => return,
            Err(_) if conn.is_some() => {
                conn = None; // idle: close the connection, keep the writer
                continue;
            }
            Err(_) => {
                // Idle without a connection: stop, after sending anything that raced in.
                rx.close();
                while let Ok(frame) = rx.try_recv() {
                    taken(&frame);
                    write_queued(to, lane, &mut conn, frame, &failures).await;
                }
                return;
            }
        };
        if frame.len() >= COALESCE_BYTES {
            // A large frame (a chunk or a part) goes alone, from its own buffer: never copied.
            write_queued(to, lane, &mut conn, frame, &failures).await;
            continue;
        }
        out.clear();
        let mut large = None;
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            match frame {
                Queued::Sealed(frame) if frame.len() < COALESCE_BYTES => push_frame(&mut out, &frame),
                // Sent right after the small ones before it.
                large_or_sealing => {
                    large = Some(large_or_sealing);
                    break;
                }
            }
            if out.len() >= COALESCE_BYTES {
                break;
            }
            if let Ok(frame) = rx.try_recv() {
                taken(&frame);
                next = Some(frame);
            }
        }
        write_framed(to, lane, &mut conn, &[&out], &failures).await;
        if let Some(frame) = large {
            write_queued(to, lane, &mut conn, frame, &failures).await;
        }
    }
}

/// Writes one queued frame alone (see [`write_pieces`]), once it is sealed.
async fn write_queued(
    to: SocketAddr,
    lane: Lane,
    conn: &mut Option<TcpStream>,
    frame: Queued,
    failures: &mpsc::Sender<Input>,
) {
    match frame.sealed().await {
        Some(frame) => write_pieces(to, lane, conn, &frame.pieces(), failures).await,
        None => {
            warn!(%to, %lane, "a stream frame could not be sealed and was not sent");
            let error = "a frame could not be sealed".to_string();
            let _ = failures.send(Input::SendFailed { to, error }).await;
        }
    }
}

/// Bytes of frames gathered into one write, at most (a larger frame goes alone).
const COALESCE_BYTES: usize = 256 * 1024;

/// The length prefix of `frame`, as [`crate::net::write_frame`] writes it. Frames are bounded
/// far below 4 GiB by the node's limits; a longer one gets `None` and is not written (the
/// receiver would refuse it).
fn length_prefix(len: usize) -> Option<[u8; 4]> {
    match u32::try_from(len) {
        Ok(prefix) => Some(prefix.to_le_bytes()),
        Err(_) => {
            warn!(len, "a stream frame of 4 GiB or more was not sent");
            None
        }
    }
}

/// Appends `frame` with its length prefix.
fn push_frame(out: &mut Vec<u8>, frame: &[u8]) {
    if let Some(prefix) = length_prefix(frame.len()) {
        out.extend_from_slice(&prefix);
        out.extend_from_slice(frame);
    }
}

/// Writes one frame given in `pieces` (see [`write_framed`]): its length prefix, then the
/// pieces, in one gathered write.
async fn write_pieces(
    to: SocketAddr,
    lane: Lane,
    conn: &mut Option<TcpStream>,
    pieces: &[&[u8]],
    failures: &mpsc::Sender<Input>,
) {
    let Some(prefix) = length_prefix(pieces.iter().map(|p| p.len()).sum()) else { return };
    let mut framed = Vec::with_capacity(pieces.len() + 1);
    framed.push(&prefix[..]);
    framed.extend(pieces.iter().copied().filter(|p| !p.is_empty()));
    write_framed(to, lane, conn, &framed, failures).await;
}

/// Writes `framed` (length-prefixed frames, in as many slices as they come in: one gathered
/// write, nothing copied) on the connection, connecting first if there is none; a failure
/// closes the connection and is reported once.
async fn write_framed(
    to: SocketAddr,
    lane: Lane,
    conn: &mut Option<TcpStream>,
    framed: &[&[u8]],
    failures: &mpsc::Sender<Input>,
) {
    if framed.iter().all(|s| s.is_empty()) {
        return;
    }
    // A peer that restarted closed our old connection: its kernel answered with FIN/RST. A
    // frame written into such a socket is accepted locally and lost, so check first and
    // reconnect (the peer never writes on this connection, so any readable state means closed).
    // The reactor's readiness says so without a system call; only then is the socket read.
    if let Some(stream) = conn.as_ref() {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if stream.poll_read_ready(&mut cx).is_ready() {
            let mut probe = [0u8; 1];
            match stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => *conn = None,
            }
        }
    }
    let mut slices: Vec<std::io::IoSlice<'_>> = framed.iter().map(|s| std::io::IoSlice::new(s)).collect();
    let mut rest = &mut slices[..];
    let result = async {
        // Usually the socket has room: the frames go out at once, with no timer armed.
        if let Some(stream) = conn.as_ref() {
            match stream.try_write_vectored(rest) {
                Ok(n) => {
                    std::io::IoSlice::advance_slices(&mut rest, n);
                    if rest.is_empty() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("sending to {to}: {e}")),
            }
        }
        if conn.is_none() {
            let stream = tokio::time::timeout(STREAM_CONNECT_TIMEOUT, TcpStream::connect(to))
                .await
                .map_err(|_| format!("connecting to {to} timed out"))?
                .map_err(|e| format!("cannot connect to {to}: {e}"))?;
            let _ = stream.set_nodelay(true);
            *conn = Some(stream);
        }
        let stream = conn.as_mut().expect("connected above");
        let write = async {
            while !rest.is_empty() {
                let n = stream.write_vectored(rest).await?;
                if n == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
                }
                std::io::IoSlice::advance_slices(&mut rest, n);
            }
            stream.flush().await
        };
        match tokio::time::timeout(STREAM_WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("sending to {to}: {e}")),
            Err(_) => Err(format!("sending to {to} timed out")),
        }
    }
    .await;
    if let Err(error) = result {
        *conn = None;
        debug!(%to, %lane, %error, "stream send failed");
        let _ = failures.send(Input::SendFailed { to, error }).await;
    }
}

/// The receiving side's ends of the lane queues, one per lane.
#[derive(Clone)]
pub struct LaneSenders {
    lanes: [mpsc::Sender<Incoming>; Lane::ALL.len()],
}

/// The node task's ends of the lane queues.
pub struct LaneQueues {
    lanes: [mpsc::Receiver<Incoming>; Lane::ALL.len()],
}

/// One bounded queue of `capacity` frames per lane.
pub fn lane_queues(capacity: usize) -> (LaneSenders, LaneQueues) {
    let [(c_tx, c_rx), (d_tx, d_rx), (b_tx, b_rx)] = Lane::ALL.map(|_| mpsc::channel(capacity));
    (LaneSenders { lanes: [c_tx, d_tx, b_tx] }, LaneQueues { lanes: [c_rx, d_rx, b_rx] })
}

impl LaneSenders {
    /// Queues a received frame on `lane`, waiting while that lane's queue is full. `false`
    /// once the node task is gone.
    pub async fn send(&self, lane: Lane, incoming: Incoming) -> bool {
        self.lanes[lane.index()].send(incoming).await.is_ok()
    }
}

impl LaneQueues {
    /// The next received frame and its lane: a control frame if one waits, else a data frame,
    /// else a bulk frame; waits for the first to come if none does. `None` when every reader
    /// is gone. Cancel-safe (a frame is taken only when it is returned).
    pub async fn recv(&mut self) -> Option<(Lane, Incoming)> {
        let [control, data, bulk] = &mut self.lanes;
        tokio::select! {
            biased;
            Some(frame) = control.recv() => Some((Lane::Control, frame)),
            Some(frame) = data.recv() => Some((Lane::Data, frame)),
            Some(frame) = bulk.recv() => Some((Lane::Bulk, frame)),
            else => None,
        }
    }

    /// The next frame already received, in the same lane order as [`LaneQueues::recv`],
    /// without waiting (and without a timer: tokio's would round a zero wait up to its next
    /// millisecond tick).
    pub fn try_recv(&mut self) -> Option<(Lane, Incoming)> {
        Lane::ALL
            .into_iter()
            .zip(&mut self.lanes)
            .find_map(|(lane, rx)| rx.try_recv().ok().map(|f| (lane, f)))
    }

    /// Frames waiting on `lane`.
    pub fn waiting(&self, lane: Lane) -> usize {
        self.lanes[lane.index()].len()
    }
}

/// Descriptors kept for everything but inbound stream connections: files, the UDP socket, the
/// connections to peers, operator programs, the HTTP endpoint.
pub const RESERVED_FDS: u64 = 256;

/// The soft limit of open files, raised to the hard limit once per process (logged); `None`
/// if it cannot be read or is unlimited.
pub fn open_file_limit() -> Option<u64> {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let before = getrlimit(Resource::Nofile);
        if before.current.is_some() && before.current != before.maximum {
            let raised = Rlimit { current: before.maximum, maximum: before.maximum };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => info!(
                    before = ?before.current, after = ?before.maximum,
                    "raised the open-file limit to its hard limit"
                ),
                Err(e) => warn!(
                    limit = ?before.current, hard = ?before.maximum, error = %e,
                    "cannot raise the open-file limit to its hard limit; keeping it"
                ),
            }
        } else {
            debug!(limit = ?before.current, "the open-file limit is already at its hard limit");
        }
        getrlimit(Resource::Nofile).current
    })
}

/// The inbound connections allowed at once: `configured`, lowered (with a warning naming the
/// setting) to leave [`RESERVED_FDS`] descriptors of `fd_limit` for everything else (at least
/// half of it).
pub fn connection_limit(configured: usize, fd_limit: Option<u64>) -> usize {
    let Some(fds) = fd_limit else { return configured };
    let room = fds.saturating_sub(RESERVED_FDS).max(fds / 2).max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if configured > room {
        warn!(
            configured,
            fds,
            allowed = room,
            "limits.max_inbound_connections ({configured}) does not fit the open-file limit ({fds}) \
             with {RESERVED_FDS} descriptors for files and peers: at most {room} inbound connections; \
             raise the open-file limit (ulimit -n, LimitNOFILE) or lower limits.max_inbound_connections"
        );
        return room;
    }
    configured
}

/// The first pause after a failed `accept`, and the longest.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

/// The inbound connections being read, in the order they were accepted.
#[derive(Default)]
struct Inbound {
    next: u64,
    open: BTreeMap<u64, Arc<InboundConn>>,
}

/// One inbound connection, as the accept loop sees it.
#[derive(Default)]
struct InboundConn {
    /// It has delivered a whole frame.
    framed: AtomicBool,
    /// Tells its reader to close it.
    close: tokio::sync::Notify,
}

/// Removes a connection from [`Inbound`] when its reader ends.
struct Registered {
    inbound: Arc<std::sync::Mutex<Inbound>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.inbound).open.remove(&self.id);
    }
}

fn lock(inbound: &std::sync::Mutex<Inbound>) -> std::sync::MutexGuard<'_, Inbound> {
    inbound.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts stream connections and reads each one, queueing every frame on the lane its header
/// names ([`frame_lane`]). A frame whose header names no lane is not a frame of this version:
/// it goes to the bulk queue, served last, and the node refuses it with its cause. A frame over
/// the limit is skipped unread and reported on the control queue (only a counter moves).
///
/// At most `max_connections` are open at once. A connection past it takes the place of the
/// oldest one that has not delivered a whole frame yet, which is closed (a peer's connections
/// deliver their first frame at once, so connections opened and left silent cannot keep peers
/// out); if every connection has delivered a frame, the new one is closed. Either way one
/// connection is closed at once and counted as refused.
pub async fn accept(
    listener: TcpListener,
    lanes: LaneSenders,
    max_connections: usize,
    limits: FrameLimits,
    counters: Arc<StreamCounters>,
    checks: Arc<FrameChecks>,
) {
    let inbound = Arc::new(std::sync::Mutex::new(Inbound::default()));
    let receiving = Arc::new(Receiving { lanes, limits, counters: counters.clone(), checks });
    let (mut refused_log, mut failed_log) = (LogEvery::new(), LogEvery::new());
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF.0;
                accepted
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                if let Some(n) = failed_log.tick() {
                    let hint = if is_out_of_descriptors(&e) {
                        "out of file descriptors: raise the open-file limit or lower \
                         limits.max_inbound_connections; "
                    } else {
                        ""
                    };
                    warn!(
                        error = %e, failures = n, retry_ms = backoff.as_millis() as u64,
                        "cannot accept stream connections ({hint}retrying)"
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let conn = Arc::new(InboundConn::default());
        let id = {
            let mut held = lock(&inbound);
            if held.open.len() >= max_connections {
                let silent =
                    held.open.iter().find(|(_, c)| !c.framed.load(Ordering::Acquire)).map(|(id, _)| *id);
                match silent.and_then(|id| held.open.remove(&id)) {
                    Some(evicted) => evicted.close.notify_one(),
                    None => {
                        drop(held);
                        drop(stream);
                        counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                        if let Some(n) = refused_log.tick() {
                            warn!(
                                %peer, refused = n, limit = max_connections,
                                "stream connections refused: {max_connections} inbound connections are \
                                 open and delivering frames (limits.max_inbound_connections)"
                            );
                        }
                        continue;
                    }
                }
                counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = refused_log.tick() {
                    warn!(
                        %peer, closed = n, limit = max_connections,
                        "stream connections closed: {max_connections} inbound connections are open \
                         (limits.max_inbound_connections); the oldest that sent no frame made room"
                    );
                }
            }
            let id = held.next;
            held.next += 1;
            held.open.insert(id, conn.clone());
            id
        };
        let registered = Registered { inbound: inbound.clone(), id };
        let _ = stream.set_nodelay(true);
        tokio::spawn(read_connection(stream, peer, receiving.clone(), conn, registered));
    }
}

/// A failed `accept` that concerns one connection only (it went away before it was taken).
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
}

fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error().is_some_and(|n| n == Errno::MFILE.raw_os_error() || n == Errno::NFILE.raw_os_error())
}

/// Bytes each inbound connection reads at a time into a buffer of its own (see the module
/// header): room for a few 4 KiB writes with their envelopes.
pub const READ_BUFFER: usize = 16 << 10;

/// What every inbound connection's reader shares: where frames go, their bounds, what is counted,
/// and the checks of large frames.
struct Receiving {
    lanes: LaneSenders,
    limits: FrameLimits,
    counters: Arc<StreamCounters>,
    checks: Arc<FrameChecks>,
}

/// Reads one inbound connection until it ends, fails, times out or is closed to make room;
/// `_registered` keeps its place among the inbound connections until then.
async fn read_connection(
    stream: TcpStream,
    peer: SocketAddr,
    receiving: Arc<Receiving>,
    conn: Arc<InboundConn>,
    _registered: Registered,
) {
    let Receiving { lanes, limits, counters, checks } = &*receiving;
    let limits = *limits;
    let mut stream = tokio::io::BufReader::with_capacity(READ_BUFFER, stream);
    loop {
        let read = tokio::select! {
            read = read_frame(&mut stream, limits) => read,
            _ = conn.close.notified() => {
                debug!(%peer, "stream connection closed to make room (limits.max_inbound_connections)");
                return;
            }
        };
        match read {
            Ok(Some(incoming)) => {
                conn.framed.store(true, Ordering::Release);
                let (lane, incoming) = match incoming {
                    Incoming::Frame(frame) => {
                        (frame_lane(&frame).unwrap_or(Lane::Bulk), checks.check(frame).await)
                    }
                    Incoming::Oversized { len, limit } => {
                        warn!(%peer, len, limit, "stream frame over the limit (limits.stream_frame_mb) dropped");
                        (Lane::Control, Incoming::Oversized { len, limit })
                    }
                    // `read_frame` returns frames as they came.
                    checked @ (Incoming::Verified(_) | Incoming::Refused(_)) => (Lane::Control, checked),
                };
                if !lanes.send(lane, incoming).await {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                if matches!(e, ReadError::Idle(_) | ReadError::Body { .. }) {
                    counters.connections_timed_out.fetch_add(1, Ordering::Relaxed);
                }
                debug!(%peer, error = %e, "stream closed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rainstorm_core::wire::ClusterKey;

    /// A peer that restarts on the same address closes our old connection: the next frame must
    /// reach the new process, not vanish into the closed socket.
    #[tokio::test]
    async fn a_frame_after_the_peer_restarted_reaches_the_new_process() {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = first.local_addr().unwrap();
        let (tx, mut failures) = mpsc::channel(8);
        let mut conn = None;
        write_pieces(to, Lane::Control, &mut conn, &[b"one"], &tx).await;
        let (mut accepted, _) = first.accept().await.unwrap();
        assert_eq!(
            read_frame(&mut accepted, FrameLimits::new(64)).await.unwrap().unwrap(),
            Incoming::Frame(Bytes::from_static(b"one"))
        );
        // The peer process dies: its sockets close.
        drop(accepted);
        drop(first);
        let second = TcpListener::bind(to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        write_pieces(to, Lane::Control, &mut conn, &[b"two"], &tx).await;
        let (mut accepted, _) = tokio::time::timeout(Duration::from_secs(5), second.accept())
            .await
            .expect("reconnected")
            .unwrap();
        let frame =
            tokio::time::timeout(Duration::from_secs(5), read_frame(&mut accepted, FrameLimits::new(64)))
                .await;
        assert_eq!(
            frame.expect("frame arrives").unwrap().unwrap(),
            Incoming::Frame(Bytes::from_static(b"two"))
        );
        assert!(failures.try_recv().is_err(), "nothing was reported lost");
    }

    /// A listener, and writers (64 MiB per queue) with the channel their failures come on.
    async fn writers_to_a_listener() -> (TcpListener, SocketAddr, Writers, mpsc::Receiver<Input>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let (tx, failures) = mpsc::channel(8);
        (listener, to, Writers::new(tx, 64 << 20, Arc::default()), failures)
    }

    /// The next frame on `stream`, within 10 s and at most `limit` bytes.
    async fn next_frame(stream: &mut TcpStream, limit: usize) -> Vec<u8> {
        let read =
            tokio::time::timeout(Duration::from_secs(10), read_frame(stream, FrameLimits::new(limit))).await;
        match read.expect("a frame in time").expect("read").expect("a frame before the end") {
            Incoming::Frame(frame) => frame.to_vec(),
            other => panic!("a frame over the limit: {other:?}"),
        }
    }

    /// Frames sealed on other threads go out in the order they were given, sealed: small ones
    /// given after a large one still being sealed wait for it.
    #[tokio::test]
    async fn frames_sealed_apart_keep_their_order_behind_a_slow_one() {
        let (listener, to, mut writers, mut failures) = writers_to_a_listener().await;
        let codec = Codec::keyed(rainstorm_core::wire::ClusterKey::from_passphrase("k"), vec![]);
        // A large frame (slow to tag) first, then small and large ones by turns.
        let sizes: Vec<usize> = [12 << 20, 10, SEAL_APART_BYTES, 20, 0, 3 << 20, 30]
            .into_iter()
            .chain((0..40).map(|i| if i % 7 == 0 { SEAL_APART_BYTES + i } else { i }))
            .collect();
        let payload = |i: usize, len: usize| vec![(i % 251) as u8; len];
        for (i, len) in sizes.iter().enumerate() {
            writers.send_frame(to, Lane::Bulk, codec.frame_raw_unsealed(Lane::Bulk, &payload(i, *len)));
        }
        let (mut accepted, _) = listener.accept().await.unwrap();
        for (i, len) in sizes.iter().enumerate() {
            let frame = next_frame(&mut accepted, 16 << 20).await;
            assert!(frame == codec.frame_raw(Lane::Bulk, &payload(i, *len)), "frame {i} ({len} bytes)");
        }
        assert!(failures.try_recv().is_err(), "nothing was reported lost");
    }

    /// A read chunk whose bytes its frame keeps apart (written from the message's own buffer)
    /// arrives as the frame encoded in one buffer, between the frames around it.
    #[tokio::test]
    async fn a_chunk_kept_apart_from_its_frame_arrives_as_the_whole_frame() {
        use rainstorm_core::hydfs::message::{HydfsMsg, ReadChunk};
        use rainstorm_core::wire::{Body, Envelope};
        let (listener, to, mut writers, mut failures) = writers_to_a_listener().await;
        let codec = Codec::keyed(rainstorm_core::wire::ClusterKey::from_passphrase("k"), vec![]);
        let chunk = |n: usize| {
            let bytes: Vec<u8> = (0..(1 << 20) + n).map(|i| (i * 13 % 251) as u8).collect();
            let msg = HydfsMsg::ReadReply {
                req: n as u64,
                result: Ok(ReadChunk {
                    view: 1,
                    total_len: 1 << 30,
                    writes: vec![],
                    offset: 0,
                    bytes: bytes.into(),
                }),
            };
            Envelope {
                from: rainstorm_core::MemberId::new(to, 1),
                to,
                lane: msg.lane(),
                seq: rainstorm_core::replay::FrameSeq(n as u64),
                body: Body::Hydfs(msg),
            }
        };
        let small = codec.frame_raw(Lane::Bulk, b"between");
        for n in 0..3 {
            let frame = codec.encode_unsealed(chunk(n), 16 << 20).unwrap();
            writers.send_frame(to, Lane::Bulk, frame);
            writers.send(to, Lane::Bulk, small.clone());
        }
        let (mut accepted, _) = listener.accept().await.unwrap();
        for n in 0..3 {
            for expected in [codec.encode(&chunk(n), 16 << 20).unwrap(), small.clone()] {
                let frame = next_frame(&mut accepted, 16 << 20).await;
                assert!(frame == expected, "chunk {n}, or the frame after it");
            }
            let whole = codec.encode(&chunk(n), 16 << 20).unwrap();
            assert_eq!(codec.decode(&whole, 16 << 20).unwrap(), chunk(n));
        }
        assert!(failures.try_recv().is_err(), "nothing was reported lost");
    }

    /// A burst of frames, small and larger than one coalesced write, reaches the peer whole and
    /// in order.
    #[tokio::test]
    async fn a_burst_of_frames_arrives_whole_and_in_order() {
        let (listener, to, mut writers, mut failures) = writers_to_a_listener().await;
        let sizes: Vec<usize> =
            (0..600).map(|i| if i % 97 == 0 { COALESCE_BYTES + 3 } else { 1 + i * 7 % 900 }).collect();
        for (i, len) in sizes.iter().enumerate() {
            let mut frame = vec![(i % 251) as u8; *len];
            frame[0] = (i % 256) as u8;
            writers.send(to, Lane::Data, frame);
        }
        let (mut accepted, _) = listener.accept().await.unwrap();
        for (i, len) in sizes.iter().enumerate() {
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                read_frame(&mut accepted, FrameLimits::new(1 << 20)),
            )
            .await;
            let Incoming::Frame(frame) = read.expect("in time").unwrap().expect("a frame") else {
                panic!("frame {i} over the limit")
            };
            assert_eq!((frame.len(), frame[0]), (*len, (i % 256) as u8), "frame {i}");
            assert!(frame[1..].iter().all(|b| *b == (i % 251) as u8), "frame {i}'s bytes");
        }
        assert!(failures.try_recv().is_err(), "nothing was reported lost");
    }

    /// A frame on `lane` whose payload says which one it is (valid header, payload not an
    /// envelope: routing needs only the header).
    fn frame(lane: Lane, n: u32, len: usize) -> Vec<u8> {
        let mut payload = vec![0u8; len.max(4)];
        payload[..4].copy_from_slice(&n.to_le_bytes());
        Codec::plain().frame_raw(lane, &payload)
    }

    /// Waits until `done` holds; a test that never gets there fails instead of hanging.
    async fn until(done: impl Fn() -> bool, what: &str) {
        for _ in 0..12_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{what}: never happened");
    }

    fn number(incoming: &Incoming) -> u32 {
        let f = match incoming {
            Incoming::Frame(f) => &f[..],
            Incoming::Verified(f) => f.bytes(),
            other => panic!("not a frame: {other:?}"),
        };
        let payload = &f[rainstorm_core::wire::HEADER_BYTES..];
        u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]])
    }

    /// The frame checks of a node whose codec is `codec`, under a 16 MiB frame limit.
    fn checks(codec: Codec) -> Arc<FrameChecks> {
        Arc::new(FrameChecks::new(Arc::new(std::sync::RwLock::new(codec)), 16 << 20))
    }

    /// Large frames reach the node task checked by the checking threads (verified, or refused
    /// with the cause the node counts), small ones as they came, all in the order they were
    /// sent; and the checks follow the node's keys when they are reloaded.
    #[tokio::test]
    async fn large_frames_are_checked_apart_in_order_and_under_the_current_keys() {
        let (old, new) = (ClusterKey::from_passphrase("old"), ClusterKey::from_passphrase("new"));
        let (by_old, by_new) = (Codec::keyed(old.clone(), vec![]), Codec::keyed(new.clone(), vec![]));
        let shared = Arc::new(std::sync::RwLock::new(Codec::keyed(old, vec![])));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let (senders, mut queues) = lane_queues(STREAM_QUEUE_FRAMES);
        let checked = Arc::new(FrameChecks::new(shared.clone(), 16 << 20));
        tokio::spawn(accept(listener, senders, 4, FrameLimits::new(16 << 20), Arc::default(), checked));
        let payload = |n: u32, len: usize| {
            let mut p = vec![n as u8; len];
            p[..4].copy_from_slice(&n.to_le_bytes());
            p
        };
        let big = CHECK_APART_BYTES;
        let mut corrupt = by_old.frame_raw(Lane::Bulk, &payload(2, big));
        corrupt[1000] ^= 1;
        let sent = [
            by_old.frame_raw(Lane::Bulk, &payload(0, big)),
            by_old.frame_raw(Lane::Bulk, &payload(1, 64)),
            corrupt,
            by_old.frame_raw(Lane::Bulk, &payload(3, 2 * big)),
            by_new.frame_raw(Lane::Bulk, &payload(4, big)),
        ];
        let mut stream = TcpStream::connect(to).await.unwrap();
        for frame in &sent {
            crate::net::write_frame(&mut stream, frame).await.unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            let read = tokio::time::timeout(Duration::from_secs(10), queues.recv()).await;
            got.push(read.expect("in time").expect("a frame").1);
        }
        assert!(matches!(&got[0], Incoming::Verified(f) if f.bytes() == &sent[0][..]), "{:?}", got[0]);
        assert_eq!(
            got[1],
            Incoming::Frame(sent[1].clone().into()),
            "a small frame goes to the node as it came"
        );
        assert_eq!(got[2], Incoming::Refused(WireError::BadTag), "a corrupt large frame is refused");
        assert!(matches!(&got[3], Incoming::Verified(f) if f.bytes() == &sent[3][..]), "{:?}", got[3]);
        assert_eq!(got[4], Incoming::Refused(WireError::BadTag), "a frame under a key not accepted yet");
        // The node's keys are reloaded: the new key signs, the old one is still accepted.
        *shared.write().unwrap() = Codec::keyed(new.clone(), vec![ClusterKey::from_passphrase("old")]);
        let after =
            [by_new.frame_raw(Lane::Bulk, &payload(5, big)), by_old.frame_raw(Lane::Bulk, &payload(6, big))];
        for frame in &after {
            crate::net::write_frame(&mut stream, frame).await.unwrap();
        }
        for frame in &after {
            let read = tokio::time::timeout(Duration::from_secs(10), queues.recv()).await;
            let incoming = read.expect("in time").expect("a frame").1;
            assert!(matches!(&incoming, Incoming::Verified(f) if f.bytes() == &frame[..]), "{incoming:?}");
        }
        // And once the old key is retired, its frames are refused.
        *shared.write().unwrap() = Codec::keyed(new, vec![]);
        crate::net::write_frame(&mut stream, &by_old.frame_raw(Lane::Bulk, &payload(7, big))).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(10), queues.recv()).await;
        assert_eq!(read.expect("in time").expect("a frame").1, Incoming::Refused(WireError::BadTag));
    }

    /// With a backlog of bulk frames to a peer filling every buffer on the way (the sender's
    /// queue, both kernels, the receiver's bulk queue), a control frame sent after them is the
    /// first frame the node task takes, and the bulk frames then follow complete and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_control_frame_overtakes_a_backlog_of_bulk_frames_to_the_same_peer() {
        const BULK_FRAMES: u32 = 96;
        const BULK_BYTES: usize = 512 * 1024;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let (senders, mut queues) = lane_queues(STREAM_QUEUE_FRAMES);
        tokio::spawn(accept(
            listener,
            senders,
            16,
            FrameLimits::new(1 << 20),
            Arc::default(),
            checks(Codec::plain()),
        ));
        let (failures, mut failed) = mpsc::channel(8);
        let mut writers = Writers::new(failures, 64 << 20, Arc::default());
        for n in 0..BULK_FRAMES {
            writers.send(to, Lane::Bulk, frame(Lane::Bulk, n, BULK_BYTES));
        }
        // Wait (nothing is taken) until the bulk queue is full: the backlog is in place.
        until(|| queues.waiting(Lane::Bulk) == STREAM_QUEUE_FRAMES, "the bulk queue fills").await;
        writers.send(to, Lane::Control, frame(Lane::Control, 7, 16));
        until(|| queues.waiting(Lane::Control) == 1, "the control frame arrives").await;
        let (lane, first) = queues.recv().await.expect("a frame");
        assert_eq!((lane, number(&first)), (Lane::Control, 7), "the control frame comes first");
        let mut bulk = Vec::new();
        while bulk.len() < BULK_FRAMES as usize {
            let (lane, incoming) = queues.recv().await.expect("a frame");
            assert_eq!(lane, Lane::Bulk);
            bulk.push(number(&incoming));
        }
        assert_eq!(bulk, (0..BULK_FRAMES).collect::<Vec<_>>(), "the bulk frames arrive whole and in order");
        assert!(failed.try_recv().is_err(), "no send failed");
    }

    #[tokio::test]
    async fn a_waiting_control_frame_is_taken_before_waiting_data_and_bulk_frames() {
        let (senders, mut queues) = lane_queues(4);
        for lane in [Lane::Bulk, Lane::Data, Lane::Bulk, Lane::Control, Lane::Data] {
            assert!(senders.send(lane, Incoming::Frame(frame(lane, 0, 4).into())).await);
        }
        let mut order = Vec::new();
        for _ in 0..5 {
            order.push(queues.recv().await.expect("a frame").0);
        }
        assert_eq!(order, [Lane::Control, Lane::Data, Lane::Data, Lane::Bulk, Lane::Bulk]);
        drop(senders);
        assert!(queues.recv().await.is_none(), "no reader is left");
    }

    /// A peer that reads nothing: its queue takes frames up to its bound, drops the rest (each
    /// counted, one failed send reported for them), and sends what it kept once the peer reads.
    #[tokio::test]
    async fn a_full_send_queue_drops_frames_counts_them_and_reports_a_failed_send() {
        const FRAME: usize = 256 * 1024;
        const SENT: usize = 200;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let (tx, mut failures) = mpsc::channel(8);
        let counters = Arc::new(StreamCounters::default());
        let mut writers = Writers::new(tx, 1 << 20, counters.clone());
        // The writer task does not run before the test waits: nothing leaves the queue.
        for i in 0..SENT {
            writers.send(to, Lane::Bulk, vec![i as u8; FRAME]);
            let waiting = writers.peers[&(to, Lane::Bulk)].bytes.load(Ordering::Acquire);
            assert!(waiting <= 1 << 20, "{waiting} bytes waiting");
        }
        let kept = (1 << 20) / (FRAME + QUEUED_FRAME_OVERHEAD);
        assert_eq!(counters.snapshot().frames_send_dropped, (SENT - kept) as u64);
        let report = tokio::time::timeout(Duration::from_secs(5), failures.recv()).await.expect("a report");
        let Some(Input::SendFailed { to: failed, error }) = report else { panic!("not a failed send") };
        assert_eq!(failed, to);
        assert!(error.contains("limits.max_send_queue_mb"), "{error}");
        let (mut accepted, _) = listener.accept().await.unwrap();
        for i in 0..kept {
            let read = tokio::time::timeout(
                Duration::from_secs(5),
                read_frame(&mut accepted, FrameLimits::new(1 << 20)),
            );
            let Incoming::Frame(frame) = read.await.expect("in time").unwrap().unwrap() else { panic!() };
            assert_eq!((frame.len(), frame[0]), (FRAME, i as u8), "the kept frames, in order");
        }
        assert!(failures.try_recv().is_err(), "one report for all the dropped frames");
        // Drained, the queue takes frames again.
        until(|| writers.peers[&(to, Lane::Bulk)].bytes.load(Ordering::Acquire) == 0, "the queue drains")
            .await;
        writers.send(to, Lane::Bulk, b"after".to_vec());
        let read =
            tokio::time::timeout(Duration::from_secs(5), read_frame(&mut accepted, FrameLimits::new(64)));
        assert_eq!(
            read.await.expect("in time").unwrap().unwrap(),
            Incoming::Frame(Bytes::from_static(b"after"))
        );
        assert_eq!(counters.snapshot().frames_send_dropped, (SENT - kept) as u64);
    }

    /// The next received frame, within 5 s.
    async fn recv(queues: &mut LaneQueues) -> (Lane, Incoming) {
        tokio::time::timeout(Duration::from_secs(5), queues.recv()).await.expect("a frame").unwrap()
    }

    /// Whether the node closed `stream` (end of stream or reset) within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(within, stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }

    /// Past the limit, a new connection takes the place of the oldest silent one (no frame
    /// yet); when every connection has delivered a frame, the new one is closed. Each counts as
    /// refused; a place frees when a connection ends.
    #[tokio::test]
    async fn connections_past_the_limit_replace_silent_ones_or_are_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (senders, mut queues) = lane_queues(STREAM_QUEUE_FRAMES);
        let counters = Arc::new(StreamCounters::default());
        let checked = checks(Codec::plain());
        tokio::spawn(accept(listener, senders, 2, FrameLimits::new(1 << 20), counters.clone(), checked));
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut first, Duration::from_secs(5)).await, "the oldest silent one makes room");
        assert_eq!(counters.snapshot().connections_refused, 1);
        crate::net::write_frame(&mut second, &frame(Lane::Data, 2, 8)).await.unwrap();
        crate::net::write_frame(&mut third, &frame(Lane::Data, 3, 8)).await.unwrap();
        let mut got = [recv(&mut queues).await, recv(&mut queues).await].map(|(_, f)| number(&f));
        got.sort();
        assert_eq!(got, [2, 3]);
        // Both places hold connections that delivered frames: a new one is closed.
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut fourth, Duration::from_secs(5)).await, "the new one is closed");
        assert_eq!(counters.snapshot().connections_refused, 2);
        assert!(!closed_within(&mut second, Duration::from_millis(100)).await, "the second stays");
        assert!(!closed_within(&mut third, Duration::from_millis(100)).await, "the third stays");
        drop(second);
        // The reader notices the end, and its place is free again.
        let mut fifth = None;
        for _ in 0..100 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if !closed_within(&mut s, Duration::from_millis(50)).await {
                fifth = Some(s);
                break;
            }
        }
        let mut fifth = fifth.expect("a place freed");
        crate::net::write_frame(&mut fifth, &frame(Lane::Control, 5, 8)).await.unwrap();
        let (lane, incoming) = recv(&mut queues).await;
        assert_eq!((lane, number(&incoming)), (Lane::Control, 5));
    }

    /// An idle connection and one that stalls inside a frame are closed after their timeouts,
    /// counted, and their places freed.
    #[tokio::test]
    async fn idle_and_stalled_connections_are_closed_and_their_places_freed() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (senders, _queues) = lane_queues(STREAM_QUEUE_FRAMES);
        let counters = Arc::new(StreamCounters::default());
        let limits = FrameLimits {
            max_bytes: 1 << 20,
            idle: Duration::from_millis(300),
            body: Duration::from_millis(300),
        };
        tokio::spawn(accept(listener, senders, 1, limits, counters.clone(), checks(Codec::plain())));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(!closed_within(&mut idle, Duration::from_millis(100)).await, "open before the timeout");
        assert!(closed_within(&mut idle, Duration::from_secs(5)).await, "closed after it");
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(&(1u32 << 20).to_le_bytes()).await.unwrap();
        stalled.write_all(&[1u8; 100]).await.unwrap();
        assert!(closed_within(&mut stalled, Duration::from_secs(5)).await, "closed mid-frame");
        assert_eq!(counters.snapshot().connections_timed_out, 2);
        assert_eq!(counters.snapshot().connections_refused, 0, "each had the one place in turn");
    }

    #[test]
    fn the_connection_limit_leaves_descriptors_for_the_rest() {
        assert_eq!(connection_limit(1024, None), 1024);
        assert_eq!(connection_limit(1024, Some(1 << 20)), 1024);
        assert_eq!(connection_limit(1024, Some(1024)), 768);
        assert_eq!(connection_limit(1024, Some(300)), 150);
        assert_eq!(connection_limit(10, Some(300)), 10);
    }
}
