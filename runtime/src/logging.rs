//! Logs through `tracing`: one event per line with a timestamp, to stderr and appended to a log
//! file in the data dir, so `grep 'event="failed"' <data_dir>/*.log` finds every failure.
//! `RUST_LOG` overrides the level (default `info`).
//!
//! Levels: INFO holds what an operator follows (membership events, failures, jobs received and
//! completed, tasks scheduled, started and completed, file commands completed: `hydfs_op`);
//! what happens per HyDFS request or per RainStorm batch is at DEBUG (`hydfs_request`,
//! `merged`, `job_progress`, `job_output`, `source_sent`).
//!
//! Invariant: logging never blocks the node task, and while lines keep coming a line wakes no
//! thread. A line is appended to each output's in-memory queue under a lock held only for that
//! copy; each output (stderr, the log file) has a writer thread of its own, which takes its
//! whole queue every [`FLUSH_EVERY`] (at once when it passes [`WAKE_AT_BYTES`]) and writes it
//! with one write, so a stderr nobody reads never holds up the file. A line that would take an
//! output's queue past [`QUEUED_BYTES`] is dropped there rather than waited for; its writer logs
//! how many were. (A thread woken per line, as `tracing_appender::non_blocking` does, cost a
//! node two context switches per line: a tenth of the CPU of a 4 KiB append.)
//!
//! Invariant: an idle node's writers sleep. A writer that found nothing to write for
//! [`IDLE_ROUNDS`] rounds in a row marks itself asleep and parks with no timeout; the first line
//! queued for it then wakes it (one wake, whoever queues it), and it writes that line at once
//! and goes back to its rounds. A node with nothing to log costs no wake-ups for its logs
//! (their 25 ms rounds were most of an idle cluster's context switches); a node logging more
//! often than every [`IDLE_ROUNDS`] rounds is woken by none of its lines (but the one that takes
//! a queue past [`WAKE_AT_BYTES`]).
//!
//! Invariant: the returned [`LogGuard`], dropped, has the writers write everything queued and
//! stop, waiting for them at most [`STOP_WAIT`] (an output that takes no lines, such as a
//! stderr nobody reads, never holds the process): keep it until the process ends. Lines logged
//! after that are not written.
//!
//! Invariant: the log is its user's alone. [`init`] makes the data dir 0700 (tightening an
//! existing looser one, and logging that it did) and the log file 0600, whatever the umask
//! ([`crate::private`]).

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

/// How long a dropped guard waits for the writers to write what is queued.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Queued bytes that wake the writer before [`FLUSH_EVERY`] has passed.
const WAKE_AT_BYTES: usize = 256 << 10;

/// Rounds in a row with nothing to write after which a writer sleeps until a line comes.
pub const IDLE_ROUNDS: u32 = 8;

/// Writes what is queued and stops the writer threads when dropped.
#[must_use = "dropping the guard stops the log writers"]
pub struct LogGuard {
    shared: Arc<Shared>,
    writers: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        for writer in &self.writers {
            writer.thread().unpark();
        }
        // An output that takes no more lines (a stderr nobody reads) must not hold the process.
        let deadline = std::time::Instant::now() + STOP_WAIT;
        for writer in self.writers.drain(..) {
            while !writer.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if writer.is_finished() {
                let _ = writer.join();
            }
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
    let spawn = |output: Output, out: Box<dyn Write + Send>| {
        let (shared, path) = (shared.clone(), path.clone());
        let name = match output {
            Output::Stderr => "rainstorm-log-stderr",
            Output::File | Output::Both => "rainstorm-log-file",
        };
        std::thread::Builder::new().name(name.into()).spawn(move || write_queued(&shared, output, out, &path))
    };
    let writers =
        vec![spawn(Output::Stderr, Box::new(std::io::stderr()))?, spawn(Output::File, Box::new(file))?];
    // Set before any line can be queued: a line for a sleeping writer must find it to wake it.
    let _ = shared.writers.set(writers.iter().map(|w| w.thread().clone()).collect());
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
    Ok((path, LogGuard { shared, writers }))
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

/// Lines waiting for the writers.
#[derive(Debug, Default)]
struct Queue {
    /// By output: [`Output::Stderr`], [`Output::File`].
    lines: [Vec<u8>; 2],
    /// Lines dropped since the output's writer last looked.
    dropped: [u64; 2],
    /// The guard was dropped: write what is queued, then stop.
    stopping: bool,
    /// By output: its writer sleeps until a line comes (whoever queues that line wakes it).
    asleep: [bool; 2],
    /// By output: rounds its writer has taken, whether or not it wrote anything.
    rounds: [u64; 2],
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// The writer threads, by output, to wake early.
    writers: OnceLock<Vec<std::thread::Thread>>,
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

impl Output {
    /// The queues this output's lines go to.
    fn queues(self) -> &'static [usize] {
        match self {
            Output::Stderr => &[0],
            Output::File => &[1],
            Output::Both => &[0, 1],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Output::Stderr => "stderr",
            Output::File => "the log file",
            Output::Both => "stderr and the log file",
        }
    }
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
        let mut wake = [false; 2];
        {
            let mut q = self.shared.lock();
            for &i in self.output.queues() {
                let queued = q.lines[i].len();
                if queued + line.len() > QUEUED_BYTES {
                    q.dropped[i] += 1;
                    continue;
                }
                q.lines[i].extend_from_slice(line);
                wake[i] = std::mem::take(&mut q.asleep[i])
                    || (queued < WAKE_AT_BYTES && queued + line.len() >= WAKE_AT_BYTES);
            }
        }
        if let Some(writers) = self.shared.writers.get() {
            for (writer, _) in writers.iter().zip(wake).filter(|(_, w)| *w) {
                writer.unpark();
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A writer thread: takes its output's queue, writes it, sleeps; until the guard is dropped.
fn write_queued(shared: &Shared, output: Output, mut out: Box<dyn Write + Send>, path: &Path) {
    let i = output.queues()[0];
    let mut lines = Vec::new();
    let mut failing = false;
    let mut empty_rounds = 0u32;
    loop {
        let (dropped, stopping, sleep) = {
            let mut q = shared.lock();
            q.rounds[i] += 1;
            std::mem::swap(&mut q.lines[i], &mut lines);
            let dropped = std::mem::take(&mut q.dropped[i]);
            empty_rounds = if lines.is_empty() && dropped == 0 { empty_rounds.saturating_add(1) } else { 0 };
            // Marked under the lock that showed the queue empty: a line queued after it
            // finds the mark and wakes this thread (an unpark before the park is kept).
            let sleep = empty_rounds >= IDLE_ROUNDS && !q.stopping;
            q.asleep[i] = sleep;
            (dropped, q.stopping, sleep)
        };
        if !lines.is_empty() {
            match out.write_all(&lines) {
                Ok(()) => failing = false,
                // A closed stderr is nothing to report; a log file that cannot be written is
                // said once on stderr.
                Err(e) if !failing && output == Output::File => {
                    failing = true;
                    let _ = writeln!(
                        std::io::stderr(),
                        "rainstorm: cannot write the log file {}: {e}; its lines are lost until it can be written",
                        path.display()
                    );
                }
                Err(_) => {}
            }
            lines.clear();
        }
        if dropped > 0 {
            tracing::warn!(
                event = "log_lines_dropped",
                dropped,
                "{dropped} log lines to {} were dropped: more than {} MiB of lines waited to be written",
                output.describe(),
                QUEUED_BYTES >> 20
            );
            continue; // written at once, even when stopping
        }
        if stopping {
            return;
        }
        if sleep {
            // Until a line (or the guard) wakes it; after any wake-up it takes its rounds
            // again, [`IDLE_ROUNDS`] of them before it sleeps once more.
            std::thread::park();
            empty_rounds = 0;
        } else {
            std::thread::park_timeout(FLUSH_EVERY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that keeps what it is given.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);
    impl Write for Kept {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Waits (at most 10 s) until `done` holds, else fails with `what`.
    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A writer with nothing to write stops taking rounds, and the first line queued for it
    /// wakes it: the line is written although no round would have come.
    #[test]
    fn an_idle_writer_sleeps_until_a_line_wakes_it() {
        let shared = Arc::new(Shared::default());
        let (stderr, file) = (Kept::default(), Kept::default());
        let spawn = |output, out: Kept| {
            let shared = shared.clone();
            std::thread::spawn(move || write_queued(&shared, output, Box::new(out), Path::new("test.log")))
        };
        let writers = vec![spawn(Output::Stderr, stderr.clone()), spawn(Output::File, file.clone())];
        let _ = shared.writers.set(writers.iter().map(|w| w.thread().clone()).collect());
        let to_file = QueueWriter { shared: shared.clone(), output: Output::File };
        (&to_file).write_all(b"first\n").unwrap();
        wait_for("the first line was written", || file.0.lock().unwrap().ends_with(b"first\n"));
        wait_for("both writers went to sleep", || shared.lock().asleep == [true, true]);
        let rounds = shared.lock().rounds;
        std::thread::sleep(FLUSH_EVERY * (IDLE_ROUNDS + 2));
        assert_eq!(shared.lock().rounds, rounds, "a sleeping writer takes no rounds");
        (&to_file).write_all(b"second\n").unwrap();
        wait_for("the line woke its writer", || file.0.lock().unwrap().ends_with(b"first\nsecond\n"));
        assert!(shared.lock().asleep[0], "a line for one output leaves the other's writer asleep");
        assert_eq!(shared.lock().rounds[0], rounds[0]);
        drop(LogGuard { shared, writers });
        assert!(stderr.0.lock().unwrap().is_empty());
    }

    /// An output that never takes its lines (a stderr nobody reads) does not hold up the
    /// other output, nor the process once the guard is dropped.
    #[test]
    fn a_stuck_output_holds_up_neither_the_other_nor_the_guard() {
        struct Stuck(std::sync::mpsc::Receiver<()>);
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.recv(); // never answered while the test runs
                Err(std::io::Error::other("stuck"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (_never, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared::default());
        let kept = Kept::default();
        let spawn = |output, out: Box<dyn Write + Send>| {
            let shared = shared.clone();
            std::thread::spawn(move || write_queued(&shared, output, out, Path::new("test.log")))
        };
        let writers =
            vec![spawn(Output::Stderr, Box::new(Stuck(rx))), spawn(Output::File, Box::new(kept.clone()))];
        let _ = shared.writers.set(writers.iter().map(|w| w.thread().clone()).collect());
        let both = QueueWriter { shared: shared.clone(), output: Output::Both };
        (&both).write_all(b"first\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !kept.0.lock().unwrap().starts_with(b"first\n") {
            assert!(std::time::Instant::now() < deadline, "the file's writer was held up");
            std::thread::sleep(FLUSH_EVERY);
        }
        (&both).write_all(b"second\n").unwrap();
        let started = std::time::Instant::now();
        drop(LogGuard { shared, writers });
        assert!(started.elapsed() < STOP_WAIT + Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!(&kept.0.lock().unwrap()[..], b"first\nsecond\n", "the guard had the file written");
    }

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
        assert_eq!(q.lines[0].len(), fits * line.len(), "stderr holds whole lines up to the bound");
        assert_eq!(q.lines[1].len(), fits * line.len());
        assert_eq!(q.dropped, [10, 11], "each line over the bound is counted, for each output");
        assert!(q.lines[0].split(|b| *b == b'\n').all(|l| l.is_empty() || l.len() == 999));
    }
}
