//! Reconcile: comparing roots and repairing the difference both ways with the SMT diff.

use std::collections::{HashMap, HashSet};

use sync_ledger::DeadLetterFilter;
use sync_smt::{Config as DiffConfig, Hash, Initiator, Step, Tree};
use sync_transport::Remote;
use sync_transport::proto::{DiffRequest, READ_CIDS_MAX, ReadMessagesRequest, RootRequest};
use sync_types::{
    ApplyOutcome, Cid, DeadLetterCategory, LinkKey, Message, ProgressToken, Scope, ScopeClass,
};
use tracing::Instrument;

use crate::closure::{Gate, forbidden_dependency};
use crate::error::{Error, Result};
use crate::link_news::LinkNews;

use super::push_core::{PushItem, batch_ranges};
use super::settle::{Settle, settle};
use super::{Connector, Engine, LinkCtx, PushOutcome, ReconcileOutcome, Traffic, item_bytes, lock};

impl<C: Connector> Engine<C> {
    /// Compares the link's scope with the remote and repairs the difference both ways;
    /// see the [module docs](crate::sync).
    pub async fn reconcile(&self, link: &LinkKey) -> Result<ReconcileOutcome> {
        let ctx = self.link_ctx(link)?;
        let guard = self.lock_link(link).await;
        let out = self.reconcile_locked(&ctx).await?;
        drop(guard);
        let meters = ctx.meters.clone();
        self.fetch_staged_after(ctx).await?;
        meters.pull.finish();
        meters.push.finish();
        Ok(out)
    }

    pub(super) async fn remote_root(&self, ctx: &LinkCtx<C::Remote>) -> Result<Hash> {
        let reply = ctx
            .remote
            .root(RootRequest {
                tenant: ctx.key.tenant.clone(),
                scope: ctx.scope.clone(),
            })
            .await?;
        Ok(Hash(reply.root))
    }

    pub(super) async fn reconcile_locked(
        &self,
        ctx: &LinkCtx<C::Remote>,
    ) -> Result<ReconcileOutcome> {
        let span = tracing::debug_span!("reconcile", tenant = %ctx.key.tenant, endpoint = %ctx.key.endpoint, scope = %ctx.scope);
        let result = self.reconcile_diff(ctx).instrument(span.clone()).await;
        let _enter = span.enter();
        match &result {
            Ok(o) => tracing::debug!(
                diffed = o.diffed,
                only_local = o.only_local,
                only_remote = o.only_remote,
                round_trips = o.round_trips,
                pulled = o.pulled.messages,
                pushed = o.pushed.messages,
                dead_lettered = o.dead_lettered,
                converged = o.converged,
                "reconcile done"
            ),
            Err(e) => tracing::debug!(error = %e, "reconcile failed"),
        }
        result
    }

    async fn reconcile_diff(&self, ctx: &LinkCtx<C::Remote>) -> Result<ReconcileOutcome> {
        let key = &ctx.key;
        // Everything up to this local position is in the local tree read below.
        let local_head = self.ledger().log_head(&key.tenant)?;
        let local_root = self.replica().root(&key.tenant, &ctx.scope)?;
        let remote_root = self.remote_root(ctx).await?;
        let mut out = ReconcileOutcome {
            local_root,
            remote_root,
            diffed: false,
            only_local: 0,
            only_remote: 0,
            round_trips: 0,
            pulled: Traffic::default(),
            pushed: Traffic::default(),
            dead_lettered: 0,
            post_local_root: local_root,
            post_remote_root: remote_root,
            converged: local_root == remote_root,
        };
        if !out.converged {
            let diff = self.diff(ctx).await?;
            out.diffed = true;
            out.only_local = diff.only_local.len() as u64;
            out.only_remote = diff.only_remote.len() as u64;
            out.round_trips = diff.round_trips as u64;

            let only_remote: Vec<Cid> = diff
                .only_remote
                .iter()
                .map(|k| Cid::from_bytes(*k))
                .collect();
            self.fetch_and_apply(ctx, &only_remote, &mut out).await?;

            // Messages the remote refused for good are not offered again until the
            // application clears their dead letters.
            let refused: HashSet<Cid> = self
                .ledger()
                .dead_letters()
                .list(&DeadLetterFilter {
                    tenant: Some(key.tenant.clone()),
                    endpoint: Some(key.endpoint.clone()),
                    categories: vec![DeadLetterCategory::PushPermanent],
                    protocol: None,
                })?
                .into_iter()
                .map(|d| d.cid)
                .collect();
            // What only the local side holds is offered as it is: the node judges it
            // against the token's grant (an owner's link may have a projection scope
            // and still configure the protocol).
            let mut items = Vec::new();
            for k in &diff.only_local {
                let cid = Cid::from_bytes(*k);
                if refused.contains(&cid) {
                    continue;
                }
                if let Some(stored) = self.ledger().get_message(&key.tenant, &cid)? {
                    items.push(PushItem::new(stored.message, stored.data));
                }
            }
            let mut push = PushOutcome::default();
            let batch_cfg = self
                .inner
                .config
                .with_batch_messages_max(ctx.remote.batch_messages_max());
            for range in batch_ranges(items.iter().map(|i| i.bytes), &batch_cfg) {
                let end = self
                    .deliver(ctx, items[range].to_vec(), None, None, &mut push)
                    .await?;
                if let Some(e) = end.error {
                    return Err(e.into());
                }
            }
            out.pushed = push.sent;
            out.dead_lettered += push.dead_lettered;
            out.post_local_root = self.replica().root(&key.tenant, &ctx.scope)?;
            out.post_remote_root = self.remote_root(ctx).await?;
            out.converged = out.post_local_root == out.post_remote_root;
        }
        self.report(
            key,
            LinkNews::Moved {
                pulled: out.pulled,
                pushed: out.pushed,
            },
        )?;
        lock(&self.inner.last_reconcile_ms).insert(key.clone(), self.now_ms());
        if out.converged {
            self.on_converged(key, local_head)?;
        } else {
            self.mark_needs_reconcile(key, None)?;
        }
        Ok(out)
    }

    /// Equal roots: clear the flag, note the time, move the push checkpoint up to what
    /// the roots proved the remote holds, clear what convergence clears.
    pub(super) fn on_converged(
        &self,
        key: &LinkKey,
        local_head: Option<ProgressToken>,
    ) -> Result<()> {
        // Dead letters first: the owner announces the completion.
        self.ledger().dead_letters().clear_matching(
            &DeadLetterFilter {
                tenant: Some(key.tenant.clone()),
                endpoint: Some(key.endpoint.clone()),
                categories: DeadLetterCategory::ALL
                    .into_iter()
                    .filter(|c| c.cleared_by_convergence())
                    .collect(),
                protocol: None,
            },
            self.durability(),
        )?;
        self.report(key, LinkNews::Converged { local_head })
    }

    /// Runs the SMT diff of the link's scope against the remote's responder. Full scopes
    /// diff the live tree and fall back to a snapshot when local writes change it
    /// meanwhile; other scopes diff a snapshot (their trees are assembled per call).
    pub(super) async fn diff(&self, ctx: &LinkCtx<C::Remote>) -> Result<sync_smt::Diff> {
        let salt = self.salt();
        let snapshot = |this: &Self| -> Result<Tree> {
            this.replica()
                .with_tree(&ctx.key.tenant, &ctx.scope, Tree::clone)
        };
        let mut tree = match ctx.scope {
            Scope::Full => None,
            _ => Some(snapshot(self)?),
        };
        loop {
            match self.diff_once(ctx, tree.as_ref(), salt).await? {
                Some(diff) => return Ok(diff),
                None if tree.is_none() => tree = Some(snapshot(self)?),
                None => return Err(Error::Protocol("diff snapshot changed".into())),
            }
        }
    }

    pub(super) fn on_tree<R>(
        &self,
        ctx: &LinkCtx<C::Remote>,
        snapshot: Option<&Tree>,
        f: impl FnOnce(&Tree) -> R,
    ) -> Result<R> {
        match snapshot {
            Some(tree) => Ok(f(tree)),
            None => self.replica().with_tree(&ctx.key.tenant, &ctx.scope, f),
        }
    }

    /// One diff session; `None` when the live local tree changed under it.
    pub(super) async fn diff_once(
        &self,
        ctx: &LinkCtx<C::Remote>,
        snapshot: Option<&Tree>,
        salt: [u8; 16],
    ) -> Result<Option<sync_smt::Diff>> {
        let smt = |e: sync_smt::Error| Error::Protocol(format!("diff: {e}"));
        let (mut session, mut request) = self
            .on_tree(ctx, snapshot, |t| {
                Initiator::start(t, DiffConfig::default(), salt)
            })?
            .map_err(smt)?;
        loop {
            let reply = ctx
                .remote
                .diff_round(DiffRequest {
                    tenant: ctx.key.tenant.clone(),
                    scope: ctx.scope.clone(),
                    round: request.encode(),
                })
                .await?;
            match self.on_tree(ctx, snapshot, |t| session.handle_bytes(t, &reply.round))? {
                Ok(Step::Send(next)) => request = next,
                Ok(Step::Done(diff)) => return Ok(Some(diff)),
                Err(sync_smt::Error::LocalChanged) => return Ok(None),
                Err(e) => return Err(smt(e)),
            }
        }
    }

    /// Reads `cids` from the remote in chunks and applies them; what waits for a
    /// dependency fetched in a later chunk is applied again after the last chunk, in
    /// bounded passes; what still fails is dead-lettered `pull_processing`.
    pub(super) async fn fetch_and_apply(
        &self,
        ctx: &LinkCtx<C::Remote>,
        cids: &[Cid],
        out: &mut ReconcileOutcome,
    ) -> Result<()> {
        let key = &ctx.key;
        let mut pending: Vec<(Message, Option<Vec<u8>>)> = Vec::new();
        let mut last_outcome: HashMap<Cid, ApplyOutcome> = HashMap::new();
        // What of `out.pulled` the pull meter has counted already.
        let mut counted = out.pulled;
        for chunk in cids.chunks(self.inner.config.read_batch_cids.clamp(1, READ_CIDS_MAX)) {
            let reply = ctx
                .remote
                .read_messages(ReadMessagesRequest {
                    tenant: key.tenant.clone(),
                    scope: ctx.scope.clone(),
                    cids: chunk.to_vec(),
                })
                .await?;
            let wanted: HashSet<&Cid> = chunk.iter().collect();
            let mut items = Vec::with_capacity(reply.found.len());
            let gate = Gate::new(reply.found.iter().map(|f| &f.message));
            for found in reply.found {
                if !wanted.contains(&found.message.cid()) {
                    return Err(Error::Protocol(
                        "read returned a message not asked for".into(),
                    ));
                }
                match gate.classify(self.replica(), &key.tenant, &ctx.scope, &found.message)? {
                    class @ (ScopeClass::OutOfScope | ScopeClass::Unknown) => {
                        self.scope_rejected(key, &found.message, class)?;
                        out.dead_lettered += 1;
                    }
                    ScopeClass::InScope => {
                        out.pulled.messages += 1;
                        out.pulled.bytes += item_bytes(&found.message, found.data.as_deref());
                        items.push((found.message, found.data));
                    }
                }
            }
            self.apply_round(ctx, items, &mut pending, &mut last_outcome)
                .await?;
            ctx.meters.pull.moved(
                out.pulled.messages - counted.messages,
                out.pulled.bytes - counted.bytes,
            );
            counted = out.pulled;
        }
        for _pass in 0..self.inner.config.dependency_passes_max {
            if pending.is_empty() {
                break;
            }
            let before = pending.len();
            let items = std::mem::take(&mut pending);
            self.apply_round(ctx, items, &mut pending, &mut last_outcome)
                .await?;
            if pending.len() == before {
                break;
            }
        }
        let mut terminal = None;
        for (message, _) in pending {
            let outcome = last_outcome
                .remove(&message.cid())
                .unwrap_or(ApplyOutcome::Deferred);
            // A dependency the scope forbids can never arrive: stop for good.
            if let ApplyOutcome::Incomplete { missing } = &outcome
                && let Some(f) = forbidden_dependency(
                    self.replica(),
                    &key.tenant,
                    &ctx.scope,
                    &message,
                    missing,
                )?
            {
                out.dead_lettered += 1;
                let e = self.closure_failure(key, &message, f)?;
                terminal.get_or_insert(e);
                continue;
            }
            self.record_dead_letter(
                key,
                &message,
                DeadLetterCategory::PullProcessing,
                Some(outcome.as_str().into()),
                format!("pull processing failed after retry passes: {outcome}"),
            )?;
            out.dead_lettered += 1;
        }
        match terminal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Applies `items`; settled ones are done (blobs fetched, refusals dead-lettered),
    /// unsettled ones go to `pending`.
    pub(super) async fn apply_round(
        &self,
        ctx: &LinkCtx<C::Remote>,
        items: Vec<(Message, Option<Vec<u8>>)>,
        pending: &mut Vec<(Message, Option<Vec<u8>>)>,
        last_outcome: &mut HashMap<Cid, ApplyOutcome>,
    ) -> Result<()> {
        let outcomes = self.apply_remote(ctx, items.clone()).await?;
        for (item, o) in items.into_iter().zip(outcomes) {
            match settle(&o) {
                // A staged record's blob was wanted by `apply_remote`.
                Settle::Done => {}
                Settle::Failed => {
                    self.record_dead_letter(
                        &ctx.key,
                        &item.0,
                        DeadLetterCategory::PullProcessing,
                        Some(o.as_str().into()),
                        o.to_string(),
                    )?;
                }
                Settle::Open => {
                    last_outcome.insert(item.0.cid(), o);
                    pending.push(item);
                }
            }
        }
        Ok(())
    }
}
