//! Operator specs and an operator program's stdout as the runtime reads it: no panic, typed
//! errors, results checked against their batch, and what parses round-trips.
//! The checks live in `rainstorm_fuzz_checks::operator`, shared with the corpus replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rainstorm_fuzz_checks::operator::operator_output(data));
