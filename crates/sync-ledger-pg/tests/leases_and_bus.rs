//! What several node processes share besides the ledger: leases (background work on one
//! process at a time, released by the holder's death) and the change bus (a commit's
//! announcement reaches the other processes; a reconnect says announcements may have
//! been lost). Each `PgLeases` / `PgChangeBus` here has connections of its own, as a
//! separate process would.

mod support;

use std::sync::mpsc;
use std::time::Duration;

use sync_ledger::{BusNews, ChangeBus, Leases};
use sync_ledger_pg::{PgChangeBus, PgLeases};
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

#[test]
fn announcements_reach_the_other_process_and_only_its_schema() {
    let schema = support::fresh_schema("bus");
    let a = PgChangeBus::start(&psql_url(), &schema).unwrap();
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
    let t = TenantId::new("acme").unwrap();
    a.publish(&t, 7);
    a.publish(&t, 9);
    let mut best = 0;
    while best < 9 {
        match rx.recv_timeout(wait).unwrap() {
            BusNews::Head { tenant, head } => {
                assert_eq!(tenant, t);
                best = best.max(head);
            }
            BusNews::Lost => {}
        }
    }
    while a.counters().sent == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
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
