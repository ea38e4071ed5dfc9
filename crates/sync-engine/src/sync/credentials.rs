//! Credentials that refresh: an app-supplied [`Credentials`] provider, asked for the
//! token to present at an endpoint, and [`CredentialsConnector`], which wraps any
//! [`Connector`] so the engine presents the provider's token instead of the registered
//! one.
//!
//! The provider is asked with `refresh` false when a client is made; with `refresh` true
//! when the current token expires within [`REFRESH_MARGIN_MS_DEFAULT`] (read from its
//! claims, without verifying) or when the node refused it (`Unauthenticated`: expired,
//! revoked key). After a refusal the call is made again once with the fresh token, so an
//! operation (a catch-up page, a push batch, a subscription) goes on where it was: the
//! link keeps its checkpoints and nothing is pulled again. A blob upload cannot be
//! replayed (its source is consumed): it fails, with the fresh token in place for the
//! retry the engine makes.
//!
//! The link is the registered identity's (scope and authorization come from the token
//! registered with [`Identity`](crate::Identity)); the provider's tokens must carry the
//! same grants. An owner's token refreshes within one link; a delegate's grants carry
//! their expiry, so a delegate token with a later expiry is a new identity to register.

use std::future::Future;
use std::sync::{Arc, Mutex};

use sync_transport::client::{BlobDownload, BlobSource, Subscription};
use sync_transport::proto::{
    BlobReadRequest, BlobStat, BlobStatRequest, BlobWriteRequest, DiffReply, DiffRequest,
    ErrorCode, HeadLogPageRequest, HeadedLogPage, HealthReply, KnownLogPageRequest, LogPageReply,
    LogPageRequest, PlacedBatchReply, ReadMessagesReply, ReadMessagesRequest, RootReply,
    RootRequest, SubscribeRequest, WriteBatchReply, WriteBatchRequest,
};
use sync_transport::{Connector, Remote, Token, TransportError};
use sync_types::{Clock, Endpoint, KnownRanges, SystemClock};

use super::lock;

/// A token that expires within this long is refreshed before it is used.
pub const REFRESH_MARGIN_MS_DEFAULT: u64 = 60_000;

/// Where the engine gets the token to present at an endpoint. Called on the engine's
/// tasks: return quickly (a cached token; an app that refreshes over the network does so
/// in the background and hands out the latest).
pub trait Credentials: Send + Sync + 'static {
    /// The token text for `endpoint`; `None` presents the registered identity's token.
    /// `refresh` is true when the last token is about to expire or was refused: return a
    /// newer one if there is one. An error is reported as the endpoint being
    /// unreachable, so the engine retries later.
    fn token(&self, endpoint: &Endpoint, refresh: bool) -> Result<Option<String>, String>;
}

impl<F> Credentials for F
where
    F: Fn(&Endpoint, bool) -> Result<Option<String>, String> + Send + Sync + 'static,
{
    fn token(&self, endpoint: &Endpoint, refresh: bool) -> Result<Option<String>, String> {
        self(endpoint, refresh)
    }
}

struct Shared<C> {
    inner: C,
    provider: Arc<dyn Credentials>,
    clock: Arc<dyn Clock + Send + Sync>,
    refresh_margin_ms: u64,
}

impl<C: Connector> Shared<C> {
    fn provider_err(e: String) -> TransportError {
        TransportError::Unreachable(format!("the credentials provider failed: {e}"))
    }

    /// A client of `endpoint` with the provider's token, refreshed first when `refresh`
    /// or when it expires within the margin.
    fn connect(
        &self,
        endpoint: &Endpoint,
        registered: Option<&str>,
        refresh: bool,
    ) -> Result<C::Remote, TransportError> {
        let mut token = self
            .provider
            .token(endpoint, refresh)
            .map_err(Self::provider_err)?;
        if !refresh
            && token
                .as_deref()
                .or(registered)
                .is_some_and(|t| self.expires_soon(t))
        {
            token = self
                .provider
                .token(endpoint, true)
                .map_err(Self::provider_err)?;
        }
        self.inner
            .connect(endpoint, token.as_deref().or(registered))
    }

    fn expires_soon(&self, token: &str) -> bool {
        token.trim().parse::<Token>().is_ok_and(|t| {
            let expires = t.unverified_claims().expires_at_ms;
            self.clock.now_ms().saturating_add(self.refresh_margin_ms) >= expires
        })
    }
}

/// A [`Connector`] that presents the tokens of a [`Credentials`] provider, refreshing
/// them before they expire and after a refusal (and then making the refused call once
/// more with the fresh token, so an operation goes on where it was and the link keeps
/// its checkpoints).
pub struct CredentialsConnector<C> {
    shared: Arc<Shared<C>>,
}

impl<C> std::fmt::Debug for CredentialsConnector<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsConnector")
            .field("refresh_margin_ms", &self.shared.refresh_margin_ms)
            .finish_non_exhaustive()
    }
}

impl<C: Connector> CredentialsConnector<C> {
    /// Wraps `inner`; tokens come from `provider`, expiries are judged by the system
    /// clock with [`REFRESH_MARGIN_MS_DEFAULT`].
    pub fn new(inner: C, provider: Arc<dyn Credentials>) -> Self {
        Self::with_clock(
            inner,
            provider,
            Arc::new(SystemClock),
            REFRESH_MARGIN_MS_DEFAULT,
        )
    }

    /// [`new`](Self::new) with the clock and margin expiries are judged by.
    pub fn with_clock(
        inner: C,
        provider: Arc<dyn Credentials>,
        clock: Arc<dyn Clock + Send + Sync>,
        refresh_margin_ms: u64,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                inner,
                provider,
                clock,
                refresh_margin_ms,
            }),
        }
    }

    /// The connector it wraps (to ask it what it knows, such as the node a failover
    /// endpoint last reached).
    pub fn inner(&self) -> &C {
        &self.shared.inner
    }
}

impl<C: Connector> Connector for CredentialsConnector<C> {
    type Remote = CredentialedRemote<C>;

    /// The provider's token, or the registered one when it has none.
    fn connect(
        &self,
        endpoint: &Endpoint,
        registered: Option<&str>,
    ) -> Result<CredentialedRemote<C>, TransportError> {
        let remote = self.shared.connect(endpoint, registered, false)?;
        Ok(CredentialedRemote {
            shared: self.shared.clone(),
            endpoint: endpoint.clone(),
            registered: registered.map(str::to_owned),
            remote: Mutex::new(Arc::new(remote)),
        })
    }
}

/// The remote of a [`CredentialsConnector`]: a call the node refuses as unauthenticated
/// is made again once, with a refreshed token.
pub struct CredentialedRemote<C: Connector> {
    shared: Arc<Shared<C>>,
    endpoint: Endpoint,
    registered: Option<String>,
    remote: Mutex<Arc<C::Remote>>,
}

impl<C: Connector> std::fmt::Debug for CredentialedRemote<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialedRemote")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn refused<T>(r: &Result<T, TransportError>) -> bool {
    matches!(r, Err(e) if e.code() == Some(ErrorCode::Unauthenticated))
}

impl<C: Connector> CredentialedRemote<C> {
    fn current(&self) -> Arc<C::Remote> {
        lock(&self.remote).clone()
    }

    /// A client with a refreshed token, in place for the calls that follow.
    fn refresh(&self) -> Result<Arc<C::Remote>, TransportError> {
        let fresh = Arc::new(self.shared.connect(
            &self.endpoint,
            self.registered.as_deref(),
            true,
        )?);
        *lock(&self.remote) = fresh.clone();
        Ok(fresh)
    }

    /// Calls `f`; after an `Unauthenticated` refusal, refreshes and calls it once more.
    async fn with_refresh<T, F, Fut>(&self, f: F) -> Result<T, TransportError>
    where
        F: Fn(Arc<C::Remote>) -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
    {
        let first = f(self.current()).await;
        if !refused(&first) {
            return first;
        }
        tracing::debug!(endpoint = %self.endpoint, "token refused; asking for a fresh one");
        f(self.refresh()?).await
    }
}

impl<C: Connector> Remote for CredentialedRemote<C> {
    fn batch_messages_max(&self) -> usize {
        self.current().batch_messages_max()
    }
    async fn root(&self, req: RootRequest) -> Result<RootReply, TransportError> {
        self.with_refresh(|r| {
            let req = req.clone();
            async move { r.root(req).await }
        })
        .await
    }
    async fn diff_round(&self, req: DiffRequest) -> Result<DiffReply, TransportError> {
        self.with_refresh(|r| {
            let req = req.clone();
            async move { r.diff_round(req).await }
        })
        .await
    }
    async fn log_page(&self, req: LogPageRequest) -> Result<LogPageReply, TransportError> {
        self.with_refresh(|r| {
            let req = req.clone();
            async move { r.log_page(req).await }
        })
        .await
    }
    async fn log_page_known(
        &self,
        req: KnownLogPageRequest,
    ) -> Result<LogPageReply, TransportError> {
        self.with_refresh(|r| {
            let req = req.clone();
            async move { r.log_page_known(req).await }
        })
        .await
    }
    async fn log_page_head(
        &self,
        req: HeadLogPageRequest,
    ) -> Result<HeadedLogPage, TransportError> {
        self.with_refresh(|r| {
            let req = req.clone();
            async move { r.log_page_head(req).await }
        })
        .await
    }
    async fn write_batch_placed(
        &self,
        req: WriteBatchRequest,
    ) -> Result<PlacedBatchReply, TransportError> {
        self.with_refresh(|r| {
            let req = req.clone();
            async move { r.write_batch_placed(req).await }
        })
        .await
    }
    async fn read_messages(
        &self,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, TransportError> {
        self.with_refresh(|r| {
            let req = req.clone();
            async move { r.read_messages(req).await }
        })
        .await
    }
    async fn write_batch(&self, req: WriteBatchRequest) -> Result<WriteBatchReply, TransportError> {
        // A refused batch was not applied: sending it again is safe.
        self.with_refresh(|r| {
            let req = req.clone();
            async move { r.write_batch(req).await }
        })
        .await
    }
    async fn blob_stat(&self, req: BlobStatRequest) -> Result<BlobStat, TransportError> {
        self.with_refresh(|r| {
            let req = req.clone();
            async move { r.blob_stat(req).await }
        })
        .await
    }
    async fn blob_read(&self, req: BlobReadRequest) -> Result<BlobDownload, TransportError> {
        self.with_refresh(|r| {
            let req = req.clone();
            async move { r.blob_read(req).await }
        })
        .await
    }
    async fn blob_write(
        &self,
        req: BlobWriteRequest,
        source: BlobSource,
    ) -> Result<BlobStat, TransportError> {
        let result = self.current().blob_write(req, source).await;
        if refused(&result) {
            // The source is spent: refresh for the engine's retry.
            self.refresh()?;
        }
        result
    }
    async fn health(&self) -> Result<HealthReply, TransportError> {
        self.with_refresh(|r| async move { r.health().await }).await
    }
    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, TransportError> {
        self.with_refresh(|r| {
            let req = req.clone();
            async move { r.subscribe(req).await }
        })
        .await
    }
    async fn subscribe_known(
        &self,
        req: SubscribeRequest,
        known: Option<KnownRanges>,
    ) -> Result<Subscription, TransportError> {
        self.with_refresh(|r| {
            let (req, known) = (req.clone(), known.clone());
            async move { r.subscribe_known(req, known).await }
        })
        .await
    }
}
