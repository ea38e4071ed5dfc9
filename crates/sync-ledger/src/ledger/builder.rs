//! Opening a [`Ledger`]: where its stream ids come from ([`IdSource`]) and the
//! [`LedgerBuilder`] options.

use std::path::Path;
use std::sync::Arc;

use sync_types::StreamId;

use super::Ledger;
use crate::blobs::{BlobContent, InStore};
use crate::error::Result;
use crate::store::{FjallStore, MemoryStore, Store};

/// A source of random stream ids, injectable so a simulation can replay a run.
pub trait IdSource: Send {
    /// A fresh stream id.
    fn stream_id(&mut self) -> StreamId;
}

/// Stream ids from the operating system's random source (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRandom;

impl IdSource for OsRandom {
    fn stream_id(&mut self) -> StreamId {
        let mut bytes = [0u8; 16];
        // Without OS randomness the machine cannot run anything we need; there is no
        // sensible fallback that keeps stream ids unique across restarts.
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        StreamId::from_bytes(bytes)
    }
}

/// Stream ids from a seeded generator (splitmix64): the same seed gives the same ids,
/// for deterministic simulation and tests.
#[derive(Clone, Copy, Debug)]
pub struct SeededIds {
    state: u64,
}

impl SeededIds {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl IdSource for SeededIds {
    fn stream_id(&mut self) -> StreamId {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        StreamId::from_bytes(bytes)
    }
}

/// Options for opening a [`Ledger`].
#[must_use]
pub struct LedgerBuilder {
    ids: Box<dyn IdSource>,
    content: Arc<dyn BlobContent>,
}

impl std::fmt::Debug for LedgerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerBuilder").finish_non_exhaustive()
    }
}

impl Default for LedgerBuilder {
    fn default() -> Self {
        Self {
            ids: Box::new(OsRandom),
            content: Arc::new(InStore),
        }
    }
}

impl LedgerBuilder {
    /// Where stream ids come from. Default: [`OsRandom`].
    pub fn id_source(mut self, ids: impl IdSource + 'static) -> Self {
        self.ids = Box::new(ids);
        self
    }

    /// Shorthand for `id_source(SeededIds::new(seed))`.
    pub fn seed(self, seed: u64) -> Self {
        self.id_source(SeededIds::new(seed))
    }

    /// Where blob content (chunks) lives. Default: [`InStore`], rows of the ledger's
    /// store; everything else about blobs stays in the store whatever this is.
    pub fn blob_content(mut self, content: Arc<dyn BlobContent>) -> Self {
        self.content = content;
        self
    }

    /// Opens the ledger on any store.
    pub fn open(self, store: impl Store) -> Result<Ledger> {
        Ledger::open_with(Arc::new(store), self.ids, self.content)
    }

    /// Opens the ledger on a fjall database in `path` (created when missing).
    pub fn open_fjall(self, path: impl AsRef<Path>) -> Result<Ledger> {
        self.open(FjallStore::open(path)?)
    }

    /// Opens the ledger on a new, empty in-memory store.
    pub fn open_in_memory(self) -> Result<Ledger> {
        self.open(MemoryStore::new())
    }
}
