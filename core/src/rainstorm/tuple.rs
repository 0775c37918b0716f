//! Tuple identities and tuples.
//!
//! A [`TupleId`] names a tuple for its whole life within its job: the physical `line` of the
//! job's input it came from (from 1) plus the `path` of output indices through which each stage
//! derived it. A job reads exactly one input file, so the file is not part of the id (it is in
//! the source tuple's key, `<file>:<line>`). Invariants: a source tuple has an empty path;
//! output `i` of tuple `t` has id `t.id.child(i)`, so ids are deterministic across replays and
//! unique as long as operators are deterministic. Ids order by (line, path) so they can be kept
//! in `BTreeSet`s.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The identity of a tuple: its source line and its derivation path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TupleId {
    /// The physical line number in the job's input, from 1.
    pub line: u64,
    /// The output index at each stage that derived this tuple (empty for a source tuple).
    pub path: Vec<u32>,
}

impl TupleId {
    /// The id of the source tuple for physical line `line`.
    pub fn source(line: u64) -> TupleId {
        TupleId { line, path: Vec::new() }
    }

    /// The id of output `index` derived from the tuple with this id.
    pub fn child(&self, index: u32) -> TupleId {
        let mut path = Vec::with_capacity(self.path.len() + 1);
        path.extend_from_slice(&self.path);
        path.push(index);
        TupleId { line: self.line, path }
    }
}

/// `line <n>`, then `/index` per derivation step: `line 12`, `line 12/0/3`.
impl fmt::Display for TupleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        self.path.iter().try_for_each(|index| write!(f, "/{index}"))
    }
}

/// A keyed tuple flowing between stages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuple {
    pub id: TupleId,
    pub key: String,
    pub value: String,
}

impl Tuple {
    /// The source tuple of physical line `line` of `file`: key `file:line`, value the line
    /// (without terminator).
    pub fn source(file: &str, line: u64, text: impl Into<String>) -> Tuple {
        Tuple { key: format!("{file}:{line}"), id: TupleId::source(line), value: text.into() }
    }

    /// Bytes this tuple takes in a batch, roughly: what windows and batch sizes count.
    pub fn weight(&self) -> usize {
        TUPLE_OVERHEAD_BYTES + self.key.len() + self.value.len() + 4 * self.id.path.len()
    }
}

/// The largest tuple (key and value) a job carries: a longer input line or operator output
/// fails its task, so that any batch fits a stream frame.
pub const MAX_TUPLE_BYTES: usize = 4 << 20;

/// What a tuple costs in a batch beyond its key, value and path: its id, lengths and framing.
pub const TUPLE_OVERHEAD_BYTES: usize = 32;

/// The physical lines of an input file, numbered from 1: split at `\n`, a `\r` before it
/// dropped, no line after a final terminator. Invalid UTF-8 is replaced (U+FFFD), never refused.
pub fn source_lines(content: &[u8]) -> impl Iterator<Item = (u64, String)> + '_ {
    let body = content.strip_suffix(b"\n").unwrap_or(content);
    let lines = (!content.is_empty()).then(|| body.split(|b| *b == b'\n')).into_iter().flatten();
    lines.zip(1..).map(|(line, n)| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        (n, String::from_utf8_lossy(line).into_owned())
    })
}

/// One output as a line of a job's destination file: its value, with `\\`, newline and carriage
/// return escaped as `\\\\`, `\\n` and `\\r` so that every output is exactly one line.
pub fn dest_line(tuple: &Tuple) -> String {
    let mut line = String::with_capacity(tuple.value.len() + 1);
    for c in tuple.value.chars() {
        match c {
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            c => line.push(c),
        }
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn display_and_children() {
        let id = TupleId::source(12);
        assert_eq!(id.to_string(), "line 12");
        assert_eq!(id.child(0).child(3).to_string(), "line 12/0/3");
        assert!(id.child(0).path.len() == 1 && id.path.is_empty());
    }

    #[test]
    fn ordering_is_by_file_line_path() {
        let a = TupleId::source(2);
        let set: BTreeSet<TupleId> =
            [a.child(1), TupleId::source(10), a.clone(), a.child(0)].into_iter().collect();
        let shown: Vec<String> = set.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["line 2", "line 2/0", "line 2/1", "line 10"]);
    }

    #[test]
    fn physical_lines() {
        let lines = |s: &str| source_lines(s.as_bytes()).map(|(n, l)| format!("{n}:{l}")).collect::<Vec<_>>();
        assert_eq!(lines(""), Vec::<String>::new());
        assert_eq!(lines("a"), ["1:a"]);
        assert_eq!(lines("a\n"), ["1:a"]);
        assert_eq!(lines("a\r\nb\n\nc"), ["1:a", "2:b", "3:", "4:c"]);
        assert_eq!(lines("\"x\ny\"\n"), ["1:\"x", "2:y\""]);
        assert_eq!(lines("\n"), ["1:"]);
    }

    #[test]
    fn dest_lines_escape_line_breaks() {
        let t = |v: &str| dest_line(&Tuple { id: TupleId::source(1), key: String::new(), value: v.into() });
        assert_eq!(t("a,b"), "a,b\n");
        assert_eq!(t("a\nb\\c\r"), "a\\nb\\\\c\\r\n");
    }

    #[test]
    fn source_tuple_key_and_serde() {
        let t = Tuple::source("signs.csv", 7, "a,b");
        assert_eq!((t.key.as_str(), t.value.as_str()), ("signs.csv:7", "a,b"));
        let bytes = bincode::serialize(&t).expect("serialize");
        assert_eq!(bincode::deserialize::<Tuple>(&bytes).expect("deserialize"), t);
    }
}
