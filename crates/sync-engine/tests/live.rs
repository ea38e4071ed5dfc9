//! Live replication over real sockets: replicas with live drivers and a node on
//! 127.0.0.1. A write on one appears on the others without any explicit sync: after a node
//! restart, with change notifications lost or repeated, from a stale checkpoint, and while
//! identities are added, changed and removed.

mod faulty_node;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use faulty_node::FaultyNode;
use sync_engine::live::{EngineOps, LiveDriver, LiveSync};
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
    let config = LinkConfig {
        reconnect_backoff_ms: vec![100, 250, 500],
        ..LinkConfig::default()
    };
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

async fn start_wrapped(noisy: bool, key: &TokenKey) -> (Replica, ServerHandle<FaultyNode>) {
    let node = Replica::in_memory().unwrap();
    let mut config = ServerConfig::new(key.clone());
    // With notifications lost, only the periodic re-read finds new entries.
    config.live_poll_interval_ms = 100;
    let handler = FaultyNode::new(ReplicaHandler::new(node.clone()));
    let handler = if noisy {
        handler.repeat_wakeups()
    } else {
        handler.lose_wakeups()
    };
    let server = serve(Arc::new(handler), config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (node, server)
}

fn owner_token(key: &TokenKey) -> Token {
    Token::issue(
        key,
        Claims::owner(
            tenant(),
            alice(),
            GrantId::new("owner").unwrap(),
            4_000_000_000_000,
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_or_repeated_notifications_cost_latency_never_data() {
    for noisy in [false, true] {
        let key = TokenKey::derive(b"wakeups");
        let (node, server) = start_wrapped(noisy, &key).await;
        let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
        let token = owner_token(&key);
        let a = device(&endpoint, &token);
        let b = device(&endpoint, &token);
        let types = vec![TypeRule {
            path: note(),
            data_bytes_max: None,
        }];
        a.replica
            .configure(&tenant(), &notes(), types, vec![], &alice())
            .unwrap();
        for i in 0..20u8 {
            a.replica
                .put(&tenant(), &notes(), &note(), &[i], vec![i; 3], &alice())
                .unwrap();
        }
        for i in 0..20u8 {
            arrives(&b.replica, &[i], &[i; 3]).await;
        }
        // Each message is held once everywhere: 21 retained messages, 21 log entries.
        let sync_ledger::LogRead::Page(page) =
            b.replica.changes_since(&tenant(), None, 1000).unwrap()
        else {
            panic!("gap")
        };
        assert_eq!(page.entries.len(), 21, "noisy = {noisy}");
        assert_eq!(
            node.root(&tenant(), &Scope::Full).unwrap(),
            b.replica.root(&tenant(), &Scope::Full).unwrap()
        );
        assert!(a.driver.stop(Duration::from_secs(5)).await);
        assert!(b.driver.stop(Duration::from_secs(5)).await);
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_checkpoint_repairs_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let key = TokenKey::derive(b"stale");
    let server = start_node(dir.path(), &key, "127.0.0.1:0".parse().unwrap()).await;
    let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
    let token = owner_token(&key);
    // A writer without a driver: it syncs by hand, as a device that comes online now and
    // then would.
    let a = Replica::in_memory().unwrap();
    let a_engine = Engine::builder(a.clone(), HttpConnector::new(ClientConfig::default())).build();
    a_engine
        .register_identity(Identity::owner(
            tenant(),
            vec![endpoint.clone()],
            token.to_string(),
        ))
        .unwrap();
    let types = vec![TypeRule {
        path: note(),
        data_bytes_max: None,
    }];
    a.configure(&tenant(), &notes(), types, vec![], &alice())
        .unwrap();
    a.put(&tenant(), &notes(), &note(), b"x", b"1".to_vec(), &alice())
        .unwrap();
    assert!(a_engine.sync_once().await.is_ok());

    // A replica whose pull checkpoint names another epoch of the node's log, and one
    // whose checkpoint is beyond the node's head: both must repair, then go live.
    for stale in [
        |t: ProgressToken| ProgressToken {
            epoch: t.epoch + 1,
            ..t
        },
        |t: ProgressToken| ProgressToken {
            position: t.position + 1_000,
            ..t
        },
    ] {
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
        let link = engine.links().unwrap().remove(0);
        engine.sync_once().await;
        let real = replica
            .ledger()
            .links()
            .get(&link.key)
            .unwrap()
            .unwrap()
            .pull
            .contiguous_applied
            .unwrap();
        replica
            .ledger()
            .links()
            .update(&link.key, sync_ledger::Durability::SyncData, |s| {
                s.pull.reset(Some(stale(real)))
            })
            .unwrap();
        // Listen before the driver starts: it may meet the gap at once.
        let mut events = replica.events();
        let live = LiveSync::start(engine, LinkConfig::default()).unwrap();
        a.put(
            &tenant(),
            &notes(),
            &note(),
            b"late",
            b"2".to_vec(),
            &alice(),
        )
        .unwrap();
        assert!(a_engine.sync_once().await.is_ok());
        arrives(&replica, b"late", b"2").await;
        // The gap is noticed (and the repair finishes) around when the write arrives,
        // in either order: wait for the event, a bounded time so a bug fails.
        let noticed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match events.recv().await {
                    Ok(SyncEvent::RepairCompleted { .. } | SyncEvent::GapDetected { .. }) => {
                        return true;
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
                }
            }
        })
        .await;
        assert_eq!(
            noticed,
            Ok(true),
            "the stale cursor was noticed and repaired"
        );
        assert!(live.stop(Duration::from_secs(5)).await);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_come_and_go_while_live_sync_runs() {
    let dir = tempfile::tempdir().unwrap();
    let key = TokenKey::derive(b"identities");
    let server = start_node(dir.path(), &key, "127.0.0.1:0".parse().unwrap()).await;
    let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
    let token = owner_token(&key);
    let writer = device(&endpoint, &token);
    let types = vec![TypeRule {
        path: note(),
        data_bytes_max: None,
    }];
    writer
        .replica
        .configure(&tenant(), &notes(), types, vec![], &alice())
        .unwrap();

    let replica = Replica::in_memory().unwrap();
    let engine =
        Engine::builder(replica.clone(), HttpConnector::new(ClientConfig::default())).build();
    let live = LiveSync::start(engine, LinkConfig::default()).unwrap();
    assert!(live.driver().states().await.is_empty());
    let keys = live
        .register_identity(Identity::owner(
            tenant(),
            vec![endpoint.clone()],
            token.to_string(),
        ))
        .unwrap();
    writer
        .replica
        .put(
            &tenant(),
            &notes(),
            &note(),
            b"one",
            b"1".to_vec(),
            &alice(),
        )
        .unwrap();
    arrives(&replica, b"one", b"1").await;

    // Narrowing the scope makes a new link identity: the old link stops, the new one runs.
    let narrowed = Identity {
        scope: Scope::protocols(vec![notes()]).unwrap(),
        ..Identity::owner(tenant(), vec![endpoint.clone()], token.to_string())
    };
    let new_keys = live.update_identity(narrowed).unwrap();
    assert_ne!(keys, new_keys);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let states = live.driver().states().await;
        if states.len() == 1 && states[0].key == new_keys[0] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    writer
        .replica
        .put(
            &tenant(),
            &notes(),
            &note(),
            b"two",
            b"2".to_vec(),
            &alice(),
        )
        .unwrap();
    arrives(&replica, b"two", b"2").await;

    live.unregister_identity(&tenant()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !live.driver().states().await.is_empty() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(live.engine().links().unwrap().is_empty());
    assert!(live.stop(Duration::from_secs(5)).await);
    assert!(writer.driver.stop(Duration::from_secs(5)).await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_arrive_live_and_become_resident() {
    let dir = tempfile::tempdir().unwrap();
    let key = TokenKey::derive(b"live blobs");
    let server = start_node(dir.path(), &key, "127.0.0.1:0".parse().unwrap()).await;
    let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
    let token = owner_token(&key);
    let a = device(&endpoint, &token);
    let b = device(&endpoint, &token);
    let types = vec![TypeRule {
        path: note(),
        data_bytes_max: None,
    }];
    a.replica
        .configure(&tenant(), &notes(), types, vec![], &alice())
        .unwrap();
    // Three times the inline limit: a blob, pushed before its message, fetched after it.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    a.replica
        .put(
            &tenant(),
            &notes(),
            &note(),
            b"photo",
            big.clone(),
            &alice(),
        )
        .unwrap();
    arrives(&b.replica, b"photo", &big).await;
    let record = b
        .replica
        .get_by_key(&tenant(), &notes(), b"photo")
        .unwrap()
        .unwrap();
    assert_eq!(record.residency, sync_engine::blob::Residency::Resident);
    assert!(a.driver.stop(Duration::from_secs(5)).await);
    assert!(b.driver.stop(Duration::from_secs(5)).await);
    server.shutdown().await;
}
