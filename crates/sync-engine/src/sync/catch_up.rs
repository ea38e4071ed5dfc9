//! Catch-up: reading the remote log from the pull checkpoint and applying it.

use sync_transport::proto::{
    HeadLogPageRequest, HeadedLogPage, LOG_PAGE_ENTRIES_MAX, LogFilter, LogPage, LogPageReply,
    LogPageRequest,
};
use sync_transport::{Remote, TransportError};
use sync_types::{
    ApplyOutcome, DeadLetterCategory, Direction, DirectionCheckpoint, LinkKey, ProgressToken,
    ScopeClass, SyncEvent,
};
use tracing::Instrument;

use crate::closure::{Gate, forbidden_dependency};
use crate::error::{Error, Result};

use super::blobs::big_data;
use super::settle::{Next, PullCursor, Settle, settle, settled_prefix};
use super::{
    CatchUpOutcome, CatchUpStop, Connector, Engine, LinkCtx, STALLED_PAGES_MAX, SyncConfig,
    Traffic, item_bytes, too_large,
};

/// Where the count of what a catch-up has left starts: after its first page, whose
/// messages and bytes `mark` holds with what had moved before it.
struct CountFrom {
    after: Option<ProgressToken>,
    mark: (u64, u64),
}

/// Where a page of the remote log starts and how many entries it holds at most.
type PageAt = (Option<ProgressToken>, u32);
/// The remote's answer to a page request: the page (or a gap) and the log's extent.
type Reply = std::result::Result<HeadedLogPage, TransportError>;

impl<C: Connector> Engine<C> {
    /// Reads the remote log from the link's pull checkpoint and applies it; see the
    /// [module docs](crate::sync).
    pub async fn catch_up(&self, link: &LinkKey) -> Result<CatchUpOutcome> {
        self.catch_up_from(link, None).await
    }

    /// [`catch_up`](Self::catch_up) from `start` (the link owner's pull checkpoint)
    /// instead of the stored one.
    pub(crate) async fn catch_up_from(
        &self,
        link: &LinkKey,
        start: Option<DirectionCheckpoint>,
    ) -> Result<CatchUpOutcome> {
        let ctx = self.link_ctx(link)?;
        let guard = self.lock_link(link).await;
        let start = match start {
            Some(start) => start,
            None => self.load(link)?.pull,
        };
        let mut out = self.catch_up_locked(&ctx, start).await?;
        drop(guard);
        let meter = ctx.meters.pull.clone();
        out.blobs_fetched += self.fetch_staged_after(ctx).await?.0;
        meter.finish();
        Ok(out)
    }

    /// One catch-up from `start`: the loop of reading a page, gating and applying it,
    /// and handing the outcomes to the pure [`PullCursor`] and [`settled_prefix`], which
    /// say how far the checkpoint moves and whether to go on.
    pub(super) async fn catch_up_locked(
        &self,
        ctx: &LinkCtx<C::Remote>,
        start: DirectionCheckpoint,
    ) -> Result<CatchUpOutcome> {
        let span = tracing::debug_span!("catch_up", tenant = %ctx.key.tenant, endpoint = %ctx.key.endpoint, from = ?start.contiguous_applied.map(|t| t.position));
        let result = self
            .catch_up_pages(ctx, start)
            .instrument(span.clone())
            .await;
        let _enter = span.enter();
        match &result {
            Ok(o) => tracing::debug!(
                pages = o.pages,
                received = o.received.messages,
                bytes = o.received.bytes,
                applied = o.applied,
                dead_lettered = o.dead_lettered,
                reached_head = o.reached_head,
                stopped = o.stop.is_some(),
                "catch-up done"
            ),
            Err(e) => tracing::debug!(error = %e, "catch-up failed"),
        }
        result
    }

    /// The catch-up from `start`, and beside it the node's count of what is left once
    /// the first page shows there is more (for the meter's total).
    async fn catch_up_pages(
        &self,
        ctx: &LinkCtx<C::Remote>,
        start: DirectionCheckpoint,
    ) -> Result<CatchUpOutcome> {
        let (count_from, count_at) = tokio::sync::oneshot::channel();
        tokio::select! {
            biased;
            out = self.read_and_apply(ctx, start, count_from) => out,
            () = self.count_rest(ctx, count_at) => unreachable!("the count waits once it is done"),
        }
    }

    /// The node's count of what a catch-up has left after its first page, asked while
    /// the next pages go (the count reads the rest of the node's log, which would hold
    /// up the first page); the meter's total becomes what had moved with the first page
    /// plus the count. Waits forever after: the catch-up drops it when it ends.
    async fn count_rest(
        &self,
        ctx: &LinkCtx<C::Remote>,
        at: tokio::sync::oneshot::Receiver<CountFrom>,
    ) {
        if let Ok(c) = at.await
            // A page of one entry from there, and the count after it: together, all
            // that is left (the page holds the entry only when it is in scope and not
            // known already, as the count counts).
            && let Ok(Ok(h)) = self.read_page(ctx, (c.after, 1), true).await
            && let (LogPageReply::Page(page), Some(rest)) = (&h.reply, h.extent.remaining)
        {
            let blobs = blobs_to_fetch(&self.inner.config, page, rest.blob_bytes);
            let bytes: u64 = page
                .entries
                .iter()
                .map(|e| item_bytes(&e.item.message, e.item.data.as_deref()))
                .sum();
            ctx.meters.pull.expect_since(
                c.mark,
                page.entries.len() as u64 + rest.messages,
                bytes + rest.bytes + blobs,
            );
        }
        std::future::pending::<()>().await;
    }

    async fn read_and_apply(
        &self,
        ctx: &LinkCtx<C::Remote>,
        start: DirectionCheckpoint,
        count_from: tokio::sync::oneshot::Sender<CountFrom>,
    ) -> Result<CatchUpOutcome> {
        let mut count_from = Some(count_from);
        let cfg = &self.inner.config;
        let key = &ctx.key;
        let limit = cfg.page_entries.clamp(1, LOG_PAGE_ENTRIES_MAX);
        let mut cursor = PullCursor::new(start, limit, STALLED_PAGES_MAX);
        let mut out = CatchUpOutcome {
            checkpoint: start.contiguous_applied,
            ..CatchUpOutcome::default()
        };
        // The page read ahead while the previous one applied, with its request.
        let mut ahead: Option<(PageAt, Reply)> = None;
        while out.pages < cfg.catch_up_pages_max as u64 {
            let at = cursor.request();
            // What this replica pushed is left out of the page (no echo). How much is
            // left is asked beside the pages, after the first (`count_rest`).
            let reply = match ahead.take() {
                Some((read, reply)) if read == at => reply,
                _ => self.read_page(ctx, at, false).await?,
            };
            let (mut page, extent) = match reply {
                Ok(h) => match h.reply {
                    LogPageReply::Page(page) => (page, h.extent),
                    LogPageReply::Gap(gap) => {
                        self.replica().emit(SyncEvent::GapDetected {
                            link: key.clone(),
                            gap: gap.clone(),
                        });
                        out.stop = Some(CatchUpStop::Gap(gap));
                        return Ok(out);
                    }
                },
                Err(e) if too_large(&e) && cursor.shrink() => continue,
                Err(e) => return Err(e.into()),
            };
            out.pages += 1;
            out.duplicates_dropped += cursor.accept(&mut page)?;
            let span = tracing::debug_span!("page", entries = page.entries.len());
            let applying = self.gate_and_apply(ctx, &page).instrument(span);
            // The next page travels while this one applies (pipelined, one page ahead).
            let next = cursor
                .ahead(&page)
                .filter(|_| out.pages < cfg.catch_up_pages_max as u64);
            let applied = match next {
                Some(next) => {
                    let (applied, read) =
                        futures_util::future::join(applying, self.read_page(ctx, next, false))
                            .await;
                    // A local failure to read ahead (the known ranges) is met again when
                    // the page is asked for; the remote's answer, error or not, is kept.
                    if let Ok(reply) = read {
                        ahead = Some((next, reply));
                    }
                    applied
                }
                None => applying.await,
            };
            let (outcomes, gated, traffic) = applied?;
            out.dead_lettered += gated.iter().filter(|g| **g).count() as u64;
            out.applied += outcomes
                .iter()
                .filter(|o| **o == ApplyOutcome::Applied)
                .count() as u64;

            let prefix = settled_prefix(
                page.entries
                    .iter()
                    .zip(&outcomes)
                    .map(|(e, o)| (e.token, settle(o))),
                page.next,
            );
            // Refusals in the prefix are dead letters (the gate recorded its own).
            for ((e, o), gated) in page
                .entries
                .iter()
                .zip(&outcomes)
                .zip(&gated)
                .take(prefix.settled)
            {
                if settle(o) == Settle::Failed && !gated {
                    self.record_dead_letter(
                        key,
                        &e.item.message,
                        DeadLetterCategory::PullProcessing,
                        Some(o.as_str().into()),
                        o.to_string(),
                    )?;
                    out.dead_lettered += 1;
                }
            }
            // The first unsettled entry stops the catch-up; a dependency the scope
            // forbids can never arrive, so it stops the link for good.
            let mut terminal = None;
            if !prefix.complete {
                let (e, o) = (&page.entries[prefix.settled], &outcomes[prefix.settled]);
                if let ApplyOutcome::Incomplete { missing } = o
                    && let Some(f) = forbidden_dependency(
                        self.replica(),
                        &key.tenant,
                        &ctx.scope,
                        &e.item.message,
                        missing,
                    )?
                {
                    out.dead_lettered += 1;
                    terminal = Some(self.closure_failure(key, &e.item.message, f)?);
                }
                out.stop = Some(CatchUpStop::Unsettled {
                    cid: e.item.message.cid(),
                    outcome: o.clone(),
                });
            }
            out.received += traffic;
            let (moved, next) = cursor.advance(&page, prefix)?;
            if let Some(before) = moved {
                self.save_checkpoint(key, Direction::Pull, before, cursor.checkpoint(), traffic)?;
                if let Some(t) = cursor.checkpoint().contiguous_applied {
                    self.forget_known_through(key, t)?;
                }
            }
            out.checkpoint = cursor.checkpoint().contiguous_applied;
            // The total: the first page is all of it, or the node counts the rest
            // beside the next pages (`count_rest`). A node asked for no count answers
            // none (`extent.remaining`), but one that counts anyway is heard.
            if out.pages == 1 && extent.remaining.is_none() {
                let blobs = blobs_to_fetch(cfg, &page, 0);
                let meter = &ctx.meters.pull;
                if page.has_more {
                    let (m, b) = meter.moved_so_far();
                    if let Some(tx) = count_from.take() {
                        let _ = tx.send(CountFrom {
                            after: page.next,
                            mark: (m + traffic.messages, b + traffic.bytes + blobs),
                        });
                    }
                } else {
                    meter.expect(traffic.messages, traffic.bytes + blobs);
                }
            }
            if let Some(rest) = extent.remaining {
                // This page and the rest; their blobs are downloaded after the pages.
                let blobs = blobs_to_fetch(cfg, &page, rest.blob_bytes);
                ctx.meters.pull.expect(
                    rest.messages + traffic.messages,
                    rest.bytes + traffic.bytes + blobs,
                );
            }
            ctx.meters.pull.moved(traffic.messages, traffic.bytes);
            if let Some(e) = terminal {
                return Err(e);
            }
            match next {
                Next::Read => {}
                Next::Stop => return Ok(out),
                Next::Head => {
                    out.reached_head = true;
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Reads the page of the remote log at `at` (from, limit), without what this
    /// replica pushed (no echo), with the log's extent (and what is left after the
    /// page when `count_remaining`). The outer error is local (reading the known
    /// ranges).
    async fn read_page(
        &self,
        ctx: &LinkCtx<C::Remote>,
        at: PageAt,
        count_remaining: bool,
    ) -> Result<Reply> {
        let (from, limit) = at;
        let key = &ctx.key;
        let page = LogPageRequest {
            tenant: key.tenant.clone(),
            scope: ctx.scope.clone(),
            from,
            filter: LogFilter::default(),
            limit,
        };
        let known = self.known_after(key, from)?;
        Ok(ctx
            .remote
            .log_page_head(HeadLogPageRequest {
                page,
                known,
                count_remaining,
            })
            .await)
    }

    /// Gates every entry of `page` against the link's scope (a refused one is
    /// dead-lettered and answered `Unauthorized`, marked in the second vector) and
    /// applies the rest; one outcome per entry, and the traffic the page carried.
    async fn gate_and_apply(
        &self,
        ctx: &LinkCtx<C::Remote>,
        page: &LogPage,
    ) -> Result<(Vec<ApplyOutcome>, Vec<bool>, Traffic)> {
        let mut traffic = Traffic::default();
        let mut gated = vec![false; page.entries.len()];
        let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; page.entries.len()];
        let mut to_apply = Vec::new();
        let mut apply_index = Vec::new();
        let gate = Gate::new(page.entries.iter().map(|e| &e.item.message));
        for (i, e) in page.entries.iter().enumerate() {
            traffic.messages += 1;
            traffic.bytes += item_bytes(&e.item.message, e.item.data.as_deref());
            match gate.classify(self.replica(), &ctx.key.tenant, &ctx.scope, &e.item.message)? {
                // Fails closed: not applied, dead-lettered, settled in order.
                class @ (ScopeClass::OutOfScope | ScopeClass::Unknown) => {
                    self.scope_rejected(&ctx.key, &e.item.message, class)?;
                    gated[i] = true;
                    outcomes[i] = Some(ApplyOutcome::Unauthorized);
                }
                ScopeClass::InScope => {
                    apply_index.push(i);
                    to_apply.push((e.item.message.clone(), e.item.data.clone()));
                }
            }
        }
        // A staged record's blob (wanted by `apply_remote`) is fetched after the pages,
        // outside the link's lock, so small messages are never held up behind it.
        let applied = self.apply_remote(ctx, to_apply).await?;
        if applied.len() != apply_index.len() {
            return Err(Error::Task(
                "apply returned the wrong number of outcomes".into(),
            ));
        }
        for (i, o) in apply_index.into_iter().zip(applied) {
            outcomes[i] = Some(o);
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(ApplyOutcome::Deferred))
            .collect();
        Ok((outcomes, gated, traffic))
    }
}

/// The blob bytes a catch-up downloads after its pages for `page` and `rest` bytes more
/// (none when it fetches no blobs).
fn blobs_to_fetch(cfg: &SyncConfig, page: &LogPage, rest: u64) -> u64 {
    if cfg.blob_fetch {
        rest + page_blob_bytes(page)
    } else {
        0
    }
}

/// The sizes of the blobs a page's messages reference.
fn page_blob_bytes(page: &LogPage) -> u64 {
    page.entries
        .iter()
        .filter_map(|e| big_data(&e.item.message))
        .map(|(_, size)| size)
        .sum()
}
