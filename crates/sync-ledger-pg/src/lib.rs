//! Weft's ledger on a PostgreSQL database that many node processes share.
//!
//! [`PgStore`] implements [`sync_ledger::Store`] on a database, so several stateless
//! nodes can serve the same tenants: open a [`Ledger`](sync_ledger::Ledger) on it in
//! each process, and every apply of every process lands in one log per tenant, with
//! positions that are unique, gap-free and in commit order, and tenant numbers that are
//! distinct.
//!
//! Two more things the processes of one ledger share: [`PgChangeBus`], the
//! [`ChangeBus`](sync_ledger::ChangeBus) that takes each commit's announcement to the
//! other processes (`LISTEN`/`NOTIFY`: the store sends `pg_notify` inside the commit, the
//! bus listens and coalesces per tenant), and [`PgLeases`], the
//! [`Leases`](sync_ledger::Leases) under which background work runs on one process at a
//! time (session advisory locks, freed by the holder's death).
//!
//! # What it is not
//!
//! - Not a key-value table: each ledger partition has a table whose columns follow its
//!   keys (`tn` for the tenant, `pos` for the log position) and, where the ledger
//!   defines the value's type, its value (a log entry's cid and pruned ids, a log's
//!   head, a message's position, an index entry's cid, a record's protocol; see the
//!   [`schema`] module's tables), partitioned by tenant, created and versioned by
//!   numbered migrations.
//! - Not a cluster: it relies on PostgreSQL for durability and ordering, and holds no
//!   state of its own beyond a connection pool.
//! - Not async at its interface: the ledger is synchronous, so is this store (the
//!   `postgres` crate runs each connection on its own small runtime). Called from a
//!   thread that drives a tokio runtime (an engine's async task), where blocking on
//!   another runtime would panic, it drives the client from a helper thread instead;
//!   from a blocking thread it costs nothing extra.
//!
//! # How many writers stay correct
//!
//! The ledger opens a [`WriteTxn`](sync_ledger::store::WriteTxn) per apply. This store
//! answers [`WriteScope`](sync_ledger::store::WriteScope) locks with transaction-scoped
//! advisory locks: one per tenant, held from the read of the log head to the commit, so
//! two processes appending to one tenant take turns and the second reads the first's
//! head; one for allocating tenant numbers, under which the ledger re-reads the name
//! before it allocates. A database sequence would not do for positions: a reader could
//! see position 2 committed while 1 is not yet.
//!
//! # Round trips
//!
//! An apply costs the same number of statements whatever its size: a batched read per
//! kind of row the merge needs (`unnest` of key arrays joined to the table), then per
//! partition one upsert and at most one delete, each over arrays. Statements are
//! prepared once per connection. [`PgStore::statements_sent`] counts them.
//!
//! # Durability
//!
//! A commit with a synced [`Durability`](sync_ledger::Durability) runs with
//! `synchronous_commit = on`: it returns once its WAL is flushed, so it survives a
//! crash of the node and of the database (the server must run with `fsync` on, which
//! [`PgStoreBuilder::open`] checks). A `Buffered` commit sets `synchronous_commit = off`
//! for its own transaction: it survives the node's crash, and a crash of the database
//! loses at most a suffix of such commits.
//!
//! # Errors
//!
//! A dropped connection, a serialization failure, a deadlock or a pool timeout is
//! [`Error::Retry`](sync_ledger::Error::Retry): the transaction rolled back (or, lost
//! during `COMMIT`, may have committed whole), the ledger is not poisoned, and running
//! the apply again is safe because an apply is idempotent. Any other failure is
//! [`Error::Backend`](sync_ledger::Error::Backend) and poisons the ledger as a failed
//! fsync does.
//!
//! # Example
//!
//! ```no_run
//! use sync_ledger::Ledger;
//! use sync_ledger_pg::PgStore;
//!
//! let store = PgStore::builder("postgres://weft@127.0.0.1:5432/weft")
//!     .schema("weft")
//!     .open()?;
//! // Every process that opens the same database and schema shares the ledger.
//! let ledger = Ledger::open(store)?;
//! for tenant in ledger.tenants()? {
//!     let head = ledger.log_info(&tenant)?.map_or(0, |i| i.head_position);
//!     assert!(head > 0, "a tenant exists once something was applied to it");
//! }
//! # Ok::<(), sync_ledger::Error>(())
//! ```

#![deny(missing_docs)]

mod bus;
mod conn;
mod keys;
mod lease;
mod rows;
pub mod schema;
mod store;
mod values;

pub use bus::{BusCounters, PgChangeBus};
pub use lease::PgLeases;
pub use store::{POOL_CONNECTIONS_DEFAULT, POOL_WAIT_DEFAULT, PgStore, PgStoreBuilder};
