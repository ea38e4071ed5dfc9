//! Prints the `sync-smt` diff table for `BENCHMARKS.md`: Weft's multi-round diff, the
//! `negentropy` crate and a model of the upstream single depth-8 round, measured on the
//! same sets in the same run.
//!
//! Run with `cargo run --release -p benches --bin smt_diff [-- N ...]` (default N: 10000,
//! 100000, 1000000). For each N and d, the initiator holds N keys, the responder holds the
//! same N keys minus d/2 of them plus d - d/2 others; keys are blake3 hashes of counters, so
//! both the set and the differences are spread uniformly over the key space.
//!
//! CPU per side is the wall time spent inside that side's calls (encode, decode, handle),
//! single-threaded, trees and negentropy storages already built.

// A bench binary's whole job is to print its table to stdout.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use negentropy::{Id, Negentropy, NegentropyStorageVector};
use sync_smt::{Config, Initiator, Key, Responder, Step, Tree};

fn key(i: u64) -> Key {
    *blake3::hash(&i.to_le_bytes()).as_bytes()
}

struct Row {
    bytes_out: usize,
    bytes_in: usize,
    round_trips: usize,
    largest: usize,
    cpu_initiator: Option<Duration>,
    cpu_responder: Option<Duration>,
}

impl Row {
    fn total(&self) -> usize {
        self.bytes_out + self.bytes_in
    }
}

fn weft(a: &Tree, b: &Tree, only_local: usize, only_remote: usize) -> Row {
    let responder = Responder::new(Config::default().limits);
    let mut row = Row {
        bytes_out: 0,
        bytes_in: 0,
        round_trips: 0,
        largest: 0,
        cpu_initiator: Some(Duration::ZERO),
        cpu_responder: Some(Duration::ZERO),
    };
    let mut ti = Duration::ZERO;
    let mut tr = Duration::ZERO;
    let t = Instant::now();
    let (mut session, mut request) =
        Initiator::start(a, Config::default(), [0x5e; 16]).expect("valid config");
    let mut bytes = request.encode();
    ti += t.elapsed();
    let diff = loop {
        row.round_trips += 1;
        row.bytes_out += bytes.len();
        row.largest = row.largest.max(bytes.len());
        let t = Instant::now();
        let reply = responder.respond_bytes(b, &bytes).expect("honest request");
        tr += t.elapsed();
        row.bytes_in += reply.len();
        row.largest = row.largest.max(reply.len());
        let t = Instant::now();
        let step = session.handle_bytes(a, &reply).expect("honest reply");
        match step {
            Step::Send(next) => {
                request = next;
                bytes = request.encode();
                ti += t.elapsed();
            }
            Step::Done(diff) => {
                ti += t.elapsed();
                break diff;
            }
        }
    };
    assert_eq!(diff.only_local.len(), only_local, "weft only_local");
    assert_eq!(diff.only_remote.len(), only_remote, "weft only_remote");
    row.cpu_initiator = Some(ti);
    row.cpu_responder = Some(tr);
    row
}

fn storage(keys: &[Key]) -> NegentropyStorageVector {
    let mut s = NegentropyStorageVector::with_capacity(keys.len());
    for k in keys {
        s.insert(0, Id::from_byte_array(*k)).expect("insert");
    }
    s.seal().expect("seal");
    s
}

fn negentropy(
    a: &NegentropyStorageVector,
    b: &NegentropyStorageVector,
    only_local: usize,
    only_remote: usize,
) -> Row {
    let mut ti = Duration::ZERO;
    let mut tr = Duration::ZERO;
    let t = Instant::now();
    let mut client = Negentropy::borrowed(a, 0).expect("client");
    let mut message = client.initiate().expect("initiate");
    ti += t.elapsed();
    let mut server = Negentropy::borrowed(b, 0).expect("server");
    let (mut have, mut need) = (Vec::new(), Vec::new());
    let mut row = Row {
        bytes_out: 0,
        bytes_in: 0,
        round_trips: 0,
        largest: 0,
        cpu_initiator: None,
        cpu_responder: None,
    };
    loop {
        row.round_trips += 1;
        row.bytes_out += message.len();
        row.largest = row.largest.max(message.len());
        let t = Instant::now();
        let reply = server.reconcile(&message).expect("reconcile");
        tr += t.elapsed();
        row.bytes_in += reply.len();
        row.largest = row.largest.max(reply.len());
        let t = Instant::now();
        let next = client
            .reconcile_with_ids(&reply, &mut have, &mut need)
            .expect("reconcile_with_ids");
        ti += t.elapsed();
        match next {
            Some(m) => message = m,
            None => break,
        }
    }
    assert_eq!(have.len(), only_local, "negentropy have");
    assert_eq!(need.len(), only_remote, "negentropy need");
    row.cpu_initiator = Some(ti);
    row.cpu_responder = Some(tr);
    row
}

/// The upstream design: one request with the 256 depth-8 bucket hashes (32 bytes each),
/// then every id of every differing bucket, 32 bytes each, in each direction.
fn upstream(a: &Tree, b: &Tree) -> Row {
    let ha = a.subtree_hashes_at(8);
    let hb = b.subtree_hashes_at(8);
    let mut out = ha.len() * 32;
    let mut back = 0;
    let hash_of = |v: &[(sync_smt::Prefix, sync_smt::Hash)], p: &sync_smt::Prefix| {
        v.iter().find(|(q, _)| q == p).map(|(_, h)| *h)
    };
    let mut prefixes: Vec<sync_smt::Prefix> = ha.iter().chain(hb.iter()).map(|(p, _)| *p).collect();
    prefixes.sort_by_key(|p| *p.bits());
    prefixes.dedup();
    for p in prefixes {
        if hash_of(&ha, &p) != hash_of(&hb, &p) {
            out += a.count_under(&p) * 32;
            back += b.count_under(&p) * 32;
        }
    }
    Row {
        bytes_out: out,
        bytes_in: back,
        round_trips: 1,
        largest: out.max(back),
        cpu_initiator: None,
        cpu_responder: None,
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "n/a".to_string(),
        |d| format!("{:.2}", d.as_secs_f64() * 1e3),
    )
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn main() {
    let ns: Vec<u64> = {
        let args: Vec<u64> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if args.is_empty() {
            vec![10_000, 100_000, 1_000_000]
        } else {
            args
        }
    };

    // Build time and memory at the largest N.
    let n = *ns.iter().max().unwrap_or(&1_000_000);
    // RSS is read before anything else is allocated, so that freed memory the allocator
    // keeps does not hide the tree's growth; the sorted key list itself is counted out.
    let before = rss_bytes();
    let mut keys: Vec<Key> = (0..n).map(key).collect();
    keys.sort_unstable();
    let t = Instant::now();
    let tree = Tree::from_sorted(&keys).expect("sorted");
    let build = t.elapsed();
    let after = rss_bytes();
    println!("| N | build ms | heap bytes/key (estimate) | RSS growth bytes/key |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {n} | {:.0} | {:.1} | {:.1} |",
        build.as_secs_f64() * 1e3,
        tree.heap_bytes() as f64 / n as f64,
        after.saturating_sub(before + keys.len() * 32) as f64 / n as f64,
    );
    drop(tree);
    // The same keys inserted one at a time, in hash (random) order: bucket vectors grow by
    // doubling, so they hold spare capacity.
    let t = Instant::now();
    let mut grown = Tree::new();
    for i in 0..n {
        grown.insert(key(i));
    }
    let insert_all = t.elapsed();
    assert_eq!(
        grown.root(),
        Tree::from_sorted(&keys).expect("sorted").root()
    );
    println!(
        "| {n} by single inserts | {:.0} | {:.1} | n/a |",
        insert_all.as_secs_f64() * 1e3,
        grown.heap_bytes() as f64 / n as f64,
    );
    drop(grown);
    drop(keys);
    println!();

    println!(
        "| N | d | impl | bytes I→R | bytes R→I | total | vs negentropy | round trips | largest msg | CPU initiator ms | CPU responder ms |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &ns {
        let mut base: Vec<Key> = (0..n).map(key).collect();
        base.sort_unstable();
        let tree_a = Tree::from_sorted(&base).expect("sorted");
        let storage_a = storage(&base);
        let mut ds = vec![0, 1, 10, 100, 1000, n / 100, n / 10];
        ds.sort_unstable();
        ds.dedup();
        for d in ds {
            let removed = d / 2;
            let added = d - removed;
            // Remove every (n / removed)-th key and add fresh ones: uniform over the key space.
            let stride = n.checked_div(removed).unwrap_or(0);
            let mut b_keys: Vec<Key> = base
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    !(stride > 0
                        && (*i as u64).is_multiple_of(stride)
                        && (*i as u64) / stride < removed)
                })
                .map(|(_, k)| *k)
                .collect();
            b_keys.extend((n..n + added).map(key));
            b_keys.sort_unstable();
            let tree_b = Tree::from_sorted(&b_keys).expect("sorted");
            let storage_b = storage(&b_keys);
            let (r_local, r_remote) = (
                usize::try_from(removed).unwrap_or(0),
                usize::try_from(added).unwrap_or(0),
            );

            let neg = negentropy(&storage_a, &storage_b, r_local, r_remote);
            let ours = weft(&tree_a, &tree_b, r_local, r_remote);
            let up = upstream(&tree_a, &tree_b);
            for (name, row) in [("weft", &ours), ("negentropy", &neg), ("upstream d8", &up)] {
                let ratio = if neg.total() == 0 {
                    "-".to_string()
                } else {
                    format!("{:.2}", row.total() as f64 / neg.total() as f64)
                };
                println!(
                    "| {n} | {d} | {name} | {} | {} | {} | {ratio} | {} | {} | {} | {} |",
                    row.bytes_out,
                    row.bytes_in,
                    row.total(),
                    row.round_trips,
                    row.largest,
                    ms(row.cpu_initiator),
                    ms(row.cpu_responder),
                );
            }
        }
        drop(tree_a);
        drop(storage_a);
    }
}
