//! The in-memory backend, for tests and deterministic simulation.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{
    Batch, BatchOp, Durability, KeyRange, KeyValue, Order, Partition, ScanIter, Store, check_key,
};
use crate::error::{Error, Result};

/// Items fetched per lock acquisition while scanning: a scan never holds the lock
/// while the caller works, and a concurrent commit waits for at most one chunk.
const SCAN_CHUNK_ITEMS: usize = 256;

type Tables = HashMap<&'static str, BTreeMap<Vec<u8>, Vec<u8>>>;

/// An in-memory [`Store`] that models what survives a crash.
///
/// It keeps what reads see (every committed batch) and, for each buffered batch since
/// the last sync, the values it replaced: a power loss undoes those batches, newest
/// first, which leaves every batch up to the last synced one. A synced commit only drops
/// the undo records, so a store that always syncs keeps one copy of its data and pays
/// nothing for the model. A clone is another handle to
/// the same store, so a simulation keeps a handle, drops the [`Ledger`](crate::Ledger)
/// to "crash" it, optionally calls [`simulate_power_loss`](Self::simulate_power_loss),
/// and opens a new ledger on the same handle.
///
/// - A process crash keeps everything, as fjall's `Buffered` writes survive in the OS:
///   reopen on the same handle.
/// - A power loss keeps every batch up to the last synced commit (or
///   [`persist`](Store::persist)) plus, at the caller's choice, a prefix of the
///   buffered batches after it: a sequential journal loses a suffix, never a middle.
///
/// Fault injection ([`fail_syncs`](Self::fail_syncs)) makes synced commits fail, to
/// test poisoning.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<RwLock<Inner>>,
}

/// A key a buffered batch wrote and the value it had before (`None`: absent).
type Undo = (&'static str, Vec<u8>, Option<Vec<u8>>);

#[derive(Default)]
struct Inner {
    live: Tables,
    /// Per buffered batch since the last sync, oldest first: what undoes it.
    unsynced: Vec<Vec<Undo>>,
    fail_syncs: bool,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of committed batches a power loss could lose.
    pub fn unsynced_batches(&self) -> usize {
        self.read().unsynced.len()
    }

    /// Simulates a power loss: the store goes back to its last synced state plus the
    /// first `keep_unsynced` buffered batches after it (clamped to how many there are).
    /// Call it while no ledger is open on the store.
    pub fn simulate_power_loss(&self, keep_unsynced: usize) {
        let mut inner = self.write();
        let keep = keep_unsynced.min(inner.unsynced.len());
        let lost: Vec<Vec<Undo>> = inner.unsynced.drain(keep..).collect();
        // What is kept counts as durable from now on.
        inner.unsynced.clear();
        for undo in lost.into_iter().rev() {
            for (partition, key, old) in undo.into_iter().rev() {
                let table = inner.live.entry(partition).or_default();
                match old {
                    Some(v) => table.insert(key, v),
                    None => table.remove(&key),
                };
            }
        }
    }

    /// While `fail` is set, every commit or persist with a synced durability fails with
    /// an I/O error and is not applied, as a failed fsync would.
    pub fn fail_syncs(&self, fail: bool) {
        self.write().fail_syncs = fail;
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated (apply
        // only inserts and removes whole entries), so a poisoned lock is still usable.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn sync_failure() -> Error {
        Error::backend(std::io::Error::other("injected fsync failure"))
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.read();
        f.debug_struct("MemoryStore")
            .field("partitions", &inner.live.len())
            .field("unsynced_batches", &inner.unsynced.len())
            .finish()
    }
}

/// Applies `ops`; with `undo`, records what each op replaced.
fn apply(tables: &mut Tables, ops: Vec<BatchOp>, mut undo: Option<&mut Vec<Undo>>) {
    for op in ops {
        let partition = op.partition.name();
        let table = tables.entry(partition).or_default();
        let key = undo.is_some().then(|| op.key.clone());
        let old = match op.value {
            Some(v) => table.insert(op.key, v),
            None => table.remove(&op.key),
        };
        if let (Some(undo), Some(key)) = (undo.as_deref_mut(), key) {
            undo.push((partition, key, old));
        }
    }
}

impl Store for MemoryStore {
    fn get(&self, partition: Partition, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        Ok(self
            .read()
            .live
            .get(partition.name())
            .and_then(|t| t.get(key))
            .cloned())
    }

    fn scan(&self, partition: Partition, range: KeyRange, order: Order) -> Result<ScanIter<'_>> {
        Ok(Box::new(MemoryScan {
            store: self,
            partition,
            range,
            order,
            buffer: Vec::new(),
            done: false,
        }))
    }

    /// One entry cloned, where the default (a scan) would clone a whole chunk: the log
    /// head is read this way for every log page.
    fn first(
        &self,
        partition: Partition,
        range: KeyRange,
        order: Order,
    ) -> Result<Option<KeyValue>> {
        if range.is_empty() {
            return Ok(None);
        }
        let inner = self.read();
        let Some(table) = inner.live.get(partition.name()) else {
            return Ok(None);
        };
        let mut entries = table.range::<Vec<u8>, _>((range.start, range.end));
        let entry = match order {
            Order::Ascending => entries.next(),
            Order::Descending => entries.next_back(),
        };
        Ok(entry.map(|(k, v)| (k.clone(), v.clone())))
    }

    /// Never: a commit only takes a lock and updates maps.
    fn commit_may_block(&self) -> bool {
        false
    }

    fn commit(&self, batch: Batch, durability: Durability) -> Result<()> {
        for op in batch.ops() {
            check_key(&op.key)?;
        }
        let ops = batch.into_sorted_ops();
        let mut inner = self.write();
        if durability.is_synced() && inner.fail_syncs {
            return Err(Self::sync_failure());
        }
        if durability.is_synced() {
            // Everything committed so far is now durable: nothing left to undo.
            apply(&mut inner.live, ops, None);
            inner.unsynced.clear();
        } else {
            let mut undo = Vec::with_capacity(ops.len());
            apply(&mut inner.live, ops, Some(&mut undo));
            inner.unsynced.push(undo);
        }
        Ok(())
    }

    fn persist(&self, durability: Durability) -> Result<()> {
        let mut inner = self.write();
        if durability.is_synced() {
            if inner.fail_syncs {
                return Err(Self::sync_failure());
            }
            inner.unsynced.clear();
        }
        Ok(())
    }
}

/// A scan that re-enters the lock once per chunk, continuing after the last key it
/// returned.
struct MemoryScan<'a> {
    store: &'a MemoryStore,
    partition: Partition,
    range: KeyRange,
    order: Order,
    buffer: Vec<KeyValue>,
    done: bool,
}

impl MemoryScan<'_> {
    fn refill(&mut self) {
        let inner = self.store.read();
        let Some(table) = inner.live.get(self.partition.name()) else {
            self.done = true;
            return;
        };
        if self.range.is_empty() {
            self.done = true;
            return;
        }
        let bounds = (self.range.start.clone(), self.range.end.clone());
        let chunk: Vec<KeyValue> = match self.order {
            Order::Ascending => table
                .range::<Vec<u8>, _>(bounds)
                .take(SCAN_CHUNK_ITEMS)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Order::Descending => table
                .range::<Vec<u8>, _>(bounds)
                .rev()
                .take(SCAN_CHUNK_ITEMS)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        drop(inner);
        if chunk.len() < SCAN_CHUNK_ITEMS {
            self.done = true;
        }
        if let Some((last, _)) = chunk.last() {
            match self.order {
                Order::Ascending => self.range.start = Bound::Excluded(last.clone()),
                Order::Descending => self.range.end = Bound::Excluded(last.clone()),
            }
        }
        // Popped from the back, so store the chunk reversed.
        self.buffer = chunk;
        self.buffer.reverse();
    }
}

impl Iterator for MemoryScan<'_> {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty() && !self.done {
            self.refill();
        }
        self.buffer.pop().map(Ok)
    }
}
