//! The count of what a push has to send, for its meter's total: the local log after
//! the push checkpoint, entry by entry through the push's own classification (echoes
//! and what the scope leaves out are not counted).
//!
//! A short push (its first page is all) counts that page on the spot. A long one counts
//! on the blocking pool while its pages go, so reading the whole outbound log (about
//! 3 µs an entry) never delays the first batch; the total then becomes what had moved
//! when the count began plus what the count found. The count stops when the push ends
//! (its future is dropped, and the blocking read sees the flag at its next page).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sync_ledger::LogRead;
use sync_types::{LinkKey, ProgressToken, Scope};

use crate::error::Result;

use super::blobs::big_data;
use super::{Connector, Engine, LinkCtx};

impl<C: Connector> Engine<C> {
    /// Counts what a push from `from` sends, `first` being its first page: sets the push
    /// meter's total at once for a short push; for a long one, the future runs the count
    /// and sets it when done. The future waits forever after: the push drops it when it
    /// ends.
    pub(super) fn count_beside<'a>(
        &'a self,
        ctx: &'a LinkCtx<C::Remote>,
        from: Option<ProgressToken>,
        first: &LogRead,
    ) -> impl Future<Output = ()> + 'a {
        let meter = &ctx.meters.push;
        let long = match first {
            LogRead::Page(page) if !page.has_more => {
                if let Ok(Some((messages, bytes))) =
                    outbound_extent(self, &ctx.key, &ctx.scope, from, Some(first), None)
                {
                    meter.expect(messages, bytes);
                }
                false
            }
            LogRead::Page(_) => true,
            // A gap: the push deals with it.
            LogRead::Gap(_) => false,
        };
        // What had moved before the push sent anything: the count starts from there.
        let mark = meter.moved_so_far();
        async move {
            if long {
                let stop = Arc::new(AtomicBool::new(false));
                let _stop_on_drop = StopOnDrop(stop.clone());
                let (engine, key, scope) = (self.clone(), ctx.key.clone(), ctx.scope.clone());
                let count = tokio::task::spawn_blocking(move || {
                    outbound_extent(&engine, &key, &scope, from, None, Some(&stop))
                });
                if let Ok(Ok(Some((messages, bytes)))) = count.await {
                    meter.expect_since(mark, messages, bytes);
                }
            }
            std::future::pending::<()>().await;
        }
    }
}

/// Sets the flag when dropped: the push that owned the count has ended.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What a push from `from` has to send, as far as the local log tells: the messages it
/// would send and their bytes, the blobs they name included (some of which the remote
/// may hold already). `first`: the log read from `from` already, counted without reading
/// it again. `None` past [`LOG_COUNT_ENTRIES_MAX`](sync_transport::proto::LOG_COUNT_ENTRIES_MAX)
/// entries, when the log cannot be read from there (a gap: the push deals with it), or
/// when `stop` is set.
fn outbound_extent<C: Connector>(
    engine: &Engine<C>,
    key: &LinkKey,
    scope: &Scope,
    mut from: Option<ProgressToken>,
    mut first: Option<&LogRead>,
    stop: Option<&AtomicBool>,
) -> Result<Option<(u64, u64)>> {
    let (mut messages, mut bytes, mut scanned) = (0u64, 0u64, 0u64);
    let mut read;
    loop {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Ok(None);
        }
        let page = match first.take() {
            Some(LogRead::Page(page)) => page,
            Some(LogRead::Gap(_)) => return Ok(None),
            None => {
                read = engine.replica().changes_since(
                    &key.tenant,
                    from,
                    sync_ledger::LOG_PAGE_ENTRIES_MAX,
                )?;
                match &read {
                    LogRead::Page(page) => page,
                    LogRead::Gap(_) => return Ok(None),
                }
            }
        };
        for e in &page.entries {
            scanned += 1;
            if let Ok(()) = engine.push_class_in(key, scope, e)? {
                messages += 1;
                bytes += super::item_bytes(&e.message, e.data.as_deref())
                    + big_data(&e.message).map_or(0, |(_, size)| size);
            }
        }
        if !page.has_more || page.next == from {
            return Ok(Some((messages, bytes)));
        }
        if scanned >= sync_transport::proto::LOG_COUNT_ENTRIES_MAX {
            return Ok(None);
        }
        from = page.next;
    }
}
