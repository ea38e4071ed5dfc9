//! What a replica needs to stay itself across restarts: the hybrid-logical-clock
//! high-water mark and the node id, both in the `meta` partition.
//!
//! - `meta/hlc` holds the greatest timestamp of every message the ledger ever stored
//!   (local writes and remote versions alike). [`Ledger::apply`] puts it in the same
//!   atomic batch as the messages that raise it, so it is exactly as durable as they
//!   are: no crash can keep a message and lose the mark that covers it. A replica
//!   resumes its clock from it at open ([`Ledger::hlc_high_water`]), so a timestamp it
//!   issues after a restart orders after everything it stored before, whatever the wall
//!   clock says.
//! - `meta/node` holds the node id, created once ([`Ledger::init_node_id`], a synced
//!   write) and read back at every open.
//! - `meta/token_key_check` holds a check of the token key the store is served with
//!   ([`Ledger::token_key_check`]): a node refuses to start with another key, which
//!   would refuse every token the store's other nodes issued.
//!
//! A store written before `meta/hlc` existed gets the mark derived once at open from
//! what it retains (every record's head and every configure key), then stored. Pruned
//! versions are older than the winner that pruned them, so the retained versions bound
//! everything ever stored.

use sync_types::{Hlc, NodeId};

use crate::error::Result;
use crate::layout::{self, Key, RecordRow, Tn, dec, enc};
use crate::ledger::{Ledger, lock};
use crate::store::{Durability, Order, Store};

/// The `meta` key of the HLC high-water mark.
pub(crate) const HLC_KEY: &[u8] = b"hlc";
/// The `meta` key of the node id.
pub(crate) const NODE_KEY: &[u8] = b"node";
/// The `meta` key of the token key's check.
const TOKEN_KEY_CHECK_KEY: &[u8] = b"token_key_check";

/// The `meta` key of one tenant's high-water mark on a shared store (`hlc/` and the
/// tenant's number): there, each apply raises its tenant's mark under the tenant's
/// lock, since one mark for the whole store would be a row that every writer updates.
pub(crate) fn tenant_hlc_key(tn: Tn) -> Vec<u8> {
    let mut key = b"hlc/".to_vec();
    key.extend_from_slice(&Key::tn(tn).into_vec());
    key
}

/// Reads the stored high-water mark (the greatest of the store's mark and the tenants'
/// marks), deriving and storing it for an older store.
pub(crate) fn load_high_water(store: &dyn Store) -> Result<Hlc> {
    let mut tenants = Hlc::ZERO;
    for kv in store.scan_prefix(layout::META, b"hlc/", Order::Ascending)? {
        let (key, value) = kv?;
        tenants = tenants.max(dec(layout::META, &key, &value)?);
    }
    if let Some(bytes) = store.get(layout::META, HLC_KEY)? {
        return Ok(tenants.max(dec(layout::META, HLC_KEY, &bytes)?));
    }
    if tenants != Hlc::ZERO {
        return Ok(tenants);
    }
    let mut high = Hlc::ZERO;
    for kv in store.scan_prefix(layout::RECORDS, b"", Order::Ascending)? {
        let (key, value) = kv?;
        let row: RecordRow = dec(layout::RECORDS, &key, &value)?;
        high = high.max(row.head.winner.timestamp);
        if let Some(initial) = row.head.initial {
            high = high.max(initial.timestamp);
        }
    }
    for kv in store.scan_prefix(layout::CONFIGS, b"", Order::Ascending)? {
        let (key, _) = kv?;
        if let Some(ts) = config_key_timestamp(&key) {
            high = high.max(ts);
        }
    }
    if high != Hlc::ZERO {
        store.put(layout::META, HLC_KEY, enc(&high), Durability::SyncData)?;
    }
    Ok(high)
}

/// The timestamp in a `configs` key: `T P wall:u64 counter:u32 node:u64 cid`, where `T`
/// and `P` are LEB128 varints.
fn config_key_timestamp(key: &[u8]) -> Option<Hlc> {
    let mut rest = key;
    for _ in 0..2 {
        let end = rest.iter().position(|b| b & 0x80 == 0)?;
        rest = &rest[end + 1..];
    }
    let wall_ms = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    let counter = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
    let node = u64::from_be_bytes(rest.get(12..20)?.try_into().ok()?);
    Some(Hlc {
        wall_ms,
        counter,
        node: NodeId(node),
    })
}

impl Ledger {
    /// The greatest timestamp of every message this ledger has stored, durable with
    /// those messages; [`Hlc::ZERO`] for an empty store. A replica resumes its clock
    /// after it.
    pub fn hlc_high_water(&self) -> Hlc {
        *lock(&self.high_water)
    }

    /// The node id stored in this ledger, if one was ever stored.
    pub fn node_id(&self) -> Result<Option<NodeId>> {
        match self.store.get(layout::META, NODE_KEY)? {
            Some(bytes) => Ok(Some(dec(layout::META, NODE_KEY, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The stored node id; when there is none, stores `candidate` (a synced write) and
    /// returns it. Called once per open, so a store keeps one identity for its life.
    pub fn init_node_id(&self, candidate: NodeId) -> Result<NodeId> {
        let _writer = lock(&self.writer);
        if let Some(found) = self.node_id()? {
            return Ok(found);
        }
        self.set_node_id_locked(candidate)?;
        Ok(candidate)
    }

    /// Replaces the stored node id (a synced write). For a store copied to a second
    /// device: the copy must take a new id, or both devices stamp the same one.
    pub fn set_node_id(&self, node: NodeId) -> Result<()> {
        let _writer = lock(&self.writer);
        self.set_node_id_locked(node)
    }

    /// The check of the token key this store is served with, as a node stored it
    /// ([`Ledger::set_token_key_check`]); `None` before the first node started.
    pub fn token_key_check(&self) -> Result<Option<Vec<u8>>> {
        self.store.get(layout::META, TOKEN_KEY_CHECK_KEY)
    }

    /// Stores the check of the token key this store is served with (a synced write).
    pub fn set_token_key_check(&self, check: &[u8]) -> Result<()> {
        let _writer = lock(&self.writer);
        let mut batch = crate::store::Batch::new();
        batch.put(layout::META, TOKEN_KEY_CHECK_KEY, check.to_vec());
        self.commit(batch, Durability::SyncData)
    }

    fn set_node_id_locked(&self, node: NodeId) -> Result<()> {
        let mut batch = crate::store::Batch::new();
        batch.put(layout::META, NODE_KEY, enc(&node));
        self.commit(batch, Durability::SyncData)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_give_their_timestamp() {
        let mut key = vec![0x81, 0x01, 0x05];
        key.extend_from_slice(&7u64.to_be_bytes());
        key.extend_from_slice(&3u32.to_be_bytes());
        key.extend_from_slice(&9u64.to_be_bytes());
        key.extend_from_slice(&[0u8; 32]);
        assert_eq!(
            config_key_timestamp(&key),
            Some(Hlc {
                wall_ms: 7,
                counter: 3,
                node: NodeId(9)
            })
        );
        assert_eq!(config_key_timestamp(&key[..10]), None);
    }
}
