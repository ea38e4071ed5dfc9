//! The ledger: opening, and the atomic apply. Lookups are in `lookups.rs`, change
//! notification in `notify.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sync_types::merge::{Conflict, RecordHead};
use sync_types::{
    Cid, ContextId, DataRef, Hlc, INLINE_DATA_BYTES_MAX, Message, ProgressToken, ProtocolName,
    ProtocolPath, RecordId, StreamId, TenantId,
};

use crate::blobs::BlobContent;
use crate::error::{Error, Result};
use crate::hashed::HashedMessage;
use crate::layout::{self, Key, LogMeta, Pn, RecordRow, Tn, dec, enc};
use crate::notify::Notifier;
use crate::pending::{Entry, Pending, counter, read_messages};
use crate::prefetch::RecordRows;
use crate::store::{Batch, Durability, Order, Store, WriteScope};

/// Most messages in one [`Ledger::apply`] call.
pub const APPLY_BATCH_MESSAGES_MAX: usize = 10_000;

mod builder;

pub use builder::{IdSource, LedgerBuilder, OsRandom, SeededIds};

/// What happened to one message of [`Ledger::apply`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LedgerApplied {
    /// The message.
    pub cid: Cid,
    /// What the ledger did with it.
    pub outcome: LedgerOutcome,
}

/// What the ledger did with one message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum LedgerOutcome {
    /// Stored, indexed and appended to the log.
    Applied {
        /// Its log position.
        token: ProgressToken,
        /// Versions of the record that were pruned in the same commit.
        pruned: Vec<Cid>,
        /// Set when it is concurrent with the record's previous winner.
        conflict: Option<Conflict>,
    },
    /// Already stored; nothing changed.
    Duplicate,
    /// Neither the record's initial write nor its winner; nothing stored. Counts as
    /// success.
    Superseded {
        /// Set when it is concurrent with the record's winner.
        conflict: Option<Conflict>,
    },
    /// Refused: a version naming another protocol than its record's. Nothing stored.
    /// The engine refuses such a message before it reaches the ledger; this is the
    /// ledger's own guard, for two versions of one new record in one batch.
    Refused {
        /// Why, in words.
        reason: String,
    },
}

impl LedgerOutcome {
    /// Whether the message was newly stored.
    pub fn is_applied(&self) -> bool {
        matches!(self, LedgerOutcome::Applied { .. })
    }
}

/// A stored message with its inline payload and log position.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredMessage {
    /// Its cid.
    pub cid: Cid,
    /// The message.
    pub message: Message,
    /// Its inline payload, when stored.
    pub data: Option<Vec<u8>>,
    /// Its log position.
    pub position: u64,
}

/// Why a version is refused for naming another protocol than its record's: the one
/// wording the ledger and the engine use.
pub fn protocol_mismatch(record: &RecordId, stored: &ProtocolName, named: &ProtocolName) -> String {
    format!(
        "record {record} belongs to protocol {stored}; a version naming protocol {named} \
         cannot write or delete it"
    )
}

/// A record's retained versions and where it lives.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordInfo {
    /// The retained versions.
    pub head: RecordHead,
    /// The record's protocol, fixed by the first version stored.
    pub protocol: ProtocolName,
    /// The record's path, from the first write seen.
    pub path: Option<ProtocolPath>,
    /// The record's context, from the first write seen.
    pub context: Option<ContextId>,
}

/// Ledgers opened in this process so far.
static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical
/// section in this crate either completes or leaves the data untouched).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The durable ledger of one replica or node. See the crate documentation.
pub struct Ledger {
    pub(crate) store: Arc<dyn Store>,
    /// Where blob chunks live ([`LedgerBuilder::blob_content`]).
    pub(crate) content: Arc<dyn BlobContent>,
    /// Whether other processes write the store ([`Store::is_shared`]): then log heads
    /// are read under the store's tenant lock, never from `log_metas`, and `writer` is
    /// not taken by applies (the store's [`WriteScope`] locks order them).
    pub(crate) shared: bool,
    poisoned: AtomicBool,
    /// Applies committed by this process, counted after each commit (under `writer`):
    /// record rows read ahead ([`RecordRows`]) are current while it has not moved.
    pub(crate) commits: AtomicU64,
    /// This ledger among those opened in the process ([`RecordRows`] read from one are
    /// never taken as current by another, even on the same store).
    pub(crate) instance: u64,
    /// Serializes every apply (and log maintenance) on a store of its own: the merge
    /// reads record heads and log heads, and the batch that follows must be based on
    /// what it read.
    pub(crate) writer: Mutex<()>,
    /// The greatest timestamp stored (`meta/hlc`, see [`crate::causality`]); changed
    /// only under `writer`, after a commit.
    pub(crate) high_water: Mutex<Hlc>,
    /// Cached log metadata per tenant; changed only under `writer`, after a commit.
    log_metas: Mutex<HashMap<TenantId, (Tn, LogMeta)>>,
    /// Interned numbers known to be committed.
    names: Mutex<NameCache>,
    ids: Mutex<Box<dyn IdSource>>,
    pub(crate) notifier: Notifier,
    /// Serializes read-modify-write of links, dead letters and identities.
    pub(crate) registry_lock: Mutex<()>,
    /// Blobs being uploaded in this process.
    pub(crate) uploads: Mutex<std::collections::HashSet<Cid>>,
    /// This process's id as the owner of uploads on a shared store (`blob_owners`),
    /// drawn on first use.
    pub(crate) upload_owner: std::sync::OnceLock<StreamId>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("poisoned", &self.is_poisoned())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct NameCache {
    tenants: HashMap<TenantId, Tn>,
    /// Per tenant, so a lookup borrows the name instead of building a key from a copy.
    protocols: HashMap<Tn, HashMap<ProtocolName, Pn>>,
}

impl Ledger {
    /// Options for opening a ledger.
    pub fn builder() -> LedgerBuilder {
        LedgerBuilder::default()
    }

    /// Opens a ledger on `store` with OS randomness.
    pub fn open(store: impl Store) -> Result<Ledger> {
        Self::builder().open(store)
    }

    /// Opens a ledger on a fjall database in `path` with OS randomness.
    pub fn open_fjall(path: impl AsRef<Path>) -> Result<Ledger> {
        Self::builder().open_fjall(path)
    }

    /// Opens a ledger on a new in-memory store with OS randomness.
    pub fn in_memory() -> Result<Ledger> {
        Self::builder().open_in_memory()
    }

    fn open_with(
        store: Arc<dyn Store>,
        ids: Box<dyn IdSource>,
        content: Arc<dyn BlobContent>,
    ) -> Result<Ledger> {
        const KEY: &[u8] = b"layout";
        match store.get(layout::META, KEY)? {
            Some(bytes) => {
                let mut found: u32 = dec(layout::META, KEY, &bytes)?;
                if found == 2 {
                    // Record rows first (resumable on their own), then the blob index,
                    // whose last commit writes version 3.
                    crate::upgrade::records_from_v2(&*store)?;
                    crate::blob_refs::upgrade_from_v2(&*store)?;
                    found = 3;
                }
                if found == 3 || found == 4 {
                    // Layout 4 only adds pruned ids to new log entries; older entries
                    // keep their encoding and read with an empty list. Layout 5 only
                    // leaves the cid out of new index entries; older ones keep it and
                    // read as before.
                    store.put(
                        layout::META,
                        KEY,
                        enc(&layout::LAYOUT_VERSION),
                        Durability::SyncData,
                    )?;
                } else if found != layout::LAYOUT_VERSION {
                    return Err(Error::UnsupportedLayout {
                        found,
                        supported: layout::LAYOUT_VERSION,
                    });
                }
            }
            None => store.put(
                layout::META,
                KEY,
                enc(&layout::LAYOUT_VERSION),
                Durability::SyncData,
            )?,
        }
        let high_water = crate::causality::load_high_water(&*store)?;
        Ok(Ledger {
            shared: store.is_shared(),
            store,
            content,
            poisoned: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            writer: Mutex::new(()),
            high_water: Mutex::new(high_water),
            log_metas: Mutex::new(HashMap::new()),
            names: Mutex::new(NameCache::default()),
            ids: Mutex::new(ids),
            notifier: Notifier::new(),
            registry_lock: Mutex::new(()),
            uploads: Mutex::new(Default::default()),
            upload_owner: std::sync::OnceLock::new(),
        })
    }

    /// The storage backend.
    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Whether a failed write has poisoned the ledger; a poisoned ledger refuses every
    /// write with [`Error::Poisoned`] and must be reopened (reads still work).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Makes every commit so far at least as durable as `durability` (a sync after a
    /// run of buffered commits).
    pub fn persist(&self, durability: Durability) -> Result<()> {
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        self.store
            .persist(durability)
            .inspect_err(|e| self.poison_on(e))
    }

    /// Syncs everything, lets the backend tidy up for a fast reopen
    /// ([`Store::close`]) and drops the ledger. Dropping without `close` loses nothing
    /// that was committed with a synced durability.
    pub fn close(self) -> Result<()> {
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let _writer = lock(&self.writer);
        self.store.close().inspect_err(|e| self.poison_on(e))
    }

    fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    /// Commits `batch`, poisoning the ledger when the backend fails: after a failed
    /// write (above all a failed fsync) the state on disk is unknown, and writing on
    /// top of it could make an unacknowledged commit look acknowledged.
    /// A fresh id from the ledger's [`IdSource`] (stream ids, staging ids).
    pub(crate) fn fresh_id(&self) -> StreamId {
        lock(&self.ids).stream_id()
    }

    pub(crate) fn commit(&self, batch: Batch, durability: Durability) -> Result<()> {
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        self.store
            .commit(batch, durability)
            .inspect_err(|e| self.poison_on(e))
    }

    /// Poisons on errors that leave the store's state unknown (a backend failure), not
    /// on refusals that wrote nothing (an invalid key).
    fn poison_on(&self, e: &Error) {
        if matches!(e, Error::Backend(_) | Error::Poisoned) {
            self.poison();
        }
    }

    /// A tenant's interned number, if the tenant has ever been applied.
    pub(crate) fn tenant_no(&self, t: &TenantId) -> Result<Option<Tn>> {
        if let Some(n) = lock(&self.names).tenants.get(t) {
            return Ok(Some(*n));
        }
        let key = layout::name_tenant_key(t);
        let Some(v) = self.store.get(layout::NAMES, &key)? else {
            return Ok(None);
        };
        let n = Tn(dec(layout::NAMES, &key, &v)?);
        lock(&self.names).tenants.insert(t.clone(), n);
        Ok(Some(n))
    }

    /// A protocol's interned number within a tenant, if it has ever been applied.
    pub(crate) fn protocol_no(&self, t: Tn, p: &ProtocolName) -> Result<Option<Pn>> {
        if let Some(n) = lock(&self.names).protocols.get(&t).and_then(|m| m.get(p)) {
            return Ok(Some(*n));
        }
        let key = layout::name_protocol_key(t, p);
        let Some(v) = self.store.get(layout::NAMES, &key)? else {
            return Ok(None);
        };
        let n = Pn(dec(layout::NAMES, &key, &v)?);
        lock(&self.names)
            .protocols
            .entry(t)
            .or_default()
            .insert(p.clone(), n);
        Ok(Some(n))
    }

    /// Both numbers, when the tenant and protocol exist.
    pub(crate) fn names_of(&self, t: &TenantId, p: &ProtocolName) -> Result<Option<(Tn, Pn)>> {
        let Some(tn) = self.tenant_no(t)? else {
            return Ok(None);
        };
        Ok(self.protocol_no(tn, p)?.map(|pn| (tn, pn)))
    }

    /// The log metadata of a tenant with its number, if its log exists.
    pub(crate) fn log_meta(&self, t: &TenantId) -> Result<Option<(Tn, LogMeta)>> {
        if !self.shared
            && let Some(m) = lock(&self.log_metas).get(t)
        {
            return Ok(Some(*m));
        }
        let Some(tn) = self.tenant_no(t)? else {
            return Ok(None);
        };
        let key = Key::tn(tn).into_vec();
        let Some(bytes) = self.store.get(layout::LOG_META, &key)? else {
            return Ok(None);
        };
        let meta: LogMeta = dec(layout::LOG_META, &key, &bytes)?;
        if !self.shared {
            lock(&self.log_metas).insert(t.clone(), (tn, meta));
        }
        Ok(Some((tn, meta)))
    }

    /// A protocol number from the cache of committed numbers.
    pub(crate) fn cached_protocol(&self, t: Tn, p: &ProtocolName) -> Option<Pn> {
        lock(&self.names)
            .protocols
            .get(&t)
            .and_then(|m| m.get(p))
            .copied()
    }

    /// Caches a committed protocol number.
    pub(crate) fn cache_protocol(&self, t: Tn, p: &ProtocolName, n: Pn) {
        lock(&self.names)
            .protocols
            .entry(t)
            .or_default()
            .insert(p.clone(), n);
    }

    /// Applies a batch of one tenant's messages in ONE atomic commit.
    ///
    /// Under the writer lock (on a shared store: in a write transaction holding the
    /// tenant's [`WriteScope::Tenant`] lock, see [`crate::store::WriteTxn`]), for each
    /// message in order: a `Configure` is stored unless present (all `Configure`s are
    /// retained, none is pruned); a `Write` or `Delete` is merged with
    /// [`merge_one`](sync_types::merge::merge_one) against its record's head (as left
    /// by the messages before it in the batch). Every accepted message is stored with its
    /// inline data, indexed and appended to the tenant's log; versions the merge
    /// prunes are deleted with their index entries and log entries. Then everything,
    /// with the new record heads, the log head and any newly interned tenant or
    /// protocol number, is committed as one batch with `durability`, so a crash
    /// leaves all of it or none of it.
    ///
    /// Validation and dependency checks are the caller's job. The ledger only refuses
    /// the whole call, before writing anything, when a message belongs to another
    /// tenant ([`Error::WrongTenant`]), inline data does not match its message's data
    /// reference ([`Error::DataMismatch`]), or the batch is larger than
    /// [`APPLY_BATCH_MESSAGES_MAX`].
    ///
    /// When nothing is accepted there is no commit, but a synced `durability` still
    /// syncs (a duplicate may be acknowledged as durable while its original was
    /// committed `Buffered`). Listeners and waiters are notified after the commit.
    pub fn apply(
        &self,
        tenant: &TenantId,
        items: impl IntoIterator<Item = (Message, Option<Vec<u8>>)>,
        durability: Durability,
    ) -> Result<Vec<LedgerApplied>> {
        let items: Vec<HashedMessage> = items
            .into_iter()
            .map(|(message, data)| HashedMessage::new(message, data))
            .collect();
        self.apply_hashed(tenant, &items.iter().collect::<Vec<_>>(), durability)
    }

    /// [`apply`](Self::apply) of messages already hashed by [`HashedMessage::new`]: each
    /// is stored under the cid it carries, without hashing it again, and nothing is
    /// copied (the log entries are encoded from the borrowed messages). The same checks
    /// otherwise (tenant, inline data against the data reference, batch size).
    pub fn apply_hashed(
        &self,
        tenant: &TenantId,
        items: &[&HashedMessage],
        durability: Durability,
    ) -> Result<Vec<LedgerApplied>> {
        self.apply_prefetched(tenant, items, durability, None)
    }

    /// [`apply_hashed`](Self::apply_hashed) with record rows the caller read ahead
    /// ([`read_records`](Self::read_records)) for its own checks: when they are still
    /// current (this tenant's, no commit since they were read, a store with one writer
    /// process) the merge starts from them instead of reading the same rows again;
    /// otherwise, and for records they do not cover, it reads as `apply_hashed` does.
    /// The outcome is the same either way.
    pub fn apply_hashed_with_rows(
        &self,
        tenant: &TenantId,
        items: &[&HashedMessage],
        durability: Durability,
        rows: RecordRows,
    ) -> Result<Vec<LedgerApplied>> {
        self.apply_prefetched(tenant, items, durability, Some(rows))
    }

    fn apply_prefetched(
        &self,
        tenant: &TenantId,
        items: &[&HashedMessage],
        durability: Durability,
        rows: Option<RecordRows>,
    ) -> Result<Vec<LedgerApplied>> {
        if items.len() > APPLY_BATCH_MESSAGES_MAX {
            return Err(Error::LimitExceeded {
                what: "apply batch",
                len: items.len(),
                max: APPLY_BATCH_MESSAGES_MAX,
            });
        }
        let mut checked = Vec::with_capacity(items.len());
        for item in items {
            let (cid, message, data) = (item.cid(), item.message(), item.data());
            if message.tenant() != tenant {
                return Err(Error::WrongTenant {
                    cid,
                    expected: tenant.clone(),
                    found: message.tenant().clone(),
                });
            }
            if let Some(bytes) = data {
                let declared = match message {
                    Message::Write(w) => w.data,
                    _ => None,
                };
                let ok = bytes.len() as u64 <= INLINE_DATA_BYTES_MAX
                    && declared == Some(DataRef::of(bytes));
                if !ok {
                    return Err(Error::DataMismatch { cid });
                }
            }
            checked.push(Entry { cid, message, data });
        }
        if checked.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }

        // A store of its own is ordered by this ledger's writer lock; a shared one by
        // the store's scope locks, taken in the transaction below.
        let writer = (!self.shared).then(|| lock(&self.writer));
        // Looked up before the transaction holds a connection of a shared store's pool.
        let known = self.tenant_no(tenant)?;
        let mut txn = self.store.begin()?;
        // About seven writes per message: body, indexes, record head.
        let mut batch = Batch::with_capacity(checked.len() * 7 + 8);
        let (tn, tenant_new) = match known {
            Some(tn) => (tn, false),
            None => {
                // Another writer may allocate the same tenant at the same moment: the
                // lock orders them, and the second one finds the first one's number.
                txn.lock(WriteScope::TenantNames)?;
                let key = layout::name_tenant_key(tenant);
                match txn.get(layout::NAMES, &key)? {
                    Some(v) => (Tn(dec(layout::NAMES, &key, &v)?), false),
                    None => {
                        let next = counter(&mut *txn, layout::NEXT_TENANT_KEY)?;
                        let after = next.checked_add(1).ok_or(Error::LimitExceeded {
                            what: "tenants",
                            len: usize::MAX,
                            max: u32::MAX as usize,
                        })?;
                        let tn = Tn(next);
                        batch.put(layout::NAMES, key, enc(&tn.0));
                        batch.put(
                            layout::NAMES,
                            layout::name_tenant_reverse_key(tn),
                            enc(tenant),
                        );
                        batch.put(layout::NAMES, layout::NEXT_TENANT_KEY, enc(&after));
                        (tn, true)
                    }
                }
            }
        };
        txn.lock(WriteScope::Tenant(tn.0))?;
        let stored_meta = if tenant_new {
            None
        } else if self.shared {
            // Never a cached head: another process may have appended since.
            let key = Key::tn(tn).into_vec();
            match txn.get(layout::LOG_META, &key)? {
                Some(bytes) => Some(dec::<LogMeta>(layout::LOG_META, &key, &bytes)?),
                None => None,
            }
        } else {
            self.log_meta(tenant)?.map(|(_, m)| m)
        };
        let mut meta = match stored_meta {
            Some(m) => m,
            None => LogMeta {
                stream_id: lock(&self.ids).stream_id(),
                epoch: 1,
                head: 0,
                compacted_through: 0,
            },
        };
        let head_before = meta.head;
        // Read the record rows the merge needs up front, in key order, in one batched
        // read: a database answers it in one round trip, and fjall's consecutive
        // lookups search neighbouring memtable nodes that are still cached.
        // Rows the caller read ahead are used when nothing was committed since (checked
        // here, under the writer lock that orders every commit).
        let mut loaded = match rows.and_then(|r| r.take_current(self, tenant)) {
            Some(rows) if !tenant_new => rows,
            _ => HashMap::new(),
        };
        let mut retained = HashMap::new();
        if !tenant_new {
            let mut ids: Vec<RecordId> = checked
                .iter()
                .filter_map(|e| e.message.record_id())
                .filter(|id| !loaded.contains_key(id))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            let keys: Vec<Vec<u8>> = ids.iter().map(|id| layout::record_key(tn, id)).collect();
            let rows = txn.get_many(layout::RECORDS, &keys)?;
            loaded.reserve(ids.len());
            let mut heads = Vec::new();
            for ((id, key), row) in ids.into_iter().zip(&keys).zip(rows) {
                let row: Option<RecordRow> = match row {
                    Some(bytes) => Some(dec(layout::RECORDS, key, &bytes)?),
                    None => None,
                };
                if self.shared
                    && let Some(row) = &row
                {
                    heads.extend(row.head.retained());
                }
                loaded.insert(id, row);
            }
            if !heads.is_empty() {
                // Versions a new winner may prune, in two reads instead of two per
                // pruned version.
                retained = read_messages(&mut *txn, tn, &heads)?;
            }
        }
        let tenant_mark_key = crate::causality::tenant_hlc_key(tn);
        let tenant_mark = if self.shared && !tenant_new {
            match txn.get(layout::META, &tenant_mark_key)? {
                Some(bytes) => dec(layout::META, &tenant_mark_key, &bytes)?,
                None => Hlc::ZERO,
            }
        } else {
            Hlc::ZERO
        };
        let mut pending = Pending {
            ledger: self,
            tn,
            tenant_new,
            txn,
            batch,
            loaded,
            retained,
            records: HashMap::with_capacity(checked.len()),
            added: HashMap::with_capacity(checked.len()),
            new_protocols: HashMap::new(),
            next_protocol: None,
        };
        let mut results = Vec::with_capacity(checked.len());
        // A shared store keeps one mark per tenant (written under the tenant's lock),
        // because a single mark would be one row every writer of every tenant updates.
        let high_water_before = if self.shared {
            tenant_mark
        } else {
            *lock(&self.high_water)
        };
        let mut high_water = high_water_before;
        for entry in checked {
            let cid = entry.cid;
            let timestamp = entry.message.timestamp();
            let outcome = match entry.message {
                Message::Configure(_) => {
                    if pending.has_message(&cid)? {
                        LedgerOutcome::Duplicate
                    } else {
                        let token = pending.store_message(&mut meta, entry, Vec::new(), None)?;
                        LedgerOutcome::Applied {
                            token,
                            pruned: Vec::new(),
                            conflict: None,
                        }
                    }
                }
                Message::Write(_) | Message::Delete(_) => {
                    Self::merge_entry(&mut meta, &mut pending, entry)?
                }
            };
            if matches!(outcome, LedgerOutcome::Applied { .. }) {
                high_water = high_water.max(timestamp);
            }
            results.push(LedgerApplied { cid, outcome });
        }
        if meta.head == head_before {
            // Nothing accepted: no commit, no notification. A duplicate may still be
            // acknowledged as durable, and its original may have been committed with
            // `Buffered`, so a synced apply syncs what is there.
            drop(pending);
            if durability.is_synced() {
                self.store
                    .persist(durability)
                    .inspect_err(|e| self.poison_on(e))?;
            }
            return Ok(results);
        }
        for (id, row) in &pending.records {
            pending.batch.put(
                layout::RECORDS,
                layout::record_key(tn, id),
                layout::enc_row(row),
            );
        }
        pending
            .batch
            .put(layout::LOG_META, Key::tn(tn).into_vec(), enc(&meta));
        if high_water > high_water_before {
            // In the same batch as the messages it covers: see `crate::causality`.
            let key = if self.shared {
                tenant_mark_key
            } else {
                crate::causality::HLC_KEY.to_vec()
            };
            pending.batch.put(layout::META, key, enc(&high_water));
        }
        let Pending {
            mut txn,
            batch,
            new_protocols,
            ..
        } = pending;
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        txn.announce(tenant, meta.head);
        txn.commit(batch, durability)
            .inspect_err(|e| self.poison_on(e))?;
        self.commits.fetch_add(1, Ordering::Release);
        {
            let mut names = lock(&self.names);
            names.tenants.insert(tenant.clone(), tn);
            for (p, n) in new_protocols {
                names.protocols.entry(tn).or_default().insert(p, n);
            }
        }
        if !self.shared {
            lock(&self.log_metas).insert(tenant.clone(), (tn, meta));
        }
        {
            let mut mark = lock(&self.high_water);
            *mark = (*mark).max(high_water);
        }
        drop(writer);
        self.notifier.notify(&[(tenant.clone(), meta.head)]);
        Ok(results)
    }

    /// Raises the compaction floor of a tenant's log: a cursor at a position below
    /// `through` gets a [`GapReason::TooOld`](sync_types::GapReason::TooOld) answer.
    ///
    /// Nothing is deleted: the log holds the message bodies, and versions that were
    /// pruned have already lost their entries at apply time, so the log never holds
    /// more than the retained messages. The floor exists so an operator can force
    /// readers with old cursors to reconcile instead of replaying. Returns the new
    /// floor (never lowered, never above the head).
    pub fn compact_log(
        &self,
        tenant: &TenantId,
        through: u64,
        durability: Durability,
    ) -> Result<u64> {
        let _writer = (!self.shared).then(|| lock(&self.writer));
        let Some(tn) = self.tenant_no(tenant)? else {
            return Ok(0);
        };
        let mut txn = self.store.begin()?;
        txn.lock(WriteScope::Tenant(tn.0))?;
        let key = Key::tn(tn).into_vec();
        let mut meta: LogMeta = match txn.get(layout::LOG_META, &key)? {
            Some(bytes) => dec(layout::LOG_META, &key, &bytes)?,
            None => return Ok(0),
        };
        let floor = through.min(meta.head).max(meta.compacted_through);
        if floor == meta.compacted_through {
            return Ok(floor);
        }
        meta.compacted_through = floor;
        let mut batch = Batch::new();
        batch.put(layout::LOG_META, key, enc(&meta));
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        txn.commit(batch, durability)
            .inspect_err(|e| self.poison_on(e))?;
        if !self.shared {
            lock(&self.log_metas).insert(tenant.clone(), (tn, meta));
        }
        Ok(floor)
    }

    /// Every tenant that has ever had a message applied, ordered by id.
    pub fn tenants(&self) -> Result<Vec<TenantId>> {
        let mut out: Vec<TenantId> = self
            .store
            .scan_prefix(layout::NAMES, b"T", Order::Ascending)?
            .map(|kv| {
                let (k, v) = kv?;
                dec(layout::NAMES, &k, &v)
            })
            .collect::<Result<_>>()?;
        out.sort();
        Ok(out)
    }
}
