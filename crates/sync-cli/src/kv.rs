//! The key-value layout of `put`, `get`, `list`, `delete` and `watch`.
//!
//! Records live under one protocol (default `weft:kv`) at one type path (default
//! `entry`), configured by the first `put`. A key is a natural key: its record id is
//! derived from (tenant, protocol, key), so two replicas writing the same key write
//! versions of the same record and the merge rule picks one winner everywhere.
//!
//! Record ids are hashes, so the payload carries the key to let `list` and `watch` show
//! it. Payload format, version 1: one byte `1`, the key's length as a big-endian `u16`,
//! the key's UTF-8 bytes, then the value's bytes. Payloads in another layout are shown
//! with their record id as the key and the whole payload as the value.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sync_engine::{Receipt, Record, RecordKey, Replica, Residency, WriteRequest};
use sync_types::{DataRef, PrincipalId, ProtocolName, ProtocolPath, RecordId, TenantId, TypeRule};

use crate::cli::{KvArgs, ReplicaArgs};
use crate::exit::{Exit, coded, usage};

/// The protocol records are written under by default.
pub(crate) const PROTOCOL_DEFAULT: &str = "weft:kv";
/// The record type path by default.
pub(crate) const PATH_DEFAULT: &str = "entry";
/// The payload format's version byte.
const FORMAT_VERSION: u8 = 1;
/// Longest key, in bytes.
pub(crate) const KEY_BYTES_MAX: usize = 1024;

/// Encodes a payload.
pub(crate) fn encode(key: &str, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(key.len()).expect("keys are checked against KEY_BYTES_MAX");
    let mut out = Vec::with_capacity(3 + key.len() + value.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    out
}

/// Decodes a payload into its key and value; `None` for another layout.
pub(crate) fn decode(data: &[u8]) -> Option<(&str, &[u8])> {
    let (&version, rest) = data.split_first()?;
    if version != FORMAT_VERSION || rest.len() < 2 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let rest = &rest[2..];
    if rest.len() < len {
        return None;
    }
    let key = std::str::from_utf8(&rest[..len]).ok()?;
    Some((key, &rest[len..]))
}

/// A key's value as a reader sees it.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The key (or the record id for a payload in another layout).
    pub(crate) key: String,
    /// The value, when it is held in memory (inline, or a blob of at most
    /// `RECORD_DATA_BYTES_MAX`); larger values are read from `blob`.
    pub(crate) value: Option<Vec<u8>>,
    /// A resident blob holding the payload, with the value's offset in it, when the
    /// value was not loaded.
    pub(crate) blob: Option<(DataRef, u64)>,
    /// The record's winning version.
    pub(crate) record: Record,
}

/// The key of a deleted record, from its initial write's payload (inline, or the head
/// of a resident blob); the record id when that is not here.
fn deleted_key(replica: &Replica, tenant: &TenantId, record: &Record) -> anyhow::Result<String> {
    let fallback = record.record_id.to_string();
    let Some(initial) = record.initial else {
        return Ok(fallback);
    };
    let Some(stored) = replica.ledger().get_message(tenant, &initial)? else {
        return Ok(fallback);
    };
    let head = match (&stored.data, &stored.message) {
        (Some(d), _) => d.clone(),
        (None, sync_types::Message::Write(w)) => match w.data {
            Some(r) if replica.ledger().blobs().has(&r.data_cid)? => {
                replica.read_blob(&r.data_cid, 0, HEADER_BYTES_MAX.min(r.size))?
            }
            _ => return Ok(fallback),
        },
        _ => return Ok(fallback),
    };
    Ok(decode(&head).map_or(fallback, |(k, _)| k.to_owned()))
}

/// Bytes read to find the key at the start of a blob payload.
const HEADER_BYTES_MAX: u64 = 3 + KEY_BYTES_MAX as u64;

impl Entry {
    /// The entry of a record; a large resident payload is left in the blob store and
    /// only its head is read, for the key.
    pub(crate) fn of(replica: &Replica, record: Record) -> anyhow::Result<Self> {
        if let Some(data) = &record.data {
            let (key, value) = match decode(data) {
                Some((k, v)) => (k.to_owned(), v.to_vec()),
                None => (record.record_id.to_string(), data.clone()),
            };
            return Ok(Self {
                key,
                value: Some(value),
                blob: None,
                record,
            });
        }
        let resident = record
            .data_ref
            .filter(|_| record.residency == Residency::Resident);
        let Some(data_ref) = resident else {
            return Ok(Self {
                key: record.record_id.to_string(),
                value: None,
                blob: None,
                record,
            });
        };
        let head = replica.read_blob(&data_ref.data_cid, 0, HEADER_BYTES_MAX.min(data_ref.size))?;
        let (key, offset) = match decode(&head) {
            Some((k, _)) => (k.to_owned(), 3 + k.len() as u64),
            None => (record.record_id.to_string(), 0),
        };
        Ok(Self {
            key,
            value: None,
            blob: Some((data_ref, offset)),
            record,
        })
    }

    /// The value's size in bytes, when it is here.
    pub(crate) fn size(&self) -> Option<u64> {
        match (&self.value, &self.blob) {
            (Some(v), _) => Some(v.len() as u64),
            (None, Some((r, offset))) => Some(r.size - offset),
            (None, None) => None,
        }
    }

    /// Writes the value to `out`, streaming a large one chunk by chunk; `false` when
    /// the value is not here (a blob that has not arrived).
    pub(crate) fn copy_value(
        &self,
        replica: &Replica,
        out: &mut impl std::io::Write,
    ) -> anyhow::Result<bool> {
        match (&self.value, &self.blob) {
            (Some(v), _) => {
                out.write_all(v)?;
                Ok(true)
            }
            (None, Some((r, offset))) => {
                let mut reader = replica.blob_reader(&r.data_cid, *offset)?;
                std::io::copy(&mut reader, out)?;
                Ok(true)
            }
            (None, None) => Ok(false),
        }
    }

    /// The whole value in memory (for JSON output).
    pub(crate) fn load_value(&self, replica: &Replica) -> anyhow::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        Ok(self.copy_value(replica, &mut buf)?.then_some(buf))
    }

    /// The value for a table cell: text, or a note for binary, large or missing data.
    pub(crate) fn value_preview(&self, max_chars: usize) -> String {
        match (&self.value, self.size()) {
            (None, None) => "(blob not yet received)".to_owned(),
            (None, Some(n)) => format!("({n} bytes)"),
            (Some(v), _) => match std::str::from_utf8(v) {
                Ok(s) => {
                    let one_line: String = s
                        .chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect();
                    if one_line.chars().count() > max_chars {
                        let cut: String =
                            one_line.chars().take(max_chars.saturating_sub(1)).collect();
                        format!("{cut}…")
                    } else {
                        one_line
                    }
                }
                Err(_) => format!("({} bytes, binary)", v.len()),
            },
        }
    }

    /// The entry as JSON: the value as `value` when it is UTF-8, else `value_base64`
    /// (`null` when it has not arrived); `residency` says which.
    pub(crate) fn to_json(&self, replica: &Replica) -> anyhow::Result<serde_json::Value> {
        let mut obj = serde_json::json!({
            "key": self.key,
            "record_id": self.record.record_id.to_string(),
            "cid": self.record.cid.to_string(),
            "protocol": self.record.protocol.as_str(),
            "path": self.record.path.as_str(),
            "author": self.record.author.as_str(),
            "timestamp_ms": self.record.timestamp.wall_ms,
            "hlc": self.record.timestamp.to_string(),
            "deleted": self.record.deleted,
            "residency": self.record.residency.as_str(),
            "size": self.size(),
        });
        match self.load_value(replica)? {
            Some(v) => match String::from_utf8(v) {
                Ok(s) => obj["value"] = s.into(),
                Err(e) => obj["value_base64"] = BASE64.encode(e.as_bytes()).into(),
            },
            None => obj["value"] = serde_json::Value::Null,
        }
        Ok(obj)
    }
}

fn check_key(key: &str) -> anyhow::Result<()> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(usage(format!(
            "a key must be 1 to {KEY_BYTES_MAX} bytes long"
        )));
    }
    Ok(())
}

/// A file every store directory holds (the storage engine's format version).
const STORE_MARKER: &str = "version";

/// Opens the replica in `dir`. With `create` false, a missing directory is an error
/// (reading an empty store that was never written is almost always a wrong `--store`).
/// A directory that exists but holds no store (a node's data directory, say) is the same
/// error: opening it would create a store inside it.
pub(crate) fn open_replica(dir: &Path, create: bool) -> anyhow::Result<Replica> {
    // The store this process holds open for its watch: the same replica.
    if let Some(replica) = crate::control::held(dir) {
        return Ok(replica);
    }
    if !create && !dir.join(STORE_MARKER).is_file() {
        let what = if dir.join("store").join(STORE_MARKER).is_file() {
            " (this looks like a node's data directory; its store is served by `weft serve`)"
        } else if dir.exists() {
            " (the directory exists but holds no weft store)"
        } else {
            ""
        };
        return Err(coded(
            Exit::Store,
            format!(
                "no store at {}{what}: write to it with `weft put` or `weft sync` first, or pass --store",
                dir.display()
            ),
        ));
    }
    if dir.exists() && !dir.is_dir() {
        return Err(coded(
            Exit::Store,
            format!("cannot open store {}: not a directory", dir.display()),
        ));
    }
    Replica::open(dir).with_context(|| format!("cannot open store {}", dir.display()))
}

/// Opens (or creates) the node's store in `dir` with the given block cache and memtable
/// sizes, in bytes (`None`: the store's defaults), and blob content in `content` when
/// given (else in the store).
pub(crate) fn open_node_replica(
    dir: &Path,
    cache_bytes: Option<u64>,
    memtable_bytes: Option<u64>,
    content: Option<std::sync::Arc<dyn sync_ledger::BlobContent>>,
) -> anyhow::Result<Replica> {
    if dir.exists() && !dir.is_dir() {
        return Err(coded(
            Exit::Store,
            format!("cannot open store {}: not a directory", dir.display()),
        ));
    }
    let mut store = sync_ledger::FjallStore::builder(dir);
    if let Some(bytes) = cache_bytes {
        store = store.cache_bytes(bytes);
    }
    if let Some(bytes) = memtable_bytes {
        store = store.memtable_bytes(bytes);
    }
    let open = || -> sync_engine::Result<Replica> {
        let mut builder = sync_ledger::Ledger::builder();
        if let Some(content) = content {
            builder = builder.blob_content(content);
        }
        let ledger = builder.open(store.open()?)?;
        Replica::builder().with_ledger(ledger)
    };
    open().with_context(|| format!("cannot open store {}", dir.display()))
}

/// Who a token lets this store write as: the principal of the token registered for
/// `tenant` by an earlier sync, else of `WEFT_TOKEN`. A node accepts a delegate's
/// writes only under its own principal, so that is the default author.
fn token_principal(store: &Replica, tenant: &TenantId) -> anyhow::Result<Option<PrincipalId>> {
    let registered = store
        .ledger()
        .identities()
        .get(tenant)
        .context("cannot read the registered identities")?
        .and_then(|r| r.token);
    // A command run for another process (see `control.rs`) reads that process's.
    let env_token = match crate::out::captured() {
        Some(c) => c.weft_token,
        None => std::env::var("WEFT_TOKEN").ok(),
    };
    let text = registered.or(env_token);
    Ok(text
        .and_then(|t| t.trim().parse::<sync_transport::Token>().ok())
        .map(|t| t.unverified_claims().clone())
        .filter(|claims| claims.tenant == *tenant)
        .map(|claims| claims.principal))
}

/// A replica with the tenant, protocol, path and author of a key-value command.
pub(crate) struct Kv {
    pub(crate) replica: Replica,
    pub(crate) dir: PathBuf,
    pub(crate) tenant: TenantId,
    pub(crate) protocol: ProtocolName,
    pub(crate) path: ProtocolPath,
    pub(crate) author: PrincipalId,
}

impl Kv {
    /// Opens the store of `replica` for the layout `kv`.
    pub(crate) fn open(replica: &ReplicaArgs, kv: &KvArgs, create: bool) -> anyhow::Result<Self> {
        let dir = crate::paths::replica_dir(replica.store.clone())?;
        let store = open_replica(&dir, create)?;
        let author = match &kv.author {
            Some(a) => a.clone(),
            None => match token_principal(&store, &replica.tenant)? {
                Some(principal) => principal,
                None => PrincipalId::new(replica.tenant.as_str())
                    .context("the tenant is not a valid principal; pass --author")?,
            },
        };
        Ok(Self {
            replica: store,
            dir,
            tenant: replica.tenant.clone(),
            protocol: kv.protocol.clone(),
            path: kv.path.clone(),
            author,
        })
    }

    /// Over an open replica (quickstart).
    pub(crate) fn over(replica: Replica, tenant: TenantId) -> anyhow::Result<Self> {
        Ok(Self {
            replica,
            dir: PathBuf::new(),
            author: PrincipalId::new(tenant.as_str())?,
            tenant,
            protocol: ProtocolName::new(PROTOCOL_DEFAULT)?,
            path: ProtocolPath::new(PATH_DEFAULT)?,
        })
    }

    fn record_id(&self, key: &str) -> RecordId {
        RecordId::from_natural_key(&self.tenant, &self.protocol, key.as_bytes())
    }

    /// Configures the protocol with the type path unless its current definition has it.
    fn ensure_configured(&self) -> anyhow::Result<()> {
        let current = self
            .replica
            .ledger()
            .protocol_definition(&self.tenant, &self.protocol)
            .context("cannot read the protocol's definition")?;
        let mut types = match &current {
            Some((_, c)) if c.definition.types.iter().any(|t| t.path == self.path) => {
                return Ok(());
            }
            Some((_, c)) => c.definition.types.clone(),
            None => Vec::new(),
        };
        let uses = current
            .map(|(_, c)| c.definition.uses.clone())
            .unwrap_or_default();
        types.push(TypeRule {
            path: self.path.clone(),
            data_bytes_max: None,
        });
        self.replica
            .configure(&self.tenant, &self.protocol, types, uses, &self.author)
            .with_context(|| format!("cannot configure protocol {}", self.protocol))?;
        Ok(())
    }

    /// Writes `value` under `key`.
    pub(crate) fn put(&self, key: &str, value: &[u8]) -> anyhow::Result<Receipt> {
        check_key(key)?;
        self.ensure_configured()?;
        self.replica
            .put(
                &self.tenant,
                &self.protocol,
                &self.path,
                key.as_bytes(),
                encode(key, value),
                &self.author,
            )
            .with_context(|| format!("cannot write {key:?} to {}", self.dir.display()))
    }

    /// Writes the bytes of `value` under `key`, streaming them into the blob store, so
    /// memory stays bounded whatever the size.
    pub(crate) fn put_stream(
        &self,
        key: &str,
        value: impl std::io::Read,
    ) -> anyhow::Result<Receipt> {
        check_key(key)?;
        self.ensure_configured()?;
        let header = encode(key, &[]);
        let data = self
            .replica
            .write_blob(std::io::Cursor::new(header).chain(value))
            .with_context(|| format!("cannot store the value of {key:?}"))?;
        let req = WriteRequest {
            protocol: self.protocol.clone(),
            path: self.path.clone(),
            key: RecordKey::Natural(key.as_bytes().to_vec()),
            parent: None,
            data: None,
            author: self.author.clone(),
        };
        self.replica
            .write_with_blob(&self.tenant, req, data)
            .with_context(|| format!("cannot write {key:?} to {}", self.dir.display()))
    }

    /// The live value of `key`.
    pub(crate) fn get(&self, key: &str) -> anyhow::Result<Option<Entry>> {
        let record = self
            .replica
            .get(&self.tenant, &self.record_id(key))
            .with_context(|| format!("cannot read {key:?}"))?;
        record.map(|r| Entry::of(&self.replica, r)).transpose()
    }

    /// Whether the value of `key` is here (see [`Residency`]).
    pub(crate) fn residency(&self, key: &str) -> anyhow::Result<Residency> {
        self.replica
            .residency(&self.tenant, &self.record_id(key))
            .with_context(|| format!("cannot read {key:?}"))
    }

    /// Every live entry at the path (with `deleted`, the tombstones too), ordered by
    /// key.
    pub(crate) fn list(&self, prefix: Option<&str>, deleted: bool) -> anyhow::Result<Vec<Entry>> {
        let (tenant, protocol, path) = (&self.tenant, &self.protocol, Some(&self.path));
        let records = if deleted {
            self.replica.list_with_tombstones(tenant, protocol, path)
        } else {
            self.replica.list(tenant, protocol, path)
        }
        .context("cannot list records")?;
        let mut entries = Vec::with_capacity(records.len());
        for r in records {
            let mut e = Entry::of(&self.replica, r)?;
            if e.record.deleted {
                e.key = deleted_key(&self.replica, &self.tenant, &e.record)?;
            }
            if prefix.is_none_or(|p| e.key.starts_with(p)) {
                entries.push(e);
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }

    /// Deletes `key`; `None` when it has no live value.
    pub(crate) fn delete(&self, key: &str) -> anyhow::Result<Option<Receipt>> {
        let id = self.record_id(key);
        if self.replica.get(&self.tenant, &id)?.is_none() {
            return Ok(None);
        }
        self.replica
            .delete(&self.tenant, id, &self.author)
            .map(Some)
            .with_context(|| format!("cannot delete {key:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_foreign_ones_are_refused() {
        let data = encode("greeting", b"hello");
        assert_eq!(decode(&data), Some(("greeting", &b"hello"[..])));
        assert_eq!(decode(&encode("", b"")), Some(("", &b""[..])));
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[2, 0, 1, b'a']), None);
        assert_eq!(decode(&[1, 0, 9, b'a']), None);
    }

    #[test]
    fn put_get_list_delete_on_a_replica() {
        let kv = Kv::over(Replica::in_memory().unwrap(), TenantId::new("t").unwrap()).unwrap();
        kv.put("b", b"2").unwrap();
        kv.put("a", b"1").unwrap();
        kv.put("a", b"one").unwrap();
        assert_eq!(
            kv.get("a").unwrap().unwrap().value.as_deref(),
            Some(&b"one"[..])
        );
        // A large value streams through the blob store and reads back the same.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        kv.put_stream("big", &big[..]).unwrap();
        let e = kv.get("big").unwrap().unwrap();
        assert_eq!(e.key, "big");
        assert_eq!(e.size(), Some(big.len() as u64));
        assert!(e.load_value(&kv.replica).unwrap().unwrap() == big);
        let keys: Vec<String> = kv
            .list(None, false)
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["a", "b", "big"]);
        assert!(kv.delete("a").unwrap().is_some());
        assert!(kv.delete("a").unwrap().is_none());
        assert!(kv.get("a").unwrap().is_none());
        assert_eq!(kv.list(Some("bi"), false).unwrap().len(), 1);
        // The tombstone of "a" lists under its key, with --deleted only.
        let all = kv.list(None, true).unwrap();
        let a = all.iter().find(|e| e.key == "a").unwrap();
        assert!(a.record.deleted);
        assert_eq!(all.len(), 3);
    }
}
