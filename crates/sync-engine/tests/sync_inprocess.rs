//! `sync_once` and its three operations over the in-process transport: replicas and
//! nodes in one process, every frame encoded and decoded as over a socket.

mod sync_support;

use std::sync::Arc;

use sync_engine::sync::{CatchUpStop, InProcessConnector};
use sync_engine::{Engine, Identity};
use sync_support::*;
use sync_types::*;

#[tokio::test]
async fn two_offline_replicas_converge_through_one_node() {
    let net = net();
    let (server, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    let a = replica(1);
    let b = replica(2);
    configure(&a);
    configure(&b);
    // Offline: disjoint records, the same natural key on both sides, and deletes.
    for i in 0..40 {
        put(&a, &format!("a{i}"), format!("from a {i}").as_bytes());
        put(&b, &format!("b{i}"), format!("from b {i}").as_bytes());
    }
    put(&a, "shared", b"a's version");
    put(&b, "shared", b"b's version");
    delete(&a, "a3");
    delete(&b, "b5");
    let ea = engine(&a, net.clone(), vec![endpoint("n")], fast_config());
    let eb = engine(&b, net.clone(), vec![endpoint("n")], fast_config());

    let ra = ea.sync_once().await;
    assert!(ra.is_ok(), "{ra:?}");
    assert!(
        ra.pushed().messages > 40,
        "a pushed its log: {:?}",
        ra.pushed()
    );
    let rb = eb.sync_once().await;
    assert!(rb.is_ok(), "{rb:?}");
    assert!(
        rb.pulled().messages > 40,
        "b pulled a's log: {:?}",
        rb.pulled()
    );
    sync_until_quiet(&ea, 3).await;
    sync_until_quiet(&eb, 3).await;

    assert_eq!(root(&a), root(&server));
    assert_eq!(root(&b), root(&server));
    assert_eq!(records(&a), records(&b));
    assert_eq!(records(&a), records(&server));
    assert_eq!(records(&a).len(), 40 + 40 - 2 + 1);
    assert_eq!(get(&a, "a3"), None);
    assert_eq!(get(&b, "a3"), None);
    assert_eq!(get(&a, "b7"), Some(b"from b 7".to_vec()));
    assert_eq!(get(&a, "shared"), get(&b, "shared"));

    for e in [&ea, &eb] {
        let health = e.health().unwrap();
        assert_eq!(health.pending_outbound, 0, "{health:?}");
        assert!(health.healthy, "{health:?}");
        assert_eq!(health.connectivity, Connectivity::Online);
        assert!(health.last_sync_ms.is_some());
        assert!(e.caught_up(&link(e)).await.unwrap());
    }
    // A new local write: no longer caught up until pushed.
    put(&a, "late", b"x");
    assert!(!ea.caught_up(&link(&ea)).await.unwrap());
    assert_eq!(ea.pending_outbound(&link(&ea)).unwrap(), 1);
    ea.sync_once().await;
    assert!(ea.caught_up(&link(&ea)).await.unwrap());
    assert!(
        !eb.caught_up(&link(&eb)).await.unwrap(),
        "b has not pulled it yet"
    );
}

#[tokio::test]
async fn pulled_messages_are_not_echoed_back_and_checkpoints_are_durable_state() {
    let net = net();
    let (server, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    let a = replica(1);
    configure(&a);
    for i in 0..300 {
        put(&a, &format!("k{i}"), b"v");
    }
    let ea = engine(&a, net.clone(), vec![endpoint("n")], fast_config());
    sync_until_quiet(&ea, 3).await;

    let b = replica(2);
    let eb = engine(&b, net.clone(), vec![endpoint("n")], fast_config());
    let mut events = b.events();
    let report = eb.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    let l = &report.links[0];
    assert_eq!(l.pulled.messages, 301);
    let push = l.push.as_ref().unwrap();
    assert_eq!(push.sent.messages, 0, "nothing pushed back: {push:?}");
    assert_eq!(push.echoes_skipped, 301);
    assert!(push.reached_head);
    assert_eq!(l.converged(), Some(true));

    // The link's stored state carries both checkpoints and the counters.
    let state = b.ledger().links().get(&link(&eb)).unwrap().unwrap();
    assert_eq!(
        state.pull.contiguous_applied,
        server.ledger().log_head(&tenant()).unwrap()
    );
    assert_eq!(
        state.push.contiguous_applied,
        b.ledger().log_head(&tenant()).unwrap()
    );
    assert_eq!(state.counters.messages_pulled, 301);
    assert!(!state.needs_reconcile);

    // Events: progress and checkpoint advances, reconcile completed.
    let mut progress = 0;
    let mut pull_advances = 0;
    let mut completed = false;
    while let Ok(e) = events.try_recv() {
        match e {
            SyncEvent::SyncProgress {
                direction: Direction::Pull,
                messages,
                bytes,
                messages_total,
                ..
            } => {
                progress = messages;
                assert!(bytes >= messages * 50);
                assert_eq!(messages_total, Some(301), "known from the first page");
            }
            SyncEvent::CheckpointAdvanced {
                direction: Direction::Pull,
                ..
            } => pull_advances += 1,
            SyncEvent::ReconcileCompleted { .. } => completed = true,
            _ => {}
        }
    }
    assert_eq!(progress, 301);
    assert!(pull_advances >= 1);
    assert!(completed);
}

#[tokio::test]
async fn deletes_never_resurrect() {
    let net = net();
    let (server, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    let (a, b, c) = (replica(1), replica(2), replica(3));
    configure(&a);
    put(&a, "doomed", b"v1");
    put(&a, "kept", b"v1");
    let ea = engine(&a, net.clone(), vec![endpoint("n")], fast_config());
    let eb = engine(&b, net.clone(), vec![endpoint("n")], fast_config());
    let ec = engine(&c, net.clone(), vec![endpoint("n")], fast_config());
    sync_until_quiet(&ea, 3).await;
    sync_until_quiet(&eb, 3).await;
    sync_until_quiet(&ec, 3).await;
    // c goes offline holding v1; a deletes; b writes an older-based update offline too.
    assert_eq!(get(&c, "doomed"), Some(b"v1".to_vec()));
    delete(&a, "doomed");
    sync_until_quiet(&ea, 3).await;
    // c comes back: its old version must not bring the record back, anywhere.
    sync_until_quiet(&ec, 3).await;
    sync_until_quiet(&eb, 3).await;
    sync_until_quiet(&ea, 3).await;
    for r in [&a, &b, &c, &server] {
        assert_eq!(get(r, "doomed"), None);
        assert_eq!(get(r, "kept"), Some(b"v1".to_vec()));
        let id = RecordId::from_natural_key(&tenant(), &notes(), b"doomed");
        let tomb = r.get_with_tombstone(&tenant(), &id).unwrap().unwrap();
        assert!(tomb.deleted);
        assert_eq!(root(r), root(&server));
    }
}

#[tokio::test]
async fn the_same_messages_in_different_orders_give_the_same_state() {
    let net = net();
    let (n1, node1) = new_node(&key(), 101);
    let (n2, node2) = new_node(&key(), 102);
    net.insert(endpoint("one"), node1);
    net.insert(endpoint("two"), node2);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let a = replica_with_clock(1, &clock);
    let b = replica_with_clock(2, &clock);
    configure(&a);
    configure(&b);
    for i in 0..30 {
        clock.advance(1);
        put(&a, &format!("k{}", i % 10), format!("a{i}").as_bytes());
        put(&b, &format!("k{}", i % 7), format!("b{i}").as_bytes());
        if i % 9 == 0 {
            delete(&b, &format!("k{}", i % 7));
        }
    }
    // Node one hears a first, node two hears b first.
    let ea1 = engine(&a, net.clone(), vec![endpoint("one")], fast_config());
    let eb1 = engine(&b, net.clone(), vec![endpoint("one")], fast_config());
    ea1.push(&link(&ea1)).await.unwrap();
    eb1.push(&link(&eb1)).await.unwrap();
    let a2 = replica_with_clock(3, &clock);
    let b2 = replica_with_clock(4, &clock);
    // Copies of a and b pushing to node two in the opposite order.
    for (from, to) in [(&b, &b2), (&a, &a2)] {
        let log = from.changes_since(&tenant(), None, 1000).unwrap();
        let sync_ledger::LogRead::Page(page) = log else {
            panic!("gap")
        };
        let items = page
            .entries
            .into_iter()
            .map(|e| (e.message, e.data))
            .collect();
        to.apply(&tenant(), items, sync_engine::Origin::Remote(None))
            .unwrap();
        let e = engine(to, net.clone(), vec![endpoint("two")], fast_config());
        e.push(&link(&e)).await.unwrap();
    }
    assert_eq!(root(&n1), root(&n2));
    // Two fresh replicas, one per node: one by the log in pages of 7, one by the diff.
    let x = replica(5);
    let y = replica(6);
    let ex = engine(
        &x,
        net.clone(),
        vec![endpoint("one")],
        sync_engine::SyncConfig {
            page_entries: 7,
            ..fast_config()
        },
    );
    let ey = engine(&y, net.clone(), vec![endpoint("two")], fast_config());
    sync_until_quiet(&ex, 3).await;
    let out = ey.reconcile(&link(&ey)).await.unwrap();
    assert!(out.diffed && out.converged, "{out:?}");
    assert_eq!(root(&x), root(&y));
    assert_eq!(records(&x), records(&y));
    assert_eq!(records(&x), records(&n1));
    assert_eq!(records(&y), records(&n2));
}

#[tokio::test]
async fn repeated_pages_and_duplicates_across_page_boundaries_are_harmless() {
    let net = net();
    let (server, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    let a = replica(1);
    configure(&a);
    for i in 0..100 {
        put(&a, &format!("k{i}"), format!("{i}").as_bytes());
    }
    // a pushes every batch twice.
    let ea = engine(
        &a,
        RepeatingConnector(net.clone()),
        vec![endpoint("n")],
        sync_engine::SyncConfig {
            push_batch_messages: 16,
            ..fast_config()
        },
    );
    let ra = ea.sync_once().await;
    assert!(ra.is_ok(), "{ra:?}");
    assert_eq!(root(&a), root(&server));
    // b reads small pages, every other one repeated and each starting with the last
    // entry of the previous one.
    let b = replica(2);
    let eb = engine(
        &b,
        RepeatingConnector(net.clone()),
        vec![endpoint("n")],
        sync_engine::SyncConfig {
            page_entries: 9,
            verify_roots: false,
            ..fast_config()
        },
    );
    let out = eb.catch_up(&link(&eb)).await.unwrap();
    assert!(out.stop.is_none(), "{out:?}");
    assert!(out.reached_head);
    assert!(out.duplicates_dropped > 9, "{out:?}");
    assert_eq!(out.applied, 101);
    assert_eq!(root(&b), root(&server));
    assert_eq!(records(&b), records(&server));
    assert!(
        b.ledger()
            .dead_letters()
            .list(&Default::default())
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.ledger()
            .links()
            .get(&link(&eb))
            .unwrap()
            .unwrap()
            .pull
            .contiguous_applied,
        server.ledger().log_head(&tenant()).unwrap()
    );
}

#[tokio::test]
async fn missing_dependencies_are_fetched_not_dropped() {
    let net = net();
    let (_lost, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    let a = replica(1);
    configure(&a);
    put(&a, "r", b"v1");
    let ea = engine(&a, net.clone(), vec![endpoint("n")], fast_config());
    sync_until_quiet(&ea, 3).await;

    // Push side: the node loses its store; a's checkpoint is past the configure and
    // the initial write, so the next push sends only the new version, and the node
    // answers `Incomplete` naming exactly what it lacks.
    let (server, fresh) = new_node(&key(), 200);
    net.insert(endpoint("n"), fresh);
    put(&a, "r", b"v2");
    let push = ea.push(&link(&ea)).await.unwrap();
    assert_eq!(push.sent.messages, 1, "{push:?}");
    assert_eq!(
        push.dependencies_sent, 2,
        "configure and initial write: {push:?}"
    );
    assert!(push.reached_head);
    assert_eq!(get(&server, "r"), Some(b"v2".to_vec()));
    assert_eq!(root(&server), root(&a));

    // Pull side: b's pull checkpoint points past the configure (a reset cursor), so
    // catch-up meets records whose protocol is missing; sync_once reconciles, which
    // fetches exactly what is missing, and catches up again.
    for i in 0..5 {
        put(&a, &format!("more{i}"), b"m");
    }
    sync_until_quiet(&ea, 3).await;
    let b = replica(2);
    let eb = engine(&b, net.clone(), vec![endpoint("n")], fast_config());
    let sync_ledger::LogRead::Page(page) = server.changes_since(&tenant(), None, 2).unwrap() else {
        panic!("gap")
    };
    let after_configure = page.entries[0].token;
    b.ledger()
        .links()
        .update(&link(&eb), sync_ledger::Durability::SyncData, |s| {
            s.pull.commit(after_configure)
        })
        .unwrap();
    let stopped = eb.catch_up(&link(&eb)).await.unwrap();
    assert!(
        matches!(
            &stopped.stop,
            Some(CatchUpStop::Unsettled { outcome: ApplyOutcome::Incomplete { missing }, .. })
                if missing.contains(&Dependency::Protocol(notes()))
        ),
        "{stopped:?}"
    );
    assert_eq!(
        stopped.checkpoint,
        Some(after_configure),
        "no progress past it"
    );
    let report = eb.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.links[0].converged(), Some(true));
    assert_eq!(records(&b), records(&server));
    assert_eq!(get(&b, "more4"), Some(b"m".to_vec()));
    assert!(eb.dead_letters().unwrap().is_empty());
    assert!(eb.caught_up(&link(&eb)).await.unwrap());
}

#[tokio::test]
async fn a_message_the_node_rejects_becomes_a_dead_letter_and_does_not_block_the_rest() {
    let net = net();
    let (server, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let a = replica_with_clock(1, &clock);
    let s = replica_with_clock(2, &clock);
    // a configures notes without a size limit and writes, offline.
    configure_with_limit(&a, None);
    clock.advance(10);
    put(&a, "big", &[7; 100]);
    put(&a, "small1", b"ok");
    put(&a, "small2", b"ok");
    // Meanwhile s installs a newer definition that limits notes to 16 bytes.
    clock.advance(10);
    configure_with_limit(&s, Some(16));
    let es = engine(&s, net.clone(), vec![endpoint("n")], fast_config());
    sync_until_quiet(&es, 3).await;

    let ea = engine(&a, net.clone(), vec![endpoint("n")], fast_config());
    let report = ea.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    let push = report.links[0].push.as_ref().unwrap();
    assert_eq!(push.dead_lettered, 1, "{push:?}");
    assert!(
        push.reached_head,
        "the refusal did not block the push: {push:?}"
    );
    assert_eq!(get(&server, "small1"), Some(b"ok".to_vec()));
    assert_eq!(get(&server, "small2"), Some(b"ok".to_vec()));
    assert_eq!(get(&server, "big"), None);
    let letters = ea.dead_letters().unwrap();
    assert_eq!(letters.len(), 1);
    let big = RecordId::from_natural_key(&tenant(), &notes(), b"big");
    assert_eq!(letters[0].cid, a.get(&tenant(), &big).unwrap().unwrap().cid);
    assert_eq!(letters[0].category, DeadLetterCategory::PushPermanent);
    assert_eq!(letters[0].error_code.as_deref(), Some("invalid"));
    assert_eq!(report.links[0].converged(), Some(false));
    let health = ea.health().unwrap();
    assert_eq!(health.failed_message_count, 1);
    assert!(!health.healthy);
    assert_eq!(health.pending_outbound, 0);

    // Permanent refusals are not retried: later syncs leave the attempt count alone.
    ea.sync_once().await;
    ea.sync_once().await;
    let letters = ea.dead_letters().unwrap();
    assert_eq!(letters[0].attempts, 1, "{letters:?}");
}

#[tokio::test]
async fn sync_in_one_direction_only() {
    let net = net();
    let (server, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    // Replica to node only: the node starts empty.
    let a = replica(1);
    configure(&a);
    for i in 0..20 {
        put(&a, &format!("k{i}"), b"a");
    }
    let ea = engine(&a, net.clone(), vec![endpoint("n")], fast_config());
    let report = ea.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.pulled().messages, 0);
    assert_eq!(report.pushed().messages, 21);
    assert_eq!(records(&server), records(&a));
    assert_eq!(report.links[0].converged(), Some(true));
    // Node to replica only: b has nothing of its own.
    let b = replica(2);
    let eb = engine(&b, net.clone(), vec![endpoint("n")], fast_config());
    let report = eb.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.pushed().messages, 0);
    assert_eq!(report.pulled().messages, 21);
    assert_eq!(records(&b), records(&server));
    assert_eq!(report.links[0].converged(), Some(true));
}

#[tokio::test]
async fn one_unreachable_endpoint_does_not_stop_another() {
    let net = net();
    let (server, n) = new_node(&key(), 100);
    net.insert(endpoint("up"), n);
    let a = replica(1);
    configure(&a);
    put(&a, "k", b"v");
    let ea = engine(
        &a,
        net.clone(),
        vec![endpoint("down"), endpoint("up")],
        fast_config(),
    );
    let report = ea.sync_once().await;
    assert_eq!(report.endpoints_ok, 1);
    assert_eq!(report.endpoints_failed, 1);
    let down = report
        .links
        .iter()
        .find(|l| l.link.endpoint == endpoint("down"))
        .unwrap();
    assert!(
        matches!(&down.error, Some(sync_engine::Error::Transport(t)) if t.is_retryable()),
        "{down:?}"
    );
    let up = report
        .links
        .iter()
        .find(|l| l.link.endpoint == endpoint("up"))
        .unwrap();
    assert!(up.error.is_none(), "{up:?}");
    assert_eq!(up.converged(), Some(true));
    assert_eq!(get(&server, "k"), Some(b"v".to_vec()));
    let states = ea.links().unwrap();
    let conn = |e: &str| {
        states
            .iter()
            .find(|l| l.key.endpoint == endpoint(e))
            .unwrap()
            .connectivity
    };
    assert_eq!(conn("down"), Connectivity::Offline);
    assert_eq!(conn("up"), Connectivity::Online);
    let health = ea.health().unwrap();
    assert_eq!(health.connectivity, Connectivity::Online);
    assert_eq!(
        health.pending_outbound, 2,
        "the down link still has both to push"
    );

    // The endpoint comes up: the next sync catches it up too.
    let (second, node2) = new_node(&key(), 101);
    net.insert(endpoint("down"), node2);
    let report = ea.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.endpoints_ok, 2);
    assert_eq!(get(&second, "k"), Some(b"v".to_vec()));
    assert_eq!(ea.health().unwrap().pending_outbound, 0);
}

#[tokio::test]
async fn a_gap_is_repaired_by_reconcile_and_the_log_resumes_after_it() {
    let net = net();
    let (server, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    let a = replica(1);
    configure(&a);
    for i in 0..10 {
        put(&a, &format!("k{i}"), b"v");
    }
    let ea = engine(&a, net.clone(), vec![endpoint("n")], fast_config());
    sync_until_quiet(&ea, 3).await;
    let b = replica(2);
    let eb = engine(&b, net.clone(), vec![endpoint("n")], fast_config());
    sync_until_quiet(&eb, 3).await;
    // b's cursor names a log instance the node no longer has (another stream).
    let mut stale = server.ledger().log_head(&tenant()).unwrap().unwrap();
    stale.stream_id = StreamId::from_bytes([9; 16]);
    for i in 10..20 {
        put(&a, &format!("k{i}"), b"v");
    }
    sync_until_quiet(&ea, 3).await;
    b.ledger()
        .links()
        .update(&link(&eb), sync_ledger::Durability::SyncData, |s| {
            s.pull.reset(Some(stale))
        })
        .unwrap();
    let mut events = b.events();
    let report = eb.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(records(&b), records(&server));
    let state = b.ledger().links().get(&link(&eb)).unwrap().unwrap();
    assert_eq!(
        state.pull.contiguous_applied,
        server.ledger().log_head(&tenant()).unwrap(),
        "the checkpoint resumed from the gap's latest token"
    );
    let mut gap = false;
    while let Ok(e) = events.try_recv() {
        gap |= matches!(e, SyncEvent::GapDetected { .. });
    }
    assert!(gap);
}

#[tokio::test]
async fn transient_push_failures_retry_then_dead_letter_and_need_a_reconcile() {
    let net = net();
    let (server, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    let a = replica(1);
    configure(&a);
    put(&a, "k", b"v");
    let flaky = Arc::new(FlakyConnector::new(net.clone()));
    let ea = engine(&a, flaky.clone(), vec![endpoint("n")], fast_config());
    // Reads work, writes fail in transport: four attempts on the schedule, then the
    // messages are dead-lettered `push_exhausted` and the link needs a reconcile.
    flaky
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let report = ea.sync_once().await;
    let err = report.links[0].error.as_ref().expect("the push failed");
    assert!(
        matches!(err, sync_engine::Error::Transport(t) if t.is_retryable()),
        "{err:?}"
    );
    assert_eq!(
        flaky
            .write_attempts
            .load(std::sync::atomic::Ordering::SeqCst),
        4
    );
    let l = link(&ea);
    let state = a.ledger().links().get(&l).unwrap().unwrap();
    assert!(state.needs_reconcile, "{state:?}");
    assert_eq!(
        state.push.contiguous_applied, None,
        "nothing was acknowledged"
    );
    let letters = ea.dead_letters().unwrap();
    assert_eq!(letters.len(), 2);
    assert!(
        letters
            .iter()
            .all(|d| d.category == DeadLetterCategory::PushExhausted)
    );
    assert!(!ea.health().unwrap().healthy);
    // Writes work again: the reconcile converges and clears them.
    flaky
        .fail_writes
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let report = ea.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.links[0].converged(), Some(true));
    assert!(ea.dead_letters().unwrap().is_empty());
    assert!(!a.ledger().links().get(&l).unwrap().unwrap().needs_reconcile);
    assert_eq!(records(&server), records(&a));
    assert!(ea.health().unwrap().healthy);
    // One registration per tenant.
    let again = Engine::builder(a.clone(), net.clone())
        .build()
        .register_identity(Identity::owner(tenant(), vec![endpoint("n")], "t"));
    assert!(again.is_err());
}

#[tokio::test]
async fn identities_register_update_and_unregister() {
    let net: Arc<InProcessConnector<_>> = net();
    let a = replica(1);
    let ea = engine(
        &a,
        net.clone(),
        vec![endpoint("x"), endpoint("y")],
        fast_config(),
    );
    assert_eq!(ea.links().unwrap().len(), 2);
    assert_eq!(ea.identities().unwrap().len(), 1);
    let keys = ea
        .update_identity(Identity {
            scope: Scope::protocols(vec![notes()]).unwrap(),
            ..Identity::owner(tenant(), vec![endpoint("y")], owner_token(&key()))
        })
        .unwrap();
    assert_eq!(keys.len(), 1);
    let links = ea.links().unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].key, keys[0]);
    assert_eq!(
        a.ledger().links().list(&tenant()).unwrap().len(),
        1,
        "old links pruned"
    );
    assert!(matches!(
        ea.catch_up(&LinkKey::new(
            tenant(),
            endpoint("x"),
            &Scope::Full,
            &Authorization::Owner
        ))
        .await,
        Err(sync_engine::Error::UnknownLink(_))
    ));
    ea.unregister_identity(&tenant()).unwrap();
    assert!(ea.links().unwrap().is_empty());
    assert!(ea.identities().unwrap().is_empty());
    assert!(
        ea.register_identity(Identity::owner(tenant(), vec![], "t"))
            .is_err()
    );
}
