//! Pooled connections: each keeps its prepared statements, counts what it sends, and
//! maps PostgreSQL's errors onto the ledger's "retry" and "poisoned" kinds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use sync_ledger::Error;

/// One connection of the pool, with the statements prepared on it.
pub(crate) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    sent: Arc<AtomicU64>,
    /// Set when the connection's state is unknown (a failed rollback): the pool drops
    /// it instead of handing it out again.
    pub(crate) broken: bool,
}

impl Conn {
    /// Runs a prepared statement (prepared once per connection), returning its rows.
    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> sync_ledger::Result<Vec<Row>> {
        let statement = match self.statements.get(sql) {
            Some(s) => s.clone(),
            None => {
                let s = self.client.prepare(sql).map_err(map_err)?;
                self.statements.insert(sql.to_owned(), s.clone());
                s
            }
        };
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.client.query(&statement, params).map_err(map_err)
    }

    /// Runs statements with the simple protocol (`BEGIN`, `COMMIT`, DDL): one round
    /// trip for all of them.
    pub(crate) fn simple(&mut self, sql: &str) -> sync_ledger::Result<()> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.client.batch_execute(sql).map_err(map_err)
    }
}

/// Opens connections for the pool.
pub(crate) struct Manager {
    pub(crate) config: postgres::Config,
    pub(crate) sent: Arc<AtomicU64>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        let mut client = self.config.connect(NoTls)?;
        // A synced commit returns only once its WAL is flushed (the fjall contract for
        // `SyncData`); a `Buffered` commit turns it off for its own transaction only.
        client.batch_execute("SET synchronous_commit TO on")?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
            sent: Arc::clone(&self.sent),
            broken: false,
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        conn.client.batch_execute("")
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken || conn.client.is_closed()
    }
}

/// SQLSTATE classes and codes after which the database is consistent and the whole
/// transaction may run again: connection exceptions (08), serialization failure and
/// deadlock (40001, 40P01), lock not available (55P03), operator intervention such as a
/// server shutdown (57P01 to 57P03), too many connections (53300).
fn is_transient(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "53300"
        )
}

/// Maps a PostgreSQL error: a lost connection or a transient SQLSTATE is
/// [`Error::Retry`], anything else [`Error::Backend`] (which poisons the ledger).
pub(crate) fn map_err(e: postgres::Error) -> Error {
    let transient = e.is_closed()
        || e.code().is_some_and(|c| is_transient(c.code()))
        // The socket failed (reset, timed out) without the server saying why.
        || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if transient {
        Error::retry(e)
    } else {
        Error::backend(e)
    }
}

/// Maps a pool error (no connection within the timeout): the database may be down for
/// a moment, nothing was written.
pub(crate) fn map_pool_err(e: r2d2::Error) -> Error {
    Error::retry(e)
}
