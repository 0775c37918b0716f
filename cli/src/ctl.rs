//! `rainstorm ctl <node> <command...>`: gives a running node one console command through its
//! control socket. Prints the node's answer; exits 0 if the command succeeded, 1 if the node
//! refused it, 2 if the node could not be reached, 3 if the node stopped while it streamed a
//! job (`RainStorm`, `follow`).
//!
//! A job outlives the node that streamed it: if that node was the job's leader, a successor
//! takes the job over. So when the stream breaks, `ctl` asks the other nodes of the cluster (the
//! node's siblings under its parent directory, and `--cluster-dir`) who leads the job now, for
//! up to [`SUCCESSOR_WAIT`], and its last line names that node and the `follow` command that
//! streams the job's outputs (from its first output) to its end.

use clap::Args;
use rainstorm_core::command::JobCommand;
use rainstorm_runtime::control;
use rainstorm_runtime::jobs::{started_job, Streamed};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The exit status when the node stopped while it streamed a job.
const NODE_LOST: u8 = 3;

/// How long `ctl` asks the other nodes for a job's leader after the node streaming it stopped:
/// time for the group to detect the failure and for a successor to take the job over.
const SUCCESSOR_WAIT: Duration = Duration::from_secs(60);

/// How long one node may take to answer `ctl`'s question about a job.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The node: its control socket, its data dir, or a node name of `rainstorm cluster`
    /// (`node0` is the introducer, `node1`... the members).
    pub node: String,
    /// The command and its arguments, e.g. `list_mem` or `disable_sus`.
    #[arg(required = true, trailing_var_arg = true)]
    pub command: Vec<String>,
    /// Where `rainstorm cluster` keeps its nodes.
    #[arg(long, default_value = "rainstorm-cluster")]
    pub cluster_dir: PathBuf,
}

/// An operator word whose program is a relative path that exists here, made absolute (the
/// node resolves paths against its own directory). Built-ins and HyDFS names are unchanged.
fn absolute_program(word: &str, cwd: &Path) -> String {
    if rainstorm_core::rainstorm::OperatorSpec::parse(word).is_ok() {
        return word.to_owned();
    }
    let Some(mut words) = shlex::split(word) else { return word.to_owned() };
    match words.first_mut() {
        Some(program)
            if Path::new(program.as_str()).is_relative() && cwd.join(program.as_str()).is_file() =>
        {
            *program = cwd.join(program.as_str()).to_string_lossy().into_owned();
            shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| word.to_owned())
        }
        _ => word.to_owned(),
    }
}

/// Finds the control socket for a node given as a socket, a data dir or a cluster node name.
pub fn resolve_socket(node: &str, cluster_dir: &Path) -> Result<PathBuf, String> {
    let path = Path::new(node);
    if path.is_dir() {
        return Ok(control::socket_path(path));
    }
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let in_cluster = cluster_dir.join(node);
    if in_cluster.is_dir() {
        return Ok(control::socket_path(&in_cluster));
    }
    Err(format!(
        "no node `{node}`: not a control socket, not a data dir, and not a node under {}",
        cluster_dir.display()
    ))
}

pub fn run(args: CtlArgs) -> ExitCode {
    let socket = match resolve_socket(&args.node, &args.cluster_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Words the shell kept together (a quoted operator with its arguments) stay together.
    let mut line =
        shlex::try_join(args.command.iter().map(String::as_str)).unwrap_or_else(|_| args.command.join(" "));
    // Local paths name files where `ctl` runs, which need not be the node's directory.
    if let Ok(rainstorm_core::command::Command::File(mut cmd)) =
        rainstorm_core::command::Command::parse(&line)
    {
        let cwd = std::env::current_dir().unwrap_or_default();
        for local in cmd.locals_mut() {
            let p = Path::new(local.as_str());
            if p.is_relative() {
                *local = cwd.join(p).to_string_lossy().into_owned();
            }
        }
        line = cmd.to_string();
    }
    // So do operator programs given by path.
    if let Ok(rainstorm_core::command::Command::Job(JobCommand::Run { op1, op2, src, dest, tasks, rate })) =
        rainstorm_core::command::Command::parse(&line)
    {
        let cwd = std::env::current_dir().unwrap_or_default();
        let (op1, op2) = (absolute_program(&op1, &cwd), absolute_program(&op2, &cwd));
        line = JobCommand::Run { op1, op2, src, dest, tasks, rate }.to_string();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    // A job's stream: the job id (known now for `follow`, from the first note for a run) and
    // the node's own address, to tell its successor from it if the node stops.
    let (mut streamed_job, streams_job) = match rainstorm_core::command::Command::parse(&line) {
        Ok(rainstorm_core::command::Command::Job(JobCommand::Follow { id })) => (Some(id), true),
        Ok(rainstorm_core::command::Command::Job(JobCommand::Run { .. })) => (None, true),
        _ => (None, false),
    };
    let node_addr = if streams_job { runtime.block_on(node_address(&socket)) } else { None };
    let mut bar = crate::progress::Bar::default();
    let mut job = crate::progress::JobCounter::default();
    let on_line = |l: Streamed| {
        if let Streamed::Note(note) = &l {
            if let Some(id) = started_job(note) {
                streamed_job = Some(id.to_owned());
            }
        }
        job.show(l)
    };
    let request = control::request_streaming(&socket, &line, |d, t| bar.update(d, t), on_line);
    let reply = runtime.block_on(request);
    bar.finish();
    job.finish();
    match reply {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && streamed_job.is_some() => {
            let id = streamed_job.unwrap_or_default();
            eprintln!("error: {}: {e}", args.node);
            eprintln!("job {id} goes on without it; asking the other nodes which node leads it now...");
            let last = runtime.block_on(after_node_lost(&socket, &args, &id, node_addr.as_deref()));
            eprintln!("{last}");
            ExitCode::from(NODE_LOST)
        }
        Ok(reply) if reply.ok => {
            print!("{}", reply.output);
            ExitCode::SUCCESS
        }
        Ok(reply) => {
            eprint!("error: {}", reply.output);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: cannot reach the node at {}: {e}", socket.display());
            ExitCode::from(2)
        }
    }
}

/// The address (`host:port`) of the node at `socket`, from its `list_self`.
async fn node_address(socket: &Path) -> Option<String> {
    let reply = tokio::time::timeout(ASK_TIMEOUT, control::request(socket, "list_self")).await.ok()?.ok()?;
    let id = reply.output.split_whitespace().next()?;
    Some(id.split_once('#').map_or(id, |(addr, _)| addr).to_owned())
}

/// A node of the cluster other than the one that stopped: its name, how `ctl` reaches it, and
/// its control socket.
struct OtherNode {
    name: String,
    arg: String,
    socket: PathBuf,
}

/// The nodes `ctl` can ask besides `lost`: the data dirs beside the lost node's, and the nodes
/// under `--cluster-dir`.
fn other_nodes(lost: &Path, cluster_dir: &Path) -> Vec<OtherNode> {
    // Absolute, so that a socket given as `node2/control.sock` still has a parent directory.
    let lost_abs = std::path::absolute(lost).unwrap_or_else(|_| lost.to_path_buf());
    let beside = lost_abs.parent().and_then(Path::parent).map(Path::to_path_buf);
    let mut nodes: Vec<OtherNode> = Vec::new();
    for dir in [Some(cluster_dir.to_path_buf()), beside].into_iter().flatten() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut found: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        found.sort();
        for data_dir in found {
            let socket = control::socket_path(&data_dir);
            let same = |a: &Path, b: &Path| a == b || a.canonicalize().ok() == b.canonicalize().ok();
            if !socket.exists() || same(&socket, lost) || nodes.iter().any(|n| same(&n.socket, &socket)) {
                continue;
            }
            let name = data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // The name alone where `--cluster-dir` resolves it, else the data dir's path.
            let arg = if dir == cluster_dir { name.clone() } else { data_dir.to_string_lossy().into_owned() };
            nodes.push(OtherNode { name, arg, socket });
        }
    }
    nodes
}

/// A job as another node's `job <id>` describes it: its state and its leader.
#[derive(Debug, PartialEq, Eq)]
pub struct Described {
    /// `running`, `completed`, `failed: ...`, `leader gone, ...`.
    pub state: String,
    pub leader: String,
    pub term: u64,
}

/// Reads the `  <state>; led by <addr> (term <t>); <n> of <m> lines read, ...` line of a
/// `job <id>` answer (an indented line; the last `; led by ` on it, since a failure's reason
/// may hold anything).
pub fn described(answer: &str) -> Option<Described> {
    answer.lines().filter(|l| l.starts_with("  ") && !l.starts_with("  |")).find_map(|line| {
        let (state, rest) = line.trim().rsplit_once("; led by ")?;
        let (leader, rest) = rest.split_once(" (term ")?;
        let (term, rest) = rest.split_once(')')?;
        rest.starts_with("; ").then_some(())?;
        Some(Described { state: state.to_owned(), leader: leader.to_owned(), term: term.parse().ok()? })
    })
}

/// After the node at `lost` stopped while it streamed job `id`: asks the other nodes who leads
/// the job now, until one names a leader other than `lost_addr` (or the job ended), and
/// returns the line that says so and how to follow the job.
async fn after_node_lost(lost: &Path, args: &CtlArgs, id: &str, lost_addr: Option<&str>) -> String {
    let nodes = other_nodes(lost, &args.cluster_dir);
    if nodes.is_empty() {
        return format!(
            "job {id}: no other node found beside {} or under {}; ask any node of the cluster: \
             rainstorm ctl <node> job {id}",
            args.node,
            args.cluster_dir.display()
        );
    }
    let question = format!("job {id}");
    let deadline = Instant::now() + SUCCESSOR_WAIT;
    let mut last_heard: Option<(String, Described)> = None;
    while Instant::now() < deadline {
        for node in &nodes {
            let ask = control::request(&node.socket, &question);
            let Ok(Ok(reply)) = tokio::time::timeout(ASK_TIMEOUT, ask).await else { continue };
            let Some(d) = reply.ok.then(|| described(&reply.output)).flatten() else { continue };
            let ended = !d.state.starts_with("running") && !d.state.starts_with("leader gone");
            // A live node other than the lost one leads it (found by its own address).
            let live = match lost_addr {
                Some(a) if a == d.leader => None,
                _ if d.state.starts_with("running") => leader_node(&nodes, &d.leader).await,
                _ => None,
            };
            if let Some((name, arg)) = live {
                return format!(
                    "job {id} continues under {name} ({}, term {}); follow it (from its first output) with: \
                     rainstorm ctl {arg} follow {id}",
                    d.leader, d.term
                );
            }
            if ended {
                let (name, arg) =
                    leader_node(&nodes, &d.leader).await.unwrap_or((d.leader.clone(), node.arg.clone()));
                return format!(
                    "job {id}: {}; led last by {name} ({}, term {}); its outputs: rainstorm ctl {arg} follow {id}",
                    d.state, d.leader, d.term
                );
            }
            last_heard = Some((node.name.clone(), d));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match last_heard {
        Some((name, d)) => format!(
            "job {id}: after {} s {name} still says `{}; led by {} (term {})`; look again with: \
             rainstorm ctl {name} job {id}",
            SUCCESSOR_WAIT.as_secs(),
            d.state,
            d.leader,
            d.term
        ),
        None => format!("job {id}: no other node knows it; look with: rainstorm ctl <node> jobs"),
    }
}

/// The name of the node whose address is `addr`, and how `ctl` reaches it.
async fn leader_node(nodes: &[OtherNode], addr: &str) -> Option<(String, String)> {
    for node in nodes {
        if node_address(&node.socket).await.as_deref() == Some(addr) {
            return Some((node.name.clone(), node.arg.clone()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_answer_names_its_state_and_leader() {
        let answer = "job 1-9f3e74: RainStorm a b c d 3\n  running; led by 127.0.0.1:7405 (term 1); \
                      5 of 9 lines read, 2 outputs, 0 restarts\n  destination d\n";
        assert_eq!(
            described(answer),
            Some(Described { state: "running".into(), leader: "127.0.0.1:7405".into(), term: 1 })
        );
        let gone = "  leader gone, a successor takes it over; led by 127.0.0.1:7401 (term 0); 1 of 2";
        assert_eq!(described(gone).map(|d| d.state), Some("leader gone, a successor takes it over".into()));
        assert_eq!(described("job 1-9f3e74: led by another node\n"), None);
        assert_eq!(described("  running; led by x (term y); ..."), None);
        // The spec line is not indented; a failure's reason may hold anything.
        assert_eq!(described("job 1-a: RainStorm grep:'x; led by y (term 2); ' b c d 1\n"), None);
        let failed =
            "  failed: op1 said `; led by z (term 9); `; led by 127.0.0.1:7001 (term 0); 1 of 2 lines";
        let d = described(failed).expect("parsed");
        assert_eq!((d.leader.as_str(), d.term), ("127.0.0.1:7001", 0));
    }
}
