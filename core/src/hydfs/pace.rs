//! Anti-entropy pacing: how often a node asks its ring neighbours for their inventories, and
//! what it remembers of the last inventory each one sent.
//!
//! In a calm cluster (no ring change, no write, nothing to pull) every inventory exchange finds
//! the same thing, so the exchanges slow down: each calm round doubles the interval, from
//! `anti_entropy_interval` up to `anti_entropy_max_interval`. And an inventory that did not
//! change since the asker last received it is answered with one word instead of the whole list
//! ([`super::message::InventoryList::Unchanged`]); the asker then compares its files with the
//! list it kept.
//!
//! Invariants kept here:
//! * the interval is `base · 2^level`, never below `base` nor above `max` (asserted);
//! * anything that may leave a replica behind resets the level to 0 before the next round is
//!   paced: a ring change, a change of this node's own files, an inventory that changed or that
//!   showed something to pull, and an exchange that failed;
//! * `known` for a neighbour is the hash of exactly the list kept for it, so `Unchanged` is
//!   answered only for the list the asker holds.

use super::types::{FileDigest, Stamp};
use super::FileName;
use crate::id::NodeAddr;
use crate::time::{Millis, Time};
use crate::wire::canonical_bytes;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A hash of one node's inventory (its files and their digests, in name order).
pub type InventoryHash = u64;

/// One node's inventory, as sent in an inventory reply.
pub type Inventory = Vec<(FileName, FileDigest)>;

/// The hash both sides compute of an inventory.
pub fn inventory_hash(files: &Inventory) -> InventoryHash {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(canonical_bytes(files));
    u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest has 32 bytes"))
}

/// The last inventory a neighbour sent, kept to answer `Unchanged` replies (shared: a calm
/// round compares it again without copying it).
#[derive(Debug)]
struct Known {
    hash: InventoryHash,
    files: Arc<Inventory>,
}

#[derive(Debug)]
pub(super) struct InventoryPace {
    base: Millis,
    max: Millis,
    /// Calm rounds in a row (capped where the interval reaches `max`).
    level: u32,
    /// Something since the last round means a neighbour or this node may be behind.
    disturbed: bool,
    /// The hash of this node's own inventory at the last round.
    local: Option<InventoryHash>,
    /// When this node next asks its neighbours.
    next: Time,
    known: BTreeMap<NodeAddr, Known>,
}

impl InventoryPace {
    pub(super) fn new(base: Millis, max: Millis, now: Time) -> InventoryPace {
        let max = max.max(base);
        InventoryPace {
            base,
            max,
            level: 0,
            disturbed: true,
            local: None,
            next: now + base,
            known: BTreeMap::new(),
        }
    }

    /// The interval the current level stands for.
    pub(super) fn interval(&self) -> Millis {
        let stretched = self.base.0.saturating_mul(1u64 << self.level.min(32));
        let interval = Millis(stretched.min(self.max.0));
        debug_assert!(interval >= self.base && interval <= self.max, "interval outside [base, max]");
        interval
    }

    /// Whether the neighbours are due to be asked now.
    pub(super) fn due(&self, now: Time) -> bool {
        now >= self.next
    }

    /// Starts a round of asks: paces the next one by whether anything happened since the last
    /// (`local` is this node's inventory hash now). Neighbours no longer asked are forgotten.
    pub(super) fn begin_round(&mut self, now: Time, local: InventoryHash, neighbours: &[NodeAddr]) {
        if self.local != Some(local) {
            self.disturbed = true;
            self.local = Some(local);
        }
        if self.disturbed {
            self.level = 0;
        } else if self.interval() < self.max {
            self.level += 1;
        }
        self.disturbed = false;
        self.next = now + self.interval();
        self.known.retain(|addr, _| neighbours.contains(addr));
    }

    /// A neighbour or this node may be behind: the next round comes at the base interval.
    pub(super) fn disturb(&mut self, now: Time) {
        self.disturbed = true;
        self.level = 0;
        self.next = self.next.min(now + self.base);
    }

    /// The hash of what `peer` last sent, to ask it for changes only.
    pub(super) fn known(&self, peer: NodeAddr) -> Option<InventoryHash> {
        self.known.get(&peer).map(|k| k.hash)
    }

    /// A full inventory from `peer`: kept, and a change from the last one disturbs the pace.
    pub(super) fn received(&mut self, now: Time, peer: NodeAddr, files: Inventory) -> Arc<Inventory> {
        let hash = inventory_hash(&files);
        let changed = self.known.get(&peer).is_none_or(|k| k.hash != hash);
        if changed {
            self.disturb(now);
        }
        let files = Arc::new(files);
        self.known.insert(peer, Known { hash, files: files.clone() });
        files
    }

    /// `peer` answered that its inventory is the one kept for it; `None` when none is kept (a
    /// reply to an ask this node no longer remembers making): the pace is disturbed.
    pub(super) fn unchanged(&mut self, now: Time, peer: NodeAddr) -> Option<Arc<Inventory>> {
        if !self.known.contains_key(&peer) {
            self.disturb(now);
            return None;
        }
        let known = self.known.get(&peer)?;
        debug_assert_eq!(known.hash, inventory_hash(&known.files), "the kept hash is the kept list's");
        Some(known.files.clone())
    }

    /// Whether the inventory last received from `peer` lists `name` complete (none of its writes
    /// still being fetched) under the create stamp `create`; `None` when none is kept.
    pub(super) fn holds_complete(
        &self,
        peer: NodeAddr,
        name: &FileName,
        create: Option<Stamp>,
    ) -> Option<bool> {
        let files = &self.known.get(&peer)?.files;
        debug_assert!(files.windows(2).all(|w| w[0].0 < w[1].0), "an inventory is in name order");
        let held = files.binary_search_by(|(n, _)| n.cmp(name)).ok().map(|i| &files[i].1);
        Some(held.is_some_and(|d| d.incomplete == 0 && d.create == create))
    }

    /// What is kept of `peer`'s inventory is no longer trusted (its exchange failed, or it may
    /// have lost files).
    pub(super) fn forget(&mut self, now: Time, peer: NodeAddr) {
        self.known.remove(&peer);
        self.disturb(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> NodeAddr {
        format!("10.1.0.1:{port}").parse().expect("an address")
    }

    #[test]
    fn calm_rounds_double_the_interval_up_to_the_max_and_a_disturbance_resets_it() {
        let mut pace = InventoryPace::new(Millis(2000), Millis(32_000), Time(0));
        let peers = [addr(1)];
        let mut now = Time(2000);
        let mut intervals = Vec::new();
        for _ in 0..7 {
            assert!(pace.due(now));
            pace.begin_round(now, 7, &peers);
            intervals.push(pace.interval().0);
            now = now + pace.interval();
        }
        assert_eq!(intervals, vec![2000, 4000, 8000, 16_000, 32_000, 32_000, 32_000]);
        pace.disturb(now);
        assert!(pace.due(now + Millis(2000)));
        pace.begin_round(now, 7, &peers);
        assert_eq!(pace.interval(), Millis(2000));
        // A change of this node's own files is a disturbance too.
        pace.begin_round(now, 7, &peers);
        assert_eq!(pace.interval(), Millis(4000));
        pace.begin_round(now, 8, &peers);
        assert_eq!(pace.interval(), Millis(2000));
    }

    #[test]
    fn an_unchanged_reply_returns_the_kept_inventory_and_a_changed_one_disturbs() {
        let mut pace = InventoryPace::new(Millis(2000), Millis(32_000), Time(0));
        let peers = [addr(1)];
        pace.begin_round(Time(2000), 1, &peers);
        pace.begin_round(Time(4000), 1, &peers);
        assert_eq!(pace.interval(), Millis(4000));
        assert!(pace.unchanged(Time(4000), addr(1)).is_none(), "nothing kept yet");
        assert_eq!(pace.interval(), Millis(2000));
        let files: Inventory = Vec::new();
        pace.received(Time(4000), addr(1), files.clone());
        assert_eq!(pace.known(addr(1)), Some(inventory_hash(&files)));
        pace.begin_round(Time(6000), 1, &peers);
        pace.begin_round(Time(8000), 1, &peers);
        assert_eq!(pace.interval(), Millis(4000));
        assert_eq!(pace.unchanged(Time(8000), addr(1)), Some(Arc::new(files.clone())));
        pace.received(Time(8000), addr(1), files);
        assert_eq!(pace.interval(), Millis(4000), "the same inventory again is calm");
        pace.begin_round(Time(12_000), 1, &[]);
        assert_eq!(pace.known(addr(1)), None, "a node no longer a neighbour is forgotten");
    }
}
