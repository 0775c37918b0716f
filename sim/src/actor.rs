//! What the simulator drives: any sans-IO membership implementation (with or without HyDFS)
//! behind one small trait.
//!
//! [`rainstorm_core::Node`] implements it here; the benchmark also implements it for the `foca`
//! library, so both run under the same network, faults and checkers.

use crate::disk::SimDisk;
use rainstorm_core::command::Command;
use rainstorm_core::hydfs::{ClientOp, Hydfs, HydfsConfig, HydfsError, OpId};
use rainstorm_core::limits::LimitsConfig;
use rainstorm_core::membership::{MembershipConfig, Role};
use rainstorm_core::node::{NodeConfig, NodeEvent};
use rainstorm_core::rainstorm::{JobError, JobId, JobSpec, ProgramResult, RainstormConfig};
use rainstorm_core::wire::{ClusterKey, Codec};
use rainstorm_core::{Channel, MemberId, Node, NodeAddr, Time, Transmit};

/// How the simulator starts one process.
#[derive(Clone, Debug)]
pub struct ActorStart {
    pub role: Role,
    pub addr: NodeAddr,
    pub introducer: NodeAddr,
    pub config: MembershipConfig,
    /// The process's clock at start.
    pub now: Time,
    pub seed: u64,
    /// HyDFS settings, when the scenario runs a file workload.
    pub hydfs: Option<HydfsConfig>,
    /// RainStorm settings, when the scenario runs a job.
    pub rainstorm: Option<RainstormConfig>,
    /// Whether the cluster runs under a cluster key.
    pub cluster_key: bool,
    /// The machine's disk: a restarted process recovers what its predecessor synced.
    pub disk: SimDisk,
}

/// A sans-IO membership node as the simulator sees it. All times are the node's local clock.
pub trait Actor {
    /// Starts a process. A member must begin joining by itself (as `member` does on start).
    fn start(start: &ActorStart) -> Self;
    fn handle_frame(&mut self, now: Time, channel: Channel, frame: &[u8]);
    fn handle_send_failed(&mut self, now: Time, to: NodeAddr);
    fn handle_timeout(&mut self, now: Time);
    /// An operator command (join, leave, enable_sus, disable_sus). Refusals are fine.
    fn command(&mut self, now: Time, command: Command);
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_event(&mut self) -> Option<NodeEvent>;
    fn poll_timeout(&self) -> Option<Time>;
    /// The current member id, if this process has one.
    fn id(&self) -> MemberId;
    fn is_joined(&self) -> bool;
    /// The other members this node lists.
    fn view(&self) -> Vec<MemberId>;
    fn suspicion_enabled(&self) -> bool;
    /// Sizes of internal queues, for the boundedness checker.
    fn queue_lengths(&self) -> Vec<(&'static str, usize)>;
    /// Frames the node produced but could not encode within their channel's limit.
    fn unsendable_frames(&self) -> u64 {
        0
    }
    /// Frames the node refused for any cause but a repeated sequence number (the simulated
    /// network duplicates datagrams; it never corrupts, forges or truncates a frame) or a
    /// sender it does not list as a member (views differ while members join and fail), and
    /// RainStorm messages it refused for their sender's role (no honest node sends one, but for
    /// a deploy to a restarted address).
    fn refused_frames(&self) -> u64 {
        0
    }
    /// Starts a HyDFS client operation (`None`: this implementation has no HyDFS).
    fn submit(&mut self, _now: Time, _op: ClientOp) -> Option<Result<OpId, HydfsError>> {
        None
    }
    /// The HyDFS state, for the checkers.
    fn hydfs(&self) -> Option<&Hydfs> {
        None
    }
    /// Starts a RainStorm job led by this node (`None`: this implementation has no RainStorm).
    fn start_job(&mut self, _now: Time, _spec: JobSpec) -> Option<Result<JobId, JobError>> {
        None
    }
    /// What each RainStorm task and sink on this node holds (for the bounded-buffer checker).
    fn rainstorm_buffers(&self) -> Vec<rainstorm_core::rainstorm::Buffers> {
        Vec::new()
    }
    /// Tuple batches this node's RainStorm tasks sent (for the coalescing checker).
    fn rainstorm_batches(&self) -> u64 {
        0
    }
    /// A readable account of the node's RainStorm jobs and tasks (for failure reports).
    fn describe_jobs(&self) -> Vec<String> {
        Vec::new()
    }
    /// An operator program's answer to a [`NodeEvent::Program`] call.
    fn handle_program_result(&mut self, _now: Time, _token: u64, _result: Result<ProgramResult, String>) {}
}

impl Actor for Node {
    fn start(s: &ActorStart) -> Node {
        let cfg = NodeConfig {
            role: s.role,
            addr: s.addr,
            introducer: s.introducer,
            membership: s.config.clone(),
            hydfs: s.hydfs.clone().unwrap_or_default(),
            // The simulated cluster runs its programs (in process) with or without a key.
            rainstorm: RainstormConfig { run_programs: true, ..s.rainstorm.clone().unwrap_or_default() },
            limits: LimitsConfig::default(),
            codec: if s.cluster_key {
                Codec::keyed(ClusterKey::from_passphrase("simulated cluster key"), Vec::new())
            } else {
                Codec::plain()
            },
        };
        let mut node = Node::with_storage(cfg, s.now, s.seed, Box::new(s.disk.clone()))
            .expect("a fresh simulated disk never fails");
        if s.role == Role::Member {
            let _ = node.handle_command(s.now, Command::Join);
        }
        node
    }

    fn handle_frame(&mut self, now: Time, channel: Channel, frame: &[u8]) {
        Node::handle_frame(self, now, channel, frame);
    }

    fn handle_send_failed(&mut self, now: Time, to: NodeAddr) {
        Node::handle_send_failed(self, now, to, "connection refused");
    }

    fn handle_timeout(&mut self, now: Time) {
        Node::handle_timeout(self, now);
    }

    fn command(&mut self, now: Time, command: Command) {
        let _ = self.handle_command(now, command);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        Node::poll_transmit(self)
    }

    fn poll_event(&mut self) -> Option<NodeEvent> {
        Node::poll_event(self)
    }

    fn poll_timeout(&self) -> Option<Time> {
        Node::poll_timeout(self)
    }

    fn id(&self) -> MemberId {
        Node::id(self)
    }

    fn is_joined(&self) -> bool {
        self.membership().is_joined()
    }

    fn view(&self) -> Vec<MemberId> {
        self.membership().members().map(|v| v.id).collect()
    }

    fn suspicion_enabled(&self) -> bool {
        self.membership().suspicion_enabled()
    }

    fn queue_lengths(&self) -> Vec<(&'static str, usize)> {
        self.membership().queue_lengths().to_vec()
    }

    fn unsendable_frames(&self) -> u64 {
        self.stats().frames_unsendable
    }

    fn refused_frames(&self) -> u64 {
        let stats = self.stats();
        let expected = [rainstorm_core::replay::REPLAYED, rainstorm_core::node::NOT_A_MEMBER];
        let expected: u64 = expected.iter().filter_map(|cause| stats.frames_rejected.get(cause)).sum();
        // A deploy meant for the process this one replaced at its address is refused as not
        // placed here: honest, until the leader hears of the restart.
        let stale = rainstorm_core::rainstorm::Refusal::NotPlacedHere.cause();
        let roles: u64 =
            self.rainstorm().stats().refused.iter().filter(|(c, _)| **c != stale).map(|(_, n)| n).sum();
        stats.rejected_total() - expected + roles
    }

    fn submit(&mut self, now: Time, op: ClientOp) -> Option<Result<OpId, HydfsError>> {
        Some(Node::submit(self, now, op))
    }

    fn hydfs(&self) -> Option<&Hydfs> {
        Some(Node::hydfs(self))
    }

    fn start_job(&mut self, now: Time, spec: JobSpec) -> Option<Result<JobId, JobError>> {
        Some(Node::start_job(self, now, spec))
    }

    fn describe_jobs(&self) -> Vec<String> {
        self.rainstorm().describe()
    }

    fn rainstorm_buffers(&self) -> Vec<rainstorm_core::rainstorm::Buffers> {
        self.rainstorm().buffers()
    }

    fn rainstorm_batches(&self) -> u64 {
        self.rainstorm().batches_sent()
    }

    fn handle_program_result(&mut self, now: Time, token: u64, result: Result<ProgramResult, String>) {
        Node::handle_program_result(self, now, token, result)
    }
}
