//! The tables: one per ledger partition, their key columns shaped by what its keys
//! hold and their value columns by what its values hold, and the versioned migrations
//! that create them.
//!
//! Key columns:
//!
//! | shape | partitions | key columns | primary key |
//! |---|---|---|---|
//! | log | `log` | `tn int8`, `pos int8` | `(tn, pos)` |
//! | tenant | `log_meta`, `log_by_protocol`, `msg`, `records`, `by_path`, `by_context`, `configs`, `by_blob` | `tn int8`, `k bytea` (the whole key) | `(tn, k)` |
//! | global | everything else (`meta`, `names`, blobs, links, dead letters, identities) | `k bytea` | `k` |
//!
//! Value columns (schema 2): every table has `v bytea`, and the partitions whose values
//! the ledger defines as fixed types also have typed columns, which hold the value
//! instead of `v` (a check constraint: either `v`, or every typed column):
//!
//! | partitions | value (`sync_ledger::layout`) | typed columns |
//! |---|---|---|
//! | `log` | `StoredEntry` | `cid bytea` (32 bytes), `pruned bytea[]` (the cids its apply pruned), `body bytea` (the message and its inline data, as encoded) |
//! | `log_meta` | `LogMeta` | `stream_id bytea` (16 bytes), `epoch int8`, `head int8`, `compacted_through int8` |
//! | `msg`, `configs` | the message's position | `pos int8` |
//! | `log_by_protocol`, `by_path`, `by_context`, `by_blob` | the message's cid, or none (ledger layout 5 keeps it in the log entry only) | `cid bytea` (32 bytes, or empty) |
//! | `records` | `RecordRow` | `head bytea` (the initial and winning versions, as encoded), `protocol text`, `place bytea` (the path and context, as encoded) |
//! | the others (`names`, `meta`, blobs, links, dead letters, identities) | various | none: `v` |
//!
//! A value is split with the ledger's own types and encoder and joined back to the same
//! bytes; one that does not give its bytes back from columns (a log entry in layout 3's
//! encoding, a position of 2^63 or more, bytes some other writer put) stays whole in
//! `v` (module `values`). A record row's head (its initial version, optional, and its
//! winner) and its optional path and context stay encoded: splitting them needs
//! nullable columns and nested versions, and the ledger reads and rewrites the row
//! whole in every apply that touches the record.
//!
//! `tn` is the tenant's interned number, which every key of a tenant's partition starts
//! with (an LEB128 varint, see `sync_ledger::layout`); `pos` is the log position. A
//! tenant's rows are therefore one contiguous range of each primary key, every read and
//! write of an apply names its tenant, and operators can query a tenant's log by
//! position, and its head, cids and pruned ids by column. The log and tenant tables are
//! also partitioned by tenant: `PARTITION BY HASH (tn)` into [`TENANT_PARTITIONS`]
//! tables each (`weft_log_p0` …), so a partition's indexes and vacuum cover a share of
//! the tenants, and a statement that names one tenant touches one partition (run-time
//! pruning also applies to the `unnest` joins, probe by probe). The `Tenant` shape keeps
//! the whole key in `k` so that a scan across tenants is still in key-byte order (bytea
//! compares like `memcmp`).
//!
//! Migrations are numbered; opening a store runs the missing ones in one transaction under
//! an advisory lock, so several processes opening the same database at once apply each
//! exactly once. Migration 1 creates the tables with values whole in `v`; migration 2
//! adds the typed columns and moves every existing value into them, in key order, a
//! thousand rows per statement, in the same transaction (a database written by schema
//! 1 opens with this build, `tests/migration.rs`). A build refuses a database migrated
//! past its version when it opens it, but a process of an older build that is already
//! running does not look again: stop every node of the older build before the first
//! node of a newer one opens the database (a schema-1 node would read a null `v`).

use sync_ledger::layout;
use sync_ledger::store::Partition;

use crate::conn::Conn;
use crate::values::{ValueShape, alter_sql, value_shape};

/// How a partition's keys map onto columns.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Shape {
    /// Key: tenant varint and a big-endian `u64` position.
    Log,
    /// Key: tenant varint, then anything.
    Tenant,
    /// Any key.
    Global,
}

/// The shape of a partition's table.
pub(crate) fn shape(p: Partition) -> Shape {
    const TENANT: [Partition; 8] = [
        layout::LOG_META,
        layout::LOG_BY_PROTOCOL,
        layout::MSG,
        layout::RECORDS,
        layout::BY_PATH,
        layout::BY_CONTEXT,
        layout::CONFIGS,
        layout::BY_BLOB,
    ];
    if p == layout::LOG {
        Shape::Log
    } else if TENANT.contains(&p) {
        Shape::Tenant
    } else {
        Shape::Global
    }
}

/// The quoted, schema-qualified table name of a partition.
pub(crate) fn table(schema: &str, p: Partition) -> String {
    format!("\"{schema}\".\"weft_{}\"", p.name())
}

/// `CREATE TABLE` for a partition.
pub(crate) fn create_table(schema: &str, p: Partition) -> String {
    let t = table(schema, p);
    let columns = match shape(p) {
        Shape::Log => {
            "tn int8 NOT NULL, pos int8 NOT NULL, v bytea NOT NULL, PRIMARY KEY (tn, pos)"
        }
        Shape::Tenant => {
            "tn int8 NOT NULL, k bytea NOT NULL, v bytea NOT NULL, PRIMARY KEY (tn, k)"
        }
        Shape::Global => "k bytea PRIMARY KEY, v bytea NOT NULL",
    };
    // Large values (blob chunks) are stored out of line and not compressed: they are
    // payload, often already compressed, and read back in ranges.
    let storage = if p.large_values() {
        format!("; ALTER TABLE {t} ALTER COLUMN v SET STORAGE EXTERNAL")
    } else {
        String::new()
    };
    if shape(p) == Shape::Global {
        return format!("CREATE TABLE IF NOT EXISTS {t} ({columns}){storage}");
    }
    // A tenant's rows live in one of TENANT_PARTITIONS hash partitions of the table:
    // each partition's indexes and vacuum cover a share of the tenants, and every
    // statement of an apply names its tenant, so it touches one partition.
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {t} ({columns}) PARTITION BY HASH (tn)");
    let base = t.trim_end_matches('"');
    for n in 0..TENANT_PARTITIONS {
        sql.push_str(&format!(
            "; CREATE TABLE IF NOT EXISTS {base}_p{n}\" PARTITION OF {t} \
             FOR VALUES WITH (MODULUS {TENANT_PARTITIONS}, REMAINDER {n})"
        ));
    }
    sql
}

/// Hash partitions of each tenant table.
pub const TENANT_PARTITIONS: u32 = 8;

/// The schema version this build creates and reads.
pub const SCHEMA_VERSION: i32 = 2;

/// Runs migration `n` (1-based) in the migrating transaction.
fn migration(conn: &mut Conn, schema: &str, n: i32) -> sync_ledger::Result<()> {
    match n {
        // The ledger's tables, values whole in `v`.
        1 => conn.simple(
            &layout::PARTITIONS
                .iter()
                .map(|p| create_table(schema, *p))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        // Typed value columns, and every existing value moved into them.
        2 => {
            let typed: Vec<_> = layout::PARTITIONS
                .iter()
                .filter(|p| value_shape(**p) != ValueShape::Blob)
                .collect();
            conn.simple(
                &typed
                    .iter()
                    .map(|p| alter_sql(&table(schema, **p), value_shape(**p)))
                    .collect::<Vec<_>>()
                    .join("; "),
            )?;
            for p in typed {
                crate::rows::convert(conn, schema, *p)?;
            }
            Ok(())
        }
        _ => unreachable!("migration {n} does not exist"),
    }
}

/// Advisory lock keys are two `int4`s: a key derived from the schema name, and one of
/// these (a tenant number is at least 0).
pub(crate) const LOCK_MIGRATE: i32 = -2;
/// See [`LOCK_MIGRATE`].
pub(crate) const LOCK_TENANT_NAMES: i32 = -1;
/// See [`LOCK_MIGRATE`].
pub(crate) const LOCK_REGISTRY: i32 = -3;

/// The first advisory-lock key of a schema (FNV-1a of its name), so stores in two
/// schemas of one database do not wait on each other's tenants.
pub(crate) fn lock_space(schema: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in schema.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// Creates the schema and runs every missing migration up to `target`; returns the
/// version found before. Refuses a database migrated by a newer build.
pub(crate) fn migrate(conn: &mut Conn, schema: &str, target: i32) -> sync_ledger::Result<i32> {
    let space = lock_space(schema);
    conn.simple(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock({space}, {LOCK_MIGRATE}); \
         CREATE SCHEMA IF NOT EXISTS \"{schema}\"; \
         CREATE TABLE IF NOT EXISTS \"{schema}\".weft_migrations \
         (version int4 PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    ))?;
    let result = (|| {
        let rows = conn.query(
            &format!("SELECT coalesce(max(version), 0) FROM \"{schema}\".weft_migrations"),
            &[],
        )?;
        let found: i32 = rows[0].get(0);
        if found > SCHEMA_VERSION {
            return Err(sync_ledger::Error::UnsupportedLayout {
                found: found.unsigned_abs(),
                supported: SCHEMA_VERSION.unsigned_abs(),
            });
        }
        for n in found + 1..=target {
            migration(conn, schema, n)?;
            conn.simple(&format!(
                "INSERT INTO \"{schema}\".weft_migrations (version) VALUES ({n})"
            ))?;
        }
        Ok(found)
    })();
    match result {
        Ok(found) => {
            conn.simple("COMMIT")?;
            Ok(found)
        }
        Err(e) => {
            let _ = conn.simple("ROLLBACK");
            Err(e)
        }
    }
}

/// Creates the table of a partition the ledger does not define (the backend suite's),
/// under the migration lock.
pub(crate) fn ensure_table(conn: &mut Conn, schema: &str, p: Partition) -> sync_ledger::Result<()> {
    let space = lock_space(schema);
    conn.simple(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock({space}, {LOCK_MIGRATE}); {}; COMMIT",
        create_table(schema, p)
    ))
}
