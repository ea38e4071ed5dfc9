//! The [`Remote`] trait the engine talks to a node through, and what its calls carry
//! (blob uploads and downloads, subscriptions).

#[allow(clippy::wildcard_imports)]
use super::*;

/// The bytes of a blob upload, in order.
pub type BlobSource = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A blob download: the head and exactly `head.len` bytes.
pub struct BlobDownload {
    /// Total size, offset and length of the range.
    pub head: BlobReadHead,
    /// The bytes of the range, in order; an error ends it.
    pub bytes: BoxStream<'static, Result<Bytes, TransportError>>,
}

impl std::fmt::Debug for BlobDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobDownload")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl BlobDownload {
    /// Collects the range into memory (for small ranges and tests).
    pub async fn collect(mut self) -> Result<Vec<u8>, TransportError> {
        let mut out = Vec::with_capacity(usize::try_from(self.head.len).unwrap_or(0).min(1 << 20));
        while let Some(chunk) = self.bytes.next().await {
            out.extend_from_slice(&chunk?);
        }
        if out.len() as u64 != self.head.len {
            return Err(TransportError::Unreachable(format!(
                "blob range ended after {} of {} bytes",
                out.len(),
                self.head.len
            )));
        }
        Ok(out)
    }
}

/// What a subscription delivers.
#[derive(Clone, PartialEq, Eq, Debug)]
#[allow(clippy::large_enum_variant)] // events are the common item
pub enum SubscriptionItem {
    /// A stored or live event.
    Event(LogEntry),
    /// Every stored event up to `cursor` was delivered; what follows is live.
    EndOfStored {
        /// The last token the node read.
        cursor: Option<ProgressToken>,
    },
    /// The cursor cannot be served: reconcile, then resubscribe from
    /// `latest_available`. The subscription closes after this.
    Gap(Gap),
    /// The subscription ended; nothing follows.
    Closed(CloseReason),
}

pub(super) enum SubscriptionInner {
    Local(Feed),
    Remote {
        rx: mpsc::Receiver<Notice>,
        task: tokio::task::JoinHandle<()>,
    },
    Done,
}

/// An open subscription. Dropping it closes it.
pub struct Subscription {
    pub(super) inner: SubscriptionInner,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next item; `None` after [`SubscriptionItem::Closed`].
    pub async fn next(&mut self) -> Option<SubscriptionItem> {
        let notice = match &mut self.inner {
            SubscriptionInner::Local(feed) => feed.next().await,
            SubscriptionInner::Remote { rx, .. } => rx.recv().await,
            SubscriptionInner::Done => return None,
        };
        let item = match notice {
            Some(Notice::Event(e)) => SubscriptionItem::Event(e),
            Some(Notice::EndOfStored { cursor }) => SubscriptionItem::EndOfStored { cursor },
            Some(Notice::Gap(g)) => SubscriptionItem::Gap(g),
            Some(Notice::Closing(r)) => SubscriptionItem::Closed(r),
            None => SubscriptionItem::Closed(CloseReason::error("subscription ended")),
        };
        if matches!(item, SubscriptionItem::Closed(_)) {
            self.inner = SubscriptionInner::Done;
        }
        Some(item)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let SubscriptionInner::Remote { task, .. } = &self.inner {
            task.abort();
        }
    }
}

/// How the engine talks to one remote node. Every call returns a
/// [`TransportError`] that tells retryable failures from permanent refusals.
pub trait Remote: Send + Sync {
    /// The root of the tenant's tree over a scope.
    fn root(
        &self,
        req: RootRequest,
    ) -> impl Future<Output = Result<RootReply, TransportError>> + Send;
    /// One SMT diff round.
    fn diff_round(
        &self,
        req: DiffRequest,
    ) -> impl Future<Output = Result<DiffReply, TransportError>> + Send;
    /// A page of the tenant's log, or a gap.
    fn log_page(
        &self,
        req: LogPageRequest,
    ) -> impl Future<Output = Result<LogPageReply, TransportError>> + Send;
    /// Messages by cid.
    fn read_messages(
        &self,
        req: ReadMessagesRequest,
    ) -> impl Future<Output = Result<ReadMessagesReply, TransportError>> + Send;
    /// Writes a batch; one outcome per message.
    fn write_batch(
        &self,
        req: WriteBatchRequest,
    ) -> impl Future<Output = Result<WriteBatchReply, TransportError>> + Send;
    /// Writes a batch and learns where the node's log holds what it applied (for no
    /// echo: the client then leaves those positions out of its pulls). Default:
    /// [`write_batch`](Self::write_batch), without positions.
    fn write_batch_placed(
        &self,
        req: WriteBatchRequest,
    ) -> impl Future<Output = Result<PlacedBatchReply, TransportError>> + Send {
        async move {
            let reply = self.write_batch(req).await?;
            Ok(PlacedBatchReply {
                outcomes: reply.outcomes,
                placed: None,
            })
        }
    }
    /// Most messages a write batch to this remote may hold now: what its node said it
    /// accepts ([`BATCH_MESSAGES_WIDE_MAX`](crate::proto::BATCH_MESSAGES_WIDE_MAX) after
    /// a reply listed the `wide-batch` token), else
    /// [`BATCH_MESSAGES_MAX`](crate::proto::BATCH_MESSAGES_MAX), which every node
    /// accepts. It may change between calls (a failover, a node replaced). Default:
    /// `BATCH_MESSAGES_MAX`; a wrapper forwards its inner remote's.
    fn batch_messages_max(&self) -> usize {
        crate::proto::BATCH_MESSAGES_MAX
    }
    /// A page of the tenant's log without the entries at `req.known`, or a gap.
    /// Default: [`log_page`](Self::log_page), with every entry.
    fn log_page_known(
        &self,
        req: KnownLogPageRequest,
    ) -> impl Future<Output = Result<LogPageReply, TransportError>> + Send {
        self.log_page(req.page)
    }
    /// A page of the tenant's log (without the entries at `req.known`) with the log's
    /// extent: its head and, when asked, what is left after the page. Default:
    /// [`log_page_known`](Self::log_page_known) or [`log_page`](Self::log_page), with
    /// nothing known of the extent.
    fn log_page_head(
        &self,
        req: HeadLogPageRequest,
    ) -> impl Future<Output = Result<HeadedLogPage, TransportError>> + Send {
        async move { page_without_head(self, req).await }
    }
    /// How much of a blob the node holds.
    fn blob_stat(
        &self,
        req: BlobStatRequest,
    ) -> impl Future<Output = Result<BlobStat, TransportError>> + Send;
    /// Downloads a byte range of a complete blob.
    fn blob_read(
        &self,
        req: BlobReadRequest,
    ) -> impl Future<Output = Result<BlobDownload, TransportError>> + Send;
    /// Uploads exactly `req.len` bytes from `source` at `req.offset`.
    fn blob_write(
        &self,
        req: BlobWriteRequest,
        source: BlobSource,
    ) -> impl Future<Output = Result<BlobStat, TransportError>> + Send;
    /// The node's health.
    fn health(&self) -> impl Future<Output = Result<HealthReply, TransportError>> + Send;
    /// Opens a subscription.
    fn subscribe(
        &self,
        req: SubscribeRequest,
    ) -> impl Future<Output = Result<Subscription, TransportError>> + Send;
    /// [`subscribe`](Self::subscribe) without the entries at `known` (positions of the
    /// node's log this replica holds; see [`echo`](crate::node::echo)). Default:
    /// `subscribe`, with every entry.
    fn subscribe_known(
        &self,
        req: SubscribeRequest,
        known: Option<KnownRanges>,
    ) -> impl Future<Output = Result<Subscription, TransportError>> + Send {
        let _ = known;
        self.subscribe(req)
    }
}

/// The page of `req` by the older calls, with nothing known of the log's extent: for a
/// remote that does not implement [`Remote::log_page_head`] or a node before it.
pub async fn page_without_head<R: Remote + ?Sized>(
    remote: &R,
    req: HeadLogPageRequest,
) -> Result<HeadedLogPage, TransportError> {
    let reply = match req.known {
        Some(known) => {
            remote
                .log_page_known(KnownLogPageRequest {
                    page: req.page,
                    known,
                })
                .await?
        }
        None => remote.log_page(req.page).await?,
    };
    Ok(HeadedLogPage {
        reply,
        extent: LogExtent::default(),
    })
}
