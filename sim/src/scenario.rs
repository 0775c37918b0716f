//! Scenarios: plain data that fully determines a simulated run.
//!
//! A [`Scenario`] holds the cluster size, the protocol settings, the network model and a fault
//! plan. With its `seed` it determines everything a run does. Scenarios come from three places:
//! [`Scenario::swarm`] draws one from a seed (each seed its own mix of faults), the named
//! scenarios in [`crate::named`], and [`scenario_strategy`], a proptest strategy that generates
//! and shrinks them. Any scenario can be saved as JSON and replayed.

use proptest::prelude::*;
use rainstorm_core::membership::MembershipConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Index of a node slot (an address). Slot 0 is the introducer.
pub type Slot = usize;

/// The most a node's clock runs fast or slow, in parts per million (1%): the rate error every
/// timeout and timer of the protocols is stated under (see "Clocks" in docs/ARCHITECTURE.md).
pub const MAX_CLOCK_DRIFT_PPM: i32 = 10_000;

/// How far past its epoch a stepped-back wall clock still reads, at least (ten minutes).
const WALL_CLOCK_MARGIN_MS: u64 = 600_000;

/// The network model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Datagrams lost, per thousand.
    pub loss_permille: u32,
    /// Datagrams delivered twice, per thousand.
    pub duplicate_permille: u32,
    /// One-way latency is uniform in `[latency_min_ms, latency_max_ms]`; unequal latencies reorder.
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// Each node's outgoing stream bandwidth in bytes per ms (0: unlimited). A stream frame
    /// leaves when the sender's link is free and takes its size over this rate.
    #[serde(default)]
    pub bandwidth_bytes_per_ms: u64,
    /// When the stream connection between two nodes breaks (a partition or a one-way cut
    /// separates them, either way round, or one of them crashes), each stream frame then in
    /// flight between them is lost with this probability, per thousand, as TCP loses what is
    /// in flight when a connection breaks...
    #[serde(default)]
    pub broken_stream_drop_permille: u32,
    /// ... or arrives twice with this one (a sender that sends again on a new connection);
    /// otherwise it arrives once. (A frame to a process that crashed never reaches the process
    /// started after it at the same address: that connection is gone.)
    #[serde(default)]
    pub broken_stream_duplicate_permille: u32,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            loss_permille: 0,
            duplicate_permille: 0,
            latency_min_ms: 1,
            latency_max_ms: 10,
            bandwidth_bytes_per_ms: 0,
            broken_stream_drop_permille: 0,
            broken_stream_duplicate_permille: 0,
        }
    }
}

/// One fault or operator action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// The process dies: volatile state lost, messages to it dropped.
    Crash { node: Slot },
    /// A new process starts at the slot's address (a new member id) and joins.
    Restart { node: Slot },
    /// The process stops for a while, then resumes and handles its backlog.
    Pause { node: Slot, for_ms: u64 },
    /// The process turns slow for `for_ms`: a CPU-starved, swapping or garbage-collecting
    /// process whose message handling is delayed by 0.2–2 s at times. Its receive queue drains
    /// late, not its clock: in episodes of 1–5 s (0.1–1.5 s of normal handling between them)
    /// every frame it receives is handed to it a fixed 0.2–2 s late (drawn per episode, from the
    /// run's seed), in arrival order, while its timers fire on time. So its acks leave late and
    /// the acks and nacks of its own probes are read after their timeouts: what such a process
    /// sees of a healthy cluster, and what Lifeguard's local health is for. (A stall-and-resume
    /// model, where the backlog is read between stalls, never lets a 3 s suspicion run out, and
    /// a slow process's kernel keeps queueing datagrams for it either way.) The slowness belongs
    /// to the process: a restart ends it.
    Slow { node: Slot, for_ms: u64 },
    /// Nodes in `side` and the rest cannot reach each other (both directions).
    Partition { side: Vec<Slot> },
    /// Datagrams and streams from `from` to `to` are dropped; the other direction works.
    OneWay { from: Vec<Slot>, to: Vec<Slot> },
    /// Every partition ends.
    Heal,
    /// The loss rate changes.
    SetLoss { permille: u32 },
    /// The node leaves voluntarily.
    Leave { node: Slot },
    /// The node joins again (after a leave).
    Join { node: Slot },
    /// The node switches suspicion for the whole cluster.
    SetSuspicion { node: Slot, on: bool },
    /// One block on the node's disk rots (a byte flips).
    Corrupt { node: Slot },
    /// One block on the node's disk turns unreadable (a bad sector): reading it fails as EIO
    /// does until it is written again.
    LoseBlock { node: Slot },
    /// The node's disk fills up: every block write fails as ENOSPC does, until `DiskFreed`.
    DiskFull { node: Slot },
    /// Space is freed on the node's disk.
    DiskFreed { node: Slot },
    /// Every process dies at once (a power cut): each keeps only what its disk had synced.
    CrashAll,
    /// Every crashed process starts again, the introducer first, each from its disk.
    RestartAll,
    /// A node running a task of the RainStorm job crashes (`pick` chooses among them; the
    /// job's leader and the node reading its output are spared). Nothing if none runs.
    CrashTaskHost { pick: u64 },
    /// A crashed node restarts (`pick` chooses among them). Nothing if none is down.
    RestartCrashed { pick: u64 },
    /// The node's wall clock is stepped by `by_ms`, back if negative. Its running process reads
    /// the monotonic clock and does not see the step; a process started on it later does.
    ClockJump { node: Slot, by_ms: i64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultAt {
    pub at_ms: u64,
    pub fault: Fault,
}

/// Everything a run needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    /// Node slots; all start at time 0 (slot 0 the introducer, then members join).
    pub nodes: usize,
    pub config: MembershipConfig,
    pub net: NetConfig,
    /// Offset of each node's wall clock from simulated time, in ms (missing entries are 0).
    pub clock_offsets_ms: Vec<u64>,
    /// Rate error of each node's clock, in parts per million (missing entries are 0; at most
    /// [`MAX_CLOCK_DRIFT_PPM`] either way): a node at +10,000 counts 1,010 ms per simulated second.
    #[serde(default)]
    pub clock_drift_ppm: Vec<i32>,
    /// Sorted by time.
    pub faults: Vec<FaultAt>,
    /// From this time on no new fault starts and every partition has healed.
    pub calm_from_ms: u64,
    pub duration_ms: u64,
    /// When set, every crash must be removed from every list within this many ms (the documented
    /// bound); used by calm named scenarios and the benchmark, not by the random sweep.
    pub strict_detection_ms: Option<u64>,
    /// The HyDFS file workload, if the scenario runs one.
    #[serde(default)]
    pub hydfs: Option<crate::hydfs::HydfsWorkload>,
    /// The RainStorm job, if the scenario runs one (it needs `hydfs` for its settings).
    #[serde(default)]
    pub rainstorm: Option<crate::rainstorm::harness::RainstormWorkload>,
    /// Whether the nodes run under a cluster key (frame tags and replay protection).
    #[serde(default)]
    pub cluster_key: bool,
}

impl Scenario {
    /// Time after the last fault within which all views must have converged (the timeouts it
    /// adds up run on the nodes' clocks, so it is stretched by the slowest one).
    pub fn convergence_bound_ms(&self) -> u64 {
        let cfg = &self.config;
        self.on_slowest_clock_ms(
            cfg.own_probe_detection_bound(self.nodes).0
                + 2 * cfg.introducer_announce_interval.0
                + (cfg.join_attempts as u64 + 2) * cfg.join_retry.0
                + crate::world::SUPERVISOR_REJOIN_DELAY_MS
                + 10 * cfg.protocol_period.0,
        )
    }

    /// The most simulated time `local_ms` of a node's clock can take: on the slowest clock of
    /// the scenario (a bound stated in a node's time, such as a timeout, holds in simulated time
    /// stretched by this much).
    pub fn on_slowest_clock_ms(&self, local_ms: u64) -> u64 {
        // As the world runs them: a rate error past the bound is taken at it.
        let slowest = self
            .clock_drift_ppm
            .iter()
            .map(|d| d.saturating_neg().clamp(0, MAX_CLOCK_DRIFT_PPM))
            .max()
            .unwrap_or(0);
        let rate = 1_000_000 - u64::from(slowest.unsigned_abs());
        (u128::from(local_ms) * 1_000_000).div_ceil(u128::from(rate)) as u64
    }

    /// Draws the seed's clock faults, swarm style, from an RNG of their own (`salt` tells the
    /// layers' sweeps apart), so the rest of the seed's scenario is what it was without them
    /// (but for the wall clocks' offsets, raised where a step back would reach the epoch).
    /// In half the seeds every node's clock runs fast or slow by up to [`MAX_CLOCK_DRIFT_PPM`];
    /// in two of five, wall clocks are stepped (forward and back, by up to 5 minutes) one to four
    /// times before the calm, mostly on nodes the fault plan restarts: a step shows only in the
    /// processes started after it.
    pub fn set_clocks(&mut self, salt: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ salt ^ 0x434c_4f43_4b00_0006);
        let bound = MAX_CLOCK_DRIFT_PPM;
        self.clock_drift_ppm = if rng.gen_bool(0.5) {
            (0..self.nodes).map(|_| rng.gen_range(-bound..=bound)).collect()
        } else {
            Vec::new()
        };
        if !rng.gen_bool(0.4) || self.calm_from_ms <= 1_000 {
            return;
        }
        let restarted: Vec<Slot> = self
            .faults
            .iter()
            .filter_map(|f| match f.fault {
                Fault::Restart { node } => Some(node),
                _ => None,
            })
            .collect();
        for _ in 0..rng.gen_range(1..=4) {
            let at_ms = rng.gen_range(1_000..self.calm_from_ms);
            let node = if !restarted.is_empty() && rng.gen_bool(0.7) {
                restarted[rng.gen_range(0..restarted.len())]
            } else {
                rng.gen_range(0..self.nodes)
            };
            let most_ms = [1_000, 10_000, 60_000, 300_000][rng.gen_range(0..4)];
            let by_ms = rng.gen_range(1..=most_ms) * if rng.gen_bool(0.5) { 1 } else { -1 };
            self.faults.push(FaultAt { at_ms, fault: Fault::ClockJump { node, by_ms } });
        }
        self.faults.sort_by_key(|f| f.at_ms);
        self.keep_wall_clocks_past_their_epoch();
    }

    /// Starts each stepped wall clock far enough past its epoch that its steps back never
    /// reach it. A real wall clock reads decades past 1970, so steps of minutes never take it
    /// there; a model clock that starts at the epoch would read the floor (0) in every process
    /// started after a step back, and two processes of one address would take the same member
    /// id, which no protocol can tell apart (see "Clocks" in docs/ARCHITECTURE.md).
    fn keep_wall_clocks_past_their_epoch(&mut self) {
        let mut back_ms = vec![0u64; self.nodes];
        for f in &self.faults {
            if let Fault::ClockJump { node, by_ms } = f.fault {
                if by_ms < 0 && node < self.nodes {
                    back_ms[node] = back_ms[node].saturating_add(by_ms.unsigned_abs());
                }
            }
        }
        if back_ms.iter().all(|b| *b == 0) {
            return;
        }
        self.clock_offsets_ms.resize(self.nodes, 0);
        for (offset, back) in self.clock_offsets_ms.iter_mut().zip(back_ms) {
            if back > 0 {
                *offset = (*offset).max(back.saturating_add(WALL_CLOCK_MARGIN_MS));
            }
        }
    }

    /// Whether the run lasts long enough after the faults stop to check convergence.
    pub fn checks_convergence(&self) -> bool {
        self.duration_ms >= self.calm_from_ms + self.convergence_bound_ms()
    }

    /// A scenario drawn from `seed`: swarm testing, each seed its own mix of faults.
    ///
    /// Half the seeds of every swarm run under a cluster key, drawn apart from everything else
    /// so that the key does not change the rest of a seed's scenario.
    pub fn swarm(seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5157_4152_4d00_0001);
        let nodes = match rng.gen_range(0..10) {
            0..=5 => rng.gen_range(3..=10),
            6..=8 => rng.gen_range(11..=32),
            _ => rng.gen_range(33..=64),
        };
        let mut config = MembershipConfig::lan();
        config.suspicion_at_start = rng.gen_bool(0.7);
        let loss_permille = [0, 0, 10, 20, 50, 100, 200][rng.gen_range(0..7)];
        let latency_max_ms = [5, 20, 60, 120][rng.gen_range(0..4)];
        let net = NetConfig {
            loss_permille,
            duplicate_permille: if rng.gen_bool(0.3) { 10 } else { 0 },
            latency_min_ms: 1,
            latency_max_ms,
            bandwidth_bytes_per_ms: 0,
            ..NetConfig::default()
        };
        let clock_offsets_ms = if rng.gen_bool(0.5) {
            (0..nodes).map(|_| rng.gen_range(0..1_000_000)).collect()
        } else {
            Vec::new()
        };

        // Swarm: each kind of fault is switched on or off for this seed.
        let crashes = rng.gen_bool(0.7);
        let restarts = crashes && rng.gen_bool(0.7);
        let pauses = rng.gen_bool(0.4);
        let partitions = rng.gen_bool(0.4);
        let leaves = rng.gen_bool(0.3);
        let mode_switches = rng.gen_bool(0.3);
        let introducer_faults = crashes && rng.gen_bool(0.2);
        let loss_changes = rng.gen_bool(0.2);

        let warmup_ms = 5_000 + 300 * nodes as u64;
        let calm_from_ms = warmup_ms + rng.gen_range(20_000..60_000);
        let mut faults = Vec::new();
        let mut t = warmup_ms;
        let mut down: Vec<Slot> = Vec::new();
        while t < calm_from_ms {
            t += rng.gen_range(1_000..8_000);
            if t >= calm_from_ms {
                break;
            }
            let member = rng.gen_range(1..nodes);
            let any = if introducer_faults && rng.gen_bool(0.15) { 0 } else { member };
            let choice = rng.gen_range(0..8);
            let fault = match choice {
                0 | 1 if crashes && down.len() < 2 && !down.contains(&any) => {
                    down.push(any);
                    Fault::Crash { node: any }
                }
                2 if restarts && !down.is_empty() => {
                    let node = down.remove(rng.gen_range(0..down.len()));
                    Fault::Restart { node }
                }
                3 if pauses && !down.contains(&member) => {
                    Fault::Pause { node: member, for_ms: rng.gen_range(200..8_000) }
                }
                4 if partitions => {
                    if rng.gen_bool(0.5) {
                        let k = rng.gen_range(1..=(nodes / 2).max(1));
                        let side = sample(&mut rng, nodes, k);
                        Fault::Partition { side }
                    } else {
                        let from = sample(&mut rng, nodes, 1);
                        let k = rng.gen_range(1..=(nodes / 2).max(1));
                        let to = sample(&mut rng, nodes, k);
                        Fault::OneWay { from, to }
                    }
                }
                5 if partitions => Fault::Heal,
                6 if leaves && !down.contains(&member) => {
                    let at_ms = t + rng.gen_range(3_000..10_000);
                    if at_ms < calm_from_ms {
                        faults.push(FaultAt { at_ms, fault: Fault::Join { node: member } });
                    }
                    Fault::Leave { node: member }
                }
                7 if mode_switches => Fault::SetSuspicion { node: member, on: rng.gen_bool(0.5) },
                7 if loss_changes => Fault::SetLoss { permille: [0, 20, 50, 100][rng.gen_range(0..4)] },
                _ => continue,
            };
            faults.push(FaultAt { at_ms: t, fault });
        }
        // Faults stop: bring every crashed node back (the network calms in `end_faults`).
        for node in down {
            faults.push(FaultAt { at_ms: calm_from_ms, fault: Fault::Restart { node } });
        }
        faults.sort_by_key(|f| f.at_ms);
        let mut scenario = Scenario {
            name: format!("swarm-{seed}"),
            seed,
            nodes,
            config,
            net,
            clock_offsets_ms,
            clock_drift_ppm: Vec::new(),
            faults,
            calm_from_ms,
            duration_ms: 0,
            strict_detection_ms: None,
            hydfs: None,
            rainstorm: None,
            cluster_key: false,
        };
        scenario.set_clocks(0x5157_4152_4d00_0001);
        scenario.add_slow_member(seed, warmup_ms);
        scenario.end_faults();
        scenario.cluster_key = keyed(seed);
        scenario.net.set_broken_streams(seed);
        scenario
    }

    /// One seed in seven of the membership swarm has a slow member (a random non-introducer
    /// slot, from the end of the warm-up until the faults stop), drawn apart from the rest of
    /// the scenario so that the other seeds stay as they were.
    fn add_slow_member(&mut self, seed: u64, warmup_ms: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x534c_4f57_0000_0004);
        if self.nodes < 3 || !rng.gen_ratio(1, 7) {
            return;
        }
        let node = rng.gen_range(1..self.nodes);
        let for_ms = self.calm_from_ms.saturating_sub(warmup_ms);
        self.faults.push(FaultAt { at_ms: warmup_ms, fault: Fault::Slow { node, for_ms } });
        self.faults.sort_by_key(|f| f.at_ms);
    }

    /// A HyDFS scenario drawn from `seed`: a file workload on 4–12 nodes under up to two crashes
    /// at a time, restarts, loss, partitions, pauses and disk corruption. After the faults stop,
    /// membership converges, re-replication runs, every file is merged once and the run is
    /// checked.
    pub fn hydfs_swarm(seed: u64) -> Scenario {
        use crate::hydfs::HydfsWorkload;
        use rainstorm_core::hydfs::HydfsConfig;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4859_4446_5300_0002);
        let nodes = if rng.gen_bool(0.8) { rng.gen_range(4..=8) } else { rng.gen_range(9..=12) };
        let mut config = MembershipConfig::lan();
        config.suspicion_at_start = rng.gen_bool(0.8);
        let net = layer_net(&mut rng, true);
        let clock_offsets_ms = layer_clock_offsets(&mut rng, nodes);
        let crashes = rng.gen_bool(0.7);
        let partitions = rng.gen_bool(0.3);
        let pauses = rng.gen_bool(0.3);
        let corruption = rng.gen_bool(0.5);
        let warmup_ms = 4_000 + 200 * nodes as u64;
        let calm_from_ms = warmup_ms + rng.gen_range(20_000..45_000);
        let mut faults = Vec::new();
        let mut down: Vec<Slot> = Vec::new();
        // Failed copies and until when they count: a crashed node until it has restarted and had
        // time to pull its files back, a rotten block until the scrubber found it and a replica
        // repaired it. At most two at a time: the fault model the guarantees are stated for.
        let mut failing: Vec<(Slot, u64)> = Vec::new();
        const RECOVERY_MS: u64 = 20_000;
        let mut t = warmup_ms + 2_000;
        while t < calm_from_ms {
            t += rng.gen_range(1_000..6_000);
            if t >= calm_from_ms {
                break;
            }
            failing.retain(|(n, until)| *until > t || down.contains(n));
            let node = rng.gen_range(1..nodes);
            let budget = failing.len() < 2;
            let fault = match rng.gen_range(0..7) {
                0 | 1 if crashes && budget && !down.contains(&node) => {
                    down.push(node);
                    failing.push((node, u64::MAX));
                    Fault::Crash { node }
                }
                2 if !down.is_empty() => {
                    let node = down.remove(rng.gen_range(0..down.len()));
                    for f in failing.iter_mut().filter(|(n, _)| *n == node) {
                        f.1 = t + RECOVERY_MS;
                    }
                    Fault::Restart { node }
                }
                3 if partitions => {
                    let k = rng.gen_range(1..=(nodes / 2).max(1));
                    let heal = t + rng.gen_range(1_000..8_000);
                    if heal < calm_from_ms {
                        faults.push(FaultAt { at_ms: heal, fault: Fault::Heal });
                    }
                    Fault::Partition { side: sample(&mut rng, nodes, k) }
                }
                // Pauses stay well under the suspicion timeout here; the membership sweep covers
                // the pauses that outlast it.
                4 if pauses && !down.contains(&node) => {
                    Fault::Pause { node, for_ms: rng.gen_range(200..2_000) }
                }
                5 | 6 if corruption && budget && !down.contains(&node) => {
                    failing.push((node, t + RECOVERY_MS));
                    Fault::Corrupt { node }
                }
                _ => continue,
            };
            faults.push(FaultAt { at_ms: t, fault });
        }
        for node in down {
            faults.push(FaultAt { at_ms: calm_from_ms, fault: Fault::Restart { node } });
        }
        restarts_from_disk(seed, nodes, warmup_ms, calm_from_ms, &mut faults);
        faults.sort_by_key(|f| f.at_ms);
        let client_count = rng.gen_range(1..=3.min(nodes));
        let clients = sample(&mut rng, nodes, client_count);
        let hydfs_config = HydfsConfig {
            cache_bytes: [0, 64 << 10, 8 << 20][rng.gen_range(0..3)],
            // Scrubbing at 2 MiB per round (1 MiB/s) covers a simulated node's few MiB in seconds.
            scrub_bytes_per_round: 2 << 20,
            ..HydfsConfig::default()
        };
        let workload = HydfsWorkload {
            config: hydfs_config,
            clients,
            files: rng.gen_range(3..=16),
            zipf_milli: [0, 800, 1200][rng.gen_range(0..3)],
            think_ms: rng.gen_range(200..1_500),
            large_permille: [0, 10, 40][rng.gen_range(0..3)],
            small_max_bytes: [256, 4096, 40_000][rng.gen_range(0..3)],
            large_max_bytes: 3 << 20,
            start_ms: warmup_ms,
            stop_ms: calm_from_ms,
            final_merge_ms: 0,
            background_sync: seed % 2 == 1,
        };
        let mut scenario = Scenario {
            name: format!("hydfs-{seed}"),
            seed,
            nodes,
            config,
            net,
            clock_offsets_ms,
            clock_drift_ppm: Vec::new(),
            faults,
            calm_from_ms,
            duration_ms: 0,
            strict_detection_ms: None,
            hydfs: Some(workload),
            rainstorm: None,
            cluster_key: false,
        };
        scenario.set_clocks(0x4859_4446_5300_0002);
        scenario.end_faults();
        scenario.cluster_key = keyed(seed);
        scenario.net.set_broken_streams(seed);
        scenario
    }

    /// A RainStorm scenario drawn from `seed`: one job on a generated input or a window of the
    /// Traffic Signs data, with up to two worker crashes at a time (also during recovery),
    /// restarts, pauses, partitions, loss, delay and duplication while it runs, and, in some
    /// seeds, a crash of its leader.
    pub fn rainstorm_swarm(seed: u64) -> Scenario {
        use crate::hydfs::HydfsWorkload;
        use crate::rainstorm::harness::{InputSpec, RainstormWorkload};
        use rainstorm_core::hydfs::HydfsConfig;
        use rainstorm_core::rainstorm::RainstormConfig;
        use rainstorm_core::Millis;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5241_494e_5300_0003);
        let nodes = rng.gen_range(5..=8);
        let mut config = MembershipConfig::lan();
        config.suspicion_at_start = rng.gen_bool(0.8);
        let net = layer_net(&mut rng, false);
        let clock_offsets_ms = layer_clock_offsets(&mut rng, nodes);
        let leader = rng.gen_range(1..nodes);
        let reader = (1..nodes).find(|s| *s != leader).unwrap_or(0);
        let warmup_ms = 3_000 + 200 * nodes as u64;
        let start_ms = warmup_ms;
        // The input first: its size sets the pace of the job, and the pace when faults fall.
        let input_seed = rng.gen();
        let input = if rng.gen_bool(0.5) {
            InputSpec::TrafficSigns { max_lines: rng.gen_range(20..600) }
        } else {
            InputSpec::Generated { lines: rng.gen_range(20..600) }
        };
        let probe = RainstormWorkload {
            config: RainstormConfig::default(),
            leader,
            input: input.clone(),
            input_seed,
            op1: String::new(),
            op2: String::new(),
            tasks: 1,
            chunk_bytes: 0,
            rate: None,
            start_ms,
            deadline_ms: 0,
            leader_crash_ms: None,
            reader,
        };
        let lines = rainstorm_core::rainstorm::source_lines(&probe.content()).count() as u64;
        // Most jobs are paced to last a few seconds, as a live stream would, so that crashes
        // fall while they run; the rest run flat out.
        let job_ms = if rng.gen_bool(0.75) { rng.gen_range(1_500..6_000) } else { 0 };
        let rate = (job_ms > 0).then(|| (lines * 1_000 / job_ms).max(1));
        let fault_window = rng.gen_range(3_000..12_000).max(job_ms + 1_000);
        let calm_from_ms = start_ms + 500 + fault_window;
        // Three jobs in ten lose their leader, at any point of the job: a successor must take
        // them over and complete them.
        let leader_crash_ms =
            rng.gen_bool(0.3).then(|| start_ms + rng.gen_range(800..job_ms.max(1_500) + 1_000));
        // Some leaders stand still for a few seconds while their job runs (a long pause: the
        // others declare it failed falsely): a successor takes the job over, and the deposed
        // leader, running again with its commits in flight, must commit nothing more.
        let leader_pause = (leader_crash_ms.is_none() && rng.gen_bool(0.15)).then(|| {
            let at = start_ms + rng.gen_range(800..job_ms.max(1_500) + 1_000);
            (at, rng.gen_range(4_000..8_000))
        });
        let mut faults = Vec::new();
        // Crashes hit a node running one of the job's tasks when they fall (the world picks
        // it), and restarts bring back a crashed node. Failed copies, as in the HyDFS sweep: a
        // crashed node counts until it has restarted and had time to pull its files back; at
        // most two at a time (the fault model HyDFS, and so the checkpoint log and the
        // destination, are durable under). A crashing leader takes its copies with it for the
        // rest of the run: one fewer to spare.
        let mut down = 0usize;
        let mut failing: Vec<u64> = Vec::new();
        let max_failing = if leader_crash_ms.is_some() { 1 } else { 2 };
        const RECOVERY_MS: u64 = 20_000;
        // The first fault is a crash while the job runs: early in a paced job, at once in a
        // fast one (which may still be setting up).
        let first =
            if job_ms > 0 { rng.gen_range(300..(job_ms * 2 / 3).max(400)) } else { rng.gen_range(50..400) };
        let mut t = start_ms + first;
        let mut pick_crash = true;
        while t < calm_from_ms {
            failing.retain(|until| *until > t);
            let node = rng.gen_range(0..nodes);
            let choice = if std::mem::take(&mut pick_crash) { 0 } else { rng.gen_range(0..8) };
            let fault = match choice {
                0..=2 if failing.len() < max_failing => {
                    down += 1;
                    failing.push(u64::MAX);
                    Some(Fault::CrashTaskHost { pick: rng.gen() })
                }
                3 | 4 if down > 0 => {
                    down -= 1;
                    if let Some(f) = failing.iter_mut().find(|f| **f == u64::MAX) {
                        *f = t + RECOVERY_MS;
                    }
                    Some(Fault::RestartCrashed { pick: rng.gen() })
                }
                // The leader stays on the majority side and never stands still: a leader cut
                // off is declared failed and ends its jobs (the leader-crash seeds cover that).
                5 => {
                    let heal = t + rng.gen_range(500..4_000);
                    if heal < calm_from_ms {
                        faults.push(FaultAt { at_ms: heal, fault: Fault::Heal });
                    }
                    let k = rng.gen_range(1..=((nodes - 1) / 2).max(1));
                    let others: Vec<Slot> = (0..nodes).filter(|s| *s != leader).collect();
                    let side = sample(&mut rng, others.len(), k).into_iter().map(|i| others[i]).collect();
                    Some(Fault::Partition { side })
                }
                6 if node != leader => Some(Fault::Pause { node, for_ms: rng.gen_range(100..1_500) }),
                7 => Some(Fault::SetLoss { permille: [0, 20, 100][rng.gen_range(0..3)] }),
                _ => None,
            };
            if let Some(fault) = fault {
                faults.push(FaultAt { at_ms: t, fault });
            }
            t += rng.gen_range(200..2_000);
        }
        if let Some(at) = leader_crash_ms {
            faults.push(FaultAt { at_ms: at, fault: Fault::Crash { node: leader } });
        }
        if let Some((at, for_ms)) = leader_pause {
            faults.push(FaultAt { at_ms: at, fault: Fault::Pause { node: leader, for_ms } });
        }
        for _ in 0..down {
            faults.push(FaultAt { at_ms: calm_from_ms, fault: Fault::RestartCrashed { pick: 0 } });
        }
        faults.sort_by_key(|f| f.at_ms);
        let pick = |rng: &mut ChaCha8Rng, options: &[u64]| options[rng.gen_range(0..options.len())];
        let rs_config = RainstormConfig {
            checkpoint_interval: Millis(rng.gen_range(10..150)),
            max_pending_checkpoints: rng.gen_range(1..=3),
            batch_bytes: pick(&mut rng, &[256, 4_096, 65_536]) as u32,
            batch_tuples: pick(&mut rng, &[1, 4, 16, 64, 1_024]) as u32,
            linger: Millis(rng.gen_range(1..20)),
            window: rng.gen_range(1..=8),
            window_bytes: pick(&mut rng, &[1_024, 65_536, 1 << 20]) as u32,
            retry: Millis(rng.gen_range(200..1_500)),
            status_interval: Millis(rng.gen_range(100..600)),
            read_ahead: rng.gen_range(1..=4),
            program_window: rng.gen_range(1..=4),
            sink_buffer_bytes: pick(&mut rng, &[4_096, 1 << 20, 64 << 20]),
            compact_records: pick(&mut rng, &[3, 10, 50, 1_000]) as u32,
            ..RainstormConfig::default()
        };
        // Small parts in most seeds, so sources read many parts and lines cross them.
        let chunk_bytes = pick(&mut rng, &[1_024, 4_096, 1 << 20]) as usize;
        let mut job = RainstormWorkload {
            config: rs_config,
            tasks: rng.gen_range(1..=4),
            chunk_bytes,
            rate,
            leader_crash_ms,
            ..probe
        };
        let content = job.content();
        (job.op1, job.op2) = crate::rainstorm::input::pick_ops(&mut rng, &content);
        // A third of the jobs run emulated operator programs instead of the built-ins (drawn
        // apart, so the rest of the scenario is the same either way).
        if ChaCha8Rng::seed_from_u64(seed ^ 0x5052_4f47).gen_bool(0.3) {
            if let Some(programs) = crate::rainstorm::programs::as_programs(&job.op1, &job.op2) {
                (job.op1, job.op2) = programs;
            }
        }
        let cache_bytes = [0, 8 << 20][rng.gen_range(0..2)];
        let files = HydfsWorkload::settings_only(
            HydfsConfig { cache_bytes, chunk_bytes, ..HydfsConfig::default() },
            seed % 2 == 1,
        );
        let mut scenario = Scenario {
            name: format!("rainstorm-{seed}"),
            seed,
            nodes,
            config,
            net,
            clock_offsets_ms,
            clock_drift_ppm: Vec::new(),
            faults,
            calm_from_ms,
            duration_ms: 0,
            strict_detection_ms: None,
            hydfs: Some(files),
            rainstorm: Some(job),
            cluster_key: false,
        };
        scenario.set_clocks(0x5241_494e_5300_0003);
        scenario.end_faults();
        scenario.cluster_key = keyed(seed);
        scenario.net.set_broken_streams(seed);
        scenario
    }

    /// Ends the fault phase at `calm_from_ms`: partitions heal, loss (a fault too) stops, members
    /// that left join again, and the run lasts long enough to check convergence. (PingAck mode
    /// declares a member failed on one unanswered probe round, so any loss keeps a small group
    /// churning: convergence is only promised once the faults really stop.)
    pub fn end_faults(&mut self) {
        let calm = self.calm_from_ms;
        self.faults.retain(|f| f.at_ms < calm || !matches!(f.fault, Fault::Heal | Fault::SetLoss { .. }));
        self.faults.push(FaultAt { at_ms: calm, fault: Fault::Heal });
        self.faults.push(FaultAt { at_ms: calm, fault: Fault::SetLoss { permille: 0 } });
        self.rejoin_members_left_at_calm();
        self.duration_ms = calm + self.convergence_bound_ms();
        if let Some(w) = self.hydfs.as_mut() {
            // Membership has converged by `duration_ms`; give re-replication a few rounds, merge
            // every file once, and check when the merges have had time to finish.
            w.stop_ms = w.stop_ms.min(calm);
            // Pending appends no node can complete (their client died mid-upload) are dropped
            // after the orphan limit; the final merge comes after that too.
            let c = &w.config;
            let orphan_limit = c.coordinator_timeout.0 + c.request_timeout.0 + 2 * c.anti_entropy_interval.0;
            w.final_merge_ms = self.duration_ms + orphan_limit + 5 * c.anti_entropy_interval.0;
            self.duration_ms = w.final_merge_ms + w.config.coordinator_timeout.0 + 5_000;
        }
        let bound = self.convergence_bound_ms();
        let latency_max_ms = self.net.latency_max_ms;
        if let Some(job) = self.rainstorm.as_mut() {
            // Once membership has converged, the job has a minute to finish (a rollback, file
            // operations waiting out their timeouts, retries) plus, if it is paced, the time its
            // input takes at its rate, and the time its batches take at the slowest latency
            // (the batches of its busiest stage: an operator may emit many tuples per line).
            // The run then ends.
            let lines = rainstorm_core::rainstorm::source_lines(&job.content()).count() as u64;
            let paced_ms = job.rate.map_or(0, |r| lines * 1_000 / r.max(1));
            let batches = crate::rainstorm::harness::RainstormHarness::new(job.clone())
                .most_stage_batches()
                .max(lines.div_ceil(u64::from(job.config.batch_tuples.max(1))));
            let work_ms = batches * 4 * latency_max_ms;
            job.deadline_ms = calm + bound + 60_000 + paced_ms + work_ms;
            self.duration_ms = job.deadline_ms + 2_000;
        }
    }

    /// Every member that left and was not told to join again joins at `calm_from_ms`, so the run
    /// ends with the whole cluster up.
    fn rejoin_members_left_at_calm(&mut self) {
        // Nodes still crashed when the faults stop restart then (a shrunk fault plan may have lost
        // a restart: without it the introducer could stay down and no one could join).
        let mut down = std::collections::BTreeSet::new();
        for f in self.faults.iter().filter(|f| f.at_ms <= self.calm_from_ms) {
            match f.fault {
                Fault::Crash { node } => {
                    down.insert(node);
                }
                Fault::Restart { node } => {
                    down.remove(&node);
                }
                _ => {}
            }
        }
        for node in down {
            self.faults.push(FaultAt { at_ms: self.calm_from_ms, fault: Fault::Restart { node } });
        }
        let mut left = std::collections::BTreeSet::new();
        for f in &self.faults {
            match f.fault {
                Fault::Leave { node } => {
                    left.insert(node);
                }
                Fault::Join { node } | Fault::Restart { node } | Fault::Crash { node } => {
                    left.remove(&node);
                }
                _ => {}
            }
        }
        for node in left {
            self.faults.push(FaultAt { at_ms: self.calm_from_ms, fault: Fault::Join { node } });
        }
        self.faults.sort_by_key(|f| f.at_ms);
    }

    /// A readable summary: every parameter that shaped the run.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(s, "scenario {} (seed {})", self.name, self.seed);
        let _ = writeln!(
            s,
            "  nodes {}  duration {} ms  calm from {} ms  suspicion at start {}  cluster key {}",
            self.nodes,
            self.duration_ms,
            self.calm_from_ms,
            c.suspicion_at_start,
            if self.cluster_key { "yes" } else { "no" }
        );
        let _ = writeln!(
            s,
            "  period {}  ping timeout {}  k {}  suspicion timeout {}  lambda {}",
            c.protocol_period, c.ping_timeout, c.indirect_probes, c.suspicion_timeout, c.retransmit_mult
        );
        let _ = writeln!(
            s,
            "  loss {}‰  duplicate {}‰  latency {}..{} ms  clock offsets {}",
            self.net.loss_permille,
            self.net.duplicate_permille,
            self.net.latency_min_ms,
            self.net.latency_max_ms,
            if self.clock_offsets_ms.is_empty() { "none" } else { "random" }
        );
        if !self.clock_drift_ppm.is_empty() {
            let _ = writeln!(s, "  clock rate errors (ppm) {:?}", self.clock_drift_ppm);
        }
        let _ = writeln!(
            s,
            "  broken stream connections: frames in flight lost {}‰, duplicated {}‰",
            self.net.broken_stream_drop_permille, self.net.broken_stream_duplicate_permille
        );
        match &self.hydfs {
            // Settings only (`HydfsWorkload::settings_only`): a RainStorm job's files.
            Some(w) if w.clients.is_empty() => {
                let _ = writeln!(
                    s,
                    "  hydfs: no client workload (the files are the job's)  cache {} B",
                    w.config.cache_bytes
                );
            }
            Some(w) => {
                let _ = writeln!(
                    s,
                    "  hydfs: clients {:?}  files {}  zipf {}  think {} ms  large {}‰ (to {} B)  small to {} B  cache {} B",
                    w.clients,
                    w.files,
                    w.zipf_milli as f64 / 1000.0,
                    w.think_ms,
                    w.large_permille,
                    w.large_max_bytes,
                    w.small_max_bytes,
                    w.config.cache_bytes
                );
                let _ = writeln!(
                    s,
                    "  hydfs: ops {}..{} ms  final merge at {} ms",
                    w.start_ms, w.stop_ms, w.final_merge_ms
                );
            }
            None => {}
        }
        if let Some(b) = self.strict_detection_ms {
            let _ = writeln!(s, "  strict detection bound {b} ms");
        }
        let _ = writeln!(s, "  faults ({}):", self.faults.len());
        for f in &self.faults {
            let _ = writeln!(s, "    {:>8} ms  {:?}", f.at_ms, f.fault);
        }
        s
    }
}

/// The network of a HyDFS or RainStorm swarm seed (with a per-node stream bandwidth if asked).
/// Whether a swarm seed runs under a cluster key: from an RNG of its own, so the draw changes
/// nothing else in the seed's scenario.
fn keyed(seed: u64) -> bool {
    ChaCha8Rng::seed_from_u64(seed ^ 0x4b45_5945_4400_0004).gen_bool(0.5)
}

fn layer_net(rng: &mut ChaCha8Rng, bandwidth: bool) -> NetConfig {
    let loss_permille = [0, 0, 10, 20, 50][rng.gen_range(0..5)];
    let duplicate_permille = if rng.gen_bool(0.2) { 10 } else { 0 };
    let latency_max_ms = [5, 20, 60][rng.gen_range(0..3)];
    let bandwidth_bytes_per_ms = if bandwidth { [0, 12_500, 125_000][rng.gen_range(0..3)] } else { 0 };
    NetConfig {
        loss_permille,
        duplicate_permille,
        latency_min_ms: 1,
        latency_max_ms,
        bandwidth_bytes_per_ms,
        ..NetConfig::default()
    }
}

impl NetConfig {
    /// Draws what breaking stream connections do to the frames in flight, swarm style: in a
    /// third of the seeds nothing (every frame arrives), in others light, heavy or total loss,
    /// some with duplicates. Drawn apart from the rest of the scenario, so that the rest of a
    /// seed's scenario is what it was without them.
    pub fn set_broken_streams(&mut self, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4252_4f4b_454e_0005);
        let (drop, duplicate) = match rng.gen_range(0..6) {
            0 | 1 => (0, 0),
            2 => (rng.gen_range(1..200), 0),
            3 => (rng.gen_range(1..200), rng.gen_range(1..100)),
            4 => (rng.gen_range(200..=800), rng.gen_range(0..=200)),
            _ => (1000, 0),
        };
        self.broken_stream_drop_permille = drop;
        self.broken_stream_duplicate_permille = duplicate;
        debug_assert!(drop + duplicate <= 1000, "fates of a frame are a distribution");
    }
}

/// Clock offsets of a HyDFS or RainStorm swarm seed: none, or up to 100 s per node.
fn layer_clock_offsets(rng: &mut ChaCha8Rng, nodes: usize) -> Vec<u64> {
    if rng.gen_bool(0.3) {
        (0..nodes).map(|_| rng.gen_range(0..100_000)).collect()
    } else {
        Vec::new()
    }
}

fn sample(rng: &mut ChaCha8Rng, nodes: usize, k: usize) -> Vec<Slot> {
    let mut all: Vec<Slot> = (0..nodes).collect();
    let mut out = Vec::new();
    for _ in 0..k.min(nodes) {
        out.push(all.swap_remove(rng.gen_range(0..all.len())));
    }
    out.sort_unstable();
    out
}

/// A proptest strategy over scenarios: swarm scenarios whose fault plans proptest can shrink
/// (fewer nodes, fewer faults, less loss), so a failure comes out minimal.
pub fn scenario_strategy() -> impl Strategy<Value = Scenario> {
    (any::<u64>(), 3usize..=16, 0u32..=200)
        .prop_flat_map(|(seed, nodes, loss)| {
            let base = Scenario::swarm(seed);
            let faults = base.faults.clone();
            let len = faults.len();
            (Just((seed, nodes, loss)), proptest::sample::subsequence(faults, 0..=len))
        })
        .prop_map(|((seed, nodes, loss), faults)| {
            let mut s = Scenario::swarm(seed);
            s.nodes = nodes;
            s.net.loss_permille = loss;
            s.clock_offsets_ms.truncate(nodes);
            s.clock_drift_ppm.truncate(nodes);
            s.faults = faults.into_iter().filter(|f| fault_fits(&f.fault, nodes)).collect();
            s.end_faults();
            s.name = format!("proptest-{seed}");
            s
        })
}

/// Faults that test what survives on disk, drawn from their own RNG so that they change nothing
/// else in a seed: half the rotten blocks become unreadable ones; one seed in five restarts
/// every member in turn, each down 0.5–3 s, faster than re-replication could move a file; and
/// every seed has one power cut (every process crashes at once, keeping only what its disk
/// synced) with every node started again 1–6 s later. Single-node crashes, pauses and disk
/// faults inside those windows are dropped (their planned restarts stay, and are harmless).
/// One seed in three also fills one member's disk for a while.
fn restarts_from_disk(seed: u64, nodes: usize, warmup_ms: u64, calm_from_ms: u64, faults: &mut Vec<FaultAt>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4449_534b_0000_0006);
    for f in faults.iter_mut() {
        if let Fault::Corrupt { node } = f.fault {
            if rng.gen_bool(0.5) {
                f.fault = Fault::LoseBlock { node };
            }
        }
    }
    let window = |faults: &mut Vec<FaultAt>, from: u64, to: u64| {
        faults.retain(|f| {
            !(from..=to).contains(&f.at_ms)
                || !matches!(
                    f.fault,
                    Fault::Crash { .. }
                        | Fault::Corrupt { .. }
                        | Fault::LoseBlock { .. }
                        | Fault::Pause { .. }
                )
        })
    };
    let mut free_from = warmup_ms + 4_000;
    if rng.gen_bool(0.2) {
        let mut t = rng.gen_range(free_from..free_from + 5_000);
        let from = t;
        let mut plan = Vec::new();
        for node in 1..nodes {
            let back = t + rng.gen_range(500..3_000);
            plan.push(FaultAt { at_ms: t, fault: Fault::Crash { node } });
            plan.push(FaultAt { at_ms: back, fault: Fault::Restart { node } });
            t = back + rng.gen_range(500..3_000);
        }
        if t + 10_000 < calm_from_ms {
            window(faults, from, t);
            faults.extend(plan);
            free_from = t + 1_000;
        }
    }
    if calm_from_ms > free_from + 8_000 {
        let at = rng.gen_range(free_from..calm_from_ms - 8_000);
        let back = at + rng.gen_range(1_000..6_000);
        window(faults, at, back);
        faults.push(FaultAt { at_ms: at, fault: Fault::CrashAll });
        faults.push(FaultAt { at_ms: back, fault: Fault::RestartAll });
    }
    // One seed in three fills a member's disk for 1–10 s: its writes are refused, it stays
    // readable, and space comes back well before the calm phase.
    if rng.gen_bool(1.0 / 3.0) && nodes > 1 && calm_from_ms > warmup_ms + 14_000 {
        let node = rng.gen_range(1..nodes);
        let at = rng.gen_range(warmup_ms + 2_000..calm_from_ms - 12_000);
        let freed = at + rng.gen_range(1_000..10_000);
        faults.push(FaultAt { at_ms: at, fault: Fault::DiskFull { node } });
        faults.push(FaultAt { at_ms: freed, fault: Fault::DiskFreed { node } });
    }
}

impl Fault {
    /// The one slot a single-node fault acts on (`None` for partitions, cuts and cluster-wide
    /// faults, and for faults that pick their slot when they happen).
    pub(crate) fn node(&self) -> Option<Slot> {
        match self {
            Fault::Crash { node }
            | Fault::Restart { node }
            | Fault::Pause { node, .. }
            | Fault::Slow { node, .. }
            | Fault::Leave { node }
            | Fault::Join { node }
            | Fault::SetSuspicion { node, .. }
            | Fault::Corrupt { node }
            | Fault::LoseBlock { node }
            | Fault::DiskFull { node }
            | Fault::DiskFreed { node }
            | Fault::ClockJump { node, .. } => Some(*node),
            Fault::CrashAll | Fault::RestartAll => None,
            Fault::Partition { .. }
            | Fault::OneWay { .. }
            | Fault::Heal
            | Fault::SetLoss { .. }
            | Fault::CrashTaskHost { .. }
            | Fault::RestartCrashed { .. } => None,
        }
    }
}

/// Whether every slot `f` names exists in a cluster of `nodes`.
pub(crate) fn fault_fits(f: &Fault, nodes: usize) -> bool {
    let ok = |n: &Slot| *n < nodes;
    match f {
        Fault::Partition { side } => side.iter().all(ok),
        Fault::OneWay { from, to } => from.iter().chain(to).all(ok),
        single => single.node().is_none_or(|n| ok(&n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_is_a_function_of_the_seed_and_round_trips_as_json() {
        let a = Scenario::swarm(7);
        assert_eq!(a, Scenario::swarm(7));
        assert_ne!(a, Scenario::swarm(8));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Scenario>(&json).unwrap(), a);
        assert!(a.checks_convergence());
    }

    #[test]
    fn scenarios_saved_before_broken_streams_were_modelled_still_load() {
        let mut old = serde_json::to_value(Scenario::swarm(7)).unwrap();
        let net = old["net"].as_object_mut().unwrap();
        net.remove("broken_stream_drop_permille");
        net.remove("broken_stream_duplicate_permille");
        let s: Scenario = serde_json::from_value(old).unwrap();
        assert_eq!((s.net.broken_stream_drop_permille, s.net.broken_stream_duplicate_permille), (0, 0));
    }

    #[test]
    fn scenarios_saved_before_clock_drift_was_modelled_still_load() {
        let mut old = serde_json::to_value(Scenario::hydfs_swarm(3)).unwrap();
        old.as_object_mut().unwrap().remove("clock_drift_ppm");
        let s: Scenario = serde_json::from_value(old).unwrap();
        assert!(s.clock_drift_ppm.is_empty(), "no drift: every clock runs at the true rate");
    }

    #[test]
    fn clock_faults_vary_by_seed_within_the_rate_bound() {
        let all: Vec<Scenario> = (0..100)
            .flat_map(|seed| {
                [Scenario::swarm(seed), Scenario::hydfs_swarm(seed), Scenario::rainstorm_swarm(seed)]
            })
            .collect();
        let drift = |s: &Scenario| s.clock_drift_ppm.iter().map(|d| d.abs()).max().unwrap_or(0);
        assert!(all.iter().all(|s| drift(s) <= MAX_CLOCK_DRIFT_PPM));
        assert!(all.iter().any(|s| drift(s) == 0) && all.iter().any(|s| drift(s) > MAX_CLOCK_DRIFT_PPM / 2));
        let jumps = |s: &Scenario| -> Vec<i64> {
            s.faults
                .iter()
                .filter_map(|f| match f.fault {
                    Fault::ClockJump { by_ms, .. } => Some(by_ms),
                    _ => None,
                })
                .collect()
        };
        assert!(all.iter().any(|s| jumps(s).iter().any(|j| *j < 0)), "some step back");
        assert!(all.iter().any(|s| jumps(s).iter().any(|j| *j > 0)), "some step forward");
        assert!(all.iter().any(|s| jumps(s).is_empty()));
        // No wall clock is ever stepped back to its epoch: it reads 10 minutes past it at least.
        for s in &all {
            for node in 0..s.nodes {
                let back: i64 = s
                    .faults
                    .iter()
                    .filter_map(|f| match f.fault {
                        Fault::ClockJump { node: n, by_ms } if n == node && by_ms < 0 => Some(by_ms),
                        _ => None,
                    })
                    .sum();
                let offset = s.clock_offsets_ms.get(node).copied().unwrap_or(0);
                assert!(
                    offset as i64 + back >= WALL_CLOCK_MARGIN_MS as i64 || back == 0,
                    "{} n{node}",
                    s.name
                );
            }
        }
        // The rest of a seed's scenario does not depend on them.
        let mut s = Scenario::swarm(11);
        let others: Vec<FaultAt> =
            s.faults.iter().filter(|f| !matches!(f.fault, Fault::ClockJump { .. })).cloned().collect();
        s.faults = others.clone();
        s.set_clocks(99);
        s.faults.retain(|f| !matches!(f.fault, Fault::ClockJump { .. }));
        assert_eq!(s.faults, others);
    }

    #[test]
    fn broken_stream_fates_vary_by_seed_from_none_to_total_loss() {
        let fates: Vec<(u32, u32)> = (0..200)
            .map(|seed| Scenario::hydfs_swarm(seed).net)
            .map(|n| (n.broken_stream_drop_permille, n.broken_stream_duplicate_permille))
            .collect();
        assert!(fates.iter().all(|(d, u)| d + u <= 1000));
        assert!(fates.contains(&(0, 0)), "some seeds lose nothing");
        assert!(fates.contains(&(1000, 0)), "some lose everything in flight");
        assert!(fates.iter().any(|(d, u)| *d > 0 && *d < 1000 && *u > 0), "some duplicate");
        // The rest of a seed's scenario does not depend on them.
        let mut s = Scenario::swarm(11);
        let faults = s.faults.clone();
        s.net.set_broken_streams(12);
        assert_eq!(s.faults, faults);
    }

    #[test]
    fn swarm_never_has_more_than_two_nodes_down_at_once() {
        for seed in 0..300 {
            let s = Scenario::swarm(seed);
            let mut down = std::collections::BTreeSet::new();
            for f in &s.faults {
                match f.fault {
                    Fault::Crash { node } => {
                        down.insert(node);
                    }
                    Fault::Restart { node } => {
                        down.remove(&node);
                    }
                    _ => {}
                }
                assert!(down.len() <= 2, "seed {seed}");
            }
            assert!(down.is_empty(), "seed {seed} ends with nodes down");
        }
    }
}
