//! Limits against hostile or broken input that belong to the node as a whole: the largest stream
//! frame ([`LimitsConfig::stream_frame_bytes`]) and a per-peer rate limit on incoming stream
//! requests ([`RateLimiter`]). The limits of one layer live in that layer's config (membership:
//! datagram size; HyDFS: file-name length, transfers in flight, pending appends per file, the
//! size of a file's description; RainStorm: tuples per received batch); [`check`] verifies that
//! they fit together.
//!
//! Invariants kept here:
//! * a stream frame limit always leaves room for one HyDFS chunk and for one RainStorm checkpoint
//!   record (which is at least a link batch: at most `batch_bytes` plus one tuple), plus
//!   [`STREAM_FRAME_SLACK_BYTES`] of headers and metadata ([`check`]), and for the description
//!   of the largest file HyDFS lets grow (`max_file_meta_bytes`) plus the same slack;
//! * only requests count against a peer's rate ([`counts_against_rate`]): membership datagrams,
//!   HyDFS replies and RainStorm acknowledgements never do, so failure detection is never starved
//!   and a node never drops the answers to its own requests;
//! * the limiter keeps at most `rate_limited_peers` buckets, evicting the one that was used least
//!   recently (ties: the lowest address), and its answers depend only on the times it is given.

use crate::hydfs::{HydfsConfig, NAME_BYTES_CEILING};
use crate::id::NodeAddr;
use crate::rainstorm::checkpoint::MAX_RECORD_BYTES;
use crate::rainstorm::tuple::MAX_TUPLE_BYTES;
use crate::rainstorm::RainstormConfig;
use crate::time::Time;
use crate::wire::{Body, MAX_STREAM_FRAME_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a stream frame needs besides one HyDFS chunk: the envelope, a read's list of writes, a
/// merge's list of appends (1 MiB holds about 20,000 write stamps).
pub const STREAM_FRAME_SLACK_BYTES: usize = 1 << 20;

/// The frame length field is 32 bits.
pub const STREAM_FRAME_CEILING: usize = u32::MAX as usize;

/// Node-wide limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// The largest stream frame this node sends or accepts, in bytes. A received frame over it is
    /// dropped and counted (`frames_rejected.oversized`).
    pub stream_frame_bytes: usize,
    /// Stream requests per second accepted from one peer; requests over the rate are dropped
    /// and counted (`frames_rejected.rate_limited`). 0 means unlimited. The defaults (20,000/s,
    /// bursts of 40,000) are several times the busiest peer measured in the simulator, when
    /// RainStorm still journaled every batch per task (before aligned checkpoints): over 100
    /// seeds of `sim rainstorm` one peer sent a node at most 642 requests in any second (92 in
    /// 10 ms), over 100 seeds of `sim hydfs` at most 119, and in `bench rainstorm` (10 nodes at
    /// 1 Gbit/s, source batches of 1 to 256 lines, recoveries of 50,000-line jobs) at most 4,001
    /// in a second and 5,782 in ten.
    pub peer_requests_per_sec: u32,
    /// Requests a peer may send in one burst (the size of its bucket).
    pub peer_request_burst: u32,
    /// Peers whose rate is tracked at once; a new peer beyond it evicts the stalest.
    pub rate_limited_peers: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            stream_frame_bytes: MAX_STREAM_FRAME_BYTES,
            peer_requests_per_sec: 20_000,
            peer_request_burst: 40_000,
            rate_limited_peers: 1024,
        }
    }
}

/// Limits that do not fit together. Each message names the setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error(
        "stream_frame_bytes ({limit}) must hold the larger of a HyDFS chunk ({chunk} bytes) and a \
         RainStorm checkpoint record ({MAX_RECORD_BYTES} bytes) plus {STREAM_FRAME_SLACK_BYTES} bytes \
         of headers and metadata, so at least {min}"
    )]
    FrameTooSmall { limit: usize, chunk: usize, min: usize },
    #[error(
        "stream_frame_bytes ({limit}) is over {STREAM_FRAME_CEILING} (the frame length field is 32 bits)"
    )]
    FrameTooLarge { limit: usize },
    #[error("peer_request_burst must be at least 1 when peer_requests_per_sec is set")]
    NoBurst,
    #[error("rate_limited_peers must be at least 1")]
    NoPeers,
    #[error("max_name_bytes ({limit}) must be between 1 and {NAME_BYTES_CEILING}")]
    NameLimit { limit: usize },
    #[error(
        "max_pending_appends ({limit}) must be over compact_records + 1 ({log}): a job's \
         checkpoint log takes that many appends before it starts a new generation"
    )]
    PendingBelowLog { limit: usize, log: usize },
    #[error(
        "merge_output_appends ({every}) must be between 1 and half of max_pending_appends ({limit}): \
         a job merges its output file after that many appends"
    )]
    OutputMerges { every: u32, limit: usize },
    #[error(
        "max_file_meta_bytes ({limit}) must be at least 1 and, with {STREAM_FRAME_SLACK_BYTES} bytes of \
         headers, at most stream_frame_bytes ({frame}): a file's description travels in one frame"
    )]
    FileMetaOverFrame { limit: u64, frame: usize },
    #[error("max_batch_tuples ({limit}) must be at least batch_tuples ({batch_tuples})")]
    BatchTuples { limit: u32, batch_tuples: u32 },
    #[error(
        "batch_bytes ({batch_bytes}) must be between 1 and {max}: a link batch (at most batch_bytes \
         plus one tuple of at most {MAX_TUPLE_BYTES} bytes) must fit a checkpoint record"
    )]
    BatchBytes { batch_bytes: u32, max: usize },
}

/// Checks that the limits of every layer fit together (see [`LimitsError`]).
pub fn check(
    limits: &LimitsConfig,
    hydfs: &HydfsConfig,
    rainstorm: &RainstormConfig,
) -> Result<(), LimitsError> {
    let min = hydfs.chunk_bytes.max(MAX_RECORD_BYTES).saturating_add(STREAM_FRAME_SLACK_BYTES);
    if limits.stream_frame_bytes < min {
        let (limit, chunk) = (limits.stream_frame_bytes, hydfs.chunk_bytes);
        return Err(LimitsError::FrameTooSmall { limit, chunk, min });
    }
    if limits.stream_frame_bytes > STREAM_FRAME_CEILING {
        return Err(LimitsError::FrameTooLarge { limit: limits.stream_frame_bytes });
    }
    if limits.peer_requests_per_sec > 0 && limits.peer_request_burst == 0 {
        return Err(LimitsError::NoBurst);
    }
    if limits.rate_limited_peers == 0 {
        return Err(LimitsError::NoPeers);
    }
    if hydfs.max_name_bytes == 0 || hydfs.max_name_bytes > NAME_BYTES_CEILING {
        return Err(LimitsError::NameLimit { limit: hydfs.max_name_bytes });
    }
    let meta = hydfs.max_file_meta_bytes;
    if meta == 0 || meta.saturating_add(STREAM_FRAME_SLACK_BYTES as u64) > limits.stream_frame_bytes as u64 {
        return Err(LimitsError::FileMetaOverFrame { limit: meta, frame: limits.stream_frame_bytes });
    }
    let pending = hydfs.max_pending_appends;
    if pending > 0 {
        let log = (rainstorm.compact_records as usize).saturating_add(1);
        if log >= pending {
            return Err(LimitsError::PendingBelowLog { limit: pending, log });
        }
        let every = rainstorm.merge_output_appends;
        if every == 0 || every as usize > pending / 2 {
            return Err(LimitsError::OutputMerges { every, limit: pending });
        }
    }
    if rainstorm.max_batch_tuples > 0 && rainstorm.max_batch_tuples < rainstorm.batch_tuples {
        let (limit, batch_tuples) = (rainstorm.max_batch_tuples, rainstorm.batch_tuples);
        return Err(LimitsError::BatchTuples { limit, batch_tuples });
    }
    let max = MAX_RECORD_BYTES - MAX_TUPLE_BYTES;
    if rainstorm.batch_bytes == 0 || rainstorm.batch_bytes as usize > max {
        return Err(LimitsError::BatchBytes { batch_bytes: rainstorm.batch_bytes, max });
    }
    Ok(())
}

/// Whether a received message counts against its sender's request rate: HyDFS requests and
/// RainStorm messages other than acknowledgements. Membership never does.
pub fn counts_against_rate(body: &Body) -> bool {
    match body {
        Body::Membership(_) => false,
        Body::Hydfs(msg) => msg.is_request(),
        Body::Rainstorm(msg) => msg.is_request(),
    }
}

/// One token bucket per sending peer. Tokens are counted in thousandths so that refills at any
/// rate stay exact in whole milliseconds.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    per_sec: u64,
    burst_milli: u64,
    max_peers: usize,
    buckets: BTreeMap<NodeAddr, Bucket>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    milli: u64,
    last: Time,
}

impl RateLimiter {
    pub fn new(cfg: &LimitsConfig) -> RateLimiter {
        RateLimiter {
            per_sec: cfg.peer_requests_per_sec as u64,
            burst_milli: (cfg.peer_request_burst.max(1) as u64).saturating_mul(1000),
            max_peers: cfg.rate_limited_peers.max(1),
            buckets: BTreeMap::new(),
        }
    }

    /// Whether a request from `peer` at `now` is within its rate; if so it takes one token.
    pub fn allow(&mut self, now: Time, peer: NodeAddr) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        if !self.buckets.contains_key(&peer) && self.buckets.len() >= self.max_peers {
            let stalest = self.buckets.iter().min_by_key(|(_, b)| b.last).map(|(a, _)| *a);
            if let Some(a) = stalest {
                self.buckets.remove(&a);
            }
        }
        let b = self.buckets.entry(peer).or_insert(Bucket { milli: self.burst_milli, last: now });
        let elapsed = now.0.saturating_sub(b.last.0);
        b.milli = b.milli.saturating_add(elapsed.saturating_mul(self.per_sec)).min(self.burst_milli);
        b.last = b.last.max(now);
        if b.milli >= 1000 {
            b.milli -= 1000;
            true
        } else {
            false
        }
    }

    /// Peers with a bucket.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hydfs::HydfsMsg;
    use crate::membership::{MembershipMsg, ProbeSeq};

    fn addr(port: u16) -> NodeAddr {
        NodeAddr::from(([127, 0, 0, 1], port))
    }

    fn limiter(per_sec: u32, burst: u32, peers: usize) -> RateLimiter {
        RateLimiter::new(&LimitsConfig {
            peer_requests_per_sec: per_sec,
            peer_request_burst: burst,
            rate_limited_peers: peers,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn a_peer_gets_its_burst_then_its_rate() {
        let mut r = limiter(10, 5, 8);
        let t = Time(1_000);
        assert!((0..5).all(|_| r.allow(t, addr(1))), "the burst is allowed");
        assert!(!r.allow(t, addr(1)), "the sixth at once is not");
        assert!(r.allow(t, addr(2)), "another peer has its own bucket");
        assert!(!r.allow(Time(1_050), addr(1)), "half a token after 50 ms at 10/s");
        assert!(r.allow(Time(1_100), addr(1)), "one token after 100 ms");
        assert!(!r.allow(Time(1_100), addr(1)));
        // A long pause refills to the burst, never beyond.
        let later = Time(100_000);
        assert_eq!((0..10).filter(|_| r.allow(later, addr(1))).count(), 5);
    }

    #[test]
    fn zero_means_unlimited() {
        let mut r = limiter(0, 0, 1);
        assert!((0..100_000).all(|_| r.allow(Time(0), addr(1))));
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn buckets_are_bounded_and_the_stalest_goes() {
        let mut r = limiter(1, 1, 2);
        assert!(r.allow(Time(0), addr(1)));
        assert!(r.allow(Time(5), addr(2)));
        assert!(!r.allow(Time(6), addr(1)), "peer 1 spent its token");
        // Peer 1 was used last at 6, peer 2 at 5: a third peer evicts peer 2.
        assert!(r.allow(Time(7), addr(3)));
        assert_eq!(r.tracked(), 2);
        assert!(!r.allow(Time(8), addr(1)), "peer 1 kept its (empty) bucket");
        assert!(r.allow(Time(9), addr(2)), "peer 2 starts over with a full bucket");
    }

    #[test]
    fn only_requests_count() {
        let ping = Body::Membership(MembershipMsg::Ack { seq: ProbeSeq(1), updates: vec![] });
        assert!(!counts_against_rate(&ping));
        assert!(counts_against_rate(&Body::Hydfs(HydfsMsg::Inventory { req: 1, known: None })));
        assert!(!counts_against_rate(&Body::Hydfs(HydfsMsg::InventoryReply {
            req: 1,
            files: crate::hydfs::InventoryList::Files(vec![])
        })));
    }

    /// The description of a file grown to `max_file_meta_bytes` is sent whole in one frame (a
    /// `DescribeReply`, an `Offer`) and its stamps with a first chunk (`ReadReply`): under the
    /// smallest frame limit `check` accepts, every one of them still encodes, while a file twice
    /// as long (which the limit refuses to grow) would not.
    #[test]
    fn the_largest_file_description_fits_the_smallest_frame() {
        use crate::hydfs::message::{ReadChunk, Refusal};
        use crate::hydfs::types::{FileMeta, Stamp, WriteKind, WriteMeta};
        use crate::hydfs::FileName;
        use crate::wire::{Codec, Envelope};
        let (l, h, r) = (LimitsConfig::default(), HydfsConfig::default(), RainstormConfig::default());
        let smallest = (1..=l.stream_frame_bytes)
            .rev()
            .step_by(1 << 16)
            .take_while(|f| check(&LimitsConfig { stream_frame_bytes: *f, ..l.clone() }, &h, &r).is_ok())
            .last()
            .expect("the defaults pass");
        let member = crate::id::MemberId::new("[2001:db8::1]:65000".parse().unwrap(), u64::MAX / 3);
        let writes = |budget: u64| {
            let mut all = Vec::new();
            let mut bytes = 0;
            loop {
                let n = all.len() as u64;
                let stamp = Stamp { ts: u64::MAX / 2 + n, client: member, seq: u64::MAX / 4 + n };
                let w =
                    WriteMeta::describe(stamp, WriteKind::Append, b"one line of an output\n", h.chunk_bytes);
                if bytes + w.described_bytes() > budget {
                    return all;
                }
                bytes += w.described_bytes();
                all.push(w);
            }
        };
        let frames = |merged: Vec<WriteMeta>| {
            let name = FileName::new(&"n".repeat(h.max_name_bytes)).unwrap();
            let deleted: Vec<Stamp> = (0..8).map(|i| Stamp { ts: i, client: member, seq: i }).collect();
            let stamps: Vec<Stamp> = merged.iter().map(|w| w.stamp).collect();
            let meta = FileMeta {
                name,
                create: None,
                generation: u64::MAX,
                merged,
                pending: vec![],
                incomplete: vec![],
            };
            let chunk = ReadChunk {
                view: 1,
                total_len: 1,
                writes: stamps,
                offset: 0,
                bytes: vec![7; h.chunk_bytes].into(),
            };
            [
                HydfsMsg::DescribeReply {
                    req: u64::MAX,
                    meta: Ok::<_, Refusal>(meta.clone()),
                    deleted: deleted.clone(),
                },
                HydfsMsg::Offer { meta, deleted },
                HydfsMsg::ReadReply { req: u64::MAX, result: Ok(chunk) },
            ]
            .map(|msg| {
                let envelope = Envelope {
                    from: member,
                    to: member.addr,
                    lane: Default::default(),
                    seq: crate::replay::FrameSeq(u64::MAX),
                    body: Body::Hydfs(msg),
                };
                Codec::plain().encode(&envelope, smallest).map(|f| f.len())
            })
        };
        let full = writes(h.max_file_meta_bytes);
        assert!(full.len() > 100_000, "the default limit holds {} appends", full.len());
        for sent in frames(full) {
            assert!(sent.is_ok(), "a full file's frames fit {smallest} bytes: {sent:?}");
        }
        let twice = writes(2 * h.max_file_meta_bytes);
        assert!(frames(twice).iter().any(Result::is_err), "a file twice as long would not fit");
    }

    #[test]
    fn limits_must_fit_together() {
        let (l, h, r) = (LimitsConfig::default(), HydfsConfig::default(), RainstormConfig::default());
        assert_eq!(check(&l, &h, &r), Ok(()));
        let small = LimitsConfig { stream_frame_bytes: h.chunk_bytes, ..l.clone() };
        let e = check(&small, &h, &r).unwrap_err();
        assert!(matches!(e, LimitsError::FrameTooSmall { .. }), "{e}");
        assert!(e.to_string().contains("stream_frame_bytes"), "{e}");
        let just =
            LimitsConfig { stream_frame_bytes: MAX_RECORD_BYTES + STREAM_FRAME_SLACK_BYTES, ..l.clone() };
        assert!(matches!(check(&just, &h, &r), Err(LimitsError::FileMetaOverFrame { .. })));
        let short = HydfsConfig { max_file_meta_bytes: MAX_RECORD_BYTES as u64, ..h.clone() };
        assert_eq!(check(&just, &short, &r), Ok(()));
        let under = LimitsConfig { stream_frame_bytes: just.stream_frame_bytes - 1, ..l.clone() };
        assert!(matches!(check(&under, &short, &r), Err(LimitsError::FrameTooSmall { .. })));
        let big_chunks = HydfsConfig { chunk_bytes: 16 << 20, ..h.clone() };
        assert!(matches!(check(&l, &big_chunks, &r), Err(LimitsError::FrameTooSmall { .. })));
        let no_burst = LimitsConfig { peer_request_burst: 0, ..l.clone() };
        assert_eq!(check(&no_burst, &h, &r), Err(LimitsError::NoBurst));
        let tight = HydfsConfig { max_pending_appends: r.compact_records as usize, ..h.clone() };
        assert!(matches!(check(&l, &tight, &r), Err(LimitsError::PendingBelowLog { .. })));
        let rare = RainstormConfig { merge_output_appends: 6_000, ..r.clone() };
        assert!(matches!(check(&l, &h, &rare), Err(LimitsError::OutputMerges { .. })));
        let unlimited = HydfsConfig { max_pending_appends: 0, ..h.clone() };
        assert_eq!(check(&l, &unlimited, &rare), Ok(()));
        let long = HydfsConfig { max_file_meta_bytes: l.stream_frame_bytes as u64, ..h.clone() };
        assert!(matches!(check(&l, &long, &r), Err(LimitsError::FileMetaOverFrame { .. })));
        let none = HydfsConfig { max_file_meta_bytes: 0, ..h.clone() };
        assert!(matches!(check(&l, &none, &r), Err(LimitsError::FileMetaOverFrame { .. })));
        let names = HydfsConfig { max_name_bytes: NAME_BYTES_CEILING + 1, ..h.clone() };
        assert!(matches!(check(&l, &names, &r), Err(LimitsError::NameLimit { .. })));
        let batch = RainstormConfig { max_batch_tuples: 10, batch_tuples: 64, ..r.clone() };
        assert!(matches!(check(&l, &h, &batch), Err(LimitsError::BatchTuples { .. })));
        let huge = RainstormConfig { batch_bytes: 5 << 20, ..r };
        assert!(matches!(check(&l, &h, &huge), Err(LimitsError::BatchBytes { .. })));
    }
}
