//! Unit tests of the replica that need its internals.

use super::*;
use sync_types::{ManualClock, TypeRule, Write};

#[test]
fn a_local_write_superseded_at_once_is_reported_as_superseded() {
    let tenant = TenantId::new("t").unwrap();
    let protocol = ProtocolName::new("p").unwrap();
    let path = ProtocolPath::new("item").unwrap();
    let author = PrincipalId::new("me").unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let r = Replica::builder().clock(clock).in_memory().unwrap();
    let types = vec![TypeRule {
        path: path.clone(),
        data_bytes_max: None,
    }];
    r.configure(&tenant, &protocol, types, vec![], &author)
        .unwrap();
    let first = r
        .put(&tenant, &protocol, &path, b"k", b"v1".to_vec(), &author)
        .unwrap();
    let second = r
        .put(&tenant, &protocol, &path, b"k", b"v2".to_vec(), &author)
        .unwrap();
    assert_eq!(
        (first.outcome, second.outcome),
        (WriteOutcome::Won, WriteOutcome::Won)
    );
    // A version based on the first and stamped before the second: what a replica wrote
    // before the causality rule, after a restart with its clock behind.
    let stored = r
        .ledger()
        .get_message(&tenant, &second.cid)
        .unwrap()
        .unwrap();
    let Message::Write(w) = stored.message else {
        panic!("a write")
    };
    let stale = Message::Write(Write {
        prev: Some(first.cid),
        timestamp: Hlc {
            wall_ms: 1,
            counter: 0,
            node: r.node_id(),
        },
        data: Some(DataRef::of(b"v3")),
        ..w
    });
    let receipt = {
        let _writer = lock(&r.inner.writer);
        r.apply_local_locked(&tenant, stale, Some(b"v3".to_vec()))
            .unwrap()
    };
    assert_eq!(
        receipt.outcome,
        WriteOutcome::Superseded { winner: second.cid }
    );
    assert!(!receipt.won());
    assert_eq!(receipt.token, None);
}
