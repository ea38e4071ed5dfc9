//! kill -9 of a writer process in the middle of its applies, 100 times.
//!
//! Each cycle starts a child (this binary again, selected by an environment variable)
//! that opens the ledger on the shared database and applies deterministic batches of
//! 1 to 100 new messages one after the other, with every durability, printing
//! `ack B` once batch `B`'s apply returned. The parent kills it with SIGKILL after a
//! random delay and checks, on the part of the log the cycle wrote, that:
//! - every acknowledged batch is stored whole;
//! - the batch after the last acknowledged one is stored whole or not at all (it may
//!   have committed just before the kill), and no later batch exists;
//! - the log grew by exactly the stored batches, in order, at contiguous positions
//!   after the previous head, and the head is the last of them.
//!
//! This file has its own `main` (`harness = false`) so the writer role is not a test.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "../../sync-ledger/tests/common/mod.rs"]
mod common;
mod support;

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sync_ledger::store::Durability;
use sync_ledger::{Ledger, LogQuery, LogRead};
use sync_types::{Cid, Message, TenantId};

const ROLE_ENV: &str = "WEFT_PG_KILL_WRITER";
const SCHEMA_ENV: &str = "WEFT_PG_KILL_SCHEMA";
const APP_ENV: &str = "WEFT_PG_KILL_APP";
/// How long the server may take to finish what a killed writer sent (a `COMMIT` in
/// flight completes; anything else rolls back).
const BACKEND_EXIT_WAIT: Duration = Duration::from_secs(60);
const CYCLES: u64 = 100;
const BATCH_MESSAGES_MAX: u64 = 100;
/// A child stops by itself after this many batches (the kill normally comes first).
const CHILD_BATCHES_MAX: u64 = 400;
const SEED: u64 = 0x9e11_0b0b;

fn main() {
    if let Ok(cycle) = std::env::var(ROLE_ENV) {
        writer(cycle.parse().unwrap());
        return;
    }
    parent();
    println!("test kill_nine_of_writers_leaves_only_whole_batches ... ok");
}

fn tenant() -> TenantId {
    TenantId::new("did:example:killed").unwrap()
}

/// Messages with their inline data, as [`Ledger::apply`] takes them.
type Items = Vec<(Message, Option<Vec<u8>>)>;

/// Batch `b` of cycle `c`: its messages (new records) and its durability.
fn batch(c: u64, b: u64) -> (Items, Durability) {
    let mut rng = SmallRng::seed_from_u64(SEED ^ (c << 32) ^ b);
    let n = rng.random_range(1..=BATCH_MESSAGES_MAX);
    let t = tenant();
    let p = common::protocol("https://example.com/notes");
    let messages = (0..n)
        .map(|i| {
            let key = format!("c{c}-b{b}-m{i}");
            common::write(&t, &p, &key, None, c * 1_000 + b, key.as_bytes())
        })
        .collect();
    let durability = Durability::ALL[rng.random_range(0..Durability::ALL.len())];
    (messages, durability)
}

/// The application name of cycle `c`'s writer connections, by which the parent finds
/// the server backends that outlive the killed writer.
fn app_name(c: u64) -> String {
    format!("weft_kill_{}_{c}", std::process::id())
}

fn with_app(url: &str, app: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app}")
}

fn writer(cycle: u64) {
    let schema = std::env::var(SCHEMA_ENV).unwrap();
    let app = std::env::var(APP_ENV).unwrap();
    let store = sync_ledger_pg::PgStore::builder(with_app(&support::url(), &app))
        .schema(&schema)
        .open()
        .unwrap();
    let ledger = Ledger::open(store).unwrap();
    let mut out = std::io::stdout();
    out.write_all(b"ready\n").unwrap();
    out.flush().unwrap();
    for b in 0..CHILD_BATCHES_MAX {
        let (messages, durability) = batch(cycle, b);
        let applied = ledger.apply(&tenant(), messages, durability).unwrap();
        assert!(applied.iter().all(|a| a.outcome.is_applied()));
        out.write_all(format!("ack {b}\n").as_bytes()).unwrap();
        out.flush().unwrap();
    }
}

fn cids(c: u64, b: u64) -> Vec<Cid> {
    batch(c, b).0.iter().map(|(m, _)| m.cid()).collect()
}

fn parent() {
    let url = support::url();
    let schema = support::fresh_schema("kill");
    let ledger = Ledger::open(support::open(&schema)).unwrap();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = SmallRng::seed_from_u64(SEED);
    let t = tenant();
    let mut head = 0u64;
    let mut cursor = None;
    let mut in_flight_committed = 0;
    for cycle in 0..CYCLES {
        let mut child = Command::new(&exe)
            .env(ROLE_ENV, cycle.to_string())
            .env(SCHEMA_ENV, &schema)
            .env(APP_ENV, app_name(cycle))
            .env(support::URL_VAR, &url)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        let reader = std::thread::spawn(move || {
            lines
                .map(|l| l.unwrap())
                .filter_map(|l| l.strip_prefix("ack ").map(|b| b.parse::<u64>().unwrap()))
                .collect::<Vec<u64>>()
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(5..120)));
        // SIGKILL; a child that already finished all its batches is fine too.
        let _ = child.kill();
        let status = child.wait().unwrap();
        let acks = reader.join().unwrap();
        for (i, b) in acks.iter().enumerate() {
            assert_eq!(*b, i as u64, "acks come in batch order");
        }
        let acked = acks.len() as u64;
        // The server finishes what the writer sent before it died: a COMMIT it had
        // sent may still complete. Check once every backend of the writer is gone.
        let waited = std::time::Instant::now();
        loop {
            let rows = admin
                .query(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = $1",
                    &[&app_name(cycle)],
                )
                .unwrap();
            if rows.is_empty() {
                break;
            }
            assert!(
                waited.elapsed() < BACKEND_EXIT_WAIT,
                "cycle {cycle}: the killed writer's backends did not end"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            acked < CHILD_BATCHES_MAX || status.success(),
            "cycle {cycle}: the writer failed: {status}"
        );

        // What the cycle appended, read after the previous head with a cursor.
        let mut appended: Vec<(u64, Cid)> = Vec::new();
        loop {
            let LogRead::Page(page) = ledger.read_log(&t, &LogQuery::after(cursor, 1000)).unwrap()
            else {
                panic!("cycle {cycle}: reading on from our own cursor gave a gap")
            };
            appended.extend(page.entries.iter().map(|e| (e.position(), e.cid())));
            cursor = page.next;
            if !page.has_more {
                break;
            }
        }
        // The acknowledged batches, whole, then maybe the one in flight, whole.
        let mut expected: Vec<Cid> = (0..acked).flat_map(|b| cids(cycle, b)).collect();
        let in_flight = cids(cycle, acked);
        let got: Vec<Cid> = appended.iter().map(|(_, c)| *c).collect();
        if got.len() == expected.len() + in_flight.len() {
            expected.extend(in_flight);
            in_flight_committed += 1;
        }
        let first_difference = got.iter().zip(&expected).position(|(a, b)| a != b);
        assert!(
            got == expected,
            "cycle {cycle}: the log grew by exactly the acknowledged batches (and maybe the \
             one in flight), whole and in order; {acked} acknowledged, {} messages expected, \
             {} appended, first difference at {first_difference:?}",
            expected.len(),
            got.len()
        );
        let positions: Vec<u64> = appended.iter().map(|(p, _)| *p).collect();
        let contiguous: Vec<u64> = (head + 1..=head + positions.len() as u64).collect();
        assert_eq!(positions, contiguous, "cycle {cycle}: positions");
        head += positions.len() as u64;
        let info = ledger.log_info(&t).unwrap().map_or(0, |i| i.head_position);
        assert_eq!(info, head, "cycle {cycle}: head");
        for (_, cid) in appended.iter().step_by(17) {
            assert!(ledger.get_message(&t, cid).unwrap().is_some());
        }
    }
    eprintln!(
        "{CYCLES} kills, {head} messages stored, {in_flight_committed} batches committed \
         but not acknowledged before the kill"
    );
}
