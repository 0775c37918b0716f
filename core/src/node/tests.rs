//! Node-level tests of what every frame goes through before a layer sees it: authentication,
//! replay protection, size limits, and a key rollover across a running group.

use super::*;
use crate::membership::{MembershipMsg, ProbeSeq};
use crate::wire::{ClusterKey, MAX_DATAGRAM_BYTES};

const INTRODUCER: &str = "127.0.0.1:7000";

fn key(word: &str) -> ClusterKey {
    ClusterKey::from_passphrase(word)
}

fn node(port: u16, codec: Codec, now: Time) -> Node {
    let addr: NodeAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let role = if port == 7000 { Role::Introducer } else { Role::Member };
    let cfg = NodeConfig {
        role,
        addr,
        introducer: INTRODUCER.parse().unwrap(),
        membership: MembershipConfig::lan(),
        hydfs: HydfsConfig::default(),
        rainstorm: RainstormConfig::default(),
        limits: LimitsConfig::default(),
        codec,
    };
    let mut n = Node::new(cfg, now, port as u64);
    if role == Role::Member {
        n.handle_command(now, Command::Join).unwrap();
    }
    n
}

/// Delivers every frame the nodes send, in order, for `ms` milliseconds of virtual time;
/// returns the frames delivered (sender index, transmit).
fn run(nodes: &mut [Node], now: &mut Time, ms: u64) -> Vec<(usize, Transmit)> {
    let mut delivered = Vec::new();
    let end = *now + crate::time::Millis(ms);
    while *now < end {
        loop {
            let mut sent = Vec::new();
            for (i, n) in nodes.iter_mut().enumerate() {
                while let Some(t) = n.poll_transmit() {
                    sent.push((i, t));
                }
                while n.poll_event().is_some() {}
            }
            if sent.is_empty() {
                break;
            }
            for (i, t) in sent {
                if let Some(to) = nodes.iter_mut().find(|n| n.id().addr == t.to) {
                    to.handle_frame(*now, t.channel, &t.payload);
                }
                delivered.push((i, t));
            }
        }
        *now = *now + crate::time::Millis(10);
        for n in nodes.iter_mut() {
            if n.poll_timeout().is_some_and(|t| t <= *now) {
                n.handle_timeout(*now);
            }
        }
    }
    delivered
}

fn members(n: &Node) -> usize {
    n.membership().members().count() + 1
}

fn rejected(n: &Node, cause: &str) -> u64 {
    n.stats().frames_rejected.get(cause).copied().unwrap_or(0)
}

#[test]
fn replayed_and_stale_frames_are_dropped_and_counted_under_a_key() {
    let mut now = Time(1_000);
    let codec = Codec::keyed(key("k1"), vec![]);
    let mut nodes = vec![node(7000, codec.clone(), now), node(7001, codec.clone(), now)];
    let log = run(&mut nodes, &mut now, 3_000);
    assert_eq!(members(&nodes[0]), 2, "the member joined");
    let (_, ping) = log
        .iter()
        .find(|(from, t)| *from == 1 && t.channel == Channel::Datagram)
        .expect("the member sent a datagram")
        .clone();
    let received = nodes[0].stats().frames_received;
    nodes[0].handle_frame(now, Channel::Datagram, &ping.payload);
    assert_eq!(rejected(&nodes[0], "replayed"), 1);
    assert_eq!(nodes[0].stats().frames_received, received, "a replay reaches no layer");

    // A frame the sender numbered far behind what it has sent since is stale.
    let from = nodes[1].id();
    let body = Body::Membership(MembershipMsg::Ack { seq: ProbeSeq(1), updates: vec![] });
    for (seq, cause) in [(1_000_000, None), (1, Some("stale"))] {
        let env = Envelope {
            from,
            to: nodes[0].id().addr,
            lane: Lane::Control,
            seq: FrameSeq(seq),
            body: body.clone(),
        };
        let frame = codec.encode(&env, MAX_DATAGRAM_BYTES).unwrap();
        let before = rejected(&nodes[0], "stale");
        nodes[0].handle_frame(now, Channel::Datagram, &frame);
        assert_eq!(rejected(&nodes[0], "stale") - before, u64::from(cause.is_some()), "seq {seq}");
    }
}

#[test]
fn a_frame_replayed_to_another_node_is_refused_there_under_a_key() {
    let mut now = Time(1_000);
    let codec = Codec::keyed(key("k1"), vec![]);
    let mut nodes: Vec<Node> = (7000..7003).map(|port| node(port, codec.clone(), now)).collect();
    let log = run(&mut nodes, &mut now, 3_000);
    assert_eq!(members(&nodes[2]), 3, "the group formed");
    let to_introducer = nodes[0].id().addr;
    // Frames node 1 sent to node 0, of every channel: each is refused by node 2.
    let captured: Vec<Transmit> = log
        .iter()
        .filter(|(from, t)| *from == 1 && t.to == to_introducer)
        .map(|(_, t)| t.clone())
        .rev()
        .take(20)
        .collect();
    assert!(captured.iter().any(|t| t.channel == Channel::Stream), "a stream frame was captured");
    let received = nodes[2].stats().frames_received;
    for t in &captured {
        nodes[2].handle_frame(now, t.channel, &t.payload);
    }
    assert_eq!(rejected(&nodes[2], "misaddressed"), captured.len() as u64);
    assert_eq!(nodes[2].stats().frames_received, received, "none reached a layer");
}

#[test]
fn duplicates_are_delivered_without_a_key() {
    // Without a key the numbers could be forged, so they are not checked: the layers' own
    // de-duplication handles duplicates.
    let mut now = Time(1_000);
    let mut nodes = vec![node(7000, Codec::plain(), now), node(7001, Codec::plain(), now)];
    let log = run(&mut nodes, &mut now, 3_000);
    let (_, ping) =
        log.iter().find(|(from, t)| *from == 1 && t.channel == Channel::Datagram).unwrap().clone();
    let received = nodes[0].stats().frames_received;
    nodes[0].handle_frame(now, Channel::Datagram, &ping.payload);
    assert_eq!(nodes[0].stats().frames_received, received + 1);
    assert_eq!(nodes[0].stats().rejected_total(), 0);
}

#[test]
fn forged_unauthenticated_truncated_and_oversized_frames_are_dropped_by_cause() {
    let mut now = Time(1_000);
    let codec = Codec::keyed(key("k1"), vec![]);
    let mut nodes = vec![node(7000, codec.clone(), now), node(7001, codec, now)];
    let log = run(&mut nodes, &mut now, 3_000);
    let (_, t) =
        log.iter().rev().find(|(from, t)| *from == 1 && t.channel == Channel::Datagram).unwrap().clone();
    let from = nodes[1].id();
    let body = Body::Membership(MembershipMsg::Ack { seq: ProbeSeq(1), updates: vec![] });
    let env = Envelope { from, to: nodes[0].id().addr, lane: Lane::Control, seq: FrameSeq(1 << 40), body };
    let mut forged = t.payload.clone();
    let mid = forged.len() / 2;
    forged[mid] ^= 0x01;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad_tag", forged),
        ("bad_tag", Codec::keyed(key("intruder"), vec![]).encode(&env, MAX_DATAGRAM_BYTES).unwrap()),
        ("unauthenticated", Codec::plain().encode(&env, MAX_DATAGRAM_BYTES).unwrap()),
        ("truncated", t.payload[..6].to_vec()),
        ("bad_length", t.payload[..t.payload.len() - 1].to_vec()),
        ("oversized", vec![0u8; MAX_DATAGRAM_BYTES + 1]),
        ("bad_magic", vec![0u8; 64]),
    ];
    let received = nodes[0].stats().frames_received;
    for (cause, frame) in cases {
        let before = rejected(&nodes[0], cause);
        nodes[0].handle_frame(now, Channel::Datagram, &frame);
        assert_eq!(rejected(&nodes[0], cause), before + 1, "{cause}");
    }
    assert_eq!(nodes[0].stats().frames_received, received, "no bad frame reached a layer");
    assert!(rejected(&nodes[0], "replayed") == 0, "no honest frame was taken for a replay");
}

#[test]
fn a_key_rollover_keeps_the_group_together_at_every_step() {
    // Step 0: everyone signs with the old key. Step 1: each node in turn also accepts the new
    // key. Step 2: each in turn signs with the new key and still accepts the old. Step 3: each
    // in turn drops the old key. The group stays whole throughout; a node that skips step 1
    // is cut off at step 2.
    let (old, new) = (key("old key"), key("new key"));
    let steps: [Codec; 4] = [
        Codec::keyed(old.clone(), vec![]),
        Codec::keyed(old.clone(), vec![new.clone()]),
        Codec::keyed(new.clone(), vec![old.clone()]),
        Codec::keyed(new.clone(), vec![]),
    ];
    let mut now = Time(1_000);
    let mut nodes: Vec<Node> = (0..4).map(|i| node(7000 + i, steps[0].clone(), now)).collect();
    run(&mut nodes, &mut now, 5_000);
    assert!(nodes.iter().all(|n| members(n) == 4), "the group formed");
    for (s, step) in steps.iter().enumerate().skip(1) {
        for i in 0..nodes.len() {
            nodes[i].set_codec(step.clone()).unwrap();
            run(&mut nodes, &mut now, 2_000);
            for n in &nodes {
                assert_eq!(members(n), 4, "{} lost a member at step {s} of node {i}", n.id());
            }
        }
    }
    let plain = nodes[0].set_codec(Codec::plain()).unwrap_err();
    assert!(plain.to_string().contains("restart"), "{plain}");
    assert!(nodes.iter().all(|n| rejected(n, "bad_tag") == 0), "no frame was refused during the rollover");

    // A node still on the old key alone cannot talk to the rolled-over group.
    let mut late = vec![node(7000, steps[3].clone(), now), node(7001, steps[0].clone(), now)];
    run(&mut late, &mut now, 5_000);
    assert_eq!(members(&late[0]), 1);
    assert!(rejected(&late[0], "bad_tag") > 0);
}

#[test]
fn a_lane_held_back_behind_a_window_of_another_lane_is_still_accepted() {
    // The runtime serves control before bulk, so a bulk frame can arrive after thousands of
    // later control frames. Numbered per lane, it is fresh; a replay of it is still refused.
    let mut now = Time(1_000);
    let codec = Codec::keyed(key("k1"), vec![]);
    let mut nodes = vec![node(7000, codec.clone(), now), node(7001, codec.clone(), now)];
    run(&mut nodes, &mut now, 3_000);
    let from = nodes[1].id();
    let inventory = Body::Hydfs(crate::hydfs::HydfsMsg::InventoryReply {
        req: 1,
        files: crate::hydfs::InventoryList::Files(vec![]),
    });
    let chunk = Body::Hydfs(crate::hydfs::HydfsMsg::FetchReply {
        req: 2,
        result: Ok(crate::hydfs::PartBytes {
            meta: crate::hydfs::PartMeta::of(&[7u8; 16]),
            bytes: vec![7u8; 16].into(),
        }),
    });
    assert_eq!((inventory.lane(), chunk.lane()), (Lane::Control, Lane::Bulk));
    let to = nodes[0].id().addr;
    let frame = |lane, seq, body: &Body| {
        let env = Envelope { from, to, lane, seq: FrameSeq(seq), body: body.clone() };
        codec.encode(&env, crate::wire::MAX_STREAM_FRAME_BYTES).unwrap()
    };
    let control = frame(Lane::Control, 2 * crate::replay::REPLAY_WINDOW, &inventory);
    let bulk = frame(Lane::Bulk, 1, &chunk);
    let received = nodes[0].stats().frames_received;
    nodes[0].handle_frame(now, Channel::Stream, &control);
    nodes[0].handle_frame(now, Channel::Stream, &bulk);
    assert_eq!(nodes[0].stats().frames_received, received + 2, "{:?}", nodes[0].stats().frames_rejected);
    nodes[0].handle_frame(now, Channel::Stream, &bulk);
    assert_eq!(rejected(&nodes[0], "replayed"), 1, "a replayed bulk frame is refused");
    assert_eq!(rejected(&nodes[0], "stale"), 0);
}

#[test]
fn a_read_from_a_member_not_heard_of_yet_is_served_once_it_is_listed() {
    // Node 2 joins through the introducer; node 1 has not heard of it when its request comes.
    let mut now = Time(1_000);
    let mut nodes = vec![node(7000, Codec::plain(), now), node(7001, Codec::plain(), now)];
    run(&mut nodes, &mut now, 3_000);
    nodes.push(node(7002, Codec::plain(), now));
    let mut pair = vec![nodes.remove(0), nodes.remove(1)];
    let mut now_pair = now;
    // Only the introducer and the newcomer talk: node 1 hears nothing of the join.
    let mut steps = 0;
    while members(&pair[1]) < 3 {
        run(&mut pair, &mut now_pair, 10);
        steps += 1;
        assert!(steps < 100, "the newcomer joined");
    }
    let (introducer, newcomer) = (pair.remove(0), pair.remove(0));
    let mut nodes = vec![introducer, nodes.remove(0), newcomer];
    now = now_pair;
    assert!(!nodes[1].membership().contains(&nodes[2].id()), "node 1 has not heard of node 2 yet");
    use crate::hydfs::{FileName, HydfsMsg};
    let (from, to) = (nodes[2].id(), nodes[1].id().addr);
    let frame = |seq, msg: HydfsMsg| {
        let body = Body::Hydfs(msg);
        let env = Envelope { from, to, lane: body.lane(), seq: FrameSeq(seq), body };
        Codec::plain().encode(&env, crate::wire::MAX_STREAM_FRAME_BYTES).unwrap()
    };
    let received = nodes[1].stats().frames_received;
    nodes[1].handle_frame(
        now,
        Channel::Stream,
        &frame(1, HydfsMsg::Stat { req: 1, name: FileName::new("f").unwrap() }),
    );
    assert_eq!(nodes[1].stats().frames_received, received, "held: its sender is not listed");
    assert_eq!(rejected(&nodes[1], NOT_A_MEMBER), 0);
    // Anything but a read from it is refused at once, as from any process this node does not
    // list; a client's write is also answered, so that it tries again at once instead of
    // waiting out its timeout (40 s).
    use crate::hydfs::message::{Refusal, WriteRequest};
    use crate::hydfs::types::{PartMeta, Stamp, WriteKind, WriteMeta};
    nodes[1].handle_frame(
        now,
        Channel::Stream,
        &frame(2, HydfsMsg::Merge { req: 2, name: FileName::new("f").unwrap() }),
    );
    assert_eq!(rejected(&nodes[1], NOT_A_MEMBER), 1);
    let created = b"a create from the newcomer\n".to_vec();
    let create = WriteMeta {
        stamp: Stamp { ts: 4, client: from, seq: 9 },
        kind: WriteKind::Create,
        parts: vec![PartMeta::of(&created)],
    };
    let write = WriteRequest {
        req: 5,
        name: FileName::new("h").unwrap(),
        write: create,
        inline: Some(created),
        source: from.addr,
        of: None,
    };
    nodes[1].handle_frame(now, Channel::Stream, &frame(5, HydfsMsg::Write(write)));
    assert_eq!(rejected(&nodes[1], NOT_A_MEMBER), 2);
    let mut answers = Vec::new();
    while let Some(t) = nodes[1].poll_transmit() {
        if t.to == from.addr && t.channel == Channel::Stream {
            answers
                .push(Codec::plain().decode(&t.payload, crate::wire::MAX_STREAM_FRAME_BYTES).unwrap().body);
        }
    }
    assert!(
        matches!(
            answers.as_slice(),
            [Body::Hydfs(HydfsMsg::WriteReply { req: 5, result: Err(Refusal::Unavailable(_)), .. })]
        ),
        "the write, and only it, is answered: {answers:?}"
    );
    assert_eq!(nodes[1].hydfs().stats().strangers_refused, 1);
    assert!(nodes[1].hydfs().store().file(&FileName::new("h").unwrap()).is_none(), "nothing was written");
    // A coordinator node 1 lists (the introducer) has it pull a new file's part from the
    // newcomer, its client.
    use crate::hydfs::message::{FetchRequest, PartBytes, ReplicateRequest};
    let g = FileName::new("g").unwrap();
    let bytes = b"pulled from the newcomer\n".to_vec();
    let stamp = Stamp { ts: 5, client: from, seq: 1 };
    let write = WriteMeta { stamp, kind: WriteKind::Create, parts: vec![PartMeta::of(&bytes)] };
    let replicate = Body::Hydfs(HydfsMsg::Replicate(ReplicateRequest {
        req: 7,
        name: g.clone(),
        write: write.clone(),
        inline: None,
        sources: vec![from.addr],
        create: None,
    }));
    let env =
        Envelope { from: nodes[0].id(), to, lane: replicate.lane(), seq: FrameSeq(100), body: replicate };
    nodes[1].handle_frame(
        now,
        Channel::Stream,
        &Codec::plain().encode(&env, crate::wire::MAX_STREAM_FRAME_BYTES).unwrap(),
    );
    let mut fetch = None;
    while let Some(t) = nodes[1].poll_transmit() {
        if t.to == from.addr && t.channel == Channel::Stream {
            let env = Codec::plain().decode(&t.payload, crate::wire::MAX_STREAM_FRAME_BYTES).unwrap();
            if let Body::Hydfs(HydfsMsg::Fetch(FetchRequest { req, .. })) = env.body {
                fetch = Some(req);
            }
        }
    }
    let fetch = fetch.expect("node 1 asked the newcomer for the part");
    // An answer to a request node 1 did not send the newcomer is refused at once ...
    let stray = HydfsMsg::FetchReply { req: fetch + 1_000, result: Err(Refusal::NotFound) };
    nodes[1].handle_frame(now, Channel::Stream, &frame(3, stray));
    assert_eq!(rejected(&nodes[1], NOT_A_MEMBER), 3, "an answer nobody waits for is not held");
    // ... and the answer to the fetch it sent is held, not refused.
    let part = PartBytes { meta: write.parts[0], bytes: bytes.clone().into() };
    nodes[1].handle_frame(
        now,
        Channel::Stream,
        &frame(4, HydfsMsg::FetchReply { req: fetch, result: Ok(part) }),
    );
    assert_eq!(rejected(&nodes[1], NOT_A_MEMBER), 3, "the answer to its own fetch is held");
    assert!(!nodes[1].hydfs().store().has_part(&g, stamp, 0));
    // Once the news of the join reaches node 1, it serves the held request: it answers it.
    let mut log = Vec::new();
    let deadline = now + STRANGER_HOLD;
    while !nodes[1].membership().contains(&nodes[2].id()) {
        assert!(now < deadline, "node 1 heard of node 2 within the hold");
        log.extend(run(&mut nodes, &mut now, 10));
    }
    log.extend(run(&mut nodes, &mut now, 10));
    assert_eq!(nodes[1].stats().frames_held, 2, "the request and the answer were held");
    assert!(nodes[1].hydfs().store().has_part(&g, stamp, 0), "the held answer stored the part");
    let answered = log.iter().any(|(from, t)| {
        *from == 1 && t.to == nodes[2].id().addr && t.channel == Channel::Stream && {
            let env = Codec::plain().decode(&t.payload, crate::wire::MAX_STREAM_FRAME_BYTES).unwrap();
            matches!(env.body, Body::Hydfs(HydfsMsg::StatReply { req: 1, .. }))
        }
    });
    assert!(answered, "node 1 answered the held request");
    assert_eq!(rejected(&nodes[1], NOT_A_MEMBER), 3, "the held request and answer were not refused");
}

#[test]
fn the_hold_has_room_for_a_whole_fetch_window_of_parts_and_a_read_window() {
    // A replica told to pull a new file from a client it has not heard of yet keeps
    // `fetch_window` part fetches out; their answers must all fit in the hold, or the one that
    // makes room waits out its request timeout.
    let cfg = crate::hydfs::HydfsConfig::default();
    let answer = cfg.chunk_bytes + 64 * 1024; // a part and its frame
    assert!(HELD_BYTES >= (cfg.fetch_window + cfg.read_window) * answer, "{HELD_BYTES} bytes");
    assert!(HELD_FRAMES >= cfg.fetch_window + cfg.read_window);
}
