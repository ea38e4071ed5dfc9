//! Large payloads: residency, the streaming write and read API, verified transfers that
//! survive corruption, per-tenant upload limits, and blob garbage collection.

mod faulty_node;
mod sync_support;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use faulty_node::FaultyNode;
use sync_engine::blob::{BlobGc, RECORD_DATA_BYTES_MAX, Residency};
use sync_engine::node::BlobLimits;
use sync_engine::replica::Origin;
use sync_engine::sync::HttpConnector;
use sync_engine::{Replica, ReplicaHandler, WriteRequest};
use sync_support::*;
use sync_transport::node::Handler;
use sync_transport::{ServerConfig, serve};
use sync_types::*;

/// A deterministic payload of `len` bytes that is never in memory as a whole.
pub struct Pattern {
    at: u64,
    len: u64,
    seed: u8,
}

impl Pattern {
    pub fn new(len: u64, seed: u8) -> Self {
        Self { at: 0, len, seed }
    }
}

impl Read for Pattern {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = usize::try_from(self.len - self.at).map_or(out.len(), |left| out.len().min(left));
        for (i, b) in out[..n].iter_mut().enumerate() {
            let x = self.at + i as u64;
            *b = (x.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0] ^ self.seed;
        }
        self.at += n as u64;
        Ok(n)
    }
}

fn hash_of(mut r: impl Read) -> Cid {
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut r, &mut h).unwrap();
    Cid::from_bytes(*h.finalize().as_bytes())
}

fn request(key: &str) -> WriteRequest {
    WriteRequest {
        protocol: notes(),
        path: note(),
        key: sync_engine::RecordKey::Natural(key.as_bytes().to_vec()),
        parent: None,
        data: None,
        author: alice(),
    }
}

fn write_big(r: &Replica, key: &str, len: u64, seed: u8) -> (RecordId, DataRef) {
    let data = r.write_blob(Pattern::new(len, seed)).unwrap();
    let receipt = r.write_with_blob(&tenant(), request(key), data).unwrap();
    (receipt.record_id, data)
}

fn record_id(key: &str) -> RecordId {
    RecordId::from_natural_key(&tenant(), &notes(), key.as_bytes())
}

#[test]
fn streamed_blobs_are_resident_and_large_ones_are_never_loaded_implicitly() {
    let r = replica(1);
    configure(&r);
    assert_eq!(
        r.residency(&tenant(), &record_id("big")).unwrap(),
        Residency::Absent
    );

    let len = 3 * 1024 * 1024 + 17;
    let (id, data) = write_big(&r, "big", len, 1);
    assert_eq!(data.size, len);
    assert_eq!(data.data_cid, hash_of(Pattern::new(len, 1)));
    let rec = r.get(&tenant(), &id).unwrap().unwrap();
    assert_eq!(rec.residency, Residency::Resident);
    assert_eq!(rec.data_ref, Some(data));
    assert!(len > RECORD_DATA_BYTES_MAX);
    assert_eq!(rec.data, None, "a large blob is read through a reader");
    let reader = r.blob_reader(&data.data_cid, 0).unwrap();
    assert_eq!(hash_of(reader), data.data_cid);
    let mut tail = Vec::new();
    r.blob_reader(&data.data_cid, len - 10)
        .unwrap()
        .read_to_end(&mut tail)
        .unwrap();
    let mut expected = Vec::new();
    Pattern::new(len, 1).read_to_end(&mut expected).unwrap();
    assert_eq!(tail, expected[expected.len() - 10..]);
    assert_eq!(
        r.read_blob(&data.data_cid, 1_000_000, 5).unwrap(),
        expected[1_000_000..1_000_005]
    );

    // A small blob is carried in `Record::data`; an inline-sized one travels inline.
    let (small, _) = write_big(&r, "small", 100_000, 2);
    let rec = r.get(&tenant(), &small).unwrap().unwrap();
    assert_eq!(rec.residency, Residency::Resident);
    assert_eq!(rec.data.unwrap().len(), 100_000);
    let (tiny, d) = write_big(&r, "tiny", 1_000, 3);
    assert!(d.is_inline());
    let stored = r
        .ledger()
        .get_message(&tenant(), &r.get(&tenant(), &tiny).unwrap().unwrap().cid)
        .unwrap()
        .unwrap();
    assert_eq!(stored.data.map(|d| d.len()), Some(1_000));

    // The same bytes written twice are stored once.
    let again = r.write_blob(Pattern::new(len, 1)).unwrap();
    assert_eq!(again, data);
    assert!(r.ledger().blobs().partial_uploads().unwrap().is_empty());

    r.delete(&tenant(), id, &alice()).unwrap();
    assert_eq!(r.residency(&tenant(), &id).unwrap(), Residency::Tombstoned);
}

#[test]
fn a_record_is_staged_until_its_verified_blob_arrives() {
    let a = replica(1);
    let b = replica(2);
    configure(&a);
    configure(&b);
    let len = 2 * 1024 * 1024;
    let (id, data) = write_big(&a, "big", len, 4);
    let cid = a.get(&tenant(), &id).unwrap().unwrap().cid;
    let message = a.ledger().get_message(&tenant(), &cid).unwrap().unwrap();

    // The message arrives first: the record exists but is staged.
    let out = b
        .apply(
            &tenant(),
            vec![(message.message, message.data)],
            Origin::Remote(None),
        )
        .unwrap();
    assert_eq!(out, vec![ApplyOutcome::Applied]);
    let rec = b.get(&tenant(), &id).unwrap().unwrap();
    assert_eq!(rec.residency, Residency::Staged);
    assert_eq!(rec.data, None);

    // Bytes that do not hash to the id store nothing.
    let mut bad = Vec::new();
    Pattern::new(len, 4).read_to_end(&mut bad).unwrap();
    bad[12_345] ^= 1;
    let err = b
        .ledger()
        .blobs()
        .put(
            &data.data_cid,
            bad.as_slice(),
            sync_ledger::Durability::Buffered,
            0,
        )
        .unwrap_err();
    assert!(
        matches!(err, sync_ledger::Error::BlobMismatch { .. }),
        "{err}"
    );
    assert_eq!(b.residency(&tenant(), &id).unwrap(), Residency::Staged);

    bad[12_345] ^= 1;
    b.ledger()
        .blobs()
        .put(
            &data.data_cid,
            bad.as_slice(),
            sync_ledger::Durability::Buffered,
            0,
        )
        .unwrap();
    assert_eq!(b.residency(&tenant(), &id).unwrap(), Residency::Resident);
}

async fn http_node_with<H: Handler>(
    handler: H,
) -> (sync_transport::server::ServerHandle<H>, Endpoint) {
    let handle = serve(
        Arc::new(handler),
        ServerConfig::new(key()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let ep = Endpoint::new(format!("http://{}", handle.local_addr())).unwrap();
    (handle, ep)
}

fn http() -> Arc<HttpConnector> {
    Arc::new(HttpConnector::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_sync_through_a_node_and_are_collected_after_delete() {
    let node = replica(100);
    let (_server, ep) = http_node_with(ReplicaHandler::new(node.clone())).await;
    let a = replica(1);
    let b = replica(2);
    configure(&a);
    configure(&b);
    let len = 6 * 1024 * 1024 + 3;
    let (id, data) = write_big(&a, "big", len, 5);
    put(&a, "small", b"small");

    let ea = engine(&a, http(), vec![ep.clone()], fast_config());
    let eb = engine(&b, http(), vec![ep.clone()], fast_config());
    sync_until_quiet(&ea, 3).await;
    sync_until_quiet(&eb, 3).await;
    for r in [&node, &b] {
        let rec = r.get(&tenant(), &id).unwrap().unwrap();
        assert_eq!(rec.residency, Residency::Resident);
        assert_eq!(
            hash_of(r.blob_reader(&data.data_cid, 0).unwrap()),
            data.data_cid
        );
    }
    assert_eq!(get(&b, "small"), Some(b"small".to_vec()));
    assert!(b.ledger().blobs().partial_uploads().unwrap().is_empty());

    // Referenced blobs are kept, however often the collector runs.
    let mut gc = BlobGc::new(b.clone()).grace_ms(0);
    for _ in 0..2 {
        assert_eq!(gc.collect().unwrap().blobs_removed, 0);
    }
    assert!(b.ledger().blobs().has(&data.data_cid).unwrap());

    // Deleted: the blob goes after the grace rule (unreferenced in two collections).
    a.delete(&tenant(), id, &alice()).unwrap();
    sync_until_quiet(&ea, 3).await;
    sync_until_quiet(&eb, 3).await;
    assert_eq!(b.residency(&tenant(), &id).unwrap(), Residency::Tombstoned);
    let first = gc.collect().unwrap();
    assert_eq!((first.candidates, first.blobs_removed), (1, 0));
    let second = gc.collect().unwrap();
    assert_eq!(second.blobs_removed, 1);
    assert_eq!(second.bytes_removed, len);
    assert!(!b.ledger().blobs().has(&data.data_cid).unwrap());
    let mut node_gc = BlobGc::new(node.clone()).grace_ms(0);
    node_gc.collect().unwrap();
    assert_eq!(node_gc.collect().unwrap().blobs_removed, 1);
}

#[test]
fn the_collector_never_removes_what_a_staged_record_waits_for() {
    let a = replica(1);
    let b = replica(2);
    configure(&a);
    configure(&b);
    let (id, data) = write_big(&a, "big", 300_000, 6);
    let cid = a.get(&tenant(), &id).unwrap().unwrap().cid;
    let m = a.ledger().get_message(&tenant(), &cid).unwrap().unwrap();
    b.apply(&tenant(), vec![(m.message, m.data)], Origin::Remote(None))
        .unwrap();
    b.ledger()
        .blobs()
        .want(&data.data_cid, data.size, 0)
        .unwrap();
    // Half of the blob has arrived.
    let mut upload = b
        .ledger()
        .blobs()
        .upload(&data.data_cid, Some(data.size), 0)
        .unwrap();
    let mut half = vec![0u8; 150_000];
    Pattern::new(data.size, 6).read_exact(&mut half).unwrap();
    upload.write(&half).unwrap();
    upload
        .checkpoint(sync_ledger::Durability::Buffered)
        .unwrap();
    drop(upload);
    // An abandoned, unreferenced upload is removed.
    b.ledger()
        .blobs()
        .want(&Cid::from_bytes([9; 32]), 100_000, 0)
        .unwrap();

    let mut gc = BlobGc::new(b.clone()).grace_ms(0);
    let report = gc.collect().unwrap();
    assert_eq!(report.uploads_removed, 1);
    gc.collect().unwrap();
    assert_eq!(
        b.ledger().blobs().upload_offset(&data.data_cid).unwrap(),
        Some(150_000)
    );
    assert_eq!(b.residency(&tenant(), &id).unwrap(), Residency::Staged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_byte_is_detected_and_the_blob_fetched_again() {
    let node = replica(100);
    let corrupted = Arc::new(AtomicUsize::new(0));
    let handler = FaultyNode::new(ReplicaHandler::new(node.clone()))
        .corrupt_first_blob_range(corrupted.clone());
    let (_server, ep) = http_node_with(handler).await;
    let a = replica(1);
    let b = replica(2);
    configure(&a);
    configure(&b);
    let (id, data) = write_big(&a, "big", 5 * 1024 * 1024, 7);
    let ea = engine(&a, http(), vec![ep.clone()], fast_config());
    let eb = engine(&b, http(), vec![ep.clone()], fast_config());
    sync_until_quiet(&ea, 3).await;
    sync_until_quiet(&eb, 3).await;
    assert!(
        corrupted.load(Ordering::SeqCst) >= 1,
        "a range was corrupted"
    );
    let rec = b.get(&tenant(), &id).unwrap().unwrap();
    assert_eq!(rec.residency, Residency::Resident);
    assert_eq!(
        hash_of(b.blob_reader(&data.data_cid, 0).unwrap()),
        data.data_cid
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_blobs_over_the_tenants_limit_with_a_clear_error() {
    let node = replica(100);
    let limits = BlobLimits {
        blob_bytes_max: 1024 * 1024,
        ..BlobLimits::default()
    };
    let (_server, ep) =
        http_node_with(ReplicaHandler::new(node.clone()).with_blob_limits(limits)).await;
    let a = replica(1);
    configure(&a);
    let (id, data) = write_big(&a, "big", 2 * 1024 * 1024, 8);
    let ea = engine(&a, http(), vec![ep.clone()], fast_config());
    let report = ea.sync_once().await;
    let text = format!("{report:?}");
    assert!(text.contains("upload limit of 1048576 bytes"), "{text}");
    assert!(!node.ledger().blobs().has(&data.data_cid).unwrap());
    assert_ne!(node.residency(&tenant(), &id).unwrap(), Residency::Resident);
}

/// Waits for `cond` (checked after each `step`), failing after a minute: a liveness
/// bound, not a timing claim.
async fn eventually<F: Future<Output = ()>>(
    what: &str,
    mut step: impl FnMut() -> F,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        step().await;
        if cond() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Fairness: while the node holds a large blob's upload back (a slow link), a small
/// record written after the blob's record, and one written during the upload, still
/// reach the node and another replica; the record naming the blob arrives only after
/// its blob, and then resident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_record_is_not_queued_behind_a_large_blob() {
    let node = replica(100);
    let (open, held) = tokio::sync::watch::channel(false);
    let handler = FaultyNode::new(ReplicaHandler::new(node.clone())).hold_blob_writes(held);
    let (_server, ep) = http_node_with(handler).await;
    let a = replica(1);
    let b = replica(2);
    configure(&a);
    configure(&b);
    let (id, data) = write_big(&a, "big", 3 * 1024 * 1024, 9);
    put(&a, "small", b"small");
    let ea = engine(&a, http(), vec![ep.clone()], fast_config());
    let eb = engine(&b, http(), vec![ep.clone()], fast_config());

    let push = tokio::spawn({
        let ea = ea.clone();
        async move { ea.sync_once().await }
    });
    eventually(
        "the small record never arrived while the blob upload was held back",
        || async {
            eb.sync_once().await;
        },
        || get(&b, "small").is_some(),
    )
    .await;
    assert_eq!(get(&b, "small"), Some(b"small".to_vec()));
    // A record written while the upload is held gets through too.
    put(&a, "during", b"during");
    eventually(
        "a record written during the blob upload never arrived",
        || async {
            eb.sync_once().await;
        },
        || get(&b, "during").is_some(),
    )
    .await;
    assert!(!push.is_finished(), "the push waits for the held blob");
    assert!(!node.ledger().blobs().has(&data.data_cid).unwrap());
    assert_eq!(
        node.residency(&tenant(), &id).unwrap(),
        Residency::Absent,
        "a message naming a blob is sent only after its blob"
    );
    assert_eq!(b.residency(&tenant(), &id).unwrap(), Residency::Absent);

    open.send_replace(true);
    let report = push.await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    sync_until_quiet(&eb, 3).await;
    assert_eq!(b.residency(&tenant(), &id).unwrap(), Residency::Resident);
    assert_eq!(
        hash_of(b.blob_reader(&data.data_cid, 0).unwrap()),
        data.data_cid
    );
}

/// A link runs at most `blob_transfers_per_link_max` blob transfers at once, however
/// many blobs a push carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_transfers_per_link_are_bounded() {
    let node = replica(100);
    let max = Arc::new(AtomicUsize::new(0));
    let handler = FaultyNode::new(ReplicaHandler::new(node.clone()))
        .count_blob_writes(max.clone(), std::time::Duration::from_millis(5));
    let (_server, ep) = http_node_with(handler).await;
    let a = replica(1);
    configure(&a);
    let blobs: Vec<DataRef> = (0..5u8)
        .map(|i| write_big(&a, &format!("big{i}"), 200_000 + u64::from(i), 20 + i).1)
        .collect();
    let config = sync_engine::sync::SyncConfig {
        blob_transfers_per_link_max: 2,
        blob_transfers_max: 8,
        ..fast_config()
    };
    let ea = engine(&a, http(), vec![ep.clone()], config);
    sync_until_quiet(&ea, 3).await;
    for d in &blobs {
        assert!(node.ledger().blobs().has(&d.data_cid).unwrap());
    }
    let seen = max.load(Ordering::SeqCst);
    assert!((1..=2).contains(&seen), "{seen} blob uploads ran at once");
}

/// The scheduled collector ([`BlobGc::spawn`]) releases the blob of a deleted record
/// and keeps the blob of a live one and the partial download a staged record waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_collector_releases_deleted_blobs_and_keeps_the_rest() {
    let a = replica(1);
    let c = replica(3);
    configure(&a);
    configure(&c);
    let (gone_id, gone) = write_big(&a, "gone", 200_000, 3);
    let (_, kept) = write_big(&a, "kept", 200_000, 4);
    a.delete(&tenant(), gone_id, &alice()).unwrap();
    // A record from another replica whose blob is half downloaded: staged.
    let (staged_id, waited) = write_big(&c, "staged", 300_000, 5);
    let cid = c.get(&tenant(), &staged_id).unwrap().unwrap().cid;
    let m = c.ledger().get_message(&tenant(), &cid).unwrap().unwrap();
    a.apply(&tenant(), vec![(m.message, m.data)], Origin::Remote(None))
        .unwrap();
    let blobs = a.ledger().blobs();
    blobs.want(&waited.data_cid, waited.size, 0).unwrap();
    let mut upload = blobs
        .upload(&waited.data_cid, Some(waited.size), 0)
        .unwrap();
    let mut half = vec![0u8; 100_000];
    Pattern::new(waited.size, 5).read_exact(&mut half).unwrap();
    upload.write(&half).unwrap();
    upload
        .checkpoint(sync_ledger::Durability::Buffered)
        .unwrap();
    drop(upload);

    let task = BlobGc::new(a.clone()).grace_ms(0).spawn(5);
    let mut rounds = task.rounds();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while rounds.borrow().collections < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the collector did not run"
        );
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), rounds.changed()).await;
    }
    drop(task);
    let done = *rounds.borrow();
    assert_eq!(done.failures, 0, "{done:?}");
    assert_eq!(done.removed.blobs_removed, 1, "{done:?}");
    assert_eq!(done.removed.bytes_removed, gone.size);
    assert!(!blobs.has(&gone.data_cid).unwrap());
    assert!(blobs.has(&kept.data_cid).unwrap());
    assert_eq!(
        blobs.upload_offset(&waited.data_cid).unwrap(),
        Some(100_000)
    );
    assert_eq!(
        a.residency(&tenant(), &staged_id).unwrap(),
        Residency::Staged
    );
}

/// A lease of the test: held by "another process" while `taken` is set.
#[derive(Debug, Default)]
struct TestLease {
    taken: std::sync::atomic::AtomicBool,
}

impl sync_ledger::Leases for TestLease {
    fn try_take(&self, name: &str) -> sync_ledger::Result<Option<sync_ledger::LeaseGuard>> {
        assert_eq!(name, sync_engine::blob::BLOB_GC_LEASE);
        Ok((!self.taken.load(Ordering::SeqCst)).then(|| sync_ledger::LeaseGuard::new(())))
    }
}

#[test]
fn the_collector_skips_its_round_while_another_process_holds_the_lease() {
    let r = replica(1);
    configure(&r);
    let (_, data) = write_big(&r, "gone", 300_000, 3);
    r.delete(&tenant(), record_id("gone"), &alice()).unwrap();
    let lease = Arc::new(TestLease::default());
    let mut gc = BlobGc::new(r.clone()).grace_ms(0).leases(lease.clone());
    lease.taken.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let report = gc.collect().unwrap();
        assert!(report.skipped);
        assert_eq!(report.blobs_removed, 0);
    }
    assert!(r.ledger().blobs().has(&data.data_cid).unwrap());
    lease.taken.store(false, Ordering::SeqCst);
    assert!(!gc.collect().unwrap().skipped);
    assert_eq!(gc.collect().unwrap().blobs_removed, 1);
    assert!(!r.ledger().blobs().has(&data.data_cid).unwrap());
}
