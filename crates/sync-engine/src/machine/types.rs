//! The machine's vocabulary: its configuration, the actions it asks of a driver, and
//! the results a driver hands back.

use sync_types::{Gap, LinkState, ProgressToken, SyncEvent};

use crate::delivery::{IN_FLIGHT_DELIVERIES_MAX, Ordinal};

/// How a link replicates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// A live subscription pulls; local writes push at once.
    Live,
    /// Periodic catch-up, push and reconcile.
    Poll,
}

/// Tunables of a link, with the defaults each field names.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Live or poll.
    pub mode: Mode,
    /// Deliveries in flight before the link goes to repair (default 100).
    pub in_flight_deliveries_max: usize,
    /// Batch window before flushing writes that arrived while a push was in flight, used
    /// only under a burst (default 100 ms).
    pub push_batch_window_ms: u64,
    /// Writes arriving during one push that make a burst (default 32). Fewer are flushed
    /// as soon as the push settles, so a write never waits a window behind a single
    /// earlier one.
    pub push_burst_writes_min: u32,
    /// Wait before each repair retry (default 1, 3, 10 s).
    pub repair_backoff_ms: Vec<u64>,
    /// Repair attempts before degraded polling (default 3).
    pub repair_attempts_max: u32,
    /// Degraded poll period (default 15 s) plus up to `degraded_poll_jitter_ms` (15 s).
    pub degraded_poll_ms: u64,
    /// Jitter added to each degraded poll period.
    pub degraded_poll_jitter_ms: u64,
    /// Poll period in poll mode (default 2 min).
    pub poll_interval_ms: u64,
    /// Cap on the poll backoff factor after consecutive failures (default 4).
    pub poll_backoff_factor_max: u64,
    /// Period of the integrity reconcile in live mode (default 5 min).
    pub integrity_check_ms: u64,
    /// Delay before a reconcile the link asked for itself (default 1 s).
    pub reconcile_delay_ms: u64,
    /// Delays before reconnecting a dropped subscription (default 250 ms, 1 s, 5 s).
    pub reconnect_backoff_ms: Vec<u64>,
    /// Seed of the jitter generator, mixed with the link's key, so a simulation replays
    /// exactly. The live driver mixes in the replica's node id, so replicas differ.
    pub jitter_seed: u64,
    /// How far every reconnect, repair retry, poll and integrity delay is spread, in
    /// percent of the delay: `d` becomes uniform in `[d - d·p/100, d + d·p/100)`
    /// (default 50: `[d/2, 3d/2)`; 0 turns jitter off; at most 100).
    pub jitter_percent: u32,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Live,
            in_flight_deliveries_max: IN_FLIGHT_DELIVERIES_MAX,
            push_batch_window_ms: 100,
            push_burst_writes_min: 32,
            repair_backoff_ms: vec![1_000, 3_000, 10_000],
            repair_attempts_max: 3,
            degraded_poll_ms: 15_000,
            degraded_poll_jitter_ms: 15_000,
            poll_interval_ms: 120_000,
            poll_backoff_factor_max: 4,
            integrity_check_ms: 300_000,
            reconcile_delay_ms: 1_000,
            reconnect_backoff_ms: vec![250, 1_000, 5_000],
            jitter_seed: 0,
            jitter_percent: 50,
        }
    }
}

/// Names one subscription the machine opened.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SubscriptionId(pub u64);

/// Names one push, pull or reconcile the machine asked for.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Ticket(pub u64);

/// The timers a link uses; at most one of each is armed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Timer {
    /// Flush writes batched while a push was in flight.
    PushBatch,
    /// Run a reconcile the link asked for.
    Reconcile,
    /// Retry a failed repair.
    RepairRetry,
    /// Degraded polling tick.
    DegradedPoll,
    /// Poll-mode tick.
    Poll,
    /// Live-mode integrity reconcile.
    IntegrityCheck,
    /// Reopen a dropped subscription.
    Reconnect,
}

/// Something the driver must do, in order.
// Actions are drained as soon as they are produced; boxing events would cost an
// allocation per event for no memory saved.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use]
pub enum Action {
    /// Open the live subscription after `from` (from the log's start when `None`).
    OpenSubscription {
        /// Names this subscription in later inputs.
        id: SubscriptionId,
        /// The cursor to resume after.
        from: Option<ProgressToken>,
    },
    /// Close the current subscription.
    CloseSubscription,
    /// Push local log entries after `after`, and report with
    /// [`handle_push_result`](super::LinkMachine::handle_push_result).
    Push {
        /// Names this push.
        ticket: Ticket,
        /// The push checkpoint.
        after: Option<ProgressToken>,
    },
    /// Read the remote log after `after` and apply it, and report with
    /// [`handle_catch_up_result`](super::LinkMachine::handle_catch_up_result).
    CatchUp {
        /// Names this pull.
        ticket: Ticket,
        /// The pull checkpoint.
        after: Option<ProgressToken>,
    },
    /// Run a full reconcile (tree diff both ways, then compare roots), and report with
    /// [`handle_reconcile_result`](super::LinkMachine::handle_reconcile_result).
    Reconcile {
        /// Names this reconcile.
        ticket: Ticket,
    },
    /// Write the link state durably before doing anything that follows.
    Persist(Box<LinkState>),
    /// Report an event (after the preceding `Persist`).
    Emit(SyncEvent),
    /// Arm (or re-arm) a timer.
    ArmTimer {
        /// Which timer.
        timer: Timer,
        /// When it fires, in the driver's clock.
        at_ms: u64,
    },
    /// Disarm a timer.
    CancelTimer(Timer),
}

/// What the driver should do with a live event.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[must_use]
pub enum EventDecision {
    /// Apply it, then call [`handle_applied`](super::LinkMachine::handle_applied) with this
    /// ordinal.
    Apply(Ordinal),
    /// Nothing to do (already counted).
    Skip,
    /// Drop it: stale subscription, or the link went to repair.
    Ignore,
}

/// How the driver classified a live event.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EventClass {
    /// In scope and not yet held: must be applied.
    Apply,
    /// Out of scope, or already held: nothing to apply.
    Skip,
    /// Cannot be classified: fail closed and repair.
    Unknown,
}

/// Why a subscription ended.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SubscriptionEnd {
    /// The cursor is stale.
    Gap(Gap),
    /// The server reported an error, or told the subscriber it fell behind.
    Error(LinkError),
    /// The connection dropped.
    Disconnected,
}

/// The result of a push.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PushResult {
    /// The remote settled every entry up to `upto` (applied, or refused for good and
    /// dead-lettered by the driver); `None` when there was nothing to push.
    Settled {
        /// The new push checkpoint.
        upto: Option<ProgressToken>,
    },
    /// The push failed transiently (unreachable, timeout, deferred).
    Failed(LinkError),
}

/// The result of a reconcile.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ReconcileResult {
    /// Both sides exchanged what they lacked; `converged` when the roots then matched.
    Done {
        /// Whether the roots matched afterwards.
        converged: bool,
    },
    /// The reconcile failed (unreachable, timeout, refused).
    Failed(LinkError),
    /// The link can never complete (a dependency outside its scope, expired grants):
    /// it goes to `terminal_incomplete`.
    Terminal(LinkError),
}

/// The result of a catch-up read of the remote log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum CatchUpResult {
    /// Every page was applied; `upto` is the last token applied (or `None` if there was
    /// nothing) and `head` the remote head seen.
    Done {
        /// The new pull checkpoint.
        upto: Option<ProgressToken>,
        /// The remote head.
        head: Option<ProgressToken>,
    },
    /// The cursor is stale.
    Gap(Gap),
    /// The read or an apply failed.
    Failed(LinkError),
    /// The link can never complete (a dependency outside its scope, expired grants):
    /// it goes to `terminal_incomplete`.
    Terminal(LinkError),
}

/// Why an operation of a link failed: what the machine and the application need to
/// tell a network problem from a refusal or a broken peer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LinkError {
    /// The kind of failure.
    pub kind: LinkErrorKind,
    /// What happened, for people.
    pub message: String,
}

/// The kinds of [`LinkError`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LinkErrorKind {
    /// The endpoint could not be reached or did not answer in time: retried later.
    Unreachable,
    /// The endpoint refused the credentials or the request.
    Refused,
    /// The endpoint answered something the protocol does not allow.
    Protocol,
    /// Something failed on this side (storage, a task).
    Local,
    /// The link can never complete (a dependency outside its scope, expired grants).
    Terminal,
    /// Anything else (a message or outcome reported as text).
    Other,
}

impl LinkError {
    /// An error of `kind`.
    pub fn new(kind: LinkErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for LinkError {}

impl From<String> for LinkError {
    fn from(message: String) -> Self {
        Self::new(LinkErrorKind::Other, message)
    }
}

impl From<&str> for LinkError {
    fn from(message: &str) -> Self {
        Self::new(LinkErrorKind::Other, message)
    }
}

impl From<&crate::Error> for LinkError {
    fn from(e: &crate::Error) -> Self {
        use crate::Error as E;
        let kind = match e {
            E::Transport(t) if t.is_retryable() => LinkErrorKind::Unreachable,
            E::Transport(_) => LinkErrorKind::Refused,
            E::Protocol(_) => LinkErrorKind::Protocol,
            E::TerminalIncomplete { .. } | E::GrantExpired { .. } => LinkErrorKind::Terminal,
            E::Ledger(_) | E::Task(_) | E::Tree(_) => LinkErrorKind::Local,
            _ => LinkErrorKind::Other,
        };
        Self::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_kind_across_the_boundary() {
        use sync_transport::TransportError;
        let kind = |e: crate::Error| LinkError::from(&e).kind;
        assert_eq!(
            kind(TransportError::Unreachable("down".into()).into()),
            LinkErrorKind::Unreachable
        );
        assert_eq!(
            kind(crate::Error::Protocol("bad page".into())),
            LinkErrorKind::Protocol
        );
        assert_eq!(
            kind(crate::Error::TerminalIncomplete {
                link: "l".into(),
                reason: "r".into()
            }),
            LinkErrorKind::Terminal
        );
        assert_eq!(
            kind(crate::Error::Task("panicked".into())),
            LinkErrorKind::Local
        );
        let e = LinkError::from("text");
        assert_eq!(
            (e.kind, e.to_string()),
            (LinkErrorKind::Other, "text".into())
        );
    }
}
