//! The RainStorm command-line programs: `member` and `introducer` (one node each), and the
//! `rainstorm` tool's `ctl` (talk to a running node) and `cluster` (a local cluster of processes).

pub mod cluster;
pub mod ctl;
pub mod node_cmd;
pub mod progress;
