//! The RainStorm commands' local side: resolving operators (built-ins, local programs uploaded
//! to HyDFS, programs already there), starting a job, streaming its results, and the record of
//! the jobs this node led (`jobs`, `job <id>`), with the counts the leader last reported.
//!
//! Invariants kept here:
//! * a local program is stored in HyDFS under a name derived from its hash
//!   (`ops/<file name>-<first 16 hex digits>`), so a changed program never collides with the old
//!   one and every worker runs exactly the bytes the command named;
//! * the command's event stream is registered before the job starts and is unbounded, so the
//!   console sees every output exactly once, in the order the leader appended them;
//! * the command ends with the job: completed (ok), failed or lost (error).

use crate::driver::{CommandReply, Input, NodeHandle};
use rainstorm_core::command::JobCommand;
use rainstorm_core::hydfs::{ClientOp, FileName, HydfsError, OpOutput, Stamp, WriteKind};
use rainstorm_core::rainstorm::directory::{JobState, KnownJob};
use rainstorm_core::rainstorm::{
    dest_line, lines_read, JobId, JobSpec, OperatorSpec, ProgramSpec, RainstormEvent, StageCounts,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// What a streamed job's note says when the job rolls back: `job <id>: <reason>; resuming from
/// <checkpoint>`.
pub const ROLLBACK_NOTE: &str = "; resuming from ";

/// What `follow`'s note says when another node leads the job: `job <id>: now led by <addr>
/// (term <t>)`.
pub const NEW_LEADER_NOTE: &str = ": now led by ";

/// The job id of a `job <id> started; ...` note, the first a job's command streams.
pub fn started_job(note: &str) -> Option<&str> {
    let (id, rest) = note.strip_prefix("job ")?.split_once(' ')?;
    rest.starts_with("started").then_some(id)
}

/// Where a streamed line goes: results to the console's stdout, notes (restarts, failures) to
/// where the user reads messages, counts to a progress line (if the user has one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Streamed {
    Output(String),
    Note(String),
    Progress(JobProgress),
}

/// A job's counts as its leader last reported them: input lines read of the input's total,
/// and per stage the tuples its tasks took in and put out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobProgress {
    /// Input lines the sources have read and sent.
    pub lines_read: u64,
    /// Lines in the input (0 while unknown).
    pub input_lines: u64,
    /// In stage order.
    pub stages: Vec<StageCounts>,
}

impl JobProgress {
    pub fn new(input_lines: u64, stages: &[StageCounts]) -> JobProgress {
        JobProgress { lines_read: lines_read(stages), input_lines, stages: stages.to_vec() }
    }

    /// `<read>/<total>`, the total `?` while unknown.
    pub fn lines(&self) -> String {
        match self.input_lines {
            0 => format!("{}/?", self.lines_read),
            total => format!("{}/{total}", self.lines_read),
        }
    }
}

/// Numbers the local copies of HyDFS programs being hashed, so that concurrent ones differ.
static NEXT_FETCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs a RainStorm command, sending results and notes to `out` as they come.
pub async fn run(
    handle: &NodeHandle,
    cmd: JobCommand,
    cwd: &Path,
    out: mpsc::UnboundedSender<Streamed>,
) -> CommandReply {
    match cmd {
        JobCommand::Run { op1, op2, src, dest, tasks, rate } => {
            let ops = async {
                let a = resolve(handle, &op1, cwd, &out).await.map_err(|e| format!("op1: {e}"))?;
                let b = resolve(handle, &op2, cwd, &out).await.map_err(|e| format!("op2: {e}"))?;
                Ok::<_, String>((a, b))
            };
            match ops.await {
                Ok((op1, op2)) => run_job(handle, JobSpec { op1, op2, src, dest, tasks, rate }, out).await,
                Err(e) => CommandReply { ok: false, output: format!("{e}\n") },
            }
        }
        JobCommand::List => ask(handle, None).await,
        JobCommand::Show { id } => ask(handle, Some(id)).await,
        JobCommand::Follow { id } => follow(handle, &id, out).await,
    }
}

/// How often `follow` looks for new outputs and for a change of leader (more seldom as the
/// destination's list of writes grows: each look reads the whole list).
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// How long `follow` waits to hear of a job it does not know: a leader announces a new job to
/// every member at once, and again every `status_interval`.
const FOLLOW_FIND: std::time::Duration = std::time::Duration::from_secs(10);

/// How long `follow` keeps reading after the job ended, while the destination's replica it
/// reads from shows fewer outputs than the leader committed (it lags).
const FOLLOW_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(30);

/// How often `follow` sends the job's counts even if they did not change (a write to a client
/// that went away ends the command).
const FOLLOW_PROGRESS: std::time::Duration = std::time::Duration::from_secs(1);

/// What this node knows of the job `id` names.
async fn known_job(handle: &NodeHandle, id: &str) -> Option<KnownJob> {
    let (reply, rx) = oneshot::channel();
    handle.send(Input::KnownJob { id: id.to_owned(), reply }).await.ok()?;
    rx.await.ok().flatten()
}

/// `follow <id>`: the job's outputs, from its first, as they reach its destination file, until
/// the job ends.
///
/// It reads the destination, not a leader: whichever node leads the job (a successor after a
/// takeover included), every output it commits is in that one file, once. Each poll lists the
/// file's writes as one replica holds them ([`ClientOp::Meta`]) and prints the lines of each
/// write not printed yet (writes are told apart by their stamps, so a merge that reorders them
/// repeats nothing). It follows only the file the job created (the member the job's id names
/// made it): a file of that name made by anyone else ends it with an error. Once the job has
/// ended, it stops when the file as read holds as many outputs as the leader announced and
/// every one of them was printed (or after [`FOLLOW_CATCH_UP`]). What it prints is what the
/// replicas held as it read: an append of a leader that died before it was acknowledged can
/// show here and then be cut from the file by the successor's seal; the final line gives both
/// counts.
async fn follow(handle: &NodeHandle, id: &str, out: mpsc::UnboundedSender<Streamed>) -> CommandReply {
    // A job just submitted to another node may not have been announced here yet.
    let looked = Instant::now();
    let first = loop {
        if let Some(known) = known_job(handle, id).await {
            break known;
        }
        if looked.elapsed() >= FOLLOW_FIND {
            let output =
                format!("no job {id} known to this node after {} s; see `jobs`\n", FOLLOW_FIND.as_secs());
            return CommandReply { ok: false, output };
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    };
    let job = first.notice.job;
    let dest = first.notice.dest.clone();
    let _ = out.send(Streamed::Note(format!(
        "following job {id}: its outputs from the first as they reach {dest}; led by {} (term {})",
        first.notice.leader.addr, first.notice.term
    )));
    let mut leader = (first.notice.leader, first.notice.term);
    let mut gone = first.leader_gone.is_some();
    let mut reader = DestReader { job, dest: dest.clone(), create: None, shown: Default::default() };
    let mut shown: u64 = 0;
    let mut ended_at: Option<Instant> = None;
    let mut counts = (u64::MAX, u64::MAX, Instant::now());
    loop {
        // The job's state before the read: a read after the job ended has all it committed.
        let Some(known) = known_job(handle, id).await else {
            return CommandReply { ok: false, output: "node is stopping\n".into() };
        };
        let n = &known.notice;
        if (n.leader, n.term) != leader {
            let _ = out.send(Streamed::Note(format!(
                "job {id}{NEW_LEADER_NOTE}{} (term {})",
                n.leader.addr, n.term
            )));
            leader = (n.leader, n.term);
        } else if known.leader_gone.is_some() && !gone {
            let note = format!("job {id}: its leader {} is gone; a successor takes it over", n.leader.addr);
            let _ = out.send(Streamed::Note(note));
        }
        gone = known.leader_gone.is_some();
        if (n.lines_read, n.input_lines) != (counts.0, counts.1) || counts.2.elapsed() >= FOLLOW_PROGRESS {
            let progress =
                JobProgress { lines_read: n.lines_read, input_lines: n.input_lines, stages: Vec::new() };
            let _ = out.send(Streamed::Progress(progress));
            counts = (n.lines_read, n.input_lines, Instant::now());
        }
        let ended = match &n.state {
            JobState::Running => None,
            JobState::Completed => Some("completed".to_owned()),
            JobState::Failed(why) => Some(format!("failed: {why}")),
            JobState::Ended => Some("ended under an earlier leader".to_owned()),
        };
        let read = reader.read(handle).await;
        shown += read.lines.len() as u64;
        for line in read.lines {
            let _ = out.send(Streamed::Output(line));
        }
        let caught_up = match &read.error {
            None => read.complete && read.in_file >= n.outputs,
            // The job's files are gone: nothing more to read.
            Some(DestError::Hydfs(HydfsError::NotFound(_))) => n.state != JobState::Completed,
            Some(_) => false,
        };
        match &read.error {
            Some(DestError::NotTheJobs(why)) => {
                return CommandReply { ok: false, output: format!("job {id}: {why}; stopped following it\n") }
            }
            // Not created yet (a job just started), or no replica answering for now.
            Some(e) => debug!(job = id, error = %e, "follow: reading the destination failed; retrying"),
            None => {}
        }
        if let Some(how) = ended {
            let since = *ended_at.get_or_insert_with(Instant::now);
            if caught_up || since.elapsed() >= FOLLOW_CATCH_UP {
                let output = format!(
                    "job {id} {how}, led last by {} (term {}); {shown} outputs shown, {} committed to {dest}\n",
                    n.leader.addr, n.term, n.outputs
                );
                return CommandReply { ok: n.state == JobState::Completed && caught_up, output };
            }
        }
        // About 20 µs per listed write, at least the base poll: a long job's list is read less often.
        let pause = FOLLOW_POLL.max(std::time::Duration::from_micros(20 * read.writes));
        tokio::time::sleep(pause).await;
    }
}

/// Why `follow` could not read the destination this time.
#[derive(Debug, thiserror::Error)]
enum DestError {
    #[error(transparent)]
    Hydfs(#[from] HydfsError),
    /// The file is not the one the job made, or was made again.
    #[error("{0}")]
    NotTheJobs(String),
}

/// What one look at the destination gave.
struct DestRead {
    /// The lines of the writes not shown before, in file order.
    lines: Vec<String>,
    /// Writes the replica listed.
    writes: u64,
    /// Outputs (lines) in the file as the replica listed it.
    in_file: u64,
    /// Every listed write has now been shown.
    complete: bool,
    error: Option<DestError>,
}

/// Reads a job's destination write by write, each once.
struct DestReader {
    job: JobId,
    dest: FileName,
    /// The file's create, once seen: the file followed.
    create: Option<Stamp>,
    /// Writes whose lines were returned.
    shown: std::collections::BTreeSet<Stamp>,
}

impl DestReader {
    /// The lines of every write of the destination (as one replica lists them) not returned
    /// before, in file order. A write is returned whole or not at all: one whose part cannot
    /// be read now ends this look, keeping what came before it.
    async fn read(&mut self, handle: &NodeHandle) -> DestRead {
        let mut read = DestRead { lines: Vec::new(), writes: 0, in_file: 0, complete: false, error: None };
        let meta = match submit(handle, ClientOp::Meta { name: self.dest.clone() }).await {
            Ok(OpOutput::Meta { meta, from, .. }) => (meta, from),
            Ok(_) => {
                read.error =
                    Some(HydfsError::Storage("a metadata read answered with something else".into()).into());
                return read;
            }
            Err(e) => {
                read.error = Some(e.into());
                return read;
            }
        };
        let (meta, from) = meta;
        let create = meta.create.as_ref().map(|c| c.stamp);
        match (create, self.create) {
            (Some(c), _) if JobId::new(c.client, self.job.n) != self.job => {
                let why = format!("{} was created by {}, not by the job", self.dest, c.client.addr);
                read.error = Some(DestError::NotTheJobs(why));
                return read;
            }
            (Some(c), Some(seen)) if c != seen => {
                let why = format!("{} was deleted and created again", self.dest);
                read.error = Some(DestError::NotTheJobs(why));
                return read;
            }
            (c, _) => self.create = self.create.or(c),
        }
        read.writes = meta.all_writes().count() as u64;
        read.in_file = meta.all_writes().flat_map(|w| &w.parts).map(|p| u64::from(p.newlines)).sum();
        for write in meta.all_writes() {
            if self.shown.contains(&write.stamp) {
                continue;
            }
            let mut bytes = Vec::new();
            for part in 0..write.parts.len() as u32 {
                let op = ClientOp::ReadPart {
                    name: self.dest.clone(),
                    stamp: write.stamp,
                    part,
                    prefer: Some(from),
                };
                match submit(handle, op).await {
                    Ok(OpOutput::Part { bytes: b, .. }) => bytes.extend_from_slice(&b),
                    Ok(_) => {
                        let e = HydfsError::Storage("a part read answered with something else".into());
                        read.error = Some(e.into());
                        return read;
                    }
                    Err(e) => {
                        read.error = Some(e.into());
                        return read;
                    }
                }
            }
            self.shown.insert(write.stamp);
            read.lines.extend(String::from_utf8_lossy(&bytes).lines().map(str::to_owned));
        }
        read.complete = true;
        read
    }
}

async fn ask(handle: &NodeHandle, id: Option<String>) -> CommandReply {
    let (reply, rx) = oneshot::channel();
    if handle.send(Input::Jobs { id, reply }).await.is_err() {
        return CommandReply { ok: false, output: "node is stopping\n".into() };
    }
    rx.await.unwrap_or(CommandReply { ok: false, output: "node is stopping\n".into() })
}

/// An operator word as the command gave it: a built-in or program spec, `hydfs:<name> [args]`,
/// or a local executable with its arguments.
async fn resolve(
    handle: &NodeHandle,
    word: &str,
    cwd: &Path,
    out: &mpsc::UnboundedSender<Streamed>,
) -> Result<OperatorSpec, String> {
    let builtin_error = match OperatorSpec::parse(word) {
        Ok(spec) => return Ok(spec),
        Err(e) => e,
    };
    let words = shlex::split(word).ok_or("unbalanced quotes")?;
    let Some((program, args)) = words.split_first() else { return Err("empty operator".into()) };
    if let Some(name) = program.strip_prefix("hydfs:") {
        let name = FileName::new(name).map_err(|e| format!("bad HyDFS name `{name}`: {e}"))?;
        // Hashed from a local copy fetched chunk by chunk (bounded memory), then removed.
        let n = NEXT_FETCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = handle.data_dir.join(format!(".program-{}-{n}.tmp", std::process::id()));
        let hashed = async {
            crate::files::download_file(handle.sender(), name.clone(), &tmp)
                .await
                .map_err(|e| format!("cannot read program {name} from HyDFS: {e}"))?;
            let p = tmp.clone();
            tokio::task::spawn_blocking(move || crate::files::sha256_file(&p))
                .await
                .map_err(|e| format!("hashing program {name} failed: {e}"))?
        }
        .await;
        let _ = tokio::fs::remove_file(&tmp).await;
        let (sha256, _) = hashed?;
        return Ok(OperatorSpec::Program(ProgramSpec {
            file: name.to_string(),
            sha256,
            args: args.to_vec(),
        }));
    }
    let path = cwd.join(program);
    match tokio::fs::metadata(&path).await {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(format!("{} is not a regular file", path.display())),
        Err(e) if !program.contains('/') && e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("`{word}` is not a built-in operator ({builtin_error}), nor a program file"));
        }
        Err(e) => return Err(format!("cannot read program {}: {e}", path.display())),
    }
    if !is_executable(&path) {
        return Err(format!("{} is not executable (chmod +x it)", path.display()));
    }
    // Described part by part and hashed in one pass, then uploaded part by part: a program of
    // any size takes a bounded amount of memory.
    let (chunk, limit) = (handle.chunk_bytes, handle.max_write_bytes);
    let p = path.clone();
    let progress = std::sync::Arc::new(crate::files::Progress::default());
    let (source, sha256) =
        tokio::task::spawn_blocking(move || crate::files::describe_hashed(&p, chunk, limit, progress))
            .await
            .map_err(|e| format!("reading {} failed: {e}", path.display()))??;
    let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "program".into());
    let base: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    let name = FileName::new(&format!("ops/{base}-{}", &sha256[..16])).map_err(|e| e.to_string())?;
    match submit(handle, ClientOp::Upload { name: name.clone(), kind: WriteKind::Create, source }).await {
        Ok(_) => {
            let _ = out.send(Streamed::Note(format!("uploaded {} to HyDFS as {name}", path.display())));
        }
        Err(HydfsError::AlreadyExists(_)) => {}
        Err(e) => return Err(format!("cannot upload {} to HyDFS: {e}", path.display())),
    }
    Ok(OperatorSpec::Program(ProgramSpec { file: name.to_string(), sha256, args: args.to_vec() }))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

async fn submit(handle: &NodeHandle, op: ClientOp) -> Result<OpOutput, HydfsError> {
    let (reply, rx) = oneshot::channel();
    if handle.send(Input::Submit { op, sink: None, reply }).await.is_err() {
        return Err(stopping());
    }
    rx.await.unwrap_or_else(|_| Err(stopping()))
}

fn stopping() -> HydfsError {
    HydfsError::Storage("the node is stopping".into())
}

async fn run_job(handle: &NodeHandle, spec: JobSpec, out: mpsc::UnboundedSender<Streamed>) -> CommandReply {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (reply, rx) = oneshot::channel();
    let dest = spec.dest.clone();
    if handle.send(Input::StartJob { spec, events: events_tx, reply }).await.is_err() {
        return CommandReply { ok: false, output: "node is stopping\n".into() };
    }
    let job = match rx.await {
        Ok(Ok(job)) => job,
        Ok(Err(e)) => return CommandReply { ok: false, output: format!("{e}\n") },
        Err(_) => return CommandReply { ok: false, output: "node is stopping\n".into() },
    };
    let started = Instant::now();
    let _ = out.send(Streamed::Note(format!("job {job} started; results follow and go to {dest}")));
    while let Some(event) = events.recv().await {
        match event {
            RainstormEvent::Outputs { tuples, .. } => {
                for tuple in &tuples {
                    let _ = out.send(Streamed::Output(dest_line(tuple).trim_end_matches('\n').to_owned()));
                }
            }
            RainstormEvent::RolledBack { checkpoint, reason, .. } => {
                let from = checkpoint.map_or_else(|| "its start".to_owned(), |c| format!("checkpoint {c}"));
                let _ = out.send(Streamed::Note(format!("job {job}: {reason}{ROLLBACK_NOTE}{from}")));
            }
            RainstormEvent::TaskScheduled { task, host, restart: true, .. } => {
                let _ = out.send(Streamed::Note(format!("job {job}: {task} moved to {}", host.addr)));
            }
            RainstormEvent::TaskFailed { task, reason, .. } => {
                let _ = out.send(Streamed::Note(format!("job {job}: {task} failed: {reason}")));
            }
            RainstormEvent::Progress { input_lines, stages, .. } => {
                let _ = out.send(Streamed::Progress(JobProgress::new(input_lines, &stages)));
            }
            RainstormEvent::JobCompleted { outputs, restarts, .. } => {
                let secs = started.elapsed().as_secs_f64();
                let output = format!(
                    "job {job} completed: {outputs} outputs in {secs:.2} s, {restarts} rollbacks; \
                     every output is in {dest} exactly once\n"
                );
                return CommandReply { ok: true, output };
            }
            RainstormEvent::JobFailed { reason, .. } => {
                return CommandReply { ok: false, output: format!("job {job} failed: {reason}\n") };
            }
            RainstormEvent::JobLost { reason, .. } => {
                let output = format!("job {job} ended: {reason}; what reached {dest} stays, exactly once\n");
                return CommandReply { ok: false, output };
            }
            _ => {}
        }
    }
    CommandReply { ok: false, output: format!("job {job}: the node stopped before it ended\n") }
}

/// What this node knows of a job it led, from its events.
#[derive(Clone, Debug)]
pub struct JobRecord {
    pub spec: String,
    pub started: Instant,
    pub ended: Option<(Instant, String)>,
    pub outputs: u64,
    pub restarts: u32,
    pub failures: u32,
    pub tasks_completed: u32,
    /// Where each task of the current attempt runs.
    pub placement: BTreeMap<String, String>,
    /// The counts the leader last reported.
    pub progress: JobProgress,
}

/// The jobs this node led, for `jobs` and `job <id>`.
#[derive(Default)]
pub struct JobBook {
    jobs: BTreeMap<JobId, JobRecord>,
}

impl JobBook {
    /// Records a leader event.
    pub fn on_event(&mut self, event: &RainstormEvent) {
        self.record(event, Instant::now());
    }

    /// Records a leader event that came at `now`.
    fn record(&mut self, event: &RainstormEvent, now: Instant) {
        match event {
            RainstormEvent::JobReceived { job, spec } => {
                self.jobs.insert(
                    *job,
                    JobRecord {
                        spec: spec.clone(),
                        started: now,
                        ended: None,
                        outputs: 0,
                        restarts: 0,
                        failures: 0,
                        tasks_completed: 0,
                        placement: BTreeMap::new(),
                        progress: JobProgress::default(),
                    },
                );
            }
            RainstormEvent::TaskScheduled { job, task, attempt, host, .. } => {
                if let Some(r) = self.jobs.get_mut(job) {
                    r.placement.insert(task.to_string(), format!("{} (attempt {attempt})", host.addr));
                }
            }
            RainstormEvent::RolledBack { job, .. } => {
                if let Some(r) = self.jobs.get_mut(job) {
                    r.restarts += 1;
                }
            }
            RainstormEvent::TaskCompleted { job, .. } => {
                if let Some(r) = self.jobs.get_mut(job) {
                    r.tasks_completed += 1;
                }
            }
            RainstormEvent::TaskFailed { job, .. } => {
                if let Some(r) = self.jobs.get_mut(job) {
                    r.failures += 1;
                }
            }
            RainstormEvent::Outputs { job, tuples } => {
                if let Some(r) = self.jobs.get_mut(job) {
                    r.outputs += tuples.len() as u64;
                }
            }
            RainstormEvent::JobCompleted { job, .. } => self.end(job, now, "completed".into()),
            RainstormEvent::JobFailed { job, reason } => self.end(job, now, format!("failed: {reason}")),
            RainstormEvent::JobLost { job, reason } => self.end(job, now, format!("lost: {reason}")),
            RainstormEvent::JobDeposed { job, leader, term } => {
                self.end(job, now, format!("taken over by {} (term {term})", leader.addr))
            }
            RainstormEvent::JobTakenOver { job, outputs, .. } => {
                if let Some(r) = self.jobs.get_mut(job) {
                    r.outputs = *outputs;
                }
            }
            RainstormEvent::Progress { job, input_lines, stages } => {
                if let Some(r) = self.jobs.get_mut(job) {
                    r.progress = JobProgress::new(*input_lines, stages);
                }
            }
            RainstormEvent::Committed { .. }
            | RainstormEvent::TaskStarted { .. }
            | RainstormEvent::JobAbandoned { .. }
            | RainstormEvent::SourceSent { .. } => {}
        }
    }

    fn end(&mut self, job: &JobId, now: Instant, how: String) {
        if let Some(r) = self.jobs.get_mut(job) {
            r.ended.get_or_insert((now, how));
        }
    }

    /// Whether this node led `job`.
    pub fn led(&self, job: &JobId) -> bool {
        self.jobs.contains_key(job)
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Every job this node led, oldest first.
    pub fn records(&self) -> impl DoubleEndedIterator<Item = (&JobId, &JobRecord)> {
        self.jobs.iter()
    }

    /// `jobs`: one line per job.
    pub fn list(&self) -> String {
        self.list_at(Instant::now())
    }

    fn list_at(&self, now: Instant) -> String {
        if self.jobs.is_empty() {
            return "no jobs led by this node\n".into();
        }
        let mut s = String::new();
        for (job, r) in &self.jobs {
            let _ = writeln!(s, "{job}  {}  {}", status(r, now), r.spec);
        }
        s
    }

    /// `job <id>`: one job in detail, with the leader's own account (`describe`) appended.
    pub fn show(&self, id: &str, describe: &[String]) -> Option<String> {
        self.show_at(id, describe, Instant::now())
    }

    fn show_at(&self, id: &str, describe: &[String], now: Instant) -> Option<String> {
        let (job, r) = self.jobs.iter().find(|(j, _)| j.to_string() == id)?;
        let mut s = format!("job {job}: {}\n  {}\n", r.spec, status(r, now));
        let _ = writeln!(
            s,
            "  tasks completed {}, restarts {}, task failures {}",
            r.tasks_completed, r.restarts, r.failures
        );
        let _ = writeln!(s, "  input lines read {}", r.progress.lines());
        let secs = elapsed_secs(r, now);
        for c in &r.progress.stages {
            let name = match c.stage {
                0 => "source".to_owned(),
                n => format!("op{n}"),
            };
            let _ = writeln!(
                s,
                "  stage {} ({name}): {} tuples in, {} out, {:.1} tuples/s in",
                c.stage,
                c.consumed,
                c.emitted,
                c.consumed as f64 / secs
            );
        }
        for (task, at) in &r.placement {
            let _ = writeln!(s, "  {task} on {at}");
        }
        // The leader's account: a line per job, then its tasks' lines, indented.
        let prefix = format!("job {job}");
        let mut mine = false;
        for line in describe {
            if !line.starts_with("  ") {
                mine = line.starts_with(&prefix);
            }
            if mine {
                let _ = writeln!(s, "  | {}", line.trim_end());
            }
        }
        Some(s)
    }
}

/// Seconds from the job's start to its end, or to `now` while it runs.
fn elapsed_secs(r: &JobRecord, now: Instant) -> f64 {
    let end = r.ended.as_ref().map_or(now, |(t, _)| *t);
    end.saturating_duration_since(r.started).as_secs_f64().max(1e-3)
}

fn status(r: &JobRecord, now: Instant) -> String {
    let secs = elapsed_secs(r, now);
    let state = r.ended.as_ref().map_or("running", |(_, how)| how.as_str());
    format!(
        "{state}; in {} lines, {} outputs in {secs:.1} s ({:.0}/s), {} restarts",
        r.progress.lines(),
        r.outputs,
        r.outputs as f64 / secs,
        r.restarts
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_shows_its_own_record_and_only_its_own_tasks() {
        let mut book = JobBook::default();
        let (a, b) = (JobId { n: 1, tag: 0xabc }, JobId { n: 2, tag: 0xabc });
        for job in [a, b] {
            book.on_event(&RainstormEvent::JobReceived { job, spec: format!("spec of {job}") });
        }
        book.on_event(&RainstormEvent::JobCompleted { job: a, outputs: 0, restarts: 0 });
        let describe: Vec<String> =
            ["job 1-000abc: x", "  s0-t0 of a", "job 2-000abc: y", "  s0-t0 of b"].map(String::from).into();
        let shown = book.show("1-000abc", &describe).expect("job a");
        assert!(shown.contains("spec of 1-000abc") && shown.contains("completed"), "{shown}");
        assert!(shown.contains("of a") && !shown.contains("of b"), "{shown}");
        assert!(book.show("3-000abc", &describe).is_none());
        let list = book.list();
        assert!(list.contains("1-000abc  completed") && list.contains("2-000abc  running"), "{list}");
    }

    #[test]
    fn a_job_shows_its_input_lines_read_and_each_stage_in_out_and_rate() {
        use rainstorm_core::rainstorm::{TaskId, Tuple};
        use rainstorm_core::MemberId;
        use std::time::Duration;
        let mut book = JobBook::default();
        let job = JobId { n: 7, tag: 0xabc };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let spec = "RainStorm grep:Stop project:OBJECTID,Sign_Type signs.csv stops 1".to_owned();
        book.record(&RainstormEvent::JobReceived { job, spec }, t0);
        let before = book.show_at("7-000abc", &[], at(500)).expect("shown");
        assert!(before.contains("in 0/? lines") && before.contains("input lines read 0/?"), "{before}");
        let host = MemberId::new("127.0.0.1:7001".parse().expect("address"), 1);
        for stage in 0..3 {
            let task = TaskId { stage, index: 0 };
            book.record(&RainstormEvent::TaskScheduled { job, task, attempt: 1, host, restart: false }, t0);
        }
        let stage = |stage, consumed, emitted| StageCounts { stage, consumed, emitted };
        let counts = |s0, s1: (u64, u64), s2| vec![stage(0, s0, s0), stage(1, s1.0, s1.1), stage(2, s2, s2)];
        let progress = |stages| RainstormEvent::Progress { job, input_lines: 1_000, stages };
        book.record(&progress(counts(400, (300, 20), 20)), at(1_000));
        book.record(&progress(counts(1_000, (1_000, 50), 50)), at(1_900));
        book.record(
            &RainstormEvent::Progress { job: JobId { n: 8, tag: 1 }, input_lines: 5, stages: vec![] },
            t0,
        );
        let tuples = (1..=50).map(|n| Tuple::source("signs.csv", n, "x")).collect();
        book.record(&RainstormEvent::Outputs { job, tuples }, at(1_900));
        book.record(&RainstormEvent::JobCompleted { job, outputs: 50, restarts: 0 }, at(2_000));
        let shown = book.show_at("7-000abc", &[], at(9_000)).expect("shown");
        println!("{shown}");
        for line in [
            "completed; in 1000/1000 lines, 50 outputs in 2.0 s (25/s), 0 restarts",
            "input lines read 1000/1000",
            "stage 0 (source): 1000 tuples in, 1000 out, 500.0 tuples/s in",
            "stage 1 (op1): 1000 tuples in, 50 out, 500.0 tuples/s in",
            "stage 2 (op2): 50 tuples in, 50 out, 25.0 tuples/s in",
        ] {
            assert!(shown.contains(line), "no `{line}` in:\n{shown}");
        }
        let list = book.list_at(at(9_000));
        assert!(list.starts_with("7-000abc  completed; in 1000/1000 lines, 50 outputs"), "{list}");
        assert_eq!(list.lines().count(), 1, "{list}");
    }
}
