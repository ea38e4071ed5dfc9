//! The durable, storage-agnostic ledger of a Weft replica or server node.
//!
//! Everything that must survive a crash lives here: messages and their indexes, the
//! per-tenant event log, blobs, replication links with their checkpoints, dead letters
//! and registered identities. Storage sits behind a small trait with a fjall backend
//! (the default) and an in-memory backend (tests and simulation).
//!
//! Invariants (filled by the `sync-ledger` issue):
//! - applying a message is one atomic batch: message, index changes, pruning and log
//!   append are all visible after a crash, or none of them is;
//! - a commit acknowledged as durable has been persisted with a sync mode;
//! - after a failed fsync the ledger is poisoned and refuses writes;
//! - no dependency on an async runtime or on hyper.
