//! `bench rainstorm`: RainStorm jobs run in the simulator, on a modelled 10-node cluster.
//!
//! 1. What exactly-once costs per input line, against the checkpoint interval: App 1
//!    (`grep:Stop` then `project:OBJECTID,Sign_Type`) and App 2 (`column:Sign_Post=Punched
//!    Telespar` then `count:Category`) over the Traffic Signs data, fault-free, with checkpoints
//!    every 10, 25 (the default), 100 and 1,000 ms: input lines per second of simulated time
//!    (submission to `JobCompleted`), the simulation's wall time, checkpoints completed and
//!    commits, and per input line the bytes and HyDFS writes RainStorm made (checkpoint records
//!    and outputs, each written once; HyDFS keeps three copies), the tuple batches its tasks sent
//!    and the stream bytes the cluster sent; against the single-process reference pipeline
//!    (`reference::run`) timed on the same input in the same run.
//! 2. Recovery vs job size: App 2 over generated inputs of growing size, paced at 5,000 lines/s;
//!    once the leader has half of the job's outputs, the worker hosting a stage-2 task crashes and
//!    stays down. How long until the leader declares it failed (detection), until the job rolls
//!    back, until every task runs again, and until outputs are committed again; and whether the
//!    outputs resumed within the detection bound plus one second.
//!
//! Every run is 10 nodes, `MembershipConfig::lan()`, 1 Gbit/s of outgoing stream bandwidth per
//! node, 1-2 ms latency, no loss, `HydfsConfig::default()`, 3 tasks per stage, from fixed seeds:
//! every simulated figure replays exactly; only the wall times (the simulation's and the
//! reference's) vary. The jobs run through the simulator's RainStorm harness, which also judges
//! every job's output against the reference (the `exact` columns).

use super::{parallel_map, Scale};
use anyhow::{bail, Result};
use rainstorm_core::command::Command;
use rainstorm_core::hydfs::{ClientOp, Hydfs, HydfsConfig, HydfsError, OpId};
use rainstorm_core::membership::{MembershipConfig, MembershipEvent};
use rainstorm_core::node::NodeEvent;
use rainstorm_core::rainstorm::{
    reference, source_lines, JobError, JobId, JobSpec, OperatorSpec, ProgramResult, RainstormConfig,
    RainstormEvent, RainstormStats, TaskId,
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
/// The slot that stores the input and leads the job (never crashed).
const LEADER: Slot = 1;
/// The slot that reads the destination if the leader is gone (never crashed).
const READER: Slot = 2;
/// When the input is stored and the job submitted (the cluster has formed by then).
const START_MS: u64 = 5_000;
/// How long a job may take in simulated time before its run counts as stuck.
const JOB_LIMIT_MS: u64 = 3_600_000;
/// A simulated run never ends by itself; the benchmark stops when it has its figures.
const RUN_MS: u64 = 24 * 3_600_000;
/// The input file the harness stores (`in/job.csv`).
const SRC: &str = "in/job.csv";
/// Input lines per second of the recovery runs.
const RECOVERY_RATE: u64 = 5_000;

const APP1: (&str, &str) = ("grep:Stop", "project:OBJECTID,Sign_Type");
const APP2: (&str, &str) = ("column:Sign_Post=Punched Telespar", "count:Category");

// ----- a node that records what the benchmark needs -----------------------------------------

/// Something a node saw, at the simulated time it saw it.
#[derive(Clone, Debug)]
enum Seen {
    /// A RainStorm event (outputs as their count only).
    Rainstorm(RainstormEvent),
    Outputs(usize),
    /// This node declared the member at this address failed.
    Failed(NodeAddr),
}

/// `rainstorm_core::Node` recording the events the benchmark reads.
struct Recorder {
    node: Node,
    /// The clock of the latest input (these scenarios have no clock offsets, so it is
    /// simulated time).
    now: Time,
    seen: Vec<(Time, Seen)>,
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
            NodeEvent::Rainstorm(RainstormEvent::Outputs { tuples, .. }) => Some(Seen::Outputs(tuples.len())),
            NodeEvent::Rainstorm(RainstormEvent::SourceSent { .. }) => None,
            NodeEvent::Rainstorm(e) => Some(Seen::Rainstorm(e.clone())),
            NodeEvent::Membership(MembershipEvent::MemberFailed { member, .. }) => {
                Some(Seen::Failed(member.addr))
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

    fn rainstorm_buffers(&self) -> Vec<rainstorm_core::rainstorm::Buffers> {
        Actor::rainstorm_buffers(&self.node)
    }

    fn rainstorm_batches(&self) -> u64 {
        Actor::rainstorm_batches(&self.node)
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
    rate: Option<u64>,
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
            chunk_bytes: HydfsConfig::default().chunk_bytes,
            rate: self.rate,
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
            clock_drift_ppm: Vec::new(),
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

/// What one job run gave.
struct JobRun {
    input_lines: usize,
    submitted: Time,
    completed: Time,
    wall: Duration,
    events: u64,
    /// Stream bytes sent in the whole cluster from the job's submission to its completion.
    stream_bytes: u64,
    /// The leader's RainStorm counters (checkpoints, commits, bytes written).
    leader: RainstormStats,
    /// Tuple batches the job's tasks sent.
    batches: u64,
    seen: Vec<(Time, Slot, Seen)>,
    /// When and which slot the benchmark crashed.
    crash: Option<(Time, Slot)>,
    /// The simulator's findings (the harness's verdict on the output among them).
    violations: Vec<String>,
}

impl JobRun {
    fn job_ms(&self) -> u64 {
        self.completed.since(self.submitted).0
    }

    fn lines_per_sec(&self) -> f64 {
        self.input_lines as f64 / (self.job_ms().max(1) as f64 / 1000.0)
    }

    fn per_line(&self, x: u64) -> f64 {
        x as f64 / self.input_lines.max(1) as f64
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

/// The worker to crash: the host of the first stage-2 task, else stage-1, that is not the
/// leader, the reader or the introducer.
fn pick_victim(w: &World<Recorder>, seen: &[(Time, Slot, Seen)]) -> Option<Slot> {
    let mut placed: BTreeMap<TaskId, NodeAddr> = BTreeMap::new();
    for (_, slot, s) in seen {
        if let (LEADER, Seen::Rainstorm(RainstormEvent::TaskScheduled { task, host, .. })) = (*slot, s) {
            placed.insert(*task, host.addr);
        }
    }
    let mut tasks: Vec<(&TaskId, &NodeAddr)> = placed.iter().collect();
    tasks.sort_by_key(|(t, _)| (std::cmp::Reverse(t.stage), t.index));
    tasks
        .into_iter()
        .filter_map(|(_, addr)| w.slot_of(*addr))
        .find(|s| ![0, LEADER, READER].contains(s) && w.node(*s).is_some())
}

/// Runs one job; with `crash_at_outputs`, crashes a stage-2 worker once the leader has that
/// many outputs.
fn run_job(plan: &JobPlan, crash_at_outputs: Option<u64>) -> Result<JobRun, String> {
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
        if let (Some(at), None) = (crash_at_outputs, crashed) {
            if stats.outputs >= at && stats.completed_ms.is_none() {
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
        return Err(fail("the job never completed".to_owned()));
    };
    let stream_bytes = w.stats().stream_bytes - stream_at_submit.unwrap_or(0);
    let leader = w.node(LEADER).map(|n| n.node.rainstorm().stats()).unwrap_or_default();
    let batches: u64 =
        (0..w.slots()).filter_map(|s| w.node(s)).map(|n| n.node.rainstorm().stats().batches_sent).sum();
    // Let the harness read the destination back and judge it.
    let judged_by = Time(completed + 120_000);
    w.run_until_or(judged_by, |w| w.job_judged());
    collect(&mut w, &mut seen);
    let events = w.stats().events;
    let report = w.end();
    let violations = report.violations.iter().map(|v| v.to_string()).collect();
    Ok(JobRun {
        input_lines: stats.input_lines,
        submitted: Time(submitted),
        completed: Time(completed),
        wall: started.elapsed(),
        events,
        stream_bytes,
        leader,
        batches,
        seen,
        crash: crashed,
        violations,
    })
}

// ----- 1. cost per line vs checkpoint interval ------------------------------------------------

/// The single-process reference over one input, timed by wall clock.
#[derive(Clone, Debug)]
struct Baseline {
    app: &'static str,
    lines: usize,
    /// Wall time of one reference run (the mean over the repetitions).
    wall: Duration,
}

impl Baseline {
    fn lines_per_sec(&self) -> f64 {
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
    while repetitions < 3 || started.elapsed() < Duration::from_millis(300) {
        let out = reference::run(SRC, content, &op1, &op2).map_err(|e| e.to_string())?;
        std::hint::black_box(out);
        repetitions += 1;
    }
    Ok(Baseline { app, lines, wall: started.elapsed() / repetitions })
}

struct CostRow {
    app: &'static str,
    interval_ms: u64,
    run: Result<JobRun, String>,
}

fn cost_plan(
    app: &'static str,
    ops: (&'static str, &'static str),
    interval_ms: u64,
    input: &InputSpec,
) -> JobPlan {
    JobPlan {
        label: format!("bench-rainstorm-{app}-every{interval_ms}ms"),
        seed: 12_001,
        input: input.clone(),
        input_seed: 12_002,
        ops,
        config: RainstormConfig { checkpoint_interval: Millis(interval_ms), ..RainstormConfig::default() },
        rate: None,
    }
}

fn print_costs(out: &mut String, rows: &[CostRow], baselines: &[Baseline]) {
    let lines = baselines.first().map_or(0, |b| b.lines);
    let _ = writeln!(
        out,
        "1. What exactly-once costs per input line, against the checkpoint interval (fault-free)"
    );
    let _ = writeln!(out, "   {lines} input lines, 3 tasks per stage; bytes and writes are RainStorm's own (HyDFS keeps 3 copies).");
    let _ = writeln!(
        out,
        "| app | checkpoint every | job ms (sim) | lines/s (sim) | wall s | checkpoints | commits | HyDFS writes/line | HyDFS bytes/line | batches/line | stream bytes/line | vs reference | exact |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let base = baselines.iter().find(|b| b.app == r.app);
        match &r.run {
            Ok(run) => {
                let writes = run.leader.log_writes + run.leader.output_writes;
                let bytes = run.leader.log_bytes + run.leader.output_bytes;
                let ratio = base.map_or(f64::NAN, |b| run.lines_per_sec() / b.lines_per_sec());
                let _ = writeln!(
                    out,
                    "| {} | {} ms | {} | {:.0} | {:.2} | {} | {} | {:.5} | {:.2} | {:.4} | {:.0} | {:.4}x | {} |",
                    r.app,
                    r.interval_ms,
                    run.job_ms(),
                    run.lines_per_sec(),
                    run.wall.as_secs_f64(),
                    run.leader.checkpoints,
                    run.leader.commits,
                    run.per_line(writes),
                    run.per_line(bytes),
                    run.per_line(run.batches),
                    run.per_line(run.stream_bytes),
                    ratio,
                    if run.violations.is_empty() { "yes" } else { "NO" },
                );
            }
            Err(e) => {
                let _ = writeln!(out, "| {} | {} ms | FAILED: {e} |", r.app, r.interval_ms);
            }
        }
    }
    for b in baselines {
        let _ = writeln!(
            out,
            "   reference {}: {:.0} lines/s ({:.1} ms per run)",
            b.app,
            b.lines_per_sec(),
            b.wall.as_secs_f64() * 1e3
        );
    }
    let _ = writeln!(out);
}

// ----- 2. recovery vs job size ----------------------------------------------------------------

struct RecoveryRow {
    lines: usize,
    run: Result<JobRun, String>,
}

fn recovery_plan(lines: usize) -> JobPlan {
    JobPlan {
        label: format!("bench-rainstorm-recovery-{lines}"),
        seed: 13_001,
        input: InputSpec::Generated { lines },
        input_seed: 13_002,
        ops: APP2,
        config: RainstormConfig::default(),
        rate: Some(RECOVERY_RATE),
    }
}

/// From the crash: when the leader declared the worker failed, rolled back, had every task
/// running again, and committed outputs again (ms after the crash each).
fn recovery_of(run: &JobRun) -> Result<[Option<u64>; 4], String> {
    let (at, victim) = run.crash.ok_or("no crash")?;
    let victim_addr = rainstorm_sim::world::slot_addr(victim);
    let after = |t: &Time| t.since(at).0;
    let mut detected = None;
    let mut rolled_back: Option<(Time, rainstorm_core::rainstorm::Attempt)> = None;
    let mut started: BTreeMap<TaskId, Time> = BTreeMap::new();
    let mut resumed = None;
    for (t, slot, s) in run.seen.iter().filter(|(t, _, _)| *t >= at) {
        match s {
            Seen::Failed(addr) if *slot == LEADER && *addr == victim_addr && detected.is_none() => {
                detected = Some(*t)
            }
            Seen::Rainstorm(RainstormEvent::RolledBack { attempt, .. })
                if *slot == LEADER && rolled_back.is_none() =>
            {
                rolled_back = Some((*t, *attempt))
            }
            Seen::Rainstorm(RainstormEvent::TaskStarted { task, attempt, .. })
                if rolled_back.is_some_and(|(_, a)| a == *attempt) =>
            {
                started.entry(*task).or_insert(*t);
            }
            Seen::Outputs(n) if *slot == LEADER && *n > 0 && rolled_back.is_some() && resumed.is_none() => {
                resumed = Some(*t)
            }
            _ => {}
        }
    }
    let all_started =
        (started.len() == 3 * TASKS as usize).then(|| started.values().max().copied()).flatten();
    Ok([
        detected.map(|t| after(&t)),
        rolled_back.map(|(t, _)| after(&t)),
        all_started.map(|t| after(&t)),
        resumed.map(|t| after(&t)),
    ])
}

fn print_recovery(out: &mut String, rows: &[RecoveryRow]) {
    let bound = MembershipConfig::lan().own_probe_detection_bound(NODES).0;
    let _ = writeln!(
        out,
        "2. Recovery: App 2 paced at {RECOVERY_RATE} lines/s; at half its outputs the worker of a stage-2 task crashes for good"
    );
    let _ = writeln!(out, "   (ms after the crash; detection bound at n = {NODES}: {bound} ms)");
    let _ = writeln!(out, "| lines | detected | rolled back | tasks running | outputs resumed | resumed - detected | within detection + 1 s | exact |");
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---|---|");
    for r in rows {
        match r.run.as_ref().map_err(String::clone).and_then(|run| recovery_of(run).map(|x| (run, x))) {
            Ok((run, [d, b, s, o])) => {
                let show = |x: Option<u64>| x.map_or("-".to_owned(), |v| v.to_string());
                let gap = match (d, o) {
                    (Some(d), Some(o)) => (o.saturating_sub(d)).to_string(),
                    _ => "-".into(),
                };
                let within = o.is_some_and(|o| o <= bound + 1_000);
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {gap} | {} | {} |",
                    r.lines,
                    show(d),
                    show(b),
                    show(s),
                    show(o),
                    if within { "yes" } else { "NO" },
                    if run.violations.is_empty() { "yes" } else { "NO" },
                );
            }
            Err(e) => {
                let _ = writeln!(out, "| {} | FAILED: {e} |", r.lines);
            }
        }
    }
    let _ = writeln!(out);
}

// ----- the whole benchmark ------------------------------------------------------------------

enum Job {
    Cost { app: &'static str, interval_ms: u64, plan: JobPlan },
    Recovery { lines: usize, plan: JobPlan, at_outputs: u64 },
}

enum JobResult {
    Cost(CostRow),
    Recovery(RecoveryRow),
}

impl Job {
    fn run(self) -> JobResult {
        match self {
            Job::Cost { app, interval_ms, plan } => {
                JobResult::Cost(CostRow { app, interval_ms, run: run_job(&plan, None) })
            }
            Job::Recovery { lines, plan, at_outputs } => {
                JobResult::Recovery(RecoveryRow { lines, run: run_job(&plan, Some(at_outputs)) })
            }
        }
    }
}

pub fn run(scale: Scale) -> Result<()> {
    let started = Instant::now();
    let quick = scale.quick;
    let intervals: &[u64] = if quick { &[25, 1_000] } else { &[10, 25, 100, 1_000] };
    let input = InputSpec::TrafficSigns { max_lines: if quick { 2_000 } else { usize::MAX } };
    let sizes: &[usize] = if quick { &[5_000] } else { &[5_000, 20_000, 50_000] };

    // The baselines first, alone on the machine.
    let apps = [("app1", APP1), ("app2", APP2)];
    let content = cost_plan("app1", APP1, 25, &input).workload().content();
    let mut baselines = Vec::new();
    for (app, ops) in apps {
        baselines
            .push(baseline(app, ops, &content).map_err(|e| anyhow::anyhow!("reference run of {app}: {e}"))?);
    }
    let mut jobs = Vec::new();
    for &lines in sizes.iter().rev() {
        let plan = recovery_plan(lines);
        let content = plan.workload().content();
        let (op1, op2) = (OperatorSpec::parse(APP2.0)?, OperatorSpec::parse(APP2.1)?);
        let outputs = reference::run(SRC, &content, &op1, &op2)?.len() as u64;
        jobs.push(Job::Recovery { lines, plan, at_outputs: outputs.div_ceil(2).max(1) });
    }
    for &interval_ms in intervals {
        for (app, ops) in apps {
            jobs.push(Job::Cost { app, interval_ms, plan: cost_plan(app, ops, interval_ms, &input) });
        }
    }
    let results = parallel_map(jobs, Job::run);
    let (mut costs, mut recoveries) = (Vec::new(), Vec::new());
    for r in results {
        match r {
            JobResult::Cost(r) => costs.push(r),
            JobResult::Recovery(r) => recoveries.push(r),
        }
    }
    costs.sort_by_key(|r| (r.app, r.interval_ms));
    recoveries.sort_by_key(|r| r.lines);

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
    print_costs(&mut out, &costs, &baselines);
    print_recovery(&mut out, &recoveries);
    let events: u64 = costs
        .iter()
        .filter_map(|r| r.run.as_ref().ok())
        .chain(recoveries.iter().filter_map(|r| r.run.as_ref().ok()))
        .map(|r| r.events)
        .sum();
    let _ = writeln!(
        out,
        "Wall time {:.1} s on {} threads ({events} simulated events).",
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    // Every run must have completed with the simulator finding nothing wrong (the harness's
    // verdict on the output included).
    let mut failed = 0;
    let verdicts = costs.iter().map(|r| &r.run).chain(recoveries.iter().map(|r| &r.run));
    for verdict in verdicts {
        match verdict {
            Ok(run) if run.violations.is_empty() => {}
            Ok(run) => {
                failed += 1;
                for v in run.violations.iter().take(3) {
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
