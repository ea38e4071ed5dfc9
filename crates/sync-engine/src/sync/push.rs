//! Push: the driver of [`push_core`](super::push_core) against a remote. It reads the
//! local log after the push checkpoint, plans each page (echoes and what the scope
//! leaves out are settled unsent), and carries out what the core asks for: send a pass
//! of messages while their blobs upload, look up missing dependencies, wait before a
//! retry. The checkpoint moves over the page's settled prefix.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::{BoxFuture, Either};
use sync_ledger::{LogEntry, LogPage, LogRead};
use sync_transport::Remote;
use sync_transport::proto::{MessageData, WriteBatchRequest};
use sync_types::{
    ApplyOutcome, Dependency, Direction, DirectionCheckpoint, LinkKey, ProgressToken,
    ReconcileReason, Scope, ScopeClass,
};
use tracing::Instrument;

use crate::error::{Error, Result};

use super::blobs::big_data;
use super::push_core::{BatchEnd, BatchSend, Pass, PushItem, PushPage, Step};
use super::{Connector, Engine, LinkCtx, PushOutcome, Traffic, lock};

/// Why a local entry is not sent.
pub(super) enum Unsent {
    /// It came from this link's endpoint.
    Echo,
    /// The link's scope does not cover it.
    OutOfScope,
    /// The scope cannot tell yet (a protocol it has not seen configured).
    Unknown,
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
        let out = self.push_locked(&ctx, start).await?;
        ctx.meters.push.finish();
        Ok(out)
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

    /// The push from `start`, and beside it the count of what it has to send (for the
    /// meter's total): from the first page alone when that is all, else on the blocking
    /// pool while the pages go (see `push_count.rs`).
    async fn push_pages(
        &self,
        ctx: &LinkCtx<C::Remote>,
        start: DirectionCheckpoint,
    ) -> Result<PushOutcome> {
        let cfg = &self.inner.config;
        let from = start.contiguous_applied;
        let first =
            self.replica()
                .changes_since(&ctx.key.tenant, from, cfg.push_read_entries.max(1))?;
        let counting = self.count_beside(ctx, from, &first);
        tokio::select! {
            biased;
            out = self.send_pages(ctx, start, first) => out,
            () = counting => unreachable!("the count waits once it is done"),
        }
    }

    /// Sends the local log from `start` page by page, `first` being its first page
    /// (read already), one batch always ahead of the one delivered; the checkpoint moves
    /// over each page's settled prefix.
    async fn send_pages(
        &self,
        ctx: &LinkCtx<C::Remote>,
        start: DirectionCheckpoint,
        first: LogRead,
    ) -> Result<PushOutcome> {
        let cfg = &self.inner.config;
        let key = &ctx.key;
        let mut cp = start;
        let mut out = PushOutcome {
            checkpoint: cp.contiguous_applied,
            ..PushOutcome::default()
        };
        let read = |from| {
            self.replica()
                .changes_since(&key.tenant, from, cfg.push_read_entries.max(1))
        };
        let mut first = Some(first);
        // The next page, read and planned while the last batch of this one is delivered.
        let mut next: Option<(LogPage, Planned)> = None;
        // The batch sent ahead of the one delivered (of this page or the next): the
        // node applies one while the next travels, across pages too.
        let mut ahead: Option<Ahead<'_>> = None;
        loop {
            let (page, planned) = match next.take() {
                Some(planned) => planned,
                None => match first
                    .take()
                    .map_or_else(|| read(cp.contiguous_applied), Ok)?
                {
                    LogRead::Page(page) => {
                        let planned = self.plan_page(ctx, &page)?;
                        (page, planned)
                    }
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
                },
            };
            let mut plan = planned.take(self, key, &mut out)?;
            // While this page waits for blob uploads, what follows it in the log is sent
            // meanwhile (see `send_small_meanwhile`).
            let lane_from = page.entries.last().map(|e| e.token);
            let mut failure = None;
            while let Some(batch) = plan.next_batch() {
                let batch_cfg = cfg.with_batch_messages_max(ctx.remote.batch_messages_max());
                // What travels while this batch is delivered: the page's next batch, or
                // the next page's first (read and planned now).
                let next_items = if plan.has_next_batch() {
                    plan.ahead(&batch_cfg)
                } else if page.has_more {
                    if next.is_none()
                        && let Ok(LogRead::Page(p)) = read(page.next)
                    {
                        let planned = self.plan_page(ctx, &p)?;
                        next = Some((p, planned));
                    }
                    next.as_ref()
                        .and_then(|(_, n)| n.plan.first_ahead_of(&batch, &batch_cfg))
                } else {
                    None
                };
                let answered = ahead.take();
                let delivering = async {
                    let sent_ahead = match answered {
                        Some(a) => {
                            let (result, bytes) = a.answer().await;
                            out.sent.bytes += bytes;
                            Some(result)
                        }
                        None => None,
                    };
                    self.deliver(ctx, batch, lane_from, sent_ahead, &mut out)
                        .await
                };
                let end = match next_items {
                    Some(items) => {
                        let (end, pending) = beside(delivering, self.send_ahead(ctx, items)).await;
                        ahead = Some(pending);
                        end?
                    }
                    None => delivering.await?,
                };
                plan.batch_settled(&end.settles);
                if let Some(e) = end.error {
                    plan.abandon();
                    failure = Some(e);
                }
            }
            let (prefix, acked) = plan.finish();
            if let Some(t) = prefix.target
                && cp.contiguous_applied != Some(t)
            {
                let before = cp.contiguous_applied;
                cp.commit(t);
                self.save_checkpoint(key, Direction::Push, before, cp, acked)?;
            }
            out.checkpoint = cp.contiguous_applied;
            if let Some(e) = failure {
                return Err(e.into());
            }
            // A batch sent ahead of a page that does not go on is dropped unanswered (the
            // remote may still apply it: the next push sends it again, a duplicate).
            if !prefix.complete {
                return Ok(out);
            }
            if !page.has_more {
                out.reached_head = true;
                return Ok(out);
            }
        }
    }

    /// Plans a page of the local log: which entries go out (see [`push_class`](Self::push_class)).
    fn plan_page(&self, ctx: &LinkCtx<C::Remote>, page: &LogPage) -> Result<Planned> {
        let (mut echoes_skipped, mut out_of_scope, mut unclassified) = (0, 0, false);
        let mut entries = Vec::with_capacity(page.entries.len());
        for e in &page.entries {
            let item = match self.push_class(ctx, e)? {
                Ok(()) => Some(PushItem::new(e.message.clone(), e.data.clone())),
                Err(Unsent::Echo) => {
                    echoes_skipped += 1;
                    None
                }
                Err(Unsent::OutOfScope) => {
                    out_of_scope += 1;
                    None
                }
                Err(Unsent::Unknown) => {
                    out_of_scope += 1;
                    unclassified = true;
                    None
                }
            };
            entries.push((e.token, item));
        }
        // Batches as large as the remote takes now (it may have learned more since the
        // last page).
        let batch_cfg = self
            .inner
            .config
            .with_batch_messages_max(ctx.remote.batch_messages_max());
        Ok(Planned {
            plan: PushPage::new(entries, page.next, &batch_cfg),
            echoes_skipped,
            out_of_scope,
            unclassified,
        })
    }

    /// Sends `items` (a whole batch, no blobs) ahead of the batch being delivered.
    fn send_ahead<'a>(
        &'a self,
        ctx: &'a LinkCtx<C::Remote>,
        items: Vec<PushItem>,
    ) -> BoxFuture<'a, Sent> {
        Box::pin(async move {
            let indexes: Vec<usize> = (0..items.len()).collect();
            let mut bytes = 0;
            let result = self.send_items(ctx, &items, &indexes, &mut bytes).await;
            (result, bytes)
        })
    }

    /// Whether a local log entry goes to this link's remote, and why not.
    fn push_class(
        &self,
        ctx: &LinkCtx<C::Remote>,
        e: &LogEntry,
    ) -> Result<std::result::Result<(), Unsent>> {
        self.push_class_in(&ctx.key, &ctx.scope, e)
    }

    /// [`push_class`](Self::push_class) for the link `key` with `scope`.
    pub(super) fn push_class_in(
        &self,
        key: &LinkKey,
        scope: &Scope,
        e: &LogEntry,
    ) -> Result<std::result::Result<(), Unsent>> {
        let echo = lock(&self.inner.echoes)
            .get(&key.endpoint)
            .is_some_and(|x| x.contains(e.token.position));
        if echo {
            return Ok(Err(Unsent::Echo));
        }
        Ok(
            match self
                .replica()
                .classify(&key.tenant, scope, Direction::Push, &e.message)?
            {
                ScopeClass::InScope => Ok(()),
                ScopeClass::OutOfScope => Err(Unsent::OutOfScope),
                ScopeClass::Unknown => Err(Unsent::Unknown),
            },
        )
    }

    /// Delivers one batch: drives a [`BatchSend`] to its end, records the dead letters
    /// it names and marks the link when retries ran out. `lane_from`: see
    /// [`send_pass`](Self::send_pass). `sent_ahead`: the answer to the batch's first
    /// pass when it was sent ahead (the whole batch, while the one before it was
    /// delivered).
    pub(super) async fn deliver(
        &self,
        ctx: &LinkCtx<C::Remote>,
        items: Vec<PushItem>,
        lane_from: Option<ProgressToken>,
        mut sent_ahead: Option<Result<Vec<(usize, ApplyOutcome)>>>,
        out: &mut PushOutcome,
    ) -> Result<BatchEnd> {
        let mut batch = BatchSend::new(items, &self.inner.config);
        loop {
            let answer = match batch.poll() {
                Step::Wait(ms) => {
                    tokio::time::sleep(Duration::from_millis(self.jittered(ms))).await;
                    continue;
                }
                // The first pass of a batch sent ahead (all of it, no blobs) is answered.
                Step::Send(pass) if sent_ahead.is_some() => {
                    debug_assert!(pass.blobs.is_empty() && pass.with_blob.is_empty());
                    debug_assert!(pass.plain.iter().copied().eq(0..batch.items().len()));
                    sent_ahead
                        .take()
                        .expect("checked")
                        .map(|results| batch.on_sent(results))
                }
                Step::Send(pass) => self
                    .send_pass(ctx, batch.items(), &pass, lane_from, out)
                    .await
                    .map(|results| batch.on_sent(results)),
                Step::Supply(missing) => self
                    .local_dependencies(ctx, &missing, batch.items(), out)
                    .await
                    .map(|found| batch.on_supplied(found)),
                Step::Done => break,
            };
            match answer {
                Ok(()) => {}
                Err(Error::Transport(e)) if e.is_retryable() => batch.on_failed(e),
                Err(e) => return Err(e),
            }
        }
        let end = batch.end();
        for d in &end.dead_letters {
            self.record_dead_letter(
                &ctx.key,
                &batch.items()[d.index].item.message,
                d.category,
                d.code.clone(),
                d.reason.clone(),
            )?;
        }
        out.dead_lettered += end.dead_letters.len() as u64;
        out.sent.messages += end.delivered;
        ctx.meters.push.moved(end.delivered, 0);
        out.dependencies_sent += end.dependencies_sent;
        if end.exhausted {
            out.exhausted = true;
            self.mark_needs_reconcile(&ctx.key, Some(ReconcileReason::PushRetryExhausted))?;
        }
        Ok(end)
    }

    /// Sends one [`Pass`]: its messages without a blob at once while its blobs upload,
    /// then the messages naming a blob. Returns an outcome per index.
    ///
    /// With `lane_from` (the position of the last entry of the push's page) and blobs to
    /// wait for, the local log after it is sent meanwhile too, including writes made
    /// during the upload, so that a small write never waits for a large blob
    /// ([`send_small_meanwhile`](Self::send_small_meanwhile)).
    async fn send_pass(
        &self,
        ctx: &LinkCtx<C::Remote>,
        items: &[PushItem],
        pass: &Pass,
        lane_from: Option<ProgressToken>,
        out: &mut PushOutcome,
    ) -> Result<Vec<(usize, ApplyOutcome)>> {
        let cfg = &self.inner.config;
        let uploads = async {
            use futures_util::StreamExt;
            let (mut sent, mut bytes) = (0u64, 0u64);
            let mut results = futures_util::stream::iter(pass.blobs.iter().copied())
                .map(|cid| self.push_blob(ctx, cid))
                .buffer_unordered(cfg.blob_transfers_per_link_max.max(1));
            while let Some(r) = results.next().await {
                if let Some(b) = r? {
                    sent += 1;
                    bytes += b;
                }
            }
            Ok::<(u64, u64), Error>((sent, bytes))
        };
        let mut plain_bytes = 0;
        let uploads_and_plain = futures_util::future::join(
            uploads,
            self.send_items(ctx, items, &pass.plain, &mut plain_bytes),
        );
        let mut lane_bytes = 0;
        let (uploaded, plain_results) = match lane_from {
            Some(from) if !pass.with_blob.is_empty() => {
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
        out.sent.bytes += plain_bytes + lane_bytes;
        let (blobs, blob_bytes) = uploaded?;
        out.blobs_sent += blobs;
        out.sent.blob_bytes += blob_bytes;
        if !pass.with_blob.is_empty() {
            results.extend(
                self.send_items(ctx, items, &pass.with_blob, &mut out.sent.bytes)
                    .await?,
            );
        }
        Ok(results)
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
                for e in &page.entries {
                    from = e.token;
                    if big_data(&e.message).is_none()
                        && let Ok(Ok(())) = self.push_class(ctx, e)
                    {
                        items.push(PushItem::new(e.message.clone(), e.data.clone()));
                    }
                }
                if !items.is_empty() {
                    let indexes: Vec<usize> = (0..items.len()).collect();
                    if let Err(e) = self.send_items(ctx, &items, &indexes, bytes).await {
                        tracing::debug!(link = %ctx.key, error = %e, "sending small messages during a blob upload failed; the push sends them later");
                    }
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
    /// one's outcome. Adds the bytes sent to `bytes`.
    async fn send_items(
        &self,
        ctx: &LinkCtx<C::Remote>,
        all: &[PushItem],
        indexes: &[usize],
        bytes: &mut u64,
    ) -> Result<Vec<(usize, ApplyOutcome)>> {
        let cfg = self
            .inner
            .config
            .with_batch_messages_max(ctx.remote.batch_messages_max());
        let mut results = Vec::with_capacity(indexes.len());
        for range in super::push_core::batch_ranges(indexes.iter().map(|&i| all[i].bytes), &cfg) {
            let chunk = &indexes[range];
            let messages: Vec<MessageData> = chunk.iter().map(|&i| all[i].item.clone()).collect();
            let sent: u64 = chunk.iter().map(|&i| all[i].bytes).sum();
            let reply = ctx
                .remote
                .write_batch_placed(WriteBatchRequest {
                    tenant: ctx.key.tenant.clone(),
                    messages,
                })
                .await?;
            *bytes += sent;
            ctx.meters.push.moved(0, sent);
            if let Some(placed) = &reply.placed {
                self.note_placed(&ctx.key, placed)?;
            }
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

    /// The local messages that satisfy `missing` and are not among `have`; blobs are
    /// uploaded on the spot.
    async fn local_dependencies(
        &self,
        ctx: &LinkCtx<C::Remote>,
        missing: &BTreeSet<Dependency>,
        have: &[PushItem],
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
                    if let Some(bytes) = self.push_blob(ctx, *c).await? {
                        out.blobs_sent += 1;
                        out.sent.blob_bytes += bytes;
                    }
                }
            }
        }
        let mut items = Vec::new();
        for cid in cids {
            if !have.iter().any(|i| i.cid == cid)
                && let Some(stored) = self.ledger().get_message(tenant, &cid)?
            {
                items.push(PushItem::new(stored.message, stored.data));
            }
        }
        Ok(items)
    }
}

/// A planned page of the local log, with what its planning counted; the counts and the
/// reconcile mark take effect when the page's turn comes ([`take`](Self::take)), so a
/// page planned ahead of a push that then stops counts nothing.
struct Planned {
    plan: PushPage,
    echoes_skipped: u64,
    out_of_scope: u64,
    /// An entry the scope could not classify yet: the link needs a reconcile.
    unclassified: bool,
}

impl Planned {
    fn take<C: Connector>(
        self,
        engine: &Engine<C>,
        key: &LinkKey,
        out: &mut PushOutcome,
    ) -> Result<PushPage> {
        out.echoes_skipped += self.echoes_skipped;
        out.out_of_scope += self.out_of_scope;
        if self.unclassified {
            engine.mark_needs_reconcile(key, Some(ReconcileReason::ScopeUnclassified))?;
        }
        Ok(self.plan)
    }
}

/// The answer to a batch sent ahead, and the bytes it sent.
type Sent = (Result<Vec<(usize, ApplyOutcome)>>, u64);

/// A batch sent ahead: still in flight, or answered while the one before it was
/// delivered.
enum Ahead<'a> {
    InFlight(BoxFuture<'a, Sent>),
    Answered(Sent),
}

impl Ahead<'_> {
    async fn answer(self) -> Sent {
        match self {
            Ahead::InFlight(f) => f.await,
            Ahead::Answered(sent) => sent,
        }
    }
}

/// Runs `main` to its end while `side` makes progress beside it; `side` comes back
/// answered or still in flight.
async fn beside<'a, T>(main: impl Future<Output = T>, side: BoxFuture<'a, Sent>) -> (T, Ahead<'a>) {
    let main = std::pin::pin!(main);
    match futures_util::future::select(main, side).await {
        Either::Left((t, side)) => (t, Ahead::InFlight(side)),
        Either::Right((sent, main)) => (main.await, Ahead::Answered(sent)),
    }
}
