//! What several node processes share besides the ledger: leases (background work on one
//! process at a time, released by the holder's death) and the change bus (a commit's
//! announcement reaches the other processes; a reconnect says announcements may have
//! been lost). Each `PgLeases` / `PgChangeBus` here has connections of its own, as a
//! separate process would.

mod support;

use std::sync::mpsc;
use std::time::Duration;

use sync_ledger::store::{Batch, Durability, Store, WriteScope};
use sync_ledger::{BusNews, ChangeBus, Leases, layout};
use sync_ledger_pg::{PgChangeBus, PgLeases, PgStore};
use sync_types::TenantId;

fn psql_url() -> String {
    support::url()
}

/// The first key of a schema's leases (FNV-1a of `schema/lease`, as the store
/// computes it).
fn lease_space(schema: &str) -> i64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in format!("{schema}/lease").bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    // pg_locks shows the key as an unsigned oid.
    i64::from(h)
}

/// Ends every session that holds a lease of `schema`, as a node's death would.
fn kill_lease_holders(schema: &str) -> u64 {
    let mut client = postgres::Client::connect(&psql_url(), postgres::NoTls).unwrap();
    let rows = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND objsubid = 2 AND classid::int8 = $1 \
             AND pid <> pg_backend_pid()",
            &[&lease_space(schema)],
        )
        .unwrap();
    rows.len() as u64
}

#[test]
fn a_lease_is_held_by_one_process_at_a_time_and_freed_by_its_death() {
    let schema = support::fresh_schema("lease");
    let a = PgLeases::new(&psql_url(), &schema).unwrap();
    let b = PgLeases::new(&psql_url(), &schema).unwrap();
    let held = a.try_take("blob_gc").unwrap().expect("free at first");
    assert!(b.try_take("blob_gc").unwrap().is_none(), "another holds it");
    assert!(
        a.try_take("blob_gc").unwrap().is_none(),
        "not twice in one process"
    );
    let other = b
        .try_take("compaction")
        .unwrap()
        .expect("another name is free");
    drop(held);
    let held = b
        .try_take("blob_gc")
        .unwrap()
        .expect("released by the guard");
    assert!(a.try_take("blob_gc").unwrap().is_none());
    // The holder's session dies (a killed node): the lease is free again, and the
    // holder's own guard drops without error.
    std::mem::forget(other);
    assert!(kill_lease_holders(&schema) >= 1);
    // Termination is asynchronous: the lock goes when the session has ended.
    let t0 = std::time::Instant::now();
    let again = loop {
        if let Some(g) = a.try_take("blob_gc").unwrap() {
            break g;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never freed by the holder's death"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    drop(held);
    drop(again);
    // Leases of another schema are other leases.
    let c = PgLeases::new(&psql_url(), &support::fresh_schema("lease")).unwrap();
    let x = a.try_take("blob_gc").unwrap().expect("free");
    assert!(c.try_take("blob_gc").unwrap().is_some());
    drop(x);
}

/// Commits, on `store`, a transaction that announces `tenant`'s head `head` (writing one
/// key, as a log append would).
fn commit_announcing(store: &PgStore, tenant: &TenantId, head: u64) {
    let mut txn = store.begin().unwrap();
    txn.lock(WriteScope::Tenant(1)).unwrap();
    txn.announce(tenant, head);
    let mut batch = Batch::new();
    batch.put(
        layout::META,
        b"bus-test".to_vec(),
        head.to_be_bytes().to_vec(),
    );
    txn.commit(batch, Durability::Buffered).unwrap();
}

/// The next head announced for `tenant` at or above `at_least` (older ones skipped).
fn next_head(rx: &mpsc::Receiver<BusNews>, tenant: &TenantId, at_least: u64) -> u64 {
    loop {
        match rx.recv_timeout(Duration::from_secs(30)).unwrap() {
            BusNews::Head { tenant: t, head } if t == *tenant && head >= at_least => return head,
            BusNews::Head { tenant: t, .. } => assert_eq!(t, *tenant, "a head of another tenant"),
            BusNews::Lost => {}
        }
    }
}

#[test]
fn commits_reach_the_other_process_and_only_its_schema() {
    let schema = support::fresh_schema("bus");
    let a = support::open(&schema);
    let b = PgChangeBus::start(&psql_url(), &schema).unwrap();
    let elsewhere = PgChangeBus::start(&psql_url(), &support::fresh_schema("bus")).unwrap();
    let (tx, rx) = mpsc::channel();
    b.subscribe(std::sync::Arc::new(move |news| {
        let _ = tx.send(news);
    }));
    let (tx2, rx2) = mpsc::channel();
    elsewhere.subscribe(std::sync::Arc::new(move |news| {
        let _ = tx2.send(news);
    }));
    let wait = Duration::from_secs(30);
    // The listener says it (re)connected before anything else.
    assert_eq!(rx.recv_timeout(wait).unwrap(), BusNews::Lost);
    assert_eq!(rx2.recv_timeout(wait).unwrap(), BusNews::Lost);
    while !b.counters().listening {
        std::thread::sleep(Duration::from_millis(5));
    }
    // A tenant id may hold quotes and backslashes: the announcement is quoted.
    let t = TenantId::new(r"acme'\x").unwrap();
    commit_announcing(&a, &t, 7);
    commit_announcing(&a, &t, 9);
    assert_eq!(next_head(&rx, &t, 9), 9);
    assert_eq!(a.announced(), 2);
    assert!(b.counters().heard >= 1);
    // The other schema's bus heard nothing of it.
    std::thread::sleep(Duration::from_millis(200));
    assert!(rx2.try_recv().is_err());
    // A listener whose connection dies comes back and says announcements were lost.
    let mut client = postgres::Client::connect(&psql_url(), postgres::NoTls).unwrap();
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    loop {
        if rx.recv_timeout(wait).unwrap() == BusNews::Lost {
            break;
        }
    }
    assert!(b.counters().reconnects >= 1);
}

/// The announcement is part of the transaction: a write that rolls back (here, one
/// dropped before its commit, as a failed apply is) wakes nobody. Were it sent, the
/// listener would hear head 50 before (or coalesced with) the committed 11.
#[test]
fn a_rolled_back_write_announces_nothing() {
    let schema = support::fresh_schema("bus");
    let store = support::open(&schema);
    let bus = PgChangeBus::start(&psql_url(), &schema).unwrap();
    let (tx, rx) = mpsc::channel();
    bus.subscribe(std::sync::Arc::new(move |news| {
        let _ = tx.send(news);
    }));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        BusNews::Lost
    );
    while !bus.counters().listening {
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = TenantId::new("acme").unwrap();
    {
        let mut txn = store.begin().unwrap();
        txn.lock(WriteScope::Tenant(1)).unwrap();
        txn.announce(&t, 50);
        // Dropped uncommitted: rolled back.
    }
    commit_announcing(&store, &t, 11);
    assert_eq!(
        next_head(&rx, &t, 11),
        11,
        "the rolled-back head was announced"
    );
    assert_eq!(store.announced(), 1);
}
