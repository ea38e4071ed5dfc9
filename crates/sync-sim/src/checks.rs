//! The checks of a run: residency (no record resident before its verified blob),
//! convergence of every replica with the node over its scope, no lost acknowledged
//! write, and the outcome the report carries.

use sync_engine::{Replica, Residency};
use sync_types::{DataRef, RecordId, Scope};

use crate::SimFailure;
use crate::report::{Fnv64, fail};
use crate::workload::{record_of, scope_of, targets_in, tenant};
use crate::world::{NODE, World};

impl World {
    /// Checks that every record a holder (a replica's index, or [`NODE`]) reports
    /// resident has its blob stored, of the announced size and hashing to its id: a
    /// record is never resident before its verified blob. Returns the staged records.
    pub(crate) fn check_residency(&mut self, holder: usize) -> Result<Vec<RecordId>, SimFailure> {
        let seed = self.config.seed;
        let (replica, scope) = match holder {
            NODE => (self.node.clone(), Scope::Full),
            i => (
                self.devices[i].engine.replica().clone(),
                scope_of(i, self.config.mixed_scopes),
            ),
        };
        let who = match holder {
            NODE => "the node".to_owned(),
            i => format!("replica {i}"),
        };
        let mut staged = Vec::new();
        for target in targets_in(&scope) {
            for k in 0..self.config.keys {
                let record = record_of(target, u64::from(k));
                let Some(rec) = replica
                    .get_with_tombstone(&tenant(), &record)
                    .map_err(|e| fail(seed, e.to_string()))?
                else {
                    continue;
                };
                let blob = rec.data_ref.filter(|d| !d.is_inline());
                match (rec.residency, blob) {
                    (Residency::Staged, _) => staged.push(record),
                    (Residency::Resident, Some(data))
                        if !self.verified.contains(&(holder, data.data_cid)) =>
                    {
                        let bytes = replica
                            .read_blob(&data.data_cid, 0, data.size)
                            .map_err(|e| {
                                fail(
                                    seed,
                                    format!(
                                        "{who} reports record {record} resident, but its blob {} cannot be read: {e}",
                                        data.data_cid
                                    ),
                                )
                            })?;
                        if DataRef::of(&bytes) != data {
                            return Err(fail(
                                seed,
                                format!(
                                    "{who} reports record {record} resident, but its blob {} does not verify",
                                    data.data_cid
                                ),
                            ));
                        }
                        self.verified.insert((holder, data.data_cid));
                    }
                    _ => {}
                }
            }
        }
        Ok(staged)
    }

    /// The staged records of each holder, for a failure message.
    pub(crate) fn staged_summary(&mut self) -> Result<String, SimFailure> {
        let mut out = String::new();
        for holder in (0..self.devices.len()).chain([NODE]) {
            let staged = self.check_residency(holder)?;
            if !staged.is_empty() {
                let who = match holder {
                    NODE => "the node".to_owned(),
                    i => format!("replica {i}"),
                };
                out.push_str(&format!("; {who} has staged records {staged:?}"));
                let replica = match holder {
                    NODE => self.node.clone(),
                    i => self.devices[i].engine.replica().clone(),
                };
                for r in &staged {
                    let rec = replica.get_with_tombstone(&tenant(), r).ok().flatten();
                    if let Some(d) = rec.and_then(|r| r.data_ref) {
                        out.push_str(&format!(
                            " (blob {}: wanted at {:?}, on the node: {:?})",
                            d.data_cid,
                            replica.ledger().blobs().upload_offset(&d.data_cid),
                            self.node.ledger().blobs().has(&d.data_cid)
                        ));
                    }
                }
            }
        }
        Ok(out)
    }

    /// [`check_residency`](Self::check_residency) on every replica and the node; returns
    /// whether any record is staged.
    pub(crate) fn check_all_residency(&mut self) -> Result<bool, SimFailure> {
        let mut any_staged = false;
        for holder in (0..self.devices.len()).chain([NODE]) {
            any_staged |= !self.check_residency(holder)?.is_empty();
        }
        Ok(any_staged)
    }

    /// Whether every replica holds exactly what the node holds in its scope, with every
    /// blob arrived.
    pub(crate) fn converged(&mut self) -> Result<bool, SimFailure> {
        if self.check_all_residency()? {
            return Ok(false);
        }
        let seed = self.config.seed;
        let err = |e: sync_engine::Error| fail(seed, e.to_string());
        for (i, d) in self.devices.iter().enumerate() {
            let scope = scope_of(i, self.config.mixed_scopes);
            let replica = d.engine.replica();
            let mine = replica.root(&tenant(), &scope).map_err(err)?;
            if mine != self.node.root(&tenant(), &scope).map_err(err)?
                || mine != replica.root(&tenant(), &Scope::Full).map_err(err)?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub(crate) fn check(&mut self) -> Result<(), SimFailure> {
        let seed = self.config.seed;
        let records = |r: &Replica,
                       scope: &Scope|
         -> Result<Vec<(RecordId, sync_types::Cid, bool)>, SimFailure> {
            let mut out = Vec::new();
            for target in targets_in(scope) {
                for k in 0..self.config.keys {
                    let record = record_of(target, u64::from(k));
                    if let Some(rec) = r
                        .get_with_tombstone(&tenant(), &record)
                        .map_err(|e| fail(seed, e.to_string()))?
                    {
                        out.push((record, rec.cid, rec.deleted));
                    }
                }
            }
            Ok(out)
        };
        for (i, d) in self.devices.iter().enumerate() {
            let scope = scope_of(i, self.config.mixed_scopes);
            let expected = records(&self.node, &scope)?;
            let got = records(d.engine.replica(), &scope)?;
            if got != expected {
                return Err(fail(
                    seed,
                    format!("replica {i} records differ from the node's: {got:?} vs {expected:?}"),
                ));
            }
        }
        for holder in (0..self.devices.len()).chain([NODE]) {
            let staged = self.check_residency(holder)?;
            if !staged.is_empty() {
                return Err(fail(
                    seed,
                    format!(
                        "{} still has staged records (blobs that never arrived): {staged:?}",
                        if holder == NODE {
                            "the node".to_owned()
                        } else {
                            format!("replica {holder}")
                        }
                    ),
                ));
            }
        }
        if !self.converged()? {
            return Err(fail(
                seed,
                "a replica's tree differs from the node's over its scope, or it holds messages outside its scope",
            ));
        }
        let ledger = self.node.ledger();
        for a in &self.acked {
            let head = ledger
                .record_head(&tenant(), &a.record)
                .map_err(|e| fail(seed, e.to_string()))?
                .ok_or_else(|| {
                    fail(
                        seed,
                        format!(
                            "acknowledged {} of record {} is lost: no record",
                            if a.delete { "delete" } else { "write" },
                            a.record
                        ),
                    )
                })?;
            if head.winner.order_key() < a.order {
                return Err(fail(
                    seed,
                    format!(
                        "acknowledged {} {} of record {} lost: the winner {} orders before it",
                        if a.delete { "delete" } else { "write" },
                        a.order.1,
                        a.record,
                        head.winner.cid
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Fills in the report's outcome of the run: the node's root, its records and
    /// tombstones, and the digest of the acknowledged writes.
    pub(crate) fn outcome(&mut self) -> Result<(), SimFailure> {
        let seed = self.config.seed;
        self.report.root = self
            .node
            .root(&tenant(), &Scope::Full)
            .map_err(|e| fail(seed, e.to_string()))?;
        for target in targets_in(&Scope::Full) {
            for k in 0..self.config.keys {
                let record = record_of(target, u64::from(k));
                match self
                    .node
                    .get_with_tombstone(&tenant(), &record)
                    .map_err(|e| fail(seed, e.to_string()))?
                {
                    Some(rec) if rec.deleted => self.report.tombstones += 1,
                    Some(_) => self.report.records += 1,
                    None => {}
                }
            }
        }
        let mut digest = Fnv64::default();
        for a in &self.acked {
            digest.write(&(a.device as u64).to_le_bytes());
            digest.write(a.record.as_bytes());
            digest.write(a.order.1.as_bytes());
            digest.write(&[u8::from(a.delete)]);
        }
        self.report.acked_digest = digest.0;
        Ok(())
    }
}
