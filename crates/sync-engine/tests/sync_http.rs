//! `sync_once` over real HTTP: nodes served by hyper on 127.0.0.1 (port 0), replicas
//! talking to them through the HTTP client.

mod sync_support;

use std::sync::Arc;

use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Replica, ReplicaHandler, SyncConfig};
use sync_support::*;
use sync_transport::{Claims, ClientConfig, Role, ServerConfig, ServerHandle, Token, serve};
use sync_types::*;

async fn http_node(id: u64) -> (Replica, ServerHandle<ReplicaHandler>, Endpoint) {
    let r = replica(id);
    let server = serve(
        Arc::new(ReplicaHandler::new(r.clone())),
        ServerConfig::new(key()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
    (r, server, endpoint)
}

fn http() -> Arc<HttpConnector> {
    Arc::new(HttpConnector::new(ClientConfig {
        retries_max: 1,
        retry_backoff_ms: 10,
        connect_time_ms_max: 2_000,
        ..ClientConfig::default()
    }))
}

/// An endpoint nothing listens on.
async fn closed_endpoint() -> Endpoint {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    Endpoint::new(format!("http://{addr}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_converge_over_http_with_blobs() {
    let (server, _handle, ep) = http_node(100).await;
    let a = replica(1);
    let b = replica(2);
    configure(&a);
    configure(&b);
    for i in 0..150 {
        put(&a, &format!("a{i}"), format!("from a {i}").as_bytes());
        put(&b, &format!("b{i}"), format!("from b {i}").as_bytes());
    }
    put(&a, "same", b"a");
    put(&b, "same", b"b");
    delete(&b, "b9");
    // Payloads over the inline limit travel as blobs.
    let big_a: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let big_b: Vec<u8> = (0..40_000u32).map(|i| (i % 13) as u8).collect();
    put(&a, "blob-a", &big_a);
    put(&b, "blob-b", &big_b);

    let connector = http();
    let ea = engine(&a, connector.clone(), vec![ep.clone()], fast_config());
    let eb = engine(&b, connector.clone(), vec![ep.clone()], fast_config());
    let ra = ea.sync_once().await;
    assert!(ra.is_ok(), "{ra:?}");
    let rb = eb.sync_once().await;
    assert!(rb.is_ok(), "{rb:?}");
    sync_until_quiet(&ea, 3).await;
    sync_until_quiet(&eb, 3).await;

    assert_eq!(root(&a), root(&server));
    assert_eq!(root(&b), root(&server));
    assert_eq!(records(&a), records(&b));
    assert_eq!(records(&server), records(&a));
    assert_eq!(
        get(&b, "blob-a"),
        Some(big_a.clone()),
        "the blob arrived whole"
    );
    assert_eq!(get(&a, "blob-b"), Some(big_b));
    assert_eq!(get(&server, "blob-a"), Some(big_a));
    assert_eq!(get(&a, "b9"), None);
    for e in [&ea, &eb] {
        assert!(e.health().unwrap().healthy);
        assert!(e.caught_up(&link(e)).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_node_does_not_stop_another_over_http() {
    let (server, _handle, up) = http_node(100).await;
    let down = closed_endpoint().await;
    let a = replica(1);
    configure(&a);
    put(&a, "k", b"v");
    let ea = engine(&a, http(), vec![down.clone(), up.clone()], fast_config());
    let report = ea.sync_once().await;
    assert_eq!((report.endpoints_ok, report.endpoints_failed), (1, 1));
    for l in &report.links {
        if l.link.endpoint == down {
            assert!(
                matches!(&l.error, Some(sync_engine::Error::Transport(t)) if t.is_retryable()),
                "{l:?}"
            );
        } else {
            assert!(l.error.is_none(), "{l:?}");
            assert_eq!(l.converged(), Some(true));
        }
    }
    assert_eq!(get(&server, "k"), Some(b"v".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_link_replicates_only_its_scope() {
    let (server, _handle, ep) = http_node(100).await;
    let photos = ProtocolName::new("https://example.com/photos").unwrap();
    // The phone writes as itself: a node accepts a delegate's messages only under the
    // delegate's own principal.
    let phone = PrincipalId::new("did:example:phone").unwrap();
    let a = replica(1);
    let types = vec![TypeRule {
        path: note(),
        data_bytes_max: None,
    }];
    a.configure(&tenant(), &notes(), types, vec![], &phone)
        .unwrap();
    a.configure(
        &tenant(),
        &photos,
        vec![TypeRule {
            path: note(),
            data_bytes_max: None,
        }],
        vec![],
        &alice(),
    )
    .unwrap();
    for i in 0..10 {
        let key = format!("n{i}");
        a.put(
            &tenant(),
            &notes(),
            &note(),
            key.as_bytes(),
            b"note".to_vec(),
            &phone,
        )
        .unwrap();
        a.put(&tenant(), &photos, &note(), &[i], vec![i], &alice())
            .unwrap();
    }
    let scope = Scope::protocols(vec![notes()]).unwrap();
    let grant = Grant {
        id: GrantId::new("phone-notes").unwrap(),
        scope: scope.clone(),
        actions: Actions::ALL,
        expires_at_ms: FAR_FUTURE_MS,
    };
    let token = Token::issue(
        &key(),
        Claims {
            tenant: tenant(),
            principal: phone.clone(),
            role: Role::Delegate,
            scope: scope.clone(),
            actions: Actions::ALL,
            expires_at_ms: FAR_FUTURE_MS,
            grant_id: grant.id.clone(),
        },
    );
    let ea = Engine::builder(a.clone(), http())
        .config(fast_config())
        .build();
    ea.register_identity(Identity {
        tenant: tenant(),
        endpoints: vec![ep.clone()],
        scope: scope.clone(),
        authorization: Authorization::Delegate(Delegation::new(phone, vec![grant]).unwrap()),
        token: Some(token.to_string()),
    })
    .unwrap();
    let report = ea.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    let l = &report.links[0];
    assert_eq!(l.converged(), Some(true));
    let push = l.push.as_ref().unwrap();
    assert_eq!(push.sent.messages, 11, "{push:?}");
    assert_eq!(push.out_of_scope, 11, "{push:?}");
    assert_eq!(records(&server), records(&a));
    assert!(server.list(&tenant(), &photos, None).unwrap().is_empty());
    assert_eq!(
        server.root(&tenant(), &scope).unwrap(),
        a.root(&tenant(), &scope).unwrap()
    );
    assert_ne!(root(&server), root(&a), "the photos stayed home");
    assert_eq!(ea.health().unwrap().pending_outbound, 0);
}

/// Operations on one link are serialised (ARCHITECTURE, Concurrency): syncs of the same
/// link started together over real sockets run one after the other, so each message is
/// pushed and counted once. Without the per-link lock, each would push from the same
/// checkpoint and the node would receive every message several times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_syncs_of_one_link_push_each_message_once() {
    const WRITES: u64 = 300;
    let (server, _handle, ep) = http_node(100).await;
    let a = replica(1);
    configure(&a);
    for i in 0..WRITES {
        put(&a, &format!("k{i}"), format!("value {i}").as_bytes());
    }
    let config = SyncConfig {
        // Small batches: many round trips, where unserialised syncs would interleave.
        push_batch_messages: 10,
        push_read_entries: 10,
        ..fast_config()
    };
    let ea = Arc::new(engine(&a, http(), vec![ep], config));
    let l = link(&ea);
    let runs = (0..4).map(|_| {
        let (ea, l) = (ea.clone(), l.clone());
        tokio::spawn(async move { ea.sync_link(&l).await })
    });
    let reports = futures_util::future::join_all(runs).await;
    let mut pushed = 0;
    for r in reports {
        let r = r.unwrap();
        assert!(r.error.is_none(), "{r:?}");
        pushed += r.pushed.messages;
    }
    // The configure and the writes, once each.
    assert_eq!(pushed, WRITES + 1);
    let state = ea.links().unwrap().remove(0);
    assert_eq!(state.counters.messages_pushed, WRITES + 1);
    assert_eq!(records(&server), records(&a));
}

/// Every `SyncProgress` event of one direction waiting in `events`, as (messages, bytes,
/// messages_total, bytes_total).
fn progress_events(
    events: &mut tokio::sync::broadcast::Receiver<SyncEvent>,
    want: Direction,
) -> Vec<(u64, u64, Option<u64>, Option<u64>)> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let SyncEvent::SyncProgress {
            direction,
            messages,
            bytes,
            messages_total,
            bytes_total,
            ..
        } = e
            && direction == want
        {
            out.push((messages, bytes, messages_total, bytes_total));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_totals_are_known_early_exact_and_met_at_the_end() {
    let (_server, _handle, ep) = http_node(100).await;
    let a = replica(1);
    let b = replica(2);
    configure(&a);
    for i in 0..120 {
        put(&a, &format!("a{i}"), format!("from a {i}").as_bytes());
    }
    // Over several download ranges (`BLOB_CHUNK_BYTES`), so progress shows inside it.
    let big: Vec<u8> = (0..9_000_000u32).map(|i| (i % 251) as u8).collect();
    put(&a, "big", &big);

    // The push's totals come from the local log, before anything is sent.
    let ea = engine(&a, http(), vec![ep.clone()], fast_config());
    let mut events = a.events();
    let report = ea.sync_link(&link(&ea)).await;
    assert!(report.error.is_none(), "{:?}", report.error);
    let push = progress_events(&mut events, Direction::Push);
    let (m0, _, first_total, first_bytes_total) = push[0];
    assert_eq!(m0, 0, "the first push event comes before anything is sent");
    assert_eq!(
        first_total,
        Some(122),
        "configure, 120 notes and the blob's write"
    );
    assert!(first_bytes_total.unwrap() > 9_000_000, "{push:?}");
    let (m, bytes, total, bytes_total) = *push.last().unwrap();
    assert_eq!((Some(m), Some(bytes)), (total, bytes_total), "{push:?}");
    assert_eq!(m, 122);
    assert!(bytes > 9_000_000, "blob bytes are counted: {push:?}");
    assert_eq!(report.pushed.blob_bytes, 9_000_000);
    assert!(
        push.iter()
            .any(|(m, b, ..)| *m < 122 && *b >= 256 * 1024 && *b < bytes),
        "the push moves during the blob's upload, before its message is acknowledged: {push:?}"
    );

    // The pull's totals come from the node's count, asked after the first of many pages.
    let config = SyncConfig {
        page_entries: 10,
        ..fast_config()
    };
    let eb = engine(&b, http(), vec![ep.clone()], config);
    let mut events = b.events();
    let report = eb.sync_link(&link(&eb)).await;
    assert!(report.error.is_none(), "{:?}", report.error);
    let record = b.get_by_key(&tenant(), &notes(), b"big").unwrap().unwrap();
    assert_eq!(record.residency, sync_engine::Residency::Resident);
    drop(big);
    let pull = progress_events(&mut events, Direction::Pull);
    assert!(pull.len() > 12, "one event per page at least: {pull:?}");
    let (m, bytes, total, bytes_total) = *pull.last().unwrap();
    assert_eq!(m, 122);
    assert_eq!((Some(m), Some(bytes)), (total, bytes_total), "{pull:?}");
    assert_eq!(report.pulled.blob_bytes, 9_000_000);
    assert_eq!(report.pulled.messages, 122);
    assert_eq!(bytes, report.pulled.bytes + 9_000_000);
    assert!(
        pull.iter()
            .any(|(m, b, ..)| *m == 122 && *b > report.pulled.bytes && *b < bytes),
        "the pull moves during the blob's download: {pull:?}"
    );
    let (m0, b0, ..) = pull[0];
    assert!(
        m0 <= 10,
        "the first event comes with the first page: {pull:?}"
    );
    assert!(b0 < 1_000_000);
    // The node counts what is left after the first page while the next pages go: its
    // total is exact (the messages and their bytes, the blob's included) whenever it
    // is announced, never taken back, and known before the pages end (the count is one
    // call, the pages a dozen).
    let known = pull.iter().position(|(_, _, t, _)| t.is_some());
    let known = known.unwrap_or_else(|| panic!("no total was announced: {pull:?}"));
    for (_, _, t, bt) in &pull[known..] {
        assert_eq!((*t, *bt), (Some(122), Some(bytes)), "{pull:?}");
    }
    assert!(
        pull[known].0 < 122,
        "the total came only after the pages: {pull:?}"
    );
    // Never more done than the total said.
    for (m, b, t, bt) in &pull[known..] {
        assert!(Some(*m) <= *t && Some(*b) <= *bt, "{pull:?}");
    }
}
