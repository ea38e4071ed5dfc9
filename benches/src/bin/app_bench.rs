//! An application's import: N records written through a durable fjall replica one
//! `put` at a time, then the same N through `Replica::write_batch` in batches, printed
//! as a markdown table for BENCHMARKS.md.
//!
//! Usage: `cargo run --release -p benches --bin app_bench [-- --records N] [--batch-len B]`
//! (defaults: 100,000 records, batches of 1,000; `--batches-only` skips the singles;
//! `--facade` measures the `weft` crate's import, key index and queries instead). Records are ~190-byte JSON documents
//! under natural keys; each run uses a fresh store in a temporary directory, with the
//! replica's default durability (`sync_data` on every commit).

// A bench binary's output is its result: it prints tables on stdout by design.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use sync_engine::{RecordKey, Replica, WriteBatch, WriteRequest};
use sync_types::*;

fn tenant() -> TenantId {
    TenantId::new("did:example:bench").unwrap()
}
fn protocol() -> ProtocolName {
    ProtocolName::new("https://example.com/todos").unwrap()
}
fn path() -> ProtocolPath {
    ProtocolPath::new("todo").unwrap()
}
fn author() -> PrincipalId {
    PrincipalId::new("did:example:bench").unwrap()
}

fn body(n: usize) -> Vec<u8> {
    format!(
        r#"{{"_id":"todo-{n:08}","type":"todo","n":{n},"v":1,"title":"Item number {n}","body":"Some text that makes the record about as long as a real one","updatedAt":"2026-12-03T06:00:00Z"}}"#
    )
    .into_bytes()
}

fn open(dir: &std::path::Path) -> Replica {
    let r = Replica::open(dir).unwrap();
    r.configure(
        &tenant(),
        &protocol(),
        vec![TypeRule {
            path: path(),
            data_bytes_max: None,
        }],
        vec![],
        &author(),
    )
    .unwrap();
    r
}

fn singles(records: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let start = Instant::now();
    for n in 0..records {
        let key = format!("todo-{n:08}");
        r.put(
            &tenant(),
            &protocol(),
            &path(),
            key.as_bytes(),
            body(n),
            &author(),
        )
        .unwrap();
    }
    let took = start.elapsed();
    r.close().unwrap();
    took
}

fn batches(records: usize, batch_len: usize) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let r = open(dir.path());
    let start = Instant::now();
    let mut n = 0;
    while n < records {
        let mut batch = WriteBatch::new();
        for m in n..(n + batch_len).min(records) {
            batch.write(WriteRequest {
                protocol: protocol(),
                path: path(),
                key: RecordKey::Natural(format!("todo-{m:08}").into_bytes()),
                parent: None,
                data: Some(body(m)),
                author: author(),
            });
        }
        n += batch.len();
        let receipts = r.write_batch(&tenant(), batch).unwrap();
        assert!(receipts.iter().all(|rc| rc.won()));
    }
    let took = start.elapsed();
    // Every record is there.
    assert!(
        r.get_by_key(
            &tenant(),
            &protocol(),
            format!("todo-{:08}", records - 1).as_bytes()
        )
        .unwrap()
        .is_some()
    );
    r.close().unwrap();
    took
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let records = arg("--records", 100_000);
    let batch_len = arg("--batch-len", 1000);
    // `--facade` measures the `weft` crate's queries over a collection of this size.
    if std::env::args().any(|a| a == "--facade") {
        facade(records, batch_len);
        return;
    }
    // `--batches-only` skips the singles, to profile the batch path alone.
    if std::env::args().any(|a| a == "--batches-only") {
        let batched = batches(records, batch_len);
        println!("batches: {:.2} s", batched.as_secs_f64());
        return;
    }
    let single = singles(records);
    let batched = batches(records, batch_len);
    let rate = |d: Duration| records as f64 / d.as_secs_f64();
    println!("| {records} records, durable fjall replica | wall time | records/s |");
    println!("|---|---|---|");
    println!(
        "| one `put` each | {:.2} s | {:.0} |",
        single.as_secs_f64(),
        rate(single)
    );
    println!(
        "| `write_batch`, {batch_len} per batch | {:.2} s | {:.0} |",
        batched.as_secs_f64(),
        rate(batched)
    );
    println!(
        "\nbatch speed-up: {:.1}x",
        single.as_secs_f64() / batched.as_secs_f64()
    );
}

/// The facade: import through `Transaction`s, then the key index's first follow, a page
/// of 100 by prefix in both orders, the page after a cursor, and a count.
fn facade(records: usize, batch_len: usize) {
    use weft::{Query, Transaction, Weft};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let db = Weft::open(dir.path(), "bench").await.unwrap();
        let todos = db.collection::<serde_json::Value>("todos").await.unwrap();
        let start = Instant::now();
        let mut n = 0;
        while n < records {
            let mut tx = Transaction::new();
            for m in n..(n + batch_len).min(records) {
                let value: serde_json::Value = serde_json::from_slice(&body(m)).unwrap();
                tx.put(&todos, &format!("todo-{m:08}"), &value);
            }
            n += tx.len();
            db.commit(tx).await.unwrap();
        }
        let import = start.elapsed();
        let timed = |label: &'static str, d: Duration| {
            println!("| {label} | {:.2} ms |", d.as_secs_f64() * 1000.0);
        };
        println!("| {records} records through `weft` (batches of {batch_len}) | time |");
        println!("|---|---|");
        timed("import (transactions)", import);
        let start = Instant::now();
        assert_eq!(todos.count().await.unwrap(), records as u64);
        timed(
            "first count (the key index follows the whole log)",
            start.elapsed(),
        );
        let start = Instant::now();
        assert_eq!(todos.count().await.unwrap(), records as u64);
        timed("count, index current", start.elapsed());
        let start = Instant::now();
        let page = todos
            .query(Query::prefix("todo-0005").limit(100))
            .await
            .unwrap();
        timed("page of 100 by prefix, forward", start.elapsed());
        let start = Instant::now();
        let next = todos
            .query(
                Query::prefix("todo-0005")
                    .limit(100)
                    .after(page.next.unwrap()),
            )
            .await
            .unwrap();
        timed("the next page (cursor)", start.elapsed());
        assert_eq!(next.entries.len(), 100);
        let start = Instant::now();
        let last = todos
            .query(Query::all().reverse().limit(100))
            .await
            .unwrap();
        timed("last 100 of the collection, reverse", start.elapsed());
        assert_eq!(last.entries[0].key, format!("todo-{:08}", records - 1));
        db.close().await.unwrap();
    });
}
