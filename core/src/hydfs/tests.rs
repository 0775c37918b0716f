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
    fn wipe(&mut self) -> Result<(), StorageError> {
        self.inner.lock().unwrap().0.wipe()
    }
}

struct Net {
    nodes: Vec<Hydfs>,
    disks: Vec<FlakyStorage>,
    now: Time,
    done: Vec<(usize, OpId, Result<OpOutput, HydfsError>)>,
}

fn addr(i: usize) -> NodeAddr {
    format!("10.1.0.{}:7000", i + 1).parse().unwrap()
}

impl Net {
    fn new(n: usize) -> Net {
        Net::with_config(n, HydfsConfig { chunk_bytes: 1024, inline_bytes: 512, ..HydfsConfig::default() })
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
        Net { nodes, disks, now: Time(0), done: Vec::new() }
    }

    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some((to, msg)) = self.nodes[i].poll_outgoing() {
                    moved = true;
                    let j = (0..self.nodes.len()).find(|j| addr(*j) == to).expect("known node");
                    self.nodes[j].handle_message(self.now, MemberId::new(addr(i), 1), msg);
                }
                while let Some(e) = self.nodes[i].poll_event() {
                    if let HydfsEvent::OpDone { op, result } = e {
                        self.done.push((i, op, result));
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs `op` to its end without letting time pass (timers already due still fire).
    fn run(&mut self, at: usize, op: ClientOp) -> Result<OpOutput, HydfsError> {
        let id = self.nodes[at].submit(self.now, op)?;
        for _ in 0..10_000 {
            self.settle();
            if let Some(k) = self.done.iter().position(|(n, o, _)| *n == at && *o == id) {
                return self.done.remove(k).2;
            }
            let now = self.now;
            for n in self.nodes.iter_mut().filter(|n| n.poll_timeout().is_some_and(|t| t <= now)) {
                n.handle_timeout(now);
            }
        }
        panic!("operation did not finish");
    }

    fn tick(&mut self, ms: u64) {
        self.now = self.now + Millis(ms);
        for n in &mut self.nodes {
            n.handle_timeout(self.now);
        }
        self.settle();
    }
}

fn name(s: &str) -> FileName {
    FileName::new(s).unwrap()
}

fn content(r: Result<OpOutput, HydfsError>) -> Vec<u8> {
    match r {
        Ok(OpOutput::Content { bytes, .. }) => bytes,
        other => panic!("expected content, got {other:?}"),
    }
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
    let got = content(net.run(3, ClientOp::Get { name: name("f") }));
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

#[test]
fn bad_requests_get_typed_errors() {
    let mut net = Net::new(3);
    assert_eq!(
        net.run(0, ClientOp::Append { name: name("missing"), data: b"x".to_vec() }),
        Err(HydfsError::NotFound(name("missing")))
    );
    assert_eq!(
        net.run(0, ClientOp::Get { name: name("missing") }),
        Err(HydfsError::NotFound(name("missing")))
    );
    let limit = net.nodes[0].config().max_write_bytes;
    let too_big = vec![0u8; (limit + 1) as usize];
    assert_eq!(
        net.nodes[0].submit(Time(0), ClientOp::Create { name: name("big"), data: too_big }),
        Err(HydfsError::TooLarge { len: limit + 1, limit })
    );
    let mut lonely = Net::new(1);
    lonely.nodes[0].set_members(Time(0), None, []);
    assert_eq!(lonely.run(0, ClientOp::Get { name: name("f") }), Err(HydfsError::NoLiveReplica(name("f"))));
}

#[test]
fn a_write_a_replica_cannot_sync_fails_at_once_with_the_cause() {
    let mut net = Net::new(3);
    net.disks[2].fail_syncs(true);
    let result = net.run(0, ClientOp::Create { name: name("f"), data: b"data".to_vec() });
    match result {
        Err(HydfsError::Storage(why)) => {
            assert!(why.contains("disk full") && why.contains(&addr(2).to_string()), "{why}")
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    // A failed write may still have landed on the other replicas (as after a timeout), but
    // nothing garbled is ever served, and once the disk recovers writes succeed again.
    net.disks[2].fail_syncs(false);
    match net.run(0, ClientOp::Get { name: name("f") }) {
        Ok(OpOutput::Content { bytes, .. }) => assert_eq!(bytes, b"data"),
        Err(HydfsError::NotFound(_)) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(net.run(0, ClientOp::Create { name: name("g"), data: b"data".to_vec() }).is_ok());
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

#[test]
fn repairs_are_paced_by_the_repair_rate() {
    let cfg = HydfsConfig {
        chunk_bytes: 1024,
        inline_bytes: 512,
        repair_bytes_per_sec: 2048,
        ..HydfsConfig::default()
    };
    let mut net = Net::with_config(4, cfg);
    let data: Vec<u8> = (0..16 * 1024u32).map(|i| i as u8).collect();
    assert!(net.run(0, ClientOp::Create { name: name("r"), data }).is_ok());
    let holders: Vec<usize> = (0..4).filter(|i| net.nodes[*i].store().file(&name("r")).is_some()).collect();
    let (gone, newcomer) = (holders[0], (0..4).find(|i| !holders.contains(i)).unwrap());
    // The ring loses one holder: the fourth node must pull 16 parts at 2 KiB/s.
    for i in 0..4 {
        let others: Vec<MemberId> =
            (0..4).filter(|j| *j != i && *j != gone).map(|j| MemberId::new(addr(j), 1)).collect();
        let me = (i != gone).then(|| MemberId::new(addr(i), 1));
        net.nodes[i].set_members(net.now, me, others);
    }
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
    assert_eq!(content(net.run(0, ClientOp::Get { name: name("c") })), b"base");
    assert!(net.run(0, ClientOp::Append { name: name("c"), data: b"+mine".to_vec() }).is_ok());
    assert_eq!(content(net.run(0, ClientOp::Get { name: name("c") })), b"base+mine");
    assert!(net.nodes[0].stats().cache_misses >= 2);
}

#[test]
fn oversized_parts_from_a_peer_are_refused() {
    let mut net = Net::new(3);
    let me = addr(0);
    let stamp = Stamp { ts: 1, client: MemberId::new(me, 1), seq: 1 };
    let write = WriteMeta { stamp, kind: WriteKind::Create, parts: vec![PartMeta { len: 4096, crc: 0 }] };
    let target = net.nodes[0].replicas(&name("x"))[0];
    let j = (0..3).find(|j| addr(*j) == target).unwrap();
    net.nodes[j].handle_message(
        Time(0),
        MemberId::new(me, 1),
        HydfsMsg::Write { req: 9, name: name("x"), write, inline: None, source: me },
    );
    let reply = std::iter::from_fn(|| net.nodes[j].poll_outgoing()).find(|(to, _)| *to == me);
    match reply {
        Some((_, HydfsMsg::WriteReply { req: 9, result: Err(Refusal::TooLarge { .. }) })) => {}
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
