//! Who writes a partial upload when several processes share the store.
//!
//! In one process, the ledger's upload set keeps two writers off one upload. Processes
//! sharing a database ([`Store::is_shared`](crate::store::Store::is_shared)) cannot see
//! each other's sets, and two of them writing one upload (a sender that moved to another
//! node while the first still streamed its request) would interleave chunks that no
//! hasher saw in that order: the stored blob would not be the bytes its id names. So on
//! a shared store an upload is owned by a row (`blob_owners`, [`UploadOwner`]):
//!
//! - **Claim**: [`upload`](Blobs::upload) and [`resume`](Blobs::resume) take the row
//!   under the upload's [`WriteScope::Upload`] lock when it is absent, this process's,
//!   or expired (its `until_ms` passed), and refuse with
//!   [`Error::UploadInProgress`] while another process holds it.
//! - **Fence**: every commit of the upload runs under the same lock and only while the
//!   row is still this process's (expired or not: nobody took it), refreshing its
//!   expiry in the same commit; one that lost the row fails with
//!   [`Error::UploadInProgress`] and writes nothing. So at any moment one process
//!   commits into an upload, and one that took it over started from what the previous
//!   owner committed.
//! - **Release**: the commit that finishes (or, on a hash mismatch, resets) the upload
//!   deletes the row; an owner that died leaves it to expire after
//!   [`UPLOAD_OWNER_TTL_MS`].
//!
//! A paused upload's cursor is trusted on resume only when this process held the row
//! throughout; otherwise the upload re-reads what is stored.

use sync_types::Cid;

use super::Blobs;
use crate::error::{Error, Result};
use crate::layout::{self, UploadOwner, dec, enc};
use crate::ledger::{Ledger, lock};
use crate::store::{Batch, Durability, WriteScope};

/// How long an upload stays its owner's after the owner's last commit, in ms: the time
/// a sender whose node died waits before another node takes its upload over. An owner
/// that commits later than this still succeeds when nobody took the upload meanwhile.
pub const UPLOAD_OWNER_TTL_MS: u64 = 10_000;

/// The in-process claim of an upload: removed from the ledger's upload set when dropped,
/// unless [`keep`](Entered::keep) handed it to a [`BlobUpload`](super::BlobUpload).
pub(crate) struct Entered<'a> {
    ledger: &'a Ledger,
    cid: Cid,
    kept: bool,
}

impl Entered<'_> {
    /// The claim now belongs to an upload, whose drop releases it.
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        if !self.kept {
            lock(&self.ledger.uploads).remove(&self.cid);
        }
    }
}

impl<'a> Blobs<'a> {
    /// Claims upload `cid` for this process: in the ledger's upload set, and on a shared
    /// store its owner row. Returns the claim and whether this process held the row
    /// throughout since it last committed (always true on a store of its own).
    pub(crate) fn enter(&self, cid: &Cid, now_ms: u64) -> Result<(Entered<'a>, bool)> {
        if !lock(&self.ledger.uploads).insert(*cid) {
            return Err(Error::UploadInProgress(*cid));
        }
        let entered = Entered {
            ledger: self.ledger,
            cid: *cid,
            kept: false,
        };
        let continuous = if self.ledger.shared {
            self.ledger.claim_upload(cid, now_ms)?
        } else {
            true
        };
        Ok((entered, continuous))
    }
}

impl Ledger {
    /// This process's id as an upload owner, drawn on first use (only shared stores
    /// use it, so a store of its own draws nothing more from its id source).
    fn upload_owner(&self) -> sync_types::StreamId {
        *self.upload_owner.get_or_init(|| self.fresh_id())
    }

    /// Takes the owner row of upload `cid` unless another process holds it unexpired;
    /// returns whether the row was this process's already.
    fn claim_upload(&self, cid: &Cid, now_ms: u64) -> Result<bool> {
        let me = self.upload_owner();
        let mut txn = self.store.begin()?;
        txn.lock(WriteScope::Upload(*cid))?;
        let found = read_owner(&mut *txn, cid)?;
        let mine = match found {
            Some(o) if o.owner == me => true,
            Some(o) if o.until_ms > now_ms => return Err(Error::UploadInProgress(*cid)),
            _ => false,
        };
        let mut batch = Batch::new();
        put_owner(&mut batch, cid, me, now_ms);
        txn.commit(batch, Durability::Buffered)?;
        Ok(mine)
    }

    /// Commits `batch` of upload `cid` (whose chunks the content backend flushes first):
    /// on a shared store under the upload's lock, only
    /// while this process owns it (else [`Error::UploadInProgress`], nothing written),
    /// with the row refreshed, or deleted when `release`.
    pub(crate) fn commit_upload(
        &self,
        cid: &Cid,
        mut batch: Batch,
        durability: Durability,
        now_ms: u64,
        release: bool,
    ) -> Result<()> {
        // Chunks written outside the store land before the state that names them.
        self.content.flush(cid)?;
        if !self.shared {
            return self.commit(batch, durability);
        }
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let me = self.upload_owner();
        let mut txn = self.store.begin()?;
        txn.lock(WriteScope::Upload(*cid))?;
        if read_owner(&mut *txn, cid)?.is_none_or(|o| o.owner != me) {
            return Err(Error::UploadInProgress(*cid));
        }
        if release {
            batch.delete(layout::BLOB_OWNERS, cid.as_bytes().to_vec());
        } else {
            put_owner(&mut batch, cid, me, now_ms);
        }
        txn.commit(batch, durability)
    }

    /// Commits `batch`, which removes upload `cid`, unless another process owns the
    /// upload and its row has not expired at `now_ms` (then [`Error::UploadInProgress`]):
    /// the owner row goes in the same commit. On a store of its own, a plain commit.
    pub(crate) fn commit_upload_removal(
        &self,
        cid: &Cid,
        mut batch: Batch,
        durability: Durability,
        now_ms: u64,
    ) -> Result<()> {
        if !self.shared {
            return self.commit(batch, durability);
        }
        if self.is_poisoned() {
            return Err(Error::Poisoned);
        }
        let me = self.upload_owner();
        let mut txn = self.store.begin()?;
        txn.lock(WriteScope::Upload(*cid))?;
        if read_owner(&mut *txn, cid)?.is_some_and(|o| o.owner != me && o.until_ms > now_ms) {
            return Err(Error::UploadInProgress(*cid));
        }
        batch.delete(layout::BLOB_OWNERS, cid.as_bytes().to_vec());
        txn.commit(batch, durability)
    }
}

fn read_owner(txn: &mut dyn crate::store::WriteTxn, cid: &Cid) -> Result<Option<UploadOwner>> {
    let key = cid.as_bytes();
    match txn.get(layout::BLOB_OWNERS, key)? {
        Some(v) => Ok(Some(dec(layout::BLOB_OWNERS, key, &v)?)),
        None => Ok(None),
    }
}

fn put_owner(batch: &mut Batch, cid: &Cid, owner: sync_types::StreamId, now_ms: u64) {
    batch.put(
        layout::BLOB_OWNERS,
        cid.as_bytes().to_vec(),
        enc(&UploadOwner {
            owner,
            until_ms: now_ms.saturating_add(UPLOAD_OWNER_TTL_MS),
        }),
    );
}
