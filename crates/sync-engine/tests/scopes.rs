//! Scoped replication and delegated access over real sockets: nodes served by hyper on
//! 127.0.0.1 (port 0), replicas syncing through the HTTP client with owner and delegate
//! tokens.
//!
//! - replicas with a protocol-set scope and with a projection converge on exactly their
//!   subset while a full replica holds everything;
//! - a delegate is refused (with the right status and a reason) whatever it asks beyond
//!   its grant: reads, log pages, roots, diffs, subscriptions and writes;
//! - a configure under a projection is judged alike by the replica and the node, pulled
//!   (carried) and pushed (carried only by a scope of its whole protocol);
//! - a dependency outside the scope makes the link `terminal_incomplete` with a closure
//!   dead letter, until a wider grant makes a new link;
//! - a changed grant makes a new link and prunes the old one, an expired one stops the
//!   link, a refreshed token resumes it without downloading the scope again;
//! - a hostile node cannot make a replica store anything outside the link's scope,
//!   another tenant's messages, or messages it did not ask for.

mod sync_support;

use std::sync::Arc;

use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Replica, ReplicaHandler, WriteRequest};
use sync_support::*;
use sync_transport::proto::*;
use sync_transport::{
    Claims, ClientConfig, HttpClient, Remote, Role, ServerConfig, ServerHandle, Token,
    TransportError, serve,
};
use sync_types::*;

fn photos() -> ProtocolName {
    ProtocolName::new("https://example.com/photos").unwrap()
}

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

fn phone() -> PrincipalId {
    PrincipalId::new("did:example:phone").unwrap()
}

/// Delegate claims for `scope` with `actions`, expiring at `expires_at_ms`.
fn delegate_claims(grant: &str, scope: &Scope, actions: Actions, expires_at_ms: u64) -> Claims {
    Claims {
        tenant: tenant(),
        principal: phone(),
        role: Role::Delegate,
        scope: scope.clone(),
        actions,
        expires_at_ms,
        grant_id: GrantId::new(grant).unwrap(),
    }
}

/// The identity of a delegate holding `claims`, syncing `scope` with `endpoint`.
fn delegate_identity(claims: &Claims, scope: &Scope, endpoint: &Endpoint) -> Identity {
    Identity {
        tenant: tenant(),
        endpoints: vec![endpoint.clone()],
        scope: scope.clone(),
        authorization: claims.authorization(),
        token: Some(Token::issue(&key(), claims.clone()).to_string()),
    }
}

fn delegate_engine(
    r: &Replica,
    claims: &Claims,
    scope: &Scope,
    endpoint: &Endpoint,
) -> Engine<Arc<HttpConnector>> {
    let engine = Engine::builder(r.clone(), http())
        .config(fast_config())
        .seed(11)
        .build();
    engine
        .register_identity(delegate_identity(claims, scope, endpoint))
        .unwrap();
    engine
}

/// The notes protocol (notes and their comments) and a photos protocol, with four notes
/// of two comments each and three photos. Returns the ids of the notes.
fn populate(r: &Replica) -> Vec<RecordId> {
    configure(r);
    r.configure(
        &tenant(),
        &photos(),
        vec![TypeRule {
            path: note(),
            data_bytes_max: None,
        }],
        vec![],
        &alice(),
    )
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        let n = put(r, &format!("n{i}"), format!("note {i}").as_bytes()).record_id;
        for j in 0..2 {
            comment_on(r, n, &format!("c{i}.{j}"));
        }
        ids.push(n);
    }
    for i in 0..3u8 {
        r.put(&tenant(), &photos(), &note(), &[i], vec![i; 100], &alice())
            .unwrap();
    }
    ids
}

fn comment_on(r: &Replica, parent: RecordId, text: &str) -> RecordId {
    r.write(
        &tenant(),
        WriteRequest {
            protocol: notes(),
            path: comment(),
            key: sync_engine::RecordKey::New,
            parent: Some(parent),
            data: Some(text.as_bytes().to_vec()),
            author: alice(),
        },
    )
    .unwrap()
    .record_id
}

/// The live records of `protocol`, sorted by id: id, winning cid, payload.
fn holdings(r: &Replica, protocol: &ProtocolName) -> Vec<(RecordId, Cid, Option<Vec<u8>>)> {
    let mut v: Vec<_> = r
        .list(&tenant(), protocol, None)
        .unwrap()
        .into_iter()
        .filter(|rec| !rec.deleted)
        .map(|rec| (rec.record_id, rec.cid, rec.data))
        .collect();
    v.sort();
    v
}

/// Checks that `r` holds exactly the messages `scope` covers on `server`: the whole
/// tree of `r` equals the server's tree of the scope.
/// The projection of one note's thread (the note and everything under it).
fn thread_of(note: RecordId) -> Scope {
    Scope::projection(vec![ProjectionEntry {
        protocol: notes(),
        path_prefixes: vec![],
        context_prefixes: vec![ContextId::root(note)],
    }])
    .unwrap()
}

fn holds_exactly(r: &Replica, server: &Replica, scope: &Scope) {
    assert_eq!(
        r.root(&tenant(), &Scope::Full).unwrap(),
        server.root(&tenant(), scope).unwrap(),
        "the replica holds exactly the scope {scope:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_replicas_converge_on_exactly_their_subset() {
    let (server, _handle, ep) = http_node(100).await;
    let laptop = replica(1);
    let ids = populate(&laptop);
    let el = engine(&laptop, http(), vec![ep.clone()], fast_config());
    sync_until_quiet(&el, 3).await;
    assert_eq!(root(&server), root(&laptop));

    // A phone with the notes protocol, a watch with one note's thread, and a second
    // full replica.
    let notes_only = Scope::protocols(vec![notes()]).unwrap();
    let thread = thread_of(ids[1]);
    let phone_r = replica(2);
    let ep_phone = delegate_engine(
        &phone_r,
        &delegate_claims("phone-notes", &notes_only, Actions::ALL, FAR_FUTURE_MS),
        &notes_only,
        &ep,
    );
    let watch_r = replica(3);
    let ep_watch = delegate_engine(
        &watch_r,
        &delegate_claims("watch-thread", &thread, Actions::ALL, FAR_FUTURE_MS),
        &thread,
        &ep,
    );
    let full_r = replica(4);
    let ep_full = engine(&full_r, http(), vec![ep.clone()], fast_config());
    for e in [&ep_phone, &ep_watch] {
        quiet(e).await;
    }
    sync_until_quiet(&ep_full, 3).await;

    holds_exactly(&phone_r, &server, &notes_only);
    holds_exactly(&watch_r, &server, &thread);
    assert_eq!(root(&full_r), root(&server));
    assert_eq!(holdings(&phone_r, &notes()), holdings(&server, &notes()));
    assert!(holdings(&phone_r, &photos()).is_empty());
    let watch_ids: Vec<RecordId> = holdings(&watch_r, &notes())
        .into_iter()
        .map(|h| h.0)
        .collect();
    assert_eq!(watch_ids.len(), 3, "the note and its two comments");
    assert!(watch_ids.contains(&ids[1]));
    for id in &watch_ids {
        let rec = watch_r.get(&tenant(), id).unwrap().unwrap();
        assert_eq!(rec.context_id.chain()[0], ids[1], "{rec:?}");
    }

    // New writes and a delete: each replica takes what its scope covers.
    let new_comment = comment_on(&laptop, ids[1], "late");
    comment_on(&laptop, ids[2], "elsewhere");
    laptop
        .delete(&tenant(), ids[1], &alice())
        .unwrap_or_else(|e| {
            panic!("delete: {e}");
        });
    laptop
        .put(
            &tenant(),
            &photos(),
            &note(),
            b"p9",
            b"x".to_vec(),
            &alice(),
        )
        .unwrap();
    sync_until_quiet(&el, 3).await;
    for e in [&ep_phone, &ep_watch] {
        quiet(e).await;
    }
    sync_until_quiet(&ep_full, 3).await;
    holds_exactly(&phone_r, &server, &notes_only);
    holds_exactly(&watch_r, &server, &thread);
    assert_eq!(root(&full_r), root(&server));
    assert!(watch_r.get(&tenant(), &new_comment).unwrap().is_some());
    assert!(
        watch_r.get(&tenant(), &ids[1]).unwrap().is_none(),
        "the delete reached the projection through its record"
    );
    // A watch that starts after the delete gets the record's initial write and its
    // delete in one page: the delete is classified through that initial write.
    let late_r = replica(6);
    let ep_late = delegate_engine(
        &late_r,
        &delegate_claims("late-thread", &thread, Actions::ALL, FAR_FUTURE_MS),
        &thread,
        &ep,
    );
    quiet(&ep_late).await;
    holds_exactly(&late_r, &server, &thread);
    assert!(late_r.get(&tenant(), &ids[1]).unwrap().is_none());
    for e in [&ep_phone, &ep_watch, &ep_late] {
        assert!(e.dead_letters().unwrap().is_empty());
        assert!(e.health().unwrap().healthy, "{:?}", e.health());
    }
}

/// Syncs until a pass moves nothing, every link without an error and every root
/// comparison equal (projections compare roots only when a reconcile is due); panics
/// after a few passes.
async fn quiet<C: sync_engine::sync::Connector>(engine: &Engine<C>) {
    for _ in 0..4 {
        let report = engine.sync_once().await;
        assert!(report.is_ok(), "sync failed: {report:?}");
        let moved = report.pulled().messages + report.pushed().messages;
        if moved == 0 && report.links.iter().all(|l| l.converged() != Some(false)) {
            return;
        }
    }
    panic!("not quiet after 4 passes");
}

/// Asserts a refusal with `status` and a non-empty reason.
fn refused(result: Result<impl std::fmt::Debug, TransportError>, status: u16, what: &str) {
    match result {
        Err(TransportError::Refused {
            status: s, message, ..
        }) => {
            assert_eq!(s, status, "{what}: {message}");
            assert!(!message.is_empty(), "{what}: a reason is given");
        }
        other => panic!("{what}: expected a {status} refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_is_refused_beyond_its_grant() {
    let (server, handle, ep) = http_node(100).await;
    let laptop = replica(1);
    let ids = populate(&laptop);
    let el = engine(&laptop, http(), vec![ep.clone()], fast_config());
    sync_until_quiet(&el, 3).await;

    let notes_only = Scope::protocols(vec![notes()]).unwrap();
    let photos_only = Scope::protocols(vec![photos()]).unwrap();
    let client = |claims: &Claims| {
        HttpClient::new(
            &ep,
            &Token::issue(&key(), claims.clone()),
            ClientConfig::default(),
        )
        .unwrap()
    };
    let read_sync = Actions::READ.union(Actions::SYNC);
    let delegate = client(&delegate_claims(
        "phone-notes",
        &notes_only,
        read_sync,
        FAR_FUTURE_MS,
    ));

    // Inside the grant: served, and cut to it.
    let LogPageReply::Page(page) = delegate
        .log_page(LogPageRequest {
            tenant: tenant(),
            scope: notes_only.clone(),
            from: None,
            filter: LogFilter::default(),
            limit: 1000,
        })
        .await
        .unwrap()
    else {
        panic!("gap")
    };
    assert_eq!(
        page.entries.len(),
        1 + 4 * 3,
        "the configure, notes, comments"
    );
    let photo_cids: Vec<Cid> = laptop
        .list(&tenant(), &photos(), None)
        .unwrap()
        .into_iter()
        .map(|r| r.cid)
        .collect();
    let note_cid = laptop.get(&tenant(), &ids[0]).unwrap().unwrap().cid;
    let mut asked = photo_cids.clone();
    asked.push(note_cid);
    let read = delegate
        .read_messages(ReadMessagesRequest {
            tenant: tenant(),
            scope: notes_only.clone(),
            cids: asked,
        })
        .await
        .unwrap();
    assert_eq!(
        read.found
            .iter()
            .map(|f| f.message.cid())
            .collect::<Vec<_>>(),
        vec![note_cid],
        "photos are not served under a notes grant"
    );

    // Beyond the grant: refused, never narrowed.
    for scope in [Scope::Full, photos_only.clone()] {
        refused(
            delegate
                .log_page(LogPageRequest {
                    tenant: tenant(),
                    scope: scope.clone(),
                    from: None,
                    filter: LogFilter::default(),
                    limit: 10,
                })
                .await,
            403,
            "log page beyond the grant",
        );
        refused(
            delegate
                .read_messages(ReadMessagesRequest {
                    tenant: tenant(),
                    scope: scope.clone(),
                    cids: photo_cids.clone(),
                })
                .await,
            403,
            "read beyond the grant",
        );
        refused(
            delegate
                .root(RootRequest {
                    tenant: tenant(),
                    scope: scope.clone(),
                })
                .await,
            403,
            "root beyond the grant",
        );
        let tree = laptop.with_tree(&tenant(), &scope, |t| t.clone()).unwrap();
        let (_, first) =
            sync_smt::Initiator::start(&tree, sync_smt::Config::default(), [7; 16]).unwrap();
        refused(
            delegate
                .diff_round(DiffRequest {
                    tenant: tenant(),
                    scope: scope.clone(),
                    round: first.encode(),
                })
                .await,
            403,
            "diff beyond the grant",
        );
        refused(
            delegate
                .subscribe(SubscribeRequest {
                    tenant: tenant(),
                    scope: scope.clone(),
                    from: None,
                    filter: LogFilter::default(),
                })
                .await
                .map(|_| ()),
            403,
            "subscription beyond the grant",
        );
    }
    // Another tenant.
    refused(
        delegate
            .root(RootRequest {
                tenant: TenantId::new("did:example:bob").unwrap(),
                scope: notes_only.clone(),
            })
            .await,
        403,
        "another tenant",
    );
    // Writes need the write action.
    let photo = laptop
        .get(
            &tenant(),
            &laptop.list(&tenant(), &photos(), None).unwrap()[0].record_id,
        )
        .unwrap()
        .unwrap();
    let stored = laptop
        .ledger()
        .get_message(&tenant(), &photo.cid)
        .unwrap()
        .unwrap();
    let photo_item = MessageData {
        message: stored.message,
        data: stored.data,
    };
    refused(
        delegate
            .write_batch(WriteBatchRequest {
                tenant: tenant(),
                messages: vec![photo_item.clone()],
            })
            .await,
        403,
        "write without the write action",
    );
    // With the write action, a message outside the grant is answered `Unauthorized`
    // in the batch and never stored.
    let writer = client(&delegate_claims(
        "phone-notes-rw",
        &notes_only,
        Actions::ALL,
        FAR_FUTURE_MS,
    ));
    let fresh = replica(9);
    populate(&fresh);
    let outside = fresh
        .list(&tenant(), &photos(), None)
        .unwrap()
        .into_iter()
        .map(|r| {
            fresh
                .ledger()
                .get_message(&tenant(), &r.cid)
                .unwrap()
                .unwrap()
        })
        .next()
        .unwrap();
    let reply = writer
        .write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: vec![MessageData {
                message: outside.message.clone(),
                data: outside.data.clone(),
            }],
        })
        .await
        .unwrap();
    assert_eq!(reply.outcomes, vec![ApplyOutcome::Unauthorized]);
    assert!(
        !server
            .ledger()
            .has_message(&tenant(), &outside.message.cid())
            .unwrap()
    );

    // Expired and forged tokens: 401.
    let expired = client(&delegate_claims("old", &notes_only, read_sync, 1));
    refused(
        expired
            .root(RootRequest {
                tenant: tenant(),
                scope: notes_only.clone(),
            })
            .await,
        401,
        "expired token",
    );
    let other_key = sync_transport::TokenKey::derive(b"another node");
    let forged = HttpClient::new(
        &ep,
        &Token::issue(
            &other_key,
            delegate_claims("forged", &Scope::Full, Actions::ALL, FAR_FUTURE_MS),
        ),
        ClientConfig::default(),
    )
    .unwrap();
    refused(
        forged
            .root(RootRequest {
                tenant: tenant(),
                scope: Scope::Full,
            })
            .await,
        401,
        "forged token",
    );

    // The engine of a delegate that asks for more than its grant gets the refusal in its
    // report and stores nothing.
    let greedy = replica(5);
    let claims = delegate_claims("phone-notes", &notes_only, Actions::ALL, FAR_FUTURE_MS);
    let eg = Engine::builder(greedy.clone(), http())
        .config(fast_config())
        .build();
    eg.register_identity(Identity {
        scope: Scope::Full,
        ..delegate_identity(&claims, &notes_only, &ep)
    })
    .unwrap();
    let report = eg.sync_once().await;
    let err = report.links[0].error.as_ref().expect("refused");
    assert!(
        matches!(
            err,
            sync_engine::Error::Transport(TransportError::Refused { status: 403, .. })
        ),
        "{err}"
    );
    assert_eq!(root(&greedy), sync_smt::Hash::default());
    drop(handle);
}

fn link_status<C: sync_engine::sync::Connector>(engine: &Engine<C>) -> LinkStatus {
    let links = engine.links().unwrap();
    assert_eq!(links.len(), 1, "one link: superseded links are pruned");
    links[0].status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_dependency_stops_the_link_until_a_wider_grant() {
    let (server, _handle, ep) = http_node(100).await;
    let laptop = replica(1);
    populate(&laptop);
    let el = engine(&laptop, http(), vec![ep.clone()], fast_config());
    sync_until_quiet(&el, 3).await;

    // Comments without the notes they hang under: every comment needs its note, which
    // the projection (and the grant) leave out.
    let comments = Scope::projection(vec![ProjectionEntry {
        protocol: notes(),
        path_prefixes: vec![comment()],
        context_prefixes: vec![],
    }])
    .unwrap();
    let watch = replica(3);
    let ew = delegate_engine(
        &watch,
        &delegate_claims("comments", &comments, Actions::ALL, FAR_FUTURE_MS),
        &comments,
        &ep,
    );
    let mut events = watch.events();
    let first = ew.links().unwrap()[0].key.clone();
    let report = ew.sync_once().await;
    let err = report.links[0].error.as_ref().expect("the link stops");
    assert!(
        matches!(err, sync_engine::Error::TerminalIncomplete { .. }),
        "{err}"
    );
    assert_eq!(link_status(&ew), LinkStatus::TerminalIncomplete);
    let letters = ew.dead_letters().unwrap();
    assert!(!letters.is_empty());
    assert!(
        letters
            .iter()
            .all(|d| d.category == DeadLetterCategory::Closure
                && d.error_code.as_deref() == Some("dependency_forbidden")),
        "{letters:?}"
    );
    let health = ew.health().unwrap();
    assert!(!health.healthy, "{health:?}");
    let mut saw_terminal = false;
    while let Ok(e) = events.try_recv() {
        if let SyncEvent::LinkStatusChanged { link, to, .. } = e
            && link == first
            && to == LinkStatus::TerminalIncomplete
        {
            saw_terminal = true;
        }
    }
    assert!(saw_terminal, "the status change was announced");
    assert!(
        holdings(&watch, &notes()).is_empty(),
        "no comment counts as applied without its note"
    );

    // Later syncs skip the link: nothing moves, the error says why.
    let again = ew.sync_once().await;
    assert_eq!(again.pulled().messages, 0);
    assert!(matches!(
        again.links[0].error,
        Some(sync_engine::Error::TerminalIncomplete { .. })
    ));

    // A wider grant and scope (notes with their comments) make a new link; the old one
    // is pruned with its closure failures, and the new one completes.
    let notes_tree = Scope::projection(vec![ProjectionEntry {
        protocol: notes(),
        path_prefixes: vec![note()],
        context_prefixes: vec![],
    }])
    .unwrap();
    let keys = ew
        .update_identity(delegate_identity(
            &delegate_claims("notes-tree", &notes_tree, Actions::ALL, FAR_FUTURE_MS),
            &notes_tree,
            &ep,
        ))
        .unwrap();
    assert_ne!(keys[0], first);
    assert_eq!(link_status(&ew), LinkStatus::Initializing);
    assert!(ew.dead_letters().unwrap().is_empty());
    quiet(&ew).await;
    holds_exactly(&watch, &server, &notes_tree);
    assert_eq!(holdings(&watch, &notes()), holdings(&server, &notes()));
    assert!(ew.health().unwrap().healthy);
}

/// A configure under a projection is judged alike by the replica and the node, in each
/// direction. Pulled, a projection carries the configures of its protocols (its records
/// need them): the node serves them and the replica's gate applies them. Pushed, a
/// configure sets the rules of every record of its protocol, so only a scope covering
/// the whole protocol carries it: the node refuses one from a delegate whose projection
/// covers part of the protocol, and that delegate's push does not send it (before one
/// gate, the push judged it by the pull rule and got a `push_permanent` dead letter).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configure_under_a_projection_is_judged_alike_pulled_and_pushed() {
    let (server, _handle, ep) = http_node(100).await;
    let laptop = replica(1);
    let ids = populate(&laptop);
    let el = engine(&laptop, http(), vec![ep.clone()], fast_config());
    sync_until_quiet(&el, 3).await;
    let configures = |r: &Replica| r.ledger().configures(&tenant(), &notes()).unwrap();
    let original = configures(&server);
    assert_eq!(original.len(), 1);

    // Pulled: one note's thread; the node serves the notes configure under the grant,
    // and the watch's gate applies it with the thread.
    let thread = thread_of(ids[1]);
    let thread_claims = delegate_claims("watch-thread", &thread, Actions::ALL, FAR_FUTURE_MS);
    let watch = replica(3);
    let ew = delegate_engine(&watch, &thread_claims, &thread, &ep);
    quiet(&ew).await;
    assert_eq!(
        configures(&watch),
        original,
        "the watch pulled the configure"
    );
    holds_exactly(&watch, &server, &thread);
    let client = HttpClient::new(
        &ep,
        &Token::issue(&key(), thread_claims.clone()),
        ClientConfig::default(),
    )
    .unwrap();
    let LogPageReply::Page(page) = client
        .log_page(LogPageRequest {
            tenant: tenant(),
            scope: thread.clone(),
            from: None,
            filter: LogFilter::default(),
            limit: 1000,
        })
        .await
        .unwrap()
    else {
        panic!("gap")
    };
    assert!(
        page.entries
            .iter()
            .any(|e| e.item.message.cid() == original[0]),
        "the node serves the configure under the thread grant"
    );

    // Pushed: the watch narrows the whole protocol (no comments, one-byte notes).
    let narrow = vec![TypeRule {
        path: note(),
        data_bytes_max: Some(1),
    }];
    let own = watch
        .configure(&tenant(), &notes(), narrow.clone(), vec![], &phone())
        .unwrap();
    let stored = watch
        .ledger()
        .get_message(&tenant(), &own)
        .unwrap()
        .unwrap();
    let reply = client
        .write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: vec![MessageData {
                message: stored.message,
                data: stored.data,
            }],
        })
        .await
        .unwrap();
    assert_eq!(
        reply.outcomes,
        vec![ApplyOutcome::Unauthorized],
        "the node refuses the configure from the thread's delegate"
    );
    let report = ew.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    let push = report.links[0].push.as_ref().expect("the link pushed");
    assert_eq!(
        push.out_of_scope, 1,
        "the push leaves the configure out: {push:?}"
    );
    assert_eq!(push.dead_lettered, 0, "{push:?}");
    assert!(ew.dead_letters().unwrap().is_empty());
    assert_eq!(configures(&server), original);

    // A projection of the whole protocol carries configures both ways.
    let whole = Scope::projection(vec![ProjectionEntry::whole(notes())]).unwrap();
    let tablet = replica(4);
    let et = delegate_engine(
        &tablet,
        &delegate_claims("tablet-notes", &whole, Actions::ALL, FAR_FUTURE_MS),
        &whole,
        &ep,
    );
    quiet(&et).await;
    assert_eq!(configures(&tablet), original);
    let tablets = tablet
        .configure(&tenant(), &notes(), narrow, vec![], &phone())
        .unwrap();
    quiet(&et).await;
    assert!(configures(&server).contains(&tablets), "the node took it");
    assert!(et.dead_letters().unwrap().is_empty());
}

/// Milliseconds since the Unix epoch on the system clock.
fn system_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_change_expire_and_refresh_without_a_full_resync() {
    // The node and the phone share a manual clock, so the grant can expire on cue.
    let clock = Arc::new(ManualClock::new(system_ms()));
    let server = replica_with_clock(100, &clock);
    let mut cfg = ServerConfig::new(key());
    cfg.clock = clock.clone();
    let handle = serve(
        Arc::new(ReplicaHandler::new(server.clone())),
        cfg,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let ep = Endpoint::new(format!("http://{}", handle.local_addr())).unwrap();
    let laptop = replica(1);
    populate(&laptop);
    let el = engine(&laptop, http(), vec![ep.clone()], fast_config());
    sync_until_quiet(&el, 3).await;

    let notes_only = Scope::protocols(vec![notes()]).unwrap();
    let t0 = clock.now_ms();
    let phone_r = replica_with_clock(2, &clock);
    let ep_phone = delegate_engine(
        &phone_r,
        &delegate_claims("g1", &notes_only, Actions::ALL, t0 + 60_000),
        &notes_only,
        &ep,
    );
    let first = ep_phone.links().unwrap()[0].key.clone();
    let report = ep_phone.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    let full_download = report.pulled();
    assert_eq!(full_download.messages, 13, "configure, notes and comments");
    quiet(&ep_phone).await;
    holds_exactly(&phone_r, &server, &notes_only);

    // A re-grant (another grant id, read and sync only): a new authorization epoch, a
    // new link, the old one pruned; the new link resumes from the old checkpoints.
    let regrant = delegate_claims(
        "g2",
        &notes_only,
        Actions::READ.union(Actions::SYNC),
        t0 + 60_000,
    );
    let keys = ep_phone
        .update_identity(delegate_identity(&regrant, &notes_only, &ep))
        .unwrap();
    assert_ne!(keys[0], first);
    assert_eq!(keys[0].projection_id, first.projection_id);
    assert_ne!(keys[0].authorization_epoch, first.authorization_epoch);
    assert_eq!(
        ep_phone.links().unwrap().len(),
        1,
        "the superseded link is pruned"
    );
    let report = ep_phone.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.pulled().messages, 0, "nothing is downloaded again");
    assert_eq!(report.links[0].converged(), Some(true));

    // The laptop writes on; the grant expires.
    put(&laptop, "late-1", b"l1");
    put(&laptop, "late-2", b"l2");
    sync_until_quiet(&el, 3).await;
    clock.advance(120_000);
    let mut events = phone_r.events();
    let report = ep_phone.sync_once().await;
    let err = report.links[0].error.as_ref().expect("expired");
    assert!(
        matches!(err, sync_engine::Error::GrantExpired { expired_at_ms, .. } if *expired_at_ms == t0 + 60_000),
        "{err}"
    );
    assert!(err.to_string().contains("expired"), "{err}");
    assert_eq!(report.pulled().messages, 0);
    assert_eq!(link_status(&ep_phone), LinkStatus::TerminalIncomplete);
    assert!(!ep_phone.health().unwrap().healthy);
    let mut saw = false;
    while let Ok(e) = events.try_recv() {
        saw |= matches!(
            e,
            SyncEvent::LinkStatusChanged {
                to: LinkStatus::TerminalIncomplete,
                ..
            }
        );
    }
    assert!(saw, "the expiry was announced as a status change");
    assert!(get(&phone_r, "late-1").is_none());

    // A refreshed token (same grant, new expiry): a new link that picks up where the
    // expired one stopped, moving only the two new notes.
    let refreshed = delegate_claims(
        "g2",
        &notes_only,
        Actions::READ.union(Actions::SYNC),
        clock.now_ms() + 3_600_000,
    );
    ep_phone
        .update_identity(delegate_identity(&refreshed, &notes_only, &ep))
        .unwrap();
    let report = ep_phone.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.pulled().messages, 2, "{report:?}");
    assert!(
        report.pulled().bytes * 4 < full_download.bytes,
        "{report:?}"
    );
    assert_eq!(report.links[0].converged(), Some(true));
    assert_eq!(get(&phone_r, "late-2"), Some(b"l2".to_vec()));
    holds_exactly(&phone_r, &server, &notes_only);
    assert!(ep_phone.health().unwrap().healthy);
    assert_ne!(link_status(&ep_phone), LinkStatus::TerminalIncomplete);
}

/// How a hostile node lies.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Lie {
    /// Answers every request with the whole tenant, whatever scope was asked.
    WholeTenant,
    /// Answers every request with another tenant's messages.
    OtherTenant,
    /// Serves no log pages, and answers reads with messages nobody asked for.
    WrongMessages,
    /// Serves log pages without the initial writes of records (as a node that lost
    /// them, or a cursor past them, would).
    NoInitialWrites,
}

/// A node that answers with what it wants, through a real HTTP client holding the
/// owner tokens of both tenants.
struct Hostile {
    alice: HttpClient,
    bob: HttpClient,
    lie: Lie,
    substitutes: Vec<MessageData>,
}

fn bob() -> TenantId {
    TenantId::new("did:example:bob").unwrap()
}

impl Hostile {
    fn client(&self) -> &HttpClient {
        match self.lie {
            Lie::OtherTenant => &self.bob,
            _ => &self.alice,
        }
    }
    fn tenant(&self, asked: TenantId) -> TenantId {
        match self.lie {
            Lie::OtherTenant => bob(),
            _ => asked,
        }
    }
}

impl Remote for Hostile {
    fn batch_messages_max(&self) -> usize {
        self.client().batch_messages_max()
    }
    async fn root(&self, req: RootRequest) -> Result<RootReply, TransportError> {
        self.client()
            .root(RootRequest {
                tenant: self.tenant(req.tenant),
                scope: Scope::Full,
            })
            .await
    }
    async fn diff_round(&self, req: DiffRequest) -> Result<DiffReply, TransportError> {
        self.client()
            .diff_round(DiffRequest {
                tenant: self.tenant(req.tenant),
                scope: Scope::Full,
                round: req.round,
            })
            .await
    }
    async fn log_page(&self, req: LogPageRequest) -> Result<LogPageReply, TransportError> {
        let reply = self
            .client()
            .log_page(LogPageRequest {
                tenant: self.tenant(req.tenant),
                scope: Scope::Full,
                ..req
            })
            .await?;
        match (self.lie, reply) {
            (Lie::WrongMessages, LogPageReply::Page(mut page)) => {
                page.entries.clear();
                page.has_more = false;
                Ok(LogPageReply::Page(page))
            }
            (Lie::NoInitialWrites, LogPageReply::Page(mut page)) => {
                page.entries
                    .retain(|e| !matches!(&e.item.message, Message::Write(w) if w.prev.is_none()));
                Ok(LogPageReply::Page(page))
            }
            (_, reply) => Ok(reply),
        }
    }
    async fn read_messages(
        &self,
        req: ReadMessagesRequest,
    ) -> Result<ReadMessagesReply, TransportError> {
        let mut reply = self
            .client()
            .read_messages(ReadMessagesRequest {
                tenant: self.tenant(req.tenant),
                scope: Scope::Full,
                cids: req.cids,
            })
            .await?;
        if self.lie == Lie::WrongMessages {
            reply.found = self.substitutes.clone();
        }
        Ok(reply)
    }
    async fn write_batch(&self, req: WriteBatchRequest) -> Result<WriteBatchReply, TransportError> {
        self.alice.write_batch(req).await
    }
    async fn blob_stat(&self, req: BlobStatRequest) -> Result<BlobStat, TransportError> {
        self.alice.blob_stat(req).await
    }
    async fn blob_read(
        &self,
        req: BlobReadRequest,
    ) -> Result<sync_transport::client::BlobDownload, TransportError> {
        self.alice.blob_read(req).await
    }
    async fn blob_write(
        &self,
        req: BlobWriteRequest,
        source: sync_transport::client::BlobSource,
    ) -> Result<BlobStat, TransportError> {
        self.alice.blob_write(req, source).await
    }
    async fn health(&self) -> Result<HealthReply, TransportError> {
        self.alice.health().await
    }
    async fn subscribe(
        &self,
        req: SubscribeRequest,
    ) -> Result<sync_transport::client::Subscription, TransportError> {
        self.alice.subscribe(req).await
    }
}

struct HostileConnector {
    lie: Lie,
    substitutes: Vec<MessageData>,
}

impl sync_engine::sync::Connector for HostileConnector {
    type Remote = Hostile;
    fn connect(
        &self,
        endpoint: &Endpoint,
        _token: Option<&str>,
    ) -> Result<Hostile, TransportError> {
        let owner = |t: TenantId| {
            let claims = Claims::owner(t, alice(), GrantId::new("hostile").unwrap(), FAR_FUTURE_MS);
            HttpClient::new(
                endpoint,
                &Token::issue(&key(), claims),
                ClientConfig::default(),
            )
        };
        Ok(Hostile {
            alice: owner(tenant())?,
            bob: owner(bob())?,
            lie: self.lie,
            substitutes: self.substitutes.clone(),
        })
    }
}

/// Every message `r` holds for `tenant`.
fn all_messages(r: &Replica, tenant: &TenantId) -> Vec<MessageData> {
    let sync_ledger::LogRead::Page(page) = r.changes_since(tenant, None, 10_000).unwrap() else {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_node_cannot_inject_messages() {
    let (server, _handle, ep) = http_node(100).await;
    let laptop = replica(1);
    populate(&laptop);
    let el = engine(&laptop, http(), vec![ep.clone()], fast_config());
    sync_until_quiet(&el, 3).await;
    // Bob's notes on the same node.
    let bob_laptop = replica(7);
    bob_laptop
        .configure(
            &bob(),
            &notes(),
            vec![TypeRule {
                path: note(),
                data_bytes_max: None,
            }],
            vec![],
            &alice(),
        )
        .unwrap();
    bob_laptop
        .put(
            &bob(),
            &notes(),
            &note(),
            b"secret",
            b"bob's".to_vec(),
            &alice(),
        )
        .unwrap();
    let bob_messages = all_messages(&bob_laptop, &bob());
    HttpClient::new(
        &ep,
        &Token::issue(
            &key(),
            Claims::owner(bob(), alice(), GrantId::new("bob").unwrap(), FAR_FUTURE_MS),
        ),
        ClientConfig::default(),
    )
    .unwrap()
    .write_batch(WriteBatchRequest {
        tenant: bob(),
        messages: bob_messages.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        server.root(&bob(), &Scope::Full).unwrap(),
        bob_laptop.root(&bob(), &Scope::Full).unwrap()
    );

    let notes_only = Scope::protocols(vec![notes()]).unwrap();
    let claims = delegate_claims("phone-notes", &notes_only, Actions::ALL, FAR_FUTURE_MS);
    let phone_engine = |r: &Replica, lie: Lie, substitutes: Vec<MessageData>| {
        let e = Engine::builder(r.clone(), HostileConnector { lie, substitutes })
            .config(fast_config())
            .build();
        e.register_identity(delegate_identity(&claims, &notes_only, &ep))
            .unwrap();
        e
    };

    // The whole tenant, where the link asked for notes: the photos are refused by the
    // scope gate (catch-up and reconcile fetches) and recorded, never stored.
    let photo_cids: Vec<Cid> = all_messages(&laptop, &tenant())
        .into_iter()
        .map(|m| m.message)
        .filter(|m| *m.protocol() == photos())
        .map(|m| m.cid())
        .collect();
    assert_eq!(photo_cids.len(), 4, "the photos configure and three photos");
    let phone_r = replica(2);
    let e = phone_engine(&phone_r, Lie::WholeTenant, vec![]);
    let report = e.sync_once().await;
    assert_eq!(report.links[0].converged(), Some(false), "{report:?}");
    for cid in &photo_cids {
        assert!(!phone_r.ledger().has_message(&tenant(), cid).unwrap());
    }
    holds_exactly(&phone_r, &server, &notes_only);
    let rejected: Vec<Cid> = e
        .dead_letters()
        .unwrap()
        .into_iter()
        .filter(|d| {
            d.category == DeadLetterCategory::PullScopeRejected
                && d.error_code.as_deref() == Some("out_of_scope")
        })
        .map(|d| d.cid)
        .collect();
    for cid in &photo_cids {
        assert!(rejected.contains(cid), "{cid} recorded");
    }

    // Another tenant's messages: refused by the replica (wrong tenant), never stored
    // under either tenant.
    let phone_r = replica(3);
    let e = phone_engine(&phone_r, Lie::OtherTenant, vec![]);
    let _ = e.sync_once().await;
    for m in &bob_messages {
        let cid = m.message.cid();
        assert!(!phone_r.ledger().has_message(&tenant(), &cid).unwrap());
        assert!(!phone_r.ledger().has_message(&bob(), &cid).unwrap());
    }
    assert_eq!(root(&phone_r), sync_smt::Hash::default());
    assert!(
        e.dead_letters()
            .unwrap()
            .iter()
            .any(|d| d.category == DeadLetterCategory::PullProcessing),
        "the refusals are recorded"
    );

    // Reads answered with a message nobody asked for (its cid is not among those the
    // read names): the reconcile stops with a protocol error, nothing is stored.
    let phone_r = replica(4);
    let stranger = bob_messages[1].clone();
    let e = phone_engine(&phone_r, Lie::WrongMessages, vec![stranger.clone()]);
    let report = e.sync_once().await;
    let err = report.links[0].error.as_ref().expect("the reconcile stops");
    assert!(matches!(err, sync_engine::Error::Protocol(_)), "{err}");
    let cid = stranger.message.cid();
    assert!(!phone_r.ledger().has_message(&tenant(), &cid).unwrap());
    assert!(!phone_r.ledger().has_message(&bob(), &cid).unwrap());
    assert_eq!(
        root(&phone_r),
        sync_smt::Hash::default(),
        "nothing was stored"
    );
}

/// A delete under a partial projection whose record the replica never held cannot be
/// placed by the scope gate: the catch-up fails closed (not applied, a `unknown`
/// dead letter) and marks the link for a reconcile, which can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_delete_the_gate_cannot_place_is_refused_and_marks_the_link() {
    let (server, _handle, ep) = http_node(100).await;
    let laptop = replica(1);
    let ids = populate(&laptop);
    let thread = thread_of(ids[1]);
    let comments: Vec<RecordId> = laptop
        .list(&tenant(), &notes(), None)
        .unwrap()
        .into_iter()
        .filter(|r| ContextId::root(ids[1]).child(r.record_id).ok() == Some(r.context_id.clone()))
        .map(|r| r.record_id)
        .collect();
    assert_eq!(comments.len(), 2);
    let delete = laptop.delete(&tenant(), comments[0], &alice()).unwrap().cid;
    let el = engine(&laptop, http(), vec![ep.clone()], fast_config());
    sync_until_quiet(&el, 3).await;
    assert!(server.ledger().has_message(&tenant(), &delete).unwrap());

    let claims = delegate_claims("phone-thread", &thread, Actions::ALL, FAR_FUTURE_MS);
    let phone = replica(2);
    let e = Engine::builder(
        phone.clone(),
        HostileConnector {
            lie: Lie::NoInitialWrites,
            substitutes: vec![],
        },
    )
    .config(fast_config())
    .build();
    e.register_identity(delegate_identity(&claims, &thread, &ep))
        .unwrap();
    let link = e.links().unwrap().remove(0);
    assert!(!link.needs_reconcile);
    e.catch_up(&link.key).await.unwrap();

    assert!(
        !phone.ledger().has_message(&tenant(), &delete).unwrap(),
        "the delete was not applied"
    );
    let unknown: Vec<_> = e
        .dead_letters()
        .unwrap()
        .into_iter()
        .filter(|d| {
            d.category == DeadLetterCategory::PullScopeRejected
                && d.error_code.as_deref() == Some("unknown")
        })
        .map(|d| d.cid)
        .collect();
    assert_eq!(unknown, vec![delete], "the delete, and only it, is unknown");
    assert!(
        e.links().unwrap()[0].needs_reconcile,
        "the link is marked for a reconcile"
    );
}

/// The live driver's side of closure: a terminal catch-up result stops the link's
/// machine for good (no timers, no operations), announced and persisted.
#[test]
fn a_terminal_result_stops_the_link_machine() {
    use sync_engine::machine::{Action, CatchUpResult, LinkConfig, LinkMachine, Mode};
    let projection = Scope::projection(vec![ProjectionEntry {
        protocol: notes(),
        path_prefixes: vec![comment()],
        context_prefixes: vec![],
    }])
    .unwrap();
    let mut state = LinkState::new(tenant(), endpoint("node"), projection, Authorization::Owner);
    state.last_sync_ms = Some(1);
    let config = LinkConfig {
        mode: Mode::Poll,
        ..LinkConfig::default()
    };
    let mut m = LinkMachine::new(state, config);
    m.handle_start(0);
    let actions: Vec<Action> = std::iter::from_fn(|| m.poll_action()).collect();
    let at = actions
        .iter()
        .find_map(|a| match a {
            Action::ArmTimer { at_ms, .. } => Some(*at_ms),
            _ => None,
        })
        .unwrap();
    m.handle_timer(at, sync_engine::machine::Timer::Poll);
    let ticket = std::iter::from_fn(|| m.poll_action())
        .find_map(|a| match a {
            Action::CatchUp { ticket, .. } => Some(ticket),
            _ => None,
        })
        .unwrap();
    m.handle_catch_up_result(
        at,
        ticket,
        CatchUpResult::Terminal("needs a note outside the scope".into()),
    );
    let actions: Vec<Action> = std::iter::from_fn(|| m.poll_action()).collect();
    assert_eq!(m.state().status, LinkStatus::TerminalIncomplete);
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Emit(SyncEvent::LinkStatusChanged {
            to: LinkStatus::TerminalIncomplete,
            ..
        })
    )));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Persist(s) if s.status == LinkStatus::TerminalIncomplete))
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::ArmTimer { .. } | Action::CatchUp { .. })),
        "{actions:?}"
    );
    // A restart does not bring it back.
    m.handle_start(at + 1);
    assert_eq!(m.poll_action(), None);
}

/// A delegate of one thread writes a comment in it and deletes it before its next push:
/// the node takes both (the delete's record is classified by the initial write in the
/// same push, as a pulling replica would), and a delete of a record outside the thread
/// is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegate_writes_and_deletes_a_record_of_its_projection_in_one_push() {
    let (server, _handle, ep) = http_node(100).await;
    let laptop = replica(1);
    let ids = populate(&laptop);
    let el = engine(&laptop, http(), vec![ep.clone()], fast_config());
    sync_until_quiet(&el, 3).await;
    let thread = thread_of(ids[1]);
    let claims = delegate_claims("watch-thread", &thread, Actions::ALL, FAR_FUTURE_MS);
    let watch = replica(3);
    let ew = delegate_engine(&watch, &claims, &thread, &ep);
    quiet(&ew).await;

    let written = watch
        .write(
            &tenant(),
            WriteRequest {
                protocol: notes(),
                path: comment(),
                key: sync_engine::RecordKey::New,
                parent: Some(ids[1]),
                data: Some(b"short-lived".to_vec()),
                author: phone(),
            },
        )
        .unwrap()
        .record_id;
    watch.delete(&tenant(), written, &phone()).unwrap();
    let report = ew.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    let push = report.links[0].push.as_ref().expect("the link pushed");
    assert_eq!(push.dead_lettered, 0, "{push:?}");
    assert!(ew.dead_letters().unwrap().is_empty());
    assert!(
        server
            .ledger()
            .record_info(&tenant(), &written)
            .unwrap()
            .is_some(),
        "the node holds the record"
    );
    assert!(
        server.get(&tenant(), &written).unwrap().is_none(),
        "and its delete"
    );
    holds_exactly(&watch, &server, &thread);

    // A record of another thread stays out of reach.
    let outside = laptop
        .list(&tenant(), &notes(), None)
        .unwrap()
        .into_iter()
        .find(|r| r.record_id == ids[2])
        .expect("note 2");
    let forged = Message::Delete(Delete {
        tenant: tenant(),
        protocol: notes(),
        record_id: outside.record_id,
        prev: Some(outside.cid),
        timestamp: Hlc {
            wall_ms: outside.timestamp.wall_ms + 1,
            counter: 0,
            node: NodeId(3),
        },
        author: phone(),
    });
    let client =
        HttpClient::new(&ep, &Token::issue(&key(), claims), ClientConfig::default()).unwrap();
    let reply = client
        .write_batch(WriteBatchRequest {
            tenant: tenant(),
            messages: vec![MessageData {
                message: forged,
                data: None,
            }],
        })
        .await
        .unwrap();
    assert_eq!(reply.outcomes, vec![ApplyOutcome::Unauthorized]);
    assert!(
        server.get(&tenant(), &ids[2]).unwrap().is_some(),
        "still live"
    );
}
