//! Causality across restarts, on fjall: a local version always orders after the version
//! it replaces and after everything its replica stored before, whatever the wall clock
//! does; the node id is created once and reused; receipts say whether a write won.

mod log_support;

use std::sync::Arc;

use sync_engine::{Origin, Replica, WriteOutcome};
use sync_types::*;

fn tenant() -> TenantId {
    TenantId::new("did:example:alice").unwrap()
}
fn notes() -> ProtocolName {
    ProtocolName::new("https://example.com/notes").unwrap()
}
fn note() -> ProtocolPath {
    ProtocolPath::new("note").unwrap()
}
fn alice() -> PrincipalId {
    PrincipalId::new("did:example:alice").unwrap()
}

fn configure(r: &Replica) {
    let types = vec![TypeRule {
        path: note(),
        data_bytes_max: None,
    }];
    r.configure(&tenant(), &notes(), types, vec![], &alice())
        .unwrap();
}

/// Opens (or reopens, as a new process would) the replica in `dir`: no node id, no clock
/// state, nothing but the store.
fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Replica {
    Replica::builder().clock(clock.clone()).open(dir).unwrap()
}

/// Every message of the tenant's log with its inline data, in log order.
fn log(r: &Replica) -> Vec<(Message, Option<Vec<u8>>)> {
    log_support::full_log(r, &tenant())
}

fn put(r: &Replica, key: &[u8], value: &[u8]) -> sync_engine::Receipt {
    r.put(&tenant(), &notes(), &note(), key, value.to_vec(), &alice())
        .unwrap()
}

fn value(r: &Replica, key: &[u8]) -> Option<Vec<u8>> {
    r.get_by_key(&tenant(), &notes(), key)
        .unwrap()
        .and_then(|rec| rec.data)
}

const NOW: u64 = 1_700_000_000_000;

/// The lost write of issue 15: a version from a device 30 s ahead, edited here, then
/// edited again after a restart.
#[test]
fn an_edit_after_a_restart_wins_over_an_edit_based_on_a_version_from_a_fast_clock() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let fast = Arc::new(ManualClock::new(NOW + 30_000));
    let clock = Arc::new(ManualClock::new(NOW));
    let a = open(dir_a.path(), &fast);
    configure(&a);
    let v1 = put(&a, b"doc", b"from a fast clock");
    assert_eq!(v1.outcome, WriteOutcome::Won);

    let b = open(dir_b.path(), &clock);
    let applied = b.apply(&tenant(), log(&a), Origin::Remote(None)).unwrap();
    assert!(applied.iter().all(|o| *o == ApplyOutcome::Applied));
    let edit = put(&b, b"doc", b"first edit");
    assert!(edit.won());
    let first_ts = b
        .get(&tenant(), &edit.record_id)
        .unwrap()
        .unwrap()
        .timestamp;
    assert!(first_ts.wall_ms >= NOW + 30_000, "the edit orders after v1");
    drop(b);

    // A new process, the wall clock still 30 s behind the edit it made.
    clock.advance(1_000);
    let b = open(dir_b.path(), &clock);
    let again = put(&b, b"doc", b"second edit");
    assert_eq!(
        again.outcome,
        WriteOutcome::Won,
        "the edit after the restart won"
    );
    let rec = b.get(&tenant(), &again.record_id).unwrap().unwrap();
    assert_eq!(rec.cid, again.cid);
    assert_eq!(rec.data.as_deref(), Some(&b"second edit"[..]));
    assert!(rec.timestamp > first_ts);

    // Everyone else agrees.
    a.apply(&tenant(), log(&b), Origin::Remote(None)).unwrap();
    assert_eq!(value(&a, b"doc").as_deref(), Some(&b"second edit"[..]));
}

#[test]
fn a_delete_after_a_restart_and_a_clock_jump_back_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let r = open(dir.path(), &clock);
    configure(&r);
    let w = put(&r, b"doc", b"v");
    drop(r);
    clock.set(NOW - 3_600_000);
    let r = open(dir.path(), &clock);
    let d = r.delete(&tenant(), w.record_id, &alice()).unwrap();
    assert!(d.won());
    assert!(r.get(&tenant(), &w.record_id).unwrap().is_none());
}

/// A device's own edits keep their order across restarts and backward clock jumps, for
/// different records too (nothing links them but the clock's durable high-water mark).
#[test]
fn a_clock_jumping_back_never_reorders_a_devices_own_edits() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let mut stamps = Vec::new();
    let mut r = open(dir.path(), &clock);
    configure(&r);
    for (i, jump) in [0u64, 5_000, 60_000, 3_600_000, 1].into_iter().enumerate() {
        let key = format!("k{i}");
        let receipt = put(&r, key.as_bytes(), b"v");
        assert!(receipt.won());
        stamps.push(
            r.get(&tenant(), &receipt.record_id)
                .unwrap()
                .unwrap()
                .timestamp,
        );
        // Backwards, in the running process on even turns, across a restart on odd ones.
        clock.set(clock.now_ms() - jump);
        if i % 2 == 1 {
            drop(r);
            r = open(dir.path(), &clock);
        }
    }
    let receipt = put(&r, b"last", b"v");
    stamps.push(
        r.get(&tenant(), &receipt.record_id)
            .unwrap()
            .unwrap()
            .timestamp,
    );
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "timestamps in write order: {stamps:?}"
    );
    assert_eq!(r.ledger().hlc_high_water(), *stamps.last().unwrap());
}

/// A remote version's timestamp raises the durable mark too: after a restart the
/// replica's new record orders after a remote version it stored, clock or no clock.
#[test]
fn observed_remote_timestamps_are_durable() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let fast = Arc::new(ManualClock::new(NOW + 50_000));
    let clock = Arc::new(ManualClock::new(NOW));
    let a = open(dir_a.path(), &fast);
    configure(&a);
    put(&a, b"remote", b"v");
    let remote_ts = a.ledger().hlc_high_water();
    let b = open(dir_b.path(), &clock);
    b.apply(&tenant(), log(&a), Origin::Remote(None)).unwrap();
    assert_eq!(b.ledger().hlc_high_water(), remote_ts);
    drop(b);
    let b = open(dir_b.path(), &clock);
    let mine = put(&b, b"mine", b"v");
    let ts = b
        .get(&tenant(), &mine.record_id)
        .unwrap()
        .unwrap()
        .timestamp;
    assert!(ts > remote_ts);
}

#[test]
fn the_node_id_is_created_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let first = open(dir.path(), &clock);
    let id = first.node_id();
    assert_eq!(first.ledger().node_id().unwrap(), Some(id));
    drop(first);
    let again = open(dir.path(), &clock);
    assert_eq!(again.node_id(), id, "the same device after a restart");
    drop(again);
    // An explicit id overrides for one open and never replaces the stored one.
    let other = Replica::builder()
        .clock(clock.clone())
        .node_id(NodeId(id.0 ^ 1))
        .open(dir.path())
        .unwrap();
    assert_eq!(other.node_id(), NodeId(id.0 ^ 1));
    assert_eq!(other.ledger().node_id().unwrap(), Some(id));
    drop(other);
    // Two fresh stores get different ids.
    let dir2 = tempfile::tempdir().unwrap();
    assert_ne!(open(dir2.path(), &clock).node_id(), id);
}

#[test]
fn a_reconfigure_after_a_restart_with_a_clock_behind_becomes_current() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let r = open(dir.path(), &clock);
    configure(&r);
    drop(r);
    clock.set(NOW - 60_000);
    let r = open(dir.path(), &clock);
    let types = vec![
        TypeRule {
            path: note(),
            data_bytes_max: None,
        },
        TypeRule {
            path: ProtocolPath::new("note/tag").unwrap(),
            data_bytes_max: None,
        },
    ];
    let cid = r
        .configure(&tenant(), &notes(), types, vec![], &alice())
        .unwrap();
    let (current, _) = r
        .ledger()
        .protocol_definition(&tenant(), &notes())
        .unwrap()
        .unwrap();
    assert_eq!(current, cid);
}
