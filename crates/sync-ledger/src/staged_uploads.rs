//! Uploads staged per uploader: the bytes of a blob go in under a staging id of the
//! uploader's own, and are stored under the blob's id only once they hashed to it.
//!
//! A node serves many tenants from one blob store, and blobs are stored once by content.
//! An upload under the blob's own id would be shared by everyone sending that id: one
//! sender could see another's progress, and a sender of wrong bytes would make the
//! other's upload fail its hash check. A staged upload ([`Blobs::upload_for_tenant`])
//! keeps each uploader's partial state apart, while the stored blob stays
//! deduplicated: when the bytes match, one commit writes the blob's `blob_meta` and an
//! alias naming the staging id (where the chunks stay), or, when the blob is already
//! stored, drops the staged chunks.
//!
//! A tenant has two staging ids per blob and uploads under the one the stored blob's
//! alias does not name: a tenant that sends a blob again (after it was stored through
//! its own upload) must not write over, or on a hash mismatch delete, the chunks that
//! every reader of the blob reads.

use sync_types::{Cid, TenantId};

use crate::blobs::{BlobUpload, Blobs};
use crate::error::Result;
use crate::layout::{self, BLOB_CHUNK_BYTES, BlobMeta, enc};
use crate::ledger::lock;
use crate::store::{Batch, Durability};

/// Prefix of [`staging_id`]'s hash input, so a staging id never equals the hash of
/// real content by accident (it is the hash of a string no blob id is derived from).
const TENANT_STAGING_PREFIX: &[u8] = b"weft tenant blob staging v1";

/// Staging id number `which` (0 or 1) of `tenant`'s uploads of blob `cid`: different
/// for every tenant.
fn staging_id(tenant: &TenantId, cid: &Cid, which: u8) -> Cid {
    let mut h = blake3::Hasher::new();
    h.update(TENANT_STAGING_PREFIX);
    h.update(tenant.as_str().as_bytes());
    // Tenant ids are visible ASCII: the terminator keeps (tenant, cid) pairs apart.
    h.update(&[0]);
    h.update(cid.as_bytes());
    h.update(&[which]);
    Cid::from_bytes(*h.finalize().as_bytes())
}

impl<'a> Blobs<'a> {
    /// The staging id `tenant`'s upload of `cid` uses now: the same for every attempt
    /// (so it resumes) until the blob is stored under it, then the other one.
    fn tenant_staging(&self, tenant: &TenantId, cid: &Cid) -> Result<Cid> {
        let first = staging_id(tenant, cid, 0);
        Ok(match self.locate(cid)? {
            Some((_, at)) if at == first => staging_id(tenant, cid, 1),
            _ => first,
        })
    }

    /// Starts or resumes `tenant`'s upload of blob `cid`, staged under an id of the
    /// tenant's own (like [`upload_staged`](Self::upload_staged)): tenants never see or
    /// disturb each other's partial uploads of one blob, and the stored blob is still
    /// kept once. A tenant sending a blob again after its own upload stored it writes
    /// under a second id, never over the stored chunks.
    pub fn upload_for_tenant(
        &self,
        tenant: &TenantId,
        cid: &Cid,
        size: Option<u64>,
        now_ms: u64,
    ) -> Result<BlobUpload<'a>> {
        let staging = self.tenant_staging(tenant, cid)?;
        self.upload_staged(&staging, cid, size, now_ms)
    }

    /// Bytes durably received by `tenant`'s partial upload of `cid`, if one exists.
    pub fn tenant_upload_offset(&self, tenant: &TenantId, cid: &Cid) -> Result<Option<u64>> {
        self.upload_offset(&self.tenant_staging(tenant, cid)?)
    }

    /// Starts or resumes an upload of blob `cid` staged under `staging`: chunks and
    /// upload state live under `staging` (see [`upload_offset`](Self::upload_offset)
    /// of `staging` for its progress), and
    /// [`finish`](BlobUpload::finish) stores the blob under `cid` only if the bytes
    /// hash to it. Unlike [`upload`](Self::upload), it never starts complete: every
    /// byte is received and verified even when the blob is already stored.
    pub fn upload_staged(
        &self,
        staging: &Cid,
        cid: &Cid,
        size: Option<u64>,
        now_ms: u64,
    ) -> Result<BlobUpload<'a>> {
        let mut upload = self.upload(staging, size, now_ms)?;
        upload.target = *cid;
        Ok(upload)
    }
}

impl BlobUpload<'_> {
    /// The end of [`finish`](Self::finish) for a staged upload whose bytes matched: one
    /// commit stores the blob with an alias to the staged chunks, or drops them when
    /// the blob is already stored. The ledger's upload set is held across the check
    /// and the commit, so two uploaders finishing the same blob at once store it once.
    pub(crate) fn finish_staged(mut self, durability: Durability) -> Result<u64> {
        let size = self.offset();
        let (staging, target) = (self.cid, self.target);
        let blobs = self.ledger.blobs();
        let uploads = lock(&self.ledger.uploads);
        let mut batch;
        if blobs.has(&target)? {
            // The pending chunks were never committed: drop them with the rest.
            self.pending = Batch::new();
            self.buf.clear();
            batch = Batch::new();
            blobs.delete_chunks(&staging, &mut batch)?;
        } else {
            batch = std::mem::take(&mut self.pending);
            if !self.buf.is_empty() {
                let index = self.received / BLOB_CHUNK_BYTES as u64;
                let tail = std::mem::take(&mut self.buf);
                blobs.put_chunk(&mut batch, &staging, index, tail)?;
            }
            // A partial download of the blob under its own id is superseded.
            if !uploads.contains(&target) {
                blobs.delete_chunks(&target, &mut batch)?;
                batch.delete(layout::BLOB_UPLOADS, target.as_bytes().to_vec());
            }
            batch.put(
                layout::BLOB_META,
                target.as_bytes().to_vec(),
                enc(&BlobMeta {
                    size,
                    chunk_bytes: u32::try_from(BLOB_CHUNK_BYTES).unwrap_or(u32::MAX),
                }),
            );
            batch.put(
                layout::BLOB_ALIASES,
                target.as_bytes().to_vec(),
                staging.as_bytes().to_vec(),
            );
        }
        batch.delete(layout::BLOB_UPLOADS, staging.as_bytes().to_vec());
        self.ledger
            .commit_upload(&staging, batch, durability, self.now_ms, true)?;
        drop(uploads);
        Ok(size)
    }
}
