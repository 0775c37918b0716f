//! `rainstorm bench <what>`: benchmarks measured in the deterministic simulator, printed as tables.
//!
//! * [`membership`]: SWIM failure detection: detection time, false failures under loss, traffic
//!   per member as the cluster grows, the simulator's own speed, and the `foca` library under the
//!   same network and faults (with the `compare-foca` feature, on by default).
//! * [`hydfs`]: the HyDFS experiments under a modelled 1 Gbit/s network: re-replication after a
//!   crash, merge after concurrent appends, and the client read cache.
//! * [`rainstorm`]: RainStorm jobs on the same modelled network: input lines per second of
//!   simulated time and, per input line, the bytes and HyDFS writes of checkpoint records and
//!   outputs, at checkpoint intervals of 10 ms to 1 s, against the single-process reference
//!   pipeline timed in the same run; and recovery after a worker crash (detection, rollback,
//!   tasks running again, outputs committed again) as jobs grow.
//!
//! Every simulated figure comes from fixed seeds, so it replays exactly; only wall-clock times
//! vary between machines and runs.
//!
//! * [`cluster_membership`]: the same questions on a real 10-process loopback cluster; these
//!   figures come from real processes and vary from run to run.
//! * [`hydfs_cluster`]: HyDFS on a real 10-process loopback cluster: create/get throughput against
//!   a raw loopback copy, append rate, merge, re-replication after kill -9, read cache, peak RSS.
//! * [`rainstorm_cluster`]: RainStorm jobs on a real 10-process loopback cluster: throughput and
//!   tuple latency against the single-process ceiling, with two workers killed, CPU split, RSS.

mod append_floor;
mod ceiling;
mod cluster_membership;
#[cfg(feature = "compare-foca")]
mod foca_actor;
mod hydfs;
mod hydfs_cluster;
mod leader_kill;
pub(crate) mod membership;
mod program_pipes;
mod rainstorm;
mod rainstorm_cluster;

use anyhow::Result;
use clap::{Args, ValueEnum};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Benchmark {
    /// SWIM membership: detection time, false failures, traffic per member, simulator speed.
    Membership,
    /// Membership on a real 10-process loopback cluster: bytes/s, kill -9 detection, false failures.
    ClusterMembership,
    /// HyDFS: re-replication after a crash, merge after concurrent appends, read cache.
    Hydfs,
    /// HyDFS on a real 10-process loopback cluster: throughput vs raw TCP, appends, merge,
    /// re-replication, read cache, peak RSS.
    HydfsCluster,
    /// RainStorm in the simulator: throughput and checkpoint/output bytes per input line vs
    /// checkpoint interval against the single-process reference, and recovery after a worker
    /// crash vs job size.
    Rainstorm,
    /// RainStorm on a real 10-process loopback cluster: throughput and tuple latency of App 1
    /// and App 2 as operator programs against the single-process ceiling, with and without two
    /// workers killed; CPU split, peak RSS, exactness.
    RainstormCluster,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Which benchmark to run.
    what: Benchmark,
    /// Run every part at about a tenth of its scale (a smoke test).
    #[arg(long)]
    quick: bool,
    /// Simulated cluster-hours per cell of the false-failure part at loss up to 5%; the cells at
    /// 10% and 20% loss get a fifth of that [default: 50, or 5 with --quick].
    #[arg(long, value_name = "N", value_parser = parse_hours, allow_negative_numbers = true)]
    hours: Option<f64>,
    /// `hydfs-cluster` only: size of the big file created and read, in MiB [default: 1024, or 64
    /// with --quick].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(2..=1024))]
    size_mib: Option<u64>,
    /// `rainstorm-cluster` only: input sizes in records, comma-separated [default:
    /// 10000,100000,1000000, or 10000 with --quick].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    sizes: Option<Vec<u64>>,
    /// `rainstorm-cluster` only: bytes of tuples per batch between tasks [default: the nodes' default, 65536].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4_194_304))]
    batch_bytes: Option<u32>,
    /// `rainstorm-cluster` only: pace each job's sources at this many input lines per second in
    /// all (the RainStorm command's `--rate`), for latency figures [default: unpaced].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// `rainstorm-cluster` only: time the in-process ceiling and the plain Python loop beside it,
    /// without starting a cluster.
    #[arg(long)]
    ceiling_only: bool,
    /// `rainstorm-cluster` only: run the last job again this many times on the cluster that ran
    /// every job before it and as many times on fresh clusters, to tell whether a cluster ages
    /// (0 skips it) [default: 3, or 1 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=20))]
    age_runs: Option<u64>,
    /// `rainstorm-cluster` only: run the last job this many times on a fresh cluster whose
    /// metrics are scraped every second (every node's /metrics, and the leader's status page's
    /// JSON) and as many times on one serving no metrics, taking turns [default: 3; 1 with
    /// --quick; 0 skips it].
    #[arg(long)]
    metrics_runs: Option<u64>,
    /// `rainstorm-cluster` only: sample the node processes with `perf record` (Debian's package
    /// linux-perf) during the 3-task job of each application on the largest input, and print
    /// where their CPU time went.
    #[arg(long)]
    profile: bool,
    /// `rainstorm-cluster` only: run the leader-kill job (app1 over 100,000 lines at 20,000
    /// lines/s, its leader SIGKILLed 2 s in, followed from another node) this many times, each
    /// on a cluster of its own [default: 3; 1 with --quick; 0 skips it].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=20))]
    leader_kill_runs: Option<u64>,
    /// `rainstorm-cluster` only: run only the leader-kill part.
    #[arg(long)]
    leader_kill_only: bool,
}

/// How large a benchmark run is.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    pub quick: bool,
    pub hours: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let scale = Scale { quick: args.quick, hours: args.hours };
    match args.what {
        Benchmark::Membership => membership::run(scale)?,
        Benchmark::ClusterMembership => cluster_membership::run(scale.quick)?,
        Benchmark::Hydfs => hydfs::run(scale)?,
        Benchmark::HydfsCluster => hydfs_cluster::run(args.quick, args.size_mib)?,
        Benchmark::Rainstorm => rainstorm::run(scale)?,
        Benchmark::RainstormCluster => rainstorm_cluster::run({
            let plan =
                rainstorm_cluster::Plan::new(args.quick, args.sizes, args.batch_bytes, args.ceiling_only)
                    .paced(args.rate)
                    .profiled(args.profile);
            let plan = match args.age_runs {
                Some(n) => plan.aged(n as usize),
                None => plan,
            };
            let plan = match args.metrics_runs {
                Some(n) => plan.metered(n as usize),
                None => plan,
            };
            let runs = args.leader_kill_runs.map_or(plan.leader_kill_runs, |n| n as usize);
            plan.leader_killed(runs, args.leader_kill_only)
        })?,
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_hours(s: &str) -> Result<f64, String> {
    let h: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of hours"))?;
    if !h.is_finite() || h <= 0.0 || h > 100_000.0 {
        return Err(format!("cluster-hours must be more than 0 and at most 100000, not {s}"));
    }
    Ok(h)
}

/// Runs `f` on every job, on as many threads as the machine has cores, and returns the results
/// in job order. Each simulated run is deterministic, so the results do not depend on threading.
pub fn parallel_map<J: Send, R: Send>(jobs: Vec<J>, f: impl Fn(J) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len()).max(1);
    let count = jobs.len();
    let jobs: Vec<Mutex<Option<J>>> = jobs.into_iter().map(|j| Mutex::new(Some(j))).collect();
    let results: Vec<Mutex<Option<R>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let job = jobs[i].lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(job) = job {
                    let r = f(job);
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    results.into_iter().filter_map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_map_keeps_job_order() {
        let out = parallel_map((0..100u64).collect(), |x| x * x);
        assert_eq!(out, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    }

    #[test]
    fn hours_must_be_a_positive_number() {
        assert_eq!(parse_hours("2.5"), Ok(2.5));
        assert!(parse_hours("0").is_err());
        assert!(parse_hours("-1").is_err());
        assert!(parse_hours("lots").unwrap_err().contains("not a number"));
        assert!(parse_hours("inf").is_err());
    }
}
