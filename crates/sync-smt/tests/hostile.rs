//! A hostile or broken peer gets an error, never a panic and never a wrong answer: wrong
//! counts, oversized replies, inconsistent hashes, keys outside their prefix, endless
//! descent, bad requests.

mod common;

use common::{run, sorted, spread};
use proptest::prelude::*;
use sync_smt::{
    Answer, Config, Error, Initiator, Limits, Params, Prefix, Query, QueryBody, Request, Responder,
    Response, Step, Tree, View,
};

fn trees() -> (Tree, Tree) {
    let keys = sorted(spread(0..3_000));
    let a = Tree::from_sorted(&keys[..2_500]).unwrap();
    let b = Tree::from_sorted(&keys[500..]).unwrap();
    (a, b)
}

/// Run a session against `b`, letting `tamper` rewrite every genuine response.
fn run_tampered(
    a: &Tree,
    b: &Tree,
    config: Config,
    mut tamper: impl FnMut(usize, &Request, Response) -> Response,
) -> Result<(), Error> {
    let responder = Responder::new(config.limits);
    let (mut session, mut request) = Initiator::start(a, config, [9; 16])?;
    for round in 0.. {
        let reply = tamper(round, &request, responder.respond(b, &request)?);
        match session.handle(a, reply)? {
            Step::Send(next) => request = next,
            Step::Done(_) => return Ok(()),
        }
    }
    unreachable!()
}

#[test]
fn more_answers_than_queries() {
    let (a, b) = trees();
    let err = run_tampered(&a, &b, Config::default(), |_, _, mut r| {
        r.answers.push(Answer::Same);
        r
    });
    assert!(
        matches!(err, Err(Error::Protocol("more answers than queries"))),
        "{err:?}"
    );
}

#[test]
fn no_answers() {
    let (a, b) = trees();
    let err = run_tampered(&a, &b, Config::default(), |_, _, mut r| {
        r.answers.clear();
        r
    });
    assert!(
        matches!(err, Err(Error::Protocol("response answers no query"))),
        "{err:?}"
    );
}

#[test]
fn missing_or_unrequested_root() {
    let (a, b) = trees();
    let err = run_tampered(&a, &b, Config::default(), |_, _, mut r| {
        r.root = None;
        r
    });
    assert!(
        matches!(
            err,
            Err(Error::Protocol("response lacks the requested root"))
        ),
        "{err:?}"
    );
    let err = run_tampered(&a, &b, Config::default(), |_, _, mut r| {
        r.root = Some(b.root());
        r
    });
    assert!(
        matches!(
            err,
            Err(Error::Protocol("response has an unrequested root"))
        ),
        "{err:?}"
    );
}

#[test]
fn wrong_view_counts() {
    let (a, b) = trees();
    let err = run_tampered(&a, &b, Config::default(), |_, _, mut r| {
        for answer in &mut r.answers {
            if let Answer::Children { views, .. } = answer {
                views.pop();
            }
        }
        r
    });
    assert!(matches!(err, Err(Error::Protocol(_))), "{err:?}");
}

#[test]
fn inconsistent_hashes_end_in_root_mismatch() {
    // The responder claims every subtree is the same but reports a different root.
    let (a, b) = trees();
    let err = run_tampered(&a, &b, Config::default(), |_, req, r| Response {
        root: r.root,
        answers: req
            .queries
            .iter()
            .map(|q| match &q.body {
                QueryBody::Fingerprint(_) => Answer::Same,
                QueryBody::Split { mask, .. } => Answer::Children {
                    mask: *mask,
                    views_mask: 0,
                    views: vec![],
                },
                QueryBody::Digests(d) => Answer::Resolved {
                    lacking: vec![0; (d.len() / 8).div_ceil(8)],
                    keys: vec![],
                },
            })
            .collect(),
    });
    assert!(
        matches!(err, Err(Error::RootMismatch { attempts: 3 })),
        "{err:?}"
    );
}

#[test]
fn lying_about_a_key_is_caught_by_the_root_check() {
    // The responder hides one of its keys from every key list it sends.
    let (a, b) = trees();
    let hidden = *b.iter().nth(2_000).unwrap();
    let err = run_tampered(&a, &b, Config::default(), |_, _, mut r| {
        for answer in &mut r.answers {
            match answer {
                Answer::Resolved { keys, .. } | Answer::View(View::Keys(keys)) => {
                    keys.retain(|k| *k != hidden)
                }
                Answer::Children { views, .. } => {
                    for v in views {
                        if let View::Keys(keys) = v {
                            keys.retain(|k| *k != hidden);
                        }
                    }
                }
                _ => {}
            }
        }
        r
    });
    assert!(
        matches!(
            err,
            Err(Error::RootMismatch { .. }) | Err(Error::Protocol(_))
        ),
        "{err:?}"
    );
}

#[test]
fn keys_outside_their_prefix_or_out_of_order() {
    let (a, b) = trees();
    for bad in 0..2 {
        let err = run_tampered(&a, &b, Config::default(), |_, _, mut r| {
            for answer in &mut r.answers {
                if let Answer::Resolved { keys, .. } = answer {
                    if bad == 0 {
                        keys.push([0xff; 32]);
                        keys.insert(0, [0x00; 32]);
                    } else if keys.len() >= 2 {
                        keys.swap(0, 1);
                    } else {
                        keys.push(keys.first().copied().unwrap_or([0; 32]));
                    }
                }
            }
            r
        });
        assert!(matches!(err, Err(Error::Protocol(_))), "{err:?}");
    }
}

#[test]
fn too_many_keys_in_a_view() {
    let (a, b) = trees();
    let config = Config {
        params: Params {
            resolve_keys_max: 4,
            ..Params::default()
        },
        ..Config::default()
    };
    let err = run_tampered(&a, &b, config, |_, _, mut r| {
        for answer in &mut r.answers {
            if let Answer::Resolved { keys, .. } = answer {
                keys.resize(5, [0; 32]);
            }
        }
        r
    });
    assert!(
        matches!(
            err,
            Err(Error::LimitExceeded {
                what: "key",
                count: 5,
                max: 4
            })
        ),
        "{err:?}"
    );
}

#[test]
fn endless_descent_is_bounded() {
    // The responder claims that one child of every prefix differs, down to the last bit.
    let (a, b) = trees();
    let split = View::Split {
        mask: 1,
        fingerprints: vec![0xab; 8],
    };
    let err = run_tampered(&a, &b, Config::default(), |_, req, r| Response {
        root: r.root,
        answers: req
            .queries
            .iter()
            .map(|q| match &q.body {
                QueryBody::Split { .. } => Answer::Children {
                    mask: 1,
                    views_mask: 1,
                    views: vec![split.clone()],
                },
                _ => Answer::View(split.clone()),
            })
            .collect(),
    });
    assert!(
        matches!(err, Err(Error::Protocol("split below the last level"))),
        "{err:?}"
    );
}

#[test]
fn exploding_open_prefixes_are_bounded() {
    // The responder claims that all 16 children of every prefix differ.
    let (a, b) = trees();
    let split = View::Split {
        mask: u16::MAX,
        fingerprints: vec![0xab; 16 * 8],
    };
    let config = Config {
        open_prefixes_max: 10_000,
        ..Config::default()
    };
    let err = run_tampered(&a, &b, config, |_, req, r| Response {
        root: r.root,
        answers: req
            .queries
            .iter()
            .map(|q| match &q.body {
                QueryBody::Split { .. } => Answer::Children {
                    mask: u16::MAX,
                    views_mask: u16::MAX,
                    views: vec![split.clone(); 16],
                },
                _ => Answer::View(split.clone()),
            })
            .collect(),
    });
    assert!(
        matches!(
            err,
            Err(Error::LimitExceeded {
                what: "open prefix",
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn oversized_malformed_and_foreign_bytes() {
    let (a, b) = trees();
    let limits = Limits {
        message_bytes_max: 1 << 16,
        queries_max: 1 << 10,
    };
    let params = Params {
        resolve_keys_max: 16,
        ..Params::default()
    };
    let config = Config {
        limits,
        params,
        ..Config::default()
    };
    let (mut session, request) = Initiator::start(&a, config, [1; 16]).unwrap();
    let good = Responder::new(limits)
        .respond_bytes(&b, &request.encode())
        .unwrap();

    let big = vec![sync_smt::PROTOCOL_VERSION; (1 << 16) + 1];
    assert!(matches!(
        session.handle_bytes(&a, &big),
        Err(Error::MessageTooLarge { .. })
    ));
    let mut foreign = good.clone();
    foreign[0] = 99;
    assert!(matches!(
        session.handle_bytes(&a, &foreign),
        Err(Error::Version(99))
    ));
    assert!(matches!(
        session.handle_bytes(&a, &good[..good.len() - 1]),
        Err(Error::Malformed(_))
    ));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        session.handle_bytes(&a, &trailing),
        Err(Error::Malformed(_))
    ));
    assert!(matches!(
        session.handle_bytes(&a, &[]),
        Err(Error::Malformed(_))
    ));
    // Decoding failures leave the session waiting; the genuine reply still works.
    assert!(session.handle_bytes(&a, &good).is_ok());
}

#[test]
fn a_failed_session_stays_failed() {
    let (a, b) = trees();
    let (mut session, request) = Initiator::start(&a, Config::default(), [1; 16]).unwrap();
    let mut reply = Responder::default().respond(&b, &request).unwrap();
    reply.answers.push(Answer::Same);
    assert!(session.handle(&a, reply.clone()).is_err());
    assert!(matches!(session.handle(&a, reply), Err(Error::NotWaiting)));
}

#[test]
fn the_local_tree_must_not_change() {
    let (a, b) = trees();
    let (mut session, request) = Initiator::start(&a, Config::default(), [1; 16]).unwrap();
    let reply = Responder::default().respond(&b, &request).unwrap();
    let mut changed = a.clone();
    changed.insert([7; 32]);
    assert!(matches!(
        session.handle(&changed, reply),
        Err(Error::LocalChanged)
    ));
}

#[test]
fn bad_requests_are_rejected_by_the_responder() {
    let (_, b) = trees();
    let responder = Responder::new(Limits {
        message_bytes_max: 8 << 20,
        queries_max: 4,
    });
    let base = Request {
        salt: [0; 16],
        params: Params::default(),
        want_root: true,
        queries: vec![],
    };
    let q = |prefix: Prefix, body: QueryBody| Query { prefix, body };

    let mut r = base.clone();
    r.queries = vec![q(Prefix::of_key(&[0; 32], 3), QueryBody::Digests(vec![]))];
    let got = responder.respond(&b, &r);
    assert!(
        matches!(
            got,
            Err(Error::Protocol("prefix length is not a multiple of 4"))
        ),
        "{got:?}"
    );

    r.queries = vec![q(
        Prefix::of_key(&[0; 32], 256),
        QueryBody::Split {
            mask: 1,
            fingerprints: vec![0; 8],
        },
    )];
    assert!(matches!(
        responder.respond(&b, &r),
        Err(Error::Protocol("split below the last level"))
    ));

    r.queries = vec![q(
        Prefix::ROOT,
        QueryBody::Split {
            mask: 3,
            fingerprints: vec![0; 8],
        },
    )];
    assert!(matches!(responder.respond(&b, &r), Err(Error::Protocol(_))));

    r.queries = vec![q(Prefix::ROOT, QueryBody::Fingerprint(vec![0; 7]))];
    assert!(matches!(responder.respond(&b, &r), Err(Error::Protocol(_))));

    r.queries = vec![q(Prefix::ROOT, QueryBody::Digests(vec![0; 8 * 17]))];
    assert!(matches!(
        responder.respond(&b, &r),
        Err(Error::LimitExceeded { what: "digest", .. })
    ));

    r.queries = vec![q(Prefix::ROOT, QueryBody::Digests(vec![])); 5];
    assert!(matches!(
        responder.respond(&b, &r),
        Err(Error::LimitExceeded { what: "query", .. })
    ));

    let mut r = base.clone();
    r.params.fingerprint_bytes = 3;
    assert!(matches!(
        responder.respond(&b, &r),
        Err(Error::InvalidParams(_))
    ));
    r.params = Params {
        resolve_keys_max: 60_000,
        ..Params::default()
    };
    assert!(matches!(
        responder.respond(&b, &r),
        Err(Error::InvalidParams(_))
    ));

    // A query for an empty subtree is fine: the answer is an empty resolution.
    let mut r = base;
    r.queries = vec![q(
        Prefix::of_key(&[0xff; 32], 200),
        QueryBody::Digests(vec![]),
    )];
    let reply = responder.respond(&b, &r).unwrap();
    assert_eq!(
        reply.answers,
        vec![Answer::Resolved {
            lacking: vec![],
            keys: vec![]
        }]
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Corrupting genuine replies byte by byte yields errors or a correct result, never a
    /// panic and never a wrong difference.
    #[test]
    fn corrupted_replies(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4), round in 0usize..4) {
        let keys = sorted(spread(0..600));
        let a = Tree::from_sorted(&keys[..500]).unwrap();
        let b = Tree::from_sorted(&keys[100..]).unwrap();
        let responder = Responder::default();
        let (mut session, mut request) = Initiator::start(&a, Config::default(), [5; 16]).unwrap();
        for i in 0.. {
            let mut reply = responder.respond_bytes(&b, &request.encode()).unwrap();
            if i == round {
                for (at, x) in &flips {
                    let n = reply.len();
                    reply[at % n] ^= x | 1;
                }
            }
            match session.handle_bytes(&a, &reply) {
                Ok(Step::Send(next)) => request = next,
                Ok(Step::Done(diff)) => {
                    // Success is only possible if the corruption did not change the facts.
                    prop_assert_eq!(diff.only_local, keys[..100].to_vec());
                    prop_assert_eq!(diff.only_remote, keys[500..].to_vec());
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

#[test]
fn honest_run_for_reference() {
    let (a, b) = trees();
    let (diff, _) = run(&a, &b, Config::default(), [0; 16]).unwrap();
    assert_eq!(diff.only_local.len(), 500);
    assert_eq!(diff.only_remote.len(), 500);
}

/// Each session parameter bound: the bound itself is accepted, one past it is refused,
/// so a peer's request cannot make the responder build answers larger than it allows.
#[test]
fn every_parameter_bound_is_enforced() {
    use sync_smt::bounds::*;
    // Large enough that only the bounds, not the message size, decide.
    let roomy = usize::MAX / 4;
    let accepts = |p: Params| p.validate(roomy);
    let with = |f: &dyn Fn(&mut Params)| {
        let mut p = Params::default();
        f(&mut p);
        p
    };
    for (name, at, past) in [
        (
            "fingerprint_bytes",
            with(&|p| p.fingerprint_bytes = FINGERPRINT_BYTES_MAX),
            with(&|p| p.fingerprint_bytes = FINGERPRINT_BYTES_MAX + 1),
        ),
        (
            "fingerprint_bytes",
            with(&|p| p.fingerprint_bytes = FINGERPRINT_BYTES_MIN),
            with(&|p| p.fingerprint_bytes = FINGERPRINT_BYTES_MIN - 1),
        ),
        (
            "digest_bytes",
            with(&|p| p.digest_bytes = FINGERPRINT_BYTES_MAX),
            with(&|p| p.digest_bytes = FINGERPRINT_BYTES_MAX + 1),
        ),
        (
            "keys_inline_max",
            with(&|p| p.keys_inline_max = KEYS_INLINE_MAX),
            with(&|p| p.keys_inline_max = KEYS_INLINE_MAX + 1),
        ),
        (
            "digests_max",
            with(&|p| p.digests_max = DIGESTS_MAX),
            with(&|p| p.digests_max = DIGESTS_MAX + 1),
        ),
        (
            "digests_max",
            with(&|p| p.digests_max = 1),
            with(&|p| p.digests_max = 0),
        ),
        (
            "resolve_keys_max",
            with(&|p| p.resolve_keys_max = RESOLVE_KEYS_MAX),
            with(&|p| p.resolve_keys_max = RESOLVE_KEYS_MAX + 1),
        ),
    ] {
        assert_eq!(accepts(at), Ok(()), "{name} at its bound");
        match accepts(past) {
            Err(Error::InvalidParams(why)) => assert!(why.starts_with(name), "{why}"),
            other => panic!("{name} past its bound: {other:?}"),
        }
    }
    // And the responder, which is what a peer reaches, refuses the same.
    let (_, b) = trees();
    let responder = Responder::new(Limits::default());
    let request = Request {
        salt: [0; 16],
        params: with(&|p| p.digests_max = DIGESTS_MAX + 1),
        want_root: true,
        queries: vec![],
    };
    assert!(matches!(
        responder.respond(&b, &request),
        Err(Error::InvalidParams("digests_max out of range"))
    ));
}
