//! Every node serves Prometheus metrics at `/metrics` and its status page at `/` (with the
//! page's JSON at `/api/status`): checked on real processes, the text parsed by an independent
//! parser of the Prometheus text format, and the counters seen moving with traffic.

use rainstorm_cli::cluster::{http_response, ClusterArgs, LocalCluster};
use rainstorm_runtime::config::Scheduling;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

const BASE_PORT: u16 = 19_700;

/// `GET path` from node `index`'s HTTP endpoint: (status line, headers, body).
fn get(index: u16, path: &str) -> (String, String, String) {
    let a = http_response(BASE_PORT + index, path).unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
    (a.status, a.headers, a.body)
}

/// The family a sample `name` belongs to: a histogram's `_bucket`, `_sum` and `_count` series
/// belong to the histogram.
fn family_of<'n>(name: &'n str, types: &BTreeMap<String, String>) -> &'n str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|t| t == "histogram")))
        .unwrap_or(name)
}

/// The scrape of node `index`, checked line by line against the text format's rules, and
/// parsed: `(family types, samples)`.
fn scrape(index: u16) -> (BTreeMap<String, String>, Vec<prometheus_parse::Sample>) {
    let (status, headers, body) = get(index, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
    let valid_name = |n: &str| {
        n.starts_with("rainstorm_") && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut helps = BTreeSet::new();
    let mut types = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "bad name in {line:?}");
            assert!(helps.insert(name.to_owned()), "a second HELP for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helps.contains(name), "TYPE before HELP for {name}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line:?}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "a counter named without _total: {name}");
            }
            types.insert(name.to_owned(), kind.to_owned());
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(types.contains_key(family_of(name, &types)), "a sample of no declared family: {line:?}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad value in {line:?}");
        }
    }
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    assert!(parsed.samples.len() > 50, "only {} samples", parsed.samples.len());
    (types, parsed.samples)
}

fn value(samples: &[prometheus_parse::Sample], metric: &str, labels: &[(&str, &str)]) -> f64 {
    let s = samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {metric} {labels:?}"));
    match &s.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => *v,
        prometheus_parse::Value::Histogram(buckets) => {
            buckets.iter().find(|b| b.less_than == f64::INFINITY).map(|b| b.count).expect("+Inf bucket")
        }
        other => panic!("{metric}: unexpected {other:?}"),
    }
}

#[test]
fn every_node_serves_metrics_that_move_with_traffic_and_a_status_page() {
    let dir = std::env::temp_dir().join(format!("rainstorm-test-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = ClusterArgs {
        period_ms: 200,
        node_scheduling: Some(Scheduling::Batch),
        ..ClusterArgs::local(3, BASE_PORT, dir.join("cluster"))
    };
    let c =
        LocalCluster::start(args, PathBuf::from(env!("CARGO_BIN_EXE_rainstorm"))).expect("cluster starts");
    // `--node-scheduling batch` reached every thread of every node (SCHED_BATCH is policy 3).
    for node in &c.nodes {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", node.child.id())).expect("the node's threads");
        for task in tasks {
            let stat =
                std::fs::read_to_string(task.expect("a thread").path().join("stat")).expect("its stat");
            let after_name = stat.rsplit_once(')').expect("a stat line").1;
            let policy = after_name.split_whitespace().nth(38).expect("the policy field");
            assert_eq!(policy, "3", "node{} runs a thread that is not SCHED_BATCH: {stat}", node.index);
        }
    }

    let (types, before) = scrape(1);
    for (name, kind) in [
        ("rainstorm_frames_sent_total", "counter"),
        ("rainstorm_frames_rejected_total", "counter"),
        ("rainstorm_membership_members", "gauge"),
        ("rainstorm_membership_probe_rtt_seconds", "histogram"),
        ("rainstorm_hydfs_request_duration_seconds", "histogram"),
        ("rainstorm_hydfs_files_under_replicated", "gauge"),
        ("rainstorm_hydfs_bytes_under_replicated", "gauge"),
        ("rainstorm_stream_tuple_latency_seconds", "histogram"),
        ("rainstorm_stream_commit_duration_seconds", "histogram"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert_eq!(value(&before, "rainstorm_membership_members", &[("state", "alive")]), 2.0);

    // Every metric the Grafana dashboard queries is one the node serves.
    let dashboard = include_str!("../../docs/grafana-dashboard.json");
    let _: serde_json::Value = serde_json::from_str(dashboard).expect("the dashboard is JSON");
    let mut queried = BTreeSet::new();
    for (at, _) in dashboard.match_indices("rainstorm_") {
        let name: String =
            dashboard[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        queried.insert(name);
    }
    for name in &queried {
        assert!(
            types.contains_key(family_of(name, &types)),
            "the dashboard queries {name}, which no node serves"
        );
    }
    assert!(queried.len() > 30, "only {} metrics on the dashboard", queried.len());

    // Traffic: a file stored from node 1 (on all 3 nodes: the replication factor is 3).
    let local = dir.join("hello.txt");
    std::fs::write(&local, "one line\n").unwrap();
    let out = c.ctl(1, &format!("create {} hello.txt", local.display())).expect("create");
    assert!(out.contains("created"), "{out}");
    std::thread::sleep(Duration::from_millis(1_000));
    let (_, after) = scrape(1);
    let sent = |s: &[prometheus_parse::Sample]| value(s, "rainstorm_frames_sent_total", &[]);
    assert!(
        sent(&after) > sent(&before),
        "frames_sent did not move: {} then {}",
        sent(&before),
        sent(&after)
    );
    assert!(value(&after, "rainstorm_membership_probe_rtt_seconds", &[]) > 0.0, "no probe round trips");
    assert_eq!(value(&after, "rainstorm_hydfs_request_duration_seconds", &[("op", "create")]), 1.0);
    let held: f64 = (0..3).map(|i| value(&scrape(i).1, "rainstorm_hydfs_files_held", &[])).sum();
    assert_eq!(held, 3.0, "three copies of hello.txt");

    // The page's JSON says what `list_self` and `store` say.
    let (status, headers, body) = get(1, "/api/status");
    assert!(status.contains("200") && headers.contains("application/json"), "{status} {headers}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let me = c.ctl(1, "list_self").unwrap().split_whitespace().next().unwrap().to_owned();
    assert_eq!(json["node"]["id"], me);
    assert_eq!(json["membership"]["members"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["links"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["files"][0]["name"], "hello.txt");
    assert_eq!(json["files"][0]["replicas"].as_array().map(Vec::len), Some(3));

    // The page and its chart library come from the binary.
    let (status, headers, page) = get(1, "/");
    assert!(status.contains("200") && headers.contains("text/html"), "{status}");
    assert!(page.contains("/api/status") && page.contains("/uplot.js"));
    let (status, _, js) = get(1, "/uplot.js");
    assert!(status.contains("200") && js.contains("uPlot"), "{status}");
    let (status, _, _) = get(1, "/no-such-page");
    assert!(status.contains("404"), "{status}");
}
