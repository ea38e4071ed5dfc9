//! Catch-up: reading the remote log from the pull checkpoint and applying it.

use sync_transport::Remote;
use sync_transport::proto::{LOG_PAGE_ENTRIES_MAX, LogFilter, LogPageReply, LogPageRequest};
use sync_types::{ApplyOutcome, DeadLetterCategory, Direction, LinkKey, ScopeClass, SyncEvent};

use crate::closure::{Gate, forbidden_dependency};
use crate::error::{Error, Result};

use super::{
    CatchUpOutcome, CatchUpStop, Connector, Engine, LinkCtx, STALLED_PAGES_MAX, Settle, Traffic,
    item_bytes, settle, too_large,
};

impl<C: Connector> Engine<C> {
    /// Reads the remote log from the link's pull checkpoint and applies it; see the
    /// [module docs](crate::sync).
    pub async fn catch_up(&self, link: &LinkKey) -> Result<CatchUpOutcome> {
        let ctx = self.link_ctx(link)?;
        let guard = self.lock_link(link).await;
        let mut out = self.catch_up_locked(&ctx).await?;
        drop(guard);
        out.blobs_fetched += self.fetch_staged_after(ctx).await?;
        Ok(out)
    }

    pub(super) async fn catch_up_locked(&self, ctx: &LinkCtx<C::Remote>) -> Result<CatchUpOutcome> {
        let cfg = &self.inner.config;
        let key = &ctx.key;
        let mut cp = self.load(key)?.pull;
        let mut out = CatchUpOutcome {
            checkpoint: cp.contiguous_applied,
            ..CatchUpOutcome::default()
        };
        let mut limit = cfg.page_entries.clamp(1, LOG_PAGE_ENTRIES_MAX);
        let mut stalls = 0;
        while out.pages < cfg.catch_up_pages_max as u64 {
            let from = cp.contiguous_applied;
            let req = LogPageRequest {
                tenant: key.tenant.clone(),
                scope: ctx.scope.clone(),
                from,
                filter: LogFilter::default(),
                limit,
            };
            let page = match ctx.remote.log_page(req).await {
                Ok(LogPageReply::Page(page)) => page,
                Ok(LogPageReply::Gap(gap)) => {
                    self.replica().emit(SyncEvent::GapDetected {
                        link: key.clone(),
                        gap: gap.clone(),
                    });
                    out.stop = Some(CatchUpStop::Gap(gap));
                    return Ok(out);
                }
                Err(e) if limit > 1 && too_large(&e) => {
                    limit /= 2;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            out.pages += 1;
            // Every token must belong to the checkpoint's log. Entries at or before what
            // was already delivered (a repeated page, a duplicate across a page boundary
            // or inside a page) are dropped: they are settled already.
            let mut page = page;
            let mut prev = from;
            let mut entries = Vec::with_capacity(page.entries.len());
            for e in page.entries {
                if !cp.accepts_domain(&e.token) {
                    return Err(Error::Protocol(format!(
                        "log page entry {} is from another log than the checkpoint",
                        e.token
                    )));
                }
                if prev.is_none_or(|p| e.token.compare(&p) == Some(std::cmp::Ordering::Greater)) {
                    prev = Some(e.token);
                    entries.push(e);
                } else {
                    out.duplicates_dropped += 1;
                }
            }
            page.entries = entries;
            if let Some(next) = page.next
                && !cp.accepts_domain(&next)
            {
                return Err(Error::Protocol(format!(
                    "log page cursor {next} is from another log than the checkpoint"
                )));
            }
            // A cursor behind the entries (a repeated page) moves nothing back.
            if page.next.is_some_and(|n| {
                prev.is_some_and(|p| n.compare(&p) == Some(std::cmp::Ordering::Less))
            }) {
                page.next = prev;
            }

            // Gate, then apply what is in scope.
            let mut traffic = Traffic::default();
            let mut gated = vec![false; page.entries.len()];
            let mut outcomes: Vec<Option<ApplyOutcome>> = vec![None; page.entries.len()];
            let mut to_apply = Vec::new();
            let mut apply_index = Vec::new();
            let gate = Gate::new(page.entries.iter().map(|e| &e.item.message));
            for (i, e) in page.entries.iter().enumerate() {
                traffic.messages += 1;
                traffic.bytes += item_bytes(&e.item.message, e.item.data.as_deref());
                match gate.classify(self.replica(), &key.tenant, &ctx.scope, &e.item.message)? {
                    // Fails closed: not applied, dead-lettered, settled in order.
                    class @ (ScopeClass::OutOfScope | ScopeClass::Unknown) => {
                        self.scope_rejected(key, &e.item.message, class)?;
                        out.dead_lettered += 1;
                        gated[i] = true;
                        outcomes[i] = Some(ApplyOutcome::Unauthorized);
                    }
                    ScopeClass::InScope => {
                        apply_index.push(i);
                        to_apply.push((e.item.message.clone(), e.item.data.clone()));
                    }
                }
            }
            let applied = self.apply_remote(ctx, to_apply).await?;
            if applied.len() != apply_index.len() {
                return Err(Error::Task(
                    "apply returned the wrong number of outcomes".into(),
                ));
            }
            for (i, o) in apply_index.into_iter().zip(applied) {
                outcomes[i] = Some(o);
            }
            // A staged record's blob (wanted by `apply_remote`) is fetched after the
            // pages, outside the link's lock, so small messages are never held up behind
            // it.
            out.applied += outcomes
                .iter()
                .filter(|o| **o == Some(ApplyOutcome::Applied))
                .count() as u64;

            // Move the checkpoint over the settled prefix.
            let mut last_settled = None;
            let mut stop = None;
            let mut terminal = None;
            for ((e, o), gated) in page.entries.iter().zip(outcomes).zip(gated) {
                let o = o.expect("every entry has an outcome");
                match settle(&o) {
                    Settle::Done => {}
                    Settle::Failed => {
                        if !gated {
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
                    Settle::Open => {
                        // A dependency the scope forbids can never arrive: stop for good.
                        if let ApplyOutcome::Incomplete { missing } = &o
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
                        stop = Some(CatchUpStop::Unsettled {
                            cid: e.item.message.cid(),
                            outcome: o,
                        });
                        break;
                    }
                }
                last_settled = Some(e.token);
            }
            let target = if stop.is_none() {
                page.next.or(last_settled)
            } else {
                last_settled
            };
            if let Some(last) = page.entries.last() {
                cp.observe_received(last.token);
            }
            out.received += traffic;
            if let Some(t) = target
                && cp.contiguous_applied != Some(t)
            {
                cp.commit(t);
                self.save_checkpoint(key, Direction::Pull, cp, traffic)?;
            }
            out.checkpoint = cp.contiguous_applied;
            self.progress(key, Direction::Pull, out.received);
            if let Some(e) = terminal {
                return Err(e);
            }
            if stop.is_some() {
                out.stop = stop;
                return Ok(out);
            }
            if !page.has_more {
                out.reached_head = true;
                return Ok(out);
            }
            if cp.contiguous_applied == from {
                stalls += 1;
                if stalls > STALLED_PAGES_MAX {
                    return Err(Error::Protocol(
                        "log pages say more follows but do not advance".into(),
                    ));
                }
            } else {
                stalls = 0;
            }
        }
        Ok(out)
    }
}
