//! The `weft` command-line tool (filled by the `sync-cli` issue): serve a node, read and
//! write local replicas, sync, watch, inspect links and dead letters, issue tokens, and a
//! quickstart that shows two replicas converge through a node.
//!
//! Invariant: this is the only crate that knows about humans (tables, colours, progress
//! bars, JSON for scripts) and the only one that uses `anyhow` and `clap`.
