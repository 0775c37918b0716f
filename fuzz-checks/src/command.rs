//! `command_parse`: console lines ([`Command::parse`], as the console and the control socket
//! read them) and the control socket's progress lines ([`parse_progress`]).
//!
//! Checked: no panic; errors are typed and say something; a parsed command prints back
//! (`Display`) to a line that parses to the same command; a parsed progress report written as
//! the node writes it ([`streamed_line`] for a job's counts) parses back to the same report.

use rainstorm_core::command::Command;
use rainstorm_runtime::control::{parse_progress, streamed_line, ProgressReport};
use rainstorm_runtime::jobs::Streamed;

/// `command_parse`: the input as one console line, and as the fields of a progress line.
pub fn command_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Command::parse(&text) {
        Ok(command) => {
            let printed = command.to_string();
            assert_eq!(Command::parse(&printed), Ok(command), "`{printed}` does not parse back");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    match parse_progress(&text) {
        Ok(report) => {
            let line = match &report {
                ProgressReport::Transfer { done, total } => format!("progress {done} {total}\n"),
                ProgressReport::Job(p) => streamed_line(&Streamed::Progress(p.clone())),
            };
            let fields = line.strip_prefix("progress ").and_then(|l| l.strip_suffix('\n'));
            let fields = fields.expect("a progress line");
            assert_eq!(parse_progress(fields), Ok(report), "`{fields}` does not parse back");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
