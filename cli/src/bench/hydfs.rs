//! `bench hydfs`: the HyDFS (MP3) experiments, run in the simulator under a modelled bandwidth.
//!
//! 1. Re-replication: a file of 1–100 MiB is created; one of its replicas crashes; how long until
//!    the node that becomes its new third replica holds a complete copy, broken into detection
//!    (crash to DEL at that node), the wait for anti-entropy to notice (DEL to the first record of
//!    the file there) and the transfer, against the pure transfer time size / bandwidth.
//! 2. Merge: 1,000 appends from 1–10 concurrent clients (each client one append at a time), then
//!    a merge and a second merge right after: their times and the bytes they moved.
//! 3. Read cache: one client reads 100 files of 40 KiB 2,000 times (uniform or Zipf s = 1),
//!    optionally with one op in ten an append by the same client, at cache sizes from 0 to the
//!    whole data: hit ratio, mean get latency and file bytes fetched per get.
//!
//! Every run is 10 nodes, `MembershipConfig::lan()`, 1 Gbit/s of outgoing stream bandwidth per node,
//! 1–2 ms latency, no loss, `HydfsConfig::default()` (except the cache size), from fixed seeds: the
//! figures replay exactly; only the wall time varies. The benchmark drives HyDFS itself through
//! `World::submit` and steps the world instant by instant, so every time is exact in simulated ms.

use super::{parallel_map, Scale};
use anyhow::{bail, Result};
use rainstorm_core::command::Command;
use rainstorm_core::hydfs::{
    ClientOp, FileName, Hydfs, HydfsConfig, HydfsError, HydfsEvent, OpId, OpOutput, ReadFrom, Ring,
};
use rainstorm_core::membership::{MembershipConfig, MembershipEvent};
use rainstorm_core::node::NodeEvent;
use rainstorm_core::{Channel, MemberId, Millis, Node, NodeAddr, Time, Transmit};
use rainstorm_sim::hydfs::HydfsWorkload;
use rainstorm_sim::{Actor, ActorStart, NetConfig, RunOptions, Scenario, World};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

const NODES: usize = 10;
/// 1 Gbit/s of outgoing stream bandwidth per node.
const BANDWIDTH_BYTES_PER_MS: u64 = 125_000;
const MIB: usize = 1 << 20;
const KIB: usize = 1 << 10;
/// How long the cluster may take to form (every node's ring lists all ten).
const FORM_LIMIT_MS: u64 = 60_000;
/// How long one step of an experiment may take in simulated time before it counts as stuck.
const STEP_LIMIT_MS: u64 = 300_000;
/// A simulated run never ends by itself; the experiments stop when they have their figures.
const RUN_MS: u64 = 24 * 3_600_000;

// ----- a node that records what the benchmark needs -----------------------------------------

/// How an operation ended, without the bytes it read.
#[derive(Clone, Debug)]
struct Done {
    at: Time,
    result: Result<Outcome, String>,
}

#[derive(Clone, Debug, Default)]
struct Outcome {
    /// Bytes a read returned.
    read_bytes: usize,
    /// The read was served by the client's cache.
    from_cache: bool,
    /// What a merge reported: appends merged and bytes moved.
    merged: Option<(u32, u64)>,
}

/// `rainstorm_core::Node` recording its finished operations and the members it declared failed.
struct Recorder {
    node: Node,
    /// The clock of the latest input (the world gives no time with `poll_event`); these scenarios
    /// have no clock offsets, so it is simulated time.
    now: Time,
    done: BTreeMap<OpId, Done>,
    failed: Vec<(Time, MemberId)>,
}

impl Recorder {
    fn take_done(&mut self, op: OpId) -> Option<Done> {
        self.done.remove(&op)
    }
}

impl Actor for Recorder {
    fn start(start: &ActorStart) -> Recorder {
        Recorder {
            node: <Node as Actor>::start(start),
            now: start.now,
            done: BTreeMap::new(),
            failed: Vec::new(),
        }
    }

    fn handle_frame(&mut self, now: Time, channel: Channel, frame: &[u8]) {
        self.now = now;
        Actor::handle_frame(&mut self.node, now, channel, frame);
    }

    fn handle_send_failed(&mut self, now: Time, to: NodeAddr) {
        self.now = now;
        Actor::handle_send_failed(&mut self.node, now, to);
    }

    fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        Actor::handle_timeout(&mut self.node, now);
    }

    fn command(&mut self, now: Time, command: Command) {
        self.now = now;
        Actor::command(&mut self.node, now, command);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        Actor::poll_transmit(&mut self.node)
    }

    fn poll_event(&mut self) -> Option<NodeEvent> {
        let event = Actor::poll_event(&mut self.node)?;
        match &event {
            NodeEvent::Hydfs(HydfsEvent::OpDone { op, result }) => {
                let result = match result {
                    Ok(OpOutput::Downloaded { len, from, .. }) => {
                        Ok(Outcome { read_bytes: *len as usize, from_cache: from.is_none(), merged: None })
                    }
                    Ok(OpOutput::Merged { summary, .. }) => Ok(Outcome {
                        merged: Some((summary.appended, summary.bytes_moved)),
                        ..Outcome::default()
                    }),
                    Ok(_) => Ok(Outcome::default()),
                    Err(e) => Err(e.to_string()),
                };
                self.done.insert(*op, Done { at: self.now, result });
            }
            NodeEvent::Membership(MembershipEvent::MemberFailed { member, .. }) => {
                self.failed.push((self.now, *member));
            }
            _ => {}
        }
        Some(event)
    }

    fn poll_timeout(&self) -> Option<Time> {
        Actor::poll_timeout(&self.node)
    }

    fn id(&self) -> MemberId {
        Actor::id(&self.node)
    }

    fn is_joined(&self) -> bool {
        Actor::is_joined(&self.node)
    }

    fn view(&self) -> Vec<MemberId> {
        Actor::view(&self.node)
    }

    fn suspicion_enabled(&self) -> bool {
        Actor::suspicion_enabled(&self.node)
    }

    fn queue_lengths(&self) -> Vec<(&'static str, usize)> {
        Actor::queue_lengths(&self.node)
    }

    fn unsendable_frames(&self) -> u64 {
        Actor::unsendable_frames(&self.node)
    }

    fn submit(&mut self, now: Time, op: ClientOp) -> Option<Result<OpId, HydfsError>> {
        self.now = now;
        Actor::submit(&mut self.node, now, op)
    }

    fn hydfs(&self) -> Option<&Hydfs> {
        Some(self.node.hydfs())
    }
}

// ----- a cluster driven by hand -------------------------------------------------------------

fn net() -> NetConfig {
    NetConfig {
        loss_permille: 0,
        duplicate_permille: 0,
        latency_min_ms: 1,
        latency_max_ms: 2,
        bandwidth_bytes_per_ms: BANDWIDTH_BYTES_PER_MS,
        ..NetConfig::default()
    }
}

/// A scenario with HyDFS on (`config`) and no workload clients: nothing is issued but what the
/// benchmark submits (the workload's final merge covers its own files, of which there are none).
fn scenario(name: String, seed: u64, config: HydfsConfig) -> Scenario {
    Scenario {
        name,
        seed,
        nodes: NODES,
        config: MembershipConfig::lan(),
        net: net(),
        clock_offsets_ms: Vec::new(),
        clock_drift_ppm: Vec::new(),
        faults: Vec::new(),
        calm_from_ms: 0,
        duration_ms: RUN_MS,
        strict_detection_ms: None,
        hydfs: Some(HydfsWorkload {
            config,
            clients: Vec::new(),
            files: 0,
            zipf_milli: 0,
            think_ms: 1_000,
            large_permille: 0,
            small_max_bytes: 16,
            large_max_bytes: 16,
            start_ms: 0,
            stop_ms: 0,
            final_merge_ms: 0,
            background_sync: false,
        }),
        rainstorm: None,
        cluster_key: false,
    }
}

struct Cluster {
    world: World<Recorder>,
}

impl Cluster {
    /// Ten nodes, run until every node's ring lists all ten.
    fn form(name: String, seed: u64, config: HydfsConfig) -> Result<Cluster, String> {
        let mut world = World::<Recorder>::new(scenario(name, seed, config), RunOptions::default());
        let formed = world.run_until_or(Time(FORM_LIMIT_MS), |w| {
            (0..NODES).all(|s| w.node(s).and_then(|n| n.hydfs()).is_some_and(|h| h.ring().len() == NODES))
        });
        match formed {
            Some(_) => Ok(Cluster { world }),
            None => Err(format!("seed {seed}: the cluster did not form within {FORM_LIMIT_MS} ms")),
        }
    }

    fn now(&self) -> Time {
        self.world.now()
    }

    fn hydfs(&self, slot: usize) -> Option<&Hydfs> {
        self.world.node(slot).and_then(|n| n.hydfs())
    }

    fn submit(&mut self, slot: usize, op: ClientOp) -> Result<OpId, String> {
        match self.world.submit(slot, op) {
            Some(Ok(id)) => Ok(id),
            Some(Err(e)) => Err(format!("n{slot} refused the operation: {e}")),
            None => Err(format!("n{slot} is not running")),
        }
    }

    fn take_done(&mut self, slot: usize, op: OpId) -> Option<Done> {
        self.world.node_mut(slot).and_then(|n| n.take_done(op))
    }

    /// Waits for operation `op` of `slot`.
    fn wait(&mut self, slot: usize, op: OpId) -> Result<Done, String> {
        let limit = self.now() + Millis(STEP_LIMIT_MS);
        let mut found = None;
        self.world.run_until_or(limit, |w| {
            found = w.node_mut(slot).and_then(|n| n.take_done(op));
            found.is_some()
        });
        found.ok_or_else(|| format!("operation {op} of n{slot} did not finish within {STEP_LIMIT_MS} ms"))
    }

    /// Submits and waits; an error if the operation fails.
    fn run_op(&mut self, slot: usize, op: ClientOp) -> Result<(Millis, Outcome), String> {
        let kind = op.command();
        let what = format!("{kind} {}", op.name());
        let start = self.now();
        let id = self.submit(slot, op)?;
        let done = self.wait(slot, id)?;
        match done.result {
            Ok(o) => Ok((done.at.since(start), o)),
            Err(e) => Err(format!("{what} on n{slot} failed: {e}")),
        }
    }

    /// The replicas of `name` (slots) in the view of the running nodes.
    fn replicas(&self, name: &FileName) -> Vec<usize> {
        let live = (0..NODES).filter(|s| self.world.node(*s).is_some()).map(|s| self.world.addr(s));
        let ring = Ring::new(live);
        let r = HydfsConfig::default().replication;
        ring.replicas(name.as_str(), r).into_iter().filter_map(|a| self.world.slot_of(a)).collect()
    }
}

/// The node holds `name` with every byte of every write it knows of (its create included).
fn complete_copy(h: Option<&Hydfs>, name: &FileName) -> bool {
    h.and_then(|h| h.store().meta(name)).is_some_and(|m| m.create.is_some() && m.incomplete.is_empty())
}

/// Deterministic file content (xorshift, eight bytes per step).
fn content(len: usize, salt: u64) -> Vec<u8> {
    let mut x = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn name(s: &str) -> FileName {
    FileName::new(s).expect("benchmark file names are valid")
}

// ----- 1. re-replication --------------------------------------------------------------------

#[derive(Clone, Debug)]
struct RereplicationRow {
    bytes: usize,
    create_ms: u64,
    crash_to_del_ms: Option<u64>,
    del_to_record_ms: Option<u64>,
    record_to_complete_ms: u64,
    crash_to_complete_ms: u64,
    fetched_bytes: u64,
    stream_bytes: u64,
}

impl RereplicationRow {
    fn baseline_ms(&self) -> f64 {
        self.bytes as f64 / BANDWIDTH_BYTES_PER_MS as f64
    }

    /// Crash to complete, or DEL to complete when the DEL was observed.
    fn del_to_done_ms(&self) -> u64 {
        self.crash_to_complete_ms - self.crash_to_del_ms.unwrap_or(0)
    }
}

fn rereplication(seed: u64, bytes: usize) -> Result<RereplicationRow, String> {
    let mut c = Cluster::form(format!("bench-hydfs-rereplication-{bytes}"), seed, HydfsConfig::default())?;
    let file = name(&format!("bench/rereplicate-{}MiB-{seed}", bytes / MIB));
    let old = c.replicas(&file);
    let client = (1..NODES).find(|s| !old.contains(s)).ok_or("every node is a replica")?;
    let (create, _) =
        c.run_op(client, ClientOp::Create { name: file.clone(), data: content(bytes, seed) })?;
    let limit = c.now() + Millis(STEP_LIMIT_MS);
    c.world
        .run_until_or(limit, |w| old.iter().all(|s| complete_copy(w.node(*s).and_then(|n| n.hydfs()), &file)))
        .ok_or_else(|| {
            format!("seed {seed}: the acknowledged create of {file} never completed on all replicas")
        })?;

    // Crash a replica other than the introducer (slot 0) and the client.
    let victim = *old.iter().find(|s| **s != 0 && **s != client).ok_or("no replica to crash")?;
    let victim_addr = c.world.addr(victim);
    let crashed_at = c.now();
    let stream_before = c.world.stats().stream_bytes;
    c.world.crash_now(victim);
    let new = c.replicas(&file);
    let fresh = *new.iter().find(|s| !old.contains(s)).ok_or("the crash left the replica set unchanged")?;
    let fetched_before = c.hydfs(fresh).map_or(0, |h| h.stats().bytes_fetched);
    let expected: BTreeSet<usize> = new.iter().copied().collect();
    let mut record_at = None;
    let limit = crashed_at + Millis(STEP_LIMIT_MS);
    let complete_at = c.world.run_until_or(limit, |w| {
        let h = w.node(fresh).and_then(|n| n.hydfs());
        if record_at.is_none() && h.is_some_and(|h| h.store().file(&file).is_some()) {
            record_at = Some(w.now());
        }
        let holders: BTreeSet<usize> = (0..NODES)
            .filter(|s| w.node(*s).and_then(|n| n.hydfs()).is_some_and(|h| h.store().file(&file).is_some()))
            .collect();
        complete_copy(h, &file) && holders == expected
    });
    let Some(complete_at) = complete_at else {
        return Err(format!(
            "seed {seed}, {} MiB: after n{victim} crashed at {crashed_at}, n{fresh} held no complete copy of {file} on exactly \
             the 3 live replicas within {STEP_LIMIT_MS} ms",
            bytes / MIB
        ));
    };
    let del_at = c
        .world
        .node(fresh)
        .and_then(|n| n.failed.iter().find(|(_, m)| m.addr == victim_addr).map(|(t, _)| *t));
    let record_at = record_at.unwrap_or(complete_at);
    Ok(RereplicationRow {
        bytes,
        create_ms: create.0,
        crash_to_del_ms: del_at.map(|t| t.since(crashed_at).0),
        del_to_record_ms: del_at.map(|t| record_at.since(t).0),
        record_to_complete_ms: complete_at.since(record_at).0,
        crash_to_complete_ms: complete_at.since(crashed_at).0,
        fetched_bytes: c.hydfs(fresh).map_or(0, |h| h.stats().bytes_fetched) - fetched_before,
        stream_bytes: c.world.stats().stream_bytes - stream_before,
    })
}

fn print_rereplication(out: &mut String, rows: &[Result<RereplicationRow, String>]) {
    let _ = writeln!(out, "1. Re-replication after one crash");
    let _ = writeln!(
        out,
        "   n = 10, 1 Gbit/s out per node (125,000 B/ms), latency 1-2 ms, no loss, MembershipConfig::lan(), HydfsConfig::default()"
    );
    let _ = writeln!(
        out,
        "   (3 replicas, 1 MiB parts, anti-entropy every 2 s). A replica (not the client, not the introducer) crashes once the file is complete"
    );
    let _ = writeln!(
        out,
        "   on its 3 replicas; the node that becomes the third replica must pull it. One run per seed (its own file name, so its own replicas);"
    );
    let _ = writeln!(out, "   times are means over the runs, in simulated ms.");
    let _ = writeln!(
        out,
        "   {:>5} {:>4} | {:>6} | {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>8} | {:>7} {:>7} {:>7} | {:>7} {:>7}",
        "file",
        "",
        "create",
        "crash->",
        "DEL->",
        "pull->",
        "crash->",
        "DEL->",
        "size/bw",
        "(DEL->",
        "(pull->",
        "(crash",
        "fetched",
        "stream"
    );
    let _ = writeln!(
        out,
        "   {:>5} {:>4} | {:>6} | {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>8} | {:>7} {:>7} {:>7} | {:>7} {:>7}",
        "(MiB)",
        "runs",
        "",
        "DEL",
        "pull",
        "done",
        "done",
        "done",
        "",
        "done)",
        "done)",
        "->done)",
        "(MiB)",
        "(MiB)"
    );
    let units = format!(
        "   {:>5} {:>4} | {:>6} | {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>8} | {:>7} {:>7} {:>7} |",
        "", "", "", "", "", "", "", "", "", "/bw", "/bw", "/bw"
    );
    let _ = writeln!(out, "{units}");
    let mut sizes: Vec<usize> = rows.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.bytes).collect();
    sizes.dedup();
    for bytes in sizes {
        let runs: Vec<&RereplicationRow> =
            rows.iter().filter_map(|r| r.as_ref().ok()).filter(|r| r.bytes == bytes).collect();
        let m =
            |f: &dyn Fn(&RereplicationRow) -> f64| runs.iter().map(|r| f(r)).sum::<f64>() / runs.len() as f64;
        let del_seen = runs.iter().all(|r| r.crash_to_del_ms.is_some());
        let baseline = runs[0].baseline_ms();
        let from_del = m(&|r| r.del_to_done_ms() as f64);
        let pull = m(&|r| r.record_to_complete_ms as f64);
        let crash = m(&|r| r.crash_to_complete_ms as f64);
        let _ = writeln!(
            out,
            "   {:>5} {:>4} | {:>6.0} | {:>8} {:>8} {:>8.0} | {:>8.0} {:>8.0} | {:>8.1} | {:>7.2} {:>7.2} {:>7.2} | {:>7.1} {:>7.1}",
            bytes / MIB,
            runs.len(),
            m(&|r| r.create_ms as f64),
            if del_seen { format!("{:.0}", m(&|r| r.crash_to_del_ms.unwrap_or(0) as f64)) } else { "-".into() },
            if del_seen { format!("{:.0}", m(&|r| r.del_to_record_ms.unwrap_or(0) as f64)) } else { "-".into() },
            pull,
            crash,
            from_del,
            baseline,
            from_del / baseline,
            pull / baseline,
            crash / baseline,
            m(&|r| r.fetched_bytes as f64) / MIB as f64,
            m(&|r| r.stream_bytes as f64) / MIB as f64,
        );
    }
    for e in rows.iter().filter_map(|r| r.as_ref().err()) {
        let _ = writeln!(out, "   FAILED: {e}");
    }
    let _ = writeln!(
        out,
        "   crash->DEL: until the new replica removes the crashed member (its ring changes). DEL->pull: until its anti-entropy (every 2 s)"
    );
    let _ = writeln!(
        out,
        "   asks a neighbour and records the file. pull->done: fetching every part (all asked at once of one source, whose 1 Gbit/s uplink"
    );
    let _ = writeln!(
        out,
        "   is the bottleneck); done also requires the file on exactly the 3 live replicas. size/bw: the transfer alone (the baseline)."
    );
    let _ = writeln!(
        out,
        "   fetched: file bytes the new replica stored; stream: every stream byte in the cluster from the crash to done (with headers and"
    );
    let _ = writeln!(out, "   membership sync).");
    let _ = writeln!(out);
}

// ----- 2. merge after concurrent appends ----------------------------------------------------

#[derive(Clone, Debug)]
struct MergeRow {
    clients: usize,
    append_bytes: usize,
    appends: usize,
    failed_appends: usize,
    appends_ms: u64,
    merge_ms: u64,
    merged: u32,
    moved: u64,
    second_ms: u64,
    second_merged: u32,
    second_moved: u64,
    identical: bool,
}

fn merge_run(seed: u64, clients: usize, appends: usize, append_bytes: usize) -> Result<MergeRow, String> {
    let label = format!("bench-hydfs-merge-{clients}x{append_bytes}");
    let mut c = Cluster::form(label.clone(), seed, HydfsConfig::default())?;
    let file = name("bench/appended");
    let reps = c.replicas(&file);
    // Clients: the nodes that are not replicas first, then the replicas.
    let mut order: Vec<usize> = (0..NODES).filter(|s| !reps.contains(s)).collect();
    order.extend(reps.iter().copied());
    let slots: Vec<usize> = order.into_iter().take(clients).collect();
    c.run_op(slots[0], ClientOp::Create { name: file.clone(), data: content(append_bytes, seed) })?;

    // Each client appends its share one at a time; all clients at once.
    let mut left: Vec<usize> =
        (0..clients).map(|i| appends / clients + usize::from(i < appends % clients)).collect();
    let mut in_flight: Vec<Option<OpId>> = vec![None; clients];
    let mut tag = 0u64;
    let mut failed = 0;
    let started = c.now();
    let limit = started + Millis(STEP_LIMIT_MS);
    loop {
        for i in 0..clients {
            if let Some(op) = in_flight[i] {
                match c.take_done(slots[i], op) {
                    Some(d) => {
                        failed += usize::from(d.result.is_err());
                        in_flight[i] = None;
                    }
                    None => continue,
                }
            }
            if left[i] > 0 {
                left[i] -= 1;
                tag += 1;
                let data = content(append_bytes, seed ^ tag);
                in_flight[i] = Some(c.submit(slots[i], ClientOp::Append { name: file.clone(), data })?);
            }
        }
        if in_flight.iter().all(Option::is_none) {
            break;
        }
        if c.now() >= limit {
            return Err(format!("{label}: appends still running after {STEP_LIMIT_MS} ms"));
        }
        c.world.step(limit);
    }
    let appends_ms = c.now().since(started).0;

    let (merge, first) = c.run_op(slots[0], ClientOp::Merge { name: file.clone() })?;
    let (second_merge, second) = c.run_op(slots[0], ClientOp::Merge { name: file.clone() })?;
    let hashes: BTreeSet<Option<u64>> =
        reps.iter().map(|s| c.hydfs(*s).and_then(|h| h.store().merged_hash(&file))).collect();
    let pending = reps
        .iter()
        .any(|s| c.hydfs(*s).and_then(|h| h.store().meta(&file)).is_none_or(|m| !m.pending.is_empty()));
    let (merged, moved) = first.merged.unwrap_or_default();
    let (second_merged, second_moved) = second.merged.unwrap_or_default();
    Ok(MergeRow {
        clients,
        append_bytes,
        appends,
        failed_appends: failed,
        appends_ms,
        merge_ms: merge.0,
        merged,
        moved,
        second_ms: second_merge.0,
        second_merged,
        second_moved,
        identical: hashes.len() == 1 && !pending,
    })
}

fn print_merges(out: &mut String, rows: &[Result<MergeRow, String>], appends: usize) {
    let _ = writeln!(out, "2. Merge after {appends} concurrent appends");
    let _ = writeln!(
        out,
        "   Same cluster. The clients (non-replicas first) append {appends} times in total, each client one append at a time, all clients at"
    );
    let _ = writeln!(
        out,
        "   once; when every append is acknowledged the first client merges, then merges again at once. Times are submit -> result."
    );
    let _ = writeln!(
        out,
        "   {:>7} {:>6} | {:>8} {:>10} {:>6} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>9}",
        "clients",
        "append",
        "appends",
        "appends/s",
        "failed",
        "merge 1",
        "merged",
        "moved",
        "merge 2",
        "merged",
        "moved",
        "replicas"
    );
    let _ = writeln!(
        out,
        "   {:>7} {:>6} | {:>8} {:>10} {:>6} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>9}",
        "", "(KiB)", "(s)", "", "", "(ms)", "appends", "(bytes)", "(ms)", "appends", "(bytes)", "identical"
    );
    for row in rows {
        let r = match row {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(out, "   FAILED: {e}");
                continue;
            }
        };
        let secs = r.appends_ms as f64 / 1000.0;
        let _ = writeln!(
            out,
            "   {:>7} {:>6} | {:>8.2} {:>10.0} {:>6} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>9}",
            r.clients,
            r.append_bytes / KIB,
            secs,
            (r.appends - r.failed_appends) as f64 / secs.max(0.001),
            r.failed_appends,
            r.merge_ms,
            r.merged,
            r.moved,
            r.second_ms,
            r.second_merged,
            r.second_moved,
            if r.identical { "yes" } else { "NO" },
        );
    }
    let _ = writeln!(
        out,
        "   moved: MergeSummary.bytes_moved, file bytes fetched between nodes to install the merge. A write is acknowledged only once every"
    );
    let _ = writeln!(
        out,
        "   replica holds it, so without faults each replica already has every append and a merge moves metadata only (the order)."
    );
    let _ = writeln!(
        out,
        "   replicas identical: the 3 replicas have the same merged order and nothing pending after the merges."
    );
    let _ = writeln!(out);
}

// ----- 3. read cache ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Access {
    Uniform,
    Zipf,
}

impl Access {
    fn label(self) -> &'static str {
        match self {
            Access::Uniform => "uniform",
            Access::Zipf => "Zipf s=1",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct CachePlan {
    files: usize,
    file_bytes: usize,
    ops: usize,
    append_bytes: usize,
}

impl CachePlan {
    fn new(quick: bool) -> CachePlan {
        CachePlan {
            files: 100,
            file_bytes: 40 * KIB,
            ops: if quick { 400 } else { 2_000 },
            append_bytes: 4 * KIB,
        }
    }

    fn data_bytes(&self) -> u64 {
        (self.files * self.file_bytes) as u64
    }
}

#[derive(Clone, Debug)]
struct CacheRow {
    access: Access,
    appends_pct: u32,
    cache_pct: u32,
    gets: u64,
    appends: u64,
    hits: u64,
    misses: u64,
    get_ms_total: u64,
    fetched_bytes: u64,
}

impl CacheRow {
    fn hit_ratio(&self) -> f64 {
        self.hits as f64 / (self.hits + self.misses).max(1) as f64
    }

    fn mean_get_ms(&self) -> f64 {
        self.get_ms_total as f64 / self.gets.max(1) as f64
    }

    fn fetched_per_get(&self) -> f64 {
        self.fetched_bytes as f64 / self.gets.max(1) as f64
    }
}

/// The operations of one cache run: (file, is an append). The same for every cache size.
fn cache_ops(plan: CachePlan, access: Access, appends_pct: u32, seed: u64) -> Vec<(usize, bool)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xCAC4E);
    let weights: Vec<f64> = (1..=plan.files)
        .map(|k| match access {
            Access::Uniform => 1.0,
            Access::Zipf => 1.0 / k as f64,
        })
        .collect();
    let total: f64 = weights.iter().sum();
    (0..plan.ops)
        .map(|_| {
            let mut x = rng.gen::<f64>() * total;
            let mut file = plan.files - 1;
            for (i, w) in weights.iter().enumerate() {
                if x < *w {
                    file = i;
                    break;
                }
                x -= w;
            }
            (file, rng.gen_range(0..100) < appends_pct)
        })
        .collect()
}

fn cache_run(
    seed: u64,
    plan: CachePlan,
    access: Access,
    appends_pct: u32,
    cache_pct: u32,
) -> Result<CacheRow, String> {
    let cache_bytes = plan.data_bytes() * cache_pct as u64 / 100;
    let config = HydfsConfig { cache_bytes, ..HydfsConfig::default() };
    let label = format!("bench-hydfs-cache-{access:?}-{appends_pct}-{cache_pct}");
    let mut c = Cluster::form(label, seed, config)?;
    let client = 3;
    let names: Vec<FileName> = (0..plan.files).map(|i| name(&format!("bench/cached-{i}"))).collect();
    // Create every file at once (different files are written in parallel), then wait for all.
    let mut creates = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let data = content(plan.file_bytes, seed ^ i as u64);
        creates.push(c.submit(client, ClientOp::Create { name: n.clone(), data })?);
    }
    for op in creates {
        let done = c.wait(client, op)?;
        done.result.map_err(|e| format!("seed {seed}: a create failed: {e}"))?;
    }
    let stats = |c: &Cluster| c.hydfs(client).map(|h| h.stats()).unwrap_or_default();
    let before = stats(&c);
    let mut row = CacheRow {
        access,
        appends_pct,
        cache_pct,
        gets: 0,
        appends: 0,
        hits: 0,
        misses: 0,
        get_ms_total: 0,
        fetched_bytes: 0,
    };
    for (i, (file, append)) in cache_ops(plan, access, appends_pct, seed).into_iter().enumerate() {
        let n = names[file].clone();
        if append {
            let data = content(plan.append_bytes, seed ^ (1 << 32) ^ i as u64);
            c.run_op(client, ClientOp::Append { name: n, data })?;
            row.appends += 1;
        } else {
            let (took, out) = c.run_op(client, ClientOp::Download { name: n, from: ReadFrom::Any })?;
            row.gets += 1;
            row.get_ms_total += took.0;
            if !out.from_cache {
                row.fetched_bytes += out.read_bytes as u64;
            }
        }
    }
    let after = stats(&c);
    row.hits = after.cache_hits - before.cache_hits;
    row.misses = after.cache_misses - before.cache_misses;
    Ok(row)
}

const CACHE_PCTS: [u32; 5] = [0, 10, 20, 50, 100];
const APPEND_MIXES: [u32; 2] = [0, 10];

fn print_cache(out: &mut String, rows: &[Result<CacheRow, String>], plan: CachePlan) {
    let _ = writeln!(out, "3. Client read cache");
    let _ = writeln!(
        out,
        "   Same cluster. One client (n3) creates {} files of {} KiB ({:.1} MiB), then runs {} operations one at a time: gets of a file",
        plan.files,
        plan.file_bytes / KIB,
        plan.data_bytes() as f64 / MIB as f64,
        plan.ops
    );
    let _ = writeln!(
        out,
        "   drawn uniformly or by Zipf (s = 1), and in the mixed runs 1 op in 10 an append of {} KiB by the same client to a file drawn the same",
        plan.append_bytes / KIB
    );
    let _ = writeln!(
        out,
        "   way. Cache: LRU, HydfsConfig.cache_bytes as a share of the initial data (0 = off); the op sequence is the same for every size."
    );
    let _ = writeln!(
        out,
        "   {:<8} {:>7} {:>6} | {:>5} {:>7} | {:>8} {:>10} | {:>9} {:>10}",
        "access", "appends", "cache", "gets", "hit", "mean get", "vs no", "KiB", "vs no"
    );
    let _ = writeln!(
        out,
        "   {:<8} {:>7} {:>6} | {:>5} {:>7} | {:>8} {:>10} | {:>9} {:>10}",
        "", "", "", "", "ratio", "(ms)", "cache", "fetched/get", "cache"
    );
    let ok: Vec<&CacheRow> = rows.iter().filter_map(|r| r.as_ref().ok()).collect();
    for row in rows {
        let r = match row {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(out, "   FAILED: {e}");
                continue;
            }
        };
        let base = ok
            .iter()
            .find(|b| b.access == r.access && b.appends_pct == r.appends_pct && b.cache_pct == 0)
            .copied();
        let ratio = |x: f64, b: Option<f64>| match b {
            Some(b) if b > 0.0 => format!("{:.2}x", x / b),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "   {:<8} {:>6}% {:>5}% | {:>5} {:>6.1}% | {:>8.2} {:>10} | {:>11.1} {:>8}",
            r.access.label(),
            r.appends_pct,
            r.cache_pct,
            r.gets,
            100.0 * r.hit_ratio(),
            r.mean_get_ms(),
            ratio(r.mean_get_ms(), base.map(|b| b.mean_get_ms())),
            r.fetched_per_get() / KIB as f64,
            ratio(r.fetched_per_get(), base.map(|b| b.fetched_per_get())),
        );
    }
    let _ = writeln!(
        out,
        "   mean get: submit -> content, in simulated ms (a hit is served at once: 0 ms). KiB fetched/get: file bytes read from replicas over"
    );
    let _ = writeln!(
        out,
        "   the network per get. An acknowledged append by the client invalidates its cached copy of that file (read-your-writes)."
    );
    let _ = writeln!(out);
}

// ----- the whole benchmark ------------------------------------------------------------------

enum Job {
    Rereplication { seed: u64, bytes: usize },
    Merge { seed: u64, clients: usize, appends: usize, append_bytes: usize },
    Cache { seed: u64, plan: CachePlan, access: Access, appends_pct: u32, cache_pct: u32 },
}

enum JobResult {
    Rereplication(Result<RereplicationRow, String>),
    Merge(Result<MergeRow, String>),
    Cache(Result<CacheRow, String>),
}

impl Job {
    /// Runs the job; a panic in a node becomes a failed row (the panic hook has printed it).
    fn run(self) -> JobResult {
        fn guard<T>(what: String, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err(format!("{what}: a node panicked")))
        }
        match self {
            Job::Rereplication { seed, bytes } => JobResult::Rereplication(guard(
                format!("re-replication of {} MiB, seed {seed}", bytes / MIB),
                || rereplication(seed, bytes),
            )),
            Job::Merge { seed, clients, appends, append_bytes } => JobResult::Merge(guard(
                format!("merge, {clients} clients x {} KiB, seed {seed}", append_bytes / KIB),
                || merge_run(seed, clients, appends, append_bytes),
            )),
            Job::Cache { seed, plan, access, appends_pct, cache_pct } => JobResult::Cache(guard(
                format!("cache, {} {appends_pct}% appends, {cache_pct}% cache, seed {seed}", access.label()),
                || cache_run(seed, plan, access, appends_pct, cache_pct),
            )),
        }
    }
}

pub fn run(scale: Scale) -> Result<()> {
    let started = Instant::now();
    let quick = scale.quick;
    let sizes_mib: &[usize] = if quick { &[1, 10] } else { &[1, 10, 50, 100] };
    let seeds = if quick { 2 } else { 5 };
    let appends = if quick { 200 } else { 1_000 };
    let plan = CachePlan::new(quick);

    // The largest files first, so the two threads finish together.
    let mut jobs: Vec<Job> = sizes_mib
        .iter()
        .rev()
        .flat_map(|&m| (0..seeds).map(move |i| Job::Rereplication { seed: 7_001 + i, bytes: m * MIB }))
        .collect();
    for append_bytes in [40 * KIB, 4 * KIB] {
        for clients in [1, 2, 5, 10] {
            jobs.push(Job::Merge { seed: 8_001, clients, appends, append_bytes });
        }
    }
    for access in [Access::Uniform, Access::Zipf] {
        for appends_pct in APPEND_MIXES {
            for cache_pct in CACHE_PCTS {
                jobs.push(Job::Cache { seed: 9_001, plan, access, appends_pct, cache_pct });
            }
        }
    }
    let results = parallel_map(jobs, |job| {
        let t = Instant::now();
        (job.run(), t.elapsed())
    });
    let mut cpu = [Duration::ZERO; 3];
    let (mut rr, mut merges, mut caches) = (Vec::new(), Vec::new(), Vec::new());
    for (r, took) in results {
        match r {
            JobResult::Rereplication(r) => {
                cpu[0] += took;
                rr.push(r);
            }
            JobResult::Merge(r) => {
                cpu[1] += took;
                merges.push(r);
            }
            JobResult::Cache(r) => {
                cpu[2] += took;
                caches.push(r);
            }
        }
    }
    rr.sort_by_key(|r| r.as_ref().map_or(0, |r| r.bytes));
    merges.sort_by_key(|r| r.as_ref().map_or((0, 0), |r| (r.append_bytes, r.clients)));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "rainstorm bench hydfs{}: every figure is simulated from fixed seeds and replays exactly, except wall-clock times",
        if quick { " --quick (smaller files, fewer operations)" } else { "" }
    );
    let _ = writeln!(out);
    print_rereplication(&mut out, &rr);
    print_merges(&mut out, &merges, appends);
    print_cache(&mut out, &caches, plan);
    let _ = writeln!(out, "Notes");
    let _ = writeln!(
        out,
        "  * Bandwidth model: each node's outgoing stream frames queue on one link of 1 Gbit/s (a frame leaves when the link is free and takes"
    );
    let _ = writeln!(
        out,
        "    its size / bandwidth), then the 1-2 ms latency; incoming links and disks are not limited. Datagrams (membership) are not limited."
    );
    let _ = writeln!(
        out,
        "  * Link time is counted in microseconds; a frame arrives in the first whole ms after it has left the link. Appends are"
    );
    let _ = writeln!(
        out,
        "    bound by round trips (each client waits for one acknowledgement before its next append), not by bandwidth."
    );
    let _ = writeln!(
        out,
        "  * Wall time {:.1} s on {} threads (run time summed over runs: re-replication {:.1} s, merge {:.1} s, cache {:.1} s).",
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu[0].as_secs_f64(),
        cpu[1].as_secs_f64(),
        cpu[2].as_secs_f64(),
    );
    print!("{out}");
    let failed = rr.iter().filter(|r| r.is_err()).count()
        + merges.iter().filter(|r| r.is_err()).count()
        + caches.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        bail!("{failed} experiment runs failed (see FAILED above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crashed_replica_is_replaced_by_a_complete_copy() {
        let r = rereplication(7_001, MIB).expect("re-replication completes");
        assert_eq!(r.fetched_bytes, MIB as u64, "the new replica pulled the whole file once");
        assert!(r.crash_to_del_ms.is_some(), "the new replica saw the crashed member removed");
        assert!(r.crash_to_complete_ms >= r.crash_to_del_ms.unwrap_or(0));
        assert!(r.record_to_complete_ms as f64 >= r.baseline_ms().floor(), "no faster than the link");
    }

    #[test]
    fn a_second_merge_right_after_moves_nothing() {
        let r = merge_run(8_001, 2, 50, 4 * KIB).expect("appends and merges succeed");
        assert_eq!(r.failed_appends, 0);
        assert_eq!(r.merged, 50, "the first merge orders every append");
        assert_eq!((r.second_merged, r.second_moved), (0, 0));
        assert!(r.identical);
    }

    #[test]
    fn a_cache_holding_everything_serves_repeated_reads() {
        let plan = CachePlan { files: 4, file_bytes: 8 * KIB, ops: 20, append_bytes: KIB };
        let full = cache_run(9_001, plan, Access::Uniform, 0, 100).expect("cache run");
        assert_eq!(full.gets, 20);
        assert_eq!(full.hits + full.misses, 20);
        assert!(full.hit_ratio() > 0.0);
        assert!(full.misses <= 4, "each file is fetched at most once");
        let off = cache_run(9_001, plan, Access::Uniform, 0, 0).expect("cache run");
        assert_eq!(off.hits, 0);
        assert_eq!(off.fetched_bytes, 20 * 8 * KIB as u64);
        assert!(full.fetched_bytes < off.fetched_bytes);
        let mixed = cache_run(9_001, plan, Access::Zipf, 10, 100).expect("mixed run");
        assert_eq!(mixed.gets + mixed.appends, 20);
    }

    #[test]
    fn cache_ops_are_the_same_for_every_cache_size_and_skewed_under_zipf() {
        let plan = CachePlan::new(false);
        assert_eq!(cache_ops(plan, Access::Zipf, 10, 1), cache_ops(plan, Access::Zipf, 10, 1));
        let zipf = cache_ops(plan, Access::Zipf, 0, 1);
        let top = zipf.iter().filter(|(f, _)| *f == 0).count();
        assert!(top > plan.ops / 10, "the first file gets about 19% of Zipf reads, got {top}");
        let appends = cache_ops(plan, Access::Uniform, 10, 1).iter().filter(|(_, a)| *a).count();
        assert!((100..300).contains(&appends));
    }
}
