//! # rainstorm-fuzz-checks
//!
//! One function per fuzz target: it takes the fuzzer's bytes and panics if an invariant of the
//! code under test breaks. The cargo-fuzz targets in `fuzz/` call these functions, and so does
//! the corpus replay in `cargo test` (`tests/tests/fuzz_corpus.rs`), so a committed corpus is
//! checked exactly as the fuzzer checked it.
//!
//! * [`decode`]: the envelope and each layer's message decoder behind a valid frame;
//! * [`node`]: a [`rainstorm_core::Node`] driven by a script of inputs;
//! * [`config`]: the runtime's TOML config and its resolution;
//! * [`command`]: console commands and the control socket's progress lines;
//! * [`operator`]: operator specs and what an operator program prints;
//! * [`checkpoint`]: RainStorm checkpoint logs as stored in HyDFS.

pub mod checkpoint;
pub mod command;
pub mod config;
pub mod decode;
pub mod node;
pub mod operator;

/// A target's check: panics if the input breaks an invariant.
pub type Check = fn(&[u8]);

/// Every fuzz target by name, with its check: what `cargo test` replays the corpora through.
pub const TARGETS: &[(&str, Check)] = &[
    ("envelope_decode", decode::envelope_decode),
    ("membership_decode", decode::membership_decode),
    ("hydfs_decode", decode::hydfs_decode),
    ("rainstorm_decode", decode::rainstorm_decode),
    ("node_messages", node::node_messages),
    ("config_parse", config::config_parse),
    ("command_parse", command::command_parse),
    ("operator_output", operator::operator_output),
    ("checkpoint_decode", checkpoint::checkpoint_decode),
];
