//! Sealed files: one writer at a time, handed over by a seal.
//!
//! A seal is a write of kind [`WriteKind::Seal`] with no bytes. Its client (the stamp's member
//! id) becomes the file's *owner*; the seal names the owner before it (`prev`) and the last
//! sequence number of `prev`'s appends it keeps (`upto`). It is the fence a job's successor
//! leader puts on the job's destination: whatever the deposed leader still writes is then never
//! part of the file, even if that leader was declared failed falsely and is still running.
//!
//! A successor seals in two steps, as HDFS recovers a lease (fence, then settle the length):
//! 1. the *fence*: a seal keeping every append of `prev` (`upto` = `u64::MAX`). Each replica
//!    refuses `prev`'s new appends once it holds it, so `prev` gets no append acknowledged after
//!    the fence is, and none it had acknowledged is cut off;
//! 2. the *bound*: once it has merged the file and read what `prev` wrote, a second seal of the
//!    same term from the new owner, naming `prev` again, with `upto` the last of `prev`'s appends
//!    it read. An append of `prev` that surfaces later (one still being fetched, or one a
//!    crashed node restarts with, never acknowledged) is then no part of the file.
//!
//! What a file's seals mean is a function of the *set* of writes a copy holds, never of their
//! order, so every replica that holds the same writes agrees on it, whatever order merges and
//! partitions gave them ([`Owners::of`]):
//! * the chain starts at the file's creator; then, term by term, the seal with the least stamp
//!   among those naming the current owner as `prev` makes its client the next owner (two
//!   successors that raced resolve the same way everywhere; a seal naming anyone else, such as
//!   a stale one, is no part of the chain);
//! * the bound on an owner is the least `upto` among the seals of that term naming it that come
//!   from the next owner (the fence and the bound);
//! * an append is *kept* iff its client is an owner in the chain and its sequence is at most the
//!   bound on that owner (no bound for the last owner). A create and the seals themselves are
//!   always kept (seals hold no bytes).
//!
//! Invariants kept here (and asserted):
//! * a file with no seal keeps every write;
//! * the chain's owners are in increasing term order and each link's `prev` is the owner before;
//! * a replica admits a new append only from the current owner (so only if it would be kept),
//!   and a new seal only if it would extend the chain ([`Owners::admits`]), so that once every
//!   replica of a file holds a seal, the deposed writer gets no further write acknowledged;
//! * nothing is ever removed because of a seal: a copy keeps every write it took, and the seals
//!   only decide which of them are part of the file (its view, its digest and the merge fences),
//!   so a copy that met the seals in any order, or some of them late, shows the same file once
//!   it holds the same writes.
//!
//! Like a create's exclusiveness, a seal's is that of whole membership views: two successors
//! whose views differ (a partition) can both seal; when their copies meet, one chain wins
//! everywhere and the losing successor's appends stop being part of the file. A seal makes a
//! file single-writer: appends of a client outside the chain (one that wrote before the first
//! seal without being the creator) are not part of a sealed file.

use super::types::{Seal, Stamp, WriteKind, WriteMeta};
use crate::id::MemberId;
use std::collections::BTreeMap;

/// One owner in a file's chain: its member id and the last sequence number of its that the next
/// seal kept (`None` for the current owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    client: MemberId,
    /// Its appends after this sequence count (that of the seal that made it the owner; 0 for
    /// the first owner), so an owner that takes the file back does not bring back its appends
    /// a seal cut off.
    from: u64,
    upto: Option<u64>,
    /// The term of the seal that made it the owner (0 for the first owner).
    term: u64,
}

/// The owners of a sealed file, oldest first ([`Owners::of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owners {
    chain: Vec<Owner>,
    /// The term of the last seal in the chain.
    term: u64,
}

impl Owners {
    /// The owner chain the seals among `writes` make, or `None` if no seal counts (every write
    /// is then kept). The first owner is the file's creator (or, on a copy without the create,
    /// the first seal's `prev`).
    pub fn of<'a>(writes: impl IntoIterator<Item = &'a WriteMeta>) -> Option<Owners> {
        let mut creator = None;
        let mut by_term: BTreeMap<u64, Vec<(Stamp, Seal)>> = BTreeMap::new();
        for w in writes {
            match w.kind {
                WriteKind::Create => creator = Some(w.stamp.client),
                WriteKind::Seal(s) => by_term.entry(s.term).or_default().push((w.stamp, s)),
                WriteKind::Append => {}
            }
        }
        let first = by_term.values().flatten().min_by_key(|(stamp, s)| (s.term, *stamp))?;
        let client = creator.unwrap_or(first.1.prev);
        let mut chain = vec![Owner { client, from: 0, upto: None, term: 0 }];
        for (t, seals) in &by_term {
            let owner = chain.last().expect("a chain has an owner").client;
            // Of this term's seals, the one with the least stamp among those naming the owner
            // before them: a seal naming anyone else (a successor that lost a race, a stale
            // one, a bound on an earlier owner) is not a link of the chain.
            let Some((stamp, _)) = seals.iter().filter(|(_, s)| s.prev == owner).min_by_key(|(st, _)| *st)
            else {
                continue;
            };
            chain.push(Owner { client: stamp.client, from: stamp.seq, upto: None, term: *t });
        }
        if chain.len() < 2 {
            return None;
        }
        // The bound on each owner but the last: the least `upto` among the seals naming it that
        // come from a later owner (the fence and the bounds), sealed while it was not the owner
        // again.
        for i in 0..chain.len() - 1 {
            let client = chain[i].client;
            let later: Vec<MemberId> = chain[i + 1..].iter().map(|o| o.client).collect();
            let start = chain[i + 1].term;
            let end = chain[i + 1..].iter().find(|o| o.client == client).map_or(u64::MAX, |o| o.term);
            let upto = by_term
                .range(start..end)
                .flat_map(|(_, seals)| seals)
                .filter(|(st, s)| s.prev == client && later.contains(&st.client))
                .map(|(_, s)| s.upto)
                .min();
            chain[i].upto = Some(upto.unwrap_or(u64::MAX));
        }
        let term = chain.last().expect("a chain has an owner").term;
        debug_assert!(
            chain.iter().rev().skip(1).all(|o| o.upto.is_some()) && chain.last().unwrap().upto.is_none(),
            "every owner but the last is bounded by the seals after it"
        );
        debug_assert!(chain.windows(2).all(|w| w[0].term < w[1].term), "the chain's terms increase");
        Some(Owners { chain, term })
    }

    /// The file's current owner: the only client whose new appends it admits.
    pub fn owner(&self) -> MemberId {
        self.chain.last().expect("a chain has an owner").client
    }

    /// The term of the seal that made the current owner.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Whether `w` is part of the file: a create or a seal, or an append the chain keeps.
    pub fn keeps(&self, w: &WriteMeta) -> bool {
        match w.kind {
            WriteKind::Create | WriteKind::Seal(_) => true,
            WriteKind::Append => self.keeps_append(&w.stamp),
        }
    }

    /// Whether an append stamped `stamp` is part of the file.
    pub fn keeps_append(&self, stamp: &Stamp) -> bool {
        self.chain
            .iter()
            .any(|o| o.client == stamp.client && stamp.seq > o.from && o.upto.is_none_or(|u| stamp.seq <= u))
    }

    /// Whether the append `stamp` was cut off by a seal: its client is an earlier owner and a
    /// later seal kept only its appends up to a lower sequence. A reader that had such an append
    /// acknowledged no longer needs it.
    pub fn cut(&self, stamp: &Stamp) -> bool {
        !self.keeps_append(stamp) && self.chain.iter().any(|o| o.client == stamp.client && o.upto.is_some())
    }

    /// Whether a replica may take the new write `w` (one it does not hold yet): an append only
    /// from the current owner (a deposed owner's appends the chain keeps are those some replica
    /// took before it held the fence), a seal only if it extends the chain (a later term, naming
    /// the current owner as `prev`) or is the current owner's bound on the owner before it.
    pub fn admits(&self, w: &WriteMeta) -> bool {
        let admitted = match w.kind {
            WriteKind::Create => true,
            WriteKind::Append => w.stamp.client == self.owner() && self.keeps_append(&w.stamp),
            WriteKind::Seal(s) => {
                (s.term > self.term && s.prev == self.owner()) || self.bounds(w.stamp.client, s)
            }
        };
        debug_assert!(!admitted || self.keeps(w), "a replica admits only writes the chain keeps");
        admitted
    }

    /// Whether `s`, from `client`, is the current owner's bound on an earlier owner (a seal of
    /// the chain's last term naming that owner).
    fn bounds(&self, client: MemberId, s: Seal) -> bool {
        s.term == self.term && client == self.owner() && self.deposed(&s.prev)
    }

    /// The earlier owners no seal bounded yet (their appends are all kept): a new owner bounds
    /// each once it has read what they wrote.
    pub fn unbounded(&self) -> Vec<MemberId> {
        let earlier = self.chain.iter().rev().skip(1);
        let mut open: Vec<MemberId> =
            earlier.filter(|o| o.upto == Some(u64::MAX)).map(|o| o.client).collect();
        open.dedup();
        open.retain(|c| *c != self.owner());
        open
    }

    /// Whether `w`, which this copy does not admit, can never be admitted: an append of a
    /// deposed owner, or a seal of a term the chain already passed (other than a bound).
    pub fn stale(&self, w: &WriteMeta) -> bool {
        match w.kind {
            WriteKind::Create => false,
            WriteKind::Append => {
                let client = w.stamp.client;
                self.deposed(&client)
                    || (self.chain.iter().any(|o| o.client == client) && !self.keeps_append(&w.stamp))
            }
            WriteKind::Seal(s) => s.term <= self.term && !self.bounds(w.stamp.client, s),
        }
    }

    /// The bound on `client`'s appends, if it is an owner the chain deposed.
    pub fn bound_on(&self, client: &MemberId) -> Option<u64> {
        self.chain.iter().filter(|o| o.client == *client).filter_map(|o| o.upto).max()
    }

    /// Whether `client` owned the file before a seal handed it on.
    pub fn deposed(&self, client: &MemberId) -> bool {
        self.chain.iter().rev().skip(1).any(|o| o.client == *client) && *client != self.owner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn member(i: u16) -> MemberId {
        MemberId::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 7000 + i)), 1)
    }

    fn write(client: u16, seq: u64, kind: WriteKind) -> WriteMeta {
        WriteMeta { stamp: Stamp { ts: seq, client: member(client), seq }, kind, parts: Vec::new() }
    }

    fn seal(client: u16, seq: u64, term: u64, prev: u16, upto: u64) -> WriteMeta {
        write(client, seq, WriteKind::Seal(Seal { term, prev: member(prev), upto }))
    }

    #[test]
    fn no_seal_keeps_everything() {
        assert_eq!(Owners::of(&[write(1, 1, WriteKind::Create), write(2, 2, WriteKind::Append)]), None);
    }

    #[test]
    fn a_seal_keeps_the_previous_owners_appends_up_to_its_bound_and_the_new_owners() {
        let writes = [
            write(1, 1, WriteKind::Create),
            write(1, 2, WriteKind::Append),
            write(1, 3, WriteKind::Append),
            seal(2, 10, 1, 1, 2),
            write(2, 11, WriteKind::Append),
            write(3, 4, WriteKind::Append),
        ];
        let o = Owners::of(&writes).unwrap();
        let kept: Vec<bool> = writes.iter().map(|w| o.keeps(w)).collect();
        assert_eq!(kept, [true, true, false, true, true, false]);
        assert_eq!(o.owner(), member(2));
        assert!(o.cut(&writes[2].stamp), "the deposed owner's later append was cut");
        assert!(!o.cut(&writes[5].stamp), "a stranger's append is not kept, but was never cut");
        assert!(!o.admits(&write(1, 5, WriteKind::Append)));
        assert!(!o.admits(&write(1, 2, WriteKind::Append)), "kept, but a deposed owner adds nothing new");
        assert!(o.stale(&write(1, 2, WriteKind::Append)));
        assert!(o.admits(&write(2, 12, WriteKind::Append)));
        assert!(!o.admits(&seal(3, 20, 1, 2, 11)), "the same term again");
        assert!(!o.admits(&seal(3, 20, 2, 1, 3)), "a seal naming a deposed owner");
        assert!(o.admits(&seal(3, 20, 2, 2, 11)));
    }

    #[test]
    fn racing_seals_of_one_term_resolve_to_the_least_stamp_in_any_order() {
        let a = seal(2, 10, 1, 1, 2);
        let b = seal(3, 9, 1, 1, 3);
        let x = Owners::of([&a, &b]).unwrap();
        let y = Owners::of([&b, &a]).unwrap();
        assert_eq!(x, y);
        assert_eq!(x.owner(), member(3));
        assert!(!x.keeps(&write(2, 11, WriteKind::Append)), "the losing successor's appends are not kept");
        assert!(x.keeps(&write(1, 3, WriteKind::Append)), "the winner kept up to 3");
    }

    #[test]
    fn a_seal_naming_another_owner_is_no_part_of_the_chain() {
        let create = write(1, 1, WriteKind::Create);
        // Term 2: a stale seal naming the creator (with the least stamp) and one naming the
        // term-1 owner; term 3: one naming a stranger.
        let writes =
            [create, seal(2, 10, 1, 1, 2), seal(4, 15, 2, 1, 5), seal(3, 20, 2, 2, 11), seal(4, 30, 3, 9, 0)];
        let o = Owners::of(&writes).unwrap();
        assert_eq!((o.owner(), o.term()), (member(3), 2));
        assert!(o.keeps(&write(2, 11, WriteKind::Append)));
        assert!(!o.keeps(&write(2, 12, WriteKind::Append)));
        assert!(!o.keeps(&write(4, 31, WriteKind::Append)));
        assert!(!o.keeps(&write(1, 3, WriteKind::Append)), "the stale seal kept nothing more of the creator");
        assert!(o.stale(&write(2, 12, WriteKind::Append)), "cut off for good");
        assert!(!o.stale(&write(5, 1, WriteKind::Append)), "a writer this copy cannot place yet");
        assert!(o.stale(&seal(5, 40, 2, 3, 1)) && !o.stale(&seal(5, 40, 4, 5, 1)));
    }

    #[test]
    fn a_bound_after_the_fence_cuts_what_surfaces_later_in_any_order() {
        let create = write(1, 1, WriteKind::Create);
        let kept = write(1, 4, WriteKind::Append);
        let late = write(1, 6, WriteKind::Append);
        let fence = seal(2, 10, 1, 1, u64::MAX);
        let bound = seal(2, 12, 1, 1, 4);
        let fenced = Owners::of([&create, &kept, &fence]).unwrap();
        assert!(fenced.keeps(&late), "the fence alone keeps whatever the deposed owner wrote");
        assert!(!fenced.admits(&write(1, 7, WriteKind::Append)), "but it admits nothing new of it");
        assert!(fenced.admits(&bound), "the new owner's bound extends nothing, and is admitted");
        assert!(
            !fenced.admits(&seal(3, 13, 1, 1, 2)) && fenced.stale(&seal(3, 13, 1, 1, 2)),
            "a stranger's bound"
        );
        let x = Owners::of([&create, &kept, &fence, &bound, &late]).unwrap();
        let y = Owners::of([&late, &bound, &fence, &kept, &create]).unwrap();
        assert_eq!(x, y);
        assert!(x.keeps(&kept) && !x.keeps(&late), "the bound cuts what surfaced after it was read");
        assert_eq!((x.owner(), x.term(), x.bound_on(&member(1))), (member(2), 1, Some(4)));
    }

    #[test]
    fn a_seal_of_someone_other_than_the_creator_first_counts_for_nothing() {
        let writes = [write(1, 1, WriteKind::Create), seal(2, 10, 1, 7, 2)];
        assert_eq!(Owners::of(&writes), None);
    }
}
