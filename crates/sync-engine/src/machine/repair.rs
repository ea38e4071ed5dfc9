//! Repair: reconcile, reopen the subscription from a resume point, reconcile again to
//! close the window between the two; retried with backoff, then degraded polling.

use sync_types::{Connectivity, LinkStatus, ProgressToken, SyncEvent};

use super::{Action, LinkMachine, Timer};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum RepairPhase {
    /// First reconcile running.
    Reconciling,
    /// Subscription reopened; waiting for end-of-stored-events.
    Reopening,
    /// Second reconcile, closing the window between reconcile and resubscribe.
    Closing,
    /// Waiting for a retry timer.
    Waiting,
}

#[derive(Debug)]
pub(super) struct Repair {
    pub(super) attempt: u32,
    pub(super) phase: RepairPhase,
    pub(super) resume: Option<ProgressToken>,
    pub(super) from_degraded: bool,
}

impl LinkMachine {
    pub(super) fn enter_repair(&mut self, resume: Option<ProgressToken>) {
        if matches!(
            self.state.status,
            LinkStatus::TerminalIncomplete | LinkStatus::Paused
        ) {
            return;
        }
        if let Some(repair) = &mut self.repair {
            // Already repairing: remember the newest resume point, keep going.
            if resume.is_some() {
                repair.resume = resume;
            }
            return;
        }
        if self.subscription.take().is_some() {
            self.actions.push_back(Action::CloseSubscription);
        }
        self.tracker.reset();
        self.cancel(Timer::Reconnect);
        self.set_status(LinkStatus::Repairing);
        self.set_connectivity(Connectivity::Offline);
        self.repair = Some(Repair {
            attempt: 1,
            phase: RepairPhase::Reconciling,
            resume,
            from_degraded: false,
        });
        self.state.counters.repairs += 1;
        self.emit(SyncEvent::RepairStarted {
            link: self.state.key.clone(),
            attempt: 1,
        });
        if self.reconcile_ticket.take().is_some() {
            // A reconcile already running started before the trouble; run a fresh one.
            self.reconcile_again = false;
        }
        self.start_reconcile();
    }

    pub(super) fn repair_reopen(&mut self) {
        let Some(resume) = self.repair.as_ref().map(|r| r.resume) else {
            return;
        };
        let resume = resume.or(self.state.pull.contiguous_applied);
        self.state.pull.reset(resume);
        self.persist();
        let live = self.live();
        if let Some(repair) = &mut self.repair {
            repair.phase = if live {
                RepairPhase::Reopening
            } else {
                RepairPhase::Closing
            };
        }
        if live {
            self.open_subscription(resume);
        } else {
            self.start_reconcile();
        }
    }

    /// The closing reconcile exchanged what each side lacked. The window between the
    /// first reconcile and the reopened subscription is closed by that exchange, and
    /// the subscription, live since before it, carries everything written after, so
    /// the repair is done whether or not the roots then matched: they differ only by
    /// writes that landed while the diff ran, which under steady writes on either side
    /// they always do (requiring equal roots kept such a link in repair, then degraded
    /// polling without a subscription, for as long as anyone wrote). When they
    /// differed, the link stays marked and reconciles again after
    /// `reconcile_delay_ms`, like any reconcile that did not converge.
    pub(super) fn repair_completed(&mut self, now_ms: u64, converged: bool) {
        self.repair = None;
        if converged {
            self.state.needs_reconcile = false;
            self.state.last_sync_ms.get_or_insert(now_ms);
        } else {
            self.state.needs_reconcile = true;
            self.arm(Timer::Reconcile, now_ms + self.config.reconcile_delay_ms);
        }
        self.cancel(Timer::RepairRetry);
        self.cancel(Timer::DegradedPoll);
        let to = if self.live() {
            LinkStatus::Live
        } else {
            LinkStatus::Polling
        };
        self.set_connectivity(Connectivity::Online);
        self.set_status(to);
        self.emit(SyncEvent::RepairCompleted {
            link: self.state.key.clone(),
        });
        if to == LinkStatus::Polling {
            let delay = self.spread(self.config.poll_interval_ms);
            self.arm(Timer::Poll, now_ms + delay);
        }
        self.push_if_idle();
    }

    pub(super) fn repair_failed(&mut self, now_ms: u64, error: String) {
        let Some(repair) = &mut self.repair else {
            return;
        };
        let attempt = repair.attempt;
        let from_degraded = repair.from_degraded;
        repair.phase = RepairPhase::Waiting;
        if self.subscription.take().is_some() {
            self.actions.push_back(Action::CloseSubscription);
        }
        self.tracker.reset();
        self.emit(SyncEvent::RepairFailed {
            link: self.state.key.clone(),
            attempt,
            error,
        });
        if from_degraded || attempt >= self.config.repair_attempts_max {
            self.repair = None;
            let entering = self.state.status != LinkStatus::DegradedPoll && !from_degraded;
            self.set_status(LinkStatus::DegradedPoll);
            if entering {
                self.emit(SyncEvent::DegradedPollEntered {
                    link: self.state.key.clone(),
                });
            }
            let jitter = self.jitter(self.config.degraded_poll_jitter_ms);
            self.arm(
                Timer::DegradedPoll,
                now_ms + self.config.degraded_poll_ms + jitter,
            );
        } else {
            let delays = &self.config.repair_backoff_ms;
            let index = usize::try_from(attempt - 1)
                .unwrap_or(usize::MAX)
                .min(delays.len() - 1);
            let delay = self.spread(delays[index]);
            self.arm(Timer::RepairRetry, now_ms + delay);
        }
    }
}
