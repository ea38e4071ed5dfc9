//! The per-link replication state machine, sans-IO.
//!
//! A [`LinkMachine`] owns one link's durable state ([`LinkState`]) and its runtime state
//! (subscription, deliveries in flight, push and repair progress, timers). It never does
//! I/O and never reads a clock: the driver feeds it inputs through `handle_*` methods, with
//! `now_ms` passed in, and drains the resulting [`Action`]s with
//! [`poll_action`](LinkMachine::poll_action): open or close the subscription, push, pull,
//! reconcile, persist the state, emit an event, arm or cancel a timer.
//!
//! Invariants it keeps:
//!
//! - **Checkpoints move only over contiguous durable work.** Pull deliveries are tracked
//!   by ordinal (`DeliveryTracker`); the pull checkpoint moves when the lowest
//!   outstanding delivery is applied. The push checkpoint moves only to what the remote
//!   acknowledged.
//! - **Persist before announce.** Every `Persist` action precedes the events that report
//!   the change it carries; the driver executes actions in order.
//! - **Nothing stale acts.** Each subscription the machine opens has a fresh
//!   [`SubscriptionId`]; inputs naming an old one are ignored. Each reconcile, push and
//!   pull the machine asks for carries a [`Ticket`]; results with another ticket are
//!   ignored. A machine replaced on reconfiguration ignores everything of the old one by
//!   construction: the driver drops it.
//! - **An explicit opening state.** A loaded link starts in `opening`
//!   ([`LinkState::on_load`]); deliveries are accepted and committed while `opening`,
//!   `initializing` or `live`, and by the subscription that a repair reopens, so no
//!   catch-up event is applied without being committed.

mod jitter;
mod repair;
mod types;

use std::collections::{BTreeMap, VecDeque};

use sync_types::{
    Connectivity, Direction, LinkState, LinkStatus, ProgressToken, ReconcileReason, Scope,
    SyncEvent,
};

use crate::delivery::DeliveryTracker;
pub use crate::delivery::{IN_FLIGHT_DELIVERIES_MAX, Ordinal};
use crate::link_news::{self, LinkNews};

use repair::{Repair, RepairPhase};
pub use types::*;

/// One link's replication logic. See the module docs.
#[derive(Debug)]
pub struct LinkMachine {
    config: LinkConfig,
    state: LinkState,
    actions: VecDeque<Action>,
    tracker: DeliveryTracker,
    next_id: u64,
    subscription: Option<SubscriptionId>,
    reconnects: u32,
    push_ticket: Option<Ticket>,
    writes_during_push: u32,
    local_head: Option<ProgressToken>,
    remote_head: Option<ProgressToken>,
    reconcile_ticket: Option<Ticket>,
    reconcile_again: bool,
    catch_up_ticket: Option<Ticket>,
    poll_failures: u32,
    repair: Option<Repair>,
    timers: BTreeMap<Timer, u64>,
    jitter_state: u64,
    started: bool,
}

impl LinkMachine {
    /// A machine over a link state as loaded from the ledger (or just created). Call
    /// [`handle_start`](Self::handle_start) to begin.
    pub fn new(state: LinkState, config: LinkConfig) -> Self {
        let state = if state.status == LinkStatus::Initializing {
            state
        } else {
            state.on_load()
        };
        Self {
            tracker: DeliveryTracker::new(config.in_flight_deliveries_max),
            jitter_state: jitter::seed_for(config.jitter_seed, &state.key),
            config,
            state,
            actions: VecDeque::new(),
            next_id: 0,
            subscription: None,
            reconnects: 0,
            push_ticket: None,
            writes_during_push: 0,
            local_head: None,
            remote_head: None,
            reconcile_ticket: None,
            reconcile_again: false,
            catch_up_ticket: None,
            poll_failures: 0,
            repair: None,
            timers: BTreeMap::new(),
            started: false,
        }
    }

    /// The link's state as the machine sees it.
    pub fn state(&self) -> &LinkState {
        &self.state
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The time the earliest armed timer fires.
    pub fn next_timer(&self) -> Option<(Timer, u64)> {
        self.timers
            .iter()
            .map(|(&t, &at)| (t, at))
            .min_by_key(|&(_, at)| at)
    }

    /// Whether everything known on the remote has been applied here and nothing local is
    /// waiting to be pushed. Never true before the remote head has been seen once.
    pub fn is_caught_up(&self) -> bool {
        let pulled = match (self.remote_head, self.state.pull.contiguous_applied) {
            (None, _) => false,
            (Some(head), Some(at)) => head.compare(&at).is_some_and(|o| o.is_le()),
            (Some(_), None) => false,
        };
        let pushed = match (self.local_head, self.state.push.contiguous_applied) {
            (None, _) => true,
            (Some(head), Some(at)) => head.compare(&at).is_some_and(|o| o.is_le()),
            (Some(_), None) => false,
        };
        pulled && pushed && self.push_ticket.is_none()
    }

    /// Tells the machine the newest entry of the local log, so it knows what is pending
    /// to push (call it once at start, then [`handle_local_write`](Self::handle_local_write)
    /// for every new entry).
    pub fn set_local_head(&mut self, head: Option<ProgressToken>) {
        self.local_head = head;
    }

    /// Starts the link: opens the subscription (live mode) or starts polling, pushes what
    /// is pending and schedules the reconciles it needs.
    pub fn handle_start(&mut self, now_ms: u64) {
        if self.started
            || matches!(
                self.state.status,
                LinkStatus::Paused | LinkStatus::TerminalIncomplete
            )
        {
            return;
        }
        self.started = true;
        let first_sync = self.state.last_sync_ms.is_none();
        if self.live() {
            self.open_subscription(self.state.pull.contiguous_applied);
            let delay = self.spread(self.config.integrity_check_ms);
            self.arm(Timer::IntegrityCheck, now_ms + delay);
        } else {
            self.set_status(LinkStatus::Polling);
            self.arm(Timer::Poll, now_ms);
        }
        if first_sync && !self.state.needs_reconcile {
            self.state.needs_reconcile = true;
            self.persist();
            self.emit(SyncEvent::ReconcileNeeded {
                link: self.state.key.clone(),
                reason: ReconcileReason::FirstSync,
            });
        }
        if self.state.needs_reconcile && self.live() {
            self.start_reconcile();
        }
        self.push_if_idle();
    }

    /// Stops the link: closes the subscription and disarms every timer. Results of work
    /// still in flight are ignored from now on.
    pub fn handle_stop(&mut self) {
        if self.subscription.take().is_some() {
            self.actions.push_back(Action::CloseSubscription);
        }
        for timer in std::mem::take(&mut self.timers).into_keys() {
            self.actions.push_back(Action::CancelTimer(timer));
        }
        self.push_ticket = None;
        self.reconcile_ticket = None;
        self.catch_up_ticket = None;
        self.tracker.reset();
        self.started = false;
    }

    /// A live event arrived on subscription `id` with cursor `token`.
    pub fn handle_event(
        &mut self,
        _now_ms: u64,
        id: SubscriptionId,
        token: ProgressToken,
        class: EventClass,
    ) -> EventDecision {
        if self.subscription != Some(id) {
            return EventDecision::Ignore;
        }
        self.reconnects = 0;
        if !self.state.pull.accepts_domain(&token) {
            self.enter_repair(None);
            return EventDecision::Ignore;
        }
        match class {
            EventClass::Unknown => {
                self.mark_needs_reconcile(ReconcileReason::ScopeUnclassified);
                self.enter_repair(None);
                EventDecision::Ignore
            }
            EventClass::Skip => match self.tracker.skip(token) {
                Ok(advanced) => {
                    self.advance_pull(advanced);
                    EventDecision::Skip
                }
                Err(_) => {
                    self.enter_repair(None);
                    EventDecision::Ignore
                }
            },
            EventClass::Apply => match self.tracker.deliver(token) {
                Ok(ordinal) => EventDecision::Apply(ordinal),
                Err(_) => {
                    self.enter_repair(None);
                    EventDecision::Ignore
                }
            },
        }
    }

    /// A delivery finished: durably applied (`Ok`) or failed.
    pub fn handle_applied(
        &mut self,
        _now_ms: u64,
        id: SubscriptionId,
        ordinal: Ordinal,
        result: Result<(), LinkError>,
    ) {
        if self.subscription != Some(id) {
            return;
        }
        match result {
            Ok(()) => {
                let advanced = self.tracker.complete(ordinal);
                self.state.counters.messages_pulled += 1;
                self.advance_pull(advanced);
            }
            Err(_) => {
                self.state.counters.failures += 1;
                self.enter_repair(None);
            }
        }
    }

    /// The subscription finished replaying stored events; `token` is the remote head.
    pub fn handle_eose(&mut self, now_ms: u64, id: SubscriptionId, token: Option<ProgressToken>) {
        if self.subscription != Some(id) {
            return;
        }
        self.reconnects = 0;
        if let Some(token) = token {
            if !self.state.pull.accepts_domain(&token) {
                self.enter_repair(None);
                return;
            }
            self.remote_head = Some(token);
            self.state.pull.observe_received(token);
        }
        self.set_connectivity(Connectivity::Online);
        match self.state.status {
            LinkStatus::Opening | LinkStatus::Initializing => self.set_status(LinkStatus::Live),
            LinkStatus::Repairing => {
                if let Some(repair) = &mut self.repair
                    && repair.phase == RepairPhase::Reopening
                {
                    repair.phase = RepairPhase::Closing;
                    self.start_reconcile();
                }
            }
            _ => {}
        }
        if self.state.needs_reconcile && self.repair.is_none() && self.reconcile_ticket.is_none() {
            self.arm(Timer::Reconcile, now_ms + self.config.reconcile_delay_ms);
        }
    }

    /// The subscription ended.
    pub fn handle_subscription_end(
        &mut self,
        now_ms: u64,
        id: SubscriptionId,
        end: SubscriptionEnd,
    ) {
        if self.subscription != Some(id) {
            return;
        }
        self.subscription = None;
        match end {
            SubscriptionEnd::Gap(gap) => {
                let resume = gap.latest_available;
                self.emit(SyncEvent::GapDetected {
                    link: self.state.key.clone(),
                    gap,
                });
                self.enter_repair(resume);
            }
            SubscriptionEnd::Error(_) => self.enter_repair(None),
            SubscriptionEnd::Disconnected => {
                // The durable checkpoint is the truth: reopening from it replays whatever
                // was in flight, so a drop costs latency, not a repair.
                self.tracker.reset();
                self.set_connectivity(Connectivity::Offline);
                if self.repair.is_some() {
                    self.repair_failed(now_ms, "subscription dropped during repair".into());
                } else {
                    let delays = &self.config.reconnect_backoff_ms;
                    let delay = delays[usize::try_from(self.reconnects)
                        .unwrap_or(usize::MAX)
                        .min(delays.len() - 1)];
                    self.reconnects = self.reconnects.saturating_add(1);
                    let delay = self.spread(delay);
                    self.arm(Timer::Reconnect, now_ms + delay);
                }
            }
        }
    }

    /// Live deliveries registered and not yet passed by the pull checkpoint (at most
    /// [`LinkConfig::in_flight_deliveries_max`]).
    pub fn deliveries_in_flight(&self) -> usize {
        self.tracker.in_flight()
    }

    /// Adds `bytes` (messages and inline data) to the pulled bytes of applied live
    /// deliveries; saved with the next persist.
    pub fn record_pulled_bytes(&mut self, bytes: u64) {
        self.state.counters.bytes_pulled += bytes;
    }

    /// A message pulled from this link's own endpoint was appended to the local log at
    /// `token`. It needs no push. When nothing local waits before it (no push running,
    /// nothing pending, and it directly follows the local head), the push checkpoint
    /// moves over it (saved with the next persist, or at once when no delivery is in
    /// flight), so what is pending
    /// counts only writes the endpoint lacks. Otherwise it is local log the push
    /// checkpoint has not passed yet: the local head moves to it and a push (now, or when
    /// the running one settles) passes over it, skipping it or answered `Duplicate`, so
    /// nothing stays counted as pending once the link is quiet.
    pub fn handle_echo(&mut self, _now_ms: u64, token: ProgressToken) {
        let follows = match self.local_head {
            None => token.position == 1,
            Some(head) => {
                head.same_domain(&token) && head.position.checked_add(1) == Some(token.position)
            }
        };
        if follows && self.push_ticket.is_none() && !self.push_pending() {
            self.local_head = Some(token);
            self.state.push.commit(token);
            // At the end of a burst nothing else will persist soon: save it now.
            if self.tracker.in_flight() == 0 {
                self.persist();
            }
            return;
        }
        let newer = self
            .local_head
            .is_none_or(|head| token.compare(&head).is_none_or(|o| o.is_gt()));
        if newer {
            self.local_head = Some(token);
            if self.push_ticket.is_none() && !self.timers.contains_key(&Timer::PushBatch) {
                self.start_push();
            }
        }
    }

    /// A new entry was appended to the local log.
    pub fn handle_local_write(&mut self, _now_ms: u64, head: ProgressToken) {
        self.local_head = Some(head);
        if self.push_ticket.is_some() {
            // Counted, so a burst can be batched into one flush after the push.
            self.writes_during_push = self.writes_during_push.saturating_add(1);
        } else if !self.timers.contains_key(&Timer::PushBatch) {
            self.start_push();
        }
    }

    /// A push finished.
    pub fn handle_push_result(&mut self, now_ms: u64, ticket: Ticket, result: PushResult) {
        if self.push_ticket != Some(ticket) {
            return;
        }
        self.push_ticket = None;
        match result {
            PushResult::Settled { upto } => {
                self.set_connectivity(Connectivity::Online);
                // Never back: a reconcile that converged meanwhile may have moved the
                // checkpoint past what this push reached.
                if let Some(upto) = upto
                    && self.state.push.contiguous_applied.is_none_or(|cp| {
                        upto.compare(&cp) != Some(std::cmp::Ordering::Less) && cp != upto
                    })
                {
                    self.state.push.commit(upto);
                    self.persist();
                    self.emit(SyncEvent::CheckpointAdvanced {
                        link: self.state.key.clone(),
                        direction: Direction::Push,
                        token: upto,
                    });
                }
                if self.push_pending() {
                    let during = std::mem::take(&mut self.writes_during_push);
                    if during >= self.config.push_burst_writes_min {
                        self.arm(Timer::PushBatch, now_ms + self.config.push_batch_window_ms);
                    } else {
                        self.start_push();
                    }
                }
            }
            // The operation retried already (the engine's one retry schedule,
            // `SyncConfig::push_retry_backoff_ms`): only a reconcile can tell what the
            // remote holds now; the next local write pushes again.
            PushResult::Failed(_) => {
                self.writes_during_push = 0;
                self.set_connectivity(Connectivity::Offline);
                self.mark_needs_reconcile(ReconcileReason::PushRetryExhausted);
                self.arm(Timer::Reconcile, now_ms + self.config.reconcile_delay_ms);
            }
        }
    }

    /// A catch-up read finished.
    pub fn handle_catch_up_result(&mut self, now_ms: u64, ticket: Ticket, result: CatchUpResult) {
        if self.catch_up_ticket != Some(ticket) {
            return;
        }
        self.catch_up_ticket = None;
        match result {
            CatchUpResult::Terminal(_) => self.handle_terminal(),
            CatchUpResult::Done { upto, head } => {
                self.poll_failures = 0;
                self.set_connectivity(Connectivity::Online);
                if head.is_some() {
                    self.remote_head = head;
                }
                self.advance_pull(upto);
                let delay = self.spread(self.config.poll_interval_ms);
                self.arm(Timer::Poll, now_ms + delay);
            }
            CatchUpResult::Gap(gap) => {
                let resume = gap.latest_available;
                self.emit(SyncEvent::GapDetected {
                    link: self.state.key.clone(),
                    gap,
                });
                self.enter_repair(resume);
            }
            CatchUpResult::Failed(_) => {
                self.poll_failures = self.poll_failures.saturating_add(1);
                self.set_connectivity(Connectivity::Offline);
                let factor = 1u64
                    .checked_shl(self.poll_failures)
                    .unwrap_or(u64::MAX)
                    .min(self.config.poll_backoff_factor_max);
                let delay = self.spread(self.config.poll_interval_ms.saturating_mul(factor));
                self.arm(Timer::Poll, now_ms + delay);
            }
        }
    }

    /// A reconcile finished.
    pub fn handle_reconcile_result(
        &mut self,
        now_ms: u64,
        ticket: Ticket,
        result: ReconcileResult,
    ) {
        if self.reconcile_ticket != Some(ticket) {
            return;
        }
        self.reconcile_ticket = None;
        if let Some(phase) = self.repair.as_ref().map(|r| r.phase) {
            match (phase, result) {
                (RepairPhase::Reconciling, ReconcileResult::Done { .. }) => self.repair_reopen(),
                (RepairPhase::Closing, ReconcileResult::Done { converged }) => {
                    self.repair_completed(now_ms, converged)
                }
                (_, ReconcileResult::Failed(error)) => self.repair_failed(now_ms, error.message),
                (_, ReconcileResult::Terminal(_)) => self.handle_terminal(),
                (_, ReconcileResult::Done { .. }) => {}
            }
            return;
        }
        match result {
            ReconcileResult::Done { converged: true } => {
                self.set_connectivity(Connectivity::Online);
                // Operations that report news (the engine's) have already applied
                // `LinkNews::Converged`, with the wall-clock time: nothing is left to do.
                if self.state.needs_reconcile || self.state.last_sync_ms.is_none() {
                    self.state.needs_reconcile = false;
                    self.state.last_sync_ms.get_or_insert(now_ms);
                    self.persist();
                    self.emit(SyncEvent::ReconcileCompleted {
                        link: self.state.key.clone(),
                    });
                }
            }
            ReconcileResult::Done { converged: false } => {
                // Writes landed on either side while the diff ran; try again shortly.
                self.arm(Timer::Reconcile, now_ms + self.config.reconcile_delay_ms);
            }
            ReconcileResult::Terminal(_) => {
                self.handle_terminal();
                return;
            }
            ReconcileResult::Failed(_) => {
                self.set_connectivity(Connectivity::Offline);
                let delay = self.spread(self.config.reconcile_delay_ms.saturating_mul(5));
                self.arm(Timer::Reconcile, now_ms + delay);
            }
        }
        if std::mem::take(&mut self.reconcile_again) {
            self.start_reconcile();
        }
    }

    /// An operation reported what happened ([`LinkNews`]) at wall-clock time `at_ms`:
    /// the machine applies it to the state it owns, persists and announces it.
    pub fn handle_news(&mut self, at_ms: u64, news: LinkNews) {
        match news {
            LinkNews::Terminal => self.handle_terminal(),
            // Connectivity is runtime knowledge while a driver runs the link.
            LinkNews::Connectivity(to) => self.set_connectivity(to),
            news => {
                let applied = link_news::apply(&mut self.state, &news, at_ms);
                if applied.persist {
                    self.persist();
                }
                for event in applied.events {
                    self.emit(event);
                }
            }
        }
    }

    /// A timer fired. Timers the machine no longer has armed are ignored.
    pub fn handle_timer(&mut self, now_ms: u64, timer: Timer) {
        match self.timers.get(&timer) {
            Some(&at) if at <= now_ms => {
                self.timers.remove(&timer);
            }
            _ => return,
        }
        match timer {
            Timer::PushBatch => self.start_push(),
            Timer::Reconcile => {
                if self.repair.is_none() {
                    self.start_reconcile();
                }
            }
            Timer::RepairRetry => {
                if let Some(repair) = &mut self.repair {
                    repair.phase = RepairPhase::Reconciling;
                    repair.attempt += 1;
                    let attempt = repair.attempt;
                    self.state.counters.repairs += 1;
                    self.emit(SyncEvent::RepairStarted {
                        link: self.state.key.clone(),
                        attempt,
                    });
                    self.start_reconcile();
                }
            }
            Timer::DegradedPoll => {
                if self.state.status == LinkStatus::DegradedPoll {
                    self.set_status(LinkStatus::Repairing);
                    self.repair = Some(Repair {
                        attempt: 1,
                        phase: RepairPhase::Reconciling,
                        resume: None,
                        from_degraded: true,
                    });
                    self.state.counters.repairs += 1;
                    self.emit(SyncEvent::RepairStarted {
                        link: self.state.key.clone(),
                        attempt: 1,
                    });
                    self.start_reconcile();
                }
            }
            Timer::Poll => {
                if self.state.status == LinkStatus::Polling {
                    self.start_catch_up();
                    self.push_if_idle();
                    if self.state.needs_reconcile {
                        self.start_reconcile();
                    }
                }
            }
            Timer::IntegrityCheck => {
                self.start_reconcile();
                let delay = self.spread(self.config.integrity_check_ms);
                self.arm(Timer::IntegrityCheck, now_ms + delay);
            }
            Timer::Reconnect => {
                if self.subscription.is_none() && self.repair.is_none() && self.live() {
                    self.open_subscription(self.state.pull.contiguous_applied);
                }
            }
        }
    }

    /// A dependency outside the grant is missing: the link stops for good.
    pub fn handle_terminal(&mut self) {
        if self.state.status == LinkStatus::TerminalIncomplete {
            return;
        }
        self.handle_stop();
        self.repair = None;
        self.set_status(LinkStatus::TerminalIncomplete);
    }

    fn live(&self) -> bool {
        // Projections have no live subscription: they are reconciled by polling.
        self.config.mode == Mode::Live && !matches!(self.state.scope, Scope::Projection(_))
    }

    fn push_pending(&self) -> bool {
        match (self.local_head, self.state.push.contiguous_applied) {
            (None, _) => false,
            (Some(_), None) => true,
            // A checkpoint from another epoch of the local log counts as nothing pushed.
            (Some(head), Some(at)) => head.compare(&at).is_none_or(|o| o.is_gt()),
        }
    }

    fn push_if_idle(&mut self) {
        if self.push_ticket.is_none() && self.push_pending() {
            self.start_push();
        }
    }

    fn start_push(&mut self) {
        if self.push_ticket.is_some() || !self.push_pending() {
            return;
        }
        let ticket = self.ticket();
        self.push_ticket = Some(ticket);
        self.actions.push_back(Action::Push {
            ticket,
            after: self.state.push.contiguous_applied,
        });
    }

    fn start_catch_up(&mut self) {
        if self.catch_up_ticket.is_some() {
            return;
        }
        let ticket = self.ticket();
        self.catch_up_ticket = Some(ticket);
        self.actions.push_back(Action::CatchUp {
            ticket,
            after: self.state.pull.contiguous_applied,
        });
    }

    fn start_reconcile(&mut self) {
        if self.reconcile_ticket.is_some() {
            self.reconcile_again = true;
            return;
        }
        self.cancel(Timer::Reconcile);
        let ticket = self.ticket();
        self.reconcile_ticket = Some(ticket);
        self.actions.push_back(Action::Reconcile { ticket });
    }

    fn open_subscription(&mut self, from: Option<ProgressToken>) {
        if self.subscription.take().is_some() {
            self.actions.push_back(Action::CloseSubscription);
        }
        self.tracker.reset();
        let id = SubscriptionId(self.next_id);
        self.next_id += 1;
        self.subscription = Some(id);
        self.actions
            .push_back(Action::OpenSubscription { id, from });
    }

    fn advance_pull(&mut self, token: Option<ProgressToken>) {
        let Some(token) = token else { return };
        if self.state.pull.contiguous_applied == Some(token) {
            return;
        }
        self.state.pull.commit(token);
        self.persist();
        self.emit(SyncEvent::CheckpointAdvanced {
            link: self.state.key.clone(),
            direction: Direction::Pull,
            token,
        });
    }

    fn mark_needs_reconcile(&mut self, reason: ReconcileReason) {
        if self.state.needs_reconcile {
            return;
        }
        self.state.needs_reconcile = true;
        self.persist();
        self.emit(SyncEvent::ReconcileNeeded {
            link: self.state.key.clone(),
            reason,
        });
    }

    fn set_status(&mut self, to: LinkStatus) {
        let from = self.state.status;
        if from == to && to != LinkStatus::Repairing {
            return;
        }
        match self.state.set_status(to) {
            Ok(_) => {
                self.persist();
                if from != to {
                    self.emit(SyncEvent::LinkStatusChanged {
                        link: self.state.key.clone(),
                        from,
                        to,
                    });
                }
            }
            Err(e) => debug_assert!(false, "the machine asked for a refused transition: {e}"),
        }
    }

    fn set_connectivity(&mut self, to: Connectivity) {
        let from = self.state.connectivity;
        if from == to {
            return;
        }
        // Reset on load, but saved while the link runs, as the engine's `link_news` saves
        // it: another process (`weft status`) reads the stored state, and an event is
        // announced only after the state it reports is persisted.
        self.state.connectivity = to;
        self.persist();
        self.emit(SyncEvent::ConnectivityChanged {
            link: self.state.key.clone(),
            from,
            to,
        });
    }

    fn persist(&mut self) {
        self.actions
            .push_back(Action::Persist(Box::new(self.state.clone())));
    }

    fn emit(&mut self, event: SyncEvent) {
        self.actions.push_back(Action::Emit(event));
    }

    fn arm(&mut self, timer: Timer, at_ms: u64) {
        self.timers.insert(timer, at_ms);
        self.actions.push_back(Action::ArmTimer { timer, at_ms });
    }

    fn cancel(&mut self, timer: Timer) {
        if self.timers.remove(&timer).is_some() {
            self.actions.push_back(Action::CancelTimer(timer));
        }
    }

    fn ticket(&mut self) -> Ticket {
        let t = Ticket(self.next_id);
        self.next_id += 1;
        t
    }
}
