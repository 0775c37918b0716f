//! What can go wrong between a worker and an operator program.
//!
//! This module owns [`ProtocolError`], the one vocabulary both sides use (the codec, the
//! checks, the SDK and the drivers), and [`ProgramFailure`], which names the operator and the
//! batch a failure belongs to, as the task's failure reason. Every variant is fatal for the
//! conversation: after one, the stream may be out of step and the program is stopped.

use thiserror::Error;

/// A violation of the protocol, or the end of the conversation.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// A version 1 line longer than the limit (newline excluded); nothing past the limit was
    /// buffered.
    #[error("a message line is longer than the limit of {limit} bytes")]
    TooLong { limit: usize },
    /// The stream ended inside a line (a message without its newline).
    #[error("the stream ended in the middle of a line, after {bytes} bytes")]
    Truncated { bytes: usize },
    /// The line is not the expected JSON object (or not UTF-8), or a version 2 payload is not
    /// the expected message; the text says what is wrong and where.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The stream ended before the expected message (the peer closed it or exited), or a write
    /// found the pipe closed.
    #[error("the stream ended (the peer closed it or exited)")]
    Eof,
    /// The peer speaks a protocol version this side does not (or did not offer); `got` is the
    /// JSON text of its `rainstorm` field.
    #[error(
        "protocol version {got} is not supported (a hello is version 1 and offers versions in \
         `accept`; a program answers 1 or an offered version)"
    )]
    WrongVersion { got: String },
    /// A version 2 frame that does not open with the magic bytes `RS`.
    #[error("not a version 2 frame: it opens with bytes {got:02x?}, not the magic \"RS\" (52 53)")]
    BadMagic { got: [u8; 2] },
    /// A version 2 frame whose header names another frame version.
    #[error("the frame is version {got}, not 2")]
    BadFrameVersion { got: u8 },
    /// A version 2 frame of another message type than the one expected here.
    #[error("the frame holds message type {got}, not {expected} ({})", crate::frame::type_name(*.expected))]
    BadMessageType { expected: u8, got: u8 },
    /// A version 2 frame announcing a payload longer than the limit; nothing of it was read.
    #[error("the frame announces a payload of {length} bytes, over the limit of {limit}")]
    FrameTooLong { length: u64, limit: usize },
    /// A version 2 frame whose CRC32C trailer does not match its header and payload.
    #[error("the frame's checksum is {got:08x}, but its bytes sum to {computed:08x} (CRC32C)")]
    BadChecksum { computed: u32, got: u32 },
    /// The stream ended inside a version 2 frame.
    #[error("the stream ended in the middle of a frame, after {bytes} of its {expected} bytes")]
    TruncatedFrame { bytes: usize, expected: usize },
    #[error("the reply is numbered {got}, but batch {expected} was asked")]
    WrongBatch { expected: u64, got: u64 },
    #[error("the reply has {got} output lists for {expected} input tuples (one list per tuple)")]
    WrongOutputCount { expected: usize, got: usize },
    /// The reply sets state for a key that no tuple of the batch has.
    #[error("the reply sets state for key {0:?}, which is not the key of any tuple in the batch")]
    ForeignStateKey(String),
    /// A version 2 reply that sets the state of one key twice.
    #[error("the reply sets state for key {0:?} twice")]
    DuplicateStateKey(String),
    /// A program that announced `"stateful": false` returned state (the first key is named).
    #[error("the program announced itself stateless but returned state (for key {0:?})")]
    StateFromStatelessProgram(String),
    /// No answer in time. Produced by drivers (this crate does no timing).
    #[error("no answer within {after_ms} ms")]
    Timeout { after_ms: u64 },
    /// The program's process ended; `0` says how (exit code or signal). Produced by drivers.
    #[error("the program exited ({0})")]
    Exited(String),
    /// Reading or writing the stream failed.
    #[error("i/o error: {0}")]
    Io(String),
    /// The program's own code failed (a bad column name, malformed state, ...). Produced by the
    /// SDK on the program's side; the worker sees the program exit.
    #[error("{0}")]
    Program(String),
}

impl From<std::io::Error> for ProtocolError {
    /// A write to a closed pipe means the peer is gone: that is [`ProtocolError::Eof`], whether
    /// the reading or the writing side notices first.
    fn from(e: std::io::Error) -> ProtocolError {
        match e.kind() {
            std::io::ErrorKind::BrokenPipe => ProtocolError::Eof,
            _ => ProtocolError::Io(e.to_string()),
        }
    }
}

/// Where in the conversation a failure happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Starting the program, or the [`Hello`](crate::Hello)/[`Ready`](crate::Ready) exchange.
    Handshake,
    /// A batch, named by its number and first input key (`None` for an empty batch).
    Batch { number: u64, first_key: Option<String> },
}

/// A task's failure reason for a program: which operator, where, and what went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("operator `{operator}` {}: {error}", describe(.phase))]
pub struct ProgramFailure {
    /// The operator's label (e.g. its spec text).
    pub operator: String,
    pub phase: Phase,
    pub error: ProtocolError,
}

fn describe(phase: &Phase) -> String {
    match phase {
        Phase::Handshake => "failed during its handshake".to_owned(),
        Phase::Batch { number, first_key: Some(key) } => {
            format!("failed on batch {number} (first input key {key:?})")
        }
        Phase::Batch { number, first_key: None } => format!("failed on batch {number} (empty)"),
    }
}

impl ProgramFailure {
    pub fn handshake(operator: impl Into<String>, error: ProtocolError) -> ProgramFailure {
        ProgramFailure { operator: operator.into(), phase: Phase::Handshake, error }
    }

    pub fn batch(
        operator: impl Into<String>,
        request: &crate::BatchRequest,
        error: ProtocolError,
    ) -> ProgramFailure {
        let first_key = request.first_key().map(str::to_owned);
        ProgramFailure {
            operator: operator.into(),
            phase: Phase::Batch { number: request.batch, first_key },
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchRequest, WireTuple};

    #[test]
    fn failures_name_operator_and_first_key() {
        let request = BatchRequest {
            batch: 3,
            tuples: vec![WireTuple::new("signs.csv:12", "x"), WireTuple::new("signs.csv:13", "y")],
            state: None,
        };
        let failure = ProgramFailure::batch("program:count", &request, ProtocolError::Eof);
        assert_eq!(
            failure.to_string(),
            "operator `program:count` failed on batch 3 (first input key \"signs.csv:12\"): \
             the stream ended (the peer closed it or exited)"
        );
        let early = ProgramFailure::handshake("p", ProtocolError::WrongVersion { got: "3".into() });
        assert!(early.to_string().starts_with(
            "operator `p` failed during its handshake: protocol version 3 is not supported (a hello is"
        ));
    }
}
