//! # rainstorm-core
//!
//! The sans-IO heart of RainStorm. Every protocol here is a deterministic state machine: it never
//! reads a clock, touches a socket or a file, spawns a thread or draws unseeded randomness. A
//! driver (the tokio runtime on real machines, or the deterministic simulator) feeds it inputs
//! with the current [`Time`] and drains its outputs:
//!
//! * inputs: [`Node::handle_datagram`], [`Node::handle_frame`], [`Node::handle_timeout`],
//!   [`Node::handle_command`], [`Node::submit`] (HyDFS operations), [`Node::handle_send_failed`];
//! * outputs: [`Node::poll_transmit`], [`Node::poll_event`], [`Node::poll_timeout`].
//!
//! After every input the driver must drain `poll_transmit` and `poll_event` until they return
//! `None`, then re-arm its timer from `poll_timeout`. The simulator asserts this contract.
//!
//! Modules:
//! * [`time`], [`id`]: the plain values every layer shares;
//! * [`timer`]: an ordered timer queue with stale-timer tokens;
//! * [`histogram`]: fixed-bucket latency histograms the layers keep of their own operations;
//! * [`bulk`]: the bytes of a message's large field, shared rather than copied;
//! * [`wire`]: the versioned, size-bounded, checksummed (optionally authenticated by a keyed BLAKE3 tag) envelope;
//! * [`replay`]: per-sender windows of accepted frame numbers (refuses replayed frames);
//! * [`membership`]: SWIM failure detection with optional suspicion;
//! * [`hydfs`]: the replicated file system (ring, replicas, merges, re-replication, client);
//! * [`limits`]: node-wide limits on stream frames and per-peer request rates;
//! * [`node`]: the [`Node`] that composes the layers behind one input/output surface;
//! * [`rainstorm`]: the stream layer's tuples and operators (pure functions, keyed state passed in).

pub mod bulk;
pub mod command;
pub mod histogram;
pub mod hydfs;
pub mod id;
pub mod limits;
pub mod membership;
pub mod node;
pub mod rainstorm;
pub mod replay;
pub mod time;
pub mod timer;
pub mod wire;

pub use id::{Incarnation, MemberId, NodeAddr};
pub use node::{Channel, Lane, Node, NodeEvent, Transmit};
pub use time::{Millis, Time};
