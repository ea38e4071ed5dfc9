//! What the engine reports: dead letters, health and events.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{Cid, Endpoint, ProtocolName, RecordId, TenantId};
use crate::link::{Connectivity, LinkKey, LinkStatus};
use crate::progress::{Gap, ProgressToken};

/// Why a message ended up in the dead letters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum DeadLetterCategory {
    /// The remote refused a pushed message for good (invalid, unauthorized).
    PushPermanent,
    /// Every push retry failed.
    PushExhausted,
    /// A pulled message failed to apply.
    PullProcessing,
    /// A pulled message was out of the link's scope or could not be classified.
    PullScopeRejected,
    /// A dependency the link's grant does not cover is missing.
    Closure,
}

impl DeadLetterCategory {
    /// Every category.
    pub const ALL: [DeadLetterCategory; 5] = [
        DeadLetterCategory::PushPermanent,
        DeadLetterCategory::PushExhausted,
        DeadLetterCategory::PullProcessing,
        DeadLetterCategory::PullScopeRejected,
        DeadLetterCategory::Closure,
    ];

    /// Whether a converged reconcile clears entries of this category. Closure failures
    /// stay: equal roots prove the same message ids, not usable dependencies.
    pub fn cleared_by_convergence(self) -> bool {
        self != DeadLetterCategory::Closure
    }

    /// The snake_case name used in tables, JSON and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterCategory::PushPermanent => "push_permanent",
            DeadLetterCategory::PushExhausted => "push_exhausted",
            DeadLetterCategory::PullProcessing => "pull_processing",
            DeadLetterCategory::PullScopeRejected => "pull_scope_rejected",
            DeadLetterCategory::Closure => "closure",
        }
    }
}

impl fmt::Display for DeadLetterCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeadLetterCategory {
    type Err = crate::error::ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or(crate::error::ValidationError::Malformed {
                what: "dead letter category",
                reason: "expected push_permanent, push_exhausted, pull_processing, pull_scope_rejected or closure",
            })
    }
}

/// A message that failed to replicate with one endpoint, kept for the application to
/// inspect, retry or clear. Keyed by `(cid, endpoint)`; a later failure replaces it and
/// counts one more attempt.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The failed message.
    pub cid: Cid,
    /// Its tenant.
    pub tenant: TenantId,
    /// The endpoint it failed with.
    pub endpoint: Endpoint,
    /// Its protocol, when known.
    pub protocol: Option<ProtocolName>,
    /// Why it failed.
    pub category: DeadLetterCategory,
    /// A short machine-readable code (an HTTP status, an outcome name), when known.
    pub error_code: Option<String>,
    /// What went wrong, for humans.
    pub error: String,
    /// How many times it failed.
    pub attempts: u32,
    /// When it last failed, in ms since the Unix epoch.
    pub failed_at_ms: u64,
}

/// A summary of replication health for an application or operator.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HealthSummary {
    /// The best connectivity over all links (online if any link is online).
    pub connectivity: Connectivity,
    /// Number of dead letters.
    pub failed_message_count: u64,
    /// Number of dead letters of category `closure`.
    pub closure_failure_count: u64,
    /// Number of current links that are repairing, degraded or terminal.
    pub degraded_link_count: u64,
    /// Local log entries after the push checkpoints, over all links.
    pub pending_outbound: u64,
    /// When a sync last completed, in ms since the Unix epoch.
    pub last_sync_ms: Option<u64>,
    /// No dead letters and no degraded links.
    pub healthy: bool,
}

impl HealthSummary {
    /// A summary whose `healthy` flag is derived from the counts.
    pub fn new(
        connectivity: Connectivity,
        failed_message_count: u64,
        closure_failure_count: u64,
        degraded_link_count: u64,
        pending_outbound: u64,
        last_sync_ms: Option<u64>,
    ) -> Self {
        Self {
            connectivity,
            failed_message_count,
            closure_failure_count,
            degraded_link_count,
            pending_outbound,
            last_sync_ms,
            healthy: failed_message_count == 0 && degraded_link_count == 0,
        }
    }
}

/// A direction of replication. For the scope gate ([`Scope::gate`](crate::Scope::gate))
/// it is seen from whoever holds the scope: a node serving a grant's reads is `Pull`,
/// a node taking a grant's writes is `Push`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Direction {
    /// From the remote to the local store.
    Pull,
    /// From the local store to the remote.
    Push,
}

/// Why a link was marked as needing a reconcile.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum ReconcileReason {
    /// Push retries were exhausted.
    PushRetryExhausted,
    /// A message could not be classified against the scope.
    ScopeUnclassified,
    /// The periodic integrity check is due.
    IntegrityCheck,
    /// The link has never been reconciled.
    FirstSync,
}

/// Something the engine did or noticed, for applications and the CLI. Every event is
/// emitted after the state it reports has been persisted.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum SyncEvent {
    /// A link changed status.
    LinkStatusChanged {
        /// The link.
        link: LinkKey,
        /// The old status.
        from: LinkStatus,
        /// The new status.
        to: LinkStatus,
    },
    /// A link's remote became reachable or unreachable.
    ConnectivityChanged {
        /// The link.
        link: LinkKey,
        /// The old connectivity.
        from: Connectivity,
        /// The new connectivity.
        to: Connectivity,
    },
    /// A checkpoint advanced and was persisted.
    CheckpointAdvanced {
        /// The link.
        link: LinkKey,
        /// Which checkpoint.
        direction: Direction,
        /// Its new resume point.
        token: ProgressToken,
    },
    /// A repair attempt started.
    RepairStarted {
        /// The link.
        link: LinkKey,
        /// The attempt number, from 1.
        attempt: u32,
    },
    /// A repair completed.
    RepairCompleted {
        /// The link.
        link: LinkKey,
    },
    /// A repair attempt failed.
    RepairFailed {
        /// The link.
        link: LinkKey,
        /// The attempt number, from 1.
        attempt: u32,
        /// What went wrong.
        error: String,
    },
    /// A link entered degraded polling.
    DegradedPollEntered {
        /// The link.
        link: LinkKey,
    },
    /// A cursor could not be served.
    GapDetected {
        /// The link.
        link: LinkKey,
        /// The gap answer.
        gap: Gap,
    },
    /// A link was marked as needing a reconcile.
    ReconcileNeeded {
        /// The link.
        link: LinkKey,
        /// Why.
        reason: ReconcileReason,
    },
    /// A reconcile converged (equal roots).
    ReconcileCompleted {
        /// The link.
        link: LinkKey,
    },
    /// Concurrent versions of a record were found.
    Conflict {
        /// The record's tenant.
        tenant: TenantId,
        /// The record.
        record: RecordId,
        /// The version the merge rule picked.
        winner: Cid,
        /// The concurrent versions that lost.
        losers: Vec<Cid>,
    },
    /// A message was put in the dead letters.
    DeadLetterRecorded {
        /// The entry.
        dead_letter: DeadLetter,
    },
    /// Progress of a sync in one direction: of one operation the engine was asked for
    /// (a one-shot sync of a link, a catch-up, a push, a reconcile), counted from zero.
    /// Within an operation the counts only grow; at its end `messages_total` and
    /// `bytes_total` equal what moved.
    SyncProgress {
        /// The link.
        link: LinkKey,
        /// Which direction.
        direction: Direction,
        /// Messages moved so far in this operation.
        messages: u64,
        /// Bytes moved so far in this operation: encoded messages, inline data and blob
        /// bytes.
        bytes: u64,
        /// How many messages this operation moves in all, as far as known now (a pull
        /// learns it from the node's first page, a push from the local log); `None`
        /// when unknown (a node before this count). Never below `messages`.
        messages_total: Option<u64>,
        /// How many bytes this operation moves in all, blobs included, as far as known
        /// now; `None` when unknown. Never below `bytes`.
        bytes_total: Option<u64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_is_derived() {
        assert!(HealthSummary::new(Connectivity::Online, 0, 0, 0, 5, None).healthy);
        assert!(!HealthSummary::new(Connectivity::Online, 1, 0, 0, 0, None).healthy);
        assert!(!HealthSummary::new(Connectivity::Online, 0, 0, 1, 0, None).healthy);
    }

    #[test]
    fn categories_parse_and_closure_survives_convergence() {
        for c in DeadLetterCategory::ALL {
            assert_eq!(c.as_str().parse::<DeadLetterCategory>().unwrap(), c);
            assert_eq!(c.cleared_by_convergence(), c != DeadLetterCategory::Closure);
        }
        assert!("nope".parse::<DeadLetterCategory>().is_err());
    }
}
