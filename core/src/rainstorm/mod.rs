//! # RainStorm stream layer
//!
//! RainStorm reads an input file stored in HyDFS line by line, turns each physical line into a
//! source [`Tuple`] `<file:line_number, line>` (lines numbered from 1) and runs it through
//! operator stages. Outputs are exactly-once, so every operator is a deterministic pure function
//! of `(tuple, keyed state)`; partitioning, keyed state, acknowledgements and de-duplication by
//! [`TupleId`] belong to the job framework, never to an operator.
//!
//! What exists now:
//! * [`tuple`]: tuple identities ([`TupleId`]: source position plus derivation path) and tuples;
//! * [`csv`]: lenient single-line RFC 4180 splitting and joining of records;
//! * [`link`]: per-link batch numbering, windows, retries and in-order de-duplication;
//! * [`journal`]: task journals (framed, checksummed records), replay, snapshots and compaction;
//! * [`task`]: an operator task: in-order input, keyed state, journal before acknowledgement,
//!   partitioned output with backpressure, restart from the journal;
//! * [`operator`]: the [`Operator`] contract, the built-in operators and their text specs
//!   ([`OperatorSpec`]), and [`derive`] which gives outputs their ids.

pub mod csv;
pub mod journal;
pub mod link;
pub mod operator;
pub mod task;
pub mod tuple;

pub use operator::{derive, Applied, Operator, OperatorError, OperatorSpec, Output, SpecError};
pub use tuple::{Tuple, TupleId};
