//! A node driven by a script of frames, messages, commands, time, send failures, HyDFS
//! operations, jobs and program answers keeps its invariants after every step.
//! The checks live in `rainstorm_fuzz_checks::node`, shared with the corpus replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rainstorm_fuzz_checks::node::node_messages(data));
