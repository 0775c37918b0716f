//! SWIM membership: failure detection, suspicion, and dissemination.
//!
//! Owns the member list of one node, its incarnation, the probe cycle, and the queue of updates
//! to piggyback. Invariants kept here:
//! * a member id that was removed (failed, left, superseded) is tombstoned and never re-added
//!   from gossip while the tombstone lives; a restarted process is a new id;
//! * only the member itself raises its incarnation; ALIVE beats SUS only at a higher incarnation;
//!   DEL and leave beat everything;
//! * the list never holds two ids at one address: the later join time supersedes the earlier;
//! * every datagram fits `max_datagram_bytes`; updates that do not fit wait for the next one;
//! * every queue (updates, relays, tombstones, probe order, timers) is bounded by the group size.

mod config;
mod gossip;
mod message;
mod swim;

pub use config::{MembershipConfig, PlantedBug};
pub use message::{JoinAccept, JoinKind, JoinRefusal, MembershipMsg, ModeStamp, ProbeSeq, Update};
pub use swim::{
    FailureCause, MemberStatus, MemberView, Membership, MembershipError, MembershipEvent, MembershipStats,
    Outgoing, Phase, Role,
};
