//! `member` and `introducer`: one node process with a console on stdin and a control socket.
//!
//! Startup problems (a bad config, a port in use, an introducer that does not admit us) end the
//! process with one line naming the cause and a non-zero exit. SIGINT and SIGTERM leave the group
//! gracefully (the others report a leave, not a failure) before the process exits.

use clap::Parser;
use rainstorm_core::membership::{MembershipEvent, Role};
use rainstorm_runtime::config::{
    ConfigInput, HydfsInput, RainstormInput, Scheduling, TimingsInput, MAX_THREADS,
};
use rainstorm_runtime::driver::NodeHandle;
use rainstorm_runtime::lock::DataDirLock;
use rainstorm_runtime::{control, driver, logging};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// A RainStorm node. Flags override the config file; see config/member.example.toml.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, after_help = CONSOLE_HELP)]
pub struct NodeArgs {
    /// TOML config file (flags given here override it).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// UDP and TCP listen address, e.g. 0.0.0.0:7001.
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Address other nodes reach this node at (default: --bind).
    #[arg(long)]
    pub advertise: Option<SocketAddr>,
    /// The introducer's address (members only).
    #[arg(long)]
    pub introducer: Option<SocketAddr>,
    /// Directory for the log file, the control socket and the HyDFS store (`blocks/`). A node
    /// restarted on the same directory keeps its files: it recovers its index, checks every
    /// block's checksum, rejoins as a new member and reconciles with the other replicas (what
    /// it lacks is fetched, what it no longer owns is handed to the owners). Remove the
    /// directory to start empty. One node per directory: a second one started on it is
    /// refused, with the pid and address of the node that holds its `lock` file.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Start in PingAck+S (`on`) or PingAck (`off`) mode.
    #[arg(long, value_parser = ["on", "off"])]
    pub suspicion: Option<String>,
    /// The cluster key (64 hex digits, from `rainstorm keygen`): every frame is authenticated
    /// with a keyed BLAKE3 tag under it. On the command line it is visible to every user in `ps`:
    /// prefer --cluster-key-file (or RAINSTORM_CLUSTER_KEY).
    #[arg(long, env = "RAINSTORM_CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
    /// A file holding the cluster key (first line) and keys also accepted during a rollover
    /// (lines after it), readable by its owner only; `reload_keys` reads it again.
    #[arg(long, conflicts_with = "cluster_key")]
    pub cluster_key_file: Option<PathBuf>,
    /// Drop this fraction (0..1) of outgoing datagrams, for experiments.
    #[arg(long)]
    pub drop_rate: Option<f64>,
    /// Protocol period in ms (one probe per period).
    #[arg(long)]
    pub period_ms: Option<u64>,
    /// Direct ping timeout in ms.
    #[arg(long)]
    pub ping_timeout_ms: Option<u64>,
    /// Suspicion timeout in ms.
    #[arg(long)]
    pub suspicion_timeout_ms: Option<u64>,
    /// Anti-entropy sync interval in ms.
    #[arg(long)]
    pub sync_interval_ms: Option<u64>,
    /// Do not read commands from stdin (the control socket still works).
    #[arg(long)]
    pub no_console: bool,
    /// HyDFS read cache in MiB (0 turns it off; default 64).
    #[arg(long)]
    pub cache_mb: Option<u64>,
    /// How long an operator program may take to answer one batch, in ms (default 30000).
    #[arg(long)]
    pub program_timeout_ms: Option<u64>,
    /// How often the jobs this node leads checkpoint, in ms (default 25): outputs reach the
    /// destination and the console once the checkpoint after them is committed.
    #[arg(long)]
    pub checkpoint_interval_ms: Option<u64>,
    /// Bytes of tuples per batch between tasks (default 65536).
    #[arg(long)]
    pub batch_bytes: Option<u32>,
    /// Where to serve Prometheus metrics (`/metrics`) and the status page (`/`) over HTTP:
    /// `host:port`, or `off`. Default: 127.0.0.1 at this node's port + 1000 (loopback only;
    /// give e.g. 0.0.0.0:8001 to reach it from other hosts).
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Threads of the node's async runtime (default 2, or `threads` in the config file). With 1
    /// the node runs on a single thread, with no hand-offs between threads for each message:
    /// best where several nodes share a machine's cores (`rainstorm cluster` starts its nodes
    /// so). On a machine of its own, 2 or more let a node check and copy large transfers on
    /// several cores at once.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_THREADS)))]
    pub threads: Option<u16>,
    /// How the node's threads are scheduled (or `scheduling` in the config file): `normal`, or
    /// `batch` (Linux SCHED_BATCH): a thread that wakes up then waits for the one running on its
    /// core to block or finish its slice instead of preempting it. Best where several nodes
    /// share a machine's cores (`rainstorm cluster` starts its nodes so): fewer context switches
    /// for the same work, at a few milliseconds' delay at most for a wake-up. Unset: the node
    /// keeps the policy it was started with (`chrt`, a service manager's setting).
    #[arg(long, value_parser = clap::value_parser!(Scheduling))]
    pub scheduling: Option<Scheduling>,
}

const CONSOLE_HELP: &str = "Console commands (stdin, or `rainstorm ctl <data-dir> <command>`):
  membership: list_mem, list_self, join, leave, enable_sus, disable_sus, status_sus, list_suspected, stats,
              reload_keys
  files:      create <local> <hydfs>, get <hydfs> <local>, append <local> <hydfs>, merge <hydfs>,
              ls <hydfs>, store, getfromreplica <node> <hydfs> <local>, list_mem_ids,
              multiappend <hydfs> <node>... <local>...
  streams:    RainStorm <op1> <op2> <hydfs_src> <hydfs_dest> <num_tasks> [--rate <lines/s>], jobs, job <id>
  help        (describes each command)";

impl NodeArgs {
    fn input(&self) -> ConfigInput {
        ConfigInput {
            bind: self.bind,
            advertise: self.advertise,
            introducer: self.introducer,
            data_dir: self.data_dir.clone(),
            suspicion: self.suspicion.as_deref().map(|s| s == "on"),
            lifeguard: None,
            cluster_key: self.cluster_key.clone(),
            cluster_key_file: self.cluster_key_file.clone(),
            accepted_keys: None,
            drop_rate: self.drop_rate,
            metrics_addr: self.metrics_addr.clone(),
            threads: self.threads,
            scheduling: self.scheduling,
            timings: TimingsInput {
                protocol_period_ms: self.period_ms,
                ping_timeout_ms: self.ping_timeout_ms,
                suspicion_timeout_ms: self.suspicion_timeout_ms,
                sync_interval_ms: self.sync_interval_ms,
                ..TimingsInput::default()
            },
            hydfs: HydfsInput { cache_mb: self.cache_mb, ..HydfsInput::default() },
            rainstorm: RainstormInput {
                program_batch_timeout_ms: self.program_timeout_ms,
                checkpoint_interval_ms: self.checkpoint_interval_ms,
                batch_bytes: self.batch_bytes,
                ..Default::default()
            },
            limits: Default::default(),
        }
    }
}

/// Keeps the buffers a node moves data in (a HyDFS chunk or part is up to 1 MiB; a frame a
/// little more) in the allocator's heap once freed, for the next one to reuse.
///
/// By default glibc serves a buffer that large with a fresh `mmap` and unmaps it when it is
/// freed, and gives the top of its heap back to the kernel past 128 KiB free: every chunk a
/// node moves was then faulted in page by page and zeroed by the kernel, and unmapped after, which
/// cost more CPU than copying it (`bench hydfs-cluster`, profiled with `perf`: the page faults,
/// `clear_page` and `munmap` of 1 MiB buffers on the serving and the receiving node). Buffers of
/// up to 4 MiB now come from the heap, which is trimmed only past 128 MiB free. Measured on
/// `bench hydfs-cluster` (these settings alone, through `GLIBC_TUNABLES`): a 1 GiB `get` and
/// create each in about 0.7× the time, with peak RSS per node 95 MiB (under the 128 MiB target).
#[allow(unsafe_code)]
fn keep_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; it is called before this process starts
    // any thread, and its arguments are valid options with in-range values.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

/// Sets this thread's scheduling policy, which the threads it starts from now on inherit.
#[allow(unsafe_code)]
fn apply_scheduling(policy: Scheduling) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let policy = match policy {
            Scheduling::Normal => libc::SCHED_OTHER,
            Scheduling::Batch => libc::SCHED_BATCH,
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid `sched_param` that outlives the call; pid 0 is this thread;
        // both policies take priority 0 and need no privilege.
        if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    match policy {
        Scheduling::Normal => Ok(()),
        Scheduling::Batch => Err(std::io::Error::other("batch scheduling exists on Linux only")),
    }
}

/// Entry point of the `member` and `introducer` binaries.
pub fn main(role: Role) -> ExitCode {
    main_from(role, std::env::args_os())
}

/// Runs a node from command-line arguments (the first one is the program name). Also what
/// `rainstorm member ...` and `rainstorm introducer ...` run.
pub fn main_from(role: Role, args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    keep_large_buffers();
    let args = NodeArgs::parse_from(args);
    let flags = args.input();
    let input = match &args.config {
        Some(path) => match ConfigInput::from_file(path) {
            Ok(file) => flags.or(file),
            Err(e) => return fail(&e.to_string(), 2),
        },
        None => flags,
    };
    let mut cfg = match input.resolve(role) {
        Ok(cfg) => cfg,
        Err(e) => return fail(&e.to_string(), 2),
    };
    if args.cluster_key.is_none() && args.cluster_key_file.is_none() {
        // Keys from the config file can be re-read at run time (`reload_keys`); a flag's
        // cannot (a key file's can: `cfg.cluster_key_file`).
        cfg.key_file = args.config.clone();
    }
    let on_command_line = std::env::args().any(|a| a == "--cluster-key" || a.starts_with("--cluster-key="));
    if on_command_line {
        eprintln!(
            "WARNING: --cluster-key on the command line is visible to every user of this machine \
             (ps, /proc); use --cluster-key-file or RAINSTORM_CLUSTER_KEY"
        );
    }
    // Before the runtime starts any thread: each thread keeps the policy it was created with.
    if let Some(policy) = cfg.scheduling {
        if let Err(e) = apply_scheduling(policy) {
            eprintln!(
                "WARNING: cannot set the {policy} scheduling policy ({e}); the node runs as it was started"
            );
        }
    }
    let built = match cfg.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(usize::from(n)).enable_all().build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}"), 1),
    };
    runtime.block_on(run(role, cfg, !args.no_console))
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

async fn run(role: Role, cfg: rainstorm_runtime::config::RuntimeConfig, console: bool) -> ExitCode {
    let name = match role {
        Role::Introducer => "introducer",
        Role::Member => "member",
    };
    // Before anything is written in the data dir: a second node on it stops here.
    let data_dir_lock = match DataDirLock::acquire(&cfg.data_dir, cfg.advertise) {
        Ok(lock) => lock,
        Err(e) => return fail(&e.to_string(), 1),
    };
    // The guard flushes the log when `run` returns, whichever way.
    let (log, _log_guard) = match logging::init(&cfg.data_dir, &format!("{name}.log")) {
        Ok(log) => log,
        Err(e) => return fail(&format!("cannot open the log in {}: {e}", cfg.data_dir.display()), 1),
    };
    let join_wait = Duration::from_millis(
        (cfg.membership.join_attempts as u64 + 1) * cfg.membership.join_retry.0 + 3_000,
    );
    let keyed = cfg.cluster_key.is_some();
    let started = match driver::start(cfg, data_dir_lock).await {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string(), 1),
    };
    if !keyed {
        eprintln!("WARNING: {}", driver::NO_KEY_WARNING);
    }
    let handle = started.handle.clone();
    let page = started.page;
    let mut events = started.events;
    let socket = match control::serve(handle.clone()) {
        Ok(p) => p,
        Err(e) => return fail(&format!("cannot create the control socket: {e}"), 1),
    };
    if role == Role::Member {
        match wait_for_join(&mut events, join_wait).await {
            Ok(line) => println!("{line}"),
            Err(reason) => return fail(&format!("cannot join: {reason}"), 1),
        }
    }
    println!(
        "{name} {} ready; log {}; control socket {}; type `help` for commands",
        handle.advertise,
        log.display(),
        socket.display()
    );
    match page {
        Some(addr) => println!("status page http://{addr}/ ; Prometheus metrics http://{addr}/metrics"),
        None => {
            println!("no status page or metrics (metrics_addr is off, or its port was taken: see the log)")
        }
    }
    tokio::spawn(print_events(events));
    if console {
        tokio::spawn(console_loop(handle.clone()));
    }
    wait_for_signal().await;
    println!("leaving the group...");
    handle.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_join(
    events: &mut tokio::sync::broadcast::Receiver<MembershipEvent>,
    wait: Duration,
) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| format!("no answer from the introducer within {} s", wait.as_secs()))?;
        match event {
            Ok(MembershipEvent::SelfJoined { id, members }) => {
                return Ok(format!("joined as {id}; {} members", members + 1))
            }
            Ok(MembershipEvent::JoinFailed { reason }) => return Err(reason),
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Prints what a console user must see at once (a new suspicion above all).
async fn print_events(mut events: tokio::sync::broadcast::Receiver<MembershipEvent>) {
    loop {
        let e = match events.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        let line = match e {
            MembershipEvent::MemberSuspected { member, incarnation } => {
                format!("SUS {member} (incarnation {incarnation})")
            }
            MembershipEvent::MemberFailed { member, cause } => format!("DEL {member} ({cause:?})"),
            MembershipEvent::MemberLeft { member } => format!("LEFT {member}"),
            MembershipEvent::MemberJoined { member } => format!("NEW {member}"),
            MembershipEvent::MemberAlive { member, incarnation } => {
                format!("ALIVE {member} (incarnation {incarnation})")
            }
            MembershipEvent::ModeChanged { suspicion } => {
                format!("suspicion {}", if suspicion { "enabled" } else { "disabled" })
            }
            MembershipEvent::SelfDeclaredFailed { old } => {
                format!("this node ({old}) was declared failed; rejoining as a new member")
            }
            MembershipEvent::SelfJoined { id, .. } => format!("joined as {id}"),
            MembershipEvent::JoinFailed { reason } => format!("join failed: {reason}"),
            MembershipEvent::SelfRefuted { incarnation } => {
                format!("refuted a suspicion (incarnation {incarnation})")
            }
            MembershipEvent::SelfLeft { id } => format!("left the group as {id}"),
        };
        println!("{line}");
    }
}

async fn console_loop(handle: NodeHandle) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let cwd = std::env::current_dir().unwrap_or_default();
        let progress = std::sync::Arc::new(rainstorm_runtime::files::Progress::default());
        let (out, streamed) = tokio::sync::mpsc::unbounded_channel();
        let printer = tokio::spawn(crate::progress::print_streamed(streamed));
        let command = handle.command_streaming(&line, &cwd, progress.clone(), out);
        let reply = crate::progress::with_bar(progress, command).await;
        let _ = printer.await;
        if reply.ok {
            print!("{}", reply.output);
        } else {
            print!("error: {}", reply.output);
        }
    }
}

/// Returns at the first SIGINT or SIGTERM (never, if the handlers cannot be installed).
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy of the calling thread, from `/proc` (field 41 of its `stat`).
    fn policy_of_this_thread() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("this thread's stat");
        let after_name = stat.rsplit_once(')').expect("a stat line").1;
        after_name.split_whitespace().nth(38).expect("the policy field").parse().expect("a number")
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_scheduling_policy_applies_to_the_thread_and_the_threads_it_starts() {
        // On a thread of its own: the policy must not leak into the test harness's threads.
        std::thread::spawn(|| {
            assert_eq!(policy_of_this_thread(), libc::SCHED_OTHER as u32);
            apply_scheduling(Scheduling::Batch).expect("batch needs no privilege");
            assert_eq!(policy_of_this_thread(), libc::SCHED_BATCH as u32);
            let child = std::thread::spawn(policy_of_this_thread).join().expect("the child thread");
            assert_eq!(child, libc::SCHED_BATCH as u32, "a thread started after inherits the policy");
            apply_scheduling(Scheduling::Normal).expect("back to normal");
            assert_eq!(policy_of_this_thread(), libc::SCHED_OTHER as u32);
        })
        .join()
        .expect("the test thread");
    }
}
