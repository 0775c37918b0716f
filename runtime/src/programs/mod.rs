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
//!   lines are quoted in the failure.

pub mod conversation;

use crate::driver::Input;
use conversation::{Conversation, ConversationLimits};
use rainstorm_core::hydfs::FileName;
use rainstorm_core::rainstorm::{Attempt, JobId, ProgramCall, ProgramResult, ProgramSpec, TaskId};
use rainstorm_operator::{Hello, ProtocolError, DEFAULT_MAX_MESSAGE_BYTES};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
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
    /// Largest program file fetched from HyDFS.
    pub max_program_bytes: u64,
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
        }
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
    pub fn new(limits: ProgramLimits, data_dir: &Path, node: mpsc::Sender<Input>) -> ProgramHost {
        ProgramHost {
            limits,
            cache: data_dir.join("programs"),
            node,
            running: BTreeMap::new(),
            fetching: Arc::default(),
        }
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
}

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
    // Fetched chunk by chunk into a file beside its place in the cache, checked, then moved in:
    // a program of any size takes a bounded amount of memory.
    let tmp = ctx.cache.join(format!("{}.{}.tmp", program.sha256, std::process::id()));
    let result = async {
        crate::files::download_file(&ctx.node, name, &tmp)
            .await
            .map_err(|e| format!("cannot fetch {} from HyDFS: {e}", program.file))?;
        let (found, len) = hash_of(&tmp).await?;
        if len > ctx.limits.max_program_bytes {
            return Err(format!("{} is {len} bytes, over the limit", program.file));
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
    child: Child,
    conversation: Conversation,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Process {
    async fn start(ctx: &Ctx, path: &Path, call: &ProgramCall) -> Result<Process, String> {
        let mut child = Command::new(path)
            .args(&call.program.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", path.display()))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            tokio::spawn(log_stderr(BufReader::new(err), ctx.label.clone(), stderr.clone()));
        }
        info!(event = "program_started", task = %ctx.label, program = %call.program.file, pid = child.id().unwrap_or(0), "{}: started operator program {}", ctx.label, call.program.file);
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
                let e = explain(&mut child, e).await;
                let _ = child.kill().await;
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
                let _ = child.kill().await;
                let after_ms = ctx.limits.start_timeout.as_millis() as u64;
                return Err(format!("handshake failed: {}", ProtocolError::Timeout { after_ms }));
            }
        };
        info!(event = "program_ready", task = %ctx.label, version = conversation.version(), stateful = conversation.stateful(), "{}: operator program speaks protocol version {}", ctx.label, conversation.version());
        Ok(Process { child, conversation, stderr })
    }

    /// An end of stream or broken pipe usually means the program exited: say how.
    async fn explain(&mut self, e: ProtocolError) -> ProtocolError {
        explain(&mut self.child, e).await
    }

    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// Closes stdin (after every request sent is written) and gives the program a moment to
    /// exit, then kills it.
    async fn stop(mut self) {
        self.conversation.close();
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await.is_err() {
            self.kill().await;
        }
    }

    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// An end of stream, a broken pipe or a truncated message usually means the program exited:
/// say how, if it did within half a second.
async fn explain(child: &mut Child, e: ProtocolError) -> ProtocolError {
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
        Ok(Ok(status)) => ProtocolError::Exited(status.to_string()),
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
}
