//! Model tests of `Tree`: every query agrees with a `BTreeSet` and with `hash_sorted` over
//! it, and the root depends only on the set, never on the order of inserts and removes.

mod common;

use std::collections::BTreeSet;

use common::{key, keys, sorted};
use proptest::prelude::*;
use sync_smt::{Error, Hash, Key, Prefix, Tree, hash_sorted};

#[derive(Debug, Clone)]
enum Op {
    Insert(Key),
    Remove(usize),
    RemoveAbsent(Key),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![
            6 => key().prop_map(Op::Insert),
            3 => any::<usize>().prop_map(Op::Remove),
            1 => key().prop_map(Op::RemoveAbsent),
        ],
        0..400,
    )
}

fn check_queries(tree: &Tree, model: &BTreeSet<Key>, probe: &Key) {
    let all: Vec<Key> = model.iter().copied().collect();
    assert_eq!(tree.len(), all.len());
    assert_eq!(tree.root(), hash_sorted(&all));
    assert_eq!(tree.iter().copied().collect::<Vec<_>>(), all);
    for len in [0, 1, 3, 4, 7, 8, 13, 16, 100, 240, 248, 252, 253, 256] {
        let p = Prefix::of_key(probe, len);
        let under: Vec<Key> = all.iter().filter(|k| p.contains(k)).copied().collect();
        assert_eq!(tree.keys_under(&p), under, "keys under {p:?}");
        assert_eq!(tree.count_under(&p), under.len());
        assert_eq!(
            tree.subtree_hash(&p),
            hash_sorted(&under),
            "hash under {p:?}"
        );
    }
    for depth in [0, 1, 4, 6, 8, 12, 250, 256] {
        let mut expected: Vec<(Prefix, Hash)> = Vec::new();
        let mut rest = &all[..];
        while let Some(first) = rest.first() {
            let p = Prefix::of_key(first, depth);
            let n = rest.iter().take_while(|k| p.contains(k)).count();
            expected.push((p, hash_sorted(&rest[..n])));
            rest = &rest[n..];
        }
        assert_eq!(tree.subtree_hashes_at(depth), expected, "depth {depth}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn tree_matches_model(ops in ops(), probe in key()) {
        let mut tree = Tree::new();
        let mut model = BTreeSet::new();
        for op in ops {
            match op {
                Op::Insert(k) => prop_assert_eq!(tree.insert(k), model.insert(k)),
                Op::Remove(i) => {
                    if let Some(k) = model.iter().nth(i % model.len().max(1)).copied() {
                        prop_assert!(tree.remove(&k));
                        model.remove(&k);
                    }
                }
                Op::RemoveAbsent(k) => prop_assert_eq!(tree.remove(&k), model.remove(&k)),
            }
        }
        for k in model.iter().take(20) {
            prop_assert!(tree.contains(k));
        }
        prop_assert_eq!(tree.contains(&probe), model.contains(&probe));
        check_queries(&tree, &model, &probe);
        // Probing at a present key exercises the non-empty paths of every query.
        if let Some(k) = model.iter().next() {
            check_queries(&tree, &model, k);
        }
    }

    #[test]
    fn root_is_independent_of_order(keys in keys(300), extra in keys(100), seed in any::<u64>()) {
        let set = sorted(keys.clone());
        let expected = Tree::from_sorted(&set).unwrap().root();
        prop_assert_eq!(expected, hash_sorted(&set));

        // Insert in a shuffled order, with extra keys inserted and removed on the way.
        let mut order: Vec<Key> = keys.iter().chain(extra.iter()).copied().collect();
        let mut state = seed | 1;
        for i in (1..order.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, usize::try_from(state % (i as u64 + 1)).unwrap());
        }
        let mut tree = Tree::new();
        for k in &order {
            tree.insert(*k);
        }
        for k in &extra {
            if set.binary_search(k).is_err() {
                tree.remove(k);
            }
        }
        prop_assert_eq!(tree.root(), expected);
        prop_assert_eq!(tree.len(), set.len());
    }

    #[test]
    fn batched_inserts_and_removes_match_the_model(
        start in keys(300),
        batches in proptest::collection::vec((keys(200), any::<Vec<usize>>(), keys(20)), 1..6),
        probe in key(),
    ) {
        let mut tree = Tree::new();
        let mut model = BTreeSet::new();
        // Half of the starting keys one by one, so batches land on buckets and branches.
        let (single, batched) = start.split_at(start.len() / 2);
        for k in single {
            tree.insert(*k);
            model.insert(*k);
        }
        let new = batched.iter().filter(|k| !model.contains(*k)).copied().collect::<BTreeSet<_>>().len();
        prop_assert_eq!(tree.insert_many(batched.iter().copied()), new);
        model.extend(batched.iter().copied());
        for (adds, picks, absent) in batches {
            let mut removes: Vec<Key> = picks.iter().filter_map(|i| model.iter().nth(i % model.len().max(1))).copied().collect();
            removes.extend(absent.iter().filter(|k| !model.contains(*k)));
            let present = removes.iter().filter(|k| model.contains(*k)).copied().collect::<BTreeSet<_>>().len();
            prop_assert_eq!(tree.remove_many(&removes), present);
            for k in &removes {
                model.remove(k);
            }
            let new = adds.iter().filter(|k| !model.contains(*k)).copied().collect::<BTreeSet<_>>().len();
            prop_assert_eq!(tree.insert_many(adds.iter().copied()), new);
            model.extend(adds.iter().copied());
            check_queries(&tree, &model, &probe);
        }
        if let Some(k) = model.iter().next() {
            check_queries(&tree, &model, k);
        }
    }

    #[test]
    fn root_with_predicts_the_root_after_changes(keys in keys(300), adds in keys(80), removes in any::<Vec<usize>>()) {
        let set = sorted(keys);
        let tree = Tree::from_sorted(&set).unwrap();
        let adds: Vec<Key> = sorted(adds).into_iter().filter(|k| set.binary_search(k).is_err()).collect();
        let removes = sorted(removes.iter().filter_map(|i| set.get(i % set.len().max(1))).copied().collect());
        let mut changed = tree.clone();
        for k in &adds {
            changed.insert(*k);
        }
        for k in &removes {
            changed.remove(k);
        }
        prop_assert_eq!(tree.root_with(&adds, &removes), changed.root());
    }
}

#[test]
fn from_sorted_rejects_unsorted_and_duplicate_keys() {
    let a = [1u8; 32];
    let b = [2u8; 32];
    assert!(matches!(
        Tree::from_sorted(&[b, a]),
        Err(Error::Unsorted { index: 1 })
    ));
    assert!(matches!(
        Tree::from_sorted(&[a, b, b]),
        Err(Error::Unsorted { index: 2 })
    ));
    assert_eq!(Tree::from_sorted(&[a, b]).unwrap().len(), 2);
}

#[test]
fn empty_and_single_key_trees() {
    let mut tree = Tree::new();
    assert_eq!(tree.root(), Hash::EMPTY);
    assert!(tree.subtree_hashes_at(8).is_empty());
    let k = [9u8; 32];
    assert!(tree.insert(k));
    assert!(!tree.insert(k));
    assert_eq!(tree.root(), sync_smt::leaf_hash(&k));
    // A subtree holding one key is that key's leaf, at any depth.
    assert_eq!(
        tree.subtree_hash(&Prefix::of_key(&k, 200)),
        sync_smt::leaf_hash(&k)
    );
    assert!(tree.remove(&k));
    assert!(!tree.remove(&k));
    assert_eq!(tree.root(), Hash::EMPTY);
}

#[test]
fn bursts_and_collapses_keep_the_root() {
    // 5000 keys sharing 248 bits and more spread ones: deep bursts, then collapses.
    let mut keys: Vec<Key> = (0..5000u32)
        .map(|i| {
            let mut k = [0x33u8; 32];
            k[28..].copy_from_slice(&i.to_be_bytes());
            k
        })
        .collect();
    keys.extend(common::spread(0..5000));
    let mut tree = Tree::new();
    for k in &keys {
        tree.insert(*k);
    }
    let set = sorted(keys.clone());
    assert_eq!(tree.root(), Tree::from_sorted(&set).unwrap().root());
    for k in &keys[..9900] {
        assert!(tree.remove(k));
    }
    let rest = sorted(keys[9900..].to_vec());
    assert_eq!(tree.root(), hash_sorted(&rest));
    assert!(tree.heap_bytes() < 100 * 1024);
}
