//! `rainstorm sim <layer>`: one seed with its verdict and trace hash, or a sweep of seeds; a
//! failing scenario shrunk to a small one and saved as a capsule that `cargo test` replays.

use anyhow::{anyhow, bail, Result};
use clap::{Args, ValueEnum};
use rainstorm_sim::capsule::{self, Layer as SimLayer};
use rainstorm_sim::shrink::{shrink, Size};
use rainstorm_sim::{
    check_replays_alike, determinism_seeds, replay_command, run_membership, RunOptions, Scenario,
    DETERMINISM_PERCENT,
};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Layer {
    /// SWIM membership under crashes, restarts, pauses, partitions, loss and clock offsets.
    Membership,
    /// HyDFS file workloads under crashes, restarts, loss, partitions and disk corruption.
    Hydfs,
    /// RainStorm jobs under worker (and sometimes leader) crashes, restarts, pauses,
    /// partitions, loss, delay and duplication, judged against a single-process run.
    Rainstorm,
}

impl Layer {
    fn sim(self) -> SimLayer {
        match self {
            Layer::Membership => SimLayer::Membership,
            Layer::Hydfs => SimLayer::Hydfs,
            Layer::Rainstorm => SimLayer::Rainstorm,
        }
    }

    fn name(self) -> &'static str {
        self.sim().name()
    }

    fn scenario(self, seed: u64) -> Scenario {
        self.sim().swarm(seed)
    }
}

#[derive(Args)]
pub struct SimArgs {
    /// Which layer to simulate.
    layer: Layer,
    /// Run the swarm scenario of this seed and print its verdict and trace hash.
    #[arg(long, conflicts_with_all = ["seeds", "scenario", "named"])]
    seed: Option<u64>,
    /// Sweep this many swarm seeds (starting at --start) and print how many failed.
    #[arg(long)]
    seeds: Option<u64>,
    /// First seed of a sweep.
    #[arg(long, default_value_t = 0, requires = "seeds")]
    start: u64,
    /// Replay a scenario saved as JSON (a capsule, such as those under tests/scenarios/); the
    /// file says which layer it is (a `rainstorm` job, else a `hydfs` workload, else
    /// membership), and it must be this one.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Run a named scenario (use `--named list` to see them) with the given --named-seed.
    #[arg(long)]
    named: Option<String>,
    #[arg(long, default_value_t = 1)]
    named_seed: u64,
    /// Print the readable event log (time, node, event).
    #[arg(long)]
    trace: bool,
    /// Print the scenario as JSON (with --shrink, the smallest one found).
    #[arg(long)]
    dump: bool,
    /// If the scenario fails, cut it down (fewer nodes, faults, clients, files, operations,
    /// input lines or tasks; a shorter, calmer run) to the smallest one found that a checker
    /// which caught it still catches; print it, its violations and its replay command.
    #[arg(long, conflicts_with = "seeds")]
    shrink: bool,
    /// The most runs a shrink spends.
    #[arg(long, default_value_t = 300, requires = "shrink")]
    shrink_runs: u32,
    /// Save the scenario (with --shrink, the smallest one found) as a capsule at this path,
    /// named after the file; `cargo test` replays every capsule under tests/scenarios/.
    #[arg(long, conflicts_with = "seeds")]
    save: Option<PathBuf>,
    /// Switch on a planted bug (needs a build with --features planted-bugs).
    #[arg(long)]
    plant: Option<String>,
}

pub fn run(args: SimArgs) -> Result<ExitCode> {
    let layer = args.layer;
    if let Some(count) = args.seeds {
        return sweep(layer, args.start, count, args.plant.as_deref());
    }
    let scenario = if let Some(seed) = args.seed {
        layer.scenario(seed)
    } else if let Some(path) = &args.scenario {
        let scenario = capsule::load(path).map_err(|e| anyhow!(e))?;
        let holds = SimLayer::of(&scenario);
        if holds != layer.sim() {
            bail!(
                "{} holds a {} scenario; replay it with `sim {} --scenario {}`",
                path.display(),
                holds.name(),
                holds.name(),
                path.display()
            );
        }
        scenario
    } else if let Some(name) = &args.named {
        let all = layer.sim().named(args.named_seed);
        if name == "list" {
            for s in all {
                println!("{}", s.name);
            }
            return Ok(ExitCode::SUCCESS);
        }
        match all.into_iter().find(|s| &s.name == name) {
            Some(s) => s,
            None => bail!("no named scenario `{name}`; `--named list` shows them"),
        }
    } else {
        bail!("give --seed N, --seeds N, --scenario FILE or --named NAME");
    };
    let mut scenario = plant(layer, scenario, args.plant.as_deref())?;
    // The seed first, so that even a hang tells which run it was.
    println!("seed {}", scenario.seed);
    print!("{}", scenario.describe());
    let mut shrunk_trace = None;
    if args.shrink {
        let Some((smallest, trace)) = shrink_scenario(&scenario, args.shrink_runs) else {
            println!("verdict PASS: nothing to shrink");
            return Ok(ExitCode::SUCCESS);
        };
        scenario = smallest;
        shrunk_trace = Some(trace);
        print!("{}", scenario.describe());
    }
    let mut saved_at = None;
    if let Some(path) = &args.save {
        capsule::save(path, &scenario).map_err(|e| anyhow!(e))?;
        // Replay what the file holds, not what was in memory.
        scenario = capsule::load(path).map_err(|e| anyhow!(e))?;
        println!("saved as {}", path.display());
        saved_at = Some(path.as_path());
    }
    if args.dump {
        println!("{}", serde_json::to_string_pretty(&scenario)?);
    }
    let started = Instant::now();
    let report = run_membership(&scenario, &RunOptions { trace_lines: args.trace, record_events: false });
    let wall = started.elapsed();
    if let Some(trace) = shrunk_trace.filter(|t| *t != report.trace_hash) {
        bail!("the smallest scenario replayed to trace {} instead of {trace}", report.trace_hash);
    }
    for line in &report.trace_lines {
        println!("{line}");
    }
    println!(
        "events {}  datagrams {} ({} bytes, largest {})  dropped {}  wall {:.1} ms",
        report.stats.events,
        report.stats.datagrams_sent,
        report.stats.datagram_bytes,
        report.stats.largest_datagram,
        report.stats.datagrams_dropped,
        wall.as_secs_f64() * 1000.0
    );
    if let Some(w) = &report.workload {
        let ops: Vec<String> = w.ops.iter().map(|(k, (ok, failed))| format!("{k} {ok}/{failed}")).collect();
        println!(
            "hydfs ops (ok/failed): {}  written {} B  read {} B",
            ops.join("  "),
            w.bytes_written,
            w.bytes_read
        );
    }
    if let Some(j) = &report.job {
        println!(
            "job {}: {} input lines, {} of {} outputs, {} rollbacks, {} tasks started ({} from a \
             checkpoint), {} crashes of task hosts while it ran, {} batches, submitted at {} ms, \
             completed at {}{}",
            j.job.as_deref().unwrap_or("(not submitted)"),
            j.input_lines,
            j.outputs,
            j.reference_outputs,
            j.rollbacks,
            j.tasks_started,
            j.tasks_resumed,
            j.crashes_while_running,
            j.batches,
            j.submitted_ms.map_or("-".into(), |t| t.to_string()),
            j.completed_ms.map_or("never".into(), |t| format!("{t} ms")),
            j.failed.as_ref().map_or(String::new(), |r| format!(", failed: {r}")),
        );
        for (detect, resume) in &j.recoveries {
            println!("  crashed workers detected {detect} ms after the crash; output resumed {resume} ms after that");
        }
    }
    if scenario.hydfs.is_some() {
        println!(
            "stream frames {} ({} bytes, largest {}); on broken connections {} lost, {} duplicated",
            report.stats.stream_frames_sent,
            report.stats.stream_bytes,
            report.stats.largest_stream_frame,
            report.stats.stream_frames_lost,
            report.stats.stream_frames_duplicated
        );
    }
    if report.passed() {
        println!("verdict PASS");
    } else {
        println!("verdict FAIL ({} violations)", report.violations.len());
        for v in &report.violations {
            println!("  {v}");
        }
    }
    println!("trace {}", report.trace_hash);
    if !report.passed() || args.shrink || saved_at.is_some() {
        println!("replay: {}", capsule::replay_command(&scenario, saved_at));
        if saved_at.is_none() && args.shrink {
            println!("(not saved: add --save {} to keep it)", capsule::suggested_path(&scenario).display());
        }
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Shrinks `scenario` within `max_runs` runs, reporting each smaller failing scenario kept;
/// returns the smallest (named after the original) and its trace hash, or `None` if it passes.
fn shrink_scenario(scenario: &Scenario, max_runs: u32) -> Option<(Scenario, String)> {
    let started = Instant::now();
    let mut kept = 0;
    let shrunk = shrink(scenario, max_runs, |s, report| {
        let first = report.violations.first().map(|v| v.to_string()).unwrap_or_default();
        eprintln!(
            "shrink: {:>6.1} s  {}  still fails: {first}",
            started.elapsed().as_secs_f64(),
            Size::of(s)
        );
        kept += 1;
    })?;
    let mut smallest = shrunk.minimal().clone();
    smallest.name = format!("{}-shrunk", scenario.name);
    println!(
        "shrunk in {} runs ({} kept, {:.1} s): {} -> {}",
        shrunk.runs,
        kept - 1,
        started.elapsed().as_secs_f64(),
        Size::of(scenario),
        Size::of(&smallest)
    );
    println!("the original failed with:");
    for v in shrunk.original_violations.iter().take(5) {
        println!("  {v}");
    }
    if shrunk.original_violations.len() > 5 {
        println!("  ... and {} more", shrunk.original_violations.len() - 5);
    }
    Some((smallest, shrunk.report.trace_hash))
}

fn sweep(layer: Layer, start: u64, count: u64, bug: Option<&str>) -> Result<ExitCode> {
    let started = Instant::now();
    let mut failed = 0;
    let mut events = 0;
    let seeds: Vec<u64> = (start..start + count).collect();
    // A seeded random 5% of the seeds run twice: their trace hashes must agree.
    let twice: BTreeSet<u64> = determinism_seeds(start, count).into_iter().collect();
    let scenarios =
        seeds.iter().map(|s| plant(layer, layer.scenario(*s), bug)).collect::<Result<Vec<_>>>()?;
    let reports = crate::bench::parallel_map(scenarios, |s| {
        let r = run_membership(&s, &RunOptions::default());
        let seed = r.scenario.seed;
        let replay = replay_command(layer.name(), seed, bug);
        let determinism = twice.contains(&seed).then(|| check_replays_alike(&r, &replay));
        let broken = (r.stats.stream_frames_lost, r.stats.stream_frames_duplicated);
        let crashed = r.job.as_ref().map(|j| j.crashes_while_running > 0);
        let recoveries = r.job.as_ref().map(|j| j.recoveries.clone()).unwrap_or_default();
        // A job whose leader was crashed while it ran: how soon it was taken over, and whether
        // it completed.
        let leader_loss = r.job.as_ref().filter(|j| {
            let crash = r.scenario.rainstorm.as_ref().and_then(|w| w.leader_crash_ms);
            crash.is_some_and(|c| {
                j.submitted_ms.is_some_and(|s| s <= c) && j.completed_ms.is_none_or(|d| d > c)
            })
        });
        let leader_loss = leader_loss.map(|j| (j.takeover_ms, j.completed_ms.is_some()));
        let checkers: BTreeSet<String> = r.violations.iter().map(|v| v.checker.to_string()).collect();
        let first = r.violations.first().map(|v| (v.to_string(), checkers.into_iter().collect::<Vec<_>>()));
        (seed, r.stats.events, broken, first, crashed, (recoveries, leader_loss), determinism)
    });
    let (mut lost, mut duplicated, mut touched) = (0, 0, 0);
    let (mut jobs, mut crashed_jobs) = (0u64, 0u64);
    let (mut detections, mut resumes): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let (mut rerun, mut differed) = (0u64, 0u64);
    let (mut leaderless, mut taken_over, mut completed_after) = (0u64, Vec::new(), 0u64);
    for (seed, n, broken, violation, crashed, (recoveries, leader_loss), determinism) in reports {
        if let Some((takeover, completed)) = leader_loss {
            leaderless += 1;
            taken_over.extend(takeover.map(|ms| ms as f64));
            completed_after += u64::from(completed);
        }
        let not_alike = match determinism {
            Some(result) => {
                rerun += 1;
                result.err()
            }
            None => None,
        };
        for (detect, resume) in recoveries {
            detections.push(detect as f64);
            resumes.push(resume as f64);
        }
        events += n;
        lost += broken.0;
        duplicated += broken.1;
        touched += u64::from(broken != (0, 0));
        if let Some(c) = crashed {
            jobs += 1;
            crashed_jobs += u64::from(c);
        }
        if let Some((v, checkers)) = &violation {
            println!("seed {seed} FAILED ({}): {v}", checkers.join(", "));
            println!("  replay: {}", replay_command(layer.name(), seed, bug));
            println!(
                "  shrink: {}",
                capsule::shrink_command(&plant(layer, layer.scenario(seed), bug)?, None)
            );
        }
        if let Some(difference) = &not_alike {
            differed += 1;
            println!("seed {seed} FAILED: {difference}");
        }
        failed += u64::from(violation.is_some() || not_alike.is_some());
    }
    let wall = started.elapsed().as_secs_f64();
    println!("{events} events in {wall:.1} s ({:.0} events/s)", events as f64 / wall);
    println!(
        "stream frames in flight on broken connections: {lost} lost, {duplicated} duplicated (in {touched} seeds)"
    );
    if jobs > 0 {
        println!(
            "{crashed_jobs} of {jobs} jobs ({:.0}%) saw a node running one of their tasks crash while they ran",
            100.0 * crashed_jobs as f64 / jobs as f64
        );
    }
    if !resumes.is_empty() {
        let n = resumes.len();
        let ms = |xs: &[f64], q| crate::bench::membership::percentile(xs, q).unwrap_or(0.0);
        println!(
            "after {n} worker crashes with no other fault meanwhile: detected (dropped by every member, the job rolled back) in {} ms \
             (median), {} ms (max); output resumed {} ms (median), {} ms (p99), {} ms (max) after the detection",
            ms(&detections, 0.5),
            ms(&detections, 1.0),
            ms(&resumes, 0.5),
            ms(&resumes, 0.99),
            ms(&resumes, 1.0),
        );
    }
    if leaderless > 0 {
        let ms = |q| crate::bench::membership::percentile(&taken_over, q).unwrap_or(0.0);
        println!(
            "{leaderless} of {jobs} jobs ({:.0}%) lost their leader to a crash while they ran: {} taken over, \
             {} ms (median) and {} ms (max) after the crash; {completed_after} completed",
            100.0 * leaderless as f64 / jobs.max(1) as f64,
            taken_over.len(),
            ms(0.5),
            ms(1.0),
        );
    }
    println!(
        "determinism: {rerun} seeds ({DETERMINISM_PERCENT}%, drawn from the range) run twice, {differed} gave another trace"
    );
    println!("{}: {count} seeds, {failed} failed", layer.name());
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(feature = "planted-bugs")]
fn plant(layer: Layer, mut scenario: Scenario, bug: Option<&str>) -> Result<Scenario> {
    use rainstorm_core::hydfs::PlantedBug as HydfsBug;
    use rainstorm_core::membership::PlantedBug;
    let Some(name) = bug else { return Ok(scenario) };
    match layer {
        Layer::Membership => {
            let Some(b) = PlantedBug::from_name(name) else {
                let names: Vec<_> = PlantedBug::ALL.iter().map(|b| b.name()).collect();
                bail!("no planted membership bug `{name}`; known: {}", names.join(", "));
            };
            scenario.config.planted = Some(b);
        }
        Layer::Hydfs => {
            let Some(b) = HydfsBug::parse(name) else {
                let names: Vec<_> = HydfsBug::ALL.iter().map(|b| b.name()).collect();
                bail!("no planted HyDFS bug `{name}`; known: {}", names.join(", "));
            };
            if let Some(w) = scenario.hydfs.as_mut() {
                w.config.planted = Some(b);
            }
        }
        Layer::Rainstorm => {
            // A job's own bugs, or HyDFS bugs under its files (the job's settings carry them).
            use rainstorm_core::rainstorm::PlantedBug as JobBug;
            if let Some(b) = HydfsBug::parse(name) {
                let Some(w) = scenario.hydfs.as_mut() else {
                    bail!("this scenario has no HyDFS settings to plant `{name}` in");
                };
                w.config.planted = Some(b);
                return Ok(scenario);
            }
            let Some(b) = JobBug::parse(name) else {
                let names: Vec<_> = JobBug::ALL.iter().map(|b| b.name()).collect();
                let files: Vec<_> = HydfsBug::ALL.iter().map(|b| b.name()).collect();
                bail!(
                    "no planted RainStorm or HyDFS bug `{name}`; known: {}; and HyDFS's: {}",
                    names.join(", "),
                    files.join(", ")
                );
            };
            if let Some(w) = scenario.rainstorm.as_mut() {
                w.config.planted = Some(b);
            }
        }
    }
    Ok(scenario)
}

#[cfg(not(feature = "planted-bugs"))]
fn plant(_layer: Layer, scenario: Scenario, bug: Option<&str>) -> Result<Scenario> {
    if bug.is_some() {
        bail!(
            "--plant needs a build with planted bugs: cargo run --release --features planted-bugs -- sim ..."
        );
    }
    Ok(scenario)
}
