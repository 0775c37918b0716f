//! The node task: one tokio task owns the [`Node`] and is the only code that touches it.
//!
//! Sockets, the console and the control socket send [`Input`]s through a channel; the task feeds
//! them to the node with the current time, sends every frame the node emits (UDP datagrams
//! directly, stream frames on short-lived TCP connections), logs and broadcasts every event, and
//! sleeps until the node's next deadline. Invariant: after every input all outputs are drained
//! before the task waits again.

use crate::clock::Clock;
use crate::config::RuntimeConfig;
use crate::net::{read_frame, write_frame};
use rainstorm_core::command::Command;
use rainstorm_core::membership::{MembershipEvent, Role};
use rainstorm_core::node::{NodeConfig, NodeEvent};
use rainstorm_core::wire::{ClusterKey, Codec, MAX_STREAM_FRAME_BYTES};
use rainstorm_core::{Channel, Node, Transmit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How long a stream connection attempt may take before the send counts as failed.
const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What reaches the node task.
pub enum Input {
    Datagram(Vec<u8>),
    StreamFrame(Vec<u8>),
    SendFailed {
        to: SocketAddr,
        error: String,
    },
    Command {
        line: String,
        reply: oneshot::Sender<CommandReply>,
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
    events: broadcast::Sender<NodeEvent>,
    pub advertise: SocketAddr,
    pub data_dir: PathBuf,
}

impl NodeHandle {
    /// Runs one console command line.
    pub async fn command(&self, line: &str) -> CommandReply {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Input::Command { line: line.to_string(), reply }).await.is_err() {
            return CommandReply { ok: false, output: "node is stopping".into() };
        }
        rx.await.unwrap_or(CommandReply { ok: false, output: "node is stopping".into() })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
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

/// A node that was started: its handle, an event receiver subscribed before it ran, its task.
pub struct StartedNode {
    pub handle: NodeHandle,
    pub events: broadcast::Receiver<NodeEvent>,
    pub task: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot bind {what} {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
}

/// Binds the sockets, starts the node (a member starts joining at once) and its tasks.
pub async fn start(cfg: RuntimeConfig) -> Result<StartedNode, StartError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|source| StartError::DataDir { path: cfg.data_dir.clone(), source })?;
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
    let codec = match &cfg.cluster_key {
        Some(key) => Codec::keyed(ClusterKey::from_passphrase(key), Vec::new()),
        None => {
            warn!("no cluster key set: frames are checksummed but not authenticated; anyone who can reach this port can join");
            Codec::plain()
        }
    };
    let now = clock.now();
    let mut node = Node::new(
        NodeConfig {
            role: cfg.role,
            addr: cfg.advertise,
            introducer: cfg.introducer,
            membership: cfg.membership.clone(),
            hydfs: Default::default(),
            codec,
        },
        now,
        seed,
    );
    info!(
        role = ?cfg.role, addr = %cfg.advertise, introducer = %cfg.introducer, seed,
        suspicion = cfg.membership.suspicion_at_start, "node starting"
    );
    if cfg.role == Role::Member {
        let _ = node.handle_command(now, Command::Join);
    }
    let (tx, rx) = mpsc::channel(1024);
    let (events, first_rx) = broadcast::channel(1024);
    let udp = Arc::new(udp);
    tokio::spawn(receive_datagrams(udp.clone(), tx.clone()));
    tokio::spawn(accept_streams(tcp, tx.clone()));
    let handle = NodeHandle {
        tx: tx.clone(),
        events: events.clone(),
        advertise: cfg.advertise,
        data_dir: cfg.data_dir.clone(),
    };
    let task =
        NodeTask { node, clock, udp, tx, events, drop_rng: ChaCha8Rng::seed_from_u64(seed ^ 0xd20b), cfg };
    let task = tokio::spawn(task.run(rx));
    Ok(StartedNode { handle, events: first_rx, task })
}

/// A seed for the node's RNG from the OS clock and the process id (uniqueness is what matters).
fn os_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15
}

async fn receive_datagrams(udp: Arc<UdpSocket>, tx: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match udp.recv_from(&mut buf).await {
            Ok((n, _from)) => {
                if tx.send(Input::Datagram(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            Err(e) => debug!(error = %e, "UDP receive error"),
        }
    }
}

async fn accept_streams(listener: TcpListener, tx: mpsc::Sender<Input>) {
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match read_frame(&mut stream, MAX_STREAM_FRAME_BYTES).await {
                    Ok(Some(frame)) => {
                        if tx.send(Input::StreamFrame(frame)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        debug!(%peer, error = %e, "stream closed");
                        return;
                    }
                }
            }
        });
    }
}

struct NodeTask {
    node: Node,
    clock: Clock,
    udp: Arc<UdpSocket>,
    tx: mpsc::Sender<Input>,
    events: broadcast::Sender<NodeEvent>,
    drop_rng: ChaCha8Rng,
    cfg: RuntimeConfig,
}

impl NodeTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let mut stopping: Option<(tokio::time::Instant, oneshot::Sender<()>)> = None;
        loop {
            self.drain().await;
            let deadline = self.node.poll_timeout().map(|t| self.clock.instant_of(t));
            let stop_at = stopping.as_ref().map(|(at, _)| *at);
            let wake = match (deadline, stop_at) {
                (Some(d), Some(s)) => Some(d.min(s.into_std())),
                (d, s) => d.or(s.map(|s| s.into_std())),
            };
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    let now = self.clock.now();
                    match input {
                        Input::Datagram(bytes) => self.node.handle_frame(now, Channel::Datagram, &bytes),
                        Input::StreamFrame(bytes) => self.node.handle_frame(now, Channel::Stream, &bytes),
                        Input::SendFailed { to, error } => self.node.handle_send_failed(now, to, &error),
                        Input::Command { line, reply } => {
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
            }
            if let Some((at, _)) = &stopping {
                if tokio::time::Instant::now() >= *at {
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

    fn command(&mut self, line: &str) -> CommandReply {
        let command = match Command::parse(line) {
            Ok(c) => c,
            Err(e) => return CommandReply { ok: false, output: format!("{e}\n") },
        };
        match self.node.handle_command(self.clock.now(), command) {
            Ok(out) => CommandReply { ok: true, output: out.to_string() },
            Err(e) => CommandReply { ok: false, output: format!("{e}\n") },
        }
    }

    async fn drain(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            self.send(t).await;
        }
        while let Some(event) = self.node.poll_event() {
            log_event(&event);
            let _ = self.events.send(event);
        }
    }

    async fn send(&mut self, t: Transmit) {
        match t.channel {
            Channel::Datagram => {
                if self.cfg.drop_rate > 0.0 && self.drop_rng.gen_bool(self.cfg.drop_rate) {
                    return;
                }
                if let Err(e) = self.udp.send_to(&t.payload, t.to).await {
                    debug!(to = %t.to, error = %e, "UDP send failed");
                }
            }
            Channel::Stream => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    if let Err(error) = send_stream(t.to, &t.payload).await {
                        debug!(to = %t.to, %error, "stream send failed");
                        let _ = tx.send(Input::SendFailed { to: t.to, error }).await;
                    }
                });
            }
        }
    }
}

async fn send_stream(to: SocketAddr, frame: &[u8]) -> Result<(), String> {
    let mut stream = tokio::time::timeout(STREAM_CONNECT_TIMEOUT, TcpStream::connect(to))
        .await
        .map_err(|_| format!("connecting to {to} timed out"))?
        .map_err(|e| format!("cannot connect to {to}: {e}"))?;
    write_frame(&mut stream, frame).await.map_err(|e| format!("sending to {to}: {e}"))
}

/// One log line per membership event, with fields grep can find (`event=suspect` ...).
fn log_event(event: &NodeEvent) {
    let e = match event {
        NodeEvent::Membership(e) => e,
        NodeEvent::Hydfs(e) => return log_hydfs_event(e),
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

/// One log line per HyDFS event worth an operator's attention.
fn log_hydfs_event(event: &rainstorm_core::hydfs::HydfsEvent) {
    use rainstorm_core::hydfs::HydfsEvent;
    match event {
        HydfsEvent::OpDone { op, result: Err(e) } => {
            warn!(event = "hydfs_op_failed", op, "operation {op} failed: {e}")
        }
        HydfsEvent::OpDone { .. } | HydfsEvent::WriteCommitted { .. } | HydfsEvent::ReadData { .. } => {}
        HydfsEvent::Handled { what, name, from } => {
            info!(event = "hydfs_request", what, %name, %from, "{what} {name} (from {from})")
        }
        HydfsEvent::MergeCommitted { name, replicas, .. } => {
            info!(event = "merged", %name, replicas = replicas.len(), "merged {name} on {} replicas", replicas.len())
        }
        HydfsEvent::CorruptionDetected { name, stamp, part } => {
            warn!(event = "corrupt_block", %name, %stamp, part, "corrupt block of {name} detected; fetching it again")
        }
        HydfsEvent::FileDropped { name } => {
            info!(event = "file_dropped", %name, "handed {name} to its owners")
        }
        HydfsEvent::StorageFailed { reason } => warn!(event = "storage_failed", "storage failed: {reason}"),
    }
}
