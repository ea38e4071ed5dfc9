//! Bytes on disk for the workload of issue 19: A writes N records of ~200 bytes of JSON
//! (`{_id, type, n, v, title, body, updatedAt}`), pushes them to a node, an empty B
//! pulls them; then each store's bytes on disk, per record and per byte of JSON
//! payload, broken down by partition. Printed as markdown tables for BENCHMARKS.md.
//!
//! Usage:
//!
//! ```text
//! cargo run --release -p benches --bin store_bench -- --n 100000
//! cargo run --release -p benches --bin store_bench -- --n 1000000
//! ```
//!
//! Options: `--n N` (records A writes, default 100,000).
//!
//! A, the node and B are durable fjall replicas (the product's defaults: `sync_data` on
//! every commit) in this process; the node is served over loopback HTTP and A and B are
//! `Engine`s over `HttpConnector`. A writes with `Replica::write_batch`, 1,000 records
//! per commit. Sizes are taken twice: "open" is the directory right after the syncs,
//! journal included, while the replicas are still open; "settled" is after a clean close
//! (`Replica::close` flushes every memtable) and a reopen of the directory with fjall,
//! once its background compactions are done, per partition (`Keyspace::disk_space`,
//! its tables and blob files) with the journal and fjall's own files apart.

// A bench binary's output is its result: it prints tables on stdout by design.
#![allow(clippy::print_stdout)]
// Counts and sizes are far below the truncation limits on a 64-bit host.
#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{workload_record, workload_write};
use sync_engine::sync::HttpConnector;
use sync_engine::{Engine, Identity, Replica, ReplicaHandler, WriteBatch};
use sync_transport::{Claims, ServerConfig, Token, TokenKey, serve};
use sync_types::*;

const FAR_FUTURE_MS: u64 = 4_000_000_000_000;
/// Records per commit of A's write phase.
const WRITE_BATCH_RECORDS: u64 = 1_000;
/// How long the store must show no compaction running before it counts as settled.
const SETTLE_QUIET: Duration = Duration::from_secs(2);
/// Longest wait for the store to settle.
const SETTLE_MAX: Duration = Duration::from_secs(600);

fn tenant() -> TenantId {
    TenantId::new("did:example:store").unwrap()
}
fn protocol() -> ProtocolName {
    ProtocolName::new("https://example.com/docs").unwrap()
}
fn doc() -> ProtocolPath {
    ProtocolPath::new("doc").unwrap()
}
fn author() -> PrincipalId {
    PrincipalId::new("did:example:store").unwrap()
}
fn key() -> TokenKey {
    TokenKey::derive(b"store bench")
}

fn engine(r: &Replica, endpoint: &Endpoint) -> Engine<Arc<HttpConnector>> {
    let engine = Engine::builder(r.clone(), Arc::new(HttpConnector::default())).build();
    let token = Token::issue(
        &key(),
        Claims::owner(
            tenant(),
            author(),
            GrantId::new("bench").unwrap(),
            FAR_FUTURE_MS,
        ),
    );
    engine
        .register_identity(Identity::owner(
            tenant(),
            vec![endpoint.clone()],
            token.to_string(),
        ))
        .unwrap();
    engine
}

fn configure(r: &Replica) {
    let types = vec![TypeRule {
        path: doc(),
        data_bytes_max: None,
    }];
    r.configure(&tenant(), &protocol(), types, vec![], &author())
        .unwrap();
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// One store's settled sizes.
struct Settled {
    /// (partition, bytes of its live tables and blob files, entries, bytes of every
    /// file in its directory).
    partitions: Vec<(String, u64, u64, u64)>,
    journal: u64,
    total: u64,
}

/// Reopens a closed store's directory with fjall, waits for its compactions, and
/// measures each partition.
fn settle(dir: &Path) -> Settled {
    let db = fjall::Database::builder(dir).open().unwrap();
    let mut handles = Vec::new();
    for name in db.list_keyspace_names() {
        let name = name.to_string();
        let ks = db
            .keyspace(&name, fjall::KeyspaceCreateOptions::default)
            .unwrap();
        handles.push((name, ks));
    }
    let start = Instant::now();
    let mut quiet_since = Instant::now();
    while start.elapsed() < SETTLE_MAX {
        if db.active_compactions() > 0 || db.outstanding_flushes() > 0 {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= SETTLE_QUIET {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut partitions: Vec<(String, u64, u64, u64)> = handles
        .iter()
        .map(|(name, ks)| {
            (
                name.clone(),
                ks.disk_space(),
                ks.len().unwrap() as u64,
                dir_bytes(ks.path()),
            )
        })
        .filter(|(_, bytes, _, _)| *bytes > 0)
        .collect();
    partitions.sort_by_key(|p| std::cmp::Reverse(p.1));
    let journal = db.journal_disk_space().unwrap();
    drop(handles);
    drop(db);
    Settled {
        partitions,
        journal,
        total: dir_bytes(dir),
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn n_arg() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    let mut n = 100_000;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--n" => {
                n = args[i + 1].parse().unwrap();
                i += 1;
            }
            other => panic!("unknown option {other}"),
        }
        i += 1;
    }
    n
}

fn main() {
    let n = n_arg();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dirs = [
        ("A", tempfile::tempdir().unwrap()),
        ("node", tempfile::tempdir().unwrap()),
        ("B", tempfile::tempdir().unwrap()),
    ];
    let payload: u64 = (0..n).map(|i| workload_record(i, 0).1.len() as u64).sum();
    let mut open_sizes = Vec::new();
    rt.block_on(async {
        let rn = Replica::open(dirs[1].1.path()).unwrap();
        let server = serve(
            Arc::new(ReplicaHandler::new(rn.clone())),
            ServerConfig::new(key()),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let endpoint = Endpoint::new(format!("http://{}", server.local_addr())).unwrap();
        let ra = Replica::open(dirs[0].1.path()).unwrap();
        configure(&ra);
        let start = Instant::now();
        let mut i = 0;
        while i < n {
            let mut batch = WriteBatch::new();
            for k in i..(i + WRITE_BATCH_RECORDS).min(n) {
                batch.write(workload_write(k, 0, author()));
            }
            i += batch.len() as u64;
            ra.write_batch(&tenant(), batch).unwrap();
        }
        println!(
            "A wrote {n} records in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        let rb = Replica::open(dirs[2].1.path()).unwrap();
        let ea = engine(&ra, &endpoint);
        let eb = engine(&rb, &endpoint);
        let start = Instant::now();
        let report = ea.sync_once().await;
        assert!(report.is_ok(), "{report:?}");
        println!(
            "A pushed {} in {:.1} s",
            report.pushed().messages,
            start.elapsed().as_secs_f64()
        );
        let start = Instant::now();
        let mut pulled = 0;
        while pulled < n + 1 {
            let report = eb.sync_once().await;
            assert!(report.is_ok(), "{report:?}");
            pulled += report.pulled().messages;
        }
        println!(
            "B pulled {pulled} in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        for (name, dir) in &dirs {
            open_sizes.push((*name, dir_bytes(dir.path())));
        }
        drop((ea, eb));
        server.shutdown().await;
        for r in [ra, rn, rb] {
            r.close().unwrap();
        }
    });
    drop(rt);

    println!();
    println!(
        "N = {n} records, {payload} bytes of JSON ({:.1} MiB, {:.0} bytes a record)",
        mib(payload),
        payload as f64 / n as f64
    );
    println!();
    println!(
        "| store | open, after the syncs (MiB) | settled (MiB) | bytes a record | bytes per payload byte |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut settled = Vec::new();
    for ((name, dir), (_, open)) in dirs.iter().zip(&open_sizes) {
        let s = settle(dir.path());
        println!(
            "| {name} | {:.1} | {:.1} | {:.0} | {:.2} |",
            mib(*open),
            mib(s.total),
            s.total as f64 / n as f64,
            s.total as f64 / payload as f64
        );
        settled.push((name, s));
    }
    for (name, s) in settled {
        println!();
        println!("{name}, settled:");
        println!();
        println!(
            "| partition | entries | MiB | bytes an entry | bytes a record | its directory (MiB) |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        let mut counted = s.journal;
        for (partition, bytes, entries, in_dir) in &s.partitions {
            counted += bytes;
            println!(
                "| {partition} | {entries} | {:.2} | {:.0} | {:.1} | {:.2} |",
                mib(*bytes),
                *bytes as f64 / (*entries).max(1) as f64,
                *bytes as f64 / n as f64,
                mib(*in_dir)
            );
        }
        println!(
            "| journal | | {:.2} | | {:.1} | |",
            mib(s.journal),
            s.journal as f64 / n as f64
        );
        let rest = s.total.saturating_sub(counted);
        println!(
            "| other files | | {:.2} | | {:.1} | |",
            mib(rest),
            rest as f64 / n as f64
        );
    }
}
