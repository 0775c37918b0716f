//! The HyDFS workload and its checkers.
//!
//! Clients (chosen slots) create, append, get, merge, multiappend, list and delete Zipf-skewed
//! files, one operation in flight each. A delete is issued only on a file no operation is in
//! flight on, and no operation is issued on a file while its delete is in flight (so every
//! write is known to belong to the file before or after the delete). Every byte a client writes is self-describing: a 16-byte header
//! (magic, tag, length) and filler derived from the tag, so any content read back can be parsed
//! into the writes it holds and any corrupted or garbled byte is noticed.
//!
//! Checkers (each proven by a planted bug in `rainstorm_core::hydfs::PlantedBug`):
//! * **durability**: when a coordinator acknowledges a write, every replica of its view (all
//!   `min(r, ring)` of them) holds the write *synced* on its disk (a node that is down counts
//!   through what its disk had synced when it crashed; a replica whose disk rotted or lost a
//!   block counts only while it still holds the copy); with a power cut in every seed, the
//!   **loss** checker then proves what was synced is recovered;
//! * **create-once**: at most one create of a name is acknowledged (while the network is whole);
//! * **read-your-writes**: a read includes every write its client had acknowledged before asking;
//! * **order**: each client's writes appear in the order it issued them;
//! * **loss**: no acknowledged write is missing and none appears twice, in reads and at the end;
//! * **corrupt-served**: no read returns bytes that are not exactly some client's write;
//! * **identical**: when the final merge is acknowledged every replica has its merged order, and
//!   at the end all copies of a file are identical with nothing pending;
//! * **placement**: at the end every file is on exactly its first `r` successors and nowhere else;
//! * **liveness**: every merge after the faults stop succeeds;
//! * **chunking** (checked by the world): no stream frame is larger than a chunk plus headers;
//! * **deleted**: once a delete is acknowledged, no read issued later (from a replica; a node's
//!   read cache may serve a stale copy for up to `cache_ttl`, as it may for any file) holds a
//!   write of the deleted file, and at the end no live node holds a copy of it;
//! * **leaked-blocks**: at the end, every block on a live node's disk is one its file index
//!   points at, and every indexed part belongs to a write the index holds (deleted and dropped
//!   files free their blocks);
//! * **recovered**: when a process starts, every part its recovered index names is on its disk
//!   and matches its checksum (what rotted or went missing while it was down is dropped, to be
//!   fetched again, not counted as held).

use crate::check::CheckerKind;
use crate::disk::SimDisk;
use crate::scenario::Slot;
use rainstorm_core::hydfs::{
    ClientOp, FileName, Hydfs, HydfsConfig, HydfsError, HydfsEvent, OpId, OpOutput, PartMeta, PartSource,
    ReadFrom, Ring, Stamp, UploadSource, WriteKind,
};
use rainstorm_core::{NodeAddr, Time};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The file workload of a scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HydfsWorkload {
    pub config: HydfsConfig,
    /// Slots that act as clients.
    pub clients: Vec<Slot>,
    pub files: usize,
    /// Zipf exponent, in thousandths (0 = uniform).
    pub zipf_milli: u32,
    /// Mean pause between one client's operations.
    pub think_ms: u64,
    /// Share of writes that are large, per thousand.
    pub large_permille: u32,
    pub small_max_bytes: u32,
    pub large_max_bytes: u32,
    /// Operations run from `start_ms` to `stop_ms`.
    pub start_ms: u64,
    pub stop_ms: u64,
    /// When every file is merged once (after the faults stop and re-replication has had time).
    pub final_merge_ms: u64,
    /// Disks flush in the background: a sync first answers "in progress", as a real node's
    /// large flushes do.
    #[serde(default)]
    pub background_sync: bool,
}

impl HydfsWorkload {
    /// No file workload: only the HyDFS settings (for scenarios whose files come from another
    /// layer, such as a RainStorm job's input, checkpoint log and output).
    pub fn settings_only(config: HydfsConfig, background_sync: bool) -> HydfsWorkload {
        HydfsWorkload {
            config,
            clients: Vec::new(),
            files: 0,
            zipf_milli: 0,
            think_ms: 1_000,
            large_permille: 0,
            small_max_bytes: 0,
            large_max_bytes: 0,
            start_ms: u64::MAX,
            stop_ms: 0,
            final_merge_ms: 0,
            background_sync,
        }
    }
}

/// How often the workload looks for idle clients.
pub const WORKLOAD_TICK_MS: u64 = 100;
const HEADER: usize = 16;
const MAGIC: u32 = 0x4844_4653;

/// What the checkers see of one slot.
pub struct SlotView<'a> {
    pub slot: Slot,
    pub addr: NodeAddr,
    pub generation: u64,
    pub up: bool,
    pub joined: bool,
    pub hydfs: Option<&'a Hydfs>,
    pub disk: &'a SimDisk,
}

/// The bytes of one tagged write.
pub fn payload(tag: u64, len: usize) -> Vec<u8> {
    let len = len.max(HEADER);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&MAGIC.to_le_bytes());
    v.extend_from_slice(&tag.to_le_bytes());
    v.extend_from_slice(&(len as u32).to_le_bytes());
    v.extend((HEADER..len).map(|i| filler(tag, i)));
    v
}

fn filler(tag: u64, i: usize) -> u8 {
    (tag.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64 * 7) >> 3) as u8
}

/// Splits content into the tags of its writes, or says where it is garbled.
pub fn parse(content: &[u8]) -> Result<Vec<u64>, String> {
    let mut tags = Vec::new();
    let mut pos = 0;
    while pos < content.len() {
        let rest = &content[pos..];
        if rest.len() < HEADER {
            return Err(format!("{} stray bytes at offset {pos}", rest.len()));
        }
        let magic = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let tag = u64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(rest[12..16].try_into().expect("4 bytes")) as usize;
        if magic != MAGIC || len < HEADER || len > rest.len() {
            return Err(format!("no write header at offset {pos}"));
        }
        if let Some(i) = (HEADER..len).find(|&i| rest[i] != filler(tag, i)) {
            return Err(format!("byte {} of write {tag} (offset {}) is wrong", i, pos + i));
        }
        tags.push(tag);
        pos += len;
    }
    Ok(tags)
}

#[derive(Clone, Debug)]
struct TagInfo {
    file: usize,
    writer: (Slot, u64),
    /// Issue order among the writer's direct writes to this file.
    order: u64,
    create: bool,
    /// Issued by the writer itself (not a multiappend part): its order is checked.
    direct: bool,
    acked: bool,
    /// The file's incarnation (deletes before it) when the write was issued.
    incarnation: u32,
}

struct InFlight {
    client: Slot,
    file: usize,
    tags: Vec<u64>,
    kind: &'static str,
    /// Tags this client had acknowledged for the file when it asked (for reads).
    own_acked: Vec<u64>,
    whole_network: bool,
    final_merge: bool,
    /// When the operation was issued.
    issued: Time,
}

#[derive(Default)]
struct FileTruth {
    create_acked: Option<u64>,
    create_tried: bool,
    acked: BTreeSet<u64>,
    /// Deletes of the name issued so far (acknowledged or not): writes issued since belong to a
    /// later file of the name.
    incarnation: u32,
    /// Incarnations whose delete was acknowledged, and when.
    deleted: BTreeMap<u32, Time>,
    /// Workload operations in flight on the file.
    busy: usize,
    /// A delete of the file is in flight.
    deleting: bool,
}

impl FileTruth {
    /// A delete ended (acknowledged or not): what follows is about the next file of the name.
    fn next_incarnation(&mut self) {
        self.incarnation += 1;
        self.create_acked = None;
        self.create_tried = false;
        self.acked.clear();
    }
}

/// Counts of what the workload did.
#[derive(Clone, Debug, Default)]
pub struct WorkloadStats {
    pub ops: BTreeMap<&'static str, (u64, u64)>,
    pub bytes_written: u64,
    pub bytes_read: u64,
    /// Creates reported as failed after their cancel reached every replica.
    pub creates_cancelled: u64,
}

pub struct HydfsHarness {
    w: HydfsWorkload,
    rng: ChaCha8Rng,
    next_tag: u64,
    tags: BTreeMap<u64, TagInfo>,
    files: Vec<FileTruth>,
    order: BTreeMap<((Slot, u64), usize), u64>,
    in_flight: BTreeMap<(Slot, u64, OpId), InFlight>,
    /// Bytes delivered so far by each download in flight.
    downloads: BTreeMap<(Slot, u64, OpId), Vec<u8>>,
    busy: BTreeSet<Slot>,
    final_merges_sent: bool,
    final_merge_result: BTreeMap<usize, Result<(), String>>,
    /// Writes whose coordinator acknowledged them while its view listed every live member.
    whole_view_commits: BTreeSet<(FileName, rainstorm_core::hydfs::Stamp)>,
    /// The writes each crashed node's disk held synced when its process died (a node that is
    /// down keeps them; its next process recovers them).
    kept_while_down: BTreeMap<Slot, BTreeSet<(FileName, Stamp)>>,
    /// Files each process (slot, generation) was asked to replicate. A replica answers a
    /// coordinator's `Replicate` only from the process that received it, so a listed replica
    /// whose current process never received one for the file acknowledged from an earlier
    /// process: one that has since crashed (its disk with it) and restarted at the same address.
    replicated: BTreeSet<(Slot, u64, FileName)>,
    /// Files whose delete was acknowledged: name, create stamp, and when.
    deleted_files: BTreeMap<(FileName, Stamp), Time>,
    /// Creates reported as failed and cancelled, with when (by stamp, and by the tag of their
    /// content).
    failed_creates: BTreeMap<(FileName, Stamp), Time>,
    failed_create_tags: BTreeMap<u64, Time>,
    pub stats: WorkloadStats,
    violations: Vec<(Time, CheckerKind, String)>,
}

/// Upload bytes held in memory (a real node reads a local file instead).
struct MemSource(Vec<u8>);

impl PartSource for MemSource {
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let start = usize::try_from(offset).map_err(|e| e.to_string())?;
        self.0.get(start..start + len).map(<[u8]>::to_vec).ok_or_else(|| "read past the end".to_string())
    }
}

/// One operation the world should submit for the workload.
pub struct Submission {
    pub slot: Slot,
    pub op: ClientOp,
    token: InFlight,
}

impl HydfsHarness {
    pub fn new(w: HydfsWorkload, seed: u64) -> HydfsHarness {
        let files = (0..w.files).map(|_| FileTruth::default()).collect();
        HydfsHarness {
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x4859_4446_5300_0001),
            w,
            next_tag: 1,
            tags: BTreeMap::new(),
            files,
            order: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            downloads: BTreeMap::new(),
            busy: BTreeSet::new(),
            final_merges_sent: false,
            final_merge_result: BTreeMap::new(),
            whole_view_commits: BTreeSet::new(),
            kept_while_down: BTreeMap::new(),
            replicated: BTreeSet::new(),
            deleted_files: BTreeMap::new(),
            failed_creates: BTreeMap::new(),
            failed_create_tags: BTreeMap::new(),
            stats: WorkloadStats::default(),
            violations: Vec::new(),
        }
    }

    pub fn workload(&self) -> &HydfsWorkload {
        &self.w
    }

    pub fn take_violations(&mut self) -> Vec<(Time, CheckerKind, String)> {
        std::mem::take(&mut self.violations)
    }

    fn violate(&mut self, at: Time, kind: CheckerKind, detail: String) {
        if self.violations.len() < 20 {
            self.violations.push((at, kind, detail));
        }
    }

    pub fn file_name(i: usize) -> FileName {
        FileName::new(&format!("data/f{i}")).expect("valid name")
    }

    fn zipf(&mut self) -> usize {
        let s = self.w.zipf_milli as f64 / 1000.0;
        let n = self.w.files.max(1);
        let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut x = self.rng.gen::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        n - 1
    }

    fn size(&mut self) -> usize {
        if self.rng.gen_range(0..1000) < self.w.large_permille {
            self.rng.gen_range(self.w.config.chunk_bytes / 2..=self.w.large_max_bytes as usize)
        } else {
            self.rng.gen_range(HEADER..=self.w.small_max_bytes as usize)
        }
    }

    fn new_tag(&mut self, file: usize, writer: (Slot, u64), create: bool, direct: bool) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        let order = self.order.entry((writer, file)).or_default();
        *order += 1;
        let order = *order;
        let incarnation = self.files[file].incarnation;
        self.tags.insert(tag, TagInfo { file, writer, order, create, direct, acked: false, incarnation });
        tag
    }

    /// The operations to submit now. `whole` says whether the network is free of partitions.
    pub fn tick(&mut self, now: Time, views: &[SlotView<'_>], whole: bool) -> Vec<Submission> {
        let mut out = Vec::new();
        if now.0 >= self.w.final_merge_ms && !self.final_merges_sent {
            self.final_merges_sent = true;
            // One merge of every file that exists, from the first live client.
            let Some(v) = views.iter().find(|v| v.up && v.joined) else { return out };
            for file in 0..self.w.files {
                if self.files[file].create_acked.is_none() && !self.files[file].create_tried {
                    continue;
                }
                let token = InFlight {
                    client: v.slot,
                    file,
                    tags: vec![],
                    kind: "final-merge",
                    own_acked: vec![],
                    whole_network: whole,
                    final_merge: true,
                    issued: now,
                };
                out.push(Submission {
                    slot: v.slot,
                    op: ClientOp::Merge { name: Self::file_name(file) },
                    token,
                });
            }
            return out;
        }
        if now.0 < self.w.start_ms || now.0 >= self.w.stop_ms {
            return out;
        }
        let live: Vec<&SlotView<'_>> = views.iter().filter(|v| v.up && v.joined).collect();
        for &client in &self.w.clients.clone() {
            let Some(v) = live.iter().find(|v| v.slot == client) else { continue };
            if self.busy.contains(&client) {
                continue;
            }
            if self.rng.gen_range(0..self.w.think_ms.max(1)) >= WORKLOAD_TICK_MS {
                continue;
            }
            let writer = (client, v.generation);
            let file = self.zipf();
            if self.files[file].deleting {
                continue; // nothing runs on a file while it is being deleted
            }
            let name = Self::file_name(file);
            let exists = self.files[file].create_acked.is_some();
            let roll = self.rng.gen_range(0..100);
            let mut token = InFlight {
                client,
                file,
                tags: vec![],
                kind: "",
                own_acked: vec![],
                whole_network: whole,
                final_merge: false,
                issued: now,
            };
            let op = if !exists || roll >= 93 {
                let len = self.size();
                let tag = self.new_tag(file, writer, true, true);
                self.files[file].create_tried = true;
                token.tags.push(tag);
                token.kind = "create";
                self.stats.bytes_written += len as u64;
                self.write_op(name, WriteKind::Create, payload(tag, len))
            } else if roll < 45 {
                let len = self.size();
                let tag = self.new_tag(file, writer, false, true);
                token.tags.push(tag);
                token.kind = "append";
                self.stats.bytes_written += len as u64;
                self.write_op(name, WriteKind::Append, payload(tag, len))
            } else if roll < 75 {
                token.kind = "get";
                token.own_acked = self.own_acked(file, writer);
                // Mostly through the cache, sometimes around it.
                let from = if self.rng.gen_bool(0.8) { ReadFrom::Any } else { ReadFrom::Latest };
                ClientOp::Download { name, from }
            } else if roll < 83 {
                token.kind = "merge";
                ClientOp::Merge { name }
            } else if roll < 88 && live.len() >= 2 {
                let k = self.rng.gen_range(2..=live.len().min(3));
                let mut nodes: Vec<&SlotView<'_>> = Vec::new();
                while nodes.len() < k {
                    let n = live[self.rng.gen_range(0..live.len())];
                    if !nodes.iter().any(|x| x.slot == n.slot) {
                        nodes.push(n);
                    }
                }
                let mut appends = Vec::new();
                for n in nodes {
                    let len = self.rng.gen_range(HEADER..=self.w.small_max_bytes as usize);
                    let tag = self.new_tag(file, (n.slot, n.generation), false, false);
                    token.tags.push(tag);
                    appends.push((n.addr, payload(tag, len)));
                }
                token.kind = "multiappend";
                ClientOp::MultiAppend { name, appends }
            } else if roll < 90 {
                let r = live[self.rng.gen_range(0..live.len())];
                token.kind = "getfromreplica";
                ClientOp::Download { name, from: ReadFrom::Replica(r.addr) }
            } else if roll < 92 && self.files[file].busy == 0 {
                token.kind = "delete";
                self.files[file].deleting = true;
                ClientOp::Delete { name }
            } else {
                token.kind = "ls";
                ClientOp::Ls { name }
            };
            self.files[file].busy += 1;
            self.busy.insert(client);
            out.push(Submission { slot: client, op, token });
        }
        out
    }

    /// A create or append, with its bytes in the request or (a third of the time) read from a
    /// source part by part, as a real node uploads a local file.
    fn write_op(&mut self, name: FileName, kind: WriteKind, data: Vec<u8>) -> ClientOp {
        if !self.rng.gen_bool(0.3) {
            return match kind {
                WriteKind::Create => ClientOp::Create { name, data },
                WriteKind::Append => ClientOp::Append { name, data },
                WriteKind::Seal(_) => ClientOp::Persist { name, kind, data },
            };
        }
        let parts = data.chunks(self.w.config.chunk_bytes.max(1)).map(PartMeta::of).collect();
        ClientOp::Upload { name, kind, source: UploadSource { parts, reader: Arc::new(MemSource(data)) } }
    }

    fn own_acked(&self, file: usize, writer: (Slot, u64)) -> Vec<u64> {
        self.files[file].acked.iter().copied().filter(|t| self.tags[t].writer == writer).collect()
    }

    /// The world submitted `s`; `result` is what the node said.
    pub fn submitted(
        &mut self,
        now: Time,
        s: Submission,
        generation: u64,
        result: Option<Result<OpId, HydfsError>>,
    ) {
        match result {
            Some(Ok(id)) => {
                self.in_flight.insert((s.slot, generation, id), s.token);
            }
            Some(Err(e)) => {
                self.busy.remove(&s.slot);
                self.count(s.token.kind, false);
                if s.token.final_merge {
                    self.final_merge_result.insert(s.token.file, Err(e.to_string()));
                }
                self.op_ended(&s.token, false);
                let _ = now;
            }
            None => {
                self.busy.remove(&s.slot);
                self.op_ended(&s.token, false);
            }
        }
    }

    /// A workload operation ended (`deleted`: a delete, acknowledged): the file is free again.
    fn op_ended(&mut self, token: &InFlight, deleted: bool) {
        if token.final_merge {
            return;
        }
        let f = &mut self.files[token.file];
        f.busy = f.busy.saturating_sub(1);
        if token.kind == "delete" {
            // Acknowledged or not (a failed delete may still have taken effect), what follows
            // is about the next file of the name.
            f.deleting = false;
            if deleted {
                f.deleted.insert(f.incarnation, token.issued);
            }
            f.next_incarnation();
        }
    }

    fn count(&mut self, kind: &'static str, ok: bool) {
        let e = self.stats.ops.entry(kind).or_default();
        if ok {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }

    /// A process crashed or restarted: its operations are gone.
    /// A process crashes: the writes its disk holds synced stay there (its next process
    /// recovers them), so they still count as copies while the node is down.
    pub fn on_crash_keeps(&mut self, slot: Slot, node: &Hydfs, disk: &SimDisk) {
        let store = node.store();
        let kept: BTreeSet<(FileName, Stamp)> = store
            .files()
            .iter()
            .flat_map(|(name, rec)| rec.writes().map(move |w| (name, w.stamp)))
            .filter(|(name, stamp)| {
                store.write_blobs(name, *stamp).is_some_and(|blobs| blobs.iter().all(|b| disk.is_durable(*b)))
            })
            .map(|(name, stamp)| (name.clone(), stamp))
            .collect();
        self.kept_while_down.insert(slot, kept);
    }

    pub fn on_process_gone(&mut self, slot: Slot) {
        let gone: Vec<InFlight> = std::mem::take(&mut self.in_flight)
            .into_iter()
            .filter_map(|(k, t)| {
                if k.0 == slot {
                    Some(t)
                } else {
                    self.in_flight.insert(k, t);
                    None
                }
            })
            .collect();
        for t in &gone {
            self.op_ended(t, false);
        }
        self.downloads.retain(|(s, _, _), _| *s != slot);
        self.busy.remove(&slot);
        self.replicated.retain(|(s, _, _)| *s != slot);
    }

    pub fn on_event(
        &mut self,
        now: Time,
        slot: Slot,
        generation: u64,
        event: &HydfsEvent,
        views: &[SlotView<'_>],
    ) {
        match event {
            HydfsEvent::OpDone { op, result } => {
                let key = (slot, generation, *op);
                let Some(token) = self.in_flight.remove(&key) else { return };
                if !token.final_merge {
                    self.busy.remove(&token.client);
                }
                self.count(token.kind, result.is_ok());
                let delivered = self.downloads.remove(&key).unwrap_or_default();
                if let Ok(OpOutput::Downloaded { name, len, .. }) = result {
                    if delivered.len() as u64 != *len {
                        let why = format!(
                            "read of {name} by n{slot} reported {len} bytes but delivered {}",
                            delivered.len()
                        );
                        self.violate(now, CheckerKind::HydfsLoss, why);
                    }
                }
                self.op_done(now, token, result, &delivered);
            }
            HydfsEvent::ReadData { op, offset, bytes, .. } => {
                let key = (slot, generation, *op);
                if !self.in_flight.contains_key(&key) {
                    return;
                }
                let buf = self.downloads.entry(key).or_default();
                if *offset == 0 {
                    buf.clear();
                }
                if *offset != buf.len() as u64 {
                    let why =
                        format!("download by n{slot} delivered offset {offset} after {} bytes", buf.len());
                    self.violate(now, CheckerKind::HydfsLoss, why);
                    return;
                }
                buf.extend_from_slice(bytes);
            }
            HydfsEvent::WriteCommitted { name, stamp, replicas } => {
                let Some(coord) = views.iter().find(|v| v.slot == slot) else { return };
                let Some(h) = coord.hydfs else { return };
                let live: BTreeSet<NodeAddr> =
                    views.iter().filter(|v| v.up && v.joined).map(|v| v.addr).collect();
                let seen: BTreeSet<NodeAddr> = h.ring().members().map(|(_, a)| a).collect();
                if live == seen {
                    self.whole_view_commits.insert((name.clone(), *stamp));
                }
                let expect = h.config().replication.min(h.ring().len());
                if replicas.len() < expect {
                    self.violate(
                        now,
                        CheckerKind::HydfsDurability,
                        format!(
                            "n{slot} acknowledged {name} {stamp} after {} of {expect} replicas",
                            replicas.len()
                        ),
                    );
                }
                // Every listed replica that is still up must hold the write synced; a replica that
                // has since handed the file to its owners counts through them, so the check is on
                // the number of synced copies among live nodes. "Still up" means the very process
                // that acknowledged: a replica that crashed after answering and was restarted before
                // the coordinator learned of it counts through what its disk kept, as a node still
                // down does.
                // Its current process cannot have answered unless it received a `Replicate` of the
                // file (the coordinator itself answers from the process reporting the commit).
                // A replica whose disk rotted or lost a block may have lost this write's copy
                // since it answered (it is repaired from the others, which the loss checker
                // holds to): it counts only while it still has the copy.
                let holds =
                    |v: &SlotView| v.hydfs.and_then(|h| h.store().write_blobs(name, *stamp)).is_some();
                let up_listed = replicas
                    .iter()
                    .filter(|a| {
                        views.iter().any(|v| {
                            v.addr == **a
                                && v.up
                                && (v.slot == slot
                                    || self.replicated.contains(&(v.slot, v.generation, name.clone())))
                                && (!v.disk.damaged() || holds(v))
                        })
                    })
                    .count();
                // Live copies, and the synced copies on the disks of nodes that are down.
                let synced = views
                    .iter()
                    .filter(|v| v.up)
                    .filter(|v| {
                        v.hydfs
                            .and_then(|h| h.store().write_blobs(name, *stamp))
                            .is_some_and(|blobs| blobs.iter().all(|b| v.disk.is_durable(*b)))
                    })
                    .count()
                    + views
                        .iter()
                        .filter(|v| !v.up)
                        .filter(|v| {
                            self.kept_while_down
                                .get(&v.slot)
                                .is_some_and(|k| k.contains(&(name.clone(), *stamp)))
                        })
                        .count();
                let lost_create = views.iter().filter(|v| v.up).any(|v| {
                    v.hydfs
                        .and_then(|h| h.store().file(name))
                        .and_then(|r| r.create.as_ref())
                        .is_some_and(|c| c.stamp < *stamp)
                });
                if synced < up_listed && !lost_create {
                    self.violate(
                        now,
                        CheckerKind::HydfsDurability,
                        format!("{name} {stamp} acknowledged but only {synced} live copies are synced ({up_listed} live replicas acknowledged it)"),
                    );
                }
            }
            HydfsEvent::MergeCommitted { name, replicas, merged_hash } => {
                if !self.final_merges_sent {
                    return;
                }
                for addr in replicas {
                    let Some(v) = views.iter().find(|v| v.addr == *addr && v.up) else { continue };
                    let Some(h) = v.hydfs else { continue };
                    let theirs = h.store().merged_hash(name);
                    if theirs != Some(*merged_hash) {
                        self.violate(
                            now,
                            CheckerKind::HydfsIdentical,
                            format!(
                                "merge of {name} acknowledged but replica n{} has a different merged order",
                                v.slot
                            ),
                        );
                    }
                }
            }
            HydfsEvent::Handled { what: "replicate", name, .. } => {
                self.replicated.insert((slot, generation, name.clone()));
            }
            HydfsEvent::CorruptionDetected { .. }
            | HydfsEvent::PartLost { .. }
            | HydfsEvent::FileDropped { .. }
            | HydfsEvent::FileDeleted { .. }
            | HydfsEvent::StorageFailed { .. }
            | HydfsEvent::Handled { .. } => {}
        }
    }

    /// An operation ended; `read` holds what a whole-file read delivered, in order.
    fn op_done(&mut self, now: Time, token: InFlight, result: &Result<OpOutput, HydfsError>, read: &[u8]) {
        if token.final_merge {
            self.final_merge_result
                .insert(token.file, result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        let ok = result.is_ok();
        if let Ok(OpOutput::Deleted { name, create, .. }) = result {
            self.deleted_files.insert((name.clone(), *create), now);
        }
        if let Err(HydfsError::CreateFailed { name, stamp, cancelled: true, .. }) = result {
            self.failed_creates.insert((name.clone(), *stamp), now);
            self.stats.creates_cancelled += 1;
            for &tag in &token.tags {
                self.failed_create_tags.insert(tag, now);
            }
        }
        let mut token = token;
        if token.kind == "delete" {
            // Deleted from the acknowledgement on: reads issued after it must not see the file.
            token.issued = now;
        }
        self.op_ended(&token, matches!(result, Ok(OpOutput::Deleted { .. })));
        match token.kind {
            "create" | "append" | "multiappend" if ok => {
                // Creates are exclusive while the coordinator's view is whole (no partition, every
                // live member listed); divergent views under a partition can each accept one.
                let whole_view = match result {
                    Ok(OpOutput::Written { name, stamp, .. }) => {
                        self.whole_view_commits.contains(&(name.clone(), *stamp))
                    }
                    _ => false,
                };
                for &tag in &token.tags {
                    let info = self.tags.get_mut(&tag).expect("known tag");
                    info.acked = true;
                    let (file, create) = (info.file, info.create);
                    if create {
                        match self.files[file].create_acked {
                            Some(other) if other != tag && token.whole_network && whole_view => self.violate(
                                now,
                                CheckerKind::HydfsCreateOnce,
                                format!(
                                    "two creates of {} were acknowledged (writes {other} and {tag})",
                                    Self::file_name(file)
                                ),
                            ),
                            Some(_) => {}
                            None => self.files[file].create_acked = Some(tag),
                        }
                    }
                    self.files[file].acked.insert(tag);
                }
            }
            "get" | "getfromreplica" => {
                if let Ok(OpOutput::Downloaded { from, .. }) = result {
                    let bytes = read;
                    self.stats.bytes_read += bytes.len() as u64;
                    let what = format!("read of {} by n{}", Self::file_name(token.file), token.client);
                    self.check_content(now, token.file, bytes, &token.own_acked, &what, false);
                    if from.is_some() {
                        self.check_not_deleted(now, token.file, bytes, token.issued, &what);
                    }
                    self.check_not_failed_create(now, bytes, token.issued, &what);
                }
            }
            _ => {}
        }
    }

    /// Checks content read back: it parses, holds no write twice, keeps each client's order, and
    /// includes `must_have`.
    fn check_content(
        &mut self,
        now: Time,
        file: usize,
        bytes: &[u8],
        must_have: &[u64],
        what: &str,
        end: bool,
    ) {
        let tags = match parse(bytes) {
            Ok(t) => t,
            Err(e) => {
                return self.violate(now, CheckerKind::HydfsCorruptServed, format!("{what}: {e}"));
            }
        };
        let mut seen = BTreeSet::new();
        let mut last: BTreeMap<(Slot, u64), u64> = BTreeMap::new();
        let mut found: Vec<(CheckerKind, String)> = Vec::new();
        for (i, t) in tags.iter().enumerate() {
            let Some(info) = self.tags.get(t).cloned() else {
                return self.violate(
                    now,
                    CheckerKind::HydfsCorruptServed,
                    format!("{what}: unknown write {t}"),
                );
            };
            if info.file != file {
                return self.violate(
                    now,
                    CheckerKind::HydfsCorruptServed,
                    format!("{what}: holds write {t} of another file"),
                );
            }
            if info.create != (i == 0) {
                found.push((
                    CheckerKind::HydfsOrder,
                    format!("{what}: write {t} is out of place (create first)"),
                ));
            }
            if !seen.insert(*t) {
                found.push((CheckerKind::HydfsLoss, format!("{what}: write {t} appears twice")));
            }
            if info.direct && !info.create {
                let prev = last.entry(info.writer).or_default();
                if info.order < *prev {
                    found.push((
                        CheckerKind::HydfsOrder,
                        format!(
                            "{what}: client n{}'s writes out of order ({} after {})",
                            info.writer.0, info.order, prev
                        ),
                    ));
                }
                *prev = info.order;
            }
        }
        let kind = if end { CheckerKind::HydfsLoss } else { CheckerKind::HydfsReadYourWrites };
        let missing: Vec<&u64> =
            must_have.iter().filter(|t| !seen.contains(t) && !self.tags[t].create).collect();
        if let Some(t) = missing.first() {
            found.push((
                kind,
                format!("{what}: acknowledged write {t} is missing ({} missing)", missing.len()),
            ));
        }
        // One report per broken guarantee.
        let mut kinds = BTreeSet::new();
        for (k, detail) in found {
            if kinds.insert(k) {
                self.violate(now, k, detail);
            }
        }
    }

    /// A read issued at `issued` holds no write of a file whose delete was acknowledged before.
    fn check_not_deleted(&mut self, now: Time, file: usize, bytes: &[u8], issued: Time, what: &str) {
        let Ok(tags) = parse(bytes) else { return }; // reported as corrupt-served
        let dead = tags.iter().find(|t| {
            self.tags.get(t).is_some_and(|i| {
                i.file == file && self.files[file].deleted.get(&i.incarnation).is_some_and(|at| *at <= issued)
            })
        });
        if let Some(t) = dead {
            let detail = format!("{what}: write {t} of a file whose delete was acknowledged before the read");
            self.violate(now, CheckerKind::HydfsDeleted, detail);
        }
    }

    /// A read issued at `issued` shows no create reported as failed (and cancelled) before.
    fn check_not_failed_create(&mut self, now: Time, bytes: &[u8], issued: Time, what: &str) {
        let Ok(tags) = parse(bytes) else { return }; // reported as corrupt-served
        let Some(first) = tags.first() else { return };
        if let Some(at) = self.failed_create_tags.get(first).filter(|at| **at <= issued) {
            let detail = format!("{what}: shows create {first}, reported failed and cancelled at {at}");
            self.violate(now, CheckerKind::HydfsFailedCreate, detail);
        }
    }

    /// A process has just started on `view`'s slot, recovering what its disk held.
    pub fn on_recovered(&mut self, now: Time, view: &SlotView<'_>) {
        let Some(h) = view.hydfs else { return };
        let bad: Vec<String> = h
            .store()
            .indexed_parts()
            .filter(|(_, _, _, blob, meta)| {
                let read = rainstorm_core::hydfs::Storage::read(&mut view.disk.clone(), *blob);
                !read.is_ok_and(|bytes| meta.matches(&bytes))
            })
            .map(|(name, stamp, part, blob, _)| format!("{name} write {stamp} part {part} (block {blob})"))
            .collect();
        if let Some(first) = bad.first() {
            let detail = format!(
                "n{} recovered an index naming {} parts its disk does not hold intact, e.g. {first}",
                view.slot,
                bad.len()
            );
            self.violate(now, CheckerKind::HydfsRecovered, detail);
        }
    }

    /// The end-of-run checks.
    pub fn finish(&mut self, now: Time, views: &[SlotView<'_>]) {
        let live: Vec<&SlotView<'_>> = views.iter().filter(|v| v.up && v.joined).collect();
        for ((name, create), at) in self.failed_creates.clone() {
            for v in &live {
                let held = v.hydfs.and_then(|h| h.store().file(&name)).and_then(|r| r.create.as_ref());
                if held.is_some_and(|c| c.stamp == create) {
                    let detail = format!(
                        "n{} holds {name} created by {create}, a create reported failed at {at}",
                        v.slot
                    );
                    self.violate(now, CheckerKind::HydfsFailedCreate, detail);
                }
            }
        }
        for ((name, create), at) in self.deleted_files.clone() {
            for v in &live {
                let held = v.hydfs.and_then(|h| h.store().file(&name)).and_then(|r| r.create.as_ref());
                if held.is_some_and(|c| c.stamp == create) {
                    let detail = format!("n{} holds {name} (created by {create}), deleted at {at}", v.slot);
                    self.violate(now, CheckerKind::HydfsDeleted, detail);
                }
            }
        }
        for v in views.iter().filter(|v| v.up) {
            let Some(h) = v.hydfs else { continue };
            let indexed: BTreeSet<u64> = h.store().blobs().collect();
            let leaked = v.disk.live_blocks().into_iter().filter(|b| !indexed.contains(b)).count();
            if leaked > 0 {
                let detail = format!("n{} has {leaked} blocks on its disk that no file points at", v.slot);
                self.violate(now, CheckerKind::HydfsLeakedBlocks, detail);
            }
            let stray = h.store().stray_parts();
            if stray > 0 {
                let detail = format!("n{} indexes {stray} parts of writes no file holds", v.slot);
                self.violate(now, CheckerKind::HydfsLeakedBlocks, detail);
            }
        }
        let ring = Ring::new(live.iter().map(|v| v.addr));
        let r = self.w.config.replication;
        let mut names: BTreeSet<FileName> = BTreeSet::new();
        for v in &live {
            if let Some(h) = v.hydfs {
                names.extend(h.store().files().keys().cloned());
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            if f.create_acked.is_some() {
                names.insert(Self::file_name(i));
            }
        }
        for name in names {
            let expected: BTreeSet<NodeAddr> = ring.replicas(name.as_str(), r).into_iter().collect();
            let holders: BTreeSet<NodeAddr> = live
                .iter()
                .filter(|v| v.hydfs.is_some_and(|h| h.store().file(&name).is_some()))
                .map(|v| v.addr)
                .collect();
            if holders != expected {
                let show =
                    |s: &BTreeSet<NodeAddr>| s.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
                self.violate(
                    now,
                    CheckerKind::HydfsPlacement,
                    format!("{name} is on [{}] but belongs on [{}]", show(&holders), show(&expected)),
                );
            }
            let Some(file) = name.as_str().strip_prefix("data/f").and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let merged_ok = matches!(self.final_merge_result.get(&file), Some(Ok(())));
            match self.final_merge_result.get(&file) {
                Some(Err(e)) => {
                    let e = e.clone();
                    self.violate(
                        now,
                        CheckerKind::HydfsLiveness,
                        format!("merge of {name} after the faults stopped failed: {e}"),
                    )
                }
                None if self.files[file].create_acked.is_some() => self.violate(
                    now,
                    CheckerKind::HydfsLiveness,
                    format!("merge of {name} after the faults stopped never finished"),
                ),
                _ => {}
            }
            let must_have: Vec<u64> = self.files[file].acked.iter().copied().collect();
            let mut first: Option<(Slot, Vec<u8>)> = None;
            for v in live.iter().filter(|v| expected.contains(&v.addr)) {
                let Some(h) = v.hydfs else { continue };
                let Some(meta) = h.store().meta(&name) else { continue };
                if meta.create.is_none() {
                    continue;
                }
                let Some(bytes) = read_through_disk(h, v.disk, &name) else { continue };
                let what = format!("final copy of {name} on n{}", v.slot);
                self.check_content(now, file, &bytes, &must_have, &what, true);
                if merged_ok {
                    if !meta.pending.is_empty() {
                        self.violate(
                            now,
                            CheckerKind::HydfsIdentical,
                            format!(
                                "{what} still has {} pending appends after the final merge",
                                meta.pending.len()
                            ),
                        );
                    }
                    match &first {
                        Some((s, b)) if *b != bytes => self.violate(
                            now,
                            CheckerKind::HydfsIdentical,
                            format!("{what} differs from the copy on n{s} after the final merge"),
                        ),
                        Some(_) => {}
                        None => first = Some((v.slot, bytes)),
                    }
                }
            }
        }
    }
}

/// A file's content read straight from a node's disk, every part checked against its CRC. `None`
/// if a part is missing or corrupt (a detected fault, not a served one).
fn read_through_disk(h: &Hydfs, disk: &SimDisk, name: &FileName) -> Option<Vec<u8>> {
    let meta = h.store().meta(name)?;
    let mut out = Vec::new();
    for w in meta.all_writes() {
        let blobs = h.store().write_blobs(name, w.stamp)?;
        for (b, p) in blobs.iter().zip(&w.parts) {
            let bytes = disk.read(*b)?;
            if !p.matches(&bytes) {
                return None;
            }
            out.extend_from_slice(&bytes);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_damage_is_found() {
        let mut content = payload(7, 100);
        content.extend(payload(9, 16));
        assert_eq!(parse(&content).unwrap(), vec![7, 9]);
        let mut bad = content.clone();
        bad[50] ^= 1;
        assert!(parse(&bad).is_err());
        assert!(parse(&content[..content.len() - 1]).is_err());
    }
}
