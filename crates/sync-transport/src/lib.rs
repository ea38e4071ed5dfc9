//! Weft's wire protocol: versioned frames over HTTP request/reply (hyper) and WebSocket
//! subscriptions (tokio-tungstenite), with capability tokens and input limits.
//!
//! The transport moves typed frames and checks credentials; it does not interpret ledger
//! or tree semantics.
//!
//! Invariants (filled by the `sync-transport` issue):
//! - framing is pure code over bytes, and every decoder enforces explicit limits;
//! - a malformed or oversized frame gets a clear error and never crashes or stalls a node;
//! - every request is checked against its capability token before anything is read or
//!   written.
