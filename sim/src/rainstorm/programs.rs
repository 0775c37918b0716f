//! Emulated operator programs: what the simulator answers when a task hands a batch to its
//! operator program.
//!
//! A real node starts an executable (see `docs/OPERATORS.md`); in the simulator a program is a
//! name under `sim/` whose behaviour this module implements, applied at once and answered after
//! a short delay. The same emulation serves the reference run ([`SimPrograms`] is a
//! [`ProgramRunner`]), so a job of programs is judged against the same functions.
//!
//! Programs (first argument, then options):
//! * `sim/select <builtin spec> [key=<col|value>]`: applies a stateless built-in operator to
//!   each tuple; with `key=`, each output's key becomes that column of its value (or the whole
//!   value), which is what a stateful program downstream is partitioned by;
//! * `sim/count-key`: stateful; counts tuples per tuple key and outputs `(key, "key,count")`,
//!   the same values as the built-in `count:<col>` after a `select ... key=<col>`.
//!
//! A program keeps the state of the keys it has seen in its session (one per task attempt), as
//! the protocol says: a batch carries the stored state only of keys the session has not seen.
//!
//! Invariant: the answer is a pure function of the call (program, header, batch) and the
//! session, so replays after crashes answer the same.

use std::collections::BTreeMap;

use rainstorm_core::rainstorm::csv::{join_record, split_record};
use rainstorm_core::rainstorm::reference::ProgramRunner;
use rainstorm_core::rainstorm::{Applied, OperatorSpec, Output, ProgramBatch, ProgramResult, ProgramSpec};
use sha2::{Digest, Sha256};

/// A program spec for the emulated program `name` (`select` or `count-key`) with `args`.
pub fn sim_program(name: &str, args: &[&str]) -> String {
    let file = format!("sim/{name}");
    let hash: String = Sha256::digest(file.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let spec = ProgramSpec { file, sha256: hash, args: args.iter().map(|a| a.to_string()).collect() };
    format!("program:{spec}")
}

/// Answers a batch the way the emulated program would, keeping its session's state in
/// `session`.
pub fn run_program(
    program: &ProgramSpec,
    header: Option<&[String]>,
    batch: &ProgramBatch,
    session: &mut BTreeMap<String, String>,
) -> Result<ProgramResult, String> {
    match program.file.as_str() {
        "sim/select" => select(program, header, batch),
        "sim/count-key" => Ok(count_key(batch, session)),
        other => Err(format!("no such emulated program `{other}`")),
    }
}

fn select(
    program: &ProgramSpec,
    header: Option<&[String]>,
    batch: &ProgramBatch,
) -> Result<ProgramResult, String> {
    let spec = program.args.first().ok_or("sim/select needs a built-in spec")?;
    let op = OperatorSpec::parse(spec)
        .and_then(|s| s.build(header))
        .map_err(|e| format!("sim/select `{spec}`: {e}"))?;
    let op = op.builtin().ok_or("sim/select runs built-ins only")?;
    if op.is_stateful() {
        return Err(format!("sim/select `{spec}`: stateful built-ins are not emulated"));
    }
    let rekey = match program.args.get(1).map(|a| a.strip_prefix("key=")) {
        None => None,
        Some(Some("value")) => Some(None),
        Some(Some(col)) => {
            let index =
                header.and_then(|h| h.iter().position(|c| c.trim_start_matches('\u{feff}').trim() == col));
            Some(Some(index.ok_or_else(|| format!("sim/select: no column `{col}`"))?))
        }
        Some(None) => return Err(format!("sim/select: unknown option {:?}", program.args[1])),
    };
    let mut outputs = Vec::with_capacity(batch.tuples.len());
    for t in batch.tuples.iter() {
        let Applied { outputs: outs, .. } = op.apply(t, None).map_err(|e| e.to_string())?;
        let outs = outs.into_iter().map(|o| match rekey {
            None => o,
            Some(None) => Output { key: o.value.clone(), value: o.value },
            Some(Some(i)) => {
                Output { key: split_record(&o.value).into_iter().nth(i).unwrap_or_default(), value: o.value }
            }
        });
        outputs.push(outs.collect());
    }
    Ok(ProgramResult { outputs, state: BTreeMap::new() })
}

fn count_key(batch: &ProgramBatch, state: &mut BTreeMap<String, String>) -> ProgramResult {
    state.extend(batch.state.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut changed = BTreeMap::new();
    let mut outputs = Vec::with_capacity(batch.tuples.len());
    for t in batch.tuples.iter() {
        let count = state.get(&t.key).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) + 1;
        let count = count.to_string();
        state.insert(t.key.clone(), count.clone());
        changed.insert(t.key.clone(), count.clone());
        outputs.push(vec![Output { key: t.key.clone(), value: join_record(&[&t.key, &count]) }]);
    }
    ProgramResult { outputs, state: changed }
}

/// The emulated programs as a [`ProgramRunner`], for the reference run.
pub struct SimPrograms;

impl ProgramRunner for SimPrograms {
    fn run(
        &mut self,
        _stage: u8,
        program: &ProgramSpec,
        header: Option<&[String]>,
        batch: ProgramBatch,
    ) -> Result<ProgramResult, String> {
        // The reference sends every batch the state of all its keys: a fresh session will do.
        run_program(program, header, &batch, &mut BTreeMap::new())
    }
}

/// The same job with operator programs in place of built-ins: a stateful `count:<col>` second
/// operator becomes `select ... key=<col>` then `count-key` (same output values); otherwise each
/// operator is wrapped in `select`. `None` if a spec does not parse.
pub fn as_programs(op1: &str, op2: &str) -> Option<(String, String)> {
    let second = OperatorSpec::parse(op2).ok()?;
    OperatorSpec::parse(op1).ok()?;
    match second {
        OperatorSpec::Count { by } => {
            let key = match by {
                rainstorm_core::rainstorm::operator::CountBy::Value => "key=value".to_owned(),
                rainstorm_core::rainstorm::operator::CountBy::Column(c) => format!("key={c}"),
            };
            Some((sim_program("select", &[op1, &key]), sim_program("count-key", &[])))
        }
        _ => Some((sim_program("select", &[op1]), sim_program("select", &[op2]))),
    }
}

#[cfg(test)]
mod tests {
    use rainstorm_core::rainstorm::reference::{run, run_with};

    use super::*;
    use crate::rainstorm::input::TRAFFIC_SIGNS;

    fn spec(s: &str) -> OperatorSpec {
        OperatorSpec::parse(s).expect("valid spec")
    }

    #[test]
    fn program_pipelines_give_the_builtin_values() {
        let pairs = [
            ("grep:Stop", "project:OBJECTID,Sign_Type"),
            ("column:Sign_Post=Punched Telespar", "count:Category"),
            ("split", "count:value"),
        ];
        for (op1, op2) in pairs {
            let builtin = run("in", TRAFFIC_SIGNS, &spec(op1), &spec(op2)).expect("built-ins run");
            let (p1, p2) = as_programs(op1, op2).expect("converts");
            let programs =
                run_with("in", TRAFFIC_SIGNS, &spec(&p1), &spec(&p2), &mut SimPrograms).expect("runs");
            let values = |ts: &[rainstorm_core::rainstorm::Tuple]| {
                let mut v: Vec<String> = ts.iter().map(|t| t.value.clone()).collect();
                v.sort();
                v
            };
            assert!(!builtin.is_empty(), "{op1} {op2}");
            assert_eq!(values(&builtin), values(&programs), "{op1} {op2}");
        }
    }

    #[test]
    fn unknown_programs_and_bad_arguments_are_errors() {
        let batch = ProgramBatch { tuples: Default::default(), state: BTreeMap::new() };
        let p = |s: &str| match spec(s) {
            OperatorSpec::Program(p) => p,
            other => panic!("not a program: {other}"),
        };
        let mut session = BTreeMap::new();
        assert!(run_program(&p(&sim_program("nope", &[])), None, &batch, &mut session).is_err());
        assert!(run_program(&p(&sim_program("select", &["count:1"])), None, &batch, &mut session).is_err());
        assert!(
            run_program(&p(&sim_program("select", &["split", "bogus"])), None, &batch, &mut session).is_err()
        );
    }
}
