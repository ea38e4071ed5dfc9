//! Log entries record what their apply pruned (layout 4), so a follower of the log keeps
//! the tenant's current set of ids without rebuilding it; a layout-3 store is upgraded on
//! open and its entries read with empty lists.

mod common;

use std::collections::BTreeSet;

use common::*;
use sync_ledger::store::{Durability, KeyRange, Order, Store};
use sync_ledger::{Ledger, LedgerOutcome, LogQuery, LogRead, MemoryStore, layout};
use sync_types::{Cid, ProgressToken, TenantId, codec};

/// The current set as a follower computes it: `start`, plus every entry after
/// `cursor`, minus the ids each page says were pruned.
fn follow(
    ledger: &Ledger,
    t: &TenantId,
    cursor: Option<ProgressToken>,
    start: &BTreeSet<Cid>,
) -> BTreeSet<Cid> {
    let mut set = start.clone();
    let mut cursor = cursor;
    loop {
        let LogRead::Page(page) = ledger.read_log(t, &LogQuery::after(cursor, 7)).unwrap() else {
            panic!("reading on from a token of this log never gaps")
        };
        set.extend(page.entries.iter().map(|e| e.cid()));
        for (position, removed) in &page.pruned {
            assert!(page.entries.iter().any(|e| e.position() == *position));
            for cid in removed {
                set.remove(cid);
            }
        }
        cursor = page.next;
        if !page.has_more {
            return set;
        }
    }
}

#[test]
fn a_follower_from_any_cursor_ends_with_the_current_set() {
    let ledger = Ledger::in_memory().unwrap();
    let t = tenant("did:example:follow");
    let p = protocol("https://example.com/notes");
    // Snapshots: the log head and the current set after each apply.
    let mut snapshots: Vec<(Option<ProgressToken>, BTreeSet<Cid>)> = vec![(None, BTreeSet::new())];
    let keys = ["a", "b", "c"];
    let mut winners: Vec<Option<Cid>> = vec![None; keys.len()];
    let mut ts = 1;
    for round in 0..40usize {
        // One to three versions per apply, sometimes two of one record in one batch.
        let mut batch = Vec::new();
        for k in 0..=(round % 3) {
            let r = (round + k * (round % 2)) % keys.len();
            ts += 1;
            let (m, data) = write(&t, &p, keys[r], winners[r], ts, format!("{ts}").as_bytes());
            winners[r] = Some(m.cid());
            batch.push((m, data));
        }
        let out = ledger.apply(&t, batch, Durability::Buffered).unwrap();
        assert!(out.iter().all(|a| a.outcome.is_applied()));
        let current: BTreeSet<Cid> = ledger.cids(&t).unwrap().map(Result::unwrap).collect();
        snapshots.push((ledger.log_head(&t).unwrap(), current));
    }
    let current = &snapshots.last().unwrap().1;
    assert!(current.len() <= 2 * keys.len());
    for (i, (cursor, set)) in snapshots.iter().enumerate() {
        assert_eq!(
            &follow(&ledger, &t, *cursor, set),
            current,
            "following from snapshot {i}"
        );
    }
}

#[test]
fn pruned_ids_are_recorded_and_carried_on_by_the_entry_that_prunes_their_pruner() {
    let ledger = Ledger::in_memory().unwrap();
    let t = tenant("did:example:chain");
    let p = protocol("https://example.com/notes");
    let (w1, d1) = write(&t, &p, "r", None, 1, b"1");
    let (w2, d2) = write(&t, &p, "r", Some(w1.cid()), 2, b"2");
    let (w3, d3) = write(&t, &p, "r", Some(w2.cid()), 3, b"3");
    let (w4, d4) = write(&t, &p, "r", Some(w3.cid()), 4, b"4");
    ledger
        .apply(
            &t,
            [(w1.clone(), d1), (w2.clone(), d2)],
            Durability::SyncData,
        )
        .unwrap();
    // w3 prunes w2 (w1 is the initial write and stays).
    let out = ledger
        .apply(&t, [(w3.clone(), d3)], Durability::SyncData)
        .unwrap();
    let LedgerOutcome::Applied { pruned, .. } = &out[0].outcome else {
        panic!()
    };
    assert_eq!(pruned, &vec![w2.cid()]);
    // w4 prunes w3, whose entry (deleted with it) recorded w2: w4's carries both, so a
    // follower that read w2 but not w3 still drops it.
    ledger
        .apply(&t, [(w4.clone(), d4)], Durability::SyncData)
        .unwrap();
    let LogRead::Page(page) = ledger.read_log(&t, &LogQuery::after(None, 100)).unwrap() else {
        panic!()
    };
    let cids: Vec<Cid> = page.entries.iter().map(|e| e.cid()).collect();
    assert_eq!(cids, vec![w1.cid(), w4.cid()]);
    assert_eq!(page.pruned, vec![(4, vec![w3.cid(), w2.cid()])]);
}

#[test]
fn a_long_chain_of_versions_carries_at_most_the_limit() {
    let ledger = Ledger::in_memory().unwrap();
    let t = tenant("did:example:long");
    let p = protocol("https://example.com/notes");
    let mut prev = None;
    for ts in 1..=(layout::PRUNED_IDS_MAX as u64 + 10) {
        let (m, d) = write(&t, &p, "r", prev, ts, b"x");
        prev = Some(m.cid());
        ledger.apply(&t, [(m, d)], Durability::Buffered).unwrap();
    }
    let LogRead::Page(page) = ledger.read_log(&t, &LogQuery::after(None, 100)).unwrap() else {
        panic!()
    };
    let (_, last) = page.pruned.last().unwrap();
    assert_eq!(last.len(), layout::PRUNED_IDS_MAX);
}

#[test]
fn a_layout_3_store_is_upgraded_on_open_and_its_entries_read_with_empty_lists() {
    let store = MemoryStore::new();
    let t = tenant("did:example:old");
    let p = protocol("https://example.com/notes");
    let (w1, d1) = write(&t, &p, "r", None, 1, b"1");
    let (w2, d2) = write(&t, &p, "r", Some(w1.cid()), 2, b"2");
    let (w3, d3) = write(&t, &p, "r", Some(w2.cid()), 3, b"3");
    {
        let ledger = Ledger::open(store.clone()).unwrap();
        ledger
            .apply(
                &t,
                [(w1.clone(), d1), (w2.clone(), d2.clone())],
                Durability::SyncData,
            )
            .unwrap();
    }
    // Rewrite the store as layout 3 wrote it: entries without the pruned list.
    let entries: Vec<(Vec<u8>, Vec<u8>)> = store
        .scan(layout::LOG, KeyRange::all(), Order::Ascending)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(entries.len(), 2);
    for (key, value) in entries {
        let entry: layout::StoredEntry = codec::decode(&value, usize::MAX).unwrap();
        let old = codec::encode(&(entry.cid, entry.message, entry.data));
        store
            .put(layout::LOG, &key, old, Durability::SyncData)
            .unwrap();
    }
    store
        .put(
            layout::META,
            b"layout",
            codec::encode(&3u32),
            Durability::SyncData,
        )
        .unwrap();

    let ledger = Ledger::open(store.clone()).unwrap();
    let version: u32 =
        codec::decode(&store.get(layout::META, b"layout").unwrap().unwrap(), 64).unwrap();
    assert_eq!(version, layout::LAYOUT_VERSION);
    assert_eq!(version, 5);
    let stored = ledger.get_message(&t, &w2.cid()).unwrap().unwrap();
    assert_eq!(stored.data, d2);
    let LogRead::Page(page) = ledger.read_log(&t, &LogQuery::after(None, 100)).unwrap() else {
        panic!()
    };
    assert_eq!(page.entries.len(), 2);
    assert!(page.pruned.is_empty());
    // A new version prunes a layout-3 entry: it records that one, and inherits nothing.
    ledger
        .apply(&t, [(w3.clone(), d3)], Durability::SyncData)
        .unwrap();
    let LogRead::Page(page) = ledger.read_log(&t, &LogQuery::after(None, 100)).unwrap() else {
        panic!()
    };
    assert_eq!(page.pruned, vec![(3, vec![w2.cid()])]);
}
