//! Applying what came from a link's endpoint, and remembering it for echo suppression.

use std::collections::BTreeMap;

use sync_types::{ApplyOutcome, LinkKey, Message};

use crate::error::{Error, Result};
use crate::replica::Origin;

use super::blobs::big_data;
use super::{Connector, ECHO_RANGES_MAX, Engine, LIVE_APPLY_INLINE_LEN_MAX, LinkCtx, lock};

/// Local log positions applied from one endpoint, as inclusive ranges.
#[derive(Debug, Default)]
pub(super) struct Echoes {
    pub(super) ranges: BTreeMap<u64, u64>,
}

impl Echoes {
    pub(super) fn contains(&self, position: u64) -> bool {
        self.ranges
            .range(..=position)
            .next_back()
            .is_some_and(|(_, &end)| position <= end)
    }

    pub(super) fn insert(&mut self, position: u64) {
        if self.contains(position) {
            return;
        }
        let mut start = position;
        let mut end = position;
        if let Some((&s, &e)) = self.ranges.range(..position).next_back()
            && e.checked_add(1) == Some(position)
        {
            start = s;
        }
        if let Some(next) = position.checked_add(1)
            && let Some(e) = self.ranges.remove(&next)
        {
            end = e;
        }
        self.ranges.insert(start, end);
        while self.ranges.len() > ECHO_RANGES_MAX {
            self.ranges.pop_first();
        }
    }
}

impl<C: Connector> Engine<C> {
    /// Applies messages from the link's endpoint on the blocking pool and remembers the
    /// local positions they got, for echo suppression.
    pub(super) async fn apply_remote(
        &self,
        ctx: &LinkCtx<C::Remote>,
        items: Vec<(Message, Option<Vec<u8>>)>,
    ) -> Result<Vec<ApplyOutcome>> {
        self.apply_from(&ctx.key, items, false).await
    }

    /// Applies messages pulled from `link`'s endpoint and remembers their local
    /// positions as echoes. On a store whose commits never block (in memory) and with
    /// `inline` set, the apply runs on the calling task; otherwise on tokio's blocking
    /// pool.
    pub(super) async fn apply_from(
        &self,
        link: &LinkKey,
        items: Vec<(Message, Option<Vec<u8>>)>,
        inline: bool,
    ) -> Result<Vec<ApplyOutcome>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let replica = self.replica().clone();
        let tenant = link.tenant.clone();
        let origin = Origin::Remote(Some(link.endpoint.clone()));
        let now = self.now_ms();
        let apply = move || {
            // A blob is recorded as wanted before the message that stages its record is
            // applied: commits persist in order, so a power loss that keeps the staged
            // record keeps the wanted entry, and the blob is still fetched after a
            // restart. (Wanting the blob of a message that turns out superseded costs
            // one download; the collector removes the unreferenced blob.)
            let blobs = replica.ledger().blobs();
            for (message, _) in &items {
                if let Some((cid, size)) = big_data(message) {
                    blobs.want(&cid, size, now)?;
                }
            }
            replica.apply_with_positions(&tenant, items, origin)
        };
        let applied = if inline && !self.replica().ledger().store().commit_may_block() {
            apply()?
        } else {
            tokio::task::spawn_blocking(apply)
                .await
                .map_err(Error::from)??
        };
        let mut echoes = lock(&self.inner.echoes);
        let echoes = echoes.entry(link.endpoint.clone()).or_default();
        let outcomes = applied
            .into_iter()
            .map(|(outcome, token)| {
                if let Some(token) = token {
                    echoes.insert(token.position);
                }
                outcome
            })
            .collect();
        Ok(outcomes)
    }

    /// Applies one live event from `link`'s endpoint and remembers its local position, so
    /// the push never echoes it back to that endpoint.
    pub async fn apply_live(
        &self,
        link: &LinkKey,
        message: Message,
        data: Option<Vec<u8>>,
    ) -> Result<ApplyOutcome> {
        let outcomes = self.apply_live_batch(link, vec![(message, data)]).await?;
        Ok(outcomes
            .into_iter()
            .next()
            .unwrap_or(ApplyOutcome::Deferred))
    }

    /// Applies live events from `link`'s endpoint in one ledger commit (ordered by their
    /// dependencies, as any batch), one outcome per event in the order given, and
    /// remembers their local positions so the push never echoes them back.
    ///
    /// The link is checked as for any operation (registered, grants not expired, not
    /// `terminal_incomplete`), but no connection is made. On an in-memory store, and for
    /// at most [`LIVE_APPLY_INLINE_LEN_MAX`] events, the apply runs on the calling task:
    /// it never waits on I/O, and a blocking-pool round trip per live event costs more
    /// than the apply (`BENCHMARKS.md`, fan-out round 3).
    pub async fn apply_live_batch(
        &self,
        link: &LinkKey,
        items: Vec<(Message, Option<Vec<u8>>)>,
    ) -> Result<Vec<ApplyOutcome>> {
        self.check_live_link(link)?;
        let inline = items.len() <= LIVE_APPLY_INLINE_LEN_MAX;
        self.apply_from(link, items, inline).await
    }
}
