//! No echo: a replica never downloads the bodies of messages it pushed. The node answers
//! each pushed batch with the log positions it gave them, the replica keeps them durably
//! as known ranges of the node's log, and its pulls ask the node to leave them out.
//! Bytes are the node's own counters (HTTP bodies, `weft_*_bytes_total`).

mod sync_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Replica, ReplicaHandler};
use sync_ledger::Durability;
use sync_support::*;
use sync_transport::metrics::Metrics;
use sync_transport::proto::{
    HeadLogPageRequest, KnownLogPageRequest, LogFilter, LogPageReply, LogPageRequest,
};
use sync_transport::{
    Claims, ClientConfig, InProcessClient, Remote, Role, ServerConfig, ServerHandle, Token, serve,
};
use sync_types::*;

/// A delegate's claims: `actions` on `scope`.
fn delegate(name: &str, scope: Scope, actions: Actions) -> Token {
    Token::issue(
        &key(),
        Claims {
            tenant: tenant(),
            principal: PrincipalId::new(format!("did:example:{name}")).unwrap(),
            role: Role::Delegate,
            scope,
            actions,
            expires_at_ms: FAR_FUTURE_MS,
            grant_id: GrantId::new(name).unwrap(),
        },
    )
}

/// Records a test writes: enough that 1% of their upload is several kilobytes.
const RECORDS: usize = 1_500;

struct HttpNode {
    replica: Replica,
    metrics: Arc<Metrics>,
    endpoint: Endpoint,
    _server: ServerHandle<ReplicaHandler>,
}

async fn http_node() -> HttpNode {
    let replica = replica(100);
    let metrics = Arc::new(Metrics::new());
    let mut config = ServerConfig::new(key());
    config.metrics = Some(metrics.clone());
    let server = serve(
        Arc::new(ReplicaHandler::new(replica.clone())),
        config,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
    HttpNode {
        replica,
        metrics,
        endpoint,
        _server: server,
    }
}

/// Bytes the node received and sent so far (HTTP bodies).
fn wire(node: &HttpNode) -> u64 {
    let text = node.metrics.render(0, 0);
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    value("weft_received_bytes_total ") + value("weft_sent_bytes_total ")
}

/// A replica on fjall in `dir` (buffered commits: the tests restart it cleanly).
fn fjall_replica(dir: &std::path::Path, id: u64) -> Replica {
    Replica::builder()
        .node_id(NodeId(id))
        .seed(id)
        .durability(Durability::Buffered)
        .open(dir)
        .unwrap()
}

fn http_engine(r: &Replica, node: &HttpNode) -> Engine<Arc<HttpConnector>> {
    let e = Engine::builder(
        r.clone(),
        Arc::new(HttpConnector::new(ClientConfig::default())),
    )
    .config(fast_config())
    .seed(7)
    .build();
    if e.identities().unwrap().is_empty() {
        e.register_identity(Identity::owner(
            tenant(),
            vec![node.endpoint.clone()],
            owner_token(&key()),
        ))
        .unwrap();
    }
    e
}

fn write_records(r: &Replica, prefix: &str, n: usize) {
    for i in 0..n {
        put(
            r,
            &format!("{prefix}{i}"),
            format!("{{\"_id\":\"{prefix}{i}\",\"title\":\"record {i} with some text\"}}")
                .as_bytes(),
        );
    }
}

/// Pushes everything of `e`'s replica and returns the bytes the push moved.
async fn push_all(node: &HttpNode, e: &Engine<Arc<HttpConnector>>) -> u64 {
    let before = wire(node);
    let report = e.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert!(report.pushed().messages >= RECORDS as u64);
    wire(node) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_push_the_next_sync_moves_under_one_percent_of_its_bytes() {
    let node = http_node().await;
    let dir = tempfile::tempdir().unwrap();
    let a = fjall_replica(dir.path(), 1);
    configure(&a);
    write_records(&a, "a", RECORDS);
    let ea = http_engine(&a, &node);
    let upload = push_all(&node, &ea).await;

    let before = wire(&node);
    let report = ea.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    let echo = wire(&node) - before;
    assert_eq!(report.pulled().messages, 0, "{report:?}");
    assert!(
        echo * 100 < upload,
        "the sync after the push moved {echo} bytes, the push {upload}"
    );
    assert_eq!(root(&a), root(&node.replica));
    assert!(report.links.iter().all(|l| l.converged() == Some(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_echo_after_a_restart() {
    let node = http_node().await;
    let dir = tempfile::tempdir().unwrap();
    let a = fjall_replica(dir.path(), 1);
    configure(&a);
    write_records(&a, "a", RECORDS);
    let ea = http_engine(&a, &node);
    let upload = push_all(&node, &ea).await;
    drop(ea);
    a.close().unwrap();

    let a = fjall_replica(dir.path(), 1);
    let ea = http_engine(&a, &node);
    let before = wire(&node);
    let report = ea.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    let moved = wire(&node) - before;
    assert_eq!(report.pulled().messages, 0, "{report:?}");
    assert!(
        moved * 100 < upload,
        "the sync after the restart moved {moved} bytes, the push {upload}"
    );
    assert_eq!(records(&a), records(&node.replica));
}

/// The node's log holds A's pushes with B's writes between them: after a restart, A's
/// pull leaves out both of its own runs and gets exactly B's messages, and B gets all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_others_wrote_between_two_pushes_still_arrives() {
    let node = http_node().await;
    let dir = tempfile::tempdir().unwrap();
    let a = fjall_replica(dir.path(), 1);
    configure(&a);
    write_records(&a, "a", 300);
    let ea = http_engine(&a, &node);
    // Pushes alone, so A's pull checkpoint stays at the start of the node's log.
    let link = link(&ea);
    assert!(ea.push(&link).await.unwrap().reached_head);

    let b = replica(2);
    configure(&b);
    write_records(&b, "b", 10);
    let eb = http_engine(&b, &node);
    assert!(eb.sync_once().await.is_ok());

    write_records(&a, "c", 100);
    assert!(ea.push(&link).await.unwrap().reached_head);
    drop(ea);
    a.close().unwrap();

    let a = fjall_replica(dir.path(), 1);
    let ea = http_engine(&a, &node);
    let report = ea.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(
        report.pulled().messages,
        11,
        "only B's configure and records come down"
    );
    assert_eq!(records(&a), records(&node.replica));
    assert!(get(&a, "b3").is_some());

    // And B gets all of A's records: leaving them out was A's business only.
    sync_until_quiet(&eb, 3).await;
    assert_eq!(records(&b), records(&node.replica));
}

/// `n` notes in scope of a notes-only reader, and `n` records of another protocol,
/// each holding `secret`, interleaved in the node's log.
fn notes_and_secrets(server: &Replica, n: usize, secret: &[u8]) {
    configure(server);
    let other = ProtocolName::new("https://example.com/other").unwrap();
    server
        .configure(
            &tenant(),
            &other,
            vec![TypeRule {
                path: note(),
                data_bytes_max: None,
            }],
            vec![],
            &alice(),
        )
        .unwrap();
    for i in 0..n {
        put(server, &format!("n{i}"), b"in scope");
        server
            .put(
                &tenant(),
                &other,
                &note(),
                format!("o{i}").as_bytes(),
                secret.to_vec(),
                &alice(),
            )
            .unwrap();
    }
}

/// A caller's known ranges only ever take entries out of its own pages: claiming the
/// whole log hides everything from it and shows nothing beyond its grant, and a token
/// without the read grant is refused.
#[tokio::test]
async fn known_ranges_cannot_widen_a_read_and_need_the_read_grant() {
    let (server, node) = new_node(&key(), 100);
    notes_and_secrets(&server, 20, b"secret");
    let notes_only = Scope::ProtocolSet(ProtocolSet::new(vec![notes()]).unwrap());
    let reader = delegate("reader", notes_only.clone(), Actions::READ);
    let client = InProcessClient::new(node.clone(), &reader);
    let page = |from| LogPageRequest {
        tenant: tenant(),
        scope: notes_only.clone(),
        from,
        filter: LogFilter::default(),
        limit: 1000,
    };
    let LogPageReply::Page(plain) = client.log_page(page(None)).await.unwrap() else {
        panic!("gap")
    };
    assert!(!plain.entries.is_empty());
    let stream = plain.entries[0].token;

    // Claiming some positions hides exactly those, and reads nothing new.
    let mut known = KnownRanges::new(stream.stream_id, stream.epoch);
    for e in plain.entries.iter().step_by(2) {
        known.insert(e.token.position);
    }
    let LogPageReply::Page(cut) = client
        .log_page_known(KnownLogPageRequest {
            page: page(None),
            known: known.clone(),
        })
        .await
        .unwrap()
    else {
        panic!("gap")
    };
    let expected: Vec<_> = plain
        .entries
        .iter()
        .filter(|e| !known.contains(&e.token))
        .cloned()
        .collect();
    assert_eq!(cut.entries, expected);
    assert_eq!(cut.next, plain.next, "the cursor still reaches past them");
    assert!(
        cut.entries
            .iter()
            .all(|e| *e.item.message.protocol() == notes())
    );

    // Claiming everything hides everything.
    let mut all = KnownRanges::new(stream.stream_id, stream.epoch);
    for p in 0..=1_000 {
        all.insert(p);
    }
    let LogPageReply::Page(none) = client
        .log_page_known(KnownLogPageRequest {
            page: page(None),
            known: all.clone(),
        })
        .await
        .unwrap()
    else {
        panic!("gap")
    };
    assert!(none.entries.is_empty());
    assert_eq!(none.next, plain.next);

    // Asking beyond the grant is refused, known ranges or not.
    let wide = KnownLogPageRequest {
        page: LogPageRequest {
            scope: Scope::Full,
            ..page(None)
        },
        known: all,
    };
    assert!(client.log_page_known(wide).await.is_err());

    // A token without the read grant is refused.
    let writer = delegate("writer", notes_only.clone(), Actions::WRITE);
    let writer = InProcessClient::new(node.clone(), &writer);
    assert!(
        writer
            .log_page_known(KnownLogPageRequest {
                page: page(None),
                known: known.clone(),
            })
            .await
            .is_err()
    );
}

/// A page whose entries the caller all holds is not sent empty: the node reads on
/// to the first entry it lacks, so crossing one's own upload takes a request, not one
/// per page.
#[tokio::test]
async fn a_page_of_known_entries_reads_on_to_the_first_unknown_one() {
    let (server, node) = new_node(&key(), 100);
    configure(&server);
    for i in 0..40 {
        put(&server, &format!("n{i}"), b"value");
    }
    let owner = Token::issue(
        &key(),
        Claims::owner(tenant(), alice(), GrantId::new("o").unwrap(), FAR_FUTURE_MS),
    );
    let client = InProcessClient::new(node.clone(), &owner);
    let page = |limit| LogPageRequest {
        tenant: tenant(),
        scope: Scope::Full,
        from: None,
        filter: LogFilter::default(),
        limit,
    };
    let LogPageReply::Page(plain) = client.log_page(page(1000)).await.unwrap() else {
        panic!("gap")
    };
    let (last, held) = plain.entries.split_last().unwrap();
    let stream = last.token;
    let mut known = KnownRanges::new(stream.stream_id, stream.epoch);
    for e in held {
        known.insert(e.token.position);
    }
    let ask = |known: KnownRanges| {
        client.log_page_known(KnownLogPageRequest {
            page: page(5),
            known,
        })
    };
    let LogPageReply::Page(cut) = ask(known.clone()).await.unwrap() else {
        panic!("gap")
    };
    assert_eq!(
        cut.entries,
        vec![last.clone()],
        "eight pages of five read as one"
    );
    assert_eq!(cut.next, plain.next);
    assert!(!cut.has_more);

    // All known: one empty page that reaches the head.
    known.insert(last.token.position);
    let LogPageReply::Page(none) = ask(known).await.unwrap() else {
        panic!("gap")
    };
    assert!(none.entries.is_empty());
    assert_eq!(none.next, plain.next);
    assert!(!none.has_more);
}

/// A page with the log's extent counts only what the caller's scope may read (nothing
/// of another protocol leaks through the count), leaves out its known positions, and
/// needs the read grant within the token's scope like any page.
#[tokio::test]
async fn the_log_extent_counts_only_the_callers_scope_and_needs_the_read_grant() {
    let (server, node) = new_node(&key(), 100);
    notes_and_secrets(&server, 30, b"secret, and longer than the notes");
    let notes_only = Scope::ProtocolSet(ProtocolSet::new(vec![notes()]).unwrap());
    let reader = delegate("reader", notes_only.clone(), Actions::READ);
    let client = InProcessClient::new(node.clone(), &reader);
    let request = |scope: Scope, limit, known| HeadLogPageRequest {
        page: LogPageRequest {
            tenant: tenant(),
            scope,
            from: None,
            filter: LogFilter::default(),
            limit,
        },
        known,
        count_remaining: true,
    };
    // Everything the reader may read, in one page: what the count must add up to.
    let whole = client
        .log_page_head(request(notes_only.clone(), 1000, None))
        .await
        .unwrap();
    let LogPageReply::Page(all) = whole.reply else {
        panic!("gap")
    };
    assert_eq!(
        whole.extent.head,
        server.ledger().log_head(&tenant()).unwrap()
    );
    assert_eq!(
        whole.extent.remaining.map(|r| r.messages),
        Some(0),
        "nothing after the whole log"
    );
    // A first page of 5: the rest is exactly the reader's other entries.
    let first = client
        .log_page_head(request(notes_only.clone(), 5, None))
        .await
        .unwrap();
    let LogPageReply::Page(page) = &first.reply else {
        panic!("gap")
    };
    let rest = first.extent.remaining.unwrap();
    assert_eq!(
        usize::try_from(rest.messages).unwrap() + page.entries.len(),
        all.entries.len()
    );
    let bytes: u64 = all.entries[page.entries.len()..]
        .iter()
        .map(|e| {
            (codec::encoded_len(&e.item.message) + e.item.data.as_ref().map_or(0, Vec::len)) as u64
        })
        .sum();
    assert_eq!(rest.bytes, bytes, "only the reader's entries are counted");
    assert!(
        all.entries
            .iter()
            .all(|e| *e.item.message.protocol() == notes())
    );
    // Positions the reader holds leave the count too.
    let stream = all.entries[0].token;
    let mut known = KnownRanges::new(stream.stream_id, stream.epoch);
    for e in &all.entries[10..20] {
        known.insert(e.token.position);
    }
    let cut = client
        .log_page_head(request(notes_only.clone(), 5, Some(known)))
        .await
        .unwrap();
    assert_eq!(cut.extent.remaining.unwrap().messages, rest.messages - 10);

    // Beyond the grant, or without the read grant: refused.
    assert!(
        client
            .log_page_head(request(Scope::Full, 5, None))
            .await
            .is_err()
    );
    let writer = delegate("writer", notes_only.clone(), Actions::WRITE);
    let writer = InProcessClient::new(node.clone(), &writer);
    assert!(
        writer
            .log_page_head(request(notes_only, 5, None))
            .await
            .is_err()
    );
}

/// A placed write batch needs the write grant like any write: a reader's is refused and
/// nothing is stored; a writer's is answered with the positions its messages got.
#[tokio::test]
async fn a_placed_write_needs_the_write_grant_and_names_the_positions() {
    let (server, node) = new_node(&key(), 100);
    let source = replica(1);
    configure(&source);
    put(&source, "k", b"v");
    let messages: Vec<_> = match source.changes_since(&tenant(), None, 100).unwrap() {
        sync_ledger::LogRead::Page(p) => p
            .entries
            .into_iter()
            .map(|e| sync_transport::proto::MessageData {
                message: e.message,
                data: e.data,
            })
            .collect(),
        sync_ledger::LogRead::Gap(_) => panic!("gap"),
    };
    let batch = sync_transport::proto::WriteBatchRequest {
        tenant: tenant(),
        messages,
    };
    let reader = delegate("reader", Scope::Full, Actions::READ);
    let refused = InProcessClient::new(node.clone(), &reader)
        .write_batch_placed(batch.clone())
        .await;
    assert!(refused.is_err());
    assert_eq!(root(&server), root(&replica(3)), "nothing was stored");

    let owner: Token = owner_token(&key()).parse().unwrap();
    let reply = InProcessClient::new(node.clone(), &owner)
        .write_batch_placed(batch)
        .await
        .unwrap();
    assert!(reply.outcomes.iter().all(|o| *o == ApplyOutcome::Applied));
    let placed = reply.placed.expect("positions of what was applied");
    let LogPageReply::Page(page) = InProcessClient::new(node, &owner)
        .log_page(LogPageRequest {
            tenant: tenant(),
            scope: Scope::Full,
            from: None,
            filter: LogFilter::default(),
            limit: 100,
        })
        .await
        .unwrap()
    else {
        panic!("gap")
    };
    assert_eq!(page.entries.len(), 2);
    assert!(page.entries.iter().all(|e| placed.contains(&e.token)));
}

// ---- live mode ------------------------------------------------------------------

/// A TCP proxy in front of `node`: the bytes the node sends on subscription connections
/// (those that start with `GET /v1/subscribe`) are counted in the returned counter.
async fn subscription_counting_proxy(node: &Endpoint) -> (Endpoint, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = node.as_str().trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint::new(format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let counted = Arc::new(AtomicU64::new(0));
    let total = counted.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let total = total.clone();
            tokio::spawn(async move {
                let mut first = vec![0u8; 64 * 1024];
                let Ok(n) = client.read(&mut first).await else {
                    return;
                };
                let subscription = first[..n].starts_with(b"GET /v1/subscribe");
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                if server.write_all(&first[..n]).await.is_err() {
                    return;
                }
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if subscription {
                                total.fetch_add(n as u64, Ordering::SeqCst);
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (endpoint, counted)
}

fn engine_at(r: &Replica, endpoint: &Endpoint) -> Engine<Arc<HttpConnector>> {
    let e = Engine::builder(
        r.clone(),
        Arc::new(HttpConnector::new(ClientConfig::default())),
    )
    .config(fast_config())
    .seed(7)
    .build();
    if e.identities().unwrap().is_empty() {
        e.register_identity(Identity::owner(
            tenant(),
            vec![endpoint.clone()],
            owner_token(&key()),
        ))
        .unwrap();
    }
    e
}

/// Waits (polling) until `done` holds; panics after a long while.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..3_000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen");
}

/// Records written live, one push each.
const LIVE_RECORDS: usize = 150;
/// Bytes of each live record's body: together far more than the subscription may carry
/// back to their writer.
const LIVE_BODY_BYTES: usize = 400;

/// In live mode a replica's subscription does not carry back what it pushed: not while
/// it runs (its session's pushes are left out), and not after a restart (its upgrade
/// names the node's positions it holds). Counted at a proxy in front of the node: the
/// bytes of A's subscription connections; B, subscribed directly, gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replica_does_not_receive_its_own_pushes_also_after_a_restart() {
    use sync_engine::live::LiveSync;
    use sync_engine::machine::LinkConfig;
    let node = http_node().await;
    let (proxy, to_a) = subscription_counting_proxy(&node.endpoint).await;
    let dir = tempfile::tempdir().unwrap();
    let a = fjall_replica(dir.path(), 1);
    configure(&a);
    let b = replica(2);
    let live_b = LiveSync::start(http_engine(&b, &node), LinkConfig::default()).unwrap();
    let live_a = LiveSync::start(engine_at(&a, &proxy), LinkConfig::default()).unwrap();
    let body = |i: usize| format!("{i:0width$}", width = LIVE_BODY_BYTES).into_bytes();
    for i in 0..LIVE_RECORDS {
        put(&a, &format!("live{i}"), &body(i));
    }
    until("B holding A's live writes", || {
        records(&b).len() == LIVE_RECORDS
    })
    .await;
    let payload = (LIVE_RECORDS * LIVE_BODY_BYTES) as u64;
    assert!(live_a.stop(std::time::Duration::from_secs(5)).await);
    a.close().unwrap();
    let while_running = to_a.load(Ordering::SeqCst);

    // A restarts: its subscription replays the node's log from A's pull checkpoint,
    // which its own pushes did not move, without them. One write from B, which A's
    // subscription does carry, ends the count: everything before it in the node's log
    // has gone by.
    let a = fjall_replica(dir.path(), 1);
    let live_a = LiveSync::start(engine_at(&a, &proxy), LinkConfig::default()).unwrap();
    put(&b, "after-restart", b"hello again");
    until("A holding B's write after its restart", || {
        get(&a, "after-restart").is_some()
    })
    .await;
    let replayed = to_a.load(Ordering::SeqCst) - while_running;
    assert!(
        while_running * 10 < payload,
        "A's subscription carried {while_running} bytes for {payload} bytes A pushed"
    );
    assert!(
        replayed * 10 < payload,
        "A's subscription replayed {replayed} bytes for {payload} bytes A pushed"
    );
    assert_eq!(records(&a), records(&node.replica));
    assert_eq!(records(&b), records(&node.replica));
    assert!(live_a.stop(std::time::Duration::from_secs(5)).await);
    assert!(live_b.stop(std::time::Duration::from_secs(5)).await);
}
