//! The ledger's shared suites on PostgreSQL: the backend contract (with its model test
//! across reboots) and the ledger's model test with reboots, as for fjall.

#[path = "../../sync-ledger/tests/suites/backend.rs"]
mod backend_suite;
#[path = "../../sync-ledger/tests/common/mod.rs"]
mod common;
#[path = "../../sync-ledger/tests/suites/model.rs"]
mod model_suite;
mod support;

use proptest::prelude::*;
use sync_ledger::{Ledger, Store};
use sync_ledger_pg::PgStore;

/// A store on its own schema, reopened on the same schema by a reboot.
struct Pg {
    schema: String,
    store: Option<PgStore>,
}

impl Pg {
    fn new(label: &str) -> Self {
        let schema = support::fresh_schema(label);
        let store = Some(support::open(&schema));
        Self { schema, store }
    }
}

impl backend_suite::Backend for Pg {
    fn store(&self) -> &dyn Store {
        self.store.as_ref().unwrap()
    }
    fn reboot(&mut self) {
        drop(self.store.take());
        self.store = Some(support::open(&self.schema));
    }
}

#[test]
fn put_get_delete() {
    backend_suite::put_get_delete("pg", &mut Pg::new("pgd"));
}

#[test]
fn batches_span_partitions_and_last_write_wins() {
    backend_suite::batches_span_partitions_and_last_write_wins("pg", &mut Pg::new("batch"));
}

#[test]
fn scans_are_ordered_and_respect_bounds() {
    backend_suite::scans_are_ordered_and_respect_bounds("pg", &mut Pg::new("scan"));
}

#[test]
fn reboot_keeps_committed_batches() {
    backend_suite::reboot_keeps_committed_batches("pg", &mut Pg::new("reboot"));
}

/// The ledger on PostgreSQL, reopened by a reboot; a power loss cannot be simulated
/// in-process, so it is a reboot that keeps everything (as for fjall).
struct PgLedger {
    schema: String,
    ledger: Option<Ledger>,
}

impl PgLedger {
    fn open(schema: &str) -> Ledger {
        Ledger::builder()
            .seed(5)
            .open(support::open(schema))
            .unwrap()
    }
}

impl model_suite::Harness for PgLedger {
    fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().unwrap()
    }
    fn reboot(&mut self) {
        drop(self.ledger.take());
        self.ledger = Some(Self::open(&self.schema));
    }
    fn power_loss(&mut self) -> bool {
        self.reboot();
        false
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/suites.txt"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn pg_store_matches_a_btreemap_across_reboots(ops in prop::collection::vec(backend_suite::op(), 1..60)) {
        backend_suite::run_model(&mut Pg::new("model"), ops)?;
    }

    #[test]
    fn pg_ledger_matches_the_model_across_reboots(steps in prop::collection::vec(model_suite::step(), 1..25)) {
        let schema = support::fresh_schema("ledger");
        let ledger = PgLedger::open(&schema);
        model_suite::run(&mut PgLedger { schema, ledger: Some(ledger) }, steps)?;
    }
}

/// The ledger's own partitions map keys onto typed columns (`tn`, and `pos` for the
/// log): scans over them, within a tenant and across tenants (tenant numbers of one and
/// two varint bytes, whose byte order differs from their numeric order), in both
/// directions, return what a `BTreeMap` of the keys returns.
mod typed_columns {
    use std::collections::BTreeMap;
    use std::ops::Bound;

    use proptest::prelude::*;
    use sync_ledger::layout;
    use sync_ledger::store::{Batch, Durability, KeyRange, Order, Partition};

    use super::{Pg, backend_suite::Backend};

    fn varint(mut n: u32) -> Vec<u8> {
        let mut out = Vec::new();
        while n >= 0x80 {
            out.push(u8::try_from(n & 0x7f).unwrap() | 0x80);
            n >>= 7;
        }
        out.push(u8::try_from(n).unwrap());
        out
    }

    /// A range's start and end.
    type Bounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

    fn tn() -> impl Strategy<Value = u32> {
        prop::sample::select(vec![0u32, 1, 5, 127, 128, 129, 300, 16_384])
    }

    /// A log key (tenant, position) or a tenant key (tenant, some bytes).
    fn key(log: bool) -> BoxedStrategy<Vec<u8>> {
        if log {
            (tn(), 0u64..40)
                .prop_map(|(t, pos)| {
                    let mut k = varint(t);
                    k.extend_from_slice(&pos.to_be_bytes());
                    k
                })
                .boxed()
        } else {
            (
                tn(),
                prop::collection::vec(prop::sample::select(vec![0u8, 1, 0x80, 0xff]), 0..3),
            )
                .prop_map(|(t, rest)| {
                    let mut k = varint(t);
                    k.extend(rest);
                    k
                })
                .boxed()
        }
    }

    /// A bound: a key, a tenant prefix, or a key with a byte more or less.
    fn bound(log: bool) -> impl Strategy<Value = Bound<Vec<u8>>> {
        (key(log), 0..6u8).prop_map(|(k, how)| match how {
            0 => Bound::Unbounded,
            1 => Bound::Included(k),
            2 => Bound::Excluded(k),
            3 => {
                let n = k.len() - 1;
                Bound::Included(k[..n.max(1)].to_vec())
            }
            4 => {
                let mut k = k;
                k.push(0x42);
                Bound::Excluded(k)
            }
            _ => Bound::Included(k[..1].to_vec()),
        })
    }

    fn check(log: bool, keys: Vec<Vec<u8>>, ranges: Vec<Bounds>) -> Result<(), TestCaseError> {
        let p: Partition = if log { layout::LOG } else { layout::MSG };
        let pg = Pg::new(if log { "typed_log" } else { "typed_msg" });
        let mut model = BTreeMap::new();
        let mut batch = Batch::new();
        for (i, k) in keys.into_iter().enumerate() {
            let v = vec![u8::try_from(i % 251).unwrap()];
            batch.put(p, k.clone(), v.clone());
            model.insert(k, v);
        }
        pg.store().commit(batch, Durability::Buffered).unwrap();
        let mut ranges = ranges;
        ranges.push((Bound::Unbounded, Bound::Unbounded));
        for (start, end) in ranges {
            let range = KeyRange { start, end };
            for order in [Order::Ascending, Order::Descending] {
                let mut want: Vec<(Vec<u8>, Vec<u8>)> = model
                    .iter()
                    .filter(|(k, _)| range.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if order == Order::Descending {
                    want.reverse();
                }
                let got = super::backend_suite::collect(pg.store(), p, range.clone(), order);
                prop_assert_eq!(&got, &want, "{:?} {:?}", range, order);
                let first = pg.store().first(p, range.clone(), order).unwrap();
                prop_assert_eq!(first, want.first().cloned());
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 12,
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/typed_columns.txt"),
            )),
            ..ProptestConfig::default()
        })]

        #[test]
        fn log_scans_match_a_btreemap(
            keys in prop::collection::vec(key(true), 0..60),
            ranges in prop::collection::vec((bound(true), bound(true)), 1..12),
        ) {
            check(true, keys, ranges)?;
        }

        #[test]
        fn tenant_scans_match_a_btreemap(
            keys in prop::collection::vec(key(false), 0..60),
            ranges in prop::collection::vec((bound(false), bound(false)), 1..12),
        ) {
            check(false, keys, ranges)?;
        }
    }
}
