//! Membership messages and the updates they piggyback.
//!
//! Datagrams (UDP): `Ping`, `Ack`, `Nack`, `PingReq`, `Gossip`, `SyncDigest`. Stream (TCP
//! request/response): `Sync`, `JoinRequest` and `JoinReply`. Every datagram piggybacks as many
//! [`Update`]s as fit in the datagram limit.

use crate::id::{Incarnation, MemberId};
use serde::{Deserialize, Serialize};

/// Identifies one probe (or one relayed probe) of one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProbeSeq(pub u64);

/// The cluster-wide suspicion switch. The newer stamp wins: higher `counter`, ties broken by issuer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ModeStamp {
    pub counter: u64,
    pub issuer: Option<MemberId>,
    pub suspicion: bool,
}

impl ModeStamp {
    pub fn initial(suspicion: bool) -> ModeStamp {
        ModeStamp { counter: 0, issuer: None, suspicion }
    }

    /// Whether `self` supersedes `other` (the switch itself is not part of the order).
    pub fn is_newer_than(&self, other: &ModeStamp) -> bool {
        (self.counter, self.issuer) > (other.counter, other.issuer)
    }
}

/// A piece of membership news, disseminated by piggybacking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// `NEW` (incarnation 0) or a refutation (`ALIVE` with a higher incarnation).
    Alive { member: MemberId, incarnation: Incarnation },
    /// `SUS`: `accuser` failed to get an ack from `member` at this incarnation. Under Lifeguard
    /// each distinct accuser of one suspicion is an independent confirmation, which shortens
    /// its timeout.
    Suspect { member: MemberId, incarnation: Incarnation, accuser: MemberId },
    /// `DEL`: `member` is declared failed. Overrides any incarnation.
    Failed { member: MemberId },
    /// `member` left voluntarily.
    Left { member: MemberId },
    /// The suspicion switch.
    Mode(ModeStamp),
}

impl Update {
    /// Updates about one member replace each other in the dissemination queue.
    pub fn subject(&self) -> Option<MemberId> {
        match self {
            Update::Alive { member, .. }
            | Update::Suspect { member, .. }
            | Update::Failed { member }
            | Update::Left { member } => Some(*member),
            Update::Mode(_) => None,
        }
    }
}

/// Why a join was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinRefusal {
    /// The joiner's id was declared failed; it must rejoin under a new id.
    DeclaredFailed,
    /// The addressee is not an introducer.
    NotIntroducer,
    /// A later id holds the joiner's address, listed or recently removed: the process before
    /// the joiner at its address joined at a later time than the joiner's clock reads (a wall
    /// clock stepped back before the joiner started). The joiner must rejoin under an id later
    /// than `by`.
    Superseded { by: MemberId },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinKind {
    /// A process joining the group under a fresh id.
    Fresh,
    /// A member announcing itself to an introducer it no longer lists (introducer restarted,
    /// partition healed). The introducer merges it, or tells it to rejoin if it was declared failed.
    Announce,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipMsg {
    /// Direct probe of the member at the datagram's destination whose join time is
    /// `target_join_time` (the receiver must be exactly that member id to answer). The address
    /// is not repeated: it is the envelope's destination.
    Ping {
        seq: ProbeSeq,
        target_join_time: u64,
        updates: Vec<Update>,
    },
    /// Answer to a ping, or a relayed answer to a ping-req.
    Ack {
        seq: ProbeSeq,
        updates: Vec<Update>,
    },
    /// Ask the receiver to probe `target` and relay the ack under `seq` (or a [`Nack`] if the
    /// target stays silent).
    ///
    /// [`Nack`]: MembershipMsg::Nack
    PingReq {
        seq: ProbeSeq,
        target: MemberId,
        updates: Vec<Update>,
    },
    /// One-way news: an accusation sent to the accused, a leave notice, a "you were declared failed".
    Gossip {
        updates: Vec<Update>,
    },
    /// Anti-entropy, step one (a datagram): a hash of the sender's live view and mode. A
    /// receiver whose own hash differs starts the full exchange with [`MembershipMsg::Sync`], so
    /// agreeing members spend one small datagram per sync interval, however large the group.
    SyncDigest {
        digest: u64,
    },
    /// Anti-entropy, step two (push-pull over the stream channel): the sender's live members, its most
    /// recent removals and its mode. The receiver merges under the usual precedence rules and,
    /// unless this is the reply, answers with its own state.
    Sync {
        members: Vec<(MemberId, Incarnation)>,
        removed: Vec<MemberId>,
        mode: ModeStamp,
        reply: bool,
    },
    JoinRequest {
        nonce: u64,
        kind: JoinKind,
    },
    JoinReply {
        nonce: u64,
        result: Result<JoinAccept, JoinRefusal>,
    },
    /// A helper's answer to a ping-req whose target has not acked within the helper's ping
    /// timeout: the helper itself is reachable, so the requester's missing ack says more about
    /// the target than about the requester (Lifeguard's local health).
    Nack {
        seq: ProbeSeq,
    },
}

/// What the introducer gives a joiner: everyone it knows (itself included) and the current mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAccept {
    pub members: Vec<(MemberId, Incarnation)>,
    pub mode: ModeStamp,
}
