//! Opening a store of an older layout: the steps that bring it to
//! [`LAYOUT_VERSION`](crate::layout::LAYOUT_VERSION).
//!
//! Layout 2 → 3: record rows gain their protocol (so a version naming another protocol
//! can be refused without reading the record's messages). Each row is rewritten with the
//! protocol of its winning version, read from the log. Rows are rewritten in commits of
//! [`UPGRADE_ENTRIES_PER_COMMIT`]; each commit also records the last row key it covers
//! (`meta/upgrade_records_after`), so a crash part way resumes after it instead of
//! decoding an upgraded row as an old one. The blob index is rebuilt next
//! (`blob_refs.rs`); its last commit removes that key ([`finish_v2`]) and writes the new
//! layout version.

use std::ops::Bound;

use serde::{Deserialize, Serialize};
use sync_types::merge::RecordHead;
use sync_types::{ContextId, ProtocolPath};

use crate::error::{Error, Result};
use crate::layout::{self, Key, RecordRow, StoredEntry, dec, enc};
use crate::store::{Batch, Durability, KeyRange, Order, Store};

/// Where a record-row upgrade that was cut short stopped (a `meta` key).
const RECORDS_AFTER_KEY: &[u8] = b"upgrade_records_after";

/// A record row as layout 2 stored it.
#[derive(Serialize, Deserialize)]
struct RecordRowV2 {
    head: RecordHead,
    path: Option<ProtocolPath>,
    context: Option<ContextId>,
}

/// Entries visited per commit while upgrading.
pub(crate) const UPGRADE_ENTRIES_PER_COMMIT: usize = 1024;

/// Visits every entry of `partition` in key order, [`UPGRADE_ENTRIES_PER_COMMIT`] per
/// commit; `visit` adds what an entry needs to its run's batch. With a `mark` (a `meta`
/// key), each run's batch also records its last key there, and the visit starts after
/// the key recorded, so a rerun resumes where a crash stopped it. The last run's batch
/// is returned uncommitted: the caller finishes with it.
pub(crate) fn in_runs(
    store: &dyn Store,
    partition: crate::store::Partition,
    mark: Option<&[u8]>,
    mut visit: impl FnMut(&[u8], &[u8], &mut Batch) -> Result<()>,
) -> Result<Batch> {
    let mut after = match mark {
        Some(mark) => store.get(layout::META, mark)?,
        None => None,
    };
    loop {
        let range = KeyRange {
            start: after.clone().map_or(Bound::Unbounded, Bound::Excluded),
            end: Bound::Unbounded,
        };
        let mut batch = Batch::new();
        let mut read = 0;
        for kv in store
            .scan(partition, range, Order::Ascending)?
            .take(UPGRADE_ENTRIES_PER_COMMIT)
        {
            let (key, value) = kv?;
            read += 1;
            visit(&key, &value, &mut batch)?;
            after = Some(key);
        }
        if let (Some(mark), Some(last)) = (mark, &after) {
            batch.put(layout::META, mark.to_vec(), last.clone());
        }
        if read < UPGRADE_ENTRIES_PER_COMMIT {
            return Ok(batch);
        }
        store.commit(batch, Durability::Buffered)?;
    }
}

/// Brings a layout-2 store's record rows to layout 3 (see the module docs). The mark
/// stays after the last run: until the version is written, another open must not read
/// an upgraded row as an old one.
pub(crate) fn records_from_v2(store: &dyn Store) -> Result<()> {
    let last = in_runs(
        store,
        layout::RECORDS,
        Some(RECORDS_AFTER_KEY),
        |key, value, batch| {
            let old: RecordRowV2 = dec(layout::RECORDS, key, value)?;
            // A record key is the tenant's number then the 32-byte record id.
            let tn = key.len().checked_sub(32).ok_or(Error::CorruptKey {
                partition: layout::RECORDS.name(),
                reason: "key is shorter than a record id",
            })?;
            let winner = old.head.winner.cid;
            let msg_key = Key::raw(&key[..tn]).cid(&winner).into_vec();
            let position: u64 = match store.get(layout::MSG, &msg_key)? {
                Some(bytes) => dec(layout::MSG, &msg_key, &bytes)?,
                None => {
                    return Err(Error::Inconsistent(format!(
                        "record row names {winner}, which is not stored"
                    )));
                }
            };
            let log_key = Key::raw(&key[..tn]).u64(position).into_vec();
            let entry: StoredEntry = match store.get(layout::LOG, &log_key)? {
                Some(bytes) => dec(layout::LOG, &log_key, &bytes)?,
                None => {
                    return Err(Error::Inconsistent(format!(
                        "message {winner} is indexed at position {position} but not logged"
                    )));
                }
            };
            let row = RecordRow {
                head: old.head,
                protocol: entry.message.protocol().clone(),
                path: old.path,
                context: old.context,
            };
            batch.put(layout::RECORDS, key.to_vec(), enc(&row));
            Ok(())
        },
    )?;
    store.commit(last, Durability::Buffered)
}

/// Adds to the commit that writes layout 3 the removal of what the upgrade kept while
/// it ran.
pub(crate) fn finish_v2(batch: &mut Batch) {
    batch.delete(layout::META, RECORDS_AFTER_KEY.to_vec());
}
