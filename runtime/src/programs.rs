//! Operator programs on a real node: fetching them, one process per task incarnation, and the
//! line protocol of `docs/OPERATORS.md`.
//!
//! The node's RainStorm worker hands each batch of a program stage to the driver as a
//! [`ProgramCall`]; [`ProgramHost`] answers every call exactly once (as [`Input::ProgramResult`]):
//! with the program's outputs, or with an error naming the operator and the batch.
//!
//! Invariants kept here:
//! * a program runs only if its bytes hash to the SHA-256 its spec names: fetched from HyDFS
//!   into `<data dir>/programs/<sha256>`, checked before every first start, replaced if not;
//! * one process per hosted incarnation `(job, task, epoch)`, which handles its calls in order;
//!   processes of incarnations the node no longer hosts are stopped ([`ProgramHost::retain`]);
//! * a program that fails (exits, answers late, against the protocol, or oversized) is killed
//!   and every later call of its incarnation fails with the same reason: the task fails and its
//!   leader restarts it from the journal, so no partial batch is ever used;
//! * the program's stderr goes to this node's log, line by line, tagged with the task; its last
//!   lines are quoted in the failure.

use crate::driver::Input;
use rainstorm_core::hydfs::{ClientOp, FileName, OpOutput};
use rainstorm_core::rainstorm::{Epoch, JobId, Output, ProgramCall, ProgramResult, ProgramSpec, TaskId};
use rainstorm_operator::{
    decode_line, decode_ready, encode_line, BatchReply, BatchRequest, Hello, ProtocolError, WireTuple,
    DEFAULT_MAX_MESSAGE_BYTES,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Limits of operator programs.
#[derive(Clone, Debug)]
pub struct ProgramLimits {
    /// From starting the process to its handshake answer.
    pub start_timeout: Duration,
    /// From sending a batch to its answer.
    pub batch_timeout: Duration,
    /// Longest message line, either way.
    pub max_line_bytes: usize,
    /// Largest program file fetched from HyDFS.
    pub max_program_bytes: u64,
}

impl Default for ProgramLimits {
    fn default() -> Self {
        ProgramLimits {
            start_timeout: Duration::from_secs(10),
            batch_timeout: Duration::from_secs(30),
            max_line_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_program_bytes: 256 << 20,
        }
    }
}

type Incarnation = (JobId, TaskId, Epoch);

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
        let key = (call.job, call.task, call.epoch);
        let tx = self.running.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = Ctx {
                limits: self.limits.clone(),
                cache: self.cache.clone(),
                node: self.node.clone(),
                fetching: self.fetching.clone(),
                label: format!("job {} {} e{}", call.job, call.task, call.epoch),
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

/// One incarnation's program: its calls in order, until the host drops the channel.
async fn serve_incarnation(ctx: Ctx, mut calls: mpsc::UnboundedReceiver<ProgramCall>) {
    let mut process: Option<Process> = None;
    let mut broken: Option<String> = None;
    let mut batch = 0u64;
    while let Some(call) = calls.recv().await {
        let token = call.token;
        let result = match &broken {
            Some(why) => Err(why.clone()),
            None => {
                batch += 1;
                let result = run_call(&ctx, &mut process, batch, call).await;
                if let Err(why) = &result {
                    broken = Some(why.clone());
                    if let Some(p) = process.take() {
                        p.kill().await;
                    }
                }
                result
            }
        };
        if ctx.node.send(Input::ProgramResult { token, result }).await.is_err() {
            break;
        }
    }
    if let Some(p) = process.take() {
        p.stop().await;
    }
}

async fn run_call(
    ctx: &Ctx,
    process: &mut Option<Process>,
    batch: u64,
    call: ProgramCall,
) -> Result<ProgramResult, String> {
    let name = format!("program:{}@{}", call.program.file, call.program.short_hash());
    let first = call.batch.tuples.first().map_or_else(String::new, |t| t.id.to_string());
    if process.is_none() {
        let path = fetch(ctx, &call.program).await.map_err(|e| format!("operator `{name}`: {e}"))?;
        let p = Process::start(ctx, &path, &call)
            .await
            .map_err(|e| format!("operator `{name}` did not start: {e}"))?;
        *process = Some(p);
    }
    let p = process.as_mut().expect("started above");
    let request = BatchRequest {
        batch,
        tuples: call.batch.tuples.iter().map(|t| WireTuple::new(t.key.clone(), t.value.clone())).collect(),
        state: p.stateful.then(|| call.batch.state.clone()),
    };
    match p.call(ctx, &request).await {
        Ok(result) => Ok(result),
        Err(e) => {
            let stderr = p.stderr_tail();
            let tail =
                if stderr.is_empty() { String::new() } else { format!("; its stderr ended: {stderr}") };
            Err(format!(
                "operator `{name}` failed on the batch of {} tuples starting at {first}: {e}{tail}",
                request.tuples.len()
            ))
        }
    }
}

/// The program's executable in the local cache, fetched from HyDFS if missing or altered.
async fn fetch(ctx: &Ctx, program: &ProgramSpec) -> Result<PathBuf, String> {
    let lock = {
        let mut map = ctx.fetching.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(program.sha256.clone()).or_default().clone()
    };
    let _guard = lock.lock().await;
    let path = ctx.cache.join(&program.sha256);
    if let Ok(bytes) = tokio::fs::read(&path).await {
        if sha256_hex(&bytes) == program.sha256 {
            return Ok(path);
        }
        warn!(event = "program_cache_bad", path = %path.display(), "cached program does not match its hash; fetching it again");
    }
    let name = FileName::new(&program.file).map_err(|e| format!("bad program file name: {e}"))?;
    let (reply, rx) = oneshot::channel();
    let op = ClientOp::Get { name };
    ctx.node
        .send(Input::Submit { op, sink: None, reply })
        .await
        .map_err(|_| "node is stopping".to_owned())?;
    let bytes = match rx.await.map_err(|_| "node is stopping".to_owned())? {
        Ok(OpOutput::Content { bytes, .. }) => bytes,
        Ok(other) => return Err(format!("unexpected answer fetching {}: {other:?}", program.file)),
        Err(e) => return Err(format!("cannot fetch {} from HyDFS: {e}", program.file)),
    };
    if bytes.len() as u64 > ctx.limits.max_program_bytes {
        return Err(format!("{} is {} bytes, over the limit", program.file, bytes.len()));
    }
    let found = sha256_hex(&bytes);
    if found != program.sha256 {
        return Err(format!(
            "{} in HyDFS hashes to {found}, not {}: refusing to run it",
            program.file, program.sha256
        ));
    }
    tokio::fs::create_dir_all(&ctx.cache)
        .await
        .map_err(|e| format!("cannot create the program cache: {e}"))?;
    let tmp = ctx.cache.join(format!("{}.{}.tmp", program.sha256, std::process::id()));
    tokio::fs::write(&tmp, &bytes).await.map_err(|e| format!("cannot cache the program: {e}"))?;
    make_executable(&tmp).await.map_err(|e| format!("cannot make the program executable: {e}"))?;
    tokio::fs::rename(&tmp, &path).await.map_err(|e| format!("cannot cache the program: {e}"))?;
    info!(event = "program_fetched", file = %program.file, hash = program.short_hash(), bytes = bytes.len(), "fetched operator program {} ({} bytes)", program.file, bytes.len());
    Ok(path)
}

#[cfg(unix)]
async fn make_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).await
}

#[cfg(not(unix))]
async fn make_executable(_path: &Path) -> std::io::Result<()> {
    Ok(())
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
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    stateful: bool,
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
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            tokio::spawn(log_stderr(BufReader::new(err), ctx.label.clone(), stderr.clone()));
        }
        info!(event = "program_started", task = %ctx.label, program = %call.program.file, pid = child.id().unwrap_or(0), "{}: started operator program {}", ctx.label, call.program.file);
        let mut p = Process { child, stdin: Some(stdin), stdout, stateful: false, stderr };
        let hello = Hello::v1_only(call.task.to_string(), call.header.clone());
        let limit = ctx.limits.max_line_bytes;
        let started = async {
            p.write(&encode_line(&hello, limit)?).await?;
            let line = read_line(&mut p.stdout, limit).await?;
            decode_ready(&line, &hello)
        };
        let ready = match tokio::time::timeout(ctx.limits.start_timeout, started).await {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                let e = p.explain(e).await;
                p.kill().await;
                return Err(format!("handshake failed: {e}"));
            }
            Err(_) => {
                p.kill().await;
                let after_ms = ctx.limits.start_timeout.as_millis() as u64;
                return Err(format!("handshake failed: {}", ProtocolError::Timeout { after_ms }));
            }
        };
        p.stateful = ready.stateful;
        Ok(p)
    }

    async fn call(&mut self, ctx: &Ctx, request: &BatchRequest) -> Result<ProgramResult, ProtocolError> {
        let limit = ctx.limits.max_line_bytes;
        let exchange = async {
            self.write(&encode_line(request, limit)?).await?;
            let line = read_line(&mut self.stdout, limit).await?;
            parse_reply(&line, request)
        };
        match tokio::time::timeout(ctx.limits.batch_timeout, exchange).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(self.explain(e).await),
            Err(_) => Err(ProtocolError::Timeout { after_ms: ctx.limits.batch_timeout.as_millis() as u64 }),
        }
    }

    async fn write(&mut self, line: &[u8]) -> Result<(), ProtocolError> {
        let stdin = self.stdin.as_mut().ok_or(ProtocolError::Eof)?;
        stdin.write_all(line).await?;
        stdin.flush().await?;
        Ok(())
    }

    /// An end of stream or broken pipe usually means the program exited: say how.
    async fn explain(&mut self, e: ProtocolError) -> ProtocolError {
        if !matches!(e, ProtocolError::Eof | ProtocolError::Io(_) | ProtocolError::Truncated { .. }) {
            return e;
        }
        match tokio::time::timeout(Duration::from_millis(500), self.child.wait()).await {
            Ok(Ok(status)) => ProtocolError::Exited(status.to_string()),
            _ => e,
        }
    }

    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// Closes stdin and gives the program a moment to exit, then kills it.
    async fn stop(mut self) {
        self.stdin.take();
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await.is_err() {
            self.kill().await;
        }
    }

    async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A program's answer to `request` (one line of its stdout, without the `\n`) as the batch's
/// result: decoded, checked against the request ([`BatchReply::validate`]), one output list per
/// input tuple and the changed state.
pub fn parse_reply(line: &[u8], request: &BatchRequest) -> Result<ProgramResult, ProtocolError> {
    let reply: BatchReply = decode_line(line)?;
    reply.validate(request)?;
    Ok(ProgramResult {
        outputs: (reply.outputs.into_iter())
            .map(|outs| outs.into_iter().map(|t| Output { key: t.key, value: t.value }).collect())
            .collect(),
        state: reply.state,
    })
}

/// Reads one line (without its `\n`) of at most `limit` bytes: how a program's stdout is read.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Err(if line.is_empty() {
                ProtocolError::Eof
            } else {
                ProtocolError::Truncated { bytes: line.len() }
            });
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > limit {
            return Err(ProtocolError::TooLong { limit });
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take + usize::from(done));
        if done {
            return Ok(line);
        }
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

    #[tokio::test]
    async fn read_line_splits_limits_and_reports_the_end() {
        let mut r = BufReader::new(&b"ab\ncd\nxyz"[..]);
        assert_eq!(read_line(&mut r, 10).await, Ok(b"ab".to_vec()));
        assert_eq!(read_line(&mut r, 10).await, Ok(b"cd".to_vec()));
        assert_eq!(read_line(&mut r, 10).await, Err(ProtocolError::Truncated { bytes: 3 }));
        let mut r = BufReader::new(&b""[..]);
        assert_eq!(read_line(&mut r, 10).await, Err(ProtocolError::Eof));
        let mut r = BufReader::new(&b"0123456789A\n"[..]);
        assert_eq!(read_line(&mut r, 10).await, Err(ProtocolError::TooLong { limit: 10 }));
    }
}
