//! The message model: immutable, content-addressed operations.
//!
//! A [`Message`] is one of [`Configure`] (install or update a protocol), [`Write`] (a
//! version of a record) or [`Delete`] (a record's tombstone). Its id is
//! [`Message::cid`]: blake3 of its canonical encoding, a hand-written byte layout of
//! exactly the fields below (see [`crate::canonical`] for the rules), so no library
//! upgrade can change an id.
//!
//! Canonical layout, version 1 (`CANONICAL_VERSION`):
//!
//! ```text
//! message   = version:u8 kind:u8 body
//! kind      = 1 Configure | 2 Write | 3 Delete
//! Configure = tenant:str protocol:str definition timestamp author:str
//! definition= types:list<path:str data_bytes_max:opt<u64>> uses:list<str>
//! Write     = tenant:str record:32 parent:opt<32> protocol:str path:str
//!             context:list<32> prev:opt<32> timestamp author:str data:opt<cid:32 size:u64>
//! Delete    = tenant:str record:32 protocol:str prev:opt<32> timestamp author:str
//! timestamp = wall_ms:u64 counter:u32 node:u64
//! ```
//!
//! Payload bytes are not part of a message: a [`DataRef`] names them by blake3 hash and
//! size. Payloads up to [`INLINE_DATA_BYTES_MAX`] travel inline next to the message;
//! larger ones are blobs.

use serde::{Deserialize, Serialize};

use crate::canonical::CanonicalWriter;
use crate::error::ValidationError;
use crate::hlc::Hlc;
use crate::ids::{Cid, ContextId, PrincipalId, ProtocolName, ProtocolPath, RecordId, TenantId};

/// Version byte at the front of every canonical message encoding.
pub const CANONICAL_VERSION: u8 = 1;
/// Largest payload that travels inline with its message; larger payloads are blobs.
pub const INLINE_DATA_BYTES_MAX: u64 = 32 * 1024;
/// Most record types in one protocol definition.
pub const PROTOCOL_TYPES_MAX: usize = 256;
/// Most protocols one protocol definition may `use`.
pub const PROTOCOL_USES_MAX: usize = 32;

/// An immutable operation on a tenant's data.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Message {
    /// Installs or updates a protocol.
    Configure(Configure),
    /// A version of a record.
    Write(Write),
    /// A record's tombstone.
    Delete(Delete),
}

/// Installs or updates the definition of a protocol. The newest `Configure` of a protocol
/// (by timestamp, then cid) is its current definition.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Configure {
    /// The tenant the protocol is installed for.
    pub tenant: TenantId,
    /// The protocol's name.
    pub protocol: ProtocolName,
    /// What the protocol allows.
    pub definition: ProtocolDefinition,
    /// When it was written.
    pub timestamp: Hlc,
    /// Who wrote it.
    pub author: PrincipalId,
}

/// The record types a protocol allows, and the protocols it composes.
///
/// A type's path gives its place in the record tree: a record at `post/comment` must have
/// a parent record at `post`. Canonical form: types sorted by path without duplicates,
/// every non-root type's parent path declared; `uses` sorted without duplicates and
/// without the protocol itself.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ProtocolDefinition {
    /// The record types, one rule each.
    pub types: Vec<TypeRule>,
    /// Other protocols this one composes; their `Configure` must be present first.
    pub uses: Vec<ProtocolName>,
}

/// What a protocol allows at one path.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TypeRule {
    /// The type's path.
    pub path: ProtocolPath,
    /// The largest payload a record of this type may carry, if limited.
    pub data_bytes_max: Option<u64>,
}

/// A version of a record.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Write {
    /// The tenant the record belongs to.
    pub tenant: TenantId,
    /// The record this is a version of.
    pub record_id: RecordId,
    /// The parent record, for a type below the root of its protocol.
    pub parent_id: Option<RecordId>,
    /// The record's protocol.
    pub protocol: ProtocolName,
    /// The record's type path in its protocol.
    pub path: ProtocolPath,
    /// The ancestor chain, ending with `record_id`.
    pub context_id: ContextId,
    /// The version this one was based on; `None` for an initial write.
    pub prev: Option<Cid>,
    /// When it was written.
    pub timestamp: Hlc,
    /// Who wrote it.
    pub author: PrincipalId,
    /// The payload, if any.
    pub data: Option<DataRef>,
}

/// A record's tombstone.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Delete {
    /// The tenant the record belongs to.
    pub tenant: TenantId,
    /// The deleted record.
    pub record_id: RecordId,
    /// The record's protocol.
    pub protocol: ProtocolName,
    /// The version the deleter saw last, if any.
    pub prev: Option<Cid>,
    /// When it was written.
    pub timestamp: Hlc,
    /// Who wrote it.
    pub author: PrincipalId,
}

/// A reference to a payload: its blake3 hash and its size in bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct DataRef {
    /// blake3 of the payload bytes.
    pub data_cid: Cid,
    /// Payload size in bytes.
    pub size: u64,
}

impl DataRef {
    /// The reference for `data`.
    pub fn of(data: &[u8]) -> Self {
        Self {
            data_cid: Cid::of_data(data),
            size: data.len() as u64,
        }
    }

    /// Whether the payload travels inline with its message (at most
    /// [`INLINE_DATA_BYTES_MAX`] bytes) rather than as a blob.
    pub fn is_inline(&self) -> bool {
        self.size <= INLINE_DATA_BYTES_MAX
    }
}

/// Something that must be present before a message can be applied.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Dependency {
    /// A `Configure` of this protocol.
    Protocol(ProtocolName),
    /// An initial write of this record (for later writes, deletes and children).
    Record(RecordId),
    /// A blob with this content id (for a record to count as resident).
    Blob(Cid),
}

impl Message {
    /// The tenant the message belongs to.
    pub fn tenant(&self) -> &TenantId {
        match self {
            Message::Configure(m) => &m.tenant,
            Message::Write(m) => &m.tenant,
            Message::Delete(m) => &m.tenant,
        }
    }

    /// The protocol the message belongs to.
    pub fn protocol(&self) -> &ProtocolName {
        match self {
            Message::Configure(m) => &m.protocol,
            Message::Write(m) => &m.protocol,
            Message::Delete(m) => &m.protocol,
        }
    }

    /// When the message was written.
    pub fn timestamp(&self) -> Hlc {
        match self {
            Message::Configure(m) => m.timestamp,
            Message::Write(m) => m.timestamp,
            Message::Delete(m) => m.timestamp,
        }
    }

    /// Who wrote the message.
    pub fn author(&self) -> &PrincipalId {
        match self {
            Message::Configure(m) => &m.author,
            Message::Write(m) => &m.author,
            Message::Delete(m) => &m.author,
        }
    }

    /// The record a `Write` or `Delete` is about.
    pub fn record_id(&self) -> Option<RecordId> {
        match self {
            Message::Configure(_) => None,
            Message::Write(m) => Some(m.record_id),
            Message::Delete(m) => Some(m.record_id),
        }
    }

    /// The canonical encoding that [`cid`](Self::cid) hashes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut w = CanonicalWriter::new();
        w.u8(CANONICAL_VERSION);
        match self {
            Message::Configure(m) => {
                w.u8(1).str(m.tenant.as_str()).str(m.protocol.as_str());
                w.list(&m.definition.types, |w, t| {
                    w.str(t.path.as_str())
                        .option(t.data_bytes_max.as_ref(), |w, v| {
                            w.u64(*v);
                        });
                });
                w.list(&m.definition.uses, |w, p| {
                    w.str(p.as_str());
                });
                m.timestamp.write_canonical(&mut w);
                w.str(m.author.as_str());
            }
            Message::Write(m) => {
                w.u8(2)
                    .str(m.tenant.as_str())
                    .fixed(m.record_id.as_bytes())
                    .option(m.parent_id.as_ref(), |w, p| {
                        w.fixed(p.as_bytes());
                    })
                    .str(m.protocol.as_str())
                    .str(m.path.as_str())
                    .list(m.context_id.chain(), |w, r| {
                        w.fixed(r.as_bytes());
                    })
                    .option(m.prev.as_ref(), |w, p| {
                        w.fixed(p.as_bytes());
                    });
                m.timestamp.write_canonical(&mut w);
                w.str(m.author.as_str()).option(m.data.as_ref(), |w, d| {
                    w.fixed(d.data_cid.as_bytes()).u64(d.size);
                });
            }
            Message::Delete(m) => {
                w.u8(3)
                    .str(m.tenant.as_str())
                    .fixed(m.record_id.as_bytes())
                    .str(m.protocol.as_str())
                    .option(m.prev.as_ref(), |w, p| {
                        w.fixed(p.as_bytes());
                    });
                m.timestamp.write_canonical(&mut w);
                w.str(m.author.as_str());
            }
        }
        w.finish()
    }

    /// The message's content id: blake3 of [`canonical_bytes`](Self::canonical_bytes).
    pub fn cid(&self) -> Cid {
        Cid::from_bytes(*blake3::hash(&self.canonical_bytes()).as_bytes())
    }

    /// Checks the invariants a message must hold on its own, without a store: canonical
    /// protocol definitions, context chains that match paths and parents.
    ///
    /// Checks that need other messages (is the protocol installed, is the path declared,
    /// is the payload within the type's limit) belong to the replica.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Message::Configure(m) => m.definition.validate(&m.protocol),
            Message::Write(m) => m.validate(),
            Message::Delete(_) => Ok(()),
        }
    }

    /// What must be present before this message can be applied, in a stable order.
    ///
    /// A blob is not a dependency of applying: a record whose blob is missing is applied
    /// and stays *staged* until the blob arrives.
    pub fn dependencies(&self) -> Vec<Dependency> {
        let mut deps = Vec::new();
        match self {
            Message::Configure(m) => {
                deps.extend(m.definition.uses.iter().cloned().map(Dependency::Protocol));
            }
            Message::Write(m) => {
                deps.push(Dependency::Protocol(m.protocol.clone()));
                if let Some(parent) = m.parent_id {
                    deps.push(Dependency::Record(parent));
                }
                if m.prev.is_some() {
                    deps.push(Dependency::Record(m.record_id));
                }
            }
            Message::Delete(m) => {
                deps.push(Dependency::Protocol(m.protocol.clone()));
                deps.push(Dependency::Record(m.record_id));
            }
        }
        deps
    }
}

impl ProtocolDefinition {
    /// Builds a definition in canonical form from types and used protocols in any order.
    pub fn new(
        protocol: &ProtocolName,
        mut types: Vec<TypeRule>,
        mut uses: Vec<ProtocolName>,
    ) -> Result<Self, ValidationError> {
        types.sort_by(|a, b| a.path.cmp(&b.path));
        types.dedup_by(|a, b| a.path == b.path);
        uses.sort();
        uses.dedup();
        let def = Self { types, uses };
        def.validate(protocol)?;
        Ok(def)
    }

    /// The rule for `path`, if the protocol declares it.
    pub fn rule(&self, path: &ProtocolPath) -> Option<&TypeRule> {
        self.types
            .binary_search_by(|t| t.path.cmp(path))
            .ok()
            .map(|i| &self.types[i])
    }

    fn validate(&self, protocol: &ProtocolName) -> Result<(), ValidationError> {
        const WHAT: &str = "protocol definition";
        if self.types.is_empty() {
            return Err(ValidationError::Empty { what: WHAT });
        }
        if self.types.len() > PROTOCOL_TYPES_MAX {
            return Err(ValidationError::TooLong {
                what: WHAT,
                len: self.types.len(),
                max: PROTOCOL_TYPES_MAX,
            });
        }
        if self.uses.len() > PROTOCOL_USES_MAX {
            return Err(ValidationError::TooLong {
                what: "protocol uses",
                len: self.uses.len(),
                max: PROTOCOL_USES_MAX,
            });
        }
        if !self.types.windows(2).all(|w| w[0].path < w[1].path) {
            return Err(ValidationError::Malformed {
                what: WHAT,
                reason: "types are not sorted by path without duplicates",
            });
        }
        if !self.uses.windows(2).all(|w| w[0] < w[1]) {
            return Err(ValidationError::Malformed {
                what: WHAT,
                reason: "uses are not sorted without duplicates",
            });
        }
        if self.uses.contains(protocol) {
            return Err(ValidationError::Malformed {
                what: WHAT,
                reason: "a protocol cannot use itself",
            });
        }
        for t in &self.types {
            if let Some(parent) = t.path.parent()
                && self.rule(&parent).is_none()
            {
                return Err(ValidationError::Malformed {
                    what: WHAT,
                    reason: "a type's parent path is not declared",
                });
            }
        }
        Ok(())
    }
}

impl Write {
    /// Whether this is an initial write (it has no `prev`).
    pub fn is_initial(&self) -> bool {
        self.prev.is_none()
    }

    fn validate(&self) -> Result<(), ValidationError> {
        const WHAT: &str = "write";
        let chain = self.context_id.chain();
        if chain.len() != self.path.depth() {
            return Err(ValidationError::Malformed {
                what: WHAT,
                reason: "context length differs from path depth",
            });
        }
        if self.context_id.record() != self.record_id {
            return Err(ValidationError::Malformed {
                what: WHAT,
                reason: "context does not end with the record id",
            });
        }
        let parent_in_context = chain.len().checked_sub(2).map(|i| chain[i]);
        if self.parent_id != parent_in_context {
            return Err(ValidationError::Malformed {
                what: WHAT,
                reason: "parent id differs from the context's parent",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::NodeId;

    fn ts(wall_ms: u64) -> Hlc {
        Hlc {
            wall_ms,
            counter: 0,
            node: NodeId(1),
        }
    }

    fn write(path: &str, context: Vec<RecordId>, parent: Option<RecordId>) -> Message {
        Message::Write(Write {
            tenant: TenantId::new("t").unwrap(),
            record_id: *context.last().unwrap(),
            parent_id: parent,
            protocol: ProtocolName::new("p").unwrap(),
            path: ProtocolPath::new(path).unwrap(),
            context_id: ContextId::new(context).unwrap(),
            prev: None,
            timestamp: ts(1),
            author: PrincipalId::new("a").unwrap(),
            data: None,
        })
    }

    #[test]
    fn write_context_must_match_path_and_parent() {
        let a = RecordId::from_bytes([1; 32]);
        let b = RecordId::from_bytes([2; 32]);
        assert!(write("post", vec![a], None).validate().is_ok());
        assert!(
            write("post/comment", vec![a, b], Some(a))
                .validate()
                .is_ok()
        );
        assert!(write("post/comment", vec![a, b], None).validate().is_err());
        assert!(write("post/comment", vec![b], Some(a)).validate().is_err());
        assert!(write("post", vec![a], Some(b)).validate().is_err());
        assert!(write("post", vec![a, b], Some(a)).validate().is_err());
    }

    #[test]
    fn definitions_are_canonical_and_structural() {
        let p = ProtocolName::new("p").unwrap();
        let rule = |s: &str| TypeRule {
            path: ProtocolPath::new(s).unwrap(),
            data_bytes_max: None,
        };
        let def = ProtocolDefinition::new(
            &p,
            vec![rule("post/comment"), rule("post"), rule("post")],
            vec![
                ProtocolName::new("z").unwrap(),
                ProtocolName::new("b").unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(def.types.len(), 2);
        assert_eq!(def.uses[0].as_str(), "b");
        assert!(
            def.rule(&ProtocolPath::new("post/comment").unwrap())
                .is_some()
        );
        assert!(ProtocolDefinition::new(&p, vec![rule("post/comment")], vec![]).is_err());
        assert!(ProtocolDefinition::new(&p, vec![], vec![]).is_err());
        assert!(ProtocolDefinition::new(&p, vec![rule("x")], vec![p.clone()]).is_err());
        // A non-canonical definition arriving from a peer is refused, not re-sorted,
        // because re-sorting would change the message's cid.
        let unsorted = Message::Configure(Configure {
            tenant: TenantId::new("t").unwrap(),
            protocol: p.clone(),
            definition: ProtocolDefinition {
                types: vec![rule("b"), rule("a")],
                uses: vec![],
            },
            timestamp: ts(1),
            author: PrincipalId::new("a").unwrap(),
        });
        assert!(unsorted.validate().is_err());
    }

    #[test]
    fn dependencies_name_protocol_parent_and_record() {
        let a = RecordId::from_bytes([1; 32]);
        let b = RecordId::from_bytes([2; 32]);
        let Message::Write(mut w) = write("post/comment", vec![a, b], Some(a)) else {
            unreachable!()
        };
        assert_eq!(
            Message::Write(w.clone()).dependencies(),
            vec![
                Dependency::Protocol(ProtocolName::new("p").unwrap()),
                Dependency::Record(a)
            ]
        );
        w.prev = Some(Cid::from_bytes([9; 32]));
        assert!(
            Message::Write(w)
                .dependencies()
                .contains(&Dependency::Record(b))
        );
    }

    #[test]
    fn every_field_changes_the_cid() {
        let a = RecordId::from_bytes([1; 32]);
        let base = write("post", vec![a], None);
        let Message::Write(w) = base.clone() else {
            unreachable!()
        };
        let variants = [
            Message::Write(Write {
                tenant: TenantId::new("u").unwrap(),
                ..w.clone()
            }),
            Message::Write(Write {
                prev: Some(Cid::from_bytes([0; 32])),
                ..w.clone()
            }),
            Message::Write(Write {
                timestamp: ts(2),
                ..w.clone()
            }),
            Message::Write(Write {
                author: PrincipalId::new("b").unwrap(),
                ..w.clone()
            }),
            Message::Write(Write {
                data: Some(DataRef::of(b"x")),
                ..w.clone()
            }),
        ];
        for v in variants {
            assert_ne!(v.cid(), base.cid());
        }
    }
}
