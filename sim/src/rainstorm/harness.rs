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
//! * **liveness**: the job completes by the scenario's deadline (after the faults stop);
//! * with a crashed leader, the job must end with a report on the workers (they drop its
//!   tasks) and whatever reached the destination must still be a part of the reference output.

use super::input::{generated_csv, traffic_signs_slice};
use super::verdict::{judge, Finding, Observed};
use crate::check::CheckerKind;
use crate::rainstorm::programs::SimPrograms;
use crate::scenario::Slot;
use rainstorm_core::hydfs::{ClientOp, FileName, HydfsError, HydfsEvent, OpId, OpOutput, WriteKind};
use rainstorm_core::rainstorm::reference;
use rainstorm_core::rainstorm::{
    JobError, JobId, JobSpec, OperatorSpec, RainstormConfig, RainstormEvent, Tuple,
};
use rainstorm_core::Time;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

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
    pub recovered_records: usize,
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
    /// The leader stopped being a member (declared failed under loss, or crashed).
    leader_lost: bool,
    violations: Vec<(Time, CheckerKind, String)>,
    pub stats: JobStats,
}

impl RainstormHarness {
    pub fn new(w: RainstormWorkload) -> RainstormHarness {
        let content = w.content();
        let src = FileName::new("in/job.csv").expect("valid");
        let dest = FileName::new("out/job.txt").expect("valid");
        let specs = OperatorSpec::parse(&w.op1).and_then(|a| OperatorSpec::parse(&w.op2).map(|b| (a, b)));
        let reference = match &specs {
            Ok((a, b)) => {
                reference::run_with(src.as_str(), &content, a, b, &mut SimPrograms).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let stateful = w.op2.starts_with("count:") || w.op2.starts_with("program:sim/count-key@");
        let stats = JobStats {
            input_lines: rainstorm_core::rainstorm::source_lines(&content).count(),
            reference_outputs: reference.as_ref().map_or(0, Vec::len),
            ..JobStats::default()
        };
        RainstormHarness {
            w,
            content,
            src,
            dest,
            reference,
            stateful,
            phase: Phase::Store,
            job: None,
            console: Vec::new(),
            completed: false,
            dest_content: None,
            leader_lost: false,
            violations: Vec::new(),
            stats,
        }
    }

    pub fn workload(&self) -> &RainstormWorkload {
        &self.w
    }

    pub fn take_violations(&mut self) -> Vec<(Time, CheckerKind, String)> {
        std::mem::take(&mut self.violations)
    }

    /// Whether the harness still has something to do at its ticks.
    pub fn active(&self) -> bool {
        self.phase != Phase::Judged
    }

    /// `up(slot)` gives the slot's process generation if it is up and joined.
    pub fn tick(&mut self, now: Time, up: &dyn Fn(Slot) -> Option<u64>) -> Vec<Action> {
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
        vec![Action::Submit { slot, op: ClientOp::GetLatest { name: self.dest.clone() } }]
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
                    Ok(OpOutput::Content { bytes, .. }) => {
                        self.dest_content = Some(bytes.clone());
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
            RainstormEvent::Output { job, tuple } if mine(job) && slot == self.w.leader => {
                self.console.push(tuple.clone());
                self.stats.outputs += 1;
            }
            RainstormEvent::JobCompleted { job, restarts, .. } if mine(job) && slot == self.w.leader => {
                self.completed = true;
                self.stats.completed_ms = Some(now.0);
                self.stats.restarts = *restarts;
                self.phase = Phase::ReadDest { slot, generation: 0, op: None };
            }
            RainstormEvent::JobFailed { job, reason } if mine(job) => {
                self.stats.failed = Some(reason.clone());
                if self.w.leader_crash_ms.is_none() {
                    self.violations.push((
                        now,
                        CheckerKind::RainstormLiveness,
                        format!("job {job} failed: {reason}"),
                    ));
                }
            }
            RainstormEvent::JobLost { job, reason } if mine(job) && slot == self.w.leader => {
                // Like a leader crash: the job ends, and what it wrote must still be exact.
                self.stats.failed = Some(reason.clone());
                self.leader_lost = true;
            }
            RainstormEvent::JobAbandoned { job, .. } if mine(job) => self.stats.abandoned += 1,
            RainstormEvent::TaskStarted { job, recovered_records, .. } if mine(job) => {
                self.stats.tasks_started += 1;
                self.stats.recovered_records += recovered_records;
            }
            _ => {}
        }
    }

    fn judge(&mut self, now: Time) {
        self.phase = Phase::Judged;
        let reference = match &self.reference {
            Ok(r) => r,
            Err(e) => {
                let why = format!("the reference run failed: {e}");
                self.violations.push((now, CheckerKind::RainstormOutput, why));
                return;
            }
        };
        let observed = Observed {
            console: &self.console,
            dest: self.dest_content.as_deref(),
            completed: self.completed,
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

    /// The end of the run: a job that should have completed and did not is a liveness failure.
    pub fn finish(&mut self, now: Time, state: &[String]) {
        if self.phase == Phase::Judged {
            return;
        }
        let crashed = self.w.leader_crash_ms.is_some_and(|t| t <= now.0);
        if self.leader_lost && !crashed {
            // The leader ended the job itself; nothing more to require than exact output.
        } else if crashed {
            // Workers report only if the leader had placed tasks that started before it died.
            if self.stats.abandoned == 0 && self.job.is_some() && self.stats.tasks_started > 0 {
                let why = "the leader crashed but no worker reported the job ended".to_owned();
                self.violations.push((now, CheckerKind::RainstormLiveness, why));
            }
        } else {
            let why = format!(
                "the job did not complete by {} ms ({} of {} outputs, phase {:?}); at the end:\n    {}",
                now.0,
                self.console.len(),
                self.stats.reference_outputs,
                self.phase,
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
