//! Console commands and control-socket progress lines: no panic, typed errors, and what parses
//! prints back to itself.
//! The checks live in `rainstorm_fuzz_checks::command`, shared with the corpus replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rainstorm_fuzz_checks::command::command_parse(data));
