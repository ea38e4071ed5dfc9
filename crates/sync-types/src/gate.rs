//! The scope gate, [`Scope::gate`]: where one message falls relative to a link's or a
//! grant's scope, in one direction; and the record lookups it takes ([`InitialWrites`]).

use std::collections::HashMap;
use std::convert::Infallible;

use crate::ids::{ContextId, ProtocolName, ProtocolPath, RecordId};
use crate::message::Message;
use crate::scope::{Projection, Scope, ScopeClass};
use crate::status::Direction;

/// Where a record lives: the path and context of its initial write. What classifies a
/// delete under a projection.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct RecordPlace {
    /// The record's path.
    pub path: ProtocolPath,
    /// The record's context.
    pub context: ContextId,
}

/// Finds the initial write of a record, for the gate to classify a delete.
///
/// A trait rather than a map so that each caller plugs in what it holds: the replica its
/// ledger (which can fail), a received batch its own initial writes, the transport
/// nothing. Any `Fn(&RecordId) -> Result<Option<RecordPlace>, E>` is one.
pub trait InitialWrites {
    /// What a failed lookup returns.
    type Error;

    /// The place of `record`'s initial write; `None` when it is not known here.
    fn place(&self, record: &RecordId) -> Result<Option<RecordPlace>, Self::Error>;
}

impl<F, E> InitialWrites for F
where
    F: Fn(&RecordId) -> Result<Option<RecordPlace>, E>,
{
    type Error = E;

    fn place(&self, record: &RecordId) -> Result<Option<RecordPlace>, E> {
        self(record)
    }
}

/// Knows no record: for a door that holds no records (the transport), where a delete
/// under a partial projection is [`ScopeClass::Unknown`] and goes on to one that does.
#[derive(Clone, Copy, Default, Debug)]
pub struct NoInitialWrites;

impl InitialWrites for NoInitialWrites {
    type Error = Infallible;

    fn place(&self, _record: &RecordId) -> Result<Option<RecordPlace>, Infallible> {
        Ok(None)
    }
}

/// The initial writes (writes without `prev`) of one batch of messages, so that a delete
/// can be classified through a record that arrives in the same batch. Each such write is
/// gated like every other message; it only lends its path and context.
#[derive(Clone, Default, Debug)]
pub struct BatchInitialWrites(HashMap<RecordId, RecordPlace>);

impl BatchInitialWrites {
    /// The initial writes among `batch`.
    pub fn new<'a>(batch: impl IntoIterator<Item = &'a Message>) -> Self {
        let mut places = HashMap::new();
        for m in batch {
            if let Message::Write(w) = m
                && w.prev.is_none()
            {
                places.insert(
                    w.record_id,
                    RecordPlace {
                        path: w.path.clone(),
                        context: w.context_id.clone(),
                    },
                );
            }
        }
        Self(places)
    }

    /// The place of `record`'s initial write, when it is in the batch.
    pub fn get(&self, record: &RecordId) -> Option<&RecordPlace> {
        self.0.get(record)
    }
}

impl InitialWrites for BatchInitialWrites {
    type Error = Infallible;

    fn place(&self, record: &RecordId) -> Result<Option<RecordPlace>, Infallible> {
        Ok(self.get(record).cloned())
    }
}

impl Scope {
    /// The scope gate: where `message`, travelling in `direction`, falls relative to the
    /// scope. `initial_writes` is asked only for a delete under a projection that covers
    /// part of its protocol; its error is the gate's.
    ///
    /// Every door a message passes asks this, and only this: a replica pulling
    /// (catch-up pages, reconcile fetches, live events), a replica pushing, a node
    /// serving reads under a grant, and a node taking a pushed batch under a grant. The
    /// direction is seen from whoever holds the scope: [`Direction::Pull`] when messages
    /// come to it (a link receives, a node serves the grant's holder),
    /// [`Direction::Push`] when they leave it (a link sends, a node takes a write).
    ///
    /// The rule, by message:
    ///
    /// - a **write** by the protocol, path and context it names (the replica's apply
    ///   makes sure they are its record's: a record's protocol, path and context are
    ///   fixed by its first version);
    /// - a **delete** by the protocol it names and its record's path and context, which
    ///   only the record's initial write knows: the caller hands in a lookup, the
    ///   replica's store, the initial writes of the batch at hand
    ///   ([`BatchInitialWrites`]), both, or none ([`NoInitialWrites`]). A delete naming
    ///   another protocol than its record's is refused by the apply (`Invalid`, and the
    ///   ledger's `Refused` within one batch) whatever the gate says, like a write;
    /// - a **configure** by its protocol, and here the direction matters. Pulled, a scope
    ///   carries the configures of every protocol it names: the records it carries
    ///   cannot be applied without them. Pushed, only a scope that covers the whole
    ///   protocol carries them: a configure sets the rules (record types, sizes,
    ///   composed protocols) of every record of its protocol, so writing one under a
    ///   projection of part of the protocol would reach records outside it.
    ///
    /// [`ScopeClass::Unknown`] is a delete under a partial projection whose initial
    /// write the lookup does not know. Every caller fails closed on it (does not apply,
    /// send or serve the message); a replica retries after a reconcile, when the record
    /// may be known.
    ///
    /// ```
    /// use sync_types::*;
    ///
    /// let notes = ProtocolName::new("https://example.com/notes")?;
    /// let drafts = Scope::projection(vec![ProjectionEntry {
    ///     protocol: notes.clone(),
    ///     path_prefixes: vec![ProtocolPath::new("draft")?],
    ///     context_prefixes: vec![],
    /// }])?;
    /// let configure = Message::Configure(Configure {
    ///     tenant: TenantId::new("did:example:alice")?,
    ///     protocol: notes,
    ///     definition: ProtocolDefinition { types: vec![], uses: vec![] },
    ///     timestamp: Hlc::ZERO,
    ///     author: PrincipalId::new("did:example:alice")?,
    /// });
    /// // Read with the drafts, never written by a grant of the drafts alone.
    /// let Ok(pulled) = drafts.gate(Direction::Pull, &configure, &NoInitialWrites);
    /// let Ok(pushed) = drafts.gate(Direction::Push, &configure, &NoInitialWrites);
    /// assert_eq!((pulled, pushed), (ScopeClass::InScope, ScopeClass::OutOfScope));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn gate<L: InitialWrites + ?Sized>(
        &self,
        direction: Direction,
        message: &Message,
        initial_writes: &L,
    ) -> Result<ScopeClass, L::Error> {
        match self {
            Scope::Full => Ok(ScopeClass::InScope),
            Scope::ProtocolSet(set) => Ok(if set.contains(message.protocol()) {
                ScopeClass::InScope
            } else {
                ScopeClass::OutOfScope
            }),
            Scope::Projection(p) => p.gate(direction, message, initial_writes),
        }
    }

    /// Whether the scope carries the configures of `protocol` in `direction`: pulled,
    /// when it names the protocol; pushed, when it covers the whole protocol.
    pub fn carries_configure(&self, protocol: &ProtocolName, direction: Direction) -> bool {
        match direction {
            Direction::Pull => self
                .protocol_list()
                .is_none_or(|protocols| protocols.contains(&protocol)),
            Direction::Push => self.covers_protocol(protocol),
        }
    }
}

impl Projection {
    /// [`Scope::gate`] for a projection.
    pub fn gate<L: InitialWrites + ?Sized>(
        &self,
        direction: Direction,
        message: &Message,
        initial_writes: &L,
    ) -> Result<ScopeClass, L::Error> {
        Ok(match message {
            Message::Configure(c) => {
                let carried = self.entry(&c.protocol).is_some_and(|e| match direction {
                    Direction::Pull => true,
                    Direction::Push => e.is_whole_protocol(),
                });
                if carried {
                    ScopeClass::InScope
                } else {
                    ScopeClass::OutOfScope
                }
            }
            Message::Write(w) => self.classify(&w.protocol, Some((&w.path, &w.context_id))),
            Message::Delete(d) => match self.entry(&d.protocol) {
                // Only a partial entry needs to know where the record lives.
                Some(e) if !e.is_whole_protocol() => {
                    let place = initial_writes.place(&d.record_id)?;
                    self.classify(&d.protocol, place.as_ref().map(|p| (&p.path, &p.context)))
                }
                _ => self.classify(&d.protocol, None),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::hlc::Hlc;
    use crate::ids::{Cid, PrincipalId, TenantId};
    use crate::message::{Configure, Delete, ProtocolDefinition, Write};
    use crate::scope::ProjectionEntry;
    use ScopeClass::{InScope as In, OutOfScope as Out, Unknown};

    fn p(name: &str) -> ProtocolName {
        ProtocolName::new(format!("https://example.com/{name}")).unwrap()
    }
    fn path(s: &str) -> ProtocolPath {
        ProtocolPath::new(s).unwrap()
    }
    fn tenant() -> TenantId {
        TenantId::new("did:example:alice").unwrap()
    }
    fn author() -> PrincipalId {
        PrincipalId::new("did:example:alice").unwrap()
    }
    fn record(n: u8) -> RecordId {
        RecordId::from_bytes([n; 32])
    }

    fn write(n: u8, at: &str, prev: Option<Cid>) -> Message {
        Message::Write(Write {
            tenant: tenant(),
            record_id: record(n),
            parent_id: None,
            protocol: p("a"),
            path: path(at),
            context_id: ContextId::root(record(n)),
            prev,
            timestamp: Hlc::ZERO,
            author: author(),
            data: None,
        })
    }

    fn delete(n: u8) -> Message {
        Message::Delete(Delete {
            tenant: tenant(),
            record_id: record(n),
            protocol: p("a"),
            prev: None,
            timestamp: Hlc::ZERO,
            author: author(),
        })
    }

    fn configure(protocol: &str) -> Message {
        Message::Configure(Configure {
            tenant: tenant(),
            protocol: p(protocol),
            definition: ProtocolDefinition {
                types: vec![],
                uses: vec![],
            },
            timestamp: Hlc::ZERO,
            author: author(),
        })
    }

    /// The store of the tests: record 1 lives at `x/q` (inside the partial projection),
    /// record 2 at `z` (outside); record 3 is not known. Counts the lookups.
    struct Store(Cell<u32>);

    impl InitialWrites for Store {
        type Error = Infallible;
        fn place(&self, record_id: &RecordId) -> Result<Option<RecordPlace>, Infallible> {
            self.0.set(self.0.get() + 1);
            let at = |s: &str| {
                Some(RecordPlace {
                    path: path(s),
                    context: ContextId::root(*record_id),
                })
            };
            Ok(match record_id.as_bytes()[0] {
                1 => at("x/q"),
                2 => at("z"),
                _ => None,
            })
        }
    }

    fn scopes() -> Vec<(&'static str, Scope)> {
        vec![
            ("full", Scope::Full),
            ("set a", Scope::protocols(vec![p("a")]).unwrap()),
            ("set b", Scope::protocols(vec![p("b")]).unwrap()),
            (
                "projection of a at x",
                Scope::projection(vec![ProjectionEntry {
                    protocol: p("a"),
                    path_prefixes: vec![path("x")],
                    context_prefixes: vec![],
                }])
                .unwrap(),
            ),
            (
                "projection of a by context",
                Scope::projection(vec![ProjectionEntry {
                    protocol: p("a"),
                    path_prefixes: vec![],
                    context_prefixes: vec![ContextId::root(record(1))],
                }])
                .unwrap(),
            ),
            (
                "projection of all of a",
                Scope::projection(vec![ProjectionEntry::whole(p("a"))]).unwrap(),
            ),
            (
                "projection of b",
                Scope::projection(vec![ProjectionEntry::whole(p("b"))]).unwrap(),
            ),
        ]
    }

    fn messages() -> Vec<(&'static str, Message)> {
        let prev = Some(Cid::from_bytes([9; 32]));
        vec![
            ("initial write at x/y", write(1, "x/y", None)),
            ("initial write at z", write(2, "z", None)),
            ("update at x", write(1, "x", prev)),
            ("update at z", write(2, "z", prev)),
            ("delete of a record at x/q", delete(1)),
            ("delete of a record at z", delete(2)),
            ("delete of an unknown record", delete(3)),
            ("configure of a", configure("a")),
            ("configure of b", configure("b")),
        ]
    }

    /// Every scope kind × message kind × direction, as (pull, push) per message in the
    /// order of `messages()`.
    #[test]
    fn the_gate_answers_every_scope_message_and_direction() {
        let all_in = [(In, In); 9];
        let a_only = [
            (In, In),
            (In, In),
            (In, In),
            (In, In),
            (In, In),
            (In, In),
            (In, In),
            (In, In),
            (Out, Out),
        ];
        let b_only = [
            (Out, Out),
            (Out, Out),
            (Out, Out),
            (Out, Out),
            (Out, Out),
            (Out, Out),
            (Out, Out),
            (Out, Out),
            (In, In),
        ];
        // Part of a: records by their place; a configure of a is read, not written.
        let part_of_a = [
            (In, In),
            (Out, Out),
            (In, In),
            (Out, Out),
            (In, In),
            (Out, Out),
            (Unknown, Unknown),
            (In, Out),
            (Out, Out),
        ];
        // By context: records 1 are inside whatever their path, records 2 outside.
        let context_of_1 = [
            (In, In),
            (Out, Out),
            (In, In),
            (Out, Out),
            (In, In),
            (Out, Out),
            (Unknown, Unknown),
            (In, Out),
            (Out, Out),
        ];
        let expected = [
            all_in,
            a_only,
            b_only,
            part_of_a,
            context_of_1,
            a_only,
            b_only,
        ];
        for ((scope_name, scope), want) in scopes().into_iter().zip(expected) {
            for ((message_name, message), (pull, push)) in messages().into_iter().zip(want) {
                for (direction, want) in [(Direction::Pull, pull), (Direction::Push, push)] {
                    let store = Store(Cell::new(0));
                    let got = scope.gate(direction, &message, &store).unwrap();
                    assert_eq!(
                        got, want,
                        "{message_name} under {scope_name}, {direction:?}"
                    );
                    let partial = matches!(&scope, Scope::Projection(p)
                        if p.entries().iter().any(|e| !e.is_whole_protocol()));
                    let asks = partial && matches!(message, Message::Delete(_));
                    assert_eq!(
                        store.0.get(),
                        u32::from(asks),
                        "the lookup is asked only for a delete under a partial projection: \
                         {message_name} under {scope_name}"
                    );
                }
            }
        }
    }

    #[test]
    fn configures_are_carried_by_what_the_scope_names_when_pulled_and_covers_when_pushed() {
        for (name, scope) in scopes() {
            for protocol in [p("a"), p("b")] {
                for direction in [Direction::Pull, Direction::Push] {
                    let message = Message::Configure(Configure {
                        protocol: protocol.clone(),
                        ..match configure("a") {
                            Message::Configure(c) => c,
                            _ => unreachable!(),
                        }
                    });
                    let gated = scope.gate(direction, &message, &NoInitialWrites).unwrap();
                    assert_eq!(
                        gated == In,
                        scope.carries_configure(&protocol, direction),
                        "{protocol} under {name}, {direction:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_batch_lends_the_place_of_its_initial_writes_only() {
        let scope = &scopes()[3].1;
        let batch = [
            write(1, "x/y", None),
            write(2, "x/y", Some(Cid::from_bytes([9; 32]))),
        ];
        let writes = BatchInitialWrites::new(&batch);
        assert_eq!(writes.get(&record(1)).unwrap().path, path("x/y"));
        assert!(
            writes.get(&record(2)).is_none(),
            "an update is not an initial write"
        );
        for direction in [Direction::Pull, Direction::Push] {
            assert_eq!(scope.gate(direction, &delete(1), &writes), Ok(In));
            assert_eq!(scope.gate(direction, &delete(2), &writes), Ok(Unknown));
            assert_eq!(
                scope.gate(direction, &delete(1), &NoInitialWrites),
                Ok(Unknown)
            );
        }
    }

    #[test]
    fn a_failed_lookup_is_the_gates_error_and_lookups_compose() {
        let scope = &scopes()[3].1;
        let failing = |_: &RecordId| Err::<Option<RecordPlace>, _>("store down");
        assert_eq!(
            scope.gate(Direction::Pull, &delete(1), &failing),
            Err("store down")
        );
        // The store first, then the batch: how a replica gates a received page.
        let batch = [write(3, "x/new", None)];
        let writes = BatchInitialWrites::new(&batch);
        let store = Store(Cell::new(0));
        let both = |r: &RecordId| -> Result<_, Infallible> {
            Ok(store.place(r)?.or_else(|| writes.get(r).cloned()))
        };
        assert_eq!(scope.gate(Direction::Pull, &delete(3), &both), Ok(In));
        assert_eq!(scope.gate(Direction::Pull, &delete(2), &both), Ok(Out));
    }
}
