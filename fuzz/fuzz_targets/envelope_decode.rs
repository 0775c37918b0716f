//! Any byte string given to the envelope decoder yields an envelope or a typed error, never a
//! panic; whatever decodes re-encodes to a frame that decodes to the same envelope.
//! The checks live in `rainstorm_fuzz_checks::decode`, shared with the corpus replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rainstorm_fuzz_checks::decode::envelope_decode(data));
