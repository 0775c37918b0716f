//! A blocking worker side of the protocol, for tests, tools and synchronous drivers.
//!
//! This module owns [`Client`]: it writes the worker's messages, reads and checks the program's
//! answers. Invariants: at most one request is outstanding (the protocol is strict
//! request/answer); every reply returned by [`Client::call`] has passed
//! [`BatchReply::validate`] against its request; every line read is bounded by the limit. It
//! does no timing: a driver that needs a timeout (the runtime does) runs the same codec under
//! its own clock.

use std::io::{BufRead, Write};

use crate::codec::{decode_ready, encode_line, LineReader};
use crate::error::ProtocolError;
use crate::message::{BatchReply, BatchRequest, Hello, Ready};

/// The worker's end of one conversation: `reader` is the program's stdout, `writer` its stdin.
pub struct Client<R, W> {
    reader: LineReader<R>,
    writer: W,
}

impl<R: BufRead, W: Write> Client<R, W> {
    pub fn new(reader: R, writer: W, max_line_bytes: usize) -> Client<R, W> {
        Client { reader: LineReader::new(reader, max_line_bytes), writer }
    }

    fn send<T: serde::Serialize>(&mut self, message: &T) -> Result<(), ProtocolError> {
        let line = encode_line(message, self.reader.max_line_bytes())?;
        self.writer.write_all(&line)?;
        self.writer.flush()?;
        Ok(())
    }

    /// Sends the hello and reads the program's [`Ready`], refusing another version.
    pub fn handshake(&mut self, hello: &Hello) -> Result<Ready, ProtocolError> {
        self.send(hello)?;
        decode_ready(self.reader.read_line()?)
    }

    /// Sends one batch and returns the program's checked answer. The caller includes `state`
    /// (possibly empty) exactly when the program announced itself stateful.
    pub fn call(&mut self, request: &BatchRequest) -> Result<BatchReply, ProtocolError> {
        self.send(request)?;
        let reply: BatchReply = self.reader.read_message()?;
        reply.validate(request)?;
        Ok(reply)
    }

    /// Ends the conversation: gives back the reader and the writer; dropping the writer closes
    /// the program's stdin, which tells it to exit.
    pub fn into_parts(self) -> (R, W) {
        (self.reader.into_inner(), self.writer)
    }
}
