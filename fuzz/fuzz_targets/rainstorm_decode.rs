//! The RainStorm message decoder behind a valid frame (header, sender, `Body::Rainstorm` tag,
//! CRC32C): a message or a typed error; whatever decodes re-encodes and decodes the same.
//! The checks live in `rainstorm_fuzz_checks::decode`, shared with the corpus replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rainstorm_fuzz_checks::decode::rainstorm_decode(data));
