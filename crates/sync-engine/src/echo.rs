//! Echo suppression: a message just pulled from an endpoint is not pushed back to it.
//!
//! Pulling a message appends it to the local log, and the push path would otherwise send
//! it straight back to where it came from. The cache remembers `(endpoint, cid)` pairs for
//! a short time; it is an optimisation only (pushing an echo is answered `Duplicate`), so
//! forgetting an entry early costs one round trip, never correctness.

use std::collections::{HashMap, VecDeque};

use sync_types::{Cid, Endpoint};

/// How long a pulled message is remembered (default 60 s).
pub const ECHO_TTL_MS: u64 = 60_000;
/// Most pairs remembered at once (default 10,000); the oldest go first.
pub const ECHO_ENTRIES_MAX: usize = 10_000;

/// A bounded, time-limited set of recently pulled `(endpoint, cid)` pairs.
#[derive(Debug)]
pub struct EchoCache {
    ttl_ms: u64,
    entries_max: usize,
    expiry: HashMap<(Endpoint, Cid), u64>,
    order: VecDeque<(u64, Endpoint, Cid)>,
}

impl Default for EchoCache {
    fn default() -> Self {
        Self::new(ECHO_TTL_MS, ECHO_ENTRIES_MAX)
    }
}

impl EchoCache {
    /// A cache remembering each pair for `ttl_ms`, at most `entries_max` pairs.
    pub fn new(ttl_ms: u64, entries_max: usize) -> Self {
        Self {
            ttl_ms,
            entries_max,
            expiry: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Remembers that `cid` was just pulled from `endpoint`.
    pub fn note_pulled(&mut self, endpoint: &Endpoint, cid: Cid, now_ms: u64) {
        self.expire(now_ms);
        let at = now_ms.saturating_add(self.ttl_ms);
        self.expiry.insert((endpoint.clone(), cid), at);
        self.order.push_back((at, endpoint.clone(), cid));
        while self.expiry.len() > self.entries_max {
            let Some((at, e, c)) = self.order.pop_front() else {
                break;
            };
            let key = (e, c);
            if self.expiry.get(&key) == Some(&at) {
                self.expiry.remove(&key);
            }
        }
    }

    /// Whether pushing `cid` to `endpoint` would only echo it back.
    pub fn is_echo(&self, endpoint: &Endpoint, cid: &Cid, now_ms: u64) -> bool {
        self.expiry
            .get(&(endpoint.clone(), *cid))
            .is_some_and(|&at| at > now_ms)
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((at, _, _)) = self.order.front() {
            if *at > now_ms {
                break;
            }
            let (at, e, c) = self.order.pop_front().expect("front exists");
            let key = (e, c);
            if self.expiry.get(&key) == Some(&at) {
                self.expiry.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_endpoint_for_a_while_and_within_a_bound() {
        let a = Endpoint::new("http://a").unwrap();
        let b = Endpoint::new("http://b").unwrap();
        let mut cache = EchoCache::new(100, 2);
        let (x, y, z) = (
            Cid::from_bytes([1; 32]),
            Cid::from_bytes([2; 32]),
            Cid::from_bytes([3; 32]),
        );
        cache.note_pulled(&a, x, 0);
        assert!(cache.is_echo(&a, &x, 50));
        assert!(
            !cache.is_echo(&b, &x, 50),
            "only to the endpoint it came from"
        );
        assert!(!cache.is_echo(&a, &x, 100), "expired");
        cache.note_pulled(&a, y, 10);
        cache.note_pulled(&a, z, 20);
        assert!(
            !cache.is_echo(&a, &x, 20),
            "the oldest goes first past the bound"
        );
        assert!(cache.is_echo(&a, &y, 20) && cache.is_echo(&a, &z, 20));
    }
}
