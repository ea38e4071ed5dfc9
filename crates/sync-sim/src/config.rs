//! What a run is given: its seed, mode, size and fault rates, and the generator every
//! draw comes from.

use crate::SimPolicy;

/// Fault rates, in parts per thousand of the chances they get.
#[derive(Clone, Debug)]
pub struct Faults {
    /// A request is lost before the node sees it.
    pub request_loss: u32,
    /// The node handles a request, and the response is lost.
    pub response_loss: u32,
    /// The node receives a request twice.
    pub duplicate: u32,
    /// Largest one-way latency, in milliseconds of virtual time.
    pub latency_ms_max: u64,
    /// Per step: a replica is partitioned from the node, or healed.
    pub partition: u32,
    /// Per step: a replica restarts, losing what was not synced to disk.
    pub replica_restart: u32,
    /// Per step: the node restarts, losing what was not synced to disk.
    pub node_restart: u32,
    /// A blob transfer's byte stream ends early (a cut connection).
    pub blob_cut: u32,
    /// A blob transfer has one byte flipped on the way.
    pub blob_corrupt: u32,
    /// Largest offset of a device's wall clock from the run's time, either way, in
    /// milliseconds (the node's clock has none). Stays after the faults stop: it is
    /// the hardware.
    pub clock_skew_ms_max: u64,
    /// Per step: a replica's clock jumps to a new offset (often backwards).
    pub clock_jump: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            request_loss: 60,
            response_loss: 60,
            duplicate: 60,
            latency_ms_max: 40,
            partition: 40,
            replica_restart: 30,
            node_restart: 15,
            blob_cut: 60,
            blob_corrupt: 60,
            clock_skew_ms_max: sync_types::DRIFT_MS_MAX_DEFAULT / 2,
            clock_jump: 20,
        }
    }
}

/// How the replicas replicate in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimMode {
    /// Each replica calls `Engine::sync_once` at random steps.
    Poll,
    /// Each replica's link runs its [`LinkMachine`](sync_engine::machine::LinkMachine): a
    /// simulated live feed, push on write, repair, timers on the virtual clock. Nobody
    /// calls `sync_once`: the links must heal by themselves.
    Live,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: the whole run follows from it.
    pub seed: u64,
    /// Poll or live.
    pub mode: SimMode,
    /// Number of replicas (each its own device).
    pub replicas: usize,
    /// Workload steps before the faults stop.
    pub steps: usize,
    /// Distinct record keys (fewer keys, more concurrent edits of one record).
    pub keys: u32,
    /// Of the writes, parts per thousand whose payload is above the inline limit (a blob).
    pub blob_writes: u32,
    /// Fault rates.
    pub faults: Faults,
    /// Give the replicas different scopes: in turn the full scope, a protocol set of one
    /// of the two protocols, and a projection of one path of the other. Each replica
    /// writes only inside its scope, and the checks compare each replica with the node
    /// over its scope, and check it holds nothing outside it.
    pub mixed_scopes: bool,
    /// Most sync rounds (every replica once) after the faults stop; 0 skips settling, so
    /// the checks see the replicas as the faults left them (a test of the checks).
    pub settle_rounds_max: usize,
    /// The conflict policy of every replica; `None` draws one from the seed.
    pub policy: Option<SimPolicy>,
    /// Fixed clock offsets per replica (milliseconds, missing ones drawn); for the
    /// scenario tests.
    pub clock_offsets_ms: Vec<i64>,
}

impl SimConfig {
    /// Defaults for `seed`: 3 replicas, 60 steps, 6 keys, default faults.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            mode: SimMode::Poll,
            replicas: 3,
            steps: 60,
            keys: 6,
            blob_writes: 150,
            faults: Faults::default(),
            mixed_scopes: false,
            settle_rounds_max: 8,
            policy: None,
            clock_offsets_ms: Vec::new(),
        }
    }
}

/// A small deterministic generator (splitmix64).
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}
