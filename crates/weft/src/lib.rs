//! Weft for applications: one dependency for a local-first app.
//!
//! Weft keeps an application's data in a local store that works offline and keeps that
//! store in sync with a node, and through it with the user's other devices. This crate
//! is what an application depends on: typed collections of records under natural keys,
//! queries by key range, one change feed, transactions, and sync with a node, over the
//! engine crates it re-exports ([`engine`], [`types`], [`transport`], [`ledger`]) for
//! what it does not cover. It is not the node's operator tool (that is the `weft`
//! CLI, `cargo run -p sync-cli`) and not a schema system: a collection is one protocol
//! with one record type, configured the first time it is used.
//!
//! Every call that touches the disk runs on tokio's blocking pool: none blocks an
//! async worker. Call them from a tokio runtime.
//!
//! # The guide
//!
//! Each step below runs as a test (`cargo test -p weft --doc`), against a real node on
//! 127.0.0.1 that the example serves from the same process ([`LocalNode`]; in
//! production the node is `weft serve` on a server and the app is given its URL and a
//! token).
//!
//! An application's `Cargo.toml` needs, besides `weft`: `tokio` (with the `macros` and
//! `rt-multi-thread` features for `#[tokio::main]`) and `serde` (with `derive`, for
//! `#[derive(Serialize, Deserialize)]` on its record types). The prelude brings
//! [`StreamExt`](prelude::StreamExt) for reading the change feed.
//!
//! ## 1. Open a store and write
//!
//! ```
//! use weft::prelude::*;
//!
//! #[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
//! struct Todo { title: String, done: bool }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> weft::Result<()> {
//! # let dir = tempfile::tempdir()?;
//! // A store per user (tenant), in a directory of the app's.
//! let db = Weft::open(dir.path(), "alice").await?;
//! let todos = db.collection::<Todo>("todos").await?;
//!
//! todos.put("buy-milk", &Todo { title: "Buy milk".into(), done: false }).await?;
//! let entry = todos.get("buy-milk").await?.expect("just written");
//! assert_eq!(entry.key, "buy-milk");
//! assert!(!entry.value.done);
//!
//! // Queries read a key index: a prefix or range, either order, a page at a time.
//! todos.put("buy-eggs", &Todo { title: "Buy eggs".into(), done: false }).await?;
//! todos.put("call-bob", &Todo { title: "Call Bob".into(), done: true }).await?;
//! let page = todos.query(Query::prefix("buy-").limit(1)).await?;
//! assert_eq!(page.entries[0].key, "buy-eggs");
//! let next = todos.query(Query::prefix("buy-").limit(1).after(page.next.unwrap())).await?;
//! assert_eq!(next.entries[0].key, "buy-milk");
//! assert_eq!(todos.count().await?, 3);
//!
//! // Several writes in one atomic commit.
//! let mut tx = Transaction::new();
//! tx.put(&todos, "buy-milk", &Todo { title: "Buy milk".into(), done: true });
//! tx.delete(&todos, "call-bob");
//! db.commit(tx).await?;
//! assert_eq!(todos.count().await?, 2);
//! # Ok(()) }
//! ```
//!
//! ## 2. Sync with a node, then live
//!
//! [`Weft::connect`] registers the node and a token (it is stored: the next open syncs
//! without it); the token's principal becomes the author of this store's writes.
//! [`Weft::sync`] runs one pass and is `Ok` only when every link converged;
//! [`Weft::start_live`] keeps syncing as writes happen. [`Weft::changes`] is one feed of
//! every change, local or remote, from a token or from now, then live: open it before
//! you start live sync or write, so the first changes are in it, and pin it
//! (`Box::pin`) to call `next()`. Each device of a user gets its own token whose
//! principal names the device (`owner_token("alice", "alice-phone", …)`): that
//! principal is the author [`Entry::author`] shows for the device's writes.
//!
//! ```
//! use weft::prelude::*;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> weft::Result<()> {
//! let node = LocalNode::start_in_memory("127.0.0.1:0".parse().unwrap(), TokenKey::derive(b"node secret")).await?;
//! let expires = weft::expires_in(std::time::Duration::from_secs(3600));
//!
//! let laptop = Weft::builder("alice").in_memory().await?;
//! let phone = Weft::builder("alice").in_memory().await?;
//! for (device, name) in [(&laptop, "alice-laptop"), (&phone, "alice-phone")] {
//!     device.connect(&node.url(), &node.owner_token("alice", name, expires)?).await?;
//! }
//! let notes = laptop.collection::<String>("notes").await?;
//! notes.put("hello", &"written on the laptop".to_string()).await?;
//! laptop.sync().await?;
//! phone.sync().await?;
//! let on_phone = phone.collection::<String>("notes").await?;
//! let hello = on_phone.get("hello").await?.unwrap();
//! assert_eq!((hello.value.as_str(), hello.author.as_str()), ("written on the laptop", "alice-laptop"));
//!
//! // Live: the phone watches its feed while the laptop writes.
//! let mut feed = Box::pin(phone.changes(Since::Now).await?);
//! phone.start_live().await?;
//! laptop.start_live().await?;
//! notes.put("later", &"arrives by itself".to_string()).await?;
//! let change = feed.next().await.unwrap()?;
//! assert_eq!(change.key.as_deref(), Some("later"));
//! assert_eq!(change.source, Source::Remote);
//! assert_eq!(change.value::<String>()?.as_deref(), Some("arrives by itself"));
//! laptop.close().await?;
//! phone.close().await?;
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## 3. Handle a conflict
//!
//! Two kinds. On one device, two writers of one record: write with the version you
//! read ([`Collection::put_if`]) and the second writer gets
//! [`engine::Error::VersionMismatch`] instead of silently overwriting. Across devices,
//! edits made offline to the same record: every replica picks the same winner
//! (the later timestamp; a [`ConflictPolicy`] can say otherwise), and reports the
//! conflict as an event.
//!
//! ```
//! use weft::prelude::*;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> weft::Result<()> {
//! let db = Weft::builder("alice").in_memory().await?;
//! let docs = db.collection::<String>("docs").await?;
//! docs.put("plan", &"v1".to_string()).await?;
//! let read = docs.get("plan").await?.unwrap();
//! docs.put("plan", &"someone else's edit".to_string()).await?;
//! let stale = docs.put_if("plan", &"my edit".to_string(), Expected::Version(read.version)).await;
//! assert!(matches!(stale, Err(weft::Error::Engine(engine::Error::VersionMismatch { .. }))));
//!
//! // Offline edits on two devices converge to one winner after a sync.
//! let node = LocalNode::start_in_memory("127.0.0.1:0".parse().unwrap(), TokenKey::derive(b"k")).await?;
//! let token = node.owner_token("alice", "alice", u64::MAX)?;
//! let (a, b) = (Weft::builder("alice").in_memory().await?, Weft::builder("alice").in_memory().await?);
//! a.connect(&node.url(), &token).await?;
//! b.connect(&node.url(), &token).await?;
//! let mut conflicts = b.replica().events();
//! a.collection::<String>("docs").await?.put("plan", &"from a".to_string()).await?;
//! b.collection::<String>("docs").await?.put("plan", &"from b".to_string()).await?;
//! a.sync().await?;
//! b.sync().await?;
//! a.sync().await?;
//! let on_a = a.collection::<String>("docs").await?.get("plan").await?.unwrap();
//! let on_b = b.collection::<String>("docs").await?.get("plan").await?.unwrap();
//! assert_eq!(on_a.value, on_b.value);
//! let mut saw_conflict = false;
//! while let Ok(event) = conflicts.try_recv() {
//!     saw_conflict |= matches!(event, SyncEvent::Conflict { .. });
//! }
//! assert!(saw_conflict);
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## 4. Show sync status
//!
//! [`Weft::status`] sums up what a status bar shows; [`Weft::links`] has each node's
//! details. A sync that fails is an `Err` naming the link and why ([`SyncError`]),
//! with the full report.
//!
//! ```
//! use weft::prelude::*;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> weft::Result<()> {
//! let node = LocalNode::start_in_memory("127.0.0.1:0".parse().unwrap(), TokenKey::derive(b"k")).await?;
//! let db = Weft::builder("alice").in_memory().await?;
//! db.connect(&node.url(), &node.owner_token("alice", "alice", u64::MAX)?).await?;
//! db.collection::<u32>("counters").await?.put("visits", &1).await?;
//!
//! let status = db.status().await?;
//! assert!(status.pending_outbound > 0, "written, not yet sent");
//! db.sync().await?;
//! let status = db.status().await?;
//! assert_eq!(status.pending_outbound, 0);
//! assert!(status.healthy && status.last_sync_ms.is_some());
//!
//! // The node goes away: the sync is an error that names the link.
//! let url = node.url();
//! node.shutdown().await;
//! let err = db.sync().await.unwrap_err();
//! let weft::Error::Sync(failed) = err else { panic!("{err}") };
//! assert_eq!(failed.link.as_ref().unwrap().endpoint.as_str(), url);
//! assert!(failed.to_string().contains(&url));
//! # Ok(()) }
//! ```
//!
//! # Records
//!
//! A collection `name` is the protocol `weft:collection/<name>` with one type at
//! [`COLLECTION_PATH`]. Each record's payload starts with a small versioned header that
//! carries its natural key and codec ([`Codec`]: JSON by default, postcard by choice;
//! [`Collection::put_raw`] for bytes), so the key travels with the record to every
//! device and a read checks it against the record's id. Values above the inline limit
//! travel as blobs; [`Entry::residency`] says whether one has arrived. Until it has,
//! [`Collection::get`] answers [`Error::NotArrived`], and queries and counts leave the
//! record out: its key travels inside the value, so the key index lists it once the
//! blob is here (with `blob_fetch` on, the default, that is the same sync).

#![deny(missing_docs)]

/// The README's program, run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeProgram;

mod codec;
mod collection;
mod error;
mod feed;
mod index;
mod node;
mod store;

pub use codec::{Codec, KEY_BYTES_MAX};
pub use collection::{Collection, Entry, PAGE_LEN_MAX, Page, Query, Transaction};
pub use error::{Error, Result, SyncError};
pub use feed::{Change, Since, Source};
pub use node::{LocalNode, expires_in};
pub use store::{COLLECTION_PATH, LIVE_STOP_TIMEOUT, Weft, WeftBuilder};

pub use sync_engine::replica::Expected;
pub use sync_engine::{ConflictPolicy, Receipt, Residency, SyncReport, WriteOutcome};
pub use sync_transport::TokenKey;
pub use sync_types::{HealthSummary, LinkState, LinkStatus, SyncEvent};

/// The engine: the replica, the sync engine, the node handler (explicit protocols and
/// type rules, conflict policies, blobs).
pub use sync_engine as engine;
/// The storage engine underneath (durability modes).
pub use sync_ledger as ledger;
/// The transport: tokens, the HTTP server and client.
pub use sync_transport as transport;
/// Plain values: ids, messages, scopes, link states.
pub use sync_types as types;

/// What most applications import: `use weft::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Change, Codec, Collection, Entry, Expected, LocalNode, Page, Query, Since, Source,
        SyncEvent, TokenKey, Transaction, Weft, engine,
    };
    pub use crate::{ConflictPolicy, Receipt, Residency};
    /// `next()` on a change feed.
    pub use futures_util::StreamExt;
    pub use serde::{Deserialize, Serialize};
}
