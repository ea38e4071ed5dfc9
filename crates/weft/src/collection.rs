//! [`Collection`]: typed records under natural keys; reads, compare-and-set writes,
//! queries and transactions.

use std::marker::PhantomData;
use std::ops::Bound;

use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sync_engine::replica::Expected;
use sync_engine::{BatchOp, Receipt, Record, RecordKey, Residency, WriteBatch, WriteRequest};
use sync_types::{Cid, ProtocolName, ProtocolPath, RecordId};

use crate::codec::{Codec, RAW, check_key, frame, header};
use crate::error::{Error, Result, blocking};
use crate::feed::{Change, Since};
use crate::index::{KeyQuery, prefix_end};
use crate::store::Weft;

/// Most records one [`Query`] page returns.
pub const PAGE_LEN_MAX: usize = 1000;

/// A record of a collection: its key, its value, and which version it is.
#[derive(Clone, PartialEq, Debug)]
pub struct Entry<T> {
    /// The natural key.
    pub key: String,
    /// The value.
    pub value: T,
    /// The version: pass it to [`Collection::put_if`] to write only if nobody wrote in
    /// between.
    pub version: Cid,
    /// Who wrote this version.
    pub author: String,
    /// Whether the payload is here (a large value may still be downloading: then
    /// [`Collection::get`] answers [`Error::Decode`] and this says `Staged`).
    pub residency: Residency,
}

/// A page of a query, and where the next one starts.
#[derive(Clone, PartialEq, Debug)]
pub struct Page<T> {
    /// The records, in the query's order.
    pub entries: Vec<Entry<T>>,
    /// Pass to [`Query::after`] for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Which records a [`Collection::query`] returns: a key range or prefix, an order, a
/// page length and a cursor.
#[derive(Clone, Debug)]
#[must_use]
pub struct Query {
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    reverse: bool,
    limit: usize,
    after: Option<String>,
}

impl Default for Query {
    fn default() -> Self {
        Self::all()
    }
}

impl Query {
    /// Every record, in key order, [`PAGE_LEN_MAX`] at a time.
    pub fn all() -> Self {
        Self {
            start: Bound::Unbounded,
            end: Bound::Unbounded,
            reverse: false,
            limit: PAGE_LEN_MAX,
            after: None,
        }
    }

    /// The records whose key starts with `prefix`.
    pub fn prefix(prefix: &str) -> Self {
        Self {
            start: Bound::Included(prefix.as_bytes().to_vec()),
            end: prefix_end(prefix),
            ..Self::all()
        }
    }

    /// The records with `start <= key < end`.
    pub fn range(start: &str, end: &str) -> Self {
        Self {
            start: Bound::Included(start.as_bytes().to_vec()),
            end: Bound::Excluded(end.as_bytes().to_vec()),
            ..Self::all()
        }
    }

    /// Descending key order.
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }

    /// At most `limit` records per page (at most [`PAGE_LEN_MAX`]).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit.clamp(1, PAGE_LEN_MAX);
        self
    }

    /// The page after the one whose [`Page::next`] was `cursor`.
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.after = Some(cursor.into());
        self
    }

    fn key_query(&self) -> KeyQuery {
        let mut start = self.start.clone();
        let mut end = self.end.clone();
        if let Some(after) = &self.after {
            let past = Bound::Excluded(after.as_bytes().to_vec());
            if self.reverse {
                end = tighter_end(end, past);
            } else {
                start = tighter_start(start, past);
            }
        }
        KeyQuery {
            start,
            end,
            reverse: self.reverse,
            // One more, to know whether there is a next page.
            limit: self.limit + 1,
        }
    }
}

fn key_of(b: &Bound<Vec<u8>>) -> Option<&Vec<u8>> {
    match b {
        Bound::Included(k) | Bound::Excluded(k) => Some(k),
        Bound::Unbounded => None,
    }
}

fn tighter_start(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (key_of(&a), key_of(&b)) {
        (Some(x), Some(y)) if x > y => a,
        (Some(x), Some(y)) if x == y && matches!(a, Bound::Excluded(_)) => a,
        (_, Some(_)) => b,
        _ => a,
    }
}

fn tighter_end(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (key_of(&a), key_of(&b)) {
        (Some(x), Some(y)) if x < y => a,
        (Some(x), Some(y)) if x == y && matches!(a, Bound::Excluded(_)) => a,
        (_, Some(_)) => b,
        _ => a,
    }
}

/// The records of one protocol at one path, with values of type `T` under natural
/// keys. Cheap to clone.
pub struct Collection<T> {
    weft: Weft,
    protocol: ProtocolName,
    path: ProtocolPath,
    codec: Codec,
    _values: PhantomData<fn() -> T>,
}

impl<T> Clone for Collection<T> {
    fn clone(&self) -> Self {
        Self {
            weft: self.weft.clone(),
            protocol: self.protocol.clone(),
            path: self.path.clone(),
            codec: self.codec,
            _values: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Collection<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("protocol", &self.protocol)
            .field("path", &self.path)
            .field("codec", &self.codec)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Collection<T> {
    pub(crate) fn new(weft: Weft, protocol: ProtocolName, path: ProtocolPath) -> Self {
        Self {
            weft,
            protocol,
            path,
            codec: Codec::default(),
            _values: PhantomData,
        }
    }

    /// The same collection, writing values with `codec` (reads decode whichever
    /// codec each record was written with). Default: [`Codec::Json`].
    pub fn with_codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The collection's protocol.
    pub fn protocol(&self) -> &ProtocolName {
        &self.protocol
    }

    /// The record id of `key` (what the replica and the sync report name).
    pub fn record_id(&self, key: &str) -> RecordId {
        RecordId::from_natural_key(self.weft.tenant(), &self.protocol, key.as_bytes())
    }

    /// Writes `value` under `key`: created on the first write, a new version after.
    pub async fn put(&self, key: &str, value: &T) -> Result<Receipt> {
        let payload = frame(key, self.codec.tag(), &self.codec.encode(value)?)?;
        self.write(key, payload, None).await
    }

    /// Writes `value` under `key` only if the record is at `expected` (from
    /// [`Entry::version`], or [`Expected::Absent`] to create); otherwise fails with
    /// [`sync_engine::Error::VersionMismatch`] and writes nothing.
    pub async fn put_if(&self, key: &str, value: &T, expected: Expected) -> Result<Receipt> {
        let payload = frame(key, self.codec.tag(), &self.codec.encode(value)?)?;
        self.write(key, payload, Some(expected)).await
    }

    /// Writes raw bytes under `key` (read them back with [`get_raw`](Self::get_raw)).
    pub async fn put_raw(&self, key: &str, bytes: &[u8]) -> Result<Receipt> {
        let payload = frame(key, RAW, bytes)?;
        self.write(key, payload, None).await
    }

    async fn write(
        &self,
        key: &str,
        payload: Vec<u8>,
        expected: Option<Expected>,
    ) -> Result<Receipt> {
        let request = self.request(key, payload)?;
        let weft = self.weft.clone();
        blocking(move || {
            let inner = &weft.inner;
            let receipt = match expected {
                None => inner.replica.write(&inner.tenant, request)?,
                Some(expected) => inner.replica.write_if(&inner.tenant, request, expected)?,
            };
            Ok(receipt)
        })
        .await
    }

    fn request(&self, key: &str, payload: Vec<u8>) -> Result<WriteRequest> {
        check_key(key)?;
        Ok(WriteRequest {
            protocol: self.protocol.clone(),
            path: self.path.clone(),
            key: RecordKey::Natural(key.as_bytes().to_vec()),
            parent: None,
            data: Some(payload),
            author: self.weft.author(),
        })
    }

    /// The record of `key`; `None` when absent or deleted.
    pub async fn get(&self, key: &str) -> Result<Option<Entry<T>>> {
        self.read(key, Codec::decode).await
    }

    /// The raw bytes of `key` (whatever codec wrote them); `None` when absent or
    /// deleted.
    pub async fn get_raw(&self, key: &str) -> Result<Option<Entry<Vec<u8>>>> {
        self.read(key, |_, bytes| Ok(bytes.to_vec())).await
    }

    /// The record of `key` off the worker, its value decoded by `decode`.
    async fn read<V: Send + 'static>(
        &self,
        key: &str,
        decode: fn(u8, &[u8]) -> Result<V>,
    ) -> Result<Option<Entry<V>>> {
        check_key(key)?;
        let this = self.clone();
        let id = self.record_id(key);
        blocking(move || {
            let inner = &this.weft.inner;
            match inner.replica.get(&inner.tenant, &id)? {
                Some(record) => this.entry(record, decode).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    /// A record as an entry, its payload read in full (from the blob store when
    /// large) and its header checked against its id.
    fn entry<V>(
        &self,
        record: Record,
        decode: impl Fn(u8, &[u8]) -> Result<V>,
    ) -> Result<Entry<V>> {
        let inner = &self.weft.inner;
        let payload = match (record.data, record.data_ref) {
            (Some(bytes), _) => bytes,
            (None, Some(r)) if record.residency == Residency::Resident => {
                inner.replica.read_blob(&r.data_cid, 0, r.size)?
            }
            (None, r) => {
                return Err(Error::NotArrived {
                    record: record.record_id,
                    size: r.map_or(0, |r| r.size),
                    residency: record.residency,
                });
            }
        };
        let h = header(&payload)?;
        if RecordId::from_natural_key(&inner.tenant, &record.protocol, h.key.as_bytes())
            != record.record_id
        {
            return Err(Error::KeyMismatch {
                record: record.record_id,
                key: h.key,
            });
        }
        Ok(Entry {
            value: decode(h.tag, &payload[h.value_at..])?,
            key: h.key,
            version: record.cid,
            author: record.author.as_str().to_owned(),
            residency: record.residency,
        })
    }

    /// Deletes the record of `key`.
    pub async fn delete(&self, key: &str) -> Result<Receipt> {
        check_key(key)?;
        let weft = self.weft.clone();
        let id = self.record_id(key);
        blocking(move || {
            let inner = &weft.inner;
            Ok(inner.replica.delete(&inner.tenant, id, &weft.author())?)
        })
        .await
    }

    /// Deletes the record of `key` only if it is at `expected`.
    pub async fn delete_if(&self, key: &str, expected: Expected) -> Result<Receipt> {
        check_key(key)?;
        let weft = self.weft.clone();
        let id = self.record_id(key);
        blocking(move || {
            let inner = &weft.inner;
            Ok(inner
                .replica
                .delete_if(&inner.tenant, id, &weft.author(), expected)?)
        })
        .await
    }

    /// One page of the records `query` selects. Reads the key index (brought up to
    /// date with the replica's log first) and loads only the records of the page.
    pub async fn query(&self, query: Query) -> Result<Page<T>> {
        let this = self.clone();
        blocking(move || {
            let inner = &this.weft.inner;
            inner.keys.follow(&inner.replica, &inner.tenant)?;
            let mut keys = inner.keys.page(&this.protocol, &query.key_query())?;
            let more = keys.len() > query.limit;
            keys.truncate(query.limit);
            let mut entries = Vec::with_capacity(keys.len());
            for (_, id) in &keys {
                // Deleted since the index followed: skip it.
                if let Some(record) = inner.replica.get(&inner.tenant, id)? {
                    entries.push(this.entry(record, |tag, bytes| Codec::decode(tag, bytes))?);
                }
            }
            let next = if more {
                keys.last().map(|(k, _)| k.clone())
            } else {
                None
            };
            Ok(Page { entries, next })
        })
        .await
    }

    /// The changes of this collection only: [`Weft::changes`] filtered by protocol.
    pub async fn changes(
        &self,
        since: Since,
    ) -> Result<impl Stream<Item = Result<Change>> + Send + 'static> {
        let protocol = self.protocol.as_str().to_owned();
        let feed = self.weft.changes(since).await?;
        Ok(feed.filter(move |c| {
            let keep = c.as_ref().map_or(true, |c| c.protocol == protocol);
            std::future::ready(keep)
        }))
    }

    /// The number of live records (from the key index, without reading them).
    pub async fn count(&self) -> Result<u64> {
        let this = self.clone();
        blocking(move || {
            let inner = &this.weft.inner;
            inner.keys.follow(&inner.replica, &inner.tenant)?;
            inner.keys.count(&this.protocol)
        })
        .await
    }
}

/// Writes and deletes over any collections, committed together by
/// [`Weft::commit`]: all of them in one atomic, durable commit, or none.
#[derive(Debug, Default)]
#[must_use]
pub struct Transaction {
    batch: WriteBatch,
    error: Option<Error>,
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a write of `value` under `key` in `collection`.
    pub fn put<T: Serialize + DeserializeOwned + Send + 'static>(
        &mut self,
        collection: &Collection<T>,
        key: &str,
        value: &T,
    ) -> &mut Self {
        self.push(collection, key, value, None)
    }

    /// Adds a write that only happens if the record is at `expected`.
    pub fn put_if<T: Serialize + DeserializeOwned + Send + 'static>(
        &mut self,
        collection: &Collection<T>,
        key: &str,
        value: &T,
        expected: Expected,
    ) -> &mut Self {
        self.push(collection, key, value, Some(expected))
    }

    fn push<T: Serialize + DeserializeOwned + Send + 'static>(
        &mut self,
        collection: &Collection<T>,
        key: &str,
        value: &T,
        expected: Option<Expected>,
    ) -> &mut Self {
        let request = collection
            .codec
            .encode(value)
            .and_then(|bytes| frame(key, collection.codec.tag(), &bytes))
            .and_then(|payload| collection.request(key, payload));
        match request {
            Ok(request) => {
                self.batch.push(BatchOp::Write(request), expected);
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    /// Adds a delete of `key` in `collection`.
    pub fn delete<T: Serialize + DeserializeOwned + Send + 'static>(
        &mut self,
        collection: &Collection<T>,
        key: &str,
    ) -> &mut Self {
        let op = BatchOp::Delete {
            record_id: collection.record_id(key),
            author: collection.weft.author(),
        };
        self.batch.push(op, None);
        self
    }

    /// The number of writes and deletes.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

impl Weft {
    /// Commits `tx`: every write and delete in one atomic, durable commit with one
    /// receipt each, in order; or, when one cannot be written (a failed expectation, a
    /// deleted record), none of them, with an error naming it
    /// ([`sync_engine::Error::BatchItem`]).
    pub async fn commit(&self, tx: Transaction) -> Result<Vec<Receipt>> {
        if let Some(e) = tx.error {
            return Err(e);
        }
        let weft = self.clone();
        blocking(move || {
            let inner = &weft.inner;
            Ok(inner.replica.write_batch(&inner.tenant, tx.batch)?)
        })
        .await
    }
}
