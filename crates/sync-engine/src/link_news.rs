//! What an operation on a link reports, and the one place where those reports change the
//! link's durable state.
//!
//! A link's [`LinkState`] has one owner at a time. While a live driver runs the link, the
//! owner is its [`LinkMachine`](crate::machine::LinkMachine): catch-up, push and reconcile
//! never write the link record, they report [`LinkNews`] and the machine applies it to
//! the state it holds, persists it and announces it, in that order. When no driver runs
//! the link (a one-shot [`sync_once`](crate::Engine::sync_once), or an operation called
//! directly), the engine applies the same news to the stored state under one lock.
//! Either way the change is made by [`apply`], so a link's status, checkpoints and
//! counters follow the same rules whatever drove it.
//!
//! Checkpoint news carries the resume point the operation started from and is applied
//! only when the state still has it: an operation that a repair overtook (the repair
//! reset the checkpoint meanwhile) cannot move the checkpoint back. Its traffic still
//! counts.

use sync_types::{
    Connectivity, Direction, DirectionCheckpoint, LinkState, LinkStatus, ProgressToken,
    ReconcileReason, SyncEvent,
};

use std::sync::Arc;

use crate::sync::Traffic;

/// Where an operation's news goes when a live driver owns the link: called with the
/// news and the wall-clock time it happened at (ms since the Unix epoch); answers whether
/// the owner took it (`false` once the driver is gone: the engine then applies the news
/// itself and forgets the owner).
pub type NewsSink = Arc<dyn Fn(LinkNews, u64) -> bool + Send + Sync>;

/// What happened on a link, as an operation reports it to the link's owner.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum LinkNews {
    /// The checkpoint of `direction` moved from `from` (the resume point the operation
    /// read) to `to`, over durably settled work, and `traffic` moved with it.
    Progress {
        /// Pull or push.
        direction: Direction,
        /// The resume point the operation started this step from.
        from: Option<ProgressToken>,
        /// The new checkpoint.
        to: DirectionCheckpoint,
        /// Messages and bytes this step moved.
        traffic: Traffic,
    },
    /// Messages and bytes moved outside the checkpoints (a reconcile's diff fetches and
    /// pushes).
    Moved {
        /// Received and applied from the remote.
        pulled: Traffic,
        /// Sent to the remote.
        pushed: Traffic,
    },
    /// Only a reconcile can restore certainty now (`None`: no event is announced, the
    /// caller reports the reason itself).
    NeedsReconcile(Option<ReconcileReason>),
    /// The link can never complete (a dependency outside its scope, expired grants).
    Terminal,
    /// The roots matched: everything up to `local_head` (the local log head read before
    /// the local root) is on the remote.
    Converged {
        /// The local log head the reconcile's local root covers.
        local_head: Option<ProgressToken>,
    },
    /// The endpoint was reached, or could not be.
    Connectivity(Connectivity),
    /// A one-shot sync converged: a link it alone drives leaves `initializing`,
    /// `opening`, `repairing` or `degraded_poll` for `polling`
    /// (`link_status`).
    SyncSettled,
}

/// What [`apply`] changed: whether the state must be persisted, and the events to
/// announce after it is.
#[derive(Debug, Default)]
#[must_use]
pub struct Applied {
    /// The durable state changed.
    pub persist: bool,
    /// Announcements, in order, after the state is persisted.
    pub events: Vec<SyncEvent>,
}

/// Applies `news` to `state` at `now_ms`. Pure: the caller persists and announces.
pub fn apply(state: &mut LinkState, news: &LinkNews, now_ms: u64) -> Applied {
    let mut out = Applied::default();
    let link = state.key.clone();
    match news {
        LinkNews::Progress {
            direction,
            from,
            to,
            traffic,
        } => {
            let (cp, messages, bytes) = match direction {
                Direction::Pull => (
                    &mut state.pull,
                    &mut state.counters.messages_pulled,
                    &mut state.counters.bytes_pulled,
                ),
                Direction::Push => (
                    &mut state.push,
                    &mut state.counters.messages_pushed,
                    &mut state.counters.bytes_pushed,
                ),
            };
            *messages += traffic.messages;
            *bytes += traffic.bytes;
            let moved = cp.contiguous_applied == *from && cp != to;
            if moved {
                *cp = *to;
            }
            if moved || traffic.messages > 0 || traffic.bytes > 0 {
                state.last_activity_ms = Some(now_ms);
                out.persist = true;
            }
            if moved && let Some(token) = to.contiguous_applied {
                out.events.push(SyncEvent::CheckpointAdvanced {
                    link,
                    direction: *direction,
                    token,
                });
            }
        }
        LinkNews::Moved { pulled, pushed } => {
            let c = &mut state.counters;
            c.messages_pulled += pulled.messages;
            c.bytes_pulled += pulled.bytes;
            c.messages_pushed += pushed.messages;
            c.bytes_pushed += pushed.bytes;
            if *pulled != Traffic::default() || *pushed != Traffic::default() {
                state.last_activity_ms = Some(now_ms);
                out.persist = true;
            }
        }
        LinkNews::NeedsReconcile(reason) => {
            if !state.needs_reconcile {
                state.needs_reconcile = true;
                out.persist = true;
                if let Some(reason) = reason {
                    out.events.push(SyncEvent::ReconcileNeeded {
                        link,
                        reason: *reason,
                    });
                }
            }
        }
        LinkNews::Terminal => {
            let from = state.status;
            if from != LinkStatus::TerminalIncomplete
                && state.set_status(LinkStatus::TerminalIncomplete).is_ok()
            {
                tracing::warn!(link = %link, "link is terminal_incomplete");
                out.persist = true;
                out.events.push(SyncEvent::LinkStatusChanged {
                    link,
                    from,
                    to: LinkStatus::TerminalIncomplete,
                });
            }
        }
        LinkNews::Converged { local_head } => {
            state.needs_reconcile = false;
            state.last_sync_ms = Some(now_ms);
            state.last_activity_ms = Some(now_ms);
            out.persist = true;
            if let Some(head) = *local_head {
                let behind = state
                    .push
                    .contiguous_applied
                    .is_none_or(|cp| head.compare(&cp) == Some(std::cmp::Ordering::Greater));
                if behind {
                    state.push.commit(head);
                    out.events.push(SyncEvent::CheckpointAdvanced {
                        link: link.clone(),
                        direction: Direction::Push,
                        token: head,
                    });
                }
            }
            out.events.push(SyncEvent::ReconcileCompleted { link });
        }
        LinkNews::Connectivity(to) => {
            let from = state.connectivity;
            if *to != Connectivity::Unknown && from != *to {
                state.connectivity = *to;
                out.persist = true;
                out.events.push(SyncEvent::ConnectivityChanged {
                    link,
                    from,
                    to: *to,
                });
            }
        }
        LinkNews::SyncSettled => {
            for &to in crate::link_status::after_converged_sync(state.status) {
                match state.set_status(to) {
                    Ok(from) => {
                        out.persist = true;
                        out.events.push(SyncEvent::LinkStatusChanged {
                            link: link.clone(),
                            from,
                            to,
                        });
                    }
                    Err(_) => break,
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_types::{Authorization, Endpoint, LinkState, Scope, TenantId};

    fn state() -> LinkState {
        LinkState::new(
            TenantId::new("did:example:t").unwrap(),
            Endpoint::new("http://node.example:1").unwrap(),
            Scope::Full,
            Authorization::Owner,
        )
    }

    fn token(position: u8) -> ProgressToken {
        ProgressToken {
            stream_id: sync_types::StreamId::from_bytes([7; 16]),
            epoch: 1,
            position: u64::from(position),
            cid: sync_types::Cid::from_bytes([position; 32]),
        }
    }

    fn progress(from: Option<ProgressToken>, to: ProgressToken, messages: u64) -> LinkNews {
        let mut cp = DirectionCheckpoint::default();
        cp.commit(to);
        LinkNews::Progress {
            direction: Direction::Pull,
            from,
            to: cp,
            traffic: Traffic {
                messages,
                bytes: messages * 10,
                ..Traffic::default()
            },
        }
    }

    #[test]
    fn progress_moves_the_checkpoint_only_from_where_the_operation_started() {
        let mut s = state();
        let (t1, t2, t3) = (token(1), token(2), token(3));
        let a = apply(&mut s, &progress(None, t2, 2), 5);
        assert!(a.persist);
        assert_eq!(s.pull.contiguous_applied, Some(t2));
        assert_eq!(a.events.len(), 1, "the advance is announced");
        // An operation that started from t1 was overtaken: the checkpoint stays, the
        // traffic counts.
        let b = apply(&mut s, &progress(Some(t1), t3, 1), 6);
        assert_eq!(s.pull.contiguous_applied, Some(t2));
        assert!(b.events.is_empty());
        assert_eq!(s.counters.messages_pulled, 3);
        assert_eq!(s.counters.bytes_pulled, 30);
        assert_eq!(s.last_activity_ms, Some(6));
    }

    #[test]
    fn convergence_clears_the_flag_and_moves_the_push_checkpoint_up_only() {
        let mut s = state();
        let (t1, t2) = (token(1), token(2));
        let _ = apply(&mut s, &LinkNews::NeedsReconcile(None), 1);
        assert!(s.needs_reconcile);
        s.push.commit(t2);
        let a = apply(
            &mut s,
            &LinkNews::Converged {
                local_head: Some(t1),
            },
            9,
        );
        assert!(!s.needs_reconcile);
        assert_eq!(s.last_sync_ms, Some(9));
        assert_eq!(s.push.contiguous_applied, Some(t2), "never moved back");
        assert_eq!(a.events.len(), 1, "only ReconcileCompleted");
    }

    #[test]
    fn terminal_is_entered_once_and_settling_leaves_it_alone() {
        let mut s = state();
        assert_eq!(apply(&mut s, &LinkNews::Terminal, 1).events.len(), 1);
        assert_eq!(s.status, LinkStatus::TerminalIncomplete);
        let again = apply(&mut s, &LinkNews::Terminal, 2);
        assert!(!again.persist && again.events.is_empty());
        let settled = apply(&mut s, &LinkNews::SyncSettled, 3);
        assert!(!settled.persist);
        assert_eq!(s.status, LinkStatus::TerminalIncomplete);
    }

    #[test]
    fn a_converged_one_shot_sync_leaves_a_new_link_polling() {
        let mut s = state();
        assert_eq!(s.status, LinkStatus::Initializing);
        let a = apply(&mut s, &LinkNews::SyncSettled, 1);
        assert!(a.persist);
        assert_eq!(s.status, LinkStatus::Polling);
    }

    #[test]
    fn connectivity_is_saved_and_announced_only_when_it_changes() {
        let mut s = state();
        let a = apply(&mut s, &LinkNews::Connectivity(Connectivity::Online), 1);
        assert!(a.persist && a.events.len() == 1);
        let b = apply(&mut s, &LinkNews::Connectivity(Connectivity::Online), 2);
        assert!(!b.persist && b.events.is_empty());
        let c = apply(&mut s, &LinkNews::Connectivity(Connectivity::Unknown), 3);
        assert!(!c.persist);
        assert_eq!(s.connectivity, Connectivity::Online);
    }
}
