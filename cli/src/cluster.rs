//! `rainstorm cluster`: a local cluster of real processes on loopback. The introducer listens on
//! `--base-port`, member i on `--base-port + i`, each with its own data dir (`<dir>/node<i>`), log
//! and control socket. Ctrl-C, SIGTERM or SIGHUP (or `--for-secs`) stops them all, gracefully,
//! at any point, the cluster formed or not; and each node gets SIGKILL from the kernel if this
//! process dies without stopping them (SIGKILL), so no node outlives it holding its port. A
//! data dir is created 0700 and the node's console output and stderr in it 0600, like every
//! file the node writes there itself.
//!
//! `--demo` shows failure detection and HyDFS end to end: once the cluster has formed it stores a
//! file whose replicas include the two members it will kill, appends to it from two nodes and
//! merges; then it kills those members with SIGKILL, watches every other member's list until both
//! are gone, reads the file back from a survivor, waits for it to be on three live replicas again,
//! restarts one killed member on the same address (it rejoins as a new member id, with the files
//! its disk kept) and waits until it holds its files again. The verdict gives detection against the guaranteed bound
//! ((2(n−1)+2) periods plus the suspicion timeout) and the 10-period target, and whether the file
//! came back intact.

use crate::ctl::resolve_socket;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rainstorm_runtime::config::Scheduling;
use rainstorm_runtime::control;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Number of nodes, introducer included.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(2..=200))]
    pub nodes: u16,
    /// The introducer's port; members use the following ports.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Directory for the nodes' data dirs (`node0`, `node1`, ...). A cluster started again on
    /// the same directory keeps its HyDFS files: every node recovers its store.
    #[arg(long, default_value = "rainstorm-cluster")]
    pub dir: PathBuf,
    /// Remove the nodes' data dirs under --dir first: the cluster starts with no files.
    #[arg(long)]
    pub fresh: bool,
    /// Start in PingAck+S (`on`) or PingAck (`off`).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub suspicion: String,
    /// Protocol period in ms (the original system used 1000).
    #[arg(long, default_value_t = 1000)]
    pub period_ms: u64,
    /// Drop this fraction of every node's outgoing datagrams.
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// The cluster key (64 hex digits) instead of a new random one. It is written to
    /// `<dir>/cluster.key` (mode 0600), which every node reads with `--cluster-key-file`.
    #[arg(long, env = "RAINSTORM_CLUSTER_KEY", hide_env_values = true)]
    pub cluster_key: Option<String>,
    /// Run without a cluster key: frames are not authenticated, anyone who reaches a node can
    /// join, and nodes run no operator programs. By default the cluster gets a new random key.
    #[arg(long, conflicts_with = "cluster_key")]
    pub no_key: bool,
    /// Kill two members, watch every list drop them, restart one, print a verdict, then stop.
    #[arg(long)]
    pub demo: bool,
    /// Stop the cluster after this many seconds instead of waiting for Ctrl-C.
    #[arg(long)]
    pub for_secs: Option<u64>,
    /// Each node's HyDFS read cache in MiB (0 turns it off; default 64).
    #[arg(long)]
    pub cache_mb: Option<u64>,
    /// How long an operator program may take to answer one batch, in ms (default 30000).
    #[arg(long)]
    pub program_timeout_ms: Option<u64>,
    /// How often the jobs the nodes lead checkpoint, in ms (default 25).
    #[arg(long)]
    pub checkpoint_interval_ms: Option<u64>,
    /// Bytes of tuples per batch between tasks (default 65536).
    #[arg(long)]
    pub batch_bytes: Option<u32>,
    /// Each node traces the outputs of the jobs it leads to `<data dir>/outputs.trace` (for
    /// latency measurements).
    #[arg(skip)]
    pub output_trace: bool,
    /// Serve no metrics or status pages (`--metrics-addr off` on every node).
    #[arg(long)]
    pub no_metrics: bool,
    /// Threads of each node's runtime (`--threads` of each node). Default: this machine's
    /// cores shared out among the nodes, at least 1 (so 1 whenever there are at least as many
    /// nodes as cores: threads beyond the cores only add switching).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub node_threads: Option<u16>,
    /// How each node's threads are scheduled (`--scheduling` of each node): `normal` or
    /// `batch`. Default: `batch` when the nodes outnumber this machine's cores, so that a node
    /// woken up does not preempt another in the middle of its work; otherwise the nodes keep
    /// the policy this command was started with.
    #[arg(long, value_parser = clap::value_parser!(Scheduling))]
    pub node_scheduling: Option<Scheduling>,
}

impl ClusterArgs {
    /// A cluster of `nodes` on `base_port..` kept in `dir`, with the defaults of the command
    /// line (suspicion on, 1 s period, no loss, a new random key, default cache), for tests and
    /// benches.
    pub fn local(nodes: u16, base_port: u16, dir: PathBuf) -> ClusterArgs {
        ClusterArgs {
            nodes,
            base_port,
            dir,
            suspicion: "on".into(),
            period_ms: 1000,
            drop_rate: 0.0,
            cluster_key: None,
            no_key: false,
            fresh: false,
            demo: false,
            for_secs: None,
            cache_mb: None,
            program_timeout_ms: None,
            checkpoint_interval_ms: None,
            batch_bytes: None,
            output_trace: false,
            no_metrics: false,
            node_threads: None,
            node_scheduling: None,
        }
    }
}

/// The cluster key's file in a local cluster's directory.
pub const KEY_FILE: &str = "cluster.key";

/// Writes `key` to a new file at `path` that only its owner may read or write (an existing
/// file is an error, never overwritten).
pub fn write_key_file(path: &std::path::Path, key: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{key}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// One running node process.
pub struct NodeProcess {
    pub index: u16,
    pub port: u16,
    pub data_dir: PathBuf,
    pub child: Child,
}

/// This machine's cores (1 if unknown): what the nodes of a local cluster share.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A set of node processes on loopback, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct LocalCluster {
    pub args: ClusterArgs,
    pub nodes: Vec<NodeProcess>,
    /// The `rainstorm` executable: nodes run as `rainstorm member ...` / `rainstorm introducer ...`.
    tool: PathBuf,
}

impl LocalCluster {
    /// Starts the introducer, then every member, and waits until the introducer lists them all.
    /// `tool` is the `rainstorm` executable that runs each node.
    pub fn start(args: ClusterArgs, tool: PathBuf) -> Result<LocalCluster> {
        if !tool.exists() {
            bail!("{} not found", tool.display());
        }
        std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
        if args.fresh {
            for i in 0..args.nodes {
                let node_dir = args.dir.join(format!("node{i}"));
                match std::fs::remove_dir_all(&node_dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("removing {} (--fresh)", node_dir.display()))
                    }
                    _ => {}
                }
            }
        }
        if !args.no_key {
            let key = match args.cluster_key.clone() {
                Some(key) => key,
                None => rainstorm_runtime::config::new_key().context("making a cluster key")?,
            };
            rainstorm_runtime::config::parse_key(&key).map_err(|e| anyhow!("--cluster-key: {e}"))?;
            let path = args.dir.join(KEY_FILE);
            // A key of an earlier run in this directory is replaced.
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("replacing {}", path.display()))
                }
                _ => {}
            }
            write_key_file(&path, &key)?;
        }
        let mut cluster = LocalCluster { args, nodes: Vec::new(), tool };
        cluster.spawn(0)?;
        cluster.wait_for_socket(0, Duration::from_secs(10))?;
        for i in 1..cluster.args.nodes {
            cluster.spawn(i)?;
        }
        let expected = cluster.args.nodes as usize;
        let indices: Vec<u16> = (0..cluster.args.nodes).collect();
        cluster
            .wait_until(Duration::from_secs(30), |c| {
                Ok(indices.iter().all(|&i| c.members_of(i).map(|m| m.len() == expected).unwrap_or(false)))
            })
            .context("the cluster did not form: not every node lists every other within 30 s")?;
        Ok(cluster)
    }

    pub fn port(&self, index: u16) -> u16 {
        self.args.base_port + index
    }

    /// Threads of each node's runtime: `--node-threads`, else the machine's cores shared out
    /// among the nodes (at least 1).
    fn node_threads(&self) -> u16 {
        self.args.node_threads.unwrap_or_else(|| {
            u16::try_from(cores() / usize::from(self.args.nodes.max(1))).unwrap_or(u16::MAX).clamp(1, 256)
        })
    }

    /// How each node's threads are scheduled: `--node-scheduling`, else batch when the nodes
    /// outnumber the machine's cores, else as this process was started (`None`).
    fn node_scheduling(&self) -> Option<Scheduling> {
        self.args.node_scheduling.or((usize::from(self.args.nodes) > cores()).then_some(Scheduling::Batch))
    }

    /// Node `index`'s status page (its metrics at `/metrics`), at the default address.
    pub fn page(&self, index: u16) -> String {
        format!("http://127.0.0.1:{}/", rainstorm_runtime::config::metrics_port(self.port(index)))
    }

    pub fn data_dir(&self, index: u16) -> PathBuf {
        self.args.dir.join(format!("node{index}"))
    }

    /// Starts (or restarts) node `index` as a new process, which gets SIGKILL if this process
    /// dies.
    pub fn spawn(&mut self, index: u16) -> Result<()> {
        let port = self.port(index);
        let data_dir = self.data_dir(index);
        // The node's own files are its user's alone; so are its console's.
        rainstorm_runtime::private::dir(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let _ = std::fs::remove_file(control::socket_path(&data_dir));
        let bin = if index == 0 { "introducer" } else { "member" };
        let mut cmd = Command::new(&self.tool);
        cmd.arg(bin)
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--suspicion")
            .arg(&self.args.suspicion)
            .arg("--no-console");
        if index > 0 {
            cmd.arg("--introducer").arg(format!("127.0.0.1:{}", self.args.base_port));
        }
        if self.args.period_ms != 1000 {
            cmd.args(timing_flags(self.args.period_ms));
        }
        if self.args.drop_rate > 0.0 {
            cmd.arg("--drop-rate").arg(self.args.drop_rate.to_string());
        }
        if let Some(mb) = self.args.cache_mb {
            cmd.arg("--cache-mb").arg(mb.to_string());
        }
        if let Some(ms) = self.args.program_timeout_ms {
            cmd.arg("--program-timeout-ms").arg(ms.to_string());
        }
        if let Some(ms) = self.args.checkpoint_interval_ms {
            cmd.arg("--checkpoint-interval-ms").arg(ms.to_string());
        }
        if let Some(n) = self.args.batch_bytes {
            cmd.arg("--batch-bytes").arg(n.to_string());
        }
        if self.args.no_metrics {
            cmd.arg("--metrics-addr").arg("off");
        }
        cmd.arg("--threads").arg(self.node_threads().to_string());
        if let Some(policy) = self.node_scheduling() {
            cmd.arg("--scheduling").arg(policy.as_str());
        }
        if self.args.output_trace {
            cmd.env("RAINSTORM_OUTPUT_TRACE", data_dir.join("outputs.trace"));
        }
        // The key reaches a node as a file only its owner reads: never in its environment or
        // on its command line, where its programs or `ps` would see it.
        cmd.env_remove("RAINSTORM_CLUSTER_KEY");
        if !self.args.no_key {
            cmd.arg("--cluster-key-file").arg(self.args.dir.join(KEY_FILE));
        }
        // Appended to across restarts, like the node's own log.
        let console = |name: &str| {
            let path = data_dir.join(name);
            rainstorm_runtime::private::append(&path).with_context(|| format!("opening {}", path.display()))
        };
        let (stdout, stderr) = (console("console.out")?, console("stderr.log")?);
        // The nodes log at `info` unless `RUST_LOG` says otherwise.
        let level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr).env("RUST_LOG", level);
        rainstorm_runtime::children::tie_to_this_process(&mut cmd, Default::default());
        let child = rainstorm_runtime::children::spawn(cmd)
            .with_context(|| format!("starting {bin} on port {port}"))?;
        self.nodes.retain(|n| n.index != index);
        self.nodes.push(NodeProcess { index, port, data_dir, child });
        self.nodes.sort_by_key(|n| n.index);
        Ok(())
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self, index: u16) -> Result<()> {
        let node =
            self.nodes.iter_mut().find(|n| n.index == index).ok_or_else(|| anyhow!("no node {index}"))?;
        node.child.kill()?;
        node.child.wait()?;
        Ok(())
    }

    /// Runs one command on node `index` through its control socket.
    pub fn ctl(&self, index: u16, line: &str) -> Result<String> {
        self.ctl_with_progress(index, line).map(|(output, _)| output)
    }

    /// [`LocalCluster::ctl`], and the `(done, total)` of each transfer progress report the
    /// node sent while the command ran.
    pub fn ctl_with_progress(&self, index: u16, line: &str) -> Result<(String, Vec<(u64, u64)>)> {
        let socket = resolve_socket(&self.data_dir(index).display().to_string(), &self.args.dir)
            .map_err(|e| anyhow!(e))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut reports = Vec::new();
        let reply = rt.block_on(control::request_with_progress(&socket, line, |done, total| {
            reports.push((done, total))
        }))?;
        if reply.ok {
            Ok((reply.output, reports))
        } else {
            bail!("node {index} refused `{line}`: {}", reply.output.trim())
        }
    }

    /// The member ids node `index` lists (itself included), as printed by `list_mem`.
    pub fn members_of(&self, index: u16) -> Result<BTreeSet<String>> {
        Ok(parse_member_ids(&self.ctl(index, "list_mem")?))
    }

    pub fn wait_for_socket(&mut self, index: u16, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.ctl(index, "list_self").is_ok() {
                return Ok(());
            }
            if stop_requested() {
                bail!("stopped by a signal");
            }
            if let Some(node) = self.nodes.iter_mut().find(|n| n.index == index) {
                if let Some(status) = node.child.try_wait()? {
                    let err = std::fs::read_to_string(node.data_dir.join("stderr.log")).unwrap_or_default();
                    let last = err.lines().rev().find(|l| l.contains("error")).unwrap_or("").to_string();
                    bail!("node {index} exited ({status}) at start: {last}");
                }
            }
            if Instant::now() > deadline {
                bail!("node {index} did not open its control socket within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `done` every 100 ms until it holds or `within` passes (or a signal stops
    /// `rainstorm cluster`).
    pub fn wait_until(
        &self,
        within: Duration,
        mut done: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if done(self).unwrap_or(false) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!("not reached within {within:?}");
            }
            if stop_requested() {
                bail!("stopped by a signal");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops every node gracefully (SIGTERM: they leave the group), then kills what remains.
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            if let Ok(None) = node.child.try_wait() {
                send_sigterm(node.child.id());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for node in &mut self.nodes {
            while Instant::now() < deadline {
                if !matches!(node.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        self.nodes.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Set once `rainstorm cluster` got SIGINT, SIGTERM or SIGHUP ([`stop_on_signals`]): the waits of
/// its [`LocalCluster`] end early, and it stops the nodes.
static STOP: AtomicBool = AtomicBool::new(false);

fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// From now on SIGINT, SIGTERM and SIGHUP no longer end this process at once: each sets [`STOP`],
/// and the nodes are stopped as on Ctrl-C.
fn stop_on_signals() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut int, mut term, mut hup) = {
        let _entered = rt.enter();
        (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?, signal(SignalKind::hangup())?)
    };
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        });
        STOP.store(true, Ordering::Relaxed);
    })?;
    Ok(())
}

/// SIGTERM through `kill(1)`: the workspace denies `unsafe`, which `libc::kill` needs.
fn send_sigterm(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

/// Node flags for a protocol period other than the default 1 s, keeping the defaults'
/// proportions: ping timeout 0.3 periods, suspicion timeout 3 periods, sync every 10 periods.
pub fn timing_flags(period_ms: u64) -> Vec<String> {
    let p = period_ms.max(1);
    vec![
        "--period-ms".into(),
        p.to_string(),
        "--ping-timeout-ms".into(),
        (p * 3 / 10).max(1).to_string(),
        "--suspicion-timeout-ms".into(),
        (p * 3).to_string(),
        "--sync-interval-ms".into(),
        (p * 10).to_string(),
    ]
}

/// The body of `GET path` from the HTTP endpoint (metrics and status page) of the local node on
/// `port`, if it answers 200 within 5 s.
pub fn http_get(port: u16, path: &str) -> Result<String> {
    let answer = http_response(port, path)?;
    if !answer.status.contains(" 200 ") {
        bail!("{path} on the node at port {port}: {}", answer.status);
    }
    Ok(answer.body)
}

/// An HTTP answer: its status line, its headers (lower case) and its body.
pub struct HttpAnswer {
    pub status: String,
    pub headers: String,
    pub body: String,
}

/// `GET path` from the HTTP endpoint of the local node on `port`, whatever its status (5 s at
/// most).
pub fn http_response(port: u16, path: &str) -> Result<HttpAnswer> {
    use std::io::{Read, Write};
    let addr = format!("127.0.0.1:{}", rainstorm_runtime::config::metrics_port(port));
    let mut s = std::net::TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no HTTP answer from {addr}"))?;
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Ok(HttpAnswer { status: status.to_owned(), headers: headers.to_ascii_lowercase(), body: body.to_owned() })
}

/// Member ids from `list_mem` output (rows like `  127.0.0.1:7001#1700000000000  0  alive`).
pub fn parse_member_ids(list_mem: &str) -> BTreeSet<String> {
    list_mem
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.contains('#'))
        .map(str::to_string)
        .collect()
}

/// This program, which runs the nodes of a local cluster.
pub fn this_tool() -> Result<PathBuf> {
    std::env::current_exe().context("locating this program")
}

pub fn run(args: ClusterArgs) -> Result<ExitCode> {
    let demo = args.demo;
    let for_secs = args.for_secs;
    let period = Duration::from_millis(args.period_ms);
    println!(
        "starting {} nodes on 127.0.0.1:{}..{} ...",
        args.nodes,
        args.base_port,
        args.base_port + args.nodes - 1
    );
    stop_on_signals()?;
    let started = Instant::now();
    let mut cluster = match LocalCluster::start(args, this_tool()?) {
        // The nodes started so far are stopped already (the cluster was dropped).
        Err(_) if stop_requested() => {
            println!("stopped before the cluster formed");
            return Ok(ExitCode::SUCCESS);
        }
        started => started?,
    };
    println!("cluster formed in {:.1} s:", started.elapsed().as_secs_f64());
    for node in &cluster.nodes {
        let role = if node.index == 0 { "introducer" } else { "member" };
        println!(
            "  node{:<3} {:<10} 127.0.0.1:{}  page {}  log {}/{}.log",
            node.index,
            role,
            node.port,
            cluster.page(node.index),
            node.data_dir.display(),
            role
        );
    }
    println!(
        "each page shows its node's members, ring, files and jobs live; Prometheus metrics at <page>metrics"
    );
    println!("talk to any node: rainstorm ctl node3 list_mem   (`rainstorm ctl node3 help` lists every command, files included)");
    if demo {
        let ok = run_demo(&mut cluster, period)?;
        cluster.stop();
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    // A signal stops the nodes too, with or without `--for-secs`: a cluster stopped with `kill`
    // or by its terminal closing must not leave its nodes running.
    if for_secs.is_none() {
        println!("press Ctrl-C to stop the cluster");
    }
    let until = for_secs.map(|s| Instant::now() + Duration::from_secs(s));
    while !stop_requested() && until.is_none_or(|t| Instant::now() < t) {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("stopping...");
    cluster.stop();
    Ok(ExitCode::SUCCESS)
}

/// Kills two members and checks every other list drops them within the bound (10 periods).
fn run_demo(cluster: &mut LocalCluster, period: Duration) -> Result<bool> {
    let n = cluster.args.nodes;
    if n < 4 {
        bail!("--demo needs at least 4 nodes");
    }
    let victims = [n - 1, n - 2];
    let victim_ids: BTreeSet<String> = victims
        .iter()
        .map(|&v| cluster.ctl(v, "list_self").map(|s| s.split_whitespace().next().unwrap_or("").to_string()))
        .collect::<Result<_>>()?;
    let file = DemoFile::store(cluster, &victims)?;
    std::thread::sleep(period * 2);
    println!("killing node{} and node{} with SIGKILL ({})", victims[0], victims[1], join(&victim_ids));
    let killed_at = Instant::now();
    for v in victims {
        cluster.kill(v)?;
    }
    let survivors: Vec<u16> = (0..n).filter(|i| !victims.contains(i)).collect();
    // The documented target (10 periods) holds with high probability; the guarantee is that each
    // member probes every other at least once per 2(n-1) periods, then waits out the suspicion.
    let target = period * 10;
    let bound = period * (2 * (n as u32 - 1) + 2) + period * 3;
    let mut first: Option<Duration> = None;
    let mut pending: BTreeSet<u16> = survivors.iter().copied().collect();
    while !pending.is_empty() && killed_at.elapsed() < bound * 2 && !stop_requested() {
        for &i in pending.clone().iter() {
            let listed = cluster.members_of(i).unwrap_or_default();
            if listed.is_disjoint(&victim_ids) {
                let t = killed_at.elapsed();
                first.get_or_insert(t);
                println!("  node{i} dropped both after {:.1} s", t.as_secs_f64());
                pending.remove(&i);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = killed_at.elapsed();
    let detected = pending.is_empty();
    let intact = file.read_back(cluster, survivors[1])?;
    let recopied = file.wait_for_copies(cluster, survivors[0], &victims, killed_at, bound);
    println!("restarting node{} on the same address...", victims[0]);
    let restarted_at = Instant::now();
    cluster.spawn(victims[0])?;
    cluster.wait_for_socket(victims[0], Duration::from_secs(10))?;
    let new_id = cluster.ctl(victims[0], "list_self")?.split_whitespace().next().unwrap_or("").to_string();
    let rejoined = cluster
        .wait_until(target * 2, |c| {
            Ok(survivors.iter().all(|&i| c.members_of(i).map(|m| m.contains(&new_id)).unwrap_or(false)))
        })
        .is_ok();
    println!(
        "  node{} rejoined as {new_id} (a new member id): {}",
        victims[0],
        if rejoined { "listed by every member" } else { "NOT listed everywhere" }
    );
    let given_back = file.wait_until_held(cluster, victims[0], restarted_at, bound);
    let files_ok = intact && recopied && given_back;
    println!(
        "verdict (HyDFS): {} — {} read back intact after both replicas crashed; {}; the restarted node {}",
        if files_ok { "PASS" } else { "FAIL" },
        file.name,
        if recopied { "back on 3 live replicas" } else { "NOT back on 3 live replicas" },
        if given_back { "was given its copy again" } else { "did NOT get its copy back" },
    );
    let within = detected && all <= bound && files_ok;
    println!(
        "verdict: {} — both crashes left every list in {:.1} s{} (guaranteed bound {} s; target {} s {}) at a {} ms period; files {}",
        if within && rejoined { "PASS" } else { "FAIL" },
        all.as_secs_f64(),
        first.map(|f| format!(", the first list in {:.1} s", f.as_secs_f64())).unwrap_or_default(),
        bound.as_secs(),
        target.as_secs(),
        if all <= target { "met" } else { "missed this time: it holds with high probability, not always" },
        period.as_millis(),
        if files_ok { "intact" } else { "NOT intact" },
    );
    Ok(within && rejoined)
}

/// The demo's HyDFS file: stored where the two crashes hit it, with appends from two nodes.
struct DemoFile {
    name: String,
    expected: Vec<u8>,
    dir: PathBuf,
}

impl DemoFile {
    /// Picks a name whose replicas include both `victims`, creates it from node 1 (8 MiB), appends
    /// one line each from nodes 2 and 3, and merges.
    fn store(cluster: &LocalCluster, victims: &[u16; 2]) -> Result<DemoFile> {
        use rainstorm_core::hydfs::Ring;
        let addrs: Vec<std::net::SocketAddr> =
            (0..cluster.args.nodes).map(|i| ([127, 0, 0, 1], cluster.port(i)).into()).collect();
        let ring = Ring::new(addrs.iter().copied());
        let hit = |name: &str| {
            let r = ring.replicas(name, 3);
            victims.iter().all(|v| r.contains(&addrs[*v as usize]))
        };
        let name = (0..10_000)
            .map(|k| format!("demo/readings-{k}.csv"))
            .find(|n| hit(n))
            .ok_or_else(|| anyhow!("no file name lands on node{} and node{}", victims[0], victims[1]))?;
        let dir = cluster.args.dir.join("demo-files");
        std::fs::create_dir_all(&dir)?;
        let base = demo_bytes(8 << 20);
        let extra = ["appended by node2\n", "appended by node3\n"];
        std::fs::write(dir.join("base.csv"), &base)?;
        for (i, line) in extra.iter().enumerate() {
            std::fs::write(dir.join(format!("append{i}.txt")), line)?;
        }
        let path = |f: &str| dir.join(f).display().to_string();
        let t = Instant::now();
        cluster.ctl(1, &format!("create {} {name}", path("base.csv")))?;
        println!(
            "stored {name} (8 MiB) from node1 in {:.2} s; its replicas include node{} and node{}",
            t.elapsed().as_secs_f64(),
            victims[0],
            victims[1]
        );
        cluster.ctl(2, &format!("append {} {name}", path("append0.txt")))?;
        cluster.ctl(3, &format!("append {} {name}", path("append1.txt")))?;
        let merged = cluster.ctl(4, &format!("merge {name}"))?;
        println!("appended a line from node2 and from node3; {}", merged.trim());
        let mut expected = base;
        for line in extra {
            expected.extend_from_slice(line.as_bytes());
        }
        Ok(DemoFile { name, expected, dir })
    }

    /// Reads the file from `from`; true if it has the base and both appends (in either order).
    fn read_back(&self, cluster: &LocalCluster, from: u16) -> Result<bool> {
        let out = self.dir.join("read-back.csv");
        let t = Instant::now();
        let reply = cluster.ctl(from, &format!("get {} {}", self.name, out.display()));
        let got = std::fs::read(&out).unwrap_or_default();
        let base_len = self.expected.len() - 36;
        let ok = reply.is_ok()
            && got.len() == self.expected.len()
            && got[..base_len] == self.expected[..base_len]
            && ["appended by node2\n", "appended by node3\n"]
                .iter()
                .all(|l| got[base_len..].windows(l.len()).filter(|w| *w == l.as_bytes()).count() == 1);
        match reply {
            Ok(_) if ok => println!(
                "  node{from} read {} back intact ({} bytes) in {:.2} s",
                self.name,
                got.len(),
                t.elapsed().as_secs_f64()
            ),
            Ok(_) => println!("  node{from} read {} back but its content is WRONG", self.name),
            Err(e) => println!("  node{from} could NOT read {}: {e}", self.name),
        }
        Ok(ok)
    }

    /// Waits until three live nodes hold the file (asked through `from`).
    fn wait_for_copies(
        &self,
        cluster: &LocalCluster,
        from: u16,
        dead: &[u16; 2],
        since: Instant,
        within: Duration,
    ) -> bool {
        let dead: Vec<String> = dead.iter().map(|d| format!("127.0.0.1:{} ", cluster.port(*d))).collect();
        let ok = cluster
            .wait_until(within, |c| {
                let ls = c.ctl(from, &format!("ls {}", self.name)).unwrap_or_default();
                let live_holders = ls
                    .lines()
                    .filter(|l| {
                        l.contains("holds it") && !dead.iter().any(|d| l.trim_start().starts_with(d.as_str()))
                    })
                    .count();
                Ok(live_holders >= 3)
            })
            .is_ok();
        if ok {
            println!(
                "  {} back on 3 live replicas {:.1} s after the crashes",
                self.name,
                since.elapsed().as_secs_f64()
            );
        }
        ok
    }

    /// Waits until node `index` (restarted at `t` on its data dir) lists the file in its `store`
    /// (at once when its disk kept the file; else once a replica has given it back).
    fn wait_until_held(&self, cluster: &LocalCluster, index: u16, t: Instant, within: Duration) -> bool {
        let ok = cluster
            .wait_until(within, |c| Ok(c.ctl(index, "store").unwrap_or_default().contains(&self.name)))
            .is_ok();
        if ok {
            println!(
                "  node{index} (restarted on its data dir) holds {} again {:.1} s after its restart",
                self.name,
                t.elapsed().as_secs_f64()
            );
        }
        ok
    }
}

/// Deterministic CSV-like demo content of `len` bytes.
fn demo_bytes(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut row = 0u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        row += 1;
        out.extend_from_slice(format!("{row},{},{:x}\n", x % 1000, x).as_bytes());
    }
    out.truncate(len);
    out
}

fn join(ids: &BTreeSet<String>) -> String {
    ids.iter().cloned().collect::<Vec<_>>().join(", ")
}
