//! Pooled connections: each keeps its prepared statements, counts what it sends, and
//! maps PostgreSQL's errors onto the ledger's "retry" and "poisoned" kinds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};
use sync_ledger::Error;

/// Runs `f`, which blocks on the `postgres` client's own runtime (blocking on a runtime
/// panics on a thread that drives another one):
///
/// - off any tokio runtime, directly;
/// - within a multi-threaded runtime, through `block_in_place`: on a blocking-pool thread
///   (`spawn_blocking`, where the engine's applies run) that is a direct call, on a
///   worker it first hands the worker's other tasks to another thread;
/// - within a current-thread runtime, which cannot spare its only thread, on a helper
///   thread while this one waits (about 20 µs a call, against a round trip of at least
///   as much).
///
/// A new thread per statement used to be the price everywhere in a runtime; on a loaded
/// machine each one waited for a core, a dozen times per apply.
pub(crate) fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Err(_) => f(),
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// One connection of the pool, with the statements prepared on it.
pub(crate) struct Conn {
    /// Always `Some` until dropped (taken by `Drop`, which closes it off any runtime).
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    sent: Arc<AtomicU64>,
    /// Set when the connection's state is unknown (a failed rollback): the pool drops
    /// it instead of handing it out again.
    pub(crate) broken: bool,
    /// The pool's count of lost connections when this one was opened or last checked.
    checked: u64,
    /// The pool's count of lost connections ([`Manager::lost`]).
    lost: Arc<AtomicU64>,
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
                let client = self.client();
                let s = blocking(|| client.prepare(sql)).map_err(|e| self.fail(e))?;
                self.statements.insert(sql.to_owned(), s.clone());
                s
            }
        };
        self.sent.fetch_add(1, Ordering::Relaxed);
        let client = self.client();
        blocking(|| client.query(&statement, params)).map_err(|e| self.fail(e))
    }

    fn client(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a connection has its client until it is dropped")
    }

    /// Runs statements with the simple protocol (`BEGIN`, `COMMIT`, DDL): one round
    /// trip for all of them.
    pub(crate) fn simple(&mut self, sql: &str) -> sync_ledger::Result<()> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let client = self.client();
        blocking(|| client.batch_execute(sql)).map_err(|e| self.fail(e))
    }

    /// Maps `e`, counting a lost connection for the whole pool: a server restart closes
    /// every connection, and the idle ones are then checked before their next use.
    fn fail(&self, e: postgres::Error) -> Error {
        if connection_lost(&e) {
            self.lost.fetch_add(1, Ordering::Release);
        }
        map_err(e)
    }

    /// Whether the connection can be handed out: at once when the pool lost none since
    /// it was last checked, else after an empty round trip (a connection found dead is
    /// marked broken, and the pool drops it). So after a database restart each idle
    /// connection costs one empty round trip instead of failing one request.
    pub(crate) fn still_good(&mut self) -> bool {
        let lost = self.lost.load(Ordering::Acquire);
        if self.checked >= lost {
            return true;
        }
        let client = self.client();
        if blocking(|| client.batch_execute("")).is_ok() {
            self.checked = lost;
            true
        } else {
            self.broken = true;
            false
        }
    }
}

impl Drop for Conn {
    /// Closing the client blocks on its runtime too.
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            blocking(move || drop(client));
        }
    }
}

/// Opens connections for the pool.
pub(crate) struct Manager {
    pub(crate) config: postgres::Config,
    pub(crate) sent: Arc<AtomicU64>,
    /// Connections found lost so far (a closed socket, a connection exception, the
    /// server shutting down), by any connection of the pool.
    pub(crate) lost: Arc<AtomicU64>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        let client = blocking(|| {
            let mut client = self.config.connect(NoTls)?;
            // A synced commit returns only once its WAL is flushed (the fjall contract
            // for `SyncData`); a `Buffered` commit turns it off for its own transaction.
            client.batch_execute("SET synchronous_commit TO on")?;
            Ok::<_, postgres::Error>(client)
        })?;
        Ok(Conn {
            client: Some(client),
            statements: HashMap::new(),
            sent: Arc::clone(&self.sent),
            broken: false,
            checked: self.lost.load(Ordering::Acquire),
            lost: Arc::clone(&self.lost),
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        let client = conn.client();
        blocking(|| client.batch_execute(""))
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken || conn.client.as_ref().is_none_or(Client::is_closed)
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

/// Whether `e` means the connection is gone: its socket closed or failed, a connection
/// exception (SQLSTATE class 08), or the server shutting down (57P01 to 57P03).
fn connection_lost(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.code().is_some_and(|c| {
            let code = c.code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        })
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
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
