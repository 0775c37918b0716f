//! `bench cluster-membership`: membership on a real 10-process loopback cluster (1 s period).
//!
//! * traffic: bytes per second each member sends (UDP datagrams and stream frames, from the
//!   nodes' own `stats`), over a steady-state window; target ≤ 1 KiB/s;
//! * detection: kill -9 of two members, time until the first and until the last surviving list
//!   drops them, against the documented bound (5 s / 10 s), over several trials;
//! * false failures: live members declared failed by someone's own probe or suspicion timer,
//!   counted from the nodes' logs, at drop rates 0/5/10/20% in both modes over a fixed run.

use anyhow::{Context, Result};
use rainstorm_cli::cluster::{parse_member_ids, this_tool, ClusterArgs, LocalCluster};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NODES: u16 = 10;

fn args(name: &str, suspicion: bool, drop_rate: f64, base_port: u16) -> ClusterArgs {
    let dir = std::env::temp_dir().join(format!("rainstorm-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ClusterArgs {
        suspicion: if suspicion { "on" } else { "off" }.into(),
        drop_rate,
        ..ClusterArgs::local(NODES, base_port, dir)
    }
}

fn bytes_sent(c: &LocalCluster, i: u16) -> Result<u64> {
    let stats = c.ctl(i, "stats")?;
    stats
        .lines()
        .find_map(|l| l.strip_prefix("bytes_sent ").and_then(|v| v.trim().parse().ok()))
        .context("stats has no bytes_sent")
}

pub fn run(quick: bool) -> Result<()> {
    let bin = this_tool()?;
    println!("membership on a real {NODES}-process loopback cluster (1 s period)");
    println!();

    // --- traffic ------------------------------------------------------------------------
    let window = Duration::from_secs(if quick { 5 } else { 20 });
    let c = LocalCluster::start(args("traffic", true, 0.0, 27_000), bin.clone())?;
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<u64> = (0..NODES).map(|i| bytes_sent(&c, i)).collect::<Result<_>>()?;
    let started = Instant::now();
    std::thread::sleep(window);
    let after: Vec<u64> = (0..NODES).map(|i| bytes_sent(&c, i)).collect::<Result<_>>()?;
    let secs = started.elapsed().as_secs_f64();
    let rates: Vec<f64> = before.iter().zip(&after).map(|(b, a)| (a - b) as f64 / secs).collect();
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let max = rates.iter().cloned().fold(0.0, f64::max);
    drop(c);
    println!("traffic over {:.0} s of steady state", secs);
    println!(
        "  bytes/s per member   mean {mean:.0}   max {max:.0}   (target <= 1024)   {}",
        verdict(max <= 1024.0)
    );
    println!();

    // --- detection ----------------------------------------------------------------------
    let trials = if quick { 1 } else { 4 };
    let mut c = LocalCluster::start(args("detect", true, 0.0, 27_100), bin.clone())?;
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    for trial in 0..trials {
        let victims = [NODES - 1 - (2 * trial as u16 % 6), NODES - 2 - (2 * trial as u16 % 6)];
        let ids: BTreeSet<String> = victims
            .iter()
            .map(|&v| Ok(c.ctl(v, "list_self")?.split_whitespace().next().unwrap_or("").to_string()))
            .collect::<Result<_>>()?;
        let killed = Instant::now();
        for v in victims {
            c.kill(v)?;
        }
        let survivors: Vec<u16> = (0..NODES).filter(|i| !victims.contains(i)).collect();
        let mut pending: BTreeSet<u16> = survivors.iter().copied().collect();
        // When each crash first shows in some list (marked SUS there, or gone from it).
        let mut first_shown: std::collections::BTreeMap<String, Duration> = Default::default();
        while !pending.is_empty() && killed.elapsed() < Duration::from_secs(60) {
            for i in pending.clone() {
                let Ok(list) = c.ctl(i, "list_mem") else { continue };
                let listed = parse_member_ids(&list);
                for id in &ids {
                    let suspected = list.lines().any(|l| l.contains(id.as_str()) && l.contains("SUS"));
                    if suspected || !listed.contains(id) {
                        first_shown.entry(id.clone()).or_insert_with(|| killed.elapsed());
                    }
                }
                if listed.is_disjoint(&ids) {
                    pending.remove(&i);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let last = killed.elapsed();
        for id in &ids {
            firsts.push(first_shown.get(id).copied().unwrap_or(last).as_secs_f64());
        }
        lasts.push(last.as_secs_f64());
        for v in victims {
            c.spawn(v)?;
        }
        for v in victims {
            c.wait_for_socket(v, Duration::from_secs(10))?;
        }
        c.wait_until(Duration::from_secs(30), |c| {
            Ok((0..NODES).all(|i| c.members_of(i).map(|m| m.len() == NODES as usize).unwrap_or(false)))
        })?;
        std::thread::sleep(Duration::from_secs(2));
    }
    drop(c);
    let fmax = firsts.iter().cloned().fold(0.0, f64::max);
    let lmax = lasts.iter().cloned().fold(0.0, f64::max);
    println!("kill -9 of two members, {trials} trials (PingAck+S)");
    println!(
        "  first list shows each crash   mean {:.1} s   max {fmax:.1} s   (bound 5 s; shows = SUS or removed)   {}",
        mean_of(&firsts),
        verdict(fmax <= 5.0)
    );
    println!(
        "  every list drops both         mean {:.1} s   max {lmax:.1} s   (bound 10 s)   {}",
        mean_of(&lasts),
        verdict(lmax <= 10.0)
    );
    println!();

    // --- false failures -----------------------------------------------------------------
    let run_for = Duration::from_secs(if quick { 10 } else { 60 });
    println!(
        "false failures (live members declared failed) over {} s per cell, {NODES} nodes",
        run_for.as_secs()
    );
    println!("  {:<10} {:>12} {:>12}", "drop rate", "PingAck", "PingAck+S");
    for (k, drop_rate) in [0.0, 0.05, 0.10, 0.20].into_iter().enumerate() {
        let mut cells = Vec::new();
        for (m, suspicion) in [false, true].into_iter().enumerate() {
            let port = 27_200 + (k as u16 * 2 + m as u16) * 20;
            let c = LocalCluster::start(args(&format!("fp{k}{m}"), suspicion, drop_rate, port), bin.clone())?;
            std::thread::sleep(run_for);
            let dirs: Vec<PathBuf> = (0..NODES).map(|i| c.data_dir(i)).collect();
            drop(c);
            cells.push(false_failures(&dirs));
        }
        println!("  {:<10} {:>12} {:>12}", format!("{:.0}%", drop_rate * 100.0), cells[0], cells[1]);
    }
    println!("  (nothing is killed in these runs: every failure declared is false; drop applies to each node's outgoing datagrams)");
    Ok(())
}

/// Distinct member ids declared failed by someone's own probe or suspicion timer.
fn false_failures(dirs: &[PathBuf]) -> usize {
    let mut ids = BTreeSet::new();
    for dir in dirs {
        for name in ["member.log", "introducer.log"] {
            let Ok(log) = std::fs::read_to_string(dir.join(name)) else { continue };
            for line in log.lines() {
                let local = line.contains("cause=NoAck") || line.contains("cause=SuspicionTimeout");
                if line.contains("event=\"failed\"") && local {
                    if let Some(id) = line.split("member=").nth(1).and_then(|s| s.split_whitespace().next()) {
                        ids.insert(id.to_string());
                    }
                }
            }
        }
    }
    ids.len()
}

fn mean_of(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISSED"
    }
}
