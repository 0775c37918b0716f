//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) as regression tests, so that
//! every input a fuzzer ever kept is checked by plain `cargo test`, through the same checks as
//! the fuzz target (`rainstorm_fuzz_checks`).
//!
//! `cargo test -p rainstorm-tests --test fuzz_corpus -- --ignored` rewrites the seed inputs
//! (`seed-*`) from the encoders: valid frames of every message kind (plain and keyed), messages
//! and scripts recorded from a small simulated cluster running a job, configs, command lines,
//! operator specs and program output, and checkpoint logs; plus edge cases. Inputs the fuzzers found
//! (named by their hash) are kept.

use rainstorm_core::command::{Command, COMMAND_HELP};
use rainstorm_core::hydfs::{ClientOp, FileName};
use rainstorm_core::membership::{
    JoinAccept, JoinKind, JoinRefusal, MembershipConfig, MembershipMsg, ModeStamp, ProbeSeq, Role, Update,
};
use rainstorm_core::node::NodeConfig;
use rainstorm_core::rainstorm::checkpoint::{encode as encode_record, JobInfo, LogState, Record};
use rainstorm_core::rainstorm::input::SourcePos;
use rainstorm_core::rainstorm::message::SourceCheckpoint;
use rainstorm_core::rainstorm::{JobSpec, OperatorSpec, TaskId};
use rainstorm_core::replay::FrameSeq;
use rainstorm_core::wire::{
    canonical_bytes, Body, ClusterKey, Codec, Envelope, MAX_DATAGRAM_BYTES, MAX_STREAM_FRAME_BYTES,
};
use rainstorm_core::{Channel, Incarnation, Lane, MemberId, Millis, Node, NodeAddr, Time};
use rainstorm_fuzz_checks::decode::{layer_frame, message_bytes, sender, Layer};
use rainstorm_fuzz_checks::node::{
    peer_addr, reordered_and_stale_script, run_script, Script, SeqChoice, Step, MAX_STEPS, START,
};
use rainstorm_fuzz_checks::TARGETS;
use rainstorm_operator::frame::{decode_reply, encode_reply, FrameHeader, OutputRef, HEADER_BYTES};
use rainstorm_operator::{encode_line, BatchReply, Ready, WireTuple};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|path| !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .map(|path| (path.display().to_string(), std::fs::read(&path).expect("readable corpus file")))
        .collect();
    out.sort();
    out
}

/// Runs every input of `target`'s corpus through its check; a failure names the input.
fn replay(target: &str) -> Vec<(String, Vec<u8>)> {
    let check = TARGETS.iter().find(|(name, _)| *name == target).expect("a known target").1;
    let inputs = inputs(target);
    assert!(inputs.len() >= 8, "the corpus of {target} is missing ({} inputs)", inputs.len());
    for (name, data) in &inputs {
        if std::panic::catch_unwind(|| check(data)).is_err() {
            panic!("{name} fails the {target} check (see the panic above)");
        }
    }
    inputs
}

#[test]
fn every_target_has_a_corpus_and_a_replay() {
    let dirs: BTreeSet<String> = std::fs::read_dir(corpus(""))
        .expect("fuzz/corpus")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect();
    let targets: BTreeSet<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(dirs, targets, "every target has a corpus directory and no corpus lacks a target");
    let manifest = std::fs::read_to_string(corpus("").join("../Cargo.toml")).expect("fuzz/Cargo.toml");
    for target in &targets {
        assert!(manifest.contains(&format!("name = \"{target}\"")), "{target} is not a fuzz target");
    }
}

#[test]
fn envelope_decode_corpus() {
    let inputs = replay("envelope_decode");
    let decoded = inputs.iter().filter(|(_, data)| Codec::plain().decode(data, MAX_DATAGRAM_BYTES).is_ok());
    assert!(decoded.count() > 0, "no corpus input decodes: the corpus lost its valid frames");
}

fn layer_corpus(target: &str, layer: Layer) {
    let inputs = replay(target);
    let decoded = inputs.iter().filter(|(_, data)| {
        Codec::plain().decode(&layer_frame(layer, sender(), data), MAX_STREAM_FRAME_BYTES).is_ok()
    });
    assert!(decoded.count() > 0, "no {target} input decodes: the corpus lost its valid messages");
}

#[test]
fn membership_decode_corpus() {
    layer_corpus("membership_decode", Layer::Membership);
}

#[test]
fn hydfs_decode_corpus() {
    layer_corpus("hydfs_decode", Layer::Hydfs);
}

#[test]
fn rainstorm_decode_corpus() {
    layer_corpus("rainstorm_decode", Layer::Rainstorm);
}

#[test]
fn node_messages_corpus() {
    replay("node_messages");
}

#[test]
fn config_parse_corpus() {
    replay("config_parse");
}

#[test]
fn command_parse_corpus() {
    replay("command_parse");
}

#[test]
fn operator_output_corpus() {
    let inputs = replay("operator_output");
    // The second line is the program's answer to the hello; a version 2 answer is followed by
    // frames.
    let answers_v2_with_a_valid_frame = |data: &[u8]| {
        let mut lines = data.splitn(3, |b| *b == b'\n');
        let (_, ready, rest) = (lines.next(), lines.next(), lines.next());
        let hello = rainstorm_operator::Hello::new("s1-t0", None);
        let v2 = ready
            .and_then(|r| rainstorm_operator::decode_ready(r, &hello).ok())
            .is_some_and(|r| r.rainstorm == 2);
        let frame = rest.and_then(|rest| {
            let header = FrameHeader::parse(rest, 1 << 20).ok()?;
            let whole = rest.get(..header.frame_bytes())?;
            header.check(whole).ok()?;
            decode_reply(&whole[HEADER_BYTES..whole.len() - 4]).ok()
        });
        v2 && frame.is_some()
    };
    let v2 = inputs.iter().filter(|(_, data)| answers_v2_with_a_valid_frame(data)).count();
    assert!(v2 > 0, "no corpus input answers in version 2 with a valid frame: the corpus lost them");
}

#[test]
fn checkpoint_decode_corpus() {
    replay("checkpoint_decode");
}

// ----- seed corpora --------------------------------------------------------------------------

fn write_seeds(target: &str, seeds: &[(String, Vec<u8>)]) {
    let dir = corpus(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for entry in std::fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.expect("dir entry").path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-")) {
            std::fs::remove_file(&path).expect("remove an old seed");
        }
    }
    for (name, data) in seeds {
        std::fs::write(dir.join(format!("seed-{name}")), data).expect("write a seed");
    }
}

fn sample_messages() -> Vec<MembershipMsg> {
    let a = MemberId::new("10.0.0.1:7000".parse().expect("addr"), 1);
    let b = MemberId::new("[::1]:7001".parse().expect("addr"), 2);
    let updates = vec![
        Update::Alive { member: a, incarnation: Incarnation(3) },
        Update::Suspect { member: b, incarnation: Incarnation(1), accuser: a },
        Update::Failed { member: a },
        Update::Left { member: b },
        Update::Mode(ModeStamp { counter: 2, issuer: Some(a), suspicion: false }),
    ];
    vec![
        MembershipMsg::Ping { seq: ProbeSeq(1), target_join_time: b.join_time, updates: updates.clone() },
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
        MembershipMsg::JoinReply { nonce: 7, result: Err(JoinRefusal::Superseded { by: b }) },
    ]
}

#[test]
#[ignore = "rewrites fuzz/corpus/envelope_decode; run by hand"]
fn write_envelope_seed_corpus() {
    let from = MemberId::new("127.0.0.1:7000".parse().expect("addr"), 42);
    let keyed = Codec::keyed(ClusterKey::from_passphrase("fuzz"), vec![]);
    let mut seeds = Vec::new();
    for (i, msg) in sample_messages().into_iter().enumerate() {
        let lane = Lane::ALL[i % Lane::ALL.len()];
        let to = "127.0.0.1:7001".parse().expect("addr");
        let envelope = Envelope { from, to, lane, seq: FrameSeq(i as u64 + 1), body: Body::Membership(msg) };
        let frame = Codec::plain().encode(&envelope, MAX_STREAM_FRAME_BYTES).expect("encodes");
        seeds.push((format!("plain-{i:02}"), frame));
        let frame = keyed.encode(&envelope, MAX_STREAM_FRAME_BYTES).expect("encodes");
        seeds.push((format!("keyed-{i:02}"), frame));
    }
    write_seeds("envelope_decode", &seeds);
}

/// A frame one node of [`Cluster`] sent another, when.
struct Sent {
    at: Time,
    to: NodeAddr,
    channel: Channel,
    frame: Vec<u8>,
    envelope: Envelope,
}

/// A few nodes wired to each other without delay: an introducer at peer 0 and members, which
/// store a file and run a job, recording every frame.
struct Cluster {
    nodes: Vec<Node>,
    now: Time,
    sent: Vec<Sent>,
}

impl Cluster {
    fn new(n: u8) -> Cluster {
        let nodes = (0..n)
            .map(|i| {
                let cfg = NodeConfig {
                    role: if i == 0 { Role::Introducer } else { Role::Member },
                    addr: peer_addr(i),
                    introducer: peer_addr(0),
                    membership: MembershipConfig::lan(),
                    hydfs: Default::default(),
                    rainstorm: Default::default(),
                    limits: Default::default(),
                    codec: Codec::plain(),
                };
                let mut node = Node::new(cfg, START, u64::from(i) + 1);
                if i > 0 {
                    node.handle_command(START, Command::Join).expect("a member joins");
                }
                node
            })
            .collect();
        Cluster { nodes, now: START, sent: Vec::new() }
    }

    fn deliver(&mut self) {
        loop {
            let mut queue = Vec::new();
            for node in &mut self.nodes {
                while let Some(t) = node.poll_transmit() {
                    queue.push(t);
                }
                while node.poll_event().is_some() {}
            }
            if queue.is_empty() {
                return;
            }
            for t in queue {
                let limit =
                    if t.channel == Channel::Datagram { MAX_DATAGRAM_BYTES } else { MAX_STREAM_FRAME_BYTES };
                let envelope = Codec::plain().decode(&t.payload, limit).expect("a node's frame decodes");
                if let Some(node) = self.nodes.iter_mut().find(|n| n.id().addr == t.to) {
                    node.handle_frame(self.now, t.channel, &t.payload);
                }
                self.sent.push(Sent {
                    at: self.now,
                    to: t.to,
                    channel: t.channel,
                    frame: t.payload,
                    envelope,
                });
            }
        }
    }

    fn run_until(&mut self, end: Time) {
        loop {
            self.deliver();
            let Some(next) = self.nodes.iter().filter_map(|n| n.poll_timeout()).min() else { break };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            for node in &mut self.nodes {
                if node.poll_timeout().is_some_and(|t| t <= now) {
                    node.handle_timeout(now);
                }
            }
        }
        self.now = self.now.max(end);
    }

    /// Four nodes join, store an input file and run a two-stage job on it.
    fn with_a_job() -> Cluster {
        let mut c = Cluster::new(4);
        c.run_until(START + Millis(3_000));
        let input: String = (1..=40).map(|i| format!("{i},sign {i},Stop,{}\n", i % 3)).collect();
        let name = FileName::new("in.csv").expect("name");
        let now = c.now;
        c.nodes[1].submit(now, ClientOp::Create { name, data: input.into_bytes() }).expect("a create");
        c.run_until(START + Millis(5_000));
        let spec = JobSpec {
            op1: OperatorSpec::parse("grep:Stop").expect("spec"),
            op2: OperatorSpec::parse("count:3").expect("spec"),
            src: FileName::new("in.csv").expect("name"),
            dest: FileName::new("out").expect("name"),
            tasks: 2,
            rate: None,
        };
        let now = c.now;
        c.nodes[0].start_job(now, spec).expect("a job starts");
        c.run_until(START + Millis(20_000));
        c
    }
}

/// The variant name of a message (its `Debug` text up to the first space or bracket).
fn variant(body: &Body) -> String {
    let text = match body {
        Body::Membership(m) => format!("{m:?}"),
        Body::Hydfs(m) => format!("{m:?}"),
        Body::Rainstorm(m) => format!("{m:?}"),
    };
    text.split([' ', '{', '(']).next().unwrap_or_default().to_owned()
}

#[test]
#[ignore = "rewrites the seeds of fuzz/corpus/{membership,hydfs,rainstorm}_decode and node_messages; run by hand"]
fn write_message_and_node_seed_corpora() {
    let cluster = Cluster::with_a_job();
    // Layers: the first two messages of every variant the cluster sent, and edge cases.
    for layer in Layer::ALL {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut seeds = vec![("empty".to_owned(), Vec::new()), ("one-byte".to_owned(), vec![0])];
        for s in cluster.sent.iter().filter(|s| Layer::of(&s.envelope.body) == layer) {
            let name = variant(&s.envelope.body);
            let count = seen.entry(name.clone()).or_default();
            *count += 1;
            let bytes = message_bytes(&s.envelope.body);
            if *count <= 2 && bytes.len() <= 4096 {
                seeds.push((format!("{name}-{count}"), bytes));
            }
        }
        if layer == Layer::Membership {
            for (i, msg) in sample_messages().into_iter().enumerate() {
                seeds.push((format!("sample-{i:02}"), canonical_bytes(&msg)));
            }
        }
        assert!(seeds.len() >= 8, "{layer:?}: only {} seeds", seeds.len());
        let target = match layer {
            Layer::Membership => "membership_decode",
            Layer::Hydfs => "hydfs_decode",
            Layer::Rainstorm => "rainstorm_decode",
        };
        write_seeds(target, &seeds);
    }

    // Scripts: what the introducer (peer 0) received, as raw frames and as framed messages, in
    // windows of the run, with time passing as it did.
    let to_introducer: Vec<&Sent> = cluster.sent.iter().filter(|s| s.to == peer_addr(0)).collect();
    let mut seeds = Vec::new();
    let windows = [(0, "joins"), (to_introducer.len() / 3, "files"), (to_introducer.len() * 2 / 3, "job")];
    for (start, what) in windows {
        for messages in [false, true] {
            let mut steps = Vec::new();
            let (mut at, mut bytes) = (START, 0);
            for s in &to_introducer[start..] {
                if steps.len() >= MAX_STEPS - 2 || bytes > 2_000 {
                    break;
                }
                if s.at > at {
                    steps.push(Step::Advance { ms: (s.at.0 - at.0).min(u64::from(u16::MAX)) as u16 });
                    at = s.at;
                }
                let from = (0..=u8::MAX)
                    .find(|p| rainstorm_fuzz_checks::node::peer_id(*p).addr == s.envelope.from.addr);
                let step = match (messages, from) {
                    (true, Some(peer)) => Step::Message {
                        layer: Layer::of(&s.envelope.body),
                        channel: s.channel,
                        peer,
                        lane: s.envelope.lane,
                        seq: SeqChoice::Next,
                        bytes: message_bytes(&s.envelope.body),
                    },
                    _ => Step::Raw { channel: s.channel, frame: s.frame.clone() },
                };
                bytes += s.frame.len();
                steps.push(step);
            }
            let mut script = Script { member: false, suspicion: true, keyed: false, steps };
            let kind = if messages { "messages" } else { "frames" };
            seeds.push((format!("introducer-{what}-{kind}"), script.encode()));
            if messages {
                // The same messages signed under a key, each sent twice: the second is a replay.
                script.keyed = true;
                script.steps = script.steps.into_iter().flat_map(replayed).take(MAX_STEPS).collect();
                seeds.push((format!("introducer-{what}-keyed-replays"), script.encode()));
            }
        }
    }
    let commands = [
        "list_mem",
        "list_self",
        "stats",
        "disable_sus",
        "enable_sus",
        "status_sus",
        "list_suspected",
        "help",
        "create a.txt f",
        "jobs",
        "leave",
        "join",
    ];
    let mut steps: Vec<Step> = commands.iter().map(|c| Step::Command(c.to_string())).collect();
    steps.push(Step::Advance { ms: 5_000 });
    seeds.push((
        "introducer-commands".into(),
        Script { member: false, suspicion: true, keyed: false, steps }.encode(),
    ));
    let steps = vec![
        Step::Advance { ms: 1_000 },
        Step::SendFailed { peer: 0 },
        Step::Advance { ms: 3_000 },
        Step::Command("leave".into()),
        Step::Advance { ms: 3_000 },
        Step::Command("join".into()),
        Step::Advance { ms: 20_000 },
    ];
    seeds.push((
        "member-alone".into(),
        Script { member: true, suspicion: false, keyed: false, steps }.encode(),
    ));
    let steps = vec![
        Step::Submit { op: 0 },
        Step::Advance { ms: 500 },
        Step::Submit { op: 1 },
        Step::Submit { op: 2 },
        Step::Submit { op: 3 },
        Step::StartJob { spec: 2 },
        Step::StartJob { spec: 0b101 },
        Step::Advance { ms: 2_000 },
        Step::ProgramAnswer { ok: true },
        Step::ProgramAnswer { ok: false },
        Step::Advance { ms: 30_000 },
    ];
    seeds.push((
        "introducer-files-and-jobs".into(),
        Script { member: false, suspicion: true, keyed: false, steps }.encode(),
    ));
    seeds.push(("keyed-reordered-stale".into(), reordered_and_stale_script().encode()));
    write_seeds("node_messages", &seeds);
}

/// `step`, and after a message the same message again (a replay).
fn replayed(step: Step) -> Vec<Step> {
    match step {
        Step::Message { layer, channel, peer, lane, bytes, .. } => vec![
            Step::Message { layer, channel, peer, lane, seq: SeqChoice::Next, bytes: bytes.clone() },
            Step::Message { layer, channel, peer, lane, seq: SeqChoice::Repeat, bytes },
        ],
        other => vec![other],
    }
}

/// The node's replay guard agrees with the check's model on reordered, replayed and stale frames
/// (and, with a guard that refuses reordered frames, the check fails: see `tests/planted.rs`).
#[test]
fn node_messages_judges_replays_like_its_model() {
    let script = reordered_and_stale_script();
    assert_eq!(Script::decode(&script.encode()), script);
    let stats = run_script(&script, MembershipConfig::lan());
    let count = |cause| stats.frames_rejected.get(cause).copied().unwrap_or(0);
    assert_eq!((count("replayed"), count("stale"), stats.rejected_total()), (2, 1, 3), "{stats:?}");
    // The script's 7 fresh frames, after the 4 other peers' join requests.
    assert_eq!(stats.frames_received, 4 + 7);
    // Without a key there is no guard: the same frames are all delivered.
    let stats = run_script(&Script { keyed: false, ..script }, MembershipConfig::lan());
    assert_eq!((stats.frames_received, stats.rejected_total()), (4 + 10, 0), "{stats:?}");
}

#[test]
#[ignore = "rewrites the seeds of fuzz/corpus/config_parse; run by hand"]
fn write_config_seed_corpus() {
    let example = include_str!("../../config/member.example.toml");
    let full = "bind = \"0.0.0.0:7001\"\nadvertise = \"10.0.0.5:7001\"\nintroducer = \"10.0.0.1:7000\"\n\
                data_dir = \"/var/lib/rainstorm\"\nsuspicion = true\ncluster_key = \"a long secret\"\n\
                drop_rate = 0.0\n\n[timings]\nprotocol_period_ms = 1000\nping_timeout_ms = 300\n\
                indirect_probes = 3\nsuspicion_timeout_ms = 3000\nretransmit_mult = 3\n\
                sync_interval_ms = 10000\njoin_attempts = 3\njoin_retry_ms = 1000\n\n[hydfs]\n\
                cache_mb = 64\nrepair_mb_per_sec = 128\nmax_write_mb = 1024\n\n[rainstorm]\n\
                program_start_timeout_ms = 10000\nprogram_batch_timeout_ms = 30000\ncheckpoint_interval_ms = 25\n\
                batch_bytes = 65536\nbatch_tuples = 1024\n";
    let seeds: Vec<(&str, String)> = vec![
        ("member-example", example.to_owned()),
        ("every-field", full.to_owned()),
        ("empty", String::new()),
        ("introducer", "bind = \"127.0.0.1:7000\"\n".into()),
        ("ipv6", "bind = \"[::1]:7000\"\nintroducer = \"[::1]:7001\"\n".into()),
        ("unknown-field", "bind = \"127.0.0.1:1\"\nbogus = 3\n".into()),
        ("bad-address", "bind = \"not an address\"\n".into()),
        ("unspecified", "bind = \"0.0.0.0:7001\"\n".into()),
        ("other-port", "bind = \"127.0.0.1:7001\"\nadvertise = \"127.0.0.2:7002\"\n".into()),
        ("drop-rate", "bind = \"127.0.0.1:7001\"\ndrop_rate = 1.5\n".into()),
        ("nan", "bind = \"127.0.0.1:7001\"\ndrop_rate = nan\n".into()),
        ("short-key", "bind = \"127.0.0.1:7001\"\ncluster_key = \"short\"\n".into()),
        ("timings", "bind = \"127.0.0.1:7001\"\n[timings]\nping_timeout_ms = 5000\n".into()),
        ("zero-period", "bind = \"127.0.0.1:7001\"\n[timings]\nprotocol_period_ms = 0\n".into()),
        (
            "huge-timings",
            "bind = \"127.0.0.1:7001\"\n[timings]\nprotocol_period_ms = 18446744073709551615\n\
             sync_interval_ms = 18446744073709551615\nsuspicion_timeout_ms = 18446744073709551615\n\
             join_retry_ms = 18446744073709551615\nindirect_probes = 18446744073709551615\n"
                .into(),
        ),
        ("huge-hydfs", "bind = \"127.0.0.1:7001\"\n[hydfs]\ncache_mb = 18446744073709551615\n".into()),
        ("no-max-write", "bind = \"127.0.0.1:7001\"\n[hydfs]\nmax_write_mb = 0\n".into()),
        ("batch-tuples", "bind = \"127.0.0.1:7001\"\n[rainstorm]\nbatch_tuples = 65537\n".into()),
        ("zero-timeout", "bind = \"127.0.0.1:7001\"\n[rainstorm]\nprogram_start_timeout_ms = 0\n".into()),
        ("wrong-type", "bind = 7001\nsuspicion = \"yes\"\n".into()),
        ("syntax", "bind = \"127.0.0.1:7001\n[timings\n".into()),
    ];
    let seeds: Vec<(String, Vec<u8>)> =
        seeds.into_iter().map(|(name, text)| (format!("{name}.toml"), text.into_bytes())).collect();
    write_seeds("config_parse", &seeds);
}

#[test]
#[ignore = "rewrites the seeds of fuzz/corpus/command_parse; run by hand"]
fn write_command_seed_corpus() {
    let mut lines: Vec<String> =
        COMMAND_HELP.iter().filter(|(n, _)| !n.contains('<')).map(|(n, _)| n.to_string()).collect();
    lines.extend(
        [
            "create /tmp/a.txt logs/a",
            "get logs/a /tmp/b",
            "append ./x logs/a",
            "merge logs/a",
            "ls logs/a",
            "getfromreplica 127.0.0.1:7003#1234 logs/a out",
            "multiappend logs/a 127.0.0.1:7001 [::1]:7002 one two",
            r#"RainStorm "./app1-filter 'Stop, All Way'" grep:a in/signs.csv out/x 3"#,
            r#"RainStorm "hydfs:ops/app1 Stop" "count:Sign_Type" in.csv out 2"#,
            "RainStorm 'a b c d 1",
            "job 1-a1f09c",
            "join now",
            "get /abs local",
            "",
            "  list_mem  ",
            "lines=600/1000 s0=600/600 s1=600/50 s2=50/40",
            "s1=3/2 lines=4/9 eta=12s s0=4/4",
            "7 100",
            "lines=1/2 s0=1/1 s0=2/2",
            "lines=1/2 s0=1/99999999999999999999999",
        ]
        .map(String::from),
    );
    let seeds: Vec<(String, Vec<u8>)> =
        lines.into_iter().enumerate().map(|(i, l)| (format!("{i:02}"), l.into_bytes())).collect();
    write_seeds("command_parse", &seeds);
}

#[test]
#[ignore = "rewrites the seeds of fuzz/corpus/operator_output; run by hand"]
fn write_operator_seed_corpus() {
    let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let program = format!("program:ops/app1@{hash} \"Stop, All Way\" -x");
    let specs = [
        "grep:Stop",
        "regex:^[0-9]+,.*(Stop|Yield)$",
        "column:name=Streetlight",
        "column: 3 =x=y",
        "project:1,name,value",
        "split",
        "count:value",
        "count:name",
        program.as_str(),
        "column:0=x",
        "regex:(",
        "unknown:x",
    ];
    let ready = |r: Ready| encode_line(&r, usize::MAX).expect("encodes");
    let reply = |r: BatchReply| encode_line(&r, usize::MAX).expect("encodes");
    let tuples = |n: usize| vec![vec![WireTuple::new("a", "1")]; n];
    let stateless = [
        ready(Ready::new(false)),
        reply(BatchReply { batch: 1, outputs: tuples(3), state: Default::default() }),
        reply(BatchReply { batch: 2, outputs: vec![vec![], vec![], vec![]], state: Default::default() }),
        reply(BatchReply { batch: 4, outputs: tuples(2), state: Default::default() }),
    ]
    .concat();
    let state = [("a".to_owned(), "2".to_owned())].into();
    let stateful = [
        ready(Ready::new(true)),
        reply(BatchReply { batch: 1, outputs: tuples(3), state }),
        b"{\"batch\":2,\"outputs\":[[],[],[]],\"state\":{\"c\":\"1\"}}\r\n".to_vec(),
        b"{\"batch\":3,\"outputs\":[[],[],[]],\"note\":\"ignored\"}\n".to_vec(),
        b"not json\n".to_vec(),
    ]
    .concat();
    // Version 2: frames answering batches of the three tuples (a, b, a), numbered from 1.
    let frame = |batch: u64, lists: &[&[OutputRef]], state: &[(&str, &str)]| {
        let mut out = Vec::new();
        let lists = lists.iter().map(|l| l.iter().copied());
        encode_reply(&mut out, batch, lists, state.iter().copied(), usize::MAX).expect("encodes");
        out
    };
    let kept = OutputRef { key: None, value: None };
    let rekeyed = OutputRef { key: Some("Parking"), value: None };
    let built = OutputRef { key: None, value: Some("7,\"Stop, All Way\"") };
    let both = OutputRef { key: Some("k"), value: Some("v") };
    let lists: [&[OutputRef]; 3] = [&[kept], &[], &[rekeyed, built, both]];
    let v2_stateless = [
        ready(Ready::v2(false)),
        frame(1, &lists, &[]),
        frame(2, &[&[], &[], &[]], &[]),
        frame(3, &lists[..2], &[]),
    ]
    .concat();
    let v2_stateful = [
        ready(Ready::v2(true)),
        frame(1, &lists, &[("a", "2"), ("b", "1")]),
        frame(2, &[&[kept], &[kept], &[kept]], &[("a", "3")]),
        frame(3, &[&[], &[], &[]], &[("c", "1")]),
        frame(4, &[&[], &[], &[]], &[("a", "1"), ("a", "2")]),
    ]
    .concat();
    let mut corrupt = frame(1, &lists, &[]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let mut flagged = frame(1, &lists, &[]);
    flagged[HEADER_BYTES + 16] = 0x84;
    let crc_at = flagged.len() - 4;
    let crc = crc32c::crc32c(&flagged[..crc_at]).to_le_bytes();
    flagged[crc_at..].copy_from_slice(&crc);
    let v2_broken = [
        [ready(Ready::v2(false)), frame(1, &lists, &[]), corrupt].concat(),
        [ready(Ready::v2(true)), flagged].concat(),
        [ready(Ready::v2(false)), frame(1, &lists, &[])[..20].to_vec()].concat(),
        [ready(Ready::v2(false)), b"{\"batch\":1,\"outputs\":[[],[],[]]}\n".to_vec()].concat(),
    ];
    let mut seeds = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let stdout: &[u8] = match i % 6 {
            0 => &stateless,
            1 => &stateful,
            2 => b"{\"rainstorm\":3}\n",
            3 => b"{\"rainstorm\":1,\"stateful\":false}\n{\"batch\":1,\"outputs\":[[],[],[]]}",
            4 => &v2_stateless,
            _ => &v2_stateful,
        };
        seeds.push((format!("{i:02}"), [spec.as_bytes(), b"\n", stdout].concat()));
    }
    for (i, stdout) in v2_broken.iter().enumerate() {
        seeds.push((format!("{:02}", specs.len() + i), [b"split\n", &stdout[..]].concat()));
    }
    write_seeds("operator_output", &seeds);
}

#[test]
#[ignore = "rewrites the seeds of fuzz/corpus/checkpoint_decode; run by hand"]
fn write_checkpoint_seed_corpus() {
    let src = TaskId { stage: 0, index: 0 };
    let count = TaskId { stage: 2, index: 1 };
    let leader = MemberId::new("127.0.0.1:7001".parse().expect("address"), 3);
    let job_id = rainstorm_core::rainstorm::JobId { n: 1, tag: 0xabc };
    let plan = rainstorm_core::rainstorm::JobPlan {
        job: job_id,
        leader,
        origin: leader,
        ops: ["column:Sign_Post=x".into(), "count:Category".into()],
        src: FileName::new("in.csv").expect("a name"),
        dest: FileName::new("out").expect("a name"),
        tasks: 2,
        header: Some(vec!["Sign_Post".into(), "Category".into()]),
        routes: [
            rainstorm_core::rainstorm::job::Route::Forward,
            rainstorm_core::rainstorm::job::Route::Shuffle,
        ],
        rate_per_source: None,
    };
    let job = Record::Job(Box::new(JobInfo {
        job: job_id,
        leader,
        spec: "RainStorm column:Sign_Post=x count:Category in.csv out 2".into(),
        plan,
        rate: None,
    }));
    let commit =
        |c: u64, line: u64, changes: Vec<(&str, Option<&str>)>, outputs: u64, last: bool| Record::Commit {
            checkpoint: Some(c),
            attempt: 1,
            sources: vec![(src, SourceCheckpoint::At(SourcePos { offset: line * 40, line }))],
            changes: vec![(
                count,
                changes.into_iter().map(|(k, v)| (k.to_owned(), v.map(str::to_owned))).collect(),
            )],
            counts: vec![(src, rainstorm_core::rainstorm::TupleCounts { consumed: line, emitted: line })],
            outputs,
            dest_bytes: outputs * 9,
            last,
        };
    let history = vec![
        job.clone(),
        commit(1, 10, vec![("Stop", Some("3"))], 3, false),
        commit(4, 30, vec![("Stop", Some("5")), ("Yield", Some("1"))], 6, false),
        commit(5, 41, vec![("Yield", None)], 7, true),
    ];
    let full = LogState::fold(&history[..3]).expect("a valid log").full().expect("a job");
    let file = |records: &[Record]| -> Vec<u8> {
        records.iter().flat_map(|r| encode_record(r).expect("encodes")).collect()
    };
    let mut seeds = vec![
        ("empty".to_owned(), Vec::new()),
        ("history".to_owned(), file(&history)),
        ("full".to_owned(), file(std::slice::from_ref(&full))),
        ("full-then-more".to_owned(), file(&[full.clone(), history[3].clone()])),
        ("no-job".to_owned(), file(&history[1..])),
        ("backwards".to_owned(), file(&[job.clone(), history[2].clone(), history[1].clone()])),
        ("after-last".to_owned(), file(&[job, history[3].clone(), history[1].clone()])),
    ];
    for (i, record) in history.iter().enumerate() {
        seeds.push((format!("record-{i}"), file(std::slice::from_ref(record))));
    }
    let whole = file(&history);
    seeds.push(("truncated".to_owned(), whole[..whole.len() - 3].to_vec()));
    let mut bad = whole.clone();
    bad[10] ^= 1;
    seeds.push(("bad-checksum".to_owned(), bad));
    let mut other = file(&history[..1]);
    other[2] = 9;
    seeds.push(("version-9".to_owned(), other));
    write_seeds("checkpoint_decode", &seeds);
}
