//! One owner of link state (`link_news.rs`): while a live driver runs a link, what the
//! engine's operations report goes to the driver's machine, so the stored state is the
//! machine's and nothing overwrites it; a live replica that only pulls has nothing
//! pending to push and counts what it pulled, bytes included; times are wall-clock.

mod sync_support;

use std::time::Duration;

use sync_engine::live::LiveSync;
use sync_engine::machine::LinkConfig;
use sync_support::*;
use sync_types::*;

/// 2020-01-01 in ms since the Unix epoch: any wall-clock time of this test is later, and
/// a time on the driver's own clock (ms since it started) is far earlier.
const WALL_CLOCK_MS_MIN: u64 = 1_577_836_800_000;

/// Polls `f` every 10 ms until it holds, at most 20 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replica_that_never_wrote_has_nothing_pending_and_counts_what_it_pulled() {
    let net = net();
    let (server, node) = new_node(&key(), 100);
    net.insert(endpoint("n"), node);
    configure(&server);
    for i in 0..10 {
        put(&server, &format!("k{i}"), b"value");
    }
    let b = replica(2);
    let engine = engine(&b, net.clone(), vec![endpoint("n")], fast_config());
    let link = link(&engine);
    let live = LiveSync::start(engine.clone(), LinkConfig::default()).unwrap();
    eventually("b holds every record", || {
        (0..10).all(|i| get(&b, &format!("k{i}")).as_deref() == Some(&b"value"[..]))
    })
    .await;
    // Written on the node after b went live: these arrive as live events.
    for i in 10..15 {
        put(&server, &format!("k{i}"), b"later");
    }
    eventually("b holds the live writes", || {
        (10..15).all(|i| get(&b, &format!("k{i}")).as_deref() == Some(&b"later"[..]))
    })
    .await;
    eventually("nothing is pending to push", || {
        engine.pending_outbound(&link).unwrap() == 0
    })
    .await;
    let stored = engine.links().unwrap().remove(0);
    assert!(
        stored.counters.messages_pulled >= 16,
        "every message pulled is counted: {:?}",
        stored.counters
    );
    assert!(
        stored.counters.bytes_pulled >= 16 * 5,
        "bytes pulled are counted, live ones too: {:?}",
        stored.counters
    );
    assert_eq!(stored.counters.messages_pushed, 0, "b never wrote");
    assert!(engine.health().unwrap().pending_outbound == 0);
    assert_eq!(
        engine.counters().unwrap(),
        stored.counters,
        "one link: its totals"
    );
    assert!(live.stop(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_sync_while_a_driver_runs_the_link_reports_to_its_machine() {
    let net = net();
    let (server, node) = new_node(&key(), 100);
    net.insert(endpoint("n"), node);
    configure(&server);
    let a = replica(1);
    configure(&a);
    let engine = engine(&a, net.clone(), vec![endpoint("n")], fast_config());
    let live = LiveSync::start(engine.clone(), LinkConfig::default()).unwrap();
    for i in 0..5 {
        put(&a, &format!("a{i}"), b"from a");
        put(&server, &format!("s{i}"), b"from the node");
    }
    eventually("a holds the node's writes", || {
        (0..5).all(|i| get(&a, &format!("s{i}")).is_some())
    })
    .await;
    eventually("the node holds a's writes", || {
        (0..5).all(|i| get(&server, &format!("a{i}")).is_some())
    })
    .await;

    // A one-shot sync of the same link, while the driver runs it.
    let report = engine.sync_once().await;
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.links[0].converged(), Some(true));

    // The driver's machine and the store agree: nothing the sync reported was
    // overwritten by an older snapshot, and the sync's convergence is on record.
    let mut last = None;
    eventually("the machine's state is the stored state", || {
        let stored = engine.links().unwrap().remove(0);
        let running = futures_executor(&live);
        let same = running.as_ref().is_some_and(|r| {
            r.pull == stored.pull
                && r.push == stored.push
                && r.counters == stored.counters
                && r.last_sync_ms == stored.last_sync_ms
                && r.needs_reconcile == stored.needs_reconcile
        });
        last = Some((running, stored));
        same
    })
    .await;
    let (_, stored) = last.unwrap();
    let synced = stored.last_sync_ms.expect("the sync converged");
    assert!(
        synced >= WALL_CLOCK_MS_MIN,
        "last_sync_ms is wall-clock time, not the driver's: {synced}"
    );
    assert!(!stored.needs_reconcile);
    assert!(
        stored.counters.messages_pushed >= 5,
        "{:?}",
        stored.counters
    );
    assert!(live.stop(Duration::from_secs(5)).await);
}

/// The driver's view of the only link, read without an async context.
fn futures_executor<C: sync_engine::sync::Connector>(live: &LiveSync<C>) -> Option<LinkState> {
    let driver = live.driver();
    let states =
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(driver.states()));
    states.into_iter().next()
}
