//! HyDFS on a tiny in-memory network: every message is delivered at once, in order.

use super::*;
use crate::id::MemberId;
use std::sync::{Arc, Mutex};

/// Storage whose `sync` (and `put`, like a full disk) can be made to fail.
#[derive(Clone, Default)]
struct FlakyStorage {
    inner: Arc<Mutex<(MemStorage, bool, bool)>>,
}

impl FlakyStorage {
    fn fail_syncs(&self, fail: bool) {
        self.inner.lock().unwrap().1 = fail;
    }
    fn fail_puts(&self, fail: bool) {
        self.inner.lock().unwrap().2 = fail;
    }
}

impl Storage for FlakyStorage {
    fn put(&mut self, blob: BlobId, data: &[u8]) -> Result<(), StorageError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.2 {
            return Err(StorageError::Io(format!("cannot write block {blob}: No space left on device")));
        }
        inner.0.put(blob, data)
    }
    fn read(&mut self, blob: BlobId) -> Result<Vec<u8>, StorageError> {
        self.inner.lock().unwrap().0.read(blob)
    }
    fn delete(&mut self, blob: BlobId) -> Result<(), StorageError> {
        self.inner.lock().unwrap().0.delete(blob)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        if self.inner.lock().unwrap().1 {
            return Err(StorageError::Io("disk full".into()));
        }
        Ok(())
    }
    fn list(&mut self) -> Result<Vec<BlobId>, StorageError> {
        self.inner.lock().unwrap().0.list()
    }
    fn wipe(&mut self) -> Result<(), StorageError> {
        self.inner.lock().unwrap().0.wipe()
    }
}

struct Net {
    nodes: Vec<Hydfs>,
    disks: Vec<FlakyStorage>,
    now: Time,
    done: Vec<(usize, OpId, Result<OpOutput, HydfsError>)>,
    /// What each whole-file read delivered so far, by (node, operation).
    reads: BTreeMap<(usize, OpId), Vec<u8>>,
    /// Nodes that are unreachable: a message to one fails at once (its sender is told), and
    /// they handle no timers.
    down: std::collections::BTreeSet<usize>,
}

fn addr(i: usize) -> NodeAddr {
    format!("10.1.0.{}:7000", i + 1).parse().unwrap()
}

/// The configuration of [`Net::new`]'s nodes (small chunks), with `planted` switched on.
fn test_config(planted: Option<PlantedBug>) -> HydfsConfig {
    HydfsConfig { chunk_bytes: 1024, inline_bytes: 512, planted, ..HydfsConfig::default() }
}

impl Net {
    fn new(n: usize) -> Net {
        Net::with_config(n, test_config(None))
    }

    fn with_config(n: usize, cfg: HydfsConfig) -> Net {
        let disks: Vec<FlakyStorage> = (0..n).map(|_| FlakyStorage::default()).collect();
        let mut nodes: Vec<Hydfs> = (0..n)
            .map(|i| {
                Hydfs::new(cfg.clone(), MemberId::new(addr(i), 1), Box::new(disks[i].clone()), Time(0))
                    .unwrap()
            })
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            let others: Vec<MemberId> =
                (0..n).filter(|j| *j != i).map(|j| MemberId::new(addr(j), 1)).collect();
            node.set_members(Time(0), Some(MemberId::new(addr(i), 1)), others);
        }
        Net { nodes, disks, now: Time(0), done: Vec::new(), reads: BTreeMap::new(), down: Default::default() }
    }

    fn settle(&mut self) {
        let held = self.settle_holding(|_, _| false);
        debug_assert!(held.is_empty());
    }

    /// Delivers every message at once, in order, except those `hold(sender, message)` keeps
    /// back: those are returned, to be delivered later.
    fn settle_holding(&mut self, hold: impl Fn(usize, &HydfsMsg) -> bool) -> Vec<(NodeAddr, HydfsMsg)> {
        let mut held = Vec::new();
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some((to, msg)) = self.nodes[i].poll_outgoing() {
                    moved = true;
                    if hold(i, &msg) {
                        held.push((to, msg));
                        continue;
                    }
                    let j = self.index(to);
                    if self.down.contains(&j) {
                        self.nodes[i].handle_send_failed(self.now, to);
                    } else {
                        self.nodes[j].handle_message(self.now, MemberId::new(addr(i), 1), msg);
                    }
                }
                self.drain_events(i);
            }
            // A batch ends with every round of deliveries (nothing for nodes not batched).
            for i in 0..self.nodes.len() {
                self.nodes[i].flush(self.now);
                self.drain_events(i);
            }
            if !moved && self.nodes.iter().all(|n| n.out.is_empty()) {
                return held;
            }
        }
    }

    /// Takes node `i`'s events: finished operations, and the chunks of its whole-file reads
    /// (each must come in order; offset 0 starts a read over).
    fn drain_events(&mut self, i: usize) {
        while let Some(e) = self.nodes[i].poll_event() {
            match e {
                HydfsEvent::OpDone { op, result } => self.done.push((i, op, result)),
                HydfsEvent::ReadData { op, offset, total, bytes } => {
                    assert!(offset + bytes.len() as u64 <= total, "a chunk ends within the read's length");
                    let got = self.reads.entry((i, op)).or_default();
                    if offset == 0 {
                        got.clear();
                    }
                    assert_eq!(offset, got.len() as u64, "chunks of a read come in order");
                    got.extend_from_slice(&bytes);
                }
                _ => {}
            }
        }
    }

    /// Runs `op` to its end without letting time pass (timers already due still fire).
    fn run(&mut self, at: usize, op: ClientOp) -> Result<OpOutput, HydfsError> {
        self.run_op(at, op).1
    }

    /// Reads the whole file `name` at node `at` (any replica, or its cache).
    fn get(&mut self, at: usize, name: FileName) -> Result<Vec<u8>, HydfsError> {
        self.read(at, name, ReadFrom::Any).map(|(bytes, _)| bytes)
    }

    /// Reads the whole file `name` at node `at` from `from`: the bytes its chunks delivered, and
    /// the operation's summary (whose length must match them).
    fn read(&mut self, at: usize, name: FileName, from: ReadFrom) -> Result<(Vec<u8>, OpOutput), HydfsError> {
        let (id, result) = self.run_op(at, ClientOp::Download { name, from });
        let bytes = self.reads.remove(&(at, id)).unwrap_or_default();
        let out = result?;
        match &out {
            OpOutput::Downloaded { len, .. } => assert_eq!(*len, bytes.len() as u64, "delivered length"),
            other => panic!("expected a download, got {other:?}"),
        }
        Ok((bytes, out))
    }

    fn run_op(&mut self, at: usize, op: ClientOp) -> (OpId, Result<OpOutput, HydfsError>) {
        let id = match self.nodes[at].submit(self.now, op) {
            Ok(id) => id,
            Err(e) => return (0, Err(e)),
        };
        for _ in 0..10_000 {
            self.settle();
            if let Some(k) = self.done.iter().position(|(n, o, _)| *n == at && *o == id) {
                return (id, self.done.remove(k).2);
            }
            let now = self.now;
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if !self.down.contains(&i) && n.poll_timeout().is_some_and(|t| t <= now) {
                    n.handle_timeout(now);
                }
            }
        }
        panic!("operation did not finish");
    }

    /// Runs `op` to its end, letting time pass 100 ms at a time while it waits.
    fn run_timed(&mut self, at: usize, op: ClientOp) -> Result<OpOutput, HydfsError> {
        let id = self.nodes[at].submit(self.now, op)?;
        for _ in 0..10_000 {
            self.settle();
            if let Some(k) = self.done.iter().position(|(n, o, _)| *n == at && *o == id) {
                return self.done.remove(k).2;
            }
            self.tick(100);
        }
        panic!("operation did not finish");
    }

    fn tick(&mut self, ms: u64) {
        self.now = self.now + Millis(ms);
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if !self.down.contains(&i) {
                n.handle_timeout(self.now);
            }
        }
        self.settle();
    }

    /// The index of the node at `a`.
    fn index(&self, a: NodeAddr) -> usize {
        (0..self.nodes.len()).find(|j| addr(*j) == a).expect("known node")
    }
}

fn name(s: &str) -> FileName {
    FileName::new(s).unwrap()
}

#[test]
fn create_append_get_merge_on_three_replicas() {
    let mut net = Net::new(5);
    let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    assert!(net.run(0, ClientOp::Create { name: name("f"), data: big.clone() }).is_ok());
    assert_eq!(
        net.run(1, ClientOp::Create { name: name("f"), data: b"again".to_vec() }),
        Err(HydfsError::AlreadyExists(name("f")))
    );
    net.now = Time(100);
    assert!(net.run(1, ClientOp::Append { name: name("f"), data: b"one".to_vec() }).is_ok());
    net.now = Time(200);
    assert!(net.run(2, ClientOp::Append { name: name("f"), data: b"two".to_vec() }).is_ok());
    let mut expect = big.clone();
    expect.extend_from_slice(b"onetwo");
    let got = net.get(3, name("f")).unwrap();
    assert!(got == expect, "get returned {} bytes, not the {} expected", got.len(), expect.len());
    let holders = net.nodes.iter().filter(|n| n.store().file(&name("f")).is_some()).count();
    assert_eq!(holders, 3);
    match net.run(4, ClientOp::Merge { name: name("f") }) {
        Ok(OpOutput::Merged { summary, .. }) => assert_eq!(summary.appended, 2),
        other => panic!("{other:?}"),
    }
    match net.run(4, ClientOp::Merge { name: name("f") }) {
        Ok(OpOutput::Merged { summary, .. }) => assert_eq!((summary.appended, summary.bytes_moved), (0, 0)),
        other => panic!("{other:?}"),
    }
    let hashes: Vec<u64> = net.nodes.iter().filter_map(|n| n.store().merged_hash(&name("f"))).collect();
    assert_eq!(hashes.len(), 3);
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "replicas identical after merge");
}

/// A calm node answers its inventory from memory, and a write (or a ring change) makes it walk
/// its files again: the inventory and the unowned files it works from follow every change.
#[test]
fn a_remembered_inventory_and_unowned_list_follow_writes_and_ring_changes() {
    let mut net = Net::new(5);
    assert!(net.run(0, ClientOp::Create { name: name("f"), data: b"data".to_vec() }).is_ok());
    let holder = net.index(net.nodes[0].replicas(&name("f"))[0]);
    let (first, hash) = net.nodes[holder].inventory();
    let (again, same) = net.nodes[holder].inventory();
    assert!(Arc::ptr_eq(&first, &again), "unchanged: answered from memory");
    assert_eq!(hash, same);
    net.now = Time(100);
    assert!(net.run(1, ClientOp::Append { name: name("f"), data: b"more".to_vec() }).is_ok());
    let (after, changed) = net.nodes[holder].inventory();
    assert_ne!(changed, hash, "an append changes the file's digest, and so the inventory");
    assert_eq!(*after, net.nodes[holder].fresh_inventory(&BTreeSet::new()));
    assert_eq!(
        after.iter().find(|(n, _)| *n == name("f")).map(|(_, d)| *d),
        net.nodes[holder].store.digest(&name("f"))
    );
    // The holder owns the file; on a ring without it, its copy is unowned.
    assert!(net.nodes[holder].unowned_files().is_empty());
    let others = Ring::new((0..5).map(addr).filter(|a| !net.nodes[0].replicas(&name("f")).contains(a)));
    net.nodes[holder].ring = others;
    assert_eq!(net.nodes[holder].unowned_files(), vec![name("f")], "a ring change is seen");
}

/// Every node of `net` writes `each` appends to `f` at once (one per client node, as many
/// clients would); returns how many syncs each node ran for them.
fn concurrent_appends(net: &mut Net, each: usize) -> Vec<u64> {
    assert!(net.run(0, ClientOp::Create { name: name("f"), data: b"start;".to_vec() }).is_ok());
    // Each client's first append looks the file's create up; from then on it knows it, and its
    // appends go straight to a coordinator, all at once.
    for i in 0..net.nodes.len() {
        let data = format!("{i}.first;").into_bytes();
        assert!(net.run(i, ClientOp::Append { name: name("f"), data }).is_ok());
    }
    let before: Vec<u64> = net.nodes.iter().map(|n| n.stats().syncs).collect();
    let mut ops = Vec::new();
    for round in 0..each {
        for i in 0..net.nodes.len() {
            let data = format!("{i}.{round};").into_bytes();
            ops.push((i, net.nodes[i].submit(net.now, ClientOp::Append { name: name("f"), data }).unwrap()));
        }
    }
    for _ in 0..1000 {
        net.settle();
        if ops.iter().all(|(i, op)| net.done.iter().any(|(n, o, _)| n == i && o == op)) {
            break;
        }
        net.tick(1);
    }
    for (i, op) in &ops {
        let (_, _, result) = net.done.iter().find(|(n, o, _)| n == i && o == op).expect("every append ended");
        assert!(result.is_ok(), "append {op} at node {i}: {result:?}");
    }
    let got = String::from_utf8(net.get(0, name("f")).unwrap()).unwrap();
    assert_eq!(got.matches(';').count(), 1 + net.nodes.len() + ops.len(), "every append once: {got}");
    net.nodes.iter().zip(before).map(|(n, b)| n.stats().syncs - b).collect()
}

#[test]
fn batched_replicas_sync_once_for_the_writes_that_arrive_together() {
    let mut one_by_one = Net::new(4);
    let unbatched: u64 = concurrent_appends(&mut one_by_one, 3).iter().sum();
    let mut net = Net::new(4);
    for n in &mut net.nodes {
        n.set_batched(true);
    }
    let batched: u64 = concurrent_appends(&mut net, 3).iter().sum();
    assert!(
        batched * 2 <= unbatched,
        "group commit: {batched} syncs for the batch against {unbatched} one message at a time"
    );
}

#[test]
fn bad_requests_get_typed_errors() {
    let mut net = Net::new(3);
    assert_eq!(
        net.run(0, ClientOp::Append { name: name("missing"), data: b"x".to_vec() }),
        Err(HydfsError::NotFound(name("missing")))
    );
    assert_eq!(net.get(0, name("missing")), Err(HydfsError::NotFound(name("missing"))));
    let limit = net.nodes[0].config().max_write_bytes;
    let too_big = vec![0u8; (limit + 1) as usize];
    assert_eq!(
        net.nodes[0].submit(Time(0), ClientOp::Create { name: name("big"), data: too_big }),
        Err(HydfsError::TooLarge { len: limit + 1, limit })
    );
    let mut lonely = Net::new(1);
    lonely.nodes[0].set_members(Time(0), None, []);
    assert_eq!(lonely.get(0, name("f")), Err(HydfsError::NoLiveReplica(name("f"))));
}

#[test]
fn a_write_a_replica_cannot_sync_fails_at_once_with_the_cause() {
    let mut net = Net::new(3);
    net.disks[2].fail_syncs(true);
    let started = net.now;
    let result = net.run_timed(0, ClientOp::Create { name: name("f"), data: b"data".to_vec() });
    // The write failed at once; the cancel of the create (every replica must drop what it
    // stored) cannot reach a replica that cannot sync, so it gives up, and says so.
    match result {
        Err(HydfsError::CreateFailed { reason, cancelled: false, .. }) => {
            assert!(reason.contains("disk full") && reason.contains(&addr(2).to_string()), "{reason}")
        }
        other => panic!("expected a create that failed and could not be cancelled, got {other:?}"),
    }
    assert!(net.now.since(started) <= net.nodes[0].cfg.coordinator_timeout + Millis(200));
    // Once the disk recovers, the tombstone the cancel left on the other replicas reaches the
    // one that kept a copy: the file does not appear, and writes succeed again.
    net.disks[2].fail_syncs(false);
    for _ in 0..50 {
        net.tick(1_000);
    }
    assert!(net.nodes.iter().all(|n| n.store().file(&name("f")).is_none()), "no copy of the failed create");
    assert_eq!(net.get(0, name("f")), Err(HydfsError::NotFound(name("f"))));
    assert!(net.run(0, ClientOp::Create { name: name("g"), data: b"data".to_vec() }).is_ok());
}

#[test]
fn a_create_that_failed_is_cancelled_on_every_replica_before_it_is_reported() {
    let mut net = Net::new(4);
    // One replica refuses the part (a full disk): the create fails, and the other replicas may
    // have stored it. The disk is freed while the cancel runs: the cancel's retries reach every
    // replica, and only then is the failure reported.
    let replicas = net.nodes[0].replicas(&name("f"));
    let full = net.index(replicas[2]);
    net.disks[full].fail_puts(true);
    let client = (0..4).find(|i| !replicas.contains(&addr(*i))).unwrap();
    let op = net.nodes[client].submit(net.now, ClientOp::Create { name: name("f"), data: b"data".to_vec() });
    let op = op.unwrap();
    net.settle();
    assert!(
        !net.done.iter().any(|(n, o, _)| *n == client && *o == op),
        "not reported before the cancel ends"
    );
    assert!(net.nodes[client].stats().creates_cancelled == 1);
    net.disks[full].fail_puts(false);
    let mut result = None;
    for _ in 0..200 {
        net.tick(100);
        if let Some(k) = net.done.iter().position(|(n, o, _)| *n == client && *o == op) {
            result = Some(net.done.remove(k).2);
            break;
        }
    }
    match result {
        Some(Err(HydfsError::CreateFailed { cancelled: true, reason, .. })) => {
            assert!(reason.contains("No space left"), "{reason}")
        }
        other => panic!("expected a cancelled create, got {other:?}"),
    }
    assert!(net.nodes.iter().all(|n| n.store().file(&name("f")).is_none()), "no replica keeps it");
    for _ in 0..30 {
        net.tick(1_000);
    }
    assert_eq!(net.get(client, name("f")), Err(HydfsError::NotFound(name("f"))));
    // The name is free: only that create was cancelled.
    assert!(net.run(client, ClientOp::Create { name: name("f"), data: b"again".to_vec() }).is_ok());
    assert_eq!(net.get(0, name("f")).unwrap(), b"again");
}

#[test]
fn a_full_disk_fails_large_and_small_writes_with_the_cause() {
    let mut net = Net::new(3);
    assert!(net.run(0, ClientOp::Create { name: name("f"), data: b"base".to_vec() }).is_ok());
    net.disks[1].fail_puts(true);
    let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    for data in [b"small".to_vec(), big] {
        match net.run(0, ClientOp::Append { name: name("f"), data }) {
            Err(HydfsError::Storage(why)) => assert!(why.contains("No space left"), "{why}"),
            other => panic!("expected a storage error, got {other:?}"),
        }
    }
    assert!(net.nodes.iter().all(|n| n.server.waiting_answers() == 0), "no replica still waits");
    net.disks[1].fail_puts(false);
    assert!(net.run(0, ClientOp::Append { name: name("f"), data: b"+ok".to_vec() }).is_ok());
}

/// Small parts, repaired at 2 KiB/s.
fn slow_repairs() -> HydfsConfig {
    HydfsConfig { chunk_bytes: 1024, inline_bytes: 512, repair_bytes_per_sec: 2048, ..HydfsConfig::default() }
}

impl Net {
    /// Every node's view loses node `gone` (which is told it is out of the group).
    fn lose_from_ring(&mut self, gone: usize) {
        let n = self.nodes.len();
        for i in 0..n {
            let others: Vec<MemberId> =
                (0..n).filter(|j| *j != i && *j != gone).map(|j| MemberId::new(addr(j), 1)).collect();
            let me = (i != gone).then(|| MemberId::new(addr(i), 1));
            self.nodes[i].set_members(self.now, me, others);
        }
    }
}

#[test]
fn repairs_are_paced_by_the_repair_rate() {
    let mut net = Net::with_config(4, slow_repairs());
    let data: Vec<u8> = (0..16 * 1024u32).map(|i| i as u8).collect();
    assert!(net.run(0, ClientOp::Create { name: name("r"), data }).is_ok());
    let holders: Vec<usize> = (0..4).filter(|i| net.nodes[*i].store().file(&name("r")).is_some()).collect();
    let (gone, newcomer) = (holders[0], (0..4).find(|i| !holders.contains(i)).unwrap());
    // The ring loses one holder: the fourth node must pull 16 parts at 2 KiB/s.
    net.lose_from_ring(gone);
    let parts = |net: &Net| {
        (0..16).filter(|p| net.nodes[newcomer].store().has_part(&name("r"), stamp_of(net), *p)).count()
    };
    for _ in 0..3 {
        net.tick(1_000);
    }
    let early = parts(&net);
    assert!(early < 16, "16 KiB pulled within 3 s at 2 KiB/s");
    for _ in 0..12 {
        net.tick(1_000);
    }
    assert_eq!(parts(&net), 16, "the repair finishes at its pace (had {early} parts after 3 s)");
}

fn stamp_of(net: &Net) -> Stamp {
    let rec = net.nodes.iter().find_map(|n| n.store().file(&name("r")).and_then(|r| r.create.clone()));
    rec.expect("someone holds the create").stamp
}

#[test]
fn a_client_reads_its_own_writes_through_its_cache() {
    let mut net = Net::new(4);
    assert!(net.run(0, ClientOp::Create { name: name("c"), data: b"base".to_vec() }).is_ok());
    assert_eq!(net.get(0, name("c")).unwrap(), b"base");
    assert!(net.run(0, ClientOp::Append { name: name("c"), data: b"+mine".to_vec() }).is_ok());
    assert_eq!(net.get(0, name("c")).unwrap(), b"base+mine");
    assert!(net.nodes[0].stats().cache_misses >= 2);
}

#[test]
fn oversized_parts_from_a_peer_are_refused() {
    let mut net = Net::new(3);
    let me = addr(0);
    let stamp = Stamp { ts: 1, client: MemberId::new(me, 1), seq: 1 };
    let write = WriteMeta { stamp, kind: WriteKind::Create, parts: vec![PartMeta::of(&[b'x'; 4096])] };
    let target = net.nodes[0].replicas(&name("x"))[0];
    let j = (0..3).find(|j| addr(*j) == target).unwrap();
    net.nodes[j].handle_message(
        Time(0),
        MemberId::new(me, 1),
        HydfsMsg::Write(WriteRequest { req: 9, name: name("x"), write, inline: None, source: me, of: None }),
    );
    let reply = std::iter::from_fn(|| net.nodes[j].poll_outgoing()).find(|(to, _)| *to == me);
    match reply {
        Some((_, HydfsMsg::WriteReply { req: 9, result: Err(Refusal::TooLarge { .. }), .. })) => {}
        other => panic!("expected a TooLarge refusal, got {other:?}"),
    }
    assert!(net.nodes[j].store().file(&name("x")).is_none(), "nothing recorded");
}

#[test]
fn answers_from_a_replaced_incarnation_are_ignored() {
    let mut net = Net::new(3);
    // Node 1 restarted: the others now know it under a later join time.
    for (i, node) in net.nodes.iter_mut().enumerate().filter(|(i, _)| *i != 1) {
        let others: Vec<MemberId> =
            (0..3).filter(|j| *j != i).map(|j| MemberId::new(addr(j), if j == 1 { 2 } else { 1 })).collect();
        node.set_members(Time(0), Some(MemberId::new(addr(i), 1)), others);
    }
    let before = net.nodes[0].stats().stale_messages;
    net.nodes[0].handle_message(
        Time(0),
        MemberId::new(addr(1), 1),
        HydfsMsg::Taken { name: name("f"), hash: 0 },
    );
    assert_eq!(net.nodes[0].stats().stale_messages, before + 1);
}

/// Delivers every message until the network is quiet, handing back (instead of delivering) the
/// replies to `req` addressed to node `client`.
fn settle_capturing(net: &mut Net, client: usize, req: ReqId) -> Vec<Result<Vec<NodeAddr>, Refusal>> {
    let mut replies = Vec::new();
    loop {
        let mut moved = false;
        for i in 0..net.nodes.len() {
            while let Some((to, msg)) = net.nodes[i].poll_outgoing() {
                moved = true;
                match msg {
                    HydfsMsg::WriteReply { req: r, result, .. } if to == addr(client) && r == req => {
                        replies.push(result)
                    }
                    msg => {
                        let j = (0..net.nodes.len()).find(|j| addr(*j) == to).expect("known node");
                        net.nodes[j].handle_message(net.now, MemberId::new(addr(i), 1), msg);
                    }
                }
            }
            while net.nodes[i].poll_event().is_some() {}
        }
        if !moved {
            return replies;
        }
    }
}

#[test]
fn a_write_retried_with_its_stamp_after_it_committed_elsewhere_is_acknowledged() {
    // A name whose replicas change when node 4 joins: node 4 becomes one of them.
    let mut net = Net::new(5);
    let ring_of = |members: &[usize]| Ring::new(members.iter().map(|i| addr(*i)));
    let f = (0..100)
        .map(|i| name(&format!("journal-{i}")))
        .find(|f| ring_of(&[0, 1, 2, 3, 4]).replicas(f.as_str(), 3).contains(&addr(4)))
        .expect("some name lands on node 4");
    let view = |net: &mut Net, members: &[usize]| {
        for i in 0..5 {
            let others = members.iter().filter(|j| **j != i).map(|j| MemberId::new(addr(*j), 1));
            let me = members.contains(&i).then(|| MemberId::new(addr(i), 1));
            net.nodes[i].set_members(net.now, me, others.collect::<Vec<_>>());
        }
    };
    view(&mut net, &[0, 1, 2, 3]);
    let persist = |kind, data: &[u8]| ClientOp::Persist { name: f.clone(), kind, data: data.to_vec() };
    let Ok(OpOutput::Written { stamp: created, .. }) = net.run(0, persist(WriteKind::Create, b"base")) else {
        panic!("the create failed")
    };
    let Ok(OpOutput::Written { stamp: appended, .. }) = net.run(0, persist(WriteKind::Append, b"+one"))
    else {
        panic!("the append failed")
    };
    // Node 4 joins and takes over from one of the replicas, which still holds the file (a
    // holder the new coordinator's exists-check asks). The client's answers were lost, so it
    // sends both writes again, with their stamps, to node 4.
    view(&mut net, &[0, 1, 2, 3, 4]);
    assert!(net.nodes[4].replicas(&f).contains(&addr(4)));
    let resend = |net: &mut Net, req: ReqId, stamp: Stamp, kind: WriteKind, data: &[u8]| {
        let write = WriteMeta::describe(stamp, kind, data, 1024);
        let inline = Some(data.to_vec());
        let of = (kind == WriteKind::Append).then_some(created);
        let msg = HydfsMsg::Write(WriteRequest { req, name: f.clone(), write, inline, source: addr(0), of });
        net.nodes[4].handle_message(net.now, MemberId::new(addr(0), 1), msg);
        settle_capturing(net, 0, req)
    };
    let again = resend(&mut net, 900, created, WriteKind::Create, b"base");
    assert!(matches!(again.as_slice(), [Ok(_)]), "the same create is not another create: {again:?}");
    let again = resend(&mut net, 901, appended, WriteKind::Append, b"+one");
    assert!(matches!(again.as_slice(), [Ok(_)]), "the same append is acknowledged again: {again:?}");
    // The retries changed nothing: one create, the append once, on every replica of the view.
    for r in net.nodes[4].replicas(&f) {
        let j = (0..5).find(|j| addr(*j) == r).unwrap();
        let rec = net.nodes[j].store().file(&f).expect("every replica holds the file");
        assert_eq!(rec.create.as_ref().map(|c| c.stamp), Some(created));
        assert_eq!(rec.writes().filter(|w| w.stamp == appended).count(), 1);
    }
    assert_eq!(net.get(1, f.clone()).unwrap(), b"base+one");
    // A different create of the name is still refused.
    let other = Stamp { ts: created.ts + 100, ..created };
    let refused = resend(&mut net, 902, other, WriteKind::Create, b"other");
    assert_eq!(refused, vec![Err(Refusal::AlreadyExists)]);
}

/// One client persists a create and appends while the other nodes crash, restart, are
/// partitioned and see different rings, with messages reordered: every write is acknowledged
/// (retries of one stamp are never refused as another create).
#[test]
fn persisted_writes_survive_churn() {
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;
    const N: usize = 6;
    for seed in 0..20u64 {
        let rng = &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let cfg = HydfsConfig { chunk_bytes: 1024, inline_bytes: 512, ..HydfsConfig::default() };
        let fresh = |id: MemberId, now: u64| {
            Hydfs::new(cfg.clone(), id, Box::new(MemStorage::default()), Time(now)).unwrap()
        };
        let mut ids: Vec<MemberId> = (0..N).map(|i| MemberId::new(addr(i), 1)).collect();
        let mut nodes: Vec<Hydfs> = ids.iter().map(|id| fresh(*id, 0)).collect();
        let mut up = [true; N];
        let mut blocked: BTreeSet<(usize, usize)> = BTreeSet::new();
        // (due, order, recipient, sender, message; None: the sender learns the send failed)
        let mut queue: Vec<(u64, u64, usize, MemberId, Option<HydfsMsg>, NodeAddr)> = Vec::new();
        let mut views: Vec<(u64, usize)> = (0..N).map(|i| (0, i)).collect();
        let (mut order, mut now, mut next_fault) = (0u64, 0u64, 300u64);
        let (calm, writes) = (20_000u64, 30);
        let (mut issued, mut current, mut errors) = (0, None, Vec::new());
        while now < 200_000 && (issued < writes || current.is_some() || now <= calm) {
            now += 1;
            let t = Time(now);
            if now >= next_fault && now < calm {
                next_fault = now + rng.gen_range(100..1500);
                match rng.gen_range(0..5) {
                    0 => {
                        let side: Vec<usize> = (0..N).filter(|_| rng.gen_bool(0.4)).collect();
                        for a in 0..N {
                            for b in (0..N).filter(|b| side.contains(&a) != side.contains(b)) {
                                blocked.insert((a, b));
                            }
                        }
                    }
                    1 => blocked.clear(),
                    2 => up[rng.gen_range(1..N)] = false,
                    3 => {
                        let v = rng.gen_range(1..N);
                        if !up[v] {
                            (up[v], ids[v]) = (true, MemberId::new(addr(v), now));
                            nodes[v] = fresh(ids[v], now);
                        }
                    }
                    _ => {}
                }
                views.extend((0..N).map(|i| (now + rng.gen_range(0..3000), i)));
            }
            if now == calm {
                blocked.clear();
                for v in (1..N).filter(|v| !up[*v]).collect::<Vec<_>>() {
                    (up[v], ids[v]) = (true, MemberId::new(addr(v), now));
                    nodes[v] = fresh(ids[v], now);
                }
                views.extend((0..N).map(|i| (now + rng.gen_range(0..3000), i)));
            }
            for i in views.iter().filter(|(at, _)| *at <= now).map(|(_, i)| *i).collect::<Vec<_>>() {
                let others: Vec<MemberId> = (0..N)
                    .filter(|j| *j != i && up[*j] && !blocked.contains(&(i, *j)))
                    .map(|j| ids[j])
                    .collect();
                if up[i] {
                    nodes[i].set_members(t, Some(ids[i]), others);
                }
            }
            views.retain(|(at, _)| *at > now);
            if current.is_none() && issued < writes {
                let kind = if issued == 0 { WriteKind::Create } else { WriteKind::Append };
                let op = ClientOp::Persist {
                    name: name("journal"),
                    kind,
                    data: format!("w{issued};").into_bytes(),
                };
                current = Some(nodes[0].submit(t, op).unwrap());
                issued += 1;
            }
            let mut due: Vec<_> = Vec::new();
            let mut k = 0;
            while k < queue.len() {
                if queue[k].0 <= now {
                    due.push(queue.swap_remove(k));
                } else {
                    k += 1;
                }
            }
            due.sort_by_key(|d| (d.0, d.1));
            for (_, _, to, from, msg, failed_to) in due {
                match msg {
                    Some(m) if up[to] => nodes[to].handle_message(t, from, m),
                    None if up[to] && from == ids[to] => nodes[to].handle_send_failed(t, failed_to),
                    _ => {}
                }
            }
            for i in 0..N {
                if up[i] && nodes[i].poll_timeout().is_some_and(|x| x <= t) {
                    nodes[i].handle_timeout(t);
                }
            }
            for i in (0..N).filter(|i| up[*i]) {
                while let Some((to, msg)) = nodes[i].poll_outgoing() {
                    let j = (0..N).find(|j| addr(*j) == to).unwrap();
                    order += 1;
                    if blocked.contains(&(i, j)) || !up[j] {
                        let delay = if blocked.contains(&(i, j)) { 1000 } else { 1 };
                        queue.push((now + delay, order, i, ids[i], None, to));
                    } else {
                        queue.push((now + rng.gen_range(1..20), order, j, ids[i], Some(msg), to));
                    }
                }
                while let Some(e) = nodes[i].poll_event() {
                    if let HydfsEvent::OpDone { op, result } = e {
                        if i == 0 && Some(op) == current {
                            current = None;
                            if let Err(e) = result {
                                errors.push(format!("seed {seed}, write {} at {now} ms: {e}", issued - 1));
                            }
                        }
                    }
                }
            }
        }
        assert!(errors.is_empty(), "{errors:#?}");
        assert!(current.is_none() && issued == writes, "seed {seed}: writes still running at the end");
    }
}

impl Net {
    /// Submits every op at once, then runs until all have finished (time passes in 100 ms steps
    /// when nothing else moves).
    fn run_all(&mut self, ops: Vec<(usize, ClientOp)>) -> Vec<Result<OpOutput, HydfsError>> {
        let ids: Vec<(usize, OpId)> = ops
            .into_iter()
            .map(|(at, op)| (at, self.nodes[at].submit(self.now, op).expect("submitted")))
            .collect();
        let mut results: Vec<Option<Result<OpOutput, HydfsError>>> = vec![None; ids.len()];
        for _ in 0..10_000 {
            self.settle();
            for (k, (at, id)) in ids.iter().enumerate() {
                if let Some(p) = self.done.iter().position(|(n, o, _)| n == at && o == id) {
                    results[k] = Some(self.done.remove(p).2);
                }
            }
            if results.iter().all(Option::is_some) {
                return results.into_iter().flatten().collect();
            }
            self.tick(100);
        }
        panic!("operations did not finish");
    }
}

#[test]
fn names_over_the_limit_are_refused_by_clients_and_servers() {
    let cfg =
        HydfsConfig { chunk_bytes: 1024, inline_bytes: 512, max_name_bytes: 10, ..HydfsConfig::default() };
    let mut net = Net::with_config(3, cfg);
    // The client's own limit: refused before anything is sent.
    let long = name("eleven-byte");
    assert_eq!(
        net.nodes[0].submit(Time(0), ClientOp::Create { name: long.clone(), data: b"x".to_vec() }),
        Err(HydfsError::NameTooLong { len: 11, limit: 10 })
    );
    assert_eq!(net.nodes[0].stats().names_refused, 1);
    assert!(net.nodes[0].out.is_empty(), "nothing was sent");
    // A client allowing longer names meets servers that do not: every request is answered with
    // the servers' limit, and the write fails with it.
    net.nodes[0].cfg.max_name_bytes = 100;
    let result = net.run(0, ClientOp::Create { name: long.clone(), data: b"x".to_vec() });
    assert_eq!(result, Err(HydfsError::NameTooLong { len: 11, limit: 10 }));
    assert!(result.unwrap_err().to_string().contains("max_name_bytes"));
    let refused: u64 = net.nodes[1..].iter().map(|n| n.stats().names_refused).sum();
    assert!(refused >= 1, "servers count the names they refused");
    assert!(net.nodes[1..].iter().all(|n| n.store().file(&long).is_none()), "no server stored it");
    // Names within the limit work as before.
    assert!(net.run(1, ClientOp::Create { name: name("ten-bytes!"), data: b"x".to_vec() }).is_ok());
}

#[test]
fn a_coordinator_at_its_transfer_limit_answers_busy_and_the_client_goes_elsewhere() {
    let cfg =
        HydfsConfig { chunk_bytes: 1024, inline_bytes: 512, max_transfers: 1, ..HydfsConfig::default() };
    let mut net = Net::with_config(3, cfg);
    // A file whose first replica is node 2, so that clients 0 and 1 both send it their writes.
    let f = (0..100)
        .map(|i| name(&format!("f{i}")))
        .find(|n| net.nodes[0].ring().replicas(n.as_str(), 3)[0] == addr(2))
        .expect("some name maps to node 2 first");
    assert!(net.run(2, ClientOp::Create { name: f.clone(), data: Vec::new() }).is_ok());
    let append = |data: &[u8]| ClientOp::Append { name: f.clone(), data: data.to_vec() };
    let results = net.run_all(vec![(0, append(b"a")), (1, append(b"b"))]);
    assert!(results.iter().all(Result::is_ok), "both writes went through: {results:?}");
    assert_eq!(net.nodes[2].stats().busy_refusals, 1, "the second write found node 2 busy");
    // Under the limit, nobody is refused.
    net.nodes[2].cfg.max_transfers = 2;
    let results = net.run_all(vec![(0, append(b"c")), (1, append(b"d"))]);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(net.nodes[2].stats().busy_refusals, 1);
}

#[test]
fn appends_that_would_pass_the_file_description_limit_are_refused_for_good() {
    // Room for the create and a handful of one-byte appends (about 40 bytes each).
    let limit = 300;
    let cfg = HydfsConfig {
        chunk_bytes: 1024,
        inline_bytes: 512,
        max_file_meta_bytes: limit,
        ..HydfsConfig::default()
    };
    let mut net = Net::with_config(3, cfg);
    let f = name("f");
    assert!(net.run(0, ClientOp::Create { name: f.clone(), data: Vec::new() }).is_ok());
    let mut taken = Vec::new();
    let refused = loop {
        net.now = Time(10 + taken.len() as u64);
        let byte = b'a' + taken.len() as u8;
        match net.run(taken.len() % 3, ClientOp::Append { name: f.clone(), data: vec![byte] }) {
            Ok(_) => taken.push(byte),
            Err(e) => break e,
        }
        assert!(taken.len() < 20, "appends stop once the description is full");
    };
    assert!(taken.len() >= 3, "the appends that fit were taken: {taken:?}");
    assert_eq!(refused, HydfsError::FileFull { name: f.clone(), limit });
    let text = refused.to_string();
    assert!(
        text.contains("`f` is full") && text.contains("max_file_meta_mb") && text.contains("new file"),
        "{text}"
    );
    assert_eq!(net.nodes.iter().map(|n| n.stats().full_file_appends_refused).sum::<u64>(), 1);
    for node in &mut net.nodes {
        let bytes = node.store.meta_bytes(&f);
        assert!(bytes > 0 && bytes <= limit, "a copy's description stays within the limit: {bytes}");
    }
    // A merge orders the appends but describes them all the same: the file stays full.
    assert!(net.run(2, ClientOp::Merge { name: f.clone() }).is_ok());
    net.now = Time(100);
    let again = net.run(1, ClientOp::Append { name: f.clone(), data: b"z".to_vec() });
    assert_eq!(again, Err(HydfsError::FileFull { name: f.clone(), limit }));
    // Nothing taken is lost, and a new file takes appends.
    assert_eq!(net.get(2, f).unwrap(), taken);
    let g = name("g");
    assert!(net.run(0, ClientOp::Create { name: g.clone(), data: Vec::new() }).is_ok());
    assert!(net.run(1, ClientOp::Append { name: g, data: b"z".to_vec() }).is_ok());
}

#[test]
fn appends_over_the_pending_limit_are_refused_until_a_merge() {
    let cfg = HydfsConfig {
        chunk_bytes: 1024,
        inline_bytes: 512,
        max_pending_appends: 3,
        ..HydfsConfig::default()
    };
    let mut net = Net::with_config(3, cfg);
    let f = name("f");
    assert!(net.run(0, ClientOp::Create { name: f.clone(), data: Vec::new() }).is_ok());
    for i in 0..3u8 {
        net.now = Time(10 + i as u64);
        assert!(net.run(0, ClientOp::Append { name: f.clone(), data: vec![i] }).is_ok());
    }
    let refused = net.run(1, ClientOp::Append { name: f.clone(), data: b"over".to_vec() });
    assert_eq!(refused, Err(HydfsError::TooManyPending { name: f.clone(), limit: 3 }));
    let text = refused.unwrap_err().to_string();
    assert!(text.contains("too many pending appends on `f`") && text.contains("run merge"), "{text}");
    assert_eq!(net.nodes.iter().map(|n| n.stats().pending_appends_refused).sum::<u64>(), 1);
    assert!(net.run(2, ClientOp::Merge { name: f.clone() }).is_ok());
    assert!(net.run(1, ClientOp::Append { name: f.clone(), data: b"after".to_vec() }).is_ok());
    assert_eq!(net.get(2, f).unwrap(), b"\x00\x01\x02after");
}

// ---- metadata and part reads (streaming readers) ---------------------------------------------

/// Lines of text, `n` bytes in all: parts of 1 KiB cut lines in the middle.
fn lines(n: usize, tag: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(format!("{tag} line {i}\n").as_bytes());
        i += 1;
    }
    out.truncate(n);
    out
}

fn written(r: Result<OpOutput, HydfsError>) -> Stamp {
    match r {
        Ok(OpOutput::Written { stamp, .. }) => stamp,
        other => panic!("expected a write, got {other:?}"),
    }
}

fn meta_of(r: Result<OpOutput, HydfsError>) -> (FileMeta, NodeAddr) {
    match r {
        Ok(OpOutput::Meta { meta, from, .. }) => (meta, from),
        other => panic!("expected metadata, got {other:?}"),
    }
}

fn part_of(r: Result<OpOutput, HydfsError>) -> (Vec<u8>, NodeAddr) {
    match r {
        Ok(OpOutput::Part { bytes, from, .. }) => (bytes, from),
        other => panic!("expected a part, got {other:?}"),
    }
}

/// A node that is not one of `f`'s replicas.
fn outsider(net: &Net, f: &FileName) -> usize {
    let replicas = net.nodes[0].replicas(f);
    (0..net.nodes.len()).find(|i| !replicas.contains(&addr(*i))).expect("more nodes than replicas")
}

#[test]
fn meta_lists_every_write_with_its_parts_in_file_order() {
    let mut net = Net::new(5);
    let f = name("m");
    let (base, one, two) = (lines(3000, "base"), lines(700, "one"), lines(1500, "two"));
    let created = written(net.run(0, ClientOp::Create { name: f.clone(), data: base.clone() }));
    net.now = Time(100);
    let merged = written(net.run(1, ClientOp::Append { name: f.clone(), data: one.clone() }));
    assert!(net.run(2, ClientOp::Merge { name: f.clone() }).is_ok());
    net.now = Time(200);
    let pending = written(net.run(3, ClientOp::Append { name: f.clone(), data: two.clone() }));
    let (meta, from) = meta_of(net.run(4, ClientOp::Meta { name: f.clone() }));
    assert!(net.nodes[4].replicas(&f).contains(&from), "served by a replica");
    assert_eq!(meta.create.as_ref().map(|c| c.stamp), Some(created));
    assert_eq!(meta.merged.iter().map(|w| w.stamp).collect::<Vec<_>>(), vec![merged]);
    assert_eq!(meta.pending.iter().map(|w| w.stamp).collect::<Vec<_>>(), vec![pending]);
    assert!(meta.incomplete.is_empty());
    assert_eq!(meta.create.as_ref().unwrap().parts.len(), 3, "3000 bytes in parts of 1 KiB");
    // Line positions from metadata alone agree with the file's bytes.
    let whole = net.get(4, f.clone()).unwrap();
    assert_eq!(whole, [base, one, two].concat());
    assert_eq!(meta.len(), whole.len() as u64);
    for p in meta.part_positions() {
        let before = &whole[..p.offset as usize];
        assert_eq!(p.newlines_before, before.iter().filter(|b| **b == b'\n').count() as u64);
        assert_eq!(p.starts_line, before.is_empty() || before.ends_with(b"\n"));
    }
}

#[test]
fn meta_of_a_file_no_replica_holds_is_not_found() {
    let mut net = Net::new(4);
    assert_eq!(
        net.run(0, ClientOp::Meta { name: name("nothing") }),
        Err(HydfsError::NotFound(name("nothing")))
    );
}

#[test]
fn meta_skips_a_copy_that_misses_an_acknowledged_write() {
    let mut net = Net::new(5);
    let f = name("ryw");
    let replicas = net.nodes[0].replicas(&f);
    let primary = net.index(replicas[0]);
    let writer = outsider(&net, &f);
    let reader = (0..5).find(|i| *i != writer && !replicas.contains(&addr(*i))).expect("a second outsider");
    assert!(net.run(writer, ClientOp::Create { name: f.clone(), data: b"base\n".to_vec() }).is_ok());
    net.now = Time(100);
    let mine = written(net.run(writer, ClientOp::Append { name: f.clone(), data: b"mine\n".to_vec() }));
    // The primary loses the append (as if it had not received it yet).
    let mut rec = net.nodes[primary].store.file(&f).cloned().unwrap();
    rec.pending.remove(&mine);
    net.nodes[primary].store.set_file(&f, rec);
    let (meta, from) = meta_of(net.run(writer, ClientOp::Meta { name: f.clone() }));
    assert_ne!(from, replicas[0], "the writer does not accept a copy without its append");
    assert!(meta.all_writes().any(|w| w.stamp == mine));
    // Another client, which had nothing acknowledged, takes the primary's copy as it is.
    let (meta, from) = meta_of(net.run(reader, ClientOp::Meta { name: f.clone() }));
    assert_eq!(from, replicas[0]);
    assert!(!meta.all_writes().any(|w| w.stamp == mine));
}

#[test]
fn meta_leaves_out_pending_appends_still_arriving_and_fails_over_from_a_down_replica() {
    let mut net = Net::new(5);
    let f = name("arriving");
    let replicas = net.nodes[0].replicas(&f);
    let reader = outsider(&net, &f);
    assert!(net.run(0, ClientOp::Create { name: f.clone(), data: b"base\n".to_vec() }).is_ok());
    // An append the primary knows of but holds no bytes for.
    let primary = net.index(replicas[0]);
    let ghost = WriteMeta::describe(
        Stamp { ts: 50, client: MemberId::new(addr(9), 1), seq: 1 },
        WriteKind::Append,
        b"not here yet",
        1024,
    );
    net.nodes[primary].store.file_mut(&f).pending.insert(ghost.stamp, ghost.clone());
    let (meta, from) = meta_of(net.run(reader, ClientOp::Meta { name: f.clone() }));
    assert_eq!(from, replicas[0]);
    assert!(meta.pending.is_empty() && meta.incomplete.is_empty(), "{meta:?}");
    net.down.insert(primary);
    let (_, from) = meta_of(net.run(reader, ClientOp::Meta { name: f.clone() }));
    assert_eq!(from, replicas[1], "the next replica in ring order answers");
}

#[test]
fn a_replica_reads_a_part_from_its_own_storage_without_a_message() {
    let mut net = Net::new(5);
    let f = name("local");
    let data = lines(2500, "x");
    let stamp = written(net.run(0, ClientOp::Create { name: f.clone(), data: data.clone() }));
    let r = net.index(net.nodes[0].replicas(&f)[1]);
    let op =
        net.nodes[r].submit(net.now, ClientOp::ReadPart { name: f.clone(), stamp, part: 1, prefer: None });
    let op = op.unwrap();
    assert!(net.nodes[r].out.is_empty(), "nothing was sent");
    match net.nodes[r].poll_event() {
        Some(HydfsEvent::OpDone { op: done, result }) => {
            assert_eq!(done, op);
            let (bytes, from) = part_of(result);
            assert_eq!((bytes.as_slice(), from), (&data[1024..2048], addr(r)));
        }
        other => panic!("expected the answer at once, got {other:?}"),
    }
}

#[test]
fn a_part_is_read_from_the_preferred_node_first_then_from_the_replicas() {
    let mut net = Net::new(6);
    let f = name("parts");
    let data = lines(3000, "p");
    let stamp = written(net.run(0, ClientOp::Create { name: f.clone(), data: data.clone() }));
    let replicas = net.nodes[0].replicas(&f);
    let reader = outsider(&net, &f);
    let other = (0..6).find(|i| *i != reader && !replicas.contains(&addr(*i))).expect("a second outsider");
    let read = |net: &mut Net, prefer: Option<NodeAddr>| {
        part_of(net.run(reader, ClientOp::ReadPart { name: f.clone(), stamp, part: 2, prefer }))
    };
    let (bytes, from) = read(&mut net, Some(replicas[2]));
    assert_eq!((bytes.as_slice(), from), (&data[2048..], replicas[2]));
    assert_eq!(read(&mut net, None).1, replicas[0], "without a preference: ring order");
    // A preferred node that lacks the part, or is down: the replicas serve it.
    assert_eq!(read(&mut net, Some(addr(other))).1, replicas[0]);
    net.down.insert(net.index(replicas[2]));
    let (bytes, from) = read(&mut net, Some(replicas[2]));
    assert_eq!((bytes.as_slice(), from), (&data[2048..], replicas[0]));
    net.down.insert(net.index(replicas[0]));
    assert_eq!(read(&mut net, Some(replicas[2])).1, replicas[1]);
}

#[test]
fn a_part_whose_bytes_do_not_match_its_metadata_is_never_returned() {
    let mut net = Net::new(5);
    let f = name("rot");
    let data = lines(2000, "r");
    let stamp = written(net.run(0, ClientOp::Create { name: f.clone(), data: data.clone() }));
    let replicas = net.nodes[0].replicas(&f);
    let bad = net.index(replicas[1]);
    // The replica's block rots, and (as a broken node would) it serves it unchecked.
    net.nodes[bad].store.verify = false;
    let blob = net.nodes[bad].store.write_blobs(&f, stamp).unwrap()[0];
    let mut rotten = data[..1024].to_vec();
    rotten[10] ^= 1;
    net.disks[bad].inner.lock().unwrap().0.put(blob, &rotten).unwrap();
    let reader = outsider(&net, &f);
    let (bytes, from) = part_of(
        net.run(reader, ClientOp::ReadPart { name: f.clone(), stamp, part: 0, prefer: Some(replicas[1]) }),
    );
    assert_eq!((bytes.as_slice(), from), (&data[..1024], replicas[0]));
    // Read on the broken replica itself: its local bytes are refused as well.
    let (bytes, from) =
        part_of(net.run(bad, ClientOp::ReadPart { name: f.clone(), stamp, part: 0, prefer: None }));
    assert_eq!(bytes.as_slice(), &data[..1024]);
    assert_ne!(from, replicas[1]);
}

#[test]
fn a_part_no_node_holds_is_not_found() {
    let mut net = Net::new(4);
    let f = name("some");
    let stamp = written(net.run(0, ClientOp::Create { name: f.clone(), data: b"x\n".to_vec() }));
    let other = Stamp { seq: stamp.seq + 7, ..stamp };
    assert_eq!(
        net.run(1, ClientOp::ReadPart { name: f.clone(), stamp: other, part: 0, prefer: None }),
        Err(HydfsError::NotFound(f.clone()))
    );
    assert_eq!(
        net.run(1, ClientOp::ReadPart { name: f.clone(), stamp, part: 3, prefer: None }),
        Err(HydfsError::NotFound(f))
    );
}

// ---- deletes -----------------------------------------------------------------------------------

fn deleted(r: Result<OpOutput, HydfsError>) -> (Stamp, Vec<NodeAddr>) {
    match r {
        Ok(OpOutput::Deleted { create, replicas, .. }) => (create, replicas),
        other => panic!("expected a delete, got {other:?}"),
    }
}

impl Net {
    /// Data blocks on node `i`'s disk (the index's own blocks are not counted).
    fn blocks(&self, i: usize) -> usize {
        let mut disk = self.disks[i].inner.lock().unwrap();
        disk.0.list().unwrap().into_iter().filter(|b| crate::hydfs::index::seq_of(*b).is_none()).count()
    }

    /// Gives every node (except those in `out`) a view of the members not in `out`.
    fn view_without(&mut self, out: &[usize]) {
        let n = self.nodes.len();
        for i in (0..n).filter(|i| !out.contains(i)) {
            let others: Vec<MemberId> =
                (0..n).filter(|j| *j != i && !out.contains(j)).map(|j| MemberId::new(addr(j), 1)).collect();
            self.nodes[i].set_members(self.now, Some(MemberId::new(addr(i), 1)), others);
        }
    }
}

#[test]
fn a_delete_drops_every_copy_and_frees_its_blocks_and_a_new_create_is_a_new_file() {
    let mut net = Net::new(5);
    let f = name("gone");
    let created = written(net.run(0, ClientOp::Create { name: f.clone(), data: lines(3000, "old") }));
    net.now = Time(100);
    assert!(net.run(1, ClientOp::Append { name: f.clone(), data: lines(1500, "old+") }).is_ok());
    assert!(net.run(2, ClientOp::Merge { name: f.clone() }).is_ok());
    net.now = Time(200);
    assert!(net.run(3, ClientOp::Append { name: f.clone(), data: b"pending\n".to_vec() }).is_ok());
    assert!((0..5).map(|i| net.blocks(i)).sum::<usize>() >= 3 * 6, "every replica holds the parts");
    let (create, replicas) = deleted(net.run(4, ClientOp::Delete { name: f.clone() }));
    assert_eq!(create, created);
    assert_eq!(replicas.len(), 3);
    for i in 0..5 {
        assert!(net.nodes[i].store().file(&f).is_none(), "node {i} still holds the file");
        assert_eq!(net.blocks(i), 0, "node {i} still holds blocks");
    }
    for r in &replicas {
        assert!(net.nodes[net.index(*r)].tombstones().contains(&f, created), "{r} keeps the tombstone");
    }
    assert_eq!(net.get(1, f.clone()), Err(HydfsError::NotFound(f.clone())));
    assert_eq!(net.run(1, ClientOp::Meta { name: f.clone() }), Err(HydfsError::NotFound(f.clone())));
    assert_eq!(net.run(2, ClientOp::Ls { name: f.clone() }), Err(HydfsError::NotFound(f.clone())));
    assert_eq!(
        net.run(3, ClientOp::Append { name: f.clone(), data: b"late\n".to_vec() }),
        Err(HydfsError::NotFound(f.clone()))
    );
    // The name is free again, and the new file holds nothing of the old one.
    net.now = Time(300);
    let again = written(net.run(2, ClientOp::Create { name: f.clone(), data: b"new\n".to_vec() }));
    assert_ne!(again, created);
    // Clients that had writes of the old file acknowledged read the new one (they do not wait
    // for writes of a deleted file).
    for i in [1, 3] {
        assert_eq!(net.get(i, f.clone()).unwrap(), b"new\n", "client {i}");
        assert!(net.run(i, ClientOp::Meta { name: f.clone() }).is_ok(), "client {i}");
    }
    // Anti-entropy rounds change nothing.
    for _ in 0..5 {
        net.tick(2_000);
    }
    assert_eq!(net.get(4, f.clone()).unwrap(), b"new\n");
}

#[test]
fn deleting_a_missing_file_is_not_found_and_a_second_delete_is_answered_as_the_first() {
    let mut net = Net::new(4);
    let f = name("twice");
    assert_eq!(net.run(0, ClientOp::Delete { name: f.clone() }), Err(HydfsError::NotFound(f.clone())));
    let created = written(net.run(0, ClientOp::Create { name: f.clone(), data: b"x\n".to_vec() }));
    assert_eq!(deleted(net.run(1, ClientOp::Delete { name: f.clone() })).0, created);
    let (create, replicas) = deleted(net.run(2, ClientOp::Delete { name: f.clone() }));
    assert_eq!((create, replicas.len()), (created, 0), "answered from the tombstone");
}

#[test]
fn a_replica_cut_off_during_a_delete_does_not_bring_the_file_back() {
    let mut net = Net::new(6);
    let f = name("cut");
    let created = written(net.run(0, ClientOp::Create { name: f.clone(), data: lines(2500, "c") }));
    // One replica is cut off and declared failed; the others delete the file without it.
    let cut = net.index(net.nodes[0].replicas(&f)[1]);
    let client = (0..6).find(|i| *i != cut).unwrap();
    net.down.insert(cut);
    net.view_without(&[cut]);
    let (_, replicas) = deleted(net.run(client, ClientOp::Delete { name: f.clone() }));
    assert!(!replicas.contains(&addr(cut)));
    assert!(net.nodes[cut].store().file(&f).is_some(), "the cut-off replica still has its copy");
    // It comes back (as a replica again) and anti-entropy runs: its copy is dropped, not spread.
    net.down.clear();
    let everyone: Vec<usize> = Vec::new();
    net.view_without(&everyone);
    for _ in 0..5 {
        net.tick(2_000);
    }
    for i in 0..6 {
        assert!(net.nodes[i].store().file(&f).is_none(), "node {i} holds the deleted file");
        assert_eq!(net.blocks(i), 0, "node {i} still holds blocks");
    }
    assert!(net.nodes[cut].tombstones().contains(&f, created), "the stale holder learned the tombstone");
    assert_eq!(net.get(client, f.clone()), Err(HydfsError::NotFound(f)));
}

#[test]
fn a_write_of_a_deleted_file_is_refused_by_a_replica_holding_its_tombstone() {
    let mut net = Net::new(4);
    let f = name("late");
    let created = written(net.run(0, ClientOp::Create { name: f.clone(), data: b"x\n".to_vec() }));
    let (_, replicas) = deleted(net.run(0, ClientOp::Delete { name: f.clone() }));
    let r = net.index(replicas[1]);
    // A coordinator that had not heard of the delete replicates an append of the old file.
    let stamp = Stamp { ts: 999, client: MemberId::new(addr(3), 1), seq: 9 };
    let write = WriteMeta::describe(stamp, WriteKind::Append, b"late\n", 1024);
    let msg = HydfsMsg::Replicate(ReplicateRequest {
        req: 77,
        name: f.clone(),
        write,
        inline: Some(b"late\n".to_vec()),
        sources: vec![replicas[0]],
        create: Some(Box::new(WriteMeta::describe(created, WriteKind::Create, b"x\n", 1024))),
    });
    net.nodes[r].handle_message(net.now, MemberId::new(replicas[0], 1), msg);
    let reply = std::iter::from_fn(|| net.nodes[r].poll_outgoing()).find(|(to, _)| *to == replicas[0]);
    assert!(
        matches!(reply, Some((_, HydfsMsg::ReplicateReply { req: 77, result: Err(Refusal::Deleted) }))),
        "{reply:?}"
    );
    assert!(net.nodes[r].store().file(&f).is_none(), "nothing recorded");
}

#[test]
fn tombstones_move_to_new_replicas_and_expire() {
    let cfg = HydfsConfig {
        chunk_bytes: 1024,
        inline_bytes: 512,
        tombstone_ttl: Millis::from_secs(60),
        ..HydfsConfig::default()
    };
    let mut net = Net::with_config(5, cfg);
    // A name that node 4 replicates once it joins.
    let ring_of = |members: &[usize]| Ring::new(members.iter().map(|i| addr(*i)));
    let f = (0..100)
        .map(|i| name(&format!("t{i}")))
        .find(|f| ring_of(&[0, 1, 2, 3, 4]).replicas(f.as_str(), 3).contains(&addr(4)))
        .expect("some name lands on node 4");
    net.view_without(&[4]);
    let created = written(net.run(0, ClientOp::Create { name: f.clone(), data: b"x\n".to_vec() }));
    assert_eq!(deleted(net.run(1, ClientOp::Delete { name: f.clone() })).0, created);
    assert!(!net.nodes[4].tombstones().contains(&f, created));
    net.view_without(&[]);
    net.settle();
    assert!(net.nodes[4].tombstones().contains(&f, created), "the new replica was given the tombstone");
    net.tick(59_000);
    assert!(net.nodes.iter().any(|n| n.tombstones().contains(&f, created)));
    net.tick(2_000);
    net.tick(2_000);
    assert!(net.nodes.iter().all(|n| n.tombstones().is_empty()), "expired after tombstone_ttl");
}

/// Puts back on node `i` the copy `meta` (as a node that missed every notice of the delete
/// would still hold it), with the tombstones it holds forgotten.
fn plant_stale_copy(net: &mut Net, i: usize, f: &FileName, create: &WriteMeta, data: &[u8]) {
    net.nodes[i].tombstones = Tombstones::new(100);
    net.nodes[i].store.file_mut(f).create = Some(create.clone());
    for (p, part) in create.parts.iter().enumerate() {
        let off = create.part_offset(p) as usize;
        let bytes = &data[off..off + part.len as usize];
        assert!(net.nodes[i].store.put_part(f, create.stamp, p as u32, *part, bytes).unwrap());
    }
}

#[test]
fn stale_copies_met_in_inventories_and_offers_are_dropped() {
    let mut net = Net::new(6);
    let f = name("stale");
    let data = lines(2100, "s");
    let created = written(net.run(0, ClientOp::Create { name: f.clone(), data: data.clone() }));
    let create = net.nodes.iter().find_map(|n| n.store().file(&f).and_then(|r| r.create.clone())).unwrap();
    assert_eq!(create.stamp, created);
    assert!(deleted(net.run(0, ClientOp::Delete { name: f.clone() })).1.len() == 3);
    // A replica and a non-replica hold the old copy again, and have forgotten the delete.
    let replica = net.index(net.nodes[0].replicas(&f)[2]);
    let other = outsider(&net, &f);
    plant_stale_copy(&mut net, replica, &f, &create, &data);
    plant_stale_copy(&mut net, other, &f, &create, &data);
    for _ in 0..4 {
        net.tick(2_000);
    }
    for i in [replica, other] {
        assert!(net.nodes[i].store().file(&f).is_none(), "node {i} kept its stale copy");
        assert_eq!(net.blocks(i), 0);
        assert!(net.nodes[i].tombstones().contains(&f, created));
    }
    let holders = net.nodes.iter().filter(|n| n.store().file(&f).is_some()).count();
    assert_eq!(holders, 0, "no replica took the stale copy in");
}

#[test]
fn a_client_cut_off_during_a_delete_reads_the_new_file_of_the_name() {
    let mut net = Net::new(6);
    let f = name("reborn");
    let replicas = net.nodes[0].replicas(&f);
    let k = outsider(&net, &f);
    assert!(net.run(k, ClientOp::Create { name: f.clone(), data: b"old\n".to_vec() }).is_ok());
    net.now = Time(100);
    assert!(net.run(k, ClientOp::Append { name: f.clone(), data: b"mine\n".to_vec() }).is_ok());
    // k is cut off while the file is deleted and created again: it never hears of the delete.
    net.down.insert(k);
    net.view_without(&[k]);
    let other = (0..6).find(|i| *i != k && !replicas.contains(&addr(*i))).unwrap();
    assert!(deleted(net.run(other, ClientOp::Delete { name: f.clone() })).1.len() == 3);
    net.now = Time(200);
    assert!(net.run(other, ClientOp::Create { name: f.clone(), data: b"new\n".to_vec() }).is_ok());
    net.down.clear();
    net.view_without(&[]);
    assert_eq!(net.nodes[k].acknowledged(&f), 2, "k still counts its writes of the old file");
    assert_eq!(net.get(k, f.clone()).unwrap(), b"new\n");
    assert!(net.run(k, ClientOp::Meta { name: f.clone() }).is_ok());
}

#[test]
fn the_read_cache_takes_only_files_it_can_afford() {
    let cfg =
        HydfsConfig { chunk_bytes: 1024, inline_bytes: 512, cache_bytes: 4096, ..HydfsConfig::default() };
    let mut net = Net::with_config(4, cfg);
    let (small, big) = (name("small"), name("big"));
    assert!(net.run(0, ClientOp::Create { name: small.clone(), data: vec![b's'; 1000] }).is_ok());
    assert!(net.run(0, ClientOp::Create { name: big.clone(), data: vec![b'b'; 3000] }).is_ok());
    for _ in 0..2 {
        assert_eq!(net.get(1, big.clone()).unwrap().len(), 3000);
    }
    assert_eq!(net.nodes[1].client.cache.used_bytes(), 0, "3000 bytes is over a quarter of the cache");
    assert_eq!((net.nodes[1].stats().cache_hits, net.nodes[1].stats().cache_misses), (0, 2));
    for _ in 0..2 {
        assert_eq!(net.get(1, small.clone()).unwrap().len(), 1000);
    }
    assert_eq!(net.nodes[1].client.cache.used_bytes(), 1000);
    assert_eq!(net.nodes[1].stats().cache_hits, 1, "the small file is served from the cache");
}

#[test]
fn a_replica_answers_an_install_it_has_already_applied_as_done() {
    let mut net = Net::new(4);
    let f = name("f");
    assert!(net.run(0, ClientOp::Create { name: f.clone(), data: b"base".to_vec() }).is_ok());
    net.now = Time(100);
    assert!(net.run(1, ClientOp::Append { name: f.clone(), data: b"+one".to_vec() }).is_ok());
    let replicas = net.nodes[0].replicas(&f);
    let r = net.index(replicas[1]);
    let before = net.nodes[r].store().file(&f).cloned().expect("a replica holds the file");
    let base = net.nodes[r].store().merged_hash(&f).unwrap();
    let appended: Vec<WriteMeta> = before.pending.values().cloned().collect();
    assert_eq!(appended.len(), 1);
    assert!(net.run(2, ClientOp::Merge { name: f.clone() }).is_ok());
    let merged = net.nodes[r].store().merged_hash(&f);
    assert_ne!(merged, Some(base), "the merge reached the replica");
    // The same install again (its answer was lost, or its frame arrived twice).
    let coordinator = replicas[0];
    let install = HydfsMsg::Install(InstallRequest {
        req: 900,
        name: f.clone(),
        base,
        appended,
        sources: vec![coordinator],
    });
    net.nodes[r].handle_message(net.now, MemberId::new(coordinator, 1), install);
    let mut out = Vec::new();
    while let Some(m) = net.nodes[r].poll_outgoing() {
        out.push(m);
    }
    assert_eq!(out, vec![(coordinator, HydfsMsg::InstallReply { req: 900, result: Ok(0) })]);
    assert_eq!(net.nodes[r].store().merged_hash(&f), merged, "applied once");
}

/// Bytes that say where they sit: write `w`'s byte `i`, so a misplaced or reordered byte shows.
fn patterned(w: u32, len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(31) ^ w.wrapping_mul(97)) as u8).collect()
}

/// A file of many writes from several clients: a create of several parts, then appends of odd
/// sizes (so parts and read chunks never line up), some merged, some still pending. Returns the
/// content a read must return: the create, the merged appends in stamp order, then the pending
/// ones in stamp order (every append here has a later stamp than the ones before it).
fn many_writes(net: &mut Net, f: &FileName) -> Vec<u8> {
    let mut expect = patterned(0, 5_300);
    assert!(net.run(0, ClientOp::Create { name: f.clone(), data: expect.clone() }).is_ok());
    for i in 1..=24u32 {
        net.now = Time(net.now.0 + 10);
        let data = patterned(i, 1 + (i as usize * 377) % 2_900);
        assert!(net.run(i as usize % 4, ClientOp::Append { name: f.clone(), data: data.clone() }).is_ok());
        expect.extend_from_slice(&data);
        if i == 10 || i == 17 {
            assert!(net.run(1, ClientOp::Merge { name: f.clone() }).is_ok());
        }
    }
    expect
}

/// What one replica's copy holds, part by part, in the order a read serves it.
fn copy_of(net: &mut Net, node: usize, f: &FileName) -> Vec<u8> {
    let store = &mut net.nodes[node].store;
    let meta = store.meta(f).expect("the replica holds the file");
    let mut bytes = Vec::new();
    for w in meta.all_writes() {
        for i in 0..w.parts.len() as u32 {
            bytes.extend_from_slice(&store.read_part(f, w.stamp, i).expect("part"));
        }
    }
    bytes
}

#[test]
fn a_streamed_read_of_many_writes_returns_the_bytes_of_the_replicas_copy_in_merged_order() {
    let mut net = Net::with_config(
        5,
        HydfsConfig { chunk_bytes: 1024, inline_bytes: 512, read_window: 3, ..HydfsConfig::default() },
    );
    let f = name("many");
    let expect = many_writes(&mut net, &f);
    let holders: Vec<usize> = (0..5).filter(|i| net.nodes[*i].store().file(&f).is_some()).collect();
    assert_eq!(holders.len(), 3);
    let reader = (0..5).find(|i| !holders.contains(i)).unwrap();
    for r in &holders {
        assert!(copy_of(&mut net, *r, &f) == expect, "replica {r} holds the writes in merged order");
    }
    // Every way of reading the file gives the same bytes: any replica, the latest copy, each
    // replica in turn, and then this node's cache (the file fits a quarter of it).
    let (bytes, out) = net.read(reader, f.clone(), ReadFrom::Latest).unwrap();
    assert!(bytes == expect, "latest: {} bytes, {} expected", bytes.len(), expect.len());
    let OpOutput::Downloaded { writes, from, .. } = out else { unreachable!() };
    assert_eq!(writes.len(), 25, "the create and 24 appends");
    assert!(from.is_some());
    for r in &holders {
        let (bytes, _) = net.read(reader, f.clone(), ReadFrom::Replica(addr(*r))).unwrap();
        assert!(bytes == expect, "from replica {r}");
    }
    let (bytes, out) = net.read(reader, f.clone(), ReadFrom::Any).unwrap();
    assert!(bytes == expect, "from the cache");
    assert!(matches!(out, OpOutput::Downloaded { from: None, .. }), "served by the cache: {out:?}");
    // Unreachable replicas are failed over, and the read still returns the same bytes.
    net.down.insert(holders[0]);
    net.down.insert(holders[1]);
    let (bytes, _) = net.read(reader, f.clone(), ReadFrom::Latest).unwrap();
    assert!(bytes == expect, "after fail-over");
    assert_eq!(net.nodes[reader].read_bytes_held(), 0, "a finished read holds nothing");
}

/// Reads `f` at `reader`, delivering messages one at a time in a scrambled order (so chunks
/// arrive out of order), and returns the bytes delivered and the most the reader held at once.
fn read_scrambled(net: &mut Net, reader: usize, f: &FileName) -> (Vec<u8>, u64) {
    let id = net.nodes[reader]
        .submit(net.now, ClientOp::Download { name: f.clone(), from: ReadFrom::Latest })
        .unwrap();
    let mut queue: Vec<(usize, usize, HydfsMsg)> = Vec::new();
    let (mut got, mut most, mut seed) = (Vec::new(), 0u64, 0x2545_f491_u64);
    for step in 0..1_000_000 {
        for i in 0..net.nodes.len() {
            while let Some((to, msg)) = net.nodes[i].poll_outgoing() {
                queue.push((i, (0..net.nodes.len()).find(|j| addr(*j) == to).unwrap(), msg));
            }
        }
        while let Some(e) = net.nodes[reader].poll_event() {
            match e {
                HydfsEvent::ReadData { op, offset, bytes, .. } if op == id => {
                    assert_eq!(offset, got.len() as u64, "in order");
                    got.extend_from_slice(&bytes);
                }
                HydfsEvent::OpDone { op, result } if op == id => {
                    let Ok(OpOutput::Downloaded { len, .. }) = result else { panic!("{result:?}") };
                    assert_eq!(len, got.len() as u64);
                    return (got, most);
                }
                _ => {}
            }
        }
        most = most.max(net.nodes[reader].read_bytes_held());
        assert!(!queue.is_empty(), "the read stalled at step {step}");
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let (from, to, msg) = queue.swap_remove((seed >> 33) as usize % queue.len());
        net.nodes[to].handle_message(net.now, MemberId::new(addr(from), 1), msg);
    }
    panic!("the read did not finish");
}

/// A replica's last chunk that runs past the length it gave for the file (a damaged or lying
/// replica) is refused, and the read asks again: no byte past the file's end is delivered (the
/// harness checks every chunk against the length its event carries).
#[test]
fn a_chunk_past_the_files_end_is_refused_and_the_read_asks_again() {
    let mut net = Net::new(5);
    let f = name("long");
    let data = patterned(7, 3000);
    assert!(net.run(0, ClientOp::Create { name: f.clone(), data: data.clone() }).is_ok());
    let reader = (0..5).find(|i| net.nodes[*i].store().file(&f).is_none()).unwrap();
    let id = net.nodes[reader]
        .submit(net.now, ClientOp::Download { name: f.clone(), from: ReadFrom::Any })
        .unwrap();
    let mut tampered = None;
    for _ in 0..1_000 {
        for i in 0..net.nodes.len() {
            while let Some((to, mut msg)) = net.nodes[i].poll_outgoing() {
                let j = net.index(to);
                if let HydfsMsg::ReadReply { result: Ok(chunk), .. } = &mut msg {
                    let last = chunk.offset + chunk.bytes.len() as u64 == chunk.total_len;
                    if tampered.is_none() && j == reader && last {
                        tampered = Some(i);
                        let mut longer = chunk.bytes.to_vec();
                        longer.extend_from_slice(&[0xEE; 100]);
                        chunk.bytes = Bulk::from(longer);
                    }
                }
                net.nodes[j].handle_message(net.now, MemberId::new(addr(i), 1), msg);
            }
            net.drain_events(i);
        }
        if net.done.iter().any(|(at, op, _)| (*at, *op) == (reader, id)) {
            break;
        }
    }
    assert!(tampered.is_some(), "a replica's chunk was lengthened");
    let (_, _, result) =
        net.done.iter().find(|(at, op, _)| (*at, *op) == (reader, id)).expect("the read ended");
    let Ok(OpOutput::Downloaded { len, .. }) = result else { panic!("{result:?}") };
    assert_eq!(*len, data.len() as u64);
    assert!(net.reads[&(reader, id)] == data, "exactly the file's bytes were delivered");
}

#[test]
fn a_read_of_a_file_many_times_its_window_holds_at_most_the_window() {
    let (chunk, window) = (1024usize, 4usize);
    let cfg = HydfsConfig {
        chunk_bytes: chunk,
        inline_bytes: 512,
        read_window: window,
        cache_bytes: 4 * 1024,
        max_write_bytes: 1 << 30,
        ..HydfsConfig::default()
    };
    let mut net = Net::with_config(5, cfg.clone());
    let f = name("big");
    // Over 200 chunks, 50 times the window, in writes whose parts never line up with the chunks.
    let mut expect = Vec::new();
    for i in 0..9u32 {
        net.now = Time(net.now.0 + 10);
        let data = patterned(i, 25_000 + i as usize * 77);
        let op = if i == 0 {
            ClientOp::Create { name: f.clone(), data: data.clone() }
        } else {
            ClientOp::Append { name: f.clone(), data: data.clone() }
        };
        assert!(net.run(0, op).is_ok());
        expect.extend_from_slice(&data);
    }
    assert!(expect.len() > 50 * window * chunk);
    let reader = (0..5).find(|i| net.nodes[*i].store().file(&f).is_none()).unwrap();
    let (got, most) = read_scrambled(&mut net, reader, &f);
    assert!(got == expect, "{} bytes read, {} expected", got.len(), expect.len());
    assert!(most > 0, "chunks did wait for their turn");
    assert!(
        most <= (window * chunk) as u64,
        "the reader held {most} bytes at once, over its window of {window} chunks of {chunk} bytes"
    );
    // The probe sees a buffered copy: with a cache large enough to keep this file, the reader
    // holds the whole file by the end (the copy it caches), which the bound above would refuse.
    let mut roomy = Net::with_config(5, HydfsConfig { cache_bytes: 8 * expect.len() as u64, ..cfg });
    assert!(roomy.run(0, ClientOp::Create { name: f.clone(), data: expect.clone() }).is_ok());
    let reader = (0..5).find(|i| roomy.nodes[*i].store().file(&f).is_none()).unwrap();
    let (got, most) = read_scrambled(&mut roomy, reader, &f);
    assert!(got == expect);
    assert!(most >= expect.len() as u64 - chunk as u64, "held {most} of {} bytes", expect.len());
}

/// Two coordinators merge one file at once, as when a client fails over from a coordinator
/// falsely declared failed while that one carries on: the second merge's install reaches the
/// first coordinator while it still fetches what it collected. What every replica then merged,
/// and what a read returns.
fn two_coordinators_merge_at_once(cfg: HydfsConfig) -> (Vec<Vec<Stamp>>, Vec<u8>) {
    let mut net = Net::with_config(5, cfg);
    let file = name("journal");
    assert!(net.run(0, ClientOp::Create { name: file.clone(), data: b"first\n".to_vec() }).is_ok());
    let replicas = net.nodes[0].ring().replicas(file.as_str(), 3);
    let (a, b) = (net.index(replicas[0]), net.index(replicas[1]));
    let client = (0..5).find(|i| !replicas.contains(&addr(*i))).expect("a node holding no copy");
    net.now = Time(100);
    assert!(net.run(client, ClientOp::Append { name: file.clone(), data: b"one\n".to_vec() }).is_ok());
    // A second append reaches every replica but `a` (unreachable meanwhile): `a` lacks its bytes.
    net.now = Time(200);
    net.down.insert(a);
    net.nodes[client]
        .submit(net.now, ClientOp::Append { name: file.clone(), data: b"two\n".to_vec() })
        .unwrap();
    net.settle();
    net.down.remove(&a);
    let merge = |req| HydfsMsg::Merge { req, name: file.clone() };
    let sender = MemberId::new(addr(client), 1);
    // `a` coordinates a merge: it collects both appends and fetches the second's bytes (held).
    net.nodes[a].handle_message(net.now, sender, merge(9_001));
    let fetch_from_a = |i: usize, m: &HydfsMsg| i == a && matches!(m, HydfsMsg::Fetch { .. });
    let mut held = net.settle_holding(fetch_from_a);
    assert!(!held.is_empty(), "the first coordinator fetches what it lacks");
    // Meanwhile `b` coordinates the same merge to its end on `b` and the third replica; its
    // install waits at `a` for the same bytes.
    net.nodes[b].handle_message(net.now, sender, merge(9_002));
    held.extend(net.settle_holding(fetch_from_a));
    for (to, msg) in held {
        let j = net.index(to);
        net.nodes[j].handle_message(net.now, MemberId::new(addr(a), 1), msg);
    }
    net.settle();
    for _ in 0..20 {
        net.tick(500);
    }
    let merged = replicas
        .iter()
        .map(|r| {
            let rec = net.nodes[net.index(*r)].store().file(&file).expect("a replica holds the file");
            rec.merged.iter().map(|w| w.stamp).collect()
        })
        .collect();
    (merged, net.get(client, file).unwrap())
}

/// The first coordinator must not install its collection on top of the second's merge (which
/// would append the same writes twice): its merge is fenced by the merged order it collected
/// against, so it collects again.
#[test]
fn a_merge_collected_before_another_merge_installed_is_not_appended_twice() {
    let (merged, read) = two_coordinators_merge_at_once(test_config(None));
    for stamps in &merged {
        let distinct: std::collections::BTreeSet<&Stamp> = stamps.iter().collect();
        assert_eq!(stamps.len(), distinct.len(), "a write merged twice: {stamps:?}");
    }
    assert_eq!(read, b"first\none\ntwo\n".to_vec(), "each write once, in order");
}

/// The same race without the fence appends the collected writes twice: the test above can fail.
#[cfg(feature = "planted-bugs")]
#[test]
fn a_merge_without_its_fence_appends_writes_twice() {
    let (merged, read) = two_coordinators_merge_at_once(test_config(Some(PlantedBug::MergeUnfenced)));
    let twice = merged.iter().any(|s| s.len() != s.iter().collect::<std::collections::BTreeSet<_>>().len());
    assert!(twice, "the unfenced merge was not caught: {merged:?}");
    assert_ne!(read, b"first\none\ntwo\n".to_vec());
}

#[test]
fn a_create_in_progress_stays_out_of_its_coordinators_anti_entropy() {
    let mut net = Net::new(5);
    let f = name("f");
    net.nodes[0].submit(net.now, ClientOp::Create { name: f.clone(), data: b"tentative".to_vec() }).unwrap();
    // The coordinator's existence checks and replications never arrive: the create stays open.
    let held = net.settle_holding(|_, m| matches!(m, HydfsMsg::Stat { .. } | HydfsMsg::Replicate { .. }));
    assert!(!held.is_empty());
    let holders: Vec<usize> = (0..5).filter(|i| net.nodes[*i].store().file(&f).is_some()).collect();
    let [coordinator] = holders[..] else { panic!("only the coordinator holds the file: {holders:?}") };
    let asker = (coordinator + 1) % 5;
    let from = MemberId::new(addr(asker), 1);
    net.nodes[coordinator].handle_message(net.now, from, HydfsMsg::Inventory { req: 1, known: None });
    net.nodes[coordinator].handle_message(
        net.now,
        from,
        HydfsMsg::Describe { req: 2, name: f.clone(), needs: vec![], client: false },
    );
    let mut answered = 0;
    while let Some((to, msg)) = net.nodes[coordinator].poll_outgoing() {
        match msg {
            HydfsMsg::InventoryReply { req: 1, files: InventoryList::Files(files) } => {
                assert_eq!(to, addr(asker));
                assert!(files.iter().all(|(n, _)| *n != f), "an uncommitted create was offered: {files:?}");
                answered += 1;
            }
            HydfsMsg::DescribeReply { req: 2, meta, .. } => {
                assert_eq!(meta.err(), Some(Refusal::NotFound), "an uncommitted create was described");
                answered += 1;
            }
            _ => {}
        }
    }
    assert_eq!(answered, 2);
}

#[test]
fn a_file_counts_as_under_replicated_until_every_replica_is_known_to_hold_it_complete() {
    let mut net = Net::with_config(4, slow_repairs());
    let data: Vec<u8> = (0..16 * 1024u32).map(|i| i as u8).collect();
    assert!(net.run(0, ClientOp::Create { name: name("u"), data }).is_ok());
    let holders: Vec<usize> = (0..4).filter(|i| net.nodes[*i].store().file(&name("u")).is_some()).collect();
    let counts = |net: &Net, who: &[usize]| -> Vec<(u64, u64)> {
        who.iter().map(|i| net.nodes[*i].under_replicated()).collect()
    };
    // Before any inventory exchange a holder knows of no other copy.
    assert_eq!(counts(&net, &holders), vec![(1, 16 * 1024); 3], "no replica heard from yet");
    net.tick(2_000);
    assert_eq!(counts(&net, &holders), vec![(0, 0); 3], "every replica's inventory lists it");
    // A holder leaves the ring: its replacement pulls 16 KiB at 2 KiB/s, and until the others
    // have its inventory listing the file complete, they count the file.
    let (gone, newcomer) = (holders[0], (0..4).find(|i| !holders.contains(i)).unwrap());
    net.lose_from_ring(gone);
    let stayed: Vec<usize> = holders.iter().copied().filter(|i| *i != gone).collect();
    net.tick(2_000);
    assert_eq!(counts(&net, &stayed), vec![(1, 16 * 1024); 2], "the newcomer is still pulling");
    assert_eq!(net.nodes[newcomer].stats().files_under_replicated, 1, "its copy is incomplete");
    for _ in 0..30 {
        net.tick(1_000);
    }
    let all: Vec<usize> = stayed.iter().copied().chain([newcomer]).collect();
    assert_eq!(counts(&net, &all), vec![(0, 0); 3], "three complete copies, and every holder knows");
}

/// Node 0 writes a file; node 1 seals it, keeping node 0's appends up to its first. Returns what
/// node 0's next append got, and every replica's copy after a merge. An append of node 0 past
/// the bound that one replica already held when the seal came (it was in flight) is placed there
/// by hand.
fn seal_cuts_off_the_previous_writer(cfg: HydfsConfig) -> (Result<OpOutput, HydfsError>, Vec<Vec<u8>>) {
    let mut net = Net::with_config(5, cfg);
    let f = name("job/dest");
    let persist = |kind, data: &[u8]| ClientOp::Persist { name: f.clone(), kind, data: data.to_vec() };
    written(net.run(0, persist(WriteKind::Create, b"base\n")));
    let kept = written(net.run(0, persist(WriteKind::Append, b"x1\n")));
    let replicas = net.nodes[0].replicas(&f);
    let holder = net.index(replicas[2]);
    let in_flight = WriteMeta::describe(
        Stamp { ts: kept.ts + 1000, client: kept.client, seq: kept.seq + 1000 },
        WriteKind::Append,
        b"x2\n",
        1024,
    );
    net.nodes[holder].store.file_mut(&f).pending.insert(in_flight.stamp, in_flight.clone());
    let part = in_flight.parts[0];
    assert!(net.nodes[holder].store.put_part(&f, in_flight.stamp, 0, part, b"x2\n").unwrap());
    let seal = Seal { term: 1, prev: kept.client, upto: kept.seq };
    written(net.run(1, persist(WriteKind::Seal(seal), b"")));
    let deposed = net.run(0, persist(WriteKind::Append, b"x3\n"));
    written(net.run(1, persist(WriteKind::Append, b"w1\n")));
    net.run(1, ClientOp::Merge { name: f.clone() }).expect("the merge");
    for _ in 0..5 {
        net.tick(net.nodes[0].config().anti_entropy_interval.0);
    }
    let copies = replicas
        .iter()
        .map(|r| net.read(1, f.clone(), ReadFrom::Replica(*r)).expect("a replica's copy").0)
        .collect();
    (deposed, copies)
}

#[test]
fn a_seal_cuts_off_the_previous_writer_on_every_copy() {
    let (deposed, copies) = seal_cuts_off_the_previous_writer(test_config(None));
    assert!(
        matches!(&deposed, Err(HydfsError::Sealed { owner, term: 1, .. }) if *owner == MemberId::new(addr(1), 1)),
        "the deposed writer's append is refused: {deposed:?}"
    );
    for copy in copies {
        assert_eq!(String::from_utf8_lossy(&copy), "base\nx1\nw1\n");
    }
}

/// Without the seal's meaning, the same run keeps the deposed writer's appends: the test above
/// can fail.
#[cfg(feature = "planted-bugs")]
#[test]
fn a_seal_that_means_nothing_is_caught() {
    let (deposed, copies) = seal_cuts_off_the_previous_writer(test_config(Some(PlantedBug::SealIgnored)));
    assert!(deposed.is_ok(), "{deposed:?}");
    let has = |c: &Vec<u8>, line: &[u8]| c.windows(line.len()).any(|w| w == line);
    assert!(copies.iter().all(|c| has(c, b"x3\n") && has(c, b"x2\n")), "{copies:?}");
}

#[test]
fn a_create_waits_until_its_coordinator_lists_every_member_the_others_list() {
    // After a whole-cluster restart a node may join knowing only some members: the rest joined
    // just after it, and it hears of them a moment later. A create it coordinates meanwhile must
    // not take a name that a member it does not list yet holds.
    let mut net = Net::new(6);
    let f = name("f");
    let first = written(net.run(0, ClientOp::Create { name: f.clone(), data: b"first\n".to_vec() }));
    let holders: Vec<usize> = (0..6).filter(|i| net.nodes[*i].store().file(&f).is_some()).collect();
    let others: Vec<usize> = (0..6).filter(|i| !holders.contains(i)).collect();
    assert_eq!(others.len(), 3, "three of six nodes hold the file: {holders:?}");
    // The late joiner lists only the three nodes that do not hold `f` (itself included), and is
    // the primary of `f` among them; the two others list everyone.
    let primary = Ring::new(others.iter().map(|i| addr(*i))).replicas(f.as_str(), 3)[0];
    let late = net.index(primary);
    // A fresh process: it never listed the holders (a member it knows has left is not waited for).
    let me = MemberId::new(addr(late), 1);
    net.nodes[late] = Hydfs::new(test_config(None), me, Box::new(FlakyStorage::default()), net.now).unwrap();
    let view: Vec<MemberId> =
        others.iter().filter(|j| **j != late).map(|j| MemberId::new(addr(*j), 1)).collect();
    net.nodes[late].set_members(net.now, Some(me), view);
    let id =
        net.nodes[late].submit(net.now, ClientOp::Create { name: f.clone(), data: b"second\n".to_vec() });
    let id = id.unwrap();
    for _ in 0..20 {
        net.tick(100);
    }
    assert!(
        !net.done.iter().any(|(n, o, _)| *n == late && *o == id),
        "the create finished while its coordinator did not list the members holding the name: {:?}",
        net.done
    );
    // It hears of the others: the create goes on, finds the name taken, and fails.
    let everyone: Vec<MemberId> = (0..6).filter(|j| *j != late).map(|j| MemberId::new(addr(j), 1)).collect();
    net.nodes[late].set_members(net.now, Some(MemberId::new(addr(late), 1)), everyone);
    let mut result = None;
    for _ in 0..100 {
        net.tick(100);
        if let Some(k) = net.done.iter().position(|(n, o, _)| *n == late && *o == id) {
            result = Some(net.done.remove(k).2);
            break;
        }
    }
    assert_eq!(result, Some(Err(HydfsError::AlreadyExists(f.clone()))));
    for h in holders {
        let create = net.nodes[h].store().file(&f).and_then(|r| r.create.as_ref()).map(|c| c.stamp);
        assert_eq!(create, Some(first), "node {h} still holds the first create");
    }
    assert_eq!(net.get(late, f).unwrap(), b"first\n".to_vec());
}

#[test]
fn a_restarted_node_does_not_serve_a_file_deleted_while_it_was_down() {
    let mut net = Net::new(5);
    let f = name("f");
    assert!(net.run(0, ClientOp::Create { name: f.clone(), data: b"old\n".to_vec() }).is_ok());
    // The file's primary crashes; the others drop it and delete the file.
    let down = net.index(Ring::new((0..5).map(addr)).replicas(f.as_str(), 3)[0]);
    let other = (0..5).find(|i| *i != down).unwrap();
    net.down.insert(down);
    net.view_without(&[down]);
    net.now = Time(1_000);
    assert!(net.run(other, ClientOp::Delete { name: f.clone() }).is_ok());
    // It restarts on its disk, still holding the file, and lists everyone (they have not heard
    // of it yet, so nobody has told it of the delete).
    let me = MemberId::new(addr(down), 1);
    let disk = Box::new(net.disks[down].clone());
    net.nodes[down] = Hydfs::new(test_config(None), me, disk, net.now).unwrap();
    assert!(net.nodes[down].store().file(&f).is_some(), "the copy survived the restart");
    net.down.remove(&down);
    let others: Vec<MemberId> = (0..5).filter(|j| *j != down).map(|j| MemberId::new(addr(j), 1)).collect();
    net.nodes[down].set_members(net.now, Some(me), others);
    // Its own copy is the first in ring order, but it must not serve it as current.
    let read = net.run_timed(down, ClientOp::Download { name: f.clone(), from: ReadFrom::Any });
    assert!(read.is_err(), "a deleted file was read from the copy a restarted node kept: {read:?}");
    // Nor describe it to a client (a RainStorm source measures a file so, then reads its parts).
    let described = net.run_timed(down, ClientOp::Meta { name: f.clone() });
    assert!(
        described.is_err(),
        "a deleted file was described from the copy a restarted node kept: {described:?}"
    );
    // Once the others list it, anti-entropy tells it of the delete: its copy goes.
    net.view_without(&[]);
    for _ in 0..100 {
        net.tick(100);
    }
    assert!(net.nodes[down].store().file(&f).is_none(), "the restarted node dropped the deleted file");
    let read = net.run_timed(down, ClientOp::Download { name: f.clone(), from: ReadFrom::Any });
    assert_eq!(read, Err(HydfsError::NotFound(f.clone())));
    let described = net.run_timed(down, ClientOp::Meta { name: f.clone() });
    assert_eq!(described.map(|_| ()), Err(HydfsError::NotFound(f)));
}

#[test]
fn a_late_describe_answer_about_another_file_does_not_end_the_hold_on_a_recovered_copy() {
    // A node restarts on its disk, holding `f` (not yet compared) and `g`.
    let mut net = Net::new(5);
    let (f, g) = (name("f"), name("g"));
    assert!(net.run(0, ClientOp::Create { name: f.clone(), data: b"f\n".to_vec() }).is_ok());
    assert!(net.run(0, ClientOp::Create { name: g.clone(), data: b"g\n".to_vec() }).is_ok());
    let holder = net.index(Ring::new((0..5).map(addr)).replicas(f.as_str(), 3)[0]);
    let peer = (0..5).find(|i| *i != holder).unwrap();
    let me = MemberId::new(addr(holder), 2);
    let disk = Box::new(net.disks[holder].clone());
    net.nodes[holder] = Hydfs::new(test_config(None), me, disk, net.now).unwrap();
    assert!(net.nodes[holder].unreconciled.contains_key(&f), "its copy of f is held back");
    // It asks a peer to describe `f`; an answer about `g` comes back under that request's
    // number (a late answer meant for the process before it at this address).
    let req =
        net.nodes[holder].ask(net.now, addr(peer), server::Pending::Describe { name: f.clone() }, |req| {
            HydfsMsg::Describe { req, name: f.clone(), needs: vec![], client: false }
        });
    let about_g = net.nodes[peer].store().meta(&g).expect("the peer holds g");
    let from = MemberId::new(addr(peer), 1);
    net.nodes[holder].handle_message(
        net.now,
        from,
        HydfsMsg::DescribeReply { req, meta: Ok(about_g), deleted: vec![] },
    );
    assert!(net.nodes[holder].unreconciled.contains_key(&f), "an answer about g compared nothing of f");
}

impl Net {
    /// Lets time pass `ms` at a time until node `at` has finished operation `id`, holding back
    /// the messages `hold(sender, message)` picks (returned with the result).
    fn wait_holding(
        &mut self,
        at: usize,
        id: OpId,
        ms: u64,
        hold: impl Fn(usize, &HydfsMsg) -> bool,
    ) -> (Result<OpOutput, HydfsError>, Vec<(NodeAddr, HydfsMsg)>) {
        let mut held = Vec::new();
        for _ in 0..10_000 {
            held.extend(self.settle_holding(&hold));
            if let Some(k) = self.done.iter().position(|(n, o, _)| *n == at && *o == id) {
                return (self.done.remove(k).2, held);
            }
            self.now = self.now + Millis(ms);
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if !self.down.contains(&i) {
                    n.handle_timeout(self.now);
                }
            }
        }
        panic!("operation did not finish");
    }
}

/// An append from `writer` (or a multiappend part run there for node 0, with `multi`) whose
/// write requests are all held back until it was reported failed; then the file is deleted and
/// created again, and the held requests arrive. Returns what the failure said and the new
/// file's content.
fn late_append_to_a_recreated_file(planted: Option<PlantedBug>, multi: bool) -> (HydfsError, Vec<u8>) {
    let mut net = Net::with_config(5, test_config(planted));
    let f = name("journal");
    net.run(0, ClientOp::Create { name: f.clone(), data: b"first file\n".to_vec() }).unwrap();
    let writer = outsider(&net, &f);
    let late = b"issued against the first file\n".to_vec();
    let (at, op) = if multi {
        (0, ClientOp::MultiAppend { name: f.clone(), appends: vec![(addr(writer), late.clone())] })
    } else {
        (writer, ClientOp::Append { name: f.clone(), data: late.clone() })
    };
    let id = net.nodes[at].submit(net.now, op).unwrap();
    let held_writes = |i: usize, m: &HydfsMsg| i == writer && matches!(m, HydfsMsg::Write(_));
    let (result, held) = net.wait_holding(at, id, 1_000, held_writes);
    let Err(failed) = result else { panic!("the append succeeded without a write request: {result:?}") };
    assert!(!held.is_empty(), "the writer sent write requests");
    assert!(
        held.iter().all(|(_, m)| matches!(m, HydfsMsg::Write(w) if w.of.is_some() || planted.is_some())),
        "every write request names the file it was issued against"
    );
    net.run(0, ClientOp::Delete { name: f.clone() }).unwrap();
    net.run(0, ClientOp::Create { name: f.clone(), data: b"second file\n".to_vec() }).unwrap();
    for (to, msg) in held {
        let j = net.index(to);
        net.nodes[j].handle_message(net.now, MemberId::new(addr(writer), 1), msg);
        net.settle();
    }
    net.tick(5_000);
    (failed, net.get(0, f).unwrap())
}

#[test]
fn an_append_reported_failed_never_lands_in_a_later_file_of_its_name() {
    for multi in [false, true] {
        let (failed, content) = late_append_to_a_recreated_file(None, multi);
        assert_eq!(content, b"second file\n", "multi {multi}: failed with {failed}");
    }
}

#[cfg(feature = "planted-bugs")]
#[test]
fn a_coordinator_that_ignores_what_an_append_was_issued_against_lets_it_land_in_a_later_file() {
    for multi in [false, true] {
        let (_, content) = late_append_to_a_recreated_file(Some(PlantedBug::AppendsUnbound), multi);
        assert_eq!(content, b"second file\nissued against the first file\n", "multi {multi}");
    }
}

#[test]
fn an_append_bound_to_a_deleted_file_is_bound_again_to_the_file_that_replaced_it() {
    // Node `w` appended to the first file, so it knows its create; the file is then deleted and
    // created again through node 0, which `w` does not hear of. Its next append, still in
    // progress, is refused as bound to the deleted file and bound again to the new one.
    let mut net = Net::new(5);
    let f = name("journal");
    net.run(0, ClientOp::Create { name: f.clone(), data: b"one\n".to_vec() }).unwrap();
    let w = outsider(&net, &f);
    net.run(w, ClientOp::Append { name: f.clone(), data: b"two\n".to_vec() }).unwrap();
    net.down.insert(w);
    net.run(0, ClientOp::Delete { name: f.clone() }).unwrap();
    net.run(0, ClientOp::Create { name: f.clone(), data: b"three\n".to_vec() }).unwrap();
    net.down.remove(&w);
    net.run(w, ClientOp::Append { name: f.clone(), data: b"four\n".to_vec() }).unwrap();
    assert_eq!(net.get(0, f.clone()).unwrap(), b"three\nfour\n");
    assert!(net.nodes.iter().map(|n| n.stats().stale_appends_refused).sum::<u64>() >= 1);
    // A multiappend looks the create up: its parts land in the current file.
    let parts = vec![(addr(w), b"five\n".to_vec()), (addr(0), b"six\n".to_vec())];
    net.run(1, ClientOp::MultiAppend { name: f.clone(), appends: parts }).unwrap();
    net.run(0, ClientOp::Merge { name: f.clone() }).unwrap();
    let content = net.get(0, f).unwrap();
    assert!(content.starts_with(b"three\nfour\n") && content.len() == b"three\nfour\nfive\nsix\n".len());
}

#[test]
fn a_replica_holding_a_deleted_file_stores_no_append_of_the_file_that_replaced_it() {
    // Replica `r` is out of every other node's view while the file is deleted and created
    // again, so it still holds the first file when it is back. An append to the second file
    // that reaches it before anti-entropy has told it of the delete must not be stored into
    // the first file (which it drops when it hears of the delete): it is refused for now.
    let mut net = Net::new(5);
    let f = name("journal");
    net.run(0, ClientOp::Create { name: f.clone(), data: b"first\n".to_vec() }).unwrap();
    let replicas = net.nodes[0].replicas(&f);
    let r = net.index(*replicas.iter().rev().find(|a| **a != addr(0)).expect("a replica other than node 0"));
    let create_at = |net: &Net, i: usize| net.nodes[i].store().file(&f).and_then(|rec| rec.create.clone());
    let first = create_at(&net, r).expect("r holds the first file").stamp;
    let views = |net: &mut Net, without: Option<usize>| {
        for i in (0..5).filter(|i| Some(*i) != without) {
            let others = (0..5).filter(|j| *j != i && Some(*j) != without).map(|j| MemberId::new(addr(j), 1));
            net.nodes[i].set_members(net.now, Some(MemberId::new(addr(i), 1)), others.collect::<Vec<_>>());
        }
    };
    views(&mut net, Some(r));
    net.run(0, ClientOp::Delete { name: f.clone() }).unwrap();
    net.run(0, ClientOp::Create { name: f.clone(), data: b"second\n".to_vec() }).unwrap();
    views(&mut net, None);
    let k = net.index(net.nodes[0].replicas(&f)[0]);
    let second = create_at(&net, k).expect("the coordinator holds the second file");
    assert_ne!(second.stamp, first);
    // A coordinator's `Replicate` of an append to the second file, before anything else.
    let stamp = Stamp { ts: 1_000_000, client: MemberId::new(addr(0), 1), seq: 99 };
    let data = b"+append\n".to_vec();
    let write = WriteMeta::describe(stamp, WriteKind::Append, &data, 1024);
    let replicate = ReplicateRequest {
        req: 77,
        name: f.clone(),
        write,
        inline: Some(data),
        sources: vec![addr(k)],
        create: Some(Box::new(second.clone())),
    };
    net.nodes[r].handle_message(net.now, MemberId::new(addr(k), 1), HydfsMsg::Replicate(replicate));
    net.nodes[r].flush(net.now);
    let mut answers = Vec::new();
    while let Some((_, m)) = net.nodes[r].poll_outgoing() {
        if let HydfsMsg::ReplicateReply { req: 77, result } = m {
            answers.push(result);
        }
    }
    assert!(matches!(answers.as_slice(), [Err(Refusal::Unavailable(_))]), "{answers:?}");
    assert!(
        !net.nodes[r].store().file(&f).is_some_and(|rec| rec.contains(&stamp)),
        "stored into the first file"
    );
    // Once anti-entropy has told it of the delete, the same append goes through everywhere.
    let Ok(OpOutput::Written { stamp: appended, replicas: acked, .. }) =
        net.run_timed(0, ClientOp::Append { name: f.clone(), data: b"+append\n".to_vec() })
    else {
        panic!("the append failed")
    };
    for a in acked {
        let rec = net.nodes[net.index(a)]
            .store()
            .file(&f)
            .cloned()
            .expect("an acknowledging replica holds the file");
        assert_eq!(
            rec.create.as_ref().map(|c| c.stamp),
            Some(second.stamp),
            "{a} stored it into another file"
        );
        assert!(rec.contains(&appended));
    }
    assert_eq!(net.get(0, f).unwrap(), b"second\n+append\n");
}
