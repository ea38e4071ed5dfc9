//! The blob store: payloads larger than the inline limit, addressed by their blake3
//! hash, written as verified streams that can resume.
//!
//! A blob is *stored* exactly when its `blob_meta` entry exists, and that entry is
//! written in the same batch as the last chunk, only after the bytes hashed to the
//! announced id. Chunks of an unfinished upload are invisible to readers; a mismatch
//! deletes them and the upload state in one batch, so a bad upload stores nothing.
//!
//! An upload commits its chunks in batches of 16 (one journal write per MiB, not per
//! chunk), each with the upload state that covers exactly the
//! chunks committed so far, so a crash at any point leaves a consistent prefix to resume
//! from. A blob written as a stream of unknown hash ([`Blobs::put_stream`]) keeps its
//! chunks under the upload's own id and is stored with an entry in `blob_aliases`
//! naming that id: every byte is written once.
//!
//! Where the chunks live is the [`BlobContent`] backend's business (rows of this store
//! by default, [`InStore`]); a backend of its own writes each chunk before the batch
//! that names it commits, so the rules above hold with "before" in place of "in the
//! same batch".

use std::io::Read;

use sync_types::Cid;

use crate::error::{Error, Result};
use crate::layout::{self, BLOB_CHUNK_BYTES, BlobMeta, UploadState, dec, enc};
use crate::ledger::{Ledger, lock};
use crate::store::{Batch, Durability, KeyRange, Order};

mod content;
mod cursor;
mod owners;
mod reader;

pub use content::{BlobContent, ChunkIter, InStore};
pub use cursor::UploadCursor;
pub use owners::UPLOAD_OWNER_TTL_MS;
pub use reader::BlobReader;

/// The blob store of a [`Ledger`]; see [`Ledger::blobs`].
#[derive(Clone, Copy, Debug)]
pub struct Blobs<'a> {
    ledger: &'a Ledger,
}

/// A chunk's index as the content backends name it.
pub(crate) fn chunk_index(index: u64) -> Result<u32> {
    u32::try_from(index).map_err(|_| Error::LimitExceeded {
        what: "blob chunk index",
        len: usize::MAX,
        max: u32::MAX as usize,
    })
}

fn chunk_bytes() -> u64 {
    BLOB_CHUNK_BYTES as u64
}

/// Full chunks an upload writes per commit: bounds the pending batch (and its memory)
/// to 1 MiB, and is the most a crash between two commits costs a resumed upload.
pub(crate) const UPLOAD_COMMIT_CHUNKS: u64 = 16;

impl Ledger {
    /// The blob store.
    pub fn blobs(&self) -> Blobs<'_> {
        Blobs { ledger: self }
    }
}

/// A range read up to this long allocates its output before it has seen a chunk; a
/// longer one first checks that its last chunk exists.
const READ_UNCHECKED_BYTES: u64 = 1024 * 1024;

impl<'a> Blobs<'a> {
    fn meta(&self, cid: &Cid) -> Result<Option<BlobMeta>> {
        let key = cid.as_bytes();
        let Some(v) = self.ledger.store.get(layout::BLOB_META, key)? else {
            return Ok(None);
        };
        let meta: BlobMeta = dec(layout::BLOB_META, key, &v)?;
        // Every blob is stored in chunks of this size; reads divide by it and readers
        // step by it, so any other value is damage, not a format.
        if u64::from(meta.chunk_bytes) != chunk_bytes() {
            return Err(Error::Inconsistent(format!(
                "blob {cid} says it is stored in chunks of {} bytes, not {}",
                meta.chunk_bytes,
                chunk_bytes()
            )));
        }
        Ok(Some(meta))
    }

    /// Whether the blob is completely stored (resident).
    pub fn has(&self, cid: &Cid) -> Result<bool> {
        Ok(self.meta(cid)?.is_some())
    }

    /// The size of a stored blob.
    pub fn size(&self, cid: &Cid) -> Result<Option<u64>> {
        Ok(self.meta(cid)?.map(|m| m.size))
    }

    /// A whole stored blob.
    pub fn read(&self, cid: &Cid) -> Result<Vec<u8>> {
        let size = self.size(cid)?.ok_or(Error::BlobNotFound(*cid))?;
        self.read_range(cid, 0, size)
    }

    /// A stored blob's metadata and the id its chunks are stored under (its own, or the
    /// upload's for a blob written by [`put_stream`](Self::put_stream)).
    pub(crate) fn locate(&self, cid: &Cid) -> Result<Option<(BlobMeta, Cid)>> {
        let Some(meta) = self.meta(cid)? else {
            return Ok(None);
        };
        let at =
            match self
                .ledger
                .store
                .get(layout::BLOB_ALIASES, cid.as_bytes())?
            {
                Some(v) => Cid::from_bytes(<[u8; 32]>::try_from(v.as_slice()).map_err(|_| {
                    Error::Inconsistent(format!("blob {cid} has a malformed alias"))
                })?),
                None => *cid,
            };
        Ok(Some((meta, at)))
    }

    /// `len` bytes of a stored blob from `offset` (for resumed downloads).
    pub fn read_range(&self, cid: &Cid, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (meta, at) = self.locate(cid)?.ok_or(Error::BlobNotFound(*cid))?;
        self.read_located(cid, &meta, &at, offset, len)
    }

    /// [`read_range`](Self::read_range) of a located blob (chunks under `at`).
    fn read_located(
        &self,
        cid: &Cid,
        meta: &BlobMeta,
        at: &Cid,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let end =
            offset
                .checked_add(len)
                .filter(|&e| e <= meta.size)
                .ok_or(Error::RangeOutOfBounds {
                    cid: *cid,
                    offset,
                    end: offset.saturating_add(len),
                    size: meta.size,
                })?;
        let chunk = u64::from(meta.chunk_bytes);
        if len == 0 {
            return Ok(Vec::new());
        }
        let first = offset / chunk;
        let last = (end - 1) / chunk;
        let (content, store) = (&*self.ledger.content, &*self.ledger.store);
        // The output is allocated once, for `len` bytes; a damaged size must not make
        // that allocation (of up to 2^64 bytes) before the chunks show it wrong, so a
        // long range's last chunk is looked at first. (Short ranges, the node's
        // downloads among them, skip the extra read: their allocation is small anyway.)
        if len > READ_UNCHECKED_BYTES && content.chunk(store, at, chunk_index(last)?)?.is_none() {
            return Err(Error::Inconsistent(format!(
                "blob {cid} of {} bytes has no chunk {last}",
                meta.size
            )));
        }
        let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        let mut expected = first;
        for chunk_read in
            content.chunks(store, at, chunk_index(first)?, Some(chunk_index(last)?))?
        {
            let (index, v) = chunk_read?;
            let index = u64::from(index);
            let chunk_start = index * chunk;
            let full = (meta.size - chunk_start).min(chunk);
            if index != expected || v.len() as u64 != full {
                return Err(Error::Inconsistent(format!(
                    "blob {cid} chunk {index} is missing or has the wrong size"
                )));
            }
            expected += 1;
            let from = offset.saturating_sub(chunk_start);
            let to = (end - chunk_start).min(full);
            // Both bounds are within one chunk, which is at most BLOB_CHUNK_BYTES.
            out.extend_from_slice(
                &v[usize::try_from(from).unwrap_or(0)..usize::try_from(to).unwrap_or(0)],
            );
        }
        if expected != last + 1 {
            return Err(Error::Inconsistent(format!("blob {cid} is missing chunks")));
        }
        Ok(out)
    }

    /// Stores a blob from a reader, verifying it against `cid`; returns its size. A
    /// mismatch stores nothing and returns [`Error::BlobMismatch`]. An existing partial
    /// upload of the same blob is discarded first (the reader starts at byte 0).
    pub fn put(
        &self,
        cid: &Cid,
        mut reader: impl Read,
        durability: Durability,
        now_ms: u64,
    ) -> Result<u64> {
        self.abort_upload(cid)?;
        let mut upload = self.upload(cid, None, now_ms)?;
        if upload.is_complete() {
            return upload.finish(durability);
        }
        upload.write_all_from(&mut reader)?;
        upload.finish(durability)
    }

    /// Starts or resumes an upload of `cid`. `size`, when given, is the announced size:
    /// writing past it fails early. The upload resumes at
    /// [`offset`](BlobUpload::offset), the bytes durably received by an earlier upload
    /// (0 for a new one, the blob's size when it is already stored).
    ///
    /// On a store several processes write, the upload is also claimed for this process
    /// (see the `owners` module): [`Error::UploadInProgress`] while another process owns
    /// it, and every commit of the upload checks that it still does.
    pub fn upload(&self, cid: &Cid, size: Option<u64>, now_ms: u64) -> Result<BlobUpload<'a>> {
        // The upload re-reads what is stored below, whoever wrote it.
        let (entered, _) = self.enter(cid, now_ms)?;
        let mut upload = BlobUpload {
            ledger: self.ledger,
            cid: *cid,
            target: *cid,
            size,
            received: 0,
            durable: 0,
            hasher: blake3::Hasher::new(),
            buf: Vec::new(),
            pending: Batch::new(),
            pending_chunks: 0,
            complete: None,
            now_ms,
        };
        // The upload's drop gives the claim back from here on.
        entered.keep();
        if let Some(meta) = self.meta(cid)? {
            upload.complete = Some(meta.size);
            upload.received = meta.size;
            return Ok(upload);
        }
        if let Some(state) = self.upload_state(cid)? {
            match self.rehash(cid, state.received, &mut upload.hasher)? {
                Some(tail) => {
                    upload.received = state.received - tail.len() as u64;
                    upload.durable = state.received;
                    upload.buf = tail;
                    upload.size = size.or(state.size);
                }
                None => {
                    // The chunks do not match the recorded state: start over.
                    upload.hasher = blake3::Hasher::new();
                }
            }
        }
        Ok(upload)
    }

    /// Hashes the first `received` bytes of a partial upload; returns the bytes of the
    /// last, incomplete chunk (to be continued), or `None` when chunks are missing.
    fn rehash(
        &self,
        cid: &Cid,
        received: u64,
        hasher: &mut blake3::Hasher,
    ) -> Result<Option<Vec<u8>>> {
        let full_chunks = received / chunk_bytes();
        let tail_len = received % chunk_bytes();
        let mut expected = 0u64;
        let mut tail = Vec::new();
        for chunk_read in self
            .ledger
            .content
            .chunks(&*self.ledger.store, cid, 0, None)?
        {
            let (index, v) = chunk_read?;
            let index = u64::from(index);
            if index != expected {
                return Ok(None);
            }
            if index < full_chunks {
                if v.len() as u64 != chunk_bytes() {
                    return Ok(None);
                }
                hasher.update(&v);
            } else if index == full_chunks && tail_len > 0 {
                if v.len() as u64 != tail_len {
                    return Ok(None);
                }
                // The hasher has seen every byte before `offset()`, the tail included.
                hasher.update(&v);
                tail = v;
            } else {
                break;
            }
            expected += 1;
        }
        let needed = full_chunks + u64::from(tail_len > 0);
        Ok((expected >= needed).then_some(tail))
    }

    fn upload_state(&self, cid: &Cid) -> Result<Option<UploadState>> {
        let key = cid.as_bytes();
        match self.ledger.store.get(layout::BLOB_UPLOADS, key)? {
            Some(v) => Ok(Some(dec(layout::BLOB_UPLOADS, key, &v)?)),
            None => Ok(None),
        }
    }

    /// Bytes durably received by a partial upload of `cid`, if one exists.
    pub fn upload_offset(&self, cid: &Cid) -> Result<Option<u64>> {
        Ok(self.upload_state(cid)?.map(|s| s.received))
    }

    /// Every partial upload with its state (for removing stale ones by `updated_ms`).
    pub fn partial_uploads(&self) -> Result<Vec<(Cid, UploadState)>> {
        self.ledger
            .store
            .scan(layout::BLOB_UPLOADS, KeyRange::all(), Order::Ascending)?
            .map(|kv| {
                let (k, v) = kv?;
                let cid = Cid::from_bytes(layout::key_tail::<32>(layout::BLOB_UPLOADS, &k)?);
                Ok((cid, dec(layout::BLOB_UPLOADS, &k, &v)?))
            })
            .collect()
    }

    /// Discards a partial upload of `cid` (not a stored blob); refused
    /// ([`Error::UploadInProgress`]) while this process writes it, or, on a shared
    /// store, while another process owns it.
    pub fn abort_upload(&self, cid: &Cid) -> Result<()> {
        self.abort_stale_upload(cid, 0)
    }

    /// [`abort_upload`](Self::abort_upload) at time `now_ms`: on a shared store, an
    /// upload whose owner (another process) has not committed for
    /// [`UPLOAD_OWNER_TTL_MS`] is discarded too (the garbage collector's case: the
    /// owner died).
    pub fn abort_stale_upload(&self, cid: &Cid, now_ms: u64) -> Result<()> {
        if lock(&self.ledger.uploads).contains(cid) {
            return Err(Error::UploadInProgress(*cid));
        }
        if self.upload_state(cid)?.is_none() || self.has(cid)? {
            return Ok(());
        }
        let mut batch = Batch::new();
        self.delete_chunks(cid, &mut batch)?;
        batch.delete(layout::BLOB_UPLOADS, cid.as_bytes().to_vec());
        self.ledger
            .commit_upload_removal(cid, batch, Durability::Buffered, now_ms)
    }

    pub(crate) fn delete_chunks(&self, cid: &Cid, batch: &mut Batch) -> Result<()> {
        self.ledger
            .content
            .delete_chunks(&*self.ledger.store, batch, cid)
    }

    /// Writes chunk `index` of `at` (into `batch` for content in the store).
    pub(crate) fn put_chunk(
        &self,
        batch: &mut Batch,
        at: &Cid,
        index: u64,
        bytes: Vec<u8>,
    ) -> Result<()> {
        self.ledger
            .content
            .put_chunk(&*self.ledger.store, batch, at, chunk_index(index)?, bytes)
    }

    /// Deletes a stored blob; returns whether it was stored.
    pub fn delete(&self, cid: &Cid, durability: Durability) -> Result<bool> {
        if lock(&self.ledger.uploads).contains(cid) {
            return Err(Error::UploadInProgress(*cid));
        }
        let located = self.locate(cid)?;
        let mut batch = Batch::new();
        self.delete_chunks(cid, &mut batch)?;
        if let Some((_, at)) = &located
            && at != cid
        {
            self.delete_chunks(at, &mut batch)?;
        }
        let existed = located.is_some();
        batch.delete(layout::BLOB_ALIASES, cid.as_bytes().to_vec());
        batch.delete(layout::BLOB_META, cid.as_bytes().to_vec());
        batch.delete(layout::BLOB_UPLOADS, cid.as_bytes().to_vec());
        self.ledger.commit(batch, durability)?;
        Ok(existed)
    }
}

/// An upload in progress: bytes are hashed as they arrive, full chunks are written as
/// they fill, and [`finish`](Self::finish) stores the blob only if the hash matches.
///
/// Dropping an upload without finishing keeps what it committed for a later resume.
pub struct BlobUpload<'a> {
    pub(crate) ledger: &'a Ledger,
    /// The id the chunks and the upload state are stored under.
    pub(crate) cid: Cid,
    /// The id the bytes must hash to: `cid`, or the blob of a staged upload
    /// ([`Blobs::upload_staged`]).
    pub(crate) target: Cid,
    size: Option<u64>,
    /// Bytes in full chunks so far, committed or pending (not counting `buf`).
    pub(crate) received: u64,
    /// `received` of the upload state last committed (what a resume starts from).
    durable: u64,
    hasher: blake3::Hasher,
    /// The current, incomplete chunk.
    pub(crate) buf: Vec<u8>,
    /// Full chunks not committed yet (at most [`UPLOAD_COMMIT_CHUNKS`]).
    pub(crate) pending: Batch,
    pending_chunks: u64,
    /// Set when the blob was already stored when the upload started.
    complete: Option<u64>,
    /// The caller's time when the upload started or resumed (upload states and owner
    /// rows are stamped with it).
    pub(crate) now_ms: u64,
}

impl std::fmt::Debug for BlobUpload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobUpload")
            .field("cid", &self.cid)
            .field("offset", &self.offset())
            .finish_non_exhaustive()
    }
}

impl BlobUpload<'_> {
    /// The blob.
    pub fn cid(&self) -> Cid {
        self.cid
    }

    /// Bytes received so far; the sender resumes from here.
    pub fn offset(&self) -> u64 {
        self.received + self.buf.len() as u64
    }

    /// Whether the blob was already stored when the upload started (nothing to send).
    pub fn is_complete(&self) -> bool {
        self.complete.is_some()
    }

    /// Writes everything `reader` yields, a chunk at a time.
    pub fn write_all_from(&mut self, reader: &mut impl Read) -> Result<()> {
        let mut buf = vec![0u8; BLOB_CHUNK_BYTES];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.write(&buf[..n])?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::backend(e)),
            }
        }
    }

    /// Appends bytes; full chunks are committed (buffered durability) 16 at a time
    /// (1 MiB).
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        let limit = self.complete.or(self.size);
        if let Some(size) = limit
            && self.offset() + bytes.len() as u64 > size
        {
            return Err(Error::BlobTooLarge {
                cid: self.cid,
                size,
            });
        }
        while !bytes.is_empty() {
            let room = BLOB_CHUNK_BYTES - self.buf.len();
            let take = room.min(bytes.len());
            self.hasher.update(&bytes[..take]);
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(BLOB_CHUNK_BYTES);
            }
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == BLOB_CHUNK_BYTES {
                let index = self.received / chunk_bytes();
                // The full chunk moves into the batch; the next one gets a new buffer.
                let full = std::mem::take(&mut self.buf);
                self.ledger
                    .blobs()
                    .put_chunk(&mut self.pending, &self.cid, index, full)?;
                self.received += chunk_bytes();
                self.pending_chunks += 1;
                if self.pending_chunks >= UPLOAD_COMMIT_CHUNKS {
                    self.commit_pending(Durability::Buffered, false)?;
                }
            }
        }
        Ok(())
    }

    /// Commits the pending chunks, and the current incomplete one when `tail` is set,
    /// with the upload state that covers them.
    pub(crate) fn commit_pending(&mut self, durability: Durability, tail: bool) -> Result<()> {
        let mut batch = std::mem::take(&mut self.pending);
        self.pending_chunks = 0;
        let mut received = self.received;
        if tail && !self.buf.is_empty() {
            // Written again, whole, when the chunk fills.
            let index = self.received / chunk_bytes();
            self.ledger
                .blobs()
                .put_chunk(&mut batch, &self.cid, index, self.buf.clone())?;
            received += self.buf.len() as u64;
        }
        batch.put(
            layout::BLOB_UPLOADS,
            self.cid.as_bytes().to_vec(),
            enc(&UploadState {
                received,
                size: self.size,
                updated_ms: self.now_ms,
            }),
        );
        self.ledger
            .commit_upload(&self.cid, batch, durability, self.now_ms, false)?;
        self.durable = received;
        Ok(())
    }

    /// Commits everything written so far, with `durability`, so that a resumed upload
    /// starts after it; returns that offset.
    pub fn checkpoint(&mut self, durability: Durability) -> Result<u64> {
        if self.complete.is_none() {
            self.commit_pending(durability, true)?;
        } else {
            self.ledger.persist(durability)?;
        }
        Ok(self.offset())
    }

    /// The blake3 hash of the bytes written so far.
    pub(crate) fn content_cid(&self) -> Cid {
        Cid::from_bytes(*self.hasher.finalize().as_bytes())
    }

    /// Verifies the bytes against the blob id and stores the blob; returns its size.
    /// On a mismatch every chunk is deleted and [`Error::BlobMismatch`] is returned;
    /// the upload state is deleted too, unless the upload announced a size: then it
    /// goes back to offset 0, so a blob that is [wanted](Blobs::want) stays wanted.
    pub fn finish(mut self, durability: Durability) -> Result<u64> {
        if let Some(size) = self.complete {
            return Ok(size);
        }
        let size = self.offset();
        let actual = self.content_cid();
        if actual != self.target {
            let mut batch = Batch::new();
            self.pending = Batch::new();
            self.ledger.blobs().delete_chunks(&self.cid, &mut batch)?;
            // In the same commit as the chunks: wanting the blob again in a later one
            // left a window in which a power loss kept the deletion and lost the
            // entry, and the staged record that waits for the blob stayed staged for
            // good (simulation seeds 2000326 and 2001590).
            match self.size {
                Some(announced) => batch.put(
                    layout::BLOB_UPLOADS,
                    self.cid.as_bytes().to_vec(),
                    enc(&UploadState {
                        received: 0,
                        size: Some(announced),
                        updated_ms: self.now_ms,
                    }),
                ),
                None => batch.delete(layout::BLOB_UPLOADS, self.cid.as_bytes().to_vec()),
            }
            self.ledger
                .commit_upload(&self.cid, batch, durability, self.now_ms, true)?;
            self.buf.clear();
            return Err(Error::BlobMismatch {
                expected: self.target,
                actual,
            });
        }
        if self.target != self.cid {
            return self.finish_staged(durability);
        }
        let mut batch = std::mem::take(&mut self.pending);
        if !self.buf.is_empty() {
            let index = self.received / chunk_bytes();
            let tail = std::mem::take(&mut self.buf);
            self.ledger
                .blobs()
                .put_chunk(&mut batch, &self.cid, index, tail)?;
        }
        batch.put(
            layout::BLOB_META,
            self.cid.as_bytes().to_vec(),
            enc(&BlobMeta {
                size,
                chunk_bytes: u32::try_from(BLOB_CHUNK_BYTES).unwrap_or(u32::MAX),
            }),
        );
        batch.delete(layout::BLOB_UPLOADS, self.cid.as_bytes().to_vec());
        self.ledger
            .commit_upload(&self.cid, batch, durability, self.now_ms, true)?;
        Ok(size)
    }
}

/// Dropping an upload without finishing keeps what it committed (every 16 chunks, and
/// at each [`checkpoint`](BlobUpload::checkpoint)) for a later resume.
impl Drop for BlobUpload<'_> {
    fn drop(&mut self) {
        lock(&self.ledger.uploads).remove(&self.cid);
    }
}

// ---- streaming: writes of unknown hash, readers, paused uploads, listing ----

/// Prefix of the staging ids under which [`Blobs::put_stream`] writes a blob whose hash
/// is not known yet. A staging id is `blake3(prefix || nonce)`, so it never equals the
/// hash of real content by accident; the nonce comes from the ledger's `IdSource`.
const STAGING_PREFIX: &[u8] = b"weft blob staging v1";

impl<'a> Blobs<'a> {
    /// Stores a blob from a reader without knowing its hash in advance; returns its id
    /// and size. Memory stays bounded by a few chunks whatever the size, and every byte
    /// is written and hashed once: the bytes go in as a partial upload under a
    /// temporary staging id (listed by [`partial_uploads`](Self::partial_uploads) and
    /// removable with [`abort_upload`](Self::abort_upload) if the process dies), and
    /// the last commit stores the blob's `blob_meta` with an alias naming the staging
    /// id, where its chunks stay. When the blob is already stored the staged chunks are
    /// removed instead.
    pub fn put_stream(
        &self,
        mut reader: impl Read,
        durability: Durability,
        now_ms: u64,
    ) -> Result<(Cid, u64)> {
        let nonce = self.fresh_staging_id()?;
        let mut upload = self.upload(&nonce, None, now_ms)?;
        upload.write_all_from(&mut reader)?;
        upload.checkpoint(Durability::Buffered)?;
        let size = upload.offset();
        // The upload's hasher saw every byte: it is the blob's id.
        let cid = upload.content_cid();
        drop(upload);
        if !lock(&self.ledger.uploads).insert(cid) {
            self.abort_upload(&nonce)?;
            return Err(Error::UploadInProgress(cid));
        }
        let stored = self.store_staged(&nonce, &cid, size, durability, now_ms);
        lock(&self.ledger.uploads).remove(&cid);
        stored?;
        Ok((cid, size))
    }

    /// A staging id no upload and no stored blob uses. Drawn from the ledger's id source,
    /// like stream ids: unique across processes with OS randomness, replayable from a
    /// seed in a simulation. A seeded source draws the same sequence again after a
    /// reopen, and a stored blob keeps its chunks under the id it was staged under, so an
    /// id still in use is skipped rather than trusted.
    fn fresh_staging_id(&self) -> Result<Cid> {
        loop {
            let mut h = blake3::Hasher::new();
            h.update(STAGING_PREFIX);
            h.update(self.ledger.fresh_id().as_bytes());
            let id = Cid::from_bytes(*h.finalize().as_bytes());
            let in_use = self
                .ledger
                .store
                .get(layout::BLOB_UPLOADS, id.as_bytes())?
                .is_some()
                || self
                    .ledger
                    .content
                    .chunks(&*self.ledger.store, &id, 0, None)?
                    .next()
                    .is_some();
            if !in_use {
                return Ok(id);
            }
        }
    }

    /// Stores the staged upload `from` as blob `to`, in one commit: its meta and an
    /// alias naming `from`, where the chunks stay. A partial upload of `to` under its own
    /// id (a download of the same blob) is superseded and removed in the same commit.
    fn store_staged(
        &self,
        from: &Cid,
        to: &Cid,
        size: u64,
        durability: Durability,
        now_ms: u64,
    ) -> Result<()> {
        let mut batch = Batch::new();
        if self.has(to)? {
            self.delete_chunks(from, &mut batch)?;
            batch.delete(layout::BLOB_UPLOADS, from.as_bytes().to_vec());
            return self
                .ledger
                .commit_upload_removal(from, batch, durability, now_ms);
        }
        self.delete_chunks(to, &mut batch)?;
        batch.put(
            layout::BLOB_META,
            to.as_bytes().to_vec(),
            enc(&BlobMeta {
                size,
                chunk_bytes: u32::try_from(BLOB_CHUNK_BYTES).unwrap_or(u32::MAX),
            }),
        );
        batch.put(
            layout::BLOB_ALIASES,
            to.as_bytes().to_vec(),
            from.as_bytes().to_vec(),
        );
        batch.delete(layout::BLOB_UPLOADS, from.as_bytes().to_vec());
        batch.delete(layout::BLOB_UPLOADS, to.as_bytes().to_vec());
        // The staged upload is this process's: its owner row goes with it.
        self.ledger
            .commit_upload_removal(from, batch, durability, now_ms)
    }

    /// Every stored blob with its size, in id order (for garbage collection).
    pub fn list(&self) -> Result<Vec<(Cid, u64)>> {
        self.ledger
            .store
            .scan(layout::BLOB_META, KeyRange::all(), Order::Ascending)?
            .map(|kv| {
                let (k, v) = kv?;
                let cid = Cid::from_bytes(layout::key_tail::<32>(layout::BLOB_META, &k)?);
                let meta: BlobMeta = dec(layout::BLOB_META, &k, &v)?;
                Ok((cid, meta.size))
            })
            .collect()
    }

    /// Records that a blob of `size` bytes is wanted (a record references it and it has
    /// not arrived), as an upload at offset 0, unless it is stored or an upload exists.
    /// Wanted blobs are listed by [`partial_uploads`](Self::partial_uploads), so a
    /// fetcher finds them again after a restart.
    pub fn want(&self, cid: &Cid, size: u64, now_ms: u64) -> Result<()> {
        if lock(&self.ledger.uploads).contains(cid)
            || self.has(cid)?
            || self.upload_state(cid)?.is_some()
        {
            return Ok(());
        }
        let mut batch = Batch::new();
        batch.put(
            layout::BLOB_UPLOADS,
            cid.as_bytes().to_vec(),
            enc(&UploadState {
                received: 0,
                size: Some(size),
                updated_ms: now_ms,
            }),
        );
        self.ledger.commit(batch, Durability::Buffered)
    }
}
