//! Jitter of the machine's delays, so a fleet of replicas does not act in step: after a
//! node restarts, thousands of links would otherwise reconnect, repair and poll within
//! the same few milliseconds. Every reconnect, repair retry, poll and integrity delay `d`
//! becomes uniform in `[d - d·p/100, d + d·p/100)` with `p` =
//! [`LinkConfig::jitter_percent`](super::LinkConfig::jitter_percent) (default 50:
//! `[d/2, 3d/2)`), drawn from a splitmix64 sequence seeded by
//! [`LinkConfig::jitter_seed`](super::LinkConfig::jitter_seed) and the link's key: the
//! same seed replays the same delays (the simulation stays deterministic), and two
//! replicas with different seeds spread apart.

use sync_types::LinkKey;

use super::LinkMachine;

/// The starting state of a link's jitter sequence: the seed mixed with its key.
pub(super) fn seed_for(seed: u64, key: &LinkKey) -> u64 {
    // FNV-1a over the key's text, then mixed with the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut state = seed ^ h;
    next(&mut state)
}

fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl LinkMachine {
    /// Uniform in `[0, bound)` from the seeded sequence.
    pub(super) fn jitter(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        next(&mut self.jitter_state) % bound
    }

    /// `delay_ms` spread by [`LinkConfig::jitter_percent`](super::LinkConfig::jitter_percent):
    /// uniform in `[d - d·p/100, d + d·p/100)`.
    pub(super) fn spread(&mut self, delay_ms: u64) -> u64 {
        let percent = u64::from(self.config.jitter_percent.min(100));
        let half_width = delay_ms.saturating_mul(percent) / 100;
        let low = delay_ms - half_width;
        low.saturating_add(self.jitter(half_width.saturating_mul(2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::LinkConfig;
    use sync_types::{Authorization, Endpoint, LinkState, Scope, TenantId};

    fn machine(seed: u64, percent: u32) -> LinkMachine {
        let state = LinkState::new(
            TenantId::new("t").unwrap(),
            Endpoint::new("http://n:1").unwrap(),
            Scope::Full,
            Authorization::Owner,
        );
        LinkMachine::new(
            state,
            LinkConfig {
                jitter_seed: seed,
                jitter_percent: percent,
                ..LinkConfig::default()
            },
        )
    }

    #[test]
    fn delays_spread_over_half_to_one_and_a_half_and_replay_by_seed() {
        let mut m = machine(1, 50);
        let spread: Vec<u64> = (0..2_000).map(|_| m.spread(1_000)).collect();
        assert!(spread.iter().all(|d| (500..1_500).contains(d)));
        // Both halves of the range are used.
        assert!(spread.iter().any(|d| *d < 750) && spread.iter().any(|d| *d >= 1_250));
        let mut again = machine(1, 50);
        let replay: Vec<u64> = (0..2_000).map(|_| again.spread(1_000)).collect();
        assert_eq!(spread, replay);
        let mut other = machine(2, 50);
        let different: Vec<u64> = (0..2_000).map(|_| other.spread(1_000)).collect();
        assert_ne!(spread, different);
        // No jitter: the delay as configured.
        let mut exact = machine(1, 0);
        assert_eq!(exact.spread(1_000), 1_000);
        assert_eq!(m.spread(0), 0);
    }
}
