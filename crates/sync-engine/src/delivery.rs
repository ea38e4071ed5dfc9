//! Ordinal tracking of in-flight deliveries, so a checkpoint only ever advances over a
//! contiguous run of durably applied work.
//!
//! Live deliveries may finish out of order (A arrives first, B is applied first). Each
//! delivery gets an ordinal when it arrives, before any work starts; the resume token
//! advances only while the lowest outstanding ordinal is done. A failed delivery is never
//! marked done, so nothing after it can become the resume point.
//!
//! Deliveries that need no work (out of scope, duplicates) are registered as already done
//! rather than committed directly, so they cannot move the resume point past an earlier
//! delivery still in flight.

use std::collections::VecDeque;

use sync_types::ProgressToken;

/// The default bound on deliveries in flight; more sends the link to repair.
pub const IN_FLIGHT_DELIVERIES_MAX: usize = 100;

/// The number a delivery is known by while in flight.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Ordinal(u64);

/// Too many deliveries are in flight.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{in_flight} deliveries in flight, over the limit of {max}")]
pub(crate) struct InFlightExceeded {
    /// Deliveries in flight.
    pub in_flight: usize,
    /// The limit.
    pub max: usize,
}

/// Tracks the deliveries of one link's pull direction.
#[derive(Debug)]
pub(crate) struct DeliveryTracker {
    /// Ordinal of the first entry of `in_flight`.
    first: u64,
    /// Entries from `first` on: the token and whether the delivery is done.
    in_flight: VecDeque<(ProgressToken, bool)>,
    max: usize,
}

impl DeliveryTracker {
    /// A tracker that refuses more than `max` deliveries in flight.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            first: 0,
            in_flight: VecDeque::new(),
            max,
        }
    }

    /// Registers a delivery before any work on it starts.
    pub(crate) fn deliver(&mut self, token: ProgressToken) -> Result<Ordinal, InFlightExceeded> {
        if self.in_flight.len() >= self.max {
            return Err(InFlightExceeded {
                in_flight: self.in_flight.len(),
                max: self.max,
            });
        }
        let ordinal = Ordinal(self.first + self.in_flight.len() as u64);
        self.in_flight.push_back((token, false));
        Ok(ordinal)
    }

    /// Registers a delivery that needs no work; returns the new resume token if it moved.
    pub(crate) fn skip(
        &mut self,
        token: ProgressToken,
    ) -> Result<Option<ProgressToken>, InFlightExceeded> {
        let ordinal = self.deliver(token)?;
        Ok(self.complete(ordinal))
    }

    /// Marks a delivery durably done; returns the new resume token if it moved.
    ///
    /// An ordinal that is not in flight (from before a [`reset`](Self::reset), or done
    /// twice) is ignored.
    pub(crate) fn complete(&mut self, ordinal: Ordinal) -> Option<ProgressToken> {
        let index = ordinal.0.checked_sub(self.first)?;
        let Ok(index) = usize::try_from(index) else {
            return None;
        };
        match self.in_flight.get_mut(index) {
            Some(entry) => entry.1 = true,
            None => return None,
        }
        let mut advanced = None;
        while let Some(&(token, true)) = self.in_flight.front() {
            self.in_flight.pop_front();
            self.first += 1;
            advanced = Some(token);
        }
        advanced
    }

    /// Deliveries registered and not yet drained.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Forgets every delivery in flight (the link is going to repair); their ordinals are
    /// ignored from now on.
    pub(crate) fn reset(&mut self) {
        self.first += self.in_flight.len() as u64;
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_types::{Cid, StreamId};

    fn tok(position: u64) -> ProgressToken {
        ProgressToken {
            stream_id: StreamId::from_bytes([1; 16]),
            epoch: 1,
            position,
            cid: Cid::from_bytes([0; 32]),
        }
    }

    #[test]
    fn advances_only_over_a_contiguous_done_run() {
        let mut t = DeliveryTracker::new(10);
        let a = t.deliver(tok(1)).unwrap();
        let b = t.deliver(tok(2)).unwrap();
        let c = t.deliver(tok(3)).unwrap();
        assert_eq!(t.complete(b), None, "a is still in flight");
        assert_eq!(t.complete(a), Some(tok(2)));
        assert_eq!(t.complete(c), Some(tok(3)));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn skipped_deliveries_do_not_jump_past_work_in_flight() {
        let mut t = DeliveryTracker::new(10);
        let a = t.deliver(tok(1)).unwrap();
        assert_eq!(t.skip(tok(2)).unwrap(), None);
        assert_eq!(t.complete(a), Some(tok(2)));
        assert_eq!(t.skip(tok(3)).unwrap(), Some(tok(3)));
    }

    #[test]
    fn a_failed_delivery_blocks_everything_after_it() {
        let mut t = DeliveryTracker::new(10);
        let _failed = t.deliver(tok(1)).unwrap();
        let b = t.deliver(tok(2)).unwrap();
        assert_eq!(t.complete(b), None);
        assert_eq!(t.in_flight(), 2);
    }

    #[test]
    fn overflow_and_reset() {
        let mut t = DeliveryTracker::new(2);
        let a = t.deliver(tok(1)).unwrap();
        t.deliver(tok(2)).unwrap();
        assert_eq!(
            t.deliver(tok(3)),
            Err(InFlightExceeded {
                in_flight: 2,
                max: 2
            })
        );
        t.reset();
        assert_eq!(
            t.complete(a),
            None,
            "ordinals from before a reset are ignored"
        );
        let c = t.deliver(tok(3)).unwrap();
        assert_eq!(t.complete(c), Some(tok(3)));
        assert_eq!(t.complete(c), None, "done twice is ignored");
    }
}
