//! The demo operator programs, driven through the protocol as a worker would drive them: the
//! Rust binaries (in protocol version 2, with several batches in flight, and made to speak
//! version 1) and `python/traffic_signs.py` (version 1) must give byte-identical outputs, and
//! those outputs must equal the built-in operators' (run by the single-process reference) over
//! `data/Traffic_Signs.csv` and over generated rows full of quotes, commas and odd characters.
//! The Python half is skipped, with a printed `SKIPPED`, when `python3` is not on the PATH.

use std::collections::BTreeSet;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rainstorm_apps::gen_signs::TRAFFIC_SIGNS;
use rainstorm_core::rainstorm::reference::{header_of, run as reference};
use rainstorm_core::rainstorm::{source_lines, OperatorSpec};
use rainstorm_operator::{
    BatchRequest, Client, Hello, ProtocolError, State, WireTuple, DEFAULT_MAX_MESSAGE_BYTES, V1, V2,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    /// A Rust binary offered version 2 (which it takes).
    Rust,
    /// A Rust binary offered only version 1.
    RustV1,
    /// The Python script, offered version 2 (it answers 1).
    Python,
}

/// Batches a version 2 conversation keeps in flight.
const WINDOW: usize = 4;

/// The worker's hello for a flavor.
fn hello(flavor: Flavor, header: Option<Vec<String>>) -> Hello {
    match flavor {
        Flavor::RustV1 => Hello::v1_only("s1-t0", header),
        Flavor::Rust | Flavor::Python => Hello::new("s1-t0", header),
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/traffic_signs.py")
}

/// The flavors to run: Python only if `python3` runs (looked up, and a skip reported, once).
fn flavors() -> Vec<Flavor> {
    static PYTHON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let python = *PYTHON.get_or_init(|| {
        let found = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
        if !found {
            // Straight to stderr, past the test harness's capture, so it shows in every run.
            let skipped = "SKIPPED: the Python half of these tests (python3 is not on PATH)\n";
            let _ = std::io::Write::write_all(&mut std::io::stderr(), skipped.as_bytes());
        }
        found
    });
    if python {
        vec![Flavor::Rust, Flavor::RustV1, Flavor::Python]
    } else {
        vec![Flavor::Rust, Flavor::RustV1]
    }
}

fn command(flavor: Flavor, app: &str, args: &[&str]) -> Command {
    let mut command = match flavor {
        Flavor::Rust | Flavor::RustV1 => Command::new(match app {
            "app1-filter" => env!("CARGO_BIN_EXE_app1-filter"),
            "app1-project" => env!("CARGO_BIN_EXE_app1-project"),
            "app2-filter" => env!("CARGO_BIN_EXE_app2-filter"),
            "app2-count" => env!("CARGO_BIN_EXE_app2-count"),
            other => panic!("no app {other}"),
        }),
        Flavor::Python => {
            // Started directly, so its shebang and executable bit are tested too.
            let mut c = Command::new(script());
            c.arg(app);
            c
        }
    };
    command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    command
}

/// What one program run produced.
struct Run {
    outputs: Vec<WireTuple>,
    state: State,
}

/// Drives one program as a worker would: handshake, then `input` in batches of `batch` tuples,
/// then closes stdin and expects exit 0. In version 2, up to [`WINDOW`] batches are in flight
/// and a stateful program gets a key's stored state once, with the first batch that holds the
/// key; in version 1, one batch at a time, each with the stored state of all its keys, and
/// every fifth batch is asked twice with the same state and must be answered the same (replays
/// after a crash rely on it). The returned state is the stored state updated by every reply.
fn drive(
    flavor: Flavor,
    app: &str,
    args: &[&str],
    header: Option<Vec<String>>,
    input: &[WireTuple],
    batch: usize,
) -> Run {
    drive_from(flavor, app, args, header, input, batch, State::new())
}

/// [`drive`], the framework's stored state starting as `stored` (as after a restart).
fn drive_from(
    flavor: Flavor,
    app: &str,
    args: &[&str],
    header: Option<Vec<String>>,
    input: &[WireTuple],
    batch: usize,
    mut stored: State,
) -> Run {
    let mut child = command(flavor, app, args).spawn().unwrap_or_else(|e| panic!("{flavor:?} {app}: {e}"));
    let (stdout, stdin) = (child.stdout.take().expect("piped"), child.stdin.take().expect("piped"));
    let mut client = Client::new(BufReader::new(stdout), stdin, DEFAULT_MAX_MESSAGE_BYTES);
    let ready = client.handshake(&hello(flavor, header)).expect("handshake");
    assert_eq!(ready.stateful, app == "app2-count", "{flavor:?} {app}");
    assert_eq!(ready.rainstorm, if flavor == Flavor::Rust { V2 } else { V1 }, "{flavor:?} {app}");
    let chunks: Vec<&[WireTuple]> = input.chunks(batch.max(1)).collect();
    let mut outputs = Vec::new();
    let mut sent_keys = BTreeSet::new();
    let mut requests = std::collections::VecDeque::new();
    let (mut sent, mut answered) = (0, 0);
    while answered < chunks.len() {
        let window = if ready.rainstorm == V2 { WINDOW } else { 1 };
        while sent < chunks.len() && client.in_flight() < window {
            let tuples = chunks[sent];
            let state = ready.stateful.then(|| {
                let first_time = |t: &&WireTuple| ready.rainstorm == V1 || sent_keys.insert(t.key.clone());
                let with_state = |t: &WireTuple| stored.get(&t.key).map(|s| (t.key.clone(), s.clone()));
                tuples.iter().filter(first_time).filter_map(with_state).collect()
            });
            sent += 1;
            let request = BatchRequest { batch: sent as u64, tuples: tuples.to_vec(), state };
            client.send(&request).unwrap_or_else(|e| panic!("{flavor:?} {app} batch {sent}: {e}"));
            requests.push_back(request);
        }
        answered += 1;
        let reply = client.receive().unwrap_or_else(|e| panic!("{flavor:?} {app} batch {answered}: {e}"));
        let request = requests.pop_front().expect("a request per reply");
        assert_eq!(reply.batch, request.batch);
        if ready.rainstorm == V1 && answered % 5 == 0 {
            assert_eq!(client.call(&request).as_ref(), Ok(&reply), "{flavor:?} {app}: a replay differs");
        }
        stored.extend(reply.state);
        outputs.extend(reply.outputs.into_iter().flatten());
    }
    drop(client.into_parts());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{flavor:?} {app} exited with {status}");
    Run { outputs, state: stored }
}

/// The physical lines of `content` as source tuples, as RainStorm's sources make them.
fn source(content: &[u8]) -> Vec<WireTuple> {
    source_lines(content).map(|(n, line)| WireTuple::new(format!("input.csv:{n}"), line)).collect()
}

/// The built-ins' outputs, as (key, value), after `op1` alone and after `op1` then `op2`.
fn builtin(content: &[u8], op1: &str, op2: &str) -> (Vec<WireTuple>, Vec<WireTuple>) {
    let spec = |s: &str| OperatorSpec::parse(s).expect("a valid spec");
    let run = |second: &str| {
        let tuples = reference("input.csv", content, &spec(op1), &spec(second)).expect("the reference runs");
        tuples.into_iter().map(|t| WireTuple::new(t.key, t.value)).collect::<Vec<_>>()
    };
    // `regex:^` keeps every tuple unchanged: the first stage's outputs.
    (run("regex:^"), run(op2))
}

/// App 1 as programs equals `grep:<pattern>` then `project:OBJECTID,Sign_Type`, keys included.
fn check_app1(content: &[u8], pattern: &str) {
    let (header, input) = (header_of(content), source(content));
    let (_, expected) = builtin(content, &format!("grep:{pattern}"), "project:OBJECTID,Sign_Type");
    for flavor in flavors() {
        let filtered = drive(flavor, "app1-filter", &[pattern], header.clone(), &input, 256).outputs;
        let projected = drive(flavor, "app1-project", &[], header.clone(), &filtered, 97).outputs;
        assert_eq!(projected, expected, "{flavor:?} app 1 with {pattern:?}");
    }
}

/// App 2 as programs equals `column:Sign_Post=<value>` then `count:Category`: the same values
/// after each stage, the same keys at the end; the filter's key is the row's category.
fn check_app2(content: &[u8], sign_post: &str) -> usize {
    let (header, input) = (header_of(content), source(content));
    let (kept, counted) = builtin(content, &format!("column:Sign_Post={sign_post}"), "count:Category");
    let category =
        header_of(content).and_then(|h| h.iter().position(|c| c == "Category")).expect("a Category column");
    for flavor in flavors() {
        let filtered = drive(flavor, "app2-filter", &[sign_post], header.clone(), &input, 256).outputs;
        let values = |ts: &[WireTuple]| ts.iter().map(|t| t.value.clone()).collect::<Vec<_>>();
        assert_eq!(values(&filtered), values(&kept), "{flavor:?} app2-filter {sign_post:?}");
        for t in &filtered {
            let fields = rainstorm_operator::csv::split_record(&t.value);
            assert_eq!(t.key, fields.get(category).cloned().unwrap_or_default(), "key = Category");
        }
        let run = drive(flavor, "app2-count", &[], header.clone(), &filtered, 97);
        assert_eq!(run.outputs, counted, "{flavor:?} app 2 with {sign_post:?}");
        let total: u64 = run.state.values().map(|c| c.parse::<u64>().expect("a count")).sum();
        assert_eq!(total, kept.len() as u64);
    }
    kept.len()
}

#[test]
fn app1_programs_equal_the_builtins_on_the_dataset() {
    for pattern in ["Parking", "Stop, All Way", "\"", "Telespar", "OBJECTID", "not in the file"] {
        check_app1(TRAFFIC_SIGNS, pattern);
    }
}

#[test]
fn app2_programs_equal_the_builtins_on_the_dataset() {
    let kept: Vec<usize> = ["Punched Telespar", "Streetlight", "Traffic Signal Mast Arm", "", "nothing"]
        .iter()
        .map(|post| check_app2(TRAFFIC_SIGNS, post))
        .collect();
    // 8,153 records, less two that a quoted newline in Size_ splits: neither half has Sign_Post
    // in column 7 (like the built-in, the programs see physical lines).
    assert_eq!((kept[0], kept[1], kept[4]), (8151, 2343, 0), "see the dataset's Sign_Post counts");
}

/// Rows over an alphabet of CSV troublemakers, one per physical line (no CR or LF: those
/// would split lines), with the columns the apps need.
fn tricky_rows(seed: u64, rows: usize) -> Vec<u8> {
    let alphabet = ["a", "b", ",", "\"", "\"\"", " ", "é", "🦀", "\0", "\t"];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = String::from("\u{feff} OBJECTID ,Sign_Type,Sign_Post,Category\n");
    for _ in 0..rows {
        let len = rng.gen_range(0..14);
        let line: String = (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect();
        out.push_str(&line);
        out.push('\n');
    }
    out.into_bytes()
}

#[test]
fn programs_equal_the_builtins_on_tricky_rows() {
    for seed in 0..4 {
        let content = tricky_rows(seed, 3_000);
        check_app1(&content, "a");
        check_app1(&content, "\"");
        assert!(check_app2(&content, "a") > 0);
        check_app2(&content, "");
    }
}

/// Tuples no file line can hold (CR, LF), straight to the programs: Rust and Python agree.
#[test]
fn rust_and_python_agree_on_any_tuple() {
    let flavors = flavors();
    if flavors.len() < 2 {
        return;
    }
    let alphabet = ["a", ",", "\"", "\r", "\n", "\r\n", " ", "\0", "\u{e000}", "\\", "中"];
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let text = |rng: &mut ChaCha8Rng| -> String {
        (0..rng.gen_range(0..12)).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect()
    };
    let input: Vec<WireTuple> = (0..2_000).map(|_| WireTuple::new(text(&mut rng), text(&mut rng))).collect();
    let header = Some(["OBJECTID", "Sign_Type", "Sign_Post", "Category"].map(String::from).to_vec());
    for (app, args) in [
        ("app1-filter", &["\r"][..]),
        ("app1-project", &[]),
        ("app2-filter", &["a"]),
        ("app2-filter", &["\n"]),
        ("app2-count", &[]),
    ] {
        let [rust, rust_v1, python] = [Flavor::Rust, Flavor::RustV1, Flavor::Python]
            .map(|f| drive(f, app, args, header.clone(), &input, 64));
        assert_eq!(rust.outputs, python.outputs, "{app} {args:?}");
        assert_eq!(rust.state, python.state, "{app} {args:?}");
        assert_eq!((&rust_v1.outputs, &rust_v1.state), (&rust.outputs, &rust.state), "{app} {args:?}");
        assert!(!rust.outputs.is_empty(), "{app} {args:?} exercised nothing");
    }
}

/// A count restarted from stored state (as after a crash): every flavor continues from it, a
/// version 2 program getting each key's stored state once.
#[test]
fn a_restarted_count_continues_from_the_stored_state() {
    let keys = ["Parking", "Stop", "Parking", "Yield", "Parking", "Stop"];
    let input: Vec<WireTuple> = (0..300).map(|i| WireTuple::new(keys[i % keys.len()], "row")).collect();
    let stored =
        State::from([("Parking".to_owned(), "1000".to_owned()), ("Stop".to_owned(), "7".to_owned())]);
    let mut runs = Vec::new();
    for flavor in flavors() {
        let run = drive_from(flavor, "app2-count", &[], None, &input, 16, stored.clone());
        runs.push((flavor, run.outputs, run.state));
    }
    let expected = State::from([
        ("Parking".into(), "1150".into()),
        ("Stop".into(), "107".into()),
        ("Yield".into(), "50".into()),
    ]);
    for (flavor, outputs, state) in &runs {
        assert_eq!(state, &expected, "{flavor:?}");
        assert_eq!(outputs, &runs[0].1, "{flavor:?} differs from {:?}", runs[0].0);
    }
    assert_eq!(runs[0].1[0], WireTuple::new("Parking", "Parking,1001"));
}

/// Starts a program and returns its answer to the hello, and how it exited after stdin closed.
fn handshake_only(
    flavor: Flavor,
    app: &str,
    args: &[&str],
    header: Option<Vec<String>>,
) -> (Result<bool, ProtocolError>, bool) {
    let mut child = command(flavor, app, args).stderr(Stdio::null()).spawn().expect("spawn");
    let (stdout, stdin) = (child.stdout.take().expect("piped"), child.stdin.take().expect("piped"));
    let mut client = Client::new(BufReader::new(stdout), stdin, DEFAULT_MAX_MESSAGE_BYTES);
    let ready = client.handshake(&hello(flavor, header)).map(|r| r.stateful);
    drop(client.into_parts());
    (ready, child.wait().expect("wait").success())
}

#[test]
fn programs_refuse_to_start_without_their_columns() {
    for flavor in flavors() {
        for app in ["app1-project", "app2-filter"] {
            let args: &[&str] = if app == "app2-filter" { &["x"] } else { &[] };
            let only_x = Some(vec!["X".to_owned()]);
            assert_eq!(
                handshake_only(flavor, app, args, only_x),
                (Err(ProtocolError::Eof), false),
                "{flavor:?} {app}"
            );
            assert_eq!(
                handshake_only(flavor, app, args, None),
                (Err(ProtocolError::Eof), false),
                "{flavor:?} {app}"
            );
        }
        assert_eq!(
            handshake_only(flavor, "app1-filter", &["x"], None),
            (Ok(false), true),
            "no columns needed"
        );
        assert_eq!(
            handshake_only(flavor, "app1-filter", &[], None),
            (Err(ProtocolError::Eof), false),
            "usage"
        );
        assert_eq!(
            handshake_only(flavor, "app1-filter", &[""], None),
            (Err(ProtocolError::Eof), false),
            "empty"
        );
    }
}

#[test]
fn a_malformed_count_state_fails_the_program() {
    for flavor in flavors() {
        for bad in ["", "x", "-1", " 1", "18446744073709551615", "99999999999999999999999"] {
            let mut child = command(flavor, "app2-count", &[]).stderr(Stdio::null()).spawn().expect("spawn");
            let (stdout, stdin) = (child.stdout.take().expect("piped"), child.stdin.take().expect("piped"));
            let mut client = Client::new(BufReader::new(stdout), stdin, DEFAULT_MAX_MESSAGE_BYTES);
            assert_eq!(client.handshake(&hello(flavor, None)).map(|r| r.stateful), Ok(true));
            let request = BatchRequest {
                batch: 1,
                tuples: vec![WireTuple::new("Parking", "row")],
                state: Some(State::from([("Parking".to_owned(), bad.to_owned())])),
            };
            assert_eq!(client.call(&request), Err(ProtocolError::Eof), "{flavor:?} state {bad:?}");
            drop(client.into_parts());
            assert!(!child.wait().expect("wait").success(), "{flavor:?} state {bad:?}");
        }
    }
}

#[cfg(unix)]
#[test]
fn the_python_script_is_executable() {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(script()).expect("the script exists").permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "chmod +x apps/python/traffic_signs.py");
}

/// The Python example of `docs/OPERATORS.md` speaks the protocol (the page stays true).
#[test]
fn the_python_example_in_the_docs_works() {
    if !flavors().contains(&Flavor::Python) {
        return;
    }
    let doc = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATORS.md"))
        .expect("docs/OPERATORS.md");
    let code =
        doc.split("```python\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a Python block");
    let path = std::env::temp_dir().join(format!("rainstorm-doc-example-{}.py", std::process::id()));
    std::fs::write(&path, code).expect("write the example");
    let mut child = Command::new("python3")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let (stdout, stdin) = (child.stdout.take().expect("piped"), child.stdin.take().expect("piped"));
    let mut client = Client::new(BufReader::new(stdout), stdin, DEFAULT_MAX_MESSAGE_BYTES);
    assert_eq!(client.handshake(&Hello::new("s2-t0", None)).map(|r| r.stateful), Ok(true));
    let request = BatchRequest {
        batch: 1,
        tuples: ["a", "a", "b\n\"é"].map(|k| WireTuple::new(k, "v")).to_vec(),
        state: Some(State::from([("a".to_owned(), "4".to_owned())])),
    };
    let reply = client.call(&request).expect("a valid reply");
    let values: Vec<&str> = reply.outputs.iter().map(|o| o[0].value.as_str()).collect();
    assert_eq!(values, ["a=5", "a=6", "b\n\"é=1"]);
    assert_eq!(reply.state, State::from([("a".into(), "6".into()), ("b\n\"é".into(), "1".into())]));
    drop(client.into_parts());
    assert!(child.wait().expect("wait").success());
    let _ = std::fs::remove_file(path);
}
