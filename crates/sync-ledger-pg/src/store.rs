//! [`PgStore`]: the [`Store`] and [`WriteTxn`] implementations over a pool.

use std::collections::HashSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use postgres::Row;
use postgres::types::ToSql;
use r2d2::{Pool, PooledConnection};
use sync_ledger::store::{
    Batch, BatchOp, Durability, KeyRange, KeyValue, Order, Partition, ScanIter, Store, WriteScope,
    WriteTxn, check_key,
};
use sync_ledger::{Error, Result};

use crate::conn::{Conn, Manager, map_pool_err};
use crate::keys::{log_key, position_bounds, single_tenant, within_tenant};
use crate::rows;
use crate::schema::{self, LOCK_REGISTRY, LOCK_TENANT_NAMES, Shape, shape, table};
use crate::values::{select_list, value_of};

/// Connections in the pool unless told otherwise.
pub const POOL_CONNECTIONS_DEFAULT: u32 = 8;
/// How long to wait for a free connection before [`Error::Retry`], unless told
/// otherwise.
pub const POOL_WAIT_DEFAULT: Duration = Duration::from_secs(30);
/// Rows fetched per round trip while scanning.
const SCAN_CHUNK_ROWS: i64 = 512;

/// Options for opening a [`PgStore`].
#[must_use]
#[derive(Clone, Debug)]
pub struct PgStoreBuilder {
    url: String,
    schema: String,
    connections: u32,
    wait: Duration,
    version: i32,
}

impl PgStoreBuilder {
    /// The PostgreSQL schema holding the ledger's tables (created when missing), so
    /// several ledgers can share a database. Default: `weft`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Most connections the pool opens; each writer thread holds one for the length of
    /// an apply. Default: [`POOL_CONNECTIONS_DEFAULT`].
    pub fn connections(mut self, connections: u32) -> Self {
        self.connections = connections.max(1);
        self
    }

    /// How long an operation waits for a free connection before it fails with
    /// [`Error::Retry`]. Default: [`POOL_WAIT_DEFAULT`].
    pub fn pool_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Migrates a new or older database only up to schema `version` (at least 1, at
    /// most [`SCHEMA_VERSION`](crate::schema::SCHEMA_VERSION)), and reads and writes it
    /// as that version does, unless the database is already newer. For testing
    /// migrations: a store of version 1 writes what the first release wrote.
    #[doc(hidden)]
    pub fn schema_version(mut self, version: i32) -> Self {
        self.version = version.clamp(1, schema::SCHEMA_VERSION);
        self
    }

    /// Connects, creates the schema and runs the missing migrations (several processes
    /// may open the same database at once). Refuses a server with `fsync` off, on which
    /// no commit is durable.
    pub fn open(self) -> Result<PgStore> {
        let valid = !self.schema.is_empty()
            && self.schema.len() <= 48
            && self
                .schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(Error::backend(format!(
                "schema name {:?} is not 1 to 48 characters of [a-z0-9_]",
                self.schema
            )));
        }
        let config: postgres::Config = self.url.parse().map_err(Error::backend)?;
        let sent = Arc::new(AtomicU64::new(0));
        let manager = Manager {
            config,
            sent: Arc::clone(&sent),
            lost: Arc::default(),
        };
        let pool = Pool::builder()
            .max_size(self.connections)
            .min_idle(Some(1))
            .test_on_check_out(false)
            .connection_timeout(self.wait)
            .build(manager)
            .map_err(map_pool_err)?;
        let mut conn = pool.get().map_err(map_pool_err)?;
        let fsync = conn.query("SELECT current_setting('fsync')", &[])?;
        if fsync[0].get::<_, String>(0) != "on" {
            return Err(Error::backend(
                "the PostgreSQL server runs with fsync off: no commit would be durable",
            ));
        }
        let found = schema::migrate(&mut conn, &self.schema, self.version)?;
        drop(conn);
        let tables = schema_partitions();
        Ok(PgStore {
            inner: Arc::new(Inner {
                space: schema::lock_space(&self.schema),
                control: schema::lock_space(&format!("{}/control", self.schema)),
                uploads: schema::lock_space(&format!("{}/uploads", self.schema)),
                channel: crate::bus::channel(&self.schema),
                announced: AtomicU64::new(0),
                schema: self.schema,
                pool,
                sent,
                tables: RwLock::new(tables),
                typed: found.max(self.version) >= 2,
            }),
        })
    }
}

fn schema_partitions() -> HashSet<&'static str> {
    sync_ledger::layout::PARTITIONS
        .iter()
        .map(|p| p.name())
        .collect()
}

/// A [`Store`] on a PostgreSQL database that many node processes share. See the crate
/// documentation.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool<Manager>,
    schema: String,
    /// First advisory-lock key for tenants.
    space: i32,
    /// First advisory-lock key for allocations.
    control: i32,
    /// First advisory-lock key for uploads (`WriteScope::Upload`).
    uploads: i32,
    sent: Arc<AtomicU64>,
    /// The `NOTIFY` channel of the schema's [`PgChangeBus`](crate::PgChangeBus).
    channel: String,
    /// Commits announced on it.
    announced: AtomicU64,
    /// Partitions whose tables exist.
    tables: RwLock<HashSet<&'static str>>,
    /// Whether the tables have typed value columns (schema 2 and later).
    typed: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

type Pooled = PooledConnection<Manager>;

impl PgStore {
    /// Options for opening a store on the database at `url` (a libpq-style URL or
    /// key-value string, e.g. `postgres://weft@127.0.0.1:5432/weft`).
    pub fn builder(url: impl Into<String>) -> PgStoreBuilder {
        PgStoreBuilder {
            url: url.into(),
            schema: "weft".into(),
            connections: POOL_CONNECTIONS_DEFAULT,
            wait: POOL_WAIT_DEFAULT,
            version: schema::SCHEMA_VERSION,
        }
    }

    /// Statements sent to the server so far by this store (each one round trip;
    /// preparing a statement, once per connection, is not counted).
    pub fn statements_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }

    /// Commits announced so far to the schema's [`PgChangeBus`](crate::PgChangeBus)
    /// listeners (one `pg_notify` in each commit that appended to a log).
    pub fn announced(&self) -> u64 {
        self.inner.announced.load(Ordering::Relaxed)
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// A connection of the pool that still answers (see [`Conn::still_good`]). After a
    /// database restart every idle one may be dead: each is found so and dropped, at
    /// most the pool's size of them, before a fresh one is opened.
    fn conn(&self) -> Result<Pooled> {
        for _ in 0..self.inner.pool.max_size() {
            let mut conn = self.inner.pool.get().map_err(map_pool_err)?;
            if conn.still_good() {
                return Ok(conn);
            }
        }
        self.inner.pool.get().map_err(map_pool_err)
    }

    /// Whether the table of a partition is known to exist.
    fn known(&self, p: Partition) -> bool {
        self.inner
            .tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(p.name())
    }

    /// Creates the table of a partition the ledger does not define, once, on a
    /// connection of its own.
    fn ensure_table(&self, p: Partition) -> Result<()> {
        if self.known(p) {
            return Ok(());
        }
        self.ensure(&mut *self.conn()?, p)
    }

    /// Creates the table of a partition the ledger does not define, once.
    fn ensure(&self, conn: &mut Conn, p: Partition) -> Result<()> {
        if !self.known(p) {
            schema::ensure_table(conn, &self.inner.schema, p)?;
            self.inner
                .tables
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p.name());
        }
        Ok(())
    }

    fn table(&self, p: Partition) -> String {
        table(&self.inner.schema, p)
    }

    /// One batched read in `conn`.
    fn get_many_in(
        &self,
        conn: &mut Conn,
        p: Partition,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        rows::get_many(conn, &self.inner.schema, self.inner.typed, p, keys)
    }

    /// Writes `ops` (each key once) in `conn`: per partition, one upsert and one delete,
    /// whatever the number of keys.
    fn write_in(&self, conn: &mut Conn, ops: Vec<BatchOp>) -> Result<()> {
        let mut rest = ops.as_slice();
        while let Some(first) = rest.first() {
            let p = first.partition;
            let n = rest.iter().take_while(|o| o.partition == p).count();
            let (group, tail) = rest.split_at(n);
            rest = tail;
            self.write_partition(conn, p, group)?;
        }
        Ok(())
    }

    fn write_partition(&self, conn: &mut Conn, p: Partition, ops: &[BatchOp]) -> Result<()> {
        rows::write(conn, &self.inner.schema, self.inner.typed, p, ops)
    }

    /// Checks a batch's keys and creates the tables it needs, before any transaction.
    fn prepare_batch(&self, conn: &mut Conn, batch: &Batch) -> Result<()> {
        let mut seen: Vec<Partition> = Vec::new();
        for op in batch.ops() {
            check_key(&op.key)?;
            if !seen.contains(&op.partition) {
                seen.push(op.partition);
            }
        }
        for p in seen {
            self.ensure(conn, p)?;
        }
        Ok(())
    }

    /// One page of a scan: up to `limit` entries of `range` in `order`.
    fn page(
        &self,
        conn: &mut Conn,
        p: Partition,
        range: &KeyRange,
        order: Order,
        limit: i64,
    ) -> Result<Vec<KeyValue>> {
        let t = self.table(p);
        let vs = rows::vshape(self.inner.typed, p);
        let list = select_list(vs, "");
        let dir = match order {
            Order::Ascending => "ASC",
            Order::Descending => "DESC",
        };
        let mut params: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        let mut conds: Vec<String> = Vec::new();
        let rows: Vec<Row> = match shape(p) {
            Shape::Log => {
                // Callers split log scans by tenant (`pieces`).
                let Some(tn) = single_tenant(range) else {
                    return Err(Error::Inconsistent(
                        "a log scan page must lie within one tenant".into(),
                    ));
                };
                let Some((lo, hi)) = position_bounds(range, tn) else {
                    return Ok(Vec::new());
                };
                let rows = conn.query(
                    &format!(
                        "SELECT tn, pos, {list} FROM {t} WHERE tn = $1 AND pos >= $2 \
                         AND pos <= $3 ORDER BY pos {dir} LIMIT $4"
                    ),
                    &[&i64::from(tn), &lo, &hi, &limit],
                )?;
                return rows
                    .iter()
                    .map(|r| Ok((log_key(r.get(0), r.get(1)), value_of(p, vs, r, 2)?)))
                    .collect();
            }
            Shape::Tenant | Shape::Global => {
                if shape(p) == Shape::Tenant
                    && let Some(tn) = single_tenant(range)
                {
                    params.push(Box::new(i64::from(tn)));
                    conds.push(format!("tn = ${}", params.len()));
                }
                for (bound, op_in, op_ex) in [(&range.start, ">=", ">"), (&range.end, "<=", "<")] {
                    let (op, k) = match bound {
                        Bound::Included(k) => (op_in, k),
                        Bound::Excluded(k) => (op_ex, k),
                        Bound::Unbounded => continue,
                    };
                    params.push(Box::new(k.clone()));
                    conds.push(format!("k {op} ${}", params.len()));
                }
                params.push(Box::new(limit));
                let limit_at = params.len();
                let filter = if conds.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {}", conds.join(" AND "))
                };
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|b| &**b).collect();
                conn.query(
                    &format!(
                        "SELECT k, {list} FROM {t} {filter} ORDER BY k {dir} LIMIT ${limit_at}"
                    ),
                    &refs,
                )?
            }
        };
        rows.iter()
            .map(|r| Ok((r.get(0), value_of(p, vs, r, 1)?)))
            .collect()
    }

    /// The pieces a scan reads one after the other: the range itself, or for the log
    /// (whose table is ordered by tenant number, not key bytes) one piece per tenant,
    /// in key order.
    fn pieces(&self, p: Partition, range: KeyRange, order: Order) -> Result<Vec<KeyRange>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        if shape(p) != Shape::Log || single_tenant(&range).is_some() {
            return Ok(vec![range]);
        }
        let mut conn = self.conn()?;
        let rows = conn.query(&format!("SELECT DISTINCT tn FROM {}", self.table(p)), &[])?;
        let mut tenants: Vec<(Vec<u8>, u32)> = rows
            .into_iter()
            .filter_map(|r| u32::try_from(r.get::<_, i64>(0)).ok())
            .map(|tn| (crate::keys::encode_tn(tn), tn))
            .collect();
        tenants.sort();
        if order == Order::Descending {
            tenants.reverse();
        }
        Ok(tenants
            .into_iter()
            .map(|(_, tn)| within_tenant(&range, tn))
            .filter(|r| !r.is_empty())
            .collect())
    }
}

impl Store for PgStore {
    fn get(&self, partition: Partition, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_many(partition, &[key.to_vec()])?.pop().flatten())
    }

    fn get_many(&self, partition: Partition, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut conn = self.conn()?;
        self.ensure(&mut conn, partition)?;
        self.get_many_in(&mut conn, partition, keys)
    }

    fn scan(&self, partition: Partition, range: KeyRange, order: Order) -> Result<ScanIter<'_>> {
        self.ensure_table(partition)?;
        let mut pieces = self.pieces(partition, range, order)?;
        pieces.reverse();
        Ok(Box::new(PgScan {
            store: self,
            partition,
            order,
            pieces,
            buffer: Vec::new(),
            limit: SCAN_CHUNK_ROWS,
        }))
    }

    /// One row fetched, where the default would fetch a page.
    fn first(
        &self,
        partition: Partition,
        range: KeyRange,
        order: Order,
    ) -> Result<Option<KeyValue>> {
        self.ensure_table(partition)?;
        let mut pieces = self.pieces(partition, range, order)?;
        pieces.reverse();
        let mut scan = PgScan {
            store: self,
            partition,
            order,
            pieces,
            buffer: Vec::new(),
            limit: 1,
        };
        scan.next().transpose()
    }

    fn commit(&self, batch: Batch, durability: Durability) -> Result<()> {
        let mut conn = self.conn()?;
        self.prepare_batch(&mut conn, &batch)?;
        let mut txn = PgTxn {
            store: self,
            conn: Some(conn),
            begun: false,
            announce: None,
        };
        txn.write_and_commit(batch, durability)
    }

    /// A synced mode flushes the WAL through every commit so far: a transaction that
    /// gets a transaction id commits with `synchronous_commit` on, and its flush covers
    /// everything before it in the WAL.
    fn persist(&self, durability: Durability) -> Result<()> {
        if durability.is_synced() {
            self.conn()?.query("SELECT txid_current()", &[])?;
        }
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn begin(&self) -> Result<Box<dyn WriteTxn + '_>> {
        Ok(Box::new(PgTxn {
            store: self,
            conn: Some(self.conn()?),
            begun: false,
            announce: None,
        }))
    }
}

/// A scan: pieces read in order, each in pages that continue after the last key.
struct PgScan<'a> {
    store: &'a PgStore,
    partition: Partition,
    order: Order,
    /// Still to read, the next one last.
    pieces: Vec<KeyRange>,
    /// The current page, reversed (popped from the back).
    buffer: Vec<KeyValue>,
    limit: i64,
}

impl PgScan<'_> {
    fn refill(&mut self) -> Result<()> {
        while self.buffer.is_empty() {
            let Some(range) = self.pieces.last_mut() else {
                return Ok(());
            };
            let mut conn = self.store.conn()?;
            let page = self
                .store
                .page(&mut conn, self.partition, range, self.order, self.limit)?;
            if (page.len() as i64) < self.limit {
                self.pieces.pop();
            } else if let Some((last, _)) = page.last() {
                match self.order {
                    Order::Ascending => range.start = Bound::Excluded(last.clone()),
                    Order::Descending => range.end = Bound::Excluded(last.clone()),
                }
            }
            self.buffer = page;
            self.buffer.reverse();
        }
        Ok(())
    }
}

impl Iterator for PgScan<'_> {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty()
            && let Err(e) = self.refill()
        {
            self.pieces.clear();
            return Some(Err(e));
        }
        self.buffer.pop().map(Ok)
    }
}

/// A transaction on one pooled connection. `BEGIN` goes out with the first statement;
/// dropping an uncommitted transaction rolls it back.
struct PgTxn<'a> {
    store: &'a PgStore,
    conn: Option<Pooled>,
    begun: bool,
    /// The `pg_notify` call announcing the commit (`WriteTxn::announce`), if any.
    announce: Option<String>,
}

impl PgTxn<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a transaction has its connection until it ends")
    }

    fn begin(&mut self) -> Result<()> {
        if !self.begun {
            self.conn().simple("BEGIN")?;
            self.begun = true;
        }
        Ok(())
    }

    fn write_and_commit(&mut self, batch: Batch, durability: Durability) -> Result<()> {
        let ops = batch.into_sorted_ops();
        if ops.is_empty() && !durability.is_synced() {
            return Ok(());
        }
        self.begin()?;
        let store = self.store;
        store.write_in(self.conn(), ops)?;
        // A buffered commit does not wait for the WAL flush: it survives the node's
        // crash (the server has it) but not the server's, as a suffix.
        let mut commit = String::new();
        if !durability.is_synced() {
            commit.push_str("SET LOCAL synchronous_commit TO off; ");
        }
        // The announcement is part of the transaction: PostgreSQL delivers it to the
        // listeners when the commit is visible, and drops it if the transaction does
        // not commit. It costs no round trip of its own.
        let announced = self.announce.take().inspect(|notify| {
            commit.push_str(notify);
            commit.push_str("; ");
        });
        commit.push_str("COMMIT");
        let result = self.conn().simple(&commit);
        // After COMMIT (or a failed one) the server is out of the transaction.
        self.begun = false;
        if result.is_ok() && announced.is_some() {
            store.inner.announced.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl WriteTxn for PgTxn<'_> {
    /// An advisory transaction lock: it needs no row to exist (a new tenant has none),
    /// writes nothing, and is released by the commit after the commit is visible, so
    /// the next holder's reads (each statement takes a fresh snapshot under READ
    /// COMMITTED) see it.
    fn lock(&mut self, scope: WriteScope) -> Result<()> {
        let (space, key) = match scope {
            WriteScope::Tenant(tn) => {
                (self.store.inner.space, i32::from_ne_bytes(tn.to_ne_bytes()))
            }
            WriteScope::TenantNames => (self.store.inner.control, LOCK_TENANT_NAMES),
            WriteScope::Registry => (self.store.inner.control, LOCK_REGISTRY),
            // Uploads in a space of their own, keyed by the id's first four bytes (two
            // uploads that share them only take turns).
            WriteScope::Upload(cid) => {
                let b = cid.as_bytes();
                (
                    self.store.inner.uploads,
                    i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                )
            }
            other => {
                return Err(Error::backend(format!("unknown write scope {other:?}")));
            }
        };
        let sql = format!("SELECT pg_advisory_xact_lock({space}, {key})");
        if self.begun {
            self.conn().simple(&sql)
        } else {
            self.conn().simple(&format!("BEGIN; {sql}"))?;
            self.begun = true;
            Ok(())
        }
    }

    fn get_many(&mut self, partition: Partition, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.begin()?;
        let store = self.store;
        // Only partitions the ledger does not define can be missing; creating the table
        // needs a transaction of its own.
        store.ensure_table(partition)?;
        store.get_many_in(self.conn(), partition, keys)
    }

    fn announce(&mut self, tenant: &sync_types::TenantId, head: u64) {
        self.announce = Some(crate::bus::notify_sql(
            &self.store.inner.channel,
            tenant,
            head,
        ));
    }

    fn commit(mut self: Box<Self>, batch: Batch, durability: Durability) -> Result<()> {
        let store = self.store;
        for op in batch.ops() {
            check_key(&op.key)?;
        }
        let unknown: Vec<Partition> = {
            let tables = store.inner.tables.read().unwrap_or_else(|e| e.into_inner());
            batch
                .ops()
                .iter()
                .map(|o| o.partition)
                .filter(|p| !tables.contains(p.name()))
                .collect()
        };
        for p in unknown {
            store.ensure_table(p)?;
        }
        self.write_and_commit(batch, durability)
    }
}

impl Drop for PgTxn<'_> {
    fn drop(&mut self) {
        if self.begun
            && let Some(conn) = self.conn.as_mut()
            && conn.simple("ROLLBACK").is_err()
        {
            conn.broken = true;
        }
    }
}
