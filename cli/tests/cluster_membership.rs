//! Membership on real processes and sockets: `introducer` and `member` binaries on loopback,
//! driven through their control sockets. Timings use a 200 ms protocol period so the suite is
//! quick; every bound below is the one derived for that period, with room for a loaded machine.

use rainstorm_cli::cluster::{parse_member_ids, timing_flags, ClusterArgs, LocalCluster};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const PERIOD_MS: u64 = 200;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_member")).parent().expect("bin dir").to_path_buf()
}

fn args(name: &str, nodes: u16, base_port: u16) -> ClusterArgs {
    let dir = std::env::temp_dir().join(format!("rainstorm-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ClusterArgs { period_ms: PERIOD_MS, ..ClusterArgs::local(nodes, base_port, dir) }
}

fn tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rainstorm"))
}

fn start(name: &str, nodes: u16, base_port: u16) -> LocalCluster {
    LocalCluster::start(args(name, nodes, base_port), tool()).expect("cluster starts")
}

/// Each member alone detects a crash within (2(n−1)+2) periods plus the suspicion timeout
/// (3 periods here); gossip makes it much faster. Twice that leaves room for a loaded machine.
fn detection_bound(nodes: u16) -> Duration {
    let periods = 2 * (nodes as u64 - 1) + 2 + 3;
    Duration::from_millis(2 * periods * PERIOD_MS)
}

fn self_id(c: &LocalCluster, i: u16) -> String {
    c.ctl(i, "list_self").expect("list_self").split_whitespace().next().expect("id").to_string()
}

fn log_of(c: &LocalCluster, i: u16) -> String {
    let name = if i == 0 { "introducer.log" } else { "member.log" };
    std::fs::read_to_string(c.data_dir(i).join(name)).unwrap_or_default()
}

#[test]
fn ten_processes_form_a_cluster_and_drop_two_killed_members() {
    let mut c = start("kill", 10, 17_100);
    for i in 0..10 {
        assert_eq!(c.members_of(i).unwrap().len(), 10, "node {i} lists everyone");
    }
    let victims: BTreeSet<String> = [8, 9].iter().map(|&v| self_id(&c, v)).collect();
    c.kill(8).unwrap();
    c.kill(9).unwrap();
    let took = c
        .wait_until(detection_bound(10), |c| {
            Ok((0..8).all(|i| c.members_of(i).map(|m| m.is_disjoint(&victims)).unwrap_or(false)))
        })
        .expect("every member drops both killed members within the bound");
    println!("two kill -9s left every list after {took:?}");
    // Failures are logged as such, one line each, where grep finds them (the log is written
    // every 25 ms, so the line may trail the list by that much).
    c.wait_until(Duration::from_secs(2), |c| Ok(log_of(c, 1).contains("event=\"failed\"")))
        .expect("node1's log names the failure");
}

#[test]
fn a_killed_member_restarted_on_its_address_rejoins_as_a_new_id() {
    let mut c = start("restart", 5, 17_200);
    let old = self_id(&c, 3);
    c.kill(3).unwrap();
    c.spawn(3).unwrap();
    c.wait_for_socket(3, Duration::from_secs(10)).unwrap();
    let new = self_id(&c, 3);
    assert_ne!(old, new);
    assert_eq!(old.split('#').next(), new.split('#').next(), "same address");
    c.wait_until(detection_bound(5), |c| {
        Ok((0..5)
            .filter(|&i| i != 3)
            .all(|i| c.members_of(i).map(|m| m.contains(&new) && !m.contains(&old)).unwrap_or(false)))
    })
    .expect("everyone lists the new id and not the old");
}

#[test]
fn leave_is_reported_as_leave_not_failure() {
    let c = start("leave", 5, 17_300);
    let leaver = self_id(&c, 2);
    c.ctl(2, "leave").unwrap();
    c.wait_until(detection_bound(5), |c| {
        Ok([0, 1, 3, 4].iter().all(|&i| c.members_of(i).map(|m| !m.contains(&leaver)).unwrap_or(false)))
    })
    .expect("the leave reaches everyone");
    // A log line reaches the file a moment after the node acts on it (the log is written by a
    // thread of its own).
    c.wait_until(Duration::from_secs(5), |c| {
        Ok([0, 1, 3, 4].iter().all(|&i| log_of(c, i).contains(&format!("LEFT {leaver}"))))
    })
    .expect("every node logs the leave");
    for i in [0, 1, 3, 4] {
        assert!(!log_of(&c, i).contains(&format!("DEL {leaver}")), "node {i} must not report a failure");
    }
    // A left node can join again, as a new member.
    c.ctl(2, "join").unwrap();
    c.wait_until(Duration::from_secs(5), |c| Ok(c.members_of(0)?.len() == 5)).expect("rejoins");
    // SIGTERM leaves gracefully too: reported as a leave, not a failure.
    let stopped = self_id(&c, 4);
    let pid = c.nodes.iter().find(|n| n.index == 4).expect("node 4").child.id();
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    c.wait_until(detection_bound(5), |c| {
        Ok([0, 1, 3].iter().all(|&i| log_of(c, i).contains(&format!("LEFT {stopped}"))))
    })
    .expect("SIGTERM is reported as a leave");
    for i in [0, 1, 3] {
        assert!(!log_of(&c, i).contains(&format!("DEL {stopped}")), "node {i} must not report a failure");
    }
}

#[test]
fn suspicion_switches_reach_every_member() {
    let c = start("sus", 5, 17_400);
    c.ctl(3, "disable_sus").unwrap();
    c.wait_until(detection_bound(5), |c| {
        Ok((0..5).all(|i| c.ctl(i, "status_sus").map(|s| s.contains("disabled")).unwrap_or(false)))
    })
    .expect("disable_sus reaches everyone");
    c.ctl(1, "enable_sus").unwrap();
    c.wait_until(detection_bound(5), |c| {
        Ok((0..5).all(|i| c.ctl(i, "status_sus").map(|s| s.contains("enabled")).unwrap_or(false)))
    })
    .expect("enable_sus reaches everyone");
}

fn member_command(port: u16, introducer: u16, dir: &Path, key: Option<&str>) -> Command {
    let mut cmd = Command::new(bin_dir().join("member"));
    cmd.args(["--bind", &format!("127.0.0.1:{port}"), "--introducer", &format!("127.0.0.1:{introducer}")])
        .arg("--data-dir")
        .arg(dir)
        .arg("--no-console")
        .args(timing_flags(PERIOD_MS));
    match key {
        Some(k) => cmd.env("RAINSTORM_CLUSTER_KEY", k),
        None => cmd.env_remove("RAINSTORM_CLUSTER_KEY"),
    };
    cmd.stdin(std::process::Stdio::null());
    cmd
}

/// Cluster keys: 32 bytes as 64 hex digits.
const RIGHT_KEY: &str = "5c1d0a9e3b7f24c86e0d1f5a9b2c7e4d3a8f6b1c0e9d2a7f5b4c3e8d1a6f0b92";
const WRONG_KEY: &str = "0f4e8a2c6b1d9e7f3a5c0b8d2e6f1a4c9b7e3d5a8c2f6e0b1d4a9c7f3e5b8d26";

#[test]
fn a_member_with_the_wrong_cluster_key_is_not_admitted() {
    let mut a = args("key", 3, 17_500);
    a.cluster_key = Some(RIGHT_KEY.into());
    let c = LocalCluster::start(a, tool()).expect("keyed cluster starts");
    let dir = c.args.dir.join("intruder");
    let out = member_command(17_510, 17_500, &dir, Some(WRONG_KEY)).output().unwrap();
    assert!(!out.status.success(), "the intruder must not start as a member");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot join"), "clear error, got: {stderr}");
    assert!(stderr.contains("cluster key"), "the error hints at the key: {stderr}");
    assert_eq!(c.members_of(0).unwrap().len(), 3, "the intruder is not listed");
    let stats = c.ctl(0, "stats").unwrap();
    assert!(stats.contains("frames_rejected.bad_tag"), "rejections are counted: {stats}");
    // The key came from the cluster's key file, which `reload_keys` reads again.
    let reply = c.ctl(1, "reload_keys").unwrap();
    assert!(reply.contains("signing with"), "{reply}");
    let stderr = std::fs::read_to_string(c.data_dir(1).join("stderr.log")).unwrap();
    assert!(!stderr.contains("NO CLUSTER KEY"), "a keyed node does not warn: {stderr}");
}

#[test]
fn joins_fail_clearly_while_the_introducer_is_down_and_work_after_it_returns() {
    let mut c = start("intro", 4, 17_600);
    c.kill(0).unwrap();
    let dir = c.args.dir.join("latecomer");
    let out = member_command(17_610, 17_600, &dir, None).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot join") && stderr.contains("127.0.0.1:17600"), "got: {stderr}");
    // Members keep working without the introducer.
    assert!(c.members_of(1).unwrap().len() >= 3);
    c.spawn(0).unwrap();
    c.wait_for_socket(0, Duration::from_secs(10)).unwrap();
    let mut late = member_command(17_610, 17_600, &dir, None)
        .arg("--cluster-key-file")
        .arg(c.args.dir.join(rainstorm_cli::cluster::KEY_FILE))
        .spawn()
        .unwrap();
    let joined = c.wait_until(detection_bound(5) * 2, |c| Ok(c.members_of(0)?.len() == 5));
    let _ = late.kill();
    let _ = late.wait();
    joined.expect("after the introducer restarts, the old members and the newcomer are all listed");
}

#[test]
fn console_commands_reject_bad_input_with_clear_errors() {
    let c = LocalCluster::start(ClusterArgs { no_key: true, ..args("console", 2, 17_700) }, tool())
        .expect("cluster starts");
    let err = c.ctl(1, "lst_mem").unwrap_err().to_string();
    assert!(err.contains("unknown command"), "{err}");
    let members = c.ctl(1, "list_mem").unwrap();
    assert_eq!(parse_member_ids(&members).len(), 2);
    assert!(c.ctl(1, "help").unwrap().contains("list_suspected"));
    // Without a key the node says loudly what that means, on stderr and in its log.
    let stderr = std::fs::read_to_string(c.data_dir(1).join("stderr.log")).unwrap();
    assert!(stderr.contains("WARNING: NO CLUSTER KEY SET"), "{stderr}");
    assert!(log_of(&c, 1).contains("NO CLUSTER KEY SET"));
    // The control socket is the node's user's alone.
    use std::os::unix::fs::PermissionsExt;
    let socket = rainstorm_runtime::control::socket_path(&c.data_dir(1));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", socket.display());
    // A second node on a running node's data dir is refused before it writes anything there.
    let mut second = member_command(17_710, 17_700, &c.data_dir(1), None);
    let mut child = second.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second node on one data dir is still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "a second node on one data dir must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is in use by another node (pid "), "names the holder: {stderr}");
    assert!(stderr.contains("127.0.0.1:17701") && stderr.contains("--data-dir"), "{stderr}");
    assert!(!log_of(&c, 1).contains("17710"), "the refused node wrote nothing in the first one's log");
    assert_eq!(parse_member_ids(&c.ctl(1, "list_mem").unwrap()).len(), 2, "the first node runs on");
}

#[test]
fn a_port_in_use_or_a_bad_config_ends_with_one_clear_line() {
    let c = start("port", 2, 17_800);
    let dir = c.args.dir.join("dup");
    let out = member_command(17_801, 17_800, &dir, None).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot bind") && stderr.contains("17801"), "got: {stderr}");

    let bad = c.args.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "bind = \"127.0.0.1:17899\"\nintroducer = \"127.0.0.1:17800\"\n[timings]\nping_timeout_ms = 5000\n",
    )
    .unwrap();
    let out = Command::new(bin_dir().join("member")).arg("--config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ping_timeout"), "names the field: {stderr}");
}

/// Runs `line` on the node whose data dir is `dir`; `Err` carries the node's refusal.
fn ctl_dir(dir: &Path, line: &str) -> Result<String, String> {
    let socket = rainstorm_runtime::control::socket_path(dir);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reply = rt.block_on(rainstorm_runtime::control::request(&socket, line)).map_err(|e| e.to_string())?;
    if reply.ok {
        Ok(reply.output)
    } else {
        Err(reply.output)
    }
}

#[test]
fn cluster_keys_roll_over_without_a_restart_and_nothing_is_refused_on_the_way() {
    const BASE: u16 = 17_900;
    let root = std::env::temp_dir().join(format!("rainstorm-test-rollover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let write_config = |i: u16, current: &str, accepted: &[&str]| {
        let accepted: Vec<String> = accepted.iter().map(|k| format!("{k:?}")).collect();
        let text = format!(
            "bind = \"127.0.0.1:{}\"\nintroducer = \"127.0.0.1:{BASE}\"\ndata_dir = {:?}\n\
             cluster_key = {current:?}\naccepted_keys = [{}]\n",
            BASE + i,
            root.join(format!("n{i}")),
            accepted.join(", ")
        );
        std::fs::write(root.join(format!("n{i}.toml")), text).unwrap();
    };
    let (old, new) = (RIGHT_KEY, WRONG_KEY);
    let mut children = Vec::new();
    for i in 0..3u16 {
        write_config(i, old, &[]);
        let bin = if i == 0 { "introducer" } else { "member" };
        let child = Command::new(bin_dir().join(bin))
            .arg("--config")
            .arg(root.join(format!("n{i}.toml")))
            .arg("--no-console")
            .args(timing_flags(PERIOD_MS))
            .env_remove("RAINSTORM_CLUSTER_KEY")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(root.join(format!("n{i}.stderr"))).unwrap())
            .spawn()
            .unwrap();
        children.push(child);
        if i == 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let dir = |i: u16| root.join(format!("n{i}"));
    let whole = || {
        (0..3).all(|i| ctl_dir(&dir(i), "list_mem").map(|m| parse_member_ids(&m).len() == 3).unwrap_or(false))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !whole() {
        assert!(std::time::Instant::now() < deadline, "the keyed group formed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let steps: [(&str, &[&str], &str); 3] =
        [(old, &[new], "also accepting"), (new, &[old], "also accepting"), (new, &[], "signing with")];
    for (current, accepted, said) in steps {
        for i in 0..3 {
            write_config(i, current, accepted);
            let reply = ctl_dir(&dir(i), "reload_keys").unwrap();
            assert!(reply.contains(said), "{reply}");
            std::thread::sleep(Duration::from_millis(3 * PERIOD_MS));
            assert!(whole(), "the group stays whole after node {i} took {current:?} + {accepted:?}");
        }
    }
    for i in 0..3 {
        let stats = ctl_dir(&dir(i), "stats").unwrap();
        assert!(!stats.contains("frames_rejected.bad_tag"), "node {i} refused a frame: {stats}");
    }
    // A bad key file leaves the keys as they were, with a clear error.
    std::fs::write(root.join("n1.toml"), "cluster_key = \"short\"\n").unwrap();
    let err = ctl_dir(&dir(1), "reload_keys").unwrap_err();
    assert!(err.contains("cluster_key") && err.contains("not changed"), "{err}");
    assert!(whole());
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_node_flooded_with_garbage_datagrams_keeps_its_membership_and_bounded_memory() {
    use rand::{Rng, SeedableRng};
    let mut a = args("flood", 4, 17_950);
    a.cluster_key = Some(RIGHT_KEY.into());
    let c = LocalCluster::start(a, tool()).expect("keyed cluster starts");
    let ids: BTreeSet<String> = (0..4).map(|i| self_id(&c, i)).collect();
    let pid = c.nodes.iter().find(|n| n.index == 1).expect("node 1").child.id();
    let before = peak_rss_kib(pid);
    let target = format!("127.0.0.1:{}", c.port(1));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let flood = Duration::from_secs(6);
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let mut buf = vec![0u8; 65_000];
    while started.elapsed() < flood {
        // Random bytes; frames with a valid header and a forged tag; headers whose length field
        // lies; datagrams far over the size limit.
        let kind = sent % 4;
        let len = match kind {
            0 => rng.gen_range(0..1400),
            1 | 2 => rng.gen_range(40..1400),
            _ => 65_000,
        };
        rng.fill(&mut buf[..len]);
        if kind != 0 && len >= 9 {
            // Magic, version 5, the authenticated flag, the control lane, a length.
            buf[..5].copy_from_slice(b"RS\x05\x01\x00");
            let declared = if kind == 1 { len as u32 - 40 } else { rng.gen() };
            buf[5..9].copy_from_slice(&declared.to_le_bytes());
        }
        if socket.send_to(&buf[..len], &target).is_ok() {
            sent += 1;
        }
    }
    let rate = sent as f64 / flood.as_secs_f64();
    let stats = c.ctl(1, "stats").unwrap();
    let counter = |name: &str| -> u64 {
        stats.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
    };
    let rejected: u64 = stats
        .lines()
        .filter(|l| l.starts_with("frames_rejected."))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    let after = peak_rss_kib(pid);
    println!(
        "flood: {sent} datagrams in {flood:?} ({rate:.0}/s); node 1 refused {rejected}; \
         peak RSS {before} KiB before, {after} KiB after\n{stats}"
    );
    assert!(rejected > sent / 10, "the garbage reached the node and was counted: {stats}");
    assert_eq!(counter("failures_declared"), 0, "no member was declared failed: {stats}");
    for i in 0..4 {
        assert_eq!(c.members_of(i).unwrap(), ids, "node {i} still lists exactly the group");
    }
    for i in 0..4 {
        assert!(!log_of(&c, i).contains("event=\"failed\""), "node {i} declared a failure");
    }
    assert!(after < before + 64 * 1024, "peak RSS grew from {before} KiB to {after} KiB");
}

/// Whether some process still runs with `dir` on its command line.
fn runs_in(dir: &Path) -> bool {
    let needle = dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc").into_iter().flatten().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
    })
}

/// Whether `port` on loopback is free for UDP and TCP alike.
fn free(port: u16) -> bool {
    std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// `rainstorm cluster` stops its nodes on SIGTERM (here while the cluster is still forming) and
/// on SIGHUP as it does on Ctrl-C, and if it is killed outright, the kernel kills its nodes: in
/// no case does a node outlive it, holding its port.
#[test]
fn the_cluster_command_leaves_no_node_behind_on_sigterm_sighup_or_sigkill() {
    use std::io::BufRead;
    const BASE: u16 = 19_900;
    let root = std::env::temp_dir().join(format!("rainstorm-test-signals-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (signal, formed) in [("TERM", false), ("HUP", true), ("KILL", true)] {
        let dir = root.join(signal);
        let mut cluster = Command::new(tool())
            .args(["cluster", "--nodes", "2", "--base-port", &BASE.to_string(), "--period-ms", "200"])
            .arg("--no-metrics")
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("rainstorm cluster starts");
        let stdout = cluster.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut said = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        if formed {
            while !said.iter().any(|l: &String| l.starts_with("cluster formed")) {
                let line = lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
                said.push(line.unwrap_or_else(|_| panic!("{signal}: the cluster did not form: {said:?}")));
            }
        } else {
            // The introducer is up; the member may be starting or joining.
            let socket = rainstorm_runtime::control::socket_path(&dir.join("node0"));
            while !socket.exists() {
                assert!(std::time::Instant::now() < deadline, "{signal}: the introducer did not start");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let status = Command::new("kill").arg(format!("-{signal}")).arg(cluster.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal}");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while cluster.try_wait().expect("waited").is_none() {
            assert!(std::time::Instant::now() < deadline, "{signal}: rainstorm cluster did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Everything it printed, up to the end of its output.
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
            said.push(line);
        }
        if signal != "KILL" {
            assert!(said.iter().any(|l| l.starts_with("stop")), "{signal}: stopped its nodes: {said:?}");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while runs_in(&dir) || !(free(BASE) && free(BASE + 1)) {
            assert!(
                std::time::Instant::now() < deadline,
                "{signal}: a node outlived rainstorm cluster: {said:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn keygen_writes_a_new_key_file_only_its_owner_reads_and_never_overwrites_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("rainstorm-test-keygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluster.key");
    let keygen = |out: Option<&Path>| {
        let mut cmd = Command::new(tool());
        cmd.arg("keygen");
        if let Some(out) = out {
            cmd.arg("--out").arg(out);
        }
        cmd.output().unwrap()
    };
    let written = keygen(Some(&path));
    assert!(written.status.success(), "{}", String::from_utf8_lossy(&written.stderr));
    let key = std::fs::read_to_string(&path).unwrap();
    let is_key = |k: &str| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(is_key(key.trim_end()), "{key:?}");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let again = keygen(Some(&path));
    assert!(!again.status.success(), "an existing key file is never overwritten");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), key);
    let printed = String::from_utf8(keygen(None).stdout).unwrap();
    assert!(is_key(printed.trim_end()) && printed.trim_end() != key.trim_end(), "{printed:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
