//! # rainstorm-runtime
//!
//! The tokio driver that runs a [`rainstorm_core::Node`] on a real machine. It owns everything
//! the core may not touch: one UDP socket (membership datagrams), one TCP listener on the same
//! port (length-prefixed stream frames: joins, anti-entropy), the OS clock, the control socket
//! and the logs. One task owns the node's state machine; sockets, timers, the console and the
//! control socket feed it through a channel. Nothing here decides protocol behaviour.
//!
//! * [`config`]: the TOML/flag configuration and its validation;
//! * [`clock`]: the OS clock as core [`rainstorm_core::Time`];
//! * [`net`]: stream framing;
//! * [`streams`]: stream connections per peer and lane, and the receiving side's lane queues;
//! * [`driver`]: the node task and [`driver::NodeHandle`];
//! * [`control`]: the Unix control socket (server and client);
//! * [`files`]: the HyDFS file commands' local side (uploads read part by part, downloads);
//! * [`storage`]: HyDFS blocks as files, with fsync;
//! * [`jobs`]: the RainStorm commands: operators resolved and uploaded, results streamed;
//! * [`programs`]: operator programs: fetched by hash, one sandboxed process per task incarnation;
//! * [`children`]: child processes that die with this one and start under resource limits;
//! * [`logging`]: tracing to stderr and to a file in the data dir;
//! * [`private`]: the modes of the data dir and of every file a node writes (0700 and 0600);
//! * [`status`]: the HTTP endpoint: the status page, its JSON, and [`metrics`] (Prometheus).

pub mod children;
pub mod clock;
pub mod config;
pub mod control;
pub mod direct;
pub mod driver;
pub mod files;
pub mod jobs;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod private;
pub mod programs;
pub mod read_ahead;
pub mod status;
pub mod storage;
pub mod streams;
