//! Golden vectors: the hash definition and the wire format are pinned. If one of these
//! changes, the on-wire protocol version and every stored root change with it.

mod common;

use common::{sorted, spread};
use sync_smt::{
    Answer, Error, Hash, Limits, Params, Prefix, Query, QueryBody, Request, Response, Tree, View,
    hash_sorted, leaf_hash,
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn root_vectors() {
    let cases: Vec<(&str, Vec<[u8; 32]>, &str)> = vec![
        (
            "empty",
            vec![],
            "0000000000000000000000000000000000000000000000000000000000000000",
        ),
        (
            "zero key",
            vec![[0; 32]],
            "0a0d2ae2d5a4e93a997fd927bfba5bd19e7d0d6fed52fbfbc851bf0f2270b009",
        ),
        (
            "ff key",
            vec![[0xff; 32]],
            "0bc29b0629f6023b07dc4e83f05338e3f7e59d907e21e5a6eb062d237d32ab1c",
        ),
        (
            "zero and ff",
            vec![[0; 32], [0xff; 32]],
            "1d34e0fb513302d45978b2f1bf744d8a5edb697ebdf1e45326acaec6f118e61f",
        ),
        (
            "sharing 255 bits",
            vec![[0; 32], {
                let mut k = [0; 32];
                k[31] = 1;
                k
            }],
            "f3fa983f132eace0230fa977e897ceb0c9098b4f270ed644b57cffb58e436747",
        ),
        (
            "1000 spread keys",
            spread(0..1000),
            "1d91c251099c1158dabe09196760e591b35752790990d0163d6e2a03fbb762d6",
        ),
    ];
    for (name, keys, expected) in cases {
        let keys = sorted(keys);
        let root = Tree::from_sorted(&keys).unwrap().root();
        assert_eq!(root.to_hex(), expected, "{name}");
        assert_eq!(hash_sorted(&keys), root, "{name}");
    }
}

#[test]
fn leaf_and_inner_definition() {
    // The definition written out with blake3 directly, independent of the crate's code.
    let leaf_key = blake3::derive_key("weft sync-smt v1 leaf", b"");
    let inner_key = blake3::derive_key("weft sync-smt v1 inner", b"");
    let (a, b) = ([0u8; 32], [0xffu8; 32]);
    let la = *blake3::keyed_hash(&leaf_key, &a).as_bytes();
    let lb = *blake3::keyed_hash(&leaf_key, &b).as_bytes();
    assert_eq!(leaf_hash(&a), Hash(la));
    let mut both = [0u8; 64];
    both[..32].copy_from_slice(&la);
    both[32..].copy_from_slice(&lb);
    let inner = *blake3::keyed_hash(&inner_key, &both).as_bytes();
    assert_eq!(Tree::from_keys([a, b]).root(), Hash(inner));
}

#[test]
fn subtree_vectors() {
    let tree = Tree::from_sorted(&sorted(spread(0..1000))).unwrap();
    let prefix = Prefix::of_key(&[0xa5; 32], 6);
    assert_eq!(tree.count_under(&prefix), 15);
    assert_eq!(
        tree.subtree_hash(&prefix).to_hex(),
        "e523761422918f14f8d811d32e873c8dd1d11d1c0dc4c9d6dcbc85866879599a"
    );
    let at4 = tree.subtree_hashes_at(4);
    assert_eq!(at4.len(), 16);
    assert_eq!(
        at4[5].1.to_hex(),
        "03509a07d3a483968ddbd87354e31c5ceb03d7f5b22307fb347c4cb6c1c2f9f6"
    );
}

fn golden_request() -> Request {
    Request {
        salt: [0x11; 16],
        params: Params::default(),
        want_root: true,
        queries: vec![
            Query {
                prefix: Prefix::ROOT,
                body: QueryBody::Fingerprint(vec![1, 2, 3, 4, 5, 6, 7, 8]),
            },
            Query {
                prefix: Prefix::of_key(&[0xab; 32], 12),
                body: QueryBody::Split {
                    mask: 0b101,
                    fingerprints: vec![9; 16],
                },
            },
            Query {
                prefix: Prefix::of_key(&[0xff; 32], 256),
                body: QueryBody::Digests(vec![7; 8]),
            },
        ],
    }
}

fn golden_response() -> Response {
    Response {
        root: Some(Hash([0x22; 32])),
        answers: vec![
            Answer::Same,
            Answer::Children {
                mask: 0b111,
                views_mask: 0b110,
                views: vec![
                    View::Keys(vec![[0x33; 32]]),
                    View::Split {
                        mask: 1,
                        fingerprints: vec![4; 8],
                    },
                ],
            },
            Answer::Resolved {
                lacking: vec![1],
                keys: vec![],
            },
        ],
    }
}

const REQUEST_HEX: &str = "01111111111111111111111111111111110808041080200103010000080102030405060708030caba0010510090909090909090909090909090909092100ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff02080707070707070707";
const RESPONSE_HEX: &str = "0101222222222222222222222222222222222222222222222222222222222222222203000207060200013333333333333333333333333333333333333333333333333333333333333333010108040404040404040403010100";

#[test]
fn wire_vectors() {
    let limits = Limits::default();
    assert_eq!(hex(&golden_request().encode()), REQUEST_HEX);
    assert_eq!(hex(&golden_response().encode()), RESPONSE_HEX);
    assert_eq!(
        Request::decode(&golden_request().encode(), &limits).unwrap(),
        golden_request()
    );
    assert_eq!(
        Response::decode(&golden_response().encode(), &limits).unwrap(),
        golden_response()
    );
}

#[test]
fn corrupted_wire_vectors() {
    let limits = Limits::default();
    let request = golden_request().encode();
    // Truncated at every length: always an error, never a panic.
    for n in 0..request.len() {
        assert!(
            Request::decode(&request[..n], &limits).is_err(),
            "truncated to {n}"
        );
    }
    // A prefix whose length byte disagrees with its bytes.
    let mut bad = request.clone();
    let at = request.len() - 8 - 1 - 1 - 33; // the 256-bit prefix's length byte
    assert_eq!(bad[at], 0x00);
    bad[at] = 0x08;
    assert!(matches!(
        Request::decode(&bad, &limits),
        Err(Error::Malformed(_))
    ));
    // An unknown enum tag.
    let mut bad = golden_response().encode();
    let tag = 1 + 1 + 32 + 1; // version, Some, root, answer count
    bad[tag] = 9;
    assert!(matches!(
        Response::decode(&bad, &limits),
        Err(Error::Malformed(_))
    ));
}
