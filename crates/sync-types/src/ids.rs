//! Validated identifiers.
//!
//! Every id that crosses a trust boundary is checked once, at construction or on decode,
//! so code that holds a `TenantId` never re-checks it (STYLE: preconditions in types).
//! String ids are ASCII without whitespace, control characters or `^` (the separator of
//! link keys), with a byte limit per kind. Content ids are 32-byte blake3 hashes shown as
//! 64 lowercase hex characters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Longest tenant id, in bytes.
pub const TENANT_ID_BYTES_MAX: usize = 256;
/// Longest protocol name, in bytes.
pub const PROTOCOL_NAME_BYTES_MAX: usize = 256;
/// Longest principal id (an author or a delegate), in bytes.
pub const PRINCIPAL_ID_BYTES_MAX: usize = 256;
/// Longest endpoint URL, in bytes.
pub const ENDPOINT_BYTES_MAX: usize = 1024;
/// Longest grant id, in bytes.
pub const GRANT_ID_BYTES_MAX: usize = 128;
/// Most segments in a protocol path, and most record ids in a context chain.
pub const PATH_DEPTH_MAX: usize = 16;
/// Longest segment of a protocol path, in bytes.
pub const PATH_SEGMENT_BYTES_MAX: usize = 64;

/// The characters allowed in string ids: visible ASCII except `^`.
fn check_id_chars(what: &'static str, s: &str, max: usize) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::Empty { what });
    }
    if s.len() > max {
        return Err(ValidationError::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    match s
        .char_indices()
        .find(|&(_, c)| !c.is_ascii_graphic() || c == '^')
    {
        Some((at, ch)) => Err(ValidationError::BadChar { what, ch, at }),
        None => Ok(()),
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $extra:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a string.
            pub fn new(s: impl Into<String>) -> Result<Self, ValidationError> {
                let s = s.into();
                check_id_chars($what, &s, $max)?;
                let extra: fn(&str) -> Result<(), ValidationError> = $extra;
                extra(&s)?;
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s).map_err(crate::codec::rejected)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

string_id!(
    /// An owner's namespace. Every message, index, log and link belongs to one tenant.
    ///
    /// Opaque to Weft (a DID, a user id, ...): visible ASCII except `^`, at most
    /// [`TENANT_ID_BYTES_MAX`] bytes.
    TenantId,
    "tenant id",
    TENANT_ID_BYTES_MAX,
    |_| Ok(())
);

string_id!(
    /// The name of a protocol, usually a URI: visible ASCII except `^`, at most
    /// [`PROTOCOL_NAME_BYTES_MAX`] bytes.
    ProtocolName,
    "protocol name",
    PROTOCOL_NAME_BYTES_MAX,
    |_| Ok(())
);

string_id!(
    /// Who wrote a message or holds a delegation: visible ASCII except `^`, at most
    /// [`PRINCIPAL_ID_BYTES_MAX`] bytes.
    PrincipalId,
    "principal id",
    PRINCIPAL_ID_BYTES_MAX,
    |_| Ok(())
);

string_id!(
    /// The id of a capability grant: visible ASCII except `^`, at most
    /// [`GRANT_ID_BYTES_MAX`] bytes.
    GrantId,
    "grant id",
    GRANT_ID_BYTES_MAX,
    |_| Ok(())
);

string_id!(
    /// The base URL of a remote node, `http://` or `https://`, at most
    /// [`ENDPOINT_BYTES_MAX`] bytes.
    Endpoint,
    "endpoint",
    ENDPOINT_BYTES_MAX,
    |s| {
        let rest = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() => Ok(()),
            Some(_) => Err(ValidationError::Malformed {
                what: "endpoint",
                reason: "no host after the scheme",
            }),
            None => Err(ValidationError::Malformed {
                what: "endpoint",
                reason: "must start with http:// or https://",
            }),
        }
    }
);

string_id!(
    /// A record type path inside a protocol, such as `post/comment`: 1 to
    /// [`PATH_DEPTH_MAX`] segments of `[A-Za-z0-9_-]`, each at most
    /// [`PATH_SEGMENT_BYTES_MAX`] bytes, joined by `/`.
    ///
    /// A record at path `post/comment` is a `comment` whose parent is a `post`.
    ProtocolPath,
    "protocol path",
    PATH_DEPTH_MAX * (PATH_SEGMENT_BYTES_MAX + 1),
    |s| {
        let mut depth = 0;
        for segment in s.split('/') {
            depth += 1;
            if segment.is_empty() {
                return Err(ValidationError::Malformed {
                    what: "protocol path",
                    reason: "empty segment",
                });
            }
            if segment.len() > PATH_SEGMENT_BYTES_MAX {
                return Err(ValidationError::TooLong {
                    what: "protocol path segment",
                    len: segment.len(),
                    max: PATH_SEGMENT_BYTES_MAX,
                });
            }
            if let Some((at, ch)) = segment
                .char_indices()
                .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            {
                return Err(ValidationError::BadChar {
                    what: "protocol path segment",
                    ch,
                    at,
                });
            }
        }
        if depth > PATH_DEPTH_MAX {
            return Err(ValidationError::TooLong {
                what: "protocol path",
                len: depth,
                max: PATH_DEPTH_MAX,
            });
        }
        Ok(())
    }
);

impl ProtocolPath {
    /// Number of segments (1 for a root type).
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// The path of the parent type, or `None` for a root type.
    pub fn parent(&self) -> Option<ProtocolPath> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| ProtocolPath(parent.to_owned()))
    }

    /// Whether `self` equals `prefix` or lies below it, segment-wise (`a/b` starts with
    /// `a`, but `ab` does not).
    pub fn starts_with(&self, prefix: &ProtocolPath) -> bool {
        self.0 == prefix.0
            || (self.0.starts_with(&prefix.0)
                && self.0.as_bytes().get(prefix.0.len()) == Some(&b'/'))
    }
}

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps 32 raw bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The 64-character lowercase hex form.
            pub fn to_hex(&self) -> String {
                hex_encode(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            /// Parses the 64-character hex form (either case).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                hex_decode::<32>($what, s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }
    };
}

hash_id!(
    /// A content id: the blake3 hash of a message's canonical encoding, or of a blob's
    /// bytes. Text form: 64 lowercase hex characters.
    Cid,
    "cid"
);

hash_id!(
    /// The stable id of a record, shared by all its versions. It is derived from the
    /// record's initial write ([`RecordId::for_new_record`]) or from an application's
    /// natural key ([`RecordId::from_natural_key`]), so two replicas that write the same
    /// key write the same record.
    RecordId,
    "record id"
);

impl Cid {
    /// The content id of a blob: blake3 of its bytes.
    pub fn of_data(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }
}

impl RecordId {
    /// The record id for a natural key chosen by the application: the same tenant,
    /// protocol and key always give the same record.
    pub fn from_natural_key(tenant: &TenantId, protocol: &ProtocolName, key: &[u8]) -> Self {
        let mut w = crate::canonical::CanonicalWriter::new();
        w.str("weft.record-id.natural.v1")
            .str(tenant.as_str())
            .str(protocol.as_str())
            .bytes(key);
        Self(*blake3::hash(&w.finish()).as_bytes())
    }

    /// The record id for a new record without a natural key, derived from what its
    /// initial write says: tenant, protocol, path, author and its unique HLC timestamp
    /// (which carries the writer's node id).
    pub fn for_new_record(
        tenant: &TenantId,
        protocol: &ProtocolName,
        path: &ProtocolPath,
        author: &PrincipalId,
        timestamp: &crate::hlc::Hlc,
    ) -> Self {
        let mut w = crate::canonical::CanonicalWriter::new();
        w.str("weft.record-id.new.v1")
            .str(tenant.as_str())
            .str(protocol.as_str())
            .str(path.as_str())
            .str(author.as_str());
        timestamp.write_canonical(&mut w);
        Self(*blake3::hash(&w.finish()).as_bytes())
    }
}

/// The chain of ancestor record ids of a record, from the root record down to the record
/// itself: a record at path depth `n` has a context of `n` ids. Text form: the hex ids
/// joined by `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<RecordId>", into = "Vec<RecordId>")]
pub struct ContextId(Vec<RecordId>);

impl ContextId {
    /// Validates a chain of 1 to [`PATH_DEPTH_MAX`] record ids.
    pub fn new(chain: Vec<RecordId>) -> Result<Self, ValidationError> {
        if chain.is_empty() {
            return Err(ValidationError::Empty { what: "context id" });
        }
        if chain.len() > PATH_DEPTH_MAX {
            return Err(ValidationError::TooLong {
                what: "context id",
                len: chain.len(),
                max: PATH_DEPTH_MAX,
            });
        }
        Ok(Self(chain))
    }

    /// The context of a root record: just itself.
    pub fn root(record: RecordId) -> Self {
        Self(vec![record])
    }

    /// The context of a child of the record whose context is `self`.
    pub fn child(&self, record: RecordId) -> Result<Self, ValidationError> {
        let mut chain = self.0.clone();
        chain.push(record);
        Self::new(chain)
    }

    /// The ids from the root record down to this record.
    pub fn chain(&self) -> &[RecordId] {
        &self.0
    }

    /// The last id of the chain: the record itself.
    pub fn record(&self) -> RecordId {
        *self.0.last().expect("a context id is never empty")
    }

    /// Whether this context equals `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &ContextId) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

impl TryFrom<Vec<RecordId>> for ContextId {
    type Error = ValidationError;
    fn try_from(chain: Vec<RecordId>) -> Result<Self, Self::Error> {
        Self::new(chain).map_err(crate::codec::rejected)
    }
}

impl From<ContextId> for Vec<RecordId> {
    fn from(c: ContextId) -> Self {
        c.0
    }
}

impl FromStr for ContextId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let chain = s
            .split('/')
            .map(RecordId::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(chain)
    }
}

impl fmt::Display for ContextId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ContextId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContextId({self})")
    }
}

/// The 16-byte random id of one event-log instance. Text form: 32 lowercase hex
/// characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId([u8; 16]);

impl StreamId {
    /// Wraps 16 bytes (the ledger draws them from a random source when it creates a log).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl FromStr for StreamId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        hex_decode::<16>("stream id", s).map(Self)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_encode(&self.0))
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({self})")
    }
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

pub(crate) fn hex_decode<const N: usize>(
    what: &'static str,
    s: &str,
) -> Result<[u8; N], ValidationError> {
    if s.len() != N * 2 {
        return Err(ValidationError::Malformed {
            what,
            reason: if s.len() < N * 2 {
                "too few hex digits"
            } else {
                "too many hex digits"
            },
        });
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let digit = |at: usize| {
            let c = char::from(s.as_bytes()[at]);
            c.to_digit(16)
                .ok_or(ValidationError::BadChar { what, ch: c, at })
        };
        debug_assert_eq!(pair.len(), 2);
        let hi = digit(i * 2)?;
        let lo = digit(i * 2 + 1)?;
        out[i] = u8::try_from(hi * 16 + lo).expect("two hex digits fit a byte");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_ids_reject_bad_input() {
        assert!(matches!(
            TenantId::new(""),
            Err(ValidationError::Empty { .. })
        ));
        assert!(matches!(
            TenantId::new("a^b"),
            Err(ValidationError::BadChar { ch: '^', at: 1, .. })
        ));
        assert!(matches!(
            TenantId::new("a b"),
            Err(ValidationError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            TenantId::new("x".repeat(TENANT_ID_BYTES_MAX + 1)),
            Err(ValidationError::TooLong { .. })
        ));
        assert!(TenantId::new("did:key:z6Mk").is_ok());
        assert!(matches!(
            Endpoint::new("ftp://x"),
            Err(ValidationError::Malformed { .. })
        ));
        assert!(Endpoint::new("http://127.0.0.1:8080").is_ok());
    }

    #[test]
    fn protocol_paths() {
        let p = ProtocolPath::new("post/comment").unwrap();
        assert_eq!(p.depth(), 2);
        assert_eq!(p.parent().unwrap().as_str(), "post");
        assert!(p.starts_with(&ProtocolPath::new("post").unwrap()));
        assert!(
            !ProtocolPath::new("postal")
                .unwrap()
                .starts_with(&ProtocolPath::new("post").unwrap())
        );
        assert!(ProtocolPath::new("a//b").is_err());
        assert!(ProtocolPath::new("a/b c").is_err());
        let deep = vec!["a"; PATH_DEPTH_MAX + 1].join("/");
        assert!(matches!(
            ProtocolPath::new(deep),
            Err(ValidationError::TooLong { .. })
        ));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let cid = Cid::of_data(b"hello");
        assert_eq!(cid.to_string().parse::<Cid>().unwrap(), cid);
        assert_eq!(cid.to_string().to_uppercase().parse::<Cid>().unwrap(), cid);
        assert!("abc".parse::<Cid>().is_err());
        assert!(matches!(
            "g".repeat(64).parse::<Cid>(),
            Err(ValidationError::BadChar { ch: 'g', at: 0, .. })
        ));
    }

    #[test]
    fn context_ids() {
        let a = RecordId::from_bytes([1; 32]);
        let b = RecordId::from_bytes([2; 32]);
        let root = ContextId::root(a);
        let child = root.child(b).unwrap();
        assert!(child.starts_with(&root));
        assert!(!root.starts_with(&child));
        assert_eq!(child.record(), b);
        assert_eq!(child.to_string().parse::<ContextId>().unwrap(), child);
        assert!(ContextId::new(vec![]).is_err());
        assert!(ContextId::new(vec![a; PATH_DEPTH_MAX + 1]).is_err());
    }
}
