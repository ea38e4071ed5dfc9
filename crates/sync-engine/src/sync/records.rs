//! What the engine records about a link: dead letters and the scope gate's refusals in
//! the ledger, and news for the link's owner (checkpoints with their traffic, the
//! reconcile flag, the terminal status; see [`crate::link_news`]).

use sync_types::{
    DeadLetter, DeadLetterCategory, Direction, DirectionCheckpoint, LinkKey, LinkState, Message,
    ProgressToken, ReconcileReason, ScopeClass, SyncEvent,
};

use crate::closure::{CLOSURE_FORBIDDEN_CODE, Forbidden};
use crate::error::{Error, Result};
use crate::link_news::{self, LinkNews, NewsSink};

use super::{Connector, Engine, Traffic, lock};

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

    /// Reports `news` to the link's owner: the live driver running the link when there
    /// is one (its machine applies, persists and announces it), else the stored state,
    /// changed by the same rules ([`link_news::apply`]) under the registry's lock. See
    /// [`crate::link_news`].
    pub(super) fn report(&self, key: &LinkKey, news: LinkNews) -> Result<()> {
        let now = self.now_ms();
        let owner = lock(&self.inner.owners).get(key).cloned();
        if let Some(owner) = owner {
            if owner(news.clone(), now) {
                return Ok(());
            }
            // The driver is gone without releasing the link (dropped, not stopped).
            lock(&self.inner.owners).remove(key);
        }
        let Some(mut probe) = self.ledger().links().get(key)? else {
            return Ok(());
        };
        if !link_news::apply(&mut probe, &news, now).persist {
            return Ok(());
        }
        let mut applied = None;
        // Link state is saved buffered, as the live driver saves it: a power loss can only
        // roll a checkpoint back, which replays idempotent work.
        match self
            .ledger()
            .links()
            .update(key, sync_ledger::Durability::Buffered, |s| {
                applied = Some(link_news::apply(s, &news, now));
            }) {
            Ok(_) => {}
            // Deleted meanwhile (its identity changed): nothing left to report to.
            Err(sync_ledger::Error::LinkNotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for event in applied.map(|a| a.events).unwrap_or_default() {
            self.replica().emit(event);
        }
        Ok(())
    }

    /// Makes `owner` the owner of `link`'s state (see [`report`](Self::report)) until
    /// [`release_link`](Self::release_link).
    pub(crate) fn own_link(&self, link: LinkKey, owner: NewsSink) {
        lock(&self.inner.owners).insert(link, owner);
    }

    /// Gives `link`'s state back to the engine.
    pub(crate) fn release_link(&self, link: &LinkKey) {
        lock(&self.inner.owners).remove(link);
    }

    pub(super) fn mark_needs_reconcile(
        &self,
        key: &LinkKey,
        reason: Option<ReconcileReason>,
    ) -> Result<()> {
        self.report(key, LinkNews::NeedsReconcile(reason))
    }

    /// Reports a checkpoint moved from `from` to `checkpoint` with the traffic it covers.
    pub(super) fn save_checkpoint(
        &self,
        key: &LinkKey,
        direction: Direction,
        from: Option<ProgressToken>,
        checkpoint: DirectionCheckpoint,
        traffic: Traffic,
    ) -> Result<()> {
        self.report(
            key,
            LinkNews::Progress {
                direction,
                from,
                to: checkpoint,
                traffic,
            },
        )
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
    /// where it is).
    pub(super) fn set_terminal(&self, key: &LinkKey) -> Result<()> {
        self.report(key, LinkNews::Terminal)
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
