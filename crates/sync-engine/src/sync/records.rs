//! What the engine records about a link: dead letters, the reconcile flag, checkpoints
//! with their traffic, the scope gate's refusals and the terminal status.

use sync_types::{
    DeadLetter, DeadLetterCategory, Direction, DirectionCheckpoint, LinkKey, LinkState, LinkStatus,
    Message, ReconcileReason, ScopeClass, SyncEvent,
};

use crate::closure::{CLOSURE_FORBIDDEN_CODE, Forbidden};
use crate::error::{Error, Result};

use super::{Connector, Engine, Traffic};

impl<C: Connector> Engine<C> {
    pub(super) fn record_dead_letter(
        &self,
        key: &LinkKey,
        message: &Message,
        category: DeadLetterCategory,
        error_code: Option<String>,
        error: String,
    ) -> Result<()> {
        let letter = DeadLetter {
            cid: message.cid(),
            tenant: key.tenant.clone(),
            endpoint: key.endpoint.clone(),
            protocol: Some(message.protocol().clone()),
            category,
            error_code,
            error,
            attempts: 0,
            failed_at_ms: self.now_ms(),
        };
        let stored = self
            .ledger()
            .dead_letters()
            .record(letter, self.durability())?;
        self.replica().emit(SyncEvent::DeadLetterRecorded {
            dead_letter: stored,
        });
        Ok(())
    }

    pub(super) fn mark_needs_reconcile(
        &self,
        key: &LinkKey,
        reason: Option<ReconcileReason>,
    ) -> Result<()> {
        let before = self.load(key)?.needs_reconcile;
        if !before {
            self.ledger()
                .links()
                .set_needs_reconcile(key, true, self.durability())?;
            if let Some(reason) = reason {
                self.replica().emit(SyncEvent::ReconcileNeeded {
                    link: key.clone(),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Saves a checkpoint with the traffic it covers, then announces it.
    pub(super) fn save_checkpoint(
        &self,
        key: &LinkKey,
        direction: Direction,
        checkpoint: DirectionCheckpoint,
        traffic: Traffic,
    ) -> Result<()> {
        let now = self.now_ms();
        self.ledger().links().update(key, self.durability(), |s| {
            match direction {
                Direction::Pull => {
                    s.pull = checkpoint;
                    s.counters.messages_pulled += traffic.messages;
                    s.counters.bytes_pulled += traffic.bytes;
                }
                Direction::Push => {
                    s.push = checkpoint;
                    s.counters.messages_pushed += traffic.messages;
                    s.counters.bytes_pushed += traffic.bytes;
                }
            }
            s.last_activity_ms = Some(now);
        })?;
        if let Some(token) = checkpoint.contiguous_applied {
            self.replica().emit(SyncEvent::CheckpointAdvanced {
                link: key.clone(),
                direction,
                token,
            });
        }
        Ok(())
    }

    pub(super) fn progress(&self, key: &LinkKey, direction: Direction, t: Traffic) {
        self.replica().emit(SyncEvent::SyncProgress {
            link: key.clone(),
            direction,
            messages: t.messages,
            bytes: t.bytes,
        });
    }

    /// Records a message the scope gate refused (`pull_scope_rejected`, code
    /// `out_of_scope` or `unknown`); an unknown one also marks the link for a reconcile,
    /// which retries it once its record can be classified.
    pub(super) fn scope_rejected(
        &self,
        key: &LinkKey,
        message: &Message,
        class: ScopeClass,
    ) -> Result<()> {
        let (code, error) = match class {
            ScopeClass::Unknown => (
                "unknown",
                "pulled message cannot be classified against the link's scope (a delete whose record is not held); not applied",
            ),
            _ => (
                "out_of_scope",
                "pulled message lies outside the link's scope",
            ),
        };
        self.record_dead_letter(
            key,
            message,
            DeadLetterCategory::PullScopeRejected,
            Some(code.into()),
            error.into(),
        )?;
        if class == ScopeClass::Unknown {
            self.mark_needs_reconcile(key, Some(ReconcileReason::ScopeUnclassified))?;
        }
        Ok(())
    }

    /// The scope gate of one live event of `link` (see [`crate::closure`]): a refused
    /// one (out of scope, or unknown: fails closed) is recorded as a
    /// `pull_scope_rejected` dead letter.
    pub(crate) fn gate_live(&self, link: &LinkState, message: &Message) -> Result<ScopeClass> {
        let class =
            self.replica()
                .classify(&link.key.tenant, &link.scope, Direction::Pull, message)?;
        if class != ScopeClass::InScope {
            self.scope_rejected(&link.key, message, class)?;
        }
        Ok(class)
    }

    /// Puts the link in `terminal_incomplete` (when the status table allows it from
    /// where it is), persisted, then announced.
    pub(super) fn set_terminal(&self, key: &LinkKey) -> Result<()> {
        let Some(state) = self.ledger().links().get(key)? else {
            return Ok(());
        };
        if state.status == LinkStatus::TerminalIncomplete {
            return Ok(());
        }
        let mut changed = false;
        self.ledger().links().update(key, self.durability(), |s| {
            changed = s.set_status(LinkStatus::TerminalIncomplete).is_ok();
        })?;
        if !changed {
            return Ok(());
        }
        tracing::warn!(link = %key, "link is terminal_incomplete");
        self.replica().emit(SyncEvent::LinkStatusChanged {
            link: key.clone(),
            from: state.status,
            to: LinkStatus::TerminalIncomplete,
        });
        Ok(())
    }

    /// A dependency outside the scope: a `closure` dead letter for `message`, the link
    /// stops; returns the error the operation ends with.
    pub(super) fn closure_failure(
        &self,
        key: &LinkKey,
        message: &Message,
        forbidden: Forbidden,
    ) -> Result<Error> {
        self.record_dead_letter(
            key,
            message,
            DeadLetterCategory::Closure,
            Some(CLOSURE_FORBIDDEN_CODE.into()),
            forbidden.reason.clone(),
        )?;
        self.set_terminal(key)?;
        Ok(Error::TerminalIncomplete {
            link: key.to_string(),
            reason: forbidden.reason,
        })
    }
}
