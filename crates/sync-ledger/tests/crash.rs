//! kill -9 crash test.
//!
//! The test binary re-runs itself as a child process (selected by an environment
//! variable) that applies a deterministic workload to a fjall ledger and prints
//! `ack N` after each commit returns. The parent kills it with SIGKILL at a random
//! moment, reopens the ledger and checks that:
//! - every acknowledged batch is there, whole, and at most one unacknowledged batch
//!   more (the one committed just before the kill);
//! - the whole store is byte-for-byte what an in-memory ledger holds after applying
//!   exactly that many batches (so no partial batch is visible anywhere: messages,
//!   indexes, record heads, log entries and log head);
//! - log positions are contiguous: the head equals the number of messages appended,
//!   and entries appear in increasing position order.
//!
//! Then it lets a new child continue writing on the same directory, and repeats.
//! This file has its own `main` (`harness = false`) so the writer role is not a test.

// This binary is its own harness: it reports progress and the result line on the
// console like libtest does, so printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sync_ledger::store::{Durability, KeyRange, Order, Store};
use sync_ledger::{FjallStore, Ledger, LogQuery, LogRead, MemoryStore, layout};
use sync_types::*;

const ROLE_ENV: &str = "SYNC_LEDGER_CRASH_WRITER";
const START_ENV: &str = "SYNC_LEDGER_CRASH_START";
const SEED: u64 = 0x5eed_cafe;
const ROUNDS: usize = 10;
const RECORDS: u64 = 40;
/// A child stops by itself after this many batches (a kill normally comes first).
const CHILD_BATCHES_MAX: u64 = 2_000;

fn main() {
    if let Ok(dir) = std::env::var(ROLE_ENV) {
        let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
        writer(Path::new(&dir), start);
        return;
    }
    parent();
    // Keep the libtest-like summary line so CI logs read the same.
    println!("test kill_nine_leaves_only_whole_commits ... ok");
}

/// The deterministic workload: batch `b` holds 1 to 50 writes to a small set of
/// records; every write's `prev` is its record's current winner and its timestamp is
/// the newest yet, so every message is applied and each later write prunes the
/// previous winner. Batch 0 starts with the protocol's configure.
struct Workload {
    rng: SmallRng,
    tenant: TenantId,
    protocol: ProtocolName,
    winners: HashMap<u64, Cid>,
    clock: u64,
    next: u64,
}

impl Workload {
    fn new() -> Self {
        Self {
            rng: SmallRng::seed_from_u64(SEED),
            tenant: TenantId::new("crash").unwrap(),
            protocol: ProtocolName::new("crash-protocol").unwrap(),
            winners: HashMap::new(),
            clock: 0,
            next: 0,
        }
    }

    fn durability(b: u64) -> Durability {
        Durability::ALL[usize::try_from(b % 3).unwrap()]
    }

    fn next_batch(&mut self) -> Vec<(Message, Option<Vec<u8>>)> {
        let b = self.next;
        self.next += 1;
        let mut out = Vec::new();
        if b == 0 {
            let path = ProtocolPath::new("item").unwrap();
            out.push((
                Message::Configure(Configure {
                    tenant: self.tenant.clone(),
                    protocol: self.protocol.clone(),
                    definition: ProtocolDefinition::new(
                        &self.protocol,
                        vec![TypeRule {
                            path,
                            data_bytes_max: None,
                        }],
                        vec![],
                    )
                    .unwrap(),
                    timestamp: Hlc::ZERO,
                    author: PrincipalId::new("writer").unwrap(),
                }),
                None,
            ));
        }
        let n = self.rng.random_range(1..=50u32);
        for _ in 0..n {
            let r = self.rng.random_range(0..RECORDS);
            self.clock += 1;
            let record_id =
                RecordId::from_natural_key(&self.tenant, &self.protocol, &r.to_be_bytes());
            let data = format!("batch {b} record {r} at {}", self.clock).into_bytes();
            let m = Message::Write(Write {
                tenant: self.tenant.clone(),
                record_id,
                parent_id: None,
                protocol: self.protocol.clone(),
                path: ProtocolPath::new("item").unwrap(),
                context_id: ContextId::root(record_id),
                prev: self.winners.get(&r).copied(),
                timestamp: Hlc {
                    wall_ms: self.clock,
                    counter: 0,
                    node: NodeId(1),
                },
                author: PrincipalId::new("writer").unwrap(),
                data: Some(DataRef::of(&data)),
            });
            self.winners.insert(r, m.cid());
            out.push((m, Some(data)));
        }
        out
    }
}

fn writer(dir: &Path, start: u64) {
    let store = FjallStore::builder(dir).worker_threads(1).open().unwrap();
    let ledger = Ledger::builder().seed(SEED).open(store).unwrap();
    let mut workload = Workload::new();
    for _ in 0..start {
        workload.next_batch();
    }
    let tenant = workload.tenant.clone();
    let stdout = std::io::stdout();
    writeln!(stdout.lock(), "ready").unwrap();
    for b in start..start + CHILD_BATCHES_MAX {
        let batch = workload.next_batch();
        ledger
            .apply(&tenant, batch, Workload::durability(b))
            .unwrap();
        let mut out = stdout.lock();
        writeln!(out, "ack {b}").unwrap();
        out.flush().unwrap();
    }
}

fn dump(store: &dyn Store) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for p in layout::PARTITIONS {
        for kv in store.scan(p, KeyRange::all(), Order::Ascending).unwrap() {
            let (k, v) = kv.unwrap();
            out.push((p.name(), k, v));
        }
    }
    out
}

fn parent() {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(SEED ^ 1);
    // The model: an in-memory ledger that has applied `applied` batches.
    let model = Ledger::builder()
        .seed(SEED)
        .open(MemoryStore::new())
        .unwrap();
    let mut workload = Workload::new();
    let mut applied = 0u64;
    let mut appended = 0u64;
    let tenant = workload.tenant.clone();

    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .env(ROLE_ENV, dir.path())
            .env(START_ENV, applied.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Most rounds kill the child while it writes; every fourth kills it early,
        // possibly while fjall is still recovering.
        if round % 4 != 3 {
            let ready = lines.recv_timeout(Duration::from_secs(120)).unwrap();
            assert_eq!(ready, "ready");
            std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..30)));
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        reader.join().unwrap();
        let acks: Vec<u64> = lines
            .try_iter()
            .filter(|l| l != "ready")
            .map(|l| l.strip_prefix("ack ").unwrap().parse::<u64>().unwrap())
            .collect();
        let acked_through = acks.last().map_or(applied, |&b| b + 1);
        assert_eq!(
            acks,
            (applied..acked_through).collect::<Vec<_>>(),
            "round {round}: acks are in order"
        );

        // Reopen what the dead child left and find how many batches it holds.
        let store = FjallStore::builder(dir.path())
            .worker_threads(1)
            .open()
            .unwrap();
        let ledger = Ledger::builder().seed(SEED).open(store).unwrap();
        let head = ledger
            .log_info(&tenant)
            .unwrap()
            .map_or(0, |i| i.head_position);
        // Advance the model over every acknowledged batch, then over at most one more
        // if the store's head says it was committed before the kill.
        while applied < acked_through {
            let batch = workload.next_batch();
            appended += batch.len() as u64;
            model.apply(&tenant, batch, Durability::Buffered).unwrap();
            applied += 1;
        }
        if head > appended {
            let batch = workload.next_batch();
            appended += batch.len() as u64;
            model.apply(&tenant, batch, Durability::Buffered).unwrap();
            applied += 1;
        }
        assert_eq!(
            head, appended,
            "round {round} ({status}): the log head is the number of messages appended by whole batches"
        );
        let actual = dump(ledger.store());
        let expected = dump(model.store());
        if actual != expected {
            let first = actual
                .iter()
                .zip(&expected)
                .position(|(a, e)| a != e)
                .unwrap_or(actual.len().min(expected.len()));
            panic!(
                "round {round}: store differs from the model after {applied} batches \
                 ({} vs {} entries, first difference at entry {first}: {:?})",
                actual.len(),
                expected.len(),
                actual.get(first).map(|(p, k, _)| (p, k)),
            );
        }
        // Entries are in increasing position order and within the head.
        let LogRead::Page(page) = ledger
            .read_log(&tenant, &LogQuery::after(None, 10_000))
            .unwrap()
        else {
            panic!("no gap from the start")
        };
        assert!(
            page.entries
                .windows(2)
                .all(|w| w[0].position() < w[1].position())
        );
        assert!(page.entries.last().is_none_or(|e| e.position() <= head));
        // Every record's winner is stored and the one the workload last wrote.
        for (r, winner) in &workload.winners {
            let id = RecordId::from_natural_key(&tenant, &workload.protocol, &r.to_be_bytes());
            let head = ledger.record_head(&tenant, &id).unwrap().unwrap();
            assert_eq!(head.winner.cid, *winner, "round {round}: record {r}");
            assert!(ledger.has_message(&tenant, winner).unwrap());
        }
        drop(ledger);
        eprintln!(
            "crash round {round}: killed after {} acks, {applied} batches whole, head {head}",
            acks.len()
        );
    }
    assert!(applied > 0, "the children committed something");
}
