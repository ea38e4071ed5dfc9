//! Blob uploads over a store several processes share: an upload is owned by one process
//! at a time (a row in `blob_owners`), so two nodes never write one upload. Each ledger
//! here has a store, a pool and an owner id of its own, as a separate process would.

mod support;

use sync_ledger::store::Durability;
use sync_ledger::{Error, Ledger, UPLOAD_OWNER_TTL_MS};
use sync_types::{Cid, TenantId};

fn ledger(schema: &str) -> Ledger {
    Ledger::open(support::open(schema)).unwrap()
}

/// `len` bytes that differ from chunk to chunk.
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let b = i.to_le_bytes();
            b[0].wrapping_mul(31).wrapping_add(seed) ^ b[2]
        })
        .collect()
}

fn owner_rows(schema: &str) -> i64 {
    let mut c = postgres::Client::connect(&support::url(), postgres::NoTls).unwrap();
    c.query_one(
        &format!("SELECT count(*) FROM \"{schema}\".\"weft_blob_owners\""),
        &[],
    )
    .unwrap()
    .get(0)
}

#[test]
fn two_processes_never_write_one_upload() {
    let schema = support::fresh_schema("upload_owner");
    let (a, b) = (ledger(&schema), ledger(&schema));
    let t = TenantId::new("uploads").unwrap();
    let data = payload(300 * 1024, 1);
    let cid = Cid::of_data(&data);
    let size = Some(data.len() as u64);
    let t0 = 1_000_000;

    // A starts the upload and commits a first part.
    let mut up_a = a.blobs().upload_for_tenant(&t, &cid, size, t0).unwrap();
    up_a.write(&data[..100 * 1024]).unwrap();
    assert_eq!(up_a.checkpoint(Durability::Buffered).unwrap(), 100 * 1024);

    // B may not write it, nor remove it, while A's ownership lasts.
    let refused = b.blobs().upload_for_tenant(&t, &cid, size, t0 + 5);
    assert!(
        matches!(refused, Err(Error::UploadInProgress(_))),
        "{refused:?}"
    );
    let partial = b.blobs().partial_uploads().unwrap();
    assert_eq!(partial.len(), 1);
    let staged = partial[0].0;
    assert!(matches!(
        b.blobs().abort_stale_upload(&staged, t0 + 5),
        Err(Error::UploadInProgress(_))
    ));
    assert!(matches!(
        b.blobs().abort_upload(&staged),
        Err(Error::UploadInProgress(_))
    ));

    // A stalls past its ownership: B takes the upload over from what A committed.
    let later = t0 + UPLOAD_OWNER_TTL_MS + 1;
    let mut up_b = b.blobs().upload_for_tenant(&t, &cid, size, later).unwrap();
    assert_eq!(up_b.offset(), 100 * 1024, "B resumes from A's commit");
    up_b.write(&data[100 * 1024..200 * 1024]).unwrap();
    assert_eq!(up_b.checkpoint(Durability::Buffered).unwrap(), 200 * 1024);

    // A wakes up and writes other bytes: its commit is refused and writes nothing.
    up_a.write(&payload(100 * 1024, 9)).unwrap();
    let lost = up_a.checkpoint(Durability::Buffered);
    assert!(matches!(lost, Err(Error::UploadInProgress(_))), "{lost:?}");
    drop(up_a);
    assert_eq!(
        a.blobs().tenant_upload_offset(&t, &cid).unwrap(),
        Some(200 * 1024),
        "the state is B's"
    );
    // Nor can A resume it while B owns it.
    let again = a.blobs().upload_for_tenant(&t, &cid, size, later + 1);
    assert!(
        matches!(again, Err(Error::UploadInProgress(_))),
        "{again:?}"
    );

    // B finishes: the blob is stored, A reads exactly the bytes, and the row is gone.
    up_b.write(&data[200 * 1024..]).unwrap();
    assert_eq!(
        up_b.finish(Durability::SyncData).unwrap(),
        data.len() as u64
    );
    assert_eq!(a.blobs().read(&cid).unwrap(), data);
    assert_eq!(owner_rows(&schema), 0);
    assert!(a.blobs().partial_uploads().unwrap().is_empty());
}

#[test]
fn a_paused_upload_taken_over_by_another_process_is_read_again() {
    let schema = support::fresh_schema("upload_resume");
    let (a, b) = (ledger(&schema), ledger(&schema));
    let t = TenantId::new("uploads").unwrap();
    let data = payload(200 * 1024, 2);
    let cid = Cid::of_data(&data);
    let size = Some(data.len() as u64);
    let t0 = 2_000_000;

    let mut up_a = a.blobs().upload_for_tenant(&t, &cid, size, t0).unwrap();
    up_a.write(&data[..64 * 1024]).unwrap();
    up_a.checkpoint(Durability::Buffered).unwrap();
    let cursor = up_a.pause().unwrap();

    // B takes over after A's ownership ran out, writes a part and stops.
    let later = t0 + UPLOAD_OWNER_TTL_MS + 1;
    let mut up_b = b.blobs().upload_for_tenant(&t, &cid, size, later).unwrap();
    up_b.write(&data[64 * 1024..128 * 1024]).unwrap();
    up_b.checkpoint(Durability::Buffered).unwrap();
    drop(up_b);

    // A resumes its cursor once B's ownership ran out too: the cursor's hash state is
    // stale, so the upload continues from what is stored (B's part included).
    let latest = later + UPLOAD_OWNER_TTL_MS + 1;
    let mut resumed = a.blobs().resume(cursor, latest).unwrap();
    assert_eq!(resumed.offset(), 128 * 1024);
    resumed.write(&data[128 * 1024..]).unwrap();
    resumed.finish(Durability::SyncData).unwrap();
    assert_eq!(b.blobs().read(&cid).unwrap(), data);
}

#[test]
fn an_upload_whose_owner_died_is_collected_after_its_ownership_expires() {
    let schema = support::fresh_schema("upload_dead");
    let (a, b) = (ledger(&schema), ledger(&schema));
    let t = TenantId::new("uploads").unwrap();
    let data = payload(100 * 1024, 3);
    let cid = Cid::of_data(&data);
    let t0 = 3_000_000;
    let mut up = a
        .blobs()
        .upload_for_tenant(&t, &cid, Some(data.len() as u64), t0)
        .unwrap();
    up.write(&data[..70 * 1024]).unwrap();
    up.checkpoint(Durability::Buffered).unwrap();
    // A dies: its in-process claim goes, its row stays.
    drop(up);
    drop(a);
    let staged = b.blobs().partial_uploads().unwrap()[0].0;
    assert!(matches!(
        b.blobs()
            .abort_stale_upload(&staged, t0 + UPLOAD_OWNER_TTL_MS - 1),
        Err(Error::UploadInProgress(_))
    ));
    b.blobs()
        .abort_stale_upload(&staged, t0 + UPLOAD_OWNER_TTL_MS + 1)
        .unwrap();
    assert!(b.blobs().partial_uploads().unwrap().is_empty());
    assert_eq!(owner_rows(&schema), 0);
    assert_eq!(b.blobs().tenant_upload_offset(&t, &cid).unwrap(), None);
}
