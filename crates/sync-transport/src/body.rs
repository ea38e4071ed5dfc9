//! Reading frames and raw bytes from a streaming HTTP body, shared by the server (blob
//! uploads) and the HTTP client (blob downloads).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http_body_util::BodyExt;
use hyper::body::Body;

use crate::frame::{self, FrameError, HEADER_BYTES, Header};

/// Why reading from a body failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The body ended early.
    Eof { needed: usize, got: usize },
    /// No bytes arrived within the idle limit.
    Idle,
    /// The body failed.
    Body(String),
    /// The frame header or body is bad.
    Frame(FrameError),
}

/// A body read in pieces: first exact byte counts (a frame), then the rest as a stream.
pub(crate) struct BodyReader<B> {
    body: B,
    leftover: Bytes,
    idle: Duration,
}

impl<B> BodyReader<B>
where
    B: Body<Data = Bytes> + Unpin + Send,
    B::Error: std::fmt::Display,
{
    pub(crate) fn new(body: B, idle: Duration) -> Self {
        Self {
            body,
            leftover: Bytes::new(),
            idle,
        }
    }

    async fn chunk(&mut self) -> Result<Option<Bytes>, ReadError> {
        if !self.leftover.is_empty() {
            return Ok(Some(std::mem::take(&mut self.leftover)));
        }
        loop {
            let next = tokio::time::timeout(self.idle, self.body.frame())
                .await
                .map_err(|_| ReadError::Idle)?;
            match next {
                None => return Ok(None),
                Some(Err(e)) => return Err(ReadError::Body(e.to_string())),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data()
                        && !data.is_empty()
                    {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    async fn read_exact(&mut self, n: usize, into: &mut BytesMut) -> Result<(), ReadError> {
        let start = into.len();
        while into.len() - start < n {
            let want = n - (into.len() - start);
            let Some(mut c) = self.chunk().await? else {
                return Err(ReadError::Eof {
                    needed: n,
                    got: into.len() - start,
                });
            };
            if c.len() > want {
                self.leftover = c.split_off(want);
            }
            into.extend_from_slice(&c);
        }
        Ok(())
    }

    /// Reads one complete frame (header checked before the body is read).
    pub(crate) async fn read_frame(&mut self, frame_bytes_max: usize) -> Result<Bytes, ReadError> {
        let mut buf = BytesMut::with_capacity(HEADER_BYTES);
        self.read_exact(HEADER_BYTES, &mut buf).await?;
        let header = Header::decode(&buf, frame_bytes_max).map_err(ReadError::Frame)?;
        buf.reserve(header.body_len as usize);
        self.read_exact(header.body_len as usize, &mut buf)
            .await
            .map_err(|e| match e {
                ReadError::Eof { .. } => ReadError::Frame(FrameError::Truncated {
                    needed: HEADER_BYTES + header.body_len as usize,
                    got: buf.len(),
                }),
                e => e,
            })?;
        let _ = frame::split(&buf, frame_bytes_max).map_err(ReadError::Frame)?;
        Ok(buf.freeze())
    }

    /// The rest of the body as a stream of chunks, each within the idle limit.
    pub(crate) fn into_stream(self) -> impl Stream<Item = Result<Bytes, String>> + Send
    where
        B: 'static,
    {
        futures_util::stream::unfold(Some(self), |r| async move {
            let mut r = r?;
            match r.chunk().await {
                Ok(Some(c)) => Some((Ok(c), Some(r))),
                Ok(None) => None,
                // One error ends the stream.
                Err(ReadError::Idle) => Some((Err("body stalled".to_owned()), None)),
                Err(ReadError::Body(e)) => Some((Err(e), None)),
                Err(e) => Some((Err(format!("{e:?}")), None)),
            }
        })
    }
}
