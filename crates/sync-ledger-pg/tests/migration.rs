//! Schema migration 2 (typed value columns): a database written by schema 1 (every
//! value whole in `v`) opens with the current schema, every partition reads back
//! byte for byte what it held, the values moved into their typed columns, and the
//! ledger carries on where it stopped.

#[path = "../../sync-ledger/tests/common/mod.rs"]
mod common;
mod support;

use postgres::{Client, NoTls};
use sync_ledger::layout;
use sync_ledger::store::{Batch, Durability, KeyRange, KeyValue, Order, Store};
use sync_ledger::{Ledger, LedgerOutcome};
use sync_ledger_pg::PgStore;
use sync_types::{Cid, TenantId};

/// Every row of every ledger partition, in key order.
fn dump(store: &PgStore) -> Vec<(&'static str, Vec<KeyValue>)> {
    layout::PARTITIONS
        .iter()
        .map(|p| {
            let rows = store
                .scan(*p, KeyRange::all(), Order::Ascending)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            (p.name(), rows)
        })
        .collect()
}

/// Rows of a table, and how many of them keep their value whole in `v`.
fn counts(db: &mut Client, schema: &str, partition: &str) -> (i64, i64) {
    let row = db
        .query_one(
            &format!("SELECT count(*), count(v) FROM \"{schema}\".\"weft_{partition}\"",),
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

fn version(db: &mut Client, schema: &str) -> i32 {
    db.query_one(
        &format!("SELECT max(version) FROM \"{schema}\".weft_migrations"),
        &[],
    )
    .unwrap()
    .get(0)
}

/// Two tenants' worth of every kind of message: a configure, writes with inline data,
/// comments (context index), new versions that prune (pruned ids in the log), a delete.
fn fill(ledger: &Ledger, tenants: &[TenantId], ts: u64) {
    let p = common::protocol("https://example.com/notes");
    for t in tenants {
        common::apply_one(ledger, common::configure(t, &p, ts), None);
        let mut batch = Vec::new();
        for i in 0..20 {
            batch.push(common::write(
                t,
                &p,
                &format!("r{i}"),
                None,
                ts + 1,
                b"first",
            ));
        }
        let firsts: Vec<Cid> = batch.iter().map(|(m, _)| m.cid()).collect();
        ledger.apply(t, batch, Durability::SyncData).unwrap();
        let seconds: Vec<_> = (0..20)
            .map(|i| common::write(t, &p, &format!("r{i}"), Some(firsts[i]), ts + 2, b"2"))
            .collect();
        let second_cids: Vec<Cid> = seconds.iter().map(|(m, _)| m.cid()).collect();
        ledger.apply(t, seconds, Durability::SyncData).unwrap();
        let thirds: Vec<_> = (0..20)
            .map(|i| common::write(t, &p, &format!("r{i}"), Some(second_cids[i]), ts + 3, b"3"))
            .collect();
        let out = ledger.apply(t, thirds, Durability::SyncData).unwrap();
        assert!(out.iter().all(|a| matches!(
            &a.outcome,
            LedgerOutcome::Applied { pruned, .. } if !pruned.is_empty()
        )));
        for i in 0..5 {
            let c = common::comment(t, &p, "r0", &format!("c{i}"), ts + 4);
            common::apply_one(ledger, c, None);
        }
        common::apply_one(ledger, common::delete(t, &p, "r1", None, ts + 5), None);
    }
}

#[test]
fn a_schema_1_database_opens_migrated_and_reads_back_identical() {
    let schema = support::fresh_schema("migration");
    let mut db = Client::connect(&support::url(), NoTls).unwrap();
    let tenants = [
        common::tenant("did:example:a"),
        common::tenant("did:example:b"),
    ];

    // Written by schema 1: values whole in `v`.
    let old = PgStore::builder(support::url())
        .schema(&schema)
        .schema_version(1)
        .open()
        .unwrap();
    let ledger = Ledger::open(old.clone()).unwrap();
    fill(&ledger, &tenants, 10);
    // More rows than the migration converts per statement (1,000), in one tenant.
    let p = common::protocol("https://example.com/notes");
    let many: Vec<_> = (0..1_100)
        .map(|i| common::write(&tenants[0], &p, &format!("m{i}"), None, 20, b"many"))
        .collect();
    ledger
        .apply(&tenants[0], many, Durability::SyncData)
        .unwrap();
    // A value of a typed partition that is not of its type (no ledger writes one, a
    // store must keep it all the same): it stays whole.
    let mut odd = Batch::new();
    odd.put(
        layout::LOG,
        vec![0x7f, 0, 0, 0, 0, 0, 0, 0, 1],
        vec![1, 2, 3],
    );
    odd.put(layout::MSG, vec![0x7f, 9], vec![0xff]);
    old.commit(odd, Durability::SyncData).unwrap();
    let before = dump(&old);
    let entries_before: Vec<_> = tenants
        .iter()
        .map(|t| common::read_all(&ledger, t, None, 7))
        .collect();
    drop(ledger);
    drop(old);
    assert_eq!(version(&mut db, &schema), 1);
    let (log_rows, whole) = counts(&mut db, &schema, "log");
    assert_eq!(whole, log_rows, "schema 1 keeps every value whole");
    assert!(
        before
            .iter()
            .any(|(p, rows)| *p == "log" && rows.len() > 1_100)
    );

    // Opened by the current schema: migrated, and every row reads back identical.
    let new = support::open(&schema);
    assert_eq!(version(&mut db, &schema), 2);
    assert_eq!(dump(&new), before);
    // Every value of a typed partition moved into its columns, but the odd ones.
    assert_eq!(counts(&mut db, &schema, "log"), (log_rows, 1));
    let (msgs, whole) = counts(&mut db, &schema, "msg");
    assert_eq!(whole, 1, "{msgs} rows");
    for partition in [
        "log_meta",
        "log_by_protocol",
        "by_path",
        "by_context",
        "configs",
    ] {
        let (rows, whole) = counts(&mut db, &schema, partition);
        assert!(rows > 0, "{partition}");
        assert_eq!(whole, 0, "{partition}: {rows} rows");
    }
    // The columns hold what the values held: each log entry's cid, and the pruned ids
    // of the applies that pruned.
    let typed = db
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE cardinality(pruned) > 0), \
                 count(*) FILTER (WHERE length(cid) = 32) \
                 FROM \"{schema}\".weft_log WHERE v IS NULL"
            ),
            &[],
        )
        .unwrap();
    // Two tenants, 20 pruning versions each (and the delete, if it pruned).
    assert!(typed.get::<_, i64>(0) >= 40);
    assert_eq!(typed.get::<_, i64>(1), log_rows - 1);
    let protocols: Vec<String> = db
        .query(
            &format!("SELECT DISTINCT protocol FROM \"{schema}\".weft_records"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(protocols, ["https://example.com/notes"]);
    let heads: Vec<i64> = db
        .query(
            &format!("SELECT head FROM \"{schema}\".weft_log_meta ORDER BY tn"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    // The ledger reads the same log and carries on.
    let ledger = Ledger::open(new.clone()).unwrap();
    for (t, entries) in tenants.iter().zip(&entries_before) {
        assert_eq!(&common::read_all(&ledger, t, None, 7), entries);
        let head = ledger.log_info(t).unwrap().unwrap().head_position;
        assert!(
            heads.contains(&i64::try_from(head).unwrap()),
            "{head} {heads:?}"
        );
    }
    fill(&ledger, &tenants, 100);
    let (rows, whole) = counts(&mut db, &schema, "log");
    assert!(rows > log_rows);
    assert_eq!(whole, 1, "new entries are written typed");
    drop(ledger);

    // Opening again (as any later process does) migrates nothing and reads the same.
    let again_before = dump(&new);
    drop(new);
    let again = support::open(&schema);
    assert_eq!(dump(&again), again_before);
    assert_eq!(version(&mut db, &schema), 2);
}
