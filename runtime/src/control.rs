//! The control socket: a Unix socket in the data dir through which scripts and tests give a node
//! the same commands as its console. Only the node's user can connect (mode 0600).
//!
//! Protocol: the client writes one command line and closes its writing half; while the command
//! runs the server may send `progress <done> <total>` lines (a large transfer), `out <text>`
//! lines (a job's results) and `note <text>` lines (a job's restarts and failures); then it
//! answers `ok` or `error` on one line, then the command's output, then closes. Streamed text
//! never holds a newline (job outputs are escaped as in the destination file). Local paths in the command are
//! resolved against the node's working directory (`rainstorm ctl` sends absolute paths).

use crate::driver::{CommandReply, NodeHandle};
use crate::files::{Progress, PROGRESS_MIN_BYTES};
use crate::jobs::Streamed;
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
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handle = handle.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, handle).await {
                    debug!(error = %e, "control connection failed");
                }
            });
        }
    });
    Ok(path)
}

async fn answer(stream: UnixStream, handle: NodeHandle) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_LINE_BYTES)).read_line(&mut line).await?;
    let cwd = std::env::current_dir().unwrap_or_default();
    let progress = Arc::new(Progress::default());
    let (out, mut streamed) = mpsc::unbounded_channel();
    let command = handle.command_streaming(line.trim(), &cwd, progress.clone(), out);
    tokio::pin!(command);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let reply = loop {
        tokio::select! {
            biased;
            Some(s) = streamed.recv() => write.write_all(streamed_line(&s).as_bytes()).await?,
            reply = &mut command => break reply,
            _ = tick.tick() => {
                let (done, total) = progress.get();
                if total >= PROGRESS_MIN_BYTES {
                    write.write_all(format!("progress {done} {total}\n").as_bytes()).await?;
                }
            }
        }
    };
    while let Ok(s) = streamed.try_recv() {
        write.write_all(streamed_line(&s).as_bytes()).await?;
    }
    write.write_all(if reply.ok { b"ok\n" } else { b"error\n" }).await?;
    write.write_all(reply.output.as_bytes()).await?;
    write.shutdown().await
}

fn streamed_line(s: &Streamed) -> String {
    let one_line = |t: &str| t.replace('\n', " ");
    match s {
        Streamed::Output(t) => format!("out {}\n", one_line(t)),
        Streamed::Note(t) => format!("note {}\n", one_line(t)),
    }
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
        reader.read_line(&mut status).await?;
        let text = status.strip_suffix('\n').unwrap_or(&status);
        if let Some(t) = text.strip_prefix("out ") {
            on_line(Streamed::Output(t.to_owned()));
            continue;
        }
        if let Some(t) = text.strip_prefix("note ") {
            on_line(Streamed::Note(t.to_owned()));
            continue;
        }
        let Some(report) = status.strip_prefix("progress ") else { break };
        let mut nums = report.split_whitespace().filter_map(|n| n.parse::<u64>().ok());
        if let (Some(done), Some(total)) = (nums.next(), nums.next()) {
            on_progress(done, total);
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
