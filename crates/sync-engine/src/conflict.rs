//! Conflict policies: what a replica does when concurrent versions of a record meet.
//!
//! The merge rule ([`sync_types::merge`]) always picks the same winner everywhere. A
//! policy other than [`ConflictPolicy::LastWriterWins`] acts after a remote batch is
//! committed, by writing a new version on top of that winner (its `prev` is the winner
//! and its timestamp orders after the winner's, see `Replica::stamp_after`), so every
//! replica converges on the resolution once it has travelled.
//!
//! "Local" means this replica: versions whose timestamp carries the replica's node id,
//! which is created once and stored in the ledger, so it means the same device after
//! a restart.
//!
//! A resolution is skipped when it would write what the winner already says (the same
//! kind and payload). Without that rule two replicas resolving the same conflict the
//! same way would write two concurrent, equal resolutions, conflict again, and never
//! stop. Replicas running *opposite* policies on one record (prefer-local on one,
//! prefer-remote on the other) can still keep rewriting each other; pick one policy
//! per protocol for every replica of a tenant.
//!
//! Every conflict is also reported as [`SyncEvent::Conflict`] with its winner and
//! losers, whatever the policy, for local and remote writes alike.

use std::collections::HashMap;
use std::sync::Arc;

use sync_types::merge::Conflict;
use sync_types::{Cid, Delete, Message, ProtocolName, RecordId, SyncEvent, TenantId, Write};

use crate::error::Result;
use crate::replica::{MessageWithData, Origin, Replica};

/// A conflict handed to a [`ConflictPolicy::Callback`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConflictInfo {
    /// The tenant.
    pub tenant: TenantId,
    /// The record.
    pub record_id: RecordId,
    /// The version the merge rule picked.
    pub winner: Cid,
    /// The winner's payload, when it is inline (a blob is never loaded for a callback).
    pub winner_data: Option<Vec<u8>>,
    /// The concurrent versions that lost, with their inline payloads when known.
    pub losers: Vec<(Cid, Option<Vec<u8>>)>,
}

/// What a callback decides.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Resolution {
    /// Keep the merge rule's winner.
    KeepWinner,
    /// Write a new version carrying this payload (`None`: the winner's payload again,
    /// which changes nothing and is skipped).
    Write(Option<Vec<u8>>),
}

/// How the replica resolves concurrent versions of a record. Every policy converges: the
/// merge rule picks the same winner everywhere, and the non-default policies act by
/// writing a new version on top of it.
#[derive(Clone, Default)]
pub enum ConflictPolicy {
    /// Keep the merge rule's winner (the default).
    #[default]
    LastWriterWins,
    /// When a remote version beat a local one, write the local version again (a
    /// write's payload, or a delete).
    PreferLocal,
    /// When a local version beat a remote one, write the remote version again.
    PreferRemote,
    /// Ask the application.
    Callback(Arc<dyn Fn(&ConflictInfo) -> Resolution + Send + Sync>),
}

impl std::fmt::Debug for ConflictPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConflictPolicy::LastWriterWins => "LastWriterWins",
            ConflictPolicy::PreferLocal => "PreferLocal",
            ConflictPolicy::PreferRemote => "PreferRemote",
            ConflictPolicy::Callback(_) => "Callback",
        })
    }
}

/// The policy of every protocol: a default and per-protocol overrides.
#[derive(Clone, Debug, Default)]
pub(crate) struct Policies {
    pub(crate) default: ConflictPolicy,
    pub(crate) by_protocol: HashMap<ProtocolName, ConflictPolicy>,
}

impl Policies {
    pub(crate) fn of(&self, protocol: &ProtocolName) -> &ConflictPolicy {
        self.by_protocol.get(protocol).unwrap_or(&self.default)
    }

    /// Whether any policy rewrites losers (then their payloads are kept before a commit
    /// prunes them).
    pub(crate) fn any_resolving(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.by_protocol.values())
            .any(|p| !matches!(p, ConflictPolicy::LastWriterWins))
    }
}

impl Replica {
    /// Reports each conflict as an event and, for remote batches, applies the policy of
    /// the record's protocol. `known` holds versions (with payloads) read before the
    /// commit that may have pruned them.
    pub(crate) fn resolve_conflicts(
        &self,
        tenant: &TenantId,
        known: &HashMap<Cid, MessageWithData>,
        conflicts: &[(Option<RecordId>, Conflict)],
        origin: &Origin,
    ) -> Result<()> {
        if conflicts.is_empty() {
            return Ok(());
        }
        let policies = self.policies();
        let local = self.node_id();
        for (record, conflict) in conflicts {
            let Some(record_id) = *record else { continue };
            self.emit(SyncEvent::Conflict {
                tenant: tenant.clone(),
                record: record_id,
                winner: conflict.winner,
                losers: conflict.losers.clone(),
            });
            if *origin == Origin::Local {
                continue;
            }
            let find = |cid: &Cid| -> Result<Option<MessageWithData>> {
                if let Some(found) = known.get(cid) {
                    return Ok(Some(found.clone()));
                }
                Ok(self
                    .ledger()
                    .get_message(tenant, cid)?
                    .map(|s| (s.message, s.data)))
            };
            let Some((winner, winner_data)) = find(&conflict.winner)? else {
                continue;
            };
            // The winner moved on since this conflict (a later version of the same
            // batch, or a resolution already written): resolve only against the current
            // winner, or two resolutions would race.
            match self.ledger().record_head(tenant, &record_id)? {
                Some(head) if head.winner.cid == conflict.winner => {}
                _ => continue,
            }
            let mut losers = Vec::new();
            for cid in &conflict.losers {
                if let Some(found) = find(cid)? {
                    losers.push(found);
                }
            }
            let pick = |want_local: bool| {
                losers
                    .iter()
                    .filter(|(m, _)| (m.timestamp().node == local) == want_local)
                    .max_by_key(|(m, _)| (m.timestamp(), m.cid()))
                    .cloned()
            };
            let winner_is_local = winner.timestamp().node == local;
            let rewrite = match policies.of(winner.protocol()) {
                ConflictPolicy::LastWriterWins => None,
                ConflictPolicy::PreferLocal if !winner_is_local => pick(true),
                ConflictPolicy::PreferRemote if winner_is_local => pick(false),
                ConflictPolicy::PreferLocal | ConflictPolicy::PreferRemote => None,
                ConflictPolicy::Callback(f) => {
                    let info = ConflictInfo {
                        tenant: tenant.clone(),
                        record_id,
                        winner: conflict.winner,
                        winner_data: winner_data.clone(),
                        losers: losers.iter().map(|(m, d)| (m.cid(), d.clone())).collect(),
                    };
                    match f(&info) {
                        Resolution::KeepWinner | Resolution::Write(None) => None,
                        Resolution::Write(Some(data)) => {
                            // The record's fields come from any write among the versions.
                            let base = std::iter::once(&winner)
                                .chain(losers.iter().map(|(m, _)| m))
                                .find(|m| matches!(m, Message::Write(_)))
                                .cloned();
                            base.map(|m| (m, Some(data)))
                        }
                    }
                }
            };
            let Some((source, data)) = rewrite else {
                continue;
            };
            let Some((resolution, inline)) =
                self.resolution(conflict.winner, &winner, source, data)?
            else {
                continue;
            };
            self.apply_locked(tenant, vec![(resolution, inline)], &Origin::Local)?;
        }
        Ok(())
    }

    /// The version that writes `source` again on top of `winner` (with `data` as its
    /// payload when given), or `None` when that would change nothing or the payload is
    /// unknown.
    fn resolution(
        &self,
        winner_cid: Cid,
        winner: &Message,
        source: Message,
        data: Option<Vec<u8>>,
    ) -> Result<Option<MessageWithData>> {
        let timestamp = self.stamp_after(Some(winner.timestamp()));
        Ok(Some(match source {
            Message::Delete(d) => {
                if matches!(winner, Message::Delete(_)) {
                    return Ok(None);
                }
                let resolution = Message::Delete(Delete {
                    prev: Some(winner_cid),
                    timestamp,
                    ..d
                });
                (resolution, None)
            }
            Message::Write(src) => {
                // A blob is written again by reference, never loaded into memory.
                let (data_ref, inline) = match data {
                    Some(d) => self.stage_data(Some(d))?,
                    None => match src.data {
                        Some(r) if r.is_inline() => return Ok(None), // payload unknown
                        Some(r) => (Some(r), None),
                        None => (None, None),
                    },
                };
                if let Message::Write(w) = winner
                    && w.data == data_ref
                {
                    return Ok(None);
                }
                let resolution = Message::Write(Write {
                    prev: Some(winner_cid),
                    timestamp,
                    data: data_ref,
                    ..src
                });
                (resolution, inline)
            }
            Message::Configure(_) => return Ok(None),
        }))
    }
}
