//! Running links: one link (catch-up, push, reconcile when due) and every link.

use sync_transport::TransportError;
use sync_types::{Connectivity, Direction, Endpoint, LinkKey, Scope};

use crate::error::{Error, Result};
use crate::link_news::LinkNews;

use super::round::{CatchUpEnd, Round, RoundStep, reconcile_due};
use super::{
    CatchUpStop, Connector, Engine, LinkCtx, LinkReport, SyncReport, Traffic, is_unreachable, lock,
};

impl<C: Connector> Engine<C> {
    /// Syncs one link: catch-up, push, and a reconcile when due; see the
    /// [module docs](crate::sync).
    pub async fn sync_link(&self, link: &LinkKey) -> LinkReport {
        let mut report = LinkReport::new(link.clone());
        let result = self.sync_link_inner(link, &mut report).await;
        let connectivity = match &result {
            Err(e) if is_unreachable(e) => Connectivity::Offline,
            Err(Error::UnknownLink(_)) => Connectivity::Unknown,
            _ => Connectivity::Online,
        };
        if let Err(e) = self.set_connectivity(link, connectivity) {
            tracing::warn!(link = %link, error = %e, "could not save the link's connectivity");
        }
        if result.is_ok()
            && report.converged() == Some(true)
            && let Err(e) = self.settle_status(link)
        {
            tracing::warn!(link = %link, error = %e, "could not save the link's status");
        }
        if let Err(e) = result {
            tracing::debug!(link = %link, error = %e, "link sync failed");
            report.error = Some(e);
        }
        report
    }

    pub(super) fn set_connectivity(&self, key: &LinkKey, to: Connectivity) -> Result<()> {
        self.report(key, LinkNews::Connectivity(to))
    }

    /// After a one-shot sync that converged: the status [`crate::link_status`] gives.
    pub(super) fn settle_status(&self, key: &LinkKey) -> Result<()> {
        self.report(key, LinkNews::SyncSettled)
    }

    pub(super) async fn sync_link_inner(
        &self,
        key: &LinkKey,
        report: &mut LinkReport,
    ) -> Result<()> {
        let ctx = self.link_ctx(key)?;
        let guard = self.lock_link(key).await;
        self.sync_link_locked(&ctx, report).await?;
        drop(guard);
        // 4. Fetch the blobs of staged records, outside the link's lock.
        let (fetched, bytes) = self.fetch_staged(&ctx).await?;
        if let Some(c) = report.catch_up.as_mut() {
            c.blobs_fetched += fetched;
        }
        report.pulled.blob_bytes += bytes;
        ctx.meters.pull.finish();
        ctx.meters.push.finish();
        Ok(())
    }

    /// One one-shot round over a link, in the order [`Round`] gives.
    pub(super) async fn sync_link_locked(
        &self,
        ctx: &LinkCtx<C::Remote>,
        report: &mut LinkReport,
    ) -> Result<()> {
        let key = &ctx.key;
        let cfg = &self.inner.config;
        let roots_cheap = cfg.verify_roots && !matches!(ctx.scope, Scope::Projection(_));
        let mut round = Round::new(roots_cheap);
        loop {
            match round.poll() {
                RoundStep::CatchUp => {
                    let catch_up = self.catch_up_locked(ctx, self.load(key)?.pull).await?;
                    report.pulled += catch_up.received;
                    round.caught_up(match &catch_up.stop {
                        None => CatchUpEnd::Read,
                        Some(CatchUpStop::Gap(gap)) => CatchUpEnd::Gap(gap.latest_available),
                        Some(CatchUpStop::Unsettled { .. }) => CatchUpEnd::Unsettled,
                    });
                    report.catch_up = Some(catch_up);
                }
                RoundStep::Reconcile => {
                    let reconcile = self.reconcile_locked(ctx).await?;
                    report.pulled += reconcile.pulled;
                    report.pushed += reconcile.pushed;
                    round.reconciled(reconcile.converged);
                    report.reconcile = Some(reconcile);
                }
                RoundStep::ResumePullAt(token) => {
                    let mut cp = self.load(key)?.pull;
                    let before = cp.contiguous_applied;
                    cp.reset(token);
                    self.save_checkpoint(key, Direction::Pull, before, cp, Traffic::default())?;
                }
                RoundStep::Push => {
                    let push = self.push_locked(ctx, self.load(key)?.push).await?;
                    report.pushed += push.sent;
                    report.push = Some(push);
                    let last = lock(&self.inner.last_reconcile_ms).get(key).copied();
                    round.pushed(reconcile_due(
                        &self.load(key)?,
                        last,
                        self.now_ms(),
                        cfg.integrity_check_ms,
                    ));
                }
                RoundStep::Done => return Ok(()),
            }
        }
    }

    /// Syncs every registered link once; see the [module docs](crate::sync). Links are grouped
    /// by endpoint; groups run concurrently, and an unreachable endpoint stops only its
    /// own group. A second call waits for the first.
    pub async fn sync_once(&self) -> SyncReport {
        let _sync = self.inner.sync_lock.lock().await;
        let mut report = SyncReport::default();
        let links = match self.links() {
            Ok(links) => links,
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        };
        let mut groups: Vec<(Endpoint, Vec<LinkKey>)> = Vec::new();
        for link in links {
            match groups.iter_mut().find(|(e, _)| *e == link.key.endpoint) {
                Some((_, keys)) => keys.push(link.key),
                None => groups.push((link.key.endpoint.clone(), vec![link.key])),
            }
        }
        let runs = groups.into_iter().map(|(_, keys)| self.sync_group(keys));
        for (links, ok) in futures_util::future::join_all(runs).await {
            report.links.extend(links);
            if ok {
                report.endpoints_ok += 1;
            } else {
                report.endpoints_failed += 1;
            }
        }
        report
    }

    pub(super) async fn sync_group(&self, keys: Vec<LinkKey>) -> (Vec<LinkReport>, bool) {
        let mut reports = Vec::with_capacity(keys.len());
        let mut keys = keys.into_iter();
        for key in keys.by_ref() {
            let report = self.sync_link(&key).await;
            let unreachable = report.error.as_ref().is_some_and(is_unreachable);
            reports.push(report);
            if unreachable {
                for skipped in keys {
                    let mut r = LinkReport::new(skipped.clone());
                    r.error = Some(Error::Transport(TransportError::Unreachable(format!(
                        "skipped: {} is unreachable",
                        skipped.endpoint
                    ))));
                    reports.push(r);
                }
                return (reports, false);
            }
        }
        (reports, true)
    }
}
