//! What a run returns: its report, or the failure that names its seed.

use crate::SimPolicy;

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Acknowledged writes.
    pub writes: u64,
    /// Acknowledged deletes.
    pub deletes: u64,
    /// Acknowledged writes whose payload is a blob.
    pub blob_writes: u64,
    /// Blob transfers cut short or corrupted.
    pub blob_faults: u64,
    /// One-shot syncs run (with faults on).
    pub syncs: u64,
    /// Requests lost.
    pub requests_lost: u64,
    /// Responses lost.
    pub responses_lost: u64,
    /// Requests duplicated.
    pub duplicated: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Replica restarts.
    pub replica_restarts: u64,
    /// Node restarts.
    pub node_restarts: u64,
    /// Sync rounds (poll) or driver iterations (live) it took to converge after the
    /// faults stopped.
    pub settle_rounds: u64,
    /// Live feeds cut by the network (live mode).
    pub feeds_cut: u64,
    /// Live deliveries duplicated (live mode).
    pub deliveries_duplicated: u64,
    /// Repairs the link machines started (live mode).
    pub repairs: u64,
    /// The run's conflict policy.
    pub policy: Option<SimPolicy>,
    /// Clock jumps, and how many went backwards.
    pub clock_jumps: u64,
    /// Clock jumps backwards.
    pub clock_jumps_back: u64,
    /// Local writes that replaced a version stamped ahead of the writer's wall clock
    /// (the first half of issue 15's lost write).
    pub writes_over_future_versions: u64,
    /// Of those, writes by a replica restarted since it first stored that version (the
    /// whole of it).
    pub writes_over_future_versions_after_restart: u64,
    /// The node's tree root over the full scope at the end of the run (every replica
    /// holds the same over its scope, or the run fails).
    pub root: sync_smt::Hash,
    /// Records the node holds at the end of the run (its winner a write).
    pub records: u64,
    /// Records the node holds deleted at the end of the run (its winner a delete).
    pub tombstones: u64,
    /// A digest (FNV-1a, 64 bits) of every acknowledged write and delete in order: the
    /// replica, the record, the version's id and whether it deletes.
    pub acked_digest: u64,
}

impl SimReport {
    /// Faults injected in the run.
    pub fn faults(&self) -> u64 {
        self.requests_lost
            + self.feeds_cut
            + self.deliveries_duplicated
            + self.responses_lost
            + self.duplicated
            + self.partitions
            + self.replica_restarts
            + self.node_restarts
            + self.blob_faults
            + self.clock_jumps
    }
}

/// A failed run.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "simulation seed {seed} failed: {message} (replay: SIM_SEED={seed} cargo test -p sync-sim --test simulation replay)"
)]
pub struct SimFailure {
    /// The seed that fails.
    pub seed: u64,
    /// What went wrong.
    pub message: String,
}

pub(crate) fn fail(seed: u64, message: impl Into<String>) -> SimFailure {
    SimFailure {
        seed,
        message: message.into(),
    }
}

/// FNV-1a, 64 bits: a digest stable across builds and platforms.
pub(crate) struct Fnv64(pub(crate) u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
