//! Pausing and resuming an upload: [`UploadCursor`] keeps the hash state in memory
//! between two calls of a long transfer.

use sync_types::Cid;

use crate::error::Result;
use crate::store::Batch;

use super::{BlobUpload, Blobs};

/// A paused [`BlobUpload`]: its hash state and uncommitted bytes (at most 16 full
/// chunks and the current one), held in memory between two
/// calls of a long transfer so that continuing does not re-hash the stored chunks (see
/// [`Blobs::resume`]). Dropping it loses nothing committed: a new upload resumes from
/// the last commit.
pub struct UploadCursor {
    cid: Cid,
    target: Cid,
    size: Option<u64>,
    received: u64,
    durable: u64,
    hasher: blake3::Hasher,
    buf: Vec<u8>,
    pending: Batch,
    pending_chunks: u64,
}

impl std::fmt::Debug for UploadCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadCursor")
            .field("cid", &self.cid)
            .field("offset", &self.offset())
            .finish_non_exhaustive()
    }
}

impl UploadCursor {
    /// The blob.
    pub fn cid(&self) -> Cid {
        self.cid
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.received + self.buf.len() as u64
    }
}

impl BlobUpload<'_> {
    /// Pauses the upload, keeping its hash state for [`Blobs::resume`]; `None` when the
    /// blob was already stored (nothing to continue).
    pub fn pause(mut self) -> Option<UploadCursor> {
        if self.complete.is_some() {
            return None;
        }
        Some(UploadCursor {
            cid: self.cid,
            target: self.target,
            size: self.size,
            received: self.received,
            durable: self.durable,
            hasher: std::mem::take(&mut self.hasher),
            buf: std::mem::take(&mut self.buf),
            pending: std::mem::take(&mut self.pending),
            pending_chunks: std::mem::take(&mut self.pending_chunks),
        })
    }
}

impl<'a> Blobs<'a> {
    /// Continues a paused upload without re-reading what it already wrote. The cursor
    /// is trusted only when the stored upload state is still the one it last committed
    /// (nobody else wrote to this upload since); otherwise this is
    /// [`upload`](Self::upload), which re-hashes the stored chunks.
    ///
    /// On a shared store the cursor is also trusted only when this process owned the
    /// upload throughout (see [`upload`](Self::upload)): another process may have
    /// written it in between.
    pub fn resume(&self, cursor: UploadCursor, now_ms: u64) -> Result<BlobUpload<'a>> {
        let (entered, continuous) = self.enter(&cursor.cid, now_ms)?;
        let state = self.upload_state(&cursor.cid)?;
        let agrees = continuous
            && !self.has(&cursor.cid)?
            && match &state {
                Some(s) => s.received == cursor.durable,
                None => cursor.durable == 0,
            };
        if !agrees {
            // `upload` claims again (the row is this process's now) and re-reads.
            drop(entered);
            if cursor.target != cursor.cid {
                return self.upload_staged(&cursor.cid, &cursor.target, cursor.size, now_ms);
            }
            return self.upload(&cursor.cid, cursor.size, now_ms);
        }
        entered.keep();
        Ok(BlobUpload {
            ledger: self.ledger,
            cid: cursor.cid,
            target: cursor.target,
            size: cursor.size,
            received: cursor.received,
            durable: cursor.durable,
            hasher: cursor.hasher,
            buf: cursor.buf,
            pending: cursor.pending,
            pending_chunks: cursor.pending_chunks,
            complete: None,
            now_ms,
        })
    }
}
