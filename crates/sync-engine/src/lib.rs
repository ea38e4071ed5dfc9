//! The Weft replica, server node and replication engine.
//!
//! A replica is a local store (ledger + sparse Merkle tree index + apply pipeline) that
//! an application embeds; a server node serves many tenants to many replicas; the
//! replication engine keeps the two in step through links with durable checkpoints in
//! both directions.
//!
//! Invariants:
//! - durable checkpoints are the truth; live delivery only accelerates discovery;
//! - a checkpoint advances only over a contiguous run of durably applied work
//!   (`delivery::DeliveryTracker`);
//! - replicas that have applied the same messages hold the same state;
//! - a local version orders after the version it replaces and after everything its
//!   replica ever stored, across restarts (the ledger's durable HLC high-water mark), and
//!   its [`Receipt`] says whether it won ([`WriteOutcome`]);
//! - a replica keeps one node id for the life of its store, so a conflict policy's
//!   "local" means the same device after a restart;
//! - the per-link logic is a sans-IO state machine ([`machine::LinkMachine`]) driven by a
//!   thin tokio driver: no clock reads, no sockets and no tokio inside it.

#![deny(missing_docs)]

pub mod blob;
mod closure;
mod conflict;
mod delivery;
mod error;
mod index;
pub mod link_news;
mod link_status;
pub mod live;
pub mod machine;
pub mod node;
mod order;
pub mod replica;
pub mod sync;

pub use blob::{BlobGc, Residency};
pub use error::{Error, Result};
pub use node::ReplicaHandler;
pub use replica::{
    BatchOp, Change, ConflictInfo, ConflictPolicy, Expected, Origin, Receipt, Record, RecordKey,
    Replica, ReplicaBuilder, Resolution, WriteBatch, WriteOutcome, WriteRequest,
};
pub use sync::{Engine, EngineBuilder, Identity, SyncConfig, SyncReport};
