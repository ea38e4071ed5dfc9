//! The live driver: runs one [`LinkMachine`] per link against the ledger and a remote.
//!
//! The machines decide; the driver only does what their actions say, in order, and feeds
//! back what happened. It is one tokio task consuming one closed [`Event`] enum (timers
//! firing, operations finishing, subscription items, local writes, control), so there
//! is exactly one place where link state changes.
//!
//! The three operations a link needs — push the local log, catch up on the remote log,
//! reconcile by tree diff — and the live subscription are behind [`LinkOps`], implemented
//! over the transport by the engine and by the simulation over its simulated network.
//!
//! # Teardown safety
//!
//! Every task the driver spawns for a link (a timer, a subscription reader, an
//! operation) carries the link's *incarnation*: a number that changes whenever the link
//! is added, removed or reconfigured. Events from an old incarnation are dropped, and
//! the tasks are aborted when their incarnation ends, so nothing stale mutates state.
//! [`LiveDriver::stop`] stops every machine (which persists their last state), aborts
//! every task and waits for the loop to end, with a timeout.
//!
//! # Durability of link state
//!
//! Link state (checkpoints, status) is saved with [`Durability::Buffered`]: it survives a
//! process crash, and a power loss can only roll a checkpoint back, which replays
//! messages that apply idempotently. The messages themselves were committed with the
//! replica's durability before any checkpoint could cover them.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sync_ledger::{Durability, LogEntry};
use sync_transport::SubscriptionItem;
use sync_types::{LinkKey, LinkState, ProgressToken};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::delivery::Ordinal;
use crate::machine::{
    Action, CatchUpResult, EventClass, EventDecision, LinkConfig, LinkError, LinkMachine,
    PushResult, ReconcileResult, SubscriptionEnd, SubscriptionId, Ticket, Timer,
};
use crate::replica::Replica;

mod engine_ops;
mod feed;

pub use engine_ops::{EngineOps, LiveSync};

/// A stream of live items for one link.
pub trait LiveFeed: Send + 'static {
    /// The next item; `None` when the feed ended.
    fn next(&mut self) -> impl Future<Output = Option<SubscriptionItem>> + Send;
}

impl LiveFeed for sync_transport::Subscription {
    async fn next(&mut self) -> Option<SubscriptionItem> {
        sync_transport::Subscription::next(self).await
    }
}

/// What a link needs from the outside world.
pub trait LinkOps: Send + Sync + 'static {
    /// The feed type of [`subscribe`](Self::subscribe).
    type Feed: LiveFeed;

    /// Pushes the local log after `after` to the link's remote.
    fn push(
        &self,
        link: LinkState,
        after: Option<ProgressToken>,
    ) -> impl Future<Output = PushResult> + Send;

    /// Reads and applies the remote log after `after`.
    fn catch_up(
        &self,
        link: LinkState,
        after: Option<ProgressToken>,
    ) -> impl Future<Output = CatchUpResult> + Send;

    /// Reconciles the link's scope by tree diff, both ways, and compares roots.
    fn reconcile(&self, link: LinkState) -> impl Future<Output = ReconcileResult> + Send;

    /// Opens the live subscription after `from`.
    fn subscribe(
        &self,
        link: LinkState,
        from: Option<ProgressToken>,
    ) -> impl Future<Output = Result<Self::Feed, LinkError>> + Send;

    /// Classifies a live event: must it be applied, can it be skipped (already held, or
    /// out of scope), or is it unknown (fail closed)?
    fn classify(&self, link: &LinkState, entry: &LogEntry) -> EventClass;

    /// The driver runs `link` from now on: news of the link's operations (checkpoints,
    /// counters, flags) go to `sink`, so the link's machine stays the only owner of its
    /// state ([`crate::link_news`]). Default: nothing (operations that report no news).
    fn own(&self, link: &LinkKey, sink: crate::link_news::NewsSink) {
        let _ = (link, sink);
    }

    /// The driver no longer runs `link`.
    fn release(&self, link: &LinkKey) {
        let _ = link;
    }

    /// Applies a live event durably.
    fn apply(
        &self,
        link: LinkState,
        entry: LogEntry,
    ) -> impl Future<Output = Result<(), LinkError>> + Send;

    /// Applies live events durably, one result per entry in the order given. The
    /// driver hands over every event that queued up for a link while its previous
    /// apply ran. The default applies them one at a time with
    /// [`apply`](Self::apply); [`EngineOps`] commits them in one ledger batch.
    fn apply_batch(
        &self,
        link: LinkState,
        entries: Vec<LogEntry>,
    ) -> impl Future<Output = Vec<Result<(), LinkError>>> + Send {
        async move {
            let mut results = Vec::with_capacity(entries.len());
            for entry in entries {
                results.push(self.apply(link.clone(), entry).await);
            }
            results
        }
    }
}

/// Most live events of one link applied in one batch.
pub const LIVE_APPLY_BATCH_LEN_MAX: usize = 64;
/// Most events the driver handles in a row before it starts the applies they queued
/// (and yields to the runtime).
pub const DRIVER_EVENTS_PER_TURN_MAX: usize = 256;

/// Everything that happens to the driver.
#[derive(Debug)]
pub enum Event {
    /// A timer of a link fired.
    Timer(LinkKey, u64, Timer),
    /// A push finished.
    Pushed(LinkKey, u64, Ticket, PushResult),
    /// A catch-up finished.
    CaughtUp(LinkKey, u64, Ticket, CatchUpResult),
    /// A reconcile finished.
    Reconciled(LinkKey, u64, Ticket, ReconcileResult),
    /// A subscription produced an item.
    Feed(LinkKey, u64, SubscriptionId, FeedItem),
    /// An operation reported news of a link it runs for the driver, at a wall-clock
    /// time ([`crate::link_news`]).
    News(LinkKey, u64, crate::link_news::LinkNews, u64),
    /// A batch of live events was applied (or failed), one result per event.
    Applied(
        LinkKey,
        u64,
        Vec<(SubscriptionId, Ordinal, Result<u64, LinkError>)>,
    ),
    /// The local log of a tenant grew; the endpoint the message came from, if pulled.
    LocalWrite(
        sync_types::TenantId,
        ProgressToken,
        Option<sync_types::Endpoint>,
    ),
    /// Add (or replace) a link.
    AddLink(Box<LinkState>),
    /// Remove a link.
    RemoveLink(LinkKey),
    /// Report whether a link is caught up.
    CaughtUpQuery(LinkKey, oneshot::Sender<Option<bool>>),
    /// Report the links' states.
    States(oneshot::Sender<Vec<LinkState>>),
    /// Stop every link and end the loop.
    Stop(oneshot::Sender<()>),
}

/// What a subscription reader forwards.
#[derive(Debug)]
pub enum FeedItem {
    /// A stored or live entry, with the permit it holds of its subscription's
    /// deliveries in flight (`feed.rs`).
    Entry(Box<LogEntry>, tokio::sync::OwnedSemaphorePermit),
    /// End of stored events.
    EndOfStored(Option<ProgressToken>),
    /// The subscription ended.
    End(SubscriptionEnd),
}

/// A running driver. Dropping it without [`stop`](Self::stop) aborts its loop.
#[derive(Debug)]
pub struct LiveDriver {
    tx: mpsc::UnboundedSender<Event>,
    task: Option<JoinHandle<()>>,
}

impl Drop for LiveDriver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl LiveDriver {
    /// Starts a driver over `links`, each loaded through [`LinkMachine::new`] (so every
    /// loaded link starts in its explicit opening status).
    pub fn start<O: LinkOps>(
        replica: Replica,
        ops: Arc<O>,
        links: Vec<LinkState>,
        config: LinkConfig,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut changes = replica.subscribe();
        let heads_replica = replica.clone();
        let forward = tx.clone();
        let local_writes = tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(change) => {
                        let from = match change.origin {
                            crate::replica::Origin::Remote(from) => from,
                            crate::replica::Origin::Local => None,
                        };
                        if forward
                            .send(Event::LocalWrite(change.tenant, change.token, from))
                            .is_err()
                        {
                            return;
                        }
                    }
                    // Lagging loses wake-ups, not data (pushes read the durable log):
                    // wake every tenant's links with its current log head instead.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        for tenant in heads_replica.ledger().tenants().unwrap_or_default() {
                            if let Ok(Some(head)) = heads_replica.ledger().log_head(&tenant)
                                && forward.send(Event::LocalWrite(tenant, head, None)).is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let mut driver = Driver {
            replica,
            ops,
            config,
            tx: tx.clone(),
            links: HashMap::new(),
            next_incarnation: 0,
            epoch: Instant::now(),
        };
        for link in links {
            driver.add_link(link);
        }
        let task = tokio::spawn(async move {
            driver.run(rx).await;
            local_writes.abort();
        });
        Self {
            tx,
            task: Some(task),
        }
    }

    /// Adds a link, or replaces the one with the same key (its old incarnation ends).
    pub fn add_link(&self, link: LinkState) {
        let _ = self.tx.send(Event::AddLink(Box::new(link)));
    }

    /// Removes a link (its machine stops and persists its last state).
    pub fn remove_link(&self, key: LinkKey) {
        let _ = self.tx.send(Event::RemoveLink(key));
    }

    /// Whether the link has applied everything the remote had when last seen and has
    /// nothing pending to push; `None` for an unknown link or a stopped driver.
    pub async fn caught_up(&self, key: &LinkKey) -> Option<bool> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::CaughtUpQuery(key.clone(), reply))
            .ok()?;
        rx.await.ok().flatten()
    }

    /// The links' states as their machines see them.
    pub async fn states(&self) -> Vec<LinkState> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Event::States(reply)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Stops every link and waits for the loop to end, at most `timeout`; the loop is
    /// aborted if it takes longer.
    pub async fn stop(mut self, timeout: Duration) -> bool {
        let (reply, done) = oneshot::channel();
        let _ = self.tx.send(Event::Stop(reply));
        let finished = tokio::time::timeout(timeout, done).await.is_ok();
        if let Some(task) = self.task.take() {
            if finished {
                let _ = task.await;
            } else {
                task.abort();
            }
        }
        finished
    }
}

struct LinkRuntime {
    machine: LinkMachine,
    incarnation: u64,
    timers: HashMap<Timer, JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    feed: Option<JoinHandle<()>>,
    /// Live events decided `Apply` and not yet handed to [`LinkOps::apply_batch`], in
    /// arrival order.
    apply_queue: Vec<(SubscriptionId, Ordinal, LogEntry)>,
    /// Whether a batch of this link is being applied in a task.
    applying: bool,
    /// The permits of the deliveries the machine counts in flight, oldest first
    /// (`feed.rs`): one is dropped for each delivery its checkpoint moves past.
    held: VecDeque<tokio::sync::OwnedSemaphorePermit>,
}

impl LinkRuntime {
    fn abort_all(&mut self) {
        for (_, t) in self.timers.drain() {
            t.abort();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(f) = self.feed.take() {
            f.abort();
        }
    }
}

struct Driver<O> {
    replica: Replica,
    ops: Arc<O>,
    config: LinkConfig,
    tx: mpsc::UnboundedSender<Event>,
    links: HashMap<LinkKey, LinkRuntime>,
    next_incarnation: u64,
    epoch: Instant,
}

impl<O: LinkOps> Driver<O> {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn add_link(&mut self, link: LinkState) {
        if let Some(mut old) = self.links.remove(&link.key) {
            old.abort_all();
        }
        let key = link.key.clone();
        let tenant = key.tenant.clone();
        // Replicas of one fleet share a config: their node ids set them apart.
        let mut config = self.config.clone();
        config.jitter_seed ^= self.replica.node_id().0;
        let mut machine = LinkMachine::new(link, config);
        // What is pending to push: the local log's head.
        let head = self.replica.ledger().log_head(&tenant).ok().flatten();
        machine.set_local_head(head);
        self.next_incarnation += 1;
        self.links.insert(
            key.clone(),
            LinkRuntime {
                machine,
                incarnation: self.next_incarnation,
                timers: HashMap::new(),
                tasks: Vec::new(),
                feed: None,
                apply_queue: Vec::new(),
                applying: false,
                held: VecDeque::new(),
            },
        );
        // From now on the link's operations report to its machine.
        let (tx, k, inc) = (self.tx.clone(), key.clone(), self.next_incarnation);
        self.ops.own(
            &key,
            Arc::new(move |news, at_ms| tx.send(Event::News(k.clone(), inc, news, at_ms)).is_ok()),
        );
        let now = self.now_ms();
        if let Some(rt) = self.links.get_mut(&key) {
            rt.machine.handle_start(now);
        }
        self.drain(&key);
    }

    fn stop_link(&mut self, key: &LinkKey) {
        if let Some(rt) = self.links.get_mut(key) {
            rt.machine.handle_stop();
        }
        self.drain(key);
        if let Some(mut rt) = self.links.remove(key) {
            rt.abort_all();
            self.ops.release(key);
        }
    }

    /// Handles the events that are ready (at most [`DRIVER_EVENTS_PER_TURN_MAX`]),
    /// then starts the applies they queued, so the live events that arrived together
    /// for one link are applied together.
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        while let Some(mut event) = rx.recv().await {
            let mut handled = 0;
            loop {
                if let Event::Stop(reply) = event {
                    let keys: Vec<LinkKey> = self.links.keys().cloned().collect();
                    for key in keys {
                        self.stop_link(&key);
                    }
                    let _ = reply.send(());
                    return;
                }
                self.handle(event);
                handled += 1;
                if handled == DRIVER_EVENTS_PER_TURN_MAX {
                    break;
                }
                match rx.try_recv() {
                    Ok(next) => event = next,
                    Err(_) => break,
                }
            }
            self.start_applies();
        }
    }

    /// Starts one batch apply for every link with queued live events and none running.
    /// The apply is polled once here: on a store that never blocks it finishes at once
    /// and its results are handled without a task or a thread hop; otherwise (a
    /// blocking-pool apply, a blob fetch) it goes on in a task that reports
    /// [`Event::Applied`].
    fn start_applies(&mut self) {
        let keys: Vec<LinkKey> = self
            .links
            .iter()
            .filter(|(_, rt)| !rt.applying && !rt.apply_queue.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(rt) = self.links.get_mut(&key) else {
                continue;
            };
            let n = rt.apply_queue.len().min(LIVE_APPLY_BATCH_LEN_MAX);
            let batch: Vec<(SubscriptionId, Ordinal, LogEntry)> =
                rt.apply_queue.drain(..n).collect();
            let mut ids = Vec::with_capacity(batch.len());
            let mut entries = Vec::with_capacity(batch.len());
            for (sub, ordinal, entry) in batch {
                let bytes = sync_types::codec::encoded_len(&entry.message)
                    + entry.data.as_ref().map_or(0, Vec::len);
                ids.push((sub, ordinal, bytes as u64));
                entries.push(entry);
            }
            let (ops, state, inc) = (self.ops.clone(), rt.machine.state().clone(), rt.incarnation);
            let mut apply = Box::pin(async move { ops.apply_batch(state, entries).await });
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match apply.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(results) => {
                    self.handle_applied(&key, inc, zip_results(ids, results));
                }
                std::task::Poll::Pending => {
                    // A future may be polled again with another waker: the task's.
                    let (tx, k) = (self.tx.clone(), key.clone());
                    rt.applying = true;
                    rt.tasks.retain(|t| !t.is_finished());
                    rt.tasks.push(tokio::spawn(async move {
                        let results = apply.await;
                        let _ = tx.send(Event::Applied(k, inc, zip_results(ids, results)));
                    }));
                }
            }
        }
    }

    fn handle_applied(
        &mut self,
        key: &LinkKey,
        inc: u64,
        results: Vec<(SubscriptionId, Ordinal, Result<u64, LinkError>)>,
    ) {
        let now = self.now_ms();
        let Some(rt) = self.current(key, inc) else {
            return;
        };
        rt.applying = false;
        for (sub, ordinal, result) in results {
            if let Ok(bytes) = result {
                rt.machine.record_pulled_bytes(bytes);
            }
            rt.machine
                .handle_applied(now, sub, ordinal, result.map(|_| ()));
        }
        self.drain(key);
    }

    /// The runtime of `key` when `incarnation` is still current.
    fn current(&mut self, key: &LinkKey, incarnation: u64) -> Option<&mut LinkRuntime> {
        self.links
            .get_mut(key)
            .filter(|rt| rt.incarnation == incarnation)
    }

    fn handle(&mut self, event: Event) {
        let now = self.now_ms();
        let key = match event {
            Event::Timer(key, inc, timer) => {
                let Some(rt) = self.current(&key, inc) else {
                    return;
                };
                rt.timers.remove(&timer);
                rt.machine.handle_timer(now, timer);
                key
            }
            Event::Pushed(key, inc, ticket, result) => {
                let Some(rt) = self.current(&key, inc) else {
                    return;
                };
                tracing::trace!(link = %key, ?result, "push finished");
                rt.machine.handle_push_result(now, ticket, result);
                key
            }
            Event::CaughtUp(key, inc, ticket, result) => {
                let Some(rt) = self.current(&key, inc) else {
                    return;
                };
                rt.machine.handle_catch_up_result(now, ticket, result);
                key
            }
            Event::Reconciled(key, inc, ticket, result) => {
                let Some(rt) = self.current(&key, inc) else {
                    return;
                };
                tracing::debug!(link = %key, ?result, "reconcile finished");
                rt.machine.handle_reconcile_result(now, ticket, result);
                key
            }
            Event::Feed(key, inc, sub, item) => {
                let ops = self.ops.clone();
                let Some(rt) = self.current(&key, inc) else {
                    return;
                };
                match item {
                    FeedItem::Entry(entry, permit) => {
                        let class = ops.classify(rt.machine.state(), &entry);
                        match rt.machine.handle_event(now, sub, entry.token, class) {
                            EventDecision::Apply(ordinal) => {
                                // Applied with whatever else queues up in this turn
                                // (`start_applies`).
                                rt.apply_queue.push((sub, ordinal, *entry));
                                rt.held.push_back(permit);
                            }
                            EventDecision::Skip => rt.held.push_back(permit),
                            EventDecision::Ignore => {}
                        }
                    }
                    FeedItem::EndOfStored(cursor) => {
                        tracing::debug!(link = %key, ?sub, ?cursor, "end of stored events");
                        rt.machine.handle_eose(now, sub, cursor);
                    }
                    FeedItem::End(end) => {
                        tracing::debug!(link = %key, ?sub, ?end, "subscription ended");
                        rt.machine.handle_subscription_end(now, sub, end);
                    }
                }
                key
            }
            Event::Applied(key, inc, results) => {
                self.handle_applied(&key, inc, results);
                return;
            }
            Event::News(key, inc, news, at_ms) => {
                let Some(rt) = self.current(&key, inc) else {
                    return;
                };
                rt.machine.handle_news(at_ms, news);
                key
            }
            Event::LocalWrite(tenant, token, from) => {
                // A message pulled from an endpoint does not wake that endpoint's links:
                // pushing it back would only echo it.
                let keys: Vec<LinkKey> = self
                    .links
                    .keys()
                    .filter(|k| k.tenant == tenant)
                    .cloned()
                    .collect();
                for key in keys {
                    if let Some(rt) = self.links.get_mut(&key) {
                        if from.as_ref() == Some(&key.endpoint) {
                            rt.machine.handle_echo(now, token);
                        } else {
                            rt.machine.handle_local_write(now, token);
                        }
                    }
                    self.drain(&key);
                }
                return;
            }
            Event::AddLink(link) => {
                self.add_link(*link);
                return;
            }
            Event::RemoveLink(key) => {
                self.stop_link(&key);
                return;
            }
            Event::CaughtUpQuery(key, reply) => {
                let _ = reply.send(self.links.get(&key).map(|rt| rt.machine.is_caught_up()));
                return;
            }
            Event::States(reply) => {
                let _ = reply.send(
                    self.links
                        .values()
                        .map(|rt| rt.machine.state().clone())
                        .collect(),
                );
                return;
            }
            Event::Stop(_) => unreachable!("handled by the loop"),
        };
        self.drain(&key);
    }

    /// Executes the machine's actions, in order.
    fn drain(&mut self, key: &LinkKey) {
        let epoch = self.epoch;
        let in_flight_max = self.config.in_flight_deliveries_max;
        let ops = self.ops.clone();
        let tx = self.tx.clone();
        let replica = self.replica.clone();
        let Some(rt) = self.links.get_mut(key) else {
            return;
        };
        let inc = rt.incarnation;
        while rt.held.len() > rt.machine.deliveries_in_flight() {
            rt.held.pop_front();
        }
        while let Some(action) = rt.machine.poll_action() {
            match action {
                Action::Persist(state) => {
                    if let Err(e) = replica.ledger().links().save(&state, Durability::Buffered) {
                        tracing::warn!(link = %state.key, error = %e, "could not save link state");
                    }
                }
                Action::Emit(event) => {
                    if !matches!(event, sync_types::SyncEvent::CheckpointAdvanced { .. }) {
                        tracing::debug!(link = %key, ?event, "link event");
                    }
                    replica.emit(event);
                }
                Action::ArmTimer { timer, at_ms } => {
                    if let Some(old) = rt.timers.remove(&timer) {
                        old.abort();
                    }
                    let (tx, k) = (tx.clone(), key.clone());
                    let deadline = epoch + Duration::from_millis(at_ms);
                    rt.timers.insert(
                        timer,
                        tokio::spawn(async move {
                            tokio::time::sleep_until(deadline).await;
                            let _ = tx.send(Event::Timer(k, inc, timer));
                        }),
                    );
                }
                Action::CancelTimer(timer) => {
                    if let Some(old) = rt.timers.remove(&timer) {
                        old.abort();
                    }
                }
                Action::OpenSubscription { id, from } => {
                    tracing::debug!(link = %key, ?id, ?from, "subscription opens");
                    if let Some(old) = rt.feed.take() {
                        old.abort();
                    }
                    rt.feed = Some(tokio::spawn(feed::read(
                        ops.clone(),
                        tx.clone(),
                        (key.clone(), inc, id),
                        rt.machine.state().clone(),
                        from,
                        in_flight_max,
                    )));
                }
                Action::CloseSubscription => {
                    if let Some(old) = rt.feed.take() {
                        old.abort();
                    }
                }
                Action::Push { ticket, after } => {
                    tracing::trace!(link = %key, ?ticket, "push starts");
                    let (ops, k, state) = (ops.clone(), key.clone(), rt.machine.state().clone());
                    spawn_op(rt, &tx, async move {
                        Event::Pushed(k, inc, ticket, ops.push(state, after).await)
                    });
                }
                Action::CatchUp { ticket, after } => {
                    let (ops, k, state) = (ops.clone(), key.clone(), rt.machine.state().clone());
                    spawn_op(rt, &tx, async move {
                        Event::CaughtUp(k, inc, ticket, ops.catch_up(state, after).await)
                    });
                }
                Action::Reconcile { ticket } => {
                    tracing::debug!(link = %key, ?ticket, "reconcile starts");
                    let (ops, k, state) = (ops.clone(), key.clone(), rt.machine.state().clone());
                    spawn_op(rt, &tx, async move {
                        Event::Reconciled(k, inc, ticket, ops.reconcile(state).await)
                    });
                }
            }
        }
    }
}

/// Runs one operation of a link as a task that reports its result as an event.
fn spawn_op(
    rt: &mut LinkRuntime,
    tx: &mpsc::UnboundedSender<Event>,
    op: impl Future<Output = Event> + Send + 'static,
) {
    let tx = tx.clone();
    rt.tasks.retain(|t| !t.is_finished());
    rt.tasks.push(tokio::spawn(async move {
        let _ = tx.send(op.await);
    }));
}

/// Pairs each delivery with its result; a result missing from `apply_batch` (a
/// broken implementation) counts as a failure, so the checkpoint never covers it.
fn zip_results(
    ids: Vec<(SubscriptionId, Ordinal, u64)>,
    results: Vec<Result<(), LinkError>>,
) -> Vec<(SubscriptionId, Ordinal, Result<u64, LinkError>)> {
    let mut results = results.into_iter();
    ids.into_iter()
        .map(|(sub, ordinal, bytes)| {
            let result = results
                .next()
                .unwrap_or_else(|| Err("no result for this live event".into()));
            (sub, ordinal, result.map(|()| bytes))
        })
        .collect()
}
