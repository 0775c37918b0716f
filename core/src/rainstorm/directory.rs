//! What this node knows of every job in the group: who leads it now and how far it got, so that
//! `jobs` and `job <id>` answer on any node, and a node can tell that a job lost its leader.
//!
//! A leader announces each job it leads to every member ([`RainstormMsg::Announce`]): when the
//! job starts, every `status_interval` while it runs, and once when it ends. A node keeps the
//! latest notice per job ([`Directory::heard`]) and marks a running job whose leader left the
//! group ([`Directory::member_gone`]). Such a job is taken over by its [`successor`]: the live
//! member that ranks first for the job, which every member with the same view computes alike.
//!
//! Invariants kept here:
//! * a notice is taken only from the member it names as the leader, only if that member is the
//!   one the job's id names when the term is 0 (the leader it was submitted to; a later term's
//!   leader is a successor, whose claim the seal on the job's destination settles), and only
//!   if its term is at least the one known for the job;
//! * a job that ended stays as it ended: no later notice (of any term) changes it;
//! * at most [`DIRECTORY_JOBS`] jobs are kept; past that the ended job heard of longest ago is
//!   forgotten first, then the job heard of longest ago.
//!
//! [`RainstormMsg::Announce`]: super::RainstormMsg::Announce

use super::job::{JobId, Term};
use crate::hydfs::FileName;
use crate::id::MemberId;
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// At most this many jobs are kept in a node's directory.
pub const DIRECTORY_JOBS: usize = 256;

/// Where a job stands, as its leader announced it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Running,
    Completed,
    Failed(String),
    /// A successor found nothing to resume the job from: it ended under its previous leader,
    /// which deleted its files (how it ended did not reach this node), or that leader was lost
    /// before it had made them all and committed anything.
    Ended,
}

impl JobState {
    pub fn ended(&self) -> bool {
        match self {
            JobState::Running => false,
            JobState::Completed | JobState::Failed(_) | JobState::Ended => true,
        }
    }
}

/// One job as its leader announces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobNotice {
    pub job: JobId,
    pub term: Term,
    pub leader: MemberId,
    /// The job as it was submitted.
    pub spec: String,
    pub dest: FileName,
    pub state: JobState,
    /// Outputs committed to the destination so far.
    pub outputs: u64,
    /// Input lines, and lines the sources have read in the current attempt.
    pub input_lines: u64,
    pub lines_read: u64,
    /// Rollbacks so far.
    pub restarts: u32,
    /// The generation of the leader's checkpoint log (where a successor looks for it first).
    pub generation: u32,
}

/// A job as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownJob {
    pub notice: JobNotice,
    /// When the latest notice came.
    pub heard: Time,
    /// Since when the leader is gone (it left the group or was declared failed while the job
    /// was running).
    pub leader_gone: Option<Time>,
}

impl fmt::Display for KnownJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.notice;
        let state = match (&n.state, self.leader_gone) {
            (JobState::Running, None) => "running".to_owned(),
            (JobState::Running, Some(_)) => "leader gone, a successor takes it over".to_owned(),
            (JobState::Completed, _) => "completed".to_owned(),
            (JobState::Failed(why), _) => format!("failed: {why}"),
            (JobState::Ended, _) => {
                "ended under its previous leader (how, this node did not hear)".to_owned()
            }
        };
        write!(
            f,
            "{state}; led by {} (term {}); {} of {} lines read, {} outputs, {} restarts",
            n.leader.addr, n.term, n.lines_read, n.input_lines, n.outputs, n.restarts
        )
    }
}

/// The jobs of the group, as their leaders announced them.
#[derive(Default)]
pub struct Directory {
    jobs: BTreeMap<JobId, KnownJob>,
}

impl Directory {
    /// Whether `from` may announce `notice`: it is the leader the notice names, and in term 0
    /// the member the job was submitted to.
    pub fn may_announce(from: MemberId, notice: &JobNotice) -> bool {
        from == notice.leader && (notice.term > 0 || JobId::new(from, notice.job.n) == notice.job)
    }

    /// A leader's notice, from `from`. Whether it was taken.
    pub fn heard(&mut self, now: Time, from: MemberId, notice: JobNotice) -> bool {
        if !Self::may_announce(from, &notice) {
            return false;
        }
        if let Some(known) = self.jobs.get(&notice.job) {
            let k = &known.notice;
            let older = notice.term < k.term;
            // An ended job stays as it ended (a later term's leader may not know it did).
            let changed_after_end = k.state.ended() && notice != *k;
            if older || changed_after_end {
                return false;
            }
        }
        let job = notice.job;
        self.jobs.insert(job, KnownJob { notice, heard: now, leader_gone: None });
        self.trim();
        debug_assert!(self.jobs.len() <= DIRECTORY_JOBS, "the directory is bounded");
        true
    }

    /// Another member's word that `notice`'s job lost its leader (this node's view does not
    /// list the leader). Taken if it is newer than what this node knows; whether it was.
    pub fn orphaned(&mut self, now: Time, notice: JobNotice) -> bool {
        if notice.state.ended() {
            return false;
        }
        match self.jobs.get_mut(&notice.job) {
            // Never over a later term, an ended job, or another leader of the same term.
            Some(k) if k.notice.term > notice.term || k.notice.state.ended() => return false,
            Some(k) if k.notice.term == notice.term && k.notice.leader != notice.leader => return false,
            Some(k) if k.notice.term == notice.term && k.notice.leader == notice.leader => {
                k.leader_gone.get_or_insert(now);
                return true;
            }
            _ => {}
        }
        let job = notice.job;
        self.jobs.insert(job, KnownJob { notice, heard: now, leader_gone: Some(now) });
        self.trim();
        true
    }

    /// `member` left the group or was declared failed: the running jobs it led lost their
    /// leader.
    pub fn member_gone(&mut self, now: Time, member: MemberId) {
        for k in self.jobs.values_mut() {
            if k.notice.leader == member && !k.notice.state.ended() {
                k.leader_gone.get_or_insert(now);
            }
        }
    }

    /// Running jobs whose leader is gone since `before` or earlier: each waits for its
    /// successor.
    pub fn orphans(&self, before: Time) -> impl Iterator<Item = &KnownJob> {
        self.jobs
            .values()
            .filter(move |k| k.leader_gone.is_some_and(|t| t <= before) && !k.notice.state.ended())
    }

    /// When the next job whose leader is gone has been so for `delay`.
    pub fn next_orphan(&self, after: Time, delay: crate::time::Millis) -> Option<Time> {
        let gone = self.jobs.values().filter(|k| !k.notice.state.ended()).filter_map(|k| k.leader_gone);
        gone.map(|t| t + delay).filter(|t| *t > after).min()
    }

    /// The group is `members` now: a job whose leader is among them has its leader (this node
    /// had lost sight of it while it was not a member itself, or cut off).
    pub fn members_are(&mut self, members: &[MemberId]) {
        for k in self.jobs.values_mut() {
            if k.leader_gone.is_some() && members.contains(&k.notice.leader) {
                k.leader_gone = None;
            }
        }
    }

    pub fn get(&self, job: JobId) -> Option<&KnownJob> {
        self.jobs.get(&job)
    }

    /// Every known job, in id order.
    pub fn jobs(&self) -> impl Iterator<Item = (&JobId, &KnownJob)> {
        self.jobs.iter()
    }

    fn trim(&mut self) {
        while self.jobs.len() > DIRECTORY_JOBS {
            let oldest = |ended: bool| {
                let candidates = self.jobs.iter().filter(|(_, k)| !ended || k.notice.state.ended());
                candidates.min_by_key(|(j, k)| (k.heard, **j)).map(|(j, _)| *j)
            };
            if let Some(j) = oldest(true).or_else(|| oldest(false)) {
                self.jobs.remove(&j);
            }
        }
    }
}

/// The member that takes `job` over once its leader of `term` is gone: of the live members
/// `live` (the gone leader is not among them), the one whose hash with the job and the term is
/// highest (rendezvous hashing: every member with the same view picks the same one, and a
/// member leaving moves only the jobs it was to take).
pub fn successor(job: JobId, term: Term, live: &[MemberId]) -> Option<MemberId> {
    let rank = |m: &MemberId| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let text = format!("{job}/{term}/{}/{}", m.addr, m.join_time);
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h, *m)
    };
    live.iter().max_by_key(|m| rank(m)).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(port: u16, join_time: u64) -> MemberId {
        MemberId::new(std::net::SocketAddr::from(([127, 0, 0, 1], port)), join_time)
    }

    fn notice(n: u32, term: Term, leader: MemberId, state: JobState) -> JobNotice {
        JobNotice {
            job: JobId::new(member(7001, 1), n),
            term,
            leader,
            spec: "RainStorm a b in out 1".into(),
            dest: FileName::new("out").expect("a name"),
            state,
            outputs: 0,
            input_lines: 10,
            lines_read: 0,
            restarts: 0,
            generation: 0,
        }
    }

    #[test]
    fn a_notice_counts_only_from_the_leader_the_job_was_submitted_to() {
        let (a, b) = (member(7001, 1), member(7002, 1));
        let mut d = Directory::default();
        assert!(!d.heard(Time::ZERO, b, notice(1, 0, a, JobState::Running)), "not from the leader it names");
        assert!(!d.heard(Time::ZERO, b, notice(1, 0, b, JobState::Completed)), "not the job's own leader");
        assert!(d.heard(Time::ZERO, a, notice(1, 0, a, JobState::Running)));
        d.member_gone(Time::ZERO, a);
        let job = JobId::new(a, 1);
        assert!(d.get(job).unwrap().leader_gone.is_some());
        assert!(d.heard(Time::ZERO, a, notice(1, 0, a, JobState::Completed)));
        assert!(d.get(job).unwrap().leader_gone.is_none());
        assert!(!d.heard(Time::ZERO, a, notice(1, 0, a, JobState::Running)), "an ended job stays ended");
        assert_eq!(d.get(job).unwrap().notice.state, JobState::Completed);
    }

    #[test]
    fn every_view_picks_one_successor_and_a_leaver_moves_only_its_own_jobs() {
        let members: Vec<MemberId> = (1..=6).map(|i| member(7000 + i, u64::from(i))).collect();
        let job = JobId::new(members[0], 3);
        let pick = successor(job, 0, &members[1..]).expect("a successor");
        let mut shuffled = members[1..].to_vec();
        shuffled.reverse();
        assert_eq!(successor(job, 0, &shuffled), Some(pick), "the order of the view does not matter");
        let others: Vec<MemberId> = members[1..].iter().copied().filter(|m| *m != pick).collect();
        let next = successor(job, 0, &others).expect("another successor");
        assert_ne!(next, pick);
        let bystander = others.iter().copied().find(|m| *m != next).expect("a bystander");
        let without: Vec<MemberId> = members[1..].iter().copied().filter(|m| *m != bystander).collect();
        assert_eq!(successor(job, 0, &without), Some(pick), "a member that was not picked moves nothing");
        assert_eq!(successor(job, 0, &[]), None);
    }

    #[test]
    fn a_forwarded_orphan_counts_once_and_never_over_a_later_term_or_an_end() {
        let (a, b) = (member(7001, 1), member(7002, 1));
        let mut d = Directory::default();
        assert!(d.orphaned(Time(5), notice(1, 0, a, JobState::Running)));
        let job = JobId::new(a, 1);
        assert_eq!(d.get(job).unwrap().leader_gone, Some(Time(5)));
        assert_eq!(d.orphans(Time(4)).count(), 0, "not before the delay");
        assert_eq!(d.orphans(Time(5)).count(), 1);
        assert!(d.heard(Time(6), b, notice(1, 1, b, JobState::Running)), "a successor's notice");
        assert!(!d.orphaned(Time(7), notice(1, 0, a, JobState::Running)), "not over a later term");
        assert!(
            !d.orphaned(Time(7), notice(1, 1, member(7003, 1), JobState::Running)),
            "not over another leader"
        );
        d.members_are(&[b]);
        assert!(d.get(job).unwrap().leader_gone.is_none());
        assert!(d.heard(Time(8), b, notice(1, 1, b, JobState::Completed)));
        assert!(!d.orphaned(Time(9), notice(1, 1, b, JobState::Running)), "not over an end");
        assert!(
            !d.heard(Time(9), b, notice(1, 2, b, JobState::Failed("x".into()))),
            "an end stays as it was"
        );
    }

    #[test]
    fn the_directory_forgets_ended_jobs_first() {
        let a = member(7001, 1);
        let mut d = Directory::default();
        for n in 1..=DIRECTORY_JOBS as u32 + 10 {
            let state = if n % 2 == 0 { JobState::Completed } else { JobState::Running };
            assert!(d.heard(Time(u64::from(n)), a, notice(n, 0, a, state)));
        }
        assert_eq!(d.jobs().count(), DIRECTORY_JOBS);
        assert!(d.get(JobId::new(a, 1)).is_some(), "a running job outlives later ended ones");
        assert!(d.get(JobId::new(a, 2)).is_none(), "the ended job heard of first is forgotten");
        assert!(d.get(JobId::new(a, DIRECTORY_JOBS as u32 + 10)).is_some(), "the newest is kept");
    }
}
