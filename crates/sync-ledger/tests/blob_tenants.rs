//! Blobs and tenants: the index of writes that name a blob, its rebuild when a
//! layout-2 store is opened, and uploads staged per tenant.

mod common;

use common::*;
use sync_ledger::store::{Batch, Durability, KeyRange, Order, Store};
use sync_ledger::{Error, Ledger, MemoryStore, layout};
use sync_types::*;

/// A root `note` write naming a blob of `len` bytes with id `cid` (not inline).
fn write_blob_ref(
    t: &TenantId,
    p: &ProtocolName,
    key: &str,
    prev: Option<Cid>,
    ts: u64,
    cid: Cid,
) -> Message {
    let (m, _) = write(t, p, key, prev, ts, b"x");
    let Message::Write(mut w) = m else {
        unreachable!()
    };
    w.data = Some(DataRef {
        data_cid: cid,
        size: 1024 * 1024,
    });
    assert!(!w.data.unwrap().is_inline());
    Message::Write(w)
}

fn index_len(store: &dyn Store) -> usize {
    store
        .scan(layout::BY_BLOB, KeyRange::all(), Order::Ascending)
        .unwrap()
        .count()
}

#[test]
fn writes_naming_a_blob_are_indexed_per_tenant_and_leave_the_index_when_pruned() {
    let ledger = Ledger::builder().seed(1).open_in_memory().unwrap();
    let (a, b) = (tenant("alice"), tenant("bob"));
    let p = protocol("notes");
    let blob = Cid::of_data(b"some blob");
    for t in [&a, &b] {
        apply_one(&ledger, configure(t, &p, 1), None);
    }
    let w1 = write_blob_ref(&a, &p, "r", None, 5, blob);
    assert!(matches!(
        apply_one(&ledger, w1.clone(), None),
        sync_ledger::LedgerOutcome::Applied { .. }
    ));
    assert_eq!(
        ledger.blob_referrers(&a, &blob, 10).unwrap(),
        vec![w1.cid()]
    );
    assert!(
        ledger.blob_referrers(&b, &blob, 10).unwrap().is_empty(),
        "per tenant"
    );
    assert!(
        ledger
            .blob_referrers(&tenant("carol"), &blob, 10)
            .unwrap()
            .is_empty()
    );

    // An inline write names no blob; a second version keeps the initial write.
    let (inline, d) = write(&a, &p, "s", None, 6, b"small");
    apply_one(&ledger, inline, d);
    let w2 = write_blob_ref(&a, &p, "r", Some(w1.cid()), 7, blob);
    apply_one(&ledger, w2.clone(), None);
    assert_eq!(
        ledger.blob_referrers(&a, &blob, 10).unwrap(),
        vec![w1.cid(), w2.cid()]
    );
    assert_eq!(ledger.blob_referrers(&a, &blob, 1).unwrap(), vec![w1.cid()]);

    // A newer winner prunes w2 (the initial write stays): its entry goes with it.
    let (w3, d3) = write(&a, &p, "r", Some(w2.cid()), 8, b"now inline");
    apply_one(&ledger, w3, d3);
    assert_eq!(
        ledger.blob_referrers(&a, &blob, 10).unwrap(),
        vec![w1.cid()]
    );
    assert_eq!(index_len(ledger.store()), 1);
}

#[test]
fn a_layout_2_store_gets_its_blob_index_rebuilt_on_open() {
    let store = MemoryStore::new();
    let t = tenant("alice");
    let p = protocol("notes");
    let blobs: Vec<Cid> = (0..3u8).map(|i| Cid::of_data(&[i; 40])).collect();
    let mut expected = Vec::new();
    {
        let ledger = Ledger::builder().seed(1).open(store.clone()).unwrap();
        apply_one(&ledger, configure(&t, &p, 1), None);
        for (i, blob) in blobs.iter().enumerate() {
            let w = write_blob_ref(&t, &p, &format!("r{i}"), None, 10 + i as u64, *blob);
            expected.push(w.cid());
            apply_one(&ledger, w, None);
        }
        ledger.close().unwrap();
    }
    // What a layout-2 build left: no index, record rows without their protocol,
    // version 2.
    let mut batch = Batch::new();
    for kv in store
        .scan(layout::RECORDS, KeyRange::all(), Order::Ascending)
        .unwrap()
    {
        let (key, value) = kv.unwrap();
        let row: layout::RecordRow = codec::decode(&value, usize::MAX).unwrap();
        let old = codec::encode(&(row.head, row.path, row.context));
        batch.put(layout::RECORDS, key, old);
    }
    for kv in store
        .scan(layout::BY_BLOB, KeyRange::all(), Order::Ascending)
        .unwrap()
    {
        batch.delete(layout::BY_BLOB, kv.unwrap().0);
    }
    batch.put(layout::META, b"layout".to_vec(), codec::encode(&2u32));
    store.commit(batch, Durability::SyncData).unwrap();
    assert_eq!(index_len(&store), 0);

    let ledger = Ledger::builder().seed(1).open(store.clone()).unwrap();
    for (blob, cid) in blobs.iter().zip(&expected) {
        assert_eq!(ledger.blob_referrers(&t, blob, 10).unwrap(), vec![*cid]);
    }
    let version = store.get(layout::META, b"layout").unwrap().unwrap();
    assert_eq!(
        codec::decode::<u32>(&version, 16).unwrap(),
        layout::LAYOUT_VERSION
    );
}

#[test]
fn uploads_are_per_tenant_and_store_each_blob_once() {
    let ledger = Ledger::builder().seed(1).open_in_memory().unwrap();
    let blobs = ledger.blobs();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let cid = Cid::of_data(&data);
    let size = Some(data.len() as u64);
    let (victim, attacker) = (tenant("victim"), tenant("attacker"));

    // The victim sends half; the attacker sends wrong bytes under the same blob id.
    let mut up = blobs.upload_for_tenant(&victim, &cid, size, 1).unwrap();
    up.write(&data[..150_000]).unwrap();
    up.checkpoint(Durability::Buffered).unwrap();
    drop(up);
    let mut bad = blobs.upload_for_tenant(&attacker, &cid, size, 1).unwrap();
    assert_eq!(
        bad.offset(),
        0,
        "the attacker does not see the victim's progress"
    );
    assert_eq!(blobs.tenant_upload_offset(&attacker, &cid).unwrap(), None);
    bad.write(&vec![7u8; data.len()]).unwrap();
    assert!(matches!(
        bad.finish(Durability::SyncData),
        Err(Error::BlobMismatch { expected, .. }) if expected == cid
    ));
    assert!(!blobs.has(&cid).unwrap());
    assert_eq!(
        blobs.tenant_upload_offset(&victim, &cid).unwrap(),
        Some(150_000),
        "the victim's upload is untouched"
    );
    assert_eq!(
        blobs.upload_offset(&cid).unwrap(),
        None,
        "nothing under the blob id"
    );

    // The victim resumes and stores the blob.
    let mut up = blobs.upload_for_tenant(&victim, &cid, size, 2).unwrap();
    assert_eq!(up.offset(), 150_000);
    up.write(&data[150_000..]).unwrap();
    assert_eq!(up.finish(Durability::SyncData).unwrap(), data.len() as u64);
    assert_eq!(blobs.read(&cid).unwrap(), data);
    assert_eq!(blobs.tenant_upload_offset(&victim, &cid).unwrap(), None);

    // Another tenant must send every byte even though the blob is stored, and its
    // staged chunks are dropped: the blob is stored once.
    let mut again = blobs.upload_for_tenant(&attacker, &cid, size, 3).unwrap();
    assert!(!again.is_complete());
    again.write(&data).unwrap();
    assert_eq!(
        again.finish(Durability::SyncData).unwrap(),
        data.len() as u64
    );
    assert_eq!(chunk_bytes(&ledger), data.len() as u64);
    assert_eq!(blobs.read(&cid).unwrap(), data);
}

fn chunk_bytes(ledger: &Ledger) -> u64 {
    ledger
        .store()
        .scan(layout::BLOB_CHUNKS, KeyRange::all(), Order::Ascending)
        .unwrap()
        .map(|kv| kv.unwrap().1.len() as u64)
        .sum()
}

/// A tenant that sends a blob again after its own upload stored it (its possession was
/// forgotten, say) writes apart from the stored chunks: wrong bytes cannot damage the
/// stored blob, and right ones store nothing twice.
#[test]
fn a_tenant_sending_a_stored_blob_again_never_touches_its_stored_chunks() {
    let ledger = Ledger::builder().seed(1).open_in_memory().unwrap();
    let blobs = ledger.blobs();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 239) as u8).collect();
    let cid = Cid::of_data(&data);
    let size = Some(data.len() as u64);
    let t = tenant("alice");
    for round in 0..3 {
        let mut up = blobs.upload_for_tenant(&t, &cid, size, round).unwrap();
        assert_eq!(up.offset(), 0);
        up.write(&data).unwrap();
        assert_eq!(up.finish(Durability::SyncData).unwrap(), data.len() as u64);
        assert_eq!(blobs.read(&cid).unwrap(), data);
        assert_eq!(chunk_bytes(&ledger), data.len() as u64);

        let mut bad = blobs.upload_for_tenant(&t, &cid, size, round).unwrap();
        bad.write(&data[..100_000]).unwrap();
        bad.checkpoint(Durability::Buffered).unwrap();
        bad.write(&vec![1u8; 100_000]).unwrap();
        assert!(matches!(
            bad.finish(Durability::SyncData),
            Err(Error::BlobMismatch { .. })
        ));
        assert_eq!(blobs.read(&cid).unwrap(), data, "round {round}");
        // The collector's removal of the blob lets the next round store it anew.
        if round == 1 {
            assert!(blobs.delete(&cid, Durability::SyncData).unwrap());
        }
    }
}
