//! The node over real sockets: a `ReplicaHandler` behind the hyper server on 127.0.0.1,
//! exercised through the HTTP client: roots, diffs, log pages, reads, writes, scope cuts
//! for delegates, and a live subscription.

use std::sync::Arc;

use sync_engine::{Origin, Replica, ReplicaHandler};
use sync_ledger::LogRead;
use sync_smt::{Config, Initiator, Step};
use sync_transport::proto::{
    DiffRequest, LogFilter, LogPageReply, LogPageRequest, MessageData, ReadMessagesRequest,
    RootRequest, SubscribeRequest, WriteBatchRequest,
};
use sync_transport::{
    ClientConfig, HttpClient, Remote, Role, ServerConfig, SubscriptionItem, Token, TokenKey,
    TransportError, serve,
};
use sync_types::*;

const FAR_FUTURE_MS: u64 = 4_000_000_000_000;

fn tenant() -> TenantId {
    TenantId::new("did:example:alice").unwrap()
}
fn p(name: &str) -> ProtocolName {
    ProtocolName::new(format!("https://example.com/{name}")).unwrap()
}
fn note() -> ProtocolPath {
    ProtocolPath::new("note").unwrap()
}
fn alice() -> PrincipalId {
    PrincipalId::new("did:example:alice").unwrap()
}

/// A replica with two protocols and a few records in each.
fn source() -> Replica {
    let r = Replica::in_memory().unwrap();
    for name in ["notes", "photos"] {
        let types = vec![TypeRule {
            path: note(),
            data_bytes_max: None,
        }];
        r.configure(&tenant(), &p(name), types, vec![], &alice())
            .unwrap();
        for i in 0..5u8 {
            r.put(&tenant(), &p(name), &note(), &[i], vec![i; 10], &alice())
                .unwrap();
        }
    }
    r
}

fn log(r: &Replica) -> Vec<MessageData> {
    let LogRead::Page(page) = r.changes_since(&tenant(), None, 1000).unwrap() else {
        panic!("gap")
    };
    page.entries
        .into_iter()
        .map(|e| MessageData {
            message: e.message,
            data: e.data,
        })
        .collect()
}

fn claims(role: Role, scope: Scope, actions: Actions) -> sync_transport::Claims {
    sync_transport::Claims {
        tenant: tenant(),
        principal: alice(),
        role,
        scope,
        actions,
        expires_at_ms: FAR_FUTURE_MS,
        grant_id: GrantId::new("g1").unwrap(),
    }
}

struct Fixture {
    node: Replica,
    server: sync_transport::ServerHandle<ReplicaHandler>,
    key: TokenKey,
}

impl Fixture {
    async fn start() -> Self {
        let node = Replica::in_memory().unwrap();
        let key = TokenKey::derive(b"test node secret");
        let handler = Arc::new(ReplicaHandler::new(node.clone()));
        let server = serve(
            handler,
            ServerConfig::new(key.clone()),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        Self { node, server, key }
    }

    fn client(&self, role: Role, scope: Scope, actions: Actions) -> HttpClient {
        let endpoint = Endpoint::new(format!("http://{}", self.server.local_addr())).unwrap();
        let token = Token::issue(&self.key, claims(role, scope, actions));
        HttpClient::new(&endpoint, &token, ClientConfig::default()).unwrap()
    }

    fn owner(&self) -> HttpClient {
        self.client(Role::Owner, Scope::Full, Actions::ALL)
    }
}

#[tokio::test]
async fn writes_reads_pages_and_roots_over_http() {
    let f = Fixture::start().await;
    let src = source();
    let client = f.owner();
    let mut messages = log(&src);
    messages.reverse(); // out of dependency order on purpose
    let reply = client
        .write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: messages.clone(),
        })
        .await
        .unwrap();
    assert_eq!(reply.outcomes, vec![ApplyOutcome::Applied; messages.len()]);
    let again = client
        .write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages,
        })
        .await
        .unwrap();
    assert!(again.outcomes.iter().all(|o| *o == ApplyOutcome::Duplicate));

    let root = client
        .root(RootRequest {
            tenant: tenant(),
            scope: Scope::Full,
        })
        .await
        .unwrap();
    assert_eq!(
        root.root,
        *src.root(&tenant(), &Scope::Full).unwrap().as_bytes()
    );

    // Pages of 4 walk the whole log without loss or repetition.
    let mut seen = Vec::new();
    let mut from = None;
    loop {
        let req = LogPageRequest {
            tenant: tenant(),
            scope: Scope::Full,
            from,
            filter: LogFilter::default(),
            limit: 4,
        };
        let LogPageReply::Page(page) = client.log_page(req).await.unwrap() else {
            panic!("gap")
        };
        seen.extend(page.entries.iter().map(|e| e.token.cid));
        from = page.next;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen.len(), 12);
    let read = client
        .read_messages(ReadMessagesRequest {
            tenant: tenant(),
            scope: Scope::Full,
            cids: seen.clone(),
        })
        .await
        .unwrap();
    assert_eq!(read.found.len(), 12);
    assert!(read.missing.is_empty());
}

#[tokio::test]
async fn a_diff_over_http_finds_exactly_what_each_side_lacks() {
    let f = Fixture::start().await;
    let src = source();
    let all = log(&src);
    // The node gets everything but the last two writes; the local side gets one extra.
    f.node
        .apply(
            &tenant(),
            all[..all.len() - 2]
                .iter()
                .map(|m| (m.message.clone(), m.data.clone()))
                .collect(),
            Origin::Local,
        )
        .unwrap();
    let local = Replica::in_memory().unwrap();
    local
        .apply(
            &tenant(),
            all.iter()
                .map(|m| (m.message.clone(), m.data.clone()))
                .collect(),
            Origin::Local,
        )
        .unwrap();
    local
        .put(
            &tenant(),
            &p("notes"),
            &note(),
            b"extra",
            b"x".to_vec(),
            &alice(),
        )
        .unwrap();

    let client = f.owner();
    let expected_local: Vec<[u8; 32]> = {
        let node_keys: Vec<[u8; 32]> = f
            .node
            .with_tree(&tenant(), &Scope::Full, |t| t.iter().copied().collect())
            .unwrap();
        let mut v: Vec<[u8; 32]> = local
            .with_tree(&tenant(), &Scope::Full, |t| {
                t.iter().copied().collect::<Vec<_>>()
            })
            .unwrap()
            .into_iter()
            .filter(|k| !node_keys.contains(k))
            .collect();
        v.sort();
        v
    };
    let diff = local
        .with_tree(&tenant(), &Scope::Full, |tree| {
            let (session, request) = Initiator::start(tree, Config::default(), [7; 16]).unwrap();
            (session, request)
        })
        .unwrap();
    let (mut session, mut request) = diff;
    let result = loop {
        let reply = client
            .diff_round(DiffRequest {
                tenant: tenant(),
                scope: Scope::Full,
                round: request.encode(),
            })
            .await
            .unwrap();
        let step = local
            .with_tree(&tenant(), &Scope::Full, |tree| {
                session.handle_bytes(tree, &reply.round)
            })
            .unwrap()
            .unwrap();
        match step {
            Step::Send(next) => request = next,
            Step::Done(diff) => break diff,
        }
    };
    assert_eq!(result.only_local, expected_local);
    assert_eq!(result.only_remote, Vec::<[u8; 32]>::new());
    assert_eq!(
        expected_local.len(),
        3,
        "two writes the node lacks and the extra one"
    );
}

#[tokio::test]
async fn delegates_see_only_their_scope_and_are_refused_beyond_it() {
    let f = Fixture::start().await;
    let src = source();
    f.owner()
        .write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: log(&src),
        })
        .await
        .unwrap();
    let notes_only = Scope::protocols(vec![p("notes")]).unwrap();
    let delegate = f.client(
        Role::Delegate,
        notes_only.clone(),
        Actions::READ.union(Actions::SYNC),
    );

    let req = LogPageRequest {
        tenant: tenant(),
        scope: notes_only.clone(),
        from: None,
        filter: LogFilter::default(),
        limit: 100,
    };
    let LogPageReply::Page(page) = delegate.log_page(req).await.unwrap() else {
        panic!("gap")
    };
    assert_eq!(
        page.entries.len(),
        6,
        "the notes configure and its five records"
    );
    assert!(
        page.entries
            .iter()
            .all(|e| *e.item.message.protocol() == p("notes"))
    );

    let root = delegate
        .root(RootRequest {
            tenant: tenant(),
            scope: notes_only.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        root.root,
        *src.root(&tenant(), &notes_only).unwrap().as_bytes()
    );

    let beyond = delegate
        .root(RootRequest {
            tenant: tenant(),
            scope: Scope::Full,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(beyond, TransportError::Refused { status: 403, .. }),
        "{beyond}"
    );
    let write = delegate
        .write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: log(&src),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(write, TransportError::Refused { status: 403, .. }),
        "no write action: {write}"
    );
}

#[tokio::test]
async fn a_subscription_replays_then_delivers_live_writes() {
    let f = Fixture::start().await;
    let src = source();
    let client = f.owner();
    client
        .write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: log(&src),
        })
        .await
        .unwrap();
    let mut sub = client
        .subscribe(SubscribeRequest {
            tenant: tenant(),
            scope: Scope::Full,
            from: None,
            filter: LogFilter::default(),
        })
        .await
        .unwrap();
    let mut replayed = 0;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
            .await
            .unwrap()
        {
            Some(SubscriptionItem::Event(_)) => replayed += 1,
            Some(SubscriptionItem::EndOfStored { .. }) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(replayed, 12);
    // A write on the node (as a replica would push it) arrives live.
    let receipt = f
        .node
        .put(
            &tenant(),
            &p("notes"),
            &note(),
            b"live",
            b"now".to_vec(),
            &alice(),
        )
        .unwrap();
    match tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
        .await
        .unwrap()
    {
        Some(SubscriptionItem::Event(e)) => assert_eq!(e.token.cid, receipt.cid),
        other => panic!("expected the live event, got {other:?}"),
    }
    f.server.shutdown().await;
}
