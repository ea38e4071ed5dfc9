//! No damage to a ledger's store makes the ledger panic: values flipped, cut short,
//! deleted or moved to other keys behind its back give errors (or, where the damage
//! still reads as valid, answers), on every call, reads and writes alike. The same
//! damage is fuzzed by `fuzz/fuzz_targets/ledger_damage.rs`.

mod common;
mod damage_support;

use damage_support as damage;

use proptest::prelude::*;

#[test]
fn an_undamaged_store_answers_every_call() {
    let (store, fx) = damage::populated();
    assert_eq!(damage::damage(&store, &[]), 0);
    // On an intact store only the calls that must fail do: reading the blob that is
    // still uploading, and (in the second round, after the first deleted it) reading
    // the deleted blob.
    assert_eq!(
        damage::exercise(&store, &fx),
        ["blobs.read", "blobs.read_range"].repeat(3),
    );
}

/// Damage the fuzzer found, kept so every test run sees it again.
#[test]
fn fuzz_findings_stay_fixed() {
    // A blob whose metadata says chunks of 0 bytes: reading it divided by zero.
    // (`fuzz/regressions/ledger_damage/blob-chunk-bytes-zero`.)
    let (store, fx) = damage::populated();
    assert_eq!(damage::damage(&store, &[44, 57, 66, 48]), 1);
    let failed = damage::exercise(&store, &fx);
    assert!(failed.contains(&"blobs.read"), "{failed:?}");
}

/// A log head at `u64::MAX` (a damaged value that still decodes) refuses appends with an
/// error instead of wrapping to position 0.
#[test]
fn a_log_head_at_the_last_position_refuses_appends() {
    use sync_ledger::layout::{LOG_META, LogMeta};
    use sync_ledger::store::{Batch, KeyRange, Order};
    use sync_ledger::{Durability, Error, Ledger, Store};

    let (store, fx) = damage::populated();
    let (key, value) = store
        .scan(LOG_META, KeyRange::all(), Order::Ascending)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let mut meta: LogMeta = sync_types::codec::decode(&value, 1024).unwrap();
    meta.head = u64::MAX;
    let mut batch = Batch::new();
    batch.put(LOG_META, key, sync_types::codec::encode(&meta));
    store.commit(batch, Durability::SyncData).unwrap();
    let ledger = Ledger::builder().seed(2).open(store).unwrap();
    let (w, d) = common::write(&fx.tenant, &fx.protocol, "late", None, 30, b"x");
    assert!(matches!(
        ledger.apply(&fx.tenant, [(w, d)], Durability::SyncData),
        Err(Error::Inconsistent(_))
    ));
}

/// A blob whose metadata claims far more bytes than its chunks hold is an error when
/// read whole, before the read allocates what the size says (here 128 TiB: without the
/// check the allocation fails and aborts the process).
#[test]
fn a_blob_size_past_its_chunks_is_an_error_not_an_allocation() {
    use sync_ledger::layout::{BLOB_META, BlobMeta};
    use sync_ledger::store::Batch;
    use sync_ledger::{Durability, Error, Ledger, Store};

    let (store, fx) = damage::populated();
    let key = fx.blob.as_bytes().to_vec();
    let value = store.get(BLOB_META, &key).unwrap().unwrap();
    let mut meta: BlobMeta = sync_types::codec::decode(&value, 1024).unwrap();
    meta.size = 1 << 47;
    let mut batch = Batch::new();
    batch.put(BLOB_META, key, sync_types::codec::encode(&meta));
    store.commit(batch, Durability::SyncData).unwrap();
    let ledger = Ledger::builder().seed(2).open(store).unwrap();
    let whole = ledger.blobs().read(&fx.blob);
    assert!(matches!(whole, Err(Error::Inconsistent(_))), "{whole:?}");
    // A short range inside the real bytes still reads; one past them fails.
    assert_eq!(
        ledger.blobs().read_range(&fx.blob, 0, 10).unwrap().len(),
        10
    );
    assert!(matches!(
        ledger.blobs().read_range(&fx.blob, 0, 512 * 1024),
        Err(Error::Inconsistent(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/damage.txt"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn damaged_stores_give_errors_not_panics(data in proptest::collection::vec(any::<u8>(), 4..40)) {
        let (store, fx) = damage::populated();
        prop_assert!(damage::damage(&store, &data) > 0);
        damage::exercise(&store, &fx);
    }
}
