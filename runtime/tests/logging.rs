//! The log file: every line at INFO and above is written, none at DEBUG unless asked; queued
//! lines are written while the node runs, and what is left once the guard is dropped; the file is 0600 in a 0700 data dir. (Its own test binary: the subscriber is
//! global to the process.)

use rainstorm_runtime::logging;

#[test]
fn info_lines_reach_the_file_whole_and_debug_lines_do_not() {
    std::env::remove_var("RUST_LOG");
    let dir = std::env::temp_dir().join(format!("rainstorm-logging-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Left open to everyone by an older node: both are tightened, and the node says so.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(dir.join("member.log"), "an older line\n").unwrap();
    std::fs::set_permissions(dir.join("member.log"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (path, guard) = logging::init(&dir, "member.log").expect("the log opens");
    assert_eq!(path, dir.join("member.log"));
    assert_eq!((mode(&dir), mode(&path)), (0o700, 0o600));
    for i in 0..2_000 {
        tracing::info!(event = "many", i, "line {i}");
    }
    tracing::warn!(event = "failed", member = "127.0.0.1:7001", "DEL 127.0.0.1:7001");
    tracing::debug!(event = "hydfs_request", "a line per request");
    tracing::debug!(event = "source_sent", "a line per batch");
    // The writer takes the queue on its own, without waiting for the guard: at once for a
    // burst, and every `FLUSH_EVERY` for a line alone.
    let written = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::fs::read_to_string(&path).unwrap_or_default().contains(what) {
            assert!(std::time::Instant::now() < deadline, "`{what}` was not written while the node ran");
            std::thread::sleep(logging::FLUSH_EVERY);
        }
    };
    written("DEL 127.0.0.1:7001");
    tracing::info!(event = "alone", "a line alone");
    written("a line alone");
    tracing::info!(event = "last", "the line before the guard is dropped");
    drop(guard);
    let text = std::fs::read_to_string(&path).expect("the log is readable");
    assert_eq!(text.lines().filter(|l| l.contains("event=\"many\"")).count(), 2_000, "every line, whole");
    assert!(text.lines().any(|l| l.contains("WARN") && l.contains("event=\"failed\"")), "{text:.300}");
    assert!(
        text.lines().last().is_some_and(|l| l.contains("event=\"last\"")),
        "the guard writes what is queued"
    );
    assert!(!text.contains("hydfs_request") && !text.contains("source_sent"), "debug lines were written");
    assert!(text.starts_with("an older line\n"), "the log is appended to: {text:.300}");
    assert!(text.contains("event=\"data_dir_tightened\"") && text.contains("was=\"777\""), "{text:.600}");
    let _ = std::fs::remove_dir_all(&dir);
}
