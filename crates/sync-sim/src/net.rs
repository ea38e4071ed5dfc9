//! The simulated network: one [`SimNet`] shared by every replica's [`SimConnector`],
//! which reaches the node through the real transport stack in process and loses,
//! duplicates and delays requests and responses, partitions replicas, and cuts or
//! corrupts blob transfers, each fault drawn from the run's seed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sync_engine::ReplicaHandler;
use sync_engine::sync::{Connector, InProcessConnector};
use sync_transport::proto::{
    BlobReadRequest, BlobStat, BlobStatRequest, BlobWriteRequest, DiffReply, DiffRequest,
    HealthReply, KnownLogPageRequest, LogPageReply, LogPageRequest, PlacedBatchReply,
    ReadMessagesReply, ReadMessagesRequest, RootReply, RootRequest, SubscribeRequest,
    WriteBatchReply, WriteBatchRequest,
};
use sync_transport::{
    BlobDownload, BlobSource, InProcessClient, Remote, Subscription, TransportError,
};
use sync_types::Endpoint;

use crate::{Faults, SimRng};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests_lost: AtomicU64,
    pub(crate) responses_lost: AtomicU64,
    pub(crate) duplicated: AtomicU64,
    pub(crate) blob_faults: AtomicU64,
}

/// The simulated network shared by every replica's connector.
#[derive(Debug)]
pub struct SimNet {
    pub(crate) rng: Mutex<SimRng>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) partitioned: Mutex<HashSet<usize>>,
    pub(crate) counters: Counters,
    pub(crate) nodes: InProcessConnector<ReplicaHandler>,
}

impl SimNet {
    pub(crate) fn draw(&self, per_mille: impl Fn(&Faults) -> u32) -> bool {
        let p = per_mille(&self.faults.lock().unwrap_or_else(|e| e.into_inner()));
        self.rng.lock().unwrap_or_else(|e| e.into_inner()).chance(p)
    }

    pub(crate) fn latency(&self) -> Duration {
        let max = self
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .latency_ms_max;
        Duration::from_millis(
            self.rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .below(max + 1),
        )
    }

    /// Whether a blob transfer of `len` bytes is cut or corrupted, and where.
    fn blob_fault(&self, len: u64) -> Option<BlobFault> {
        if len == 0 {
            return None;
        }
        let fault = if self.draw(|f| f.blob_cut) {
            BlobFault::Cut
        } else if self.draw(|f| f.blob_corrupt) {
            BlobFault::Corrupt
        } else {
            return None;
        };
        let at = self
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .below(len);
        self.counters.blob_faults.fetch_add(1, Ordering::Relaxed);
        Some(fault(at))
    }

    pub(crate) fn is_partitioned(&self, replica: usize) -> bool {
        self.partitioned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&replica)
    }
}

/// What happens to a blob transfer's bytes.
#[derive(Clone, Copy, Debug)]
enum BlobFault {
    /// The stream ends after this many bytes.
    Cut(u64),
    /// The byte at this offset (in the transfer) is flipped.
    Corrupt(u64),
}

/// A byte stream with `fault` applied.
fn mangle<E: Send + 'static>(
    stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, E>>,
    fault: BlobFault,
) -> futures_util::stream::BoxStream<'static, Result<bytes::Bytes, E>> {
    use futures_util::StreamExt;
    stream
        .scan(0u64, move |seen, item| {
            let out = match item {
                Ok(piece) => {
                    let start = *seen;
                    let end = start + piece.len() as u64;
                    *seen = end;
                    match fault {
                        BlobFault::Cut(at) if start >= at => None,
                        BlobFault::Cut(at) if end > at => {
                            Some(Ok(piece.slice(..usize::try_from(at - start).unwrap_or(0))))
                        }
                        BlobFault::Corrupt(at) if (start..end).contains(&at) => {
                            let mut v = piece.to_vec();
                            v[usize::try_from(at - start).unwrap_or(0)] ^= 0x20;
                            Some(Ok(bytes::Bytes::from(v)))
                        }
                        _ => Some(Ok(piece)),
                    }
                }
                Err(e) => Some(Err(e)),
            };
            futures_util::future::ready(out)
        })
        .boxed()
}

/// One replica's way onto the simulated network.
#[derive(Debug, Clone)]
pub struct SimConnector {
    pub(crate) net: Arc<SimNet>,
    pub(crate) replica: usize,
}

impl Connector for SimConnector {
    type Remote = SimRemote;

    fn connect(
        &self,
        endpoint: &Endpoint,
        token: Option<&str>,
    ) -> Result<SimRemote, TransportError> {
        if self.net.is_partitioned(self.replica) {
            return Err(TransportError::Unreachable("partitioned".into()));
        }
        let inner = self.net.nodes.connect(endpoint, token)?;
        Ok(SimRemote {
            inner,
            net: self.net.clone(),
            replica: self.replica,
        })
    }
}

/// A client whose calls cross the simulated network.
#[derive(Clone)]
pub struct SimRemote {
    inner: InProcessClient<ReplicaHandler>,
    net: Arc<SimNet>,
    replica: usize,
}

impl std::fmt::Debug for SimRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRemote")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl SimRemote {
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, TransportError>
    where
        F: Fn(InProcessClient<ReplicaHandler>) -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
    {
        let net = &self.net;
        if net.is_partitioned(self.replica) {
            return Err(TransportError::Unreachable("partitioned".into()));
        }
        tokio::time::sleep(net.latency()).await;
        if net.draw(|f| f.request_loss) {
            net.counters.requests_lost.fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::Unreachable("request lost".into()));
        }
        let mut reply = f(self.inner.clone()).await;
        if net.draw(|f| f.duplicate) {
            net.counters.duplicated.fetch_add(1, Ordering::Relaxed);
            reply = f(self.inner.clone()).await;
        }
        tokio::time::sleep(net.latency()).await;
        if net.draw(|f| f.response_loss) {
            net.counters.responses_lost.fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::Unreachable("response lost".into()));
        }
        reply
    }
}

impl Remote for SimRemote {
    fn batch_messages_max(&self) -> usize {
        self.inner.batch_messages_max()
    }
    async fn root(&self, req: RootRequest) -> Result<RootReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.root(req).await }
        })
        .await
    }
    async fn diff_round(&self, req: DiffRequest) -> Result<DiffReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.diff_round(req).await }
        })
        .await
    }
    async fn log_page(&self, req: LogPageRequest) -> Result<LogPageReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.log_page(req).await }
        })
        .await
    }
    async fn read_messages(
        &self,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.read_messages(req).await }
        })
        .await
    }
    async fn write_batch(&self, req: WriteBatchRequest) -> Result<WriteBatchReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.write_batch(req).await }
        })
        .await
    }
    async fn write_batch_placed(
        &self,
        req: WriteBatchRequest,
    ) -> Result<PlacedBatchReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.write_batch_placed(req).await }
        })
        .await
    }
    async fn log_page_known(
        &self,
        req: KnownLogPageRequest,
    ) -> Result<LogPageReply, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.log_page_known(req).await }
        })
        .await
    }
    async fn blob_stat(&self, req: BlobStatRequest) -> Result<BlobStat, TransportError> {
        self.call(|c| {
            let req = req.clone();
            async move { c.blob_stat(req).await }
        })
        .await
    }
    async fn blob_read(&self, req: BlobReadRequest) -> Result<BlobDownload, TransportError> {
        let mut download = self
            .call(|c| {
                let req = req.clone();
                async move { c.blob_read(req).await }
            })
            .await?;
        if let Some(fault) = self.net.blob_fault(download.head.len) {
            download.bytes = mangle(download.bytes, fault);
        }
        Ok(download)
    }
    async fn blob_write(
        &self,
        req: BlobWriteRequest,
        source: BlobSource,
    ) -> Result<BlobStat, TransportError> {
        // A stream cannot be replayed, so uploads are not duplicated; the other faults
        // apply, and the bytes may be cut short or corrupted on the way.
        let net = &self.net;
        if net.is_partitioned(self.replica) {
            return Err(TransportError::Unreachable("partitioned".into()));
        }
        tokio::time::sleep(net.latency()).await;
        if net.draw(|f| f.request_loss) {
            net.counters.requests_lost.fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::Unreachable("request lost".into()));
        }
        let source = match net.blob_fault(req.len) {
            Some(fault) => mangle(source, fault),
            None => source,
        };
        let reply = self.inner.blob_write(req, source).await;
        tokio::time::sleep(net.latency()).await;
        if net.draw(|f| f.response_loss) {
            net.counters.responses_lost.fetch_add(1, Ordering::Relaxed);
            return Err(TransportError::Unreachable("response lost".into()));
        }
        reply
    }
    async fn health(&self) -> Result<HealthReply, TransportError> {
        self.call(|c| async move { c.health().await }).await
    }
    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, TransportError> {
        if self.net.is_partitioned(self.replica) {
            return Err(TransportError::Unreachable("partitioned".into()));
        }
        self.inner.subscribe(req).await
    }
}
