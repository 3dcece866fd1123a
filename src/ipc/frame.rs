//! Length-prefixed postcard frames over a Unix byte stream: the bus between primary and workers.
//!
//! A frame is `[len: u32 little-endian][postcard body]`. Frames are decoded in place (payloads
//! borrow from the read buffer), so relaying a 1 MB broadcast costs one copy into the outgoing
//! frame and none on the way in. A stream keeps the order of the frames written to it, which is
//! what gives the bus its per-publisher ordering.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::IpcError;

/// Largest frame accepted on the bus (128 MiB). A bigger adapter message is refused at the
/// sender with an error instead of being cut.
pub const MAX_FRAME: usize = 128 * 1024 * 1024;

/// Encodes `msg` as one frame (length prefix included), ready to be written or shared.
pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes, IpcError> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u32_le(0);
    let mut w = buf.writer();
    postcard::to_io(msg, &mut w).map_err(IpcError::Encode)?;
    let mut buf = w.into_inner();
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(IpcError::TooLarge(len));
    }
    buf[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(buf.freeze())
}

/// Reads frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a reader (use a `BufReader` around sockets to batch small frames).
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
        }
    }

    /// Reads the next raw frame body; `Ok(None)` on a clean end of stream between frames.
    pub async fn next_raw(&mut self) -> Result<Option<&[u8]>, IpcError> {
        let mut len = [0u8; 4];
        match self.inner.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(IpcError::Socket("read frame", e)),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(IpcError::TooLarge(len));
        }
        self.buf.clear();
        self.buf.resize(len, 0);
        self.inner
            .read_exact(&mut self.buf)
            .await
            .map_err(|e| IpcError::Socket("read frame body", e))?;
        // Do not keep a huge buffer around after one large frame.
        if self.buf.capacity() > 4 * 1024 * 1024 && len < 64 * 1024 {
            self.buf.shrink_to(64 * 1024);
        }
        Ok(Some(&self.buf))
    }

    /// Reads and decodes the next frame, borrowing from the reader's buffer.
    pub async fn next<'a, T: Deserialize<'a>>(&'a mut self) -> Result<Option<T>, IpcError> {
        match self.next_raw().await? {
            None => Ok(None),
            Some(raw) => postcard::from_bytes(raw)
                .map(Some)
                .map_err(IpcError::Decode),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Msg<'a> {
        chan: &'a str,
        #[serde(with = "serde_bytes")]
        payload: &'a [u8],
    }

    #[tokio::test]
    async fn frames_round_trip_in_order() {
        let (mut a, b) = tokio::net::UnixStream::pair().unwrap();
        let big = vec![7u8; 1_500_000];
        let frames = vec![
            encode(&Msg {
                chan: "one",
                payload: b"x",
            })
            .unwrap(),
            encode(&Msg {
                chan: "two",
                payload: &big,
            })
            .unwrap(),
            encode(&Msg {
                chan: "three",
                payload: b"",
            })
            .unwrap(),
        ];
        let writer = tokio::spawn(async move {
            for f in frames {
                a.write_all(&f).await.unwrap();
            }
        });
        let mut r = FrameReader::new(tokio::io::BufReader::new(b));
        let m: Msg = r.next().await.unwrap().unwrap();
        assert_eq!(
            m,
            Msg {
                chan: "one",
                payload: b"x"
            }
        );
        let m: Msg = r.next().await.unwrap().unwrap();
        assert_eq!(m.chan, "two");
        assert_eq!(m.payload.len(), big.len());
        assert!(m.payload.iter().all(|b| *b == 7));
        let m: Msg = r.next().await.unwrap().unwrap();
        assert_eq!(m.chan, "three");
        writer.await.unwrap();
        assert!(r.next::<Msg>().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_length_is_an_error() {
        let (mut a, b) = tokio::net::UnixStream::pair().unwrap();
        a.write_all(&(u32::MAX).to_le_bytes()).await.unwrap();
        let mut r = FrameReader::new(b);
        assert!(matches!(r.next_raw().await, Err(IpcError::TooLarge(_))));
    }
}
