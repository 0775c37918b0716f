//! One JSON message per line: the handshake of both versions and every message of version 1.
//!
//! This module owns that framing: a message is one JSON object in UTF-8 followed by `\n`, and
//! the version negotiation of the handshake ([`decode_hello`], [`decode_ready`]). Invariants:
//! [`encode_line`] output holds exactly one `\n`, its last byte (JSON escapes control
//! characters inside strings), and is refused above the limit, so the peer's limit is never hit
//! by this side. A `\r` before the `\n` is JSON whitespace, so programs that print `\r\n` are
//! understood. Lines are read by [`crate::reader::MessageReader`].

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ProtocolError;
use crate::message::{Hello, Ready};
use crate::V1;

/// `message` as one line: compact JSON and `\n`. Fails with [`ProtocolError::TooLong`] if the
/// line, newline excluded, would be longer than `max_line_bytes`.
pub fn encode_line<T: Serialize>(message: &T, max_line_bytes: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut line = serde_json::to_vec(message).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if line.len() > max_line_bytes {
        return Err(ProtocolError::TooLong { limit: max_line_bytes });
    }
    line.push(b'\n');
    Ok(line)
}

/// One message from one line (without its `\n`). Unknown fields are ignored.
pub fn decode_line<T: DeserializeOwned>(line: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(line).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// A handshake message: checks the `rainstorm` version field (against `accepted`) before the
/// rest of the shape, so that a peer of another version is told apart from a broken one.
fn decode_versioned<T: DeserializeOwned>(
    line: &[u8],
    accepted: impl Fn(u32) -> bool,
) -> Result<T, ProtocolError> {
    let value: serde_json::Value = decode_line(line)?;
    let Some(object) = value.as_object() else {
        return Err(ProtocolError::Malformed(format!("expected a JSON object, got {value}")));
    };
    match object.get("rainstorm") {
        None => return Err(ProtocolError::Malformed("missing field `rainstorm`".to_owned())),
        Some(v) if !v.as_u64().and_then(|v| u32::try_from(v).ok()).is_some_and(&accepted) => {
            return Err(ProtocolError::WrongVersion { got: v.to_string() })
        }
        Some(_) => {}
    }
    serde_json::from_value(value).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// The worker's first line, as a program reads it: always version 1, whatever it offers.
pub fn decode_hello(line: &[u8]) -> Result<Hello, ProtocolError> {
    decode_versioned(line, |v| v == V1)
}

/// The program's answer to `hello`, as the worker reads it: version 1, or one `hello` offered.
pub fn decode_ready(line: &[u8], hello: &Hello) -> Result<Ready, ProtocolError> {
    decode_versioned(line, |v| hello.offers(v))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;

    use super::*;
    use crate::message::{BatchReply, BatchRequest, State, WireTuple};
    use crate::reader::MessageReader;
    use crate::DEFAULT_MAX_MESSAGE_BYTES;

    /// Hands out at most `chunk` bytes per read.
    struct Chunked(Cursor<Vec<u8>>, usize);

    impl std::io::Read for Chunked {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(out.len());
            self.0.read(&mut out[..n])
        }
    }

    #[test]
    fn malformed_lines_are_typed_errors() {
        for line in
            [&b"not json"[..], b"{\"batch\":1}", b"{\"batch\":-1,\"outputs\":[]}", b"[]", b"\xff\xfe", b""]
        {
            let result = decode_line::<BatchReply>(line);
            assert!(matches!(result, Err(ProtocolError::Malformed(_))), "{line:?}: {result:?}");
        }
        let invalid_utf8 = b"{\"batch\":1,\"outputs\":[[{\"key\":\"\xff\",\"value\":\"\"}]]}";
        assert!(matches!(decode_line::<BatchReply>(invalid_utf8), Err(ProtocolError::Malformed(_))));
        let extra = decode_line::<BatchReply>(br#"{"batch":2,"outputs":[],"note":"ignored"}"#);
        assert_eq!(extra, Ok(BatchReply { batch: 2, ..BatchReply::default() }));
    }

    #[test]
    fn handshake_versions_are_checked_first() {
        let (both, v1) = (Hello::new("t", None), Hello::v1_only("t", None));
        assert_eq!(decode_ready(br#"{"rainstorm":1,"stateful":true}"#, &both), Ok(Ready::new(true)));
        assert_eq!(decode_ready(br#"{"rainstorm":1,"stateful":true}"#, &v1), Ok(Ready::new(true)));
        assert_eq!(decode_ready(br#"{"rainstorm":2,"stateful":false}"#, &both), Ok(Ready::v2(false)));
        assert_eq!(
            decode_ready(br#"{"rainstorm":2,"something":"else"}"#, &v1),
            Err(ProtocolError::WrongVersion { got: "2".into() }),
            "version 2 was not offered"
        );
        for (line, got) in [
            (&br#"{"rainstorm":3,"stateful":true}"#[..], "3"),
            (br#"{"rainstorm":"1"}"#, "\"1\""),
            (br#"{"rainstorm":4294967297,"stateful":true}"#, "4294967297"),
        ] {
            assert_eq!(decode_ready(line, &both), Err(ProtocolError::WrongVersion { got: got.into() }));
        }
        for line in
            [&br#"{"stateful":true}"#[..], br#"{"rainstorm":1}"#, br#"{"batch":1,"outputs":[]}"#, b"1", b"x"]
        {
            assert!(matches!(decode_ready(line, &both), Err(ProtocolError::Malformed(_))), "{line:?}");
        }
        let hello = decode_hello(br#"{"rainstorm":1,"task":"s1-t0"}"#).expect("header may be absent");
        assert_eq!(hello, Hello::v1_only("s1-t0", None));
        let offering = decode_hello(br#"{"rainstorm":1,"task":"s1-t0","accept":[1,2,7]}"#).expect("a hello");
        assert!(offering.offers(2) && offering.offers(7));
        for version in ["0", "2"] {
            let line = format!(r#"{{"rainstorm":{version},"task":"s1-t0","header":null}}"#);
            assert_eq!(
                decode_hello(line.as_bytes()),
                Err(ProtocolError::WrongVersion { got: version.into() })
            );
        }
    }

    #[test]
    fn encoding_refuses_lines_over_the_limit() {
        let reply = BatchReply {
            batch: 1,
            outputs: vec![vec![WireTuple::new("k", "x".repeat(100))]],
            state: State::new(),
        };
        assert!(encode_line(&reply, 200).is_ok());
        assert_eq!(encode_line(&reply, 100), Err(ProtocolError::TooLong { limit: 100 }));
    }

    proptest! {
        #[test]
        fn any_keys_and_values_round_trip(
            pairs in prop::collection::vec(("\\PC*|[\t\n\r\"\\\\\u{0}\u{7f}\u{2028}é中🦀 ]{0,12}", ".*"), 0..8),
            state in prop::collection::btree_map("\\PC{0,6}|[\n\"]{1,3}", "\\PC{0,6}", 0..4),
            batch in any::<u64>(),
            chunk in 1usize..64,
        ) {
            let tuples: Vec<WireTuple> = pairs.iter().map(|(k, v)| WireTuple::new(k.as_str(), v.as_str())).collect();
            let request = BatchRequest { batch, tuples: tuples.clone(), state: Some(state.clone()) };
            let reply = BatchReply { batch, outputs: vec![tuples; 2], state };
            let mut bytes = encode_line(&request, DEFAULT_MAX_MESSAGE_BYTES).expect("encodes");
            prop_assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
            prop_assert_eq!(bytes.last(), Some(&b'\n'));
            bytes.extend(encode_line(&reply, DEFAULT_MAX_MESSAGE_BYTES).expect("encodes"));
            let mut r = MessageReader::new(Chunked(Cursor::new(bytes), chunk), DEFAULT_MAX_MESSAGE_BYTES);
            prop_assert_eq!(r.read_message::<BatchRequest>(), Ok(request));
            prop_assert_eq!(r.read_message::<BatchReply>(), Ok(reply));
            prop_assert_eq!(r.read_line(), Err(ProtocolError::Eof));
        }

        #[test]
        fn arbitrary_lines_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            for line in bytes.split(|b| *b == b'\n') {
                let _ = decode_line::<BatchReply>(line);
                let _ = decode_ready(line, &Hello::new("t", None));
                let _ = decode_hello(line);
            }
        }
    }
}
