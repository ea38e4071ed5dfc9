//! Model test of the ledger, shared by every backend: random batches of configures,
//! writes and deletes (with duplicates, stale versions and concurrent versions), log
//! reads, reboots and power losses, checked against a model built from `BTreeMap`s and
//! the order-independent `merge_all`. A test file supplies a [`Harness`] for its
//! backend (this crate's `model.rs` for memory and fjall, `sync-ledger-pg`'s for
//! PostgreSQL) and calls [`run`].
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet};

use crate::common::*;
use proptest::prelude::*;
use sync_ledger::store::Durability;
use sync_ledger::{HashedMessage, Ledger, LedgerOutcome, RecordRows};
use sync_types::merge::{Version, merge_all};
use sync_types::*;

#[derive(Clone, Debug)]
pub enum Spec {
    Configure {
        proto: u8,
        ts: u8,
    },
    Write {
        proto: u8,
        rec: u8,
        prev: Option<u8>,
        ts: u8,
    },
    Delete {
        proto: u8,
        rec: u8,
        prev: Option<u8>,
        ts: u8,
    },
    /// Re-send an earlier message.
    Resend(u8),
}

#[derive(Clone, Debug)]
pub enum Step {
    /// The messages, whether the commit is synced, and the record rows handed to the
    /// apply ([`Rows`]).
    Apply(Vec<Spec>, bool, Rows),
    Read(usize),
    Reboot,
    PowerLoss,
}

/// What an apply is given of the record rows read ahead
/// ([`Ledger::apply_hashed_with_rows`]): the answers must be the same whatever it is.
#[derive(Clone, Copy, Debug)]
pub enum Rows {
    /// None (`Ledger::apply`).
    None,
    /// Every record's row, read right before the apply.
    Fresh,
    /// The rows read before the previous apply step (stale when anything was committed
    /// since, possibly by a ledger since rebooted).
    Previous,
}

fn rows() -> impl Strategy<Value = Rows> {
    prop_oneof![Just(Rows::None), Just(Rows::Fresh), Just(Rows::Previous)]
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        1 => (0..2u8, 0..4u8).prop_map(|(proto, ts)| Spec::Configure { proto, ts }),
        6 => (0..2u8, 0..3u8, prop::option::of(any::<u8>()), 0..30u8)
            .prop_map(|(proto, rec, prev, ts)| Spec::Write { proto, rec, prev, ts }),
        1 => (0..2u8, 0..3u8, prop::option::of(any::<u8>()), 0..30u8)
            .prop_map(|(proto, rec, prev, ts)| Spec::Delete { proto, rec, prev, ts }),
        2 => any::<u8>().prop_map(Spec::Resend),
    ]
}

pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (prop::collection::vec(spec(), 1..6), any::<bool>(), rows())
            .prop_map(|(s, sync, rows)| Step::Apply(s, sync, rows)),
        2 => (1..7usize).prop_map(Step::Read),
        1 => Just(Step::Reboot),
        1 => Just(Step::PowerLoss),
    ]
}

/// What the model knows.
#[derive(Default, Clone)]
struct Model {
    /// Every message ever sent, in order (to pick `prev`s and resends from).
    sent: Vec<(Message, Option<Vec<u8>>)>,
    /// Every version applied per record (accepted or not).
    versions: BTreeMap<RecordId, Vec<Version>>,
    /// Configures applied.
    configures: BTreeSet<Cid>,
    /// Position of each message when it was appended.
    positions: BTreeMap<Cid, u64>,
    head: u64,
    messages: BTreeMap<Cid, (Message, Option<Vec<u8>>)>,
}

impl Model {
    fn retained(&self) -> BTreeSet<Cid> {
        let mut out = self.configures.clone();
        for versions in self.versions.values() {
            if let Some(head) = merge_all(versions) {
                out.extend(head.retained());
            }
        }
        out
    }

    /// Applies one message; returns the outcome the ledger must report.
    fn apply(&mut self, m: &Message, data: &Option<Vec<u8>>) -> &'static str {
        let cid = m.cid();
        let before = self.retained();
        if before.contains(&cid) {
            return "duplicate";
        }
        match Version::of(m) {
            None => {
                self.configures.insert(cid);
            }
            Some(v) => self
                .versions
                .entry(m.record_id().unwrap())
                .or_default()
                .push(v),
        }
        if self.retained().contains(&cid) {
            self.head += 1;
            self.positions.insert(cid, self.head);
            self.messages.insert(cid, (m.clone(), data.clone()));
            "applied"
        } else {
            "superseded"
        }
    }
}

fn build(
    spec: &Spec,
    t: &TenantId,
    sent: &[(Message, Option<Vec<u8>>)],
    n: usize,
) -> Option<(Message, Option<Vec<u8>>)> {
    let protos = [protocol("p0"), protocol("p1")];
    let pick_prev = |proto: &ProtocolName, rec: u8, prev: Option<u8>| -> Option<Cid> {
        let id = record(t, proto, &format!("r{rec}"));
        let candidates: Vec<Cid> = sent
            .iter()
            .filter(|(m, _)| m.record_id() == Some(id))
            .map(|(m, _)| m.cid())
            .collect();
        prev.and_then(|i| {
            (!candidates.is_empty()).then(|| candidates[usize::from(i) % candidates.len()])
        })
    };
    Some(match *spec {
        Spec::Configure { proto, ts } => (
            configure(t, &protos[usize::from(proto)], u64::from(ts)),
            None,
        ),
        Spec::Write {
            proto,
            rec,
            prev,
            ts,
        } => {
            let p = &protos[usize::from(proto)];
            let prev = pick_prev(p, rec, prev);
            // Unique payloads make every write a distinct message.
            write(
                t,
                p,
                &format!("r{rec}"),
                prev,
                u64::from(ts),
                format!("v{n}").as_bytes(),
            )
        }
        Spec::Delete {
            proto,
            rec,
            prev,
            ts,
        } => {
            let p = &protos[usize::from(proto)];
            (
                delete(
                    t,
                    p,
                    &format!("r{rec}"),
                    pick_prev(p, rec, prev),
                    u64::from(ts),
                ),
                None,
            )
        }
        Spec::Resend(i) => {
            if sent.is_empty() {
                return None;
            }
            sent[usize::from(i) % sent.len()].clone()
        }
    })
}

pub trait Harness {
    fn ledger(&self) -> &Ledger;
    fn reboot(&mut self);
    /// Simulates a power loss when the backend can (memory); returns whether unsynced
    /// commits may have been lost.
    fn power_loss(&mut self) -> bool;
}

fn check(ledger: &Ledger, model: &Model, t: &TenantId) -> Result<(), TestCaseError> {
    let retained = model.retained();
    let cids: BTreeSet<Cid> = ledger.cids(t).unwrap().map(Result::unwrap).collect();
    prop_assert_eq!(&cids, &retained);
    for cid in &retained {
        let stored = ledger
            .get_message(t, cid)
            .unwrap()
            .expect("retained is stored");
        let (m, data) = &model.messages[cid];
        prop_assert_eq!(&stored.message, m);
        prop_assert_eq!(&stored.data, data);
        prop_assert_eq!(stored.position, model.positions[cid]);
    }
    for (id, versions) in &model.versions {
        prop_assert_eq!(ledger.record_head(t, id).unwrap(), merge_all(versions));
    }
    for p in [protocol("p0"), protocol("p1")] {
        let by_protocol: BTreeSet<Cid> = ledger
            .protocol_cids(t, &p)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected: BTreeSet<Cid> = retained
            .iter()
            .filter(|c| model.messages[c].0.protocol() == &p)
            .copied()
            .collect();
        prop_assert_eq!(by_protocol, expected);
        let newest = model
            .configures
            .iter()
            .filter(|c| model.messages[c].0.protocol() == &p)
            .max_by_key(|c| (model.messages[c].0.timestamp(), **c));
        prop_assert_eq!(
            ledger.protocol_definition(t, &p).unwrap().map(|(c, _)| c),
            newest.copied()
        );
    }
    let log = read_all(ledger, t, None, 1000);
    let mut expected: Vec<(u64, Cid)> = retained.iter().map(|c| (model.positions[c], *c)).collect();
    expected.sort();
    let got: Vec<(u64, Cid)> = log.iter().map(|e| (e.position(), e.cid())).collect();
    prop_assert_eq!(got, expected);
    let head = ledger.log_info(t).unwrap().map_or(0, |i| i.head_position);
    prop_assert_eq!(head, model.head);
    Ok(())
}

pub fn run(h: &mut dyn Harness, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let t = tenant("alice");
    let mut model = Model::default();
    // The model as of the last synced commit, for power losses.
    let mut durable = Model::default();
    let mut previous_rows: Option<RecordRows> = None;
    for step in steps {
        match step {
            Step::Apply(specs, sync, rows) => {
                let mut batch = Vec::new();
                for s in &specs {
                    let n = model.sent.len() + batch.len();
                    if let Some(m) = build(s, &t, &model.sent, n) {
                        batch.push(m);
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                let durability = if sync {
                    Durability::SyncData
                } else {
                    Durability::Buffered
                };
                // Every record the model can write: 2 protocols, 3 records each.
                let all_records: Vec<RecordId> = (0..2u8)
                    .flat_map(|p| (0..3u8).map(move |r| (p, r)))
                    .map(|(p, r)| record(&t, &protocol(&format!("p{p}")), &format!("r{r}")))
                    .collect();
                let fresh = h.ledger().read_records(&t, &all_records).unwrap();
                // A write or delete is stored iff its record's row retains it.
                for (m, _) in &batch {
                    if !matches!(m, Message::Configure(_)) {
                        let stored = h.ledger().has_message(&t, &m.cid()).unwrap();
                        prop_assert_eq!(fresh.holds(&m.cid(), m), Some(stored));
                    }
                }
                let hashed: Vec<HashedMessage> = batch
                    .iter()
                    .map(|(m, d)| HashedMessage::new(m.clone(), d.clone()))
                    .collect();
                let refs: Vec<&HashedMessage> = hashed.iter().collect();
                let out = match rows {
                    Rows::None => h.ledger().apply(&t, batch.clone(), durability),
                    Rows::Fresh => {
                        h.ledger()
                            .apply_hashed_with_rows(&t, &refs, durability, fresh.clone())
                    }
                    Rows::Previous => match previous_rows.take() {
                        Some(old) => h
                            .ledger()
                            .apply_hashed_with_rows(&t, &refs, durability, old),
                        None => h.ledger().apply_hashed(&t, &refs, durability),
                    },
                }
                .unwrap();
                previous_rows = Some(fresh);
                prop_assert_eq!(out.len(), batch.len());
                for ((m, data), applied) in batch.iter().zip(&out) {
                    let expected = model.apply(m, data);
                    let got = match &applied.outcome {
                        LedgerOutcome::Applied { token, .. } => {
                            prop_assert_eq!(token.position, model.head);
                            "applied"
                        }
                        LedgerOutcome::Duplicate => "duplicate",
                        LedgerOutcome::Superseded { .. } => "superseded",
                        // The model writes one protocol: the ledger must never refuse.
                        LedgerOutcome::Refused { .. } => "refused",
                    };
                    prop_assert_eq!(got, expected, "outcome of {:?}", m);
                    prop_assert_eq!(applied.cid, m.cid());
                }
                model.sent.extend(batch);
                if sync {
                    durable = model.clone();
                }
            }
            Step::Read(limit) => {
                // Paging with a small limit returns the same as one big page.
                let small = read_all(h.ledger(), &t, None, limit);
                let big = read_all(h.ledger(), &t, None, 1000);
                prop_assert_eq!(small, big);
            }
            Step::Reboot => h.reboot(),
            Step::PowerLoss => {
                if h.power_loss() {
                    // Everything after the last synced commit is gone, including from
                    // the list of sent messages a later prev can name.
                    model = durable.clone();
                } else {
                    durable = model.clone();
                }
            }
        }
        check(h.ledger(), &model, &t)?;
    }
    h.reboot();
    check(h.ledger(), &model, &t)
}
