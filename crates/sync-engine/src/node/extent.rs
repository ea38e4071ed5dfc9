//! The extent of a tenant's log for a page reader: its head, and what is left after a
//! page (entries, bytes and blob bytes in the reader's scope and filter, without the
//! positions it holds), so a catch-up knows its total from its first page.

use sync_ledger::{LogQuery, LogRead};
use sync_transport::HandlerError;
use sync_transport::LogExtentQuery;
use sync_transport::proto::{LOG_COUNT_ENTRIES_MAX, LogExtent, LogRemaining};
use sync_types::{Direction, Message, ScopeClass, codec};

use super::{ReplicaHandler, in_filter, internal, single_protocol};

/// Entries read per step of a count.
const COUNT_PAGE_ENTRIES: usize = sync_ledger::LOG_PAGE_ENTRIES_MAX;

impl ReplicaHandler {
    /// See [`sync_transport::Handler::log_extent`]. The count reads the log after the
    /// page once (a cost of the order of serving the rest of the catch-up, paid once
    /// per catch-up); past [`LOG_COUNT_ENTRIES_MAX`] entries it gives up and answers
    /// no count.
    pub(super) fn extent(&self, q: &LogExtentQuery) -> Result<LogExtent, HandlerError> {
        let ledger = self.replica.ledger();
        let tenant = &q.req.tenant;
        let head = ledger.log_head(tenant).map_err(internal)?;
        if !q.count {
            return Ok(LogExtent {
                head,
                remaining: None,
            });
        }
        let mut remaining = LogRemaining::default();
        let mut scanned = 0u64;
        let mut from = q.after;
        loop {
            let mut query = LogQuery::after(from, COUNT_PAGE_ENTRIES);
            query.protocol = single_protocol(&q.req);
            let page = match ledger.read_log(tenant, &query).map_err(internal)? {
                LogRead::Page(page) => page,
                // Compacted under the count: nothing sure to say.
                LogRead::Gap(_) => {
                    return Ok(LogExtent {
                        head,
                        remaining: None,
                    });
                }
            };
            for entry in &page.entries {
                scanned += 1;
                if q.known.as_ref().is_some_and(|k| k.contains(&entry.token))
                    || !in_filter(&q.req.filter, &entry.message)
                    || self.classify(tenant, &q.req.scope, Direction::Pull, &entry.message)?
                        != ScopeClass::InScope
                {
                    continue;
                }
                remaining.messages += 1;
                remaining.bytes += (codec::encoded_len(&entry.message)
                    + entry.data.as_ref().map_or(0, Vec::len))
                    as u64;
                remaining.blob_bytes += blob_bytes(&entry.message);
            }
            if !page.has_more || page.next == from {
                return Ok(LogExtent {
                    head,
                    remaining: Some(remaining),
                });
            }
            if scanned >= LOG_COUNT_ENTRIES_MAX {
                return Ok(LogExtent {
                    head,
                    remaining: None,
                });
            }
            from = page.next;
        }
    }
}

/// The size of the blob a message references, when its data is not inline.
fn blob_bytes(message: &Message) -> u64 {
    match message {
        Message::Write(w) => w.data.filter(|d| !d.is_inline()).map_or(0, |d| d.size),
        _ => 0,
    }
}
