//! Roles, end to end through `Node` (on the in-memory network of [`common`]): within a job, only
//! its leader deploys and controls tasks, only a task's host speaks for it, and no plan over the
//! limits is taken, whatever a member forges; a node without a cluster key runs no program.

mod common;

use common::{addr, counter, name, Cluster, Setup};
use rainstorm_core::hydfs::ClientOp;
use rainstorm_core::rainstorm::job::{JobPlan, Route, TaskId, SINK};
use rainstorm_core::rainstorm::message::{Batch, LinkMsg, Restore};
use rainstorm_core::rainstorm::{
    JobId, JobSpec, JobView, OperatorSpec, RainstormConfig, RainstormEvent, RainstormMsg, Tuple, TupleId,
};
use rainstorm_core::replay::FrameSeq;
use rainstorm_core::wire::{Body, Codec, Envelope};
use rainstorm_core::{Channel, MemberId};
use std::collections::BTreeMap;
use std::sync::Arc;

const NODES: usize = 5;
const LINES: usize = 400;

/// A cluster of [`NODES`] running one paced job led by node 0: `grep:keep` twice over
/// [`LINES`] lines, every third of which has `keep`.
fn running_job() -> (Cluster, JobId) {
    let mut c = Cluster::with(NODES, Setup { rainstorm: RainstormConfig::default(), ..Setup::default() });
    let input: String =
        (1..=LINES).map(|i| format!("{i},{}\n", if i % 3 == 0 { "keep" } else { "drop" })).collect();
    c.run(1, ClientOp::Create { name: name("in.csv"), data: input.into_bytes() }).expect("input stored");
    let spec = JobSpec {
        op1: OperatorSpec::parse("grep:keep").expect("spec"),
        op2: OperatorSpec::parse("grep:keep").expect("spec"),
        src: name("in.csv"),
        dest: name("out.txt"),
        tasks: 2,
        rate: Some(200),
    };
    let now = c.now;
    let job = c.nodes[0].start_job(now, spec).expect("started");
    for _ in 0..1_000 {
        if view(&c, job).is_some_and(|v| v.phase == "running") {
            return (c, job);
        }
        c.step(10);
    }
    panic!("the job never ran");
}

fn view(c: &Cluster, job: JobId) -> Option<JobView> {
    c.nodes[0].rainstorm().job_views().into_iter().find(|v| v.job == job)
}

/// Runs the cluster until the job ends; its committed outputs.
fn finish(c: &mut Cluster, job: JobId) -> u64 {
    for _ in 0..20_000 {
        for (_, e) in &c.jobs {
            match e {
                RainstormEvent::JobCompleted { job: j, outputs, .. } if *j == job => return *outputs,
                RainstormEvent::JobFailed { job: j, reason } if *j == job => {
                    panic!("the job failed: {reason}")
                }
                _ => {}
            }
        }
        c.step(10);
    }
    panic!("the job did not end: {}", c.nodes[0].rainstorm().describe().join("\n"));
}

/// A frame from `from` to node `to`, numbered far ahead so no replay check could refuse it.
fn forged(from: MemberId, to: usize, msg: RainstormMsg) -> Vec<u8> {
    let body = Body::Rainstorm(msg);
    let envelope = Envelope { from, to: addr(to), lane: body.lane(), seq: FrameSeq(1 << 40), body };
    Codec::plain().encode(&envelope, 64 << 20).expect("encodes")
}

fn index_of(c: &Cluster, id: MemberId) -> usize {
    c.nodes.iter().position(|n| n.id() == id).expect("a node of the cluster")
}

#[test]
fn a_link_batch_from_a_member_that_does_not_host_its_task_never_reaches_the_destination() {
    let (mut c, job) = running_job();
    let v = view(&c, job).expect("the job");
    let upstream = TaskId { stage: 2, index: 0 };
    let host = v.tasks.iter().find(|t| t.task == upstream).expect("placed").host;
    let forger = (1..NODES).map(|i| c.nodes[i].id()).find(|id| *id != host).expect("another member");
    let tuple =
        Tuple { id: TupleId { line: 1, path: vec![0, 0, 0] }, key: "k".into(), value: "FORGED".into() };
    let now = c.now;
    // Every number a link could be at, so that one of them is the next the sink expects.
    for seq in 0..64 {
        let batch = Batch::Tuples(Arc::new(vec![tuple.clone()]));
        let msg = LinkMsg::Batch { seq, batch };
        let link = RainstormMsg::Link { job, attempt: v.attempt, from: upstream, to: SINK, msg };
        c.nodes[0].handle_frame(now, Channel::Stream, &forged(forger, 0, link));
    }
    let outputs = finish(&mut c, job);
    let dest = String::from_utf8(c.get(2, &name("out.txt"))).expect("text");
    assert!(!dest.contains("FORGED"), "a forged tuple reached the destination:\n{dest}");
    assert_eq!(outputs as usize, LINES / 3);
    assert_eq!(dest.lines().count(), LINES / 3, "every output exactly once");
    assert_eq!(counter(&c.stats(0), "rainstorm.refused.not_the_task_host"), 64);
}

#[test]
fn deploys_controls_and_stops_only_come_from_the_jobs_leader_with_a_plan_within_the_limits() {
    let (mut c, job) = running_job();
    let v = view(&c, job).expect("the job");
    let leader = c.nodes[0].id();
    let task = TaskId { stage: 0, index: 0 };
    let worker_id = v.tasks.iter().find(|t| t.task == task).expect("placed").host;
    let worker = index_of(&c, worker_id);
    let forger = (1..NODES).map(|i| c.nodes[i].id()).find(|id| *id != worker_id).expect("another member");
    let plan = |leader: MemberId, tasks: u32| JobPlan {
        job: JobId::new(leader, 7),
        leader,
        origin: leader,
        ops: ["grep:x".into(), "grep:x".into()],
        src: name("in.csv"),
        dest: name("stolen.txt"),
        tasks,
        header: None,
        routes: [Route::Shuffle, Route::Shuffle],
        rate_per_source: None,
    };
    let deploy = |plan: JobPlan| RainstormMsg::Deploy {
        plan: Box::new(plan),
        attempt: 1,
        task,
        placement: BTreeMap::from([(task, worker_id)]),
        restore: Restore::default(),
        base: 0,
        manifest: None,
    };
    let now = c.now;
    let before = c.stats(worker);
    let hosted = c.nodes[worker].rainstorm().describe().len();
    // A plan of four billion tasks, from a member that signs it as its own leader: refused
    // before anything is allocated for it (taken, it would abort the worker on a 32 GiB
    // allocation).
    c.nodes[worker].handle_frame(
        now,
        Channel::Stream,
        &forged(forger, worker, deploy(plan(forger, u32::MAX))),
    );
    // A plan in the name of another leader (the real one), sent by the forger.
    c.nodes[worker].handle_frame(now, Channel::Stream, &forged(forger, worker, deploy(plan(leader, 2))));
    // Controls and stops of the running job from the forger.
    let control = RainstormMsg::Control {
        job,
        attempt: v.attempt,
        task,
        go: true,
        paced_ms: 0,
        trigger: 1_000,
        confirmed: 1_000,
    };
    c.nodes[worker].handle_frame(now, Channel::Stream, &forged(forger, worker, control));
    let stop = RainstormMsg::Stop { job, before: u64::MAX };
    c.nodes[worker].handle_frame(now, Channel::Stream, &forged(forger, worker, stop));
    let after = c.stats(worker);
    let refused = |cause: &str| {
        let name = format!("rainstorm.refused.{cause}");
        counter(&after, &name) - counter(&before, &name)
    };
    assert_eq!(refused("plan_over_limits"), 1);
    assert_eq!(refused("not_the_leader"), 3);
    assert_eq!(c.nodes[worker].rainstorm().describe().len(), hosted, "nothing new is hosted");
    c.step(10);
    assert_eq!(finish(&mut c, job) as usize, LINES / 3, "the job went on untouched");
    // The leader's own deploys were never refused.
    let total: u64 = (0..NODES).map(|i| counter(&c.stats(i), "rainstorm.refused.not_the_leader")).sum();
    assert_eq!(total, 3);
}

#[test]
fn a_keyless_node_runs_no_program_a_member_sends_it_and_starts_no_job_with_one() {
    // No key, and programs not allowed without one: the defaults.
    let mut c = Cluster::with(3, Setup::default());
    let program = format!("program:ops/evil@{} x", "ab".repeat(32));
    // Its own users cannot start a job with a program...
    let spec = JobSpec {
        op1: OperatorSpec::parse("grep:x").expect("spec"),
        op2: OperatorSpec::parse(&program).expect("spec"),
        src: name("in.csv"),
        dest: name("out.txt"),
        tasks: 1,
        rate: None,
    };
    let now = c.now;
    let e = c.nodes[1].start_job(now, spec).unwrap_err();
    assert!(e.to_string().contains("allow_programs_without_key"), "{e}");
    // ...and a rogue member that joined the keyless group cannot make it run one: it deploys a
    // job of its own, as its leader, with a program for stage 2 placed on node 1.
    let rogue = c.nodes[2].id();
    let worker = c.nodes[1].id();
    let task = TaskId { stage: 2, index: 0 };
    let plan = JobPlan {
        job: JobId::new(rogue, 1),
        leader: rogue,
        origin: rogue,
        ops: ["grep:x".into(), program],
        src: name("in.csv"),
        dest: name("out.txt"),
        tasks: 1,
        header: None,
        routes: [Route::Forward, Route::Shuffle],
        rate_per_source: None,
    };
    let deploy = RainstormMsg::Deploy {
        plan: Box::new(plan),
        attempt: 1,
        task,
        placement: BTreeMap::from([(task, worker)]),
        restore: Restore::default(),
        base: 0,
        manifest: None,
    };
    c.nodes[1].handle_frame(now, Channel::Stream, &forged(rogue, 1, deploy));
    let tasks = c.nodes[1].rainstorm().describe().join("\n");
    assert!(tasks.contains("failed: this node runs no operator programs"), "{tasks}");
    for _ in 0..100 {
        c.step(10);
    }
    assert!(c.program_calls.is_empty(), "no batch reached a program");
}

/// Every member learns each job and its leader from the leader's notices (`jobs` on any node),
/// including how it ended; a notice forged in the leader's name by another member is refused.
#[test]
fn every_member_knows_each_job_and_its_leader() {
    use rainstorm_core::rainstorm::directory::JobState;
    let (mut c, job) = running_job();
    c.step(1_000);
    let leader = c.nodes[0].id();
    for i in 1..NODES {
        let known = c.nodes[i].rainstorm().directory().get(job).cloned().expect("the job is known");
        assert_eq!((known.notice.leader, known.notice.term), (leader, 0), "node {i}");
        assert_eq!(known.notice.state, JobState::Running);
        assert!(known.leader_gone.is_none());
    }
    // Node 1 claims the job is over, in the leader's name.
    let mut forged_notice = c.nodes[1].rainstorm().directory().get(job).expect("known").notice.clone();
    forged_notice.state = JobState::Completed;
    let forger = c.nodes[1].id();
    let before = counter(&c.stats(2), "rainstorm.refused.not_the_leader");
    let msg = RainstormMsg::Announce(Box::new(forged_notice));
    let now = c.now;
    c.nodes[2].handle_frame(now, Channel::Stream, &forged(forger, 2, msg));
    assert_eq!(counter(&c.stats(2), "rainstorm.refused.not_the_leader"), before + 1);
    assert_eq!(c.nodes[2].rainstorm().directory().get(job).expect("known").notice.state, JobState::Running);
    let outputs = finish(&mut c, job);
    c.step(100);
    for i in 1..NODES {
        let known = c.nodes[i].rainstorm().directory().get(job).cloned().expect("the job is known");
        assert_eq!(known.notice.state, JobState::Completed, "node {i}");
        assert_eq!(known.notice.outputs, outputs, "node {i}");
    }
}

/// A job's end bars its leader's term on every worker that ran it, and only that term: a late
/// deploy of the ended leader, at any attempt of its term, is never taken, while a later
/// leader's first attempt is.
#[test]
fn an_ended_job_bars_its_leaders_term_and_no_later_one() {
    use rainstorm_core::rainstorm::first_attempt;
    let (mut c, job) = running_job();
    let v = view(&c, job).expect("the job");
    let task = TaskId { stage: 1, index: 0 };
    let worker_id = v.tasks.iter().find(|t| t.task == task).expect("placed").host;
    let worker = index_of(&c, worker_id);
    finish(&mut c, job);
    c.step(100);
    let leader = c.nodes[0].id();
    let deploy = |attempt| RainstormMsg::Deploy {
        plan: Box::new(JobPlan {
            job,
            leader,
            origin: leader,
            ops: ["grep:keep".into(), "grep:keep".into()],
            src: name("in.csv"),
            dest: name("out.txt"),
            tasks: 2,
            header: None,
            routes: [Route::Forward, Route::Forward],
            rate_per_source: Some(100),
        }),
        attempt,
        task,
        placement: BTreeMap::from([(task, worker_id)]),
        restore: Restore::default(),
        base: 0,
        manifest: None,
    };
    let hosts = |c: &Cluster, attempt| c.nodes[worker].rainstorm().hosted().contains(&(job, task, attempt));
    let now = c.now;
    let late = first_attempt(0) + 1_000;
    c.nodes[worker].handle_frame(now, Channel::Stream, &forged(leader, worker, deploy(late)));
    assert!(!hosts(&c, late), "a late deploy of the ended leader's term was taken");
    let next = first_attempt(1);
    c.nodes[worker].handle_frame(now, Channel::Stream, &forged(leader, worker, deploy(next)));
    assert!(hosts(&c, next), "a later term's deploy was refused");
}
