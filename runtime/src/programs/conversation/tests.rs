//! The worker's side of a conversation against scripted programs over in-memory pipes: what it
//! sends in each version, the window, the session state it keeps for version 1 programs, and
//! every way a program's answer can be refused.

use super::*;
use rainstorm_core::rainstorm::TupleId;
use rainstorm_operator::frame::{decode_request, encode_reply, OutputRef, FRAME_VERSION, MAGIC};
use std::collections::BTreeMap;
use tokio::io::DuplexStream;

const LIMIT: usize = 1 << 16;

fn limits(window: usize) -> ConversationLimits {
    ConversationLimits { window, batch_timeout: Duration::from_secs(10), max_message_bytes: LIMIT }
}

fn tuple(line: u64, key: &str, value: &str) -> Tuple {
    Tuple { id: TupleId::source(line), key: key.to_owned(), value: value.to_owned() }
}

fn batch(keys: &[&str], state: &[(&str, &str)]) -> ProgramBatch {
    let tuples: Vec<Tuple> = (1..).zip(keys).map(|(n, k)| tuple(n, k, &format!("{k}-value"))).collect();
    let state = state.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    ProgramBatch { tuples: tuples.into(), state }
}

/// The program's end of the pipes: what the worker wrote, and where the program writes.
struct Program {
    stdin: BufReader<DuplexStream>,
    stdout: DuplexStream,
}

impl Program {
    /// The next request the worker sent, as (batch, tuple keys, state entries).
    async fn request(&mut self) -> (u64, Vec<String>, BTreeMap<String, String>) {
        let payload =
            read_frame(&mut self.stdin, LIMIT, MessageType::Request).await.expect("a request frame");
        let view = decode_request(&payload).expect("a request");
        let state = view.state.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        (view.batch, view.tuples.iter().map(|t| t.key.to_owned()).collect(), state)
    }

    /// The next version 1 request.
    async fn request_v1(&mut self) -> BatchRequest {
        decode_line(&read_line(&mut self.stdin, LIMIT).await.expect("a line")).expect("a request")
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.stdout.write_all(bytes).await.expect("the worker reads");
    }

    /// Replies to batch `batch` with `lists` and `state`.
    async fn reply(&mut self, batch: u64, lists: &[Vec<OutputRef<'_>>], state: &[(&str, &str)]) {
        let mut frame = Vec::new();
        let lists = lists.iter().map(|l| l.iter().copied());
        encode_reply(&mut frame, batch, lists, state.iter().copied(), LIMIT).expect("encodes");
        self.write(&frame).await;
    }
}

/// A conversation with a program that answers `ready` to the hello.
async fn talk(ready: &str, window: usize) -> (Conversation, Program) {
    let (program_stdin, worker_stdin) = tokio::io::duplex(1 << 20);
    let (worker_stdout, mut program_stdout) = tokio::io::duplex(1 << 20);
    program_stdout.write_all(format!("{ready}\n").as_bytes()).await.expect("written");
    let hello = Hello::new("s2-t0", None);
    let conversation =
        Conversation::start(worker_stdout, worker_stdin, &hello, limits(window)).await.expect("a handshake");
    let mut program = Program { stdin: BufReader::new(program_stdin), stdout: program_stdout };
    let hello_line = read_line(&mut program.stdin, LIMIT).await.expect("the hello");
    assert_eq!(decode_line::<Hello>(&hello_line), Ok(hello));
    (conversation, program)
}

const V2_STATEFUL: &str = r#"{"rainstorm":2,"stateful":true}"#;
const V2_STATELESS: &str = r#"{"rainstorm":2,"stateful":false}"#;

fn kept() -> Vec<OutputRef<'static>> {
    vec![OutputRef { key: None, value: None }]
}

#[tokio::test]
async fn read_line_splits_limits_and_reports_the_end() {
    let mut r = BufReader::new(&b"ab\ncd\nxyz"[..]);
    assert_eq!(read_line(&mut r, 10).await, Ok(b"ab".to_vec()));
    assert_eq!(read_line(&mut r, 10).await, Ok(b"cd".to_vec()));
    assert_eq!(read_line(&mut r, 10).await, Err(ProtocolError::Truncated { bytes: 3 }));
    let mut r = BufReader::new(&b""[..]);
    assert_eq!(read_line(&mut r, 10).await, Err(ProtocolError::Eof));
    let mut r = BufReader::new(&b"0123456789A\n"[..]);
    assert_eq!(read_line(&mut r, 10).await, Err(ProtocolError::TooLong { limit: 10 }));
}

#[tokio::test]
async fn version_2_sends_a_window_of_batches_and_resolves_echoed_outputs() {
    let (mut c, mut p) = talk(V2_STATELESS, 3).await;
    assert_eq!((c.version(), c.stateful()), (V2, false));
    for _ in 0..3 {
        assert!(c.has_room());
        c.send(batch(&["a", "b"], &[("a", "ignored: stateless")])).expect("sent");
    }
    assert!(!c.has_room(), "the window is full");
    assert_eq!(c.batches_in_flight().collect::<Vec<_>>(), [1, 2, 3]);
    for n in 1..=3 {
        let (number, keys, state) = p.request().await;
        assert_eq!((number, keys), (n, vec!["a".to_owned(), "b".to_owned()]));
        assert!(state.is_empty(), "a stateless program gets no state");
    }
    let renamed = vec![OutputRef { key: Some("k"), value: None }, OutputRef { key: None, value: Some("v") }];
    p.reply(1, &[kept(), renamed], &[]).await;
    p.reply(2, &[vec![], vec![]], &[]).await;
    let first = c.next_result().await.expect("a result");
    let pair = |o: &Output| (o.key.clone(), o.value.clone());
    let first: Vec<Vec<(String, String)>> =
        first.outputs.iter().map(|l| l.iter().map(pair).collect()).collect();
    assert_eq!(
        first,
        [
            vec![("a".to_owned(), "a-value".to_owned())],
            vec![("k".to_owned(), "b-value".to_owned()), ("b".to_owned(), "v".to_owned())]
        ]
    );
    assert!(c.has_room());
    assert_eq!(c.next_result().await.expect("a result").outputs, [vec![], vec![]]);
}

/// A reply to batch 9 of two tuples: the first kept whole, the second's key reused by two
/// outputs with new values.
fn kept_then_key_twice() -> Vec<u8> {
    let key_twice =
        vec![OutputRef { key: None, value: Some("1") }, OutputRef { key: None, value: Some("2") }];
    reply_frame(9, &[kept(), key_twice], &[])
}

/// A result's outputs as (key, value) pairs, per input tuple.
fn pairs(result: &ProgramResult) -> Vec<Vec<(&str, &str)>> {
    result.outputs.iter().map(|l| l.iter().map(|o| (o.key.as_str(), o.value.as_str())).collect()).collect()
}

#[test]
fn outputs_reusing_a_shared_input_copy_it_and_leave_it_whole() {
    let tuples = vec![tuple(1, "a", "row a"), tuple(2, "b", "row b")];
    let frame = kept_then_key_twice();
    let payload = &frame[HEADER_BYTES..frame.len() - TRAILER_BYTES];
    let result = parse_reply_v2(payload, 9, &tuples, false).expect("a valid reply");
    assert_eq!(pairs(&result), [vec![("a", "row a")], vec![("b", "1"), ("b", "2")]]);
    assert_eq!(tuples, [tuple(1, "a", "row a"), tuple(2, "b", "row b")], "the inputs are untouched");
    let wrong = reply_frame(8, &[kept(), kept()], &[]);
    let payload = &wrong[HEADER_BYTES..wrong.len() - TRAILER_BYTES];
    assert!(parse_reply_v2(payload, 9, &tuples, false).is_err(), "the batch number is checked");
}

#[tokio::test]
async fn version_2_forwards_state_entries_as_they_come() {
    let (mut c, mut p) = talk(V2_STATEFUL, 4).await;
    c.send(batch(&["a", "b"], &[("a", "10")])).expect("sent");
    c.send(batch(&["a", "c"], &[("c", "3")])).expect("sent");
    assert_eq!(p.request().await.2, BTreeMap::from([("a".into(), "10".into())]));
    assert_eq!(p.request().await.2, BTreeMap::from([("c".into(), "3".into())]));
    p.reply(1, &[kept(), kept()], &[("a", "11"), ("b", "1")]).await;
    let result = c.next_result().await.expect("a result");
    assert_eq!(result.state, BTreeMap::from([("a".into(), "11".into()), ("b".into(), "1".into())]));
}

#[tokio::test]
async fn a_version_1_program_gets_the_full_state_of_its_keys_from_the_session() {
    let (mut c, mut p) = talk(r#"{"rainstorm":1,"stateful":true}"#, 8).await;
    assert_eq!(c.version(), V1);
    c.send(batch(&["a", "b"], &[("a", "10")])).expect("sent");
    assert!(!c.has_room(), "version 1: one batch at a time");
    let request = p.request_v1().await;
    assert_eq!(request.state, Some(State::from([("a".into(), "10".into())])));
    let reply = r#"{"batch":1,"outputs":[[],[]],"state":{"a":"11","b":"1"}}"#;
    p.write(format!("{reply}\n").as_bytes()).await;
    c.next_result().await.expect("a result");
    // The core sends a key's stored state once; the session supplies it afterwards.
    c.send(batch(&["b", "a", "z"], &[])).expect("sent");
    let request = p.request_v1().await;
    assert_eq!(request.batch, 2);
    assert_eq!(request.state, Some(State::from([("a".into(), "11".into()), ("b".into(), "1".into())])));
    p.write(b"{\"batch\":2,\"outputs\":[[],[],[]]}\n").await;
    assert!(c.next_result().await.expect("a result").state.is_empty());
    // An entry from the core is authoritative.
    c.send(batch(&["a"], &[("a", "500")])).expect("sent");
    assert_eq!(p.request_v1().await.state, Some(State::from([("a".into(), "500".into())])));
}

#[tokio::test]
async fn a_stateless_version_1_program_gets_no_state_field() {
    let (mut c, mut p) = talk(r#"{"rainstorm":1,"stateful":false}"#, 8).await;
    c.send(batch(&["a"], &[("a", "1")])).expect("sent");
    assert_eq!(p.request_v1().await.state, None);
    p.write(b"{\"batch\":1,\"outputs\":[[]],\"state\":{\"a\":\"2\"}}\n").await;
    assert_eq!(c.next_result().await, Err(ProtocolError::StateFromStatelessProgram("a".into())));
}

/// The first error of a stateful version 2 conversation whose program answers batch 1 (of
/// tuples `a`, `b`) with `bytes`.
async fn refused(bytes: Vec<u8>) -> ProtocolError {
    let (mut c, mut p) = talk(V2_STATEFUL, 4).await;
    c.send(batch(&["a", "b"], &[])).expect("sent");
    p.write(&bytes).await;
    drop(p);
    c.next_result().await.expect_err("refused")
}

fn reply_frame(batch: u64, lists: &[Vec<OutputRef<'_>>], state: &[(&str, &str)]) -> Vec<u8> {
    let mut frame = Vec::new();
    let lists = lists.iter().map(|l| l.iter().copied());
    encode_reply(&mut frame, batch, lists, state.iter().copied(), usize::MAX).expect("encodes");
    frame
}

#[tokio::test]
async fn malformed_frames_are_refused_with_typed_errors() {
    let valid = reply_frame(1, &[kept(), vec![]], &[]);
    let mut bad = valid.clone();
    bad[..2].copy_from_slice(b"{\"");
    assert_eq!(refused(bad).await, ProtocolError::BadMagic { got: *b"{\"" });
    let mut bad = valid.clone();
    bad[2] = FRAME_VERSION + 1;
    assert_eq!(refused(bad).await, ProtocolError::BadFrameVersion { got: FRAME_VERSION + 1 });
    let mut bad = valid.clone();
    bad[3] = MessageType::Request as u8;
    assert_eq!(refused(bad).await, ProtocolError::BadMessageType { expected: 2, got: 1 });
    let mut bad = valid.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    assert!(matches!(refused(bad).await, ProtocolError::BadChecksum { .. }));
    let mut oversized = [&MAGIC[..], &[FRAME_VERSION, 2], &(LIMIT as u32 + 1).to_le_bytes()].concat();
    oversized.extend(vec![0; 64]);
    assert_eq!(
        refused(oversized).await,
        ProtocolError::FrameTooLong { length: LIMIT as u64 + 1, limit: LIMIT }
    );
    assert_eq!(
        refused(valid[..valid.len() - 3].to_vec()).await,
        ProtocolError::TruncatedFrame { bytes: valid.len() - 3, expected: valid.len() }
    );
    let mut unknown_flag = valid.clone();
    unknown_flag[HEADER_BYTES + 16] = 0x80;
    let len = unknown_flag.len();
    let crc = crc32c::crc32c(&unknown_flag[..len - TRAILER_BYTES]).to_le_bytes();
    unknown_flag[len - TRAILER_BYTES..].copy_from_slice(&crc);
    assert!(
        matches!(refused(unknown_flag).await, ProtocolError::Malformed(m) if m.contains("unknown flags"))
    );
}

#[tokio::test]
async fn replies_that_break_the_contract_are_refused() {
    assert_eq!(
        refused(reply_frame(2, &[kept(), vec![]], &[])).await,
        ProtocolError::WrongBatch { expected: 1, got: 2 }
    );
    assert_eq!(
        refused(reply_frame(1, &[kept()], &[])).await,
        ProtocolError::WrongOutputCount { expected: 2, got: 1 }
    );
    assert_eq!(
        refused(reply_frame(1, &[kept(), vec![]], &[("zz", "1")])).await,
        ProtocolError::ForeignStateKey("zz".into())
    );
    assert_eq!(
        refused(reply_frame(1, &[kept(), vec![]], &[("a", "1"), ("a", "2")])).await,
        ProtocolError::DuplicateStateKey("a".into())
    );
    let (mut c, mut p) = talk(V2_STATELESS, 4).await;
    c.send(batch(&["a"], &[])).expect("sent");
    p.reply(1, &[kept()], &[("a", "1")]).await;
    assert_eq!(c.next_result().await, Err(ProtocolError::StateFromStatelessProgram("a".into())));
}

#[tokio::test]
async fn a_program_exiting_mid_window_fails_the_oldest_batch() {
    let (mut c, mut p) = talk(V2_STATEFUL, 4).await;
    for _ in 0..3 {
        c.send(batch(&["a"], &[])).expect("sent");
    }
    p.reply(1, &[kept()], &[]).await;
    let half = reply_frame(2, &[kept()], &[]);
    p.write(&half[..5]).await;
    drop(p);
    assert!(c.next_result().await.is_ok(), "batch 1 was answered whole");
    assert_eq!(
        c.next_result().await,
        Err(ProtocolError::TruncatedFrame { bytes: 5, expected: HEADER_BYTES })
    );
    assert_eq!(c.batches_in_flight().collect::<Vec<_>>(), [2, 3], "the caller fails what is left");
}

#[tokio::test]
async fn an_unanswered_batch_times_out() {
    let (program_stdin, worker_stdin) = tokio::io::duplex(1 << 20);
    let (worker_stdout, mut program_stdout) = tokio::io::duplex(1 << 20);
    program_stdout.write_all(format!("{V2_STATEFUL}\n").as_bytes()).await.expect("written");
    let limits = ConversationLimits { batch_timeout: Duration::from_millis(50), ..limits(2) };
    let hello = Hello::new("t", None);
    let mut c = Conversation::start(worker_stdout, worker_stdin, &hello, limits).await.expect("a handshake");
    c.send(batch(&["a"], &[])).expect("sent");
    assert_eq!(c.next_result().await, Err(ProtocolError::Timeout { after_ms: 50 }));
    drop((program_stdin, program_stdout));
}

#[tokio::test]
async fn a_request_over_the_limit_is_not_sent() {
    let (mut c, _p) = talk(V2_STATEFUL, 2).await;
    let long = "x".repeat(LIMIT);
    let call = ProgramBatch { tuples: vec![tuple(1, "k", &long)].into(), state: BTreeMap::new() };
    assert!(matches!(c.send(call), Err(ProtocolError::FrameTooLong { .. })));
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn a_version_the_hello_did_not_offer_is_refused() {
    let (_program_stdin, worker_stdin) = tokio::io::duplex(1 << 16);
    let (worker_stdout, mut program_stdout) = tokio::io::duplex(1 << 16);
    program_stdout.write_all(b"{\"rainstorm\":2,\"stateful\":false}\n").await.expect("written");
    let hello = Hello::v1_only("t", None);
    let refused = Conversation::start(worker_stdout, worker_stdin, &hello, limits(2)).await;
    assert_eq!(refused.err(), Some(ProtocolError::WrongVersion { got: "2".into() }));
}

#[tokio::test]
async fn closing_lets_the_program_read_everything_then_the_end() {
    let (mut c, mut p) = talk(V2_STATELESS, 2).await;
    c.send(batch(&["a"], &[])).expect("sent");
    c.close();
    assert_eq!(p.request().await.0, 1);
    let rest = read_frame(&mut p.stdin, LIMIT, MessageType::Request).await;
    assert_eq!(rest, Err(ProtocolError::Eof));
}
