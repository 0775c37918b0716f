//! The worker side: the task incarnations this node hosts, each with its recovery, its journal
//! and its links.
//!
//! An incarnation reads its input (sources) and the journal of the incarnation it replaces,
//! opens its own journal file with one snapshot of what it recovered, reports `Ready`, and
//! starts only on its leader's go. From then on every journal append is a
//! [`ClientOp::Persist`] (never abandoned, so never "maybe written"); a record that fails for
//! good fails the incarnation and the leader places it again.
//!
//! Invariants kept here:
//! * an incarnation writes only its own journal files (`…e<epoch>.g<generation>`), so records of
//!   a replaced incarnation can never interleave with its successor's;
//! * a link message is taken only if it names this incarnation and comes from the incarnation
//!   the current placement names; everything else is dropped (and the sender retries);
//! * nothing is processed before the journal is recovered and the leader said go;
//! * compaction: generation `g+1` (one snapshot) is created before `Continued(g+1)` ends
//!   generation `g`, and no record is appended to either meanwhile.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::config::{BatchError, PlantedBug, RainstormConfig};
use super::job::{
    Epoch, JobId, JobPlan, JournalPos, Placement, RainstormEvent, RainstormMsg, TaskPhase, STAGES,
};
use super::journal::{
    decode_all, encode, should_compact, JournalError, LinkSeq, Record, Recovered, TaskId, TupleCounts,
};
use super::operator::{OperatorSpec, StageOp};
use super::source::{SourceInput, SourceTask};
use super::task::{LinkMsg, ProgramResult, Task, TaskConfig, TaskOutput};
use super::Outbox;
use super::ProgramCall;
use crate::hydfs::ring::RingId;
use crate::hydfs::types::FileDigest;
use crate::hydfs::{ClientOp, FileName, HydfsError, OpOutput, WriteKind};
use crate::id::MemberId;
use crate::id::NodeAddr;
use crate::time::Time;

/// What a HyDFS operation of a hosted task was for.
#[derive(Clone, Debug)]
pub(super) enum Io {
    Source,
    /// Which replicas hold a journal file, and how many writes each has.
    Survey(JournalPos),
    /// The journal file read from the replica that had the most writes (at least `writes`).
    Journal {
        at: JournalPos,
        writes: usize,
    },
    Open,
    Append {
        bytes: u64,
    },
    CompactOpen,
    CompactClose,
}

enum Runner {
    Source(SourceTask),
    Op(Box<Task>),
}

impl Runner {
    fn poll_output(&mut self) -> Option<TaskOutput> {
        match self {
            Runner::Source(s) => s.poll_output(),
            Runner::Op(t) => t.poll_output(),
        }
    }

    fn snapshot(&self) -> Record {
        match self {
            Runner::Source(s) => s.snapshot(),
            Runner::Op(t) => t.snapshot(),
        }
    }

    fn poll_timeout(&self) -> Option<Time> {
        match self {
            Runner::Source(s) => s.poll_timeout(),
            Runner::Op(t) => t.poll_timeout(),
        }
    }

    fn counts(&self) -> TupleCounts {
        match self {
            Runner::Source(s) => s.counts(),
            Runner::Op(t) => t.counts(),
        }
    }
}

enum Phase {
    Recovering,
    Ready,
    Running,
    Finished(Vec<(TaskId, LinkSeq)>),
    Failed { reason: String, transient: bool },
}

/// One hosted incarnation.
pub(super) struct Hosted {
    plan: JobPlan,
    task: TaskId,
    epoch: Epoch,
    placement: Placement,
    phase: Phase,
    runner: Option<Runner>,
    /// Recovery: the input (sources) and the state folded from the old journal.
    source: Option<Vec<u8>>,
    recover: Option<JournalPos>,
    recovered: Recovered,
    first_snapshot_state: Option<BTreeMap<String, String>>,
    /// The journal this incarnation writes.
    generation: u32,
    since_snapshot: (usize, u64),
    in_flight: bool,
    compacting: bool,
    queued: VecDeque<Vec<u8>>,
    ended: BTreeMap<TaskId, LinkSeq>,
    next_status: Time,
    /// Recent status reports (nonce, when sent) and the lease the leader's answers granted.
    sent: VecDeque<(u64, Time)>,
    next_nonce: u64,
    lease_until: Time,
}

#[derive(Default)]
pub(super) struct Worker {
    hosted: BTreeMap<(JobId, TaskId), Hosted>,
    ios: BTreeMap<u64, (JobId, TaskId, Epoch, Io)>,
    /// Incarnations dropped here (stopped, or abandoned when the leader seemed gone). One is
    /// never rebuilt: its journal file may already exist and its old writes may still land, so
    /// a repeated `Assign` is answered with a failure and the leader places a new incarnation.
    dropped: BTreeSet<(JobId, TaskId, Epoch)>,
    /// Batches out at operator programs, by token.
    programs: BTreeMap<u64, (JobId, TaskId, Epoch)>,
}

impl Worker {
    pub(super) fn hosted(&self) -> impl Iterator<Item = (JobId, TaskId, Epoch)> + '_ {
        self.hosted.iter().map(|((j, t), h)| (*j, *t, h.epoch))
    }

    /// One line per hosted incarnation.
    pub(super) fn describe(&self) -> Vec<String> {
        self.hosted
            .iter()
            .map(|((job, task), h)| {
                let phase = match &h.phase {
                    Phase::Recovering => "recovering".to_owned(),
                    Phase::Ready => "ready".to_owned(),
                    Phase::Running => "running".to_owned(),
                    Phase::Finished(_) => "finished".to_owned(),
                    Phase::Failed { reason, .. } => format!("failed: {reason}"),
                };
                let progress = match &h.runner {
                    Some(Runner::Source(s)) => s.progress(),
                    Some(Runner::Op(t)) => t.progress(),
                    None => String::new(),
                };
                let ended: Vec<String> = h.ended.iter().map(|(u, l)| format!("{u}:{l}")).collect();
                format!(
                    "job {job} {task} e{}: {phase}, journal g{} (in flight {}), placement v{}, ended [{}], {progress}",
                    h.epoch,
                    h.generation,
                    h.in_flight,
                    h.placement.version,
                    ended.join(" "),
                )
            })
            .collect()
    }

    pub(super) fn owns(&self, token: u64) -> bool {
        self.ios.contains_key(&token)
    }

    pub(super) fn poll_timeout(&self) -> Option<Time> {
        self.hosted
            .values()
            .flat_map(|h| [Some(h.next_status), h.runner.as_ref().and_then(Runner::poll_timeout)])
            .flatten()
            .min()
    }

    /// An `Assign` from a leader.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn assign(
        &mut self,
        now: Time,
        me: MemberId,
        cfg: &RainstormConfig,
        plan: JobPlan,
        task: TaskId,
        epoch: Epoch,
        host: MemberId,
        placement: Placement,
        recover: Option<JournalPos>,
        out: &mut Outbox,
    ) {
        if host != me || task.stage >= STAGES || task.index >= plan.tasks {
            return;
        }
        let key = (plan.job, task);
        if self.dropped.contains(&(plan.job, task, epoch)) {
            let reason = format!("incarnation {epoch} of {task} was dropped on this worker; place it again");
            let phase = TaskPhase::Failed { reason, transient: true };
            let msg = RainstormMsg::Status {
                job: plan.job,
                task,
                epoch,
                phase,
                placement: 0,
                ended_known: 0,
                nonce: 0,
            };
            out.send(plan.leader.addr, msg);
            return;
        }
        if let Some(h) = self.hosted.get_mut(&key) {
            if h.epoch >= epoch {
                if h.epoch == epoch {
                    h.next_status = now;
                }
                return;
            }
        }
        self.forget(|j, t, _| (j, t) == key);
        let h = Hosted {
            plan,
            task,
            epoch,
            placement,
            phase: Phase::Recovering,
            runner: None,
            source: None,
            recover,
            recovered: Recovered::default(),
            first_snapshot_state: None,
            generation: 0,
            since_snapshot: (0, 0),
            in_flight: false,
            compacting: false,
            queued: VecDeque::new(),
            ended: BTreeMap::new(),
            next_status: now,
            sent: VecDeque::new(),
            next_nonce: 0,
            lease_until: Time::ZERO,
        };
        let first = if task.stage == 0 {
            Some((ClientOp::GetLatest { name: h.plan.src.clone() }, Io::Source))
        } else {
            None
        };
        self.hosted.insert(key, h);
        match first {
            Some((op, io)) => self.io(key, epoch, op, io, out),
            None => self.read_journal_or_open(now, key, cfg, out),
        }
        self.pump(now, key, cfg, out);
    }

    pub(super) fn stop(&mut self, job: JobId, task: Option<(TaskId, Epoch)>) {
        self.forget(|j, t, e| j == job && task.is_none_or(|stopped| stopped == (t, e)));
    }

    /// Drops every task of `job` (its leader is gone).
    pub(super) fn abandon(&mut self, job: JobId) -> bool {
        self.forget(|j, _, _| j == job) > 0
    }

    /// Drops the hosted incarnations `pick` names, with their pending file operations (whose
    /// answers must never reach a later incarnation of the same task), and remembers them.
    fn forget(&mut self, pick: impl Fn(JobId, TaskId, Epoch) -> bool) -> usize {
        let gone: Vec<(JobId, TaskId, Epoch)> = self
            .hosted
            .iter()
            .map(|((j, t), h)| (*j, *t, h.epoch))
            .filter(|(j, t, e)| pick(*j, *t, *e))
            .collect();
        for (j, t, e) in &gone {
            self.hosted.remove(&(*j, *t));
            self.dropped.insert((*j, *t, *e));
        }
        self.ios.retain(|_, (j, t, e, _)| !gone.contains(&(*j, *t, *e)));
        gone.len()
    }

    pub(super) fn leaders(&self) -> BTreeMap<JobId, MemberId> {
        self.hosted.iter().map(|((j, _), h)| (*j, h.plan.leader)).collect()
    }

    pub(super) fn clear(&mut self) {
        self.forget(|_, _, _| true);
    }

    /// A leader's `Control` (its fields, as they arrived).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn control(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        (job, task, epoch): (JobId, TaskId, Epoch),
        go: bool,
        placement: Option<Placement>,
        ended: Vec<(TaskId, LinkSeq)>,
        nonce: u64,
        out: &mut Outbox,
    ) {
        let key = (job, task);
        let Some(h) = self.hosted.get_mut(&key) else { return };
        if h.epoch != epoch {
            return;
        }
        if let Some((_, sent)) = h.sent.iter().find(|(n, _)| *n == nonce && nonce != 0) {
            h.lease_until = h.lease_until.max(*sent + cfg.lease);
        }
        if let Some(p) = placement {
            if p.version > h.placement.version {
                h.placement = p;
                h.next_status = now;
            }
        }
        for (from, last) in ended {
            if h.ended.insert(from, last).is_none() {
                h.next_status = now;
                if let Some(Runner::Op(t)) = &mut h.runner {
                    t.upstream_ended(now, from, last);
                }
            }
        }
        if go && matches!(h.phase, Phase::Ready) {
            if let Err(reason) = h.start(now, cfg) {
                h.phase = Phase::Failed { reason, transient: false };
            } else {
                out.event(RainstormEvent::TaskStarted {
                    job,
                    task,
                    epoch,
                    recovered_records: h.recovered.records,
                });
            }
            h.next_status = now;
        }
        self.pump(now, key, cfg, out);
    }

    /// An operator program's answer to a [`ProgramCall`].
    pub(super) fn on_program(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        token: u64,
        result: Result<ProgramResult, String>,
        out: &mut Outbox,
    ) {
        let Some((job, task, epoch)) = self.programs.remove(&token) else { return };
        let key = (job, task);
        let Some(h) = self.hosted.get_mut(&key) else { return };
        if h.epoch != epoch {
            return;
        }
        if let Some(Runner::Op(t)) = &mut h.runner {
            t.on_applied(now, result);
        }
        self.pump(now, key, cfg, out);
    }

    /// A link message for one of the hosted incarnations.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn link(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        job: JobId,
        from: (TaskId, Epoch),
        to: (TaskId, Epoch),
        msg: LinkMsg,
        out: &mut Outbox,
    ) -> Result<(), BatchError> {
        let key = (job, to.0);
        let Some(h) = self.hosted.get(&key) else { return Ok(()) };
        let placed = h.placement.tasks.get(&from.0).map(|p| p.1) == Some(from.1);
        if h.epoch != to.1 || !placed || h.runner.is_none() {
            return Ok(());
        }
        if let LinkMsg::Batch { tuples, .. } = &msg {
            if let Err(e) = cfg.check_batch(tuples.len()) {
                self.fail(key, format!("refused a batch from {}: {e}", from.0), false);
                self.pump(now, key, cfg, out);
                return Err(e);
            }
        }
        let Some(h) = self.hosted.get_mut(&key) else { return Ok(()) };
        match &mut h.runner {
            Some(Runner::Op(t)) => t.on_message(now, from.0, msg),
            Some(Runner::Source(s)) => s.on_message(now, from.0, msg),
            None => return Ok(()),
        }
        self.pump(now, key, cfg, out);
        Ok(())
    }

    pub(super) fn handle_timeout(&mut self, now: Time, cfg: &RainstormConfig, out: &mut Outbox) {
        let keys: Vec<(JobId, TaskId)> = self.hosted.keys().copied().collect();
        for key in keys {
            let Some(h) = self.hosted.get_mut(&key) else { continue };
            if let Some(r) = &mut h.runner {
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    match r {
                        Runner::Op(t) => t.handle_timeout(now),
                        Runner::Source(s) => s.handle_timeout(now),
                    }
                }
            }
            self.pump(now, key, cfg, out);
        }
    }

    /// A HyDFS operation of a hosted task finished.
    pub(super) fn on_hydfs(
        &mut self,
        now: Time,
        cfg: &RainstormConfig,
        token: u64,
        result: Result<OpOutput, HydfsError>,
        out: &mut Outbox,
    ) {
        let Some((job, task, epoch, io)) = self.ios.remove(&token) else { return };
        let key = (job, task);
        let Some(h) = self.hosted.get_mut(&key) else { return };
        if h.epoch != epoch {
            return;
        }
        let step = match (io, result) {
            (Io::Source, Ok(OpOutput::Content { bytes, .. })) => {
                h.source = Some(bytes);
                Step::ReadJournal
            }
            (Io::Survey(at), Ok(OpOutput::Listed { replicas, .. })) => match most_complete(&replicas) {
                Ok((replica, writes)) => Step::ReadFrom { at, replica, writes },
                Err(why) => Step::Fail(format!("journal {}: {why}", h.journal_file(at))),
            },
            // The replica lost writes since it was surveyed (its copy was replaced): survey again.
            (Io::Journal { at, writes: expected }, Ok(OpOutput::Content { writes, .. }))
                if writes.len() < expected =>
            {
                Step::Read(at)
            }
            (Io::Journal { at, .. }, Ok(OpOutput::Content { bytes, .. })) => match h.fold(cfg, &bytes) {
                Ok(Some(next)) => Step::Read(JournalPos { epoch: at.epoch, generation: next }),
                Ok(None) => Step::Open,
                Err(e) => Step::Broken(format!("journal {} is unreadable: {e}", h.journal_file(at))),
            },
            (Io::Open, Ok(_)) => {
                h.phase = Phase::Ready;
                h.next_status = now;
                Step::None
            }
            (Io::Append { bytes }, Ok(_)) => {
                h.in_flight = false;
                h.since_snapshot.0 += 1;
                h.since_snapshot.1 += bytes;
                if should_compact(h.since_snapshot.0, h.since_snapshot.1, cfg.limits()) {
                    h.compacting = true;
                }
                match &mut h.runner {
                    Some(Runner::Op(t)) => t.on_appended(now, Ok(())),
                    Some(Runner::Source(s)) => s.on_appended(now, Ok(())),
                    None => {}
                }
                Step::None
            }
            (Io::CompactOpen, Ok(_)) => Step::Close,
            (Io::CompactClose, Ok(_)) => {
                h.generation += 1;
                h.since_snapshot = (0, 0);
                h.compacting = false;
                h.in_flight = false;
                h.next_status = now;
                Step::None
            }
            (io, Ok(other)) => Step::Broken(format!("unexpected answer to {io:?}: {other:?}")),
            (io, Err(e)) => Step::Fail(match io {
                Io::Source => format!("cannot read the input `{}`: {e}", h.plan.src),
                Io::Survey(at) | Io::Journal { at, .. } => {
                    format!("cannot read journal {}: {e}", h.journal_file(at))
                }
                _ => format!("cannot write its journal: {e}"),
            }),
        };
        match step {
            Step::None => {}
            Step::ReadJournal => self.read_journal_or_open(now, key, cfg, out),
            Step::Read(at) => self.read(key, at, out),
            Step::ReadFrom { at, replica, writes } => {
                let name = self.hosted.get(&key).map(|h| h.journal_file(at));
                if let Some(name) = name {
                    let op = ClientOp::GetFromReplica { name, replica };
                    self.io(key, epoch, op, Io::Journal { at, writes }, out);
                }
            }
            Step::Open => self.open(key, cfg, out),
            Step::Close => {
                let h = self.hosted.get_mut(&key).expect("present");
                let at = JournalPos { epoch: h.epoch, generation: h.generation };
                let file = h.journal_file(at);
                match encode(&Record::Continued { generation: h.generation + 1 }) {
                    Ok(data) => {
                        self.io(key, epoch, persist(file, WriteKind::Append, data), Io::CompactClose, out)
                    }
                    Err(e) => self.fail(key, format!("cannot journal: {e}"), false),
                }
            }
            Step::Fail(reason) => self.fail(key, reason, true),
            Step::Broken(reason) => self.fail(key, reason, false),
        }
        self.pump(now, key, cfg, out);
    }

    fn fail(&mut self, key: (JobId, TaskId), reason: String, transient: bool) {
        if let Some(h) = self.hosted.get_mut(&key) {
            h.phase = Phase::Failed { reason, transient };
            h.runner = None;
            h.next_status = Time(0);
        }
    }

    fn io(&mut self, key: (JobId, TaskId), epoch: Epoch, op: ClientOp, io: Io, out: &mut Outbox) {
        let token = out.hydfs(op);
        self.ios.insert(token, (key.0, key.1, epoch, io));
    }

    fn read_journal_or_open(
        &mut self,
        _now: Time,
        key: (JobId, TaskId),
        cfg: &RainstormConfig,
        out: &mut Outbox,
    ) {
        let Some(h) = self.hosted.get(&key) else { return };
        match h.recover {
            Some(at) => self.read(key, at, out),
            None => self.open(key, cfg, out),
        }
    }

    /// Reads one journal file: first asks every replica how many writes it holds, then reads
    /// the fullest copy. An acknowledged append is on every replica of its writer's view, but a
    /// replica that joined since (or was cut off when it was made) may still be catching up, so
    /// any single replica's copy could miss records the predecessor already acted on.
    fn read(&mut self, key: (JobId, TaskId), at: JournalPos, out: &mut Outbox) {
        let Some(h) = self.hosted.get(&key) else { return };
        let epoch = h.epoch;
        let name = h.journal_file(at);
        self.io(key, epoch, ClientOp::Ls { name }, Io::Survey(at), out);
    }

    /// Opens this incarnation's journal with a snapshot of what it recovered.
    fn open(&mut self, key: (JobId, TaskId), cfg: &RainstormConfig, out: &mut Outbox) {
        let Some(h) = self.hosted.get_mut(&key) else { return };
        if cfg.bug(PlantedBug::StateFromOldSnapshot) {
            if let Some(state) = h.first_snapshot_state.take() {
                h.recovered.state = state;
            }
        }
        if cfg.bug(PlantedBug::ForgetsSeenIds) {
            h.recovered.delivered.clear();
        }
        h.recovered.continued = None;
        let epoch = h.epoch;
        let file = h.journal_file(JournalPos { epoch, generation: 0 });
        match encode(&Record::Snapshot(h.recovered.snapshot())) {
            Ok(data) => self.io(key, epoch, persist(file, WriteKind::Create, data), Io::Open, out),
            Err(e) => self.fail(key, format!("cannot journal its recovered state: {e}"), false),
        }
    }

    /// Drains a hosted incarnation's runner: link messages out, journal appends, compaction,
    /// and its status to the leader when due.
    fn pump(&mut self, now: Time, key: (JobId, TaskId), cfg: &RainstormConfig, out: &mut Outbox) {
        let mut appends = Vec::new();
        {
            let Some(h) = self.hosted.get_mut(&key) else { return };
            let leased = now < h.lease_until;
            while let Some(o) = h.runner.as_mut().and_then(Runner::poll_output) {
                match o {
                    // Without a lease nothing leaves: senders resend and receivers answer
                    // duplicates, so a dropped message costs a retry, never an output.
                    TaskOutput::Send { .. } if !leased => {}
                    TaskOutput::Send { to, msg } => {
                        if let Some((member, e)) = h.placement.tasks.get(&to) {
                            out.send(
                                member.addr,
                                RainstormMsg::Link { job: key.0, from: (h.task, h.epoch), to: (to, *e), msg },
                            );
                        }
                    }
                    TaskOutput::Append { bytes } => h.queued.push_back(bytes),
                    TaskOutput::Finished { last } => {
                        h.phase = Phase::Finished(last.into_iter().collect());
                        h.next_status = now;
                    }
                    TaskOutput::Failed { reason } => {
                        h.phase = Phase::Failed { reason, transient: false };
                        h.next_status = now;
                    }
                    TaskOutput::SourceSent { first, last } => {
                        out.event(RainstormEvent::SourceSent {
                            job: key.0,
                            task: h.task,
                            epoch: h.epoch,
                            first,
                            last,
                        });
                    }
                    TaskOutput::Apply { program, batch } => {
                        let call = ProgramCall {
                            token: 0,
                            job: key.0,
                            task: h.task,
                            epoch: h.epoch,
                            program,
                            header: h.plan.header.clone(),
                            batch,
                        };
                        let token = out.program(call);
                        self.programs.insert(token, (key.0, key.1, h.epoch));
                    }
                }
            }
            if !h.in_flight {
                if h.compacting {
                    if let Some(r) = &h.runner {
                        let at = JournalPos { epoch: h.epoch, generation: h.generation + 1 };
                        match encode(&r.snapshot()) {
                            Ok(data) => appends.push((
                                persist(h.journal_file(at), WriteKind::Create, data),
                                Io::CompactOpen,
                            )),
                            Err(e) => {
                                let reason = format!("cannot compact its journal: {e}");
                                h.phase = Phase::Failed { reason, transient: false };
                            }
                        }
                        h.in_flight = true;
                    }
                } else if let Some(bytes) = h.queued.pop_front() {
                    let at = JournalPos { epoch: h.epoch, generation: h.generation };
                    let len = bytes.len() as u64;
                    appends.push((
                        persist(h.journal_file(at), WriteKind::Append, bytes),
                        Io::Append { bytes: len },
                    ));
                    h.in_flight = true;
                }
            }
            if h.next_status <= now {
                h.next_status = now + cfg.status_interval;
                h.next_nonce += 1;
                h.sent.push_back((h.next_nonce, now));
                if h.sent.len() > 16 {
                    h.sent.pop_front();
                }
                let phase = h.phase();
                let msg = RainstormMsg::Status {
                    job: key.0,
                    task: h.task,
                    epoch: h.epoch,
                    phase,
                    placement: h.placement.version,
                    ended_known: h.ended.len() as u32,
                    nonce: h.next_nonce,
                };
                out.send(h.plan.leader.addr, msg);
            }
        }
        let epoch = self.hosted.get(&key).map_or(0, |h| h.epoch);
        for (op, io) in appends {
            self.io(key, epoch, op, io, out);
        }
    }
}

enum Step {
    None,
    ReadJournal,
    Read(JournalPos),
    ReadFrom {
        at: JournalPos,
        replica: NodeAddr,
        writes: usize,
    },
    Open,
    Close,
    /// A file operation failed: another incarnation may do better.
    Fail(String),
    /// The journal or an answer makes no sense: retrying will not help.
    Broken(String),
}

/// The replica whose copy has the most writes (a journal has one writer, so the fullest copy
/// holds every other), and that count. A copy still fetching some of its writes' bytes cannot
/// serve them yet: if the fullest copies are all such, the read waits for the repair (the
/// task fails for now and is placed again), since a complete copy with fewer writes may miss
/// a record its writer already acted on.
fn most_complete(replicas: &[(NodeAddr, RingId, Option<FileDigest>)]) -> Result<(NodeAddr, usize), String> {
    let held =
        replicas.iter().filter_map(|(addr, _, d)| d.filter(|d| d.create.is_some()).map(|d| (*addr, d)));
    let count = |d: &FileDigest| d.merged as usize + d.pending as usize;
    // `max_by_key` keeps the last of equals; reverse so ties go to the first (ring order).
    let best = held.rev().max_by_key(|(_, d)| (count(d), d.incomplete == 0));
    match best {
        None => Err("no replica holds it".to_owned()),
        Some((addr, d)) if d.incomplete == 0 => Ok((addr, count(&d))),
        Some((addr, d)) => {
            Err(format!("its fullest copy ({} writes, on {addr}) is still being repaired", count(&d)))
        }
    }
}

fn persist(name: FileName, kind: WriteKind, data: Vec<u8>) -> ClientOp {
    ClientOp::Persist { name, kind, data }
}

impl Hosted {
    fn journal_file(&self, at: JournalPos) -> FileName {
        self.plan.journal(self.task, at).unwrap_or_else(|_| self.plan.dest.clone())
    }

    fn phase(&self) -> TaskPhase {
        let counts = self.runner.as_ref().map_or_else(TupleCounts::default, Runner::counts);
        match &self.phase {
            Phase::Recovering => TaskPhase::Recovering,
            Phase::Ready => TaskPhase::Ready,
            Phase::Running => TaskPhase::Running { generation: self.generation, counts },
            Phase::Finished(last) => {
                TaskPhase::Finished { generation: self.generation, last: last.clone(), counts }
            }
            Phase::Failed { reason, transient } => {
                TaskPhase::Failed { reason: reason.clone(), transient: *transient }
            }
        }
    }

    /// Folds one journal file into the recovered state; `Some(g)` if it continues in `g`.
    fn fold(&mut self, cfg: &RainstormConfig, bytes: &[u8]) -> Result<Option<u32>, JournalError> {
        let records = decode_all(bytes)?;
        self.recovered.continued = None;
        for record in &records {
            if let Record::Snapshot(s) = record {
                if cfg.bug(PlantedBug::StateFromOldSnapshot) && self.first_snapshot_state.is_none() {
                    self.first_snapshot_state = Some(s.state.clone());
                }
            }
            match self.recovered.apply(record) {
                Ok(()) => {}
                // A record appended again after an answer was lost: the same batch, processed
                // from the same state, so the first copy stands.
                Err(JournalError::Duplicate { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.recovered.continued)
    }

    fn operator(&self, stage: u8) -> Result<StageOp, String> {
        let text = &self.plan.ops[(stage - 1) as usize];
        OperatorSpec::parse(text)
            .and_then(|s| s.build(self.plan.header.as_deref()))
            .map_err(|e| format!("operator {stage} `{text}`: {e}"))
    }

    /// Builds the runner once the leader said go.
    fn start(&mut self, now: Time, cfg: &RainstormConfig) -> Result<(), String> {
        let tcfg = TaskConfig { window: cfg.window, retry: cfg.retry, planted: cfg.planted };
        let stage = self.task.stage;
        let downstream = self.plan.stage(stage + 1);
        let recovered = std::mem::take(&mut self.recovered);
        let records = recovered.records;
        let mut runner = if stage == 0 {
            let next = self.operator(1)?;
            let content = self.source.take().unwrap_or_default();
            let input = SourceInput {
                file: self.plan.src.as_str(),
                content: &content,
                batch_lines: self.plan.batch_lines,
                tasks: self.plan.tasks,
            };
            Runner::Source(SourceTask::new(self.task, &tcfg, input, &next, &downstream, &recovered)?)
        } else {
            let op = self.operator(stage)?;
            let next = if stage + 1 < STAGES { Some(self.operator(stage + 1)?) } else { None };
            let upstream = self.plan.stage(stage - 1);
            let mut t = Task::new(self.task, &tcfg, op, next, upstream, downstream, recovered);
            for (from, last) in &self.ended {
                t.upstream_ended(now, *from, *last);
            }
            Runner::Op(Box::new(t))
        };
        if let Runner::Source(s) = &mut runner {
            s.handle_timeout(now);
        }
        if let Runner::Op(t) = &mut runner {
            t.handle_timeout(now);
        }
        self.recovered.records = records;
        self.runner = Some(runner);
        self.phase = Phase::Running;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hydfs::types::Stamp;

    fn copy(port: u16, pending: u32, incomplete: u32) -> (NodeAddr, RingId, Option<FileDigest>) {
        let addr: NodeAddr = format!("10.0.0.1:{port}").parse().expect("address");
        let client = MemberId { addr, join_time: 1 };
        let create = Some(Stamp { ts: 1, client, seq: 1 });
        let digest = FileDigest { create, generation: 0, merged: 0, pending, incomplete, hash: 0 };
        (addr, RingId::of_node(addr), Some(digest))
    }

    #[test]
    fn the_journal_is_read_from_the_fullest_complete_copy_or_not_yet() {
        let port = |r: Result<(NodeAddr, usize), String>| r.map(|(a, n)| (a.port(), n));
        assert_eq!(port(most_complete(&[copy(1, 1, 0), copy(2, 3, 0), copy(3, 2, 0)])), Ok((2, 3)));
        assert_eq!(port(most_complete(&[copy(1, 2, 0), copy(2, 2, 0)])), Ok((1, 2)), "ties: ring order");
        // A restarted replica that knows the writes but still fetches their bytes loses a tie...
        assert_eq!(port(most_complete(&[copy(1, 1, 2), copy(2, 1, 0)])), Ok((2, 1)));
        // ...and if it is the only one with the most writes, the read waits.
        assert!(most_complete(&[copy(1, 3, 1), copy(2, 2, 0)]).is_err());
        assert!(most_complete(&[(copy(1, 0, 0).0, copy(1, 0, 0).1, None)]).is_err());
    }
}
