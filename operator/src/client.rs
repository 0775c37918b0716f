//! A blocking worker side of the protocol, for tests, tools and synchronous drivers.
//!
//! This module owns [`Client`]: it writes the worker's messages, reads and checks the program's
//! answers, in whichever version the handshake agreed on. Invariants: in version 1 at most one
//! request is outstanding; in version 2 any number may be, and replies are matched to requests
//! in order; every reply returned has passed the worker's checks against its request
//! ([`BatchReply::validate`], [`crate::frame::ReplyView::check`]); every message read is
//! bounded by the limit. It sends each request's state as given: the caller decides what a
//! program sees (the runtime sends a key's stored state once per incarnation in version 2).
//! It does no timing, and it writes from the caller's thread: with several requests in flight,
//! the program's replies to them must fit in the pipe, or both sides wait for each other (the
//! runtime reads and writes concurrently).

use std::collections::VecDeque;
use std::io::{Read, Write};

use crate::codec::{decode_ready, encode_line};
use crate::error::ProtocolError;
use crate::frame::{decode_reply, encode_request, MessageType};
use crate::message::{BatchReply, BatchRequest, Hello, Ready, State, WireTuple};
use crate::reader::MessageReader;
use crate::{V1, V2};

/// The worker's end of one conversation: `reader` is the program's stdout, `writer` its stdin.
pub struct Client<R, W> {
    reader: MessageReader<R>,
    writer: W,
    /// The program's answer to the hello, once the handshake is done.
    ready: Option<Ready>,
    /// Requests sent and not yet answered, oldest first.
    in_flight: VecDeque<BatchRequest>,
    frame: Vec<u8>,
}

impl<R: Read, W: Write> Client<R, W> {
    pub fn new(reader: R, writer: W, max_message_bytes: usize) -> Client<R, W> {
        Client {
            reader: MessageReader::new(reader, max_message_bytes),
            writer,
            ready: None,
            in_flight: VecDeque::new(),
            frame: Vec::new(),
        }
    }

    /// Sends the hello and reads the program's [`Ready`], refusing a version the hello did not
    /// offer. From here on the conversation is in the answered version.
    pub fn handshake(&mut self, hello: &Hello) -> Result<Ready, ProtocolError> {
        let line = encode_line(hello, self.reader.limit())?;
        self.writer.write_all(&line)?;
        self.writer.flush()?;
        let ready = decode_ready(self.reader.read_line()?, hello)?;
        self.ready = Some(ready);
        Ok(ready)
    }

    /// The version agreed on (1 before the handshake).
    pub fn version(&self) -> u32 {
        self.ready.map_or(V1, |r| r.rainstorm)
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Sends one batch without waiting for its answer ([`Client::receive`] reads it). In version
    /// 1 a batch can be sent only when none is outstanding.
    pub fn send(&mut self, request: &BatchRequest) -> Result<(), ProtocolError> {
        let limit = self.reader.limit();
        if self.version() == V2 {
            self.frame.clear();
            let tuples = request.tuples.iter().map(|t| (t.key.as_str(), t.value.as_str()));
            let none = State::new();
            let state = request.state.as_ref().unwrap_or(&none).iter().map(|(k, v)| (k.as_str(), v.as_str()));
            encode_request(&mut self.frame, request.batch, tuples, state, limit)?;
            self.writer.write_all(&self.frame)?;
        } else {
            if !self.in_flight.is_empty() {
                return Err(ProtocolError::Io("version 1 allows one batch in flight".to_owned()));
            }
            self.writer.write_all(&encode_line(request, limit)?)?;
        }
        self.writer.flush()?;
        self.in_flight.push_back(request.clone());
        Ok(())
    }

    /// The checked answer to the oldest batch in flight, with every output's key and value
    /// spelled out (version 2's "same as the input" flags resolved).
    pub fn receive(&mut self) -> Result<BatchReply, ProtocolError> {
        let Some(request) = self.in_flight.pop_front() else {
            return Err(ProtocolError::Io("no batch is in flight".to_owned()));
        };
        if self.version() != V2 {
            let reply: BatchReply = self.reader.read_message()?;
            reply.validate(&request)?;
            return Ok(reply);
        }
        let stateful = self.ready.is_some_and(|r| r.stateful);
        let view = decode_reply(self.reader.read_frame(MessageType::Reply)?)?;
        view.check(request.batch, request.tuples.iter().map(|t| t.key.as_str()), stateful)?;
        let outputs = (view.lists().zip(&request.tuples))
            .map(|(list, t)| {
                list.iter().map(|o| WireTuple::new(o.key_or(&t.key), o.value_or(&t.value))).collect()
            })
            .collect();
        let state = view.state.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Ok(BatchReply { batch: view.batch, outputs, state })
    }

    /// Sends one batch and returns the program's checked answer. The caller includes `state`
    /// (possibly empty) exactly when the program announced itself stateful.
    pub fn call(&mut self, request: &BatchRequest) -> Result<BatchReply, ProtocolError> {
        self.send(request)?;
        self.receive()
    }

    /// Ends the conversation: gives back the reader and the writer; dropping the writer closes
    /// the program's stdin, which tells it to exit.
    pub fn into_parts(self) -> (R, W) {
        (self.reader.into_inner(), self.writer)
    }
}
