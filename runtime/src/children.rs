//! Child processes that never outlive this one: the nodes of a local cluster, and the operator
//! programs a node runs.
//!
//! This module owns the one hook that runs in a child between `fork` and `exec`
//! ([`tie_to_this_process`]) and the thread that starts every such child ([`spawn`],
//! [`spawn_tokio`]).
//!
//! Invariants kept here:
//! * a child started through here gets SIGKILL from the kernel when this process dies, however
//!   it dies (`PR_SET_PDEATHSIG`, set in the child before `exec` and kept across it); if this
//!   process died before the child set it, the child sees it (its parent is no longer this
//!   process) and does not start;
//! * its resource limits (a [`Confinement`]) are set in the child before `exec`, so the program
//!   and everything it starts run under them from their first instruction; a limit above this
//!   process's own hard limit is lowered to it (an unprivileged process cannot raise it);
//! * the kernel sends the parent-death signal when the *thread* that forked the child ends, not
//!   only the process: every child is therefore started by one thread that lives as long as the
//!   process (`child-spawner`), never by a thread that may end before it (a test's thread, a
//!   thread the caller joins, or a runtime worker thread that tokio may retire);
//! * the hook is the only `unsafe` code of the workspace: between `fork` and `exec` only
//!   async-signal-safe calls are allowed, and it makes nothing but system calls through
//!   rustix's raw system call backend (`prctl`, `getppid`, `setrlimit`) over values prepared
//!   before the fork: it allocates nothing and takes no lock.
//!
//! The parent-death signal reaches the child itself, not the processes it starts (`fork`
//! clears it): a child that must take its own children down with it puts them in its process
//! group, and whoever stops it kills the group (the operator programs do, see
//! [`crate::programs`]).

use rustix::process::{
    getpid, getppid, getrlimit, set_parent_process_death_signal, setrlimit, Pid, Resource, Rlimit, Signal,
};
use std::io;
use std::sync::mpsc;
use std::sync::OnceLock;

/// Resource limits a child starts under.
#[derive(Clone, Debug, Default)]
pub struct Confinement {
    limits: Vec<(Resource, Rlimit)>,
}

impl Confinement {
    /// No limits beyond this process's own.
    pub fn new() -> Confinement {
        Confinement::default()
    }

    /// Adds a limit: `soft` (the one that takes effect) and `hard` (how far the child may raise
    /// it), each lowered to this process's own hard limit.
    pub fn limit(mut self, resource: Resource, soft: u64, hard: u64) -> Confinement {
        let ceiling = getrlimit(resource).maximum;
        let cap = |v: u64| Some(ceiling.map_or(v, |c| v.min(c)));
        let hard = hard.max(soft);
        self.limits.push((resource, Rlimit { current: cap(soft), maximum: cap(hard) }));
        self
    }

    /// The limits to set, as `(resource, soft, hard)` (`None`: unlimited).
    pub fn limits(&self) -> impl Iterator<Item = (Resource, Option<u64>, Option<u64>)> + '_ {
        self.limits.iter().map(|(r, l)| (*r, l.current, l.maximum))
    }
}

/// Sets `cmd` up so that its process gets SIGKILL when this process dies, and starts under
/// `confinement`. Start it with [`spawn`] or [`spawn_tokio`].
pub fn tie_to_this_process(cmd: &mut std::process::Command, confinement: Confinement) {
    let parent = getpid();
    let limits = confinement.limits;
    pre_exec(cmd, move || {
        set_parent_process_death_signal(Some(Signal::KILL))?;
        // This process may have died between the fork and the line above: then the child was
        // handed to another parent and no signal will ever come.
        if getppid() != Some(parent) {
            return Err(rustix::io::Errno::SRCH.into());
        }
        for (resource, limit) in &limits {
            setrlimit(*resource, *limit)?;
        }
        Ok(())
    });
}

/// Installs `hook` to run in the child between `fork` and `exec`.
#[allow(unsafe_code)]
fn pre_exec(cmd: &mut std::process::Command, hook: impl FnMut() -> io::Result<()> + Send + Sync + 'static) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child, where only async-signal-safe functions may be
    // called. Its only caller, `tie_to_this_process`, passes a hook that makes nothing but raw
    // system calls through rustix (no libc wrapper that could take a lock) over values captured
    // before the fork; it allocates nothing (its errors are raw OS error codes).
    unsafe {
        cmd.pre_exec(hook);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the thread that starts every child (started on first use; it lives as long
/// as the process).
fn on_spawner_thread(job: Job) -> io::Result<()> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new().name("child-spawner".into()).spawn(move || {
            for job in rx {
                job();
            }
        });
        thread.ok().map(|_| tx)
    });
    let gone = || io::Error::other("the thread that starts child processes could not be started");
    spawner.as_ref().ok_or_else(gone)?.send(job).map_err(|_| gone())
}

/// Starts `cmd` (set up with [`tie_to_this_process`]) from the thread that lives as long as
/// this process; blocks until it has started.
pub fn spawn(mut cmd: std::process::Command) -> io::Result<std::process::Child> {
    let (tx, rx) = mpsc::channel();
    on_spawner_thread(Box::new(move || {
        let _ = tx.send(cmd.spawn());
    }))?;
    rx.recv().map_err(|_| io::Error::other("the thread that starts child processes stopped"))?
}

/// [`spawn`] for a tokio command: the child is reaped and its pipes are driven by the runtime
/// this is called from.
pub async fn spawn_tokio(mut cmd: tokio::process::Command) -> io::Result<tokio::process::Child> {
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    on_spawner_thread(Box::new(move || {
        let _entered = runtime.enter();
        let _ = tx.send(cmd.spawn());
    }))?;
    rx.await.map_err(|_| io::Error::other("the thread that starts child processes stopped"))?
}

/// The process group `pid` leads, sent SIGKILL (nothing if `pid` is not a valid process id).
pub fn kill_group(pid: u32) -> io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::other("no such process group"))?;
    Ok(rustix::process::kill_process_group(pid, Signal::KILL)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it_and_starts_under_its_limits() {
        let child = std::thread::spawn(|| {
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", "ulimit -n; ulimit -t; sleep 0.5; echo alive"]).stdout(Stdio::piped());
            tie_to_this_process(
                &mut cmd,
                Confinement::new().limit(Resource::Nofile, 42, 42).limit(Resource::Cpu, 7, 9),
            );
            spawn(cmd).expect("started")
        })
        .join()
        .expect("the thread ends");
        // The thread that asked is gone; the child is not (it was forked by the spawner thread).
        let out = child.wait_with_output().expect("waited");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n7\nalive\n");
        assert!(out.status.success());
    }
}
