//! The simulation's clocks (the run's virtual time, and each device's wall clock on
//! it) and conflict policies.
//!
//! Every device has its own wall clock: the run's virtual time plus an offset drawn per
//! device, at most [`Faults::clock_skew_ms_max`](crate::Faults::clock_skew_ms_max) either
//! way, so two devices differ by up to twice that (the default is half the accepted
//! drift, so no two clocks differ by more than a replica accepts). A clock *jump* draws
//! a new offset in the same range, often a step backwards. The clock is the device's
//! hardware: it survives the device's restarts, while everything the replica derives
//! from it (its hybrid logical clock) does not.
//!
//! The conflict policy is drawn per run and used by every replica of the run (mixing
//! opposite policies on one record is documented as not converging; see
//! `sync_engine::ConflictPolicy`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use sync_types::Clock;

use sync_engine::{ConflictInfo, ConflictPolicy, Resolution};

/// A device's wall clock: a shared base and the device's offset.
pub(crate) struct DeviceClock {
    base: Arc<dyn Clock + Send + Sync>,
    offset_ms: AtomicI64,
}

impl DeviceClock {
    pub(crate) fn new(base: Arc<dyn Clock + Send + Sync>, offset_ms: i64) -> Self {
        Self {
            base,
            offset_ms: AtomicI64::new(offset_ms),
        }
    }

    pub(crate) fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::SeqCst)
    }

    /// Sets the offset (a jump); returns whether the clock went backwards.
    pub(crate) fn jump_to(&self, offset_ms: i64) -> bool {
        self.offset_ms.swap(offset_ms, Ordering::SeqCst) > offset_ms
    }
}

impl std::fmt::Debug for DeviceClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceClock({:+} ms)", self.offset_ms())
    }
}

impl Clock for DeviceClock {
    fn now_ms(&self) -> u64 {
        self.base.now_ms().saturating_add_signed(self.offset_ms())
    }
}

/// The conflict policy of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimPolicy {
    /// [`ConflictPolicy::LastWriterWins`].
    LastWriterWins,
    /// [`ConflictPolicy::PreferLocal`].
    PreferLocal,
    /// [`ConflictPolicy::PreferRemote`].
    PreferRemote,
    /// [`ConflictPolicy::Callback`] that keeps the greatest inline payload among the
    /// winner and the losers: a deterministic, commutative merge.
    Callback,
}

impl SimPolicy {
    /// Every policy, in the order a draw indexes them.
    pub const ALL: [SimPolicy; 4] = [
        SimPolicy::LastWriterWins,
        SimPolicy::PreferLocal,
        SimPolicy::PreferRemote,
        SimPolicy::Callback,
    ];

    pub(crate) fn policy(self) -> ConflictPolicy {
        match self {
            SimPolicy::LastWriterWins => ConflictPolicy::LastWriterWins,
            SimPolicy::PreferLocal => ConflictPolicy::PreferLocal,
            SimPolicy::PreferRemote => ConflictPolicy::PreferRemote,
            SimPolicy::Callback => ConflictPolicy::Callback(Arc::new(greatest_payload)),
        }
    }
}

fn greatest_payload(info: &ConflictInfo) -> Resolution {
    let best = info
        .losers
        .iter()
        .filter_map(|(_, d)| d.as_ref())
        .max()
        .filter(|best| info.winner_data.as_ref().is_none_or(|w| *best > w));
    match best {
        Some(best) => Resolution::Write(Some(best.clone())),
        None => Resolution::KeepWinner,
    }
}

/// Virtual wall time: tokio's (paused) clock plus a fixed base.
#[derive(Debug)]
pub(crate) struct SimClock {
    pub(crate) start: tokio::time::Instant,
    pub(crate) base_ms: u64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.base_ms + u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
