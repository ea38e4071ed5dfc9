//! Durable commits of batches of 1,000 messages: fjall and PostgreSQL in the same run,
//! with CPU time per message of the bench process and of the PostgreSQL server (every
//! process of the cluster, from `/proc/<pid>/stat`; children that exited during the run
//! are counted through the postmaster's `cutime`/`cstime`).
//!
//! `cargo bench -p sync-ledger-pg --bench fjall_vs_pg` (add `-- --quick` for a short
//! run). PostgreSQL is a throwaway cluster on 127.0.0.1 started by the tests' support
//! code (fsync on, default settings otherwise), or the server named by
//! `WEFT_TEST_PG_URL`, which must run on this machine for the CPU figures.
//!
//! The messages are those of `ledger_bench`'s commit rows: initial writes of new
//! records, 32 bytes of inline data, two protocols alternating, one tenant; each
//! message writes six rows. The last row applies from four threads at once, each to a
//! tenant of its own, on one PostgreSQL store. The PostgreSQL rows run twice: on the
//! current schema (typed value columns), then on schema 1 (values whole in `v`).

#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use sync_ledger::Ledger;
use sync_ledger::store::Durability;
use sync_types::*;

const BATCH: usize = 1_000;
const THREADS: usize = 4;

fn protocols() -> [ProtocolName; 2] {
    [
        ProtocolName::new("https://example.com/notes").unwrap(),
        ProtocolName::new("https://example.com/other").unwrap(),
    ]
}

/// A small message: an initial write of a new record with 32 bytes of inline data.
fn small_write(t: &TenantId, i: u64) -> (Message, Option<Vec<u8>>) {
    let p = protocols()[usize::from(i % 2 == 1)].clone();
    let record_id = RecordId::from_natural_key(t, &p, &i.to_be_bytes());
    let mut data = [0u8; 32];
    data[..8].copy_from_slice(&i.to_le_bytes());
    (
        Message::Write(Write {
            tenant: t.clone(),
            record_id,
            parent_id: None,
            protocol: p,
            path: ProtocolPath::new("note").unwrap(),
            context_id: ContextId::root(record_id),
            prev: None,
            timestamp: Hlc {
                wall_ms: 1_700_000_000_000 + i,
                counter: 0,
                node: NodeId(1),
            },
            author: PrincipalId::new("did:example:bench").unwrap(),
            data: Some(DataRef::of(&data)),
        }),
        Some(data.to_vec()),
    )
}

/// `(utime + stime, cutime + cstime, ppid)` of a process, in seconds (100 ticks per
/// second on Linux).
fn proc_cpu(pid: u32) -> Option<(f64, f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let ppid = f.get(1)?.parse().ok()?;
    Some(((n(11) + n(12)) / 100.0, (n(13) + n(14)) / 100.0, ppid))
}

fn own_cpu() -> f64 {
    proc_cpu(std::process::id()).map_or(0.0, |(own, _, _)| own)
}

/// CPU seconds of the whole cluster so far: the postmaster, its live children, and
/// the children it has reaped.
fn server_cpu(postmaster: u32) -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((own, reaped, ppid)) = proc_cpu(pid) {
            if pid == postmaster {
                total += own + reaped;
            } else if ppid == postmaster {
                total += own;
            }
        }
    }
    total
}

fn postmaster_pid(url: &str) -> u32 {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let row = client
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
            &[],
        )
        .unwrap();
    let checkpointer = u32::try_from(row.get::<_, i32>(0)).unwrap();
    proc_cpu(checkpointer)
        .expect("the server runs on this machine")
        .2
}

/// One apply's messages with their inline data.
type Batch = Vec<(Message, Option<Vec<u8>>)>;

struct Run {
    rate: f64,
    client_us: f64,
    server_us: Option<f64>,
}

/// Applies `n` messages per thread in batches of [`BATCH`] with `sync_data`, each
/// thread to a tenant of its own named after `label`.
fn run(ledger: &Ledger, label: &str, threads: usize, n: u64, postmaster: Option<u32>) -> Run {
    let work: Vec<(TenantId, Vec<Batch>)> = (0..threads)
        .map(|i| {
            let t = TenantId::new(format!("did:example:{label}{i}")).unwrap();
            let messages: Vec<_> = (0..n).map(|m| small_write(&t, m)).collect();
            let batches = messages.chunks(BATCH).map(<[_]>::to_vec).collect();
            (t, batches)
        })
        .collect();
    let (cpu0, server0) = (own_cpu(), postmaster.map(server_cpu));
    let start = Instant::now();
    std::thread::scope(|s| {
        for (t, batches) in work {
            s.spawn(move || {
                for b in batches {
                    let out = ledger.apply(&t, b, Durability::SyncData).unwrap();
                    assert!(out.iter().all(|a| a.outcome.is_applied()));
                }
            });
        }
    });
    let elapsed: Duration = start.elapsed();
    let total = n as f64 * threads as f64;
    Run {
        rate: total / elapsed.as_secs_f64(),
        client_us: (own_cpu() - cpu0) / total * 1e6,
        server_us: postmaster
            .zip(server0)
            .map(|(pm, s0)| (server_cpu(pm) - s0) / total * 1e6),
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u64 = if quick { 20_000 } else { 100_000 };
    println!(
        "| backend | writers | messages | messages/s | bench CPU µs/msg | server CPU µs/msg |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let dir = tempfile::tempdir().unwrap();
    let fjall = Ledger::open_fjall(dir.path()).unwrap();
    let r = run(&fjall, "one", 1, n, None);
    println!(
        "| fjall | 1 | {n} | {:.0} | {:.1} | - |",
        r.rate, r.client_us
    );
    drop(fjall);

    let url = support::url();
    let postmaster = postmaster_pid(&url);
    // The current schema (typed value columns), then schema 1 (values whole in `v`)
    // for comparison, each on a fresh schema of the same server.
    for version in [sync_ledger_pg::schema::SCHEMA_VERSION, 1] {
        let schema = support::fresh_schema("bench");
        let store = sync_ledger_pg::PgStore::builder(&url)
            .schema(&schema)
            .schema_version(version)
            .open()
            .unwrap();
        let pg = Ledger::open(store).unwrap();
        let r = run(&pg, "one", 1, n, Some(postmaster));
        println!(
            "| postgres, schema {version} | 1 | {n} | {:.0} | {:.1} | {:.1} |",
            r.rate,
            r.client_us,
            r.server_us.unwrap_or(f64::NAN)
        );
        let per_thread = n / THREADS as u64;
        let r = run(&pg, "many", THREADS, per_thread, Some(postmaster));
        println!(
            "| postgres, schema {version} | {THREADS} (a tenant each) | {} | {:.0} | {:.1} | {:.1} |",
            per_thread * THREADS as u64,
            r.rate,
            r.client_us,
            r.server_us.unwrap_or(f64::NAN)
        );
    }
}
