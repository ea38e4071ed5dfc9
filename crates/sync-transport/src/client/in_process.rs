//! The in-process [`Remote`]: a [`Node`] called directly, every frame encoded and
//! decoded as over a socket, so tests and simulations exercise the same checks.

use super::*;

/// A [`Remote`] in the same process: a [`Node`] called directly, no sockets.
#[derive(Debug)]
pub struct InProcessClient<H> {
    node: Node<H>,
    token: String,
}

impl<H> Clone for InProcessClient<H> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            token: self.token.clone(),
        }
    }
}

impl<H: Handler> InProcessClient<H> {
    /// A client of `node` presenting `token`.
    pub fn new(node: Node<H>, token: &Token) -> Self {
        Self {
            node,
            token: token.to_string(),
        }
    }

    /// A client presenting raw token text (for tests of malformed tokens).
    pub fn with_token_text(node: Node<H>, token: impl Into<String>) -> Self {
        Self {
            node,
            token: token.into(),
        }
    }

    /// Round-trips a request through the frame codec and the node, exactly as the
    /// server would: in dense frames where they exist, unless the node's config turns
    /// them off.
    async fn call(&self, request: Request) -> Result<Reply, TransportError> {
        let ctx = self
            .node
            .authenticate(Some(&self.token))
            .map_err(TransportError::refused)?;
        let dense = self.node.config().dense_frames;
        let request = self
            .node
            .decode_request(&encode(&request, dense))
            .map_err(TransportError::refused)?;
        let reply = self
            .node
            .call(&ctx, request)
            .await
            .map_err(TransportError::refused)?;
        Ok(frame::decode::<Reply>(&encode(&reply, dense), usize::MAX)?)
    }
}

/// `body`'s frame, dense when `dense` and it has a dense form.
fn encode<T: frame::Body>(body: &T, dense: bool) -> Vec<u8> {
    dense
        .then(|| frame::encode_dense(body))
        .flatten()
        .unwrap_or_else(|| frame::encode(body))
}

impl<H: Handler> Remote for InProcessClient<H> {
    async fn root(&self, req: RootRequest) -> Result<RootReply, TransportError> {
        expect_reply!(self.call(Request::Root(req)).await?, Root, "root")
    }
    async fn diff_round(&self, req: DiffRequest) -> Result<DiffReply, TransportError> {
        expect_reply!(self.call(Request::Diff(req)).await?, Diff, "diff")
    }
    async fn log_page(&self, req: LogPageRequest) -> Result<LogPageReply, TransportError> {
        expect_reply!(self.call(Request::LogPage(req)).await?, LogPage, "log page")
    }
    async fn read_messages(
        &self,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, TransportError> {
        expect_reply!(
            self.call(Request::ReadMessages(req)).await?,
            ReadMessages,
            "read messages"
        )
    }
    async fn write_batch(&self, req: WriteBatchRequest) -> Result<WriteBatchReply, TransportError> {
        expect_reply!(
            self.call(Request::WriteBatch(req)).await?,
            WriteBatch,
            "write batch"
        )
    }
    async fn write_batch_placed(
        &self,
        req: WriteBatchRequest,
    ) -> Result<PlacedBatchReply, TransportError> {
        expect_reply!(
            self.call(Request::WriteBatchPlaced(req)).await?,
            WriteBatchPlaced,
            "placed write batch"
        )
    }
    fn batch_messages_max(&self) -> usize {
        self.node.batch_messages_max()
    }
    async fn log_page_known(
        &self,
        req: KnownLogPageRequest,
    ) -> Result<LogPageReply, TransportError> {
        expect_reply!(
            self.call(Request::LogPageKnown(req)).await?,
            LogPage,
            "log page"
        )
    }
    async fn log_page_head(
        &self,
        req: HeadLogPageRequest,
    ) -> Result<HeadedLogPage, TransportError> {
        expect_reply!(
            self.call(Request::LogPageHead(req)).await?,
            LogPageHead,
            "log page with head"
        )
    }
    async fn blob_stat(&self, req: BlobStatRequest) -> Result<BlobStat, TransportError> {
        expect_reply!(self.call(Request::BlobStat(req)).await?, Blob, "blob")
    }
    async fn blob_read(&self, req: BlobReadRequest) -> Result<BlobDownload, TransportError> {
        let ctx = self
            .node
            .authenticate(Some(&self.token))
            .map_err(TransportError::refused)?;
        let (head, stream) = self
            .node
            .blob_read(&ctx, req)
            .await
            .map_err(TransportError::refused)?;
        let bytes = stream
            .map(|r| r.map_err(|e| TransportError::refused(e.to_reply())))
            .boxed();
        Ok(BlobDownload { head, bytes })
    }
    async fn blob_write(
        &self,
        req: BlobWriteRequest,
        source: BlobSource,
    ) -> Result<BlobStat, TransportError> {
        let ctx = self
            .node
            .authenticate(Some(&self.token))
            .map_err(TransportError::refused)?;
        self.node
            .blob_write(&ctx, req, source)
            .await
            .map_err(TransportError::refused)
    }
    async fn health(&self) -> Result<HealthReply, TransportError> {
        expect_reply!(self.call(Request::Health).await?, Health, "health")
    }
    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, TransportError> {
        let ctx = self
            .node
            .authenticate(Some(&self.token))
            .map_err(TransportError::refused)?;
        let req: SubscribeRequest = frame::decode(&frame::encode(&req), usize::MAX)?;
        let feed = self
            .node
            .subscribe(&ctx, req)
            .map_err(TransportError::refused)?;
        Ok(Subscription {
            inner: SubscriptionInner::Local(feed),
        })
    }
}
