//! Criterion benches of `sync_smt::Tree` at a million uniformly spread keys: build from a
//! sorted list, insert and remove, root and subtree queries.
//!
//! Run with `cargo bench -p benches --bench smt_tree`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sync_smt::{Key, Prefix, Tree};

const N: u64 = 1_000_000;

fn key(i: u64) -> Key {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

fn sorted_keys(n: u64) -> Vec<Key> {
    let mut keys: Vec<Key> = (0..n).map(key).collect();
    keys.sort_unstable();
    keys
}

fn build(c: &mut Criterion) {
    let keys = sorted_keys(N);
    let mut group = c.benchmark_group("smt_tree/build");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(N));
    group.bench_function("from_sorted_1m", |b| {
        b.iter(|| Tree::from_sorted(black_box(&keys)))
    });
    group.finish();
}

fn update(c: &mut Criterion) {
    let keys = sorted_keys(N);
    let mut tree = Tree::from_sorted(&keys).unwrap_or_default();
    let mut group = c.benchmark_group("smt_tree/update_1m");
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    let mut next = N;
    group.bench_function("insert", |b| {
        b.iter(|| {
            next += 1;
            tree.insert(key(next))
        })
    });
    let mut at = 0usize;
    group.bench_function("remove", |b| {
        b.iter(|| {
            at = (at + 7919) % keys.len();
            tree.remove(&keys[at])
        })
    });
    group.finish();
}

fn queries(c: &mut Criterion) {
    let keys = sorted_keys(N);
    let tree = Tree::from_sorted(&keys).unwrap_or_default();
    let probe = key(12_345);
    let mut group = c.benchmark_group("smt_tree/query_1m");
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("root", |b| b.iter(|| black_box(&tree).root()));
    group.bench_function("contains", |b| b.iter(|| tree.contains(black_box(&probe))));
    for depth in [8, 16, 20] {
        let prefix = Prefix::of_key(&probe, depth);
        group.bench_function(format!("subtree_hash_depth_{depth}"), |b| {
            b.iter(|| tree.subtree_hash(black_box(&prefix)))
        });
    }
    let prefix = Prefix::of_key(&probe, 16);
    group.bench_function("keys_under_depth_16", |b| {
        b.iter(|| tree.keys_under(black_box(&prefix)))
    });
    group.bench_function("subtree_hashes_at_depth_8", |b| {
        b.iter(|| tree.subtree_hashes_at(black_box(8)))
    });
    group.finish();
}

criterion_group!(benches, build, update, queries);
criterion_main!(benches);
