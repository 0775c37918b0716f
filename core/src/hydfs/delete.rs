//! Deletes: [`super::ClientOp::Delete`] on its coordinator and on every other node, and the
//! tombstones that keep a deleted file from coming back.
//!
//! A delete goes, like a write, to a replica of the file (the coordinator). The coordinator
//! applies the file's tombstone `(name, create stamp)` itself (dropping its copy and freeing its
//! blocks) and sends `Remove` to every other member of its view: every member keeps the
//! tombstone in its durable index and drops any copy it holds, and answers once that is synced
//! (disks outlive restarts, so a node that was down during the delete may come back with a copy,
//! and any member may meet it). The delete is acknowledged when every replica of the
//! coordinator's current view has answered and the coordinator's own drop is synced.
//!
//! A copy that missed the delete (its holder was down or cut off) meets a tombstone later:
//! in an inventory, a description, an offer, an exists-check or a write's `Replicate`. The node
//! holding the tombstone then refuses the copy and tells its holder (`Remove`), which drops it;
//! a description or an offer also carries the deleted creates of its name, so their receiver
//! drops such a copy before reconciling. When the ring changes, the name's former replicas hand
//! its tombstone to the new ones, so tombstones follow the file's place on the ring.
//!
//! A create that failed is cancelled the same way, by the node whose client saw it fail, before
//! the failure is reported: a delete of that create's stamp alone, so that no replica that
//! stored it lets it appear later (the error says whether the cancel reached every replica).
//!
//! Invariants kept here:
//! * a delete is acknowledged, and a failed create reported as cancelled, only after every
//!   replica of the coordinator's current view (and never fewer than `min_copies`) dropped its
//!   copy and recorded the tombstone, durably;
//! * applying a tombstone drops the copy it covers (blocks freed) and ends all work on it, before
//!   anything else can touch it;
//! * one client delete of a name runs at a time on a coordinator; a retry joins it.

use super::message::{HydfsMsg, Refusal, ReqId};
use super::server::{Pending, RemoveWait};
use super::types::Stamp;
use super::{FileName, Hydfs, HydfsEvent, OpId, PlantedBug, Ring};
use crate::id::NodeAddr;
use crate::time::Time;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Default)]
pub(super) struct DeleteState {
    next_op: u64,
    running: BTreeMap<u64, CoordDelete>,
}

/// Who waits for a delete.
enum Requester {
    /// A client's `delete`: answered with `DeleteReply`.
    Client { to: NodeAddr, req: ReqId },
    /// This node's own create that failed, cancelled before its failure is reported: the
    /// client operation `op` ends when the cancel does.
    FailedCreate { op: OpId },
}

/// A delete this node coordinates.
struct CoordDelete {
    requester: Requester,
    name: FileName,
    create: Stamp,
    /// Members that dropped their copy (or had none) and answered.
    acked: BTreeSet<NodeAddr>,
    /// Members asked and not answered yet.
    asked: BTreeSet<NodeAddr>,
    started: Time,
    /// The store's change count when every replica had answered: the delete is acknowledged
    /// once a flush has made that much (the coordinator's own drop and tombstone) durable.
    durable_at: Option<u64>,
}

impl Hydfs {
    pub(super) fn on_delete(&mut self, now: Time, from: NodeAddr, req: ReqId, name: FileName) {
        self.handled("delete", &name, from);
        let refuse = |h: &mut Hydfs, r: Refusal| h.send(from, HydfsMsg::DeleteReply { req, result: Err(r) });
        if !self.replicas(&name).contains(&self.me) {
            return refuse(self, Refusal::NotReplica);
        }
        if self.ring.len() < self.min_copies() {
            let why =
                format!("{} live members; a delete needs {} copies", self.ring.len(), self.min_copies());
            return refuse(self, Refusal::Unavailable(why));
        }
        // A retry of a delete this node coordinates joins the running one.
        if let Some(d) = self
            .deletes
            .running
            .values_mut()
            .find(|d| d.name == name && matches!(d.requester, Requester::Client { .. }))
        {
            d.requester = Requester::Client { to: from, req };
            return;
        }
        let create = match self.store.file(&name).and_then(|r| r.create.as_ref()) {
            Some(c) => c.stamp,
            // Deleted here already (a retry whose answer was lost, or a second delete of the
            // same file): answered as the delete was.
            None => match self.tombstones.of_name(&name).last() {
                Some(c) => {
                    self.send(from, HydfsMsg::DeleteReply { req, result: Ok((c, Vec::new())) });
                    return;
                }
                None => return refuse(self, Refusal::NotFound),
            },
        };
        self.stats.deletes_coordinated += 1;
        self.start_delete(now, Requester::Client { to: from, req }, name, create);
    }

    /// Cancels this node's create `(name, stamp)` that failed: a delete of that create alone,
    /// coordinated here (this node need not be a replica), which ends client operation `op`.
    /// Another create of the name is untouched: tombstones name the create they delete.
    pub(super) fn cancel_create(&mut self, now: Time, op: OpId, name: FileName, stamp: Stamp) {
        self.stats.creates_cancelled += 1;
        self.start_delete(now, Requester::FailedCreate { op }, name, stamp);
    }

    fn start_delete(&mut self, now: Time, requester: Requester, name: FileName, create: Stamp) {
        self.apply_tombstone(now, &name, create);
        let op = self.deletes.next_op;
        self.deletes.next_op += 1;
        let d = CoordDelete {
            requester,
            name,
            create,
            acked: BTreeSet::new(),
            asked: BTreeSet::new(),
            started: now,
            durable_at: None,
        };
        self.deletes.running.insert(op, d);
        self.drive_delete(now, op);
    }

    /// Asks every member of the current view that has not answered to drop the file.
    fn drive_delete(&mut self, now: Time, op: u64) {
        let Some(d) = self.deletes.running.get(&op) else { return };
        let (name, create) = (d.name.clone(), d.create);
        let to: Vec<NodeAddr> = self
            .ring
            .members()
            .map(|(_, a)| a)
            .filter(|a| *a != self.me && !d.acked.contains(a) && !d.asked.contains(a))
            .collect();
        for t in to {
            let n = name.clone();
            self.ask(now, t, Pending::Remove { op: Some(op) }, |req| HydfsMsg::Remove {
                req,
                name: n,
                create,
            });
            if let Some(d) = self.deletes.running.get_mut(&op) {
                d.asked.insert(t);
            }
        }
        self.arm_retry(now);
    }

    pub(super) fn on_remove(&mut self, now: Time, from: NodeAddr, req: ReqId, name: FileName, create: Stamp) {
        self.handled("remove", &name, from);
        // Every member keeps the tombstone, not only the replicas: a node that was down during
        // the delete may come back with a copy (disks survive restarts) on a ring whose replicas
        // of the name were never told, and any member may meet it.
        self.apply_tombstone(now, &name, create);
        // The drop and the tombstone are durable before the answer (`progress` sends it after
        // a flush behind that began once they were made): a restart must not bring back a copy
        // whose delete was acknowledged.
        let until = now + self.cfg.request_timeout;
        let durable_at = Some(self.store.changes());
        self.server_remove_wait(RemoveWait { reply_to: from, req, until, durable_at });
    }

    pub(super) fn on_remove_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<(), Refusal>,
    ) {
        // Notices sent to holders of stale copies are not tracked: their answers end here.
        let Some(Pending::Remove { op: Some(op) }) = self.answered(req, from) else {
            return;
        };
        let Some(d) = self.deletes.running.get_mut(&op) else { return };
        d.asked.remove(&from);
        match result {
            Ok(()) => {
                d.acked.insert(from);
            }
            Err(_) => self.arm_retry(now),
        }
    }

    /// A `Remove` got no answer: ask again on the next retry.
    pub(super) fn remove_failed(&mut self, now: Time, op: Option<u64>, to: NodeAddr) {
        if let Some(d) = op.and_then(|op| self.deletes.running.get_mut(&op)) {
            d.asked.remove(&to);
            self.arm_retry(now);
        }
    }

    /// Acknowledges every delete that every replica of the current view has answered.
    pub(super) fn progress_deletes(&mut self, now: Time) {
        let answered: Vec<u64> = self
            .deletes
            .running
            .iter()
            .filter(|(_, d)| {
                let targets = self.replicas(&d.name);
                targets.len() >= self.min_copies()
                    && targets.iter().all(|t| *t == self.me || d.acked.contains(t))
            })
            .map(|(op, _)| *op)
            .collect();
        // The coordinator's own drop and tombstone are durable first.
        let mut done = Vec::new();
        for op in answered {
            let mut at = self.deletes.running.get(&op).and_then(|d| d.durable_at);
            let durable = self.durable_alone(now, &mut at);
            if let Some(d) = self.deletes.running.get_mut(&op) {
                d.durable_at = at;
            }
            match durable {
                Ok(true) => done.push(op),
                Ok(false) => {}
                // Answered when the coordinator timeout ends the deletes; a later flush may
                // still succeed and let them finish first.
                Err(_) => return,
            }
        }
        for op in done {
            let d = self.deletes.running.remove(&op).expect("present");
            let replicas = self.replicas(&d.name);
            debug_assert!(
                self.tombstones.contains(&d.name, d.create)
                    || self.cfg.bug(PlantedBug::DeleteWithoutTombstone),
                "the coordinator keeps the tombstone of what it deleted"
            );
            debug_assert!(
                self.store
                    .file(&d.name)
                    .is_none_or(|r| r.create.as_ref().is_some_and(|c| c.stamp != d.create)),
                "the coordinator holds no copy of what it deleted"
            );
            match d.requester {
                Requester::Client { to, req } => {
                    let result = Ok((d.create, replicas));
                    self.send(to, HydfsMsg::DeleteReply { req, result });
                }
                Requester::FailedCreate { op } => self.create_cancel_ended(now, op, true),
            }
        }
    }

    /// Re-asks members that have not answered (and new ones), and gives up on deletes older than
    /// the coordinator timeout.
    pub(super) fn retry_deletes(&mut self, now: Time) {
        let ops: Vec<u64> = self.deletes.running.keys().copied().collect();
        for op in ops {
            let Some(d) = self.deletes.running.get(&op) else { continue };
            if now >= d.started + self.cfg.coordinator_timeout {
                let d = self.deletes.running.remove(&op).expect("present");
                match d.requester {
                    Requester::Client { to, req } => {
                        let why = format!(
                            "replicas did not confirm the delete within {}",
                            self.cfg.coordinator_timeout
                        );
                        self.send(to, HydfsMsg::DeleteReply { req, result: Err(Refusal::Unavailable(why)) });
                    }
                    Requester::FailedCreate { op } => self.create_cancel_ended(now, op, false),
                }
                continue;
            }
            self.drive_delete(now, op);
        }
    }

    pub(super) fn deletes_running(&self) -> bool {
        !self.deletes.running.is_empty()
    }

    /// Drops answers from members that failed or restarted.
    pub(super) fn forget_delete_answers(&mut self, gone: &[NodeAddr]) {
        for d in self.deletes.running.values_mut() {
            d.acked.retain(|a| !gone.contains(a));
            d.asked.retain(|a| !gone.contains(a));
        }
    }

    /// File `(name, create)` is deleted: keep its tombstone, drop any copy of it (a copy without
    /// a create too) and end the work on it.
    pub(super) fn apply_tombstone(&mut self, now: Time, name: &FileName, create: Stamp) {
        if !self.cfg.bug(PlantedBug::DeleteWithoutTombstone) {
            self.tombstones.insert(now, name, create, self.cfg.tombstone_ttl);
            if !self.cfg.bug(PlantedBug::TombstonesNotDurable) {
                self.store.keep_tombstone(name, create);
            }
            for (n, s) in self.tombstones.take_forgotten() {
                self.store.forget_tombstone(&n, s);
            }
        }
        let copy = self.store.file(name).map(|r| r.create.as_ref().map(|c| c.stamp));
        if matches!(copy, Some(c) if c.is_none_or(|c| c == create)) {
            if self.cfg.bug(PlantedBug::DeleteKeepsBlocks) {
                self.store.forget_file(name);
            } else {
                self.store.drop_file(name);
            }
            self.stats.files_deleted += 1;
            self.events.push_back(HydfsEvent::FileDeleted { name: name.clone(), create });
        }
        self.forget_file_work(now, name, create);
        self.client_forget_deleted(name, create);
        debug_assert!(
            self.store.file(name).is_none_or(|r| r.create.as_ref().is_some_and(|c| c.stamp != create)),
            "no copy of a deleted file is kept"
        );
    }

    /// Tells `holder` that file `(name, create)` is deleted (its answer is not waited for).
    pub(super) fn tell_deleted(&mut self, _now: Time, holder: NodeAddr, name: &FileName, create: Stamp) {
        if holder == self.me {
            return;
        }
        let req = self.req_id();
        self.send(holder, HydfsMsg::Remove { req, name: name.clone(), create });
    }

    /// The ring changed from `old`: hands each tombstone of a name this node was a replica of to
    /// the members that became replicas of it, so that tombstones stay where copies would be.
    pub(super) fn hand_on_tombstones(&mut self, now: Time, old: &Ring) {
        if self.tombstones.is_empty() || !self.ring.contains(self.me) {
            return;
        }
        let r = self.cfg.replication;
        let mut notices: Vec<(NodeAddr, FileName, Stamp)> = Vec::new();
        for (name, create, t) in self.tombstones.iter() {
            let before = old.successors(t.ring_id, r);
            // Every member keeps tombstones; the name's replicas before the change hand them on,
            // so a change does not send each notice once per member.
            if !before.contains(&self.me) {
                continue;
            }
            for a in self.ring.successors(t.ring_id, r) {
                if a != self.me && !before.contains(&a) {
                    notices.push((a, name.clone(), create));
                }
            }
        }
        for (to, name, create) in notices {
            self.tell_deleted(now, to, &name, create);
        }
    }
}
