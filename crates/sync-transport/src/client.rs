//! The client side: the [`Remote`] trait the engine talks to a node through, and its two
//! implementations, [`HttpClient`] (hyper, pooled HTTP/1.1 and WebSocket) and
//! [`InProcessClient`] (a [`Node`] in the same process, no sockets).
//!
//! Both go through the same node code (token checks, limits, subscription loop), and
//! the in-process client even encodes and decodes every frame, so what passes or fails
//! in a simulation passes or fails the same way over a socket. What the in-process
//! client does not have is a socket: no connect errors, no heartbeats.
//!
//! Retries: [`HttpClient`] retries a call at most [`ClientConfig::retries_max`] times,
//! only when the call is idempotent (roots, diff rounds, log pages, reads, blob stats and
//! downloads, health) and the failure is retryable ([`TransportError::is_retryable`]).
//! Writes are not retried here: the engine owns the push retry schedule and the dead
//! letters, and a transport retry underneath it would multiply its attempts.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sync_types::{Endpoint, Gap, KnownRanges, ProgressToken};
use tokio::sync::mpsc;

use crate::body::{BodyReader, ReadError};
use crate::compress;
use crate::error::TransportError;
use crate::frame::{self, FRAME_BYTES_MAX_DEFAULT, FrameError, FrameKind, HEADER_BYTES};
use crate::node::echo::{KNOWN_HEADER, KNOWN_HEADER_BYTES_MAX, SESSION_HEADER, SessionId};
use crate::node::{Feed, Handler, Node, ms};
use crate::proto::{
    BlobReadHead, BlobReadRequest, BlobStat, BlobStatRequest, BlobWriteRequest, CloseReason,
    DiffReply, DiffRequest, ErrorCode, ErrorReply, HeadLogPageRequest, HeadedLogPage, HealthReply,
    KnownLogPageRequest, LogEntry, LogExtent, LogPageReply, LogPageRequest, Notice,
    PlacedBatchReply, ReadMessagesReply, ReadMessagesRequest, Reply, Request, RootReply,
    RootRequest, SubscribeRequest, WIDE_BATCH_TOKEN, WriteBatchReply, WriteBatchRequest,
};
use crate::server::{BoxError, FRAME_CONTENT_TYPE};
use crate::tls::{self, ClientTls};
use crate::token::Token;
use crate::ws::{Heartbeat, SUBSCRIBE_HEADER, run_client, ws_config};

mod remote;
use remote::SubscriptionInner;
pub use remote::{
    BlobDownload, BlobSource, Remote, Subscription, SubscriptionItem, page_without_head,
};

fn unexpected(what: &'static str) -> TransportError {
    TransportError::UnexpectedReply(what)
}

macro_rules! expect_reply {
    ($reply:expr, $variant:ident, $what:literal) => {
        match $reply {
            Reply::$variant(r) => Ok(r),
            _ => Err(unexpected(concat!("expected a ", $what, " reply"))),
        }
    };
}

mod in_process;
mod wide;
pub use in_process::InProcessClient;

/// Settings of an [`HttpClient`]; every limit has its unit last.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Longest time to connect. Default 5 000.
    pub connect_time_ms_max: u64,
    /// Longest time for one request/reply call. Default 30 000.
    pub request_time_ms_max: u64,
    /// Longest gap between two chunks of a blob transfer. Default 30 000.
    pub transfer_idle_ms_max: u64,
    /// Retries of an idempotent call after a retryable failure. Default 2.
    pub retries_max: u32,
    /// Wait before the first retry; doubled for each next one. Default 50.
    pub retry_backoff_ms: u64,
    /// Largest reply frame accepted. Default [`FRAME_BYTES_MAX_DEFAULT`].
    pub frame_bytes_max: usize,
    /// Idle pooled connections are closed after this long. Default 60 000.
    pub pool_idle_ms_max: u64,
    /// Interval between heartbeat pings on a subscription. Default 15 000.
    pub heartbeat_interval_ms: u64,
    /// A subscription that hears nothing for this long ends. Default 45 000.
    pub heartbeat_timeout_ms: u64,
    /// Notices buffered between the socket and the consumer. Default 64.
    pub subscription_buffer_len: usize,
    /// The authorities trusted for `https://` endpoints. Default: the system's.
    pub tls: ClientTls,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_time_ms_max: 5_000,
            request_time_ms_max: 30_000,
            transfer_idle_ms_max: 30_000,
            retries_max: 2,
            retry_backoff_ms: 50,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            pool_idle_ms_max: 60_000,
            heartbeat_interval_ms: 15_000,
            heartbeat_timeout_ms: 45_000,
            subscription_buffer_len: 64,
            tls: ClientTls::default(),
        }
    }
}

type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A [`Remote`] over HTTP/1.1 (hyper, pooled keep-alive connections) and WebSocket,
/// plain (`http://`) or over TLS (`https://`, trusting [`ClientConfig::tls`]).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, ReqBody>,
    base: String,
    authority: String,
    /// Set for `https://` endpoints (subscriptions use it for `wss://`).
    tls: Option<Arc<rustls::ClientConfig>>,
    token: HeaderValue,
    config: Arc<ClientConfig>,
    /// Set once the node answered a request of this version `BadFrame` (a node before
    /// [`Request::WriteBatchPlaced`] and [`Request::LogPageKnown`]): the older calls
    /// are used from then on.
    legacy: Arc<AtomicBool>,
    /// Set once the node answered [`Request::LogPageHead`] `BadFrame`: pages come
    /// without the log's extent from then on.
    legacy_head: Arc<AtomicBool>,
    /// Set once a reply said the node reads compressed requests.
    node_reads_lz4: Arc<AtomicBool>,
    /// Set once a reply said the node reads dense frames (see [`crate::dense`]);
    /// cleared when a dense frame is refused as an unsupported version.
    node_reads_dense: Arc<AtomicBool>,
    /// Whether the last reply said the node accepts write batches of up to
    /// [`BATCH_MESSAGES_WIDE_MAX`](crate::proto::BATCH_MESSAGES_WIDE_MAX) messages (see
    /// `wide`); cleared by a reply that does not say so, and when a wide batch is
    /// refused as a bad frame.
    node_reads_wide: Arc<AtomicBool>,
    /// This client's session (shared by its clones), named on placed write batches and
    /// subscriptions so that its subscriptions leave out what it pushed (see
    /// [`echo`](crate::node::echo)).
    session: HeaderValue,
}

/// Whether `e` is how a node that does not know a request variant answers it.
fn is_unknown_request(e: &TransportError) -> bool {
    matches!(
        e,
        TransportError::Refused {
            code: ErrorCode::BadFrame,
            ..
        }
    )
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("base", &self.base)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn unreachable_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Unreachable(e.to_string())
}

/// A failed request, classified by its causes (a TLS failure is not "unreachable").
fn request_err(e: hyper_util::client::legacy::Error) -> TransportError {
    tls::classify(&e)
}

impl HttpClient {
    /// A client of `endpoint` presenting `token`.
    pub fn new(
        endpoint: &Endpoint,
        token: &Token,
        config: ClientConfig,
    ) -> Result<Self, TransportError> {
        Self::with_token_text(endpoint, &token.to_string(), config)
    }

    /// A client presenting raw token text (for tests of malformed tokens).
    pub fn with_token_text(
        endpoint: &Endpoint,
        token: &str,
        config: ClientConfig,
    ) -> Result<Self, TransportError> {
        let (https, rest) = if let Some(rest) = endpoint.as_str().strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = endpoint.as_str().strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(TransportError::Endpoint(format!(
                "{endpoint}: only http:// and https:// are supported"
            )));
        };
        let authority = rest.trim_end_matches('/').to_owned();
        if authority.is_empty() || authority.contains('/') {
            return Err(TransportError::Endpoint(format!(
                "{endpoint}: expected http://host:port or https://host:port"
            )));
        }
        let tls_config = config.tls.rustls_config(https)?;
        let token = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| TransportError::Endpoint("token is not a valid header value".into()))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(ms(config.connect_time_ms_max)));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls_config).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(ms(config.pool_idle_ms_max))
            .pool_timer(TokioTimer::new())
            .build(connector);
        let scheme = if https { "https" } else { "http" };
        Ok(Self {
            client,
            base: format!("{scheme}://{authority}"),
            authority,
            tls: https.then_some(tls_config),
            token,
            config: Arc::new(config),
            legacy: Arc::new(AtomicBool::new(false)),
            legacy_head: Arc::new(AtomicBool::new(false)),
            node_reads_lz4: Arc::new(AtomicBool::new(false)),
            node_reads_dense: Arc::new(AtomicBool::new(false)),
            node_reads_wide: Arc::new(AtomicBool::new(false)),
            session: HeaderValue::from_str(&SessionId::random().to_header())
                .map_err(|e| TransportError::Endpoint(e.to_string()))?,
        })
    }

    fn request(
        &self,
        path: &str,
        body: ReqBody,
        len: Option<u64>,
    ) -> Result<hyper::Request<ReqBody>, TransportError> {
        let mut req = hyper::Request::post(format!("{}{path}", self.base))
            .header(AUTHORIZATION, self.token.clone())
            .header(CONTENT_TYPE, FRAME_CONTENT_TYPE)
            .body(body)
            .map_err(|e| TransportError::Endpoint(e.to_string()))?;
        if let Some(len) = len {
            req.headers_mut().insert(CONTENT_LENGTH, len.into());
        }
        Ok(req)
    }

    /// Sends one frame and reads the whole reply within the request time. Large
    /// frames go compressed once the node said it reads them, and replies may come
    /// compressed (see [`compress`](crate::compress)).
    async fn call_once(
        &self,
        path: &str,
        frame_bytes: Bytes,
        in_session: bool,
    ) -> Result<Reply, TransportError> {
        let time = self.config.request_time_ms_max;
        let packed = if self.node_reads_lz4.load(Ordering::Relaxed) {
            compress::compress(&frame_bytes)
        } else {
            None
        };
        let is_packed = packed.is_some();
        let frame_bytes = packed.map_or(frame_bytes, Bytes::from);
        let len = frame_bytes.len() as u64;
        let body = Full::new(frame_bytes)
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut req = self.request(path, body, Some(len))?;
        let lz4 = HeaderValue::from_static(compress::LZ4);
        req.headers_mut().insert(
            compress::ACCEPT_HEADER,
            HeaderValue::from_static(compress::ACCEPT_VALUE),
        );
        if is_packed {
            req.headers_mut().insert(compress::ENCODING_HEADER, lz4);
        }
        if in_session {
            req.headers_mut()
                .insert(SESSION_HEADER, self.session.clone());
        }
        tokio::time::timeout(ms(time), async {
            let res = self.client.request(req).await.map_err(request_err)?;
            let status = res.status().as_u16();
            let header = |name| res.headers().get(name).map(HeaderValue::as_bytes);
            if compress::lists_lz4(header(compress::ACCEPT_HEADER)) {
                self.node_reads_lz4.store(true, Ordering::Relaxed);
            }
            if compress::lists(header(compress::ACCEPT_HEADER), crate::dense::ACCEPT_TOKEN) {
                self.node_reads_dense.store(true, Ordering::Relaxed);
            }
            if status == 200 {
                let wide = compress::lists(header(compress::ACCEPT_HEADER), WIDE_BATCH_TOKEN);
                self.node_reads_wide.store(wide, Ordering::Relaxed);
            }
            let compressed = compress::lists_lz4(header(compress::ENCODING_HEADER));
            let limit = HEADER_BYTES + self.config.frame_bytes_max;
            let mut body = http_body_util::Limited::new(res.into_body(), limit)
                .collect()
                .await
                .map_err(unreachable_err)?
                .to_bytes();
            if compressed {
                body = compress::decompress(&body, limit)
                    .map(Bytes::from)
                    .map_err(|e| {
                        TransportError::BadReply(FrameError::Compression(e.to_string()))
                    })?;
            }
            decode_reply(status, &body, self.config.frame_bytes_max)
        })
        .await
        .unwrap_or(Err(TransportError::timeout(time)))
    }

    /// Calls with bounded retries when `idempotent`, in a dense frame when the node said
    /// it reads them. A dense frame refused as an unsupported version (a node replaced
    /// by an older one) is sent again plain, and plain frames are sent from then on.
    async fn call(&self, request: &Request, idempotent: bool) -> Result<Reply, TransportError> {
        if self.node_reads_dense.load(Ordering::Relaxed)
            && let Some(dense) = frame::encode_dense(request)
        {
            match self
                .call_frame(request, Bytes::from(dense), idempotent)
                .await
            {
                Err(TransportError::Refused {
                    code: ErrorCode::UnsupportedVersion,
                    ..
                }) => self.node_reads_dense.store(false, Ordering::Relaxed),
                other => return other,
            }
        }
        let frame_bytes = Bytes::from(frame::encode(request));
        self.call_frame(request, frame_bytes, idempotent).await
    }

    async fn call_frame(
        &self,
        request: &Request,
        frame_bytes: Bytes,
        idempotent: bool,
    ) -> Result<Reply, TransportError> {
        let in_session = matches!(request, Request::WriteBatchPlaced(_));
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            match self
                .call_once("/v1/rpc", frame_bytes.clone(), in_session)
                .await
            {
                Err(e) if idempotent && e.is_retryable() && attempt < self.config.retries_max => {
                    let backoff = self
                        .config
                        .retry_backoff_ms
                        .saturating_mul(1 << attempt.min(16));
                    tokio::time::sleep(ms(backoff)).await;
                    attempt += 1;
                }
                other => {
                    return other.map_err(|e| e.after_attempts(attempt + 1, started.elapsed()));
                }
            }
        }
    }

    async fn blob_read_once(&self, req: &BlobReadRequest) -> Result<BlobDownload, TransportError> {
        let bytes = Bytes::from(frame::encode(&Request::BlobRead(req.clone())));
        let len = bytes.len() as u64;
        let body = Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync();
        let http = self.request("/v1/blob/read", body, Some(len))?;
        let time = self.config.request_time_ms_max;
        let res = tokio::time::timeout(ms(time), self.client.request(http))
            .await
            .map_err(|_| TransportError::timeout(time))?
            .map_err(request_err)?;
        let status = res.status().as_u16();
        let idle = ms(self.config.transfer_idle_ms_max);
        let mut reader = BodyReader::new(res.into_body(), idle);
        let head = reader
            .read_frame(self.config.frame_bytes_max)
            .await
            .map_err(|e| match e {
                ReadError::Frame(f) => TransportError::BadReply(f),
                ReadError::Idle => TransportError::timeout(self.config.transfer_idle_ms_max),
                other => TransportError::Unreachable(format!("{other:?}")),
            })?;
        let head = match decode_reply(status, &head, self.config.frame_bytes_max)? {
            Reply::BlobRead(h) => h,
            _ => return Err(unexpected("expected a blob read reply")),
        };
        let mut left = head.len;
        let bytes =
            reader
                .into_stream()
                .map(move |r| {
                    let chunk = r.map_err(TransportError::Unreachable)?;
                    left = left.checked_sub(chunk.len() as u64).ok_or(
                        TransportError::UnexpectedReply("blob range is longer than its head says"),
                    )?;
                    Ok(chunk)
                })
                .boxed();
        Ok(BlobDownload { head, bytes })
    }
}

fn status_error(status: u16) -> TransportError {
    let code = match status {
        401 => ErrorCode::Unauthenticated,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        408 => ErrorCode::Timeout,
        413 => ErrorCode::TooLarge,
        503 => ErrorCode::Overloaded,
        500..=599 => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    TransportError::Refused {
        status,
        code,
        message: format!("http status {status} without an error frame"),
        supported_versions: Vec::new(),
    }
}

/// Decodes a reply or error frame; a failed status without a readable error frame (a
/// proxy's page, a cut body) becomes a refusal with the status's meaning.
fn decode_reply(status: u16, body: &[u8], frame_bytes_max: usize) -> Result<Reply, TransportError> {
    let (header, payload) = match frame::split(body, frame_bytes_max) {
        Ok(parts) => parts,
        // A success or a "no such route" without a frame: not a weft node answered.
        Err(_)
            if !body.starts_with(&frame::MAGIC)
                && matches!(status, 200..=299 | 400 | 404 | 405) =>
        {
            return Err(TransportError::NotWeft(format!(
                "the server answered HTTP {status} without a weft frame"
            )));
        }
        Err(_) if status != 200 => return Err(status_error(status)),
        Err(e) => return Err(e.into()),
    };
    match header.kind {
        FrameKind::Error => {
            let reply = frame::decode_body::<ErrorReply>(header, payload)?;
            if reply.code == ErrorCode::BadRequest && reply.message == tls::TLS_ONLY_MESSAGE {
                return Err(TransportError::Tls(
                    "the node speaks TLS only and answered a plain http:// call: use an https:// endpoint".into(),
                ));
            }
            let mut e = TransportError::refused(reply);
            if let TransportError::Refused { status: s, .. } = &mut e {
                *s = status;
            }
            Err(e)
        }
        _ if status != 200 => Err(status_error(status)),
        _ => Ok(frame::decode_body::<Reply>(header, payload)?),
    }
}

impl Remote for HttpClient {
    async fn root(&self, req: RootRequest) -> Result<RootReply, TransportError> {
        expect_reply!(self.call(&Request::Root(req), true).await?, Root, "root")
    }
    async fn diff_round(&self, req: DiffRequest) -> Result<DiffReply, TransportError> {
        expect_reply!(self.call(&Request::Diff(req), true).await?, Diff, "diff")
    }
    async fn log_page(&self, req: LogPageRequest) -> Result<LogPageReply, TransportError> {
        expect_reply!(
            self.call(&Request::LogPage(req), true).await?,
            LogPage,
            "log page"
        )
    }
    async fn read_messages(
        &self,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, TransportError> {
        expect_reply!(
            self.call(&Request::ReadMessages(req), true).await?,
            ReadMessages,
            "read messages"
        )
    }
    async fn write_batch(&self, req: WriteBatchRequest) -> Result<WriteBatchReply, TransportError> {
        let reply = self.send_batch(req, false).await?;
        Ok(WriteBatchReply {
            outcomes: reply.outcomes,
        })
    }
    async fn write_batch_placed(
        &self,
        req: WriteBatchRequest,
    ) -> Result<PlacedBatchReply, TransportError> {
        self.send_batch(req, true).await
    }
    fn batch_messages_max(&self) -> usize {
        self.node_batch_messages_max()
    }
    async fn log_page_known(
        &self,
        req: KnownLogPageRequest,
    ) -> Result<LogPageReply, TransportError> {
        // An older node does not know the call: fall back to a plain page, for good.
        let req = if self.legacy.load(Ordering::Relaxed) {
            req
        } else {
            let request = Request::LogPageKnown(req);
            match self.call(&request, true).await {
                Err(e) if is_unknown_request(&e) => self.legacy.store(true, Ordering::Relaxed),
                reply => return expect_reply!(reply?, LogPage, "log page"),
            }
            let Request::LogPageKnown(req) = request else {
                unreachable!("built above")
            };
            req
        };
        self.log_page(req.page).await
    }
    async fn log_page_head(
        &self,
        req: HeadLogPageRequest,
    ) -> Result<HeadedLogPage, TransportError> {
        // An older node does not know the call: pages without the extent, for good.
        if self.legacy_head.load(Ordering::Relaxed) {
            return page_without_head(self, req).await;
        }
        let request = Request::LogPageHead(req);
        match self.call(&request, true).await {
            Err(e) if is_unknown_request(&e) => self.legacy_head.store(true, Ordering::Relaxed),
            reply => return expect_reply!(reply?, LogPageHead, "log page with head"),
        }
        let Request::LogPageHead(req) = request else {
            unreachable!("built above")
        };
        page_without_head(self, req).await
    }
    async fn blob_stat(&self, req: BlobStatRequest) -> Result<BlobStat, TransportError> {
        expect_reply!(
            self.call(&Request::BlobStat(req), true).await?,
            Blob,
            "blob"
        )
    }
    async fn blob_read(&self, req: BlobReadRequest) -> Result<BlobDownload, TransportError> {
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            match self.blob_read_once(&req).await {
                Err(e) if e.is_retryable() && attempt < self.config.retries_max => {
                    tokio::time::sleep(ms(self
                        .config
                        .retry_backoff_ms
                        .saturating_mul(1 << attempt.min(16))))
                    .await;
                    attempt += 1;
                }
                other => {
                    return other.map_err(|e| e.after_attempts(attempt + 1, started.elapsed()));
                }
            }
        }
    }
    async fn blob_write(
        &self,
        req: BlobWriteRequest,
        source: BlobSource,
    ) -> Result<BlobStat, TransportError> {
        let head = Bytes::from(frame::encode(&Request::BlobWrite(req.clone())));
        let total = head.len() as u64 + req.len;
        let head_chunk = futures_util::stream::once(async move { Ok::<_, BoxError>(head) });
        let rest = source.map(|r| r.map_err(|e| -> BoxError { Box::new(e) }));
        let body =
            StreamBody::new(head_chunk.chain(rest).map(|r| r.map(Frame::data))).boxed_unsync();
        let http = self.request("/v1/blob/write", body, Some(total))?;
        let res = self.client.request(http).await.map_err(request_err)?;
        let status = res.status().as_u16();
        let time = self.config.request_time_ms_max;
        let body = tokio::time::timeout(
            ms(time),
            http_body_util::Limited::new(
                res.into_body(),
                HEADER_BYTES + self.config.frame_bytes_max,
            )
            .collect(),
        )
        .await
        .map_err(|_| TransportError::timeout(time))?
        .map_err(unreachable_err)?
        .to_bytes();
        expect_reply!(
            decode_reply(status, &body, self.config.frame_bytes_max)?,
            Blob,
            "blob"
        )
    }
    async fn health(&self) -> Result<HealthReply, TransportError> {
        expect_reply!(self.call(&Request::Health, true).await?, Health, "health")
    }
    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, TransportError> {
        self.subscribe_known(req, None).await
    }

    async fn subscribe_known(
        &self,
        req: SubscribeRequest,
        known: Option<KnownRanges>,
    ) -> Result<Subscription, TransportError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let time = self.config.connect_time_ms_max;
        let tcp = tls::connect(&self.authority, self.tls.as_ref(), ms(time)).await?;
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        let mut http = format!("{scheme}://{}/v1/subscribe", self.authority)
            .into_client_request()
            .map_err(|e| TransportError::Endpoint(e.to_string()))?;
        http.headers_mut().insert(AUTHORIZATION, self.token.clone());
        http.headers_mut()
            .insert(SESSION_HEADER, self.session.clone());
        if let Some(known) = known {
            let encoded = URL_SAFE_NO_PAD.encode(sync_types::codec::encode(&known));
            // Too many ranges for a header: the replay then carries everything.
            if encoded.len() <= KNOWN_HEADER_BYTES_MAX
                && let Ok(value) = HeaderValue::from_str(&encoded)
            {
                http.headers_mut().insert(KNOWN_HEADER, value);
            }
        }
        let encoded = URL_SAFE_NO_PAD.encode(frame::encode(&req));
        http.headers_mut().insert(
            SUBSCRIBE_HEADER,
            HeaderValue::from_str(&encoded).map_err(|e| TransportError::Endpoint(e.to_string()))?,
        );
        let frame_max = self.config.frame_bytes_max + HEADER_BYTES;
        let handshake =
            tokio_tungstenite::client_async_with_config(http, tcp, Some(ws_config(frame_max)));
        let time = self.config.request_time_ms_max;
        let (ws, _) = match tokio::time::timeout(ms(time), handshake).await {
            Err(_) => return Err(TransportError::timeout(time)),
            Ok(Ok(ok)) => ok,
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(res))) => {
                let status = res.status().as_u16();
                let body = res.body().clone().unwrap_or_default();
                return Err(
                    match decode_reply(status, &body, self.config.frame_bytes_max) {
                        Err(e) => e,
                        Ok(_) => status_error(status),
                    },
                );
            }
            Ok(Err(e)) => return Err(unreachable_err(e)),
        };
        let (tx, rx) = mpsc::channel(self.config.subscription_buffer_len.max(1));
        let hb = Heartbeat {
            interval: ms(self.config.heartbeat_interval_ms.max(1)),
            timeout: ms(self.config.heartbeat_timeout_ms.max(1)),
            send: ms(self.config.request_time_ms_max.max(1)),
        };
        let frame_bytes_max = self.config.frame_bytes_max;
        let task = tokio::spawn(run_client(ws, tx, hb, frame_bytes_max));
        Ok(Subscription {
            inner: SubscriptionInner::Remote { rx, task },
        })
    }
}

/// A [`BlobSource`] over bytes in memory, in chunks of `chunk_bytes`.
pub fn blob_source_from_bytes(bytes: Bytes, chunk_bytes: usize) -> BlobSource {
    let chunk = chunk_bytes.max(1);
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..bytes.len())
        .step_by(chunk)
        .map(|i| Ok(bytes.slice(i..(i + chunk).min(bytes.len()))))
        .collect();
    futures_util::stream::iter(chunks).boxed()
}
