//! Operator programs on a real node: fetching them, one process per task incarnation, and the
//! protocol of `docs/OPERATORS.md` ([`conversation`]).
//!
//! The node's RainStorm worker hands each batch of a program stage to the driver as a
//! [`ProgramCall`]; [`ProgramHost`] answers every call exactly once (as [`Input::ProgramResult`]),
//! in order per incarnation: with the program's outputs, or with an error naming the operator
//! and the batch.
//!
//! Invariants kept here:
//! * a program runs only if its bytes hash to the SHA-256 its spec names: fetched from HyDFS
//!   into `<data dir>/programs/<sha256>`, checked before every first start, replaced if not;
//! * the cache is the node's user's alone: `programs/` is 0700, a program is fetched into a
//!   0600 file and made 0700 (runnable by its owner only) before it is moved into place, and a
//!   cached program found looser is made 0700 before it runs ([`crate::private`]);
//! * one process per hosted incarnation `(job, task, attempt)`, which handles its calls in order,
//!   up to [`ProgramLimits::window`] of them in flight when it speaks version 2; processes of
//!   incarnations the node no longer hosts are stopped ([`ProgramHost::retain`]), and their
//!   calls still in flight are answered with an error;
//! * a program that fails (exits, answers late, against the protocol, or oversized) is killed,
//!   every call in flight fails with its reason, and so does every later call of its
//!   incarnation: the task fails and its leader rolls the whole job back to its last complete
//!   checkpoint as a new attempt with new processes (or, past `max_task_failures`, fails the
//!   job), so no partial batch is ever used;
//! * the program's stderr goes to this node's log, line by line, tagged with the task; its last
//!   lines are quoted in the failure;
//! * a program file over [`ProgramLimits::max_program_bytes`] is refused on its size in HyDFS's
//!   metadata, before any of its bytes is fetched (and again on the bytes fetched, should the
//!   file have grown in between).
//!
//! The sandbox every program runs in (`docs/OPERATORS.md`):
//! * its environment holds only [`INHERITED_ENV`] (taken from the node's, when set there) and
//!   `HOME` and `TMPDIR`, both its own directory: never the node's secrets, such as
//!   `RAINSTORM_CLUSTER_KEY`;
//! * its working directory is its own, `<data dir>/programs/run/<job>-<task>-<attempt>`, mode
//!   0700, created empty before it starts and removed once it has ended (what a node killed
//!   without a chance to remove leaves is removed when the node starts again);
//! * it leads a process group of its own; whenever its process ends (stopped, failed, or its
//!   task dropped), the whole group is killed with SIGKILL, so nothing it started lives on;
//! * it gets SIGKILL from the kernel if its node dies, even by SIGKILL, and it starts under the
//!   limits of [`ProgramLimits`] on its address space, CPU time and open files
//!   ([`crate::children`]); a program ended by a limit fails its task with a reason that names
//!   the limit's setting when its exit shows which.

pub mod conversation;

use crate::children::{self, Confinement};
use crate::driver::Input;
use conversation::{Conversation, ConversationLimits};
use rainstorm_core::hydfs::FileName;
use rainstorm_core::rainstorm::{Attempt, JobId, ProgramCall, ProgramResult, ProgramSpec, TaskId};
use rainstorm_operator::{Hello, ProtocolError, DEFAULT_MAX_MESSAGE_BYTES};
use rustix::process::{Resource, Signal};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{info, warn};

pub use conversation::{parse_reply_v1, parse_reply_v2, read_frame, read_line};

/// Limits of operator programs.
#[derive(Clone, Debug)]
pub struct ProgramLimits {
    /// From starting the process to its handshake answer.
    pub start_timeout: Duration,
    /// From sending a batch to its answer.
    pub batch_timeout: Duration,
    /// Longest message either way: a version 1 line (newline excluded) or a version 2 frame's
    /// payload.
    pub max_message_bytes: usize,
    /// Batches in flight per program speaking version 2 (version 1 takes one at a time). Up to
    /// this many calls of one incarnation are sent before the first is answered.
    pub window: usize,
    /// Largest program file fetched from HyDFS (`rainstorm.program_max_size_mb`).
    pub max_program_bytes: u64,
    /// A program's address space, in bytes (`rainstorm.program_max_memory_mb`; `None`:
    /// unlimited).
    pub max_memory_bytes: Option<u64>,
    /// A program's CPU time over its whole life, in seconds (`rainstorm.program_max_cpu_s`;
    /// `None`: unlimited). Past it the program gets SIGXCPU, and SIGKILL
    /// [`CPU_GRACE_SECS`] later.
    pub max_cpu_secs: Option<u64>,
    /// Files a program may hold open at once (`rainstorm.program_max_open_files`; `None`:
    /// unlimited).
    pub max_open_files: Option<u64>,
}

/// Batches in flight per version 2 program, by default.
pub const DEFAULT_PROGRAM_WINDOW: usize = 8;

impl Default for ProgramLimits {
    fn default() -> Self {
        ProgramLimits {
            start_timeout: Duration::from_secs(10),
            batch_timeout: Duration::from_secs(30),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            window: DEFAULT_PROGRAM_WINDOW,
            max_program_bytes: 256 << 20,
            max_memory_bytes: Some(4096 << 20),
            // A program lives as long as its task, which a streaming job never ends: any CPU
            // time limit would eventually fail a healthy job.
            max_cpu_secs: None,
            max_open_files: Some(1024),
        }
    }
}

/// Seconds between a program's CPU time limit (SIGXCPU) and its hard limit (SIGKILL).
pub const CPU_GRACE_SECS: u64 = 5;

/// The variables a program gets from its node's environment, when the node has them. Besides
/// these, a program's environment holds only `HOME` and `TMPDIR` (its own directory), and
/// `PATH` is [`DEFAULT_PATH`] if the node has none.
pub const INHERITED_ENV: [&str; 5] = ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];

/// A program's `PATH` when its node has none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

impl ProgramLimits {
    /// The resource limits a program starts under.
    fn confinement(&self) -> Confinement {
        let mut c = Confinement::new();
        if let Some(bytes) = self.max_memory_bytes {
            c = c.limit(Resource::As, bytes, bytes);
        }
        if let Some(secs) = self.max_cpu_secs {
            c = c.limit(Resource::Cpu, secs, secs.saturating_add(CPU_GRACE_SECS));
        }
        if let Some(files) = self.max_open_files {
            c = c.limit(Resource::Nofile, files, files);
        }
        c
    }

    /// How a program ended (`status`), with the limit that ended it when its exit shows which.
    fn exit_reason(&self, status: ExitStatus) -> String {
        use std::os::unix::process::ExitStatusExt;
        let by = |s: Signal| status.signal() == Some(s.as_raw());
        let cpu = self.max_cpu_secs;
        let limit = if by(Signal::XCPU) {
            cpu.map(|s| format!(": over its CPU time limit of {s} s (`rainstorm.program_max_cpu_s`)"))
        } else if by(Signal::KILL) {
            cpu.map(|s| {
                format!(
                    ": past its hard CPU time limit of {} s (`rainstorm.program_max_cpu_s` + {CPU_GRACE_SECS} s) \
                     if it ignored SIGXCPU, else by another process",
                    s.saturating_add(CPU_GRACE_SECS)
                )
            })
        } else if by(Signal::ABORT) || by(Signal::SEGV) || by(Signal::BUS) {
            self.max_memory_bytes.map(|b| {
                format!(
                    "; if it ran out of memory: its address space is limited to {} MiB \
                     (`rainstorm.program_max_memory_mb`)",
                    b >> 20
                )
            })
        } else {
            None
        };
        format!("{status}{}", limit.unwrap_or_default())
    }

    /// A program file of `len` bytes over [`ProgramLimits::max_program_bytes`], refused.
    fn too_large(&self, file: &str, len: u64) -> String {
        format!(
            "{file} is {len} bytes, over the limit of {} bytes (`rainstorm.program_max_size_mb`): \
             refusing to fetch it",
            self.max_program_bytes
        )
    }
}

type Incarnation = (JobId, TaskId, Attempt);

/// The operator programs of one node.
pub struct ProgramHost {
    limits: ProgramLimits,
    cache: PathBuf,
    node: mpsc::Sender<Input>,
    running: BTreeMap<Incarnation, mpsc::UnboundedSender<ProgramCall>>,
    /// One fetch at a time per program hash, shared by the incarnations' tasks.
    fetching: Arc<Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl ProgramHost {
    /// The programs of the node with data dir `data_dir`. The directories of programs a
    /// previous run of the node left behind (it was killed) are removed.
    pub fn new(limits: ProgramLimits, data_dir: &Path, node: mpsc::Sender<Input>) -> ProgramHost {
        // Absolute: a program starts in its own directory, and is named by its path.
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        let cache = data_dir.join("programs");
        let runs = cache.join(RUN_DIR);
        if runs.exists() {
            if let Err(e) = std::fs::remove_dir_all(&runs) {
                warn!(event = "program_dir_left", path = %runs.display(), "cannot remove the program directories a previous run left: {e}");
            }
        }
        ProgramHost { limits, cache, node, running: BTreeMap::new(), fetching: Arc::default() }
    }

    /// Runs a call on its incarnation's process (started on its first call).
    pub fn call(&mut self, call: ProgramCall) {
        let key = (call.job, call.task, call.attempt);
        let tx = self.running.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = Ctx {
                limits: self.limits.clone(),
                cache: self.cache.clone(),
                node: self.node.clone(),
                fetching: self.fetching.clone(),
                label: format!("job {} {} attempt {}", call.job, call.task, call.attempt),
                dir: self.cache.join(RUN_DIR).join(format!("{}-{}-{}", call.job, call.task, call.attempt)),
            };
            tokio::spawn(serve_incarnation(ctx, rx));
            tx
        });
        if let Err(mpsc::error::SendError(call)) = tx.send(call) {
            // The incarnation's task ended; a call must still be answered.
            let node = self.node.clone();
            tokio::spawn(async move {
                let result = Err("its operator program is stopped".to_owned());
                let _ = node.send(Input::ProgramResult { token: call.token, result }).await;
            });
        }
    }

    /// Stops the processes of incarnations not in `hosted`.
    pub fn retain(&mut self, hosted: &BTreeSet<Incarnation>) {
        self.running.retain(|k, _| hosted.contains(k));
    }

    /// How many program processes (or their tasks) are alive.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

struct Ctx {
    limits: ProgramLimits,
    cache: PathBuf,
    node: mpsc::Sender<Input>,
    fetching: Arc<Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    label: String,
    /// The incarnation's own directory, its program's working directory.
    dir: PathBuf,
}

/// Where the programs' own directories are, in the program cache.
const RUN_DIR: &str = "run";

/// A call sent to the program and not yet answered: its token, and how a failure names it.
struct Pending {
    token: u64,
    what: String,
}

/// One incarnation's program: its calls in order, until the host drops the channel. Calls are
/// sent as the program's window allows and answered as its replies come back; a failure
/// answers every call in flight and every later one with its reason.
async fn serve_incarnation(ctx: Ctx, mut calls: mpsc::UnboundedReceiver<ProgramCall>) {
    let mut process: Option<Process> = None;
    let mut broken: Option<String> = None;
    // Calls received and not yet sent (the window is full), then calls sent and not answered.
    let mut waiting: VecDeque<ProgramCall> = VecDeque::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    loop {
        while process.as_ref().is_none_or(|p| p.conversation.has_room()) || broken.is_some() {
            let Some(call) = waiting.pop_front() else { break };
            let token = call.token;
            if let Some(why) = &broken {
                answer(&ctx, token, Err(why.clone())).await;
                continue;
            }
            match send_call(&ctx, &mut process, call).await {
                Ok(what) => pending.push_back(Pending { token, what }),
                Err(why) => {
                    answer(&ctx, token, Err(why.clone())).await;
                    fail(&ctx, &mut process, &mut pending, &mut broken, why).await;
                }
            }
        }
        tokio::select! {
            call = calls.recv() => match call {
                Some(call) => waiting.push_back(call),
                None => break,
            },
            result = next_result(&mut process), if !pending.is_empty() => {
                let call = pending.pop_front().expect("a call in flight");
                match result {
                    Ok(result) => answer(&ctx, call.token, Ok(result)).await,
                    Err(e) => {
                        let why = describe(&mut process, &call.what, e).await;
                        answer(&ctx, call.token, Err(why.clone())).await;
                        fail(&ctx, &mut process, &mut pending, &mut broken, why).await;
                    }
                }
            }
        }
    }
    let stopped = "its operator program is stopped (the task is no longer hosted here)".to_owned();
    for token in pending.drain(..).map(|p| p.token).chain(waiting.drain(..).map(|c| c.token)) {
        answer(&ctx, token, Err(stopped.clone())).await;
    }
    if let Some(p) = process.take() {
        p.stop().await;
    }
}

/// Answers one call.
async fn answer(ctx: &Ctx, token: u64, result: Result<ProgramResult, String>) {
    let _ = ctx.node.send(Input::ProgramResult { token, result }).await;
}

/// The conversation has failed with `why`: the process is killed, every call in flight is
/// answered with `why`, and so will be every later call.
async fn fail(
    ctx: &Ctx,
    process: &mut Option<Process>,
    pending: &mut VecDeque<Pending>,
    broken: &mut Option<String>,
    why: String,
) {
    if let Some(p) = process.take() {
        p.kill().await;
    }
    for call in pending.drain(..) {
        answer(ctx, call.token, Err(why.clone())).await;
    }
    *broken = Some(why);
}

/// The next result of the program's conversation (pending forever without a process).
async fn next_result(process: &mut Option<Process>) -> Result<ProgramResult, ProtocolError> {
    match process {
        Some(p) => p.conversation.next_result().await,
        None => std::future::pending().await,
    }
}

/// A failure of the call described by `what`, with the program's exit and the end of its
/// stderr when there are.
async fn describe(process: &mut Option<Process>, what: &str, e: ProtocolError) -> String {
    let Some(p) = process.as_mut() else { return format!("{what}: {e}") };
    let e = p.explain(e).await;
    let stderr = p.stderr_tail();
    let tail = if stderr.is_empty() { String::new() } else { format!("; its stderr ended: {stderr}") };
    format!("{what}: {e}{tail}")
}

/// Sends one call to the incarnation's program, starting it first if needed. On success, how a
/// failure of this call will name it; on failure, the reason.
async fn send_call(ctx: &Ctx, process: &mut Option<Process>, call: ProgramCall) -> Result<String, String> {
    let name = format!("program:{}@{}", call.program.file, call.program.short_hash());
    if process.is_none() {
        let path = fetch(ctx, &call.program).await.map_err(|e| format!("operator `{name}`: {e}"))?;
        let p = Process::start(ctx, &path, &call)
            .await
            .map_err(|e| format!("operator `{name}` did not start: {e}"))?;
        *process = Some(p);
    }
    let p = process.as_mut().expect("started above");
    let first = call.batch.tuples.first().map_or_else(String::new, |t| t.id.to_string());
    let what = format!(
        "operator `{name}` failed on the batch of {} tuples starting at {first}",
        call.batch.tuples.len()
    );
    match p.conversation.send(call.batch) {
        Ok(()) => Ok(what),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// The program's executable in the local cache, fetched from HyDFS if missing or altered.
async fn fetch(ctx: &Ctx, program: &ProgramSpec) -> Result<PathBuf, String> {
    let lock = {
        let mut map = ctx.fetching.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(program.sha256.clone()).or_default().clone()
    };
    let _guard = lock.lock().await;
    // Created 0700, or tightened if an older node left it looser.
    let cache = ctx.cache.clone();
    tokio::task::spawn_blocking(move || crate::private::dir(&cache))
        .await
        .map_err(|e| format!("creating the program cache failed: {e}"))?
        .map_err(|e| format!("cannot create the program cache {}: {e}", ctx.cache.display()))?;
    let path = ctx.cache.join(&program.sha256);
    if path.is_file() {
        if hash_of(&path).await.is_ok_and(|(h, _)| h == program.sha256) {
            if !is_private_program(&path).await {
                make_executable(&path).await.map_err(|e| format!("cannot make the program private: {e}"))?;
            }
            return Ok(path);
        }
        warn!(event = "program_cache_bad", path = %path.display(), "cached program does not match its hash; fetching it again");
    }
    let name = FileName::new(&program.file).map_err(|e| format!("bad program file name: {e}"))?;
    // Its size from its metadata first: a file over the limit is not fetched at all.
    let len = crate::files::file_len(&ctx.node, name.clone())
        .await
        .map_err(|e| format!("cannot read the size of {} in HyDFS: {e}", program.file))?;
    if len > ctx.limits.max_program_bytes {
        return Err(ctx.limits.too_large(&program.file, len));
    }
    // Fetched chunk by chunk into a file beside its place in the cache, checked, then moved in:
    // a program of any size takes a bounded amount of memory.
    let tmp = ctx.cache.join(format!("{}.{}.tmp", program.sha256, std::process::id()));
    let result = async {
        crate::files::download_file(&ctx.node, name, &tmp)
            .await
            .map_err(|e| format!("cannot fetch {} from HyDFS: {e}", program.file))?;
        let (found, len) = hash_of(&tmp).await?;
        if len > ctx.limits.max_program_bytes {
            return Err(ctx.limits.too_large(&program.file, len));
        }
        if found != program.sha256 {
            return Err(format!(
                "{} in HyDFS hashes to {found}, not {}: refusing to run it",
                program.file, program.sha256
            ));
        }
        make_executable(&tmp).await.map_err(|e| format!("cannot make the program executable: {e}"))?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| format!("cannot cache the program: {e}"))?;
        Ok(len)
    }
    .await;
    match result {
        Ok(len) => {
            info!(event = "program_fetched", file = %program.file, hash = program.short_hash(), bytes = len, "fetched operator program {} ({len} bytes)", program.file);
            Ok(path)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

/// The SHA-256 and length of a local file, read a chunk at a time off the async threads.
async fn hash_of(path: &Path) -> Result<(String, u64), String> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::files::sha256_file(&p))
        .await
        .map_err(|e| format!("hashing {} failed: {e}", path.display()))?
}

#[cfg(unix)]
async fn make_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(crate::private::PROGRAM_MODE)).await
}

#[cfg(not(unix))]
async fn make_executable(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// Whether the cached program at `path` is already [`crate::private::PROGRAM_MODE`].
#[cfg(unix)]
async fn is_private_program(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::metadata(path)
        .await
        .is_ok_and(|m| m.permissions().mode() & 0o7777 == crate::private::PROGRAM_MODE)
}

#[cfg(not(unix))]
async fn is_private_program(_path: &Path) -> bool {
    true
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Lines of stderr kept for a failure report.
const STDERR_TAIL_LINES: usize = 5;

/// A started program that answered its handshake.
struct Process {
    running: Running,
    conversation: Conversation,
    stderr: Arc<Mutex<VecDeque<String>>>,
    limits: ProgramLimits,
}

impl Process {
    async fn start(ctx: &Ctx, path: &Path, call: &ProgramCall) -> Result<Process, String> {
        let dir = RunDir::create(ctx.dir.clone()).await?;
        let mut cmd = Command::new(path);
        cmd.args(&call.program.args)
            .env_clear()
            .envs(program_env(&dir.path))
            .current_dir(&dir.path)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        children::tie_to_this_process(cmd.as_std_mut(), ctx.limits.confinement());
        let mut child = children::spawn_tokio(cmd).await.map_err(|e| {
            let memory = ctx.limits.max_memory_bytes.filter(|_| e.raw_os_error() == Some(rustix::io::Errno::NOMEM.raw_os_error()));
            let hint = memory.map_or_else(String::new, |b| {
                format!(" (its address space limit of {} MiB, `rainstorm.program_max_memory_mb`, may be too small for it)", b >> 20)
            });
            format!("cannot start {}: {e}{hint}", path.display())
        })?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let group = child.id();
        let mut running = Running { child, group, dir: Some(dir) };
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = running.child.stderr.take() {
            tokio::spawn(log_stderr(BufReader::new(err), ctx.label.clone(), stderr.clone()));
        }
        info!(event = "program_started", task = %ctx.label, program = %call.program.file, pid = group.unwrap_or(0), "{}: started operator program {}", ctx.label, call.program.file);
        let hello = Hello::new(call.task.to_string(), call.header.clone());
        let limits = ConversationLimits {
            window: ctx.limits.window,
            batch_timeout: ctx.limits.batch_timeout,
            max_message_bytes: ctx.limits.max_message_bytes,
        };
        let started = Conversation::start(stdout, stdin, &hello, limits);
        let conversation = match tokio::time::timeout(ctx.limits.start_timeout, started).await {
            Ok(Ok(conversation)) => conversation,
            Ok(Err(e)) => {
                let e = explain(&mut running.child, e, &ctx.limits).await;
                running.end().await;
                // What the program said on its way out, once its stderr reader has taken it.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let lines =
                    stderr.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect::<Vec<_>>();
                let tail = if lines.is_empty() {
                    String::new()
                } else {
                    format!("; its stderr ended: {}", lines.join(" | "))
                };
                return Err(format!("handshake failed: {e}{tail}"));
            }
            Err(_) => {
                running.end().await;
                let after_ms = ctx.limits.start_timeout.as_millis() as u64;
                return Err(format!("handshake failed: {}", ProtocolError::Timeout { after_ms }));
            }
        };
        info!(event = "program_ready", task = %ctx.label, version = conversation.version(), stateful = conversation.stateful(), "{}: operator program speaks protocol version {}", ctx.label, conversation.version());
        Ok(Process { running, conversation, stderr, limits: ctx.limits.clone() })
    }

    /// An end of stream or broken pipe usually means the program exited: say how.
    async fn explain(&mut self, e: ProtocolError) -> ProtocolError {
        explain(&mut self.running.child, e, &self.limits).await
    }

    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// Closes stdin (after every request sent is written) and gives the program a moment to
    /// exit; then kills what is left of its process group.
    async fn stop(mut self) {
        self.conversation.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.running.child.wait()).await;
        self.running.end().await;
    }

    async fn kill(mut self) {
        self.running.end().await;
    }
}

/// The environment of a program whose own directory is `dir`: [`INHERITED_ENV`] from the
/// node's, `HOME` and `TMPDIR`.
fn program_env(dir: &Path) -> Vec<(String, std::ffi::OsString)> {
    let mut env: Vec<(String, std::ffi::OsString)> = INHERITED_ENV
        .iter()
        .filter_map(|name| std::env::var_os(name).map(|value| ((*name).to_owned(), value)))
        .collect();
    if !env.iter().any(|(name, _)| name == "PATH") {
        env.push(("PATH".to_owned(), DEFAULT_PATH.into()));
    }
    env.push(("HOME".to_owned(), dir.into()));
    env.push(("TMPDIR".to_owned(), dir.into()));
    env
}

/// A program's process, the process group it leads and its directory, which end together:
/// [`Running::end`] kills the whole group and removes the directory, and so does dropping it
/// (the directory then removed on this thread).
struct Running {
    child: Child,
    /// The process group the program leads (its process id), until it is killed.
    group: Option<u32>,
    dir: Option<RunDir>,
}

impl Running {
    /// Kills the program and everything in its process group, reaps it, and removes its
    /// directory.
    async fn end(&mut self) {
        self.kill_group();
        let _ = self.child.kill().await;
        if let Some(dir) = self.dir.take() {
            dir.remove().await;
        }
    }

    fn kill_group(&mut self) {
        if let Some(group) = self.group.take() {
            match children::kill_group(group) {
                Ok(()) => {}
                // Every process of the group has already exited.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => {}
                Err(e) => warn!(
                    event = "program_kill_failed",
                    group, "cannot kill the process group {group} of an operator program: {e}"
                ),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// A task incarnation's own directory: created empty with mode 0700 before its program starts,
/// removed after the program has ended (by [`RunDir::remove`], or when dropped).
struct RunDir {
    path: PathBuf,
    removed: bool,
}

impl RunDir {
    async fn create(path: PathBuf) -> Result<RunDir, String> {
        let failed =
            |e: std::io::Error| format!("cannot create the program's directory {}: {e}", path.display());
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&path).await.map_err(failed)?;
        }
        // It and the directory of every incarnation's directories are 0700, whatever the umask.
        let dirs = [path.parent().map(Path::to_path_buf), Some(path.clone())];
        tokio::task::spawn_blocking(move || {
            dirs.iter().flatten().try_for_each(|d| crate::private::dir(d).map(drop))
        })
        .await
        .map_err(|e| failed(std::io::Error::other(e)))?
        .map_err(failed)?;
        Ok(RunDir { path, removed: false })
    }

    /// Removes the directory and everything in it, off the async threads.
    async fn remove(mut self) {
        self.removed = true;
        let path = self.path.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&path)).await {
            warn!(event = "program_dir_left", path = %self.path.display(), "cannot remove an operator program's directory: {e}");
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                warn!(event = "program_dir_left", path = %self.path.display(), "cannot remove an operator program's directory: {e}");
            }
        }
    }
}

/// An end of stream, a broken pipe or a truncated message usually means the program exited:
/// say how, if it did within half a second, naming the limit that ended it when that shows.
async fn explain(child: &mut Child, e: ProtocolError, limits: &ProgramLimits) -> ProtocolError {
    if !matches!(
        e,
        ProtocolError::Eof
            | ProtocolError::Io(_)
            | ProtocolError::Truncated { .. }
            | ProtocolError::TruncatedFrame { .. }
    ) {
        return e;
    }
    match tokio::time::timeout(Duration::from_millis(500), child.wait()).await {
        Ok(Ok(status)) => ProtocolError::Exited(limits.exit_reason(status)),
        _ => e,
    }
}

async fn log_stderr<R: AsyncBufRead + Unpin>(mut err: R, label: String, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut line = String::new();
    loop {
        line.clear();
        match err.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = line.trim_end().to_owned();
                info!(event = "program_stderr", task = %label, "{label}: {text}");
                let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() == STDERR_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rainstorm_core::rainstorm::{ProgramBatch, Tuple};

    /// A shell program, placed in the cache of `data_dir` under its hash (so nothing is fetched),
    /// 0755 in a 0755 cache, as an older node left them.
    fn script(data_dir: &Path, body: &str) -> ProgramSpec {
        use std::os::unix::fs::PermissionsExt;
        let bytes = format!("#!/bin/sh\n{body}\n");
        let sha256 = sha256_hex(bytes.as_bytes());
        let cache = data_dir.join("programs");
        std::fs::create_dir_all(&cache).expect("a cache directory");
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).expect("0755");
        let path = cache.join(&sha256);
        std::fs::write(&path, bytes).expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("executable");
        ProgramSpec { file: "ops/test".to_owned(), sha256, args: Vec::new() }
    }

    fn call(token: u64, program: &ProgramSpec) -> ProgramCall {
        let tuples = vec![Tuple::source("in.csv", token, "a,b")];
        ProgramCall {
            token,
            job: JobId { n: 1, tag: 7 },
            task: TaskId { stage: 1, index: 0 },
            attempt: 1,
            program: program.clone(),
            header: None,
            batch: ProgramBatch { tuples: tuples.into(), state: BTreeMap::new() },
        }
    }

    async fn results(rx: &mut mpsc::Receiver<Input>, n: usize) -> Vec<(u64, Result<ProgramResult, String>)> {
        let mut out = Vec::new();
        while out.len() < n {
            match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
                Ok(Some(Input::ProgramResult { token, result })) => out.push((token, result)),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("{} of {n} answers came", out.len()),
            }
        }
        out
    }

    fn data_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rainstorm-programs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn calls_are_answered_in_order_and_a_failure_answers_every_later_call() {
        let dir = data_dir("fail");
        // Answers the first batch with one empty list, then exits with status 3 on the second.
        let program = script(
            &dir,
            r#"read -r hello
echo '{"rainstorm":1,"stateful":false}'
read -r batch; echo '{"batch":1,"outputs":[[]]}'
read -r batch; echo 'dying' >&2; exit 3"#,
        );
        let (tx, mut rx) = mpsc::channel(16);
        let mut host = ProgramHost::new(ProgramLimits::default(), &dir, tx);
        for token in 1..=4 {
            host.call(call(token, &program));
        }
        let answers = results(&mut rx, 4).await;
        assert_eq!(answers.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [1, 2, 3, 4], "in order, once each");
        assert_eq!(answers[0].1, Ok(ProgramResult { outputs: vec![vec![]], state: BTreeMap::new() }));
        let why = answers[1].1.clone().expect_err("batch 2 fails");
        assert!(why.contains("exit status: 3") && why.contains("line 2"), "{why}");
        assert!(answers[2..].iter().all(|(_, r)| r.as_ref().err() == Some(&why)), "the same reason after");
        host.call(call(5, &program));
        assert_eq!(results(&mut rx, 1).await[0].1.as_ref().err(), Some(&why));
        // The cache, left 0755 with its program, was made the node's user's alone before it ran.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("cached").permissions().mode() & 0o7777;
        let cache = dir.join("programs");
        assert_eq!((mode(&cache), mode(&cache.join(&program.sha256))), (0o700, 0o700));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn calls_in_flight_when_the_task_leaves_are_answered() {
        let dir = data_dir("leave");
        // Answers the hello, then never answers a batch.
        let program = script(&dir, "read -r hello\necho '{\"rainstorm\":1,\"stateful\":false}'\nsleep 30");
        let (tx, mut rx) = mpsc::channel(16);
        let mut host = ProgramHost::new(ProgramLimits::default(), &dir, tx);
        host.call(call(1, &program));
        host.call(call(2, &program));
        tokio::time::sleep(Duration::from_millis(300)).await;
        host.retain(&BTreeSet::new());
        assert!(host.is_empty());
        let answers = results(&mut rx, 2).await;
        assert_eq!(answers.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [1, 2]);
        assert!(answers.iter().all(|(_, r)| r.as_ref().is_err_and(|e| e.contains("no longer hosted"))));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// What a program of the tests writes, in the directory its first argument names.
    fn written(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Waits until `done` holds (10 s at most).
    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what}: not within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether process `pid` has exited (gone, or a zombie nobody reaped yet).
    fn exited(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        }
    }

    /// The own directory of the incarnation `call` starts in the data dir `dir`.
    fn own_dir(dir: &Path) -> PathBuf {
        dir.join("programs/run/1-000007-s1-t0-1")
    }

    /// The handshake and one answered batch, then whatever `rest` does (the end of stdin ends
    /// the script).
    const ANSWERS_ONE_BATCH: &str = r#"read -r hello
echo '{"rainstorm":1,"stateful":false}'
read -r batch; echo '{"batch":1,"outputs":[[]]}'"#;

    /// Environment of the node processes of the tests ([`node_process`]): the data dir, the hash
    /// of the program to run, and whether to stay up until killed.
    const HELPER_DIR: &str = "RAINSTORM_TEST_NODE_DIR";
    const HELPER_PROGRAM: &str = "RAINSTORM_TEST_NODE_PROGRAM";
    const HELPER_HANG: &str = "RAINSTORM_TEST_NODE_HANG";

    /// A node in a process of its own (this test binary, running `node_helper` only) that runs
    /// one batch through `program` with the data dir `dir`, with `env` added to its environment.
    fn node_process(dir: &Path, program: &ProgramSpec, env: &[(&str, &str)]) -> std::process::Child {
        std::process::Command::new(std::env::current_exe().expect("the test binary"))
            .args(["programs::tests::node_helper", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(HELPER_DIR, dir)
            .env(HELPER_PROGRAM, &program.sha256)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("the node process starts")
    }

    /// The node of [`node_process`] (nothing without its environment): runs one batch through
    /// the program, writes the answer to `answered`, then stays up until killed or stops the
    /// program and waits for its directory to be removed.
    #[tokio::test]
    #[ignore = "the node process of other tests, which start it"]
    async fn node_helper() {
        let (Some(dir), Ok(sha256)) = (std::env::var_os(HELPER_DIR), std::env::var(HELPER_PROGRAM)) else {
            return;
        };
        let dir = PathBuf::from(dir);
        let program =
            ProgramSpec { file: "ops/test".to_owned(), sha256, args: vec![dir.display().to_string()] };
        let (tx, mut rx) = mpsc::channel(16);
        let mut host = ProgramHost::new(ProgramLimits::default(), &dir, tx);
        host.call(call(1, &program));
        let answer = results(&mut rx, 1).await.remove(0).1;
        std::fs::write(dir.join("answered"), format!("{answer:?}")).expect("written");
        if std::env::var_os(HELPER_HANG).is_some() {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        host.retain(&BTreeSet::new());
        eventually("the program's directory is removed", || !own_dir(&dir).exists()).await;
    }

    /// Waits for the node process to exit (20 s at most).
    fn exit_of(mut node: std::process::Child) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = node.try_wait().expect("waited") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = node.kill();
                panic!("the node process did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_program_gets_a_cleared_environment_and_a_directory_of_its_own() {
        let dir = data_dir("sandbox-env");
        let program = script(
            &dir,
            &format!(
                r#"tr '\000' '\n' < /proc/$$/environ > "$1/environ"
pwd -P > "$1/cwd"
stat -c %a . > "$1/mode"
{ANSWERS_ONE_BATCH}
read -r end"#
            ),
        );
        let secret = "the-cluster-key-of-this-test";
        let node = node_process(
            &dir,
            &program,
            &[("RAINSTORM_CLUSTER_KEY", secret), ("LANG", "C.UTF-8"), ("AWS_SECRET_ACCESS_KEY", secret)],
        );
        assert!(exit_of(node).success(), "the node process failed");
        assert!(written(&dir, "answered").starts_with("Ok("), "{}", written(&dir, "answered"));
        let own = std::fs::canonicalize(&dir).expect("the data dir").join("programs/run/1-000007-s1-t0-1");
        let environ = written(&dir, "environ");
        assert!(!environ.contains(secret) && !environ.contains("RAINSTORM_"), "{environ}");
        let env: BTreeMap<&str, &str> = environ.lines().filter_map(|l| l.split_once('=')).collect();
        let allowed = ["PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "TMPDIR"];
        assert!(env.keys().all(|k| allowed.contains(k)), "{environ}");
        assert_eq!(env.get("LANG"), Some(&"C.UTF-8"), "inherited: {environ}");
        assert!(env.contains_key("PATH"), "{environ}");
        assert_eq!(written(&dir, "cwd").trim(), own.display().to_string());
        for var in ["HOME", "TMPDIR"] {
            assert_eq!(env.get(var).map(PathBuf::from), Some(own_dir(&dir)), "{var}");
        }
        assert_eq!(written(&dir, "mode").trim(), "700");
        assert!(!own.exists(), "its directory is removed once it stopped");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn no_program_outlives_its_node_killed_with_sigkill() {
        let dir = data_dir("sandbox-kill");
        let program = script(&dir, &format!("echo $$ > \"$1/pid\"\n{ANSWERS_ONE_BATCH}\nexec sleep 60"));
        let mut node = node_process(&dir, &program, &[(HELPER_HANG, "1")]);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !dir.join("answered").exists() {
            assert!(std::time::Instant::now() < deadline, "the program did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = written(&dir, "pid");
        assert!(!exited(&pid), "the program runs");
        node.kill().expect("SIGKILL");
        node.wait().expect("reaped");
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !exited(&pid) {
            assert!(std::time::Instant::now() < deadline, "program {} outlived its node", pid.trim());
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_stopped_program_takes_its_whole_process_group_with_it() {
        let dir = data_dir("sandbox-group");
        // Leaves a process of its own behind when stdin closes.
        let mut program = script(
            &dir,
            &format!("sleep 60 &\necho $! > \"$1/grandchild\"\n{ANSWERS_ONE_BATCH}\nread -r end"),
        );
        program.args = vec![dir.display().to_string()];
        let (tx, mut rx) = mpsc::channel(16);
        let mut host = ProgramHost::new(ProgramLimits::default(), &dir, tx);
        host.call(call(1, &program));
        assert!(results(&mut rx, 1).await[0].1.is_ok());
        let grandchild = written(&dir, "grandchild");
        assert!(!exited(&grandchild));
        host.retain(&BTreeSet::new());
        eventually("the program's own process is killed with it", || exited(&grandchild)).await;
        eventually("its directory is removed", || !own_dir(&dir).exists()).await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_program_starts_under_the_configured_limits() {
        let dir = data_dir("sandbox-limits");
        let mut program = script(&dir, &format!("cat /proc/$$/limits > \"$1/limits\"\n{ANSWERS_ONE_BATCH}"));
        program.args = vec![dir.display().to_string()];
        let limits = ProgramLimits {
            max_memory_bytes: Some(512 << 20),
            max_cpu_secs: Some(100),
            max_open_files: Some(64),
            ..ProgramLimits::default()
        };
        let (tx, mut rx) = mpsc::channel(16);
        let mut host = ProgramHost::new(limits, &dir, tx);
        host.call(call(1, &program));
        assert!(results(&mut rx, 1).await[0].1.is_ok());
        let text = written(&dir, "limits");
        let limit = |name: &str| {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {text}"));
            line[name.len()..].split_whitespace().take(2).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(limit("Max address space"), "536870912 536870912", "{text}");
        assert_eq!(limit("Max cpu time"), format!("100 {}", 100 + CPU_GRACE_SECS), "{text}");
        assert_eq!(limit("Max open files"), "64 64", "{text}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_program_over_its_cpu_time_limit_fails_naming_the_setting() {
        let dir = data_dir("sandbox-cpu");
        let program =
            script(&dir, "read -r hello\necho '{\"rainstorm\":1,\"stateful\":false}'\nwhile :; do :; done");
        let limits = ProgramLimits {
            max_cpu_secs: Some(1),
            batch_timeout: Duration::from_secs(15),
            ..ProgramLimits::default()
        };
        let (tx, mut rx) = mpsc::channel(16);
        let mut host = ProgramHost::new(limits, &dir, tx);
        host.call(call(1, &program));
        let why = results(&mut rx, 1).await.remove(0).1.expect_err("the batch fails");
        assert!(why.contains("SIGXCPU") && why.contains("`rainstorm.program_max_cpu_s`"), "{why}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_program_over_the_size_limit_is_refused_before_any_byte_is_fetched() {
        use rainstorm_core::hydfs::{ClientOp, FileMeta, OpOutput, Stamp, WriteKind, WriteMeta};
        let dir = data_dir("sandbox-size");
        let program = ProgramSpec { file: "ops/big".to_owned(), sha256: "ab".repeat(32), args: Vec::new() };
        let limits = ProgramLimits { max_program_bytes: 100, ..ProgramLimits::default() };
        let (tx, mut rx) = mpsc::channel(16);
        let mut host = ProgramHost::new(limits, &dir, tx);
        host.call(call(1, &program));
        // This test plays the node: the file's metadata says 200 bytes.
        let from: rainstorm_core::NodeAddr = "127.0.0.1:7001".parse().expect("an address");
        let stamp = Stamp { ts: 1, client: rainstorm_core::MemberId::new(from, 1), seq: 1 };
        let why = loop {
            match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
                Ok(Some(Input::Submit { op: ClientOp::Meta { name }, reply, .. })) => {
                    let create = WriteMeta::describe(stamp, WriteKind::Create, &[b'x'; 200], 64);
                    let meta = FileMeta {
                        name: name.clone(),
                        create: Some(create),
                        generation: 0,
                        merged: Vec::new(),
                        pending: Vec::new(),
                        incomplete: Vec::new(),
                    };
                    let _ = reply.send(Ok(OpOutput::Meta { name, meta, from }));
                }
                Ok(Some(Input::Submit { op, .. })) => {
                    panic!("`{}` asked for: the program is being fetched", op.command())
                }
                Ok(Some(Input::ProgramResult { result, .. })) => break result.expect_err("refused"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("no answer"),
            }
        };
        assert!(why.contains("200 bytes") && why.contains("`rainstorm.program_max_size_mb`"), "{why}");
        let cached: Vec<_> = std::fs::read_dir(dir.join("programs"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(cached.is_empty(), "nothing fetched into the cache: {cached:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
