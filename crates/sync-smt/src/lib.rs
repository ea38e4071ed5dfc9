//! A sparse Merkle tree over 256-bit keys and a multi-round diff whose cost follows the
//! number of differences, not the size of the set.
//!
//! This crate is the anti-entropy core of Weft, usable on its own: keys are plain
//! `[u8; 32]`, there is no dependency on other Weft crates, no async and no I/O.
//!
//! # What it is
//!
//! - [`Tree`]: a set of keys with a canonical Merkle root, the hash of any bit prefix's
//!   subtree, the keys under a prefix, and the non-empty subtree hashes at a depth.
//! - [`Initiator`] and [`Responder`]: the two sides of a sans-IO diff. The initiator sends
//!   [`Request`]s and consumes [`Response`]s until it yields a [`Diff`]: exactly the keys only
//!   it holds (`only_local`) and only the responder holds (`only_remote`). The responder is
//!   stateless: every request carries what it needs. Messages encode to compact binary
//!   (a version byte and postcard) with explicit size limits.
//!
//! # What it is not
//!
//! Not a store (the tree lives in memory; persist the keys elsewhere and rebuild with
//! [`Tree::from_sorted`]), not a transport (move the bytes however you like), not a map
//! (keys only; fetch the values by key once you know which are missing), and not a proof
//! system (it does not produce inclusion proofs).
//!
//! # The hash
//!
//! The root of a set `S` is `H(S)`: `H({}) = `[`Hash::EMPTY`] (zeros),
//! `H({k}) = blake3::keyed_hash(LEAF_KEY, k)`, and for two or more keys split at the first
//! bit where the smallest and largest key differ, `H(S) = blake3::keyed_hash(INNER_KEY,
//! H(S0) || H(S1))`, with `LEAF_KEY = blake3::derive_key("weft sync-smt v1 leaf", b"")` and
//! `INNER_KEY = blake3::derive_key("weft sync-smt v1 inner", b"")`. Bits are numbered from
//! the most significant bit of byte 0. This is a depth-256 binary sparse Merkle tree in
//! which a subtree holding one key is represented by its leaf and single-child chains are
//! skipped, so the root depends only on the set, and the hash of the subtree under a prefix
//! is the hash of the keys under it. The golden vectors in `tests/golden.rs` pin it.
//!
//! # The diff
//!
//! Both sides walk the tree 4 bits (16 children) per message. The initiator sends, per
//! differing prefix, its children's salted fingerprints (or digests of its keys when it has
//! at most [`Params::digests_max`] there); the responder compares, and answers only for the
//! children that differ, with its own children's fingerprints or, when it holds few keys
//! there, the keys themselves. Fingerprints and digests are shortened (8 bytes by default)
//! and keyed by a per-session salt; a final comparison of full 32-byte roots turns any
//! collision into a retry with a fresh salt, never into a missed difference. All counts,
//! lengths and depths a peer controls are bounded; a violation is an [`Error`].
//!
//! # Example
//!
//! ```
//! use sync_smt::{Config, Initiator, Responder, Step, Tree};
//!
//! let ours = Tree::from_keys((0u8..100).map(|i| [i; 32]));
//! let theirs = Tree::from_keys((1u8..101).map(|i| [i; 32]));
//! assert_ne!(ours.root(), theirs.root());
//!
//! let responder = Responder::new(Default::default());
//! // The salt comes from the caller (a seeded RNG in real use).
//! let (mut session, mut request) = Initiator::start(&ours, Config::default(), [42; 16])?;
//! let diff = loop {
//!     // Any transport: here, a function call on encoded bytes.
//!     let response = responder.respond_bytes(&theirs, &request.encode())?;
//!     match session.handle_bytes(&ours, &response)? {
//!         Step::Send(next) => request = next,
//!         Step::Done(diff) => break diff,
//!     }
//! };
//! assert_eq!(diff.only_local, vec![[0; 32]]);
//! assert_eq!(diff.only_remote, vec![[100; 32]]);
//! # Ok::<(), sync_smt::Error>(())
//! ```
//!
//! Invariants:
//! - the tree has a canonical shape, so its root depends only on the set of keys;
//! - leaves and inner nodes are hashed with blake3 under distinct domains;
//! - the diff is sans-IO: sessions consume and produce messages, never sockets;
//! - every limit a peer controls is bounded, and a violation is an error, not a panic.

#![deny(missing_docs)]

mod diff;
mod error;
mod hash;
mod tree;
mod wire;

pub use diff::{Config, Diff, Initiator, Responder, Step};
pub use error::Error;
pub use hash::{Hash, Key, Prefix, hash_sorted, leaf_hash};
pub use tree::Tree;
pub use wire::{
    Answer, Limits, PROTOCOL_VERSION, Params, Query, QueryBody, Request, Response, View, bounds,
};
