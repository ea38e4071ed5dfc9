//! Every conflict policy, before and after a restart, on fjall: last writer wins,
//! prefer-local, prefer-remote and a callback; policies per protocol; conflicts reported
//! as events with their winner and losers.
//!
//! Each test builds the same conflict: replica A and replica B both edit `doc` on top
//! of the same base; B's edit is later, so the merge rule picks it. The replica whose
//! policy acts is restarted (a new process: only its store) before it hears the other
//! side, so "local" must still mean the same device.

mod log_support;

use std::sync::{Arc, Mutex};

use sync_engine::{ConflictInfo, ConflictPolicy, Origin, Replica, Resolution};
use sync_types::*;

fn tenant() -> TenantId {
    TenantId::new("did:example:alice").unwrap()
}
fn notes() -> ProtocolName {
    ProtocolName::new("https://example.com/notes").unwrap()
}
fn tasks() -> ProtocolName {
    ProtocolName::new("https://example.com/tasks").unwrap()
}
fn item() -> ProtocolPath {
    ProtocolPath::new("item").unwrap()
}
fn alice() -> PrincipalId {
    PrincipalId::new("did:example:alice").unwrap()
}

const NOW: u64 = 1_700_000_000_000;

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>, policy: ConflictPolicy) -> Replica {
    Replica::builder()
        .clock(clock.clone())
        .conflict_policy(policy)
        .open(dir)
        .unwrap()
}

/// Every message of the tenant's log with its inline data, in log order.
fn log(r: &Replica) -> Vec<(Message, Option<Vec<u8>>)> {
    log_support::full_log(r, &tenant())
}

fn sync(from: &Replica, to: &Replica) {
    let outcomes = to
        .apply(&tenant(), log(from), Origin::Remote(None))
        .unwrap();
    assert!(
        outcomes.iter().all(|o| !matches!(
            o,
            ApplyOutcome::Invalid { .. } | ApplyOutcome::Incomplete { .. }
        )),
        "{outcomes:?}"
    );
}

fn put(r: &Replica, protocol: &ProtocolName, value: &[u8]) -> sync_engine::Receipt {
    let receipt = r
        .put(
            &tenant(),
            protocol,
            &item(),
            b"doc",
            value.to_vec(),
            &alice(),
        )
        .unwrap();
    assert!(receipt.won(), "a local edit wins where it is made");
    receipt
}

fn value(r: &Replica, protocol: &ProtocolName) -> Vec<u8> {
    r.get_by_key(&tenant(), protocol, b"doc")
        .unwrap()
        .unwrap()
        .data
        .unwrap()
}

struct Setup {
    dir_a: tempfile::TempDir,
    dir_b: tempfile::TempDir,
    clock: Arc<ManualClock>,
    a: Replica,
    b: Replica,
    mine: Cid,
    theirs: Cid,
}

/// A and B edit `doc` of each protocol concurrently; B's edit is later.
fn conflict(policy_a: ConflictPolicy, policy_b: ConflictPolicy) -> Setup {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(NOW));
    let a = open(dir_a.path(), &clock, policy_a);
    let b = open(dir_b.path(), &clock, policy_b);
    for protocol in [notes(), tasks()] {
        let types = vec![TypeRule {
            path: item(),
            data_bytes_max: None,
        }];
        a.configure(&tenant(), &protocol, types, vec![], &alice())
            .unwrap();
        put(&a, &protocol, b"base");
    }
    sync(&a, &b);
    clock.advance(10);
    let mine = put(&a, &notes(), b"mine").cid;
    put(&a, &tasks(), b"mine");
    clock.advance(10);
    let theirs = put(&b, &notes(), b"theirs").cid;
    put(&b, &tasks(), b"theirs");
    Setup {
        dir_a,
        dir_b,
        clock,
        a,
        b,
        mine,
        theirs,
    }
}

/// Restarts a replica: drops it and opens its directory again with `policy`.
fn restart(
    r: Replica,
    dir: &tempfile::TempDir,
    clock: &Arc<ManualClock>,
    p: ConflictPolicy,
) -> Replica {
    drop(r);
    open(dir.path(), clock, p)
}

fn converge(a: &Replica, b: &Replica) {
    for _ in 0..3 {
        sync(a, b);
        sync(b, a);
    }
    assert_eq!(
        a.root(&tenant(), &Scope::Full).unwrap(),
        b.root(&tenant(), &Scope::Full).unwrap()
    );
    for protocol in [notes(), tasks()] {
        assert_eq!(value(a, &protocol), value(b, &protocol));
    }
}

#[test]
fn last_writer_wins_keeps_the_later_version_and_reports_the_conflict() {
    let s = conflict(
        ConflictPolicy::LastWriterWins,
        ConflictPolicy::LastWriterWins,
    );
    let a = restart(s.a, &s.dir_a, &s.clock, ConflictPolicy::LastWriterWins);
    let mut events = a.events();
    sync(&s.b, &a);
    let event = events.try_recv().unwrap();
    let SyncEvent::Conflict { winner, losers, .. } = event else {
        panic!("{event:?}")
    };
    assert_eq!((winner, losers), (s.theirs, vec![s.mine]));
    assert_eq!(value(&a, &notes()), b"theirs");
    converge(&a, &s.b);
    assert_eq!(value(&a, &notes()), b"theirs");
}

#[test]
fn prefer_local_after_a_restart_writes_this_devices_version_again() {
    let s = conflict(ConflictPolicy::PreferLocal, ConflictPolicy::LastWriterWins);
    // Restarted before hearing of B's edit: "local" must still mean A's own edit.
    let a = restart(s.a, &s.dir_a, &s.clock, ConflictPolicy::PreferLocal);
    let mut events = a.events();
    sync(&s.b, &a);
    assert!(matches!(
        events.try_recv().unwrap(),
        SyncEvent::Conflict { winner, .. } if winner == s.theirs
    ));
    assert_eq!(
        value(&a, &notes()),
        b"mine",
        "prefer-local wrote mine again"
    );
    converge(&a, &s.b);
    assert_eq!(value(&s.b, &notes()), b"mine");
}

#[test]
fn prefer_remote_after_a_restart_writes_the_remote_version_again() {
    let s = conflict(ConflictPolicy::LastWriterWins, ConflictPolicy::PreferRemote);
    // B's own edit won; after a restart B must still see it as local and yield.
    let b = restart(s.b, &s.dir_b, &s.clock, ConflictPolicy::PreferRemote);
    sync(&s.a, &b);
    assert_eq!(
        value(&b, &notes()),
        b"mine",
        "prefer-remote wrote A's edit again"
    );
    converge(&s.a, &b);
    assert_eq!(value(&s.a, &notes()), b"mine");
}

#[test]
fn prefer_remote_keeps_a_remote_winner_and_prefer_local_a_local_one() {
    // Neither policy has anything to do when the winner is already the one it prefers.
    let s = conflict(ConflictPolicy::PreferRemote, ConflictPolicy::PreferLocal);
    let a = restart(s.a, &s.dir_a, &s.clock, ConflictPolicy::PreferRemote);
    let b = restart(s.b, &s.dir_b, &s.clock, ConflictPolicy::PreferLocal);
    sync(&b, &a);
    sync(&a, &b);
    assert_eq!(value(&a, &notes()), b"theirs");
    assert_eq!(value(&b, &notes()), b"theirs");
    assert_eq!(
        b.get_by_key(&tenant(), &notes(), b"doc")
            .unwrap()
            .unwrap()
            .cid,
        s.theirs,
        "no new version was written"
    );
}

#[test]
fn a_callback_sees_winner_and_losers_and_its_resolution_converges() {
    let seen: Arc<Mutex<Vec<ConflictInfo>>> = Arc::default();
    let seen2 = seen.clone();
    let merge = ConflictPolicy::Callback(Arc::new(move |info: &ConflictInfo| {
        seen2.lock().unwrap().push(info.clone());
        let mut parts: Vec<Vec<u8>> = info.losers.iter().filter_map(|(_, d)| d.clone()).collect();
        parts.extend(info.winner_data.clone());
        parts.sort();
        Resolution::Write(Some(parts.join(&b'+')))
    }));
    let s = conflict(merge.clone(), ConflictPolicy::LastWriterWins);
    let a = restart(s.a, &s.dir_a, &s.clock, merge);
    sync(&s.b, &a);
    let infos = seen.lock().unwrap().clone();
    let info = infos
        .iter()
        .find(|i| i.winner == s.theirs)
        .expect("the callback saw the notes conflict");
    assert_eq!(info.winner_data.as_deref(), Some(&b"theirs"[..]));
    assert_eq!(info.losers, vec![(s.mine, Some(b"mine".to_vec()))]);
    assert_eq!(value(&a, &notes()), b"mine+theirs");
    converge(&a, &s.b);
    assert_eq!(value(&s.b, &notes()), b"mine+theirs");
}

#[test]
fn a_policy_per_protocol_overrides_the_replica_default() {
    let s = conflict(
        ConflictPolicy::LastWriterWins,
        ConflictPolicy::LastWriterWins,
    );
    drop(s.a);
    let a = Replica::builder()
        .clock(s.clock.clone())
        .conflict_policy_for(tasks(), ConflictPolicy::PreferLocal)
        .open(s.dir_a.path())
        .unwrap();
    assert!(matches!(
        a.conflict_policy(&notes()),
        ConflictPolicy::LastWriterWins
    ));
    sync(&s.b, &a);
    assert_eq!(value(&a, &notes()), b"theirs", "notes: last writer wins");
    assert_eq!(value(&a, &tasks()), b"mine", "tasks: prefer local");
    converge(&a, &s.b);

    // Set at run time, the same.
    let s = conflict(
        ConflictPolicy::LastWriterWins,
        ConflictPolicy::LastWriterWins,
    );
    s.a.set_conflict_policy(ConflictPolicy::PreferLocal);
    s.a.set_conflict_policy_for(notes(), ConflictPolicy::LastWriterWins);
    sync(&s.b, &s.a);
    assert_eq!(value(&s.a, &notes()), b"theirs");
    assert_eq!(value(&s.a, &tasks()), b"mine");
}

/// The same conflict without a restart, each policy on the replica whose version lost
/// (or, for prefer-remote, won): the outcome is the one each policy promises.
#[test]
fn every_policy_without_a_restart() {
    let keep_mine = ConflictPolicy::Callback(Arc::new(|info: &ConflictInfo| {
        Resolution::Write(info.losers.first().and_then(|(_, d)| d.clone()))
    }));
    let cases: [(ConflictPolicy, bool, &[u8]); 4] = [
        (ConflictPolicy::LastWriterWins, true, b"theirs"),
        (ConflictPolicy::PreferLocal, true, b"mine"),
        (ConflictPolicy::PreferRemote, false, b"mine"),
        (keep_mine, true, b"mine"),
    ];
    for (policy, on_a, expected) in cases {
        let name = format!("{policy:?}");
        let (pa, pb) = if on_a {
            (policy, ConflictPolicy::LastWriterWins)
        } else {
            (ConflictPolicy::LastWriterWins, policy)
        };
        let s = conflict(pa, pb);
        if on_a {
            sync(&s.b, &s.a);
            assert_eq!(value(&s.a, &notes()), expected, "{name}");
        } else {
            sync(&s.a, &s.b);
            assert_eq!(value(&s.b, &notes()), expected, "{name}");
        }
        converge(&s.a, &s.b);
        assert_eq!(value(&s.a, &notes()), expected, "{name}");
    }
}

/// An edit against a delete is a conflict too: prefer-local deletes again when a later
/// remote edit beat its delete, and writes its edit again when a later remote delete
/// beat its edit.
#[test]
fn prefer_local_applies_to_deletes_against_edits() {
    for local_deletes in [true, false] {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(NOW));
        let a = open(dir_a.path(), &clock, ConflictPolicy::PreferLocal);
        let b = open(dir_b.path(), &clock, ConflictPolicy::LastWriterWins);
        let types = vec![TypeRule {
            path: item(),
            data_bytes_max: None,
        }];
        a.configure(&tenant(), &notes(), types, vec![], &alice())
            .unwrap();
        let record = put(&a, &notes(), b"base").record_id;
        sync(&a, &b);
        // A changes the base one way, B the other way, later.
        clock.advance(10);
        let mine = if local_deletes {
            a.delete(&tenant(), record, &alice()).unwrap()
        } else {
            put(&a, &notes(), b"mine")
        };
        assert!(mine.won());
        clock.advance(10);
        let theirs = if local_deletes {
            put(&b, &notes(), b"theirs")
        } else {
            b.delete(&tenant(), record, &alice()).unwrap()
        };
        assert!(theirs.won());
        let a = restart(a, &dir_a, &clock, ConflictPolicy::PreferLocal);
        let mut events = a.events();
        sync(&b, &a);
        assert!(matches!(
            events.try_recv().unwrap(),
            SyncEvent::Conflict { winner, losers, .. }
                if winner == theirs.cid && losers == vec![mine.cid]
        ));
        let expected = if local_deletes {
            None
        } else {
            Some(b"mine".to_vec())
        };
        let got = |r: &Replica| r.get(&tenant(), &record).unwrap().and_then(|r| r.data);
        assert_eq!(got(&a), expected, "prefer-local kept A's change");
        for _ in 0..3 {
            sync(&a, &b);
            sync(&b, &a);
        }
        assert_eq!(got(&b), expected);
        assert_eq!(
            a.root(&tenant(), &Scope::Full).unwrap(),
            b.root(&tenant(), &Scope::Full).unwrap()
        );
    }
}
