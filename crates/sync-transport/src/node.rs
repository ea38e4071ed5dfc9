//! The node side shared by the hyper server and the in-process client: the [`Handler`]
//! trait, credential checks, limits, and the subscription loop.
//!
//! Both transports go through [`Node`], so they behave the same: the same token checks
//! (401/403 before the handler is called), the same per-message write authorization,
//! the same time limits, the same subscription queue and lag rule. Only sockets,
//! HTTP and WebSocket framing live elsewhere (`server`, `ws`, `client`).
//!
//! # Subscriptions read the durable log
//!
//! A subscription is "read log pages from the cursor through the handler, send them,
//! then wait for a change notification from [`Handler::changes`] and read the next
//! page". Replay and live delivery are one loop over the durable log, so a lost or
//! coalesced notification costs latency, never events (a slow periodic re-read,
//! [`ServerConfig::live_poll_interval_ms`], bounds even that). Each subscriber has a
//! bounded queue ([`ServerConfig::subscriber_queue_len_max`]); when it stays full for
//! [`ServerConfig::subscriber_stall_ms_max`] the subscriber is told
//! [`CloseReason::Lagged`](crate::proto::CloseReason::Lagged) and closed, and resubscribes from its checkpoint.
//!
//! # Live pages are read once for all subscribers
//!
//! When a change wakes many live subscriptions of a tenant, they all ask for the same
//! page: same tenant, scope, filter, cursor and limit, read after the same change. The
//! node reads such a page once through [`Handler::log_page`] and hands it to each of
//! them (`SharedPages`, the last [`SHARED_PAGES_MAX`] pages, keyed by the request and
//! the [`Handler::changes`] value that woke the reader). A page shared under a change
//! value was read after that value was published, so it holds every event committed
//! before it; a later commit publishes a new value and wakes the subscribers again.
//! Replay (before `EndOfStored`) and the periodic re-read never use shared pages: they
//! read the log themselves. Each subscriber keeps its own queue, lag rule and token
//! expiry.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sync_types::{
    ApplyOutcome, Clock, Direction, HealthSummary, KnownRanges, NoInitialWrites, ScopeClass,
    TenantId,
};
use tokio::sync::{Semaphore, watch};

use crate::error::HandlerError;
use crate::frame::{self, FrameError, check_count};
use crate::proto::{
    BATCH_MESSAGES_MAX, BATCH_MESSAGES_WIDE_MAX, BlobReadHead, BlobReadRequest, BlobStat,
    BlobStatRequest, BlobWriteRequest, DiffReply, DiffRequest, ErrorCode, ErrorReply,
    HeadLogPageRequest, HeadedLogPage, HealthReply, LogExtent, LogPageReply, LogPageRequest,
    MessageData, PlacedBatchReply, ReadMessagesReply, ReadMessagesRequest, Reply, Request,
    RootReply, RootRequest, WriteBatchReply, request_needs,
};
use crate::tenant_share::{ShareGuard, TenantShares};
use crate::token::{AuthError, Claims, Token};

pub mod echo;
mod subscription;

pub use subscription::SHARED_PAGES_MAX;
pub(crate) use subscription::{Feed, SharedPages};

/// What the handler learns about the caller: verified claims.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RequestContext {
    /// The caller's verified claims; the request was already checked against them.
    pub claims: Claims,
}

/// What [`Handler::log_extent`] is asked: the page request, where its page ended and
/// the positions the reader holds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LogExtentQuery {
    /// The page request (tenant, scope, filter).
    pub req: LogPageRequest,
    /// Where the page ended (its `next`): what is left is counted after it.
    pub after: Option<sync_types::ProgressToken>,
    /// Positions the reader holds, left out of the count.
    pub known: Option<KnownRanges>,
    /// Whether to count what is left (at most
    /// [`LOG_COUNT_ENTRIES_MAX`](crate::proto::LOG_COUNT_ENTRIES_MAX) entries scanned).
    pub count: bool,
}

/// What a node does with requests. The engine's node implements it over its ledger,
/// tree and blob store; tests implement it over maps.
///
/// Every method receives the verified claims. The transport has already checked the
/// request's tenant, the scope it asks for and the action against them; what only the
/// handler can check is noted per method (which messages or blobs lie inside the scope).
/// Futures must be `Send`; implementations can use `async fn`.
pub trait Handler: Send + Sync + 'static {
    /// The root of the tenant's tree over `req.scope`.
    fn root(
        &self,
        ctx: &RequestContext,
        req: RootRequest,
    ) -> impl Future<Output = Result<RootReply, HandlerError>> + Send;

    /// One round of the SMT diff over `req.scope`; the bytes are `sync-smt` messages.
    fn diff_round(
        &self,
        ctx: &RequestContext,
        req: DiffRequest,
    ) -> impl Future<Output = Result<DiffReply, HandlerError>> + Send;

    /// A page of the tenant's log after `req.from`, only entries in `req.scope` and the
    /// filter, at most `req.limit`; or a gap when the cursor cannot be served.
    ///
    /// The answer must depend on the request and the log only, not on `ctx`: live
    /// subscriptions with equal requests share one page (see the module docs).
    fn log_page(
        &self,
        ctx: &RequestContext,
        req: LogPageRequest,
    ) -> impl Future<Output = Result<LogPageReply, HandlerError>> + Send;

    /// The extent of the tenant's log for a reader of `req` whose page ended at
    /// `after`: the log's head, and (with `count`) what is left after `after` in the
    /// request's scope and filter, without the positions in `known`. Default: nothing
    /// known (a [`Request::LogPageHead`] is then answered like a plain page).
    fn log_extent(
        &self,
        ctx: &RequestContext,
        req: LogExtentQuery,
    ) -> impl Future<Output = Result<LogExtent, HandlerError>> + Send {
        let _ = (ctx, req);
        async { Ok(LogExtent::default()) }
    }

    /// Messages by cid; those outside `req.scope` are reported missing.
    fn read_messages(
        &self,
        ctx: &RequestContext,
        req: ReadMessagesRequest,
    ) -> impl Future<Output = Result<ReadMessagesReply, HandlerError>> + Send;

    /// Applies messages of `tenant`, returning exactly one outcome per message, in
    /// order. The transport has already answered messages of another tenant `Invalid`
    /// and messages the caller's scope excludes `Unauthorized` (by the scope gate,
    /// [`sync_types::Scope::gate`] with [`Direction::Push`]); messages it could not
    /// classify alone (a delete under a projection grant) come here, and the handler
    /// must check them against `ctx.claims.scope` with the same gate and the stored
    /// record. What only stored state can decide is the handler's too: that a version
    /// names its record's protocol, and that a delegate's message names the delegate as
    /// author (unless already held).
    fn apply(
        &self,
        ctx: &RequestContext,
        tenant: &TenantId,
        messages: Vec<MessageData>,
    ) -> impl Future<Output = Result<Vec<ApplyOutcome>, HandlerError>> + Send;

    /// [`apply`](Self::apply), also saying where the log holds the messages it applied
    /// (for [`Request::WriteBatchPlaced`]). Default: `apply`, and no positions.
    fn apply_placed(
        &self,
        ctx: &RequestContext,
        tenant: &TenantId,
        messages: Vec<MessageData>,
    ) -> impl Future<Output = Result<(Vec<ApplyOutcome>, Option<KnownRanges>), HandlerError>> + Send
    {
        async move { Ok((self.apply(ctx, tenant, messages).await?, None)) }
    }

    /// How much of a blob the node holds (only blobs of records in `req.scope`).
    fn blob_stat(
        &self,
        ctx: &RequestContext,
        req: BlobStatRequest,
    ) -> impl Future<Output = Result<BlobStat, HandlerError>> + Send;

    /// Up to `len` bytes of a complete blob from `offset`; fewer only at its end. Only
    /// a blob that [`blob_stat`](Self::blob_stat) shows the caller as complete; any
    /// other gets the answer of a blob that does not exist.
    fn blob_read(
        &self,
        ctx: &RequestContext,
        req: &BlobReadRequest,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, HandlerError>> + Send;

    /// Stores `chunk` at `offset` of an upload; `offset` is always the node's current
    /// `received_bytes` for that blob (the transport sends chunks in order). When the
    /// blob is complete the handler verifies its hash.
    fn blob_write(
        &self,
        ctx: &RequestContext,
        req: &BlobWriteRequest,
        offset: u64,
        chunk: Bytes,
    ) -> impl Future<Output = Result<BlobStat, HandlerError>> + Send;

    /// Called once per upload request, after the token checks and before any byte is
    /// read; the guard it returns is held until the request ends, however it ends
    /// (finished, failed, or dropped because its connection went). A handler counts
    /// its open uploads with it, so an abandoned one frees its slot at once; an error
    /// refuses the upload. Default: no limit (a handler that wraps another passes the
    /// call on).
    fn blob_write_begin(
        &self,
        ctx: &RequestContext,
        req: &BlobWriteRequest,
    ) -> Result<BlobWriteGuard, HandlerError> {
        let _ = (ctx, req);
        Ok(BlobWriteGuard::new(()))
    }

    /// The node's health summary.
    fn health(&self) -> impl Future<Output = Result<HealthSummary, HandlerError>> + Send;

    /// A receiver whose value changes whenever the tenant's log grows. Coalescing is
    /// fine: a subscription reads the log, the value is only a wake-up.
    fn changes(&self, tenant: &TenantId) -> watch::Receiver<u64>;
}

/// What [`Handler::blob_write_begin`] hands back: anything the handler wants dropped
/// when the upload request ends.
pub struct BlobWriteGuard {
    _inner: Box<dyn Send>,
}

impl BlobWriteGuard {
    /// A guard that drops `inner` when the upload request ends.
    pub fn new(inner: impl Send + 'static) -> Self {
        Self {
            _inner: Box::new(inner),
        }
    }
}

impl std::fmt::Debug for BlobWriteGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriteGuard").finish_non_exhaustive()
    }
}

pub use crate::config::{REQUESTS_PER_TENANT_MAX_DEFAULT, ServerConfig};

pub(crate) fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Counters a node exposes.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
}

/// A node: a handler behind the transport's checks and limits.
pub struct Node<H> {
    pub(crate) handler: Arc<H>,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) stats: Arc<Stats>,
    subscriptions: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
    pages: Arc<SharedPages>,
    shares: Arc<TenantShares>,
    sessions: Arc<echo::Sessions>,
}

impl<H> Clone for Node<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            config: self.config.clone(),
            stats: self.stats.clone(),
            subscriptions: self.subscriptions.clone(),
            shutdown: self.shutdown.clone(),
            pages: self.pages.clone(),
            shares: self.shares.clone(),
            sessions: self.sessions.clone(),
        }
    }
}

impl<H> std::fmt::Debug for Node<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn auth_reply(e: &AuthError) -> ErrorReply {
    let code = if e.http_status() == 401 {
        ErrorCode::Unauthenticated
    } else {
        ErrorCode::Forbidden
    };
    ErrorReply::new(code, e.to_string())
}

pub(crate) fn frame_reply(e: &FrameError) -> ErrorReply {
    let code = match e {
        FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
        _ => ErrorCode::BadFrame,
    };
    ErrorReply::new(code, e.to_string())
}

impl<H: Handler> Node<H> {
    /// A node serving `handler` with `config`.
    pub fn new(handler: Arc<H>, config: ServerConfig) -> Self {
        let subscriptions = Arc::new(Semaphore::new(config.subscriptions_max));
        Self {
            handler,
            config: Arc::new(config),
            stats: Arc::default(),
            subscriptions,
            shutdown: watch::Sender::new(false),
            pages: Arc::default(),
            sessions: Arc::default(),
            shares: Arc::default(),
        }
    }

    /// The node's configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Open HTTP connections.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Open subscriptions.
    pub fn subscriptions(&self) -> u64 {
        (self.config.subscriptions_max - self.subscriptions.available_permits()) as u64
    }

    /// Waits until every subscription has ended.
    pub(crate) async fn wait_for_subscriptions(&self) {
        let all = u32::try_from(self.config.subscriptions_max).unwrap_or(u32::MAX);
        let _all = self.subscriptions.acquire_many(all).await;
    }

    /// Tells every subscription to close with [`CloseReason::ShuttingDown`](crate::proto::CloseReason::ShuttingDown).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// Parses and verifies a bearer token.
    pub(crate) fn authenticate(&self, bearer: Option<&str>) -> Result<RequestContext, ErrorReply> {
        let text = bearer
            .ok_or(AuthError::Missing)
            .map_err(|e| auth_reply(&e))?;
        let token: Token = text
            .parse()
            .map_err(|e| auth_reply(&AuthError::Malformed(e)))?;
        let claims = token
            .verify(&self.config.key, self.now_ms())
            .map_err(|e| auth_reply(&e))?;
        Ok(RequestContext {
            claims: claims.clone(),
        })
    }

    fn authorize(&self, ctx: &RequestContext, request: &Request) -> Result<(), ErrorReply> {
        match request_needs(request) {
            Some((tenant, scope, actions)) => ctx
                .claims
                .authorize(tenant, scope, actions, self.now_ms())
                .map_err(|e| auth_reply(&e)),
            // Health needs a valid token, which `authenticate` checked.
            None => Ok(()),
        }
    }

    /// A slot of the request's tenant's share of in-flight requests (none for health).
    fn share(&self, request: &Request) -> Result<Option<ShareGuard>, ErrorReply> {
        match request_needs(request) {
            Some((tenant, _, _)) => self
                .shares
                .enter(tenant, self.config.requests_per_tenant_max)
                .map(Some),
            None => Ok(None),
        }
    }

    /// Decodes a request frame.
    pub(crate) fn decode_request(&self, bytes: &[u8]) -> Result<Request, ErrorReply> {
        let request = frame::decode::<Request>(bytes, self.config.frame_bytes_max)
            .map_err(|e| frame_reply(&e))?;
        if let Request::WriteBatch(r) | Request::WriteBatchPlaced(r) = &request {
            check_count("write batch", r.messages.len(), self.batch_messages_max())
                .map_err(|e| frame_reply(&e))?;
        }
        Ok(request)
    }

    /// Most messages this node accepts in one write batch: [`BATCH_MESSAGES_WIDE_MAX`]
    /// when [`ServerConfig::wide_batches`] (and it says so on its replies), else
    /// [`BATCH_MESSAGES_MAX`], as a node from before wide batches.
    pub fn batch_messages_max(&self) -> usize {
        if self.config.wide_batches {
            BATCH_MESSAGES_WIDE_MAX
        } else {
            BATCH_MESSAGES_MAX
        }
    }

    /// Serves one request/reply call (not blob transfers): authorizes it against the
    /// verified claims, then calls the handler within the request time limit.
    pub(crate) async fn call(
        &self,
        ctx: &RequestContext,
        request: Request,
    ) -> Result<Reply, ErrorReply> {
        self.call_in_session(ctx, request, None).await
    }

    /// [`call`](Self::call) from a client that named its `session` (see [`echo`]).
    pub(crate) async fn call_in_session(
        &self,
        ctx: &RequestContext,
        request: Request,
        session: Option<echo::SessionId>,
    ) -> Result<Reply, ErrorReply> {
        self.authorize(ctx, &request)?;
        let _share = self.share(&request)?;
        let limit = ms(self.config.request_time_ms_max);
        match tokio::time::timeout(limit, self.dispatch(ctx, request, session)).await {
            Ok(r) => r,
            Err(_) => Err(ErrorReply::new(
                ErrorCode::Timeout,
                format!(
                    "request took longer than {} ms",
                    self.config.request_time_ms_max
                ),
            )),
        }
    }

    async fn dispatch(
        &self,
        ctx: &RequestContext,
        request: Request,
        session: Option<echo::SessionId>,
    ) -> Result<Reply, ErrorReply> {
        let h = &self.handler;
        let e = |e: HandlerError| e.to_reply();
        Ok(match request {
            Request::Root(r) => Reply::Root(h.root(ctx, r).await.map_err(e)?),
            Request::Diff(r) => Reply::Diff(h.diff_round(ctx, r).await.map_err(e)?),
            Request::LogPage(r) => Reply::LogPage(h.log_page(ctx, r).await.map_err(e)?),
            Request::ReadMessages(r) => {
                Reply::ReadMessages(h.read_messages(ctx, r).await.map_err(e)?)
            }
            Request::WriteBatch(r) => Reply::WriteBatch(WriteBatchReply {
                outcomes: self.write_batch(ctx, r, false).await?.0,
            }),
            Request::WriteBatchPlaced(r) => {
                // Noted before the apply, so the session's subscription finds them when
                // the commit wakes it (see `echo`).
                if let Some(session) = session {
                    let key = (session, r.tenant.clone(), ctx.claims.grant_id.clone());
                    self.sessions
                        .note(&key, r.messages.iter().map(|m| m.message.cid()));
                }
                let (outcomes, placed) = self.write_batch(ctx, r, true).await?;
                Reply::WriteBatchPlaced(PlacedBatchReply { outcomes, placed })
            }
            Request::LogPageKnown(r) => Reply::LogPage(
                echo::known_page(&**h, ctx, r.page, &r.known)
                    .await
                    .map_err(e)?,
            ),
            Request::LogPageHead(r) => {
                let HeadLogPageRequest {
                    page: req,
                    known,
                    count_remaining,
                } = r;
                let reply = match &known {
                    Some(known) => echo::known_page(&**h, ctx, req.clone(), known).await,
                    None => h.log_page(ctx, req.clone()).await,
                }
                .map_err(e)?;
                let extent = match &reply {
                    LogPageReply::Page(page) => {
                        let query = LogExtentQuery {
                            after: page.next,
                            req,
                            known,
                            count: count_remaining,
                        };
                        h.log_extent(ctx, query).await.map_err(e)?
                    }
                    LogPageReply::Gap(_) => LogExtent::default(),
                };
                Reply::LogPageHead(HeadedLogPage { reply, extent })
            }
            Request::BlobStat(r) => Reply::Blob(h.blob_stat(ctx, r).await.map_err(e)?),
            Request::Health => Reply::Health(HealthReply {
                protocol_versions: frame::SUPPORTED_VERSIONS.to_vec(),
                summary: h.health().await.map_err(e)?,
                connections: self.connections(),
                subscriptions: self.subscriptions(),
            }),
            Request::BlobRead(_) | Request::BlobWrite(_) => {
                return Err(ErrorReply::new(
                    ErrorCode::BadRequest,
                    "blob transfers use their own calls (/v1/blob/read, /v1/blob/write)",
                ));
            }
        })
    }

    /// Answers out-of-tenant and out-of-scope messages here, passes the rest to the
    /// handler, and merges the outcomes back in request order.
    /// With `placed`, the handler also says where its log holds what it applied.
    async fn write_batch(
        &self,
        ctx: &RequestContext,
        req: crate::proto::WriteBatchRequest,
        placed: bool,
    ) -> Result<(Vec<ApplyOutcome>, Option<KnownRanges>), ErrorReply> {
        let scope = &ctx.claims.scope;
        let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; req.messages.len()];
        let mut passed = Vec::with_capacity(req.messages.len());
        for (i, item) in req.messages.into_iter().enumerate() {
            if *item.message.tenant() != req.tenant {
                outcomes[i] = Some(ApplyOutcome::invalid(
                    "message belongs to another tenant than the batch",
                ));
                continue;
            }
            // The transport holds no records: a delete under a partial projection is
            // `Unknown` here and the handler classifies it through its record.
            let Ok(class) = scope.gate(Direction::Push, &item.message, &NoInitialWrites);
            if class == ScopeClass::OutOfScope {
                outcomes[i] = Some(ApplyOutcome::Unauthorized);
            } else {
                passed.push((i, item));
            }
        }
        let (indices, items): (Vec<usize>, Vec<MessageData>) = passed.into_iter().unzip();
        let mut known = None;
        if !items.is_empty() {
            let applied = if placed {
                let (applied, k) = self
                    .handler
                    .apply_placed(ctx, &req.tenant, items)
                    .await
                    .map_err(|e| e.to_reply())?;
                known = k;
                applied
            } else {
                self.handler
                    .apply(ctx, &req.tenant, items)
                    .await
                    .map_err(|e| e.to_reply())?
            };
            if applied.len() != indices.len() {
                return Err(ErrorReply::new(
                    ErrorCode::Internal,
                    format!(
                        "handler returned {} outcomes for {} messages",
                        applied.len(),
                        indices.len()
                    ),
                ));
            }
            for (i, o) in indices.into_iter().zip(applied) {
                outcomes[i] = Some(o);
            }
        }
        Ok((outcomes.into_iter().flatten().collect(), known))
    }

    /// Opens a blob download: checks, then the head and a stream of exactly `head.len`
    /// bytes read from the handler chunk by chunk.
    pub(crate) async fn blob_read(
        &self,
        ctx: &RequestContext,
        req: BlobReadRequest,
    ) -> Result<
        (
            BlobReadHead,
            impl Stream<Item = Result<Bytes, HandlerError>> + Send + 'static,
        ),
        ErrorReply,
    > {
        self.authorize(ctx, &Request::BlobRead(req.clone()))?;
        let share = self.share(&Request::BlobRead(req.clone()))?;
        let stat_req = BlobStatRequest {
            tenant: req.tenant.clone(),
            scope: req.scope.clone(),
            cid: req.cid,
        };
        let limit = ms(self.config.request_time_ms_max);
        let stat = tokio::time::timeout(limit, self.handler.blob_stat(ctx, stat_req))
            .await
            .map_err(|_| ErrorReply::new(ErrorCode::Timeout, "blob stat timed out"))?
            .map_err(|e| e.to_reply())?;
        let total_size = match (stat.complete, stat.size) {
            (true, Some(size)) => size,
            _ => {
                return Err(ErrorReply::new(
                    ErrorCode::NotFound,
                    "blob is not complete on this node",
                ));
            }
        };
        if req.offset > total_size {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!("offset {} is past the blob's end {total_size}", req.offset),
            ));
        }
        let len = req.len.min(total_size - req.offset);
        let head = BlobReadHead {
            total_size,
            offset: req.offset,
            len,
        };
        let chunk = u64::from(self.config.blob_chunk_bytes.max(1));
        let idle = ms(self.config.transfer_idle_ms_max);
        let end = req.offset + len;
        // The first chunk is read before the head is sent, so a blob store that cannot
        // be read (its bucket unreachable, its database restarting) is an error reply
        // (503 for a transient failure) and not a download cut after its head.
        let first = if len > 0 {
            let want = u32::try_from(len.min(chunk)).unwrap_or(u32::MAX);
            read_chunk(&*self.handler, ctx, &req, req.offset, want, idle)
                .await
                .map_err(|e| e.to_reply())?
        } else {
            Bytes::new()
        };
        let handler = self.handler.clone();
        let ctx = ctx.clone();
        let after_first = req.offset + first.len() as u64;
        let rest = futures_util::stream::unfold((after_first, false), move |(offset, failed)| {
            // The tenant's slot lives as long as the body stream does.
            let _share = &share;
            let handler = handler.clone();
            let ctx = ctx.clone();
            let req = req.clone();
            async move {
                if offset >= end || failed {
                    return None;
                }
                let want = u32::try_from((end - offset).min(chunk)).unwrap_or(u32::MAX);
                match read_chunk(&*handler, &ctx, &req, offset, want, idle).await {
                    Ok(bytes) => {
                        let next = offset + bytes.len() as u64;
                        Some((Ok(bytes), (next, false)))
                    }
                    Err(e) => {
                        tracing::warn!(
                            cid = %req.cid, offset, error = %e,
                            "a blob read failed during a download; its connection is cut"
                        );
                        Some((Err(e), (offset, true)))
                    }
                }
            }
        });
        let first = (!first.is_empty()).then_some(Ok(first));
        let stream = futures_util::stream::iter(first).chain(rest);
        Ok((head, stream))
    }

    /// Stores an upload: chunks from `body` in order, each within the transfer idle
    /// limit, exactly `req.len` bytes in total.
    pub(crate) async fn blob_write<S, E>(
        &self,
        ctx: &RequestContext,
        req: BlobWriteRequest,
        body: S,
    ) -> Result<BlobStat, ErrorReply>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.authorize(ctx, &Request::BlobWrite(req.clone()))?;
        let _slot = self
            .handler
            .blob_write_begin(ctx, &req)
            .map_err(|e| e.to_reply())?;
        let idle = ms(self.config.transfer_idle_ms_max);
        let mut body = std::pin::pin!(body);
        let mut offset = req.offset;
        let end = req.offset + req.len;
        let mut last = None;
        loop {
            let next = tokio::time::timeout(idle, body.next()).await.map_err(|_| {
                ErrorReply::new(
                    ErrorCode::Timeout,
                    format!(
                        "upload stalled at byte {offset} for {} ms",
                        self.config.transfer_idle_ms_max
                    ),
                )
            })?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| {
                ErrorReply::new(ErrorCode::BadRequest, format!("upload body failed: {e}"))
            })?;
            if chunk.is_empty() {
                continue;
            }
            if offset + chunk.len() as u64 > end {
                return Err(ErrorReply::new(
                    ErrorCode::BadRequest,
                    format!("upload is longer than its declared {} bytes", req.len),
                ));
            }
            let n = chunk.len() as u64;
            let stat =
                tokio::time::timeout(idle, self.handler.blob_write(ctx, &req, offset, chunk))
                    .await
                    .map_err(|_| ErrorReply::new(ErrorCode::Timeout, "blob write timed out"))?
                    .map_err(|e| e.to_reply())?;
            offset += n;
            last = Some(stat);
        }
        if offset != end {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "upload ended after {} of its declared {} bytes",
                    offset - req.offset,
                    req.len
                ),
            ));
        }
        match last {
            Some(stat) => Ok(stat),
            None => self
                .handler
                .blob_stat(
                    ctx,
                    BlobStatRequest {
                        tenant: req.tenant.clone(),
                        // The grant, not the whole tenant: a writer learns no more
                        // about a blob than its token lets it read.
                        scope: ctx.claims.scope.clone(),
                        cid: req.cid,
                    },
                )
                .await
                .map_err(|e| e.to_reply()),
        }
    }
}

/// One chunk of a download: at most `want` bytes at `offset`, within the transfer idle
/// limit; a handler that answers nothing or too much fails the read.
async fn read_chunk<H: Handler>(
    handler: &H,
    ctx: &RequestContext,
    req: &BlobReadRequest,
    offset: u64,
    want: u32,
    idle: Duration,
) -> Result<Bytes, HandlerError> {
    let bytes = tokio::time::timeout(idle, handler.blob_read(ctx, req, offset, want))
        .await
        .unwrap_or_else(|_| Err(HandlerError::Unavailable("blob read timed out".into())))?;
    if bytes.is_empty() || bytes.len() > want as usize {
        return Err(HandlerError::Internal(format!(
            "handler returned {} bytes for a read of {want} at {offset}",
            bytes.len()
        )));
    }
    Ok(bytes)
}
