//! The consistent-hashing ring: node addresses and file names hashed (SHA-256, first 8 bytes) onto
//! a 64-bit circle.
//!
//! Invariants kept here:
//! * a position depends only on the address (not the member id), so a node that rejoins takes
//!   back its place;
//! * a file's replicas are the first `r` distinct nodes clockwise from its position (the first is
//!   its primary); with fewer than `r` nodes every node is a replica.

use super::FileName;
use crate::id::NodeAddr;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// A point on the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RingId(pub u64);

impl fmt::Display for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

fn hash64(bytes: &[u8]) -> RingId {
    let d = Sha256::digest(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    RingId(u64::from_be_bytes(b))
}

impl RingId {
    pub fn of_node(addr: NodeAddr) -> RingId {
        hash64(addr.to_string().as_bytes())
    }

    pub fn of_file(name: &str) -> RingId {
        hash64(name.as_bytes())
    }
}

/// The ring of live members (suspected members stay on it; only confirmed failures and leaves
/// take a node off).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ring {
    nodes: BTreeMap<RingId, NodeAddr>,
}

impl Ring {
    pub fn new(addrs: impl IntoIterator<Item = NodeAddr>) -> Ring {
        Ring { nodes: addrs.into_iter().map(|a| (RingId::of_node(a), a)).collect() }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn contains(&self, addr: NodeAddr) -> bool {
        self.nodes.get(&RingId::of_node(addr)) == Some(&addr)
    }

    /// Every node with its position, clockwise from zero.
    pub fn members(&self) -> impl Iterator<Item = (RingId, NodeAddr)> + '_ {
        self.nodes.iter().map(|(id, a)| (*id, *a))
    }

    /// The first `n` distinct nodes clockwise from `at` (inclusive).
    pub fn successors(&self, at: RingId, n: usize) -> Vec<NodeAddr> {
        self.nodes.range(at..).chain(self.nodes.range(..at)).take(n).map(|(_, a)| *a).collect()
    }

    /// The replicas of a file, primary first.
    pub fn replicas(&self, name: &str, r: usize) -> Vec<NodeAddr> {
        self.successors(RingId::of_file(name), r)
    }

    /// [`Ring::replicas`] of a validated name, from the ring id it carries (nothing hashed).
    pub fn replicas_of(&self, name: &FileName, r: usize) -> Vec<NodeAddr> {
        self.successors(name.ring_id(), r)
    }

    /// Nodes within `n` positions of `addr` on either side, nearest first, without `addr`.
    pub fn neighbours(&self, addr: NodeAddr, n: usize) -> Vec<NodeAddr> {
        let me = RingId::of_node(addr);
        let after = self.nodes.range(me..).chain(self.nodes.range(..me)).map(|(_, a)| *a);
        let before = self.nodes.range(..me).rev().chain(self.nodes.range(me..).rev()).map(|(_, a)| *a);
        let mut out: Vec<NodeAddr> = Vec::new();
        for a in after.filter(|a| *a != addr).take(n).chain(before.filter(|a| *a != addr).take(n)) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> NodeAddr {
        format!("10.0.0.{i}:7000").parse().unwrap()
    }

    #[test]
    fn replicas_are_distinct_successors_in_ring_order() {
        let ring = Ring::new((1..=10).map(addr));
        let order: Vec<NodeAddr> = ring.members().map(|(_, a)| a).collect();
        for name in ["a", "b", "Traffic_Signs.csv", "x/y"] {
            let reps = ring.replicas(name, 3);
            assert_eq!(reps.len(), 3);
            let first = order.iter().position(|a| *a == reps[0]).unwrap();
            for (k, r) in reps.iter().enumerate() {
                assert_eq!(*r, order[(first + k) % order.len()]);
            }
            // The primary is the first node at or after the file's position.
            let pos = RingId::of_file(name);
            let expect = ring.members().find(|(id, _)| *id >= pos).map(|(_, a)| a).unwrap_or(order[0]);
            assert_eq!(reps[0], expect);
        }
    }

    #[test]
    fn small_rings_replicate_everywhere_and_positions_follow_addresses() {
        let ring = Ring::new([addr(1), addr(2)]);
        assert_eq!(ring.replicas("f", 3).len(), 2);
        assert_eq!(RingId::of_node(addr(1)), RingId::of_node(addr(1)));
        assert_ne!(RingId::of_node(addr(1)), RingId::of_node(addr(2)));
        assert!(Ring::default().replicas("f", 3).is_empty());
    }

    #[test]
    fn neighbours_cover_both_sides_without_self() {
        let ring = Ring::new((1..=10).map(addr));
        let n = ring.neighbours(addr(3), 2);
        assert_eq!(n.len(), 4);
        assert!(!n.contains(&addr(3)));
        let small = Ring::new([addr(1), addr(2), addr(3)]);
        assert_eq!(small.neighbours(addr(1), 3).len(), 2);
    }
}
