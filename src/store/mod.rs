//! Durable state in one LMDB environment (heed), behind an async facade.
//!
//! Every state transition of the node is one closure over a [`WriteTxn`]: [`Store::write`] hands it to the
//! store's writer thread and returns once a commit (fsync) carrying it is done, so callers never hold a
//! transaction across an `.await` and never block a runtime worker. The writer commits every transition
//! waiting at the time in one transaction, each in its own nested transaction ([`writer`]: group commit), so
//! concurrent transitions share one fsync. LMDB already serializes writers, so there are no locks here. Values are JSON (the model's serde shapes); keys are strings built so that a prefix scan
//! returns related records in order (`<job id>/<seq:020>`).
//!
//! Never opened with `NO_SYNC`: power loss is normal at the edge, and a committed transition must survive it.
//! heed types (`RoTxn`, `RwTxn`, `Database`) do not leave this module.

mod env;
mod writer;

pub use writer::CommitStats;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use heed::types::{Bytes, Str};
use heed::{Database, Env, RoTxn, RwTxn, WithoutTls};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Store settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// LMDB map size: the most the database may grow to. Virtual address space only, but a 32-bit board cannot
    /// map more than ~1 GiB, so board profiles set it.
    pub map_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { map_size: 1 << 30 }
    }
}

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The environment could not be opened.
    #[error("cannot open the state database in {path:?} (is another cod using this data dir?)")]
    Open {
        /// The data dir.
        path: PathBuf,
        /// The cause.
        #[source]
        source: heed::Error,
    },
    /// An LMDB operation failed.
    #[error("state database {op} on table {table} failed")]
    Lmdb {
        /// What was being done.
        op: &'static str,
        /// On which table.
        table: &'static str,
        /// The cause.
        #[source]
        source: heed::Error,
    },
    /// A stored value does not decode (written by an incompatible version).
    #[error("record {key:?} in table {table} is unreadable")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The blocking task running the transaction panicked or was cancelled, or the writer thread is gone.
    #[error("state database task failed: {0}")]
    Task(String),
    /// The writer thread could not be started.
    #[error(
        "cannot start the state database writer thread (is the process out of threads or memory?)"
    )]
    Writer(#[source] std::io::Error),
    /// A caller's own rule failed inside a transaction (the transaction is rolled back).
    #[error("{0}")]
    Aborted(String),
}

/// A typed table: string keys, JSON values.
#[derive(Debug)]
pub struct Table<V> {
    name: &'static str,
    db: Database<Str, Bytes>,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for Table<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for Table<V> {}

impl<V> Table<V> {
    /// The table's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl<V: DeserializeOwned> Table<V> {
    /// The value of `key` from the bytes stored for it (as [`Reader::prefix_after_raw`] hands them over).
    pub fn decode(&self, key: &str, bytes: &[u8]) -> Result<V, StoreError> {
        decode(self.name, key, bytes)
    }
}

/// The node's database.
#[derive(Clone)]
pub struct Store {
    env: Env<WithoutTls>,
    /// Owns LMDB's write side (group commit).
    writer: Arc<writer::Writer>,
    /// The data dir, for messages.
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the environment in `dir`.
    pub fn open(dir: &Path, config: &Config) -> Result<Self, StoreError> {
        let env = env::open(dir, config.map_size, 64)?;
        let writer = writer::Writer::start(env.clone()).map_err(StoreError::Writer)?;
        Ok(Self {
            env,
            writer: Arc::new(writer),
            path: Arc::new(dir.to_owned()),
        })
    }

    /// Opens (creating if needed) a table. Call at start-up, not per request.
    pub fn table<V>(&self, name: &'static str) -> Result<Table<V>, StoreError> {
        let lmdb = |op, source| StoreError::Lmdb {
            op,
            table: name,
            source,
        };
        let mut txn = self.env.write_txn().map_err(|e| lmdb("begin", e))?;
        let db = self
            .env
            .create_database::<Str, Bytes>(&mut txn, Some(name))
            .map_err(|e| lmdb("create", e))?;
        txn.commit().map_err(|e| lmdb("commit", e))?;
        Ok(Table {
            name,
            db,
            _value: PhantomData,
        })
    }

    /// Runs `f` in a read transaction on a blocking thread. Keep it short: long readers stop LMDB from reusing
    /// pages and make the file grow.
    pub async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&ReadTxn<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let env = self.env.clone();
        tokio::task::spawn_blocking(move || {
            let txn = env.read_txn().map_err(|source| StoreError::Lmdb {
                op: "begin read",
                table: "-",
                source,
            })?;
            f(&ReadTxn { txn: &txn })
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` in a write transaction on the writer thread and commits it if `f` returns `Ok`; an error (or a
    /// panic) in `f` rolls back only `f`'s changes. The commit is durable (fsync) when the returned future
    /// yields `Ok`. `f` is queued when this is called, not when the future is first polled: writes keep the
    /// order of the calls, and a dropped future's write still happens.
    pub fn write<R, F>(&self, f: F) -> impl Future<Output = Result<R, StoreError>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteTxn<'_, '_>) -> Result<R, StoreError> + Send + 'static,
    {
        self.write_then(f, |result| result)
    }

    /// [`Store::write`], with `then` run on the writer thread as soon as the commit's outcome is known: before
    /// the writer begins its next commit, and whether or not the caller still waits. (The other closures of
    /// the same batch run before that commit, so before `then`.) `then` gets `f`'s result (an
    /// error if `f` or the commit failed) and makes the future's output. It must be quick and must not wait
    /// for the store.
    pub fn write_then<T, R, F, C>(
        &self,
        f: F,
        then: C,
    ) -> impl Future<Output = Result<R, StoreError>> + Send + 'static
    where
        T: Send + 'static,
        R: Send + 'static,
        F: FnOnce(&mut WriteTxn<'_, '_>) -> Result<T, StoreError> + Send + 'static,
        C: FnOnce(Result<T, StoreError>) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.submit(f, move |result| {
            let _ = tx.send(then(result));
        });
        async move { rx.await.map_err(|_| writer_gone())? }
    }

    /// Runs `f` in a read transaction on the calling thread: for code already on a blocking thread, and from
    /// async code for a few point reads (a key, one job's records), which take microseconds from the mapped
    /// pages. [`Store::read`]'s hand-off to the blocking pool costs more than that (two thread switches, on a
    /// job's path); scans of whole tables use it.
    pub fn read_sync<R>(
        &self,
        f: impl FnOnce(&ReadTxn<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let txn = self.env.read_txn().map_err(|source| StoreError::Lmdb {
            op: "begin read",
            table: "-",
            source,
        })?;
        f(&ReadTxn { txn: &txn })
    }

    /// [`Store::write`] for code already on a blocking thread (the IPFS block store, whose callers are
    /// synchronous). Must not be called from inside a write closure (it would wait for its own batch).
    pub fn write_sync<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WriteTxn<'_, '_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.writer.submit(f, move |result| {
            let _ = tx.send(result);
        });
        rx.recv().map_err(|_| writer_gone())?
    }

    /// Commits and transitions so far (transitions per commit is the group commit's gain).
    pub fn commit_stats(&self) -> CommitStats {
        self.writer.stats()
    }
}

fn writer_gone() -> StoreError {
    StoreError::Task(
        "the state database writer did not run this write (see the log for the LMDB error)"
            .to_owned(),
    )
}

fn decode<V: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<V, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        table,
        key: key.to_owned(),
        source,
    })
}

/// Reads shared by read and write transactions.
pub trait Reader {
    /// The value at `key`.
    fn get<V: DeserializeOwned>(&self, table: Table<V>, key: &str)
    -> Result<Option<V>, StoreError>;
    /// Every `(key, value)` whose key starts with `prefix`, in key order.
    fn prefix<V: DeserializeOwned>(
        &self,
        table: Table<V>,
        prefix: &str,
    ) -> Result<Vec<(String, V)>, StoreError>;
    /// At most `limit` pairs whose key starts with `prefix` and sorts after `after`, in key order.
    fn prefix_after<V: DeserializeOwned>(
        &self,
        table: Table<V>,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, V)>, StoreError>;
    /// [`Reader::prefix_after`] without decoding: `visit` gets each key and the bytes stored for it, valid
    /// only during the call (they are the database's mapped pages).
    fn prefix_after_raw<V>(
        &self,
        table: Table<V>,
        prefix: &str,
        after: &str,
        limit: usize,
        visit: impl FnMut(&str, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Every `(key, value)` of the table, in key order.
    fn all<V: DeserializeOwned>(&self, table: Table<V>) -> Result<Vec<(String, V)>, StoreError> {
        self.prefix(table, "")
    }
    /// Number of records.
    fn count<V>(&self, table: Table<V>) -> Result<u64, StoreError>;
    /// The greatest key starting with `prefix` (not empty), without decoding its value.
    fn last_key<V>(&self, table: Table<V>, prefix: &str) -> Result<Option<String>, StoreError>;
}

/// A read transaction.
#[allow(missing_debug_implementations)] // wraps heed's transaction, which has no Debug
pub struct ReadTxn<'a> {
    txn: &'a RoTxn<'a>,
}

/// A write transaction; committed by [`Store::write`] when the closure returns `Ok`.
#[allow(missing_debug_implementations)] // wraps heed's transaction, which has no Debug
pub struct WriteTxn<'a, 'e> {
    txn: &'a mut RwTxn<'e>,
}

fn get_in<V: DeserializeOwned>(
    txn: &RoTxn<'_>,
    table: Table<V>,
    key: &str,
) -> Result<Option<V>, StoreError> {
    let raw = table.db.get(txn, key).map_err(|source| StoreError::Lmdb {
        op: "get",
        table: table.name,
        source,
    })?;
    raw.map(|b| decode(table.name, key, b)).transpose()
}

fn prefix_in<V: DeserializeOwned>(
    txn: &RoTxn<'_>,
    table: Table<V>,
    prefix: &str,
) -> Result<Vec<(String, V)>, StoreError> {
    let lmdb = |source| StoreError::Lmdb {
        op: "scan",
        table: table.name,
        source,
    };
    let mut out = Vec::new();
    // LMDB rejects a zero-length key (MDB_BAD_VALSIZE), and heed's prefix search positions the cursor with
    // the prefix as a key, so a whole-table scan must not be an empty prefix search.
    if prefix.is_empty() {
        for item in table.db.iter(txn).map_err(lmdb)? {
            let (k, v) = item.map_err(lmdb)?;
            out.push((k.to_owned(), decode(table.name, k, v)?));
        }
    } else {
        for item in table.db.prefix_iter(txn, prefix).map_err(lmdb)? {
            let (k, v) = item.map_err(lmdb)?;
            out.push((k.to_owned(), decode(table.name, k, v)?));
        }
    }
    Ok(out)
}

fn prefix_after_in<V: DeserializeOwned>(
    txn: &RoTxn<'_>,
    table: Table<V>,
    prefix: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<(String, V)>, StoreError> {
    let mut out = Vec::new();
    prefix_after_raw_in(txn, table, prefix, after, limit, |k, v| {
        out.push((k.to_owned(), decode(table.name, k, v)?));
        Ok(())
    })?;
    Ok(out)
}

fn prefix_after_raw_in<V>(
    txn: &RoTxn<'_>,
    table: Table<V>,
    prefix: &str,
    after: &str,
    limit: usize,
    mut visit: impl FnMut(&str, &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    use std::ops::Bound;
    let lmdb = |source| StoreError::Lmdb {
        op: "range scan",
        table: table.name,
        source,
    };
    // Resuming before the prefix starts at it; LMDB refuses a zero-length key as a cursor position.
    let start = if after < prefix {
        Bound::Included(prefix)
    } else if after.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(after)
    };
    let range = (start, Bound::Unbounded);
    for (seen, item) in table.db.range(txn, &range).map_err(lmdb)?.enumerate() {
        let (k, v) = item.map_err(lmdb)?;
        if !k.starts_with(prefix) || seen >= limit {
            break;
        }
        visit(k, v)?;
    }
    Ok(())
}

fn last_key_in<V>(
    txn: &RoTxn<'_>,
    table: Table<V>,
    prefix: &str,
) -> Result<Option<String>, StoreError> {
    let lmdb = |source| StoreError::Lmdb {
        op: "reverse scan",
        table: table.name,
        source,
    };
    match table.db.rev_prefix_iter(txn, prefix).map_err(lmdb)?.next() {
        Some(item) => Ok(Some(item.map_err(lmdb)?.0.to_owned())),
        None => Ok(None),
    }
}

fn count_in<V>(txn: &RoTxn<'_>, table: Table<V>) -> Result<u64, StoreError> {
    table.db.len(txn).map_err(|source| StoreError::Lmdb {
        op: "count",
        table: table.name,
        source,
    })
}

/// Both transaction kinds read the same way; the macro keeps one copy of the delegation.
macro_rules! impl_reader {
    ($ty:ty) => {
        impl Reader for $ty {
            fn get<V: DeserializeOwned>(
                &self,
                table: Table<V>,
                key: &str,
            ) -> Result<Option<V>, StoreError> {
                get_in(self.txn, table, key)
            }
            fn prefix<V: DeserializeOwned>(
                &self,
                table: Table<V>,
                prefix: &str,
            ) -> Result<Vec<(String, V)>, StoreError> {
                prefix_in(self.txn, table, prefix)
            }
            fn prefix_after<V: DeserializeOwned>(
                &self,
                table: Table<V>,
                prefix: &str,
                after: &str,
                limit: usize,
            ) -> Result<Vec<(String, V)>, StoreError> {
                prefix_after_in(self.txn, table, prefix, after, limit)
            }
            fn prefix_after_raw<V>(
                &self,
                table: Table<V>,
                prefix: &str,
                after: &str,
                limit: usize,
                visit: impl FnMut(&str, &[u8]) -> Result<(), StoreError>,
            ) -> Result<(), StoreError> {
                prefix_after_raw_in(self.txn, table, prefix, after, limit, visit)
            }
            fn count<V>(&self, table: Table<V>) -> Result<u64, StoreError> {
                count_in(self.txn, table)
            }
            fn last_key<V>(
                &self,
                table: Table<V>,
                prefix: &str,
            ) -> Result<Option<String>, StoreError> {
                last_key_in(self.txn, table, prefix)
            }
        }
    };
}

impl_reader!(ReadTxn<'_>);
impl_reader!(WriteTxn<'_, '_>);

impl WriteTxn<'_, '_> {
    /// Stores `value` at `key`.
    pub fn put<V: Serialize>(
        &mut self,
        table: Table<V>,
        key: &str,
        value: &V,
    ) -> Result<(), StoreError> {
        self.put_encoded(table, key, value).map(drop)
    }

    /// [`WriteTxn::put`], returning the bytes stored: a caller that keeps `value` in memory can tell, from a
    /// later [`Reader::prefix_after_raw`], that the record is still the one it kept.
    pub fn put_encoded<V: Serialize>(
        &mut self,
        table: Table<V>,
        key: &str,
        value: &V,
    ) -> Result<Vec<u8>, StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
            table: table.name,
            key: key.to_owned(),
            source,
        })?;
        table
            .db
            .put(self.txn, key, &bytes)
            .map_err(|source| StoreError::Lmdb {
                op: "put",
                table: table.name,
                source,
            })?;
        Ok(bytes)
    }

    /// Removes `key`; true if it was there.
    pub fn delete<V>(&mut self, table: Table<V>, key: &str) -> Result<bool, StoreError> {
        table
            .db
            .delete(self.txn, key)
            .map_err(|source| StoreError::Lmdb {
                op: "delete",
                table: table.name,
                source,
            })
    }

    /// Removes every key starting with `prefix` and not after `last` (inclusive); returns how many.
    pub fn delete_prefix_through<V>(
        &mut self,
        table: Table<V>,
        prefix: &str,
        last: &str,
    ) -> Result<u64, StoreError> {
        let lmdb = |source| StoreError::Lmdb {
            op: "delete range",
            table: table.name,
            source,
        };
        let keys: Vec<String> = {
            let mut keys = Vec::new();
            for item in table.db.prefix_iter(self.txn, prefix).map_err(lmdb)? {
                let (k, _) = item.map_err(lmdb)?;
                if k > last {
                    break;
                }
                keys.push(k.to_owned());
            }
            keys
        };
        for k in &keys {
            table.db.delete(self.txn, k).map_err(lmdb)?;
        }
        Ok(keys.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn then_runs_once_the_commit_is_known_even_for_a_caller_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Config::default()).expect("open");
        let t: Table<u64> = store.table("numbers").expect("table");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        // The first caller stops waiting at once; its `then` still runs, in commit order.
        let log = Arc::clone(&seen);
        drop(store.write_then(
            move |txn| txn.put(t, "k", &1),
            move |r| {
                log.lock().unwrap().push(format!("then 1: {}", r.is_ok()));
                r
            },
        ));
        let log = Arc::clone(&seen);
        let failed = store
            .write_then(
                move |txn| {
                    log.lock().unwrap().push("write 2".into());
                    txn.put(t, "k", &2)?;
                    Err::<(), _>(StoreError::Aborted("no".into()))
                },
                |r| r.map(|()| 7u8),
            )
            .await;
        assert!(matches!(failed, Err(StoreError::Aborted(_))), "{failed:?}");
        let log = Arc::clone(&seen);
        let got = store
            .write_then(
                move |txn| txn.get(t, "k"),
                move |r| {
                    log.lock().unwrap().push("then 3".into());
                    r
                },
            )
            .await
            .expect("third write");
        assert_eq!(got, Some(1), "the failed write was rolled back");
        // The second write may share the first one's commit (its closure then runs before that commit, and
        // `then 1` after it) or come after it; `then 1` always precedes `then 3`.
        let seen = seen.lock().unwrap().clone();
        let at = |what: &str| seen.iter().position(|s| s == what);
        assert!(matches!(at("then 1: true"), Some(i) if i < 2), "{seen:?}");
        assert!(
            at("write 2").is_some() && at("then 3") == Some(2),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn values_survive_reopen_and_scan_in_key_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), &Config::default()).expect("open");
            let t: Table<u64> = store.table("numbers").expect("table");
            store
                .write(move |txn| {
                    for i in [3u64, 1, 2] {
                        txn.put(t, &format!("a/{i:020}"), &i)?;
                    }
                    txn.put(t, "b/1", &9)
                })
                .await
                .expect("write");
            let rolled_back = store
                .write(move |txn| {
                    txn.put(t, "a/x", &0)?;
                    Err::<(), _>(StoreError::Aborted("no".into()))
                })
                .await;
            assert!(rolled_back.is_err());
        }
        let store = Store::open(dir.path(), &Config::default()).expect("reopen");
        let t: Table<u64> = store.table("numbers").expect("table");
        let got = store
            .read(move |txn| txn.prefix(t, "a/"))
            .await
            .expect("read");
        assert_eq!(
            got.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let removed = store
            .write(move |txn| txn.delete_prefix_through(t, "a/", &format!("a/{:020}", 2)))
            .await
            .expect("delete");
        assert_eq!(removed, 2);
        assert_eq!(store.read(move |txn| txn.count(t)).await.expect("count"), 2);
    }

    #[tokio::test]
    async fn prefix_after_resumes_past_a_key_and_stays_in_the_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Config::default()).expect("open");
        let t: Table<u64> = store.table("numbers").expect("table");
        store
            .write(move |txn| {
                for i in 1..=5u64 {
                    txn.put(t, &format!("a/{i:020}"), &i)?;
                }
                txn.put(t, "b/1", &9)
            })
            .await
            .expect("write");
        let after = format!("a/{:020}", 2);
        let got = store
            .read(move |txn| txn.prefix_after(t, "a/", &after, 2))
            .await
            .expect("read");
        assert_eq!(got.iter().map(|(_, v)| *v).collect::<Vec<_>>(), vec![3, 4]);
        let end = format!("a/{:020}", 5);
        let none = store
            .read(move |txn| txn.prefix_after(t, "a/", &end, 10))
            .await
            .expect("read");
        assert!(
            none.is_empty(),
            "must not run into the next prefix: {none:?}"
        );
        // An empty `after` starts at the prefix, or at the table's first key for an empty prefix.
        let (first, b) = store
            .read(move |txn| {
                Ok((
                    txn.prefix_after(t, "a/", "", 1)?,
                    txn.prefix_after(t, "", "", 9)?,
                ))
            })
            .await
            .expect("read");
        assert_eq!(first.iter().map(|(_, v)| *v).collect::<Vec<_>>(), vec![1]);
        assert_eq!(b.len(), 6);
    }

    #[tokio::test]
    async fn whole_table_scans_work_empty_and_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Config::default()).expect("open");
        let t: Table<u64> = store.table("numbers").expect("table");
        let empty = store.read(move |txn| txn.all(t)).await.expect("scan empty");
        assert!(empty.is_empty());
        store
            .write(move |txn| {
                txn.put(t, "b", &2)?;
                txn.put(t, "a", &1)
            })
            .await
            .expect("write");
        let all = store.read(move |txn| txn.all(t)).await.expect("scan");
        assert_eq!(all, vec![("a".to_owned(), 1), ("b".to_owned(), 2)]);
    }

    /// Holds the writer thread inside a closure until the returned sender is dropped or sent to, so the
    /// writes submitted meanwhile queue up and go into the next batch together.
    async fn hold_writer(
        store: &Store,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let (entered, inside) = tokio::sync::oneshot::channel();
        let held = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(move |_| {
                        let _ = entered.send(());
                        let _ = gate.recv();
                        Ok(())
                    })
                    .await
                    .expect("gate write");
            }
        });
        inside.await.expect("writer entered the gate");
        (release, held)
    }

    /// Waits until `n` writes are queued behind the held writer.
    async fn wait_queued(store: &Store, n: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let s = store.commit_stats();
            // The held write is submitted but not yet counted as run.
            if s.submitted - s.transitions == n + 1 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} writes never queued: {s:?}"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_one_commit_and_all_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), &Config::default()).expect("open");
            let t: Table<u64> = store.table("numbers").expect("table");
            let before = store.commit_stats();
            let (release, held) = hold_writer(&store).await;
            let writers: Vec<_> = (0..50u64)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        store
                            .write(move |txn| txn.put(t, &format!("k/{i:03}"), &i))
                            .await
                    })
                })
                .collect();
            wait_queued(&store, 50).await;
            release.send(()).expect("release");
            held.await.expect("gate task");
            for w in writers {
                w.await.expect("task").expect("write");
            }
            let after = store.commit_stats();
            assert_eq!(after.transitions - before.transitions, 51);
            assert_eq!(
                after.commits - before.commits,
                2,
                "the 50 queued writes must share one commit"
            );
        }
        let store = Store::open(dir.path(), &Config::default()).expect("reopen");
        let t: Table<u64> = store.table("numbers").expect("table");
        let got = store
            .read(move |txn| txn.prefix(t, "k/"))
            .await
            .expect("read");
        assert_eq!(
            got.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
            (0..50).collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_aborting_or_panicking_write_rolls_back_only_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Config::default()).expect("open");
        let t: Table<u64> = store.table("numbers").expect("table");
        let before = store.commit_stats();
        let (release, held) = hold_writer(&store).await;
        type Closure = Box<dyn FnOnce(&mut WriteTxn<'_, '_>) -> Result<(), StoreError> + Send>;
        let spawn_write = |f: Closure| {
            let store = store.clone();
            tokio::spawn(async move { store.write(f).await })
        };
        let ok1 = spawn_write(Box::new(move |txn| txn.put(t, "ok/1", &1)));
        wait_queued(&store, 1).await;
        let aborted = spawn_write(Box::new(move |txn| {
            txn.put(t, "aborted", &2)?;
            txn.delete(t, "ok/1")?;
            Err(StoreError::Aborted("rule failed".into()))
        }));
        wait_queued(&store, 2).await;
        let panicked = spawn_write(Box::new(move |txn| {
            txn.put(t, "panicked", &3)?;
            panic!("bug in a closure")
        }));
        wait_queued(&store, 3).await;
        let ok2 = spawn_write(Box::new(move |txn| txn.put(t, "ok/2", &4)));
        wait_queued(&store, 4).await;
        release.send(()).expect("release");
        held.await.expect("gate task");
        ok1.await.expect("task").expect("first write");
        assert!(matches!(
            aborted.await.expect("task"),
            Err(StoreError::Aborted(_))
        ));
        let panic = panicked
            .await
            .expect("task")
            .expect_err("a panic is that caller's error");
        assert!(panic.to_string().contains("bug in a closure"), "{panic}");
        ok2.await.expect("task").expect("last write");
        assert_eq!(
            store.commit_stats().commits - before.commits,
            2,
            "all four were one batch"
        );
        let all = store.read(move |txn| txn.all(t)).await.expect("read");
        assert_eq!(all, vec![("ok/1".to_owned(), 1), ("ok/2".to_owned(), 4)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_in_one_batch_see_the_earlier_ones_in_queue_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Config::default()).expect("open");
        let t: Table<u64> = store.table("numbers").expect("table");
        let (release, held) = hold_writer(&store).await;
        let mut steps = Vec::new();
        for i in 0..20u64 {
            let writer = store.clone();
            // Each step requires the previous one's value: out of order or unseen, it aborts.
            steps.push(tokio::spawn(async move {
                writer
                    .write(move |txn| {
                        let seen = txn.get(t, "counter")?.unwrap_or(0);
                        if seen != i {
                            return Err(StoreError::Aborted(format!("step {i} saw {seen}")));
                        }
                        txn.put(t, "counter", &(i + 1))
                    })
                    .await
            }));
            wait_queued(&store, i + 1).await;
        }
        release.send(()).expect("release");
        held.await.expect("gate task");
        for s in steps {
            s.await.expect("task").expect("step");
        }
        let counter = store
            .read(move |txn| txn.get(t, "counter"))
            .await
            .expect("read");
        assert_eq!(counter, Some(20));
    }

    #[test]
    fn write_sync_from_plain_threads_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), &Config::default()).expect("open");
            let t: Table<u64> = store.table("numbers").expect("table");
            std::thread::scope(|s| {
                for i in 0..8u64 {
                    let store = store.clone();
                    s.spawn(move || {
                        store
                            .write_sync(move |txn| txn.put(t, &format!("{i}"), &i))
                            .expect("write")
                    });
                }
            });
        }
        let store = Store::open(dir.path(), &Config::default()).expect("reopen");
        let t: Table<u64> = store.table("numbers").expect("table");
        assert_eq!(store.read_sync(move |txn| txn.count(t)).expect("count"), 8);
    }

    #[test]
    fn last_key_is_the_greatest_under_its_prefix_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &Config::default()).expect("open");
        let t: Table<u64> = store.table("keys").expect("table");
        store
            .write_sync(move |txn| {
                for k in ["a/001", "a/002", "a/010", "ab/999", "b/000"] {
                    txn.put(t, k, &0)?;
                }
                Ok(())
            })
            .expect("write");
        let last = |prefix: &'static str| {
            store
                .read_sync(move |txn| txn.last_key(t, prefix))
                .expect("read")
        };
        assert_eq!(last("a/").as_deref(), Some("a/010"));
        assert_eq!(last("ab/").as_deref(), Some("ab/999"));
        assert_eq!(last("b/").as_deref(), Some("b/000"));
        assert_eq!(last("c/"), None);
        assert_eq!(last("0"), None);
    }
}
