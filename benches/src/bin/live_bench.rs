//! Live replication on loopback: propagation latency from one replica through a node to
//! another, sustained write rate with live replication on, and fan-out from one node to
//! many live replicas. Printed as markdown tables for BENCHMARKS.md.
//!
//! Usage:
//!
//! ```text
//! cargo run --release -p benches --bin live_bench                    # full sizes
//! cargo run --release -p benches --bin live_bench -- --quick         # about a minute
//! cargo run --release -p benches --bin live_bench -- --writes 1000 --replicas 100 fanout
//! ```
//!
//! Options: `--writes N` (propagation writes, default 10,000), `--burst N` (writes per
//! burst, default 100), `--sustain-secs S` and `--sustain-writes N` (the sustained
//! phase stops at whichever comes first; defaults 10 s and 50,000), `--replicas N` (live
//! replicas on one node, default 1,000), `--fanout-writes N` (default 100), `--quick`
//! (1,000 writes, 3 s / 10,000 sustained writes, 100 replicas, 50 fan-out writes).
//! Section names (`sequential bursts sustained fanout`) run a subset.
//!
//! Everything runs in this process on one tokio multi-thread runtime: the node (a
//! `ReplicaHandler` over an in-memory replica behind the hyper server on 127.0.0.1) and
//! every replica (in memory, an `Engine` over `HttpConnector`, run by `LiveSync` with
//! `LinkConfig::default()`), talking over real sockets. Each section gets a fresh node.
//!
//! Latency is from just before `Replica::put` on the writer to the moment a task
//! subscribed to the receiver's `Replica::subscribe` sees the remote change, so it
//! includes the local commit, the push, the node's apply, the WebSocket notice, the
//! receiver's apply and one task wake-up. In the fan-out section, "write reaches the
//! node" is taken inside the node's commit (a ledger listener), since a task watching the
//! node would wake behind the fan-out that the same commit starts.

// A bench binary's output is its result: it prints tables on stdout by design.
#![allow(clippy::print_stdout)]
// Counts and durations are far below the truncation limits on a 64-bit host.
#![allow(clippy::cast_possible_truncation)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sync_engine::live::LiveSync;
use sync_engine::machine::LinkConfig;
use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Origin, Replica, ReplicaHandler};
use sync_transport::metrics::Metrics;
use sync_transport::{Claims, ClientConfig, ServerConfig, ServerHandle, Token, TokenKey, serve};
use sync_types::*;
use tokio::sync::mpsc;

const FAR_FUTURE_MS: u64 = 4_000_000_000_000;
/// Payload of every write.
const DATA_BYTES: usize = 64;
/// Writes before each measured phase, not counted (connections, allocator, caches).
const WARMUP_WRITES: usize = 100;
/// Longest wait for one write (or one burst) to arrive before the phase gives up.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the receiver to drain after the sustained phase.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the fan-out replicas to be live.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(300);

fn tenant() -> TenantId {
    TenantId::new("did:example:live").unwrap()
}
fn protocol() -> ProtocolName {
    ProtocolName::new("https://example.com/notes").unwrap()
}
fn note() -> ProtocolPath {
    ProtocolPath::new("note").unwrap()
}
fn author() -> PrincipalId {
    PrincipalId::new("did:example:live").unwrap()
}

struct Options {
    writes: usize,
    burst: usize,
    sustain: Duration,
    sustain_writes: usize,
    replicas: usize,
    fanout_writes: usize,
    sections: Vec<String>,
}

impl Options {
    fn parse() -> Self {
        let mut o = Options {
            writes: 10_000,
            burst: 100,
            sustain: Duration::from_secs(10),
            sustain_writes: 50_000,
            replicas: 1_000,
            fanout_writes: 100,
            sections: Vec::new(),
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--quick") {
            o.writes = 1_000;
            o.sustain = Duration::from_secs(3);
            o.sustain_writes = 10_000;
            o.replicas = 100;
            o.fanout_writes = 50;
        }
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut value = || -> usize {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{a} needs a number"))
            };
            match a.as_str() {
                "--quick" => {}
                "--writes" => o.writes = value(),
                "--burst" => o.burst = value().max(1),
                "--sustain-secs" => o.sustain = Duration::from_secs(value() as u64),
                "--sustain-writes" => o.sustain_writes = value(),
                "--replicas" => o.replicas = value().max(1),
                "--fanout-writes" => o.fanout_writes = value(),
                s if !s.starts_with("--") => o.sections.push(s.to_owned()),
                s => panic!("unknown option {s}"),
            }
        }
        o
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.is_empty() || self.sections.iter().any(|s| s == section)
    }
}

/// A node on 127.0.0.1 over an in-memory replica.
struct Node {
    server: ServerHandle<ReplicaHandler>,
    /// The node's own replica, to timestamp when a write reaches the node.
    replica: Replica,
    metrics: Arc<Metrics>,
    endpoint: Endpoint,
    token: Token,
}

async fn start_node(connections_max: usize) -> Node {
    let key = TokenKey::derive(b"live bench");
    let mut config = ServerConfig::new(key.clone());
    config.connections_max = connections_max;
    config.subscriptions_max = connections_max;
    let metrics = Arc::new(Metrics::new());
    config.metrics = Some(metrics.clone());
    let replica = Replica::in_memory().unwrap();
    let handler = ReplicaHandler::new(replica.clone());
    let server = serve(Arc::new(handler), config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
    let token = Token::issue(
        &key,
        Claims::owner(
            tenant(),
            author(),
            GrantId::new("owner").unwrap(),
            FAR_FUTURE_MS,
        ),
    );
    Node {
        server,
        replica,
        metrics,
        endpoint,
        token,
    }
}

/// A replica in memory with its links run live.
struct Device {
    replica: Replica,
    live: LiveSync<HttpConnector>,
}

fn device(node: &Node, config: LinkConfig) -> Device {
    let replica = Replica::in_memory().unwrap();
    let engine =
        Engine::builder(replica.clone(), HttpConnector::new(ClientConfig::default())).build();
    engine
        .register_identity(Identity::owner(
            tenant(),
            vec![node.endpoint.clone()],
            node.token.to_string(),
        ))
        .unwrap();
    let live = LiveSync::start(engine, config).unwrap();
    Device { replica, live }
}

fn configure(replica: &Replica) {
    let types = vec![TypeRule {
        path: note(),
        data_bytes_max: None,
    }];
    replica
        .configure(&tenant(), &protocol(), types, vec![], &author())
        .unwrap();
}

fn put(replica: &Replica, key: &str) -> Cid {
    replica
        .put(
            &tenant(),
            &protocol(),
            &note(),
            key.as_bytes(),
            vec![7; DATA_BYTES],
            &author(),
        )
        .unwrap()
        .cid
}

/// A remote change seen on replica `replica` at `at`.
struct Arrival {
    replica: usize,
    cid: Cid,
    at: Instant,
}

/// Forwards every remote change of `replica` to `tx`, timestamped on receipt; counts
/// changes the broadcast dropped because this task fell behind in `lagged`.
fn watch_arrivals(
    replica: &Replica,
    index: usize,
    tx: mpsc::UnboundedSender<Arrival>,
    lagged: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let mut changes = replica.subscribe();
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(change) => {
                    let at = Instant::now();
                    if matches!(change.origin, Origin::Remote(_))
                        && tx
                            .send(Arrival {
                                replica: index,
                                cid: change.cid,
                                at,
                            })
                            .is_err()
                    {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    lagged.fetch_add(n, Ordering::Relaxed);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// Waits for the arrival of `cid`, dropping others; `None` after `ARRIVAL_TIMEOUT`.
async fn arrival_of(rx: &mut mpsc::UnboundedReceiver<Arrival>, cid: &Cid) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + ARRIVAL_TIMEOUT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(a)) if &a.cid == cid => return Some(a.at),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Latency percentiles, nearest rank.
struct Summary {
    n: usize,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    mean: Duration,
    /// Samples above `SLOW`.
    over: usize,
}

/// The threshold of the "slow" column: half the default push batch window.
const SLOW: Duration = Duration::from_millis(50);

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort_unstable();
    let n = samples.len();
    let pick = |q: f64| {
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        samples[rank - 1]
    };
    let total: Duration = samples.iter().sum();
    Summary {
        n,
        over: samples.iter().filter(|d| **d > SLOW).count(),
        p50: pick(0.50),
        p99: pick(0.99),
        p999: pick(0.999),
        max: samples.last().copied().unwrap_or_default(),
        mean: if n == 0 {
            Duration::ZERO
        } else {
            total / n as u32
        },
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// The node's request and apply-outcome counters, by their exposition line's name and
/// labels.
fn counters(node: &Node) -> HashMap<String, f64> {
    node.metrics
        .render(0, 0)
        .lines()
        .filter(|l| {
            l.starts_with("weft_requests_total") || l.starts_with("weft_apply_outcomes_total")
        })
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// What the node counted between `before` and `after`, per write.
fn counted_per_write(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    writes: usize,
) -> String {
    let mut rows: Vec<String> = after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| format!("`{k}` {:.1}", d / writes.max(1) as f64))
        })
        .collect();
    rows.sort();
    rows.join(", ")
}

/// CPU time of this process so far (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // After the command name (in parentheses) come the state, then 10 more fields, then
    // utime and stime, in clock ticks of 1/100 s on Linux.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A node, a writer A and a receiver B, configured and warmed up, with B's arrivals.
struct Pair {
    node: Node,
    a: Device,
    b: Device,
    rx: mpsc::UnboundedReceiver<Arrival>,
    /// Arrivals on the node.
    node_rx: mpsc::UnboundedReceiver<Arrival>,
    lagged: Arc<AtomicU64>,
    watchers: [tokio::task::JoinHandle<()>; 2],
}

async fn pair(config: LinkConfig) -> Pair {
    let node = start_node(1024).await;
    let a = device(&node, config.clone());
    let b = device(&node, config);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let lagged = Arc::new(AtomicU64::new(0));
    let watcher = watch_arrivals(&b.replica, 1, tx, lagged.clone());
    let (node_tx, mut node_rx) = mpsc::unbounded_channel();
    let node_watcher = watch_arrivals(&node.replica, 0, node_tx, lagged.clone());
    configure(&a.replica);
    for i in 0..WARMUP_WRITES {
        let cid = put(&a.replica, &format!("warm{i}"));
        arrival_of(&mut rx, &cid)
            .await
            .expect("a warm-up write never arrived");
    }
    while node_rx.try_recv().is_ok() {}
    Pair {
        node,
        a,
        b,
        rx,
        node_rx,
        lagged,
        watchers: [watcher, node_watcher],
    }
}

impl Pair {
    async fn stop(self) {
        for w in self.watchers {
            w.abort();
        }
        let _ = self.a.live.stop(Duration::from_secs(5)).await;
        let _ = self.b.live.stop(Duration::from_secs(5)).await;
        self.node.server.shutdown().await;
    }
}

/// One write at a time: put on A, wait for it on B, next.
async fn sequential(writes: usize) -> Option<(Summary, Summary)> {
    let mut p = pair(LinkConfig::default()).await;
    let mut samples = Vec::with_capacity(writes);
    let mut to_node = Vec::with_capacity(writes);
    for i in 0..writes {
        let start = Instant::now();
        let cid = put(&p.a.replica, &format!("seq{i}"));
        match arrival_of(&mut p.rx, &cid).await {
            Some(at) => {
                samples.push(at - start);
                // The node applied it before B could; its change is already queued.
                if let Some(at) = arrival_of(&mut p.node_rx, &cid).await {
                    to_node.push(at - start);
                }
            }
            None => {
                println!("write {i} did not arrive within {ARRIVAL_TIMEOUT:?}; stopping");
                break;
            }
        }
    }
    let lagged = p.lagged.load(Ordering::Relaxed);
    if lagged != 0 {
        println!("note: the arrival watcher missed {lagged} changes");
    }
    p.stop().await;
    (!samples.is_empty()).then(|| (summarize(to_node), summarize(samples)))
}

/// Bursts of `burst` writes back to back; each write's latency from its own put.
async fn bursts(writes: usize, burst: usize, config: LinkConfig) -> Option<Summary> {
    let mut p = pair(config).await;
    let mut samples = Vec::with_capacity(writes);
    let mut i = 0;
    'outer: while i < writes {
        let n = burst.min(writes - i);
        let mut started: HashMap<Cid, Instant> = HashMap::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            let cid = put(&p.a.replica, &format!("burst{i}"));
            started.insert(cid, start);
            i += 1;
        }
        let deadline = tokio::time::Instant::now() + ARRIVAL_TIMEOUT;
        while !started.is_empty() {
            match tokio::time::timeout_at(deadline, p.rx.recv()).await {
                Ok(Some(a)) => {
                    if let Some(start) = started.remove(&a.cid) {
                        samples.push(a.at - start);
                    }
                }
                Ok(None) | Err(_) => {
                    println!(
                        "{} writes of a burst did not arrive within {ARRIVAL_TIMEOUT:?}",
                        started.len()
                    );
                    break 'outer;
                }
            }
        }
    }
    let lagged = p.lagged.load(Ordering::Relaxed);
    if lagged != 0 {
        println!("note: the arrival watcher missed {lagged} changes");
    }
    p.stop().await;
    (!samples.is_empty()).then(|| summarize(samples))
}

struct Sustained {
    writes: u64,
    secs: f64,
    arrived_during: u64,
    behind_at_end: u64,
    drain: Option<Duration>,
    lagged: u64,
    /// B's sync events during the phase, by kind (checkpoint advances left out).
    b_events: String,
}

/// Writes on A as fast as one thread can for `limit` or `max_writes`; B's arrivals are
/// counted; then waits for B to hold everything.
async fn sustained(limit: Duration, max_writes: usize) -> Sustained {
    let mut p = pair(LinkConfig::default()).await;
    let arrived = Arc::new(AtomicU64::new(0));
    let counting = {
        let arrived = arrived.clone();
        let mut rx = std::mem::replace(&mut p.rx, mpsc::unbounded_channel().1);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                arrived.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // The writer is a plain thread, as an application's would be; the runtime's two
    // workers run the replicas' drivers and the node meanwhile.
    let mut events = p.b.replica.events();
    let writer = p.a.replica.clone();
    let start = Instant::now();
    let written = tokio::task::spawn_blocking({
        move || {
            let mut n = 0u64;
            while (n as usize) < max_writes && start.elapsed() < limit {
                put(&writer, &format!("s{n}"));
                n += 1;
            }
            n
        }
    })
    .await
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let end = Instant::now();
    let arrived_during = arrived.load(Ordering::Relaxed);
    let lagged = || p.lagged.load(Ordering::Relaxed);
    let mut drain = None;
    while end.elapsed() < DRAIN_TIMEOUT {
        if arrived.load(Ordering::Relaxed) + lagged() >= written {
            drain = Some(end.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    counting.abort();
    // What B's link went through: repairs, reconnects, status changes.
    let mut seen: HashMap<String, u64> = HashMap::new();
    while let Ok(e) = events.try_recv() {
        let name = format!("{e:?}");
        let name = name
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_owned();
        if name != "CheckpointAdvanced" {
            *seen.entry(name).or_default() += 1;
        }
    }
    let mut b_events: Vec<String> = seen.into_iter().map(|(k, v)| format!("{k} {v}")).collect();
    b_events.sort();
    let lagged = lagged();
    p.stop().await;
    Sustained {
        writes: written,
        secs,
        arrived_during,
        behind_at_end: written.saturating_sub(arrived_during),
        drain,
        lagged,
        b_events: b_events.join(", "),
    }
}

struct Fanout {
    replicas: usize,
    startup: Duration,
    rss_before: u64,
    rss_after: u64,
    rss_bare: u64,
    connections: u64,
    subscriptions: u64,
    to_all: Summary,
    to_node: Summary,
    each: Summary,
    per_write: String,
    /// Process CPU time and wall time of the measured writes.
    cpu: Duration,
    wall: Duration,
    writes: usize,
    missing: usize,
}

/// One node, a writer and `replicas` live receivers; each write waits until every
/// receiver holds it.
async fn fanout(replicas: usize, writes: usize) -> Fanout {
    // Each receiver holds a subscription and pooled request connections to the node.
    let node = start_node(replicas * 4 + 64).await;
    let writer = device(&node, LinkConfig::default());
    configure(&writer.replica);
    put(&writer.replica, "first");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let lagged = Arc::new(AtomicU64::new(0));

    // Let the writer's push settle and the allocator warm up before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut devices = Vec::with_capacity(replicas);
    let mut watchers = Vec::with_capacity(replicas);
    for i in 0..replicas {
        let d = device(&node, LinkConfig::default());
        watchers.push(watch_arrivals(&d.replica, i, tx.clone(), lagged.clone()));
        devices.push(d);
    }
    // Live: every receiver holds the first write (read from the store: it may have been
    // applied before the watcher subscribed) and its link says Live.
    for d in &devices {
        while started.elapsed() < STARTUP_TIMEOUT {
            let holds = d
                .replica
                .get_by_key(&tenant(), &protocol(), b"first")
                .ok()
                .flatten()
                .is_some();
            let live = holds
                && d.live
                    .driver()
                    .states()
                    .await
                    .iter()
                    .all(|s| s.status == LinkStatus::Live);
            if live {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let startup = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_bytes();
    // For comparison: what bare in-memory replicas cost, with no engine or links.
    let bare: Vec<Replica> = (0..replicas)
        .map(|_| Replica::in_memory().unwrap())
        .collect();
    let rss_bare = rss_bytes().saturating_sub(rss_after);
    drop(bare);
    let connections = node.server.node().connections();
    let subscriptions = node.server.node().subscriptions();

    // The node's commits, timestamped inside the commit by a ledger listener: a task
    // watching the node's changes would be scheduled behind the fan-out it triggers.
    // During the writes the writer's pushes are the node's only commits.
    let (node_tx, node_rx) = std::sync::mpsc::channel::<Instant>();
    node.replica
        .ledger()
        .add_listener(move |_: &TenantId, _: u64| {
            let _ = node_tx.send(Instant::now());
        });
    let before = counters(&node);
    let (cpu_before, wall_before) = (cpu_time(), Instant::now());
    let mut to_all = Vec::with_capacity(writes);
    let mut to_node = Vec::with_capacity(writes);
    let mut each = Vec::with_capacity(writes * replicas);
    let mut missing = 0;
    for w in 0..writes {
        // Drop anything left from the previous write.
        while rx.try_recv().is_ok() {}
        while node_rx.try_recv().is_ok() {}
        let start = Instant::now();
        let cid = put(&writer.replica, &format!("fan{w}"));
        let mut seen = vec![false; replicas];
        let mut count = 0;
        let deadline = tokio::time::Instant::now() + ARRIVAL_TIMEOUT;
        let mut last = start;
        while count < replicas {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(a)) if a.cid == cid && !seen[a.replica] => {
                    seen[a.replica] = true;
                    count += 1;
                    each.push(a.at - start);
                    last = last.max(a.at);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        // Every receiver got the write from the node, so the node's commit is done.
        if let Ok(at) = node_rx.try_recv() {
            to_node.push(at - start);
        }
        if count < replicas {
            missing += replicas - count;
            println!("write {w}: {} receivers missed it", replicas - count);
        } else {
            to_all.push(last - start);
        }
    }
    let cpu = cpu_time().saturating_sub(cpu_before);
    let wall = wall_before.elapsed();
    let per_write = counted_per_write(&before, &counters(&node), writes);
    let lagged = lagged.load(Ordering::Relaxed);
    if lagged != 0 {
        println!("note: arrival watchers missed {lagged} changes");
    }
    for w in watchers {
        w.abort();
    }
    for d in devices {
        let _ = d.live.stop(Duration::from_secs(5)).await;
    }
    let _ = writer.live.stop(Duration::from_secs(5)).await;
    node.server.shutdown().await;
    Fanout {
        replicas,
        startup,
        rss_before,
        rss_after,
        rss_bare,
        connections,
        subscriptions,
        to_all: summarize(to_all),
        to_node: summarize(to_node),
        each: summarize(each),
        per_write,
        missing,
        cpu,
        wall,
        writes,
    }
}

fn latency_row(label: &str, s: &Summary) {
    println!(
        "| {label} | {} | {} | {} | {} | {} | {} | {} |",
        s.n,
        s.over,
        ms(s.p50),
        ms(s.p99),
        ms(s.p999),
        ms(s.max),
        ms(s.mean)
    );
}

fn main() {
    let o = Options::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if o.runs("sequential") || o.runs("bursts") {
            println!("### Propagation latency A → node → B (ms)\n");
            println!("| writes | n | > 50 ms | p50 | p99 | p99.9 | max | mean |");
            println!("|---|---:|---:|---:|---:|---:|---:|---:|");
            if o.runs("sequential")
                && let Some((node, s)) = sequential(o.writes).await
            {
                latency_row("one at a time, A → node only", &node);
                latency_row("one at a time", &s);
            }
            if o.runs("bursts") {
                if let Some(s) = bursts(o.writes, o.burst, LinkConfig::default()).await {
                    latency_row(&format!("bursts of {}", o.burst), &s);
                }
                // Not the default: the same bursts without the push batch window, to
                // show what the window costs.
                let no_window = LinkConfig {
                    push_batch_window_ms: 0,
                    ..LinkConfig::default()
                };
                if let Some(s) = bursts(o.writes, o.burst, no_window).await {
                    latency_row(
                        &format!("bursts of {}, `push_batch_window_ms = 0`", o.burst),
                        &s,
                    );
                }
            }
            println!();
        }
        if o.runs("sustained") {
            let s = sustained(o.sustain, o.sustain_writes).await;
            println!("### Sustained writes on A with live replication\n");
            println!(
                "| writes | time (s) | writes/s on A | arrived on B meanwhile | B behind at end | time to drain (s) |"
            );
            println!("|---:|---:|---:|---:|---:|---:|");
            println!(
                "| {} | {:.2} | {:.0} | {} | {} | {} |",
                s.writes,
                s.secs,
                s.writes as f64 / s.secs,
                s.arrived_during,
                s.behind_at_end,
                s.drain
                    .map_or_else(|| "not drained".into(), |d| format!("{:.2}", d.as_secs_f64()))
            );
            println!("\nB's sync events: {}", s.b_events);
            if s.lagged != 0 {
                println!(
                    "\nnote: {} arrivals were counted through the broadcast's lag report",
                    s.lagged
                );
            }
            println!();
        }
        if o.runs("fanout") {
            // The measuring loop runs as a task on the runtime: on the `block_on` thread,
            // every one of the 1,000 arrivals per write woke that thread through a futex
            // (about a tenth of the process's CPU in a profile).
            let f = tokio::spawn(fanout(o.replicas, o.fanout_writes))
                .await
                .unwrap();
            println!("### Fan-out: one node, {} live replicas\n", f.replicas);
            println!(
                "startup {:.2} s; node: {} connections, {} subscriptions\n",
                f.startup.as_secs_f64(),
                f.connections,
                f.subscriptions
            );
            println!("| latency (ms) | n | > 50 ms | p50 | p99 | p99.9 | max | mean |");
            println!("|---|---:|---:|---:|---:|---:|---:|---:|");
            latency_row("write reaches the node", &f.to_node);
            latency_row("write reaches all replicas", &f.to_all);
            latency_row("each delivery", &f.each);
            println!("\nnode counters per write: {}", f.per_write);
            println!(
                "\nprocess CPU during the writes: {:.1} ms per write, {:.1} µs per delivery, \
                 {:.2} cores busy on average",
                f.cpu.as_secs_f64() * 1e3 / f.writes.max(1) as f64,
                f.cpu.as_secs_f64() * 1e6 / (f.writes * f.replicas).max(1) as f64,
                f.cpu.as_secs_f64() / f.wall.as_secs_f64()
            );
            if f.missing != 0 {
                println!("\n{} deliveries missing", f.missing);
            }
            println!();
            let growth = f.rss_after.saturating_sub(f.rss_before);
            println!(
                "| RSS before (MiB) | RSS after (MiB) | growth per live replica (KiB) | bare `Replica::in_memory()` (KiB each) |"
            );
            println!("|---:|---:|---:|---:|");
            println!(
                "| {:.1} | {:.1} | {:.1} | {:.1} |",
                f.rss_before as f64 / (1024.0 * 1024.0),
                f.rss_after as f64 / (1024.0 * 1024.0),
                growth as f64 / f.replicas as f64 / 1024.0,
                f.rss_bare as f64 / f.replicas as f64 / 1024.0
            );
            println!();
        }
    });
}
