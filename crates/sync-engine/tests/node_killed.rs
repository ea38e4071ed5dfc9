//! A node killed under a live subscription (kill -9): its connections reset, or close
//! without a `Closing` notice. That is a lost connection, not a broken protocol: the
//! link reconnects from its checkpoint and stays live, with no repair. (A repair runs a
//! tree diff that must end with equal roots, which never happens while either side keeps
//! writing: every kill of a node used to put the replicas on it into repair, retried
//! and then degraded polling, and replication stalled for tens of seconds.)
//!
//! The node here is a real one on 127.0.0.1 behind a TCP relay that drops every
//! connection it carries, with a reset or with a plain close, as the kernel does for a
//! killed process; the node itself stays up, so the relay's next connection reaches it
//! as a restarted node's would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sync_engine::live::{EngineOps, LiveDriver};
use sync_engine::machine::LinkConfig;
use sync_engine::sync::{Engine, HttpConnector, Identity};
use sync_engine::{Replica, ReplicaHandler};
use sync_transport::{Claims, ClientConfig, ServerConfig, Token, TokenKey, serve};
use sync_types::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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

/// How the relay ends the connections it drops.
#[derive(Clone, Copy, Debug)]
enum Drop {
    /// `SO_LINGER` 0: the peer reads a reset.
    Reset,
    /// A plain close: the peer reads the end of the stream.
    Close,
}

/// The relay's connections: a handle on each client socket and its pump.
type Conns = Arc<Mutex<Vec<(TcpStream, JoinHandle<()>)>>>;

/// A TCP relay to `to` whose connections can all be dropped at once.
struct Relay {
    addr: std::net::SocketAddr,
    conns: Conns,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Conns::default();
        let kept = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(node) = TcpStream::connect(to).await else {
                    continue;
                };
                // The relay keeps a handle on the client side (to reset it) and pumps
                // bytes both ways on clones of the sockets.
                let client_std = client.into_std().unwrap();
                let handle = TcpStream::from_std(client_std.try_clone().unwrap()).unwrap();
                let client = TcpStream::from_std(client_std).unwrap();
                let pump = tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut nr, mut nw) = node.into_split();
                    let _ = tokio::join!(
                        tokio::io::copy(&mut cr, &mut nw),
                        tokio::io::copy(&mut nr, &mut cw)
                    );
                });
                kept.lock().unwrap().push((handle, pump));
            }
        });
        Relay {
            addr,
            conns,
            accept,
        }
    }

    /// Drops every connection open now; returns how many.
    fn drop_all(&self, how: Drop) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        let n = conns.len();
        for (handle, pump) in conns {
            pump.abort();
            match how {
                Drop::Reset => handle.set_zero_linger().unwrap(),
                Drop::Close => {}
            }
            // Shut both directions of the shared socket, so the pump's clone (dropped
            // later by the aborted task) cannot keep it open.
            let std = handle.into_std().unwrap();
            if matches!(how, Drop::Close) {
                let _ = std.shutdown(std::net::Shutdown::Both);
            }
            drop(std);
        }
        n
    }
}

impl std::ops::Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_all(Drop::Close);
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Everything `events` holds now (a lagging receiver skips what it missed).
fn drain(events: &mut tokio::sync::broadcast::Receiver<SyncEvent>, into: &mut Vec<SyncEvent>) {
    use tokio::sync::broadcast::error::TryRecvError;
    loop {
        match events.try_recv() {
            Ok(e) => into.push(e),
            Err(TryRecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    }
}

fn has(replica: &Replica, key: &str) -> bool {
    replica
        .get_by_key(&tenant(), &notes(), key.as_bytes())
        .unwrap()
        .is_some()
}

fn put(replica: &Replica, key: &str) {
    replica
        .put(
            &tenant(),
            &notes(),
            &note(),
            key.as_bytes(),
            key.as_bytes().to_vec(),
            &alice(),
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_dropped_subscription_reconnects_without_a_repair() {
    let key = TokenKey::derive(b"node killed");
    let node_replica = Replica::in_memory().unwrap();
    let server = serve(
        Arc::new(ReplicaHandler::new(node_replica.clone())),
        ServerConfig::new(key.clone()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let relay = Relay::start(server.local_addr()).await;
    let token = Token::issue(
        &key,
        Claims::owner(
            tenant(),
            alice(),
            GrantId::new("owner").unwrap(),
            4_000_000_000_000,
        ),
    );

    let replica = Replica::in_memory().unwrap();
    let mut events = replica.events();
    let engine =
        Engine::builder(replica.clone(), HttpConnector::new(ClientConfig::default())).build();
    engine
        .register_identity(Identity::owner(
            tenant(),
            vec![Endpoint::new(format!("http://{}", relay.addr)).unwrap()],
            token.to_string(),
        ))
        .unwrap();
    let links = engine.links().unwrap();
    let driver = LiveDriver::start(
        replica.clone(),
        Arc::new(EngineOps::new(engine)),
        links,
        LinkConfig {
            reconnect_backoff_ms: vec![20, 50, 100],
            ..LinkConfig::default()
        },
    );

    node_replica
        .configure(
            &tenant(),
            &notes(),
            vec![TypeRule {
                path: note(),
                data_bytes_max: None,
            }],
            vec![],
            &alice(),
        )
        .unwrap();
    put(&node_replica, "before");
    until("the first write arrives live", || has(&replica, "before")).await;
    // The first sync's reconcile has converged: from now on a repair is a fault.
    let mut seen = Vec::new();
    until("the first reconcile converges", || {
        drain(&mut events, &mut seen);
        seen.iter()
            .any(|e| matches!(e, SyncEvent::ReconcileCompleted { .. }))
    })
    .await;

    for (i, how) in [Drop::Reset, Drop::Close, Drop::Reset, Drop::Close]
        .into_iter()
        .enumerate()
    {
        let dropped = relay.drop_all(how);
        assert!(
            dropped > 0,
            "the subscription's connection goes through the relay"
        );
        let k = format!("after-{i}-{how:?}");
        put(&node_replica, &k);
        until(&format!("{k} arrives live"), || has(&replica, &k)).await;
    }

    let state = driver.states().await.remove(0);
    drain(&mut events, &mut seen);
    let repairs: Vec<&SyncEvent> = seen
        .iter()
        .filter(|e| matches!(e, SyncEvent::RepairStarted { .. }))
        .collect();
    assert!(
        repairs.is_empty(),
        "a dropped connection cost a repair: {repairs:?}"
    );
    assert_eq!(state.counters.repairs, 0, "{state:?}");
    assert_eq!(state.status, LinkStatus::Live, "{state:?}");
    assert!(driver.stop(Duration::from_secs(5)).await);
    drop(relay);
    server.shutdown().await;
}
