//! The in-memory tree: a 16-way burst trie of sorted key buckets with cached hashes.

use crate::error::Error;
use crate::hash::{Hash, Key, Prefix, combine_all, hash_sorted, nibble};

/// A bucket holding more keys than this (and not at full depth) bursts into a branch.
const BUCKET_MAX: usize = 64;
/// A branch whose subtree shrinks to this many keys collapses back into one bucket. Half of
/// [`BUCKET_MAX`], so that alternating inserts and removes at the boundary do not thrash.
const BUCKET_MIN: usize = 32;

/// A sparse Merkle tree over 256-bit keys: a set of [`Key`]s with a canonical root hash.
///
/// The root (and the hash under any prefix) depends only on the set of keys, never on the
/// order of inserts and removes; the exact definition is in the [crate docs](crate#the-hash).
///
/// # Layout and cost
///
/// Keys live in sorted buckets of at most 64 keys at the leaves of a 16-way trie (one level
/// per 4 bits of key). Every node caches the hash of its subtree; the hashes inside a bucket
/// are recomputed on demand, which costs at most 127 blake3 compressions. With `n` uniformly
/// spread keys the trie has `log16(n / 64) + 1` levels (5 at a million keys) and:
///
/// | operation | cost |
/// |---|---|
/// | [`insert`](Tree::insert), [`remove`](Tree::remove) | `O(log n)` navigation, a bucket shift of ≤ 64 keys, ≤ 127 compressions for the bucket and ≤ 15 per level above it |
/// | [`contains`](Tree::contains) | `O(log n)`, no hashing |
/// | [`len`](Tree::len), [`root`](Tree::root) | `O(1)` |
/// | [`subtree_hash`](Tree::subtree_hash) | `O(log n)`, plus ≤ 127 compressions when the prefix ends inside a bucket |
/// | [`keys_under`](Tree::keys_under), [`count_under`](Tree::count_under) | `O(log n + k)` for `k` keys returned |
/// | [`subtree_hashes_at`](Tree::subtree_hashes_at) | `O(m)` for `m` results, plus bucket hashing below the cached levels |
/// | [`from_sorted`](Tree::from_sorted) | `O(n)`: about `2n` compressions |
///
/// Memory is the 32 bytes of each key plus 56 bytes per node; at a million uniformly
/// spread keys that measures 36 bytes per key built with [`from_sorted`](Tree::from_sorted)
/// and 49 after single inserts, whose bucket vectors keep spare capacity (`BENCHMARKS.md`). Keys
/// chosen to share long prefixes make the trie deeper but not larger per key than a
/// burst of 16 nodes per 65 keys.
#[derive(Clone)]
pub struct Tree {
    root: Node,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("len", &self.len())
            .field("root", &self.root())
            .finish()
    }
}

impl Tree {
    /// An empty tree. Its root is [`Hash::EMPTY`]. No allocation.
    #[must_use]
    pub fn new() -> Tree {
        Tree {
            root: Node::empty(),
        }
    }

    /// Build a tree from strictly increasing keys in `O(n)` (about `2n` blake3
    /// compressions, no per-key allocation).
    ///
    /// # Errors
    ///
    /// [`Error::Unsorted`] if the keys are not strictly increasing.
    pub fn from_sorted(keys: &[Key]) -> Result<Tree, Error> {
        if let Some(index) = keys.windows(2).position(|w| w[0] >= w[1]) {
            return Err(Error::Unsorted { index: index + 1 });
        }
        Ok(Tree {
            root: Node::build(keys, 0),
        })
    }

    /// Build a tree from keys in any order, with duplicates: sorts a copy (`O(n log n)`) and
    /// calls [`from_sorted`](Tree::from_sorted).
    #[must_use]
    pub fn from_keys(keys: impl IntoIterator<Item = Key>) -> Tree {
        let mut keys: Vec<Key> = keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        Tree {
            root: Node::build(&keys, 0),
        }
    }

    /// Number of keys. `O(1)`.
    #[must_use]
    pub fn len(&self) -> usize {
        self.root.len()
    }

    /// Whether the tree holds no key. `O(1)`.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The root hash: the hash of the whole key set. `O(1)` (cached).
    #[must_use]
    pub fn root(&self) -> Hash {
        self.root.hash
    }

    /// Whether `key` is in the set. `O(log n)`, no hashing.
    #[must_use]
    pub fn contains(&self, key: &Key) -> bool {
        let mut node = &self.root;
        let mut depth = 0;
        loop {
            match &node.kind {
                Kind::Bucket(keys) => return keys.binary_search(key).is_ok(),
                Kind::Branch(children, _) => {
                    node = &children[nibble(key, depth)];
                    depth += 4;
                }
            }
        }
    }

    /// Add `key`; returns whether it was absent. Updates the cached hashes on its path
    /// (see the cost table on [`Tree`]).
    pub fn insert(&mut self, key: Key) -> bool {
        self.root.insert(0, key)
    }

    /// Remove `key`; returns whether it was present. Updates the cached hashes on its path
    /// and merges a branch back into one bucket when it falls to 32 keys.
    pub fn remove(&mut self, key: &Key) -> bool {
        self.root.remove(0, key)
    }

    /// Add every key of `keys` (any order, duplicates allowed); returns how many were
    /// absent. The same set and root as inserting them one by one, but each touched
    /// bucket and branch is rehashed once for the whole batch instead of once per key:
    /// a batch of `k` keys costs the hashing of the touched paths, not `k` paths.
    pub fn insert_many(&mut self, keys: impl IntoIterator<Item = Key>) -> usize {
        let mut keys: Vec<Key> = keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        self.root.insert_sorted(0, &keys)
    }

    /// Remove every key of `keys` (any order, duplicates allowed); returns how many were
    /// present. As [`insert_many`](Tree::insert_many): one rehash per touched node.
    pub fn remove_many<'k>(&mut self, keys: impl IntoIterator<Item = &'k Key>) -> usize {
        let mut keys: Vec<Key> = keys.into_iter().copied().collect();
        keys.sort_unstable();
        keys.dedup();
        self.root.remove_sorted(0, &keys)
    }

    /// The hash of the keys starting with `prefix` ([`Hash::EMPTY`] if there are none).
    /// `O(log n)` when the prefix ends on a cached node, else up to 127 compressions.
    #[must_use]
    pub fn subtree_hash(&self, prefix: &Prefix) -> Hash {
        self.locate(prefix).hash()
    }

    /// Number of keys starting with `prefix`. `O(log n)`.
    #[must_use]
    pub fn count_under(&self, prefix: &Prefix) -> usize {
        self.locate(prefix).count()
    }

    /// The keys starting with `prefix`, in increasing order. `O(log n + k)`.
    #[must_use]
    pub fn keys_under(&self, prefix: &Prefix) -> Vec<Key> {
        let mut out = Vec::new();
        self.locate(prefix).collect(&mut out);
        out
    }

    /// All keys in increasing order. `O(n)`.
    pub fn iter(&self) -> impl Iterator<Item = &Key> + '_ {
        Iter {
            stack: vec![std::slice::from_ref(&self.root).iter()],
            bucket: [].iter(),
        }
    }

    /// `(prefix, hash)` for every non-empty subtree whose prefix is `depth` bits long, in
    /// key order. At most `min(n, 2^depth)` entries; nodes at or above the cached levels
    /// cost nothing to hash, deeper ones are hashed from their bucket.
    ///
    /// # Panics
    ///
    /// If `depth > 256` (a programmer error).
    #[must_use]
    pub fn subtree_hashes_at(&self, depth: usize) -> Vec<(Prefix, Hash)> {
        assert!(depth <= 256, "depth {depth} > 256");
        let mut out = Vec::new();
        self.root.hashes_at(0, Prefix::ROOT, depth, &mut out);
        out
    }

    /// Estimated heap bytes held by the tree (key buckets by capacity plus branch nodes),
    /// excluding allocator overhead. `O(number of nodes)`.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.root.heap_bytes()
    }

    /// The root the tree would have after adding `adds` and removing `removes` (both
    /// strictly increasing), without changing the tree. Costs the hashing of the touched
    /// paths only: `O(k log n)` for `k` changes.
    #[must_use]
    pub fn root_with(&self, adds: &[Key], removes: &[Key]) -> Hash {
        self.root.hash_with(0, adds, removes)
    }

    /// Hash and count of each of the 16 children (4 more bits) of a prefix whose length is
    /// a multiple of 4 and at most 252.
    pub(crate) fn children(&self, prefix: &Prefix) -> [(Hash, usize); 16] {
        debug_assert!(prefix.len().is_multiple_of(4) && prefix.len() <= 252);
        match self.locate(prefix) {
            Located::Node(Node {
                kind: Kind::Branch(children, _),
                ..
            }) => std::array::from_fn(|i| (children[i].hash, children[i].len())),
            Located::Node(Node {
                kind: Kind::Bucket(keys),
                ..
            }) => split_slice(keys, prefix.len()),
            Located::Slice(keys) => split_slice(keys, prefix.len()),
            // Unreachable for aligned prefixes (trie levels are 4 bits apart); answered
            // the slow way rather than with a panic.
            Located::Partial(_) => std::array::from_fn(|i| {
                let child = self.locate(&prefix.extend(i, 4));
                (child.hash(), child.count())
            }),
        }
    }

    fn locate(&self, prefix: &Prefix) -> Located<'_> {
        let len = prefix.len();
        let mut node = &self.root;
        let mut depth = 0;
        loop {
            if depth == len {
                return Located::Node(node);
            }
            match &node.kind {
                Kind::Bucket(keys) => return Located::Slice(&keys[prefix.range_in(keys)]),
                Kind::Branch(children, _) => {
                    if len >= depth + 4 {
                        node = &children[nibble(prefix.bits(), depth)];
                        depth += 4;
                    } else {
                        let k = len - depth;
                        let width = 1usize << (4 - k);
                        let start = nibble(prefix.bits(), depth);
                        return Located::Partial(&children[start..start + width]);
                    }
                }
            }
        }
    }
}

fn split_slice(keys: &[Key], depth: usize) -> [(Hash, usize); 16] {
    let mut out = [(Hash::EMPTY, 0); 16];
    let mut rest = keys;
    for (i, slot) in out.iter_mut().enumerate() {
        let n = rest.partition_point(|k| nibble(k, depth) <= i);
        *slot = (hash_sorted(&rest[..n]), n);
        rest = &rest[n..];
    }
    out
}

/// Where a prefix lands in the trie.
enum Located<'a> {
    /// A node that covers exactly the prefix.
    Node(&'a Node),
    /// The keys under the prefix, inside one bucket.
    Slice(&'a [Key]),
    /// The aligned run of sibling nodes that together cover the prefix.
    Partial(&'a [Node]),
}

impl Located<'_> {
    fn hash(&self) -> Hash {
        match self {
            Located::Node(n) => n.hash,
            Located::Slice(keys) => hash_sorted(keys),
            Located::Partial(nodes) => {
                let hashes: Vec<Hash> = nodes.iter().map(|n| n.hash).collect();
                combine_all(&hashes)
            }
        }
    }

    fn count(&self) -> usize {
        match self {
            Located::Node(n) => n.len(),
            Located::Slice(keys) => keys.len(),
            Located::Partial(nodes) => nodes.iter().map(Node::len).sum(),
        }
    }

    fn collect(&self, out: &mut Vec<Key>) {
        match self {
            Located::Node(n) => n.collect(out),
            Located::Slice(keys) => out.extend_from_slice(keys),
            Located::Partial(nodes) => nodes.iter().for_each(|n| n.collect(out)),
        }
    }
}

#[derive(Clone)]
struct Node {
    hash: Hash,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// Strictly increasing keys, all under this node's prefix.
    Bucket(Vec<Key>),
    /// The 16 children (next 4 bits) and the number of keys below.
    Branch(Box<[Node; 16]>, usize),
}

impl Node {
    fn empty() -> Node {
        Node {
            hash: Hash::EMPTY,
            kind: Kind::Bucket(Vec::new()),
        }
    }

    fn len(&self) -> usize {
        match &self.kind {
            Kind::Bucket(keys) => keys.len(),
            Kind::Branch(_, len) => *len,
        }
    }

    /// Build the node for strictly increasing `keys` that all share the first `depth` bits.
    fn build(keys: &[Key], depth: usize) -> Node {
        if keys.len() <= BUCKET_MAX || depth == 256 {
            return Node {
                hash: hash_sorted(keys),
                kind: Kind::Bucket(keys.to_vec()),
            };
        }
        let mut rest = keys;
        let children: Box<[Node; 16]> = Box::new(std::array::from_fn(|i| {
            let n = rest.partition_point(|k| nibble(k, depth) <= i);
            let child = Node::build(&rest[..n], depth + 4);
            rest = &rest[n..];
            child
        }));
        Node {
            hash: combine16(&children),
            kind: Kind::Branch(children, keys.len()),
        }
    }

    fn insert(&mut self, depth: usize, key: Key) -> bool {
        match &mut self.kind {
            Kind::Bucket(keys) => {
                let Err(at) = keys.binary_search(&key) else {
                    return false;
                };
                keys.insert(at, key);
                if keys.len() > BUCKET_MAX && depth < 256 {
                    let keys = std::mem::take(keys);
                    *self = Node::build(&keys, depth);
                } else {
                    self.hash = hash_sorted(keys);
                }
                true
            }
            Kind::Branch(children, len) => {
                if !children[nibble(&key, depth)].insert(depth + 4, key) {
                    return false;
                }
                *len += 1;
                self.hash = combine16(children);
                true
            }
        }
    }

    /// Inserts strictly increasing `keys` that all share this node's first `depth` bits;
    /// returns how many were absent. Each node on the touched paths is rehashed once.
    fn insert_sorted(&mut self, depth: usize, keys: &[Key]) -> usize {
        match &mut self.kind {
            Kind::Bucket(held) => {
                let before = held.len();
                let mut merged = Vec::with_capacity(before + keys.len());
                let (mut a, mut b) = (held.iter().peekable(), keys.iter().peekable());
                loop {
                    match (a.peek(), b.peek()) {
                        (Some(x), Some(y)) => match x.cmp(y) {
                            std::cmp::Ordering::Less => merged.extend(a.next()),
                            std::cmp::Ordering::Greater => merged.extend(b.next()),
                            std::cmp::Ordering::Equal => {
                                merged.extend(a.next());
                                b.next();
                            }
                        },
                        (Some(_), None) => merged.extend(a.next()),
                        (None, Some(_)) => merged.extend(b.next()),
                        (None, None) => break,
                    }
                }
                let added = merged.len() - before;
                if added == 0 {
                    return 0;
                }
                if merged.len() > BUCKET_MAX && depth < 256 {
                    *self = Node::build(&merged, depth);
                } else {
                    self.hash = hash_sorted(&merged);
                    *held = merged;
                }
                added
            }
            Kind::Branch(children, len) => {
                let mut rest = keys;
                let mut added = 0;
                for (i, child) in children.iter_mut().enumerate() {
                    let n = rest.partition_point(|k| nibble(k, depth) <= i);
                    if n > 0 {
                        added += child.insert_sorted(depth + 4, &rest[..n]);
                    }
                    rest = &rest[n..];
                }
                if added > 0 {
                    *len += added;
                    self.hash = combine16(children);
                }
                added
            }
        }
    }

    /// Removes strictly increasing `keys` that all share this node's first `depth` bits;
    /// returns how many were present. Each node on the touched paths is rehashed once.
    fn remove_sorted(&mut self, depth: usize, keys: &[Key]) -> usize {
        match &mut self.kind {
            Kind::Bucket(held) => {
                let before = held.len();
                held.retain(|k| keys.binary_search(k).is_err());
                let removed = before - held.len();
                if removed > 0 {
                    self.hash = hash_sorted(held);
                }
                removed
            }
            Kind::Branch(children, len) => {
                let mut rest = keys;
                let mut removed = 0;
                for (i, child) in children.iter_mut().enumerate() {
                    let n = rest.partition_point(|k| nibble(k, depth) <= i);
                    if n > 0 {
                        removed += child.remove_sorted(depth + 4, &rest[..n]);
                    }
                    rest = &rest[n..];
                }
                if removed == 0 {
                    return 0;
                }
                *len -= removed;
                if *len <= BUCKET_MIN {
                    let mut held = Vec::with_capacity(*len);
                    children.iter().for_each(|c| c.collect(&mut held));
                    self.hash = hash_sorted(&held);
                    self.kind = Kind::Bucket(held);
                } else {
                    self.hash = combine16(children);
                }
                removed
            }
        }
    }

    fn remove(&mut self, depth: usize, key: &Key) -> bool {
        match &mut self.kind {
            Kind::Bucket(keys) => {
                let Ok(at) = keys.binary_search(key) else {
                    return false;
                };
                keys.remove(at);
                self.hash = hash_sorted(keys);
                true
            }
            Kind::Branch(children, len) => {
                if !children[nibble(key, depth)].remove(depth + 4, key) {
                    return false;
                }
                *len -= 1;
                if *len <= BUCKET_MIN {
                    let mut keys = Vec::with_capacity(*len);
                    children.iter().for_each(|c| c.collect(&mut keys));
                    self.hash = hash_sorted(&keys);
                    self.kind = Kind::Bucket(keys);
                } else {
                    self.hash = combine16(children);
                }
                true
            }
        }
    }

    fn collect(&self, out: &mut Vec<Key>) {
        match &self.kind {
            Kind::Bucket(keys) => out.extend_from_slice(keys),
            Kind::Branch(children, _) => children.iter().for_each(|c| c.collect(out)),
        }
    }

    fn hashes_at(
        &self,
        depth: usize,
        prefix: Prefix,
        target: usize,
        out: &mut Vec<(Prefix, Hash)>,
    ) {
        if self.len() == 0 {
            return;
        }
        if depth == target {
            out.push((prefix, self.hash));
            return;
        }
        match &self.kind {
            Kind::Bucket(keys) => {
                let mut rest = &keys[..];
                while let Some(first) = rest.first() {
                    let p = Prefix::of_key(first, target);
                    let n = rest.partition_point(|k| p.contains(k));
                    out.push((p, hash_sorted(&rest[..n])));
                    rest = &rest[n..];
                }
            }
            Kind::Branch(children, _) => {
                if target >= depth + 4 {
                    for (i, c) in children.iter().enumerate() {
                        c.hashes_at(depth + 4, prefix.extend(i, 4), target, out);
                    }
                } else {
                    let k = target - depth;
                    let width = 1usize << (4 - k);
                    for g in 0..(1usize << k) {
                        let run = &children[g * width..(g + 1) * width];
                        if run.iter().any(|c| c.len() > 0) {
                            let hashes: Vec<Hash> = run.iter().map(|c| c.hash).collect();
                            out.push((prefix.extend(g, k), combine_all(&hashes)));
                        }
                    }
                }
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        match &self.kind {
            Kind::Bucket(keys) => keys.capacity() * size_of::<Key>(),
            Kind::Branch(children, _) => {
                size_of::<[Node; 16]>() + children.iter().map(Node::heap_bytes).sum::<usize>()
            }
        }
    }

    fn hash_with(&self, depth: usize, adds: &[Key], removes: &[Key]) -> Hash {
        if adds.is_empty() && removes.is_empty() {
            return self.hash;
        }
        match &self.kind {
            Kind::Bucket(keys) => {
                let merged = merge_apply(keys, adds, removes);
                hash_sorted(&merged)
            }
            Kind::Branch(children, _) => {
                let (mut adds, mut removes) = (adds, removes);
                let hashes: [Hash; 16] = std::array::from_fn(|i| {
                    let na = adds.partition_point(|k| nibble(k, depth) <= i);
                    let nr = removes.partition_point(|k| nibble(k, depth) <= i);
                    let h = children[i].hash_with(depth + 4, &adds[..na], &removes[..nr]);
                    adds = &adds[na..];
                    removes = &removes[nr..];
                    h
                });
                combine_all(&hashes)
            }
        }
    }
}

fn combine16(children: &[Node; 16]) -> Hash {
    let hashes: [Hash; 16] = std::array::from_fn(|i| children[i].hash);
    combine_all(&hashes)
}

/// `(keys ∪ adds) \ removes`, all three strictly increasing.
fn merge_apply(keys: &[Key], adds: &[Key], removes: &[Key]) -> Vec<Key> {
    let mut out = Vec::with_capacity(keys.len() + adds.len());
    let (mut i, mut j) = (0, 0);
    while i < keys.len() || j < adds.len() {
        let next = if j == adds.len() || (i < keys.len() && keys[i] < adds[j]) {
            i += 1;
            keys[i - 1]
        } else if i < keys.len() && keys[i] == adds[j] {
            i += 1;
            j += 1;
            keys[i - 1]
        } else {
            j += 1;
            adds[j - 1]
        };
        if removes.binary_search(&next).is_err() {
            out.push(next);
        }
    }
    out
}

struct Iter<'a> {
    stack: Vec<std::slice::Iter<'a, Node>>,
    bucket: std::slice::Iter<'a, Key>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Key;

    fn next(&mut self) -> Option<&'a Key> {
        loop {
            if let Some(k) = self.bucket.next() {
                return Some(k);
            }
            let top = self.stack.last_mut()?;
            match top.next() {
                None => {
                    self.stack.pop();
                }
                Some(node) => match &node.kind {
                    Kind::Bucket(keys) => self.bucket = keys.iter(),
                    Kind::Branch(children, _) => self.stack.push(children.iter()),
                },
            }
        }
    }
}
