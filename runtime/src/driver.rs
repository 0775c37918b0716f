//! The node task: one tokio task owns the [`Node`] and is the only code that touches it.
//!
//! Sockets, the console and the control socket send [`Input`]s through channels; the task feeds
//! them to the node with the current time, sends every frame the node emits (UDP datagrams
//! directly, stream frames through one long-lived TCP connection per peer and lane:
//! [`crate::streams`]), hands operator-program calls to the [`ProgramHost`], sends a job's events
//! (its outputs included) to the command that started it, logs every other event and broadcasts
//! the membership events among them (file and job events, several per request, would only wake
//! subscribers that want none of them), and sleeps until the node's next deadline.
//!
//! Invariants: after every input (and the stream frames already waiting behind it, at most
//! [`BATCH_FRAMES`]: group commit) the node is flushed, so one storage sync covers the batch,
//! and all outputs are drained before the task waits again; datagrams
//! and commands are served before stream frames, and received stream frames control lane first,
//! then data, then bulk (bulk transfers never delay membership, HyDFS requests or RainStorm's
//! tuples); at most [`STREAM_QUEUE_FRAMES`] received stream frames wait per lane, so a fast
//! sender is slowed by TCP instead of growing this process's memory.
//!
//! [`start`] makes the data dir 0700 before anything is written in it (tightening an existing
//! looser one, and logging that it did); the output trace (`RAINSTORM_OUTPUT_TRACE`) is 0600
//! ([`crate::private`]).

use crate::clock::Clock;
use crate::config::{RuntimeConfig, Scheduling};
use crate::files::{Progress, Sink};
use crate::jobs::{JobBook, Streamed};
use crate::lock::DataDirLock;
use crate::net::Incoming;
use crate::programs::ProgramHost;
use crate::storage::FileStorage;
pub use crate::streams::STREAM_QUEUE_FRAMES;
use crate::streams::{lane_queues, FrameChecks, LaneQueues, SharedCodec, StreamCounters, Writers};
use rainstorm_core::command::{Command, FileCommand};
use rainstorm_core::hydfs::{ClientOp, HydfsError, HydfsEvent, OpId, OpOutput, RingId, StorageError};
use rainstorm_core::membership::{MembershipEvent, Role};
use rainstorm_core::node::{NodeConfig, NodeEvent};
use rainstorm_core::rainstorm::directory::KnownJob;
use rainstorm_core::rainstorm::{JobError, JobId, JobSpec, ProgramResult, RainstormEvent};
use rainstorm_core::wire::{Codec, Frame};
use rainstorm_core::{Channel, Node, Transmit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// What reaches the node task.
pub enum Input {
    Datagram(Vec<u8>),
    /// Datagrams the receiving task refused by their header, by cause, since its last report.
    DatagramsRefused(BTreeMap<&'static str, u64>),
    /// Start a HyDFS operation; a download's chunks go to `sink`.
    Submit {
        op: ClientOp,
        sink: Option<Sink>,
        reply: oneshot::Sender<Result<OpOutput, HydfsError>>,
    },
    /// Describe this node's state for `store` or `list_mem_ids`.
    Inspect {
        what: FileCommand,
        reply: oneshot::Sender<String>,
    },
    SendFailed {
        to: SocketAddr,
        error: String,
    },
    Command {
        line: String,
        reply: oneshot::Sender<CommandReply>,
    },
    /// An operator program's answer to a [`NodeEvent::Program`] call.
    ProgramResult {
        token: u64,
        result: Result<ProgramResult, String>,
    },
    /// Start a RainStorm job led by this node; its events (outputs included) go to `events`.
    StartJob {
        spec: JobSpec,
        events: mpsc::UnboundedSender<RainstormEvent>,
        reply: oneshot::Sender<Result<JobId, JobError>>,
    },
    /// `jobs` (no id) or `job <id>`.
    Jobs {
        id: Option<String>,
        reply: oneshot::Sender<CommandReply>,
    },
    /// What this node knows of the job `id` names (as `jobs` lists it): its leader's latest
    /// notice, for `follow`.
    KnownJob {
        id: String,
        reply: oneshot::Sender<Option<KnownJob>>,
    },
    /// A copy of the node's counters and state for the metrics and the status page, to `detail`.
    Observe {
        detail: crate::status::Detail,
        reply: oneshot::Sender<crate::status::Observation>,
    },
    /// Leave the group (if a member), linger while the leave spreads, then stop.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The answer to a console or control-socket command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandReply {
    pub ok: bool,
    pub output: String,
}

/// A cheap handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Input>,
    events: broadcast::Sender<MembershipEvent>,
    pub advertise: SocketAddr,
    pub data_dir: PathBuf,
    /// HyDFS part size and write limit (uploads are described with them).
    pub chunk_bytes: usize,
    pub max_write_bytes: u64,
}

impl NodeHandle {
    /// Runs one console command line; local paths are relative to this process's directory.
    pub async fn command(&self, line: &str) -> CommandReply {
        let cwd = std::env::current_dir().unwrap_or_default();
        self.command_in(line, &cwd, Arc::new(Progress::default())).await
    }

    /// Runs one command line with local paths relative to `cwd`, reporting transfer progress;
    /// a RainStorm job's results and notes are logged (use [`NodeHandle::command_streaming`]
    /// to receive them).
    pub async fn command_in(&self, line: &str, cwd: &Path, progress: Arc<Progress>) -> CommandReply {
        let (out, mut rx) = mpsc::unbounded_channel();
        let log = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                match line {
                    Streamed::Output(text) => debug!(event = "job_output", "{text}"),
                    Streamed::Note(text) => info!(event = "job_note", "{text}"),
                    // The leader's own log has the counts (`job_progress`, debug level).
                    Streamed::Progress(_) => {}
                }
            }
        });
        let reply = self.command_streaming(line, cwd, progress, out).await;
        let _ = log.await;
        reply
    }

    /// Runs one command line; a RainStorm job's results and notes are sent to `out` as they
    /// come (the reply comes when the job has ended).
    pub async fn command_streaming(
        &self,
        line: &str,
        cwd: &Path,
        progress: Arc<Progress>,
        out: mpsc::UnboundedSender<Streamed>,
    ) -> CommandReply {
        match Command::parse(line) {
            Ok(Command::File(cmd)) => return crate::files::run(self, cmd, cwd, progress).await,
            Ok(Command::Job(cmd)) => return crate::jobs::run(self, cmd, cwd, out).await,
            Ok(_) => {}
            Err(e) => return CommandReply { ok: false, output: format!("{e}\n") },
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Input::Command { line: line.to_string(), reply }).await.is_err() {
            return CommandReply { ok: false, output: "node is stopping".into() };
        }
        rx.await.unwrap_or(CommandReply { ok: false, output: "node is stopping".into() })
    }

    pub(crate) async fn send(&self, input: Input) -> Result<(), ()> {
        self.tx.send(input).await.map_err(|_| ())
    }

    /// The node task's input channel (for helpers that run one operation).
    pub(crate) fn sender(&self) -> &mpsc::Sender<Input> {
        &self.tx
    }

    /// A copy of the node's counters and state, or `None` if the node does not answer within
    /// `wait` (busy, or stopping).
    pub async fn observe(
        &self,
        detail: crate::status::Detail,
        wait: Duration,
    ) -> Option<crate::status::Observation> {
        let (reply, rx) = oneshot::channel();
        let asked = async {
            self.tx.send(Input::Observe { detail, reply }).await.ok()?;
            rx.await.ok()
        };
        tokio::time::timeout(wait, asked).await.ok().flatten()
    }

    /// Whether the node task has stopped.
    pub fn is_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// The membership events from now on (joins, suspicions, failures, leaves, mode changes, and
    /// this node's own): what the console and the status page show. File and job events are
    /// not broadcast (a busy node has several per request); they reach the log.
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.events.subscribe()
    }

    /// Leaves gracefully and waits until the node task has stopped.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Input::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// At most this many stream frames already waiting are handled after an input, before the node
/// flushes them with one sync (timers, datagrams and commands then get their turn).
pub const BATCH_FRAMES: usize = 64;

/// What a node without a cluster key says when it starts (in its log, and on stderr).
pub const NO_KEY_WARNING: &str =
    "NO CLUSTER KEY SET: frames are checksummed but not authenticated, and replays are not \
     refused; anyone who can reach this node's port can join the group, forge failures and read or \
     write files. This node runs no operator programs (unless rainstorm.allow_programs_without_key \
     is set). Give every node the same key file (`rainstorm keygen --out <file>`, then \
     cluster_key_file or --cluster-key-file).";

/// A node that was started: its handle, an event receiver subscribed before it ran, its task.
pub struct StartedNode {
    pub handle: NodeHandle,
    /// Where the metrics and status page are served, if they are.
    pub page: Option<SocketAddr>,
    pub events: broadcast::Receiver<MembershipEvent>,
    pub task: JoinHandle<()>,
    /// The data dir's lock, held while the node runs.
    pub data_dir_lock: DataDirLock,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data dir {path} (mode 700) or make it private: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot bind {what} {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot use the block store: {0}")]
    Storage(StorageError),
}

/// Binds the sockets, starts the node (a member starts joining at once) and its tasks, on the
/// data dir `data_dir_lock` holds (taken first, before the node's log is opened in it).
pub async fn start(cfg: RuntimeConfig, data_dir_lock: DataDirLock) -> Result<StartedNode, StartError> {
    debug_assert_eq!(data_dir_lock.dir(), cfg.data_dir.as_path(), "the lock is on this node's data dir");
    // Before anything is written in it (the control socket included: see `control`).
    let tightened = crate::private::dir(&cfg.data_dir)
        .map_err(|source| StartError::DataDir { path: cfg.data_dir.clone(), source })?;
    if let Some(was) = tightened {
        crate::logging::log_tightened(&cfg.data_dir, was);
    }
    let udp = UdpSocket::bind(cfg.bind).await.map_err(|source| StartError::Bind {
        what: "UDP",
        addr: cfg.bind,
        source,
    })?;
    let tcp = TcpListener::bind(cfg.bind).await.map_err(|source| StartError::Bind {
        what: "TCP",
        addr: cfg.bind,
        source,
    })?;
    let clock = Clock::new();
    let seed = os_seed();
    let codec = cfg.codec();
    let codec_keys = codec.describe_keys();
    if !codec.is_authenticated() {
        warn!("{NO_KEY_WARNING}");
    }
    let now = clock.now();
    let hydfs = cfg.hydfs.clone();
    let (chunk_bytes, max_write_bytes) = (hydfs.chunk_bytes, hydfs.max_write_bytes);
    let mut blocks = FileStorage::open(&cfg.data_dir.join("blocks")).map_err(StartError::Storage)?;
    // A flush behind the node's back wakes it: the writes it covered are answered at once.
    let flushed = Arc::new(tokio::sync::Notify::new());
    let wake = flushed.clone();
    blocks.set_flush_notifier(Arc::new(move || wake.notify_one()));
    let mut node = Node::with_storage(
        NodeConfig {
            role: cfg.role,
            addr: cfg.advertise,
            introducer: cfg.introducer,
            membership: cfg.membership.clone(),
            hydfs,
            rainstorm: cfg.rainstorm.clone(),
            limits: cfg.limits.clone(),
            codec,
        },
        now,
        seed,
        Box::new(blocks),
    )
    .map_err(StartError::Storage)?;
    node.set_batched(true);
    info!(
        role = ?cfg.role, addr = %cfg.advertise, introducer = %cfg.introducer, seed,
        suspicion = cfg.membership.suspicion_at_start, keys = %codec_keys, threads = cfg.threads,
        scheduling = cfg.scheduling.map_or("as started", Scheduling::as_str), "node starting"
    );
    log_recovery(node.hydfs().recovery(), &cfg.data_dir, clock.now().0.saturating_sub(now.0));
    if cfg.role == Role::Member {
        let _ = node.handle_command(now, Command::Join);
    }
    let (tx, rx) = mpsc::channel(1024);
    let (lane_tx, lanes) = lane_queues(STREAM_QUEUE_FRAMES);
    let (events, first_rx) = broadcast::channel(4096);
    let udp = Arc::new(udp);
    let precheck = (cfg.codec(), cfg.membership.max_datagram_bytes);
    tokio::spawn(receive_datagrams(udp.clone(), tx.clone(), precheck));
    let stream_counters = Arc::new(StreamCounters::default());
    let max_connections = crate::streams::connection_limit(
        cfg.streams.max_inbound_connections,
        crate::streams::open_file_limit(),
    );
    let frame_limits = crate::net::FrameLimits {
        max_bytes: cfg.limits.stream_frame_bytes,
        idle: cfg.streams.idle_timeout,
        body: cfg.streams.frame_timeout,
    };
    let checked_with: SharedCodec = Arc::new(std::sync::RwLock::new(cfg.codec()));
    let checks = Arc::new(FrameChecks::new(checked_with.clone(), frame_limits.max_bytes));
    tokio::spawn(crate::streams::accept(
        tcp,
        lane_tx,
        max_connections,
        frame_limits,
        stream_counters.clone(),
        checks,
    ));
    let handle = NodeHandle {
        tx: tx.clone(),
        events: events.clone(),
        advertise: cfg.advertise,
        data_dir: cfg.data_dir.clone(),
        chunk_bytes,
        max_write_bytes,
    };
    let (data_dir, tx_programs, programs) = (cfg.data_dir.clone(), tx.clone(), cfg.programs.clone());
    let metrics = cfg.metrics;
    let task = NodeTask {
        node,
        clock,
        udp,
        events,
        drop_rng: ChaCha8Rng::seed_from_u64(seed ^ 0xd20b),
        writers: Writers::new(tx, cfg.streams.send_queue_bytes, stream_counters.clone()),
        stream_counters,
        checked_with,
        cfg,
        ops: BTreeMap::new(),
        programs: ProgramHost::new(programs, &data_dir, tx_programs),
        book: JobBook::default(),
        output_trace: std::env::var_os("RAINSTORM_OUTPUT_TRACE").and_then(
            |path| match crate::private::append(Path::new(&path)) {
                Ok(f) => Some(std::io::BufWriter::new(f)),
                Err(e) => {
                    warn!(error = %e, path = ?path, "cannot open the output trace; not tracing");
                    None
                }
            },
        ),
        watchers: BTreeMap::new(),
    };
    let task = tokio::spawn(task.run(rx, lanes, flushed));
    // The page is a view: a port in use costs the node its page, never its work.
    let page = match metrics {
        Some(addr) => match crate::status::serve(addr, handle.clone()).await {
            Ok(page) => Some(page),
            Err(e) => {
                warn!(addr = %addr, error = %e, "cannot serve metrics and the status page; set metrics_addr");
                None
            }
        },
        None => None,
    };
    Ok(StartedNode { handle, page, events: first_rx, task, data_dir_lock })
}

/// A seed for the node's RNG from the OS clock and the process id (uniqueness is what matters).
fn os_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

/// Reads datagrams and queues them for the node. Garbage (bad size, magic, version, flags or
/// length field: what [`Codec::precheck`] sees without a key) is dropped here, so a flood of it
/// costs the node task nothing and cannot crowd real datagrams out of the queue; the refusals
/// are reported to the node in batches (at most every 100 ms) for its counters.
async fn receive_datagrams(udp: Arc<UdpSocket>, tx: mpsc::Sender<Input>, (codec, limit): (Codec, usize)) {
    const REPORT_EVERY: Duration = Duration::from_millis(100);
    let mut buf = vec![0u8; 65_536];
    let mut refused: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut reported = tokio::time::Instant::now();
    loop {
        match udp.recv_from(&mut buf).await {
            Ok((n, _from)) => match codec.precheck(&buf[..n], limit) {
                Ok(_) => {
                    if tx.send(Input::Datagram(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
                Err(e) => *refused.entry(e.cause()).or_default() += 1,
            },
            Err(e) => debug!(error = %e, "UDP receive error"),
        }
        if !refused.is_empty() && reported.elapsed() >= REPORT_EVERY {
            // A full queue keeps the counts for the next report rather than wait.
            if let Ok(permit) = tx.try_reserve() {
                permit.send(Input::DatagramsRefused(std::mem::take(&mut refused)));
                reported = tokio::time::Instant::now();
            }
        }
    }
}

struct NodeTask {
    node: Node,
    clock: Clock,
    udp: Arc<UdpSocket>,
    events: broadcast::Sender<MembershipEvent>,
    drop_rng: ChaCha8Rng,
    cfg: RuntimeConfig,
    /// One writer task (one TCP connection) per peer and lane that frames were sent to recently.
    writers: Writers,
    /// What the stream side dropped; copied into the node's counters before they are read.
    stream_counters: Arc<StreamCounters>,
    /// The codec the stream side checks large frames with: the node's keys, replaced with them.
    checked_with: SharedCodec,
    /// HyDFS operations started from a command, waiting for their result.
    ops: BTreeMap<OpId, PendingOp>,
    /// The operator programs of the task incarnations this node hosts.
    programs: ProgramHost,
    /// The jobs this node led.
    book: JobBook,
    /// `RAINSTORM_OUTPUT_TRACE`: a file for latency measurements. Each output of a job this node
    /// leads is traced, once committed, as `<job> out <unix time in µs> <source line>`, and each
    /// run of input lines a source task here sent on as
    /// `<job> sent <unix time in µs> <first line> <last line>`.
    output_trace: Option<std::io::BufWriter<std::fs::File>>,
    /// Commands following a job's events.
    watchers: BTreeMap<JobId, mpsc::UnboundedSender<RainstormEvent>>,
}

/// The operations a node makes by the thousand (a client appending in a loop, a stream job's
/// logs, its sources' part reads and descriptions): each that succeeds within [`SLOW_OP_MS`]
/// logs its line at debug level: at info, a line per append took about 2% of the cluster's CPU
/// under append load, and 100 bytes of log per append. Every other command, a slow one, and
/// every failure log at info or warn.
const FREQUENT_OPS: [&str; 3] = ["append", "readpart", "meta"];
const SLOW_OP_MS: u64 = 1_000;

/// Whether the line of a successful operation `op` that took `ms` is logged at debug level
/// rather than info (see [`FREQUENT_OPS`]).
fn quiet_when_done(op: &str, ms: u64) -> bool {
    ms < SLOW_OP_MS && FREQUENT_OPS.contains(&op)
}

/// When the node task's round ends if nothing else arrives.
#[derive(Clone, Copy)]
enum Wake {
    /// A deadline has passed: at once.
    Now,
    /// At the deadline the node task's timer is armed for.
    At,
    /// No deadline: only an input, a frame or a flush ends the round.
    Never,
}

/// A HyDFS operation a command is waiting for.
struct PendingOp {
    op: &'static str,
    name: String,
    started: std::time::Instant,
    sink: Option<Sink>,
    reply: oneshot::Sender<Result<OpOutput, HydfsError>>,
}

impl NodeTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        mut lanes: LaneQueues,
        flushed: Arc<tokio::sync::Notify>,
    ) {
        let mut stopping: Option<(tokio::time::Instant, oneshot::Sender<()>)> = None;
        // One timer for the node's next deadline, kept registered across rounds and moved only
        // when the deadline moves. A timer registered afresh each round, earlier than the
        // runtime's next wake-up (which other tasks' timers set meanwhile), makes tokio wake its
        // own driver through the event fd: a system call and an extra poll per round.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        loop {
            // What the inputs asked of peers goes out first (a coordinator's requests to the
            // other replicas then travel while its own disk syncs); then group commit: everything
            // handed over since the last flush is answered after one sync.
            self.drain().await;
            self.node.flush(self.clock.now());
            self.drain().await;
            let deadline = self.node.poll_timeout().map(|t| self.clock.instant_of(t));
            let stop_at = stopping.as_ref().map(|(at, _)| *at);
            let wake = match (deadline, stop_at) {
                (Some(d), Some(s)) => Some(d.min(s.into_std())),
                (d, s) => d.or(s.map(|s| s.into_std())),
            };
            // During a long exchange with itself the node's messages to itself are due round
            // after round, and the biased select below would serve only them: take one frame a
            // peer has waiting before each such round, so peers are not held up meanwhile.
            if deadline.is_some_and(|d| d <= std::time::Instant::now()) {
                if let Some((_, incoming)) = lanes.try_recv() {
                    self.on_lane(incoming);
                }
            }
            let wake = match wake {
                // Already due: no timer (tokio's rounds up to the next millisecond, which would
                // add a millisecond to every step the node takes "now").
                Some(at) if at <= std::time::Instant::now() => Wake::Now,
                Some(at) => {
                    if timer.deadline().into_std() != at || timer.is_elapsed() {
                        timer.as_mut().reset(at.into());
                    }
                    Wake::At
                }
                None => Wake::Never,
            };
            let sleep = async {
                match wake {
                    Wake::Now => {}
                    Wake::At => timer.as_mut().await,
                    Wake::Never => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    let now = self.clock.now();
                    match input {
                        Input::Datagram(bytes) => self.node.handle_frame(now, Channel::Datagram, &bytes),
                        Input::DatagramsRefused(counts) => {
                            for (cause, n) in counts {
                                self.node.record_rejected(cause, n);
                            }
                        }
                        Input::Submit { op, sink, reply } => self.submit(now, op, sink, reply),
                        Input::Inspect { what, reply } => {
                            let _ = reply.send(self.inspect(&what));
                        }
                        Input::SendFailed { to, error } => self.node.handle_send_failed(now, to, &error),
                        Input::ProgramResult { token, result } => {
                            self.node.handle_program_result(now, token, result)
                        }
                        Input::StartJob { spec, events, reply } => {
                            let job = self.node.start_job(now, spec);
                            if let Ok(job) = &job {
                                self.watchers.insert(*job, events);
                            }
                            let _ = reply.send(job);
                        }
                        Input::Observe { detail, reply } => {
                            self.node.set_stream_drops(self.stream_counters.snapshot());
                            let _ = reply.send(crate::status::observe(&self.node, &self.book, detail));
                        }
                        Input::Jobs { id, reply } => {
                            let _ = reply.send(self.jobs(id.as_deref()));
                        }
                        Input::KnownJob { id, reply } => {
                            let directory = self.node.rainstorm().directory();
                            let known = directory.jobs().find(|(job, _)| job.to_string() == id);
                            let _ = reply.send(known.map(|(_, k)| k.clone()));
                        }
                        Input::Command { line, reply } => {
                            self.node.set_stream_drops(self.stream_counters.snapshot());
                            let _ = reply.send(self.command(&line));
                        }
                        Input::Shutdown { reply } => {
                            if stopping.is_none() {
                                let linger = match self.node.handle_command(now, Command::Leave) {
                                    Ok(_) => Duration::from_millis(self.cfg.membership.leave_linger.0),
                                    Err(_) => Duration::ZERO,
                                };
                                info!(linger_ms = linger.as_millis() as u64, "shutting down");
                                stopping = Some((tokio::time::Instant::now() + linger, reply));
                            }
                        }
                    }
                }
                _ = sleep => {
                    self.node.handle_timeout(self.clock.now());
                }
                () = flushed.notified() => self.node.storage_flushed(self.clock.now()),
                // Control frames before data frames before bulk frames (`LaneQueues::recv`).
                Some((_, incoming)) = lanes.recv() => self.on_lane(incoming),
            }
            // The frames peers have already sent join this batch (a bounded number, so that
            // timers and commands still get their turn), and the flush at the top of the loop
            // syncs once for all of them.
            for _ in 0..BATCH_FRAMES {
                let Some((_, incoming)) = lanes.try_recv() else { break };
                self.on_lane(incoming);
            }
            if let Some((at, _)) = &stopping {
                if tokio::time::Instant::now() >= *at {
                    self.node.flush(self.clock.now());
                    self.drain().await;
                    if let Some((_, reply)) = stopping.take() {
                        let _ = reply.send(());
                    }
                    info!("stopped");
                    return;
                }
            }
        }
    }

    /// A stream frame (or an oversized one's notice) from a peer's connection.
    fn on_lane(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Frame(frame) => self.node.handle_frame(self.clock.now(), Channel::Stream, &frame),
            Incoming::Verified(frame) => self.node.handle_verified_frame(self.clock.now(), &frame),
            Incoming::Refused(e) => self.node.record_rejected(e.cause(), 1),
            Incoming::Oversized { .. } => self.node.record_rejected("oversized", 1),
        }
    }

    /// `jobs` and `job <id>`: the jobs this node led in detail, and every other job of the group
    /// as its leader last announced it (naming the leader).
    fn jobs(&self, id: Option<&str>) -> CommandReply {
        let directory = self.node.rainstorm().directory();
        let elsewhere = directory.jobs().filter(|(job, _)| !self.book.led(job));
        match id {
            None => {
                let others: Vec<String> = elsewhere
                    .map(|(job, known)| format!("{job}  {known}  {}\n", known.notice.spec))
                    .collect();
                let mut output =
                    if self.book.is_empty() && !others.is_empty() { String::new() } else { self.book.list() };
                output.extend(others);
                CommandReply { ok: true, output }
            }
            Some(id) => {
                let describe = self.node.rainstorm().describe();
                if let Some(mut output) = self.book.show(id, &describe) {
                    // Who leads it now, in the words every other node uses.
                    if let Some((_, known)) = directory.jobs().find(|(job, _)| job.to_string() == id) {
                        let at = output.find('\n').map_or(output.len(), |i| i + 1);
                        output.insert_str(at, &format!("  {known}\n"));
                    }
                    return CommandReply { ok: true, output };
                }
                // Not led here: what its leader announced, and the tasks of it this node runs.
                let known = directory.jobs().find(|(job, _)| job.to_string() == id).map(|(_, k)| k);
                let prefix = format!("job {id} ");
                let here: Vec<&String> = describe.iter().filter(|l| l.starts_with(&prefix)).collect();
                if known.is_none() && here.is_empty() {
                    return CommandReply {
                        ok: false,
                        output: format!("no job {id} known to this node; see `jobs`\n"),
                    };
                }
                let mut output = match known {
                    Some(k) => {
                        format!("job {id}: {}\n  {k}\n  destination {}\n", k.notice.spec, k.notice.dest)
                    }
                    None => format!("job {id}: led by another node\n"),
                };
                if !here.is_empty() {
                    output.push_str("  its tasks here:\n");
                }
                for line in here {
                    output.push_str(&format!("    {line}\n"));
                }
                CommandReply { ok: true, output }
            }
        }
    }

    fn command(&mut self, line: &str) -> CommandReply {
        let command = match Command::parse(line) {
            Ok(c) => c,
            Err(e) => return CommandReply { ok: false, output: format!("{e}\n") },
        };
        if command == Command::ReloadKeys {
            return self.reload_keys();
        }
        match self.node.handle_command(self.clock.now(), command) {
            Ok(out) => CommandReply { ok: true, output: out.to_string() },
            Err(e) => CommandReply { ok: false, output: format!("{e}\n") },
        }
    }

    /// `reload_keys`: the keys in the config file (or the key file) replace the node's keys (a
    /// rollover step).
    fn reload_keys(&mut self) -> CommandReply {
        let (path, read) = match (&self.cfg.key_file, &self.cfg.cluster_key_file) {
            (Some(config), _) => (config.clone(), crate::config::codec_from_file(config)),
            (None, Some(keys)) => (keys.clone(), crate::config::codec_from_key_file(keys)),
            (None, None) => {
                let output = "this node's cluster key was read from no file (it came from \
                    --cluster-key or RAINSTORM_CLUSTER_KEY, or there is none); changing it takes a restart\n";
                return CommandReply { ok: false, output: output.into() };
            }
        };
        let codec = match read {
            Ok(codec) => codec,
            Err(e) => return CommandReply { ok: false, output: format!("keys not changed: {e}\n") },
        };
        let summary = codec.describe_keys();
        match self.node.set_codec(codec.clone()) {
            Ok(()) => {
                *self.checked_with.write().unwrap_or_else(std::sync::PoisonError::into_inner) = codec;
                info!(keys = %summary, file = %path.display(), "cluster keys reloaded");
                CommandReply { ok: true, output: format!("cluster keys reloaded: {summary}\n") }
            }
            Err(e) => CommandReply { ok: false, output: format!("keys not changed: {e}\n") },
        }
    }

    async fn drain(&mut self) {
        loop {
            while let Some(t) = self.node.poll_transmit_unsealed() {
                self.send(t).await;
            }
            let Some(event) = self.node.poll_event() else { break };
            let event = match event {
                NodeEvent::Hydfs(HydfsEvent::ReadData { op, offset, total, bytes }) => {
                    if let Some(PendingOp { sink: Some(sink), .. }) = self.ops.get_mut(&op) {
                        sink.set_total(total);
                        sink.write(offset, bytes);
                    }
                    continue;
                }
                NodeEvent::Hydfs(HydfsEvent::OpDone { op, result }) if self.ops.contains_key(&op) => {
                    self.op_done(op, result);
                    continue;
                }
                NodeEvent::Program(call) => {
                    self.programs.call(call);
                    continue;
                }
                NodeEvent::Rainstorm(e) => {
                    self.book.on_event(&e);
                    if matches!(
                        e,
                        RainstormEvent::JobCompleted { .. }
                            | RainstormEvent::JobFailed { .. }
                            | RainstormEvent::JobLost { .. }
                    ) {
                        // A job's whole trace is on disk before its command hears it ended.
                        if let Some(trace) = &mut self.output_trace {
                            use std::io::Write as _;
                            let _ = trace.flush();
                        }
                    }
                    if let Some(job) = led_job(&e) {
                        if let Some(w) = self.watchers.get(&job) {
                            let ended = matches!(
                                e,
                                RainstormEvent::JobCompleted { .. }
                                    | RainstormEvent::JobFailed { .. }
                                    | RainstormEvent::JobLost { .. }
                            );
                            if w.send(e.clone()).is_err() || ended {
                                self.watchers.remove(&job);
                            }
                        }
                    }
                    if let RainstormEvent::Outputs { job, tuples } = &e {
                        if let Some(trace) = &mut self.output_trace {
                            use std::io::Write as _;
                            let at = unix_micros();
                            for tuple in tuples {
                                let _ = writeln!(trace, "{job} out {at} {}", tuple.id.line);
                            }
                        }
                        continue;
                    }
                    if let RainstormEvent::SourceSent { job, first, last, .. } = &e {
                        if let Some(trace) = &mut self.output_trace {
                            use std::io::Write as _;
                            let _ = writeln!(trace, "{job} sent {} {first} {last}", unix_micros());
                        }
                    }
                    NodeEvent::Rainstorm(e)
                }
                other => other,
            };
            log_event(&event);
            if let NodeEvent::Membership(e) = event {
                let _ = self.events.send(e);
            }
        }
        // Every node's trace lines reach the file within one round of events, not only when
        // its buffer fills (a worker hears of no job's end).
        if let Some(trace) = &mut self.output_trace {
            use std::io::Write as _;
            let _ = trace.flush();
        }
        if !self.programs.is_empty() {
            let hosted = self.node.rainstorm().hosted().into_iter().collect();
            self.programs.retain(&hosted);
        }
    }

    fn submit(
        &mut self,
        now: rainstorm_core::Time,
        op: ClientOp,
        sink: Option<Sink>,
        reply: oneshot::Sender<Result<OpOutput, HydfsError>>,
    ) {
        let (kind, name) = (op.command(), op.name().to_string());
        match self.node.submit(now, op) {
            Ok(id) => {
                let started = std::time::Instant::now();
                self.ops.insert(id, PendingOp { op: kind, name, started, sink, reply });
            }
            Err(e) => {
                warn!(event = "hydfs_op_failed", op = kind, %name, "{kind} {name} refused: {e}");
                if let Some(sink) = sink {
                    sink.abandon();
                }
                let _ = reply.send(Err(e));
            }
        }
    }

    /// A command's operation finished: complete its download, log one line, answer.
    fn op_done(&mut self, id: OpId, mut result: Result<OpOutput, HydfsError>) {
        let Some(p) = self.ops.remove(&id) else { return };
        if let Some(sink) = p.sink {
            match &result {
                Ok(OpOutput::Downloaded { len, .. }) => {
                    if let Err(e) = sink.finish(*len) {
                        result = Err(HydfsError::Storage(e));
                    }
                }
                _ => sink.abandon(),
            }
        }
        let ms = p.started.elapsed().as_millis() as u64;
        match &result {
            Ok(out) if quiet_when_done(p.op, ms) => {
                debug!(event = "hydfs_op", op = p.op, name = %p.name, ms, "{} {} done in {ms} ms{}", p.op, p.name, describe_output(out))
            }
            Ok(out) => {
                info!(event = "hydfs_op", op = p.op, name = %p.name, ms, "{} {} done in {ms} ms{}", p.op, p.name, describe_output(out))
            }
            Err(e) => {
                warn!(event = "hydfs_op_failed", op = p.op, name = %p.name, ms, "{} {} failed after {ms} ms: {e}", p.op, p.name)
            }
        }
        let _ = p.reply.send(result);
    }

    /// The text of `store` and `list_mem_ids`.
    fn inspect(&self, what: &FileCommand) -> String {
        let h = self.node.hydfs();
        let me = self.cfg.advertise;
        match what {
            FileCommand::Store => {
                let mut out = format!("{me}  ring id {}\n", RingId::of_node(me));
                let files = h.local_files();
                if files.is_empty() {
                    out.push_str("  (no files)\n");
                }
                for (name, rid, d, len) in files {
                    out.push_str(&format!(
                        "  {name}  ring id {rid}  {len} bytes, {} merged appends, {} pending\n",
                        d.merged, d.pending
                    ));
                }
                out
            }
            _ => {
                let ids: BTreeMap<SocketAddr, String> = self
                    .node
                    .membership()
                    .members()
                    .map(|m| (m.id.addr, m.id.to_string()))
                    .chain(std::iter::once((me, self.node.id().to_string())))
                    .collect();
                let mut out = String::new();
                for (rid, addr) in h.ring().members() {
                    let id = ids.get(&addr).cloned().unwrap_or_else(|| addr.to_string());
                    let mark = if addr == me { "  (this node)" } else { "" };
                    out.push_str(&format!("{rid}  {id}{mark}\n"));
                }
                if out.is_empty() {
                    out.push_str("(not in a group)\n");
                }
                out
            }
        }
    }

    /// Sends one frame: a datagram at once; a stream frame through its (peer, lane) writer,
    /// which has a large frame sealed on another thread ([`Writers::send_frame`]).
    async fn send(&mut self, t: Transmit<Frame>) {
        match t.channel {
            Channel::Datagram => {
                if self.cfg.drop_rate > 0.0 && self.drop_rng.gen_bool(self.cfg.drop_rate) {
                    return;
                }
                if let Err(e) = self.udp.send_to(&t.payload.seal(), t.to).await {
                    debug!(to = %t.to, error = %e, "UDP send failed");
                }
            }
            Channel::Stream => self.writers.send_frame(t.to, t.lane, t.payload),
        }
    }
}

fn describe_output(out: &OpOutput) -> String {
    match out {
        OpOutput::Written { replicas, .. } => format!(" on {} replicas", replicas.len()),
        OpOutput::Downloaded { len, from, .. } => {
            format!(": {len} bytes from {}", from.map_or("the cache".to_string(), |a| a.to_string()))
        }
        OpOutput::Merged { summary, .. } => format!(": {} appends ordered", summary.appended),
        OpOutput::Listed { replicas, .. } => format!(": {} replicas", replicas.len()),
        OpOutput::MultiAppended { nodes, .. } => format!(" on {} nodes", nodes.len()),
        OpOutput::Meta { meta, from, .. } => format!(": {} writes from {from}", meta.all_writes().count()),
        OpOutput::Part { bytes, from, .. } => format!(": {} bytes from {from}", bytes.len()),
        OpOutput::Deleted { replicas, .. } => format!(" on {} replicas", replicas.len()),
    }
}

/// Wall-clock time in microseconds since the Unix epoch (for log lines and traces that
/// processes on one machine compare).
fn unix_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

/// The job of a leader-side event (the ones a command following its job wants).
fn led_job(e: &RainstormEvent) -> Option<JobId> {
    match e {
        RainstormEvent::JobReceived { job, .. }
        | RainstormEvent::TaskScheduled { job, .. }
        | RainstormEvent::TaskCompleted { job, .. }
        | RainstormEvent::TaskFailed { job, .. }
        | RainstormEvent::RolledBack { job, .. }
        | RainstormEvent::Outputs { job, .. }
        | RainstormEvent::Progress { job, .. }
        | RainstormEvent::JobCompleted { job, .. }
        | RainstormEvent::JobFailed { job, .. }
        | RainstormEvent::JobLost { job, .. }
        | RainstormEvent::JobTakenOver { job, .. }
        | RainstormEvent::JobDeposed { job, .. } => Some(*job),
        // Every commit: the console follows outputs and progress instead.
        RainstormEvent::Committed { .. }
        | RainstormEvent::TaskStarted { .. }
        | RainstormEvent::JobAbandoned { .. }
        | RainstormEvent::SourceSent { .. } => None,
    }
}

/// One log line per membership event, with fields grep can find (`event=suspect` ...).
fn log_event(event: &NodeEvent) {
    let e = match event {
        NodeEvent::Membership(e) => e,
        NodeEvent::Hydfs(e) => return log_hydfs_event(e),
        NodeEvent::Rainstorm(e) => return log_rainstorm_event(e),
        NodeEvent::Program(_) => return,
    };
    match e {
        MembershipEvent::SelfJoined { id, members } => {
            info!(event = "joined", %id, members, "joined the group as {id}")
        }
        MembershipEvent::JoinFailed { reason } => warn!(event = "join_failed", "join failed: {reason}"),
        MembershipEvent::SelfDeclaredFailed { old } => {
            warn!(event = "declared_failed", %old, "this node was declared failed as {old}; rejoining as a new member")
        }
        MembershipEvent::SelfRefuted { incarnation } => {
            info!(event = "refute", %incarnation, "refuted a suspicion of this node (incarnation {incarnation})")
        }
        MembershipEvent::SelfLeft { id } => info!(event = "left", %id, "left the group"),
        MembershipEvent::MemberJoined { member } => info!(event = "member_joined", %member, "NEW {member}"),
        MembershipEvent::MemberSuspected { member, incarnation } => {
            warn!(event = "suspect", %member, %incarnation, "SUS {member} (incarnation {incarnation})")
        }
        MembershipEvent::MemberAlive { member, incarnation } => {
            info!(event = "alive", %member, %incarnation, "ALIVE {member} refuted (incarnation {incarnation})")
        }
        MembershipEvent::MemberFailed { member, cause } => {
            warn!(event = "failed", %member, cause = ?cause, "DEL {member} ({cause:?})")
        }
        MembershipEvent::MemberLeft { member } => info!(event = "member_left", %member, "LEFT {member}"),
        MembershipEvent::ModeChanged { suspicion } => {
            info!(event = "mode", suspicion, "suspicion {}", if *suspicion { "enabled" } else { "disabled" })
        }
    }
}

/// One log line per RainStorm event (outputs are streamed to the console, not logged; per-batch
/// lines are at DEBUG).
fn log_rainstorm_event(event: &rainstorm_core::rainstorm::RainstormEvent) {
    use rainstorm_core::rainstorm::RainstormEvent as E;
    match event {
        E::JobReceived { job, spec } => info!(event = "job_received", %job, "job {job} received: {spec}"),
        E::TaskScheduled { job, task, attempt, host, restart } => info!(
            event = "task_scheduled",
            %job, %task, attempt, %host, restart,
            "job {job}: task {task} (attempt {attempt}) scheduled on {host}{}",
            if *restart { " (moved)" } else { "" }
        ),
        E::TaskStarted { job, task, attempt, resumed } => info!(
            event = "task_started",
            %job, %task, attempt, resumed,
            "job {job}: task {task} (attempt {attempt}) started{}",
            if *resumed { " from the job's last checkpoint" } else { "" }
        ),
        E::TaskCompleted { job, task } => {
            info!(event = "task_completed", %job, %task, "job {job}: task {task} completed")
        }
        E::TaskFailed { job, task, attempt, reason } => {
            warn!(event = "task_failed", %job, %task, attempt, "job {job}: task {task} failed: {reason}")
        }
        E::RolledBack { job, attempt, checkpoint, reason, .. } => warn!(
            event = "job_rolled_back",
            %job, attempt, checkpoint = ?checkpoint,
            "job {job} rolls back to {} as attempt {attempt}: {reason}",
            checkpoint.map_or_else(|| "its start".to_owned(), |c| format!("checkpoint {c}"))
        ),
        E::Outputs { .. } => {}
        E::Committed { job, checkpoint, outputs } => debug!(
            event = "job_committed",
            %job, checkpoint = ?checkpoint, outputs,
            "job {job}: {} durable; {outputs} outputs committed",
            checkpoint.map_or_else(|| "its start".to_owned(), |c| format!("checkpoint {c}"))
        ),
        E::Progress { job, input_lines, stages } => {
            let lines_read = rainstorm_core::rainstorm::lines_read(stages);
            let counts: Vec<String> =
                stages.iter().map(|s| format!("s{} in {} out {}", s.stage, s.consumed, s.emitted)).collect();
            debug!(
                event = "job_progress",
                %job, lines_read, input_lines,
                "job {job}: {lines_read}/{input_lines} input lines read; {}",
                counts.join(", ")
            )
        }
        E::JobCompleted { job, outputs, restarts } => info!(
            event = "job_completed",
            %job, outputs, restarts,
            "job {job} completed: {outputs} outputs, {restarts} rollbacks"
        ),
        E::JobFailed { job, reason } => warn!(event = "job_failed", %job, "job {job} failed: {reason}"),
        E::JobLost { job, reason } => {
            warn!(event = "job_lost", %job, "job {job} ended: {reason}; the output written so far stays")
        }
        E::JobTakenOver { job, term, previous, checkpoint, outputs } => warn!(
            event = "job_taken_over",
            %job, term, %previous, checkpoint = ?checkpoint, outputs,
            "job {job} taken over from {previous}, which left the group: this node leads it as term {term}, \
             resuming from {} with {outputs} outputs already in its destination",
            checkpoint.map_or_else(|| "its start".to_owned(), |c| format!("checkpoint {c}"))
        ),
        E::JobDeposed { job, leader, term } => warn!(
            event = "job_deposed",
            %job, %leader, term,
            "job {job}: {leader} took it over as term {term}; this node commits nothing more for it"
        ),
        E::JobAbandoned { job, reason } => {
            warn!(event = "job_abandoned", %job, "job {job} abandoned: {reason}; its tasks here were dropped")
        }
        E::SourceSent { job, task, attempt, first, last } => debug!(
            event = "source_sent",
            %job, %task, attempt, first, last,
            "job {job}: {task} (attempt {attempt}) sent input lines {first}..={last}"
        ),
    }
}

/// One log line per HyDFS event worth an operator's attention (per-request lines at DEBUG).
fn log_hydfs_event(event: &rainstorm_core::hydfs::HydfsEvent) {
    use rainstorm_core::hydfs::HydfsEvent;
    match event {
        HydfsEvent::OpDone { op, result: Err(e) } => {
            warn!(event = "hydfs_op_failed", op, "operation {op} failed: {e}")
        }
        HydfsEvent::OpDone { .. } | HydfsEvent::WriteCommitted { .. } | HydfsEvent::ReadData { .. } => {}
        // Per request: debug only (`hydfs_op` says at INFO when a command completes).
        HydfsEvent::Handled { what, name, from } => {
            debug!(event = "hydfs_request", what, %name, %from, "{what} {name} (from {from})")
        }
        HydfsEvent::MergeCommitted { name, replicas, .. } => {
            debug!(event = "merged", %name, replicas = replicas.len(), "merged {name} on {} replicas", replicas.len())
        }
        HydfsEvent::CorruptionDetected { name, stamp, part } => {
            warn!(event = "corrupt_block", %name, %stamp, part, "corrupt block of {name} detected; fetching it again")
        }
        HydfsEvent::PartLost { name, stamp, part, why } => {
            warn!(event = "lost_block", %name, %stamp, part, "block of {name} part {part} is lost ({why}); fetching it again")
        }
        HydfsEvent::FileDropped { name } => {
            info!(event = "file_dropped", %name, "handed {name} to its owners")
        }
        HydfsEvent::FileDeleted { name, create } => {
            info!(event = "file_deleted", %name, %create, "dropped the copy of deleted file {name} (created by {create})")
        }
        HydfsEvent::StorageFailed { reason } => warn!(event = "storage_failed", "storage failed: {reason}"),
    }
}

/// Says what the node found in its data dir: the files it kept from its last run, the parts it
/// dropped (fetched again from replicas), and any damage to its index.
fn log_recovery(r: &rainstorm_core::hydfs::Recovery, data_dir: &std::path::Path, took_ms: u64) {
    let dir = data_dir.display();
    if r.files == 0 && r.lost_parts == 0 && r.index_damage.is_none() {
        info!(event = "hydfs_recovered", files = 0, took_ms, "no HyDFS files kept in {dir}: starting empty");
    } else {
        info!(
            event = "hydfs_recovered", files = r.files, parts = r.parts, bytes = r.bytes, lost_parts = r.lost_parts,
            stray_blocks = r.stray_blocks, took_ms,
            "kept {} HyDFS file(s) ({} bytes in {} parts) from {dir}, checked in {took_ms} ms; {} lost or corrupt parts dropped (fetched again from replicas), {} stray blocks removed",
            r.files, r.bytes, r.parts, r.lost_parts, r.stray_blocks
        );
    }
    if let Some(damage) = &r.index_damage {
        warn!(event = "hydfs_index_damaged", "the HyDFS index in {dir} is damaged: {damage}");
    }
    if let Some(why) = &r.snapshot_error {
        warn!(
            event = "hydfs_index_not_compacted",
            "could not write a fresh HyDFS index snapshot in {dir} ({why}); running on the index recovered"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rainstorm_core::hydfs::FileName;
    use rainstorm_core::rainstorm::TaskId;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    /// The operations a node makes by the thousand log their success at debug level while
    /// fast, and every other command, a slow one (a second or more) at info; the names are
    /// the ones the operations report, so a renamed operation is not silently logged loudly.
    #[test]
    fn frequent_fast_operations_are_logged_quietly_and_the_rest_at_info() {
        let name = FileName::new("f").unwrap();
        let stamp = rainstorm_core::hydfs::Stamp::MIN;
        let frequent = [
            ClientOp::Append { name: name.clone(), data: Vec::new() },
            ClientOp::Meta { name: name.clone() },
            ClientOp::ReadPart { name: name.clone(), stamp, part: 0, prefer: None },
        ];
        for op in &frequent {
            assert!(quiet_when_done(op.command(), 0), "{}", op.command());
            assert!(quiet_when_done(op.command(), SLOW_OP_MS - 1), "{}", op.command());
            assert!(!quiet_when_done(op.command(), SLOW_OP_MS), "a slow {} is logged", op.command());
        }
        for op in [
            ClientOp::Create { name: name.clone(), data: Vec::new() },
            ClientOp::Merge { name: name.clone() },
            ClientOp::Delete { name: name.clone() },
        ] {
            assert!(!quiet_when_done(op.command(), 0), "{}", op.command());
        }
    }

    /// Records the level, target and `event` field of every event.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<(tracing::Level, String, String)>>>);

    struct EventField(String);

    impl Visit for EventField {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "event" {
                self.0 = value.to_string();
            }
        }
        fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recorder {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut field = EventField(String::new());
            event.record(&mut field);
            let meta = event.metadata();
            self.0.lock().unwrap().push((*meta.level(), meta.target().to_string(), field.0));
        }
    }

    fn logged(events: &[NodeEvent]) -> Vec<(tracing::Level, String, String)> {
        let recorder = Recorder::default();
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::with_default(subscriber, || events.iter().for_each(log_event));
        let lines = recorder.0.lock().unwrap().clone();
        lines
    }

    #[test]
    fn per_request_and_per_batch_lines_are_debug_and_what_an_operator_follows_is_info() {
        let from: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let name = FileName::new("f").unwrap();
        let job = JobId { n: 1, tag: 7 };
        let task = TaskId { stage: 0, index: 0 };
        let member = rainstorm_core::MemberId::new(from, 5);
        let events = [
            NodeEvent::Hydfs(HydfsEvent::Handled { what: "append", name: name.clone(), from }),
            NodeEvent::Hydfs(HydfsEvent::MergeCommitted {
                name: name.clone(),
                replicas: vec![from],
                merged_hash: 1,
            }),
            NodeEvent::Rainstorm(RainstormEvent::SourceSent { job, task, attempt: 1, first: 1, last: 64 }),
            NodeEvent::Rainstorm(RainstormEvent::TaskStarted { job, task, attempt: 1, resumed: false }),
            NodeEvent::Rainstorm(RainstormEvent::TaskCompleted { job, task }),
            NodeEvent::Rainstorm(RainstormEvent::JobCompleted { job, outputs: 3, restarts: 0 }),
            NodeEvent::Membership(MembershipEvent::MemberFailed {
                member,
                cause: rainstorm_core::membership::FailureCause::NoAck,
            }),
        ];
        let lines = logged(&events);
        let level = |event: &str| {
            lines
                .iter()
                .find(|(_, _, e)| e == event)
                .map(|(l, t, _)| (*l, t.clone()))
                .unwrap_or_else(|| panic!("no {event} line"))
        };
        assert_eq!(level("hydfs_request").0, tracing::Level::DEBUG);
        assert_eq!(level("merged").0, tracing::Level::DEBUG);
        assert_eq!(level("source_sent").0, tracing::Level::DEBUG);
        assert_eq!(level("task_started").0, tracing::Level::INFO);
        assert_eq!(level("task_completed").0, tracing::Level::INFO);
        assert_eq!(level("job_completed").0, tracing::Level::INFO);
        assert_eq!(level("failed").0, tracing::Level::WARN);
    }
}
