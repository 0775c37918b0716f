//! # rainstorm-operator
//!
//! The protocol between a RainStorm worker and an **operator program** (any executable the
//! worker starts once per task), shared by both sides, and a small SDK for programs written in
//! Rust. `docs/OPERATORS.md` is the user's description of the protocol; this crate is its
//! reference implementation.
//!
//! Protocol version 1, in one paragraph: newline-delimited JSON objects over the program's
//! stdin (worker to program) and stdout (program to worker). The worker opens with a [`Hello`]
//! (version, task, input header), the program answers [`Ready`] (version, stateful or not).
//! Then, strictly one at a time, the worker sends a [`BatchRequest`] (batch number, tuples, and
//! for stateful programs the stored state of the batch's keys) and the program answers a
//! [`BatchReply`] (the same number, one output list per input tuple, changed state). The worker
//! closes stdin at the end and the program exits 0.
//!
//! Modules:
//! * [`message`]: the four messages, [`WireTuple`], and [`BatchReply::validate`], which the worker
//!   calls on every answer;
//! * [`codec`]: one message per line: [`encode_line`], the `decode_*` functions, and a
//!   size-limited [`LineReader`];
//! * [`error`]: [`ProtocolError`], and [`ProgramFailure`] (an error named by operator and batch);
//! * [`client`]: [`Client`], a blocking worker side (tests and tools; the runtime drives programs
//!   asynchronously with the same codec);
//! * [`sdk`]: [`serve`] for Rust operator programs, [`Context`] (the header, column lookup);
//! * [`csv`]: the record splitter and joiner the built-in operators use.
//!
//! Invariants: every decoding path returns a value or a [`ProtocolError`], never panics, and
//! never holds more than the line limit of one message; encoded messages are exactly one line
//! (JSON escapes every control character, so keys and values may contain anything).

pub mod client;
pub mod codec;
pub mod error;
pub mod message;
pub mod sdk;

/// RFC 4180 records on one physical line, exactly as the built-in operators split and join them.
pub mod csv {
    pub use rainstorm_core::rainstorm::csv::{join_record, split_record};
}

pub use client::Client;
pub use codec::{decode_hello, decode_line, decode_ready, encode_line, LineReader};
pub use error::{Phase, ProgramFailure, ProtocolError};
pub use message::{BatchReply, BatchRequest, Hello, Ready, State, WireTuple};
pub use sdk::{exit_code, serve, serve_io, BoxError, ColumnError, Context};

/// The protocol version this crate speaks; a peer announcing another one is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default limit on one message line, newline excluded: 16 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;
