//! `bench membership`: what RainStorm's SWIM membership does, measured in the simulator.
//!
//! 1. Detection: members crash in a calm 10-node cluster; time until some list shows the crash
//!    (SUS or DEL) against SWIM's analytic e/(e−1) periods, and until every list dropped it,
//!    against the documented bounds (5 s and 10 s), in both modes.
//! 2. Accuracy: live members declared failed per simulated cluster-hour at 0–20 % loss.
//! 3. Cost: datagrams and bytes per member per second in steady state at n = 10, 100, 1000.
//! 4. The simulator itself: events per second and the wall time of a 10-node, 10-minute run.
//! 5. A slow member (`Fault::Slow`): live members declared failed per cluster-hour, and first
//!    detection of a crash, with Lifeguard off and on (and foca).
//! 6. With the `compare-foca` feature, the `foca` crate driven through the same simulator under
//!    the same faults, in every part where it applies.
//!
//! The runs of parts 1–3 share one pool of threads, the costliest first; part 4 runs alone on one
//! thread afterwards, since it measures the simulator's speed.

use super::{parallel_map, Scale};
use anyhow::{bail, Result};
use rainstorm_core::membership::MembershipConfig;
use rainstorm_core::Time;
use rainstorm_sim::check::DetectionSample;
use rainstorm_sim::world::RunStats;
use rainstorm_sim::{
    run_actor, Actor, CheckerKind, Fault, FaultAt, NetConfig, Report, RunOptions, Scenario, World,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// SWIM's expected periods until some member's probe picks a crashed member: e/(e−1).
const SWIM_ANALYTIC_PERIODS: f64 = std::f64::consts::E / (std::f64::consts::E - 1.0);
/// The documented bounds at n = 10 with a 1 s period (see `MembershipConfig`).
const FIRST_DETECTION_BOUND_MS: u64 = 5_000;
const ALL_LISTS_BOUND_MS: u64 = 10_000;
/// Detection runs: the cluster settles, then one crash every `CRASH_SPACING_MS`; the crashed
/// slot restarts `RESTART_AFTER_MS` later (a new member id), so the cluster stays at 10.
const DETECTION_NODES: usize = 10;
const WARMUP_MS: u64 = 20_000;
const CRASH_SPACING_MS: u64 = 40_000;
const RESTART_AFTER_MS: u64 = 30_000;
const CRASHES_PER_RUN: usize = 20;
/// False-failure runs last this long each; a cell is many runs with their own seeds.
const ACCURACY_RUN_MS: u64 = 600_000;
const LOSS_LEVELS_PERMILLE: [u32; 5] = [0, 10, 50, 100, 200];
const HOUR_MS: f64 = 3_600_000.0;

/// One membership implementation under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Impl {
    RainStorm {
        suspicion: bool,
    },
    /// PingAck+S with Lifeguard switched off (part 5 only).
    RainStormWithoutLifeguard,
    #[cfg(feature = "compare-foca")]
    Foca,
}

impl Impl {
    fn all() -> Vec<Impl> {
        vec![
            Impl::RainStorm { suspicion: true },
            Impl::RainStorm { suspicion: false },
            #[cfg(feature = "compare-foca")]
            Impl::Foca,
        ]
    }

    /// The implementations of part 5: Lifeguard off, on, and foca.
    fn slow_member_set() -> Vec<Impl> {
        vec![
            Impl::RainStormWithoutLifeguard,
            Impl::RainStorm { suspicion: true },
            #[cfg(feature = "compare-foca")]
            Impl::Foca,
        ]
    }

    fn label(self) -> &'static str {
        match self {
            Impl::RainStorm { suspicion: true } => "RainStorm PingAck+S",
            Impl::RainStorm { suspicion: false } => "RainStorm PingAck",
            Impl::RainStormWithoutLifeguard => "RainStorm +S, no Lifeguard",
            #[cfg(feature = "compare-foca")]
            Impl::Foca => "foca 2 (new_lan)",
        }
    }

    fn config(self) -> MembershipConfig {
        let (suspicion, lifeguard) = match self {
            Impl::RainStorm { suspicion } => (suspicion, true),
            Impl::RainStormWithoutLifeguard => (true, false),
            #[cfg(feature = "compare-foca")]
            Impl::Foca => (true, true),
        };
        MembershipConfig { suspicion_at_start: suspicion, lifeguard, ..MembershipConfig::lan() }
    }

    /// Runs a scenario to its end (a panic in a node becomes a `Panic` violation).
    fn run(self, s: &Scenario, opts: &RunOptions) -> Report {
        match self {
            Impl::RainStorm { .. } | Impl::RainStormWithoutLifeguard => {
                run_actor::<rainstorm_core::Node>(s, opts)
            }
            #[cfg(feature = "compare-foca")]
            Impl::Foca => match s.nodes {
                0..=10 => run_actor::<super::foca_actor::FocaActor<10>>(s, opts),
                11..=100 => run_actor::<super::foca_actor::FocaActor<100>>(s, opts),
                _ => run_actor::<super::foca_actor::FocaActor<1000>>(s, opts),
            },
        }
    }

    /// Steady-state traffic of a scenario (see [`window`]).
    fn run_window(self, s: &Scenario, plan: TrafficPlan) -> Result<Window, String> {
        match self {
            Impl::RainStorm { .. } | Impl::RainStormWithoutLifeguard => {
                window::<rainstorm_core::Node>(s, plan)
            }
            #[cfg(feature = "compare-foca")]
            Impl::Foca => match s.nodes {
                0..=10 => window::<super::foca_actor::FocaActor<10>>(s, plan),
                11..=100 => window::<super::foca_actor::FocaActor<100>>(s, plan),
                _ => window::<super::foca_actor::FocaActor<1000>>(s, plan),
            },
        }
    }
}

/// The calm network of the detection and traffic parts: 1 % loss, 1–10 ms latency.
fn calm_net(loss_permille: u32) -> NetConfig {
    NetConfig {
        loss_permille,
        duplicate_permille: 0,
        latency_min_ms: 1,
        latency_max_ms: 10,
        bandwidth_bytes_per_ms: 0,
        ..NetConfig::default()
    }
}

fn scenario(name: String, seed: u64, nodes: usize, imp: Impl, net: NetConfig, duration_ms: u64) -> Scenario {
    Scenario {
        name,
        seed,
        nodes,
        config: imp.config(),
        net,
        clock_offsets_ms: Vec::new(),
        clock_drift_ppm: Vec::new(),
        faults: Vec::new(),
        calm_from_ms: 0,
        duration_ms,
        strict_detection_ms: None,
        hydfs: None,
        rainstorm: None,
        cluster_key: false,
    }
}

/// Violations seen per implementation, group of runs and checker, for the footnotes.
#[derive(Default)]
struct Violations(BTreeMap<(Impl, &'static str, CheckerKind), usize>);

impl Violations {
    fn add(&mut self, imp: Impl, runs: &'static str, report: &Report) {
        for v in &report.violations {
            *self.0.entry((imp, runs, v.checker)).or_default() += 1;
        }
    }

    fn panics(&self) -> usize {
        self.0.iter().filter(|((_, _, k), _)| *k == CheckerKind::Panic).map(|(_, n)| n).sum()
    }

    /// One line per implementation: where its runs broke which invariant.
    fn describe(&self, imp: Impl) -> String {
        let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
        for ((_, runs, kind), n) in self.0.iter().filter(|((i, _, _), _)| *i == imp) {
            let item = format!("{n} {kind}");
            match groups.iter_mut().find(|(r, _)| r == runs) {
                Some((_, items)) => items.push(item),
                None => groups.push((runs, vec![item])),
            }
        }
        if groups.is_empty() {
            return "none".into();
        }
        groups
            .iter()
            .map(|(runs, items)| format!("{} in {runs}", items.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One simulated run of some part, for the shared pool.
#[derive(Clone, Copy, Debug)]
enum Job {
    Detection { imp: Impl, seed: u64 },
    Accuracy { imp: Impl, loss_permille: u32, seed: u64, duration_ms: u64 },
    Traffic { imp: Impl, nodes: usize },
    SlowMember { imp: Impl, loss_permille: u32, seed: u64, duration_ms: u64 },
}

/// What one job produced, with what it was.
enum Outcome {
    Detection(Impl, Report),
    Accuracy(Impl, u32, Report),
    Traffic(Impl, usize, Result<Window, String>),
    SlowMember(Impl, u32, Report),
}

impl Job {
    fn run(self, plan: TrafficPlan) -> Outcome {
        match self {
            Job::Detection { imp, seed } => {
                let s = detection_scenario(imp, seed, CRASHES_PER_RUN);
                Outcome::Detection(imp, imp.run(&s, &RunOptions::default()))
            }
            Job::Accuracy { imp, loss_permille, seed, duration_ms } => {
                let name = format!("bench-accuracy-{loss_permille}-{seed}");
                let s = scenario(name, seed, 10, imp, calm_net(loss_permille), duration_ms);
                Outcome::Accuracy(imp, loss_permille, imp.run(&s, &RunOptions::default()))
            }
            Job::Traffic { imp, nodes } => Outcome::Traffic(imp, nodes, traffic_run(imp, nodes, plan)),
            Job::SlowMember { imp, loss_permille, seed, duration_ms } => {
                let s = slow_member_scenario(imp, loss_permille, seed, duration_ms);
                Outcome::SlowMember(imp, loss_permille, imp.run(&s, &RunOptions::default()))
            }
        }
    }
}

pub fn run(scale: Scale) -> Result<()> {
    let started = Instant::now();
    let plan = TrafficPlan::new(scale.quick);
    let detection_runs = if scale.quick { 2 } else { 15 };
    let hours = scale.hours.unwrap_or(if scale.quick { 5.0 } else { 50.0 });

    // Every run of parts 1-3 goes through one pool, the costliest first, so the cores finish
    // together; part 4 then runs alone on one thread.
    let mut jobs = traffic_jobs(plan);
    jobs.sort_by_key(|j| match j {
        Job::Traffic { nodes, .. } => std::cmp::Reverse(*nodes),
        _ => std::cmp::Reverse(0),
    });
    jobs.extend(slow_member_jobs(hours / 5.0));
    jobs.extend(accuracy_jobs(hours));
    jobs.extend(detection_jobs(detection_runs));
    let outcomes = parallel_map(jobs, |job| {
        let t = Instant::now();
        let outcome = job.run(plan);
        (outcome, t.elapsed())
    });
    let mut cpu = [Duration::ZERO; 4];
    let mut slow = Vec::new();
    let mut violations = Violations::default();
    let mut detections = Vec::new();
    let mut accuracy = Vec::new();
    let mut traffic = Vec::new();
    for (outcome, took) in outcomes {
        match outcome {
            Outcome::Detection(imp, r) => {
                cpu[0] += took;
                violations.add(imp, "detection runs", &r);
                detections.push((imp, r));
            }
            Outcome::Accuracy(imp, loss_permille, r) => {
                cpu[1] += took;
                let runs = if loss_permille <= 50 {
                    "false-failure runs at <= 5% loss"
                } else {
                    "false-failure runs at > 5% loss"
                };
                violations.add(imp, runs, &r);
                accuracy.push((imp, loss_permille, r));
            }
            Outcome::SlowMember(imp, loss_permille, r) => {
                cpu[3] += took;
                violations.add(imp, "slow-member runs", &r);
                slow.push((imp, loss_permille, r));
            }
            Outcome::Traffic(imp, nodes, w) => {
                cpu[2] += took;
                let w = match w {
                    Ok(w) => w,
                    Err(e) => bail!("traffic run failed: {e}"),
                };
                violations.add(imp, "traffic runs", &w.report);
                traffic.push(TrafficRow {
                    imp,
                    nodes,
                    window_s: plan.window_ms as f64 / 1000.0,
                    stats: w.stats,
                    steady_after_ms: w.steady_after_ms,
                    steady: w.steady,
                    listed: listed_fraction(&w.report),
                });
            }
        }
    }
    traffic.sort_by_key(|r| (r.imp, r.nodes));
    let pool_wall = started.elapsed();
    let speed = simulator_speed(scale.quick);

    let mut out = String::new();
    let _ = writeln!(
        out,
        "rainstorm bench membership{}: every figure is simulated from fixed seeds and replays exactly, except wall-clock times",
        if scale.quick { " --quick (about 1/10 scale)" } else { "" }
    );
    let _ = writeln!(out);
    let detection_rows = detection_rows(detections);
    print_detection(&mut out, &detection_rows);
    print_false_failures(&mut out, &accuracy_cells(accuracy));
    print_traffic(&mut out, &traffic, plan);
    print_speed(&mut out, &speed);
    print_slow_member(&mut out, &slow, &detection_rows);

    let _ = writeln!(out, "Notes");
    let _ = writeln!(out, "  * Checker violations in these runs (the checkers hold every implementation to RainStorm's invariants):");
    for imp in Impl::all() {
        let _ = writeln!(out, "      {:<21} {}", imp.label(), violations.describe(imp));
    }
    let _ = writeln!(
        out,
        "    Accuracy: a live member declared failed where the checkers promise none (loss <= 5%, suspicion on). Convergence: views still"
    );
    let _ = writeln!(
        out,
        "    differed at the end of a run, typically a member declared failed shortly before the end and still rejoining."
    );
    #[cfg(feature = "compare-foca")]
    foca_notes(&mut out);
    #[cfg(not(feature = "compare-foca"))]
    let _ = writeln!(out, "  * foca comparison: not built (enable the `compare-foca` feature).");
    let _ = writeln!(
        out,
        "  * Wall time {:.1} s: parts 1-3 {:.1} s on {} threads (run time per part, summed over runs: detection {:.1} s, false failures {:.1} s,",
        started.elapsed().as_secs_f64(),
        pool_wall.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu[0].as_secs_f64(),
        cpu[1].as_secs_f64(),
    );
    let _ = writeln!(
        out,
        "    traffic {:.1} s, slow member {:.1} s), part 4 {:.1} s on one thread.",
        cpu[2].as_secs_f64(),
        cpu[3].as_secs_f64(),
        speed.wall.as_secs_f64()
    );
    print!("{out}");
    if violations.panics() > 0 {
        bail!("{} simulated runs ended in a node panic; their figures are incomplete", violations.panics());
    }
    Ok(())
}

// ----- 1. detection ------------------------------------------------------------------------

struct DetectionRow {
    imp: Impl,
    crashes: usize,
    samples: Vec<DetectionSample>,
}

fn detection_scenario(imp: Impl, seed: u64, crashes: usize) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x00DE_7EC7);
    let mut faults = Vec::new();
    for i in 0..crashes {
        // A random phase within the period, so crashes do not line up with the probe cycle.
        let at_ms = WARMUP_MS + i as u64 * CRASH_SPACING_MS + rng.gen_range(0..1_000);
        let node = 1 + i % (DETECTION_NODES - 1);
        faults.push(FaultAt { at_ms, fault: Fault::Crash { node } });
        faults.push(FaultAt { at_ms: at_ms + RESTART_AFTER_MS, fault: Fault::Restart { node } });
    }
    faults.sort_by_key(|f| f.at_ms);
    let end = faults.last().map_or(WARMUP_MS, |f| f.at_ms) + 10_000;
    let mut s = scenario(format!("bench-detection-{seed}"), seed, DETECTION_NODES, imp, calm_net(10), end);
    s.calm_from_ms = end;
    s.faults = faults;
    s
}

fn detection_jobs(runs: usize) -> Vec<Job> {
    let mut imps = Impl::all();
    imps.push(Impl::RainStormWithoutLifeguard);
    imps.into_iter()
        .flat_map(|imp| (0..runs as u64).map(move |i| Job::Detection { imp, seed: 1_000 + i }))
        .collect()
}

fn detection_rows(reports: Vec<(Impl, Report)>) -> Vec<DetectionRow> {
    let mut imps = Impl::all();
    imps.push(Impl::RainStormWithoutLifeguard);
    imps.into_iter()
        .map(|imp| {
            let mut row = DetectionRow { imp, crashes: 0, samples: Vec::new() };
            for (_, report) in reports.iter().filter(|(i, _)| *i == imp) {
                row.crashes += CRASHES_PER_RUN;
                row.samples.extend(report.detections.iter().copied());
            }
            row
        })
        .collect()
}

fn print_detection(out: &mut String, rows: &[DetectionRow]) {
    let _ = writeln!(out, "1. Detecting a crashed member");
    let _ = writeln!(
        out,
        "   n = 10, loss 1%, latency 1-10 ms, period 1 s, MembershipConfig::lan(); a crash every {} s (random phase), the slot restarts {} s later",
        CRASH_SPACING_MS / 1000,
        RESTART_AFTER_MS / 1000
    );
    let _ = writeln!(
        out,
        "   {:<26} {:>7} | {:^38} | {:^22} | {:^18}",
        "", "", "first detection (periods)", "every list dropped it (s)", "within bound"
    );
    let _ = writeln!(
        out,
        "   {:<26} {:>7} | {:>6} {:>6} {:>12} {:>10} | {:>6} {:>6} {:>8} | {:>8} {:>9}",
        "implementation",
        "crashes",
        "mean",
        "p99",
        "SWIM e/(e-1)",
        "measured/",
        "mean",
        "p99",
        "max",
        "first",
        "all lists"
    );
    let _ = writeln!(
        out,
        "   {:<26} {:>7} | {:>6} {:>6} {:>12} {:>10} | {:>6} {:>6} {:>8} | {:>8} {:>9}",
        "", "", "", "", "", "analytic", "", "", "", "<= 5 s", "<= 10 s"
    );
    for row in rows {
        let period = MembershipConfig::lan().protocol_period.0 as f64;
        let first: Vec<f64> =
            row.samples.iter().filter_map(|s| s.first_seen_ms).map(|ms| ms as f64 / period).collect();
        let all: Vec<f64> =
            row.samples.iter().filter_map(|s| s.all_removed_ms).map(|ms| ms as f64 / 1000.0).collect();
        let n = row.samples.len().max(1) as f64;
        let first_ok =
            row.samples.iter().filter(|s| s.first_seen_ms.is_some_and(|t| t <= FIRST_DETECTION_BOUND_MS));
        let all_ok = row.samples.iter().filter(|s| s.all_removed_ms.is_some_and(|t| t <= ALL_LISTS_BOUND_MS));
        let first_frac = first_ok.count() as f64 / n;
        let all_frac = all_ok.count() as f64 / n;
        let mean_first = mean(&first);
        let _ = writeln!(
            out,
            "   {:<26} {:>7} | {:>6} {:>6} {:>12.2} {:>10} | {:>6} {:>6} {:>8} | {:>7.1}% {:>8.1}%",
            row.imp.label(),
            row.samples.len(),
            fmt_opt(mean_first, 2),
            fmt_opt(percentile(&first, 0.99), 2),
            SWIM_ANALYTIC_PERIODS,
            fmt_opt(mean_first.map(|m| m / SWIM_ANALYTIC_PERIODS), 2),
            fmt_opt(mean(&all), 2),
            fmt_opt(percentile(&all, 0.99), 2),
            fmt_opt(all.iter().copied().reduce(f64::max), 2),
            100.0 * first_frac,
            100.0 * all_frac,
        );
        let unseen = row.samples.iter().filter(|s| s.first_seen_ms.is_none()).count();
        let unremoved = row.samples.iter().filter(|s| s.all_removed_ms.is_none()).count();
        if row.samples.len() != row.crashes || unseen > 0 || unremoved > 0 {
            let _ = writeln!(
                out,
                "   {:<26} ({} crashes planned, {} measured; {} never detected, {} still listed somewhere when the slot restarted)",
                "",
                row.crashes,
                row.samples.len(),
                unseen,
                unremoved
            );
        }
    }
    let _ = writeln!(
        out,
        "   What is measured: crash -> first SUS or DEL of the crashed id in any list. That is the end of the first probe of the dead member that fails"
    );
    let _ = writeln!(
        out,
        "   (direct ping timeout, then the indirect round until the period ends), so it includes that probe's own period and the crash's phase within"
    );
    let _ = writeln!(
        out,
        "   its period. SWIM's e/(e-1) counts protocol periods until some member picks the dead one as its probe target (random targets); RainStorm"
    );
    let _ = writeln!(
        out,
        "   and foca probe in shuffled round-robin order. Bounds: first detection <= 5 s, every list <= 10 s (MembershipConfig docs, n = 10)."
    );
    let _ = writeln!(out);
}

// ----- 5. a slow member ----------------------------------------------------------------------

/// Slow-member runs: n = 10, loss 1% and 5%; slot 4 is slow (`Fault::Slow`) from the end of
/// the warm-up to the end of the run.
const SLOW_RUN_MS: u64 = 600_000;
const SLOW_LOSSES_PERMILLE: [u32; 2] = [10, 50];
const SLOW_WARMUP_MS: u64 = 20_000;
const SLOW_NODE: usize = 4;

fn slow_member_scenario(imp: Impl, loss_permille: u32, seed: u64, duration_ms: u64) -> Scenario {
    let name = format!("bench-slow-member-{loss_permille}-{seed}");
    let mut s = scenario(name, seed, 10, imp, calm_net(loss_permille), duration_ms);
    let for_ms = duration_ms.saturating_sub(SLOW_WARMUP_MS);
    s.faults = vec![FaultAt { at_ms: SLOW_WARMUP_MS, fault: Fault::Slow { node: SLOW_NODE, for_ms } }];
    s
}

fn slow_member_jobs(hours: f64) -> Vec<Job> {
    let runs = (hours * HOUR_MS / SLOW_RUN_MS as f64).ceil().max(3.0) as u64;
    Impl::slow_member_set()
        .into_iter()
        .flat_map(|imp| {
            SLOW_LOSSES_PERMILLE.into_iter().flat_map(move |loss_permille| {
                (0..runs).map(move |r| Job::SlowMember {
                    imp,
                    loss_permille,
                    seed: 3_000_000 + r,
                    duration_ms: SLOW_RUN_MS,
                })
            })
        })
        .collect()
}

/// A slow-member run's false failures (live ids declared failed by a member's own probe or
/// timer): (healthy members, the slow member).
fn slow_run_false_failures(report: &Report) -> (usize, usize) {
    let slow = report.false_failure_slots.iter().filter(|slot| **slot == SLOW_NODE).count();
    (report.false_failure_slots.len() - slow, slow)
}

fn print_slow_member(out: &mut String, runs: &[(Impl, u32, Report)], detection: &[DetectionRow]) {
    let _ = writeln!(out, "5. A slow member: Lifeguard off and on");
    let _ = writeln!(
        out,
        "   n = 10, loss 1% and 5%, latency 1-10 ms; slot {SLOW_NODE} is slow after {} s (in episodes of 1-5 s every frame it receives is",
        SLOW_WARMUP_MS / 1000
    );
    let _ = writeln!(
        out,
        "   handed to it 0.2-2 s late, its timers on time); runs of {} simulated minutes, each with its own seed. False failures: distinct",
        SLOW_RUN_MS / 60_000
    );
    let _ = writeln!(
        out,
        "   live ids declared failed by some member's own probe or timer (the slow member or any other): healthy members / the slow member."
    );
    let _ = writeln!(out, "   First detection: part 1's crashes.");
    let _ = writeln!(
        out,
        "   {:<27} {:>4} {:>5} {:>7} | {:>13} {:>13} | {:>16} {:>16}",
        "", "loss", "runs", "hours", "false failures", "per hour:", "first SUS/DEL", "first DEL"
    );
    let _ = writeln!(
        out,
        "   {:<27} {:>4} {:>5} {:>7} | {:>13} {:>13} | {:>16} {:>16}",
        "implementation", "", "", "", "healthy / slow", "all / median", "median (s)", "median (s)"
    );
    let rows = SLOW_LOSSES_PERMILLE
        .into_iter()
        .flat_map(|loss| Impl::slow_member_set().into_iter().map(move |imp| (loss, imp)));
    for (loss, imp) in rows {
        let mine: Vec<&Report> =
            runs.iter().filter(|(i, l, _)| *i == imp && *l == loss).map(|(_, _, r)| r).collect();
        let hours: f64 = mine.iter().map(|r| r.scenario.duration_ms as f64 / HOUR_MS).sum();
        let total: usize = mine.iter().map(|r| r.false_failures).sum();
        let split =
            mine.iter().map(|r| slow_run_false_failures(r)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let per_run: Vec<f64> = mine
            .iter()
            .map(|r| r.false_failures as f64 / (r.scenario.duration_ms as f64 / HOUR_MS))
            .collect();
        let row = detection.iter().find(|r| r.imp == imp);
        let seen: Vec<f64> = row.map_or_else(Vec::new, |r| {
            r.samples.iter().filter_map(|s| s.first_seen_ms).map(|ms| ms as f64 / 1000.0).collect()
        });
        let failed: Vec<f64> = row.map_or_else(Vec::new, |r| {
            r.samples.iter().filter_map(|s| s.first_failed_ms).map(|ms| ms as f64 / 1000.0).collect()
        });
        let _ = writeln!(
            out,
            "   {:<27} {:>4} {:>5} {:>7.1} | {:>13} {:>13} | {:>16} {:>16}",
            imp.label(),
            format!("{}%", loss / 10),
            mine.len(),
            hours,
            format!("{} / {}", split.0, split.1),
            format!(
                "{:.2} / {}",
                total as f64 / hours.max(f64::MIN_POSITIVE),
                fmt_opt(percentile(&per_run, 0.5), 2)
            ),
            fmt_opt(percentile(&seen, 0.5), 2),
            fmt_opt(percentile(&failed, 0.5), 2),
        );
    }
    let _ = writeln!(
        out,
        "   Target: Lifeguard on has at least 10x fewer false failures than off, and its first detection is at most 20% slower."
    );
    let _ = writeln!(out);
}

// ----- 2. false failures -------------------------------------------------------------------

struct AccuracyCell {
    imp: Impl,
    loss_permille: u32,
    simulated_ms: u64,
    false_failures: usize,
}

impl AccuracyCell {
    fn hours(&self) -> f64 {
        self.simulated_ms as f64 / HOUR_MS
    }

    fn per_hour(&self) -> f64 {
        self.false_failures as f64 / self.hours()
    }
}

/// Cluster-hours of one cell: `hours` at loss up to 5%, a fifth of that above (churn there makes
/// the runs costlier, and the rates are large enough to need fewer hours).
fn cell_hours(hours: f64, loss_permille: u32) -> f64 {
    if loss_permille <= 50 {
        hours
    } else {
        hours / 5.0
    }
}

fn accuracy_jobs(hours: f64) -> Vec<Job> {
    let mut jobs = Vec::new();
    for imp in Impl::all() {
        for loss_permille in LOSS_LEVELS_PERMILLE {
            let h = cell_hours(hours, loss_permille);
            let runs = (h * HOUR_MS / ACCURACY_RUN_MS as f64).ceil().max(1.0) as u64;
            let duration_ms = ((h * HOUR_MS) / runs as f64).round().max(1.0) as u64;
            for r in 0..runs {
                let seed = 2_000_000 + 10_000 * u64::from(loss_permille) + r;
                jobs.push(Job::Accuracy { imp, loss_permille, seed, duration_ms });
            }
        }
    }
    // The costliest (high loss, most churn) first.
    jobs.sort_by_key(|j| match j {
        Job::Accuracy { loss_permille, .. } => std::cmp::Reverse(*loss_permille),
        _ => std::cmp::Reverse(0),
    });
    jobs
}

fn accuracy_cells(reports: Vec<(Impl, u32, Report)>) -> Vec<AccuracyCell> {
    let mut cells: Vec<AccuracyCell> = Vec::new();
    for (imp, loss, report) in reports {
        let ms = report.scenario.duration_ms;
        match cells.iter_mut().find(|c| c.imp == imp && c.loss_permille == loss) {
            Some(c) => {
                c.simulated_ms += ms;
                c.false_failures += report.false_failures;
            }
            None => cells.push(AccuracyCell {
                imp,
                loss_permille: loss,
                simulated_ms: ms,
                false_failures: report.false_failures,
            }),
        }
    }
    cells
}

fn print_false_failures(out: &mut String, cells: &[AccuracyCell]) {
    let _ = writeln!(out, "2. Live members declared failed, per cluster-hour (count in brackets)");
    let _ = writeln!(
        out,
        "   n = 10, no faults but loss, latency 1-10 ms; distinct live member ids declared failed by some member's own probe or suspicion timer;"
    );
    let _ =
        writeln!(out, "   runs of {} simulated minutes, each with its own seed", ACCURACY_RUN_MS / 60_000);
    let mut header = format!("   {:<24}", "loss");
    for loss in LOSS_LEVELS_PERMILLE {
        let _ = write!(header, " {:>13}", format!("{}%", loss / 10));
    }
    let _ = writeln!(out, "{header}");
    for imp in Impl::all() {
        let mut line = format!("   {:<24}", imp.label());
        for loss in LOSS_LEVELS_PERMILLE {
            let cell = cells.iter().find(|c| c.imp == imp && c.loss_permille == loss);
            let text = match cell {
                Some(c) => format!("{:.2} ({})", c.per_hour(), c.false_failures),
                None => "-".into(),
            };
            let _ = write!(line, " {text:>13}");
        }
        let _ = writeln!(out, "{line}");
    }
    let mut target = format!("   {:<24}", "target, PingAck+S");
    let mut verdict = format!("   {:<24}", "RainStorm PingAck+S");
    for loss in LOSS_LEVELS_PERMILLE {
        let bound = match loss {
            0..=50 => Some(0.0),
            51..=100 => Some(1.0),
            _ => None,
        };
        let _ = write!(
            target,
            " {:>13}",
            match bound {
                Some(0.0) => "0".to_string(),
                Some(b) => format!("<= {b}"),
                None => "-".into(),
            }
        );
        let cell =
            cells.iter().find(|c| c.imp == (Impl::RainStorm { suspicion: true }) && c.loss_permille == loss);
        let v = match (bound, cell) {
            (Some(b), Some(c)) if c.per_hour() <= b => "meets",
            (Some(_), Some(_)) => "MISSES",
            _ => "",
        };
        let _ = write!(verdict, " {v:>13}");
    }
    let _ = writeln!(out, "{target}");
    let _ = writeln!(out, "{verdict}");
    let hours: Vec<String> = LOSS_LEVELS_PERMILLE
        .iter()
        .map(|loss| {
            let h = cells.iter().find(|c| c.loss_permille == *loss).map_or(0.0, AccuracyCell::hours);
            format!("{h:.1}")
        })
        .collect();
    let mut line = format!("   {:<24}", "cluster-hours per cell");
    for h in hours {
        let _ = write!(line, " {h:>13}");
    }
    let _ = writeln!(out, "{line}");
    let _ = writeln!(
        out,
        "   PingAck (no suspicion) declares a member failed on one unanswered probe round; no accuracy target applies to it."
    );
    let _ = writeln!(out);
}

// ----- 3. traffic ----------------------------------------------------------------------------

/// How the traffic part finds and measures steady state.
#[derive(Clone, Copy, Debug)]
struct TrafficPlan {
    sizes: &'static [usize],
    /// Earliest start of the window, after the last member started.
    settle_ms: u64,
    /// Steady state: datagram bytes per member per second over two consecutive steps differ by
    /// at most `TOLERANCE` (the join wave has been disseminated).
    step_ms: u64,
    /// Measure anyway (and say so) if not steady this long after the last member started.
    max_wait_ms: u64,
    window_ms: u64,
}

const TOLERANCE: f64 = 0.10;

impl TrafficPlan {
    fn new(quick: bool) -> TrafficPlan {
        if quick {
            TrafficPlan {
                sizes: &[10, 100],
                settle_ms: 20_000,
                step_ms: 10_000,
                max_wait_ms: 120_000,
                window_ms: 10_000,
            }
        } else {
            TrafficPlan {
                sizes: &[10, 100, 1000],
                settle_ms: 60_000,
                step_ms: 20_000,
                max_wait_ms: 600_000,
                window_ms: 60_000,
            }
        }
    }
}

struct TrafficRow {
    imp: Impl,
    nodes: usize,
    window_s: f64,
    stats: RunStats,
    /// When the window started, after the last member started.
    steady_after_ms: u64,
    steady: bool,
    listed: f64,
}

struct Window {
    stats: RunStats,
    steady_after_ms: u64,
    steady: bool,
    report: Report,
}

/// Runs `s` until its datagram traffic is steady (see [`TrafficPlan`]), measures the window, and
/// ends the run there.
fn window<A: Actor>(s: &Scenario, plan: TrafficPlan) -> Result<Window, String> {
    let formed = (s.nodes as u64).saturating_sub(1) * 100;
    let opts = RunOptions { record_events: true, ..RunOptions::default() };
    let rate = |a: RunStats, b: RunStats| (b.datagram_bytes - a.datagram_bytes) as f64;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut world = World::<A>::new(s.clone(), opts);
        let mut t = formed + plan.settle_ms.saturating_sub(2 * plan.step_ms);
        world.run_until(Time(t));
        let mut last = world.stats();
        let mut last_rate: Option<f64> = None;
        let steady = loop {
            t += plan.step_ms;
            world.run_until(Time(t));
            let now = world.stats();
            let r = rate(last, now);
            last = now;
            if let Some(p) = last_rate {
                if t >= formed + plan.settle_ms && (r - p).abs() <= TOLERANCE * p.max(1.0) {
                    break true;
                }
            }
            if t >= formed + plan.max_wait_ms {
                break false;
            }
            last_rate = Some(r);
        };
        let a = world.stats();
        world.run_until(Time(t + plan.window_ms));
        let b = world.stats();
        Window { stats: diff(a, b), steady_after_ms: t - formed, steady, report: world.end() }
    }))
    .map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        format!("{} panicked: {msg}", s.name)
    })
}

fn diff(a: RunStats, b: RunStats) -> RunStats {
    RunStats {
        events: b.events - a.events,
        datagrams_sent: b.datagrams_sent - a.datagrams_sent,
        datagram_bytes: b.datagram_bytes - a.datagram_bytes,
        stream_frames_sent: b.stream_frames_sent - a.stream_frames_sent,
        stream_bytes: b.stream_bytes - a.stream_bytes,
        datagrams_dropped: b.datagrams_dropped - a.datagrams_dropped,
        largest_datagram: b.largest_datagram,
        largest_stream_frame: b.largest_stream_frame,
        stream_frames_lost: b.stream_frames_lost - a.stream_frames_lost,
        stream_frames_duplicated: b.stream_frames_duplicated - a.stream_frames_duplicated,
    }
}

/// Mean share of the other members each node lists at the end, from its recorded events.
fn listed_fraction(report: &Report) -> f64 {
    use rainstorm_core::membership::MembershipEvent as E;
    let n = report.scenario.nodes;
    let mut listed = vec![0i64; n];
    for (_, slot, e) in &report.events {
        match e {
            E::SelfJoined { members, .. } => listed[*slot] = *members as i64,
            E::SelfDeclaredFailed { .. } | E::SelfLeft { .. } => listed[*slot] = 0,
            E::MemberJoined { .. } => listed[*slot] += 1,
            E::MemberFailed { .. } | E::MemberLeft { .. } => listed[*slot] -= 1,
            _ => {}
        }
    }
    let others = n.saturating_sub(1).max(1) as f64;
    listed.iter().map(|&l| l.max(0) as f64 / others).sum::<f64>() / n.max(1) as f64
}

fn traffic_jobs(plan: TrafficPlan) -> Vec<Job> {
    let imps: Vec<Impl> =
        Impl::all().into_iter().filter(|i| *i != Impl::RainStorm { suspicion: false }).collect();
    plan.sizes.iter().flat_map(|&nodes| imps.iter().map(move |&imp| Job::Traffic { imp, nodes })).collect()
}

fn traffic_run(imp: Impl, nodes: usize, plan: TrafficPlan) -> Result<Window, String> {
    let duration = (nodes as u64 - 1) * 100 + plan.max_wait_ms + plan.step_ms + plan.window_ms;
    let s =
        scenario(format!("bench-traffic-{nodes}"), 3_000 + nodes as u64, nodes, imp, calm_net(10), duration);
    imp.run_window(&s, plan)
}

fn print_traffic(out: &mut String, rows: &[TrafficRow], plan: TrafficPlan) {
    let _ = writeln!(out, "3. Steady-state traffic per member");
    let _ = writeln!(
        out,
        "   no faults, loss 1%, latency 1-10 ms, members start 100 ms apart. Window: {} s, starting at least {} s after the last member started, once",
        plan.window_ms / 1000,
        plan.settle_ms / 1000
    );
    let _ = writeln!(
        out,
        "   datagram bytes per member per second changed by at most {:.0}% between two {} s steps (the join wave has been disseminated)",
        TOLERANCE * 100.0,
        plan.step_ms / 1000
    );
    let _ = writeln!(
        out,
        "   {:<21} {:>5} | {:>10} | {:>12} {:>9} {:>10} | {:>14} {:>14} | {:>7}",
        "implementation",
        "n",
        "window at",
        "datagrams/s",
        "bytes/s",
        "vs n=10",
        "stream msgs/s",
        "stream bytes/s",
        "listed"
    );
    for row in rows {
        let per = |r: &TrafficRow, x: u64| x as f64 / (r.nodes as f64 * r.window_s);
        let base =
            rows.iter().find(|r| r.imp == row.imp && r.nodes == 10).map(|r| per(r, r.stats.datagram_bytes));
        let ratio = base.filter(|b| *b > 0.0).map(|b| per(row, row.stats.datagram_bytes) / b);
        let at = format!("+{} s{}", row.steady_after_ms / 1000, if row.steady { "" } else { " (!)" });
        let _ = writeln!(
            out,
            "   {:<21} {:>5} | {:>10} | {:>12.2} {:>9.1} {:>10} | {:>14.3} {:>14.1} | {:>6.1}%",
            row.imp.label(),
            row.nodes,
            at,
            per(row, row.stats.datagrams_sent),
            per(row, row.stats.datagram_bytes),
            fmt_opt(ratio.map(|r| format!("{r:.2}x")), 0),
            per(row, row.stats.stream_frames_sent),
            per(row, row.stats.stream_bytes),
            100.0 * row.listed,
        );
    }
    if rows.iter().any(|r| !r.steady) {
        let _ = writeln!(
            out,
            "   (!) not steady {} s after the last member started; measured anyway.",
            plan.max_wait_ms / 1000
        );
    }
    let _ = writeln!(
        out,
        "   Counted at the sender, including datagrams the network then drops. \"window at\": its start, after the last member started. \"vs n=10\":"
    );
    let _ = writeln!(
        out,
        "   datagram bytes per member per second relative to n = 10 (target: flat). \"listed\": mean share of the other members each node lists"
    );
    let _ = writeln!(
        out,
        "   at the end. Stream traffic: every node runs HyDFS, whose inventory exchanges with its 6 ring neighbours slow down in a calm"
    );
    let _ = writeln!(
        out,
        "   cluster (2 s doubling up to 32 s) and answer an unchanged inventory in one word; membership's own stream exchange (its view) runs only"
    );
    let _ = writeln!(out, "   when two members' view digests differ.");
    for imp in Impl::all() {
        let mine: Vec<&TrafficRow> = rows.iter().filter(|r| r.imp == imp).collect();
        let total = |r: &TrafficRow| {
            (r.stats.datagram_bytes + r.stats.stream_bytes) as f64 / (r.nodes as f64 * r.window_s)
        };
        let (Some(first), Some(last)) = (mine.first(), mine.last()) else { continue };
        if last.nodes == first.nodes || last.stats.stream_bytes == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "   {}, datagrams and streams together: {:.0} B/s per member at n = {}, {:.0} B/s at n = {} ({:.1}x).",
            imp.label(),
            total(first),
            first.nodes,
            total(last),
            last.nodes,
            total(last) / total(first).max(1e-9)
        );
    }
    let _ = writeln!(out);
}

// ----- 4. the simulator --------------------------------------------------------------------

struct Speed {
    ten_node_runs: Vec<Duration>,
    ten_node_events: u64,
    hundred_node_wall: Duration,
    hundred_node_events: u64,
    hundred_node_minutes: u64,
    #[cfg(feature = "compare-foca")]
    foca_ten_node: Duration,
    wall: Duration,
}

/// One core: the runs are sequential on this thread, nothing else running.
fn simulator_speed(quick: bool) -> Speed {
    let started = Instant::now();
    let imp = Impl::RainStorm { suspicion: true };
    let ten_min = 600_000;
    let repeats = if quick { 2 } else { 5 };
    let mut ten_node_runs = Vec::new();
    let mut ten_node_events = 0;
    for i in 0..repeats {
        let s = scenario(format!("bench-speed-10-{i}"), 4_000 + i, 10, imp, calm_net(10), ten_min);
        let t = Instant::now();
        let report = imp.run(&s, &RunOptions::default());
        ten_node_runs.push(t.elapsed());
        ten_node_events += report.stats.events;
    }
    let hundred_node_minutes = if quick { 1 } else { 10 };
    let s = scenario("bench-speed-100".into(), 4_100, 100, imp, calm_net(10), hundred_node_minutes * 60_000);
    let t = Instant::now();
    let report = imp.run(&s, &RunOptions::default());
    let hundred_node_wall = t.elapsed();
    #[cfg(feature = "compare-foca")]
    let foca_ten_node = {
        let s = scenario("bench-speed-foca-10".into(), 4_000, 10, Impl::Foca, calm_net(10), ten_min);
        let t = Instant::now();
        let _ = Impl::Foca.run(&s, &RunOptions::default());
        t.elapsed()
    };
    Speed {
        ten_node_runs,
        ten_node_events,
        hundred_node_wall,
        hundred_node_events: report.stats.events,
        hundred_node_minutes,
        #[cfg(feature = "compare-foca")]
        foca_ten_node,
        wall: started.elapsed(),
    }
}

fn print_speed(out: &mut String, speed: &Speed) {
    let ten_total: Duration = speed.ten_node_runs.iter().sum();
    let mut sorted = speed.ten_node_runs.clone();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    let rate_10 = speed.ten_node_events as f64 / ten_total.as_secs_f64().max(1e-9);
    let rate_100 = speed.hundred_node_events as f64 / speed.hundred_node_wall.as_secs_f64().max(1e-9);
    let _ = writeln!(out, "4. The simulator (RainStorm nodes, one thread, checkers on)");
    let _ = writeln!(
        out,
        "   {:<48} {:>12}   {:<18} {}",
        "simulated events per second, 10 nodes",
        format!("{:.2} M", rate_10 / 1e6),
        "target >= 1 M/core",
        meets(rate_10 >= 1e6)
    );
    let _ = writeln!(
        out,
        "   {:<48} {:>12}   {:<18} {}",
        format!("simulated events per second, 100 nodes ({} min)", speed.hundred_node_minutes),
        format!("{:.2} M", rate_100 / 1e6),
        "target >= 1 M/core",
        meets(rate_100 >= 1e6)
    );
    let _ = writeln!(
        out,
        "   {:<48} {:>12}   {:<18} {}",
        format!("wall time, 10 nodes, 10 min (median of {})", speed.ten_node_runs.len()),
        format!("{:.1} ms", median.as_secs_f64() * 1000.0),
        "target < 50 ms",
        meets(median < Duration::from_millis(50))
    );
    let _ = writeln!(
        out,
        "   {:<48} {:>12}",
        "events in one 10-node, 10-minute run",
        speed.ten_node_events / speed.ten_node_runs.len().max(1) as u64
    );
    #[cfg(feature = "compare-foca")]
    let _ = writeln!(
        out,
        "   {:<48} {:>12}",
        "wall time, foca, 10 nodes, 10 min",
        format!("{:.1} ms", speed.foca_ten_node.as_secs_f64() * 1000.0)
    );
    let _ = writeln!(
        out,
        "   An event costs more as n grows: each node's work per message grows with its view and gossip queue, and the checkers look at"
    );
    let _ = writeln!(out, "   every node's whole view once per simulated second (n^2 per second).");
    let _ = writeln!(out);
}

#[cfg(feature = "compare-foca")]
fn foca_notes(out: &mut String) {
    let c = super::foca_actor::FocaActor::<10>::config();
    let _ = writeln!(
        out,
        "  * foca 2.0.0 runs foca::Config::new_lan(n) unchanged: probe period {} ms, probe rtt {} ms (RainStorm: 300 ms ping timeout), {} indirect",
        c.probe_period.as_millis(),
        c.probe_rtt.as_millis(),
        c.num_indirect_probes
    );
    let _ = writeln!(
        out,
        "    probes, suspect-to-down {} ms at n = 10 (RainStorm: 3000 ms), periodic gossip every {} ms, periodic announce; postcard codec.",
        c.suspect_to_down_after.as_millis(),
        c.periodic_gossip.as_ref().map_or(0, |p| p.frequency.as_millis()),
    );
    let _ = writeln!(
        out,
        "  * foca mapping: first detection = foca's ProbeFailed notification (its own probe failed, member now suspect); foca reports no"
    );
    let _ = writeln!(
        out,
        "    suspicion learned by gossip, so first detection counts only the prober's own. A member leaves a foca list at MemberDown; a DEL by its"
    );
    let _ = writeln!(
        out,
        "    own suspicion timer counts as a false failure, as for RainStorm. foca always runs with suspicion: the PingAck row has no foca"
    );
    let _ = writeln!(
        out,
        "    equivalent. The driver re-announces to the introducer every second until foca reports itself active (RainStorm retries joins too)."
    );
}

// ----- helpers -------------------------------------------------------------------------------

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Nearest-rank percentile.
pub(crate) fn percentile(xs: &[f64], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

fn fmt_opt<T: FmtNum>(x: Option<T>, decimals: usize) -> String {
    x.map_or_else(|| "-".into(), |x| x.fmt_num(decimals))
}

trait FmtNum {
    fn fmt_num(&self, decimals: usize) -> String;
}

impl FmtNum for f64 {
    fn fmt_num(&self, decimals: usize) -> String {
        format!("{self:.decimals$}")
    }
}

impl FmtNum for String {
    fn fmt_num(&self, _decimals: usize) -> String {
        self.clone()
    }
}

fn meets(ok: bool) -> &'static str {
    if ok {
        "meets"
    } else {
        "MISSES"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.99), Some(99.0));
        assert_eq!(percentile(&xs, 1.0), Some(100.0));
        assert_eq!(percentile(&[3.0], 0.99), Some(3.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn detection_scenarios_crash_each_member_in_turn_and_restart_it() {
        let s = detection_scenario(Impl::RainStorm { suspicion: true }, 1, 12);
        let crashes: Vec<_> = s.faults.iter().filter(|f| matches!(f.fault, Fault::Crash { .. })).collect();
        assert_eq!(crashes.len(), 12);
        assert!(s.faults.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(s.faults.iter().all(|f| !matches!(f.fault, Fault::Crash { node: 0 })));
    }

    #[test]
    fn accuracy_cells_get_the_requested_hours_with_distinct_seeds() {
        let jobs = accuracy_jobs(2.0);
        let mut seeds = std::collections::BTreeSet::new();
        for imp in Impl::all() {
            for loss in LOSS_LEVELS_PERMILLE {
                let runs: Vec<u64> = jobs
                    .iter()
                    .filter_map(|j| match *j {
                        Job::Accuracy { imp: i, loss_permille, seed, duration_ms }
                            if i == imp && loss_permille == loss =>
                        {
                            seeds.insert((imp, seed));
                            Some(duration_ms)
                        }
                        _ => None,
                    })
                    .collect();
                let total = runs.iter().sum::<u64>() as f64;
                assert!(
                    (total - cell_hours(2.0, loss) * HOUR_MS).abs() <= runs.len() as f64,
                    "{imp:?} {loss}"
                );
                assert!(runs.iter().all(|&ms| ms <= ACCURACY_RUN_MS));
            }
        }
        assert_eq!(seeds.len(), jobs.len());
    }

    #[test]
    fn traffic_is_measured_once_a_small_cluster_is_steady() {
        let plan = TrafficPlan {
            sizes: &[10],
            settle_ms: 20_000,
            step_ms: 10_000,
            max_wait_ms: 60_000,
            window_ms: 10_000,
        };
        for imp in Impl::all() {
            let w = traffic_run(imp, 10, plan).unwrap();
            assert!(w.steady, "{imp:?}");
            assert!(w.stats.datagrams_sent > 0 && w.stats.datagram_bytes > 0, "{imp:?}");
            assert!(listed_fraction(&w.report) > 0.99, "{imp:?}");
            assert_eq!(w.report.scenario.duration_ms, 900 + w.steady_after_ms + plan.window_ms);
        }
    }

    #[test]
    fn a_small_detection_run_measures_every_crash() {
        let s = detection_scenario(Impl::RainStorm { suspicion: true }, 7, 3);
        let report = Impl::RainStorm { suspicion: true }.run(&s, &RunOptions::default());
        assert_eq!(report.detections.len(), 3);
        assert!(report.detections.iter().all(|d| d.first_seen_ms.is_some() && d.all_removed_ms.is_some()));
    }
}
