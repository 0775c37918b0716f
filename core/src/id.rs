//! Identities shared by every layer.
//!
//! A member is identified by `(address, join time)`: a process that restarts on the same address
//! is a *new* member, so stale knowledge about the old process can never be mistaken for the new
//! one. Ring positions (HyDFS) use the address alone, so a node that rejoins takes back its place.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// Where a node listens: its UDP port for membership and the same TCP port for streams.
pub type NodeAddr = SocketAddr;

/// One incarnation of one process: its address and the time it joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberId {
    pub addr: NodeAddr,
    /// Join time in milliseconds on the joining node's clock, or just after the latest id the
    /// introducer knows at the address if that clock reads earlier (a wall clock stepped back).
    /// Strictly increases across restarts of one address, which is what makes a restarted
    /// process a new member.
    pub join_time: u64,
}

impl MemberId {
    pub fn new(addr: NodeAddr, join_time: u64) -> MemberId {
        MemberId { addr, join_time }
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, self.join_time)
    }
}

/// SWIM incarnation number: only the member itself raises it, to refute a suspicion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation(pub u64);

impl Incarnation {
    pub fn next(self) -> Incarnation {
        Incarnation(self.0.saturating_add(1))
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
