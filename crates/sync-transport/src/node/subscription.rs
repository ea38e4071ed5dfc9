//! Subscriptions: the loop that reads the durable log for one subscriber (see the
//! [module docs](super)), its bounded queue, and the live pages shared between them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use sync_types::{Actions, KnownRanges};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::proto::{
    CloseReason, ErrorCode, ErrorReply, LOG_PAGE_ENTRIES_MAX, LogPageReply, LogPageRequest, Notice,
    SubscribeRequest,
};

use super::echo::{LeftOut, Pushed, SessionId, SessionKey};
use super::{Handler, Node, RequestContext, auth_reply, ms};
use crate::error::HandlerError;

/// Most log pages a node keeps for live subscriptions to share.
pub const SHARED_PAGES_MAX: usize = 32;

/// A page being read or read, shared by the live subscriptions that ask for it.
type SharedPage = Arc<tokio::sync::OnceCell<Arc<LogPageReply>>>;

/// The last [`SHARED_PAGES_MAX`] live pages, each keyed by its request and the
/// [`Handler::changes`] value that woke the reader.
#[derive(Default)]
pub(crate) struct SharedPages {
    pages: Mutex<VecDeque<(LogPageRequest, u64, SharedPage)>>,
}

impl SharedPages {
    /// The slot of `req` read after change `version`: the existing one, or a new empty
    /// one (which evicts the oldest when full).
    pub(crate) fn slot(&self, req: &LogPageRequest, version: u64) -> SharedPage {
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, page)) = pages
            .iter()
            .rev()
            .find(|(r, v, _)| *v == version && r == req)
        {
            return page.clone();
        }
        if pages.len() >= SHARED_PAGES_MAX {
            pages.pop_front();
        }
        let page = SharedPage::default();
        pages.push_back((req.clone(), version, page.clone()));
        page
    }
}

/// The per-subscriber end of a subscription: the bounded queue and, once the loop has
/// ended, why.
pub(crate) struct Feed {
    pub(crate) rx: mpsc::Receiver<Notice>,
    pub(crate) reason: Arc<OnceLock<CloseReason>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Feed {
    /// The next notice to deliver, or the final `Closing` notice once the loop ended.
    /// After a lag the backlog is dropped: the subscriber resubscribes anyway.
    pub(crate) async fn next(&mut self) -> Option<Notice> {
        if let Some(CloseReason::Lagged { .. }) = self.reason.get() {
            self.rx.close();
            while self.rx.try_recv().is_ok() {}
        }
        match self.rx.recv().await {
            Some(n) => Some(n),
            None => {
                let reason = self.reason.get().cloned()?;
                // Deliver the reason once.
                self.reason = Arc::new(OnceLock::new());
                Some(Notice::Closing(reason))
            }
        }
    }
}

impl Feed {
    /// A notice already queued, without waiting; `None` when the queue is empty, closed
    /// or the subscriber lagged (then [`Feed::next`] gives the reason).
    pub(crate) fn try_next(&mut self) -> Option<Notice> {
        if let Some(CloseReason::Lagged { .. }) = self.reason.get() {
            return None;
        }
        self.rx.try_recv().ok()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<H: Handler> Node<H> {
    /// Opens a subscription: checks, takes a subscription slot, starts the loop.
    pub(crate) fn subscribe(
        &self,
        ctx: &RequestContext,
        req: SubscribeRequest,
    ) -> Result<Feed, ErrorReply> {
        self.subscribe_leaving_out(ctx, req, None, None)
    }

    /// [`subscribe`](Self::subscribe) for a client that named its `session` and the
    /// positions it holds (`known`): the feed leaves out what that session pushes
    /// while it runs and the entries at those positions (see [`echo`](super::echo)).
    pub(crate) fn subscribe_leaving_out(
        &self,
        ctx: &RequestContext,
        req: SubscribeRequest,
        session: Option<SessionId>,
        known: Option<KnownRanges>,
    ) -> Result<Feed, ErrorReply> {
        ctx.claims
            .authorize(
                &req.tenant,
                Some(&req.scope),
                Actions::READ.union(Actions::SYNC),
                self.now_ms(),
            )
            .map_err(|e| auth_reply(&e))?;
        let permit = self
            .subscriptions
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ErrorReply::new(
                    ErrorCode::Overloaded,
                    format!(
                        "the node is at its limit of {} subscriptions",
                        self.config.subscriptions_max
                    ),
                )
            })?;
        let session = session.map(|s| {
            let key = (s, req.tenant.clone(), ctx.claims.grant_id.clone());
            let pushed = self.sessions.open(key.clone());
            (key, pushed)
        });
        let left_out = LeftOut {
            known: known.filter(|k| !k.ranges().is_empty()),
            pushed: session.as_ref().map(|(_, p)| p.clone()),
        };
        let (tx, rx) = mpsc::channel(self.config.subscriber_queue_len_max.max(1));
        let reason = Arc::new(OnceLock::new());
        let run = SubscriptionLoop {
            node: self.clone(),
            ctx: ctx.clone(),
            req,
            tx,
            left_out,
            session,
            _permit: permit,
        };
        let reason2 = reason.clone();
        let task = tokio::spawn(async move {
            let mut run = run;
            let r = run.run().await;
            let _ = reason2.set(r);
            // `run` (and with it the sender and the slot) is dropped only now, after the
            // reason is set, so a receiver that sees the queue closed finds the reason
            // (`run(self)` would drop the sender first, and the reason could be lost).
            drop(run);
        });
        Ok(Feed { rx, reason, task })
    }
}

struct SubscriptionLoop<H> {
    node: Node<H>,
    ctx: RequestContext,
    req: SubscribeRequest,
    tx: mpsc::Sender<Notice>,
    /// What the subscriber holds and is not sent.
    left_out: LeftOut,
    /// The session whose pushes are left out, closed when the loop ends.
    session: Option<(SessionKey, Arc<Mutex<Pushed>>)>,
    _permit: OwnedSemaphorePermit,
}

impl<H> Drop for SubscriptionLoop<H> {
    fn drop(&mut self) {
        if let Some((key, pushed)) = &self.session {
            self.node.sessions.close(key, pushed);
        }
    }
}

enum Drained {
    /// Read every stored entry; the new cursor.
    UpToDate,
    /// The loop must end.
    End(CloseReason),
}

impl<H: Handler> SubscriptionLoop<H> {
    async fn run(&mut self) -> CloseReason {
        // Take the change receiver before the first read, and mark it seen before each
        // read, so a change that lands during a read wakes the next wait.
        let mut changes = self.node.handler.changes(&self.req.tenant);
        let mut shutdown = self.node.shutdown.subscribe();
        if *shutdown.borrow_and_update() {
            return CloseReason::ShuttingDown;
        }
        let mut cursor = self.req.from;
        changes.mark_unchanged();
        match self.drain(&mut cursor, None).await {
            Drained::UpToDate => {}
            Drained::End(r) => return r,
        }
        if let Err(r) = self.send(Notice::EndOfStored { cursor }).await {
            return r;
        }
        let poll = ms(self.node.config.live_poll_interval_ms.max(1));
        loop {
            // Whether a change woke this read: only then may it share a page read
            // after the same change; a periodic re-read looks at the log itself.
            let mut woken_by_change = false;
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The handler dropped its sender; fall back to polling.
                        changes = self.node.handler.changes(&self.req.tenant);
                        tokio::time::sleep(poll).await;
                    } else {
                        woken_by_change = true;
                    }
                }
                _ = shutdown.changed() => return CloseReason::ShuttingDown,
                _ = tokio::time::sleep(poll) => {}
                _ = self.tx.closed() => return CloseReason::error("subscriber went away"),
            }
            let version = *changes.borrow_and_update();
            let shared = woken_by_change.then_some(version);
            match self.drain(&mut cursor, shared).await {
                Drained::UpToDate => {}
                Drained::End(r) => return r,
            }
        }
    }

    /// Reads and sends pages from `cursor` until the log has no more. With `shared`
    /// (the change value that woke a live read), pages come from [`SharedPages`].
    async fn drain(
        &mut self,
        cursor: &mut Option<sync_types::ProgressToken>,
        shared: Option<u64>,
    ) -> Drained {
        let limit = self
            .node
            .config
            .subscription_page_len
            .clamp(1, LOG_PAGE_ENTRIES_MAX);
        loop {
            if self.node.now_ms() >= self.ctx.claims.expires_at_ms {
                return Drained::End(CloseReason::Expired);
            }
            let req = LogPageRequest {
                tenant: self.req.tenant.clone(),
                scope: self.req.scope.clone(),
                from: *cursor,
                filter: self.req.filter.clone(),
                limit,
            };
            let time = ms(self.node.config.request_time_ms_max);
            let handler = &self.node.handler;
            let ctx = &self.ctx;
            let read = async {
                match shared {
                    Some(version) => {
                        // The first reader of the slot reads; the others wait for its
                        // page. A failed or abandoned read leaves the slot empty, and
                        // the next reader tries again.
                        let slot = self.node.pages.slot(&req, version);
                        slot.get_or_try_init(|| async {
                            handler.log_page(ctx, req.clone()).await.map(Arc::new)
                        })
                        .await
                        .cloned()
                    }
                    None => handler.log_page(ctx, req).await.map(Arc::new),
                }
            };
            let page = match tokio::time::timeout(time, read).await {
                Ok(Ok(p)) => p,
                Ok(Err(e @ HandlerError::Unavailable(_))) => {
                    return Drained::End(CloseReason::unavailable(e.to_string()));
                }
                Ok(Err(e)) => return Drained::End(CloseReason::error(e.to_string())),
                Err(_) => return Drained::End(CloseReason::unavailable("log read timed out")),
            };
            match &*page {
                LogPageReply::Gap(gap) => {
                    return match self.send(Notice::Gap(gap.clone())).await {
                        Ok(()) => Drained::End(CloseReason::Gap),
                        Err(r) => Drained::End(r),
                    };
                }
                LogPageReply::Page(page) => {
                    for entry in &page.entries {
                        if self.left_out.leaves_out(&entry.token) {
                            continue;
                        }
                        if let Err(r) = self.send(Notice::Event(entry.clone())).await {
                            return Drained::End(r);
                        }
                    }
                    if page.next.is_some() {
                        *cursor = page.next;
                    }
                    if !page.has_more {
                        return Drained::UpToDate;
                    }
                }
            }
        }
    }

    async fn send(&self, notice: Notice) -> Result<(), CloseReason> {
        let stall = ms(self.node.config.subscriber_stall_ms_max);
        match self.tx.send_timeout(notice, stall).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(CloseReason::Lagged {
                queue_len_max: u32::try_from(self.node.config.subscriber_queue_len_max)
                    .unwrap_or(u32::MAX),
            }),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                Err(CloseReason::error("subscriber went away"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_types::{Cid, ProgressToken, ProtocolName, ProtocolSet, Scope, StreamId, TenantId};

    fn req(position: u64, filter: crate::proto::LogFilter) -> LogPageRequest {
        LogPageRequest {
            tenant: TenantId::new("alice").unwrap(),
            scope: Scope::Full,
            from: Some(ProgressToken {
                stream_id: StreamId::from_bytes([1; 16]),
                epoch: 1,
                position,
                cid: Cid::from_bytes([0; 32]),
            }),
            filter,
            limit: 100,
        }
    }

    #[test]
    fn pages_are_shared_only_by_equal_requests_after_the_same_change() {
        let pages = SharedPages::default();
        let all = crate::proto::LogFilter::default();
        let a = pages.slot(&req(3, all.clone()), 7);
        assert!(Arc::ptr_eq(&a, &pages.slot(&req(3, all.clone()), 7)));
        // Another cursor, another change, another filter: each its own page.
        assert!(!Arc::ptr_eq(&a, &pages.slot(&req(2, all.clone()), 7)));
        assert!(!Arc::ptr_eq(&a, &pages.slot(&req(3, all.clone()), 8)));
        let protocol = ProtocolName::new("https://ex.com/p").unwrap();
        let filtered = crate::proto::LogFilter {
            protocols: Some(ProtocolSet::new(vec![protocol]).unwrap()),
        };
        assert!(!Arc::ptr_eq(&a, &pages.slot(&req(3, filtered), 7)));
    }

    #[test]
    fn shared_pages_are_bounded_and_the_oldest_go_first() {
        let pages = SharedPages::default();
        let all = crate::proto::LogFilter::default();
        let first = pages.slot(&req(0, all.clone()), 1);
        for position in 1..SHARED_PAGES_MAX as u64 {
            pages.slot(&req(position, all.clone()), 1);
        }
        assert!(Arc::ptr_eq(&first, &pages.slot(&req(0, all.clone()), 1)));
        pages.slot(&req(1_000, all.clone()), 1);
        assert_eq!(pages.pages.lock().unwrap().len(), SHARED_PAGES_MAX);
        assert!(
            !Arc::ptr_eq(&first, &pages.slot(&req(0, all), 1)),
            "the oldest page was evicted"
        );
    }
}
