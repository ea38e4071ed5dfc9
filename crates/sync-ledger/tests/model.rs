//! The ledger's model test (`suites/model.rs`) on the memory and fjall backends.

mod common;
#[path = "suites/model.rs"]
mod model_suite;

use model_suite::{Harness, run, step};
use proptest::prelude::*;
use sync_ledger::{Ledger, MemoryStore};

struct Fjall {
    dir: tempfile::TempDir,
    ledger: Option<Ledger>,
}

impl Harness for Fjall {
    fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().unwrap()
    }
    fn reboot(&mut self) {
        drop(self.ledger.take());
        self.ledger = Some(
            Ledger::builder()
                .seed(5)
                .open_fjall(self.dir.path())
                .unwrap(),
        );
    }
    fn power_loss(&mut self) -> bool {
        // A real power loss cannot be simulated in-process; a reboot keeps everything.
        self.reboot();
        false
    }
}

struct Memory {
    store: MemoryStore,
    ledger: Option<Ledger>,
}

impl Harness for Memory {
    fn ledger(&self) -> &Ledger {
        self.ledger.as_ref().unwrap()
    }
    fn reboot(&mut self) {
        drop(self.ledger.take());
        self.ledger = Some(Ledger::builder().seed(5).open(self.store.clone()).unwrap());
    }
    fn power_loss(&mut self) -> bool {
        drop(self.ledger.take());
        let lost = self.store.unsynced_batches() > 0;
        self.store.simulate_power_loss(0);
        self.reboot();
        lost
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 40,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/model.txt"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn memory_ledger_matches_the_model(steps in prop::collection::vec(step(), 1..25)) {
        let store = MemoryStore::new();
        let ledger = Ledger::builder().seed(5).open(store.clone()).unwrap();
        run(&mut Memory { store, ledger: Some(ledger) }, steps)?;
    }

    #[test]
    fn fjall_ledger_matches_the_model_across_reboots(steps in prop::collection::vec(step(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::builder().seed(5).open_fjall(dir.path()).unwrap();
        run(&mut Fjall { dir, ledger: Some(ledger) }, steps)?;
    }
}
