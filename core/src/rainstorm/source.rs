//! A source task: its byte range of the input, read part by part and sent on as numbered lines,
//! with a checkpoint barrier wherever its leader asks for one.
//!
//! Source `i` of `n` reads the `i`-th of `n` equal byte ranges of the input (lines belong to the
//! range holding their first byte; see [`input`](super::input)), fetching at most its
//! read-ahead of parts at a time, so its memory does not grow with the input. Each line becomes
//! the tuple `<file:line, line>` and goes to the stage-1 task the job's route names: the one on
//! the same worker ([`Route::Forward`]), or the one owning the tuple's key under the first
//! operator ([`Route::Shuffle`]). A barrier for checkpoint `c` records where the next line
//! starts, so a rolled-back source resumes exactly there.
//!
//! Invariants kept here:
//! * lines leave in input order, each once per attempt, and a barrier is emitted between two
//!   lines, after every tuple read before it, with the position of the line after it;
//! * barriers are emitted for every checkpoint id above the attempt's base up to the highest
//!   trigger received, in order, each once;
//! * nothing is sent before the leader's go; with a rate, at most `credit + rate × elapsed` lines
//!   since it, where `credit` is what a live input delivered to this source between its
//!   leader's first go and this attempt's (`rate × paced_ms`) less the lines the checkpoint
//!   resumed had read (in every attempt, under every leader): after a rollback the source
//!   catches up with the backlog a live stream would have built up meanwhile, and never reads
//!   ahead of the stream. (Under a successor, lines read before it took over count against a
//!   shorter time, so the credit is smaller than the backlog, never larger.)

use std::collections::VecDeque;

use super::config::{PlantedBug, RainstormConfig};
use super::input::{Layout, LineCursor, Next};
use super::job::{CheckpointId, Route, TaskId, TupleCounts};
use super::message::{Batch, LinkMsg, Snapshot, SourceCheckpoint};
use super::operator::StageOp;
use super::outlet::Outlets;
use super::task::{partition, TaskOutput};
use super::tuple::{Tuple, MAX_TUPLE_BYTES};
use crate::time::Time;

pub struct SourceTask {
    id: TaskId,
    /// The input file's name, for the source tuples' keys.
    file: String,
    cursor: LineCursor,
    next: StageOp,
    route: Route,
    downstream: Vec<TaskId>,
    outlets: Outlets,
    /// The last barrier emitted, and the highest one asked for.
    emitted: CheckpointId,
    trigger: CheckpointId,
    /// When the leader said go.
    started: Option<Time>,
    /// Lines per second, at most.
    rate: Option<u64>,
    /// Lines a live input delivered before this attempt's go that the checkpoint resumed had
    /// not read: readable at once.
    credit: u64,
    /// A paced source wakes only at multiples of this since the go (its outlets hold lines up
    /// to `linger` anyway), releasing every line due by then: a few wakes per batch, not one
    /// per line or per millisecond.
    pace_tick: u64,
    /// Lines read in this attempt, and the counts (from the checkpoint resumed, plus those).
    lines: u64,
    counts: TupleCounts,
    /// The range was read to its end; `ended`: the end of the stream was sent.
    finished: bool,
    ended: bool,
    failed: bool,
    /// A planted bug: drop the first line after resuming.
    skip_one: bool,
    /// The next line's bytes are not here yet: pacing waits for a part, not for the clock.
    starved: bool,
    /// The number of the last line sent in this attempt (lines leave in input order, once).
    last_sent: Option<u64>,
    out: VecDeque<TaskOutput>,
}

/// Where a source's input comes from.
pub struct SourceInput {
    pub file: String,
    pub layout: Layout,
    pub range: (u64, u64),
    pub resume: SourceCheckpoint,
    pub counts: TupleCounts,
}

impl SourceTask {
    pub fn new(
        id: TaskId,
        cfg: &RainstormConfig,
        input: SourceInput,
        (next, route): (StageOp, Route),
        downstream: Vec<TaskId>,
        base: CheckpointId,
        rate: Option<u64>,
    ) -> SourceTask {
        let read_ahead =
            if cfg.bug(PlantedBug::UnboundedReadAhead) { usize::MAX / 2 } else { cfg.read_ahead as usize };
        let end = input.range.1;
        let (cursor, finished) = match input.resume {
            SourceCheckpoint::Start => (LineCursor::new(input.layout, input.range, read_ahead), false),
            SourceCheckpoint::At(pos) => (LineCursor::resume(input.layout, pos, end, read_ahead), false),
            SourceCheckpoint::Done => (LineCursor::new(input.layout, (end, end), read_ahead), true),
        };
        let outlets = Outlets::new(&downstream, cfg);
        let mut task = SourceTask {
            id,
            file: input.file,
            cursor,
            next,
            route,
            downstream,
            outlets,
            emitted: base,
            trigger: base,
            started: None,
            rate: rate.filter(|r| *r > 0),
            credit: 0,
            pace_tick: cfg.linger.0.max(1),
            lines: 0,
            counts: input.counts,
            finished,
            ended: false,
            failed: false,
            skip_one: false,
            starved: false,
            last_sent: None,
            out: VecDeque::new(),
        };
        if matches!(input.resume, SourceCheckpoint::At(_)) && cfg.bug(PlantedBug::SourceSkipsALine) {
            task.skip_one = true;
        }
        // A source has nothing to set up: its first reads go out now, before the go.
        task.out.push_back(TaskOutput::Ready);
        task
    }

    pub fn id(&self) -> TaskId {
        self.id
    }

    pub fn counts(&self) -> TupleCounts {
        self.counts
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Where the source stands, for `job <id>` on its worker.
    pub fn describe(&self) -> String {
        let at = match self.checkpoint() {
            SourceCheckpoint::Start => "start".to_owned(),
            SourceCheckpoint::At(p) => format!("line {} (byte {})", p.line, p.offset),
            SourceCheckpoint::Done => "done".to_owned(),
        };
        format!(
            "at {at}, {} lines read, barrier {}/{}, links {}",
            self.lines,
            self.emitted,
            self.trigger,
            self.outlets.describe()
        )
    }

    /// Bytes held: read-ahead and outgoing batches.
    pub fn buffered_bytes(&self) -> usize {
        self.cursor.buffered_bytes() + self.outlets.buffered_bytes()
    }

    /// What the source holds, by kind.
    pub fn buffers(&self) -> (usize, usize, usize, usize) {
        (self.cursor.buffered_bytes(), 0, self.outlets.unacked_bytes(), self.outlets.buffered_bytes())
    }

    /// Tuple batches sent so far.
    pub fn batches_sent(&self) -> u64 {
        self.outlets.batches_sent()
    }

    fn checkpoint(&self) -> SourceCheckpoint {
        if self.finished {
            return SourceCheckpoint::Done;
        }
        match self.cursor.position() {
            Some(pos) => SourceCheckpoint::At(pos),
            None if self.cursor.is_done() => SourceCheckpoint::Done,
            None => SourceCheckpoint::Start,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot { source: Some(self.checkpoint()), changes: Vec::new(), counts: self.counts }
    }

    /// The leader's go (the first one counts), with the time since the job's first go.
    pub fn go(&mut self, now: Time, paced_ms: u64) {
        if self.started.is_none() {
            self.started = Some(now);
            if let Some(rate) = self.rate {
                let delivered = paced_ms.saturating_mul(rate) / 1000;
                self.credit = delivered.saturating_sub(self.counts.consumed);
            }
        }
        self.step(now);
    }

    /// The leader asks for barriers up to `checkpoint`.
    pub fn trigger(&mut self, now: Time, checkpoint: CheckpointId) {
        self.trigger = self.trigger.max(checkpoint);
        self.step(now);
    }

    /// Part `index` of the input arrived (or could not be read).
    pub fn on_part(&mut self, now: Time, index: usize, bytes: Result<Vec<u8>, String>) {
        let result = bytes.and_then(|b| self.cursor.supply(index, b).map_err(|e| e.to_string()));
        if let Err(reason) = result {
            return self.fail(format!("cannot read part {index} of the input: {reason}"), true);
        }
        self.starved = false;
        self.step(now);
    }

    /// A message from a downstream task (only acknowledgements flow back to a source).
    pub fn on_message(&mut self, now: Time, from: TaskId, msg: LinkMsg) {
        if let LinkMsg::Ack { upto } = msg {
            self.outlets.on_ack(now, from, upto);
        }
        self.step(now);
    }

    pub fn handle_timeout(&mut self, now: Time) {
        self.outlets.handle_timeout(now);
        self.step(now);
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        let paced = match (self.started, self.rate) {
            (Some(start), Some(rate)) if !self.finished && !self.starved && !self.outlets.blocked() => {
                let due = (self.lines + 1).saturating_sub(self.credit).saturating_mul(1000).div_ceil(rate);
                Some(start + crate::time::Millis(due.div_ceil(self.pace_tick).saturating_mul(self.pace_tick)))
            }
            _ => None,
        };
        [self.outlets.poll_timeout(), paced].into_iter().flatten().min()
    }

    pub fn poll_output(&mut self) -> Option<TaskOutput> {
        if let Some(o) = self.out.pop_front() {
            return Some(o);
        }
        self.outlets.poll().map(|(to, msg)| TaskOutput::Send { to, msg })
    }

    fn fail(&mut self, reason: String, transient: bool) {
        if !self.failed {
            self.failed = true;
            self.out.push_back(TaskOutput::Failed { reason, transient });
        }
    }

    /// Lines the rate allows by `now` since the go (the credit included).
    fn allowed(&self, now: Time) -> u64 {
        match (self.started, self.rate) {
            (Some(start), Some(rate)) => {
                ((now.0.saturating_sub(start.0)).saturating_mul(rate) / 1000 + 1).saturating_add(self.credit)
            }
            _ => u64::MAX,
        }
    }

    fn step(&mut self, now: Time) {
        if self.failed {
            return;
        }
        for part in self.cursor.wanted() {
            self.out.push_back(TaskOutput::Read { part });
        }
        if self.started.is_none() {
            return;
        }
        while self.emitted < self.trigger {
            self.emitted += 1;
            // After the end of the stream a barrier has nothing to separate: the snapshot alone.
            if !self.ended {
                self.outlets.control(now, Batch::Barrier(self.emitted));
            }
            let snapshot = self.snapshot();
            self.out.push_back(TaskOutput::Snapshot { checkpoint: self.emitted, snapshot });
        }
        if self.finished {
            return self.end(now);
        }
        let allowed = self.allowed(now);
        let mut span: Option<(u64, u64)> = None;
        while !self.outlets.blocked() && self.lines < allowed {
            match self.cursor.next_line() {
                Next::Line { number, text } => {
                    if std::mem::take(&mut self.skip_one) {
                        continue;
                    }
                    if text.len() > MAX_TUPLE_BYTES {
                        let why = format!("line {number} of the input is {} bytes long, over the {MAX_TUPLE_BYTES}-byte limit of a tuple", text.len());
                        return self.fail(why, false);
                    }
                    let tuple = Tuple::source(&self.file, number, text);
                    let to = match self.route {
                        Route::Forward => self.downstream[0],
                        Route::Shuffle => match self.next.state_key(&tuple) {
                            Ok(key) => self.downstream[partition(&key, self.downstream.len())],
                            Err(e) => return self.fail(format!("cannot key {}: {e}", tuple.id), false),
                        },
                    };
                    debug_assert!(self.started.is_some(), "nothing is sent before the leader's go");
                    debug_assert!(
                        self.last_sent.is_none_or(|last| number > last),
                        "line {number} leaves after line {:?}: lines leave in input order, each once",
                        self.last_sent
                    );
                    self.last_sent = Some(number);
                    self.outlets.push(now, to, tuple);
                    self.lines += 1;
                    self.counts = self.counts.add(1, 1);
                    span = Some(span.map_or((number, number), |(first, _)| (first, number)));
                }
                Next::NeedData => {
                    self.starved = true;
                    for part in self.cursor.wanted() {
                        self.out.push_back(TaskOutput::Read { part });
                    }
                    break;
                }
                Next::Done => {
                    self.finished = true;
                    break;
                }
            }
        }
        debug_assert!(
            self.rate.is_none() || self.lines <= allowed,
            "with a rate, at most credit + rate x elapsed lines since the go"
        );
        if let Some((first, last)) = span {
            self.out.push_back(TaskOutput::SourceSent { first, last });
        }
        if self.finished {
            self.end(now);
        }
    }

    /// Sends the end of the stream (once) and reports the final snapshot.
    fn end(&mut self, now: Time) {
        if !self.ended {
            self.ended = true;
            self.outlets.control(now, Batch::End);
            self.out.push_back(TaskOutput::Finished { last: self.snapshot() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rainstorm::operator::OperatorSpec;

    const ME: TaskId = TaskId { stage: 0, index: 0 };
    const DOWN: TaskId = TaskId { stage: 1, index: 0 };

    fn parts(content: &[u8], len: usize) -> (Layout, Vec<Vec<u8>>) {
        crate::rainstorm::input::layout_of(content, len)
    }

    fn source(layout: Layout, resume: SourceCheckpoint, rate: Option<u64>) -> SourceTask {
        resumed(layout, resume, TupleCounts::default(), rate)
    }

    fn resumed(
        layout: Layout,
        resume: SourceCheckpoint,
        counts: TupleCounts,
        rate: Option<u64>,
    ) -> SourceTask {
        let cfg =
            RainstormConfig { batch_tuples: 2, window: 64, read_ahead: 2, ..RainstormConfig::default() };
        let next = OperatorSpec::parse("grep:x").and_then(|s| s.build(None)).expect("valid");
        let range = (0, layout.len());
        let input = SourceInput { file: "in".into(), layout, range, resume, counts };
        SourceTask::new(ME, &cfg, input, (next, Route::Forward), vec![DOWN], 0, rate)
    }

    /// Runs a source, answering its reads, until it has nothing more to do at `now`; returns the
    /// lines sent (and barriers as 0) and its snapshots.
    fn run(s: &mut SourceTask, now: u64, chunks: &[Vec<u8>]) -> (Vec<u64>, Vec<(u64, Snapshot)>) {
        let (mut lines, mut snaps) = (Vec::new(), Vec::new());
        loop {
            let mut reads = Vec::new();
            while let Some(o) = s.poll_output() {
                match o {
                    TaskOutput::Read { part } => reads.push(part),
                    TaskOutput::Send { msg: LinkMsg::Batch { batch: Batch::Tuples(t), .. }, .. } => {
                        lines.extend(t.iter().map(|t| t.id.line))
                    }
                    TaskOutput::Send { msg: LinkMsg::Batch { batch: Batch::Barrier(_), .. }, .. } => {
                        lines.push(0)
                    }
                    TaskOutput::Snapshot { checkpoint, snapshot } => snaps.push((checkpoint, snapshot)),
                    _ => {}
                }
            }
            if reads.is_empty() {
                return (lines, snaps);
            }
            for part in reads {
                s.on_part(Time(now), part, Ok(chunks[part].clone()));
            }
        }
    }

    #[test]
    fn a_source_sends_nothing_before_the_go_and_resumes_exactly_where_its_barrier_was() {
        let content = b"l1\nl2\nl3\nl4\nl5\n";
        let (layout, chunks) = parts(content, 4);
        let mut s = source(layout.clone(), SourceCheckpoint::Start, Some(2_000));
        let (lines, _) = run(&mut s, 0, &chunks);
        assert!(lines.is_empty(), "nothing before the go");
        s.go(Time(0), 0);
        s.handle_timeout(Time(1));
        let (lines, _) = run(&mut s, 1, &chunks);
        assert_eq!(lines, [1, 2], "a full batch went; line 3 waits in the next one");
        assert_eq!(s.counts().consumed, 3, "2 000 lines/s allows 3 lines by 1 ms");
        s.trigger(Time(1), 1);
        let (lines, snaps) = run(&mut s, 1, &chunks);
        assert_eq!(lines, [3, 0], "the barrier follows the lines read");
        let Some(SourceCheckpoint::At(pos)) = snaps[0].1.source else { panic!("{snaps:?}") };
        assert_eq!(pos.line, 4);
        assert_eq!(snaps[0].1.counts, TupleCounts { consumed: 3, emitted: 3 });
        let mut again = source(layout, SourceCheckpoint::At(pos), None);
        again.go(Time(5), 0);
        let (lines, _) = run(&mut again, 5, &chunks);
        assert_eq!(lines, [4, 5], "the rest, once");
        assert!(again.is_finished());
    }

    #[test]
    fn a_paced_source_wakes_once_per_linger_and_keeps_its_rate() {
        let content: Vec<u8> = (1..=60).flat_map(|n| format!("l{n}\n").into_bytes()).collect();
        let (layout, chunks) = parts(&content, 4096);
        let mut s = source(layout, SourceCheckpoint::Start, Some(1_000));
        let tick = RainstormConfig::default().linger.0;
        s.go(Time(100), 0);
        run(&mut s, 100, &chunks);
        let mut wakes = Vec::new();
        while let Some(at) = s.poll_timeout().filter(|_| !s.is_finished()) {
            assert!(at.0 > 100 && (at.0 - 100) % tick == 0, "a wake at {at:?} is not on a tick");
            s.handle_timeout(at);
            run(&mut s, at.0, &chunks);
            assert_eq!(s.counts().consumed, (at.0 - 100 + 1).min(60), "every line due by {at:?} left");
            wakes.push(at.0);
        }
        assert_eq!(wakes.len() as u64, 60_u64.div_ceil(tick), "one wake per tick: {wakes:?}");
    }

    #[test]
    fn a_paced_source_resumed_later_reads_the_backlog_a_live_input_built_up_then_keeps_its_rate() {
        let content: Vec<u8> = (1..=60).flat_map(|n| format!("l{n}\n").into_bytes()).collect();
        let (layout, chunks) = parts(&content, 4096);
        // The checkpoint resumed had read 10 lines; the job's first go was 30 ms before this
        // attempt's: at 1 000 lines/s a live input delivered 30, so 20 are due at once.
        // (Where it resumes does not matter to the pace: it starts at the range's start here.)
        let counts = TupleCounts { consumed: 10, emitted: 10 };
        let mut s = resumed(layout.clone(), SourceCheckpoint::Start, counts, Some(1_000));
        s.go(Time(100), 30);
        run(&mut s, 100, &chunks);
        assert_eq!(s.counts().consumed, 10 + 21, "the 20 lines due, and the one the go allows");
        let at = s.poll_timeout().expect("paced: a wake");
        assert!(at.0 > 100, "nothing more is due at the go");
        s.handle_timeout(Time(110));
        run(&mut s, 110, &chunks);
        assert!(s.counts().consumed <= 10 + 21 + 10, "then the rate: {}", s.counts().consumed);
        // A source that read more than was delivered (the credit is never negative) waits.
        let ahead = TupleCounts { consumed: 50, emitted: 50 };
        let mut s = resumed(layout, SourceCheckpoint::Start, ahead, Some(1_000));
        s.go(Time(0), 30);
        run(&mut s, 0, &chunks);
        assert_eq!(s.counts().consumed, 51, "one line at the go, as with no backlog");
    }

    #[test]
    fn barriers_missed_are_emitted_in_order_at_the_next_trigger() {
        let (layout, chunks) = parts(b"a\nb\n", 8);
        let mut s = source(layout, SourceCheckpoint::Start, None);
        s.go(Time(0), 0);
        run(&mut s, 0, &chunks);
        s.trigger(Time(1), 3);
        let (_, snaps) = run(&mut s, 1, &chunks);
        let ids: Vec<u64> = snaps.iter().map(|(c, _)| *c).collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(snaps.iter().all(|(_, s)| s.source == Some(SourceCheckpoint::Done)));
    }
}
