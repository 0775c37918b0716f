//! Parts: pulling the parts of the writes this node records but lacks (`ensure_write`: one
//! `FetchJob` per part, asking its sources in turn), copying the parts of this node's own
//! uploads into its store a few per tick, and serving parts to other nodes (`on_fetch`).
//!
//! Invariants kept here:
//! * fetched bytes are checked against the write's declared CRC before they are stored;
//! * bytes are stored only for a write still in this node's index (never a block nothing
//!   points at);
//! * at most `fetch_window` fetches are in flight; waiting ones start in class order (client
//!   writes, then merges, then repairs), and repairs also draw on the `repair_bytes_per_sec`
//!   token bucket.

use super::{FetchClass, FetchJob, Pending};
use crate::hydfs::message::{FetchRequest, HydfsMsg, PartBytes, Refusal, ReqId};
use crate::hydfs::store::PartError;
use crate::hydfs::types::{PartMeta, Stamp, WriteMeta};
use crate::hydfs::{FileName, Hydfs};
use crate::id::NodeAddr;
use crate::time::Time;

/// Parts of a node's own upload copied into its store per tick.
const LOCAL_COPIES_PER_TICK: usize = 4;

impl Hydfs {
    /// Starts fetching every part of `w` this node lacks (as the fetch window allows).
    pub(super) fn ensure_write(
        &mut self,
        now: Time,
        name: &FileName,
        w: &WriteMeta,
        sources: &[NodeAddr],
        class: FetchClass,
    ) {
        for (i, part) in w.parts.iter().enumerate() {
            let i = i as u32;
            let key = (name.clone(), w.stamp, i);
            if self.store.has_part(name, w.stamp, i) {
                continue;
            }
            if self.has_upload(name, w.stamp) {
                self.server.local_copies.insert(key);
                continue;
            }
            let srcs: Vec<NodeAddr> = sources.iter().copied().filter(|s| *s != self.me).collect();
            if let Some(job) = self.server.fetches.get_mut(&key) {
                for s in srcs {
                    if !job.sources.contains(&s) {
                        job.sources.push(s);
                    }
                }
                job.class = job.class.min(class);
                if job.in_flight.is_none() {
                    self.next_fetch(now, key);
                }
                continue;
            }
            if srcs.is_empty() {
                continue;
            }
            self.server.fetches.insert(
                key.clone(),
                FetchJob { part: *part, sources: srcs, next: 0, in_flight: None, class },
            );
            self.next_fetch(now, key);
        }
    }

    /// Asks the job's next source for its part, if the window (and, for a repair, the rate
    /// limit) allows; otherwise the job waits for [`Hydfs::pump_fetches`].
    pub(super) fn next_fetch(&mut self, now: Time, key: (FileName, Stamp, u32)) {
        let Some(job) = self.server.fetches.get(&key) else { return };
        if job.next >= job.sources.len() {
            // Every source failed; anti-entropy will find another copy later.
            self.server.fetches.remove(&key);
            return self.pump_fetches(now);
        }
        let in_flight = self.server.fetches.values().filter(|j| j.in_flight.is_some()).count();
        if in_flight >= self.cfg.fetch_window.max(1) {
            return;
        }
        let (class, len) = (job.class, job.part.len as i64);
        if class == FetchClass::Repair && !self.take_repair_tokens(now, len) {
            return;
        }
        let job = self.server.fetches.get_mut(&key).expect("present");
        let to = job.sources[job.next];
        job.next += 1;
        let (name, stamp, part) = key.clone();
        let req = self.ask(now, to, Pending::Fetch { key: key.clone() }, |req| {
            HydfsMsg::Fetch(FetchRequest { req, name, stamp, part })
        });
        if let Some(job) = self.server.fetches.get_mut(&key) {
            job.in_flight = Some(req);
        }
    }

    /// Copies up to [`LOCAL_COPIES_PER_TICK`] parts of this node's own uploads into its store.
    pub(super) fn copy_local_parts(&mut self) {
        for _ in 0..LOCAL_COPIES_PER_TICK {
            let Some((name, stamp, part)) = self.server.local_copies.pop_first() else { return };
            let meta = self
                .store
                .file(&name)
                .and_then(|r| r.find(&stamp))
                .and_then(|w| w.parts.get(part as usize).copied());
            let (Some(meta), Some(Ok(bytes))) = (meta, self.upload_part(&name, stamp, part)) else {
                continue; // the write is gone, or its source failed (which fails the write)
            };
            match self.store.put_bulk_part((&name, stamp, part), meta, &bytes) {
                Ok(_) => {}
                Err(e) => {
                    self.storage_failed(&e.to_string());
                    self.fail_writes(Some((&name, stamp)), &e.to_string());
                }
            }
        }
    }

    /// Starts waiting fetches while the window has room: writes, then merges, then repairs, each
    /// class in key order. Only as many waiting jobs as there is room for are looked at each
    /// time (never all of them cloned and sorted): a transfer of a large file keeps a job per
    /// part waiting, and this runs for every part that arrives.
    pub(super) fn pump_fetches(&mut self, now: Time) {
        let window = self.cfg.fetch_window.max(1);
        let mut in_flight = self.server.fetches.values().filter(|j| j.in_flight.is_some()).count();
        for class in [FetchClass::Write, FetchClass::Merge, FetchClass::Repair] {
            let mut after: Option<(FileName, Stamp, u32)> = None;
            loop {
                if in_flight >= window {
                    return;
                }
                let from = match &after {
                    Some(k) => std::ops::Bound::Excluded(k.clone()),
                    None => std::ops::Bound::Unbounded,
                };
                let batch: Vec<(FileName, Stamp, u32)> = self
                    .server
                    .fetches
                    .range((from, std::ops::Bound::Unbounded))
                    .filter(|(_, j)| j.in_flight.is_none() && j.class == class)
                    .map(|(k, _)| k.clone())
                    .take(window - in_flight)
                    .collect();
                let Some(last) = batch.last() else { break };
                after = Some(last.clone());
                for key in batch {
                    if in_flight >= window {
                        return;
                    }
                    self.next_fetch(now, key.clone());
                    if self.server.fetches.get(&key).is_some_and(|j| j.in_flight.is_some()) {
                        in_flight += 1;
                    } else if self.server.repair_wake.is_some() {
                        return; // the rate limit holds back every later repair too
                    }
                }
            }
        }
        debug_assert!(
            self.server.fetches.values().filter(|j| j.in_flight.is_some()).count() <= window,
            "at most fetch_window fetches are in flight"
        );
    }

    /// Takes `len` bytes from the repair budget, or arms a wake-up for when it allows them.
    fn take_repair_tokens(&mut self, now: Time, len: i64) -> bool {
        let rate = self.cfg.repair_bytes_per_sec as i64;
        if rate <= 0 {
            return true;
        }
        let burst = (rate / 4).max(self.cfg.chunk_bytes as i64);
        let elapsed = now.0.saturating_sub(self.server.repair_refilled.0) as i64;
        let s = &mut self.server;
        s.repair_tokens = (s.repair_tokens + rate.saturating_mul(elapsed) / 1000).min(burst);
        s.repair_refilled = now;
        if s.repair_tokens >= 0 {
            s.repair_tokens -= len;
            return true;
        }
        let wait_ms = ((-s.repair_tokens) * 1000 + rate - 1) / rate;
        s.repair_wake = Some(now + crate::time::Millis(wait_ms.max(1) as u64));
        false
    }

    pub(in crate::hydfs) fn on_fetch(&mut self, now: Time, from: NodeAddr, msg: FetchRequest) {
        let FetchRequest { req, name, stamp, part } = msg;
        let declared = self.store.part_meta(&name, stamp, part);
        let result = match self.store.read_bulk_part(&name, stamp, part) {
            Ok(bytes) => match declared {
                Some(meta) => Ok(PartBytes { meta, bytes }),
                None => Err(Refusal::NotFound),
            },
            Err(PartError::Corrupt) => {
                self.corruption(&name, stamp, part);
                Err(Refusal::Corrupt)
            }
            Err(PartError::Lost(e)) => {
                self.part_lost(&name, stamp, part, &e);
                Err(Refusal::Unavailable(format!("{}: {e}", self.me)))
            }
            Err(PartError::Missing) => match self.upload_part(&name, stamp, part) {
                Some(Ok(bytes)) => {
                    let meta =
                        self.upload_part_meta(&name, stamp, part).unwrap_or_else(|| PartMeta::of(&bytes));
                    Ok(PartBytes { meta, bytes })
                }
                Some(Err(e)) => {
                    self.upload_failed(now, &name, stamp, e.clone());
                    Err(Refusal::Unavailable(e))
                }
                None => Err(Refusal::NotFound),
            },
        };
        self.send(from, HydfsMsg::FetchReply { req, result });
    }

    pub(in crate::hydfs) fn on_fetch_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<PartBytes, Refusal>,
    ) {
        let Some(Pending::Fetch { key }) = self.answered(req, from) else {
            return;
        };
        let Some(job) = self.server.fetches.get_mut(&key) else { return };
        if job.in_flight != Some(req) {
            return;
        }
        job.in_flight = None;
        let (part, for_merge) = (job.part, job.class == FetchClass::Merge);
        let (name, stamp, i) = key.clone();
        if !self.store.holds_write(&name, &stamp) {
            // The write left this node's index meanwhile (dropped, deleted, lost a create race):
            // its bytes would be a block nothing points at.
            self.server.fetches.remove(&key);
            return self.pump_fetches(now);
        }
        // The bytes are checked against the metadata this node holds for the part (what the
        // source declares is for clients, which have nothing else to check against).
        if let Ok(PartBytes { bytes, .. }) = result {
            match self.store.put_bulk_part((&name, stamp, i), part, &bytes) {
                Ok(true) => {
                    self.server.fetches.remove(&key);
                    self.stats.parts_fetched += 1;
                    self.stats.bytes_fetched += bytes.len() as u64;
                    if for_merge {
                        self.stats.bytes_fetched_for_merges += bytes.len() as u64;
                        self.credit_merge_bytes(&name, bytes.len() as u64);
                    }
                    return self.pump_fetches(now);
                }
                Ok(false) => {} // wrong bytes: try the next source
                Err(e) => {
                    self.storage_failed(&e.to_string());
                    self.server.fetches.remove(&key);
                    self.fail_writes(Some((&name, stamp)), &e.to_string());
                    return self.pump_fetches(now);
                }
            }
        }
        self.next_fetch(now, key);
    }
}
