//! Damage done to a ledger's store behind its back, and every call a ledger offers, for
//! the test that no damage makes the ledger panic (`tests/damage.rs`) and for the fuzz
//! target `ledger_damage`, which includes this file and `common/mod.rs` by path.
//!
//! Damage is read from bytes, four at a time, so a fuzzer can steer it: which
//! partition, which of its keys, what to do to the value (replace it, flip a byte, cut
//! it short, delete the key, or put another key's value there). Moving values between
//! keys and flipping single bytes give values that still decode but contradict the
//! rest of the store (a record row naming a version that is not stored, a log head
//! behind its entries, a position that is not there), which is where a ledger that
//! trusts its own store would index out of bounds or overflow.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use sync_ledger::layout::PARTITIONS;
use sync_ledger::store::{Batch, KeyRange, Order};
use sync_ledger::{
    DeadLetterFilter, Durability, Ledger, LogQuery, LogRead, MemoryStore, RegisteredIdentity, Store,
};
use sync_types::*;

use super::common::{comment, configure, delete, protocol, record, tenant, write};

/// What the populated store holds, so the exercise can ask for it by name.
pub struct Fixture {
    pub tenant: TenantId,
    pub protocol: ProtocolName,
    pub cids: Vec<Cid>,
    pub records: Vec<RecordId>,
    pub blob: Cid,
    pub partial: Cid,
    pub link: LinkKey,
}

/// A blob of two and a half chunks, so ranged reads cross chunk boundaries.
fn blob_bytes() -> Vec<u8> {
    (0..160 * 1024u32).map(|i| (i % 251) as u8).collect()
}

/// A dead letter of the fixture's one failed message.
fn letter(t: &TenantId, p: Option<&ProtocolName>, category: DeadLetterCategory) -> DeadLetter {
    DeadLetter {
        cid: Cid::from_bytes([7; 32]),
        tenant: t.clone(),
        endpoint: Endpoint::new("http://node.example").unwrap(),
        protocol: p.cloned(),
        category,
        error_code: Some("400".into()),
        error: "refused".into(),
        attempts: 0,
        failed_at_ms: 5,
    }
}

/// A store with something in every partition: messages of two records and a child,
/// an update and a delete (so something was pruned), a record naming a blob, a link, a
/// dead letter, an identity, a complete blob, a partial upload and a blob streamed in
/// (an alias).
pub fn populated() -> (MemoryStore, Fixture) {
    let store = MemoryStore::new();
    let ledger = Ledger::builder().seed(1).open(store.clone()).unwrap();
    let t = tenant("alice");
    let p = protocol("notes");
    let (w1, d1) = write(&t, &p, "a", None, 10, b"first");
    let (w2, d2) = write(&t, &p, "b", None, 11, b"second");
    let c = comment(&t, &p, "a", "c", 12);
    let (u1, du1) = write(&t, &p, "a", Some(w1.cid()), 13, b"first, edited");
    let del = delete(&t, &p, "b", Some(w2.cid()), 14);
    let bytes = blob_bytes();
    let blob = Cid::of_data(&bytes);
    let (named, _) = write(&t, &p, "d", None, 15, b"replaced by the blob");
    let Message::Write(mut named) = named else {
        unreachable!("write builds a write")
    };
    named.data = Some(DataRef {
        data_cid: blob,
        size: bytes.len() as u64,
    });
    let messages = vec![
        (configure(&t, &p, 1), None),
        (w1, d1),
        (w2, d2),
        (c, None),
        (u1, du1),
        (del, None),
        (Message::Write(named), None),
    ];
    let cids = messages.iter().map(|(m, _)| m.cid()).collect();
    ledger.apply(&t, messages, Durability::SyncData).unwrap();
    let link = LinkState::new(
        t.clone(),
        Endpoint::new("http://node.example").unwrap(),
        Scope::Full,
        Authorization::Owner,
    );
    let key = link.key.clone();
    ledger.links().save(&link, Durability::SyncData).unwrap();
    ledger
        .dead_letters()
        .record(
            letter(&t, Some(&p), DeadLetterCategory::PushPermanent),
            Durability::SyncData,
        )
        .unwrap();
    ledger
        .identities()
        .register(
            &RegisteredIdentity {
                tenant: t.clone(),
                endpoints: vec![Endpoint::new("http://node.example").unwrap()],
                scope: Scope::Full,
                authorization: Authorization::Owner,
                token: None,
                updated_ms: 5,
            },
            Durability::SyncData,
        )
        .unwrap();
    ledger
        .blobs()
        .put(&blob, &bytes[..], Durability::SyncData, 5)
        .unwrap();
    let partial_bytes: Vec<u8> = bytes.iter().rev().copied().collect();
    let partial = Cid::of_data(&partial_bytes);
    let mut upload = ledger
        .blobs()
        .upload(&partial, Some(partial_bytes.len() as u64), 5)
        .unwrap();
    upload.write(&partial_bytes[..70 * 1024]).unwrap();
    upload.checkpoint(Durability::SyncData).unwrap();
    drop(upload);
    ledger
        .blobs()
        .put_stream(&b"streamed, of unknown hash"[..], Durability::SyncData, 5)
        .unwrap();
    let records = ["a", "b", "c", "d"].map(|k| record(&t, &p, k)).to_vec();
    (
        store,
        Fixture {
            tenant: t,
            protocol: p,
            cids,
            records,
            blob,
            partial,
            link: key,
        },
    )
}

/// Damages `store` as `data` says, four bytes an edit: partition, key, what, argument.
/// Returns how many edits changed something.
pub fn damage(store: &MemoryStore, data: &[u8]) -> usize {
    let mut done = 0;
    for edit in data.chunks_exact(4) {
        let partition = PARTITIONS[usize::from(edit[0]) % PARTITIONS.len()];
        let entries: Vec<(Vec<u8>, Vec<u8>)> = store
            .scan(partition, KeyRange::all(), Order::Ascending)
            .unwrap()
            .map(|kv| kv.unwrap())
            .collect();
        if entries.is_empty() {
            continue;
        }
        let (key, value) = &entries[usize::from(edit[1]) % entries.len()];
        let arg = edit[3];
        let mut batch = Batch::new();
        match edit[2] % 6 {
            // Flip one byte (most often still a value that decodes).
            0 | 1 if !value.is_empty() => {
                let mut v = value.clone();
                let at = usize::from(arg) % v.len();
                v[at] ^= 1 << (edit[2] % 8);
                batch.put(partition, key.clone(), v);
            }
            // Cut it short.
            2 => batch.put(
                partition,
                key.clone(),
                value[..usize::from(arg) % (value.len() + 1)].to_vec(),
            ),
            // Lose the key.
            3 => batch.delete(partition, key.clone()),
            // Another key's value (decodes, and contradicts the rest).
            4 => {
                let other = &entries[usize::from(arg) % entries.len()].1;
                batch.put(partition, key.clone(), other.clone());
            }
            // A value of the right shape and another number in it: every byte set.
            _ => batch.put(partition, key.clone(), vec![arg; value.len()]),
        }
        store.commit(batch, Durability::SyncData).unwrap();
        done += 1;
    }
    done
}

/// Every call of the ledger, on the damaged store: each may fail, none may panic or
/// hang. Returns the calls that failed, by name, in order (`open` alone when the
/// ledger does not open), so a caller can see what the exercise did.
pub fn exercise(store: &MemoryStore, fx: &Fixture) -> Vec<&'static str> {
    let Ok(ledger) = Ledger::builder().seed(2).open(store.clone()) else {
        return vec!["open"];
    };
    let mut failed = Vec::new();
    let mut count = |name: &'static str, ok: bool| {
        if !ok {
            failed.push(name);
        }
    };
    let (t, p) = (&fx.tenant, &fx.protocol);
    for round in 0..2 {
        count("tenants", ledger.tenants().is_ok());
        count("log_info", ledger.log_info(t).is_ok());
        count("log_head", ledger.log_head(t).is_ok());
        let mut cursor = None;
        for _ in 0..8 {
            match ledger.read_log(t, &LogQuery::after(cursor, 2)) {
                Ok(LogRead::Page(page)) => {
                    cursor = page.next;
                    if !page.has_more {
                        break;
                    }
                }
                Ok(LogRead::Gap { .. }) => break,
                Err(_) => {
                    count("read_log", false);
                    break;
                }
            }
        }
        count(
            "read_log (one protocol)",
            ledger
                .read_log(t, &LogQuery::after(None, 100).protocol(p.clone()))
                .is_ok(),
        );
        count(
            "count_log_after",
            ledger.count_log_after(t, 0, None).is_ok(),
        );
        count(
            "count_log_after",
            ledger.count_log_after(t, 1, Some(p)).is_ok(),
        );
        for cid in &fx.cids {
            count("has_message", ledger.has_message(t, cid).is_ok());
            count("get_message", ledger.get_message(t, cid).is_ok());
        }
        for id in &fx.records {
            count("record_head", ledger.record_head(t, id).is_ok());
            count("record_info", ledger.record_info(t, id).is_ok());
            count(
                "context_cids",
                ledger.context_cids(t, p, &ContextId::root(*id)).is_ok(),
            );
        }
        count("has_protocol", ledger.has_protocol(t, p).is_ok());
        count(
            "protocol_definition",
            ledger.protocol_definition(t, p).is_ok(),
        );
        count("configures", ledger.configures(t, p).is_ok());
        count("cids", ledger.cids(t).map(|i| i.count()).is_ok());
        count(
            "protocol_cids",
            ledger.protocol_cids(t, p).map(|i| i.count()).is_ok(),
        );
        count(
            "path_cids",
            ledger
                .path_cids(t, p, &ProtocolPath::new("note").unwrap())
                .is_ok(),
        );
        count("links.list", ledger.links().list(t).is_ok());
        count("links.list_all", ledger.links().list_all().is_ok());
        count("links.get", ledger.links().get(&fx.link).is_ok());
        count(
            "dead_letters.list",
            ledger
                .dead_letters()
                .list(&DeadLetterFilter::default())
                .is_ok(),
        );
        count(
            "dead_letters.count",
            ledger
                .dead_letters()
                .count(&DeadLetterFilter::default())
                .is_ok(),
        );
        count("identities.list", ledger.identities().list().is_ok());
        count("identities.get", ledger.identities().get(t).is_ok());
        let blobs = ledger.blobs();
        for cid in [fx.blob, fx.partial] {
            count("blobs.has", blobs.has(&cid).is_ok());
            count("blobs.size", blobs.size(&cid).is_ok());
            count("blobs.read", blobs.read(&cid).is_ok());
            count(
                "blobs.read_range",
                blobs.read_range(&cid, 60 * 1024, 10 * 1024).is_ok(),
            );
            count("blobs.upload_offset", blobs.upload_offset(&cid).is_ok());
        }
        count(
            "blob_referrers",
            ledger.blob_referrers(t, &fx.blob, 10).is_ok(),
        );
        count("blobs.list", blobs.list().is_ok());
        count("blobs.partial_uploads", blobs.partial_uploads().is_ok());
        if round == 0 {
            // Writes on top of the damage: a new record, an update of one that may be
            // damaged, a delete, then the reads again.
            let (w, d) = write(t, p, "new", None, 20, b"after the damage");
            let (u, du) = write(t, p, "a", None, 21, b"again");
            let del = delete(t, p, "c", None, 22);
            count(
                "apply",
                ledger
                    .apply(t, [(w, d), (u, du), (del, None)], Durability::SyncData)
                    .is_ok(),
            );
            count(
                "compact_log",
                ledger.compact_log(t, 2, Durability::SyncData).is_ok(),
            );
            count(
                "dead_letters.record",
                ledger
                    .dead_letters()
                    .record(
                        letter(t, None, DeadLetterCategory::Closure),
                        Durability::SyncData,
                    )
                    .is_ok(),
            );
            count(
                "links.delete",
                ledger
                    .links()
                    .delete(&fx.link, Durability::SyncData)
                    .is_ok(),
            );
            count(
                "blobs.delete",
                blobs.delete(&fx.blob, Durability::SyncData).is_ok(),
            );
            count(
                "blobs.abort_upload",
                blobs.abort_upload(&fx.partial).is_ok(),
            );
        }
    }
    // A damaged store must not leave a waiter stuck either.
    let seen = ledger.generation();
    let _ = ledger.wait_for_change(seen, Duration::from_millis(1));
    failed
}
