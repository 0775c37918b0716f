//! The single-process reference pipeline: the same operators over the same input, in line order,
//! with no distribution, no batching and no journal.
//!
//! It is what a job's output is judged against (the simulator's checkers, the demo's verdict)
//! and the ceiling the benchmarks compare with. A distributed job may interleave inputs
//! differently, so stateful outputs (running counts) may reach other tuples, but the multiset of
//! outputs `(key, value)` and the set of output ids are the same.

use std::collections::BTreeMap;

use super::csv::split_record;
use super::operator::{derive, Operator, OperatorSpec, SpecError};
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

/// Builds the two operators of a job against the input's header.
pub fn build_pair(
    op1: &OperatorSpec,
    op2: &OperatorSpec,
    header: Option<&[String]>,
) -> Result<[Box<dyn Operator>; 2], ReferenceError> {
    let build = |stage: u8, spec: &OperatorSpec| {
        spec.build(header).map_err(|error| ReferenceError::Spec { stage, spec: spec.to_string(), error })
    };
    Ok([build(1, op1)?, build(2, op2)?])
}

/// One operator applied to `input` in order, its keyed state in `state`.
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

/// The outputs of `op1` then `op2` over every physical line of `content` (named `src`), in order.
pub fn run(
    src: &str,
    content: &[u8],
    op1: &OperatorSpec,
    op2: &OperatorSpec,
) -> Result<Vec<Tuple>, ReferenceError> {
    let header = header_of(content);
    let [first, second] = build_pair(op1, op2, header.as_deref())?;
    let input: Vec<Tuple> = source_lines(content).map(|(n, line)| Tuple::source(src, n, line)).collect();
    let middle = apply_stage(first.as_ref(), &input, &mut BTreeMap::new())?;
    apply_stage(second.as_ref(), &middle, &mut BTreeMap::new())
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
        assert_eq!(out[2].id.to_string(), "in:5/0/0");
    }

    #[test]
    fn unknown_column_is_a_spec_error() {
        let err = run("in", b"a,b\n1,2\n", &spec("column:zz=1"), &spec("split")).expect_err("no such column");
        assert!(matches!(err, ReferenceError::Spec { stage: 1, .. }), "{err}");
    }
}
