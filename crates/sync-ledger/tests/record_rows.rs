//! Record rows read ahead of an apply (`Ledger::read_records`,
//! `Ledger::apply_hashed_with_rows`): a fjall ledger handed rows gives the same outcomes
//! and stores the same log and record rows as an in-memory ledger applying the same
//! batches without them, whether the rows are current, stale (a commit since) or read by
//! another ledger on the same store.

mod common;

use common::*;
use sync_ledger::{Durability, HashedMessage, Ledger, LedgerOutcome, RecordInfo, RecordRows};
use sync_types::{Message, RecordId, TenantId};

type Batch = Vec<(Message, Option<Vec<u8>>)>;

/// What the two ledgers must agree on after each batch.
fn state(ledger: &Ledger, t: &TenantId, records: &[RecordId]) -> String {
    let log: Vec<_> = read_all(ledger, t, None, 1000)
        .into_iter()
        .map(|e| (e.position(), e.cid()))
        .collect();
    let rows: Vec<Option<RecordInfo>> = records
        .iter()
        .map(|r| ledger.record_info(t, r).unwrap())
        .collect();
    format!("{log:?} {rows:?}")
}

fn outcome_kind(o: &LedgerOutcome) -> String {
    match o {
        LedgerOutcome::Applied {
            token,
            pruned,
            conflict,
        } => format!(
            "applied at {} pruning {pruned:?} {conflict:?}",
            token.position
        ),
        other => format!("{other:?}"),
    }
}

fn apply_with(ledger: &Ledger, t: &TenantId, batch: &Batch, rows: RecordRows) -> Vec<String> {
    let hashed: Vec<HashedMessage> = batch
        .iter()
        .map(|(m, d)| HashedMessage::new(m.clone(), d.clone()))
        .collect();
    let refs: Vec<&HashedMessage> = hashed.iter().collect();
    ledger
        .apply_hashed_with_rows(t, &refs, Durability::SyncData, rows)
        .unwrap()
        .iter()
        .map(|a| outcome_kind(&a.outcome))
        .collect()
}

fn apply_plain(ledger: &Ledger, t: &TenantId, batch: &Batch) -> Vec<String> {
    ledger
        .apply(t, batch.clone(), Durability::SyncData)
        .unwrap()
        .iter()
        .map(|a| outcome_kind(&a.outcome))
        .collect()
}

/// Batches that touch records `r0`..`r2` of protocol `p` again and again: two versions
/// of one record in one batch, a delete then a rewrite, and a second half concurrent
/// with the first.
fn batches(t: &TenantId) -> Vec<Batch> {
    let p = protocol("p");
    let (a1, d1) = write(t, &p, "r0", None, 10, b"a1");
    let (a2, d2) = write(t, &p, "r0", Some(a1.cid()), 11, b"a2");
    let del = delete(t, &p, "r0", Some(a2.cid()), 12);
    let (a3, d3) = write(t, &p, "r0", Some(del.cid()), 13, b"a3");
    let (b1, e1) = write(t, &p, "r1", None, 10, b"b1");
    // Concurrent with each other (same prev) and with the first half's versions.
    let (b2, e2) = write(t, &p, "r1", Some(b1.cid()), 20, b"b2");
    let (b3, e3) = write(t, &p, "r1", Some(b1.cid()), 19, b"b3");
    let (b4, e4) = write(t, &p, "r1", Some(b1.cid()), 21, b"b4");
    let (c1, f1) = write(t, &p, "r2", None, 5, b"c1");
    let (c2, f2) = write(t, &p, "r2", Some(c1.cid()), 6, b"c2");
    vec![
        vec![(configure(t, &p, 1), None)],
        // The same record written twice, then deleted and rewritten, in one batch.
        vec![
            (a1.clone(), d1.clone()),
            (a2.clone(), d2.clone()),
            (del.clone(), None),
            (a3.clone(), d3.clone()),
        ],
        // A first half, and a second half concurrent with it (and a repeat).
        vec![
            (b1.clone(), e1.clone()),
            (b2.clone(), e2.clone()),
            (c1.clone(), f1.clone()),
            (b3.clone(), e3.clone()),
            (b4.clone(), e4.clone()),
            (b2.clone(), e2.clone()),
        ],
        // Versions of records the previous batches changed, and repeats of pruned ones.
        vec![
            (c2.clone(), f2.clone()),
            (a2.clone(), d2.clone()),
            (b3.clone(), e3.clone()),
            (a3.clone(), d3.clone()),
        ],
    ]
}

fn records(t: &TenantId) -> Vec<RecordId> {
    let p = protocol("p");
    ["r0", "r1", "r2"]
        .iter()
        .map(|k| record(t, &p, k))
        .collect()
}

#[test]
fn current_rows_give_what_a_plain_apply_gives() {
    let t = tenant("did:example:rows");
    let dir = tempfile::tempdir().unwrap();
    let fjall = Ledger::open_fjall(dir.path()).unwrap();
    let memory = Ledger::in_memory().unwrap();
    for batch in batches(&t) {
        let rows = fjall.read_records(&t, &records(&t)).unwrap();
        assert_eq!(
            apply_with(&fjall, &t, &batch, rows),
            apply_plain(&memory, &t, &batch)
        );
        assert_eq!(
            state(&fjall, &t, &records(&t)),
            state(&memory, &t, &records(&t))
        );
    }
}

#[test]
fn stale_rows_are_read_again() {
    let t = tenant("did:example:rows");
    let dir = tempfile::tempdir().unwrap();
    let fjall = Ledger::open_fjall(dir.path()).unwrap();
    let memory = Ledger::in_memory().unwrap();
    // Each batch gets the rows read before the previous batch's commit: every record
    // they show is older than what is stored.
    let mut stale = fjall.read_records(&t, &records(&t)).unwrap();
    for batch in batches(&t) {
        let next = fjall.read_records(&t, &records(&t)).unwrap();
        assert_eq!(
            apply_with(&fjall, &t, &batch, stale),
            apply_plain(&memory, &t, &batch)
        );
        assert_eq!(
            state(&fjall, &t, &records(&t)),
            state(&memory, &t, &records(&t))
        );
        stale = next;
    }
}

#[test]
fn rows_of_another_ledger_or_tenant_are_not_used() {
    let t = tenant("did:example:rows");
    let other = tenant("did:example:other");
    for another_ledger in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let memory = Ledger::in_memory().unwrap();
        let mut fjall = Ledger::open_fjall(dir.path()).unwrap();
        let mut stale = None;
        for batch in batches(&t) {
            let next = fjall.read_records(&t, &records(&t)).unwrap();
            let rows = if another_ledger {
                // Read by the ledger before this one, before it committed the previous
                // batch: this one has made as many commits (none) as that one had then.
                stale.take().unwrap_or_else(|| next.clone())
            } else {
                // Another tenant's rows for the same ids, read just now: all absent.
                let theirs = fjall.read_records(&other, &records(&t)).unwrap();
                assert_eq!(theirs.tenant(), &other);
                theirs
            };
            assert_eq!(
                apply_with(&fjall, &t, &batch, rows),
                apply_plain(&memory, &t, &batch)
            );
            assert_eq!(
                state(&fjall, &t, &records(&t)),
                state(&memory, &t, &records(&t))
            );
            stale = Some(next);
            drop(fjall);
            fjall = Ledger::open_fjall(dir.path()).unwrap();
        }
    }
}

#[test]
fn rows_say_which_versions_are_stored() {
    let t = tenant("did:example:rows");
    let ledger = Ledger::in_memory().unwrap();
    let all = batches(&t);
    for batch in &all {
        apply_plain(&ledger, &t, batch);
    }
    let rows = ledger.read_records(&t, &records(&t)).unwrap();
    let mut stored = 0;
    for batch in &all {
        for (m, _) in batch {
            let expected = match m {
                Message::Configure(_) => None,
                _ => Some(ledger.has_message(&t, &m.cid()).unwrap()),
            };
            assert_eq!(rows.holds(&m.cid(), m), expected, "{m:?}");
            stored += usize::from(expected == Some(true));
        }
    }
    // Initial writes and winners are stored, pruned versions are not.
    assert!(stored >= 3);
    assert!(
        all.iter()
            .flatten()
            .any(|(m, _)| rows.holds(&m.cid(), m) == Some(false))
    );
    // A record that was not read says nothing.
    let unread = write(&t, &protocol("p"), "unread", None, 1, b"u").0;
    assert_eq!(rows.holds(&unread.cid(), &unread), None);
}
