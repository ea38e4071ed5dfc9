//! From ledger values to typed columns and back.
//!
//! Since schema version 2, the tables of the partitions whose values the ledger
//! defines as fixed types hold them as columns (see the [`schema`](crate::schema)
//! module's table): a log entry's cid and pruned ids, a log's identity and head, a
//! message's position, an index entry's cid. A value is split with the ledger's own
//! types and encoder (`sync_types::codec` over the `sync_ledger::layout` types) and
//! joined back to the very same bytes: a value is split only when its columns give its
//! bytes back exactly, and any other value (an entry in an older encoding, a value some
//! other writer put) is kept whole in `v`, with the typed columns null. Reading never
//! decodes a message.

use postgres::Row;
use postgres::types::ToSql;
use sync_ledger::Error;
use sync_ledger::layout::{self, LogMeta, RecordRow, StoredEntry};
use sync_ledger::store::Partition;
use sync_types::codec;
use sync_types::{Cid, ProtocolName, StreamId};

/// How a partition's values map onto columns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ValueShape {
    /// Any bytes, in `v`.
    Blob,
    /// A [`StoredEntry`]: `cid`, `pruned` and `body` (the message and its inline data,
    /// as encoded).
    Entry,
    /// A [`LogMeta`]: `stream_id`, `epoch`, `head`, `compacted_through`.
    LogMeta,
    /// A `u64` log position: `pos`.
    Pos,
    /// A [`Cid`]: `cid`.
    Cid,
    /// A [`RecordRow`]: `head` (the retained versions, as encoded), `protocol`, `place`
    /// (the path and context, as encoded).
    Record,
}

/// What a column holds, and how it is sent (as one array per column).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum ColKind {
    /// `bytea`.
    Bytes,
    /// `int8` (a `u64` below 2^63).
    Int,
    /// `bytea[]` of 32-byte cids, sent as their concatenation.
    CidList,
    /// `text`.
    Text,
}

/// A typed column: its name, its kind.
pub(crate) type Col = (&'static str, ColKind);

/// The shape of a partition's values when the tables are typed (schema 2 and later).
pub(crate) fn value_shape(p: Partition) -> ValueShape {
    if p == layout::LOG {
        ValueShape::Entry
    } else if p == layout::LOG_META {
        ValueShape::LogMeta
    } else if p == layout::MSG || p == layout::CONFIGS {
        ValueShape::Pos
    } else if p == layout::RECORDS {
        ValueShape::Record
    } else if [
        layout::LOG_BY_PROTOCOL,
        layout::BY_PATH,
        layout::BY_CONTEXT,
        layout::BY_BLOB,
    ]
    .contains(&p)
    {
        ValueShape::Cid
    } else {
        ValueShape::Blob
    }
}

/// The typed columns of a shape, in the order [`split`] fills them.
pub(crate) fn columns(shape: ValueShape) -> &'static [Col] {
    use ColKind::{Bytes, CidList, Int, Text};
    match shape {
        ValueShape::Blob => &[],
        ValueShape::Entry => &[("cid", Bytes), ("pruned", CidList), ("body", Bytes)],
        ValueShape::LogMeta => &[
            ("stream_id", Bytes),
            ("epoch", Int),
            ("head", Int),
            ("compacted_through", Int),
        ],
        ValueShape::Pos => &[("pos", Int)],
        ValueShape::Cid => &[("cid", Bytes)],
        ValueShape::Record => &[("head", Bytes), ("protocol", Text), ("place", Bytes)],
    }
}

/// The SQL type of a column.
pub(crate) fn sql_type(kind: ColKind) -> &'static str {
    match kind {
        ColKind::Bytes => "bytea",
        ColKind::Int => "int8",
        ColKind::CidList => "bytea[]",
        ColKind::Text => "text",
    }
}

/// One typed cell.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Cell {
    /// A `bytea` (or a `bytea[]` of cids, concatenated).
    Bytes(Vec<u8>),
    /// An `int8`.
    Int(i64),
    /// A `text`.
    Text(String),
}

fn u63(n: u64) -> Option<i64> {
    i64::try_from(n).ok()
}

/// The typed cells of `value`, or `None` when it is to be kept whole in `v` (it does
/// not decode as the partition's type, or its columns would not give its bytes back).
pub(crate) fn split(shape: ValueShape, value: &[u8]) -> Option<Vec<Cell>> {
    let max = layout::VALUE_BYTES_MAX;
    match shape {
        ValueShape::Blob => None,
        ValueShape::Entry => {
            let entry: StoredEntry = codec::decode(value, max).ok()?;
            // The envelope is the version byte, then the fields in order: the cid, the
            // message and its data (the body, kept as encoded), the pruned ids.
            let head = codec::encode(&entry.cid);
            // Without the envelope's version byte.
            let tail = &codec::encode(&entry.pruned)[1..];
            if value.len() < head.len() + tail.len()
                || !value.starts_with(&head)
                || !value.ends_with(tail)
            {
                return None;
            }
            let body = value[head.len()..value.len() - tail.len()].to_vec();
            let pruned: Vec<u8> = entry.pruned.iter().flat_map(|c| *c.as_bytes()).collect();
            Some(vec![
                Cell::Bytes(entry.cid.as_bytes().to_vec()),
                Cell::Bytes(pruned),
                Cell::Bytes(body),
            ])
        }
        ValueShape::LogMeta => {
            let meta: LogMeta = codec::decode(value, max).ok()?;
            (codec::encode(&meta) == value).then_some(())?;
            Some(vec![
                Cell::Bytes(meta.stream_id.as_bytes().to_vec()),
                Cell::Int(u63(meta.epoch)?),
                Cell::Int(u63(meta.head)?),
                Cell::Int(u63(meta.compacted_through)?),
            ])
        }
        ValueShape::Pos => {
            let pos: u64 = codec::decode(value, max).ok()?;
            (codec::encode(&pos) == value).then_some(())?;
            Some(vec![Cell::Int(u63(pos)?)])
        }
        // An index entry of ledger layout 5 and later holds no cid: an empty `cid`.
        ValueShape::Cid if value == layout::INDEX_VALUE => Some(vec![Cell::Bytes(Vec::new())]),
        ValueShape::Cid => {
            let cid: Cid = codec::decode(value, max).ok()?;
            (codec::encode(&cid) == value).then_some(())?;
            Some(vec![Cell::Bytes(cid.as_bytes().to_vec())])
        }
        ValueShape::Record => {
            let row: RecordRow = codec::decode(value, max).ok()?;
            // The version byte, then the head, the protocol, the path and context.
            let head = codec::encode(&row.head);
            let protocol = &codec::encode(&row.protocol)[1..];
            if value.len() < head.len() + protocol.len()
                || !value.starts_with(&head)
                || !value[head.len()..].starts_with(protocol)
            {
                return None;
            }
            Some(vec![
                Cell::Bytes(head[1..].to_vec()),
                Cell::Text(row.protocol.as_str().to_owned()),
                Cell::Bytes(value[head.len() + protocol.len()..].to_vec()),
            ])
        }
    }
}

/// A typed cell as read back.
pub(crate) enum Read {
    /// A `bytea`.
    Bytes(Vec<u8>),
    /// A `bytea[]`.
    List(Vec<Vec<u8>>),
    /// An `int8`.
    Int(i64),
    /// A `text`.
    Text(String),
}

fn cid(p: Partition, bytes: &[u8]) -> Result<Cid, Error> {
    <[u8; 32]>::try_from(bytes)
        .map(Cid::from_bytes)
        .map_err(|_| corrupt(p))
}

fn corrupt(p: Partition) -> Error {
    Error::Inconsistent(format!(
        "a row of {} has neither a whole value nor well-formed typed columns",
        p.name()
    ))
}

fn uint(p: Partition, n: i64) -> Result<u64, Error> {
    u64::try_from(n).map_err(|_| corrupt(p))
}

fn next_bytes(p: Partition, cells: &mut impl Iterator<Item = Read>) -> Result<Vec<u8>, Error> {
    match cells.next() {
        Some(Read::Bytes(b)) => Ok(b),
        _ => Err(corrupt(p)),
    }
}

fn next_uint(p: Partition, cells: &mut impl Iterator<Item = Read>) -> Result<u64, Error> {
    match cells.next() {
        Some(Read::Int(n)) => uint(p, n),
        _ => Err(corrupt(p)),
    }
}

/// The value bytes of typed cells read back (in [`columns`] order).
pub(crate) fn join(p: Partition, shape: ValueShape, cells: Vec<Read>) -> Result<Vec<u8>, Error> {
    let cells = &mut cells.into_iter();
    match shape {
        ValueShape::Blob => Err(corrupt(p)),
        ValueShape::Entry => {
            let c = cid(p, &next_bytes(p, cells)?)?;
            let pruned = match cells.next() {
                Some(Read::List(list)) => list
                    .iter()
                    .map(|b| cid(p, b))
                    .collect::<Result<Vec<Cid>, Error>>()?,
                _ => return Err(corrupt(p)),
            };
            let body = next_bytes(p, cells)?;
            let mut out = codec::encode(&c);
            out.extend_from_slice(&body);
            // Without the envelope's version byte.
            out.extend_from_slice(&codec::encode(&pruned)[1..]);
            Ok(out)
        }
        ValueShape::LogMeta => {
            let stream =
                <[u8; 16]>::try_from(next_bytes(p, cells)?.as_slice()).map_err(|_| corrupt(p))?;
            let meta = LogMeta {
                stream_id: StreamId::from_bytes(stream),
                epoch: next_uint(p, cells)?,
                head: next_uint(p, cells)?,
                compacted_through: next_uint(p, cells)?,
            };
            Ok(codec::encode(&meta))
        }
        ValueShape::Pos => Ok(codec::encode(&next_uint(p, cells)?)),
        ValueShape::Cid => match next_bytes(p, cells)? {
            empty if empty.is_empty() => Ok(layout::INDEX_VALUE.to_vec()),
            bytes => Ok(codec::encode(&cid(p, &bytes)?)),
        },
        ValueShape::Record => {
            let head = next_bytes(p, cells)?;
            let protocol = match cells.next() {
                Some(Read::Text(s)) => ProtocolName::new(s).map_err(|_| corrupt(p))?,
                _ => return Err(corrupt(p)),
            };
            let place = next_bytes(p, cells)?;
            let protocol = codec::encode(&protocol);
            let mut out = Vec::with_capacity(protocol.len() + head.len() + place.len());
            out.push(protocol[0]);
            out.extend_from_slice(&head);
            out.extend_from_slice(&protocol[1..]);
            out.extend_from_slice(&place);
            Ok(out)
        }
    }
}

/// One array per column, for a batch of values: `v`, then the typed columns.
pub(crate) struct ValueArrays {
    v: Vec<Option<Vec<u8>>>,
    cols: Vec<ColArray>,
}

enum ColArray {
    Bytes(Vec<Option<Vec<u8>>>),
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
}

impl ValueArrays {
    /// The arrays of `values`, each split if it can be.
    pub(crate) fn new(shape: ValueShape, values: &[&[u8]]) -> Self {
        let cols = columns(shape);
        let mut out = ValueArrays {
            v: Vec::with_capacity(values.len()),
            cols: cols
                .iter()
                .map(|(_, kind)| match kind {
                    ColKind::Int => ColArray::Int(Vec::with_capacity(values.len())),
                    ColKind::Text => ColArray::Text(Vec::with_capacity(values.len())),
                    ColKind::Bytes | ColKind::CidList => {
                        ColArray::Bytes(Vec::with_capacity(values.len()))
                    }
                })
                .collect(),
        };
        for value in values {
            let cells = split(shape, value);
            out.v.push(cells.is_none().then(|| value.to_vec()));
            let mut cells = cells.map(Vec::into_iter);
            for col in &mut out.cols {
                let cell = cells.as_mut().and_then(Iterator::next);
                match (col, cell) {
                    (ColArray::Bytes(a), Some(Cell::Bytes(b))) => a.push(Some(b)),
                    (ColArray::Int(a), Some(Cell::Int(n))) => a.push(Some(n)),
                    (ColArray::Text(a), Some(Cell::Text(t))) => a.push(Some(t)),
                    (ColArray::Bytes(a), _) => a.push(None),
                    (ColArray::Int(a), _) => a.push(None),
                    (ColArray::Text(a), _) => a.push(None),
                }
            }
        }
        out
    }

    /// The parameters, in the order of [`unnest_sql`]'s value columns.
    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut out: Vec<&(dyn ToSql + Sync)> = vec![&self.v];
        for col in &self.cols {
            out.push(match col {
                ColArray::Bytes(a) => a,
                ColArray::Int(a) => a,
                ColArray::Text(a) => a,
            });
        }
        out
    }
}

/// `v` and the typed columns, comma-separated, each prefixed with `alias.` when given.
pub(crate) fn select_list(shape: ValueShape, alias: &str) -> String {
    let dot = if alias.is_empty() { "" } else { "." };
    std::iter::once("v")
        .chain(columns(shape).iter().map(|(name, _)| *name))
        .map(|c| format!("{alias}{dot}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An upsert of rows sent as arrays: the key columns (name and SQL type), then `v` and
/// the typed columns, as `$1`, `$2`, ….
pub(crate) fn upsert_sql(table: &str, keys: &[(&str, &str)], shape: ValueShape) -> String {
    let cols = columns(shape);
    let mut names: Vec<&str> = keys.iter().map(|(n, _)| *n).collect();
    let mut types: Vec<&str> = keys.iter().map(|(_, t)| *t).collect();
    names.push("v");
    types.push("bytea");
    for (name, kind) in cols {
        names.push(name);
        // A list of cids travels as their concatenation.
        types.push(match kind {
            ColKind::CidList => "bytea",
            other => sql_type(*other),
        });
    }
    let exprs: Vec<String> = names
        .iter()
        .map(|n| match cols.iter().find(|(c, _)| c == n) {
            Some((_, ColKind::CidList)) => format!(
                "CASE WHEN q.{n} IS NULL THEN NULL WHEN q.{n} = '' THEN '{{}}'::bytea[] \
                 ELSE ARRAY(SELECT substring(q.{n} FROM i * 32 + 1 FOR 32) \
                 FROM generate_series(0, length(q.{n}) / 32 - 1) AS i ORDER BY i) END"
            ),
            _ => format!("q.{n}"),
        })
        .collect();
    let params: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}[]", i + 1))
        .collect();
    let updates: Vec<String> = names[keys.len()..]
        .iter()
        .map(|n| format!("{n} = EXCLUDED.{n}"))
        .collect();
    let key_names = names[..keys.len()].join(", ");
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM unnest({}) AS q({}) \
         ON CONFLICT ({key_names}) DO UPDATE SET {}",
        names.join(", "),
        exprs.join(", "),
        params.join(", "),
        names.join(", "),
        updates.join(", ")
    )
}

/// The value of a row whose `v` and typed columns start at column `at` (as
/// [`select_list`] names them).
pub(crate) fn value_of(
    p: Partition,
    shape: ValueShape,
    row: &Row,
    at: usize,
) -> Result<Vec<u8>, Error> {
    let get_err = |e: postgres::Error| Error::backend(e);
    if let Some(v) = row.try_get::<_, Option<Vec<u8>>>(at).map_err(get_err)? {
        return Ok(v);
    }
    let mut cells = Vec::new();
    for (i, (_, kind)) in columns(shape).iter().enumerate() {
        let at = at + 1 + i;
        let cell = match kind {
            ColKind::Bytes => row
                .try_get::<_, Option<Vec<u8>>>(at)
                .map_err(get_err)?
                .map(Read::Bytes),
            ColKind::Int => row
                .try_get::<_, Option<i64>>(at)
                .map_err(get_err)?
                .map(Read::Int),
            ColKind::CidList => row
                .try_get::<_, Option<Vec<Vec<u8>>>>(at)
                .map_err(get_err)?
                .map(Read::List),
            ColKind::Text => row
                .try_get::<_, Option<String>>(at)
                .map_err(get_err)?
                .map(Read::Text),
        };
        cells.push(cell.ok_or_else(|| corrupt(p))?);
    }
    join(p, shape, cells)
}

/// Migration 2's statements for one table: the typed columns (null while `v` holds the
/// whole value), and a check that a row has one or the other.
pub(crate) fn alter_sql(table: &str, shape: ValueShape) -> String {
    let cols = columns(shape);
    let mut parts: Vec<String> = cols
        .iter()
        .map(|(n, k)| format!("ADD COLUMN {n} {}", sql_type(*k)))
        .collect();
    parts.push("ALTER COLUMN v DROP NOT NULL".into());
    let all_set: Vec<String> = cols
        .iter()
        .map(|(n, _)| format!("{n} IS NOT NULL"))
        .collect();
    parts.push(format!(
        "ADD CONSTRAINT weft_value CHECK ((v IS NULL) = ({}))",
        all_set.join(" AND ")
    ));
    format!("ALTER TABLE {table} {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cells as the database gives them back.
    fn read_back(shape: ValueShape, cells: Vec<Cell>) -> Vec<Read> {
        cells
            .into_iter()
            .zip(columns(shape))
            .map(|(cell, (_, kind))| match (cell, kind) {
                (Cell::Bytes(b), ColKind::CidList) => {
                    Read::List(b.chunks(32).map(<[u8]>::to_vec).collect())
                }
                (Cell::Bytes(b), _) => Read::Bytes(b),
                (Cell::Int(n), _) => Read::Int(n),
                (Cell::Text(t), _) => Read::Text(t),
            })
            .collect()
    }

    fn round_trip(p: Partition, value: &[u8]) -> Option<Vec<u8>> {
        let shape = value_shape(p);
        let cells = split(shape, value)?;
        assert_eq!(cells.len(), columns(shape).len());
        Some(join(p, shape, read_back(shape, cells)).unwrap())
    }

    #[test]
    fn typed_values_join_back_to_their_bytes() {
        let meta = LogMeta {
            stream_id: StreamId::from_bytes([7; 16]),
            epoch: 3,
            head: 1_000_000,
            compacted_through: 12,
        };
        let cid = Cid::from_bytes([9; 32]);
        for (p, value) in [
            (layout::LOG_META, codec::encode(&meta)),
            (layout::MSG, codec::encode(&0u64)),
            (layout::CONFIGS, codec::encode(&(i64::MAX as u64))),
            (layout::BY_PATH, codec::encode(&cid)),
            (layout::BY_PATH, layout::INDEX_VALUE.to_vec()),
        ] {
            assert_eq!(round_trip(p, &value), Some(value), "{}", p.name());
        }
    }

    #[test]
    fn other_values_stay_whole() {
        let huge = LogMeta {
            stream_id: StreamId::from_bytes([7; 16]),
            epoch: 0,
            head: u64::MAX,
            compacted_through: 0,
        };
        let mut trailing = codec::encode(&5u64);
        trailing.push(0);
        for (p, value) in [
            // Not representable in an int8.
            (layout::LOG_META, codec::encode(&huge)),
            (layout::MSG, codec::encode(&u64::MAX)),
            // Not the partition's type, or not only.
            (layout::MSG, trailing),
            (layout::LOG, vec![1, 2, 3]),
            (layout::BY_CONTEXT, vec![]),
            (layout::RECORDS, codec::encode(&1u64)),
            (layout::NAMES, codec::encode(&1u64)),
        ] {
            assert_eq!(round_trip(p, &value), None, "{}", p.name());
        }
    }
}
