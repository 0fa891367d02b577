//! The embedded backend: one SQLite file, safe for several processes on one host.
//!
//! Two tables hold everything: `kv` (each key's value and the revision of its last write) and
//! `log` (one row per write, the watch history). Writes run in `BEGIN IMMEDIATE` transactions,
//! so the store revision (the highest `log.revision`) moves by exactly one per write, in commit
//! order, across every process that has the file open. Watches poll `log`; history older than
//! the configured number of revisions is compacted, and a watch that starts before it gets
//! [`WatchEvent::Compacted`], exactly as with etcd.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::mpsc;

use super::{AbortOnDrop, Datastore, KeyValue, Listing, Revision, SqliteOptions, WATCH_BUFFER, Watch, WatchEvent};
use crate::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key      BLOB PRIMARY KEY,
    value    BLOB NOT NULL,
    revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER PRIMARY KEY,
    key      BLOB NOT NULL,
    value    BLOB            -- NULL records a delete
);
";

/// How many events one watch poll reads at most.
const WATCH_BATCH: i64 = 512;

/// The SQLite backend.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    options: SqliteOptions,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteStore({})", self.inner.options.path.display())
    }
}

impl SqliteStore {
    /// Opens (creating when missing) the database file and its directory.
    pub async fn open(options: SqliteOptions) -> Result<Self> {
        tokio::task::spawn_blocking(move || {
            let conn = open_connection(&options)?;
            Ok(SqliteStore { inner: Arc::new(Inner { conn: Mutex::new(conn), options }) })
        })
        .await
        .map_err(|e| Error::Unavailable(format!("sqlite open task failed: {e}")))?
    }

    /// Runs `op` on the connection in the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Connection, &SqliteOptions) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            op(&mut conn, &inner.options)
        })
        .await
        .map_err(|e| Error::Unavailable(format!("sqlite task failed: {e}")))?
    }

    /// Runs one write transaction: `check` sees the key's current value (None when absent)
    /// and decides whether to proceed; then the key is set to `value` (None deletes it).
    async fn write(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        check: impl FnOnce(Option<KeyValue>) -> Result<()> + Send + 'static,
    ) -> Result<Revision> {
        let key = key.to_owned();
        self.run(move |conn, options| {
            let fail = |e| sql_error(&options.path, e);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail)?;
            let current = tx
                .query_row("SELECT value, revision FROM kv WHERE key = ?1", [key.as_bytes()], |r| {
                    Ok(KeyValue { key: key.clone(), value: r.get(0)?, revision: r.get(1)? })
                })
                .optional()
                .map_err(fail)?;
            check(current)?;
            let revision = current_revision(&tx).map_err(fail)? + 1;
            tx.execute(
                "INSERT INTO log (revision, key, value) VALUES (?1, ?2, ?3)",
                params![revision, key.as_bytes(), value],
            )
            .map_err(fail)?;
            match &value {
                Some(v) => tx.execute(
                    "INSERT OR REPLACE INTO kv (key, value, revision) VALUES (?1, ?2, ?3)",
                    params![key.as_bytes(), v, revision],
                ),
                None => tx.execute("DELETE FROM kv WHERE key = ?1", [key.as_bytes()]),
            }
            .map_err(fail)?;
            if revision % 256 == 0 {
                tx.execute("DELETE FROM log WHERE revision <= ?1", [revision - options.history]).map_err(fail)?;
            }
            tx.commit().map_err(fail)?;
            Ok(revision)
        })
        .await
    }
}

fn open_connection(options: &SqliteOptions) -> Result<Connection> {
    let path = &options.path;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Unavailable(format!("cannot create directory {}: {e}", dir.display())))?;
    }
    let fail = |e| sql_error(path, e);
    let mut conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(options.timeout).map_err(fail)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(fail)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(fail)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(fail)?;
    tx.execute_batch(SCHEMA).map_err(fail)?;
    tx.commit().map_err(fail)?;
    Ok(conn)
}

fn sql_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::Unavailable(format!("sqlite {}: {e}", path.display()))
}

fn current_revision(conn: &Connection) -> rusqlite::Result<Revision> {
    conn.query_row("SELECT COALESCE(MAX(revision), 0) FROM log", [], |r| r.get(0))
}

/// The smallest key greater than every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix is empty): no upper bound.
    vec![u8::MAX; prefix.len() + 1]
}

fn key_string(bytes: Vec<u8>) -> rusqlite::Result<String> {
    String::from_utf8(bytes)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e)))
}

#[async_trait]
impl Datastore for SqliteStore {
    async fn get(&self, key: &str) -> Result<KeyValue> {
        let key = key.to_owned();
        self.run(move |conn, options| {
            conn.query_row("SELECT value, revision FROM kv WHERE key = ?1", [key.as_bytes()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(|e| sql_error(&options.path, e))?
            .map(|(value, revision)| KeyValue { key: key.clone(), value, revision })
            .ok_or(Error::NotFound(key))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let prefix = prefix.to_owned();
        self.run(move |conn, options| {
            let fail = |e| sql_error(&options.path, e);
            let tx = conn.transaction().map_err(fail)?;
            let revision = current_revision(&tx).map_err(fail)?;
            let items = {
                let mut stmt = tx
                    .prepare_cached("SELECT key, value, revision FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")
                    .map_err(fail)?;
                let rows = stmt
                    .query_map(params![prefix.as_bytes(), prefix_end(&prefix)], |r| {
                        Ok(KeyValue { key: key_string(r.get(0)?)?, value: r.get(1)?, revision: r.get(2)? })
                    })
                    .map_err(fail)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(fail)?
            };
            tx.commit().map_err(fail)?;
            Ok(Listing { items, revision })
        })
        .await
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<Revision> {
        let name = key.to_owned();
        self.write(key, Some(value.to_vec()), move |current| match current {
            Some(_) => Err(Error::AlreadyExists(name)),
            None => Ok(()),
        })
        .await
    }

    async fn update(&self, key: &str, value: &[u8], expected: Revision) -> Result<Revision> {
        let name = key.to_owned();
        self.write(key, Some(value.to_vec()), move |current| check_expected(name, current, Some(expected))).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<()> {
        let name = key.to_owned();
        self.write(key, None, move |current| check_expected(name, current, expected)).await?;
        Ok(())
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<Watch> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let store = self.clone();
        let prefix = prefix.to_owned();
        let poll = self.inner.options.poll_interval;
        // The first poll runs before we return, so a bad start surfaces here.
        let first = store.poll_log(prefix.clone(), after).await?;
        let pump = tokio::spawn(async move {
            let mut next = Some(Ok(first));
            let mut after = after;
            loop {
                let batch = match next.take() {
                    Some(batch) => batch,
                    None => {
                        tokio::time::sleep(poll).await;
                        store.poll_log(prefix.clone(), after).await
                    }
                };
                let (events, seen) = match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        // A passing lock or I/O problem: say so, keep polling.
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                after = seen;
                let full = events.len() as i64 >= WATCH_BATCH;
                for event in events {
                    let last = matches!(event, WatchEvent::Compacted { .. });
                    if tx.send(Ok(event)).await.is_err() || last {
                        return;
                    }
                }
                if full {
                    next = Some(store.poll_log(prefix.clone(), after).await);
                }
            }
        });
        Ok(Watch::new(rx, AbortOnDrop(pump)))
    }
}

fn check_expected(key: String, current: Option<KeyValue>, expected: Option<Revision>) -> Result<()> {
    match (current, expected) {
        (None, _) => Err(Error::NotFound(key)),
        (Some(current), Some(expected)) if current.revision != expected => {
            Err(Error::Conflict { key, expected, actual: current.revision, current: Some(Box::new(current)) })
        }
        _ => Ok(()),
    }
}

impl SqliteStore {
    /// Reads the next batch of history after `after` for keys under `prefix`. Returns the
    /// events and the revision the next poll should start after.
    async fn poll_log(&self, prefix: String, after: Revision) -> Result<(Vec<WatchEvent>, Revision)> {
        self.run(move |conn, options| {
            let fail = |e| sql_error(&options.path, e);
            let tx = conn.transaction().map_err(fail)?;
            let (oldest, newest): (Option<Revision>, Option<Revision>) = tx
                .query_row("SELECT MIN(revision), MAX(revision) FROM log", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(fail)?;
            if let Some(oldest) = oldest
                && after < oldest - 1
            {
                return Ok((vec![WatchEvent::Compacted { compact_revision: oldest - 1 }], after));
            }
            let mut stmt = tx
                .prepare_cached(
                    "SELECT revision, key, value FROM log
                     WHERE revision > ?1 AND key >= ?2 AND key < ?3
                     ORDER BY revision LIMIT ?4",
                )
                .map_err(fail)?;
            let rows = stmt
                .query_map(params![after, prefix.as_bytes(), prefix_end(&prefix), WATCH_BATCH], |r| {
                    let revision: Revision = r.get(0)?;
                    let key = key_string(r.get(1)?)?;
                    let value: Option<Vec<u8>> = r.get(2)?;
                    Ok(match value {
                        Some(value) => WatchEvent::Put(KeyValue { key, value, revision }),
                        None => WatchEvent::Delete { key, revision },
                    })
                })
                .map_err(fail)?;
            let events = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(fail)?;
            // A full batch resumes after its last event; otherwise everything up to the newest
            // revision has been seen (the rest was outside the prefix).
            let seen = if events.len() as i64 >= WATCH_BATCH {
                events.last().map(event_revision).unwrap_or(after)
            } else {
                newest.unwrap_or(after).max(after)
            };
            Ok((events, seen))
        })
        .await
    }
}

fn event_revision(event: &WatchEvent) -> Revision {
    match event {
        WatchEvent::Put(kv) => kv.revision,
        WatchEvent::Delete { revision, .. } => *revision,
        WatchEvent::Compacted { compact_revision } => *compact_revision,
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0");
        assert_eq!(prefix_end("ab"), b"ac");
    }
}
