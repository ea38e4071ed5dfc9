//! The replica on its own: local writes and reads on fjall, the apply pipeline's outcomes,
//! convergence of two replicas that exchange messages in any order, and conflict policies.

mod log_support;

use sync_engine::{ConflictPolicy, Origin, RecordKey, Replica, WriteRequest};
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
fn comment() -> ProtocolPath {
    ProtocolPath::new("note/comment").unwrap()
}
fn alice() -> PrincipalId {
    PrincipalId::new("did:example:alice").unwrap()
}

fn configure(r: &Replica) -> Cid {
    let types = vec![
        TypeRule {
            path: note(),
            data_bytes_max: None,
        },
        TypeRule {
            path: comment(),
            data_bytes_max: Some(64),
        },
    ];
    r.configure(&tenant(), &notes(), types, vec![], &alice())
        .unwrap()
}

fn replica(node: u64, clock: &std::sync::Arc<ManualClock>) -> Replica {
    Replica::builder()
        .node_id(NodeId(node))
        .clock(clock.clone())
        .seed(node)
        .in_memory()
        .unwrap()
}

/// Every message of the tenant's log with its inline data, in log order.
fn log(r: &Replica) -> Vec<(Message, Option<Vec<u8>>)> {
    log_support::full_log(r, &tenant())
}

fn records(r: &Replica) -> Vec<(RecordId, Cid, Option<Vec<u8>>)> {
    r.list(&tenant(), &notes(), None)
        .unwrap()
        .into_iter()
        .map(|rec| (rec.record_id, rec.cid, rec.data))
        .collect()
}

#[test]
fn local_writes_reads_and_reopen_on_fjall() {
    let dir = tempfile::tempdir().unwrap();
    let (root, groceries) = {
        let r = Replica::open(dir.path()).unwrap();
        configure(&r);
        let first = r
            .put(
                &tenant(),
                &notes(),
                &note(),
                b"groceries",
                b"milk".to_vec(),
                &alice(),
            )
            .unwrap();
        let second = r
            .put(
                &tenant(),
                &notes(),
                &note(),
                b"groceries",
                b"milk, eggs".to_vec(),
                &alice(),
            )
            .unwrap();
        assert_eq!(
            first.record_id, second.record_id,
            "a natural key addresses one record"
        );
        let rec = r.get(&tenant(), &first.record_id).unwrap().unwrap();
        assert_eq!(rec.data.as_deref(), Some(&b"milk, eggs"[..]));
        assert_eq!(rec.cid, second.cid);
        assert_eq!(rec.initial, Some(first.cid));

        let child = r
            .write(
                &tenant(),
                WriteRequest {
                    protocol: notes(),
                    path: comment(),
                    key: RecordKey::New,
                    parent: Some(first.record_id),
                    data: Some(b"organic".to_vec()),
                    author: alice(),
                },
            )
            .unwrap();
        assert_eq!(
            r.list(&tenant(), &notes(), Some(&comment())).unwrap().len(),
            1
        );
        assert_eq!(r.list(&tenant(), &notes(), None).unwrap().len(), 2);
        r.delete(&tenant(), child.record_id, &alice()).unwrap();
        assert!(r.get(&tenant(), &child.record_id).unwrap().is_none());
        assert!(
            r.get_with_tombstone(&tenant(), &child.record_id)
                .unwrap()
                .unwrap()
                .deleted
        );
        (r.root(&tenant(), &Scope::Full).unwrap(), first.record_id)
    };
    let r = Replica::open(dir.path()).unwrap();
    assert_eq!(
        r.root(&tenant(), &Scope::Full).unwrap(),
        root,
        "the tree is rebuilt from the store"
    );
    let rec = r.get(&tenant(), &groceries).unwrap().unwrap();
    assert_eq!(rec.data.as_deref(), Some(&b"milk, eggs"[..]));
    let only_notes = Scope::protocols(vec![notes()]).unwrap();
    assert_eq!(
        r.root(&tenant(), &only_notes).unwrap(),
        root,
        "every message is of this protocol"
    );
}

#[test]
fn large_payloads_go_to_the_blob_store() {
    let r = Replica::in_memory().unwrap();
    configure(&r);
    let big = vec![7u8; usize::try_from(INLINE_DATA_BYTES_MAX).unwrap() + 1];
    let receipt = r
        .put(&tenant(), &notes(), &note(), b"big", big.clone(), &alice())
        .unwrap();
    let rec = r.get(&tenant(), &receipt.record_id).unwrap().unwrap();
    assert_eq!(rec.data, Some(big));
    assert!(!rec.data_ref.unwrap().is_inline());
}

#[test]
fn the_pipeline_reports_missing_dependencies_and_invalid_messages() {
    let clock = std::sync::Arc::new(ManualClock::new(1_000));
    let source = replica(1, &clock);
    configure(&source);
    let a = source
        .put(&tenant(), &notes(), &note(), b"a", b"1".to_vec(), &alice())
        .unwrap();
    source
        .put(&tenant(), &notes(), &note(), b"a", b"2".to_vec(), &alice())
        .unwrap();
    let messages = log(&source);
    assert_eq!(messages.len(), 3, "configure, initial write, update");

    let sink = replica(2, &clock);
    // The update alone: its protocol and its record's initial write are missing.
    let update = messages[2].clone();
    let outcomes = sink
        .apply(&tenant(), vec![update.clone()], Origin::Remote(None))
        .unwrap();
    assert_eq!(
        outcomes,
        vec![ApplyOutcome::Incomplete {
            missing: vec![
                Dependency::Protocol(notes()),
                Dependency::Record(a.record_id)
            ]
        }]
    );
    // Supplying exactly those applies everything, whatever the order.
    let outcomes = sink
        .apply(
            &tenant(),
            vec![update, messages[1].clone(), messages[0].clone()],
            Origin::Remote(None),
        )
        .unwrap();
    assert_eq!(outcomes, vec![ApplyOutcome::Applied; 3]);
    assert_eq!(
        sink.root(&tenant(), &Scope::Full).unwrap(),
        source.root(&tenant(), &Scope::Full).unwrap()
    );
    // Again: duplicates; and the pruned first version is superseded.
    let outcomes = sink
        .apply(&tenant(), messages.clone(), Origin::Remote(None))
        .unwrap();
    assert_eq!(outcomes, vec![ApplyOutcome::Duplicate; 3]);

    // Invalid input gets a reason and is never stored.
    let Message::Write(w) = messages[1].0.clone() else {
        panic!()
    };
    let other_tenant = Message::Write(Write {
        tenant: TenantId::new("mallory").unwrap(),
        ..w.clone()
    });
    let undeclared = Message::Write(Write {
        path: ProtocolPath::new("todo").unwrap(),
        record_id: RecordId::from_bytes([5; 32]),
        context_id: ContextId::root(RecordId::from_bytes([5; 32])),
        ..w.clone()
    });
    let wrong_data = (
        messages[1].0.clone(),
        Some(b"not what the reference says".to_vec()),
    );
    let fresh = replica(3, &clock);
    configure(&fresh);
    let before = fresh.root(&tenant(), &Scope::Full).unwrap();
    let outcomes = fresh
        .apply(
            &tenant(),
            vec![(other_tenant, None), (undeclared, None), wrong_data],
            Origin::Remote(None),
        )
        .unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, ApplyOutcome::Invalid { .. })),
        "{outcomes:?}"
    );
    assert_eq!(fresh.root(&tenant(), &Scope::Full).unwrap(), before);
}

#[test]
fn oversized_payloads_for_a_type_are_invalid() {
    let clock = std::sync::Arc::new(ManualClock::new(1_000));
    let r = replica(1, &clock);
    configure(&r);
    let parent = r
        .put(&tenant(), &notes(), &note(), b"p", b"x".to_vec(), &alice())
        .unwrap();
    let err = r
        .write(
            &tenant(),
            WriteRequest {
                protocol: notes(),
                path: comment(),
                key: RecordKey::New,
                parent: Some(parent.record_id),
                data: Some(vec![0; 65]),
                author: alice(),
            },
        )
        .unwrap_err();
    assert!(matches!(err, sync_engine::Error::Invalid(_)), "{err}");
}

#[test]
fn two_replicas_converge_whatever_order_they_exchange_in() {
    let clock = std::sync::Arc::new(ManualClock::new(1_000));
    let a = replica(1, &clock);
    let b = replica(2, &clock);
    let config = log(&{
        let r = replica(9, &clock);
        configure(&r);
        r
    });
    a.apply(&tenant(), config.clone(), Origin::Remote(None))
        .unwrap();
    b.apply(&tenant(), config, Origin::Remote(None)).unwrap();
    // Concurrent edits while "offline": the same key on both, a key each, a delete.
    let shared_a = a
        .put(
            &tenant(),
            &notes(),
            &note(),
            b"shared",
            b"from a".to_vec(),
            &alice(),
        )
        .unwrap();
    clock.advance(1);
    b.put(
        &tenant(),
        &notes(),
        &note(),
        b"shared",
        b"from b".to_vec(),
        &alice(),
    )
    .unwrap();
    a.put(
        &tenant(),
        &notes(),
        &note(),
        b"only-a",
        b"a".to_vec(),
        &alice(),
    )
    .unwrap();
    let gone = b
        .put(
            &tenant(),
            &notes(),
            &note(),
            b"doomed",
            b"b".to_vec(),
            &alice(),
        )
        .unwrap();
    clock.advance(1);
    b.delete(&tenant(), gone.record_id, &alice()).unwrap();
    clock.advance(1);
    a.put(
        &tenant(),
        &notes(),
        &note(),
        b"shared",
        b"from a again".to_vec(),
        &alice(),
    )
    .unwrap();

    let from_a = log(&a);
    let mut from_b = log(&b);
    from_b.reverse();
    a.apply(&tenant(), from_b.clone(), Origin::Remote(None))
        .unwrap();
    b.apply(&tenant(), from_a.clone(), Origin::Remote(None))
        .unwrap();
    // A third replica gets everything in yet another order, one message at a time, twice.
    let c = replica(3, &clock);
    let mut all: Vec<_> = from_a.into_iter().chain(from_b).collect();
    all.sort_by_key(|(m, _)| m.cid());
    for item in all.iter().chain(all.iter()) {
        // Single messages may wait for their dependencies; retry until all are in.
        c.apply(&tenant(), vec![item.clone()], Origin::Remote(None))
            .unwrap();
    }
    c.apply(&tenant(), all, Origin::Remote(None)).unwrap();

    let root = a.root(&tenant(), &Scope::Full).unwrap();
    assert_eq!(b.root(&tenant(), &Scope::Full).unwrap(), root);
    assert_eq!(c.root(&tenant(), &Scope::Full).unwrap(), root);
    assert_eq!(records(&a), records(&b));
    assert_eq!(records(&a), records(&c));
    assert!(
        a.get(&tenant(), &gone.record_id).unwrap().is_none(),
        "the delete holds everywhere"
    );
    let shared = a.get(&tenant(), &shared_a.record_id).unwrap().unwrap();
    assert_eq!(shared.data.as_deref(), Some(&b"from a again"[..]));
}

#[test]
fn a_delete_is_not_undone_by_older_versions_arriving_late() {
    let clock = std::sync::Arc::new(ManualClock::new(1_000));
    let a = replica(1, &clock);
    configure(&a);
    let v1 = a
        .put(&tenant(), &notes(), &note(), b"k", b"1".to_vec(), &alice())
        .unwrap();
    clock.advance(1);
    a.put(&tenant(), &notes(), &note(), b"k", b"2".to_vec(), &alice())
        .unwrap();
    let before_delete = log(&a);
    clock.advance(1);
    a.delete(&tenant(), v1.record_id, &alice()).unwrap();
    let b = replica(2, &clock);
    b.apply(&tenant(), log(&a), Origin::Remote(None)).unwrap();
    let late = b
        .apply(&tenant(), before_delete, Origin::Remote(None))
        .unwrap();
    assert!(late.iter().all(ApplyOutcome::is_success), "{late:?}");
    assert!(b.get(&tenant(), &v1.record_id).unwrap().is_none());
    assert_eq!(
        a.root(&tenant(), &Scope::Full).unwrap(),
        b.root(&tenant(), &Scope::Full).unwrap()
    );
}

#[test]
fn prefer_local_resolves_a_conflict_with_a_new_version_and_still_converges() {
    let clock = std::sync::Arc::new(ManualClock::new(1_000));
    let a = replica(1, &clock);
    let b = replica(2, &clock);
    configure(&a);
    b.apply(&tenant(), log(&a), Origin::Remote(None)).unwrap();
    let base = a
        .put(
            &tenant(),
            &notes(),
            &note(),
            b"doc",
            b"base".to_vec(),
            &alice(),
        )
        .unwrap();
    b.apply(&tenant(), log(&a), Origin::Remote(None)).unwrap();
    // Concurrent edits on the same base; b's is later, so it wins by the merge rule.
    a.put(
        &tenant(),
        &notes(),
        &note(),
        b"doc",
        b"mine".to_vec(),
        &alice(),
    )
    .unwrap();
    clock.advance(5);
    b.put(
        &tenant(),
        &notes(),
        &note(),
        b"doc",
        b"theirs".to_vec(),
        &alice(),
    )
    .unwrap();

    a.set_conflict_policy(ConflictPolicy::PreferLocal);
    let mut events = a.events();
    a.apply(&tenant(), log(&b), Origin::Remote(None)).unwrap();
    let conflict = events.try_recv().unwrap();
    assert!(matches!(conflict, SyncEvent::Conflict { record, .. } if record == base.record_id));
    let rec = a.get(&tenant(), &base.record_id).unwrap().unwrap();
    assert_eq!(
        rec.data.as_deref(),
        Some(&b"mine"[..]),
        "prefer-local wrote the local payload again"
    );
    // b learns the resolution and ends up identical.
    b.apply(&tenant(), log(&a), Origin::Remote(None)).unwrap();
    assert_eq!(
        b.get(&tenant(), &base.record_id)
            .unwrap()
            .unwrap()
            .data
            .as_deref(),
        Some(&b"mine"[..])
    );
    assert_eq!(
        a.root(&tenant(), &Scope::Full).unwrap(),
        b.root(&tenant(), &Scope::Full).unwrap()
    );
}

#[test]
fn subscribers_see_local_and_remote_changes() {
    let clock = std::sync::Arc::new(ManualClock::new(1_000));
    let a = replica(1, &clock);
    let mut changes = a.subscribe();
    configure(&a);
    let w = a
        .put(&tenant(), &notes(), &note(), b"k", b"v".to_vec(), &alice())
        .unwrap();
    let first = changes.try_recv().unwrap();
    assert_eq!(first.origin, Origin::Local);
    let second = changes.try_recv().unwrap();
    assert_eq!(second.cid, w.cid);
    assert_eq!(second.record_id, Some(w.record_id));
    let b = replica(2, &clock);
    let mut remote = b.subscribe();
    b.apply(&tenant(), log(&a), Origin::Remote(None)).unwrap();
    assert!(matches!(
        remote.try_recv().unwrap().origin,
        Origin::Remote(_)
    ));
}

#[test]
fn cached_projection_trees_follow_writes_updates_and_deletes() {
    let clock = std::sync::Arc::new(ManualClock::new(1_000));
    let a = replica(1, &clock);
    configure(&a);
    let comments = Scope::projection(vec![ProjectionEntry {
        protocol: notes(),
        path_prefixes: vec![comment()],
        context_prefixes: vec![],
    }])
    .unwrap();
    let empty_root = a.root(&tenant(), &comments).unwrap(); // builds and caches the tree
    let parent = a
        .put(&tenant(), &notes(), &note(), b"p", b"x".to_vec(), &alice())
        .unwrap();
    let comment_write = |data: &[u8]| WriteRequest {
        protocol: notes(),
        path: comment(),
        key: RecordKey::New,
        parent: Some(parent.record_id),
        data: Some(data.to_vec()),
        author: alice(),
    };
    let c1 = a.write(&tenant(), comment_write(b"first")).unwrap();
    a.write(&tenant(), comment_write(b"second")).unwrap();
    clock.advance(1);
    a.delete(&tenant(), c1.record_id, &alice()).unwrap();
    a.put(&tenant(), &notes(), &note(), b"p", b"y".to_vec(), &alice())
        .unwrap();
    let cached = a.root(&tenant(), &comments).unwrap();
    assert_ne!(cached, empty_root);

    // A replica that builds the projection tree once, from the same messages, agrees.
    let b = replica(2, &clock);
    b.apply(&tenant(), log(&a), Origin::Remote(None)).unwrap();
    assert_eq!(b.root(&tenant(), &comments).unwrap(), cached);
}
