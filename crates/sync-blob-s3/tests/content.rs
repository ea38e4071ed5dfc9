//! Blob content in a real S3-compatible server (moto, with signatures checked; or the
//! server of `WEFT_TEST_S3_URL`): uploads, resumes, mismatches, streams, ranges and
//! deletes through the ledger, listings over several pages, replaced and missing
//! chunks, refusals with a clear error, and calls from every kind of thread.

mod support;

use std::sync::Arc;

use sync_blob_s3::{Credentials, S3Config, S3Content, S3Error};
use sync_ledger::layout;
use sync_ledger::store::{Batch, Durability, KeyRange, MemoryStore, Order};
use sync_ledger::{BlobContent, Error, Ledger};
use sync_types::Cid;

fn ledger(config: S3Config) -> (Ledger, Arc<S3Content>) {
    let content = Arc::new(S3Content::new(config).unwrap());
    content.check().unwrap();
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

fn data(len: u32) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn the_bucket_holds_every_chunk_and_the_store_none() {
    let (ledger, content) = ledger(support::bucket("suite"));
    let blobs = ledger.blobs();
    // Twenty full chunks and a tail: one commit of 16 chunks on the way.
    let data = data(20 * 65_536 + 1_000);
    let cid = Cid::of_data(&data);

    // A mismatch stores nothing that stays in the bucket.
    let wrong = Cid::of_data(b"something else");
    let r = blobs.put(&wrong, &data[..], Durability::SyncData, 5);
    assert!(matches!(r, Err(Error::BlobMismatch { .. })), "{r:?}");
    assert_eq!(content.keys(100).unwrap(), Vec::<String>::new());

    // An interrupted upload resumes at its checkpoint, from chunks in the bucket.
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
    assert_eq!(
        content.stored_indexes(&cid).unwrap(),
        (0..21).collect::<Vec<u32>>()
    );
    let keys = content.keys(100).unwrap();
    assert_eq!(keys.len(), 21);
    assert_eq!(keys[20], format!("{cid}/0000000020"), "named id/index");
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

    // A chunk replaced in the bucket with other bytes is damage, not other content.
    let store = MemoryStore::new();
    content
        .put_chunk(&store, &mut Batch::new(), &cid, 20, vec![1; 10])
        .unwrap();
    assert_eq!(
        content.chunk(&store, &cid, 20).unwrap(),
        Some(vec![1; 10]),
        "the last write wins"
    );
    assert!(matches!(blobs.read(&cid), Err(Error::Inconsistent(_))));

    // Deleting the blob removes its objects.
    assert!(blobs.delete(&cid, Durability::SyncData).unwrap());
    assert_eq!(content.stored_indexes(&cid).unwrap(), Vec::<u32>::new());
    assert_eq!(content.keys(100).unwrap(), Vec::<String>::new());
    assert!(!blobs.has(&cid).unwrap());
}

#[test]
fn a_streamed_blob_keeps_its_chunks_under_its_staging_id() {
    let (ledger, content) = ledger(support::bucket("staged"));
    let blobs = ledger.blobs();
    let data = vec![7u8; 3 * 65_536 + 5];
    let (cid, size) = blobs
        .put_stream(&data[..], Durability::SyncData, 1)
        .unwrap();
    assert_eq!((cid, size), (Cid::of_data(&data), data.len() as u64));
    assert_eq!(blobs.read(&cid).unwrap(), data);
    assert_eq!(content.keys(100).unwrap().len(), 4);
    assert!(
        content.stored_indexes(&cid).unwrap().is_empty(),
        "kept under the staging id"
    );
    assert_eq!(rows_in_store(&ledger), 0);
    // The same bytes streamed again: the second staging copy is removed.
    blobs
        .put_stream(&data[..], Durability::SyncData, 2)
        .unwrap();
    assert_eq!(content.keys(100).unwrap().len(), 4);
    assert!(blobs.delete(&cid, Durability::SyncData).unwrap());
    assert!(content.keys(100).unwrap().is_empty());
}

#[test]
fn listings_span_pages_and_skip_missing_chunks() {
    // Two keys a page: every listing below takes several.
    let mut config = support::bucket("pages");
    config.list_page_keys = 2;
    config.prefix = "deep/er/".into();
    let content = S3Content::new(config).unwrap();
    let store = MemoryStore::new();
    let at = Cid::of_data(b"pages");
    let other = Cid::of_data(b"neighbour");
    for i in [0u32, 1, 2, 4, 5, 6, 9] {
        content
            .put_chunk(
                &store,
                &mut Batch::new(),
                &at,
                i,
                format!("chunk {i}").into_bytes(),
            )
            .unwrap();
    }
    content
        .put_chunk(&store, &mut Batch::new(), &other, 3, b"not mine".to_vec())
        .unwrap();
    let read = |first: u32, last: Option<u32>| -> Vec<u32> {
        content
            .chunks(&store, &at, first, last)
            .unwrap()
            .map(|r| {
                let (i, v) = r.unwrap();
                assert_eq!(v, format!("chunk {i}").into_bytes());
                i
            })
            .collect()
    };
    assert_eq!(read(0, None), [0, 1, 2, 4, 5, 6, 9]);
    assert_eq!(read(3, None), [4, 5, 6, 9]);
    assert_eq!(read(5, None), [5, 6, 9]);
    assert_eq!(read(10, None), Vec::<u32>::new());
    assert_eq!(read(1, Some(5)), [1, 2, 4, 5]);
    assert_eq!(read(3, Some(3)), Vec::<u32>::new());
    assert_eq!(content.chunk(&store, &at, 3).unwrap(), None, "missing");
    assert_eq!(
        content.chunk(&store, &other, 3).unwrap(),
        Some(b"not mine".to_vec())
    );
    assert!(
        content
            .keys(100)
            .unwrap()
            .contains(&format!("deep/er/{at}/0000000000"))
    );

    content
        .delete_chunks(&store, &mut Batch::new(), &at)
        .unwrap();
    assert_eq!(read(0, None), Vec::<u32>::new());
    assert_eq!(
        content.stored_indexes(&other).unwrap(),
        [3],
        "the neighbour stays"
    );
}

#[test]
fn a_resumed_upload_rehashes_chunks_listed_over_several_pages() {
    let mut config = support::bucket("resume");
    config.list_page_keys = 3;
    let (ledger, content) = ledger(config);
    let blobs = ledger.blobs();
    let data = data(9 * 65_536 + 17);
    let cid = Cid::of_data(&data);
    {
        let mut up = blobs.upload(&cid, Some(data.len() as u64), 1).unwrap();
        up.write(&data[..7 * 65_536 + 3]).unwrap();
        up.checkpoint(Durability::SyncData).unwrap();
    }
    let mut up = blobs.upload(&cid, None, 2).unwrap();
    assert_eq!(
        up.offset(),
        7 * 65_536 + 3,
        "resumed from the listed chunks"
    );
    up.write(&data[7 * 65_536 + 3..]).unwrap();
    up.finish(Durability::SyncData).unwrap();
    assert_eq!(blobs.read(&cid).unwrap(), data);
    assert_eq!(content.stored_indexes(&cid).unwrap().len(), 10);
}

#[test]
fn a_wrong_secret_is_refused_with_the_servers_code_and_stores_nothing() {
    let good = support::bucket("secret");
    let mut bad = good.clone();
    bad.credentials = Credentials::new(
        good.credentials.access_key_id.clone(),
        format!("{}x", good.credentials.secret_access_key),
    );
    let content = S3Content::new(bad).unwrap();
    let e = content.check().unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert_eq!(e.code(), Some("SignatureDoesNotMatch"), "{e}");
    assert!(e.to_string().contains(&good.bucket), "{e}");

    // Through the ledger: the upload fails with the server's answer, not a retry.
    let ledger = Ledger::builder()
        .blob_content(Arc::new(content))
        .open_in_memory()
        .unwrap();
    let data = data(100_000);
    let r = ledger
        .blobs()
        .put(&Cid::of_data(&data), &data[..], Durability::SyncData, 1);
    let err = r.unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
    assert!(!ledger.blobs().has(&Cid::of_data(&data)).unwrap());
    let good = S3Content::new(good).unwrap();
    assert!(good.keys(10).unwrap().is_empty(), "nothing stored");
    // An unknown key id is refused too.
    let mut unknown = good.config().clone();
    unknown.credentials = Credentials::new("AKIAUNKNOWNKEY000000", "x");
    let e = S3Content::new(unknown).unwrap().check().unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
}

#[test]
fn a_missing_bucket_and_an_unreachable_endpoint_are_clear_errors() {
    let s = support::server();
    let missing = S3Config::new(
        s.endpoint.clone(),
        support::REGION,
        support::fresh_bucket("never-created"),
        s.credentials.clone(),
    );
    let e = S3Content::new(missing).unwrap().check().unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(404), Some("NoSuchBucket")),
        "{e}"
    );
    assert!(!e.is_transient());

    // Nothing listens on a port just freed: retried, then a transient error.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut gone = S3Config::new(
        format!("http://127.0.0.1:{port}"),
        support::REGION,
        "weft-gone",
        Credentials::new("a", "b"),
    );
    gone.retries_max = 2;
    let content = S3Content::new(gone).unwrap();
    let e = content.check().unwrap_err();
    assert!(
        matches!(e, S3Error::Unreachable { .. }) && e.is_transient(),
        "{e}"
    );
    let store = MemoryStore::new();
    let err = content.chunk(&store, &Cid::of_data(b"x"), 0).unwrap_err();
    assert!(err.is_retry(), "the ledger sees a retryable failure: {err}");
}

/// The ledger calls its content from the blocking pool, from runtime workers (a node's
/// blob reads) and off any runtime: none of them panics or deadlocks.
#[test]
fn calls_from_runtime_threads_neither_panic_nor_deadlock() {
    let content = Arc::new(S3Content::new(support::bucket("threads")).unwrap());
    let at = Cid::of_data(b"threads");
    let store = Arc::new(MemoryStore::new());
    content
        .put_chunk(&*store, &mut Batch::new(), &at, 0, b"zero".to_vec())
        .unwrap();
    let read = {
        let (content, store) = (content.clone(), store.clone());
        move || content.chunk(&*store, &at, 0).unwrap()
    };
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for rt in [&multi, &current] {
        let (r1, r2) = (read.clone(), read.clone());
        let (a, b) = rt.block_on(async move {
            let on_worker = tokio::spawn(async move { r1() });
            let on_pool = tokio::task::spawn_blocking(r2);
            (on_worker.await.unwrap(), on_pool.await.unwrap())
        });
        assert_eq!(a, Some(b"zero".to_vec()));
        assert_eq!(b, Some(b"zero".to_vec()));
        assert_eq!(rt.block_on(async { read() }), Some(b"zero".to_vec()));
    }
    // Dropped on a runtime worker: no panic either.
    let last = content.clone();
    drop(content);
    multi.block_on(async move { tokio::spawn(async move { drop(last) }).await.unwrap() });
}

/// PUTs of one id overlap, but a chunk written again lands after its earlier write:
/// the last write is what a read (which waits for this process's writes) returns.
#[test]
fn overlapping_writes_of_one_chunk_land_in_order() {
    let content = S3Content::new(support::bucket("order")).unwrap();
    let store = MemoryStore::new();
    let at = Cid::of_data(b"order");
    for round in 0..12u8 {
        for index in 0..3u32 {
            content
                .put_chunk(
                    &store,
                    &mut Batch::new(),
                    &at,
                    index,
                    vec![round; 1_000 + index as usize],
                )
                .unwrap();
        }
    }
    content.flush(&at).unwrap();
    for index in 0..3u32 {
        assert_eq!(
            content.chunk(&store, &at, index).unwrap(),
            Some(vec![11; 1_000 + index as usize]),
            "chunk {index}"
        );
    }
    // Reads wait for writes still in flight.
    content
        .put_chunk(&store, &mut Batch::new(), &at, 7, b"just now".to_vec())
        .unwrap();
    assert_eq!(
        content.chunk(&store, &at, 7).unwrap(),
        Some(b"just now".to_vec())
    );
    // Concurrent readers all see a write in flight when they start.
    for round in 0..5u8 {
        content
            .put_chunk(&store, &mut Batch::new(), &at, 8, vec![round; 500])
            .unwrap();
        std::thread::scope(|s| {
            let readers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| content.chunk(&store, &at, 8).unwrap()))
                .collect();
            for r in readers {
                assert_eq!(r.join().unwrap(), Some(vec![round; 500]), "round {round}");
            }
        });
    }
}
