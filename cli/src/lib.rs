//! The RainStorm command-line programs: `member` and `introducer` (one node each), and the
//! `rainstorm` tool's `ctl` (talk to a running node), `cluster` (a local cluster of processes) and
//! `demo` (RainStorm's two applications on such a cluster, with workers killed mid-job).

pub mod cluster;
pub mod ctl;
pub mod demo;
pub mod node_cmd;
pub mod progress;
