//! A dropped connection is `Error::Retry`, not a poison: the ledger stays writable and
//! the same apply, run again, stores the batch once.

#[path = "../../sync-ledger/tests/common/mod.rs"]
mod common;
mod support;

use sync_ledger::store::Durability;
use sync_ledger::{Error, Ledger, LedgerOutcome};
use sync_ledger_pg::PgStore;

#[test]
fn a_dropped_connection_is_a_retry_and_the_apply_runs_again() {
    let app = format!("weft_retry_{}", std::process::id());
    let url = support::url();
    let sep = if url.contains('?') { '&' } else { '?' };
    let schema = support::fresh_schema("retry");
    let store = PgStore::builder(format!("{url}{sep}application_name={app}"))
        .schema(&schema)
        .open()
        .unwrap();
    let ledger = Ledger::open(store).unwrap();
    let t = common::tenant("did:example:retry");
    let p = common::protocol("https://example.com/notes");
    ledger
        .apply(
            &t,
            [common::write(&t, &p, "a", None, 1, b"a")],
            Durability::SyncData,
        )
        .unwrap();

    // Every connection of the pool is cut by the server.
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let cut = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .unwrap();
    assert!(!cut.is_empty(), "the pool had a connection to cut");

    let batch = vec![
        common::write(&t, &p, "b", None, 2, b"b"),
        common::write(&t, &p, "c", None, 3, b"c"),
    ];
    let first = ledger.apply(&t, batch.clone(), Durability::SyncData);
    assert!(
        matches!(first, Err(Error::Retry(_))),
        "a cut connection is a retry: {first:?}"
    );
    assert!(!ledger.is_poisoned());
    // Run again until the pool has replaced its cut connections (one per attempt).
    let mut out = None;
    for _ in 0..10 {
        match ledger.apply(&t, batch.clone(), Durability::SyncData) {
            Ok(o) => {
                out = Some(o);
                break;
            }
            Err(e) => assert!(e.is_retry(), "only retries: {e}"),
        }
    }
    let out = out.expect("the apply succeeds once the pool reconnects");
    assert!(
        out.iter()
            .all(|a| matches!(a.outcome, LedgerOutcome::Applied { .. }))
    );
    let head = ledger.log_info(&t).unwrap().unwrap().head_position;
    assert_eq!(head, 3, "the batch is stored once");
}
