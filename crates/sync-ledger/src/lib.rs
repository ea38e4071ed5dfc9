//! The durable, storage-agnostic ledger of a Weft replica or server node.
//!
//! Everything a replica or node must not lose lives here: messages and their indexes,
//! the per-tenant event log, blobs, replication links with their checkpoints, dead
//! letters and registered identities. The engine above decides *what* to store
//! (validation, dependencies, scopes); the ledger makes storing it atomic and durable
//! and makes it fast to find again.
//!
//! # What it is not
//!
//! - Not a validator: [`Ledger::apply`] runs the merge rule but trusts that messages
//!   were validated and their dependencies checked by the caller.
//! - Not async: no tokio, no hyper. Change notification is a generation counter with a
//!   condvar ([`Ledger::wait_for_change`]) and callbacks ([`Ledger::add_listener`])
//!   that an async driver turns into wake-ups.
//! - Not a clock or a random source: times are passed in (`now_ms`), stream ids come
//!   from an injectable [`IdSource`], so a simulation replays a run from its seed.
//!
//! # Layers
//!
//! - [`store`]: the storage boundary, a small trait [`Store`] (named partitions, get,
//!   ordered scans, one atomic batch with an explicit [`Durability`]) with two
//!   backends, [`FjallStore`] (the default, on a directory) and [`MemoryStore`] (tests
//!   and simulation, with simulated power loss and fault injection). A store shared by
//!   several writer processes (the `sync-ledger-pg` crate's PostgreSQL store) also
//!   answers [`store::WriteTxn`]s: tenant-scoped locks and batched reads, so positions
//!   and tenant numbers stay right across processes.
//! - [`layout`]: every partition with its key layout, value type and invariants.
//! - [`Ledger`]: the typed stores on top. Messages and the event log
//!   ([`Ledger::apply`], [`Ledger::read_log`], lookups), blobs ([`Ledger::blobs`]),
//!   links ([`Ledger::links`]), dead letters ([`Ledger::dead_letters`]) and registered
//!   identities ([`Ledger::identities`]).
//!
//! # Invariants
//!
//! - Applying messages is one atomic batch: message, record head, indexes, pruning of
//!   superseded versions and log append are all visible after a crash, or none is.
//! - A commit acknowledged with a synced [`Durability`] was persisted with a sync
//!   (fjall itself only writes to OS buffers unless told otherwise).
//! - After a failed write the ledger is poisoned and refuses writes
//!   ([`Error::Poisoned`]) until reopened; corrupt entries are errors, never panics.
//! - Log positions only grow and are never reused; pruned versions leave holes.
//!
//! # Example
//!
//! ```
//! use sync_ledger::{Durability, Ledger, LedgerOutcome, LogQuery, LogRead};
//! use sync_types::*;
//!
//! let ledger = Ledger::builder().seed(7).open_in_memory()?;
//! let tenant = TenantId::new("did:example:alice")?;
//! let protocol = ProtocolName::new("https://example.com/notes")?;
//! let path = ProtocolPath::new("note")?;
//! let author = PrincipalId::new("did:example:alice")?;
//! let at = |ms| Hlc { wall_ms: ms, counter: 0, node: NodeId(1) };
//!
//! let configure = Message::Configure(Configure {
//!     tenant: tenant.clone(),
//!     protocol: protocol.clone(),
//!     definition: ProtocolDefinition::new(
//!         &protocol,
//!         vec![TypeRule { path: path.clone(), data_bytes_max: None }],
//!         vec![],
//!     )?,
//!     timestamp: at(1),
//!     author: author.clone(),
//! });
//! let record_id = RecordId::from_natural_key(&tenant, &protocol, b"groceries");
//! let first = Write {
//!     tenant: tenant.clone(),
//!     record_id,
//!     parent_id: None,
//!     protocol: protocol.clone(),
//!     path,
//!     context_id: ContextId::root(record_id),
//!     prev: None,
//!     timestamp: at(2),
//!     author,
//!     data: Some(DataRef::of(b"milk")),
//! };
//! let second = Write {
//!     prev: Some(Message::Write(first.clone()).cid()),
//!     timestamp: at(3),
//!     data: Some(DataRef::of(b"milk, eggs")),
//!     ..first.clone()
//! };
//!
//! // One atomic commit: both configure and first write are stored and logged.
//! let out = ledger.apply(
//!     &tenant,
//!     [(configure, None), (Message::Write(first), Some(b"milk".to_vec()))],
//!     Durability::SyncData,
//! )?;
//! assert!(out.iter().all(|a| a.outcome.is_applied()));
//!
//! // A later version: the record keeps its initial write and the new winner.
//! let out = ledger.apply(
//!     &tenant,
//!     [(Message::Write(second.clone()), Some(b"milk, eggs".to_vec()))],
//!     Durability::SyncData,
//! )?;
//! assert!(matches!(out[0].outcome, LedgerOutcome::Applied { .. }));
//! let head = ledger.record_head(&tenant, &record_id)?.unwrap();
//! assert_eq!(head.winner.cid, Message::Write(second).cid());
//!
//! // Read the log from the start: three entries, in order.
//! let LogRead::Page(page) = ledger.read_log(&tenant, &LogQuery::after(None, 100))? else {
//!     unreachable!("a fresh cursor is never a gap")
//! };
//! assert_eq!(page.entries.len(), 3);
//! assert!(!page.has_more);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod blob_refs;
mod blobs;
pub mod bus;
mod causality;
mod error;
mod hashed;
pub mod layout;
pub mod lease;
mod ledger;
mod log;
mod lookups;
mod notify;
mod pending;
mod prefetch;
mod registry;
mod staged_uploads;
pub mod store;
mod upgrade;

pub use blobs::{
    BlobContent, BlobReader, BlobUpload, Blobs, ChunkIter, InStore, UPLOAD_OWNER_TTL_MS,
    UploadCursor,
};
pub use bus::{BusNews, BusSink, ChangeBus};
pub use error::{BackendError, Error, Result};
pub use hashed::HashedMessage;
pub use layout::UploadState;
pub use lease::{LeaseGuard, Leases};
pub use ledger::{
    APPLY_BATCH_MESSAGES_MAX, IdSource, Ledger, LedgerApplied, LedgerBuilder, LedgerOutcome,
    OsRandom, RecordInfo, SeededIds, StoredMessage, protocol_mismatch,
};
pub use log::{LOG_PAGE_ENTRIES_MAX, LogEntry, LogInfo, LogPage, LogQuery, LogRead};
pub use lookups::CidIter;
pub use notify::ListenerId;
pub use prefetch::RecordRows;
pub use registry::{
    DEAD_LETTER_ERROR_BYTES_MAX, DeadLetterFilter, DeadLetters, Identities, Links, ReachedNode,
    RegisteredIdentity,
};
pub use store::{Durability, FjallStore, MemoryStore, Store};
pub use sync_types::merge::Conflict;
