//! The program's side of a conversation: the handshake, then the batch loop of the version the
//! worker and the program agreed on, with the program's session state.
//!
//! This module owns [`run`] and the two ways a program's code is called ([`WholeBatch`] for a
//! function of whole batches, [`EachTuple`] for a function of one tuple). Invariants:
//! * the program answers version 2 exactly when the hello offers it, and version 1 otherwise;
//! * the session holds each key's state as this program last saw it: in version 2 each
//!   request's state entries overwrite it before that request's tuples are processed (the
//!   worker sends a key's stored state once, the first time the key appears, and it is
//!   authoritative); in version 1 it is reset to each request's state (a version 1 program
//!   keeps nothing between batches, and the worker sends every key's state every time);
//! * replies go out in request order, each checked ([`ReplyBuf::check`]) before it is encoded;
//!   a version 1 reply is flushed at once (the worker waits for it); version 2 replies are
//!   flushed as soon as no whole request waits in the input buffer, or when
//!   [`FLUSH_BYTES`] of them are pending: a write per batch at most, never one per output.

use std::io::{Read, Write};

use crate::codec::{decode_hello, encode_line};
use crate::error::ProtocolError;
use crate::frame::{decode_request, MessageType, TupleRef};
use crate::message::{BatchRequest, Ready, State, WireTuple};
use crate::reader::MessageReader;
use crate::sdk::reply::{KeyState, Outputs, ReplyBuf};
use crate::sdk::{BoxError, Context};
use crate::{V1, V2};

/// Replies kept back at most before they are written, even with requests waiting.
pub const FLUSH_BYTES: usize = 256 << 10;

/// A program's code, called once per batch.
pub(crate) trait Program {
    fn stateful(&self) -> bool;

    /// Processes `tuples` in order with the `session` state, filling `reply` (cleared): one
    /// list per tuple and the state changes.
    fn batch(
        &mut self,
        tuples: &[TupleRef],
        session: &mut State,
        reply: &mut ReplyBuf,
    ) -> Result<(), BoxError>;
}

/// Runs a program over `input` and `output` until the worker closes the input between batches.
pub(crate) fn run<R, W, P>(
    input: R,
    mut output: W,
    limit: usize,
    setup: impl FnOnce(&Context) -> Result<P, BoxError>,
) -> Result<(), ProtocolError>
where
    R: Read,
    W: Write,
    P: Program,
{
    let mut reader = MessageReader::new(input, limit);
    let hello = decode_hello(reader.read_line()?)?;
    let version = if hello.offers(V2) { V2 } else { V1 };
    let context = Context { task: hello.task, header: hello.header, version };
    let mut program = setup(&context).map_err(|e| ProtocolError::Program(e.to_string()))?;
    let ready = Ready { rainstorm: version, stateful: program.stateful() };
    output.write_all(&encode_line(&ready, limit)?)?;
    output.flush()?;
    match version {
        V2 => serve_v2(&mut reader, &mut output, &mut program),
        _ => serve_v1(&mut reader, &mut output, &mut program),
    }
}

/// A failure of the program's code on a batch, as the program reports it.
fn failed(batch: u64, tuples: &[TupleRef], e: BoxError) -> ProtocolError {
    let at = tuples.first().map_or(String::new(), |t| format!(" (first key {:?})", t.key));
    ProtocolError::Program(format!("batch {batch}{at}: {e}"))
}

fn invalid(e: ProtocolError) -> ProtocolError {
    ProtocolError::Program(format!("invalid answer: {e}"))
}

fn serve_v1<R: Read, W: Write, P: Program>(
    reader: &mut MessageReader<R>,
    output: &mut W,
    program: &mut P,
) -> Result<(), ProtocolError> {
    let limit = reader.limit();
    let stateful = program.stateful();
    let mut reply = ReplyBuf::default();
    loop {
        let mut request: BatchRequest = match reader.read_message() {
            Err(ProtocolError::Eof) => return Ok(()),
            other => other?,
        };
        let mut session = match (stateful, request.state.take()) {
            (true, Some(state)) => state,
            _ => State::new(),
        };
        let tuples: Vec<TupleRef> =
            request.tuples.iter().map(|t| TupleRef { key: &t.key, value: &t.value }).collect();
        reply.clear();
        program.batch(&tuples, &mut session, &mut reply).map_err(|e| failed(request.batch, &tuples, e))?;
        reply.check(&tuples, stateful).map_err(invalid)?;
        output.write_all(&encode_line(&reply.to_v1(request.batch, &tuples), limit)?)?;
        output.flush()?;
    }
}

fn serve_v2<R: Read, W: Write, P: Program>(
    reader: &mut MessageReader<R>,
    output: &mut W,
    program: &mut P,
) -> Result<(), ProtocolError> {
    let limit = reader.limit();
    let stateful = program.stateful();
    let mut session = State::new();
    let mut reply = ReplyBuf::default();
    let mut pending = Vec::new();
    loop {
        let payload = match reader.read_frame(MessageType::Request) {
            Err(ProtocolError::Eof) => break,
            other => other?,
        };
        let request = decode_request(payload)?;
        if stateful {
            for (key, state) in &request.state {
                match session.get_mut(*key) {
                    Some(stored) => {
                        stored.clear();
                        stored.push_str(state);
                    }
                    None => drop(session.insert((*key).to_owned(), (*state).to_owned())),
                }
            }
        }
        reply.clear();
        let tuples = &request.tuples;
        program.batch(tuples, &mut session, &mut reply).map_err(|e| failed(request.batch, tuples, e))?;
        reply.check(tuples, stateful).map_err(invalid)?;
        reply.encode_v2(&mut pending, request.batch, limit)?;
        if pending.len() >= FLUSH_BYTES || !reader.frame_buffered() {
            write_out(output, &mut pending)?;
        }
    }
    write_out(output, &mut pending)
}

/// Writes and flushes the pending replies.
fn write_out<W: Write>(output: &mut W, pending: &mut Vec<u8>) -> Result<(), ProtocolError> {
    if !pending.is_empty() {
        output.write_all(pending)?;
        output.flush()?;
        pending.clear();
    }
    Ok(())
}

/// A program given as a function of whole batches: owned tuples, and a map holding the state
/// of the batch's keys (its changes are found by comparing the map before and after).
pub(crate) struct WholeBatch<F> {
    pub(crate) f: F,
    pub(crate) stateful: bool,
}

impl<F> Program for WholeBatch<F>
where
    F: FnMut(&[WireTuple], &mut State) -> Result<Vec<Vec<WireTuple>>, BoxError>,
{
    fn stateful(&self) -> bool {
        self.stateful
    }

    fn batch(
        &mut self,
        tuples: &[TupleRef],
        session: &mut State,
        reply: &mut ReplyBuf,
    ) -> Result<(), BoxError> {
        let owned: Vec<WireTuple> = tuples.iter().map(|t| WireTuple::new(t.key, t.value)).collect();
        let before: State = (tuples.iter())
            .filter_map(|t| session.get(t.key).map(|s| (t.key.to_owned(), s.clone())))
            .collect();
        let mut state = before.clone();
        let lists = (self.f)(&owned, &mut state)?;
        for (i, list) in lists.iter().enumerate() {
            let input = tuples.get(i);
            for o in list {
                let key = (input.map(|t| t.key) != Some(o.key.as_str())).then_some(o.key.as_str());
                let value = (input.map(|t| t.value) != Some(o.value.as_str())).then_some(o.value.as_str());
                reply.push(key, value);
            }
            reply.end_list();
        }
        for (key, value) in state {
            if before.get(&key) != Some(&value) {
                if self.stateful {
                    session.insert(key.clone(), value.clone());
                }
                reply.state.push((key, value));
            }
        }
        Ok(())
    }
}

/// A program given as a function of one tuple, its key's state and its outputs.
pub(crate) struct EachTuple<F> {
    pub(crate) f: F,
    pub(crate) stateful: bool,
    /// A stateless program's state map, always empty at a batch's start (what it sets is
    /// refused by the check).
    pub(crate) scratch: State,
    /// The tuples of the current batch whose key's state was set.
    pub(crate) changed: Vec<usize>,
}

impl<F> Program for EachTuple<F>
where
    F: FnMut(TupleRef<'_>, &mut KeyState<'_>, &mut Outputs<'_>) -> Result<(), BoxError>,
{
    fn stateful(&self) -> bool {
        self.stateful
    }

    fn batch(
        &mut self,
        tuples: &[TupleRef],
        session: &mut State,
        reply: &mut ReplyBuf,
    ) -> Result<(), BoxError> {
        self.scratch.clear();
        self.changed.clear();
        let map = if self.stateful { session } else { &mut self.scratch };
        for (i, t) in tuples.iter().enumerate() {
            let mut set = false;
            let mut state = KeyState { map: &mut *map, key: t.key, set: &mut set };
            (self.f)(*t, &mut state, &mut Outputs { reply })?;
            reply.end_list();
            if set {
                self.changed.push(i);
            }
        }
        let mut keys: Vec<&str> = self.changed.iter().map(|&i| tuples[i].key).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            if let Some(state) = map.get(key) {
                reply.state.push((key.to_owned(), state.clone()));
            }
        }
        Ok(())
    }
}
