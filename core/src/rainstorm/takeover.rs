//! Taking a job over from a leader that left the group: the successor's reads and writes, in
//! order, until it can run the job from the point its destination holds.
//!
//! 1. **Check the destination** exists and is the job's (created by the member the job's id
//!    names), and read its chain of owners (`seal.rs`). No destination: the job's leader was lost
//!    before it made its files, or it ended and deleted them ([`Next::Ended`], after looking
//!    again for a while: its replicas may be moving).
//! 2. **Fence it** ([`WriteKind::Seal`], `upto = u64::MAX`) after its current owner, as the
//!    leader of the next term. Once the fence is acknowledged no replica takes a new append of
//!    the previous leader (it may have been declared failed falsely, and still run): it gets none
//!    acknowledged, and commits nothing more. A fence refused because another member sealed
//!    first is settled by merging the destination and reading the chain its seals make: this
//!    node owns it (go on), a live member does (it leads: stand down, [`Next::Deposed`]), or a
//!    gone one does (fence after it, a term later).
//! 3. **Measure it**: merge it (every copy then holds the kept appends in one order), read its
//!    length and, for each earlier owner no seal bounds yet, its last append. A merge (of the
//!    destination or of a log) that covered fewer copies than a write takes
//!    (`RainstormConfig::merge_copies`) is done again a little later, for as long as it takes:
//!    the copies it reached may be new to the file, and miss an acknowledged append.
//! 4. **Find the newest checkpoint log.** Each term writes its own; the successor looks from the
//!    term below its own downwards, and within a term from the generation last known upwards,
//!    for the newest generation that exists. It seals that log after its current owner and
//!    merges it, so that no record of the previous leader lands later and each one some replica
//!    took is read, in order; then reads it part by part.
//! 5. **Settle the resume point**: fold the log to the newest record that leaves the
//!    destination at its length ([`LogState::fold_to_dest`]). A destination shorter than what
//!    the log says was acknowledged is a view of copies still catching up: merged and measured
//!    again, a little later.
//! 6. **Bound** each earlier owner still unbounded to the appends read (a seal per owner): an
//!    append that surfaces later (still being fetched, or on the disk of a crashed node that
//!    restarts, never acknowledged) is no part of the file. The length measured is then final.
//!    A log whose last commit is in it means the job completed ([`Next::Completed`]).
//! 7. **Read the input manifest** and **write its own log**: generation 0 of its term, one full
//!    record naming it the leader. A create refused because the file exists means another
//!    member took the same term: this one stands down. A manifest not found is looked for
//!    again for a while; still missing, with no commit in the log, an empty destination and a
//!    notice that never showed progress, the previous leader was lost while it made the job's
//!    files ([`Next::Ended`], the logs found and the manifest deleted); else the job fails.
//!
//! Invariants kept here:
//! * nothing is measured before this node's fence is acknowledged (or the chain shows it owns
//!   the destination), and the bounds keep exactly what was measured: no append of an earlier
//!   leader joins the destination after the successor measured it;
//! * nothing is read after a merge that covered fewer than `merge_copies` copies;
//! * the resume point leaves the destination exactly as long as measured (or the takeover fails
//!   with the mismatch named);
//! * the successor's term is above every term the chains it read name.

use std::collections::VecDeque;

use super::checkpoint::{decode_all, decode_manifest, encode, CheckpointError, JobInfo, LogState};
use super::config::{PlantedBug, RainstormConfig};
use super::directory::JobNotice;
use super::input::Manifest;
use super::job::{JobId, JobPlan, Term};
use crate::hydfs::{ClientOp, FileMeta, FileName, HydfsError, OpOutput, Owners, Seal, Stamp, WriteKind};
use crate::id::MemberId;

/// Generations tried past the last one known (or past 0) before a term counts as having no log
/// (a leader announces its generation at each rollover, but an announcement can be lost).
const PROBE_GAP: u32 = 32;
/// Times an operation that failed for a reason that may pass is tried again.
const TRIES: u32 = 8;
/// Times the successor looks for the job's logs (a retry interval apart) before it gives up.
const PROBE_ROUNDS: u32 = 20;

/// Where the successor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Checking that the destination exists (a job whose leader died before it created its
    /// files has nothing to take over), and reading its chain of owners.
    Exists,
    Seal,
    /// A seal was refused: merging the destination and reading the chain its seals make.
    Arbitrate,
    Merge,
    /// Reading the destination's length once sealed and merged.
    DestSize,
    /// Merging and measuring the destination again: its copies were behind the log.
    Remerge,
    Remeasure,
    /// Bounding the previous owner's appends to those read.
    Bound,
    /// Looking for log generation `generation` of `term`.
    Probe {
        term: Term,
        generation: u32,
        misses: u32,
    },
    /// Sealing the newest log after its writer `prev`, as of seal term `term`.
    LogSeal {
        prev: MemberId,
        term: u64,
    },
    LogMerge,
    LogMeta,
    LogPart,
    ManifestMeta,
    ManifestPart,
    CreateLog,
}

/// What a successor resumes the job from.
#[derive(Debug)]
pub(super) struct Resumed {
    /// The job, with this node as its leader.
    pub info: JobInfo,
    /// The log as folded to the destination's length (its records: the new log's one).
    pub log: LogState,
    pub manifest: Manifest,
    pub term: Term,
    /// The leader this node took the job from (the destination's owner it sealed after).
    pub previous: MemberId,
    /// Earlier leaders' log generations found (and the next ones), to delete.
    pub old_logs: Vec<FileName>,
}

/// What the successor does next.
#[derive(Debug)]
pub(super) enum Next {
    Op(ClientOp),
    /// The operation, after a pause (`retry`).
    Later(ClientOp),
    Ready(Box<Resumed>),
    /// Another member leads the job now.
    Deposed {
        leader: MemberId,
        term: Term,
    },
    /// The job cannot be resumed; why.
    Failed(String),
    /// Nothing to resume the job from: it ended under its previous leader, which deleted its
    /// files, or that leader was lost before it made them all (a log, but no manifest and no
    /// commit). The files found are to be deleted.
    Ended {
        files: Vec<FileName>,
    },
    /// Another member leads the job (which one, this node cannot tell): why.
    StandDown(String),
    /// The log's last commit, every output in it, is in the destination: the job completed
    /// under its previous leader, which died before it said so. Its files are to be deleted.
    Completed {
        outputs: u64,
        files: Vec<FileName>,
    },
}

pub(super) struct Takeover {
    /// Planted bugs: resume from the record before the right one; seal nothing.
    stale_point: bool,
    no_fence: bool,
    /// Replicas a merge must cover ([`RainstormConfig::merge_copies`]).
    merge_copies: usize,
    job: JobId,
    me: MemberId,
    dest: FileName,
    known: JobNotice,
    /// A term whose newest log generation is known (where probing that term starts).
    hint: (Term, u32),
    /// The term this node seals for, and the owner it seals after.
    term: Term,
    prev: MemberId,
    step: Step,
    /// The operation in flight, to try again.
    current: Option<ClientOp>,
    tries: u32,
    /// Rounds of looking for the logs so far (and of measuring the destination again).
    rounds: u32,
    /// Looks for the manifest so far.
    manifest_looks: u32,
    dest_bytes: u64,
    /// The earlier owners still to bound, with the last append of each the destination showed.
    bounds: VecDeque<(MemberId, u64)>,
    /// This node's fence on the destination is acknowledged (it leads the job from then on),
    /// and its leader said so.
    pub(super) fenced: bool,
    pub(super) announced: bool,
    /// The newest log's records.
    records: Vec<super::checkpoint::Record>,
    /// Log generations found (the newest last), and the newest one's metadata.
    logs: Vec<(Term, u32, FileName)>,
    log_meta: Option<FileMeta>,
    parts: VecDeque<(Stamp, u32)>,
    bytes: Vec<u8>,
    log: Option<LogState>,
    manifest: Option<Manifest>,
}

impl Takeover {
    /// Starts taking over the job `known` describes (its leader gone) as this node, `me`.
    pub(super) fn start(
        cfg: &RainstormConfig,
        me: MemberId,
        known: JobNotice,
        hint: (Term, u32),
    ) -> (Takeover, ClientOp) {
        let mut t = Takeover {
            stale_point: cfg.bug(PlantedBug::TakeoverFromStalePoint),
            no_fence: cfg.bug(PlantedBug::TakeoverWithoutFence),
            merge_copies: if cfg.bug(PlantedBug::TakeoverOnAPartialMerge) { 1 } else { cfg.merge_copies },
            hint,
            job: known.job,
            me,
            dest: known.dest.clone(),
            term: known.term.saturating_add(1),
            prev: known.leader,
            known,
            step: Step::Exists,
            current: None,
            tries: 0,
            rounds: 0,
            manifest_looks: 0,
            dest_bytes: 0,
            bounds: VecDeque::new(),
            fenced: false,
            announced: false,
            records: Vec::new(),
            logs: Vec::new(),
            log_meta: None,
            parts: VecDeque::new(),
            bytes: Vec::new(),
            log: None,
            manifest: None,
        };
        let op = t.issue(Step::Exists, ClientOp::Meta { name: t.dest.clone() });
        (t, op)
    }

    /// Whether `out`, a merge's answer, covered the copies a write takes.
    fn covered(&self, out: &OpOutput) -> bool {
        match out {
            OpOutput::Merged { summary, .. } => summary.replicas.len() >= self.merge_copies,
            _ => true,
        }
    }

    /// The seal of the destination for this node's term, after the owner it knows of.
    fn seal(&mut self) -> ClientOp {
        let seal = Seal { term: u64::from(self.term), prev: self.prev, upto: u64::MAX };
        let op = ClientOp::Persist { name: self.dest.clone(), kind: WriteKind::Seal(seal), data: Vec::new() };
        self.issue(Step::Seal, op)
    }

    pub(super) fn me(&self) -> MemberId {
        self.me
    }

    /// The term this node takes the job over for (so far).
    pub(super) fn term(&self) -> Term {
        self.term
    }

    pub(super) fn notice(&self) -> &JobNotice {
        &self.known
    }

    fn issue(&mut self, step: Step, op: ClientOp) -> ClientOp {
        if step != self.step {
            self.tries = 0;
        }
        self.step = step;
        self.current = Some(op.clone());
        op
    }

    /// The same operation again, if it may still succeed.
    fn again(&mut self, e: &HydfsError) -> Next {
        self.tries += 1;
        match &self.current {
            Some(op) if self.tries < TRIES && transient(e) => Next::Op(op.clone()),
            _ => Next::Failed(format!("taking the job over: {e}")),
        }
    }

    fn plan(&self) -> JobPlan {
        let info = self.log.as_ref().and_then(|l| l.job.as_ref());
        info.map(|i| i.plan.clone()).unwrap_or_else(|| JobPlan {
            job: self.job,
            leader: self.me,
            origin: self.me,
            ops: [String::new(), String::new()],
            src: self.dest.clone(),
            dest: self.dest.clone(),
            tasks: 0,
            header: None,
            routes: [super::job::Route::Shuffle; 2],
            rate_per_source: None,
        })
    }

    /// The log name of `generation` of `term` (file names under the job's own prefix).
    fn log_name(&self, term: Term, generation: u32) -> Result<FileName, String> {
        self.plan().checkpoint_log(term, generation).map_err(|e| e.to_string())
    }

    fn probe(&mut self, term: Term, generation: u32, misses: u32) -> Next {
        match self.log_name(term, generation) {
            Ok(name) => {
                Next::Op(self.issue(Step::Probe { term, generation, misses }, ClientOp::Meta { name }))
            }
            Err(e) => Next::Failed(e),
        }
    }

    /// Where probing starts in `term`: the generation known for it, if one is.
    fn first_generation(&self, term: Term) -> u32 {
        if term == self.hint.0 {
            self.hint.1
        } else {
            0
        }
    }

    /// The answer to the operation in flight; `live`: the members of the group now.
    pub(super) fn on_answer(&mut self, live: &[MemberId], result: Result<OpOutput, HydfsError>) -> Next {
        match (self.step, result) {
            (Step::Exists, Ok(_)) if self.no_fence => {
                Next::Op(self.issue(Step::Merge, ClientOp::Merge { name: self.dest.clone() }))
            }
            (Step::Exists, Ok(OpOutput::Meta { meta, .. })) => {
                // The destination must be this job's (created by the member its id names), and
                // the fence names its current owner, one term later.
                let creator = meta.create.as_ref().map(|c| c.stamp.client);
                if creator.is_none_or(|c| JobId::new(c, self.job.n) != self.job) {
                    let name = &self.dest;
                    return Next::Failed(format!(
                        "taking the job over: `{name}` is not this job's destination"
                    ));
                }
                self.follow_chain(&meta, live)
            }
            (Step::Exists, Err(HydfsError::NotFound(_))) if self.rounds + 1 < PROBE_ROUNDS => {
                // Its replicas may be moving: look again a little later.
                self.rounds += 1;
                Next::Later(ClientOp::Meta { name: self.dest.clone() })
            }
            (Step::Exists, Err(HydfsError::NotFound(_))) => Next::Ended { files: Vec::new() },
            (Step::Seal, Ok(_)) => {
                self.fenced = true;
                Next::Op(self.issue(Step::Merge, ClientOp::Merge { name: self.dest.clone() }))
            }
            (Step::Seal, Err(HydfsError::Sealed { .. })) => {
                // Another member sealed first, as one replica saw it; the seals the replicas
                // took (this node's too, perhaps) decide, once merged: read the chain they make.
                Next::Op(self.issue(Step::Arbitrate, ClientOp::Merge { name: self.dest.clone() }))
            }
            (Step::Arbitrate, Ok(OpOutput::Meta { meta, .. })) => self.follow_chain(&meta, live),
            (Step::Arbitrate, Ok(_)) => {
                Next::Op(self.issue(Step::Arbitrate, ClientOp::Meta { name: self.dest.clone() }))
            }
            (Step::Merge | Step::Remerge | Step::LogMerge, Ok(OpOutput::Merged { summary, .. }))
                if summary.replicas.len() < self.merge_copies =>
            {
                // A merge on fewer copies than a write is acknowledged by may have missed one
                // (the copies it reached can be new to the file, the rest unreachable): never
                // read after it. Again a little later, for as long as it takes (with fewer
                // live members than that, no write is acknowledged anyway).
                let op = self.current.clone().unwrap_or(ClientOp::Merge { name: self.dest.clone() });
                Next::Later(op)
            }
            (Step::Merge, Ok(out)) => {
                debug_assert!(self.covered(&out), "a merge on too few copies is never read after");
                Next::Op(self.issue(Step::DestSize, ClientOp::Meta { name: self.dest.clone() }))
            }
            (Step::Merge, Err(e)) => {
                self.tries += 1;
                if self.tries < TRIES {
                    Next::Op(ClientOp::Merge { name: self.dest.clone() })
                } else {
                    Next::Failed(format!("taking the job over: cannot merge the destination: {e}"))
                }
            }
            (Step::DestSize, Ok(OpOutput::Meta { meta, .. })) => {
                self.measure(&meta);
                let term = self.term - 1;
                let first = self.first_generation(term);
                self.probe(term, first, 0)
            }
            (Step::Remerge, Ok(out)) => {
                debug_assert!(self.covered(&out), "a merge on too few copies is never read after");
                Next::Op(self.issue(Step::Remeasure, ClientOp::Meta { name: self.dest.clone() }))
            }
            (Step::Remeasure, Ok(OpOutput::Meta { meta, .. })) => {
                self.measure(&meta);
                self.settle()
            }
            (Step::Bound, Err(HydfsError::Sealed { .. })) => {
                // Another member sealed the destination after this node's fence.
                Next::Op(self.issue(Step::Arbitrate, ClientOp::Merge { name: self.dest.clone() }))
            }
            (Step::Bound, Ok(_)) => self.next_bound(),
            (Step::Probe { term, generation, .. }, Ok(OpOutput::Meta { meta, name, .. })) => {
                self.logs.push((term, generation, name));
                self.log_meta = Some(meta);
                self.probe(term, generation.saturating_add(1), 0)
            }
            (Step::Probe { term, generation, misses }, Err(HydfsError::NotFound(_))) => {
                if let Some(meta) = self.log_meta.take() {
                    // The newest generation of the newest term with a log: seal it after its
                    // writer, merge it, then read it.
                    let Some(create) = meta.create.as_ref() else {
                        return Next::Failed(format!(
                            "taking the job over: the log `{}` has no create",
                            meta.name
                        ));
                    };
                    // After its current owner: its writer, or a successor that sealed it.
                    let term = u64::from(self.term);
                    return match Owners::of(meta.all_writes()) {
                        Some(o) if o.owner() == self.me => self.merge_log(),
                        Some(o) => self.seal_log(o.owner(), o.term().saturating_add(1).max(term)),
                        None => self.seal_log(create.stamp.client, term),
                    };
                }
                if misses + 1 < PROBE_GAP {
                    return self.probe(term, generation.saturating_add(1), misses + 1);
                }
                match term.checked_sub(1) {
                    Some(lower) => {
                        let first = self.first_generation(lower);
                        self.probe(lower, first, 0)
                    }
                    // Its replicas may be moving, or cut off: look again a little later.
                    None if self.rounds + 1 < PROBE_ROUNDS => {
                        self.rounds += 1;
                        let term = self.term - 1;
                        let first = self.first_generation(term);
                        match self.probe(term, first, 0) {
                            Next::Op(op) => Next::Later(op),
                            other => other,
                        }
                    }
                    None => Next::Ended { files: Vec::new() },
                }
            }
            (
                Step::LogSeal { .. } | Step::LogMerge | Step::LogMeta | Step::LogPart,
                Err(HydfsError::NotFound(_)),
            ) if self.rounds + 1 < PROBE_ROUNDS => {
                // The log moved on (a deposed leader may still roll it over): look again.
                self.rounds += 1;
                let (term, generation, _) = self.logs.last().cloned().expect("a log was found");
                self.logs.clear();
                self.bytes.clear();
                match self.probe(term, generation, 0) {
                    Next::Op(op) => Next::Later(op),
                    other => other,
                }
            }
            (Step::LogSeal { .. }, Ok(_)) => self.merge_log(),
            (Step::LogSeal { .. }, Err(HydfsError::Sealed { owner, term, .. })) => {
                if owner == self.me {
                    return self.merge_log();
                }
                // The fence on the destination made this node the job's leader: whoever else
                // sealed the log is behind it. Seal after it.
                self.seal_log(owner, term.saturating_add(1))
            }
            (Step::LogMerge, Ok(out)) => {
                debug_assert!(self.covered(&out), "a merge on too few copies is never read after");
                match self.logs.last() {
                    Some((_, _, name)) => {
                        let name = name.clone();
                        Next::Op(self.issue(Step::LogMeta, ClientOp::Meta { name }))
                    }
                    None => Next::Failed("taking the job over: no log to read".to_owned()),
                }
            }
            (Step::LogMerge, Err(e)) => {
                self.tries += 1;
                if self.tries < TRIES {
                    self.merge_log()
                } else {
                    Next::Failed(format!("taking the job over: cannot merge the checkpoint log: {e}"))
                }
            }
            (Step::LogMeta, Ok(OpOutput::Meta { meta, .. })) => {
                self.parts = Manifest::of(&meta).parts.iter().map(|p| (p.stamp, p.part)).collect();
                self.read_next(Step::LogPart)
            }
            (Step::LogPart | Step::ManifestPart, Ok(OpOutput::Part { bytes, .. })) => {
                self.tries = 0;
                self.bytes.extend_from_slice(&bytes);
                self.read_next(self.step)
            }
            (Step::ManifestMeta, Ok(OpOutput::Meta { meta, .. })) => {
                self.parts = Manifest::of(&meta).parts.iter().map(|p| (p.stamp, p.part)).collect();
                self.read_next(Step::ManifestPart)
            }
            (Step::CreateLog, Ok(_)) => self.ready(),
            (Step::CreateLog, Err(HydfsError::AlreadyExists(name))) => Next::StandDown(format!(
                "another member took the job over as leader of term {} (its log `{name}` exists)",
                self.term
            )),
            (Step::Seal | Step::DestSize, Err(HydfsError::NotFound(name))) => {
                Next::Failed(format!("taking the job over: its destination `{name}` is gone"))
            }
            (Step::ManifestMeta, Err(HydfsError::NotFound(_))) if self.manifest_looks + 1 < PROBE_ROUNDS => {
                // This node's view may not have every member yet (it joined a moment ago): the
                // copies it asked may be new to the file. Again a little later.
                self.manifest_looks += 1;
                let op = self.current.clone().unwrap_or(ClientOp::Meta { name: self.dest.clone() });
                Next::Later(op)
            }
            (Step::ManifestMeta, Err(HydfsError::NotFound(name))) => {
                // The leader makes the manifest before any task runs: with nothing committed,
                // it was lost while it made the job's files.
                let nothing_committed =
                    self.log.as_ref().is_some_and(|l| l.checkpoint.is_none() && l.outputs == 0);
                let k = &self.known;
                let never_ran = k.lines_read == 0 && k.outputs == 0 && k.restarts == 0;
                if nothing_committed && never_ran && self.dest_bytes == 0 {
                    let mut files: Vec<FileName> = self.logs.drain(..).map(|(_, _, n)| n).collect();
                    // The manifest, should its create land after all.
                    files.extend(self.plan().manifest_file().ok());
                    Next::Ended { files }
                } else {
                    Next::Failed(format!("taking the job over: its manifest file `{name}` is gone"))
                }
            }
            (_, Err(e)) => self.again(&e),
            (step, Ok(other)) => {
                Next::Failed(format!("taking the job over: unexpected answer at {step:?}: {other:?}"))
            }
        }
    }
    /// What the destination holds: its length, and the last append of each earlier owner no
    /// seal bounds yet.
    fn measure(&mut self, meta: &FileMeta) {
        debug_assert!(self.fenced || self.no_fence, "the destination is measured only once fenced");
        self.dest_bytes = meta.len();
        let open = Owners::of(meta.all_writes()).map(|o| o.unbounded()).unwrap_or_default();
        self.bounds = open
            .into_iter()
            .map(|client| {
                let last = meta.all_writes().filter(|w| w.stamp.client == client).map(|w| w.stamp.seq).max();
                (client, last.unwrap_or(0))
            })
            .collect();
    }

    /// Acts on the destination's chain of owners: this node owns it (its fence won: go on), a
    /// live member does (it leads the job: stand down), or a gone one does (fence after it, a
    /// term later).
    fn follow_chain(&mut self, meta: &FileMeta, live: &[MemberId]) -> Next {
        let chain = Owners::of(meta.all_writes());
        let term = chain.as_ref().map_or(0, |o| o.term());
        if term < u64::from(self.known.term) && self.rounds + 1 < PROBE_ROUNDS {
            // This copy lacks a seal the job's notice tells of: read another, a little later.
            self.rounds += 1;
            return Next::Later(self.issue(Step::Exists, ClientOp::Meta { name: self.dest.clone() }));
        }
        match chain {
            Some(o) if o.owner() == self.me => {
                self.fenced = true;
                Next::Op(self.issue(Step::Merge, ClientOp::Merge { name: self.dest.clone() }))
            }
            Some(o) if live.contains(&o.owner()) => {
                Next::Deposed { leader: o.owner(), term: Term::try_from(o.term()).unwrap_or(Term::MAX) }
            }
            Some(o) => {
                self.prev = o.owner();
                self.term = self.term.max(Term::try_from(o.term()).unwrap_or(Term::MAX).saturating_add(1));
                debug_assert!(
                    u64::from(self.term) > o.term() || self.term == Term::MAX,
                    "a fence after the chain"
                );
                Next::Op(self.seal())
            }
            None => {
                self.prev = meta.create.as_ref().map_or(self.prev, |c| c.stamp.client);
                Next::Op(self.seal())
            }
        }
    }

    /// Bounds the next earlier owner still unbounded, or goes on once none is.
    fn next_bound(&mut self) -> Next {
        let Some((prev, upto)) = self.bounds.pop_front() else { return self.bounded() };
        let seal = Seal { term: u64::from(self.term), prev, upto };
        let op = ClientOp::Persist { name: self.dest.clone(), kind: WriteKind::Seal(seal), data: Vec::new() };
        Next::Op(self.issue(Step::Bound, op))
    }

    /// Folds the log to the destination's length, then bounds the previous owner's appends. A
    /// destination shorter than the outputs the log says were acknowledged (every commit but
    /// the last) is a view of copies still catching up (the group changed): merged and
    /// measured again a little later.
    fn settle(&mut self) -> Next {
        let acknowledged = {
            let mut s = LogState::default();
            let mut before_last = 0;
            for r in &self.records {
                before_last = s.dest_bytes;
                if s.apply(r).is_err() {
                    break;
                }
            }
            before_last
        };
        let folded = LogState::fold_to_dest(&self.records, self.dest_bytes);
        let behind =
            self.dest_bytes < acknowledged || matches!(folded, Err(CheckpointError::DestMismatch { .. }));
        if behind && self.rounds + 1 < PROBE_ROUNDS {
            self.rounds += 1;
            return Next::Later(self.issue(Step::Remerge, ClientOp::Merge { name: self.dest.clone() }));
        }
        let folded = match folded {
            Ok(_) if self.stale_point => Ok(stale(&self.records, self.dest_bytes)),
            other => other,
        };
        match folded {
            Ok(log) if log.job.is_some() && self.no_fence => {
                self.log = Some(log);
                self.bounded()
            }
            Ok(log) if log.job.is_some() => {
                self.log = Some(log);
                self.next_bound()
            }
            Ok(_) => Next::Failed("taking the job over: the log has no job record".to_owned()),
            Err(e) => Next::Failed(format!("taking the job over: the checkpoint log: {e}")),
        }
    }

    /// The destination is final: a job whose last commit is in it completed; any other goes on
    /// from the manifest.
    fn bounded(&mut self) -> Next {
        let Some(log) = self.log.as_ref() else { return Next::Failed("no log folded".to_owned()) };
        if log.last {
            let outputs = log.outputs;
            let mut files: Vec<FileName> = self.logs.drain(..).map(|(_, _, n)| n).collect();
            files.extend(self.plan().manifest_file().ok());
            return Next::Completed { outputs, files };
        }
        match self.plan().manifest_file() {
            Ok(name) => Next::Op(self.issue(Step::ManifestMeta, ClientOp::Meta { name })),
            Err(e) => Next::Failed(e.to_string()),
        }
    }

    /// Seals the newest log found after `prev`, its writer (or the member that sealed it last).
    fn seal_log(&mut self, prev: MemberId, term: u64) -> Next {
        let Some((_, _, name)) = self.logs.last() else {
            return Next::Failed("taking the job over: no log to seal".to_owned());
        };
        let seal = Seal { term, prev, upto: u64::MAX };
        let op = ClientOp::Persist { name: name.clone(), kind: WriteKind::Seal(seal), data: Vec::new() };
        Next::Op(self.issue(Step::LogSeal { prev, term }, op))
    }

    fn merge_log(&mut self) -> Next {
        match self.logs.last() {
            Some((_, _, name)) => {
                let name = name.clone();
                Next::Op(self.issue(Step::LogMerge, ClientOp::Merge { name }))
            }
            None => Next::Failed("taking the job over: no log to merge".to_owned()),
        }
    }

    /// Reads the next part of the file being read, or goes on once it is whole.
    fn read_next(&mut self, step: Step) -> Next {
        let name = match step {
            Step::LogPart => self.logs.last().map(|(_, _, n)| n.clone()),
            _ => self.plan().manifest_file().ok(),
        };
        let Some(name) = name else { return Next::Failed("taking the job over: no file to read".to_owned()) };
        if let Some((stamp, part)) = self.parts.pop_front() {
            return Next::Op(self.issue(step, ClientOp::ReadPart { name, stamp, part, prefer: None }));
        }
        let bytes = std::mem::take(&mut self.bytes);
        match step {
            Step::LogPart => match decode_all(&bytes) {
                Ok(records) => {
                    self.records = records;
                    self.settle()
                }
                Err(e) => Next::Failed(format!("taking the job over: the log `{name}`: {e}")),
            },
            _ => match decode_manifest(&bytes) {
                Ok(manifest) => {
                    self.manifest = Some(manifest);
                    self.create_log()
                }
                Err(e) => Next::Failed(format!("taking the job over: the manifest file `{name}`: {e}")),
            },
        }
    }

    /// This node's log, generation 0 of its term: one full record, with this node the leader.
    fn create_log(&mut self) -> Next {
        let Some(log) = self.log.as_mut() else { return Next::Failed("no log folded".to_owned()) };
        if let Some(info) = log.job.as_mut() {
            info.leader = self.me;
            info.plan.leader = self.me;
        }
        let Some(full) = log.full() else { return Next::Failed("the log has no job record".to_owned()) };
        let data = match encode(&full) {
            Ok(d) => d,
            Err(e) => return Next::Failed(format!("taking the job over: {e}")),
        };
        match self.log_name(self.term, 0) {
            Ok(name) => Next::Op(
                self.issue(Step::CreateLog, ClientOp::Persist { name, kind: WriteKind::Create, data }),
            ),
            Err(e) => Next::Failed(e),
        }
    }

    fn ready(&mut self) -> Next {
        let (Some(mut log), Some(manifest)) = (self.log.take(), self.manifest.take()) else {
            return Next::Failed("taking the job over: the log or the manifest was not read".to_owned());
        };
        let Some(info) = log.job.clone() else { return Next::Failed("the log has no job record".to_owned()) };
        debug_assert!(
            self.stale_point || log.dest_bytes == self.dest_bytes,
            "the resume point leaves the destination as it is"
        );
        log.records = 1;
        log.last = false;
        // A generation the previous leader was creating as it died may have been missed by the
        // probe and land after it: delete the next ones too (deleting a missing file is no-op).
        if let Some((term, generation, _)) = self.logs.last().cloned() {
            for g in generation.saturating_add(1)..=generation.saturating_add(2) {
                if let Ok(name) = self.log_name(term, g) {
                    self.logs.push((term, g, name));
                }
            }
        }
        Next::Ready(Box::new(Resumed {
            info: *info,
            log,
            manifest,
            term: self.term,
            previous: self.prev,
            old_logs: self.logs.drain(..).map(|(_, _, n)| n).collect(),
        }))
    }
}

/// Planted: the state as of the newest record that leaves the destination shorter than
/// `dest_bytes` (the one before the right resume point).
fn stale(records: &[super::checkpoint::Record], dest_bytes: u64) -> LogState {
    let mut s = LogState::default();
    let mut found = LogState::default();
    for r in records {
        if s.apply(r).is_err() {
            break;
        }
        if s.dest_bytes < dest_bytes || s.records == 1 {
            found = s.clone();
        }
    }
    found
}

/// Whether an operation that failed this way may succeed if tried again.
fn transient(e: &HydfsError) -> bool {
    !matches!(
        e,
        HydfsError::NotFound(_)
            | HydfsError::AlreadyExists(_)
            | HydfsError::Sealed { .. }
            | HydfsError::TooLarge { .. }
            | HydfsError::FileFull { .. }
    )
}
