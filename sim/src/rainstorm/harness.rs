//! One RainStorm job per scenario, driven through a chosen leader slot, and its verdict.
//!
//! The harness stores the job's input in HyDFS from the leader, submits
//! `RainStorm <op1> <op2> <src> <dest> <tasks>` there, collects the outputs the leader streams,
//! reads the destination file back once the job completes, and judges both against the
//! single-process reference run (`rainstorm_core::rainstorm::reference`):
//! * **output**: the multisets of outputs (console and destination) equal the reference's;
//! * **duplicate**: no output id, output or running count is reported twice;
//! * **loss**: no reference output is missing once the job completed;
//! * **aggregate**: final per-key counts are exact and each running count appears once;
//! * **liveness**: the job completes by the scenario's deadline (after the faults stop), also
//!   when its leader crashes: a successor takes it over (the harness follows the job to
//!   whichever node leads it), and its destination must then hold exactly the reference output.
//!   The console of a crashed leader may lack the outputs of its last commits (they reached the
//!   destination, and the leader died before it streamed them), but never holds one twice;
//! * **bounded**: no task or sink ever holds more read-ahead, received batches or
//!   unacknowledged batches than the job's settings allow (given its largest tuple), whatever
//!   the input's size, and a sink's open epoch stays within its share of `sink_buffer_bytes`
//!   whenever no barrier is on its way to close it;
//! * **coalescing**: the tasks send no more batches than full batches, plus one partial batch per
//!   link for each checkpoint, each linger period and the end, allow;
//! * **resume**: after a node running one of the job's tasks crashes, once the crash is
//!   detected (every live member dropped it, and the leader rolled back for it), the job
//!   commits a checkpoint of its new attempt within [`RESUME_MS`] plus the work it lost (the
//!   time from its last commit to the crash), unless another fault or failure was in effect or
//!   falls before it does (detection itself is the membership sweep's to bound).

use super::input::{generated_csv, traffic_signs_slice};
use super::verdict::{judge, Finding, Observed};
use crate::check::CheckerKind;
use crate::rainstorm::programs::SimPrograms;
use crate::scenario::Slot;
use rainstorm_core::hydfs::{
    ClientOp, FileName, HydfsError, HydfsEvent, OpId, OpOutput, ReadFrom, WriteKind,
};
use rainstorm_core::rainstorm::job::Route;
use rainstorm_core::rainstorm::reference;
use rainstorm_core::rainstorm::tuple::TUPLE_OVERHEAD_BYTES;
use rainstorm_core::rainstorm::{
    CheckpointId, JobError, JobId, JobSpec, OperatorSpec, RainstormConfig, RainstormEvent, Tuple,
};
use rainstorm_core::{MemberId, Time};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How soon after a worker's crash is detected a job must commit again (its output resumes),
/// beyond redoing the work it lost (what it had done since its last commit before the crash):
/// the tasks are placed again and restored, writes waiting on the crashed node move on, and
/// the next checkpoint is taken and made durable. Waiting out any timeout (a request's, a
/// coordinator's, a retry pause) misses it.
pub const RESUME_MS: u64 = 1_000;

/// Crashes of nodes running the job's tasks, in one millisecond, that the job's output must
/// come back from.
#[derive(Clone, Debug)]
struct Outage {
    crashed_at: Time,
    /// The crashed workers, and when no live member listed each any more.
    workers: Vec<(MemberId, Option<Time>)>,
    /// When the leader first rolled back for one of them (a rollback moves every task that was
    /// on any member gone by then).
    rolled_back: Option<Time>,
    /// The checkpoint the latest rollback for them went back to: a commit of a later one is the
    /// new attempt's (commits of earlier ones may still be finishing).
    restored: Option<CheckpointId>,
    /// No other fault or failure was in effect at the crashes or fell since.
    calm: bool,
    /// The work the job lost: from its last commit (or its submission) to the crashes.
    lost_ms: u64,
}

impl Outage {
    /// When the crashes were detected: every one dropped everywhere, and the job rolled back.
    fn detected(&self) -> Option<Time> {
        self.workers.iter().try_fold(self.rolled_back?, |t, (_, dropped)| dropped.map(|d| t.max(d)))
    }
}

/// The job input of a scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InputSpec {
    /// A generated CSV of the dataset's shape.
    Generated { lines: usize },
    /// A window of the Traffic Signs dataset (header included).
    TrafficSigns { max_lines: usize },
}

/// The RainStorm job of a scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RainstormWorkload {
    pub config: RainstormConfig,
    /// The slot that stores the input and leads the job.
    pub leader: Slot,
    pub input: InputSpec,
    pub input_seed: u64,
    pub op1: String,
    pub op2: String,
    pub tasks: u32,
    /// The input's part size in HyDFS (the scenario's chunk size).
    #[serde(default = "default_chunk")]
    pub chunk_bytes: usize,
    /// Input lines per second over the whole job, at most (`--rate`).
    #[serde(default)]
    pub rate: Option<u64>,
    /// When the input is stored; the job is submitted once it is.
    pub start_ms: u64,
    /// By when the job must have completed (unless its leader crashes).
    pub deadline_ms: u64,
    /// The leader is crashed at this time (the job must end cleanly, without duplicates).
    pub leader_crash_ms: Option<u64>,
    /// Another slot, alive at the end, that reads the destination when the leader is gone.
    pub reader: Slot,
}

impl RainstormWorkload {
    /// The job's input bytes.
    pub fn content(&self) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.input_seed);
        match self.input {
            InputSpec::Generated { lines } => generated_csv(&mut rng, lines),
            InputSpec::TrafficSigns { max_lines } => traffic_signs_slice(&mut rng, max_lines),
        }
    }
}

fn default_chunk() -> usize {
    rainstorm_core::hydfs::CHUNK_BYTES
}

/// What the harness asks the world to do at one slot.
pub enum Action {
    Submit { slot: Slot, op: ClientOp },
    StartJob { slot: Slot, spec: JobSpec },
}

/// What happened to the job, for reports and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct JobStats {
    pub job: Option<String>,
    pub input_lines: usize,
    pub outputs: u64,
    pub reference_outputs: usize,
    pub restarts: u32,
    pub submitted_ms: Option<u64>,
    pub completed_ms: Option<u64>,
    pub failed: Option<String>,
    pub abandoned: usize,
    pub tasks_started: usize,
    /// Tasks started from a checkpoint after a rollback.
    pub tasks_resumed: usize,
    /// Crashes of nodes running one of the job's tasks while the job ran.
    pub crashes_while_running: usize,
    pub rollbacks: usize,
    /// Tuple batches the job's tasks sent.
    pub batches: u64,
    /// For each worker crash the leader detected with no other fault until the job committed
    /// again: ms from the crash to the detection, and from the detection to that commit.
    pub recoveries: Vec<(u64, u64)>,
    /// Times a successor took the job over.
    pub takeovers: u32,
    /// When the leader was crashed (scenario time, ms), and how long after that a successor
    /// took the job over.
    pub leader_crashed_ms: Option<u64>,
    pub takeover_ms: Option<u64>,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Store,
    Storing { slot: Slot, generation: u64, op: Option<OpId> },
    Submit,
    Running,
    ReadDest { slot: Slot, generation: u64, op: Option<OpId> },
    Judged,
}

/// The most bytes of each kind one task (or sink) may hold, from the job's settings.
#[derive(Clone, Copy, Debug, Default)]
struct Bounds {
    read_ahead: usize,
    inputs: usize,
    unacked: usize,
    /// A sink's open epoch while no barrier is on its way.
    open_epoch: usize,
}

impl Bounds {
    /// `chunk`: the input's part size; `widest`: the largest tuple weight the job can carry.
    fn of(cfg: &RainstormConfig, tasks: usize, chunk: usize, longest_line: usize, widest: usize) -> Bounds {
        // A batch is sealed once it reaches batch_bytes, so it holds at most one tuple more.
        let batch = cfg.batch_bytes as usize + widest + TUPLE_OVERHEAD_BYTES;
        // A cursor holds its read-ahead from the part of its position, and while a line
        // crosses parts, the parts it spans.
        let spanned = longest_line.div_ceil(chunk.max(1)) + 2;
        let inputs = tasks * cfg.window as usize * batch;
        Bounds {
            read_ahead: (cfg.read_ahead as usize + spanned) * chunk,
            inputs,
            unacked: tasks * (cfg.window_bytes as usize + batch),
            // A quarter of the sink's buffer, then one step taking what its links held (an
            // output weighs its tuple and its destination line, at most twice the tuple).
            open_epoch: (cfg.sink_buffer_bytes / 4) as usize + 2 * inputs,
        }
    }
}

pub struct RainstormHarness {
    w: RainstormWorkload,
    content: Vec<u8>,
    src: FileName,
    dest: FileName,
    reference: Result<Vec<Tuple>, String>,
    stateful: bool,
    phase: Phase,
    job: Option<JobId>,
    console: Vec<Tuple>,
    completed: bool,
    dest_content: Option<Vec<u8>>,
    /// The destination's bytes delivered so far by the read in `Phase::ReadDest`.
    dest_read: Vec<u8>,
    /// The leader stopped being a member (declared failed under loss, or crashed).
    leader_lost: bool,
    /// The slot leading the job now (a successor after a takeover).
    lead: Slot,
    /// The outputs the job completed with.
    completed_outputs: Option<u64>,
    /// A successor found none of the job's files, and the job had committed nothing.
    nothing_to_resume: bool,
    committed_any: bool,
    /// Takeovers of the job, and the term of the last one.
    takeovers: u32,
    term: u32,
    /// The most bytes of each kind one task or sink may hold.
    bounds: Bounds,
    /// Tuples (and their weight) each stage of the reference puts out: sources, op1, op2.
    stage_tuples: Vec<(u64, u64)>,
    /// Tuple batches sent, per process that sent any: `(slot, process generation)`.
    batches: std::collections::BTreeMap<(Slot, u64), u64>,
    /// Bound violations already reported (one per task and kind).
    reported_bounds: std::collections::BTreeSet<(rainstorm_core::rainstorm::TaskId, &'static str)>,
    /// Where each task runs (the latest placement the leader reported).
    hosts: std::collections::BTreeMap<rainstorm_core::rainstorm::TaskId, MemberId>,
    violations: Vec<(Time, CheckerKind, String)>,
    /// The latest worker crash the job has not yet committed after.
    outage: Option<Outage>,
    /// When the job last committed (its submission, before its first commit).
    last_commit: Time,
    pub stats: JobStats,
}

impl RainstormHarness {
    pub fn new(w: RainstormWorkload) -> RainstormHarness {
        let content = w.content();
        let src = FileName::new("in/job.csv").expect("valid");
        let dest = FileName::new("out/job.txt").expect("valid");
        let specs = OperatorSpec::parse(&w.op1).and_then(|a| OperatorSpec::parse(&w.op2).map(|b| (a, b)));
        let stages = match &specs {
            Ok((a, b)) => reference::run_stages(src.as_str(), &content, a, b, &mut SimPrograms)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let stage_tuples: Vec<(u64, u64)> = stages.as_ref().map_or_else(
            |_| Vec::new(),
            |stages| {
                let weight = |ts: &[Tuple]| ts.iter().map(|t| t.weight() as u64).sum::<u64>();
                stages.iter().map(|ts| (ts.len() as u64, weight(ts))).collect()
            },
        );
        let reference = stages.map(|mut s| s.pop().unwrap_or_default());
        let stateful = w.op2.starts_with("count:") || w.op2.starts_with("program:sim/count-key@");
        let longest =
            rainstorm_core::rainstorm::source_lines(&content).map(|(_, l)| l.len()).max().unwrap_or(0);
        let key = src.as_str().len() + 21;
        // Operators never make a tuple more than twice the line it came from (a key may take
        // a column of the value).
        let widest = 2 * (longest + key) + TUPLE_OVERHEAD_BYTES;
        let bounds = Bounds::of(&w.config, w.tasks as usize, w.chunk_bytes, longest, widest);
        let stats = JobStats {
            input_lines: rainstorm_core::rainstorm::source_lines(&content).count(),
            reference_outputs: reference.as_ref().map_or(0, Vec::len),
            ..JobStats::default()
        };
        RainstormHarness {
            lead: w.leader,
            w,
            content,
            src,
            dest,
            reference,
            stateful,
            bounds,
            stage_tuples,
            phase: Phase::Store,
            job: None,
            console: Vec::new(),
            completed: false,
            dest_content: None,
            dest_read: Vec::new(),
            leader_lost: false,
            takeovers: 0,
            term: 0,
            completed_outputs: None,
            nothing_to_resume: false,
            committed_any: false,
            hosts: std::collections::BTreeMap::new(),
            batches: std::collections::BTreeMap::new(),
            reported_bounds: std::collections::BTreeSet::new(),
            violations: Vec::new(),
            outage: None,
            last_commit: Time(0),
            stats,
        }
    }

    pub fn workload(&self) -> &RainstormWorkload {
        &self.w
    }

    pub fn take_violations(&mut self) -> Vec<(Time, CheckerKind, String)> {
        std::mem::take(&mut self.violations)
    }

    /// The most full batches any stage of the job sends (by tuples or by bytes, whichever
    /// fills a batch first).
    pub fn most_stage_batches(&self) -> u64 {
        let cfg = &self.w.config;
        let (per_batch, batch_bytes) =
            (u64::from(cfg.batch_tuples.max(1)), u64::from(cfg.batch_bytes.max(1)));
        self.stage_tuples
            .iter()
            .map(|(t, b)| t.div_ceil(per_batch).max(b.div_ceil(batch_bytes)))
            .max()
            .unwrap_or(0)
    }

    /// Whether the harness still has something to do at its ticks.
    pub fn active(&self) -> bool {
        self.phase != Phase::Judged
    }

    /// `up(slot)` gives the slot's process generation if it is up and joined.
    pub fn tick(&mut self, now: Time, up: &dyn Fn(Slot) -> Option<u64>) -> Vec<Action> {
        self.check_resume(now);
        let leader = self.w.leader;
        let leader_gone = self.leader_lost || self.w.leader_crash_ms.is_some_and(|t| now.0 >= t);
        match self.phase {
            Phase::Store if now.0 >= self.w.start_ms => {
                if let Some(generation) = up(leader) {
                    self.phase = Phase::Storing { slot: leader, generation, op: None };
                    let op = ClientOp::Persist {
                        name: self.src.clone(),
                        kind: WriteKind::Create,
                        data: self.content.clone(),
                    };
                    return vec![Action::Submit { slot: leader, op }];
                }
            }
            Phase::Submit => {
                if let (Some(_), Ok((op1, op2))) = (up(leader), self.specs()) {
                    let spec = JobSpec {
                        op1,
                        op2,
                        src: self.src.clone(),
                        dest: self.dest.clone(),
                        tasks: self.w.tasks,
                        rate: self.w.rate,
                    };
                    return vec![Action::StartJob { slot: leader, spec }];
                }
            }
            Phase::Running if leader_gone && now.0 >= self.w.deadline_ms => {
                // The leader is gone: read what reached the destination from another node.
                return self.read_dest(self.w.reader, up);
            }
            Phase::ReadDest { op: None, slot, .. } => return self.read_dest(slot, up),
            _ => {}
        }
        Vec::new()
    }

    fn read_dest(&mut self, slot: Slot, up: &dyn Fn(Slot) -> Option<u64>) -> Vec<Action> {
        let Some(generation) = up(slot) else { return Vec::new() };
        self.phase = Phase::ReadDest { slot, generation, op: None };
        self.dest_read.clear();
        let op = ClientOp::Download { name: self.dest.clone(), from: ReadFrom::Latest };
        vec![Action::Submit { slot, op }]
    }

    fn specs(&self) -> Result<(OperatorSpec, OperatorSpec), String> {
        let a = OperatorSpec::parse(&self.w.op1).map_err(|e| e.to_string())?;
        let b = OperatorSpec::parse(&self.w.op2).map_err(|e| e.to_string())?;
        Ok((a, b))
    }

    /// The world ran an action at `slot` (process `generation`).
    pub fn submitted(&mut self, now: Time, slot: Slot, generation: u64, result: Submitted) {
        match (&mut self.phase, result) {
            (Phase::Storing { op, .. } | Phase::ReadDest { op, .. }, Submitted::Op(Ok(id))) => *op = Some(id),
            (Phase::Storing { .. }, Submitted::Op(Err(_))) => self.phase = Phase::Store,
            (Phase::ReadDest { .. }, Submitted::Op(Err(_))) => {
                self.phase = Phase::ReadDest { slot, generation, op: None };
            }
            (Phase::Submit, Submitted::Job(Ok(job))) => {
                self.job = Some(job);
                self.stats.job = Some(job.to_string());
                self.stats.submitted_ms = Some(now.0);
                self.last_commit = now;
                self.phase = Phase::Running;
            }
            (Phase::Submit, Submitted::Job(Err(JobError::NotJoined))) => {}
            (Phase::Submit, Submitted::Job(Err(e))) => {
                self.violations.push((
                    now,
                    CheckerKind::RainstormLiveness,
                    format!("the job was refused: {e}"),
                ));
                self.phase = Phase::Judged;
            }
            _ => {}
        }
    }

    /// What a node holds for the job, checked against the bounds.
    pub fn check_buffers(&mut self, now: Time, slot: Slot, buffers: &[rainstorm_core::rainstorm::Buffers]) {
        let b = self.bounds;
        for x in buffers.iter().filter(|x| Some(x.job) == self.job) {
            for (what, held, bound) in [
                ("read ahead", x.read_ahead, b.read_ahead),
                ("received and not taken", x.inputs, b.inputs),
                ("sent and not acknowledged", x.unacked, b.unacked),
            ] {
                if held > bound && self.reported_bounds.insert((x.task, what)) {
                    let detail = format!("n{slot} {} holds {held} bytes {what} (bound {bound})", x.task);
                    self.violations.push((now, CheckerKind::RainstormBounded, detail));
                }
            }
            let what = "in its open epoch with no barrier coming";
            if !x.barrier_coming && x.open_epoch > b.open_epoch && self.reported_bounds.insert((x.task, what))
            {
                let detail = format!(
                    "n{slot} {} holds {} bytes {what} (bound {})",
                    x.task, x.open_epoch, b.open_epoch
                );
                self.violations.push((now, CheckerKind::RainstormBounded, detail));
            }
        }
    }

    /// How many tuple batches one process has sent (its latest count).
    pub fn count_batches(&mut self, slot: Slot, generation: u64, sent: u64) {
        if sent > 0 {
            self.batches.insert((slot, generation), sent);
        }
    }

    /// Where the job's tasks run, as its leader last placed them.
    pub fn task_hosts(&self) -> Vec<rainstorm_core::NodeAddr> {
        let mut hosts: Vec<rainstorm_core::NodeAddr> = self.hosts.values().map(|m| m.addr).collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// Slots the fault plan must not crash: the leader (its crash is planned apart) and the
    /// node that reads the output when the leader is gone.
    pub fn spared(&self, slot: Slot) -> bool {
        slot == self.w.leader || slot == self.w.reader
    }

    /// A fault falls at `now` (before it is applied): a recovery under way is no longer a calm
    /// one (crashes of workers in the same millisecond are one outage).
    pub fn on_fault(&mut self, now: Time, crash: bool) {
        if let Some(o) = self.outage.as_mut().filter(|o| !crash || o.crashed_at < now) {
            o.calm = false;
        }
    }

    /// A node at `addr` crashed (`quiet`: no partition or pause was in effect): does it count as
    /// a crash during the job? If so, the job's output must resume after it.
    pub fn on_crash(&mut self, now: Time, addr: rainstorm_core::NodeAddr, quiet: bool) {
        let running = self.phase == Phase::Running && !self.completed;
        let Some(id) = self.hosts.values().copied().find(|h| h.addr == addr) else { return };
        if !running {
            return;
        }
        self.stats.crashes_while_running += 1;
        match self.outage.as_mut() {
            Some(o) if o.crashed_at == now => o.workers.push((id, None)),
            other => {
                let calm = other.is_none() && quiet;
                let workers = vec![(id, None)];
                let lost_ms = now.0.saturating_sub(self.last_commit.0);
                self.outage = Some(Outage {
                    crashed_at: now,
                    workers,
                    rolled_back: None,
                    restored: None,
                    calm,
                    lost_ms,
                });
            }
        }
    }

    /// The crashed workers some live member may still list.
    pub fn crashed_workers(&self) -> Vec<MemberId> {
        let workers = self.outage.iter().flat_map(|o| &o.workers);
        workers.filter(|(_, dropped)| dropped.is_none()).map(|(id, _)| *id).collect()
    }

    /// No live member lists the crashed worker `id` any more.
    pub fn worker_dropped(&mut self, now: Time, id: MemberId) {
        let workers = self.outage.iter_mut().flat_map(|o| &mut o.workers);
        for (_, dropped) in workers.filter(|(w, d)| *w == id && d.is_none()) {
            *dropped = Some(now);
        }
    }

    /// The job committed `checkpoint` (or completed: `None`) at `now`: an outage that was
    /// detected is over once the new attempt commits.
    fn resumed(&mut self, now: Time, checkpoint: Option<Option<CheckpointId>>) {
        let Some(o) = &self.outage else { return };
        let Some(detected) = o.detected() else { return };
        if checkpoint.is_some_and(|c| c <= o.restored) {
            return;
        }
        let Some(o) = self.outage.take() else { return };
        if o.calm {
            self.stats.recoveries.push((detected.0 - o.crashed_at.0, now.0 - detected.0));
        }
    }

    /// The resume check, at every tick: a calm outage that was detected must have ended within
    /// [`RESUME_MS`] of the detection, plus the work it lost.
    fn check_resume(&mut self, now: Time) {
        let leader_gone = self.leader_lost || self.w.leader_crash_ms.is_some_and(|t| now.0 >= t);
        let Some(o) = &self.outage else { return };
        let Some(detected) = o.detected() else { return };
        let bound = RESUME_MS + o.lost_ms;
        if !o.calm || leader_gone || self.completed || now.0 <= detected.0 + bound {
            return;
        }
        let (at, n, lost) = (o.crashed_at.0, o.workers.len(), o.lost_ms);
        self.outage = None;
        let why = format!(
            "{n} task host(s) crashed at {at} ms, {lost} ms after the job's last commit; they were \
             detected by {} ms (dropped by every member, the job rolled back) and the job had not \
             committed again {bound} ms later",
            detected.0
        );
        self.violations.push((now, CheckerKind::RainstormResume, why));
    }

    /// A slot's process is gone (crash or restart): its operations will never answer.
    pub fn on_process_gone(&mut self, slot: Slot) {
        match self.phase {
            Phase::Storing { slot: s, .. } if s == slot => self.phase = Phase::Store,
            Phase::ReadDest { slot: s, generation, .. } if s == slot => {
                self.phase = Phase::ReadDest { slot: self.w.reader, generation, op: None }
            }
            _ => {}
        }
    }

    pub fn on_hydfs_event(&mut self, now: Time, slot: Slot, generation: u64, event: &HydfsEvent) {
        if let HydfsEvent::ReadData { op, offset, bytes, .. } = event {
            if let Phase::ReadDest { slot: s, generation: g, op: Some(id) } = &self.phase {
                if (*s, *g, *id) == (slot, generation, *op) {
                    if *offset == 0 {
                        self.dest_read.clear(); // the read started over
                    }
                    self.dest_read.extend_from_slice(bytes);
                }
            }
            return;
        }
        let HydfsEvent::OpDone { op, result } = event else { return };
        match &self.phase {
            Phase::Storing { slot: s, generation: g, op: Some(id) }
                if (*s, *g, *id) == (slot, generation, *op) =>
            {
                self.phase = match result {
                    Ok(_) | Err(HydfsError::AlreadyExists(_)) => Phase::Submit,
                    Err(_) => Phase::Store,
                };
            }
            Phase::ReadDest { slot: s, generation: g, op: Some(id) }
                if (*s, *g, *id) == (slot, generation, *op) =>
            {
                match result {
                    Ok(OpOutput::Downloaded { len, .. }) if *len == self.dest_read.len() as u64 => {
                        self.dest_content = Some(std::mem::take(&mut self.dest_read));
                        self.judge(now);
                    }
                    _ => self.phase = Phase::ReadDest { slot, generation, op: None },
                }
            }
            _ => {}
        }
    }

    pub fn on_rainstorm_event(&mut self, now: Time, slot: Slot, event: &RainstormEvent) {
        let mine = |job: &JobId| self.job == Some(*job);
        match event {
            // Outputs from any node: a leader deposed by a successor must not commit any.
            RainstormEvent::Outputs { job, tuples } if mine(job) => {
                self.console.extend(tuples.iter().cloned());
                self.stats.outputs += tuples.len() as u64;
            }
            RainstormEvent::JobTakenOver { job, term, .. } if mine(job) => {
                if let Some(crash) = self.w.leader_crash_ms.filter(|t| *t <= now.0) {
                    self.stats.leader_crashed_ms = Some(crash);
                    self.stats.takeover_ms.get_or_insert(now.0 - crash);
                }
                self.lead = slot;
                self.term = *term;
                self.takeovers += 1;
                self.stats.takeovers += 1;
            }
            RainstormEvent::TaskScheduled { job, task, host, .. } if mine(job) && slot == self.lead => {
                self.hosts.insert(*task, *host);
            }
            RainstormEvent::RolledBack { job, lost, checkpoint, .. } if mine(job) && slot == self.lead => {
                self.stats.rollbacks += 1;
                if let Some(o) = self.outage.as_mut() {
                    let crashed = lost.is_some_and(|m| o.workers.iter().any(|(w, _)| *w == m));
                    if crashed {
                        o.rolled_back.get_or_insert(now);
                        o.restored = *checkpoint;
                    } else {
                        // Another failure (a member declared failed without a crash, a task's
                        // own) starts the recovery over: not a calm one.
                        o.calm = false;
                    }
                }
            }
            RainstormEvent::Committed { job, checkpoint, .. } if mine(job) && slot == self.lead => {
                self.committed_any = true;
                self.last_commit = now;
                self.resumed(now, Some(*checkpoint));
            }
            RainstormEvent::JobCompleted { job, restarts, outputs } if mine(job) => {
                if self.completed {
                    // A successor that found the job's last commit in place says so too (the
                    // leader died, or was cut off, before its word reached it): the same outputs.
                    if Some(*outputs) != self.completed_outputs {
                        let why = format!(
                            "job {job} completed twice with different outputs ({:?}, then {outputs} on n{slot})",
                            self.completed_outputs
                        );
                        self.violations.push((now, CheckerKind::RainstormDuplicate, why));
                    }
                    return;
                }
                self.completed_outputs = Some(*outputs);
                self.lead = slot;
                self.resumed(now, None);
                self.completed = true;
                self.stats.completed_ms = Some(now.0);
                self.stats.restarts = *restarts;
                self.phase = Phase::ReadDest { slot, generation: 0, op: None };
            }
            RainstormEvent::JobFailed { job, reason } if mine(job) => {
                self.stats.failed = Some(reason.clone());
                self.violations.push((
                    now,
                    CheckerKind::RainstormLiveness,
                    format!("job {job} failed: {reason}"),
                ));
            }
            RainstormEvent::JobLost { job, reason } if mine(job) && slot != self.lead => {
                // A successor found no file to resume the job from (or stood down for another).
                self.nothing_to_resume |= reason == rainstorm_core::rainstorm::NOTHING_TO_RESUME;
            }
            RainstormEvent::JobLost { job, reason } if mine(job) && slot == self.lead => {
                // Like a leader crash: the job ends, and what it wrote must still be exact.
                self.stats.failed = Some(reason.clone());
                self.leader_lost = true;
            }
            RainstormEvent::JobAbandoned { job, .. } if mine(job) => self.stats.abandoned += 1,
            RainstormEvent::TaskStarted { job, resumed, .. } if mine(job) => {
                self.stats.tasks_started += 1;
                self.stats.tasks_resumed += usize::from(*resumed);
            }
            _ => {}
        }
    }

    /// Batches allowed over the whole job: per attempt, the full batches its tuples fill, plus
    /// per link one partial batch for each checkpoint, each linger period and the end.
    fn batch_bound(&self) -> Option<u64> {
        let (submitted, completed) = (self.stats.submitted_ms?, self.stats.completed_ms?);
        let cfg = &self.w.config;
        let n = u64::from(self.w.tasks);
        let specs = self.specs().ok()?;
        let header = reference::header_of(&self.content);
        let ops = reference::build_pair(&specs.0, &specs.1, header.as_deref()).ok()?;
        let routes = [Route::into(&ops[0], true), Route::into(&ops[1], false)];
        let links = |r: Route| if r == Route::Forward { n } else { n * n };
        let links = [links(routes[0]), links(routes[1]), n];
        let duration = completed.saturating_sub(submitted);
        let last_bytes = self.stage_tuples.get(2).map_or(0, |s| s.1);
        let triggers =
            duration / cfg.checkpoint_interval.0.max(1) + last_bytes / (cfg.sink_buffer_bytes / 4).max(1) + 2;
        let partial = triggers + 2 + duration / cfg.linger.0.max(1);
        let per_attempt: u64 = (0..3)
            .map(|s| {
                let (tuples, bytes) = self.stage_tuples.get(s).copied().unwrap_or_default();
                tuples.div_ceil(u64::from(cfg.batch_tuples.max(1)))
                    + bytes.div_ceil(u64::from(cfg.batch_bytes.max(1)))
                    + links[s] * partial
            })
            .sum();
        Some(per_attempt * (u64::from(self.stats.rollbacks as u32) + 1))
    }

    fn judge(&mut self, now: Time) {
        self.phase = Phase::Judged;
        if let Some(bound) = self.batch_bound() {
            let sent: u64 = self.batches.values().sum();
            self.stats.batches = sent;
            if sent > bound {
                let detail = format!("the job's tasks sent {sent} batches of tuples (bound {bound})");
                self.violations.push((now, CheckerKind::RainstormCoalescing, detail));
            }
        }
        let reference = match &self.reference {
            Ok(r) => r,
            Err(e) => {
                let why = format!("the reference run failed: {e}");
                self.violations.push((now, CheckerKind::RainstormOutput, why));
                return;
            }
        };
        let crashed = self.w.leader_crash_ms.is_some_and(|t| t <= now.0);
        let observed = Observed {
            console: &self.console,
            dest: self.dest_content.as_deref(),
            completed: self.completed,
            console_whole: !(crashed || self.leader_lost || self.takeovers > 0),
        };
        for finding in judge(reference, self.stateful, &observed) {
            let (kind, detail) = match finding {
                Finding::Mismatch(d) => (CheckerKind::RainstormOutput, d),
                Finding::Duplicate(d) => (CheckerKind::RainstormDuplicate, d),
                Finding::Loss(d) => (CheckerKind::RainstormLoss, d),
                Finding::Aggregate(d) => (CheckerKind::RainstormAggregate, d),
            };
            self.violations.push((now, kind, detail));
        }
    }

    /// How long after a job completes its own files may still be held somewhere (the delete
    /// reaches every replica, and copies that missed it learn of it from the others).
    pub const CLEANUP_GRACE_MS: u64 = 30_000;

    /// The end of the run: a job that completed, with its leader alive, must have deleted its
    /// own files (`held`: the files under `rainstorm/` each node up holds).
    pub fn check_cleanup(&mut self, now: Time, held: &[(Slot, String)]) {
        let Some(done) = self.stats.completed_ms else { return };
        // A log generation a crashed leader was still creating can outlive the job: the
        // create's coordinator was that leader, and a node that restarts with the create in
        // its store spreads it again (HyDFS keeps an unacknowledged create of a dead client).
        // Its successor deletes the generations it finds and the next ones, but not one that
        // appears after that.
        let earlier_term = |name: &str| {
            let log = name.rsplit('/').next().unwrap_or(name);
            let term = match log.strip_prefix("checkpoints.") {
                Some(rest) if rest.starts_with('g') => Some(0),
                Some(rest) => {
                    rest.strip_prefix('t').and_then(|t| t.split('.').next()).and_then(|t| t.parse().ok())
                }
                None => None,
            };
            term.is_some_and(|t: u32| t < self.term)
        };
        let held: Vec<&(Slot, String)> = held.iter().filter(|(_, name)| !earlier_term(name)).collect();
        if done + Self::CLEANUP_GRACE_MS > now.0 || held.is_empty() {
            return;
        }
        let files: Vec<String> = held.iter().map(|(slot, name)| format!("n{slot}: {name}")).collect();
        let why =
            format!("the job completed at {done} ms and its files are still held: {}", files.join(", "));
        self.violations.push((now, CheckerKind::RainstormCleanup, why));
    }

    /// The end of the run: a job that should have completed and did not is a liveness failure.
    pub fn finish(&mut self, now: Time, state: &[String]) {
        if self.phase == Phase::Judged {
            return;
        }
        let crashed = self.w.leader_crash_ms.is_some_and(|t| t <= now.0);
        if self.job.is_none() && crashed {
            // The leader crashed before the job was submitted: there is no job to judge.
        } else if self.nothing_to_resume && !self.committed_any {
            // The leader was lost before it created the job's files (its successor found none),
            // so nothing of the job exists to resume: the job is lost, with nothing written.
        } else {
            let why = format!(
                "the job did not complete by {} ms ({} of {} outputs, phase {:?}, leader {}, {} \
                 takeovers); at the end:\n    {}",
                now.0,
                self.console.len(),
                self.stats.reference_outputs,
                self.phase,
                if crashed {
                    "crashed"
                } else if self.leader_lost {
                    "lost"
                } else {
                    "up"
                },
                self.takeovers,
                state.join("\n    ")
            );
            self.violations.push((now, CheckerKind::RainstormLiveness, why));
        }
        self.judge(now);
    }
}

/// The answer to an [`Action`].
pub enum Submitted {
    Op(Result<OpId, HydfsError>),
    Job(Result<JobId, JobError>),
}
