//! Read-ahead of large records for sequential reads (a `get`, a replica fetching a file's parts,
//! the scrubber): while the node task handles one record, reader threads of their own read the
//! bytes after it with direct I/O, so the next read finds them in memory instead of the node
//! task waiting for the disk. Without it, serving a 1 GiB `get` kept the node task blocked in
//! `pread` for 60% of the transfer.
//!
//! Invariants:
//! * a span is read only below the end of the records its segment held when it was asked for
//!   (`valid`). Records are never rewritten in place (a segment is appended to, and removed
//!   whole), so a span's bytes never go stale while its segment exists: the storage calls
//!   [`ReadAhead::forget`] before a segment is removed and [`ReadAhead::clear`] when it wipes;
//! * read-ahead starts only for a large read that begins where the last one ended (past at
//!   most a pad record): scattered reads cost no extra disk reads;
//! * at most [`SPANS`] spans of [`SPAN_BYTES`] are held or being read, whatever the reads;
//! * bytes read ahead are trusted no more than a direct read's: the caller checks the record's
//!   header and CRC either way. A span whose read failed is dropped, and the caller reads the
//!   record itself.

use crate::direct::{AlignedBuf, ALIGN};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

/// Bytes of one span; spans start at multiples of it.
pub const SPAN_BYTES: u64 = 1 << 20;
/// Spans held or being read at once, over all segments.
pub const SPANS: usize = 6;
/// Spans asked for ahead of a sequential read.
const AHEAD: u64 = 4;
/// Threads reading spans (a disk serves a few reads at once).
const READERS: usize = 2;

const _: () = assert!(SPAN_BYTES.is_multiple_of(ALIGN), "spans are read with direct I/O");

/// A span's state.
#[derive(Debug)]
enum Span {
    /// Being read by a reader thread; `id` matches its answer.
    Reading { id: u64 },
    /// Read: `buf.take(SPAN_BYTES)[..got]` holds the span's first `got` bytes.
    Ready { buf: AlignedBuf, got: usize },
}

/// What a reader thread is asked to read.
struct Job {
    id: u64,
    file: Arc<File>,
    start: u64,
    /// Bytes to read from `start` (at most a span; the rest of the span is not asked for).
    valid: u64,
    buf: AlignedBuf,
}

/// A reader thread's answer: the bytes read into `buf`, or why not.
struct Done {
    id: u64,
    buf: AlignedBuf,
    got: std::io::Result<usize>,
}

/// The read-ahead of one storage directory.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// Spans by (segment, start).
    spans: BTreeMap<(u64, u64), Span>,
    /// Where the last large read ended: (segment, offset).
    last_end: Option<(u64, u64)>,
    /// Buffers of dropped spans, for the next ones.
    free: Vec<AlignedBuf>,
    next_id: u64,
    readers: Option<Readers>,
    /// Reads served from spans read ahead.
    served: u64,
}

#[derive(Debug)]
struct Readers {
    jobs: Sender<Job>,
    done: Receiver<Done>,
}

impl ReadAhead {
    /// The bytes `[from, to)` of `segment` if spans read ahead hold them all, waiting for a span
    /// still being read: the first `head.len()` into `head`, the rest returned. `None` if any
    /// span is missing or failed (the caller reads the bytes itself).
    pub fn take(&mut self, segment: u64, from: u64, to: u64, head: &mut [u8]) -> Option<Vec<u8>> {
        debug_assert!(from + head.len() as u64 <= to);
        if self.spans.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity((to - from) as usize - head.len());
        let mut at = from;
        while at < to {
            let start = at / SPAN_BYTES * SPAN_BYTES;
            if matches!(self.spans.get(&(segment, start))?, Span::Reading { .. }) {
                self.wait_for(segment, start);
            }
            let (buf, got) = self.ready(segment, start)?;
            let (skip, end) = ((at - start) as usize, (to.min(start + SPAN_BYTES) - start) as usize);
            if end > got {
                return None;
            }
            let mut bytes = &buf[skip..end];
            let into_head = ((from + head.len() as u64).saturating_sub(at) as usize).min(bytes.len());
            if into_head > 0 {
                let at_head = (at - from) as usize;
                head[at_head..at_head + into_head].copy_from_slice(&bytes[..into_head]);
                bytes = &bytes[into_head..];
            }
            out.extend_from_slice(bytes);
            at = start + end as u64;
        }
        // Spans wholly behind this read are done with.
        let behind: Vec<(u64, u64)> = self
            .spans
            .range((segment, 0)..(segment, to))
            .map(|(k, _)| *k)
            .filter(|(_, s)| s + SPAN_BYTES <= to)
            .collect();
        for key in behind {
            self.drop_span(key);
        }
        self.served += 1;
        Some(out)
    }

    /// Reads served from spans read ahead so far.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// A large read of `[from, to)` of `segment`, whose records end at `records_end`, happened:
    /// if it followed the last one, the spans after it are asked for.
    pub fn advise(&mut self, segment: u64, from: u64, to: u64, records_end: u64, file: &Arc<File>) {
        let sequential =
            self.last_end.is_some_and(|(s, end)| s == segment && from >= end && from - end <= 2 * ALIGN);
        self.last_end = Some((segment, to));
        if !sequential {
            return;
        }
        let first = to / SPAN_BYTES * SPAN_BYTES;
        for k in 0..AHEAD {
            let start = first + k * SPAN_BYTES;
            if start >= records_end {
                break;
            }
            if self.spans.contains_key(&(segment, start)) {
                continue;
            }
            if self.spans.len() >= SPANS && !self.evict_other_than(segment) {
                break;
            }
            let valid = (records_end - start).min(SPAN_BYTES);
            self.ask(segment, start, valid, file);
        }
        debug_assert!(self.spans.len() <= SPANS, "at most SPANS spans are held or read");
    }

    /// Segment `segment` is about to be removed: its spans go.
    pub fn forget(&mut self, segment: u64) {
        let keys: Vec<(u64, u64)> =
            self.spans.range((segment, 0)..=(segment, u64::MAX)).map(|(k, _)| *k).collect();
        for key in keys {
            self.drop_span(key);
        }
        if self.last_end.is_some_and(|(s, _)| s == segment) {
            self.last_end = None;
        }
    }

    /// Every segment goes (a wipe).
    pub fn clear(&mut self) {
        let keys: Vec<(u64, u64)> = self.spans.keys().copied().collect();
        for key in keys {
            self.drop_span(key);
        }
        self.last_end = None;
    }

    fn ask(&mut self, segment: u64, start: u64, valid: u64, file: &Arc<File>) {
        let readers = self.readers.get_or_insert_with(start_readers);
        self.next_id += 1;
        let id = self.next_id;
        let buf = self.free.pop().unwrap_or_default();
        let job = Job { id, file: file.clone(), start, valid, buf };
        if readers.jobs.send(job).is_ok() {
            self.spans.insert((segment, start), Span::Reading { id });
        }
    }

    /// The bytes of a ready span.
    fn ready(&mut self, segment: u64, start: u64) -> Option<(&[u8], usize)> {
        match self.spans.get_mut(&(segment, start))? {
            Span::Ready { buf, got } => Some((&buf.take(SPAN_BYTES as usize)[..], *got)),
            Span::Reading { .. } => None,
        }
    }

    /// Waits until the span at `(segment, start)` is read (or dropped, if its read failed),
    /// taking in the other answers that come first.
    fn wait_for(&mut self, segment: u64, start: u64) {
        while let Some(Span::Reading { .. }) = self.spans.get(&(segment, start)) {
            let Some(readers) = &self.readers else { return };
            let Ok(done) = readers.done.recv() else {
                self.spans.remove(&(segment, start));
                return;
            };
            self.on_done(done);
        }
    }

    /// Files a reader's answer under its span, if the span is still wanted.
    fn on_done(&mut self, done: Done) {
        let key = self
            .spans
            .iter()
            .find(|(_, s)| matches!(s, Span::Reading { id } if *id == done.id))
            .map(|(k, _)| *k);
        match (key, done.got) {
            (Some(key), Ok(got)) => {
                self.spans.insert(key, Span::Ready { buf: done.buf, got });
            }
            (Some(key), Err(e)) => {
                tracing::debug!(error = %e, segment = key.0, at = key.1, "read-ahead failed; the record is read when asked");
                self.spans.remove(&key);
                self.free.push(done.buf);
            }
            (None, _) => self.free.push(done.buf),
        }
    }

    /// Drops the ready span least likely needed: one of another segment than `segment`.
    fn evict_other_than(&mut self, segment: u64) -> bool {
        let victim = self
            .spans
            .iter()
            .find(|((s, _), span)| *s != segment && matches!(span, Span::Ready { .. }))
            .map(|(k, _)| *k);
        match victim {
            Some(key) => {
                self.drop_span(key);
                true
            }
            None => false,
        }
    }

    fn drop_span(&mut self, key: (u64, u64)) {
        match self.spans.remove(&key) {
            Some(Span::Ready { buf, .. }) => self.free.push(buf),
            // Its answer finds no span and gives the buffer back.
            Some(Span::Reading { .. }) | None => {}
        }
        self.free.truncate(SPANS);
    }
}

fn start_readers() -> Readers {
    let (jobs, job_rx) = channel::<Job>();
    let (done_tx, done) = channel::<Done>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    for i in 0..READERS {
        let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
        let spawned = std::thread::Builder::new().name(format!("hydfs-read-{i}")).spawn(move || loop {
            let job = job_rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
            let Ok(mut job) = job else { return };
            let got = read_span(&job.file, job.buf.take(SPAN_BYTES as usize), job.start, job.valid);
            if done_tx.send(Done { id: job.id, buf: job.buf, got }).is_err() {
                return;
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a read-ahead thread; large reads wait for the disk");
        }
    }
    Readers { jobs, done }
}

/// Reads up to `valid` bytes at `start` (aligned) into `buf` (a span, aligned): how many came.
fn read_span(file: &File, buf: &mut [u8], start: u64, valid: u64) -> std::io::Result<usize> {
    let want = (valid.div_ceil(ALIGN) * ALIGN) as usize;
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..want], start + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got.min(valid as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file of `len` bytes, each its offset's low byte mixed with `salt`.
    fn file_of(len: u64, salt: u8) -> (Arc<File>, PathBuf) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rainstorm-read-ahead-{}-{n}", std::process::id()));
        let bytes: Vec<u8> = (0..len).map(|i| (i as u8) ^ salt).collect();
        let mut f = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        f.write_all(&bytes).unwrap();
        (Arc::new(f), path)
    }

    fn expected(from: u64, to: u64, salt: u8) -> Vec<u8> {
        (from..to).map(|i| (i as u8) ^ salt).collect()
    }

    use std::path::PathBuf;

    /// Reads of 300 KiB records one after another: from the third on, each is served from
    /// spans read ahead, byte for byte, and never more than `SPANS` spans are held.
    #[test]
    fn sequential_reads_are_served_from_spans_read_ahead() {
        const RECORD: u64 = 300 << 10;
        let (file, path) = file_of(20 * RECORD, 7);
        let mut ahead = ReadAhead::default();
        for k in 0..20 {
            let (from, to) = (k * RECORD, (k + 1) * RECORD);
            let mut head = [0u8; 24];
            let got = ahead.take(0, from, to, &mut head);
            if k >= 2 {
                let data = got.unwrap_or_else(|| panic!("record {k} was read ahead"));
                assert_eq!(&head[..], &expected(from, from + 24, 7)[..]);
                assert_eq!(data, expected(from + 24, to, 7), "record {k}");
            }
            ahead.advise(0, from, to, 20 * RECORD, &file);
            assert!(ahead.spans.len() <= SPANS);
        }
        assert_eq!(ahead.served(), 18);
        let _ = std::fs::remove_file(path);
    }

    /// Reads that jump about start no read-ahead; spans end where the records did when they
    /// were asked for, so bytes written after that are never served from them.
    #[test]
    fn scattered_reads_read_nothing_ahead_and_spans_stop_at_the_records_end() {
        const RECORD: u64 = 100 << 10;
        let (file, path) = file_of(40 * RECORD, 3);
        let mut ahead = ReadAhead::default();
        for k in [5, 1, 30, 12, 2] {
            ahead.advise(0, k * RECORD, (k + 1) * RECORD, 40 * RECORD, &file);
        }
        assert!(ahead.spans.is_empty(), "no span is read for scattered reads");
        // Two in a row, but the records then ended 10 bytes into the next record.
        ahead.advise(0, 0, RECORD, 2 * RECORD + 10, &file);
        ahead.advise(0, RECORD, 2 * RECORD, 2 * RECORD + 10, &file);
        let mut head = [0u8; 0];
        assert_eq!(
            ahead.take(0, 2 * RECORD, 2 * RECORD + 10, &mut head),
            Some(expected(2 * RECORD, 2 * RECORD + 10, 3))
        );
        assert_eq!(
            ahead.take(0, 2 * RECORD, 3 * RECORD, &mut head),
            None,
            "bytes past the records' end then"
        );
        // A segment forgotten (removed) or a wipe drops its spans.
        ahead.advise(0, 2 * RECORD, 3 * RECORD, 40 * RECORD, &file);
        assert!(!ahead.spans.is_empty());
        ahead.forget(0);
        assert!(ahead.spans.is_empty());
        assert_eq!(ahead.take(0, 3 * RECORD, 4 * RECORD, &mut head), None);
        let _ = std::fs::remove_file(path);
    }
}
