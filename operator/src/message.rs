//! The handshake of both protocol versions, the batch messages of version 1 as JSON, and the
//! checks a worker applies to every version 1 answer.
//!
//! This module owns the shapes of the JSON messages (their field names are the protocol) and
//! [`BatchReply::validate`]. Invariants: a reply that passes `validate` has exactly one output
//! list per input tuple, echoes its request's batch number, and changes state only of keys of
//! that batch's tuples, and only if the program is stateful. Unknown JSON fields are ignored
//! on decoding, so a later minor revision may add fields without breaking version 1 peers (the
//! hello's `accept`, which offers version 2, is such a field). Version 2 carries the same batch
//! messages in binary frames ([`crate::frame`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;
use crate::{V1, V2};

/// Keyed state as it travels: tuple key to that key's stored state, an opaque string.
pub type State = BTreeMap<String, String>;

/// A tuple as it travels: its id stays with the worker (output `i` of a tuple always gets the
/// same id), so a program sees only the key and the value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WireTuple {
    pub key: String,
    pub value: String,
}

impl WireTuple {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> WireTuple {
        WireTuple { key: key.into(), value: value.into() }
    }
}

/// Worker to program, first line:
/// `{"rainstorm":1,"task":"s1-t0","header":["OBJECTID",...],"accept":[1,2]}`.
/// A hello is always a version 1 line, so that version 1 programs understand it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`V1`].
    pub rainstorm: u32,
    /// Which task this process serves (`s<stage>-t<index>`); for logs only.
    pub task: String,
    /// The input file's first row split as CSV (its BOM, if any, kept on the first name), or
    /// `None` (`null`) if the input has no header.
    #[serde(default)]
    pub header: Option<Vec<String>>,
    /// The protocol versions the worker can speak after the handshake; a program may answer any
    /// of them. Absent (empty) from a worker that speaks only version 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept: Vec<u32>,
}

impl Hello {
    /// A hello offering versions 1 and 2.
    pub fn new(task: impl Into<String>, header: Option<Vec<String>>) -> Hello {
        Hello { rainstorm: V1, task: task.into(), header, accept: vec![V1, V2] }
    }

    /// A hello of a worker that speaks only version 1 (no `accept`).
    pub fn v1_only(task: impl Into<String>, header: Option<Vec<String>>) -> Hello {
        Hello { accept: Vec::new(), ..Hello::new(task, header) }
    }

    /// Whether the worker can speak `version` after the handshake (1 always can).
    pub fn offers(&self, version: u32) -> bool {
        version == V1 || self.accept.contains(&version)
    }
}

/// Program to worker, answer to [`Hello`]: `{"rainstorm":2,"stateful":false}`. Both sides speak
/// the answered version from the next byte on, both ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The protocol version the program speaks: [`V1`], or one the hello offered.
    pub rainstorm: u32,
    /// Whether the program reads and updates keyed state (kept by the framework, by tuple key).
    pub stateful: bool,
}

impl Ready {
    /// A version 1 answer.
    pub fn new(stateful: bool) -> Ready {
        Ready { rainstorm: V1, stateful }
    }

    /// A version 2 answer.
    pub fn v2(stateful: bool) -> Ready {
        Ready { rainstorm: V2, stateful }
    }
}

/// Worker to program: one batch of tuples to process in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The batch's number, echoed by the reply.
    pub batch: u64,
    pub tuples: Vec<WireTuple>,
    /// Stateful programs only (`None`, absent from the JSON, for stateless ones): the stored
    /// state, at the start of the batch, of each distinct tuple key of the batch that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
}

impl BatchRequest {
    /// The first tuple's key: what a failure of this batch is reported by.
    pub fn first_key(&self) -> Option<&str> {
        self.tuples.first().map(|t| t.key.as_str())
    }
}

/// Program to worker: the answer to the [`BatchRequest`] of the same number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReply {
    pub batch: u64,
    /// Exactly one list per input tuple, in input order: that tuple's outputs (zero or more).
    pub outputs: Vec<Vec<WireTuple>>,
    /// Stateful programs only: the new state of the keys that changed (only keys of this batch's
    /// tuples). Omitted from the JSON when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub state: State,
}

impl BatchReply {
    /// Checks this reply against the request it answers. A stateless program is recognised by
    /// the request carrying no state map. The first violation found is returned, in the order:
    /// batch number, output count, state from a stateless program, state for a foreign key.
    pub fn validate(&self, request: &BatchRequest) -> Result<(), ProtocolError> {
        if self.batch != request.batch {
            return Err(ProtocolError::WrongBatch { expected: request.batch, got: self.batch });
        }
        if self.outputs.len() != request.tuples.len() {
            return Err(ProtocolError::WrongOutputCount {
                expected: request.tuples.len(),
                got: self.outputs.len(),
            });
        }
        if self.state.is_empty() {
            return Ok(());
        }
        if request.state.is_none() {
            let key = self.state.keys().next().cloned().unwrap_or_default();
            return Err(ProtocolError::StateFromStatelessProgram(key));
        }
        let keys: BTreeSet<&str> = request.tuples.iter().map(|t| t.key.as_str()).collect();
        match self.state.keys().find(|k| !keys.contains(k.as_str())) {
            Some(foreign) => Err(ProtocolError::ForeignStateKey(foreign.clone())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(stateful: bool) -> BatchRequest {
        BatchRequest {
            batch: 7,
            tuples: vec![WireTuple::new("a", "1"), WireTuple::new("b", "2"), WireTuple::new("a", "3")],
            state: stateful.then(|| State::from([("a".to_owned(), "4".to_owned())])),
        }
    }

    fn reply(batch: u64, outputs: usize, state: &[(&str, &str)]) -> BatchReply {
        BatchReply {
            batch,
            outputs: vec![vec![WireTuple::new("k", "v")]; outputs],
            state: state.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn a_well_formed_reply_passes() {
        assert_eq!(reply(7, 3, &[]).validate(&request(false)), Ok(()));
        assert_eq!(reply(7, 3, &[("a", "6"), ("b", "1")]).validate(&request(true)), Ok(()));
        let empty = BatchRequest { batch: 1, tuples: vec![], state: None };
        assert_eq!(reply(1, 0, &[]).validate(&empty), Ok(()));
    }

    #[test]
    fn wrong_batch_number_is_refused_first() {
        assert_eq!(
            reply(8, 2, &[]).validate(&request(false)),
            Err(ProtocolError::WrongBatch { expected: 7, got: 8 })
        );
    }

    #[test]
    fn wrong_output_count_is_refused() {
        for got in [0, 2, 4] {
            assert_eq!(
                reply(7, got, &[]).validate(&request(false)),
                Err(ProtocolError::WrongOutputCount { expected: 3, got })
            );
        }
    }

    #[test]
    fn state_only_for_keys_of_the_batch() {
        assert_eq!(
            reply(7, 3, &[("a", "5"), ("c", "1")]).validate(&request(true)),
            Err(ProtocolError::ForeignStateKey("c".into()))
        );
    }

    #[test]
    fn a_stateless_program_returns_no_state() {
        assert_eq!(
            reply(7, 3, &[("a", "5")]).validate(&request(false)),
            Err(ProtocolError::StateFromStatelessProgram("a".into()))
        );
    }

    #[test]
    fn json_shapes_are_the_documented_ones() {
        let hello = Hello::new("s1-t0", Some(vec!["OBJECTID".into(), "Sign_Type".into()]));
        assert_eq!(
            serde_json::to_string(&hello).expect("encodes"),
            r#"{"rainstorm":1,"task":"s1-t0","header":["OBJECTID","Sign_Type"],"accept":[1,2]}"#
        );
        assert_eq!(
            serde_json::to_string(&Hello::v1_only("s2-t1", None)).expect("encodes"),
            r#"{"rainstorm":1,"task":"s2-t1","header":null}"#
        );
        assert!(hello.offers(2) && hello.offers(1) && !hello.offers(3));
        assert!(!Hello::v1_only("t", None).offers(2));
        assert_eq!(
            serde_json::to_string(&Ready::new(true)).expect("encodes"),
            r#"{"rainstorm":1,"stateful":true}"#
        );
        assert_eq!(
            serde_json::to_string(&Ready::v2(false)).expect("encodes"),
            r#"{"rainstorm":2,"stateful":false}"#
        );
        let stateless = BatchRequest { state: None, ..request(false) };
        assert_eq!(
            serde_json::to_string(&stateless).expect("encodes"),
            r#"{"batch":7,"tuples":[{"key":"a","value":"1"},{"key":"b","value":"2"},{"key":"a","value":"3"}]}"#
        );
        assert!(serde_json::to_string(&request(true)).expect("encodes").ends_with(r#","state":{"a":"4"}}"#));
        assert_eq!(
            serde_json::to_string(&reply(7, 1, &[])).expect("encodes"),
            r#"{"batch":7,"outputs":[[{"key":"k","value":"v"}]]}"#
        );
    }
}
