//! The control socket: a Unix socket in the data dir through which scripts and tests give a node
//! the same commands as its console. Only the node's user can connect (mode 0600).
//!
//! Protocol: the client writes one command line and closes its writing half; the server answers
//! `ok` or `error` on the first line, then the command's output, then closes.

use crate::driver::{CommandReply, NodeHandle};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
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
    let reply = handle.command(line.trim()).await;
    write.write_all(if reply.ok { b"ok\n" } else { b"error\n" }).await?;
    write.write_all(reply.output.as_bytes()).await?;
    write.shutdown().await
}

/// Sends one command to the node whose control socket is at `path`.
pub async fn request(path: &Path, line: &str) -> std::io::Result<CommandReply> {
    let mut stream = UnixStream::connect(path).await?;
    stream.write_all(line.as_bytes()).await?;
    stream.write_all(b"\n").await?;
    stream.shutdown().await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let (status, output) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    match status {
        "ok" => Ok(CommandReply { ok: true, output: output.to_string() }),
        "error" => Ok(CommandReply { ok: false, output: output.to_string() }),
        _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a RainStorm control socket")),
    }
}
