//! Behaviour of the typed stores: apply and merge, indexes, log pages and gap answers,
//! blobs, links, dead letters, identities, notification, poisoning and corruption.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use sync_ledger::store::{Batch, Durability, KeyRange, Order, Store};
use sync_ledger::{
    Conflict, DeadLetterFilter, Error, FjallStore, Ledger, LedgerOutcome, LogQuery, LogRead,
    MemoryStore, RegisteredIdentity, layout,
};
use sync_types::*;

fn fjall_ledger() -> (tempfile::TempDir, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::builder().seed(1).open_fjall(dir.path()).unwrap();
    (dir, ledger)
}

fn page(ledger: &Ledger, t: &TenantId, q: &LogQuery) -> sync_ledger::LogPage {
    match ledger.read_log(t, q).unwrap() {
        LogRead::Page(p) => p,
        LogRead::Gap(g) => panic!("unexpected gap {g:?}"),
    }
}

fn gap(ledger: &Ledger, t: &TenantId, after: ProgressToken) -> Gap {
    match ledger
        .read_log(t, &LogQuery::after(Some(after), 10))
        .unwrap()
    {
        LogRead::Gap(g) => g,
        LogRead::Page(p) => panic!("expected a gap, got a page of {}", p.entries.len()),
    }
}

#[test]
fn apply_merges_prunes_and_reports_outcomes() {
    let (_dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let p = protocol("notes");
    assert!(apply_one(&ledger, configure(&t, &p, 1), None).is_applied());
    let (a, ad) = write(&t, &p, "r", None, 10, b"a");
    let (b, bd) = write(&t, &p, "r", Some(a.cid()), 20, b"b");
    let (c, cd) = write(&t, &p, "r", Some(b.cid()), 30, b"c");
    assert!(apply_one(&ledger, a.clone(), ad.clone()).is_applied());
    assert!(apply_one(&ledger, b.clone(), bd.clone()).is_applied());
    let LedgerOutcome::Applied { pruned, token, .. } = apply_one(&ledger, c.clone(), cd) else {
        panic!("c is newer")
    };
    assert_eq!(pruned, vec![b.cid()]);
    assert_eq!(token.position, 4);
    // b was pruned with every index entry and its log entry.
    assert!(!ledger.has_message(&t, &b.cid()).unwrap());
    assert!(ledger.get_message(&t, &b.cid()).unwrap().is_none());
    let log: Vec<Cid> = read_all(&ledger, &t, None, 100)
        .iter()
        .map(|e| e.cid())
        .collect();
    assert_eq!(log, vec![configure(&t, &p, 1).cid(), a.cid(), c.cid()]);
    // Arriving again: pruned -> superseded, retained -> duplicate.
    assert_eq!(
        apply_one(&ledger, b, bd),
        LedgerOutcome::Superseded { conflict: None }
    );
    assert_eq!(apply_one(&ledger, a.clone(), ad), LedgerOutcome::Duplicate);
    assert_eq!(
        apply_one(&ledger, configure(&t, &p, 1), None),
        LedgerOutcome::Duplicate
    );
    let head = ledger
        .record_head(&t, &record(&t, &p, "r"))
        .unwrap()
        .unwrap();
    assert_eq!(head.initial.unwrap().cid, a.cid());
    assert_eq!(head.winner.cid, c.cid());
    // The stored message comes back with its inline data.
    let stored = ledger.get_message(&t, &c.cid()).unwrap().unwrap();
    assert_eq!(stored.message, c);
    assert_eq!(stored.data.as_deref(), Some(&b"c"[..]));
    assert_eq!(stored.position, 4);
    // Positions are never reused: the head stays at 4 after only duplicates.
    assert_eq!(ledger.log_info(&t).unwrap().unwrap().head_position, 4);
}

#[test]
fn a_batch_sees_its_own_earlier_messages_and_reports_conflicts() {
    let (_dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let p = protocol("notes");
    let (a, ad) = write(&t, &p, "r", None, 10, b"a");
    let (x, xd) = write(&t, &p, "r", Some(a.cid()), 20, b"x");
    let (y, yd) = write(&t, &p, "r", Some(a.cid()), 21, b"y");
    let out = ledger
        .apply(
            &t,
            [
                (configure(&t, &p, 1), None),
                (a.clone(), ad.clone()),
                (x.clone(), xd),
                (y.clone(), yd),
                (a.clone(), ad),
            ],
            Durability::SyncData,
        )
        .unwrap();
    assert!(out[0].outcome.is_applied() && out[1].outcome.is_applied());
    assert!(out[2].outcome.is_applied());
    let LedgerOutcome::Applied {
        pruned, conflict, ..
    } = &out[3].outcome
    else {
        panic!("y wins")
    };
    // x was stored and pruned inside the same batch.
    assert_eq!(pruned, &vec![x.cid()]);
    assert_eq!(
        conflict,
        &Some(Conflict {
            winner: y.cid(),
            losers: vec![x.cid()]
        })
    );
    assert_eq!(out[4].outcome, LedgerOutcome::Duplicate);
    assert!(!ledger.has_message(&t, &x.cid()).unwrap());
    let log: Vec<u64> = read_all(&ledger, &t, None, 100)
        .iter()
        .map(|e| e.position())
        .collect();
    assert_eq!(log, vec![1, 2, 4], "x's position 3 is a hole");
    let cids: Vec<Cid> = ledger.cids(&t).unwrap().map(Result::unwrap).collect();
    let mut expected = vec![configure(&t, &p, 1).cid(), a.cid(), y.cid()];
    expected.sort();
    assert_eq!(cids, expected);
}

#[test]
fn deletes_win_over_older_writes_and_are_indexed_with_their_record() {
    let (_dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let p = protocol("notes");
    apply_one(&ledger, configure(&t, &p, 1), None);
    let (a, ad) = write(&t, &p, "r", None, 10, b"a");
    apply_one(&ledger, a.clone(), ad);
    let d = delete(&t, &p, "r", Some(a.cid()), 20);
    assert!(apply_one(&ledger, d.clone(), None).is_applied());
    let (old, oldd) = write(&t, &p, "r", Some(a.cid()), 15, b"old");
    assert!(matches!(
        apply_one(&ledger, old, oldd),
        LedgerOutcome::Superseded { .. }
    ));
    let head = ledger
        .record_head(&t, &record(&t, &p, "r"))
        .unwrap()
        .unwrap();
    assert!(head.is_deleted());
    let path = ProtocolPath::new("note").unwrap();
    let mut by_path = ledger.path_cids(&t, &p, &path).unwrap();
    by_path.sort();
    let mut expected = vec![a.cid(), d.cid()];
    expected.sort();
    assert_eq!(
        by_path, expected,
        "the delete is indexed under its record's path"
    );
}

#[test]
fn scoped_indexes_find_by_protocol_path_and_context() {
    let (_dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let (p, q) = (protocol("notes"), protocol("other"));
    let (n1, d1) = write(&t, &p, "n1", None, 10, b"1");
    let (n2, d2) = write(&t, &p, "n2", None, 11, b"2");
    let c1 = comment(&t, &p, "n1", "c1", 12);
    let c2 = comment(&t, &p, "n2", "c2", 13);
    let (o1, od) = write(&t, &q, "n1", None, 14, b"o");
    ledger
        .apply(
            &t,
            [
                (configure(&t, &p, 1), None),
                (configure(&t, &q, 1), None),
                (n1.clone(), d1),
                (n2.clone(), d2),
                (c1.clone(), None),
                (c2.clone(), None),
                (o1.clone(), od),
            ],
            Durability::Buffered,
        )
        .unwrap();
    let sorted = |mut v: Vec<Cid>| {
        v.sort();
        v
    };
    // Per-protocol cids come in log order.
    let p_cids: Vec<Cid> = ledger
        .protocol_cids(&t, &p)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        p_cids,
        vec![
            configure(&t, &p, 1).cid(),
            n1.cid(),
            n2.cid(),
            c1.cid(),
            c2.cid()
        ]
    );
    let note = ProtocolPath::new("note").unwrap();
    let comment_path = ProtocolPath::new("note/comment").unwrap();
    assert_eq!(
        sorted(ledger.path_cids(&t, &p, &note).unwrap()),
        sorted(vec![n1.cid(), n2.cid(), c1.cid(), c2.cid()]),
        "a path prefix covers the types below it"
    );
    assert_eq!(
        sorted(ledger.path_cids(&t, &p, &comment_path).unwrap()),
        sorted(vec![c1.cid(), c2.cid()])
    );
    // "not" is not a segment prefix of "note".
    assert!(
        ledger
            .path_cids(&t, &p, &ProtocolPath::new("not").unwrap())
            .unwrap()
            .is_empty()
    );
    let ctx = ContextId::root(record(&t, &p, "n1"));
    assert_eq!(
        sorted(ledger.context_cids(&t, &p, &ctx).unwrap()),
        sorted(vec![n1.cid(), c1.cid()])
    );
    assert_eq!(
        ledger
            .context_cids(&t, &q, &ContextId::root(record(&t, &q, "n1")))
            .unwrap(),
        vec![o1.cid()]
    );
}

/// A write of `key` at `path` in `context` (a chain ending at `key`'s record).
fn nested(
    t: &TenantId,
    p: &ProtocolName,
    path: &str,
    context: &ContextId,
    prev: Option<Cid>,
    ts: u64,
) -> Message {
    Message::Write(Write {
        tenant: t.clone(),
        record_id: context.record(),
        parent_id: context.chain().iter().rev().nth(1).copied(),
        protocol: p.clone(),
        path: ProtocolPath::new(path).unwrap(),
        context_id: context.clone(),
        prev,
        timestamp: at(ts),
        author: author(),
        data: None,
    })
}

#[test]
fn scoped_indexes_follow_updates_and_deletes_three_levels_deep() {
    let (_dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let p = protocol("notes");
    let root = ContextId::root(record(&t, &p, "n1"));
    let child = root.child(record(&t, &p, "c1")).unwrap();
    let leaf = child.child(record(&t, &p, "r1")).unwrap();
    let other = ContextId::root(record(&t, &p, "n2"));
    let n1 = nested(&t, &p, "note", &root, None, 10);
    let n2 = nested(&t, &p, "note", &other, None, 11);
    let c1 = nested(&t, &p, "note/comment", &child, None, 12);
    let r1 = nested(&t, &p, "note/comment/reply", &leaf, None, 13);
    let r1b = nested(&t, &p, "note/comment/reply", &leaf, Some(r1.cid()), 14);
    let r1c = nested(&t, &p, "note/comment/reply", &leaf, Some(r1b.cid()), 15);
    let del_c1 = delete(&t, &p, "c1", Some(c1.cid()), 16);
    let mut batch = vec![(configure(&t, &p, 1), None)];
    batch.extend([&n1, &n2, &c1, &r1, &r1b].map(|m| (m.clone(), None)));
    ledger.apply(&t, batch, Durability::Buffered).unwrap();
    // r1b is pruned when r1c wins (the initial write r1 stays); the delete of c1 keeps
    // c1's initial write and adds itself.
    for m in [r1c.clone(), del_c1.clone()] {
        assert!(apply_one(&ledger, m, None).is_applied());
    }
    let sorted = |mut v: Vec<Cid>| {
        v.sort();
        v
    };
    let ctx = |c: &ContextId| sorted(ledger.context_cids(&t, &p, c).unwrap());
    let path = |s: &str| {
        sorted(
            ledger
                .path_cids(&t, &p, &ProtocolPath::new(s).unwrap())
                .unwrap(),
        )
    };
    assert_eq!(
        ctx(&root),
        sorted(vec![n1.cid(), c1.cid(), del_c1.cid(), r1.cid(), r1c.cid()])
    );
    assert_eq!(
        ctx(&child),
        sorted(vec![c1.cid(), del_c1.cid(), r1.cid(), r1c.cid()])
    );
    assert_eq!(ctx(&leaf), sorted(vec![r1.cid(), r1c.cid()]));
    assert_eq!(ctx(&other), vec![n2.cid()]);
    assert_eq!(
        path("note/comment"),
        sorted(vec![c1.cid(), del_c1.cid(), r1.cid(), r1c.cid()])
    );
    assert_eq!(
        path("note/comment/reply"),
        sorted(vec![r1.cid(), r1c.cid()])
    );
    // A context of another protocol, or one whose record is stored under a different
    // chain, names nothing.
    assert!(
        ledger
            .context_cids(&t, &protocol("other"), &root)
            .unwrap()
            .is_empty()
    );
    let wrong = other.child(record(&t, &p, "c1")).unwrap();
    assert!(ctx(&wrong).is_empty());
}

#[test]
fn configures_are_all_retained_and_the_newest_is_the_definition() {
    let (_dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let p = protocol("notes");
    assert!(!ledger.has_protocol(&t, &p).unwrap());
    assert!(ledger.protocol_definition(&t, &p).unwrap().is_none());
    let (c1, c3, c2) = (
        configure(&t, &p, 1),
        configure(&t, &p, 3),
        configure(&t, &p, 2),
    );
    for c in [&c1, &c3, &c2] {
        assert!(apply_one(&ledger, c.clone(), None).is_applied());
    }
    assert!(ledger.has_protocol(&t, &p).unwrap());
    assert!(!ledger.has_protocol(&t, &protocol("notes2")).unwrap());
    let (cid, def) = ledger.protocol_definition(&t, &p).unwrap().unwrap();
    assert_eq!(cid, c3.cid());
    assert_eq!(def.timestamp, at(3));
    assert_eq!(
        ledger.configures(&t, &p).unwrap(),
        vec![c1.cid(), c2.cid(), c3.cid()]
    );
    // Another tenant sees nothing.
    assert!(!ledger.has_protocol(&tenant("bob"), &p).unwrap());
    assert!(!ledger.has_message(&tenant("bob"), &c1.cid()).unwrap());
}

#[test]
fn apply_refuses_foreign_tenants_and_mismatched_data_without_writing() {
    let (_dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let p = protocol("notes");
    let (w, _) = write(&t, &p, "r", None, 10, b"right");
    let r = ledger.apply(&tenant("bob"), [(w.clone(), None)], Durability::SyncData);
    assert!(matches!(r, Err(Error::WrongTenant { .. })));
    let r = ledger.apply(
        &t,
        [
            (configure(&t, &p, 1), None),
            (w.clone(), Some(b"wrong".to_vec())),
        ],
        Durability::SyncData,
    );
    assert!(matches!(r, Err(Error::DataMismatch { .. })));
    assert!(
        ledger.log_info(&t).unwrap().is_none(),
        "nothing was written"
    );
    assert!(!ledger.has_protocol(&t, &p).unwrap());
    assert!(!ledger.is_poisoned(), "a refusal does not poison");
    // Without inline data (a blob-backed or not-yet-arrived payload) it is accepted.
    assert!(apply_one(&ledger, w, None).is_applied());
}

#[test]
fn one_apply_takes_at_most_apply_batch_messages_max() {
    let ledger = Ledger::open(MemoryStore::new()).unwrap();
    let t = tenant("alice");
    let p = protocol("notes");
    let batch = |n: usize| {
        std::iter::once((configure(&t, &p, 1), None))
            .chain((1..n).map(|i| write(&t, &p, &format!("r{i}"), None, 10, b"x")))
            .collect::<Vec<_>>()
    };
    let r = ledger.apply(
        &t,
        batch(sync_ledger::APPLY_BATCH_MESSAGES_MAX + 1),
        Durability::Buffered,
    );
    assert!(
        matches!(
            r,
            Err(Error::LimitExceeded { len, max, .. })
                if len == max + 1 && max == sync_ledger::APPLY_BATCH_MESSAGES_MAX
        ),
        "{r:?}"
    );
    assert!(
        ledger.log_info(&t).unwrap().is_none(),
        "nothing was written"
    );
    // At the limit, every message is applied in the one call.
    let out = ledger
        .apply(
            &t,
            batch(sync_ledger::APPLY_BATCH_MESSAGES_MAX),
            Durability::Buffered,
        )
        .unwrap();
    assert_eq!(out.len(), sync_ledger::APPLY_BATCH_MESSAGES_MAX);
    assert!(out.iter().all(|a| a.outcome.is_applied()));
}

#[test]
fn log_pages_respect_limits_filters_and_cursors() {
    let (_dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let (p, q) = (protocol("notes"), protocol("other"));
    let mut items = vec![(configure(&t, &p, 1), None), (configure(&t, &q, 1), None)];
    for i in 0..25u64 {
        let proto = if i % 3 == 0 { &q } else { &p };
        items.push(write(&t, proto, &format!("r{i}"), None, 10 + i, b"x"));
    }
    ledger
        .apply(&t, items.clone(), Durability::SyncData)
        .unwrap();

    let first = page(&ledger, &t, &LogQuery::after(None, 10));
    assert_eq!(first.entries.len(), 10);
    assert!(first.has_more);
    assert_eq!(first.next, Some(first.entries[9].token));
    assert_eq!(first.head.unwrap().position, 27);
    let positions: Vec<u64> = first.entries.iter().map(|e| e.position()).collect();
    assert_eq!(positions, (1..=10).collect::<Vec<_>>());
    assert_eq!(first.entries[2].message, items[2].0);
    assert_eq!(first.entries[2].data, items[2].1);

    let rest = page(&ledger, &t, &LogQuery::after(first.next, 100));
    assert_eq!(rest.entries.len(), 17);
    assert!(!rest.has_more);
    // Exactly at the end: an empty page whose next cursor stays put.
    let end = page(&ledger, &t, &LogQuery::after(rest.next, 100));
    assert!(end.entries.is_empty() && !end.has_more);
    assert_eq!(end.next, rest.next);

    // The protocol filter returns only that protocol, in order, paged.
    let only_q = read_all(&ledger, &t, Some(&q), 3);
    assert_eq!(only_q.len(), 1 + 9);
    assert!(only_q.iter().all(|e| e.protocol() == &q));
    assert!(only_q.windows(2).all(|w| w[0].position() < w[1].position()));
    let all = read_all(&ledger, &t, None, 4);
    assert_eq!(all.len(), 27);
    assert_eq!(ledger.count_log_after(&t, 10, None).unwrap(), 17);
    assert_eq!(ledger.count_log_after(&t, 0, Some(&q)).unwrap(), 10);
    // A filtered cursor continues an unfiltered read and vice versa: tokens are positions.
    let mixed = page(
        &ledger,
        &t,
        &LogQuery::after(Some(only_q[3].token), 100).protocol(p.clone()),
    );
    assert!(
        mixed
            .entries
            .iter()
            .all(|e| e.position() > only_q[3].position() && e.protocol() == &p)
    );
    // Unknown tenant: an empty page.
    let none = page(&ledger, &tenant("nobody"), &LogQuery::after(None, 10));
    assert!(none.entries.is_empty() && none.head.is_none());
}

#[test]
fn stale_cursors_get_gap_answers_naming_the_latest_token() {
    let (_dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let p = protocol("notes");
    let mut items = vec![(configure(&t, &p, 1), None)];
    for i in 0..9u64 {
        items.push(write(&t, &p, &format!("r{i}"), None, 10 + i, b"x"));
    }
    ledger.apply(&t, items, Durability::SyncData).unwrap();
    let entries = read_all(&ledger, &t, None, 100);
    let head = *entries.last().map(|e| &e.token).unwrap();
    let mid = entries[4].token;
    assert_eq!(ledger.log_head(&t).unwrap(), Some(head));

    let g = gap(
        &ledger,
        &t,
        ProgressToken {
            stream_id: StreamId::from_bytes([9; 16]),
            ..mid
        },
    );
    assert_eq!(g.reason, GapReason::StreamMismatch);
    assert_eq!(g.latest_available, Some(head));
    assert_eq!(g.oldest_available, Some(entries[0].token));
    let g = gap(
        &ledger,
        &t,
        ProgressToken {
            epoch: mid.epoch + 1,
            ..mid
        },
    );
    assert_eq!(g.reason, GapReason::EpochMismatch);
    let g = gap(
        &ledger,
        &t,
        ProgressToken {
            position: head.position + 1,
            ..mid
        },
    );
    assert_eq!(g.reason, GapReason::TooNew);
    let g = gap(
        &ledger,
        &t,
        ProgressToken {
            cid: Cid::from_bytes([7; 32]),
            ..mid
        },
    );
    assert_eq!(g.reason, GapReason::MessageMismatch);
    assert_eq!(g.requested.cid, Cid::from_bytes([7; 32]));

    // Raise the floor: cursors below it are too old; at or above it they are served.
    assert_eq!(ledger.compact_log(&t, 4, Durability::SyncData).unwrap(), 4);
    let g = gap(&ledger, &t, entries[1].token);
    assert_eq!(g.reason, GapReason::TooOld);
    assert_eq!(g.latest_available, Some(head));
    assert_eq!(
        g.oldest_available,
        Some(entries[4].token),
        "oldest is the first entry above the floor"
    );
    let served = page(&ledger, &t, &LogQuery::after(Some(entries[3].token), 100));
    assert_eq!(served.entries.len(), 6);
    // Reading from the start begins above the floor; the floor never moves down.
    assert_eq!(
        page(&ledger, &t, &LogQuery::after(None, 100)).entries[0].position(),
        5
    );
    assert_eq!(ledger.compact_log(&t, 2, Durability::SyncData).unwrap(), 4);
    // A cursor into a tenant without a log is from another log.
    let g = gap(&ledger, &tenant("nobody"), mid);
    assert_eq!(g.reason, GapReason::StreamMismatch);
    assert_eq!(g.latest_available, None);
}

#[test]
fn stream_ids_are_persisted_and_come_from_the_injected_source() {
    let dir = tempfile::tempdir().unwrap();
    let t = tenant("alice");
    let p = protocol("notes");
    let first = {
        let ledger = Ledger::builder().seed(42).open_fjall(dir.path()).unwrap();
        apply_one(&ledger, configure(&t, &p, 1), None);
        let info = ledger.log_info(&t).unwrap().unwrap();
        ledger.close().unwrap();
        info
    };
    // Same seed, new store: same id (replayable); reopened store: the persisted id.
    let other = Ledger::builder().seed(42).open_in_memory().unwrap();
    apply_one(&other, configure(&t, &p, 1), None);
    assert_eq!(
        other.log_info(&t).unwrap().unwrap().stream_id,
        first.stream_id
    );
    let reopened = Ledger::builder().seed(99).open_fjall(dir.path()).unwrap();
    let info = reopened.log_info(&t).unwrap().unwrap();
    assert_eq!(info.stream_id, first.stream_id);
    assert_eq!(info.epoch, 1);
    // Different tenants get different logs.
    apply_one(&reopened, configure(&tenant("bob"), &p, 1), None);
    assert_ne!(
        reopened
            .log_info(&tenant("bob"))
            .unwrap()
            .unwrap()
            .stream_id,
        first.stream_id
    );
    assert_eq!(
        reopened.tenants().unwrap(),
        vec![tenant("alice"), tenant("bob")]
    );
    // OS randomness gives distinct ids.
    let a = Ledger::in_memory().unwrap();
    let b = Ledger::in_memory().unwrap();
    apply_one(&a, configure(&t, &p, 1), None);
    apply_one(&b, configure(&t, &p, 1), None);
    assert_ne!(
        a.log_info(&t).unwrap().unwrap().stream_id,
        b.log_info(&t).unwrap().unwrap().stream_id
    );
}

#[test]
fn blobs_verify_read_by_range_and_resume() {
    let (_dir, ledger) = fjall_ledger();
    let blobs = ledger.blobs();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let cid = Cid::of_data(&data);
    assert!(!blobs.has(&cid).unwrap());
    assert!(matches!(blobs.read(&cid), Err(Error::BlobNotFound(_))));

    // A mismatch stores nothing, not even chunks.
    let wrong = Cid::of_data(b"something else");
    let r = blobs.put(&wrong, &data[..], Durability::SyncData, 5);
    assert!(matches!(r, Err(Error::BlobMismatch { expected, .. }) if expected == wrong));
    assert!(!blobs.has(&wrong).unwrap());
    assert_eq!(blobs.upload_offset(&wrong).unwrap(), None);
    assert_eq!(
        ledger
            .store()
            .scan(layout::BLOB_CHUNKS, KeyRange::all(), Order::Ascending)
            .unwrap()
            .count(),
        0
    );

    // An upload interrupted after a checkpoint resumes at the durable offset.
    {
        let mut up = blobs.upload(&cid, Some(data.len() as u64), 5).unwrap();
        assert_eq!(up.offset(), 0);
        assert!(matches!(
            blobs.upload(&cid, None, 5),
            Err(Error::UploadInProgress(_))
        ));
        up.write(&data[..70_000]).unwrap();
        assert_eq!(up.checkpoint(Durability::SyncData).unwrap(), 70_000);
        up.write(&data[70_000..100_000]).unwrap();
        // Dropped without a checkpoint: bytes after 70 000 may be lost.
    }
    assert!(
        !blobs.has(&cid).unwrap(),
        "a partial upload is not readable"
    );
    let resumed_at = blobs.upload_offset(&cid).unwrap().unwrap();
    assert_eq!(resumed_at, 70_000);
    assert_eq!(blobs.partial_uploads().unwrap()[0].1.updated_ms, 5);
    let mut up = blobs.upload(&cid, None, 6).unwrap();
    assert_eq!(up.offset(), 70_000);
    up.write(&data[70_000..]).unwrap();
    assert!(
        matches!(up.write(b"x"), Err(Error::BlobTooLarge { .. })),
        "the announced size is kept"
    );
    assert_eq!(up.finish(Durability::SyncData).unwrap(), data.len() as u64);
    assert!(blobs.has(&cid).unwrap());
    assert_eq!(blobs.size(&cid).unwrap(), Some(data.len() as u64));
    assert_eq!(blobs.upload_offset(&cid).unwrap(), None);
    assert_eq!(blobs.read(&cid).unwrap(), data);
    for (offset, len) in [
        (0u64, 1u64),
        (65_535, 2),
        (65_536, 65_536),
        (199_999, 1),
        (10, 0),
        (100, 150_000),
    ] {
        let got = blobs.read_range(&cid, offset, len).unwrap();
        assert_eq!(
            got,
            data[usize::try_from(offset).unwrap()..usize::try_from(offset + len).unwrap()],
            "range {offset}+{len}"
        );
    }
    assert!(matches!(
        blobs.read_range(&cid, 199_999, 2),
        Err(Error::RangeOutOfBounds { .. })
    ));
    // Uploading a stored blob again has nothing to send.
    let again = blobs.upload(&cid, None, 7).unwrap();
    assert!(again.is_complete());
    assert_eq!(again.offset(), data.len() as u64);
    drop(again);
    // A resumed upload whose tail does not match still stores nothing.
    let other: Vec<u8> = vec![1; 100_000];
    let other_cid = Cid::of_data(&other);
    let mut up = blobs.upload(&other_cid, None, 8).unwrap();
    up.write(&other[..80_000]).unwrap();
    up.checkpoint(Durability::Buffered).unwrap();
    drop(up);
    let mut up = blobs.upload(&other_cid, None, 9).unwrap();
    up.write(&[2; 20_000]).unwrap();
    assert!(matches!(
        up.finish(Durability::SyncData),
        Err(Error::BlobMismatch { .. })
    ));
    assert!(!blobs.has(&other_cid).unwrap());
    assert_eq!(blobs.upload_offset(&other_cid).unwrap(), None);
    // A wanted blob (an upload with an announced size) stays wanted when a transfer
    // fails verification: its chunks go, its upload state goes back to offset 0, in
    // one commit (a power loss right after keeps both or neither).
    blobs.want(&other_cid, 100_000, 10).unwrap();
    let mut up = blobs.upload(&other_cid, Some(100_000), 11).unwrap();
    up.write(&[3; 100_000]).unwrap();
    up.checkpoint(Durability::Buffered).unwrap();
    let chunks_of = |cid: &Cid| {
        ledger
            .store()
            .scan_prefix(layout::BLOB_CHUNKS, cid.as_bytes(), Order::Ascending)
            .unwrap()
            .count()
    };
    assert_eq!(chunks_of(&other_cid), 2);
    assert!(matches!(
        up.finish(Durability::SyncData),
        Err(Error::BlobMismatch { .. })
    ));
    assert_eq!(blobs.upload_offset(&other_cid).unwrap(), Some(0));
    assert_eq!(
        blobs.partial_uploads().unwrap(),
        vec![(
            other_cid,
            sync_ledger::UploadState {
                received: 0,
                size: Some(100_000),
                updated_ms: 11
            }
        )]
    );
    assert_eq!(
        chunks_of(&other_cid),
        0,
        "the failed transfer's chunks are gone"
    );
    blobs.abort_upload(&other_cid).unwrap();
    // Empty blobs work; delete removes.
    assert_eq!(
        blobs
            .put(&Cid::of_data(b""), &b""[..], Durability::Buffered, 1)
            .unwrap(),
        0
    );
    assert_eq!(blobs.read(&Cid::of_data(b"")).unwrap(), Vec::<u8>::new());
    assert!(blobs.delete(&cid, Durability::SyncData).unwrap());
    assert!(!blobs.has(&cid).unwrap());
}

/// A blob written as a stream of unknown hash is stored without copying its chunks: the
/// chunk partition holds each byte once, it reads back by range and whole, it supersedes
/// a partial download of the same blob, and delete removes every chunk.
#[test]
fn streamed_blobs_are_written_once() {
    let (_dir, ledger) = fjall_ledger();
    let blobs = ledger.blobs();
    let data: Vec<u8> = (0..1_300_000u32).map(|i| (i % 241) as u8).collect();
    let cid = Cid::of_data(&data);
    let chunk_bytes = |ledger: &Ledger| -> u64 {
        ledger
            .store()
            .scan(layout::BLOB_CHUNKS, KeyRange::all(), Order::Ascending)
            .unwrap()
            .map(|kv| kv.unwrap().1.len() as u64)
            .sum()
    };
    // Half of the same blob was downloaded under its own id before.
    blobs.want(&cid, data.len() as u64, 1).unwrap();
    let mut up = blobs.upload(&cid, Some(data.len() as u64), 1).unwrap();
    up.write(&data[..600_000]).unwrap();
    up.checkpoint(Durability::Buffered).unwrap();
    drop(up);

    let (got, size) = blobs
        .put_stream(&data[..], Durability::SyncData, 2)
        .unwrap();
    assert_eq!((got, size), (cid, data.len() as u64));
    assert!(blobs.has(&cid).unwrap());
    assert!(blobs.partial_uploads().unwrap().is_empty());
    assert_eq!(chunk_bytes(&ledger), data.len() as u64, "each byte once");
    assert_eq!(blobs.read(&cid).unwrap(), data);
    assert_eq!(
        blobs.read_range(&cid, 65_000, 140_000).unwrap(),
        data[65_000..205_000]
    );
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut blobs.reader(&cid, 1_000).unwrap(), &mut read).unwrap();
    assert_eq!(read, data[1_000..]);
    assert!(blobs.upload(&cid, None, 3).unwrap().is_complete());

    // The same content again stores nothing new.
    assert_eq!(
        blobs
            .put_stream(&data[..], Durability::SyncData, 4)
            .unwrap(),
        (cid, data.len() as u64)
    );
    assert_eq!(chunk_bytes(&ledger), data.len() as u64);

    assert!(blobs.delete(&cid, Durability::SyncData).unwrap());
    assert!(!blobs.has(&cid).unwrap());
    assert_eq!(chunk_bytes(&ledger), 0);
}

/// A reader that gives `ok` bytes and then fails, like a file on a disk that went away.
struct FailingReader {
    ok: usize,
}

impl std::io::Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(std::io::Error::other("the source went away"));
        }
        let n = buf.len().min(self.ok);
        buf[..n].fill(7);
        self.ok -= n;
        Ok(n)
    }
}

/// The ledger draws no randomness of its own (ARCHITECTURE): a staged upload's id comes
/// from the injected id source, so two ledgers with one seed doing the same work stage
/// under the same ids, and a simulation replays them; a failed stream leaves its partial
/// upload (what it committed, every 1 MiB) listed for removal.
#[test]
fn put_stream_stages_under_ids_from_the_ledger_id_source() {
    let staged = || {
        let ledger = Ledger::builder().seed(9).open(MemoryStore::new()).unwrap();
        let blobs = ledger.blobs();
        for _ in 0..2 {
            let err = blobs
                .put_stream(FailingReader { ok: 1_200_000 }, Durability::Buffered, 1)
                .unwrap_err();
            assert!(err.to_string().contains("the source went away"), "{err}");
        }
        let mut ids: Vec<Cid> = blobs
            .partial_uploads()
            .unwrap()
            .into_iter()
            .map(|(cid, _)| cid)
            .collect();
        ids.sort();
        assert_eq!(ids.len(), 2, "two failed streams, two staged uploads");
        for id in &ids {
            blobs.abort_upload(id).unwrap();
        }
        assert!(blobs.partial_uploads().unwrap().is_empty());
        ids
    };
    assert_eq!(staged(), staged());
}

/// Found by the simulation (seed 3000006 of `edits_over_a_fast_clocks_versions_survive_
/// cold_restarts`): a seeded id source draws the same ids again after a reopen, and a
/// stored blob keeps its chunks under the id it was staged under; a new stream staged
/// under that id again would delete the stored blob's chunks. Ids in use are skipped.
#[test]
fn put_stream_after_a_reopen_with_the_same_seed_keeps_earlier_blobs() {
    let store = MemoryStore::new();
    let first: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let second: Vec<u8> = (0..1_300_000u32).map(|i| (i % 241) as u8).collect();
    let (a, _) = Ledger::builder()
        .seed(9)
        .open(store.clone())
        .unwrap()
        .blobs()
        .put_stream(&first[..], Durability::SyncData, 1)
        .unwrap();
    let ledger = Ledger::builder().seed(9).open(store.clone()).unwrap();
    let (b, _) = ledger
        .blobs()
        .put_stream(&second[..], Durability::SyncData, 2)
        .unwrap();
    assert_eq!(ledger.blobs().read(&a).unwrap(), first);
    assert_eq!(ledger.blobs().read(&b).unwrap(), second);
}

fn link(t: &TenantId, endpoint: &str) -> LinkState {
    LinkState::new(
        t.clone(),
        Endpoint::new(endpoint).unwrap(),
        Scope::Full,
        Authorization::Owner,
    )
}

#[test]
fn links_are_created_once_saved_listed_and_deleted() {
    let (dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let l1 = link(&t, "http://a.example");
    let (got, created) = ledger
        .links()
        .get_or_create(l1.clone(), Durability::SyncData)
        .unwrap();
    assert!(created);
    assert_eq!(got, l1);
    let mut changed = l1.clone();
    changed.needs_reconcile = true;
    let (got, created) = ledger
        .links()
        .get_or_create(changed, Durability::SyncData)
        .unwrap();
    assert!(!created, "an existing link is returned, not replaced");
    assert!(!got.needs_reconcile);

    let token = ProgressToken {
        stream_id: StreamId::from_bytes([1; 16]),
        epoch: 1,
        position: 9,
        cid: Cid::from_bytes([2; 32]),
    };
    let mut cp = DirectionCheckpoint::default();
    cp.commit(token);
    ledger
        .links()
        .save_pull_checkpoint(&l1.key, cp, 100, Durability::SyncData)
        .unwrap();
    ledger
        .links()
        .save_push_checkpoint(&l1.key, cp, 101, Durability::SyncData)
        .unwrap();
    ledger
        .links()
        .set_needs_reconcile(&l1.key, true, Durability::SyncData)
        .unwrap();
    let status = ledger
        .links()
        .set_status(&l1.key, LinkStatus::Live, 102, Durability::SyncData)
        .unwrap();
    assert_eq!(status.unwrap().status, LinkStatus::Live);
    let refused = ledger
        .links()
        .set_status(&l1.key, LinkStatus::Initializing, 103, Durability::SyncData)
        .unwrap();
    assert!(refused.is_err(), "the state machine is enforced");
    ledger
        .links()
        .save(&link(&t, "http://b.example"), Durability::SyncData)
        .unwrap();
    ledger
        .links()
        .save(
            &link(&tenant("bob"), "http://a.example"),
            Durability::SyncData,
        )
        .unwrap();
    drop(ledger);

    let ledger = Ledger::open_fjall(dir.path()).unwrap();
    let stored = ledger.links().get(&l1.key).unwrap().unwrap();
    assert_eq!(stored.pull.contiguous_applied, Some(token));
    assert_eq!(stored.push.contiguous_applied, Some(token));
    assert!(stored.needs_reconcile);
    assert_eq!(stored.status, LinkStatus::Live);
    assert_eq!(stored.last_activity_ms, Some(102));
    assert_eq!(stored.clone().on_load().status, LinkStatus::Opening);
    assert_eq!(ledger.links().list(&t).unwrap().len(), 2);
    assert_eq!(ledger.links().list_all().unwrap().len(), 3);
    assert!(
        ledger
            .links()
            .delete(&l1.key, Durability::SyncData)
            .unwrap()
    );
    assert!(
        !ledger
            .links()
            .delete(&l1.key, Durability::SyncData)
            .unwrap()
    );
    assert!(matches!(
        ledger
            .links()
            .save_pull_checkpoint(&l1.key, cp, 1, Durability::SyncData),
        Err(Error::LinkNotFound(_))
    ));
    // Prune keeps the identity keys given and deletes the rest of the tenant's links.
    let keep = link(&t, "http://b.example").key.identity_key();
    assert!(
        ledger
            .links()
            .prune(&t, &[keep], Durability::SyncData)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ledger
            .links()
            .prune(&t, &[], Durability::SyncData)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(ledger.links().list_all().unwrap().len(), 1);
}

fn letter(
    t: &TenantId,
    cid: u8,
    endpoint: &str,
    category: DeadLetterCategory,
    at_ms: u64,
) -> DeadLetter {
    DeadLetter {
        cid: Cid::from_bytes([cid; 32]),
        tenant: t.clone(),
        endpoint: Endpoint::new(endpoint).unwrap(),
        protocol: Some(protocol("notes")),
        category,
        error_code: Some("400".into()),
        error: "refused".into(),
        attempts: 0,
        failed_at_ms: at_ms,
    }
}

#[test]
fn dead_letters_count_attempts_filter_and_clear() {
    let (_dir, ledger) = fjall_ledger();
    let dl = ledger.dead_letters();
    let t = tenant("alice");
    use DeadLetterCategory::*;
    assert_eq!(
        dl.record(
            letter(&t, 1, "http://a.x", PushPermanent, 10),
            Durability::SyncData
        )
        .unwrap()
        .attempts,
        1
    );
    let again = dl
        .record(
            letter(&t, 1, "http://a.x", PushExhausted, 20),
            Durability::SyncData,
        )
        .unwrap();
    assert_eq!(again.attempts, 2);
    assert_eq!(
        again.category, PushExhausted,
        "a later failure replaces the entry"
    );
    dl.record(
        letter(&t, 1, "http://b.x", Closure, 30),
        Durability::SyncData,
    )
    .unwrap();
    dl.record(
        letter(&t, 2, "http://a.x", PullProcessing, 40),
        Durability::SyncData,
    )
    .unwrap();
    dl.record(
        letter(&tenant("bob"), 3, "http://a.x", PullProcessing, 50),
        Durability::SyncData,
    )
    .unwrap();
    let long = DeadLetter {
        error: "e".repeat(5000),
        ..letter(&t, 4, "http://c.x", Closure, 5)
    };
    assert_eq!(
        dl.record(long, Durability::SyncData).unwrap().error.len(),
        sync_ledger::DEAD_LETTER_ERROR_BYTES_MAX
    );

    let all = dl.list(&DeadLetterFilter::default()).unwrap();
    assert_eq!(all.len(), 5);
    assert!(
        all.windows(2)
            .all(|w| w[0].failed_at_ms >= w[1].failed_at_ms),
        "newest first"
    );
    let alice = DeadLetterFilter {
        tenant: Some(t.clone()),
        ..Default::default()
    };
    assert_eq!(dl.count(&alice).unwrap(), 4);
    let closure = DeadLetterFilter {
        categories: vec![Closure],
        ..alice.clone()
    };
    assert_eq!(dl.count(&closure).unwrap(), 2);
    let other_protocol = DeadLetterFilter {
        protocol: Some(protocol("x")),
        ..Default::default()
    };
    assert_eq!(dl.count(&other_protocol).unwrap(), 0);

    // Root convergence for the link (alice, a.x) clears everything but closure.
    let converged = DeadLetterFilter {
        tenant: Some(t.clone()),
        endpoint: Some(Endpoint::new("http://a.x").unwrap()),
        categories: DeadLetterCategory::ALL
            .into_iter()
            .filter(|c| c.cleared_by_convergence())
            .collect(),
        protocol: None,
    };
    assert_eq!(
        dl.clear_matching(&converged, Durability::SyncData).unwrap(),
        2
    );
    assert_eq!(dl.count(&alice).unwrap(), 2);
    assert!(
        dl.clear(
            &t,
            &Cid::from_bytes([1; 32]),
            &Endpoint::new("http://b.x").unwrap(),
            Durability::SyncData
        )
        .unwrap()
    );
    assert!(
        !dl.clear(
            &t,
            &Cid::from_bytes([1; 32]),
            &Endpoint::new("http://b.x").unwrap(),
            Durability::SyncData
        )
        .unwrap()
    );
    assert!(
        dl.get(
            &tenant("bob"),
            &Cid::from_bytes([3; 32]),
            &Endpoint::new("http://a.x").unwrap()
        )
        .unwrap()
        .is_some()
    );
}

#[test]
fn identities_register_update_and_unregister_with_their_links() {
    let (_dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let id = RegisteredIdentity {
        tenant: t.clone(),
        endpoints: vec![Endpoint::new("http://a.x").unwrap()],
        scope: Scope::Full,
        authorization: Authorization::Owner,
        token: Some("tok".into()),
        updated_ms: 1,
    };
    let ids = ledger.identities();
    assert!(matches!(
        ids.update(&id, Durability::SyncData),
        Err(Error::IdentityNotFound(_))
    ));
    ids.register(&id, Durability::SyncData).unwrap();
    assert!(matches!(
        ids.register(&id, Durability::SyncData),
        Err(Error::IdentityExists(_))
    ));
    let updated = RegisteredIdentity {
        updated_ms: 2,
        token: None,
        ..id.clone()
    };
    assert_eq!(ids.update(&updated, Durability::SyncData).unwrap(), id);
    assert_eq!(ids.get(&t).unwrap(), Some(updated.clone()));
    assert_eq!(ids.list().unwrap(), vec![updated.clone()]);
    ledger
        .links()
        .save(&link(&t, "http://a.x"), Durability::SyncData)
        .unwrap();
    ledger
        .links()
        .save(&link(&tenant("bob"), "http://a.x"), Durability::SyncData)
        .unwrap();
    assert_eq!(ids.unregister(&t, Durability::SyncData).unwrap(), updated);
    assert!(ids.get(&t).unwrap().is_none());
    assert!(
        ledger.links().list(&t).unwrap().is_empty(),
        "its links went with it"
    );
    assert_eq!(ledger.links().list_all().unwrap().len(), 1);
}

#[test]
fn waiters_and_listeners_learn_of_appends() {
    let ledger = Arc::new(Ledger::builder().seed(3).open_in_memory().unwrap());
    let t = tenant("alice");
    let p = protocol("notes");
    let heard = Arc::new(AtomicU64::new(0));
    let h = heard.clone();
    let id = ledger.add_listener(move |tenant, head| {
        assert_eq!(tenant.as_str(), "alice");
        h.store(head, Ordering::SeqCst);
    });
    let g0 = ledger.generation();
    let waiter = {
        let ledger = ledger.clone();
        std::thread::spawn(move || ledger.wait_for_change(g0, Duration::from_secs(60)))
    };
    apply_one(&ledger, configure(&t, &p, 1), None);
    assert!(waiter.join().unwrap() > g0, "the waiter woke on the commit");
    assert_eq!(heard.load(Ordering::SeqCst), 1);
    // A duplicate appends nothing and notifies nobody.
    let g1 = ledger.generation();
    apply_one(&ledger, configure(&t, &p, 1), None);
    assert_eq!(ledger.generation(), g1);
    assert_eq!(ledger.wait_for_change(g1, Duration::from_millis(1)), g1);
    assert!(ledger.remove_listener(id));
    assert!(!ledger.remove_listener(id));
    let (w, d) = write(&t, &p, "r", None, 5, b"x");
    apply_one(&ledger, w, d);
    assert_eq!(
        heard.load(Ordering::SeqCst),
        1,
        "a removed listener is not called"
    );
}

#[test]
fn a_failed_sync_poisons_the_ledger() {
    let store = MemoryStore::new();
    let ledger = Ledger::builder().seed(1).open(store.clone()).unwrap();
    let t = tenant("alice");
    let p = protocol("notes");
    apply_one(&ledger, configure(&t, &p, 1), None);
    store.fail_syncs(true);
    let (w, d) = write(&t, &p, "r", None, 5, b"x");
    let r = ledger.apply(&t, [(w.clone(), d.clone())], Durability::SyncData);
    assert!(matches!(r, Err(Error::Backend(_))));
    assert!(ledger.is_poisoned());
    store.fail_syncs(false);
    // Every write is now refused, even ones that would succeed, with a clear error.
    let r = ledger.apply(&t, [(w.clone(), d.clone())], Durability::Buffered);
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Poisoned));
    assert!(e.to_string().contains("poisoned"));
    assert!(matches!(
        ledger
            .links()
            .save(&link(&t, "http://a.x"), Durability::Buffered),
        Err(Error::Poisoned)
    ));
    assert!(matches!(
        ledger
            .blobs()
            .put(&Cid::of_data(b"x"), &b"x"[..], Durability::Buffered, 1),
        Err(Error::Poisoned)
    ));
    assert!(matches!(
        ledger.persist(Durability::SyncData),
        Err(Error::Poisoned)
    ));
    // Reads still work, and the failed commit is not visible.
    assert!(ledger.has_protocol(&t, &p).unwrap());
    assert!(!ledger.has_message(&t, &w.cid()).unwrap());
    drop(ledger);
    // Reopening clears the poison.
    let ledger = Ledger::open(store).unwrap();
    assert!(apply_one(&ledger, w, d).is_applied());
}

#[test]
fn corrupt_entries_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let t = tenant("alice");
    let p = protocol("notes");
    let (w, d) = write(&t, &p, "r", None, 5, b"x");
    {
        let ledger = Ledger::builder().seed(1).open_fjall(dir.path()).unwrap();
        ledger
            .apply(
                &t,
                [(configure(&t, &p, 1), None), (w.clone(), d)],
                Durability::SyncData,
            )
            .unwrap();
        ledger
            .links()
            .save(&link(&t, "http://a.x"), Durability::SyncData)
            .unwrap();
    }
    {
        // Damage values behind the ledger's back.
        let store = FjallStore::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        // Alice is the only tenant, so every entry of these partitions is hers.
        for (partition, value) in [
            (layout::LOG, vec![1, 0xff, 0xff]),
            (layout::RECORDS, vec![1, 0xff, 0xff]),
            (layout::LINKS, vec![1, 0xff, 0xff]),
            (layout::LOG_META, vec![9, 9]),
        ] {
            let keys: Vec<Vec<u8>> = store
                .scan(partition, KeyRange::all(), Order::Ascending)
                .unwrap()
                .map(|kv| kv.unwrap().0)
                .collect();
            assert!(!keys.is_empty());
            for k in keys {
                batch.put(partition, k, value.clone());
            }
        }
        store.commit(batch, Durability::SyncData).unwrap();
    }
    let ledger = Ledger::open_fjall(dir.path()).unwrap();
    assert!(matches!(
        ledger.get_message(&t, &w.cid()),
        Err(Error::CorruptValue {
            partition: "log",
            ..
        })
    ));
    assert!(matches!(
        ledger.record_head(&t, &record(&t, &p, "r")),
        Err(Error::CorruptValue {
            partition: "records",
            ..
        })
    ));
    assert!(matches!(
        ledger.read_log(&t, &LogQuery::after(None, 10)),
        Err(Error::CorruptValue {
            partition: "log_meta",
            ..
        })
    ));
    assert!(matches!(
        ledger.links().list(&t),
        Err(Error::CorruptValue {
            partition: "links",
            ..
        })
    ));
    let (w2, d2) = write(&t, &p, "r", Some(w.cid()), 6, b"y");
    assert!(matches!(
        ledger.apply(&t, [(w2, d2)], Durability::SyncData),
        Err(Error::CorruptValue { .. })
    ));
    assert!(
        !ledger.is_poisoned(),
        "a corrupt read is not a failed write"
    );
    // A store from a future layout is refused.
    ledger
        .store()
        .put(
            layout::META,
            b"layout",
            codec::encode(&(layout::LAYOUT_VERSION + 1)),
            Durability::SyncData,
        )
        .unwrap();
    drop(ledger);
    let refused = Ledger::open_fjall(dir.path());
    assert!(
        matches!(
            refused,
            Err(Error::UnsupportedLayout { found, supported })
                if found == layout::LAYOUT_VERSION + 1 && supported == layout::LAYOUT_VERSION
        ),
        "{refused:?}"
    );
}

#[test]
fn commits_are_atomic_under_power_loss_in_memory() {
    let store = MemoryStore::new();
    let t = tenant("alice");
    let p = protocol("notes");
    {
        let ledger = Ledger::builder().seed(1).open(store.clone()).unwrap();
        apply_one(&ledger, configure(&t, &p, 1), None);
        let (w, d) = write(&t, &p, "r1", None, 5, b"x");
        ledger.apply(&t, [(w, d)], Durability::Buffered).unwrap();
        let (w, d) = write(&t, &p, "r2", None, 6, b"x");
        ledger.apply(&t, [(w, d)], Durability::Buffered).unwrap();
    }
    store.simulate_power_loss(1);
    let ledger = Ledger::builder().seed(1).open(store).unwrap();
    let log = read_all(&ledger, &t, None, 10);
    assert_eq!(
        log.len(),
        2,
        "the synced configure and the first buffered commit"
    );
    assert_eq!(ledger.log_info(&t).unwrap().unwrap().head_position, 2);
    assert!(
        ledger
            .record_head(&t, &record(&t, &p, "r2"))
            .unwrap()
            .is_none()
    );
    // The next append continues at position 3 of the same stream.
    let (w, d) = write(&t, &p, "r3", None, 7, b"x");
    let LedgerOutcome::Applied { token, .. } = apply_one(&ledger, w, d) else {
        panic!()
    };
    assert_eq!(token.position, 3);
    assert_eq!(token.stream_id, log[0].token.stream_id);
    let _ = Batch::new();
}

/// A record's protocol is fixed by its first version: a later version naming another
/// protocol (same record id) is refused and changes nothing, whether it comes in a later
/// batch or in the same batch as the record's first version.
#[test]
fn a_version_naming_another_protocol_than_its_record_is_refused() {
    let (_dir, ledger) = fjall_ledger();
    let t = tenant("alice");
    let (notes, evil) = (protocol("notes"), protocol("evil"));
    apply_one(&ledger, configure(&t, &notes, 1), None);
    apply_one(&ledger, configure(&t, &evil, 2), None);
    let (first, data) = write(&t, &notes, "r", None, 10, b"mine");
    assert!(apply_one(&ledger, first.clone(), data).is_applied());
    let id = record(&t, &notes, "r");
    let retarget = |m: Message| match m {
        Message::Write(w) => Message::Write(Write {
            record_id: id,
            context_id: ContextId::root(id),
            ..w
        }),
        Message::Delete(d) => Message::Delete(Delete { record_id: id, ..d }),
        other => other,
    };
    let head_before = ledger.log_head(&t).unwrap();
    let (over, over_data) = write(&t, &evil, "x", Some(first.cid()), 20, b"theirs");
    let attacks = [
        (retarget(over), over_data),
        (
            retarget(delete(&t, &evil, "x", Some(first.cid()), 30)),
            None,
        ),
    ];
    for (attack, data) in attacks {
        let LedgerOutcome::Refused { reason } = apply_one(&ledger, attack.clone(), data) else {
            panic!("a version naming evil must be refused")
        };
        assert!(reason.contains("belongs to protocol"), "{reason}");
        assert!(!ledger.has_message(&t, &attack.cid()).unwrap());
    }
    assert_eq!(ledger.log_head(&t).unwrap(), head_before);
    assert_eq!(
        ledger.record_info(&t, &id).unwrap().unwrap().protocol,
        notes
    );

    // Two first versions of one new record in one batch: the first fixes the protocol.
    let fresh = record(&t, &notes, "fresh");
    let (a, ad) = write(&t, &notes, "fresh", None, 40, b"a");
    let (b, bd) = write(&t, &evil, "y", None, 41, b"b");
    let b = match b {
        Message::Write(w) => Message::Write(Write {
            record_id: fresh,
            context_id: ContextId::root(fresh),
            ..w
        }),
        other => other,
    };
    let out = ledger
        .apply(&t, [(a, ad), (b, bd)], Durability::SyncData)
        .unwrap();
    assert!(out[0].outcome.is_applied());
    assert!(matches!(out[1].outcome, LedgerOutcome::Refused { .. }));
    assert_eq!(
        ledger.record_info(&t, &fresh).unwrap().unwrap().protocol,
        notes
    );
}

/// A layout-2 store (record rows without their protocol) is upgraded on open: every row
/// gets the protocol of its winning version, also when an earlier upgrade stopped part
/// way (rows before its mark already rewritten), and the store then works as usual.
#[test]
fn a_layout_2_store_is_upgraded_on_open_and_an_interrupted_upgrade_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let t = tenant("alice");
    let (notes, photos) = (protocol("notes"), protocol("photos"));
    let count = 1500;
    {
        let ledger = Ledger::builder().seed(1).open_fjall(dir.path()).unwrap();
        apply_one(&ledger, configure(&t, &notes, 1), None);
        apply_one(&ledger, configure(&t, &photos, 2), None);
        let batch: Vec<_> = (0..count)
            .map(|i| {
                write(
                    &t,
                    if i % 3 == 0 { &photos } else { &notes },
                    &format!("k{i}"),
                    None,
                    10,
                    b"v",
                )
            })
            .collect();
        for chunk in batch.chunks(500) {
            ledger
                .apply(&t, chunk.to_vec(), Durability::SyncData)
                .unwrap();
        }
        // Write every row back in layout 2's shape, except the first 700, which stay
        // upgraded behind the mark of an upgrade cut short.
        let store = ledger.store();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = store
            .scan(layout::RECORDS, KeyRange::all(), Order::Ascending)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), count);
        let mut b = Batch::new();
        for (key, value) in &rows[700..] {
            let row: layout::RecordRow = codec::decode(value, usize::MAX).unwrap();
            b.put(
                layout::RECORDS,
                key.clone(),
                codec::encode(&(row.head, row.path, row.context)),
            );
        }
        b.put(
            layout::META,
            b"upgrade_records_after".to_vec(),
            rows[699].0.clone(),
        );
        b.put(layout::META, b"layout".to_vec(), codec::encode(&2u32));
        store.commit(b, Durability::SyncData).unwrap();
        ledger.close().unwrap();
    }
    let ledger = Ledger::builder().seed(1).open_fjall(dir.path()).unwrap();
    for i in 0..count {
        let p = if i % 3 == 0 { &photos } else { &notes };
        let info = ledger
            .record_info(&t, &record(&t, p, &format!("k{i}")))
            .unwrap()
            .unwrap();
        assert_eq!(&info.protocol, p, "record {i}");
    }
    let version: u32 = codec::decode(
        &ledger
            .store()
            .get(layout::META, b"layout")
            .unwrap()
            .unwrap(),
        usize::MAX,
    )
    .unwrap();
    assert_eq!(version, layout::LAYOUT_VERSION);
    assert!(
        ledger
            .store()
            .get(layout::META, b"upgrade_records_after")
            .unwrap()
            .is_none()
    );
    // And it is a working layout-3 store: the protocol rule holds on upgraded rows.
    let first = ledger
        .record_head(&t, &record(&t, &notes, "k1"))
        .unwrap()
        .unwrap()
        .winner
        .cid;
    let (over, data) = write(&t, &photos, "k1-as-photo", Some(first), 20, b"x");
    let over = match over {
        Message::Write(w) => {
            let id = record(&t, &notes, "k1");
            Message::Write(Write {
                record_id: id,
                context_id: ContextId::root(id),
                ..w
            })
        }
        other => other,
    };
    assert!(matches!(
        apply_one(&ledger, over, data),
        LedgerOutcome::Refused { .. }
    ));
}

/// The HLC high-water mark covers every stored message (also pruned ones and ones of
/// other tenants), is committed with them, survives a reopen, and is derived once for a
/// store written before it existed; the node id is stored once.
#[test]
fn the_hlc_high_water_mark_and_node_id_are_durable() {
    let store = MemoryStore::new();
    let ledger = Ledger::open(store.clone()).unwrap();
    assert_eq!(ledger.hlc_high_water(), Hlc::ZERO);
    let (t, u) = (tenant("alice"), tenant("bob"));
    let p = protocol("notes");
    assert!(apply_one(&ledger, configure(&t, &p, 5), None).is_applied());
    let (a, ad) = write(&t, &p, "r", None, 10, b"a");
    let (b, bd) = write(&t, &p, "r", Some(a.cid()), 40, b"b");
    let (c, cd) = write(&t, &p, "r", Some(a.cid()), 30, b"c");
    ledger
        .apply(&t, vec![(a, ad), (b, bd)], Durability::SyncData)
        .unwrap();
    assert_eq!(ledger.hlc_high_water(), at(40));
    // A superseded version stores nothing and moves nothing.
    assert!(!apply_one(&ledger, c, cd).is_applied());
    assert_eq!(ledger.hlc_high_water(), at(40));
    assert!(apply_one(&ledger, configure(&u, &p, 50), None).is_applied());
    assert_eq!(ledger.hlc_high_water(), at(50));
    assert_eq!(ledger.init_node_id(NodeId(7)).unwrap(), NodeId(7));
    assert_eq!(
        ledger.init_node_id(NodeId(8)).unwrap(),
        NodeId(7),
        "created once"
    );
    drop(ledger);

    // Power loss after a buffered commit loses the message and its mark together.
    let ledger = Ledger::open(store.clone()).unwrap();
    assert_eq!(ledger.hlc_high_water(), at(50));
    assert_eq!(ledger.node_id().unwrap(), Some(NodeId(7)));
    let (d, dd) = write(&t, &p, "s", None, 90, b"d");
    ledger
        .apply(&t, vec![(d, dd)], Durability::Buffered)
        .unwrap();
    assert_eq!(ledger.hlc_high_water(), at(90));
    drop(ledger);
    store.simulate_power_loss(0);
    let ledger = Ledger::open(store.clone()).unwrap();
    assert_eq!(ledger.hlc_high_water(), at(50));
    drop(ledger);

    // An older store: no mark stored. It is derived from records and configures.
    store
        .delete(layout::META, b"hlc", Durability::SyncData)
        .unwrap();
    let ledger = Ledger::open(store.clone()).unwrap();
    assert_eq!(ledger.hlc_high_water(), at(50));
    assert!(store.get(layout::META, b"hlc").unwrap().is_some());
    // A copied store is given its own id.
    ledger.set_node_id(NodeId(9)).unwrap();
    assert_eq!(ledger.init_node_id(NodeId(8)).unwrap(), NodeId(9));
}
