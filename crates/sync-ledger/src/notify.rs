//! Change notification without an async runtime: a generation counter with a condvar
//! (`wait_for_change`), and listener callbacks run after a commit, outside the ledger's
//! locks. A notification is a hint, never data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use sync_types::TenantId;

use crate::ledger::{Ledger, lock};

/// The id of a change listener, for [`Ledger::remove_listener`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ListenerId(u64);

type Listener = Arc<dyn Fn(&TenantId, u64) + Send + Sync>;

/// Change notification without an async runtime: a generation counter with a condvar,
/// and callbacks.
pub(crate) struct Notifier {
    generation: Mutex<u64>,
    changed: Condvar,
    listeners: RwLock<Vec<(ListenerId, Listener)>>,
    next_listener: AtomicU64,
}

impl Notifier {
    pub(crate) fn new() -> Self {
        Self {
            generation: Mutex::new(0),
            changed: Condvar::new(),
            listeners: RwLock::new(Vec::new()),
            next_listener: AtomicU64::new(1),
        }
    }

    pub(crate) fn notify(&self, heads: &[(TenantId, u64)]) {
        {
            let mut g = lock(&self.generation);
            *g += 1;
        }
        self.changed.notify_all();
        let listeners: Vec<Listener> = self
            .listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, l)| l.clone())
            .collect();
        for (tenant, head) in heads {
            for l in &listeners {
                l(tenant, *head);
            }
        }
    }
}

impl Ledger {
    /// A counter that grows by at least one after every commit that appended to a log.
    pub fn generation(&self) -> u64 {
        *lock(&self.notifier.generation)
    }

    /// Blocks until the generation exceeds `seen` or `timeout` passes, and returns the
    /// generation. For threads without an async runtime; an async driver should
    /// register a listener instead.
    pub fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64 {
        let g = lock(&self.notifier.generation);
        let (g, _) = self
            .notifier
            .changed
            .wait_timeout_while(g, timeout, |g| *g <= seen)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }

    /// Registers `listener`, called with the tenant and its new log head after every
    /// commit that appended to that tenant's log, on the committing thread, after the
    /// ledger's locks are released. It must be quick and must not block (a tokio
    /// driver calls `Notify::notify_one` in it). A notification is a hint: a reader
    /// must read the log from its checkpoint, never trust a notification to carry data.
    pub fn add_listener(
        &self,
        listener: impl Fn(&TenantId, u64) + Send + Sync + 'static,
    ) -> ListenerId {
        let id = ListenerId(self.notifier.next_listener.fetch_add(1, Ordering::Relaxed));
        self.notifier
            .listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, Arc::new(listener)));
        id
    }

    /// Removes a listener; returns whether it was registered.
    pub fn remove_listener(&self, id: ListenerId) -> bool {
        let mut l = self
            .notifier
            .listeners
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let before = l.len();
        l.retain(|(i, _)| *i != id);
        l.len() != before
    }
}
