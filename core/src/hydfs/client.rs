//! The client half of [`Hydfs`]: operations routed to replicas with fail-over, per-client stamps,
//! and the read cache.
//!
//! Invariants kept here:
//! * one write per file in flight, stamps assigned at submission with a growing timestamp and
//!   sequence: a client's writes to a file keep their order;
//! * a read (from a replica or the cache) is accepted only if it includes every write this
//!   client has had acknowledged for the file;
//! * every operation ends with exactly one [`HydfsEvent::OpDone`] (or one reply to the node that
//!   asked for it, for a multiappend part), at the latest when its deadline passes.

use super::cache::{CachedFile, ReadCache};
use super::message::{HydfsMsg, MergeSummary, ReadChunk, Refusal, ReqId};
use super::ring::RingId;
use super::types::{FileDigest, Stamp, WriteKind, WriteMeta};
use super::{FileName, Hydfs, HydfsConfig, HydfsError, HydfsEvent, PlantedBug};
use crate::id::NodeAddr;
use crate::time::Time;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Identifies one client operation on this node.
pub type OpId = u64;

/// An operation a user asks of HyDFS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Create {
        name: FileName,
        data: Vec<u8>,
    },
    Append {
        name: FileName,
        data: Vec<u8>,
    },
    Get {
        name: FileName,
    },
    /// One replica's current copy, without fail-over or cache.
    GetFromReplica {
        name: FileName,
        replica: NodeAddr,
    },
    Merge {
        name: FileName,
    },
    /// The file's ring id and which replicas hold it.
    Ls {
        name: FileName,
    },
    /// Each listed node appends its bytes to the file, all at once.
    MultiAppend {
        name: FileName,
        appends: Vec<(NodeAddr, Vec<u8>)>,
    },
}

impl ClientOp {
    pub fn name(&self) -> &FileName {
        match self {
            ClientOp::Create { name, .. }
            | ClientOp::Append { name, .. }
            | ClientOp::Get { name }
            | ClientOp::GetFromReplica { name, .. }
            | ClientOp::Merge { name }
            | ClientOp::Ls { name }
            | ClientOp::MultiAppend { name, .. } => name,
        }
    }
}

/// What a finished operation produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpOutput {
    Written { name: FileName, stamp: Stamp, replicas: Vec<NodeAddr> },
    Content { name: FileName, bytes: Vec<u8>, writes: Vec<Stamp>, from: Option<NodeAddr> },
    Merged { name: FileName, summary: MergeSummary },
    Listed { name: FileName, ring_id: RingId, replicas: Vec<(NodeAddr, RingId, Option<FileDigest>)> },
    MultiAppended { name: FileName, nodes: Vec<NodeAddr> },
}

pub(super) struct ClientState {
    seq: u64,
    last_ts: u64,
    next_op: OpId,
    ops: BTreeMap<OpId, OpState>,
    queues: BTreeMap<FileName, VecDeque<OpId>>,
    acked: BTreeMap<FileName, BTreeSet<Stamp>>,
    uploads: BTreeMap<(FileName, Stamp), Vec<u8>>,
    requests: BTreeMap<ReqId, (OpId, NodeAddr, Time)>,
    pub(super) cache: ReadCache,
}

impl ClientState {
    pub(super) fn new(cfg: &HydfsConfig, now: Time) -> ClientState {
        ClientState {
            seq: 0,
            last_ts: now.0,
            next_op: 1,
            ops: BTreeMap::new(),
            queues: BTreeMap::new(),
            acked: BTreeMap::new(),
            uploads: BTreeMap::new(),
            requests: BTreeMap::new(),
            cache: ReadCache::new(cfg.cache_bytes),
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Time> {
        let ops = self.ops.values().flat_map(|o| [Some(o.deadline), o.wait_until]).flatten();
        ops.chain(self.requests.values().map(|r| r.2)).min()
    }
}

struct OpState {
    name: FileName,
    kind: Kind,
    deadline: Time,
    candidates: Vec<NodeAddr>,
    next: usize,
    not_found: usize,
    last_error: Option<String>,
    wait_until: Option<Time>,
    /// A multiappend part run for another node: answer it instead of emitting an event.
    remote: Option<(NodeAddr, ReqId)>,
    queued: bool,
}

enum Kind {
    Write {
        meta: WriteMeta,
    },
    Read {
        pinned: Option<NodeAddr>,
        buf: Vec<u8>,
        view: Option<u64>,
        total: u64,
        writes: Vec<Stamp>,
        restarts: u32,
    },
    Merge,
    Ls {
        waiting: BTreeSet<ReqId>,
        rows: Vec<(NodeAddr, RingId, Option<FileDigest>)>,
    },
    Multi {
        waiting: BTreeMap<ReqId, NodeAddr>,
        nodes: Vec<NodeAddr>,
        failed: Vec<String>,
    },
}

impl Hydfs {
    /// Starts a client operation; its result arrives as [`HydfsEvent::OpDone`] with the returned
    /// id (at once, for a cached read).
    pub fn submit(&mut self, now: Time, op: ClientOp) -> Result<OpId, HydfsError> {
        self.submit_inner(now, op, None)
    }

    /// Writes this client had acknowledged, per file (what its reads must include).
    pub fn acknowledged(&self, name: &FileName) -> usize {
        self.client.acked.get(name).map_or(0, |s| s.len())
    }

    fn submit_inner(
        &mut self,
        now: Time,
        op: ClientOp,
        remote: Option<(NodeAddr, ReqId)>,
    ) -> Result<OpId, HydfsError> {
        if let ClientOp::Create { data, .. } | ClientOp::Append { data, .. } = &op {
            if data.len() as u64 > self.cfg.max_write_bytes {
                return Err(HydfsError::TooLarge { len: data.len() as u64, limit: self.cfg.max_write_bytes });
            }
        }
        if let ClientOp::MultiAppend { appends, .. } = &op {
            if let Some((_, d)) = appends.iter().find(|(_, d)| d.len() as u64 > self.cfg.max_write_bytes) {
                return Err(HydfsError::TooLarge { len: d.len() as u64, limit: self.cfg.max_write_bytes });
            }
            if let Some((a, _)) = appends.iter().find(|(a, _)| !self.ring.contains(*a)) {
                return Err(HydfsError::NotAMember(*a));
            }
        }
        let id = self.client.next_op;
        self.client.next_op += 1;
        let name = op.name().clone();
        let is_create = matches!(op, ClientOp::Create { .. });
        let kind = match op {
            ClientOp::Create { data, .. } | ClientOp::Append { data, .. } => {
                let wk = if is_create { WriteKind::Create } else { WriteKind::Append };
                self.client.seq += 1;
                self.client.last_ts = now.0.max(self.client.last_ts + 1);
                let stamp = Stamp { ts: self.client.last_ts, client: self.client_id, seq: self.client.seq };
                let meta = WriteMeta::describe(stamp, wk, &data, self.chunk_bytes());
                self.client.uploads.insert((name.clone(), stamp), data);
                Kind::Write { meta }
            }
            ClientOp::Get { .. } => {
                if let Some(out) = self.cached(now, &name) {
                    self.finish(now, id, remote, Ok(out));
                    return Ok(id);
                }
                Kind::Read {
                    pinned: None,
                    buf: Vec::new(),
                    view: None,
                    total: 0,
                    writes: Vec::new(),
                    restarts: 0,
                }
            }
            ClientOp::GetFromReplica { replica, .. } => Kind::Read {
                pinned: Some(replica),
                buf: Vec::new(),
                view: None,
                total: 0,
                writes: Vec::new(),
                restarts: 0,
            },
            ClientOp::Merge { .. } => Kind::Merge,
            ClientOp::Ls { .. } => Kind::Ls { waiting: BTreeSet::new(), rows: Vec::new() },
            ClientOp::MultiAppend { appends, .. } => {
                let mut waiting = BTreeMap::new();
                let nodes: Vec<NodeAddr> = appends.iter().map(|(a, _)| *a).collect();
                let until = now + self.cfg.op_timeout;
                for (node, data) in appends {
                    let req = self.req_id();
                    self.client.requests.insert(req, (id, node, until));
                    self.send(node, HydfsMsg::RemoteAppend { req, name: name.clone(), data });
                    waiting.insert(req, node);
                }
                Kind::Multi { waiting, nodes, failed: Vec::new() }
            }
        };
        let is_write = matches!(kind, Kind::Write { .. });
        let is_multi = matches!(kind, Kind::Multi { .. });
        self.client.ops.insert(
            id,
            OpState {
                name: name.clone(),
                kind,
                deadline: now + self.cfg.op_timeout,
                candidates: Vec::new(),
                next: 0,
                not_found: 0,
                last_error: None,
                wait_until: None,
                remote,
                queued: is_write,
            },
        );
        if is_multi {
            return Ok(id);
        }
        if is_write {
            let q = self.client.queues.entry(name).or_default();
            q.push_back(id);
            if q.len() > 1 {
                return Ok(id);
            }
        }
        self.dispatch(now, id);
        Ok(id)
    }

    fn chunk_bytes(&self) -> usize {
        if self.cfg.bug(PlantedBug::UnchunkedTransfers) {
            usize::MAX >> 1
        } else {
            self.cfg.chunk_bytes
        }
    }

    fn cached(&mut self, now: Time, name: &FileName) -> Option<OpOutput> {
        let ignore_own = self.cfg.bug(PlantedBug::CacheIgnoresOwnWrites);
        let ttl = self.cfg.cache_ttl;
        let own = self.client.acked.get(name).cloned().unwrap_or_default();
        let hit = match self.client.cache.get(name) {
            Some(entry) if now <= entry.fetched_at + ttl && (ignore_own || own.is_subset(&entry.writes)) => {
                Some(OpOutput::Content {
                    name: name.clone(),
                    bytes: entry.content.clone(),
                    writes: entry.writes.iter().copied().collect(),
                    from: None,
                })
            }
            Some(_) => {
                self.client.cache.invalidate(name);
                None
            }
            None => None,
        };
        match hit {
            Some(_) => self.client.cache.hits += 1,
            None => self.client.cache.misses += 1,
        }
        hit
    }

    /// Sends the operation's next attempt to its next candidate replica.
    fn dispatch(&mut self, now: Time, id: OpId) {
        let Some(op) = self.client.ops.get_mut(&id) else { return };
        op.wait_until = None;
        if op.candidates.is_empty() || op.next >= op.candidates.len() {
            let round_over = !op.candidates.is_empty();
            if round_over && op.not_found >= op.candidates.len() {
                let name = op.name.clone();
                return self.finish(now, id, None, Err(HydfsError::NotFound(name)));
            }
            let candidates = match &op.kind {
                Kind::Read { pinned: Some(r), .. } => vec![*r],
                _ => self.ring.replicas(op.name.as_str(), self.cfg.replication),
            };
            let op = self.client.ops.get_mut(&id).expect("present");
            if candidates.is_empty() {
                let name = op.name.clone();
                return self.finish(now, id, None, Err(HydfsError::NoLiveReplica(name)));
            }
            if matches!(op.kind, Kind::Read { pinned: Some(_), .. }) && round_over {
                let reason = op.last_error.clone().unwrap_or_else(|| "no answer".into());
                let name = op.name.clone();
                return self.finish(now, id, None, Err(HydfsError::Unavailable { name, reason }));
            }
            op.candidates = candidates;
            op.next = 0;
            op.not_found = 0;
            if round_over {
                op.wait_until = Some(now + self.cfg.retry_interval);
                return;
            }
        }
        let op = self.client.ops.get_mut(&id).expect("present");
        let to = op.candidates[op.next];
        op.next += 1;
        let name = op.name.clone();
        let req = self.next_req + 1;
        self.next_req = req;
        let (msg, timeout) = match &mut op.kind {
            Kind::Write { meta } => {
                let inline = match meta.parts.len() {
                    0 => Some(Vec::new()),
                    1 if meta.len() <= self.cfg.inline_bytes as u64 => {
                        self.client.uploads.get(&(name.clone(), meta.stamp)).cloned()
                    }
                    _ => None,
                };
                let msg = HydfsMsg::Write { req, name, write: meta.clone(), inline, source: self.me };
                (msg, self.cfg.coordinator_timeout + self.cfg.request_timeout)
            }
            Kind::Read { pinned, buf, view, total, writes, .. } => {
                buf.clear();
                *view = None;
                *total = 0;
                writes.clear();
                let needs = if pinned.is_some() {
                    Vec::new()
                } else {
                    self.client.acked.get(&name).map(|s| s.iter().copied().collect()).unwrap_or_default()
                };
                (HydfsMsg::Read { req, name, offset: 0, view: None, needs }, self.cfg.request_timeout)
            }
            Kind::Merge => {
                (HydfsMsg::Merge { req, name }, self.cfg.coordinator_timeout + self.cfg.request_timeout)
            }
            Kind::Ls { waiting, .. } => {
                // Ask every replica at once.
                let targets = op.candidates.clone();
                op.next = targets.len();
                waiting.clear();
                let until = now + self.cfg.request_timeout;
                for t in targets {
                    let r = self.next_req + 1;
                    self.next_req = r;
                    waiting.insert(r);
                    self.client.requests.insert(r, (id, t, until));
                    self.out.push_back((t, HydfsMsg::Stat { req: r, name: name.clone() }));
                }
                return;
            }
            Kind::Multi { .. } => return,
        };
        self.client.requests.insert(req, (id, to, now + timeout));
        self.send(to, msg);
    }

    /// The attempt at `req` failed: try the next replica.
    fn attempt_failed(&mut self, now: Time, id: OpId, why: String, not_found: bool) {
        let Some(op) = self.client.ops.get_mut(&id) else { return };
        op.last_error = Some(why);
        if not_found {
            op.not_found += 1;
        }
        self.dispatch(now, id);
    }

    fn finish(
        &mut self,
        now: Time,
        id: OpId,
        remote: Option<(NodeAddr, ReqId)>,
        result: Result<OpOutput, HydfsError>,
    ) {
        let state = self.client.ops.remove(&id);
        self.client.requests.retain(|_, (op, _, _)| *op != id);
        let remote = remote.or_else(|| state.as_ref().and_then(|s| s.remote));
        if let Some(OpState { name, kind: Kind::Write { meta }, queued: true, .. }) = &state {
            self.client.uploads.remove(&(name.clone(), meta.stamp));
            if result.is_ok() {
                self.client.acked.entry(name.clone()).or_default().insert(meta.stamp);
                if !self.cfg.bug(PlantedBug::CacheIgnoresOwnWrites) {
                    self.client.cache.invalidate(name);
                }
            }
            if let Some(q) = self.client.queues.get_mut(name) {
                q.retain(|o| *o != id);
                let next = q.front().copied();
                if q.is_empty() {
                    self.client.queues.remove(name);
                }
                if let Some(next) = next {
                    self.dispatch(now, next);
                }
            }
        }
        if let Some(OpState { name, kind: Kind::Merge, .. }) = &state {
            self.client.cache.invalidate(name);
        }
        match remote {
            Some((to, req)) => {
                let result = result.map(|_| ()).map_err(|e| e.to_string());
                self.send(to, HydfsMsg::RemoteAppendReply { req, result });
            }
            None => self.events.push_back(HydfsEvent::OpDone { op: id, result }),
        }
    }

    fn take_request(&mut self, req: ReqId, from: NodeAddr) -> Option<OpId> {
        match self.client.requests.get(&req) {
            Some((op, to, _)) if *to == from => {
                let op = *op;
                self.client.requests.remove(&req);
                Some(op)
            }
            _ => None,
        }
    }

    fn refusal(&mut self, now: Time, id: OpId, from: NodeAddr, r: Refusal) {
        let name = match self.client.ops.get(&id) {
            Some(op) => op.name.clone(),
            None => return,
        };
        match r {
            Refusal::AlreadyExists => self.finish(now, id, None, Err(HydfsError::AlreadyExists(name))),
            Refusal::TooLarge { limit } => {
                let len = match &self.client.ops[&id].kind {
                    Kind::Write { meta } => meta.len(),
                    _ => 0,
                };
                self.finish(now, id, None, Err(HydfsError::TooLarge { len, limit }))
            }
            Refusal::NotFound => self.attempt_failed(now, id, format!("{from}: not found"), true),
            other => self.attempt_failed(now, id, format!("{from}: {other:?}"), false),
        }
    }

    pub(super) fn on_write_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<Vec<NodeAddr>, Refusal>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        match result {
            Ok(replicas) => {
                let Some(OpState { name, kind: Kind::Write { meta }, .. }) = self.client.ops.get(&id) else {
                    return;
                };
                let out = OpOutput::Written { name: name.clone(), stamp: meta.stamp, replicas };
                self.finish(now, id, None, Ok(out));
            }
            Err(r) => self.refusal(now, id, from, r),
        }
    }

    pub(super) fn on_merge_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<MergeSummary, Refusal>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        match result {
            Ok(summary) => {
                let name = self.client.ops[&id].name.clone();
                self.finish(now, id, None, Ok(OpOutput::Merged { name, summary }));
            }
            Err(r) => self.refusal(now, id, from, r),
        }
    }

    pub(super) fn on_read_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<ReadChunk, Refusal>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        let chunk = match result {
            Ok(c) => c,
            Err(Refusal::ViewChanged) => {
                let Some(OpState { kind: Kind::Read { restarts, .. }, next, .. }) =
                    self.client.ops.get_mut(&id)
                else {
                    return;
                };
                *restarts += 1;
                if *restarts <= 5 {
                    *next -= 1; // read the same replica again, from the start
                }
                return self.dispatch(now, id);
            }
            Err(r) => return self.refusal(now, id, from, r),
        };
        let timeout = self.cfg.request_timeout;
        let Some(op) = self.client.ops.get_mut(&id) else { return };
        let name = op.name.clone();
        let Kind::Read { buf, view, total, writes, pinned, .. } = &mut op.kind else { return };
        if chunk.offset != buf.len() as u64 || view.is_some_and(|v| v != chunk.view) {
            return self.attempt_failed(now, id, format!("{from}: inconsistent chunk"), false);
        }
        if chunk.offset == 0 {
            *view = Some(chunk.view);
            *total = chunk.total_len;
            *writes = chunk.writes;
        }
        buf.extend_from_slice(&chunk.bytes);
        if (buf.len() as u64) < *total {
            if chunk.bytes.is_empty() {
                return self.attempt_failed(now, id, format!("{from}: empty chunk"), false);
            }
            let offset = buf.len() as u64;
            let v = *view;
            let r = self.next_req + 1;
            self.next_req = r;
            self.client.requests.insert(r, (id, from, now + timeout));
            self.send(from, HydfsMsg::Read { req: r, name, offset, view: v, needs: Vec::new() });
            return;
        }
        let bytes = std::mem::take(buf);
        let writes = std::mem::take(writes);
        if pinned.is_none() {
            let set: BTreeSet<Stamp> = writes.iter().copied().collect();
            let entry = CachedFile { content: bytes.clone(), writes: set, fetched_at: now };
            self.client.cache.insert(name.clone(), entry);
        }
        self.finish(now, id, None, Ok(OpOutput::Content { name, bytes, writes, from: Some(from) }));
    }

    pub(super) fn on_stat_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        digest: Option<FileDigest>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        let Some(OpState { kind: Kind::Ls { waiting, rows }, .. }) = self.client.ops.get_mut(&id) else {
            return;
        };
        waiting.remove(&req);
        rows.push((from, RingId::of_node(from), digest));
        self.ls_maybe_done(now, id);
    }

    fn ls_maybe_done(&mut self, now: Time, id: OpId) {
        let Some(OpState { name, kind: Kind::Ls { waiting, rows }, .. }) = self.client.ops.get(&id) else {
            return;
        };
        if !waiting.is_empty() {
            return;
        }
        let name = name.clone();
        let mut rows = rows.clone();
        let order = self.ring.replicas(name.as_str(), self.cfg.replication);
        rows.sort_by_key(|(a, _, _)| order.iter().position(|o| o == a).unwrap_or(usize::MAX));
        let result = if rows.iter().any(|(_, _, d)| d.is_some_and(|d| d.create.is_some())) {
            Ok(OpOutput::Listed { ring_id: RingId::of_file(name.as_str()), name, replicas: rows })
        } else {
            Err(HydfsError::NotFound(name))
        };
        self.finish(now, id, None, result);
    }

    pub(super) fn on_remote_append(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        name: FileName,
        data: Vec<u8>,
    ) {
        if let Err(e) = self.submit_inner(now, ClientOp::Append { name, data }, Some((from, req))) {
            self.send(from, HydfsMsg::RemoteAppendReply { req, result: Err(e.to_string()) });
        }
    }

    pub(super) fn on_remote_append_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<(), String>,
    ) {
        let Some(id) = self.take_request(req, from) else { return };
        let Some(OpState { kind: Kind::Multi { waiting, failed, .. }, .. }) = self.client.ops.get_mut(&id)
        else {
            return;
        };
        waiting.remove(&req);
        if let Err(e) = result {
            failed.push(format!("{from}: {e}"));
        }
        self.multi_maybe_done(now, id);
    }

    fn multi_maybe_done(&mut self, now: Time, id: OpId) {
        let Some(OpState { name, kind: Kind::Multi { waiting, nodes, failed }, .. }) =
            self.client.ops.get(&id)
        else {
            return;
        };
        if !waiting.is_empty() {
            return;
        }
        let result = if failed.is_empty() {
            Ok(OpOutput::MultiAppended { name: name.clone(), nodes: nodes.clone() })
        } else {
            Err(HydfsError::MultiAppend {
                failed: failed.len(),
                total: nodes.len(),
                detail: failed.join("; "),
            })
        };
        self.finish(now, id, None, result);
    }

    /// The bytes of a part this client is uploading (coordinators fetch large writes from it).
    pub(super) fn client_upload_part(&self, name: &FileName, stamp: Stamp, part: u32) -> Option<Vec<u8>> {
        let data = self.client.uploads.get(&(name.clone(), stamp))?;
        let chunk = self.chunk_bytes();
        let start = (part as usize).checked_mul(chunk)?;
        if start >= data.len() {
            return None;
        }
        Some(data[start..data.len().min(start.saturating_add(chunk))].to_vec())
    }

    fn request_lost(&mut self, now: Time, req: ReqId) {
        let Some((id, to, _)) = self.client.requests.remove(&req) else { return };
        let Some(op) = self.client.ops.get_mut(&id) else { return };
        match &mut op.kind {
            Kind::Ls { waiting, rows } => {
                waiting.remove(&req);
                rows.push((to, RingId::of_node(to), None));
                self.ls_maybe_done(now, id);
            }
            Kind::Multi { waiting, failed, .. } => {
                waiting.remove(&req);
                failed.push(format!("{to}: no answer"));
                self.multi_maybe_done(now, id);
            }
            _ => self.attempt_failed(now, id, format!("{to}: no answer"), false),
        }
    }

    pub(super) fn client_tick(&mut self, now: Time) {
        let lost: Vec<ReqId> =
            self.client.requests.iter().filter(|(_, r)| r.2 <= now).map(|(id, _)| *id).collect();
        for req in lost {
            self.request_lost(now, req);
        }
        let due: Vec<OpId> = self
            .client
            .ops
            .iter()
            .filter(|(_, o)| o.wait_until.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.dispatch(now, id);
        }
        let expired: Vec<OpId> =
            self.client.ops.iter().filter(|(_, o)| o.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            let Some(op) = self.client.ops.get(&id) else { continue };
            let reason = op.last_error.clone().unwrap_or_else(|| "timed out".into());
            let name = op.name.clone();
            self.finish(now, id, None, Err(HydfsError::Unavailable { name, reason }));
        }
    }

    pub(super) fn client_send_failed(&mut self, now: Time, to: NodeAddr) {
        let lost: Vec<ReqId> =
            self.client.requests.iter().filter(|(_, r)| r.1 == to).map(|(id, _)| *id).collect();
        for req in lost {
            self.request_lost(now, req);
        }
    }
}
