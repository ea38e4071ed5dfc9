//! Weft's pure types: ids, messages and their canonical encoding, the hybrid logical
//! clock, the merge rule, progress tokens, scopes and their hashing, authorizations,
//! link state, apply outcomes, dead letters, health and events.
//!
//! Every other Weft crate depends on this one, and other projects may too. It is plain
//! values and pure functions: **no async, no I/O, no clock reads** except the
//! [`SystemClock`] an application may choose to inject.
//!
//! # Two encodings, on purpose
//!
//! - Everything that is **hashed** (message ids, scope ids, projection ids, authorization
//!   epochs) uses a small hand-written canonical encoding with a version in front, pinned
//!   by golden vectors (`tests/golden.rs`), so no library upgrade can change an id.
//! - Everything else that goes **on the wire or on disk** goes through [`codec`]: a
//!   postcard 1.x body in a one-byte versioned envelope, decoded with an explicit size
//!   limit, with every validated type re-checked on decode.
//!
//! # Main types
//!
//! - ids: [`TenantId`], [`ProtocolName`], [`ProtocolPath`], [`RecordId`], [`ContextId`],
//!   [`Cid`], [`Endpoint`];
//! - time: [`Hlc`], [`HlcClock`], [`Clock`];
//! - messages: [`Message`] ([`Configure`], [`Write`], [`Delete`]), [`Message::cid`],
//!   [`Dependency`]; the merge rule in [`merge`];
//! - scopes: [`Scope`] and the scope gate [`Scope::gate`], which every door calls with a
//!   [`Direction`] and a record lookup ([`InitialWrites`]);
//! - replication: [`ProgressToken`], [`Gap`], [`Authorization`], [`LinkKey`],
//!   [`LinkStatus`], [`LinkState`], [`ApplyOutcome`], [`DeadLetter`], [`HealthSummary`],
//!   [`SyncEvent`].
//!
//! # Example
//!
//! ```
//! use sync_types::*;
//!
//! let tenant = TenantId::new("did:example:alice")?;
//! let protocol = ProtocolName::new("https://example.com/notes")?;
//! let path = ProtocolPath::new("note")?;
//! let author = PrincipalId::new("did:example:alice")?;
//! let clock = ManualClock::new(1_700_000_000_000);
//! let mut hlc = HlcClock::new(&clock, NodeId(1));
//!
//! let record_id = RecordId::from_natural_key(&tenant, &protocol, b"groceries");
//! let write = Message::Write(Write {
//!     tenant: tenant.clone(),
//!     record_id,
//!     parent_id: None,
//!     protocol: protocol.clone(),
//!     path,
//!     context_id: ContextId::root(record_id),
//!     prev: None,
//!     timestamp: hlc.tick(),
//!     author,
//!     data: Some(DataRef::of(b"milk, eggs")),
//! });
//! write.validate()?;
//!
//! // The id is a hash of the canonical encoding; the wire form is a separate codec.
//! let bytes = codec::encode(&write);
//! let decoded = codec::decode_message(&bytes, codec::MESSAGE_BYTES_MAX)?;
//! assert_eq!(decoded.cid(), write.cid());
//!
//! // Scopes hash to stable ids whatever order they were built in.
//! let a = Scope::protocols(vec![protocol.clone(), ProtocolName::new("x")?])?;
//! let b = Scope::protocols(vec![ProtocolName::new("x")?, protocol])?;
//! assert_eq!(scope_id(&a), scope_id(&b));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod auth;
mod canonical;
pub mod codec;
mod error;
mod gate;
mod hlc;
mod ids;
mod known;
mod link;
pub mod merge;
mod message;
mod outcome;
mod progress;
mod scope;
mod status;

pub use auth::{
    AUTHORIZATION_EPOCH_VERSION, Actions, Authorization, AuthorizationEpoch, Delegation,
    GRANTS_MAX, Grant, authorization_epoch,
};
pub use error::{DecodeError, DriftError, Error, TransitionError, ValidationError};
pub use gate::{BatchInitialWrites, InitialWrites, NoInitialWrites, RecordPlace};
pub use hlc::{Clock, DRIFT_MS_MAX_DEFAULT, Hlc, HlcClock, ManualClock, NodeId, SystemClock};
pub use ids::{
    Cid, ContextId, ENDPOINT_BYTES_MAX, Endpoint, GRANT_ID_BYTES_MAX, GrantId, PATH_DEPTH_MAX,
    PATH_SEGMENT_BYTES_MAX, PRINCIPAL_ID_BYTES_MAX, PROTOCOL_NAME_BYTES_MAX, PrincipalId,
    ProtocolName, ProtocolPath, RecordId, StreamId, TENANT_ID_BYTES_MAX, TenantId,
};
pub use known::{KNOWN_RANGES_MAX, KnownRanges};
pub use link::{Connectivity, DirectionCheckpoint, LinkCounters, LinkKey, LinkState, LinkStatus};
pub use message::{
    CANONICAL_VERSION, Configure, DataRef, Delete, Dependency, INLINE_DATA_BYTES_MAX, Message,
    PROTOCOL_TYPES_MAX, PROTOCOL_USES_MAX, ProtocolDefinition, TypeRule, Write,
};
pub use outcome::{ApplyOutcome, MISSING_MAX, REASON_BYTES_MAX, truncate_reason};
pub use progress::{Gap, GapReason, ProgressToken};
pub use scope::{
    PROJECTION_ID_VERSION, Projection, ProjectionEntry, ProjectionId, ProtocolSet,
    SCOPE_ID_VERSION, SCOPE_PREFIXES_MAX, SCOPE_PROTOCOLS_MAX, Scope, ScopeClass, ScopeId,
    projection_id, scope_id,
};
pub use status::{
    DeadLetter, DeadLetterCategory, Direction, HealthSummary, ReconcileReason, SyncEvent,
};
