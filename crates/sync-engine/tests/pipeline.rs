//! Pipelined bulk transfer over real sockets: a catch-up reads the next page while it
//! applies one, a push sends the next batch while the node applies one. What these
//! tests hold it to: the replicas still converge, a transfer cut part way resumes from
//! its checkpoints (which moved only over what was applied), and no more than one page
//! or batch is ever in flight ahead ([`PULL_PAGES_AHEAD_MAX`], [`PUSH_BATCHES_AHEAD_MAX`]),
//! observed by a node handler that watches every request it serves.

// Positions in these tests are a few thousand.
#![allow(clippy::cast_possible_truncation)]

mod sync_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sync_engine::sync::{HttpConnector, PULL_PAGES_AHEAD_MAX, PUSH_BATCHES_AHEAD_MAX, SyncConfig};
use sync_engine::{Engine, Identity, Replica, ReplicaHandler};
use sync_ledger::Durability;
use sync_support::*;
use sync_transport::node::{BlobWriteGuard, Handler, RequestContext};
use sync_transport::proto::*;
use sync_transport::{ClientConfig, HandlerError, ServerConfig, ServerHandle, serve};
use sync_types::*;

/// Records the tests write: several pages and many batches.
const RECORDS: usize = 2_000;
/// Entries per page the pulling engine asks for.
const PAGE_ENTRIES: u32 = 100;
/// Messages per write batch of the pushing engine.
const BATCH_MESSAGES: usize = 50;
/// Local log entries per push page: four batches, and the push checkpoint moves at the
/// end of each page (or over a page's settled prefix).
const PUSH_READ_ENTRIES: usize = 200;
/// How long the watching node holds each write batch before applying it: a slow
/// applier, so that a batch sent ahead arrives while one is applied.
const APPLY_HOLD: Duration = Duration::from_millis(20);

/// A `ReplicaHandler` that watches the pages and batches it serves, and refuses them
/// after a count (a node that goes away part way).
#[derive(Clone)]
struct Watching {
    inner: ReplicaHandler,
    /// The replica that pulls: a page is applied once it holds the page's last entry.
    puller: Arc<Mutex<Option<Replica>>>,
    /// The last entry of each page served, in order.
    served: Arc<Mutex<Vec<Cid>>>,
    /// Most pages served and not yet applied by the puller, seen when a page is asked
    /// for.
    pages_ahead_max: Arc<AtomicUsize>,
    /// Write batches being applied now, and the most at once.
    batches_now: Arc<AtomicUsize>,
    batches_max: Arc<AtomicUsize>,
    /// Held while a batch is applied: one at a time, as a node's writer.
    applying: Arc<tokio::sync::Mutex<()>>,
    /// Write batches received, and those received while another one was being applied.
    batches: Arc<AtomicUsize>,
    overlapped: Arc<AtomicUsize>,
    /// Page requests and write batches served before every further one is refused
    /// (`usize::MAX`: never).
    pages_left: Arc<AtomicUsize>,
    batches_left: Arc<AtomicUsize>,
    /// Messages received in write batches, in all.
    received: Arc<AtomicUsize>,
}

impl Watching {
    fn new(inner: ReplicaHandler) -> Self {
        Self {
            inner,
            puller: Arc::default(),
            served: Arc::default(),
            pages_ahead_max: Arc::default(),
            batches_now: Arc::default(),
            batches_max: Arc::default(),
            applying: Arc::default(),
            batches: Arc::default(),
            overlapped: Arc::default(),
            pages_left: Arc::new(AtomicUsize::new(usize::MAX)),
            batches_left: Arc::new(AtomicUsize::new(usize::MAX)),
            received: Arc::default(),
        }
    }

    /// Takes one from `left`; false when it is used up.
    fn take(left: &AtomicUsize) -> bool {
        left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
            usize::MAX => Some(n),
            0 => None,
            n => Some(n - 1),
        })
        .is_ok()
    }

    /// Pages served whose last entry the puller does not hold yet.
    fn pages_not_applied(&self) -> usize {
        let puller = self.puller.lock().unwrap().clone();
        let Some(puller) = puller else { return 0 };
        let served = self.served.lock().unwrap().clone();
        let ledger = puller.ledger();
        served
            .iter()
            .filter(|cid| !ledger.has_message(&tenant(), cid).unwrap())
            .count()
    }
}

impl Handler for Watching {
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
        // The one-entry page a catch-up asks with its count of what is left (beside
        // the pages, never applied) is not one of the pipeline's pages.
        if req.limit == 1 {
            return self.inner.log_page(ctx, req).await;
        }
        self.pages_ahead_max
            .fetch_max(self.pages_not_applied(), Ordering::SeqCst);
        if !Self::take(&self.pages_left) {
            return Err(HandlerError::Unavailable("gone".into()));
        }
        let reply = self.inner.log_page(ctx, req).await?;
        if let LogPageReply::Page(page) = &reply
            && let Some(last) = page.entries.last()
        {
            self.served.lock().unwrap().push(last.item.message.cid());
        }
        Ok(reply)
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
        Ok(self.apply_placed(ctx, tenant, messages).await?.0)
    }
    async fn apply_placed(
        &self,
        ctx: &RequestContext,
        tenant: &TenantId,
        messages: Vec<MessageData>,
    ) -> Result<(Vec<ApplyOutcome>, Option<KnownRanges>), HandlerError> {
        if !Self::take(&self.batches_left) {
            return Err(HandlerError::Unavailable("gone".into()));
        }
        let now = self.batches_now.fetch_add(1, Ordering::SeqCst) + 1;
        self.batches_max.fetch_max(now, Ordering::SeqCst);
        self.batches.fetch_add(1, Ordering::SeqCst);
        if now > 1 {
            self.overlapped.fetch_add(1, Ordering::SeqCst);
        }
        self.received.fetch_add(messages.len(), Ordering::SeqCst);
        let result = {
            let _writer = self.applying.lock().await;
            tokio::time::sleep(APPLY_HOLD).await;
            self.inner.apply_placed(ctx, tenant, messages).await
        };
        self.batches_now.fetch_sub(1, Ordering::SeqCst);
        result
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
        self.inner.blob_read(ctx, req, offset, len).await
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
        self.inner.blob_write(ctx, req, offset, chunk).await
    }
    async fn health(&self) -> Result<HealthSummary, HandlerError> {
        self.inner.health().await
    }
    fn changes(&self, tenant: &TenantId) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes(tenant)
    }
}

struct Node {
    replica: Replica,
    watch: Watching,
    endpoint: Endpoint,
    _server: ServerHandle<Watching>,
}

async fn node() -> Node {
    let replica = replica(100);
    let watch = Watching::new(ReplicaHandler::new(replica.clone()));
    let server = serve(
        Arc::new(watch.clone()),
        ServerConfig::new(key()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
    Node {
        replica,
        watch,
        endpoint,
        _server: server,
    }
}

/// A fjall replica with synced commits (an apply takes real time).
fn durable(dir: &std::path::Path, id: u64) -> Replica {
    Replica::builder()
        .node_id(NodeId(id))
        .seed(id)
        .durability(Durability::SyncData)
        .open(dir)
        .unwrap()
}

fn engine(r: &Replica, node: &Node) -> Engine<Arc<HttpConnector>> {
    engine_reading(r, node, PUSH_READ_ENTRIES)
}

/// [`engine`] whose push reads `push_read_entries` local log entries a page.
fn engine_reading(
    r: &Replica,
    node: &Node,
    push_read_entries: usize,
) -> Engine<Arc<HttpConnector>> {
    let e = Engine::builder(
        r.clone(),
        Arc::new(HttpConnector::new(ClientConfig::default())),
    )
    .config(SyncConfig {
        page_entries: PAGE_ENTRIES,
        push_batch_messages: BATCH_MESSAGES,
        push_read_entries,
        // One attempt: a refused batch ends the push at once.
        push_retry_backoff_ms: vec![0],
        ..SyncConfig::default()
    })
    .seed(7)
    .build();
    e.register_identity(Identity::owner(
        tenant(),
        vec![node.endpoint.clone()],
        owner_token(&key()),
    ))
    .unwrap();
    e
}

fn write_records(r: &Replica, n: usize) {
    configure(r);
    for i in 0..n {
        put(
            r,
            &format!("r{i}"),
            format!("{{\"_id\":\"r{i}\",\"title\":\"record {i}\"}}").as_bytes(),
        );
    }
}

fn checkpoints(e: &Engine<Arc<HttpConnector>>) -> DirectionCheckpoint {
    let links = e.links().unwrap();
    assert_eq!(links.len(), 1);
    links[0].pull
}

/// A pull cut after some pages keeps the checkpoint of what it applied and goes on from
/// it; the pull never has more than one page ahead of its apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_pull_cut_part_way_resumes_from_its_checkpoint_and_converges() {
    let node = node().await;
    write_records(&node.replica, RECORDS);
    let dir = tempfile::tempdir().unwrap();
    let b = durable(dir.path(), 2);
    *node.watch.puller.lock().unwrap() = Some(b.clone());
    let eb = engine(&b, &node);
    let link = link(&eb);

    // The node serves 7 pages, then goes away.
    node.watch.pages_left.store(7, Ordering::SeqCst);
    assert!(eb.catch_up(&link).await.is_err());
    let cut = checkpoints(&eb);
    let held = records(&b).len();
    // The checkpoint covers what B holds, and B holds no page the checkpoint skipped:
    // at most the page read ahead was lost with the cut.
    let position = cut.contiguous_applied.expect("some pages applied").position;
    assert!(
        held >= 5 * PAGE_ENTRIES as usize,
        "{held} records after 7 pages"
    );
    assert!(
        position as usize >= held,
        "checkpoint {position}, {held} held"
    );
    let served_before = node.watch.served.lock().unwrap().len();
    assert!(served_before <= 7);

    // Back: the next catch-up starts at the checkpoint and fetches the rest once.
    node.watch.pages_left.store(usize::MAX, Ordering::SeqCst);
    let out = eb.catch_up(&link).await.unwrap();
    assert!(out.reached_head);
    assert_eq!(out.checkpoint.unwrap().position, {
        let l = node.replica.ledger().log_head(&tenant()).unwrap();
        l.unwrap().position
    });
    let remaining = (RECORDS + 1 - position as usize).div_ceil(PAGE_ENTRIES as usize);
    let served_after = node.watch.served.lock().unwrap().len() - served_before;
    assert!(
        served_after <= remaining + 1,
        "{served_after} pages after the cut, {remaining} left to read"
    );
    assert_eq!(records(&b), records(&node.replica));
    assert_eq!(root(&b), root(&node.replica));

    // Never more than one page ahead of the apply, and the pipeline did run ahead.
    let ahead = node.watch.pages_ahead_max.load(Ordering::SeqCst);
    assert!(ahead <= PULL_PAGES_AHEAD_MAX, "{ahead} pages ahead");
    assert_eq!(ahead, PULL_PAGES_AHEAD_MAX, "no page was read ahead");
}

/// A push cut after some batches keeps the checkpoint of what the node acknowledged
/// and goes on from it; never more than one batch travels ahead of the one applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_push_cut_part_way_resumes_from_its_checkpoint_and_converges() {
    let node = node().await;
    let dir = tempfile::tempdir().unwrap();
    let a = durable(dir.path(), 1);
    write_records(&a, RECORDS);
    let ea = engine(&a, &node);
    let link = link(&ea);

    // The node applies 9 batches, then goes away.
    node.watch.batches_left.store(9, Ordering::SeqCst);
    assert!(ea.push(&link).await.is_err());
    let cut = ea.links().unwrap()[0].push;
    let acked = cut.contiguous_applied.map_or(0, |t| t.position) as usize;
    let held = records(&node.replica).len();
    // The checkpoint moved over the two whole pages the node applied, and only over
    // what it applied: everything before it is on the node (the configure is one more).
    assert!(acked >= 2 * PUSH_READ_ENTRIES, "checkpoint {acked}");
    assert!(acked <= held + 1, "checkpoint {acked}, node holds {held}");
    assert!(held < 9 * BATCH_MESSAGES);

    // Back: the push goes on from the checkpoint, not from the start.
    let before = node.watch.received.load(Ordering::SeqCst);
    node.watch.batches_left.store(usize::MAX, Ordering::SeqCst);
    let out = ea.push(&link).await.unwrap();
    assert!(out.reached_head);
    let resent = node.watch.received.load(Ordering::SeqCst) - before;
    assert!(
        resent <= RECORDS + 1 - acked,
        "{resent} messages sent after the cut, {acked} acknowledged before it"
    );
    assert_eq!(records(&a), records(&node.replica));
    assert_eq!(root(&a), root(&node.replica));

    let most = node.watch.batches_max.load(Ordering::SeqCst);
    assert!(most <= 1 + PUSH_BATCHES_AHEAD_MAX, "{most} batches at once");
    assert_eq!(most, 1 + PUSH_BATCHES_AHEAD_MAX, "no batch was sent ahead");
}

/// The node always has the next batch while it applies one: a batch goes when the one
/// before it starts its delivery (not when that one is answered), and across pages too,
/// here pages of one batch each. A push that sent ahead only within a page, or only
/// every other batch, leaves most batches to arrive at an idle node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_keeps_a_batch_ahead_across_its_pages() {
    let node = node().await;
    let dir = tempfile::tempdir().unwrap();
    let a = durable(dir.path(), 1);
    write_records(&a, 20 * BATCH_MESSAGES);
    let ea = engine_reading(&a, &node, BATCH_MESSAGES);
    let link = link(&ea);
    let out = ea.push(&link).await.unwrap();
    assert!(out.reached_head);
    assert_eq!(records(&a), records(&node.replica));

    let batches = node.watch.batches.load(Ordering::SeqCst);
    let overlapped = node.watch.overlapped.load(Ordering::SeqCst);
    assert!(batches >= 20, "{batches} batches");
    // The first batch has nothing before it and the second depends on the first's
    // configure; every later one arrives while the one before it is applied.
    assert!(
        overlapped >= batches - 2,
        "{overlapped} of {batches} batches arrived while another was applied"
    );
    let most = node.watch.batches_max.load(Ordering::SeqCst);
    assert_eq!(most, 1 + PUSH_BATCHES_AHEAD_MAX, "{most} batches at once");
}

/// A push longer than its first page counts what it sends beside it (the whole outbound
/// log, on the blocking pool) instead of before its first batch: the total comes while
/// the batches go, is exact, and the push ends with done == total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_push_learns_its_total_while_its_batches_go() {
    let node = node().await;
    let dir = tempfile::tempdir().unwrap();
    let a = durable(dir.path(), 1);
    let n = 20 * BATCH_MESSAGES;
    write_records(&a, n);
    let ea = engine(&a, &node);
    let link = link(&ea);
    let mut events = a.events();
    let out = ea.push(&link).await.unwrap();
    assert!(out.reached_head);

    let mut push = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let SyncEvent::SyncProgress {
            direction: Direction::Push,
            messages,
            messages_total,
            ..
        } = e
        {
            push.push((messages, messages_total));
        }
    }
    let total = n as u64 + 1;
    assert_eq!(push.last(), Some(&(total, Some(total))), "{push:?}");
    // Every total announced is the exact one (the configure and n records), and one
    // came while the push had most of its batches to go (each is held 20 ms).
    assert!(
        push.iter().all(|(_, t)| t.is_none() || *t == Some(total)),
        "{push:?}"
    );
    assert!(
        push.iter()
            .any(|(m, t)| *t == Some(total) && *m < total / 2),
        "the total came only at the end: {push:?}"
    );
}
