//! The storage boundary: a small ordered key-value interface with named partitions and
//! atomic, durability-tagged batches.
//!
//! Everything the ledger keeps goes through [`Store`]. The trait is deliberately small
//! (get, ordered scans, one atomic batch commit, an explicit persist) so that a backend
//! is a few hundred lines: [`FjallStore`] on a directory (the default) and
//! [`MemoryStore`] for tests and simulation. A store shared by several writer
//! processes (the `sync-ledger-pg` crate) also overrides [`Store::is_shared`],
//! [`Store::begin`] and [`Store::get_many`]: see [`WriteTxn`] for what a shared
//! database adds and why.
//!
//! Why this shape:
//! - **Partitions are static names** ([`Partition`]): the ledger's schema is fixed and
//!   documented in [`crate::layout`], so a partition is a constant, not a runtime string.
//! - **Every write is a batch** with an explicit [`Durability`]: the ledger never writes
//!   one key on its own, so no caller can forget to say how durable a write must be.
//! - **Last write to a key in a batch wins** ([`Batch`] coalesces), because a backend
//!   that gives all items of a batch one sequence number (fjall) cannot order an insert
//!   and a delete of the same key inside it.
//! - **Scans are ordered by key bytes** in both directions, and each item is a `Result`:
//!   a backend that fails halfway through a scan reports it instead of ending early.

use std::collections::HashSet;
use std::fmt;
use std::ops::Bound;

use crate::error::Result;

mod fjall_store;
mod memory;
mod txn;

pub use fjall_store::{
    CACHE_BYTES_DEFAULT, FjallStore, FjallStoreBuilder, JOURNAL_BYTES_MAX_DEFAULT,
    MEMTABLE_BYTES_DEFAULT,
};
pub use memory::MemoryStore;
pub use txn::{LocalTxn, WriteScope, WriteTxn};

/// Longest key a store accepts, in bytes. The ledger's longest key (a tenant, a
/// protocol, a deep path or context and a cid) is about 2.2 KiB; fjall's own limit is
/// 64 KiB.
pub const KEY_BYTES_MAX: usize = 16 * 1024;

/// Checks that a key is 1 to [`KEY_BYTES_MAX`] bytes long. Every backend calls it on
/// every key it is given, so all backends refuse the same keys (fjall would panic on an
/// empty one).
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(crate::error::Error::InvalidKey {
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// A named partition of a store (a fjall keyspace, a table): an independent ordered
/// key space.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    name: &'static str,
    large_values: bool,
}

impl Partition {
    /// A partition called `name` (1 to 64 bytes of `[a-z0-9_]`, checked at compile time
    /// when used in a `const`).
    pub const fn new(name: &'static str) -> Self {
        let bytes = name.as_bytes();
        assert!(
            !bytes.is_empty() && bytes.len() <= 64,
            "partition name length"
        );
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            assert!(
                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_',
                "partition names are [a-z0-9_]"
            );
            i += 1;
        }
        Self {
            name,
            large_values: false,
        }
    }

    /// Marks the partition as holding large values (blob chunks); a backend may store
    /// them apart from the keys (fjall: key-value separation).
    pub const fn with_large_values(mut self) -> Self {
        self.large_values = true;
        self
    }

    /// The partition's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the partition holds large values.
    pub const fn large_values(&self) -> bool {
        self.large_values
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Partition({})", self.name)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// How durable a commit must be when it returns, from weakest to strongest.
///
/// | mode | process crash (kill -9) | OS crash or power loss |
/// |---|---|---|
/// | `Buffered` | kept | may be lost, always a whole suffix of commits |
/// | `SyncData` | kept | kept (with everything committed before it) |
/// | `SyncAll` | kept | kept (with everything committed before it) |
///
/// `Buffered` hands the commit to the operating system (fjall's `PersistMode::Buffer`,
/// which is also what a fjall batch does when no mode is given): it survives the
/// process but not the machine. `SyncData` adds `fdatasync` of the journal, `SyncAll`
/// adds `fsync` (file metadata too). A sync covers every earlier commit, because the
/// journal is sequential, so a run of `Buffered` commits followed by one synced commit
/// makes the whole run durable. Only a commit that returned `Ok` with a sync mode may
/// be acknowledged to a peer as durable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Durability {
    /// Written to OS buffers: survives a process crash, not a power loss.
    Buffered,
    /// Journal synced with `fdatasync`: survives a power loss.
    SyncData,
    /// Journal synced with `fsync` (data and metadata): survives a power loss.
    SyncAll,
}

impl Durability {
    /// Every mode, weakest first.
    pub const ALL: [Durability; 3] = [
        Durability::Buffered,
        Durability::SyncData,
        Durability::SyncAll,
    ];

    /// Whether the mode survives a power loss.
    pub fn is_synced(self) -> bool {
        self != Durability::Buffered
    }

    /// The snake_case name, for benches and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Buffered => "buffered",
            Durability::SyncData => "sync_data",
            Durability::SyncAll => "sync_all",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One write of a [`Batch`]: a put (`value` is `Some`) or a delete.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BatchOp {
    /// Where.
    pub partition: Partition,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete.
    pub value: Option<Vec<u8>>,
}

/// Writes to any partitions that a [`Store`] applies atomically: after a crash either
/// all of them are visible or none is.
///
/// When a batch writes the same key twice, the last write wins and the earlier one is
/// dropped, so an insert followed by a delete of the same key deletes it. Duplicates
/// are removed once, in [`into_ops`](Self::into_ops), without copying keys: pushing a
/// write is just a `Vec` push, which matters when one apply writes thousands of keys.
#[derive(Clone, Default, Debug)]
pub struct Batch {
    ops: Vec<BatchOp>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `writes` writes.
    pub fn with_capacity(writes: usize) -> Self {
        Self {
            ops: Vec::with_capacity(writes),
        }
    }

    /// Sets `key` to `value` in `partition`.
    pub fn put(&mut self, partition: Partition, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push(BatchOp {
            partition,
            key: key.into(),
            value: Some(value),
        });
    }

    /// Deletes `key` from `partition` (a no-op when it is absent).
    pub fn delete(&mut self, partition: Partition, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp {
            partition,
            key: key.into(),
            value: None,
        });
    }

    /// Number of writes pushed (a key written twice counts twice).
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The writes as pushed, duplicates included.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// The writes to apply: each key once, with its last write, in the order of those
    /// last writes.
    pub fn into_ops(self) -> Vec<BatchOp> {
        let ops = self.ops;
        if ops.len() < 2 {
            return ops;
        }
        let mut seen: HashSet<(&'static str, &[u8])> = HashSet::with_capacity(ops.len());
        let keep: Vec<bool> = {
            let mut keep = vec![false; ops.len()];
            for (i, op) in ops.iter().enumerate().rev() {
                keep[i] = seen.insert((op.partition.name(), op.key.as_slice()));
            }
            keep
        };
        if keep.iter().all(|&k| k) {
            return ops;
        }
        ops.into_iter()
            .zip(keep)
            .filter_map(|(op, k)| k.then_some(op))
            .collect()
    }
}

impl Batch {
    /// The writes to apply, each key once with its last write, sorted by partition
    /// name and then key bytes.
    ///
    /// Backends that insert into ordered structures should prefer this to
    /// [`into_ops`](Self::into_ops): inserting keys in order makes each insert's search
    /// start where the previous one ended (a skiplist's or B-tree's path stays in the CPU
    /// cache), which for random keys such as cids halves the cost of an insert, and
    /// removing duplicates by sorting needs no hashing of keys.
    pub fn into_sorted_ops(self) -> Vec<BatchOp> {
        let mut ops = self.ops;
        // Stable: writes to the same key stay in push order, so the last one wins below.
        ops.sort_by(|a, b| {
            let (pa, pb) = (a.partition.name(), b.partition.name());
            if std::ptr::eq(pa, pb) {
                a.key.cmp(&b.key)
            } else {
                (pa, &a.key).cmp(&(pb, &b.key))
            }
        });
        // In place (a second vector of thousands of writes would be a large allocation
        // per commit): `dedup_by` keeps the first of a run of equal keys, so the later
        // write is swapped into its slot before the earlier one is dropped.
        ops.dedup_by(|later, kept| {
            let same = later.partition.name() == kept.partition.name() && later.key == kept.key;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        ops
    }
}

/// A range of keys: start and end bounds over key bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        Self {
            start: Bound::Included(prefix.to_vec()),
            end: match prefix_successor(prefix) {
                Some(end) => Bound::Excluded(end),
                None => Bound::Unbounded,
            },
        }
    }

    /// Keys in `start..end` (end excluded).
    pub fn between(start: Vec<u8>, end: Vec<u8>) -> Self {
        Self {
            start: Bound::Included(start),
            end: Bound::Excluded(end),
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let above = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }

    /// Whether no key can lie in the range.
    pub fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e))
            | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
            _ => false,
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when there
/// is none (the prefix is empty or all `0xff`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Scan direction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Order {
    /// Ascending key bytes.
    Ascending,
    /// Descending key bytes.
    Descending,
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// What [`Store::scan_with`] calls with each entry: key and value, borrowed; returns
/// whether to go on.
pub type ScanVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// The items of a scan, in key order.
pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<KeyValue>> + 'a>;

/// An ordered key-value store with named partitions and atomic batches.
///
/// Contract, checked for every backend by the shared suite (`tests/backend_suite.rs`):
/// - keys are 1 to [`KEY_BYTES_MAX`] bytes ([`check_key`]); a batch with any other key
///   fails with [`Error::InvalidKey`](crate::Error::InvalidKey) and applies nothing;
/// - a committed batch is visible to every later read, all of it at once;
/// - scans are ordered by key bytes and see only committed batches (a scan may or may
///   not see a batch committed while it runs, but never part of one);
/// - a commit that returns an error may or may not have been applied, and the caller
///   (the [`Ledger`](crate::Ledger)) must treat the store as poisoned, except after
///   [`Error::Retry`](crate::Error::Retry) from a shared store, whose transactions
///   leave it consistent either way;
/// - after a crash, the store holds a prefix of the committed batches that includes
///   every batch committed with a synced [`Durability`] (and, after a process crash
///   only, every batch).
pub trait Store: Send + Sync + 'static {
    /// The value of `key` in `partition`.
    fn get(&self, partition: Partition, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The entries of `partition` whose keys lie in `range`, in `order`.
    fn scan(&self, partition: Partition, range: KeyRange, order: Order) -> Result<ScanIter<'_>>;

    /// Applies `batch` atomically with at least the given durability.
    fn commit(&self, batch: Batch, durability: Durability) -> Result<()>;

    /// Makes every commit so far at least as durable as `durability`.
    fn persist(&self, durability: Durability) -> Result<()>;

    /// Makes everything durable and leaves the store ready to be dropped; a backend may
    /// also tidy up so the next open is fast (fjall flushes its in-memory tables, so
    /// reopening replays no journal). Dropping without `close` loses nothing that was
    /// committed with a synced durability.
    fn close(&self) -> Result<()> {
        self.persist(Durability::SyncAll)
    }

    /// Whether a commit can wait on I/O: a disk write, an fsync, a write stall. A store
    /// whose commits never do (the in-memory one) may be committed to from an async
    /// task without moving to a blocking thread. Default: `true`.
    fn commit_may_block(&self) -> bool {
        true
    }

    /// Whether other processes may write the same data. A shared store must return
    /// its own [`WriteTxn`] from [`begin`](Self::begin), and the ledger then keeps no
    /// cached log head and allocates numbers only under a [`WriteScope`] lock.
    /// Default: `false`.
    fn is_shared(&self) -> bool {
        false
    }

    /// Begins a write transaction. Default: a [`LocalTxn`], which reads the store
    /// directly and commits with [`commit`](Self::commit); a store with one writer
    /// needs nothing more.
    fn begin(&self) -> Result<Box<dyn WriteTxn + '_>> {
        Ok(Box::new(LocalTxn::new(self)))
    }

    /// The values of `keys` in `partition`, in the order of `keys`. A store where a
    /// read is a round trip answers all of them with one. Default: one
    /// [`get`](Self::get) per key.
    fn get_many(&self, partition: Partition, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(partition, k)).collect()
    }

    /// Sets one key (a batch of one).
    fn put(
        &self,
        partition: Partition,
        key: &[u8],
        value: Vec<u8>,
        durability: Durability,
    ) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(partition, key, value);
        self.commit(batch, durability)
    }

    /// Deletes one key (a batch of one).
    fn delete(&self, partition: Partition, key: &[u8], durability: Durability) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete(partition, key);
        self.commit(batch, durability)
    }

    /// The entries whose keys start with `prefix`, in `order`.
    fn scan_prefix(
        &self,
        partition: Partition,
        prefix: &[u8],
        order: Order,
    ) -> Result<ScanIter<'_>> {
        self.scan(partition, KeyRange::prefix(prefix), order)
    }

    /// Calls `visit` with each entry of `range` in `order` until it returns `Ok(false)`
    /// or an error (which is returned). Key and value are borrowed from the backend, so
    /// a backend that can (fjall) hands out its own buffers instead of copying each
    /// entry into two new `Vec`s, as [`scan`](Self::scan) must; reading a log page
    /// uses it.
    fn scan_with(
        &self,
        partition: Partition,
        range: KeyRange,
        order: Order,
        visit: &mut ScanVisitor<'_>,
    ) -> Result<()> {
        for kv in self.scan(partition, range, order)? {
            let (k, v) = kv?;
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// The first entry of `range` in `order`.
    fn first(
        &self,
        partition: Partition,
        range: KeyRange,
        order: Order,
    ) -> Result<Option<KeyValue>> {
        self.scan(partition, range, order)?.next().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Partition = Partition::new("p");

    type Brief<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

    /// Each op as (partition, key, value), for comparing with a literal.
    fn brief(ops: &[BatchOp]) -> Vec<Brief<'_>> {
        ops.iter()
            .map(|o| (o.partition.name(), &o.key[..], o.value.as_deref()))
            .collect()
    }

    #[test]
    fn batches_keep_the_last_write_per_key() {
        let mut b = Batch::new();
        b.put(P, b"a".to_vec(), vec![1]);
        b.put(P, b"b".to_vec(), vec![2]);
        b.delete(P, b"a".to_vec());
        b.put(Partition::new("q"), b"a".to_vec(), vec![3]);
        assert_eq!(b.len(), 4);
        let ops = b.into_ops();
        assert_eq!(
            brief(&ops),
            vec![
                ("p", &b"b"[..], Some(&[2u8][..])),
                ("p", &b"a"[..], None),
                ("q", &b"a"[..], Some(&[3u8][..])),
            ]
        );
    }

    #[test]
    fn sorted_batches_keep_the_last_write_per_key_in_key_order() {
        let q = Partition::new("q");
        let mut b = Batch::new();
        b.put(P, b"b".to_vec(), vec![1]);
        b.put(q, b"a".to_vec(), vec![2]);
        b.put(P, b"a".to_vec(), vec![3]);
        b.delete(P, b"b".to_vec());
        b.put(P, b"a".to_vec(), vec![4]);
        b.delete(q, b"z".to_vec());
        b.put(q, b"z".to_vec(), vec![5]);
        b.put(q, b"z".to_vec(), vec![6]);
        let ops = b.into_sorted_ops();
        assert_eq!(
            brief(&ops),
            vec![
                ("p", &b"a"[..], Some(&[4u8][..])),
                ("p", &b"b"[..], None),
                ("q", &b"a"[..], Some(&[2u8][..])),
                ("q", &b"z"[..], Some(&[6u8][..])),
            ]
        );
        assert!(Batch::new().into_sorted_ops().is_empty());
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        let r = KeyRange::prefix(b"ab");
        assert!(r.contains(b"ab"));
        assert!(r.contains(b"ab\xff\xff"));
        assert!(!r.contains(b"ac"));
        assert!(!r.contains(b"aa"));
        assert!(KeyRange::between(b"b".to_vec(), b"a".to_vec()).is_empty());
        assert!(!KeyRange::all().is_empty());
    }
}
