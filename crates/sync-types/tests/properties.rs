//! Property tests: codec round trips, scope-hash canonicalisation, merge-rule order
//! independence, hostile bytes and HLC monotonicity.

mod support;

use proptest::collection::vec;
use proptest::prelude::*;
use support::*;
use sync_types::merge::{Version, VersionKind, merge_all};
use sync_types::*;

const LIMIT: usize = 1 << 20;

fn round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    codec::decode(&codec::encode(value), LIMIT).expect("an encoded value decodes")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn messages_round_trip_and_keep_their_cid(m in message()) {
        prop_assert!(m.validate().is_ok());
        let back = codec::decode_message(&codec::encode(&m), LIMIT).unwrap();
        prop_assert_eq!(back.cid(), m.cid());
        prop_assert_eq!(back, m);
    }

    #[test]
    fn replication_types_round_trip(
        link in link_state(),
        token in token(),
        outcome in apply_outcome(),
        dead in dead_letter(),
        auth in authorization(),
    ) {
        prop_assert_eq!(round_trip(&link), link.clone());
        prop_assert_eq!(round_trip(&token), token);
        prop_assert_eq!(round_trip(&outcome), outcome);
        prop_assert_eq!(round_trip(&dead), dead.clone());
        prop_assert_eq!(round_trip(&auth), auth);
        let event = SyncEvent::DeadLetterRecorded { dead_letter: dead };
        prop_assert_eq!(round_trip(&event), event.clone());
        let gap = Gap {
            requested: token,
            oldest_available: None,
            latest_available: Some(token),
            reason: GapReason::TooOld,
        };
        let event = SyncEvent::GapDetected { link: link.key.clone(), gap };
        prop_assert_eq!(round_trip(&event), event.clone());
        prop_assert_eq!(token.to_string().parse::<ProgressToken>().unwrap(), token);
        prop_assert_eq!(link.key.to_string().parse::<LinkKey>().unwrap(), link.key);
    }

    #[test]
    fn protocol_set_ids_ignore_order_and_duplicates(
        protocols in vec(protocol(), 1..6),
        shuffle_seed in any::<u64>(),
        tenant in tenant(),
    ) {
        let mut other = protocols.clone();
        other.extend(protocols.iter().take(2).cloned());
        shuffle(&mut other, shuffle_seed);
        let a = Scope::protocols(protocols).unwrap();
        let b = Scope::protocols(other).unwrap();
        prop_assert_eq!(scope_id(&a), scope_id(&b));
        prop_assert_eq!(projection_id(&tenant, &a), projection_id(&tenant, &b));
        prop_assert_eq!(&a, &b);
    }

    #[test]
    fn projection_ids_ignore_order_duplicates_and_splitting(
        entries in vec(projection_entry(), 1..5),
        shuffle_seed in any::<u64>(),
    ) {
        // The same coverage written differently: entries shuffled, prefixes duplicated
        // and reversed, and each entry split into one entry per prefix.
        let mut other = Vec::new();
        for e in &entries {
            if e.is_whole_protocol() {
                other.push(e.clone());
                continue;
            }
            for p in e.path_prefixes.iter().rev().chain(e.path_prefixes.iter()) {
                other.push(ProjectionEntry {
                    protocol: e.protocol.clone(),
                    path_prefixes: vec![p.clone()],
                    context_prefixes: vec![],
                });
            }
            for c in e.context_prefixes.iter().rev() {
                other.push(ProjectionEntry {
                    protocol: e.protocol.clone(),
                    path_prefixes: vec![],
                    context_prefixes: vec![c.clone(), c.clone()],
                });
            }
        }
        shuffle(&mut other, shuffle_seed);
        let a = Scope::projection(entries).unwrap();
        let b = Scope::projection(other).unwrap();
        prop_assert_eq!(scope_id(&a), scope_id(&b));
        prop_assert_eq!(a, b);
    }

    #[test]
    fn canonical_scopes_are_fixed_points(s in scope()) {
        // Canonicalising a canonical scope changes nothing, and decoding re-canonicalises.
        let again = match &s {
            Scope::Full => Scope::Full,
            Scope::ProtocolSet(p) => Scope::protocols(p.protocols().to_vec()).unwrap(),
            Scope::Projection(p) => Scope::projection(p.entries().to_vec()).unwrap(),
        };
        prop_assert_eq!(&again, &s);
        prop_assert_eq!(round_trip(&s), s);
        prop_assert!(again.covers(&again));
    }

    #[test]
    fn merge_rule_is_order_independent(
        versions in vec((0u64..20, any::<bool>(), proptest::option::of(0u8..4), any::<u8>()), 1..12),
        shuffle_seed in any::<u64>(),
    ) {
        let versions: Vec<Version> = versions
            .into_iter()
            .enumerate()
            .map(|(i, (wall_ms, is_delete, prev, salt))| {
                let mut bytes = [salt; 32];
                bytes[0] = u8::try_from(i).unwrap();
                Version {
                    cid: Cid::from_bytes(bytes),
                    timestamp: Hlc { wall_ms, counter: 0, node: NodeId(0) },
                    prev: prev.map(|p| Cid::from_bytes([p; 32])),
                    kind: if is_delete && prev.is_some() { VersionKind::Delete } else { VersionKind::Write },
                }
            })
            .collect();
        let mut shuffled = versions.clone();
        shuffle(&mut shuffled, shuffle_seed);
        // Delivering some versions twice changes nothing either.
        shuffled.extend(versions.iter().take(3).copied());
        let a = merge_all(&versions).unwrap();
        let b = merge_all(&shuffled).unwrap();
        prop_assert_eq!(a, b);
        // And the head is the specified minimum and maximum.
        let winner = versions.iter().max_by_key(|v| v.order_key()).unwrap();
        let initial = versions.iter().filter(|v| v.is_initial_candidate()).min_by_key(|v| v.order_key());
        prop_assert_eq!(a.winner, *winner);
        prop_assert_eq!(a.initial, initial.copied());
        prop_assert_eq!(a.is_deleted(), winner.kind == VersionKind::Delete);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in vec(any::<u8>(), 0..512)) {
        if let Ok(m) = codec::decode_message(&bytes, LIMIT) {
            prop_assert!(m.validate().is_ok());
        }
        let _ = codec::decode::<LinkState>(&bytes, LIMIT);
        let _ = codec::decode::<Scope>(&bytes, LIMIT);
        let _ = codec::decode::<Authorization>(&bytes, LIMIT);
        let _ = codec::decode::<SyncEvent>(&bytes, LIMIT);
        let _ = codec::decode::<ApplyOutcome>(&bytes, LIMIT);
        // With a valid envelope byte in front, the body parser is exercised too.
        let mut enveloped = vec![codec::ENVELOPE_VERSION];
        enveloped.extend_from_slice(&bytes);
        if let Ok(m) = codec::decode_message(&enveloped, LIMIT) {
            prop_assert!(m.validate().is_ok());
        }
        let _ = codec::decode::<LinkState>(&enveloped, LIMIT);
        let _ = codec::decode::<Scope>(&enveloped, LIMIT);
        prop_assert!(codec::decode::<Message>(&enveloped, bytes.len()).is_err());
    }

    #[test]
    fn mutated_messages_decode_or_fail_cleanly(m in message(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = codec::encode(&m);
        let i = at % bytes.len();
        bytes[i] = byte;
        if let Ok(back) = codec::decode_message(&bytes, LIMIT) {
            prop_assert!(back.validate().is_ok());
        }
        bytes.truncate(i);
        prop_assert!(codec::decode_message(&bytes, LIMIT).is_err());
    }

    #[test]
    fn hlc_is_strictly_monotonic(ops in vec((0u8..3, 0u64..10_000, hlc()), 1..64)) {
        let clock = ManualClock::new(5_000);
        let mut hlc = HlcClock::new(&clock, NodeId(9)).with_drift_ms_max(1_000);
        let mut last = hlc.last();
        for (op, wall, remote) in ops {
            match op {
                0 => clock.set(wall),
                1 => {
                    let t = hlc.tick();
                    prop_assert!(t > last);
                    last = t;
                }
                _ => {
                    let remote = Hlc { wall_ms: remote.wall_ms * 10, ..remote };
                    match hlc.observe(remote) {
                        Ok(t) => {
                            prop_assert!(t > last && t > remote);
                            last = t;
                        }
                        Err(e) => {
                            prop_assert!(remote.wall_ms > clock.now_ms() + 1_000);
                            prop_assert_eq!(e.max_drift_ms, 1_000);
                            prop_assert_eq!(hlc.last(), last);
                        }
                    }
                }
            }
        }
    }
}

/// A deterministic Fisher-Yates shuffle from a seed (splitmix64), so failures replay.
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    let mut next = || {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = usize::try_from(next() % (i as u64 + 1)).unwrap();
        items.swap(i, j);
    }
}
