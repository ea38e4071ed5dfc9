//! Change notification between processes that share a store: the [`ChangeBus`] trait.
//!
//! A ledger's listeners ([`Ledger::add_listener`](crate::Ledger::add_listener)) hear
//! only the commits of their own process. When several node processes share one store
//! (the PostgreSQL backend), a write accepted by one must still wake the readers of the
//! others. A bus carries that wake-up: each process publishes its tenants' new log heads
//! after their commits, and hears the heads the other processes published.
//!
//! Like every notification in Weft, what travels on a bus is a hint, never data: a
//! reader woken by it reads the durable log from its own cursor, so a lost, late,
//! duplicated or coalesced announcement costs latency and nothing else. That is what
//! makes a bus easy to replace (PostgreSQL `LISTEN`/`NOTIFY` in `sync-ledger-pg`, or a
//! message broker), and why [`BusNews::Lost`] exists: a bus that may have missed
//! announcements (a reconnect) says so, and every reader looks at the log again.

use std::sync::Arc;

use sync_types::TenantId;

/// What a bus tells a process.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BusNews {
    /// A process committed to `tenant`'s log, which now reaches `head` (possibly this
    /// process's own announcement coming back; a reader that has seen `head` ignores it).
    Head {
        /// The tenant whose log grew.
        tenant: TenantId,
        /// Its log's head position after the commit.
        head: u64,
    },
    /// Announcements may have been missed (the bus reconnected): every reader should
    /// read its log again.
    Lost,
}

/// Where a bus delivers [`BusNews`]. Called on the bus's own thread; it must be quick and
/// must not block.
pub type BusSink = Arc<dyn Fn(BusNews) + Send + Sync>;

/// Carries log-head announcements between processes that share a store.
///
/// Why this shape: the ledger already tells its own process after each commit
/// (listeners), so a bus only has to take those heads to the other processes
/// ([`publish`](Self::publish)) and bring theirs back ([`subscribe`](Self::subscribe)).
/// Nothing in it is durable or ordered: readers rely on the log, not on the bus.
pub trait ChangeBus: Send + Sync + 'static {
    /// Announces, after its commit, that `tenant`'s log reached `head`. Never blocks:
    /// an implementation queues and may coalesce announcements per tenant (only the
    /// highest head matters) and may drop them under pressure.
    fn publish(&self, tenant: &TenantId, head: u64);

    /// Delivers every announcement heard from now on to `sink` (several sinks may be
    /// registered).
    fn subscribe(&self, sink: BusSink);
}
