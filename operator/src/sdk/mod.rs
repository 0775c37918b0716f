//! The program's side of the protocol, for operator programs written in Rust.
//!
//! This module owns the public face of the SDK: [`serve`] (a function of whole batches, the
//! simplest to write) and [`serve_tuples`] (a function of one tuple at a time, which allocates
//! nothing of its own per tuple and sends unchanged keys and values back as flags), each also
//! over any reader and writer ([`serve_io`], [`serve_tuples_io`]); [`Context`], what the hello
//! told the program; and [`exit_code`]. Both speak version 2 when the worker offers it and
//! version 1 otherwise ([`engine`]), keep the program's session state, and check every reply
//! before writing it ([`reply`]), so a mistake in the program's code ends it with a clear
//! message on stderr rather than an answer the worker refuses.

use std::io::{Read, Write};
use std::process::ExitCode;

use thiserror::Error;

use crate::error::ProtocolError;
use crate::message::{State, WireTuple};
use crate::DEFAULT_MAX_MESSAGE_BYTES;

pub mod engine;
pub mod reply;

pub use crate::frame::TupleRef;
pub use reply::{KeyState, Outputs};

use engine::{EachTuple, WholeBatch};

/// Any error of the program's own code; its text is what the program prints on stderr.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the worker told the program in its hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// The task this process serves (`s<stage>-t<index>`), for log lines.
    pub task: String,
    /// The input's header row, if it has one.
    pub header: Option<Vec<String>>,
    /// The protocol version the conversation goes on in (2 when the worker offers it).
    pub version: u32,
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
/// (empty for stateless programs; for stateful ones, the current state of those of the batch's
/// keys that have one). It returns one output list per tuple, in order, and updates the map as
/// it goes, so that a key seen twice in a batch sees its own update. Only keys of the batch's
/// tuples may be set; removing an entry has no effect. The SDK keeps every key's state between
/// batches (its session) and sends back only the entries that changed.
///
/// Returns `Ok(())` when stdin closes between batches; any error ends the conversation.
pub fn serve<S, F>(stateful: bool, setup: S) -> Result<(), ProtocolError>
where
    S: FnOnce(&Context) -> Result<F, BoxError>,
    F: FnMut(&[WireTuple], &mut State) -> Result<Vec<Vec<WireTuple>>, BoxError>,
{
    let (input, output) = stdio()?;
    serve_io(input, output, DEFAULT_MAX_MESSAGE_BYTES, stateful, setup)
}

/// [`serve`] over any reader (the worker's messages) and writer (the program's answers).
pub fn serve_io<R, W, S, F>(
    input: R,
    output: W,
    max_message_bytes: usize,
    stateful: bool,
    setup: S,
) -> Result<(), ProtocolError>
where
    R: Read,
    W: Write,
    S: FnOnce(&Context) -> Result<F, BoxError>,
    F: FnMut(&[WireTuple], &mut State) -> Result<Vec<Vec<WireTuple>>, BoxError>,
{
    engine::run(input, output, max_message_bytes, |ctx| Ok(WholeBatch { f: setup(ctx)?, stateful }))
}

/// Runs an operator program written as a function of one tuple, on stdin and stdout, until the
/// worker closes stdin.
///
/// `setup` is as for [`serve`]; it returns the tuple function, called for every tuple in order
/// with the tuple (borrowed from the request), the state of its key ([`KeyState`]: the
/// session's, so it sees every earlier tuple's update; stateful programs only) and its
/// [`Outputs`]. Annotate the closure's parameters, e.g.
/// `move |t: TupleRef, state: &mut KeyState, out: &mut Outputs| { ... }`.
pub fn serve_tuples<S, F>(stateful: bool, setup: S) -> Result<(), ProtocolError>
where
    S: FnOnce(&Context) -> Result<F, BoxError>,
    F: FnMut(TupleRef<'_>, &mut KeyState<'_>, &mut Outputs<'_>) -> Result<(), BoxError>,
{
    let (input, output) = stdio()?;
    serve_tuples_io(input, output, DEFAULT_MAX_MESSAGE_BYTES, stateful, setup)
}

/// [`serve_tuples`] over any reader and writer.
pub fn serve_tuples_io<R, W, S, F>(
    input: R,
    output: W,
    max_message_bytes: usize,
    stateful: bool,
    setup: S,
) -> Result<(), ProtocolError>
where
    R: Read,
    W: Write,
    S: FnOnce(&Context) -> Result<F, BoxError>,
    F: FnMut(TupleRef<'_>, &mut KeyState<'_>, &mut Outputs<'_>) -> Result<(), BoxError>,
{
    engine::run(input, output, max_message_bytes, |ctx| {
        Ok(EachTuple { f: setup(ctx)?, stateful, scratch: State::new(), changed: Vec::new() })
    })
}

/// Stdin and stdout without the standard library's buffers: the SDK buffers itself, and
/// stdout's line buffering would flush at every newline byte of a binary frame.
#[cfg(unix)]
fn stdio() -> Result<(std::fs::File, std::fs::File), ProtocolError> {
    use std::os::fd::AsFd;
    let input = std::io::stdin().as_fd().try_clone_to_owned()?;
    let output = std::io::stdout().as_fd().try_clone_to_owned()?;
    Ok((input.into(), output.into()))
}

#[cfg(not(unix))]
fn stdio() -> Result<(std::io::Stdin, std::io::Stdout), ProtocolError> {
    Ok((std::io::stdin(), std::io::stdout()))
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
    use crate::codec::{decode_line, encode_line};
    use crate::csv::field;
    use crate::frame::{decode_reply, encode_request, HEADER_BYTES, TRAILER_BYTES};
    use crate::message::{BatchReply, BatchRequest, Hello, Ready};
    use crate::{V1, V2};

    type Lists = Vec<Vec<WireTuple>>;

    fn lines(messages: &[String]) -> Cursor<Vec<u8>> {
        Cursor::new(messages.iter().flat_map(|m| format!("{m}\n").into_bytes()).collect())
    }

    fn hello() -> String {
        r#"{"rainstorm":1,"task":"s2-t0","header":["\ufeffX","Category"]}"#.to_owned()
    }

    /// A counting program: state = decimal count per tuple key; one output per tuple.
    fn counter(
        _: &Context,
    ) -> Result<impl FnMut(&[WireTuple], &mut State) -> Result<Lists, BoxError>, BoxError> {
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
        F: FnMut(&[WireTuple], &mut State) -> Result<Lists, BoxError>,
    {
        let mut out = Vec::new();
        let result = serve_io(lines(input), &mut out, DEFAULT_MAX_MESSAGE_BYTES, stateful, setup);
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
        let no_header = Context { task: "t".into(), header: None, version: V1 };
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
        for hello in [Hello::new("s2-t0", None), Hello::v1_only("s2-t0", None)] {
            talk_over_pipes(hello);
        }
    }

    fn talk_over_pipes(hello: Hello) {
        let (program_in, worker_out) = std::io::pipe().expect("pipe");
        let (worker_in, program_out) = std::io::pipe().expect("pipe");
        let program = std::thread::spawn(move || {
            serve_io(BufReader::new(program_in), program_out, DEFAULT_MAX_MESSAGE_BYTES, true, counter)
        });
        let mut client = Client::new(BufReader::new(worker_in), worker_out, DEFAULT_MAX_MESSAGE_BYTES);
        let version = if hello.offers(V2) { V2 } else { V1 };
        assert_eq!(client.handshake(&hello), Ok(Ready { rainstorm: version, stateful: true }));
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
            serve_io(BufReader::new(program_in), program_out, DEFAULT_MAX_MESSAGE_BYTES, false, counter)
        });
        let mut client = Client::new(BufReader::new(worker_in), worker_out, DEFAULT_MAX_MESSAGE_BYTES);
        assert_eq!(client.handshake(&Hello::new("s1-t0", None)), Ok(Ready::v2(false)));
        drop(client.into_parts());
        assert_eq!(program.join().expect("no panic"), Ok(()));
    }

    /// App 2's count as a per-tuple function: key = the category, state = the count.
    fn count_each(
        _: &Context,
    ) -> Result<impl FnMut(TupleRef, &mut KeyState, &mut Outputs) -> Result<(), BoxError>, BoxError> {
        Ok(|t: TupleRef, state: &mut KeyState, out: &mut Outputs| {
            let count = match state.get() {
                Some(s) => s.parse::<u64>().map_err(|_| format!("bad count {s:?}"))? + 1,
                None => 1,
            };
            state.set(&count.to_string());
            out.with_value_from(|v| {
                v.push_str(t.key);
                v.push(',');
                v.push_str(&count.to_string());
            });
            Ok(())
        })
    }

    /// Pairs of strings: tuples (key, value) or state entries (key, state).
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    /// A decoded reply: its number, the values of its outputs per tuple, its state changes.
    type Decoded = (u64, Vec<Vec<String>>, Vec<(String, String)>);

    fn frames(requests: &[(u64, Pairs, Pairs)]) -> Vec<u8> {
        let mut bytes = encode_line(&Hello::new("s2-t0", None), 1 << 20).expect("encodes");
        for (batch, tuples, state) in requests {
            encode_request(&mut bytes, *batch, tuples.iter().copied(), state.iter().copied(), 1 << 20)
                .expect("encodes");
        }
        bytes
    }

    /// Counts the writes and flushes a program makes.
    #[derive(Default)]
    struct Counting {
        bytes: Vec<u8>,
        writes: usize,
        flushes: usize,
    }

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
    }

    /// The replies after the ready line, decoded and resolved against `inputs`.
    fn replies(bytes: &[u8], inputs: &[&[(&str, &str)]]) -> Vec<Decoded> {
        let newline = bytes.iter().position(|b| *b == b'\n').expect("a ready line");
        let mut rest = &bytes[newline + 1..];
        let mut out = Vec::new();
        for tuples in inputs {
            let length = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
            let view = decode_reply(&rest[HEADER_BYTES..HEADER_BYTES + length]).expect("a reply");
            let values = (view.lists().zip(tuples.iter()))
                .map(|(list, (_, value))| list.iter().map(|o| o.value_or(value).to_owned()).collect())
                .collect();
            let state = view.state.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            out.push((view.batch, values, state));
            rest = &rest[HEADER_BYTES + length + TRAILER_BYTES..];
        }
        assert!(rest.is_empty(), "more replies than requests");
        out
    }

    #[test]
    fn version_2_keeps_a_session_and_flushes_once_per_burst_of_requests() {
        let batches: [Pairs; 3] = [&[("a", ""), ("b", "")], &[("a", "")], &[("b", ""), ("a", "")]];
        // A key's stored state comes once, the first time the key appears; the session has
        // every later change.
        let input = frames(&[(1, batches[0], &[("a", "10")]), (2, batches[1], &[]), (3, batches[2], &[])]);
        let mut out = Counting::default();
        let result = serve_tuples_io(Cursor::new(input), &mut out, 1 << 20, true, count_each);
        assert_eq!(result, Ok(()));
        let ready_line = br#"{"rainstorm":2,"stateful":true}"#;
        assert!(out.bytes.starts_with(ready_line));
        assert_eq!((out.writes, out.flushes), (2, 2), "the ready line, then all three replies at once");
        let got = replies(&out.bytes, &batches);
        let values = |v: &[&str]| vec![v.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
        assert_eq!(got[0].1, [values(&["a,11"]), values(&["b,1"])].concat());
        assert_eq!(got[1].1, values(&["a,12"]));
        assert_eq!(got[2].1, [values(&["b,2"]), values(&["a,13"])].concat());
        let pairs =
            |v: &[(&str, &str)]| v.iter().map(|(k, s)| (k.to_string(), s.to_string())).collect::<Vec<_>>();
        assert_eq!(got[0].2, pairs(&[("a", "11"), ("b", "1")]));
        assert_eq!(got[2].2, pairs(&[("a", "13"), ("b", "2")]), "each key once, its last state");
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn a_state_entry_overwrites_the_session() {
        let batches: [Pairs; 2] = [&[("a", "")], &[("a", "")]];
        let input = frames(&[(1, batches[0], &[("a", "10")]), (2, batches[1], &[("a", "100")])]);
        let mut out = Vec::new();
        serve_tuples_io(Cursor::new(input), &mut out, 1 << 20, true, count_each).expect("serves");
        let got = replies(&out, &batches);
        assert_eq!((got[0].1[0][0].as_str(), got[1].1[0][0].as_str()), ("a,11", "a,101"));
    }

    #[test]
    fn kept_tuples_go_back_as_flags() {
        let row = "1,Stop,Punched Telespar";
        let setup = |_: &Context| {
            Ok(|t: TupleRef, _: &mut KeyState, out: &mut Outputs| {
                if field(t.value, 2).is_some_and(|f| f == "Punched Telespar") {
                    out.keep();
                }
                Ok(())
            })
        };
        let tuples: &[(&str, &str)] = &[("f:1", row), ("f:2", "2,Yield,Other")];
        let input = frames(&[(1, tuples, &[])]);
        let mut out = Vec::new();
        serve_tuples_io(Cursor::new(input), &mut out, 1 << 20, false, setup).expect("serves");
        let ready = br#"{"rainstorm":2,"stateful":false}"#.len() + 1;
        assert_eq!(out.len() - ready, HEADER_BYTES + 8 + 4 + (4 + 1) + 4 + 4 + TRAILER_BYTES);
        assert_eq!(replies(&out, &[tuples])[0].1, [vec![row.to_owned()], vec![]]);
    }

    #[test]
    fn both_versions_and_both_functions_give_the_same_outputs() {
        let tuples: Vec<WireTuple> = ["a", "b", "a", "c", "a"]
            .iter()
            .enumerate()
            .map(|(i, k)| WireTuple::new(*k, i.to_string()))
            .collect();
        let mut seen = Vec::new();
        for hello in [Hello::new("t", None), Hello::v1_only("t", None)] {
            for per_tuple in [false, true] {
                let (program_in, worker_out) = std::io::pipe().expect("pipe");
                let (worker_in, program_out) = std::io::pipe().expect("pipe");
                let program = std::thread::spawn(move || match per_tuple {
                    true => serve_tuples_io(program_in, program_out, 1 << 20, true, count_each),
                    false => serve_io(program_in, program_out, 1 << 20, true, counter),
                });
                let mut client = Client::new(worker_in, worker_out, 1 << 20);
                client.handshake(&hello).expect("a handshake");
                let mut stored = State::new();
                let mut outputs = Vec::new();
                for (n, chunk) in (1..).zip(tuples.chunks(2)) {
                    let state =
                        chunk.iter().filter_map(|t| stored.get(&t.key).map(|s| (t.key.clone(), s.clone())));
                    let request =
                        BatchRequest { batch: n, tuples: chunk.to_vec(), state: Some(state.collect()) };
                    let reply = client.call(&request).expect("a reply");
                    stored.extend(reply.state);
                    outputs.extend(reply.outputs.into_iter().flatten());
                }
                drop(client.into_parts());
                assert_eq!(program.join().expect("no panic"), Ok(()));
                seen.push((outputs, stored));
            }
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
        assert_eq!(
            seen[0].1,
            State::from([("a".into(), "3".into()), ("b".into(), "1".into()), ("c".into(), "1".into())])
        );
    }

    #[test]
    fn a_stateless_tuple_function_that_sets_state_is_stopped() {
        let setup = |_: &Context| {
            Ok(|_: TupleRef, state: &mut KeyState, _: &mut Outputs| {
                state.set("1");
                Ok(())
            })
        };
        let input = frames(&[(1, &[("k", "v")], &[])]);
        let result = serve_tuples_io(Cursor::new(input), Vec::new(), 1 << 20, false, setup);
        assert!(matches!(result, Err(ProtocolError::Program(m)) if m.contains("stateless")));
    }

    #[test]
    fn malformed_frames_from_the_worker_end_the_program() {
        let noop = |_: &Context| Ok(|_: TupleRef, _: &mut KeyState, _: &mut Outputs| Ok(()));
        let valid = frames(&[(1, &[("k", "v")], &[])]);
        let hello_len = valid.iter().position(|b| *b == b'\n').expect("a line") + 1;
        let run = |bytes: Vec<u8>| serve_tuples_io(Cursor::new(bytes), Vec::new(), 1 << 20, false, noop);
        let mut bad = valid.clone();
        bad[hello_len] = b'{';
        assert!(matches!(run(bad), Err(ProtocolError::BadMagic { .. })));
        let mut bad = valid.clone();
        *bad.last_mut().expect("a byte") ^= 1;
        assert!(matches!(run(bad), Err(ProtocolError::BadChecksum { .. })));
        let mut bad = valid.clone();
        bad[hello_len + 3] = 2;
        assert_eq!(run(bad), Err(ProtocolError::BadMessageType { expected: 1, got: 2 }));
        assert!(matches!(run(valid[..valid.len() - 1].to_vec()), Err(ProtocolError::TruncatedFrame { .. })));
        assert_eq!(run(valid), Ok(()));
    }

    #[test]
    fn a_reply_over_the_limit_is_not_written() {
        let big = |_: &Context| {
            Ok(|_: TupleRef, _: &mut KeyState, out: &mut Outputs| {
                out.with_value(&"x".repeat(2000));
                Ok(())
            })
        };
        let input = frames(&[(1, &[("k", "v")], &[])]);
        let mut out = Vec::new();
        let result = serve_tuples_io(Cursor::new(input), &mut out, 1000, false, big);
        assert!(matches!(result, Err(ProtocolError::FrameTooLong { limit: 1000, .. })));
        assert_eq!(out, [&br#"{"rainstorm":2,"stateful":false}"#[..], b"\n"].concat(), "only the ready line");
    }
}
