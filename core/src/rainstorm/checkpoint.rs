//! A job's checkpoint log: the durable record, in HyDFS, of every point the job can resume from.
//!
//! The leader alone writes it. Its first record says what the job is ([`Record::Job`]: the spec
//! and the plan every task is deployed with; the input's parts as the job pinned them are in the
//! job's manifest file, [`encode_manifest`], which can be larger than a record; so a leader can
//! run the job from its files alone); then,
//! once per commit, one [`Record::Commit`] holds the job as of the newest complete checkpoint the
//! commit covers: every source's position, each task's tuple counts, the keyed-state changes
//! since the previous record, and how much of the destination is written once the commit's
//! outputs are. The record is durable before the commit's outputs are appended to the
//! destination, so a reader of the log knows every output before the record's checkpoint is
//! in the destination or about to be, and none after it.
//!
//! A log is a concatenation of frames, one per record (one HyDFS append each):
//!
//! ```text
//! offset  size  field
//! 0       2     magic "RC"
//! 2       1     format version (currently 4)
//! 3       4     payload length, little endian (at most MAX_RECORD_BYTES)
//! 7       len   payload: the bincode-encoded Record (variable-length integers)
//! 7+len   4     CRC32C over bytes [0, 7+len)
//! ```
//!
//! Generations: past `compact_records` records the leader starts generation `g+1` with one
//! [`Record::Full`] (the whole state) and deletes generation `g`; the job's files are deleted
//! when it ends.
//!
//! Invariants kept here:
//! * a record is whole or rejected: decoding any bytes returns records or a typed
//!   [`CheckpointError`] naming the offset, never panics, never allocates past the frame limit;
//! * folding accepts only logs a leader can write: a job record first, then commits whose
//!   checkpoints, outputs and destination sizes never go backwards;
//! * a full record followed by the commits after it folds to the same state as the whole
//!   history it stands for;
//! * [`LogState::fold_to_dest`] folds exactly the records up to the newest one whose
//!   destination size is the one given: the point whose outputs are all in the destination and
//!   none after it.

use std::collections::BTreeMap;

use bincode::Options;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[cfg(test)]
use super::input::InputPart;
use super::input::Manifest;
use super::job::{Attempt, CheckpointId, JobId, JobPlan, TaskId, TupleCounts};
use super::message::SourceCheckpoint;
use crate::id::MemberId;
use crate::wire::bincode_options as options;

/// The largest accepted record payload, in bytes.
pub const MAX_RECORD_BYTES: usize = 8 * 1024 * 1024;
/// The current frame format version (3: the job's record holds its plan; 4: the plan names the
/// member the job was submitted to).
pub const CHECKPOINT_VERSION: u8 = 4;

const MAGIC: [u8; 2] = *b"RC";
const HEADER_BYTES: usize = 7;
const CRC_BYTES: usize = 4;

/// One entry of a checkpoint log: one atomic HyDFS append.
/// One task's keyed-state changes: each key's new value, `None` where it was deleted.
pub type StateChanges = Vec<(String, Option<String>)>;

/// What a job is: everything a leader needs to run it from its log alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub job: JobId,
    /// The member that wrote this record.
    pub leader: MemberId,
    /// The job as it was submitted (`RainStorm <op1> <op2> <src> <dest> <tasks> [--rate]`).
    pub spec: String,
    /// The plan every task is deployed with: operators as text, files, tasks, the input's
    /// header, the routes and each source's pace. The input's parts as the job pinned them
    /// (sources' positions are offsets into these) are in the file `plan.manifest_file()`.
    pub plan: JobPlan,
    /// Input lines per second over the whole job, at most.
    pub rate: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// What the job is (the first record of its log).
    Job(Box<JobInfo>),
    /// The job as of `checkpoint` (`None`: before its first one), written before the commit's
    /// outputs are appended to the destination.
    Commit {
        checkpoint: Option<CheckpointId>,
        attempt: Attempt,
        sources: Vec<(TaskId, SourceCheckpoint)>,
        /// Keyed-state changes since the previous record (`None` deletes).
        changes: Vec<(TaskId, StateChanges)>,
        counts: Vec<(TaskId, TupleCounts)>,
        /// Outputs in the destination, and its length in bytes, once this commit's are in.
        outputs: u64,
        dest_bytes: u64,
        /// The job's last commit: every output is in it.
        last: bool,
    },
    /// The first record of a later generation: the job and its whole state as of `checkpoint`.
    Full {
        info: Box<JobInfo>,
        checkpoint: Option<CheckpointId>,
        sources: Vec<(TaskId, SourceCheckpoint)>,
        state: Vec<(TaskId, Vec<(String, String)>)>,
        counts: Vec<(TaskId, TupleCounts)>,
        outputs: u64,
        dest_bytes: u64,
    },
}

/// Why log bytes or a log history were rejected.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CheckpointError {
    #[error("record of {len} payload bytes exceeds the {MAX_RECORD_BYTES}-byte limit")]
    RecordTooLarge { len: usize },
    #[error("frame at offset {offset} is truncated: it needs {needed} bytes, {available} remain")]
    Truncated { offset: usize, needed: usize, available: usize },
    #[error("bad magic bytes at offset {offset} (not a checkpoint log frame)")]
    BadMagic { offset: usize },
    #[error(
        "frame at offset {offset} has unknown format version {found} (this build reads {CHECKPOINT_VERSION})"
    )]
    UnknownVersion { offset: usize, found: u8 },
    #[error("frame at offset {offset} declares {len} payload bytes, over the {MAX_RECORD_BYTES}-byte limit")]
    TooLarge { offset: usize, len: usize },
    #[error("checksum mismatch in the frame at offset {offset}")]
    BadChecksum { offset: usize },
    #[error("malformed record in the frame at offset {offset}: {reason}")]
    Malformed { offset: usize, reason: String },
    #[error("record {index}: a log starts with the job's record")]
    NoJob { index: usize },
    #[error("record {index}: a second job record")]
    SecondJob { index: usize },
    #[error("record {index}: it goes backwards ({what})")]
    Backwards { index: usize, what: &'static str },
    #[error("record {index} follows the job's last commit")]
    AfterLast { index: usize },
    #[error(
        "no record of the log leaves the destination at {dest_bytes} bytes (its records go up to \
         {last} bytes): the destination and the log disagree"
    )]
    DestMismatch { dest_bytes: u64, last: u64 },
}

/// The manifest file's format version.
pub const MANIFEST_VERSION: u8 = 1;
const MANIFEST_MAGIC: [u8; 2] = *b"RM";
const MANIFEST_HEADER_BYTES: usize = 11;

/// Encodes a job's input manifest as its file: magic "RM", version, payload length (u64, little
/// endian), the bincode-encoded manifest, CRC32C of everything before it.
pub fn encode_manifest(manifest: &Manifest) -> Vec<u8> {
    let payload = options(usize::MAX).serialize(manifest).expect("a manifest always encodes");
    let mut file = Vec::with_capacity(MANIFEST_HEADER_BYTES + payload.len() + CRC_BYTES);
    file.extend_from_slice(&MANIFEST_MAGIC);
    file.push(MANIFEST_VERSION);
    file.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    file.extend_from_slice(&payload);
    let crc = crc32c::crc32c(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    file
}

/// Decodes a manifest file. Never panics on any input, never allocates past its length.
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest, CheckpointError> {
    let truncated = |needed| CheckpointError::Truncated { offset: 0, needed, available: bytes.len() };
    if bytes.len() < MANIFEST_HEADER_BYTES + CRC_BYTES {
        return Err(truncated(MANIFEST_HEADER_BYTES + CRC_BYTES));
    }
    if bytes[0..2] != MANIFEST_MAGIC {
        return Err(CheckpointError::BadMagic { offset: 0 });
    }
    if bytes[2] != MANIFEST_VERSION {
        return Err(CheckpointError::UnknownVersion { offset: 0, found: bytes[2] });
    }
    let len = u64::from_le_bytes(bytes[3..11].try_into().expect("8 bytes"));
    let needed = ((MANIFEST_HEADER_BYTES + CRC_BYTES) as u64).saturating_add(len);
    if needed != bytes.len() as u64 {
        return Err(truncated(needed.min(usize::MAX as u64) as usize));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - CRC_BYTES);
    if crc32c::crc32c(body).to_le_bytes() != trailer {
        return Err(CheckpointError::BadChecksum { offset: 0 });
    }
    options(len as usize)
        .deserialize(&body[MANIFEST_HEADER_BYTES..])
        .map_err(|e| CheckpointError::Malformed { offset: 0, reason: e.to_string() })
}

/// Encodes one record as one frame (one HyDFS append).
pub fn encode(record: &Record) -> Result<Vec<u8>, CheckpointError> {
    let too_large = |_| CheckpointError::RecordTooLarge { len: usize::MAX };
    let len = options(usize::MAX).serialized_size(record).map_err(too_large)? as usize;
    if len > MAX_RECORD_BYTES {
        return Err(CheckpointError::RecordTooLarge { len });
    }
    let mut frame = Vec::with_capacity(HEADER_BYTES + len + CRC_BYTES);
    frame.extend_from_slice(&MAGIC);
    frame.push(CHECKPOINT_VERSION);
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    options(MAX_RECORD_BYTES).serialize_into(&mut frame, record).map_err(too_large)?;
    let crc = crc32c::crc32c(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(frame.len(), HEADER_BYTES + len + CRC_BYTES);
    Ok(frame)
}

/// Decodes a whole log file. Never panics on any input; an empty file has no records.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Record>, CheckpointError> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let truncated = |needed| CheckpointError::Truncated { offset, needed, available: rest.len() };
        if rest.len() < HEADER_BYTES {
            return Err(truncated(HEADER_BYTES + CRC_BYTES));
        }
        if rest[0..2] != MAGIC {
            return Err(CheckpointError::BadMagic { offset });
        }
        if rest[2] != CHECKPOINT_VERSION {
            return Err(CheckpointError::UnknownVersion { offset, found: rest[2] });
        }
        let len = u32::from_le_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
        if len > MAX_RECORD_BYTES {
            return Err(CheckpointError::TooLarge { offset, len });
        }
        let needed = HEADER_BYTES + len + CRC_BYTES;
        if rest.len() < needed {
            return Err(truncated(needed));
        }
        let (body, trailer) = rest[..needed].split_at(HEADER_BYTES + len);
        if crc32c::crc32c(body).to_le_bytes() != trailer {
            return Err(CheckpointError::BadChecksum { offset });
        }
        let record = options(len)
            .deserialize(&body[HEADER_BYTES..])
            .map_err(|e| CheckpointError::Malformed { offset, reason: e.to_string() })?;
        records.push(record);
        offset += needed;
    }
    Ok(records)
}

/// A job as its log says it stands: what a leader resumes it from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    pub job: Option<Box<JobInfo>>,
    pub checkpoint: Option<CheckpointId>,
    pub attempt: Attempt,
    pub sources: BTreeMap<TaskId, SourceCheckpoint>,
    pub state: BTreeMap<TaskId, BTreeMap<String, String>>,
    pub counts: BTreeMap<TaskId, TupleCounts>,
    pub outputs: u64,
    pub dest_bytes: u64,
    pub last: bool,
    /// Records applied.
    pub records: usize,
}

impl LogState {
    /// Folds a whole log from the empty state.
    pub fn fold(records: &[Record]) -> Result<LogState, CheckpointError> {
        let mut s = LogState::default();
        records.iter().try_for_each(|r| s.apply(r))?;
        Ok(s)
    }

    /// Folds the records up to the newest one that leaves the destination at `dest_bytes`
    /// bytes: the state whose outputs are all in a destination of that size, and none after.
    /// The only record whose outputs may be missing from the destination is a log's last commit
    /// (its record is durable before its outputs are appended), so a leader resuming from the
    /// log folds to the destination's size and produces that commit's outputs again.
    pub fn fold_to_dest(records: &[Record], dest_bytes: u64) -> Result<LogState, CheckpointError> {
        let mut s = LogState::default();
        let mut found = None;
        for r in records {
            s.apply(r)?;
            if s.dest_bytes == dest_bytes {
                found = Some(s.clone());
            }
        }
        let state = found.ok_or(CheckpointError::DestMismatch { dest_bytes, last: s.dest_bytes })?;
        debug_assert_eq!(state.dest_bytes, dest_bytes, "folded to the destination's size");
        Ok(state)
    }

    /// Applies the next record; on error nothing changes.
    pub fn apply(&mut self, record: &Record) -> Result<(), CheckpointError> {
        let index = self.records;
        if self.last {
            return Err(CheckpointError::AfterLast { index });
        }
        match record {
            Record::Job(info) => {
                if self.job.is_some() {
                    return Err(CheckpointError::SecondJob { index });
                }
                self.job = Some(info.clone());
            }
            Record::Commit { checkpoint, attempt, sources, changes, counts, outputs, dest_bytes, last } => {
                if self.job.is_none() {
                    return Err(CheckpointError::NoJob { index });
                }
                let backwards = |what| Err(CheckpointError::Backwards { index, what });
                if *checkpoint < self.checkpoint {
                    return backwards("checkpoint");
                }
                if *outputs < self.outputs || *dest_bytes < self.dest_bytes {
                    return backwards("destination");
                }
                self.checkpoint = *checkpoint;
                self.attempt = *attempt;
                self.sources.extend(sources.iter().copied());
                for (task, changes) in changes {
                    let state = self.state.entry(*task).or_default();
                    for (key, value) in changes {
                        match value {
                            Some(v) => state.insert(key.clone(), v.clone()),
                            None => state.remove(key),
                        };
                    }
                }
                self.counts.extend(counts.iter().copied());
                self.outputs = *outputs;
                self.dest_bytes = *dest_bytes;
                self.last = *last;
            }
            Record::Full { info, checkpoint, sources, state, counts, outputs, dest_bytes } => {
                if index != 0 {
                    return Err(CheckpointError::SecondJob { index });
                }
                *self = LogState {
                    job: Some(info.clone()),
                    checkpoint: *checkpoint,
                    attempt: 0,
                    sources: sources.iter().copied().collect(),
                    state: state.iter().map(|(t, s)| (*t, s.iter().cloned().collect())).collect(),
                    counts: counts.iter().copied().collect(),
                    outputs: *outputs,
                    dest_bytes: *dest_bytes,
                    last: false,
                    records: 0,
                };
            }
        }
        self.records = index + 1;
        Ok(())
    }

    /// The record that stands for everything folded so far (a new generation's first).
    pub fn full(&self) -> Option<Record> {
        Some(Record::Full {
            info: self.job.clone()?,
            checkpoint: self.checkpoint,
            sources: self.sources.iter().map(|(t, s)| (*t, *s)).collect(),
            state: self
                .state
                .iter()
                .map(|(t, s)| (*t, s.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
                .collect(),
            counts: self.counts.iter().map(|(t, c)| (*t, *c)).collect(),
            outputs: self.outputs,
            dest_bytes: self.dest_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rainstorm::input::SourcePos;
    use proptest::prelude::*;

    const SRC: TaskId = TaskId { stage: 0, index: 0 };
    const COUNT: TaskId = TaskId { stage: 2, index: 1 };

    fn leader() -> MemberId {
        MemberId { addr: "10.0.0.1:7000".parse().expect("addr"), join_time: 5 }
    }

    fn job() -> Record {
        let name = |s: &str| crate::hydfs::FileName::new(s).expect("a name");
        let plan = JobPlan {
            job: JobId { n: 1, tag: 7 },
            leader: leader(),
            origin: leader(),
            ops: ["a".into(), "b".into()],
            src: name("c"),
            dest: name("d"),
            tasks: 1,
            header: None,
            routes: [crate::rainstorm::job::Route::Shuffle; 2],
            rate_per_source: None,
        };
        Record::Job(Box::new(JobInfo {
            job: plan.job,
            leader: leader(),
            spec: "RainStorm a b c d 1".into(),
            plan,
            rate: None,
        }))
    }

    #[test]
    fn a_manifest_file_reads_back_and_any_damage_is_refused() {
        use crate::hydfs::Stamp;
        let part = |i: u32| InputPart {
            stamp: Stamp { ts: u64::from(i), client: leader(), seq: u64::from(i) },
            part: i % 3,
            len: 1 << 20,
            newlines: i,
            ends_with_newline: i.is_multiple_of(2),
        };
        let manifest = Manifest { parts: (0..1_000).map(part).collect() };
        let file = encode_manifest(&manifest);
        assert_eq!(decode_manifest(&file), Ok(manifest));
        for cut in [0, 5, file.len() - 1] {
            assert!(decode_manifest(&file[..cut]).is_err(), "cut at {cut}");
        }
        for at in [0, 2, 3, 20, file.len() - 1] {
            let mut bad = file.clone();
            bad[at] ^= 0x40;
            assert!(decode_manifest(&bad).is_err(), "flipped at {at}");
        }
    }

    fn commit(c: u64, line: u64, changes: Vec<(&str, Option<&str>)>, outputs: u64) -> Record {
        let changes = changes.into_iter().map(|(k, v)| (k.to_owned(), v.map(str::to_owned))).collect();
        Record::Commit {
            checkpoint: Some(c),
            attempt: 1,
            sources: vec![(SRC, SourceCheckpoint::At(SourcePos { offset: line * 10, line }))],
            changes: vec![(COUNT, changes)],
            counts: vec![(SRC, TupleCounts { consumed: line, emitted: line })],
            outputs,
            dest_bytes: outputs * 4,
            last: false,
        }
    }

    fn sample() -> Vec<Record> {
        vec![
            job(),
            commit(1, 5, vec![("a", Some("1"))], 2),
            commit(3, 9, vec![("a", Some("2")), ("b", Some("1"))], 4),
            commit(4, 12, vec![("b", None)], 5),
        ]
    }

    #[test]
    fn folding_to_a_destination_size_stops_at_the_record_that_left_it() {
        let records = sample();
        for end in 1..=records.len() {
            let prefix = LogState::fold(&records[..end]).expect("folds");
            let to_dest = LogState::fold_to_dest(&records, prefix.dest_bytes).expect("a record has it");
            assert_eq!(to_dest, prefix, "folded to {} bytes", prefix.dest_bytes);
        }
        // The last commit's outputs never landed: the destination is still at the one before.
        let before_last = LogState::fold(&records[..records.len() - 1]).expect("folds");
        let resumed = LogState::fold_to_dest(&records, before_last.dest_bytes).expect("folds");
        assert_eq!(resumed.checkpoint, Some(3));
        assert_eq!(
            LogState::fold_to_dest(&records, 7),
            Err(CheckpointError::DestMismatch { dest_bytes: 7, last: 20 })
        );
    }

    fn file(records: &[Record]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for r in records {
            starts.push(bytes.len());
            bytes.extend(encode(r).expect("encodes"));
        }
        (bytes, starts)
    }

    #[test]
    fn records_round_trip_and_fold() {
        let (bytes, _) = file(&sample());
        assert_eq!(decode_all(&bytes).expect("decodes"), sample());
        let s = LogState::fold(&sample()).expect("folds");
        assert_eq!(s.checkpoint, Some(4));
        assert_eq!(s.state[&COUNT], BTreeMap::from([("a".to_owned(), "2".to_owned())]));
        assert_eq!(s.sources[&SRC], SourceCheckpoint::At(SourcePos { offset: 120, line: 12 }));
        assert_eq!((s.outputs, s.dest_bytes, s.records), (5, 20, 4));
    }

    #[test]
    fn truncations_and_corruptions_are_rejected() {
        let (bytes, starts) = file(&sample());
        for cut in 0..bytes.len() {
            match starts.iter().position(|&s| s == cut) {
                Some(n) => assert_eq!(decode_all(&bytes[..cut]).expect("whole records"), sample()[..n]),
                None => assert!(decode_all(&bytes[..cut]).is_err(), "cut at {cut} accepted"),
            }
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x41;
            assert!(decode_all(&bad).is_err(), "byte {i} flipped and accepted");
        }
        let mut bad = bytes.clone();
        bad[2] = 9;
        assert_eq!(decode_all(&bad), Err(CheckpointError::UnknownVersion { offset: 0, found: 9 }));
    }

    #[test]
    fn histories_a_leader_cannot_write_are_rejected() {
        assert_eq!(LogState::fold(&[commit(1, 1, vec![], 0)]), Err(CheckpointError::NoJob { index: 0 }));
        assert_eq!(LogState::fold(&[job(), job()]), Err(CheckpointError::SecondJob { index: 1 }));
        let back = [job(), commit(3, 1, vec![], 5), commit(2, 2, vec![], 6)];
        assert_eq!(LogState::fold(&back), Err(CheckpointError::Backwards { index: 2, what: "checkpoint" }));
        let fewer = [job(), commit(3, 1, vec![], 5), commit(4, 2, vec![], 4)];
        assert_eq!(LogState::fold(&fewer), Err(CheckpointError::Backwards { index: 2, what: "destination" }));
        let mut last = commit(5, 3, vec![], 9);
        if let Record::Commit { last: l, .. } = &mut last {
            *l = true;
        }
        let after = [job(), last, commit(6, 4, vec![], 9)];
        assert_eq!(LogState::fold(&after), Err(CheckpointError::AfterLast { index: 2 }));
        // A rejected record changes nothing.
        let mut s = LogState::fold(&sample()).expect("folds");
        let before = s.clone();
        assert!(s.apply(&commit(1, 1, vec![], 0)).is_err());
        assert_eq!(s, before);
    }

    proptest! {
        #[test]
        fn a_full_record_plus_the_rest_folds_like_the_whole_log(
            steps in proptest::collection::vec((0u8..4, 0u8..3, any::<bool>()), 0..30),
            split in any::<prop::sample::Index>(),
        ) {
            let mut records = vec![job()];
            let (mut c, mut outputs) = (0, 0);
            for (key, step, delete) in steps {
                c += u64::from(step);
                outputs += u64::from(step);
                let value = (!delete).then(|| format!("{c}"));
                let changes = [(format!("k{key}"), value)];
                let changes = changes.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                records.push(commit(c, c + 1, changes, outputs));
            }
            let (bytes, _) = file(&records);
            prop_assert_eq!(&decode_all(&bytes).expect("decodes"), &records);
            let whole = LogState::fold(&records).expect("folds");
            let k = 1 + split.index(records.len());
            let prefix = LogState::fold(&records[..k]).expect("folds");
            let mut compacted = vec![prefix.full().expect("has a job")];
            compacted.extend_from_slice(&records[k..]);
            let rebuilt = LogState::fold(&compacted).expect("folds");
            prop_assert_eq!(
                LogState { records: 0, attempt: 0, ..rebuilt },
                LogState { records: 0, attempt: 0, ..whole }
            );
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_all(&bytes);
            let mut framed = vec![b'R', b'C', CHECKPOINT_VERSION];
            framed.extend_from_slice(&bytes);
            if let Ok(records) = decode_all(&framed) {
                let _ = LogState::fold(&records);
            }
        }
    }
}
