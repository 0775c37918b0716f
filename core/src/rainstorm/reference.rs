//! The single-process reference pipeline: the same operators over the same input, in line order,
//! with no distribution, no batching and no checkpoints.
//!
//! It is what a job's output is judged against (the simulator's checkers, the demo's verdict)
//! and the ceiling the benchmarks compare with. A distributed job may interleave inputs
//! differently, so stateful outputs (running counts) may reach other tuples, but the multiset of
//! outputs `(key, value)` and the set of output ids are the same.
//!
//! The input streams through both stages in chunks of [`REFERENCE_CHUNK_LINES`] lines (each
//! stage keeping its state across chunks), so a large input is never held as tuples all at
//! once; every stage still sees its input in line order, so the outputs are those of running
//! each stage over the whole input in turn.

use std::collections::BTreeMap;

use super::csv::split_record;
use super::operator::{derive_into, Applied, Operator, OperatorSpec, ProgramSpec, SpecError, StageOp};
use super::task::{ProgramBatch, ProgramResult};
use super::tuple::{source_lines, Tuple};

/// Why a reference run could not produce its outputs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("operator {stage} (`{spec}`): {error}")]
    Spec { stage: u8, spec: String, error: SpecError },
    #[error("operator `{operator}` failed on {tuple}: {error}")]
    Operator { operator: String, tuple: String, error: String },
}

/// The header row of an input: its first physical line split as CSV (operators resolve column
/// names against it).
pub fn header_of(content: &[u8]) -> Option<Vec<String>> {
    source_lines(content).next().map(|(_, line)| split_record(&line))
}

/// Runs operator-program batches for [`run_with`]: the runtime starts real programs, the
/// simulator emulates them.
pub trait ProgramRunner {
    fn run(
        &mut self,
        stage: u8,
        program: &ProgramSpec,
        header: Option<&[String]>,
        batch: ProgramBatch,
    ) -> Result<ProgramResult, String>;
}

/// A [`ProgramRunner`] for pipelines of built-ins only: any program is an error.
pub struct NoPrograms;

impl ProgramRunner for NoPrograms {
    fn run(
        &mut self,
        _stage: u8,
        program: &ProgramSpec,
        _header: Option<&[String]>,
        _batch: ProgramBatch,
    ) -> Result<ProgramResult, String> {
        Err(format!("program {} cannot run here (built-in operators only)", program.file))
    }
}

/// Input lines taken through both stages at a time.
pub const REFERENCE_CHUNK_LINES: usize = 8 * REFERENCE_PROGRAM_BATCH;

/// Tuples per program batch in a reference run (programs answer line by line; this keeps each
/// line well under the protocol's size limit).
pub const REFERENCE_PROGRAM_BATCH: usize = 512;

/// Builds the two operators of a job against the input's header.
pub fn build_pair(
    op1: &OperatorSpec,
    op2: &OperatorSpec,
    header: Option<&[String]>,
) -> Result<[StageOp; 2], ReferenceError> {
    let build = |stage: u8, spec: &OperatorSpec| {
        spec.build(header).map_err(|error| ReferenceError::Spec { stage, spec: spec.to_string(), error })
    };
    Ok([build(1, op1)?, build(2, op2)?])
}

/// One built-in operator applied to `input` in order, its keyed state in `state`.
pub fn apply_stage(
    op: &dyn Operator,
    input: &[Tuple],
    state: &mut BTreeMap<String, String>,
) -> Result<Vec<Tuple>, ReferenceError> {
    let mut out = Vec::new();
    for t in input {
        apply_one(op, t, state, &mut out)?;
    }
    Ok(out)
}

/// One tuple through a built-in operator: its derived tuples appended to `out`, its key's state
/// updated in `state`.
fn apply_one(
    op: &dyn Operator,
    t: &Tuple,
    state: &mut BTreeMap<String, String>,
    out: &mut Vec<Tuple>,
) -> Result<(), ReferenceError> {
    let fail = |error: String| ReferenceError::Operator {
        operator: op.name().to_owned(),
        tuple: t.id.to_string(),
        error,
    };
    let key = op.state_key(t).map_err(|e| fail(e.to_string()))?;
    let mut applied = op.apply(t, state.get(&key).map(String::as_str)).map_err(|e| fail(e.to_string()))?;
    if let Some(s) = applied.state.take() {
        match state.get_mut(&key) {
            Some(stored) => *stored = s,
            None => drop(state.insert(key, s)),
        }
    }
    derive_into(t, applied, out);
    Ok(())
}

/// Turns `scratch`, a source tuple of `src`, into the source tuple of line `number` holding
/// `line`: what `Tuple::source(src, number, line)` makes, reusing the key's allocation.
fn refill_source(scratch: &mut Tuple, src: &str, number: u64, line: String) {
    use std::fmt::Write;
    scratch.id.line = number;
    scratch.key.truncate(src.len() + 1);
    let _ = write!(scratch.key, "{number}");
    scratch.value = line;
}

/// One operator program applied to `input` in order, in batches, its state (by tuple key) in
/// `state`.
fn apply_program(
    stage: u8,
    program: &ProgramSpec,
    header: Option<&[String]>,
    input: &[Tuple],
    state: &mut BTreeMap<String, String>,
    runner: &mut dyn ProgramRunner,
) -> Result<Vec<Tuple>, ReferenceError> {
    let mut out = Vec::new();
    for chunk in input.chunks(REFERENCE_PROGRAM_BATCH) {
        let fail = |error: String| ReferenceError::Operator {
            operator: format!("program:{}", program.file),
            tuple: chunk.first().map(|t| t.id.to_string()).unwrap_or_default(),
            error,
        };
        let batch_state =
            chunk.iter().filter_map(|t| state.get(&t.key).map(|s| (t.key.clone(), s.clone()))).collect();
        let batch = ProgramBatch { tuples: chunk.to_vec().into(), state: batch_state };
        let result = runner.run(stage, program, header, batch).map_err(fail)?;
        if result.outputs.len() != chunk.len() {
            return Err(fail(format!("{} output lists for {} tuples", result.outputs.len(), chunk.len())));
        }
        for (t, outputs) in chunk.iter().zip(result.outputs) {
            derive_into(t, Applied { outputs, state: None }, &mut out);
        }
        state.extend(result.state);
    }
    Ok(out)
}

/// The outputs of `op1` then `op2` over every physical line of `content` (named `src`), in
/// order. Built-in operators only; see [`run_with`] for programs.
pub fn run(
    src: &str,
    content: &[u8],
    op1: &OperatorSpec,
    op2: &OperatorSpec,
) -> Result<Vec<Tuple>, ReferenceError> {
    run_with(src, content, op1, op2, &mut NoPrograms)
}

/// [`run`], with operator programs run by `programs`.
pub fn run_with(
    src: &str,
    content: &[u8],
    op1: &OperatorSpec,
    op2: &OperatorSpec,
    programs: &mut dyn ProgramRunner,
) -> Result<Vec<Tuple>, ReferenceError> {
    let header = header_of(content);
    let ops = build_pair(op1, op2, header.as_deref())?;
    let mut states = [BTreeMap::new(), BTreeMap::new()];
    let mut lines = source_lines(content).peekable();
    // The first stage reads each source tuple once: a built-in reads it in place, in one reused
    // tuple, so a line it drops costs no tuple of its own.
    let mut scratch = Tuple::source(src, 0, String::new());
    let mut between = Vec::new();
    let mut outputs = Vec::new();
    while lines.peek().is_some() {
        let chunk = lines.by_ref().take(REFERENCE_CHUNK_LINES);
        let [first, second] = &mut states;
        between.clear();
        match &ops[0] {
            StageOp::Builtin(op) => {
                for (number, line) in chunk {
                    refill_source(&mut scratch, src, number, line);
                    apply_one(op.as_ref(), &scratch, first, &mut between)?;
                }
            }
            StageOp::Program(p) => {
                let input: Vec<Tuple> =
                    chunk.map(|(number, line)| Tuple::source(src, number, line)).collect();
                between = apply_program(1, p, header.as_deref(), &input, first, programs)?;
            }
        }
        match &ops[1] {
            StageOp::Builtin(op) => {
                for t in &between {
                    apply_one(op.as_ref(), t, second, &mut outputs)?;
                }
            }
            StageOp::Program(p) => {
                outputs.append(&mut apply_program(2, p, header.as_deref(), &between, second, programs)?);
            }
        }
    }
    Ok(outputs)
}

/// What every stage puts out, in order: the source tuples, then each operator's outputs.
pub fn run_stages(
    src: &str,
    content: &[u8],
    op1: &OperatorSpec,
    op2: &OperatorSpec,
    programs: &mut dyn ProgramRunner,
) -> Result<Vec<Vec<Tuple>>, ReferenceError> {
    let header = header_of(content);
    let ops = build_pair(op1, op2, header.as_deref())?;
    let mut stages =
        vec![source_lines(content).map(|(n, line)| Tuple::source(src, n, line)).collect::<Vec<_>>()];
    for (stage, op) in (1u8..).zip(&ops) {
        let mut state = BTreeMap::new();
        let input = stages.last().map(Vec::as_slice).unwrap_or_default();
        let next = match op {
            StageOp::Builtin(op) => apply_stage(op.as_ref(), input, &mut state)?,
            StageOp::Program(p) => apply_program(stage, p, header.as_deref(), input, &mut state, programs)?,
        };
        stages.push(next);
    }
    Ok(stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> OperatorSpec {
        OperatorSpec::parse(s).expect("valid spec")
    }

    #[test]
    fn app2_counts_per_category_in_line_order() {
        let input = b"Sign_Post,Category\nA,x\nB,x\nA,y\nA,x\n";
        let out = run("in", input, &spec("column:Sign_Post=A"), &spec("count:Category")).expect("runs");
        let values: Vec<&str> = out.iter().map(|t| t.value.as_str()).collect();
        assert_eq!(values, ["x,1", "y,1", "x,2"]);
        assert_eq!(out[2].id.to_string(), "line 5/0/0");
    }

    #[test]
    fn a_refilled_source_tuple_is_the_source_tuple() {
        let mut scratch = Tuple::source("signs.csv", 0, String::new());
        for (number, line) in [(1, "a,b"), (10_000_000_000, ""), (7, "x")] {
            refill_source(&mut scratch, "signs.csv", number, line.to_owned());
            assert_eq!(scratch, Tuple::source("signs.csv", number, line));
        }
    }

    #[test]
    fn chunks_give_the_outputs_of_whole_stages() {
        let mut input = String::from("Sign_Post,Category\n");
        for i in 0..3 * REFERENCE_CHUNK_LINES + 5 {
            input.push_str(&format!("{},c{}\n", ["A", "B"][i % 2], i % 7));
        }
        let (op1, op2) = (spec("column:Sign_Post=A"), spec("count:Category"));
        let out = run("in", input.as_bytes(), &op1, &op2).expect("runs");
        let header = header_of(input.as_bytes());
        let [a, b] = build_pair(&op1, &op2, header.as_deref()).expect("builds");
        let tuples: Vec<Tuple> =
            source_lines(input.as_bytes()).map(|(n, l)| Tuple::source("in", n, l)).collect();
        let whole = |op: &StageOp, input: &[Tuple]| {
            apply_stage(op.builtin().expect("a built-in"), input, &mut BTreeMap::new()).expect("applies")
        };
        assert_eq!(out, whole(&b, &whole(&a, &tuples)));
        assert!(out.len() > REFERENCE_CHUNK_LINES, "the counts run across chunks");
    }

    #[test]
    fn unknown_column_is_a_spec_error() {
        let err = run("in", b"a,b\n1,2\n", &spec("column:zz=1"), &spec("split")).expect_err("no such column");
        assert!(matches!(err, ReferenceError::Spec { stage: 1, .. }), "{err}");
    }
}
