//! Trees over a shared store: caches that follow the log.
//!
//! When several processes write one store ([`sync_ledger::Store::is_shared`], the
//! PostgreSQL ledger), a process's own applies are not all there is, so its Merkle
//! trees cannot be kept by its applies alone. Instead each tenant's trees are:
//!
//! - **loaded lazily**, the first time a root or diff of the tenant is asked for: the
//!   log head is read, then the tenant's retained cids are scanned;
//! - **kept current by following the log** before every use, from the position they
//!   reached: each entry's cid is added, and the ids each entry's apply pruned
//!   ([`sync_ledger::LogPage::pruned`]) are removed. Adding and removing are idempotent
//!   and replayed in log order, so a load whose scan saw commits after the head it read
//!   ends up exact once the follow from that head has run;
//! - **verified against the database when in doubt**: a cursor the log no longer
//!   serves (a gap: compaction, another stream) or a pruned list that may have been cut
//!   at [`PRUNED_IDS_MAX`] makes the tenant load again from a scan;
//! - **bounded**: at most [`ReplicaBuilder::tree_cache`](super::ReplicaBuilder::tree_cache)
//!   tenants and keys; the least recently used tenants' trees are dropped first and
//!   load again when next asked for.
//!
//! Every node therefore answers a root or diff from the log as it stood at the request
//! (or later), whichever node accepted the writes. Follows, loads and the lazy loads of
//! protocol and projection trees run under one lock, so no load can miss a commit that
//! a concurrent follow applied only to the trees loaded at the time.

use sync_ledger::layout::PRUNED_IDS_MAX;
use sync_ledger::{LogQuery, LogRead};
use sync_types::{ProgressToken, TenantId};

use super::{Replica, lock};
use crate::error::{Error, Result};

/// Default most tenants whose trees a node on a shared store keeps in memory.
pub const TREE_CACHE_TENANTS_DEFAULT: usize = 1024;
/// Default most keys (cids, over all trees) a node on a shared store keeps in memory:
/// about 64 bytes each, so about 256 MiB.
pub const TREE_CACHE_KEYS_DEFAULT: usize = 4_000_000;
/// Log entries read per page while following.
const FOLLOW_PAGE_LEN: usize = 1024;
/// Loads in one follow before giving up (a log compacted again and again under it).
const FOLLOW_RELOADS_MAX: usize = 3;

/// Bounds of the tree cache of a replica over a shared store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TreeCache {
    pub(crate) tenants_max: usize,
    pub(crate) keys_max: usize,
}

impl Default for TreeCache {
    fn default() -> Self {
        Self {
            tenants_max: TREE_CACHE_TENANTS_DEFAULT,
            keys_max: TREE_CACHE_KEYS_DEFAULT,
        }
    }
}

/// What a follow did, for tests and metrics.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct FollowStats {
    /// Loads from a scan of the store (first use, or after a doubt).
    pub loads: u64,
    /// Log entries followed.
    pub entries: u64,
    /// Tenants whose trees were dropped to stay within the cache's bounds.
    pub evictions: u64,
}

impl Replica {
    /// Whether other processes write this replica's store, so its trees follow the log.
    pub fn is_shared(&self) -> bool {
        self.inner.shared
    }

    /// What the trees' follows have done since the replica opened (all zero unless the
    /// store is shared).
    pub fn follow_stats(&self) -> FollowStats {
        *lock(&self.inner.follow_stats)
    }

    /// The tenants whose trees are in memory.
    pub fn trees_held(&self) -> usize {
        self.inner
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .tenants_held()
    }

    /// Brings `tenant`'s trees up to its log head, loading them first if needed. The
    /// caller holds the follow lock.
    pub(super) fn follow_locked(&self, tenant: &TenantId) -> Result<()> {
        let followed = self
            .inner
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .followed(tenant);
        let mut reloads = 0;
        let mut cursor = match followed {
            Some(cursor) => cursor,
            None => self.load_tenant(tenant, &mut reloads)?,
        };
        let ledger = &self.inner.ledger;
        loop {
            let page = match ledger.read_log(tenant, &LogQuery::after(cursor, FOLLOW_PAGE_LEN))? {
                LogRead::Page(page) => page,
                LogRead::Gap(_) => {
                    cursor = self.load_tenant(tenant, &mut reloads)?;
                    continue;
                }
            };
            if page
                .pruned
                .iter()
                .any(|(_, ids)| ids.len() >= PRUNED_IDS_MAX)
            {
                // The list may have been cut: what it left out would stay in the tree.
                cursor = self.load_tenant(tenant, &mut reloads)?;
                continue;
            }
            // Which cached projections hold each entry: store lookups, made before the
            // index is locked.
            let has_projections = self
                .inner
                .index
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .has_projections(tenant);
            let mut memberships = Vec::new();
            if has_projections {
                for entry in &page.entries {
                    memberships.push(Some(self.projection_membership(tenant, &entry.message)?));
                }
            }
            let mut index = self.inner.index.write().unwrap_or_else(|e| e.into_inner());
            let mut pruned = page.pruned.iter().peekable();
            for (i, entry) in page.entries.iter().enumerate() {
                index.insert(tenant, entry.protocol(), entry.cid());
                if let Some(Some(covers)) = memberships.get(i) {
                    index.insert_projected(tenant, entry.cid(), covers);
                }
                while let Some((_, ids)) = pruned.next_if(|(p, _)| *p <= entry.position()) {
                    for id in ids {
                        index.remove_everywhere(tenant, id);
                    }
                }
            }
            for (_, ids) in pruned {
                for id in ids {
                    index.remove_everywhere(tenant, id);
                }
            }
            cursor = page.next.or(cursor);
            index.set_followed(tenant, cursor);
            drop(index);
            lock(&self.inner.follow_stats).entries += page.entries.len() as u64;
            if !page.has_more {
                return Ok(());
            }
        }
    }

    /// Loads `tenant`'s trees from a scan of the store and returns the log position
    /// they stand at (the head read before the scan; the follow from there replays
    /// whatever the scan may have seen of later commits).
    fn load_tenant(&self, tenant: &TenantId, reloads: &mut usize) -> Result<Option<ProgressToken>> {
        *reloads += 1;
        if *reloads > FOLLOW_RELOADS_MAX {
            return Err(Error::Ledger(sync_ledger::Error::retry(
                "the log kept moving under the tree's load",
            )));
        }
        let ledger = &self.inner.ledger;
        let head = ledger.log_head(tenant)?;
        let mut sorted: Vec<[u8; 32]> = ledger
            .cids(tenant)?
            .map(|c| c.map(|c| *c.as_bytes()))
            .collect::<std::result::Result<_, _>>()?;
        sorted.sort_unstable();
        sorted.dedup();
        let mut index = self.inner.index.write().unwrap_or_else(|e| e.into_inner());
        index.rebuild_tenant(tenant, &sorted)?;
        index.set_followed(tenant, head);
        let _ = index.followed(tenant);
        let cache = self.inner.tree_cache;
        let evicted = index.evict(tenant, cache.tenants_max, cache.keys_max);
        drop(index);
        let mut stats = lock(&self.inner.follow_stats);
        stats.loads += 1;
        stats.evictions += evicted as u64;
        Ok(head)
    }
}
