//! Opening a replica: [`ReplicaBuilder`].

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use sync_ledger::{Durability, Ledger};
use sync_types::{Clock, HlcClock, NodeId, ProtocolName, SystemClock};
use tokio::sync::broadcast;

use crate::conflict::{ConflictPolicy, Policies};
use crate::error::Result;
use crate::index::TreeIndex;

use super::{CHANNEL_CAPACITY, Inner, Replica, random_u64};

/// Opens a [`Replica`].
#[must_use]
pub struct ReplicaBuilder {
    node: Option<NodeId>,
    clock: Arc<dyn Clock + Send + Sync>,
    durability: Durability,
    policies: Policies,
    seed: Option<u64>,
    tree_cache: super::follow::TreeCache,
}

impl Default for ReplicaBuilder {
    fn default() -> Self {
        Self {
            node: None,
            clock: Arc::new(SystemClock),
            durability: Durability::SyncData,
            policies: Policies::default(),
            seed: None,
            tree_cache: super::follow::TreeCache::default(),
        }
    }
}

impl ReplicaBuilder {
    /// The node id stamped into timestamps, overriding the stored one for this open.
    /// Default: the id stored in the ledger; a store that has none gets a new random
    /// one (derived from [`seed`](Self::seed) when set), stored once with a synced write
    /// and reused by every later open. An explicit id is also stored when the ledger
    /// has none, but never replaces a stored one.
    pub fn node_id(mut self, node: NodeId) -> Self {
        self.node = Some(node);
        self
    }

    /// The wall clock. Default: the system clock.
    pub fn clock(mut self, clock: Arc<dyn Clock + Send + Sync>) -> Self {
        self.clock = clock;
        self
    }

    /// The durability of every commit. Default: [`Durability::SyncData`], so an
    /// acknowledged write survives a power loss.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The conflict policy of every protocol without its own
    /// ([`conflict_policy_for`](Self::conflict_policy_for)). Default: last writer wins.
    pub fn conflict_policy(mut self, policy: ConflictPolicy) -> Self {
        self.policies.default = policy;
        self
    }

    /// The conflict policy of one protocol. Default: the replica's policy.
    pub fn conflict_policy_for(mut self, protocol: ProtocolName, policy: ConflictPolicy) -> Self {
        self.policies.by_protocol.insert(protocol, policy);
        self
    }

    /// Seeds the ledger's stream ids and the node id of a store that has none, so a
    /// simulation replays exactly.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Over a store that other processes write too (a node on a shared PostgreSQL
    /// ledger): the most tenants and keys whose Merkle trees stay in memory, the least
    /// recently used going first. Ignored for other stores, whose trees are all held.
    /// Default: [`TREE_CACHE_TENANTS_DEFAULT`](super::TREE_CACHE_TENANTS_DEFAULT)
    /// tenants, [`TREE_CACHE_KEYS_DEFAULT`](super::TREE_CACHE_KEYS_DEFAULT) keys.
    pub fn tree_cache(mut self, tenants_max: usize, keys_max: usize) -> Self {
        self.tree_cache = super::follow::TreeCache {
            tenants_max: tenants_max.max(1),
            keys_max,
        };
        self
    }

    /// Opens a replica on a fjall directory.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Replica> {
        let ledger = self.ledger_builder().open_fjall(path)?;
        self.with_ledger(ledger)
    }

    /// Opens a replica in memory.
    pub fn in_memory(self) -> Result<Replica> {
        let ledger = self.ledger_builder().open_in_memory()?;
        self.with_ledger(ledger)
    }

    fn ledger_builder(&self) -> sync_ledger::LedgerBuilder {
        match self.seed {
            Some(seed) => Ledger::builder().seed(seed),
            None => Ledger::builder(),
        }
    }

    /// Opens a replica over a ledger that is already open (any backend). Over a store
    /// that other processes write too ([`sync_ledger::Store::is_shared`], the
    /// PostgreSQL ledger), the replica loads each tenant's Merkle trees when first asked
    /// for and keeps them current by following the log, so several node processes
    /// serve one store (see [`tree_cache`](Self::tree_cache)).
    pub fn with_ledger(self, ledger: Ledger) -> Result<Replica> {
        let candidate = match self.seed {
            Some(seed) => NodeId(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            None => NodeId(random_u64()),
        };
        let stored = ledger.init_node_id(self.node.unwrap_or(candidate))?;
        let node = self.node.unwrap_or(stored);
        // Resume after everything this store holds, so no restart, however far the
        // wall clock went back, issues a timestamp below one it issued or saw before.
        let mut hlc = HlcClock::new(self.clock.clone(), node);
        hlc.resume_after(ledger.hlc_high_water());
        let shared = ledger.store().is_shared();
        let mut index = TreeIndex::new();
        // Over a shared store, trees load lazily and follow the log.
        for tenant in if shared {
            Vec::new()
        } else {
            ledger.tenants()?
        } {
            let sorted: Vec<[u8; 32]> = ledger
                .cids(&tenant)?
                .map(|c| c.map(|c| *c.as_bytes()))
                .collect::<std::result::Result<_, _>>()?;
            index.rebuild_tenant(&tenant, &sorted)?;
        }
        let (changes, _) = broadcast::channel(CHANNEL_CAPACITY);
        let (events, _) = broadcast::channel(CHANNEL_CAPACITY);
        Ok(Replica {
            inner: Arc::new(Inner {
                hlc: Mutex::new(hlc),
                clock: self.clock,
                ledger,
                index: RwLock::new(index),
                writer: Mutex::new(()),
                durability: self.durability,
                policies: RwLock::new(self.policies),
                changes,
                events,
                shared,
                follow: Mutex::new(()),
                follow_stats: Mutex::default(),
                tree_cache: self.tree_cache,
            }),
        })
    }
}
