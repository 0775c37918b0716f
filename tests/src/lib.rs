//! Shared helpers for the end-to-end suites in `tests/`.
//!
//! Every failing simulated run panics with its seed, its violations and the one command that
//! replays it with a readable trace.

use rainstorm_sim::{replay_command, run_membership, Report, RunOptions, Scenario};

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
pub fn sweep_part_with(part: u64, total: u64, make: fn(u64) -> Scenario, mut inspect: impl FnMut(&Report)) {
    let per = total.div_ceil(4);
    let mut failures = Vec::new();
    for seed in part * per..((part + 1) * per).min(total) {
        let report = run_membership(&make(seed), &RunOptions::default());
        inspect(&report);
        if !report.passed() {
            failures.push(report);
        }
    }
    if let Some(first) = failures.first() {
        eprintln!("{} of the seeds in part {part} failed", failures.len());
        assert_passed(first);
    }
}

/// Runs `scenario` and panics with a replayable report if any checker fired.
pub fn run_and_check(scenario: &Scenario, opts: &RunOptions) -> Report {
    let report = run_membership(scenario, opts);
    assert_passed(&report);
    report
}

/// Panics with the seed, the violations and the replay command unless `report` passed.
pub fn assert_passed(report: &Report) {
    if report.passed() {
        return;
    }
    let s = &report.scenario;
    let mut msg = format!("scenario {} (seed {}) failed:\n", s.name, s.seed);
    for v in &report.violations {
        msg.push_str(&format!("  {v}\n"));
    }
    if s.name.starts_with("swarm-") {
        msg.push_str(&format!("replay: {}\n", replay_command("membership", s.seed, None)));
    } else if s.name.starts_with("hydfs-") {
        msg.push_str(&format!("replay: {}\n", replay_command("hydfs", s.seed, None)));
    } else if s.name.starts_with("rainstorm-") {
        msg.push_str(&format!("replay: {}\n", replay_command("rainstorm", s.seed, None)));
    } else {
        msg.push_str(&format!(
            "replay: cargo run --release -- sim {} --named {} --named-seed {} --trace\n",
            if s.hydfs.is_some() { "hydfs" } else { "membership" },
            s.name,
            s.seed
        ));
    }
    panic!("{msg}");
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
