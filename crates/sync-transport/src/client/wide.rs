//! Write batches of an [`HttpClient`] sized to what its node accepts: at most
//! [`BATCH_MESSAGES_MAX`] until a reply listed the
//! [`WIDE_BATCH_TOKEN`](crate::proto::WIDE_BATCH_TOKEN), then up to
//! [`BATCH_MESSAGES_WIDE_MAX`]. A larger batch than the node is known to take goes in
//! parts, one after the other; a node that refuses a wide batch as a bad frame (one
//! replaced by an older node since it said it takes them) is sent it again in parts of
//! [`BATCH_MESSAGES_MAX`], so an old node never stores half a batch it cannot read and
//! the caller sees one outcome per message either way.

use futures_util::future::BoxFuture;

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::proto::{BATCH_MESSAGES_MAX, BATCH_MESSAGES_WIDE_MAX};

impl HttpClient {
    /// Most messages a write batch to this node may hold now.
    pub(super) fn node_batch_messages_max(&self) -> usize {
        if self.node_reads_wide.load(Ordering::Relaxed) {
            BATCH_MESSAGES_WIDE_MAX
        } else {
            BATCH_MESSAGES_MAX
        }
    }

    /// Sends a write batch, placed (with the log positions, see
    /// [`Remote::write_batch_placed`]) when `placed` and the node knows the call, in parts
    /// when it holds more than the node takes.
    pub(super) async fn send_batch(
        &self,
        req: WriteBatchRequest,
        placed: bool,
    ) -> Result<PlacedBatchReply, TransportError> {
        let max = self.node_batch_messages_max();
        if req.messages.len() > max {
            return self.send_in_parts(req, placed, max).await;
        }
        let wide = req.messages.len() > BATCH_MESSAGES_MAX;
        let placed_call = placed && !self.legacy.load(Ordering::Relaxed);
        let request = if placed_call {
            Request::WriteBatchPlaced(req)
        } else {
            Request::WriteBatch(req)
        };
        match self.call(&request, false).await {
            // The node no longer takes wide batches (it read none of this one).
            Err(e) if wide && is_unknown_request(&e) => {
                self.node_reads_wide.store(false, Ordering::Relaxed);
                let (Request::WriteBatch(req) | Request::WriteBatchPlaced(req)) = request else {
                    unreachable!("built above")
                };
                self.send_in_parts(req, placed, BATCH_MESSAGES_MAX).await
            }
            // An older node does not know the placed call: plain write batches, for good.
            Err(e) if placed_call && is_unknown_request(&e) => {
                self.legacy.store(true, Ordering::Relaxed);
                let Request::WriteBatchPlaced(req) = request else {
                    unreachable!("built above")
                };
                self.send_batch_boxed(req, placed).await
            }
            reply if placed_call => expect_reply!(reply?, WriteBatchPlaced, "placed write batch"),
            reply => {
                let reply = expect_reply!(reply?, WriteBatch, "write batch")?;
                Ok(PlacedBatchReply {
                    outcomes: reply.outcomes,
                    placed: None,
                })
            }
        }
    }

    /// [`send_batch`](Self::send_batch) behind a pointer, for its recursion.
    fn send_batch_boxed(
        &self,
        req: WriteBatchRequest,
        placed: bool,
    ) -> BoxFuture<'_, Result<PlacedBatchReply, TransportError>> {
        Box::pin(self.send_batch(req, placed))
    }

    /// `req` in batches of at most `max` messages, one after the other; the outcomes in
    /// order and the positions of all of them. A failed part fails the whole (the
    /// caller sends it again, and what the parts before applied comes back duplicate).
    async fn send_in_parts(
        &self,
        req: WriteBatchRequest,
        placed: bool,
        max: usize,
    ) -> Result<PlacedBatchReply, TransportError> {
        let max = max.max(1);
        let mut out = PlacedBatchReply {
            outcomes: Vec::with_capacity(req.messages.len()),
            placed: None,
        };
        let mut rest = req.messages;
        while !rest.is_empty() {
            let tail = rest.split_off(max.min(rest.len()));
            let part = WriteBatchRequest {
                tenant: req.tenant.clone(),
                messages: std::mem::replace(&mut rest, tail),
            };
            let reply = self.send_batch_boxed(part, placed).await?;
            out.outcomes.extend(reply.outcomes);
            match (&mut out.placed, reply.placed) {
                (Some(all), Some(more)) => all.merge(&more),
                (all @ None, Some(more)) => *all = Some(more),
                (_, None) => {}
            }
        }
        Ok(out)
    }
}
