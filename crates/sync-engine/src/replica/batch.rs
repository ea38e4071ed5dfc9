//! Many writes in one commit, and writes that say which version they expect.
//!
//! A [`WriteBatch`] collects writes and deletes; [`Replica::write_batch`] commits them
//! all in one atomic, durable ledger commit (one fsync for the whole batch, where single
//! writes pay one each) and answers one [`Receipt`] per item, in order. A batch is
//! all-or-nothing: every item is composed and checked against the store (protocol rules,
//! hard dependencies, expected versions) under the writer lock before anything is
//! committed, so an item that cannot be written fails the whole batch with
//! [`Error::BatchItem`] naming it, and nothing of the batch is stored. Because the
//! checks run under the same lock as the commit, what they saw is what the commit
//! finds.
//!
//! An item may carry an [`Expected`] version (compare-and-set): the record must still be
//! absent, or its winning version must still be the one the caller read. When the record
//! moved on the item fails with [`Error::VersionMismatch`]. [`Replica::write_if`] is a
//! batch of one.
//!
//! Each record appears at most once in a batch: a second version of the same record
//! would depend on the first, which is not committed yet, so the batch could not be one
//! commit. Children whose parent is created in the same batch are refused for the same
//! reason; write the parent first.

use std::collections::HashSet;

use sync_types::{
    ApplyOutcome, Cid, ContextId, DataRef, Delete, Message, PrincipalId, RecordId, TenantId, Write,
};

use super::checks::{Check, Definitions, check_alone};
use super::{
    MessageWithData, Origin, Receipt, RecordKey, Replica, WriteOutcome, WriteRequest, lock,
};
use crate::error::{Error, Result};

/// Most items in one [`WriteBatch`]: the ledger's largest atomic commit.
pub const WRITE_BATCH_LEN_MAX: usize = sync_ledger::APPLY_BATCH_MESSAGES_MAX;

/// The version a write expects the record to be at (compare-and-set).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expected {
    /// The record has no live version: never written, or deleted.
    Absent,
    /// The record's winning version is this one (a write or a delete).
    Version(Cid),
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Absent => f.write_str("no live version"),
            Expected::Version(cid) => write!(f, "version {cid}"),
        }
    }
}

/// One item of a [`WriteBatch`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum BatchOp {
    /// A version of a record.
    Write(WriteRequest),
    /// A delete of a record.
    Delete {
        /// The record.
        record_id: RecordId,
        /// Who deletes.
        author: PrincipalId,
    },
}

/// Writes and deletes committed together by [`Replica::write_batch`].
#[derive(Clone, Default, PartialEq, Eq, Debug)]
#[must_use]
pub struct WriteBatch {
    items: Vec<(BatchOp, Option<Expected>)>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a write.
    pub fn write(&mut self, request: WriteRequest) -> &mut Self {
        self.items.push((BatchOp::Write(request), None));
        self
    }

    /// Adds a write that only happens if the record is at `expected`.
    pub fn write_if(&mut self, request: WriteRequest, expected: Expected) -> &mut Self {
        self.items.push((BatchOp::Write(request), Some(expected)));
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, record_id: RecordId, author: PrincipalId) -> &mut Self {
        self.items
            .push((BatchOp::Delete { record_id, author }, None));
        self
    }

    /// Adds a delete that only happens if the record is at `expected`.
    pub fn delete_if(
        &mut self,
        record_id: RecordId,
        author: PrincipalId,
        expected: Expected,
    ) -> &mut Self {
        self.items
            .push((BatchOp::Delete { record_id, author }, Some(expected)));
        self
    }

    /// Adds an item.
    pub fn push(&mut self, op: BatchOp, expected: Option<Expected>) -> &mut Self {
        self.items.push((op, expected));
        self
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch has no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl Replica {
    /// Commits every item of `batch` in one atomic, durable commit and answers one
    /// receipt per item, in order; all or nothing (see the module docs). An empty batch
    /// commits nothing.
    pub fn write_batch(&self, tenant: &TenantId, batch: WriteBatch) -> Result<Vec<Receipt>> {
        if batch.items.len() > WRITE_BATCH_LEN_MAX {
            return Err(Error::Invalid(format!(
                "a batch of {} items exceeds the limit of {WRITE_BATCH_LEN_MAX}",
                batch.items.len()
            )));
        }
        if batch.items.is_empty() {
            return Ok(Vec::new());
        }
        let _writer = lock(&self.inner.writer);
        let at = |index: usize| {
            move |e: Error| Error::BatchItem {
                index,
                source: Box::new(e),
            }
        };
        let mut items: Vec<MessageWithData> = Vec::with_capacity(batch.items.len());
        let mut seen = HashSet::with_capacity(batch.items.len());
        let mut definitions = Definitions::default();
        for (index, (op, expected)) in batch.items.into_iter().enumerate() {
            let target = match &op {
                BatchOp::Write(req) => match &req.key {
                    RecordKey::New => None,
                    RecordKey::Natural(key) => {
                        Some(RecordId::from_natural_key(tenant, &req.protocol, key))
                    }
                    RecordKey::Id(id) => Some(*id),
                },
                BatchOp::Delete { record_id, .. } => Some(*record_id),
            };
            if let Some(expected) = expected {
                self.check_expected(tenant, target, expected)
                    .map_err(at(index))?;
            }
            if let BatchOp::Write(req) = &op
                && let Some(parent) = req.parent
                && seen.contains(&parent)
            {
                return Err(at(index)(Error::Invalid(format!(
                    "the parent {parent} is written in the same batch; write it first"
                ))));
            }
            let (message, data) = match op {
                BatchOp::Write(req) => self.compose_write(tenant, req, None),
                BatchOp::Delete { record_id, author } => self
                    .compose_delete(tenant, record_id, &author)
                    .map(|m| (m, None)),
            }
            .map_err(at(index))?;
            if let Some(record_id) = message.record_id()
                && !seen.insert(record_id)
            {
                return Err(at(index)(Error::Invalid(format!(
                    "record {record_id} appears twice in the batch"
                ))));
            }
            if let Err(reason) = check_alone(tenant, &message, data.as_deref()) {
                return Err(at(index)(Error::Invalid(reason)));
            }
            match self
                .check_against_store(tenant, &message, &mut definitions)
                .map_err(at(index))?
            {
                Check::Ready => {}
                Check::Missing(deps) => return Err(at(index)(Error::Missing(deps))),
                Check::Invalid(reason) => return Err(at(index)(Error::Invalid(reason))),
            }
            items.push((message, data));
        }
        let cids: Vec<Cid> = items.iter().map(|(m, _)| m.cid()).collect();
        let record_ids: Vec<Option<RecordId>> = items.iter().map(|(m, _)| m.record_id()).collect();
        // Every item is ready against what is committed and none depends on another,
        // so the pipeline commits them all in its first pass: one ledger commit.
        let (outcomes, tokens) = self.apply_locked(tenant, items, &Origin::Local)?;
        let mut receipts = Vec::with_capacity(outcomes.len());
        for ((outcome, cid), record_id) in outcomes.into_iter().zip(cids).zip(record_ids) {
            let record_id = record_id.unwrap_or(RecordId::from_bytes(*cid.as_bytes()));
            let outcome = match outcome {
                ApplyOutcome::Applied => WriteOutcome::Won,
                ApplyOutcome::Duplicate | ApplyOutcome::Superseded => {
                    match self.inner.ledger.record_head(tenant, &record_id)? {
                        Some(head) if head.winner.cid != cid => WriteOutcome::Superseded {
                            winner: head.winner.cid,
                        },
                        _ => WriteOutcome::Won,
                    }
                }
                // The checks above passed under the writer lock, so the store refusing
                // an item now is a bug in those checks, not the caller's input.
                other => {
                    return Err(Error::Invalid(format!(
                        "the ledger refused an item the batch checks passed: {other}"
                    )));
                }
            };
            receipts.push(Receipt {
                record_id,
                cid,
                token: tokens.get(&cid).copied(),
                outcome,
            });
        }
        Ok(receipts)
    }

    /// Writes `req` only if the record is at `expected`; otherwise fails with
    /// [`Error::VersionMismatch`] and writes nothing.
    pub fn write_if(
        &self,
        tenant: &TenantId,
        req: WriteRequest,
        expected: Expected,
    ) -> Result<Receipt> {
        let mut batch = WriteBatch::new();
        batch.write_if(req, expected);
        self.write_batch(tenant, batch)
            .map_err(Error::unbatched)?
            .pop()
            .ok_or_else(|| Error::Invalid("no receipt".into()))
    }

    /// Deletes a record only if it is at `expected`; otherwise fails with
    /// [`Error::VersionMismatch`] and deletes nothing.
    pub fn delete_if(
        &self,
        tenant: &TenantId,
        record_id: RecordId,
        author: &PrincipalId,
        expected: Expected,
    ) -> Result<Receipt> {
        let mut batch = WriteBatch::new();
        batch.delete_if(record_id, author.clone(), expected);
        self.write_batch(tenant, batch)
            .map_err(Error::unbatched)?
            .pop()
            .ok_or_else(|| Error::Invalid("no receipt".into()))
    }

    fn check_expected(
        &self,
        tenant: &TenantId,
        target: Option<RecordId>,
        expected: Expected,
    ) -> Result<()> {
        let head = match target {
            Some(record_id) => self.inner.ledger.record_head(tenant, &record_id)?,
            None => None,
        };
        let found = head.filter(|h| h.initial.is_some()).map(|h| h.winner);
        let ok = match (expected, &found) {
            (Expected::Absent, None) => true,
            (Expected::Absent, Some(v)) => v.kind == sync_types::merge::VersionKind::Delete,
            (Expected::Version(cid), Some(v)) => v.cid == cid,
            (Expected::Version(_), None) => false,
        };
        if ok {
            return Ok(());
        }
        Err(Error::VersionMismatch {
            record_id: target,
            expected,
            found: found.map(|v| v.cid),
        })
    }

    /// The message of a local write, stamped after the version it replaces. The caller
    /// holds the writer lock.
    pub(super) fn compose_write(
        &self,
        tenant: &TenantId,
        req: WriteRequest,
        staged: Option<(Option<DataRef>, Option<Vec<u8>>)>,
    ) -> Result<MessageWithData> {
        let (record_id, fresh) = match &req.key {
            RecordKey::New => {
                let timestamp = self.tick();
                let id = RecordId::for_new_record(
                    tenant,
                    &req.protocol,
                    &req.path,
                    &req.author,
                    &timestamp,
                );
                (id, Some(timestamp))
            }
            RecordKey::Natural(key) => {
                (RecordId::from_natural_key(tenant, &req.protocol, key), None)
            }
            RecordKey::Id(id) => (*id, None),
        };
        let info = self.inner.ledger.record_info(tenant, &record_id)?;
        // A version that replaces the record's winner orders after it.
        let timestamp = match fresh {
            Some(timestamp) => timestamp,
            None => self.stamp_after(info.as_ref().map(|i| i.head.winner.timestamp)),
        };
        let (prev, context_id) = match &info {
            Some(info) if info.head.initial.is_some() => {
                let context = info
                    .context
                    .clone()
                    .ok_or(Error::RecordNotFound(record_id))?;
                (Some(info.head.winner.cid), context)
            }
            _ if matches!(req.key, RecordKey::Id(_)) => {
                return Err(Error::RecordNotFound(record_id));
            }
            _ => {
                let context = match req.parent {
                    None => ContextId::root(record_id),
                    Some(parent) => {
                        let parent_info = self
                            .inner
                            .ledger
                            .record_info(tenant, &parent)?
                            .ok_or(Error::RecordNotFound(parent))?;
                        parent_info
                            .context
                            .ok_or(Error::RecordNotFound(parent))?
                            .child(record_id)?
                    }
                };
                (None, context)
            }
        };
        let parent_id = context_id
            .chain()
            .len()
            .checked_sub(2)
            .map(|i| context_id.chain()[i]);
        let (data_ref, inline) = match staged {
            Some(staged) => staged,
            None => self.stage_data(req.data)?,
        };
        let message = Message::Write(Write {
            tenant: tenant.clone(),
            record_id,
            parent_id,
            protocol: req.protocol,
            path: req.path,
            context_id,
            prev,
            timestamp,
            author: req.author,
            data: data_ref,
        });
        Ok((message, inline))
    }

    /// The message of a local delete, stamped after the version it replaces. The caller
    /// holds the writer lock.
    pub(super) fn compose_delete(
        &self,
        tenant: &TenantId,
        record_id: RecordId,
        author: &PrincipalId,
    ) -> Result<Message> {
        let info = self
            .inner
            .ledger
            .record_info(tenant, &record_id)?
            .ok_or(Error::RecordNotFound(record_id))?;
        let winner = self
            .inner
            .ledger
            .get_message(tenant, &info.head.winner.cid)?
            .ok_or(Error::RecordNotFound(record_id))?;
        let message = Message::Delete(Delete {
            tenant: tenant.clone(),
            record_id,
            protocol: winner.message.protocol().clone(),
            prev: Some(info.head.winner.cid),
            timestamp: self.stamp_after(Some(info.head.winner.timestamp)),
            author: author.clone(),
        });
        Ok(message)
    }
}
