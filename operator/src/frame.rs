//! Protocol version 2: length-prefixed binary frames, and the two batch messages they carry.
//!
//! A frame (all integers little-endian):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 2 | magic `RS` (`52 53`) |
//! | 2 | 1 | frame version, `2` |
//! | 3 | 1 | message type: `1` batch request (worker to program), `2` batch reply |
//! | 4 | 4 | payload length `n` (u32), at most the limit |
//! | 8 | n | payload |
//! | 8 + n | 4 | CRC32C (Castagnoli) of bytes `0 .. 8 + n`, header and payload |
//!
//! In payloads a *string* is a u32 byte length then that many bytes of UTF-8, and a *count* is
//! a u32. A batch request is: batch number (u64), tuple count, each tuple's key and value
//! (strings), state entry count, each entry's key and state (strings). A batch reply is: batch
//! number (u64), output list count, and per list an output count then per output one flags byte
//! ([`KEY_OF_INPUT`]: the output's key is its input tuple's, and is not sent; [`VALUE_OF_INPUT`]:
//! the same for the value; no other bit may be set) followed by the key string unless
//! `KEY_OF_INPUT` and the value string unless `VALUE_OF_INPUT`; then the state change count and
//! each change's key and new state (strings). A payload holds nothing after its last field.
//!
//! This module owns that layout: [`FrameHeader`] (parsed and checked before a payload is read),
//! the encoders [`encode_request`] and [`encode_reply`], the decoders [`decode_request`] and
//! [`decode_reply`] (borrowing every string from the payload), and [`ReplyView::check`], the
//! worker's check of a reply against its request. Invariants: every decoding path returns a
//! value or a [`ProtocolError`] and never panics; a count or length is checked against the
//! bytes left in the payload before anything is allocated for it, so decoding allocates at
//! most in proportion to the payload; encoders never produce a payload over the limit (they
//! fail instead, leaving their output as it was).

use std::collections::BTreeSet;

use crate::error::ProtocolError;

/// The first two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"RS";
/// The frame version byte.
pub const FRAME_VERSION: u8 = 2;
/// Magic, version, type, length.
pub const HEADER_BYTES: usize = 8;
/// The CRC32C.
pub const TRAILER_BYTES: usize = 4;
/// Output flag: the output's key is its input tuple's key (not repeated in the frame).
pub const KEY_OF_INPUT: u8 = 1;
/// Output flag: the output's value is its input tuple's value (not repeated in the frame).
pub const VALUE_OF_INPUT: u8 = 2;

/// The longest payload a frame can announce, whatever the limit.
const MAX_PAYLOAD: usize = u32::MAX as usize;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Worker to program: a batch of tuples and state entries.
    Request = 1,
    /// Program to worker: the outputs and state changes of one batch.
    Reply = 2,
}

/// A message type's name, for errors.
pub fn type_name(kind: u8) -> &'static str {
    match kind {
        1 => "a batch request",
        2 => "a batch reply",
        _ => "unknown",
    }
}

/// A frame's checked header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message type byte (checked by [`FrameHeader::expect`]).
    pub kind: u8,
    /// The payload's length, at most the limit.
    pub length: usize,
}

impl FrameHeader {
    /// Parses and checks the first [`HEADER_BYTES`] of `bytes`: magic, version, and a length at
    /// most `limit`.
    pub fn parse(bytes: &[u8], limit: usize) -> Result<FrameHeader, ProtocolError> {
        let Some(header) = bytes.get(..HEADER_BYTES) else {
            return Err(ProtocolError::TruncatedFrame { bytes: bytes.len(), expected: HEADER_BYTES });
        };
        if header[..2] != MAGIC {
            return Err(ProtocolError::BadMagic { got: [header[0], header[1]] });
        }
        if header[2] != FRAME_VERSION {
            return Err(ProtocolError::BadFrameVersion { got: header[2] });
        }
        let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let limit = limit.min(MAX_PAYLOAD);
        if length as usize > limit {
            return Err(ProtocolError::FrameTooLong { length: u64::from(length), limit });
        }
        Ok(FrameHeader { kind: header[3], length: length as usize })
    }

    /// Refuses a frame of another message type.
    pub fn expect(&self, expected: MessageType) -> Result<(), ProtocolError> {
        match self.kind == expected as u8 {
            true => Ok(()),
            false => Err(ProtocolError::BadMessageType { expected: expected as u8, got: self.kind }),
        }
    }

    /// The whole frame's size: header, payload and trailer.
    pub fn frame_bytes(&self) -> usize {
        HEADER_BYTES + self.length + TRAILER_BYTES
    }

    /// Checks the CRC32C trailer of `frame`, the whole frame this header opens.
    pub fn check(&self, frame: &[u8]) -> Result<(), ProtocolError> {
        debug_assert_eq!(frame.len(), self.frame_bytes());
        let (body, trailer) = frame.split_at(frame.len() - TRAILER_BYTES);
        let computed = crc32c::crc32c(body);
        let got = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        match computed == got {
            true => Ok(()),
            false => Err(ProtocolError::BadChecksum { computed, got }),
        }
    }
}

/// A frame being written at the end of a buffer.
struct FrameWriter<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
}

impl<'o> FrameWriter<'o> {
    fn begin(out: &'o mut Vec<u8>, kind: MessageType) -> FrameWriter<'o> {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[FRAME_VERSION, kind as u8, 0, 0, 0, 0]);
        FrameWriter { out, start }
    }

    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    fn u32(&mut self, v: usize) {
        // Counts and lengths past u32::MAX are refused by `finish` (the payload is then too long).
        self.out.extend_from_slice(&(v.min(MAX_PAYLOAD) as u32).to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn str(&mut self, s: &str) {
        self.u32(s.len());
        self.out.extend_from_slice(s.as_bytes());
    }

    /// Fills in the length and appends the CRC32C, or takes the frame back out if its payload
    /// is over `limit`.
    fn finish(self, limit: usize) -> Result<(), ProtocolError> {
        let length = self.out.len() - self.start - HEADER_BYTES;
        let limit = limit.min(MAX_PAYLOAD);
        if length > limit {
            self.out.truncate(self.start);
            return Err(ProtocolError::FrameTooLong { length: length as u64, limit });
        }
        let at = self.start + 4;
        self.out[at..at + 4].copy_from_slice(&(length as u32).to_le_bytes());
        let crc = crc32c::crc32c(&self.out[self.start..]);
        self.out.extend_from_slice(&crc.to_le_bytes());
        debug_assert!(FrameHeader::parse(&self.out[self.start..], limit).is_ok());
        Ok(())
    }
}

/// Appends to `out` the frame of batch request `batch`: its tuples (key, value) in order and
/// its state entries (key, state). Fails, appending nothing, if the payload would be over
/// `limit`.
pub fn encode_request<'a>(
    out: &mut Vec<u8>,
    batch: u64,
    tuples: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    state: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    limit: usize,
) -> Result<(), ProtocolError> {
    let mut w = FrameWriter::begin(out, MessageType::Request);
    w.u64(batch);
    w.u32(tuples.len());
    for (key, value) in tuples {
        w.str(key);
        w.str(value);
    }
    w.u32(state.len());
    for (key, value) in state {
        w.str(key);
        w.str(value);
    }
    w.finish(limit)
}

/// One output of a reply: a key and a value, each either given or its input tuple's (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputRef<'a> {
    pub key: Option<&'a str>,
    pub value: Option<&'a str>,
}

impl<'a> OutputRef<'a> {
    /// The output's key, given the input tuple's.
    pub fn key_or<'b>(&self, input: &'b str) -> &'b str
    where
        'a: 'b,
    {
        self.key.unwrap_or(input)
    }

    /// The output's value, given the input tuple's.
    pub fn value_or<'b>(&self, input: &'b str) -> &'b str
    where
        'a: 'b,
    {
        self.value.unwrap_or(input)
    }

    fn flags(&self) -> u8 {
        (if self.key.is_none() { KEY_OF_INPUT } else { 0 })
            | (if self.value.is_none() { VALUE_OF_INPUT } else { 0 })
    }
}

/// Appends to `out` the frame of the reply to batch `batch`: one output list per input tuple,
/// in order, and the state changes (key, new state). Fails, appending nothing, if the payload
/// would be over `limit`.
pub fn encode_reply<'a, L>(
    out: &mut Vec<u8>,
    batch: u64,
    lists: impl ExactSizeIterator<Item = L>,
    state: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    limit: usize,
) -> Result<(), ProtocolError>
where
    L: ExactSizeIterator<Item = OutputRef<'a>>,
{
    let mut w = FrameWriter::begin(out, MessageType::Reply);
    w.u64(batch);
    w.u32(lists.len());
    for list in lists {
        w.u32(list.len());
        for output in list {
            w.u8(output.flags());
            if let Some(key) = output.key {
                w.str(key);
            }
            if let Some(value) = output.value {
                w.str(value);
            }
        }
    }
    w.u32(state.len());
    for (key, value) in state {
        w.str(key);
        w.str(value);
    }
    w.finish(limit)
}

/// A payload being decoded.
struct Payload<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Payload<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], ProtocolError> {
        if n > self.left() {
            return Err(ProtocolError::Malformed(format!(
                "the payload ends inside {}: {n} bytes needed, {} left",
                what(),
                self.left()
            )));
        }
        let bytes = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(bytes)
    }

    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<usize, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, ProtocolError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    /// A count of items each at least `min_bytes` long: refused if the payload cannot hold them.
    fn count(&mut self, min_bytes: usize, what: &dyn Fn() -> String) -> Result<usize, ProtocolError> {
        let count = self.u32(what)?;
        if count.saturating_mul(min_bytes) > self.left() {
            return Err(ProtocolError::Malformed(format!(
                "{} counts {count}, more than the {} bytes left can hold",
                what(),
                self.left()
            )));
        }
        Ok(count)
    }

    fn str(&mut self, what: &dyn Fn() -> String) -> Result<&'a str, ProtocolError> {
        let len = self.u32(what)?;
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map_err(|e| ProtocolError::Malformed(format!("{} is not UTF-8: {e}", what())))
    }

    fn end(&self, what: &str) -> Result<(), ProtocolError> {
        match self.left() {
            0 => Ok(()),
            n => Err(ProtocolError::Malformed(format!("{n} bytes follow the end of {what}"))),
        }
    }
}

/// Two strings (key and value, or key and state).
const PAIR_MIN_BYTES: usize = 8;

fn pairs<'a>(p: &mut Payload<'a>, name: &'static str) -> Result<Vec<(&'a str, &'a str)>, ProtocolError> {
    let count = p.count(PAIR_MIN_BYTES, &|| format!("the {name} count"))?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let key = p.str(&|| format!("the key of {name} entry {i}"))?;
        let value = p.str(&|| format!("{name} entry {i}"))?;
        out.push((key, value));
    }
    Ok(out)
}

/// A tuple of a batch request, borrowed from the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TupleRef<'a> {
    pub key: &'a str,
    pub value: &'a str,
}

/// A decoded batch request, borrowing its strings from the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestView<'a> {
    pub batch: u64,
    pub tuples: Vec<TupleRef<'a>>,
    /// Authoritative state entries (key, state), in the order sent.
    pub state: Vec<(&'a str, &'a str)>,
}

/// Decodes the payload of a batch request frame.
pub fn decode_request(payload: &[u8]) -> Result<RequestView<'_>, ProtocolError> {
    let mut p = Payload { bytes: payload, at: 0 };
    let batch = p.u64(&|| "the batch number".to_owned())?;
    let count = p.count(PAIR_MIN_BYTES, &|| "the tuple count".to_owned())?;
    let mut tuples = Vec::with_capacity(count);
    for i in 0..count {
        let key = p.str(&|| format!("the key of tuple {i}"))?;
        let value = p.str(&|| format!("the value of tuple {i}"))?;
        tuples.push(TupleRef { key, value });
    }
    let state = pairs(&mut p, "state")?;
    p.end("the batch request")?;
    Ok(RequestView { batch, tuples, state })
}

/// A decoded batch reply, borrowing its strings from the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyView<'a> {
    pub batch: u64,
    /// Where each output list ends in `outputs`.
    ends: Vec<usize>,
    outputs: Vec<OutputRef<'a>>,
    /// State changes (key, new state), in the order sent.
    pub state: Vec<(&'a str, &'a str)>,
}

impl<'a> ReplyView<'a> {
    /// How many output lists the reply holds.
    pub fn list_count(&self) -> usize {
        self.ends.len()
    }

    /// The output lists, in order.
    pub fn lists(&self) -> impl ExactSizeIterator<Item = &[OutputRef<'a>]> + '_ {
        (0..self.ends.len()).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.outputs[start..self.ends[i]]
        })
    }

    /// Checks this reply against its request: batch `batch`, whose tuples have `keys` in order,
    /// sent to a program that is `stateful` or not. The first violation found is returned, in
    /// the order: batch number, output list count, state from a stateless program, state for a
    /// key of no tuple of the batch, state set twice for one key.
    pub fn check<'k>(
        &self,
        batch: u64,
        keys: impl ExactSizeIterator<Item = &'k str>,
        stateful: bool,
    ) -> Result<(), ProtocolError> {
        if self.batch != batch {
            return Err(ProtocolError::WrongBatch { expected: batch, got: self.batch });
        }
        if self.list_count() != keys.len() {
            return Err(ProtocolError::WrongOutputCount { expected: keys.len(), got: self.list_count() });
        }
        let Some((first, _)) = self.state.first() else { return Ok(()) };
        if !stateful {
            return Err(ProtocolError::StateFromStatelessProgram((*first).to_owned()));
        }
        let keys: BTreeSet<&str> = keys.collect();
        let mut seen = BTreeSet::new();
        for (key, _) in &self.state {
            if !keys.contains(key) {
                return Err(ProtocolError::ForeignStateKey((*key).to_owned()));
            }
            if !seen.insert(*key) {
                return Err(ProtocolError::DuplicateStateKey((*key).to_owned()));
            }
        }
        Ok(())
    }
}

/// Decodes the payload of a batch reply frame (its shape only: [`ReplyView::check`] checks it
/// against the request).
pub fn decode_reply(payload: &[u8]) -> Result<ReplyView<'_>, ProtocolError> {
    let mut p = Payload { bytes: payload, at: 0 };
    let batch = p.u64(&|| "the batch number".to_owned())?;
    let lists = p.count(4, &|| "the output list count".to_owned())?;
    let mut ends = Vec::with_capacity(lists);
    let mut outputs = Vec::new();
    for list in 0..lists {
        let count = p.count(1, &|| format!("the output count of tuple {list}"))?;
        outputs.reserve(count);
        for i in 0..count {
            let flags = p.u8(&|| format!("output {i} of tuple {list}"))?;
            if flags & !(KEY_OF_INPUT | VALUE_OF_INPUT) != 0 {
                return Err(ProtocolError::Malformed(format!(
                    "output {i} of tuple {list} has unknown flags {flags:#04x}"
                )));
            }
            let key = match flags & KEY_OF_INPUT {
                0 => Some(p.str(&|| format!("the key of output {i} of tuple {list}"))?),
                _ => None,
            };
            let value = match flags & VALUE_OF_INPUT {
                0 => Some(p.str(&|| format!("the value of output {i} of tuple {list}"))?),
                _ => None,
            };
            outputs.push(OutputRef { key, value });
        }
        ends.push(outputs.len());
    }
    let state = pairs(&mut p, "state")?;
    p.end("the batch reply")?;
    Ok(ReplyView { batch, ends, outputs, state })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMIT: usize = 1 << 20;

    fn request(batch: u64, tuples: &[(&str, &str)], state: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(&mut out, batch, tuples.iter().copied(), state.iter().copied(), LIMIT)
            .expect("encodes");
        out
    }

    fn reply(batch: u64, lists: &[Vec<OutputRef>], state: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        let lists = lists.iter().map(|l| l.iter().copied());
        encode_reply(&mut out, batch, lists, state.iter().copied(), LIMIT).expect("encodes");
        out
    }

    fn payload(frame: &[u8]) -> &[u8] {
        let header = FrameHeader::parse(frame, LIMIT).expect("a header");
        header.check(frame).expect("a checksum");
        &frame[HEADER_BYTES..frame.len() - TRAILER_BYTES]
    }

    fn out<'a>(key: Option<&'a str>, value: Option<&'a str>) -> OutputRef<'a> {
        OutputRef { key, value }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let frame = request(7, &[("k", "vé")], &[("k", "1")]);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &b"RS"[..], &[2, 1], &38u32.to_le_bytes(),
            &7u64.to_le_bytes(), &1u32.to_le_bytes(),
            &1u32.to_le_bytes(), b"k", &3u32.to_le_bytes(), "vé".as_bytes(),
            &1u32.to_le_bytes(), &1u32.to_le_bytes(), b"k", &1u32.to_le_bytes(), b"1",
        ].concat();
        assert_eq!(frame[..frame.len() - 4], expected[..]);
        assert_eq!(frame[frame.len() - 4..], crc32c::crc32c(&expected).to_le_bytes());
        let kept = reply(7, &[vec![out(None, None)], vec![], vec![out(Some("x"), None)]], &[]);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            &b"RS"[..], &[2, 2], &35u32.to_le_bytes(), &7u64.to_le_bytes(), &3u32.to_le_bytes(),
            &1u32.to_le_bytes(), &[KEY_OF_INPUT | VALUE_OF_INPUT],
            &0u32.to_le_bytes(),
            &1u32.to_le_bytes(), &[VALUE_OF_INPUT], &1u32.to_le_bytes(), b"x",
            &0u32.to_le_bytes(),
        ].concat();
        assert_eq!(kept[..kept.len() - 4], expected[..]);
    }

    fn hex(text: &str) -> Vec<u8> {
        text.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("hex")).collect()
    }

    /// The example session of `docs/OPERATORS.md`, byte for byte (its CRCs were computed
    /// independently of this crate).
    #[test]
    fn the_documented_example_frames() {
        let request_hex =
            "52 53 02 01 2e 00 00 00 01 00 00 00 00 00 00 00 02 00 00 00 01 00 00 00 61 01 00 00 00 78 \
                       01 00 00 00 62 01 00 00 00 79 01 00 00 00 01 00 00 00 61 01 00 00 00 34 44 b4 cb d4";
        assert_eq!(request(1, &[("a", "x"), ("b", "y")], &[("a", "4")]), hex(request_hex));
        let reply_hex =
            "52 53 02 02 2a 00 00 00 01 00 00 00 00 00 00 00 02 00 00 00 01 00 00 00 03 01 00 00 00 \
                     01 02 00 00 00 79 21 01 00 00 00 01 00 00 00 61 01 00 00 00 35 9f 71 db 9d";
        let lists = [vec![out(None, None)], vec![out(None, Some("y!"))]];
        assert_eq!(reply(1, &lists, &[("a", "5")]), hex(reply_hex));
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283, "CRC32C's check value");
    }

    #[test]
    fn a_kept_tuple_costs_one_byte_more_than_a_dropped_one() {
        let empty = reply(1, &[vec![]], &[]).len();
        assert_eq!(reply(1, &[vec![out(None, None)]], &[]).len(), empty + 1);
        assert_eq!(empty, HEADER_BYTES + 8 + 4 + 4 + 4 + TRAILER_BYTES);
    }

    #[test]
    fn headers_are_checked_before_the_payload() {
        let frame = request(1, &[("a", "b")], &[]);
        let mut bad = frame.clone();
        bad[0] = b'{';
        assert_eq!(FrameHeader::parse(&bad, LIMIT), Err(ProtocolError::BadMagic { got: [b'{', b'S'] }));
        let mut bad = frame.clone();
        bad[2] = 1;
        assert_eq!(FrameHeader::parse(&bad, LIMIT), Err(ProtocolError::BadFrameVersion { got: 1 }));
        let header = FrameHeader::parse(&frame, LIMIT).expect("valid");
        assert_eq!(
            header.expect(MessageType::Reply),
            Err(ProtocolError::BadMessageType { expected: 2, got: 1 })
        );
        assert!(matches!(
            FrameHeader::parse(&frame, 10),
            Err(ProtocolError::FrameTooLong { limit: 10, length }) if length as usize == header.length
        ));
        assert!(matches!(FrameHeader::parse(&frame[..5], LIMIT), Err(ProtocolError::TruncatedFrame { .. })));
        let text = ProtocolError::BadMagic { got: *b"{\"" }.to_string();
        assert!(text.contains("[7b, 22]") && text.contains("RS"), "{text}");
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let frame = request(3, &[("key", "value")], &[("key", "9")]);
        let header = FrameHeader::parse(&frame, LIMIT).expect("valid");
        for bit in (4 * 8..frame.len() * 8).step_by(7) {
            let mut bad = frame.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            if bit / 8 < HEADER_BYTES {
                continue; // the length: refused or another frame size, not a checksum matter
            }
            assert!(matches!(header.check(&bad), Err(ProtocolError::BadChecksum { .. })), "bit {bit}");
        }
    }

    #[test]
    fn encoders_refuse_payloads_over_the_limit_and_append_nothing() {
        let mut out = b"before".to_vec();
        let long = "x".repeat(100);
        let too_long =
            encode_request(&mut out, 1, [("k", long.as_str())].into_iter(), std::iter::empty(), 50);
        assert!(matches!(too_long, Err(ProtocolError::FrameTooLong { limit: 50, .. })));
        assert_eq!(out, b"before");
        let lists = [[out_ref(&long)]];
        let too_long =
            encode_reply(&mut out, 1, lists.iter().map(|l| l.iter().copied()), std::iter::empty(), 50);
        assert!(too_long.is_err());
        assert_eq!(out, b"before");
    }

    fn out_ref(value: &str) -> OutputRef<'_> {
        OutputRef { key: None, value: Some(value) }
    }

    #[test]
    fn malformed_payloads_are_typed_errors() {
        let valid = reply(1, &[vec![out(Some("k"), Some("v"))]], &[("k", "1")]);
        let p = payload(&valid).to_vec();
        let malformed = |bytes: &[u8]| match decode_reply(bytes) {
            Err(ProtocolError::Malformed(text)) => text,
            other => panic!("{bytes:?}: {other:?}"),
        };
        for cut in 0..p.len() {
            let text = malformed(&p[..cut]);
            assert!(text.contains("ends inside") || text.contains("more than"), "{text}");
        }
        assert!(malformed(&[p.clone(), vec![0]].concat()).contains("1 bytes follow"));
        let mut flags = p.clone();
        flags[16] = 4;
        assert!(malformed(&flags).contains("unknown flags 0x04"));
        let mut count = p.clone();
        count[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(malformed(&count).contains("output list count counts 4294967295"));
        let mut utf8 = p.clone();
        utf8[21] = 0xff;
        assert!(malformed(&utf8).contains("the key of output 0 of tuple 0 is not UTF-8"));
        assert!(decode_reply(&p).is_ok());
        let req = request(1, &[("a", "b")], &[]);
        let rp = payload(&req);
        assert!(matches!(decode_request(&rp[..rp.len() - 1]), Err(ProtocolError::Malformed(_))));
    }

    #[test]
    fn replies_are_checked_against_their_requests() {
        let lists = [vec![out(None, None)], vec![]];
        let keys = ["a", "b"];
        let check = |batch, lists: &[Vec<OutputRef>], state: &[(&str, &str)], stateful| {
            let frame = reply(batch, lists, state);
            decode_reply(payload(&frame)).expect("decodes").check(4, keys.iter().copied(), stateful)
        };
        assert_eq!(check(4, &lists, &[("a", "1")], true), Ok(()));
        assert_eq!(check(5, &lists, &[], true), Err(ProtocolError::WrongBatch { expected: 4, got: 5 }));
        assert_eq!(
            check(4, &lists[..1], &[], false),
            Err(ProtocolError::WrongOutputCount { expected: 2, got: 1 })
        );
        assert_eq!(
            check(4, &lists, &[("a", "1")], false),
            Err(ProtocolError::StateFromStatelessProgram("a".into()))
        );
        assert_eq!(check(4, &lists, &[("c", "1")], true), Err(ProtocolError::ForeignStateKey("c".into())));
        assert_eq!(
            check(4, &lists, &[("b", "1"), ("b", "2")], true),
            Err(ProtocolError::DuplicateStateKey("b".into()))
        );
    }

    proptest! {
        #[test]
        fn messages_round_trip(
            batch in any::<u64>(),
            tuples in prop::collection::vec(("\\PC{0,8}", "\\PC{0,8}"), 0..6),
            state in prop::collection::vec(("\\PC{0,4}", "\\PC{0,4}"), 0..4),
            flags in prop::collection::vec(prop::collection::vec(0u8..4, 0..3), 0..6),
        ) {
            fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
                v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
            }
            let frame = request(batch, &pairs(&tuples), &pairs(&state));
            let view = decode_request(payload(&frame)).expect("decodes");
            prop_assert_eq!(view.batch, batch);
            prop_assert_eq!(view.tuples.iter().map(|t| (t.key, t.value)).collect::<Vec<_>>(), pairs(&tuples));
            prop_assert_eq!(view.state, pairs(&state));
            let lists: Vec<Vec<OutputRef>> = flags.iter().map(|list| list.iter().map(|f| OutputRef {
                key: (f & KEY_OF_INPUT == 0).then_some("key"),
                value: (f & VALUE_OF_INPUT == 0).then_some("välue"),
            }).collect()).collect();
            let frame = reply(batch, &lists, &pairs(&state));
            let view = decode_reply(payload(&frame)).expect("decodes");
            prop_assert_eq!(view.lists().map(<[_]>::to_vec).collect::<Vec<_>>(), lists);
            prop_assert_eq!(view.state, pairs(&state));
        }

        #[test]
        fn arbitrary_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(view) = decode_reply(&bytes) {
                let _ = view.check(view.batch, std::iter::repeat_n("k", view.list_count()), true);
                prop_assert!(view.outputs.len() <= bytes.len());
            }
            let _ = decode_request(&bytes);
            let _ = FrameHeader::parse(&bytes, 64);
        }
    }
}
