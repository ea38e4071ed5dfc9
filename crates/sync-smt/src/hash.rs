//! Keys, hashes, bit prefixes and the canonical set hash.
//!
//! The hash of a set of keys `S` is defined without reference to any tree layout:
//!
//! - `H({}) = EMPTY` (32 zero bytes);
//! - `H({k}) = blake3::keyed_hash(LEAF_KEY, k)`;
//! - for `|S| >= 2`, let `b` be the first bit at which the smallest and the largest key of
//!   `S` differ, `S0` the keys with bit `b` clear and `S1` those with it set; then
//!   `H(S) = blake3::keyed_hash(INNER_KEY, H(S0) || H(S1))`.
//!
//! `LEAF_KEY = blake3::derive_key("weft sync-smt v1 leaf", b"")` and
//! `INNER_KEY = blake3::derive_key("weft sync-smt v1 inner", b"")`: distinct keys separate the
//! leaf domain from the inner domain. Bits are numbered MSB first (bit 0 is the top bit of
//! byte 0), so byte-wise order of keys is the order of the trie's leaves.
//!
//! This is the sparse Merkle tree of depth 256 with every single-child chain compressed:
//! a subtree holding one key is its leaf, and a node with one empty side is its other side.
//! Consequences the rest of the crate relies on:
//!
//! - the hash of the subtree under a prefix `p` is `H(keys under p)`, whatever `p`'s length;
//! - for a prefix `p` of length `b`, `H(p) = combine(H(p0), H(p1))` where
//!   `combine(EMPTY, x) = x`, `combine(x, EMPTY) = x`, else the inner hash — so cached child
//!   hashes combine upward without knowing the keys.
//!
//! The branch bit is not hashed: `H` is injective on sets (barring a blake3 collision) by
//! induction on the size of the set, because each inner hash binds both sides and each leaf
//! binds its whole key.

use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// A key: 256 bits, usually itself a hash (a message id). Byte-wise order is bit order.
pub type Key = [u8; 32];

/// A 32-byte blake3 hash of a set of keys (see the module docs for the definition).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash of the empty set: 32 zero bytes.
    pub const EMPTY: Hash = Hash([0; 32]);

    /// The raw bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    #[must_use]
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

struct Keys {
    leaf: [u8; 32],
    inner: [u8; 32],
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        leaf: blake3::derive_key("weft sync-smt v1 leaf", b""),
        inner: blake3::derive_key("weft sync-smt v1 inner", b""),
    })
}

/// The hash of the one-key set `{key}`. One blake3 compression.
#[must_use]
pub fn leaf_hash(key: &Key) -> Hash {
    Hash(*blake3::keyed_hash(&keys().leaf, key).as_bytes())
}

/// The inner hash of two non-empty sides. One blake3 compression (64-byte input).
#[must_use]
pub(crate) fn inner_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(&left.0);
    buf[32..].copy_from_slice(&right.0);
    Hash(*blake3::keyed_hash(&keys().inner, &buf).as_bytes())
}

/// Combine the hashes of the two halves of a prefix into the prefix's hash.
#[must_use]
pub(crate) fn combine(left: &Hash, right: &Hash) -> Hash {
    if *left == Hash::EMPTY {
        *right
    } else if *right == Hash::EMPTY {
        *left
    } else {
        inner_hash(left, right)
    }
}

/// Combine `2^m` aligned sibling hashes (in bit order) into the hash of their common prefix.
#[must_use]
pub(crate) fn combine_all(hashes: &[Hash]) -> Hash {
    debug_assert!(hashes.len().is_power_of_two());
    if hashes.len() == 1 {
        return hashes[0];
    }
    let half = hashes.len() / 2;
    combine(&combine_all(&hashes[..half]), &combine_all(&hashes[half..]))
}

/// Bit `i` (MSB first) of `key`.
#[inline]
#[must_use]
pub(crate) fn bit(key: &Key, i: usize) -> bool {
    key[i / 8] >> (7 - i % 8) & 1 == 1
}

/// The 4-bit group starting at bit `d` (a multiple of 4).
#[inline]
#[must_use]
pub(crate) fn nibble(key: &Key, d: usize) -> usize {
    debug_assert!(d.is_multiple_of(4) && d < 256);
    let b = key[d / 8];
    usize::from(if d.is_multiple_of(8) { b >> 4 } else { b & 15 })
}

/// Length in bits of the common prefix of two keys (256 when equal).
#[must_use]
pub(crate) fn common_prefix_bits(a: &Key, b: &Key) -> usize {
    for i in 0..32 {
        let x = a[i] ^ b[i];
        if x != 0 {
            return i * 8 + x.leading_zeros() as usize;
        }
    }
    256
}

/// `H(keys)` for strictly increasing `keys`. Costs `2n - 1` compressions for `n` keys and
/// `O(n log n)` comparisons; recursion depth is at most 256.
#[must_use]
pub fn hash_sorted(keys: &[Key]) -> Hash {
    match keys {
        [] => Hash::EMPTY,
        [k] => leaf_hash(k),
        [first, .., last] => {
            let b = common_prefix_bits(first, last);
            debug_assert!(b < 256, "keys must be distinct");
            let split = keys.partition_point(|k| !bit(k, b));
            inner_hash(&hash_sorted(&keys[..split]), &hash_sorted(&keys[split..]))
        }
    }
}

/// A bit prefix of a key: the first `len` bits (0 to 256) of `bits`; the bits after `len`
/// are always zero, so equal prefixes are equal values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prefix {
    bits: Key,
    len: u16,
}

impl Prefix {
    /// The empty prefix, which covers every key.
    pub const ROOT: Prefix = Prefix {
        bits: [0; 32],
        len: 0,
    };

    /// The first `len` bits of `key`. Panics if `len > 256` (a programmer error).
    #[must_use]
    pub fn of_key(key: &Key, len: usize) -> Prefix {
        assert!(len <= 256, "prefix length {len} > 256");
        let mut bits = *key;
        mask_after(&mut bits, len);
        Prefix {
            bits,
            len: to_u16(len),
        }
    }

    /// Length in bits.
    #[must_use]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether this is the empty prefix.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The prefix bits, zero after `len`.
    #[must_use]
    pub fn bits(&self) -> &Key {
        &self.bits
    }

    /// Whether `key` starts with this prefix.
    #[must_use]
    pub fn contains(&self, key: &Key) -> bool {
        let len = self.len();
        let full = len / 8;
        if key[..full] != self.bits[..full] {
            return false;
        }
        let rest = len % 8;
        rest == 0 || (key[full] ^ self.bits[full]) >> (8 - rest) == 0
    }

    /// The prefix extended by `count` bits (at most 8) holding `value`'s low bits, MSB first.
    /// Panics if the result would be longer than 256 bits.
    #[must_use]
    pub fn extend(&self, value: usize, count: usize) -> Prefix {
        assert!(count <= 8 && self.len() + count <= 256, "prefix too long");
        let mut p = *self;
        for i in 0..count {
            if value >> (count - 1 - i) & 1 == 1 {
                let at = self.len() + i;
                p.bits[at / 8] |= 1 << (7 - at % 8);
            }
        }
        p.len += to_u16(count);
        p
    }

    /// The smallest key under this prefix.
    #[must_use]
    pub(crate) fn min_key(&self) -> Key {
        self.bits
    }

    /// The largest key under this prefix.
    #[must_use]
    pub(crate) fn max_key(&self) -> Key {
        let mut k = self.bits;
        let len = self.len();
        for (i, b) in k.iter_mut().enumerate() {
            let start = i * 8;
            if start + 8 <= len {
                continue;
            }
            let keep = len.saturating_sub(start);
            // `keep < 8` here: this byte holds the end of the prefix.
            *b |= 0xffu8 >> keep;
        }
        k
    }

    /// The range of `sorted` (strictly increasing) whose keys start with this prefix.
    #[must_use]
    pub(crate) fn range_in(&self, sorted: &[Key]) -> std::ops::Range<usize> {
        if self.is_empty() {
            return 0..sorted.len();
        }
        let lo = self.min_key();
        let hi = self.max_key();
        let start = sorted.partition_point(|k| *k < lo);
        let end = start + sorted[start..].partition_point(|k| *k <= hi);
        start..end
    }

    /// Compact wire form: `[len mod 256] ++ ceil(len / 8) packed bytes`.
    fn to_wire(self) -> Vec<u8> {
        let n = self.len().div_ceil(8);
        let mut out = Vec::with_capacity(1 + n);
        out.push(self.len.to_le_bytes()[0]);
        out.extend_from_slice(&self.bits[..n]);
        out
    }

    /// Parse the wire form; `None` if malformed or not canonical.
    fn from_wire(bytes: &[u8]) -> Option<Prefix> {
        let (&first, packed) = bytes.split_first()?;
        let n = packed.len();
        let len = if n == 32 && first == 0 {
            256
        } else {
            usize::from(first)
        };
        if len.div_ceil(8) != n {
            return None;
        }
        let mut bits = [0u8; 32];
        bits[..n].copy_from_slice(packed);
        let p = Prefix::of_key(&bits, len);
        (p.bits == bits).then_some(p)
    }
}

/// A bit count of at most 256 as `u16`.
fn to_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn mask_after(bits: &mut Key, len: usize) {
    for (i, b) in bits.iter_mut().enumerate() {
        let start = i * 8;
        if start >= len {
            *b = 0;
        } else if start + 8 > len {
            *b &= 0xffu8 << (8 - (len - start));
        }
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix(")?;
        for i in 0..self.len() {
            f.write_str(if bit(&self.bits, i) { "1" } else { "0" })?;
        }
        write!(f, ")")
    }
}

impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.to_wire())
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Prefix;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a canonical bit prefix")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Prefix, E> {
                Prefix::from_wire(v).ok_or_else(|| E::custom("malformed prefix"))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_contains_and_range() {
        let k = [0b1010_1100u8; 32];
        for len in 0..=256 {
            let p = Prefix::of_key(&k, len);
            assert!(p.contains(&k));
            assert!(p.contains(&p.min_key()) && p.contains(&p.max_key()));
            assert_eq!(Prefix::from_wire(&p.to_wire()), Some(p));
        }
        let p = Prefix::of_key(&k, 3);
        let mut other = k;
        other[0] = 0b1000_0000;
        assert!(!p.contains(&other));
    }

    #[test]
    fn prefix_wire_rejects_noncanonical() {
        assert_eq!(Prefix::from_wire(&[]), None);
        assert_eq!(Prefix::from_wire(&[4, 0xff]), None);
        assert_eq!(Prefix::from_wire(&[9, 0xff]), None);
        assert!(Prefix::from_wire(&[4, 0xf0]).is_some());
    }

    #[test]
    fn combine_matches_hash_sorted() {
        let mut keys: Vec<Key> = (0u8..40).map(|i| *blake3::hash(&[i]).as_bytes()).collect();
        keys.sort();
        let root = hash_sorted(&keys);
        let ends = [0x80u8; 1];
        let split = keys.partition_point(|k| k[0] < ends[0]);
        assert_eq!(
            combine(&hash_sorted(&keys[..split]), &hash_sorted(&keys[split..])),
            root
        );
    }
}
