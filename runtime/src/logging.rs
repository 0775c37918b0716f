//! Logs through `tracing`: one event per line with a timestamp, to stderr and appended to a log
//! file in the data dir, so `grep 'event="failed"' <data_dir>/*.log` finds every failure.
//! `RUST_LOG` overrides the level (default `info`).
//!
//! Levels: INFO holds what an operator follows (membership events, failures, jobs received and
//! completed, tasks scheduled, started and completed, file commands completed: `hydfs_op`);
//! what happens per HyDFS request or per RainStorm batch is at DEBUG (`hydfs_request`,
//! `merged`, `job_progress`, `job_output`, `source_sent`).
//!
//! Invariant: logging never blocks the node task. Each output is written by a thread of its own
//! through a queue (`tracing_appender::non_blocking`, buffered, flushed whenever its queue runs
//! empty); a burst of more than [`QUEUED_LINES`] lines waiting drops lines rather than wait. The
//! returned [`LogGuard`] flushes what is queued when it is dropped: keep it until the process
//! ends.
//!
//! Invariant: the log is its user's alone. [`init`] makes the data dir 0700 (tightening an
//! existing looser one, and logging that it did) and the log file 0600, whatever the umask
//! ([`crate::private`]).

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// Lines that may wait for each output's writer thread before new ones are dropped.
pub const QUEUED_LINES: usize = 128_000;

/// Flushes the logs' queues when dropped.
#[must_use = "dropping the guard stops the log writers"]
pub struct LogGuard {
    _file: WorkerGuard,
    _stderr: WorkerGuard,
}

/// Installs the global subscriber; returns the log file's path and the guard that flushes the
/// logs when dropped. The data dir is created (or tightened) 0700 and the log file 0600.
pub fn init(data_dir: &Path, file_name: &str) -> std::io::Result<(PathBuf, LogGuard)> {
    let tightened = crate::private::dir(data_dir)?;
    let path = data_dir.join(file_name);
    let file = crate::private::append(&path)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (stderr, stderr_guard) = writer(BufWriter::new(std::io::stderr()), "rainstorm-log-stderr");
    let (file, file_guard) = writer(BufWriter::new(file), "rainstorm-log-file");
    let stderr = fmt::layer().with_writer(stderr).with_ansi(colour).with_target(false);
    let file = fmt::layer().with_writer(file).with_ansi(false).with_target(false);
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(file).try_init();
    if let Some(mode) = tightened {
        log_tightened(data_dir, mode);
    }
    Ok((path, LogGuard { _file: file_guard, _stderr: stderr_guard }))
}

/// Logs that the data dir `dir` had mode `was` and is now 0700.
pub(crate) fn log_tightened(dir: &Path, was: u32) {
    tracing::warn!(
        event = "data_dir_tightened",
        path = %dir.display(),
        was = format!("{was:o}"),
        "data dir {} was mode {was:o}, open to other users; it is now 700",
        dir.display()
    );
}

fn writer<W: std::io::Write + Send + 'static>(
    out: W,
    thread: &str,
) -> (tracing_appender::non_blocking::NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name(thread)
        .finish(out)
}
