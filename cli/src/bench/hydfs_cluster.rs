//! `bench hydfs-cluster`: HyDFS on a real 10-process loopback cluster (1 s period, replication 3,
//! 1 MiB chunks), driven through the nodes' control sockets, against a raw loopback TCP copy.
//!
//! 1. Raw baseline: one in-process loopback TCP copy of the big file (1 MiB buffers), with and
//!    without an fsync of the destination at the end; three runs (one with `--quick`), each in
//!    a round with a run of 2, while the cluster is up and idle. In the same rounds, for
//!    reference (no target), a copy through the disk: the source read and the destination
//!    written with `O_DIRECT`, then synced, which is what a get moves through the disk.
//! 2. `create` of the big file (three fsync'd replicas) from a non-replica, and `get` of it into
//!    a fresh file on another non-replica, in rounds with the raw copy (the file is deleted
//!    between them), as MiB/s and as ratios of median to median; every got file is compared.
//! 3. 4 KiB appends per second: one client per node, each appending to one shared file, against
//!    the append floor (`append_floor.rs`: the same clients, hops and fsyncs with nothing of HyDFS
//!    in them), in alternating rounds, as many as the raw copy; with what each append cost in CPU
//!    time and context switches, over this process and every node process ([`Work`]).
//! 4. Merge after 1,000 concurrent appends (10 clients × 100): the first and a second merge, then
//!    two replicas read back with `getfromreplica`, compared and checked append by append.
//! 5. Re-replication of a 100 MiB file after kill -9 of one of its replicas (never the
//!    introducer): until `ls` shows three live holders, and until the new replica serves it whole.
//! 6. `get` latency of 40 KiB files with the default 64 MiB cache and with the cache off, with
//!    uniform and Zipf (s = 1) choice among 100 files (a fresh set of files per case).
//! 7. Peak RSS (VmHWM) of every node process.
//!
//! Every time is measured here, around one control-socket request, so each figure includes the
//! control socket's own overhead (connect, one line, the reply). Real processes on a shared
//! machine: the figures vary from run to run.

use anyhow::{anyhow, bail, Context, Result};
use rainstorm_cli::cluster::{parse_member_ids, this_tool, ClusterArgs, LocalCluster};
use rainstorm_core::hydfs::Ring;
use rainstorm_core::NodeAddr;
use rainstorm_runtime::control;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const NODES: u16 = 10;
const MIB: usize = 1 << 20;
const APPEND_BYTES: usize = 4096;
const CACHE_FILE_BYTES: usize = 40 * 1024;
/// The cluster with the default cache; the one with the cache off uses the next hundred ports.
const BASE_PORT: u16 = 28_000;
const NO_CACHE_PORT: u16 = 28_100;
/// The longest any one control request may take before the bench gives up on it.
const REQUEST_LIMIT: Duration = Duration::from_secs(300);

struct Plan {
    size: u64,
    rate_appends_each: usize,
    merge_appends_each: usize,
    rerep_bytes: u64,
    cache_files: usize,
    gets: usize,
    /// Runs of the raw copy, and of the create and the get compared with it.
    runs: usize,
}

impl Plan {
    fn new(quick: bool, size_mib: Option<u64>) -> Plan {
        let size_mib = size_mib.unwrap_or(if quick { 64 } else { 1024 });
        Plan {
            size: size_mib << 20,
            rate_appends_each: if quick { 20 } else { 100 },
            merge_appends_each: if quick { 20 } else { 100 },
            rerep_bytes: if quick { 20 << 20 } else { 100 << 20 },
            cache_files: 100,
            gets: if quick { 100 } else { 500 },
            runs: if quick { 1 } else { 3 },
        }
    }
}

/// Control-socket requests from one thread (each thread makes its own).
struct Ctl {
    rt: tokio::runtime::Runtime,
}

impl Ctl {
    fn new() -> Result<Ctl> {
        Ok(Ctl { rt: tokio::runtime::Builder::new_current_thread().enable_all().build()? })
    }

    /// Runs `line` on the node behind `socket`; an `error` answer is an error.
    fn run(&self, socket: &Path, line: &str) -> Result<String> {
        let reply = self
            .rt
            .block_on(async { tokio::time::timeout(REQUEST_LIMIT, control::request(socket, line)).await })
            .map_err(|_| anyhow!("`{}`: no answer within {REQUEST_LIMIT:?}", short(line)))?
            .with_context(|| format!("`{}` through {}", short(line), socket.display()))?;
        if reply.ok {
            Ok(reply.output)
        } else {
            bail!("`{}` refused: {}", short(line), reply.output.trim())
        }
    }

    /// Runs `line` and times it.
    fn timed(&self, socket: &Path, line: &str) -> (Duration, Result<String>) {
        let t = Instant::now();
        let r = self.run(socket, line);
        (t.elapsed(), r)
    }
}

/// A command line without the bench's long temp paths, for messages.
fn short(line: &str) -> String {
    line.split_whitespace()
        .map(|w| if w.starts_with('/') { w.rsplit('/').next().unwrap_or(w) } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One running cluster with what the bench needs to address its nodes.
struct Cluster {
    c: LocalCluster,
    sockets: Vec<PathBuf>,
    addrs: Vec<NodeAddr>,
    ring: Ring,
}

impl Cluster {
    fn start(root: &Path, name: &str, base_port: u16, cache_mb: Option<u64>) -> Result<Cluster> {
        let args = ClusterArgs { cache_mb, ..ClusterArgs::local(NODES, base_port, root.join(name)) };
        let c = LocalCluster::start(args, this_tool()?)?;
        let sockets: Vec<PathBuf> = (0..NODES).map(|i| control::socket_path(&c.data_dir(i))).collect();
        let addrs: Vec<NodeAddr> = (0..NODES)
            .map(|i| format!("127.0.0.1:{}", c.port(i)).parse().expect("a socket address"))
            .collect();
        let ring = Ring::new(addrs.iter().copied());
        let ctl = Ctl::new()?;
        c.wait_until(Duration::from_secs(30), |_| {
            Ok(sockets.iter().all(|s| {
                ctl.run(s, "list_mem_ids").map(|o| o.lines().count() == NODES as usize).unwrap_or(false)
            }))
        })
        .context("not every node's HyDFS ring lists all ten nodes within 30 s")?;
        Ok(Cluster { c, sockets, addrs, ring })
    }

    fn sock(&self, i: u16) -> &Path {
        &self.sockets[i as usize]
    }

    fn index_of(&self, a: NodeAddr) -> u16 {
        self.addrs.iter().position(|x| *x == a).expect("a node of this cluster") as u16
    }

    /// The indices of a file's replicas on the full ring, primary first.
    fn replicas(&self, name: &str) -> Vec<u16> {
        self.ring.replicas(name, 3).into_iter().map(|a| self.index_of(a)).collect()
    }

    fn pid(&self, i: u16) -> Option<u32> {
        self.c.nodes.iter().find(|n| n.index == i).map(|n| n.child.id())
    }

    /// VmHWM and VmRSS in KiB of every node still running.
    fn memory(&self) -> BTreeMap<u16, (u64, u64)> {
        (0..NODES)
            .filter_map(|i| {
                let pid = self.pid(i)?;
                Some((i, (proc_kib(pid, "VmHWM:")?, proc_kib(pid, "VmRSS:")?)))
            })
            .collect()
    }
}

pub(super) fn proc_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// CPU time and context switches (voluntary and not) spent so far by this process and the
/// cluster's nodes: what an append costs the machine, apart from the kernel's own threads
/// (disk completions, for one).
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct Work {
    cpu: Duration,
    switches: u64,
}

impl Work {
    /// This process (every thread it ever ran, the ended ones too) and every node still running.
    fn now(a: &Cluster) -> Work {
        let mut w = Work::of_self();
        for pid in (0..NODES).filter_map(|i| a.pid(i)) {
            let node = Work::of_process(pid);
            w.cpu += node.cpu;
            w.switches += node.switches;
        }
        w
    }

    /// `getrusage(RUSAGE_SELF)`: it counts the threads that have ended, as the clients' have
    /// (`/proc` does not: its per-thread figures leave with the thread).
    #[allow(unsafe_code)]
    fn of_self() -> Work {
        // SAFETY: `rusage` is plain integers, for which all zeros is a valid value, and
        // `getrusage` only writes the struct it is given a pointer to, which outlives the call.
        let (u, ok) = unsafe {
            let mut u: libc::rusage = std::mem::zeroed();
            let ok = libc::getrusage(libc::RUSAGE_SELF, &mut u) == 0;
            (u, ok)
        };
        if !ok {
            return Work::default();
        }
        let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Work {
            cpu: Duration::from_micros(micros(u.ru_utime) + micros(u.ru_stime)),
            switches: (u.ru_nvcsw + u.ru_nivcsw) as u64,
        }
    }

    /// Summed over the process's threads now running (a node's threads live as long as it does):
    /// nanoseconds on the CPU from `schedstat`, switches from `status`.
    fn of_process(pid: u32) -> Work {
        let mut w = Work::default();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return w };
        for task in tasks.flatten() {
            let dir = task.path();
            let (Ok(sched), Ok(status)) =
                (std::fs::read_to_string(dir.join("schedstat")), std::fs::read_to_string(dir.join("status")))
            else {
                continue;
            };
            let ns: u64 = sched.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
            w.cpu += Duration::from_nanos(ns);
            w.switches += parse_switches(&status);
        }
        w
    }

    /// What was spent from `before` to `self`, per append of `appends`.
    fn per_append(self, before: Work, appends: usize) -> Option<(f64, f64)> {
        (appends > 0).then(|| {
            let n = appends as f64;
            let cpu = self.cpu.saturating_sub(before.cpu).as_secs_f64() * 1e6 / n;
            (cpu, self.switches.saturating_sub(before.switches) as f64 / n)
        })
    }
}

/// Voluntary plus involuntary context switches from a `/proc/<pid>/task/<tid>/status` text.
fn parse_switches(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

// ----- files ---------------------------------------------------------------------------------

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `len` deterministic bytes (xorshift from `seed`) to `path`.
fn generate(path: &Path, len: u64, seed: u64) -> Result<()> {
    let mut rng = XorShift(seed.max(1));
    let mut f = std::io::BufWriter::with_capacity(MIB, File::create(path)?);
    let mut buf = vec![0u8; MIB];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Whether two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; MIB], vec![0u8; MIB]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = f.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// A 4 KiB block that starts with a header line naming its writer and sequence number.
fn append_block(client: usize, seq: usize) -> Vec<u8> {
    let mut b = format!("append client={client} seq={seq:04}\n").into_bytes();
    let fill = b'a' + (client % 26) as u8;
    b.resize(APPEND_BYTES - 1, fill);
    b.push(b'\n');
    b
}

// ----- raw baseline --------------------------------------------------------------------------

/// Copies `src` over loopback TCP into `dst`: from the start to the receiver's last write (and
/// fsync, with `fsync`).
fn raw_copy(src: &Path, dst: &Path, fsync: bool) -> Result<Duration> {
    let _ = std::fs::remove_file(dst);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let dst = dst.to_path_buf();
    let receiver = std::thread::spawn(move || -> std::io::Result<Instant> {
        let (mut s, _) = listener.accept()?;
        let mut f = File::create(&dst)?;
        let mut buf = vec![0u8; MIB];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])?;
        }
        if fsync {
            f.sync_all()?;
        }
        Ok(Instant::now())
    });
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    let mut f = File::open(src)?;
    let mut buf = vec![0u8; MIB];
    loop {
        let n = read_full(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        s.write_all(&buf[..n])?;
    }
    s.shutdown(Shutdown::Write)?;
    let end = receiver.join().map_err(|_| anyhow!("the receiver panicked"))??;
    Ok(end - start)
}

/// Copies `src` over loopback TCP into `dst` through the disk: the source read and the
/// destination written with direct I/O (past the page cache), and synced at the end. That is
/// what a get moves through the disk (the replica reads its copy, the getter writes the
/// download), with nothing else of a get in it. `None` where the file system refuses direct I/O.
fn raw_disk_copy(src: &Path, dst: &Path) -> Result<Option<Duration>> {
    use rainstorm_runtime::direct::{self, AlignedBuf};
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;
    let _ = std::fs::remove_file(dst);
    let Some(source) = direct::open(src, OpenOptions::new().read(true), "bench source") else {
        return Ok(None);
    };
    let Some(sink) =
        direct::open(dst, OpenOptions::new().write(true).create(true).truncate(true), "bench destination")
    else {
        return Ok(None);
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> std::io::Result<Instant> {
        let (mut s, _) = listener.accept()?;
        let mut buf = AlignedBuf::default();
        let mut at = 0u64;
        loop {
            // Fill a whole aligned chunk (or what is left) before each direct write.
            let chunk = buf.take(MIB);
            let mut filled = 0;
            while filled < MIB {
                let n = s.read(&mut chunk[filled..])?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            let span = filled.div_ceil(direct::ALIGN as usize) * direct::ALIGN as usize;
            chunk[filled..span].fill(0);
            sink.write_all_at(&chunk[..span], at)?;
            at += filled as u64;
            if filled < MIB {
                break;
            }
        }
        sink.set_len(at)?;
        sink.sync_data()?;
        Ok(Instant::now())
    });
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    let mut buf = AlignedBuf::default();
    let mut at = 0u64;
    loop {
        let chunk = buf.take(MIB);
        let n = source.read_at(chunk, at)?;
        if n == 0 {
            break;
        }
        s.write_all(&chunk[..n])?;
        at += n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let end = receiver.join().map_err(|_| anyhow!("the receiver panicked"))??;
    Ok(Some(end - start))
}

// ----- statistics ----------------------------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct Lat {
    mean: f64,
    p50: f64,
    p99: f64,
}

/// Mean and percentiles of durations, in ms.
fn lat(v: &[Duration]) -> Lat {
    if v.is_empty() {
        return Lat::default();
    }
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Lat { mean: ms.iter().sum::<f64>() / ms.len() as f64, p50: at(0.50), p99: at(0.99) }
}

/// The middle of `v` (the upper middle of an even count).
fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn median_f64(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Durations in seconds, for a table cell.
fn secs(v: &[Duration]) -> String {
    v.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect::<Vec<_>>().join(", ")
}

fn mibps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-9)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

fn met(b: bool) -> &'static str {
    if b {
        "met"
    } else {
        "NOT met"
    }
}

// ----- the run -------------------------------------------------------------------------------

/// What the summary needs, filled in as the parts run.
#[derive(Default)]
struct Findings {
    raw: Option<Duration>,
    raw_fsync: Option<Duration>,
    /// The raw copy through the disk ([`raw_disk_copy`]), where the file system allows it.
    raw_disk: Option<Duration>,
    create: Option<Duration>,
    get: Option<Duration>,
    got_identical: Option<bool>,
    appends_per_sec: Option<f64>,
    append_floor: Option<f64>,
    merge: Option<Duration>,
    merge_ok: Option<bool>,
    rerep_ls: Option<Duration>,
    rerep_full: Option<Duration>,
    cache_ratio: Vec<(String, f64)>,
    peak_kib: Option<u64>,
    problems: Vec<String>,
}

impl Findings {
    fn problem(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("  problem: {what}");
        self.problems.push(what);
    }
}

pub fn run(quick: bool, size_mib: Option<u64>) -> Result<()> {
    let plan = Plan::new(quick, size_mib);
    let root = std::env::temp_dir().join(format!("rainstorm-bench-hydfs-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let work = root.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = run_in(&plan, &root, &work);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(plan: &Plan, root: &Path, work: &Path) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "HyDFS on a real {NODES}-process loopback cluster: big file {} MiB, replication 3, 1 MiB chunks, 1 s period, {cores} cores, dir {}",
        plan.size >> 20,
        root.display()
    );
    println!("(every HyDFS time is one control-socket request timed here, its overhead included)");
    println!();
    let mut f = Findings::default();

    // --- 1. raw baseline (measured in the rounds of 2) -----------------------------------------
    let src = work.join("big.src");
    eprintln!("generating the {} MiB source file...", plan.size >> 20);
    generate(&src, plan.size, 0x9E37_79B9_7F4A_7C15)?;
    let dst = work.join("big.raw");
    let mut raw = Vec::new();
    let mut raw_fsync = Vec::new();
    let mut raw_disk = Vec::new();

    // --- cluster with the default cache --------------------------------------------------------
    eprintln!("starting the {NODES}-node cluster (default cache) on ports {BASE_PORT}..");
    let mut a = Cluster::start(root, "cache", BASE_PORT, None)?;
    let ctl = Ctl::new()?;

    // --- 2. create and get ------------------------------------------------------------------
    // Rounds of the raw copy (without, then with the fsync), the create and the get, so that the
    // baseline and the cluster meet the same moments of a shared machine; compared median to
    // median. The same name is created, got into a fresh file and deleted again, and the last
    // copy is kept.
    let big = format!("big-{}mib.bin", plan.size >> 20);
    let big_reps = a.replicas(&big);
    let others: Vec<u16> = (1..NODES).filter(|i| !big_reps.contains(i)).collect();
    let (creator, getter) = (others[0], others[1]);
    let mut big_nodes: BTreeSet<u16> = big_reps.iter().copied().collect();
    big_nodes.extend([creator, getter]);
    let got = work.join("big.got");
    let (mut creates, mut gets) = (Vec::new(), Vec::new());
    let mut get_from = String::new();
    for run in 0..plan.runs {
        eprintln!("raw loopback copy, without and with the fsync, round {} of {} ...", run + 1, plan.runs);
        raw.push(raw_copy(&src, &dst, false)?);
        raw_fsync.push(raw_copy(&src, &dst, true)?);
        if let Some(t) = raw_disk_copy(&src, &dst)? {
            raw_disk.push(t);
        }
        let _ = std::fs::remove_file(&dst);
        eprintln!(
            "create {big} from node{creator} (replicas {big_reps:?}), run {} of {} ...",
            run + 1,
            plan.runs
        );
        let (t_create, r) = ctl.timed(a.sock(creator), &format!("create {} {big}", src.display()));
        if let Err(e) = r {
            f.problem(format!("create of the {} MiB file: {e:#}", plan.size >> 20));
            break;
        }
        creates.push(t_create);
        eprintln!("get {big} on node{getter} ...");
        let _ = std::fs::remove_file(&got);
        let (t_get, r) = ctl.timed(a.sock(getter), &format!("get {big} {}", got.display()));
        match r {
            Ok(out) => {
                gets.push(t_get);
                get_from = out
                    .split(" from ")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .unwrap_or("?")
                    .into();
                let same = same_bytes(&src, &got)?;
                if !same {
                    f.problem(format!("the got {big} differs from the source"));
                }
                f.got_identical = Some(f.got_identical.unwrap_or(true) && same);
            }
            Err(e) => f.problem(format!("get of the {} MiB file: {e:#}", plan.size >> 20)),
        }
        let _ = std::fs::remove_file(&got);
        if run + 1 < plan.runs {
            if let Err(e) = ctl.run(a.sock(creator), &format!("delete {big}")) {
                f.problem(format!("delete of the {} MiB file between runs: {e:#}", plan.size >> 20));
                break;
            }
        }
    }
    f.create = (creates.len() == plan.runs).then(|| median(&creates));
    f.get = (gets.len() == plan.runs).then(|| median(&gets));
    // Every round began with the raw copy (a failed one ends the bench), so there is one.
    f.raw = Some(median(&raw));
    f.raw_fsync = Some(median(&raw_fsync));
    f.raw_disk = (raw_disk.len() == raw.len()).then(|| median(&raw_disk));
    println!(
        "## 1. Raw baseline: in-process loopback TCP copy of {} MiB ({} runs, in rounds with the create and the get)",
        plan.size >> 20,
        plan.runs
    );
    println!();
    println!("| variant | median (s) | MiB/s | best (s) | all runs (s) |");
    println!("|---|---:|---:|---:|---|");
    let disk_name = "raw copy through the disk (source read and destination written with O_DIRECT, then synced: what a get moves through the disk)";
    for (name, runs) in
        [("raw copy", &raw), ("raw copy + fsync of the destination", &raw_fsync), (disk_name, &raw_disk)]
    {
        if runs.is_empty() {
            println!("| {name} | not measured: this file system refuses direct I/O | | | |");
            continue;
        }
        let m = median(runs);
        println!(
            "| {name} | {:.2} | {:.0} | {:.2} | {} |",
            m.as_secs_f64(),
            mibps(plan.size, m),
            runs.iter().min().expect("a run").as_secs_f64(),
            secs(runs)
        );
    }
    println!();

    println!(
        "## 2. create and get of the {} MiB file (replicas: {}; median of {} runs each)",
        plan.size >> 20,
        names(&big_reps),
        plan.runs
    );
    println!();
    println!("| operation | median (s) | MiB/s | ÷ raw copy | ÷ raw copy + fsync | target | met (vs raw / vs raw + fsync) | all runs (s) |");
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    let (raw_m, raw_fsync_m) = (f.raw.expect("measured"), f.raw_fsync.expect("measured"));
    for (what, t, runs, target) in [
        (format!("create from node{creator} (3 fsync'd replicas)"), f.create, &creates, 0.30),
        (format!("get on node{getter} (non-replica, served by {get_from})"), f.get, &gets, 0.50),
    ] {
        match t {
            Some(t) => {
                let (r1, r2) =
                    (raw_m.as_secs_f64() / t.as_secs_f64(), raw_fsync_m.as_secs_f64() / t.as_secs_f64());
                println!(
                    "| {what} | {:.2} | {:.0} | {r1:.2} | {r2:.2} | ≥ {target:.2} | {} / {} | {} |",
                    t.as_secs_f64(),
                    mibps(plan.size, t),
                    met(r1 >= target),
                    met(r2 >= target),
                    secs(runs)
                );
            }
            None => println!("| {what} | failed | | | | ≥ {target:.2} | NOT met | {} |", secs(runs)),
        }
    }
    if let (Some(get), Some(disk)) = (f.get, f.raw_disk) {
        println!(
            "\nget ÷ raw copy through the disk: {:.2} (no target: on one disk, the disk's own limit for what a get moves)",
            disk.as_secs_f64() / get.as_secs_f64()
        );
    }
    match f.got_identical {
        Some(same) => println!("\ngot file identical to the source: {}", yes(same)),
        None => println!("\ngot file identical to the source: not checked (the get failed)"),
    }
    println!();

    // --- 3. append rate ---------------------------------------------------------------------
    append_rate(&a, plan, work, &mut f)?;

    // --- 4. merge after concurrent appends ---------------------------------------------------
    merge_after_appends(&a, plan, work, &mut f)?;

    // --- 6a. read latency with the cache ----------------------------------------------------
    let reader: u16 = 3;
    eprintln!("read latency with the default cache ...");
    let with_cache = read_latency(&a, plan, work, reader, &mut f)?;

    // --- 5. re-replication --------------------------------------------------------------------
    let mut memory: BTreeMap<u16, (u64, u64)> = a.memory();
    let victim = rereplication(&mut a, plan, work, &big_nodes, &mut f)?;
    for (i, m) in a.memory() {
        memory.insert(i, m);
    }
    drop(a);

    // --- 6b. read latency without the cache -------------------------------------------------
    eprintln!("starting the cluster with the cache off on ports {NO_CACHE_PORT}..");
    let b = Cluster::start(root, "nocache", NO_CACHE_PORT, Some(0))?;
    eprintln!("read latency with the cache off ...");
    let without_cache = read_latency(&b, plan, work, reader, &mut f)?;
    let memory_b = b.memory();
    drop(b);
    println!(
        "## 6. get latency of {} KiB files from node{reader}: cache 64 MiB vs off",
        CACHE_FILE_BYTES / 1024
    );
    println!();
    println!(
        "{} gets per case, over {} files created from the other nodes (a fresh set per case); ms per get, control socket included",
        plan.gets, plan.cache_files
    );
    println!();
    println!("| choice | cache | served from cache | mean ms | p50 ms | p99 ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for (choice, (c, n)) in ["uniform", "Zipf s=1"].iter().zip(with_cache.iter().zip(&without_cache)) {
        for (label, x) in [("64 MiB", c), ("off", n)] {
            println!(
                "| {choice} | {label} | {}/{} | {:.2} | {:.2} | {:.2} |",
                x.hits, x.gets, x.lat.mean, x.lat.p50, x.lat.p99
            );
        }
    }
    println!();
    println!("| choice | cache ÷ no cache: mean | p50 | p99 |");
    println!("|---|---:|---:|---:|");
    for (choice, (c, n)) in ["uniform", "Zipf s=1"].iter().zip(with_cache.iter().zip(&without_cache)) {
        let r = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
        let mean = r(c.lat.mean, n.lat.mean);
        println!(
            "| {choice} | {mean:.2} | {:.2} | {:.2} |",
            r(c.lat.p50, n.lat.p50),
            r(c.lat.p99, n.lat.p99)
        );
        f.cache_ratio.push((choice.to_string(), mean));
    }
    println!();

    // --- 7. memory ------------------------------------------------------------------------------
    println!("## 7. Peak RSS per node (VmHWM at the end of each cluster's work; target < 128 MiB)");
    println!();
    println!("| node | role in the big-file transfer | cluster with cache: VmHWM MiB | VmRSS MiB | cache-off cluster: VmHWM MiB |");
    println!("|---|---|---:|---:|---:|");
    let mib = |kib: u64| kib as f64 / 1024.0;
    for i in 0..NODES {
        let mut role = Vec::new();
        if i == creator {
            role.push("sent it (create client)".to_string());
        }
        if big_reps.contains(&i) {
            role.push("replica (received it)".to_string());
        }
        if i == getter {
            role.push("received it (get client)".to_string());
        }
        if i == victim {
            role.push("killed in part 5 (figures from just before)".to_string());
        }
        let (hwm, rss) = memory.get(&i).map_or(("?".into(), "?".into()), |(h, r)| {
            (format!("{:.1}", mib(*h)), format!("{:.1}", mib(*r)))
        });
        let hwm_b = memory_b.get(&i).map_or("?".into(), |(h, _)| format!("{:.1}", mib(*h)));
        println!("| node{i} | {} | {hwm} | {rss} | {hwm_b} |", role.join("; "));
    }
    let peak = memory.values().chain(memory_b.values()).map(|(h, _)| *h).max().unwrap_or(0);
    let peak_big = big_nodes.iter().filter_map(|i| memory.get(i)).map(|(h, _)| *h).max().unwrap_or(0);
    f.peak_kib = Some(peak);
    println!();
    println!(
        "max VmHWM: {:.1} MiB over all nodes; {:.1} MiB over the nodes that sent or received the big file — target < 128 MiB: {}",
        mib(peak),
        mib(peak_big),
        met(peak < 128 * 1024)
    );
    println!();

    summary(&f, plan);
    Ok(())
}

fn names(v: &[u16]) -> String {
    v.iter().map(|i| format!("node{i}")).collect::<Vec<_>>().join(", ")
}

// ----- 3. append rate --------------------------------------------------------------------------

fn append_rate(a: &Cluster, plan: &Plan, work: &Path, f: &mut Findings) -> Result<()> {
    let name = "append-rate.log";
    let ctl = Ctl::new()?;
    let init = work.join("append-rate.init");
    std::fs::write(&init, append_block(99, 0))?;
    ctl.run(a.sock(0), &format!("create {} {name}", init.display()))?;
    let blocks: Vec<PathBuf> = (0..NODES)
        .map(|i| {
            let local = work.join(format!("append-rate-{i}.bin"));
            std::fs::write(&local, append_block(i as usize, 0)).map(|()| local)
        })
        .collect::<std::io::Result<_>>()?;
    // Rounds of the floor then the cluster, so that both meet the same moments of a shared
    // machine; compared median to median.
    let mut floor = Vec::new();
    let mut rates = Vec::new();
    let mut times: Vec<Duration> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    // What each append cost the machine, per round: (CPU µs, context switches).
    let (mut floor_cost, mut cost) = (Vec::new(), Vec::new());
    for round in 0..plan.runs {
        eprintln!(
            "append rate, round {}: the floor, then the cluster: {NODES} clients × {} appends ...",
            round + 1,
            plan.rate_appends_each
        );
        let before = Work::now(a);
        match super::append_floor::measure(work, &blocks, plan.rate_appends_each) {
            Ok(rate) => {
                floor.push(rate);
                floor_cost.extend(Work::now(a).per_append(before, NODES as usize * plan.rate_appends_each));
            }
            Err(e) => f.problem(format!("the append floor failed: {e:#}")),
        }
        let before = Work::now(a);
        let (rate, t, e) = cluster_appends(a, plan, name, &blocks)?;
        cost.extend(Work::now(a).per_append(before, t.len()));
        rates.push(rate);
        times.extend(t);
        errors.extend(e);
    }
    if let Some(e) = errors.first() {
        f.problem(format!("{} of the rate appends failed, e.g. {e}", errors.len()));
    }
    let (rate, floor_rate) = (median_f64(&rates), median_f64(&floor));
    f.appends_per_sec = Some(rate);
    f.append_floor = (!floor.is_empty()).then_some(floor_rate);
    let l = lat(&times);
    println!("## 3. 4 KiB appends per second, cluster-wide (one shared file)");
    println!();
    println!(
        "{} rounds; each runs the floor (`append_floor.rs`: the same clients, hops, files and fsyncs with nothing of HyDFS, batched as far as the clients allow), then the cluster.",
        plan.runs
    );
    println!();
    println!(
        "CPU and context switches per append: this process (the clients, and the floor's threads) and every node process, median of the rounds; the kernel's own threads are not counted."
    );
    println!();
    println!("| clients | appends ok | failed | appends/s (median) | all rounds | latency mean ms | p50 ms | p99 ms | CPU µs per append | context switches per append |");
    println!("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    let all = |r: &[f64]| r.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    let (cpu, switches) = median_cost(&cost);
    println!(
        "| {NODES} (one per node, each sequential) | {} | {} | {rate:.0} | {} | {:.1} | {:.1} | {:.1} | {cpu} | {switches} |",
        times.len(),
        errors.len(),
        all(&rates),
        l.mean,
        l.p50,
        l.p99
    );
    if !floor.is_empty() {
        let (cpu, switches) = median_cost(&floor_cost);
        println!(
            "| floor, same clients | | | {floor_rate:.0} | {} | | | | {cpu} | {switches} |",
            all(&floor)
        );
        println!("| cluster ÷ floor | | | {:.2} | | | | | | |", rate / floor_rate.max(1e-9));
    }
    println!();
    Ok(())
}

/// The medians of per-append costs (CPU µs, context switches), formatted; blank if none.
fn median_cost(costs: &[(f64, f64)]) -> (String, String) {
    if costs.is_empty() {
        return (String::new(), String::new());
    }
    let cpu = median_f64(&costs.iter().map(|c| c.0).collect::<Vec<_>>());
    let switches = median_f64(&costs.iter().map(|c| c.1).collect::<Vec<_>>());
    (format!("{cpu:.0}"), format!("{switches:.1}"))
}

/// One round of the cluster's append rate: every client appends its block `rate_appends_each`
/// times to `name`, sequentially, through its own node.
fn cluster_appends(
    a: &Cluster,
    plan: &Plan,
    name: &str,
    blocks: &[PathBuf],
) -> Result<(f64, Vec<Duration>, Vec<String>)> {
    let barrier = Barrier::new(NODES as usize);
    let started = Instant::now();
    let per_client: Vec<(Vec<Duration>, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..NODES)
            .map(|i| {
                let (barrier, local) = (&barrier, &blocks[i as usize]);
                s.spawn(move || -> Result<(Vec<Duration>, Vec<String>)> {
                    let ctl = Ctl::new()?;
                    let line = format!("append {} {name}", local.display());
                    barrier.wait();
                    let mut times = Vec::new();
                    let mut errors = Vec::new();
                    for _ in 0..plan.rate_appends_each {
                        let (t, r) = ctl.timed(a.sock(i), &line);
                        match r {
                            Ok(_) => times.push(t),
                            Err(e) => errors.push(format!("node{i}: {e:#}")),
                        }
                    }
                    Ok((times, errors))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow!("a client panicked"))?).collect::<Vec<_>>()
    })
    .into_iter()
    .collect::<Result<_>>()?;
    let wall = started.elapsed();
    let times: Vec<Duration> = per_client.iter().flat_map(|(t, _)| t.iter().copied()).collect();
    let errors: Vec<String> = per_client.into_iter().flat_map(|(_, e)| e).collect();
    Ok((times.len() as f64 / wall.as_secs_f64(), times, errors))
}

// ----- 4. merge -------------------------------------------------------------------------------

fn merge_after_appends(a: &Cluster, plan: &Plan, work: &Path, f: &mut Findings) -> Result<()> {
    let name = "merge-test.log";
    let each = plan.merge_appends_each;
    let total = each * NODES as usize;
    let ctl = Ctl::new()?;
    let init = work.join("merge.init");
    let mut first = b"create\n".to_vec();
    first.resize(APPEND_BYTES, b'.');
    std::fs::write(&init, &first)?;
    ctl.run(a.sock(0), &format!("create {} {name}", init.display()))?;
    eprintln!("merge: {NODES} clients × {each} concurrent appends ...");
    let barrier = Barrier::new(NODES as usize);
    let started = Instant::now();
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..NODES)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || -> Result<Vec<String>> {
                    let ctl = Ctl::new()?;
                    let local = work.join(format!("merge-{i}.bin"));
                    barrier.wait();
                    let mut errors = Vec::new();
                    for k in 0..each {
                        std::fs::write(&local, append_block(i as usize, k))?;
                        if let Err(e) = ctl.run(a.sock(i), &format!("append {} {name}", local.display())) {
                            errors.push(format!("node{i} append {k}: {e:#}"));
                        }
                    }
                    Ok(errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow!("a client panicked"))?).collect::<Vec<_>>()
    })
    .into_iter()
    .collect::<Result<Vec<Vec<String>>>>()?
    .into_iter()
    .flatten()
    .collect();
    let appends_wall = started.elapsed();
    if let Some(e) = errors.first() {
        f.problem(format!("{} of the {total} merge-test appends failed, e.g. {e}", errors.len()));
    }
    let merger: u16 = 1;
    let (t1, r1) = ctl.timed(a.sock(merger), &format!("merge {name}"));
    let out1 = r1.as_ref().map(|s| s.trim().to_string()).unwrap_or_else(|e| format!("FAILED: {e:#}"));
    let (t2, r2) = ctl.timed(a.sock(merger), &format!("merge {name}"));
    let out2 = r2.as_ref().map(|s| s.trim().to_string()).unwrap_or_else(|e| format!("FAILED: {e:#}"));
    if r1.is_err() || r2.is_err() {
        f.problem(format!("merge of {name}: {out1} / {out2}"));
    }
    if r1.is_ok() {
        f.merge = Some(t1);
    }
    let ls = ctl.run(a.sock(merger), &format!("ls {name}")).unwrap_or_else(|e| format!("ls failed: {e:#}"));
    // Two replicas read back.
    let reps = a.replicas(name);
    let mut copies = Vec::new();
    for &r in &reps[..2] {
        let local = work.join(format!("merge-from-node{r}.got"));
        match ctl.run(
            a.sock(merger),
            &format!("getfromreplica {} {name} {}", a.addrs[r as usize], local.display()),
        ) {
            Ok(_) => copies.push(local),
            Err(e) => f.problem(format!("getfromreplica node{r} {name}: {e:#}")),
        }
    }
    let identical = copies.len() == 2 && same_bytes(&copies[0], &copies[1])?;
    let check = match copies.first() {
        Some(p) => check_appends(&std::fs::read(p)?, each),
        None => Err("no copy read".into()),
    };
    for p in &copies {
        let _ = std::fs::remove_file(p);
    }
    let complete = check.as_ref().is_ok_and(|c| c.complete);
    let ordered = check.as_ref().is_ok_and(|c| c.client_order);
    if !identical {
        f.problem(format!("after the merge, node{} and node{} copies of {name} differ", reps[0], reps[1]));
    }
    if let Err(e) = &check {
        f.problem(format!("merged {name}: {e}"));
    }
    f.merge_ok = Some(identical && complete && ordered);
    println!(
        "## 4. Merge after {total} concurrent 4 KiB appends ({NODES} clients × {each}), replicas {}",
        names(&reps)
    );
    println!();
    println!("| step | time | result |");
    println!("|---|---:|---|");
    println!(
        "| {total} appends, {NODES} clients concurrently | {:.2} s | {:.0} appends/s, {} failed |",
        appends_wall.as_secs_f64(),
        (total - errors.len()) as f64 / appends_wall.as_secs_f64(),
        errors.len()
    );
    println!(
        "| first merge (from node{merger}) | {:.0} ms | target < 500 ms: {}; `{}` |",
        t1.as_secs_f64() * 1e3,
        met(r1.is_ok() && t1 < Duration::from_millis(500)),
        out1
    );
    println!("| second merge | {:.0} ms | `{}` |", t2.as_secs_f64() * 1e3, out2);
    println!(
        "| replicas node{} and node{} identical (getfromreplica) | | {} |",
        reps[0],
        reps[1],
        yes(identical)
    );
    match &check {
        Ok(c) => {
            println!(
                "| all {total} appends present exactly once | | {} ({} blocks after the create) |",
                yes(c.complete),
                c.blocks
            );
            println!("| each client's appends in its own order | | {} |", yes(c.client_order));
        }
        Err(e) => println!("| content check | | NO: {e} |"),
    }
    println!();
    println!("`ls {name}` after the merges:");
    println!("```");
    print!("{ls}");
    println!("```");
    println!();
    Ok(())
}

struct AppendCheck {
    blocks: usize,
    complete: bool,
    client_order: bool,
}

/// Checks a merged file: the create block, then every append block exactly once, each client's
/// in sequence order.
fn check_appends(bytes: &[u8], each: usize) -> Result<AppendCheck, String> {
    if !bytes.len().is_multiple_of(APPEND_BYTES) || bytes.len() < APPEND_BYTES {
        return Err(format!("{} bytes is not a whole number of 4 KiB blocks", bytes.len()));
    }
    let mut blocks = bytes.chunks(APPEND_BYTES);
    if !blocks.next().is_some_and(|b| b.starts_with(b"create\n")) {
        return Err("the file does not start with the create block".into());
    }
    let mut seen = BTreeSet::new();
    let mut last: BTreeMap<usize, usize> = BTreeMap::new();
    let mut client_order = true;
    let mut count = 0;
    for b in blocks {
        count += 1;
        let header =
            String::from_utf8_lossy(&b[..b.iter().position(|&c| c == b'\n').unwrap_or(0)]).to_string();
        let parse = |key: &str| {
            header.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse::<usize>().ok())
        };
        let (Some(c), Some(k)) = (parse("client="), parse("seq=")) else {
            return Err(format!("block {count} has no append header: `{header}`"));
        };
        if b != append_block(c, k).as_slice() {
            return Err(format!("block {count} ({header}) is not the bytes appended"));
        }
        if last.get(&c).is_some_and(|&p| p >= k) {
            client_order = false;
        }
        last.insert(c, k);
        seen.insert((c, k));
    }
    let expected: BTreeSet<(usize, usize)> =
        (0..NODES as usize).flat_map(|c| (0..each).map(move |k| (c, k))).collect();
    Ok(AppendCheck { blocks: count, complete: count == expected.len() && seen == expected, client_order })
}

// ----- 5. re-replication -------------------------------------------------------------------------

/// Returns the killed node.
fn rereplication(
    a: &mut Cluster,
    plan: &Plan,
    work: &Path,
    avoid: &BTreeSet<u16>,
    f: &mut Findings,
) -> Result<u16> {
    let ctl = Ctl::new()?;
    let mib = plan.rerep_bytes >> 20;
    // A name whose replicas exclude the introducer, with a replica that had no part in the big file.
    let (name, victim) = (0..10_000)
        .find_map(|k| {
            let name = format!("rerep-{mib}mib-{k}.bin");
            let reps = a.replicas(&name);
            if reps.contains(&0) {
                return None;
            }
            let v = reps.iter().rev().find(|r| !avoid.contains(r)).copied()?;
            Some((name, v))
        })
        .ok_or_else(|| anyhow!("no file name with a suitable replica set"))?;
    let local = work.join("rerep.src");
    generate(&local, plan.rerep_bytes, 0xD1B5_4A32_D192_ED03)?;
    eprintln!("re-replication: create {name} ({mib} MiB) from node0 ...");
    let (t_create, r) = ctl.timed(a.sock(0), &format!("create {} {name}", local.display()));
    if let Err(e) = r {
        f.problem(format!("create of {name}: {e:#}"));
        return Ok(victim);
    }
    let ls_before = ctl.run(a.sock(0), &format!("ls {name}"))?;
    let before: Vec<String> = ls_rows(&ls_before).into_iter().filter(|(_, h)| *h).map(|(a, _)| a).collect();
    let victim_addr = a.addrs[victim as usize];
    let survivors = Ring::new(a.addrs.iter().copied().filter(|x| *x != victim_addr));
    let after_reps: Vec<NodeAddr> = survivors.replicas(&name, 3);
    let newcomer = after_reps
        .iter()
        .copied()
        .find(|x| !before.contains(&x.to_string()))
        .ok_or_else(|| anyhow!("no new replica expected for {name}"))?;
    let got = work.join("rerep.got");
    // Give the nodes a moment after the create (its replicas acknowledged it already).
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("re-replication: kill -9 node{victim} ({victim_addr}) ...");
    let killed = Instant::now();
    a.c.kill(victim)?;
    let (mut detected, mut listed, mut whole) = (None, None, None);
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut ls_slowest = Duration::ZERO;
    let limit = Duration::from_secs(180);
    let mut last_ls = String::new();
    while killed.elapsed() < limit && (listed.is_none() || whole.is_none()) {
        if detected.is_none() {
            if let Ok(out) = ctl.run(a.sock(0), "list_mem") {
                let prefix = format!("{victim_addr}#");
                if !parse_member_ids(&out).iter().any(|id| id.starts_with(&prefix)) {
                    detected = Some(killed.elapsed());
                }
            }
        }
        if listed.is_none() {
            let (t, r) = ctl.timed(a.sock(0), &format!("ls {name}"));
            ls_slowest = ls_slowest.max(t);
            if let Ok(out) = r {
                let rows = ls_rows(&out);
                let live_holders = rows.iter().filter(|(x, h)| *h && *x != victim_addr.to_string()).count();
                if rows.len() == 3 && live_holders == 3 {
                    listed = Some(killed.elapsed());
                }
                last_ls = out;
            }
        }
        if whole.is_none() {
            let at = killed.elapsed();
            let line = format!("getfromreplica {newcomer} {name} {}", got.display());
            match ctl.run(a.sock(0), &line) {
                Ok(_) => {
                    whole = Some(at);
                    if !same_bytes(&local, &got)? {
                        f.problem(format!(
                            "the re-replicated copy of {name} on {newcomer} differs from the source"
                        ));
                    }
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    let kind = e.rsplit(": ").next().unwrap_or(&e).to_string();
                    *refusals.entry(kind).or_default() += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(&got);
    f.rerep_ls = listed;
    f.rerep_full = whole;
    if listed.is_none() || whole.is_none() {
        f.problem(format!(
            "re-replication of {name} after kill -9 of node{victim}: not complete within {limit:?} (ls: {listed:?}, whole copy: {whole:?}); last ls:\n{last_ls}"
        ));
    }
    let newcomer_i = a.index_of(newcomer);
    let secs = |d: Option<Duration>| {
        d.map_or("not within 180 s".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
    };
    println!(
        "## 5. Re-replication of a {mib} MiB file after kill -9 of one replica (1 s period, suspicion on, repair limit 128 MiB/s)"
    );
    println!();
    println!(
        "`{name}`: created from node0 in {:.2} s on {}; killed node{victim}; new replica node{newcomer_i}",
        t_create.as_secs_f64(),
        before
            .iter()
            .map(|x| format!("node{}", a.index_of(x.parse().expect("an address"))))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("| from kill -9 until | time |");
    println!("|---|---:|");
    println!("| node0's membership list drops node{victim} | {} |", secs(detected));
    println!("| `ls` (node0, polled every 100 ms) shows 3 live replicas holding it | {} |", secs(listed));
    println!(
        "| the new replica node{newcomer_i} serves the whole file (`getfromreplica` polled, bytes checked) | {} |",
        secs(whole)
    );
    println!();
    let refused: Vec<String> = refusals.iter().map(|(k, n)| format!("{n}× `{k}`")).collect();
    println!(
        "polls of the new replica refused before that: {}; slowest `ls` poll {:.0} ms",
        if refused.is_empty() { "none".into() } else { refused.join(", ") },
        ls_slowest.as_secs_f64() * 1e3
    );
    println!();
    Ok(victim)
}

/// `(address, holds it)` per replica row of `ls` output.
fn ls_rows(out: &str) -> Vec<(String, bool)> {
    out.lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| Some((l.split_whitespace().next()?.to_string(), l.contains("holds it:"))))
        .collect()
}

// ----- 6. read latency ---------------------------------------------------------------------------

struct Reads {
    gets: usize,
    hits: usize,
    lat: Lat,
}

/// Uniform then Zipf choice, each over its own fresh set of files.
fn read_latency(c: &Cluster, plan: &Plan, work: &Path, reader: u16, f: &mut Findings) -> Result<[Reads; 2]> {
    let n = plan.cache_files;
    let sets = ["uniform", "zipf"];
    // Create the files from every node but the reader, in parallel.
    let creators: Vec<u16> = (0..NODES).filter(|&i| i != reader).collect();
    let jobs: Vec<(String, PathBuf)> = sets
        .iter()
        .flat_map(|set| {
            (0..n).map(move |k| {
                (format!("cache-{set}-{k:03}.bin"), work.join(format!("cache-{set}-{k:03}.src")))
            })
        })
        .collect();
    for (k, (_, local)) in jobs.iter().enumerate() {
        if !local.exists() {
            generate(local, CACHE_FILE_BYTES as u64, 1000 + k as u64)?;
        }
    }
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = creators
            .iter()
            .enumerate()
            .map(|(t, &node)| {
                let jobs = &jobs;
                let creators = &creators;
                s.spawn(move || -> Result<Vec<String>> {
                    let ctl = Ctl::new()?;
                    let mut errors = Vec::new();
                    for (name, local) in jobs.iter().skip(t).step_by(creators.len()) {
                        if let Err(e) = ctl.run(c.sock(node), &format!("create {} {name}", local.display())) {
                            errors.push(format!("{e:#}"));
                        }
                    }
                    Ok(errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow!("a creator panicked"))?).collect::<Vec<_>>()
    })
    .into_iter()
    .collect::<Result<Vec<Vec<String>>>>()?
    .into_iter()
    .flatten()
    .collect();
    if let Some(e) = errors.first() {
        f.problem(format!("{} creates of the 40 KiB files failed, e.g. {e}", errors.len()));
    }
    let ctl = Ctl::new()?;
    let out = work.join("cache-read.got");
    // Zipf weights 1/(k+1), k = 0..n.
    let weights: Vec<f64> = (0..n).map(|k| 1.0 / (k + 1) as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut results = Vec::new();
    for (s, set) in sets.iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(42 + s as u64);
        let mut times = Vec::new();
        let mut hits = 0;
        let mut failures = Vec::new();
        for _ in 0..plan.gets {
            let k = if *set == "uniform" {
                rng.gen_range(0..n)
            } else {
                let mut x = rng.gen::<f64>() * total;
                let mut k = 0;
                while k + 1 < n && x >= weights[k] {
                    x -= weights[k];
                    k += 1;
                }
                k
            };
            let (name, local) = &jobs[s * n + k];
            let (t, r) = ctl.timed(c.sock(reader), &format!("get {name} {}", out.display()));
            match r {
                Ok(text) => {
                    times.push(t);
                    if text.contains("this node's cache") {
                        hits += 1;
                    }
                    if std::fs::read(&out)? != std::fs::read(local)? {
                        failures.push(format!("get {name} returned other bytes"));
                    }
                }
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        if let Some(e) = failures.first() {
            f.problem(format!(
                "{} of the {set} gets failed or returned wrong bytes, e.g. {e}",
                failures.len()
            ));
        }
        results.push(Reads { gets: times.len(), hits, lat: lat(&times) });
    }
    let _ = std::fs::remove_file(&out);
    let mut it = results.into_iter();
    Ok([it.next().expect("uniform"), it.next().expect("zipf")])
}

// ----- summary --------------------------------------------------------------------------------

fn summary(f: &Findings, plan: &Plan) {
    println!("## Summary");
    println!();
    println!("| target | measured | met |");
    println!("|---|---|---|");
    let (raw, raw_fsync) =
        (f.raw.unwrap_or_default().as_secs_f64(), f.raw_fsync.unwrap_or_default().as_secs_f64());
    for (what, t, target) in [("get", f.get, 0.50), ("create", f.create, 0.30)] {
        match t {
            Some(t) => {
                let (r1, r2) = (raw / t.as_secs_f64(), raw_fsync / t.as_secs_f64());
                println!(
                    "| {what} ≥ {target:.2} × raw loopback copy ({} MiB, medians) | {:.0} MiB/s = {r1:.2} × raw, {r2:.2} × raw + fsync | {} vs raw; {} vs raw + fsync |",
                    plan.size >> 20,
                    mibps(plan.size, t),
                    met(r1 >= target),
                    met(r2 >= target)
                );
            }
            None => println!("| {what} ≥ {target:.2} × raw loopback copy | failed | NOT met |"),
        }
    }
    if let (Some(get), Some(disk)) = (f.get, f.raw_disk) {
        println!(
            "| get against the raw copy through the disk (no target) | {:.2} × | |",
            disk.as_secs_f64() / get.as_secs_f64()
        );
    }
    match f.got_identical {
        Some(b) => println!("| got file identical to the source | {} | {} |", yes(b), met(b)),
        None => println!("| got file identical to the source | not checked | NOT met |"),
    }
    match f.merge {
        Some(t) => println!(
            "| merge after {} concurrent appends < 0.5 s | {:.0} ms | {} |",
            plan.merge_appends_each * NODES as usize,
            t.as_secs_f64() * 1e3,
            met(t < Duration::from_millis(500))
        ),
        None => println!("| merge after concurrent appends < 0.5 s | failed | NOT met |"),
    }
    let ok = f.merge_ok.unwrap_or(false);
    println!("| merged replicas identical, every append once, in client order | {} | {} |", yes(ok), met(ok));
    match f.peak_kib {
        Some(k) => println!(
            "| peak RSS per node < 128 MiB | {:.1} MiB (max VmHWM) | {} |",
            k as f64 / 1024.0,
            met(k < 128 * 1024)
        ),
        None => println!("| peak RSS per node < 128 MiB | not read | NOT met |"),
    }
    let opt =
        |d: Option<Duration>| d.map_or("not reached".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    match (f.appends_per_sec, f.append_floor) {
        (Some(rate), Some(floor)) => println!(
            "| ≥ 5,000 4 KiB appends/s, {NODES} clients (medians) | {rate:.0}/s = {:.2} × the floor of {floor:.0}/s{} | {} |",
            rate / floor.max(1e-9),
            if floor < 5_000.0 { " (the floor itself is below 5,000/s here)" } else { "" },
            met(rate >= 5_000.0)
        ),
        (Some(rate), None) => println!(
            "| ≥ 5,000 4 KiB appends/s, {NODES} clients (medians) | {rate:.0}/s (the floor failed) | {} |",
            met(rate >= 5_000.0)
        ),
        (None, _) => println!("| ≥ 5,000 4 KiB appends/s, {NODES} clients | failed | NOT met |"),
    }
    println!(
        "| (no target) re-replication after kill -9: ls shows 3 holders / new replica serves it whole | {} / {} | — |",
        opt(f.rerep_ls),
        opt(f.rerep_full)
    );
    for (choice, r) in &f.cache_ratio {
        println!("| (no target) mean get latency, cache ÷ no cache, {choice} | {r:.2} | — |");
    }
    println!();
    if f.problems.is_empty() {
        println!("problems seen: none");
    } else {
        println!("problems seen:");
        for p in &f.problems {
            println!("- {p}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_are_the_voluntary_and_the_involuntary_ones_summed() {
        let status = "Name:\tnode\nvoluntary_ctxt_switches:\t4560\nnonvoluntary_ctxt_switches:\t2508\n";
        assert_eq!(parse_switches(status), 7068);
        assert_eq!(parse_switches("Name:\tnode\n"), 0, "no counts, none");
    }

    #[test]
    fn a_cost_per_append_divides_what_was_spent_between() {
        let before = Work { cpu: Duration::from_millis(100), switches: 1_000 };
        let after = Work { cpu: Duration::from_millis(700), switches: 21_000 };
        let (cpu, switches) = after.per_append(before, 1_000).expect("appends were made");
        assert!((cpu - 600.0).abs() < 1e-6, "{cpu}");
        assert!((switches - 20.0).abs() < 1e-9, "{switches}");
        assert_eq!(after.per_append(before, 0), None, "no append, no cost");
    }

    #[test]
    fn this_process_is_seen_spending_cpu() {
        let before = Work::of_self();
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = Work::of_self();
        assert!(after.cpu >= before.cpu + Duration::from_millis(10), "{before:?} → {after:?}");
        let here = Work::of_process(std::process::id());
        assert!(here.cpu > Duration::ZERO && here.switches > 0, "{here:?}");
    }
}
