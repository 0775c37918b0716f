//! `rainstorm sim <layer>`: one seed with its verdict and trace hash, or a sweep of seeds.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use rainstorm_sim::{
    check_replays_alike, determinism_seeds, named, replay_command, run_membership, RunOptions, Scenario,
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
    fn name(self) -> &'static str {
        match self {
            Layer::Membership => "membership",
            Layer::Hydfs => "hydfs",
            Layer::Rainstorm => "rainstorm",
        }
    }

    fn scenario(self, seed: u64) -> Scenario {
        match self {
            Layer::Membership => Scenario::swarm(seed),
            Layer::Hydfs => Scenario::hydfs_swarm(seed),
            Layer::Rainstorm => Scenario::rainstorm_swarm(seed),
        }
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
    /// Replay a scenario saved as JSON (for example a minimized failure under tests/).
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
    /// Print the scenario as JSON (to save a failing one).
    #[arg(long)]
    dump: bool,
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
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a scenario", path.display()))?
    } else if let Some(name) = &args.named {
        let all = match layer {
            Layer::Membership => named::all(args.named_seed),
            Layer::Hydfs => named::hydfs_all(args.named_seed),
            Layer::Rainstorm => named::rainstorm_all(args.named_seed),
        };
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
    let scenario = plant(layer, scenario, args.plant.as_deref())?;
    if args.dump {
        println!("{}", serde_json::to_string_pretty(&scenario)?);
    }
    // The seed first, so that even a hang tells which run it was.
    println!("seed {}", scenario.seed);
    print!("{}", scenario.describe());
    let started = Instant::now();
    let report = run_membership(&scenario, &RunOptions { trace_lines: args.trace, record_events: false });
    let wall = started.elapsed();
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
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
        let checkers: BTreeSet<String> = r.violations.iter().map(|v| v.checker.to_string()).collect();
        let first = r.violations.first().map(|v| (v.to_string(), checkers.into_iter().collect::<Vec<_>>()));
        (seed, r.stats.events, broken, first, crashed, recoveries, determinism)
    });
    let (mut lost, mut duplicated, mut touched) = (0, 0, 0);
    let (mut jobs, mut crashed_jobs) = (0u64, 0u64);
    let (mut detections, mut resumes): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    let (mut rerun, mut differed) = (0u64, 0u64);
    for (seed, n, broken, violation, crashed, recoveries, determinism) in reports {
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
