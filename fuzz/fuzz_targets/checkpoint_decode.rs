//! RainStorm checkpoint logs read from HyDFS: no panic, re-encoding round-trips, and the fold
//! keeps the log's invariants (refusals without effect, full record + tail == whole log).
//! The checks live in `rainstorm_fuzz_checks::checkpoint`, shared with the corpus replay in
//! `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rainstorm_fuzz_checks::checkpoint::checkpoint_decode(data));
