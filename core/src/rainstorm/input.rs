//! A job's input as its sources read it: the parts of the input file pinned when the job
//! started, line numbers from part metadata alone, one byte range per source, and a cursor that
//! turns the parts it fetched into numbered lines.
//!
//! HyDFS stores a file as writes cut into parts of at most a chunk, and every part's metadata
//! holds how many `\n` bytes it has and whether it ends with one. So the number of the line that
//! starts at a part boundary is known without reading any byte before it, and a source can read
//! just its own range. The leader pins the parts (in file order) when the job starts, so the job
//! reads the file as it was then, whatever is appended or merged later; parts are immutable, so
//! a part read later is the same bytes.
//!
//! Lines are exactly those of [`source_lines`](super::tuple::source_lines): split at `\n`, a `\r`
//! before it dropped, no line after a final terminator, a final line without one kept, invalid
//! UTF-8 replaced. A line belongs to the range holding its first byte, so the sources' ranges
//! give every line to exactly one source whatever the cut points.
//!
//! Invariants kept here:
//! * a [`Layout`] is consistent (every part non-empty, its newline count within its length, a
//!   part that ends with a newline has one), so offsets and line numbers never overflow or panic;
//! * the ranges of [`Layout::ranges`] are contiguous and cover `[0, len)`;
//! * a [`LineCursor`] yields lines in increasing order of offset and line number, each exactly
//!   once, only lines starting in its range, and holds at most its read-ahead in parts from the
//!   part its scan needs, plus the parts the line being scanned began in;
//! * a part is accepted only if its length and line metadata match the layout's.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::hydfs::types::{FileMeta, Stamp};

/// One part of the input, as the job pinned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPart {
    /// The write the part belongs to, and its index in that write.
    pub stamp: Stamp,
    pub part: u32,
    pub len: u32,
    /// `\n` bytes in the part.
    pub newlines: u32,
    /// Whether its last byte is `\n`.
    pub ends_with_newline: bool,
}

/// The input's parts in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub parts: Vec<InputPart>,
}

impl Manifest {
    /// The parts of a file as one replica holds it: the create, the merged appends in file
    /// order, then the pending appends in stamp order (the order a read returns them in).
    pub fn of(meta: &FileMeta) -> Manifest {
        let parts = meta
            .all_writes()
            .flat_map(|w| {
                w.parts.iter().zip(0u32..).map(|(p, i)| InputPart {
                    stamp: w.stamp,
                    part: i,
                    len: p.len,
                    newlines: p.newlines,
                    ends_with_newline: p.ends_with_newline,
                })
            })
            .collect();
        Manifest { parts }
    }
}

/// Why an input or one of its parts was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("input part {index} is inconsistent: {why}")]
    BadPart { index: usize, why: &'static str },
    #[error("input part {index} does not match its metadata: {why}")]
    PartMismatch { index: usize, why: String },
    #[error("input part {index} was not asked for")]
    Unexpected { index: usize },
}

/// A checked manifest with its prefix sums: where each part starts and how many newlines come
/// before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    parts: Vec<InputPart>,
    /// `starts[i]`: offset of part `i`; `starts[parts.len()]` is the length.
    starts: Vec<u64>,
    /// `newlines[i]`: `\n` bytes in parts before `i`.
    newlines: Vec<u64>,
}

impl Layout {
    pub fn new(manifest: Manifest) -> Result<Layout, InputError> {
        let mut starts = Vec::with_capacity(manifest.parts.len() + 1);
        let mut newlines = Vec::with_capacity(manifest.parts.len() + 1);
        let (mut at, mut nl) = (0u64, 0u64);
        for (index, p) in manifest.parts.iter().enumerate() {
            let bad = |why| Err(InputError::BadPart { index, why });
            if p.len == 0 {
                return bad("it is empty");
            }
            if p.newlines > p.len {
                return bad("more newlines than bytes");
            }
            if p.ends_with_newline && p.newlines == 0 {
                return bad("it ends with a newline but has none");
            }
            starts.push(at);
            newlines.push(nl);
            at += u64::from(p.len);
            nl += u64::from(p.newlines);
        }
        starts.push(at);
        newlines.push(nl);
        Ok(Layout { parts: manifest.parts, starts, newlines })
    }

    /// Bytes in the input.
    pub fn len(&self) -> u64 {
        self.starts[self.parts.len()]
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    pub fn parts(&self) -> &[InputPart] {
        &self.parts
    }

    /// Physical lines in the input: one per `\n`, plus a last line without one.
    pub fn lines(&self) -> u64 {
        let open_end = self.parts.last().is_some_and(|p| !p.ends_with_newline);
        self.newlines[self.parts.len()] + u64::from(open_end)
    }

    /// Offset of part `index`.
    pub fn start(&self, index: usize) -> u64 {
        self.starts[index.min(self.parts.len())]
    }

    /// The part holding byte `offset`, if any.
    pub fn part_at(&self, offset: u64) -> Option<usize> {
        if offset >= self.len() {
            return None;
        }
        // The last start at or below `offset`.
        Some(self.starts.partition_point(|s| *s <= offset) - 1)
    }

    /// `n` contiguous byte ranges covering the input, as equal as bytes allow.
    pub fn ranges(&self, n: u32) -> Vec<(u64, u64)> {
        let n = u64::from(n.max(1));
        let len = self.len();
        let cut = |i: u64| ((u128::from(len) * u128::from(i)) / u128::from(n)) as u64;
        let ranges: Vec<(u64, u64)> = (0..n).map(|i| (cut(i), cut(i + 1))).collect();
        debug_assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0));
        debug_assert!(ranges.first().is_some_and(|r| r.0 == 0) && ranges.last().is_some_and(|r| r.1 == len));
        ranges
    }
}

/// Where a source stands: the offset of the next line it emits and that line's number. What a
/// source's checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourcePos {
    pub offset: u64,
    pub line: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// The range's first byte; whether a line starts there is not known yet.
    Unresolved(u64),
    Line(SourcePos),
    Done,
}

/// What [`LineCursor::next_line`] has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    Line {
        number: u64,
        text: String,
    },
    /// The next line needs parts not fetched yet (see [`LineCursor::wanted`]).
    NeedData,
    /// Every line of the range was yielded.
    Done,
}

/// A source's reader over its byte range `[start, end)` of the input: asks for parts (a
/// bounded read-ahead), takes them in any order, and yields the lines that start in the range.
#[derive(Clone, Debug)]
pub struct LineCursor {
    layout: Layout,
    end: u64,
    at: At,
    read_ahead: usize,
    /// Parts fetched and not yet passed, by index.
    parts: BTreeMap<usize, Vec<u8>>,
    /// Parts asked for and not supplied yet.
    requested: BTreeSet<usize>,
    /// Where the scan for the current line's end goes on (a line crossing parts), if it did not
    /// find one yet: (part, offset within it).
    scan: Option<(usize, usize)>,
}

impl LineCursor {
    /// A cursor over `[start, end)` that has not read anything yet.
    pub fn new(layout: Layout, (start, end): (u64, u64), read_ahead: usize) -> LineCursor {
        let end = end.min(layout.len());
        let at = if start >= end { At::Done } else { At::Unresolved(start) };
        LineCursor::with(layout, end, at, read_ahead)
    }

    /// A cursor resuming at a line start its range's cursor reached before.
    pub fn resume(layout: Layout, pos: SourcePos, end: u64, read_ahead: usize) -> LineCursor {
        let end = end.min(layout.len());
        let at = if pos.offset >= end { At::Done } else { At::Line(pos) };
        LineCursor::with(layout, end, at, read_ahead)
    }

    fn with(layout: Layout, end: u64, at: At, read_ahead: usize) -> LineCursor {
        LineCursor {
            layout,
            end,
            at,
            read_ahead: read_ahead.max(1),
            parts: BTreeMap::new(),
            requested: BTreeSet::new(),
            scan: None,
        }
    }

    /// The next line start and its number, once known (`None` before the range's first line
    /// start is found; after the last line, the range end).
    pub fn position(&self) -> Option<SourcePos> {
        match self.at {
            At::Line(pos) => Some(pos),
            At::Unresolved(_) | At::Done => None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.at == At::Done
    }

    /// Bytes of fetched parts held.
    pub fn buffered_bytes(&self) -> usize {
        self.parts.values().map(Vec::len).sum()
    }

    /// The lowest part whose bytes the next line needs.
    fn needed(&self) -> Option<usize> {
        let offset = match self.at {
            At::Done => return None,
            At::Unresolved(offset) => offset,
            At::Line(pos) => pos.offset,
        };
        let first = self.layout.part_at(offset)?;
        Some(self.scan.map_or(first, |(part, _)| part))
    }

    /// Parts to fetch now (each is returned once, until it is supplied): from the part the next
    /// line needs, up to the read-ahead, never past the range's last part unless a line
    /// crossing the range end needs the next one.
    pub fn wanted(&mut self) -> Vec<usize> {
        let Some(need) = self.needed() else { return Vec::new() };
        let last_in_range = self.layout.part_at(self.end.saturating_sub(1)).unwrap_or(0);
        let upto =
            if need > last_in_range { need + 1 } else { (need + self.read_ahead).min(last_in_range + 1) }
                .min(self.layout.parts.len());
        let want: Vec<usize> =
            (need..upto).filter(|i| !self.parts.contains_key(i) && !self.requested.contains(i)).collect();
        self.requested.extend(want.iter().copied());
        want
    }

    /// Hands the cursor a part it asked for, checked against the layout.
    pub fn supply(&mut self, index: usize, bytes: Vec<u8>) -> Result<(), InputError> {
        if !self.requested.remove(&index) {
            return Err(InputError::Unexpected { index });
        }
        let meta = self.layout.parts[index];
        let mismatch = |why: String| Err(InputError::PartMismatch { index, why });
        if bytes.len() != meta.len as usize {
            return mismatch(format!("{} bytes, expected {}", bytes.len(), meta.len));
        }
        let newlines = memchr::memchr_iter(b'\n', &bytes).count();
        if newlines != meta.newlines as usize {
            return mismatch(format!("{newlines} newlines, expected {}", meta.newlines));
        }
        if (bytes.last() == Some(&b'\n')) != meta.ends_with_newline {
            return mismatch("its last byte disagrees with its metadata".to_owned());
        }
        // A part the cursor has passed meanwhile (a restart of the scan) is not kept.
        if self.needed().is_some_and(|need| index >= need) {
            self.parts.insert(index, bytes);
        }
        Ok(())
    }

    /// The next line of the range, if its bytes are here.
    pub fn next_line(&mut self) -> Next {
        loop {
            match self.at {
                At::Done => return Next::Done,
                At::Unresolved(start) => match self.resolve(start) {
                    Some(at) => self.at = at,
                    None => return Next::NeedData,
                },
                At::Line(pos) => return self.take_line(pos),
            }
        }
    }

    /// Finds the first line start at or after the range start, or says it needs a part.
    fn resolve(&mut self, start: u64) -> Option<At> {
        let Some(p) = self.layout.part_at(start) else { return Some(At::Done) };
        let part_start = self.layout.starts[p];
        let before = self.layout.newlines[p];
        if start == part_start && (p == 0 || self.layout.parts[p - 1].ends_with_newline) {
            return Some(At::Line(SourcePos { offset: start, line: before + 1 }));
        }
        let local = (start - part_start) as usize;
        let (newlines_before, line_starts_here) = if local == 0 {
            (before, false)
        } else {
            let bytes = self.parts.get(&p)?;
            let counted = memchr::memchr_iter(b'\n', &bytes[..local]).count() as u64;
            (before + counted, bytes[local - 1] == b'\n')
        };
        if line_starts_here {
            return Some(At::Line(SourcePos { offset: start, line: newlines_before + 1 }));
        }
        // Mid-line: the range's first line starts after the next newline.
        let (q, at) = self.find_newline(p, local)?;
        self.scan = None;
        let next = self.layout.starts[q] + at as u64 + 1;
        Some(self.after(SourcePos { offset: next, line: newlines_before + 2 }))
    }

    /// The position after a line ends: the next line start, or done at the range end or EOF.
    fn after(&mut self, next: SourcePos) -> At {
        self.drop_before(next.offset);
        if next.offset >= self.end {
            self.parts.clear();
            At::Done
        } else {
            At::Line(next)
        }
    }

    /// Drops parts that end at or before `offset`.
    fn drop_before(&mut self, offset: u64) {
        let keep = self.layout.part_at(offset).unwrap_or(self.layout.parts.len());
        self.parts = self.parts.split_off(&keep);
    }

    /// The first `\n` at or after (`part`, `local`), scanning on from where an earlier call
    /// stopped; `None` if a part it needs is missing, or `Some((parts.len(), 0))` at EOF.
    fn find_newline(&mut self, part: usize, local: usize) -> Option<(usize, usize)> {
        let (mut p, mut from) = self.scan.unwrap_or((part, local));
        loop {
            if p >= self.layout.parts.len() {
                return Some((p, 0));
            }
            let Some(bytes) = self.parts.get(&p) else {
                self.scan = Some((p, from));
                return None;
            };
            if let Some(i) = memchr::memchr(b'\n', &bytes[from..]) {
                return Some((p, from + i));
            }
            p += 1;
            from = 0;
        }
    }

    fn take_line(&mut self, pos: SourcePos) -> Next {
        let Some(p) = self.layout.part_at(pos.offset) else {
            self.at = At::Done;
            return Next::Done;
        };
        let local = (pos.offset - self.layout.starts[p]) as usize;
        let Some((q, at)) = self.find_newline(p, local) else { return Next::NeedData };
        self.scan = None;
        let mut text: Vec<u8>;
        let end_offset;
        if q == p {
            text = self.parts[&p][local..at].to_vec();
            end_offset = self.layout.starts[p] + at as u64;
        } else {
            // The line crosses parts (or runs to EOF).
            text = self.parts[&p][local..].to_vec();
            for i in p + 1..q.min(self.layout.parts.len()) {
                text.extend_from_slice(&self.parts[&i]);
            }
            if q < self.layout.parts.len() {
                text.extend_from_slice(&self.parts[&q][..at]);
                end_offset = self.layout.starts[q] + at as u64;
            } else {
                end_offset = self.layout.len();
            }
        }
        if text.last() == Some(&b'\r') {
            text.pop();
        }
        debug_assert!(end_offset >= pos.offset);
        let text = match String::from_utf8(text) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let next = SourcePos { offset: end_offset + 1, line: pos.line + 1 };
        self.at = if end_offset >= self.layout.len() { At::Done } else { self.after(next) };
        if self.at == At::Done {
            self.parts.clear();
        }
        Next::Line { number: pos.line, text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hydfs::types::Stamp;
    use crate::id::MemberId;
    use crate::rainstorm::tuple::source_lines;
    use proptest::prelude::*;

    fn stamp() -> Stamp {
        Stamp { ts: 1, client: MemberId { addr: "10.0.0.1:1".parse().expect("addr"), join_time: 1 }, seq: 1 }
    }

    /// The content cut at `cuts` into parts, and their layout.
    fn layout(content: &[u8], part_len: usize) -> (Layout, Vec<Vec<u8>>) {
        let chunks: Vec<Vec<u8>> = content.chunks(part_len.max(1)).map(<[u8]>::to_vec).collect();
        let parts = chunks
            .iter()
            .zip(0u32..)
            .map(|(c, i)| InputPart {
                stamp: stamp(),
                part: i,
                len: c.len() as u32,
                newlines: c.iter().filter(|b| **b == b'\n').count() as u32,
                ends_with_newline: c.last() == Some(&b'\n'),
            })
            .collect();
        (Layout::new(Manifest { parts }).expect("consistent"), chunks)
    }

    /// Every line of one cursor, supplying the parts it asks for (in reverse order of asking,
    /// to exercise out-of-order arrival).
    fn drain(cursor: &mut LineCursor, chunks: &[Vec<u8>]) -> Vec<(u64, String)> {
        let mut lines = Vec::new();
        for _ in 0..100_000 {
            match cursor.next_line() {
                Next::Line { number, text } => lines.push((number, text)),
                Next::Done => return lines,
                Next::NeedData => {
                    let want = cursor.wanted();
                    assert!(!want.is_empty(), "needs data but asks for none");
                    for i in want.into_iter().rev() {
                        cursor.supply(i, chunks[i].clone()).expect("matches");
                    }
                }
            }
        }
        panic!("the cursor did not finish");
    }

    fn all_sources(content: &[u8], part_len: usize, n: u32) -> Vec<(u64, String)> {
        let (layout, chunks) = layout(content, part_len);
        let mut lines = Vec::new();
        for range in layout.ranges(n) {
            let mut cursor = LineCursor::new(layout.clone(), range, 2);
            lines.extend(drain(&mut cursor, &chunks));
        }
        lines
    }

    #[test]
    fn sources_split_lines_exactly_like_a_whole_read() {
        for content in [&b""[..], b"a", b"a\n", b"\n", b"a\r\nb\n\nc", b"\"x\ny\"\n", b"ab\ncd\nef\n"] {
            for part_len in 1..5 {
                for n in 1..5 {
                    let expected: Vec<(u64, String)> = source_lines(content).collect();
                    assert_eq!(all_sources(content, part_len, n), expected, "{content:?} {part_len} {n}");
                }
            }
        }
    }

    #[test]
    fn line_counts_come_from_metadata_alone() {
        for content in [&b""[..], b"a", b"a\n", b"a\nb", b"\n\n", b"x\r\n"] {
            let (layout, _) = layout(content, 2);
            assert_eq!(layout.lines(), source_lines(content).count() as u64, "{content:?}");
        }
    }

    #[test]
    fn a_resumed_cursor_goes_on_after_its_position() {
        let content = b"one\ntwo\nthree\nfour\n";
        let (layout, chunks) = layout(content, 3);
        let mut cursor = LineCursor::new(layout.clone(), (0, layout.len()), 1);
        let first = drain_n(&mut cursor, &chunks, 2);
        assert_eq!(first, [(1, "one".to_owned()), (2, "two".to_owned())]);
        let pos = cursor.position().expect("at a line start");
        assert_eq!(pos, SourcePos { offset: 8, line: 3 });
        let mut again = LineCursor::resume(layout.clone(), pos, layout.len(), 1);
        assert_eq!(drain(&mut again, &chunks), [(3, "three".to_owned()), (4, "four".to_owned())]);
    }

    fn drain_n(cursor: &mut LineCursor, chunks: &[Vec<u8>], n: usize) -> Vec<(u64, String)> {
        let mut lines = Vec::new();
        while lines.len() < n {
            match cursor.next_line() {
                Next::Line { number, text } => lines.push((number, text)),
                Next::Done => break,
                Next::NeedData => {
                    for i in cursor.wanted() {
                        cursor.supply(i, chunks[i].clone()).expect("matches");
                    }
                }
            }
        }
        lines
    }

    #[test]
    fn bad_parts_and_layouts_are_refused() {
        let (layout, chunks) = layout(b"ab\ncd\n", 3);
        let mut cursor = LineCursor::new(layout.clone(), (0, 6), 4);
        assert_eq!(cursor.supply(0, chunks[0].clone()), Err(InputError::Unexpected { index: 0 }));
        assert_eq!(cursor.next_line(), Next::NeedData);
        assert_eq!(cursor.wanted(), vec![0, 1]);
        assert!(matches!(cursor.supply(0, b"abc".to_vec()), Err(InputError::PartMismatch { index: 0, .. })));
        assert!(matches!(cursor.supply(1, b"cd".to_vec()), Err(InputError::PartMismatch { index: 1, .. })));
        let part = |len, newlines, ends_with_newline| InputPart {
            stamp: stamp(),
            part: 0,
            len,
            newlines,
            ends_with_newline,
        };
        for bad in [part(0, 0, false), part(2, 3, false), part(2, 0, true)] {
            assert!(matches!(
                Layout::new(Manifest { parts: vec![bad] }),
                Err(InputError::BadPart { index: 0, .. })
            ));
        }
    }

    #[test]
    fn the_read_ahead_bounds_what_a_cursor_holds() {
        let content: Vec<u8> = (0..200).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let (layout, chunks) = layout(&content, 16);
        let mut cursor = LineCursor::new(layout.clone(), (0, layout.len()), 3);
        let mut most = 0;
        loop {
            match cursor.next_line() {
                Next::Line { .. } => {}
                Next::Done => break,
                Next::NeedData => {
                    for i in cursor.wanted() {
                        cursor.supply(i, chunks[i].clone()).expect("matches");
                    }
                }
            }
            most = most.max(cursor.buffered_bytes());
        }
        // The read-ahead from the part the scan needs, plus the part where a line crossing into
        // it began.
        assert!(most <= (3 + 1) * 16, "held {most} bytes");
    }

    proptest! {
        #[test]
        fn any_cut_of_any_input_yields_every_line_once(
            content in proptest::collection::vec(prop::sample::select(vec![b'a', b'\n', b'\r', 0xc3, 0xa9]), 0..120),
            part_len in 1usize..12,
            n in 1u32..7,
        ) {
            let expected: Vec<(u64, String)> = source_lines(&content).collect();
            prop_assert_eq!(all_sources(&content, part_len, n), expected);
        }
    }
}
