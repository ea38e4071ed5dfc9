//! sync-transport benches on loopback: request round trips (rate and latency
//! percentiles), write-batch throughput, WebSocket fan-out to 1 and 1000 subscribers,
//! and memory per idle subscription.
//!
//! Run: `cargo run --release -p benches --bin transport_bench` (`-- --quick` for a short
//! run). The numbers are copied into `BENCHMARKS.md` by hand.
//!
//! Memory is the growth of the process's resident set (`VmRSS`) while 1000 idle
//! subscriptions are opened by raw sockets (the workspace forbids `unsafe`, so there is
//! no counting allocator); the raw clients hold only a socket each, so the growth is
//! the node's side plus a little tokio bookkeeping. Kernel socket buffers are not in it.

// A bench binary reports to its operator on stdout.
#![allow(clippy::print_stdout)]
// Counters and sizes are far below the truncation limits on a 64-bit host.
#![allow(clippy::cast_possible_truncation)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use sync_transport::proto::*;
use sync_transport::*;
use sync_types::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const KEY: TokenKey = TokenKey::from_bytes([42; 32]);

fn tenant() -> TenantId {
    TenantId::new("bench").unwrap()
}

fn token() -> Token {
    Token::issue(
        &KEY,
        Claims::owner(
            tenant(),
            PrincipalId::new("bench").unwrap(),
            GrantId::new("bench").unwrap(),
            u64::MAX / 2,
        ),
    )
}

fn write(n: u64, data: &[u8]) -> MessageData {
    let tenant = tenant();
    let protocol = ProtocolName::new("https://ex.com/bench").unwrap();
    let record_id = RecordId::from_natural_key(&tenant, &protocol, &n.to_be_bytes());
    MessageData {
        message: Message::Write(Write {
            tenant,
            record_id,
            parent_id: None,
            protocol,
            path: ProtocolPath::new("note").unwrap(),
            context_id: ContextId::root(record_id),
            prev: None,
            timestamp: Hlc {
                wall_ms: 1_700_000_000_000 + n,
                counter: 0,
                node: NodeId(1),
            },
            author: PrincipalId::new("bench").unwrap(),
            data: Some(DataRef::of(data)),
        }),
        data: Some(data.to_vec()),
    }
}

/// An in-memory log: appends, pages, a change counter.
struct MemoryHandler {
    log: Mutex<Vec<LogEntry>>,
    changes: watch::Sender<u64>,
    applied: AtomicU64,
}

impl MemoryHandler {
    fn new() -> Self {
        Self {
            log: Mutex::new(Vec::new()),
            changes: watch::Sender::new(0),
            applied: AtomicU64::new(0),
        }
    }

    fn append(&self, items: Vec<MessageData>) {
        {
            let mut log = self.log.lock().unwrap();
            for item in items {
                let token = ProgressToken {
                    stream_id: StreamId::from_bytes([1; 16]),
                    epoch: 1,
                    position: log.len() as u64 + 1,
                    cid: item.message.cid(),
                };
                log.push(LogEntry { token, item });
            }
        }
        self.changes.send_modify(|v| *v += 1);
    }
}

impl Handler for MemoryHandler {
    async fn root(&self, _: &RequestContext, _: RootRequest) -> Result<RootReply, HandlerError> {
        Ok(RootReply { root: [7; 32] })
    }
    async fn diff_round(
        &self,
        _: &RequestContext,
        req: DiffRequest,
    ) -> Result<DiffReply, HandlerError> {
        Ok(DiffReply { round: req.round })
    }
    async fn log_page(
        &self,
        _: &RequestContext,
        req: LogPageRequest,
    ) -> Result<LogPageReply, HandlerError> {
        let log = self.log.lock().unwrap();
        let start = req.from.map_or(0, |t| t.position as usize);
        let end = (start + req.limit as usize).min(log.len());
        let entries = log[start.min(end)..end].to_vec();
        Ok(LogPageReply::Page(LogPage {
            next: entries.last().map(|e| e.token).or(req.from),
            has_more: end < log.len(),
            entries,
        }))
    }
    async fn read_messages(
        &self,
        _: &RequestContext,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, HandlerError> {
        Ok(ReadMessagesReply {
            found: vec![],
            missing: req.cids,
        })
    }
    async fn apply(
        &self,
        _: &RequestContext,
        _: &TenantId,
        messages: Vec<MessageData>,
    ) -> Result<Vec<ApplyOutcome>, HandlerError> {
        self.applied
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        Ok(vec![ApplyOutcome::Applied; messages.len()])
    }
    async fn blob_stat(
        &self,
        _: &RequestContext,
        req: BlobStatRequest,
    ) -> Result<BlobStat, HandlerError> {
        Ok(BlobStat {
            cid: req.cid,
            size: None,
            received_bytes: 0,
            complete: false,
        })
    }
    async fn blob_read(
        &self,
        _: &RequestContext,
        _: &BlobReadRequest,
        _: u64,
        _: u32,
    ) -> Result<Bytes, HandlerError> {
        Err(HandlerError::NotFound("no blobs".into()))
    }
    async fn blob_write(
        &self,
        _: &RequestContext,
        req: &BlobWriteRequest,
        offset: u64,
        chunk: Bytes,
    ) -> Result<BlobStat, HandlerError> {
        Ok(BlobStat {
            cid: req.cid,
            size: Some(req.total_size),
            received_bytes: offset + chunk.len() as u64,
            complete: false,
        })
    }
    async fn health(&self) -> Result<HealthSummary, HandlerError> {
        Ok(HealthSummary::new(Connectivity::Online, 0, 0, 0, 0, None))
    }
    fn changes(&self, _: &TenantId) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn round_trips<R: Remote>(name: &str, remote: &R, n: usize) {
    let req = || RootRequest {
        tenant: tenant(),
        scope: Scope::Full,
    };
    for _ in 0..n / 10 {
        remote.root(req()).await.unwrap();
    }
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        remote.root(req()).await.unwrap();
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    println!(
        "{name:<34} {:>9.0} req/s   p50 {:>6.1} µs   p90 {:>6.1} µs   p99 {:>6.1} µs   max {:>7.1} µs",
        n as f64 / total.as_secs_f64(),
        us(percentile(&lat, 0.5)),
        us(percentile(&lat, 0.9)),
        us(percentile(&lat, 0.99)),
        us(*lat.last().unwrap()),
    );
}

async fn concurrent_round_trips(client: &HttpClient, tasks: usize, per_task: usize) {
    let start = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..tasks {
        let c = client.clone();
        joins.push(tokio::spawn(async move {
            for _ in 0..per_task {
                c.root(RootRequest {
                    tenant: tenant(),
                    scope: Scope::Full,
                })
                .await
                .unwrap();
            }
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let n = tasks * per_task;
    println!(
        "{:<34} {:>9.0} req/s",
        format!("http root, {tasks} concurrent callers"),
        n as f64 / start.elapsed().as_secs_f64()
    );
}

async fn write_batches<R: Remote>(name: &str, remote: &R, batches: usize, data_bytes: usize) {
    let data = vec![0x5a; data_bytes];
    let batch: Vec<MessageData> = (0..BATCH_MESSAGES_MAX as u64)
        .map(|n| write(n, &data))
        .collect();
    let req = WriteBatchRequest {
        tenant: tenant(),
        messages: batch,
    };
    let frame_bytes = frame::encode(&Request::WriteBatch(req.clone())).len();
    remote.write_batch(req.clone()).await.unwrap();
    let start = Instant::now();
    for _ in 0..batches {
        let r = remote.write_batch(req.clone()).await.unwrap();
        assert_eq!(r.outcomes.len(), BATCH_MESSAGES_MAX);
    }
    let secs = start.elapsed().as_secs_f64();
    let messages = (batches * BATCH_MESSAGES_MAX) as f64;
    println!(
        "{name:<34} {:>9.0} msg/s   {:>7.1} MB/s   ({} msgs of {data_bytes} B inline per batch, {:.0} KiB frames)",
        messages / secs,
        (batches * frame_bytes) as f64 / secs / 1e6,
        BATCH_MESSAGES_MAX,
        frame_bytes as f64 / 1024.0
    );
}

async fn fan_out(client: &HttpClient, handler: &MemoryHandler, subscribers: usize, events: usize) {
    let from = handler.log.lock().unwrap().last().map(|e| e.token);
    let mut subs = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut s = client
            .subscribe(SubscribeRequest {
                tenant: tenant(),
                scope: Scope::Full,
                from,
                filter: LogFilter::default(),
            })
            .await
            .unwrap();
        assert!(matches!(
            s.next().await,
            Some(SubscriptionItem::EndOfStored { .. })
        ));
        subs.push(s);
    }
    let data = vec![1u8; 100];
    let start = Instant::now();
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut got = 0;
                while got < events {
                    match s.next().await {
                        Some(SubscriptionItem::Event(_)) => got += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            })
        })
        .collect();
    // Writers append in batches of 100, as a busy node would.
    for chunk in 0..events / 100 {
        handler.append(
            (0..100)
                .map(|n| write(1_000_000 + (chunk * 100 + n) as u64, &data))
                .collect(),
        );
        tokio::task::yield_now().await;
    }
    for r in readers {
        r.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<34} {:>9.0} events/s delivered   ({events} events x {subscribers} subscribers in {secs:.2} s)",
        format!("ws fan-out to {subscribers}"),
        (events * subscribers) as f64 / secs
    );
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn raw_subscription(addr: SocketAddr, header: &str) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(header.as_bytes()).await.unwrap();
    // Read the 101 response and the EndOfStored notice (small; one read each is enough
    // on loopback, and a short read only leaves bytes in the socket).
    let mut buf = [0u8; 512];
    let _ = tcp.read(&mut buf).await.unwrap();
    tcp
}

async fn idle_memory(
    addr: SocketAddr,
    handler: &MemoryHandler,
    node: &Node<MemoryHandler>,
    n: usize,
) {
    // From the head: idle subscriptions, nothing to replay.
    let head = handler.log.lock().unwrap().last().map(|e| e.token);
    let sub =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(frame::encode(&SubscribeRequest {
            tenant: tenant(),
            scope: Scope::Full,
            from: head,
            filter: LogFilter::default(),
        }));
    let header = format!(
        "GET /v1/subscribe HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         authorization: Bearer {}\r\nx-weft-subscribe: {sub}\r\n\r\n",
        token()
    );
    // Let the subscriptions of earlier benches close first.
    let waited = Instant::now();
    while node.subscriptions() != 0 {
        if waited.elapsed() > Duration::from_secs(3) {
            println!("note: {} subscriptions still closing", node.subscriptions());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Warm up allocator arenas and tokio with a first batch, then measure the next.
    let mut warm = Vec::new();
    for _ in 0..100 {
        warm.push(raw_subscription(addr, &header).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes();
    let base = node.subscriptions();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(raw_subscription(addr, &header).await);
    }
    while node.subscriptions() < base + n as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_bytes();
    println!(
        "{:<34} {:>9.1} KiB per subscription   (RSS +{:.1} MiB for {n})",
        format!("memory per idle subscription"),
        (after.saturating_sub(before)) as f64 / n as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / (1024.0 * 1024.0)
    );
    drop(held);
    drop(warm);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let handler = Arc::new(MemoryHandler::new());
        let mut config = ServerConfig::new(KEY);
        config.subscriptions_max = 10_000;
        config.subscriber_queue_len_max = 1024;
        let server = serve(handler.clone(), config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
        let client = HttpClient::new(&endpoint, &token(), ClientConfig::default()).unwrap();
        let local = InProcessClient::new(server.node().clone(), &token());
        let n = if quick { 2_000 } else { 20_000 };

        println!(
            "sync-transport benches ({} cores)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        // First, while the heap holds nothing freed by other benches that RSS would hide.
        idle_memory(server.local_addr(), &handler, server.node(), 1000).await;
        round_trips("http root round trip (sequential)", &client, n).await;
        round_trips("in-process root round trip", &local, n).await;
        concurrent_round_trips(&client, 8, n / 8).await;
        let batches = if quick { 20 } else { 200 };
        write_batches("http write batch, 1 KiB data", &client, batches, 1024).await;
        write_batches("http write batch, no data", &client, batches, 0).await;
        write_batches("in-process write batch, 1 KiB data", &local, batches, 1024).await;
        fan_out(&client, &handler, 1, if quick { 2_000 } else { 20_000 }).await;
        fan_out(&client, &handler, 1000, if quick { 100 } else { 500 }).await;
        server.shutdown().await;
    });
}
