//! Scopes: which part of a tenant's messages a link replicates or a grant covers.
//!
//! A [`Scope`] is `Full`, a [`ProtocolSet`] or a [`Projection`]. Every constructor puts
//! the scope in canonical form (sorted, deduplicated, with subsumed prefixes dropped), so
//! two scopes that cover the same messages are equal and hash alike:
//!
//! - [`scope_id`]: `base64url(SHA-256(canonical))` without padding, with the version
//!   string [`SCOPE_ID_VERSION`] in front;
//! - [`projection_id`]: the same over the tenant and the scope, with
//!   [`PROJECTION_ID_VERSION`]; it names *which set of messages is compared*, and
//!   deliberately leaves out endpoints and credentials.
//!
//! Canonical layout: `version:str tenant:str (projection id only) scope`, where
//! `scope = 0 | 1 protocols:list<str> | 2 entries:list<protocol:str paths:list<str>
//! contexts:list<list<32>>>`.

use serde::{Deserialize, Serialize};

use crate::canonical::{CanonicalWriter, sha256_b64url};
use crate::error::ValidationError;
use crate::ids::{ContextId, ProtocolName, ProtocolPath, TenantId};

/// Version string hashed into every scope id.
pub const SCOPE_ID_VERSION: &str = "weft-scope-v1";
/// Version string hashed into every projection id.
pub const PROJECTION_ID_VERSION: &str = "weft-projection-v1";
/// Most protocols in a protocol set, and most entries in a projection.
pub const SCOPE_PROTOCOLS_MAX: usize = 64;
/// Most path prefixes, and most context prefixes, in one projection entry.
pub const SCOPE_PREFIXES_MAX: usize = 64;

/// Which messages of a tenant a link replicates or a grant covers.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Scope {
    /// Every message of the tenant.
    Full,
    /// Every message of one or more protocols.
    ProtocolSet(ProtocolSet),
    /// Parts of protocols, by path and context prefixes.
    Projection(Projection),
}

/// A non-empty, sorted, deduplicated set of protocols.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "Vec<ProtocolName>", into = "Vec<ProtocolName>")]
pub struct ProtocolSet(Vec<ProtocolName>);

/// One or more projection entries, one per protocol, sorted by protocol.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "Vec<ProjectionEntry>", into = "Vec<ProjectionEntry>")]
pub struct Projection(Vec<ProjectionEntry>);

/// The part of one protocol a projection covers: records whose path starts with one of
/// `path_prefixes`, or whose context starts with one of `context_prefixes`. With both
/// lists empty the entry covers the whole protocol.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ProjectionEntry {
    /// The protocol.
    pub protocol: ProtocolName,
    /// Path prefixes, sorted, none below another.
    pub path_prefixes: Vec<ProtocolPath>,
    /// Context prefixes, sorted, none below another.
    pub context_prefixes: Vec<ContextId>,
}

/// The scope in words, as error messages print it: `full`, `protocols A, B`, or
/// `projection of A (paths x, y; contexts c), B` (a protocol without prefixes is
/// projected whole).
impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn list<T: std::fmt::Display>(
            f: &mut std::fmt::Formatter<'_>,
            items: &[T],
        ) -> std::fmt::Result {
            for (i, item) in items.iter().enumerate() {
                write!(f, "{}{item}", if i > 0 { ", " } else { "" })?;
            }
            Ok(())
        }
        match self {
            Scope::Full => f.write_str("full"),
            Scope::ProtocolSet(set) => {
                f.write_str("protocols ")?;
                list(f, set.protocols())
            }
            Scope::Projection(p) => {
                f.write_str("projection of ")?;
                for (i, e) in p.entries().iter().enumerate() {
                    write!(f, "{}{}", if i > 0 { ", " } else { "" }, e.protocol)?;
                    if e.is_whole_protocol() {
                        continue;
                    }
                    f.write_str(" (")?;
                    if !e.path_prefixes.is_empty() {
                        f.write_str("paths ")?;
                        list(f, &e.path_prefixes)?;
                    }
                    if !e.context_prefixes.is_empty() {
                        if !e.path_prefixes.is_empty() {
                            f.write_str("; ")?;
                        }
                        f.write_str("contexts ")?;
                        list(f, &e.context_prefixes)?;
                    }
                    f.write_str(")")?;
                }
                Ok(())
            }
        }
    }
}

impl ProtocolSet {
    /// Sorts and deduplicates; fails when empty or longer than [`SCOPE_PROTOCOLS_MAX`].
    pub fn new(mut protocols: Vec<ProtocolName>) -> Result<Self, ValidationError> {
        protocols.sort();
        protocols.dedup();
        if protocols.is_empty() {
            return Err(ValidationError::Empty {
                what: "protocol set",
            });
        }
        check_len("protocol set", protocols.len(), SCOPE_PROTOCOLS_MAX)?;
        Ok(Self(protocols))
    }

    /// The protocols, sorted.
    pub fn protocols(&self) -> &[ProtocolName] {
        &self.0
    }

    /// Whether `protocol` is in the set.
    pub fn contains(&self, protocol: &ProtocolName) -> bool {
        self.0.binary_search(protocol).is_ok()
    }
}

impl TryFrom<Vec<ProtocolName>> for ProtocolSet {
    type Error = ValidationError;
    fn try_from(v: Vec<ProtocolName>) -> Result<Self, Self::Error> {
        Self::new(v).map_err(crate::codec::rejected)
    }
}

impl From<ProtocolSet> for Vec<ProtocolName> {
    fn from(s: ProtocolSet) -> Self {
        s.0
    }
}

impl ProjectionEntry {
    /// An entry covering a whole protocol.
    pub fn whole(protocol: ProtocolName) -> Self {
        Self {
            protocol,
            path_prefixes: Vec::new(),
            context_prefixes: Vec::new(),
        }
    }

    /// Whether the entry covers its whole protocol.
    pub fn is_whole_protocol(&self) -> bool {
        self.path_prefixes.is_empty() && self.context_prefixes.is_empty()
    }

    /// Whether a record of this entry's protocol at `path` with `context` is covered.
    pub fn covers_record(&self, path: &ProtocolPath, context: &ContextId) -> bool {
        self.is_whole_protocol()
            || self.path_prefixes.iter().any(|p| path.starts_with(p))
            || self.context_prefixes.iter().any(|c| context.starts_with(c))
    }

    /// Whether everything `other` covers is covered by `self`.
    fn covers_entry(&self, other: &ProjectionEntry) -> bool {
        self.protocol == other.protocol
            && (self.is_whole_protocol()
                || (!other.is_whole_protocol()
                    && other
                        .path_prefixes
                        .iter()
                        .all(|o| self.path_prefixes.iter().any(|s| o.starts_with(s)))
                    && other
                        .context_prefixes
                        .iter()
                        .all(|o| self.context_prefixes.iter().any(|s| o.starts_with(s)))))
    }
}

/// Keeps the prefixes that no other prefix of the list covers, sorted.
fn minimal_prefixes<T: Ord + Clone>(
    mut items: Vec<T>,
    starts_with: impl Fn(&T, &T) -> bool,
) -> Vec<T> {
    items.sort();
    items.dedup();
    // After sorting, a prefix sorts before everything below it, so one pass that keeps
    // an item only when the last kept item is not its prefix is enough.
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !kept.iter().any(|k| starts_with(&item, k)) {
            kept.push(item);
        }
    }
    kept
}

impl Projection {
    /// Canonicalises entries given in any order: entries of one protocol are merged, a
    /// whole-protocol entry absorbs narrower ones, prefixes below another prefix are
    /// dropped, and everything is sorted.
    pub fn new(entries: Vec<ProjectionEntry>) -> Result<Self, ValidationError> {
        if entries.is_empty() {
            return Err(ValidationError::Empty { what: "projection" });
        }
        let mut by_protocol: std::collections::BTreeMap<
            ProtocolName,
            (bool, Vec<ProtocolPath>, Vec<ContextId>),
        > = std::collections::BTreeMap::new();
        for e in entries {
            check_len(
                "projection path prefixes",
                e.path_prefixes.len(),
                SCOPE_PREFIXES_MAX,
            )?;
            check_len(
                "projection context prefixes",
                e.context_prefixes.len(),
                SCOPE_PREFIXES_MAX,
            )?;
            let whole = e.is_whole_protocol();
            let slot = by_protocol.entry(e.protocol).or_default();
            slot.0 |= whole;
            slot.1.extend(e.path_prefixes);
            slot.2.extend(e.context_prefixes);
        }
        check_len("projection", by_protocol.len(), SCOPE_PROTOCOLS_MAX)?;
        let entries = by_protocol
            .into_iter()
            .map(|(protocol, (whole, paths, contexts))| {
                if whole {
                    return Ok(ProjectionEntry::whole(protocol));
                }
                let path_prefixes = minimal_prefixes(paths, |a: &ProtocolPath, b| a.starts_with(b));
                let context_prefixes =
                    minimal_prefixes(contexts, |a: &ContextId, b| a.starts_with(b));
                check_len(
                    "projection path prefixes",
                    path_prefixes.len(),
                    SCOPE_PREFIXES_MAX,
                )?;
                check_len(
                    "projection context prefixes",
                    context_prefixes.len(),
                    SCOPE_PREFIXES_MAX,
                )?;
                Ok(ProjectionEntry {
                    protocol,
                    path_prefixes,
                    context_prefixes,
                })
            })
            .collect::<Result<Vec<_>, ValidationError>>()?;
        Ok(Self(entries))
    }

    /// The entries, sorted by protocol, one per protocol.
    pub fn entries(&self) -> &[ProjectionEntry] {
        &self.0
    }

    pub(crate) fn entry(&self, protocol: &ProtocolName) -> Option<&ProjectionEntry> {
        self.0
            .binary_search_by(|e| e.protocol.cmp(protocol))
            .ok()
            .map(|i| &self.0[i])
    }

    /// [`Scope::classify`] for a projection.
    pub(crate) fn classify(
        &self,
        protocol: &ProtocolName,
        record: Option<(&ProtocolPath, &ContextId)>,
    ) -> ScopeClass {
        match (self.entry(protocol), record) {
            (None, _) => ScopeClass::OutOfScope,
            (Some(e), _) if e.is_whole_protocol() => ScopeClass::InScope,
            (Some(e), Some((path, context))) if e.covers_record(path, context) => {
                ScopeClass::InScope
            }
            (Some(_), Some(_)) => ScopeClass::OutOfScope,
            (Some(_), None) => ScopeClass::Unknown,
        }
    }
}

impl TryFrom<Vec<ProjectionEntry>> for Projection {
    type Error = ValidationError;
    fn try_from(v: Vec<ProjectionEntry>) -> Result<Self, Self::Error> {
        Self::new(v).map_err(crate::codec::rejected)
    }
}

impl From<Projection> for Vec<ProjectionEntry> {
    fn from(p: Projection) -> Self {
        p.0
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), ValidationError> {
    if len > max {
        return Err(ValidationError::TooLong { what, len, max });
    }
    Ok(())
}

/// Where a message falls relative to a scope.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum ScopeClass {
    /// The scope covers the message.
    InScope,
    /// The scope does not cover the message.
    OutOfScope,
    /// The message alone does not say (a delete in a projection, before its initial
    /// write is known); callers fail closed.
    Unknown,
}

impl Scope {
    /// A protocol-set scope.
    pub fn protocols(protocols: Vec<ProtocolName>) -> Result<Self, ValidationError> {
        ProtocolSet::new(protocols).map(Scope::ProtocolSet)
    }

    /// A projection scope.
    pub fn projection(entries: Vec<ProjectionEntry>) -> Result<Self, ValidationError> {
        Projection::new(entries).map(Scope::Projection)
    }

    /// The protocols the scope names, sorted; `None` for `Full`.
    pub fn protocol_list(&self) -> Option<Vec<&ProtocolName>> {
        match self {
            Scope::Full => None,
            Scope::ProtocolSet(s) => Some(s.0.iter().collect()),
            Scope::Projection(p) => Some(p.0.iter().map(|e| &e.protocol).collect()),
        }
    }

    /// Whether the scope covers every message of `protocol`.
    pub fn covers_protocol(&self, protocol: &ProtocolName) -> bool {
        match self {
            Scope::Full => true,
            Scope::ProtocolSet(s) => s.contains(protocol),
            Scope::Projection(p) => p
                .entry(protocol)
                .is_some_and(ProjectionEntry::is_whole_protocol),
        }
    }

    /// Where a record of `protocol` falls, given its path and context when known: the
    /// record rule [`Scope::gate`] is built on (classify messages with the gate). With
    /// `record` unknown, a projection that covers part of `protocol` answers `Unknown`.
    pub fn classify(
        &self,
        protocol: &ProtocolName,
        record: Option<(&ProtocolPath, &ContextId)>,
    ) -> ScopeClass {
        match self {
            Scope::Full => ScopeClass::InScope,
            Scope::ProtocolSet(s) if s.contains(protocol) => ScopeClass::InScope,
            Scope::ProtocolSet(_) => ScopeClass::OutOfScope,
            Scope::Projection(p) => p.classify(protocol, record),
        }
    }

    /// Whether every message `other` covers is covered by `self` (a grant of `self` allows
    /// a request for `other`).
    pub fn covers(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::Full, _) => true,
            (_, Scope::Full) => false,
            (s, Scope::ProtocolSet(o)) => o.0.iter().all(|p| s.covers_protocol(p)),
            (Scope::ProtocolSet(s), Scope::Projection(o)) => {
                o.0.iter().all(|e| s.contains(&e.protocol))
            }
            (Scope::Projection(s), Scope::Projection(o)) => {
                o.0.iter()
                    .all(|oe| s.entry(&oe.protocol).is_some_and(|se| se.covers_entry(oe)))
            }
        }
    }

    pub(crate) fn write_canonical(&self, w: &mut CanonicalWriter) {
        match self {
            Scope::Full => {
                w.u8(0);
            }
            Scope::ProtocolSet(s) => {
                w.u8(1).list(&s.0, |w, p| {
                    w.str(p.as_str());
                });
            }
            Scope::Projection(p) => {
                w.u8(2).list(&p.0, |w, e| {
                    w.str(e.protocol.as_str())
                        .list(&e.path_prefixes, |w, p| {
                            w.str(p.as_str());
                        })
                        .list(&e.context_prefixes, |w, c| {
                            w.list(c.chain(), |w, r| {
                                w.fixed(r.as_bytes());
                            });
                        });
                });
            }
        }
    }
}

macro_rules! hash_text {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The 43-character base64url text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub(crate) fn from_hash_text(s: String) -> Self {
                Self(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse().map_err(crate::codec::rejected)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = ValidationError;
            /// Accepts the 43-character base64url form of a SHA-256 hash.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let ok = s.len() == 43
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(ValidationError::Malformed {
                        what: stringify!($name),
                        reason: "expected 43 base64url characters",
                    })
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
pub(crate) use hash_text;

hash_text!(
    /// The id of a canonical scope ([`scope_id`]).
    ScopeId
);
hash_text!(
    /// The id of the message set a link compares: tenant and canonical scope
    /// ([`projection_id`]).
    ProjectionId
);

/// The scope's id: `base64url(SHA-256(version, canonical scope))`.
pub fn scope_id(scope: &Scope) -> ScopeId {
    let mut w = CanonicalWriter::new();
    w.str(SCOPE_ID_VERSION);
    scope.write_canonical(&mut w);
    ScopeId::from_hash_text(sha256_b64url(&w.finish()))
}

/// The projection id of `scope` for `tenant`: `base64url(SHA-256(version, tenant,
/// canonical scope))`.
pub fn projection_id(tenant: &TenantId, scope: &Scope) -> ProjectionId {
    let mut w = CanonicalWriter::new();
    w.str(PROJECTION_ID_VERSION).str(tenant.as_str());
    scope.write_canonical(&mut w);
    ProjectionId::from_hash_text(sha256_b64url(&w.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::RecordId;

    fn p(s: &str) -> ProtocolName {
        ProtocolName::new(s).unwrap()
    }
    fn path(s: &str) -> ProtocolPath {
        ProtocolPath::new(s).unwrap()
    }

    #[test]
    fn protocol_sets_are_canonical() {
        let a = ProtocolSet::new(vec![p("b"), p("a"), p("b")]).unwrap();
        assert_eq!(a.protocols(), &[p("a"), p("b")]);
        assert!(ProtocolSet::new(vec![]).is_err());
    }

    #[test]
    fn projections_merge_and_drop_subsumed_prefixes() {
        let r1 = RecordId::from_bytes([1; 32]);
        let r2 = RecordId::from_bytes([2; 32]);
        let root = ContextId::root(r1);
        let child = root.child(r2).unwrap();
        let proj = Projection::new(vec![
            ProjectionEntry {
                protocol: p("x"),
                path_prefixes: vec![path("a/b"), path("a")],
                context_prefixes: vec![child.clone()],
            },
            ProjectionEntry {
                protocol: p("x"),
                path_prefixes: vec![],
                context_prefixes: vec![root.clone()],
            },
            ProjectionEntry {
                protocol: p("w"),
                path_prefixes: vec![path("q")],
                context_prefixes: vec![],
            },
            ProjectionEntry::whole(p("y")),
            ProjectionEntry {
                protocol: p("y"),
                path_prefixes: vec![path("z")],
                context_prefixes: vec![],
            },
        ])
        .unwrap();
        let e = proj.entries();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].protocol, p("w"));
        assert_eq!(e[1].path_prefixes, vec![path("a")]);
        assert_eq!(e[1].context_prefixes, vec![root]);
        assert!(e[2].is_whole_protocol());
    }

    #[test]
    fn classification_fails_closed_on_unknown_records() {
        let r = ContextId::root(RecordId::from_bytes([1; 32]));
        let scope = Scope::projection(vec![ProjectionEntry {
            protocol: p("x"),
            path_prefixes: vec![path("a")],
            context_prefixes: vec![],
        }])
        .unwrap();
        assert_eq!(
            scope.classify(&p("x"), Some((&path("a/b"), &r))),
            ScopeClass::InScope
        );
        assert_eq!(
            scope.classify(&p("x"), Some((&path("b"), &r))),
            ScopeClass::OutOfScope
        );
        assert_eq!(scope.classify(&p("x"), None), ScopeClass::Unknown);
        assert_eq!(scope.classify(&p("y"), None), ScopeClass::OutOfScope);
        assert_eq!(Scope::Full.classify(&p("y"), None), ScopeClass::InScope);
    }

    #[test]
    fn coverage_between_scopes() {
        let set_ab = Scope::protocols(vec![p("a"), p("b")]).unwrap();
        let set_a = Scope::protocols(vec![p("a")]).unwrap();
        let narrow = Scope::projection(vec![ProjectionEntry {
            protocol: p("a"),
            path_prefixes: vec![path("x/y")],
            context_prefixes: vec![],
        }])
        .unwrap();
        let wider = Scope::projection(vec![ProjectionEntry {
            protocol: p("a"),
            path_prefixes: vec![path("x")],
            context_prefixes: vec![],
        }])
        .unwrap();
        assert!(Scope::Full.covers(&set_ab));
        assert!(!set_ab.covers(&Scope::Full));
        assert!(set_ab.covers(&set_a));
        assert!(!set_a.covers(&set_ab));
        assert!(set_a.covers(&narrow));
        assert!(wider.covers(&narrow));
        assert!(!narrow.covers(&wider));
        assert!(!wider.covers(&set_a));
    }

    #[test]
    fn scopes_are_named_in_words() {
        let p = |n: &str| ProtocolName::new(format!("https://ex.com/{n}")).unwrap();
        assert_eq!(Scope::Full.to_string(), "full");
        let set = Scope::protocols(vec![p("b"), p("a")]).unwrap();
        assert_eq!(
            set.to_string(),
            "protocols https://ex.com/a, https://ex.com/b"
        );
        let projection = Scope::Projection(
            Projection::new(vec![
                ProjectionEntry {
                    protocol: p("a"),
                    path_prefixes: vec![ProtocolPath::new("post").unwrap()],
                    context_prefixes: Vec::new(),
                },
                ProjectionEntry {
                    protocol: p("b"),
                    path_prefixes: Vec::new(),
                    context_prefixes: Vec::new(),
                },
            ])
            .unwrap(),
        );
        assert_eq!(
            projection.to_string(),
            "projection of https://ex.com/a (paths post), https://ex.com/b"
        );
    }
}
