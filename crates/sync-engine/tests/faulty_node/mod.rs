//! A node handler with injected faults, shared by the test files that need one: every
//! call goes to a real `ReplicaHandler`, except what a fault changes.

// Each test file uses some of the faults, not all.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sync_engine::ReplicaHandler;
use sync_transport::HandlerError;
use sync_transport::node::{BlobWriteGuard, Handler, RequestContext};
use sync_transport::proto::*;
use sync_types::{ApplyOutcome, HealthSummary, TenantId};
use tokio::sync::watch;

/// What happens to the node's change notifications.
#[derive(Clone)]
enum Wakeups {
    /// Passed on.
    Real,
    /// Lost: subscribers only find new entries by the periodic re-read.
    Lost(watch::Sender<u64>),
    /// Every real one plus a stream of spurious ones.
    Repeated,
}

/// A `ReplicaHandler` with faults; see the builder methods.
#[derive(Clone)]
pub(crate) struct FaultyNode {
    inner: ReplicaHandler,
    wakeups: Wakeups,
    /// When set, the first blob range served after offset 0 has one byte flipped; counts
    /// the ranges served after offset 0.
    corrupt_blob_reads: Option<Arc<AtomicUsize>>,
    /// When set, blob writes wait until it holds `true`.
    hold_blob_writes: Option<watch::Receiver<bool>>,
    /// When set, counts the blob writes in progress (`.0`) and the most seen at once
    /// (`.1`); each write then lasts at least `.2`.
    blob_writes_in_flight: Option<(Arc<AtomicUsize>, Arc<AtomicUsize>, Duration)>,
}

impl FaultyNode {
    /// No faults yet.
    pub(crate) fn new(inner: ReplicaHandler) -> Self {
        Self {
            inner,
            wakeups: Wakeups::Real,
            corrupt_blob_reads: None,
            hold_blob_writes: None,
            blob_writes_in_flight: None,
        }
    }

    /// Blob writes wait until `open` holds `true` (a slow upload link).
    pub(crate) fn hold_blob_writes(self, open: watch::Receiver<bool>) -> Self {
        Self {
            hold_blob_writes: Some(open),
            ..self
        }
    }

    /// Each blob write lasts at least `each`; `max` receives the most blob writes seen
    /// in progress at once.
    pub(crate) fn count_blob_writes(self, max: Arc<AtomicUsize>, each: Duration) -> Self {
        Self {
            blob_writes_in_flight: Some((Arc::default(), max, each)),
            ..self
        }
    }

    /// Change notifications are lost.
    pub(crate) fn lose_wakeups(self) -> Self {
        Self {
            wakeups: Wakeups::Lost(watch::channel(0).0),
            ..self
        }
    }

    /// Change notifications are repeated many times over.
    pub(crate) fn repeat_wakeups(self) -> Self {
        Self {
            wakeups: Wakeups::Repeated,
            ..self
        }
    }

    /// One byte of the first blob range served after offset 0 is flipped; `counter`
    /// counts the ranges served after offset 0.
    pub(crate) fn corrupt_first_blob_range(self, counter: Arc<AtomicUsize>) -> Self {
        Self {
            corrupt_blob_reads: Some(counter),
            ..self
        }
    }
}

impl Handler for FaultyNode {
    async fn root(
        &self,
        ctx: &RequestContext,
        req: RootRequest,
    ) -> Result<RootReply, HandlerError> {
        self.inner.root(ctx, req).await
    }
    async fn diff_round(
        &self,
        ctx: &RequestContext,
        req: DiffRequest,
    ) -> Result<DiffReply, HandlerError> {
        self.inner.diff_round(ctx, req).await
    }
    async fn log_page(
        &self,
        ctx: &RequestContext,
        req: LogPageRequest,
    ) -> Result<LogPageReply, HandlerError> {
        self.inner.log_page(ctx, req).await
    }
    async fn read_messages(
        &self,
        ctx: &RequestContext,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, HandlerError> {
        self.inner.read_messages(ctx, req).await
    }
    async fn apply(
        &self,
        ctx: &RequestContext,
        tenant: &TenantId,
        messages: Vec<MessageData>,
    ) -> Result<Vec<ApplyOutcome>, HandlerError> {
        self.inner.apply(ctx, tenant, messages).await
    }
    async fn blob_stat(
        &self,
        ctx: &RequestContext,
        req: BlobStatRequest,
    ) -> Result<BlobStat, HandlerError> {
        self.inner.blob_stat(ctx, req).await
    }
    async fn blob_read(
        &self,
        ctx: &RequestContext,
        req: &BlobReadRequest,
        offset: u64,
        len: u32,
    ) -> Result<bytes::Bytes, HandlerError> {
        let bytes = self.inner.blob_read(ctx, req, offset, len).await?;
        if let Some(counter) = &self.corrupt_blob_reads
            && offset > 0
            && counter.fetch_add(1, Ordering::SeqCst) == 0
        {
            let mut v = bytes.to_vec();
            v[7] ^= 0x40;
            return Ok(v.into());
        }
        Ok(bytes)
    }
    fn blob_write_begin(
        &self,
        ctx: &RequestContext,
        req: &BlobWriteRequest,
    ) -> Result<BlobWriteGuard, HandlerError> {
        self.inner.blob_write_begin(ctx, req)
    }
    async fn blob_write(
        &self,
        ctx: &RequestContext,
        req: &BlobWriteRequest,
        offset: u64,
        chunk: bytes::Bytes,
    ) -> Result<BlobStat, HandlerError> {
        if let Some(open) = &self.hold_blob_writes {
            let mut open = open.clone();
            let _ = open.wait_for(|o| *o).await;
        }
        let Some((now, max, each)) = &self.blob_writes_in_flight else {
            return self.inner.blob_write(ctx, req, offset, chunk).await;
        };
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(*each).await;
        let result = self.inner.blob_write(ctx, req, offset, chunk).await;
        now.fetch_sub(1, Ordering::SeqCst);
        result
    }
    async fn health(&self) -> Result<HealthSummary, HandlerError> {
        self.inner.health().await
    }
    fn changes(&self, tenant: &TenantId) -> watch::Receiver<u64> {
        match &self.wakeups {
            Wakeups::Real => self.inner.changes(tenant),
            Wakeups::Lost(quiet) => quiet.subscribe(),
            Wakeups::Repeated => {
                let real = self.inner.changes(tenant);
                let (tx, rx) = watch::channel(0u64);
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !tx.is_closed() {
                        n += 1;
                        tx.send_replace(n);
                        let _ = real.has_changed();
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                });
                rx
            }
        }
    }
}
