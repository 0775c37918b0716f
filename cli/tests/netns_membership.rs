//! Members on separate hosts: each node runs in its own network namespace with its own IP,
//! joined by veth pairs to a bridge this test creates (and removes). Needs root and iproute2;
//! where the machine forbids namespaces the test says so and is skipped.

use rainstorm_cli::cluster::{parse_member_ids, timing_flags};
use rainstorm_runtime::control;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const PERIOD_MS: u64 = 200;

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The test's hosts: namespaces, veth pairs and a bridge, removed on drop.
struct Hosts {
    tag: String,
    subnet: u8,
    children: Vec<Child>,
}

impl Hosts {
    fn ns(&self, i: usize) -> String {
        format!("rs{}n{i}", self.tag)
    }

    fn addr(&self, i: usize) -> String {
        format!("10.231.{}.{}", self.subnet, i + 2)
    }

    fn create() -> Result<Hosts, String> {
        let tag = format!("{}", std::process::id() % 10_000);
        let subnet = (std::process::id() % 200) as u8 + 20;
        let hosts = Hosts { tag, subnet, children: Vec::new() };
        let bridge = format!("rs{}br", hosts.tag);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("10.231.{subnet}.1/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..NODES {
            let ns = hosts.ns(i);
            let outside = format!("rs{}v{i}", hosts.tag);
            let inside = format!("rs{}p{i}", hosts.tag);
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["link", "set", &outside, "master", &bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", hosts.addr(i)), "dev", &inside])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    fn spawn(&mut self, i: usize, dir: &Path) -> Child {
        let bin = Path::new(env!("CARGO_BIN_EXE_member")).parent().expect("bin dir");
        let program = if i == 0 { "introducer" } else { "member" };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i)])
            .arg(bin.join(program))
            .args(["--bind", &format!("{}:7000", self.addr(i))])
            .arg("--data-dir")
            .arg(dir.join(format!("node{i}")))
            .arg("--no-console")
            .args(timing_flags(PERIOD_MS));
        if i > 0 {
            cmd.args(["--introducer", &format!("{}:7000", self.addr(0))]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        cmd.spawn().expect("ip netns exec starts the node")
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 0..NODES {
            let _ = ip(&["netns", "del", &self.ns(i)]);
            let _ = ip(&["link", "del", &format!("rs{}v{i}", self.tag)]);
        }
        let _ = ip(&["link", "del", &format!("rs{}br", self.tag)]);
    }
}

fn members(dir: &Path, i: usize) -> Option<usize> {
    let socket: PathBuf = control::socket_path(&dir.join(format!("node{i}")));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    let reply = rt.block_on(control::request(&socket, "list_mem")).ok()?;
    Some(parse_member_ids(&reply.output).len())
}

fn wait(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn members_in_separate_network_namespaces_form_a_group_and_detect_a_crash() {
    let mut hosts = match Hosts::create() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("SKIPPED: this machine does not allow test network namespaces ({e})");
            return;
        }
    };
    let dir = std::env::temp_dir().join(format!("rainstorm-netns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for i in 0..NODES {
        let child = hosts.spawn(i, &dir);
        hosts.children.push(child);
        if i == 0 {
            assert!(wait(Duration::from_secs(10), || members(&dir, 0).is_some()), "introducer starts");
        }
    }
    let formed = wait(Duration::from_secs(20), || (0..NODES).all(|i| members(&dir, i) == Some(NODES)));
    assert!(formed, "three hosts with their own IPs form one group");
    let victim = &mut hosts.children[NODES - 1];
    victim.kill().expect("kill the last host's node");
    let _ = victim.wait();
    let dropped =
        wait(Duration::from_secs(15), || (0..NODES - 1).all(|i| members(&dir, i) == Some(NODES - 1)));
    assert!(dropped, "the crashed host leaves the other hosts' lists");
}
