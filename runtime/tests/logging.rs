//! The log file: every line at INFO and above is written, none at DEBUG unless asked, and what
//! was queued is on disk once the guard is dropped. (Its own test binary: the subscriber is
//! global to the process.)

use rainstorm_runtime::logging;

#[test]
fn info_lines_reach_the_file_whole_and_debug_lines_do_not() {
    std::env::remove_var("RUST_LOG");
    let dir = std::env::temp_dir().join(format!("rainstorm-logging-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (path, guard) = logging::init(&dir, "member.log").expect("the log opens");
    assert_eq!(path, dir.join("member.log"));
    for i in 0..2_000 {
        tracing::info!(event = "many", i, "line {i}");
    }
    tracing::warn!(event = "failed", member = "127.0.0.1:7001", "DEL 127.0.0.1:7001");
    tracing::debug!(event = "hydfs_request", "a line per request");
    tracing::debug!(event = "source_sent", "a line per batch");
    drop(guard);
    let text = std::fs::read_to_string(&path).expect("the log is readable");
    assert_eq!(text.lines().filter(|l| l.contains("event=\"many\"")).count(), 2_000, "every line, whole");
    assert!(text.lines().any(|l| l.contains("WARN") && l.contains("event=\"failed\"")), "{text:.300}");
    assert!(!text.contains("hydfs_request") && !text.contains("source_sent"), "debug lines were written");
    let _ = std::fs::remove_dir_all(&dir);
}
