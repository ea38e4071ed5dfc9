//! Write transactions: what a store shared by several writer processes adds to the five
//! methods of [`Store`].
//!
//! A store on a directory (fjall) or in memory has exactly one [`Ledger`](crate::Ledger)
//! writing it, and that ledger's own writer lock orders its applies: a read made under
//! the lock sees every earlier commit, and nothing else commits until the lock is let
//! go. A shared database has many writers in many processes, so the ordering has to
//! come from the database itself. A [`WriteTxn`] is that: a scope lock that the
//! database holds until the commit ([`WriteTxn::lock`]), reads that see every commit
//! made under the same scope before it ([`WriteTxn::get_many`]), and the one atomic
//! commit.
//!
//! Why this shape:
//! - **Scopes, not keys**: [`WriteScope::Tenant`] is the unit that allocates log
//!   positions, so holding it from the first read of the log head to the commit makes
//!   positions gap-free and commit-ordered across processes (a database sequence would
//!   let a reader see position 2 while 1 is still uncommitted, which breaks the
//!   contiguous-checkpoint rule). [`WriteScope::TenantNames`] serializes the rare
//!   allocation of tenant numbers.
//! - **Batched reads**: [`WriteTxn::get_many`] reads any number of keys of one
//!   partition at once, so an apply costs a constant number of round trips to a
//!   database, however many messages it carries.
//! - **A retry is not a poison**: a shared database reports a dropped connection or a
//!   serialization failure as [`Error::Retry`](crate::Error::Retry). The transaction
//!   was rolled back (or, for a connection lost during the commit, may have committed
//!   whole), so the database is consistent and the operation can be run again; an
//!   apply is idempotent. Any other backend error poisons the ledger as before.

use super::{Batch, Durability, Partition, Store};
use crate::error::Result;

/// What a [`WriteTxn`] can lock.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum WriteScope {
    /// One tenant's writes, by its interned number: every apply to the tenant and the
    /// maintenance of its log.
    Tenant(u32),
    /// The allocation of tenant numbers.
    TenantNames,
    /// Read-modify-writes of links, dead letters and identities.
    Registry,
    /// One partial upload's chunks and its owner row (`blob_owners`), by the upload's id.
    Upload(sync_types::Cid),
}

/// A write transaction on a [`Store`]: scope locks, reads that see every commit made
/// under those scopes, and one atomic commit. Dropping it without committing rolls it
/// back and releases its locks.
pub trait WriteTxn {
    /// Waits until the transaction holds `scope`, until it commits or is dropped. Reads
    /// made after it returns see every commit of every transaction that held `scope`
    /// before. Take at most one [`Tenant`](WriteScope::Tenant) per transaction, and
    /// [`TenantNames`](WriteScope::TenantNames) only before it, so two transactions
    /// never wait on each other; [`Registry`](WriteScope::Registry) and
    /// [`Upload`](WriteScope::Upload) are taken alone.
    fn lock(&mut self, scope: WriteScope) -> Result<()>;

    /// The values of `keys` in `partition`, in the order of `keys`: one round trip to a
    /// database, however many keys.
    fn get_many(&mut self, partition: Partition, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>>;

    /// The value of one key.
    fn get(&mut self, partition: Partition, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_many(partition, &[key.to_vec()])?.pop().flatten())
    }

    /// Says that, once this transaction commits, `tenant`'s log reaches `head`. A store
    /// shared by several processes tells the others with the commit itself, so the
    /// announcement is heard exactly when the commit is visible and never for a
    /// transaction that does not commit (see [`ChangeBus`](crate::ChangeBus)). The
    /// default does nothing: a store with one writer process has no one else to tell
    /// (the ledger's own listeners hear every commit of their process).
    fn announce(&mut self, tenant: &sync_types::TenantId, head: u64) {
        let _ = (tenant, head);
    }

    /// Applies `batch` atomically with at least `durability` and releases the locks.
    /// The contract of [`Store::commit`] holds, except that an
    /// [`Error::Retry`](crate::Error::Retry) means the database is consistent and the
    /// whole transaction may be run again.
    fn commit(self: Box<Self>, batch: Batch, durability: Durability) -> Result<()>;
}

/// The transaction of a store with one writer: reads go straight to the store, locks
/// are the ledger's own writer lock (held by the caller), and the commit is
/// [`Store::commit`]. This is what [`Store::begin`] returns unless a backend overrides
/// it.
pub struct LocalTxn<'a, S: ?Sized> {
    store: &'a S,
}

impl<'a, S: Store + ?Sized> LocalTxn<'a, S> {
    /// A transaction on `store`.
    pub fn new(store: &'a S) -> Self {
        Self { store }
    }
}

impl<S: Store + ?Sized> WriteTxn for LocalTxn<'_, S> {
    /// Nothing to wait for: one ledger writes the store, under its writer lock.
    fn lock(&mut self, _scope: WriteScope) -> Result<()> {
        Ok(())
    }

    fn get_many(&mut self, partition: Partition, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.store.get_many(partition, keys)
    }

    fn get(&mut self, partition: Partition, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.store.get(partition, key)
    }

    fn commit(self: Box<Self>, batch: Batch, durability: Durability) -> Result<()> {
        self.store.commit(batch, durability)
    }
}
