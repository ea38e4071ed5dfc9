//! The fjall backend: one fjall database on a directory, one keyspace per partition.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use fjall::config::CompressionPolicy;
use fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode,
};

use super::{
    Batch, Durability, KeyRange, Order, Partition, ScanIter, ScanVisitor, Store, check_key,
};
use crate::error::{Error, Result};

/// Default block cache, in bytes.
pub const CACHE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Default size at which a partition's in-memory table is flushed to disk, in bytes.
pub const MEMTABLE_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;

/// Default journal size after which fjall flushes tables so the journal can be
/// truncated, in bytes. It bounds the journal a reopen after a crash must replay.
pub const JOURNAL_BYTES_MAX_DEFAULT: u64 = 128 * 1024 * 1024;

/// A [`Store`] on a fjall database in a directory.
///
/// fjall writes a batch to its journal and then to in-memory tables; a background
/// worker flushes tables to disk and compacts them. By default a fjall batch only
/// reaches OS buffers, so this backend always passes an explicit
/// [`PersistMode`] that matches the [`Durability`] the caller asked for.
///
/// fjall poisons its database after a failed journal write or sync and then refuses
/// writes; this backend reports that as [`Error::Poisoned`].
pub struct FjallStore {
    db: Database,
    memtable_bytes: u64,
    path: PathBuf,
    /// Open keyspaces by partition name: a handful, so a linear scan beats hashing.
    keyspaces: RwLock<Vec<(&'static str, Keyspace)>>,
}

/// Options for opening a [`FjallStore`].
#[derive(Clone, Debug)]
#[must_use]
pub struct FjallStoreBuilder {
    path: PathBuf,
    cache_bytes: u64,
    memtable_bytes: u64,
    journal_bytes_max: u64,
    worker_threads: Option<usize>,
}

impl FjallStoreBuilder {
    /// Block cache size in bytes. Default: [`CACHE_BYTES_DEFAULT`].
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Size at which a partition's in-memory table is flushed, in bytes. Default:
    /// [`MEMTABLE_BYTES_DEFAULT`] (smaller tables are cheaper to insert into; fjall's
    /// own default is 64 MiB).
    pub fn memtable_bytes(mut self, bytes: u64) -> Self {
        self.memtable_bytes = bytes;
        self
    }

    /// Journal size that forces a flush, in bytes. Default:
    /// [`JOURNAL_BYTES_MAX_DEFAULT`] (fjall's own default is 512 MiB, which makes a
    /// reopen after a crash replay up to that much).
    pub fn journal_bytes_max(mut self, bytes: u64) -> Self {
        self.journal_bytes_max = bytes;
        self
    }

    /// Background flush and compaction threads. Default: fjall's (the number of cores,
    /// at most 4).
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = Some(threads.max(1));
        self
    }

    /// Opens (or creates) the database.
    pub fn open(self) -> Result<FjallStore> {
        let mut builder = Database::builder(&self.path)
            .cache_size(self.cache_bytes)
            .max_journaling_size(self.journal_bytes_max);
        if let Some(n) = self.worker_threads {
            builder = builder.worker_threads(n);
        }
        let db = builder.open().map_err(map_err)?;
        Ok(FjallStore {
            db,
            memtable_bytes: self.memtable_bytes,
            path: self.path,
            keyspaces: RwLock::new(Vec::new()),
        })
    }
}

impl FjallStore {
    /// Options for a store in `path`.
    pub fn builder(path: impl AsRef<Path>) -> FjallStoreBuilder {
        FjallStoreBuilder {
            path: path.as_ref().to_path_buf(),
            cache_bytes: CACHE_BYTES_DEFAULT,
            memtable_bytes: MEMTABLE_BYTES_DEFAULT,
            journal_bytes_max: JOURNAL_BYTES_MAX_DEFAULT,
            worker_threads: None,
        }
    }

    /// Opens (or creates) a store in `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder(path).open()
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes every in-memory table to disk and syncs the journal, so the next open
    /// has no journal to replay. Used on a clean close; never needed for durability.
    pub fn flush_tables(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncAll).map_err(map_err)?;
        let keyspaces: Vec<Keyspace> = self
            .read_keyspaces()
            .iter()
            .map(|(_, ks)| ks.clone())
            .collect();
        for ks in keyspaces {
            ks.rotate_memtable_and_wait().map_err(map_err)?;
        }
        Ok(())
    }

    fn read_keyspaces(&self) -> std::sync::RwLockReadGuard<'_, Vec<(&'static str, Keyspace)>> {
        // The list only ever gains complete entries, so a poisoned lock is still sound.
        self.keyspaces.read().unwrap_or_else(|e| e.into_inner())
    }

    fn find(list: &[(&'static str, Keyspace)], name: &str) -> Option<Keyspace> {
        list.iter()
            .find(|(n, _)| std::ptr::eq(*n, name) || *n == name)
            .map(|(_, ks)| ks.clone())
    }

    fn keyspace(&self, partition: Partition) -> Result<Keyspace> {
        if let Some(ks) = Self::find(&self.read_keyspaces(), partition.name()) {
            return Ok(ks);
        }
        let mut list = self.keyspaces.write().unwrap_or_else(|e| e.into_inner());
        if let Some(ks) = Self::find(&list, partition.name()) {
            return Ok(ks);
        }
        let large = partition.large_values();
        let memtable = self.memtable_bytes;
        let ks = self
            .db
            .keyspace(partition.name(), || {
                // lz4 on the data blocks of every level: fjall's default leaves levels 0
                // and 1 uncompressed, which is where most of a store below a few GiB
                // lives. Keys, the JSON and the repeated names of a message compress;
                // the hashes do not. Fixed at creation: a keyspace created before keeps
                // its own policy (fjall stores it), and both read alike.
                let opts = KeyspaceCreateOptions::default()
                    .max_memtable_size(memtable)
                    .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4));
                if large {
                    opts.with_kv_separation(Some(KvSeparationOptions::default()))
                } else {
                    opts
                }
            })
            .map_err(map_err)?;
        list.push((partition.name(), ks.clone()));
        Ok(ks)
    }
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn map_err(e: fjall::Error) -> Error {
    match e {
        fjall::Error::Poisoned => Error::Poisoned,
        other => Error::backend(other),
    }
}

fn persist_mode(durability: Durability) -> PersistMode {
    match durability {
        Durability::Buffered => PersistMode::Buffer,
        Durability::SyncData => PersistMode::SyncData,
        Durability::SyncAll => PersistMode::SyncAll,
    }
}

impl Store for FjallStore {
    fn get(&self, partition: Partition, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        let ks = self.keyspace(partition)?;
        Ok(ks.get(key).map_err(map_err)?.map(|v| v.to_vec()))
    }

    fn scan(&self, partition: Partition, range: KeyRange, order: Order) -> Result<ScanIter<'_>> {
        let ks = self.keyspace(partition)?;
        if range.is_empty() {
            return Ok(Box::new(std::iter::empty()));
        }
        let iter = ks.range::<Vec<u8>, _>((range.start, range.end));
        let map = |guard: fjall::Guard| {
            guard
                .into_inner()
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(map_err)
        };
        Ok(match order {
            Order::Ascending => Box::new(iter.map(map)),
            Order::Descending => Box::new(iter.rev().map(map)),
        })
    }

    fn scan_with(
        &self,
        partition: Partition,
        range: KeyRange,
        order: Order,
        visit: &mut ScanVisitor<'_>,
    ) -> Result<()> {
        let ks = self.keyspace(partition)?;
        if range.is_empty() {
            return Ok(());
        }
        let iter = ks.range::<Vec<u8>, _>((range.start, range.end));
        let mut each = |guard: fjall::Guard| -> Result<bool> {
            let (k, v) = guard.into_inner().map_err(map_err)?;
            visit(&k, &v)
        };
        match order {
            Order::Ascending => {
                for guard in iter {
                    if !each(guard)? {
                        break;
                    }
                }
            }
            Order::Descending => {
                for guard in iter.rev() {
                    if !each(guard)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn commit(&self, batch: Batch, durability: Durability) -> Result<()> {
        if batch.is_empty() {
            return self.persist(durability);
        }
        for op in batch.ops() {
            check_key(&op.key)?;
        }
        // The batch touches a few partitions many times: resolve each handle once.
        let mut handles: Vec<(&'static str, Keyspace)> = Vec::new();
        // Sized up front: a batch of a thousand messages holds thousands of operations,
        // and growing it reallocates (and copies) it a dozen times per commit.
        let mut wb = fjall::OwnedWriteBatch::with_capacity(self.db.clone(), batch.len())
            .durability(Some(persist_mode(durability)));
        for op in batch.into_sorted_ops() {
            let name = op.partition.name();
            let ks = match handles
                .iter()
                .position(|(n, _)| std::ptr::eq(*n, name) || *n == name)
            {
                Some(at) => &handles[at].1,
                None => {
                    handles.push((name, self.keyspace(op.partition)?));
                    &handles[handles.len() - 1].1
                }
            };
            match op.value {
                Some(v) => wb.insert(ks, op.key, v),
                None => wb.remove(ks, op.key),
            }
        }
        wb.commit().map_err(map_err)
    }

    fn persist(&self, durability: Durability) -> Result<()> {
        self.db.persist(persist_mode(durability)).map_err(map_err)
    }

    fn close(&self) -> Result<()> {
        self.flush_tables()
    }
}
