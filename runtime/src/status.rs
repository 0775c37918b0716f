//! Each node's HTTP endpoint (axum, on the node's tokio runtime): Prometheus metrics at
//! `/metrics`, a live status page at `/` (one HTML file with uPlot, served from the binary),
//! and the JSON the page polls at `/api/status`.
//!
//! Everything shown comes from an [`Observation`]: a copy of the node's counters and state the
//! node task makes when asked ([`NodeHandle::observe`]); HTTP never touches the node itself.
//! A sampler takes one observation a second and keeps, per job this node leads, a history of
//! its throughput and p99 tuple latency, and of its tasks' rates.
//!
//! Invariants kept here:
//! * a request the node task does not answer within [`OBSERVE_TIMEOUT`] gets 503, and at most
//!   [`CONCURRENT_REQUESTS`] requests wait on the node at once (more get 503), so a busy node
//!   slows its page, never the other way round; an observation holds only what its use needs
//!   ([`Detail`]): the sampler never scans the files;
//! * memory is bounded: [`HISTORY_POINTS`] points for at most [`HISTORY_JOBS`] jobs, and the
//!   last [`MEMBER_EVENTS`] membership events;
//! * strings from users (file names, job specs) reach the page as JSON strings only; the page
//!   escapes them before they touch its HTML.

use crate::config::metrics_port;
use crate::driver::NodeHandle;
use crate::jobs::{JobBook, JobRecord};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rainstorm_core::histogram::LatencyHistogram;
use rainstorm_core::hydfs::{HydfsStats, RingId};
use rainstorm_core::membership::{MemberStatus, MemberView, MembershipEvent, MembershipStats, Phase, Role};
use rainstorm_core::node::NodeStats;
use rainstorm_core::rainstorm::{JobId, JobView, RainstormStats, TaskId};
use rainstorm_core::{MemberId, Node};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// How long an HTTP request waits for the node task's observation.
pub const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);
/// One point a second: five minutes of history per job.
pub const HISTORY_POINTS: usize = 300;
/// Jobs whose history is kept (the oldest is forgotten first).
pub const HISTORY_JOBS: usize = 16;
/// Membership events the page's feed shows.
pub const MEMBER_EVENTS: usize = 50;
/// Jobs the page lists (the newest; the metrics count them all).
pub const PAGE_JOBS: usize = 32;
/// HTTP requests that may wait for an observation at once; more get 503.
pub const CONCURRENT_REQUESTS: usize = 4;

/// How much an observation holds: each level holds what the one before it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Detail {
    /// Counters and the jobs this node leads (the page's sampler): no count that visits every
    /// file held (files under-replicated and bytes held are 0 in it).
    Jobs,
    /// Also the files held, counted (a scrape of `/metrics`).
    Counters,
    /// Also each file held and the newest jobs' records (the page).
    Full,
}

/// Jobs this node led, by state: running, completed, failed, lost.
pub type JobStates = [u64; 4];

fn state_of(record: &JobRecord) -> usize {
    match &record.ended {
        None => 0,
        Some((_, how)) if how.starts_with("completed") => 1,
        Some((_, how)) if how.starts_with("failed") => 2,
        Some(_) => 3,
    }
}

/// The names of [`JobStates`]' entries.
pub const JOB_STATES: [&str; 4] = ["running", "completed", "failed", "lost"];

const PAGE: &str = include_str!("status/index.html");
const UPLOT_JS: &str = include_str!("status/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("status/vendor/uPlot.min.css");

/// A copy of what the node knows, made by the node task for one scrape or page poll.
#[derive(Clone, Debug)]
pub struct Observation {
    pub me: MemberId,
    pub role: Role,
    pub phase: &'static str,
    pub incarnation: u64,
    pub suspicion: bool,
    pub node: NodeStats,
    pub membership: MembershipStats,
    pub hydfs: HydfsStats,
    pub rainstorm: RainstormStats,
    pub members: Vec<MemberView>,
    pub ring: Vec<(RingId, SocketAddr)>,
    /// Files this node holds (only in a full observation).
    pub files: Vec<FileObservation>,
    pub files_held: u64,
    pub bytes_held: u64,
    /// Files whose copy here is still being fetched.
    pub files_incomplete: u64,
    /// Files held here that lack a full set of complete replicas, as far as this node knows
    /// (`Hydfs::under_replicated`), and their bytes.
    pub files_under_replicated: u64,
    pub bytes_under_replicated: u64,
    pub tasks_hosted: u64,
    /// Copies HyDFS keeps of each file.
    pub replication: usize,
    /// The jobs this node leads now.
    pub led: Vec<JobView>,
    /// Every job this node led, by state.
    pub job_states: JobStates,
    /// The newest [`PAGE_JOBS`] jobs this node led, with what its events said (only in a full
    /// observation).
    pub book: Vec<(JobId, JobRecord)>,
}

#[derive(Clone, Debug)]
pub struct FileObservation {
    pub name: String,
    pub ring_id: RingId,
    pub bytes: u64,
    pub merged: u32,
    pub pending: u32,
    pub complete: bool,
    pub replicas: Vec<SocketAddr>,
}

/// Makes an observation of `node` to `detail`.
pub(crate) fn observe(node: &Node, book: &JobBook, detail: Detail) -> Observation {
    let full = detail == Detail::Full;
    let m = node.membership();
    let h = node.hydfs();
    let replication = h.config().replication;
    // The sampler's observation (every second) leaves out what visits every write held.
    let hydfs_stats = if detail >= Detail::Counters { h.stats() } else { h.counters() };
    let mut files = Vec::new();
    let (mut files_held, mut files_incomplete) = (0, 0);
    let held = if detail >= Detail::Counters { h.local_files() } else { Vec::new() };
    for (name, ring_id, digest, bytes) in held {
        files_held += 1;
        let complete = digest.incomplete == 0;
        files_incomplete += u64::from(!complete);
        if full {
            files.push(FileObservation {
                replicas: h.ring().replicas_of(&name, replication),
                name: name.to_string(),
                ring_id,
                bytes,
                merged: digest.merged,
                pending: digest.pending,
                complete,
            });
        }
    }
    let rainstorm = node.rainstorm();
    Observation {
        me: node.id(),
        role: m.role(),
        phase: match m.phase() {
            Phase::Idle => "not a member",
            Phase::Joining { .. } => "joining",
            Phase::Joined => "member",
            Phase::Leaving { .. } => "left",
        },
        incarnation: m.incarnation().0,
        suspicion: m.suspicion_enabled(),
        node: node.stats().clone(),
        membership: m.stats(),
        files_under_replicated: hydfs_stats.files_under_replicated,
        bytes_under_replicated: hydfs_stats.bytes_under_replicated,
        hydfs: hydfs_stats,
        rainstorm: rainstorm.stats(),
        members: m.members().collect(),
        ring: h.ring().members().collect(),
        files,
        files_held,
        bytes_held: if detail >= Detail::Counters { h.store().stored_bytes() } else { 0 },
        files_incomplete,
        tasks_hosted: rainstorm.hosted().len() as u64,
        replication,
        led: rainstorm.job_views(),
        job_states: book.records().fold([0; 4], |mut n, (_, r)| {
            n[state_of(r)] += 1;
            n
        }),
        book: if full {
            let mut newest: Vec<(JobId, JobRecord)> =
                book.records().rev().take(PAGE_JOBS).map(|(j, r)| (*j, r.clone())).collect();
            newest.reverse();
            newest
        } else {
            Vec::new()
        },
    }
}

/// What the page's history and rates are made of, shared by the sampler and the handlers.
struct Shared {
    handle: NodeHandle,
    /// Where this node's page is served.
    page: SocketAddr,
    started: Instant,
    history: Mutex<History>,
    requests: tokio::sync::Semaphore,
}

#[derive(Default)]
struct History {
    jobs: BTreeMap<JobId, JobHistory>,
    events: VecDeque<(Instant, &'static str, String)>,
}

struct JobHistory {
    points: VecDeque<Value>,
    seen: Instant,
    outputs: u64,
    latency: LatencyHistogram,
    consumed: BTreeMap<TaskId, u64>,
    task_rates: BTreeMap<TaskId, f64>,
}

/// Binds `addr` and serves the node's metrics and status page until the process ends.
/// Returns the address it listens on.
pub async fn serve(addr: SocketAddr, handle: NodeHandle) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let page = listener.local_addr()?;
    let shared = Arc::new(Shared {
        handle: handle.clone(),
        page,
        started: Instant::now(),
        history: Mutex::new(History::default()),
        requests: tokio::sync::Semaphore::new(CONCURRENT_REQUESTS),
    });
    tokio::spawn(sample(shared.clone()));
    tokio::spawn(watch_members(shared.clone(), handle.subscribe()));
    let app = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/uplot.js", get(|| async { ([(header::CONTENT_TYPE, "application/javascript")], UPLOT_JS) }))
        .route("/uplot.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], UPLOT_CSS) }))
        .with_state(shared);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "the metrics and status page server stopped");
        }
    });
    info!(addr = %page, "serving metrics at /metrics and the status page at /");
    Ok(page)
}

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "the node did not answer in time (busy or stopping)\n").into_response()
}

/// An observation for a request, if a request slot frees up and the node answers in time.
async fn observe_for_request(shared: &Shared, detail: Detail) -> Option<Observation> {
    let _slot = tokio::time::timeout(OBSERVE_TIMEOUT, shared.requests.acquire()).await.ok()?.ok()?;
    shared.handle.observe(detail, OBSERVE_TIMEOUT).await
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let Some(obs) = observe_for_request(&shared, Detail::Counters).await else { return unavailable() };
    match crate::metrics::encode(obs) {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {e}\n")).into_response()
        }
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let Some(obs) = observe_for_request(&shared, Detail::Full).await else { return unavailable() };
    let history = shared.history.lock().unwrap_or_else(|e| e.into_inner());
    // Read-only, and every node's page reads every other node's, which is another origin.
    ([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], axum::Json(status_json(&obs, &shared, &history)))
        .into_response()
}

/// Takes one observation a second into the jobs' histories.
async fn sample(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let Some(obs) = shared.handle.observe(Detail::Jobs, OBSERVE_TIMEOUT).await else {
            if shared.handle.is_stopped() {
                return;
            }
            continue;
        };
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64().max(1e-3);
        last = now;
        let mut history = shared.history.lock().unwrap_or_else(|e| e.into_inner());
        history.record(&obs, now, dt);
    }
}

impl History {
    fn record(&mut self, obs: &Observation, now: Instant, dt: f64) {
        let t = unix_secs();
        for view in &obs.led {
            let h = self.jobs.entry(view.job).or_insert_with(|| JobHistory {
                points: VecDeque::new(),
                seen: now,
                outputs: view.outputs,
                latency: view.tuple_latency,
                consumed: BTreeMap::new(),
                task_rates: BTreeMap::new(),
            });
            h.seen = now;
            let window = view.tuple_latency.since(&h.latency);
            let rate = view.outputs.saturating_sub(h.outputs) as f64 / dt;
            h.points.push_back(json!({ "t": t, "rate": rate, "p99_ms": window.quantile(0.99) }));
            if h.points.len() > HISTORY_POINTS {
                h.points.pop_front();
            }
            h.outputs = view.outputs;
            h.latency = view.tuple_latency;
            for task in &view.tasks {
                let before = h.consumed.insert(task.task, task.counts.consumed);
                let rate = before.map_or(0.0, |b| task.counts.consumed.saturating_sub(b) as f64 / dt);
                h.task_rates.insert(task.task, rate);
            }
        }
        while self.jobs.len() > HISTORY_JOBS {
            let Some(oldest) = self.jobs.iter().min_by_key(|(_, h)| h.seen).map(|(j, _)| *j) else { break };
            self.jobs.remove(&oldest);
        }
    }
}

/// Keeps the last membership events for the page's feed.
async fn watch_members(shared: Arc<Shared>, mut events: tokio::sync::broadcast::Receiver<MembershipEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        let (what, member) = match event {
            MembershipEvent::MemberJoined { member } => ("joined", member.to_string()),
            MembershipEvent::MemberSuspected { member, .. } => ("suspected", member.to_string()),
            MembershipEvent::MemberAlive { member, .. } => ("refuted", member.to_string()),
            MembershipEvent::MemberFailed { member, .. } => ("failed", member.to_string()),
            MembershipEvent::MemberLeft { member } => ("left", member.to_string()),
            MembershipEvent::ModeChanged { suspicion } => {
                ("mode", if suspicion { "PingAck+S" } else { "PingAck" }.to_owned())
            }
            MembershipEvent::SelfJoined { id, .. } => ("joined", id.to_string()),
            MembershipEvent::SelfDeclaredFailed { old } => ("failed", old.to_string()),
            MembershipEvent::SelfRefuted { .. } => continue,
            MembershipEvent::SelfLeft { id } => ("left", id.to_string()),
            MembershipEvent::JoinFailed { .. } => continue,
        };
        let mut history = shared.history.lock().unwrap_or_else(|e| e.into_inner());
        history.events.push_front((Instant::now(), what, member));
        history.events.truncate(MEMBER_EVENTS);
    }
}

fn unix_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The page of the node at `addr`: this node's own address, or the default of another node.
fn page_of(shared: &Shared, me: SocketAddr, addr: SocketAddr) -> String {
    if addr == me {
        let ip = if shared.page.ip().is_unspecified() { me.ip() } else { shared.page.ip() };
        return format!("http://{}/", SocketAddr::new(ip, shared.page.port()));
    }
    format!("http://{}/", SocketAddr::new(addr.ip(), metrics_port(addr.port())))
}

fn status_json(obs: &Observation, shared: &Shared, history: &History) -> Value {
    let me = obs.me.addr;
    let page = |a: SocketAddr| page_of(shared, me, a);
    let ids: BTreeMap<SocketAddr, String> =
        obs.members.iter().map(|m| (m.id.addr, m.id.to_string())).chain([(me, obs.me.to_string())]).collect();
    let members: Vec<Value> = obs
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id.to_string(),
                "addr": m.id.addr.to_string(),
                "incarnation": m.incarnation.0,
                "state": match m.status { MemberStatus::Alive => "alive", MemberStatus::Suspect { .. } => "suspect" },
                "page": page(m.id.addr),
            })
        })
        .collect();
    let now = Instant::now();
    let events: Vec<Value> = history
        .events
        .iter()
        .map(|(at, what, member)| {
            json!({ "age_s": now.duration_since(*at).as_secs_f64(), "what": what, "member": member })
        })
        .collect();
    let ring: Vec<Value> = obs
        .ring
        .iter()
        .map(|(rid, addr)| {
            json!({
                "ring_id": rid.to_string(),
                "addr": addr.to_string(),
                "id": ids.get(addr).cloned().unwrap_or_else(|| addr.to_string()),
                "me": *addr == me,
                "page": page(*addr),
            })
        })
        .collect();
    let files: Vec<Value> = obs
        .files
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "ring_id": f.ring_id.to_string(),
                "bytes": f.bytes,
                "merged": f.merged,
                "pending": f.pending,
                "replicas": f.replicas.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "complete": f.complete,
            })
        })
        .collect();
    let jobs: Vec<Value> =
        obs.book.iter().rev().map(|(job, record)| job_json(obs, history, *job, record, &page)).collect();
    let links: Vec<Value> = ids.keys().map(|a| json!({ "addr": a.to_string(), "page": page(*a) })).collect();
    json!({
        "node": {
            "id": obs.me.to_string(),
            "addr": me.to_string(),
            "role": match obs.role { Role::Introducer => "introducer", Role::Member => "member" },
            "phase": obs.phase,
            "incarnation": obs.incarnation,
            "ring_id": RingId::of_node(me).to_string(),
            "page": page(me),
            "uptime_s": shared.started.elapsed().as_secs_f64(),
            "now": unix_secs(),
        },
        "membership": { "suspicion": obs.suspicion, "members": members, "events": events },
        "ring": ring,
        "files": files,
        "hydfs": {
            "files_held": obs.files_held,
            "bytes_held": obs.bytes_held,
            "files_incomplete": obs.files_incomplete,
            "under_replicated": obs.files_under_replicated,
            "bytes_under_replicated": obs.bytes_under_replicated,
            "replication": obs.replication,
        },
        "jobs": jobs,
        "links": links,
    })
}

fn job_json(
    obs: &Observation,
    history: &History,
    job: JobId,
    record: &JobRecord,
    page: &dyn Fn(SocketAddr) -> String,
) -> Value {
    let view = obs.led.iter().find(|v| v.job == job);
    let h = history.jobs.get(&job);
    let state = JOB_STATES[state_of(record)];
    let stages = view.map_or_else(|| record.progress.stages.clone(), |v| v.stages.clone());
    let stages: Vec<Value> = stages
        .iter()
        .map(|s| {
            let name = if s.stage == 0 { "source".to_owned() } else { format!("op{}", s.stage) };
            json!({ "stage": s.stage, "name": name, "consumed": s.consumed, "emitted": s.emitted })
        })
        .collect();
    let tasks: Vec<Value> = view
        .map(|v| {
            v.tasks
                .iter()
                .map(|t| {
                    json!({
                        "task": t.task.to_string(),
                        "stage": t.task.stage,
                        "host": t.host.addr.to_string(),
                        "host_page": page(t.host.addr),
                        "state": t.state,
                        "consumed": t.counts.consumed,
                        "emitted": t.counts.emitted,
                        "rate": h.and_then(|h| h.task_rates.get(&t.task)).copied().unwrap_or(0.0),
                        "moves": t.moves,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": job.to_string(),
        "spec": record.spec,
        "state": state,
        "ended": record.ended.as_ref().map(|(_, how)| how.clone()),
        "led_here": true,
        "phase": view.map(|v| v.phase),
        "attempt": view.map(|v| v.attempt),
        "restarts": record.restarts,
        "outputs": view.map_or(record.outputs, |v| v.outputs),
        "input_lines": view.map_or(record.progress.input_lines, |v| v.input_lines),
        "lines_read": record.progress.lines_read.max(
            view.and_then(|v| v.stages.iter().find(|s| s.stage == 0)).map_or(0, |s| s.consumed)
        ),
        "stages": stages,
        "tasks": tasks,
        "history": h.map(|h| h.points.iter().cloned().collect::<Vec<_>>()).unwrap_or_default(),
    })
}
