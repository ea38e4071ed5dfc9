//! Positions of a remote log whose messages a replica already holds.
//!
//! A replica that pushes a message learns where the node put it in its log (the node
//! answers a push with the positions it gave the messages). It keeps them as
//! [`KnownRanges`] of that log, and a later pull asks the node to leave those bodies out
//! of its pages, so the replica never downloads what it uploaded (no echo). The ranges
//! only ever cost the replica that claims them: a claim makes the node leave out
//! entries of the claimant's own pages, never add any.

use serde::{Deserialize, Serialize};

use crate::{ProgressToken, StreamId, ValidationError};

/// Most ranges a [`KnownRanges`] holds; inserting more drops the lowest ones (which
/// only costs downloading them again).
pub const KNOWN_RANGES_MAX: usize = 64;

/// Inclusive ranges of positions of one log instance and epoch: sorted, disjoint, not
/// adjacent (adjacent ranges are merged), at most [`KNOWN_RANGES_MAX`].
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(try_from = "KnownRangesWire", into = "KnownRangesWire")]
pub struct KnownRanges {
    stream_id: StreamId,
    epoch: u64,
    ranges: Vec<(u64, u64)>,
}

#[derive(Serialize, Deserialize)]
struct KnownRangesWire {
    stream_id: StreamId,
    epoch: u64,
    ranges: Vec<(u64, u64)>,
}

impl TryFrom<KnownRangesWire> for KnownRanges {
    type Error = ValidationError;

    fn try_from(w: KnownRangesWire) -> Result<Self, ValidationError> {
        if w.ranges.len() > KNOWN_RANGES_MAX {
            return Err(ValidationError::TooLong {
                what: "known ranges",
                len: w.ranges.len(),
                max: KNOWN_RANGES_MAX,
            });
        }
        let mut prev_end: Option<u64> = None;
        for &(start, end) in &w.ranges {
            if start > end {
                return Err(ValidationError::Malformed {
                    what: "known ranges",
                    reason: "a range ends before it starts",
                });
            }
            if prev_end.is_some_and(|p| p.saturating_add(1) >= start) {
                return Err(ValidationError::Malformed {
                    what: "known ranges",
                    reason: "ranges must be sorted, disjoint and not adjacent",
                });
            }
            prev_end = Some(end);
        }
        Ok(Self {
            stream_id: w.stream_id,
            epoch: w.epoch,
            ranges: w.ranges,
        })
    }
}

impl From<KnownRanges> for KnownRangesWire {
    fn from(k: KnownRanges) -> Self {
        Self {
            stream_id: k.stream_id,
            epoch: k.epoch,
            ranges: k.ranges,
        }
    }
}

impl KnownRanges {
    /// No positions of the log `stream_id` at `epoch`.
    pub fn new(stream_id: StreamId, epoch: u64) -> Self {
        Self {
            stream_id,
            epoch,
            ranges: Vec::new(),
        }
    }

    /// The log instance.
    pub fn stream_id(&self) -> StreamId {
        self.stream_id
    }

    /// The log's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The ranges, inclusive, in order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether no position is known.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `token` is of this log and its position is known.
    pub fn contains(&self, token: &ProgressToken) -> bool {
        self.same_log(token) && self.contains_position(token.position)
    }

    /// Whether `token` belongs to this log instance and epoch.
    pub fn same_log(&self, token: &ProgressToken) -> bool {
        token.stream_id == self.stream_id && token.epoch == self.epoch
    }

    fn contains_position(&self, position: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, end)| end < position);
        self.ranges
            .get(i)
            .is_some_and(|&(start, _)| start <= position)
    }

    /// Adds `position`, merging with its neighbours; beyond [`KNOWN_RANGES_MAX`]
    /// ranges the lowest go.
    pub fn insert(&mut self, position: u64) {
        self.insert_range(position, position);
    }

    /// Adds every position of `other` when it is of the same log; `other` replaces
    /// `self` when it is of another one (a newer log instance or epoch).
    pub fn merge(&mut self, other: &KnownRanges) {
        if other.stream_id != self.stream_id || other.epoch != self.epoch {
            *self = other.clone();
            return;
        }
        for &(start, end) in &other.ranges {
            self.insert_range(start, end);
        }
    }

    fn insert_range(&mut self, start: u64, end: u64) {
        // Ranges touching or overlapping [start, end] are merged into it.
        let lo = self
            .ranges
            .partition_point(|&(_, e)| e.saturating_add(1) < start);
        let hi = self
            .ranges
            .partition_point(|&(s, _)| s <= end.saturating_add(1));
        let (mut s, mut e) = (start, end);
        if lo < hi {
            s = s.min(self.ranges[lo].0);
            e = e.max(self.ranges[hi - 1].1);
        }
        self.ranges.splice(lo..hi, [(s, e)]);
        if self.ranges.len() > KNOWN_RANGES_MAX {
            let extra = self.ranges.len() - KNOWN_RANGES_MAX;
            self.ranges.drain(..extra);
        }
    }

    /// Forgets every position at or before `position` (what a checkpoint has passed).
    pub fn forget_through(&mut self, position: u64) {
        self.ranges.retain(|&(_, end)| end > position);
        if let Some(first) = self.ranges.first_mut()
            && first.0 <= position
        {
            first.0 = position + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(positions: &[u64]) -> KnownRanges {
        let mut k = KnownRanges::new(StreamId::from_bytes([1; 16]), 0);
        for &p in positions {
            k.insert(p);
        }
        k
    }

    #[test]
    fn positions_coalesce_into_ranges() {
        let k = known(&[5, 3, 4, 10, 12, 11, 1]);
        assert_eq!(k.ranges(), &[(1, 1), (3, 5), (10, 12)]);
        assert!(k.contains_position(4) && k.contains_position(12));
        assert!(!k.contains_position(2) && !k.contains_position(6));
        let mut k = k;
        k.insert(2);
        assert_eq!(k.ranges(), &[(1, 5), (10, 12)]);
    }

    #[test]
    fn beyond_the_cap_the_lowest_ranges_go_and_nothing_unknown_is_claimed() {
        let positions: Vec<u64> = (0..(KNOWN_RANGES_MAX as u64 + 5)).map(|i| i * 2).collect();
        let k = known(&positions);
        assert_eq!(k.ranges().len(), KNOWN_RANGES_MAX);
        assert_eq!(k.ranges()[0], (10, 10));
        assert!(
            (0..200)
                .filter(|p| p % 2 == 1)
                .all(|p| !k.contains_position(p))
        );
    }

    #[test]
    fn forgetting_through_a_checkpoint_cuts_and_drops() {
        let mut k = known(&[1, 2, 3, 7, 8, 9]);
        k.forget_through(8);
        assert_eq!(k.ranges(), &[(9, 9)]);
        k.forget_through(20);
        assert!(k.is_empty());
    }

    #[test]
    fn merge_of_another_log_replaces() {
        let mut a = known(&[1, 2]);
        let mut b = KnownRanges::new(StreamId::from_bytes([2; 16]), 0);
        b.insert(9);
        a.merge(&b);
        assert_eq!(a, b);
        let mut c = known(&[3]);
        c.merge(&known(&[4, 8]));
        assert_eq!(c.ranges(), &[(3, 4), (8, 8)]);
    }

    #[test]
    fn decoding_refuses_unsorted_overlapping_or_too_many_ranges() {
        let enc = |ranges: Vec<(u64, u64)>| {
            crate::codec::encode(&KnownRangesWire {
                stream_id: StreamId::from_bytes([1; 16]),
                epoch: 0,
                ranges,
            })
        };
        let dec = |b: &[u8]| crate::codec::decode::<KnownRanges>(b, 1 << 20);
        assert!(dec(&enc(vec![(1, 2), (5, 6)])).is_ok());
        assert!(dec(&enc(vec![(5, 6), (1, 2)])).is_err());
        assert!(dec(&enc(vec![(1, 5), (5, 6)])).is_err());
        assert!(dec(&enc(vec![(1, 2), (3, 6)])).is_err());
        assert!(dec(&enc(vec![(4, 2)])).is_err());
        let many = (0..=KNOWN_RANGES_MAX as u64)
            .map(|i| (i * 3, i * 3))
            .collect();
        assert!(dec(&enc(many)).is_err());
    }
}
