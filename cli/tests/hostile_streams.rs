//! A node's TCP port under hostile connections, on a real process: many idle connections must
//! neither make it spin nor take the file descriptors its files need, and connections that
//! announce large frames and then stall must cost only the bytes they sent.
//!
//! The two tests run one at a time (each measures one node's CPU or memory), each on a cluster
//! of its own.

use rainstorm_cli::cluster::{http_get, ClusterArgs, LocalCluster};
use rainstorm_runtime::control;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A cluster in a directory of its own, removed when the test ends (kept, with the
/// node's log, when it fails).
struct Setup {
    c: LocalCluster,
    dir: PathBuf,
}

impl Setup {
    fn start(name: &str, nodes: u16, port: u16) -> Setup {
        let dir = std::env::temp_dir().join(format!("rainstorm-hostile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let args = ClusterArgs { period_ms: 200, ..ClusterArgs::local(nodes, port, dir.join("cluster")) };
        let c = LocalCluster::start(args, PathBuf::from(env!("CARGO_BIN_EXE_rainstorm")))
            .expect("the node starts");
        Setup { c, dir }
    }

    /// Node 0's address: the node under attack.
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.c.port(0)))
    }

    fn pid(&self) -> u32 {
        self.c.nodes[0].child.id()
    }

    /// Runs a command on node 0, giving up after `within` (a node out of descriptors may
    /// never answer).
    fn ctl_within(&self, line: &str, within: Duration) -> Result<String, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let socket = control::socket_path(&self.c.data_dir(0));
        let line = line.to_owned();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let reply = rt.block_on(control::request(&socket, &line)).map_err(|e| format!("{e:#}"));
            let _ = tx.send(reply.and_then(|r| if r.ok { Ok(r.output) } else { Err(r.output) }));
        });
        rx.recv_timeout(within).unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.c.stop();
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmData`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the node runs");
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).expect("the field");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number of KiB")
}

/// CPU time (user and system) of process `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the node runs");
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a command name") + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_sec = rustix::param::clock_ticks_per_second();
    Duration::from_millis(ticks * 1000 / per_sec)
}

/// Descriptors process `pid` holds.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The `stats` line `name <n>`'s number.
fn stat(stats: &str, name: &str) -> Option<u64> {
    stats.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The soft limit of this process's descriptors is set to `soft` (at most the hard limit).
fn set_soft_fd_limit(soft: u64) -> u64 {
    let now = getrlimit(Resource::Nofile);
    let soft = now.maximum.map_or(soft, |hard| soft.min(hard));
    setrlimit(Resource::Nofile, Rlimit { current: Some(soft), maximum: now.maximum }).expect("setrlimit");
    soft
}

/// 1,500 idle connections, past the node's default limit of 1,024: the node closes one
/// connection for each past the limit and counts it, does not spin, and still serves a HyDFS
/// create promptly. The node starts
/// under the usual default soft limit of 1,024 descriptors, as a service does.
#[test]
fn idle_connections_past_the_limit_neither_spin_the_node_nor_starve_its_files() {
    const CONNECTIONS: usize = 1_500;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let hard = getrlimit(Resource::Nofile).maximum.unwrap_or(u64::MAX);
    if hard < CONNECTIONS as u64 + 200 {
        eprintln!("skipped: the hard limit of descriptors ({hard}) is below {}", CONNECTIONS + 200);
        return;
    }
    let before = set_soft_fd_limit(1024);
    // Three nodes: a create needs three replicas, and the others' answers reach node 0 through
    // connections it accepts while under attack.
    let s = Setup::start("idle", 3, 19_800);
    set_soft_fd_limit(hard);
    let pid = s.pid();

    let mut held = Vec::with_capacity(CONNECTIONS);
    let mut failed_in_a_row = 0;
    while held.len() < CONNECTIONS && failed_in_a_row < 3 {
        // A SYN that meets an old connection's TIME_WAIT on the node's side may go unanswered
        // for a while: another attempt takes another local port.
        match TcpStream::connect_timeout(&s.addr(), Duration::from_millis(500)) {
            Ok(stream) => {
                held.push(stream);
                failed_in_a_row = 0;
            }
            Err(e) => {
                // Three in a row: the node stopped accepting, and what follows shows the cause.
                eprintln!("connection {} failed: {e}", held.len() + 1);
                failed_in_a_row += 1;
            }
        }
    }
    eprintln!("{} connections open", held.len());
    std::thread::sleep(Duration::from_millis(500));

    let cpu_before = cpu_time(pid);
    let measured = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let cpu = cpu_time(pid) - cpu_before;
    let share = cpu.as_secs_f64() / measured.elapsed().as_secs_f64();
    eprintln!("node CPU over {:?}: {cpu:?} ({:.1}% of one core)", measured.elapsed(), share * 100.0);

    let local = s.dir.join("hello.txt");
    std::fs::write(&local, "one line\n").unwrap();
    let asked = Instant::now();
    let created = s.ctl_within(&format!("create {} hello.txt", local.display()), Duration::from_secs(5));
    let took = asked.elapsed();
    eprintln!("create under {} connections: {took:?}: {created:?}", held.len());
    let fds = open_fds(pid);
    eprintln!("node descriptors: {fds}");

    assert!(share < 0.5, "the node spins: {:.0}% of a core with idle connections", share * 100.0);
    let created = created.expect("the create is served");
    assert!(created.contains("created"), "{created}");
    assert!(took < Duration::from_secs(5), "the create took {took:?}");
    assert!(fds < 1024 + 100, "the node holds {fds} descriptors: connections past the limit were kept");
    let stats = s.ctl_within("stats", Duration::from_secs(5)).expect("stats");
    let refused = stat(&stats, "connections_refused").expect("stats counts refused connections");
    assert!(refused as usize >= CONNECTIONS - 1024 - 10, "{refused} refused:\n{stats}");
    let metrics = http_get(s.c.port(0), "/metrics").expect("metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("rainstorm_connections_refused_total ")
            && l.split(' ').nth(1).and_then(|v| v.parse::<u64>().ok()) == Some(refused)),
        "the metrics show the refused connections"
    );
    drop(held);
    set_soft_fd_limit(before);
}

/// 200 connections each announce a frame of 16 MiB (the largest accepted), send 1 KiB of it and
/// stall: the node holds what was sent, not 200 × 16 MiB.
#[test]
fn connections_that_announce_large_frames_and_stall_cost_only_what_they_sent() {
    const CONNECTIONS: usize = 200;
    const ANNOUNCED: u32 = 16 << 20;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = Setup::start("stall", 1, 19_810);
    let pid = s.pid();
    std::thread::sleep(Duration::from_millis(300));
    let (rss_before, data_before) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmData"));

    let mut held = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect_timeout(&s.addr(), Duration::from_secs(2)).expect("connect");
        stream.write_all(&ANNOUNCED.to_le_bytes()).unwrap();
        stream.write_all(&[0x5a; 1024]).unwrap();
        held.push(stream);
    }
    std::thread::sleep(Duration::from_secs(2));
    let (rss, data) = (status_kib(pid, "VmRSS"), status_kib(pid, "VmData"));
    let rss_growth = rss.saturating_sub(rss_before) / 1024;
    let data_growth = data.saturating_sub(data_before) / 1024;
    eprintln!(
        "after {CONNECTIONS} stalled frames: RSS {} -> {} MiB (+{rss_growth}), allocated {} -> {} MiB (+{data_growth})",
        rss_before / 1024,
        rss / 1024,
        data_before / 1024,
        data / 1024
    );
    assert!(rss_growth < 200, "RSS grew by {rss_growth} MiB");
    assert!(data_growth < 512, "the node allocated {data_growth} MiB for {CONNECTIONS} KiB received");
    drop(held);
}
