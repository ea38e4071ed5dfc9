//! Wake-ups of a node's subscriptions: one `watch` channel per tenant with readers, fed
//! by the ledger's listener (this process's commits) and, over a shared store, by a
//! [`ChangeBus`](sync_ledger::ChangeBus) (the other processes' commits).
//!
//! The channel's value is a counter that grows on every wake-up, never a log position:
//! the transport shares a page among subscriptions woken by the same value, which is
//! only sound when a value is never published twice. A head no higher than one already
//! seen wakes nobody (a process hears its own announcements back), and
//! [`BusNews::Lost`](sync_ledger::BusNews::Lost) wakes every tenant.

use std::collections::HashMap;
use std::sync::Mutex;

use sync_types::TenantId;
use tokio::sync::watch;

/// Tenants beyond which a new channel first drops the channels nobody reads.
const WAKES_TIDY_AT: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Wakes {
    tenants: Mutex<HashMap<TenantId, Wake>>,
}

#[derive(Debug)]
struct Wake {
    tx: watch::Sender<u64>,
    /// The highest head announced for the tenant.
    head: u64,
}

impl Wakes {
    /// A receiver of `tenant`'s wake-ups.
    pub(crate) fn receiver(&self, tenant: &TenantId) -> watch::Receiver<u64> {
        let mut tenants = super::lock(&self.tenants);
        if let Some(w) = tenants.get(tenant) {
            return w.tx.subscribe();
        }
        if tenants.len() >= WAKES_TIDY_AT {
            tenants.retain(|_, w| w.tx.receiver_count() > 0);
        }
        let (tx, rx) = watch::channel(0);
        tenants.insert(tenant.clone(), Wake { tx, head: 0 });
        rx
    }

    /// `tenant`'s log reached `head`: wakes its readers unless that was known.
    pub(crate) fn head(&self, tenant: &TenantId, head: u64) {
        let mut tenants = super::lock(&self.tenants);
        if let Some(w) = tenants.get_mut(tenant)
            && head > w.head
        {
            w.head = head;
            w.tx.send_modify(|v| *v += 1);
        }
    }

    /// Wakes every tenant's readers (announcements may have been lost).
    pub(crate) fn all(&self) {
        for w in super::lock(&self.tenants).values() {
            w.tx.send_modify(|v| *v += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_heads_wake_and_values_never_repeat() {
        let wakes = Wakes::default();
        let t = TenantId::new("t").unwrap();
        let mut rx = wakes.receiver(&t);
        wakes.head(&t, 5);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        wakes.head(&t, 5);
        wakes.head(&t, 3);
        assert!(!rx.has_changed().unwrap(), "a known head wakes nobody");
        wakes.all();
        assert_eq!(*rx.borrow_and_update(), 2);
        wakes.head(&t, 6);
        assert_eq!(*rx.borrow_and_update(), 3);
        wakes.head(&TenantId::new("other").unwrap(), 9);
    }
}
