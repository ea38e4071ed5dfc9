//! Cross-node live propagation and throughput with one, two and three nodes on one
//! PostgreSQL database, printed as a markdown table for BENCHMARKS.md.
//!
//! Usage: `cargo run --release -p benches --bin cluster_bench [-- <writes> <burst>]`
//! (defaults 300 and 2000). The database is `WEFT_TEST_PG_URL` when set, else a
//! throwaway cluster this process starts (as `sync-ledger-pg`'s tests do).
//!
//! Each node runs in this process but as a node process would: its own `PgStore` pool,
//! its own ledger, trees and `PgChangeBus` (its own `LISTEN` and `NOTIFY` connections),
//! its own HTTP server on 127.0.0.1; nodes share nothing but the database. A writer
//! replica is live on node 0; with one node a watcher replica is live on node 0 too,
//! with two or three nodes one watcher is live on each other node. The nodes re-read
//! the log on their own only every ten minutes, so every delivery to a watcher on
//! another node is woken by the bus.
//!
//! - latency: the writer writes one record, then waits until every watcher's change
//!   feed shows it; each watcher's delay is one sample (`writes` writes);
//! - throughput: the writer writes `burst` records as fast as it can; the time until
//!   every watcher has them all gives messages per second delivered to each watcher.

#![allow(clippy::print_stdout)]

#[path = "../../../crates/sync-ledger-pg/tests/support/mod.rs"]
mod pg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sync_engine::live::LiveSync;
use sync_engine::machine::LinkConfig;
use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Replica, ReplicaHandler};
use sync_ledger::Ledger;
use sync_ledger_pg::{PgChangeBus, PgStore};
use sync_transport::{Claims, ServerConfig, ServerHandle, Token, TokenKey, serve};
use sync_types::*;

fn tenant() -> TenantId {
    TenantId::new("bench").unwrap()
}
fn protocol() -> ProtocolName {
    ProtocolName::new("bench:notes").unwrap()
}
fn path() -> ProtocolPath {
    ProtocolPath::new("note").unwrap()
}
fn author() -> PrincipalId {
    PrincipalId::new("bench").unwrap()
}
fn key() -> TokenKey {
    TokenKey::from_bytes([5; 32])
}
fn token() -> String {
    let claims = Claims::owner(
        tenant(),
        author(),
        GrantId::new("bench").unwrap(),
        u64::MAX / 2,
    );
    Token::issue(&key(), claims).to_string()
}

async fn node(url: &str, schema: &str) -> (ServerHandle<ReplicaHandler>, String) {
    let store = PgStore::builder(url).schema(schema).open().unwrap();
    let replica = Replica::builder()
        .with_ledger(Ledger::open(store).unwrap())
        .unwrap();
    let bus = Arc::new(PgChangeBus::start(url, schema).unwrap());
    let handler = Arc::new(ReplicaHandler::new(replica).with_bus(bus));
    let mut config = ServerConfig::new(key());
    config.live_poll_interval_ms = 600_000;
    let server = serve(handler, config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let endpoint = format!("http://{}", server.local_addr());
    (server, endpoint)
}

async fn live_replica(endpoint: &str) -> (Replica, LiveSync<HttpConnector>) {
    let r = Replica::builder().in_memory().unwrap();
    let engine = Engine::builder(r.clone(), HttpConnector::default()).build();
    engine
        .register_identity(Identity::owner(
            tenant(),
            vec![Endpoint::new(endpoint).unwrap()],
            token(),
        ))
        .unwrap();
    let report = engine.sync_once().await;
    assert!(report.is_ok(), "{:?}", report.error);
    let live = LiveSync::start(engine, LinkConfig::default()).unwrap();
    (r, live)
}

/// The `per_mille`th of `sorted` (nearest rank below).
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Waits until `replica` has a remote change of every record in `want`.
async fn seen_all(
    feed: &mut tokio::sync::broadcast::Receiver<sync_engine::Change>,
    replica: &Replica,
    want: &mut std::collections::HashSet<RecordId>,
) {
    while !want.is_empty() {
        match tokio::time::timeout(Duration::from_secs(60), feed.recv()).await {
            Ok(Ok(change)) => {
                if let Some(id) = change.record_id {
                    want.remove(&id);
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                want.retain(|id| replica.get(&tenant(), id).ok().flatten().is_none());
            }
            Ok(Err(e)) => panic!("change feed: {e}"),
            Err(_) => panic!("a watcher did not get {} records within 60 s", want.len()),
        }
    }
}

async fn run(url: &str, nodes: usize, writes: usize, burst: usize) -> String {
    let schema = pg::fresh_schema(&format!("cluster{nodes}"));
    let mut servers = Vec::new();
    let mut endpoints: Vec<String> = Vec::new();
    for _ in 0..nodes {
        let (s, e) = node(url, &schema).await;
        servers.push(s);
        endpoints.push(e);
    }
    let writer = Replica::builder().in_memory().unwrap();
    writer
        .configure(
            &tenant(),
            &protocol(),
            vec![TypeRule {
                path: path(),
                data_bytes_max: None,
            }],
            vec![],
            &author(),
        )
        .unwrap();
    let engine = Engine::builder(writer.clone(), HttpConnector::default()).build();
    engine
        .register_identity(Identity::owner(
            tenant(),
            vec![Endpoint::new(&endpoints[0]).unwrap()],
            token(),
        ))
        .unwrap();
    assert!(engine.sync_once().await.is_ok());
    let writer_live = LiveSync::start(engine, LinkConfig::default()).unwrap();
    let watcher_nodes: Vec<usize> = if nodes == 1 {
        vec![0]
    } else {
        (1..nodes).collect()
    };
    let mut watchers = Vec::new();
    for &n in &watcher_nodes {
        watchers.push(live_replica(&endpoints[n]).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut feeds: Vec<_> = watchers.iter().map(|(r, _)| r.subscribe()).collect();

    let put = |i: usize| {
        writer
            .put(
                &tenant(),
                &protocol(),
                &path(),
                format!("k{i}").as_bytes(),
                format!("value {i}").into_bytes(),
                &author(),
            )
            .unwrap()
            .record_id
    };
    // Latency.
    let mut samples = Vec::new();
    for i in 0..writes {
        let t0 = Instant::now();
        let id = put(i);
        for (feed, (r, _)) in feeds.iter_mut().zip(&watchers) {
            let mut want = std::collections::HashSet::from([id]);
            seen_all(feed, r, &mut want).await;
            samples.push(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    samples.sort();
    // Throughput.
    let t0 = Instant::now();
    let mut want = std::collections::HashSet::new();
    for i in 0..burst {
        want.insert(put(writes + i));
    }
    let written = t0.elapsed();
    for (feed, (r, _)) in feeds.iter_mut().zip(&watchers) {
        let mut w = want.clone();
        seen_all(feed, r, &mut w).await;
    }
    let delivered = t0.elapsed();
    writer_live.stop(Duration::from_secs(5)).await;
    for (_, live) in watchers {
        live.stop(Duration::from_secs(5)).await;
    }
    for s in servers {
        s.shutdown().await;
    }
    format!(
        "| {nodes} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
        watcher_nodes.len(),
        samples.len(),
        ms(percentile(&samples, 500)),
        ms(percentile(&samples, 990)),
        ms(samples[samples.len() - 1]),
        burst as f64 / written.as_secs_f64(),
        burst as f64 / delivered.as_secs_f64(),
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let writes = args.first().copied().unwrap_or(300);
    let burst = args.get(1).copied().unwrap_or(2000);
    let url = tokio::task::spawn_blocking(pg::url).await.unwrap();
    println!(
        "| nodes | watchers | samples | p50 ms | p99 ms | max ms | burst written msg/s | burst delivered msg/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for nodes in 1..=3 {
        println!("{}", run(&url, nodes, writes, burst).await);
    }
}
