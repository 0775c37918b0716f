//! The verdict on one RainStorm job: its observed outputs judged against the reference run.
//!
//! This module owns the exactly-once rules a simulated job must satisfy, as pure functions of
//! plain data. Invariants: [`judge`] never panics on any input (every problem is a [`Finding`]),
//! its findings come in a fixed order (duplicates, loss, mismatches, aggregates) and each names
//! at most [`SHOWN`] offenders, sorted, with long values clipped, so a run's verdict is as
//! deterministic as the run. Outputs may arrive in any interleaving: only multisets are compared.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rainstorm_core::rainstorm::csv::split_record;
use rainstorm_core::rainstorm::{dest_line, Tuple, TupleId};
use serde::{Deserialize, Serialize};

/// How many offenders a finding names.
pub const SHOWN: usize = 5;
/// How many characters of one offender a finding shows.
const CLIP: usize = 80;

/// One broken rule, with the first few offenders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Finding {
    /// Outputs that differ from the reference (unexpected, or missing once the job completed).
    Mismatch(String),
    /// An output delivered more than once.
    Duplicate(String),
    /// A reference output never delivered by a completed job.
    Loss(String),
    /// Running counts that do not climb 1, 2, ..., N to the reference's final count.
    Aggregate(String),
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Mismatch(s) => write!(f, "mismatch: {s}"),
            Finding::Duplicate(s) => write!(f, "duplicate: {s}"),
            Finding::Loss(s) => write!(f, "loss: {s}"),
            Finding::Aggregate(s) => write!(f, "aggregate: {s}"),
        }
    }
}

/// What a job was seen to produce.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The outputs the leader streamed, in order.
    pub console: &'a [Tuple],
    /// The final content of the destination file, if it was read.
    pub dest: Option<&'a [u8]>,
    /// Whether the job reported completion (otherwise only "nothing wrong so far" is checked).
    pub completed: bool,
    /// Whether the console saw every commit: not when a leader died, or was deposed, after it
    /// committed outputs it never streamed. Then only the destination must be whole.
    pub console_whole: bool,
}

fn multiset<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut counts = BTreeMap::new();
    items.into_iter().for_each(|item| *counts.entry(item).or_insert(0) += 1);
    counts
}

/// The items of `a` more frequent than in `b`, with their excess.
fn excess<'m, T: Ord>(a: &'m BTreeMap<T, usize>, b: &BTreeMap<T, usize>) -> Vec<(&'m T, usize)> {
    a.iter()
        .filter_map(|(k, n)| n.checked_sub(b.get(k).copied().unwrap_or(0)).filter(|e| *e > 0).map(|e| (k, e)))
        .collect()
}

fn clip(text: String) -> String {
    match text.char_indices().nth(CLIP) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

/// Pushes `make("<n> <what>: a, b, ... (and m more)")` when `items` is non-empty.
fn report(findings: &mut Vec<Finding>, make: fn(String) -> Finding, what: &str, items: Vec<String>) {
    if items.is_empty() {
        return;
    }
    let shown: Vec<String> = items.iter().take(SHOWN).cloned().map(clip).collect();
    let more = items.len().saturating_sub(SHOWN);
    let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
    findings.push(make(format!("{} {what}: {}{tail}", items.len(), shown.join(", "))));
}

fn times<T: fmt::Debug>(item: T, n: usize) -> String {
    if n > 1 {
        format!("{item:?} x{n}")
    } else {
        format!("{item:?}")
    }
}

/// A running-count value `category,n`, or `None` if it is not one.
fn count_of(value: &str) -> Option<(String, u64)> {
    match <[String; 2]>::try_from(split_record(value)) {
        Ok([category, n]) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            n.parse().ok().map(|n| (category, n))
        }
        _ => None,
    }
}

/// Judges one job's observed outputs against `reference` (the reference run's outputs);
/// `stateful_counts` says the job's second operator is `count:`. An empty result is a pass.
pub fn judge(reference: &[Tuple], stateful_counts: bool, observed: &Observed) -> Vec<Finding> {
    let mut findings = Vec::new();
    let (console, completed) = (observed.console, observed.completed);
    let whole = completed && observed.console_whole;
    let ids = multiset(console.iter().map(|t| &t.id));
    let ref_ids: BTreeSet<&TupleId> = reference.iter().map(|t| &t.id).collect();
    let pairs = multiset(console.iter().map(|t| (t.key.as_str(), t.value.as_str())));
    let ref_pairs = multiset(reference.iter().map(|t| (t.key.as_str(), t.value.as_str())));

    let twice = ids.iter().filter(|(_, n)| **n > 1).map(|(id, n)| format!("{id} x{n}")).collect();
    report(&mut findings, Finding::Duplicate, "ids delivered more than once", twice);
    let over = pairs.iter().filter(|(p, n)| **n > 1 && **n > ref_pairs.get(*p).copied().unwrap_or(0));
    let over = over.map(|(p, n)| times(p, *n)).collect();
    report(
        &mut findings,
        Finding::Duplicate,
        "(key, value) pairs delivered more often than in the reference",
        over,
    );
    if stateful_counts {
        let counts = multiset(console.iter().filter_map(|t| count_of(&t.value)));
        let twice = counts.iter().filter(|(_, n)| **n > 1).map(|(c, n)| times(c, *n)).collect();
        report(&mut findings, Finding::Duplicate, "running counts delivered more than once", twice);
    }
    if whole {
        let lost = ref_ids.iter().filter(|id| !ids.contains_key(*id)).map(|id| id.to_string()).collect();
        report(&mut findings, Finding::Loss, "reference ids never delivered", lost);
    }

    let extra = excess(&pairs, &ref_pairs).into_iter().map(|(p, n)| times(p, n)).collect();
    report(&mut findings, Finding::Mismatch, "outputs beyond the reference's", extra);
    let foreign = ids.keys().filter(|id| !ref_ids.contains(*id)).map(|id| id.to_string()).collect();
    report(&mut findings, Finding::Mismatch, "ids not in the reference", foreign);
    if whole {
        let missing = excess(&ref_pairs, &pairs).into_iter().map(|(p, n)| times(p, n)).collect();
        report(&mut findings, Finding::Mismatch, "reference outputs missing", missing);
    }
    if let Some(dest) = observed.dest {
        judge_dest(&mut findings, reference, dest, completed);
    }
    if whole && stateful_counts {
        report(
            &mut findings,
            Finding::Aggregate,
            "categories with wrong running counts",
            aggregate(reference, console),
        );
    }
    findings
}

/// The destination file: whole lines only, each the `dest_line` of a reference output.
fn judge_dest(findings: &mut Vec<Finding>, reference: &[Tuple], dest: &[u8], completed: bool) {
    if !dest.is_empty() && !dest.ends_with(b"\n") {
        let tail = dest.rsplit(|b| *b == b'\n').next().unwrap_or_default();
        report(
            findings,
            Finding::Mismatch,
            "dest file ends mid-line",
            vec![times(String::from_utf8_lossy(tail), 1)],
        );
    }
    let body = dest.strip_suffix(b"\n").unwrap_or(dest);
    let lines = multiset((!dest.is_empty()).then(|| body.split(|b| *b == b'\n')).into_iter().flatten());
    let ref_text: Vec<String> = reference.iter().map(dest_line).collect();
    let ref_lines =
        multiset(ref_text.iter().map(|l| l.as_bytes().strip_suffix(b"\n").unwrap_or(l.as_bytes())));
    let show = |(line, n): (&&[u8], usize)| times(String::from_utf8_lossy(line), n);
    report(
        findings,
        Finding::Mismatch,
        "dest lines beyond the reference's",
        excess(&lines, &ref_lines).into_iter().map(show).collect(),
    );
    if completed {
        let missing = excess(&ref_lines, &lines).into_iter().map(show).collect();
        report(findings, Finding::Mismatch, "reference lines missing from dest", missing);
    }
}

/// Per category: the console's counts must be exactly 1..=N once each, N the reference's final.
fn aggregate(reference: &[Tuple], console: &[Tuple]) -> Vec<String> {
    let mut finals: BTreeMap<String, u64> = BTreeMap::new();
    for (category, n) in reference.iter().filter_map(|t| count_of(&t.value)) {
        let last = finals.entry(category).or_insert(0);
        *last = (*last).max(n);
    }
    let mut seen: BTreeMap<String, BTreeMap<u64, usize>> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    for t in console {
        match count_of(&t.value) {
            Some((category, n)) => *seen.entry(category).or_default().entry(n).or_insert(0) += 1,
            None => problems.push(format!("{}: {:?} is not a running count", t.id, t.value)),
        }
    }
    let categories: BTreeSet<&String> = finals.keys().chain(seen.keys()).collect();
    for category in categories {
        let want = finals.get(category).copied().unwrap_or(0);
        let counts = seen.get(category).cloned().unwrap_or_default();
        let max = counts.keys().next_back().copied().unwrap_or(0);
        let walk = (1..).zip(&counts).find_map(|(n, (k, m))| match k.cmp(&n) {
            Ordering::Less => Some(format!("count {k} delivered")),
            Ordering::Greater => Some(format!("count {n} never delivered")),
            Ordering::Equal => (*m != 1).then(|| format!("count {k} delivered {m} times")),
        });
        if max != want {
            problems.push(format!("{category:?}: max count {max}, reference final {want}"));
        } else if let Some(problem) = walk {
            problems.push(format!("{category:?}: {problem}"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use rainstorm_core::rainstorm::reference::run;
    use rainstorm_core::rainstorm::OperatorSpec;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::rainstorm::input::generated_csv;

    /// The reference outputs of `ops` over a generated input of 300 records.
    fn reference(ops: [&str; 2]) -> Vec<Tuple> {
        let content = generated_csv(&mut ChaCha8Rng::seed_from_u64(3), 300);
        let [op1, op2] = ops.map(|s| OperatorSpec::parse(s).expect("valid spec"));
        run("in/g.csv", &content, &op1, &op2).expect("reference runs")
    }

    fn counts() -> Vec<Tuple> {
        reference(["column:Sign_Post=Punched Telespar", "count:Category"])
    }

    fn dest_of(tuples: &[Tuple]) -> Vec<u8> {
        tuples.iter().map(dest_line).collect::<String>().into_bytes()
    }

    fn judged(
        reference: &[Tuple],
        counts: bool,
        console: &[Tuple],
        dest: &[u8],
        completed: bool,
    ) -> Vec<Finding> {
        judge(reference, counts, &Observed { console, dest: Some(dest), completed, console_whole: true })
    }

    fn kinds(findings: &[Finding]) -> Vec<&'static str> {
        let kind = |f: &Finding| match f {
            Finding::Mismatch(_) => "mismatch",
            Finding::Duplicate(_) => "duplicate",
            Finding::Loss(_) => "loss",
            Finding::Aggregate(_) => "aggregate",
        };
        let set: BTreeSet<&str> = findings.iter().map(kind).collect();
        set.into_iter().collect()
    }

    #[test]
    fn a_correct_observation_passes_in_any_interleaving() {
        for (reference, counts) in
            [(counts(), true), (reference(["grep:Stop", "project:OBJECTID,Sign_Type"]), false)]
        {
            assert!(reference.len() > 20);
            assert_eq!(judged(&reference, counts, &reference, &dest_of(&reference), true), []);
            let mut shuffled = reference.clone();
            shuffled.reverse();
            shuffled.rotate_left(7);
            assert_eq!(judged(&reference, counts, &shuffled, &dest_of(&reference), true), []);
            let observed = Observed { console: &shuffled, dest: None, completed: true, console_whole: true };
            assert_eq!(judge(&reference, counts, &observed), []);
        }
        assert_eq!(judged(&[], true, &[], b"", true), []);
    }

    #[test]
    fn a_dropped_tuple_is_a_loss() {
        let reference = counts();
        let mut console = reference.clone();
        let dropped = console.remove(4);
        let findings = judged(&reference, true, &console, &dest_of(&console), true);
        assert_eq!(kinds(&findings), ["aggregate", "loss", "mismatch"], "{findings:?}");
        assert!(findings.contains(&Finding::Loss(format!("1 reference ids never delivered: {}", dropped.id))));
        let partial = judged(&reference, true, &console[..10], &dest_of(&console[..10]), false);
        assert_eq!(partial, [], "an incomplete job may not have delivered everything yet");
    }

    #[test]
    fn a_duplicated_tuple_is_a_duplicate() {
        let reference = reference(["grep:Stop", "project:OBJECTID,Sign_Type"]);
        let mut console = reference.clone();
        console.push(console[2].clone());
        for completed in [true, false] {
            let findings = judged(&reference, false, &console, &dest_of(&reference), completed);
            assert_eq!(kinds(&findings), ["duplicate", "mismatch"], "{findings:?}");
            let Some(Finding::Duplicate(text)) = findings.first() else { panic!("{findings:?}") };
            assert_eq!(*text, format!("1 ids delivered more than once: {} x2", reference[2].id));
        }
    }

    #[test]
    fn a_repeated_running_count_is_a_duplicate() {
        let reference = counts();
        let mut console = reference.clone();
        let later =
            (1..console.len()).find(|i| console[*i].key == console[0].key).expect("a repeated category");
        console[later].value = console[0].value.clone();
        let findings = judged(&reference, true, &console, &dest_of(&reference), true);
        assert_eq!(kinds(&findings), ["aggregate", "duplicate", "mismatch"], "{findings:?}");
        let wanted = format!("1 running counts delivered more than once: ({:?}, 1) x2", console[0].key);
        assert!(findings.contains(&Finding::Duplicate(wanted)), "{findings:?}");
        let partial = judged(&reference, true, &console[..=later], &[], false);
        assert_eq!(kinds(&partial), ["duplicate", "mismatch"], "{partial:?}");
    }

    #[test]
    fn a_wrong_final_count_is_an_aggregate() {
        let reference = counts();
        let mut console = reference.clone();
        let last = console.last_mut().expect("outputs");
        let (category, n) = count_of(&last.value).expect("a count");
        last.value = format!("{},{}", category, n + 1);
        let findings = judge(
            &reference,
            true,
            &Observed { console: &console, dest: None, completed: true, console_whole: true },
        );
        assert_eq!(kinds(&findings), ["aggregate", "mismatch"], "{findings:?}");
        let wanted = format!(
            "1 categories with wrong running counts: {category:?}: max count {}, reference final {n}",
            n + 1
        );
        assert!(findings.contains(&Finding::Aggregate(wanted)), "{findings:?}");
    }

    #[test]
    fn a_dest_with_an_extra_or_torn_line_is_a_mismatch() {
        let reference = counts();
        let mut dest = dest_of(&reference);
        dest.extend_from_slice(b"Regulatory,999\n");
        let findings = judged(&reference, true, &reference, &dest, true);
        let wanted = "1 dest lines beyond the reference's: \"Regulatory,999\"".to_owned();
        assert_eq!(findings, [Finding::Mismatch(wanted.clone())]);
        assert_eq!(judged(&reference, true, &reference[..3], &dest, false), [Finding::Mismatch(wanted)]);
        let torn = &dest_of(&reference)[..20];
        let findings = judged(&reference, true, &reference, torn, false);
        assert!(
            matches!(&findings[..], [Finding::Mismatch(s), ..] if s.contains("ends mid-line")),
            "{findings:?}"
        );
        let short = dest_of(&reference[1..]);
        assert_eq!(kinds(&judged(&reference, true, &reference, &short, true)), ["mismatch"]);
        assert_eq!(judged(&reference, true, &reference, &short, false), []);
    }

    #[test]
    fn foreign_outputs_are_mismatches_and_findings_are_bounded() {
        let reference = counts();
        let foreign: Vec<Tuple> = (0..50)
            .map(|i| Tuple { id: TupleId::source(i), key: "k".repeat(500), value: "\u{fffd}\r\n".into() })
            .collect();
        let findings = judged(&reference, true, &foreign, b"\xff\n\n", false);
        assert_eq!(kinds(&findings), ["duplicate", "mismatch"], "{findings:?}");
        assert!(findings.iter().all(|f| f.to_string().len() < 1000), "{findings:?}");
        assert!(
            findings.iter().any(|f| f.to_string().contains("ids not in the reference: line 0, ")),
            "{findings:?}"
        );
        let all = judged(&reference, true, &foreign, b"", true);
        assert_eq!(kinds(&all), ["aggregate", "duplicate", "loss", "mismatch"], "{all:?}");
    }
}
