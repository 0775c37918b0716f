//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) as regression tests, so that
//! every input a fuzzer ever kept is checked by plain `cargo test`.
//!
//! `cargo test -p rainstorm-tests --test fuzz_corpus -- --ignored` rewrites the seed corpus from
//! the encoders (valid frames of every message kind, plain and keyed).

use rainstorm_core::membership::{
    JoinAccept, JoinKind, JoinRefusal, MembershipMsg, ModeStamp, ProbeSeq, Update,
};
use rainstorm_core::replay::FrameSeq;
use rainstorm_core::wire::{Body, ClusterKey, Codec, Envelope, MAX_DATAGRAM_BYTES, MAX_STREAM_FRAME_BYTES};
use rainstorm_core::{Incarnation, MemberId};
use std::path::PathBuf;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("dir entry").path();
            (path.display().to_string(), std::fs::read(&path).expect("readable corpus file"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn envelope_decode_corpus_never_panics_and_round_trips() {
    let inputs = inputs("envelope_decode");
    assert!(inputs.len() >= 8, "the seed corpus is missing");
    let plain = Codec::plain();
    let mut decoded = 0;
    for (name, data) in inputs {
        for limit in [MAX_DATAGRAM_BYTES, MAX_STREAM_FRAME_BYTES] {
            if let Ok(envelope) = plain.decode(&data, limit) {
                let again = plain.encode(&envelope, limit).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(plain.decode(&again, limit).as_ref(), Ok(&envelope), "{name}");
                decoded += 1;
            }
        }
        let _ = Codec::keyed(ClusterKey::from_passphrase("fuzz"), vec![]).decode(&data, MAX_DATAGRAM_BYTES);
    }
    assert!(decoded > 0, "no corpus input decodes: the corpus lost its valid frames");
}

fn sample_messages() -> Vec<MembershipMsg> {
    let a = MemberId::new("10.0.0.1:7000".parse().expect("addr"), 1);
    let b = MemberId::new("[::1]:7001".parse().expect("addr"), 2);
    let updates = vec![
        Update::Alive { member: a, incarnation: Incarnation(3) },
        Update::Suspect { member: b, incarnation: Incarnation(1) },
        Update::Failed { member: a },
        Update::Left { member: b },
        Update::Mode(ModeStamp { counter: 2, issuer: Some(a), suspicion: false }),
    ];
    vec![
        MembershipMsg::Ping { seq: ProbeSeq(1), target: b, updates: updates.clone() },
        MembershipMsg::Ack { seq: ProbeSeq(1), updates: vec![] },
        MembershipMsg::PingReq { seq: ProbeSeq(9), target: a, updates: updates.clone() },
        MembershipMsg::Gossip { updates },
        MembershipMsg::SyncDigest { digest: 0x0123_4567_89ab_cdef },
        MembershipMsg::Sync {
            members: vec![(a, Incarnation(0)), (b, Incarnation(4))],
            removed: vec![a],
            mode: ModeStamp::initial(true),
            reply: false,
        },
        MembershipMsg::JoinRequest { nonce: 5, kind: JoinKind::Fresh },
        MembershipMsg::JoinRequest { nonce: 6, kind: JoinKind::Announce },
        MembershipMsg::JoinReply {
            nonce: 5,
            result: Ok(JoinAccept { members: vec![(a, Incarnation(0))], mode: ModeStamp::initial(false) }),
        },
        MembershipMsg::JoinReply { nonce: 6, result: Err(JoinRefusal::DeclaredFailed) },
    ]
}

#[test]
#[ignore = "rewrites fuzz/corpus/envelope_decode; run by hand"]
fn write_envelope_seed_corpus() {
    let dir = corpus("envelope_decode");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let from = MemberId::new("127.0.0.1:7000".parse().expect("addr"), 42);
    let keyed = Codec::keyed(ClusterKey::from_passphrase("fuzz"), vec![]);
    for (i, msg) in sample_messages().into_iter().enumerate() {
        let envelope = Envelope { from, seq: FrameSeq(i as u64 + 1), body: Body::Membership(msg) };
        let frame = Codec::plain().encode(&envelope, MAX_STREAM_FRAME_BYTES).expect("encodes");
        std::fs::write(dir.join(format!("seed-plain-{i:02}")), &frame).expect("write");
        let frame = keyed.encode(&envelope, MAX_STREAM_FRAME_BYTES).expect("encodes");
        std::fs::write(dir.join(format!("seed-keyed-{i:02}")), &frame).expect("write");
    }
}
