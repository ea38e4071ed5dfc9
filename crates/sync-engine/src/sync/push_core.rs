//! The pure core of a push: which entries of a local log page go out and in which
//! batches ([`PushPage`]), and how one batch is delivered ([`BatchSend`]): dependency
//! passes after `Incomplete` answers, the retry schedule after transport failures, and
//! what each message settles as in the end (with the dead letters to record).
//!
//! Nothing here awaits, sleeps, reads a clock or touches a store, in the manner of
//! `sync-smt`'s `Initiator`: [`BatchSend::poll`] says what to do next ([`Step`]), the
//! driver in [`push`](super::push) does it against the remote and the replica and hands
//! back what happened (`on_sent`, `on_failed`, `on_supplied`). The unit tests below run
//! every path without tokio.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::ops::Range;

use sync_transport::TransportError;
use sync_transport::proto::MessageData;
use sync_types::{ApplyOutcome, Cid, DeadLetterCategory, Dependency, Message, ProgressToken};

use super::blobs::big_data;
use super::settle::{Prefix, Settle, settle, settled_prefix};
use super::{SyncConfig, Traffic, item_bytes};

/// A message to push, with what the batch needs to know about it.
#[derive(Clone, Debug)]
pub(crate) struct PushItem {
    pub(crate) cid: Cid,
    pub(crate) item: MessageData,
    pub(crate) bytes: u64,
}

impl PushItem {
    pub(crate) fn new(message: Message, data: Option<Vec<u8>>) -> Self {
        let bytes = item_bytes(&message, data.as_deref());
        Self {
            cid: message.cid(),
            item: MessageData { message, data },
            bytes,
        }
    }
}

/// Splits items of these sizes, in order, into batches of at most
/// [`SyncConfig::push_batch_messages`] messages and [`SyncConfig::push_batch_bytes_max`]
/// bytes (a single larger item goes alone).
pub(crate) fn batch_ranges(
    sizes: impl Iterator<Item = u64>,
    cfg: &SyncConfig,
) -> Vec<Range<usize>> {
    let max_messages = cfg.push_batch_messages.max(1);
    let max_bytes = cfg.push_batch_bytes_max as u64;
    let mut out = Vec::new();
    let (mut start, mut bytes, mut len) = (0, 0u64, 0);
    for (i, size) in sizes.enumerate() {
        if i > start && (i - start >= max_messages || bytes + size > max_bytes) {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
        len = i + 1;
    }
    if len > start {
        out.push(start..len);
    }
    out
}

/// Whether the batch `after` may be sent while `before` (the batch in flight) is still
/// being delivered, so that the remote applies one while the next travels: its first
/// attempt goes at once (no wait in the retry schedule), none of its messages names a
/// blob (an upload is its own pipeline), and none depends on a message of `before`
/// (the remote may apply the two in either order; a dependency would come back
/// `Incomplete` and cost a pass).
pub(crate) fn may_send_ahead(before: &[PushItem], after: &[PushItem], cfg: &SyncConfig) -> bool {
    if cfg.push_retry_backoff_ms.first().is_some_and(|&ms| ms > 0) {
        return false;
    }
    let mut protocols = HashSet::new();
    let mut records = HashSet::new();
    for i in before {
        match &i.item.message {
            Message::Configure(c) => {
                protocols.insert(&c.protocol);
            }
            m => {
                records.extend(m.record_id());
            }
        }
    }
    after.iter().all(|i| {
        big_data(&i.item.message).is_none()
            && i.item.message.dependencies().iter().all(|d| match d {
                Dependency::Protocol(p) => !protocols.contains(p),
                Dependency::Record(r) => !records.contains(r),
                Dependency::Blob(_) => false,
            })
    })
}

/// One page of the local log, planned: the entries that go out, in batches, and the
/// entries settled without sending (echoes, out of scope). Batches go in log order; the
/// first batch with an unsettled message ends the page, and [`finish`](Self::finish)
/// says how far the push checkpoint moves.
pub(crate) struct PushPage {
    /// Each entry's position and, when it is sent, its index in `items`.
    slots: Vec<(ProgressToken, Option<usize>)>,
    items: Vec<PushItem>,
    settles: Vec<Option<Settle>>,
    batches: VecDeque<Range<usize>>,
    current: Option<Range<usize>>,
    next: Option<ProgressToken>,
}

impl PushPage {
    /// A page whose entries are, in log order, a position and the item to send (`None`:
    /// settled as it is); `next` is the page's cursor.
    pub(crate) fn new(
        entries: impl IntoIterator<Item = (ProgressToken, Option<PushItem>)>,
        next: Option<ProgressToken>,
        cfg: &SyncConfig,
    ) -> Self {
        let mut slots = Vec::new();
        let mut items = Vec::new();
        for (token, item) in entries {
            let slot = item.map(|item| {
                items.push(item);
                items.len() - 1
            });
            slots.push((token, slot));
        }
        let batches = batch_ranges(items.iter().map(|i| i.bytes), cfg).into();
        Self {
            settles: vec![None; items.len()],
            slots,
            items,
            batches,
            current: None,
            next,
        }
    }

    /// The next batch to send, or `None` when the page is done (every batch sent, or
    /// one left a message unsettled).
    pub(crate) fn next_batch(&mut self) -> Option<Vec<PushItem>> {
        debug_assert!(self.current.is_none(), "a batch is in flight");
        let range = self.batches.pop_front()?;
        let batch = self.items[range.clone()].to_vec();
        self.current = Some(range);
        Some(batch)
    }

    /// The batch [`next_batch`](Self::next_batch) will give after the one in flight,
    /// when it may be sent ahead while that one is delivered (see [`may_send_ahead`]).
    pub(crate) fn ahead(&self, cfg: &SyncConfig) -> Option<Vec<PushItem>> {
        let current = self.current.clone()?;
        self.first_ahead_of(&self.items[current], cfg)
    }

    /// Whether a batch is left after the one in flight.
    pub(crate) fn has_next_batch(&self) -> bool {
        !self.batches.is_empty()
    }

    /// The batch [`next_batch`](Self::next_batch) will give, when it may be sent ahead
    /// while `before` (the last batch of the page before this one) is delivered.
    pub(crate) fn first_ahead_of(
        &self,
        before: &[PushItem],
        cfg: &SyncConfig,
    ) -> Option<Vec<PushItem>> {
        let range = self.batches.front()?.clone();
        may_send_ahead(before, &self.items[range.clone()], cfg).then(|| self.items[range].to_vec())
    }

    /// How each message of the batch [`next_batch`](Self::next_batch) gave settled.
    pub(crate) fn batch_settled(&mut self, settles: &[Settle]) {
        let range = self.current.take().expect("no batch in flight");
        debug_assert_eq!(range.len(), settles.len());
        for (slot, s) in self.settles[range].iter_mut().zip(settles) {
            *slot = Some(*s);
        }
        if settles.contains(&Settle::Open) {
            self.batches.clear();
        }
    }

    /// The batch in flight failed in transport after its retries: nothing more is sent.
    pub(crate) fn abandon(&mut self) {
        self.batches.clear();
    }

    /// How far the push checkpoint moves over this page, and the messages and bytes
    /// that settled as delivered inside that prefix.
    pub(crate) fn finish(&self) -> (Prefix, Traffic) {
        let settle_of = |slot: &Option<usize>| match slot {
            None => Settle::Done,
            Some(i) => self.settles[*i].unwrap_or(Settle::Open),
        };
        let prefix = settled_prefix(
            self.slots.iter().map(|(t, slot)| (*t, settle_of(slot))),
            self.next,
        );
        let mut acked = Traffic::default();
        for (_, slot) in &self.slots[..prefix.settled] {
            if let Some(i) = slot
                && self.settles[*i] == Some(Settle::Done)
            {
                acked.messages += 1;
                acked.bytes += self.items[*i].bytes;
            }
        }
        (prefix, acked)
    }
}

/// What the driver of a [`BatchSend`] does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Wait this long before the next attempt (the retry schedule).
    Wait(u64),
    /// Send these items; answer with [`BatchSend::on_sent`] (one outcome per index, in
    /// any order) or [`BatchSend::on_failed`].
    Send(Pass),
    /// Find the local messages (and upload the blobs) that satisfy these dependencies;
    /// answer with [`BatchSend::on_supplied`] or [`BatchSend::on_failed`].
    Supply(BTreeSet<Dependency>),
    /// The batch is settled; see [`BatchSend::end`].
    Done,
}

/// One round of sends: the messages without a blob go at once while `blobs` upload
/// (a small message is never queued behind a large blob); the messages naming a blob
/// go after the uploads. Indexes are into [`BatchSend::items`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Pass {
    pub(crate) plain: Vec<usize>,
    pub(crate) blobs: Vec<Cid>,
    pub(crate) with_blob: Vec<usize>,
}

/// A dead letter the driver records for a message of the batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PushDeadLetter {
    pub(crate) index: usize,
    pub(crate) category: DeadLetterCategory,
    pub(crate) code: Option<String>,
    pub(crate) reason: String,
}

/// How a batch ended.
#[derive(Debug, Default)]
pub(crate) struct BatchEnd {
    /// One per message of the batch, in order.
    pub(crate) settles: Vec<Settle>,
    pub(crate) dead_letters: Vec<PushDeadLetter>,
    /// Messages the remote holds now.
    pub(crate) delivered: u64,
    pub(crate) dependencies_sent: u64,
    /// Some message was still unsettled after the last attempt: the link needs a
    /// reconcile.
    pub(crate) exhausted: bool,
    /// The last attempt failed in transport with this error.
    pub(crate) error: Option<TransportError>,
}

#[derive(Debug)]
enum Phase {
    /// Start the next attempt (or end when nothing is left).
    Attempt,
    /// The attempt's first pass is ready to send (after the wait).
    Ready(Vec<usize>),
    /// A pass is in flight.
    Sending {
        plain: Vec<usize>,
        with_blob: bool,
    },
    /// A pass sent messages ahead of blobs that came back `Incomplete`: they go once
    /// more, after the blobs (a later version of a record whose initial write carries a
    /// blob); the results so far wait here.
    Again(Vec<(usize, ApplyOutcome)>, Vec<usize>),
    /// The re-send is in flight.
    Resending(Vec<(usize, ApplyOutcome)>),
    /// The messages `next` came back `Incomplete`: look up what they miss.
    Supply(Vec<usize>, BTreeSet<Dependency>),
    /// The dependencies of `next` are being looked up.
    Supplying(Vec<usize>),
    Done,
}

/// Delivers one batch of messages. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct BatchSend {
    /// The batch's own messages first, then the dependencies the current attempt
    /// supplied.
    items: Vec<PushItem>,
    own: usize,
    /// The delay before each attempt.
    schedule: Vec<u64>,
    attempts: usize,
    passes_max: usize,
    /// Each own message's outcome in the last attempt that finished.
    outcomes: Vec<Option<ApplyOutcome>>,
    /// The attempt in progress.
    attempt_outcomes: Vec<Option<ApplyOutcome>>,
    pass: usize,
    supplied: HashSet<Cid>,
    phase: Phase,
    error: Option<TransportError>,
    dependencies_sent: u64,
}

impl BatchSend {
    /// A batch of `items` under `cfg`'s retry schedule and dependency pass limit.
    pub(crate) fn new(items: Vec<PushItem>, cfg: &SyncConfig) -> Self {
        let schedule = if cfg.push_retry_backoff_ms.is_empty() {
            vec![0]
        } else {
            cfg.push_retry_backoff_ms.clone()
        };
        let own = items.len();
        Self {
            items,
            own,
            schedule,
            attempts: 0,
            passes_max: cfg.dependency_passes_max.max(1),
            outcomes: vec![None; own],
            attempt_outcomes: vec![None; own],
            pass: 0,
            supplied: HashSet::new(),
            phase: Phase::Attempt,
            error: None,
            dependencies_sent: 0,
        }
    }

    /// The messages a [`Pass`] names by index.
    pub(crate) fn items(&self) -> &[PushItem] {
        &self.items
    }

    /// What to do next. Call it again after answering a `Send` or `Supply` step; a
    /// `Wait` needs no answer.
    pub(crate) fn poll(&mut self) -> Step {
        loop {
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Attempt => {
                    let pending: Vec<usize> = (0..self.own)
                        .filter(|&i| {
                            self.outcomes[i]
                                .as_ref()
                                .is_none_or(|o| settle(o) == Settle::Open)
                        })
                        .collect();
                    if pending.is_empty() || self.attempts == self.schedule.len() {
                        return Step::Done;
                    }
                    let delay = self.schedule[self.attempts];
                    self.attempts += 1;
                    self.items.truncate(self.own);
                    self.supplied = self.items.iter().map(|i| i.cid).collect();
                    self.attempt_outcomes = vec![None; self.own];
                    self.pass = 0;
                    self.phase = Phase::Ready(pending);
                    if delay > 0 {
                        return Step::Wait(delay);
                    }
                }
                Phase::Ready(todo) => return Step::Send(self.pass_of(todo)),
                Phase::Supply(next, missing) => {
                    self.phase = Phase::Supplying(next);
                    return Step::Supply(missing);
                }
                Phase::Again(results, waiting) => {
                    self.phase = Phase::Resending(results);
                    return Step::Send(Pass {
                        plain: waiting,
                        ..Pass::default()
                    });
                }
                phase @ (Phase::Sending { .. } | Phase::Resending(_) | Phase::Supplying(_)) => {
                    debug_assert!(false, "poll while waiting for an answer: {phase:?}");
                    self.phase = phase;
                    return Step::Done;
                }
                Phase::Done => return Step::Done,
            }
        }
    }

    fn pass_of(&mut self, todo: Vec<usize>) -> Pass {
        let (plain, with_blob): (Vec<usize>, Vec<usize>) = todo
            .into_iter()
            .partition(|&i| big_data(&self.items[i].item.message).is_none());
        let mut blobs: Vec<Cid> = Vec::new();
        for &i in &with_blob {
            if let Some((cid, _)) = big_data(&self.items[i].item.message)
                && !blobs.contains(&cid)
            {
                blobs.push(cid);
            }
        }
        self.phase = Phase::Sending {
            plain: plain.clone(),
            with_blob: !with_blob.is_empty(),
        };
        Pass {
            plain,
            blobs,
            with_blob,
        }
    }

    /// The remote answered the pass (or the re-send) with these outcomes.
    pub(crate) fn on_sent(&mut self, mut results: Vec<(usize, ApplyOutcome)>) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Sending { plain, with_blob } => {
                let waiting: Vec<usize> = results
                    .iter()
                    .filter(|(i, o)| {
                        with_blob
                            && plain.contains(i)
                            && matches!(o, ApplyOutcome::Incomplete { .. })
                    })
                    .map(|(i, _)| *i)
                    .collect();
                if !waiting.is_empty() {
                    results.retain(|(i, _)| !waiting.contains(i));
                    self.phase = Phase::Again(results, waiting);
                    return;
                }
            }
            Phase::Resending(mut before) => {
                before.extend(results);
                results = before;
            }
            phase => {
                debug_assert!(false, "results without a send: {phase:?}");
                self.phase = phase;
                return;
            }
        }
        let mut missing = BTreeSet::new();
        let mut next = Vec::new();
        for (i, o) in results {
            if let ApplyOutcome::Incomplete { missing: m } = &o {
                missing.extend(m.iter().cloned());
                next.push(i);
            }
            if let Some(slot) = self.attempt_outcomes.get_mut(i) {
                *slot = Some(o);
            }
        }
        if next.is_empty() || self.pass + 1 >= self.passes_max {
            self.end_attempt();
        } else {
            self.phase = Phase::Supply(next, missing);
        }
    }

    /// The local messages that satisfy the dependencies of the `Supply` step (blobs
    /// already uploaded). Messages this attempt already sent are dropped.
    pub(crate) fn on_supplied(&mut self, found: Vec<PushItem>) {
        let next = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Supplying(next) => next,
            phase => {
                debug_assert!(false, "dependencies without a supply step: {phase:?}");
                self.phase = phase;
                return;
            }
        };
        let first = self.items.len();
        for item in found {
            if self.supplied.insert(item.cid) {
                self.items.push(item);
            }
        }
        if self.items.len() == first {
            self.end_attempt();
            return;
        }
        self.dependencies_sent += (self.items.len() - first) as u64;
        self.pass += 1;
        // Dependencies first, then what waited for them (the remote also orders each
        // batch by dependencies).
        self.phase = Phase::Ready((first..self.items.len()).chain(next).collect());
    }

    /// The attempt failed in transport with a retryable error: what it learned is
    /// dropped, and the next attempt (after the schedule's delay) sends every message
    /// not settled by an earlier one.
    pub(crate) fn on_failed(&mut self, error: TransportError) {
        self.error = Some(error);
        self.phase = Phase::Attempt;
    }

    fn end_attempt(&mut self) {
        self.error = None;
        for (slot, o) in self.outcomes.iter_mut().zip(&mut self.attempt_outcomes) {
            if slot.as_ref().is_none_or(|o| settle(o) == Settle::Open) {
                *slot = Some(o.take().unwrap_or(ApplyOutcome::Deferred));
            }
        }
        self.phase = Phase::Attempt;
    }

    /// How the batch ended, once [`poll`](Self::poll) said [`Step::Done`].
    pub(crate) fn end(&self) -> BatchEnd {
        let mut end = BatchEnd {
            dependencies_sent: self.dependencies_sent,
            error: self.error.clone(),
            ..BatchEnd::default()
        };
        for (index, o) in self.outcomes.iter().enumerate() {
            let s = match o {
                Some(o) if o.is_success() => {
                    end.delivered += 1;
                    Settle::Done
                }
                Some(o) if o.is_permanent_failure() => {
                    end.dead_letters.push(PushDeadLetter {
                        index,
                        category: DeadLetterCategory::PushPermanent,
                        code: Some(o.as_str().into()),
                        reason: o.to_string(),
                    });
                    Settle::Failed
                }
                other => {
                    let why = match (other, &self.error) {
                        (_, Some(e)) => e.to_string(),
                        (Some(o), None) => o.to_string(),
                        (None, None) => "not sent".into(),
                    };
                    end.dead_letters.push(PushDeadLetter {
                        index,
                        category: DeadLetterCategory::PushExhausted,
                        code: other.as_ref().map(|o| o.as_str().into()),
                        reason: format!(
                            "push retries exhausted after {} attempts: {why}",
                            self.schedule.len()
                        ),
                    });
                    end.exhausted = true;
                    Settle::Open
                }
            };
            end.settles.push(s);
        }
        end
    }
}

#[cfg(test)]
#[path = "push_core_tests.rs"]
mod tests;
