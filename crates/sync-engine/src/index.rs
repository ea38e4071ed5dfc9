//! The tree index: one sparse Merkle tree per tenant and one per (tenant, protocol).
//!
//! A tree holds the cids of the messages a store retains (protocol configurations and the
//! retained versions of records), so two stores that retain the same messages have the
//! same roots, and the diff between them finds exactly what each lacks. The index lives in
//! memory; it is rebuilt from the ledger on open, which is what keeps it from ever being
//! out of step with the store after a crash.
//!
//! Cost: each tree costs what [`sync_smt::Tree`] documents per key. The tenant trees are
//! built on open; a protocol's tree is loaded from the ledger the first time a scope
//! names it ([`TreeIndex::load_protocol`]) and maintained from then on, so a node that
//! never serves protocol scopes never pays for them. A protocol-set scope of one protocol
//! uses that protocol's tree; a set of several builds the union on demand, in time linear
//! in its size.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use sync_smt::{Key, Tree};
use sync_types::{Cid, ProgressToken, Projection, ProtocolName, Scope, TenantId};

/// Most projection trees kept per tenant; the oldest is dropped first.
pub(crate) const PROJECTION_TREES_MAX: usize = 16;

/// The trees of every tenant.
#[derive(Debug, Default)]
pub(crate) struct TreeIndex {
    tenants: HashMap<TenantId, TenantTrees>,
    /// Projection trees built on demand and then maintained, oldest first.
    projections: HashMap<TenantId, Vec<(Projection, Tree)>>,
    /// Counts uses, for eviction on a shared store.
    tick: u64,
}

#[derive(Debug, Default)]
struct TenantTrees {
    all: Tree,
    by_protocol: BTreeMap<ProtocolName, Tree>,
    /// On a shared store: how far the trees have followed the tenant's log.
    followed: Option<ProgressToken>,
    /// On a shared store: when the trees were last used (the index's tick), for
    /// eviction.
    used: u64,
}

impl TreeIndex {
    /// An empty index.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a retained message; returns whether it was new. The protocol's tree is
    /// updated only when it is loaded.
    pub(crate) fn insert(&mut self, tenant: &TenantId, protocol: &ProtocolName, cid: Cid) -> bool {
        let trees = self.tenants.entry(tenant.clone()).or_default();
        if let Some(tree) = trees.by_protocol.get_mut(protocol) {
            tree.insert(*cid.as_bytes());
        }
        trees.all.insert(*cid.as_bytes())
    }

    /// What one commit changed: adds the messages it stored (with their protocols) and
    /// removes the versions it pruned, from the tenant's tree, the loaded protocol
    /// trees and the cached projection trees. The same trees as [`insert`](Self::insert)
    /// and [`remove`](Self::remove) one message at a time, in the commit's order (a
    /// message stored and then pruned by the same commit ends absent), but each tree is
    /// rehashed once per touched path for the whole commit.
    pub(crate) fn apply_commit(
        &mut self,
        tenant: &TenantId,
        added: &[(&ProtocolName, Cid)],
        pruned: &[(&ProtocolName, Cid)],
    ) {
        if added.is_empty() && pruned.is_empty() {
            return;
        }
        let gone: HashSet<Cid> = pruned.iter().map(|(_, c)| *c).collect();
        let trees = self.tenants.entry(tenant.clone()).or_default();
        let mut by_protocol: BTreeMap<&ProtocolName, (Vec<Key>, Vec<Key>)> = BTreeMap::new();
        for (p, c) in pruned {
            by_protocol.entry(p).or_default().1.push(*c.as_bytes());
        }
        for (p, c) in added.iter().filter(|(_, c)| !gone.contains(c)) {
            by_protocol.entry(p).or_default().0.push(*c.as_bytes());
        }
        for (p, (adds, removes)) in &by_protocol {
            if let Some(tree) = trees.by_protocol.get_mut(*p) {
                tree.remove_many(removes);
                tree.insert_many(adds.iter().copied());
            }
        }
        let removes: Vec<Key> = pruned.iter().map(|(_, c)| *c.as_bytes()).collect();
        trees.all.remove_many(&removes);
        trees.all.insert_many(
            added
                .iter()
                .filter(|(_, c)| !gone.contains(c))
                .map(|(_, c)| *c.as_bytes()),
        );
        for (_, tree) in self.projections.get_mut(tenant).into_iter().flatten() {
            tree.remove_many(&removes);
        }
    }

    /// Removes a message that is no longer retained; returns whether it was there.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, tenant: &TenantId, protocol: &ProtocolName, cid: &Cid) -> bool {
        let Some(trees) = self.tenants.get_mut(tenant) else {
            return false;
        };
        if let Some(tree) = trees.by_protocol.get_mut(protocol) {
            tree.remove(cid.as_bytes());
        }
        for (_, tree) in self.projections.get_mut(tenant).into_iter().flatten() {
            tree.remove(cid.as_bytes());
        }
        trees.all.remove(cid.as_bytes())
    }

    /// The cached tree of a projection, if it was built.
    pub(crate) fn projection(&self, tenant: &TenantId, projection: &Projection) -> Option<&Tree> {
        self.projections
            .get(tenant)?
            .iter()
            .find(|(p, _)| p == projection)
            .map(|(_, t)| t)
    }

    /// Caches a projection's tree (built from the ledger), dropping the tenant's oldest
    /// one beyond [`PROJECTION_TREES_MAX`].
    pub(crate) fn cache_projection(
        &mut self,
        tenant: &TenantId,
        projection: Projection,
        tree: Tree,
    ) {
        let cached = self.projections.entry(tenant.clone()).or_default();
        cached.retain(|(p, _)| *p != projection);
        if cached.len() >= PROJECTION_TREES_MAX {
            cached.remove(0);
        }
        cached.push((projection, tree));
    }

    /// Adds a retained message to the cached projection trees that `covers` says hold it.
    pub(crate) fn insert_projected(
        &mut self,
        tenant: &TenantId,
        cid: Cid,
        covers: impl Fn(&Projection) -> bool,
    ) {
        for (projection, tree) in self.projections.get_mut(tenant).into_iter().flatten() {
            if covers(projection) {
                tree.insert(*cid.as_bytes());
            }
        }
    }

    /// Whether the tenant has cached projection trees.
    pub(crate) fn has_projections(&self, tenant: &TenantId) -> bool {
        self.projections.get(tenant).is_some_and(|p| !p.is_empty())
    }

    /// Whether the protocol's tree is loaded.
    pub(crate) fn has_protocol(&self, tenant: &TenantId, protocol: &ProtocolName) -> bool {
        self.tenants
            .get(tenant)
            .is_some_and(|t| t.by_protocol.contains_key(protocol))
    }

    /// Loads a protocol's tree from its cids (in any order). Inserts and removes that
    /// raced with the load are idempotent, so loading from a ledger that already holds a
    /// commit whose index update is still pending gives the same tree.
    pub(crate) fn load_protocol(
        &mut self,
        tenant: &TenantId,
        protocol: &ProtocolName,
        cids: impl IntoIterator<Item = Cid>,
    ) {
        let tree = Tree::from_keys(cids.into_iter().map(|c| *c.as_bytes()));
        self.tenants
            .entry(tenant.clone())
            .or_default()
            .by_protocol
            .insert(protocol.clone(), tree);
    }

    /// Replaces a tenant's trees with its tree built from `sorted` cids (ascending, as
    /// the ledger scans them), dropping loaded protocol trees (used on open).
    pub(crate) fn rebuild_tenant(
        &mut self,
        tenant: &TenantId,
        sorted: &[[u8; 32]],
    ) -> Result<(), sync_smt::Error> {
        let all = Tree::from_sorted(sorted)?;
        self.tenants.insert(
            tenant.clone(),
            TenantTrees {
                all,
                ..TenantTrees::default()
            },
        );
        self.projections.remove(tenant);
        Ok(())
    }

    /// On a shared store: how far a tenant's trees follow its log (`None`: not
    /// loaded; `Some(None)`: loaded from an empty log). Counts as a use.
    pub(crate) fn followed(&mut self, tenant: &TenantId) -> Option<Option<ProgressToken>> {
        self.tick += 1;
        let tick = self.tick;
        let trees = self.tenants.get_mut(tenant)?;
        trees.used = tick;
        Some(trees.followed)
    }

    /// Records how far a loaded tenant's trees follow its log.
    pub(crate) fn set_followed(&mut self, tenant: &TenantId, cursor: Option<ProgressToken>) {
        if let Some(trees) = self.tenants.get_mut(tenant) {
            trees.followed = cursor;
        }
    }

    /// Removes a message from every tree of the tenant (a follower of the log knows a
    /// pruned id, not its protocol).
    pub(crate) fn remove_everywhere(&mut self, tenant: &TenantId, cid: &Cid) {
        let Some(trees) = self.tenants.get_mut(tenant) else {
            return;
        };
        for tree in trees.by_protocol.values_mut() {
            tree.remove(cid.as_bytes());
        }
        for (_, tree) in self.projections.get_mut(tenant).into_iter().flatten() {
            tree.remove(cid.as_bytes());
        }
        trees.all.remove(cid.as_bytes());
    }

    /// Drops the least recently used tenants' trees (never `keep`'s) until at most
    /// `tenants_max` tenants and `keys_max` keys are held; returns how many went.
    pub(crate) fn evict(&mut self, keep: &TenantId, tenants_max: usize, keys_max: usize) -> usize {
        let keys_of =
            |t: &TenantTrees| t.all.len() + t.by_protocol.values().map(Tree::len).sum::<usize>();
        let mut keys: usize = self.tenants.values().map(keys_of).sum::<usize>()
            + self
                .projections
                .values()
                .flatten()
                .map(|(_, t)| t.len())
                .sum::<usize>();
        let mut order: Vec<(u64, TenantId)> = self
            .tenants
            .iter()
            .filter(|(t, _)| *t != keep)
            .map(|(t, trees)| (trees.used, t.clone()))
            .collect();
        order.sort();
        let mut evicted = 0;
        for (_, tenant) in order {
            if self.tenants.len() <= tenants_max && keys <= keys_max {
                break;
            }
            if let Some(trees) = self.tenants.remove(&tenant) {
                keys = keys.saturating_sub(keys_of(&trees));
            }
            for (_, tree) in self.projections.remove(&tenant).into_iter().flatten() {
                keys = keys.saturating_sub(tree.len());
            }
            evicted += 1;
        }
        evicted
    }

    /// The tenants whose trees are held.
    pub(crate) fn tenants_held(&self) -> usize {
        self.tenants.len()
    }

    /// The tree of `scope` for `tenant`: borrowed for the full scope and for one protocol,
    /// built for a set of several; `None` for a projection, whose tree the replica builds
    /// from its record indexes. The protocols of a set must be loaded
    /// ([`load_protocol`](Self::load_protocol)); one that is not counts as empty.
    pub(crate) fn tree(&self, tenant: &TenantId, scope: &Scope) -> Option<Cow<'_, Tree>> {
        static EMPTY: std::sync::OnceLock<Tree> = std::sync::OnceLock::new();
        let empty = || Cow::Borrowed(EMPTY.get_or_init(Tree::new));
        let Some(trees) = self.tenants.get(tenant) else {
            return match scope {
                Scope::Projection(_) => None,
                _ => Some(empty()),
            };
        };
        match scope {
            Scope::Full => Some(Cow::Borrowed(&trees.all)),
            Scope::ProtocolSet(set) => match set.protocols() {
                [one] => Some(trees.by_protocol.get(one).map_or_else(empty, Cow::Borrowed)),
                many => Some(Cow::Owned(Tree::from_keys(
                    many.iter()
                        .filter_map(|p| trees.by_protocol.get(p))
                        .flat_map(|t| t.iter().copied()),
                ))),
            },
            Scope::Projection(_) => None,
        }
    }

    /// The root of `scope` for `tenant` (`None` for a projection).
    #[cfg(test)]
    pub(crate) fn root(&self, tenant: &TenantId, scope: &Scope) -> Option<sync_smt::Hash> {
        self.tree(tenant, scope).map(|t| t.root())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ProtocolName {
        ProtocolName::new(s).unwrap()
    }

    #[test]
    fn a_commit_changes_the_trees_as_its_messages_one_by_one() {
        let t = TenantId::new("t").unwrap();
        let cid = |i: u32| Cid::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes());
        let (x, y) = (p("x"), p("y"));
        let mut batched = TreeIndex::new();
        let mut single = TreeIndex::new();
        for index in [&mut batched, &mut single] {
            index.load_protocol(&t, &x, (0..300).map(cid));
            index.insert(&t, &x, cid(1_000));
        }
        let projection =
            Projection::new(vec![sync_types::ProjectionEntry::whole(x.clone())]).unwrap();
        for index in [&mut batched, &mut single] {
            index.cache_projection(
                &t,
                projection.clone(),
                Tree::from_keys((0..300).map(|i| *cid(i).as_bytes())),
            );
        }
        // Adds across two protocols; prunes of stored versions and of one this commit adds.
        let added: Vec<(&ProtocolName, Cid)> = (300..700)
            .map(|i| (if i % 3 == 0 { &y } else { &x }, cid(i)))
            .collect();
        let pruned: Vec<(&ProtocolName, Cid)> = (0..100)
            .map(|i| (&x, cid(i * 3)))
            .chain([(&y, cid(303))])
            .collect();
        batched.apply_commit(&t, &added, &pruned);
        for (p, c) in &added {
            single.insert(&t, p, *c);
        }
        for (p, c) in &pruned {
            single.remove(&t, p, c);
        }
        for scope in [
            Scope::Full,
            Scope::protocols(vec![x.clone()]).unwrap(),
            Scope::protocols(vec![y.clone()]).unwrap(),
        ] {
            assert_eq!(
                batched.root(&t, &scope),
                single.root(&t, &scope),
                "{scope:?}"
            );
        }
        // Loading a protocol's tree leaves the tenant's tree alone: it holds the one
        // insert and the commit's adds but the one it pruned.
        assert_eq!(batched.tree(&t, &Scope::Full).unwrap().len(), 1 + 400 - 1);
        assert!(
            !batched
                .tree(&t, &Scope::Full)
                .unwrap()
                .contains(cid(303).as_bytes())
        );
        assert_eq!(
            batched.projection(&t, &projection).unwrap().root(),
            single.projection(&t, &projection).unwrap().root()
        );
        assert_eq!(batched.projection(&t, &projection).unwrap().len(), 200);
    }

    #[test]
    fn scopes_select_the_right_trees() {
        let t = TenantId::new("t").unwrap();
        let mut index = TreeIndex::new();
        let (a, b, c) = (
            Cid::from_bytes([1; 32]),
            Cid::from_bytes([2; 32]),
            Cid::from_bytes([3; 32]),
        );
        for name in ["x", "y", "z"] {
            index.load_protocol(&t, &p(name), []);
        }
        index.insert(&t, &p("x"), a);
        index.insert(&t, &p("y"), b);
        index.insert(&t, &p("z"), c);
        let only_x = Scope::protocols(vec![p("x")]).unwrap();
        let x_and_y = Scope::protocols(vec![p("x"), p("y")]).unwrap();
        assert_eq!(index.tree(&t, &Scope::Full).unwrap().len(), 3);
        assert_eq!(index.tree(&t, &only_x).unwrap().len(), 1);
        assert_eq!(
            index.root(&t, &x_and_y),
            Some(Tree::from_keys([[1; 32], [2; 32]]).root())
        );
        assert!(index.remove(&t, &p("x"), &a));
        assert_eq!(index.root(&t, &only_x), Some(Tree::new().root()));
        let other = TenantId::new("u").unwrap();
        assert_eq!(index.root(&other, &Scope::Full), Some(Tree::new().root()));
    }

    #[test]
    fn rebuilding_and_lazy_loading_give_the_same_roots_as_incremental_inserts() {
        let t = TenantId::new("t").unwrap();
        let entries: Vec<(ProtocolName, Cid)> = (0u8..50)
            .map(|i| {
                (
                    p(if i % 3 == 0 { "x" } else { "y" }),
                    Cid::from_bytes([i; 32]),
                )
            })
            .collect();
        let mut incremental = TreeIndex::new();
        incremental.load_protocol(&t, &p("x"), []);
        incremental.load_protocol(&t, &p("y"), []);
        for (protocol, cid) in &entries {
            incremental.insert(&t, protocol, *cid);
        }
        let mut rebuilt = TreeIndex::new();
        let mut sorted: Vec<[u8; 32]> = entries.iter().map(|(_, c)| *c.as_bytes()).collect();
        sorted.sort();
        rebuilt.rebuild_tenant(&t, &sorted).unwrap();
        for name in ["x", "y"] {
            let cids = entries
                .iter()
                .filter(|(q, _)| *q == p(name))
                .map(|(_, c)| *c);
            rebuilt.load_protocol(&t, &p(name), cids);
        }
        for scope in [
            Scope::Full,
            Scope::protocols(vec![p("x")]).unwrap(),
            Scope::protocols(vec![p("y"), p("x")]).unwrap(),
        ] {
            assert_eq!(incremental.root(&t, &scope), rebuilt.root(&t, &scope));
        }
    }
}
