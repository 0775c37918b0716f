//! Logs through `tracing`: one event per line with a timestamp, to stderr and appended to a log
//! file in the data dir, so `grep event=failed <data_dir>/*.log` finds every failure.
//! `RUST_LOG` overrides the level (default `info`).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber; returns the log file's path.
pub fn init(data_dir: &Path, file_name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(file_name);
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = fmt::layer().with_writer(std::io::stderr).with_ansi(colour).with_target(false);
    let file = fmt::layer().with_writer(Mutex::new(file)).with_ansi(false).with_target(false);
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(file).try_init();
    Ok(path)
}
