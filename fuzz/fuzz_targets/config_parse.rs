//! The runtime's TOML config, parsed and resolved: no panic, errors name a field, and a
//! resolved config starts a node.
//! The checks live in `rainstorm_fuzz_checks::config`, shared with the corpus replay in `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rainstorm_fuzz_checks::config::config_parse(data));
