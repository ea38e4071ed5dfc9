//! [`PgLeases`]: [`Leases`] as PostgreSQL session advisory locks.
//!
//! A lease is `pg_try_advisory_lock` on a connection of its own (outside the store's
//! pool, which hands connections to any caller): held while the guard lives, released
//! by `pg_advisory_unlock` when it drops, and by the server the moment the holder's
//! connection ends, so a node killed while holding a lease never blocks the others.
//! Keys are the schema's and the lease name's hashes, apart from the store's own locks.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use postgres::{Client, NoTls};
use sync_ledger::{Error, LeaseGuard, Leases, Result};

use crate::conn::{blocking, map_err};
use crate::schema::lock_space;

/// Leases shared by every process of one PostgreSQL ledger (one schema).
pub struct PgLeases {
    inner: Arc<Inner>,
}

struct Inner {
    config: postgres::Config,
    space: i32,
    /// The lease connection, opened on first use and again after it failed.
    client: Mutex<Option<Client>>,
    /// Leases this process holds (a session lock is re-entrant for its session, so
    /// this process must refuse itself).
    held: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for PgLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLeases").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PgLeases {
    /// Leases of the ledger in `schema` of the database at `url`. Connects on first use.
    pub fn new(url: &str, schema: &str) -> Result<PgLeases> {
        Ok(PgLeases {
            inner: Arc::new(Inner {
                config: url.parse().map_err(Error::backend)?,
                space: lock_space(&format!("{schema}/lease")),
                client: Mutex::new(None),
                held: Mutex::new(HashSet::new()),
            }),
        })
    }
}

impl Inner {
    /// Runs `sql` with the lease key on the lease connection, connecting first if
    /// needed; a failed connection is dropped (the server then releases its locks).
    fn ask(&self, sql: &str, key: i32) -> Result<bool> {
        let mut guard = lock(&self.client);
        let client: &mut Option<Client> = &mut guard;
        let config = &self.config;
        let space = self.space;
        let result = blocking(|| {
            if client.is_none() {
                *client = Some(config.connect(NoTls)?);
            }
            let c = client.as_mut().expect("connected above");
            let row = c.query_one(sql, &[&space, &key])?;
            Ok::<bool, postgres::Error>(row.get(0))
        });
        if result.is_err() {
            let dead = client.take();
            blocking(move || drop(dead));
        }
        result.map_err(map_err)
    }
}

struct Release {
    inner: Arc<Inner>,
    name: String,
    key: i32,
}

impl Drop for Release {
    fn drop(&mut self) {
        // An error means the connection is gone, and the lock with it.
        let _ = self
            .inner
            .ask("SELECT pg_advisory_unlock($1, $2)", self.key);
        lock(&self.inner.held).remove(&self.name);
    }
}

impl Leases for PgLeases {
    fn try_take(&self, name: &str) -> Result<Option<LeaseGuard>> {
        if !lock(&self.inner.held).insert(name.to_owned()) {
            return Ok(None);
        }
        let key = lock_space(name);
        match self.inner.ask("SELECT pg_try_advisory_lock($1, $2)", key) {
            Ok(true) => Ok(Some(LeaseGuard::new(Release {
                inner: Arc::clone(&self.inner),
                name: name.to_owned(),
                key,
            }))),
            other => {
                lock(&self.inner.held).remove(name);
                other.map(|_| None)
            }
        }
    }
}
