//! Many writer processes on one database.
//!
//! Two child processes (this binary again, selected by an environment variable) with
//! four threads each apply 20,000 messages between them, synced, to 20 tenants and one
//! hot tenant: 5 of the tenants are created by all eight threads at the same moment,
//! then half of the batches go to the hot tenant. Each child prints an `ack` line per
//! message once its apply returned. Meanwhile the parent follows every tenant's log with
//! a cursor. At the end the parent checks that:
//! - every acknowledged message is readable at the position its apply reported;
//! - each tenant's positions are unique, gap-free (1 to the head, nothing pruned in
//!   this workload) and as many as the messages acknowledged for it, and the head is
//!   the last of them;
//! - the 21 tenants have 21 distinct numbers;
//! - the cursor-following reader saw exactly the final positions, in order.
//!
//! This file has its own `main` (`harness = false`) so the writer role is not a test.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../../sync-ledger/tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sync_ledger::store::Durability;
use sync_ledger::{Error, Ledger, LedgerOutcome, LogQuery, LogRead, layout};
use sync_types::{Cid, ProgressToken, TenantId};

const ROLE_ENV: &str = "WEFT_PG_CONCURRENT_WRITER";
const SCHEMA_ENV: &str = "WEFT_PG_CONCURRENT_SCHEMA";
const START_ENV: &str = "WEFT_PG_CONCURRENT_START_MS";
const PROCESSES: usize = 2;
const THREADS: usize = 4;
const MESSAGES: usize = 20_000;
const TENANTS: usize = 20;
/// Of the tenants, this many are created by every thread at the same moment.
const BURST_TENANTS: usize = 5;
const BATCH_MESSAGES_MAX: usize = 40;
/// Retries of one batch after [`Error::Retry`] before the writer gives up.
const RETRIES_MAX: usize = 20;

fn tenant_name(i: usize) -> String {
    if i == TENANTS {
        "did:example:hot".into()
    } else {
        format!("did:example:tenant{i:02}")
    }
}

fn main() {
    if let Ok(index) = std::env::var(ROLE_ENV) {
        writer(index.parse().unwrap());
        return;
    }
    parent();
    println!("test two_processes_of_four_threads_keep_one_gap_free_log_per_tenant ... ok");
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn writer(process: usize) {
    let schema = std::env::var(SCHEMA_ENV).unwrap();
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let ledger = Arc::new(Ledger::open(support::open(&schema)).unwrap());
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let per_thread = MESSAGES / PROCESSES / THREADS;
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let ledger = Arc::clone(&ledger);
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                let me = process * THREADS + thread;
                let mut rng = SmallRng::seed_from_u64(0xc0ff_ee00 + me as u64);
                let protocol = common::protocol("https://example.com/notes");
                // Every thread's first batch creates one of the burst tenants, all at
                // the same moment.
                while now_ms() < start {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut sent = 0usize;
                let mut first = true;
                while sent < per_thread {
                    let t = if first {
                        first = false;
                        me % BURST_TENANTS
                    } else if rng.random_bool(0.5) {
                        TENANTS
                    } else {
                        rng.random_range(0..TENANTS)
                    };
                    let tenant = TenantId::new(tenant_name(t)).unwrap();
                    let n = rng
                        .random_range(1..=BATCH_MESSAGES_MAX)
                        .min(per_thread - sent);
                    let batch: Vec<_> = (0..n)
                        .map(|i| {
                            let key = format!("p{process}-t{thread}-m{}", sent + i);
                            common::write(&tenant, &protocol, &key, None, 1, key.as_bytes())
                        })
                        .collect();
                    let applied = apply_retrying(&ledger, &tenant, batch);
                    let mut lines = String::new();
                    for a in applied {
                        let LedgerOutcome::Applied { token, .. } = a.outcome else {
                            panic!("a new record's first write is applied: {:?}", a.outcome)
                        };
                        lines.push_str(&format!("ack {t} {} {}\n", a.cid, token.position));
                    }
                    let mut out = out.lock().unwrap();
                    out.write_all(lines.as_bytes()).unwrap();
                    out.flush().unwrap();
                    sent += n;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn apply_retrying(
    ledger: &Ledger,
    tenant: &TenantId,
    batch: Vec<(sync_types::Message, Option<Vec<u8>>)>,
) -> Vec<sync_ledger::LedgerApplied> {
    for _ in 0..RETRIES_MAX {
        match ledger.apply(tenant, batch.clone(), Durability::SyncData) {
            Ok(out) => return out,
            Err(Error::Retry(e)) => eprintln!("retrying a batch: {e}"),
            Err(e) => panic!("apply failed: {e}"),
        }
    }
    panic!("a batch failed {RETRIES_MAX} times with retryable errors");
}

/// Follows every tenant's log with a cursor until told to stop, then drains it.
fn follow(ledger: &Ledger, stop: &AtomicBool) -> BTreeMap<usize, Vec<(u64, Cid)>> {
    let mut seen: BTreeMap<usize, Vec<(u64, Cid)>> = BTreeMap::new();
    let mut cursors: HashMap<usize, Option<ProgressToken>> = HashMap::new();
    loop {
        let last_round = stop.load(Ordering::Acquire);
        for t in 0..=TENANTS {
            let tenant = TenantId::new(tenant_name(t)).unwrap();
            loop {
                let cursor = cursors.entry(t).or_default();
                let read = ledger
                    .read_log(&tenant, &LogQuery::after(*cursor, 500))
                    .unwrap();
                let page = match read {
                    LogRead::Page(page) => page,
                    LogRead::Gap(gap) => panic!("the follower got a gap: {gap:?}"),
                };
                seen.entry(t)
                    .or_default()
                    .extend(page.entries.iter().map(|e| (e.position(), e.cid())));
                *cursor = page.next;
                if !page.has_more {
                    break;
                }
            }
        }
        if last_round {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn parent() {
    let url = support::url();
    let schema = support::fresh_schema("concurrent");
    // Migrated once here, so the children's opens find the tables.
    let ledger = Ledger::open(support::open(&schema)).unwrap();
    let start = now_ms() + 1_500;
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            Command::new(&exe)
                .env(ROLE_ENV, i.to_string())
                .env(SCHEMA_ENV, &schema)
                .env(START_ENV, start.to_string())
                .env(support::URL_VAR, &url)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let stop = AtomicBool::new(false);
    let (acks, followed) = std::thread::scope(|s| {
        let follower = s.spawn(|| follow(&ledger, &stop));
        let readers: Vec<_> = children
            .iter_mut()
            .map(|c| {
                let stdout = c.stdout.take().unwrap();
                s.spawn(move || {
                    BufReader::new(stdout)
                        .lines()
                        .map(|l| l.unwrap())
                        .collect::<Vec<String>>()
                })
            })
            .collect();
        let mut acks: Vec<String> = Vec::new();
        for r in readers {
            acks.extend(r.join().unwrap());
        }
        for c in &mut children {
            assert!(c.wait().unwrap().success(), "a writer process failed");
        }
        stop.store(true, Ordering::Release);
        (acks, follower.join().unwrap())
    });

    // Every acknowledged message is readable where its apply put it.
    let mut per_tenant: BTreeMap<usize, Vec<(u64, Cid)>> = BTreeMap::new();
    for line in &acks {
        let mut parts = line.split(' ');
        assert_eq!(parts.next(), Some("ack"), "unexpected output {line:?}");
        let t: usize = parts.next().unwrap().parse().unwrap();
        let cid: Cid = parts.next().unwrap().parse().unwrap();
        let position: u64 = parts.next().unwrap().parse().unwrap();
        per_tenant.entry(t).or_default().push((position, cid));
    }
    assert_eq!(acks.len(), MESSAGES, "every message is acknowledged once");
    for (t, acked) in &mut per_tenant {
        let tenant = TenantId::new(tenant_name(*t)).unwrap();
        for (position, cid) in acked.iter() {
            let stored = ledger
                .get_message(&tenant, cid)
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged {cid} of tenant {t} is missing"));
            assert_eq!(stored.position, *position, "position of {cid}");
        }
        // Unique, gap-free, and the head is the last.
        acked.sort();
        let positions: Vec<u64> = acked.iter().map(|(p, _)| *p).collect();
        let expected: Vec<u64> = (1..=positions.len() as u64).collect();
        assert_eq!(positions, expected, "tenant {t}'s positions");
        let head = ledger.log_info(&tenant).unwrap().unwrap().head_position;
        assert_eq!(head, positions.len() as u64, "tenant {t}'s head");
        let log: Vec<(u64, Cid)> = common::read_all(&ledger, &tenant, None, 1000)
            .iter()
            .map(|e| (e.position(), e.cid()))
            .collect();
        assert_eq!(
            &log, acked,
            "tenant {t}'s log is exactly what was acknowledged"
        );
        // The follower ended with exactly the final positions, in order.
        assert_eq!(followed.get(t), Some(&log), "tenant {t} as followed");
    }
    assert_eq!(per_tenant.len(), TENANTS + 1, "every tenant got messages");
    // Distinct tenant numbers: one reverse name per number, one per tenant.
    let numbers = ledger
        .store()
        .scan_prefix(layout::NAMES, b"T", sync_ledger::store::Order::Ascending)
        .unwrap()
        .count();
    assert_eq!(numbers, TENANTS + 1, "tenant numbers are distinct");
    let mut names = ledger.tenants().unwrap();
    names.dedup();
    assert_eq!(names.len(), TENANTS + 1);
    eprintln!(
        "{} messages from {PROCESSES} processes x {THREADS} threads, {} tenants: ok",
        acks.len(),
        per_tenant.len()
    );
}
