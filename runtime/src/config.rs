//! Node configuration: a TOML file and command-line flags, flags winning. Every problem is
//! reported as one line naming the field (`config field `timings.ping_timeout_ms`: ...`).
//!
//! ```toml
//! bind = "0.0.0.0:7001"          # UDP and TCP listen address
//! advertise = "10.0.0.5:7001"    # the address others reach this node at (default: bind)
//! introducer = "10.0.0.1:7000"   # members only
//! data_dir = "/var/lib/rainstorm" # logs, the control socket, blocks; one node per dir
//! suspicion = true               # start in PingAck+S (switchable at run time)
//! lifeguard = true               # Lifeguard local health awareness (fewer false failures)
//! cluster_key_file = "/etc/rainstorm/cluster.key" # a keyed BLAKE3 tag on every frame (see below)
//! # cluster_key = "<64 hex digits>" # the key itself instead of a file (not both)
//! # accepted_keys = ["<64 hex digits>"] # also accepted during a key rollover (see `reload_keys`)
//! drop_rate = 0.0                # experiments: drop this fraction of outgoing datagrams
//! metrics_addr = "127.0.0.1:8001" # HTTP: Prometheus metrics at /metrics, the status page at /
//!                                # (default: loopback, port + 1000; "off" serves neither)
//! threads = 2                    # of the node's async runtime (1..=256; 1: one thread, best
//!                                # where several nodes share a machine's cores)
//! scheduling = "normal"          # the node's CPU scheduling: "normal", or "batch" (no waking
//!                                # thread preempts another: best where several nodes share cores;
//!                                # unset: as the process was started)
//!
//! [timings]
//! protocol_period_ms = 1000
//! ping_timeout_ms = 300
//! indirect_probes = 3
//! suspicion_timeout_ms = 3000
//! retransmit_mult = 3
//! sync_interval_ms = 10000
//! join_attempts = 3
//! join_retry_ms = 1000
//!
//! [hydfs]
//! cache_mb = 64                  # the client's read cache (0 turns it off)
//! repair_mb_per_sec = 128        # re-replication pull rate (0: unlimited)
//! max_write_mb = 1024            # largest create or append
//! max_name_bytes = 255           # longest file name (1..=4096)
//! max_transfers = 1024           # writes and merges coordinated at once; more are refused as busy (0: unlimited)
//! max_pending_appends = 10000    # unmerged appends per file; more are refused until a merge (0: unlimited)
//! max_file_meta_mb = 12          # the most one file's writes may take to describe (about 300,000 appends); at most stream_frame_mb - 1 (unset: lowered to that)
//! tombstone_ttl_s = 86400        # how long a deleted file is remembered (a copy cut off longer may come back)
//! max_tombstones = 100000        # deleted files remembered at most (the nearest to expiring forgotten first)
//!
//! [rainstorm]
//! program_start_timeout_ms = 10000 # an operator program's handshake
//! program_batch_timeout_ms = 30000 # an operator program's answer to one batch
//! program_max_size_mb = 256      # largest operator program fetched (refused before its bytes are)
//! program_max_memory_mb = 4096   # an operator program's address space (0: unlimited)
//! program_max_cpu_s = 0          # an operator program's CPU time over its whole life (0: unlimited)
//! program_max_open_files = 1024  # files an operator program may hold open (0: unlimited)
//! checkpoint_interval_ms = 25    # how often the jobs this node leads checkpoint (bounds output latency)
//! batch_bytes = 65536            # a batch between tasks is sent once it holds this many bytes...
//! batch_tuples = 1024            # ...or this many tuples (or after waiting 5 ms)
//! max_batch_tuples = 262144      # tuples one received batch may hold (0: unlimited)
//! allow_programs_without_key = false # run operator programs even without a cluster key
//!
//! [limits]                       # against hostile or broken input; each breach is counted in `stats`
//! max_datagram_bytes = 1400      # largest UDP datagram sent or accepted (256..=65000)
//! stream_frame_mb = 16           # largest TCP frame sent or accepted (at least 9: a checkpoint record + 1 MiB)
//! peer_requests_per_sec = 20000  # HyDFS/RainStorm requests accepted per second from one peer (0: unlimited)
//! peer_request_burst = 40000     # requests one peer may send at once
//! rate_limited_peers = 1024      # peers whose rate is tracked (the stalest is forgotten)
//! max_inbound_connections = 1024 # TCP connections from peers open at once; more are closed at once
//! stream_idle_timeout_s = 120    # an inbound connection with no frame started for this long is closed (over 60)
//! stream_frame_timeout_s = 30    # a started frame must arrive whole within this long
//! max_send_queue_mb = 64         # bytes waiting to be sent per peer and lane; more are dropped (as a failed send)
//! ```
//!
//! A cluster key is 32 random bytes written as 64 hex digits (`rainstorm keygen` makes one);
//! a passphrase is refused. `cluster_key_file` names a file only its owner may read (mode 0600
//! or stricter) holding the key on its first line and, on the lines after it, keys also
//! accepted during a rollover; `reload_keys` reads it again.

use crate::programs::ProgramLimits;
use crate::streams::{StreamLimits, STREAM_IDLE};
use rainstorm_core::hydfs::HydfsConfig;
use rainstorm_core::limits::{LimitsConfig, LimitsError};
use rainstorm_core::membership::{MembershipConfig, Role};
use rainstorm_core::rainstorm::RainstormConfig;
use rainstorm_core::wire::{ClusterKey, Codec};
use rainstorm_core::Millis;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest `rainstorm.batch_tuples` accepted: the most tuples a task may coalesce into one
/// batch for a downstream task (batches between tasks are bounded; receivers also refuse any
/// over `max_batch_tuples`).
pub const MAX_BATCH_TUPLES: u32 = 65_536;

/// Settings as written in a file or given as flags: everything optional, merged, then checked.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigInput {
    pub bind: Option<SocketAddr>,
    pub advertise: Option<SocketAddr>,
    pub introducer: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub suspicion: Option<bool>,
    pub lifeguard: Option<bool>,
    pub cluster_key: Option<String>,
    pub cluster_key_file: Option<PathBuf>,
    pub accepted_keys: Option<Vec<String>>,
    pub drop_rate: Option<f64>,
    /// `host:port`, or `off`.
    pub metrics_addr: Option<String>,
    /// Threads of the node's async runtime.
    pub threads: Option<u16>,
    /// How the node's threads are scheduled.
    pub scheduling: Option<Scheduling>,
    #[serde(default)]
    pub timings: TimingsInput,
    #[serde(default)]
    pub hydfs: HydfsInput,
    #[serde(default)]
    pub rainstorm: RainstormInput,
    #[serde(default)]
    pub limits: LimitsInput,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    pub max_datagram_bytes: Option<usize>,
    pub stream_frame_mb: Option<usize>,
    pub peer_requests_per_sec: Option<u32>,
    pub peer_request_burst: Option<u32>,
    pub rate_limited_peers: Option<usize>,
    pub max_inbound_connections: Option<usize>,
    pub stream_idle_timeout_s: Option<u64>,
    pub stream_frame_timeout_s: Option<u64>,
    pub max_send_queue_mb: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RainstormInput {
    pub program_start_timeout_ms: Option<u64>,
    pub program_batch_timeout_ms: Option<u64>,
    pub program_max_size_mb: Option<u64>,
    pub program_max_memory_mb: Option<u64>,
    pub program_max_cpu_s: Option<u64>,
    pub program_max_open_files: Option<u64>,
    pub checkpoint_interval_ms: Option<u64>,
    pub batch_bytes: Option<u32>,
    pub batch_tuples: Option<u32>,
    pub max_batch_tuples: Option<u32>,
    pub allow_programs_without_key: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HydfsInput {
    pub cache_mb: Option<u64>,
    pub repair_mb_per_sec: Option<u64>,
    pub max_write_mb: Option<u64>,
    pub max_name_bytes: Option<usize>,
    pub max_transfers: Option<usize>,
    pub max_pending_appends: Option<usize>,
    pub max_file_meta_mb: Option<u64>,
    pub tombstone_ttl_s: Option<u64>,
    pub max_tombstones: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingsInput {
    pub protocol_period_ms: Option<u64>,
    pub ping_timeout_ms: Option<u64>,
    pub indirect_probes: Option<usize>,
    pub suspicion_timeout_ms: Option<u64>,
    pub retransmit_mult: Option<u32>,
    pub sync_interval_ms: Option<u64>,
    pub join_attempts: Option<u32>,
    pub join_retry_ms: Option<u64>,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub role: Role,
    pub bind: SocketAddr,
    pub advertise: SocketAddr,
    pub introducer: SocketAddr,
    pub data_dir: PathBuf,
    pub membership: MembershipConfig,
    /// Frames are signed with `cluster_key` and accepted under it or any of `accepted_keys`.
    pub cluster_key: Option<String>,
    pub accepted_keys: Vec<String>,
    /// The config file `reload_keys` re-reads the keys from (`None`: the keys came from a flag
    /// or the environment, and changing them takes a restart).
    pub key_file: Option<PathBuf>,
    /// The key file the keys were read from, if any (`reload_keys` reads it again when there is
    /// no config file).
    pub cluster_key_file: Option<PathBuf>,
    pub drop_rate: f64,
    pub hydfs: HydfsConfig,
    /// RainStorm settings (those of the jobs this node leads, and of its tasks).
    pub rainstorm: RainstormConfig,
    /// Limits of operator programs.
    pub programs: ProgramLimits,
    /// Node-wide limits on stream frames and per-peer request rates.
    pub limits: LimitsConfig,
    /// Limits of the stream connections: how many, their timeouts, their send queues.
    pub streams: StreamLimits,
    /// Where the node serves its metrics and status page over HTTP (`None`: it does not).
    pub metrics: Option<SocketAddr>,
    /// Threads of the node's async runtime (1: a single-threaded runtime).
    pub threads: u16,
    /// How the node's threads are scheduled (applied by the process before it starts them);
    /// `None`: as the process was started (by `chrt`, or a service manager's setting).
    pub scheduling: Option<Scheduling>,
}

/// The Linux scheduling policy of a node's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduling {
    /// `SCHED_OTHER`: a thread that wakes up may preempt the one running on its core.
    Normal,
    /// `SCHED_BATCH`: a thread that wakes up waits for the running one to block or use up its
    /// slice. Where several nodes share a machine's cores, each of the many wake-ups of a busy
    /// cluster otherwise preempts another node in the middle of its work (a third of all
    /// context switches under 10 appending clients on 2 cores), which costs both a switch.
    Batch,
}

impl Scheduling {
    pub const ALL: [Scheduling; 2] = [Scheduling::Normal, Scheduling::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Scheduling::Normal => "normal",
            Scheduling::Batch => "batch",
        }
    }
}

impl std::fmt::Display for Scheduling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scheduling {
    type Err = String;

    fn from_str(s: &str) -> Result<Scheduling, String> {
        Scheduling::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("`{s}` is neither `normal` nor `batch`"))
    }
}

/// Threads of a node's async runtime unless `threads` (or `--threads`) says otherwise.
pub const DEFAULT_THREADS: u16 = 2;

/// The most threads a node's async runtime may be given.
pub const MAX_THREADS: u16 = 256;

/// How far a node's default HTTP port (metrics and status page) is from its own port.
pub const METRICS_PORT_OFFSET: u16 = 1000;

/// The default metrics address of a node at `node`: loopback, at its port plus
/// [`METRICS_PORT_OFFSET`] (minus, where that would not fit). The status page links to other
/// nodes' pages at these addresses.
pub fn default_metrics_addr(node: SocketAddr) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], metrics_port(node.port())))
}

/// A node's default HTTP port from its own port.
pub fn metrics_port(port: u16) -> u16 {
    // Past 64535 the port is at least 1000, so the subtraction never wraps.
    port.checked_add(METRICS_PORT_OFFSET).unwrap_or_else(|| port - METRICS_PORT_OFFSET)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Field { field: &'static str, message: String },
}

/// Every field a [`ConfigError::Field`] can name (`section.field` for fields of a section).
pub const FIELDS: &[&str] = &[
    "bind",
    "advertise",
    "introducer",
    "drop_rate",
    "metrics_addr",
    "threads",
    "cluster_key",
    "cluster_key_file",
    "accepted_keys",
    "timings",
    "limits.max_datagram_bytes",
    "limits.stream_frame_mb",
    "limits.peer_request_burst",
    "limits.rate_limited_peers",
    "limits.max_inbound_connections",
    "limits.stream_idle_timeout_s",
    "limits.stream_frame_timeout_s",
    "limits.max_send_queue_mb",
    "hydfs.max_write_mb",
    "hydfs.max_name_bytes",
    "hydfs.max_pending_appends",
    "hydfs.max_file_meta_mb",
    "hydfs.tombstone_ttl_s",
    "hydfs.max_tombstones",
    "rainstorm.program_start_timeout_ms",
    "rainstorm.program_batch_timeout_ms",
    "rainstorm.program_max_size_mb",
    "rainstorm.checkpoint_interval_ms",
    "rainstorm.batch_bytes",
    "rainstorm.batch_tuples",
    "rainstorm.max_batch_tuples",
];

fn field(field: &'static str, message: impl Into<String>) -> ConfigError {
    debug_assert!(FIELDS.contains(&field), "`{field}` is missing from FIELDS");
    ConfigError::Field { field, message: message.into() }
}

impl ConfigInput {
    pub fn from_file(path: &Path) -> Result<ConfigInput, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.into(), source })?;
        ConfigInput::from_toml(&text, path)
    }

    /// Parses the text of a config file; `path` names the file in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<ConfigInput, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" "),
        })
    }

    /// `self` with every unset field taken from `fallback`.
    pub fn or(self, fallback: ConfigInput) -> ConfigInput {
        let t = self.timings;
        let f = fallback.timings;
        let (h, g) = (self.hydfs, fallback.hydfs);
        let (r, q) = (self.rainstorm, fallback.rainstorm);
        let (l, k) = (self.limits, fallback.limits);
        ConfigInput {
            bind: self.bind.or(fallback.bind),
            advertise: self.advertise.or(fallback.advertise),
            introducer: self.introducer.or(fallback.introducer),
            data_dir: self.data_dir.or(fallback.data_dir),
            suspicion: self.suspicion.or(fallback.suspicion),
            lifeguard: self.lifeguard.or(fallback.lifeguard),
            cluster_key: self.cluster_key.or(fallback.cluster_key),
            cluster_key_file: self.cluster_key_file.or(fallback.cluster_key_file),
            accepted_keys: self.accepted_keys.or(fallback.accepted_keys),
            drop_rate: self.drop_rate.or(fallback.drop_rate),
            metrics_addr: self.metrics_addr.or(fallback.metrics_addr),
            threads: self.threads.or(fallback.threads),
            scheduling: self.scheduling.or(fallback.scheduling),
            timings: TimingsInput {
                protocol_period_ms: t.protocol_period_ms.or(f.protocol_period_ms),
                ping_timeout_ms: t.ping_timeout_ms.or(f.ping_timeout_ms),
                indirect_probes: t.indirect_probes.or(f.indirect_probes),
                suspicion_timeout_ms: t.suspicion_timeout_ms.or(f.suspicion_timeout_ms),
                retransmit_mult: t.retransmit_mult.or(f.retransmit_mult),
                sync_interval_ms: t.sync_interval_ms.or(f.sync_interval_ms),
                join_attempts: t.join_attempts.or(f.join_attempts),
                join_retry_ms: t.join_retry_ms.or(f.join_retry_ms),
            },
            hydfs: HydfsInput {
                cache_mb: h.cache_mb.or(g.cache_mb),
                repair_mb_per_sec: h.repair_mb_per_sec.or(g.repair_mb_per_sec),
                max_write_mb: h.max_write_mb.or(g.max_write_mb),
                max_name_bytes: h.max_name_bytes.or(g.max_name_bytes),
                max_transfers: h.max_transfers.or(g.max_transfers),
                max_pending_appends: h.max_pending_appends.or(g.max_pending_appends),
                max_file_meta_mb: h.max_file_meta_mb.or(g.max_file_meta_mb),
                tombstone_ttl_s: h.tombstone_ttl_s.or(g.tombstone_ttl_s),
                max_tombstones: h.max_tombstones.or(g.max_tombstones),
            },
            rainstorm: RainstormInput {
                program_start_timeout_ms: r.program_start_timeout_ms.or(q.program_start_timeout_ms),
                program_batch_timeout_ms: r.program_batch_timeout_ms.or(q.program_batch_timeout_ms),
                program_max_size_mb: r.program_max_size_mb.or(q.program_max_size_mb),
                program_max_memory_mb: r.program_max_memory_mb.or(q.program_max_memory_mb),
                program_max_cpu_s: r.program_max_cpu_s.or(q.program_max_cpu_s),
                program_max_open_files: r.program_max_open_files.or(q.program_max_open_files),
                checkpoint_interval_ms: r.checkpoint_interval_ms.or(q.checkpoint_interval_ms),
                batch_bytes: r.batch_bytes.or(q.batch_bytes),
                batch_tuples: r.batch_tuples.or(q.batch_tuples),
                max_batch_tuples: r.max_batch_tuples.or(q.max_batch_tuples),
                allow_programs_without_key: r.allow_programs_without_key.or(q.allow_programs_without_key),
            },
            limits: LimitsInput {
                max_datagram_bytes: l.max_datagram_bytes.or(k.max_datagram_bytes),
                stream_frame_mb: l.stream_frame_mb.or(k.stream_frame_mb),
                peer_requests_per_sec: l.peer_requests_per_sec.or(k.peer_requests_per_sec),
                peer_request_burst: l.peer_request_burst.or(k.peer_request_burst),
                rate_limited_peers: l.rate_limited_peers.or(k.rate_limited_peers),
                max_inbound_connections: l.max_inbound_connections.or(k.max_inbound_connections),
                stream_idle_timeout_s: l.stream_idle_timeout_s.or(k.stream_idle_timeout_s),
                stream_frame_timeout_s: l.stream_frame_timeout_s.or(k.stream_frame_timeout_s),
                max_send_queue_mb: l.max_send_queue_mb.or(k.max_send_queue_mb),
            },
        }
    }

    /// Checks and completes the settings for a node of `role`.
    pub fn resolve(self, role: Role) -> Result<RuntimeConfig, ConfigError> {
        let bind = self.bind.ok_or_else(|| field("bind", "required (the UDP/TCP listen address)"))?;
        let advertise = match self.advertise {
            Some(a) if a.ip().is_unspecified() => {
                return Err(field("advertise", format!("{a} is not an address others can reach")))
            }
            Some(a) => a,
            None if bind.ip().is_unspecified() => {
                return Err(field("advertise", format!("required when bind is {bind}")))
            }
            None => bind,
        };
        if advertise.port() != bind.port() {
            return Err(field("advertise", "must use the same port as bind"));
        }
        let introducer = match (role, self.introducer) {
            (Role::Introducer, _) => advertise,
            (Role::Member, Some(i)) => i,
            (Role::Member, None) => return Err(field("introducer", "required for a member")),
        };
        let data_dir =
            self.data_dir.unwrap_or_else(|| PathBuf::from(format!("rainstorm-data/{}", bind.port())));
        let drop_rate = self.drop_rate.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&drop_rate) {
            return Err(field("drop_rate", format!("{drop_rate} is not between 0 and 1")));
        }
        let metrics = match self.metrics_addr.as_deref().map(str::trim) {
            None => Some(default_metrics_addr(advertise)),
            Some("off") => None,
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(a) if a.port() == bind.port() => {
                    return Err(field("metrics_addr", format!("{a} is the node's own port")))
                }
                Ok(a) => Some(a),
                Err(_) => {
                    return Err(field("metrics_addr", format!("`{text}` is neither host:port nor `off`")))
                }
            },
        };
        let threads = self.threads.unwrap_or(DEFAULT_THREADS);
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(field("threads", format!("{threads} is not between 1 and {MAX_THREADS}")));
        }
        let cluster_key_file = self.cluster_key_file;
        let (cluster_key, accepted_keys) =
            keys_of(self.cluster_key, cluster_key_file.as_deref(), self.accepted_keys.unwrap_or_default())?;
        let t = self.timings;
        let base = MembershipConfig::lan();
        let ms = |v: Option<u64>, d: Millis| v.map(Millis).unwrap_or(d);
        let membership = MembershipConfig {
            protocol_period: ms(t.protocol_period_ms, base.protocol_period),
            ping_timeout: ms(t.ping_timeout_ms, base.ping_timeout),
            indirect_probes: t.indirect_probes.unwrap_or(base.indirect_probes),
            suspicion_timeout: ms(t.suspicion_timeout_ms, base.suspicion_timeout),
            retransmit_mult: t.retransmit_mult.unwrap_or(base.retransmit_mult),
            sync_interval: ms(t.sync_interval_ms, base.sync_interval),
            join_attempts: t.join_attempts.unwrap_or(base.join_attempts),
            join_retry: ms(t.join_retry_ms, base.join_retry),
            suspicion_at_start: self.suspicion.unwrap_or(base.suspicion_at_start),
            lifeguard: self.lifeguard.unwrap_or(base.lifeguard),
            max_datagram_bytes: self.limits.max_datagram_bytes.unwrap_or(base.max_datagram_bytes),
            ..base
        };
        if let Err(m) = membership.validate() {
            let field =
                if m.contains("max_datagram_bytes") { "limits.max_datagram_bytes" } else { "timings" };
            return Err(self::field(field, m));
        }
        let base = HydfsConfig::default();
        let mb = |v: Option<u64>, d: u64| v.map(|v| v.saturating_mul(1 << 20)).unwrap_or(d);
        if self.hydfs.max_write_mb == Some(0) {
            return Err(field("hydfs.max_write_mb", "must be at least 1"));
        }
        if self.hydfs.tombstone_ttl_s == Some(0) {
            return Err(field(
                "hydfs.tombstone_ttl_s",
                "must be at least 1 (a delete must outlive the copies it missed)",
            ));
        }
        if self.hydfs.max_tombstones == Some(0) {
            return Err(field("hydfs.max_tombstones", "must be at least 1"));
        }
        let file_meta_set = self.hydfs.max_file_meta_mb.is_some();
        let mut hydfs = HydfsConfig {
            cache_bytes: mb(self.hydfs.cache_mb, base.cache_bytes),
            repair_bytes_per_sec: mb(self.hydfs.repair_mb_per_sec, base.repair_bytes_per_sec),
            max_write_bytes: mb(self.hydfs.max_write_mb, base.max_write_bytes),
            max_name_bytes: self.hydfs.max_name_bytes.unwrap_or(base.max_name_bytes),
            max_transfers: self.hydfs.max_transfers.unwrap_or(base.max_transfers),
            max_pending_appends: self.hydfs.max_pending_appends.unwrap_or(base.max_pending_appends),
            max_file_meta_bytes: mb(self.hydfs.max_file_meta_mb, base.max_file_meta_bytes),
            tombstone_ttl: self
                .hydfs
                .tombstone_ttl_s
                .map_or(base.tombstone_ttl, |s| Millis(s.saturating_mul(1000))),
            max_tombstones: self.hydfs.max_tombstones.unwrap_or(base.max_tombstones),
            ..base
        };
        let base = ProgramLimits::default();
        let timeout = |v: Option<u64>, name: &'static str, d: Duration| match v {
            Some(0) => Err(field(name, "must be at least 1 ms")),
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Ok(d),
        };
        let r = self.rainstorm;
        let programs = ProgramLimits {
            start_timeout: timeout(
                r.program_start_timeout_ms,
                "rainstorm.program_start_timeout_ms",
                base.start_timeout,
            )?,
            batch_timeout: timeout(
                r.program_batch_timeout_ms,
                "rainstorm.program_batch_timeout_ms",
                base.batch_timeout,
            )?,
            max_program_bytes: match r.program_max_size_mb {
                Some(0) => return Err(field("rainstorm.program_max_size_mb", "must be at least 1")),
                Some(mb) => mb.saturating_mul(1 << 20),
                None => base.max_program_bytes,
            },
            // 0: unlimited.
            max_memory_bytes: r
                .program_max_memory_mb
                .map_or(base.max_memory_bytes, |mb| (mb > 0).then(|| mb.saturating_mul(1 << 20))),
            max_cpu_secs: r.program_max_cpu_s.map_or(base.max_cpu_secs, |s| (s > 0).then_some(s)),
            max_open_files: r.program_max_open_files.map_or(base.max_open_files, |n| (n > 0).then_some(n)),
            ..base
        };
        let defaults = RainstormConfig::default();
        let batch_tuples = match r.batch_tuples {
            Some(0) => return Err(field("rainstorm.batch_tuples", "must be at least 1")),
            Some(n) if n > MAX_BATCH_TUPLES => {
                return Err(field(
                    "rainstorm.batch_tuples",
                    format!("{n} is over the limit of {MAX_BATCH_TUPLES}"),
                ))
            }
            Some(n) => n,
            None => defaults.batch_tuples,
        };
        let checkpoint_interval = match r.checkpoint_interval_ms {
            Some(0) => return Err(field("rainstorm.checkpoint_interval_ms", "must be at least 1 ms")),
            Some(ms) => rainstorm_core::Millis(ms),
            None => defaults.checkpoint_interval,
        };
        let batch_bytes = r.batch_bytes.unwrap_or(defaults.batch_bytes);
        let max_batch_tuples = r.max_batch_tuples.unwrap_or(defaults.max_batch_tuples);
        let run_programs = cluster_key.is_some() || r.allow_programs_without_key.unwrap_or(false);
        let rainstorm = RainstormConfig {
            checkpoint_interval,
            batch_bytes,
            batch_tuples,
            max_batch_tuples,
            run_programs,
            ..defaults
        };
        let l = self.limits;
        let base = LimitsConfig::default();
        let limits = LimitsConfig {
            stream_frame_bytes: l
                .stream_frame_mb
                .map_or(base.stream_frame_bytes, |mb| mb.saturating_mul(1 << 20)),
            peer_requests_per_sec: l.peer_requests_per_sec.unwrap_or(base.peer_requests_per_sec),
            peer_request_burst: l.peer_request_burst.unwrap_or(base.peer_request_burst),
            rate_limited_peers: l.rate_limited_peers.unwrap_or(base.rate_limited_peers),
        };
        if !file_meta_set {
            // Unset: the default, or as much as a smaller frame limit leaves room for.
            let room =
                limits.stream_frame_bytes.saturating_sub(rainstorm_core::limits::STREAM_FRAME_SLACK_BYTES);
            hydfs.max_file_meta_bytes = hydfs.max_file_meta_bytes.min(room as u64);
        }
        rainstorm_core::limits::check(&limits, &hydfs, &rainstorm)
            .map_err(|e| field(limit_field(&e), e.to_string()))?;
        let streams = stream_limits(&l)?;
        Ok(RuntimeConfig {
            role,
            bind,
            advertise,
            introducer,
            data_dir,
            membership,
            cluster_key,
            accepted_keys,
            key_file: None,
            cluster_key_file,
            drop_rate,
            hydfs,
            rainstorm,
            programs,
            limits,
            streams,
            metrics,
            threads,
            scheduling: self.scheduling,
        })
    }
}

/// The stream connection settings of `[limits]`, checked.
fn stream_limits(l: &LimitsInput) -> Result<StreamLimits, ConfigError> {
    let base = StreamLimits::default();
    let max_inbound_connections = match l.max_inbound_connections {
        Some(0) => return Err(field("limits.max_inbound_connections", "must be at least 1")),
        Some(n) => n,
        None => base.max_inbound_connections,
    };
    let idle_timeout = match l.stream_idle_timeout_s {
        Some(s) if s <= STREAM_IDLE.as_secs() => {
            return Err(field(
                "limits.stream_idle_timeout_s",
                format!(
                    "must be over {} (peers close their idle connections after {} s; a shorter \
                     timeout would close them first, racing their writes)",
                    STREAM_IDLE.as_secs(),
                    STREAM_IDLE.as_secs()
                ),
            ))
        }
        Some(s) => Duration::from_secs(s),
        None => base.idle_timeout,
    };
    let frame_timeout = match l.stream_frame_timeout_s {
        Some(0) => return Err(field("limits.stream_frame_timeout_s", "must be at least 1")),
        Some(s) => Duration::from_secs(s),
        None => base.frame_timeout,
    };
    let send_queue_bytes = match l.max_send_queue_mb {
        Some(0) => return Err(field("limits.max_send_queue_mb", "must be at least 1")),
        Some(mb) => mb.saturating_mul(1 << 20),
        None => base.send_queue_bytes,
    };
    Ok(StreamLimits { max_inbound_connections, idle_timeout, frame_timeout, send_queue_bytes })
}

/// The most keys a node accepts besides the one it signs with.
pub const MAX_ACCEPTED_KEYS: usize = 4;

/// A key as written: 64 hex digits.
pub fn parse_key(text: &str) -> Result<ClusterKey, String> {
    let text = text.trim();
    let bad = || {
        let shown = if text.len() > 8 { "the value given" } else { "it" };
        format!(
            "{shown} is not a key: a key is 32 random bytes written as 64 hex digits (make one \
             with `rainstorm keygen`); passphrases are not accepted"
        )
    };
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(ClusterKey::from_bytes(bytes))
}

/// A new key from the operating system's random source, as `rainstorm keygen` prints it.
pub fn new_key() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The keys of a key file: the signing key on the first line, accepted ones after it (blank
/// lines and `#` comments skipped). The file must be readable by its owner only.
pub fn read_key_file(path: &Path) -> Result<(String, Vec<String>), ConfigError> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| field("cluster_key_file", format!("cannot read {shown}: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(field(
                "cluster_key_file",
                format!("{shown} can be read by other users (mode {mode:o}): `chmod 600 {shown}`"),
            ));
        }
    }
    let _ = meta;
    let text = std::fs::read_to_string(path)
        .map_err(|e| field("cluster_key_file", format!("cannot read {shown}: {e}")))?;
    let mut keys = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    let current =
        keys.next().ok_or_else(|| field("cluster_key_file", format!("{shown} holds no key")))?.to_owned();
    Ok((current, keys.map(str::to_owned).collect()))
}

/// The signing key and the accepted ones, from the config's fields or its key file, checked.
fn keys_of(
    current: Option<String>,
    file: Option<&Path>,
    accepted: Vec<String>,
) -> Result<(Option<String>, Vec<String>), ConfigError> {
    let (current, accepted) = match (current, file) {
        (Some(_), Some(_)) => {
            return Err(field("cluster_key_file", "set either cluster_key or cluster_key_file, not both"))
        }
        (None, Some(path)) => {
            let (current, mut more) = read_key_file(path)?;
            more.extend(accepted);
            (Some(current), more)
        }
        (current, None) => (current, accepted),
    };
    check_keys(
        current.as_deref(),
        &accepted,
        if file.is_some() { "cluster_key_file" } else { "cluster_key" },
    )?;
    Ok((current, accepted))
}

fn check_keys(current: Option<&str>, accepted: &[String], source: &'static str) -> Result<(), ConfigError> {
    if let Some(Err(e)) = current.map(parse_key) {
        return Err(field(source, e));
    }
    if current.is_none() && !accepted.is_empty() {
        return Err(field("accepted_keys", "needs a cluster_key to sign with"));
    }
    if accepted.len() > MAX_ACCEPTED_KEYS {
        return Err(field("accepted_keys", format!("at most {MAX_ACCEPTED_KEYS} keys")));
    }
    if let Some(Err(e)) = accepted.iter().map(|k| parse_key(k)).find(Result::is_err) {
        return Err(field("accepted_keys", e));
    }
    Ok(())
}

impl RuntimeConfig {
    /// The frame codec of these keys: authenticated when a cluster key is set.
    pub fn codec(&self) -> Codec {
        codec_of(self.cluster_key.as_deref(), &self.accepted_keys)
    }
}

/// The codec of keys [`check_keys`] accepted.
fn codec_of(current: Option<&str>, accepted: &[String]) -> Codec {
    let key = |k: &str| parse_key(k).unwrap_or_else(|e| unreachable!("a checked key failed to parse: {e}"));
    match current {
        Some(current) => Codec::keyed(key(current), accepted.iter().map(|k| key(k)).collect()),
        None => Codec::plain(),
    }
}

/// The codec of the keys in the config file at `path` (for `reload_keys`), checked as at start:
/// its `cluster_key_file` is read again.
pub fn codec_from_file(path: &Path) -> Result<Codec, ConfigError> {
    let input = ConfigInput::from_file(path)?;
    let (current, accepted) = keys_of(
        input.cluster_key,
        input.cluster_key_file.as_deref(),
        input.accepted_keys.unwrap_or_default(),
    )?;
    Ok(codec_of(current.as_deref(), &accepted))
}

/// The codec of the keys in key file `path` (for `reload_keys` of a node given
/// `--cluster-key-file`).
pub fn codec_from_key_file(path: &Path) -> Result<Codec, ConfigError> {
    let (current, accepted) = keys_of(None, Some(path), Vec::new())?;
    Ok(codec_of(current.as_deref(), &accepted))
}

/// The config field to fix for a limit that does not fit.
fn limit_field(e: &LimitsError) -> &'static str {
    match e {
        LimitsError::FrameTooSmall { .. } | LimitsError::FrameTooLarge { .. } => "limits.stream_frame_mb",
        LimitsError::NoBurst => "limits.peer_request_burst",
        LimitsError::NoPeers => "limits.rate_limited_peers",
        LimitsError::NameLimit { .. } => "hydfs.max_name_bytes",
        LimitsError::FileMetaOverFrame { .. } => "hydfs.max_file_meta_mb",
        LimitsError::PendingBelowLog { .. } | LimitsError::OutputMerges { .. } => "hydfs.max_pending_appends",
        LimitsError::BatchTuples { .. } => "rainstorm.max_batch_tuples",
        LimitsError::BatchBytes { .. } => "rainstorm.batch_bytes",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigInput, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn example_config_resolves() {
        let text = include_str!("../../config/member.example.toml");
        let cfg = parse(text).unwrap().resolve(Role::Member).unwrap();
        assert_eq!(cfg.membership.protocol_period, Millis(1000));
        assert_eq!(cfg.introducer, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(cfg.hydfs.cache_bytes, 64 << 20);
        assert_eq!(cfg.hydfs.max_write_bytes, 1 << 30);
        assert_eq!(cfg.programs.max_memory_bytes, Some(4096 << 20));
        assert_eq!(cfg.programs.max_cpu_secs, None);
    }

    #[test]
    fn the_batch_size_is_read_and_checked() {
        let resolve = |text: &str| parse(text).unwrap().resolve(Role::Introducer);
        let cfg = resolve("bind = \"127.0.0.1:7001\"\n[rainstorm]\nbatch_tuples = 1024\n").unwrap();
        assert_eq!(cfg.rainstorm.batch_tuples, 1024);
        let cfg = resolve("bind = \"127.0.0.1:7001\"\n").unwrap();
        assert_eq!(cfg.rainstorm.batch_tuples, RainstormConfig::default().batch_tuples);
        for bad in ["0", "65537"] {
            let e = resolve(&format!("bind = \"127.0.0.1:7001\"\n[rainstorm]\nbatch_tuples = {bad}\n"))
                .unwrap_err();
            assert!(e.to_string().contains("rainstorm.batch_tuples"), "{e}");
        }
    }

    #[test]
    fn the_runtime_threads_default_to_two_and_a_flag_wins_over_the_file() {
        let resolve = |extra: &str| parse(&format!("bind = \"127.0.0.1:7001\"\n{extra}")).unwrap();
        assert_eq!(resolve("").resolve(Role::Introducer).unwrap().threads, DEFAULT_THREADS);
        assert_eq!(resolve("threads = 1").resolve(Role::Introducer).unwrap().threads, 1);
        let flags = ConfigInput { threads: Some(4), ..ConfigInput::default() };
        assert_eq!(flags.or(resolve("threads = 1")).resolve(Role::Introducer).unwrap().threads, 4);
        for bad in ["threads = 0", "threads = 257"] {
            let e = resolve(bad).resolve(Role::Introducer).unwrap_err();
            assert!(e.to_string().contains("`threads`"), "{e}");
        }
    }

    #[test]
    fn scheduling_is_left_as_started_unless_set_a_flag_wins_and_an_unknown_policy_is_refused() {
        let resolve = |extra: &str| parse(&format!("bind = \"127.0.0.1:7001\"\n{extra}")).unwrap();
        assert_eq!(resolve("").resolve(Role::Introducer).unwrap().scheduling, None);
        let batch = resolve("scheduling = \"batch\"").resolve(Role::Introducer).unwrap();
        assert_eq!(batch.scheduling, Some(Scheduling::Batch));
        let flags = ConfigInput { scheduling: Some(Scheduling::Normal), ..ConfigInput::default() };
        let both = flags.or(resolve("scheduling = \"batch\"")).resolve(Role::Introducer).unwrap();
        assert_eq!(both.scheduling, Some(Scheduling::Normal));
        let e = parse("bind = \"127.0.0.1:7001\"\nscheduling = \"fifo\"").unwrap_err();
        assert!(e.to_string().contains("fifo") && e.to_string().contains("batch"), "{e}");
        assert_eq!("batch".parse::<Scheduling>(), Ok(Scheduling::Batch));
        let e = "idle".parse::<Scheduling>().unwrap_err();
        assert!(e.contains("`idle`") && e.contains("`normal`"), "{e}");
    }

    #[test]
    fn the_metrics_address_defaults_to_loopback_beside_the_node_and_can_be_turned_off() {
        let resolve = |extra: &str| {
            parse(&format!("bind = \"0.0.0.0:7001\"\nadvertise = \"10.0.0.5:7001\"\n{extra}"))
                .unwrap()
                .resolve(Role::Introducer)
        };
        assert_eq!(resolve("").unwrap().metrics, Some("127.0.0.1:8001".parse().unwrap()));
        assert_eq!(resolve("metrics_addr = \"off\"").unwrap().metrics, None);
        assert_eq!(
            resolve("metrics_addr = \"0.0.0.0:9100\"").unwrap().metrics,
            Some("0.0.0.0:9100".parse().unwrap())
        );
        for bad in ["metrics_addr = \"nine\"", "metrics_addr = \"127.0.0.1:7001\""] {
            let e = resolve(bad).unwrap_err();
            assert!(e.to_string().contains("metrics_addr"), "{e}");
        }
        assert_eq!(metrics_port(65_000), 64_000, "no port above 65535");
    }

    #[test]
    fn program_limits_are_read_and_zero_lifts_them() {
        let resolve = |text: &str| {
            parse(&format!("bind = \"127.0.0.1:7001\"\n[rainstorm]\n{text}"))
                .unwrap()
                .resolve(Role::Introducer)
        };
        let defaults = resolve("").unwrap().programs;
        assert_eq!(defaults.max_program_bytes, 256 << 20);
        assert_eq!(defaults.max_memory_bytes, Some(4096 << 20));
        assert_eq!(defaults.max_cpu_secs, None, "a streaming job's program may run for ever");
        assert_eq!(defaults.max_open_files, Some(1024));
        let set = resolve("program_max_size_mb = 2\nprogram_max_memory_mb = 512\nprogram_max_cpu_s = 60\nprogram_max_open_files = 64").unwrap().programs;
        assert_eq!(
            (set.max_program_bytes, set.max_memory_bytes, set.max_cpu_secs, set.max_open_files),
            (2 << 20, Some(512 << 20), Some(60), Some(64))
        );
        let lifted = resolve("program_max_memory_mb = 0\nprogram_max_open_files = 0").unwrap().programs;
        assert_eq!((lifted.max_memory_bytes, lifted.max_open_files), (None, None));
        let e = resolve("program_max_size_mb = 0").unwrap_err();
        assert!(e.to_string().contains("`rainstorm.program_max_size_mb`"), "{e}");
    }

    #[test]
    fn hydfs_settings_are_read_and_checked() {
        let text = "bind = \"127.0.0.1:7001\"\n[hydfs]\ncache_mb = 0\nrepair_mb_per_sec = 5\n";
        let cfg = parse(text).unwrap().resolve(Role::Introducer).unwrap();
        assert_eq!(cfg.hydfs.cache_bytes, 0);
        assert_eq!(cfg.hydfs.repair_bytes_per_sec, 5 << 20);
        let e = parse("bind = \"127.0.0.1:7001\"\n[hydfs]\nmax_write_mb = 0\n")
            .unwrap()
            .resolve(Role::Introducer)
            .unwrap_err();
        assert!(e.to_string().contains("hydfs.max_write_mb"), "{e}");
        let e = parse("[hydfs]\ncache = 3\n").unwrap_err();
        assert!(e.contains("cache"), "{e}");
    }

    #[test]
    fn node_limits_are_read_and_checked() {
        let resolve = |text: &str| {
            parse(&format!("bind = \"127.0.0.1:7001\"\n[limits]\n{text}")).unwrap().resolve(Role::Introducer)
        };
        let cfg = resolve("").unwrap();
        assert_eq!(cfg.limits, LimitsConfig::default());
        let cfg =
            resolve("stream_frame_mb = 10\npeer_requests_per_sec = 0\nmax_datagram_bytes = 1200\n").unwrap();
        assert_eq!(cfg.limits.stream_frame_bytes, 10 << 20);
        assert_eq!(cfg.hydfs.max_file_meta_bytes, 9 << 20, "lowered to what the frame limit leaves");
        assert_eq!(cfg.limits.peer_requests_per_sec, 0);
        assert_eq!(cfg.membership.max_datagram_bytes, 1200);
        assert_eq!(resolve("").unwrap().streams, StreamLimits::default());
        let cfg = resolve(
            "max_inbound_connections = 10\nstream_idle_timeout_s = 61\nstream_frame_timeout_s = 5\n\
             max_send_queue_mb = 2\n",
        )
        .unwrap();
        assert_eq!(
            cfg.streams,
            StreamLimits {
                max_inbound_connections: 10,
                idle_timeout: Duration::from_secs(61),
                frame_timeout: Duration::from_secs(5),
                send_queue_bytes: 2 << 20,
            }
        );
        for (text, field) in [
            ("stream_frame_mb = 8", "limits.stream_frame_mb"),
            ("stream_frame_mb = 5000", "limits.stream_frame_mb"),
            ("peer_request_burst = 0", "limits.peer_request_burst"),
            ("rate_limited_peers = 0", "limits.rate_limited_peers"),
            ("max_datagram_bytes = 100", "limits.max_datagram_bytes"),
            ("max_inbound_connections = 0", "limits.max_inbound_connections"),
            ("stream_idle_timeout_s = 60", "limits.stream_idle_timeout_s"),
            ("stream_frame_timeout_s = 0", "limits.stream_frame_timeout_s"),
            ("max_send_queue_mb = 0", "limits.max_send_queue_mb"),
        ] {
            let e = resolve(text).unwrap_err();
            assert!(e.to_string().contains(&format!("`{field}`")), "{text}: {e}");
        }
        assert!(parse("[limits]\nframe_mb = 3\n").unwrap_err().contains("frame_mb"));
    }

    #[test]
    fn layer_limits_are_read_and_checked() {
        let resolve = |text: &str| {
            parse(&format!("bind = \"127.0.0.1:7001\"\n{text}")).unwrap().resolve(Role::Introducer)
        };
        let cfg = resolve("[hydfs]\nmax_name_bytes = 100\nmax_transfers = 0\nmax_pending_appends = 5000\n[rainstorm]\nmax_batch_tuples = 2048\n").unwrap();
        assert_eq!(
            (cfg.hydfs.max_name_bytes, cfg.hydfs.max_transfers, cfg.hydfs.max_pending_appends),
            (100, 0, 5000)
        );
        assert_eq!(cfg.rainstorm.max_batch_tuples, 2048);
        let defaults = resolve("").unwrap();
        assert_eq!(defaults.hydfs.max_pending_appends, HydfsConfig::default().max_pending_appends);
        assert_eq!(defaults.hydfs.tombstone_ttl, HydfsConfig::default().tombstone_ttl);
        assert_eq!(defaults.hydfs.max_file_meta_bytes, HydfsConfig::default().max_file_meta_bytes);
        let cfg = resolve("[hydfs]\nmax_file_meta_mb = 4\n").unwrap();
        assert_eq!(cfg.hydfs.max_file_meta_bytes, 4 << 20);
        let cfg = resolve("[hydfs]\ntombstone_ttl_s = 600\nmax_tombstones = 50\n").unwrap();
        assert_eq!((cfg.hydfs.tombstone_ttl, cfg.hydfs.max_tombstones), (Millis(600_000), 50));
        assert_eq!(defaults.rainstorm.max_batch_tuples, RainstormConfig::default().max_batch_tuples);
        for (text, field) in [
            ("[hydfs]\nmax_name_bytes = 0", "hydfs.max_name_bytes"),
            ("[hydfs]\nmax_name_bytes = 5000", "hydfs.max_name_bytes"),
            ("[hydfs]\nmax_pending_appends = 1000", "hydfs.max_pending_appends"),
            ("[hydfs]\nmax_file_meta_mb = 0", "hydfs.max_file_meta_mb"),
            ("[hydfs]\nmax_file_meta_mb = 16", "hydfs.max_file_meta_mb"),
            ("[hydfs]\ntombstone_ttl_s = 0", "hydfs.tombstone_ttl_s"),
            ("[hydfs]\nmax_tombstones = 0", "hydfs.max_tombstones"),
            ("[rainstorm]\nbatch_tuples = 100\nmax_batch_tuples = 99", "rainstorm.max_batch_tuples"),
        ] {
            let e = resolve(text).unwrap_err();
            assert!(e.to_string().contains(&format!("`{field}`")), "{text}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("bind = \"127.0.0.1:1\"\nbogus = 3").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = parse("bind = \"not an address\"").unwrap_err();
        assert!(e.contains("bind"), "{e}");
        let e = ConfigInput { bind: Some("0.0.0.0:7001".parse().unwrap()), ..Default::default() }
            .resolve(Role::Member)
            .unwrap_err();
        assert!(e.to_string().contains("`advertise`"), "{e}");
        let e = ConfigInput { bind: Some("127.0.0.1:7001".parse().unwrap()), ..Default::default() }
            .resolve(Role::Member)
            .unwrap_err();
        assert!(e.to_string().contains("`introducer`"), "{e}");
        let e = ConfigInput {
            bind: Some("127.0.0.1:7001".parse().unwrap()),
            drop_rate: Some(1.5),
            ..Default::default()
        }
        .resolve(Role::Introducer)
        .unwrap_err();
        assert!(e.to_string().contains("`drop_rate`"), "{e}");
        let mut input = ConfigInput { bind: Some("127.0.0.1:7001".parse().unwrap()), ..Default::default() };
        input.timings.ping_timeout_ms = Some(5000);
        let e = input.resolve(Role::Introducer).unwrap_err();
        assert!(e.to_string().contains("ping_timeout"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let flags = ConfigInput { bind: Some("127.0.0.1:9".parse().unwrap()), ..Default::default() };
        let file = ConfigInput {
            bind: Some("127.0.0.1:8".parse().unwrap()),
            suspicion: Some(false),
            ..Default::default()
        };
        let merged = flags.or(file);
        assert_eq!(merged.bind.unwrap().port(), 9);
        assert_eq!(merged.suspicion, Some(false));
    }

    const NEW: &str = "5c1d0a9e3b7f24c86e0d1f5a9b2c7e4d3a8f6b1c0e9d2a7f5b4c3e8d1a6f0b92";
    const OLD: &str = "0f4e8a2c6b1d9e7f3a5c0b8d2e6f1a4c9b7e3d5a8c2f6e0b1d4a9c7f3e5b8d26";

    #[test]
    fn keys_are_random_bytes_and_accepted_keys_need_a_signing_key() {
        let base = "bind = \"127.0.0.1:7001\"\nintroducer = \"127.0.0.1:7000\"\n";
        let cfg = parse(&format!("{base}cluster_key = \"{NEW}\"\naccepted_keys = [\"{OLD}\"]\n"))
            .unwrap()
            .resolve(Role::Member)
            .unwrap();
        assert!(cfg.codec().describe_keys().contains("also accepting"));
        assert!(cfg.rainstorm.run_programs, "a keyed node runs programs");
        for (extra, field) in [
            (format!("accepted_keys = [\"{OLD}\"]\n"), "accepted_keys"),
            (format!("cluster_key = \"{NEW}\"\naccepted_keys = [\"short\"]\n"), "accepted_keys"),
            ("cluster_key = \"short\"\n".to_owned(), "cluster_key"),
            // A passphrase, however long, is not a key.
            ("cluster_key = \"correct horse battery staple and more\"\n".to_owned(), "cluster_key"),
            (format!("cluster_key = \"{}\"\n", &NEW[..62]), "cluster_key"),
            (format!("cluster_key = \"{}zz\"\n", &NEW[..62]), "cluster_key"),
        ] {
            let e = parse(&format!("{base}{extra}")).unwrap().resolve(Role::Member).unwrap_err();
            assert!(e.to_string().contains(field), "{extra}: {e}");
        }
        let e = parse(&format!("{base}cluster_key = \"secret passphrase\"\n")).unwrap().resolve(Role::Member);
        assert!(e.unwrap_err().to_string().contains("rainstorm keygen"));
        let key = new_key().unwrap();
        assert_eq!(parse_key(&key).map(|k| k.fingerprint().len()), Ok(8), "keygen's keys parse");
        assert_ne!(key, new_key().unwrap());
    }

    #[test]
    fn a_key_file_must_be_its_owners_alone_and_holds_the_signing_key_then_accepted_ones() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rainstorm-key-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.key");
        std::fs::write(&path, format!("# rolled over\n{NEW}\n\n{OLD}\n")).unwrap();
        let base = format!(
            "bind = \"127.0.0.1:7001\"\nintroducer = \"127.0.0.1:7000\"\ncluster_key_file = {:?}\n",
            path.display().to_string()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&base).unwrap().resolve(Role::Member).unwrap_err().to_string();
        assert!(e.contains("cluster_key_file") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = parse(&base).unwrap().resolve(Role::Member).unwrap();
        assert_eq!((cfg.cluster_key.as_deref(), &cfg.accepted_keys[..]), (Some(NEW), &[OLD.to_owned()][..]));
        assert!(codec_from_key_file(&path).unwrap().describe_keys().contains("also accepting"));
        let both = format!("{base}cluster_key = \"{NEW}\"\n");
        let e = parse(&both).unwrap().resolve(Role::Member).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_default_metrics_port_fits_every_node_port() {
        for (port, metrics) in
            [(0, 1000), (701, 1701), (7000, 8000), (64535, 65535), (64536, 63536), (65535, 64535)]
        {
            assert_eq!(metrics_port(port), metrics, "port {port}");
        }
    }

    #[test]
    fn programs_run_only_under_a_key_unless_allowed() {
        let base = "bind = \"127.0.0.1:7001\"\nintroducer = \"127.0.0.1:7000\"\n";
        let run = |extra: &str| parse(&format!("{base}{extra}")).unwrap().resolve(Role::Member).unwrap();
        assert!(!run("").rainstorm.run_programs);
        assert!(run("[rainstorm]\nallow_programs_without_key = true\n").rainstorm.run_programs);
        assert!(run(&format!("cluster_key = \"{NEW}\"\n")).rainstorm.run_programs);
    }
}
