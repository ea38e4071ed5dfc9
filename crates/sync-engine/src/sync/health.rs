//! Health: what is pending, whether a link is caught up, dead letters.

use std::collections::BTreeSet;

use sync_ledger::DeadLetterFilter;
use sync_transport::Remote;
use sync_transport::proto::{LOG_PAGE_ENTRIES_MAX, LogFilter, LogPageReply, LogPageRequest};
use sync_types::{
    Connectivity, DeadLetter, DeadLetterCategory, HealthSummary, LinkCounters, LinkKey, LinkState,
};

use crate::error::Result;

use super::{Connector, Engine};

impl<C: Connector> Engine<C> {
    /// Local log entries after the link's push checkpoint that its scope may cover
    /// (for a projection, every entry of its protocols: an upper bound).
    pub fn pending_outbound(&self, link: &LinkKey) -> Result<u64> {
        let state = self.load(link)?;
        self.pending_of(&state)
    }

    pub(super) fn pending_of(&self, state: &LinkState) -> Result<u64> {
        let ledger = self.ledger();
        let tenant = &state.key.tenant;
        let Some(info) = ledger.log_info(tenant)? else {
            return Ok(0);
        };
        let after = state
            .push
            .contiguous_applied
            .filter(|t| t.stream_id == info.stream_id && t.epoch == info.epoch)
            .map_or(0, |t| t.position);
        match state.scope.protocol_list() {
            None => Ok(ledger.count_log_after(tenant, after, None)?),
            Some(protocols) => {
                let mut n = 0;
                let mut seen = BTreeSet::new();
                for p in protocols {
                    if seen.insert(p) {
                        n += ledger.count_log_after(tenant, after, Some(p))?;
                    }
                }
                Ok(n)
            }
        }
    }

    /// Running totals over every registered link (messages and bytes pulled and pushed,
    /// live deliveries and reconcile traffic included; repairs; failures), for an
    /// application to export as metrics. Each link's own totals are in its
    /// [`LinkState`] ([`links`](Self::links)).
    pub fn counters(&self) -> Result<LinkCounters> {
        let mut sum = LinkCounters::default();
        for l in self.links()? {
            let c = l.counters;
            sum.messages_pulled += c.messages_pulled;
            sum.messages_pushed += c.messages_pushed;
            sum.bytes_pulled += c.bytes_pulled;
            sum.bytes_pushed += c.bytes_pushed;
            sum.repairs += c.repairs;
            sum.failures += c.failures;
        }
        Ok(sum)
    }

    /// Replication health over every registered link.
    pub fn health(&self) -> Result<HealthSummary> {
        let links = self.links()?;
        let connectivity = if links.iter().any(|l| l.connectivity == Connectivity::Online) {
            Connectivity::Online
        } else if links
            .iter()
            .any(|l| l.connectivity == Connectivity::Offline)
        {
            Connectivity::Offline
        } else {
            Connectivity::Unknown
        };
        let letters = self.ledger().dead_letters();
        let failed = letters.count(&DeadLetterFilter::default())?;
        let closure = letters.count(&DeadLetterFilter {
            categories: vec![DeadLetterCategory::Closure],
            ..DeadLetterFilter::default()
        })?;
        let degraded = links.iter().filter(|l| l.status.is_unhealthy()).count() as u64;
        let mut pending = 0;
        for l in &links {
            pending += self.pending_of(l)?;
        }
        let last_sync = links.iter().filter_map(|l| l.last_sync_ms).max();
        Ok(HealthSummary::new(
            connectivity,
            failed,
            closure,
            degraded,
            pending,
            last_sync,
        ))
    }

    /// Whether the link is caught up now: nothing local waits to be pushed, and
    /// everything the remote logged after the pull checkpoint is already held locally
    /// (typically this replica's own pushes, which the next catch-up skips over). The
    /// remote is asked, so it never answers early.
    pub async fn caught_up(&self, link: &LinkKey) -> Result<bool> {
        let ctx = self.link_ctx(link)?;
        let state = self.load(link)?;
        if self.pending_of(&state)? > 0 {
            return Ok(false);
        }
        let mut from = state.pull.contiguous_applied;
        for _ in 0..self.inner.config.catch_up_pages_max {
            let reply = ctx
                .remote
                .log_page(LogPageRequest {
                    tenant: link.tenant.clone(),
                    scope: ctx.scope.clone(),
                    from,
                    filter: LogFilter::default(),
                    limit: self
                        .inner
                        .config
                        .page_entries
                        .clamp(1, LOG_PAGE_ENTRIES_MAX),
                })
                .await?;
            let LogPageReply::Page(page) = reply else {
                return Ok(false);
            };
            for e in &page.entries {
                if !self.ledger().has_message(&link.tenant, &e.token.cid)? {
                    return Ok(false);
                }
            }
            if !page.has_more {
                return Ok(true);
            }
            if page.next == from {
                return Ok(false);
            }
            from = page.next;
        }
        Ok(false)
    }

    /// The dead letters of every link, newest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        Ok(self
            .ledger()
            .dead_letters()
            .list(&DeadLetterFilter::default())?)
    }
}
