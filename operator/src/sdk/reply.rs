//! A reply being built by a program's code: its outputs, and the state of its keys.
//!
//! This module owns [`ReplyBuf`] (one batch's outputs, in one text buffer, each output's key and
//! value either the input tuple's or a range of that buffer), [`Outputs`] (how a per-tuple
//! function adds outputs to it) and [`KeyState`] (how it reads and sets its tuple's state).
//! Invariants: every output belongs to the list of the tuple being processed, so lists stay in
//! input order; an output's text ranges lie within the buffer; [`ReplyBuf::check`] refuses what
//! the worker would refuse, so a mistake of the program's code ends the program with a clear
//! message rather than a refused answer.

use std::collections::BTreeSet;
use std::ops::Range;

use crate::error::ProtocolError;
use crate::frame::{encode_reply, OutputRef, TupleRef};
use crate::message::{BatchReply, State, WireTuple};

/// Where an output's key or value is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Its input tuple's own.
    Input,
    /// A range of [`ReplyBuf::text`].
    Text(Range<usize>),
}

/// One batch's answer, before it is encoded.
#[derive(Debug, Default)]
pub(crate) struct ReplyBuf {
    /// Where each finished tuple's list ends in `outputs`.
    ends: Vec<usize>,
    outputs: Vec<(Part, Part)>,
    /// The text of every key and value that is not its input's.
    text: String,
    /// State changes (key, new state), each key once.
    pub(crate) state: Vec<(String, String)>,
}

impl ReplyBuf {
    pub(crate) fn clear(&mut self) {
        self.ends.clear();
        self.outputs.clear();
        self.text.clear();
        self.state.clear();
    }

    /// Closes the list of the tuple being processed.
    pub(crate) fn end_list(&mut self) {
        self.ends.push(self.outputs.len());
    }

    fn part(&mut self, text: Option<&str>) -> Part {
        match text {
            None => Part::Input,
            Some(text) => {
                let start = self.text.len();
                self.text.push_str(text);
                Part::Text(start..self.text.len())
            }
        }
    }

    /// Adds an output to the current list: `None` is the input tuple's key or value.
    pub(crate) fn push(&mut self, key: Option<&str>, value: Option<&str>) {
        let key = self.part(key);
        let value = self.part(value);
        self.outputs.push((key, value));
    }

    fn resolve<'a>(&'a self, part: &Part) -> Option<&'a str> {
        match part {
            Part::Input => None,
            Part::Text(range) => Some(&self.text[range.clone()]),
        }
    }

    fn lists(&self) -> impl ExactSizeIterator<Item = &[(Part, Part)]> + '_ {
        (0..self.ends.len()).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            &self.outputs[start..self.ends[i]]
        })
    }

    /// What the worker would check: one list per tuple, state only from a stateful program and
    /// only for keys of the batch.
    pub(crate) fn check(&self, tuples: &[TupleRef], stateful: bool) -> Result<(), ProtocolError> {
        debug_assert_eq!(self.ends.last().copied().unwrap_or(0), self.outputs.len(), "an unclosed list");
        if self.ends.len() != tuples.len() {
            return Err(ProtocolError::WrongOutputCount { expected: tuples.len(), got: self.ends.len() });
        }
        let Some((first, _)) = self.state.first() else { return Ok(()) };
        if !stateful {
            return Err(ProtocolError::StateFromStatelessProgram(first.clone()));
        }
        let keys: BTreeSet<&str> = tuples.iter().map(|t| t.key).collect();
        match self.state.iter().find(|(key, _)| !keys.contains(key.as_str())) {
            Some((foreign, _)) => Err(ProtocolError::ForeignStateKey(foreign.clone())),
            None => Ok(()),
        }
    }

    /// Appends this reply to batch `batch` as a version 2 frame.
    pub(crate) fn encode_v2(&self, out: &mut Vec<u8>, batch: u64, limit: usize) -> Result<(), ProtocolError> {
        let lists = self.lists().map(|list| {
            list.iter().map(|(key, value)| OutputRef { key: self.resolve(key), value: self.resolve(value) })
        });
        let state = self.state.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        encode_reply(out, batch, lists, state, limit)
    }

    /// This reply to batch `batch`, whose tuples are `tuples`, as a version 1 message.
    pub(crate) fn to_v1(&self, batch: u64, tuples: &[TupleRef]) -> BatchReply {
        let outputs = (self.lists().zip(tuples))
            .map(|(list, t)| {
                let output = |(key, value): &(Part, Part)| {
                    WireTuple::new(self.resolve(key).unwrap_or(t.key), self.resolve(value).unwrap_or(t.value))
                };
                list.iter().map(output).collect()
            })
            .collect();
        BatchReply { batch, outputs, state: self.state.iter().cloned().collect() }
    }
}

/// Where a per-tuple function puts the outputs of its tuple (zero or more, in order). Keeping
/// the input's key or value costs nothing in version 2: the reply says so with a flag instead
/// of repeating the bytes.
pub struct Outputs<'r> {
    pub(crate) reply: &'r mut ReplyBuf,
}

impl Outputs<'_> {
    /// Outputs the input tuple unchanged.
    pub fn keep(&mut self) {
        self.reply.push(None, None);
    }

    /// Outputs `(key, value)`.
    pub fn emit(&mut self, key: &str, value: &str) {
        self.reply.push(Some(key), Some(value));
    }

    /// Outputs the input's value under another key.
    pub fn with_key(&mut self, key: &str) {
        self.reply.push(Some(key), None);
    }

    /// Outputs another value under the input's key.
    pub fn with_value(&mut self, value: &str) {
        self.reply.push(None, Some(value));
    }

    /// Outputs, under the input's key, the value `write` appends to the string it is given
    /// (written in place: no string of its own is allocated).
    pub fn with_value_from(&mut self, write: impl FnOnce(&mut String)) {
        let start = self.reply.text.len();
        write(&mut self.reply.text);
        self.reply.outputs.push((Part::Input, Part::Text(start..self.reply.text.len())));
    }
}

/// The state of the tuple's key, as the program's session holds it: the stored state sent by
/// the worker, updated by every earlier tuple of that key. Stateful programs only: a stateless
/// program that sets state is refused.
pub struct KeyState<'s> {
    pub(crate) map: &'s mut State,
    pub(crate) key: &'s str,
    pub(crate) set: &'s mut bool,
}

impl KeyState<'_> {
    /// The key whose state this is (the tuple's key).
    pub fn key(&self) -> &str {
        self.key
    }

    /// The key's current state; `None` if it has none yet.
    pub fn get(&self) -> Option<&str> {
        self.map.get(self.key).map(String::as_str)
    }

    /// Sets the key's state (kept by the framework, atomically with the batch's outputs).
    pub fn set(&mut self, state: &str) {
        match self.map.get_mut(self.key) {
            Some(stored) => {
                stored.clear();
                stored.push_str(state);
            }
            None => drop(self.map.insert(self.key.to_owned(), state.to_owned())),
        }
        *self.set = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_reply, HEADER_BYTES, TRAILER_BYTES};

    fn tuples() -> [TupleRef<'static>; 2] {
        [TupleRef { key: "a", value: "1,x" }, TupleRef { key: "b", value: "2,y" }]
    }

    fn sample() -> ReplyBuf {
        let mut reply = ReplyBuf::default();
        let mut out = Outputs { reply: &mut reply };
        out.keep();
        out.with_value_from(|s| s.push_str("built"));
        out.reply.end_list();
        let mut out = Outputs { reply: &mut reply };
        out.emit("k", "v");
        out.with_key("b2");
        out.with_value("2");
        out.reply.end_list();
        reply.state.push(("b".into(), "9".into()));
        reply
    }

    #[test]
    fn outputs_resolve_to_their_inputs_in_both_versions() {
        let reply = sample();
        let v1 = reply.to_v1(3, &tuples());
        assert_eq!(
            v1.outputs,
            [
                vec![WireTuple::new("a", "1,x"), WireTuple::new("a", "built")],
                vec![WireTuple::new("k", "v"), WireTuple::new("b2", "2,y"), WireTuple::new("b", "2")]
            ]
        );
        let mut frame = Vec::new();
        reply.encode_v2(&mut frame, 3, 1 << 20).expect("encodes");
        let view = decode_reply(&frame[HEADER_BYTES..frame.len() - TRAILER_BYTES]).expect("decodes");
        let keys = tuples().map(|t| t.key);
        assert_eq!(view.check(3, keys.into_iter(), true), Ok(()));
        let v2: Vec<Vec<WireTuple>> = (view.lists().zip(tuples()))
            .map(|(list, t)| {
                list.iter().map(|o| WireTuple::new(o.key_or(t.key), o.value_or(t.value))).collect()
            })
            .collect();
        assert_eq!(v2, v1.outputs);
        assert_eq!(view.state, [("b", "9")]);
    }

    #[test]
    fn the_check_refuses_what_the_worker_refuses() {
        let reply = sample();
        assert_eq!(reply.check(&tuples(), true), Ok(()));
        assert_eq!(reply.check(&tuples(), false), Err(ProtocolError::StateFromStatelessProgram("b".into())));
        assert_eq!(
            reply.check(&tuples()[..1], true),
            Err(ProtocolError::WrongOutputCount { expected: 1, got: 2 })
        );
        let mut foreign = sample();
        foreign.state.push(("zz".into(), "1".into()));
        assert_eq!(foreign.check(&tuples(), true), Err(ProtocolError::ForeignStateKey("zz".into())));
    }

    #[test]
    fn key_state_reads_and_sets_its_own_key() {
        let mut map = State::from([("a".to_owned(), "4".to_owned())]);
        let mut set = false;
        let mut state = KeyState { map: &mut map, key: "a", set: &mut set };
        assert_eq!((state.key(), state.get()), ("a", Some("4")));
        state.set("5");
        assert_eq!(state.get(), Some("5"));
        let mut fresh = KeyState { map: &mut map, key: "new", set: &mut set };
        assert_eq!(fresh.get(), None);
        fresh.set("1");
        assert!(set);
        assert_eq!(map, State::from([("a".into(), "5".into()), ("new".into(), "1".into())]));
    }
}
