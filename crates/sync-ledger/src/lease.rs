//! Work that must run on one process at a time: the [`Leases`] trait.
//!
//! Several node processes sharing one store each run the same background work (the
//! blob collector). Running it on two at once is never unsafe for the data (every step
//! is checked against the store), but it is wasted work and doubles the load. A lease
//! makes it run on one process at a time: a process takes the lease before a round and
//! skips the round when another holds it. A lease must be released by the holder's
//! death as well as by its guard (a killed node never blocks the others), which is what
//! PostgreSQL's session advisory locks give (`sync-ledger-pg`).

use crate::Result;

/// A held lease; released when dropped.
pub struct LeaseGuard(#[allow(dead_code)] Box<dyn Send>);

impl LeaseGuard {
    /// A guard that releases the lease by dropping `release` (anything whose `Drop` does
    /// it).
    pub fn new(release: impl Send + 'static) -> Self {
        LeaseGuard(Box::new(release))
    }
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseGuard")
    }
}

/// Named leases shared by the processes of one store.
pub trait Leases: Send + Sync + std::fmt::Debug + 'static {
    /// Takes the lease `name` unless a process (this one included) holds it: `None`
    /// then. Never waits for it.
    fn try_take(&self, name: &str) -> Result<Option<LeaseGuard>>;
}
