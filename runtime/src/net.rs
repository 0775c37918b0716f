//! Stream framing: each frame on a TCP connection is a 4-byte little-endian length followed by
//! that many bytes (an envelope frame, which carries its own checksum or tag). A frame over the
//! limit is never allocated: its bytes are read and discarded, which keeps the connection in step
//! for the frames after it, and the reader reports it as [`Incoming::Oversized`].

use std::io;
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

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> io::Result<Option<Incoming>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        let skipped = tokio::io::copy(&mut (&mut *r).take(len as u64), &mut tokio::io::sink()).await?;
        if skipped < len as u64 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        return Ok(Some(Incoming::Oversized { len, limit }));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(Incoming::Frame(buf)))
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

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_skipped() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.unwrap();
        write_frame(&mut buf, &[7u8; 100]).await.unwrap();
        write_frame(&mut buf, b"after").await.unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r, 50).await.unwrap().unwrap(), Incoming::Frame(b"hello".to_vec()));
        assert_eq!(
            read_frame(&mut r, 50).await.unwrap().unwrap(),
            Incoming::Oversized { len: 100, limit: 50 }
        );
        assert_eq!(read_frame(&mut r, 50).await.unwrap().unwrap(), Incoming::Frame(b"after".to_vec()));
        assert!(read_frame(&mut r, 50).await.unwrap().is_none());
        // A frame cut short while it is skipped is an error, not a frame.
        let mut short = Vec::new();
        write_frame(&mut short, &[1u8; 100]).await.unwrap();
        let mut r = &short[..60];
        assert_eq!(read_frame(&mut r, 50).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 10).await.unwrap().is_none());
    }
}
