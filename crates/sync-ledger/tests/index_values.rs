//! Layout 5: the scoped indexes (`log_by_protocol`, `by_path`, `by_context`) hold no
//! copy of the message's cid, the log entry at the key's position does; a layout-4
//! store, whose index entries hold the cid, opens as layout 5 and reads the same, old
//! and new entries side by side.

mod common;

use std::collections::HashMap;

use common::*;
use sync_ledger::store::{Batch, Durability, KeyRange, Order, Store};
use sync_ledger::{Ledger, layout};
use sync_types::*;

const SCOPED: [sync_ledger::store::Partition; 3] =
    [layout::LOG_BY_PROTOCOL, layout::BY_PATH, layout::BY_CONTEXT];

/// Every (key, value) of a partition.
fn all(store: &dyn Store, p: sync_ledger::store::Partition) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .scan(p, KeyRange::all(), Order::Ascending)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// What the scoped reads answer: (protocol cids, path cids, context cids), sorted
/// where the order is not by log.
fn reads(ledger: &Ledger, t: &TenantId, p: &ProtocolName) -> (Vec<Cid>, Vec<Cid>, Vec<Cid>) {
    let by_protocol: Vec<Cid> = ledger
        .protocol_cids(t, p)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut by_path = ledger
        .path_cids(t, p, &ProtocolPath::new("note").unwrap())
        .unwrap();
    by_path.sort();
    let mut by_context = ledger
        .context_cids(t, p, &ContextId::root(record(t, p, "n1")))
        .unwrap();
    by_context.sort();
    (by_protocol, by_path, by_context)
}

fn layout_version(store: &dyn Store) -> u32 {
    codec::decode(&store.get(layout::META, b"layout").unwrap().unwrap(), 16).unwrap()
}

#[test]
fn index_entries_hold_no_cid_and_layout_4_entries_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let t = tenant("alice");
    let p = protocol("notes");
    let (n1, d1) = write(&t, &p, "n1", None, 10, b"one");
    let (n2, d2) = write(&t, &p, "n2", None, 11, b"two");
    let c1 = comment(&t, &p, "n1", "c1", 12);
    let before = {
        let ledger = Ledger::builder().seed(1).open_fjall(dir.path()).unwrap();
        ledger
            .apply(
                &t,
                [
                    (configure(&t, &p, 1), None),
                    (n1.clone(), d1),
                    (n2.clone(), d2),
                    (c1.clone(), None),
                ],
                Durability::SyncData,
            )
            .unwrap();
        let before = reads(&ledger, &t, &p);
        assert_eq!(
            before,
            (
                vec![configure(&t, &p, 1).cid(), n1.cid(), n2.cid(), c1.cid()],
                {
                    let mut v = vec![n1.cid(), n2.cid(), c1.cid()];
                    v.sort();
                    v
                },
                {
                    let mut v = vec![n1.cid(), c1.cid()];
                    v.sort();
                    v
                },
            )
        );
        // No index entry copies a cid: each is the one-byte empty envelope.
        for partition in SCOPED {
            let entries = all(ledger.store(), partition);
            assert!(!entries.is_empty(), "{}", partition.name());
            for (_, v) in entries {
                assert_eq!(v, layout::INDEX_VALUE, "{}", partition.name());
            }
        }
        // Back to layout 4: every index entry holds the cid of the log entry at the
        // position its key ends with.
        let cid_at: HashMap<u64, Cid> = read_all(&ledger, &t, None, 100)
            .into_iter()
            .map(|e| (e.token.position, e.token.cid))
            .collect();
        let mut batch = Batch::new();
        for partition in SCOPED {
            for (k, _) in all(ledger.store(), partition) {
                let pos = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap());
                batch.put(partition, k, codec::encode(&cid_at[&pos]));
            }
        }
        batch.put(layout::META, b"layout".to_vec(), codec::encode(&4u32));
        ledger.store().commit(batch, Durability::SyncData).unwrap();
        ledger.close().unwrap();
        before
    };
    let ledger = Ledger::builder().seed(1).open_fjall(dir.path()).unwrap();
    assert_eq!(layout_version(ledger.store()), layout::LAYOUT_VERSION);
    assert_eq!(layout::LAYOUT_VERSION, 5);
    assert_eq!(
        reads(&ledger, &t, &p),
        before,
        "layout-4 entries read as before"
    );
    // New entries beside the old ones: both kinds read.
    let (n3, d3) = write(&t, &p, "n3", None, 13, b"three");
    let c3 = comment(&t, &p, "n1", "c3", 14);
    ledger
        .apply(
            &t,
            [(n3.clone(), d3), (c3.clone(), None)],
            Durability::SyncData,
        )
        .unwrap();
    let (by_protocol, by_path, by_context) = reads(&ledger, &t, &p);
    let mut expected_protocol = before.0.clone();
    expected_protocol.extend([n3.cid(), c3.cid()]);
    assert_eq!(by_protocol, expected_protocol);
    let mut expected_path = before.1.clone();
    expected_path.extend([n3.cid(), c3.cid()]);
    expected_path.sort();
    assert_eq!(by_path, expected_path);
    let mut expected_context = before.2.clone();
    expected_context.push(c3.cid());
    expected_context.sort();
    assert_eq!(by_context, expected_context);
    let values: Vec<Vec<u8>> = all(ledger.store(), layout::BY_PATH)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        values
            .iter()
            .filter(|v| v.as_slice() == layout::INDEX_VALUE)
            .count(),
        2,
        "the two new entries hold no cid, the three old ones do"
    );
    assert_eq!(values.len(), 5);
}

#[test]
fn many_index_entries_resolve_across_runs_and_skip_pruned_versions() {
    // More entries than one `get_many` run, some of them pruned by later versions.
    let ledger = Ledger::builder().seed(2).open_in_memory().unwrap();
    let t = tenant("bob");
    let p = protocol("notes");
    apply_one(&ledger, configure(&t, &p, 1), None);
    let mut batch = Vec::new();
    for i in 0..600 {
        let (m, d) = write(&t, &p, &format!("k{i}"), None, 10 + i, b"v");
        batch.push((m, d));
    }
    let firsts: Vec<Cid> = batch.iter().map(|(m, _)| m.cid()).collect();
    ledger.apply(&t, batch, Durability::Buffered).unwrap();
    // Two more versions of the first 100 records: the middle one is pruned by the
    // third (the initial write and the winner stay).
    let mut seconds = Vec::new();
    let mut thirds = Vec::new();
    for (i, first) in firsts.iter().take(100).enumerate() {
        let i = i as u64;
        let (m2, d2) = write(&t, &p, &format!("k{i}"), Some(*first), 1_000 + i, b"w");
        let (m3, d3) = write(&t, &p, &format!("k{i}"), Some(m2.cid()), 2_000 + i, b"x");
        seconds.push(m2.cid());
        thirds.push(m3.cid());
        ledger
            .apply(&t, [(m2, d2), (m3, d3)], Durability::Buffered)
            .unwrap();
    }
    let by_protocol: Vec<Cid> = ledger
        .protocol_cids(&t, &p)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut expected = vec![configure(&t, &p, 1).cid()];
    expected.extend(&firsts);
    expected.extend(&thirds);
    assert_eq!(by_protocol, expected, "log order, pruned versions left out");
    let mut by_path = ledger
        .path_cids(&t, &p, &ProtocolPath::new("note").unwrap())
        .unwrap();
    by_path.sort();
    let mut expected: Vec<Cid> = firsts.iter().chain(&thirds).copied().collect();
    expected.sort();
    assert_eq!(by_path, expected);
    assert!(seconds.iter().all(|c| !by_path.contains(c)));
}
