//! Read-modify-writes of the registry (dead letters, identities) from several processes
//! on one database: two child processes (this binary again) of two threads each record
//! the same dead letter 100 times per thread and try to register the same 20
//! identities. Every attempt is counted (no lost update), and each identity is
//! registered exactly once.
//!
//! This file has its own `main` (`harness = false`) so the child role is not a test.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sync_ledger::store::Durability;
use sync_ledger::{Error, Ledger, RegisteredIdentity};
use sync_types::{Authorization, Cid, DeadLetter, DeadLetterCategory, Endpoint, Scope, TenantId};

const ROLE_ENV: &str = "WEFT_PG_REGISTRY_CHILD";
const SCHEMA_ENV: &str = "WEFT_PG_REGISTRY_SCHEMA";
const START_ENV: &str = "WEFT_PG_REGISTRY_START_MS";
const PROCESSES: u32 = 2;
const THREADS: u32 = 2;
const RECORDS_PER_THREAD: u32 = 100;
const IDENTITIES: u32 = 20;

fn main() {
    if std::env::var(ROLE_ENV).is_ok() {
        child();
        return;
    }
    parent();
    println!("test registry_updates_from_two_processes_are_not_lost ... ok");
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

fn tenant(i: u32) -> TenantId {
    TenantId::new(format!("did:example:registered{i}")).unwrap()
}

fn letter() -> DeadLetter {
    DeadLetter {
        cid: Cid::from_bytes([7; 32]),
        tenant: tenant(0),
        endpoint: Endpoint::new("https://node.example").unwrap(),
        protocol: None,
        category: DeadLetterCategory::PushExhausted,
        error_code: None,
        error: "refused".into(),
        attempts: 0,
        failed_at_ms: 1,
    }
}

fn identity(i: u32) -> RegisteredIdentity {
    RegisteredIdentity {
        tenant: tenant(i),
        endpoints: vec![Endpoint::new("https://node.example").unwrap()],
        scope: Scope::Full,
        authorization: Authorization::Owner,
        token: None,
        updated_ms: 1,
    }
}

fn child() {
    let schema = std::env::var(SCHEMA_ENV).unwrap();
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let ledger = Ledger::open(support::open(&schema)).unwrap();
    let registered: u32 = std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    while now_ms() < start {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let mut registered = 0;
                    for i in 0..RECORDS_PER_THREAD {
                        ledger
                            .dead_letters()
                            .record(letter(), Durability::SyncData)
                            .unwrap();
                        if i < IDENTITIES {
                            match ledger
                                .identities()
                                .register(&identity(i), Durability::SyncData)
                            {
                                Ok(()) => registered += 1,
                                Err(Error::IdentityExists(_)) => {}
                                Err(e) => panic!("register: {e}"),
                            }
                        }
                    }
                    registered
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    println!("registered {registered}");
}

fn parent() {
    let url = support::url();
    let schema = support::fresh_schema("registry");
    let ledger = Ledger::open(support::open(&schema)).unwrap();
    let start = now_ms() + 1_500;
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .env(ROLE_ENV, "1")
                .env(SCHEMA_ENV, &schema)
                .env(START_ENV, start.to_string())
                .env(support::URL_VAR, &url)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut registered = 0;
    for mut c in children {
        for line in BufReader::new(c.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("registered ") {
                registered += n.parse::<u32>().unwrap();
            }
        }
        assert!(c.wait().unwrap().success(), "a child failed");
    }
    let stored = ledger
        .dead_letters()
        .get(&tenant(0), &letter().cid, &letter().endpoint)
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.attempts,
        PROCESSES * THREADS * RECORDS_PER_THREAD,
        "every attempt is counted"
    );
    assert_eq!(registered, IDENTITIES, "each identity is registered once");
    assert_eq!(
        ledger.identities().list().unwrap().len(),
        IDENTITIES as usize
    );
}
