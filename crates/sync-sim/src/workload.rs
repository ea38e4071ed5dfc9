//! The workload: the records a run writes (one tenant, two protocols, three targets),
//! the scope of each replica, and one step of the run: a local write, update or delete,
//! a sync, or a fault.

use std::time::Duration;

use sync_types::{
    Clock, Hlc, INLINE_DATA_BYTES_MAX, PrincipalId, ProgressToken, ProtocolName, ProtocolPath,
    RecordId, Scope, TenantId,
};

use crate::report::fail;
use crate::world::World;
use crate::{SimFailure, SimMode};

pub(crate) fn tenant() -> TenantId {
    TenantId::new("did:sim:tenant").expect("valid")
}
pub(crate) fn kv() -> ProtocolName {
    ProtocolName::new("https://sim.example/kv").expect("valid")
}
pub(crate) fn docs() -> ProtocolName {
    ProtocolName::new("https://sim.example/docs").expect("valid")
}
pub(crate) fn segment(s: &str) -> ProtocolPath {
    ProtocolPath::new(s).expect("valid")
}

/// Where writes go: (protocol, path). Record keys are per target, so a record belongs to
/// exactly one target.
pub(crate) fn targets() -> [(ProtocolName, ProtocolPath); 3] {
    [
        (kv(), segment("entry")),
        (docs(), segment("a")),
        (docs(), segment("b")),
    ]
}

/// The scope of replica `index`.
pub(crate) fn scope_of(index: usize, mixed: bool) -> Scope {
    match (mixed, index % 3) {
        (false, _) | (true, 0) => Scope::Full,
        (true, 1) => Scope::protocols(vec![kv()]).expect("valid"),
        _ => Scope::projection(vec![sync_types::ProjectionEntry {
            protocol: docs(),
            path_prefixes: vec![segment("a")],
            context_prefixes: vec![],
        }])
        .expect("valid"),
    }
}

/// The targets a scope covers.
pub(crate) fn targets_in(scope: &Scope) -> Vec<usize> {
    (0..targets().len())
        .filter(|&t| {
            let (protocol, path) = &targets()[t];
            let context = sync_types::ContextId::root(RecordId::from_bytes([0; 32]));
            scope.classify(protocol, Some((path, &context))) == sync_types::ScopeClass::InScope
        })
        .collect()
}

pub(crate) fn record_of(target: usize, key: u64) -> RecordId {
    RecordId::from_natural_key(&tenant(), &targets()[target].0, &record_key(target, key))
}

pub(crate) fn record_key(target: usize, key: u64) -> Vec<u8> {
    let mut k = vec![u8::try_from(target).expect("few targets")];
    k.extend_from_slice(&key.to_be_bytes());
    k
}
pub(crate) fn author() -> PrincipalId {
    PrincipalId::new("did:sim:author").expect("valid")
}

/// An acknowledged write or delete: its record and order key, and the replica that
/// wrote it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Acked {
    pub(crate) record: RecordId,
    pub(crate) order: (Hlc, sync_types::Cid),
    pub(crate) delete: bool,
    pub(crate) device: usize,
}

impl World {
    pub(crate) fn write(&mut self, index: usize) -> Result<Option<ProgressToken>, SimFailure> {
        let seed = self.config.seed;
        let mine = targets_in(&scope_of(index, self.config.mixed_scopes));
        let target = mine[usize::try_from(self.rng.below(mine.len() as u64)).unwrap_or(0)];
        let (protocol, path) = targets()[target].clone();
        let key = self.rng.below(u64::from(self.config.keys));
        let replica = self.devices[index].engine.replica().clone();
        let record = record_of(target, key);
        let delete = self.rng.chance(200) && matches!(replica.get(&tenant(), &record), Ok(Some(_)));
        // The version this write replaces, to check the write orders after it.
        let replaced = replica
            .ledger()
            .record_head(&tenant(), &record)
            .ok()
            .flatten()
            .map(|h| h.winner);
        let restarts = self.devices[index].restarts;
        if let Some(v) = replaced
            && v.timestamp.wall_ms > self.clocks[index].now_ms()
        {
            self.report.writes_over_future_versions += 1;
            let earlier = (0..restarts).any(|r| self.future_versions.contains(&(index, record, r)));
            self.report.writes_over_future_versions_after_restart += u64::from(earlier);
            self.future_versions.insert((index, record, restarts));
        }
        let blob = !delete && self.rng.chance(self.config.blob_writes);
        let result = if delete {
            replica.delete(&tenant(), record, &author())
        } else {
            // A blob is just above the inline limit, up to a few store chunks; half are
            // streamed with `write_blob`, half given whole to `put` (which stores them as
            // blobs). (The draws stay in this order: seeds replay.)
            let (value, streamed) = if blob {
                let len = INLINE_DATA_BYTES_MAX + 1 + self.rng.below(160 * 1024);
                let mut value = format!("r{index} v{} ", self.rng.next_u64()).into_bytes();
                let fill = u8::try_from(self.rng.below(256)).unwrap_or(0);
                value.resize(usize::try_from(len).unwrap_or(0), fill);
                (value, self.rng.chance(500))
            } else {
                (
                    format!("r{index} v{}", self.rng.next_u64()).into_bytes(),
                    false,
                )
            };
            if streamed {
                replica.write_blob(value.as_slice()).and_then(|data| {
                    let req = sync_engine::WriteRequest {
                        protocol: protocol.clone(),
                        path: path.clone(),
                        key: sync_engine::RecordKey::Natural(record_key(target, key)),
                        parent: None,
                        data: None,
                        author: author(),
                    };
                    replica.write_with_blob(&tenant(), req, data)
                })
            } else {
                replica.put(
                    &tenant(),
                    &protocol,
                    &path,
                    &record_key(target, key),
                    value,
                    &author(),
                )
            }
        };
        let Ok(receipt) = result else {
            return Ok(None);
        };
        if let sync_engine::WriteOutcome::Superseded { winner } = receipt.outcome {
            return Err(fail(
                seed,
                format!(
                    "replica {index}'s {} {} of record {record} was superseded at once by {winner} (it replaced {:?})",
                    if delete { "delete" } else { "write" },
                    receipt.cid,
                    replaced.map(|v| v.cid)
                ),
            ));
        }
        let Some(stored) = replica
            .ledger()
            .get_message(&tenant(), &receipt.cid)
            .map_err(|e| fail(seed, e.to_string()))?
        else {
            return Err(fail(
                seed,
                format!("acknowledged {} is not stored", receipt.cid),
            ));
        };
        let order = (stored.message.timestamp(), receipt.cid);
        if replaced.is_some_and(|v| v.order_key() >= order) {
            return Err(fail(
                seed,
                format!(
                    "replica {index}'s version {} does not order after the one it replaced",
                    receipt.cid
                ),
            ));
        }
        self.acked.push(Acked {
            record,
            order,
            delete,
            device: index,
        });
        if delete {
            self.report.deletes += 1;
        } else {
            self.report.writes += 1;
            self.report.blob_writes += u64::from(blob);
        }
        Ok(receipt.token)
    }

    pub(crate) async fn local_write(&mut self, index: usize) -> Result<(), SimFailure> {
        if self.write(index)?.is_some() {
            // The write's change wakes the link, as every local change does.
            self.drive(index).await;
        }
        Ok(())
    }

    pub(crate) async fn step(&mut self) -> Result<(), SimFailure> {
        let n = self.devices.len();
        let index = usize::try_from(self.rng.below(n as u64)).unwrap_or(0);
        let faults = self.config.faults.clone();
        let roll = self.rng.below(1000);
        if roll < 450 {
            self.local_write(index).await?;
        } else if roll < 800 {
            match self.config.mode {
                SimMode::Poll => {
                    self.devices[index].engine.sync_once().await;
                    self.report.syncs += 1;
                }
                SimMode::Live => {
                    self.fire_timers(index).await;
                    self.deliver(index).await;
                }
            }
        } else if self.rng.chance(faults.partition * 5) {
            let mut partitioned = self
                .net
                .partitioned
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !partitioned.remove(&index) {
                partitioned.insert(index);
                self.report.partitions += 1;
            }
        } else if self.rng.chance(faults.replica_restart * 5) {
            self.restart_device(index)?;
            self.drive(index).await;
        } else if self.rng.chance(faults.node_restart * 5) {
            self.restart_node()?;
        } else if self.clock_rng.chance(faults.clock_jump * 5) {
            self.jump_clock(index);
        }
        tokio::time::sleep(Duration::from_millis(self.rng.below(200))).await;
        self.check_all_residency()?;
        Ok(())
    }
}
