//! The simulated world: a virtual clock, one event queue, the network, and the node processes.
//!
//! The queue is ordered by (virtual time, sequence) and the clock jumps from event to event; no
//! step is spent on idle time. One seed determines everything: the network's losses, duplicates
//! and latencies come from one ChaCha RNG, and every process's RNG seed is drawn from another, in
//! a fixed order. Nothing here reads the OS clock or iterates an unordered collection, so a run
//! is a pure function of its scenario.
//!
//! After every input to a node the world drains all its outputs (frames, events) and re-arms the
//! node's single timer from `poll_timeout`; a timer event from an older arming or an older process
//! at the same slot is stale and skipped.
//!
//! Stream frames model TCP connections: a frame is delivered after a latency and never lost while
//! its connection holds, but a connection breaks when a partition cuts its pair or one end
//! crashes, and the frames then in flight on it are each lost, duplicated or delivered
//! (`breaks.rs`); a frame to a process that crashed never reaches the next process at its slot.
//!
//! [`World::run`] runs a scenario to its end. [`World::run_until`], [`World::stats`] and
//! [`World::end`] let a benchmark read the counters part-way (for example, traffic over a
//! steady-state window) and stop when it has what it needs.

use crate::actor::{Actor, ActorStart};
use crate::check::{Checker, CheckerKind, DetectionSample, SlotSnapshot, Violation};
use crate::disk::SimDisk;
use crate::hydfs::{HydfsHarness, SlotView, WORKLOAD_TICK_MS};
use crate::rainstorm::harness::{Action, JobStats, RainstormHarness, Submitted};
use crate::scenario::{Fault, Scenario, Slot};
use crate::trace::Trace;
use rainstorm_core::command::Command;
use rainstorm_core::hydfs::HydfsEvent;
use rainstorm_core::membership::{MembershipEvent, Role};
use rainstorm_core::node::NodeEvent;
use rainstorm_core::rainstorm::ProgramResult;
use rainstorm_core::{Channel, Millis, NodeAddr, Time, Transmit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr};

mod breaks;
mod clock;
mod drive;

/// A process whose join failed is restarted-and-joined again after this long, as a supervisor
/// (systemd, an operator's script) would do.
pub const SUPERVISOR_REJOIN_DELAY_MS: u64 = 5_000;
/// How often the checkers look at every node.
const CHECK_INTERVAL_MS: u64 = 1_000;
/// How long a stream connection attempt to an unreachable address takes to fail.
const STREAM_TIMEOUT_MS: u64 = 1_000;
/// Room for headers and metadata in a stream frame that carries one chunk.
const FRAME_SLACK_BYTES: usize = 64 * 1024;
/// Trace record kinds.
const TRACE_DELIVER: u8 = 1;
const TRACE_TIMER: u8 = 2;
const TRACE_FAULT: u8 = 3;
const TRACE_EVENT: u8 = 4;
const TRACE_BREAK: u8 = 5;

/// The address of slot `i`.
pub fn slot_addr(i: Slot) -> NodeAddr {
    SocketAddr::new(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 1) as u8).into(), 7000)
}

#[derive(Debug)]
enum EventKind {
    Deliver {
        from: Slot,
        to: Slot,
        channel: Channel,
        frame: Vec<u8>,
        /// The process the frame was sent to (a stream connection reaches that one only).
        to_generation: u64,
    },
    SendFailed {
        slot: Slot,
        generation: u64,
        to: NodeAddr,
    },
    Timer {
        slot: Slot,
        generation: u64,
    },
    Fault(usize),
    Resume {
        slot: Slot,
        generation: u64,
    },
    /// A slow process's episode of late handling begins or ends (see `Fault::Slow`).
    Stall {
        slot: Slot,
        generation: u64,
    },
    /// A frame a slow process received is handed to it, late (see `Fault::Slow`).
    Handover {
        slot: Slot,
        generation: u64,
        channel: Channel,
        frame: Vec<u8>,
    },
    /// An emulated operator program answers a batch.
    ProgramReply {
        slot: Slot,
        generation: u64,
        token: u64,
        result: Result<ProgramResult, String>,
    },
    SupervisorJoin {
        slot: Slot,
        generation: u64,
    },
    Check,
    Workload,
}

struct Queued {
    at: Time,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Input that reached a paused process, handled in order when it resumes.
enum Backlog {
    Frame(Channel, Vec<u8>),
    /// A command typed while it stood still (its console input is buffered, not lost).
    Command(Command),
    /// An operator program's answer (the program kept running while its worker stood still).
    ProgramReply(u64, Result<ProgramResult, String>),
}

enum Process<A> {
    Down,
    Up(A),
    Paused(A, Vec<Backlog>),
}

struct SlotState<A> {
    addr: NodeAddr,
    /// The machine's clocks: they outlive its processes.
    clock: clock::NodeClock,
    process: Process<A>,
    /// Bumped whenever the process is replaced, so its old timers and callbacks go stale.
    generation: u64,
    armed: Option<Time>,
    /// The machine's disk: a crash keeps what was synced, and the next process starts from it.
    disk: SimDisk,
    /// Until when the process is slow (`Fault::Slow`).
    slow_until: Option<Time>,
    /// While slow, the delay of the current episode: frames that arrive are handed over this
    /// much later.
    slow_delay: Option<rainstorm_core::Millis>,
    /// When the last delayed frame is handed over: later frames wait behind it.
    handover_until: Time,
}

/// Options of one run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Keep a readable event log.
    pub trace_lines: bool,
    /// Keep every node event (for named-scenario assertions).
    pub record_events: bool,
}

/// Counters of one run, from its start.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    pub events: u64,
    pub datagrams_sent: u64,
    pub datagram_bytes: u64,
    pub stream_frames_sent: u64,
    pub stream_bytes: u64,
    pub datagrams_dropped: u64,
    pub largest_datagram: usize,
    pub largest_stream_frame: usize,
    /// Stream frames lost in flight because their connection broke.
    pub stream_frames_lost: u64,
    /// Stream frames delivered twice because their connection broke.
    pub stream_frames_duplicated: u64,
}

/// The outcome of one run.
pub struct Report {
    pub scenario: Scenario,
    pub violations: Vec<Violation>,
    pub trace_hash: String,
    pub trace_lines: Vec<String>,
    pub events: Vec<(Time, Slot, MembershipEvent)>,
    pub stats: RunStats,
    pub detections: Vec<DetectionSample>,
    pub false_failures: usize,
    /// The slot of each falsely failed id (one entry per id).
    pub false_failure_slots: Vec<Slot>,
    pub max_queue: usize,
    /// What the HyDFS workload did (scenarios with a file workload).
    pub workload: Option<crate::hydfs::WorkloadStats>,
    /// What the RainStorm job did (scenarios with a job).
    pub job: Option<JobStats>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn caught(&self, kind: CheckerKind) -> bool {
        self.violations.iter().any(|v| v.checker == kind)
    }
}

pub struct World<A: Actor> {
    scenario: Scenario,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    slots: Vec<SlotState<A>>,
    by_addr: BTreeMap<NodeAddr, Slot>,
    net_rng: ChaCha8Rng,
    seed_rng: ChaCha8Rng,
    loss_permille: u32,
    blocked: BTreeSet<(Slot, Slot)>,
    suspicion_on: bool,
    checker: Checker,
    trace: Trace,
    opts: RunOptions,
    recorded: Vec<(Time, Slot, MembershipEvent)>,
    stats: RunStats,
    started: bool,
    fault_rng: ChaCha8Rng,
    /// Draws the fate of each stream frame in flight on a connection that breaks.
    break_rng: ChaCha8Rng,
    /// Draws a slow process's episodes (delay, length) and the runs between them (seeded apart, so that a slow
    /// member changes nothing else of a run).
    stall_rng: ChaCha8Rng,
    hydfs: Option<HydfsHarness>,
    rainstorm: Option<RainstormHarness>,
    /// When each node's outgoing link is next free, in µs of simulated time (bandwidth model).
    link_free_us: Vec<u64>,
    /// Emulated operator programs, one per task attempt a process runs: the state of the keys
    /// its session has seen, and when it answered last (answers come back in order).
    programs: BTreeMap<ProgramKey, (BTreeMap<String, String>, Time)>,
}

/// One emulated program process: its node's process, and the task attempt it serves.
type ProgramKey = (
    Slot,
    u64,
    rainstorm_core::rainstorm::JobId,
    rainstorm_core::rainstorm::TaskId,
    rainstorm_core::rainstorm::Attempt,
);

/// What the HyDFS checkers see of every slot.
fn slot_views<A: Actor>(slots: &[SlotState<A>]) -> Vec<SlotView<'_>> {
    slots
        .iter()
        .enumerate()
        .map(|(slot, s)| {
            let actor = match &s.process {
                Process::Up(a) | Process::Paused(a, _) => Some(a),
                Process::Down => None,
            };
            SlotView {
                slot,
                addr: s.addr,
                generation: s.generation,
                up: actor.is_some(),
                joined: actor.is_some_and(|a| a.is_joined()),
                hydfs: actor.and_then(|a| a.hydfs()),
                disk: &s.disk,
            }
        })
        .collect()
}

impl<A: Actor> World<A> {
    pub fn new(scenario: Scenario, opts: RunOptions) -> World<A> {
        let mut master = ChaCha8Rng::seed_from_u64(scenario.seed);
        let net_rng = ChaCha8Rng::seed_from_u64(master.gen());
        let seed_rng = ChaCha8Rng::seed_from_u64(master.gen());
        let fault_rng = ChaCha8Rng::seed_from_u64(master.gen());
        let break_rng = ChaCha8Rng::seed_from_u64(master.gen());
        let hydfs = scenario.hydfs.clone().map(|w| HydfsHarness::new(w, scenario.seed));
        let rainstorm = scenario.rainstorm.clone().map(RainstormHarness::new);
        let background_sync = scenario.hydfs.as_ref().is_some_and(|w| w.background_sync);
        let scenario_nodes = scenario.nodes;
        let scenario_seed = scenario.seed;
        let slots = (0..scenario.nodes)
            .map(|i| SlotState {
                addr: slot_addr(i),
                clock: clock::NodeClock::new(
                    scenario.clock_offsets_ms.get(i).copied().unwrap_or(0),
                    scenario.clock_drift_ppm.get(i).copied().unwrap_or(0),
                ),
                process: Process::Down,
                generation: 0,
                armed: None,
                disk: SimDisk::new(background_sync),
                slow_until: None,
                slow_delay: None,
                handover_until: Time::ZERO,
            })
            .collect::<Vec<_>>();
        let by_addr = slots.iter().enumerate().map(|(i, s)| (s.addr, i)).collect();
        let checker = Checker::new(&scenario);
        World {
            loss_permille: scenario.net.loss_permille,
            suspicion_on: scenario.config.suspicion_at_start,
            scenario,
            now: Time::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            slots,
            by_addr,
            net_rng,
            seed_rng,
            blocked: BTreeSet::new(),
            checker,
            trace: Trace::new(opts.trace_lines),
            opts,
            recorded: Vec::new(),
            stats: RunStats::default(),
            started: false,
            fault_rng,
            break_rng,
            stall_rng: ChaCha8Rng::seed_from_u64(scenario_seed ^ 0x5354_414c_4c00_0005),
            hydfs,
            rainstorm,
            link_free_us: vec![0; scenario_nodes],
            programs: BTreeMap::new(),
        }
    }

    fn push(&mut self, at: Time, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse(Queued { at, seq: self.seq, kind }));
    }

    /// Runs the scenario to its end and reports.
    pub fn run(mut self) -> Report {
        self.run_until(Time(self.scenario.duration_ms));
        self.finish()
    }

    /// Handles every event up to and including `until` (at most the scenario's end) and sets the
    /// clock there; a later `run_until` or [`World::run`] goes on as if the run had not stopped.
    pub fn run_until(&mut self, until: Time) {
        if !self.started {
            self.started = true;
            // The introducer starts first; members start 100 ms apart, like an operator's script.
            for slot in 0..self.scenario.nodes {
                self.start_process(slot, Time(slot as u64 * 100));
            }
            for i in 0..self.scenario.faults.len() {
                let at = Time(self.scenario.faults[i].at_ms);
                self.push(at, EventKind::Fault(i));
            }
            self.push(Time(CHECK_INTERVAL_MS), EventKind::Check);
            let starts = [
                self.hydfs.as_ref().map(|h| h.workload().start_ms),
                self.rainstorm.as_ref().map(|r| r.workload().start_ms),
            ];
            if let Some(at) = starts.into_iter().flatten().min() {
                self.push(Time(at), EventKind::Workload);
            }
        }
        let end = until.min(Time(self.scenario.duration_ms));
        while self.queue.peek().is_some_and(|Reverse(ev)| ev.at <= end) {
            let Some(Reverse(ev)) = self.queue.pop() else { break };
            self.now = ev.at;
            self.stats.events += 1;
            self.dispatch(ev.kind);
        }
        self.now = self.now.max(end);
    }

    /// The counters so far (for a window, subtract the counters at its start).
    pub fn stats(&self) -> RunStats {
        self.stats
    }

    /// Ends the run at the clock of the last [`World::run_until`] and reports, as if the scenario
    /// had lasted that long (the final checks run now).
    pub fn end(mut self) -> Report {
        self.scenario.duration_ms = self.now.0;
        self.finish()
    }

    fn finish(mut self) -> Report {
        let snapshots = self.snapshots();
        self.checker.check(self.now, &snapshots);
        if self.scenario.checks_convergence() {
            self.checker.check_convergence(self.now, &snapshots);
        }
        if let Some(h) = &mut self.hydfs {
            h.finish(self.now, &slot_views(&self.slots));
        }
        if let Some(r) = &mut self.rainstorm {
            let mut state = Vec::new();
            for (slot, s) in self.slots.iter().enumerate() {
                if let Process::Up(a) | Process::Paused(a, _) = &s.process {
                    state.extend(a.describe_jobs().into_iter().map(|l| format!("n{slot} {l}")));
                }
            }
            r.finish(self.now, &state);
            let mut held = Vec::new();
            for (slot, s) in self.slots.iter().enumerate() {
                if let Process::Up(a) | Process::Paused(a, _) = &s.process {
                    let files = a.hydfs().map(|h| h.store().files().keys().cloned().collect::<Vec<_>>());
                    for name in files.unwrap_or_default() {
                        if name.as_str().starts_with("rainstorm/") {
                            held.push((slot, name.as_str().to_owned()));
                        }
                    }
                }
            }
            r.check_cleanup(self.now, &held);
        }
        self.collect_hydfs_violations();
        let (trace_hash, trace_lines) = self.trace.finish();
        Report {
            violations: self.checker.violations().to_vec(),
            false_failures: self.checker.false_failures(),
            false_failure_slots: self.checker.false_failure_slots(),
            max_queue: self.checker.max_queue(),
            detections: self.checker.finish_samples(),
            scenario: self.scenario,
            trace_hash,
            trace_lines,
            events: self.recorded,
            stats: self.stats,
            workload: self.hydfs.map(|h| h.stats),
            job: self.rainstorm.map(|r| r.stats),
        }
    }

    fn dispatch(&mut self, kind: EventKind) {
        match kind {
            EventKind::Deliver { from, to, channel, frame, to_generation } => {
                self.deliver(from, to, channel, frame, to_generation)
            }
            EventKind::SendFailed { slot, generation, to } => {
                if self.slots[slot].generation == generation {
                    let now = self.local_now(slot);
                    if let Process::Up(actor) = &mut self.slots[slot].process {
                        actor.handle_send_failed(now, to);
                        self.drain(slot);
                    }
                }
            }
            EventKind::Timer { slot, generation } => {
                let s = &mut self.slots[slot];
                if s.generation != generation || s.armed != Some(self.now) {
                    return;
                }
                s.armed = None;
                self.trace.record(TRACE_TIMER, self.now, slot, &[]);
                let now = self.local_now(slot);
                if let Process::Up(actor) = &mut self.slots[slot].process {
                    actor.handle_timeout(now);
                    self.drain(slot);
                }
            }
            EventKind::Fault(i) => {
                let fault = self.scenario.faults[i].fault.clone();
                self.apply_fault(fault);
            }
            EventKind::ProgramReply { slot, generation, token, result } => {
                if self.slots[slot].generation != generation {
                    return;
                }
                let now = self.local_now(slot);
                match &mut self.slots[slot].process {
                    Process::Up(actor) => {
                        actor.handle_program_result(now, token, result);
                        self.drain(slot);
                    }
                    Process::Paused(_, backlog) => backlog.push(Backlog::ProgramReply(token, result)),
                    Process::Down => {}
                }
            }
            EventKind::Resume { slot, generation } => {
                if self.slots[slot].generation == generation {
                    self.resume(slot);
                }
            }
            EventKind::Stall { slot, generation } => {
                if self.slots[slot].generation == generation {
                    self.stall(slot);
                }
            }
            EventKind::Handover { slot, generation, channel, frame } => {
                if self.slots[slot].generation == generation {
                    self.hand_over(slot, channel, frame);
                }
            }
            EventKind::SupervisorJoin { slot, generation } => {
                if self.slots[slot].generation == generation {
                    self.command(slot, Command::Join);
                }
            }
            EventKind::Workload => self.workload_tick(),
            EventKind::Check => {
                let snapshots = self.snapshots();
                self.checker.check(self.now, &snapshots);
                self.sample_rainstorm();
                self.push(self.now + rainstorm_core::Millis(CHECK_INTERVAL_MS), EventKind::Check);
            }
        }
    }

    /// What `slot`'s running process reads as the time now (see `clock.rs`).
    fn local_now(&self, slot: Slot) -> Time {
        self.slots[slot].clock.local(self.now)
    }

    fn start_process(&mut self, slot: Slot, at: Time) {
        let saved = self.now;
        self.now = self.now.max(at);
        self.slots[slot].clock.start_process(self.now);
        let role = if slot == 0 { Role::Introducer } else { Role::Member };
        let start = ActorStart {
            role,
            addr: self.slots[slot].addr,
            introducer: self.slots[0].addr,
            config: self.scenario.config.clone(),
            now: self.local_now(slot),
            seed: self.seed_rng.gen(),
            hydfs: self.scenario.hydfs.as_ref().map(|w| w.config.clone()),
            rainstorm: self.scenario.rainstorm.as_ref().map(|w| w.config.clone()),
            cluster_key: self.scenario.cluster_key,
            // The machine's disk outlives its processes: a restart recovers what was synced.
            disk: self.slots[slot].disk.clone(),
        };
        self.checker.on_start(slot);
        if let Some(h) = &mut self.hydfs {
            h.on_process_gone(slot);
        }
        if let Some(r) = &mut self.rainstorm {
            r.on_process_gone(slot);
        }
        let s = &mut self.slots[slot];
        s.generation += 1;
        s.armed = None;
        s.slow_until = None;
        s.slow_delay = None;
        s.process = Process::Up(A::start(&start));
        self.trace.line(self.now, Some(slot), || format!("process starts at {}", start.addr));
        if let Some(h) = &mut self.hydfs {
            let views = slot_views(&self.slots);
            h.on_recovered(self.now, &views[slot]);
        }
        self.drain(slot);
        self.now = saved;
    }

    fn deliver(&mut self, from: Slot, to: Slot, channel: Channel, frame: Vec<u8>, to_generation: u64) {
        if channel == Channel::Stream && self.slots[to].generation != to_generation {
            // Sent to a process that crashed since: its connections died with it.
            self.stats.stream_frames_lost += 1;
            let mut record = vec![breaks::FATE_GONE];
            record.extend_from_slice(&(from as u64).to_le_bytes());
            self.trace.record(TRACE_BREAK, self.now, to, &record);
            self.trace
                .line(self.now, Some(to), || format!("stream frame from n{from} lost: its process is gone"));
            return;
        }
        self.trace.record(TRACE_DELIVER, self.now, to, &frame);
        let slot = &mut self.slots[to];
        if slot.slow_delay.is_some() || slot.handover_until > self.now {
            // A slow process: handed over late, behind the frames that came before.
            let delay = slot.slow_delay.unwrap_or_default();
            let at = (self.now + delay).max(slot.handover_until);
            slot.handover_until = at;
            let generation = slot.generation;
            self.push(at, EventKind::Handover { slot: to, generation, channel, frame });
            return;
        }
        self.hand_over(to, channel, frame);
    }

    /// Hands a frame to the process at `to` now.
    fn hand_over(&mut self, to: Slot, channel: Channel, frame: Vec<u8>) {
        let now = self.local_now(to);
        match &mut self.slots[to].process {
            Process::Down => {}
            Process::Paused(_, backlog) => backlog.push(Backlog::Frame(channel, frame)),
            Process::Up(actor) => {
                actor.handle_frame(now, channel, &frame);
                self.drain(to);
            }
        }
    }

    fn command(&mut self, slot: Slot, command: Command) {
        let now = self.local_now(slot);
        match &mut self.slots[slot].process {
            Process::Up(actor) => {
                actor.command(now, command);
                self.drain(slot);
            }
            Process::Paused(_, backlog) => backlog.push(Backlog::Command(command)),
            Process::Down => {}
        }
    }

    /// Drains every output of `slot`'s process and re-arms its timer.
    fn drain(&mut self, slot: Slot) {
        loop {
            let Process::Up(actor) = &mut self.slots[slot].process else { return };
            if let Some(t) = actor.poll_transmit() {
                self.route(slot, t);
                continue;
            }
            if let Some(e) = actor.poll_event() {
                self.on_node_event(slot, e);
                continue;
            }
            break;
        }
        let Process::Up(actor) = &self.slots[slot].process else { return };
        let next = actor.poll_timeout();
        if let Some(local) = next {
            let at = self.slots[slot].clock.true_time_of(local, self.now);
            if self.slots[slot].armed != Some(at) {
                self.slots[slot].armed = Some(at);
                let generation = self.slots[slot].generation;
                self.push(at, EventKind::Timer { slot, generation });
            }
        } else {
            self.slots[slot].armed = None;
        }
    }

    fn on_node_event(&mut self, slot: Slot, event: NodeEvent) {
        match event {
            NodeEvent::Membership(e) => self.on_membership_event(slot, e),
            NodeEvent::Hydfs(e) => self.on_hydfs_event(slot, e),
            NodeEvent::Program(call) => {
                // Emulated programs answer after 1 to 16 ms, in order per task attempt, a pure
                // function of the call and the program's session.
                let generation = self.slots[slot].generation;
                let key = (slot, generation, call.job, call.task, call.attempt);
                let (session, last) =
                    self.programs.entry(key).or_insert_with(|| (BTreeMap::new(), Time::ZERO));
                let result = crate::rainstorm::programs::run_program(
                    &call.program,
                    call.header.as_deref(),
                    &call.batch,
                    session,
                );
                let at = (self.now + Millis(1 + call.token % 16)).max(*last);
                *last = at;
                self.push(at, EventKind::ProgramReply { slot, generation, token: call.token, result });
            }
            NodeEvent::Rainstorm(e) => {
                let now = self.now;
                self.trace.line(now, Some(slot), || format!("rainstorm: {}", describe_rainstorm_event(&e)));
                if let Some(r) = &mut self.rainstorm {
                    r.on_rainstorm_event(now, slot, &e);
                }
            }
        }
    }

    fn on_hydfs_event(&mut self, slot: Slot, event: HydfsEvent) {
        let now = self.now;
        self.trace.line(now, Some(slot), || format!("hydfs: {}", describe_hydfs_event(&event)));
        let generation = self.slots[slot].generation;
        if let Some(r) = &mut self.rainstorm {
            r.on_hydfs_event(now, slot, generation, &event);
        }
        if let Some(h) = &mut self.hydfs {
            h.on_event(now, slot, generation, &event, &slot_views(&self.slots));
        }
    }

    fn workload_tick(&mut self) {
        let again = self.rainstorm_tick();
        let now = self.now;
        let whole = self.blocked.is_empty();
        let Some(h) = &mut self.hydfs else {
            if again {
                self.push(now + rainstorm_core::Millis(WORKLOAD_TICK_MS), EventKind::Workload);
            }
            return;
        };
        let subs = h.tick(now, &slot_views(&self.slots), whole);
        let until = h.workload().final_merge_ms;
        for sub in subs {
            let slot = sub.slot;
            let local = self.local_now(slot);
            let generation = self.slots[slot].generation;
            let result = match &mut self.slots[slot].process {
                Process::Up(actor) => {
                    self.trace.line(now, Some(slot), || format!("client: {}", describe_op(&sub.op)));
                    actor.submit(local, sub.op.clone())
                }
                _ => None,
            };
            if let Some(h) = &mut self.hydfs {
                h.submitted(now, sub, generation, result);
            }
            self.drain(slot);
        }
        if now.0 <= until || again {
            self.push(now + rainstorm_core::Millis(WORKLOAD_TICK_MS), EventKind::Workload);
        }
    }

    /// The RainStorm job's turn; whether it needs more ticks.
    fn rainstorm_tick(&mut self) -> bool {
        let now = self.now;
        self.sample_rainstorm();
        let Some(r) = &mut self.rainstorm else { return false };
        let slots = &self.slots;
        for id in r.crashed_workers() {
            let listed = slots.iter().any(|s| match &s.process {
                Process::Up(a) | Process::Paused(a, _) => a.is_joined() && a.view().contains(&id),
                Process::Down => false,
            });
            if !listed {
                r.worker_dropped(now, id);
            }
        }
        let up = |slot: Slot| match slots.get(slot).map(|s| &s.process) {
            Some(Process::Up(a)) if a.is_joined() => Some(slots[slot].generation),
            _ => None,
        };
        let actions = r.tick(now, &up);
        for action in actions {
            let (slot, result) = match action {
                Action::Submit { slot, op } => {
                    let local = self.local_now(slot);
                    let Process::Up(actor) = &mut self.slots[slot].process else { continue };
                    self.trace.line(now, Some(slot), || format!("job client: {}", describe_op(&op)));
                    (slot, actor.submit(local, op).map(Submitted::Op))
                }
                Action::StartJob { slot, spec } => {
                    let local = self.local_now(slot);
                    let Process::Up(actor) = &mut self.slots[slot].process else { continue };
                    self.trace.line(now, Some(slot), || format!("job submitted: {spec}"));
                    (slot, actor.start_job(local, spec).map(Submitted::Job))
                }
            };
            let generation = self.slots[slot].generation;
            if let (Some(result), Some(r)) = (result, &mut self.rainstorm) {
                r.submitted(now, slot, generation, result);
            }
            self.drain(slot);
        }
        self.rainstorm.as_ref().is_some_and(|r| r.active())
    }

    /// What every node's RainStorm holds and has sent, for the job's checkers.
    fn sample_rainstorm(&mut self) {
        let Some(r) = &mut self.rainstorm else { return };
        for (slot, s) in self.slots.iter().enumerate() {
            if let Process::Up(actor) | Process::Paused(actor, _) = &s.process {
                r.check_buffers(self.now, slot, &actor.rainstorm_buffers());
                r.count_batches(slot, s.generation, actor.rainstorm_batches());
            }
        }
    }

    fn collect_hydfs_violations(&mut self) {
        if let Some(h) = &mut self.hydfs {
            for (at, kind, detail) in h.take_violations() {
                self.checker.violate(at, kind, detail);
            }
        }
        if let Some(r) = &mut self.rainstorm {
            for (at, kind, detail) in r.take_violations() {
                self.checker.violate(at, kind, detail);
            }
        }
    }

    fn on_membership_event(&mut self, slot: Slot, event: MembershipEvent) {
        let now = self.now;
        self.trace.record(TRACE_EVENT, now, slot, format!("{event:?}").as_bytes());
        self.trace.line(now, Some(slot), || describe_event(&event));
        self.checker.on_event(now, slot, &event);
        if let MembershipEvent::JoinFailed { .. } = event {
            let generation = self.slots[slot].generation;
            let at = now + rainstorm_core::Millis(SUPERVISOR_REJOIN_DELAY_MS);
            self.push(at, EventKind::SupervisorJoin { slot, generation });
        }
        if self.opts.record_events {
            self.recorded.push((now, slot, event));
        }
    }

    fn route(&mut self, from: Slot, t: Transmit) {
        let Some(&to) = self.by_addr.get(&t.to) else { return };
        match t.channel {
            Channel::Datagram => {
                self.stats.datagrams_sent += 1;
                self.stats.datagram_bytes += t.payload.len() as u64;
                self.stats.largest_datagram = self.stats.largest_datagram.max(t.payload.len());
                if t.payload.len() > self.scenario.config.max_datagram_bytes {
                    let detail = format!("n{from} sent a {}-byte datagram", t.payload.len());
                    self.checker.violate(self.now, CheckerKind::Bounded, detail);
                }
                if self.blocked.contains(&(from, to)) || self.net_rng.gen_range(0..1000) < self.loss_permille
                {
                    self.stats.datagrams_dropped += 1;
                    return;
                }
                let copies = if self.net_rng.gen_range(0..1000) < self.scenario.net.duplicate_permille {
                    2
                } else {
                    1
                };
                let to_generation = self.slots[to].generation;
                for _ in 1..copies {
                    let at = self.now + self.latency();
                    let frame = t.payload.clone();
                    self.push(
                        at,
                        EventKind::Deliver { from, to, channel: Channel::Datagram, frame, to_generation },
                    );
                }
                let at = self.now + self.latency();
                let frame = t.payload;
                self.push(
                    at,
                    EventKind::Deliver { from, to, channel: Channel::Datagram, frame, to_generation },
                );
            }
            Channel::Stream => {
                self.stats.stream_frames_sent += 1;
                self.stats.stream_bytes += t.payload.len() as u64;
                self.stats.largest_stream_frame = self.stats.largest_stream_frame.max(t.payload.len());
                if let Some(w) = self.scenario.hydfs.as_ref() {
                    if t.payload.len() > w.config.chunk_bytes + FRAME_SLACK_BYTES {
                        let detail = format!("n{from} sent a {}-byte stream frame", t.payload.len());
                        self.checker.violate(self.now, CheckerKind::HydfsChunking, detail);
                    }
                }
                let generation = self.slots[from].generation;
                let unreachable = self.blocked.contains(&(from, to)) || self.blocked.contains(&(to, from));
                let down = matches!(self.slots[to].process, Process::Down);
                if unreachable || down {
                    let delay = if unreachable { STREAM_TIMEOUT_MS } else { 1 };
                    let at = self.now + rainstorm_core::Millis(delay);
                    self.push(at, EventKind::SendFailed { slot: from, generation, to: t.to });
                    return;
                }
                let mut at = self.now + self.latency();
                let bw = self.scenario.net.bandwidth_bytes_per_ms;
                if bw > 0 {
                    // Link time is kept in microseconds so small frames cost their true share.
                    let depart_us = self.link_free_us[from].max(self.now.0 * 1000);
                    let done_us = depart_us + (t.payload.len() as u64 * 1000).div_ceil(bw);
                    self.link_free_us[from] = done_us;
                    at = at.max(Time(done_us.div_ceil(1000) + self.scenario.net.latency_min_ms));
                }
                let to_generation = self.slots[to].generation;
                let frame = t.payload;
                self.push(
                    at,
                    EventKind::Deliver { from, to, channel: Channel::Stream, frame, to_generation },
                );
            }
        }
    }

    fn latency(&mut self) -> rainstorm_core::Millis {
        let net = &self.scenario.net;
        rainstorm_core::Millis(
            self.net_rng.gen_range(net.latency_min_ms..=net.latency_max_ms.max(net.latency_min_ms)),
        )
    }

    fn apply_fault(&mut self, fault: Fault) {
        if let Some(r) = &mut self.rainstorm {
            r.on_fault(self.now, matches!(fault, Fault::Crash { .. } | Fault::CrashTaskHost { .. }));
        }
        self.trace.record(TRACE_FAULT, self.now, 0, format!("{fault:?}").as_bytes());
        self.trace.line(self.now, None, || format!("fault: {fault:?}"));
        match fault {
            Fault::Crash { node } => self.crash(node),
            Fault::CrashTaskHost { pick } => {
                let hosts: Vec<Slot> = self
                    .rainstorm
                    .as_ref()
                    .map(|r| r.task_hosts())
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|addr| self.by_addr.get(&addr).copied())
                    .filter(|s| matches!(self.slots[*s].process, Process::Up(_) | Process::Paused(..)))
                    .filter(|s| self.rainstorm.as_ref().is_some_and(|r| !r.spared(*s)))
                    .collect();
                if !hosts.is_empty() {
                    let node = hosts[(pick % hosts.len() as u64) as usize];
                    self.trace.line(self.now, None, || format!("fault: crash of task host n{node}"));
                    self.crash(node);
                }
            }
            Fault::RestartCrashed { pick } => {
                // A crashed leader stays down until the calm (its restart is planned apart), and
                // a crashed introducer comes back first: nobody joins without it.
                let leader = self
                    .scenario
                    .rainstorm
                    .as_ref()
                    .filter(|w| w.leader_crash_ms.is_some())
                    .map(|w| w.leader);
                let down: Vec<Slot> = (0..self.slots.len())
                    .filter(|s| matches!(self.slots[*s].process, Process::Down) && Some(*s) != leader)
                    .collect();
                if !down.is_empty() {
                    let node = if down.contains(&0) { 0 } else { down[(pick % down.len() as u64) as usize] };
                    self.trace.line(self.now, None, || format!("fault: restart of n{node}"));
                    self.start_process(node, self.now);
                }
            }
            Fault::Restart { node } => {
                if !matches!(self.slots[node].process, Process::Down) {
                    self.crash(node);
                }
                self.start_process(node, self.now);
            }
            Fault::Pause { node, for_ms } => {
                let process = std::mem::replace(&mut self.slots[node].process, Process::Down);
                self.slots[node].process = match process {
                    Process::Up(actor) => {
                        let st = self.scenario.config.suspicion_timeout.0;
                        self.checker.on_pause(self.now, node, for_ms, st);
                        let generation = self.slots[node].generation;
                        self.push(
                            self.now + rainstorm_core::Millis(for_ms),
                            EventKind::Resume { slot: node, generation },
                        );
                        Process::Paused(actor, Vec::new())
                    }
                    other => other,
                };
            }
            Fault::Slow { node, for_ms } => {
                if matches!(self.slots[node].process, Process::Up(_)) {
                    self.slots[node].slow_until = Some(self.now + rainstorm_core::Millis(for_ms));
                    self.checker.on_slow(self.now, node, for_ms);
                    self.trace.line(self.now, Some(node), || format!("turns slow for {for_ms} ms"));
                    self.stall(node);
                }
            }
            Fault::Partition { side } => {
                let side: BTreeSet<Slot> = side.into_iter().collect();
                let mut cut = Vec::new();
                for a in 0..self.slots.len() {
                    for b in 0..self.slots.len() {
                        if side.contains(&a) != side.contains(&b) {
                            cut.push((a, b));
                        }
                    }
                }
                self.cut(cut);
                self.conditions_changed();
            }
            Fault::OneWay { from, to } => {
                let mut cut = Vec::new();
                for a in &from {
                    for b in &to {
                        if a != b {
                            cut.push((*a, *b));
                        }
                    }
                }
                self.cut(cut);
                self.conditions_changed();
            }
            Fault::Heal => {
                self.blocked.clear();
                self.conditions_changed();
            }
            Fault::SetLoss { permille } => {
                self.loss_permille = permille;
                self.conditions_changed();
            }
            Fault::Leave { node } => {
                self.checker.on_leave_command(node);
                self.command(node, Command::Leave);
            }
            Fault::Join { node } => {
                self.checker.on_join_command(node);
                self.command(node, Command::Join);
            }
            Fault::Corrupt { node } => {
                let block = self.slots[node].disk.corrupt(&mut self.fault_rng);
                self.trace.line(self.now, Some(node), || format!("disk block {block:?} corrupted"));
            }
            Fault::LoseBlock { node } => {
                let block = self.slots[node].disk.lose(&mut self.fault_rng);
                self.trace.line(self.now, Some(node), || format!("disk block {block:?} lost"));
            }
            Fault::DiskFull { node } => self.slots[node].disk.set_full(true),
            Fault::DiskFreed { node } => self.slots[node].disk.set_full(false),
            Fault::CrashAll => {
                for node in 0..self.slots.len() {
                    if !matches!(self.slots[node].process, Process::Down) {
                        self.crash(node);
                    }
                }
            }
            Fault::RestartAll => {
                // The introducer first: nobody joins without it.
                for node in 0..self.slots.len() {
                    if matches!(self.slots[node].process, Process::Down) {
                        self.start_process(node, self.now);
                    }
                }
            }
            Fault::ClockJump { node, by_ms } => {
                // Only the wall clock is stepped: the running process advances by its monotonic
                // clock and never sees it; the next process started on the node does.
                self.slots[node].clock.step(by_ms);
            }
            Fault::SetSuspicion { node, on } => {
                if matches!(self.slots[node].process, Process::Up(_)) {
                    self.suspicion_on = on;
                    self.conditions_changed();
                }
                self.command(node, Command::SetSuspicion(on));
            }
        }
    }

    fn conditions_changed(&mut self) {
        let cut = !cuts_are_bridged(&self.blocked, self.slots.len(), self.scenario.config.indirect_probes);
        let bad = cut || self.loss_permille > 50 || !self.suspicion_on;
        self.checker.on_conditions(self.now, bad);
        let assured = self.blocked.is_empty() && self.loss_permille <= 50 && self.suspicion_on;
        self.checker.on_confirmations(self.now, assured);
    }

    fn crash(&mut self, slot: Slot) {
        let listers: BTreeSet<Slot> = match &self.slots[slot].process {
            Process::Up(actor) | Process::Paused(actor, _) if actor.is_joined() => {
                let id = actor.id();
                (0..self.slots.len())
                    .filter(|&s| match &self.slots[s].process {
                        Process::Up(a) | Process::Paused(a, _) => {
                            s != slot && a.is_joined() && a.view().contains(&id)
                        }
                        Process::Down => false,
                    })
                    .collect()
            }
            _ => BTreeSet::new(),
        };
        if let Process::Up(actor) | Process::Paused(actor, _) = &self.slots[slot].process {
            if actor.is_joined() {
                self.checker.watch_crash(self.now, actor.id(), listers);
            }
        }
        self.checker.on_crash(self.now, slot);
        self.sample_rainstorm();
        if let Some(h) = &mut self.hydfs {
            let s = &self.slots[slot];
            if let Process::Up(actor) | Process::Paused(actor, _) = &s.process {
                if let Some(node) = actor.hydfs() {
                    h.on_crash_keeps(slot, node, &s.disk);
                }
            }
            h.on_process_gone(slot);
        }
        if let Some(r) = &mut self.rainstorm {
            let paused = self.slots.iter().any(|s| matches!(s.process, Process::Paused(..)));
            r.on_crash(self.now, self.slots[slot].addr, self.blocked.is_empty() && !paused);
        }
        self.slots[slot].disk.crash();
        self.break_streams(&|a, b| a == slot || b == slot);
        let s = &mut self.slots[slot];
        s.process = Process::Down;
        s.generation += 1;
        s.armed = None;
        // The crashed process's programs die with it.
        self.programs.retain(|k, _| k.0 != slot);
    }

    /// A slow process's next episode: one running late ends (normal handling for 0.1–1.5 s
    /// follows), or one begins, for 1–5 s, handing every frame over 0.2–2 s late (drawn per
    /// episode) — unless the slow spell is over.
    fn stall(&mut self, slot: Slot) {
        let generation = self.slots[slot].generation;
        if self.slots[slot].slow_delay.take().is_some() {
            self.trace.line(self.now, Some(slot), || "handles frames on time again".to_string());
            let again = self.now + rainstorm_core::Millis(self.stall_rng.gen_range(100..=1_500));
            self.push(again, EventKind::Stall { slot, generation });
            return;
        }
        let Some(until) = self.slots[slot].slow_until else { return };
        if self.now >= until {
            self.slots[slot].slow_until = None;
            return;
        }
        let delay = self.stall_rng.gen_range(200..=2_000);
        let episode = self.stall_rng.gen_range(1_000..=5_000);
        self.slots[slot].slow_delay = Some(rainstorm_core::Millis(delay));
        self.trace.line(self.now, Some(slot), || format!("handles frames {delay} ms late for {episode} ms"));
        self.push(self.now + rainstorm_core::Millis(episode), EventKind::Stall { slot, generation });
    }

    fn resume(&mut self, slot: Slot) {
        let process = std::mem::replace(&mut self.slots[slot].process, Process::Down);
        let Process::Paused(mut actor, backlog) = process else {
            self.slots[slot].process = process;
            return;
        };
        let now = self.local_now(slot);
        self.checker.on_resume(self.now, slot);
        self.trace.line(self.now, Some(slot), || format!("resumes with {} frames of backlog", backlog.len()));
        // After a pause the backlog is handled before the timers that fell due while the process
        // stood still.
        for input in backlog {
            match input {
                Backlog::Frame(channel, frame) => actor.handle_frame(now, channel, &frame),
                Backlog::Command(command) => actor.command(now, command),
                Backlog::ProgramReply(token, result) => actor.handle_program_result(now, token, result),
            }
        }
        actor.handle_timeout(now);
        self.slots[slot].process = Process::Up(actor);
        self.slots[slot].armed = None;
        self.drain(slot);
    }

    fn snapshots(&self) -> Vec<SlotSnapshot> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                let (actor, paused) = match &s.process {
                    Process::Up(a) => (a, false),
                    Process::Paused(a, _) => (a, true),
                    Process::Down => return None,
                };
                Some(SlotSnapshot {
                    slot,
                    paused,
                    joined: actor.is_joined(),
                    id: actor.id(),
                    view: actor.view(),
                    suspicion: actor.suspicion_enabled(),
                    queues: actor.queue_lengths(),
                    unsendable_frames: actor.unsendable_frames(),
                    refused_frames: actor.refused_frames(),
                })
            })
            .collect()
    }
}

fn describe_event(e: &MembershipEvent) -> String {
    match e {
        MembershipEvent::SelfJoined { id, members } => format!("joined as {id} ({members} others)"),
        MembershipEvent::JoinFailed { reason } => format!("join failed: {reason}"),
        MembershipEvent::SelfDeclaredFailed { old } => {
            format!("learned {old} was declared failed; rejoining")
        }
        MembershipEvent::SelfRefuted { incarnation } => {
            format!("refuted suspicion (incarnation {incarnation})")
        }
        MembershipEvent::SelfLeft { id } => format!("left as {id}"),
        MembershipEvent::MemberJoined { member } => format!("NEW {member}"),
        MembershipEvent::MemberSuspected { member, incarnation } => format!("SUS {member} inc {incarnation}"),
        MembershipEvent::MemberAlive { member, incarnation } => format!("ALIVE {member} inc {incarnation}"),
        MembershipEvent::MemberFailed { member, cause } => format!("DEL {member} ({cause:?})"),
        MembershipEvent::MemberLeft { member } => format!("LEFT {member}"),
        MembershipEvent::ModeChanged { suspicion } => {
            format!("suspicion now {}", if *suspicion { "on" } else { "off" })
        }
    }
}

fn describe_hydfs_event(e: &HydfsEvent) -> String {
    match e {
        HydfsEvent::OpDone { op, result: Ok(out) } => format!("op {op} done: {}", describe_output(out)),
        HydfsEvent::OpDone { op, result: Err(e) } => format!("op {op} failed: {e}"),
        HydfsEvent::WriteCommitted { name, stamp, replicas } => {
            format!("committed {name} {stamp} on {} replicas", replicas.len())
        }
        HydfsEvent::MergeCommitted { name, replicas, .. } => {
            format!("merged {name} on {} replicas", replicas.len())
        }
        HydfsEvent::CorruptionDetected { name, stamp, part } => {
            format!("corrupt part {part} of {name} {stamp}")
        }
        HydfsEvent::PartLost { name, stamp, part, why } => {
            format!("lost part {part} of {name} {stamp}: {why}")
        }
        HydfsEvent::FileDropped { name } => format!("handed off and dropped {name}"),
        HydfsEvent::FileDeleted { name, create } => format!("dropped deleted {name} (created by {create})"),
        HydfsEvent::StorageFailed { reason } => format!("storage failed: {reason}"),
        HydfsEvent::ReadData { op, offset, bytes, .. } => {
            format!("op {op} read {} bytes at {offset}", bytes.len())
        }
        HydfsEvent::Handled { what, name, from } => format!("handles {what} {name} from {from}"),
    }
}

fn describe_rainstorm_event(e: &rainstorm_core::rainstorm::RainstormEvent) -> String {
    use rainstorm_core::rainstorm::RainstormEvent as E;
    match e {
        E::JobReceived { job, spec } => format!("job {job} received: {spec}"),
        E::TaskScheduled { job, task, attempt, host, restart } => {
            format!(
                "job {job}: {task} a{attempt} scheduled on {host}{}",
                if *restart { " (moved)" } else { "" }
            )
        }
        E::TaskStarted { job, task, attempt, resumed } => {
            format!("job {job}: {task} a{attempt} started{}", if *resumed { " (resumed)" } else { "" })
        }
        E::TaskCompleted { job, task } => format!("job {job}: {task} completed"),
        E::TaskFailed { job, task, attempt, reason } => {
            format!("job {job}: {task} a{attempt} failed: {reason}")
        }
        E::RolledBack { job, attempt, checkpoint, reason, .. } => {
            format!("job {job} rolls back to checkpoint {checkpoint:?} as attempt {attempt}: {reason}")
        }
        E::Outputs { job, tuples } => {
            let shown: Vec<String> = tuples.iter().take(8).map(|t| format!("{} {}", t.id, t.value)).collect();
            let more = tuples.len().saturating_sub(8);
            format!(
                "job {job} outputs {}: {}{}",
                tuples.len(),
                shown.join("; "),
                if more > 0 { format!(" (+{more})") } else { String::new() }
            )
        }
        E::Committed { job, checkpoint, outputs } => {
            format!("job {job} committed checkpoint {checkpoint:?}: {outputs} outputs")
        }
        E::Progress { job, input_lines, stages } => {
            let stages: Vec<String> =
                stages.iter().map(|s| format!("s{} {}/{}", s.stage, s.consumed, s.emitted)).collect();
            format!("job {job} progress: {input_lines} input lines, in/out {}", stages.join(", "))
        }
        E::JobCompleted { job, outputs, restarts } => {
            format!("job {job} completed: {outputs} outputs, {restarts} restarts")
        }
        E::JobFailed { job, reason } => format!("job {job} failed: {reason}"),
        E::JobLost { job, reason } => format!("job {job} lost: {reason}"),
        E::JobTakenOver { job, term, previous, checkpoint, outputs } => format!(
            "job {job} taken over from {previous} as term {term}: resumes from checkpoint {checkpoint:?}, {outputs} outputs in"
        ),
        E::JobDeposed { job, leader, term } => format!("job {job} deposed: {leader} leads it as term {term}"),
        E::JobAbandoned { job, reason } => format!("job {job} abandoned: {reason}"),
        E::SourceSent { job, task, attempt, first, last } => {
            format!("job {job}: {task} a{attempt} sent input lines {first}..={last}")
        }
    }
}

fn describe_output(o: &rainstorm_core::hydfs::OpOutput) -> String {
    use rainstorm_core::hydfs::OpOutput;
    match o {
        OpOutput::Written { name, stamp, .. } => format!("wrote {name} {stamp}"),
        OpOutput::Downloaded { name, len, from, .. } => {
            format!("read {name}: {len} bytes from {}", from.map_or("cache".into(), |a| a.to_string()))
        }
        OpOutput::Merged { name, summary } => format!("merged {name} ({} appends)", summary.appended),
        OpOutput::Listed { name, replicas, .. } => format!("ls {name}: {} replicas", replicas.len()),
        OpOutput::MultiAppended { name, nodes } => format!("multiappend {name} on {} nodes", nodes.len()),
        OpOutput::Meta { name, meta, from } => {
            format!("meta of {name}: {} writes, {} bytes from {from}", meta.all_writes().count(), meta.len())
        }
        OpOutput::Part { name, stamp, part, bytes, from } => {
            format!("read part {part} of {name} {stamp}: {} bytes from {from}", bytes.len())
        }
        OpOutput::Deleted { name, create, replicas } => {
            format!("deleted {name} (created by {create}) on {} replicas", replicas.len())
        }
    }
}

fn describe_op(op: &rainstorm_core::hydfs::ClientOp) -> String {
    use rainstorm_core::hydfs::{ClientOp, ReadFrom};
    match op {
        ClientOp::Create { name, data } => format!("create {name} ({} bytes)", data.len()),
        ClientOp::Append { name, data } => format!("append {name} ({} bytes)", data.len()),
        ClientOp::Merge { name } => format!("merge {name}"),
        ClientOp::Ls { name } => format!("ls {name}"),
        ClientOp::MultiAppend { name, appends } => format!("multiappend {name} on {} nodes", appends.len()),
        ClientOp::Upload { name, kind, source } => format!("upload {kind:?} {name} ({} bytes)", source.len()),
        ClientOp::Download { name, from: ReadFrom::Any } => format!("get {name}"),
        ClientOp::Download { name, from: ReadFrom::Latest } => format!("get (uncached) {name}"),
        ClientOp::Download { name, from: ReadFrom::Replica(r) } => format!("getfromreplica {name} {r}"),
        ClientOp::Persist { name, kind, data } => format!("persist {kind:?} {name} ({} bytes)", data.len()),
        ClientOp::Meta { name } => format!("meta {name}"),
        ClientOp::Delete { name } => format!("delete {name}"),
        ClientOp::ReadPart { name, stamp, part, prefer: None } => {
            format!("read part {part} of {name} {stamp}")
        }
        ClientOp::ReadPart { name, stamp, part, prefer: Some(p) } => {
            format!("read part {part} of {name} {stamp} from {p} first")
        }
    }
}

/// Whether every blocked link is bridged: the nodes cut off (in either direction) fall into
/// disjoint groups whose members are cut from each other and from nobody else, each group of at
/// most `helpers + 1` nodes with at least one node outside it. A prober then asks
/// min(`helpers`, n − 2) helpers of which at most group size − 2 < `helpers` share its cut, so
/// one reaches both ends both ways and its indirect probe (PING-REQ) gets through. Accuracy is
/// promised under such cuts as under light loss; under any other partition it is not.
fn cuts_are_bridged(blocked: &BTreeSet<(Slot, Slot)>, nodes: usize, helpers: usize) -> bool {
    let mut cut_from: BTreeMap<Slot, BTreeSet<Slot>> = BTreeMap::new();
    for &(a, b) in blocked {
        cut_from.entry(a).or_default().insert(b);
        cut_from.entry(b).or_default().insert(a);
    }
    cut_from.iter().all(|(node, others)| {
        let mut group = others.clone();
        group.insert(*node);
        let closed = others.iter().all(|o| {
            let mut theirs = cut_from.get(o).cloned().unwrap_or_default();
            theirs.insert(*o);
            theirs == group
        });
        closed && group.len() <= helpers + 1 && group.len() < nodes
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rainstorm_core::Node;

    #[test]
    fn a_run_stopped_and_resumed_is_the_same_run() {
        let s = crate::named::calm_crashes_leave_every_list_within_bound(3);
        let whole = World::<Node>::new(s.clone(), RunOptions::default()).run();
        let mut world = World::<Node>::new(s.clone(), RunOptions::default());
        let mut at = 0;
        while at < s.duration_ms {
            at += 7_000;
            world.run_until(Time(at));
        }
        let stepped = world.run();
        assert_eq!(whole.trace_hash, stepped.trace_hash);
        assert_eq!(whole.stats.events, stepped.stats.events);
        assert_eq!(whole.stats.datagram_bytes, stepped.stats.datagram_bytes);
        assert_eq!(whole.stats.stream_bytes, stepped.stats.stream_bytes);
    }

    /// The named HyDFS scenario whose connections break while files move, under the given fates
    /// of the stream frames in flight when a connection breaks.
    fn with_breaks(drop: u32, duplicate: u32) -> Report {
        // Seed 2: several stream frames are in flight when its partitions begin (under seed 1
        // the workload's timing leaves next to none on the connections that break).
        let mut s = crate::named::hydfs_connections_break_while_files_move(2);
        s.net.broken_stream_drop_permille = drop;
        s.net.broken_stream_duplicate_permille = duplicate;
        World::<Node>::new(s, RunOptions::default()).run()
    }

    #[test]
    fn broken_connections_lose_or_duplicate_the_stream_frames_in_flight() {
        let none = with_breaks(0, 0);
        let lost = with_breaks(1000, 0);
        let duplicated = with_breaks(0, 1000);
        assert_eq!(none.stats.stream_frames_duplicated, 0);
        assert!(
            lost.stats.stream_frames_lost > none.stats.stream_frames_lost,
            "a partition that loses everything in flight lost nothing more ({} against {})",
            lost.stats.stream_frames_lost,
            none.stats.stream_frames_lost
        );
        assert_eq!(lost.stats.stream_frames_duplicated, 0);
        assert!(duplicated.stats.stream_frames_duplicated > 0, "nothing was duplicated");
        assert_ne!(none.trace_hash, lost.trace_hash, "the fates are in the trace");
        assert_eq!(lost.trace_hash, with_breaks(1000, 0).trace_hash, "the fates come from the seed");
        for r in [&none, &lost, &duplicated] {
            assert!(r.passed(), "{}: {:?}", r.scenario.name, r.violations);
        }
    }

    #[test]
    fn only_cuts_within_small_disjoint_groups_are_bridged() {
        let cuts = |pairs: &[(Slot, Slot)]| pairs.iter().copied().collect::<BTreeSet<_>>();
        let bridged = |pairs: &[(Slot, Slot)]| cuts_are_bridged(&cuts(pairs), 10, 3);
        assert!(bridged(&[]));
        assert!(bridged(&[(1, 2)]));
        assert!(bridged(&[(1, 2), (2, 1), (3, 4), (5, 6), (6, 5)]));
        assert!(bridged(&[(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]), "a group of four");
        assert!(!bridged(&[(1, 2), (1, 3)]), "a node cut from two others that reach each other");
        assert!(!bridged(&[(1, 2), (3, 2)]), "two nodes cut from one");
        let five: Vec<(Slot, Slot)> = (1..=5).flat_map(|a| (a + 1..=5).map(move |b| (a, b))).collect();
        assert!(!bridged(&five), "a group of five: three helpers may all share the cut");
        assert!(!cuts_are_bridged(&cuts(&[(0, 1), (1, 0), (0, 2), (2, 0)]), 3, 3), "a partition");
        assert!(!cuts_are_bridged(&cuts(&[(0, 1), (0, 2), (1, 2)]), 3, 3), "nobody outside the group");
    }

    #[test]
    fn a_run_ended_early_reports_up_to_then() {
        let s = crate::named::calm_crashes_leave_every_list_within_bound(3);
        let mut world = World::<Node>::new(s.clone(), RunOptions::default());
        world.run_until(Time(10_000));
        let early = world.stats();
        let report = world.end();
        assert_eq!(report.scenario.duration_ms, 10_000);
        assert_eq!(report.stats.events, early.events);
        assert!(early.datagrams_sent > 0 && early.stream_bytes > 0);
        assert!(report.passed(), "{:?}", report.violations);
    }
}
