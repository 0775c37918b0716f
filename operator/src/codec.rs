//! One message per line: encoding, decoding and size-limited line reading.
//!
//! This module owns the framing of the protocol: a message is one JSON object in UTF-8 followed
//! by `\n`. Invariants: [`encode_line`] output holds exactly one `\n`, its last byte (JSON
//! escapes control characters inside strings), and is refused above the limit, so the peer's
//! limit is never hit by this side; [`LineReader`] never buffers more than the limit of one
//! line, and reports the end of the stream between lines ([`ProtocolError::Eof`]) apart from
//! the end inside a line ([`ProtocolError::Truncated`]). A `\r` before the `\n` is JSON
//! whitespace, so programs that print `\r\n` are understood.

use std::io::{BufRead, ErrorKind};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ProtocolError;
use crate::message::{Hello, Ready};
use crate::PROTOCOL_VERSION;

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

/// A handshake message: checks the `rainstorm` version field before the rest of the shape, so
/// that a peer of another version is told apart from a broken one.
fn decode_versioned<T: DeserializeOwned>(line: &[u8]) -> Result<T, ProtocolError> {
    let value: serde_json::Value = decode_line(line)?;
    let Some(object) = value.as_object() else {
        return Err(ProtocolError::Malformed(format!("expected a JSON object, got {value}")));
    };
    match object.get("rainstorm") {
        None => return Err(ProtocolError::Malformed("missing field `rainstorm`".to_owned())),
        Some(v) if v.as_u64() != Some(u64::from(PROTOCOL_VERSION)) => {
            return Err(ProtocolError::WrongVersion { got: v.to_string() })
        }
        Some(_) => {}
    }
    serde_json::from_value(value).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// The worker's first line, as a program reads it.
pub fn decode_hello(line: &[u8]) -> Result<Hello, ProtocolError> {
    decode_versioned(line)
}

/// The program's answer to the hello, as the worker reads it.
pub fn decode_ready(line: &[u8]) -> Result<Ready, ProtocolError> {
    decode_versioned(line)
}

/// Reads `\n`-terminated lines of at most `max_line_bytes` bytes (newline excluded).
pub struct LineReader<R> {
    inner: R,
    max_line_bytes: usize,
    line: Vec<u8>,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max_line_bytes: usize) -> LineReader<R> {
        LineReader { inner, max_line_bytes, line: Vec::new() }
    }

    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// The next line without its `\n`. Blocks until a whole line, the end of the stream, or an
    /// error. After an error the reader is out of step with the stream and must be dropped.
    pub fn read_line(&mut self) -> Result<&[u8], ProtocolError> {
        self.line.clear();
        loop {
            let available = match self.inner.fill_buf() {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if available.is_empty() {
                return Err(match self.line.len() {
                    0 => ProtocolError::Eof,
                    bytes => ProtocolError::Truncated { bytes },
                });
            }
            let newline = available.iter().position(|b| *b == b'\n');
            let part = &available[..newline.unwrap_or(available.len())];
            if self.line.len() + part.len() > self.max_line_bytes {
                return Err(ProtocolError::TooLong { limit: self.max_line_bytes });
            }
            self.line.extend_from_slice(part);
            let used = part.len() + usize::from(newline.is_some());
            self.inner.consume(used);
            if newline.is_some() {
                return Ok(&self.line);
            }
        }
    }

    /// The next line decoded as `T`.
    pub fn read_message<T: DeserializeOwned>(&mut self) -> Result<T, ProtocolError> {
        decode_line(self.read_line()?)
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Cursor};

    use proptest::prelude::*;

    use super::*;
    use crate::message::{BatchReply, BatchRequest, State, WireTuple};
    use crate::DEFAULT_MAX_LINE_BYTES;

    fn reader(bytes: &[u8], limit: usize) -> LineReader<Cursor<Vec<u8>>> {
        LineReader::new(Cursor::new(bytes.to_vec()), limit)
    }

    #[test]
    fn lines_up_to_the_limit_are_read() {
        let mut r = reader(b"abc\n\n12345\r\nx", 5);
        assert_eq!(r.read_line(), Ok(&b"abc"[..]));
        assert_eq!(r.read_line(), Ok(&b""[..]));
        assert_eq!(r.read_line(), Err(ProtocolError::TooLong { limit: 5 }), "\\r counts");
        let mut r = reader(b"12345\n", 5);
        assert_eq!(r.read_line(), Ok(&b"12345"[..]));
        assert_eq!(r.read_line(), Err(ProtocolError::Eof));
    }

    #[test]
    fn a_long_line_is_refused_without_buffering_it() {
        let long = vec![b'x'; 1 << 20];
        let mut r = LineReader::new(BufReader::with_capacity(64, Cursor::new(long)), 1000);
        assert_eq!(r.read_line(), Err(ProtocolError::TooLong { limit: 1000 }));
        assert!(r.line.capacity() <= 1000 + 64);
    }

    #[test]
    fn end_of_stream_between_and_inside_lines() {
        assert_eq!(reader(b"", 10).read_line(), Err(ProtocolError::Eof));
        let mut r = reader(b"{}\n{\"ba", 10);
        assert_eq!(r.read_line(), Ok(&b"{}"[..]));
        assert_eq!(r.read_line(), Err(ProtocolError::Truncated { bytes: 4 }));
    }

    #[test]
    fn io_errors_are_reported() {
        struct Broken;
        impl std::io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("pipe gone"))
            }
        }
        let mut r = LineReader::new(BufReader::new(Broken), 10);
        assert_eq!(r.read_line(), Err(ProtocolError::Io("pipe gone".into())));
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
        assert_eq!(decode_ready(br#"{"rainstorm":1,"stateful":true}"#), Ok(Ready::new(true)));
        assert_eq!(
            decode_ready(br#"{"rainstorm":2,"something":"else"}"#),
            Err(ProtocolError::WrongVersion { got: "2".into() })
        );
        assert_eq!(
            decode_ready(br#"{"rainstorm":"1"}"#),
            Err(ProtocolError::WrongVersion { got: "\"1\"".into() })
        );
        for line in
            [&br#"{"stateful":true}"#[..], br#"{"rainstorm":1}"#, br#"{"batch":1,"outputs":[]}"#, b"1", b"x"]
        {
            assert!(matches!(decode_ready(line), Err(ProtocolError::Malformed(_))), "{line:?}");
        }
        let hello = decode_hello(br#"{"rainstorm":1,"task":"s1-t0"}"#).expect("header may be absent");
        assert_eq!(hello, Hello::new("s1-t0", None));
        assert_eq!(
            decode_hello(br#"{"rainstorm":0,"task":"s1-t0","header":null}"#),
            Err(ProtocolError::WrongVersion { got: "0".into() })
        );
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
            let mut bytes = encode_line(&request, DEFAULT_MAX_LINE_BYTES).expect("encodes");
            prop_assert_eq!(bytes.iter().filter(|b| **b == b'\n').count(), 1);
            prop_assert_eq!(bytes.last(), Some(&b'\n'));
            bytes.extend(encode_line(&reply, DEFAULT_MAX_LINE_BYTES).expect("encodes"));
            let mut r = LineReader::new(BufReader::with_capacity(chunk, Cursor::new(bytes)), DEFAULT_MAX_LINE_BYTES);
            prop_assert_eq!(r.read_message::<BatchRequest>(), Ok(request));
            prop_assert_eq!(r.read_message::<BatchReply>(), Ok(reply));
            prop_assert_eq!(r.read_line(), Err(ProtocolError::Eof));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), limit in 0usize..40) {
            let mut r = reader(&bytes, limit);
            for _ in 0..=bytes.len() {
                match r.read_line() {
                    Ok(line) => {
                        prop_assert!(line.len() <= limit);
                        let _ = decode_line::<BatchReply>(line);
                        let _ = decode_ready(line);
                    }
                    Err(_) => break,
                }
            }
        }
    }
}
