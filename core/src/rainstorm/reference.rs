//! The single-process reference pipeline: the same operators over the same input, in line order,
//! with no distribution, no batching and no checkpoints.
//!
//! It is what a job's output is judged against (the simulator's checkers, the demo's verdict)
//! and the ceiling the benchmarks compare with. A distributed job may interleave inputs
//! differently, so stateful outputs (running counts) may reach other tuples, but the multiset of
//! outputs `(key, value)` and the set of output ids are the same.

use std::collections::BTreeMap;

use super::csv::split_record;
use super::operator::{derive, Applied, Operator, OperatorSpec, ProgramSpec, SpecError, StageOp};
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
        let fail = |error: String| ReferenceError::Operator {
            operator: op.name().to_owned(),
            tuple: t.id.to_string(),
            error,
        };
        let key = op.state_key(t).map_err(|e| fail(e.to_string()))?;
        let applied = op.apply(t, state.get(&key).map(String::as_str)).map_err(|e| fail(e.to_string()))?;
        if let Some(s) = &applied.state {
            state.insert(key, s.clone());
        }
        out.extend(derive(t, &applied));
    }
    Ok(out)
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
        let batch = ProgramBatch { tuples: chunk.to_vec(), state: batch_state };
        let result = runner.run(stage, program, header, batch).map_err(fail)?;
        if result.outputs.len() != chunk.len() {
            return Err(fail(format!("{} output lists for {} tuples", result.outputs.len(), chunk.len())));
        }
        for (t, outputs) in chunk.iter().zip(result.outputs) {
            out.extend(derive(t, &Applied { outputs, state: None }));
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
    let mut stages = run_stages(src, content, op1, op2, programs)?;
    Ok(stages.pop().unwrap_or_default())
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
    let mut stages = vec![source_lines(content).map(|(n, line)| Tuple::source(src, n, line)).collect::<Vec<_>>()];
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
    fn unknown_column_is_a_spec_error() {
        let err = run("in", b"a,b\n1,2\n", &spec("column:zz=1"), &spec("split")).expect_err("no such column");
        assert!(matches!(err, ReferenceError::Spec { stage: 1, .. }), "{err}");
    }
}
