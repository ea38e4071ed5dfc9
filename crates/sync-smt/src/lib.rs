//! A sparse Merkle tree over 256-bit keys and a multi-round diff whose cost follows the
//! number of differences, not the size of the set.
//!
//! This crate is the anti-entropy core of Weft, usable on its own: keys are plain
//! `[u8; 32]`, there is no dependency on other Weft crates, no async and no I/O.
//!
//! Invariants (filled by the `sync-smt` issue):
//! - the tree has a canonical shape, so its root depends only on the set of keys;
//! - leaves and inner nodes are hashed with blake3 under distinct domains;
//! - the diff is sans-IO: sessions consume and produce messages, never sockets;
//! - every limit a peer controls is bounded, and a violation is an error, not a panic.
