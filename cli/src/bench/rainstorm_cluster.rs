//! `rainstorm bench rainstorm-cluster`: RainStorm jobs on a real 10-process loopback cluster.
//!
//! App 1 and App 2 run as operator programs (the Rust demo programs) on generated inputs shaped
//! like the Traffic Signs dataset, at each input size and number of tasks per stage, side by
//! side with
//!
//! * the ceiling: the same pipeline in one process (the built-in operators, which compute the
//!   same outputs), no distribution, no checkpoints, no logging, timed in the same run, and next to
//!   it a plain single-threaded Python loop doing the same on the same file ([`super::ceiling`]);
//! * the two programs alone over their pipes, driven by the runtime's driver one stage after
//!   the other, in protocol version 1 and in version 2 ([`super::program_pipes`]);
//! * the same job with two workers (the hosts of two stage-1 tasks) killed with SIGKILL 1.5 s in
//!   (or 40% into a job that took under 3.75 s without kills), on a cluster of its own; for it,
//!   the time from the kills to the leader's rollback (their detection) and to the first output
//!   after the rollback on the console;
//! * a job whose leader is killed ([`super::leader_kill`]): app1 over 100,000 lines at 20,000
//!   lines/s, the leader SIGKILLed 2 s in, each run on a cluster of its own; the time from the
//!   kill to a successor leading it, to its first new output, and to `jobs` on another node
//!   showing it completed (`--leader-kill-only` runs just this part).
//!
//! Figures per job: input lines/s and output records/s over the job's own time (from the
//! leader accepting it to its last output durable in the destination file); tuple latency from
//! the moment a source first sent the tuple's input line (a `sent` line of the output trace,
//! `RAINSTORM_OUTPUT_TRACE`, on the source's node) to the moment the leader committed its output
//! to the destination (an `out` line of the leader's trace), p50 and p99 over every output; where
//! the time goes, as CPU seconds of the node processes (HyDFS, checkpoints, serialization,
//! routing) and of the operator programs (children of the nodes) against the job's wall time;
//! peak RSS of the node processes; and whether the destination file equals the ceiling's outputs
//! exactly (a multiset of lines). Before each job the benchmark flushes the machine's dirty pages
//! (sync(2)), so that writeback of its own set-up files does not stall the nodes' fsyncs during
//! the job; a node logs every sync slower than 50 ms (`slow_sync`).

use super::ceiling;
use super::hydfs_cluster::proc_kib;
use super::program_pipes;
use anyhow::{anyhow, bail, Context, Result};
use rainstorm_apps::gen_signs::{generate, Pools};
use rainstorm_cli::cluster::{this_tool, ClusterArgs, LocalCluster};
use rainstorm_cli::demo::{
    count_lines, program_word, programs_dir, spawn_command, started_job, victims, Diff, RecoveryClock,
};
use rainstorm_runtime::control;
use rainstorm_runtime::jobs::Streamed;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NODES: u16 = 10;
const BASE_PORT: u16 = 7300;
const LEADER: u16 = 1;
const KILL_AFTER: Duration = Duration::from_millis(1_500);

/// What to run.
pub struct Plan {
    pub sizes: Vec<u64>,
    pub tasks: Vec<u32>,
    pub batch_bytes: u32,
    /// Task counts at which the killed variant runs too.
    pub kill_tasks: Vec<u32>,
    /// Only the ceiling and the Python loop: no cluster.
    pub ceiling_only: bool,
    /// Input lines per second for each job's sources in all (`--rate`), or as fast as they go.
    pub rate: Option<u64>,
    /// How many times the last job runs again on the aged cluster and on fresh clusters, for
    /// the age comparison (0: none).
    pub age_runs: usize,
    /// Profile the node processes with `perf` during the 3-task job of each application on the
    /// largest input.
    pub profile: bool,
    /// How many times the last job runs on a scraped cluster and on one without metrics, for
    /// the cost of the metrics (0: none).
    pub metrics_runs: usize,
    /// How many times the leader-kill job runs, each on a cluster of its own (0: none).
    pub leader_kill_runs: usize,
    /// Only the leader-kill part.
    pub leader_kill_only: bool,
}

impl Plan {
    pub fn new(quick: bool, sizes: Option<Vec<u64>>, batch_bytes: Option<u32>, ceiling_only: bool) -> Plan {
        let default_sizes = if quick { vec![10_000] } else { vec![10_000, 100_000, 1_000_000] };
        Plan {
            sizes: sizes.unwrap_or(default_sizes),
            tasks: if quick { vec![3] } else { vec![1, 3, 5] },
            batch_bytes: batch_bytes
                .unwrap_or(rainstorm_core::rainstorm::RainstormConfig::default().batch_bytes),
            kill_tasks: vec![3],
            ceiling_only,
            rate: None,
            age_runs: if quick { 1 } else { 3 },
            metrics_runs: if quick { 1 } else { 3 },
            profile: false,
            leader_kill_runs: if quick { 1 } else { 3 },
            leader_kill_only: false,
        }
    }

    /// The same plan with `runs` runs of the leader-kill job, and with nothing else if `only`.
    pub fn leader_killed(self, runs: usize, only: bool) -> Plan {
        Plan { leader_kill_runs: runs, leader_kill_only: only, ..self }
    }

    /// The same plan with its jobs' sources paced at `rate` lines/s in all.
    pub fn paced(self, rate: Option<u64>) -> Plan {
        Plan { rate, ..self }
    }

    /// The same plan with `runs` runs per side of the age comparison.
    pub fn aged(self, runs: usize) -> Plan {
        Plan { age_runs: runs, ..self }
    }

    /// The same plan with `runs` runs per side of the metrics comparison.
    pub fn metered(self, runs: usize) -> Plan {
        Plan { metrics_runs: runs, ..self }
    }

    /// The same plan with (or without) a `perf` profile of the nodes.
    pub fn profiled(self, profile: bool) -> Plan {
        Plan { profile, ..self }
    }
}

pub(super) struct App {
    pub(super) name: &'static str,
    pub(super) programs: [(&'static str, &'static str); 2],
    pub(super) builtins: [&'static str; 2],
    /// The Python loop's application and argument.
    python: (&'static str, &'static str),
}

pub(super) const APPS: [App; 2] = [
    App {
        name: "app1",
        programs: [("app1-filter", "Streetlight"), ("app1-project", "")],
        builtins: ["grep:Streetlight", "project:OBJECTID,Sign_Type"],
        python: ("app1", "Streetlight"),
    },
    App {
        name: "app2",
        programs: [("app2-filter", "'Punched Telespar'"), ("app2-count", "")],
        builtins: ["column:Sign_Post=Punched Telespar", "count:Category"],
        python: ("app2", "Punched Telespar"),
    },
];

/// What the console of a job saw: its id and start, and its recoveries.
#[derive(Default)]
struct Watch {
    job: Option<String>,
    started: Option<Instant>,
    recovery: RecoveryClock,
}

/// How a job came back from its kills, in seconds after them.
#[derive(Clone, Copy)]
struct Recovery {
    /// The leader rolled back (the kills were detected).
    rolled_back: f64,
    /// The first output after the rollback reached the console.
    first_output: Option<f64>,
}

/// One job's figures.
struct Row {
    app: &'static str,
    lines: u64,
    tasks: u32,
    killed: bool,
    recovery: Option<Recovery>,
    secs: f64,
    outputs: u64,
    restarts: u32,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    node_cpu: f64,
    program_cpu: f64,
    rss_mib: f64,
    exact: Result<(), String>,
    /// The job ran under `perf` (`--profile`), which slows it.
    profiled: bool,
}

pub fn run(plan: Plan) -> Result<()> {
    let root = std::env::temp_dir().join(format!("rainstorm-bench-rs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    if plan.leader_kill_only {
        println!("# RainStorm on a {NODES}-process loopback cluster: a job whose leader is killed");
        println!("(work files in {}; removed at the end)", root.display());
        let bin = programs_dir()?;
        let runs = super::leader_kill::run(&root, &bin, plan.batch_bytes, plan.leader_kill_runs.max(1))?;
        println!();
        super::leader_kill::print(&runs);
        let _ = std::fs::remove_dir_all(&root);
        return Ok(());
    }
    if plan.ceiling_only {
        println!(
            "# RainStorm's in-process ceiling against a plain Python loop: sizes {:?} lines",
            plan.sizes
        );
    } else {
        println!(
            "# RainStorm on a {NODES}-process loopback cluster: sizes {:?} lines, tasks per stage {:?}, batches of {} bytes, sources {}",
            plan.sizes,
            plan.tasks,
            plan.batch_bytes,
            plan.rate.map_or_else(|| "unpaced".to_owned(), |r| format!("paced at {r} lines/s in all"))
        );
    }
    println!("(work files in {}; removed at the end)", root.display());
    let bin = match programs_dir() {
        Ok(bin) => Some(bin),
        Err(e) if plan.ceiling_only => {
            println!("(no operator programs, so no measurement of them over pipes: {e:#})");
            None
        }
        Err(e) => return Err(e),
    };
    let mut cluster = match (plan.ceiling_only, &bin) {
        (false, Some(bin)) => Some((bin.clone(), start(&root, "cluster", BASE_PORT, plan.batch_bytes)?)),
        _ => None,
    };
    let pools = Pools::traffic_signs();
    let largest = plan.sizes.iter().copied().max().unwrap_or(0);
    // The task count profiled: 3 where the plan has it, else its largest.
    let profiled_tasks =
        if plan.tasks.contains(&3) { 3 } else { plan.tasks.iter().copied().max().unwrap_or(1) };
    let mut profiles = Vec::new();
    // The last job without kills, to run again for the age comparison.
    let mut last: Option<LastJob> = None;
    let mut rows = Vec::new();
    let mut ceilings = Vec::new();
    let mut pipes = Vec::new();
    for &size in &plan.sizes {
        let local = root.join(format!("signs-{size}.csv"));
        let mut bytes = Vec::new();
        generate(&pools, size, 1, &mut bytes).context("generating the input")?;
        std::fs::write(&local, &bytes)?;
        let src = format!("bench/signs-{size}.csv");
        if let Some((_, cluster)) = &mut cluster {
            store_input(cluster, &local, &bytes, &src)?;
        }
        for app in &APPS {
            let measured = ceiling::measure(&root, &src, &local, &bytes, app.builtins, app.python)?;
            print_ceiling(app.name, size, &measured);
            let ceiling = measured.ceiling_secs;
            ceilings.push((app.name, size, measured.outputs, ceiling, measured.python.clone()));
            let expected = &measured.expected;
            if let Some(bin) = &bin {
                let row = pipes_row(
                    bin,
                    app,
                    &src,
                    &bytes,
                    rainstorm_core::rainstorm::RainstormConfig::default().batch_tuples as usize,
                    expected,
                )?;
                print_pipes(app.name, size, &row);
                pipes.push((app.name, size, row));
            }
            let Some((bin, cluster)) = &mut cluster else { continue };
            for &tasks in &plan.tasks {
                let kills: &[bool] = if plan.kill_tasks.contains(&tasks) { &[false, true] } else { &[false] };
                for &kill in kills {
                    let job =
                        Job { app, src: &src, lines: size, tasks, rate: plan.rate, kill_after: None, run: 0 };
                    let row = if kill {
                        // Its own cluster: restarted nodes take their files back for a while,
                        // which would slow the jobs after it.
                        let mut own = start(&root, "kills", BASE_PORT + 20, plan.batch_bytes)?;
                        store_input(&own, &local, &bytes, &src)?;
                        // 1.5 s in, or 40% into a job that takes less than 3.75 s without kills.
                        let unkilled = rows.last().map_or(f64::INFINITY, |r: &Row| r.secs);
                        let at = KILL_AFTER.min(Duration::from_secs_f64((unkilled * 0.4).max(0.05)));
                        let job = Job { kill_after: Some(at), ..job };
                        let row = run_job(&mut own, &root, bin, &job, expected, None);
                        own.stop();
                        let _ = std::fs::remove_dir_all(root.join("kills"));
                        row?.0
                    } else {
                        let profile = (plan.profile && size == largest && tasks == profiled_tasks)
                            .then(|| root.join(format!("perf-{}.data", app.name)));
                        let (row, profile) =
                            run_job(cluster, &root, bin, &job, expected, profile.as_deref())?;
                        if let Some(p) = profile {
                            profiles.push((app.name, size, tasks, p));
                        }
                        last = Some(LastJob {
                            app,
                            lines: size,
                            tasks,
                            local: local.clone(),
                            src: src.clone(),
                            expected: expected.clone(),
                        });
                        row
                    };
                    print_row(&row, ceiling);
                    rows.push(row);
                }
            }
        }
    }
    let age = match (&mut cluster, &last) {
        (Some((bin, cluster)), Some(last)) if plan.age_runs > 0 => {
            let jobs_before = rows.iter().filter(|r: &&Row| !r.killed).count();
            Some(age(cluster, &root, bin, last, &plan, jobs_before)?)
        }
        _ => None,
    };
    if let Some((_, mut cluster)) = cluster {
        cluster.stop();
    }
    let metered = match (&bin, &last) {
        (Some(bin), Some(last)) if plan.metrics_runs > 0 && !plan.ceiling_only => {
            Some(metrics_cost(&root, bin, last, &plan)?)
        }
        _ => None,
    };
    let leader_kills = match &bin {
        Some(bin) if plan.leader_kill_runs > 0 && !plan.ceiling_only => {
            super::leader_kill::run(&root, bin, plan.batch_bytes, plan.leader_kill_runs)?
        }
        _ => Vec::new(),
    };
    println!();
    print_table(&rows, &ceilings, &pipes);
    print_before_after(&rows, plan.rate.is_some());
    if let Some(age) = &age {
        age.print();
    }
    if let Some(m) = &metered {
        m.print();
    }
    super::leader_kill::print(&leader_kills);
    if plan.profile {
        print_profiles(&profiles);
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// The programs over pipes: median seconds of [`ceiling::RUNS`] runs per version (the versions
/// taking turns), each run's stage times, and whether every run's outputs were exact.
struct PipesRow {
    v1: f64,
    v2: f64,
    v2_stages: [f64; 2],
    /// CPU seconds of the driver and of the programs (both stages) in the median runs.
    v1_cpu: (f64, f64),
    v2_cpu: (f64, f64),
    exact: Result<(), String>,
}

fn pipes_row(
    bin: &Path,
    app: &App,
    src: &str,
    bytes: &[u8],
    batch_lines: usize,
    expected: &BTreeMap<String, usize>,
) -> Result<PipesRow> {
    let mut runs: [Vec<program_pipes::PipeRun>; 2] = [Vec::new(), Vec::new()];
    let mut exact = Ok(());
    for _ in 0..ceiling::RUNS {
        for (version, done) in (1..).zip(runs.iter_mut()) {
            let run = program_pipes::run(bin, app.programs, src, bytes, batch_lines, version, expected)?;
            if let Err(e) = &run.exact {
                exact = Err(format!("version {version}: {e}"));
            }
            done.push(run);
        }
    }
    let median = |runs: &mut Vec<program_pipes::PipeRun>| {
        runs.sort_by(|a, b| a.secs().total_cmp(&b.secs()));
        let m = &runs[runs.len() / 2];
        (m.secs(), m.stage_secs, (m.driver_cpu.iter().sum(), m.program_cpu.iter().sum()))
    };
    let [mut first, mut second] = runs;
    let ((v1, _, v1_cpu), (v2, v2_stages, v2_cpu)) = (median(&mut first), median(&mut second));
    Ok(PipesRow { v1, v2, v2_stages, v1_cpu, v2_cpu, exact })
}

fn print_pipes(app: &str, lines: u64, r: &PipesRow) {
    eprintln!(
        "{app} {lines} lines, programs over pipes: version 1 {:.3} s ({:.0} lines/s; CPU {:.2} s driver, {:.2} s programs), version 2 {:.3} s ({:.0} lines/s; stages {:.3} + {:.3} s; CPU {:.2} s driver, {:.2} s programs): {:.2}x{}",
        r.v1,
        lines as f64 / r.v1,
        r.v1_cpu.0,
        r.v1_cpu.1,
        r.v2,
        lines as f64 / r.v2,
        r.v2_stages[0],
        r.v2_stages[1],
        r.v2_cpu.0,
        r.v2_cpu.1,
        r.v1 / r.v2,
        if r.exact.is_ok() { "" } else { " (NOT exact)" }
    );
}

/// One ceiling against its Python loop, as soon as it is measured.
fn print_ceiling(app: &str, lines: u64, m: &ceiling::Measured) {
    let rate = |secs: f64| lines as f64 / secs;
    match &m.python {
        Some((py, same)) => eprintln!(
            "{app} {lines} lines: ceiling {:.3} s ({:.0} lines/s), Python {:.3} s ({:.0} lines/s): {:.2}x Python{}",
            m.ceiling_secs,
            rate(m.ceiling_secs),
            py,
            rate(*py),
            py / m.ceiling_secs,
            if same.is_ok() { "" } else { " (Python's outputs differ)" }
        ),
        None => eprintln!(
            "{app} {lines} lines: ceiling {:.3} s ({:.0} lines/s); no python3 for the side-by-side",
            m.ceiling_secs,
            rate(m.ceiling_secs)
        ),
    }
}

/// The largest piece of input stored with one write: half the default write limit.
const INPUT_PIECE_BYTES: usize = 512 << 20;

/// Stores `local` (whose bytes are `bytes`) in the cluster as `src`: one create, or for an input
/// over [`INPUT_PIECE_BYTES`] a create and appends of whole lines, as a log would grow, merged
/// into one order before any job reads it.
pub(super) fn store_input(cluster: &LocalCluster, local: &Path, bytes: &[u8], src: &str) -> Result<()> {
    if bytes.len() <= INPUT_PIECE_BYTES {
        cluster.ctl(LEADER, &format!("create {} {src}", local.display()))?;
        return Ok(());
    }
    let mut rest = bytes;
    let mut piece = 0;
    while !rest.is_empty() {
        let cut = if rest.len() <= INPUT_PIECE_BYTES {
            rest.len()
        } else {
            rest[..INPUT_PIECE_BYTES].iter().rposition(|&b| b == b'\n').map_or(INPUT_PIECE_BYTES, |i| i + 1)
        };
        let path = local.with_extension(format!("piece{piece}"));
        std::fs::write(&path, &rest[..cut])?;
        let verb = if piece == 0 { "create" } else { "append" };
        let stored = cluster.ctl(LEADER, &format!("{verb} {} {src}", path.display()));
        let _ = std::fs::remove_file(&path);
        stored?;
        rest = &rest[cut..];
        piece += 1;
    }
    cluster.ctl(LEADER, &format!("merge {src}"))?;
    Ok(())
}

/// A fresh 10-node cluster under `root/name`, tracing outputs.
fn start(root: &Path, name: &str, base_port: u16, batch_bytes: u32) -> Result<LocalCluster> {
    start_with(root, name, base_port, batch_bytes, true)
}

/// A cluster of [`NODES`] nodes under `root/name` as every part of this benchmark starts it.
pub(super) fn start_cluster(
    root: &Path,
    name: &str,
    base_port: u16,
    batch_bytes: u32,
) -> Result<LocalCluster> {
    start(root, name, base_port, batch_bytes)
}

/// [`start`], with or without the nodes' metrics and status pages.
fn start_with(
    root: &Path,
    name: &str,
    base_port: u16,
    batch_bytes: u32,
    metrics: bool,
) -> Result<LocalCluster> {
    let args = ClusterArgs {
        period_ms: 500,
        batch_bytes: Some(batch_bytes),
        output_trace: true,
        no_metrics: !metrics,
        ..ClusterArgs::local(NODES, base_port, root.join(name))
    };
    LocalCluster::start(args, this_tool()?)
}

/// One job to run on a cluster.
struct Job<'a> {
    app: &'a App,
    src: &'a str,
    lines: u64,
    tasks: u32,
    rate: Option<u64>,
    kill_after: Option<Duration>,
    /// Which run of the same job on one cluster (destination files are created once).
    run: usize,
}

/// Runs `job` to completion and measures it; with `profile`, `perf` samples the node processes
/// into that file for the job's duration, and the file is returned if the profile was taken.
fn run_job(
    cluster: &mut LocalCluster,
    root: &Path,
    bin: &Path,
    job: &Job,
    expected: &BTreeMap<String, usize>,
    profile: Option<&Path>,
) -> Result<(Row, Option<std::path::PathBuf>)> {
    let Job { app, src, lines, tasks, rate, kill_after, run } = *job;
    let kill = kill_after.is_some();
    let dest = format!(
        "bench/{}-{lines}-{tasks}{}{}.out",
        app.name,
        if kill { "-k" } else { "" },
        if run > 0 { format!("-r{run}") } else { String::new() }
    );
    let op = |(p, a): (&str, &str)| program_word(bin, p, a);
    let pace = rate.map(|r| format!(" --rate {r}")).unwrap_or_default();
    let line =
        format!("RainStorm {} {} {src} {dest} {tasks}{pace}", op(app.programs[0]), op(app.programs[1]));
    // The benchmark's own files (the generated input, the reference outputs) would otherwise be
    // written back by the kernel about 30 s after it wrote them, in the middle of a job: the
    // nodes' fsyncs then wait behind hundreds of MiB that are not theirs.
    rustix::fs::sync();
    let cpu_before = cpu_ticks(cluster);
    let socket = control::socket_path(&cluster.data_dir(LEADER));
    let state = std::sync::Arc::new(std::sync::Mutex::new(Watch::default()));
    let job = {
        let state = std::sync::Arc::clone(&state);
        spawn_command(socket, line, move |s| {
            let Ok(mut st) = state.lock() else { return };
            st.recovery.on(&s);
            if let (Streamed::Note(text), None) = (&s, &st.job) {
                if let Some(id) = started_job(text) {
                    st.job = Some(id.to_owned());
                    st.started = Some(Instant::now());
                }
            }
        })
    };
    let mut perf = profile.and_then(|out| without_profile_on_error(Perf::start(cluster, out)));
    let mut killed = Vec::new();
    let mut killed_at = None;
    while !job.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        if !kill || !killed.is_empty() {
            continue;
        }
        let (id, started) = state.lock().map(|s| (s.job.clone(), s.started)).unwrap_or((None, None));
        if let (Some(id), Some(started)) = (id, started) {
            if kill_after.is_some_and(|at| started.elapsed() >= at) {
                let placement = cluster.ctl(LEADER, &format!("job {id}")).unwrap_or_default();
                let v = victims(&placement, cluster.args.base_port);
                if v.len() == 2 && !job.is_finished() {
                    for (i, _) in &v {
                        cluster.kill(*i)?;
                    }
                    killed = v.into_iter().map(|(i, _)| i).collect();
                    killed_at = Some(Instant::now());
                }
            }
        }
    }
    let recovery = state.lock().ok().and_then(|st| {
        let (rolled_back, first_output) = st.recovery.since(killed_at?)?;
        Some(Recovery { rolled_back, first_output })
    });
    let profiled = perf.take().and_then(|p| without_profile_on_error(p.finish()));
    let reply = match job.join() {
        Ok(Ok(r)) if r.ok => r.output,
        Ok(Ok(r)) => bail!("{} on {lines} lines with {tasks} tasks failed: {}", app.name, r.output.trim()),
        Ok(Err(e)) => bail!("the leader's control socket failed: {e}"),
        Err(_) => bail!("the job thread panicked"),
    };
    // The programs exit once their tasks are stopped; their CPU time is counted when reaped.
    std::thread::sleep(Duration::from_millis(1_500));
    let cpu_after = cpu_ticks(cluster);
    let rss_mib = cluster
        .nodes
        .iter()
        .filter_map(|n| proc_kib(n.child.id(), "VmHWM:"))
        .max()
        .map_or(0.0, |k| k as f64 / 1024.0);
    let (id, outputs, secs, restarts) = parse_completed(&reply)
        .ok_or_else(|| anyhow!("unexpected answer from the leader: {}", reply.trim()))?;
    let exact = check_dest(cluster, LEADER, root, &dest, expected);
    let latencies = latencies(cluster, &id);
    let pct = |p: f64| -> Option<f64> {
        (!latencies.is_empty()).then(|| latencies[((latencies.len() - 1) as f64 * p).round() as usize])
    };
    let (node_cpu, program_cpu) = (
        (cpu_after.0.saturating_sub(cpu_before.0)) as f64 / TICKS_PER_SEC,
        (cpu_after.1.saturating_sub(cpu_before.1)) as f64 / TICKS_PER_SEC,
    );
    let row = Row {
        app: app.name,
        lines,
        tasks,
        killed: !killed.is_empty(),
        recovery,
        secs,
        outputs,
        restarts,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        node_cpu,
        program_cpu,
        rss_mib,
        exact,
        profiled: profiled.is_some(),
    };
    Ok((row, profiled))
}

/// `job <id> completed: <n> outputs in <s> s, <r> task restarts; ...` → (id, n, s, r).
fn parse_completed(reply: &str) -> Option<(String, u64, f64, u32)> {
    let words: Vec<&str> = reply.split_whitespace().collect();
    match words[..] {
        ["job", id, "completed:", n, "outputs", "in", s, "s,", r, "rollbacks;", ..] => {
            Some((id.to_owned(), n.parse().ok()?, s.parse().ok()?, r.parse().ok()?))
        }
        _ => None,
    }
}

/// The destination file, read through node `via`, against the expected multiset of lines.
pub(super) fn check_dest(
    cluster: &LocalCluster,
    via: u16,
    root: &Path,
    dest: &str,
    expected: &BTreeMap<String, usize>,
) -> Result<(), String> {
    let local = root.join("dest.out");
    let _ = std::fs::remove_file(&local);
    cluster.ctl(via, &format!("get {dest} {}", local.display())).map_err(|e| format!("{e:#}"))?;
    let text = std::fs::read_to_string(&local).map_err(|e| e.to_string())?;
    let diff = Diff::of(expected, &count_lines(text.lines().map(str::to_owned)));
    let _ = std::fs::remove_file(&local);
    if diff.is_empty() {
        Ok(())
    } else {
        Err(diff.to_string())
    }
}

/// Every output's latency in ms: from its input line's first send by a source to the leader's
/// commit of it, both from the leader's and the workers' traces (`RAINSTORM_OUTPUT_TRACE`:
/// `<job> sent <unix µs> <first line> <last line>` on a source's node, `<job> out <unix µs>
/// <line>` on the leader).
fn latencies(cluster: &LocalCluster, job: &str) -> Vec<f64> {
    // first line -> (last line, earliest send in µs since the epoch).
    let mut sent: BTreeMap<u64, (u64, u128)> = BTreeMap::new();
    let mut outs: Vec<(u128, u64)> = Vec::new();
    for i in 0..cluster.args.nodes {
        let Ok(text) = std::fs::read_to_string(cluster.data_dir(i).join("outputs.trace")) else { continue };
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w[..] {
                [j, "sent", us, first, last] if j == job => {
                    let (Ok(us), Ok(first), Ok(last)) = (us.parse::<u128>(), first.parse(), last.parse())
                    else {
                        continue;
                    };
                    let e = sent.entry(first).or_insert((last, us));
                    e.1 = e.1.min(us);
                }
                [j, "out", us, line] if j == job => {
                    if let (Ok(us), Ok(line)) = (us.parse(), line.parse()) {
                        outs.push((us, line));
                    }
                }
                _ => {}
            }
        }
    }
    let mut out: Vec<f64> = outs
        .into_iter()
        .filter_map(|(us, line)| {
            let (_, (last, at)) = sent.range(..=line).next_back()?;
            (line <= *last).then(|| us.saturating_sub(*at) as f64 / 1000.0)
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

const TICKS_PER_SEC: f64 = 100.0;

/// CPU clock ticks of the node processes themselves and of their exited children (the operator
/// programs), summed over every running node.
fn cpu_ticks(cluster: &LocalCluster) -> (u64, u64) {
    let mut own = 0;
    let mut children = 0;
    for n in &cluster.nodes {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", n.child.id())) else { continue };
        // Fields after the parenthesised command: state is field 3; utime 14, stime 15, cutime 16, cstime 17.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { continue };
        let f: Vec<u64> = rest.split_whitespace().map(|w| w.parse().unwrap_or(0)).collect();
        if f.len() > 14 {
            own += f[11] + f[12];
            children += f[13] + f[14];
        }
    }
    (own, children)
}

fn print_row(r: &Row, ceiling: f64) {
    let rate = r.lines as f64 / r.secs;
    eprintln!(
        "{} {} lines, {} tasks{}{}: {:.2} s, {:.0} lines/s ({:.3}x of the ceiling's {:.0}), p99 {} ms, {}",
        r.app,
        r.lines,
        r.tasks,
        if r.killed { ", 2 killed" } else { "" },
        r.recovery.map_or(String::new(), |v| format!(
            " (rolled back {:.2} s after the kills, first new output {})",
            v.rolled_back,
            v.first_output.map_or("never".into(), |t| format!("{t:.2} s after"))
        )),
        r.secs,
        rate,
        rate / (r.lines as f64 / ceiling),
        r.lines as f64 / ceiling,
        r.p99_ms.map_or("-".into(), |v| format!("{v:.0}")),
        if r.exact.is_ok() { "exact" } else { "NOT exact" }
    );
}

/// An application's ceiling on one input: (app, lines, outputs, median s, Python's median s and
/// whether its outputs are the same).
type Ceiling = (&'static str, u64, usize, f64, Option<(f64, Result<(), String>)>);

fn print_table(rows: &[Row], ceilings: &[Ceiling], pipes: &[(&str, u64, PipesRow)]) {
    println!(
        "## Ceiling: the same operators in one process (no distribution, no checkpoints, no logging), \
         against a plain single-threaded Python loop (csv module) on the same file; medians of {} runs",
        ceiling::RUNS
    );
    println!("| app | lines | outputs | ceiling s | ceiling lines/s | Python s | Python lines/s | ceiling / Python | Python's outputs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (app, lines, outs, s, python) in ceilings {
        let rate = |secs: f64| *lines as f64 / secs;
        let (py_s, py_rate, ratio, same) = match python {
            Some((py, same)) => (
                format!("{py:.3}"),
                format!("{:.0}", rate(*py)),
                format!("{:.2}x", py / s),
                match same {
                    Ok(()) => "the same".to_owned(),
                    Err(e) => format!("differ: {e}"),
                },
            ),
            None => ("-".into(), "-".into(), "-".into(), "no python3".into()),
        };
        println!(
            "| {app} | {lines} | {outs} | {s:.3} | {:.0} | {py_s} | {py_rate} | {ratio} | {same} |",
            rate(*s)
        );
    }
    println!();
    if !pipes.is_empty() {
        println!(
            "## The two programs alone over their pipes (the runtime's driver, one stage after the other, no cluster); medians of {} runs",
            ceiling::RUNS
        );
        println!("| app | lines | version 1 s | version 1 lines/s | v1 CPU s driver + programs | version 2 s | version 2 lines/s | v2 stages s | v2 CPU s driver + programs | v2 / v1 | exact |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for (app, lines, r) in pipes {
            let rate = |secs: f64| *lines as f64 / secs;
            println!(
                "| {app} | {lines} | {:.3} | {:.0} | {:.2} + {:.2} | {:.3} | {:.0} | {:.3} + {:.3} | {:.2} + {:.2} | {:.2}x | {} |",
                r.v1,
                rate(r.v1),
                r.v1_cpu.0,
                r.v1_cpu.1,
                r.v2,
                rate(r.v2),
                r.v2_stages[0],
                r.v2_stages[1],
                r.v2_cpu.0,
                r.v2_cpu.1,
                r.v1 / r.v2,
                match &r.exact {
                    Ok(()) => "yes".to_owned(),
                    Err(e) => format!("NO: {e}"),
                }
            );
        }
        println!();
    }
    if rows.is_empty() {
        return;
    }
    println!("## Jobs on the cluster (operator programs, exactly-once on)");
    println!(
        "| app | lines | tasks | kills | job s | kill → rollback s | kill → first new output s | lines/s | outputs/s | vs ceiling | p50 ms | p99 ms | node CPU s | program CPU s | idle | max node RSS MiB | restarts | exact |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let ceiling = ceilings
            .iter()
            .find(|(a, l, ..)| *a == r.app && *l == r.lines)
            .map_or(f64::NAN, |(_, l, _, s, _)| *l as f64 / s);
        let rate = r.lines as f64 / r.secs;
        // Wall time not covered by CPU on the 2 cores: waiting (round trips, fsyncs, windows).
        let busy = (r.node_cpu + r.program_cpu) / (r.secs * cores());
        println!(
            "| {}{} | {} | {} | {} | {:.2} | {} | {} | {:.0} | {:.0} | {:.4}x | {} | {} | {:.1} | {:.1} | {:.0}% | {:.1} | {} | {} |",
            r.app,
            if r.profiled { " (under perf)" } else { "" },
            r.lines,
            r.tasks,
            if r.killed { "2" } else { "0" },
            r.secs,
            r.recovery.map_or("-".into(), |v| format!("{:.2}", v.rolled_back)),
            r.recovery.and_then(|v| v.first_output).map_or("-".into(), |v| format!("{v:.2}")),
            rate,
            r.outputs as f64 / r.secs,
            rate / ceiling,
            r.p50_ms.map_or("-".into(), |v| format!("{v:.0}")),
            r.p99_ms.map_or("-".into(), |v| format!("{v:.0}")),
            r.node_cpu,
            r.program_cpu,
            (1.0 - busy).max(0.0) * 100.0,
            r.rss_mib,
            r.restarts,
            match &r.exact {
                Ok(()) => "yes".to_owned(),
                Err(e) => format!("NO: {e}"),
            }
        );
    }
}

/// The last job without kills of a run: what the age comparison runs again.
struct LastJob {
    app: &'static App,
    lines: u64,
    tasks: u32,
    local: PathBuf,
    src: String,
    expected: BTreeMap<String, usize>,
}

/// The last job's seconds on the cluster that ran every job before it, and on fresh clusters.
struct Age {
    app: &'static str,
    lines: u64,
    tasks: u32,
    jobs_before: usize,
    aged: Vec<f64>,
    fresh: Vec<f64>,
    exact: Result<(), String>,
}

/// Runs the last job again, `plan.age_runs` times on the aged cluster and as many times on a fresh
/// cluster of its own (a new one for each run), taking turns so that the machine's noise falls
/// on both sides alike.
fn age(
    cluster: &mut LocalCluster,
    root: &Path,
    bin: &Path,
    last: &LastJob,
    plan: &Plan,
    jobs_before: usize,
) -> Result<Age> {
    let (rate, batch_bytes, runs) = (plan.rate, plan.batch_bytes, plan.age_runs);
    let mut aged = Vec::new();
    let mut fresh = Vec::new();
    let mut exact = Ok(());
    let job = |run| Job {
        app: last.app,
        src: &last.src,
        lines: last.lines,
        tasks: last.tasks,
        rate,
        kill_after: None,
        run,
    };
    for run in 1..=runs {
        let (row, _) = run_job(cluster, root, bin, &job(run), &last.expected, None)?;
        eprintln!("age: on the aged cluster, run {run}: {:.2} s", row.secs);
        aged.push(row.secs);
        exact = exact.and(row.exact);
        let mut own = start(root, "fresh", BASE_PORT + 40, batch_bytes)?;
        let row = std::fs::read(&last.local)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| store_input(&own, &last.local, &bytes, &last.src))
            .and_then(|()| run_job(&mut own, root, bin, &job(0), &last.expected, None));
        own.stop();
        let _ = std::fs::remove_dir_all(root.join("fresh"));
        let (row, _) = row?;
        eprintln!("age: on a fresh cluster, run {run}: {:.2} s", row.secs);
        fresh.push(row.secs);
        exact = exact.and(row.exact);
    }
    Ok(Age { app: last.app.name, lines: last.lines, tasks: last.tasks, jobs_before, aged, fresh, exact })
}

/// The last job's seconds on fresh clusters scraped every second and on fresh clusters serving
/// no metrics.
struct MetricsCost {
    app: &'static str,
    lines: u64,
    tasks: u32,
    scraped: Vec<f64>,
    off: Vec<f64>,
    /// CPU seconds of the node processes during each job.
    scraped_cpu: Vec<f64>,
    off_cpu: Vec<f64>,
    /// Scrapes made (every node's /metrics and the leader's /api/status, once a second) and
    /// how many failed.
    scrapes: u64,
    failed: u64,
    exact: Result<(), String>,
}

/// Runs the last job `plan.metrics_runs` times on a fresh cluster whose nodes are scraped every
/// second, as a Prometheus server and an open status page would (much more often than
/// Prometheus's default 15 s), and as many times on a fresh cluster serving no metrics, taking
/// turns.
fn metrics_cost(root: &Path, bin: &Path, last: &LastJob, plan: &Plan) -> Result<MetricsCost> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let job = Job {
        app: last.app,
        src: &last.src,
        lines: last.lines,
        tasks: last.tasks,
        rate: plan.rate,
        kill_after: None,
        run: 0,
    };
    let bytes = std::fs::read(&last.local)?;
    let mut m = MetricsCost {
        app: last.app.name,
        lines: last.lines,
        tasks: last.tasks,
        scraped: Vec::new(),
        off: Vec::new(),
        scraped_cpu: Vec::new(),
        off_cpu: Vec::new(),
        scrapes: 0,
        failed: 0,
        exact: Ok(()),
    };
    for run in 1..=plan.metrics_runs {
        for metrics in [true, false] {
            let mut own = start_with(root, "metered", BASE_PORT + 60, plan.batch_bytes, metrics)?;
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let counts = std::sync::Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
            let result = store_input(&own, &last.local, &bytes, &last.src).and_then(|()| {
                std::thread::scope(|scope| {
                    if metrics {
                        let ports: Vec<u16> = (0..NODES).map(|i| own.port(i)).collect();
                        let leader = own.port(LEADER);
                        let (stop, counts) = (&stop, &counts);
                        scope.spawn(move || {
                            while !stop.load(Ordering::Relaxed) {
                                let asks = ports
                                    .iter()
                                    .map(|p| (*p, "/metrics"))
                                    .chain(std::iter::once((leader, "/api/status")));
                                for (port, path) in asks {
                                    let ok = rainstorm_cli::cluster::http_get(port, path).is_ok();
                                    counts.0.fetch_add(1, Ordering::Relaxed);
                                    counts.1.fetch_add(u64::from(!ok), Ordering::Relaxed);
                                }
                                std::thread::sleep(Duration::from_secs(1));
                            }
                        });
                    }
                    let row = run_job(&mut own, root, bin, &job, &last.expected, None);
                    stop.store(true, Ordering::Relaxed);
                    row
                })
            });
            own.stop();
            let _ = std::fs::remove_dir_all(root.join("metered"));
            let (row, _) = result?;
            let side = if metrics { "scraped every second" } else { "serving no metrics" };
            eprintln!("metrics: {side}, run {run}: {:.2} s, node CPU {:.2} s", row.secs, row.node_cpu);
            if metrics {
                m.scraped.push(row.secs);
                m.scraped_cpu.push(row.node_cpu);
            } else {
                m.off.push(row.secs);
                m.off_cpu.push(row.node_cpu);
            }
            m.exact = std::mem::replace(&mut m.exact, Ok(())).and(row.exact);
            m.scrapes += counts.0.load(Ordering::Relaxed);
            m.failed += counts.1.load(Ordering::Relaxed);
        }
    }
    Ok(m)
}

impl MetricsCost {
    fn print(&self) {
        let (on, off) = (ceiling::median(&mut self.scraped.clone()), ceiling::median(&mut self.off.clone()));
        let (on_cpu, off_cpu) =
            (ceiling::median(&mut self.scraped_cpu.clone()), ceiling::median(&mut self.off_cpu.clone()));
        println!(
            "## Metrics: {} on {} lines with {} tasks, on fresh clusters scraped every second (every node's /metrics and the leader's /api/status) against fresh clusters serving no metrics; medians of {} runs each",
            self.app,
            self.lines,
            self.tasks,
            self.scraped.len()
        );
        println!("| scraped s | no metrics s | scraped / none | node CPU s scraped | node CPU s none | CPU scraped / none | runs scraped | runs without | scrapes (failed) | exact |");
        println!("|---:|---:|---:|---:|---:|---:|---|---|---|---|");
        let list = |v: &[f64]| v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ");
        println!(
            "| {on:.2} | {off:.2} | {:.3} | {on_cpu:.2} | {off_cpu:.2} | {:.3} | {} | {} | {} ({}) | {} |",
            on / off,
            on_cpu / off_cpu,
            list(&self.scraped),
            list(&self.off),
            self.scrapes,
            self.failed,
            match &self.exact {
                Ok(()) => "yes".to_owned(),
                Err(e) => format!("NO: {e}"),
            }
        );
        println!();
    }
}

impl Age {
    fn print(&self) {
        let (aged, fresh) =
            (ceiling::median(&mut self.aged.clone()), ceiling::median(&mut self.fresh.clone()));
        println!(
            "## Age: {} on {} lines with {} tasks, on the cluster that ran the {} jobs before it against a fresh cluster; medians of {} runs each",
            self.app,
            self.lines,
            self.tasks,
            self.jobs_before,
            self.aged.len()
        );
        println!("| aged cluster s | fresh cluster s | aged / fresh | runs aged | runs fresh | exact |");
        println!("|---:|---:|---:|---|---|---|");
        let list = |v: &[f64]| v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ");
        println!(
            "| {aged:.2} | {fresh:.2} | {:.3} | {} | {} | {} |",
            aged / fresh,
            list(&self.aged),
            list(&self.fresh),
            match &self.exact {
                Ok(()) => "yes".to_owned(),
                Err(e) => format!("NO: {e}"),
            }
        );
        println!();
    }
}

/// Job seconds on the per-batch journal design this benchmark measured before the data path
/// moved to aligned checkpoints, on the same kind of machine: (app, lines, how, [1, 3, 5 tasks]).
const BEFORE: [(&str, u64, &str, [f64; 3]); 4] = [
    ("app1", 100_000, "default batches (64 lines)", [9.2, 21.0, 38.1]),
    ("app2", 100_000, "default batches (64 lines)", [13.8, 40.7, 136.7]),
    ("app1", 1_000_000, "batches of 1024 lines", [12.7, 25.8, 36.9]),
    ("app2", 1_000_000, "batches of 1024 lines", [23.3, 57.0, 123.0]),
];

/// The job times of this run beside the same jobs before the move to aligned checkpoints.
fn print_before_after(rows: &[Row], paced: bool) {
    let after = |app: &str, lines: u64, tasks: u32| {
        rows.iter()
            .find(|r| r.app == app && r.lines == lines && r.tasks == tasks && !r.killed)
            .map_or("-".to_owned(), |r| format!("{:.2}{}", r.secs, if r.profiled { "*" } else { "" }))
    };
    let mut measured: Vec<(&str, u64)> =
        rows.iter().filter(|r| !r.killed).map(|r| (r.app, r.lines)).collect();
    measured.dedup();
    if !measured.iter().any(|(app, lines)| BEFORE.iter().any(|(a, l, ..)| a == app && l == lines)) {
        return;
    }
    println!(
        "## Before and after: job seconds at 1, 3 and 5 tasks per stage. Before: the per-batch journal design, \
         measured by this benchmark on the same kind of machine (at 1M lines only with batches of 1024 lines; \
         with the default batches App 1 at 3 tasks took 663 s). After: this run{}{}",
        if paced { ", sources paced (not comparable)" } else { "" },
        if rows.iter().any(|r| r.profiled) { "; * ran under perf" } else { "" }
    );
    println!("| app | lines | before: how | before 1 | before 3 | before 5 | after 1 | after 3 | after 5 | 3 tasks before / after |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for (app, lines) in measured {
        let before = BEFORE.iter().find(|(a, l, ..)| *a == app && *l == lines);
        let cell = |i: usize| before.map_or("-".to_owned(), |b| format!("{:.1}", b.3[i]));
        let speedup = before
            .zip(rows.iter().find(|r| r.app == app && r.lines == lines && r.tasks == 3 && !r.killed))
            .map_or("-".to_owned(), |(b, r)| format!("{:.1}x", b.3[1] / r.secs));
        println!(
            "| {app} | {lines} | {} | {} | {} | {} | {} | {} | {} | {speedup} |",
            before.map_or("not measured", |b| b.2),
            cell(0),
            cell(1),
            cell(2),
            after(app, lines, 1),
            after(app, lines, 3),
            after(app, lines, 5)
        );
    }
    println!();
}

/// `perf record` sampling every node process for the length of one job.
struct Perf {
    child: std::process::Child,
    out: PathBuf,
}

impl Perf {
    fn start(cluster: &LocalCluster, out: &Path) -> Result<Perf> {
        let pids: Vec<String> = cluster.nodes.iter().map(|n| n.child.id().to_string()).collect();
        let child = std::process::Command::new("perf")
            .args(["record", "-q", "-F", "499", "-o"])
            .arg(out)
            .args(["-p", &pids.join(",")])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting `perf record` (Debian's package linux-perf)")?;
        Ok(Perf { child, out: out.to_owned() })
    }

    /// Stops the sampling; perf writes its file when interrupted.
    fn finish(mut self) -> Result<PathBuf> {
        let pid = self.child.id().to_string();
        let sent =
            std::process::Command::new("kill").args(["-INT", &pid]).status().context("interrupting perf")?;
        if !sent.success() {
            bail!("could not interrupt perf ({sent})");
        }
        let status = self.child.wait().context("waiting for perf")?;
        if !self.out.exists() {
            bail!("perf wrote no profile ({status}); is perf_event_paranoid too strict?");
        }
        Ok(self.out.clone())
    }
}

impl Drop for Perf {
    /// A profile given up (an error or a panic before [`Perf::finish`]) leaves no perf running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A profiling step's result, or `None` after saying why the job goes on without a profile.
fn without_profile_on_error<T>(step: Result<T>) -> Option<T> {
    step.map_err(|e| eprintln!("(no profile: {e:#})")).ok()
}

/// Where the node processes spent their CPU time in each profiled job: by thread and by
/// function (self time, over every node process).
fn print_profiles(profiles: &[(&str, u64, u32, PathBuf)]) {
    if profiles.is_empty() {
        println!(
            "## Where the time goes: no profile was taken (is `perf` installed? Debian's package linux-perf)"
        );
        return;
    }
    for (app, lines, tasks, path) in profiles {
        println!(
            "## Where the time goes: {app} on {lines} lines with {tasks} tasks, `perf` at 499 Hz over every node process (self time)"
        );
        for (sort, top) in [("comm", 8), ("dso,symbol", 25)] {
            match perf_report(path, sort) {
                Ok(lines) => {
                    println!("```");
                    for l in lines.iter().take(top) {
                        println!("{l}");
                    }
                    println!("```");
                }
                Err(e) => println!("(perf report failed: {e:#})"),
            }
        }
        println!();
    }
}

/// `perf report` lines of a profile sorted by `sort`, largest first, without perf's comments.
fn perf_report(path: &Path, sort: &str) -> Result<Vec<String>> {
    let out = std::process::Command::new("perf")
        .args(["report", "--stdio", "-q", "--percent-limit", "0.5", "--sort", sort, "-i"])
        .arg(path)
        .stderr(std::process::Stdio::null())
        .output()
        .context("running `perf report`")?;
    if !out.status.success() {
        bail!("perf report exited with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end().chars().take(160).collect())
        .collect())
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaders_completion_line_is_parsed() {
        let reply = "job 2-1a2b3c completed: 1507 outputs in 6.69 s, 2 rollbacks; every output is in x exactly once\n";
        assert_eq!(parse_completed(reply), Some(("2-1a2b3c".to_owned(), 1507, 6.69, 2)));
        assert_eq!(parse_completed("job 2-1a2b3c failed: boom"), None);
    }
}
