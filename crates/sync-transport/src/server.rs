//! The hyper server: HTTP/1.1 routes over a [`Node`], with connection limits, time
//! limits, a write-stall guard and graceful shutdown.
//!
//! Routes (all on one port):
//!
//! | method and path       | request body                     | reply body                        |
//! |-----------------------|----------------------------------|-----------------------------------|
//! | `POST /v1/rpc`        | a `Request` frame                | a `Reply` or `Error` frame        |
//! | `POST /v1/blob/read`  | a `Request::BlobRead` frame      | a `Reply::BlobRead` frame + bytes |
//! | `POST /v1/blob/write` | a `Request::BlobWrite` frame + bytes | a `Reply::Blob` or `Error` frame |
//! | `GET /v1/subscribe`   | WebSocket upgrade (see `ws`)     | `Notice` frames                   |
//! | `GET /metrics`        | none (no token; only when `ServerConfig::metrics` is set) | Prometheus text |
//!
//! Every route but `/metrics` checks `Authorization: Bearer <token>` before it reads the
//! body.
//!
//! What bounds a client's hold on the node: `connections_max` and
//! `connections_per_address_max` (more are answered 503 naming the limit, see
//! `limits`), `first_byte_time_ms_max` (a new connection that sends nothing),
//! `header_read_time_ms_max` (slow headers and idle keep-alive),
//! `request_time_ms_max` (body read plus handler), `transfer_idle_ms_max` (gaps in a blob
//! transfer), `write_stall_ms_max` (a client that stops reading its reply), the frame
//! size limit, and for subscriptions the heartbeat timeout and the lag rule.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::body::{BodyReader, ReadError};
use crate::compress;
use crate::frame::{self, HEADER_BYTES};
use crate::limits::{self, ConnectionLimits, ConnectionSlot, FirstByte};
use crate::metrics::RequestKind;
use crate::node::{Handler, Node, ServerConfig, frame_reply, ms};
use crate::proto::{ErrorCode, ErrorReply, PlacedBatchReply, Reply, Request, WriteBatchReply};
use crate::refusal_log::{RefusalLog, is_refusal};

/// The media type of frame bodies.
pub const FRAME_CONTENT_TYPE: &str = "application/x-weft-frame";

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type ResBody = UnsyncBoxBody<Bytes, BoxError>;

/// A running server. Dropping it stops accepting and closes connections abruptly; call
/// [`ServerHandle::shutdown`] for a graceful stop.
#[derive(Debug)]
pub struct ServerHandle<H> {
    node: Node<H>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl<H: Handler> ServerHandle<H> {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node behind the server (for its counters, or an in-process client).
    pub fn node(&self) -> &Node<H> {
        &self.node
    }

    /// Stops accepting, closes subscriptions with `ShuttingDown`, lets open requests
    /// finish within `shutdown_grace_ms`, then returns.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        self.node.begin_shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl<H> Drop for ServerHandle<H> {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds `addr` and serves `handler` until shut down.
pub async fn serve<H: Handler>(
    handler: Arc<H>,
    config: ServerConfig,
    addr: SocketAddr,
) -> io::Result<ServerHandle<H>> {
    let listener = TcpListener::bind(addr).await?;
    serve_listener(listener, Node::new(handler, config))
}

/// Serves `node` on an already bound listener.
pub fn serve_listener<H: Handler>(
    listener: TcpListener,
    node: Node<H>,
) -> io::Result<ServerHandle<H>> {
    let local_addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, node.clone(), stop_rx));
    Ok(ServerHandle {
        node,
        local_addr,
        stop,
        task: Some(task),
    })
}

async fn accept_loop<H: Handler>(
    listener: TcpListener,
    node: Node<H>,
    mut stop: watch::Receiver<bool>,
) {
    let limits = ConnectionLimits::new(
        node.config.connections_max,
        node.config.connections_per_address_max,
    );
    let refusals = Arc::new(RefusalLog::default());
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match limits.admit(peer.ip()) {
            Ok(slot) => {
                let node = node.clone();
                let stop = stop.clone();
                let refusals = refusals.clone();
                tokio::spawn(serve_connection(node, tcp, slot, peer, refusals, stop));
            }
            Err(refusal) => {
                refusals.refused(peer, None, &refusal.reply());
                limits.refuse(tcp, refusal);
            }
        }
    }
    drop(listener);
    // Graceful: open connections finish their current request (they saw `stop`), and
    // subscriptions were told `ShuttingDown`; wait for both within the grace time.
    let grace = ms(node.config.shutdown_grace_ms);
    let _ = tokio::time::timeout(grace, async {
        limits.all_closed().await;
        node.wait_for_subscriptions().await;
    })
    .await;
}

struct ConnectionCount<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for ConnectionCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection<H: Handler>(
    node: Node<H>,
    tcp: TcpStream,
    slot: ConnectionSlot,
    peer: SocketAddr,
    refusals: Arc<RefusalLog>,
    mut stop: watch::Receiver<bool>,
) {
    node.stats.connections.fetch_add(1, Ordering::Relaxed);
    let stats = node.stats.clone();
    let _count = ConnectionCount(&stats.connections);
    // A connection that sends nothing frees its slot quickly (see `limits`).
    let first_byte = ms(node.config.first_byte_time_ms_max);
    tokio::select! {
        began = limits::first_byte(&tcp, first_byte) => if began != FirstByte::Sent {
            // The slot is free before the peer sees the close.
            drop(slot);
            drop(tcp);
            if began == FirstByte::Silent {
                refusals.refused(peer, None, &limits::silent(node.config.first_byte_time_ms_max));
            }
            return;
        },
        _ = stop.changed() => return,
    }
    match node.config.tls.clone() {
        None => serve_http(node, tcp, slot, peer, refusals, stop).await,
        Some(tls) => {
            let limit = ms(node.config.header_read_time_ms_max);
            let accepted = tokio::select! {
                a = tls.accept(tcp, limit) => a,
                _ = stop.changed() => return,
            };
            if let Some(stream) = accepted {
                serve_http(node, stream, slot, peer, refusals, stop).await;
            }
        }
    }
}

/// Serves HTTP/1.1 on an accepted connection (plain or TLS) until it closes.
async fn serve_http<H: Handler, S>(
    node: Node<H>,
    stream: S,
    slot: ConnectionSlot,
    peer: SocketAddr,
    refusals: Arc<RefusalLog>,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(StallGuard::new(stream, ms(node.config.write_stall_ms_max)));
    let svc_node = node.clone();
    let service = hyper::service::service_fn(move |req| {
        let node = svc_node.clone();
        let refusals = refusals.clone();
        async move { Ok::<_, Infallible>(route(node, req, peer, &refusals).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ms(node.config.header_read_time_ms_max))
        .keep_alive(true);
    let conn = builder.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    if *stop.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(ms(node.config.shutdown_grace_ms), conn).await;
        }
    }
    drop(slot);
}

fn bearer<B>(req: &HttpRequest<B>) -> Option<&str> {
    bearer_of(req.headers().get(AUTHORIZATION)?.to_str().ok()?)
}

/// The token of an `Authorization` header value: the `Bearer` scheme, matched without
/// regard to case (RFC 7235), then one or more spaces.
pub(crate) fn bearer_of(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> ResBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn frame_response(status: u16, frame: Vec<u8>) -> Response<ResBody> {
    let mut res = Response::new(full(frame));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    res.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(FRAME_CONTENT_TYPE),
    );
    res
}

pub(crate) fn error_response(reply: &ErrorReply) -> Response<ResBody> {
    frame_response(reply.code.http_status(), frame::encode(reply))
}

fn reply_response(reply: &Reply) -> Response<ResBody> {
    frame_response(200, frame::encode(reply))
}

async fn route<H: Handler>(
    node: Node<H>,
    req: HttpRequest<Incoming>,
    peer: SocketAddr,
    refusals: &RefusalLog,
) -> Response<ResBody> {
    let started = std::time::Instant::now();
    // For the refusal log (a cheap clone, parsed only on a refusal).
    let authorization = req.headers().get(AUTHORIZATION).cloned();
    let bytes_in = hyper::body::Body::size_hint(req.body()).exact();
    let mut kind = RequestKind::Other;
    let result = match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/rpc") => rpc(&node, req, &mut kind).await,
        (&Method::POST, "/v1/blob/read") => {
            kind = RequestKind::BlobRead;
            blob_read(&node, req).await
        }
        (&Method::POST, "/v1/blob/write") => {
            kind = RequestKind::BlobWrite;
            blob_write(&node, req).await
        }
        (&Method::GET, "/v1/subscribe") => {
            kind = RequestKind::Subscribe;
            crate::ws::upgrade(&node, req)
        }
        (&Method::GET, "/metrics") if node.config.metrics.is_some() => {
            kind = RequestKind::Metrics;
            Ok(metrics_response(&node))
        }
        (_, path) => Err(ErrorReply::new(
            ErrorCode::NotFound,
            format!("no route for {} {path}", req.method()),
        )),
    };
    let res = result.unwrap_or_else(|e| {
        if is_refusal(e.code) {
            // The tenant the caller's token names, unverified: it is only logged.
            let tenant = authorization
                .as_ref()
                .and_then(|v| bearer_of(v.to_str().ok()?)?.parse::<crate::Token>().ok())
                .map(|t| t.unverified_claims().tenant.to_string());
            refusals.refused(peer, tenant.as_deref(), &e);
        }
        error_response(&e)
    });
    if let Some(metrics) = &node.config.metrics {
        let bytes_out = res
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or_else(|| hyper::body::Body::size_hint(res.body()).exact());
        let status = res.status().as_u16();
        metrics.record_request(kind, status, started.elapsed(), bytes_in, bytes_out);
    }
    res
}

fn metrics_response<H: Handler>(node: &Node<H>) -> Response<ResBody> {
    let text = node.config.metrics.as_ref().map_or_else(String::new, |m| {
        m.render(node.connections(), node.subscriptions())
    });
    let mut res = Response::new(full(text));
    res.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}

fn read_error(e: ReadError, what: &str) -> ErrorReply {
    match e {
        ReadError::Frame(f) => frame_reply(&f),
        ReadError::Eof { needed, got } => ErrorReply::new(
            ErrorCode::BadFrame,
            format!("{what} ended after {got} of {needed} bytes"),
        ),
        ReadError::Idle => ErrorReply::new(ErrorCode::Timeout, format!("{what} stalled")),
        ReadError::Body(e) => ErrorReply::new(ErrorCode::BadFrame, format!("{what} failed: {e}")),
    }
}

/// Reads a small request body (one frame) within the frame limit and the request time.
async fn read_small_body<H: Handler>(
    node: &Node<H>,
    req: HttpRequest<Incoming>,
) -> Result<Bytes, ErrorReply> {
    let max = HEADER_BYTES + node.config.frame_bytes_max;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > max as u64
    {
        return Err(ErrorReply::new(
            ErrorCode::TooLarge,
            format!("request body of {len} bytes exceeds the limit of {max} bytes"),
        ));
    }
    let limit = ms(node.config.request_time_ms_max);
    let collected = tokio::time::timeout(limit, Limited::new(req.into_body(), max).collect())
        .await
        .map_err(|_| {
            ErrorReply::new(ErrorCode::Timeout, "request body was not received in time")
        })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ErrorReply::new(
            ErrorCode::TooLarge,
            format!("request body exceeds the limit of {max} bytes"),
        )),
        Err(e) => Err(ErrorReply::new(
            ErrorCode::BadFrame,
            format!("request body failed: {e}"),
        )),
    }
}

async fn rpc<H: Handler>(
    node: &Node<H>,
    req: HttpRequest<Incoming>,
    kind: &mut RequestKind,
) -> Result<Response<ResBody>, ErrorReply> {
    let ctx = node.authenticate(bearer(&req))?;
    let time = ms(node.config.request_time_ms_max);
    let headers = req.headers();
    let compressed =
        compress::lists_lz4(headers.get(compress::ENCODING_HEADER).map(|v| v.as_bytes()));
    let accept = headers.get(compress::ACCEPT_HEADER).map(|v| v.as_bytes());
    let accepts = compress::lists_lz4(accept);
    let dense = node.config.dense_frames && compress::lists(accept, crate::dense::ACCEPT_TOKEN);
    // A session that does not parse is no session: it only ever saves bytes.
    let session = headers
        .get(crate::node::echo::SESSION_HEADER)
        .and_then(|v| crate::node::echo::SessionId::parse(v.as_bytes()));
    tokio::time::timeout(time, async {
        let mut body = read_small_body(node, req).await?;
        if compressed {
            body = compress::decompress(&body, HEADER_BYTES + node.config.frame_bytes_max)
                .map(Bytes::from)
                .map_err(|e| ErrorReply::new(ErrorCode::BadFrame, e.to_string()))?;
        }
        let request = node.decode_request(&body)?;
        *kind = RequestKind::of(&request);
        let reply = node.call_in_session(&ctx, request, session).await?;
        if let (Some(metrics), Reply::WriteBatch(WriteBatchReply { outcomes }))
        | (Some(metrics), Reply::WriteBatchPlaced(PlacedBatchReply { outcomes, .. })) =
            (&node.config.metrics, &reply)
        {
            metrics.record_outcomes(outcomes);
        }
        let frame = dense
            .then(|| frame::encode_dense(&reply))
            .flatten()
            .unwrap_or_else(|| frame::encode(&reply));
        let packed = if accepts {
            compress::compress(&frame)
        } else {
            None
        };
        let is_packed = packed.is_some();
        let mut res = frame_response(200, packed.unwrap_or(frame));
        let headers = res.headers_mut();
        // This node reads compressed requests (and dense frames, and wide write
        // batches): the client may send its next ones so.
        headers.insert(
            compress::ACCEPT_HEADER,
            hyper::header::HeaderValue::from_static(compress::node_accepts(
                node.config.dense_frames,
                node.config.wide_batches,
            )),
        );
        if is_packed {
            headers.insert(
                compress::ENCODING_HEADER,
                hyper::header::HeaderValue::from_static(compress::LZ4),
            );
        }
        Ok(res)
    })
    .await
    .unwrap_or_else(|_| Err(ErrorReply::new(ErrorCode::Timeout, "request took too long")))
}

async fn blob_read<H: Handler>(
    node: &Node<H>,
    req: HttpRequest<Incoming>,
) -> Result<Response<ResBody>, ErrorReply> {
    let ctx = node.authenticate(bearer(&req))?;
    let body = read_small_body(node, req).await?;
    let Request::BlobRead(request) = node.decode_request(&body)? else {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            "expected a blob read request",
        ));
    };
    let (head, stream) = node.blob_read(&ctx, request).await?;
    let head_frame = frame::encode(&Reply::BlobRead(head));
    let total = head_frame.len() as u64 + head.len;
    let head_chunk =
        futures_util::stream::once(async move { Ok::<_, BoxError>(Bytes::from(head_frame)) });
    let rest = stream.map(|r| r.map_err(|e| -> BoxError { Box::new(e) }));
    let body = StreamBody::new(head_chunk.chain(rest).map(|r| r.map(Frame::data)));
    let mut res = Response::new(BodyExt::boxed_unsync(body));
    res.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(FRAME_CONTENT_TYPE),
    );
    res.headers_mut().insert(CONTENT_LENGTH, total.into());
    Ok(res)
}

async fn blob_write<H: Handler>(
    node: &Node<H>,
    req: HttpRequest<Incoming>,
) -> Result<Response<ResBody>, ErrorReply> {
    let ctx = node.authenticate(bearer(&req))?;
    let mut reader = BodyReader::new(req.into_body(), ms(node.config.transfer_idle_ms_max));
    let head = reader
        .read_frame(node.config.frame_bytes_max)
        .await
        .map_err(|e| read_error(e, "blob upload head"))?;
    let Request::BlobWrite(request) = node.decode_request(&head)? else {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            "expected a blob write request",
        ));
    };
    let stat = node.blob_write(&ctx, request, reader.into_stream()).await?;
    Ok(reply_response(&Reply::Blob(stat)))
}

/// Fails writes that make no progress for `limit`, so a client that stops reading
/// cannot hold a connection (and its buffers) forever.
pub(crate) struct StallGuard<T> {
    inner: T,
    limit: Duration,
    stall: Option<Pin<Box<Sleep>>>,
}

impl<T> StallGuard<T> {
    pub(crate) fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stall: None,
        }
    }

    fn on_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match poll {
            Poll::Pending => {
                let limit = self.limit;
                let sleep = self
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "peer stopped reading",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stall = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.on_write(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
