//! Replication links: their identity, status state machine and durable state.
//!
//! A link is the unit of replication: one per (tenant, remote endpoint, projection id,
//! authorization epoch). Its durable state ([`LinkState`]) holds both checkpoints, and
//! its status follows the state machine of [`LinkStatus::can_transition`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::auth::{Authorization, AuthorizationEpoch, authorization_epoch};
use crate::error::{TransitionError, ValidationError};
use crate::ids::{Endpoint, TenantId};
use crate::progress::ProgressToken;
use crate::scope::{ProjectionId, Scope, projection_id};

/// A link's identity: `tenant^endpoint^projection_id^authorization_epoch` in text.
///
/// `^` cannot occur in any of the four parts (ids and endpoints forbid it, the hashes are
/// base64url), so the text form is unambiguous.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct LinkKey {
    /// The tenant replicated.
    pub tenant: TenantId,
    /// The remote node.
    pub endpoint: Endpoint,
    /// The compared message set.
    pub projection_id: ProjectionId,
    /// The credentials' epoch.
    pub authorization_epoch: AuthorizationEpoch,
}

impl LinkKey {
    /// The key of the link that replicates `scope` of `tenant` with `endpoint` under
    /// `authorization`.
    pub fn new(
        tenant: TenantId,
        endpoint: Endpoint,
        scope: &Scope,
        authorization: &Authorization,
    ) -> Self {
        Self {
            projection_id: projection_id(&tenant, scope),
            authorization_epoch: authorization_epoch(authorization),
            tenant,
            endpoint,
        }
    }

    /// The endpoint-agnostic identity `tenant^projection_id^authorization_epoch`: the
    /// links of one identity registration, one per endpoint, share it.
    pub fn identity_key(&self) -> String {
        format!(
            "{}^{}^{}",
            self.tenant, self.projection_id, self.authorization_epoch
        )
    }
}

impl fmt::Display for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}^{}^{}^{}",
            self.tenant, self.endpoint, self.projection_id, self.authorization_epoch
        )
    }
}

impl FromStr for LinkKey {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('^').collect();
        let [tenant, endpoint, projection, epoch] = parts[..] else {
            return Err(ValidationError::Malformed {
                what: "link key",
                reason: "expected tenant^endpoint^projection^epoch",
            });
        };
        Ok(Self {
            tenant: tenant.parse()?,
            endpoint: endpoint.parse()?,
            projection_id: projection.parse()?,
            authorization_epoch: epoch.parse()?,
        })
    }
}

/// Where a link is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum LinkStatus {
    /// Just created; nothing opened yet.
    Initializing,
    /// Loaded from the ledger and being reopened. Every link that was not paused or
    /// terminal is put here on load, whatever status it had, so a restart never resumes
    /// from a stale status.
    Opening,
    /// Receiving events through a live subscription.
    Live,
    /// Reconciled by periodic polling only (the scope has no live subscription, or the
    /// engine runs in poll mode).
    Polling,
    /// A gap, overflow or failure was detected; reconciling.
    Repairing,
    /// Repair failed repeatedly; polling at a reduced rate until it heals.
    DegradedPoll,
    /// Paused by the application.
    Paused,
    /// A dependency outside the grant is missing; the link needs a new scope or
    /// authorization (a new link identity) and does nothing until then.
    TerminalIncomplete,
}

impl LinkStatus {
    /// Every status, for exhaustive tests and tables.
    pub const ALL: [LinkStatus; 8] = [
        LinkStatus::Initializing,
        LinkStatus::Opening,
        LinkStatus::Live,
        LinkStatus::Polling,
        LinkStatus::Repairing,
        LinkStatus::DegradedPoll,
        LinkStatus::Paused,
        LinkStatus::TerminalIncomplete,
    ];

    /// Whether the state machine allows `self -> to`.
    ///
    /// | from | to |
    /// |---|---|
    /// | initializing, opening | live, polling, repairing, paused, terminal_incomplete |
    /// | live, polling | repairing, paused, terminal_incomplete |
    /// | repairing | live, polling, repairing (retry), degraded_poll, paused, terminal_incomplete |
    /// | degraded_poll | repairing, paused, terminal_incomplete |
    /// | paused | opening |
    /// | terminal_incomplete | nothing |
    pub fn can_transition(self, to: LinkStatus) -> bool {
        use LinkStatus::*;
        match self {
            Initializing | Opening => {
                matches!(to, Live | Polling | Repairing | Paused | TerminalIncomplete)
            }
            Live | Polling => matches!(to, Repairing | Paused | TerminalIncomplete),
            Repairing => matches!(
                to,
                Live | Polling | Repairing | DegradedPoll | Paused | TerminalIncomplete
            ),
            DegradedPoll => matches!(to, Repairing | Paused | TerminalIncomplete),
            Paused => to == Opening,
            TerminalIncomplete => false,
        }
    }

    /// `to` when the transition is allowed, an error otherwise.
    pub fn transition(self, to: LinkStatus) -> Result<LinkStatus, TransitionError> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    /// The status a link loaded from the ledger starts in: `paused` and
    /// `terminal_incomplete` are kept (they need an explicit act to leave), every other
    /// status becomes `opening`.
    pub fn on_load(persisted: LinkStatus) -> LinkStatus {
        match persisted {
            LinkStatus::Paused | LinkStatus::TerminalIncomplete => persisted,
            _ => LinkStatus::Opening,
        }
    }

    /// Whether the status counts against health.
    pub fn is_unhealthy(self) -> bool {
        matches!(
            self,
            LinkStatus::Repairing | LinkStatus::DegradedPoll | LinkStatus::TerminalIncomplete
        )
    }

    /// The snake_case name used in logs, tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkStatus::Initializing => "initializing",
            LinkStatus::Opening => "opening",
            LinkStatus::Live => "live",
            LinkStatus::Polling => "polling",
            LinkStatus::Repairing => "repairing",
            LinkStatus::DegradedPoll => "degraded_poll",
            LinkStatus::Paused => "paused",
            LinkStatus::TerminalIncomplete => "terminal_incomplete",
        }
    }
}

impl fmt::Display for LinkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the remote of a link is reachable. Runtime knowledge: reset to `Unknown` on
/// every load.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub enum Connectivity {
    /// The last exchange succeeded.
    Online,
    /// The last exchange failed.
    Offline,
    /// Nothing is known yet.
    #[default]
    Unknown,
}

impl Connectivity {
    /// The lowercase name used in logs, tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Connectivity::Online => "online",
            Connectivity::Offline => "offline",
            Connectivity::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Connectivity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far one direction of a link has durably got.
///
/// `contiguous_applied` is the resume point: every delivery up to it has been durably
/// applied (pull) or acknowledged (push). It is moved only by the engine's delivery
/// tracker, never by position arithmetic, because positions are sparse under filters.
/// `received` is the highest token seen, for observability only.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct DirectionCheckpoint {
    /// Highest token seen.
    pub received: Option<ProgressToken>,
    /// Highest token with everything before it durably done.
    pub contiguous_applied: Option<ProgressToken>,
}

impl DirectionCheckpoint {
    /// Whether `token` belongs to the checkpoint's log and epoch (always true before the
    /// first commit). A token from another domain sends the link to repair.
    pub fn accepts_domain(&self, token: &ProgressToken) -> bool {
        self.contiguous_applied
            .is_none_or(|base| base.same_domain(token))
    }

    /// Records `token` as seen when it is newer than what was seen (or from a new domain
    /// after a reset).
    pub fn observe_received(&mut self, token: ProgressToken) {
        let newer = self
            .received
            .is_none_or(|r| token.compare(&r) != Some(std::cmp::Ordering::Less));
        if newer {
            self.received = Some(token);
        }
    }

    /// Moves the resume point to `token` (the caller has established contiguity).
    pub fn commit(&mut self, token: ProgressToken) {
        self.observe_received(token);
        self.contiguous_applied = Some(token);
    }

    /// Resets both fields to `token`, or clears them.
    pub fn reset(&mut self, token: Option<ProgressToken>) {
        self.received = token;
        self.contiguous_applied = token;
    }
}

/// Running totals of a link, for status and health.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct LinkCounters {
    /// Messages applied from the remote.
    pub messages_pulled: u64,
    /// Messages the remote acknowledged.
    pub messages_pushed: u64,
    /// Bytes received (messages and data).
    pub bytes_pulled: u64,
    /// Bytes sent (messages and data).
    pub bytes_pushed: u64,
    /// Repairs started.
    pub repairs: u64,
    /// Messages that failed to apply or push.
    pub failures: u64,
}

/// The durable state of one link.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LinkState {
    /// The link's identity.
    pub key: LinkKey,
    /// The canonical scope it replicates.
    pub scope: Scope,
    /// The credentials it uses.
    pub authorization: Authorization,
    /// Where it is in its life.
    pub status: LinkStatus,
    /// Whether the remote is reachable (reset on load).
    pub connectivity: Connectivity,
    /// Progress on the remote's log.
    pub pull: DirectionCheckpoint,
    /// Progress of the local log towards the remote.
    pub push: DirectionCheckpoint,
    /// Set when only a full reconcile can restore certainty (push retries exhausted, an
    /// unclassifiable message); cleared when a reconcile converges.
    pub needs_reconcile: bool,
    /// When the state was last saved, in ms since the Unix epoch.
    pub last_activity_ms: Option<u64>,
    /// When a sync of this link last completed, in ms since the Unix epoch.
    pub last_sync_ms: Option<u64>,
    /// Running totals.
    pub counters: LinkCounters,
}

impl LinkState {
    /// A new link in status `initializing`, with empty checkpoints.
    pub fn new(
        tenant: TenantId,
        endpoint: Endpoint,
        scope: Scope,
        authorization: Authorization,
    ) -> Self {
        Self {
            key: LinkKey::new(tenant, endpoint, &scope, &authorization),
            scope,
            authorization,
            status: LinkStatus::Initializing,
            connectivity: Connectivity::Unknown,
            pull: DirectionCheckpoint::default(),
            push: DirectionCheckpoint::default(),
            needs_reconcile: false,
            last_activity_ms: None,
            last_sync_ms: None,
            counters: LinkCounters::default(),
        }
    }

    /// The state as it must be used after loading it from the ledger: explicit opening
    /// status ([`LinkStatus::on_load`]) and unknown connectivity.
    #[must_use]
    pub fn on_load(mut self) -> Self {
        self.status = LinkStatus::on_load(self.status);
        self.connectivity = Connectivity::Unknown;
        self
    }

    /// Changes the status when the state machine allows it.
    pub fn set_status(&mut self, to: LinkStatus) -> Result<LinkStatus, TransitionError> {
        let from = self.status;
        self.status = from.transition(to)?;
        Ok(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LinkStatus::*;

    /// The allowed transitions, written out pair by pair as the reference table has them;
    /// the test checks `can_transition` against it for all 64 pairs.
    const ALLOWED: &[(LinkStatus, LinkStatus)] = &[
        (Initializing, Live),
        (Initializing, Polling),
        (Initializing, Repairing),
        (Initializing, Paused),
        (Initializing, TerminalIncomplete),
        (Opening, Live),
        (Opening, Polling),
        (Opening, Repairing),
        (Opening, Paused),
        (Opening, TerminalIncomplete),
        (Live, Repairing),
        (Live, Paused),
        (Live, TerminalIncomplete),
        (Polling, Repairing),
        (Polling, Paused),
        (Polling, TerminalIncomplete),
        (Repairing, Live),
        (Repairing, Polling),
        (Repairing, Repairing),
        (Repairing, DegradedPoll),
        (Repairing, Paused),
        (Repairing, TerminalIncomplete),
        (DegradedPoll, Repairing),
        (DegradedPoll, Paused),
        (DegradedPoll, TerminalIncomplete),
        (Paused, Opening),
    ];

    #[test]
    fn every_transition_is_allowed_or_refused_as_the_table_says() {
        for from in LinkStatus::ALL {
            for to in LinkStatus::ALL {
                let expected = ALLOWED.contains(&(from, to));
                assert_eq!(from.can_transition(to), expected, "{from} -> {to}");
                match from.transition(to) {
                    Ok(s) => {
                        assert!(expected);
                        assert_eq!(s, to);
                    }
                    Err(e) => {
                        assert!(!expected);
                        assert_eq!(e, TransitionError { from, to });
                    }
                }
            }
        }
    }

    #[test]
    fn terminal_is_final_and_nothing_enters_initializing() {
        for to in LinkStatus::ALL {
            assert!(!TerminalIncomplete.can_transition(to));
            assert!(!to.can_transition(Initializing));
        }
    }

    #[test]
    fn load_puts_links_in_an_explicit_opening_state() {
        for s in LinkStatus::ALL {
            let loaded = LinkStatus::on_load(s);
            match s {
                Paused | TerminalIncomplete => assert_eq!(loaded, s),
                _ => assert_eq!(loaded, Opening),
            }
        }
    }

    #[test]
    fn link_keys_round_trip_through_text() {
        let key = LinkKey::new(
            TenantId::new("did:ex:alice").unwrap(),
            Endpoint::new("http://127.0.0.1:7070").unwrap(),
            &Scope::Full,
            &Authorization::Owner,
        );
        let text = key.to_string();
        assert_eq!(text.matches('^').count(), 3);
        assert_eq!(text.parse::<LinkKey>().unwrap(), key);
        assert!("a^b".parse::<LinkKey>().is_err());
        assert!(key.identity_key().starts_with("did:ex:alice^"));
    }

    #[test]
    fn checkpoints_check_domains_and_only_move_received_forward() {
        use crate::ids::{Cid, StreamId};
        let tok = |stream: u8, epoch, position| ProgressToken {
            stream_id: StreamId::from_bytes([stream; 16]),
            epoch,
            position,
            cid: Cid::from_bytes([0; 32]),
        };
        let mut cp = DirectionCheckpoint::default();
        assert!(cp.accepts_domain(&tok(1, 1, 5)));
        cp.commit(tok(1, 1, 5));
        assert!(cp.accepts_domain(&tok(1, 1, 9)));
        assert!(!cp.accepts_domain(&tok(2, 1, 9)));
        assert!(!cp.accepts_domain(&tok(1, 2, 9)));
        cp.observe_received(tok(1, 1, 3));
        assert_eq!(cp.received, Some(tok(1, 1, 5)));
        cp.reset(None);
        assert_eq!(cp, DirectionCheckpoint::default());
    }
}
