//! Stream framing: each frame on a TCP connection is a 4-byte little-endian length followed by
//! that many bytes (an envelope frame, which carries its own checksum or tag).
//!
//! Invariants kept by [`read_frame`], whatever the peer sends:
//! * a frame's buffer is never larger than its announced length, and it is allocated whole
//!   when its header arrives only while the frames so allocated and still arriving hold at most
//!   [`UPFRONT_BYTES`] in the whole process ([`FrameBudget`]; a frame gives its share back
//!   when its read ends, however it ends). Past that, a buffer grows as its bytes arrive: its
//!   capacity starts at [`FIRST_CHUNK`] and at most doubles when it is full. So peers that
//!   announce large frames and stall cost at most [`UPFRONT_BYTES`] plus twice what they sent
//!   (at least [`FIRST_CHUNK`] a frame), not what they announced; and a frame that does arrive
//!   is read straight into its final buffer, not copied at each doubling (those copies cost a
//!   twentieth of a 1 GiB create's CPU);
//! * bytes are read into the buffer's spare capacity, never into zeroed memory first;
//! * a frame allocated whole, of at least [`crate::direct::LARGE`] bytes, is placed so that a
//!   keyed frame's payload ends at an [`crate::direct::ALIGN`]-aligned address: its bulk field
//!   (the payload's last, [`rainstorm_core::wire::Frame`]), when a whole number of blocks long,
//!   then starts at one too, and a download writes it to disk with direct I/O as it is, with no
//!   copy into an aligned buffer;
//! * a frame over the limit is never buffered: its bytes are read and discarded, which keeps the
//!   connection in step for the frames after it, and the reader reports it as
//!   [`Incoming::Oversized`];
//! * a frame must start (its whole header) within [`FrameLimits::idle`] and then arrive whole
//!   (or be skipped whole) within [`FrameLimits::body`]; otherwise the read fails with
//!   [`ReadError::Idle`] or [`ReadError::Body`] and the connection is to be closed.

use bytes::{BufMut, Bytes};
use rainstorm_core::wire::{VerifiedFrame, WireError};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What one read from a stream produced, as the node task receives it.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A frame as it arrived: the node checks and decodes it.
    Frame(Bytes),
    /// A large frame a checking thread verified ([`crate::streams::FrameChecks`]): the node
    /// decodes it without hashing it again.
    Verified(VerifiedFrame),
    /// A large frame a checking thread refused: the node only counts it.
    Refused(WireError),
    /// A frame of `len` bytes, over `limit`, was skipped.
    Oversized { len: usize, limit: usize },
}

/// Bytes read from a connection at a time, at most, into a buffer that grows.
pub const READ_CHUNK: usize = 64 * 1024;
/// Bytes of frames, over the whole process, that may be allocated whole when their header
/// arrives, rather than grown as their bytes do.
pub const UPFRONT_BYTES: usize = 32 << 20;

/// The process's share of frame buffers allocated whole ([`UPFRONT_BYTES`]).
static UPFRONT: FrameBudget = FrameBudget::new(UPFRONT_BYTES);

/// Bytes that frames being read may hold in buffers allocated whole.
#[derive(Debug)]
pub struct FrameBudget {
    taken: AtomicUsize,
    limit: usize,
}

impl FrameBudget {
    pub const fn new(limit: usize) -> FrameBudget {
        FrameBudget { taken: AtomicUsize::new(0), limit }
    }

    /// `len` bytes of the budget, if that many are free.
    fn take(&'static self, len: usize) -> Option<Share> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                t.checked_add(len).filter(|n| *n <= self.limit)
            })
            .ok()
            .map(|_| Share { budget: self, len })
    }

    /// Bytes taken now.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

/// A frame's share of a [`FrameBudget`], given back when dropped.
#[derive(Debug)]
struct Share {
    budget: &'static FrameBudget,
    len: usize,
}

impl Drop for Share {
    fn drop(&mut self) {
        let was = self.budget.taken.fetch_sub(self.len, Ordering::AcqRel);
        debug_assert!(was >= self.len, "a share is given back once");
    }
}
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
        let mut buf = FrameBuf::new(len, &UPFRONT);
        while !buf.is_whole() {
            let room = buf.room();
            let n = r.read_buf(&mut (&mut buf.buf).limit(room)).await?;
            got += n;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
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

/// A frame's bytes as they arrive: allocated whole if the budget has room for it; else with room
/// for at most [`READ_CHUNK`] more bytes at a time, the capacity starting at [`FIRST_CHUNK`],
/// at most doubling, and never past the frame's length.
struct FrameBuf {
    /// `start` bytes of padding, then the bytes that arrived; its spare capacity is the room for
    /// the next read.
    buf: Vec<u8>,
    /// Where the frame starts in `buf` (the padding that aligns a large frame's payload end).
    start: usize,
    len: usize,
    /// The budget's share this buffer holds, if it was allocated whole.
    whole: Option<Share>,
}

impl FrameBuf {
    fn new(len: usize, budget: &'static FrameBudget) -> FrameBuf {
        match (len > FIRST_CHUNK).then(|| budget.take(len)).flatten() {
            Some(share) if len >= crate::direct::LARGE => FrameBuf::aligned(len, share),
            Some(share) => FrameBuf { buf: Vec::with_capacity(len), start: 0, len, whole: Some(share) },
            None => FrameBuf::growing(len),
        }
    }

    /// A large frame's buffer, with room for a padding that puts a keyed frame's payload end
    /// (where a bulk field ends) at an aligned address.
    fn aligned(len: usize, share: Share) -> FrameBuf {
        let align = crate::direct::ALIGN as usize;
        let mut buf = Vec::with_capacity(len + align);
        let payload_end = buf.as_ptr() as usize + len.saturating_sub(rainstorm_core::wire::TAG_BYTES);
        let start = (align - payload_end % align) % align;
        buf.resize(start, 0);
        debug_assert!(buf.capacity() >= start + len, "the frame fits after its padding: no reallocation");
        FrameBuf { buf, start, len, whole: Some(share) }
    }

    fn growing(len: usize) -> FrameBuf {
        FrameBuf { buf: Vec::new(), start: 0, len, whole: None }
    }

    fn is_whole(&self) -> bool {
        self.buf.len() == self.start + self.len
    }

    /// Makes room for the next read and says how many bytes it may take (0 once whole).
    fn room(&mut self) -> usize {
        let (filled, end) = (self.buf.len(), self.start + self.len);
        if filled == self.buf.capacity() && filled < end {
            let target = (self.buf.capacity() * 2).max(FIRST_CHUNK).min(end);
            self.buf.reserve_exact(target - filled);
        }
        let room = (end - filled).min(self.buf.capacity() - filled);
        if self.whole.is_some() {
            room
        } else {
            room.min(READ_CHUNK)
        }
    }

    /// The frame's bytes: a view of the buffer past its padding (no copy).
    fn into_inner(self) -> Bytes {
        debug_assert!(
            self.buf.capacity() >= self.start + self.len && self.buf.len() <= self.start + self.len
        );
        Bytes::from(self.buf).slice(self.start..)
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
        assert_eq!(
            read_frame(&mut r, limits).await.unwrap().unwrap(),
            Incoming::Frame(Bytes::from_static(b"hello"))
        );
        assert_eq!(
            read_frame(&mut r, limits).await.unwrap().unwrap(),
            Incoming::Oversized { len: 100, limit: 50 }
        );
        assert_eq!(
            read_frame(&mut r, limits).await.unwrap().unwrap(),
            Incoming::Frame(Bytes::from_static(b"after"))
        );
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
    }

    /// A large frame is laid out so that a keyed frame's payload ends at an aligned address
    /// (where a bulk field of whole blocks then starts aligned), in a buffer at most one block
    /// larger than the frame; a smaller one is not padded.
    #[tokio::test]
    async fn a_large_frame_ends_its_payload_at_an_aligned_address() {
        let align = crate::direct::ALIGN as usize;
        for len in [crate::direct::LARGE, crate::direct::LARGE + 1, (1 << 20) + 77, 3 << 20] {
            let frame: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (mut w, mut r) = tokio::io::duplex(64 << 10);
            let sent = frame.clone();
            tokio::spawn(async move { write_frame(&mut w, &sent).await });
            let read = read_frame(&mut r, FrameLimits::new(4 << 20)).await.unwrap().unwrap();
            let Incoming::Frame(read) = read else { panic!("oversized") };
            assert_eq!(read, frame);
            let payload_end = read.as_ptr() as usize + len - rainstorm_core::wire::TAG_BYTES;
            assert_eq!(payload_end % align, 0, "{len} bytes");
            let buf = FrameBuf::new(len, &UPFRONT);
            assert!(buf.buf.capacity() <= len + align && buf.start < align, "{len} bytes");
        }
        let small = FrameBuf::new(crate::direct::LARGE - 1, &UPFRONT);
        assert_eq!((small.start, small.buf.capacity()), (0, crate::direct::LARGE - 1));
    }

    /// Past the budget, the buffer of a frame announced at 16 MiB holds what arrived plus at
    /// most as much again (at least the first chunk), and is offered at most one chunk per read.
    #[test]
    fn a_frame_buffer_grows_as_its_bytes_arrive() {
        const ANNOUNCED: usize = 16 << 20;
        static SMALL: FrameBudget = FrameBudget::new(ANNOUNCED - 1);
        let mut buf = FrameBuf::new(ANNOUNCED, &SMALL);
        assert!(buf.whole.is_none() && SMALL.taken() == 0, "a frame over the budget takes none of it");
        let mut arrived = 0;
        for piece in [1000, 1, READ_CHUNK, 7, 3 * READ_CHUNK, 100_000].into_iter().cycle() {
            let room = buf.room();
            assert!(room > 0 && room <= READ_CHUNK, "{room} offered");
            let n = piece.min(room);
            let capacity = buf.buf.capacity();
            buf.buf.extend(std::iter::repeat_n(arrived as u8, n));
            assert_eq!(buf.buf.capacity(), capacity, "the room was there");
            arrived += n;
            let capacity = buf.buf.capacity();
            assert!(capacity <= (2 * arrived).max(FIRST_CHUNK), "{capacity} for {arrived}");
            assert_eq!(buf.buf.len(), arrived);
            if buf.is_whole() {
                break;
            }
        }
        assert_eq!(arrived, ANNOUNCED);
        assert_eq!(buf.room(), 0);
        assert_eq!(buf.buf.capacity(), ANNOUNCED, "never past the announced length");
        assert_eq!(buf.into_inner().len(), ANNOUNCED);
    }

    /// Within the budget a frame's buffer is allocated whole and offered whole; its share is
    /// given back when the buffer goes, and frames beyond the budget grow instead.
    #[test]
    fn frames_within_the_budget_are_allocated_whole_and_give_their_share_back() {
        static BUDGET: FrameBudget = FrameBudget::new(3 << 20);
        let mut first = FrameBuf::new(2 << 20, &BUDGET);
        // Room for the frame, and for the padding that aligns its payload's end.
        assert!((2 << 20..=(2 << 20) + crate::direct::ALIGN as usize).contains(&first.buf.capacity()));
        assert_eq!(first.room(), 2 << 20, "one read may take the whole frame");
        assert_eq!(BUDGET.taken(), 2 << 20);
        let second = FrameBuf::new(2 << 20, &BUDGET);
        assert!(second.whole.is_none() && second.buf.capacity() == 0, "over the budget: grown");
        let small = FrameBuf::new(FIRST_CHUNK, &BUDGET);
        assert!(small.whole.is_none(), "a small frame takes no share");
        assert_eq!(BUDGET.taken(), 2 << 20);
        drop(first);
        assert_eq!(BUDGET.taken(), 0, "the share is given back");
        let third = FrameBuf::new(3 << 20, &BUDGET);
        assert!(third.whole.is_some());
        drop((second, third));
        assert_eq!(BUDGET.taken(), 0);
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
        assert_eq!(
            read_frame(&mut r, limits).await.unwrap().unwrap(),
            Incoming::Frame(Bytes::from(vec![3; 20]))
        );
    }
}
