//! What one-shot syncs leave in a link's status (see `link_status.rs`): a link used only
//! by `sync_once` does not stay `initializing`, and one a watch left `repairing` is
//! healthy again after a sync that converged; a sync that failed changes nothing.

mod sync_support;

use sync_ledger::Durability;
use sync_support::*;
use sync_types::*;

fn status<C: sync_engine::sync::Connector>(e: &sync_engine::Engine<C>) -> LinkStatus {
    e.links().unwrap()[0].status
}

/// The status changes announced so far.
fn changes(rx: &mut tokio::sync::broadcast::Receiver<SyncEvent>) -> Vec<(LinkStatus, LinkStatus)> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let SyncEvent::LinkStatusChanged { from, to, .. } = e {
            out.push((from, to));
        }
    }
    out
}

#[tokio::test]
async fn a_converged_one_shot_sync_leaves_the_link_polling_and_healthy() {
    let net = net();
    let (_server, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    let a = replica(1);
    configure(&a);
    put(&a, "k", b"v");
    let e = engine(&a, net.clone(), vec![endpoint("n")], fast_config());
    let mut events = a.events();
    assert_eq!(status(&e), LinkStatus::Initializing);

    // Used only by one-shot syncs: not `initializing` forever.
    let report = e.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.links[0].converged(), Some(true));
    assert_eq!(status(&e), LinkStatus::Polling);
    assert_eq!(
        changes(&mut events),
        vec![(LinkStatus::Initializing, LinkStatus::Polling)]
    );
    assert!(e.health().unwrap().healthy);

    // A watch saw a fault and left the link repairing (as the live driver persists it):
    // unhealthy until a sync converges.
    let key = link(&e);
    a.ledger()
        .links()
        .update(&key, Durability::Buffered, |s| {
            s.set_status(LinkStatus::Repairing).unwrap();
        })
        .unwrap();
    assert!(!e.health().unwrap().healthy);

    // A sync that fails (the node is gone) changes nothing.
    let node = net.remove(&endpoint("n")).unwrap();
    assert!(!e.sync_once().await.is_ok());
    assert_eq!(status(&e), LinkStatus::Repairing);
    assert!(!e.health().unwrap().healthy);

    // The node is back: one converged sync, and the link is healthy and says so.
    net.insert(endpoint("n"), node);
    let report = e.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.links[0].converged(), Some(true));
    assert_eq!(status(&e), LinkStatus::Polling);
    assert_eq!(
        changes(&mut events),
        vec![(LinkStatus::Repairing, LinkStatus::Polling)]
    );
    let health = e.health().unwrap();
    assert!(health.healthy, "{health:?}");
    assert_eq!(health.degraded_link_count, 0);
}

#[tokio::test]
async fn a_degraded_link_heals_through_repairing_and_paused_stays_paused() {
    let net = net();
    let (_server, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    let a = replica(1);
    configure(&a);
    let e = engine(&a, net.clone(), vec![endpoint("n")], fast_config());
    let key = link(&e);
    let set = |to: &[LinkStatus]| {
        a.ledger()
            .links()
            .update(&key, Durability::Buffered, |s| {
                for &t in to {
                    s.set_status(t).unwrap();
                }
            })
            .unwrap();
    };
    set(&[LinkStatus::Repairing, LinkStatus::DegradedPoll]);
    let mut events = a.events();
    assert!(e.sync_once().await.is_ok());
    assert_eq!(status(&e), LinkStatus::Polling);
    assert_eq!(
        changes(&mut events),
        vec![
            (LinkStatus::DegradedPoll, LinkStatus::Repairing),
            (LinkStatus::Repairing, LinkStatus::Polling)
        ]
    );

    set(&[LinkStatus::Paused]);
    let _ = e.sync_once().await;
    assert_eq!(
        status(&e),
        LinkStatus::Paused,
        "pausing needs an explicit act to undo"
    );
    assert!(changes(&mut events).is_empty());
}
