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
