//! Progress of one operation in one direction, with totals: what moved (messages,
//! bytes, blob bytes included) and how much the operation moves in all, as far as
//! known. Every change is announced as a [`SyncEvent::SyncProgress`].
//!
//! An operation is what the engine was asked for: a one-shot sync of a link
//! ([`Engine::sync_link`](super::Engine::sync_link): its catch-ups, reconciles and
//! blob downloads share the pull meter, its pushes the push meter), or one catch-up,
//! push or reconcile. The totals come from outside: a pull's from its first page when
//! that is all, else from the node's count of what is left after it, asked beside the
//! next pages ([`LogRemaining`](sync_transport::proto::LogRemaining)),
//! a push's from the local log (counted beside a long push, see `push_count.rs`), a blob
//! download's from the wanted list. When more
//! moves than expected the total follows, and at the end of the operation it is set
//! to what moved, so a finished operation always reads done == total.

use std::sync::{Arc, Mutex};

use sync_types::{Direction, LinkKey, SyncEvent};

use crate::replica::Replica;

use super::lock;

/// Blob bytes moved between two announcements of a blob transfer's progress.
pub(crate) const PROGRESS_BYTES_STEP: u64 = 256 * 1024;

/// The progress of one operation in one direction; clones share it.
#[derive(Clone)]
pub(crate) struct Meter {
    inner: Arc<MeterInner>,
}

struct MeterInner {
    replica: Replica,
    link: LinkKey,
    direction: Direction,
    state: Mutex<MeterState>,
}

#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct MeterState {
    messages: u64,
    bytes: u64,
    messages_total: Option<u64>,
    bytes_total: Option<u64>,
    /// `bytes` when last announced.
    announced_bytes: u64,
}

impl MeterState {
    fn raise_totals(&mut self) {
        if let Some(t) = &mut self.messages_total {
            *t = (*t).max(self.messages);
        }
        if let Some(t) = &mut self.bytes_total {
            *t = (*t).max(self.bytes);
        }
    }
}

impl Meter {
    /// A meter from zero, totals unknown.
    pub(crate) fn new(replica: Replica, link: LinkKey, direction: Direction) -> Self {
        Self {
            inner: Arc::new(MeterInner {
                replica,
                link,
                direction,
                state: Mutex::new(MeterState::default()),
            }),
        }
    }

    /// What is left to move is `messages` and `bytes`: the totals become what moved
    /// plus that (the newest count replaces an older one).
    pub(crate) fn expect(&self, messages: u64, bytes: u64) {
        let s = self.update(|s| {
            s.messages_total = Some(s.messages.saturating_add(messages));
            s.bytes_total = Some(s.bytes.saturating_add(bytes));
        });
        self.announce(s);
    }

    /// What was left to move when [`moved_so_far`](Self::moved_so_far) gave `mark` is
    /// `messages` and `bytes` (a count that ran while things moved): the totals become
    /// `mark` plus that, and never less than what moved.
    pub(crate) fn expect_since(&self, mark: (u64, u64), messages: u64, bytes: u64) {
        let s = self.update(|s| {
            s.messages_total = Some(mark.0.saturating_add(messages));
            s.bytes_total = Some(mark.1.saturating_add(bytes));
        });
        self.announce(s);
    }

    /// Messages and bytes moved so far.
    pub(crate) fn moved_so_far(&self) -> (u64, u64) {
        let s = lock(&self.inner.state);
        (s.messages, s.bytes)
    }

    /// `messages` and `bytes` moved.
    pub(crate) fn moved(&self, messages: u64, bytes: u64) {
        let s = self.update(|s| {
            s.messages += messages;
            s.bytes += bytes;
        });
        self.announce(s);
    }

    /// `bytes` of a blob moved: announced every [`PROGRESS_BYTES_STEP`], not per piece.
    pub(crate) fn blob_bytes(&self, bytes: u64) {
        let s = {
            let mut s = lock(&self.inner.state);
            s.bytes += bytes;
            s.raise_totals();
            if s.bytes - s.announced_bytes < PROGRESS_BYTES_STEP && s.bytes_total != Some(s.bytes) {
                return;
            }
            s.announced_bytes = s.bytes;
            *s
        };
        self.announce(s);
    }

    /// The operation is over: the totals become what moved.
    pub(crate) fn finish(&self) {
        let s = self.update(|s| {
            s.messages_total = Some(s.messages);
            s.bytes_total = Some(s.bytes);
        });
        self.announce(s);
    }

    /// Bytes moved so far.
    pub(crate) fn bytes(&self) -> u64 {
        lock(&self.inner.state).bytes
    }

    /// Changes the state and returns it, to be announced.
    fn update(&self, f: impl FnOnce(&mut MeterState)) -> MeterState {
        let mut s = lock(&self.inner.state);
        f(&mut s);
        s.raise_totals();
        s.announced_bytes = s.bytes;
        *s
    }

    fn announce(&self, s: MeterState) {
        self.inner.replica.emit(SyncEvent::SyncProgress {
            link: self.inner.link.clone(),
            direction: self.inner.direction,
            messages: s.messages,
            bytes: s.bytes,
            messages_total: s.messages_total,
            bytes_total: s.bytes_total,
        });
    }
}

/// The pull and push meters of one operation.
#[derive(Clone)]
pub(crate) struct Meters {
    /// What comes from the remote.
    pub(crate) pull: Meter,
    /// What goes to the remote.
    pub(crate) push: Meter,
}

impl Meters {
    /// Both meters from zero.
    pub(crate) fn new(replica: &Replica, link: &LinkKey) -> Self {
        Self {
            pull: Meter::new(replica.clone(), link.clone(), Direction::Pull),
            push: Meter::new(replica.clone(), link.clone(), Direction::Push),
        }
    }
}
