//! Sealed files: one writer at a time, handed over by a seal.
//!
//! A seal is a write of kind [`WriteKind::Seal`] with no bytes. Its client (the stamp's member
//! id) becomes the file's *owner*; the seal names the owner before it (`prev`) and the last
//! sequence number of `prev`'s appends it keeps (`upto`). A job's leader uses it on the files it
//! commits to: its successor seals them, so whatever the deposed leader still writes is never
//! part of the file, even if that leader was declared failed falsely and is still running.
//!
//! What a file's seals mean is a function of the *set* of writes a copy holds, never of their
//! order, so every replica that holds the same writes agrees on it, whatever order merges and
//! partitions gave them ([`Owners::of`]):
//! * per term, the seal with the least stamp is the one that counts (two successors that raced
//!   resolve the same way everywhere);
//! * the chain starts at the seal of the lowest term; each seal of the next term counts only if
//!   its `prev` is the owner before it; the first one that does not ends the chain;
//! * an append is *kept* iff its client is an owner in the chain and its sequence is at most the
//!   bound the next seal put on that owner (no bound for the last owner). A create and the seals
//!   themselves are always kept (seals hold no bytes).
//!
//! Invariants kept here (and asserted):
//! * a file with no seal keeps every write;
//! * the chain's owners are in increasing term order and each link's `prev` is the owner before;
//! * a replica admits a new append only if it would be kept, and a new seal only if it would
//!   extend the chain ([`Owners::admits`]), so that once every replica of a file holds a seal,
//!   the deposed writer gets no further write acknowledged.

use super::types::{Seal, Stamp, WriteKind, WriteMeta};
use crate::id::MemberId;
use std::collections::BTreeMap;

/// One owner in a file's chain: its member id and the last sequence number of its that the next
/// seal kept (`None` for the current owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    client: MemberId,
    upto: Option<u64>,
}

/// The owners of a sealed file, oldest first ([`Owners::of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owners {
    chain: Vec<Owner>,
    /// The term of the last seal in the chain.
    term: u64,
}

impl Owners {
    /// The owner chain the seals among `writes` make, or `None` if there is no seal (every write
    /// is then kept).
    pub fn of<'a>(writes: impl IntoIterator<Item = &'a WriteMeta>) -> Option<Owners> {
        // Per term, the seal with the least stamp.
        let mut by_term: BTreeMap<u64, (Stamp, Seal)> = BTreeMap::new();
        for w in writes {
            if let WriteKind::Seal(s) = w.kind {
                let e = by_term.entry(s.term).or_insert((w.stamp, s));
                if w.stamp < e.0 {
                    *e = (w.stamp, s);
                }
            }
        }
        let mut seals = by_term.into_iter();
        let (term, (stamp, first)) = seals.next()?;
        let mut owners = Owners {
            chain: vec![
                Owner { client: first.prev, upto: Some(first.upto) },
                Owner { client: stamp.client, upto: None },
            ],
            term,
        };
        for (term, (stamp, seal)) in seals {
            let last = owners.chain.last_mut().expect("a chain has an owner");
            if seal.prev != last.client {
                break; // a seal of a branch that lost: the chain ends before it
            }
            last.upto = Some(seal.upto);
            owners.chain.push(Owner { client: stamp.client, upto: None });
            owners.term = term;
        }
        debug_assert!(
            owners.chain.windows(2).all(|w| w[0].upto.is_some())
                && owners.chain.last().unwrap().upto.is_none(),
            "every owner but the last is bounded by the seal after it"
        );
        Some(owners)
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

    fn keeps_append(&self, stamp: &Stamp) -> bool {
        self.chain.iter().any(|o| o.client == stamp.client && o.upto.is_none_or(|u| stamp.seq <= u))
    }

    /// Whether the append `stamp` was cut off by a seal: its client is an earlier owner and a
    /// later seal kept only its appends up to a lower sequence. A reader that had such an append
    /// acknowledged no longer needs it.
    pub fn cut(&self, stamp: &Stamp) -> bool {
        !self.keeps_append(stamp) && self.chain.iter().any(|o| o.client == stamp.client && o.upto.is_some())
    }

    /// Whether a replica may take the new write `w` (one it does not hold yet): an append only
    /// if the chain keeps it, a seal only if it extends the chain (a later term, naming the
    /// current owner as `prev`).
    pub fn admits(&self, w: &WriteMeta) -> bool {
        match w.kind {
            WriteKind::Create => true,
            WriteKind::Append => self.keeps_append(&w.stamp),
            WriteKind::Seal(s) => s.term > self.term && s.prev == self.owner(),
        }
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
    fn a_chain_ends_at_the_first_seal_that_does_not_follow_it() {
        let writes = [seal(2, 10, 1, 1, 2), seal(3, 20, 2, 2, 11), seal(4, 30, 3, 9, 0)];
        let o = Owners::of(&writes).unwrap();
        assert_eq!((o.owner(), o.term()), (member(3), 2));
        assert!(o.keeps(&write(2, 11, WriteKind::Append)));
        assert!(!o.keeps(&write(2, 12, WriteKind::Append)));
        assert!(!o.keeps(&write(4, 31, WriteKind::Append)));
    }
}
