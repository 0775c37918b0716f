//! `bench rainstorm`: RainStorm jobs run in the simulator, on a modelled 10-node cluster.
//!
//! 1. Throughput and journal cost vs batch size: App 1 (`grep:Stop` then
//!    `project:OBJECTID,Sign_Type`) and App 2 (`column:Sign_Post=Punched Telespar` then
//!    `count:Category`) over the Traffic Signs data, fault-free, at `RainstormConfig.batch_lines`
//!    1 to 256: input tuples per second of simulated time (submit to `JobCompleted`), the wall
//!    time of the simulation, and the journal bytes, journal appends and stream bytes per input
//!    tuple, against the single-process reference pipeline (`reference::run`) timed on the same
//!    input in the same run.
//! 2. Recovery vs job size: App 2 over generated inputs of growing size; once the leader has half
//!    of the job's outputs, the worker hosting a stage-2 task crashes and stays down. How long
//!    until every task it hosted runs again elsewhere (crash to DEL at the leader, DEL to the
//!    new placement, placement to `TaskStarted`), and how many journal bytes the replacements
//!    read: with compaction every 100 journal appends at every size, and for the largest job
//!    also with the default (1,000) and with compaction off.
//!
//! Every run is 10 nodes, `MembershipConfig::lan()`, 1 Gbit/s of outgoing stream bandwidth per
//! node, 1-2 ms latency, no loss, `HydfsConfig::default()`, 3 tasks per stage, from fixed seeds:
//! every simulated figure replays exactly; only the wall times (the simulation's and the
//! reference's) vary. The jobs run through the simulator's RainStorm harness, which also judges
//! every job's output against the reference (the `exact` columns).
//!
//! Journal bytes are counted at the end of a run from the replicas' stores: every write (create
//! or append) of every file under `rainstorm/<job>/journal/` on any live node, once per
//! (file, write stamp), so each byte RainStorm journaled counts once whatever its replication.
//! Bytes read to recover are counted where they are served: a replica that begins a read of a
//! journal file (HyDFS reports `Handled { what: "get" }`) for the replacement's node counts the
//! bytes of the complete writes it holds of that file.

use super::{parallel_map, Scale};
use anyhow::{bail, Result};
use rainstorm_core::command::Command;
use rainstorm_core::hydfs::{ClientOp, FileName, Hydfs, HydfsConfig, HydfsError, HydfsEvent, OpId, Stamp};
use rainstorm_core::membership::{MembershipConfig, MembershipEvent};
use rainstorm_core::node::NodeEvent;
use rainstorm_core::rainstorm::{
    reference, source_lines, Epoch, JobError, JobId, JobSpec, OperatorSpec, ProgramResult, RainstormConfig,
    RainstormEvent, TaskId,
};
use rainstorm_core::{Channel, MemberId, Millis, Node, NodeAddr, Time, Transmit};
use rainstorm_sim::hydfs::HydfsWorkload;
use rainstorm_sim::rainstorm::harness::{InputSpec, RainstormWorkload};
use rainstorm_sim::scenario::Slot;
use rainstorm_sim::{Actor, ActorStart, NetConfig, RunOptions, Scenario, World};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

const NODES: usize = 10;
const TASKS: u32 = 3;
/// 1 Gbit/s of outgoing stream bandwidth per node.
const BANDWIDTH_BYTES_PER_MS: u64 = 125_000;
const KIB: f64 = 1024.0;
/// The slot that stores the input and leads the job (never crashed).
const LEADER: Slot = 1;
/// The slot that reads the destination if the leader is gone (never crashed).
const READER: Slot = 2;
/// When the input is stored and the job submitted (the cluster has formed by then).
const START_MS: u64 = 5_000;
/// How long a job may take in simulated time before its run counts as stuck.
const JOB_LIMIT_MS: u64 = 4 * 3_600_000;
/// How long reading the destination back and judging it may take.
const JUDGE_LIMIT_MS: u64 = 120_000;
/// A simulated run never ends by itself; the benchmark stops when it has its figures.
const RUN_MS: u64 = 24 * 3_600_000;
/// The input file the harness stores (`in/job.csv`).
const SRC: &str = "in/job.csv";

const APP1: (&str, &str) = ("grep:Stop", "project:OBJECTID,Sign_Type");
const APP2: (&str, &str) = ("column:Sign_Post=Punched Telespar", "count:Category");

// ----- a node that records what the benchmark needs -----------------------------------------

/// Something a node saw, at the simulated time it saw it.
#[derive(Clone, Debug)]
enum Seen {
    /// A RainStorm event (outputs are left out: the harness counts them).
    Rainstorm(RainstormEvent),
    /// This node declared the member at this address failed.
    Failed(NodeAddr),
    /// This node began serving a read of `name` to `from`; `bytes`: the complete writes of the
    /// file it held then (what the read returns).
    Read { name: FileName, from: NodeAddr, bytes: u64 },
}

/// `rainstorm_core::Node` recording the events the benchmark reads.
struct Recorder {
    node: Node,
    /// The clock of the latest input (the world gives no time with `poll_event`); these scenarios
    /// have no clock offsets, so it is simulated time.
    now: Time,
    seen: Vec<(Time, Seen)>,
}

/// Bytes of the complete writes of `name` held by `h`.
fn held_bytes(h: &Hydfs, name: &FileName) -> u64 {
    h.store()
        .meta(name)
        .map_or(0, |m| m.all_writes().filter(|w| !m.incomplete.contains(&w.stamp)).map(|w| w.len()).sum())
}

impl Actor for Recorder {
    fn start(start: &ActorStart) -> Recorder {
        Recorder { node: <Node as Actor>::start(start), now: start.now, seen: Vec::new() }
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
        let seen = match &event {
            NodeEvent::Rainstorm(RainstormEvent::Output { .. }) => None,
            NodeEvent::Rainstorm(e) => Some(Seen::Rainstorm(e.clone())),
            NodeEvent::Membership(MembershipEvent::MemberFailed { member, .. }) => {
                Some(Seen::Failed(member.addr))
            }
            NodeEvent::Hydfs(HydfsEvent::Handled { what, name, from }) if *what == "get" => {
                let bytes = held_bytes(self.node.hydfs(), name);
                Some(Seen::Read { name: name.clone(), from: *from, bytes })
            }
            _ => None,
        };
        if let Some(seen) = seen {
            self.seen.push((self.now, seen));
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

    fn start_job(&mut self, now: Time, spec: JobSpec) -> Option<Result<JobId, JobError>> {
        self.now = now;
        Actor::start_job(&mut self.node, now, spec)
    }

    fn describe_jobs(&self) -> Vec<String> {
        Actor::describe_jobs(&self.node)
    }

    fn handle_program_result(&mut self, now: Time, token: u64, result: Result<ProgramResult, String>) {
        self.now = now;
        Actor::handle_program_result(&mut self.node, now, token, result);
    }
}

// ----- one job in a simulated cluster -------------------------------------------------------

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

/// What one benchmark run is: a job, its input and its settings.
#[derive(Clone, Debug)]
struct JobPlan {
    label: String,
    seed: u64,
    input: InputSpec,
    input_seed: u64,
    ops: (&'static str, &'static str),
    config: RainstormConfig,
}

impl JobPlan {
    fn workload(&self) -> RainstormWorkload {
        RainstormWorkload {
            config: self.config.clone(),
            leader: LEADER,
            input: self.input.clone(),
            input_seed: self.input_seed,
            op1: self.ops.0.to_owned(),
            op2: self.ops.1.to_owned(),
            tasks: TASKS,
            start_ms: START_MS,
            deadline_ms: RUN_MS,
            leader_crash_ms: None,
            reader: READER,
        }
    }

    /// A fault-free scenario (the benchmark may crash a node itself) running only this job.
    fn scenario(&self) -> Scenario {
        Scenario {
            name: self.label.clone(),
            seed: self.seed,
            nodes: NODES,
            config: MembershipConfig::lan(),
            net: net(),
            clock_offsets_ms: Vec::new(),
            faults: Vec::new(),
            calm_from_ms: 0,
            duration_ms: RUN_MS,
            strict_detection_ms: None,
            hydfs: Some(HydfsWorkload::settings_only(HydfsConfig::default(), false)),
            rainstorm: Some(self.workload()),
            cluster_key: false,
        }
    }
}

/// The writes of one journal file: whose it is and the length of each write by stamp.
#[derive(Clone, Debug, Default)]
struct JournalFile {
    /// `s<stage>-t<index>`, and the epoch of the incarnation that wrote the file.
    task: String,
    epoch: Epoch,
    writes: BTreeMap<Stamp, u64>,
}

impl JournalFile {
    fn bytes(&self) -> u64 {
        self.writes.values().sum()
    }
}

/// `rainstorm/<job>/journal/s<stage>-t<index>.e<epoch>.g<generation>` split into task, epoch and
/// generation.
fn parse_journal(name: &str) -> Option<(String, Epoch, u32)> {
    let (_, file) = name.split_once("/journal/")?;
    let (rest, generation) = file.rsplit_once(".g")?;
    let (task, epoch) = rest.rsplit_once(".e")?;
    Some((task.to_owned(), epoch.parse().ok()?, generation.parse().ok()?))
}

/// Every journal file on the live nodes, each write once.
fn journal_files(w: &World<Recorder>) -> BTreeMap<FileName, JournalFile> {
    let mut files: BTreeMap<FileName, JournalFile> = BTreeMap::new();
    for slot in 0..w.slots() {
        let Some(h) = w.node(slot).and_then(|n| n.hydfs()) else { continue };
        for (name, rec) in h.store().files() {
            let Some((task, epoch, _)) = parse_journal(name.as_str()) else { continue };
            let f = files.entry(name.clone()).or_insert_with(|| JournalFile {
                task,
                epoch,
                ..Default::default()
            });
            for write in rec.writes() {
                f.writes.entry(write.stamp).or_insert(write.len());
            }
        }
    }
    files
}

/// The benchmark crashes a worker (for good) once the job's leader has `at_outputs` outputs.
#[derive(Clone, Copy, Debug)]
struct CrashPlan {
    at_outputs: u64,
}

/// What one job run gave.
struct JobRun {
    input_lines: usize,
    submitted: Time,
    completed: Time,
    wall: Duration,
    events: u64,
    /// Stream bytes sent in the whole cluster from the job's submission to its completion.
    stream_bytes: u64,
    journal: BTreeMap<FileName, JournalFile>,
    seen: Vec<(Time, Slot, Seen)>,
    /// When and which slot the benchmark crashed.
    crash: Option<(Time, Slot)>,
    /// Slot addresses, to map members to slots.
    addrs: Vec<NodeAddr>,
    /// The simulator's findings (the harness's verdict on the output among them).
    violations: Vec<String>,
}

impl JobRun {
    fn job_ms(&self) -> u64 {
        self.completed.since(self.submitted).0
    }

    fn tuples_per_sec(&self) -> f64 {
        self.input_lines as f64 / (self.job_ms().max(1) as f64 / 1000.0)
    }

    fn journal_bytes(&self) -> u64 {
        self.journal.values().map(JournalFile::bytes).sum()
    }

    fn journal_writes(&self) -> usize {
        self.journal.values().map(|f| f.writes.len()).sum()
    }
}

/// Moves what every node recorded into `into`, with its slot.
fn collect(w: &mut World<Recorder>, into: &mut Vec<(Time, Slot, Seen)>) {
    for slot in 0..w.slots() {
        if let Some(n) = w.node_mut(slot) {
            into.extend(n.seen.drain(..).map(|(t, s)| (t, slot, s)));
        }
    }
}

/// The latest placement the leader made of every task: host address and epoch.
fn placements(seen: &[(Time, Slot, Seen)]) -> BTreeMap<TaskId, (NodeAddr, Epoch)> {
    let mut at = BTreeMap::new();
    for (_, slot, s) in seen {
        if let (LEADER, Seen::Rainstorm(RainstormEvent::TaskScheduled { task, epoch, host, .. })) = (*slot, s)
        {
            at.insert(*task, (host.addr, *epoch));
        }
    }
    at
}

/// The worker to crash: the host of the first stage-2 task, else stage-1, else stage-0 task that
/// is not the leader, the reader or the introducer.
fn pick_victim(w: &World<Recorder>, seen: &[(Time, Slot, Seen)]) -> Option<Slot> {
    let placed = placements(seen);
    let mut tasks: Vec<(&TaskId, &(NodeAddr, Epoch))> = placed.iter().collect();
    tasks.sort_by_key(|(t, _)| (std::cmp::Reverse(t.stage), t.index));
    tasks
        .into_iter()
        .filter_map(|(_, (addr, _))| w.slot_of(*addr))
        .find(|s| ![0, LEADER, READER].contains(s) && w.node(*s).is_some())
}

fn run_job(plan: &JobPlan, crash: Option<CrashPlan>) -> Result<JobRun, String> {
    let started = Instant::now();
    let mut w = World::<Recorder>::new(plan.scenario(), RunOptions::default());
    let mut seen = Vec::new();
    let mut crashed: Option<(Time, Slot)> = None;
    let mut refused = None;
    let mut stream_at_submit = None;
    let done = w.run_until_or(Time(JOB_LIMIT_MS), |w| {
        collect(w, &mut seen);
        let Some(stats) = w.job_stats() else { return true };
        if stream_at_submit.is_none() && stats.submitted_ms.is_some() {
            stream_at_submit = Some(w.stats().stream_bytes);
        }
        if let (Some(c), None) = (crash, crashed) {
            if stats.outputs >= c.at_outputs && stats.completed_ms.is_none() {
                match pick_victim(w, &seen) {
                    Some(victim) => {
                        crashed = Some((w.now(), victim));
                        w.crash_now(victim);
                    }
                    None => refused = Some("no worker to crash (every task is on a spared node)".to_owned()),
                }
            }
        }
        let stats = w.job_stats();
        refused.is_some() || stats.is_some_and(|s| s.completed_ms.is_some() || s.failed.is_some())
    });
    let fail = |why: String| format!("{}: {why}", plan.label);
    if let Some(why) = refused {
        return Err(fail(why));
    }
    if done.is_none() {
        return Err(fail(format!(
            "the job did not complete within {} s of simulated time",
            JOB_LIMIT_MS / 1000
        )));
    }
    let stats = w.job_stats().cloned().unwrap_or_default();
    if let Some(why) = &stats.failed {
        return Err(fail(format!("the job failed: {why}")));
    }
    let (Some(submitted), Some(completed)) = (stats.submitted_ms, stats.completed_ms) else {
        return Err(fail("the job never started".to_owned()));
    };
    let stream_bytes = w.stats().stream_bytes - stream_at_submit.unwrap_or(0);
    let limit = w.now() + Millis(JUDGE_LIMIT_MS);
    w.run_until_or(limit, |w| w.job_judged());
    collect(&mut w, &mut seen);
    let journal = journal_files(&w);
    let addrs = (0..w.slots()).map(|s| w.addr(s)).collect();
    let events = w.stats().events;
    let report = w.end();
    let violations = report.violations.iter().map(|v| format!("{:?}: {}", v.checker, v.detail)).collect();
    Ok(JobRun {
        input_lines: stats.input_lines,
        submitted: Time(submitted),
        completed: Time(completed),
        wall: started.elapsed(),
        events,
        stream_bytes,
        journal,
        seen,
        crash: crashed,
        addrs,
        violations,
    })
}

// ----- 1. throughput and journal cost vs batch size -----------------------------------------

/// The single-process reference over one input, timed by wall clock.
#[derive(Clone, Debug)]
struct Baseline {
    app: &'static str,
    lines: usize,
    outputs: usize,
    /// Wall time of one reference run (the mean over the repetitions).
    wall: Duration,
    repetitions: u32,
}

impl Baseline {
    fn tuples_per_sec(&self) -> f64 {
        self.lines as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Times `reference::run` over `content`, repeated for at least 300 ms.
fn baseline(app: &'static str, ops: (&str, &str), content: &[u8]) -> Result<Baseline, String> {
    let parse = |s: &str| OperatorSpec::parse(s).map_err(|e| format!("`{s}`: {e}"));
    let (op1, op2) = (parse(ops.0)?, parse(ops.1)?);
    let lines = source_lines(content).count();
    let started = Instant::now();
    let mut repetitions = 0u32;
    let mut outputs = 0;
    while repetitions < 3 || started.elapsed() < Duration::from_millis(300) {
        let out = reference::run(SRC, content, &op1, &op2).map_err(|e| e.to_string())?;
        outputs = std::hint::black_box(out).len();
        repetitions += 1;
    }
    Ok(Baseline { app, lines, outputs, wall: started.elapsed() / repetitions, repetitions })
}

/// `x` with three significant digits (at least one decimal), for ratios far from 1.
fn three_digits(x: f64) -> String {
    let decimals = if x > 0.0 { (2 - x.log10().floor() as i32).clamp(1, 9) as usize } else { 1 };
    format!("{x:.decimals$}")
}

struct BatchRow {
    app: &'static str,
    batch: u32,
    run: Result<JobRun, String>,
}

fn batch_plan(
    app: &'static str,
    ops: (&'static str, &'static str),
    batch: u32,
    input: &InputSpec,
) -> JobPlan {
    JobPlan {
        label: format!("bench-rainstorm-{app}-batch{batch}"),
        seed: 12_001,
        input: input.clone(),
        input_seed: 12_002,
        ops,
        config: RainstormConfig { batch_lines: batch, ..RainstormConfig::default() },
    }
}

fn print_batches(out: &mut String, rows: &[BatchRow], baselines: &[Baseline], input: &InputSpec) {
    let _ = writeln!(out, "1. Throughput and journal cost vs batch size (fault-free)");
    let lines = baselines.first().map_or(0, |b| b.lines);
    let what = match input {
        InputSpec::TrafficSigns { max_lines } if *max_lines >= lines => {
            format!("the whole Traffic Signs file ({lines} lines with its header)")
        }
        _ => format!("a window of the Traffic Signs file ({lines} lines with its header)"),
    };
    let _ = writeln!(out, "   Input: {what}, {TASKS} tasks per stage.");
    let _ = writeln!(out, "   App 1: `{}` then `{}`; App 2: `{}` then `{}`.", APP1.0, APP1.1, APP2.0, APP2.1);
    let _ = writeln!(
        out,
        "   RainstormConfig::default() but batch_lines (window 8 batches per link, status every 500 ms, compaction at 1,000 records or 4 MiB)."
    );
    for b in baselines {
        let _ = writeln!(
            out,
            "   Baseline {}: reference::run (one process, in line order, no journal) {:.2} ms per run (mean of {}), {:.0} tuples/s, {} outputs.",
            b.app,
            b.wall.as_secs_f64() * 1000.0,
            b.repetitions,
            b.tuples_per_sec(),
            b.outputs
        );
    }
    let _ = writeln!(
        out,
        "   {:<5} {:>5} | {:>8} {:>10} {:>10} | {:>7} {:>8} | {:>9} {:>9} {:>8} | {:>5}",
        "app", "batch", "job", "tuples/s", "vs ref", "wall", "wall", "journal", "journal", "stream", "exact"
    );
    let _ = writeln!(
        out,
        "   {:<5} {:>5} | {:>8} {:>10} {:>10} | {:>7} {:>8} | {:>9} {:>9} {:>8} |",
        "", "lines", "(sim s)", "(sim)", "rate", "(s)", "/ ref", "B/tuple", "writes/t", "B/tuple"
    );
    for row in rows {
        let r = match &row.run {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(out, "   FAILED: {e}");
                continue;
            }
        };
        let base = baselines.iter().find(|b| b.app == row.app);
        let ratio = |x: f64, b: Option<f64>| match b {
            Some(b) if b > 0.0 => format!("{}x", three_digits(x / b)),
            _ => "-".to_owned(),
        };
        let lines = r.input_lines.max(1) as f64;
        let _ = writeln!(
            out,
            "   {:<5} {:>5} | {:>8.1} {:>10.0} {:>10} | {:>7.2} {:>8} | {:>9.0} {:>9.3} {:>8.0} | {:>5}",
            row.app,
            row.batch,
            r.job_ms() as f64 / 1000.0,
            r.tuples_per_sec(),
            ratio(r.tuples_per_sec(), base.map(Baseline::tuples_per_sec)),
            r.wall.as_secs_f64(),
            ratio(r.wall.as_secs_f64(), base.map(|b| b.wall.as_secs_f64())),
            r.journal_bytes() as f64 / lines,
            r.journal_writes() as f64 / lines,
            r.stream_bytes as f64 / lines,
            if r.violations.is_empty() { "yes" } else { "NO" },
        );
    }
    let _ = writeln!(
        out,
        "   job: simulated time from submitting the job (its input already stored) to JobCompleted at the leader; tuples/s: input lines"
    );
    let _ = writeln!(
        out,
        "   (header included, as the source emits it) over that time. vs ref: that rate over the reference's wall-clock rate. wall: the"
    );
    let _ = writeln!(
        out,
        "   simulation's own wall time (10 nodes' membership, HyDFS and RainStorm on one thread, cluster start and read-back included);"
    );
    let _ = writeln!(
        out,
        "   / ref: over the reference's wall time for the same input. journal: every write of every journal file, counted once per"
    );
    let _ = writeln!(
        out,
        "   (file, write stamp) from the replicas' stores at the end (not x3 for replication), per input line; writes/t: journal creates"
    );
    let _ = writeln!(
        out,
        "   and appends per input line. stream: every stream byte sent in the cluster from submission to JobCompleted (links, journal and"
    );
    let _ = writeln!(
        out,
        "   destination writes with their replication, status, membership sync), per input line."
    );
    let _ = writeln!(
        out,
        "   exact: the harness found the outputs (console and destination) equal to the reference's, once each. The end of the input"
    );
    let _ = writeln!(
        out,
        "   travels downstream in the leader's answers to the tasks' status reports (every 500 ms), so job times fall on a 500 ms grid and"
    );
    let _ = writeln!(out, "   the short jobs (large batches) are mostly those rounds.");
    let _ = writeln!(out);
}

// ----- 2. recovery vs job size --------------------------------------------------------------

/// When a journal starts a new generation in a recovery run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Compaction {
    /// Past this many appends (`compact_records`), or 4 MiB, since the last snapshot.
    Every(usize),
    /// Never (`compact_records` and `compact_bytes` at their maximum).
    Off,
}

impl Compaction {
    fn label(self) -> String {
        match self {
            Compaction::Every(n) => n.to_string(),
            Compaction::Off => "off".to_owned(),
        }
    }
}

/// Input lines per batch in the recovery runs.
const RECOVERY_BATCH: u32 = 16;
/// `compact_records` of the compacted recovery runs: low enough that every job but the smallest
/// compacts before the crash. The largest job also runs with the default and with compaction off.
const RECOVERY_COMPACT_RECORDS: usize = 100;

fn recovery_plan(lines: usize, compaction: Compaction) -> JobPlan {
    let mut config = RainstormConfig { batch_lines: RECOVERY_BATCH, ..RainstormConfig::default() };
    match compaction {
        Compaction::Every(n) => config.compact_records = n,
        Compaction::Off => {
            config.compact_records = usize::MAX;
            config.compact_bytes = u64::MAX;
        }
    }
    JobPlan {
        label: format!("bench-rainstorm-recovery-{lines}-compact-{}", compaction.label()),
        seed: 13_001,
        input: InputSpec::Generated { lines },
        input_seed: 13_002,
        ops: APP2,
        config,
    }
}

/// How one task of the crashed worker came back.
#[derive(Clone, Debug)]
struct TaskBack {
    scheduled: Time,
    started: Time,
    recovered_records: usize,
    /// Journal bytes (and reads) the replicas served the replacement from its predecessors' files.
    journal_read: u64,
    files_read: usize,
    /// Every journal byte (and file) the incarnations before the replacement wrote: what a
    /// replay from the start would read.
    journal_before: u64,
    files_before: usize,
}

struct RecoveryRow {
    lines: usize,
    compaction: Compaction,
    run: Result<(JobRun, Time, Option<Time>, Vec<TaskBack>), String>,
}

/// How the crashed worker's tasks came back: when the leader declared it failed, and per task.
fn recovery_of(run: &JobRun) -> Result<(Time, Option<Time>, Vec<TaskBack>), String> {
    let (crash, victim) = run.crash.ok_or("no worker was crashed")?;
    let victim_addr = run.addrs[victim];
    let before: Vec<(Time, Slot, Seen)> = run.seen.iter().filter(|(t, _, _)| *t <= crash).cloned().collect();
    let after: Vec<&(Time, Slot, Seen)> = run.seen.iter().filter(|(t, _, _)| *t >= crash).collect();
    let del = after.iter().find_map(|(t, slot, s)| match s {
        Seen::Failed(addr) if *slot == LEADER && *addr == victim_addr => Some(*t),
        _ => None,
    });
    let lost: Vec<(TaskId, Epoch)> = placements(&before)
        .into_iter()
        .filter(|(_, (addr, _))| *addr == victim_addr)
        .map(|(task, (_, epoch))| (task, epoch))
        .collect();
    if lost.is_empty() {
        return Err(format!("n{victim} hosted no task when it crashed"));
    }
    let mut back = Vec::new();
    for (task, old) in lost {
        let started =
            after.iter().find_map(|(t, slot, s)| match s {
                Seen::Rainstorm(RainstormEvent::TaskStarted {
                    task: k, epoch, recovered_records, ..
                }) if *k == task && *epoch > old => Some((*t, *slot, *epoch, *recovered_records)),
                _ => None,
            });
        let Some((started, host, epoch, recovered_records)) = started else {
            return Err(format!("{task} (e{old} on the crashed n{victim}) never started again"));
        };
        let scheduled = after
            .iter()
            .find_map(|(t, slot, s)| match s {
                Seen::Rainstorm(RainstormEvent::TaskScheduled { task: k, epoch: e, .. })
                    if *slot == LEADER && *k == task && *e == epoch =>
                {
                    Some(*t)
                }
                _ => None,
            })
            .unwrap_or(started);
        let host_addr = run.addrs[host];
        let name = task.to_string();
        let (mut journal_read, mut files_read) = (0, 0);
        for (t, _, s) in &after {
            let Seen::Read { name: file, from, bytes } = s else { continue };
            let theirs = parse_journal(file.as_str()).is_some_and(|(k, e, _)| k == name && e < epoch);
            if *from == host_addr && *t <= started && theirs {
                journal_read += bytes;
                files_read += 1;
            }
        }
        let old_files: Vec<&JournalFile> =
            run.journal.values().filter(|f| f.task == name && f.epoch < epoch).collect();
        back.push(TaskBack {
            scheduled,
            started,
            recovered_records,
            journal_read,
            files_read,
            journal_before: old_files.iter().map(|f| f.bytes()).sum(),
            files_before: old_files.len(),
        });
    }
    Ok((crash, del, back))
}

fn print_recovery(out: &mut String, rows: &[RecoveryRow]) {
    let _ = writeln!(out, "2. Recovery vs job size (one worker crashes and stays down)");
    let _ = writeln!(
        out,
        "   Same cluster. App 2 (`{}` then `{}`) over a generated CSV of the dataset's shape,",
        APP2.0, APP2.1
    );
    let _ = writeln!(
        out,
        "   {TASKS} tasks per stage, batch_lines {RECOVERY_BATCH}. When the leader has half of the reference's outputs, the worker hosting the"
    );
    let _ = writeln!(
        out,
        "   first stage-2 task (not the leader, the reader or the introducer) crashes for good. compact: RainstormConfig.compact_records,"
    );
    let _ = writeln!(
        out,
        "   journal appends before a task starts a new generation with a snapshot (1000 is the default; off: compact_records and"
    );
    let _ = writeln!(out, "   compact_bytes at their maximum).");
    let header = |c: [&str; 15]| {
        let line = format!(
            "   {:>6} {:>7} | {:>6} {:>5} | {:>7} {:>7} {:>7} {:>7} | {:>8} {:>5} | {:>8} {:>5} {:>7} | {:>7} {:>5}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12], c[13], c[14]
        );
        line.trim_end().to_owned()
    };
    let rows_of_header = [
        [
            "lines", "compact", "crash", "tasks", "crash->", "DEL->", "placed", "crash->", "journal",
            "files", "journal", "files", "records", "job", "exact",
        ],
        [
            "", "", "at (s)", "moved", "DEL", "placed", "->run", "running", "before", "", "read", "read",
            "replay", "(sim s)", "",
        ],
        ["", "", "", "", "(ms)", "(ms)", "(ms)", "(ms)", "(KiB)", "", "(KiB)", "", "", "", ""],
    ];
    for h in rows_of_header {
        let _ = writeln!(out, "{}", header(h));
    }
    for row in rows {
        let (r, crash, del, back) = match &row.run {
            Ok(x) => x,
            Err(e) => {
                let _ = writeln!(out, "   FAILED: {e}");
                continue;
            }
        };
        let last_scheduled = back.iter().map(|b| b.scheduled).max().unwrap_or(*crash);
        let last_started = back.iter().map(|b| b.started).max().unwrap_or(*crash);
        let from_del = del.unwrap_or(*crash);
        let sum = |f: &dyn Fn(&TaskBack) -> u64| back.iter().map(f).sum::<u64>();
        let _ = writeln!(
            out,
            "   {:>6} {:>7} | {:>6.1} {:>5} | {:>7} {:>7} {:>7} {:>7} | {:>8.1} {:>5} | {:>8.1} {:>5} {:>7} | {:>7.1} {:>5}",
            row.lines,
            row.compaction.label(),
            crash.since(r.submitted).0 as f64 / 1000.0,
            back.len(),
            del.map_or("-".to_owned(), |d| d.since(*crash).0.to_string()),
            last_scheduled.since(from_del).0,
            last_started.since(last_scheduled).0,
            last_started.since(*crash).0,
            sum(&|b| b.journal_before) as f64 / KIB,
            sum(&|b| b.files_before as u64),
            sum(&|b| b.journal_read) as f64 / KIB,
            sum(&|b| b.files_read as u64),
            sum(&|b| b.recovered_records as u64),
            r.job_ms() as f64 / 1000.0,
            if r.violations.is_empty() { "yes" } else { "NO" },
        );
    }
    let notes = [
        "crash at: simulated time from the job's submission. tasks moved: the crashed worker's tasks the leader placed again.",
        "crash->DEL: until the leader's membership declares the worker failed. DEL->placed: until the leader has placed the last of",
        "its tasks again (it also waits for the old incarnations' lease to run out). placed->run: until the last replacement reports",
        "TaskStarted (journal surveyed and read, its own journal opened with a snapshot, the leader's go). journal before, files: every",
        "journal byte and file the replaced incarnations wrote (what a replay from the start would read). journal read, files read: the",
        "bytes the replicas served the replacements from those files (the newest generation the leader knew, then any later ones).",
        "records replay: TaskStarted's recovered_records (a snapshot counts as one). Times in simulated ms.",
    ];
    for line in notes {
        let _ = writeln!(out, "   {line}");
    }
    let _ = writeln!(out);
}

// ----- the whole benchmark ------------------------------------------------------------------

enum Job {
    Batch { app: &'static str, batch: u32, plan: JobPlan },
    Recovery { lines: usize, compaction: Compaction, plan: JobPlan, at_outputs: u64 },
}

enum JobResult {
    Batch(BatchRow),
    Recovery(RecoveryRow),
}

impl Job {
    /// Runs the job; a panic in a node becomes a failed row (the panic hook has printed it).
    fn run(self) -> JobResult {
        fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err(format!("{what}: a node panicked")))
        }
        match self {
            Job::Batch { app, batch, plan } => {
                let run = guard(&plan.label, || run_job(&plan, None));
                JobResult::Batch(BatchRow { app, batch, run })
            }
            Job::Recovery { lines, compaction, plan, at_outputs } => {
                let run = guard(&plan.label, || {
                    let run = run_job(&plan, Some(CrashPlan { at_outputs }))?;
                    let (crash, del, back) = recovery_of(&run).map_err(|e| format!("{}: {e}", plan.label))?;
                    Ok((run, crash, del, back))
                });
                JobResult::Recovery(RecoveryRow { lines, compaction, run })
            }
        }
    }
}

pub fn run(scale: Scale) -> Result<()> {
    let started = Instant::now();
    let quick = scale.quick;
    let batches: &[u32] = &[1, 4, 16, 64, 256];
    let input = InputSpec::TrafficSigns { max_lines: if quick { 2_000 } else { usize::MAX } };
    let sizes: &[usize] = if quick { &[1_000, 5_000] } else { &[1_000, 10_000, 50_000] };

    // The baselines first, alone on the machine.
    let apps = [("app1", APP1), ("app2", APP2)];
    let content = batch_plan("app1", APP1, 1, &input).workload().content();
    let mut baselines = Vec::new();
    for (app, ops) in apps {
        baselines
            .push(baseline(app, ops, &content).map_err(|e| anyhow::anyhow!("reference run of {app}: {e}"))?);
    }

    let mut jobs = Vec::new();
    // The largest job also with the default compaction and with none (the longest runs go first
    // so that the threads finish together).
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let default_records = RainstormConfig::default().compact_records;
    let recoveries = [(largest, Compaction::Off), (largest, Compaction::Every(default_records))]
        .into_iter()
        .chain(sizes.iter().rev().map(|&lines| (lines, Compaction::Every(RECOVERY_COMPACT_RECORDS))));
    for (lines, compaction) in recoveries {
        {
            let plan = recovery_plan(lines, compaction);
            let content = plan.workload().content();
            let (op1, op2) = (OperatorSpec::parse(APP2.0)?, OperatorSpec::parse(APP2.1)?);
            let outputs = reference::run(SRC, &content, &op1, &op2)?.len() as u64;
            jobs.push(Job::Recovery { lines, compaction, plan, at_outputs: outputs.div_ceil(2).max(1) });
        }
    }
    for &batch in batches {
        for (app, ops) in apps {
            jobs.push(Job::Batch { app, batch, plan: batch_plan(app, ops, batch, &input) });
        }
    }
    let results = parallel_map(jobs, |job| {
        let t = Instant::now();
        (job.run(), t.elapsed())
    });
    let mut cpu = [Duration::ZERO; 2];
    let (mut batch_rows, mut recovery_rows) = (Vec::new(), Vec::new());
    for (r, took) in results {
        match r {
            JobResult::Batch(r) => {
                cpu[0] += took;
                batch_rows.push(r);
            }
            JobResult::Recovery(r) => {
                cpu[1] += took;
                recovery_rows.push(r);
            }
        }
    }
    batch_rows.sort_by_key(|r| (r.app, r.batch));
    recovery_rows.sort_by_key(|r| (r.lines, r.compaction));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "rainstorm bench rainstorm{}: every figure is simulated from fixed seeds and replays exactly, except wall-clock times",
        if quick { " --quick (smaller inputs)" } else { "" }
    );
    let _ = writeln!(
        out,
        "n = 10, MembershipConfig::lan(), 1 Gbit/s out per node (125,000 B/ms), latency 1-2 ms, no loss, HydfsConfig::default()."
    );
    let _ = writeln!(out);
    print_batches(&mut out, &batch_rows, &baselines, &input);
    print_recovery(&mut out, &recovery_rows);
    let _ = writeln!(out, "Notes");
    let events: u64 = batch_rows
        .iter()
        .filter_map(|r| r.run.as_ref().ok())
        .chain(recovery_rows.iter().filter_map(|r| r.run.as_ref().ok().map(|x| &x.0)))
        .map(|r| r.events)
        .sum();
    let _ = writeln!(
        out,
        "  * Wall time {:.1} s on {} threads (run time summed over runs: batch sizes {:.1} s, recovery {:.1} s; {} simulated events).",
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu[0].as_secs_f64(),
        cpu[1].as_secs_f64(),
        events,
    );
    // Every run must have completed with the simulator finding nothing wrong (the harness's
    // verdict on the output included).
    let mut failed = 0;
    let verdicts = batch_rows
        .iter()
        .map(|r| r.run.as_ref().map(|r| r.violations.as_slice()))
        .chain(recovery_rows.iter().map(|r| r.run.as_ref().map(|x| x.0.violations.as_slice())));
    for verdict in verdicts {
        match verdict {
            Ok([]) => {}
            Ok(violations) => {
                failed += 1;
                for v in violations.iter().take(3) {
                    let _ = writeln!(out, "  * VIOLATION: {v}");
                }
            }
            Err(_) => failed += 1,
        }
    }
    print!("{out}");
    if failed > 0 {
        bail!("{failed} benchmark runs failed or were judged wrong (see FAILED and VIOLATION above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_keep_three_significant_digits() {
        assert_eq!(three_digits(0.000_419_6), "0.000420");
        assert_eq!(three_digits(0.11), "0.110");
        assert_eq!(three_digits(12.66), "12.7");
        assert_eq!(three_digits(680.77), "680.8");
        assert_eq!(three_digits(0.0), "0.0");
    }

    #[test]
    fn journal_names_parse() {
        assert_eq!(
            parse_journal("rainstorm/3-a1f09c/journal/s2-t0.e4.g17"),
            Some(("s2-t0".to_owned(), 4, 17))
        );
        assert_eq!(parse_journal("out/job.txt"), None);
        assert_eq!(parse_journal("rainstorm/1-000000/journal/s0-t1.ex.g0"), None);
    }
}
