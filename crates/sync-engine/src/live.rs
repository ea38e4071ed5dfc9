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

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sync_ledger::{Durability, LogEntry};
use sync_transport::SubscriptionItem;
use sync_transport::proto::CloseReason;
use sync_types::{LinkKey, LinkState, ProgressToken};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::delivery::Ordinal;
use crate::machine::{
    Action, CatchUpResult, EventClass, EventDecision, LinkConfig, LinkMachine, PushResult,
    ReconcileResult, SubscriptionEnd, SubscriptionId, Ticket, Timer,
};
use crate::replica::Replica;

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
    ) -> impl Future<Output = Result<Self::Feed, String>> + Send;

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
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Applies live events durably, one result per entry in the order given. The
    /// driver hands over every event that queued up for a link while its previous
    /// apply ran. The default applies them one at a time with
    /// [`apply`](Self::apply); [`EngineOps`] commits them in one ledger batch.
    fn apply_batch(
        &self,
        link: LinkState,
        entries: Vec<LogEntry>,
    ) -> impl Future<Output = Vec<Result<(), String>>> + Send {
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
        Vec<(SubscriptionId, Ordinal, Result<u64, String>)>,
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
    /// A stored or live entry.
    Entry(Box<LogEntry>),
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
        let mut machine = LinkMachine::new(link, self.config.clone());
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
            },
        );
        // From now on the link's operations report to its machine.
        let (tx, k, inc) = (self.tx.clone(), key.clone(), self.next_incarnation);
        self.ops.own(
            &key,
            Arc::new(move |news, at_ms| {
                let _ = tx.send(Event::News(k.clone(), inc, news, at_ms));
            }),
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
                let bytes = sync_types::codec::encode(&entry.message).len()
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
        results: Vec<(SubscriptionId, Ordinal, Result<u64, String>)>,
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
                rt.machine.handle_reconcile_result(now, ticket, result);
                key
            }
            Event::Feed(key, inc, sub, item) => {
                let ops = self.ops.clone();
                let Some(rt) = self.current(&key, inc) else {
                    return;
                };
                match item {
                    FeedItem::Entry(entry) => {
                        let class = ops.classify(rt.machine.state(), &entry);
                        if let EventDecision::Apply(ordinal) =
                            rt.machine.handle_event(now, sub, entry.token, class)
                        {
                            // Applied with whatever else queues up in this turn
                            // (`start_applies`).
                            rt.apply_queue.push((sub, ordinal, *entry));
                        }
                    }
                    FeedItem::EndOfStored(cursor) => rt.machine.handle_eose(now, sub, cursor),
                    FeedItem::End(end) => rt.machine.handle_subscription_end(now, sub, end),
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
        let ops = self.ops.clone();
        let tx = self.tx.clone();
        let replica = self.replica.clone();
        let Some(rt) = self.links.get_mut(key) else {
            return;
        };
        let inc = rt.incarnation;
        while let Some(action) = rt.machine.poll_action() {
            match action {
                Action::Persist(state) => {
                    if let Err(e) = replica.ledger().links().save(&state, Durability::Buffered) {
                        tracing::warn!(link = %state.key, error = %e, "could not save link state");
                    }
                }
                Action::Emit(event) => replica.emit(event),
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
                    if let Some(old) = rt.feed.take() {
                        old.abort();
                    }
                    let (ops, tx, k, state) = (
                        ops.clone(),
                        tx.clone(),
                        key.clone(),
                        rt.machine.state().clone(),
                    );
                    rt.feed = Some(tokio::spawn(async move {
                        let send = |item| tx.send(Event::Feed(k.clone(), inc, id, item)).is_ok();
                        let mut feed = match ops.subscribe(state, from).await {
                            Ok(feed) => feed,
                            Err(e) => {
                                tracing::debug!(error = %e, "subscription could not open");
                                send(FeedItem::End(SubscriptionEnd::Disconnected));
                                return;
                            }
                        };
                        loop {
                            let item = match feed.next().await {
                                Some(SubscriptionItem::Event(e)) => {
                                    FeedItem::Entry(Box::new(LogEntry {
                                        token: e.token,
                                        message: e.item.message,
                                        data: e.item.data,
                                    }))
                                }
                                Some(SubscriptionItem::EndOfStored { cursor }) => {
                                    FeedItem::EndOfStored(cursor)
                                }
                                Some(SubscriptionItem::Gap(gap)) => {
                                    FeedItem::End(SubscriptionEnd::Gap(gap))
                                }
                                Some(SubscriptionItem::Closed(reason)) => {
                                    FeedItem::End(end_of(reason))
                                }
                                None => FeedItem::End(SubscriptionEnd::Disconnected),
                            };
                            let last = matches!(item, FeedItem::End(_));
                            if !send(item) || last {
                                return;
                            }
                        }
                    }));
                }
                Action::CloseSubscription => {
                    if let Some(old) = rt.feed.take() {
                        old.abort();
                    }
                }
                Action::Push { ticket, after } => {
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
    results: Vec<Result<(), String>>,
) -> Vec<(SubscriptionId, Ordinal, Result<u64, String>)> {
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

/// A lagging subscriber, a heartbeat timeout or a node going away cost a reconnect from
/// the durable checkpoint; expired credentials and handler errors send the link to repair.
fn end_of(reason: CloseReason) -> SubscriptionEnd {
    match reason {
        CloseReason::Lagged { .. } | CloseReason::HeartbeatTimeout | CloseReason::ShuttingDown => {
            SubscriptionEnd::Disconnected
        }
        other => SubscriptionEnd::Error(format!("{other:?}")),
    }
}

/// [`LinkOps`] over an [`Engine`](crate::sync::Engine): the engine's catch-up, push and
/// reconcile, the connector's subscription, and the replica's apply.
///
/// The engine retries a failed push itself (its `push_retry_backoff_ms`), so a driver
/// over `EngineOps` should give its machines a single push attempt
/// ([`EngineOps::link_config`] does), and a failed push goes straight to a reconcile.
pub struct EngineOps<C: crate::sync::Connector> {
    engine: crate::sync::Engine<C>,
}

impl<C: crate::sync::Connector> std::fmt::Debug for EngineOps<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineOps").finish_non_exhaustive()
    }
}

impl<C: crate::sync::Connector> EngineOps<C> {
    /// Operations over `engine`.
    pub fn new(engine: crate::sync::Engine<C>) -> Self {
        Self { engine }
    }

    /// The engine.
    pub fn engine(&self) -> &crate::sync::Engine<C> {
        &self.engine
    }

    /// `base` with the machine's push retries left to the engine.
    pub fn link_config(base: LinkConfig) -> LinkConfig {
        LinkConfig {
            push_retry_backoff_ms: vec![0],
            ..base
        }
    }

    fn token(&self, tenant: &sync_types::TenantId) -> Option<String> {
        self.engine
            .identities()
            .ok()?
            .into_iter()
            .find(|i| &i.tenant == tenant)
            .and_then(|i| i.token)
    }
}

impl<C: crate::sync::Connector> LinkOps for EngineOps<C> {
    type Feed = sync_transport::Subscription;

    async fn push(&self, link: LinkState, _after: Option<ProgressToken>) -> PushResult {
        match self.engine.push_from(&link.key, Some(link.push)).await {
            Ok(outcome) if outcome.exhausted => PushResult::Failed("push retries exhausted".into()),
            Ok(outcome) => PushResult::Settled {
                upto: outcome.checkpoint,
            },
            Err(e) => PushResult::Failed(e.to_string()),
        }
    }

    async fn catch_up(&self, link: LinkState, _after: Option<ProgressToken>) -> CatchUpResult {
        match self.engine.catch_up_from(&link.key, Some(link.pull)).await {
            Ok(outcome) => match outcome.stop {
                Some(crate::sync::CatchUpStop::Gap(gap)) => CatchUpResult::Gap(gap),
                Some(crate::sync::CatchUpStop::Unsettled { cid, outcome: o }) => {
                    CatchUpResult::Failed(format!("entry {cid} not settled: {o}"))
                }
                None => CatchUpResult::Done {
                    upto: outcome.checkpoint,
                    head: outcome.reached_head.then_some(outcome.checkpoint).flatten(),
                },
            },
            Err(
                e @ (crate::Error::TerminalIncomplete { .. } | crate::Error::GrantExpired { .. }),
            ) => CatchUpResult::Terminal(e.to_string()),
            Err(e) => CatchUpResult::Failed(e.to_string()),
        }
    }

    async fn reconcile(&self, link: LinkState) -> ReconcileResult {
        match self.engine.reconcile(&link.key).await {
            Ok(outcome) => ReconcileResult::Done {
                converged: outcome.converged,
            },
            Err(
                e @ (crate::Error::TerminalIncomplete { .. } | crate::Error::GrantExpired { .. }),
            ) => ReconcileResult::Terminal(e.to_string()),
            Err(e) => ReconcileResult::Failed(e.to_string()),
        }
    }

    async fn subscribe(
        &self,
        link: LinkState,
        from: Option<ProgressToken>,
    ) -> Result<Self::Feed, String> {
        use sync_transport::Remote as _;
        let token = self.token(&link.key.tenant);
        let remote = self
            .engine
            .connector()
            .connect(&link.key.endpoint, token.as_deref())
            .map_err(|e| e.to_string())?;
        remote
            .subscribe(sync_transport::proto::SubscribeRequest {
                tenant: link.key.tenant.clone(),
                scope: link.scope.clone(),
                from,
                filter: sync_transport::proto::LogFilter::default(),
            })
            .await
            .map_err(|e| e.to_string())
    }

    fn own(&self, link: &LinkKey, sink: crate::link_news::NewsSink) {
        self.engine.own_link(link.clone(), sink);
    }

    fn release(&self, link: &LinkKey) {
        self.engine.release_link(link);
    }

    fn classify(&self, link: &LinkState, entry: &LogEntry) -> EventClass {
        let replica = self.engine.replica();
        match replica
            .ledger()
            .has_message(&link.key.tenant, &entry.token.cid)
        {
            Ok(true) => return EventClass::Skip,
            Ok(false) => {}
            Err(_) => return EventClass::Unknown,
        }
        match self.engine.gate_live(link, &entry.message) {
            Ok(sync_types::ScopeClass::InScope) => EventClass::Apply,
            Ok(sync_types::ScopeClass::OutOfScope) => EventClass::Skip,
            Ok(sync_types::ScopeClass::Unknown) | Err(_) => EventClass::Unknown,
        }
    }

    async fn apply(&self, link: LinkState, entry: LogEntry) -> Result<(), String> {
        self.apply_batch(link, vec![entry])
            .await
            .pop()
            .unwrap_or_else(|| Err("no outcome".into()))
    }

    async fn apply_batch(
        &self,
        link: LinkState,
        entries: Vec<LogEntry>,
    ) -> Vec<Result<(), String>> {
        // A payload above the inline limit travels as a blob: the record is applied as
        // staged and its blob is wanted, then fetched like catch-up fetches it.
        let blobs: Vec<Option<sync_types::DataRef>> = entries
            .iter()
            .map(|entry| match &entry.message {
                sync_types::Message::Write(w) => w.data.filter(|d| !d.is_inline()),
                _ => None,
            })
            .collect();
        let n = entries.len();
        let items = entries.into_iter().map(|e| (e.message, e.data)).collect();
        // `apply_live_batch` records each blob as wanted before applying its message.
        let outcomes = match self.engine.apply_live_batch(&link.key, items).await {
            Ok(outcomes) if outcomes.len() == n => outcomes,
            Ok(outcomes) => {
                let e = format!("{} outcomes for {n} live events", outcomes.len());
                return vec![Err(e); n];
            }
            Err(e) => return vec![Err(e.to_string()); n],
        };
        let store = self.engine.replica().ledger().blobs();
        let mut results = Vec::with_capacity(n);
        let mut missing = false;
        for (outcome, blob) in outcomes.into_iter().zip(blobs) {
            if !outcome.is_success() {
                results.push(Err(format!("live event not applied: {outcome}")));
                continue;
            }
            match blob.map(|data| store.has(&data.data_cid)).transpose() {
                Ok(has) => {
                    missing |= has == Some(false);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e.to_string())),
            }
        }
        // The records stay staged until their blobs arrive; a failed fetch is retried
        // by the next catch-up or reconcile.
        if missing && let Err(e) = self.engine.fetch_wanted_blobs(&link.key).await {
            tracing::debug!(link = %link.key, error = %e, "blob fetch failed");
        }
        results
    }
}

/// Live replication for an application: an [`Engine`](crate::sync::Engine) whose links
/// run in a [`LiveDriver`], with identities added, updated and removed while it runs.
///
/// Registering an identity starts its links; updating one stops the links the new
/// registration no longer uses (the engine deletes their durable state) and starts the
/// new ones; unregistering stops every link of the tenant.
pub struct LiveSync<C: crate::sync::Connector> {
    ops: Arc<EngineOps<C>>,
    driver: LiveDriver,
}

impl<C: crate::sync::Connector> std::fmt::Debug for LiveSync<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSync")
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl<C: crate::sync::Connector> LiveSync<C> {
    /// Starts every registered link of `engine` in live or poll mode (`config.mode`).
    pub fn start(engine: crate::sync::Engine<C>, config: LinkConfig) -> crate::Result<Self> {
        let links = engine.links()?;
        let replica = engine.replica().clone();
        let ops = Arc::new(EngineOps::new(engine));
        let driver = LiveDriver::start(
            replica,
            ops.clone(),
            links,
            EngineOps::<C>::link_config(config),
        );
        Ok(Self { ops, driver })
    }

    /// The engine (one-shot sync, health, dead letters, links).
    pub fn engine(&self) -> &crate::sync::Engine<C> {
        self.ops.engine()
    }

    /// The driver (link states, caught-up checks).
    pub fn driver(&self) -> &LiveDriver {
        &self.driver
    }

    fn start_links(&self, keys: &[LinkKey]) -> crate::Result<()> {
        for state in self.engine().links()? {
            if keys.contains(&state.key) {
                self.driver.add_link(state);
            }
        }
        Ok(())
    }

    /// Registers an identity and starts its links.
    pub fn register_identity(
        &self,
        identity: crate::sync::Identity,
    ) -> crate::Result<Vec<LinkKey>> {
        let keys = self.engine().register_identity(identity)?;
        self.start_links(&keys)?;
        Ok(keys)
    }

    /// Replaces an identity's registration: links it no longer uses stop, new ones start.
    pub fn update_identity(&self, identity: crate::sync::Identity) -> crate::Result<Vec<LinkKey>> {
        let tenant = identity.tenant.clone();
        let before: Vec<LinkKey> = self
            .engine()
            .links()?
            .into_iter()
            .map(|l| l.key)
            .filter(|k| k.tenant == tenant)
            .collect();
        let keys = self.engine().update_identity(identity)?;
        for old in before.into_iter().filter(|k| !keys.contains(k)) {
            self.driver.remove_link(old);
        }
        self.start_links(&keys)?;
        Ok(keys)
    }

    /// Unregisters an identity and stops its links.
    pub fn unregister_identity(&self, tenant: &sync_types::TenantId) -> crate::Result<()> {
        let keys: Vec<LinkKey> = self
            .engine()
            .links()?
            .into_iter()
            .map(|l| l.key)
            .filter(|k| &k.tenant == tenant)
            .collect();
        for key in keys {
            self.driver.remove_link(key);
        }
        self.engine().unregister_identity(tenant)?;
        Ok(())
    }

    /// Stops every link, at most `timeout`; see [`LiveDriver::stop`].
    pub async fn stop(self, timeout: Duration) -> bool {
        self.driver.stop(timeout).await
    }
}
