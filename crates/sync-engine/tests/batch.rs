//! Batch writes and compare-and-set: many writes in one atomic, durable commit with one
//! receipt each; an invalid item or a moved-on record fails the whole batch and stores
//! nothing; a batch survives kill -9 whole or not at all.

// The child's stdout is its channel to the parent: one line per acknowledged batch.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use sync_engine::{Error, Expected, RecordKey, Replica, WriteBatch, WriteOutcome, WriteRequest};
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
fn alice() -> PrincipalId {
    PrincipalId::new("did:example:alice").unwrap()
}

fn configure(r: &Replica) {
    let types = vec![TypeRule {
        path: note(),
        data_bytes_max: Some(64),
    }];
    r.configure(&tenant(), &notes(), types, vec![], &alice())
        .unwrap();
}

fn put_req(key: &str, data: &[u8]) -> WriteRequest {
    WriteRequest {
        protocol: notes(),
        path: note(),
        key: RecordKey::Natural(key.as_bytes().to_vec()),
        parent: None,
        data: Some(data.to_vec()),
        author: alice(),
    }
}

fn value(r: &Replica, key: &str) -> Option<Vec<u8>> {
    r.get_by_key(&tenant(), &notes(), key.as_bytes())
        .unwrap()
        .and_then(|rec| rec.data)
}

fn log_len(r: &Replica) -> usize {
    let mut n = 0;
    let mut after = None;
    loop {
        match r.changes_since(&tenant(), after, 1000).unwrap() {
            sync_ledger::LogRead::Page(page) => {
                n += page.entries.len();
                after = page.next.or(after);
                if !page.has_more {
                    return n;
                }
            }
            sync_ledger::LogRead::Gap(_) => panic!("gap in a fresh log"),
        }
    }
}

#[test]
fn a_batch_commits_every_item_with_one_receipt_each_in_log_order() {
    let r = Replica::in_memory().unwrap();
    configure(&r);
    r.put(
        &tenant(),
        &notes(),
        &note(),
        b"old",
        b"x".to_vec(),
        &alice(),
    )
    .unwrap();
    let old = RecordId::from_natural_key(&tenant(), &notes(), b"old");
    let mut changes = r.subscribe();
    let before = log_len(&r);

    let mut batch = WriteBatch::new();
    for i in 0..100 {
        batch.write(put_req(&format!("k{i}"), format!("v{i}").as_bytes()));
    }
    batch.delete(old, alice());
    let receipts = r.write_batch(&tenant(), batch).unwrap();

    assert_eq!(receipts.len(), 101);
    assert!(receipts.iter().all(|rc| rc.outcome == WriteOutcome::Won));
    let tokens: Vec<ProgressToken> = receipts.iter().map(|rc| rc.token.unwrap()).collect();
    assert!(
        tokens
            .windows(2)
            .all(|w| w[0].position + 1 == w[1].position),
        "receipts in log order, one commit"
    );
    assert_eq!(
        receipts[7].record_id,
        RecordId::from_natural_key(&tenant(), &notes(), b"k7")
    );
    for i in [0, 50, 99] {
        assert_eq!(
            value(&r, &format!("k{i}")),
            Some(format!("v{i}").into_bytes())
        );
    }
    assert_eq!(value(&r, "old"), None, "the delete is part of the batch");
    assert_eq!(log_len(&r), before + 101);
    // Subscribers hear every change of the batch.
    let mut heard = 0;
    while changes.try_recv().is_ok() {
        heard += 1;
    }
    assert_eq!(heard, 101);
}

#[test]
fn an_invalid_item_fails_the_whole_batch_and_stores_nothing() {
    let r = Replica::in_memory().unwrap();
    configure(&r);
    let before = log_len(&r);
    let mut batch = WriteBatch::new();
    for i in 0..10 {
        batch.write(put_req(&format!("k{i}"), b"fine"));
    }
    // Over the type's 64-byte limit.
    batch.write(put_req("big", &[7u8; 65]));
    batch.write(put_req("after", b"fine"));

    let err = r.write_batch(&tenant(), batch).unwrap_err();
    assert!(
        matches!(&err, Error::BatchItem { index: 10, source } if matches!(**source, Error::Invalid(_))),
        "{err}"
    );
    assert!(err.to_string().contains("batch item 10"), "{err}");
    assert_eq!(log_len(&r), before, "nothing of the batch is stored");
    assert_eq!(value(&r, "k0"), None);
}

#[test]
fn an_item_of_an_unconfigured_protocol_fails_the_batch() {
    let r = Replica::in_memory().unwrap();
    configure(&r);
    let mut batch = WriteBatch::new();
    batch.write(put_req("a", b"1"));
    let mut other = put_req("b", b"2");
    other.protocol = ProtocolName::new("https://example.com/unknown").unwrap();
    batch.write(other);
    let err = r.write_batch(&tenant(), batch).unwrap_err();
    assert!(
        matches!(&err, Error::BatchItem { index: 1, source } if matches!(**source, Error::Missing(_))),
        "{err}"
    );
    assert_eq!(value(&r, "a"), None);
}

#[test]
fn a_batch_refuses_the_same_record_twice() {
    let r = Replica::in_memory().unwrap();
    configure(&r);
    let mut batch = WriteBatch::new();
    batch.write(put_req("a", b"1"));
    batch.write(put_req("a", b"2"));
    let err = r.write_batch(&tenant(), batch).unwrap_err();
    assert!(matches!(err, Error::BatchItem { index: 1, .. }), "{err}");
    assert!(err.to_string().contains("appears twice"), "{err}");
    assert_eq!(value(&r, "a"), None);
}

#[test]
fn a_batch_over_the_limit_is_refused_before_anything_is_written() {
    let r = Replica::in_memory().unwrap();
    configure(&r);
    let mut batch = WriteBatch::new();
    for i in 0..=sync_engine::replica::WRITE_BATCH_LEN_MAX {
        batch.write(put_req(&format!("k{i}"), b"v"));
    }
    let err = r.write_batch(&tenant(), batch).unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    assert_eq!(value(&r, "k0"), None);
    assert!(
        r.write_batch(&tenant(), WriteBatch::new())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn write_if_succeeds_on_the_expected_version_and_fails_cleanly_when_it_moved_on() {
    let r = Replica::in_memory().unwrap();
    configure(&r);
    let id = RecordId::from_natural_key(&tenant(), &notes(), b"doc");

    let first = r
        .write_if(&tenant(), put_req("doc", b"1"), Expected::Absent)
        .unwrap();
    assert!(first.won());
    // Creating it again is refused: it exists now.
    let err = r
        .write_if(&tenant(), put_req("doc", b"again"), Expected::Absent)
        .unwrap_err();
    assert!(
        matches!(err, Error::VersionMismatch { record_id: Some(rid), expected: Expected::Absent, found: Some(f) } if rid == id && f == first.cid),
        "{err}"
    );
    assert!(err.to_string().contains("moved on"), "{err}");

    let second = r
        .write_if(
            &tenant(),
            put_req("doc", b"2"),
            Expected::Version(first.cid),
        )
        .unwrap();
    // A writer still holding the first version loses cleanly, and nothing is written.
    let before = log_len(&r);
    let err = r
        .write_if(
            &tenant(),
            put_req("doc", b"stale"),
            Expected::Version(first.cid),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::VersionMismatch { found: Some(f), .. } if f == second.cid),
        "{err}"
    );
    assert_eq!(log_len(&r), before);
    assert_eq!(value(&r, "doc"), Some(b"2".to_vec()));

    // Compare-and-delete, then the record counts as absent again.
    let err = r
        .delete_if(&tenant(), id, &alice(), Expected::Version(first.cid))
        .unwrap_err();
    assert!(matches!(err, Error::VersionMismatch { .. }), "{err}");
    let deleted = r
        .delete_if(&tenant(), id, &alice(), Expected::Version(second.cid))
        .unwrap();
    assert!(deleted.won());
    r.write_if(&tenant(), put_req("doc", b"3"), Expected::Absent)
        .unwrap();
    assert_eq!(value(&r, "doc"), Some(b"3".to_vec()));
}

#[test]
fn a_failed_expectation_inside_a_batch_stores_nothing() {
    let r = Replica::in_memory().unwrap();
    configure(&r);
    r.put(
        &tenant(),
        &notes(),
        &note(),
        b"taken",
        b"x".to_vec(),
        &alice(),
    )
    .unwrap();
    let before = log_len(&r);
    let mut batch = WriteBatch::new();
    batch.write(put_req("a", b"1"));
    batch.write_if(put_req("taken", b"mine"), Expected::Absent);
    let err = r.write_batch(&tenant(), batch).unwrap_err();
    assert!(
        matches!(&err, Error::BatchItem { index: 1, source } if matches!(**source, Error::VersionMismatch { .. })),
        "{err}"
    );
    assert_eq!(log_len(&r), before);
    assert_eq!(value(&r, "a"), None);
    assert_eq!(value(&r, "taken"), Some(b"x".to_vec()));
}

#[test]
fn an_acknowledged_batch_is_there_after_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let r = Replica::open(dir.path()).unwrap();
        configure(&r);
        let mut batch = WriteBatch::new();
        for i in 0..500 {
            batch.write(put_req(&format!("k{i}"), format!("v{i}").as_bytes()));
        }
        r.write_batch(&tenant(), batch).unwrap();
        // Dropped without close: only the commit's own sync keeps it.
    }
    let r = Replica::open(dir.path()).unwrap();
    for i in 0..500 {
        assert_eq!(
            value(&r, &format!("k{i}")),
            Some(format!("v{i}").into_bytes())
        );
    }
}

const CHILD_ENV: &str = "WEFT_BATCH_CRASH_CHILD";
const CRASH_TEST: &str = "a_batch_killed_with_kill_9_is_whole_or_absent";
/// Items in each batch the child writes.
const CRASH_BATCH_LEN: usize = 200;
/// Batches acknowledged before the parent kills the child.
const CRASH_ACKS_BEFORE_KILL: usize = 5;

#[test]
fn a_batch_killed_with_kill_9_is_whole_or_absent() {
    match std::env::var(CHILD_ENV) {
        Ok(dir) => crash_child(&dir),
        Err(_) => crash_parent(),
    }
}

fn crash_child(dir: &str) {
    let r = Replica::open(dir).unwrap();
    configure(&r);
    for b in 0.. {
        let mut batch = WriteBatch::new();
        for i in 0..CRASH_BATCH_LEN {
            batch.write(put_req(&format!("b{b}-{i}"), b"v"));
        }
        r.write_batch(&tenant(), batch).unwrap();
        println!("ack {b}");
    }
}

fn crash_parent() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([CRASH_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let line = line.rsplit(" ... ").next().unwrap_or_default().to_string();
        if let Some(b) = line.strip_prefix("ack ") {
            acked.push(b.parse::<usize>().unwrap());
            if acked.len() == CRASH_ACKS_BEFORE_KILL {
                // The child is inside its next batch (or about to start it).
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    for line in lines {
        let Ok(line) = line else { break };
        let line = line.rsplit(" ... ").next().unwrap_or_default().to_string();
        if let Some(b) = line.strip_prefix("ack ") {
            acked.push(b.parse::<usize>().unwrap());
        }
    }
    assert!(!child.wait().unwrap().success(), "the child was killed");

    let r = Replica::open(dir.path()).unwrap();
    let last = *acked.iter().max().unwrap();
    // Every acknowledged batch is whole; the next two (the one the kill may have
    // interrupted, and one more in case an ack line was lost) are whole or absent.
    for b in 0..=last + 2 {
        let present = (0..CRASH_BATCH_LEN)
            .filter(|i| value(&r, &format!("b{b}-{i}")).is_some())
            .count();
        if b <= last {
            assert_eq!(present, CRASH_BATCH_LEN, "acknowledged batch {b}");
        } else {
            assert!(
                present == 0 || present == CRASH_BATCH_LEN,
                "batch {b} is torn: {present} of {CRASH_BATCH_LEN} items"
            );
        }
    }
}
