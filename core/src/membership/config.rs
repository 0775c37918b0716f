//! Membership protocol settings and the detection bound they imply.
//!
//! # The detection bound (defaults, period T = 1 s, n = 10)
//!
//! *First detection.* Every member probes the others in a shuffled round-robin order, one probe
//! per period. A crashed member is first probed by some member after a delay that is the minimum
//! over n−1 independent probers, each reaching it at a uniformly random point of its cycle, so
//! P(no probe within m periods) ≈ (1 − m/(n−1))^(n−1): 2.6% for m = 3 and 0.5% for m = 4 at
//! n = 10 (SWIM's expectation for random probing is e/(e−1) ≈ 1.58 periods). The probe fails at
//! the end of its period (direct ping times out after `ping_timeout`, then k indirect probes get
//! the rest of the period). So with probability ≈ 99.5% the crash shows in some member's list
//! within 5 s: as `DEL` in PingAck mode, as `SUS` in PingAck+S mode.
//!
//! *Everyone.* In PingAck+S mode the suspicion spreads by piggybacking and every member that holds
//! it declares the member failed `suspicion_timeout` after it heard it; in both modes the `DEL`
//! spreads epidemically, reaching all n members in about log₂ n + 1 ≈ 4 periods. First failed
//! probe ≤ 5 s, plus a 3 s suspicion timeout, plus spreading (which overlaps the timeout) gives all
//! lists within 10 s. `rainstorm bench membership` measures both numbers against this bound.
//!
//! A member also probes every other member at least once every 2(n−1) periods on its own, so even
//! without any gossip each member detects a crash within (2(n−1)+1)·T + suspicion_timeout: the
//! deterministic bound the simulator's completeness checker uses under heavy faults.
//!
//! # Lifeguard (`lifeguard`, on by default)
//!
//! Local health awareness (Dadgar et al., 2018, as in HashiCorp memberlist) makes a member that
//! is itself slow (CPU-starved, paused) less likely to declare live members failed:
//!
//! * a local health multiplier (LHM, 0..=`local_health_max`) grows by one when this member's
//!   probe fails with no ack and no nack (by the nacks missing when helpers were asked) and when
//!   it has to refute a suspicion of itself, and shrinks by one on each acknowledged probe; its
//!   probe period and ping timeout are stretched by (LHM + 1);
//! * a suspicion starts at `suspicion_max_mult` times the suspicion timeout and shrinks toward it
//!   as distinct members confirm it: after c of k = `suspicion_confirmations` confirmations the
//!   timeout is max − (max − min)·log(c + 1)/log(k + 1), never below min;
//! * a helper asked for an indirect probe that gets no ack within its ping timeout sends the
//!   requester a nack.
//!
//! The price: a suspicion nobody confirms waits `suspicion_max_mult` times longer, and a member
//! whose LHM is high probes more slowly. A crash is normally confirmed by k other members'
//! probes within the suspicion timeout, so first detection changes little (`rainstorm bench
//! membership` measures it); the per-member bound above holds for each member with LHM 0 and a
//! confirmed suspicion, and stretches with the LHM and the missing confirmations otherwise.

use crate::time::Millis;
use serde::{Deserialize, Serialize};

/// Settings of the SWIM membership protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipConfig {
    /// One probe per period. The original system used 1 s.
    pub protocol_period: Millis,
    /// How long a direct ping waits for its ack before the indirect round through `k` members.
    /// The indirect round lasts until the end of the period.
    pub ping_timeout: Millis,
    /// Members asked to probe indirectly (PING-REQ) after a missed direct ack.
    pub indirect_probes: usize,
    /// How long a suspected member has to refute before it is declared failed (PingAck+S), in
    /// groups of up to 15 members. Larger groups wait longer, in proportion to ⌈log₂(n+1)⌉/4,
    /// because a refutation needs about log₂ n periods to reach everyone
    /// ([`MembershipConfig::suspicion_timeout_for`]).
    pub suspicion_timeout: Millis,
    /// λ: each update is piggybacked about λ·⌈log₂(n+1)⌉ times.
    pub retransmit_mult: u32,
    /// Whether the cluster starts in PingAck+S (suspicion) mode; switchable at run time.
    pub suspicion_at_start: bool,
    /// Join attempts before a join fails, and the wait between attempts.
    pub join_attempts: u32,
    pub join_retry: Millis,
    /// While no member at the introducer's address is in the list, announce to it this often, so
    /// that a restarted introducer (or a healed partition) is rejoined.
    pub introducer_announce_interval: Millis,
    /// How often a member exchanges its whole view with one random member (anti-entropy), which
    /// repairs what lossy gossip missed.
    pub sync_interval: Millis,
    /// How long a removed member's id is remembered, so stale gossip cannot revive it.
    pub tombstone_ttl: Millis,
    /// How long a member that left keeps answering probes with its leave notice before it stops.
    pub leave_linger: Millis,
    /// The largest datagram sent; piggybacked updates fill what is left.
    pub max_datagram_bytes: usize,
    /// Lifeguard local health awareness (see the module documentation).
    #[serde(default = "default_lifeguard")]
    pub lifeguard: bool,
    /// Under Lifeguard, the largest local health multiplier (memberlist uses 8): a member's
    /// probe period and ping timeout grow at most `local_health_max + 1` times.
    #[serde(default = "default_local_health_max")]
    pub local_health_max: u32,
    /// Under Lifeguard, an unconfirmed suspicion waits this many times the suspicion timeout.
    #[serde(default = "default_suspicion_max_mult")]
    pub suspicion_max_mult: u32,
    /// Under Lifeguard, the independent confirmations (distinct accusers besides the first)
    /// that bring a suspicion's timeout down to the suspicion timeout.
    #[serde(default = "default_suspicion_confirmations")]
    pub suspicion_confirmations: u32,
    /// Deliberate bugs for proving the simulator's checkers (compiled only for that purpose).
    #[cfg(feature = "planted-bugs")]
    #[serde(default)]
    pub planted: Option<PlantedBug>,
}

fn default_lifeguard() -> bool {
    true
}

fn default_local_health_max() -> u32 {
    8
}

fn default_suspicion_max_mult() -> u32 {
    6
}

fn default_suspicion_confirmations() -> u32 {
    2
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig::lan()
    }
}

impl MembershipConfig {
    /// The defaults: a 1 s period, meeting the 5 s / 10 s detection bound derived above at n = 10.
    pub fn lan() -> MembershipConfig {
        MembershipConfig {
            protocol_period: Millis(1000),
            ping_timeout: Millis(300),
            indirect_probes: 3,
            suspicion_timeout: Millis(3000),
            retransmit_mult: 3,
            suspicion_at_start: true,
            join_attempts: 3,
            join_retry: Millis(1000),
            introducer_announce_interval: Millis(5000),
            sync_interval: Millis(10_000),
            tombstone_ttl: Millis::from_secs(600),
            leave_linger: Millis(2000),
            max_datagram_bytes: crate::wire::MAX_DATAGRAM_BYTES,
            lifeguard: default_lifeguard(),
            local_health_max: default_local_health_max(),
            suspicion_max_mult: default_suspicion_max_mult(),
            suspicion_confirmations: default_suspicion_confirmations(),
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    /// Faster timings for tests on loopback: a 200 ms period.
    pub fn fast_local() -> MembershipConfig {
        MembershipConfig {
            protocol_period: Millis(200),
            ping_timeout: Millis(60),
            suspicion_timeout: Millis(600),
            join_retry: Millis(300),
            introducer_announce_interval: Millis(1000),
            sync_interval: Millis(2000),
            leave_linger: Millis(400),
            ..MembershipConfig::lan()
        }
    }

    /// Checks the settings hang together; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.protocol_period.0 == 0 {
            return Err("protocol_period must be positive".into());
        }
        if self.ping_timeout.0 == 0 || self.ping_timeout >= self.protocol_period {
            return Err(format!(
                "ping_timeout ({}) must be positive and shorter than protocol_period ({})",
                self.ping_timeout, self.protocol_period
            ));
        }
        if self.retransmit_mult == 0 {
            return Err("retransmit_mult must be at least 1".into());
        }
        if self.sync_interval.0 == 0 {
            return Err("sync_interval must be positive".into());
        }
        if self.join_attempts == 0 {
            return Err("join_attempts must be at least 1".into());
        }
        if self.local_health_max > 64 {
            return Err(format!("local_health_max ({}) must be at most 64", self.local_health_max));
        }
        if self.suspicion_max_mult == 0 || self.suspicion_max_mult > 64 {
            return Err(format!("suspicion_max_mult ({}) must be between 1 and 64", self.suspicion_max_mult));
        }
        if self.suspicion_confirmations > 64 {
            return Err(format!(
                "suspicion_confirmations ({}) must be at most 64",
                self.suspicion_confirmations
            ));
        }
        if self.max_datagram_bytes < 256 || self.max_datagram_bytes > 65_000 {
            return Err(format!(
                "max_datagram_bytes ({}) must be between 256 and 65000",
                self.max_datagram_bytes
            ));
        }
        Ok(())
    }

    /// How many times one update is piggybacked, for a group of `members` members.
    pub fn retransmit_limit(&self, members: usize) -> u32 {
        // ⌈log₂(members + 1)⌉
        let log2 = usize::BITS - members.leading_zeros();
        self.retransmit_mult * log2.max(1)
    }

    /// The suspicion timeout in a group of `members` members.
    pub fn suspicion_timeout_for(&self, members: usize) -> Millis {
        let log2 = (usize::BITS - members.leading_zeros()) as u64;
        Millis(self.suspicion_timeout.0 * log2.max(4) / 4)
    }

    /// Under Lifeguard, the timeout of a suspicion in a group of `members` members after
    /// `confirmations` independent confirmations: from `suspicion_max_mult` times
    /// [`MembershipConfig::suspicion_timeout_for`] (none) down to it (`expected` or more), on a
    /// logarithmic curve (memberlist's `remainingSuspicionTime`). With no confirmation to expect
    /// (`expected` 0, a group too small to give any) it is the minimum from the start.
    pub fn lifeguard_suspicion_timeout(&self, members: usize, confirmations: u32, expected: u32) -> Millis {
        let min = self.suspicion_timeout_for(members);
        let max = Millis(min.0 * self.suspicion_max_mult.max(1) as u64);
        if expected == 0 || confirmations >= expected {
            return min;
        }
        let frac = ((confirmations as f64) + 1.0).ln() / ((expected as f64) + 1.0).ln();
        let raw = max.0 as f64 - frac * (max.0 - min.0) as f64;
        let timeout = Millis((raw.floor() as u64).clamp(min.0, max.0));
        debug_assert!(min <= timeout && timeout <= max, "a suspicion timeout stays within [min, max]");
        timeout
    }

    /// The longest a suspicion can wait in a group of `members` members: under Lifeguard an
    /// unconfirmed one, `suspicion_max_mult` times the suspicion timeout.
    pub fn suspicion_timeout_max_for(&self, members: usize) -> Millis {
        let min = self.suspicion_timeout_for(members);
        if self.lifeguard {
            Millis(min.0 * self.suspicion_max_mult.max(1) as u64)
        } else {
            min
        }
    }

    /// Under Lifeguard, the confirmations to expect for a suspicion in a group of `members`
    /// members: none if the group cannot give them (the accuser and the accused do not count).
    pub fn expected_confirmations(&self, members: usize) -> u32 {
        let others = members.saturating_sub(2);
        if others < self.suspicion_confirmations as usize {
            0
        } else {
            self.suspicion_confirmations
        }
    }

    /// The per-member deterministic detection bound for a group of at most `members` members:
    /// each member probes every other at least once per 2(n−1) periods.
    pub fn own_probe_detection_bound(&self, members: usize) -> Millis {
        let periods = 2 * members.saturating_sub(1) as u64 + 2;
        Millis(periods * self.protocol_period.0 + self.suspicion_timeout_for(members).0)
    }

    /// [`MembershipConfig::own_probe_detection_bound`] for a member that nobody helps, under
    /// Lifeguard: its lone suspicion waits the longest timeout (no confirmation), and its probe
    /// periods are stretched while its local health recovers from the maximum, one step per
    /// acknowledged probe: at most max·(max + 1)/2 extra periods.
    pub fn unconfirmed_detection_bound(&self, members: usize) -> Millis {
        let bound = self.own_probe_detection_bound(members);
        if !self.lifeguard {
            return bound;
        }
        let min = self.suspicion_timeout_for(members).0;
        let max = self.suspicion_timeout_max_for(members).0;
        let lhm = self.local_health_max as u64;
        let recovery = lhm * (lhm + 1) / 2 * self.protocol_period.0;
        Millis(bound.0 + (max - min) + recovery)
    }

    #[cfg(feature = "planted-bugs")]
    pub(crate) fn plants(&self, bug: PlantedBug) -> bool {
        self.planted == Some(bug)
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[inline(always)]
    pub(crate) fn plants(&self, _bug: PlantedBug) -> bool {
        false
    }
}

/// Deliberate bugs, each of which one of the simulator's checkers must catch.
/// Without the `planted-bugs` feature none of them can be switched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PlantedBug {
    /// A suspected member's timer never fires, so it is never declared failed (completeness).
    SuspicionNeverFires,
    /// A failure (DEL) is applied locally but never disseminated (strict completeness).
    DelNotDisseminated,
    /// A suspicion is acted on at once: no chance to refute (accuracy).
    SuspicionWithoutTimeout,
    /// The accused refutes without raising its incarnation, so its ALIVE does not beat the
    /// SUS (accuracy).
    RefutationKeepsIncarnation,
    /// No anti-entropy sync: what lossy gossip missed is never repaired (convergence).
    AntiEntropyDisabled,
    /// Piggybacking ignores the datagram size limit (bounded).
    PiggybackIgnoresLimit,
    /// The replay guard refuses every frame that arrives after a later-numbered one, so honest
    /// frames reordered by the network are refused (wire).
    ReplayWindowOfOne,
    /// The replay guard keeps one window per sender and channel whatever the lane, so a frame
    /// held back behind a window's worth of another lane's frames is refused as stale
    /// (the `node_messages` check's replay model).
    ReplayLanesShareAWindow,
    /// A joiner refused because a later id holds its address renews its id from its own clock
    /// alone, ignoring the id it must follow: a process whose wall clock was stepped back
    /// before it started is refused again and again, each time under a new id (convergence).
    JoinTimeTrustsTheClock,
    /// A probe that gets no direct ack is never retried through other members (no PING-REQ),
    /// so a member that only one peer cannot reach is suspected by it again and again
    /// (accuracy, where every helper still reaches both).
    NoIndirectProbes,
    /// Lifeguard's local health multiplier never grows, so a slow member keeps probing at full
    /// rate and judging others by acks it handles late (the planted test
    /// `local_health_check_catches_a_multiplier_that_never_grows`: the probe period never
    /// stretches).
    LocalHealthNeverGrows,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 11] = [
        PlantedBug::SuspicionNeverFires,
        PlantedBug::DelNotDisseminated,
        PlantedBug::SuspicionWithoutTimeout,
        PlantedBug::RefutationKeepsIncarnation,
        PlantedBug::AntiEntropyDisabled,
        PlantedBug::PiggybackIgnoresLimit,
        PlantedBug::ReplayWindowOfOne,
        PlantedBug::ReplayLanesShareAWindow,
        PlantedBug::JoinTimeTrustsTheClock,
        PlantedBug::NoIndirectProbes,
        PlantedBug::LocalHealthNeverGrows,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::SuspicionNeverFires => "suspicion-never-fires",
            PlantedBug::DelNotDisseminated => "del-not-disseminated",
            PlantedBug::SuspicionWithoutTimeout => "suspicion-without-timeout",
            PlantedBug::RefutationKeepsIncarnation => "refutation-keeps-incarnation",
            PlantedBug::AntiEntropyDisabled => "anti-entropy-disabled",
            PlantedBug::PiggybackIgnoresLimit => "piggyback-ignores-limit",
            PlantedBug::ReplayWindowOfOne => "replay-window-of-one",
            PlantedBug::ReplayLanesShareAWindow => "replay-lanes-share-a-window",
            PlantedBug::JoinTimeTrustsTheClock => "join-time-trusts-the-clock",
            PlantedBug::NoIndirectProbes => "no-indirect-probes",
            PlantedBug::LocalHealthNeverGrows => "local-health-never-grows",
        }
    }

    pub fn from_name(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_retransmits_grow_logarithmically() {
        let c = MembershipConfig::lan();
        c.validate().unwrap();
        MembershipConfig::fast_local().validate().unwrap();
        assert_eq!(c.retransmit_limit(1), 3);
        assert_eq!(c.retransmit_limit(10), 12);
        assert_eq!(c.retransmit_limit(1000), 30);
        assert_eq!(c.suspicion_timeout_for(10), c.suspicion_timeout);
        assert_eq!(c.suspicion_timeout_for(64), Millis(c.suspicion_timeout.0 * 7 / 4));
    }

    #[test]
    fn lifeguard_suspicion_timeouts_shrink_from_max_to_min_with_confirmations() {
        let c = MembershipConfig::lan();
        let min = c.suspicion_timeout_for(10);
        let max = Millis(min.0 * 6);
        assert_eq!(c.expected_confirmations(10), 2);
        assert_eq!(c.expected_confirmations(3), 0, "a group of three cannot confirm twice");
        assert_eq!(c.lifeguard_suspicion_timeout(10, 0, 2), max);
        let one = c.lifeguard_suspicion_timeout(10, 1, 2);
        assert!(min < one && one < max, "{one}");
        // 18 s − 15 s · ln 2 / ln 3 = 8.536 s (memberlist's formula).
        assert_eq!(one, Millis(8536));
        assert_eq!(c.lifeguard_suspicion_timeout(10, 2, 2), min);
        assert_eq!(c.lifeguard_suspicion_timeout(10, 5, 2), min);
        assert_eq!(c.lifeguard_suspicion_timeout(3, 0, 0), c.suspicion_timeout_for(3));
    }

    #[test]
    fn validation_names_the_field() {
        let c = MembershipConfig { ping_timeout: Millis(5000), ..MembershipConfig::lan() };
        assert!(c.validate().unwrap_err().contains("ping_timeout"));
    }
}
