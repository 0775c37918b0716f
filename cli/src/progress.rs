//! Progress bars for long transfers, and a running job's counts line: drawn on stderr only when
//! it is a terminal, and for transfers only of at least [`PROGRESS_MIN_BYTES`].

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use rainstorm_runtime::files::{Progress, PROGRESS_MIN_BYTES};
use rainstorm_runtime::jobs::{JobProgress, Streamed};
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
/// stderr (input lines read, outputs so far and their rate) while stderr is a terminal.
pub async fn print_streamed(mut lines: tokio::sync::mpsc::UnboundedReceiver<Streamed>) {
    let mut counter = JobCounter::default();
    while let Some(line) = lines.recv().await {
        counter.show(line);
    }
    counter.finish();
}

/// The console side of a running job: its results, and a line of counts when stderr is a
/// terminal (`in <read>/<total> lines, <n> outputs, <rate>/s`; without a terminal the counts
/// are not printed).
#[derive(Default)]
pub struct JobCounter {
    bar: Option<ProgressBar>,
}

/// The counts line's template: the message is the input lines read of the total, the position
/// the outputs so far, `rate` their rate over the job so far.
const COUNTS_TEMPLATE: &str = "{spinner} [{elapsed_precise}] in {msg} lines, {pos} outputs, {rate}";

impl JobCounter {
    pub fn show(&mut self, line: Streamed) {
        if self.bar.is_none() && std::io::stderr().is_terminal() {
            let bar = counts_line(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(bar);
        }
        match (&self.bar, line) {
            (Some(bar), Streamed::Output(text)) => {
                bar.inc(1);
                bar.suspend(|| println!("{text}"));
            }
            (Some(bar), Streamed::Note(text)) => bar.suspend(|| eprintln!("{text}")),
            (Some(bar), Streamed::Progress(p)) => bar.set_message(p.lines()),
            (None, Streamed::Output(text)) => println!("{text}"),
            (None, Streamed::Note(text)) => eprintln!("{text}"),
            (None, Streamed::Progress(_)) => {}
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A job's counts line, drawn on `target`, before any count is known.
fn counts_line(target: ProgressDrawTarget) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target);
    let rate = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
        let secs = state.elapsed().as_secs_f64().max(1e-3);
        let _ = write!(w, "{:.1}/s", state.pos() as f64 / secs);
    };
    let style = ProgressStyle::with_template(COUNTS_TEMPLATE)
        .map(|s| s.with_key("rate", rate))
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(JobProgress::default().lines());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use indicatif::TermLike;
    use rainstorm_core::rainstorm::StageCounts;
    use std::sync::Mutex;

    /// A terminal that remembers the last line drawn (not a clearing one).
    #[derive(Clone, Debug, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if !s.trim().is_empty() {
                *self.0.lock().expect("screen") = s.to_owned();
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_counts_line_shows_input_lines_read_of_the_total_outputs_and_their_rate() {
        let screen = Screen::default();
        let bar = counts_line(ProgressDrawTarget::term_like(Box::new(screen.clone())));
        let mut counter = JobCounter { bar: Some(bar) };
        let drawn = || screen.0.lock().expect("screen").clone();
        counter.show(Streamed::Note("job 1-000abc started".into()));
        assert!(drawn().contains("in 0/? lines, 0 outputs, "), "{}", drawn());
        let stages = [StageCounts { stage: 0, consumed: 600, emitted: 600 }];
        counter.show(Streamed::Progress(JobProgress::new(1_000, &stages)));
        counter.show(Streamed::Output("a result".into()));
        counter.show(Streamed::Output("another".into()));
        let line = drawn();
        assert!(line.contains("in 600/1000 lines, 2 outputs, ") && line.ends_with("/s"), "{line}");
        counter.finish();
    }
}
