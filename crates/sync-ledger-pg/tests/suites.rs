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
