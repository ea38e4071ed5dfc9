//! The database crashes (every server process killed, no checkpoint; the next start
//! recovers from the WAL): every batch applied with a synced durability survives, and
//! what survives is a prefix of the applied batches, whole, with no gap in the log.
//! `Buffered` batches after the last synced one may be lost, never part of one.
//!
//! This test needs a server it may crash, so it always starts a cluster of its own,
//! whatever `WEFT_TEST_PG_URL` says.

#[path = "../../sync-ledger/tests/common/mod.rs"]
mod common;
mod support;

use sync_ledger::Ledger;
use sync_ledger::store::Durability;
use sync_ledger_pg::PgStore;
use sync_types::Cid;

const ROUNDS: u64 = 6;
const BATCHES_PER_ROUND: u64 = 30;

#[test]
fn synced_batches_survive_a_crash_of_the_database() {
    let cluster = support::Cluster::start();
    let open = || {
        PgStore::builder(&cluster.url)
            .schema("crash")
            .open()
            .unwrap()
    };
    let t = common::tenant("did:example:crashed");
    let p = common::protocol("https://example.com/notes");
    // Every batch applied so far that survived, in order.
    let mut applied: Vec<Vec<Cid>> = Vec::new();
    let mut lost_buffered = 0usize;
    for round in 0..ROUNDS {
        let ledger = Ledger::open(open()).unwrap();
        let mut durable = 0;
        for b in 0..BATCHES_PER_ROUND {
            let n = 1 + (round * 7 + b * 3) % 40;
            let batch: Vec<_> = (0..n)
                .map(|i| {
                    let key = format!("r{round}-b{b}-m{i}");
                    common::write(&t, &p, &key, None, 1, key.as_bytes())
                })
                .collect();
            let cids = batch.iter().map(|(m, _)| m.cid()).collect();
            // Mostly buffered, every fifth synced. In even rounds the last few are
            // buffered, so the crash has something to lose; in odd rounds the last one
            // is synced, and the crash comes right after it returned.
            let last = b == BATCHES_PER_ROUND - 1;
            let synced = if round % 2 == 1 {
                b % 5 == 4 || last
            } else {
                b % 5 == 4 && b < BATCHES_PER_ROUND - 3
            };
            let durability = if synced {
                Durability::SyncData
            } else {
                Durability::Buffered
            };
            ledger.apply(&t, batch, durability).unwrap();
            applied.push(cids);
            if durability.is_synced() {
                durable = applied.len();
            }
        }
        drop(ledger);
        cluster.crash_server();
        cluster.start_server();

        let ledger = Ledger::open(open()).unwrap();
        let log: Vec<Cid> = common::read_all(&ledger, &t, None, 1000)
            .iter()
            .map(|e| {
                assert_eq!(e.message.tenant(), &t);
                e.cid()
            })
            .collect();
        // A prefix of whole batches, at least up to the last synced one.
        let mut kept = 0;
        let mut at = 0;
        while kept < applied.len() && log[at..].starts_with(&applied[kept]) {
            at += applied[kept].len();
            kept += 1;
        }
        assert_eq!(
            at,
            log.len(),
            "round {round}: the log is whole batches in order"
        );
        assert!(
            kept >= durable,
            "round {round}: {kept} batches survived, {durable} were synced"
        );
        let head = ledger.log_info(&t).unwrap().unwrap().head_position;
        assert_eq!(head, log.len() as u64, "round {round}: no gap");
        lost_buffered += applied.len() - kept;
        applied.truncate(kept);
    }
    // Shown with --nocapture: how much the crashes took (buffered batches only).
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{ROUNDS} crashes of the server; buffered batches lost: {lost_buffered}");
    }
}

/// A server on which no commit is durable is refused at open, with the reason, and the
/// same database is accepted again once `fsync` is back on. (A cluster of its own: the
/// setting is the whole server's.)
#[test]
fn a_server_with_fsync_off_is_refused_at_open() {
    let cluster = support::Cluster::start();
    let open = || PgStore::builder(&cluster.url).schema("fsync").open();
    cluster.crash_server();
    cluster.start_server_with("-c fsync=off");
    match open() {
        Err(e) => assert!(e.to_string().contains("fsync off"), "{e}"),
        Ok(_) => panic!("opened a store on a server with fsync off"),
    }
    cluster.crash_server();
    cluster.start_server();
    let store = open().expect("fsync is on again");
    drop(store);
}

/// After the database restarts, every idle connection of the pool is dead. The first
/// request that meets one fails (transiently, to be retried); the pool then checks
/// each idle connection before handing it out, so the requests after it succeed
/// instead of failing once per dead connection.
#[test]
fn after_a_restart_one_request_fails_not_one_per_pooled_connection() {
    use sync_ledger::layout::META;
    use sync_ledger::store::Store;
    const CONNECTIONS: u32 = 6;
    let cluster = support::Cluster::start();
    let store = PgStore::builder(&cluster.url)
        .schema("pool")
        .connections(CONNECTIONS)
        .open()
        .unwrap();
    store
        .put(META, b"k", b"v".to_vec(), Durability::SyncData)
        .unwrap();
    {
        // Open every connection of the pool at once; they go back idle.
        let txns: Vec<_> = (0..CONNECTIONS).map(|_| store.begin().unwrap()).collect();
        drop(txns);
    }
    cluster.crash_server();
    cluster.start_server();
    let mut failed = 0;
    for _ in 0..2 * CONNECTIONS {
        match store.get(META, b"k") {
            Ok(v) => assert_eq!(v.as_deref(), Some(&b"v"[..])),
            Err(e) => {
                assert!(
                    matches!(e, sync_ledger::Error::Retry(_)),
                    "a lost connection is a transient failure: {e}"
                );
                failed += 1;
            }
        }
    }
    assert!(
        failed <= 1,
        "{failed} requests failed on dead pooled connections after the restart"
    );
}
