//! Blob transfer: downloading the blobs of staged records and uploading the blobs a
//! push needs, in ranges that resume.

use std::sync::Arc;

use sync_ledger::UploadCursor;
use sync_transport::Remote;
use sync_transport::client::BlobSource;
use sync_transport::proto::ErrorCode;
use sync_transport::proto::{BlobReadRequest, BlobStatRequest, BlobWriteRequest};
use sync_types::{Cid, LinkKey, Message};

use crate::error::{Error, Result};
use crate::replica::Replica;

use super::meter::Meter;

use super::{
    BLOB_CHUNK_BYTES, BLOB_FETCH_ATTEMPTS_MAX, BLOB_PROBE_BYTES, Connector, Engine, LinkCtx, lock,
};

/// A [`BlobSource`] over `len` bytes of a stored blob from `offset`, read one store chunk
/// at a time as the transport pulls it; each piece is counted on `meter` as it goes.
pub(super) fn blob_range_source(
    replica: Replica,
    cid: Cid,
    offset: u64,
    len: u64,
    meter: Option<Meter>,
) -> BlobSource {
    use futures_util::StreamExt;
    const PIECE_BYTES: u64 = 64 * 1024;
    let end = offset + len;
    futures_util::stream::unfold(offset, move |at| {
        let replica = replica.clone();
        let meter = meter.clone();
        async move {
            if at >= end {
                return None;
            }
            let n = (end - at).min(PIECE_BYTES - at % PIECE_BYTES);
            let piece = replica
                .ledger()
                .blobs()
                .read_range(&cid, at, n)
                .map(bytes::Bytes::from)
                .map_err(std::io::Error::other);
            if let (Some(meter), Ok(piece)) = (&meter, &piece) {
                meter.blob_bytes(piece.len() as u64);
            }
            Some((piece, at + n))
        }
    })
    .boxed()
}

pub(super) fn big_data(message: &Message) -> Option<(Cid, u64)> {
    match message {
        Message::Write(w) => w
            .data
            .filter(|d| !d.is_inline())
            .map(|d| (d.data_cid, d.size)),
        _ => None,
    }
}

impl<C: Connector> Engine<C> {
    /// Fetches the blobs the local store wants (records applied as staged) from `link`'s
    /// remote: in a detached task when [`SyncConfig::blob_fetch_detached`](crate::sync::SyncConfig::blob_fetch_detached) is set. The live
    /// driver calls it after applying a live event that references a blob it lacks.
    pub async fn fetch_wanted_blobs(&self, link: &LinkKey) -> Result<u64> {
        let ctx = self.link_ctx(link)?;
        let meter = ctx.meters.pull.clone();
        let (fetched, _) = self.fetch_staged_after(ctx).await?;
        meter.finish();
        Ok(fetched)
    }

    /// Fetches the blobs of staged records (the blob store's wanted list): awaited, or in
    /// a detached task when [`SyncConfig::blob_fetch_detached`](crate::sync::SyncConfig::blob_fetch_detached) is set. Returns the blobs
    /// and bytes fetched before returning.
    pub(super) async fn fetch_staged_after(&self, ctx: LinkCtx<C::Remote>) -> Result<(u64, u64)> {
        if !self.has_wanted_blobs()? {
            return Ok((0, 0));
        }
        if !self.inner.config.blob_fetch_detached {
            return self.fetch_staged(&ctx).await;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.fetch_staged(&ctx).await {
                tracing::debug!(link = %ctx.key, error = %e, "blob fetch failed; the records stay staged");
            }
        });
        Ok((0, 0))
    }

    pub(super) fn has_wanted_blobs(&self) -> Result<bool> {
        Ok(self
            .ledger()
            .blobs()
            .partial_uploads()?
            .iter()
            .any(|(_, s)| s.size.is_some()))
    }

    /// Downloads every wanted blob this link's remote can serve, one at a time. A blob
    /// the remote does not hold stays wanted (its records stay staged) for a later sync.
    /// Returns the blobs stored and the bytes downloaded; the bytes are counted on the
    /// context's pull meter, whose rest becomes what the wanted list lacks.
    pub(super) async fn fetch_staged(&self, ctx: &LinkCtx<C::Remote>) -> Result<(u64, u64)> {
        if !self.inner.config.blob_fetch {
            return Ok((0, 0));
        }
        let partial = self.ledger().blobs().partial_uploads()?;
        let mut wanted = Vec::with_capacity(partial.len());
        let mut rest = 0u64;
        for (cid, s) in partial {
            if let Some(size) = s.size {
                rest = rest.saturating_add(size.saturating_sub(s.received));
                wanted.push((cid, size));
            }
        }
        let meter = &ctx.meters.pull;
        if !wanted.is_empty() {
            meter.expect(0, rest);
        }
        let before = meter.bytes();
        let mut fetched = 0;
        for (cid, size) in wanted {
            if self.fetch_blob(ctx, cid, size).await? {
                fetched += 1;
            }
        }
        Ok((fetched, meter.bytes().saturating_sub(before)))
    }

    /// Waits for a blob transfer slot on `link` and then one of the engine's (always in
    /// that order, so two transfers never wait on each other crosswise). The slots are
    /// released when the returned permits drop.
    pub(super) async fn blob_permits(
        &self,
        link: &LinkKey,
    ) -> Vec<tokio::sync::OwnedSemaphorePermit> {
        let per_link = lock(&self.inner.link_blob_permits)
            .entry(link.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Semaphore::new(
                    self.inner.config.blob_transfers_per_link_max.max(1),
                ))
            })
            .clone();
        let mut permits = Vec::with_capacity(2);
        // The semaphores are never closed, so acquiring cannot fail.
        permits.extend(per_link.acquire_owned().await.ok());
        permits.extend(self.inner.blob_permits.clone().acquire_owned().await.ok());
        permits
    }

    /// Downloads a blob the local store lacks, resuming a partial download; see
    /// [`fetch_blob_once`](Self::fetch_blob_once). A download that fails verification
    /// stored nothing and starts over, at most [`BLOB_FETCH_ATTEMPTS_MAX`] times. Returns
    /// whether the blob is now stored; otherwise the record stays staged.
    pub(super) async fn fetch_blob(
        &self,
        ctx: &LinkCtx<C::Remote>,
        cid: Cid,
        size: u64,
    ) -> Result<bool> {
        if self.ledger().blobs().has(&cid)? {
            return Ok(false);
        }
        if !lock(&self.inner.blob_fetching).insert(cid) {
            return Ok(false); // another link is fetching it
        }
        let _permits = self.blob_permits(&ctx.key).await;
        let mut result = Ok(false);
        for attempt in 1..=BLOB_FETCH_ATTEMPTS_MAX {
            result = self.fetch_blob_once(ctx, cid, size).await;
            match &result {
                Err(Error::Ledger(e @ sync_ledger::Error::BlobMismatch { .. })) => {
                    tracing::warn!(link = %ctx.key, %cid, attempt, error = %e, "blob failed verification; fetching it again");
                    result = Ok(false);
                }
                _ => break,
            }
        }
        // A transfer that failed, verification included, leaves the blob wanted (a
        // mismatch puts the upload back to offset 0 in the commit that deletes its
        // chunks), so its record is fetched again by a later sync.
        lock(&self.inner.blob_fetching).remove(&cid);
        result
    }

    /// One download: resumes from the bytes already stored, asks for ranges of
    /// [`BLOB_CHUNK_BYTES`], streams each range into one upload (which hashes as it
    /// writes, so memory stays bounded by a few chunks whatever the size), commits each
    /// range, and stores the blob only when the hash of all its bytes matches.
    ///
    /// The storage work runs on tokio's blocking pool, about a MiB at a time (the
    /// upload paused in between, see [`sync_ledger::UploadCursor`]), so storage writes
    /// and the store's own write stalls never block the runtime's workers, which carry
    /// the small messages meanwhile. (No blocking task outlives a step, so a paused
    /// test clock still advances while a download waits on the network.)
    pub(super) async fn fetch_blob_once(
        &self,
        ctx: &LinkCtx<C::Remote>,
        cid: Cid,
        size: u64,
    ) -> Result<bool> {
        use futures_util::StreamExt;
        /// Bytes handed to one blocking step.
        const STEP_BYTES: usize = 1024 * 1024;
        /// What a step does after writing its bytes.
        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Then {
            Pause,
            /// The end of a range: commit what came so far (not synced: commits persist
            /// in order, so a power loss resumes from an earlier range).
            Checkpoint,
            /// The last byte: verify and store the blob (synced).
            Finish,
        }
        let blocking = |f: Box<dyn FnOnce() -> Result<Option<UploadCursor>> + Send>| async move {
            tokio::task::spawn_blocking(f).await.map_err(Error::from)?
        };
        self.ledger().blobs().want(&cid, size, self.now_ms())?;
        let (replica, now, durability) = (self.replica().clone(), self.now_ms(), self.durability());
        let step = move |cursor: UploadCursor, pieces: Vec<bytes::Bytes>, then: Then| {
            let replica = replica.clone();
            blocking(Box::new(move || {
                let mut upload = replica.ledger().blobs().resume(cursor, now)?;
                for piece in &pieces {
                    upload.write(piece)?;
                }
                match then {
                    Then::Pause => {}
                    Then::Checkpoint => {
                        upload.checkpoint(sync_ledger::Durability::Buffered)?;
                    }
                    Then::Finish => {
                        upload.finish(durability)?;
                        return Ok(None);
                    }
                }
                Ok(upload.pause())
            }))
        };
        let opener = self.replica().clone();
        let opened = blocking(Box::new(move || {
            match opener.ledger().blobs().upload(&cid, Some(size), now) {
                Ok(upload) => Ok(upload.pause()),
                Err(sync_ledger::Error::UploadInProgress(_)) => Ok(None),
                Err(e) => Err(e.into()),
            }
        }))
        .await?;
        let Some(mut cursor) = opened else {
            return Ok(false); // stored already, or someone else is writing it
        };
        let mut offset = cursor.offset();
        while offset < size {
            let len = (size - offset).min(BLOB_CHUNK_BYTES);
            let req = BlobReadRequest {
                tenant: ctx.key.tenant.clone(),
                scope: ctx.scope.clone(),
                cid,
                offset,
                len,
            };
            let mut download = match ctx.remote.blob_read(req).await {
                Ok(d) => d,
                Err(e) if e.code() == Some(ErrorCode::NotFound) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            if download.head.offset != offset
                || download.head.len == 0
                || download.head.total_size != size
            {
                return Err(Error::Protocol(format!(
                    "blob {cid} range at {offset} came back as {:?}",
                    download.head
                )));
            }
            let start = offset;
            let end = offset + download.head.len;
            let mut pieces = Vec::new();
            let mut held = 0usize;
            while let Some(piece) = download.bytes.next().await {
                let piece = piece?;
                if offset + piece.len() as u64 > end {
                    return Err(Error::Protocol(format!(
                        "blob {cid} range at {start} is longer than announced"
                    )));
                }
                offset += piece.len() as u64;
                held += piece.len();
                ctx.meters.pull.blob_bytes(piece.len() as u64);
                pieces.push(piece);
                if held >= STEP_BYTES && offset < end {
                    let Some(c) = step(cursor, std::mem::take(&mut pieces), Then::Pause).await?
                    else {
                        return Ok(false);
                    };
                    cursor = c;
                    held = 0;
                }
            }
            if offset != end {
                // Truncated: what arrived is committed, the next attempt resumes after
                // it.
                let _ = step(cursor, pieces, Then::Checkpoint).await;
                return Err(Error::Protocol(format!(
                    "blob {cid} range at {start} ended after {} of {} bytes",
                    offset - start,
                    download.head.len
                )));
            }
            let then = if end < size {
                Then::Checkpoint
            } else {
                Then::Finish
            };
            match step(cursor, pieces, then).await? {
                Some(c) => cursor = c,
                None => return Ok(then == Then::Finish),
            }
        }
        Ok(false)
    }

    /// Uploads a local blob the remote lacks, resuming where the remote stopped. Each
    /// range is read from the store one chunk at a time as the transport sends it (and
    /// counted on the context's push meter). Returns the bytes sent when it uploaded.
    pub(super) async fn push_blob(
        &self,
        ctx: &LinkCtx<C::Remote>,
        cid: Cid,
    ) -> Result<Option<u64>> {
        let blobs = self.ledger().blobs();
        let Some(size) = blobs.size(&cid)? else {
            return Ok(None);
        };
        let stat = ctx
            .remote
            .blob_stat(BlobStatRequest {
                tenant: ctx.key.tenant.clone(),
                scope: ctx.scope.clone(),
                cid,
            })
            .await?;
        if stat.complete {
            return Ok(None);
        }
        let _permits = self.blob_permits(&ctx.key).await;
        let mut offset = stat.received_bytes;
        let first = offset;
        // The first range is one piece: a node that refuses the blob (a size limit)
        // answers before much is sent, so its error arrives whole instead of as a
        // broken upload.
        let mut range = BLOB_PROBE_BYTES;
        while offset < size {
            let len = (size - offset).min(range);
            range = BLOB_CHUNK_BYTES;
            let req = BlobWriteRequest {
                tenant: ctx.key.tenant.clone(),
                cid,
                total_size: size,
                offset,
                len,
            };
            let source = blob_range_source(
                self.replica().clone(),
                cid,
                offset,
                len,
                Some(ctx.meters.push.clone()),
            );
            let stat = ctx.remote.blob_write(req, source).await?;
            if stat.complete {
                break;
            }
            if stat.received_bytes <= offset {
                return Err(Error::Protocol(format!(
                    "blob {cid} upload did not advance past {offset}"
                )));
            }
            offset = stat.received_bytes;
        }
        Ok(Some(size.saturating_sub(first)))
    }
}
