//! Task journals: the durable record that makes a task's processing exactly-once.
//!
//! Before acknowledging an input batch, a task appends ONE [`Record`] to its journal file in
//! HyDFS describing everything processing that batch changed: which input it consumed, the
//! output batches it produced (with their link sequence numbers) and its keyed-state changes.
//! A restarted task decodes the journal ([`decode_all`]), folds it into a [`Recovered`] and
//! resumes: links restart from `delivered` / `next_out`, `unacked` batches are resent (receivers
//! drop the already-processed ones as duplicates), operators see `state`.
//!
//! A journal file is a concatenation of frames, one per record:
//!
//! ```text
//! offset  size  field
//! 0       2     magic "RJ"
//! 2       1     format version (currently 2; version 1, without tuple counts, is refused)
//! 3       4     payload length, little endian (at most MAX_RECORD_BYTES)
//! 7       len   payload: the bincode-encoded Record (fixed-width integers, little endian)
//! 7+len   4     CRC32C over bytes [0, 7+len)
//! ```
//!
//! Compaction. Journal files are numbered by generation ([`journal_name`]). When
//! [`should_compact`] says so, a task at generation `g` creates generation `g+1` whose first
//! record is [`Record::Snapshot`] of its current [`Recovered`]; once that create is acknowledged
//! it appends [`Record::Continued`]` { generation: g+1 }` to generation `g` and journals on in
//! `g+1`. Recovery starts at the newest generation the leader knows and follows `Continued`
//! forward, so it reads at most one snapshot plus a bounded tail per generation it passes.
//!
//! Invariants kept here:
//! * a record is whole or rejected: decoding any bytes returns records or a typed
//!   [`JournalError`] naming the offset, never panics, never allocates past the frame limit;
//!   a record that does not fit the history is rejected by [`Recovered::apply`] with no effect;
//! * replay is deterministic (ordered maps only) and accepts only histories a task can write:
//!   inputs per upstream link and outputs per downstream link numbered 1, 2, 3... without gaps,
//!   acknowledgements only of batches sent, nothing after `Continued`;
//! * snapshot + tail == full history: replaying `[Snapshot(prefix.snapshot())] + tail` gives the
//!   same state as replaying `prefix + tail` (only the record count differs), tuple counts
//!   included: a snapshot carries them, so they survive compaction and restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bincode::Options;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use super::link::LinkSeq;
use super::tuple::Tuple;
use crate::hydfs::{FileName, NameError};
use crate::wire::bincode_options as options;

/// The largest accepted record payload, in bytes.
pub const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;
/// The current journal frame format version. Version 2 added tuple counts
/// ([`Record::Processed`]'s `consumed`, [`Snapshot::counts`]); a version 1 frame is refused.
pub const JOURNAL_VERSION: u8 = 2;

const MAGIC: [u8; 2] = *b"RJ";
const HEADER_BYTES: usize = 7;
const CRC_BYTES: usize = 4;

/// A task of a job: `stage` 0 is the source, 1.. the operator stages; `index` within the stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskId {
    pub stage: u8,
    pub index: u32,
}

/// `s<stage>-t<index>`, as in journal names.
impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}-t{}", self.stage, self.index)
    }
}

/// An output batch: batch `seq` on the link to task `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutBatch {
    pub to: TaskId,
    pub seq: LinkSeq,
    pub tuples: Vec<Tuple>,
}

/// How many tuples a task has taken in and put out, as its journal shows (a restarted task
/// continues its predecessor's counts). Only journaled work counts, so a batch processed again
/// after a failed append or a restart is counted once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TupleCounts {
    /// Input tuples processed (a source: input lines sent).
    pub consumed: u64,
    /// Output tuples produced (a source: one per line sent).
    pub emitted: u64,
}

impl TupleCounts {
    /// These counts plus `consumed` inputs that produced `emitted` outputs (saturating).
    pub fn add(self, consumed: u64, emitted: u64) -> TupleCounts {
        TupleCounts {
            consumed: self.consumed.saturating_add(consumed),
            emitted: self.emitted.saturating_add(emitted),
        }
    }
}

/// Everything a task has to remember, as of one point of its journal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The last input batch processed, per upstream task.
    pub delivered: BTreeMap<TaskId, LinkSeq>,
    /// The next output batch number, per downstream task (1 if absent).
    pub next_out: BTreeMap<TaskId, LinkSeq>,
    /// Output batches known acknowledged, per downstream task (0 if absent).
    pub acked: BTreeMap<TaskId, LinkSeq>,
    pub state: BTreeMap<String, String>,
    /// Output batches not known acknowledged, in journal order (increasing `seq` per link).
    pub unacked: Vec<OutBatch>,
    /// Tuples processed and produced up to this point.
    pub counts: TupleCounts,
}

/// One journal entry: one atomic HyDFS append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Input batch `seq` from `from`, of `consumed` tuples, was processed (a source task uses its
    /// own id and its source batch number): it produced `outputs` and these keyed-state changes
    /// (`None` deletes).
    Processed {
        from: TaskId,
        seq: LinkSeq,
        consumed: u64,
        outputs: Vec<OutBatch>,
        state: Vec<(String, Option<String>)>,
    },
    /// `to` has acknowledged our batches up to `upto` (journaled lazily).
    Acked { to: TaskId, upto: LinkSeq },
    /// The whole task state; replaces everything before it.
    Snapshot(Snapshot),
    /// The journal goes on in generation `generation`; must be the last record of a file.
    Continued { generation: u32 },
}

/// Why journal bytes or a journal history were rejected. Offsets are byte offsets of the
/// offending frame; indexes are positions of the offending record.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum JournalError {
    #[error("record of {len} payload bytes exceeds the {MAX_RECORD_BYTES}-byte limit")]
    RecordTooLarge { len: usize },
    #[error("frame at offset {offset} is truncated: it needs {needed} bytes, {available} remain")]
    Truncated { offset: usize, needed: usize, available: usize },
    #[error("bad magic bytes at offset {offset} (not a journal frame)")]
    BadMagic { offset: usize },
    #[error(
        "frame at offset {offset} has unknown journal version {found} (this build reads {JOURNAL_VERSION})"
    )]
    UnknownVersion { offset: usize, found: u8 },
    #[error("frame at offset {offset} declares {len} payload bytes, over the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge { offset: usize, len: usize },
    #[error("checksum mismatch in the frame at offset {offset}")]
    BadChecksum { offset: usize },
    #[error("malformed record in the frame at offset {offset}: {reason}")]
    Malformed { offset: usize, reason: String },
    #[error("record {index}: batch {found} from {from} skips ahead (expected {expected})")]
    Gap { index: usize, from: TaskId, expected: LinkSeq, found: LinkSeq },
    #[error("record {index}: batch {found} from {from} was already processed (up to {delivered})")]
    Duplicate { index: usize, from: TaskId, delivered: LinkSeq, found: LinkSeq },
    #[error("record {index}: output batch {found} to {to} is out of order (expected {expected})")]
    OutputOutOfOrder { index: usize, to: TaskId, expected: LinkSeq, found: LinkSeq },
    #[error("record {index}: output sequence numbers to {to} overflow")]
    SeqOverflow { index: usize, to: TaskId },
    #[error("record {index}: ack up to {upto} from {to}, but only batches below {next_out} were sent")]
    AckBeyondSent { index: usize, to: TaskId, upto: LinkSeq, next_out: LinkSeq },
    #[error("record {index}: snapshot's acked, next_out and unacked batches disagree for link to {to}")]
    BadSnapshot { index: usize, to: TaskId },
    #[error("record {index} follows a `Continued` record, which must be last")]
    AfterContinued { index: usize },
}

/// Encodes one record as one frame (one HyDFS append).
pub fn encode(record: &Record) -> Result<Vec<u8>, JournalError> {
    let too_large = |_| JournalError::RecordTooLarge { len: usize::MAX };
    let len = options(usize::MAX).serialized_size(record).map_err(too_large)? as usize;
    if len > MAX_RECORD_BYTES {
        return Err(JournalError::RecordTooLarge { len });
    }
    let mut frame = Vec::with_capacity(HEADER_BYTES + len + CRC_BYTES);
    frame.extend_from_slice(&MAGIC);
    frame.push(JOURNAL_VERSION);
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    options(MAX_RECORD_BYTES).serialize_into(&mut frame, record).map_err(too_large)?;
    let crc = crc32c::crc32c(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(frame.len(), HEADER_BYTES + len + CRC_BYTES);
    Ok(frame)
}

/// Decodes a whole journal file. Never panics on any input; an empty file has no records.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Record>, JournalError> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let truncated = |needed| JournalError::Truncated { offset, needed, available: rest.len() };
        if rest.len() < HEADER_BYTES {
            return Err(truncated(HEADER_BYTES + CRC_BYTES));
        }
        if rest[0..2] != MAGIC {
            return Err(JournalError::BadMagic { offset });
        }
        if rest[2] != JOURNAL_VERSION {
            return Err(JournalError::UnknownVersion { offset, found: rest[2] });
        }
        let len = u32::from_le_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
        if len > MAX_RECORD_BYTES {
            return Err(JournalError::TooLarge { offset, len });
        }
        let needed = HEADER_BYTES + len + CRC_BYTES;
        if rest.len() < needed {
            return Err(truncated(needed));
        }
        let (body, trailer) = rest[..needed].split_at(HEADER_BYTES + len);
        if crc32c::crc32c(body).to_le_bytes() != trailer {
            return Err(JournalError::BadChecksum { offset });
        }
        let record = options(len)
            .deserialize(&body[HEADER_BYTES..])
            .map_err(|e| JournalError::Malformed { offset, reason: e.to_string() })?;
        records.push(record);
        offset += needed;
    }
    Ok(records)
}

/// A task's state after replaying its journal: where to resume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub delivered: BTreeMap<TaskId, LinkSeq>,
    pub next_out: BTreeMap<TaskId, LinkSeq>,
    pub acked: BTreeMap<TaskId, LinkSeq>,
    pub state: BTreeMap<String, String>,
    /// Output batches with `seq > acked[to]`, in journal order (increasing `seq` per link).
    pub unacked: Vec<OutBatch>,
    /// Tuples processed and produced, over the whole history.
    pub counts: TupleCounts,
    /// How many records were applied (a snapshot counts as one).
    pub records: usize,
    /// The generation this journal continues in, if it ended with `Continued`.
    pub continued: Option<u32>,
}

impl Recovered {
    /// Replays a journal from the empty state.
    pub fn replay(records: &[Record]) -> Result<Recovered, JournalError> {
        let mut recovered = Recovered::default();
        records.iter().try_for_each(|record| recovered.apply(record))?;
        Ok(recovered)
    }

    /// Applies the next record (index `self.records`). On error nothing changes, so a running
    /// task can keep its `Recovered` current with the records it journals.
    pub fn apply(&mut self, record: &Record) -> Result<(), JournalError> {
        let index = self.records;
        if self.continued.is_some() {
            return Err(JournalError::AfterContinued { index });
        }
        match record {
            Record::Processed { from, seq, consumed, outputs, state } => {
                let delivered = self.delivered.get(from).copied().unwrap_or(0);
                if *seq <= delivered {
                    return Err(JournalError::Duplicate { index, from: *from, delivered, found: *seq });
                }
                if *seq != delivered + 1 {
                    return Err(JournalError::Gap {
                        index,
                        from: *from,
                        expected: delivered + 1,
                        found: *seq,
                    });
                }
                let mut next = BTreeMap::new();
                for batch in outputs {
                    let to = batch.to;
                    let expected = next.get(&to).or(self.next_out.get(&to)).copied().unwrap_or(1);
                    if batch.seq != expected {
                        return Err(JournalError::OutputOutOfOrder { index, to, expected, found: batch.seq });
                    }
                    next.insert(to, expected.checked_add(1).ok_or(JournalError::SeqOverflow { index, to })?);
                }
                self.delivered.insert(*from, *seq);
                self.next_out.extend(next);
                let emitted = outputs.iter().map(|b| b.tuples.len() as u64).sum();
                self.counts = self.counts.add(*consumed, emitted);
                self.unacked.extend(outputs.iter().cloned());
                for (key, value) in state {
                    match value {
                        Some(value) => self.state.insert(key.clone(), value.clone()),
                        None => self.state.remove(key),
                    };
                }
            }
            Record::Acked { to, upto } => {
                let next_out = self.next_out.get(to).copied().unwrap_or(1);
                if *upto >= next_out {
                    return Err(JournalError::AckBeyondSent { index, to: *to, upto: *upto, next_out });
                }
                let acked = self.acked.entry(*to).or_insert(0);
                *acked = (*acked).max(*upto);
                self.unacked.retain(|batch| batch.to != *to || batch.seq > *upto);
            }
            Record::Snapshot(snapshot) => {
                check_snapshot(snapshot, index)?;
                let Snapshot { delivered, next_out, acked, state, unacked, counts } = snapshot.clone();
                *self = Recovered {
                    delivered,
                    next_out,
                    acked,
                    state,
                    unacked,
                    counts,
                    records: index,
                    continued: None,
                };
            }
            Record::Continued { generation } => self.continued = Some(*generation),
        }
        self.records = index + 1;
        Ok(())
    }

    /// The snapshot that stands for every record applied so far.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            delivered: self.delivered.clone(),
            next_out: self.next_out.clone(),
            acked: self.acked.clone(),
            state: self.state.clone(),
            unacked: self.unacked.clone(),
            counts: self.counts,
        }
    }
}

/// Per link: `acked < next_out` and the unacked batches are exactly `acked+1 .. next_out`, in order.
fn check_snapshot(s: &Snapshot, index: usize) -> Result<(), JournalError> {
    let acked = |to| s.acked.get(to).copied().unwrap_or(0);
    let next_out = |to| s.next_out.get(to).copied().unwrap_or(1);
    let mut expect: BTreeMap<TaskId, LinkSeq> = BTreeMap::new();
    for batch in &s.unacked {
        let next = expect.entry(batch.to).or_insert_with(|| acked(&batch.to).saturating_add(1));
        if batch.seq != *next || batch.seq >= next_out(&batch.to) {
            return Err(JournalError::BadSnapshot { index, to: batch.to });
        }
        *next += 1;
    }
    let links: BTreeSet<&TaskId> = s.next_out.keys().chain(s.acked.keys()).collect();
    for to in links {
        let (acked, next_out) = (acked(to), next_out(to));
        if acked >= next_out || expect.get(to).copied().unwrap_or(acked + 1) != next_out {
            return Err(JournalError::BadSnapshot { index, to: *to });
        }
    }
    Ok(())
}

/// When to start a new generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionLimits {
    pub max_records: usize,
    pub max_bytes: u64,
}

impl Default for CompactionLimits {
    fn default() -> CompactionLimits {
        CompactionLimits { max_records: 1000, max_bytes: 4 * 1024 * 1024 }
    }
}

/// Whether the journal since its last snapshot has reached either limit.
pub fn should_compact(
    records_since_snapshot: usize,
    bytes_since_snapshot: u64,
    limits: CompactionLimits,
) -> bool {
    records_since_snapshot >= limits.max_records || bytes_since_snapshot >= limits.max_bytes
}

/// The HyDFS file of generation `generation` of incarnation `epoch` of `task`'s journal:
/// `rainstorm/<job>/journal/s<stage>-t<index>.e<epoch>.g<generation>`.
pub fn journal_name(job: &str, task: TaskId, epoch: u32, generation: u32) -> Result<FileName, NameError> {
    FileName::new(&format!("rainstorm/{job}/journal/{task}.e{epoch}.g{generation}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: TaskId = TaskId { stage: 0, index: 0 };
    const UP: [TaskId; 2] = [TaskId { stage: 1, index: 0 }, TaskId { stage: 1, index: 1 }];
    const DOWN: [TaskId; 3] =
        [TaskId { stage: 2, index: 0 }, TaskId { stage: 2, index: 1 }, TaskId { stage: 2, index: 2 }];

    fn batch(to: TaskId, seq: LinkSeq) -> OutBatch {
        OutBatch { to, seq, tuples: vec![Tuple::source("f.csv", seq, format!("to {to} #{seq}"))] }
    }

    fn processed(from: TaskId, seq: LinkSeq, outputs: Vec<OutBatch>) -> Record {
        let state = vec![(format!("k{seq}"), Some(seq.to_string()))];
        Record::Processed { from, seq, consumed: seq, outputs, state }
    }

    fn sample() -> Vec<Record> {
        let mut snap = Snapshot::default();
        snap.delivered.insert(UP[0], 3);
        snap.next_out.insert(DOWN[0], 3);
        snap.acked.insert(DOWN[0], 1);
        snap.state.insert("a".into(), "1".into());
        snap.unacked.push(batch(DOWN[0], 2));
        snap.counts = TupleCounts { consumed: 40, emitted: 3 };
        vec![
            Record::Snapshot(snap),
            processed(UP[0], 4, vec![batch(DOWN[0], 3), batch(DOWN[1], 1)]),
            Record::Processed {
                from: UP[1],
                seq: 1,
                consumed: 2,
                outputs: vec![],
                state: vec![("a".into(), None)],
            },
            Record::Acked { to: DOWN[0], upto: 2 },
            Record::Continued { generation: 7 },
        ]
    }

    fn file(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for record in records {
            starts.push(bytes.len());
            bytes.extend(encode(record).unwrap());
        }
        (bytes, starts)
    }

    #[test]
    fn every_record_kind_round_trips() {
        for record in sample() {
            assert_eq!(decode_all(&encode(&record).unwrap()).unwrap(), vec![record]);
        }
        let (bytes, _) = file(&sample());
        assert_eq!(decode_all(&bytes).unwrap(), sample());
        assert_eq!(decode_all(&[]).unwrap(), vec![]);
    }

    #[test]
    fn truncations_and_corruptions_are_rejected() {
        let (bytes, starts) = file(&sample());
        for cut in 0..bytes.len() {
            match starts.iter().position(|&s| s == cut) {
                Some(n) => assert_eq!(decode_all(&bytes[..cut]).unwrap(), sample()[..n]),
                None => assert!(decode_all(&bytes[..cut]).is_err(), "cut at {cut} accepted"),
            }
        }
        let last = *starts.last().unwrap();
        assert!(matches!(
            decode_all(&bytes[..bytes.len() - 1]),
            Err(JournalError::Truncated { offset, .. }) if offset == last
        ));
        for i in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[i] ^= flip;
                assert!(decode_all(&bad).is_err(), "byte {i} ^ {flip:#x} accepted");
            }
        }
        let at = starts[1];
        let mut bad = bytes.clone();
        bad[at] = b'X';
        assert_eq!(decode_all(&bad), Err(JournalError::BadMagic { offset: at }));
        bad = bytes.clone();
        bad[at + 2] = 9;
        assert_eq!(decode_all(&bad), Err(JournalError::UnknownVersion { offset: at, found: 9 }));
        bad = bytes.clone();
        bad[at + 3..at + 7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_all(&bad), Err(JournalError::TooLarge { offset: at, len: u32::MAX as usize }));
        bad = bytes.clone();
        bad[at + HEADER_BYTES] ^= 1;
        assert_eq!(decode_all(&bad), Err(JournalError::BadChecksum { offset: at }));
    }

    #[test]
    fn a_frame_of_the_format_before_tuple_counts_is_refused_by_its_version() {
        let mut frame = encode(&sample()[1]).unwrap();
        frame[2] = 1;
        let body = frame.len() - CRC_BYTES;
        let crc = crc32c::crc32c(&frame[..body]);
        frame[body..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_all(&frame), Err(JournalError::UnknownVersion { offset: 0, found: 1 }));
    }

    #[test]
    fn oversized_records_and_malformed_payloads_are_refused() {
        let huge = Record::Processed {
            from: SRC,
            seq: 1,
            consumed: 1,
            outputs: vec![],
            state: vec![("k".into(), Some("x".repeat(MAX_RECORD_BYTES)))],
        };
        assert!(matches!(encode(&huge), Err(JournalError::RecordTooLarge { .. })));
        let mut frame = vec![b'R', b'J', JOURNAL_VERSION];
        frame.extend_from_slice(b"\x04\x00\x00\x00\x09\x00\x00\x00"); // no variant 9
        frame.extend_from_slice(&crc32c::crc32c(&frame).to_le_bytes());
        assert!(matches!(decode_all(&frame), Err(JournalError::Malformed { offset: 0, .. })));
    }

    #[test]
    fn replay_processes_in_order_and_trims_acked() {
        let records = [
            processed(SRC, 1, vec![batch(DOWN[0], 1), batch(DOWN[1], 1), batch(DOWN[0], 2)]),
            processed(SRC, 2, vec![batch(DOWN[0], 3)]),
            Record::Acked { to: DOWN[0], upto: 2 },
            Record::Acked { to: DOWN[0], upto: 1 }, // stale acks never lower `acked`
            Record::Processed {
                from: SRC,
                seq: 3,
                consumed: 4,
                outputs: vec![],
                state: vec![("k1".into(), None)],
            },
        ];
        let r = Recovered::replay(&records).unwrap();
        assert_eq!(r.delivered, BTreeMap::from([(SRC, 3)]));
        assert_eq!(r.next_out, BTreeMap::from([(DOWN[0], 4), (DOWN[1], 2)]));
        assert_eq!(r.acked, BTreeMap::from([(DOWN[0], 2)]));
        assert_eq!(r.state, BTreeMap::from([("k2".to_string(), "2".to_string())]));
        assert_eq!(r.unacked, vec![batch(DOWN[1], 1), batch(DOWN[0], 3)]);
        assert_eq!((r.records, r.continued), (5, None));
        assert_eq!(
            r.counts,
            TupleCounts { consumed: 1 + 2 + 4, emitted: 4 },
            "inputs consumed, outputs made"
        );
        let s = Recovered::replay(&sample()).unwrap();
        // The snapshot's counts, then what the records after it add.
        assert_eq!(s.counts, TupleCounts { consumed: 40 + 4 + 2, emitted: 3 + 2 });
        assert_eq!(
            (s.records, s.continued, s.unacked.clone()),
            (5, Some(7), vec![batch(DOWN[0], 3), batch(DOWN[1], 1)])
        );
    }

    #[test]
    fn histories_a_task_cannot_write_are_rejected() {
        let first = processed(UP[0], 1, vec![batch(DOWN[0], 1)]);
        let reject = |second: Record| Recovered::replay(&[first.clone(), second]).unwrap_err();
        assert_eq!(
            reject(processed(UP[0], 1, vec![])),
            JournalError::Duplicate { index: 1, from: UP[0], delivered: 1, found: 1 }
        );
        assert_eq!(
            reject(processed(UP[0], 3, vec![])),
            JournalError::Gap { index: 1, from: UP[0], expected: 2, found: 3 }
        );
        assert_eq!(
            reject(processed(UP[1], 2, vec![])),
            JournalError::Gap { index: 1, from: UP[1], expected: 1, found: 2 }
        );
        assert_eq!(
            reject(processed(UP[0], 2, vec![batch(DOWN[0], 3)])),
            JournalError::OutputOutOfOrder { index: 1, to: DOWN[0], expected: 2, found: 3 }
        );
        assert_eq!(
            reject(Record::Acked { to: DOWN[0], upto: 2 }),
            JournalError::AckBeyondSent { index: 1, to: DOWN[0], upto: 2, next_out: 2 }
        );
        let after =
            [first.clone(), Record::Continued { generation: 1 }, Record::Acked { to: DOWN[0], upto: 1 }];
        assert_eq!(Recovered::replay(&after), Err(JournalError::AfterContinued { index: 2 }));
        // A rejected record changes nothing.
        let mut r = Recovered::replay(&[first]).unwrap();
        let before = r.clone();
        let bad = processed(UP[0], 2, vec![batch(DOWN[1], 1), batch(DOWN[0], 5)]);
        assert!(r.apply(&bad).is_err());
        assert_eq!(r, before);
    }

    #[test]
    fn inconsistent_snapshots_are_rejected() {
        let good = match &sample()[0] {
            Record::Snapshot(s) => s.clone(),
            _ => unreachable!(),
        };
        assert!(Recovered::replay(&[Record::Snapshot(good.clone())]).is_ok());
        let mut missing = good.clone();
        missing.unacked.clear();
        let mut beyond = good.clone();
        beyond.acked.insert(DOWN[1], 1);
        let mut stray = good.clone();
        stray.unacked.push(batch(DOWN[2], 1));
        for (bad, to) in [(missing, DOWN[0]), (beyond, DOWN[1]), (stray, DOWN[2])] {
            let err = Recovered::replay(&[Record::Snapshot(bad)]).unwrap_err();
            assert_eq!(err, JournalError::BadSnapshot { index: 0, to });
        }
    }

    #[test]
    fn names_and_compaction_limits() {
        let task = TaskId { stage: 2, index: 13 };
        assert_eq!(
            journal_name("job-1", task, 2, 4).unwrap().as_str(),
            "rainstorm/job-1/journal/s2-t13.e2.g4"
        );
        assert_eq!(journal_name("", task, 0, 0), Err(NameError::BadComponent));
        let limits = CompactionLimits::default();
        assert_eq!(limits, CompactionLimits { max_records: 1000, max_bytes: 4 << 20 });
        assert!(!should_compact(999, (4 << 20) - 1, limits));
        assert!(should_compact(1000, 0, limits) && should_compact(0, 4 << 20, limits));
    }

    /// A random history a task could write, applied as it is built (op: kind, link, count, key).
    fn history(ops: &[(u8, u8, u8, u8)]) -> Vec<Record> {
        let mut live = Recovered::default();
        let mut records = Vec::new();
        for &(kind, link, count, key) in ops {
            let record = match kind % 5 {
                0..=2 => {
                    let from = [SRC, UP[0], UP[1]][link as usize % 3];
                    let mut next = live.next_out.clone();
                    let outputs = (0..count % 4)
                        .map(|i| {
                            let to = DOWN[(link as usize + i as usize) % 3];
                            let seq = next.entry(to).or_insert(1);
                            *seq += 1;
                            batch(to, *seq - 1)
                        })
                        .collect();
                    let change = (key % 2 == 0).then(|| count.to_string());
                    Record::Processed {
                        from,
                        seq: live.delivered.get(&from).copied().unwrap_or(0) + 1,
                        consumed: u64::from(count),
                        outputs,
                        state: vec![(format!("k{}", key % 4), change)],
                    }
                }
                3 => {
                    let to = DOWN[link as usize % 3];
                    Record::Acked {
                        to,
                        upto: u64::from(count) % live.next_out.get(&to).copied().unwrap_or(1),
                    }
                }
                _ => Record::Snapshot(live.snapshot()),
            };
            live.apply(&record).unwrap();
            records.push(record);
        }
        records
    }

    proptest! {
        #[test]
        fn snapshot_plus_tail_equals_full_history(
            ops in proptest::collection::vec(any::<(u8, u8, u8, u8)>(), 0..40),
            split in any::<prop::sample::Index>(),
        ) {
            let records = history(&ops);
            let (bytes, _) = file(&records);
            prop_assert_eq!(&decode_all(&bytes).unwrap(), &records);
            let full = Recovered::replay(&records).unwrap();
            // Every batch ever sent and not acked is pending, in journal order.
            let sent = records.iter().flat_map(|r| match r {
                Record::Processed { outputs, .. } => outputs.clone(),
                _ => vec![],
            });
            let pending: Vec<OutBatch> =
                sent.filter(|b| b.seq > full.acked.get(&b.to).copied().unwrap_or(0)).collect();
            prop_assert_eq!(&full.unacked, &pending);
            let k = split.index(records.len() + 1);
            let prefix = Recovered::replay(&records[..k]).unwrap();
            let mut compacted = vec![Record::Snapshot(prefix.snapshot())];
            compacted.extend_from_slice(&records[k..]);
            let rebuilt = Recovered::replay(&compacted).unwrap();
            prop_assert_eq!(Recovered { records: 0, ..rebuilt }, Recovered { records: 0, ..full });
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_all(&bytes);
            let mut framed = vec![b'R', b'J', JOURNAL_VERSION];
            framed.extend_from_slice(&bytes);
            let _ = decode_all(&framed);
        }

        #[test]
        fn checksummed_arbitrary_payloads_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut frame = vec![b'R', b'J', JOURNAL_VERSION];
            frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frame.extend_from_slice(&payload);
            frame.extend_from_slice(&crc32c::crc32c(&frame).to_le_bytes());
            if let Ok(records) = decode_all(&frame) {
                let _ = Recovered::replay(&records);
            }
        }
    }
}
