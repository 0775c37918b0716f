//! Shrinking: a failing scenario of any layer, cut step by step down to a smaller one that
//! still fails the same way.
//!
//! [`ScenarioTree`] is a proptest value tree over one scenario. Each simplification tries one
//! [`Cut`] (fewer fault groups, fewer nodes, faults stopping earlier, a calmer network, clocks
//! at the true rate, fewer clients, files, operations, input lines or tasks, shorter pauses) on
//! the smallest scenario known to fail; proptest keeps the cut if the run still fails and moves on to the next one
//! if not. [`swarm_scenarios`] is the proptest strategy of a layer's swarm scenarios shrinking
//! that way, and [`shrink`] cuts down one given scenario (a failing sweep seed, a capsule)
//! within a bound on its runs, keeping only candidates that a checker which caught the
//! original still catches.
//!
//! Invariants: every candidate fits its cluster ([`crate::capsule::check`] passes), keeps at
//! least the layer's fewest nodes and its job's leader and reader, and, if the original came
//! out of [`Scenario::end_faults`], comes out of it too (faults stop, everything restarts and
//! rejoins, the run lasts long enough to check). A fault is dropped with the faults that undo
//! it (a crash with its restart, a leave with its join, a lone partition with its heal, a task
//! host's crash with a restart of a crashed node), never the undoing alone.

use crate::capsule::{self, Layer};
use crate::rainstorm::harness::InputSpec;
use crate::scenario::{Fault, FaultAt, Scenario, Slot};
use crate::{run_membership, CheckerKind, Report, RunOptions, Violation};
use proptest::prelude::*;
use proptest::strategy::{NewTree, ValueTree};
use proptest::test_runner::{Config, TestError, TestRunner};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// One way to make a scenario smaller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Drop fault groups `from..from + len` (in plan order), each fault with its undoing.
    FaultGroups {
        from: usize,
        len: usize,
    },
    /// Keep only slots `0..n` (faults and clients on the others go).
    Nodes(usize),
    /// Faults stop at this time: groups starting later go, later undoings move to it.
    CalmAt(u64),
    /// Halve the pause (or the slow spell) of the fault at this index.
    ShorterPause(usize),
    NoLoss,
    NoDuplicates,
    /// Frames in flight on a broken connection all arrive once.
    NoBrokenStreams,
    NoClockOffsets,
    /// Every clock runs at the true rate (clock steps are fault groups of their own).
    NoClockDrift,
    NoClusterKey,
    /// Halve the largest latency.
    LowerLatency,
    NoBandwidthLimit,
    /// Drop the HyDFS client at this index.
    DropClient(usize),
    /// The HyDFS workload uses this many files.
    Files(usize),
    /// HyDFS operations stop at this time.
    OpsUntil(u64),
    NoLargeWrites,
    /// Small HyDFS writes up to this many bytes.
    SmallWrites(u32),
    NoReadCache,
    ForegroundSync,
    /// The job's input has this many lines.
    InputLines(usize),
    /// This many tasks per stage.
    Tasks(u32),
    /// The job's input is read flat out.
    Unpaced,
}

/// How big a scenario is, in the parts a shrink cuts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub nodes: usize,
    /// Faults before the calm (the ones after it only end the fault phase).
    pub faults: usize,
    pub duration_ms: u64,
    pub clients: usize,
    pub files: usize,
    /// How long HyDFS clients issue operations.
    pub ops_ms: u64,
    pub input_lines: usize,
    pub tasks: u32,
}

impl Size {
    pub fn of(s: &Scenario) -> Size {
        let (clients, files, ops_ms) = s
            .hydfs
            .as_ref()
            .map_or((0, 0, 0), |w| (w.clients.len(), w.files, w.stop_ms.saturating_sub(w.start_ms)));
        let (input_lines, tasks) = s.rainstorm.as_ref().map_or((0, 0), |j| (input_lines(&j.input), j.tasks));
        Size {
            nodes: s.nodes,
            faults: s.faults.iter().filter(|f| f.at_ms < s.calm_from_ms).count(),
            duration_ms: s.duration_ms,
            clients,
            files,
            ops_ms,
            input_lines,
            tasks,
        }
    }

    /// Whether no part is larger than in `other` and some part is smaller.
    pub fn smaller_than(&self, other: &Size) -> bool {
        let parts = |s: &Size| {
            [
                s.nodes as u64,
                s.faults as u64,
                s.duration_ms,
                s.clients as u64,
                s.files as u64,
                s.ops_ms,
                s.input_lines as u64,
                u64::from(s.tasks),
            ]
        };
        let (mine, theirs) = (parts(self), parts(other));
        mine.iter().zip(&theirs).all(|(a, b)| a <= b) && mine != theirs
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} nodes, {} faults, {:.1} s", self.nodes, self.faults, self.duration_ms as f64 / 1000.0)?;
        if self.clients > 0 {
            write!(
                f,
                "; {} clients on {} files for {:.1} s",
                self.clients,
                self.files,
                self.ops_ms as f64 / 1000.0
            )?;
        }
        if self.tasks > 0 {
            write!(f, "; {} input lines, {} tasks per stage", self.input_lines, self.tasks)?;
        }
        Ok(())
    }
}

fn input_lines(input: &InputSpec) -> usize {
    match input {
        InputSpec::Generated { lines } => *lines,
        InputSpec::TrafficSigns { max_lines } => *max_lines,
    }
}

/// The plan's faults in groups of indices: a fault first, then the faults that undo it. Every
/// fault is in exactly one group; groups are in the order of their first fault.
pub fn fault_groups(faults: &[FaultAt]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut crashed: BTreeMap<Slot, usize> = BTreeMap::new();
    let mut left: BTreeMap<Slot, usize> = BTreeMap::new();
    let mut cut_off: Vec<usize> = Vec::new();
    let mut task_crashes: VecDeque<usize> = VecDeque::new();
    let mut cluster_crash: Option<usize> = None;
    let mut filled: BTreeMap<Slot, usize> = BTreeMap::new();
    for (i, f) in faults.iter().enumerate() {
        let undoes = match &f.fault {
            Fault::Restart { node } => crashed.remove(node),
            Fault::RestartAll => cluster_crash.take(),
            Fault::DiskFreed { node } => filled.remove(node),
            Fault::Join { node } => left.remove(node),
            // A heal undoes the partitions since the last one; it goes with one alone.
            Fault::Heal => match std::mem::take(&mut cut_off)[..] {
                [only] => Some(only),
                _ => None,
            },
            Fault::RestartCrashed { .. } => task_crashes.pop_front(),
            Fault::Crash { .. }
            | Fault::Pause { .. }
            | Fault::Slow { .. }
            | Fault::Partition { .. }
            | Fault::OneWay { .. }
            | Fault::SetLoss { .. }
            | Fault::Leave { .. }
            | Fault::SetSuspicion { .. }
            | Fault::Corrupt { .. }
            | Fault::LoseBlock { .. }
            | Fault::DiskFull { .. }
            | Fault::CrashAll
            | Fault::CrashTaskHost { .. }
            | Fault::ClockJump { .. } => None,
        };
        if let Some(g) = undoes {
            groups[g].push(i);
            continue;
        }
        let g = groups.len();
        groups.push(vec![i]);
        match &f.fault {
            Fault::Crash { node } => {
                crashed.insert(*node, g);
            }
            Fault::Leave { node } => {
                left.insert(*node, g);
            }
            Fault::Partition { .. } | Fault::OneWay { .. } => cut_off.push(g),
            Fault::CrashTaskHost { .. } => task_crashes.push_back(g),
            Fault::CrashAll => cluster_crash = Some(g),
            Fault::DiskFull { node } => {
                filled.insert(*node, g);
            }
            Fault::Restart { .. }
            | Fault::RestartAll
            | Fault::DiskFreed { .. }
            | Fault::LoseBlock { .. }
            | Fault::Pause { .. }
            | Fault::Slow { .. }
            | Fault::Heal
            | Fault::SetLoss { .. }
            | Fault::Join { .. }
            | Fault::SetSuspicion { .. }
            | Fault::Corrupt { .. }
            | Fault::RestartCrashed { .. }
            | Fault::ClockJump { .. } => {}
        }
    }
    groups
}

/// Whether the scenario ends its faults as `Scenario::end_faults` does (every swarm scenario).
fn ends_its_faults(s: &Scenario) -> bool {
    let at_calm = |fault: &Fault| s.faults.iter().any(|f| f.at_ms == s.calm_from_ms && f.fault == *fault);
    at_calm(&Fault::Heal) && at_calm(&Fault::SetLoss { permille: 0 })
}

/// The fewest nodes a candidate of `s` keeps: the layer's fewest, the job's leader and reader,
/// and one HyDFS client.
fn fewest_nodes(s: &Scenario) -> usize {
    let mut least = Layer::of(s).min_nodes();
    if let Some(j) = &s.rainstorm {
        least = least.max(j.leader + 1).max(j.reader + 1);
    }
    if let Some(first) = s.hydfs.as_ref().and_then(|w| w.clients.iter().min()) {
        least = least.max(first + 1);
    }
    least
}

/// Every cut worth trying on `s`, the largest first.
pub fn cuts(s: &Scenario) -> Vec<Cut> {
    let mut out = Vec::new();
    // Faults stop earlier: a shorter run with fewer faults.
    let start = match (&s.rainstorm, &s.hydfs) {
        (Some(j), _) => Some(j.start_ms.saturating_add(500)),
        (None, Some(w)) => Some(w.start_ms.saturating_add(1_000)),
        (None, None) => s.faults.first().map(|f| f.at_ms),
    };
    if let Some(lo) = start.filter(|lo| s.calm_from_ms > lo.saturating_add(2_000)) {
        let span = s.calm_from_ms - lo;
        out.extend([lo + span / 2, lo + span * 3 / 4].map(Cut::CalmAt));
    }
    let least = fewest_nodes(s);
    let mut nodes: Vec<usize> = vec![least, (least + s.nodes) / 2, s.nodes.saturating_sub(1)];
    nodes.retain(|n| *n >= least && *n < s.nodes);
    nodes.dedup();
    out.extend(nodes.into_iter().map(Cut::Nodes));
    let groups = fault_groups(&s.faults).len();
    let mut len = groups / 2;
    while len >= 1 {
        out.extend(
            (0..groups).step_by(len).map(|from| Cut::FaultGroups { from, len: len.min(groups - from) }),
        );
        len /= 2;
    }
    // A file workload (a job's HyDFS settings have no clients and no operations).
    if let Some(w) = s.hydfs.as_ref().filter(|w| !w.clients.is_empty()) {
        if w.clients.len() > 1 {
            out.extend((0..w.clients.len()).map(Cut::DropClient));
        }
        if w.files > 1 {
            out.extend([Cut::Files(w.files / 2), Cut::Files(w.files - 1)]);
        }
        if w.stop_ms > w.start_ms.saturating_add(2_000) {
            out.push(Cut::OpsUntil(w.start_ms + (w.stop_ms - w.start_ms) / 2));
        }
        out.extend([Cut::NoLargeWrites, Cut::SmallWrites((w.small_max_bytes / 4).max(64))]);
    }
    if s.hydfs.is_some() {
        out.extend([Cut::NoReadCache, Cut::ForegroundSync]);
    }
    if let Some(j) = &s.rainstorm {
        let lines = input_lines(&j.input);
        if lines > 4 {
            out.extend([Cut::InputLines(lines / 2), Cut::InputLines(lines - lines / 4)]);
        }
        if j.tasks > 1 {
            out.extend([Cut::Tasks(1), Cut::Tasks(j.tasks - 1)]);
        }
        out.push(Cut::Unpaced);
    }
    out.extend([
        Cut::NoLoss,
        Cut::NoDuplicates,
        Cut::NoBrokenStreams,
        Cut::NoClockOffsets,
        Cut::NoClockDrift,
        Cut::NoClusterKey,
        Cut::LowerLatency,
        Cut::NoBandwidthLimit,
    ]);
    out.extend(
        s.faults
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                matches!(f.fault, Fault::Pause { for_ms, .. } | Fault::Slow { for_ms, .. } if for_ms >= 200)
            })
            .map(|(i, _)| Cut::ShorterPause(i)),
    );
    out
}

/// `s` with `cut` made, or `None` if the cut leaves no scenario of the same kind.
pub fn apply(s: &Scenario, cut: Cut) -> Option<Scenario> {
    let ended = ends_its_faults(s);
    let mut c = s.clone();
    match cut {
        Cut::FaultGroups { from, len } => {
            let groups = fault_groups(&s.faults);
            let gone: BTreeSet<usize> = groups.iter().skip(from).take(len).flatten().copied().collect();
            c.faults = keep_indices(&s.faults, |i| !gone.contains(&i));
        }
        Cut::Nodes(n) => c.nodes = n,
        Cut::CalmAt(t) => {
            let mut gone = BTreeSet::new();
            for group in fault_groups(&s.faults) {
                if s.faults[group[0]].at_ms >= t {
                    gone.extend(group);
                } else {
                    for i in group.into_iter().skip(1) {
                        c.faults[i].at_ms = c.faults[i].at_ms.min(t);
                    }
                }
            }
            c.faults = keep_indices(&c.faults, |i| !gone.contains(&i));
            c.calm_from_ms = t;
        }
        Cut::ShorterPause(i) => match &mut c.faults.get_mut(i)?.fault {
            Fault::Pause { for_ms, .. } | Fault::Slow { for_ms, .. } => *for_ms /= 2,
            _ => return None,
        },
        Cut::NoLoss => c.net.loss_permille = 0,
        Cut::NoDuplicates => c.net.duplicate_permille = 0,
        Cut::NoBrokenStreams => {
            c.net.broken_stream_drop_permille = 0;
            c.net.broken_stream_duplicate_permille = 0;
        }
        Cut::NoClockOffsets => c.clock_offsets_ms.clear(),
        Cut::NoClockDrift => c.clock_drift_ppm.clear(),
        Cut::NoClusterKey => c.cluster_key = false,
        Cut::LowerLatency => c.net.latency_max_ms = (c.net.latency_max_ms / 2).max(c.net.latency_min_ms),
        Cut::NoBandwidthLimit => c.net.bandwidth_bytes_per_ms = 0,
        Cut::DropClient(i) => {
            let w = c.hydfs.as_mut()?;
            if i >= w.clients.len() {
                return None;
            }
            w.clients.remove(i);
        }
        Cut::Files(n) => c.hydfs.as_mut()?.files = n,
        Cut::OpsUntil(t) => c.hydfs.as_mut()?.stop_ms = t,
        Cut::NoLargeWrites => c.hydfs.as_mut()?.large_permille = 0,
        Cut::SmallWrites(n) => c.hydfs.as_mut()?.small_max_bytes = n,
        Cut::NoReadCache => c.hydfs.as_mut()?.config.cache_bytes = 0,
        Cut::ForegroundSync => c.hydfs.as_mut()?.background_sync = false,
        Cut::InputLines(n) => match &mut c.rainstorm.as_mut()?.input {
            InputSpec::Generated { lines } => *lines = n,
            InputSpec::TrafficSigns { max_lines } => *max_lines = n,
        },
        Cut::Tasks(n) => c.rainstorm.as_mut()?.tasks = n,
        Cut::Unpaced => c.rainstorm.as_mut()?.rate = None,
    }
    settle(c, s, ended)
}

fn keep_indices(faults: &[FaultAt], keep: impl Fn(usize) -> bool) -> Vec<FaultAt> {
    faults.iter().enumerate().filter(|(i, _)| keep(*i)).map(|(_, f)| f.clone()).collect()
}

/// Makes a cut scenario whole again: faults fitted to its nodes and sorted, the fault phase
/// ended as the original's was, and the result checked.
fn settle(mut c: Scenario, original: &Scenario, ended: bool) -> Option<Scenario> {
    let nodes = c.nodes;
    if nodes < fewest_nodes(original).min(original.nodes) {
        return None;
    }
    c.faults = c.faults.into_iter().filter_map(|f| fit(f, nodes)).collect();
    c.faults.sort_by_key(|f| f.at_ms);
    c.clock_offsets_ms.truncate(nodes);
    c.clock_drift_ppm.truncate(nodes);
    if let Some(w) = c.hydfs.as_mut() {
        let had_clients = !w.clients.is_empty();
        w.clients.retain(|s| *s < nodes);
        if had_clients && w.clients.is_empty() {
            return None;
        }
    }
    if let Some(j) = c.rainstorm.as_mut() {
        // The leader's crash is a fault of the plan: without it the job expects none.
        let leader = j.leader;
        j.leader_crash_ms = j
            .leader_crash_ms
            .filter(|at| c.faults.iter().any(|f| f.at_ms == *at && f.fault == Fault::Crash { node: leader }));
    }
    if ended {
        c.end_faults();
    } else {
        let margin = original.duration_ms.saturating_sub(original.calm_from_ms);
        c.duration_ms = c.calm_from_ms + margin.max(c.convergence_bound_ms());
    }
    capsule::check(&c).ok()?;
    Some(c)
}

/// `f` on a cluster of `nodes`: partitions keep their slots that exist, faults on missing
/// slots go.
fn fit(mut f: FaultAt, nodes: usize) -> Option<FaultAt> {
    let fits = |slot: &Slot| *slot < nodes;
    let keep = match &mut f.fault {
        Fault::Partition { side } => {
            side.retain(fits);
            !side.is_empty() && side.len() < nodes
        }
        Fault::OneWay { from, to } => {
            from.retain(fits);
            to.retain(fits);
            !from.is_empty() && !to.is_empty()
        }
        single => single.node().is_none_or(|n| fits(&n)),
    };
    keep.then_some(f)
}

/// A proptest value tree over one scenario that shrinks by [`Cut`]s.
pub struct ScenarioTree {
    /// The smallest scenario known to fail (at first: the one the tree was made from).
    accepted: Scenario,
    /// The candidate under test.
    current: Scenario,
    /// The cuts of `accepted`, and the next to try.
    cuts: Vec<Cut>,
    next: usize,
    /// Whether a cut was kept since the pass over the cuts began.
    progressed: bool,
}

impl ScenarioTree {
    pub fn new(scenario: Scenario) -> ScenarioTree {
        ScenarioTree {
            cuts: cuts(&scenario),
            accepted: scenario.clone(),
            current: scenario,
            next: 0,
            progressed: false,
        }
    }

    /// Moves `current` to the next cut of `accepted` that changes it; at the end of a pass
    /// that kept a cut, starts another. False (and `current` back at `accepted`) when done.
    fn advance(&mut self) -> bool {
        loop {
            if self.next >= self.cuts.len() {
                if !self.progressed || self.cuts.is_empty() {
                    self.current = self.accepted.clone();
                    return false;
                }
                self.progressed = false;
                self.next = 0;
            }
            let cut = self.cuts[self.next];
            self.next += 1;
            if let Some(candidate) = apply(&self.accepted, cut) {
                if candidate != self.accepted {
                    self.current = candidate;
                    return true;
                }
            }
        }
    }
}

impl ValueTree for ScenarioTree {
    type Value = Scenario;

    fn current(&self) -> Scenario {
        self.current.clone()
    }

    /// The current candidate failed: keep it, then try the next cut on it.
    fn simplify(&mut self) -> bool {
        if self.current != self.accepted {
            self.accepted = self.current.clone();
            self.cuts = cuts(&self.accepted);
            // The cut just kept may go further (its list moved up by one).
            self.next = self.next.saturating_sub(1);
            self.progressed = true;
        }
        self.advance()
    }

    /// The current candidate passed: back to the last failing one, and on to the next cut.
    fn complicate(&mut self) -> bool {
        self.current = self.accepted.clone();
        self.advance()
    }
}

/// The proptest strategy of a layer's swarm scenarios (from random seeds), shrinking by cuts.
#[derive(Clone, Copy, Debug)]
pub struct SwarmScenarios {
    layer: Layer,
}

pub fn swarm_scenarios(layer: Layer) -> SwarmScenarios {
    SwarmScenarios { layer }
}

impl Strategy for SwarmScenarios {
    type Tree = ScenarioTree;
    type Value = Scenario;

    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        let seed = any::<u64>().new_tree(runner)?.current();
        Ok(ScenarioTree::new(self.layer.swarm(seed)))
    }
}

/// A failing scenario and the smallest one found that still fails the same way.
pub struct Shrunk {
    pub original: Scenario,
    /// What caught the original.
    pub original_violations: Vec<Violation>,
    /// The smallest scenario found; its run is `report`.
    pub report: Report,
    /// Runs spent, the original's included.
    pub runs: u32,
}

impl Shrunk {
    pub fn minimal(&self) -> &Scenario {
        &self.report.scenario
    }
}

/// Shrinks `scenario` if it fails: at most `max_runs` runs after the original's, keeping a
/// candidate only if a checker that caught the original catches it too. `progress` sees every
/// scenario kept (the original first) with its run. `None` if the scenario passes.
pub fn shrink(
    scenario: &Scenario,
    max_runs: u32,
    progress: impl FnMut(&Scenario, &Report),
) -> Option<Shrunk> {
    struct State<P> {
        caught_by: Option<BTreeSet<CheckerKind>>,
        original: Option<Vec<Violation>>,
        last: Option<Report>,
        runs: u32,
        progress: P,
    }
    let state = RefCell::new(State { caught_by: None, original: None, last: None, runs: 0, progress });
    let mut runner = TestRunner::new(Config {
        cases: 1,
        max_shrink_iters: max_runs,
        max_shrink_time: 0,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run_one(ScenarioTree::new(scenario.clone()), |candidate| {
        let report = run_membership(&candidate, &RunOptions::default());
        let mut st = state.borrow_mut();
        st.runs += 1;
        let caught_by =
            st.caught_by.get_or_insert_with(|| report.violations.iter().map(|v| v.checker).collect());
        if !caught_by.iter().any(|k| report.caught(*k)) {
            return Ok(());
        }
        (st.progress)(&candidate, &report);
        if st.original.is_none() {
            st.original = Some(report.violations.clone());
        }
        st.last = Some(report);
        Err(TestCaseError::fail("still fails"))
    });
    let st = state.into_inner();
    match (outcome, st.original, st.last) {
        (Err(TestError::Fail(_, minimal)), Some(original_violations), Some(report)) => {
            debug_assert_eq!(report.scenario, minimal, "the last failing run is the smallest scenario");
            Some(Shrunk { original: scenario.clone(), original_violations, report, runs: st.runs })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::TestCaseResult;

    #[test]
    fn a_fault_goes_with_what_undoes_it() {
        let at = |at_ms, fault| FaultAt { at_ms, fault };
        let faults = vec![
            at(1, Fault::Crash { node: 2 }),
            at(2, Fault::Partition { side: vec![1] }),
            at(3, Fault::Leave { node: 3 }),
            at(4, Fault::Heal),
            at(5, Fault::CrashTaskHost { pick: 7 }),
            at(6, Fault::Restart { node: 2 }),
            at(7, Fault::Join { node: 3 }),
            at(8, Fault::RestartCrashed { pick: 1 }),
            at(9, Fault::Restart { node: 1 }),
            at(10, Fault::Partition { side: vec![1] }),
            at(11, Fault::OneWay { from: vec![1], to: vec![2] }),
            at(12, Fault::Heal),
            at(13, Fault::Slow { node: 3, for_ms: 4_000 }),
        ];
        assert_eq!(
            fault_groups(&faults),
            vec![
                vec![0, 5],
                vec![1, 3],
                vec![2, 6],
                vec![4, 7],
                vec![8],
                vec![9],
                vec![10],
                vec![11],
                vec![12]
            ]
        );
    }

    #[test]
    fn a_slow_spell_shortens_like_a_pause_and_goes_with_its_slot() {
        let mut s = crate::named::slow_member_is_not_declared_failed(1);
        let slow = s.faults.iter().position(|f| matches!(f.fault, Fault::Slow { .. })).unwrap();
        assert!(cuts(&s).contains(&Cut::ShorterPause(slow)));
        let shorter = apply(&s, Cut::ShorterPause(slow)).unwrap();
        assert_eq!(shorter.faults[slow].fault, Fault::Slow { node: 4, for_ms: 150_000 });
        s.faults.retain(|f| matches!(f.fault, Fault::Slow { .. }));
        assert_eq!(fit(s.faults[0].clone(), 4), None, "slot 4 is gone from a 4-node cluster");
    }

    /// Shrinks `s` against a cheap stand-in for a run: it "fails" while `fails` holds.
    fn shrink_by(s: Scenario, fails: impl Fn(&Scenario) -> bool) -> Scenario {
        let mut runner = TestRunner::new(Config { failure_persistence: None, ..Config::default() });
        let test = |c: Scenario| -> TestCaseResult {
            assert!(capsule::check(&c).is_ok(), "every candidate fits its cluster");
            if fails(&c) {
                Err(TestCaseError::fail("fails"))
            } else {
                Ok(())
            }
        };
        match runner.run_one(ScenarioTree::new(s), test) {
            Err(TestError::Fail(_, minimal)) => minimal,
            other => panic!("the stand-in did not fail: {other:?}"),
        }
    }

    #[test]
    fn a_hydfs_scenario_shrinks_to_the_one_fault_that_matters() {
        let seed = (0..).find(|s| {
            let f = &Scenario::hydfs_swarm(*s).faults;
            f.iter().any(|f| matches!(f.fault, Fault::Corrupt { .. })) && f.len() > 8
        });
        let original = Scenario::hydfs_swarm(seed.unwrap());
        let corrupts = |s: &Scenario| s.faults.iter().any(|f| matches!(f.fault, Fault::Corrupt { .. }));
        let minimal = shrink_by(original.clone(), corrupts);
        let (before, after) = (Size::of(&original), Size::of(&minimal));
        assert_eq!(after.faults, 1, "{after}: {:?}", minimal.faults);
        assert!(after.nodes <= before.nodes && after.duration_ms < before.duration_ms, "{before} -> {after}");
        assert_eq!(after.clients, 1);
        assert_eq!(after.files, 1);
        assert_eq!((minimal.net.loss_permille, minimal.cluster_key), (0, false));
        assert!(ends_its_faults(&minimal) && minimal.checks_convergence());
        let json = serde_json::to_string(&minimal).unwrap();
        assert_eq!(serde_json::from_str::<Scenario>(&json).unwrap(), minimal);
    }

    #[test]
    fn a_job_shrinks_to_fewer_lines_tasks_and_crashes() {
        let original = Scenario::rainstorm_swarm(3);
        let lines = |s: &Scenario| s.rainstorm.as_ref().map_or(0, |j| input_lines(&j.input));
        let crashes_a_task_host = |s: &Scenario| {
            lines(s) >= 10 && s.faults.iter().any(|f| matches!(f.fault, Fault::CrashTaskHost { .. }))
        };
        let minimal = shrink_by(original.clone(), crashes_a_task_host);
        let job = minimal.rainstorm.as_ref().unwrap();
        assert!((10..20).contains(&lines(&minimal)), "{}", lines(&minimal));
        assert_eq!(job.tasks, 1);
        assert_eq!(Size::of(&minimal).faults, 1, "{:?}", minimal.faults);
        assert!(minimal.nodes >= 5 && job.leader < minimal.nodes && job.reader < minimal.nodes);
        assert!(Size::of(&minimal).duration_ms < Size::of(&original).duration_ms);
    }

    #[test]
    fn clock_steps_go_one_by_one_and_drift_goes_whole() {
        let jumps =
            |s: &Scenario| s.faults.iter().filter(|f| matches!(f.fault, Fault::ClockJump { .. })).count();
        let steps_back = |s: &Scenario| {
            s.faults.iter().any(|f| matches!(f.fault, Fault::ClockJump { by_ms, .. } if by_ms < 0))
        };
        let seed = (0..).find(|s| {
            let s = Scenario::swarm(*s);
            jumps(&s) >= 2 && steps_back(&s) && !s.clock_drift_ppm.is_empty()
        });
        let original = Scenario::swarm(seed.unwrap());
        let minimal = shrink_by(original, steps_back);
        assert_eq!(jumps(&minimal), 1, "{:?}", minimal.faults);
        assert!(minimal.clock_drift_ppm.is_empty(), "every clock at the true rate");
    }

    #[test]
    fn a_named_story_keeps_its_own_ending() {
        // Named membership stories do not end their faults as the swarm does; shrinking keeps
        // it that way (no heal or loss change is added).
        let original = crate::named::fast_restart_at_same_address(1);
        let minimal =
            shrink_by(original.clone(), |s| s.faults.iter().any(|f| f.fault == Fault::Crash { node: 4 }));
        assert_eq!(minimal.faults, original.faults, "the crash goes only with its restart");
        assert_eq!(minimal.nodes, 5, "slot 4 is the highest left");
        assert!(minimal.checks_convergence());
    }
}
