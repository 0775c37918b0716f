//! A node's Prometheus metrics, in the Prometheus text format (version 0.0.4), made from one
//! [`Observation`] per scrape by `prometheus-client`.
//!
//! Everything `stats` counts is a counter here, with labels in place of dotted names
//! (`cause`, `kind`, `layer`, `op`, `file`, `job`, `stage`, `task`, `direction`); gauges say what
//! the node holds now; histograms are the layers' own latency histograms
//! ([`LatencyHistogram`], in milliseconds), exported in seconds.
//!
//! Invariants: every name starts with `rainstorm_`, carries its unit (`_seconds`, `_bytes`)
//! where it has one, and counters end in `_total` (the encoder appends it); a metric appears
//! once per scrape, whatever the node's state (families may be empty).

use crate::status::{Observation, JOB_STATES};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use rainstorm_core::histogram::LatencyHistogram;
use rainstorm_core::membership::MemberStatus;
use std::fmt;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The metrics of `obs` as Prometheus text.
pub fn encode(obs: Observation) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(obs)));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

#[derive(Debug)]
struct Scrape(Observation);

type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: its HELP and TYPE, then one sample (or histogram) per label set.
struct Out<'e, 'a> {
    enc: &'e mut DescriptorEncoder<'a>,
}

impl Out<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        self.counters(name, help, vec![(Vec::new(), v)])
    }

    fn counters(&mut self, name: &str, help: &str, samples: Vec<(Labels, u64)>) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in samples {
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn gauge(&mut self, name: &str, help: &str, v: i64) -> fmt::Result {
        self.gauges(name, help, vec![(Vec::new(), v)])
    }

    fn gauges(&mut self, name: &str, help: &str, samples: Vec<(Labels, i64)>) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in samples {
            ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        samples: Vec<(Labels, &LatencyHistogram)>,
    ) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in samples {
            let buckets: Vec<(f64, u64)> = h.per_bucket().map(|(ms, n)| (ms as f64 / 1000.0, n)).collect();
            let sum = h.sum_ms() as f64 / 1000.0;
            m.encode_family(&labels)?.encode_histogram::<Vec<(&str, String)>>(
                sum,
                h.count(),
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

fn l(key: &'static str, value: impl ToString) -> Labels {
    vec![(key, value.to_string())]
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let o = &self.0;
        let mut out = Out { enc: &mut enc };
        let (n, m, h, r) = (&o.node, &o.membership, &o.hydfs, &o.rainstorm);

        out.gauges(
            "rainstorm_node_info",
            "This node: its member id, address and role (always 1).",
            vec![(
                vec![
                    ("id", o.me.to_string()),
                    ("addr", o.me.addr.to_string()),
                    ("role", format!("{:?}", o.role).to_lowercase()),
                ],
                1,
            )],
        )?;
        // Frames (every layer).
        out.counter(
            "rainstorm_frames_sent",
            "Frames sent to other nodes (datagrams and stream frames).",
            n.frames_sent,
        )?;
        out.counter("rainstorm_sent_bytes", "Bytes of the frames sent to other nodes.", n.bytes_sent)?;
        out.counter("rainstorm_frames_received", "Frames received from other nodes.", n.frames_received)?;
        out.counter(
            "rainstorm_received_bytes",
            "Bytes of the frames received from other nodes.",
            n.bytes_received,
        )?;
        out.counter(
            "rainstorm_frames_local",
            "Messages a layer addressed to this node itself.",
            n.frames_local,
        )?;
        out.counter(
            "rainstorm_frames_held",
            "HyDFS read requests from a member not listed yet, held until it was, then delivered (also counted as received).",
            n.frames_held,
        )?;
        out.counters(
            "rainstorm_frames_rejected",
            "Frames refused, by cause (bad checksum or key, replay, oversized, rate limited...).",
            n.rejected_by_cause().iter().map(|(c, v)| (l("cause", c), *v)).collect(),
        )?;
        out.counter(
            "rainstorm_connections_refused",
            "Inbound stream connections closed at once for limits.max_inbound_connections (a new one, or \
             the oldest that had sent no frame, to make room).",
            n.streams.connections_refused,
        )?;
        out.counter(
            "rainstorm_connections_timed_out",
            "Inbound stream connections closed for starting no frame within limits.stream_idle_timeout_s \
             or not delivering one whole within limits.stream_frame_timeout_s.",
            n.streams.connections_timed_out,
        )?;
        out.counter(
            "rainstorm_frames_send_dropped",
            "Stream frames dropped unsent: the send queue to their peer held limits.max_send_queue_mb \
             (reported as failed sends).",
            n.streams.frames_send_dropped,
        )?;
        out.counter(
            "rainstorm_frames_unsendable",
            "Frames that could not be encoded under their channel's limit (a bug if ever non-zero).",
            n.frames_unsendable,
        )?;
        out.counters(
            "rainstorm_stale_messages",
            "Messages dropped as stale (for an old incarnation, a past request), by layer.",
            vec![(l("layer", "membership"), m.stale_messages), (l("layer", "hydfs"), h.stale_messages)],
        )?;

        // Membership.
        out.counters(
            "rainstorm_membership_messages_sent",
            "Failure-detector messages sent, by kind.",
            vec![
                (l("kind", "ping"), m.pings_sent),
                (l("kind", "ack"), m.acks_sent),
                (l("kind", "ping_req"), m.ping_reqs_sent),
                (l("kind", "update"), m.updates_sent),
            ],
        )?;
        out.counter(
            "rainstorm_membership_suspicions",
            "Members this node suspected (SUS).",
            m.suspicions_raised,
        )?;
        out.counter(
            "rainstorm_membership_refutations",
            "Suspicions of this node it refuted (ALIVE).",
            m.refutations,
        )?;
        out.counter(
            "rainstorm_membership_failures_declared",
            "Members this node declared failed (DEL).",
            m.failures_declared,
        )?;
        out.counter(
            "rainstorm_membership_relays_dropped",
            "Indirect probes this node was asked to relay and dropped (too many at once).",
            m.relays_dropped,
        )?;
        let suspect =
            o.members.iter().filter(|v| matches!(v.status, MemberStatus::Suspect { .. })).count() as i64;
        let alive = o.members.len() as i64 - suspect;
        out.gauges(
            "rainstorm_membership_members",
            "Other members in this node's list, by state.",
            vec![(l("state", "alive"), alive), (l("state", "suspect"), suspect)],
        )?;
        out.gauge(
            "rainstorm_membership_suspicion_enabled",
            "1 in PingAck+S mode (suspicion on), 0 in PingAck.",
            i64::from(o.suspicion),
        )?;
        out.gauge("rainstorm_membership_incarnation", "This node's incarnation.", o.incarnation as i64)?;
        out.histograms(
            "rainstorm_membership_probe_rtt_seconds",
            "Round trips of acknowledged direct probes, ping to ack (millisecond resolution).",
            vec![(Vec::new(), &m.probe_rtt)],
        )?;

        // HyDFS.
        out.counter(
            "rainstorm_hydfs_writes_coordinated",
            "Creates and appends this node coordinated.",
            h.writes_coordinated,
        )?;
        out.counter(
            "rainstorm_hydfs_merges_coordinated",
            "Merges this node coordinated.",
            h.merges_coordinated,
        )?;
        out.counter(
            "rainstorm_hydfs_deletes_coordinated",
            "Deletes this node coordinated.",
            h.deletes_coordinated,
        )?;
        out.counter(
            "rainstorm_hydfs_parts_fetched",
            "File parts fetched from other replicas.",
            h.parts_fetched,
        )?;
        out.counter("rainstorm_hydfs_fetched_bytes", "Bytes fetched from other replicas.", h.bytes_fetched)?;
        out.counter(
            "rainstorm_hydfs_merge_fetched_bytes",
            "Bytes fetched from other replicas for merges (part of rainstorm_hydfs_fetched_bytes_total).",
            h.bytes_fetched_for_merges,
        )?;
        out.counter(
            "rainstorm_hydfs_corrupt_parts",
            "Stored parts found corrupt (then repaired).",
            h.corrupt_parts_detected,
        )?;
        out.counter(
            "rainstorm_hydfs_lost_parts",
            "Stored parts whose blocks were missing or unreadable when read (then repaired).",
            h.lost_parts_detected,
        )?;
        out.counter(
            "rainstorm_hydfs_writes_refused_storage",
            "Writes refused or failed because this node's storage refused them (a full disk, an unwritable data dir).",
            h.writes_refused_storage,
        )?;
        out.counters(
            "rainstorm_hydfs_files_dropped",
            "Copies this node dropped, by cause: no longer a replica, an orphan, or deleted.",
            vec![
                (l("cause", "moved"), h.files_dropped),
                (l("cause", "orphan"), h.orphans_dropped),
                (l("cause", "deleted"), h.files_deleted),
            ],
        )?;
        out.counter("rainstorm_hydfs_syncs", "Syncs of the block store to disk.", h.syncs)?;
        out.counters(
            "rainstorm_hydfs_cache_requests",
            "Reads looked up in the client's read cache, by result.",
            vec![(l("result", "hit"), h.cache_hits), (l("result", "miss"), h.cache_misses)],
        )?;
        out.counters(
            "rainstorm_hydfs_refused",
            "Requests refused by a limit: a name too long, busy (max_transfers), too many pending appends, \
             an append to a full file (max_file_meta_mb), a write to a sealed file from a writer that is not its owner, an append issued against a \
             file of the name since deleted, or a client's write from a process not listed yet \
             (answered, so that it tries again).",
            vec![
                (l("cause", "name_too_long"), h.names_refused),
                (l("cause", "sender_not_listed"), h.strangers_refused),
                (l("cause", "busy"), h.busy_refusals),
                (l("cause", "pending_appends"), h.pending_appends_refused),
                (l("cause", "file_full"), h.full_file_appends_refused),
                (l("cause", "sealed"), h.writes_refused_sealed),
                (l("cause", "file_deleted"), h.stale_appends_refused),
            ],
        )?;
        out.counter(
            "rainstorm_hydfs_tombstones_evicted",
            "Tombstones forgotten before they expired (max_tombstones).",
            h.tombstones_evicted,
        )?;
        out.counter("rainstorm_hydfs_scrubbed_parts", "Parts the scrubber verified.", h.scrubbed_parts)?;
        out.gauge("rainstorm_hydfs_tombstones", "Deleted files this node remembers.", h.tombstones as i64)?;
        out.gauge(
            "rainstorm_hydfs_ring_members",
            "Nodes on the ring as this node sees it.",
            o.ring.len() as i64,
        )?;
        out.gauge("rainstorm_hydfs_files_held", "Files this node holds a copy of.", o.files_held as i64)?;
        out.gauge(
            "rainstorm_hydfs_stored_bytes",
            "Bytes of the parts this node stores.",
            o.bytes_held as i64,
        )?;
        out.gauge(
            "rainstorm_hydfs_files_incomplete",
            "Files whose copy here is still being fetched.",
            o.files_incomplete as i64,
        )?;
        out.gauge(
            "rainstorm_hydfs_files_under_replicated",
            "Files held here that lack a full set of complete replicas, as far as the inventories \
             of this node's ring neighbours show (a replica not heard from does not count).",
            o.files_under_replicated as i64,
        )?;
        out.gauge(
            "rainstorm_hydfs_bytes_under_replicated",
            "Bytes of the files counted by rainstorm_hydfs_files_under_replicated.",
            o.bytes_under_replicated as i64,
        )?;
        out.histograms(
            "rainstorm_hydfs_request_duration_seconds",
            "Client operations this node ran, from submission to their end, by operation.",
            h.request_latency.iter().map(|(op, hist)| (l("op", op), hist)).collect(),
        )?;

        // RainStorm.
        out.counter(
            "rainstorm_stream_batches_sent",
            "Tuple batches the tasks on this node sent.",
            r.batches_sent,
        )?;
        out.counter(
            "rainstorm_stream_batches_rejected",
            "Tuple batches refused for holding more than max_batch_tuples.",
            r.batches_rejected,
        )?;
        out.counters(
            "rainstorm_stream_messages_refused",
            "Job messages refused because their sender has no such role (not the job's leader, not the task's host, a plan over max_tasks), by cause.",
            r.refused_by_cause().iter().map(|(c, v)| (l("cause", c), *v)).collect(),
        )?;
        out.counter(
            "rainstorm_stream_checkpoints",
            "Checkpoints completed in the jobs this node led.",
            r.checkpoints,
        )?;
        out.counter(
            "rainstorm_stream_commits",
            "Commits (a log record, then the outputs) of the jobs this node led.",
            r.commits,
        )?;
        out.counters(
            "rainstorm_stream_commit_writes",
            "HyDFS appends of the commits, to the checkpoint log and to the destination.",
            vec![(l("file", "log"), r.log_writes), (l("file", "dest"), r.output_writes)],
        )?;
        out.counters(
            "rainstorm_stream_commit_bytes",
            "Bytes of the commits, to the checkpoint log and to the destination.",
            vec![(l("file", "log"), r.log_bytes), (l("file", "dest"), r.output_bytes)],
        )?;
        out.counter("rainstorm_stream_rollbacks", "Rollbacks of the jobs this node led.", r.rollbacks)?;
        out.gauge(
            "rainstorm_stream_tasks_hosted",
            "Task incarnations running on this node.",
            o.tasks_hosted as i64,
        )?;
        out.gauges(
            "rainstorm_stream_jobs",
            "Jobs this node led since it started, by state.",
            JOB_STATES.iter().zip(o.job_states).map(|(s, v)| (l("state", s), v as i64)).collect(),
        )?;
        out.counters(
            "rainstorm_stream_job_outputs",
            "Outputs committed to the destination, per job this node leads now.",
            o.led.iter().map(|v| (l("job", v.job), v.outputs)).collect(),
        )?;
        out.counters(
            "rainstorm_stream_job_restarts",
            "Rollbacks, per job this node leads now.",
            o.led.iter().map(|v| (l("job", v.job), u64::from(v.restarts))).collect(),
        )?;
        let mut stage_tuples = Vec::new();
        let mut task_tuples = Vec::new();
        for v in &o.led {
            for s in &v.stages {
                for (dir, n) in [("in", s.consumed), ("out", s.emitted)] {
                    let labels = vec![
                        ("job", v.job.to_string()),
                        ("stage", s.stage.to_string()),
                        ("direction", dir.into()),
                    ];
                    stage_tuples.push((labels, n as i64));
                }
            }
            for t in &v.tasks {
                for (dir, n) in [("in", t.counts.consumed), ("out", t.counts.emitted)] {
                    let labels = vec![
                        ("job", v.job.to_string()),
                        ("stage", t.task.stage.to_string()),
                        ("task", t.task.to_string()),
                        ("direction", dir.into()),
                    ];
                    task_tuples.push((labels, n as i64));
                }
            }
        }
        // Gauges, not counters: a rollback takes a job's counts back to its checkpoint's.
        out.gauges(
            "rainstorm_stream_stage_tuples",
            "Tuples a stage's tasks took in and put out (stage 0: input lines), per job this node leads \
             now; a rollback takes them back to the counts of the checkpoint it resumes from.",
            stage_tuples,
        )?;
        out.gauges(
            "rainstorm_stream_task_tuples",
            "Tuples each task took in and put out, as it last reported, per job this node leads now; \
             a rollback takes them back to the counts of the checkpoint it resumes from.",
            task_tuples,
        )?;
        out.histograms(
            "rainstorm_stream_tuple_latency_seconds",
            "Per output of the jobs this node led: from the start of the checkpoint epoch its input was \
             read in to its commit in the destination (an upper bound, above the latency by at most the \
             epoch's length: checkpoint_interval, longer while checkpoints wait for commits).",
            vec![(Vec::new(), &r.tuple_latency)],
        )?;
        out.histograms(
            "rainstorm_stream_commit_duration_seconds",
            "Per commit of the jobs this node led: from its epoch's checkpoint completing to its outputs \
             being durable in the destination (queueing behind the commit before it included).",
            vec![(Vec::new(), &r.commit_latency)],
        )?;
        Ok(())
    }
}
