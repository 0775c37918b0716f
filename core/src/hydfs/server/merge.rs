//! Merges: a coordinator's side (`on_merge`: `Collect` the complete pending appends of every
//! replica, fetch those it lacks, order them by stamp, install them on its own copy, then
//! `Install` them on every replica) and a replica's (`on_install`: take the same appends in the
//! same order, fetching any it lacks; the answer is sent by `progress`, `tick.rs`, once synced).
//!
//! Invariants kept here:
//! * one merge per file at a time on a coordinator; later requests queue behind it;
//! * a merge installs what it collected only on the merged order it collected against (its
//!   `base`, the fence), so a write is never merged twice, even when two coordinators merge one
//!   file at once;
//! * a replica installs a merge only on a copy whose merged order is `base`; a copy elsewhere
//!   answers `Behind` and is repaired from the coordinator, and an install already applied is
//!   answered as done once it is synced;
//! * a merge is answered only when every one of its replicas still on the ring installed it,
//!   the coordinator's own copy counting once it is synced.

use super::{CoordMerge, FetchClass, InstallWait, MergePhase, Pending};
use crate::hydfs::message::{HydfsMsg, InstallRequest, MergeSummary, Refusal, ReqId};
use crate::hydfs::seal::Owners;
use crate::hydfs::types::{order_hash, Stamp, WriteMeta};
use crate::hydfs::{FileName, Hydfs, HydfsEvent, PlantedBug};
use crate::id::NodeAddr;
use crate::time::Time;
use std::collections::{BTreeMap, BTreeSet};

impl Hydfs {
    pub(in crate::hydfs) fn on_merge(&mut self, now: Time, from: NodeAddr, req: ReqId, name: FileName) {
        self.handled("merge", &name, from);
        if self.store.file(&name).is_none_or(|r| r.create.is_none()) {
            self.send(from, HydfsMsg::MergeReply { req, result: Err(Refusal::NotFound) });
            return;
        }
        if !self.replicas(&name).contains(&self.me) {
            self.send(from, HydfsMsg::MergeReply { req, result: Err(Refusal::NotReplica) });
            return;
        }
        if let Some(limit) = self.at_transfer_limit() {
            self.send(from, HydfsMsg::MergeReply { req, result: Err(Refusal::Busy { limit }) });
            return;
        }
        if self.server.merges.contains_key(&name) {
            self.server.merge_queue.entry(name).or_default().push_back((from, req, now));
            return;
        }
        self.start_merge(now, from, req, name);
    }

    fn start_merge(&mut self, now: Time, client: NodeAddr, client_req: ReqId, name: FileName) {
        self.stats.merges_coordinated += 1;
        let targets = self.replicas(&name);
        let mut found = BTreeMap::new();
        if let Some(rec) = self.store.file(&name) {
            let held = self.store.held_parts(&name);
            for w in rec.pending.values().filter(|w| held.is_complete(w)) {
                found.insert(w.stamp, (w.clone(), vec![self.me]));
            }
        }
        let mut replied = BTreeSet::new();
        replied.insert(self.me);
        let me = self.me;
        for t in targets.iter().copied().filter(|t| *t != me) {
            let n = name.clone();
            self.ask(now, t, Pending::Collect { name: name.clone() }, |req| HydfsMsg::Collect {
                req,
                name: n,
            });
        }
        self.server.merges.insert(
            name,
            CoordMerge {
                client,
                client_req,
                started: now,
                targets,
                phase: MergePhase::Collecting { replied, found },
                bytes_moved: 0,
            },
        );
        self.arm_retry(now);
    }

    pub(in crate::hydfs) fn on_collect(&mut self, from: NodeAddr, req: ReqId, name: FileName) {
        let result = match self.store.file(&name) {
            Some(rec) => {
                let owners = self.seal_owners(rec.writes());
                let held = self.store.held_parts(&name);
                Ok(rec
                    .pending
                    .values()
                    .filter(|w| held.is_complete(w))
                    .filter(|w| owners.as_ref().is_none_or(|o| o.keeps(w)))
                    .cloned()
                    .collect())
            }
            None => Err(Refusal::NotFound),
        };
        self.send(from, HydfsMsg::CollectReply { req, result });
    }

    pub(in crate::hydfs) fn on_collect_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<Vec<WriteMeta>, Refusal>,
    ) {
        let Some(Pending::Collect { name }) = self.answered(req, from) else {
            return;
        };
        let Some(m) = self.server.merges.get_mut(&name) else { return };
        let MergePhase::Collecting { replied, found } = &mut m.phase else { return };
        replied.insert(from);
        for w in result.unwrap_or_default() {
            found.entry(w.stamp).or_insert_with(|| (w.clone(), Vec::new())).1.push(from);
        }
        self.advance_merge(now, &name);
    }

    pub(super) fn advance_merge(&mut self, now: Time, name: &FileName) {
        let Some(m) = self.server.merges.get_mut(name) else { return };
        match &mut m.phase {
            MergePhase::Collecting { replied, found } => {
                if !m.targets.iter().all(|t| replied.contains(t)) {
                    return;
                }
                let merged: BTreeSet<Stamp> = self
                    .store
                    .file(name)
                    .map(|r| r.merged.iter().map(|w| w.stamp).collect())
                    .unwrap_or_default();
                let mut found = std::mem::take(found);
                // Of what the replicas hold, only what the file's seals keep (as the replicas'
                // seals and this copy's say) is merged.
                let seals = self
                    .store
                    .file(name)
                    .into_iter()
                    .flat_map(|r| r.writes())
                    .chain(found.values().map(|(w, _)| w));
                let ignored = self.cfg.bug(PlantedBug::SealIgnored);
                if let Some(owners) = Owners::of(seals).filter(|_| !ignored) {
                    found.retain(|_, (w, _)| owners.keeps(w));
                }
                let union: Vec<WriteMeta> = found
                    .values()
                    .filter(|(w, _)| !merged.contains(&w.stamp))
                    .map(|(w, _)| w.clone())
                    .collect();
                let base = self.store.merged_hash(name).unwrap_or(0);
                m.phase = MergePhase::Fetching { union: union.clone(), base };
                for (w, sources) in found.into_values() {
                    if merged.contains(&w.stamp) {
                        continue;
                    }
                    let rec = self.store.file_mut(name);
                    if !rec.contains(&w.stamp) {
                        rec.pending.insert(w.stamp, w.clone());
                    }
                    self.ensure_write(now, name, &w, &sources, FetchClass::Merge);
                }
                self.advance_merge(now, name);
            }
            MergePhase::Fetching { union, base } => {
                if !union.iter().all(|w| self.store.is_complete(name, w)) {
                    return;
                }
                let collected_on = *base;
                let mut appended = std::mem::take(union);
                appended.sort_by_key(|w| w.stamp);
                if self.cfg.bug(PlantedBug::MergeReversesOrder) {
                    appended.reverse();
                }
                if self.cfg.bug(PlantedBug::MergeLastWriterWins) {
                    let mut last: BTreeMap<crate::id::MemberId, WriteMeta> = BTreeMap::new();
                    for w in appended {
                        last.insert(w.stamp.client, w);
                    }
                    appended = last.into_values().collect();
                    appended.sort_by_key(|w| w.stamp);
                    let keep: BTreeSet<Stamp> = appended.iter().map(|w| w.stamp).collect();
                    self.store.file_mut(name).pending.retain(|s, _| keep.contains(s));
                }
                // The fence: what was collected is installed only on the merged order it was
                // collected against. Another coordinator of the same file (a client that failed
                // over from a coordinator falsely declared failed, or whose ring differs) may have
                // merged some of these writes meanwhile; installing them again would append them
                // twice.
                let base = if self.cfg.bug(PlantedBug::MergeUnfenced) {
                    self.store.merged_hash(name).unwrap_or(0)
                } else {
                    collected_on
                };
                debug_assert!(
                    self.cfg.bug(PlantedBug::MergeUnfenced)
                        || self.store.merged_hash(name) != Some(base)
                        || self.store.file(name).is_none_or(|rec| {
                            let held: BTreeSet<&Stamp> = rec.merged.iter().map(|w| &w.stamp).collect();
                            appended.iter().all(|w| !held.contains(&w.stamp))
                        }),
                    "a merge installs only writes its base does not hold"
                );
                if !self.install_locally(name, base, &appended) {
                    let m = self.server.merges.remove(name).expect("present");
                    if self.store.file(name).is_none() || !self.replicas(name).contains(&self.me) {
                        // The copy was handed off or dropped meanwhile: another replica merges.
                        let r = Refusal::NotReplica;
                        self.send(m.client, HydfsMsg::MergeReply { req: m.client_req, result: Err(r) });
                        return self.next_merge(now, name);
                    }
                    // Someone else's merge changed the file meanwhile: collect again, on the
                    // merge's own clock (`coordinator_timeout` still bounds it).
                    self.start_merge(now, m.client, m.client_req, name.clone());
                    if let Some(again) = self.server.merges.get_mut(name) {
                        again.started = m.started;
                    }
                    return;
                }
                // The coordinator's own copy counts once it is synced (see `Installing`).
                let m = self.server.merges.get_mut(name).expect("present");
                let mut acked = BTreeSet::new();
                if self.cfg.bug(PlantedBug::MergeSkipsReplicas) {
                    acked.extend(m.targets.iter().copied());
                }
                let asked = BTreeSet::new();
                m.phase = MergePhase::Installing { base, appended, acked, asked, durable_at: None };
                self.send_installs(now, name);
                self.advance_merge(now, name);
            }
            MergePhase::Installing { acked, durable_at, .. } if !acked.contains(&self.me) => {
                let mut at = *durable_at;
                let durable = self.durable_alone(now, &mut at);
                if let Some(CoordMerge { phase: MergePhase::Installing { acked, durable_at, .. }, .. }) =
                    self.server.merges.get_mut(name)
                {
                    *durable_at = at;
                    if durable == Ok(true) {
                        acked.insert(self.me);
                    }
                }
                match durable {
                    Ok(true) => self.advance_merge(now, name),
                    Ok(false) => {}
                    Err(e) => {
                        // The merge is installed in memory but not durable: give up on it; the
                        // client hears Unavailable and a later merge starts from what is on disk.
                        let m = self.server.merges.remove(name).expect("present");
                        let why = Refusal::Unavailable(format!("storage failed: {e}"));
                        self.send(m.client, HydfsMsg::MergeReply { req: m.client_req, result: Err(why) });
                        self.next_merge(now, name);
                    }
                }
            }
            MergePhase::Installing { acked, appended, .. } => {
                let targets: Vec<NodeAddr> =
                    m.targets.iter().copied().filter(|t| self.ring.contains(*t) || *t == self.me).collect();
                if !targets.iter().all(|t| acked.contains(t)) {
                    return;
                }
                let appended_n = appended.len() as u32;
                let m = self.server.merges.remove(name).expect("present");
                let summary = MergeSummary {
                    appended: appended_n,
                    replicas: targets.clone(),
                    bytes_moved: m.bytes_moved,
                };
                let merged_hash = self.store.merged_hash(name).unwrap_or(0);
                if !self.cfg.bug(PlantedBug::MergeNeverAnswers) {
                    self.send(m.client, HydfsMsg::MergeReply { req: m.client_req, result: Ok(summary) });
                }
                self.events.push_back(HydfsEvent::MergeCommitted {
                    name: name.clone(),
                    replicas: targets,
                    merged_hash,
                });
                self.next_merge(now, name);
            }
        }
    }

    pub(super) fn next_merge(&mut self, now: Time, name: &FileName) {
        if let Some(q) = self.server.merge_queue.get_mut(name) {
            if let Some((client, req, _)) = q.pop_front() {
                if q.is_empty() {
                    self.server.merge_queue.remove(name);
                }
                self.start_merge(now, client, req, name.clone());
            }
        }
    }

    pub(super) fn send_installs(&mut self, now: Time, name: &FileName) {
        let Some(m) = self.server.merges.get(name) else { return };
        let MergePhase::Installing { base, appended, acked, asked, .. } = &m.phase else { return };
        let to: Vec<NodeAddr> =
            m.targets.iter().copied().filter(|t| !acked.contains(t) && !asked.contains(t)).collect();
        let (base, appended) = (*base, appended.clone());
        for t in to {
            let (n, a) = (name.clone(), appended.clone());
            let sources = vec![self.me];
            self.ask(now, t, Pending::Install { name: name.clone() }, |req| {
                HydfsMsg::Install(InstallRequest { req, name: n, base, appended: a, sources })
            });
            if let Some(CoordMerge { phase: MergePhase::Installing { asked, .. }, .. }) =
                self.server.merges.get_mut(name)
            {
                asked.insert(t);
            }
        }
    }

    /// Whether this copy's merged order already holds the install of `appended` on `base`: it is
    /// `base` followed by `appended` (with more merged after them, from later merges, allowed).
    /// A replica that applied an install answers a second copy of it as done; otherwise it would
    /// take its own progress for being behind, and the coordinator would ask again and again.
    /// Like the fence, it looks at the merged appends the file's seals keep.
    pub(super) fn install_applied(&self, name: &FileName, base: u64, appended: &[WriteMeta]) -> bool {
        let (Some(rec), Some(merged)) = (self.store.file(name), self.store.kept_merged(name)) else {
            return false;
        };
        let at = match appended.first() {
            None => merged.len(),
            Some(first) => match merged.iter().position(|s| *s == first.stamp) {
                Some(at) => at,
                None => return false,
            },
        };
        let holds = merged[at..].iter().take(appended.len()).eq(appended.iter().map(|w| &w.stamp));
        let create = rec.create.as_ref().map(|c| c.stamp);
        let prefix = || order_hash(create.iter().chain(&merged[..at]));
        holds && prefix() == base
    }

    /// Moves `appended` from pending to merged, in order, if the merged content is still `base`.
    pub(super) fn install_locally(&mut self, name: &FileName, base: u64, appended: &[WriteMeta]) -> bool {
        if self.store.merged_hash(name) != Some(base) {
            return false;
        }
        let last_writer_wins = self.cfg.bug(PlantedBug::MergeLastWriterWins);
        let rec = self.store.file_mut(name);
        for w in appended {
            rec.pending.remove(&w.stamp);
            if last_writer_wins {
                rec.pending.retain(|s, _| s.client != w.stamp.client || *s > w.stamp);
            }
            rec.merged.push(w.clone());
        }
        rec.generation += 1;
        true
    }

    pub(in crate::hydfs) fn on_install(&mut self, now: Time, from: NodeAddr, msg: InstallRequest) {
        let InstallRequest { req, name, base, appended, sources } = msg;
        self.handled("install merge", &name, from);
        let applied = self.install_applied(&name, base, &appended);
        if applied && self.store.is_synced() {
            // Already here, and durable: the same install again (a resend after a lost answer, a
            // frame that arrived twice), or nothing to install on a copy that is at `base`. Not
            // yet synced, it waits below like a new install (`progress` finds it applied).
            self.send(from, HydfsMsg::InstallReply { req, result: Ok(0) });
            return;
        }
        let current = self.store.merged_hash(&name);
        if current != Some(base) && !applied {
            // This copy is not where the coordinator's is: repair it from the coordinator; the
            // coordinator asks again.
            self.send(from, HydfsMsg::InstallReply { req, result: Err(Refusal::Behind) });
            let n = name.clone();
            self.ask(now, from, Pending::Describe { name: name.clone() }, |req| HydfsMsg::Describe {
                req,
                name: n,
                needs: Vec::new(),
                client: false,
            });
            return;
        }
        for w in &appended {
            let rec = self.store.file_mut(&name);
            if !rec.contains(&w.stamp) {
                rec.pending.insert(w.stamp, w.clone());
            }
            self.ensure_write(now, &name, w, &sources, FetchClass::Merge);
        }
        let until = now + self.cfg.request_timeout;
        let applied = applied.then_some(0);
        let durable_at = None;
        self.server.installs.push(InstallWait {
            reply_to: from,
            req,
            name,
            base,
            appended,
            until,
            applied,
            durable_at,
        });
    }

    pub(in crate::hydfs) fn on_install_reply(
        &mut self,
        now: Time,
        from: NodeAddr,
        req: ReqId,
        result: Result<u64, Refusal>,
    ) {
        let Some(Pending::Install { name }) = self.answered(req, from) else {
            return;
        };
        let Some(m) = self.server.merges.get_mut(&name) else { return };
        let MergePhase::Installing { acked, asked, .. } = &mut m.phase else { return };
        asked.remove(&from);
        match result {
            Ok(bytes) => {
                acked.insert(from);
                m.bytes_moved += bytes;
                self.advance_merge(now, &name);
            }
            Err(_) => self.arm_retry(now),
        }
    }

    pub(super) fn credit_merge_bytes(&mut self, name: &FileName, bytes: u64) {
        // As coordinator the bytes count towards its own merge; as replica they are reported back
        // with the install's answer. Never both, and nothing is kept when neither is running.
        if let Some(m) = self.server.merges.get_mut(name) {
            m.bytes_moved += bytes;
        } else if self.server.installs.iter().any(|w| &w.name == name) {
            *self.server.install_bytes.entry(name.clone()).or_default() += bytes;
        }
    }
}
