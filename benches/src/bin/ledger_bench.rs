//! Throughput and latency of `sync-ledger` on its fjall backend, printed as markdown
//! tables for BENCHMARKS.md.
//!
//! Usage: `cargo run --release -p benches --bin ledger_bench [-- --dir PATH] [--quick]`
//!
//! - commits: messages per second through `Ledger::apply` in batches of 1, 100 and
//!   1000, for each durability mode;
//! - log pages: time to read a page of 1000 entries, unfiltered and filtered by
//!   protocol;
//! - point reads: `get_message`, `record_head`, `has_message`;
//! - blobs: write (verified, synced) and read MB/s;
//! - reopen: time to open a ledger holding 1M messages and read its head, and to scan
//!   all 1M cids (what rebuilding a Merkle tree costs).
//!
//! Sections run by name only, for profiling the two targets: `target_commits`
//! (batches of 1000 with `sync_data`, with CPU time per message, which a shared
//! machine disturbs less than wall time) and `target_reads` (unfiltered pages of 1000
//! at 200,000 messages). `MEMTABLE_MIB=N` overrides the store's memtable size.

// A bench binary's output is its result: it prints tables on stdout by design.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sync_ledger::store::Durability;
use sync_ledger::{FjallStore, Ledger, LogQuery, LogRead, MemoryStore};
use sync_types::*;

fn tenant() -> TenantId {
    TenantId::new("did:example:bench").unwrap()
}

fn protocols() -> [ProtocolName; 2] {
    [
        ProtocolName::new("https://example.com/notes").unwrap(),
        ProtocolName::new("https://example.com/other").unwrap(),
    ]
}

fn configures() -> Vec<(Message, Option<Vec<u8>>)> {
    protocols()
        .into_iter()
        .map(|p| {
            let def = ProtocolDefinition::new(
                &p,
                vec![TypeRule {
                    path: ProtocolPath::new("note").unwrap(),
                    data_bytes_max: None,
                }],
                vec![],
            )
            .unwrap();
            (
                Message::Configure(Configure {
                    tenant: tenant(),
                    protocol: p,
                    definition: def,
                    timestamp: Hlc::ZERO,
                    author: PrincipalId::new("did:example:bench").unwrap(),
                }),
                None,
            )
        })
        .collect()
}

/// A small message: an initial write of a new record with 32 bytes of inline data,
/// alternating between two protocols.
fn small_write(i: u64) -> (Message, Option<Vec<u8>>) {
    let t = tenant();
    let p = protocols()[usize::from(i % 2 == 1)].clone();
    let record_id = RecordId::from_natural_key(&t, &p, &i.to_be_bytes());
    let mut data = [0u8; 32];
    data[..8].copy_from_slice(&i.to_le_bytes());
    (
        Message::Write(Write {
            tenant: t,
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

struct Dirs {
    base: PathBuf,
    n: u32,
}

impl Dirs {
    fn next(&mut self) -> PathBuf {
        self.n += 1;
        let p = self.base.join(format!("ledger-{}", self.n));
        let _ = std::fs::remove_dir_all(&p);
        p
    }
}

fn open(path: &Path) -> Ledger {
    let mut b = FjallStore::builder(path);
    if let Ok(m) = std::env::var("MEMTABLE_MIB") {
        b = b.memtable_bytes(m.parse::<u64>().unwrap() << 20);
    }
    Ledger::builder().seed(1).open(b.open().unwrap()).unwrap()
}

/// CPU time of this process so far (all threads, user and system), from
/// `/proc/self/stat`, in seconds; 0 where that file does not exist. Other engineers'
/// builds share the machine, so CPU time per message is steadier than wall time.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and
    // 15 of the whole line, in clock ticks (100 per second on Linux).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn commits(dirs: &mut Dirs, quick: bool) {
    println!("### Commits (small messages: initial writes, 32-byte inline data)\n");
    println!("| backend | batch | durability | messages | messages/s |");
    println!("|---|---:|---|---:|---:|");
    for batch in [1usize, 100, 1000] {
        for durability in Durability::ALL {
            let n: u64 = match (batch, durability) {
                (1, Durability::Buffered) => 20_000,
                (1, _) => 1_000,
                (100, Durability::Buffered) => 100_000,
                (100, _) => 50_000,
                _ => 300_000,
            };
            let n = if quick { n / 10 } else { n };
            let path = dirs.next();
            let ledger = open(&path);
            ledger
                .apply(&tenant(), configures(), Durability::SyncData)
                .unwrap();
            // Owned batches built before the clock starts: apply takes ownership.
            let batches: Vec<Vec<_>> = (0..n)
                .map(small_write)
                .collect::<Vec<_>>()
                .chunks(batch)
                .map(<[_]>::to_vec)
                .collect();
            let start = Instant::now();
            for b in batches {
                ledger.apply(&tenant(), b, durability).unwrap();
            }
            let took = start.elapsed();
            println!(
                "| fjall | {batch} | {durability} | {n} | {:.0} |",
                per_sec(n, took)
            );
            drop(ledger);
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    let n = if quick { 30_000 } else { 300_000 };
    let ledger = Ledger::builder().seed(1).open(MemoryStore::new()).unwrap();
    ledger
        .apply(&tenant(), configures(), Durability::SyncData)
        .unwrap();
    let messages: Vec<_> = (0..n).map(small_write).collect();
    let batches: Vec<Vec<_>> = messages.chunks(1000).map(<[_]>::to_vec).collect();
    drop(messages);
    let start = Instant::now();
    for b in batches {
        ledger.apply(&tenant(), b, Durability::SyncData).unwrap();
    }
    println!(
        "| memory | 1000 | sync_data | {n} | {:.0} |\n",
        per_sec(n, start.elapsed())
    );
}

/// Only the commit target: batches of 1000 with `sync_data` (for profiling).
fn target_commits(dirs: &mut Dirs, quick: bool) {
    let n: u64 = if quick { 30_000 } else { 300_000 };
    let path = dirs.next();
    // `BACKEND=memory`: the same commits on the in-memory store, which shows what the
    // ledger's own work costs without fjall's.
    let memory = std::env::var("BACKEND").as_deref() == Ok("memory");
    let ledger = if memory {
        Ledger::builder().seed(1).open(MemoryStore::new()).unwrap()
    } else {
        open(&path)
    };
    ledger
        .apply(&tenant(), configures(), Durability::SyncData)
        .unwrap();
    let batches: Vec<Vec<_>> = (0..n)
        .map(small_write)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(<[_]>::to_vec)
        .collect();
    // `DURABILITY=buffered` (or `sync_all`) to see what the disk's sync costs.
    let (durability, mode) = match std::env::var("DURABILITY").as_deref() {
        Ok("buffered") => (Durability::Buffered, "buffered"),
        Ok("sync_all") => (Durability::SyncAll, "sync_all"),
        _ => (Durability::SyncData, "sync_data"),
    };
    let start = Instant::now();
    let cpu = cpu_secs();
    for b in batches {
        ledger.apply(&tenant(), b, durability).unwrap();
    }
    let took = start.elapsed();
    let cpu = cpu_secs() - cpu;
    println!(
        "| {} | 1000 | {mode} | {n} | {:.0} | {:.1} µs |\n",
        if memory { "memory" } else { "fjall" },
        per_sec(n, took),
        cpu * 1e6 / n as f64
    );
    drop(ledger);
    let _ = std::fs::remove_dir_all(&path);
}

/// What fjall alone costs for the key shapes a message writes, without the ledger:
/// batches of 1000 "messages", `sync_data` per batch, each message inserting one key of
/// each letter of a shape. `L`: the log entry (`T pos`, 250 bytes); `P`: a sequential
/// index key (`T P pos`, a cid); `R`: a random key (`T cid`, a small value); `S`: a key
/// sequential within one of two ranges (`T P "note" 0x00 pos`, a cid); `Q`: a random key
/// that is read before it is written, as the merge reads a record's row (`T record`, a
/// 150-byte value). Layout 1 wrote `LPRRRR` per message (`msg`, `records`, `by_path` and
/// `by_context` keyed by a cid or record id); layout 2 writes `LPQRS` (`records` is the
/// `Q`; plus an `S` for a record with a parent). `LQR` is the least any layout that finds
/// a message by cid and a record by id can write. `SHAPES=LQR,QR` runs other shapes,
/// `MEMTABLE_KIB=` sets fjall's memtable size (16 MiB by default, as the ledger's).
fn fjall_ceiling(dirs: &mut Dirs, quick: bool) {
    let n: u64 = if quick { 30_000 } else { 300_000 };
    println!(
        "| key shapes per message | keys | messages/s | CPU per message |\n|---|---:|---:|---:|"
    );
    let shapes = std::env::var("SHAPES").unwrap_or_else(|_| "LPRRRR,LPQRS,LPQR,LQR,LPR,LP".into());
    let memtable: u64 = std::env::var("MEMTABLE_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(16 << 20, |kib: u64| kib << 10);
    for shape in shapes.split(',') {
        let path = dirs.next();
        let db = fjall::Database::builder(&path).open().unwrap();
        let spaces: Vec<fjall::Keyspace> = (0..shape.len())
            .map(|i| {
                db.keyspace(&format!("k{i}"), || {
                    fjall::KeyspaceCreateOptions::default().max_memtable_size(memtable)
                })
                .unwrap()
            })
            .collect();
        let start = Instant::now();
        let cpu = cpu_secs();
        for batch in 0..n / 1000 {
            // As the ledger does: each keyspace's keys inserted in key order.
            let mut writes: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); spaces.len()];
            for i in 0..1000 {
                let pos = batch * 1000 + i + 1;
                let cid = *blake3::hash(&pos.to_le_bytes()).as_bytes();
                for (kind, out) in shape.chars().zip(&mut writes) {
                    let mut key = vec![1u8];
                    let value: Vec<u8> = match kind {
                        'L' => {
                            key.extend_from_slice(&pos.to_be_bytes());
                            vec![7; 250]
                        }
                        'P' => {
                            key.push(u8::from(pos % 2 == 0));
                            key.extend_from_slice(&pos.to_be_bytes());
                            cid.to_vec()
                        }
                        'S' => {
                            key.push(u8::from(pos % 2 == 0));
                            key.extend_from_slice(b"note\0");
                            key.extend_from_slice(&pos.to_be_bytes());
                            cid.to_vec()
                        }
                        'Q' => {
                            // Another random id than the cid, as a record id is.
                            key.extend_from_slice(blake3::hash(&cid).as_bytes());
                            vec![5; 150]
                        }
                        _ => {
                            key.extend_from_slice(&cid);
                            vec![3; 9]
                        }
                    };
                    out.push((key, value));
                }
            }
            let mut wb = db.batch().durability(Some(fjall::PersistMode::SyncData));
            for ((ks, mut kvs), kind) in spaces.iter().zip(writes).zip(shape.chars()) {
                kvs.sort_unstable();
                for (k, v) in kvs {
                    if kind == 'Q' {
                        assert!(ks.get(&k).unwrap().is_none());
                    }
                    wb.insert(ks, k, v);
                }
            }
            wb.commit().unwrap();
        }
        println!(
            "| {shape} | {} | {:.0} | {:.1} µs |",
            shape.len(),
            per_sec(n, start.elapsed()),
            (cpu_secs() - cpu) * 1e6 / n as f64
        );
        drop(spaces);
        drop(db);
        let _ = std::fs::remove_dir_all(&path);
    }
    println!();
}

/// Only the log page target: unfiltered pages of 1000 at 200,000 messages (for
/// profiling).
fn target_reads(dirs: &mut Dirs, quick: bool) {
    let n: u64 = if quick { 20_000 } else { 200_000 };
    let path = dirs.next();
    let ledger = open(&path);
    let t = tenant();
    ledger
        .apply(&t, configures(), Durability::SyncData)
        .unwrap();
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + 1000).min(n)).map(small_write).collect();
        i += batch.len() as u64;
        ledger.apply(&t, batch, Durability::Buffered).unwrap();
    }
    let LogRead::Page(all) = ledger.read_log(&t, &LogQuery::after(None, 10_000)).unwrap() else {
        unreachable!()
    };
    let tokens: Vec<ProgressToken> = all.entries.iter().map(|e| e.token).collect();
    let rounds = 1000;
    let start = Instant::now();
    for i in 0..rounds {
        let cursor = tokens[(i * 37) % tokens.len()];
        let LogRead::Page(p) = ledger
            .read_log(&t, &LogQuery::after(Some(cursor), 1000))
            .unwrap()
        else {
            unreachable!()
        };
        assert_eq!(p.entries.len(), 1000);
    }
    println!(
        "| unfiltered | 1000 | {:.3} ms |\n",
        start.elapsed().as_secs_f64() * 1000.0 / f64::from(u32::try_from(rounds).unwrap())
    );
    drop(ledger);
    let _ = std::fs::remove_dir_all(&path);
}

fn reads(dirs: &mut Dirs, quick: bool) {
    let n: u64 = if quick { 20_000 } else { 200_000 };
    let path = dirs.next();
    let ledger = open(&path);
    ledger
        .apply(&tenant(), configures(), Durability::SyncData)
        .unwrap();
    let messages: Vec<_> = (0..n).map(small_write).collect();
    let cids: Vec<Cid> = messages.iter().map(|(m, _)| m.cid()).collect();
    let records: Vec<RecordId> = messages
        .iter()
        .map(|(m, _)| m.record_id().unwrap())
        .collect();
    for chunk in messages.chunks(1000) {
        ledger
            .apply(&tenant(), chunk.to_vec(), Durability::Buffered)
            .unwrap();
    }
    ledger.persist(Durability::SyncData).unwrap();
    let t = tenant();
    let LogRead::Page(all) = ledger.read_log(&t, &LogQuery::after(None, 10_000)).unwrap() else {
        unreachable!()
    };
    let tokens: Vec<ProgressToken> = all.entries.iter().map(|e| e.token).collect();

    println!("### Log pages ({n} messages in the log, two protocols alternating)\n");
    println!("| page | entries | mean per page | entries/s |");
    println!("|---|---:|---:|---:|");
    let rounds = if quick { 50 } else { 300 };
    for (label, filter) in [
        ("unfiltered", None),
        (
            "one protocol (every other entry)",
            Some(protocols()[1].clone()),
        ),
    ] {
        let mut entries = 0u64;
        let start = Instant::now();
        for i in 0..rounds {
            let cursor = tokens[(i * 37) % tokens.len()];
            let mut q = LogQuery::after(Some(cursor), 1000);
            q.protocol = filter.clone();
            let LogRead::Page(p) = ledger.read_log(&t, &q).unwrap() else {
                unreachable!()
            };
            assert_eq!(p.entries.len(), 1000);
            entries += p.entries.len() as u64;
        }
        let took = start.elapsed();
        println!(
            "| {label} | 1000 | {:.3} ms | {:.0} |",
            took.as_secs_f64() * 1000.0 / f64::from(u32::try_from(rounds).unwrap()),
            per_sec(entries, took)
        );
    }

    println!("\n### Point reads ({n} messages)\n");
    println!("| operation | mean |");
    println!("|---|---:|");
    let k = if quick { 20_000 } else { 200_000 };
    let pick = |i: usize| (i * 7919) % cids.len();
    let start = Instant::now();
    for i in 0..k {
        assert!(ledger.get_message(&t, &cids[pick(i)]).unwrap().is_some());
    }
    println!(
        "| get_message | {:.2} µs |",
        start.elapsed().as_secs_f64() * 1e6 / k as f64
    );
    let start = Instant::now();
    for i in 0..k {
        assert!(ledger.record_head(&t, &records[pick(i)]).unwrap().is_some());
    }
    println!(
        "| record_head | {:.2} µs |",
        start.elapsed().as_secs_f64() * 1e6 / k as f64
    );
    let start = Instant::now();
    for i in 0..k {
        assert!(ledger.has_message(&t, &cids[pick(i)]).unwrap());
    }
    println!(
        "| has_message | {:.2} µs |",
        start.elapsed().as_secs_f64() * 1e6 / k as f64
    );
    let missing = Cid::from_bytes([0xee; 32]);
    let start = Instant::now();
    for _ in 0..k {
        assert!(!ledger.has_message(&t, &missing).unwrap());
    }
    println!(
        "| has_message (absent) | {:.2} µs |\n",
        start.elapsed().as_secs_f64() * 1e6 / k as f64
    );
    drop(ledger);
    let _ = std::fs::remove_dir_all(&path);
}

fn blobs(dirs: &mut Dirs, quick: bool) {
    let mib = if quick { 16 } else { 256 };
    let path = dirs.next();
    let ledger = open(&path);
    let data: Vec<u8> = (0..mib * 1024 * 1024)
        .map(|i: usize| u8::try_from((i * 31 + i / 4096) % 251).unwrap())
        .collect();
    let cid = Cid::of_data(&data);
    println!("### Blobs ({mib} MiB, 64 KiB chunks)\n");
    println!("| operation | MB/s |");
    println!("|---|---:|");
    let mb = data.len() as f64 / 1e6;
    let start = Instant::now();
    ledger
        .blobs()
        .put(&cid, &data[..], Durability::SyncData, 0)
        .unwrap();
    println!(
        "| write (hash-verified, sync_data at the end) | {:.0} |",
        mb / start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let back = ledger.blobs().read(&cid).unwrap();
    println!("| read whole | {:.0} |", mb / start.elapsed().as_secs_f64());
    assert_eq!(back.len(), data.len());
    let start = Instant::now();
    let mut total = 0usize;
    let step = 1024 * 1024;
    for off in (0..data.len()).step_by(step) {
        total += ledger
            .blobs()
            .read_range(&cid, off as u64, step as u64)
            .unwrap()
            .len();
    }
    assert_eq!(total, data.len());
    println!(
        "| read in 1 MiB ranges | {:.0} |\n",
        mb / start.elapsed().as_secs_f64()
    );
    drop(ledger);
    let _ = std::fs::remove_dir_all(&path);
}

fn reopen(dirs: &mut Dirs, quick: bool) {
    let n: u64 = if quick { 100_000 } else { 1_000_000 };
    let path = dirs.next();
    let t = tenant();
    {
        let ledger = open(&path);
        ledger
            .apply(&t, configures(), Durability::SyncData)
            .unwrap();
        let mut i = 0;
        while i < n {
            let batch: Vec<_> = (i..(i + 1000).min(n)).map(small_write).collect();
            i += batch.len() as u64;
            ledger.apply(&t, batch, Durability::Buffered).unwrap();
        }
        ledger.close().unwrap();
    }
    println!("### Reopen ({n} messages)\n");
    println!("| step | time |");
    println!("|---|---:|");
    let start = Instant::now();
    let store = FjallStore::open(&path).unwrap();
    let ledger = Ledger::builder().seed(1).open(store).unwrap();
    let head = ledger.log_head(&t).unwrap().unwrap();
    let opened = start.elapsed();
    assert_eq!(head.position, n + 2);
    println!(
        "| open and read the log head | {:.0} ms |",
        opened.as_secs_f64() * 1000.0
    );
    let start = Instant::now();
    let count = ledger.cids(&t).unwrap().map(Result::unwrap).count();
    assert_eq!(count as u64, n + 2);
    println!(
        "| scan all {count} cids (Merkle tree rebuild input) | {:.0} ms |",
        start.elapsed().as_secs_f64() * 1000.0
    );
    let start = Instant::now();
    let count = ledger
        .protocol_cids(&t, &protocols()[0])
        .unwrap()
        .map(Result::unwrap)
        .count();
    println!(
        "| scan one protocol's {count} cids | {:.0} ms |",
        start.elapsed().as_secs_f64() * 1000.0
    );
    let disk: u64 = walk_size(&path);
    println!("| size on disk | {:.0} MB |\n", disk as f64 / 1e6);
    drop(ledger);
    let _ = std::fs::remove_dir_all(&path);
}

fn walk_size(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => walk_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let base = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("ledger-bench-{}", std::process::id()))
        });
    std::fs::create_dir_all(&base).unwrap();
    let mut only: Vec<&str> = Vec::new();
    let mut skip_next = false;
    for a in args.iter().skip(1) {
        if skip_next {
            skip_next = false;
        } else if a == "--dir" {
            skip_next = true;
        } else if !a.starts_with("--") {
            only.push(a);
        }
    }
    let run = |name: &str| only.is_empty() || only.contains(&name);
    let mut dirs = Dirs {
        base: base.clone(),
        n: 0,
    };
    println!("## sync-ledger bench (fjall in {})\n", base.display());
    if run("commits") {
        commits(&mut dirs, quick);
    }
    if only.contains(&"target_commits") {
        target_commits(&mut dirs, quick);
    }
    if only.contains(&"target_reads") {
        target_reads(&mut dirs, quick);
    }
    if only.contains(&"fjall_ceiling") {
        fjall_ceiling(&mut dirs, quick);
    }
    if run("reads") {
        reads(&mut dirs, quick);
    }
    if run("blobs") {
        blobs(&mut dirs, quick);
    }
    if run("reopen") {
        reopen(&mut dirs, quick);
    }
    let _ = std::fs::remove_dir_all(&base);
}
