//! The append floor: what this machine allows for HyDFS's pattern of a 4 KiB append, measured
//! with nothing of HyDFS in it, as a baseline for the cluster's append rate.
//!
//! Ten "nodes" (threads of this process, each with its own sockets), and one client per node, as
//! in the cluster's append test. Every append makes the hops a HyDFS append makes: the client
//! connects to its node's Unix socket, sends one line and reads the answer; the node reads the
//! 4 KiB file the line names and sends it over TCP to the coordinator (node 0, which also takes
//! its own client's appends directly); the coordinator appends it to a file and forwards it to
//! the two other replicas (nodes 1 and 2), which append it, `fdatasync` and acknowledge; the
//! coordinator answers the node once its own `fdatasync` and both acknowledgements are in, and
//! the node answers the client.
//!
//! It is built to be as cheap as that pattern can be, so that its rate bounds what any
//! implementation of the pattern reaches here: blocking threads (no async runtime); no
//! checksums, headers, index or logging; and every batching the clients' timing allows (the
//! coordinator forwards every write waiting together in one write per replica and syncs once
//! for them; a replica stores every write its socket holds, syncs once and acknowledges them in
//! one write).

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Barrier;
use std::thread::JoinHandle;
use std::time::Instant;

/// Nodes, and clients (one per node).
const NODES: usize = 10;
/// The other two replicas of the one file (the coordinator is node 0).
const REPLICAS: [usize; 2] = [1, 2];

/// One append's frame: `len u32 | id u64 | data` (an acknowledgement has no data).
fn frame(id: u64, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&((8 + data.len()) as u32).to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(data);
}

/// Takes the whole frames at the front of `buf`, leaving a partial one.
fn take_frames(buf: &mut Vec<u8>) -> Vec<(u64, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 4 {
        let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len < 8 || buf.len() < at + 4 + len {
            break;
        }
        let id = u64::from_le_bytes(buf[at + 4..at + 12].try_into().expect("8 bytes"));
        frames.push((id, buf[at + 12..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    buf.drain(..at);
    frames
}

/// What the coordinator's loop is given.
enum Event {
    /// A write from node `from`'s client (`None`: the coordinator's own).
    Write {
        from: Option<usize>,
        id: u64,
        data: Vec<u8>,
        done: Option<mpsc::Sender<()>>,
    },
    Ack {
        id: u64,
    },
    /// A node stopped sending writes (the loop ends once every node has).
    Closed,
    /// A replica's connection ended: the writes it has not acknowledged never will be.
    ReplicaGone,
}

/// A log file appended to and synced.
struct Log {
    file: File,
    len: u64,
}

impl Log {
    fn create(path: &Path) -> Result<Log> {
        let file = OpenOptions::new().create(true).truncate(true).write(true).open(path)?;
        Ok(Log { file, len: 0 })
    }

    fn append(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all_at(data, self.len)?;
        self.len += data.len() as u64;
        Ok(())
    }
}

/// The appends per second of `each` appends from each of the ten clients, client `i` appending
/// the local file `blocks[i]`.
pub fn measure(work: &Path, blocks: &[PathBuf], each: usize) -> Result<f64> {
    if blocks.len() != NODES {
        bail!("the append floor needs {NODES} blocks");
    }
    let dir = work.join("append-floor");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir, blocks, each);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &Path, blocks: &[PathBuf], each: usize) -> Result<f64> {
    let mut threads: Vec<JoinHandle<Result<()>>> = Vec::new();
    // The replicas: each takes one connection from the coordinator.
    let mut replica_addrs = Vec::new();
    for r in REPLICAS {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        replica_addrs.push(listener.local_addr()?);
        let path = dir.join(format!("replica-{r}.log"));
        threads.push(std::thread::spawn(move || replica(listener, &path)));
    }
    // The coordinator's loop, its own log, and the connections to the replicas.
    let (events, inbox) = mpsc::channel::<Event>();
    let mut to_replicas = Vec::new();
    for addr in &replica_addrs {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let acks = s.try_clone()?;
        let tx = events.clone();
        threads.push(std::thread::spawn(move || {
            read_into(acks, tx, |id, _| Event::Ack { id }, Event::ReplicaGone)
        }));
        to_replicas.push(s);
    }
    let coordinator_listener = TcpListener::bind("127.0.0.1:0")?;
    let coordinator_addr = coordinator_listener.local_addr()?;
    let log = Log::create(&dir.join("coordinator.log"))?;
    let (replies_tx, replies_rx) = mpsc::channel::<(usize, TcpStream)>();
    threads.push(std::thread::spawn(move || coordinate(inbox, log, to_replicas, replies_rx)));
    // The nodes' connections to the coordinator (node 0's writes go to its loop directly).
    let accept_events = events.clone();
    let acceptor = std::thread::spawn(move || -> Result<()> {
        for from in 1..NODES {
            let (s, _) = coordinator_listener.accept()?;
            s.set_nodelay(true)?;
            replies_tx.send((from, s.try_clone()?)).map_err(|_| anyhow!("the coordinator stopped"))?;
            let tx = accept_events.clone();
            std::thread::spawn(move || {
                let write = |id, data| Event::Write { from: Some(from), id, data, done: None };
                read_into(s, tx, write, Event::Closed)
            });
        }
        Ok(())
    });
    // Each node's control socket.
    let mut sockets = Vec::new();
    for n in 0..NODES {
        let socket = dir.join(format!("node{n}.sock"));
        let listener = UnixListener::bind(&socket)?;
        sockets.push(socket);
        let upstream = if n == 0 {
            Upstream::Local(events.clone())
        } else {
            let s = TcpStream::connect(coordinator_addr)?;
            s.set_nodelay(true)?;
            Upstream::Tcp(s)
        };
        threads.push(std::thread::spawn(move || node(listener, upstream)));
    }
    drop(events);
    acceptor.join().map_err(|_| anyhow!("the acceptor panicked"))??;

    // The clients, as the cluster's append test runs them.
    let barrier = Barrier::new(NODES);
    let started = Instant::now();
    let counts: Vec<Result<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..NODES)
            .map(|i| {
                let (barrier, socket, block) = (&barrier, &sockets[i], &blocks[i]);
                s.spawn(move || -> Result<usize> {
                    let line = format!("append {} floor.log\n", block.display());
                    barrier.wait();
                    for _ in 0..each {
                        let mut c = UnixStream::connect(socket)?;
                        c.write_all(line.as_bytes())?;
                        c.shutdown(Shutdown::Write)?;
                        let mut answer = String::new();
                        c.read_to_string(&mut answer)?;
                        if !answer.starts_with("ok") {
                            bail!("node{i} answered `{}`", answer.trim());
                        }
                    }
                    Ok(each)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a client panicked")))).collect()
    });
    let wall = started.elapsed();
    // Stop: each node's acceptor ends on `quit`, closing its way to the coordinator, which then
    // ends, closing the replicas' connections.
    for socket in &sockets {
        let mut c = UnixStream::connect(socket)?;
        c.write_all(b"quit\n")?;
        c.shutdown(Shutdown::Write)?;
        let _ = c.read_to_end(&mut Vec::new());
    }
    for t in threads {
        t.join().map_err(|_| anyhow!("a floor thread panicked"))??;
    }
    let done: usize = counts.into_iter().collect::<Result<Vec<_>>>()?.iter().sum();
    Ok(done as f64 / wall.as_secs_f64().max(1e-9))
}

/// Where a node sends its client's writes.
enum Upstream {
    Local(mpsc::Sender<Event>),
    Tcp(TcpStream),
}

/// A node: one client connection at a time (its client is sequential).
fn node(listener: UnixListener, mut upstream: Upstream) -> Result<()> {
    let mut next_id = 0u64;
    let mut out = Vec::new();
    let mut inbuf = Vec::new();
    for conn in listener.incoming() {
        let mut conn = conn?;
        let mut line = String::new();
        conn.read_to_string(&mut line)?;
        let mut words = line.split_whitespace();
        match words.next() {
            Some("quit") => {
                match &upstream {
                    Upstream::Tcp(s) => s.shutdown(Shutdown::Write)?,
                    Upstream::Local(events) => {
                        let _ = events.send(Event::Closed);
                    }
                }
                conn.write_all(b"ok\n")?;
                return Ok(());
            }
            Some("append") => {}
            _ => {
                conn.write_all(b"error\nunknown command\n")?;
                continue;
            }
        }
        let path = words.next().context("append names no file")?;
        let data = std::fs::read(path)?;
        next_id += 1;
        match &mut upstream {
            Upstream::Local(events) => {
                let (done, wait) = mpsc::channel();
                events
                    .send(Event::Write { from: None, id: next_id, data, done: Some(done) })
                    .map_err(|_| anyhow!("the coordinator stopped"))?;
                wait.recv().map_err(|_| anyhow!("the coordinator stopped"))?;
            }
            Upstream::Tcp(s) => {
                out.clear();
                frame(next_id, &data, &mut out);
                s.write_all(&out)?;
                // The acknowledgement of this write (the only one outstanding).
                let mut chunk = [0u8; 64];
                loop {
                    if let Some((id, _)) = take_frames(&mut inbuf).pop() {
                        if id != next_id {
                            bail!("acknowledgement of {id}, expected {next_id}");
                        }
                        break;
                    }
                    match s.read(&mut chunk)? {
                        0 => bail!("the coordinator closed the connection"),
                        n => inbuf.extend_from_slice(&chunk[..n]),
                    }
                }
            }
        }
        conn.write_all(b"ok\n")?;
    }
    Ok(())
}

/// The coordinator's side of one connection: each frame, as `event` makes it, into the loop;
/// `ended` when the connection ends.
fn read_into(
    mut s: TcpStream,
    events: mpsc::Sender<Event>,
    event: impl Fn(u64, Vec<u8>) -> Event,
    ended: Event,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => {
                let _ = events.send(ended);
                return Ok(());
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        for (id, data) in take_frames(&mut buf) {
            if events.send(event(id, data)).is_err() {
                return Ok(());
            }
        }
    }
}

/// One write the coordinator waits on.
struct Waiting {
    from: Option<usize>,
    id: u64,
    acks: usize,
    synced: bool,
    done: Option<mpsc::Sender<()>>,
}

/// The coordinator's loop: takes every event waiting, stores and forwards the writes among them
/// (one write per replica), syncs once, and answers each write that is synced here and
/// acknowledged by both replicas.
fn coordinate(
    inbox: mpsc::Receiver<Event>,
    mut log: Log,
    mut replicas: Vec<TcpStream>,
    replies: mpsc::Receiver<(usize, TcpStream)>,
) -> Result<()> {
    let mut nodes: BTreeMap<usize, TcpStream> = BTreeMap::new();
    let mut waiting: BTreeMap<u64, Waiting> = BTreeMap::new();
    let mut next_seq = 0u64;
    let mut forward = Vec::new();
    let mut answers: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let mut closed = 0;
    while closed < NODES {
        let Ok(first) = inbox.recv() else { break };
        while let Ok((n, s)) = replies.try_recv() {
            nodes.insert(n, s);
        }
        forward.clear();
        let mut stored = Vec::new();
        let mut event = Some(first);
        while let Some(e) = event.take().or_else(|| inbox.try_recv().ok()) {
            match e {
                Event::Write { from, id, data, done } => {
                    next_seq += 1;
                    log.append(&data)?;
                    frame(next_seq, &data, &mut forward);
                    waiting.insert(next_seq, Waiting { from, id, acks: 0, synced: false, done });
                    stored.push(next_seq);
                }
                Event::Ack { id } => {
                    if let Some(w) = waiting.get_mut(&id) {
                        w.acks += 1;
                    }
                }
                Event::Closed => closed += 1,
                Event::ReplicaGone => bail!("a replica stopped before the clients were done"),
            }
        }
        if !forward.is_empty() {
            for r in &mut replicas {
                r.write_all(&forward)?;
            }
            log.file.sync_data()?;
            for seq in stored {
                if let Some(w) = waiting.get_mut(&seq) {
                    w.synced = true;
                }
            }
        }
        let ready: Vec<u64> =
            waiting.iter().filter(|(_, w)| w.synced && w.acks == REPLICAS.len()).map(|(s, _)| *s).collect();
        for seq in ready {
            let w = waiting.remove(&seq).expect("listed");
            match (w.from, w.done) {
                (None, Some(done)) => {
                    let _ = done.send(());
                }
                (Some(n), _) => frame(w.id, &[], answers.entry(n).or_default()),
                (None, None) => {}
            }
        }
        for (n, bytes) in &mut answers {
            if bytes.is_empty() {
                continue;
            }
            let s = nodes.get_mut(n).ok_or_else(|| anyhow!("no connection from node{n}"))?;
            s.write_all(bytes)?;
            bytes.clear();
        }
    }
    for r in &replicas {
        let _ = r.shutdown(Shutdown::Both);
    }
    Ok(())
}

/// A replica: stores every write its connection holds, syncs once, acknowledges them in one
/// write.
fn replica(listener: TcpListener, path: &Path) -> Result<()> {
    let (mut s, _) = listener.accept()?;
    s.set_nodelay(true)?;
    let mut log = Log::create(path)?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 256 << 10];
    let mut acks = Vec::new();
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let frames = take_frames(&mut buf);
        if frames.is_empty() {
            continue;
        }
        acks.clear();
        for (id, data) in &frames {
            log.append(data)?;
            frame(*id, &[], &mut acks);
        }
        log.file.sync_data()?;
        if s.write_all(&acks).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_are_taken_whole_and_in_order() {
        let mut bytes = Vec::new();
        frame(1, b"one", &mut bytes);
        frame(2, b"", &mut bytes);
        frame(3, &[7u8; 100], &mut bytes);
        let mut buf = bytes[..20].to_vec();
        let mut got = take_frames(&mut buf);
        buf.extend_from_slice(&bytes[20..]);
        got.extend(take_frames(&mut buf));
        assert!(buf.is_empty());
        assert_eq!(got, vec![(1, b"one".to_vec()), (2, vec![]), (3, vec![7u8; 100])]);
    }

    #[test]
    fn every_append_of_the_floor_is_answered() {
        let dir = std::env::temp_dir().join(format!("rainstorm-append-floor-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let blocks: Vec<PathBuf> = (0..NODES)
            .map(|i| {
                let p = dir.join(format!("block{i}"));
                std::fs::write(&p, vec![b'a' + i as u8; 4096]).unwrap();
                p
            })
            .collect();
        let rate = measure(&dir, &blocks, 5).unwrap();
        assert!(rate > 0.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
