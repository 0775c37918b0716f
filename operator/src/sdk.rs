//! The program's side of the protocol, for operator programs written in Rust.
//!
//! This module owns [`serve`] (and [`serve_io`], the same over any reader and writer): the
//! handshake, the batch loop and the state bookkeeping, so that a program is one setup closure
//! that returns a batch closure. Invariants: the batch closure sees each batch's tuples in order
//! and a state map holding exactly what the worker sent for that batch (nothing is carried from
//! one batch to the next: the worker is the only keeper of state, so crash replays are exact);
//! the reply carries only the entries the closure changed; every reply is checked with
//! [`BatchReply::validate`] before it is written, so a mistake in the closure ends the program
//! with a clear message rather than a refused answer; every answer line is flushed at once.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use thiserror::Error;

use crate::codec::{decode_hello, encode_line, LineReader};
use crate::error::ProtocolError;
use crate::message::{BatchReply, BatchRequest, Ready, State, WireTuple};
use crate::DEFAULT_MAX_LINE_BYTES;

/// Any error of the program's own code; its text is what the program prints on stderr.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the worker told the program in its hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// The task this process serves (`s<stage>-t<index>`), for log lines.
    pub task: String,
    /// The input's header row, if it has one.
    pub header: Option<Vec<String>>,
}

/// A column name that the header does not resolve.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ColumnError {
    #[error("column `{name}` is named but the input has no header")]
    NoHeader { name: String },
    #[error("unknown column `{name}`; available columns: {}", .available.join(", "))]
    Unknown { name: String, available: Vec<String> },
}

impl Context {
    /// The 0-based position of the column `name` in the header, as the built-in operators
    /// resolve it: a leading byte-order mark and surrounding spaces of header names are
    /// ignored, names are case-sensitive, the first match wins.
    pub fn column(&self, name: &str) -> Result<usize, ColumnError> {
        let clean = |h: &String| h.trim_start_matches('\u{feff}').trim().to_owned();
        let Some(header) = &self.header else { return Err(ColumnError::NoHeader { name: name.to_owned() }) };
        header.iter().position(|h| clean(h) == name).ok_or_else(|| ColumnError::Unknown {
            name: name.to_owned(),
            available: header.iter().map(clean).collect(),
        })
    }
}

/// Runs an operator program on stdin and stdout until the worker closes stdin.
///
/// `setup` runs once, after the worker's hello and before the program answers it: resolve
/// columns there, and fail there (the worker then sees the program exit during its handshake).
/// It returns the batch function, called once per batch with the batch's tuples and a state map
/// (empty for stateless programs; for stateful ones, the stored state at the start of the batch
/// of those of the batch's keys that have one). It returns one output list per tuple, in order,
/// and updates the map as it goes, so that a key seen twice in a batch sees its own update.
/// Only keys of the batch's tuples may be set; removing an entry has no effect.
///
/// Returns `Ok(())` when stdin closes between batches; any error ends the conversation.
pub fn serve<S, F>(stateful: bool, setup: S) -> Result<(), ProtocolError>
where
    S: FnOnce(&Context) -> Result<F, BoxError>,
    F: FnMut(&[WireTuple], &mut State) -> Result<Vec<Vec<WireTuple>>, BoxError>,
{
    serve_io(std::io::stdin().lock(), std::io::stdout().lock(), DEFAULT_MAX_LINE_BYTES, stateful, setup)
}

/// [`serve`] over any reader (the worker's messages) and writer (the program's answers).
pub fn serve_io<R, W, S, F>(
    input: R,
    mut output: W,
    max_line_bytes: usize,
    stateful: bool,
    setup: S,
) -> Result<(), ProtocolError>
where
    R: BufRead,
    W: Write,
    S: FnOnce(&Context) -> Result<F, BoxError>,
    F: FnMut(&[WireTuple], &mut State) -> Result<Vec<Vec<WireTuple>>, BoxError>,
{
    let mut reader = LineReader::new(input, max_line_bytes);
    let hello = decode_hello(reader.read_line()?)?;
    let context = Context { task: hello.task, header: hello.header };
    let mut process = setup(&context).map_err(|e| ProtocolError::Program(e.to_string()))?;
    answer(&mut output, &Ready::new(stateful), max_line_bytes)?;
    loop {
        let request: BatchRequest = match reader.read_message() {
            Err(ProtocolError::Eof) => return Ok(()),
            other => other?,
        };
        let before = request.state.clone().unwrap_or_default();
        let mut state = before.clone();
        let outputs = process(&request.tuples, &mut state).map_err(|e| {
            let at = request.first_key().map_or(String::new(), |k| format!(" (first key {k:?})"));
            ProtocolError::Program(format!("batch {}{at}: {e}", request.batch))
        })?;
        state.retain(|key, value| before.get(key) != Some(value));
        let reply = BatchReply { batch: request.batch, outputs, state };
        reply.validate(&request).map_err(|e| ProtocolError::Program(format!("invalid answer: {e}")))?;
        answer(&mut output, &reply, max_line_bytes)?;
    }
}

/// Writes one answer line and flushes it, so the worker sees it at once.
fn answer<W: Write, T: serde::Serialize>(
    output: &mut W,
    message: &T,
    max_line_bytes: usize,
) -> Result<(), ProtocolError> {
    output.write_all(&encode_line(message, max_line_bytes)?)?;
    output.flush()?;
    Ok(())
}

/// The exit code of a program's `main`: success, or the error on stderr (prefixed with the
/// program's name) and failure.
pub fn exit_code(program: &str, result: Result<(), ProtocolError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Cursor};

    use super::*;
    use crate::client::Client;
    use crate::codec::decode_line;
    use crate::message::Hello;

    type Outputs = Vec<Vec<WireTuple>>;

    fn lines(messages: &[String]) -> Cursor<Vec<u8>> {
        Cursor::new(messages.iter().flat_map(|m| format!("{m}\n").into_bytes()).collect())
    }

    fn hello() -> String {
        r#"{"rainstorm":1,"task":"s2-t0","header":["\ufeffX","Category"]}"#.to_owned()
    }

    /// A counting program: state = decimal count per tuple key; one output per tuple.
    fn counter(
        _: &Context,
    ) -> Result<impl FnMut(&[WireTuple], &mut State) -> Result<Outputs, BoxError>, BoxError> {
        Ok(|tuples: &[WireTuple], state: &mut State| {
            let mut outputs = Vec::new();
            for t in tuples {
                let count = match state.get(&t.key) {
                    Some(s) => s.parse::<u64>().map_err(|_| format!("bad count {s:?}"))? + 1,
                    None => 1,
                };
                state.insert(t.key.clone(), count.to_string());
                outputs.push(vec![WireTuple::new(&t.key, format!("{},{count}", t.key))]);
            }
            Ok(outputs)
        })
    }

    fn run<S, F>(stateful: bool, input: &[String], setup: S) -> (Result<(), ProtocolError>, Vec<String>)
    where
        S: FnOnce(&Context) -> Result<F, BoxError>,
        F: FnMut(&[WireTuple], &mut State) -> Result<Outputs, BoxError>,
    {
        let mut out = Vec::new();
        let result = serve_io(lines(input), &mut out, DEFAULT_MAX_LINE_BYTES, stateful, setup);
        let text = String::from_utf8(out).expect("utf-8");
        (result, text.lines().map(str::to_owned).collect())
    }

    #[test]
    fn stateful_batches_see_their_own_updates_and_return_only_changes() {
        let input = [
            hello(),
            r#"{"batch":1,"tuples":[{"key":"a","value":""},{"key":"b","value":""},{"key":"a","value":""}],"state":{"a":"10","z":"1"}}"#.to_owned(),
            r#"{"batch":2,"tuples":[],"state":{}}"#.to_owned(),
        ];
        let (result, out) = run(true, &input, counter);
        assert_eq!(result, Ok(()));
        assert_eq!(out[0], r#"{"rainstorm":1,"stateful":true}"#);
        let reply: BatchReply = decode_line(out[1].as_bytes()).expect("a reply");
        let values: Vec<&str> = reply.outputs.iter().map(|o| o[0].value.as_str()).collect();
        assert_eq!(values, ["a,11", "b,1", "a,12"]);
        assert_eq!(reply.state, State::from([("a".into(), "12".into()), ("b".into(), "1".into())]));
        assert_eq!(out[2], r#"{"batch":2,"outputs":[]}"#, "nothing changed: no state field");
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn unchanged_state_is_not_sent_back() {
        let setup = |_: &Context| {
            Ok(|tuples: &[WireTuple], state: &mut State| {
                state.insert("a".into(), "5".into());
                Ok(vec![vec![]; tuples.len()])
            })
        };
        let input =
            [hello(), r#"{"batch":1,"tuples":[{"key":"a","value":""}],"state":{"a":"5"}}"#.to_owned()];
        let (result, out) = run(true, &input, setup);
        assert_eq!((result, out[1].as_str()), (Ok(()), r#"{"batch":1,"outputs":[[]]}"#));
    }

    #[test]
    fn setup_sees_the_header_and_can_refuse_before_ready() {
        let setup = |ctx: &Context| -> Result<_, BoxError> {
            assert_eq!(ctx.task, "s2-t0");
            assert_eq!(ctx.column("X"), Ok(0), "the BOM is ignored");
            let missing = ctx.column("Sign_Post")?;
            Ok(move |_: &[WireTuple], _: &mut State| Ok(vec![vec![]; missing]))
        };
        let (result, out) = run(false, &[hello()], setup);
        assert_eq!(
            result,
            Err(ProtocolError::Program("unknown column `Sign_Post`; available columns: X, Category".into()))
        );
        assert!(out.is_empty(), "no Ready after a failed setup");
        let no_header = Context { task: "t".into(), header: None };
        assert_eq!(no_header.column("X"), Err(ColumnError::NoHeader { name: "X".into() }));
    }

    #[test]
    fn mistakes_of_the_batch_function_are_caught_before_writing() {
        let batch = r#"{"batch":4,"tuples":[{"key":"k1","value":"v"}]}"#.to_owned();
        let too_few = |_: &Context| Ok(|_: &[WireTuple], _: &mut State| Ok(vec![]));
        let (result, out) = run(false, &[hello(), batch.clone()], too_few);
        assert_eq!(
            result,
            Err(ProtocolError::Program(
                "invalid answer: the reply has 0 output lists for 1 input tuples (one list per tuple)".into()
            ))
        );
        assert_eq!(out.len(), 1, "only the Ready");
        let stateless_writes = |_: &Context| {
            Ok(|_: &[WireTuple], s: &mut State| {
                s.insert("k1".into(), "1".into());
                Ok(vec![vec![]])
            })
        };
        let (result, _) = run(false, &[hello(), batch.clone()], stateless_writes);
        assert!(matches!(result, Err(ProtocolError::Program(m)) if m.contains("stateless")));
        let foreign = |_: &Context| {
            Ok(|_: &[WireTuple], s: &mut State| {
                s.insert("other".into(), "1".into());
                Ok(vec![vec![]])
            })
        };
        let (result, _) = run(true, &[hello(), batch.clone()], foreign);
        assert!(matches!(result, Err(ProtocolError::Program(m)) if m.contains("\"other\"")));
        let failing = |_: &Context| Ok(|_: &[WireTuple], _: &mut State| Err("malformed row".into()));
        let (result, _) = run(false, &[hello(), batch], failing);
        assert_eq!(result, Err(ProtocolError::Program("batch 4 (first key \"k1\"): malformed row".into())));
    }

    #[test]
    fn protocol_errors_from_the_worker_end_the_program() {
        let noop = |_: &Context| Ok(|t: &[WireTuple], _: &mut State| Ok(vec![vec![]; t.len()]));
        assert_eq!(run(false, &[], noop).0, Err(ProtocolError::Eof));
        let v2 = r#"{"rainstorm":2,"task":"x","header":null}"#.to_owned();
        assert_eq!(run(false, &[v2], noop).0, Err(ProtocolError::WrongVersion { got: "2".into() }));
        assert!(matches!(run(false, &[hello(), "{".into()], noop).0, Err(ProtocolError::Malformed(_))));
        let mut out = Vec::new();
        let long = lines(&[
            hello(),
            format!(r#"{{"batch":1,"tuples":[{{"key":"{}","value":""}}]}}"#, "k".repeat(200)),
        ]);
        assert_eq!(serve_io(long, &mut out, 100, false, noop), Err(ProtocolError::TooLong { limit: 100 }));
    }

    #[test]
    fn a_client_and_a_program_talk_over_pipes() {
        let (program_in, worker_out) = std::io::pipe().expect("pipe");
        let (worker_in, program_out) = std::io::pipe().expect("pipe");
        let program = std::thread::spawn(move || {
            serve_io(BufReader::new(program_in), program_out, DEFAULT_MAX_LINE_BYTES, true, counter)
        });
        let mut client = Client::new(BufReader::new(worker_in), worker_out, DEFAULT_MAX_LINE_BYTES);
        let header = Some(vec!["Category".to_owned()]);
        assert_eq!(client.handshake(&Hello::new("s2-t0", header)), Ok(Ready::new(true)));
        let tricky = "tab\t, newline\n, quote\", backslash\\, 中文 🦀";
        let request = BatchRequest {
            batch: 1,
            tuples: vec![WireTuple::new(tricky, "v"), WireTuple::new(tricky, "w")],
            state: Some(State::from([(tricky.to_owned(), "41".to_owned())])),
        };
        let reply = client.call(&request).expect("a valid reply");
        assert_eq!(reply.outputs[1], [WireTuple::new(tricky, format!("{tricky},43"))]);
        assert_eq!(reply.state, State::from([(tricky.to_owned(), "43".to_owned())]));
        let malformed =
            BatchRequest { state: Some(State::from([(tricky.to_owned(), "x".to_owned())])), ..request };
        assert_eq!(client.call(&malformed), Err(ProtocolError::Eof), "the program exits on its error");
        let ended = program.join().expect("no panic");
        assert!(matches!(ended, Err(ProtocolError::Program(m)) if m.contains("bad count \"x\"")));
    }

    #[test]
    fn closing_stdin_ends_the_program_cleanly() {
        let (program_in, worker_out) = std::io::pipe().expect("pipe");
        let (worker_in, program_out) = std::io::pipe().expect("pipe");
        let program = std::thread::spawn(move || {
            serve_io(BufReader::new(program_in), program_out, DEFAULT_MAX_LINE_BYTES, false, counter)
        });
        let mut client = Client::new(BufReader::new(worker_in), worker_out, DEFAULT_MAX_LINE_BYTES);
        assert_eq!(client.handshake(&Hello::new("s1-t0", None)), Ok(Ready::new(false)));
        drop(client.into_parts());
        assert_eq!(program.join().expect("no panic"), Ok(()));
    }
}
