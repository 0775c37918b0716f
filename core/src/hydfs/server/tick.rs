//! Driving: what moves the server's work on between messages (expired requests, the
//! coordinators' retries and timeouts, waiting fetches and local copies) and `progress`, which
//! sends every answer whose writes are now complete once they are durable (see below). Also
//! where work in flight changes course: when the ring changes (or a member restarts), writes and
//! merges in flight re-target at once rather than at their next retry, and answers from a member
//! that failed or restarted are forgotten; when a file is deleted, the work on it ends.
//!
//! Invariants kept here:
//! * a `Replicate`, `Install` or `Taken` answer, a coordinator's own acknowledgement of a write
//!   or a merge, and a coordinator's answer to a delete are sent only after the changes they
//!   cover are made and durable: each waits for a flush behind the node's back
//!   (`LocalStore::flush_behind`) that began after its changes were made (the store's change
//!   count noted then, and noted again if a part was dropped since), so the node goes on with
//!   other work while its disk flushes, and one flush per round covers every wait;
//! * a coordinator acknowledges a write only when every replica of its current view answered,
//!   and never with fewer than `min_copies` replicas;
//! * a write or a merge a coordinator could not complete in time (`coordinator_timeout`, plus a
//!   write's transfer allowance) is answered `Unavailable`.

use super::{Accepted, CoordMerge, FetchClass, MergePhase, Pending, RemoveWait};
use crate::hydfs::message::{HydfsMsg, Refusal, ReqId};
use crate::hydfs::types::{Stamp, WriteKind};
use crate::hydfs::{FileName, Hydfs, HydfsEvent, PlantedBug, StorageError};
use crate::id::NodeAddr;
use crate::time::Time;

/// How often the answers waiting for a background sync look again.
const SYNC_POLL_MS: u64 = 2;

impl Hydfs {
    pub(in crate::hydfs) fn server_tick(&mut self, now: Time) {
        // Requests that got no answer in time.
        let expired: Vec<ReqId> =
            self.server.requests.iter().filter(|(_, r)| r.deadline <= now).map(|(id, _)| *id).collect();
        for req in expired {
            self.request_failed(now, req);
        }
        if self.server.retry_at.is_some_and(|t| t <= now) {
            self.server.retry_at = None;
            self.retry(now);
        }
        if self.server.repair_wake.is_some_and(|t| t <= now) {
            self.server.repair_wake = None;
        }
        if self.server.sync_poll.is_some_and(|t| t <= now) {
            self.server.sync_poll = None; // `progress` (after this tick) asks again
        }
        self.pump_fetches(now);
        self.copy_local_parts();
        let until = now;
        self.server.replica_waits.retain(|w| w.until > until);
        self.server.installs.retain(|w| w.until > until);
        // Bytes counted for installs that gave up are not kept for the name.
        let installs = &self.server.installs;
        self.server.install_bytes.retain(|n, _| installs.iter().any(|w| &w.name == n));
        self.server.offers_in.retain(|w| w.until > until);
        self.server.removes.retain(|w| w.until > until);
    }

    /// Queues the answer to a coordinator's `Remove` until its changes are durable.
    pub(in crate::hydfs) fn server_remove_wait(&mut self, w: RemoveWait) {
        self.server.removes.push(w);
    }

    fn retry(&mut self, now: Time) {
        let timeout = self.cfg.coordinator_timeout;
        let ops: Vec<u64> = self.server.writes.keys().copied().collect();
        for op in ops {
            let Some(w) = self.server.writes.get(&op) else { continue };
            let allowed = timeout + self.cfg.transfer_allowance(w.write.len());
            if now >= w.started + allowed {
                let w = self.server.writes.remove(&op).expect("present");
                let checking = !w.checking.is_empty() || !w.unseen.is_empty();
                let why = match w.unseen.first() {
                    Some(m) if w.checking.is_empty() => format!(
                        "{} could not check that the name is free within {allowed}: other members list {m}, which it does not",
                        self.me
                    ),
                    _ if checking => {
                        format!("{} could not check that the name is free within {allowed}", self.me)
                    }
                    None | Some(_) => format!("replicas did not confirm the write within {allowed}"),
                };
                if checking {
                    // Never replicated: this node's tentative copy goes with it.
                    self.abandon_create(&w.name, w.write.stamp);
                }
                self.send(
                    w.client,
                    HydfsMsg::WriteReply {
                        req: w.client_req,
                        result: Err(Refusal::Unavailable(why)),
                        create: None,
                    },
                );
                continue;
            }
            // Replicas that left the ring are no longer waited for; new ones are asked.
            let (name, write, source, create) = (w.name.clone(), w.write.clone(), w.source, w.create);
            if !self.store.holds_write(&name, &write.stamp) {
                // Its file here was deleted, or replaced by another file of the name.
                if let Accepted::Deleted | Accepted::OtherFile =
                    self.accept_write(now, &name, &write, None, &[source], create)
                {
                    self.fail_write(op, Refusal::Deleted);
                    continue;
                }
            } else {
                let mut sources = vec![source];
                sources.extend(self.replicas(&name));
                self.ensure_write(now, &name, &write, &sources, FetchClass::Write);
            }
            self.drive_write(now, op);
        }
        let names: Vec<FileName> = self.server.merges.keys().cloned().collect();
        for name in names {
            let Some(m) = self.server.merges.get_mut(&name) else { continue };
            if now >= m.started + timeout {
                let m = self.server.merges.remove(&name).expect("present");
                let why = format!("replicas did not complete the merge within {}", timeout);
                self.send(
                    m.client,
                    HydfsMsg::MergeReply { req: m.client_req, result: Err(Refusal::Unavailable(why)) },
                );
                self.next_merge(now, &name);
                continue;
            }
            let ring = &self.ring;
            let me = self.me;
            m.targets.retain(|t| *t == me || ring.contains(*t));
            if let MergePhase::Collecting { replied, .. } = &m.phase {
                let missing: Vec<NodeAddr> =
                    m.targets.iter().copied().filter(|t| !replied.contains(t)).collect();
                for t in missing {
                    let asked =
                        self.server.requests.values().any(|r| {
                            r.to == t && matches!(&r.what, Pending::Collect { name: n } if *n == name)
                        });
                    if !asked {
                        let n = name.clone();
                        self.ask(now, t, Pending::Collect { name: name.clone() }, |req| HydfsMsg::Collect {
                            req,
                            name: n,
                        });
                    }
                }
            }
            if let Some(CoordMerge { phase: MergePhase::Fetching { union, .. }, .. }) =
                self.server.merges.get(&name)
            {
                let union = union.clone();
                let mut sources = self.replicas(&name);
                sources.retain(|s| *s != self.me);
                for w in &union {
                    self.ensure_write(now, &name, w, &sources, FetchClass::Merge);
                }
            }
            self.send_installs(now, &name);
            self.advance_merge(now, &name);
        }
        self.retry_deletes(now);
        if !self.server.writes.is_empty() || !self.server.merges.is_empty() || self.deletes_running() {
            self.arm_retry(now);
        }
    }

    fn request_failed(&mut self, now: Time, req: ReqId) {
        let Some(r) = self.server.requests.remove(&req) else { return };
        match r.what {
            Pending::Replicate { op } => {
                if let Some(w) = self.server.writes.get_mut(&op) {
                    w.asked.remove(&r.to);
                }
                self.arm_retry(now);
            }
            Pending::Collect { name } => {
                // A replica that cannot be reached is waited for until the ring drops it.
                let _ = name;
                self.arm_retry(now);
            }
            Pending::Install { name } => {
                if let Some(CoordMerge { phase: MergePhase::Installing { asked, .. }, .. }) =
                    self.server.merges.get_mut(&name)
                {
                    asked.remove(&r.to);
                }
                self.arm_retry(now);
            }
            Pending::Fetch { key } => {
                if let Some(job) = self.server.fetches.get_mut(&key) {
                    job.in_flight = None;
                }
                self.next_fetch(now, key);
            }
            Pending::Exists { op } => {
                // An unreachable member cannot hold the name for a reader either; a create does not
                // wait for it.
                if let Some(w) = self.server.writes.get_mut(&op) {
                    w.checking.remove(&r.to);
                }
                self.drive_write(now, op);
            }
            Pending::Remove { op } => self.remove_failed(now, op, r.to),
            Pending::Inventory => self.inventory_pace.forget(now, r.to),
            Pending::Describe { .. } => self.inventory_pace.disturb(now),
        }
    }

    pub(in crate::hydfs) fn server_send_failed(&mut self, now: Time, to: NodeAddr) {
        let failed: Vec<ReqId> =
            self.server.requests.iter().filter(|(_, r)| r.to == to).map(|(id, _)| *id).collect();
        for req in failed {
            self.request_failed(now, req);
        }
    }

    /// Sends every answer whose writes are now complete and durable, after a flush behind the
    /// node's back (one per round covers them all).
    pub(in crate::hydfs) fn progress(&mut self, now: Time) {
        // Every answer waits for a flush behind: the node handles other messages while it runs.
        let mut behind = self.round_behind();
        // Replicas' answers to coordinators.
        let waits = std::mem::take(&mut self.server.replica_waits);
        for mut w in waits {
            let complete = self
                .store
                .file(&w.name)
                .and_then(|r| r.find(&w.stamp))
                .is_some_and(|wm| self.store.still_complete(&w.name, wm, w.durable_at));
            if !complete {
                // Lost again meanwhile (a corrupt part): durable only after its next flush.
                w.durable_at = None;
            } else if self.durable_since(&mut w.durable_at, &mut behind) == Durable::Yes {
                self.send(w.reply_to, HydfsMsg::ReplicateReply { req: w.req, result: Ok(()) });
                continue;
            }
            self.server.replica_waits.push(w);
        }
        // Coordinators: own copy, then everyone's.
        let ops: Vec<u64> = self.server.writes.keys().copied().collect();
        for op in ops {
            let Some(w) = self.server.writes.get(&op) else { continue };
            let local = self
                .store
                .file(&w.name)
                .and_then(|r| r.find(&w.write.stamp))
                .is_some_and(|wm| self.store.still_complete(&w.name, wm, w.durable_at));
            if local && !w.acked.contains(&self.me) {
                let mut at = w.durable_at;
                let durable = self.durable_since(&mut at, &mut behind);
                if let Some(w) = self.server.writes.get_mut(&op) {
                    w.durable_at = at;
                    if durable == Durable::Yes {
                        w.acked.insert(self.me);
                    }
                }
            } else if !local {
                // The own copy was lost (a corrupt part found by the scrubber), or is not whole
                // yet: fetch it again before acknowledging, and count only a flush after that.
                if let Some(w) = self.server.writes.get_mut(&op) {
                    w.acked.remove(&self.me);
                    w.durable_at = None;
                }
            }
            let w = &self.server.writes[&op];
            let targets = self.replicas(&w.name);
            // Every replica of the current view, and never fewer than `min_copies` of them: a view
            // shrunk by a partition must not acknowledge a write that two crashes could then lose.
            let done = if self.cfg.bug(PlantedBug::AckAfterOneReplica) {
                w.acked.contains(&self.me)
            } else {
                targets.len() >= self.min_copies() && targets.iter().all(|t| w.acked.contains(t))
            };
            if done {
                let w = self.server.writes.remove(&op).expect("present");
                let replicas: Vec<NodeAddr> = targets.into_iter().filter(|t| w.acked.contains(t)).collect();
                let create = w.create;
                self.send(
                    w.client,
                    HydfsMsg::WriteReply { req: w.client_req, result: Ok(replicas.clone()), create },
                );
                self.events.push_back(HydfsEvent::WriteCommitted {
                    name: w.name,
                    stamp: w.write.stamp,
                    replicas,
                });
            }
        }
        // Replicas' answers to merge installs.
        // An install is answered once it is applied and synced. While a background sync runs
        // it stays applied and waits (a later round finds it applied); only a sync that failed
        // is answered as such.
        let installs = std::mem::take(&mut self.server.installs);
        // First every install that can be is applied, then one sync covers them all.
        let mut ready = Vec::new();
        for mut w in installs {
            if !w.appended.iter().all(|a| self.store.is_complete(&w.name, a)) {
                self.server.installs.push(w);
                continue;
            }
            // Applied in an earlier round, and the copy has not moved elsewhere since (an empty
            // install: the copy is still at `base`).
            let still = if w.appended.is_empty() {
                self.store.merged_hash(&w.name) == Some(w.base)
            } else {
                self.install_applied(&w.name, w.base, &w.appended)
            };
            let bytes = match w.applied {
                Some(bytes) if still => bytes,
                // A copy of this install that arrived earlier applied it (and counted its bytes).
                None if !w.appended.is_empty() && still => 0,
                None if self.install_locally(&w.name, w.base, &w.appended) => {
                    self.server.install_bytes.remove(&w.name).unwrap_or(0)
                }
                Some(_) | None => {
                    let result = Err(Refusal::Behind);
                    self.send(w.reply_to, HydfsMsg::InstallReply { req: w.req, result });
                    continue;
                }
            };
            w.applied = Some(bytes);
            ready.push(w);
        }
        for mut w in ready {
            let result = match self.durable_since(&mut w.durable_at, &mut behind) {
                Durable::Yes => Ok(w.applied.unwrap_or(0)),
                Durable::Soon => {
                    self.server.installs.push(w);
                    continue;
                }
                Durable::Never => Err(Refusal::Unavailable("storage failed to sync".into())),
            };
            self.send(w.reply_to, HydfsMsg::InstallReply { req: w.req, result });
        }
        // Answers to coordinators' removes.
        let removes = std::mem::take(&mut self.server.removes);
        for mut w in removes {
            let result = match self.durable_since(&mut w.durable_at, &mut behind) {
                Durable::Yes => Ok(()),
                Durable::Soon => {
                    self.server.removes.push(w);
                    continue;
                }
                Durable::Never => {
                    let why = behind.failed.clone().unwrap_or_else(|| "storage failed".into());
                    Err(Refusal::StorageFailed(format!("{}: {why}", self.me)))
                }
            };
            self.send(w.reply_to, HydfsMsg::RemoveReply { req: w.req, result });
        }
        // Owners' answers to hand-off offers.
        let offers = std::mem::take(&mut self.server.offers_in);
        for mut o in offers {
            let mine = self.store.file(&o.meta.name).cloned().unwrap_or_default();
            let covered = o.meta.all_writes().filter(|w| !o.meta.incomplete.contains(&w.stamp)).all(|w| {
                let losing_create =
                    w.kind == WriteKind::Create && mine.create.as_ref().is_some_and(|c| c.stamp < w.stamp);
                losing_create || mine.find(&w.stamp).is_some_and(|m| self.store.is_complete(&o.meta.name, m))
            });
            if !covered {
                // Not all held yet (or lost again meanwhile): count only a flush after that.
                o.durable_at = None;
                self.server.offers_in.push(o);
            } else if self.durable_since(&mut o.durable_at, &mut behind) == Durable::Yes {
                let hash = o.meta.digest().hash;
                self.send(o.from, HydfsMsg::Taken { name: o.meta.name.clone(), hash });
            } else {
                self.server.offers_in.push(o);
            }
        }
        // Deletes every replica has answered.
        self.progress_deletes(now);
        // Merges waiting for parts.
        let names: Vec<FileName> = self.server.merges.keys().cloned().collect();
        for name in names {
            self.advance_merge(now, &name);
        }
        match behind.failed {
            Some(e) => self.fail_writes(None, &e),
            // The runtime also wakes the node when a flush ends; the poll covers storage that
            // does not (the simulator's) and a wake that comes while the node is busy.
            None if behind.waiting => self.poll_sync(now),
            None => {}
        }
    }

    /// The state of one round of waits for flushes behind (the planted bugs that skip them
    /// included).
    fn round_behind(&self) -> Behind {
        Behind {
            skip: self.cfg.bug(PlantedBug::AckBeforeSync),
            began_is_enough: self.cfg.bug(PlantedBug::AckWhenFlushBegins),
            ..Behind::default()
        }
    }

    /// [`Hydfs::durable_since`] for one wait outside a `progress` round: `Ok(true)` once the
    /// changes up to `at` are durable, `Ok(false)` while a flush behind still runs (a poll is
    /// armed; the flush's end wakes the node too), or why storage failed.
    pub(in crate::hydfs) fn durable_alone(
        &mut self,
        now: Time,
        at: &mut Option<u64>,
    ) -> Result<bool, String> {
        let mut behind = self.round_behind();
        let durable = self.durable_since(at, &mut behind);
        if behind.waiting {
            self.poll_sync(now);
        }
        match durable {
            Durable::Yes => Ok(true),
            Durable::Soon => Ok(false),
            Durable::Never => Err(behind.failed.unwrap_or_else(|| "storage failed".into())),
        }
    }

    /// Whether this node's copy of a complete write is durable, without waiting for storage:
    /// `at` notes the change count when the copy was first found complete, and the answer is
    /// `Yes` once the store's durable count reaches it. Until then one flush behind per round
    /// covers every copy still waiting.
    fn durable_since(&mut self, at: &mut Option<u64>, behind: &mut Behind) -> Durable {
        if behind.skip {
            return Durable::Yes;
        }
        if behind.failed.is_some() {
            return Durable::Never;
        }
        let noted = at.get_or_insert(self.store.changes());
        if self.store.last_drop() >= *noted {
            // A part or a write may have left the copy and come back since it was noted: count
            // from now.
            *noted = self.store.changes();
        }
        let at = *noted;
        // Once per round (and again after the round's flush began): the waits share it.
        let mut durable = match behind.durable {
            Some(d) => Ok(d),
            None => self.store.durable_through(),
        };
        if matches!(durable, Ok(d) if d < at) && !behind.flushed {
            behind.flushed = true;
            durable = match self.store.flush_behind() {
                Ok(began) => {
                    if began {
                        self.stats.syncs += 1;
                    }
                    self.store.durable_through()
                }
                Err(StorageError::InProgress) => self.store.durable_through(),
                Err(e) => Err(e),
            };
            if behind.began_is_enough && durable.is_ok() {
                return Durable::Yes;
            }
        }
        behind.durable = durable.as_ref().ok().copied();
        match durable {
            Ok(d) if d >= at => Durable::Yes,
            Ok(_) => {
                behind.waiting = true;
                Durable::Soon
            }
            Err(e) => {
                self.storage_failed(&e.to_string());
                behind.failed = Some(e.to_string());
                Durable::Never
            }
        }
    }

    /// A background sync is running: come back to the answers waiting for it shortly.
    pub(in crate::hydfs) fn poll_sync(&mut self, now: Time) {
        let at = now + crate::time::Millis(SYNC_POLL_MS);
        self.server.sync_poll = Some(self.server.sync_poll.map_or(at, |t| t.min(at)));
    }

    pub(in crate::hydfs) fn on_ring_changed(&mut self, now: Time) {
        self.server.offers_taken.clear();
        self.inventory_pace.disturb(now);
        self.retarget_now(now);
    }

    /// Writes and merges in flight re-target at once (the ring changed, or a member restarted
    /// and may have lost what it acknowledged): writes stop waiting for replicas that left the
    /// ring and ask the ones that joined it or came back; merges stop waiting for replicas that
    /// left.
    pub(in crate::hydfs) fn retarget_now(&mut self, now: Time) {
        if self.cfg.bug(PlantedBug::WriteFailoverWaits) {
            self.arm_retry(now);
        } else {
            self.server.retry_at = Some(now);
        }
    }

    /// Drops acknowledgements from members that have since failed or restarted.
    pub(in crate::hydfs) fn forget_answers_from(&mut self, gone: &[NodeAddr]) {
        for w in self.server.writes.values_mut() {
            w.acked.retain(|a| !gone.contains(a));
            w.asked.retain(|a| !gone.contains(a));
        }
        for m in self.server.merges.values_mut() {
            if let MergePhase::Installing { acked, asked, .. } = &mut m.phase {
                acked.retain(|a| !gone.contains(a));
                asked.retain(|a| !gone.contains(a));
            }
            if let MergePhase::Collecting { replied, .. } = &mut m.phase {
                replied.retain(|a| !gone.contains(a));
            }
        }
        for taken in self.server.offers_taken.values_mut() {
            taken.retain(|a, _| !gone.contains(a));
        }
        self.forget_delete_answers(gone);
    }

    /// This node dropped its copy of `name`, the file created by `create` (deleted): the work
    /// on that copy ends now. Writes of that file it coordinates, merges, installs and replica
    /// answers waiting for its writes are refused as `Deleted`; fetches, local copies, offers
    /// and hand-off state of the name are forgotten.
    pub(in crate::hydfs) fn forget_file_work(&mut self, now: Time, name: &FileName, create: Stamp) {
        let ops: Vec<u64> = self
            .server
            .writes
            .iter()
            .filter(|(_, w)| &w.name == name && w.create.is_none_or(|c| c == create))
            .map(|(op, _)| *op)
            .collect();
        for op in ops {
            self.fail_write(op, Refusal::Deleted);
        }
        let held = |h: &Hydfs, s: &Stamp| h.store.file(name).is_some_and(|r| r.contains(s));
        let waits = std::mem::take(&mut self.server.replica_waits);
        for w in waits {
            if &w.name == name && !held(self, &w.stamp) {
                self.send(w.reply_to, HydfsMsg::ReplicateReply { req: w.req, result: Err(Refusal::Deleted) });
            } else {
                self.server.replica_waits.push(w);
            }
        }
        if self.store.file(name).is_none() {
            if let Some(m) = self.server.merges.remove(name) {
                self.send(
                    m.client,
                    HydfsMsg::MergeReply { req: m.client_req, result: Err(Refusal::Deleted) },
                );
            }
            for (client, req, _) in self.server.merge_queue.remove(name).unwrap_or_default() {
                self.send(client, HydfsMsg::MergeReply { req, result: Err(Refusal::Deleted) });
            }
            let installs = std::mem::take(&mut self.server.installs);
            for w in installs {
                if &w.name == name {
                    self.send(
                        w.reply_to,
                        HydfsMsg::InstallReply { req: w.req, result: Err(Refusal::Deleted) },
                    );
                } else {
                    self.server.installs.push(w);
                }
            }
            self.server.offers_in.retain(|o| &o.meta.name != name);
            self.server.offers_taken.remove(name);
            self.server.install_bytes.remove(name);
        }
        let gone = |h: &Hydfs, (n, s, _): &(FileName, Stamp, u32)| n == name && !held(h, s);
        let fetches: Vec<(FileName, Stamp, u32)> =
            self.server.fetches.keys().filter(|k| gone(self, k)).cloned().collect();
        for k in fetches {
            self.server.fetches.remove(&k);
        }
        let copies: Vec<(FileName, Stamp, u32)> =
            self.server.local_copies.iter().filter(|k| gone(self, k)).cloned().collect();
        for k in copies {
            self.server.local_copies.remove(&k);
        }
        let store = &self.store;
        self.server
            .incomplete_since
            .retain(|(n, s), _| n != name || store.file(n).is_some_and(|r| r.contains(s)));
        self.pump_fetches(now);
    }
}

/// One round of `progress`'s waits for flushes behind.
#[derive(Default)]
struct Behind {
    /// The planted bug `ack-before-sync`: nothing is waited for.
    skip: bool,
    /// The planted bug `ack-when-flush-begins`: a flush that began counts as done.
    began_is_enough: bool,
    /// A flush behind was asked for in this round (one covers every wait).
    flushed: bool,
    /// Some answer waits for a flush still under way.
    waiting: bool,
    /// The store's durable count, as read in this round.
    durable: Option<u64>,
    /// Why storage failed, if it did.
    failed: Option<String>,
}

/// Whether the changes an answer needs are durable: what one `progress` round's sync, or the
/// flushes behind, say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durable {
    /// Synced: answers that need them may go.
    Yes,
    /// A background sync is running: answers wait for a later round.
    Soon,
    /// Storage failed to sync: answers that need it fail.
    Never,
}
