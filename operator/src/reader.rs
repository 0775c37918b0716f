//! Reading both protocol versions from one buffered stream: lines (version 1, and the handshake
//! of both versions) and frames (version 2).
//!
//! This module owns [`MessageReader`]. One reader serves a whole conversation, because the
//! handshake is a line and version 2 switches to frames right after it: whatever the reader
//! buffered past the handshake line is the start of the first frame. Invariants:
//! * the buffer never holds more than one message's limit plus one read chunk
//!   ([`READ_CHUNK`]); a line is refused as soon as it is longer than the limit (newline
//!   excluded), a frame as soon as its header announces a payload over the limit, before any of
//!   the payload is read;
//! * the end of the stream between messages is [`ProtocolError::Eof`]; inside a line it is
//!   [`ProtocolError::Truncated`], inside a frame [`ProtocolError::TruncatedFrame`];
//! * a frame is returned only once its header and CRC32C trailer checked out;
//! * after an error the reader is out of step with the stream and must be dropped.

use std::io::{ErrorKind, Read};

use memchr::memchr;
use serde::de::DeserializeOwned;

use crate::codec::decode_line;
use crate::error::ProtocolError;
use crate::frame::{FrameHeader, MessageType, HEADER_BYTES, TRAILER_BYTES};

/// Bytes asked of the stream per read (more when a message needs more).
pub const READ_CHUNK: usize = 64 << 10;

/// A buffered reader of lines and frames, each at most `limit` bytes (a line without its
/// newline, a frame's payload).
pub struct MessageReader<R> {
    inner: R,
    limit: usize,
    /// `buf[pos..end]` is read and not yet consumed; `buf.len()` is the buffer's size.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl<R: Read> MessageReader<R> {
    pub fn new(inner: R, limit: usize) -> MessageReader<R> {
        MessageReader { inner, limit, buf: Vec::new(), pos: 0, end: 0 }
    }

    /// The longest message accepted.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Reads at least one more byte, making room for `need` bytes from `pos` on; `false` at the
    /// end of the stream.
    fn fill(&mut self, need: usize) -> Result<bool, ProtocolError> {
        debug_assert!(need > self.end - self.pos, "filling for bytes already there");
        if self.pos > 0 && self.buf.len() - self.pos < need.max(READ_CHUNK) {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        let wanted = self.pos + need.max(READ_CHUNK);
        if self.buf.len() < wanted {
            self.buf.resize(wanted, 0);
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next line without its `\n` (a `\r` before it is kept). Blocks until a whole line,
    /// the end of the stream, or an error.
    pub fn read_line(&mut self) -> Result<&[u8], ProtocolError> {
        let mut scanned = 0;
        loop {
            if let Some(at) = memchr(b'\n', &self.available()[scanned..]) {
                let len = scanned + at;
                if len > self.limit {
                    return Err(ProtocolError::TooLong { limit: self.limit });
                }
                let start = self.pos;
                self.pos += len + 1;
                return Ok(&self.buf[start..start + len]);
            }
            scanned = self.end - self.pos;
            if scanned > self.limit {
                return Err(ProtocolError::TooLong { limit: self.limit });
            }
            if !self.fill(scanned + 1)? {
                return Err(match scanned {
                    0 => ProtocolError::Eof,
                    bytes => ProtocolError::Truncated { bytes },
                });
            }
        }
    }

    /// The next line decoded as `T`.
    pub fn read_message<T: DeserializeOwned>(&mut self) -> Result<T, ProtocolError> {
        decode_line(self.read_line()?)
    }

    /// The payload of the next frame, which must be of type `expected`: header and checksum
    /// checked. Blocks until a whole frame, the end of the stream, or an error.
    pub fn read_frame(&mut self, expected: MessageType) -> Result<&[u8], ProtocolError> {
        while self.end - self.pos < HEADER_BYTES {
            if !self.fill(HEADER_BYTES)? {
                return Err(match self.end - self.pos {
                    0 => ProtocolError::Eof,
                    bytes => ProtocolError::TruncatedFrame { bytes, expected: HEADER_BYTES },
                });
            }
        }
        let header = FrameHeader::parse(&self.available()[..HEADER_BYTES], self.limit)?;
        header.expect(expected)?;
        let total = header.frame_bytes();
        while self.end - self.pos < total {
            if !self.fill(total)? {
                return Err(ProtocolError::TruncatedFrame { bytes: self.end - self.pos, expected: total });
            }
        }
        let frame = &self.buf[self.pos..self.pos + total];
        header.check(frame)?;
        self.pos += total;
        Ok(&frame[HEADER_BYTES..total - TRAILER_BYTES])
    }

    /// Whether a whole line is buffered (reading it will not block).
    pub fn line_buffered(&self) -> bool {
        memchr(b'\n', self.available()).is_some()
    }

    /// Whether a whole frame is buffered, or a header that will be refused (reading it will
    /// not block).
    pub fn frame_buffered(&self) -> bool {
        let available = self.available();
        match available.get(..HEADER_BYTES) {
            None => false,
            Some(header) => match FrameHeader::parse(header, self.limit) {
                Ok(header) => available.len() >= header.frame_bytes(),
                Err(_) => true,
            },
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;

    use super::*;
    use crate::frame::{encode_request, MessageType};

    fn reader(bytes: &[u8], limit: usize) -> MessageReader<Cursor<Vec<u8>>> {
        MessageReader::new(Cursor::new(bytes.to_vec()), limit)
    }

    /// Hands out at most `chunk` bytes per read.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.chunk.min(out.len()).min(self.bytes.len() - self.at);
            out[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
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
        let long = Trickle { bytes: vec![b'x'; 1 << 22], at: 0, chunk: 4096 };
        let mut r = MessageReader::new(long, 1000);
        assert_eq!(r.read_line(), Err(ProtocolError::TooLong { limit: 1000 }));
        assert!(r.buf.len() <= 1000 + READ_CHUNK + 1, "{}", r.buf.len());
        assert!(r.into_inner().at <= 1000 + READ_CHUNK + 4096, "read far past the limit");
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
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("pipe gone"))
            }
        }
        assert_eq!(MessageReader::new(Broken, 10).read_line(), Err(ProtocolError::Io("pipe gone".into())));
    }

    fn request_frame(batch: u64, value: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(&mut out, batch, [("k", value)].into_iter(), std::iter::empty(), 1 << 20)
            .expect("encodes");
        out
    }

    #[test]
    fn a_handshake_line_then_frames_from_one_buffer() {
        let mut bytes = b"{\"rainstorm\":2}\n".to_vec();
        bytes.extend(request_frame(1, "a"));
        bytes.extend(request_frame(2, "b"));
        let mut r = reader(&bytes, 1000);
        assert_eq!(r.read_line(), Ok(&b"{\"rainstorm\":2}"[..]));
        assert!(r.frame_buffered() && !r.line_buffered());
        let first = r.read_frame(MessageType::Request).expect("a frame").to_vec();
        assert_eq!(first, request_frame(1, "a")[HEADER_BYTES..first.len() + HEADER_BYTES]);
        assert!(r.read_frame(MessageType::Request).is_ok());
        assert!(!r.frame_buffered());
        assert_eq!(r.read_frame(MessageType::Request), Err(ProtocolError::Eof));
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_header() {
        let frame = request_frame(1, &"v".repeat(5000));
        let mut r = MessageReader::new(Trickle { bytes: frame.clone(), at: 0, chunk: 16 }, 100);
        assert!(matches!(
            r.read_frame(MessageType::Request),
            Err(ProtocolError::FrameTooLong { limit: 100, .. })
        ));
        assert!(r.into_inner().at <= 16, "none of the payload was read");
        let mut r = reader(&[&b"x\n"[..], &frame].concat(), 100);
        assert_eq!(r.read_line(), Ok(&b"x"[..]));
        assert!(r.frame_buffered(), "a header that will be refused counts as buffered");
    }

    #[test]
    fn the_end_of_the_stream_inside_a_frame_is_truncation() {
        let frame = request_frame(1, "abc");
        for cut in [1, HEADER_BYTES - 1, HEADER_BYTES, frame.len() - 1] {
            let mut r = reader(&frame[..cut], 1000);
            assert!(!r.frame_buffered());
            let expected = if cut < HEADER_BYTES { HEADER_BYTES } else { frame.len() };
            assert_eq!(
                r.read_frame(MessageType::Request),
                Err(ProtocolError::TruncatedFrame { bytes: cut, expected }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_big_frame_grows_the_buffer_and_is_read_whole() {
        let value = "é".repeat(100_000);
        let frame = request_frame(7, &value);
        let mut r = MessageReader::new(Trickle { bytes: frame.repeat(2), at: 0, chunk: 3000 }, 1 << 20);
        for _ in 0..2 {
            let payload = r.read_frame(MessageType::Request).expect("a frame");
            assert_eq!(payload.len(), frame.len() - HEADER_BYTES - TRAILER_BYTES);
        }
        assert_eq!(r.read_frame(MessageType::Request), Err(ProtocolError::Eof));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), limit in 0usize..64, frames in any::<bool>()) {
            let mut r = reader(&bytes, limit);
            for _ in 0..=bytes.len() {
                let buffered = if frames { r.frame_buffered() } else { r.line_buffered() };
                let read = if frames { r.read_frame(MessageType::Reply).map(<[u8]>::len) } else { r.read_line().map(<[u8]>::len) };
                match read {
                    Ok(len) => prop_assert!(len <= limit),
                    Err(ProtocolError::Eof | ProtocolError::Truncated { .. } | ProtocolError::TruncatedFrame { .. }) => {
                        prop_assert!(!buffered, "a buffered message ran out of bytes");
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }
}
