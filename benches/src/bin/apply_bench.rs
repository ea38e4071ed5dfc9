//! CPU per applied message, in process: what the node pays for each pushed message and
//! B for each pulled one, without HTTP, compression or the other end. Printed as a
//! markdown table for BENCHMARKS.md.
//!
//! Usage:
//!
//! ```text
//! cargo run --release -p benches --bin apply_bench -- --n 100000 --batch 1000
//! cargo run --release -p benches --bin apply_bench -- --n 100000 --updates 50
//! cargo run --release -p benches --features mimalloc --bin apply_bench -- --n 100000
//! ```
//!
//! A writes N records of `wire_bench`'s workload (about 210 bytes of JSON each) with
//! `Replica::write_batch`; its log is read into memory in pages of `--batch` entries;
//! then an empty durable fjall replica (synced commits, as the node and B) applies the
//! pages one by one with `Replica::apply_with_positions`, as a node applies a push and
//! a replica a pulled page. The applying thread's CPU time
//! (`/proc/thread-self/schedstat`) is counted around each call, so other processes on a
//! shared machine change the wall time, not the CPU per message; fjall's background
//! flushes and compactions run on their own threads and are not counted.
//!
//! `--updates K` then runs K rounds of `wire_bench`'s d = 100: A writes new versions
//! of 100 records spread over the N, and B applies them in one batch (as a pulled page
//! of 100); the mean CPU time per message of those applies, and their wall time per
//! message (p10 / median / p90).
//! `--features mimalloc` makes the process allocate with mimalloc, as `weft` does.

// A bench binary's output is its result: it prints tables on stdout by design.
#![allow(clippy::print_stdout)]
// Counts and durations are far below the truncation limits on a 64-bit host.
#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use benches::workload_write;
use sync_engine::{Origin, Replica, WriteBatch};
use sync_ledger::{Durability, LogQuery, LogRead};
use sync_types::*;

fn tenant() -> TenantId {
    TenantId::new("did:example:wire").unwrap()
}
fn protocol() -> ProtocolName {
    ProtocolName::new("https://example.com/docs").unwrap()
}
fn doc() -> ProtocolPath {
    ProtocolPath::new("doc").unwrap()
}
fn author() -> PrincipalId {
    PrincipalId::new("did:example:wire").unwrap()
}

/// CPU time of the calling thread so far.
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

struct Options {
    n: u64,
    batch: usize,
    buffered: bool,
    updates: u64,
}

fn options() -> Options {
    let mut o = Options {
        n: 100_000,
        batch: 1_000,
        buffered: false,
        updates: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--n" => o.n = it.next().and_then(|v| v.parse().ok()).expect("--n N"),
            "--batch" => o.batch = it.next().and_then(|v| v.parse().ok()).expect("--batch N"),
            "--buffered" => o.buffered = true,
            "--updates" => {
                o.updates = it.next().and_then(|v| v.parse().ok()).expect("--updates K");
            }
            other => panic!("unknown option {other}"),
        }
    }
    o
}

fn main() {
    let o = options();
    let dir_a = tempfile::tempdir().unwrap();
    let a = Replica::builder()
        .durability(Durability::Buffered)
        .open(dir_a.path())
        .unwrap();
    let types = vec![TypeRule {
        path: doc(),
        data_bytes_max: None,
    }];
    a.configure(&tenant(), &protocol(), types, vec![], &author())
        .unwrap();
    let mut n = 0;
    while n < o.n {
        write_records(&a, (n..(n + 1_000).min(o.n)).map(|i| (i, 0)));
        n = (n + 1_000).min(o.n);
    }
    let mut pages: Vec<Vec<(Message, Option<Vec<u8>>)>> = Vec::new();
    let mut after = None;
    loop {
        let LogRead::Page(page) = a
            .ledger()
            .read_log(&tenant(), &LogQuery::after(after, o.batch))
            .unwrap()
        else {
            panic!("a gap in a fresh log");
        };
        after = page.next;
        let more = page.has_more;
        pages.push(
            page.entries
                .into_iter()
                .map(|e| (e.message, e.data))
                .collect(),
        );
        if !more {
            break;
        }
    }
    let messages: usize = pages.iter().map(Vec::len).sum();

    let dir_b = tempfile::tempdir().unwrap();
    let durability = if o.buffered {
        Durability::Buffered
    } else {
        Durability::SyncData
    };
    let b = Replica::builder()
        .durability(durability)
        .open(dir_b.path())
        .unwrap();
    let (mut cpu, mut wall) = (Duration::ZERO, Duration::ZERO);
    let commits = pages.len();
    for page in pages {
        let len = page.len();
        let (c0, w0) = (thread_cpu(), Instant::now());
        let applied = b
            .apply_with_positions(&tenant(), page, Origin::Remote(None))
            .unwrap();
        wall += w0.elapsed();
        cpu += thread_cpu() - c0;
        assert_eq!(applied.len(), len);
        assert!(
            applied
                .iter()
                .all(|(o, t)| *o == ApplyOutcome::Applied && t.is_some()),
            "every message is newly applied"
        );
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / messages as f64;
    println!(
        "| messages | batch | commits | durability | CPU (s) | CPU µs/message | wall (s) | wall µs/message |"
    );
    println!("|---:|---:|---:|---|---:|---:|---:|---:|");
    println!(
        "| {messages} | {} | {commits} | {} | {:.2} | {:.1} | {:.2} | {:.1} |",
        o.batch,
        if o.buffered { "buffered" } else { "synced" },
        cpu.as_secs_f64(),
        per(cpu),
        wall.as_secs_f64(),
        per(wall),
    );
    update_rounds(&a, &b, after, o.n, o.updates);
}

/// Messages of one update round, as `wire_bench`'s d = 100.
const UPDATE_ROUND_MESSAGES: u64 = 100;

/// `rounds` rounds of d = 100 updates: A updates 100 records spread over its `n` (new
/// versions of existing records, as `wire_bench`'s d = 100), B applies them in one
/// batch, as it would a pulled page. Prints the mean CPU time per message of B's
/// applies and the spread of their wall time.
fn update_rounds(a: &Replica, b: &Replica, mut after: Option<ProgressToken>, n: u64, rounds: u64) {
    if rounds == 0 {
        return;
    }
    let (mut cpus, mut walls) = (Vec::new(), Vec::new());
    for v in 1..=rounds {
        let spread = (n / UPDATE_ROUND_MESSAGES).max(1);
        write_records(
            a,
            (0..UPDATE_ROUND_MESSAGES).map(|k| ((k * spread + v) % n.max(1), v)),
        );
        let LogRead::Page(page) = a
            .ledger()
            .read_log(
                &tenant(),
                &LogQuery::after(after, UPDATE_ROUND_MESSAGES as usize),
            )
            .unwrap()
        else {
            panic!("a gap in a fresh log");
        };
        after = page.next;
        let items: Vec<_> = page
            .entries
            .into_iter()
            .map(|e| (e.message, e.data))
            .collect();
        let len = items.len();
        let (c0, w0) = (thread_cpu(), Instant::now());
        let applied = b
            .apply_with_positions(&tenant(), items, Origin::Remote(None))
            .unwrap();
        walls.push(w0.elapsed().as_secs_f64() * 1e6 / len as f64);
        cpus.push((thread_cpu() - c0).as_secs_f64() * 1e6 / len as f64);
        assert!(applied.iter().all(|(o, _)| *o == ApplyOutcome::Applied));
    }
    let q = |v: &mut Vec<f64>, f: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * f).round() as usize]
    };
    // The thread's CPU time moves in scheduler ticks (a few ms, as long as a round): one
    // round's is not to be trusted, their sum over many rounds is.
    let cpu = cpus.iter().sum::<f64>() / cpus.len() as f64;
    println!(
        "\n{rounds} rounds of {UPDATE_ROUND_MESSAGES} updates applied in one batch each: CPU {cpu:.1} µs a message (mean); wall µs a message:\n"
    );
    println!("| p10 | median | p90 |");
    println!("|---:|---:|---:|");
    println!(
        "| {:.1} | {:.1} | {:.1} |",
        q(&mut walls, 0.1),
        q(&mut walls, 0.5),
        q(&mut walls, 0.9)
    );
}

/// Writes version `v` of record `n` for each `(n, v)`, in one batch on `a`.
fn write_records(a: &Replica, records: impl Iterator<Item = (u64, u64)>) {
    let mut batch = WriteBatch::new();
    for (n, v) in records {
        batch.write(workload_write(n, v, author()));
    }
    a.write_batch(&tenant(), batch).unwrap();
}
