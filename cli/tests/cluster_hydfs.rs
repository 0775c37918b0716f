//! HyDFS on real processes and sockets: `introducer` and `member` processes on loopback, files
//! written and read through their control sockets, members crashed with SIGKILL and restarted.
//! Timings use a 200 ms protocol period, as the membership tests do, so failures are detected
//! quickly; every re-replication bound is derived from the membership tests' detection bound plus
//! two anti-entropy rounds and a transfer margin.

use rainstorm_cli::cluster::{ClusterArgs, LocalCluster};
use rainstorm_core::hydfs::Ring;
use rainstorm_runtime::control;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const PERIOD_MS: u64 = 200;
/// Members pull the files they should hold this often (the HyDFS default).
const ANTI_ENTROPY: Duration = Duration::from_secs(2);
/// Room for the copying itself once a pull has started.
const TRANSFER_MARGIN: Duration = Duration::from_secs(10);

/// The membership tests' bound: each member alone detects a crash within (2(n−1)+2) periods plus
/// the suspicion timeout (3 periods); twice that leaves room for a loaded machine.
fn detection_bound(nodes: u16) -> Duration {
    let periods = 2 * (nodes as u64 - 1) + 2 + 3;
    Duration::from_millis(2 * periods * PERIOD_MS)
}

/// Detection, then two anti-entropy rounds, then the copy.
fn re_replication_bound(nodes: u16) -> Duration {
    detection_bound(nodes) + ANTI_ENTROPY * 2 + TRANSFER_MARGIN
}

/// A running cluster and a directory for local files, both removed when the test ends. After a
/// failure the logs stay (the bulky blocks and local files go) and their place is printed.
struct Setup {
    c: LocalCluster,
    root: PathBuf,
    files: PathBuf,
}

impl Setup {
    fn start(name: &str, nodes: u16, base_port: u16) -> Setup {
        Setup::with(name, nodes, base_port, |_, args| (args, PathBuf::from(env!("CARGO_BIN_EXE_rainstorm"))))
    }

    /// A cluster whose arguments and `rainstorm` executable `prepare` chooses, given the test's
    /// root directory (made before it is called) and the default arguments.
    fn with(
        name: &str,
        nodes: u16,
        base_port: u16,
        prepare: impl FnOnce(&Path, ClusterArgs) -> (ClusterArgs, PathBuf),
    ) -> Setup {
        let root = std::env::temp_dir().join(format!("rainstorm-hydfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let files = root.join("files");
        std::fs::create_dir_all(&files).unwrap();
        let args = ClusterArgs {
            period_ms: PERIOD_MS,
            ..ClusterArgs::local(nodes, base_port, root.join("cluster"))
        };
        let (args, tool) = prepare(&root, args);
        let c = LocalCluster::start(args, tool).expect("cluster starts");
        Setup { c, root, files }
    }

    /// An absolute path for a local file of this test.
    fn local(&self, name: &str) -> PathBuf {
        self.files.join(name)
    }

    fn addr(&self, i: u16) -> String {
        format!("127.0.0.1:{}", self.c.port(i))
    }

    /// Runs a command that must succeed.
    fn ok(&self, i: u16, line: &str) -> String {
        self.c.ctl(i, line).unwrap_or_else(|e| panic!("`{line}` on node {i} failed: {e:#}"))
    }

    /// Runs a command that must succeed; returns its output and its transfer progress reports.
    fn ok_with_progress(&self, i: u16, line: &str) -> (String, Vec<(u64, u64)>) {
        self.c.ctl_with_progress(i, line).unwrap_or_else(|e| panic!("`{line}` on node {i} failed: {e:#}"))
    }

    /// Runs a command that must fail; returns its error.
    fn err(&self, i: u16, line: &str) -> String {
        match self.c.ctl(i, line) {
            Ok(out) => panic!("`{line}` on node {i} should fail but printed: {out}"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// `ls <name>` from node `i`: each replica listed, with whether it holds the file.
    fn replicas(&self, i: u16, name: &str) -> anyhow::Result<Vec<(String, bool)>> {
        Ok(parse_ls(&self.c.ctl(i, &format!("ls {name}"))?))
    }

    fn holders(&self, i: u16, name: &str) -> Vec<String> {
        self.replicas(i, name)
            .unwrap_or_else(|e| panic!("ls {name} on node {i}: {e:#}"))
            .into_iter()
            .filter_map(|(a, holds)| holds.then_some(a))
            .collect()
    }

    fn index_of(&self, addr: &str) -> u16 {
        (0..self.c.args.nodes).find(|&i| self.addr(i) == addr).unwrap_or_else(|| panic!("no node at {addr}"))
    }

    /// The file names node `i`'s `store` lists.
    fn stored(&self, i: u16) -> anyhow::Result<BTreeSet<String>> {
        Ok(parse_store(&self.c.ctl(i, "store")?).into_keys().collect())
    }

    fn self_id(&self, i: u16) -> String {
        self.ok(i, "list_self").split_whitespace().next().expect("an id").to_string()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.c.stop();
        if std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.files);
            for i in 0..self.c.args.nodes {
                let _ = std::fs::remove_dir_all(self.c.data_dir(i).join("blocks"));
            }
            eprintln!("logs kept in {}", self.root.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Replica lines of `ls`: `  127.0.0.1:PORT  ring id X  holds it: ...` or `... does not hold it`.
fn parse_ls(out: &str) -> Vec<(String, bool)> {
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let addr = l.split_whitespace().next()?;
            addr.parse::<SocketAddr>().ok()?;
            Some((addr.to_string(), l.contains("holds it")))
        })
        .collect()
}

/// File lines of `store`: name -> the rest of the line (`ring id ...  N bytes, ...`).
fn parse_store(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .skip(1)
        .filter(|l| l.contains(" bytes"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_string();
            Some((name, words.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift64), different for each seed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Writes `len` deterministic bytes to `path`, 1 MiB at a time.
fn write_file(path: &Path, len: u64, seed: u64) {
    let mut rng = XorShift::new(seed);
    let mut out = BufWriter::new(File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

/// Compares two files 1 MiB at a time; the error names the first differing offset.
fn same_bytes(expected: &Path, got: &Path) -> Result<(), String> {
    let (la, lb) = (std::fs::metadata(expected), std::fs::metadata(got));
    let (la, lb) = match (la, lb) {
        (Ok(a), Ok(b)) => (a.len(), b.len()),
        (a, b) => return Err(format!("cannot stat: {:?} / {:?}", a.err(), b.err())),
    };
    if la != lb {
        return Err(format!("{} has {lb} bytes, expected {la}", got.display()));
    }
    let (mut a, mut b) = (File::open(expected).unwrap(), File::open(got).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut a, &mut ba);
        let m = read_full(&mut b, &mut bb);
        if n != m {
            return Err(format!("{} changed size while compared", got.display()));
        }
        if let Some(k) = (0..n).find(|&k| ba[k] != bb[k]) {
            return Err(format!("{} differs at byte {}", got.display(), offset + k as u64));
        }
        if n == 0 {
            return Ok(());
        }
        offset += n as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]).unwrap() {
            0 => break,
            n => filled += n,
        }
    }
    filled
}

fn assert_same(expected: &Path, got: &Path) {
    if let Err(e) = same_bytes(expected, got) {
        panic!("{e}");
    }
}

/// A 200 MiB (+ a few bytes, not a whole number of 1 MiB chunks) file created on one node comes
/// back byte for byte through another node; a `get` of a missing file fails with a clear message
/// and leaves no local file (not even a partial one); creating an existing name again fails.
#[test]
fn create_get_round_trip_of_a_large_file_is_identical() {
    let s = Setup::start("large", 5, 18_100);
    let (src, dst) = (s.local("big.bin"), s.local("big.out"));
    let len = (200u64 << 20) + 12_345;
    write_file(&src, len, 1);

    let t = Instant::now();
    let (out, reports) = s.ok_with_progress(1, &format!("create {} data/big.bin", src.display()));
    println!("create of {len} bytes from node 1 took {:?}: {}", t.elapsed(), out.trim());
    assert!(out.contains(&format!("{len} bytes")), "create reports the size: {out}");
    assert_transfer_reports(&reports, len, "the create");

    let t = Instant::now();
    let (out, reports) = s.ok_with_progress(3, &format!("get data/big.bin {}", dst.display()));
    println!("get on node 3 took {:?}: {}", t.elapsed(), out.trim());
    assert_same(&src, &dst);
    assert_transfer_reports(&reports, len, "the get");
    assert_eq!(s.holders(4, "data/big.bin").len(), 3, "three replicas hold it");

    let missing = s.local("missing.out");
    let e = s.err(2, &format!("get data/no-such-file {}", missing.display()));
    assert!(e.contains("data/no-such-file") && e.contains("does not exist"), "clear error: {e}");
    assert!(!missing.exists(), "a failed get leaves no local file");
    let leftovers: Vec<_> = std::fs::read_dir(&s.files)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("missing"))
        .collect();
    assert!(leftovers.is_empty(), "no partial file either: {leftovers:?}");

    let small = s.local("small.bin");
    write_file(&small, 1000, 2);
    let (_, reports) = s.ok_with_progress(4, &format!("create {} data/small.bin", small.display()));
    assert!(reports.is_empty(), "a transfer under 8 MiB reports no progress: {reports:?}");
    let e = s.err(4, &format!("create {} data/big.bin", small.display()));
    assert!(e.contains("already exists"), "create of an existing name fails clearly: {e}");
    // The failed create changed nothing.
    let again = s.local("big.again");
    s.ok(2, &format!("get data/big.bin {}", again.display()));
    assert_same(&src, &again);
}

/// A large transfer's progress reports: at least one, each of `len` bytes in all, and never
/// going back.
fn assert_transfer_reports(reports: &[(u64, u64)], len: u64, what: &str) {
    assert!(!reports.is_empty(), "{what} of {len} bytes reported no progress");
    assert!(reports.iter().all(|&(done, total)| total == len && done <= total), "{what}: {reports:?}");
    assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0), "{what}: progress went back: {reports:?}");
}

/// Creates of one name sent at the same moment from three nodes: exactly one succeeds, the other
/// two fail with "already exists", and every replica ends up with the winner's bytes. Three
/// names, of different sizes (inline, one chunk, several chunks) and from different nodes.
#[test]
fn three_nodes_racing_to_create_one_name_exactly_one_wins() {
    let s = Setup::start("race", 5, 18_200);
    let cases: [(&str, [u16; 3], u64); 3] = [
        ("race/small", [1, 2, 3], 100),
        ("race/medium", [2, 3, 4], 200 << 10),
        ("race/large", [4, 0, 1], (4 << 20) + 3),
    ];
    for (round, (name, nodes, size)) in cases.iter().enumerate() {
        let locals: Vec<PathBuf> = nodes
            .iter()
            .map(|n| {
                let p = s.local(&format!("race{round}-node{n}"));
                // Different contents and lengths per node, so the winner's bytes are recognisable.
                write_file(&p, size + *n as u64, 100 * round as u64 + *n as u64);
                p
            })
            .collect();
        let barrier = Barrier::new(nodes.len());
        let results: Vec<(u16, PathBuf, anyhow::Result<String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = nodes
                .iter()
                .zip(&locals)
                .map(|(&n, local)| {
                    let (s, barrier) = (&s, &barrier);
                    scope.spawn(move || {
                        // Everything but the request itself is ready before the barrier opens.
                        let socket = control::socket_path(&s.c.data_dir(n));
                        let line = format!("create {} {name}", local.display());
                        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                        barrier.wait();
                        let reply = rt.block_on(control::request(&socket, &line));
                        let result = match reply {
                            Ok(r) if r.ok => Ok(r.output),
                            Ok(r) => Err(anyhow::anyhow!("{}", r.output.trim())),
                            Err(e) => Err(anyhow::anyhow!("control socket of node {n}: {e}")),
                        };
                        (n, local.clone(), result)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let winners: Vec<_> = results.iter().filter(|(_, _, r)| r.is_ok()).collect();
        let summary: Vec<String> = results
            .iter()
            .map(|(n, _, r)| match r {
                Ok(o) => format!("node {n}: ok: {}", o.trim()),
                Err(e) => format!("node {n}: {e:#}"),
            })
            .collect();
        println!("{name}:\n  {}", summary.join("\n  "));
        assert_eq!(winners.len(), 1, "exactly one create of {name} succeeds: {summary:#?}");
        for (n, _, r) in &results {
            if let Err(e) = r {
                assert!(format!("{e:#}").contains("already exists"), "node {n}'s create of {name}: {e:#}");
            }
        }
        let (winner, winner_file) = (winners[0].0, &winners[0].1);
        let got = s.local(&format!("race{round}.got"));
        s.ok(0, &format!("get {name} {}", got.display()));
        if let Err(e) = same_bytes(winner_file, &got) {
            panic!("get {name} must return node {winner}'s bytes: {e}");
        }
        let holders = s.holders(0, name);
        assert_eq!(holders.len(), 3, "{name} is on three replicas: {holders:?}");
        for h in holders {
            let copy = s.local(&format!("race{round}.{h}"));
            s.ok(0, &format!("getfromreplica {h} {name} {}", copy.display()));
            if let Err(e) = same_bytes(winner_file, &copy) {
                panic!("replica {h} must hold node {winner}'s bytes of {name}: {e}");
            }
        }
    }
}

/// Five rounds of `multiappend` from four nodes at once, then `merge`: two replicas' copies are
/// byte-identical, hold every appended line exactly once after the created header, and keep
/// each node's lines in the order that node appended them.
#[test]
fn multiappend_from_four_nodes_then_merge_gives_identical_replicas() {
    let s = Setup::start("multiappend", 6, 18_300);
    let name = "logs/multi.log";
    let header = s.local("header");
    std::fs::write(&header, "header line\n").unwrap();
    s.ok(1, &format!("create {} {name}", header.display()));
    let appenders: [u16; 4] = [1, 2, 4, 5];
    let rounds = 5u16;
    for round in 0..rounds {
        let locals: Vec<String> = appenders
            .iter()
            .map(|n| {
                let p = s.local(&format!("r{round}-n{n}"));
                std::fs::write(&p, format!("node {n} round {round}\n")).unwrap();
                p.display().to_string()
            })
            .collect();
        let nodes: Vec<String> = appenders.iter().map(|&n| s.addr(n)).collect();
        let issuer = round % 6;
        let out = s.ok(issuer, &format!("multiappend {name} {} {}", nodes.join(" "), locals.join(" ")));
        assert!(out.contains("4 nodes appended"), "round {round}: {out}");
    }
    let total = appenders.len() * rounds as usize;
    let merged = s.ok(3, &format!("merge {name}"));
    println!("{}", merged.trim());
    let ls = s.ok(0, &format!("ls {name}"));
    println!("{}", ls.trim_end());
    let holders = s.holders(0, name);
    assert_eq!(holders.len(), 3, "three replicas hold {name}: {ls}");
    assert!(
        ls.lines().filter(|l| l.contains(&format!("holds it: {total} merged appends, 0 pending"))).count()
            == 3,
        "every replica has merged all {total} appends: {ls}"
    );

    let copies: Vec<PathBuf> = holders[..2]
        .iter()
        .map(|h| {
            let p = s.local(&format!("copy-from-{h}"));
            s.ok(s.index_of(&holders[2]), &format!("getfromreplica {h} {name} {}", p.display()));
            p
        })
        .collect();
    let (a, b) = (std::fs::read(&copies[0]).unwrap(), std::fs::read(&copies[1]).unwrap());
    assert!(a == b, "{} and {} hold different bytes after the merge", holders[0], holders[1]);

    let text = String::from_utf8(a).expect("text");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"header line"), "the created bytes come first:\n{text}");
    assert_eq!(lines.len(), 1 + total, "header plus {total} appended lines:\n{text}");
    for &n in &appenders {
        let mine: Vec<&str> =
            lines.iter().copied().filter(|l| l.starts_with(&format!("node {n} "))).collect();
        let expected: Vec<String> = (0..rounds).map(|r| format!("node {n} round {r}")).collect();
        assert_eq!(mine, expected, "node {n}'s lines, each once and in round order:\n{text}");
    }
}

/// Two of the three replicas of a 20 MiB file are killed with SIGKILL: the file is read back
/// intact at once from the survivor, and three live nodes hold it again within detection + two
/// anti-entropy rounds + a transfer margin; the new copies are intact too.
#[test]
fn two_replica_holders_killed_file_stays_readable_and_returns_to_three_copies() {
    let mut s = Setup::start("rereplicate", 6, 18_400);
    let nodes = 6;
    let addrs: Vec<SocketAddr> = (0..nodes).map(|i| s.addr(i).parse().unwrap()).collect();
    let ring = Ring::new(addrs.iter().copied());
    // A name whose replicas leave out the introducer, so both victims are ordinary members.
    let name = (0..1000)
        .map(|k| format!("data/readings-{k}.bin"))
        .find(|n| !ring.replicas(n, 3).contains(&addrs[0]))
        .expect("some name avoids node 0");
    let src = s.local("readings.bin");
    let len = (20u64 << 20) + 777;
    write_file(&src, len, 4);
    s.ok(0, &format!("create {} {name}", src.display()));
    let holders = s.holders(0, &name);
    assert_eq!(holders.len(), 3, "{name} is on three replicas: {holders:?}");
    assert!(!holders.contains(&s.addr(0)), "the ring placed {name} on the introducer: {holders:?}");
    let victims: Vec<u16> = holders[..2].iter().map(|h| s.index_of(h)).collect();
    let dead: Vec<String> = victims.iter().map(|&v| s.addr(v)).collect();
    let reader = (1..nodes).find(|i| !holders.contains(&s.addr(*i))).expect("a node that is not a replica");
    println!("{name} on {holders:?}; killing {dead:?}, reading through node {reader}");

    for &v in &victims {
        s.c.kill(v).unwrap();
    }
    let killed = Instant::now();
    let got = s.local("readings.got");
    let out = s.ok(reader, &format!("get {name} {}", got.display()));
    println!("get right after the kills took {:?}: {}", killed.elapsed(), out.trim());
    assert_same(&src, &got);

    let bound = re_replication_bound(nodes);
    let live_holders = |s: &Setup| -> Vec<String> {
        s.replicas(0, &name)
            .unwrap_or_default()
            .into_iter()
            .filter(|(a, holds)| *holds && !dead.contains(a))
            .map(|(a, _)| a)
            .collect()
    };
    let took =
        s.c.wait_until(bound.saturating_sub(killed.elapsed()), |_| Ok(live_holders(&s).len() >= 3))
            .map(|_| killed.elapsed());
    let took = took.unwrap_or_else(|_| {
        panic!(
            "{name} not on 3 live replicas within {bound:?} of the kills: {}",
            s.ok(0, &format!("ls {name}"))
        )
    });
    println!("RE-REPLICATION: {name} ({len} bytes) back on 3 live replicas {took:?} after two kill -9s (bound {bound:?})");

    for h in live_holders(&s).iter().filter(|h| !holders.contains(h)) {
        let copy = s.local(&format!("copy-{h}"));
        s.ok(reader, &format!("getfromreplica {h} {name} {}", copy.display()));
        assert_same(&src, &copy);
    }
}

/// A member killed with SIGKILL and restarted on its address comes back as a new member that
/// still holds the files it owns (its disk kept them; a stray block planted in its dir, which no
/// index names, is removed), is listed as holding them within detection + two anti-entropy
/// rounds + a transfer margin, and serves them intact.
#[test]
fn a_restarted_node_keeps_its_files() {
    let mut s = Setup::start("restart", 5, 18_500);
    let nodes = 5;
    let files = [("kept/alpha.bin", (6u64 << 20) + 1), ("kept/beta.bin", (3u64 << 20) + 5)];
    let mut locals = BTreeMap::new();
    for (k, (name, len)) in files.iter().enumerate() {
        let p = s.local(&format!("file{k}"));
        write_file(&p, *len, 10 + k as u64);
        s.ok(0, &format!("create {} {name}", p.display()));
        locals.insert(name.to_string(), (p, *len));
    }
    let ours: BTreeSet<String> = locals.keys().cloned().collect();
    let (victim, held) = (1..nodes)
        .map(|i| (i, s.stored(i).unwrap().intersection(&ours).cloned().collect::<BTreeSet<_>>()))
        .find(|(_, held)| !held.is_empty())
        .expect("some member other than node 0 holds a file");
    let addr = s.addr(victim);
    // What the node stores agrees with what `ls` says it should hold.
    let owned: BTreeSet<String> = ours.iter().filter(|n| s.holders(0, n).contains(&addr)).cloned().collect();
    assert_eq!(held, owned, "node {victim}'s store against ls");
    let old_id = s.self_id(victim);
    println!("node {victim} ({old_id}) holds {held:?}; killing and restarting it");

    s.c.kill(victim).unwrap();
    // A block no index names, as an older node laid blocks out (one file each): the restarted
    // node reads it into its block log, finds no index entry naming it, and removes it.
    let marker = s.c.data_dir(victim).join("blocks").join("0fffffffffffffff");
    std::fs::write(&marker, b"left by the previous process").unwrap();
    s.c.spawn(victim).unwrap();
    let restarted = Instant::now();
    s.c.wait_for_socket(victim, Duration::from_secs(10)).unwrap();
    let first = s.ok(victim, "store");
    let new_id = s.self_id(victim);
    println!(
        "node {victim} up after {:?} as {new_id}; its store:\n{}",
        restarted.elapsed(),
        first.trim_end()
    );
    assert_ne!(old_id, new_id, "a restarted node is a new member");
    assert_eq!(old_id.split('#').next(), new_id.split('#').next(), "at the same address");
    assert!(!marker.exists(), "the restarted node removed the stray block");
    let kept: BTreeSet<String> = parse_store(&first).into_keys().filter(|n| ours.contains(n)).collect();
    assert_eq!(kept, held, "the restarted node kept exactly the files it held:\n{first}");

    let bound = re_replication_bound(nodes);
    let back = s
        .c
        .wait_until(bound.saturating_sub(restarted.elapsed()), |_| Ok(s.stored(victim)?.is_superset(&held)));
    if back.is_err() {
        panic!("node {victim} did not get {held:?} back within {bound:?}: {}", s.ok(victim, "store"));
    }
    let took = restarted.elapsed();
    println!("RE-REPLICATION: restarted node {victim} holds {held:?} again {took:?} after the restart (bound {bound:?})");

    let store = parse_store(&s.ok(victim, "store"));
    for name in &held {
        let (src, len) = &locals[name];
        assert!(
            store[name].contains(&format!("{len} bytes")),
            "node {victim} stores all of {name}: {store:?}"
        );
        // Node 0 lists holders from its own view, which may learn of the rejoined member a
        // moment after the member already holds the file.
        let listed = s.c.wait_until(Duration::from_secs(10), |_| Ok(s.holders(0, name).contains(&addr)));
        assert!(listed.is_ok(), "ls shows node {victim} holding {name}");
        let copy = s.local(&format!("back-{}", name.replace('/', "_")));
        s.ok(0, &format!("getfromreplica {addr} {name} {}", copy.display()));
        assert_same(src, &copy);
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode()
        & 0o7777
}

/// Every entry under `dir` (itself included), with its mode, depth first. A running node
/// renames and removes files as it works (a block's temporary file, an index block a snapshot
/// replaced): an entry gone between the listing and its inspection is skipped.
fn walk(dir: &Path, out: &mut Vec<(PathBuf, std::fs::FileType, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(dir).unwrap();
    out.push((dir.to_path_buf(), meta.file_type(), meta.permissions().mode() & 0o7777));
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        if meta.file_type().is_dir() {
            walk(&path, out);
        } else {
            out.push((path.clone(), meta.file_type(), meta.permissions().mode() & 0o7777));
        }
    }
}

/// Nodes started under a umask of 0 (a shell script that sets it and execs `rainstorm`): every
/// data dir is 0700 and everything in it, walked entry by entry, is the node's user's alone:
/// directories 0700; blocks, logs, the output trace, console files and the control socket 0600;
/// fetched operator programs 0700.
#[test]
fn nodes_under_a_umask_of_0_keep_their_data_dirs_0700_and_their_files_0600() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::with("umask", 3, 19_950, |root, args| {
        let wrapper = root.join("rainstorm-umask0");
        let tool = PathBuf::from(env!("CARGO_BIN_EXE_rainstorm"));
        std::fs::write(&wrapper, format!("#!/bin/sh\numask 000\nexec '{}' \"$@\"\n", tool.display()))
            .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        (ClusterArgs { output_trace: true, ..args }, wrapper)
    });
    // The nodes really run under a umask of 0.
    let pid = s.c.nodes[1].child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if let Some(line) = status.lines().find(|l| l.starts_with("Umask:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0000"), "{line}");
    }
    // Blocks on every node (three replicas of three), a download, and an operator program
    // fetched into a worker's cache (it refuses to start, so the job fails at once).
    let local = s.local("in.txt");
    std::fs::write(&local, "a\nb\nc\n").unwrap();
    s.ok(1, &format!("create {} in/lines.txt", local.display()));
    s.ok(2, &format!("get in/lines.txt {}", s.local("back.txt").display()));
    let refuses = s.local("refuses.sh");
    std::fs::write(&refuses, "#!/bin/sh\necho 'refusing to start' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&refuses, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = s.err(1, &format!("RainStorm \"{}\" split in/lines.txt out/x.txt 1", refuses.display()));
    assert!(err.contains("refusing to start"), "{err}");

    let mut seen = BTreeSet::new();
    for i in 0..3 {
        let dir = s.c.data_dir(i);
        let mut entries = Vec::new();
        walk(&dir, &mut entries);
        for (path, kind, mode) in entries {
            let rel = path.strip_prefix(&dir).unwrap();
            let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned());
            let what = match first.as_deref() {
                None => "data dir",
                Some("blocks") if kind.is_dir() => "blocks dir",
                Some("blocks") => "block",
                Some("programs") if kind.is_dir() => "programs dir",
                Some("programs") => "program",
                Some("control.sock") => "control socket",
                Some("outputs.trace") => "output trace",
                Some(n) if n.ends_with(".log") => "log",
                Some("console.out") => "console",
                Some(_) => "other",
            };
            let want = if kind.is_dir() || what == "program" { 0o700 } else { 0o600 };
            assert!(!kind.is_symlink(), "{} is a symbolic link", path.display());
            assert_eq!(mode, want, "{what} {} is {mode:o}, not {want:o}", path.display());
            seen.insert(what);
        }
    }
    for what in [
        "data dir",
        "blocks dir",
        "block",
        "programs dir",
        "program",
        "control socket",
        "output trace",
        "log",
    ] {
        assert!(seen.contains(what), "no {what} was written: {seen:?}");
    }
}

/// `get` into a path where someone planted symbolic links, one at the destination and one at
/// the temporary name the download used to take (`.<name>.<pid>.part`), each pointing at a file
/// elsewhere: neither file changes, and the destination becomes a regular file, 0600, holding
/// the download (the rename replaces the link itself).
#[test]
fn get_never_writes_through_a_symlink_planted_at_its_destination() {
    let s = Setup::start("symlink", 3, 19_960);
    let local = s.local("in.txt");
    std::fs::write(&local, "the file's bytes\n").unwrap();
    s.ok(1, &format!("create {} data/f.txt", local.display()));
    let elsewhere = s.root.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let (victim, other) = (elsewhere.join("victim"), elsewhere.join("other"));
    std::fs::write(&victim, "someone else's bytes\n").unwrap();
    std::fs::write(&other, "more of someone else's bytes\n").unwrap();
    let dest = s.local("out.txt");
    std::os::unix::fs::symlink(&victim, &dest).unwrap();
    let pid = s.c.nodes[2].child.id();
    std::os::unix::fs::symlink(&other, s.local(&format!(".out.txt.{pid}.part"))).unwrap();

    s.ok(2, &format!("get data/f.txt {}", dest.display()));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "someone else's bytes\n");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "more of someone else's bytes\n");
    let meta = std::fs::symlink_metadata(&dest).unwrap();
    assert!(meta.file_type().is_file(), "the destination is a regular file now: {meta:?}");
    assert_eq!(mode(&dest), 0o600);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "the file's bytes\n");
}

/// A power cut: every node of the cluster killed with SIGKILL at once, right after its writes
/// were acknowledged, then every node started again on the same data dirs. Every acknowledged
/// byte is there: each file reads back with every write exactly once, and every replica holds it.
#[test]
fn a_whole_cluster_killed_and_restarted_loses_no_acknowledged_byte() {
    let mut s = Setup::start("power-cut", 5, 18_700);
    let nodes = 5;
    // Each file's created bytes, then its appends.
    let mut expected: BTreeMap<String, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    for k in 0..6u64 {
        let name = format!("cut/file{k}.bin");
        let p = s.local(&format!("file{k}"));
        write_file(&p, (k + 1) * 300_000 + k, 40 + k);
        s.ok((k % nodes as u64) as u16, &format!("create {} {name}", p.display()));
        let created = std::fs::read(&p).unwrap();
        let mut bytes = Vec::new();
        for a in 0..3u64 {
            let line = format!("append {a} of {name} from node {}\n", (k + a) % nodes as u64);
            let ap = s.local(&format!("append{k}-{a}"));
            std::fs::write(&ap, &line).unwrap();
            s.ok(((k + a) % nodes as u64) as u16, &format!("append {} {name}", ap.display()));
            bytes.extend_from_slice(line.as_bytes());
        }
        expected.insert(name, (created, bytes));
    }
    // One file merged, the others left with pending appends.
    s.ok(1, "merge cut/file0.bin");

    let cut = Instant::now();
    for i in 0..nodes {
        s.c.kill(i).unwrap();
    }
    println!("killed all {nodes} nodes with SIGKILL");
    s.c.spawn(0).unwrap();
    s.c.wait_for_socket(0, Duration::from_secs(10)).unwrap();
    for i in 1..nodes {
        s.c.spawn(i).unwrap();
    }
    let formed = s.c.wait_until(Duration::from_secs(30), |c| {
        Ok((0..nodes).all(|i| c.members_of(i).map(|m| m.len() == nodes as usize).unwrap_or(false)))
    });
    assert!(formed.is_ok(), "the cluster formed again");
    println!("POWER CUT: the cluster formed again {:?} after the kill", cut.elapsed());

    for (name, (created, appended)) in &expected {
        let bytes = [created.as_slice(), appended.as_slice()].concat();
        let want = s.local(&format!("want-{}", name.replace('/', "_")));
        std::fs::write(&want, &bytes).unwrap();
        let got = s.local(&format!("got-{}", name.replace('/', "_")));
        // The created bytes come first, whole. Appends from different clients merge in stamp
        // order, not in the order they were sent: compare them as a multiset of lines (each
        // exactly once), apart from the created bytes (which do not end in a newline).
        let read = s.c.wait_until(Duration::from_secs(20), |c| {
            Ok(c.ctl(2, &format!("get {name} {}", got.display())).is_ok())
        });
        assert!(read.is_ok(), "{name} reads back after the restart: {}", s.ok(2, &format!("ls {name}")));
        let data = std::fs::read(&got).unwrap();
        assert_eq!(data.len(), bytes.len(), "{name}: every acknowledged byte is there");
        assert!(data.starts_with(created), "{name}: the created bytes, whole, come first");
        let mut a: Vec<&[u8]> = data[created.len()..].split(|b| *b == b'\n').collect();
        let mut b: Vec<&[u8]> = appended.split(|b| *b == b'\n').collect();
        a.sort();
        b.sort();
        assert!(a == b, "{name}: the same lines after the restart");
        for (addr, holds) in s.replicas(0, name).unwrap() {
            assert!(holds, "{name}: replica {addr} holds it after the restart");
        }
    }
}
