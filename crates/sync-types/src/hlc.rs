//! A hybrid logical clock.
//!
//! An [`Hlc`] timestamp is `(wall_ms, counter, node)`: the physical time in milliseconds,
//! a counter that orders events within one millisecond (or while the wall clock stands
//! still or goes backwards), and the id of the node that made it. Timestamps are totally
//! ordered in that field order, so two nodes never produce equal timestamps.
//!
//! The clock source is injected ([`Clock`]) so a simulation drives time itself.
//! [`HlcClock::observe`] refuses a remote timestamp further ahead than a configured bound,
//! so one peer with a broken clock cannot drag everyone's timestamps into the future.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::canonical::CanonicalWriter;
use crate::error::DriftError;

/// The id of the node (replica or server) that issued a timestamp.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A hybrid-logical-clock timestamp, ordered by `(wall_ms, counter, node)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Hlc {
    /// Physical time in milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Orders events that share `wall_ms`.
    pub counter: u32,
    /// The node that issued the timestamp; breaks ties between nodes.
    pub node: NodeId,
}

impl Hlc {
    /// The smallest timestamp.
    pub const ZERO: Hlc = Hlc {
        wall_ms: 0,
        counter: 0,
        node: NodeId(0),
    };

    pub(crate) fn write_canonical(&self, w: &mut CanonicalWriter) {
        w.u64(self.wall_ms).u32(self.counter).u64(self.node.0);
    }

    /// The next timestamp after `self` at the same node and wall time.
    fn successor(self) -> Hlc {
        match self.counter.checked_add(1) {
            Some(counter) => Hlc { counter, ..self },
            // The counter is exhausted: move logical time one millisecond ahead.
            None => Hlc {
                wall_ms: self.wall_ms.saturating_add(1),
                counter: 0,
                ..self
            },
        }
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{:x}", self.wall_ms, self.counter, self.node.0)
    }
}

/// A source of physical time in milliseconds since the Unix epoch.
pub trait Clock {
    /// The current wall time in milliseconds.
    fn now_ms(&self) -> u64;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// A clock that only moves when told to: for tests and simulation.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self(std::sync::atomic::AtomicU64::new(now_ms))
    }

    /// Sets the time (it may go backwards, as real clocks do).
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the time forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Default bound on how far ahead of local time a remote timestamp may be: one minute.
pub const DRIFT_MS_MAX_DEFAULT: u64 = 60_000;

/// The per-node generator of [`Hlc`] timestamps.
///
/// Every timestamp it returns is greater than every timestamp it returned or observed
/// before, whatever the wall clock does.
#[derive(Debug)]
pub struct HlcClock<C> {
    clock: C,
    node: NodeId,
    last: Hlc,
    drift_ms_max: u64,
}

impl<C: Clock> HlcClock<C> {
    /// A generator for `node` over `clock`, accepting remote timestamps at most
    /// [`DRIFT_MS_MAX_DEFAULT`] ahead.
    pub fn new(clock: C, node: NodeId) -> Self {
        Self {
            clock,
            node,
            last: Hlc { node, ..Hlc::ZERO },
            drift_ms_max: DRIFT_MS_MAX_DEFAULT,
        }
    }

    /// Sets the bound on accepted drift, in milliseconds.
    #[must_use]
    pub fn with_drift_ms_max(mut self, drift_ms_max: u64) -> Self {
        self.drift_ms_max = drift_ms_max;
        self
    }

    /// Makes every later [`tick`](Self::tick) greater than `last`, without the drift
    /// bound of [`observe`](Self::observe): for a timestamp that is already trusted,
    /// such as the greatest one a store holds (so timestamps stay monotonic across
    /// restarts even if the wall clock went backwards) or the version a local write
    /// replaces (whatever node stamped it).
    pub fn resume_after(&mut self, last: Hlc) {
        if last > self.last {
            self.last = Hlc {
                node: self.node,
                ..last
            };
        }
    }

    /// The node id this generator stamps.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A new timestamp for a local event.
    pub fn tick(&mut self) -> Hlc {
        let now = self.clock.now_ms();
        let next = if now > self.last.wall_ms {
            Hlc {
                wall_ms: now,
                counter: 0,
                node: self.node,
            }
        } else {
            Hlc {
                node: self.node,
                ..self.last
            }
            .successor()
        };
        self.last = next;
        next
    }

    /// Merges a remote timestamp, so that every later [`tick`](Self::tick) is greater than
    /// it, and returns the timestamp of the receive event.
    ///
    /// Fails, and changes nothing, when `remote` is more than the drift bound ahead of the
    /// local wall clock.
    pub fn observe(&mut self, remote: Hlc) -> Result<Hlc, DriftError> {
        let now = self.clock.now_ms();
        let ahead_ms = remote.wall_ms.saturating_sub(now);
        if ahead_ms > self.drift_ms_max {
            return Err(DriftError {
                ahead_ms,
                max_drift_ms: self.drift_ms_max,
            });
        }
        let base = self.last.max(Hlc {
            node: self.node,
            ..remote
        });
        let next = if now > base.wall_ms {
            Hlc {
                wall_ms: now,
                counter: 0,
                node: self.node,
            }
        } else {
            Hlc {
                node: self.node,
                ..base
            }
            .successor()
        };
        self.last = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_monotonic_when_the_clock_stalls_or_goes_back() {
        let clock = ManualClock::new(1_000);
        let mut hlc = HlcClock::new(&clock, NodeId(7));
        let a = hlc.tick();
        let b = hlc.tick();
        assert!(b > a);
        assert_eq!((b.wall_ms, b.counter), (1_000, 1));
        clock.set(500);
        let c = hlc.tick();
        assert!(c > b);
        assert_eq!(c.wall_ms, 1_000);
        clock.set(2_000);
        let d = hlc.tick();
        assert_eq!((d.wall_ms, d.counter), (2_000, 0));
    }

    #[test]
    fn counter_overflow_moves_to_the_next_millisecond() {
        let clock = ManualClock::new(10);
        let mut hlc = HlcClock::new(&clock, NodeId(1));
        hlc.resume_after(Hlc {
            wall_ms: 10,
            counter: u32::MAX,
            node: NodeId(1),
        });
        let t = hlc.tick();
        assert_eq!((t.wall_ms, t.counter), (11, 0));
    }

    #[test]
    fn observe_orders_after_remote_and_rejects_drift() {
        let clock = ManualClock::new(1_000);
        let mut hlc = HlcClock::new(&clock, NodeId(1)).with_drift_ms_max(100);
        let remote = Hlc {
            wall_ms: 1_050,
            counter: 3,
            node: NodeId(2),
        };
        let seen = hlc.observe(remote).unwrap();
        assert!(seen > remote);
        assert!(hlc.tick() > remote);
        let far = Hlc {
            wall_ms: 1_101,
            counter: 0,
            node: NodeId(2),
        };
        let before = hlc.last();
        assert_eq!(
            hlc.observe(far),
            Err(DriftError {
                ahead_ms: 101,
                max_drift_ms: 100
            })
        );
        assert_eq!(hlc.last(), before, "a refused timestamp changes nothing");
        // Exactly at the bound is accepted.
        assert!(
            hlc.observe(Hlc {
                wall_ms: 1_100,
                ..far
            })
            .is_ok()
        );
    }

    #[test]
    fn resume_after_orders_the_next_tick_after_any_nodes_timestamp() {
        let clock = ManualClock::new(1_000);
        let mut hlc = HlcClock::new(&clock, NodeId(1));
        // Far ahead (beyond any drift bound) and stamped by a greater node id.
        let stored = Hlc {
            wall_ms: 1_000_000,
            counter: 4,
            node: NodeId(9),
        };
        hlc.resume_after(stored);
        let next = hlc.tick();
        assert!(next > stored);
        assert_eq!(
            (next.wall_ms, next.counter, next.node),
            (1_000_000, 5, NodeId(1))
        );
        // An older timestamp changes nothing.
        hlc.resume_after(Hlc::ZERO);
        assert!(hlc.tick() > next);
    }

    #[test]
    fn timestamps_of_two_nodes_never_tie() {
        let clock = ManualClock::new(5);
        let mut a = HlcClock::new(&clock, NodeId(1));
        let mut b = HlcClock::new(&clock, NodeId(2));
        assert_ne!(a.tick(), b.tick());
    }
}
