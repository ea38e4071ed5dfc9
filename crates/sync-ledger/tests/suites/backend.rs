//! The shared backend suite: the contract every `Store` backend must keep, as functions
//! a test file runs against its backend (this crate's `backend_suite.rs` for memory and
//! fjall, `sync-ledger-pg`'s for PostgreSQL), including a model test against a
//! `BTreeMap` with a reboot step.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;
use sync_ledger::store::{Batch, Durability, KeyRange, Order, Partition};
use sync_ledger::{Error, Store};

pub const A: Partition = Partition::new("suite_a");
pub const B: Partition = Partition::new("suite_b");

/// A backend under test: a store that can be closed and reopened on the same data.
pub trait Backend {
    fn store(&self) -> &dyn Store;
    /// Drops the store and opens it again (a clean restart: everything committed stays).
    fn reboot(&mut self);
}

pub fn collect(
    store: &dyn Store,
    p: Partition,
    range: KeyRange,
    order: Order,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .scan(p, range, order)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Contract check `put_get_delete` for one backend (`name` labels failures).
pub fn put_get_delete(name: &str, b: &mut dyn Backend) {
    let s = b.store();
    assert_eq!(s.get(A, b"k").unwrap(), None, "{name}");
    s.put(A, b"k", b"v1".to_vec(), Durability::Buffered)
        .unwrap();
    assert_eq!(s.get(A, b"k").unwrap(), Some(b"v1".to_vec()), "{name}");
    // Partitions are independent key spaces.
    assert_eq!(s.get(B, b"k").unwrap(), None, "{name}");
    s.put(A, b"k", b"v2".to_vec(), Durability::SyncData)
        .unwrap();
    assert_eq!(s.get(A, b"k").unwrap(), Some(b"v2".to_vec()), "{name}");
    s.delete(A, b"k", Durability::SyncAll).unwrap();
    assert_eq!(s.get(A, b"k").unwrap(), None, "{name}");
    // Deleting a missing key is a no-op.
    s.delete(A, b"missing", Durability::Buffered).unwrap();
    // Empty keys and values are allowed values.
    s.put(A, b"e", Vec::new(), Durability::Buffered).unwrap();
    assert_eq!(s.get(A, b"e").unwrap(), Some(Vec::new()), "{name}");
}
/// Contract check `batches_span_partitions_and_last_write_wins` for one backend (`name` labels failures).
pub fn batches_span_partitions_and_last_write_wins(name: &str, b: &mut dyn Backend) {
    let s = b.store();
    s.put(A, b"gone", b"x".to_vec(), Durability::Buffered)
        .unwrap();
    let mut batch = Batch::new();
    batch.put(A, b"1".to_vec(), b"a1".to_vec());
    batch.put(B, b"1".to_vec(), b"b1".to_vec());
    batch.put(A, b"2".to_vec(), b"first".to_vec());
    batch.put(A, b"2".to_vec(), b"second".to_vec());
    batch.put(A, b"3".to_vec(), b"inserted".to_vec());
    batch.delete(A, b"3".to_vec());
    batch.delete(A, b"gone".to_vec());
    s.commit(batch, Durability::SyncData).unwrap();
    assert_eq!(s.get(A, b"1").unwrap(), Some(b"a1".to_vec()), "{name}");
    assert_eq!(s.get(B, b"1").unwrap(), Some(b"b1".to_vec()), "{name}");
    assert_eq!(s.get(A, b"2").unwrap(), Some(b"second".to_vec()), "{name}");
    assert_eq!(s.get(A, b"3").unwrap(), None, "{name}");
    assert_eq!(s.get(A, b"gone").unwrap(), None, "{name}");
    // An empty batch commits nothing and succeeds.
    s.commit(Batch::new(), Durability::SyncData).unwrap();
}
/// Contract check `scans_are_ordered_and_respect_bounds` for one backend (`name` labels failures).
pub fn scans_are_ordered_and_respect_bounds(name: &str, b: &mut dyn Backend) {
    let s = b.store();
    let mut batch = Batch::new();
    // Enough keys to cross the memory backend's scan chunks several times.
    for i in 0u16..1000 {
        batch.put(
            A,
            i.to_be_bytes().to_vec(),
            vec![u8::try_from(i % 251).unwrap()],
        );
    }
    batch.put(A, vec![0xff, 0xff, 0x01], b"edge".to_vec());
    batch.put(B, vec![0x00, 0x05], b"other".to_vec());
    s.commit(batch, Durability::Buffered).unwrap();

    let all = collect(s, A, KeyRange::all(), Order::Ascending);
    assert_eq!(all.len(), 1001, "{name}");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "{name}: ascending");
    let rev = collect(s, A, KeyRange::all(), Order::Descending);
    let mut rev_sorted = rev.clone();
    rev_sorted.reverse();
    assert_eq!(rev_sorted, all, "{name}: descending is the reverse");

    // Prefix 0x01: keys 256..512.
    let p = collect(s, A, KeyRange::prefix(&[0x01]), Order::Ascending);
    assert_eq!(p.len(), 256, "{name}");
    assert_eq!(p[0].0, 256u16.to_be_bytes().to_vec(), "{name}");
    assert_eq!(p[255].0, 511u16.to_be_bytes().to_vec(), "{name}");
    // An all-0xff prefix has no successor; the range is open above.
    let p = collect(s, A, KeyRange::prefix(&[0xff, 0xff]), Order::Ascending);
    assert_eq!(
        p,
        vec![(vec![0xff, 0xff, 0x01], b"edge".to_vec())],
        "{name}"
    );

    // Bounds of every kind.
    let range = |start, end| KeyRange { start, end };
    let k = |i: u16| i.to_be_bytes().to_vec();
    let keys = |r: KeyRange, o| {
        collect(s, A, r, o)
            .into_iter()
            .map(|(k, _)| u16::from_be_bytes([k[0], k[1]]))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(
            range(Bound::Included(k(10)), Bound::Excluded(k(13))),
            Order::Ascending
        ),
        vec![10, 11, 12],
        "{name}"
    );
    assert_eq!(
        keys(
            range(Bound::Excluded(k(10)), Bound::Included(k(13))),
            Order::Descending
        ),
        vec![13, 12, 11],
        "{name}"
    );
    assert_eq!(
        keys(
            range(Bound::Unbounded, Bound::Excluded(k(2))),
            Order::Ascending
        ),
        vec![0, 1],
        "{name}"
    );
    assert!(
        keys(
            range(Bound::Included(k(5)), Bound::Excluded(k(5))),
            Order::Ascending
        )
        .is_empty(),
        "{name}: empty range"
    );
    assert!(
        keys(
            range(Bound::Included(k(9)), Bound::Included(k(3))),
            Order::Ascending
        )
        .is_empty(),
        "{name}: inverted range"
    );
    assert_eq!(
        s.first(A, KeyRange::prefix(&[0x03]), Order::Descending)
            .unwrap()
            .map(|(k, _)| k),
        Some(k(999)),
        "{name}: last key of a prefix"
    );
    // `first` agrees with the first item of the same scan, in both orders, on
    // bounded, empty and inverted ranges and on a partition never written.
    let ranges = [
        range(Bound::Excluded(k(10)), Bound::Included(k(13))),
        range(Bound::Unbounded, Bound::Excluded(k(2))),
        range(Bound::Included(k(5)), Bound::Excluded(k(5))),
        range(Bound::Included(k(9)), Bound::Included(k(3))),
        KeyRange::all(),
    ];
    for r in ranges {
        for order in [Order::Ascending, Order::Descending] {
            for p in [A, Partition::new("suite_empty")] {
                let scanned = collect(s, p, r.clone(), order).into_iter().next();
                assert_eq!(
                    s.first(p, r.clone(), order).unwrap(),
                    scanned,
                    "{name}: first of {r:?} {order:?}"
                );
            }
        }
    }
    // A partition never written scans empty.
    assert!(
        collect(
            s,
            Partition::new("suite_empty"),
            KeyRange::all(),
            Order::Ascending
        )
        .is_empty()
    );
}
/// Contract check `reboot_keeps_committed_batches` for one backend (`name` labels failures).
pub fn reboot_keeps_committed_batches(name: &str, b: &mut dyn Backend) {
    for (i, d) in Durability::ALL.into_iter().enumerate() {
        let mut batch = Batch::new();
        batch.put(
            A,
            vec![u8::try_from(i).unwrap()],
            d.as_str().as_bytes().to_vec(),
        );
        batch.put(B, vec![u8::try_from(i).unwrap()], vec![1]);
        b.store().commit(batch, d).unwrap();
    }
    b.store().delete(B, &[0], Durability::SyncData).unwrap();
    b.reboot();
    let s = b.store();
    for (i, d) in Durability::ALL.into_iter().enumerate() {
        let key = [u8::try_from(i).unwrap()];
        assert_eq!(
            s.get(A, &key).unwrap(),
            Some(d.as_str().as_bytes().to_vec()),
            "{name}"
        );
    }
    assert_eq!(s.get(B, &[0]).unwrap(), None, "{name}");
    assert_eq!(s.get(B, &[1]).unwrap(), Some(vec![1]), "{name}");
}

// ---- model test ----

#[derive(Clone, Debug)]
pub enum Op {
    Put(bool, Vec<u8>, Vec<u8>),
    Delete(bool, Vec<u8>),
    Batch(Vec<(bool, Vec<u8>, Option<Vec<u8>>)>),
    Get(bool, Vec<u8>),
    Scan(bool, Vec<u8>, Vec<u8>, bool),
    Prefix(bool, Vec<u8>, bool),
    Reboot,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // Small alphabet and lengths so operations collide often, including 0x00 and 0xff.
    prop::collection::vec(
        prop::sample::select(vec![0u8, 1, 2, 0x7f, 0xfe, 0xff]),
        0..4,
    )
}

pub fn op() -> impl Strategy<Value = Op> {
    let value = prop::collection::vec(any::<u8>(), 0..8);
    prop_oneof![
        4 => (any::<bool>(), key(), value.clone()).prop_map(|(p, k, v)| Op::Put(p, k, v)),
        2 => (any::<bool>(), key()).prop_map(|(p, k)| Op::Delete(p, k)),
        2 => prop::collection::vec((any::<bool>(), key(), prop::option::of(value)), 0..6).prop_map(Op::Batch),
        2 => (any::<bool>(), key()).prop_map(|(p, k)| Op::Get(p, k)),
        2 => (any::<bool>(), key(), key(), any::<bool>()).prop_map(|(p, a, b, r)| Op::Scan(p, a, b, r)),
        2 => (any::<bool>(), key(), any::<bool>()).prop_map(|(p, k, r)| Op::Prefix(p, k, r)),
        1 => Just(Op::Reboot),
    ]
}

type Model = BTreeMap<(bool, Vec<u8>), Vec<u8>>;

fn part(p: bool) -> Partition {
    if p { A } else { B }
}

fn model_scan(model: &Model, p: bool, range: &KeyRange, reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<_> = model
        .iter()
        .filter(|((mp, k), _)| *mp == p && range.contains(k))
        .map(|((_, k), v)| (k.clone(), v.clone()))
        .collect();
    if reverse {
        out.reverse();
    }
    out
}

pub fn run_model(backend: &mut dyn Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    for op in ops {
        match op {
            Op::Put(p, k, v) => {
                let r = backend
                    .store()
                    .put(part(p), &k, v.clone(), Durability::Buffered);
                if k.is_empty() {
                    prop_assert!(
                        matches!(r, Err(Error::InvalidKey { len: 0, .. })),
                        "an invalid key must be refused"
                    );
                } else {
                    r.unwrap();
                    model.insert((p, k), v);
                }
            }
            Op::Delete(p, k) => {
                let r = backend.store().delete(part(p), &k, Durability::Buffered);
                if k.is_empty() {
                    prop_assert!(
                        matches!(r, Err(Error::InvalidKey { len: 0, .. })),
                        "an invalid key must be refused"
                    );
                } else {
                    r.unwrap();
                    model.remove(&(p, k));
                }
            }
            Op::Batch(items) => {
                // A batch with an invalid key is refused whole: the model stays as is.
                let valid = items.iter().all(|(_, k, _)| !k.is_empty());
                let mut batch = Batch::new();
                let mut next = model.clone();
                for (p, k, v) in items {
                    match v {
                        Some(v) => {
                            batch.put(part(p), k.clone(), v.clone());
                            next.insert((p, k), v);
                        }
                        None => {
                            batch.delete(part(p), k.clone());
                            next.remove(&(p, k));
                        }
                    }
                }
                let r = backend.store().commit(batch, Durability::SyncData);
                if valid {
                    r.unwrap();
                    model = next;
                } else {
                    prop_assert!(
                        matches!(r, Err(Error::InvalidKey { .. })),
                        "an invalid key must be refused"
                    );
                }
            }
            Op::Get(p, k) => {
                let got = backend.store().get(part(p), &k);
                if k.is_empty() {
                    prop_assert!(
                        matches!(got, Err(Error::InvalidKey { .. })),
                        "an invalid key must be refused"
                    );
                } else {
                    prop_assert_eq!(got.unwrap(), model.get(&(p, k)).cloned());
                }
            }
            Op::Scan(p, a, b, reverse) => {
                let range = KeyRange::between(a, b);
                let order = if reverse {
                    Order::Descending
                } else {
                    Order::Ascending
                };
                let got = collect(backend.store(), part(p), range.clone(), order);
                let want = model_scan(&model, p, &range, reverse);
                prop_assert_eq!(got, want.clone());
                // The borrowing scan sees the same entries, and stops when told to.
                for stop_after in [usize::MAX, 2] {
                    let mut seen = Vec::new();
                    backend
                        .store()
                        .scan_with(part(p), range.clone(), order, &mut |k, v| {
                            seen.push((k.to_vec(), v.to_vec()));
                            Ok(seen.len() < stop_after)
                        })
                        .unwrap();
                    let n = want.len().min(stop_after);
                    prop_assert_eq!(&seen[..], &want[..n]);
                }
            }
            Op::Prefix(p, k, reverse) => {
                let range = KeyRange::prefix(&k);
                let order = if reverse {
                    Order::Descending
                } else {
                    Order::Ascending
                };
                let got = collect(backend.store(), part(p), range.clone(), order);
                prop_assert_eq!(got, model_scan(&model, p, &range, reverse));
            }
            Op::Reboot => backend.reboot(),
        }
    }
    // Whole contents agree at the end, after one more reboot.
    backend.reboot();
    for p in [true, false] {
        let got = collect(backend.store(), part(p), KeyRange::all(), Order::Ascending);
        prop_assert_eq!(got, model_scan(&model, p, &KeyRange::all(), false));
    }
    Ok(())
}
