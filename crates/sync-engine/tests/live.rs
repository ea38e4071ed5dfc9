//! Live replication over real sockets: two replicas with live drivers and a node on
//! 127.0.0.1. A write on one appears on the other without any explicit sync, including
//! after the node restarts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sync_engine::live::{EngineOps, LiveDriver};
use sync_engine::machine::LinkConfig;
use sync_engine::sync::{Engine, HttpConnector, Identity};
use sync_engine::{Replica, ReplicaHandler};
use sync_transport::{Claims, ClientConfig, ServerConfig, ServerHandle, Token, TokenKey, serve};
use sync_types::*;

fn tenant() -> TenantId {
    TenantId::new("did:example:alice").unwrap()
}
fn notes() -> ProtocolName {
    ProtocolName::new("https://example.com/notes").unwrap()
}
fn note() -> ProtocolPath {
    ProtocolPath::new("note").unwrap()
}
fn alice() -> PrincipalId {
    PrincipalId::new("did:example:alice").unwrap()
}

async fn start_node(
    dir: &std::path::Path,
    key: &TokenKey,
    addr: SocketAddr,
) -> ServerHandle<ReplicaHandler> {
    let replica = Replica::open(dir).unwrap();
    let mut config = ServerConfig::new(key.clone());
    // Short heartbeats so a restarted node is noticed quickly.
    config.heartbeat_interval_ms = 500;
    config.heartbeat_timeout_ms = 2_000;
    serve(Arc::new(ReplicaHandler::new(replica)), config, addr)
        .await
        .unwrap()
}

struct Device {
    replica: Replica,
    driver: LiveDriver,
}

fn device(endpoint: &Endpoint, token: &Token) -> Device {
    let replica = Replica::in_memory().unwrap();
    let engine =
        Engine::builder(replica.clone(), HttpConnector::new(ClientConfig::default())).build();
    engine
        .register_identity(Identity::owner(
            tenant(),
            vec![endpoint.clone()],
            token.to_string(),
        ))
        .unwrap();
    let links = engine.links().unwrap();
    let config = EngineOps::<HttpConnector>::link_config(LinkConfig {
        reconnect_backoff_ms: vec![100, 250, 500],
        ..LinkConfig::default()
    });
    let driver = LiveDriver::start(
        replica.clone(),
        Arc::new(EngineOps::new(engine)),
        links,
        config,
    );
    Device { replica, driver }
}

/// Waits until `replica` holds the record with `data`, at most 20 s.
async fn arrives(replica: &Replica, key: &[u8], data: &[u8]) -> Duration {
    let started = std::time::Instant::now();
    loop {
        if let Ok(Some(r)) = replica.get_by_key(&tenant(), &notes(), key)
            && r.data.as_deref() == Some(data)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?} never arrived",
            String::from_utf8_lossy(key)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_propagate_live_both_ways_and_survive_a_node_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = TokenKey::derive(b"live test");
    let server = start_node(dir.path(), &key, "127.0.0.1:0".parse().unwrap()).await;
    let addr = server.local_addr();
    let endpoint = Endpoint::new(format!("http://{addr}")).unwrap();
    let token = Token::issue(
        &key,
        Claims::owner(
            tenant(),
            alice(),
            GrantId::new("owner").unwrap(),
            4_000_000_000_000,
        ),
    );
    let a = device(&endpoint, &token);
    let b = device(&endpoint, &token);

    let types = vec![TypeRule {
        path: note(),
        data_bytes_max: None,
    }];
    a.replica
        .configure(&tenant(), &notes(), types, vec![], &alice())
        .unwrap();
    a.replica
        .put(
            &tenant(),
            &notes(),
            &note(),
            b"k1",
            b"from a".to_vec(),
            &alice(),
        )
        .unwrap();
    arrives(&b.replica, b"k1", b"from a").await;
    b.replica
        .put(
            &tenant(),
            &notes(),
            &note(),
            b"k2",
            b"from b".to_vec(),
            &alice(),
        )
        .unwrap();
    arrives(&a.replica, b"k2", b"from b").await;

    // The node goes away and comes back on the same address with the same store.
    server.shutdown().await;
    a.replica
        .put(
            &tenant(),
            &notes(),
            &note(),
            b"k3",
            b"while the node was down".to_vec(),
            &alice(),
        )
        .unwrap();
    let server = start_node(dir.path(), &key, addr).await;
    arrives(&b.replica, b"k3", b"while the node was down").await;
    b.replica
        .put(
            &tenant(),
            &notes(),
            &note(),
            b"k1",
            b"b edits".to_vec(),
            &alice(),
        )
        .unwrap();
    arrives(&a.replica, b"k1", b"b edits").await;

    // Both converge to the same tree, and both links report caught up.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ra = a.replica.root(&tenant(), &Scope::Full).unwrap();
        let rb = b.replica.root(&tenant(), &Scope::Full).unwrap();
        if ra == rb {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "roots never converged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for d in [&a, &b] {
        let states = d.driver.states().await;
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].status, LinkStatus::Live, "{:?}", states[0]);
    }
    assert!(a.driver.stop(Duration::from_secs(5)).await);
    assert!(b.driver.stop(Duration::from_secs(5)).await);
    server.shutdown().await;
}
