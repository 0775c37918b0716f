//! RainStorm task journals read from HyDFS: no panic, re-encoding round-trips, and replay keeps
//! the journal's invariants (refusals without effect, snapshot + tail == whole history).
//! The checks live in `rainstorm_fuzz_checks::journal`, shared with the corpus replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rainstorm_fuzz_checks::journal::journal_decode(data));
