//! Credentials that refresh (`CredentialsConnector` over the in-process transport): a
//! token that expires between syncs is refreshed on the node's refusal and the link goes
//! on from its checkpoint; a token about to expire is refreshed before it is used; a
//! provider with nothing better leaves the refusal standing and nothing is stored.

mod sync_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sync_engine::sync::{Credentials, CredentialsConnector};
use sync_engine::{Engine, Identity, ReplicaHandler};
use sync_support::*;
use sync_transport::proto::ErrorCode;
use sync_transport::{Claims, Node, ServerConfig, Token, TokenKey};
use sync_types::*;

const T0: u64 = 1_700_000_000_000;
const MARGIN_MS: u64 = 1_000;

fn token_until(key: &TokenKey, expires_at_ms: u64) -> String {
    Token::issue(
        key,
        Claims::owner(
            tenant(),
            alice(),
            GrantId::new("tests").unwrap(),
            expires_at_ms,
        ),
    )
    .to_string()
}

/// A provider that hands out `current`, and `next` (once set) when asked to refresh;
/// it counts the refreshes.
#[derive(Default)]
struct Provider {
    current: Mutex<String>,
    next: Mutex<Option<String>>,
    refreshes: AtomicU64,
}

impl Credentials for Provider {
    fn token(&self, _endpoint: &Endpoint, refresh: bool) -> Result<Option<String>, String> {
        let mut current = self.current.lock().unwrap();
        if refresh {
            self.refreshes.fetch_add(1, Ordering::SeqCst);
            if let Some(next) = self.next.lock().unwrap().take() {
                *current = next;
            }
        }
        Ok(Some(current.clone()))
    }
}

struct Setup {
    node_replica: sync_engine::Replica,
    node_clock: Arc<ManualClock>,
    engine_clock: Arc<ManualClock>,
    provider: Arc<Provider>,
    engine: Engine<CredentialsConnector<Net>>,
    replica: sync_engine::Replica,
}

fn setup(first_token: String) -> Setup {
    let node_clock = Arc::new(ManualClock::new(T0));
    let engine_clock = Arc::new(ManualClock::new(T0));
    let node_replica = replica(100);
    configure(&node_replica);
    let mut config = ServerConfig::new(key());
    config.clock = node_clock.clone();
    let node = Node::new(Arc::new(ReplicaHandler::new(node_replica.clone())), config);
    let net = net();
    net.insert(endpoint("n"), node);
    let provider = Arc::new(Provider::default());
    *provider.current.lock().unwrap() = first_token.clone();
    let connector =
        CredentialsConnector::with_clock(net, provider.clone(), engine_clock.clone(), MARGIN_MS);
    let replica = replica(1);
    let engine = Engine::builder(replica.clone(), connector).seed(7).build();
    engine
        .register_identity(Identity::owner(tenant(), vec![endpoint("n")], first_token))
        .unwrap();
    Setup {
        node_replica,
        node_clock,
        engine_clock,
        provider,
        engine,
        replica,
    }
}

#[tokio::test]
async fn an_expired_token_is_refreshed_and_the_link_goes_on_from_its_checkpoint() {
    let s = setup(token_until(&key(), T0 + 10_000));
    for i in 0..6 {
        put(&s.node_replica, &format!("first{i}"), b"x");
    }
    let report = s.engine.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    // The node's configure and six writes.
    assert_eq!(report.pulled().messages, 7);
    assert_eq!(s.provider.refreshes.load(Ordering::SeqCst), 0);

    // The token expires on the node; the app has a new one.
    s.node_clock.set(T0 + 20_000);
    s.engine_clock.set(T0 + 20_000 - 5_000);
    *s.provider.next.lock().unwrap() = Some(token_until(&key(), T0 + 3_600_000));
    for i in 0..4 {
        put(&s.node_replica, &format!("second{i}"), b"y");
    }
    let report = s.engine.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    // Only what is new moved: the pull checkpoint survived the refresh.
    assert_eq!(report.pulled().messages, 4);
    assert_eq!(s.provider.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(records(&s.replica).len(), 10);
    assert_eq!(root(&s.replica), root(&s.node_replica));
}

#[tokio::test]
async fn a_token_about_to_expire_is_refreshed_before_it_is_used() {
    let s = setup(token_until(&key(), T0 + 500));
    *s.provider.next.lock().unwrap() = Some(token_until(&key(), T0 + 3_600_000));
    put(&s.node_replica, "k", b"v");
    // Within the margin by the engine's clock: refreshed before the first call.
    let report = s.engine.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(s.provider.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(get(&s.replica, "k").as_deref(), Some(&b"v"[..]));
}

#[tokio::test]
async fn a_refresh_with_nothing_better_is_refused_and_nothing_is_stored() {
    let s = setup(token_until(&key(), T0 + 10_000));
    put(&s.node_replica, "k", b"v");
    s.node_clock.set(T0 + 20_000);
    // The provider's "fresh" token is signed with another key.
    *s.provider.next.lock().unwrap() = Some(token_until(
        &TokenKey::derive(b"another node"),
        T0 + 3_600_000,
    ));
    let report = s.engine.sync_once().await;
    assert!(!report.is_ok());
    let err = report.links[0].error.as_ref().expect("an error");
    let sync_engine::Error::Transport(t) = err else {
        panic!("{err:?}");
    };
    assert_eq!(t.code(), Some(ErrorCode::Unauthenticated), "{t}");
    assert_eq!(s.provider.refreshes.load(Ordering::SeqCst), 1);
    assert!(records(&s.replica).is_empty());
    assert_eq!(report.pulled().messages, 0);
}
