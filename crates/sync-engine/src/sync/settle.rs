//! The pure core of catch-up and push: where each entry of a page ended up, how far
//! that lets a checkpoint move, and the cursor a catch-up reads the remote log with.
//!
//! Nothing here awaits, reads a clock or touches a store: the async code in
//! [`catch_up`](super::catch_up) and [`push`](super::push) fetches, gates and applies or
//! sends, then hands the outcomes to these functions and acts on what they answer. The
//! rule they implement is the one the whole engine rests on: **a checkpoint moves only
//! over a settled prefix**. An entry is settled when it is held by the receiver
//! (applied, duplicate, superseded) or refused for good and dead-lettered; the first
//! entry that is neither (deferred, waiting for a dependency, not sent) stops the
//! prefix, so nothing after it can become the resume point.

use std::cmp::Ordering;

use sync_transport::proto::LogPage;
use sync_types::{ApplyOutcome, DirectionCheckpoint, ProgressToken};

use crate::error::{Error, Result};

/// Where a message ended up after sending or applying it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Settle {
    /// Held by the receiver.
    Done,
    /// Refused for good and dead-lettered.
    Failed,
    /// Not settled: the checkpoint must stay before it.
    Open,
}

/// How an apply or write outcome settles its message.
pub(crate) fn settle(outcome: &ApplyOutcome) -> Settle {
    if outcome.is_success() {
        Settle::Done
    } else if outcome.is_permanent_failure() {
        Settle::Failed
    } else {
        Settle::Open
    }
}

/// How far a page lets a checkpoint move.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Prefix {
    /// Entries settled in order from the first; the entry at this index (if any) is the
    /// first unsettled one.
    pub(crate) settled: usize,
    /// Whether every entry settled.
    pub(crate) complete: bool,
    /// The checkpoint to move to: the page's cursor when every entry settled (it may
    /// lie past the last entry, over entries a filter skipped), else the last settled
    /// entry; `None` when nothing settled and there is no cursor.
    pub(crate) target: Option<ProgressToken>,
}

/// The settled prefix of a page whose entries settled as `entries` say, in log order;
/// `next` is the page's cursor.
pub(crate) fn settled_prefix(
    entries: impl IntoIterator<Item = (ProgressToken, Settle)>,
    next: Option<ProgressToken>,
) -> Prefix {
    let mut settled = 0;
    let mut last = None;
    for (token, s) in entries {
        if s == Settle::Open {
            return Prefix {
                settled,
                complete: false,
                target: last,
            };
        }
        settled += 1;
        last = Some(token);
    }
    Prefix {
        settled,
        complete: true,
        target: next.or(last),
    }
}

/// What a catch-up does after a page.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Next {
    /// Read the next page.
    Read,
    /// The remote's head is reached.
    Head,
    /// An entry did not settle: stop here (the caller says why).
    Stop,
}

/// The cursor of one catch-up over the remote log: the pull checkpoint it moves, the
/// page size (halved when a reply is too large), and the count of pages that did not
/// advance. See the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct PullCursor {
    checkpoint: DirectionCheckpoint,
    limit: u32,
    stalls: u32,
    stalls_max: u32,
}

impl PullCursor {
    /// A cursor from `checkpoint`, reading pages of `limit` entries.
    pub(crate) fn new(checkpoint: DirectionCheckpoint, limit: u32, stalls_max: u32) -> Self {
        Self {
            checkpoint,
            limit: limit.max(1),
            stalls: 0,
            stalls_max,
        }
    }

    /// The checkpoint so far.
    pub(crate) fn checkpoint(&self) -> DirectionCheckpoint {
        self.checkpoint
    }

    /// Where the next page starts and how many entries to ask for.
    pub(crate) fn request(&self) -> (Option<ProgressToken>, u32) {
        (self.checkpoint.contiguous_applied, self.limit)
    }

    /// The request that follows an accepted `page` if every entry of it settles: what a
    /// catch-up may read while it applies `page` (at most
    /// [`PULL_PAGES_AHEAD_MAX`](super::PULL_PAGES_AHEAD_MAX) page ahead). `None` when
    /// the page is the last or would not move the cursor. The page read ahead is used
    /// only when [`request`](Self::request) asks for exactly it after the
    /// [`advance`](Self::advance).
    pub(crate) fn ahead(&self, page: &LogPage) -> Option<(Option<ProgressToken>, u32)> {
        let target = page.next.or(page.entries.last().map(|e| e.token))?;
        (page.has_more && self.checkpoint.contiguous_applied != Some(target))
            .then_some((Some(target), self.limit))
    }

    /// The reply was too large for the frame limit: whether a smaller page can be asked
    /// for (halving the page size).
    pub(crate) fn shrink(&mut self) -> bool {
        if self.limit <= 1 {
            return false;
        }
        self.limit /= 2;
        true
    }

    /// Checks a page read from [`request`](Self::request)'s point and drops what is
    /// settled already: every token must belong to the checkpoint's log, entries at or
    /// before what was delivered (a repeated page, a duplicate across a page boundary
    /// or inside a page) are dropped, and a cursor behind the entries moves nothing
    /// back. Returns how many entries were dropped.
    pub(crate) fn accept(&self, page: &mut LogPage) -> Result<u64> {
        let mut prev = self.checkpoint.contiguous_applied;
        let before = page.entries.len();
        for e in &page.entries {
            if !self.checkpoint.accepts_domain(&e.token) {
                return Err(Error::Protocol(format!(
                    "log page entry {} is from another log than the checkpoint",
                    e.token
                )));
            }
        }
        page.entries.retain(|e| {
            let newer = prev.is_none_or(|p| e.token.compare(&p) == Some(Ordering::Greater));
            if newer {
                prev = Some(e.token);
            }
            newer
        });
        if let Some(next) = page.next
            && !self.checkpoint.accepts_domain(&next)
        {
            return Err(Error::Protocol(format!(
                "log page cursor {next} is from another log than the checkpoint"
            )));
        }
        if page
            .next
            .is_some_and(|n| prev.is_some_and(|p| n.compare(&p) == Some(Ordering::Less)))
        {
            page.next = prev;
        }
        Ok((before - page.entries.len()) as u64)
    }

    /// Moves the checkpoint over `prefix` of an accepted `page`. Returns the resume
    /// point before the move when it moved (the caller reports the move), and what to
    /// do next; an error when pages keep saying more follows without advancing.
    pub(crate) fn advance(
        &mut self,
        page: &LogPage,
        prefix: Prefix,
    ) -> Result<(Option<Option<ProgressToken>>, Next)> {
        let from = self.checkpoint.contiguous_applied;
        if let Some(last) = page.entries.last() {
            self.checkpoint.observe_received(last.token);
        }
        let mut moved = None;
        if let Some(t) = prefix.target
            && from != Some(t)
        {
            self.checkpoint.commit(t);
            moved = Some(from);
        }
        if !prefix.complete {
            return Ok((moved, Next::Stop));
        }
        if !page.has_more {
            return Ok((moved, Next::Head));
        }
        if self.checkpoint.contiguous_applied == from {
            self.stalls += 1;
            if self.stalls > self.stalls_max {
                return Err(Error::Protocol(
                    "log pages say more follows but do not advance".into(),
                ));
            }
        } else {
            self.stalls = 0;
        }
        Ok((moved, Next::Read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_transport::proto::MessageData;
    use sync_types::{Cid, StreamId};

    fn token(stream: u8, position: u8) -> ProgressToken {
        ProgressToken {
            stream_id: StreamId::from_bytes([stream; 16]),
            epoch: 1,
            position: u64::from(position),
            cid: Cid::from_bytes([position; 32]),
        }
    }

    fn message(n: u8) -> MessageData {
        use sync_types::{
            Configure, Hlc, Message, PrincipalId, ProtocolDefinition, ProtocolName, TenantId,
        };
        MessageData {
            message: Message::Configure(Configure {
                tenant: TenantId::new("did:example:t").unwrap(),
                protocol: ProtocolName::new(format!("https://example.com/p{n}")).unwrap(),
                definition: ProtocolDefinition {
                    types: vec![],
                    uses: vec![],
                },
                timestamp: Hlc::ZERO,
                author: PrincipalId::new("did:example:t").unwrap(),
            }),
            data: None,
        }
    }

    fn page(positions: &[u8], next: Option<u8>, has_more: bool) -> LogPage {
        LogPage {
            entries: positions
                .iter()
                .map(|&p| sync_transport::proto::LogEntry {
                    token: token(1, p),
                    item: message(p),
                })
                .collect(),
            next: next.map(|n| token(1, n)),
            has_more,
        }
    }

    use Settle::{Done, Failed, Open};

    #[test]
    fn the_prefix_stops_at_the_first_open_entry() {
        let t = |p| token(1, p);
        let p = settled_prefix(
            [(t(1), Done), (t(2), Failed), (t(3), Open), (t(4), Done)],
            Some(t(9)),
        );
        assert_eq!(
            p,
            Prefix {
                settled: 2,
                complete: false,
                target: Some(t(2))
            }
        );
        let all = settled_prefix([(t(1), Done), (t(2), Failed)], Some(t(9)));
        assert_eq!(
            all.target,
            Some(t(9)),
            "a complete page moves to its cursor"
        );
        assert!(all.complete);
        let none = settled_prefix([(t(1), Open)], Some(t(9)));
        assert_eq!(none.target, None);
        assert_eq!(settled_prefix([], None).target, None);
    }

    #[test]
    fn outcomes_settle_as_the_protocol_says() {
        assert_eq!(settle(&ApplyOutcome::Applied), Done);
        assert_eq!(settle(&ApplyOutcome::Duplicate), Done);
        assert_eq!(settle(&ApplyOutcome::Unauthorized), Failed);
        assert_eq!(settle(&ApplyOutcome::Deferred), Open);
    }

    #[test]
    fn a_cursor_drops_repeats_and_refuses_another_log() {
        let mut cp = DirectionCheckpoint::default();
        cp.commit(token(1, 3));
        let cursor = PullCursor::new(cp, 10, 3);
        let mut p = page(&[2, 3, 4, 4, 5], Some(1), true);
        assert_eq!(cursor.accept(&mut p).unwrap(), 3);
        let kept: Vec<u64> = p.entries.iter().map(|e| e.token.position).collect();
        assert_eq!(kept, vec![4, 5]);
        assert_eq!(
            p.next,
            Some(token(1, 5)),
            "a cursor behind the entries moves nothing back"
        );

        let mut foreign = page(&[4], None, false);
        foreign.entries[0].token = token(2, 4);
        assert!(cursor.accept(&mut foreign).is_err());
    }

    #[test]
    fn a_cursor_advances_over_the_prefix_and_gives_up_on_pages_that_do_not_advance() {
        let mut cursor = PullCursor::new(DirectionCheckpoint::default(), 10, 2);
        let p = page(&[1, 2], Some(2), true);
        let prefix = settled_prefix([(token(1, 1), Done), (token(1, 2), Done)], p.next);
        assert_eq!(
            cursor.advance(&p, prefix).unwrap(),
            (Some(None), Next::Read)
        );
        assert_eq!(cursor.request().0, Some(token(1, 2)));

        let stuck = page(&[], Some(2), true);
        let nothing = settled_prefix([], stuck.next);
        assert_eq!(cursor.advance(&stuck, nothing).unwrap(), (None, Next::Read));
        assert_eq!(cursor.advance(&stuck, nothing).unwrap(), (None, Next::Read));
        assert!(
            cursor.advance(&stuck, nothing).is_err(),
            "the third stall gives up"
        );

        let end = page(&[3], None, false);
        let open = settled_prefix([(token(1, 3), Open)], None);
        assert_eq!(cursor.advance(&end, open).unwrap(), (None, Next::Stop));
        assert_eq!(cursor.checkpoint().received, Some(token(1, 3)));
        let done = settled_prefix([(token(1, 3), Done)], None);
        assert_eq!(
            cursor.advance(&end, done).unwrap(),
            (Some(Some(token(1, 2))), Next::Head)
        );
    }

    #[test]
    fn a_cursor_halves_its_page_down_to_one() {
        let mut cursor = PullCursor::new(DirectionCheckpoint::default(), 4, 3);
        assert!(cursor.shrink());
        assert_eq!(cursor.request().1, 2);
        assert!(cursor.shrink());
        assert!(!cursor.shrink(), "a page of one entry cannot shrink");
    }

    #[test]
    fn the_page_read_ahead_is_the_request_that_follows_a_settled_page() {
        let mut cursor = PullCursor::new(DirectionCheckpoint::default(), 4, 3);
        let first = page(&[1, 2], Some(3), true);
        let ahead = cursor.ahead(&first);
        assert_eq!(ahead, Some((Some(token(1, 3)), 4)));
        let done = settled_prefix([(token(1, 1), Done), (token(1, 2), Done)], first.next);
        cursor.advance(&first, done).unwrap();
        assert_eq!(Some(cursor.request()), ahead);
        // The last page, or one that would not move the cursor: nothing to read ahead.
        assert_eq!(cursor.ahead(&page(&[4], Some(4), false)), None);
        assert_eq!(cursor.ahead(&page(&[], Some(3), true)), None);
        // A page that does not settle whole asks for another request than the one
        // read ahead, which is then dropped.
        let second = page(&[4, 5], Some(5), true);
        let ahead = cursor.ahead(&second);
        let open = settled_prefix([(token(1, 4), Done), (token(1, 5), Open)], second.next);
        cursor.advance(&second, open).unwrap();
        assert_ne!(Some(cursor.request()), ahead);
    }
}
