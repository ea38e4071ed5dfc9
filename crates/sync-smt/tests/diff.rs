//! Property tests of the diff: for random sets A and B a session yields exactly A\B and
//! B\A, whatever the parameters, the message limits (which force deferred queries) and the
//! shape of the sets (empty, identical, disjoint, one key, clustered keys).

mod common;

use common::{keys, minus, run, sorted, spread};
use proptest::prelude::*;
use sync_smt::{Config, Limits, Params, Tree};

fn check(
    a: &[[u8; 32]],
    b: &[[u8; 32]],
    config: Config,
    salt: [u8; 16],
) -> Result<(), TestCaseError> {
    let (a, b) = (sorted(a.to_vec()), sorted(b.to_vec()));
    let ta = Tree::from_sorted(&a).unwrap();
    let tb = Tree::from_sorted(&b).unwrap();
    let (diff, stats) =
        run(&ta, &tb, config, salt).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&diff.only_local, &minus(&a, &b));
    prop_assert_eq!(&diff.only_remote, &minus(&b, &a));
    prop_assert_eq!(diff.attempts, 1);
    prop_assert_eq!(diff.round_trips, stats.requests);
    Ok(())
}

/// Sets built from a shared part and a private part on each side.
fn sets() -> impl Strategy<Value = (Vec<[u8; 32]>, Vec<[u8; 32]>)> {
    (keys(300), keys(40), keys(40)).prop_map(|(common, a, b)| {
        let mut x = common.clone();
        x.extend(a);
        let mut y = common;
        y.extend(b);
        (x, y)
    })
}

fn params() -> impl Strategy<Value = Params> {
    (4u8..=32, 4u8..=32, 0u16..=8, 1u16..=40, 1u32..=64).prop_map(
        |(fingerprint_bytes, digest_bytes, keys_inline_max, digests_max, resolve_keys_max)| {
            Params {
                fingerprint_bytes,
                digest_bytes,
                keys_inline_max,
                digests_max,
                resolve_keys_max,
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn finds_exactly_the_symmetric_difference((a, b) in sets(), salt in any::<[u8; 16]>()) {
        check(&a, &b, Config::default(), salt)?;
    }

    #[test]
    fn any_parameters_and_small_messages((a, b) in sets(), params in params(), queries_max in 1usize..6, salt in any::<[u8; 16]>()) {
        let config = Config {
            params,
            limits: Limits { message_bytes_max: 80 * 1024, queries_max },
            round_trips_max: 10_000,
            attempts_max: 3,
            ..Config::default()
        };
        check(&a, &b, config, salt)?;
    }

    #[test]
    fn tiny_messages_defer_answers(
        (a, b) in sets(),
        fingerprint_bytes in 4u8..=8,
        keys_inline_max in 0u16..=4,
        resolve_keys_max in 1u32..=4,
        salt in any::<[u8; 16]>(),
    ) {
        let config = Config {
            params: Params { fingerprint_bytes, keys_inline_max, resolve_keys_max, ..Params::default() },
            limits: Limits { message_bytes_max: 8 * 1024, queries_max: 1 << 17 },
            round_trips_max: 10_000,
            attempts_max: 3,
            ..Config::default()
        };
        check(&a, &b, config, salt)?;
    }

    #[test]
    fn edge_shapes(a in keys(200), salt in any::<[u8; 16]>()) {
        let none: Vec<[u8; 32]> = Vec::new();
        check(&a, &none, Config::default(), salt)?; // remote empty
        check(&none, &a, Config::default(), salt)?; // local empty
        check(&a, &a, Config::default(), salt)?; // identical
        if let Some(k) = a.first() {
            check(&[*k], &a, Config::default(), salt)?; // one key
            check(&a, &[*k], Config::default(), salt)?;
        }
    }

    #[test]
    fn disjoint_sets(a in keys(150), b in keys(150), salt in any::<[u8; 16]>()) {
        let b: Vec<[u8; 32]> = b.into_iter().filter(|k| !a.contains(k)).collect();
        check(&a, &b, Config::default(), salt)?;
    }
}

#[test]
fn empty_against_empty_settles_in_one_round_trip() {
    let t = Tree::new();
    let (diff, stats) = run(&t, &t, Config::default(), [0; 16]).unwrap();
    assert!(diff.only_local.is_empty() && diff.only_remote.is_empty());
    assert_eq!(stats.requests, 1);
}

#[test]
fn identical_large_sets_cost_one_small_round_trip() {
    let keys = sorted(spread(0..20_000));
    let t = Tree::from_sorted(&keys).unwrap();
    let (diff, stats) = run(&t, &t.clone(), Config::default(), [1; 16]).unwrap();
    assert!(diff.only_local.is_empty() && diff.only_remote.is_empty());
    assert_eq!(stats.requests, 1);
    assert!(
        stats.bytes_to_responder + stats.bytes_to_initiator < 100,
        "{stats:?}"
    );
}

#[test]
fn cost_grows_with_differences_not_with_size() {
    // One missing key among 20k: a handful of round trips and a couple of kilobytes.
    let keys = sorted(spread(0..20_000));
    let a = Tree::from_sorted(&keys).unwrap();
    let mut b = a.clone();
    b.remove(&keys[12_345]);
    let (diff, stats) = run(&a, &b, Config::default(), [2; 16]).unwrap();
    assert_eq!(diff.only_local, vec![keys[12_345]]);
    assert!(diff.only_remote.is_empty());
    assert!(stats.requests <= 5, "{stats:?}");
    assert!(
        stats.bytes_to_responder + stats.bytes_to_initiator < 2_000,
        "{stats:?}"
    );
}

#[test]
fn a_responder_that_changes_mid_session_costs_an_attempt_not_a_wrong_answer() {
    let keys = sorted(spread(0..5_000));
    let a = Tree::from_sorted(&keys[..4_000]).unwrap();
    let b1 = Tree::from_sorted(&keys[1_000..]).unwrap();
    let mut b2 = b1.clone();
    b2.insert([0xee; 32]);
    let responder = sync_smt::Responder::default();
    let (mut session, mut request) =
        sync_smt::Initiator::start(&a, Config::default(), [3; 16]).unwrap();
    let mut first = true;
    let diff = loop {
        // The first reply comes from b1, every later one from b2.
        let tree = if first { &b1 } else { &b2 };
        first = false;
        let reply = responder.respond(tree, &request).unwrap();
        match session.handle(&a, reply).unwrap() {
            sync_smt::Step::Send(next) => request = next,
            sync_smt::Step::Done(diff) => break diff,
        }
    };
    let b2_keys: Vec<[u8; 32]> = b2.iter().copied().collect();
    assert_eq!(diff.only_local, minus(&keys[..4_000], &b2_keys));
    assert_eq!(diff.only_remote, minus(&b2_keys, &keys[..4_000]));
    assert_eq!(diff.attempts, 2);
}

#[test]
fn replies_past_the_size_limit_are_deferred_not_dropped() {
    let keys = sorted(spread(0..6_000));
    let a: Vec<[u8; 32]> = keys[..5_000].to_vec();
    let b: Vec<[u8; 32]> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 != 0)
        .map(|(_, k)| *k)
        .collect();
    let config = Config {
        params: Params {
            resolve_keys_max: 4,
            ..Params::default()
        },
        limits: Limits {
            message_bytes_max: 8 * 1024,
            queries_max: 1 << 17,
        },
        round_trips_max: 10_000,
        attempts_max: 1,
        ..Config::default()
    };
    let ta = Tree::from_sorted(&a).unwrap();
    let tb = Tree::from_sorted(&b).unwrap();
    let responder = sync_smt::Responder::new(config.limits);
    let (mut session, mut request) = sync_smt::Initiator::start(&ta, config, [4; 16]).unwrap();
    let mut deferred = 0;
    let diff = loop {
        let bytes = request.encode();
        assert!(bytes.len() <= 8 * 1024);
        let reply = responder.respond(&tb, &request).unwrap();
        assert!(reply.encode().len() <= 8 * 1024);
        deferred += request.queries.len() - reply.answers.len();
        match session.handle(&ta, reply).unwrap() {
            sync_smt::Step::Send(next) => request = next,
            sync_smt::Step::Done(diff) => break diff,
        }
    };
    assert!(deferred > 0, "the test must exercise deferral");
    assert_eq!(diff.only_local, minus(&a, &b));
    assert_eq!(diff.only_remote, minus(&b, &a));
}
