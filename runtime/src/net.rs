//! Stream framing: each frame on a TCP connection is a 4-byte little-endian length followed by
//! that many bytes (an envelope frame, which carries its own checksum or tag).
//!
//! Invariants kept by [`read_frame`], whatever the peer sends:
//! * a frame's buffer grows as its bytes arrive: its capacity starts at [`FIRST_CHUNK`], at most
//!   doubles when it is full, and never passes the announced length, so a peer that announces a
//!   large frame and stalls costs at most twice what it sent (at least [`FIRST_CHUNK`]), not
//!   what it announced;
//! * a frame over the limit is never buffered: its bytes are read and discarded, which keeps the
//!   connection in step for the frames after it, and the reader reports it as
//!   [`Incoming::Oversized`];
//! * a frame must start (its whole header) within [`FrameLimits::idle`] and then arrive whole
//!   (or be skipped whole) within [`FrameLimits::body`]; otherwise the read fails with
//!   [`ReadError::Idle`] or [`ReadError::Body`] and the connection is to be closed.

use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What one read from a stream produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Frame(Vec<u8>),
    /// A frame of `len` bytes, over `limit`, was skipped.
    Oversized {
        len: usize,
        limit: usize,
    },
}

/// Bytes read from a connection at a time, at most.
pub const READ_CHUNK: usize = 64 * 1024;
/// A frame's buffer starts this large (or as large as the frame, if smaller), and then doubles
/// as it fills.
pub const FIRST_CHUNK: usize = 4 * 1024;

/// How long a connection may wait before a frame starts, by default. Longer than a peer's
/// writer keeps an idle connection open (60 s), so a healthy peer closes its idle connections
/// first.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a started frame may take to arrive whole, by default (a peer's writer gives up on a
/// write after 30 s).
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// The bounds one frame read keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// The largest frame accepted, in bytes.
    pub max_bytes: usize,
    /// How long the reader waits for the next frame's 4-byte header.
    pub idle: Duration,
    /// How long a frame may take to arrive whole once its header has.
    pub body: Duration,
}

impl FrameLimits {
    /// Frames of at most `max_bytes`, with the default timeouts.
    pub fn new(max_bytes: usize) -> FrameLimits {
        FrameLimits { max_bytes, idle: DEFAULT_IDLE_TIMEOUT, body: DEFAULT_FRAME_TIMEOUT }
    }
}

/// Why a frame could not be read. Each ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// No frame started within the idle timeout.
    #[error("no frame started within {0:?} (limits.stream_idle_timeout_s)")]
    Idle(Duration),
    /// A frame's header arrived but not all of its body within the frame timeout.
    #[error(
        "a frame of {len} bytes did not arrive whole within {within:?} ({got} bytes came; \
         limits.stream_frame_timeout_s)"
    )]
    Body { len: usize, got: usize, within: Duration },
}

/// Reads one frame; `Ok(None)` at a clean end of stream (or one inside a header).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: FrameLimits,
) -> Result<Option<Incoming>, ReadError> {
    let mut len = [0u8; 4];
    match tokio::time::timeout(limits.idle, r.read_exact(&mut len)).await {
        Err(_) => return Err(ReadError::Idle(limits.idle)),
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(Err(e)) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    let mut got = 0;
    let body = async {
        if len > limits.max_bytes {
            let mut scratch = vec![0u8; READ_CHUNK.min(len)];
            while got < len {
                let want = (len - got).min(scratch.len());
                match r.read(&mut scratch[..want]).await? {
                    0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                    n => got += n,
                }
            }
            return Ok(Incoming::Oversized { len, limit: limits.max_bytes });
        }
        let mut buf = FrameBuf::new(len);
        while !buf.is_whole() {
            let n = r.read(buf.spare()).await?;
            got += n;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            buf.filled(n);
        }
        Ok(Incoming::Frame(buf.into_inner()))
    };
    let read = tokio::time::timeout(limits.body, body).await;
    match read {
        Ok(Ok(incoming)) => Ok(Some(incoming)),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ReadError::Body { len, got, within: limits.body }),
    }
}

/// A frame's bytes as they arrive: room for at most [`READ_CHUNK`] more bytes at a time, the
/// capacity starting at [`FIRST_CHUNK`], at most doubling, and never past the frame's length.
struct FrameBuf {
    /// The bytes that arrived, then (during a read) the room offered for more.
    buf: Vec<u8>,
    /// Bytes that arrived.
    filled: usize,
    len: usize,
}

impl FrameBuf {
    fn new(len: usize) -> FrameBuf {
        FrameBuf { buf: Vec::new(), filled: 0, len }
    }

    fn is_whole(&self) -> bool {
        self.filled == self.len
    }

    /// Room for the next read (empty once the frame is whole).
    fn spare(&mut self) -> &mut [u8] {
        self.buf.truncate(self.filled);
        if self.filled == self.buf.capacity() && self.filled < self.len {
            let target = (self.buf.capacity() * 2).max(FIRST_CHUNK).min(self.len);
            self.buf.reserve_exact(target - self.filled);
        }
        let want = (self.len - self.filled).min(READ_CHUNK).min(self.buf.capacity() - self.filled);
        self.buf.resize(self.filled + want, 0);
        &mut self.buf[self.filled..]
    }

    /// `n` bytes of the last [`FrameBuf::spare`] were filled.
    fn filled(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.len());
        self.buf.truncate(self.filled);
    }

    fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> io::Result<()> {
    let len = u32::try_from(frame.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame larger than 4 GiB"))?;
    w.write_all(&len.to_le_bytes()).await?;
    w.write_all(frame).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_skipped() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.unwrap();
        write_frame(&mut buf, &[7u8; 100]).await.unwrap();
        write_frame(&mut buf, b"after").await.unwrap();
        let limits = FrameLimits::new(50);
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r, limits).await.unwrap().unwrap(), Incoming::Frame(b"hello".to_vec()));
        assert_eq!(
            read_frame(&mut r, limits).await.unwrap().unwrap(),
            Incoming::Oversized { len: 100, limit: 50 }
        );
        assert_eq!(read_frame(&mut r, limits).await.unwrap().unwrap(), Incoming::Frame(b"after".to_vec()));
        assert!(read_frame(&mut r, limits).await.unwrap().is_none());
        // A frame cut short while it is skipped is an error, not a frame.
        let mut short = Vec::new();
        write_frame(&mut short, &[1u8; 100]).await.unwrap();
        let mut r = &short[..60];
        let e = read_frame(&mut r, limits).await.unwrap_err();
        assert!(matches!(&e, ReadError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof), "{e}");
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, limits).await.unwrap().is_none());
    }

    /// A frame larger than many chunks, arriving in pieces, is read whole and exactly.
    #[tokio::test]
    async fn a_frame_of_many_chunks_is_read_whole() {
        let frame: Vec<u8> = (0..5 * READ_CHUNK + 123).map(|i| (i % 251) as u8).collect();
        let (mut w, mut r) = tokio::io::duplex(10_000);
        let sent = frame.clone();
        tokio::spawn(async move { write_frame(&mut w, &sent).await });
        let read = read_frame(&mut r, FrameLimits::new(1 << 20)).await.unwrap().unwrap();
        let Incoming::Frame(read) = read else { panic!("oversized") };
        assert_eq!(read, frame);
        assert_eq!(read.capacity(), frame.len(), "the buffer never outgrows the frame");
    }

    /// The buffer of a frame announced at 16 MiB holds what arrived plus at most as much again
    /// (at least the first chunk), and is offered at most one chunk per read.
    #[test]
    fn a_frame_buffer_grows_as_its_bytes_arrive() {
        const ANNOUNCED: usize = 16 << 20;
        let mut buf = FrameBuf::new(ANNOUNCED);
        let mut arrived = 0;
        for piece in [1000, 1, READ_CHUNK, 7, 3 * READ_CHUNK, 100_000].into_iter().cycle() {
            let spare = buf.spare();
            assert!(!spare.is_empty() && spare.len() <= READ_CHUNK, "{} offered", spare.len());
            let n = piece.min(spare.len());
            spare[..n].fill(arrived as u8);
            buf.filled(n);
            arrived += n;
            let capacity = buf.buf.capacity();
            assert!(capacity <= (2 * arrived).max(FIRST_CHUNK), "{capacity} for {arrived}");
            assert_eq!(buf.buf.len(), arrived);
            if buf.is_whole() {
                break;
            }
        }
        assert_eq!(arrived, ANNOUNCED);
        assert!(buf.spare().is_empty());
        assert_eq!(buf.into_inner().capacity(), ANNOUNCED, "never past the announced length");
    }

    /// A connection that starts no frame is given up after the idle timeout; one that sends a
    /// header and then too little of the body, after the frame timeout.
    #[tokio::test]
    async fn idle_and_stalled_connections_time_out() {
        const IDLE: Duration = Duration::from_millis(400);
        const BODY: Duration = Duration::from_millis(200);
        let limits = FrameLimits { max_bytes: 1 << 20, idle: IDLE, body: BODY };
        let (_w, mut r) = tokio::io::duplex(1024);
        let started = std::time::Instant::now();
        let e = read_frame(&mut r, limits).await.unwrap_err();
        assert!(matches!(e, ReadError::Idle(_)), "{e}");
        assert!((IDLE..IDLE * 5).contains(&started.elapsed()), "{:?}", started.elapsed());
        assert!(e.to_string().contains("limits.stream_idle_timeout_s"), "{e}");

        // Half a header is no frame started.
        let (mut w, mut r) = tokio::io::duplex(1024);
        w.write_all(&[1, 0]).await.unwrap();
        assert!(matches!(read_frame(&mut r, limits).await.unwrap_err(), ReadError::Idle(_)));

        let (mut w, mut r) = tokio::io::duplex(1024);
        w.write_all(&1000u32.to_le_bytes()).await.unwrap();
        w.write_all(&[1u8; 10]).await.unwrap();
        let started = std::time::Instant::now();
        let e = read_frame(&mut r, limits).await.unwrap_err();
        assert!(matches!(e, ReadError::Body { len: 1000, got: 10, .. }), "{e}");
        assert!((BODY..IDLE).contains(&started.elapsed()), "{:?}", started.elapsed());
        assert!(e.to_string().contains("limits.stream_frame_timeout_s"), "{e}");

        // Skipping an oversized frame is bounded the same way.
        let (mut w, mut r) = tokio::io::duplex(1024);
        w.write_all(&(2u32 << 20).to_le_bytes()).await.unwrap();
        let e = read_frame(&mut r, limits).await.unwrap_err();
        assert!(matches!(e, ReadError::Body { len, .. } if len == 2 << 20), "{e}");

        // A frame whose bytes drip in, each within the idle timeout but not all within the frame
        // timeout, is given up: the frame timeout bounds the whole frame.
        let (mut w, mut r) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            w.write_all(&20u32.to_le_bytes()).await?;
            for _ in 0..20 {
                tokio::time::sleep(BODY / 8).await;
                w.write_all(&[3]).await?;
            }
            Ok::<_, io::Error>(())
        });
        let e = read_frame(&mut r, limits).await.unwrap_err();
        assert!(matches!(e, ReadError::Body { len: 20, .. }), "{e}");
        drop(r);
        let _ = writer.await;

        // One that arrives in time is read, however it is cut up.
        let (mut w, mut r) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            w.write_all(&20u32.to_le_bytes()).await?;
            for _ in 0..4 {
                tokio::time::sleep(BODY / 10).await;
                w.write_all(&[3; 5]).await?;
            }
            Ok::<_, io::Error>(w)
        });
        assert_eq!(read_frame(&mut r, limits).await.unwrap().unwrap(), Incoming::Frame(vec![3; 20]));
    }
}
