//! Live events applied in batches: the driver hands every event that queued up for a link
//! while its previous apply ran to one `LinkOps::apply_batch`, and the pull checkpoint
//! still advances only over the contiguous run of events whose apply succeeded; the
//! engine applies a batch in one commit with one outcome per event.

mod sync_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sync_engine::live::{LinkOps, LiveDriver, LiveFeed};
use sync_engine::machine::{
    CatchUpResult, EventClass, LinkConfig, LinkError, PushResult, ReconcileResult,
};
use sync_engine::{Engine, Replica};
use sync_ledger::{LogEntry, LogQuery, LogRead};
use sync_support::*;
use sync_transport::SubscriptionItem;
use sync_transport::proto::{LogEntry as WireEntry, MessageData};
use sync_types::*;
use tokio::sync::{Semaphore, mpsc};

/// A feed the test writes into.
struct TestFeed(mpsc::UnboundedReceiver<SubscriptionItem>);

impl LiveFeed for TestFeed {
    async fn next(&mut self) -> Option<SubscriptionItem> {
        self.0.recv().await
    }
}

/// Operations that record what the driver asks. `apply_batch` waits for a permit of
/// `gate` before it answers, so the test decides when a batch finishes; the event at
/// `failing` fails to apply.
struct TestOps {
    feed: Mutex<Option<mpsc::UnboundedReceiver<SubscriptionItem>>>,
    /// Senders of the feeds opened after the first, kept open so those feeds wait.
    later_feeds: Mutex<Vec<mpsc::UnboundedSender<SubscriptionItem>>>,
    subscribed_from: Mutex<Vec<Option<ProgressToken>>>,
    classified: Mutex<Vec<u64>>,
    batches: Mutex<Vec<Vec<u64>>>,
    gate: Semaphore,
    failing: Option<u64>,
}

impl TestOps {
    fn new(feed: mpsc::UnboundedReceiver<SubscriptionItem>, failing: Option<u64>) -> Self {
        Self {
            feed: Mutex::new(Some(feed)),
            later_feeds: Mutex::default(),
            subscribed_from: Mutex::default(),
            classified: Mutex::default(),
            batches: Mutex::default(),
            gate: Semaphore::new(0),
            failing,
        }
    }
}

impl LinkOps for TestOps {
    type Feed = TestFeed;

    async fn push(&self, _link: LinkState, _after: Option<ProgressToken>) -> PushResult {
        PushResult::Settled { upto: None }
    }

    async fn catch_up(&self, _link: LinkState, after: Option<ProgressToken>) -> CatchUpResult {
        CatchUpResult::Done {
            upto: after,
            head: None,
        }
    }

    async fn reconcile(&self, _link: LinkState) -> ReconcileResult {
        ReconcileResult::Done { converged: true }
    }

    async fn subscribe(
        &self,
        _link: LinkState,
        from: Option<ProgressToken>,
    ) -> Result<TestFeed, LinkError> {
        self.subscribed_from.lock().unwrap().push(from);
        let first = self.feed.lock().unwrap().take();
        Ok(TestFeed(first.unwrap_or_else(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            self.later_feeds.lock().unwrap().push(tx);
            rx
        })))
    }

    fn classify(&self, _link: &LinkState, entry: &LogEntry) -> EventClass {
        self.classified.lock().unwrap().push(entry.token.position);
        EventClass::Apply
    }

    async fn apply(&self, link: LinkState, entry: LogEntry) -> Result<(), LinkError> {
        self.apply_batch(link, vec![entry]).await.remove(0)
    }

    async fn apply_batch(
        &self,
        _link: LinkState,
        entries: Vec<LogEntry>,
    ) -> Vec<Result<(), LinkError>> {
        let positions: Vec<u64> = entries.iter().map(|e| e.token.position).collect();
        self.batches.lock().unwrap().push(positions.clone());
        self.gate.acquire().await.unwrap().forget();
        positions
            .into_iter()
            .map(|p| {
                if Some(p) == self.failing {
                    Err(format!("event {p} failed").into())
                } else {
                    Ok(())
                }
            })
            .collect()
    }
}

/// Five log entries of a scratch replica (a configure and four records) as the node
/// would send them.
fn wire_entries() -> Vec<WireEntry> {
    let r = replica(9);
    configure(&r);
    for i in 0..4 {
        put(&r, &format!("k{i}"), b"v");
    }
    let LogRead::Page(page) = r
        .ledger()
        .read_log(&tenant(), &LogQuery::after(None, 10))
        .unwrap()
    else {
        panic!("the log of a fresh replica has no gap");
    };
    assert_eq!(page.entries.len(), 5);
    page.entries
        .into_iter()
        .map(|e| WireEntry {
            token: e.token,
            item: MessageData {
                message: e.message,
                data: e.data,
            },
        })
        .collect()
}

/// Waits (without a time threshold on the outcome) until `done` holds; fails after a
/// minute so a bug cannot hang the suite.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..6_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn link_state() -> LinkState {
    LinkState::new(tenant(), endpoint("n"), Scope::Full, Authorization::Owner)
}

/// Runs one link over `TestOps`: entry 1 is applied alone while entries 2 to 5 arrive,
/// then 2 to 5 in one batch. Returns the ops, the replica holding the link state and
/// the link's state as its machine sees it at the end.
async fn run(failing: Option<u64>) -> (Arc<TestOps>, Replica, LinkState) {
    let entries = wire_entries();
    let (tx, rx) = mpsc::unbounded_channel();
    let ops = Arc::new(TestOps::new(rx, failing));
    let replica = replica(1);
    let state = link_state();
    let key = state.key.clone();
    let driver = LiveDriver::start(
        replica.clone(),
        ops.clone(),
        vec![state],
        LinkConfig::default(),
    );
    tx.send(SubscriptionItem::EndOfStored { cursor: None })
        .unwrap();
    tx.send(SubscriptionItem::Event(entries[0].clone()))
        .unwrap();
    until("the first batch", || ops.batches.lock().unwrap().len() == 1).await;
    for e in &entries[1..] {
        tx.send(SubscriptionItem::Event(e.clone())).unwrap();
    }
    // The driver queues each event as it classifies it; the queue is handed over when
    // the first batch has finished.
    until("events 2 to 5 classified", || {
        ops.classified.lock().unwrap().len() == 5
    })
    .await;
    ops.gate.add_permits(1);
    until("the second batch", || {
        ops.batches.lock().unwrap().len() == 2
    })
    .await;
    ops.gate.add_permits(1);
    let state = loop {
        // The failure sends the link to repair, which reopens the subscription. That is
        // looked at before the state is read, so the state is from after it (read the
        // other way round, a state from just before the resubscription could pass).
        let resubscribed = ops.subscribed_from.lock().unwrap().len() == 2;
        let states = driver.states().await;
        let state = states.into_iter().find(|s| s.key == key).unwrap();
        let settled = match failing {
            Some(_) => resubscribed,
            None => state.pull.contiguous_applied.map(|t| t.position) == Some(5),
        };
        if settled {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(driver.stop(Duration::from_secs(10)).await);
    (ops, replica, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_queue_during_an_apply_are_applied_in_one_batch() {
    let (ops, replica, state) = run(None).await;
    assert_eq!(
        *ops.batches.lock().unwrap(),
        vec![vec![1], vec![2, 3, 4, 5]]
    );
    assert_eq!(state.pull.contiguous_applied.map(|t| t.position), Some(5));
    assert_eq!(state.counters.messages_pulled, 5);
    let stored = replica.ledger().links().get(&state.key).unwrap().unwrap();
    assert_eq!(
        stored.pull.contiguous_applied.map(|t| t.position),
        Some(5),
        "the checkpoint is saved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_in_a_batch_stops_the_checkpoint_before_it() {
    let (ops, replica, state) = run(Some(3)).await;
    assert_eq!(
        *ops.batches.lock().unwrap(),
        vec![vec![1], vec![2, 3, 4, 5]]
    );
    // 4 and 5 were applied, but 3 was not: the checkpoint covers 1 and 2 only, and the
    // link resubscribes from there.
    assert_eq!(state.pull.contiguous_applied.map(|t| t.position), Some(2));
    assert_eq!(
        ops.subscribed_from.lock().unwrap()[1].map(|t| t.position),
        Some(2)
    );
    let stored = replica.ledger().links().get(&state.key).unwrap().unwrap();
    assert_eq!(stored.pull.contiguous_applied.map(|t| t.position), Some(2));
}

/// The engine's batch: one commit, outcomes in the order given even when a record comes
/// before the configure it needs, and a bad event fails alone.
#[tokio::test]
async fn the_engine_applies_a_batch_in_dependency_order_with_one_outcome_per_event() {
    let net = net();
    let (_server, n) = new_node(&key(), 100);
    net.insert(endpoint("n"), n);
    let a = replica(1);
    let engine: Engine<_> = engine(&a, net.clone(), vec![endpoint("n")], fast_config());
    let link = link(&engine);
    let mut entries = wire_entries();
    // Records first, their configure last.
    entries.rotate_left(1);
    let mut items: Vec<(Message, Option<Vec<u8>>)> = entries
        .into_iter()
        .map(|e| (e.item.message, e.item.data))
        .collect();
    // The last record with inline data that does not match its reference.
    items[3].1 = Some(b"not the data".to_vec());
    let outcomes = engine.apply_live_batch(&link, items).await.unwrap();
    assert_eq!(outcomes.len(), 5);
    for (i, o) in outcomes.iter().enumerate() {
        if i == 3 {
            assert!(!o.is_success(), "the bad record: {o}");
        } else {
            assert!(o.is_success(), "event {i}: {o}");
        }
    }
    assert_eq!(records(&a).len(), 3);
    assert_eq!(get(&a, "k0"), Some(b"v".to_vec()));
    assert_eq!(get(&a, "k3"), None);
    // Applied again, intact: the three are duplicates, k3 is new; one outcome each.
    let again = engine
        .apply_live_batch(
            &link,
            wire_entries()
                .into_iter()
                .map(|e| (e.item.message, e.item.data))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(again.len(), 5);
    assert!(again.iter().all(ApplyOutcome::is_success), "{again:?}");
    assert_eq!(records(&a).len(), 4);
}

/// A burst of live events much larger than the deliveries a link may have in flight,
/// arriving while an apply is slow (a backlog the node sends after its database came
/// back, or another replica's large push): the driver stops reading the subscription
/// while the limit is reached instead of sending the link to repair, and every event is
/// applied, in order, on the one subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_in_flight_limit_waits_instead_of_repairing() {
    const IN_FLIGHT_MAX: usize = 4;
    const EVENTS: u64 = 40;
    let template = wire_entries().remove(4);
    let (tx, rx) = mpsc::unbounded_channel();
    let ops = Arc::new(TestOps::new(rx, None));
    let state = link_state();
    let key = state.key.clone();
    let config = LinkConfig {
        in_flight_deliveries_max: IN_FLIGHT_MAX,
        ..LinkConfig::default()
    };
    let driver = LiveDriver::start(replica(1), ops.clone(), vec![state], config);
    tx.send(SubscriptionItem::EndOfStored { cursor: None })
        .unwrap();
    for position in 1..=EVENTS {
        let mut e = template.clone();
        e.token.position = position;
        tx.send(SubscriptionItem::Event(e)).unwrap();
    }
    // The first apply is held: the driver takes in no more than the limit meanwhile.
    until("the first batch", || ops.batches.lock().unwrap().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        ops.classified.lock().unwrap().len() <= IN_FLIGHT_MAX,
        "{} events taken in with {IN_FLIGHT_MAX} allowed in flight",
        ops.classified.lock().unwrap().len()
    );
    let state = loop {
        ops.gate.add_permits(1);
        let states = driver.states().await;
        let state = states.into_iter().find(|s| s.key == key).unwrap();
        if state.pull.contiguous_applied.map(|t| t.position) == Some(EVENTS) {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(driver.stop(Duration::from_secs(10)).await);
    assert_eq!(state.counters.repairs, 0);
    assert_eq!(
        ops.subscribed_from.lock().unwrap().len(),
        1,
        "one subscription"
    );
    let applied: Vec<u64> = ops.batches.lock().unwrap().concat();
    assert_eq!(applied, (1..=EVENTS).collect::<Vec<_>>());
    assert!(
        ops.batches
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.len() <= IN_FLIGHT_MAX),
        "{:?}",
        ops.batches.lock().unwrap()
    );
}
