//! The in-process ceiling of `rainstorm bench rainstorm-cluster`, and a plain Python loop beside it.
//!
//! The ceiling is the single-process reference pipeline ([`reference::run`]: the built-in
//! operators over every physical line, in order, no distribution, no checkpoints, no logging): the
//! fastest a job of the same operators could go on one core. Its outputs are the reference's by
//! construction, and they are what every job is checked against.
//!
//! Beside it, in the same run and on the same input file, the same two applications written as a
//! user would write them in Python 3 with the standard library's `csv` module, one thread, no
//! framework ([`PYTHON_LOOP`]). The Python loop's outputs are compared with the ceiling's and any
//! difference is printed (Python's `csv` reads a quoted newline as part of its record, where
//! RainStorm works on physical lines; on inputs without quoted newlines the outputs are equal).
//!
//! Each side runs [`RUNS`] times, the two taking turns (so that a change in the machine's load
//! falls on both); the median time of each is reported, and the ratio of the two medians.

use anyhow::{anyhow, bail, Context, Result};
use rainstorm_cli::demo::{count_lines, Diff};
use rainstorm_core::rainstorm::{dest_line, reference, OperatorSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Timed runs of each side; the median is reported.
pub const RUNS: usize = 3;

/// App 1 and App 2 as a plain Python loop: `python3 <script> app1|app2 <input> <argument>
/// <outputs>` prints the loop's seconds (reading and processing the input, outputs kept in
/// memory), then writes the outputs one per line, escaped as a job's destination.
pub const PYTHON_LOOP: &str = r#"
import csv
import sys
import time


def join(fields):
    return ",".join('"' + f.replace('"', '""') + '"' if any(c in f for c in ',"\r\n') else f for f in fields)


def columns(header, *names):
    clean = [h.lstrip("\ufeff").strip() for h in header]
    return [clean.index(n) for n in names]


def app1(f, pattern):
    # grep:<pattern> on the line, then project:OBJECTID,Sign_Type.
    lines = iter(f)
    a, b = columns(next(csv.reader([next(lines)])), "OBJECTID", "Sign_Type")
    out = []
    for line in lines:
        if pattern in line:
            row = next(csv.reader([line]))
            out.append(join([row[a] if a < len(row) else "", row[b] if b < len(row) else ""]))
    return out


def app2(f, value):
    # column:Sign_Post=<value>, then count:Category.
    reader = csv.reader(f)
    post, cat = columns(next(reader), "Sign_Post", "Category")
    counts = {}
    out = []
    for row in reader:
        if post < len(row) and row[post] == value:
            c = row[cat] if cat < len(row) else ""
            n = counts.get(c, 0) + 1
            counts[c] = n
            out.append(join([c, str(n)]))
    return out


app, path, argument, outputs = sys.argv[1:5]
start = time.perf_counter()
with open(path, encoding="utf-8", newline="") as f:
    out = {"app1": app1, "app2": app2}[app](f, argument)
print(time.perf_counter() - start)
with open(outputs, "w", encoding="utf-8", newline="") as o:
    for v in out:
        o.write(v.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r") + "\n")
"#;

/// One application's ceiling and Python figures on one input.
pub struct Measured {
    /// Median seconds of the in-process pipeline.
    pub ceiling_secs: f64,
    /// The reference's outputs as destination lines, counted.
    pub expected: BTreeMap<String, usize>,
    pub outputs: usize,
    /// Median seconds of the Python loop, and how its outputs compare; `None` without `python3`.
    pub python: Option<(f64, Result<(), String>)>,
}

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times the ceiling of `builtins` over `bytes` (stored as `local`, named `src` in the job), and
/// the Python loop of `python` (`("app1", pattern)` or `("app2", sign post)`) over `local`, the
/// two taking turns.
pub fn measure(
    root: &Path,
    src: &str,
    local: &Path,
    bytes: &[u8],
    builtins: [&str; 2],
    python: (&str, &str),
) -> Result<Measured> {
    let spec = |s: &str| OperatorSpec::parse(s).map_err(|e| anyhow!("{s}: {e}"));
    let (op1, op2) = (spec(builtins[0])?, spec(builtins[1])?);
    let python_runs = python3_runs().then(|| PythonLoop::new(root, local, python));
    let (mut times, mut python_times) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
    let mut out = Vec::new();
    for _ in 0..RUNS {
        drop(std::mem::take(&mut out));
        let t = Instant::now();
        out = reference::run(src, bytes, &op1, &op2).map_err(|e| anyhow!("reference: {e}"))?;
        times.push(t.elapsed().as_secs_f64());
        if let Some(python) = &python_runs {
            python_times.push(python.run()?);
        }
    }
    let expected = count_lines(out.iter().map(|t| dest_line(t).trim_end_matches('\n').to_owned()));
    let python = match python_runs {
        Some(python) => Some((median(&mut python_times), python.compare(&expected)?)),
        None => None,
    };
    Ok(Measured { ceiling_secs: median(&mut times), expected, outputs: out.len(), python })
}

/// Whether `python3` runs here.
fn python3_runs() -> bool {
    Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The Python loop of one application over one input file.
struct PythonLoop {
    script: PathBuf,
    input: PathBuf,
    app: String,
    argument: String,
    outputs: PathBuf,
}

impl PythonLoop {
    fn new(root: &Path, input: &Path, (app, argument): (&str, &str)) -> PythonLoop {
        PythonLoop {
            script: root.join("python_loop.py"),
            input: input.to_owned(),
            app: app.to_owned(),
            argument: argument.to_owned(),
            outputs: root.join(format!("python-{app}.out")),
        }
    }

    /// One run: the loop's seconds, as it measures them (the interpreter's start excluded).
    fn run(&self) -> Result<f64> {
        std::fs::write(&self.script, PYTHON_LOOP)?;
        let run = Command::new("python3")
            .arg(&self.script)
            .arg(&self.app)
            .arg(&self.input)
            .arg(&self.argument)
            .arg(&self.outputs)
            .output()
            .context("running python3")?;
        if !run.status.success() {
            bail!("the Python loop failed: {}", String::from_utf8_lossy(&run.stderr).trim());
        }
        let secs = String::from_utf8_lossy(&run.stdout).trim().parse::<f64>();
        secs.map_err(|e| anyhow!("the Python loop printed no time: {e}"))
    }

    /// The last run's outputs against `expected`.
    fn compare(&self, expected: &BTreeMap<String, usize>) -> Result<Result<(), String>> {
        let text = std::fs::read_to_string(&self.outputs)?;
        let _ = std::fs::remove_file(&self.outputs);
        let diff = Diff::of(expected, &count_lines(text.lines().map(str::to_owned)));
        Ok(if diff.is_empty() { Ok(()) } else { Err(diff.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [5.0]), 5.0);
        assert!(median(&mut []).is_nan());
    }
}
