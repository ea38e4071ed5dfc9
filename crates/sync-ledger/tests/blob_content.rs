//! Blob content behind the `BlobContent` trait: a backend outside the ledger's store (a
//! map here, as an object store would be) holds every chunk, the store holds none, and
//! uploads, resumes, mismatches, streams, reads and deletes behave as with the default.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sync_ledger::layout;
use sync_ledger::store::{Batch, Durability, KeyRange, Order, Store};
use sync_ledger::{BlobContent, ChunkIter, Error, Ledger, Result};
use sync_types::Cid;

/// Chunks in a map of their own, written at once (as an object store's are).
#[derive(Default)]
struct MapContent {
    chunks: Mutex<BTreeMap<(Cid, u32), Vec<u8>>>,
}

impl MapContent {
    fn held(&self) -> usize {
        self.chunks.lock().unwrap().len()
    }

    fn held_of(&self, at: &Cid) -> usize {
        self.chunks
            .lock()
            .unwrap()
            .keys()
            .filter(|(c, _)| c == at)
            .count()
    }
}

impl BlobContent for MapContent {
    fn put_chunk(
        &self,
        _store: &dyn Store,
        _batch: &mut Batch,
        at: &Cid,
        index: u32,
        bytes: Vec<u8>,
    ) -> Result<()> {
        self.chunks.lock().unwrap().insert((*at, index), bytes);
        Ok(())
    }

    fn chunk(&self, _store: &dyn Store, at: &Cid, index: u32) -> Result<Option<Vec<u8>>> {
        Ok(self.chunks.lock().unwrap().get(&(*at, index)).cloned())
    }

    fn chunks<'s>(
        &'s self,
        _store: &'s dyn Store,
        at: &Cid,
        first: u32,
        last: Option<u32>,
    ) -> Result<ChunkIter<'s>> {
        let found: Vec<Result<(u32, Vec<u8>)>> = self
            .chunks
            .lock()
            .unwrap()
            .range((*at, first)..=(*at, last.unwrap_or(u32::MAX)))
            .map(|((_, i), v)| Ok((*i, v.clone())))
            .collect();
        Ok(Box::new(found.into_iter()))
    }

    fn delete_chunks(&self, _store: &dyn Store, _batch: &mut Batch, at: &Cid) -> Result<()> {
        self.chunks.lock().unwrap().retain(|(c, _), _| c != at);
        Ok(())
    }
}

fn ledger() -> (Ledger, Arc<MapContent>) {
    let content = Arc::new(MapContent::default());
    let ledger = Ledger::builder()
        .blob_content(content.clone())
        .open_in_memory()
        .unwrap();
    (ledger, content)
}

fn rows_in_store(ledger: &Ledger) -> usize {
    ledger
        .store()
        .scan(layout::BLOB_CHUNKS, KeyRange::all(), Order::Ascending)
        .unwrap()
        .count()
}

#[test]
fn content_outside_the_store_holds_every_chunk_and_the_store_none() {
    let (ledger, content) = ledger();
    let blobs = ledger.blobs();
    // Twenty full chunks and a tail: one commit of 16 chunks on the way.
    let data: Vec<u8> = (0..(20 * 65_536 + 1_000u32))
        .map(|i| (i % 251) as u8)
        .collect();
    let cid = Cid::of_data(&data);

    // A mismatch stores nothing, in the backend either.
    let wrong = Cid::of_data(b"something else");
    let r = blobs.put(&wrong, &data[..], Durability::SyncData, 5);
    assert!(matches!(r, Err(Error::BlobMismatch { .. })));
    assert_eq!(content.held(), 0);

    // An interrupted upload resumes at its checkpoint, from chunks in the backend.
    {
        let mut up = blobs.upload(&cid, Some(data.len() as u64), 5).unwrap();
        up.write(&data[..70_000]).unwrap();
        assert_eq!(up.checkpoint(Durability::SyncData).unwrap(), 70_000);
    }
    assert!(!blobs.has(&cid).unwrap());
    let mut up = blobs.upload(&cid, None, 6).unwrap();
    assert_eq!(up.offset(), 70_000);
    up.write(&data[70_000..]).unwrap();
    assert_eq!(up.finish(Durability::SyncData).unwrap(), data.len() as u64);
    assert_eq!(content.held_of(&cid), 21);
    assert_eq!(rows_in_store(&ledger), 0, "no chunk in the ledger's store");

    assert_eq!(blobs.read(&cid).unwrap(), data);
    for (offset, len) in [
        (0u64, 1u64),
        (65_535, 2),
        (100, 1_200_000),
        (1_311_000, 720),
    ] {
        let got = blobs.read_range(&cid, offset, len).unwrap();
        let a = usize::try_from(offset).unwrap();
        let b = usize::try_from(offset + len).unwrap();
        assert_eq!(got, data[a..b], "range {offset}+{len}");
    }
    let mut streamed = Vec::new();
    std::io::Read::read_to_end(&mut blobs.reader(&cid, 65_000).unwrap(), &mut streamed).unwrap();
    assert_eq!(streamed, data[65_000..]);

    // A chunk lost from the backend is damage, not a short blob.
    content.chunks.lock().unwrap().remove(&(cid, 20));
    assert!(matches!(blobs.read(&cid), Err(Error::Inconsistent(_))));

    // Deleting the blob removes its content.
    assert!(blobs.delete(&cid, Durability::SyncData).unwrap());
    assert_eq!(content.held_of(&cid), 0);
    assert!(!blobs.has(&cid).unwrap());
}

#[test]
fn a_streamed_blob_keeps_its_chunks_in_the_backend_under_its_staging_id() {
    let (ledger, content) = ledger();
    let blobs = ledger.blobs();
    let data = vec![7u8; 3 * 65_536 + 5];
    let (cid, size) = blobs
        .put_stream(&data[..], Durability::SyncData, 1)
        .unwrap();
    assert_eq!((cid, size), (Cid::of_data(&data), data.len() as u64));
    assert_eq!(blobs.read(&cid).unwrap(), data);
    assert_eq!(content.held(), 4);
    assert_eq!(content.held_of(&cid), 0, "kept under the staging id");
    assert_eq!(rows_in_store(&ledger), 0);
    // The same bytes streamed again: the second staging copy is removed.
    blobs
        .put_stream(&data[..], Durability::SyncData, 2)
        .unwrap();
    assert_eq!(content.held(), 4);
    assert!(blobs.delete(&cid, Durability::SyncData).unwrap());
    assert_eq!(content.held(), 0);
}
