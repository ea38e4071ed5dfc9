//! Record rows read once per apply: the caller's checks read them ahead
//! ([`Ledger::read_records`]), answer "is this version stored" from them without a
//! lookup by cid, and hand them to the ledger's merge
//! ([`Ledger::apply_hashed_with_rows`]), which uses them instead of reading the same
//! rows again when no commit has happened since.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use sync_types::{Cid, Message, RecordId, TenantId};

use crate::error::Result;
use crate::layout::{self, RecordRow, dec};
use crate::ledger::{Ledger, RecordInfo};

/// The rows of some records of one tenant, as committed when they were read
/// ([`Ledger::read_records`]).
///
/// A record's stored versions are exactly its row's retained ones (the initial write and
/// the winner, see [`crate::layout`]), so the rows also say whether a write or delete of
/// these records is stored ([`holds`](Self::holds)) without a lookup by cid.
#[derive(Clone, Debug)]
pub struct RecordRows {
    /// The ledger that read them ([`Ledger`]'s instance number).
    instance: u64,
    tenant: TenantId,
    /// The ledger's commit count before the rows were read: they are the current rows
    /// as long as the count has not moved.
    commits: u64,
    rows: HashMap<RecordId, Option<RecordRow>>,
}

impl RecordRows {
    /// The row of `record`: `None` when it was not read, `Some(None)` when the record
    /// was not stored.
    pub fn info(&self, record: &RecordId) -> Option<Option<RecordInfo>> {
        self.rows.get(record).map(|row| {
            row.as_ref().map(|r| RecordInfo {
                head: r.head,
                protocol: r.protocol.clone(),
                path: r.path.clone(),
                context: r.context.clone(),
            })
        })
    }

    /// Whether the message `cid` is stored, when its record's row was read: a write or
    /// delete is stored iff its record retains it. `None` for a `Configure` (it has no
    /// record) and for a record that was not read.
    pub fn holds(&self, cid: &Cid, message: &Message) -> Option<bool> {
        let row = self.rows.get(&message.record_id()?)?;
        Some(row.as_ref().is_some_and(|r| {
            r.head.winner.cid == *cid || r.head.initial.is_some_and(|v| v.cid == *cid)
        }))
    }

    /// The tenant the rows belong to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Takes the rows for the merge, when they are still current: read by this ledger,
    /// for this tenant, and no commit since. Only a store with one writer process can say
    /// (a shared store's other processes commit without this ledger's count moving).
    pub(crate) fn take_current(
        self,
        ledger: &Ledger,
        tenant: &TenantId,
    ) -> Option<HashMap<RecordId, Option<RecordRow>>> {
        (!ledger.shared
            && self.instance == ledger.instance
            && self.tenant == *tenant
            && self.commits == ledger.commits.load(Ordering::Acquire))
        .then_some(self.rows)
    }
}

impl Ledger {
    /// The rows of `records` (duplicates are read once) in one batched read, for the
    /// checks before an apply and then for the apply itself
    /// ([`apply_hashed_with_rows`](Self::apply_hashed_with_rows)).
    pub fn read_records(&self, tenant: &TenantId, records: &[RecordId]) -> Result<RecordRows> {
        // Counted before reading: a commit that lands during the read moves the count,
        // and the merge then reads the rows again rather than trust these.
        let commits = self.commits.load(Ordering::Acquire);
        let mut ids = records.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut rows = HashMap::with_capacity(ids.len());
        match self.tenant_no(tenant)? {
            None => rows.extend(ids.into_iter().map(|id| (id, None))),
            Some(tn) => {
                let keys: Vec<Vec<u8>> = ids.iter().map(|r| layout::record_key(tn, r)).collect();
                let values = self.store.get_many(layout::RECORDS, &keys)?;
                for ((id, key), value) in ids.into_iter().zip(&keys).zip(values) {
                    let row: Option<RecordRow> = match value {
                        Some(bytes) => Some(dec(layout::RECORDS, key, &bytes)?),
                        None => None,
                    };
                    rows.insert(id, row);
                }
            }
        }
        Ok(RecordRows {
            instance: self.instance,
            tenant: tenant.clone(),
            commits,
            rows,
        })
    }
}
