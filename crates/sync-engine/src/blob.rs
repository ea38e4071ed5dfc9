//! Large payloads: residency, streaming writes and reads, and blob garbage collection.
//!
//! A payload up to [`INLINE_DATA_BYTES_MAX`](sync_types::INLINE_DATA_BYTES_MAX) travels
//! inline with its message; a larger one is a *blob*, addressed by its blake3 hash and
//! kept in the ledger's blob store (`sync_ledger::Blobs`). A record whose winning version
//! references a blob that has not arrived is [`Residency::Staged`]; it becomes
//! [`Residency::Resident`] only once the whole blob is stored, which the blob store
//! allows only after the bytes hashed to the announced id.
//!
//! # Memory
//!
//! Nothing here holds a whole blob in memory: [`Replica::write_blob`] hashes a reader
//! while it streams it into the store (at most 1 MiB uncommitted at a time, each byte
//! written once),
//! [`Replica::blob_reader`] reads one chunk at a time, and [`Record::data`] carries a
//! blob only when it is at most [`RECORD_DATA_BYTES_MAX`] (the rule: a read never loads
//! a large payload implicitly).
//!
//! # Why `Residency` lives here
//!
//! Residency is not part of the replicated model: two replicas holding the same messages
//! may differ in which blobs have arrived. It is derived from local storage (the record's
//! winning version and the blob store), so it belongs to the engine, not to `sync-types`.
//!
//! # Garbage collection
//!
//! [`BlobGc`] releases blobs that no retained message of a live record references. Its
//! safety rule:
//!
//! 1. a blob is *referenced* when a retained message (initial write or winning version)
//!    of a record that is not deleted, in any tenant, names it;
//! 2. a stored blob is removed only when it was unreferenced in two collections at least
//!    [`BlobGc::grace_ms`] apart (a blob written by [`Replica::write_blob`] or uploaded by
//!    a peer is unreferenced until the message naming it arrives, which happens after the
//!    blob by design);
//! 3. a partial upload (including a blob a staged record waits for) is never removed while
//!    referenced; an unreferenced one is removed once it made no progress for
//!    `grace_ms`.
//!
//! A record that is deleted and later written again references its blob anew; if the blob
//! was collected meanwhile the record is staged and the blob is fetched again.

use std::collections::{HashMap, HashSet};
use std::io::Read;

use sync_ledger::{BlobReader, Durability, Ledger};
use sync_types::{Cid, DataRef, Message, RecordId, TenantId};

use crate::error::Result;
use crate::replica::{Receipt, Record, Replica, WriteRequest};

/// Largest blob that [`Record::data`] carries, in bytes; larger payloads are read with
/// [`Replica::blob_reader`] or [`Replica::read_blob`].
pub const RECORD_DATA_BYTES_MAX: u64 = 1024 * 1024;

/// Whether a record's payload is present on this replica (after starkeep's
/// `RecordResidency`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Residency {
    /// No record with this id here.
    Absent,
    /// The record is here but the blob its winning version references has not arrived.
    Staged,
    /// The record and its payload (inline, none, or a verified blob) are here.
    Resident,
    /// The record's winning version is a delete.
    Tombstoned,
}

impl Residency {
    /// The lowercase name (`absent`, `staged`, `resident`, `tombstoned`).
    pub fn as_str(self) -> &'static str {
        match self {
            Residency::Absent => "absent",
            Residency::Staged => "staged",
            Residency::Resident => "resident",
            Residency::Tombstoned => "tombstoned",
        }
    }
}

impl std::fmt::Display for Residency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The residency of a present record from its winning version.
pub(crate) fn residency_of(
    ledger: &Ledger,
    deleted: bool,
    data: Option<&DataRef>,
) -> Result<Residency> {
    Ok(match data {
        _ if deleted => Residency::Tombstoned,
        Some(r) if !r.is_inline() && !ledger.blobs().has(&r.data_cid)? => Residency::Staged,
        _ => Residency::Resident,
    })
}

/// The blob a message references, when its payload is not inline.
pub(crate) fn blob_ref(message: &Message) -> Option<DataRef> {
    match message {
        Message::Write(w) => w.data.filter(|r| !r.is_inline()),
        _ => None,
    }
}

impl Replica {
    /// Streams a payload into the blob store and returns its reference, for
    /// [`write_with_blob`](Self::write_with_blob). Memory stays bounded (about a MiB)
    /// whatever the size: the bytes are hashed while they are written, once. When the
    /// same content is being downloaded at that moment this fails with
    /// `UploadInProgress` (retryable: the download stores the same blob).
    pub fn write_blob(&self, reader: impl Read) -> Result<DataRef> {
        let (cid, size) =
            self.ledger()
                .blobs()
                .put_stream(reader, self.durability(), self.now_ms())?;
        Ok(DataRef {
            data_cid: cid,
            size,
        })
    }

    /// Writes a version whose payload is `data`, already in the blob store (from
    /// [`write_blob`](Self::write_blob)); `req.data` is ignored. A payload small enough
    /// to be inline is read back and sent inline, as the model requires.
    pub fn write_with_blob(
        &self,
        tenant: &TenantId,
        req: WriteRequest,
        data: DataRef,
    ) -> Result<Receipt> {
        let blobs = self.ledger().blobs();
        if !blobs.has(&data.data_cid)? {
            return Err(sync_ledger::Error::BlobNotFound(data.data_cid).into());
        }
        let staged = if data.is_inline() {
            (Some(data), Some(blobs.read(&data.data_cid)?))
        } else {
            (Some(data), None)
        };
        self.write_staged(tenant, req, Some(staged))
    }

    /// `len` bytes of a stored blob from `offset`.
    pub fn read_blob(&self, cid: &Cid, offset: u64, len: u64) -> Result<Vec<u8>> {
        Ok(self.ledger().blobs().read_range(cid, offset, len)?)
    }

    /// A reader over a stored blob from `offset`, holding one chunk in memory at a time.
    pub fn blob_reader(&self, cid: &Cid, offset: u64) -> Result<BlobReader<'_>> {
        Ok(self.ledger().blobs().reader(cid, offset)?)
    }

    /// The residency of a record (see [`Residency`]).
    pub fn residency(&self, tenant: &TenantId, record_id: &RecordId) -> Result<Residency> {
        Ok(self
            .get_with_tombstone(tenant, record_id)?
            .map_or(Residency::Absent, |r: Record| r.residency))
    }

    /// The blobs referenced by retained messages of live records, in every tenant; see
    /// the [module docs](self) for the rule.
    pub fn referenced_blobs(&self) -> Result<HashSet<Cid>> {
        let ledger = self.ledger();
        let mut out = HashSet::new();
        for tenant in ledger.tenants()? {
            let mut live: HashMap<RecordId, bool> = HashMap::new();
            for cid in ledger.cids(&tenant)? {
                let cid = cid?;
                let Some(stored) = ledger.get_message(&tenant, &cid)? else {
                    continue;
                };
                let (Some(r), Some(record)) =
                    (blob_ref(&stored.message), stored.message.record_id())
                else {
                    continue;
                };
                let alive = match live.get(&record) {
                    Some(&alive) => alive,
                    None => {
                        let alive = match ledger.record_head(&tenant, &record)? {
                            Some(head) => match ledger.get_message(&tenant, &head.winner.cid)? {
                                Some(w) => !matches!(w.message, Message::Delete(_)),
                                None => true,
                            },
                            None => true,
                        };
                        live.insert(record, alive);
                        alive
                    }
                };
                if alive {
                    out.insert(r.data_cid);
                }
            }
        }
        Ok(out)
    }
}

/// What one [`BlobGc::collect`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct GcReport {
    /// Stored blobs removed.
    pub blobs_removed: u64,
    /// Bytes of the removed blobs.
    pub bytes_removed: u64,
    /// Stale, unreferenced partial uploads removed.
    pub uploads_removed: u64,
    /// Unreferenced blobs seen for the first time, removed by a later collection.
    pub candidates: u64,
    /// Whether the collection was skipped because another process of a shared store
    /// held the collector's lease ([`BlobGc::leases`]).
    pub skipped: bool,
}

/// The blob garbage collector of a replica (or node); see the [module docs](self) for
/// its safety rule. Keep one per replica and call [`collect`](Self::collect)
/// periodically, or let [`spawn`](Self::spawn) do it; the candidates it remembers are in
/// memory, so a restart only restarts the grace period.
#[derive(Debug)]
pub struct BlobGc {
    replica: Replica,
    grace_ms: u64,
    /// Over a shared store: the lease a collection takes first.
    leases: Option<std::sync::Arc<dyn sync_ledger::Leases>>,
    /// Unreferenced blobs and when they were first seen so.
    candidates: HashMap<Cid, u64>,
}

/// Default grace period of [`BlobGc`], in ms: ten minutes, far longer than the gap
/// between a blob and the message that follows it.
pub const GC_GRACE_MS_DEFAULT: u64 = 10 * 60 * 1000;

/// The name of the lease a blob collection takes over a shared store.
pub const BLOB_GC_LEASE: &str = "blob_gc";

/// Default interval of a scheduled collector ([`BlobGc::spawn`]), in ms: one minute.
pub const BLOB_GC_INTERVAL_MS_DEFAULT: u64 = 60 * 1000;

impl BlobGc {
    /// A collector over `replica` with the default grace period.
    pub fn new(replica: Replica) -> Self {
        Self {
            replica,
            grace_ms: GC_GRACE_MS_DEFAULT,
            leases: None,
            candidates: HashMap::new(),
        }
    }

    /// Over a store that several processes share: each collection first takes the
    /// lease [`BLOB_GC_LEASE`] from `leases` and is skipped (reported
    /// [`GcReport::skipped`]) while another process holds it, so collections run on one
    /// process at a time. Default: none (the collector runs alone).
    #[must_use]
    pub fn leases(mut self, leases: std::sync::Arc<dyn sync_ledger::Leases>) -> Self {
        self.leases = Some(leases);
        self
    }

    /// Sets the grace period, in ms. Default [`GC_GRACE_MS_DEFAULT`].
    #[must_use]
    pub fn grace_ms(mut self, ms: u64) -> Self {
        self.grace_ms = ms;
        self
    }

    /// Runs [`collect`](Self::collect) every `interval_ms` (the first one after one
    /// interval) on tokio's blocking pool, until the returned task is dropped. Call it
    /// inside a tokio runtime. A failed collection is logged and the next one runs as
    /// usual: the safety rule holds whatever a collection did before it failed.
    pub fn spawn(mut self, interval_ms: u64) -> BlobGcTask {
        let (tx, rx) = tokio::sync::watch::channel(GcRound::default());
        let interval = std::time::Duration::from_millis(interval_ms.max(1));
        let task = tokio::spawn(async move {
            let mut round = GcRound::default();
            loop {
                tokio::time::sleep(interval).await;
                let done = tokio::task::spawn_blocking(move || {
                    let result = self.collect();
                    (self, result)
                })
                .await;
                let Ok((gc, result)) = done else {
                    tracing::error!("the blob collector panicked; it stops");
                    return;
                };
                self = gc;
                round.collections += 1;
                match result {
                    Ok(report) if report.skipped => round.skipped += 1,
                    Ok(report) => {
                        round.removed.blobs_removed += report.blobs_removed;
                        round.removed.bytes_removed += report.bytes_removed;
                        round.removed.uploads_removed += report.uploads_removed;
                        round.removed.candidates += report.candidates;
                        round.last = Some(report);
                    }
                    Err(e) => {
                        round.failures += 1;
                        tracing::warn!(error = %e, "blob collection failed");
                    }
                }
                if tx.send(round).is_err() {
                    return;
                }
            }
        });
        BlobGcTask { task, rounds: rx }
    }

    /// One collection at the replica's current time.
    pub fn collect(&mut self) -> Result<GcReport> {
        let _lease = match &self.leases {
            Some(leases) => match leases.try_take(BLOB_GC_LEASE)? {
                Some(guard) => Some(guard),
                None => {
                    return Ok(GcReport {
                        skipped: true,
                        ..GcReport::default()
                    });
                }
            },
            None => None,
        };
        let now = self.replica.now_ms();
        let referenced = self.replica.referenced_blobs()?;
        let blobs = self.replica.ledger().blobs();
        let mut report = GcReport::default();
        let mut next = HashMap::new();
        for (cid, size) in blobs.list()? {
            if referenced.contains(&cid) {
                continue;
            }
            match self.candidates.get(&cid) {
                Some(&since) if now.saturating_sub(since) >= self.grace_ms => {
                    // A blob being uploaded again right now is left for the next round.
                    match blobs.delete(&cid, Durability::Buffered) {
                        Ok(_) => {
                            report.blobs_removed += 1;
                            report.bytes_removed += size;
                        }
                        Err(sync_ledger::Error::UploadInProgress(_)) => {
                            next.insert(cid, since);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(&since) => {
                    next.insert(cid, since);
                }
                None => {
                    report.candidates += 1;
                    next.insert(cid, now);
                }
            }
        }
        self.candidates = next;
        for (cid, state) in blobs.partial_uploads()? {
            if referenced.contains(&cid) || now.saturating_sub(state.updated_ms) < self.grace_ms {
                continue;
            }
            // Over a shared store, an upload another node owns is left to it until its
            // owner row expires (the owner died).
            match blobs.abort_stale_upload(&cid, now) {
                Ok(()) => report.uploads_removed += 1,
                Err(sync_ledger::Error::UploadInProgress(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.replica.ledger().persist(self.replica.durability())?;
        Ok(report)
    }
}

/// What a scheduled collector has done so far; see [`BlobGcTask::rounds`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct GcRound {
    /// Collections run.
    pub collections: u64,
    /// Collections that failed (logged; the next one runs as usual).
    pub failures: u64,
    /// Collections skipped because another process held the lease.
    pub skipped: u64,
    /// The last successful collection's report.
    pub last: Option<GcReport>,
    /// The sums over every successful collection.
    pub removed: GcReport,
}

/// A collector running on a schedule ([`BlobGc::spawn`]); dropping it stops the
/// collector (a collection in progress finishes on the blocking pool).
#[derive(Debug)]
pub struct BlobGcTask {
    task: tokio::task::JoinHandle<()>,
    rounds: tokio::sync::watch::Receiver<GcRound>,
}

impl BlobGcTask {
    /// What the collector has done so far, updated after each collection (wait for the
    /// next one with [`changed`](tokio::sync::watch::Receiver::changed)).
    pub fn rounds(&self) -> tokio::sync::watch::Receiver<GcRound> {
        self.rounds.clone()
    }
}

impl Drop for BlobGcTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}
