//! `operator_output`: an operator spec (the first line of the input, [`OperatorSpec::parse`])
//! and what an operator program prints (the rest), read as the runtime reads a program's
//! stdout: the first line ([`read_line`]) as its answer to a hello offering versions 1 and 2
//! ([`decode_ready`]); then, if it chose version 1, each further line as the answer to a batch
//! ([`parse_reply_v1`]), and if it chose version 2, each further frame ([`read_frame`]) as the
//! answer to a batch ([`parse_reply_v2`]).
//!
//! Checked: no panic, errors typed; a spec prints back to itself (`parse(spec.to_string()) ==
//! spec`) and builds against a header or none, and a built operator applies to a row without
//! panicking (a `regex:` spec is compiled once, by parsing, and not when its pattern is long);
//! a batch result has one output list per input tuple and state only for keys of the batch,
//! from stateful programs only; what decodes re-encodes and decodes to the same message (a
//! frame's payload also goes through the request decoder, which must not panic either).

use rainstorm_core::rainstorm::operator::MAX_PATTERN_LEN;
use rainstorm_core::rainstorm::{OperatorSpec, StageOp, Tuple, TupleId};
use rainstorm_operator::frame::{
    decode_reply, decode_request, encode_reply, FrameHeader, MessageType, HEADER_BYTES, TRAILER_BYTES,
};
use rainstorm_operator::{
    decode_line, decode_ready, encode_line, BatchReply, BatchRequest, Hello, Ready, WireTuple, V2,
};
use rainstorm_runtime::programs::{parse_reply_v1, parse_reply_v2, read_frame, read_line};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Patterns at least this long are not compiled (see [`operator_spec`]).
const MAX_FUZZED_PATTERN: usize = 8;
/// The longest stdout line taken, small so that the limit is reached.
const MAX_LINE_BYTES: usize = 512;

/// `operator_output`.
pub fn operator_output(data: &[u8]) {
    let (spec, stdout) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    operator_spec(&String::from_utf8_lossy(spec));
    program_stdout(stdout);
}

fn operator_spec(text: &str) {
    // Parsing a `regex:` spec compiles its pattern, which would take most of the time; patterns
    // longer than this are left to the regex crate's own fuzzing (those over the length limit
    // are still refused here, without compiling).
    if let Some(pattern) = text.strip_prefix("regex:") {
        if (MAX_FUZZED_PATTERN..=MAX_PATTERN_LEN).contains(&pattern.len()) {
            return;
        }
    }
    let spec = match OperatorSpec::parse(text) {
        Ok(spec) => spec,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    let printed = spec.to_string();
    if let OperatorSpec::Regex { pattern } = &spec {
        // The pattern is kept as written (compiled once above, and again by `build`).
        assert_eq!(printed, format!("regex:{pattern}"));
        return;
    }
    assert_eq!(OperatorSpec::parse(&printed).as_ref(), Ok(&spec), "`{printed}` does not parse back");
    let header: Vec<String> = ["\u{feff}id", " name ", "value", "3"].map(String::from).to_vec();
    for header in [Some(&header[..]), None] {
        let op = match spec.build(header) {
            Ok(StageOp::Builtin(op)) => op,
            Ok(StageOp::Program(p)) => {
                assert!(matches!(&spec, OperatorSpec::Program(q) if *q == p));
                continue;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                continue;
            }
        };
        for row in ["1,\"a, b\",x,y", "", "only", "2,don't stop,=,\"\""] {
            let tuple = Tuple::source("in.csv", 2, row);
            if let Ok(key) = op.state_key(&tuple) {
                let _ = op.apply(&tuple, None);
                let _ = op.apply(&tuple, Some("41"));
                let _ = op.apply(&tuple, Some("x"));
                assert!(op.is_stateful() || key == tuple.key);
            }
        }
    }
}

/// What a future over bytes in memory gives; it never waits.
fn now<T>(future: impl Future<Output = T>) -> T {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("reading bytes in memory waited"),
    }
}

/// The line `read_line` gives from `stdout`.
fn next_line(stdout: &mut &[u8]) -> Option<Vec<u8>> {
    match now(read_line(stdout, MAX_LINE_BYTES)) {
        Ok(line) => Some(line),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

/// The payload of the frame `read_frame` gives from `stdout`.
fn next_frame(stdout: &mut &[u8]) -> Option<Vec<u8>> {
    match now(read_frame(stdout, MAX_LINE_BYTES, MessageType::Reply)) {
        Ok(payload) => {
            assert!(payload.len() <= MAX_LINE_BYTES);
            Some(payload)
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

fn program_stdout(mut stdout: &[u8]) {
    let Some(first) = next_line(&mut stdout) else { return };
    let hello = Hello::new("s1-t0", None);
    let ready = match decode_ready(&first, &hello) {
        Ok(ready) => ready,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    let line = encode_line(&ready, MAX_LINE_BYTES).expect("a handshake answer encodes");
    assert_eq!(decode_ready(&line[..line.len() - 1], &hello), Ok(ready));
    assert!(ready == Ready::new(ready.stateful) || ready == Ready::v2(ready.stateful), "{ready:?}");
    if ready.rainstorm == V2 {
        return program_frames(stdout, ready.stateful);
    }
    let mut batch = 0;
    while let Some(line) = next_line(&mut stdout) {
        batch += 1;
        let request = BatchRequest {
            batch,
            tuples: vec![WireTuple::new("a", "1,x"), WireTuple::new("b", "2,y"), WireTuple::new("a", "3,z")],
            state: ready.stateful.then(|| [("a".to_owned(), "1".to_owned())].into()),
        };
        if let Ok(reply) = decode_line::<BatchReply>(&line) {
            let again = encode_line(&reply, usize::MAX).expect("a reply encodes");
            assert_eq!(decode_line::<BatchReply>(&again[..again.len() - 1]), Ok(reply));
        }
        match parse_reply_v1(&line, &request) {
            Ok(result) => {
                assert_eq!(result.outputs.len(), request.tuples.len());
                assert!(ready.stateful || result.state.is_empty(), "state from a stateless program");
                for key in result.state.keys() {
                    assert!(request.tuples.iter().any(|t| t.key == *key), "state of a foreign key {key:?}");
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

/// A version 2 program's frames, each the answer to the next batch of the same three tuples.
fn program_frames(mut stdout: &[u8], stateful: bool) {
    let tuple = |line, key: &str, value: &str| Tuple {
        id: TupleId::source(line),
        key: key.to_owned(),
        value: value.to_owned(),
    };
    let batch_tuples = [tuple(1, "a", "1,x"), tuple(2, "b", "2,y"), tuple(3, "a", "3,z")];
    let mut batch = 0;
    while let Some(payload) = next_frame(&mut stdout) {
        batch += 1;
        let _ = decode_request(&payload);
        if let Ok(view) = decode_reply(&payload) {
            let mut again = Vec::new();
            let lists = view.lists().map(|list| list.iter().copied());
            encode_reply(&mut again, view.batch, lists, view.state.iter().copied(), usize::MAX)
                .expect("a reply encodes");
            let header = FrameHeader::parse(&again, usize::MAX).expect("a header");
            assert_eq!(header.check(&again), Ok(()));
            assert_eq!(again[HEADER_BYTES..again.len() - TRAILER_BYTES], payload[..], "re-encodes the same");
        }
        match parse_reply_v2(&payload, batch, &batch_tuples, stateful) {
            Ok(result) => {
                assert_eq!(result.outputs.len(), batch_tuples.len());
                assert!(stateful || result.state.is_empty(), "state from a stateless program");
                for key in result.state.keys() {
                    assert!(batch_tuples.iter().any(|t| t.key == *key), "state of a foreign key {key:?}");
                }
                let view = decode_reply(&payload).expect("it was parsed");
                for ((list, outputs), t) in view.lists().zip(&result.outputs).zip(&batch_tuples) {
                    for (o, out) in list.iter().zip(outputs) {
                        assert_eq!(
                            (o.key_or(&t.key), o.value_or(&t.value)),
                            (out.key.as_str(), out.value.as_str())
                        );
                    }
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
