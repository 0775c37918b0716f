//! `rainstorm ctl <node> <command...>`: gives a running node one console command through its
//! control socket. Prints the node's answer; exits 0 if the command succeeded, 1 if the node
//! refused it, 2 if the node could not be reached.

use clap::Args;
use rainstorm_core::command::JobCommand;
use rainstorm_runtime::control;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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
    let mut bar = crate::progress::Bar::default();
    let mut job = crate::progress::JobCounter::default();
    let request = control::request_streaming(&socket, &line, |d, t| bar.update(d, t), |l| job.show(l));
    let reply = runtime.block_on(request);
    bar.finish();
    job.finish();
    match reply {
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
