//! The key index: each collection's live natural keys in key order, so a query reads
//! one page of keys and loads only the records on it.
//!
//! The replica stores records by hashed id; the index maps `(protocol, key)` to the
//! record id, in a store of its own (`dir/keys`, fjall; in memory for an in-memory
//! `Weft`). It is derived data: it **follows the replica's log** from a cursor stored in
//! the same atomic batch as the entries it produced, before every query. Every change
//! reaches it the same way, local writes and remote ones, batches and conflict
//! resolutions; a crash between a replica commit and the index's follow costs nothing
//! (the next follow replays from the cursor), and replaying is idempotent.
//!
//! For each log entry that touches a record, the index reads the record's liveness
//! from the replica (one row, no payload), so the order in which versions arrive does
//! not matter: a record is indexed when live, removed when deleted. The key comes from
//! the payload's header (`codec.rs`), from the inline payload or the first bytes of a
//! resident blob; a record whose blob has not arrived yet waits in a pending list and
//! is indexed by a later follow. Payloads without a header (written by other tools)
//! are not indexed.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use sync_engine::Replica;
use sync_ledger::store::{Batch, KeyRange, Order, Partition, prefix_successor};
use sync_ledger::{Durability, LogEntry, LogRead, Store};
use sync_types::{Message, ProgressToken, ProtocolName, RecordId, TenantId};

use crate::codec::{HEADER_BYTES_MAX, header};
use crate::error::{Error, Result};

/// `(protocol, key)` → record id.
const KEYS: Partition = Partition::new("weft_keys");
/// record id → a live flag (1 live, 0 deleted) and the index key `(protocol, key)`:
/// what a delete removes, kept after it so a change feed can name a deleted key.
const IDS: Partition = Partition::new("weft_ids");
/// Records whose key is not known yet (their blob is still arriving).
const PENDING: Partition = Partition::new("weft_pending");
/// The follow cursor and the per-collection counts.
const META: Partition = Partition::new("weft_meta");
const CURSOR_KEY: &[u8] = b"cursor";
const COUNT_PREFIX: &[u8] = b"count/";
/// Log entries read per page while following.
const FOLLOW_PAGE_LEN: usize = 1000;
/// Pending records looked at again per follow.
const PENDING_RETRY_MAX: usize = 256;

pub(crate) struct KeyIndex {
    store: Arc<dyn Store>,
    durability: Durability,
    follow: Mutex<()>,
}

/// The index key of `(protocol, key)`: the protocol's length first, so one
/// collection's keys are one contiguous range in key order.
fn index_key(protocol: &ProtocolName, key: &[u8]) -> Vec<u8> {
    let mut out = collection_prefix(protocol);
    out.extend_from_slice(key);
    out
}

fn collection_prefix(protocol: &ProtocolName) -> Vec<u8> {
    let p = protocol.as_str().as_bytes();
    let mut out = Vec::with_capacity(2 + p.len());
    // Protocol names are at most PROTOCOL_NAME_BYTES_MAX (well under u16::MAX) bytes.
    out.extend_from_slice(&u16::try_from(p.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(p);
    out
}

fn count_key(protocol: &ProtocolName) -> Vec<u8> {
    let mut out = COUNT_PREFIX.to_vec();
    out.extend_from_slice(protocol.as_str().as_bytes());
    out
}

/// A query over one collection's keys.
#[derive(Clone, Debug)]
pub(crate) struct KeyQuery {
    pub(crate) start: Bound<Vec<u8>>,
    pub(crate) end: Bound<Vec<u8>>,
    pub(crate) reverse: bool,
    pub(crate) limit: usize,
}

impl KeyIndex {
    pub(crate) fn new(store: Arc<dyn Store>, durability: Durability) -> Self {
        Self {
            store,
            durability,
            follow: Mutex::new(()),
        }
    }

    pub(crate) fn close(&self) -> Result<()> {
        Ok(self.store.close()?)
    }

    /// Up to `q.limit` `(key, record id)` of `protocol` in the query's range and order.
    pub(crate) fn page(
        &self,
        protocol: &ProtocolName,
        q: &KeyQuery,
    ) -> Result<Vec<(String, RecordId)>> {
        let prefix = collection_prefix(protocol);
        let bound = |b: &Bound<Vec<u8>>| match b {
            Bound::Included(k) => Bound::Included(index_key(protocol, k)),
            Bound::Excluded(k) => Bound::Excluded(index_key(protocol, k)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let whole = KeyRange::prefix(&prefix);
        let start = match bound(&q.start) {
            Bound::Unbounded => whole.start,
            b => b,
        };
        let end = match bound(&q.end) {
            Bound::Unbounded => whole.end,
            b => b,
        };
        let order = if q.reverse {
            Order::Descending
        } else {
            Order::Ascending
        };
        let mut out = Vec::with_capacity(q.limit.min(1024));
        for item in self.store.scan(KEYS, KeyRange { start, end }, order)? {
            if out.len() >= q.limit {
                break;
            }
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let id: [u8; 32] = v
                .as_slice()
                .try_into()
                .map_err(|_| Error::Decode("a key index entry is not a record id".into()))?;
            out.push((key, RecordId::from_bytes(id)));
        }
        Ok(out)
    }

    /// The key the index knows for a record (live or deleted), with its protocol.
    pub(crate) fn key_of_record(&self, id: &RecordId) -> Result<Option<(String, String)>> {
        let Some(v) = self.store.get(IDS, id.as_bytes())? else {
            return Ok(None);
        };
        let Some(k) = v.get(1..) else {
            return Ok(None);
        };
        if k.len() < 2 {
            return Ok(None);
        }
        let plen = usize::from(u16::from_be_bytes([k[0], k[1]]));
        let Some(protocol) = k.get(2..2 + plen) else {
            return Ok(None);
        };
        Ok(Some((
            String::from_utf8_lossy(protocol).into_owned(),
            String::from_utf8_lossy(&k[2 + plen..]).into_owned(),
        )))
    }

    /// The number of live keys of `protocol`.
    pub(crate) fn count(&self, protocol: &ProtocolName) -> Result<u64> {
        Ok(self
            .store
            .get(META, &count_key(protocol))?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0))
    }

    /// Brings the index up to the replica's log head.
    pub(crate) fn follow(&self, replica: &Replica, tenant: &TenantId) -> Result<()> {
        let _follow = self.follow.lock().unwrap_or_else(|e| e.into_inner());
        let mut cursor: Option<ProgressToken> = match self.store.get(META, CURSOR_KEY)? {
            Some(bytes) => Some(
                postcard::from_bytes(&bytes)
                    .map_err(|e| Error::Decode(format!("key index cursor: {e}")))?,
            ),
            None => None,
        };
        let mut restarted = false;
        loop {
            let page = match replica.changes_since(tenant, cursor, FOLLOW_PAGE_LEN)? {
                LogRead::Page(page) => page,
                LogRead::Gap(gap) if !restarted => {
                    // The log no longer serves the cursor (another stream, a compacted
                    // log): start again from its beginning.
                    self.clear()?;
                    cursor = None;
                    restarted = true;
                    let _ = gap;
                    continue;
                }
                LogRead::Gap(gap) => {
                    return Err(Error::Decode(format!(
                        "the replica's log cannot be followed from its start: {gap:?}"
                    )));
                }
            };
            let mut step = Step::new(self);
            for entry in &page.entries {
                step.entry(replica, tenant, entry)?;
            }
            cursor = page.next.or(cursor);
            let mut batch = step.finish()?;
            if let Some(c) = cursor {
                batch.put(
                    META,
                    CURSOR_KEY,
                    postcard::to_stdvec(&c).unwrap_or_default(),
                );
            }
            self.store.commit(batch, Durability::Buffered)?;
            if !page.has_more {
                break;
            }
        }
        self.retry_pending(replica, tenant)
    }

    fn retry_pending(&self, replica: &Replica, tenant: &TenantId) -> Result<()> {
        let ids: Vec<RecordId> =
            self.store
                .scan(PENDING, KeyRange::all(), Order::Ascending)?
                .take(PENDING_RETRY_MAX)
                .map(|kv| {
                    kv.map_err(Error::from).and_then(|(k, _)| {
                        let id: [u8; 32] = k.as_slice().try_into().map_err(|_| {
                            Error::Decode("a pending entry is not a record id".into())
                        })?;
                        Ok(RecordId::from_bytes(id))
                    })
                })
                .collect::<Result<_>>()?;
        if ids.is_empty() {
            return Ok(());
        }
        let mut step = Step::new(self);
        for id in ids {
            let record = replica.get_with_tombstone(tenant, &id)?;
            let key = match &record {
                Some(r) => self.key_of(replica, r.data.as_deref(), r.data_ref)?,
                None => Known::No,
            };
            let protocol = record.map(|r| r.protocol);
            match key {
                Known::Pending => continue,
                known => {
                    step.batch.delete(PENDING, id.as_bytes().to_vec());
                    if let Some(protocol) = protocol {
                        step.settle(replica, tenant, id, &protocol, known, First::No)?;
                    }
                }
            }
        }
        let batch = step.finish()?;
        self.store.commit(batch, self.durability_of_derived())?;
        Ok(())
    }

    fn durability_of_derived(&self) -> Durability {
        // Derived data: a lost commit is followed again from the stored cursor.
        let _ = self.durability;
        Durability::Buffered
    }

    fn clear(&self) -> Result<()> {
        let mut batch = Batch::new();
        for partition in [KEYS, IDS, PENDING, META] {
            for kv in self
                .store
                .scan(partition, KeyRange::all(), Order::Ascending)?
            {
                let (k, _) = kv?;
                batch.delete(partition, k);
            }
        }
        Ok(self.store.commit(batch, Durability::Buffered)?)
    }

    /// The key a record's payload names, when it derives the record's id.
    fn key_of(
        &self,
        replica: &Replica,
        inline: Option<&[u8]>,
        data_ref: Option<sync_types::DataRef>,
    ) -> Result<Known> {
        let head = match (inline, data_ref) {
            (Some(bytes), _) => bytes
                .get(..HEADER_BYTES_MAX.min(bytes.len()))
                .map(<[u8]>::to_vec),
            (None, Some(r)) => {
                let len = (HEADER_BYTES_MAX as u64).min(r.size);
                match replica.read_blob(&r.data_cid, 0, len) {
                    Ok(bytes) => Some(bytes),
                    Err(sync_engine::Error::Ledger(sync_ledger::Error::BlobNotFound(_))) => {
                        return Ok(Known::Pending);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            (None, None) => None,
        };
        let Some(head) = head else {
            return Ok(Known::No);
        };
        let Ok(h) = header(&head) else {
            return Ok(Known::No);
        };
        Ok(Known::Key(h.key))
    }
}

/// What the index knows of a record's key.
enum Known {
    /// The key its payload names (checked against the record id by `settle`).
    Key(String),
    /// Not known yet: the payload is a blob still arriving.
    Pending,
    /// Not from this entry (a delete, a payload without a header).
    No,
}

/// Whether an entry may be the first of its record the index follows.
enum First {
    /// An initial write: live as of this point in the log if no entry of its record
    /// was followed before.
    IfUnseen,
    /// Anything else: liveness is read from the replica.
    No,
}

/// A record's index key while live, and the last key known for it.
type Indexed = (Option<Vec<u8>>, Option<Vec<u8>>);

/// One follow step: the entries of one log page, folded into one batch, with what the
/// batch already changed visible to later entries.
struct Step<'a> {
    index: &'a KeyIndex,
    batch: Batch,
    /// record id → (its index key while live, the last key known), as this batch
    /// leaves them.
    ids: HashMap<RecordId, Indexed>,
    counts: HashMap<ProtocolName, i64>,
}

impl<'a> Step<'a> {
    fn new(index: &'a KeyIndex) -> Self {
        Self {
            index,
            batch: Batch::new(),
            ids: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    fn entry(&mut self, replica: &Replica, tenant: &TenantId, entry: &LogEntry) -> Result<()> {
        let Some(id) = entry.message.record_id() else {
            return Ok(());
        };
        let (known, initial) = match &entry.message {
            Message::Write(w) => (
                self.index.key_of(replica, entry.data.as_deref(), w.data)?,
                w.prev.is_none(),
            ),
            _ => (Known::No, false),
        };
        if matches!(known, Known::Pending) {
            self.batch.put(PENDING, id.as_bytes().to_vec(), Vec::new());
            return Ok(());
        }
        let first = if initial { First::IfUnseen } else { First::No };
        self.settle(replica, tenant, id, entry.message.protocol(), known, first)
    }

    /// Indexes the record when it is live and its key is known, removes it when not.
    fn settle(
        &mut self,
        replica: &Replica,
        tenant: &TenantId,
        id: RecordId,
        record_protocol: &ProtocolName,
        known: Known,
        first: First,
    ) -> Result<()> {
        let (seen, current, remembered) = match self.ids.get(&id) {
            Some((current, remembered)) => (true, current.clone(), remembered.clone()),
            None => match self.index.store.get(IDS, id.as_bytes())? {
                Some(v) if v.len() > 1 => {
                    let key = v[1..].to_vec();
                    (true, (v[0] == 1).then(|| key.clone()), Some(key))
                }
                Some(_) => (true, None, None),
                None => (false, None, None),
            },
        };
        // An initial write that is the first entry of its record the index has followed
        // is live as of this point in the log: only an entry after it can end it, and
        // that entry is settled (with a read of the record) when the follow reaches it.
        // This skips one record read per record on a bulk import.
        let live = if !seen && matches!(first, First::IfUnseen) {
            true
        } else {
            replica.is_live(tenant, &id)? == Some(true)
        };
        // A header naming another record's key is not trusted.
        let named = match known {
            Known::Key(key)
                if RecordId::from_natural_key(tenant, record_protocol, key.as_bytes()) == id =>
            {
                Some(index_key(record_protocol, key.as_bytes()))
            }
            _ => None,
        };
        let key = named.or(remembered.clone());
        let wanted = if live { key.clone() } else { None };
        if seen && wanted == current && key == remembered {
            return Ok(());
        }
        if wanted != current {
            if let Some(old) = &current {
                self.batch.delete(KEYS, old.clone());
                *self.counts.entry(record_protocol.clone()).or_default() -= 1;
            }
            if let Some(new) = &wanted {
                self.batch.put(KEYS, new.clone(), id.as_bytes().to_vec());
                *self.counts.entry(record_protocol.clone()).or_default() += 1;
            }
        }
        // Every record the follow has settled keeps a row (one byte when its key is not
        // known), so "no row" means "no entry of this record followed yet".
        let mut v = Vec::with_capacity(1 + key.as_ref().map_or(0, Vec::len));
        v.push(u8::from(wanted.is_some()));
        v.extend_from_slice(key.as_deref().unwrap_or_default());
        self.batch.put(IDS, id.as_bytes().to_vec(), v);
        self.ids.insert(id, (wanted, key));
        Ok(())
    }

    fn finish(mut self) -> Result<Batch> {
        for (protocol, delta) in self.counts {
            let key = count_key(&protocol);
            let before = self.index.count(&protocol)?;
            let after = before.saturating_add_signed(delta);
            self.batch.put(META, key, after.to_le_bytes().to_vec());
        }
        Ok(self.batch)
    }
}

/// The upper bound of keys starting with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Bound<Vec<u8>> {
    match prefix_successor(prefix.as_bytes()) {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    }
}
