//! The scope gate and closure of scoped links.
//!
//! **Gate.** Every message a link receives (catch-up pages, reconcile fetches, live
//! events) is classified against the link's scope before it is applied, by the one
//! scope gate of `sync-types` ([`sync_types::Scope::gate`], [`Direction::Pull`]): in
//! scope, out of scope, or unknown. Unknown fails closed: the message is not applied. A
//! delete is classified through its record's initial write, from the local store
//! ([`Replica::classify`]) or, when the record arrives in the same batch, from that
//! batch's initial write ([`Gate::new`]). A write in the batch only lends its path and
//! context to a delete when it is itself an initial write of the same record, and it is
//! gated and verified like every other message (a delete naming another protocol than
//! that write is refused by the apply, as against a stored record).
//!
//! **Closure.** The apply pipeline commits a message only when its hard dependencies
//! (the protocol's configure and those it `uses`, the record's initial write, the parent
//! record) are present, and answers `Incomplete { missing }` otherwise; since every
//! committed parent had its own parent present, a committed message's parent chain is
//! complete. What a scoped link must decide is whether a missing dependency can ever be
//! fetched through it. [`forbidden_dependency`] answers that from the message alone: a
//! configure `uses` a protocol the scope does not carry, or a write's ancestor (found
//! from its path and context chain, at most `sync_types::PATH_DEPTH_MAX` levels, as a
//! validated `ContextId` holds no more) lies outside the
//! scope. A forbidden dependency makes the link `terminal_incomplete` with a `closure`
//! dead letter; any other missing dependency is fetched (the tree diff finds exactly
//! what only the remote holds) or repaired.

use sync_types::{
    BatchInitialWrites, ContextId, Dependency, Direction, Message, RecordId, Scope, ScopeClass,
    TenantId,
};

use crate::error::Result;
use crate::replica::Replica;

/// The error code of a closure dead letter whose dependency lies outside the link's
/// scope.
pub(crate) const CLOSURE_FORBIDDEN_CODE: &str = "dependency_forbidden";

/// Classifies the messages of one received batch against a link's scope.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// The initial writes of the batch, whose records deletes in it may name.
    batch: BatchInitialWrites,
}

impl Gate {
    /// A gate for `batch`: deletes in it may be classified through initial writes in it.
    pub(crate) fn new<'a>(batch: impl IntoIterator<Item = &'a Message>) -> Self {
        Self {
            batch: BatchInitialWrites::new(batch),
        }
    }

    /// Where a received `message` falls relative to `scope` ([`Direction::Pull`]); a
    /// delete's record is looked up in the local store first, then among the batch's
    /// initial writes, and is `Unknown` when neither holds it.
    pub(crate) fn classify(
        &self,
        replica: &Replica,
        tenant: &TenantId,
        scope: &Scope,
        message: &Message,
    ) -> Result<ScopeClass> {
        scope.gate(Direction::Pull, message, &|record: &RecordId| {
            Ok(replica
                .record_place(tenant, record)?
                .or_else(|| self.batch.get(record).cloned()))
        })
    }
}

/// A dependency a link can never fetch: its scope does not cover it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Forbidden {
    /// The dependency.
    pub(crate) dependency: Dependency,
    /// Why it is outside the scope, for the dead letter and the link's error.
    pub(crate) reason: String,
}

/// The first dependency of `message` that `scope` forbids, among those the apply
/// pipeline reported `missing` and the ancestors of a write that `replica` does not hold
/// (a parent chain is only complete when every missing ancestor can come through the
/// link). `None` when everything missing may still be fetched.
pub(crate) fn forbidden_dependency(
    replica: &Replica,
    tenant: &TenantId,
    scope: &Scope,
    message: &Message,
    missing: &[Dependency],
) -> Result<Option<Forbidden>> {
    if matches!(scope, Scope::Full) {
        return Ok(None);
    }
    for dep in missing {
        if let Dependency::Protocol(p) = dep
            && !scope.carries_configure(p, Direction::Pull)
        {
            return Ok(Some(Forbidden {
                dependency: dep.clone(),
                reason: format!(
                    "message {} needs the configure of protocol {p}, which the link's scope does not cover",
                    message.cid()
                ),
            }));
        }
    }
    let Message::Write(w) = message else {
        return Ok(None);
    };
    // Walk up the parent chain: ancestor k has the first k records of the context chain
    // and the path cut to k segments.
    let chain = w.context_id.chain();
    let mut path = w.path.clone();
    // A validated context holds at most `PATH_DEPTH_MAX` ids: the walk is bounded by
    // the type, even for a hostile write.
    for depth in (1..chain.len()).rev() {
        let Some(parent_path) = path.parent() else {
            break;
        };
        let Ok(context) = ContextId::new(chain[..depth].to_vec()) else {
            break;
        };
        let ancestor = chain[depth - 1];
        let held = replica
            .ledger()
            .record_info(tenant, &ancestor)?
            .is_some_and(|i| i.head.initial.is_some());
        if !held
            && scope.classify(&w.protocol, Some((&parent_path, &context))) == ScopeClass::OutOfScope
        {
            return Ok(Some(Forbidden {
                dependency: Dependency::Record(ancestor),
                reason: format!(
                    "record {} at {} needs its ancestor {ancestor} at {parent_path}, which the link's scope does not cover",
                    w.record_id, w.path
                ),
            }));
        }
        path = parent_path;
    }
    Ok(None)
}
