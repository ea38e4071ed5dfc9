//! The on-store layout: every partition, its key layout and its value type.
//!
//! Notation: `T` is a tenant's number and `P` a protocol's number within its tenant,
//! both LEB128 varints (one byte below 128, and prefix-free, so a prefix scan on one
//! number never matches another) interned in `names` the first time the tenant or
//! protocol is applied; `t` is a tenant id's bytes followed by `0x00` (tenant ids are
//! visible ASCII, so the terminator cannot occur inside one and no tenant's keys share
//! a prefix with another's); `cid`, `record` are 32 raw bytes; `pos` is a `u64`
//! big-endian, so byte order is numeric order. Values are [`sync_types::codec`]
//! envelopes (one version byte and a postcard body) unless noted; `()` is the one-byte
//! empty envelope.
//!
//! Message keys use the short interned numbers rather than the (up to 256-byte) names:
//! every message writes five or six keys, and keys are what an LSM memtable compares on
//! every insert and lookup. fjall compares the first 4 bytes of two keys inline before
//! it follows a pointer to the rest, so keys whose first bytes already differ (a
//! one-byte tenant number, then a cid) compare fastest; with full names, key
//! comparisons were the largest cost of a commit.
//!
//! Where a key needs no random part, it has none: the indexes by path and by context
//! end in the message's log position, not its cid, so a commit appends at the end of
//! each path's and each thread's range. A random key (a cid, a record id) costs far
//! more in an LSM: each insert searches an uncached path of the memtable, and every
//! flushed table overlaps every other, so compaction rewrites them all. Only `msg` and
//! `records` are random, because lookups by cid and by record id are what they are for
//! (`ledger_bench fjall_ceiling` measures fjall alone for each shape).

//! | partition | key | value | what for |
//! |---|---|---|---|
//! | `meta` | `"layout"` | `u32` layout version | refuse stores from another layout |
//! | `meta` | `"hlc"` | `Hlc` | the greatest timestamp ever stored, written in the batch that stores it (see `causality.rs`) |
//! | `meta` | `"node"` | `NodeId` | the replica's node id, created once |
//! | `meta` | `"known/" T link` | `KnownRanges` | positions of a link's remote log the replica holds already (it pushed them); a pull leaves them out |
//! | `meta` | `"reached/" T link` | [`ReachedNode`](crate::ReachedNode) | the node a link's calls last reached (`weft status`) |
//! | `names` | `'t' tenant` / `'T' T` / `'p' T protocol` / `'#t'` / `'#p' T` | `u32` / `TenantId` / `u32` / next `u32` / next `u32` | interned tenant and protocol numbers, both ways, and the counters that allocate them |
//! | `log` | `T pos` | [`StoredEntry`]: cid, message, inline data | the event log, and the message bodies |
//! | `log_meta` | `T` | [`LogMeta`]: stream id, epoch, head, compaction floor | log identity and next position |
//! | `log_by_protocol` | `T P pos` | `()` | filtered log pages without a full scan; cids per protocol (read from the log entry at `pos`) |
//! | `msg` | `T cid` | `u64` position | message lookup; ordered cid scan per tenant |
//! | `records` | `T record` | [`RecordRow`]: head, protocol, path, context | the merge rule's state per record |
//! | `by_path` | `T P path 0x00 pos` | `()` | scoped reads by path prefix |
//! | `by_context` | `T P parent… pos` | `()` | scoped reads by context prefix: a record's descendants, under the chain of its parents (root records have no entry) |
//! | `configs` | `T P wall:u64 counter:u32 node:u64 cid` | `u64` position | newest protocol definition |
//! | `by_blob` | `T data_cid pos` | `Cid` | the stored writes of a tenant that reference a blob (who may read it) |
//! | `blob_meta` | `cid` | [`BlobMeta`] | a complete, verified blob |
//! | `blob_chunks` | `cid index:u32` | raw bytes (not an envelope) | blob content, [`BLOB_CHUNK_BYTES`] per chunk |
//! | `blob_uploads` | `cid` | [`UploadState`] | a resumable partial upload |
//! | `blob_aliases` | `cid` | raw 32-byte id (not an envelope) | a blob whose chunks are under another id |
//! | `blob_owners` | `cid` (the upload's id) | [`UploadOwner`] | which process writes a partial upload; only on a shared store (not in [`PARTITIONS`]: a backend creates it on first use) |
//! | `links` | `t key` (the link key text) | `LinkState` | replication links |
//! | `dead_letters` | `t cid endpoint` | `DeadLetter` | failed messages per endpoint |
//! | `identities` | `t` | [`RegisteredIdentity`](crate::RegisteredIdentity) | registered identities |
//!
//! Invariants, kept by [`Ledger::apply`](crate::Ledger::apply) in one batch:
//! - a message is stored iff it has a `log` entry, iff it has a `msg` entry, and the
//!   two agree on its position; every index entry names a stored message;
//! - the stored versions of a record are exactly `records[record].head.retained()`;
//! - positions only grow: `log_meta.head` is the last position ever assigned, entries
//!   of pruned versions are deleted and their positions never reused;
//! - an interned number, once committed, never changes or gets reused.
//!
//! Blob chunks are raw bytes rather than envelopes: they are payload, verified against
//! their blake3 id, and copying them through a serializer would only cost throughput.

use serde::{Deserialize, Serialize};
use sync_types::merge::RecordHead;
use sync_types::{
    Cid, ContextId, Hlc, Message, ProtocolName, ProtocolPath, RecordId, StreamId, TenantId,
};

use crate::error::{Error, Result};
use crate::store::Partition;

/// The layout version this build reads and writes.
///
/// Version 3 added the protocol to record rows and the `by_blob` index; a version-2
/// store is upgraded on open (`upgrade.rs`, then `blob_refs.rs`). Version 4 added to
/// each log entry the ids its apply pruned ([`StoredEntry::pruned`]); entries written
/// before keep their version-3 encoding and read with an empty list, so a version-3
/// store is upgraded on open by writing the new version alone. Version 5 stopped
/// copying the message's cid into the values of `log_by_protocol`, `by_path` and
/// `by_context` ([`INDEX_VALUE`]: the key's position finds the log entry, which holds
/// it); entries written before keep their cid and read as they did, so a version-4 (or
/// 3) store is upgraded on open by writing the new version alone, and an older build
/// refuses a version-5 store rather than misread its index values. Any other version
/// is refused.
pub const LAYOUT_VERSION: u32 = 5;

/// Most ids a log entry records as pruned ([`StoredEntry::pruned`]): the versions its
/// apply pruned, and those the pruned versions' own entries recorded (deleted with
/// them), newest first; the oldest inherited ids beyond this are dropped.
pub const PRUNED_IDS_MAX: usize = 64;

/// Largest stored value the ledger decodes, in bytes (a message with its largest inline
/// payload fits with room to spare).
pub const VALUE_BYTES_MAX: usize = 256 * 1024;

/// Size of a blob chunk, in bytes.
pub const BLOB_CHUNK_BYTES: usize = 64 * 1024;

/// Ledger-wide settings.
pub const META: Partition = Partition::new("meta");
/// Interned tenant and protocol numbers.
pub const NAMES: Partition = Partition::new("names");
/// The event log, which also holds message bodies.
pub const LOG: Partition = Partition::new("log");
/// Per-tenant log identity and head.
pub const LOG_META: Partition = Partition::new("log_meta");
/// Log positions per protocol.
pub const LOG_BY_PROTOCOL: Partition = Partition::new("log_by_protocol");
/// Message positions by cid.
pub const MSG: Partition = Partition::new("msg");
/// Record heads.
pub const RECORDS: Partition = Partition::new("records");
/// Writes by protocol path.
pub const BY_PATH: Partition = Partition::new("by_path");
/// Writes by context chain.
pub const BY_CONTEXT: Partition = Partition::new("by_context");
/// Configure messages by protocol and timestamp.
pub const CONFIGS: Partition = Partition::new("configs");
/// Stored writes by the blob they reference.
pub const BY_BLOB: Partition = Partition::new("by_blob");
/// Complete blobs.
pub const BLOB_META: Partition = Partition::new("blob_meta");
/// Blob content.
pub const BLOB_CHUNKS: Partition = Partition::new("blob_chunks").with_large_values();
/// Partial uploads.
pub const BLOB_UPLOADS: Partition = Partition::new("blob_uploads");
/// Blobs whose chunks are stored under another id: a blob written as a stream of unknown
/// hash keeps its chunks under the upload's id instead of copying them.
pub const BLOB_ALIASES: Partition = Partition::new("blob_aliases");
/// Which process owns a partial upload, on a store several processes write
/// ([`Store::is_shared`](crate::store::Store::is_shared)): not in [`PARTITIONS`], since a
/// store with one writer never uses it and a shared backend creates its table on first
/// use (a database migrated before it existed needs no migration).
pub const BLOB_OWNERS: Partition = Partition::new("blob_owners");
/// Replication links.
pub const LINKS: Partition = Partition::new("links");
/// Dead letters.
pub const DEAD_LETTERS: Partition = Partition::new("dead_letters");
/// Registered identities.
pub const IDENTITIES: Partition = Partition::new("identities");

/// Every partition of the ledger.
pub const PARTITIONS: [Partition; 18] = [
    META,
    NAMES,
    LOG,
    LOG_META,
    LOG_BY_PROTOCOL,
    MSG,
    RECORDS,
    BY_PATH,
    BY_CONTEXT,
    CONFIGS,
    BY_BLOB,
    BLOB_META,
    BLOB_CHUNKS,
    BLOB_UPLOADS,
    BLOB_ALIASES,
    LINKS,
    DEAD_LETTERS,
    IDENTITIES,
];

/// A log entry: a stored message with its inline payload.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StoredEntry {
    /// The message's cid (stored so reading a page does not hash every message).
    pub cid: Cid,
    /// The message.
    pub message: Message,
    /// Its inline payload, if it has one and it was supplied.
    #[serde(with = "opt_bytes")]
    pub data: Option<Vec<u8>>,
    /// The ids removed from the tenant's current set by the apply that stored this
    /// message: the versions it pruned, then the ids the pruned versions' own entries
    /// recorded (their entries are deleted with them, so this one carries their
    /// removals on), at most [`PRUNED_IDS_MAX`]. Empty for entries written before
    /// layout 4.
    pub pruned: Vec<Cid>,
}

/// A log entry to store, borrowed from the apply's input: encodes to the same bytes as
/// the [`StoredEntry`] of the same fields, without copying the message or its payload.
#[derive(Serialize)]
pub(crate) struct EntryRef<'a> {
    pub(crate) cid: &'a Cid,
    pub(crate) message: &'a Message,
    #[serde(serialize_with = "opt_bytes::serialize_ref")]
    pub(crate) data: Option<&'a [u8]>,
    pub(crate) pruned: &'a [Cid],
}

/// A log entry as layout 3 stored it (no pruned ids).
#[derive(Deserialize)]
struct StoredEntryV3 {
    cid: Cid,
    message: Message,
    #[serde(with = "opt_bytes")]
    data: Option<Vec<u8>>,
}

/// The value of a scoped index entry (`log_by_protocol`, `by_path`, `by_context`) since
/// layout 5: the empty envelope. The key ends with the message's log position, and the
/// log entry there holds the cid; layout 4 and older stored the cid here, a 32-byte copy
/// of what the log entry holds, and such values still read (see `lookups.rs`).
pub const INDEX_VALUE: [u8; 1] = [sync_types::codec::ENVELOPE_VERSION];

/// The cid of a log entry without decoding its message: the envelope's version byte,
/// then the cid's 32 raw bytes (the first field of both [`StoredEntry`] encodings). A
/// value too short for that is decoded whole, for the error that names what is wrong.
pub(crate) fn entry_cid(key: &[u8], bytes: &[u8]) -> Result<Cid> {
    match bytes {
        [sync_types::codec::ENVELOPE_VERSION, rest @ ..] if rest.len() >= 32 => {
            let mut cid = [0u8; 32];
            cid.copy_from_slice(&rest[..32]);
            Ok(Cid::from_bytes(cid))
        }
        _ => dec_entry(key, bytes).map(|entry| entry.cid),
    }
}

/// Decodes a log entry of either encoding: layout 4's, or layout 3's (which lacks the
/// trailing pruned list, so layout 4's decoder fails on it at the end of the bytes).
pub(crate) fn dec_entry(key: &[u8], bytes: &[u8]) -> Result<StoredEntry> {
    match dec::<StoredEntry>(LOG, key, bytes) {
        Ok(entry) => Ok(entry),
        Err(e) => match dec::<StoredEntryV3>(LOG, key, bytes) {
            Ok(old) => Ok(StoredEntry {
                cid: old.cid,
                message: old.message,
                data: old.data,
                pruned: Vec::new(),
            }),
            Err(_) => Err(e),
        },
    }
}

/// The identity and head of one tenant's log.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct LogMeta {
    /// The log instance, drawn at random when the log is created.
    pub stream_id: StreamId,
    /// Changes when the log is rebuilt.
    pub epoch: u64,
    /// The last position ever assigned (0 before the first append).
    pub head: u64,
    /// Positions up to and including this one are compacted: a cursor below it gets a
    /// gap.
    pub compacted_through: u64,
}

/// What the ledger keeps per record.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RecordRow {
    /// The retained versions.
    pub head: RecordHead,
    /// The record's protocol, from the first version stored. Every later version names
    /// the same protocol ([`Ledger::apply`](crate::Ledger::apply) refuses one that does
    /// not), so a message cannot move a record into another protocol's grant or rules.
    pub protocol: ProtocolName,
    /// The record's path, from the first write seen (deletes carry none).
    pub path: Option<ProtocolPath>,
    /// The record's context, from the first write seen.
    pub context: Option<ContextId>,
}

/// A complete, verified blob.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct BlobMeta {
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes it was stored with.
    pub chunk_bytes: u32,
}

/// A partial upload that can resume.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UploadState {
    /// Bytes durably received, from the start.
    pub received: u64,
    /// The announced size, if any.
    pub size: Option<u64>,
    /// When the upload last made progress, in ms since the Unix epoch (caller's clock).
    pub updated_ms: u64,
}

/// The process that owns a partial upload on a shared store (`blob_owners`): only it
/// commits the upload's chunks, until `until_ms` passes without a commit of its own.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UploadOwner {
    /// The owning ledger's id, drawn once per process from its id source.
    pub owner: StreamId,
    /// When another process may take the upload over, in ms since the Unix epoch (the
    /// owner's clock at its last commit plus [`UPLOAD_OWNER_TTL_MS`](crate::UPLOAD_OWNER_TTL_MS)).
    pub until_ms: u64,
}

/// Serde for `Option<Vec<u8>>` as a byte string (postcard: a length and raw bytes),
/// not as a sequence of integers.
mod opt_bytes {
    use serde::de::{Deserializer, Visitor};
    use serde::ser::Serializer;

    struct Bytes<'a>(&'a [u8]);

    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    pub(super) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        serialize_ref(&v.as_deref(), s)
    }

    #[allow(clippy::ref_option)] // serde's `serialize_with` passes a reference
    pub(super) fn serialize_ref<S: Serializer>(v: &Option<&[u8]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&Bytes(b)),
            None => s.serialize_none(),
        }
    }

    struct BufVisitor;

    impl<'de> Visitor<'de> for BufVisitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }

    struct OptVisitor;

    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<Vec<u8>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("optional bytes")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_byte_buf(BufVisitor).map(Some)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        d.deserialize_option(OptVisitor)
    }
}

/// Encodes a value in the codec envelope.
pub(crate) fn enc<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    sync_types::codec::encode(value)
}

/// Encodes a record row: the same bytes as [`enc`], in a buffer sized for a row up front
/// (a row holds two versions of about 80 bytes, the protocol name, the path and the
/// context chain; [`enc`]'s 64 bytes would grow twice).
pub(crate) fn enc_row(row: &RecordRow) -> Vec<u8> {
    let hint = 224
        + row.protocol.as_str().len()
        + row.path.as_ref().map_or(0, |p| p.as_str().len())
        + row.context.as_ref().map_or(0, |c| 33 * c.chain().len());
    let mut out = Vec::with_capacity(hint);
    out.push(sync_types::codec::ENVELOPE_VERSION);
    postcard::to_io(row, &mut out).expect("a record row always serializes");
    out
}

/// Encodes a log entry: the same bytes as [`enc`], written into a buffer sized for the
/// entry up front instead of one that grows (and reallocates) as postcard writes.
#[cfg(test)]
pub(crate) fn enc_entry(entry: &StoredEntry) -> Vec<u8> {
    enc_entry_ref(&EntryRef {
        cid: &entry.cid,
        message: &entry.message,
        data: entry.data.as_deref(),
        pruned: &entry.pruned,
    })
}

/// [`enc_entry`] of an entry borrowed from the apply's input.
pub(crate) fn enc_entry_ref(entry: &EntryRef<'_>) -> Vec<u8> {
    // A small write is about 250 bytes: ids, names, its context chain and its data.
    let hint = 320 + entry.data.map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(hint);
    out.push(sync_types::codec::ENVELOPE_VERSION);
    // As in `codec::encode`: postcard only fails on sequences of unknown length and
    // maps with unserializable keys, and a stored entry has neither.
    postcard::to_io(entry, &mut out).expect("a stored entry always serializes");
    out
}

/// Decodes a stored value, naming the partition and key on failure.
pub(crate) fn dec<T: serde::de::DeserializeOwned>(
    partition: Partition,
    key: &[u8],
    bytes: &[u8],
) -> Result<T> {
    sync_types::codec::decode(bytes, VALUE_BYTES_MAX).map_err(|source| Error::CorruptValue {
        partition: partition.name(),
        key: hex(key),
        source,
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Builds keys by appending parts.
#[derive(Default)]
pub(crate) struct Key(Vec<u8>);

impl Key {
    pub(crate) fn tenant(t: &TenantId) -> Self {
        let mut v = Vec::with_capacity(t.as_str().len() + 64);
        v.extend_from_slice(t.as_str().as_bytes());
        v.push(0);
        Key(v)
    }
    pub(crate) fn raw(bytes: &[u8]) -> Self {
        Key(bytes.to_vec())
    }
    pub(crate) fn str0(mut self, s: &str) -> Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    pub(crate) fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub(crate) fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    pub(crate) fn u32(mut self, n: u32) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    pub(crate) fn cid(self, c: &Cid) -> Self {
        self.bytes(c.as_bytes())
    }
    pub(crate) fn hlc(self, h: &Hlc) -> Self {
        self.u64(h.wall_ms).u32(h.counter).u64(h.node.0)
    }
    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// A tenant's interned number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Tn(pub(crate) u32);

/// A protocol's interned number within its tenant.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Pn(pub(crate) u32);

impl Key {
    pub(crate) fn tn(t: Tn) -> Self {
        Key(Vec::with_capacity(48)).varint(t.0)
    }
    pub(crate) fn pn(self, p: Pn) -> Self {
        self.varint(p.0)
    }
    /// LEB128: prefix-free (no encoding is a prefix of another), one byte below 128.
    pub(crate) fn varint(mut self, mut n: u32) -> Self {
        while n >= 0x80 {
            self.0.push(u8::try_from(n & 0x7f).unwrap_or(0) | 0x80);
            n >>= 7;
        }
        self.0.push(u8::try_from(n).unwrap_or(0));
        self
    }
}

pub(crate) fn log_key(t: Tn, pos: u64) -> Vec<u8> {
    Key::tn(t).u64(pos).into_vec()
}

pub(crate) fn msg_key(t: Tn, cid: &Cid) -> Vec<u8> {
    Key::tn(t).cid(cid).into_vec()
}

/// A `by_blob` key: the tenant, the blob, then the referencing write's position.
pub(crate) fn by_blob_key(t: Tn, blob: &Cid, pos: u64) -> Vec<u8> {
    Key::tn(t).cid(blob).u64(pos).into_vec()
}

pub(crate) fn record_key(t: Tn, record: &RecordId) -> Vec<u8> {
    Key::tn(t).bytes(record.as_bytes()).into_vec()
}

pub(crate) fn name_tenant_key(t: &TenantId) -> Vec<u8> {
    Key::raw(b"t").bytes(t.as_str().as_bytes()).into_vec()
}

pub(crate) fn name_tenant_reverse_key(t: Tn) -> Vec<u8> {
    Key::raw(b"T").u32(t.0).into_vec()
}

pub(crate) fn name_protocol_key(t: Tn, p: &ProtocolName) -> Vec<u8> {
    Key::raw(b"p")
        .u32(t.0)
        .bytes(p.as_str().as_bytes())
        .into_vec()
}

pub(crate) const NEXT_TENANT_KEY: &[u8] = b"#t";

pub(crate) fn next_protocol_key(t: Tn) -> Vec<u8> {
    Key::raw(b"#p").varint(t.0).into_vec()
}

/// The last `N` bytes of a key, as an array.
pub(crate) fn key_tail<const N: usize>(partition: Partition, key: &[u8]) -> Result<[u8; N]> {
    key.len()
        .checked_sub(N)
        .and_then(|at| key[at..].try_into().ok())
        .ok_or(Error::CorruptKey {
            partition: partition.name(),
            reason: "key is shorter than its fixed-size tail",
        })
}

/// The index entries of a stored message: (partition, key, value). Used both to
/// insert them and, with the same inputs, to delete them when the message is pruned.
/// `p` is the number of the message's protocol.
pub(crate) fn index_entries(
    t: Tn,
    p: Pn,
    pos: u64,
    cid: &Cid,
    message: &Message,
    row: Option<&RecordRow>,
) -> Vec<(Partition, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::with_capacity(5);
    out.push((MSG, msg_key(t, cid), enc(&pos)));
    out.push((
        LOG_BY_PROTOCOL,
        Key::tn(t).pn(p).u64(pos).into_vec(),
        INDEX_VALUE.to_vec(),
    ));
    let (path, context) = match message {
        Message::Configure(c) => {
            out.push((
                CONFIGS,
                Key::tn(t).pn(p).hlc(&c.timestamp).cid(cid).into_vec(),
                enc(&pos),
            ));
            (None, None)
        }
        Message::Write(w) => {
            if let Some(data) = w.data.filter(|d| !d.is_inline()) {
                out.push((BY_BLOB, by_blob_key(t, &data.data_cid, pos), enc(cid)));
            }
            (Some(&w.path), Some(&w.context_id))
        }
        Message::Delete(_) => (
            row.and_then(|r| r.path.as_ref()),
            row.and_then(|r| r.context.as_ref()),
        ),
    };
    if let Some(path) = path {
        out.push((
            BY_PATH,
            Key::tn(t).pn(p).str0(path.as_str()).u64(pos).into_vec(),
            INDEX_VALUE.to_vec(),
        ));
    }
    // A record's own versions are found through its record row; the index only holds
    // descendants, under their parent's chain. A root record (a chain of one) has no
    // entry.
    if let Some(context) = context
        && let [parents @ .., _own] = context.chain()
        && !parents.is_empty()
    {
        let mut k = Key::tn(t).pn(p);
        for r in parents {
            k = k.bytes(r.as_bytes());
        }
        out.push((BY_CONTEXT, k.u64(pos).into_vec(), INDEX_VALUE.to_vec()));
    }
    out
}

#[cfg(test)]
mod tests {
    /// Inline data serialized as layout 3 did (the same `opt_bytes` helper).
    #[derive(serde::Serialize)]
    struct OldData(#[serde(with = "super::opt_bytes")] Option<Vec<u8>>);

    use super::*;

    #[test]
    fn varints_are_prefix_free_and_short() {
        let enc = |n| Key::default().varint(n).into_vec();
        assert_eq!(enc(0), vec![0]);
        assert_eq!(enc(127), vec![127]);
        assert_eq!(enc(128), vec![0x80, 1]);
        assert_eq!(enc(u32::MAX).len(), 5);
        let samples = [0u32, 1, 127, 128, 255, 300, 16_383, 16_384, u32::MAX];
        for a in samples {
            for b in samples {
                if a != b {
                    assert!(!enc(b).starts_with(&enc(a)), "{a} is a prefix of {b}");
                }
            }
        }
    }

    #[test]
    fn stored_entries_round_trip_with_and_without_data() {
        let t = TenantId::new("t").unwrap();
        let p = ProtocolName::new("p").unwrap();
        let def = sync_types::ProtocolDefinition::new(
            &p,
            vec![sync_types::TypeRule {
                path: ProtocolPath::new("a").unwrap(),
                data_bytes_max: None,
            }],
            vec![],
        )
        .unwrap();
        let m = Message::Configure(sync_types::Configure {
            tenant: t,
            protocol: p,
            definition: def,
            timestamp: Hlc::ZERO,
            author: sync_types::PrincipalId::new("a").unwrap(),
        });
        for data in [None, Some(vec![]), Some((0..=255).collect::<Vec<u8>>())] {
            let e = StoredEntry {
                cid: m.cid(),
                message: m.clone(),
                data: data.clone(),
                pruned: vec![m.cid()],
            };
            let bytes = enc(&e);
            assert_eq!(enc_entry(&e), bytes);
            let version = sync_types::merge::Version {
                cid: e.cid,
                timestamp: Hlc::ZERO,
                prev: Some(e.cid),
                kind: sync_types::merge::VersionKind::Write,
            };
            let rid = RecordId::from_bytes([7; 32]);
            let row = RecordRow {
                head: RecordHead {
                    initial: Some(version),
                    winner: version,
                },
                protocol: ProtocolName::new("https://example.com/a-long-protocol-name").unwrap(),
                path: Some(ProtocolPath::new("a/b").unwrap()),
                context: Some(ContextId::root(rid).child(rid).unwrap()),
            };
            assert_eq!(enc_row(&row), enc(&row));
            assert_eq!(
                dec::<RecordRow>(RECORDS, b"k", &enc_row(&row)).unwrap(),
                row
            );
            assert_eq!(dec::<StoredEntry>(LOG, b"k", &bytes).unwrap(), e);
            assert_eq!(dec_entry(b"k", &bytes).unwrap(), e);
            // A layout-3 entry (no pruned list) reads with an empty one.
            let old = enc(&(m.cid(), m.clone(), OldData(data.clone())));
            let read = dec_entry(b"k", &old).unwrap();
            assert_eq!(read.pruned, Vec::<Cid>::new());
            assert_eq!((read.cid, read.data), (e.cid, e.data));
        }
        assert!(matches!(
            dec_entry(b"k", &[1, 0xff]),
            Err(Error::CorruptValue {
                partition: "log",
                ..
            })
        ));
        assert!(matches!(
            dec::<StoredEntry>(LOG, b"k", &[1, 0xff]),
            Err(Error::CorruptValue {
                partition: "log",
                ..
            })
        ));
    }
}
