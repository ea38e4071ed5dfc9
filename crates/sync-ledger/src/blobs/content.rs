//! Where a blob's bytes live: the [`BlobContent`] trait, and [`InStore`], the content
//! as rows of the ledger's own store (fjall on a directory, PostgreSQL, memory).
//!
//! Everything else about a blob stays in the ledger's store whatever the backend: its
//! `blob_meta` entry (a blob is stored exactly when it exists), aliases, upload states,
//! upload owners (`blob_owners`) and the collector's leases. The content backend holds
//! only chunks, named by the id they are stored under and their index, so an object
//! store can take them without knowing anything of the ledger.
//!
//! Why this shape: the ledger already writes a chunk in the same batch as the upload
//! state that covers it, so a backend inside the store keeps doing exactly that
//! ([`BlobContent::put_chunk`] puts into the batch), and a backend outside it writes the
//! chunk before returning, or before [`BlobContent::flush`] of its id returns (the
//! ledger flushes before it commits), so the state that names it can never commit
//! first. Reads
//! are by index, never by scanning the metadata, and a removal names the whole upload.

use std::ops::Bound;

use sync_types::Cid;

use crate::error::Result;
use crate::layout;
use crate::store::{Batch, KeyRange, Order, Store};

/// Chunks of one stored id, in index order: `(index, bytes)`.
pub type ChunkIter<'a> = Box<dyn Iterator<Item = Result<(u32, Vec<u8>)>> + 'a>;

/// Where the chunks of blobs and uploads live. `store` and `batch` are the ledger's:
/// a backend outside the store ignores them.
pub trait BlobContent: Send + Sync + 'static {
    /// Writes chunk `index` of the content stored under `at`. `batch` is the commit
    /// that records the upload state covering it: a backend in the store puts the
    /// chunk in it (both land together); a backend of its own writes the chunk durably
    /// before returning, or before the next [`flush`](Self::flush) of `at` returns
    /// (writes of one id may then overlap). A chunk written again replaces the old one:
    /// writes of one chunk land in the order they were made.
    fn put_chunk(
        &self,
        store: &dyn Store,
        batch: &mut Batch,
        at: &Cid,
        index: u32,
        bytes: Vec<u8>,
    ) -> Result<()>;

    /// Chunk `index` of `at`, if it is stored.
    fn chunk(&self, store: &dyn Store, at: &Cid, index: u32) -> Result<Option<Vec<u8>>>;

    /// The stored chunks of `at` from `first` through `last` (to the end when `None`),
    /// in index order; a missing chunk is skipped (the caller checks the indexes).
    fn chunks<'s>(
        &'s self,
        store: &'s dyn Store,
        at: &Cid,
        first: u32,
        last: Option<u32>,
    ) -> Result<ChunkIter<'s>>;

    /// Makes every chunk of `at` written so far durable: the ledger calls it before it
    /// commits an upload state (or a blob) that covers them. Nothing to do for a
    /// backend in the store or one that writes before `put_chunk` returns.
    fn flush(&self, at: &Cid) -> Result<()> {
        let _ = at;
        Ok(())
    }

    /// Removes every chunk of `at`: into `batch` for a backend in the store, at once
    /// for one of its own (the callers remove only content no `blob_meta` entry names,
    /// or content whose entry the same batch deletes, where a concurrent reader of the
    /// blob then fails instead of reading it).
    fn delete_chunks(&self, store: &dyn Store, batch: &mut Batch, at: &Cid) -> Result<()>;
}

/// Blob content as rows of the ledger's store (the `blob_chunks` partition, keyed by
/// id and big-endian index): the default, and what fjall and PostgreSQL hold.
#[derive(Clone, Copy, Default, Debug)]
pub struct InStore;

fn key(at: &Cid, index: u32) -> Vec<u8> {
    layout::Key::raw(at.as_bytes()).u32(index).into_vec()
}

impl BlobContent for InStore {
    fn put_chunk(
        &self,
        _store: &dyn Store,
        batch: &mut Batch,
        at: &Cid,
        index: u32,
        bytes: Vec<u8>,
    ) -> Result<()> {
        batch.put(layout::BLOB_CHUNKS, key(at, index), bytes);
        Ok(())
    }

    fn chunk(&self, store: &dyn Store, at: &Cid, index: u32) -> Result<Option<Vec<u8>>> {
        store.get(layout::BLOB_CHUNKS, &key(at, index))
    }

    fn chunks<'s>(
        &'s self,
        store: &'s dyn Store,
        at: &Cid,
        first: u32,
        last: Option<u32>,
    ) -> Result<ChunkIter<'s>> {
        let range = KeyRange {
            start: Bound::Included(key(at, first)),
            end: match last {
                Some(last) => Bound::Included(key(at, last)),
                None => KeyRange::prefix(at.as_bytes()).end,
            },
        };
        let scan = store.scan(layout::BLOB_CHUNKS, range, Order::Ascending)?;
        Ok(Box::new(scan.map(|kv| {
            let (k, v) = kv?;
            let index = u32::from_be_bytes(layout::key_tail::<4>(layout::BLOB_CHUNKS, &k)?);
            Ok((index, v))
        })))
    }

    fn delete_chunks(&self, store: &dyn Store, batch: &mut Batch, at: &Cid) -> Result<()> {
        for kv in store.scan_prefix(layout::BLOB_CHUNKS, at.as_bytes(), Order::Ascending)? {
            let (k, _) = kv?;
            batch.delete(layout::BLOB_CHUNKS, k);
        }
        Ok(())
    }
}
