//! Push: sending the local log after the push checkpoint, with dependencies, blobs
//! and retries.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use sync_ledger::LogRead;
use sync_transport::proto::{MessageData, WriteBatchRequest};
use sync_transport::{Remote, TransportError};
use sync_types::{
    ApplyOutcome, Cid, DeadLetterCategory, Dependency, Direction, DirectionCheckpoint, LinkKey,
    Message, ProgressToken, ReconcileReason, ScopeClass,
};
use tracing::Instrument;

use crate::error::{Error, Result};

use super::blobs::big_data;
use super::settle::{Settle, settle, settled_prefix};
use super::{Connector, Engine, LinkCtx, PushOutcome, SyncConfig, Traffic, item_bytes, lock};

/// A message to push, with what the batch needs to know about it.
#[derive(Clone)]
pub(super) struct PushItem {
    pub(super) cid: Cid,
    pub(super) item: MessageData,
    pub(super) bytes: u64,
}

impl PushItem {
    pub(super) fn new(message: Message, data: Option<Vec<u8>>) -> Self {
        let bytes = item_bytes(&message, data.as_deref());
        Self {
            cid: message.cid(),
            item: MessageData { message, data },
            bytes,
        }
    }
}

/// Splits items of these sizes, in order, into batches of at most
/// [`SyncConfig::push_batch_messages`] messages and [`SyncConfig::push_batch_bytes_max`]
/// bytes (a single larger item goes alone).
pub(super) fn batch_ranges(
    sizes: impl Iterator<Item = u64>,
    cfg: &SyncConfig,
) -> Vec<std::ops::Range<usize>> {
    let max_messages = cfg.push_batch_messages.max(1);
    let max_bytes = cfg.push_batch_bytes_max as u64;
    let mut out = Vec::new();
    let (mut start, mut bytes, mut len) = (0, 0u64, 0);
    for (i, size) in sizes.enumerate() {
        if i > start && (i - start >= max_messages || bytes + size > max_bytes) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
        len = i + 1;
    }
    if len > start {
        out.push(start..len);
    }
    out
}

impl<C: Connector> Engine<C> {
    /// Sends the local log after the link's push checkpoint; see the
    /// [module docs](crate::sync).
    pub async fn push(&self, link: &LinkKey) -> Result<PushOutcome> {
        self.push_from(link, None).await
    }

    /// [`push`](Self::push) from `start` (the link owner's push checkpoint) instead of
    /// the stored one.
    pub(crate) async fn push_from(
        &self,
        link: &LinkKey,
        start: Option<DirectionCheckpoint>,
    ) -> Result<PushOutcome> {
        let ctx = self.link_ctx(link)?;
        let _guard = self.lock_link(link).await;
        let start = match start {
            Some(start) => start,
            None => self.load(link)?.push,
        };
        self.push_locked(&ctx, start).await
    }

    pub(super) async fn push_locked(
        &self,
        ctx: &LinkCtx<C::Remote>,
        start: DirectionCheckpoint,
    ) -> Result<PushOutcome> {
        let span = tracing::debug_span!("push", tenant = %ctx.key.tenant, endpoint = %ctx.key.endpoint, from = ?start.contiguous_applied.map(|t| t.position));
        let result = self.push_pages(ctx, start).instrument(span.clone()).await;
        let _enter = span.enter();
        match &result {
            Ok(o) => tracing::debug!(
                sent = o.sent.messages,
                bytes = o.sent.bytes,
                echoes_skipped = o.echoes_skipped,
                out_of_scope = o.out_of_scope,
                dependencies = o.dependencies_sent,
                blobs = o.blobs_sent,
                dead_lettered = o.dead_lettered,
                exhausted = o.exhausted,
                "push done"
            ),
            Err(e) => tracing::debug!(error = %e, "push failed"),
        }
        result
    }

    async fn push_pages(
        &self,
        ctx: &LinkCtx<C::Remote>,
        start: DirectionCheckpoint,
    ) -> Result<PushOutcome> {
        let cfg = &self.inner.config;
        let key = &ctx.key;
        let mut cp = start;
        let mut out = PushOutcome {
            checkpoint: cp.contiguous_applied,
            ..PushOutcome::default()
        };
        loop {
            let page = match self.replica().changes_since(
                &key.tenant,
                cp.contiguous_applied,
                cfg.push_read_entries.max(1),
            )? {
                LogRead::Page(page) => page,
                LogRead::Gap(gap) => {
                    // The local log was rebuilt or compacted past the checkpoint: only a
                    // reconcile can tell what the remote lacks. Resume after it.
                    let before = cp.contiguous_applied;
                    cp.reset(gap.latest_available);
                    self.save_checkpoint(key, Direction::Push, before, cp, Traffic::default())?;
                    self.mark_needs_reconcile(key, None)?;
                    out.checkpoint = cp.contiguous_applied;
                    return Ok(out);
                }
            };
            // Plan: which entries to send, which are settled without sending.
            let mut plan: Vec<(ProgressToken, Option<usize>)> = Vec::new();
            let mut to_send: Vec<PushItem> = Vec::new();
            {
                let echoes = lock(&self.inner.echoes);
                let echoes = echoes.get(&key.endpoint);
                for e in &page.entries {
                    if echoes.is_some_and(|x| x.contains(e.token.position)) {
                        out.echoes_skipped += 1;
                        plan.push((e.token, None));
                        continue;
                    }
                    plan.push((e.token, Some(to_send.len())));
                    to_send.push(PushItem::new(e.message.clone(), e.data.clone()));
                }
            }
            let mut keep = Vec::with_capacity(to_send.len());
            let mut renumber = vec![None; to_send.len()];
            for (i, item) in to_send.into_iter().enumerate() {
                match self.replica().classify(
                    &key.tenant,
                    &ctx.scope,
                    Direction::Push,
                    &item.item.message,
                )? {
                    ScopeClass::InScope => {
                        renumber[i] = Some(keep.len());
                        keep.push(item);
                    }
                    ScopeClass::OutOfScope => out.out_of_scope += 1,
                    ScopeClass::Unknown => {
                        out.out_of_scope += 1;
                        self.mark_needs_reconcile(key, Some(ReconcileReason::ScopeUnclassified))?;
                    }
                }
            }
            for (_, slot) in &mut plan {
                *slot = slot.and_then(|i| renumber[i]);
            }
            let to_send = keep;

            // While this page waits for blob uploads, what follows it in the log is sent
            // meanwhile (see `send_small_meanwhile`).
            let lane_from = page.entries.last().map(|e| e.token);
            // Send in batches, in log order; stop after a batch with unsettled messages.
            let mut settles: Vec<Option<Settle>> = vec![None; to_send.len()];
            let mut failure = None;
            for range in batch_ranges(to_send.iter().map(|i| i.bytes), cfg) {
                let start = range.start;
                let (batch_settles, err) = self
                    .send_with_retry(ctx, to_send[range].to_vec(), lane_from, &mut out)
                    .await?;
                let open = batch_settles.contains(&Settle::Open);
                for (i, s) in batch_settles.into_iter().enumerate() {
                    settles[start + i] = Some(s);
                }
                if let Some(e) = err {
                    failure = Some(e);
                    break;
                }
                if open {
                    break;
                }
            }

            // Move the checkpoint over the settled prefix (an entry not sent, an echo or
            // out of scope, is settled as it is).
            let slot_settle = |slot: &Option<usize>| match slot {
                None => Settle::Done,
                Some(i) => settles[*i].unwrap_or(Settle::Open),
            };
            let prefix = settled_prefix(
                plan.iter().map(|(t, slot)| (*t, slot_settle(slot))),
                page.next,
            );
            let all = prefix.complete;
            let target = prefix.target;
            let mut acked = Traffic::default();
            for (_, slot) in &plan[..prefix.settled] {
                if let Some(i) = slot
                    && settles[*i] == Some(Settle::Done)
                {
                    acked.messages += 1;
                    acked.bytes += to_send[*i].bytes;
                }
            }
            if let Some(t) = target
                && cp.contiguous_applied != Some(t)
            {
                let before = cp.contiguous_applied;
                cp.commit(t);
                self.save_checkpoint(key, Direction::Push, before, cp, acked)?;
            }
            out.checkpoint = cp.contiguous_applied;
            self.progress(key, Direction::Push, out.sent);
            if let Some(e) = failure {
                return Err(e.into());
            }
            if !all {
                return Ok(out);
            }
            if !page.has_more {
                out.reached_head = true;
                return Ok(out);
            }
        }
    }

    /// Sends `items` with the retry schedule. Returns one settle per item and, when the
    /// last attempt failed in transport, that error (after dead-lettering the items).
    /// `lane_from`: see [`write_resolving`](Self::write_resolving).
    pub(super) async fn send_with_retry(
        &self,
        ctx: &LinkCtx<C::Remote>,
        items: Vec<PushItem>,
        lane_from: Option<ProgressToken>,
        out: &mut PushOutcome,
    ) -> Result<(Vec<Settle>, Option<TransportError>)> {
        let cfg = &self.inner.config;
        let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; items.len()];
        let mut last_err = None;
        let schedule: &[u64] = if cfg.push_retry_backoff_ms.is_empty() {
            &[0]
        } else {
            &cfg.push_retry_backoff_ms
        };
        for &delay in schedule {
            let pending: Vec<usize> = (0..items.len())
                .filter(|&i| {
                    outcomes[i]
                        .as_ref()
                        .is_none_or(|o| settle(o) == Settle::Open)
                })
                .collect();
            if pending.is_empty() {
                break;
            }
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let batch: Vec<PushItem> = pending.iter().map(|&i| items[i].clone()).collect();
            match self.write_resolving(ctx, batch, lane_from, out).await {
                Ok(results) => {
                    last_err = None;
                    for (i, o) in pending.into_iter().zip(results) {
                        outcomes[i] = Some(o);
                    }
                }
                Err(Error::Transport(e)) if e.is_retryable() => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        let mut settles = Vec::with_capacity(items.len());
        let mut exhausted = false;
        for (item, o) in items.iter().zip(outcomes) {
            let s = match &o {
                Some(o) if o.is_success() => Settle::Done,
                Some(o) if o.is_permanent_failure() => {
                    self.record_dead_letter(
                        &ctx.key,
                        &item.item.message,
                        DeadLetterCategory::PushPermanent,
                        Some(o.as_str().into()),
                        o.to_string(),
                    )?;
                    out.dead_lettered += 1;
                    Settle::Failed
                }
                other => {
                    let why = match (other, &last_err) {
                        (_, Some(e)) => e.to_string(),
                        (Some(o), None) => o.to_string(),
                        (None, None) => "not sent".into(),
                    };
                    self.record_dead_letter(
                        &ctx.key,
                        &item.item.message,
                        DeadLetterCategory::PushExhausted,
                        other.as_ref().map(|o| o.as_str().into()),
                        format!(
                            "push retries exhausted after {} attempts: {why}",
                            schedule.len()
                        ),
                    )?;
                    out.dead_lettered += 1;
                    exhausted = true;
                    Settle::Open
                }
            };
            settles.push(s);
        }
        if exhausted {
            out.exhausted = true;
            self.mark_needs_reconcile(&ctx.key, Some(ReconcileReason::PushRetryExhausted))?;
        }
        Ok((settles, last_err))
    }

    /// One attempt at a batch: sends it, and while the remote answers `Incomplete`,
    /// sends exactly the missing dependencies with the messages that need them, in at
    /// most [`SyncConfig::dependency_passes_max`] passes. Returns the outcome of each of
    /// `items`.
    ///
    /// Messages without a blob are sent while the blobs upload. With `lane_from` (the
    /// position of the last of the push's page), the local log after it is sent
    /// meanwhile too, including writes made during the upload, so that a small write
    /// never waits for a large blob ([`send_small_meanwhile`](Self::send_small_meanwhile)).
    pub(super) async fn write_resolving(
        &self,
        ctx: &LinkCtx<C::Remote>,
        items: Vec<PushItem>,
        lane_from: Option<ProgressToken>,
        out: &mut PushOutcome,
    ) -> Result<Vec<ApplyOutcome>> {
        let cfg = &self.inner.config;
        let n = items.len();
        let mut all = items;
        let mut supplied: HashSet<Cid> = all.iter().map(|i| i.cid).collect();
        let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; n];
        let mut todo: Vec<usize> = (0..n).collect();
        for pass in 0..cfg.dependency_passes_max.max(1) {
            // Messages without a blob go at once, while the blobs of the others upload
            // (a small message is never queued behind a large blob); a message naming a
            // blob goes only after its blob.
            let (plain, with_blob): (Vec<usize>, Vec<usize>) = todo
                .iter()
                .partition(|&&i| big_data(&all[i].item.message).is_none());
            let mut blobs: Vec<Cid> = Vec::new();
            for &i in &with_blob {
                if let Some((cid, _)) = big_data(&all[i].item.message)
                    && !blobs.contains(&cid)
                {
                    blobs.push(cid);
                }
            }
            let uploads = async {
                use futures_util::StreamExt;
                let mut sent = 0u64;
                let mut results = futures_util::stream::iter(blobs)
                    .map(|cid| self.push_blob(ctx, cid))
                    .buffer_unordered(cfg.blob_transfers_per_link_max.max(1));
                while let Some(r) = results.next().await {
                    sent += u64::from(r?);
                }
                Ok::<u64, Error>(sent)
            };
            let mut sent_plain = PushOutcome::default();
            let uploads_and_plain = futures_util::future::join(
                uploads,
                self.send_items(ctx, &all, &plain, &mut sent_plain),
            );
            let mut lane_bytes = 0;
            let (uploaded, plain_results) = match lane_from {
                Some(from) if !with_blob.is_empty() => {
                    tokio::select! {
                        biased;
                        done = uploads_and_plain => done,
                        () = self.send_small_meanwhile(ctx, from, &mut lane_bytes) => {
                            unreachable!("the lane runs until the uploads end")
                        }
                    }
                }
                _ => uploads_and_plain.await,
            };
            let mut results = plain_results?;
            out.sent += sent_plain.sent;
            out.sent.bytes += lane_bytes;
            out.blobs_sent += uploaded?;
            if !with_blob.is_empty() {
                results.extend(self.send_items(ctx, &all, &with_blob, out).await?);
                // A message sent ahead may depend on one that named a blob (a later
                // version of a record whose initial write carries a blob): once more.
                let waiting: Vec<usize> = results
                    .iter()
                    .filter(|(i, o)| {
                        plain.contains(i) && matches!(o, ApplyOutcome::Incomplete { .. })
                    })
                    .map(|(i, _)| *i)
                    .collect();
                if !waiting.is_empty() {
                    results.retain(|(i, _)| !waiting.contains(i));
                    results.extend(self.send_items(ctx, &all, &waiting, out).await?);
                }
            }
            let mut missing = BTreeSet::new();
            let mut next = Vec::new();
            for (i, o) in results {
                if let ApplyOutcome::Incomplete { missing: m } = &o {
                    missing.extend(m.iter().cloned());
                    next.push(i);
                }
                if i < n {
                    if o.is_success() {
                        out.sent.messages += 1;
                    }
                    outcomes[i] = Some(o);
                }
            }
            if next.is_empty() || pass + 1 == cfg.dependency_passes_max.max(1) {
                break;
            }
            // Supply exactly what is missing, from the local indexes.
            let deps = self
                .local_dependencies(ctx, &missing, &mut supplied, out)
                .await?;
            if deps.is_empty() {
                break;
            }
            out.dependencies_sent += deps.len() as u64;
            let first_dep = all.len();
            all.extend(deps);
            // Dependencies first, then what waited for them (the remote also orders each
            // batch by dependencies).
            todo = (first_dep..all.len()).chain(next).collect();
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(ApplyOutcome::Deferred))
            .collect())
    }

    /// The small-message lane of a push that waits for blob uploads: sends the messages
    /// without a blob that follow `from` in the local log, and then each one written
    /// after, until the caller drops it (when the uploads end). Everything it sends is
    /// sent again by the push once the blobs are up (and answered `Duplicate`): the push
    /// checkpoint still moves only over what the push itself settled. Failures are left
    /// to the push too. Adds the bytes it sent to `bytes`.
    pub(super) async fn send_small_meanwhile(
        &self,
        ctx: &LinkCtx<C::Remote>,
        mut from: ProgressToken,
        bytes: &mut u64,
    ) {
        let cfg = &self.inner.config;
        let mut changes = self.replica().subscribe();
        loop {
            // Everything after `from` now, page by page.
            loop {
                let page = match self.replica().changes_since(
                    &ctx.key.tenant,
                    Some(from),
                    cfg.push_read_entries.max(1),
                ) {
                    Ok(LogRead::Page(page)) => page,
                    // A gap, or a read error: the push deals with them.
                    Ok(LogRead::Gap(_)) | Err(_) => break,
                };
                let mut items = Vec::new();
                {
                    let echoes = lock(&self.inner.echoes);
                    let echoes = echoes.get(&ctx.key.endpoint);
                    for e in &page.entries {
                        from = e.token;
                        if echoes.is_some_and(|x| x.contains(e.token.position))
                            || big_data(&e.message).is_some()
                        {
                            continue;
                        }
                        if let Ok(ScopeClass::InScope) = self.replica().classify(
                            &ctx.key.tenant,
                            &ctx.scope,
                            Direction::Push,
                            &e.message,
                        ) {
                            items.push(PushItem::new(e.message.clone(), e.data.clone()));
                        }
                    }
                }
                if !items.is_empty() {
                    let indexes: Vec<usize> = (0..items.len()).collect();
                    let mut sent = PushOutcome::default();
                    if let Err(e) = self.send_items(ctx, &items, &indexes, &mut sent).await {
                        tracing::debug!(link = %ctx.key, error = %e, "sending small messages during a blob upload failed; the push sends them later");
                    }
                    *bytes += sent.sent.bytes;
                }
                if !page.has_more {
                    break;
                }
            }
            // Lagging only loses wake-ups: the next read finds every entry.
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = changes.recv().await {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Sends `all[i]` for each `i` of `indexes` in write batches, in order; returns each
    /// one's outcome. Counts the bytes sent in `out`.
    pub(super) async fn send_items(
        &self,
        ctx: &LinkCtx<C::Remote>,
        all: &[PushItem],
        indexes: &[usize],
        out: &mut PushOutcome,
    ) -> Result<Vec<(usize, ApplyOutcome)>> {
        let cfg = &self.inner.config;
        let mut results = Vec::with_capacity(indexes.len());
        for range in batch_ranges(indexes.iter().map(|&i| all[i].bytes), cfg) {
            let chunk = &indexes[range];
            let messages: Vec<MessageData> = chunk.iter().map(|&i| all[i].item.clone()).collect();
            let sent: u64 = chunk.iter().map(|&i| all[i].bytes).sum();
            let reply = ctx
                .remote
                .write_batch(WriteBatchRequest {
                    tenant: ctx.key.tenant.clone(),
                    messages,
                })
                .await?;
            out.sent.bytes += sent;
            if reply.outcomes.len() != chunk.len() {
                return Err(Error::Protocol(format!(
                    "{} outcomes for a batch of {}",
                    reply.outcomes.len(),
                    chunk.len()
                )));
            }
            results.extend(chunk.iter().copied().zip(reply.outcomes));
        }
        Ok(results)
    }

    /// The local messages that satisfy `missing` and were not sent yet; blobs are
    /// uploaded on the spot.
    pub(super) async fn local_dependencies(
        &self,
        ctx: &LinkCtx<C::Remote>,
        missing: &BTreeSet<Dependency>,
        supplied: &mut HashSet<Cid>,
        out: &mut PushOutcome,
    ) -> Result<Vec<PushItem>> {
        let tenant = &ctx.key.tenant;
        let mut cids = Vec::new();
        for dep in missing {
            match dep {
                Dependency::Protocol(p) => cids.extend(self.ledger().configures(tenant, p)?),
                Dependency::Record(r) => {
                    if let Some(info) = self.ledger().record_info(tenant, r)?
                        && let Some(initial) = info.head.initial
                    {
                        cids.push(initial.cid);
                    }
                }
                Dependency::Blob(c) => {
                    if self.push_blob(ctx, *c).await? {
                        out.blobs_sent += 1;
                    }
                }
            }
        }
        let mut items = Vec::new();
        for cid in cids {
            if supplied.insert(cid)
                && let Some(stored) = self.ledger().get_message(tenant, &cid)?
            {
                items.push(PushItem::new(stored.message, stored.data));
            }
        }
        Ok(items)
    }
}
