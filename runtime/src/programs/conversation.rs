//! One conversation with an operator program over its stdin and stdout: the handshake, then
//! batches in the version the program chose (`docs/OPERATORS.md`), checked on the way back.
//!
//! This module owns [`Conversation`], generic over the two streams so that tests can drive it
//! over in-memory pipes, and the parsing and checking of replies ([`parse_reply_v1`],
//! [`parse_reply_v2`]). A reader task turns the program's stdout into messages and a writer
//! task feeds its stdin, so the worker reads replies while it writes requests (a program
//! blocked writing a reply never waits for a worker blocked writing a request).
//!
//! Invariants kept here:
//! * at most [`ConversationLimits::window`] batches are in flight in version 2, and one in
//!   version 1; replies are matched to batches in the order they were sent, and each reply is
//!   checked against its batch (number, one output list per tuple, state only from a stateful
//!   program and only for keys of that batch) before it becomes a [`ProgramResult`];
//! * the oldest batch in flight is answered within the batch timeout from when it was sent, or
//!   the conversation fails with [`ProtocolError::Timeout`];
//! * session state (the contract of [`ProgramCall`](rainstorm_core::rainstorm::ProgramCall)):
//!   a batch's `state` holds the stored state of its keys not sent before in this incarnation,
//!   and is authoritative. In version 2 it goes to the program as it is (the program keeps its
//!   session); a version 1 program keeps nothing between batches, so for it this side keeps the
//!   session, merges each batch's state into it, sends each batch the current state of all its
//!   keys, and applies each reply's changes;
//! * nothing read is larger than the message limit, nothing written either (an oversized
//!   request fails the batch instead of being sent);
//! * after any error the conversation is broken and must be dropped (dropping it stops both
//!   tasks).

use rainstorm_core::rainstorm::{Output, ProgramBatch, ProgramResult, Tuple};
use rainstorm_operator::frame::{
    decode_reply, encode_request, FrameHeader, MessageType, HEADER_BYTES, TRAILER_BYTES,
};
use rainstorm_operator::{
    decode_line, decode_ready, encode_line, BatchReply, BatchRequest, Hello, ProtocolError, Ready, State,
    WireTuple, V1, V2,
};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The limits a conversation keeps.
#[derive(Clone, Debug)]
pub struct ConversationLimits {
    /// Batches in flight at most (version 2; version 1 is always one at a time).
    pub window: usize,
    /// From sending a batch to its answer.
    pub batch_timeout: Duration,
    /// Longest message either way: a version 1 line, newline excluded, or a version 2 payload.
    pub max_message_bytes: usize,
}

/// A batch sent and not yet answered.
struct InFlight {
    batch: u64,
    deadline: Instant,
    sent: Sent,
}

/// What a reply is checked and resolved against.
enum Sent {
    V1(BatchRequest),
    V2(ProgramBatch),
}

/// A program's stdout, message by message (a line or a frame's payload); an error ends it.
type Messages = mpsc::Receiver<Result<Vec<u8>, ProtocolError>>;

/// A conversation past its handshake.
pub struct Conversation {
    ready: Ready,
    limits: ConversationLimits,
    to_program: Option<mpsc::UnboundedSender<Vec<u8>>>,
    from_program: Messages,
    in_flight: VecDeque<InFlight>,
    last_batch: u64,
    /// Version 1 only: every key's state as the program last left it.
    session: State,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Conversation {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Conversation {
    /// Sends `hello` and reads the program's answer (the caller bounds the wait), then starts
    /// the reader and writer tasks in the version the program chose.
    pub async fn start<R, W>(
        stdout: R,
        mut stdin: W,
        hello: &Hello,
        limits: ConversationLimits,
    ) -> Result<Conversation, ProtocolError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let limit = limits.max_message_bytes;
        stdin.write_all(&encode_line(hello, limit)?).await?;
        stdin.flush().await?;
        let mut stdout = BufReader::new(stdout);
        let ready = decode_ready(&read_line(&mut stdout, limit).await?, hello)?;
        let (to_program, requests) = mpsc::unbounded_channel();
        let (replies, from_program) = mpsc::channel(limits.window.max(1) + 1);
        let write_errors = replies.clone();
        let version = ready.rainstorm;
        let tasks = vec![
            tokio::spawn(read_messages(stdout, version, limit, replies)),
            tokio::spawn(write_messages(stdin, requests, write_errors)),
        ];
        Ok(Conversation {
            ready,
            limits,
            to_program: Some(to_program),
            from_program,
            in_flight: VecDeque::new(),
            last_batch: 0,
            session: State::new(),
            tasks,
        })
    }

    /// The version the program chose.
    pub fn version(&self) -> u32 {
        self.ready.rainstorm
    }

    pub fn stateful(&self) -> bool {
        self.ready.stateful
    }

    /// Whether another batch may be sent now.
    pub fn has_room(&self) -> bool {
        let window = if self.version() == V2 { self.limits.window.max(1) } else { 1 };
        self.in_flight.len() < window
    }

    /// Batches sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Sends one batch (there must be room: [`Conversation::has_room`]); its result comes from
    /// [`Conversation::next_result`], after those of the batches sent before it.
    pub fn send(&mut self, batch: ProgramBatch) -> Result<(), ProtocolError> {
        debug_assert!(self.has_room(), "a batch sent past the window");
        let limit = self.limits.max_message_bytes;
        let number = self.last_batch + 1;
        let (bytes, sent) = if self.version() == V2 {
            let mut frame = Vec::new();
            let none = State::new();
            let state = if self.stateful() { &batch.state } else { &none };
            let tuples = batch.tuples.iter().map(|t| (t.key.as_str(), t.value.as_str()));
            let state = state.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            encode_request(&mut frame, number, tuples, state, limit)?;
            (frame, Sent::V2(batch))
        } else {
            let request = self.v1_request(number, &batch);
            (encode_line(&request, limit)?, Sent::V1(request))
        };
        let to_program = self.to_program.as_ref().ok_or(ProtocolError::Eof)?;
        to_program.send(bytes).map_err(|_| ProtocolError::Eof)?;
        self.last_batch = number;
        let deadline = Instant::now() + self.limits.batch_timeout;
        self.in_flight.push_back(InFlight { batch: number, deadline, sent });
        Ok(())
    }

    /// A version 1 request: the batch's state merged into the session, then the current state
    /// of every key of the batch that has one.
    fn v1_request(&mut self, number: u64, batch: &ProgramBatch) -> BatchRequest {
        let state = self.stateful().then(|| {
            for (key, value) in &batch.state {
                self.session.insert(key.clone(), value.clone());
            }
            (batch.tuples.iter())
                .filter_map(|t| self.session.get(&t.key).map(|s| (t.key.clone(), s.clone())))
                .collect()
        });
        let tuples = batch.tuples.iter().map(|t| WireTuple::new(t.key.clone(), t.value.clone())).collect();
        BatchRequest { batch: number, tuples, state }
    }

    /// The checked result of the oldest batch in flight. Cancel-safe: dropping the future
    /// loses nothing, and a later call waits for the same batch.
    pub async fn next_result(&mut self) -> Result<ProgramResult, ProtocolError> {
        let Some(front) = self.in_flight.front() else {
            return Err(ProtocolError::Io("no batch is in flight".to_owned()));
        };
        let message = match tokio::time::timeout_at(front.deadline, self.from_program.recv()).await {
            Err(_) => {
                let after_ms = self.limits.batch_timeout.as_millis() as u64;
                return Err(ProtocolError::Timeout { after_ms });
            }
            Ok(None) => return Err(ProtocolError::Eof),
            Ok(Some(message)) => message?,
        };
        let front = self.in_flight.pop_front().expect("checked above");
        match front.sent {
            Sent::V1(request) => {
                let result = parse_reply_v1(&message, &request)?;
                self.session.extend(result.state.iter().map(|(k, v)| (k.clone(), v.clone())));
                Ok(result)
            }
            Sent::V2(batch) => parse_reply_v2(&message, front.batch, &batch.tuples, self.stateful()),
        }
    }

    /// The batches in flight, oldest first.
    pub fn batches_in_flight(&self) -> impl Iterator<Item = u64> + '_ {
        self.in_flight.iter().map(|f| f.batch)
    }

    /// Closes the program's stdin once every request sent is written: the end of the
    /// conversation for the program.
    pub fn close(&mut self) {
        self.to_program = None;
    }
}

/// A version 1 reply (one line, without its `\n`) to `request`, checked
/// ([`BatchReply::validate`]), as the batch's result.
pub fn parse_reply_v1(line: &[u8], request: &BatchRequest) -> Result<ProgramResult, ProtocolError> {
    let reply: BatchReply = decode_line(line)?;
    reply.validate(request)?;
    Ok(ProgramResult {
        outputs: (reply.outputs.into_iter())
            .map(|outs| outs.into_iter().map(|t| Output { key: t.key, value: t.value }).collect())
            .collect(),
        state: reply.state,
    })
}

/// A version 2 reply (a frame's payload) to batch `batch` of `tuples`, checked
/// ([`rainstorm_operator::frame::ReplyView::check`]), as the batch's result. The tuples are
/// shared with the task, which keeps them until the answer: an output that reuses its input's
/// key or value gets a copy of it.
pub fn parse_reply_v2(
    payload: &[u8],
    batch: u64,
    tuples: &[Tuple],
    stateful: bool,
) -> Result<ProgramResult, ProtocolError> {
    let view = decode_reply(payload)?;
    view.check(batch, tuples.iter().map(|t| t.key.as_str()), stateful)?;
    let outputs = view
        .lists()
        .zip(tuples)
        .map(|(list, t)| {
            list.iter()
                .map(|o| Output { key: o.key_or(&t.key).to_owned(), value: o.value_or(&t.value).to_owned() })
                .collect()
        })
        .collect();
    let state = view.state.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Ok(ProgramResult { outputs, state })
}

/// The reader task: the program's stdout as messages of `version`, until an error or the end.
async fn read_messages<R: AsyncBufRead + Unpin>(
    mut stdout: R,
    version: u32,
    limit: usize,
    to: mpsc::Sender<Result<Vec<u8>, ProtocolError>>,
) {
    loop {
        let message = match version {
            V1 => read_line(&mut stdout, limit).await,
            _ => read_frame(&mut stdout, limit, MessageType::Reply).await,
        };
        let end = message.is_err();
        if to.send(message).await.is_err() || end {
            return;
        }
    }
}

/// The writer task: requests to the program's stdin in order; stdin is closed when the sender
/// is dropped and everything sent is written. A failed write ends the conversation.
async fn write_messages<W: AsyncWrite + Unpin>(
    mut stdin: W,
    mut requests: mpsc::UnboundedReceiver<Vec<u8>>,
    errors: mpsc::Sender<Result<Vec<u8>, ProtocolError>>,
) {
    while let Some(bytes) = requests.recv().await {
        let written = async {
            stdin.write_all(&bytes).await?;
            stdin.flush().await
        };
        if let Err(e) = written.await {
            let _ = errors.send(Err(e.into())).await;
            return;
        }
    }
    let _ = stdin.shutdown().await;
}

/// Reads one line (without its `\n`) of at most `limit` bytes: how a program's handshake and
/// version 1 replies are read.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Err(if line.is_empty() {
                ProtocolError::Eof
            } else {
                ProtocolError::Truncated { bytes: line.len() }
            });
        }
        let (take, done) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > limit {
            return Err(ProtocolError::TooLong { limit });
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take + usize::from(done));
        if done {
            return Ok(line);
        }
    }
}

/// Reads into `buf` until it is full or the stream ends; how many bytes it got.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]).await? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Reads one version 2 frame of type `expected` and returns its payload: the header is checked
/// (a payload over `limit` is refused before any of it is read), then the checksum.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
    expected: MessageType,
) -> Result<Vec<u8>, ProtocolError> {
    let mut header = [0u8; HEADER_BYTES];
    match read_full(reader, &mut header).await? {
        0 => return Err(ProtocolError::Eof),
        n if n < HEADER_BYTES => {
            return Err(ProtocolError::TruncatedFrame { bytes: n, expected: HEADER_BYTES })
        }
        _ => {}
    }
    let parsed = FrameHeader::parse(&header, limit)?;
    parsed.expect(expected)?;
    let total = parsed.frame_bytes();
    let mut frame = vec![0u8; total];
    frame[..HEADER_BYTES].copy_from_slice(&header);
    let got = read_full(reader, &mut frame[HEADER_BYTES..]).await?;
    if HEADER_BYTES + got < total {
        return Err(ProtocolError::TruncatedFrame { bytes: HEADER_BYTES + got, expected: total });
    }
    parsed.check(&frame)?;
    frame.truncate(total - TRAILER_BYTES);
    frame.drain(..HEADER_BYTES);
    Ok(frame)
}

#[cfg(test)]
mod tests;
