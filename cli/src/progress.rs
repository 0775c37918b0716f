//! Progress bars for long transfers: drawn on stderr only when it is a terminal, and only for
//! transfers of at least [`PROGRESS_MIN_BYTES`].

use indicatif::{ProgressBar, ProgressStyle};
use rainstorm_runtime::files::{Progress, PROGRESS_MIN_BYTES};
use rainstorm_runtime::jobs::Streamed;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

/// A bar that appears once a transfer is known to be large enough.
#[derive(Default)]
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    /// Shows `done` of `total` bytes (nothing when stderr is not a terminal or `total` is small).
    pub fn update(&mut self, done: u64, total: u64) {
        if total < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar
        });
        bar.set_length(total);
        bar.set_position(done.min(total));
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Runs `fut` while drawing the progress it reports.
pub async fn with_bar<F: Future>(progress: Arc<Progress>, fut: F) -> F::Output {
    let mut bar = Bar::default();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tokio::pin!(fut);
    let out = loop {
        tokio::select! {
            out = &mut fut => break out,
            _ = tick.tick() => {
                let (done, total) = progress.get();
                bar.update(done, total);
            }
        }
    };
    bar.finish();
    out
}

/// Prints a job's streamed results on stdout and its notes on stderr, with a line of counts on
/// stderr (outputs so far and their rate) while stderr is a terminal.
pub async fn print_streamed(mut lines: tokio::sync::mpsc::UnboundedReceiver<Streamed>) {
    let mut counter = JobCounter::default();
    while let Some(line) = lines.recv().await {
        counter.show(line);
    }
    counter.finish();
}

/// The console side of a running job: its results and a line of counts.
#[derive(Default)]
pub struct JobCounter {
    bar: Option<ProgressBar>,
}

impl JobCounter {
    pub fn show(&mut self, line: Streamed) {
        if self.bar.is_none() && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            let style =
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} outputs ({per_sec})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(bar);
        }
        match (&self.bar, line) {
            (Some(bar), Streamed::Output(text)) => {
                bar.inc(1);
                bar.suspend(|| println!("{text}"));
            }
            (Some(bar), Streamed::Note(text)) => bar.suspend(|| eprintln!("{text}")),
            (None, Streamed::Output(text)) => println!("{text}"),
            (None, Streamed::Note(text)) => eprintln!("{text}"),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
