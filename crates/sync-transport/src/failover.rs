//! Failover between interchangeable nodes: [`FailoverConnector`].
//!
//! Nodes that share one store (several `weft serve --store postgres://…` processes)
//! serve the same log of every tenant: the same stream id, the same positions. A link's
//! checkpoints are therefore valid on any of them, and a replica may talk to whichever
//! one answers. An endpoint naming several nodes, separated by commas
//! (`http://10.0.0.1:7700,http://10.0.0.2:7700`), is one endpoint to the engine (one
//! link, one pair of checkpoints); this connector turns it into a [`FailoverRemote`]
//! that sends each call to its current node and, when the call fails in a way another
//! node may not (unreachable, timed out, unavailable), moves to the next node and tries
//! there, each node at most once per call. Every call the engine makes is idempotent
//! (reads, diff rounds, and pushes whose apply is idempotent), so a call that failed
//! half way on one node may run again on another. A blob upload is not retried within
//! the call (its byte stream is consumed): the node moves on and the engine's own retry
//! resumes the upload there.
//!
//! A plain endpoint (no comma) behaves exactly as the inner connector's remote.
//!
//! The connector remembers, per endpoint, the node that last answered a call
//! ([`FailoverConnector::reached`]): what `weft status` shows as the node a link talks
//! to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sync_types::{Endpoint, KnownRanges};

use crate::TransportError;
use crate::client::{BlobDownload, BlobSource, Remote, Subscription};
use crate::connector::Connector;
use crate::proto::{
    BlobReadRequest, BlobStat, BlobStatRequest, BlobWriteRequest, DiffReply, DiffRequest,
    HeadLogPageRequest, HeadedLogPage, HealthReply, KnownLogPageRequest, LogPageReply,
    LogPageRequest, PlacedBatchReply, ReadMessagesReply, ReadMessagesRequest, RootReply,
    RootRequest, SubscribeRequest, WriteBatchReply, WriteBatchRequest,
};

/// Most nodes one endpoint may name.
pub const FAILOVER_NODES_MAX: usize = 16;

/// Splits an endpoint naming several nodes (comma-separated) into its nodes; a plain
/// endpoint is one node.
pub fn endpoint_nodes(endpoint: &Endpoint) -> Result<Vec<Endpoint>, TransportError> {
    let parts: Vec<&str> = endpoint.as_str().split(',').map(str::trim).collect();
    if parts.len() > FAILOVER_NODES_MAX {
        return Err(TransportError::Endpoint(format!(
            "{endpoint}: names {} nodes, at most {FAILOVER_NODES_MAX}",
            parts.len()
        )));
    }
    parts
        .into_iter()
        .map(|p| Endpoint::new(p).map_err(|e| TransportError::Endpoint(format!("{p}: {e}"))))
        .collect()
}

/// Endpoints whose last answering node a [`FailoverConnector`] remembers; past this,
/// an arbitrary one is forgotten first.
pub const REACHED_ENDPOINTS_MAX: usize = 1024;

/// The node that last answered, per endpoint.
type Reached = Arc<Mutex<HashMap<Endpoint, Endpoint>>>;

/// A connector whose endpoints may name several interchangeable nodes; see the module
/// documentation.
#[derive(Debug, Default)]
pub struct FailoverConnector<C> {
    inner: C,
    reached: Reached,
}

impl<C> FailoverConnector<C> {
    /// Reaches each node through `inner`.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            reached: Reached::default(),
        }
    }

    /// The node of `endpoint` that last answered a call of one of this connector's
    /// remotes (the endpoint itself when it names one node); `None` before any answer.
    pub fn reached(&self, endpoint: &Endpoint) -> Option<Endpoint> {
        lock(&self.reached).get(endpoint).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<C: Connector> Connector for FailoverConnector<C> {
    type Remote = FailoverRemote<C::Remote>;

    fn connect(
        &self,
        endpoint: &Endpoint,
        token: Option<&str>,
    ) -> Result<Self::Remote, TransportError> {
        let nodes = endpoint_nodes(endpoint)?;
        let remotes = nodes
            .iter()
            .map(|n| self.inner.connect(n, token))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FailoverRemote {
            nodes: Arc::new(nodes),
            remotes: Arc::new(remotes),
            current: Arc::new(AtomicUsize::new(0)),
            endpoint: endpoint.clone(),
            reached: Arc::clone(&self.reached),
            reported: Arc::new(AtomicUsize::new(usize::MAX)),
        })
    }
}

/// A [`Remote`] over several interchangeable nodes, sending each call to the current
/// one and moving on when it fails; clones share the current node.
pub struct FailoverRemote<R> {
    nodes: Arc<Vec<Endpoint>>,
    remotes: Arc<Vec<R>>,
    current: Arc<AtomicUsize>,
    /// The endpoint as the engine names it (all the nodes).
    endpoint: Endpoint,
    /// The connector's record of the node that last answered.
    reached: Reached,
    /// The node last written to `reached` by this remote (`usize::MAX`: none yet), so
    /// only a change takes the lock.
    reported: Arc<AtomicUsize>,
}

impl<R> Clone for FailoverRemote<R> {
    fn clone(&self) -> Self {
        Self {
            nodes: Arc::clone(&self.nodes),
            remotes: Arc::clone(&self.remotes),
            current: Arc::clone(&self.current),
            endpoint: self.endpoint.clone(),
            reached: Arc::clone(&self.reached),
            reported: Arc::clone(&self.reported),
        }
    }
}

impl<R> std::fmt::Debug for FailoverRemote<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverRemote")
            .field("nodes", &self.nodes)
            .field("current", &self.current_node())
            .finish()
    }
}

/// Whether another node may answer a call that failed with `e`.
fn another_may_answer(e: &TransportError) -> bool {
    e.is_retryable()
}

impl<R> FailoverRemote<R> {
    /// The node calls go to now.
    pub fn current_node(&self) -> &Endpoint {
        &self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()]
    }

    /// Records that node `at` answered a call.
    fn answered(&self, at: usize) {
        if self.reported.swap(at, Ordering::Relaxed) == at {
            return;
        }
        let mut reached = lock(&self.reached);
        if reached.len() >= REACHED_ENDPOINTS_MAX && !reached.contains_key(&self.endpoint) {
            let some = reached.keys().next().cloned();
            if let Some(k) = some {
                reached.remove(&k);
            }
        }
        reached.insert(self.endpoint.clone(), self.nodes[at].clone());
    }

    /// Records that a call that started at `start` succeeded at `at`. Only moves
    /// forward from where the call started, so two calls failing at once do not skip a
    /// node.
    fn moved(&self, start: usize, at: usize) {
        let _ = self
            .current
            .compare_exchange(start, at, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Runs a call on the current node, then on each other node in turn while the failure
/// is one another node may not have.
macro_rules! failover {
    ($self:ident, |$r:ident| $call:expr) => {{
        let n = $self.remotes.len();
        let start = $self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            let $r = &$self.remotes[at];
            match $call.await {
                Ok(t) => {
                    if i > 0 {
                        $self.moved(start, at);
                    }
                    $self.answered(at);
                    return Ok(t);
                }
                Err(e) if another_may_answer(&e) && n > 1 => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one node was tried"))
    }};
}

impl<R: Remote> Remote for FailoverRemote<R> {
    async fn root(&self, req: RootRequest) -> Result<RootReply, TransportError> {
        failover!(self, |r| r.root(req.clone()))
    }

    async fn diff_round(&self, req: DiffRequest) -> Result<DiffReply, TransportError> {
        failover!(self, |r| r.diff_round(req.clone()))
    }

    async fn log_page(&self, req: LogPageRequest) -> Result<LogPageReply, TransportError> {
        failover!(self, |r| r.log_page(req.clone()))
    }

    async fn read_messages(
        &self,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, TransportError> {
        failover!(self, |r| r.read_messages(req.clone()))
    }

    async fn write_batch(&self, req: WriteBatchRequest) -> Result<WriteBatchReply, TransportError> {
        failover!(self, |r| r.write_batch(req.clone()))
    }

    async fn write_batch_placed(
        &self,
        req: WriteBatchRequest,
    ) -> Result<PlacedBatchReply, TransportError> {
        failover!(self, |r| r.write_batch_placed(req.clone()))
    }

    /// The current node's: a batch sized to it that fails over to another node is
    /// split there when that node takes less (see [`HttpClient`](crate::HttpClient)).
    fn batch_messages_max(&self) -> usize {
        let n = self.remotes.len();
        self.remotes[self.current.load(Ordering::Relaxed) % n].batch_messages_max()
    }

    async fn log_page_known(
        &self,
        req: KnownLogPageRequest,
    ) -> Result<LogPageReply, TransportError> {
        failover!(self, |r| r.log_page_known(req.clone()))
    }

    async fn log_page_head(
        &self,
        req: HeadLogPageRequest,
    ) -> Result<HeadedLogPage, TransportError> {
        failover!(self, |r| r.log_page_head(req.clone()))
    }

    async fn blob_stat(&self, req: BlobStatRequest) -> Result<BlobStat, TransportError> {
        failover!(self, |r| r.blob_stat(req.clone()))
    }

    async fn blob_read(&self, req: BlobReadRequest) -> Result<BlobDownload, TransportError> {
        failover!(self, |r| r.blob_read(req.clone()))
    }

    async fn blob_write(
        &self,
        req: BlobWriteRequest,
        source: BlobSource,
    ) -> Result<BlobStat, TransportError> {
        let n = self.remotes.len();
        let at = self.current.load(Ordering::Relaxed);
        let result = self.remotes[at % n].blob_write(req, source).await;
        if result.is_ok() {
            self.answered(at % n);
        }
        if let Err(e) = &result
            && another_may_answer(e)
        {
            let _ = self.current.compare_exchange(
                at,
                (at + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        result
    }

    async fn health(&self) -> Result<HealthReply, TransportError> {
        failover!(self, |r| r.health())
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, TransportError> {
        failover!(self, |r| r.subscribe(req.clone()))
    }
    async fn subscribe_known(
        &self,
        req: SubscribeRequest,
        known: Option<KnownRanges>,
    ) -> Result<Subscription, TransportError> {
        failover!(self, |r| r.subscribe_known(req.clone(), known.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_names_one_or_several_nodes() {
        let one = Endpoint::new("http://127.0.0.1:1").unwrap();
        assert_eq!(endpoint_nodes(&one).unwrap(), vec![one.clone()]);
        let two = Endpoint::new("http://127.0.0.1:1,http://127.0.0.1:2").unwrap();
        assert_eq!(
            endpoint_nodes(&two).unwrap(),
            vec![one, Endpoint::new("http://127.0.0.1:2").unwrap()]
        );
        let bad = Endpoint::new("http://127.0.0.1:1,ftp://x").unwrap();
        assert!(endpoint_nodes(&bad).is_err());
    }
}
