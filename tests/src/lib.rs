//! Shared helpers for the end-to-end suites in `tests/`.
//!
//! Every failing simulated run panics with its seed, its violations, the one command that
//! replays it with a readable trace (from its seed, its story's name, or its capsule file) and
//! the one that shrinks it.

use rainstorm_sim::capsule::{self, Origin};
use rainstorm_sim::{check_replays_alike, determinism_seeds, run_membership, Report, RunOptions, Scenario};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How many swarm seeds the membership sweep runs: `RAINSTORM_SIM_SEEDS` (default 2000).
pub fn sweep_seeds() -> u64 {
    std::env::var("RAINSTORM_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}

/// Runs one quarter (`part` 0..4) of a sweep over seeds `0..total` of the scenarios `make`
/// draws, and panics with the first failure's replay command. A sweep is split in four tests so
/// the test harness spreads it over the machine's cores.
pub fn sweep_part(part: u64, total: u64, make: fn(u64) -> Scenario) {
    sweep_part_with(part, total, make, |_| {});
}

/// [`sweep_part`], showing `inspect` every report (passed or not) first.
///
/// The seeds of [`determinism_seeds`] over the whole sweep (a seeded random 5%, spread over the
/// range) run a second time, with their readable trace on, and must give the same trace hash; a
/// difference fails the part with both hashes and the replay command.
pub fn sweep_part_with(part: u64, total: u64, make: fn(u64) -> Scenario, mut inspect: impl FnMut(&Report)) {
    let per = total.div_ceil(4);
    let twice: BTreeSet<u64> = determinism_seeds(0, total).into_iter().collect();
    let mut failures = Vec::new();
    let mut differences = Vec::new();
    let (mut rerun, mut rerun_time) = (0, Duration::ZERO);
    let started = Instant::now();
    for seed in part * per..((part + 1) * per).min(total) {
        let report = run_membership(&make(seed), &RunOptions::default());
        inspect(&report);
        if twice.contains(&seed) {
            rerun += 1;
            let again = Instant::now();
            if let Err(difference) =
                check_replays_alike(&report, &capsule::replay_command(&report.scenario, None))
            {
                differences.push(difference);
            }
            rerun_time += again.elapsed();
        }
        if !report.passed() {
            failures.push(report);
        }
    }
    println!(
        "part {part}: {rerun} seeds run twice in {:.1} s of the part's {:.1} s; {} traces differed",
        rerun_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        differences.len()
    );
    if let Some(first) = failures.first() {
        eprintln!("{} of the seeds in part {part} failed", failures.len());
        assert_passed(first);
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// Runs `scenario` and panics with a replayable report if any checker fired.
pub fn run_and_check(scenario: &Scenario, opts: &RunOptions) -> Report {
    let report = run_membership(scenario, opts);
    assert_passed(&report);
    report
}

/// Panics with the seed, the violations and the replay command unless `report` passed.
pub fn assert_passed(report: &Report) {
    assert_passed_from(report, None);
}

/// [`assert_passed`] for a scenario loaded from the capsule at `file` (relative to the
/// workspace root), which the replay command then names.
pub fn assert_passed_from(report: &Report, file: Option<&Path>) {
    if report.passed() {
        return;
    }
    let s = &report.scenario;
    let mut msg = format!("scenario {} (seed {}) failed:\n", s.name, s.seed);
    for v in &report.violations {
        msg.push_str(&format!("  {v}\n"));
    }
    if capsule::origin(s, file) == Origin::Unsaved {
        let json = serde_json::to_string_pretty(s).unwrap_or_default();
        msg.push_str(&format!("save this scenario as {}:\n{json}\n", capsule::suggested_path(s).display()));
    }
    msg.push_str(&format!("replay: {}\n", capsule::replay_command(s, file)));
    msg.push_str(&format!("shrink: {}\n", capsule::shrink_command(s, file)));
    panic!("{msg}");
}

/// A generated scenario as a proptest case: it passes, or fails with its violations and the
/// scenario as JSON, to save under `tests/scenarios/` so that every later `cargo test` replays
/// it (proptest shrinks it first).
pub fn generated_case(scenario: &Scenario) -> Result<(), proptest::test_runner::TestCaseError> {
    let report = run_membership(scenario, &RunOptions::default());
    proptest::prop_assert!(
        report.passed(),
        "violations {:?}\nscenario to save under tests/scenarios/:\n{}",
        report.violations,
        serde_json::to_string_pretty(scenario).unwrap_or_default()
    );
    Ok(())
}

/// The folder of saved scenarios: `tests/scenarios/`.
pub fn capsule_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// Replays every capsule under `tests/scenarios/`, of every layer, and panics at the first
/// that fails with the command that replays it from its file. Returns how many it replayed.
pub fn replay_capsules() -> usize {
    let capsules = capsule::load_dir(&capsule_dir()).unwrap_or_else(|e| panic!("{e}"));
    for (path, scenario) in &capsules {
        let name = path.file_name().unwrap_or_default();
        let file = Path::new("tests/scenarios").join(name);
        assert_passed_from(&run_membership(scenario, &RunOptions::default()), Some(&file));
    }
    capsules.len()
}

/// Lifeguard's local health, seen from outside: an introducer with six members that never
/// answer its probes (nor do helpers nack) probes on; returns the gaps between its probes. A
/// healthy Lifeguard stretches them to (local_health_max + 1) periods.
pub fn probe_gaps_when_nothing_answers(
    cfg: rainstorm_core::membership::MembershipConfig,
    probes: usize,
) -> Vec<rainstorm_core::Millis> {
    use rainstorm_core::membership::{JoinKind, Membership, MembershipMsg, Role};
    use rainstorm_core::{MemberId, NodeAddr, Time};
    let addr = |port: u16| NodeAddr::from(([10, 0, 0, 1], port));
    let mut m = Membership::new(cfg, Role::Introducer, addr(1), addr(1), Time(0), 7, 40);
    let drain = |m: &mut Membership| {
        while m.poll_outgoing().is_some() {}
        while m.poll_event().is_some() {}
    };
    for port in 2..8 {
        let joiner = MemberId::new(addr(port), u64::from(port));
        m.handle_message(Time(10), joiner, MembershipMsg::JoinRequest { nonce: 1, kind: JoinKind::Fresh });
    }
    drain(&mut m);
    let mut sent_at = Vec::new();
    while sent_at.len() < probes {
        let Some(at) = m.poll_timeout().filter(|at| *at < Time(600_000)) else { break };
        let before = m.stats().pings_sent;
        m.handle_timeout(at);
        drain(&mut m);
        if m.stats().pings_sent > before {
            sent_at.push(at);
        }
    }
    sent_at.windows(2).map(|w| w[1].since(w[0])).collect()
}
