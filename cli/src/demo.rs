//! `rainstorm demo`: the original system's demonstration, end to end on real processes.
//!
//! It starts a 10-process loopback cluster, stores the Traffic Signs dataset in HyDFS and runs
//! the two original applications as operator programs (the Rust demo programs, uploaded by the
//! `RainStorm` command itself) with 3 tasks per stage:
//!
//! * App 1: rows containing a pattern → `OBJECTID,Sign_Type`;
//! * App 2: rows whose `Sign_Post` equals a value → a running count per `Category`.
//!
//! The sources read at 2,000 lines/s (`--rate`), as a live stream would arrive, so each job runs
//! for a few seconds; about 1 s into each job it asks the leader where the tasks run and kills
//! two worker processes with SIGKILL. Results stream to the console as the leader appends them. When a job
//! ends, its destination file is read back from HyDFS and compared, as a multiset of lines, with
//! a single-process run of the built-in operators that compute the same thing; so is what the
//! console received. The verdict says whether every expected output is there exactly once.
//! Between the jobs the killed nodes are restarted (they rejoin as new members).
//!
//! A third act kills a job's leader: App 2 again, submitted to node 2, whose process is killed
//! with SIGKILL about 1 s in. Another node follows the job's outputs (`follow <id>`) from the
//! start; the demo prints how that node sees the job change hands (leader gone, then a successor
//! in the next term), what the leader's console is told, and the same verdict over the
//! destination file and the follower's stream.

use crate::cluster::{ClusterArgs, LocalCluster};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use rainstorm_core::rainstorm::reference;
use rainstorm_core::rainstorm::{dest_line, OperatorSpec};
use rainstorm_runtime::control;
use rainstorm_runtime::jobs::{Streamed, NEW_LEADER_NOTE, ROLLBACK_NOTE};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The demo programs, built from the `rainstorm-apps` package next to this executable.
const PROGRAMS: [&str; 4] = ["app1-filter", "app1-project", "app2-filter", "app2-count"];
/// The node every job is submitted to (its leader). Never killed.
const LEADER: u16 = 1;
/// The node the third act's job is submitted to, and killed.
const DOOMED_LEADER: u16 = 2;
/// The node that follows the third act's job and reports how it changes hands (one never
/// killed, so it has heard of the job from its start).
const WATCHER: u16 = LEADER;
/// How long the third act waits for a successor to finish the job.
const TAKEOVER_WAIT: Duration = Duration::from_secs(120);
/// How long past `kill_after_ms` the third act waits for the job's first output before it
/// kills the leader anyway.
const FIRST_OUTPUT_WAIT: Duration = Duration::from_secs(30);
/// A job with no new output for this long has every node's view of it written down.
const STALL_REPORT: Duration = Duration::from_secs(8);

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of nodes, introducer included.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(6..=64))]
    pub nodes: u16,
    /// The introducer's port; members use the following ports.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Directory for the nodes' data dirs and the demo's files.
    #[arg(long, default_value = "rainstorm-demo")]
    pub dir: PathBuf,
    /// The input file (default: the Traffic Signs dataset in `data/`).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Tasks per stage.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub tasks: u32,
    /// When to kill two workers, in ms after each job starts (and the third act's leader, at
    /// that time or at the job's first output, whichever is later).
    #[arg(long, default_value_t = 1_000)]
    pub kill_after_ms: u64,
    /// Input lines per second the sources read, as a live stream would arrive (so the kills
    /// fall while the jobs run; 0 reads as fast as the job goes).
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Do not kill anything (the same jobs, failure-free, and no third act).
    #[arg(long)]
    pub no_kill: bool,
    /// App 1's pattern.
    #[arg(long, default_value = "Streetlight")]
    pub pattern: String,
    /// App 2's `Sign_Post` value.
    #[arg(long, default_value = "Punched Telespar")]
    pub sign_post: String,
    /// Print this many of each job's outputs as they arrive (all of them go to the job's file
    /// in `<dir>`); the rest is summed up once a second.
    #[arg(long, default_value_t = 15)]
    pub show: usize,
    /// The membership protocol period in ms (detection of the killed workers takes a few
    /// periods).
    #[arg(long, default_value_t = 500)]
    pub period_ms: u64,
}

/// One of the two applications: its operator programs and the built-ins that compute the same.
#[derive(Clone)]
struct App {
    name: &'static str,
    programs: [(String, String); 2],
    builtins: [String; 2],
    dest: String,
}

impl App {
    fn all(args: &DemoArgs) -> [App; 2] {
        let quoted = |s: &str| shlex::try_quote(s).map(|q| q.into_owned()).unwrap_or_else(|_| s.to_owned());
        [
            App {
                name: "App 1",
                programs: [
                    ("app1-filter".into(), quoted(&args.pattern)),
                    ("app1-project".into(), String::new()),
                ],
                builtins: [format!("grep:{}", args.pattern), "project:OBJECTID,Sign_Type".into()],
                dest: "demo/app1.out".into(),
            },
            App {
                name: "App 2",
                programs: [
                    ("app2-filter".into(), quoted(&args.sign_post)),
                    ("app2-count".into(), String::new()),
                ],
                builtins: [format!("column:Sign_Post={}", args.sign_post), "count:Category".into()],
                dest: "demo/app2.out".into(),
            },
        ]
    }

    /// The `RainStorm` command line, with each program as a quoted local path and its arguments.
    fn command(&self, bin: &Path, src: &str, tasks: u32, rate: u64) -> String {
        let op = |(program, args): &(String, String)| program_word(bin, program, args);
        let rate = if rate > 0 { format!(" --rate {rate}") } else { String::new() };
        format!(
            "RainStorm {} {} {src} {} {tasks}{rate}",
            op(&self.programs[0]),
            op(&self.programs[1]),
            self.dest
        )
    }

    /// The reference run's destination lines, counted.
    fn expected(&self, input: &[u8], src: &str) -> Result<BTreeMap<String, usize>> {
        let spec = |s: &str| OperatorSpec::parse(s).map_err(|e| anyhow!("{s}: {e}"));
        let out = reference::run(src, input, &spec(&self.builtins[0])?, &spec(&self.builtins[1])?)
            .map_err(|e| anyhow!("the reference run of {} failed: {e}", self.name))?;
        Ok(count_lines(out.iter().map(|t| dest_line(t).trim_end_matches('\n').to_owned())))
    }
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let bin = programs_dir()?;
    let input_path = args.input.clone().unwrap_or_else(default_input);
    let input =
        std::fs::read(&input_path).with_context(|| format!("reading the input {}", input_path.display()))?;
    let _ = std::fs::remove_dir_all(&args.dir);
    let files = args.dir.join("files");
    std::fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;

    let cluster_args = ClusterArgs {
        period_ms: args.period_ms,
        ..ClusterArgs::local(args.nodes, args.base_port, args.dir.join("cluster"))
    };
    println!(
        "starting {} nodes on 127.0.0.1:{}..{} (logs in {}/node<i>/) ...",
        args.nodes,
        args.base_port,
        args.base_port + args.nodes - 1,
        cluster_args.dir.display()
    );
    let started = Instant::now();
    let mut cluster = LocalCluster::start(cluster_args, crate::cluster::this_tool()?)?;
    println!("cluster formed in {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "watch it live: node{LEADER}'s status page {} (every node has one: {} ... {}; metrics at /metrics)",
        cluster.page(LEADER),
        cluster.page(0),
        cluster.page(args.nodes - 1)
    );

    let src = "demo/Traffic_Signs.csv";
    let stored = cluster.ctl(LEADER, &format!("create {} {src}", input_path.display()))?;
    println!("node{LEADER}: {}", stored.trim());
    let lines = input.iter().filter(|&&b| b == b'\n').count();

    let mut verdicts = Vec::new();
    let apps = App::all(&args);
    let last = apps.len() - 1;
    for (i, app) in apps.into_iter().enumerate() {
        println!();
        let pace = if args.rate > 0 { format!(", read at {} lines/s", args.rate) } else { String::new() };
        println!(
            "== {}: {} | {} on {src} ({lines} lines{pace}), {} tasks per stage",
            app.name, app.builtins[0], app.builtins[1], args.tasks
        );
        let expected = app.expected(&input, src)?;
        let outcome = run_job(&mut cluster, &args, &app, &bin, src, &files)?;
        let verdict = outcome.judge(&app, &expected, &cluster, &files);
        println!("{}", verdict.line);
        verdicts.push(verdict.pass);
        if !outcome.killed.is_empty() {
            restart(&mut cluster, &outcome.killed)?;
        }
        if i == last && !args.no_kill {
            let verdict = run_leader_kill(&mut cluster, &args, &app, &bin, src, &files, &expected)?;
            println!("{}", verdict.line);
            verdicts.push(verdict.pass);
        }
    }
    cluster.stop();
    println!();
    let pass = verdicts.iter().all(|p| *p);
    println!(
        "verdict: {} — {}",
        if pass { "PASS" } else { "FAIL" },
        if pass {
            "every job delivered every output exactly once (destination files and console streams equal \
             the single-process reference)"
        } else {
            "see the lines above"
        }
    );
    Ok(if pass { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// What one job did.
struct Outcome {
    reply: Result<String, String>,
    streamed: Vec<String>,
    killed: Vec<u16>,
    /// The kills happened while the job was still running.
    killed_mid_job: bool,
    /// The node killed was the job's leader.
    leader_killed: bool,
    secs: f64,
}

/// Runs one job on the leader, killing two of its workers `kill_after_ms` into it.
fn run_job(
    cluster: &mut LocalCluster,
    args: &DemoArgs,
    app: &App,
    bin: &Path,
    src: &str,
    files: &Path,
) -> Result<Outcome> {
    let line = app.command(bin, src, args.tasks, args.rate);
    println!("node{LEADER}> {line}");
    let socket = control::socket_path(&cluster.data_dir(LEADER));
    let log_path = files.join(format!("{}.console", app.dest.replace('/', "_")));
    let stream = Arc::new(Mutex::new(StreamState::new(app.name, args.show, &log_path)?));
    let started = Instant::now();
    let job = {
        let stream = Arc::clone(&stream);
        spawn_command(socket, line, move |s| {
            if let Ok(mut st) = stream.lock() {
                st.on(s);
            }
        })
    };
    let mut killed = Vec::new();
    let mut killed_mid_job = false;
    let mut killed_at = None;
    let mut next_summary = started + Duration::from_secs(1);
    let mut next_try = started;
    let mut last_outputs = (0, started);
    let mut stall_reported = false;
    while !job.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        // The kill clock starts when the job does (uploading the programs comes first).
        let (job_id, job_started) = stream.lock().map(|s| (s.job.clone(), s.started)).unwrap_or((None, None));
        let due = job_started.is_some_and(|t| now >= t + Duration::from_millis(args.kill_after_ms));
        if !args.no_kill && killed.is_empty() && due && now >= next_try {
            next_try = now + Duration::from_millis(100);
            let placement = job_id.and_then(|id| cluster.ctl(LEADER, &format!("job {id}")).ok());
            let victims = placement.map(|p| victims(&p, cluster.args.base_port)).unwrap_or_default();
            if victims.len() == 2 {
                killed_mid_job = !job.is_finished();
                let at = job_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
                for (index, tasks) in &victims {
                    cluster.kill(*index)?;
                    println!(
                        "  killed node{index} (127.0.0.1:{}) with SIGKILL {at:.2} s into the job: it ran {}",
                        cluster.port(*index),
                        tasks.join(", ")
                    );
                }
                killed = victims.into_iter().map(|(i, _)| i).collect();
                killed_at = Some(now);
            }
        }
        if now >= next_summary {
            next_summary += Duration::from_secs(1);
            let (outputs, show, job_id, read) = stream
                .lock()
                .map(|s| (s.outputs, s.show, s.job.clone(), s.lines_read.clone()))
                .unwrap_or((0, 0, None, None));
            if outputs > show {
                let read = read.map(|r| format!("; input lines read {r}")).unwrap_or_default();
                println!("  ... {outputs} outputs so far ({:.1} s{read})", started.elapsed().as_secs_f64());
            }
            // No output for a while: keep every live node's account of the job for the logs.
            if outputs == last_outputs.0 {
                if now.duration_since(last_outputs.1) >= STALL_REPORT && !stall_reported {
                    if let Some(id) = job_id {
                        let path = files.join(format!("stall-{id}.txt"));
                        dump_job(cluster, &id, &path);
                        println!(
                            "  (no new output for {} s: every node's view of the job is in {})",
                            STALL_REPORT.as_secs(),
                            path.display()
                        );
                        stall_reported = true;
                    }
                }
            } else {
                last_outputs = (outputs, now);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let reply = joined_reply(job.join(), "the leader's control socket");
    let mut state = stream.lock().map_err(|_| anyhow!("stream state poisoned"))?;
    if let Some((rolled_back, first_output)) = killed_at.and_then(|kill| state.recovery.since(kill)) {
        let resumed = first_output.map_or_else(
            || "no output came after it".to_owned(),
            |t| format!("the first output after it came {t:.1} s after the kills"),
        );
        println!("  recovery: the leader rolled back {rolled_back:.1} s after the kills; {resumed}");
    }
    let streamed = std::mem::take(&mut state.lines);
    drop(state);
    Ok(Outcome { reply, streamed, killed, killed_mid_job, leader_killed: false, secs })
}

/// The third act: `app` submitted to [`DOOMED_LEADER`], which is killed `kill_after_ms` into the
/// job (or at its first output, if that is later); [`WATCHER`] follows the job's outputs and
/// reports who leads it. The verdict covers the destination file and the follower's stream.
fn run_leader_kill(
    cluster: &mut LocalCluster,
    args: &DemoArgs,
    app: &App,
    bin: &Path,
    src: &str,
    files: &Path,
    expected: &BTreeMap<String, usize>,
) -> Result<Verdict> {
    let app = App { name: "App 2, leader killed", dest: "demo/app2-leader-killed.out".into(), ..app.clone() };
    println!();
    println!(
        "== {}: the same job on node{DOOMED_LEADER}, which leads it and is killed with SIGKILL mid-job; \
         node{WATCHER} follows it",
        app.name
    );
    let line = app.command(bin, src, args.tasks, args.rate);
    println!("node{DOOMED_LEADER}> {line}");
    let console = files.join("leader-killed.console");
    let stream = Arc::new(Mutex::new(StreamState::new(app.name, args.show, &console)?));
    // Through `rainstorm ctl`, as a user would: what it prints when its node dies is part of the act.
    let job = {
        let stream = Arc::clone(&stream);
        let node = format!("node{DOOMED_LEADER}");
        spawn_ctl(&crate::cluster::this_tool()?, &cluster.args.dir, &node, &line, move |s| {
            if let Ok(mut st) = stream.lock() {
                st.on(s);
            }
        })?
    };
    let leader_addr = format!("127.0.0.1:{}", cluster.port(DOOMED_LEADER));
    let waited = Instant::now();
    let (id, started) = loop {
        let (id, started) = stream.lock().map(|s| (s.job.clone(), s.started)).unwrap_or((None, None));
        if let (Some(id), Some(started)) = (id, started) {
            break (id, started);
        }
        if job.thread.is_finished() || waited.elapsed() > Duration::from_secs(60) {
            job.kill();
            bail!("the job on node{DOOMED_LEADER} did not start");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let follow_log = files.join("leader-killed.follow");
    let follow = Arc::new(Mutex::new(StreamState::new("follow", 0, &follow_log)?));
    follow.lock().map_err(|_| anyhow!("poisoned"))?.notes = format!("node{WATCHER}");
    println!("node{WATCHER}> follow {id}");
    let follower = {
        let follow = Arc::clone(&follow);
        spawn_command(control::socket_path(&cluster.data_dir(WATCHER)), format!("follow {id}"), move |s| {
            if let Ok(mut st) = follow.lock() {
                st.on(s);
            }
        })
    };
    std::thread::sleep(
        (started + Duration::from_millis(args.kill_after_ms)).saturating_duration_since(Instant::now()),
    );
    // Mid-job means once it runs: a leader killed before its first output may not have made the
    // job's files yet (a node that has just rejoined takes longer), and then nothing is left to
    // take the job over from.
    let first_wait = Instant::now();
    while stream.lock().map(|s| s.outputs == 0).unwrap_or(false)
        && !job.thread.is_finished()
        && first_wait.elapsed() < FIRST_OUTPUT_WAIT
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed_mid_job = !job.thread.is_finished();
    let outputs = stream.lock().map(|s| s.outputs).unwrap_or(0);
    println!(
        "  killing node{DOOMED_LEADER} ({leader_addr}, the job's leader) with SIGKILL {:.2} s into the job, \
         {outputs} outputs in",
        started.elapsed().as_secs_f64()
    );
    cluster.kill(DOOMED_LEADER)?;
    let killed_at = Instant::now();
    let mut heard = String::new();
    let mut taken_over = None;
    while !follower.is_finished() && killed_at.elapsed() < TAKEOVER_WAIT {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(answer) = cluster.ctl(WATCHER, &format!("job {id}")) else { continue };
        let Some(d) = crate::ctl::described(&answer) else { continue };
        let now = format!("{}; led by {} (term {})", d.state, d.leader, d.term);
        if now != heard {
            println!(
                "  node{WATCHER}: job {id} {now} ({:.1} s after the kill)",
                killed_at.elapsed().as_secs_f64()
            );
            if d.leader != leader_addr && taken_over.is_none() {
                taken_over = Some(killed_at.elapsed().as_secs_f64());
            }
            heard = now;
        }
    }
    // `ctl` ends once another node names the successor; give it a little longer than the job.
    let grace = Instant::now() + Duration::from_secs(5);
    while !job.thread.is_finished() && Instant::now() < grace {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !job.thread.is_finished() {
        job.kill();
    }
    match job.thread.join() {
        Ok(Ok(status)) => println!("  rainstorm ctl node{DOOMED_LEADER} ended: {status}"),
        Ok(Err(e)) => println!("  rainstorm ctl node{DOOMED_LEADER} failed: {e}"),
        Err(_) => println!("  the thread reading rainstorm ctl panicked"),
    }
    let fail = |why: String| Verdict { pass: false, line: format!("verdict ({}): FAIL — {why}", app.name) };
    if !follower.is_finished() {
        return Ok(fail(format!("the job did not end within {} s of the kill", TAKEOVER_WAIT.as_secs())));
    }
    let secs = started.elapsed().as_secs_f64();
    let reply = joined_reply(follower.join(), &format!("node{WATCHER}'s control socket"));
    let mut state = follow.lock().map_err(|_| anyhow!("stream state poisoned"))?;
    let first_output = state.taken_over.and_then(|(_, first)| first).map(|t| t.duration_since(killed_at));
    let streamed = std::mem::take(&mut state.lines);
    drop(state);
    match (taken_over, first_output) {
        (Some(t), Some(first)) => println!(
            "  recovery: node{WATCHER} saw a successor lead the job {t:.1} s after the kill; the first output \
             the successor committed reached it {:.1} s after the kill",
            first.as_secs_f64()
        ),
        (Some(t), None) => println!(
            "  recovery: node{WATCHER} saw a successor lead the job {t:.1} s after the kill; it committed no \
             new output"
        ),
        (None, _) => println!("  recovery: node{WATCHER} never saw another node lead the job"),
    }
    let outcome =
        Outcome { reply, streamed, killed: vec![DOOMED_LEADER], killed_mid_job, leader_killed: true, secs };
    let mut verdict = outcome.judge(&app, expected, cluster, files);
    if taken_over.is_none() && verdict.pass {
        verdict = fail("the job completed, but no successor was seen leading it".into());
    }
    Ok(verdict)
}

/// A command's answer from its joined thread ([`spawn_command`]): its output, or why it failed
/// (`socket` names the control socket asked).
fn joined_reply(
    joined: std::thread::Result<std::io::Result<rainstorm_runtime::driver::CommandReply>>,
    socket: &str,
) -> Result<String, String> {
    match joined {
        Ok(Ok(reply)) if reply.ok => Ok(reply.output),
        Ok(Ok(reply)) => Err(reply.output),
        Ok(Err(e)) => Err(format!("{socket} failed: {e}")),
        Err(_) => Err("the thread reading the command's answer panicked".into()),
    }
}

/// A local program and its arguments as one quoted operator word of the `RainStorm` command.
pub fn program_word(bin: &Path, program: &str, args: &str) -> String {
    let word = format!("{} {args}", bin.join(program).display());
    shlex::try_quote(word.trim_end()).map(|q| q.into_owned()).unwrap_or(word)
}

pub use rainstorm_runtime::jobs::started_job;

/// Sends one command to a node's control socket on a thread of its own, handing every
/// streamed line to `on_line`; the thread ends with the command.
pub fn spawn_command(
    socket: PathBuf,
    line: String,
    on_line: impl FnMut(Streamed) + Send + 'static,
) -> std::thread::JoinHandle<std::io::Result<rainstorm_runtime::driver::CommandReply>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(control::request_streaming(&socket, &line, |_, _| {}, on_line))
    })
}

/// A `rainstorm ctl` running on a thread of its own.
pub struct CtlRun {
    /// Ends with `ctl`, with its exit status.
    pub thread: std::thread::JoinHandle<std::io::Result<std::process::ExitStatus>>,
    pid: u32,
}

impl CtlRun {
    /// SIGKILL to `ctl` (its thread then ends).
    pub fn kill(&self) {
        let _ = Command::new("kill").arg("-KILL").arg(self.pid.to_string()).status();
    }
}

/// Runs `rainstorm ctl <node> <line>` on the cluster under `cluster_dir`, handing each line it
/// prints to `on_line`: standard output as results, standard error as notes (`ctl` prints them
/// so when its output is not a terminal).
pub fn spawn_ctl(
    tool: &Path,
    cluster_dir: &Path,
    node: &str,
    line: &str,
    on_line: impl FnMut(Streamed) + Send + 'static,
) -> Result<CtlRun> {
    use std::io::BufRead;
    use std::process::Stdio;
    let words = shlex::split(line).ok_or_else(|| anyhow!("unbalanced quotes in `{line}`"))?;
    let mut child = Command::new(tool)
        .arg("ctl")
        .arg("--cluster-dir")
        .arg(cluster_dir)
        .arg(node)
        .args(&words)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} ctl", tool.display()))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        bail!("rainstorm ctl has no pipes");
    };
    let on_line = Arc::new(Mutex::new(on_line));
    let notes = {
        let on_line = Arc::clone(&on_line);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut f) = on_line.lock() {
                    f(Streamed::Note(line));
                }
            }
        })
    };
    let pid = child.id();
    let thread = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(mut f) = on_line.lock() {
                f(Streamed::Output(line));
            }
        }
        let _ = notes.join();
        child.wait()
    });
    Ok(CtlRun { thread, pid })
}

/// Writes `job <id>` as every live node sees it (the leader's account and each worker's tasks).
fn dump_job(cluster: &LocalCluster, id: &str, path: &Path) {
    let mut text = String::new();
    for node in &cluster.nodes {
        let view = cluster.ctl(node.index, &format!("job {id}")).unwrap_or_else(|e| format!("{e:#}\n"));
        text.push_str(&format!("== node{}\n{view}\n", node.index));
    }
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

/// The console side of a running job: shows the first outputs and every note, keeps them all.
struct StreamState {
    app: &'static str,
    show: usize,
    outputs: usize,
    lines: Vec<String>,
    job: Option<String>,
    /// When the leader said the job started.
    started: Option<Instant>,
    /// Input lines read of all, as the leader last reported.
    lines_read: Option<String>,
    recovery: RecoveryClock,
    /// When a note said another node leads the job now, and the first output after it.
    taken_over: Option<(Instant, Option<Instant>)>,
    /// How its notes are labelled.
    notes: String,
    log: std::io::BufWriter<std::fs::File>,
}

impl StreamState {
    fn new(app: &'static str, show: usize, log: &Path) -> Result<StreamState> {
        let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        Ok(StreamState {
            app,
            show,
            outputs: 0,
            lines: Vec::new(),
            job: None,
            started: None,
            lines_read: None,
            recovery: RecoveryClock::default(),
            taken_over: None,
            notes: "note".into(),
            log: std::io::BufWriter::new(file),
        })
    }

    fn on(&mut self, s: Streamed) {
        use std::io::Write;
        self.recovery.on(&s);
        match s {
            Streamed::Output(text) => {
                if let Some((_, first)) = &mut self.taken_over {
                    first.get_or_insert_with(Instant::now);
                }
                self.outputs += 1;
                if self.outputs <= self.show {
                    println!("  [{}] {text}", self.app);
                } else if self.outputs == self.show + 1 {
                    println!("  [{}] ... (every output goes to the console stream; counting)", self.app);
                }
                let _ = writeln!(self.log, "{text}");
                self.lines.push(text);
            }
            Streamed::Progress(p) => self.lines_read = Some(p.lines()),
            Streamed::Note(text) => {
                if self.job.is_none() {
                    self.job = started_job(&text).map(str::to_owned);
                    if self.job.is_some() {
                        self.started = Some(Instant::now());
                    }
                }
                if text.contains(NEW_LEADER_NOTE) && self.taken_over.is_none() {
                    self.taken_over = Some((Instant::now(), None));
                }
                println!("  {}: {text}", self.notes);
            }
        }
    }
}

/// A job's recoveries as its console saw them: when each rollback note came, and the first
/// output after it.
#[derive(Default)]
pub struct RecoveryClock {
    rollbacks: Vec<(Instant, Option<Instant>)>,
}

impl RecoveryClock {
    pub fn on(&mut self, s: &Streamed) {
        match s {
            Streamed::Output(_) => {
                if let Some((_, first)) = self.rollbacks.last_mut() {
                    first.get_or_insert_with(Instant::now);
                }
            }
            Streamed::Note(text) if text.contains(ROLLBACK_NOTE) => {
                self.rollbacks.push((Instant::now(), None))
            }
            Streamed::Note(_) | Streamed::Progress(_) => {}
        }
    }

    /// Seconds from `kill` to the first rollback after it, and to the first output after that.
    pub fn since(&self, kill: Instant) -> Option<(f64, Option<f64>)> {
        let after = |t: Instant| t.duration_since(kill).as_secs_f64();
        let at = self.rollbacks.iter().position(|(t, _)| *t >= kill)?;
        // Outputs are marked against the latest rollback before them.
        let first = self.rollbacks[at..].iter().find_map(|(_, first)| *first);
        Some((after(self.rollbacks[at].0), first.map(after)))
    }
}

/// Two worker nodes to kill, from `job <id>`'s placement lines (`  s1-t0 on 127.0.0.1:7004
/// (attempt 1)`): hosts of the operator stages first, never the leader or the introducer.
pub fn victims(job: &str, base_port: u16) -> Vec<(u16, Vec<String>)> {
    let mut by_node: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for line in job.lines() {
        let mut words = line.split_whitespace();
        let (Some(task), Some("on"), Some(addr)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Some(port) = addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()) else { continue };
        let Some(index) = port.checked_sub(base_port) else { continue };
        if index == 0 || index == LEADER || !task.starts_with('s') {
            continue;
        }
        by_node.entry(index).or_default().push(task.to_owned());
    }
    // Prefer nodes running operator stages (s1, s2) over source-only ones.
    let mut nodes: Vec<(u16, Vec<String>)> = by_node.into_iter().collect();
    nodes.sort_by_key(|(i, tasks)| (tasks.iter().all(|t| t.starts_with("s0-")), *i));
    nodes.truncate(2);
    nodes
}

/// A job's verdict line.
struct Verdict {
    pass: bool,
    line: String,
}

impl Outcome {
    fn judge(
        &self,
        app: &App,
        expected: &BTreeMap<String, usize>,
        cluster: &LocalCluster,
        files: &Path,
    ) -> Verdict {
        let fail =
            |why: String| Verdict { pass: false, line: format!("verdict ({}): FAIL — {why}", app.name) };
        let reply = match &self.reply {
            Ok(reply) => reply.trim().to_owned(),
            Err(e) => return fail(format!("the job did not complete: {}", e.trim())),
        };
        println!("  {reply}");
        let local = files.join(app.dest.replace('/', "_"));
        if let Err(e) = cluster.ctl(LEADER, &format!("get {} {}", app.dest, local.display())) {
            return fail(format!("cannot read {} back: {e:#}", app.dest));
        }
        let dest = match std::fs::read_to_string(&local) {
            Ok(text) => count_lines(text.lines().map(str::to_owned)),
            Err(e) => return fail(format!("cannot read {}: {e}", local.display())),
        };
        let streamed = count_lines(self.streamed.iter().cloned());
        let total: usize = expected.values().sum();
        let kills = match (self.killed.len(), self.killed_mid_job) {
            (0, _) => "no worker killed".to_owned(),
            (_, true) if self.leader_killed => "its leader killed mid-job".to_owned(),
            (_, false) if self.leader_killed => {
                "its leader killed, but only after the job had ended".to_owned()
            }
            (n, true) => format!("{n} workers killed mid-job"),
            (n, false) => format!("{n} workers killed, but only after the job had ended"),
        };
        let mut problems = Vec::new();
        for (what, got) in [("the destination file", &dest), ("the console stream", &streamed)] {
            let diff = Diff::of(expected, got);
            if !diff.is_empty() {
                problems.push(format!("{what}: {diff}"));
            }
        }
        if problems.is_empty() {
            Verdict {
                pass: true,
                line: format!(
                    "verdict ({}): PASS — {total} outputs in {} and on the console, each exactly once, equal to \
                     the reference run ({kills}; {:.1} s)",
                    app.name, app.dest, self.secs
                ),
            }
        } else {
            fail(format!("{} ({kills})", problems.join("; ")))
        }
    }
}

/// How a multiset of lines differs from the expected one.
pub struct Diff {
    missing: usize,
    duplicated: usize,
    unexpected: usize,
    example: Option<String>,
}

impl Diff {
    pub fn of(expected: &BTreeMap<String, usize>, got: &BTreeMap<String, usize>) -> Diff {
        let mut d = Diff { missing: 0, duplicated: 0, unexpected: 0, example: None };
        for (line, &want) in expected {
            let have = got.get(line).copied().unwrap_or(0);
            if have < want {
                d.missing += want - have;
                d.example.get_or_insert_with(|| format!("missing `{line}`"));
            } else if have > want {
                d.duplicated += have - want;
                d.example.get_or_insert_with(|| format!("`{line}` {have} times, expected {want}"));
            }
        }
        for (line, &have) in got {
            if !expected.contains_key(line) {
                d.unexpected += have;
                d.example.get_or_insert_with(|| format!("unexpected `{line}`"));
            }
        }
        d
    }

    pub fn is_empty(&self) -> bool {
        self.missing + self.duplicated + self.unexpected == 0
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} missing, {} duplicated, {} unexpected",
            self.missing, self.duplicated, self.unexpected
        )?;
        if let Some(e) = &self.example {
            write!(f, " (e.g. {e})")?;
        }
        Ok(())
    }
}

pub fn count_lines(lines: impl Iterator<Item = String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(l).or_default() += 1;
    }
    m
}

/// Restarts the killed nodes and waits until the leader lists them again.
pub fn restart(cluster: &mut LocalCluster, killed: &[u16]) -> Result<()> {
    for &k in killed {
        cluster.spawn(k)?;
        cluster.wait_for_socket(k, Duration::from_secs(10))?;
    }
    let ids: Vec<String> = killed
        .iter()
        .map(|&k| cluster.ctl(k, "list_self").map(|s| s.split_whitespace().next().unwrap_or("").to_owned()))
        .collect::<Result<_>>()?;
    cluster
        .wait_until(Duration::from_secs(30), |c| {
            let listed = c.members_of(LEADER)?;
            Ok(ids.iter().all(|id| listed.contains(id)))
        })
        .context("the restarted nodes did not rejoin within 30 s")?;
    let names: Vec<String> = killed.iter().map(|k| format!("node{k}")).collect();
    println!("restarted {} (they rejoined as new members)", names.join(" and "));
    Ok(())
}

/// The Traffic Signs dataset: `data/` under the current directory, else in the source tree.
pub fn default_input() -> PathBuf {
    let here = PathBuf::from("data/Traffic_Signs.csv");
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/Traffic_Signs.csv")
}

/// The directory holding the demo programs: this executable's. Under `cargo run` they are
/// built first if missing (same profile as this executable).
pub fn programs_dir() -> Result<PathBuf> {
    let exe = crate::cluster::this_tool()?;
    let dir = exe.parent().ok_or_else(|| anyhow!("{} has no directory", exe.display()))?.to_path_buf();
    let missing = || PROGRAMS.iter().any(|p| !dir.join(p).exists());
    if missing() {
        let Some(cargo) = std::env::var_os("CARGO") else {
            bail!(
                "the demo programs ({}) are not next to {}: build them with `cargo build --release -p \
                 rainstorm-apps`",
                PROGRAMS.join(", "),
                exe.display()
            );
        };
        println!("building the demo operator programs (cargo build -p rainstorm-apps) ...");
        let mut build = Command::new(cargo);
        build.args(["build", "-q", "-p", "rainstorm-apps", "--bins"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().context("running cargo")?;
        if !status.success() || missing() {
            bail!("building the demo programs failed ({status})");
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victims_are_operator_hosts_never_the_leader_or_introducer() {
        let job = "job 1-abc: spec\n  running\n  s0-t0 on 127.0.0.1:7000 (attempt 1)\n  \
                   s0-t1 on 127.0.0.1:7005 (attempt 1)\n  s1-t0 on 127.0.0.1:7001 (attempt 1)\n  \
                   s1-t1 on 127.0.0.1:7004 (attempt 2)\n  s2-t0 on 127.0.0.1:7007 (attempt 1)\n  \
                   | job 1-abc: leader lines on 127.0.0.1:7009\n";
        let v = victims(job, 7000);
        assert_eq!(v, vec![(4, vec!["s1-t1".to_owned()]), (7, vec!["s2-t0".to_owned()])]);
    }

    #[test]
    fn a_started_note_names_its_job_and_other_notes_none() {
        assert_eq!(started_job("job 3-abc123 started; results follow and go to x"), Some("3-abc123"));
        assert_eq!(started_job("job 3-abc123: s1-t0 restarted on 127.0.0.1:7002"), None);
        assert_eq!(started_job("uploaded a to HyDFS as ops/a-0123"), None);
    }

    #[test]
    fn diffs_count_missing_duplicated_and_unexpected_lines() {
        let expected = count_lines(["a", "b", "b"].map(String::from).into_iter());
        assert!(Diff::of(&expected, &expected).is_empty());
        let got = count_lines(["a", "a", "b", "c"].map(String::from).into_iter());
        let d = Diff::of(&expected, &got);
        assert_eq!((d.missing, d.duplicated, d.unexpected), (1, 1, 1));
        assert!(d.to_string().contains("1 missing"), "{d}");
    }
}
