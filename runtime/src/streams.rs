//! Stream connections, one per (peer, lane): the sending side ([`Writers`]: one writer task and
//! one TCP connection per peer and [`Lane`]), and the receiving side ([`accept`] reads every
//! connection into one bounded queue per lane, and [`LaneQueues::recv`] hands the node task
//! control frames before data frames before bulk frames).
//!
//! Why lanes: a HyDFS transfer is a stream of 1 MiB frames; on one connection a membership sync,
//! a HyDFS request or a RainStorm acknowledgement queued behind them waits for every byte in
//! front of it, in the sender's queue, in both kernels' buffers and in the receiver's queue.
//! With a connection and a queue per lane, a bulk backlog fills only the bulk connection and the
//! bulk queue, and slows only the bulk sender (through TCP), while control frames take their own
//! way and are served first.
//!
//! Invariants kept here:
//! * frames of one (peer, lane) are written in the order they were given, on one connection at
//!   a time (reconnecting after a failure), and read in that order; the frames waiting together
//!   are written with one system call;
//! * at most [`STREAM_QUEUE_FRAMES`] received frames wait per lane: a reader whose lane's queue
//!   is full stops reading its connection, so TCP slows that sender and nothing else;
//! * [`LaneQueues::recv`] never returns a frame of a lane while a frame of an earlier lane
//!   ([`Lane::ALL`] order) is waiting;
//! * frames that cannot be written are reported to the node task as [`Input::SendFailed`], once
//!   per failed write.

use crate::driver::Input;
use crate::net::{read_frame, Incoming};
use rainstorm_core::wire::frame_lane;
use rainstorm_core::Lane;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// How long a stream connection attempt may take before the send counts as failed.
const STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one frame may take to write before the connection counts as broken.
const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A peer connection with nothing to send for this long is closed.
const STREAM_IDLE: Duration = Duration::from_secs(60);
/// Received stream frames waiting for the node task, per lane (each at most one chunk plus
/// headers).
pub const STREAM_QUEUE_FRAMES: usize = 8;

/// The sending side: one writer task per (peer, lane) that frames were sent to recently.
pub struct Writers {
    peers: BTreeMap<(SocketAddr, Lane), mpsc::UnboundedSender<Vec<u8>>>,
    /// Where writers report frames they could not write.
    failures: mpsc::Sender<Input>,
}

impl Writers {
    pub fn new(failures: mpsc::Sender<Input>) -> Writers {
        Writers { peers: BTreeMap::new(), failures }
    }

    /// Queues `frame` for `to` on `lane`'s connection, starting its writer if there is none.
    pub fn send(&mut self, to: SocketAddr, lane: Lane, mut frame: Vec<u8>) {
        if let Some(writer) = self.peers.get(&(to, lane)) {
            match writer.send(frame) {
                Ok(()) => return,
                Err(mpsc::error::SendError(f)) => frame = f, // the writer closed: start another
            }
        }
        let (writer, rx) = mpsc::unbounded_channel();
        let _ = writer.send(frame);
        self.peers.insert((to, lane), writer);
        tokio::spawn(peer_writer(to, lane, rx, self.failures.clone()));
    }
}

/// Writes frames to one peer on one lane over one TCP connection, reconnecting after a failure.
/// The frames waiting when the writer wakes go out together, length-prefixed in one buffer and
/// one write (up to [`COALESCE_BYTES`]), so a burst of small messages costs one system call and
/// one TCP segment, not two of each per frame. Frames that cannot be written are reported as a
/// failed send; the node's own timeouts and retries recover.
async fn peer_writer(
    to: SocketAddr,
    lane: Lane,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    failures: mpsc::Sender<Input>,
) {
    let mut conn: Option<TcpStream> = None;
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout(STREAM_IDLE, rx.recv()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(_) if conn.is_some() => {
                conn = None; // idle: close the connection, keep the writer
                continue;
            }
            Err(_) => {
                // Idle without a connection: stop, after sending anything that raced in.
                rx.close();
                while let Ok(frame) = rx.try_recv() {
                    write_one(to, lane, &mut conn, &frame, &failures).await;
                }
                return;
            }
        };
        out.clear();
        push_frame(&mut out, &frame);
        while out.len() < COALESCE_BYTES {
            let Ok(frame) = rx.try_recv() else { break };
            push_frame(&mut out, &frame);
        }
        write_framed(to, lane, &mut conn, &out, &failures).await;
        if out.capacity() > 2 * COALESCE_BYTES {
            out = Vec::new(); // a large frame passed: do not keep its buffer
        }
    }
}

/// Bytes of frames gathered into one write, at most (a larger frame goes alone).
const COALESCE_BYTES: usize = 256 * 1024;

/// Appends `frame` with its length prefix, as [`crate::net::write_frame`] writes it. Frames are bounded far
/// below 4 GiB by the node's limits; a longer one is not written (the receiver would refuse it).
fn push_frame(out: &mut Vec<u8>, frame: &[u8]) {
    let Ok(len) = u32::try_from(frame.len()) else {
        warn!(len = frame.len(), "a stream frame of 4 GiB or more was not sent");
        return;
    };
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(frame);
}

/// Writes one frame (see [`write_framed`]).
pub(crate) async fn write_one(
    to: SocketAddr,
    lane: Lane,
    conn: &mut Option<TcpStream>,
    frame: &[u8],
    failures: &mpsc::Sender<Input>,
) {
    let mut out = Vec::with_capacity(frame.len() + 4);
    push_frame(&mut out, frame);
    write_framed(to, lane, conn, &out, failures).await;
}

/// Writes `framed` (length-prefixed frames) on the connection, connecting first if there is
/// none; a failure closes the connection and is reported once.
async fn write_framed(
    to: SocketAddr,
    lane: Lane,
    conn: &mut Option<TcpStream>,
    framed: &[u8],
    failures: &mpsc::Sender<Input>,
) {
    if framed.is_empty() {
        return;
    }
    // A peer that restarted closed our old connection: its kernel answered with FIN/RST. A
    // frame written into such a socket is accepted locally and lost, so check first and
    // reconnect (the peer never writes on this connection, so any readable state means closed).
    if let Some(stream) = conn.as_ref() {
        let mut probe = [0u8; 1];
        match stream.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => *conn = None,
        }
    }
    let result = async {
        if conn.is_none() {
            let stream = tokio::time::timeout(STREAM_CONNECT_TIMEOUT, TcpStream::connect(to))
                .await
                .map_err(|_| format!("connecting to {to} timed out"))?
                .map_err(|e| format!("cannot connect to {to}: {e}"))?;
            let _ = stream.set_nodelay(true);
            *conn = Some(stream);
        }
        let stream = conn.as_mut().expect("connected above");
        let write = async {
            stream.write_all(framed).await?;
            stream.flush().await
        };
        match tokio::time::timeout(STREAM_WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("sending to {to}: {e}")),
            Err(_) => Err(format!("sending to {to} timed out")),
        }
    }
    .await;
    if let Err(error) = result {
        *conn = None;
        debug!(%to, %lane, %error, "stream send failed");
        let _ = failures.send(Input::SendFailed { to, error }).await;
    }
}

/// The receiving side's ends of the lane queues, one per lane.
#[derive(Clone)]
pub struct LaneSenders {
    lanes: [mpsc::Sender<Incoming>; Lane::ALL.len()],
}

/// The node task's ends of the lane queues.
pub struct LaneQueues {
    lanes: [mpsc::Receiver<Incoming>; Lane::ALL.len()],
}

/// One bounded queue of `capacity` frames per lane.
pub fn lane_queues(capacity: usize) -> (LaneSenders, LaneQueues) {
    let [(c_tx, c_rx), (d_tx, d_rx), (b_tx, b_rx)] = Lane::ALL.map(|_| mpsc::channel(capacity));
    (LaneSenders { lanes: [c_tx, d_tx, b_tx] }, LaneQueues { lanes: [c_rx, d_rx, b_rx] })
}

impl LaneSenders {
    /// Queues a received frame on `lane`, waiting while that lane's queue is full. `false`
    /// once the node task is gone.
    pub async fn send(&self, lane: Lane, incoming: Incoming) -> bool {
        self.lanes[lane.index()].send(incoming).await.is_ok()
    }
}

impl LaneQueues {
    /// The next received frame and its lane: a control frame if one waits, else a data frame,
    /// else a bulk frame; waits for the first to come if none does. `None` when every reader
    /// is gone. Cancel-safe (a frame is taken only when it is returned).
    pub async fn recv(&mut self) -> Option<(Lane, Incoming)> {
        let [control, data, bulk] = &mut self.lanes;
        tokio::select! {
            biased;
            Some(frame) = control.recv() => Some((Lane::Control, frame)),
            Some(frame) = data.recv() => Some((Lane::Data, frame)),
            Some(frame) = bulk.recv() => Some((Lane::Bulk, frame)),
            else => None,
        }
    }

    /// Frames waiting on `lane`.
    pub fn waiting(&self, lane: Lane) -> usize {
        self.lanes[lane.index()].len()
    }
}

/// Accepts stream connections and reads each one, queueing every frame on the lane its header
/// names ([`frame_lane`]). A frame whose header names no lane is not a frame of this version:
/// it goes to the bulk queue, served last, and the node refuses it with its cause. A frame over
/// `limit` is skipped unread and reported on the control queue (only a counter moves).
pub async fn accept(listener: TcpListener, lanes: LaneSenders, limit: usize) {
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let lanes = lanes.clone();
        tokio::spawn(async move {
            loop {
                match read_frame(&mut stream, limit).await {
                    Ok(Some(incoming)) => {
                        let lane = match &incoming {
                            Incoming::Frame(frame) => frame_lane(frame).unwrap_or(Lane::Bulk),
                            Incoming::Oversized { len, limit } => {
                                warn!(%peer, len, limit, "stream frame over the limit (limits.stream_frame_bytes) dropped");
                                Lane::Control
                            }
                        };
                        if !lanes.send(lane, incoming).await {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        debug!(%peer, error = %e, "stream closed");
                        return;
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rainstorm_core::wire::Codec;

    /// A peer that restarts on the same address closes our old connection: the next frame must
    /// reach the new process, not vanish into the closed socket.
    #[tokio::test]
    async fn a_frame_after_the_peer_restarted_reaches_the_new_process() {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = first.local_addr().unwrap();
        let (tx, mut failures) = mpsc::channel(8);
        let mut conn = None;
        write_one(to, Lane::Control, &mut conn, b"one", &tx).await;
        let (mut accepted, _) = first.accept().await.unwrap();
        assert_eq!(read_frame(&mut accepted, 64).await.unwrap().unwrap(), Incoming::Frame(b"one".to_vec()));
        // The peer process dies: its sockets close.
        drop(accepted);
        drop(first);
        let second = TcpListener::bind(to).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        write_one(to, Lane::Control, &mut conn, b"two", &tx).await;
        let (mut accepted, _) = tokio::time::timeout(Duration::from_secs(5), second.accept())
            .await
            .expect("reconnected")
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut accepted, 64)).await;
        assert_eq!(frame.expect("frame arrives").unwrap().unwrap(), Incoming::Frame(b"two".to_vec()));
        assert!(failures.try_recv().is_err(), "nothing was reported lost");
    }

    /// A burst of frames, small and larger than one coalesced write, reaches the peer whole and
    /// in order.
    #[tokio::test]
    async fn a_burst_of_frames_arrives_whole_and_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let (tx, mut failures) = mpsc::channel(8);
        let mut writers = Writers::new(tx);
        let sizes: Vec<usize> =
            (0..600).map(|i| if i % 97 == 0 { COALESCE_BYTES + 3 } else { 1 + i * 7 % 900 }).collect();
        for (i, len) in sizes.iter().enumerate() {
            let mut frame = vec![(i % 251) as u8; *len];
            frame[0] = (i % 256) as u8;
            writers.send(to, Lane::Data, frame);
        }
        let (mut accepted, _) = listener.accept().await.unwrap();
        for (i, len) in sizes.iter().enumerate() {
            let read = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut accepted, 1 << 20)).await;
            let Incoming::Frame(frame) = read.expect("in time").unwrap().expect("a frame") else {
                panic!("frame {i} over the limit")
            };
            assert_eq!((frame.len(), frame[0]), (*len, (i % 256) as u8), "frame {i}");
            assert!(frame[1..].iter().all(|b| *b == (i % 251) as u8), "frame {i}'s bytes");
        }
        assert!(failures.try_recv().is_err(), "nothing was reported lost");
    }

    /// A frame on `lane` whose payload says which one it is (valid header, payload not an
    /// envelope: routing needs only the header).
    fn frame(lane: Lane, n: u32, len: usize) -> Vec<u8> {
        let mut payload = vec![0u8; len.max(4)];
        payload[..4].copy_from_slice(&n.to_le_bytes());
        Codec::plain().frame_raw(lane, &payload)
    }

    /// Waits until `done` holds; a test that never gets there fails instead of hanging.
    async fn until(done: impl Fn() -> bool, what: &str) {
        for _ in 0..12_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{what}: never happened");
    }

    fn number(incoming: &Incoming) -> u32 {
        let Incoming::Frame(f) = incoming else { panic!("an oversized frame") };
        let payload = &f[9..];
        u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]])
    }

    /// With a backlog of bulk frames to a peer filling every buffer on the way (the sender's
    /// queue, both kernels, the receiver's bulk queue), a control frame sent after them is the
    /// first frame the node task takes, and the bulk frames then follow complete and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_control_frame_overtakes_a_backlog_of_bulk_frames_to_the_same_peer() {
        const BULK_FRAMES: u32 = 96;
        const BULK_BYTES: usize = 512 * 1024;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let (senders, mut queues) = lane_queues(STREAM_QUEUE_FRAMES);
        tokio::spawn(accept(listener, senders, 1 << 20));
        let (failures, mut failed) = mpsc::channel(8);
        let mut writers = Writers::new(failures);
        for n in 0..BULK_FRAMES {
            writers.send(to, Lane::Bulk, frame(Lane::Bulk, n, BULK_BYTES));
        }
        // Wait (nothing is taken) until the bulk queue is full: the backlog is in place.
        until(|| queues.waiting(Lane::Bulk) == STREAM_QUEUE_FRAMES, "the bulk queue fills").await;
        writers.send(to, Lane::Control, frame(Lane::Control, 7, 16));
        until(|| queues.waiting(Lane::Control) == 1, "the control frame arrives").await;
        let (lane, first) = queues.recv().await.expect("a frame");
        assert_eq!((lane, number(&first)), (Lane::Control, 7), "the control frame comes first");
        let mut bulk = Vec::new();
        while bulk.len() < BULK_FRAMES as usize {
            let (lane, incoming) = queues.recv().await.expect("a frame");
            assert_eq!(lane, Lane::Bulk);
            bulk.push(number(&incoming));
        }
        assert_eq!(bulk, (0..BULK_FRAMES).collect::<Vec<_>>(), "the bulk frames arrive whole and in order");
        assert!(failed.try_recv().is_err(), "no send failed");
    }

    #[tokio::test]
    async fn a_waiting_control_frame_is_taken_before_waiting_data_and_bulk_frames() {
        let (senders, mut queues) = lane_queues(4);
        for lane in [Lane::Bulk, Lane::Data, Lane::Bulk, Lane::Control, Lane::Data] {
            assert!(senders.send(lane, Incoming::Frame(frame(lane, 0, 4))).await);
        }
        let mut order = Vec::new();
        for _ in 0..5 {
            order.push(queues.recv().await.expect("a frame").0);
        }
        assert_eq!(order, [Lane::Control, Lane::Data, Lane::Data, Lane::Bulk, Lane::Bulk]);
        drop(senders);
        assert!(queues.recv().await.is_none(), "no reader is left");
    }
}
