//! Live mode: each device's link run by its `LinkMachine`, with the driver simulated on
//! the virtual clock (timers, a live feed read from the node's log, local changes
//! waking the link), as `sync_engine::live` drives it over a socket.

use std::collections::VecDeque;

use sync_engine::live::{EngineOps, LinkOps};
use sync_engine::machine::{Action, EventDecision, SubscriptionEnd, SubscriptionId, Timer};
use sync_engine::sync::Connector;
use sync_ledger::{Durability, LogEntry};
use sync_transport::Remote;
use sync_transport::proto::{LogFilter, LogPageReply, LogPageRequest};
use sync_types::Clock;

use crate::SimConnector;
use crate::workload::tenant;
use crate::world::{SimFeed, World};

impl World {
    pub(crate) fn ops(&self, index: usize) -> EngineOps<SimConnector> {
        EngineOps::new(self.devices[index].engine.clone())
    }

    /// Executes a live link's actions, feeding results back, until it has none left.
    pub(crate) async fn drive(&mut self, index: usize) {
        let ops = self.ops(index);
        let replica = self.devices[index].engine.replica().clone();
        loop {
            self.wake_on_local_changes(index);
            let Some(live) = self.devices[index].live.as_mut() else {
                return;
            };
            live.take_news();
            let Some(action) = live.machine.poll_action() else {
                return;
            };
            let state = live.machine.state().clone();
            match action {
                Action::Persist(state) => {
                    let _ = replica.ledger().links().save(&state, Durability::Buffered);
                }
                Action::Emit(event) => {
                    if matches!(event, sync_types::SyncEvent::RepairStarted { .. }) {
                        self.report.repairs += 1;
                    }
                }
                Action::ArmTimer { timer, at_ms } => {
                    live.timers.insert(timer, at_ms);
                }
                Action::CancelTimer(timer) => {
                    live.timers.remove(&timer);
                }
                Action::OpenSubscription { id, from } => {
                    live.feed = Some(SimFeed {
                        id,
                        cursor: from,
                        buffer: VecDeque::new(),
                        eose: None,
                        eose_sent: false,
                    });
                }
                Action::CloseSubscription => live.feed = None,
                Action::Push { ticket, after } => {
                    let result = ops.push(state, after).await;
                    let now = self.clock.now_ms();
                    if let Some(live) = self.devices[index].live.as_mut() {
                        live.take_news();
                        live.machine.handle_push_result(now, ticket, result);
                    }
                }
                Action::CatchUp { ticket, after } => {
                    let result = ops.catch_up(state, after).await;
                    let now = self.clock.now_ms();
                    if let Some(live) = self.devices[index].live.as_mut() {
                        live.take_news();
                        live.machine.handle_catch_up_result(now, ticket, result);
                    }
                }
                Action::Reconcile { ticket } => {
                    let result = ops.reconcile(state).await;
                    let now = self.clock.now_ms();
                    if let Some(live) = self.devices[index].live.as_mut() {
                        live.take_news();
                        live.machine.handle_reconcile_result(now, ticket, result);
                    }
                }
            }
        }
    }

    /// Fires the live link's timers that are due.
    pub(crate) async fn fire_timers(&mut self, index: usize) {
        let now = self.clock.now_ms();
        let Some(live) = self.devices[index].live.as_mut() else {
            return;
        };
        let due: Vec<Timer> = live
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| *t)
            .collect();
        for timer in due {
            live.timers.remove(&timer);
            live.machine.handle_timer(now, timer);
        }
        self.drive(index).await;
    }

    pub(crate) fn end_feed(&mut self, index: usize, id: SubscriptionId, end: SubscriptionEnd) {
        let now = self.clock.now_ms();
        if let Some(live) = self.devices[index].live.as_mut() {
            live.machine.handle_subscription_end(now, id, end);
        }
    }

    /// Moves the live feed on, as the node's subscription loop would: reads the node's log
    /// after the feed's cursor, delivers a few entries (duplicating some, completing their
    /// applies out of order), sends end-of-stored-events, or cuts the feed.
    pub(crate) async fn deliver(&mut self, index: usize) {
        let Some(live) = self.devices[index].live.as_ref() else {
            return;
        };
        let Some(feed) = live.feed.as_ref() else {
            return;
        };
        let (id, cursor, need_page) = (feed.id, feed.cursor, feed.buffer.is_empty());
        let scope = live.machine.state().scope.clone();
        let cut_per_mille = self
            .net
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .request_loss
            / 2;
        if self.rng.chance(cut_per_mille) || self.net.is_partitioned(index) {
            self.report.feeds_cut += 1;
            // Some cuts are errors reported by the node (a handler failure, revoked
            // credentials), which send the link to repair rather than a reconnect.
            let end = if self.rng.chance(333) {
                SubscriptionEnd::Error("node reported an error".into())
            } else {
                SubscriptionEnd::Disconnected
            };
            self.end_feed(index, id, end);
            self.drive(index).await;
            return;
        }
        if need_page {
            let request = LogPageRequest {
                tenant: tenant(),
                scope,
                from: cursor,
                filter: LogFilter::default(),
                limit: 4,
            };
            let reply = match self.devices[index]
                .engine
                .connector()
                .connect(&self.endpoint, Some(&self.token))
            {
                Ok(remote) => remote.log_page(request).await,
                Err(e) => Err(e),
            };
            match reply {
                Ok(LogPageReply::Page(page)) => {
                    let live = self.devices[index].live.as_mut();
                    if let Some(feed) = live.and_then(|l| l.feed.as_mut()).filter(|f| f.id == id) {
                        feed.buffer
                            .extend(page.entries.into_iter().map(|e| LogEntry {
                                token: e.token,
                                message: e.item.message,
                                data: e.item.data,
                            }));
                        feed.cursor = page.next.or(feed.cursor);
                        if !page.has_more && !feed.eose_sent {
                            feed.eose = Some(page.next);
                        }
                    }
                }
                Ok(LogPageReply::Gap(gap)) => self.end_feed(index, id, SubscriptionEnd::Gap(gap)),
                Err(_) => {
                    self.report.feeds_cut += 1;
                    self.end_feed(index, id, SubscriptionEnd::Disconnected);
                }
            }
            self.drive(index).await;
        }
        let ops = self.ops(index);
        let mut done = Vec::new();
        // Half the rounds apply each delivery at once; the others queue them and apply
        // them in one batch at the end, as the live driver does with the events that
        // arrive together (duplicates may then share a batch).
        let batched = self.rng.chance(500);
        let mut queued: Vec<(sync_engine::machine::Ordinal, LogEntry)> = Vec::new();
        for _ in 0..self.rng.below(4) + 1 {
            let Some(feed) = self.devices[index]
                .live
                .as_mut()
                .and_then(|l| l.feed.as_mut())
            else {
                break;
            };
            if feed.id != id {
                break;
            }
            let Some(entry) = feed.buffer.pop_front() else {
                break;
            };
            let copies = if self.rng.chance(80) {
                self.report.deliveries_duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let now = self.clock.now_ms();
                let Some(live) = self.devices[index].live.as_mut() else {
                    return;
                };
                let class = ops.classify(live.machine.state(), &entry);
                if let EventDecision::Apply(ordinal) =
                    live.machine.handle_event(now, id, entry.token, class)
                {
                    if batched {
                        queued.push((ordinal, entry.clone()));
                    } else {
                        let state = live.machine.state().clone();
                        done.push((ordinal, ops.apply(state, entry.clone()).await));
                    }
                }
            }
        }
        if !queued.is_empty()
            && let Some(live) = self.devices[index].live.as_ref()
        {
            let state = live.machine.state().clone();
            let (ordinals, entries): (Vec<_>, Vec<_>) = queued.into_iter().unzip();
            let results = ops.apply_batch(state, entries).await;
            assert_eq!(results.len(), ordinals.len(), "one result per live event");
            done.extend(ordinals.into_iter().zip(results));
        }
        for i in (1..done.len()).rev() {
            let j = usize::try_from(self.rng.below(i as u64 + 1)).unwrap_or(0);
            done.swap(i, j);
        }
        let now = self.clock.now_ms();
        if let Some(live) = self.devices[index].live.as_mut() {
            for (ordinal, result) in done {
                live.machine.handle_applied(now, id, ordinal, result);
            }
            if let Some(feed) = live
                .feed
                .as_mut()
                .filter(|f| f.id == id && f.buffer.is_empty())
                && let Some(cursor) = feed.eose.take()
            {
                feed.eose_sent = true;
                live.machine.handle_eose(now, id, cursor);
            }
        }
        self.drive(index).await;
    }

    /// Hands the replica's local changes (writes, and versions a conflict policy wrote)
    /// to its live link, as `LiveSync` does with the replica's change feed.
    pub(crate) fn wake_on_local_changes(&mut self, index: usize) {
        use tokio::sync::broadcast::error::TryRecvError;
        let now = self.clock.now_ms();
        let device = &mut self.devices[index];
        loop {
            let head = match device.changes.try_recv() {
                Ok(change) if change.origin == sync_engine::Origin::Local => change.token,
                // Pulled from this device's own endpoint: an echo, as `LiveDriver` has it.
                Ok(change)
                    if change.origin
                        == sync_engine::Origin::Remote(Some(self.endpoint.clone())) =>
                {
                    if let Some(live) = device.live.as_mut() {
                        live.machine.handle_echo(now, change.token);
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(TryRecvError::Lagged(_)) => {
                    match device.engine.replica().ledger().log_head(&tenant()) {
                        Ok(Some(head)) => head,
                        _ => continue,
                    }
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            };
            if let Some(live) = device.live.as_mut() {
                live.machine.handle_local_write(now, head);
            }
        }
    }
}

impl crate::world::LiveLink {
    /// Hands the news the engine reported for the link to its machine, in order.
    pub(crate) fn take_news(&mut self) {
        let news: Vec<_> = self
            .news
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for (n, at_ms) in news {
            self.machine.handle_news(at_ms, n);
        }
    }
}
