//! The operator programs alone, over their pipes: the protocol's share of a job's cost.
//!
//! Each application's two Rust demo programs are driven the way a worker drives them, through
//! the runtime's own [`Conversation`], one stage after the other over the whole input: the
//! first program gets the source lines in batches of the job's batch size, the second the
//! first one's outputs in batches of the same size. Once with the programs made to speak
//! version 1 (JSON lines, one batch at a time: a hello that offers nothing else) and once in
//! version 2 (frames, [`DEFAULT_PROGRAM_WINDOW`] batches in flight). No distribution, no
//! checkpoints: only the programs, the protocol and the driver. The outputs are checked against
//! the ceiling's (the same values, as destination lines).

use anyhow::{anyhow, bail, Context, Result};
use rainstorm_cli::demo::{count_lines, Diff};
use rainstorm_core::rainstorm::{derive_into, dest_line, source_lines, Applied, ProgramBatch, Tuple};
use rainstorm_operator::{Hello, V2};
use rainstorm_runtime::programs::conversation::{Conversation, ConversationLimits};
use rainstorm_runtime::programs::DEFAULT_PROGRAM_WINDOW;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// One run of both stages: seconds per stage (handshakes excluded), CPU seconds of the driver
/// and of the program per stage, and whether the outputs are the ceiling's.
pub struct PipeRun {
    pub stage_secs: [f64; 2],
    pub driver_cpu: [f64; 2],
    pub program_cpu: [f64; 2],
    pub exact: Result<(), String>,
}

impl PipeRun {
    pub fn secs(&self) -> f64 {
        self.stage_secs.iter().sum()
    }
}

/// Runs `programs` (name and shell-quoted arguments, from `bin`) over the source lines of
/// `bytes` (named `src`) in `version`, batches of `batch_lines`; checks the last stage's
/// outputs against `expected`.
pub fn run(
    bin: &Path,
    programs: [(&str, &str); 2],
    src: &str,
    bytes: &[u8],
    batch_lines: usize,
    version: u32,
    expected: &BTreeMap<String, usize>,
) -> Result<PipeRun> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let header = rainstorm_core::rainstorm::reference::header_of(bytes);
    let mut tuples: Vec<Tuple> = source_lines(bytes).map(|(n, line)| Tuple::source(src, n, line)).collect();
    let (mut stage_secs, mut driver_cpu, mut program_cpu) = ([0.0; 2], [0.0; 2], [0.0; 2]);
    for (stage, (program, args)) in programs.into_iter().enumerate() {
        let args = shlex::split(args).ok_or_else(|| anyhow!("bad arguments {args:?}"))?;
        let path = bin.join(program);
        let run = runtime
            .block_on(stage_over_pipes(&path, &args, header.clone(), &tuples, batch_lines, version))
            .with_context(|| format!("{program} (protocol version {version})"))?;
        (stage_secs[stage], driver_cpu[stage], program_cpu[stage]) =
            (run.secs, run.driver_cpu, run.program_cpu);
        tuples = run.outputs;
    }
    let got = count_lines(tuples.iter().map(|t| dest_line(t).trim_end_matches('\n').to_owned()));
    let diff = Diff::of(expected, &got);
    let exact = if diff.is_empty() { Ok(()) } else { Err(diff.to_string()) };
    Ok(PipeRun { stage_secs, driver_cpu, program_cpu, exact })
}

/// CPU time of a process's main thread so far, in seconds (`/proc/<pid>/schedstat`, in ns).
fn cpu_secs(pid: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
    text.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).map_or(0.0, |ns| ns as f64 / 1e9)
}

/// One stage's run.
struct StageRun {
    secs: f64,
    driver_cpu: f64,
    program_cpu: f64,
    outputs: Vec<Tuple>,
}

/// One program over `input`: the seconds from its first batch to its last result, the CPU
/// seconds of this process and of the program in that time, and the tuples it derived.
async fn stage_over_pipes(
    path: &Path,
    args: &[String],
    header: Option<Vec<String>>,
    input: &[Tuple],
    batch_lines: usize,
    version: u32,
) -> Result<StageRun> {
    let mut child = tokio::process::Command::new(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
    let (Some(stdin), Some(stdout)) = (stdin, stdout) else { bail!("no pipes") };
    let hello = match version {
        V2 => Hello::new("s1-t0", header),
        _ => Hello::v1_only("s1-t0", header),
    };
    let limits = ConversationLimits {
        window: DEFAULT_PROGRAM_WINDOW,
        batch_timeout: Duration::from_secs(60),
        max_message_bytes: rainstorm_operator::DEFAULT_MAX_MESSAGE_BYTES,
    };
    let mut conversation = Conversation::start(stdout, stdin, &hello, limits).await?;
    if conversation.version() != version {
        bail!("the program answered version {}", conversation.version());
    }
    let pid = child.id().map_or_else(String::new, |p| p.to_string());
    let (driver_before, program_before) = (cpu_secs("self"), cpu_secs(&pid));
    let started = Instant::now();
    let mut batches = input.chunks(batch_lines.max(1));
    let mut in_flight: VecDeque<&[Tuple]> = VecDeque::new();
    let mut out = Vec::new();
    loop {
        while conversation.has_room() {
            let Some(batch) = batches.next() else { break };
            conversation.send(ProgramBatch { tuples: batch.to_vec().into(), state: BTreeMap::new() })?;
            in_flight.push_back(batch);
        }
        let Some(batch) = in_flight.pop_front() else { break };
        let result = conversation.next_result().await?;
        for (t, outputs) in batch.iter().zip(result.outputs) {
            derive_into(t, Applied { outputs, state: None }, &mut out);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let (driver_cpu, program_cpu) = (cpu_secs("self") - driver_before, cpu_secs(&pid) - program_before);
    conversation.close();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    if !status.success() {
        bail!("exited with {status}");
    }
    Ok(StageRun { secs, driver_cpu, program_cpu, outputs: out })
}
