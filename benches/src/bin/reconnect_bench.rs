//! A node restarts under a fleet of live replicas: how their reconnects spread over time
//! (a histogram) and the node's peak load (reconnects in the busiest 50 ms), with the
//! links' jitter on (the default, delays spread over `[d/2, 3d/2)`) and off.
//!
//! Usage:
//!
//! ```text
//! cargo run --release -p benches --bin reconnect_bench                  # 1,000 replicas
//! cargo run --release -p benches --bin reconnect_bench -- --replicas 200
//! ```
//!
//! Everything runs in this process on one tokio runtime: the node (a `ReplicaHandler`
//! over an in-memory replica behind the hyper server on 127.0.0.1) and every replica (in
//! memory, an `Engine` over `HttpConnector` run by `LiveSync`), over real sockets. Each
//! replica has its own random node id, which seeds its links' jitter. The node is shut
//! down (its subscriptions are told `ShuttingDown`) and served again on the same port at
//! once; a reconnect is a link reporting `Online` again, timed from the new node's
//! start.

// A bench binary's output is its result: it prints tables on stdout by design.
#![allow(clippy::print_stdout)]
// Counts and durations are far below the truncation limits on a 64-bit host.
#![allow(clippy::cast_possible_truncation)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sync_engine::live::LiveSync;
use sync_engine::machine::LinkConfig;
use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Replica, ReplicaHandler};
use sync_transport::{Claims, ClientConfig, ServerConfig, ServerHandle, Token, TokenKey, serve};
use sync_types::*;

const FAR_FUTURE_MS: u64 = 4_000_000_000_000;
/// Longest wait for the fleet to be live, and to be back after the restart.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Width of a histogram bucket, and of the window the peak load is counted in.
const BUCKET_MS: u64 = 50;

fn tenant() -> TenantId {
    TenantId::new("did:example:fleet").unwrap()
}

fn server_config(key: &TokenKey, replicas: usize) -> ServerConfig {
    let mut config = ServerConfig::new(key.clone());
    let connections = replicas * 4 + 64;
    config.connections_max = connections;
    config.connections_per_address_max = connections;
    config.subscriptions_max = connections;
    config.shutdown_grace_ms = 100;
    config
}

async fn start(
    handler: Arc<ReplicaHandler>,
    config: ServerConfig,
    addr: SocketAddr,
) -> ServerHandle<ReplicaHandler> {
    serve(handler, config, addr).await.unwrap()
}

/// Reconnect times of one run, in ms from the new node's start, sorted.
async fn run(replicas: usize, jitter_percent: u32) -> Vec<u64> {
    let key = TokenKey::derive(b"reconnect bench");
    let node_replica = Replica::in_memory().unwrap();
    let handler = Arc::new(ReplicaHandler::new(node_replica));
    let server = start(
        handler.clone(),
        server_config(&key, replicas),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let addr = server.local_addr();
    let endpoint = Endpoint::new(format!("http://{addr}")).unwrap();
    let token = Token::issue(
        &key,
        Claims::owner(
            tenant(),
            PrincipalId::new("did:example:fleet").unwrap(),
            GrantId::new("owner").unwrap(),
            FAR_FUTURE_MS,
        ),
    )
    .to_string();
    let config = LinkConfig {
        jitter_percent,
        ..LinkConfig::default()
    };
    // Reconnect times, recorded once the restart began.
    let restarted: Arc<Mutex<Option<Instant>>> = Arc::default();
    let times: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut fleet = Vec::with_capacity(replicas);
    for _ in 0..replicas {
        let replica = Replica::in_memory().unwrap();
        let mut events = replica.events();
        let (restarted, times) = (restarted.clone(), times.clone());
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let SyncEvent::ConnectivityChanged {
                    to: Connectivity::Online,
                    ..
                } = event
                    && let Some(at) = *restarted.lock().unwrap()
                {
                    times.lock().unwrap().push(at.elapsed().as_millis() as u64);
                    return;
                }
            }
        });
        let engine =
            Engine::builder(replica.clone(), HttpConnector::new(ClientConfig::default())).build();
        engine
            .register_identity(Identity::owner(
                tenant(),
                vec![endpoint.clone()],
                token.clone(),
            ))
            .unwrap();
        fleet.push(LiveSync::start(engine, config.clone()).unwrap());
    }
    let started = Instant::now();
    for live in &fleet {
        while live
            .driver()
            .states()
            .await
            .iter()
            .any(|s| s.status != LinkStatus::Live)
        {
            assert!(
                started.elapsed() < SETTLE_TIMEOUT,
                "the fleet never went live"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!(
        "{replicas} replicas live after {:.1} s (jitter {jitter_percent} %)",
        started.elapsed().as_secs_f64()
    );
    // The restart: stop, then serve the same store on the same port at once.
    server.shutdown().await;
    let server = start(handler, server_config(&key, replicas), addr).await;
    *restarted.lock().unwrap() = Some(Instant::now());
    let waited = Instant::now();
    while times.lock().unwrap().len() < replicas && waited.elapsed() < SETTLE_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(server);
    for live in fleet {
        live.stop(Duration::from_secs(5)).await;
    }
    let mut times = times.lock().unwrap().clone();
    times.sort_unstable();
    times
}

fn report(label: &str, replicas: usize, times: &[u64]) {
    println!("\n### {label}\n");
    if times.is_empty() {
        println!("no reconnects");
        return;
    }
    let last = *times.last().unwrap();
    let mut buckets = vec![0u64; (last / BUCKET_MS + 1) as usize];
    for t in times {
        buckets[(t / BUCKET_MS) as usize] += 1;
    }
    let peak = buckets.iter().copied().max().unwrap_or(0);
    let pct = |p: usize| times[(times.len() - 1) * p / 100];
    println!(
        "reconnected {} of {replicas}; first {} ms, p50 {} ms, p90 {} ms, last {} ms; peak {} reconnects in {BUCKET_MS} ms",
        times.len(),
        times[0],
        pct(50),
        pct(90),
        last,
        peak
    );
    println!("\n| from ms | reconnects |\n|---:|---:|");
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 {
            println!("| {} | {n} |", i as u64 * BUCKET_MS);
        }
    }
}

fn main() {
    let mut replicas = 1_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--replicas" {
            replicas = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--replicas N");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let jittered = run(replicas, 50).await;
        report(
            "jitter 50 % (default): delays over [d/2, 3d/2)",
            replicas,
            &jittered,
        );
        let flat = run(replicas, 0).await;
        report("jitter off", replicas, &flat);
    });
}
