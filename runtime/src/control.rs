//! The control socket: a Unix socket in the data dir through which scripts and tests give a node
//! the same commands as its console. Only the node's user can connect.
//!
//! Invariant: no other user can ever connect, not even for an instant after the socket appears.
//! `bind(2)` creates the socket file with the umask's mode (0777 under a umask of 0), and a
//! `chmod` can only follow it; so the socket lives in the data dir, which [`serve`] makes 0700
//! (created so, or tightened) *before* it binds. Connecting needs search permission on every
//! directory of the path, so until the socket is chmod'ed 0600 (and after) only the owner (and
//! root) can reach it. The process umask is left alone: it is process-wide, and narrowing it
//! around the bind would race with every other thread creating files meanwhile.
//!
//! Protocol: the client writes one command line and closes its writing half; while the command
//! runs the server may send `progress <done> <total>` lines (a large transfer), `out <text>`
//! lines (a job's results), `note <text>` lines (a job's restarts and failures) and
//! `progress lines=<read>/<total> s<stage>=<in>/<out>...` lines (a job's counts, [`JobProgress`];
//! a total of 0 means not known yet); then it answers `ok` or `error` on one line, then the
//! command's output, then closes. Streamed text never holds a newline (job outputs are escaped as
//! in the destination file). A progress line the client does not understand is skipped (and
//! logged at debug level with the reason); a job progress field it does not know is ignored, so
//! nodes may add some. Local paths in the command are resolved against the node's working
//! directory (`rainstorm ctl` sends absolute paths).

use crate::driver::{CommandReply, NodeHandle};
use crate::files::Progress;
use crate::jobs::{JobProgress, Streamed};
use rainstorm_core::rainstorm::StageCounts;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tracing::debug;

/// The longest command line accepted.
const MAX_LINE_BYTES: u64 = 4096;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Serves the control socket of `handle` until the process ends.
pub fn serve(handle: NodeHandle) -> std::io::Result<PathBuf> {
    let path = socket_path(&handle.data_dir);
    // The directory first: from the bind on, it is what keeps other users out.
    let dir = &handle.data_dir;
    let context =
        |what: String| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
    let tightened =
        crate::private::dir(dir).map_err(context(format!("cannot make {} mode 700", dir.display())))?;
    if let Some(was) = tightened {
        crate::logging::log_tightened(dir, was);
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(context(format!("cannot bind {}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(crate::private::FILE_MODE))
        .map_err(context(format!("cannot make {} mode 600", path.display())))?;
    // The node never changes its working directory: it is read once, not per command.
    let cwd: Arc<Path> = std::env::current_dir().unwrap_or_default().into();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (handle, cwd) = (handle.clone(), cwd.clone());
            tokio::spawn(async move {
                if let Err(e) = answer(stream, handle, &cwd).await {
                    debug!(error = %e, "control connection failed");
                }
            });
        }
    });
    Ok(path)
}

/// Streamed lines gathered into one write, at most about this many bytes.
const STREAM_WRITE_BYTES: usize = 64 * 1024;

/// How often a large transfer's progress is reported (the first report at once).
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The next tick of `ticks`, or `None` at once if there is no ticker.
async fn next_tick(ticks: &mut Option<tokio::time::Interval>) -> Option<tokio::time::Instant> {
    match ticks {
        Some(t) => Some(t.tick().await),
        None => None,
    }
}

async fn answer(stream: UnixStream, handle: NodeHandle, cwd: &Path) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_LINE_BYTES)).read_line(&mut line).await?;
    let progress = Arc::new(Progress::default());
    let (out, mut streamed) = mpsc::unbounded_channel();
    let command = handle.command_streaming(line.trim(), cwd, progress.clone(), out);
    tokio::pin!(command);
    // Progress is reported every REPORT_EVERY once the transfer is known to be large; until
    // then no timer is armed (a small command, most of them, would only pay for registering it).
    let mut ticks: Option<tokio::time::Interval> = None;
    let reply = loop {
        tokio::select! {
            biased;
            Some(s) = streamed.recv() => {
                // One write for every line already waiting, not one system call per output.
                let mut lines = streamed_line(&s);
                while lines.len() < STREAM_WRITE_BYTES {
                    let Ok(s) = streamed.try_recv() else { break };
                    lines.push_str(&streamed_line(&s));
                }
                write.write_all(lines.as_bytes()).await?
            }
            reply = &mut command => break reply,
            () = progress.large(), if ticks.is_none() => ticks = Some(tokio::time::interval(REPORT_EVERY)),
            Some(_) = next_tick(&mut ticks) => {
                let (done, total) = progress.get();
                write.write_all(format!("progress {done} {total}\n").as_bytes()).await?;
            }
        }
    };
    let mut lines = String::new();
    while let Ok(s) = streamed.try_recv() {
        lines.push_str(&streamed_line(&s));
        if lines.len() >= STREAM_WRITE_BYTES {
            write.write_all(lines.as_bytes()).await?;
            lines.clear();
        }
    }
    // The last lines, the verdict and the output in one write (one wake-up of the client).
    lines.push_str(if reply.ok { "ok\n" } else { "error\n" });
    lines.push_str(&reply.output);
    write.write_all(lines.as_bytes()).await?;
    write.shutdown().await
}

/// The line (with its `\n`) that streams `s` to a control client; [`parse_progress`] reads a
/// progress line back.
pub fn streamed_line(s: &Streamed) -> String {
    let one_line = |t: &str| t.replace('\n', " ");
    match s {
        Streamed::Output(t) => format!("out {}\n", one_line(t)),
        Streamed::Note(t) => format!("note {}\n", one_line(t)),
        Streamed::Progress(p) => {
            let mut line = format!("progress lines={}/{}", p.lines_read, p.input_lines);
            for c in &p.stages {
                line.push_str(&format!(" s{}={}/{}", c.stage, c.consumed, c.emitted));
            }
            line.push('\n');
            line
        }
    }
}

/// What a `progress` line reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressReport {
    /// `progress <done> <total>`: bytes of a transfer.
    Transfer { done: u64, total: u64 },
    /// `progress lines=<read>/<total> s<stage>=<in>/<out>...`: a job's counts.
    Job(JobProgress),
}

/// Why a `progress` line was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProgressLineError {
    #[error("a transfer report is `<done> <total>`, not `{0}`")]
    BadTransfer(String),
    #[error("job progress field `{0}` is not `<name>=<number>/<number>`")]
    BadField(String),
    #[error("job progress field `{0}` appears twice")]
    Repeated(String),
    #[error("job progress has no `lines=` field")]
    NoLines,
}

/// Parses what follows `progress ` on a line from a node. Never panics.
pub fn parse_progress(fields: &str) -> Result<ProgressReport, ProgressLineError> {
    let words: Vec<&str> = fields.split_whitespace().collect();
    if !words.iter().any(|w| w.contains('=')) {
        return match words.as_slice() {
            [done, total] => match (done.parse(), total.parse()) {
                (Ok(done), Ok(total)) => Ok(ProgressReport::Transfer { done, total }),
                _ => Err(ProgressLineError::BadTransfer(fields.to_owned())),
            },
            _ => Err(ProgressLineError::BadTransfer(fields.to_owned())),
        };
    }
    let mut lines = None;
    let mut stages: Vec<StageCounts> = Vec::new();
    for word in words {
        let bad = || ProgressLineError::BadField(word.to_owned());
        let (name, value) = word.split_once('=').ok_or_else(bad)?;
        let stage = match name {
            "lines" => None,
            _ => match name.strip_prefix('s').map(str::parse::<u8>) {
                Some(Ok(stage)) => Some(stage),
                // A field of a newer node.
                _ => continue,
            },
        };
        let (a, b) = value.split_once('/').ok_or_else(bad)?;
        let (a, b) = (a.parse::<u64>().map_err(|_| bad())?, b.parse::<u64>().map_err(|_| bad())?);
        match stage {
            None if lines.is_some() => return Err(ProgressLineError::Repeated(name.to_owned())),
            None => lines = Some((a, b)),
            Some(stage) if stages.iter().any(|c| c.stage == stage) => {
                return Err(ProgressLineError::Repeated(name.to_owned()))
            }
            Some(stage) => stages.push(StageCounts { stage, consumed: a, emitted: b }),
        }
    }
    let (lines_read, input_lines) = lines.ok_or(ProgressLineError::NoLines)?;
    stages.sort_by_key(|c| c.stage);
    Ok(ProgressReport::Job(JobProgress { lines_read, input_lines, stages }))
}

/// Sends one command to the node whose control socket is at `path`.
pub async fn request(path: &Path, line: &str) -> std::io::Result<CommandReply> {
    request_with_progress(path, line, |_, _| {}).await
}

/// Sends one command, calling `on_progress(done, total)` for each progress report.
pub async fn request_with_progress(
    path: &Path,
    line: &str,
    on_progress: impl FnMut(u64, u64),
) -> std::io::Result<CommandReply> {
    request_streaming(path, line, on_progress, |_| {}).await
}

/// Sends one command, calling `on_progress(done, total)` for each progress report and
/// `on_line` for each streamed result or note.
pub async fn request_streaming(
    path: &Path,
    line: &str,
    mut on_progress: impl FnMut(u64, u64),
    mut on_line: impl FnMut(Streamed),
) -> std::io::Result<CommandReply> {
    let mut stream = UnixStream::connect(path).await?;
    stream.write_all(line.as_bytes()).await?;
    stream.write_all(b"\n").await?;
    stream.shutdown().await?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    loop {
        status.clear();
        // No line, or a last one cut short: the node stopped (or was killed) while the
        // command ran.
        if reader.read_line(&mut status).await? == 0 || !status.ends_with('\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the node closed the connection before it answered: it stopped or was killed",
            ));
        }
        let text = status.strip_suffix('\n').unwrap_or(&status);
        if let Some(t) = text.strip_prefix("out ") {
            on_line(Streamed::Output(t.to_owned()));
            continue;
        }
        if let Some(t) = text.strip_prefix("note ") {
            on_line(Streamed::Note(t.to_owned()));
            continue;
        }
        let Some(report) = text.strip_prefix("progress ") else { break };
        match parse_progress(report) {
            Ok(ProgressReport::Transfer { done, total }) => on_progress(done, total),
            Ok(ProgressReport::Job(p)) => on_line(Streamed::Progress(p)),
            Err(e) => {
                debug!(error = %e, line = text, "skipping a progress line this client does not understand")
            }
        }
    }
    let mut output = String::new();
    reader.read_to_string(&mut output).await?;
    match status.trim_end_matches('\n') {
        "ok" => Ok(CommandReply { ok: true, output }),
        "error" => Ok(CommandReply { ok: false, output }),
        _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a RainStorm control socket")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(lines_read: u64, input_lines: u64, stages: &[(u8, u64, u64)]) -> JobProgress {
        let stages =
            stages.iter().map(|&(stage, consumed, emitted)| StageCounts { stage, consumed, emitted });
        JobProgress { lines_read, input_lines, stages: stages.collect() }
    }

    #[test]
    fn a_job_progress_line_round_trips() {
        let p = job(600, 1_000, &[(0, 600, 600), (1, 600, 50), (2, 50, 40)]);
        let line = streamed_line(&Streamed::Progress(p.clone()));
        assert_eq!(line, "progress lines=600/1000 s0=600/600 s1=600/50 s2=50/40\n");
        let fields = line.strip_prefix("progress ").and_then(|l| l.strip_suffix('\n')).expect("a line");
        assert_eq!(parse_progress(fields), Ok(ProgressReport::Job(p)));
        let unknown = job(0, 0, &[]);
        let line = streamed_line(&Streamed::Progress(unknown.clone()));
        assert_eq!(parse_progress(&line["progress ".len()..]), Ok(ProgressReport::Job(unknown)));
        assert_eq!(parse_progress("7 100"), Ok(ProgressReport::Transfer { done: 7, total: 100 }));
        // Fields of a newer node are ignored; stages come back in order.
        assert_eq!(
            parse_progress("s1=3/2 lines=4/9 eta=12s s0=4/4"),
            Ok(ProgressReport::Job(job(4, 9, &[(0, 4, 4), (1, 3, 2)])))
        );
    }

    #[test]
    fn a_malformed_progress_line_is_a_typed_error() {
        use ProgressLineError as E;
        let cases = [
            ("", E::BadTransfer(String::new())),
            ("7", E::BadTransfer("7".into())),
            ("x y", E::BadTransfer("x y".into())),
            ("1 2 3", E::BadTransfer("1 2 3".into())),
            ("lines=4", E::BadField("lines=4".into())),
            ("lines=4/x", E::BadField("lines=4/x".into())),
            ("lines=-1/9", E::BadField("lines=-1/9".into())),
            ("lines=1/2 s0=1/99999999999999999999999", E::BadField("s0=1/99999999999999999999999".into())),
            ("lines=1/2 lines=1/2", E::Repeated("lines".into())),
            ("lines=1/2 s0=1/1 s0=2/2", E::Repeated("s0".into())),
            ("s0=1/1", E::NoLines),
            ("eta=3", E::NoLines),
        ];
        for (fields, error) in cases {
            assert_eq!(parse_progress(fields), Err(error), "{fields:?}");
        }
    }

    #[tokio::test]
    async fn the_client_passes_job_progress_on_and_skips_what_it_does_not_understand() {
        let dir = std::env::temp_dir().join(format!("rainstorm-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("control.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await.expect("command");
            let p = job(2, 5, &[(0, 2, 2), (1, 2, 1), (2, 1, 1)]);
            let lines = [
                streamed_line(&Streamed::Progress(p)),
                "progress lines=2/x s0=2/2\n".into(),
                "progress 10 20\n".into(),
                "progress bogus\n".into(),
                streamed_line(&Streamed::Output("a result".into())),
                "ok\njob done\n".into(),
            ];
            write.write_all(lines.concat().as_bytes()).await.expect("write");
            write.shutdown().await.expect("shutdown");
        });
        let (mut transfers, mut streamed) = (Vec::new(), Vec::new());
        let reply = request_streaming(&path, "job 1", |d, t| transfers.push((d, t)), |l| streamed.push(l))
            .await
            .expect("a reply");
        server.await.expect("server");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(reply.ok && reply.output == "job done\n", "{reply:?}");
        assert_eq!(transfers, [(10, 20)]);
        let p = job(2, 5, &[(0, 2, 2), (1, 2, 1), (2, 1, 1)]);
        assert_eq!(streamed, [Streamed::Progress(p), Streamed::Output("a result".into())]);
    }
}
