//! The shared backend suite (`suites/backend.rs`) on the memory and fjall backends, and
//! the memory backend's power-loss model.

#[path = "suites/backend.rs"]
mod suite;

use proptest::prelude::*;
use suite::{A, Backend, collect, op, run_model};
use sync_ledger::store::{Batch, Durability, KeyRange, Order};
use sync_ledger::{FjallStore, MemoryStore, Store};

struct Fjall {
    dir: tempfile::TempDir,
    store: Option<FjallStore>,
}

impl Fjall {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = FjallStore::builder(dir.path())
            .worker_threads(1)
            .open()
            .unwrap();
        Self {
            dir,
            store: Some(store),
        }
    }
}

impl Backend for Fjall {
    fn store(&self) -> &dyn Store {
        self.store.as_ref().unwrap()
    }
    fn reboot(&mut self) {
        drop(self.store.take());
        self.store = Some(
            FjallStore::builder(self.dir.path())
                .worker_threads(1)
                .open()
                .unwrap(),
        );
    }
}

struct Memory {
    handle: MemoryStore,
    store: Option<MemoryStore>,
}

impl Memory {
    fn new() -> Self {
        let handle = MemoryStore::new();
        Self {
            store: Some(handle.clone()),
            handle,
        }
    }
}

impl Backend for Memory {
    fn store(&self) -> &dyn Store {
        self.store.as_ref().unwrap()
    }
    fn reboot(&mut self) {
        drop(self.store.take());
        self.store = Some(self.handle.clone());
    }
}

fn backends() -> Vec<(&'static str, Box<dyn Backend>)> {
    vec![
        ("memory", Box::new(Memory::new())),
        ("fjall", Box::new(Fjall::new())),
    ]
}

#[test]
fn put_get_delete() {
    for (name, mut b) in backends() {
        suite::put_get_delete(name, &mut *b);
    }
}

#[test]
fn batches_span_partitions_and_last_write_wins() {
    for (name, mut b) in backends() {
        suite::batches_span_partitions_and_last_write_wins(name, &mut *b);
    }
}

#[test]
fn scans_are_ordered_and_respect_bounds() {
    for (name, mut b) in backends() {
        suite::scans_are_ordered_and_respect_bounds(name, &mut *b);
    }
}

#[test]
fn reboot_keeps_committed_batches() {
    for (name, mut b) in backends() {
        suite::reboot_keeps_committed_batches(name, &mut *b);
    }
}

/// Buffered batches that overwrite and delete keys written by synced and by earlier
/// buffered batches: a power loss keeping any prefix leaves exactly the state of
/// replaying the synced batches and that prefix.
#[test]
fn memory_power_loss_undoes_overwrites_and_deletes_newest_first() {
    use std::collections::BTreeMap;
    // (key, value or delete) per batch.
    type Ops = Vec<(u8, Option<u8>)>;
    let synced: Vec<Ops> = vec![vec![(1, Some(1)), (2, Some(2)), (3, Some(3))]];
    let buffered: Vec<Ops> = vec![
        vec![(1, Some(10)), (4, Some(40))],
        vec![(2, None), (1, Some(11))],
        vec![(4, None), (3, Some(30)), (5, Some(50))],
        vec![(2, Some(22)), (5, None)],
    ];
    let batch = |ops: &Ops| {
        let mut b = Batch::new();
        for &(k, v) in ops {
            match v {
                Some(v) => b.put(A, vec![k], vec![v]),
                None => b.delete(A, vec![k]),
            }
        }
        b
    };
    for keep in 0..=buffered.len() {
        let store = MemoryStore::new();
        for ops in &synced {
            store.commit(batch(ops), Durability::SyncData).unwrap();
        }
        for ops in &buffered {
            store.commit(batch(ops), Durability::Buffered).unwrap();
        }
        store.simulate_power_loss(keep);
        assert_eq!(store.unsynced_batches(), 0);
        let mut model = BTreeMap::new();
        for ops in synced.iter().chain(&buffered[..keep]) {
            for &(k, v) in ops {
                match v {
                    Some(v) => model.insert(vec![k], vec![v]),
                    None => model.remove(&vec![k]),
                };
            }
        }
        let model: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
        assert_eq!(
            collect(&store, A, KeyRange::all(), Order::Ascending),
            model,
            "keeping {keep} buffered batches"
        );
    }
}

#[test]
fn memory_power_loss_keeps_synced_batches_and_a_prefix_of_the_rest() {
    let store = MemoryStore::new();
    store.put(A, b"1", vec![1], Durability::SyncData).unwrap();
    store.put(A, b"2", vec![2], Durability::Buffered).unwrap();
    store.put(A, b"3", vec![3], Durability::Buffered).unwrap();
    assert_eq!(store.unsynced_batches(), 2);
    let copy = store.clone();
    store.simulate_power_loss(1);
    assert_eq!(copy.get(A, b"1").unwrap(), Some(vec![1]));
    assert_eq!(copy.get(A, b"2").unwrap(), Some(vec![2]));
    assert_eq!(
        copy.get(A, b"3").unwrap(),
        None,
        "a suffix of buffered batches is lost"
    );
    store.put(A, b"4", vec![4], Durability::Buffered).unwrap();
    store.persist(Durability::SyncAll).unwrap();
    store.simulate_power_loss(0);
    assert_eq!(
        store.get(A, b"4").unwrap(),
        Some(vec![4]),
        "persist made it durable"
    );

    store.fail_syncs(true);
    assert!(store.put(A, b"5", vec![5], Durability::SyncData).is_err());
    assert!(store.persist(Durability::SyncData).is_err());
    assert_eq!(
        store.get(A, b"5").unwrap(),
        None,
        "a failed sync applies nothing"
    );
    // Buffered writes do not sync and still work.
    store.put(A, b"6", vec![6], Durability::Buffered).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct("proptest-regressions/backend_suite.txt"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn memory_store_matches_a_btreemap(ops in prop::collection::vec(op(), 1..60)) {
        run_model(&mut Memory::new(), ops)?;
    }

    #[test]
    fn fjall_store_matches_a_btreemap_across_reboots(ops in prop::collection::vec(op(), 1..60)) {
        run_model(&mut Fjall::new(), ops)?;
    }
}
