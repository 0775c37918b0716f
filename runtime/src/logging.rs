//! Logs through `tracing`: one event per line with a timestamp, to stderr and appended to a log
//! file in the data dir, so `grep 'event="failed"' <data_dir>/*.log` finds every failure.
//! `RUST_LOG` overrides the level (default `info`).
//!
//! Levels: INFO holds what an operator follows (membership events, failures, jobs received and
//! completed, tasks scheduled, started and completed, file commands completed: `hydfs_op`);
//! what happens per HyDFS request or per RainStorm batch is at DEBUG (`hydfs_request`,
//! `merged`, `job_progress`, `job_output`, `source_sent`).
//!
//! Invariant: logging never blocks the node task, and a line wakes no thread. A line is
//! appended to an in-memory queue under a lock held only for that copy; one writer thread takes
//! the whole queue every [`FLUSH_EVERY`] (at once when it passes [`WAKE_AT_BYTES`]) and writes
//! it to stderr and to the log file, one write each. A line that would take an output's queue
//! past [`QUEUED_BYTES`] is dropped rather than waited for; the writer logs how many were. (A
//! thread woken per line, as `tracing_appender::non_blocking` does, cost a node two context
//! switches per line: a tenth of the CPU of a 4 KiB append.)
//!
//! Invariant: the returned [`LogGuard`] writes everything queued before it is dropped, then
//! stops the writer: keep it until the process ends. Lines logged after that are not written.
//!
//! Invariant: the log is its user's alone. [`init`] makes the data dir 0700 (tightening an
//! existing looser one, and logging that it did) and the log file 0600, whatever the umask
//! ([`crate::private`]).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// Bytes of lines that may wait for each output before new lines are dropped.
pub const QUEUED_BYTES: usize = 16 << 20;

/// How long a line may wait in the queue while the queue is small.
pub const FLUSH_EVERY: Duration = Duration::from_millis(25);

/// Queued bytes that wake the writer before [`FLUSH_EVERY`] has passed.
const WAKE_AT_BYTES: usize = 256 << 10;

/// Writes what is queued and stops the writer thread when dropped.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            let _ = writer.join();
        }
    }
}

/// Installs the global subscriber; returns the log file's path and the guard that writes what
/// is queued when dropped. The data dir is created (or tightened) 0700 and the log file 0600.
pub fn init(data_dir: &Path, file_name: &str) -> std::io::Result<(PathBuf, LogGuard)> {
    let tightened = crate::private::dir(data_dir)?;
    let path = data_dir.join(file_name);
    let file = crate::private::append(&path)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let shared = Arc::new(Shared::default());
    let writer = {
        let (shared, path) = (shared.clone(), path.clone());
        std::thread::Builder::new()
            .name("rainstorm-log".into())
            .spawn(move || write_queued(&shared, file, &path))?
    };
    let _ = shared.writer.set(writer.thread().clone());
    let to = |output| QueueWriter { shared: shared.clone(), output };
    // One line formatted for both outputs, unless stderr is a terminal and gets colour.
    let installed = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let stderr = fmt::layer().with_writer(to(Output::Stderr)).with_ansi(true).with_target(false);
        let file = fmt::layer().with_writer(to(Output::File)).with_ansi(false).with_target(false);
        tracing_subscriber::registry().with(filter).with(stderr).with(file).try_init()
    } else {
        let both = fmt::layer().with_writer(to(Output::Both)).with_ansi(false).with_target(false);
        tracing_subscriber::registry().with(filter).with(both).try_init()
    };
    let _ = installed; // a process keeps the first subscriber it installed
    if let Some(mode) = tightened {
        log_tightened(data_dir, mode);
    }
    Ok((path, LogGuard { shared, writer: Some(writer) }))
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

/// Lines waiting for the writer.
#[derive(Debug, Default)]
struct Queue {
    stderr: Vec<u8>,
    file: Vec<u8>,
    /// Lines dropped since the writer last looked.
    dropped: u64,
    /// The guard was dropped: write what is queued, then stop.
    stopping: bool,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// The writer thread, to wake early.
    writer: OnceLock<std::thread::Thread>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock cannot leave the queue half-changed: it holds bytes.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where a layer's lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Stderr,
    File,
    Both,
}

/// A layer's writer: queues each line for `output`.
#[derive(Clone, Debug)]
struct QueueWriter {
    shared: Arc<Shared>,
    output: Output,
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = &'a QueueWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl Write for &QueueWriter {
    /// Takes one whole line (the formatter writes each event with one call).
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let crossed = {
            let mut guard = self.shared.lock();
            let q = &mut *guard;
            let queued = match self.output {
                Output::Stderr => q.stderr.len(),
                Output::File => q.file.len(),
                Output::Both => q.stderr.len().max(q.file.len()),
            };
            if queued + line.len() > QUEUED_BYTES {
                q.dropped += 1;
                return Ok(line.len());
            }
            if matches!(self.output, Output::Stderr | Output::Both) {
                q.stderr.extend_from_slice(line);
            }
            if matches!(self.output, Output::File | Output::Both) {
                q.file.extend_from_slice(line);
            }
            queued < WAKE_AT_BYTES && queued + line.len() >= WAKE_AT_BYTES
        };
        if crossed {
            if let Some(writer) = self.shared.writer.get() {
                writer.unpark();
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread: takes the queue, writes it, sleeps; until the guard is dropped.
fn write_queued(shared: &Shared, mut file: File, path: &Path) {
    let (mut stderr, mut to_file) = (Vec::new(), Vec::new());
    let mut file_failing = false;
    loop {
        let (dropped, stopping) = {
            let mut q = shared.lock();
            std::mem::swap(&mut q.stderr, &mut stderr);
            std::mem::swap(&mut q.file, &mut to_file);
            (std::mem::take(&mut q.dropped), q.stopping)
        };
        if !stderr.is_empty() {
            // Nothing to do if stderr is gone (a closed pipe): the file still has every line.
            let _ = std::io::stderr().write_all(&stderr);
            stderr.clear();
        }
        if !to_file.is_empty() {
            match file.write_all(&to_file) {
                Ok(()) => file_failing = false,
                Err(e) if !file_failing => {
                    file_failing = true;
                    let _ = writeln!(
                        std::io::stderr(),
                        "rainstorm: cannot write the log file {}: {e}; its lines are lost until it can be written",
                        path.display()
                    );
                }
                Err(_) => {}
            }
            to_file.clear();
        }
        if dropped > 0 {
            tracing::warn!(
                event = "log_lines_dropped",
                dropped,
                "{dropped} log lines were dropped: more than {} MiB of lines waited to be written",
                QUEUED_BYTES >> 20
            );
            continue; // written at once, even when stopping
        }
        if stopping {
            return;
        }
        std::thread::park_timeout(FLUSH_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_whole_lines_and_counts_them() {
        let shared = Arc::new(Shared::default());
        let (both, file) = (
            QueueWriter { shared: shared.clone(), output: Output::Both },
            QueueWriter { shared: shared.clone(), output: Output::File },
        );
        let line = [b'x'; 999].iter().copied().chain([b'\n']).collect::<Vec<u8>>();
        let fits = QUEUED_BYTES / line.len();
        for _ in 0..fits + 10 {
            assert_eq!((&both).write(&line).unwrap(), line.len(), "a dropped line is not an error");
        }
        assert_eq!((&file).write(&line).unwrap(), line.len());
        let q = shared.lock();
        assert_eq!(q.stderr.len(), fits * line.len(), "stderr holds whole lines up to the bound");
        assert_eq!(q.file.len(), fits * line.len());
        assert_eq!(q.dropped, 11, "each line over the bound is counted, for either output");
        assert!(q.stderr.split(|b| *b == b'\n').all(|l| l.is_empty() || l.len() == 999));
    }
}
