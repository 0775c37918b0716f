//! Operators: the deterministic pure functions that RainStorm stages run.
//!
//! This module owns the [`Operator`] contract, the built-in operators, their text specs
//! ([`OperatorSpec`], parsed from and printed back to e.g. `column:Sign_Post=Streetlight`) and
//! [`derive`], which gives outputs their ids. Invariants the framework relies on:
//! * `apply` is a pure function of `(tuple, state)`: replaying a tuple gives the same outputs, so
//!   output `i` of tuple `t` always gets id `t.id.child(i)`, and input replayed after a rollback
//!   yields again the outputs that were never committed;
//! * a stateful operator never keeps state itself: the framework partitions by
//!   [`Operator::state_key`], passes the stored state for that key (`None` if there is none yet)
//!   and stores [`Applied::state`] when it is `Some`; the task's checkpoint snapshots carry these
//!   changes, so a rollback restores each key's state as of the input before the barrier;
//! * no input panics: malformed rows are handled by documented rules, malformed state is an
//!   [`OperatorError`].
//!
//! Values are CSV rows split as [`split_record`] splits them, but read field by field without
//! allocating ([`field`], [`fields`]): per tuple, a built-in allocates only what it returns. Column
//! names are resolved once, at
//! [`OperatorSpec::build`], against the input's header (a leading BOM and surrounding spaces of
//! header names are ignored; names are case-sensitive). A column reference made only of digits
//! is a 1-based index, so a column literally named `3` must be referred to by its index.

use std::fmt;
use std::num::NonZeroU32;

use std::borrow::Cow;

use memchr::memmem;
use regex::{Regex, RegexBuilder};
use thiserror::Error;

#[cfg(doc)]
use super::csv::split_record;
use super::csv::{field, fields, join_into};
use super::tuple::Tuple;

/// Longest accepted `regex:` pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;
/// Compiled-program and lazy-DFA size limit for `regex:` patterns, in bytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const OPERATORS: &str = "grep:<substring>, regex:<pattern>, column:<col>=<value>, project:<col>,..., split, \
                         count:<col|value>, program:<hydfs file>@<sha256> [args...]";
/// Longest accepted operator-program argument list, in bytes of spec text.
pub const MAX_PROGRAM_SPEC_LEN: usize = 4096;

/// One output of [`Operator::apply`]; its id is assigned by [`derive`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub key: String,
    pub value: String,
}

/// What [`Operator::apply`] produced for one tuple.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub outputs: Vec<Output>,
    /// The new state under the tuple's state key; `None` = unchanged (always for stateless ops).
    pub state: Option<String>,
}

/// A stage's operator. Implementations must be deterministic and must not panic.
pub trait Operator: Send {
    /// A label for logs: the built-ins return their spec text.
    fn name(&self) -> &str;
    /// Whether `apply` reads and returns keyed state.
    fn is_stateful(&self) -> bool;
    /// The key the framework partitions by and keeps state under (the tuple key if stateless).
    fn state_key(&self, tuple: &Tuple) -> Result<String, OperatorError>;
    /// Processes one tuple given the current state for `state_key(tuple)`.
    fn apply(&self, tuple: &Tuple, state: Option<&str>) -> Result<Applied, OperatorError>;
}

/// The tuples derived from `tuple`: output `i` gets id `tuple.id.child(i)`.
pub fn derive(tuple: &Tuple, applied: &Applied) -> Vec<Tuple> {
    (applied.outputs.iter().zip(0..=u32::MAX))
        .map(|(out, i)| Tuple { id: tuple.id.child(i), key: out.key.clone(), value: out.value.clone() })
        .collect()
}

/// [`derive`], taking the outputs by value (no copy of their keys and values).
pub fn derive_owned(tuple: &Tuple, outputs: Vec<Output>) -> impl Iterator<Item = Tuple> + '_ {
    (outputs.into_iter().zip(0..=u32::MAX)).map(move |(out, i)| Tuple {
        id: tuple.id.child(i),
        key: out.key,
        value: out.value,
    })
}

/// [`derive`], appending to `out` and moving the outputs' keys and values instead of copying them.
pub fn derive_into(tuple: &Tuple, applied: Applied, out: &mut Vec<Tuple>) {
    out.extend(derive_owned(tuple, applied.outputs));
}

/// A failure while applying an operator to one tuple.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum OperatorError {
    #[error("`{operator}`: state {state:?} of key {key:?} is not a decimal count")]
    MalformedState { operator: String, key: String, state: String },
    #[error("`{operator}`: the count of key {key:?} overflows")]
    CountOverflow { operator: String, key: String },
}

/// Why an operator spec could not be parsed or built.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("empty operator spec; expected one of: {OPERATORS}")]
    Empty,
    #[error("unknown operator `{0}`; expected one of: {OPERATORS}")]
    UnknownOperator(String),
    #[error("`{operator}` is missing its argument; usage: {usage}")]
    MissingArgument { operator: &'static str, usage: &'static str },
    #[error("`split` takes no argument (got `{0}`)")]
    UnexpectedArgument(String),
    #[error("empty column reference in `{0}`")]
    EmptyColumn(String),
    #[error("`{0}` is not a valid column index (indices are 1-based)")]
    BadIndex(String),
    #[error("column index {index} is out of range: the header has {columns} columns")]
    IndexOutOfRange { index: u32, columns: usize },
    #[error("unknown column `{name}`; available columns: {}", .available.join(", "))]
    UnknownColumn { name: String, available: Vec<String> },
    #[error("column `{name}` is named but the input has no header (no columns); use a 1-based index")]
    NoHeader { name: String },
    #[error("regex pattern is {0} bytes long; the limit is {MAX_PATTERN_LEN}")]
    PatternTooLong(usize),
    #[error("invalid regex `{pattern}`: {message}")]
    BadRegex { pattern: String, message: String },
    #[error("bad operator program `{spec}`: {why}; usage: program:<hydfs file>@<sha256 hex> [args...]")]
    BadProgram { spec: String, why: &'static str },
}

/// An operator program: an executable stored in HyDFS as `file`, whose bytes hash to `sha256`
/// (so every worker runs the same program), started with `args`. Programs speak the protocol
/// of `docs/OPERATORS.md`; the driver runs them, the framework keeps their state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProgramSpec {
    pub file: String,
    /// Lowercase hex SHA-256 of the executable's bytes.
    pub sha256: String,
    pub args: Vec<String>,
}

impl ProgramSpec {
    /// Parses `<file>@<sha256> [args...]` (the part after `program:`); arguments are split
    /// and unquoted as a POSIX shell would.
    fn parse(text: &str, spec: &str) -> Result<ProgramSpec, SpecError> {
        let bad = |why| SpecError::BadProgram { spec: spec.to_owned(), why };
        if spec.len() > MAX_PROGRAM_SPEC_LEN {
            return Err(bad("longer than 4096 bytes"));
        }
        let text = text.trim_start();
        let (target, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        let (file, sha256) = target.rsplit_once('@').ok_or_else(|| bad("missing `@<sha256>`"))?;
        if file.is_empty() {
            return Err(bad("empty file name"));
        }
        if sha256.len() != 64 || !sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("the hash must be 64 lowercase hex digits"));
        }
        let args = shlex::split(rest).ok_or_else(|| bad("unbalanced quotes in its arguments"))?;
        if args.iter().any(|arg| arg.contains('\0')) {
            return Err(bad("an argument holds a NUL byte, which no program argument can"));
        }
        let parsed = ProgramSpec { file: file.to_owned(), sha256: sha256.to_owned(), args };
        // Printing quotes the arguments again, which can make the text longer than it was: the
        // printed spec must parse back too.
        if "program:".len() + parsed.to_string().len() > MAX_PROGRAM_SPEC_LEN {
            return Err(bad("longer than 4096 bytes once its arguments are quoted"));
        }
        Ok(parsed)
    }

    /// The first 12 hex digits of the hash: enough to tell programs apart in logs.
    pub fn short_hash(&self) -> &str {
        &self.sha256[..12.min(self.sha256.len())]
    }
}

impl fmt::Display for ProgramSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.file, self.sha256)?;
        for arg in &self.args {
            // Quoting fails only for NUL bytes, which no argv can carry; print those escaped.
            match shlex::try_quote(arg) {
                Ok(quoted) => write!(f, " {quoted}")?,
                Err(_) => write!(f, " {arg:?}")?,
            }
        }
        Ok(())
    }
}

/// A stage's operator once built: a built-in applied in place, or a program its driver runs
/// batch by batch. A program's state is kept under the tuple key, so the upstream stage
/// partitions by tuple key for it.
pub enum StageOp {
    Builtin(Box<dyn Operator>),
    Program(ProgramSpec),
}

impl StageOp {
    /// A label for logs and errors.
    pub fn name(&self) -> String {
        match self {
            StageOp::Builtin(op) => op.name().to_owned(),
            StageOp::Program(p) => format!("program:{}@{}", p.file, p.short_hash()),
        }
    }

    /// The key a tuple is partitioned by and its state kept under.
    pub fn state_key(&self, tuple: &Tuple) -> Result<String, OperatorError> {
        match self {
            StageOp::Builtin(op) => op.state_key(tuple),
            StageOp::Program(_) => Ok(tuple.key.clone()),
        }
    }

    /// The built-in, owned, if this is one.
    pub fn into_builtin(self) -> Option<Box<dyn Operator>> {
        match self {
            StageOp::Builtin(op) => Some(op),
            StageOp::Program(_) => None,
        }
    }

    /// The built-in, if this is one.
    pub fn builtin(&self) -> Option<&dyn Operator> {
        match self {
            StageOp::Builtin(op) => Some(op.as_ref()),
            StageOp::Program(_) => None,
        }
    }
}

/// A column given by header name or by 1-based index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnRef {
    Name(String),
    Index(NonZeroU32),
}

impl ColumnRef {
    /// Parses a trimmed reference: all digits = 1-based index, otherwise a name.
    fn parse(text: &str, spec: &str) -> Result<ColumnRef, SpecError> {
        let text = text.trim();
        if text.is_empty() {
            Err(SpecError::EmptyColumn(spec.to_owned()))
        } else if text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse().map(ColumnRef::Index).map_err(|_| SpecError::BadIndex(text.to_owned()))
        } else {
            Ok(ColumnRef::Name(text.to_owned()))
        }
    }

    /// The 0-based position of this column, checked against the header when there is one.
    fn resolve(&self, header: Option<&[String]>) -> Result<usize, SpecError> {
        let clean = |h: &String| h.trim_start_matches('\u{feff}').trim().to_owned();
        match (self, header) {
            (ColumnRef::Index(index), None) => Ok(index.get() as usize - 1),
            (ColumnRef::Index(index), Some(header)) if index.get() as usize <= header.len() => {
                Ok(index.get() as usize - 1)
            }
            (ColumnRef::Index(index), Some(header)) => {
                Err(SpecError::IndexOutOfRange { index: index.get(), columns: header.len() })
            }
            (ColumnRef::Name(name), None) => Err(SpecError::NoHeader { name: name.clone() }),
            (ColumnRef::Name(name), Some(header)) => {
                header.iter().position(|h| clean(h) == *name).ok_or_else(|| SpecError::UnknownColumn {
                    name: name.clone(),
                    available: header.iter().map(clean).collect(),
                })
            }
        }
    }
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnRef::Name(name) => f.write_str(name),
            ColumnRef::Index(index) => write!(f, "{index}"),
        }
    }
}

/// What `count` groups by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CountBy {
    /// The whole value (`count:value`; `value` is reserved, so a column of that name needs its index).
    Value,
    Column(ColumnRef),
}

/// A built-in operator as written in a job description. Arguments are taken verbatim (not
/// trimmed) except column references, which are trimmed. `parse(spec.to_string()) == spec` for
/// every spec that `parse` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperatorSpec {
    /// `grep:<substring>`: keeps tuples whose value contains the substring, unchanged.
    Grep { needle: String },
    /// `regex:<pattern>`: keeps tuples whose value matches the pattern (unanchored), unchanged.
    Regex { pattern: String },
    /// `column:<col>=<value>`: keeps rows whose column equals `value` exactly after unquoting
    /// (split at the first `=`, so `value` may contain `=`). Rows too short never match.
    Column { column: ColumnRef, value: String },
    /// `project:<col>,<col>,...`: value = those columns joined as CSV, key unchanged. Missing
    /// columns of a short row project as empty strings.
    Project { columns: Vec<ColumnRef> },
    /// `split`: one output per word, key = the word, value = `1`. A word is a maximal run of
    /// alphanumeric characters and apostrophes (`'`), with apostrophes at its ends trimmed;
    /// everything else (whitespace, punctuation) separates words. Case is kept.
    Split,
    /// `count:<col|value>` (stateful): state key = the category (that column, or the whole
    /// value); state = its count in decimal; one output with key = category and value =
    /// `join_record([category, new count])`. A row too short has the empty category.
    Count { by: CountBy },
    /// `program:<hydfs file>@<sha256> [args...]`: an operator program (see [`ProgramSpec`]).
    Program(ProgramSpec),
}

fn compile(pattern: &str) -> Result<Regex, SpecError> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(SpecError::PatternTooLong(pattern.len()));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| SpecError::BadRegex { pattern: pattern.to_owned(), message: e.to_string() })
}

impl OperatorSpec {
    /// Parses `name[:argument]`. Regex patterns are compiled here so errors surface early.
    pub fn parse(text: &str) -> Result<OperatorSpec, SpecError> {
        let (op, arg) = match text.split_once(':') {
            Some((op, arg)) => (op, Some(arg)),
            None => (text, None),
        };
        let required = |operator: &'static str, usage: &'static str| match arg {
            Some(arg) if !arg.is_empty() => Ok(arg),
            _ => Err(SpecError::MissingArgument { operator, usage }),
        };
        match op {
            "" => Err(SpecError::Empty),
            "grep" => Ok(OperatorSpec::Grep { needle: required("grep", "grep:<substring>")?.to_owned() }),
            "regex" => {
                let pattern = required("regex", "regex:<pattern>")?;
                compile(pattern)?;
                Ok(OperatorSpec::Regex { pattern: pattern.to_owned() })
            }
            "column" => {
                const USAGE: &str = "column:<name or 1-based index>=<value>";
                let (column, value) = required("column", USAGE)?
                    .split_once('=')
                    .ok_or(SpecError::MissingArgument { operator: "column", usage: USAGE })?;
                Ok(OperatorSpec::Column { column: ColumnRef::parse(column, text)?, value: value.to_owned() })
            }
            "project" => {
                let columns = required("project", "project:<col>,<col>,...")?.split(',');
                let columns = columns.map(|c| ColumnRef::parse(c, text)).collect::<Result<_, _>>()?;
                Ok(OperatorSpec::Project { columns })
            }
            "split" => match arg {
                None | Some("") => Ok(OperatorSpec::Split),
                Some(arg) => Err(SpecError::UnexpectedArgument(arg.to_owned())),
            },
            "count" => {
                let by = required("count", "count:<col or 'value'>")?;
                let by = if by.trim() == "value" {
                    CountBy::Value
                } else {
                    CountBy::Column(ColumnRef::parse(by, text)?)
                };
                Ok(OperatorSpec::Count { by })
            }
            "program" => {
                const USAGE: &str = "program:<hydfs file>@<sha256> [args...]";
                let arg = required("program", USAGE)?;
                Ok(OperatorSpec::Program(ProgramSpec::parse(arg, text)?))
            }
            other => Err(SpecError::UnknownOperator(other.to_owned())),
        }
    }

    /// Builds the operator, resolving column names against `header` (the input's first row).
    /// A program is checked when its driver starts it (against the same header).
    pub fn build(&self, header: Option<&[String]>) -> Result<StageOp, SpecError> {
        let kind = match self {
            OperatorSpec::Program(p) => return Ok(StageOp::Program(p.clone())),
            OperatorSpec::Grep { needle } => Kind::Grep(Box::new(memmem::Finder::new(needle).into_owned())),
            OperatorSpec::Regex { pattern } => Kind::Regex(compile(pattern)?),
            OperatorSpec::Column { column, value } => {
                Kind::Column { index: column.resolve(header)?, value: value.clone() }
            }
            OperatorSpec::Project { columns } => {
                let indices: Vec<usize> =
                    columns.iter().map(|c| c.resolve(header)).collect::<Result<_, _>>()?;
                let mut order: Vec<(usize, usize)> = indices.iter().copied().zip(0..).collect();
                order.sort_unstable();
                Kind::Project { slots: indices.len(), order }
            }
            OperatorSpec::Split => Kind::Split,
            OperatorSpec::Count { by: CountBy::Value } => Kind::Count(None),
            OperatorSpec::Count { by: CountBy::Column(column) } => Kind::Count(Some(column.resolve(header)?)),
        };
        Ok(StageOp::Builtin(Box::new(Builtin { label: self.to_string(), kind })))
    }
}

impl fmt::Display for OperatorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OperatorSpec::Grep { needle } => write!(f, "grep:{needle}"),
            OperatorSpec::Regex { pattern } => write!(f, "regex:{pattern}"),
            OperatorSpec::Column { column, value } => write!(f, "column:{column}={value}"),
            OperatorSpec::Project { columns } => {
                f.write_str("project:")?;
                for (i, column) in columns.iter().enumerate() {
                    write!(f, "{}{column}", if i == 0 { "" } else { "," })?;
                }
                Ok(())
            }
            OperatorSpec::Split => f.write_str("split"),
            OperatorSpec::Count { by: CountBy::Value } => f.write_str("count:value"),
            OperatorSpec::Count { by: CountBy::Column(column) } => write!(f, "count:{column}"),
            OperatorSpec::Program(p) => write!(f, "program:{p}"),
        }
    }
}

/// A built operator; column positions are 0-based and already resolved.
enum Kind {
    Grep(Box<memmem::Finder<'static>>),
    Regex(Regex),
    Column {
        index: usize,
        value: String,
    },
    /// `slots` output columns; `order` pairs each one's field index with its slot, sorted by
    /// field index, so that one pass over the row's fields fills every slot.
    Project {
        slots: usize,
        order: Vec<(usize, usize)>,
    },
    Split,
    Count(Option<usize>),
}

struct Builtin {
    label: String,
    kind: Kind,
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
}

/// A count state: non-empty ASCII decimal digits fitting in a `u64` (no sign, no spaces).
fn parse_count(state: &str) -> Option<u64> {
    (!state.is_empty() && state.bytes().all(|b| b.is_ascii_digit())).then(|| state.parse().ok()).flatten()
}

impl Builtin {
    fn filter(tuple: &Tuple, keep: bool) -> Applied {
        let outputs =
            if keep { vec![Output { key: tuple.key.clone(), value: tuple.value.clone() }] } else { vec![] };
        Applied { outputs, state: None }
    }

    /// The category a `count` groups `tuple` by, borrowed from its value where possible.
    fn category<'t>(tuple: &'t Tuple, by: Option<usize>) -> Cow<'t, str> {
        match by {
            None => Cow::Borrowed(&tuple.value),
            Some(index) => field(&tuple.value, index).unwrap_or_default(),
        }
    }

    /// The fields of `row` at the columns of a projection, joined as CSV: one pass over the row.
    fn project(row: &str, slots: usize, order: &[(usize, usize)]) -> String {
        let mut picked: Vec<Cow<str>> = vec![Cow::Borrowed(""); slots];
        let mut wanted = order.iter().peekable();
        for (position, text) in fields(row).enumerate() {
            while let Some((_, slot)) = wanted.next_if(|(index, _)| *index == position) {
                picked[*slot] = text.clone();
            }
            if wanted.peek().is_none() {
                break;
            }
        }
        let mut value = String::with_capacity(picked.iter().map(|f| f.len() + 1).sum());
        join_into(&mut value, picked.iter().map(|f| f.as_ref()));
        value
    }
}

impl Operator for Builtin {
    fn name(&self) -> &str {
        &self.label
    }

    fn is_stateful(&self) -> bool {
        match self.kind {
            Kind::Count(_) => true,
            Kind::Grep(_) | Kind::Regex(_) | Kind::Column { .. } | Kind::Project { .. } | Kind::Split => {
                false
            }
        }
    }

    fn state_key(&self, tuple: &Tuple) -> Result<String, OperatorError> {
        match self.kind {
            Kind::Count(by) => Ok(Builtin::category(tuple, by).into_owned()),
            Kind::Grep(_) | Kind::Regex(_) | Kind::Column { .. } | Kind::Project { .. } | Kind::Split => {
                Ok(tuple.key.clone())
            }
        }
    }

    fn apply(&self, tuple: &Tuple, state: Option<&str>) -> Result<Applied, OperatorError> {
        match &self.kind {
            Kind::Grep(needle) => Ok(Builtin::filter(tuple, needle.find(tuple.value.as_bytes()).is_some())),
            Kind::Regex(re) => Ok(Builtin::filter(tuple, re.is_match(&tuple.value))),
            Kind::Column { index, value } => {
                Ok(Builtin::filter(tuple, field(&tuple.value, *index).is_some_and(|f| f == value.as_str())))
            }
            Kind::Project { slots, order } => {
                let value = Builtin::project(&tuple.value, *slots, order);
                Ok(Applied { outputs: vec![Output { key: tuple.key.clone(), value }], state: None })
            }
            Kind::Split => {
                let outputs =
                    words(&tuple.value).map(|w| Output { key: w.to_owned(), value: "1".to_owned() });
                Ok(Applied { outputs: outputs.collect(), state: None })
            }
            Kind::Count(by) => {
                let key = Builtin::category(tuple, *by);
                let previous = match state {
                    None => 0,
                    Some(state) => parse_count(state).ok_or_else(|| OperatorError::MalformedState {
                        operator: self.label.clone(),
                        key: key.clone().into_owned(),
                        state: state.to_owned(),
                    })?,
                };
                let count = previous
                    .checked_add(1)
                    .ok_or_else(|| OperatorError::CountOverflow {
                        operator: self.label.clone(),
                        key: key.clone().into_owned(),
                    })?
                    .to_string();
                let mut value = String::with_capacity(key.len() + count.len() + 3);
                join_into(&mut value, [key.as_ref(), count.as_str()]);
                Ok(Applied { outputs: vec![Output { key: key.into_owned(), value }], state: Some(count) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::rainstorm::csv::{join_record, split_record};
    use crate::rainstorm::tuple::TupleId;

    /// The first 200 lines of the demo dataset (public City of Champaign traffic-sign data).
    const DATASET: &str = include_str!("testdata/traffic_signs_head.csv");
    const FUZZ_SPECS: [&str; 7] =
        ["grep:a", "regex:a+b", "column:2=a", "project:5,1", "split", "count:2", "count:value"];

    fn header() -> Vec<String> {
        ["\u{feff}X", "OBJECTID", "Sign_Type", "Sign_Post", "Category"].map(String::from).to_vec()
    }

    fn build(spec: &str) -> Box<dyn Operator> {
        let built = OperatorSpec::parse(spec).and_then(|s| s.build(Some(&header()))).expect("valid spec");
        built.into_builtin().expect("a built-in")
    }

    fn row(line: u64, value: &str) -> Tuple {
        Tuple::source("signs.csv", line, value)
    }

    fn values(op: &dyn Operator, tuple: &Tuple) -> Vec<(String, String)> {
        let applied = op.apply(tuple, None).expect("apply");
        assert_eq!(applied.state, None);
        applied.outputs.into_iter().map(|o| (o.key, o.value)).collect()
    }

    fn pair(key: &str, value: &str) -> (String, String) {
        (key.to_owned(), value.to_owned())
    }

    #[test]
    fn filters_keep_tuples_unchanged() {
        let t = row(3, r#"1,7,"Stop, all way",Streetlight,Regulatory"#);
        for spec in ["grep:all way", "regex:^1,\\d+,", "column:Sign_Post=Streetlight", "column:4=Streetlight"]
        {
            let op = build(spec);
            assert!(!op.is_stateful() && op.name() == spec);
            assert_eq!(op.state_key(&t), Ok("signs.csv:3".to_owned()));
            assert_eq!(values(&*op, &t), [pair("signs.csv:3", &t.value)], "{spec}");
        }
        for spec in ["grep:All way", "regex:^7", "column:Sign_Post=Street", "column:3=Stop"] {
            assert!(values(&*build(spec), &t).is_empty(), "{spec}");
        }
        assert_eq!(values(&*build("column:3=Stop, all way"), &t).len(), 1, "matches after unquoting");
        assert!(values(&*build("column:Category="), &row(4, "a,b")).is_empty(), "short rows never match");
    }

    #[test]
    fn project_joins_columns_as_csv() {
        let op = build("project:OBJECTID,Sign_Type");
        assert_eq!(
            values(&*op, &row(2, r#"1,7,"Stop, all way",x"#)),
            [pair("signs.csv:2", r#"7,"Stop, all way""#)]
        );
        assert_eq!(values(&*op, &row(2, "1")), [pair("signs.csv:2", ",")], "missing columns are empty");
        assert_eq!(values(&*build("project:5, 1"), &row(2, "a,b,c,d,e")), [pair("signs.csv:2", "e,a")]);
    }

    #[test]
    fn split_emits_words() {
        let outputs = values(&*build("split"), &row(1, "Don't  park: 3am-5am, 'here'!"));
        let words: Vec<&str> = outputs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(words, ["Don't", "park", "3am", "5am", "here"]);
        assert!(outputs.iter().all(|(_, v)| v == "1"));
        assert!(values(&*build("split"), &row(1, " ,' ")).is_empty());
    }

    #[test]
    fn count_continues_from_given_state() {
        let op = build("count:Category");
        let t = row(9, "1,2,Stop,Post,Regulatory");
        assert!(op.is_stateful());
        assert_eq!(op.state_key(&t), Ok("Regulatory".to_owned()));
        let first = op.apply(&t, None).expect("apply");
        assert_eq!(first.state.as_deref(), Some("1"));
        let after_crash = op.apply(&t, Some("10")).expect("apply");
        assert_eq!(after_crash.outputs, [Output { key: "Regulatory".into(), value: "Regulatory,11".into() }]);
        assert_eq!(after_crash.state.as_deref(), Some("11"));
        let short = op.apply(&row(9, "1,2"), Some("4")).expect("apply");
        assert_eq!(short.outputs, [Output { key: String::new(), value: ",5".into() }]);
        let by_value = build("count:value").apply(&row(1, "a,b"), None).expect("apply");
        assert_eq!(by_value.outputs, [Output { key: "a,b".into(), value: "\"a,b\",1".into() }]);
    }

    #[test]
    fn malformed_or_full_state_is_an_error() {
        let op = build("count:value");
        for state in ["", "x", "-1", "+1", " 1", "1.0", "99999999999999999999"] {
            assert!(
                matches!(op.apply(&row(1, "k"), Some(state)), Err(OperatorError::MalformedState { .. })),
                "{state:?}"
            );
        }
        let max = u64::MAX.to_string();
        assert!(matches!(op.apply(&row(1, "k"), Some(&max)), Err(OperatorError::CountOverflow { .. })));
    }

    #[test]
    fn spec_errors() {
        let parse = OperatorSpec::parse;
        let built = |spec: &str, header: Option<&[String]>| parse(spec).and_then(|s| s.build(header)).err();
        assert_eq!(parse(""), Err(SpecError::Empty));
        assert_eq!(parse("sort:x"), Err(SpecError::UnknownOperator("sort".into())));
        for spec in ["grep", "grep:", "regex:", "project:", "count", "column:Sign_Post"] {
            assert!(matches!(parse(spec), Err(SpecError::MissingArgument { .. })), "{spec}");
        }
        assert_eq!(parse("split:x"), Err(SpecError::UnexpectedArgument("x".into())));
        assert_eq!(parse("project:a,,b"), Err(SpecError::EmptyColumn("project:a,,b".into())));
        assert_eq!(parse("column:0=x"), Err(SpecError::BadIndex("0".into())));
        assert_eq!(parse("count:99999999999"), Err(SpecError::BadIndex("99999999999".into())));
        assert_eq!(
            built("count:6", Some(&header())),
            Some(SpecError::IndexOutOfRange { index: 6, columns: 5 })
        );
        assert!(built("count:6", None).is_none(), "indices are unchecked without a header");
        let unknown = built("project:OBJECTID,Colour", Some(&header())).expect("error");
        assert_eq!(
            unknown.to_string(),
            "unknown column `Colour`; available columns: X, OBJECTID, Sign_Type, Sign_Post, Category"
        );
        assert_eq!(built("count:Category", None), Some(SpecError::NoHeader { name: "Category".into() }));
        let Err(SpecError::BadRegex { pattern, message }) = parse("regex:a(b") else {
            panic!("bad regex accepted")
        };
        assert!(pattern == "a(b" && !message.is_empty());
        let long = format!("regex:{}", "a".repeat(MAX_PATTERN_LEN + 1));
        assert_eq!(parse(&long), Err(SpecError::PatternTooLong(MAX_PATTERN_LEN + 1)));
        assert!(matches!(parse("regex:\\w{1000}{1000}"), Err(SpecError::BadRegex { .. })), "size limit");
    }

    #[test]
    fn display_round_trips() {
        for spec in [
            "grep: a:b ",
            "regex:^x=\\d",
            "column:Sign_Post=a=b",
            "column:3=",
            "project:1,OBJECTID",
            "split",
            "count:value",
            "count:Category",
        ] {
            let parsed = OperatorSpec::parse(spec).expect("valid");
            assert_eq!(parsed.to_string(), spec);
            assert_eq!(OperatorSpec::parse(&parsed.to_string()), Ok(parsed));
        }
        assert_eq!(OperatorSpec::parse("project: a , 2").map(|s| s.to_string()), Ok("project:a,2".into()));
    }

    /// Found by fuzzing (`operator_output`): a program argument holding a NUL printed as a Rust
    /// string literal, which parsed back to another argument.
    #[test]
    fn a_program_argument_with_a_nul_is_refused() {
        let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let spec = format!("program:ops/app1@{hash} \"\u{3}\0Stop, All\"");
        assert!(matches!(
            OperatorSpec::parse(&spec),
            Err(SpecError::BadProgram { why, .. }) if why.contains("NUL")
        ));
        let fine =
            OperatorSpec::parse(&format!("program:ops/app1@{hash} \"\u{3}Stop, All\"")).expect("valid");
        assert_eq!(OperatorSpec::parse(&fine.to_string()), Ok(fine));
    }

    /// Found by fuzzing (`operator_output`): a spec under the length limit whose arguments,
    /// quoted again when printed, made a spec over it, which did not parse back.
    #[test]
    fn a_program_spec_that_prints_over_the_limit_is_refused() {
        let hash = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let prefix = format!("program:ops/p@{hash} ");
        let quotes = "'".repeat(MAX_PROGRAM_SPEC_LEN - prefix.len() - 2);
        let text = format!("{prefix}\"{quotes}\"");
        assert!(text.len() <= MAX_PROGRAM_SPEC_LEN);
        match OperatorSpec::parse(&text) {
            Ok(spec) => assert_eq!(OperatorSpec::parse(&spec.to_string()), Ok(spec)),
            Err(e) => assert!(matches!(e, SpecError::BadProgram { why, .. } if why.contains("quoted"))),
        }
        let short = OperatorSpec::parse(&format!("{prefix}\"''\"")).expect("valid");
        assert_eq!(OperatorSpec::parse(&short.to_string()), Ok(short));
    }

    #[test]
    fn derive_assigns_child_ids() {
        let t = Tuple { id: TupleId::source(4).child(2), key: "k".into(), value: "a b".into() };
        let applied = build("split").apply(&t, None).expect("apply");
        let derived = derive(&t, &applied);
        let ids: Vec<String> = derived.iter().map(|d| d.id.to_string()).collect();
        assert_eq!(ids, ["line 4/2/0", "line 4/2/1"]);
        assert_eq!((derived[1].key.as_str(), derived[1].value.as_str()), ("b", "1"));
        let mut moved = vec![t.clone()];
        derive_into(&t, applied, &mut moved);
        assert_eq!(moved[1..], derived[..], "derive_into appends the same tuples");
    }

    /// Runs `ops` in sequence over the data lines (line 1 is the header) with a single-process
    /// reference loop; returns each stage's outputs and final keyed state.
    fn run(lines: &[&str], ops: &[Box<dyn Operator>]) -> (Vec<Vec<Tuple>>, Vec<BTreeMap<String, String>>) {
        let mut outputs = vec![Vec::new(); ops.len()];
        let mut states = vec![BTreeMap::new(); ops.len()];
        for (line, text) in (1..).zip(lines).skip(1) {
            let mut batch = vec![Tuple::source("Traffic_Signs.csv", line, *text)];
            for (stage, op) in ops.iter().enumerate() {
                let mut next = Vec::new();
                for tuple in &batch {
                    let key = op.state_key(tuple).expect("state key");
                    let applied =
                        op.apply(tuple, states[stage].get(&key).map(String::as_str)).expect("apply");
                    if let Some(state) = &applied.state {
                        states[stage].insert(key, state.clone());
                    }
                    next.extend(derive(tuple, &applied));
                }
                outputs[stage].extend(next.iter().cloned());
                batch = next;
            }
        }
        (outputs, states)
    }

    fn dataset() -> (String, Vec<String>) {
        let header = split_record(DATASET.lines().next().expect("a header line"));
        (DATASET.to_string(), header)
    }

    fn app(specs: [&str; 2], header: &[String]) -> Vec<Box<dyn Operator>> {
        let build = |s: &str| OperatorSpec::parse(s).and_then(|s| s.build(Some(header))).expect("valid app");
        specs.map(|s| build(s).into_builtin().expect("a built-in")).into()
    }

    #[test]
    fn demo_app_1_grep_then_project() {
        let (text, header) = dataset();
        let lines: Vec<&str> = text.lines().take(200).collect();
        let (outputs, _) = run(&lines, &app(["grep:Parking", "project:OBJECTID,Sign_Type"], &header));
        let expected = lines.iter().skip(1).filter(|l| l.contains("Parking")).count();
        assert!(expected > 0 && outputs[1].len() == expected);
        for t in &outputs[1] {
            let fields = split_record(&t.value);
            let source = split_record(lines[t.id.line as usize - 1]);
            assert_eq!(fields, [source[2].clone(), source[3].clone()], "{}", t.id);
            assert!(fields[0].parse::<u64>().is_ok() && t.id.path == [0, 0]);
            assert_eq!(t.key, format!("Traffic_Signs.csv:{}", t.id.line));
        }
    }

    #[test]
    fn demo_app_2_filter_then_count() {
        let (text, header) = dataset();
        let lines: Vec<&str> = text.lines().take(200).collect();
        let (outputs, states) =
            run(&lines, &app(["column:Sign_Post=Punched Telespar", "count:Category"], &header));
        let matching = outputs[0].len();
        let total: u64 = states[1].values().map(|c| c.parse::<u64>().expect("count")).sum();
        assert!(matching > 0 && total == matching as u64 && outputs[1].len() == matching);
        for (category, count) in &states[1] {
            let last = outputs[1].iter().rev().find(|t| &t.key == category).expect("output per category");
            assert_eq!(split_record(&last.value), [category.clone(), count.clone()]);
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(
            text in "(grep|regex|column|project|split|count|x)?:?[a-z0-9=,: ()\\\\*]{0,12}|\\PC{0,20}",
        ) {
            if let Ok(spec) = OperatorSpec::parse(&text) {
                prop_assert_eq!(OperatorSpec::parse(&spec.to_string()), Ok(spec.clone()));
                let _ = spec.build(Some(&header()));
                let _ = spec.build(None);
            }
        }

        /// The built-ins read fields without allocating; they must read what `split_record` splits.
        #[test]
        fn builtins_read_the_fields_split_record_gives(
            value in "[ab,\"]{0,24}|\\PC{0,24}",
            state in proptest::option::of(0u64..1000),
        ) {
            let t = row(1, &value);
            let fields = split_record(&value);
            let at = |i: usize| fields.get(i).cloned().unwrap_or_default();
            let kept = |spec: &str| !values(&*build(spec), &t).is_empty();
            prop_assert_eq!(kept("column:2=a"), fields.get(1).is_some_and(|f| f == "a"));
            prop_assert_eq!(kept("column:1="), fields[0].is_empty());
            prop_assert_eq!(kept("grep:a,"), value.contains("a,"));
            let projected = values(&*build("project:5,1,2,1"), &t);
            prop_assert_eq!(&projected[0].1, &join_record(&[&at(4), &at(0), &at(1), &at(0)]));
            let count = build("count:2");
            let key = count.state_key(&t).expect("a key");
            prop_assert_eq!(&key, &at(1));
            let state_text = state.map(|s| s.to_string());
            let applied = count.apply(&t, state_text.as_deref()).expect("a count");
            let next = (state.unwrap_or(0) + 1).to_string();
            prop_assert_eq!(&applied.outputs, &vec![Output { key: key.clone(), value: join_record(&[&key, &next]) }]);
            prop_assert_eq!(applied.state, Some(next));
        }

        #[test]
        fn apply_never_panics(
            value in "[a-z\",' ]{0,30}|\\PC{0,30}",
            state in proptest::option::of("[0-9]{0,21}|\\PC{0,4}"),
        ) {
            let t = row(1, &value);
            for spec in FUZZ_SPECS {
                let op = build(spec);
                let _ = op.state_key(&t);
                let _ = op.apply(&t, state.as_deref());
            }
        }
    }
}
