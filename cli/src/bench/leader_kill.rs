//! The leader-kill part of `rainstorm bench rainstorm-cluster`: a job whose leader is killed
//! with SIGKILL while it runs, on a real loopback cluster of its own per run.
//!
//! App 1 (the operator programs) runs over [`LINES`] generated records paced at [`RATE`] input
//! lines/s, submitted to node 1, which is killed [`KILL_AFTER`] into the job. Node [`WATCHER`]
//! follows the job's outputs from its start (`follow <id>`) and is asked `jobs` every
//! [`POLL`]. Figures per run, in seconds after the kill:
//!
//! * when the follower first heard that another node leads the job (a successor took it over);
//! * when the first output that successor committed reached the follower (the follower reads
//!   the destination every 200 ms, so this is late by up to that much);
//! * when the watcher (`job <id>`) first said the job completed (the target: within 60 s);
//!
//! and whether the destination file and the follower's stream both equal the reference run
//! exactly (a multiset of lines).

use super::rainstorm_cluster::{check_dest, start_cluster};
use anyhow::{anyhow, bail, Context, Result};
use rainstorm_apps::gen_signs::{generate, Pools};
use rainstorm_cli::cluster::LocalCluster;
use rainstorm_cli::demo::{count_lines, program_word, spawn_command, started_job, Diff};
use rainstorm_core::rainstorm::{dest_line, reference, OperatorSpec};
use rainstorm_runtime::control;
use rainstorm_runtime::jobs::{Streamed, NEW_LEADER_NOTE};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Input records of the job.
pub const LINES: u64 = 100_000;
/// Input lines per second the job's sources read, in all.
pub const RATE: u64 = 20_000;
/// When the leader is killed, after the job started.
pub const KILL_AFTER: Duration = Duration::from_secs(2);
/// The node submitted to, and killed.
const LEADER: u16 = 1;
/// The node that follows the job and is asked `jobs`.
const WATCHER: u16 = 4;
/// How often the watcher is asked `jobs`.
const POLL: Duration = Duration::from_millis(200);
/// The target: `jobs` on another node shows the job completed within this long of the kill.
pub const TARGET: Duration = Duration::from_secs(60);
/// How long a run waits for the job to complete before it gives up.
const GIVE_UP: Duration = Duration::from_secs(180);
/// The cluster's ports (its own, beside the other parts' clusters).
const BASE_PORT: u16 = 7360;

/// One run's figures, in seconds after the kill.
pub struct Run {
    /// Seconds into the job the kill came.
    killed_at: f64,
    taken_over: Option<f64>,
    first_output: Option<f64>,
    completed: Option<f64>,
    outputs: usize,
    dest: Result<(), String>,
    followed: Result<(), String>,
}

/// What the follower saw.
#[derive(Default)]
struct Followed {
    lines: Vec<String>,
    /// When a note said another node leads the job, and the first output after it.
    taken_over: Option<(Instant, Option<Instant>)>,
}

/// Runs the leader-kill job `runs` times, each on a fresh cluster, and prints the figures.
pub fn run(root: &Path, bin: &Path, batch_bytes: u32, runs: usize) -> Result<Vec<Run>> {
    let app = &super::rainstorm_cluster::APPS[0];
    let local = root.join(format!("signs-{LINES}-leader-kill.csv"));
    let mut bytes = Vec::new();
    generate(&Pools::traffic_signs(), LINES, 1, &mut bytes).context("generating the input")?;
    std::fs::write(&local, &bytes)?;
    let src = format!("bench/signs-{LINES}.csv");
    let spec = |s: &str| OperatorSpec::parse(s).map_err(|e| anyhow!("{s}: {e}"));
    let reference = reference::run(&src, &bytes, &spec(app.builtins[0])?, &spec(app.builtins[1])?)
        .map_err(|e| anyhow!("the reference run failed: {e}"))?;
    let expected = count_lines(reference.iter().map(|t| dest_line(t).trim_end_matches('\n').to_owned()));
    let mut done = Vec::new();
    for i in 0..runs {
        let mut cluster = start_cluster(root, "leader-kill", BASE_PORT, batch_bytes)?;
        let measured = (|| {
            super::rainstorm_cluster::store_input(&cluster, &local, &bytes, &src)?;
            let op = |(p, a): (&str, &str)| program_word(bin, p, a);
            let line = format!(
                "RainStorm {} {} {src} bench/leader-kill-{i}.out 3 --rate {RATE}",
                op(app.programs[0]),
                op(app.programs[1])
            );
            one_run(&mut cluster, root, &line, &expected, &format!("bench/leader-kill-{i}.out"))
        })();
        cluster.stop();
        let _ = std::fs::remove_dir_all(root.join("leader-kill"));
        // A failed run is a row of its own: the other runs and tables still count.
        let r = measured.unwrap_or_else(|e| Run {
            killed_at: f64::NAN,
            taken_over: None,
            first_output: None,
            completed: None,
            outputs: 0,
            dest: Err(format!("{e:#}")),
            followed: Err("-".into()),
        });
        print_run(i, &r);
        done.push(r);
    }
    let _ = std::fs::remove_file(&local);
    Ok(done)
}

fn one_run(
    cluster: &mut LocalCluster,
    root: &Path,
    line: &str,
    expected: &BTreeMap<String, usize>,
    dest: &str,
) -> Result<Run> {
    rustix::fs::sync();
    let started_job_at: Arc<Mutex<(Option<String>, Option<Instant>)>> = Arc::default();
    let job = {
        let seen = Arc::clone(&started_job_at);
        spawn_command(control::socket_path(&cluster.data_dir(LEADER)), line.to_owned(), move |s| {
            if let (Streamed::Note(text), Ok(mut seen)) = (&s, seen.lock()) {
                if let (Some(id), None) = (started_job(text), &seen.0) {
                    *seen = (Some(id.to_owned()), Some(Instant::now()));
                }
            }
        })
    };
    let waited = Instant::now();
    let (id, started) = loop {
        if let Ok((Some(id), Some(at))) = started_job_at.lock().map(|s| s.clone()) {
            break (id, at);
        }
        if job.is_finished() || waited.elapsed() > Duration::from_secs(60) {
            bail!("the job did not start on node{LEADER}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let followed: Arc<Mutex<Followed>> = Arc::default();
    let follower = {
        let followed = Arc::clone(&followed);
        spawn_command(control::socket_path(&cluster.data_dir(WATCHER)), format!("follow {id}"), move |s| {
            let Ok(mut f) = followed.lock() else { return };
            match s {
                Streamed::Output(line) => {
                    if let Some((_, first)) = &mut f.taken_over {
                        first.get_or_insert_with(Instant::now);
                    }
                    f.lines.push(line);
                }
                Streamed::Note(note) if note.contains(NEW_LEADER_NOTE) && f.taken_over.is_none() => {
                    f.taken_over = Some((Instant::now(), None));
                }
                Streamed::Note(_) | Streamed::Progress(_) => {}
            }
        })
    };
    std::thread::sleep((started + KILL_AFTER).saturating_duration_since(Instant::now()));
    if job.is_finished() {
        bail!("the job ended before its leader could be killed {} s in", KILL_AFTER.as_secs());
    }
    let killed_at = started.elapsed().as_secs_f64();
    cluster.kill(LEADER)?;
    let kill = Instant::now();
    let mut completed = None;
    while kill.elapsed() < GIVE_UP {
        std::thread::sleep(POLL);
        // The watcher's directory line (the same on every node, the leader's own included).
        let Ok(answer) = cluster.ctl(WATCHER, &format!("job {id}")) else { continue };
        let Some(d) = rainstorm_cli::ctl::described(&answer) else { continue };
        if d.state.starts_with("completed") {
            completed = Some(kill.elapsed().as_secs_f64());
            break;
        }
        if !d.state.starts_with("running") && !d.state.starts_with("leader gone") {
            bail!("the job did not complete: {}", d.state);
        }
    }
    let _ = job.join();
    let follow_deadline = Instant::now() + Duration::from_secs(60);
    while !follower.is_finished() && Instant::now() < follow_deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let follow_reply = if follower.is_finished() {
        match follower.join() {
            Ok(Ok(reply)) if reply.ok => Ok(()),
            Ok(Ok(reply)) => Err(reply.output.trim().to_owned()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the follower's thread panicked".into()),
        }
    } else {
        Err("follow did not end".into())
    };
    let f = followed.lock().map_err(|_| anyhow!("poisoned"))?;
    let after = |t: Instant| t.saturating_duration_since(kill).as_secs_f64();
    let followed_diff = Diff::of(expected, &count_lines(f.lines.iter().cloned()));
    let followed = follow_reply.and_then(|()| match followed_diff.is_empty() {
        true => Ok(()),
        false => Err(followed_diff.to_string()),
    });
    Ok(Run {
        killed_at,
        taken_over: f.taken_over.map(|(t, _)| after(t)),
        first_output: f.taken_over.and_then(|(_, first)| first).map(after),
        completed,
        outputs: f.lines.len(),
        dest: check_dest(cluster, WATCHER, root, dest, expected),
        followed,
    })
}

fn secs(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

fn verdict(r: &Result<(), String>) -> String {
    match r {
        Ok(()) => "yes".into(),
        Err(e) => format!("NO: {e}"),
    }
}

/// Run `i`'s row of the table (printed as each run ends, and in the table).
fn row(i: usize, r: &Run) -> String {
    format!(
        "| {} | {:.2} | {} | {} | {} | {} | {} | {} |",
        i + 1,
        r.killed_at,
        secs(r.taken_over),
        secs(r.first_output),
        secs(r.completed),
        r.outputs,
        verdict(&r.dest),
        verdict(&r.followed)
    )
}

fn print_run(i: usize, r: &Run) {
    println!("leader kill, run {} of the table below: {}", i + 1, row(i, r));
}

/// The median of the known values, if any.
fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// The table of every run, their medians and the target.
pub fn print(runs: &[Run]) {
    if runs.is_empty() {
        return;
    }
    println!(
        "## Leader kill: app1 over {LINES} lines paced at {RATE} lines/s, 3 tasks per stage, the leader \
         (node{LEADER}) SIGKILLed {} s into the job; node{WATCHER} follows the job (seconds after the kill)",
        KILL_AFTER.as_secs()
    );
    println!("| run | killed s into the job | successor leads | first new output | node{WATCHER} says completed | outputs followed | destination exact | followed stream exact |");
    println!("|---:|---:|---:|---:|---:|---:|---|---|");
    for (i, r) in runs.iter().enumerate() {
        println!("{}", row(i, r));
    }
    let med = |f: fn(&Run) -> Option<f64>| median(runs.iter().filter_map(f).collect());
    println!(
        "| median | | {} | {} | {} | | | |",
        secs(med(|r| r.taken_over)),
        secs(med(|r| r.first_output)),
        secs(med(|r| r.completed))
    );
    let worst = runs.iter().map(|r| r.completed.unwrap_or(f64::INFINITY)).fold(0.0, f64::max);
    let exact = runs.iter().all(|r| r.dest.is_ok() && r.followed.is_ok());
    println!(
        "target: completed within {} s of the kill on every run, every output exactly once: {} (slowest {})",
        TARGET.as_secs(),
        if worst <= TARGET.as_secs_f64() && exact { "met" } else { "MISSED" },
        if worst.is_finite() { format!("{worst:.2} s") } else { "never".into() }
    );
    println!();
}
