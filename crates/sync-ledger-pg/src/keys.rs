//! From ledger keys to typed columns and back: the tenant number at the front of a
//! tenant partition's keys, and the log position behind it.

use std::ops::Bound;

use sync_ledger::Error;
use sync_ledger::store::{KeyRange, Partition, prefix_successor};

/// The tenant number an LEB128 varint at the start of `key` encodes, and its length in
/// bytes; `None` when the key does not start with a whole `u32` varint.
pub(crate) fn decode_tn(key: &[u8]) -> Option<(u32, usize)> {
    let mut n: u64 = 0;
    for (i, b) in key.iter().enumerate().take(5) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return u32::try_from(n).ok().map(|n| (n, i + 1));
        }
    }
    None
}

/// The LEB128 varint of a tenant number (as `sync_ledger::layout` writes it).
pub(crate) fn encode_tn(mut n: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(5);
    while n >= 0x80 {
        out.push(u8::try_from(n & 0x7f).unwrap_or(0) | 0x80);
        n >>= 7;
    }
    out.push(u8::try_from(n).unwrap_or(0));
    out
}

/// The tenant column of a key of a tenant partition.
pub(crate) fn tenant_of(p: Partition, key: &[u8]) -> Result<i64, Error> {
    decode_tn(key)
        .map(|(tn, _)| i64::from(tn))
        .ok_or(Error::CorruptKey {
            partition: p.name(),
            reason: "a key of this partition starts with a tenant number",
        })
}

/// The `(tn, pos)` columns of a log key.
pub(crate) fn log_columns(p: Partition, key: &[u8]) -> Result<(i64, i64), Error> {
    let bad = Error::CorruptKey {
        partition: p.name(),
        reason: "a log key is a tenant number and a position below 2^63",
    };
    let Some((tn, len)) = decode_tn(key) else {
        return Err(bad);
    };
    let Ok(pos) = <[u8; 8]>::try_from(&key[len..]) else {
        return Err(bad);
    };
    let pos = i64::try_from(u64::from_be_bytes(pos)).map_err(|_| bad)?;
    Ok((i64::from(tn), pos))
}

/// The log key of `(tn, pos)` columns.
pub(crate) fn log_key(tn: i64, pos: i64) -> Vec<u8> {
    let mut key = encode_tn(u32::try_from(tn).unwrap_or(u32::MAX));
    key.extend_from_slice(&pos.to_be_bytes());
    key
}

/// The one tenant whose keys hold every key of `range`, if there is one (the range lies
/// within that tenant's prefix).
pub(crate) fn single_tenant(range: &KeyRange) -> Option<u32> {
    let start = match &range.start {
        Bound::Included(s) | Bound::Excluded(s) => s,
        Bound::Unbounded => return None,
    };
    let (tn, len) = decode_tn(start)?;
    let end_limit = prefix_successor(&start[..len])?;
    let inside = match &range.end {
        Bound::Excluded(e) => e.as_slice() <= end_limit.as_slice(),
        Bound::Included(e) => e.as_slice() < end_limit.as_slice(),
        Bound::Unbounded => false,
    };
    inside.then_some(tn)
}

/// Keys of one tenant's prefix intersected with `range`.
pub(crate) fn within_tenant(range: &KeyRange, tn: u32) -> KeyRange {
    let prefix = KeyRange::prefix(&encode_tn(tn));
    let start = match (&range.start, prefix.start) {
        (Bound::Included(s), Bound::Included(p)) | (Bound::Excluded(s), Bound::Included(p))
            if *s < p =>
        {
            Bound::Included(p)
        }
        (Bound::Unbounded, p) => p,
        (s, _) => s.clone(),
    };
    let end = match (&range.end, prefix.end) {
        (Bound::Included(e), Bound::Excluded(p)) | (Bound::Excluded(e), Bound::Excluded(p))
            if *e >= p =>
        {
            Bound::Excluded(p)
        }
        (Bound::Unbounded, p) => p,
        (e, _) => e.clone(),
    };
    KeyRange { start, end }
}

/// The positions `lo..=hi` of the log keys of tenant `tn` that lie in `range` (which
/// lies within the tenant), or `None` when there are none.
pub(crate) fn position_bounds(range: &KeyRange, tn: u32) -> Option<(i64, i64)> {
    let prefix = encode_tn(tn);
    // The position a suffix `r` spells: its first 8 bytes, padded with zeros.
    let spelled = |r: &[u8]| -> i128 {
        let mut bytes = [0u8; 8];
        let n = r.len().min(8);
        bytes[..n].copy_from_slice(&r[..n]);
        i128::from(u64::from_be_bytes(bytes))
    };
    let lo: i128 = match &range.start {
        Bound::Unbounded => 0,
        Bound::Included(s) | Bound::Excluded(s) if s.as_slice() < prefix.as_slice() => 0,
        Bound::Included(s) | Bound::Excluded(s) if !s.starts_with(&prefix) => return None,
        Bound::Included(s) => {
            let r = &s[prefix.len()..];
            spelled(r) + i128::from(r.len() > 8)
        }
        Bound::Excluded(s) => {
            let r = &s[prefix.len()..];
            spelled(r) + i128::from(r.len() >= 8)
        }
    };
    // Exclusive upper bound.
    let hi: i128 = match &range.end {
        Bound::Unbounded => i128::from(u64::MAX) + 1,
        Bound::Included(e) | Bound::Excluded(e) if !e.starts_with(&prefix) => {
            if e.as_slice() < prefix.as_slice() {
                return None;
            }
            i128::from(u64::MAX) + 1
        }
        Bound::Included(e) => {
            let r = &e[prefix.len()..];
            spelled(r) + i128::from(r.len() >= 8)
        }
        Bound::Excluded(e) => {
            let r = &e[prefix.len()..];
            spelled(r) + i128::from(r.len() > 8)
        }
    };
    let hi = hi.min(i128::from(i64::MAX) + 1);
    if lo >= hi {
        return None;
    }
    Some((i64::try_from(lo).ok()?, i64::try_from(hi - 1).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tn: u32, pos: u64) -> Vec<u8> {
        let mut k = encode_tn(tn);
        k.extend_from_slice(&pos.to_be_bytes());
        k
    }

    #[test]
    fn varints_round_trip() {
        for n in [0, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let e = encode_tn(n);
            assert_eq!(decode_tn(&e), Some((n, e.len())));
        }
        assert_eq!(decode_tn(&[0x80]), None);
        assert_eq!(decode_tn(&[]), None);
    }

    /// Every position bound agrees with comparing key bytes, for bounds of every length.
    #[test]
    fn position_bounds_agree_with_key_order() {
        let tn = 130;
        let p = encode_tn(tn);
        let mut bounds: Vec<Vec<u8>> = vec![p.clone()];
        for pos in [0u64, 1, 2, 255, 256, 257] {
            let k = key(tn, pos);
            bounds.push(k.clone());
            bounds.push(k[..p.len() + 7].to_vec());
            let mut longer = k.clone();
            longer.push(0);
            bounds.push(longer);
        }
        let keys: Vec<u64> = (0..300).collect();
        for a in &bounds {
            for b in &bounds {
                for (start, end) in [
                    (Bound::Included(a.clone()), Bound::Excluded(b.clone())),
                    (Bound::Excluded(a.clone()), Bound::Included(b.clone())),
                    (Bound::Included(a.clone()), Bound::Included(b.clone())),
                    (Bound::Excluded(a.clone()), Bound::Excluded(b.clone())),
                ] {
                    let range = KeyRange { start, end };
                    let want: Vec<u64> = keys
                        .iter()
                        .copied()
                        .filter(|&pos| range.contains(&key(tn, pos)))
                        .collect();
                    let got: Vec<u64> = match position_bounds(&range, tn) {
                        Some((lo, hi)) => keys
                            .iter()
                            .copied()
                            .filter(|&pos| pos as i64 >= lo && pos as i64 <= hi)
                            .collect(),
                        None => Vec::new(),
                    };
                    assert_eq!(got, want, "{range:?}");
                }
            }
        }
    }

    #[test]
    fn ranges_within_one_tenant() {
        assert_eq!(single_tenant(&KeyRange::prefix(&encode_tn(5))), Some(5));
        assert_eq!(single_tenant(&KeyRange::prefix(&encode_tn(300))), Some(300));
        assert_eq!(single_tenant(&KeyRange::all()), None);
        assert_eq!(
            single_tenant(&KeyRange::between(key(5, 1), key(6, 0))),
            None
        );
        assert_eq!(
            single_tenant(&KeyRange::between(key(5, 1), key(5, 9))),
            Some(5)
        );
        let r = within_tenant(&KeyRange::all(), 7);
        assert_eq!(r, KeyRange::prefix(&encode_tn(7)));
    }
}
