//! # rainstorm-operator
//!
//! The protocol between a RainStorm worker and an **operator program** (any executable the
//! worker starts once per task), shared by both sides, and a small SDK for programs written in
//! Rust. `docs/OPERATORS.md` is the user's description of the protocol; this crate is its
//! reference implementation.
//!
//! The protocol, in one paragraph: the worker opens with a [`Hello`] line of JSON (version 1,
//! the task, the input's header, and in `accept` the versions it can go on in), the program
//! answers a [`Ready`] line (the version it chose, stateful or not). In version 1 every message
//! after that is a JSON line and the worker sends one [`BatchRequest`] at a time, waiting for
//! its [`BatchReply`]; in version 2 both directions switch to checksummed binary frames
//! ([`frame`]) and the worker may send several batches before reading their replies, which come
//! back in order. A request carries the batch number, the tuples and state entries; a reply the
//! same number, one output list per input tuple and the changed state. The worker closes stdin
//! at the end and the program exits 0.
//!
//! Modules:
//! * [`message`]: the handshake, the version 1 messages, [`WireTuple`], and
//!   [`BatchReply::validate`], which the worker applies to every version 1 answer;
//! * [`codec`]: one JSON message per line, and the version negotiation of the handshake;
//! * [`frame`]: version 2 frames and payloads, and [`frame::ReplyView::check`];
//! * [`reader`]: [`MessageReader`], lines and frames from one size-limited buffer;
//! * [`error`]: [`ProtocolError`], and [`ProgramFailure`] (an error named by operator and batch);
//! * [`client`]: [`Client`], a blocking worker side (tests and tools; the runtime drives programs
//!   asynchronously with the same codecs);
//! * [`sdk`]: [`serve`] and [`serve_tuples`] for Rust operator programs, [`Context`];
//! * [`csv`]: the record splitter and joiner the built-in operators use.
//!
//! Invariants: every decoding path returns a value or a [`ProtocolError`], never panics, and
//! never holds more than the limit of one message; encoded version 1 messages are exactly one
//! line (JSON escapes every control character, so keys and values may contain anything);
//! encoded version 2 frames are never over the limit.

pub mod client;
pub mod codec;
pub mod error;
pub mod frame;
pub mod message;
pub mod reader;
pub mod sdk;

/// RFC 4180 records on one physical line, exactly as the built-in operators split and join them
/// (`fields` and `field` borrow from the line; see the module's documentation).
pub mod csv {
    pub use rainstorm_csv::{field, fields, join_into, join_record, split_record, Fields};
}

pub use client::Client;
pub use codec::{decode_hello, decode_line, decode_ready, encode_line};
pub use error::{Phase, ProgramFailure, ProtocolError};
pub use frame::TupleRef;
pub use message::{BatchReply, BatchRequest, Hello, Ready, State, WireTuple};
pub use reader::MessageReader;
pub use sdk::{
    exit_code, serve, serve_io, serve_tuples, serve_tuples_io, BoxError, ColumnError, Context, KeyState,
    Outputs,
};

/// Protocol version 1: JSON lines, one batch at a time. Every hello is a version 1 line.
pub const V1: u32 = 1;
/// Protocol version 2: binary frames, several batches in flight.
pub const V2: u32 = 2;

/// Default limit on one message: a version 1 line (newline excluded) or a version 2 frame's
/// payload: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;
