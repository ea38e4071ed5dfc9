//! No echo in live mode: a subscription leaves out what its own subscriber pushed.
//!
//! A client names its *session* (a random [`SessionId`], one per [`HttpClient`](crate::HttpClient))
//! in the `x-weft-session` header of its subscription upgrade and of its placed write
//! batches. The node notes the cids of such a batch, before it applies them, under the
//! session, the tenant and the caller's grant; that session's subscriptions of that
//! tenant under that grant then leave those entries out (each once). Noting before the
//! apply is what makes it race-free: the commit wakes the subscription, which finds the
//! cids already noted. After a restart the subscriber has a new session: its upgrade
//! may carry, in `x-weft-known`, the positions of the node's log it holds (the known
//! ranges its pushes were answered with), which the replay leaves out too.
//!
//! Both are the caller's own claims about what it holds, bound to its grant: a false
//! claim only withholds from the claimant what it could read. Nodes before this ignore
//! both headers and send everything; clients before it send neither.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sync_types::{Cid, GrantId, KnownRanges, ProgressToken, TenantId};

use super::{Handler, RequestContext};
use crate::error::HandlerError;
use crate::proto::{LogPageReply, LogPageRequest};

/// The header naming the caller's session (32 hex digits).
pub const SESSION_HEADER: &str = "x-weft-session";
/// The header of a subscription upgrade that carries the known ranges of the node's log
/// to leave out of the replay (base64url of their encoding, no padding).
pub const KNOWN_HEADER: &str = "x-weft-known";
/// Longest `x-weft-known` value a client sends and a node reads, in bytes; a client
/// with more ranges sends none (the replay then carries everything).
pub const KNOWN_HEADER_BYTES_MAX: usize = 16 * 1024;
/// Most cids noted per session and not yet left out; the oldest go first (their entries
/// are then sent, which costs bytes, never events).
pub const SESSION_CIDS_MAX: usize = 8 * 1024;

/// Most further pages a node reads for one page request whose entries the caller all
/// holds (`LogPageKnown` and `LogPageHead` with known ranges).
pub const KNOWN_PAGES_SKIPPED_MAX: usize = 64;
/// Longest a node keeps reading further pages for one such request, in milliseconds.
pub const KNOWN_PAGES_TIME_MS_MAX: u64 = 250;

/// A page of `req` without the entries at positions in `known` (the caller's own claim
/// of what it holds, so only ever less of what it may read). A page left empty whose
/// log goes on is not sent: the node reads on from its `next`, within
/// [`KNOWN_PAGES_SKIPPED_MAX`] pages and [`KNOWN_PAGES_TIME_MS_MAX`], so a replica
/// that uploaded a large log crosses its own echo in a request or two instead of one
/// per page. A gap met on the way ends the request with the last (empty) page, whose
/// `next` the caller reads from and then meets the gap itself.
pub(crate) async fn known_page<H: Handler>(
    h: &H,
    ctx: &RequestContext,
    mut req: LogPageRequest,
    known: &KnownRanges,
) -> Result<LogPageReply, HandlerError> {
    let started = std::time::Instant::now();
    let mut reply = h.log_page(ctx, req.clone()).await?;
    let mut skipped = 0;
    loop {
        let LogPageReply::Page(page) = &mut reply else {
            return Ok(reply);
        };
        page.entries.retain(|entry| !known.contains(&entry.token));
        let read_on = page.entries.is_empty()
            && page.has_more
            && page.next.is_some()
            && page.next != req.from
            && skipped < KNOWN_PAGES_SKIPPED_MAX
            && started.elapsed() < Duration::from_millis(KNOWN_PAGES_TIME_MS_MAX);
        if !read_on {
            return Ok(reply);
        }
        req.from = page.next;
        skipped += 1;
        match h.log_page(ctx, req.clone()).await? {
            next @ LogPageReply::Page(_) => reply = next,
            LogPageReply::Gap(_) => return Ok(reply),
        }
    }
}

/// A client's session: random, so that it names one client's pushes and subscriptions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SessionId(u128);

impl SessionId {
    /// A new random session (from the standard library's randomly keyed hasher).
    pub fn random() -> Self {
        let half = || {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(u64::from(std::process::id()));
            h.finish()
        };
        Self((u128::from(half()) << 64) | u128::from(half()))
    }

    /// The header value: 32 lowercase hex digits.
    pub fn to_header(self) -> String {
        format!("{:032x}", self.0)
    }

    /// Parses a header value; `None` unless exactly 32 hex digits.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() != 32 {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?;
        u128::from_str_radix(text, 16).ok().map(Self)
    }
}

/// What one subscription leaves out.
#[derive(Default)]
pub(crate) struct LeftOut {
    /// Positions of the node's log the subscriber holds (from `x-weft-known`).
    pub(crate) known: Option<KnownRanges>,
    /// The cids its session pushed and it has not left out yet.
    pub(crate) pushed: Option<Arc<Mutex<Pushed>>>,
}

impl LeftOut {
    /// Whether the entry at `token` is left out (a pushed cid is left out once).
    pub(crate) fn leaves_out(&self, token: &ProgressToken) -> bool {
        if self.known.as_ref().is_some_and(|k| k.contains(token)) {
            return true;
        }
        self.pushed.as_ref().is_some_and(|p| {
            p.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(&token.cid)
        })
    }
}

/// The cids a session pushed, at most [`SESSION_CIDS_MAX`].
#[derive(Default)]
pub(crate) struct Pushed {
    cids: HashSet<Cid>,
    order: VecDeque<Cid>,
}

impl Pushed {
    fn insert(&mut self, cid: Cid) {
        if self.cids.insert(cid) {
            self.order.push_back(cid);
        }
        while self.order.len() > SESSION_CIDS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.cids.remove(&old);
            }
        }
    }

    fn take(&mut self, cid: &Cid) -> bool {
        self.cids.remove(cid)
    }
}

/// A session's key: the session, the tenant and the grant of the caller's token.
pub(crate) type SessionKey = (SessionId, TenantId, GrantId);

/// The sessions with an open subscription (so at most one per subscription slot).
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<SessionKey, Arc<Mutex<Pushed>>>>,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Arc<Mutex<Pushed>>>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A subscription of `key` opens: what its session pushes from now on is noted.
    pub(crate) fn open(&self, key: SessionKey) -> Arc<Mutex<Pushed>> {
        let pushed = Arc::new(Mutex::new(Pushed::default()));
        self.map().insert(key, pushed.clone());
        pushed
    }

    /// The subscription that opened `pushed` under `key` ended.
    pub(crate) fn close(&self, key: &SessionKey, pushed: &Arc<Mutex<Pushed>>) {
        let mut map = self.map();
        if map.get(key).is_some_and(|p| Arc::ptr_eq(p, pushed)) {
            map.remove(key);
        }
    }

    /// The session `key` is pushing `cids` (noted only while it has a subscription).
    pub(crate) fn note(&self, key: &SessionKey, cids: impl IntoIterator<Item = Cid>) {
        let Some(pushed) = self.map().get(key).cloned() else {
            return;
        };
        let mut pushed = pushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for cid in cids {
            pushed.insert(cid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_id_goes_through_its_header_and_sessions_differ() {
        let a = SessionId::random();
        assert_eq!(SessionId::parse(a.to_header().as_bytes()), Some(a));
        assert_ne!(a, SessionId::random());
        assert_eq!(SessionId::parse(b"12"), None);
        assert_eq!(SessionId::parse(&[b'g'; 32]), None);
    }

    #[test]
    fn pushed_cids_are_bounded_and_left_out_once() {
        let mut p = Pushed::default();
        for n in 0..=SESSION_CIDS_MAX {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(n as u64).to_be_bytes());
            p.insert(Cid::from_bytes(b));
        }
        assert_eq!(p.cids.len(), SESSION_CIDS_MAX);
        let first = Cid::from_bytes([0u8; 32]);
        assert!(!p.take(&first), "the oldest went first");
        let mut last = [0u8; 32];
        last[..8].copy_from_slice(&(SESSION_CIDS_MAX as u64).to_be_bytes());
        assert!(p.take(&Cid::from_bytes(last)));
        assert!(!p.take(&Cid::from_bytes(last)), "left out once");
    }

    fn token(n: u8) -> ProgressToken {
        ProgressToken {
            stream_id: sync_types::StreamId::from_bytes([1; 16]),
            epoch: 1,
            position: u64::from(n),
            cid: Cid::from_bytes([n; 32]),
        }
    }

    /// A push names a session, but only pushes under the subscription's own tenant and
    /// grant are left out of its feed: another grant (or tenant) that learned the
    /// session id cannot hide anything from it.
    #[test]
    fn a_session_notes_only_pushes_under_its_own_tenant_and_grant() {
        let tenant = TenantId::new("did:example:t").unwrap();
        let other_tenant = TenantId::new("did:example:u").unwrap();
        let (mine, theirs) = (GrantId::new("a").unwrap(), GrantId::new("b").unwrap());
        let sessions = Sessions::default();
        let s = SessionId::random();
        let key = (s, tenant.clone(), mine.clone());
        let pushed = sessions.open(key.clone());
        sessions.note(&(s, tenant.clone(), theirs), [token(1).cid]);
        sessions.note(&(s, other_tenant, mine), [token(2).cid]);
        sessions.note(&key, [token(3).cid]);
        let left = LeftOut {
            known: None,
            pushed: Some(pushed.clone()),
        };
        assert!(!left.leaves_out(&token(1)));
        assert!(!left.leaves_out(&token(2)));
        assert!(left.leaves_out(&token(3)));
        // Once the subscription ended, nothing more is noted.
        sessions.close(&key, &pushed);
        sessions.note(&key, [token(4).cid]);
        assert!(!left.leaves_out(&token(4)));
    }
}
