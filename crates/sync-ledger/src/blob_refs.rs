//! Who references a blob: the `by_blob` index, and the upgrade that builds it for a
//! store written before it existed.
//!
//! Blobs are stored once per ledger, by content, whichever tenant uploaded them; what
//! ties a blob to a tenant is a stored write of that tenant naming it. The index is
//! written by [`Ledger::apply`] in the same batch as the write (it is one of
//! `layout::index_entries`), and removed with it when the version is pruned, so it
//! names exactly the retained writes that reference each blob.

use sync_types::{Cid, Message, TenantId};

use crate::error::{Error, Result};
use crate::layout::{self, Key, StoredEntry, dec, enc};
use crate::ledger::Ledger;
use crate::store::{Durability, Order, Store};

impl Ledger {
    /// The cids of the tenant's stored writes that reference blob `blob`, in log order,
    /// at most `max` of them.
    ///
    /// Per tenant on purpose, like [`get_message`](Ledger::get_message): a blob is
    /// shared storage, but whether someone may read it is a question about one tenant's
    /// messages.
    pub fn blob_referrers(&self, tenant: &TenantId, blob: &Cid, max: usize) -> Result<Vec<Cid>> {
        let Some(tn) = self.tenant_no(tenant)? else {
            return Ok(Vec::new());
        };
        let prefix = Key::tn(tn).cid(blob).into_vec();
        self.store
            .scan_prefix(layout::BY_BLOB, &prefix, Order::Ascending)?
            .take(max)
            .map(|kv| {
                let (k, v) = kv?;
                dec(layout::BY_BLOB, &k, &v)
            })
            .collect()
    }
}

/// Builds `by_blob` from the log of a layout-2 store, then marks the store layout 3 in
/// the last commit. Each commit covers a run of log entries and is idempotent, so a
/// crash part way leaves a layout-2 store that the next open upgrades again.
pub(crate) fn upgrade_from_v2(store: &dyn Store) -> Result<()> {
    let mut last = crate::upgrade::in_runs(store, layout::LOG, None, |k, v, batch| {
        let entry: StoredEntry = layout::dec_entry(k, v)?;
        // A log key is the tenant's number then an 8-byte position.
        let at = k.len().checked_sub(8).ok_or(Error::CorruptKey {
            partition: layout::LOG.name(),
            reason: "key is shorter than its position",
        })?;
        if let Message::Write(w) = &entry.message
            && let Some(data) = w.data.filter(|d| !d.is_inline())
        {
            let key = Key::raw(&k[..at])
                .cid(&data.data_cid)
                .bytes(&k[at..])
                .into_vec();
            batch.put(layout::BY_BLOB, key, enc(&entry.cid));
        }
        Ok(())
    })?;
    crate::upgrade::finish_v2(&mut last);
    last.put(layout::META, b"layout".to_vec(), enc(&3u32));
    store.commit(last, Durability::SyncData)
}
