//! The deterministic merge rule, as pure functions.
//!
//! For each record a store retains at most two versions:
//!
//! - the **initial write**: among writes without `prev`, the least by `(timestamp, cid)`
//!   (two replicas that write the same natural key both create an initial write; the
//!   smaller one is the record's initial write everywhere);
//! - the **winner**: among all versions, writes and deletes, the greatest by
//!   `(timestamp, cid)`. A delete therefore wins over every write older than it, and a
//!   record is deleted exactly when its winner is a delete.
//!
//! Both are a minimum and a maximum over the set of versions seen, so the retained set is
//! the same whatever order the versions arrive in ([`merge_one`] folded over any
//! permutation equals [`merge_all`]). A version that is neither is pruned, and when it
//! arrives again it is answered `Superseded`, which counts as success.
//!
//! Versions that share a `prev` (two edits, or an edit and a delete) were written
//! concurrently: a **conflict**. The rule still
//! picks the same winner on every replica; the conflict is reported so an application can
//! resolve it with a new write. Which conflicts a replica reports depends on what it
//! retained when each version arrived (a loser pruned before its sibling arrived cannot be
//! compared), so reports are advice, never state.

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::ids::Cid;
use crate::message::Message;

/// Whether a version writes or deletes its record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum VersionKind {
    /// A `Write`.
    Write,
    /// A `Delete`.
    Delete,
}

/// What the merge rule needs to know about one version of a record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Version {
    /// The version's message id.
    pub cid: Cid,
    /// The version's timestamp.
    pub timestamp: Hlc,
    /// The version it was based on.
    pub prev: Option<Cid>,
    /// Write or delete.
    pub kind: VersionKind,
}

impl Version {
    /// The version a `Write` or `Delete` message represents; `None` for a `Configure`.
    pub fn of(message: &Message) -> Option<Version> {
        let (prev, kind) = match message {
            Message::Configure(_) => return None,
            Message::Write(w) => (w.prev, VersionKind::Write),
            Message::Delete(d) => (d.prev, VersionKind::Delete),
        };
        Some(Version {
            cid: message.cid(),
            timestamp: message.timestamp(),
            prev,
            kind,
        })
    }

    /// The total order of the merge rule.
    pub fn order_key(&self) -> (Hlc, Cid) {
        (self.timestamp, self.cid)
    }

    /// Whether this version can be its record's initial write.
    pub fn is_initial_candidate(&self) -> bool {
        self.kind == VersionKind::Write && self.prev.is_none()
    }
}

/// The versions a store retains for one record.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RecordHead {
    /// The record's initial write; `None` only while no initial write has arrived (a
    /// store that checks dependencies never holds such a head).
    pub initial: Option<Version>,
    /// The greatest version by `(timestamp, cid)`.
    pub winner: Version,
}

impl RecordHead {
    /// Whether the record is deleted (its winner is a delete).
    pub fn is_deleted(&self) -> bool {
        self.winner.kind == VersionKind::Delete
    }

    /// The retained message ids: the initial write and the winner, sorted, without
    /// duplicates.
    pub fn retained(&self) -> Vec<Cid> {
        let mut cids = vec![self.winner.cid];
        if let Some(initial) = self.initial
            && initial.cid != self.winner.cid
        {
            cids.push(initial.cid);
        }
        cids.sort();
        cids
    }
}

/// Concurrent versions of one record (same `prev`) and which of them wins.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Conflict {
    /// The version the merge rule picks.
    pub winner: Cid,
    /// The concurrent versions that lost.
    pub losers: Vec<Cid>,
}

/// What applying one version to a record does.
// A decision lives for one call and is matched at once; boxing the head would cost an
// allocation per applied message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq, Debug)]
#[must_use]
pub enum MergeDecision {
    /// The version is already retained.
    Duplicate,
    /// The version is neither the initial write nor the winner: nothing changes.
    Superseded {
        /// Set when the version is concurrent with the retained winner.
        conflict: Option<Conflict>,
    },
    /// The version becomes the initial write, the winner, or both.
    Accepted {
        /// The record's new head.
        head: RecordHead,
        /// Previously retained versions that are no longer retained.
        pruned: Vec<Cid>,
        /// Set when the version is concurrent with the previous winner.
        conflict: Option<Conflict>,
    },
}

/// Applies one version to a record whose current head is `head` (`None` for a record
/// the store has not seen).
pub fn merge_one(head: Option<&RecordHead>, incoming: &Version) -> MergeDecision {
    let Some(head) = head else {
        return MergeDecision::Accepted {
            head: RecordHead {
                initial: incoming.is_initial_candidate().then_some(*incoming),
                winner: *incoming,
            },
            pruned: Vec::new(),
            conflict: None,
        };
    };
    let old_retained = head.retained();
    if old_retained.contains(&incoming.cid) {
        return MergeDecision::Duplicate;
    }
    let initial = match head.initial {
        Some(current)
            if !incoming.is_initial_candidate() || current.order_key() < incoming.order_key() =>
        {
            Some(current)
        }
        None if !incoming.is_initial_candidate() => None,
        _ => Some(*incoming),
    };
    let winner = if incoming.order_key() > head.winner.order_key() {
        *incoming
    } else {
        head.winner
    };
    let conflict = concurrent(&head.winner, incoming);
    let new_head = RecordHead { initial, winner };
    if new_head == *head {
        return MergeDecision::Superseded { conflict };
    }
    let new_retained = new_head.retained();
    let pruned = old_retained
        .into_iter()
        .filter(|cid| !new_retained.contains(cid))
        .collect();
    MergeDecision::Accepted {
        head: new_head,
        pruned,
        conflict,
    }
}

/// The head of a record holding `versions`, in any order; `None` when there are none.
pub fn merge_all<'a>(versions: impl IntoIterator<Item = &'a Version>) -> Option<RecordHead> {
    let mut head: Option<RecordHead> = None;
    for v in versions {
        if let MergeDecision::Accepted { head: new, .. } = merge_one(head.as_ref(), v) {
            head = Some(new);
        }
    }
    head
}

/// All conflicts among `versions`: groups of two or more versions (writes or deletes)
/// sharing a `prev`, each with its greatest version as winner. Sorted by winner.
pub fn conflicts(versions: &[Version]) -> Vec<Conflict> {
    let mut writes: Vec<&Version> = versions.iter().collect();
    writes.sort_by_key(|v| (v.prev, v.order_key()));
    writes.dedup_by_key(|v| v.cid);
    let mut out = Vec::new();
    for group in writes.chunk_by(|a, b| a.prev == b.prev) {
        if let Some((winner, losers)) = group.split_last()
            && !losers.is_empty()
        {
            out.push(Conflict {
                winner: winner.cid,
                losers: losers.iter().map(|v| v.cid).collect(),
            });
        }
    }
    out.sort_by_key(|c| c.winner);
    out
}

/// Two versions based on the same version (an edit against an edit, or an edit against
/// a delete) were made without seeing each other. Initial writes (no `prev`) of one
/// natural key count too.
fn concurrent(a: &Version, b: &Version) -> Option<Conflict> {
    if a.prev != b.prev || a.cid == b.cid {
        return None;
    }
    let (winner, loser) = if a.order_key() > b.order_key() {
        (a, b)
    } else {
        (b, a)
    };
    Some(Conflict {
        winner: winner.cid,
        losers: vec![loser.cid],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::NodeId;

    fn v(n: u8, wall_ms: u64, prev: Option<u8>, kind: VersionKind) -> Version {
        Version {
            cid: Cid::from_bytes([n; 32]),
            timestamp: Hlc {
                wall_ms,
                counter: 0,
                node: NodeId(1),
            },
            prev: prev.map(|p| Cid::from_bytes([p; 32])),
            kind,
        }
    }
    use VersionKind::{Delete, Write};

    #[test]
    fn later_write_wins_and_prunes_the_previous_winner() {
        let a = v(1, 10, None, Write);
        let b = v(2, 20, Some(1), Write);
        let c = v(3, 30, Some(2), Write);
        let head = merge_all([&a, &b]).unwrap();
        assert_eq!(head.retained(), vec![a.cid, b.cid]);
        let MergeDecision::Accepted {
            head,
            pruned,
            conflict,
        } = merge_one(Some(&head), &c)
        else {
            panic!("c is newer and must win")
        };
        assert_eq!(pruned, vec![b.cid]);
        assert_eq!(conflict, None);
        assert_eq!(head.initial, Some(a));
        assert_eq!(head.winner, c);
        // The pruned version arriving again is superseded; a retained one is a duplicate.
        assert_eq!(
            merge_one(Some(&head), &b),
            MergeDecision::Superseded { conflict: None }
        );
        assert_eq!(merge_one(Some(&head), &a), MergeDecision::Duplicate);
    }

    #[test]
    fn a_delete_wins_over_older_writes_only() {
        let a = v(1, 10, None, Write);
        let d = v(2, 20, Some(1), Delete);
        let old = v(3, 15, Some(1), Write);
        let head = merge_all([&a, &d, &old]).unwrap();
        assert!(head.is_deleted());
        assert_eq!(head.winner, d);
        let newer = v(4, 25, Some(2), Write);
        assert!(!merge_all([&a, &d, &newer]).unwrap().is_deleted());
    }

    #[test]
    fn an_edit_and_a_delete_of_the_same_version_are_a_conflict() {
        let a = v(1, 10, None, Write);
        let d = v(2, 20, Some(1), Delete);
        let edit = v(3, 30, Some(1), Write);
        let head = merge_all([&a, &d]).unwrap();
        let MergeDecision::Accepted { conflict, .. } = merge_one(Some(&head), &edit) else {
            panic!("the later edit wins")
        };
        let expected = Conflict {
            winner: edit.cid,
            losers: vec![d.cid],
        };
        assert_eq!(conflict.as_ref(), Some(&expected));
        assert_eq!(conflicts(&[a, d, edit]), vec![expected]);
        // A delete based on the edit is not concurrent with it.
        let later = v(4, 40, Some(3), Delete);
        let head = merge_all([&a, &edit]).unwrap();
        assert!(matches!(
            merge_one(Some(&head), &later),
            MergeDecision::Accepted { conflict: None, .. }
        ));
    }

    #[test]
    fn concurrent_writes_are_a_conflict_with_a_deterministic_winner() {
        let a = v(1, 10, None, Write);
        let x = v(2, 20, Some(1), Write);
        let y = v(3, 21, Some(1), Write);
        let head = merge_all([&a, &x]).unwrap();
        let MergeDecision::Accepted { conflict, .. } = merge_one(Some(&head), &y) else {
            panic!("y is newer")
        };
        assert_eq!(
            conflict,
            Some(Conflict {
                winner: y.cid,
                losers: vec![x.cid]
            })
        );
        let head = merge_all([&a, &y]).unwrap();
        assert_eq!(
            merge_one(Some(&head), &x),
            MergeDecision::Superseded {
                conflict: Some(Conflict {
                    winner: y.cid,
                    losers: vec![x.cid]
                })
            }
        );
        assert_eq!(
            conflicts(&[a, x, y]),
            vec![Conflict {
                winner: y.cid,
                losers: vec![x.cid]
            }]
        );
    }

    #[test]
    fn two_initial_writes_keep_the_smaller_as_initial() {
        let a = v(1, 10, None, Write);
        let b = v(2, 5, None, Write);
        let head = merge_all([&a, &b]).unwrap();
        assert_eq!(head.initial, Some(b));
        assert_eq!(head.winner, a);
        let head = merge_all([&b, &a]).unwrap();
        assert_eq!(head.initial, Some(b));
        assert_eq!(head.winner, a);
    }
}
