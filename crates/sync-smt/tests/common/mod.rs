//! Helpers shared by the integration tests: key strategies and an in-process session loop.

#![allow(dead_code, unreachable_pub)]

use proptest::prelude::*;
use sync_smt::{Config, Diff, Error, Initiator, Key, Responder, Step, Tree};

/// Keys from three families, so that sets mix uniformly spread keys with keys sharing long
/// prefixes (which make buckets burst deep in the trie).
pub fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        4 => any::<[u8; 32]>(),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| {
            let mut k = [0x5a; 32];
            k[30] = a;
            k[31] = b;
            k
        }),
        1 => (0u8..4, any::<[u8; 2]>()).prop_map(|(a, b)| {
            let mut k = [0; 32];
            k[0] = a;
            k[1] = b[0];
            k[2] = b[1];
            k
        }),
    ]
}

/// A vector of keys, possibly with repeats.
pub fn keys(max: usize) -> impl Strategy<Value = Vec<Key>> {
    proptest::collection::vec(key(), 0..max)
}

/// Per-direction totals of one session.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub requests: usize,
    pub bytes_to_responder: usize,
    pub bytes_to_initiator: usize,
}

/// Run a whole session over encoded bytes, `ours` initiating against `theirs`.
pub fn run(
    ours: &Tree,
    theirs: &Tree,
    config: Config,
    salt: [u8; 16],
) -> Result<(Diff, Stats), Error> {
    let responder = Responder::new(config.limits);
    let (mut session, mut request) = Initiator::start(ours, config, salt)?;
    let mut stats = Stats::default();
    loop {
        let bytes = request.encode();
        stats.requests += 1;
        stats.bytes_to_responder += bytes.len();
        let reply = responder.respond_bytes(theirs, &bytes)?;
        stats.bytes_to_initiator += reply.len();
        match session.handle_bytes(ours, &reply)? {
            Step::Send(next) => request = next,
            Step::Done(diff) => return Ok((diff, stats)),
        }
    }
}

/// `a \ b` for sorted, deduplicated inputs.
pub fn minus(a: &[Key], b: &[Key]) -> Vec<Key> {
    a.iter()
        .filter(|k| b.binary_search(k).is_err())
        .copied()
        .collect()
}

pub fn sorted(mut v: Vec<Key>) -> Vec<Key> {
    v.sort_unstable();
    v.dedup();
    v
}

/// Uniformly spread keys: blake3 of the index.
pub fn spread(range: std::ops::Range<u32>) -> Vec<Key> {
    range
        .map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes())
        .collect()
}
