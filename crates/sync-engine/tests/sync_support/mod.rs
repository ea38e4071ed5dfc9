//! Shared fixtures of the sync tests: replicas, nodes, tokens and a misbehaving remote.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sync_engine::sync::{Connector, InProcessConnector};
use sync_engine::{Engine, Identity, Replica, ReplicaHandler, SyncConfig};
use sync_transport::client::{BlobDownload, BlobSource, Subscription};
use sync_transport::proto::*;
use sync_transport::{Claims, Node, Remote, ServerConfig, Token, TokenKey, TransportError};
use sync_types::*;

pub const FAR_FUTURE_MS: u64 = 4_000_000_000_000;

pub fn tenant() -> TenantId {
    TenantId::new("did:example:alice").unwrap()
}
pub fn notes() -> ProtocolName {
    ProtocolName::new("https://example.com/notes").unwrap()
}
pub fn note() -> ProtocolPath {
    ProtocolPath::new("note").unwrap()
}
pub fn comment() -> ProtocolPath {
    ProtocolPath::new("note/comment").unwrap()
}
pub fn alice() -> PrincipalId {
    PrincipalId::new("did:example:alice").unwrap()
}
pub fn endpoint(name: &str) -> Endpoint {
    Endpoint::new(format!("http://{name}.test:80")).unwrap()
}
pub fn key() -> TokenKey {
    TokenKey::derive(b"sync tests")
}
pub fn owner_token(key: &TokenKey) -> String {
    Token::issue(
        key,
        Claims::owner(
            tenant(),
            alice(),
            GrantId::new("tests").unwrap(),
            FAR_FUTURE_MS,
        ),
    )
    .to_string()
}

/// Small backoffs so tests that exhaust push retries stay fast.
pub fn fast_config() -> SyncConfig {
    SyncConfig {
        push_retry_backoff_ms: vec![0, 1, 1, 1],
        ..SyncConfig::default()
    }
}

pub fn replica(node: u64) -> Replica {
    Replica::builder()
        .node_id(NodeId(node))
        .seed(node)
        .in_memory()
        .unwrap()
}

pub fn replica_with_clock(node: u64, clock: &Arc<ManualClock>) -> Replica {
    Replica::builder()
        .node_id(NodeId(node))
        .seed(node)
        .clock(clock.clone())
        .in_memory()
        .unwrap()
}

/// Configures the notes protocol (notes without a size limit, comments up to 64 bytes).
pub fn configure(r: &Replica) -> Cid {
    configure_with_limit(r, None)
}

pub fn configure_with_limit(r: &Replica, note_bytes_max: Option<u64>) -> Cid {
    let types = vec![
        TypeRule {
            path: note(),
            data_bytes_max: note_bytes_max,
        },
        TypeRule {
            path: comment(),
            data_bytes_max: Some(64),
        },
    ];
    r.configure(&tenant(), &notes(), types, vec![], &alice())
        .unwrap()
}

pub fn put(r: &Replica, key: &str, data: &[u8]) -> sync_engine::Receipt {
    r.put(
        &tenant(),
        &notes(),
        &note(),
        key.as_bytes(),
        data.to_vec(),
        &alice(),
    )
    .unwrap()
}

pub fn get(r: &Replica, key: &str) -> Option<Vec<u8>> {
    r.get_by_key(&tenant(), &notes(), key.as_bytes())
        .unwrap()
        .map(|rec| rec.data.unwrap_or_default())
}

pub fn delete(r: &Replica, key: &str) {
    let id = RecordId::from_natural_key(&tenant(), &notes(), key.as_bytes());
    r.delete(&tenant(), id, &alice()).unwrap();
}

/// Live records: id, winning cid, payload.
pub fn records(r: &Replica) -> Vec<(RecordId, Cid, Option<Vec<u8>>)> {
    r.list(&tenant(), &notes(), None)
        .unwrap()
        .into_iter()
        .map(|rec| (rec.record_id, rec.cid, rec.data))
        .collect()
}

pub fn root(r: &Replica) -> sync_smt::Hash {
    r.root(&tenant(), &Scope::Full).unwrap()
}

/// A node on an in-memory replica.
pub fn new_node(key: &TokenKey, id: u64) -> (Replica, Node<ReplicaHandler>) {
    let r = replica(id);
    let node = Node::new(
        Arc::new(ReplicaHandler::new(r.clone())),
        ServerConfig::new(key.clone()),
    );
    (r, node)
}

pub type Net = Arc<InProcessConnector<ReplicaHandler>>;

pub fn net() -> Net {
    Arc::new(InProcessConnector::new())
}

/// An engine over `r` syncing the whole tenant with `endpoints`.
pub fn engine<C: Connector>(
    r: &Replica,
    connector: C,
    endpoints: Vec<Endpoint>,
    config: SyncConfig,
) -> Engine<C> {
    let engine = Engine::builder(r.clone(), connector)
        .config(config)
        .seed(7)
        .build();
    engine
        .register_identity(Identity::owner(tenant(), endpoints, owner_token(&key())))
        .unwrap();
    engine
}

/// The only link of an engine.
pub fn link<C: Connector>(engine: &Engine<C>) -> LinkKey {
    let links = engine.links().unwrap();
    assert_eq!(links.len(), 1);
    links[0].key.clone()
}

/// Syncs until a pass moves nothing and every link converged; panics after `max` passes.
pub async fn sync_until_quiet<C: Connector>(engine: &Engine<C>, max: usize) -> usize {
    for pass in 1..=max {
        let report = engine.sync_once().await;
        assert!(report.is_ok(), "sync failed: {report:?}");
        let moved = report.pulled().messages + report.pushed().messages;
        if moved == 0 && report.links.iter().all(|l| l.converged() == Some(true)) {
            return pass;
        }
    }
    panic!("not quiet after {max} passes");
}

/// A remote that misbehaves the way real networks and retries do: every other log page
/// is a repeat of the previous one, every page starts with the last entry of the
/// previous page again, and every write batch is sent twice.
pub struct Repeating<R> {
    pub inner: R,
    calls: AtomicUsize,
    last: Mutex<Option<(LogPageRequest, Option<LogEntry>)>>,
    pub repeated_pages: AtomicUsize,
}

impl<R> Repeating<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            calls: AtomicUsize::new(0),
            last: Mutex::new(None),
            repeated_pages: AtomicUsize::new(0),
        }
    }
}

impl<R: Remote> Remote for Repeating<R> {
    fn batch_messages_max(&self) -> usize {
        self.inner.batch_messages_max()
    }
    async fn root(&self, req: RootRequest) -> Result<RootReply, TransportError> {
        self.inner.root(req).await
    }
    async fn diff_round(&self, req: DiffRequest) -> Result<DiffReply, TransportError> {
        self.inner.diff_round(req).await
    }
    async fn log_page(&self, req: LogPageRequest) -> Result<LogPageReply, TransportError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let previous = self.last.lock().unwrap().clone();
        let (asked, boundary) = match (&previous, n % 2) {
            (Some((prev_req, _)), 1) => {
                self.repeated_pages.fetch_add(1, Ordering::SeqCst);
                (prev_req.clone(), None)
            }
            (Some((_, last_entry)), _) => (req.clone(), last_entry.clone()),
            (None, _) => (req.clone(), None),
        };
        let reply = self.inner.log_page(asked.clone()).await?;
        let LogPageReply::Page(mut page) = reply else {
            return Ok(reply);
        };
        let last_entry = page.entries.last().cloned();
        if let Some(dup) = boundary {
            page.entries.insert(0, dup);
        }
        *self.last.lock().unwrap() = Some((asked, last_entry));
        Ok(LogPageReply::Page(page))
    }
    async fn read_messages(
        &self,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, TransportError> {
        self.inner.read_messages(req).await
    }
    async fn write_batch(&self, req: WriteBatchRequest) -> Result<WriteBatchReply, TransportError> {
        self.inner.write_batch(req.clone()).await?;
        self.inner.write_batch(req).await
    }
    async fn blob_stat(&self, req: BlobStatRequest) -> Result<BlobStat, TransportError> {
        self.inner.blob_stat(req).await
    }
    async fn blob_read(&self, req: BlobReadRequest) -> Result<BlobDownload, TransportError> {
        self.inner.blob_read(req).await
    }
    async fn blob_write(
        &self,
        req: BlobWriteRequest,
        source: BlobSource,
    ) -> Result<BlobStat, TransportError> {
        self.inner.blob_write(req, source).await
    }
    async fn health(&self) -> Result<HealthReply, TransportError> {
        self.inner.health().await
    }
    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, TransportError> {
        self.inner.subscribe(req).await
    }
}

/// Wraps every remote of a connector in [`Repeating`].
pub struct RepeatingConnector<C>(pub C);

impl<C: Connector> Connector for RepeatingConnector<C> {
    type Remote = Repeating<C::Remote>;
    fn connect(
        &self,
        endpoint: &Endpoint,
        token: Option<&str>,
    ) -> Result<Self::Remote, TransportError> {
        Ok(Repeating::new(self.0.connect(endpoint, token)?))
    }
}

/// A remote whose write batches fail in transport while `fail_writes` is set.
pub struct FlakyWrites<R> {
    pub inner: R,
    pub fail_writes: Arc<std::sync::atomic::AtomicBool>,
    pub write_attempts: Arc<AtomicUsize>,
}

impl<R: Remote> Remote for FlakyWrites<R> {
    fn batch_messages_max(&self) -> usize {
        self.inner.batch_messages_max()
    }
    async fn root(&self, req: RootRequest) -> Result<RootReply, TransportError> {
        self.inner.root(req).await
    }
    async fn diff_round(&self, req: DiffRequest) -> Result<DiffReply, TransportError> {
        self.inner.diff_round(req).await
    }
    async fn log_page(&self, req: LogPageRequest) -> Result<LogPageReply, TransportError> {
        self.inner.log_page(req).await
    }
    async fn read_messages(
        &self,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, TransportError> {
        self.inner.read_messages(req).await
    }
    async fn write_batch(&self, req: WriteBatchRequest) -> Result<WriteBatchReply, TransportError> {
        self.write_attempts.fetch_add(1, Ordering::SeqCst);
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(TransportError::Unreachable("connection reset".into()));
        }
        self.inner.write_batch(req).await
    }
    async fn blob_stat(&self, req: BlobStatRequest) -> Result<BlobStat, TransportError> {
        self.inner.blob_stat(req).await
    }
    async fn blob_read(&self, req: BlobReadRequest) -> Result<BlobDownload, TransportError> {
        self.inner.blob_read(req).await
    }
    async fn blob_write(
        &self,
        req: BlobWriteRequest,
        source: BlobSource,
    ) -> Result<BlobStat, TransportError> {
        self.inner.blob_write(req, source).await
    }
    async fn health(&self) -> Result<HealthReply, TransportError> {
        self.inner.health().await
    }
    async fn subscribe(&self, req: SubscribeRequest) -> Result<Subscription, TransportError> {
        self.inner.subscribe(req).await
    }
}

/// Wraps every remote of a connector in [`FlakyWrites`], sharing one switch.
pub struct FlakyConnector<C> {
    pub inner: C,
    pub fail_writes: Arc<std::sync::atomic::AtomicBool>,
    pub write_attempts: Arc<AtomicUsize>,
}

impl<C> FlakyConnector<C> {
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            fail_writes: Arc::default(),
            write_attempts: Arc::default(),
        }
    }
}

impl<C: Connector> Connector for FlakyConnector<C> {
    type Remote = FlakyWrites<C::Remote>;
    fn connect(
        &self,
        endpoint: &Endpoint,
        token: Option<&str>,
    ) -> Result<Self::Remote, TransportError> {
        Ok(FlakyWrites {
            inner: self.inner.connect(endpoint, token)?,
            fail_writes: self.fail_writes.clone(),
            write_attempts: self.write_attempts.clone(),
        })
    }
}
