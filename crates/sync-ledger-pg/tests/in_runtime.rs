//! The store works when the calling thread drives a tokio runtime (the engine calls the
//! ledger from async tasks): the `postgres` client, which blocks on a runtime of its
//! own, is then driven from a helper thread instead of panicking.

#[path = "../../sync-ledger/tests/common/mod.rs"]
mod common;
mod support;

use sync_ledger::store::Durability;
use sync_ledger::{Ledger, LogQuery, LogRead};

#[test]
fn the_store_works_inside_a_tokio_runtime() {
    let schema = support::fresh_schema("runtime");
    // Opened outside, used inside; and opened inside too (new connections, drops).
    let outside = Ledger::open(support::open(&schema)).unwrap();
    let t = common::tenant("did:example:async");
    let p = common::protocol("https://example.com/notes");
    for flavor in ["current_thread", "multi_thread"] {
        let rt = match flavor {
            "current_thread" => tokio::runtime::Builder::new_current_thread().build(),
            _ => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build(),
        }
        .unwrap();
        let (schema, t, p, outside) = (&schema, &t, &p, &outside);
        rt.block_on(async move {
            let key = format!("{flavor}-a");
            outside
                .apply(
                    t,
                    [common::write(t, p, &key, None, 1, b"a")],
                    Durability::SyncData,
                )
                .unwrap();
            let inside = Ledger::open(support::open(schema)).unwrap();
            let key = format!("{flavor}-b");
            inside
                .apply(
                    t,
                    [common::write(t, p, &key, None, 2, b"b")],
                    Durability::Buffered,
                )
                .unwrap();
            let LogRead::Page(page) = inside.read_log(t, &LogQuery::after(None, 100)).unwrap()
            else {
                panic!("a fresh cursor never gaps")
            };
            assert!(page.entries.len() >= 2);
            inside.persist(Durability::SyncData).unwrap();
            drop(inside);
        });
    }
    assert_eq!(outside.log_info(&t).unwrap().unwrap().head_position, 4);
}
