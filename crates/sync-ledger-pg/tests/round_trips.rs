//! An apply costs the same number of statements whatever its size: batches of 10 and of
//! 1,000 messages, new records and new versions that prune the previous winners, send
//! exactly as many statements to the server.

#[path = "../../sync-ledger/tests/common/mod.rs"]
mod common;
mod support;

use sync_ledger::store::Durability;
use sync_ledger::{Ledger, LedgerOutcome};
use sync_ledger_pg::PgStore;
use sync_types::{Cid, Message, TenantId};

/// Applies `batch` and returns the statements it sent and its outcomes.
fn statements_of(
    store: &PgStore,
    ledger: &Ledger,
    t: &TenantId,
    batch: Vec<(Message, Option<Vec<u8>>)>,
) -> (u64, Vec<LedgerOutcome>) {
    let before = store.statements_sent();
    let out = ledger.apply(t, batch, Durability::SyncData).unwrap();
    let sent = store.statements_sent() - before;
    (sent, out.into_iter().map(|a| a.outcome).collect())
}

#[test]
fn statements_per_apply_do_not_grow_with_the_batch() {
    let schema = support::fresh_schema("round_trips");
    let store = support::open(&schema);
    let ledger = Ledger::open(store.clone()).unwrap();
    let t = TenantId::new("did:example:counted").unwrap();
    let p = common::protocol("https://example.com/notes");
    // The tenant and protocol exist before counting (interning them is a one-off).
    ledger
        .apply(
            &t,
            [common::write(&t, &p, "first", None, 1, b"x")],
            Durability::SyncData,
        )
        .unwrap();

    let mut counts = Vec::new();
    // Each phase has newer timestamps than the last, so each raises the high-water mark
    // (one write) the same way.
    for (phase, n) in [10usize, 1_000].into_iter().enumerate() {
        let ts = 10 * (phase as u64 + 1);
        let keys: Vec<String> = (0..n).map(|i| format!("n{n}-r{i}")).collect();
        // New records.
        let batch: Vec<_> = keys
            .iter()
            .map(|k| common::write(&t, &p, k, None, ts, k.as_bytes()))
            .collect();
        let firsts: Vec<Cid> = batch.iter().map(|(m, _)| m.cid()).collect();
        let (new, out) = statements_of(&store, &ledger, &t, batch);
        assert!(out.iter().all(LedgerOutcome::is_applied));
        // A record keeps its initial write and its winner, so the second version prunes
        // nothing and the third prunes the second: count the third.
        let batch: Vec<_> = keys
            .iter()
            .zip(&firsts)
            .map(|(k, prev)| common::write(&t, &p, k, Some(*prev), ts + 1, b"second"))
            .collect();
        let seconds: Vec<Cid> = batch.iter().map(|(m, _)| m.cid()).collect();
        statements_of(&store, &ledger, &t, batch);
        let batch: Vec<_> = keys
            .iter()
            .zip(&seconds)
            .map(|(k, prev)| common::write(&t, &p, k, Some(*prev), ts + 2, b"third"))
            .collect();
        let (pruning, out) = statements_of(&store, &ledger, &t, batch);
        for o in &out {
            let LedgerOutcome::Applied { pruned, .. } = o else {
                panic!("a newer version is applied: {o:?}")
            };
            assert_eq!(pruned.len(), 1, "the previous winner is pruned");
        }
        counts.push((n, new, pruning));
    }
    // Shown with --nocapture: (batch size, statements for new records, for pruning).
    #[allow(clippy::print_stderr)]
    {
        eprintln!("statements per apply: {counts:?}");
    }
    assert_eq!(counts[0].1, counts[1].1, "new records: {counts:?}");
    assert_eq!(counts[0].2, counts[1].2, "pruning versions: {counts:?}");
    // And the count is small: a dozen or two round trips, not one per message.
    assert!(counts[0].1 < 30 && counts[0].2 < 40, "{counts:?}");
}
