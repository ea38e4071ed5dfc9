//! The diff protocol's messages, their encoding and their validation.
//!
//! A message on the wire is one version byte ([`PROTOCOL_VERSION`]) followed by the postcard
//! encoding of a [`Request`] or a [`Response`]. Decoding checks the length limit first, then
//! the version, then the structure, then every rule that does not need the tree
//! (parameter ranges, counts, prefix lengths, mask and length agreement, key order).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::hash::{Hash, Key, Prefix};

/// The version byte in front of every message.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bounds on session parameters, enforced by both sides.
pub mod bounds {
    /// Shortest allowed subtree fingerprint or key digest, in bytes.
    pub const FINGERPRINT_BYTES_MIN: u8 = 4;
    /// Longest allowed subtree fingerprint or key digest, in bytes.
    pub const FINGERPRINT_BYTES_MAX: u8 = 32;
    /// Largest `keys_inline_max`.
    pub const KEYS_INLINE_MAX: u16 = 256;
    /// Largest `digests_max` (keys the initiator lists as digests under one prefix).
    pub const DIGESTS_MAX: u16 = 4096;
    /// Largest `resolve_keys_max` (keys the responder sends for one prefix).
    pub const RESOLVE_KEYS_MAX: u32 = 1 << 16;
}

/// Session parameters chosen by the initiator and carried in every request, so that the
/// responder needs no state between requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Bytes of each salted subtree fingerprint (4 to 32). Default 8.
    pub fingerprint_bytes: u8,
    /// Bytes of each salted key digest (4 to 32). Default 8.
    pub digest_bytes: u8,
    /// The responder sends its keys instead of child fingerprints when it holds at most
    /// this many under a differing prefix (0 to 256). Default 4.
    pub keys_inline_max: u16,
    /// The initiator lists its keys as digests when it holds at most this many under a
    /// differing prefix (1 to 4096). Default 16.
    pub digests_max: u16,
    /// The responder answers a digest list, or a prefix the initiator holds nothing under,
    /// with its keys when it holds at most this many there, else with child fingerprints
    /// (1 to 65536). Default 4096.
    pub resolve_keys_max: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            fingerprint_bytes: 8,
            digest_bytes: 8,
            keys_inline_max: 4,
            digests_max: 16,
            resolve_keys_max: 4096,
        }
    }
}

impl Params {
    /// Check the parameters against the protocol bounds and a message size limit: the
    /// largest single answer they allow must fit in half a message.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParams`] naming the offending parameter.
    pub fn validate(&self, message_bytes_max: usize) -> Result<(), Error> {
        use bounds::*;
        let fp = FINGERPRINT_BYTES_MIN..=FINGERPRINT_BYTES_MAX;
        if !fp.contains(&self.fingerprint_bytes) {
            return Err(Error::InvalidParams("fingerprint_bytes out of range"));
        }
        if !fp.contains(&self.digest_bytes) {
            return Err(Error::InvalidParams("digest_bytes out of range"));
        }
        if self.keys_inline_max > KEYS_INLINE_MAX {
            return Err(Error::InvalidParams("keys_inline_max out of range"));
        }
        if !(1..=DIGESTS_MAX).contains(&self.digests_max) {
            return Err(Error::InvalidParams("digests_max out of range"));
        }
        if !(1..=RESOLVE_KEYS_MAX).contains(&self.resolve_keys_max) {
            return Err(Error::InvalidParams("resolve_keys_max out of range"));
        }
        if self.answer_bytes_bound() > message_bytes_max / 2 {
            return Err(Error::InvalidParams(
                "one answer could exceed half a message",
            ));
        }
        Ok(())
    }

    /// An upper bound on the encoded size of one answer.
    pub(crate) fn answer_bytes_bound(&self) -> usize {
        let keys = |n: usize| 5 + 32 * n;
        let split = 8 + 16 * usize::from(self.fingerprint_bytes);
        let resolve = keys(self.resolve_keys_max as usize);
        let view = split
            .max(keys(usize::from(self.keys_inline_max)))
            .max(resolve);
        let children = 16 + 16 * view;
        let resolved = 8 + usize::from(self.digests_max).div_ceil(8) + resolve;
        children.max(resolved).max(8 + view)
    }

    pub(crate) fn keys_per_view_max(&self) -> usize {
        (self.resolve_keys_max as usize).max(usize::from(self.keys_inline_max))
    }
}

/// Limits on what a peer can make this side decode and hold. Defaults suit a million keys
/// and a 10% difference in one request per round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded message accepted or produced, in bytes. Default 16 MiB.
    pub message_bytes_max: usize,
    /// Most queries in one request. Default 131072.
    pub queries_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_bytes_max: 16 << 20,
            queries_max: 1 << 17,
        }
    }
}

/// Initiator → responder: the salt and parameters of the session and a list of queries,
/// one per open prefix. Self-contained: a responder answers it from its tree alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The per-session (per-attempt) salt keying fingerprints and digests.
    pub salt: [u8; 16],
    /// Session parameters.
    pub params: Params,
    /// Whether the responder must include its full root in the response (first request of
    /// an attempt).
    pub want_root: bool,
    /// The queries, answered in order.
    pub queries: Vec<Query>,
}

/// One question about the keys under one prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// The prefix; its length is a multiple of 4 bits.
    pub prefix: Prefix,
    /// What the initiator holds there.
    pub body: QueryBody,
}

/// The initiator's view of the keys under a query's prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryBody {
    /// The fingerprint of the initiator's (non-empty) subtree: "is yours the same?".
    Fingerprint(Vec<u8>),
    /// Fingerprints of the initiator's non-empty children (4 more bits): bit `i` of `mask`
    /// marks child `i`, and `fingerprints` concatenates theirs in child order.
    Split {
        /// Which of the 16 children are non-empty.
        mask: u16,
        /// `popcount(mask)` fingerprints, concatenated.
        fingerprints: Vec<u8>,
    },
    /// Digests of all the initiator's keys under the prefix, in key order, concatenated
    /// (possibly none: the initiator holds nothing there).
    Digests(Vec<u8>),
}

/// Responder → initiator: the answers to a prefix of the request's queries, in order.
/// Queries past the last answer were deferred (the reply hit its size limit) and are
/// asked again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The responder's full root, present if and only if the request asked for it.
    pub root: Option<Hash>,
    /// One answer per leading query.
    pub answers: Vec<Answer>,
}

/// The answer to one query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Same fingerprint (answers [`QueryBody::Fingerprint`]).
    Same,
    /// The responder's view of the whole prefix (answers a differing
    /// [`QueryBody::Fingerprint`], or [`QueryBody::Digests`] when the responder holds too
    /// many keys there to resolve at once).
    View(View),
    /// Answers [`QueryBody::Split`]: the responder's non-empty children, and its view of
    /// each child that differs from the initiator's or that the initiator lacks.
    Children {
        /// The responder's non-empty children.
        mask: u16,
        /// The children that follow in `views` (a subset of `mask`).
        views_mask: u16,
        /// One view per bit of `views_mask`, in child order.
        views: Vec<View>,
    },
    /// Answers [`QueryBody::Digests`]: bit `i` of `lacking` (LSB first in each byte) is set
    /// when the responder has no key with the initiator's `i`-th digest; `keys` are the
    /// responder's keys whose digests the initiator did not list, in order.
    Resolved {
        /// `ceil(n / 8)` bytes for `n` digests; padding bits are zero.
        lacking: Vec<u8>,
        /// Keys only the responder holds.
        keys: Vec<Key>,
    },
}

/// One side's description of the keys under a prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum View {
    /// All the keys under the prefix, in order.
    Keys(Vec<Key>),
    /// Fingerprints of the non-empty children, as in [`QueryBody::Split`].
    Split {
        /// Which of the 16 children are non-empty (never 0).
        mask: u16,
        /// `popcount(mask)` fingerprints, concatenated.
        fingerprints: Vec<u8>,
    },
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising into a Vec cannot fail for these types: no maps, no sequences of
    // unknown length, no custom errors.
    postcard::to_extend(value, vec![PROTOCOL_VERSION]).expect("encoding into a Vec cannot fail")
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], limits: &Limits) -> Result<T, Error> {
    if bytes.len() > limits.message_bytes_max {
        return Err(Error::MessageTooLarge {
            len: bytes.len(),
            max: limits.message_bytes_max,
        });
    }
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| Error::Malformed("empty message".into()))?;
    if version != PROTOCOL_VERSION {
        return Err(Error::Version(version));
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| Error::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::Malformed("trailing bytes".into()));
    }
    Ok(value)
}

impl Request {
    /// Encode: version byte + postcard. `O(size)`.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decode and [`validate`](Request::validate). `O(size)`; allocation is bounded by the
    /// message length.
    ///
    /// # Errors
    ///
    /// Size, version, structure or any rule of [`validate`](Request::validate).
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Request, Error> {
        let request: Request = decode(bytes, limits)?;
        request.validate(limits)?;
        Ok(request)
    }

    /// Check every rule that does not need the tree: parameters, query count, prefix
    /// lengths (multiples of 4, at most 256; at most 252 under a split), mask and length
    /// agreement, digest counts.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParams`], [`Error::LimitExceeded`] or [`Error::Protocol`].
    pub fn validate(&self, limits: &Limits) -> Result<(), Error> {
        let p = &self.params;
        p.validate(limits.message_bytes_max)?;
        if self.queries.len() > limits.queries_max {
            return Err(Error::LimitExceeded {
                what: "query",
                count: self.queries.len(),
                max: limits.queries_max,
            });
        }
        let fp = usize::from(p.fingerprint_bytes);
        let dg = usize::from(p.digest_bytes);
        for q in &self.queries {
            if q.prefix.len() % 4 != 0 {
                return Err(Error::Protocol("prefix length is not a multiple of 4"));
            }
            match &q.body {
                QueryBody::Fingerprint(f) => {
                    if f.len() != fp {
                        return Err(Error::Protocol("fingerprint has the wrong length"));
                    }
                }
                QueryBody::Split { mask, fingerprints } => {
                    check_split(&q.prefix, *mask, fingerprints, fp)?;
                }
                QueryBody::Digests(d) => {
                    if d.len() % dg != 0 {
                        return Err(Error::Protocol("digest list has a partial digest"));
                    }
                    let n = d.len() / dg;
                    if n > usize::from(p.digests_max) {
                        return Err(Error::LimitExceeded {
                            what: "digest",
                            count: n,
                            max: usize::from(p.digests_max),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn check_split(prefix: &Prefix, mask: u16, fps: &[u8], fp: usize) -> Result<(), Error> {
    if prefix.len() > 252 {
        return Err(Error::Protocol("split below the last level"));
    }
    if mask == 0 {
        return Err(Error::Protocol("split with no children"));
    }
    if fps.len() != mask.count_ones() as usize * fp {
        return Err(Error::Protocol("split fingerprints do not match its mask"));
    }
    Ok(())
}

impl Response {
    /// Encode: version byte + postcard. `O(size)`.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decode, checking size, version and structure. The rules that depend on the request
    /// (answer kinds, counts, key ranges) are checked by
    /// [`Initiator::handle`](crate::Initiator::handle).
    ///
    /// # Errors
    ///
    /// [`Error::MessageTooLarge`], [`Error::Version`] or [`Error::Malformed`].
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Response, Error> {
        decode(bytes, limits)
    }
}
