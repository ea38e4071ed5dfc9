//! The subscription reader of one link: forwards what the node sends to the driver, and
//! stops reading while the link has as many deliveries in flight as it may.
//!
//! Each entry it forwards carries a permit of the subscription's semaphore, which has
//! [`LinkConfig::in_flight_deliveries_max`](crate::machine::LinkConfig) permits. The
//! driver keeps the permits of the deliveries its machine still counts in flight and
//! drops them as the machine's checkpoint moves past them, so a burst larger than the
//! limit (a backlog after the node's database came back, another replica's large push)
//! waits in the subscription instead of sending the link to repair. A reader that waits
//! too long is the node's to close (`Lagged`), which costs a reconnect from the durable
//! checkpoint.

use std::sync::Arc;

use sync_ledger::LogEntry;
use sync_transport::SubscriptionItem;
use sync_transport::proto::CloseReason;
use sync_types::{LinkKey, LinkState, ProgressToken};
use tokio::sync::{Semaphore, mpsc};

use super::{Event, FeedItem, LinkOps, LiveFeed};
use crate::machine::{LinkError, LinkErrorKind, SubscriptionEnd, SubscriptionId};

/// Opens the subscription of `key` from `from` and forwards its items as
/// [`Event::Feed`] until it ends, the driver is gone, or the task is aborted.
pub(super) async fn read<O: LinkOps>(
    ops: Arc<O>,
    tx: mpsc::UnboundedSender<Event>,
    (key, incarnation, id): (LinkKey, u64, SubscriptionId),
    state: LinkState,
    from: Option<ProgressToken>,
    in_flight_max: usize,
) {
    let send = |item| {
        tx.send(Event::Feed(key.clone(), incarnation, id, item))
            .is_ok()
    };
    let mut feed = match ops.subscribe(state, from).await {
        Ok(feed) => feed,
        Err(e) => {
            tracing::debug!(error = %e, "subscription could not open");
            send(FeedItem::End(SubscriptionEnd::Disconnected));
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(in_flight_max.max(1)));
    loop {
        let item = match feed.next().await {
            Some(SubscriptionItem::Event(e)) => {
                // Never closed, so this only waits.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let entry = LogEntry {
                    token: e.token,
                    message: e.item.message,
                    data: e.item.data,
                };
                FeedItem::Entry(Box::new(entry), permit)
            }
            Some(SubscriptionItem::EndOfStored { cursor }) => FeedItem::EndOfStored(cursor),
            Some(SubscriptionItem::Gap(gap)) => FeedItem::End(SubscriptionEnd::Gap(gap)),
            Some(SubscriptionItem::Closed(reason)) => FeedItem::End(end_of(reason)),
            None => FeedItem::End(SubscriptionEnd::Disconnected),
        };
        let last = matches!(item, FeedItem::End(_));
        if !send(item) || last {
            return;
        }
    }
}

/// A lagging subscriber, a heartbeat timeout, a node going away (shutting down, or
/// killed: its connection reset or closed without a word) or a node that cannot read
/// its log for now (its database restarting) cost a reconnect from the durable
/// checkpoint; expired credentials and handler errors send the link to repair.
fn end_of(reason: CloseReason) -> SubscriptionEnd {
    match reason {
        CloseReason::Lagged { .. }
        | CloseReason::HeartbeatTimeout
        | CloseReason::ShuttingDown
        | CloseReason::ConnectionLost { .. }
        | CloseReason::Unavailable { .. } => SubscriptionEnd::Disconnected,
        other => {
            SubscriptionEnd::Error(LinkError::new(LinkErrorKind::Refused, format!("{other:?}")))
        }
    }
}
