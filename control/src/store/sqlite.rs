//! The embedded store: one SQLite file (WAL, `synchronous=FULL`) holding the current value of
//! every key, a log of every change for watch replay, and the store revision; one writer thread
//! commits queued writes in groups, readers use their own read-only connections.
//!
//! Layout, after etcd's mvcc and kine's SQL schema:
//! - `kv`: the current value of each live key with its create and mod revisions.
//! - `log`: one row per write, keyed by its revision, with the new value and the previous one
//!   inline, so a watch can be replayed from the log alone, and a list at an older revision can be
//!   rebuilt from the current values plus the log rows after that revision.
//! - `meta`: the current revision and the compacted revision.
//!
//! Writes are never issued from async tasks: each one is queued to the writer thread, which drains
//! the queue, applies every queued operation in one transaction (each operation succeeds or fails
//! on its own: AlreadyExists, NotFound, Conflict), commits once (one fsync for the whole group),
//! then publishes the batch's events on a broadcast channel and answers each caller. A caller that
//! gives up waiting does not cancel its write (as with an etcd request already sent).
//!
//! Watch: subscribe to the broadcast first, then replay the log from the requested revision up to
//! the revision read in the same read transaction, then deliver live batches, skipping revisions
//! already delivered. A watcher that falls behind the broadcast buffer (or sees a gap) catches up
//! from the log again, so no event is lost or repeated while the log still holds it; once
//! compaction has removed what it still needs, the stream ends with `Compacted`.
//!
//! A watch from a revision newer than the current one waits for the writes after it, as etcd does
//! for a future start revision; callers wanting `FutureRevision` compare with `current_revision`.

use std::collections::VecDeque;
use std::fmt::Display;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params, params_from_iter,
};
use tokio::sync::{broadcast, oneshot};

use super::heap::TrimPolicy;
use super::{KeyValue, ListResult, Store, StoreError, WatchEvent, WatchStream};

/// `PRAGMA user_version` of the schema below.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
CREATE TABLE kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
);
CREATE TABLE log (
    revision INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    deleted INTEGER NOT NULL,
    value BLOB,
    create_revision INTEGER NOT NULL,
    prev_value BLOB,
    prev_create_revision INTEGER,
    prev_mod_revision INTEGER
);
CREATE INDEX log_key_revision ON log (key, revision);
";

/// Most operations the writer commits in one transaction.
const MAX_BATCH: usize = 1024;
/// Key and value bytes after which a batch takes no more operations, so one transaction (and the
/// events it publishes) stays small even when large objects are written.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Committed batches the broadcast channel buffers for slow watchers before they catch up
/// from the log instead.
const DEFAULT_EVENT_BUFFER: usize = 1024;
/// Log rows one replay read returns.
const REPLAY_CHUNK: usize = 1000;
/// Idle read connections kept open.
const IDLE_READERS: usize = 4;
/// How long a reader waits on a lock (only checkpoints and recovery take one in WAL mode).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One committed batch of changes, in revision order, as the writer publishes it.
type EventBatch = Arc<[WatchEvent]>;

/// Counters of the writer, to observe group commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions the writer committed or attempted.
    pub batches: u64,
    /// Operations (create, update, delete, compact) those transactions carried.
    pub operations: u64,
    /// Operations in the largest batch.
    pub largest_batch: u64,
}

/// The embedded SQLite implementation of [`Store`]. Cloning is cheap and shares the store.
/// Dropping the last clone waits for the writer thread to commit the batch it holds and close the
/// database (so the file can be opened again at once), and ends every open watch stream.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Queue to the writer thread; `None` only while dropping.
    ops: Option<mpsc::Sender<Op>>,
    writer: Option<JoinHandle<()>>,
    events: broadcast::Sender<EventBatch>,
    state: Arc<SharedState>,
    readers: Arc<ReadPool>,
}

/// What the writer publishes after each commit.
#[derive(Debug, Default)]
struct SharedState {
    revision: AtomicI64,
    compacted: AtomicI64,
    batches: AtomicU64,
    operations: AtomicU64,
    largest_batch: AtomicU64,
}

impl SqliteStore {
    /// Opens (creating it if needed) the store in the SQLite file at `path`; its directory is
    /// created when missing. The revision, the keys and their history persist across opens.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_event_buffer(path, DEFAULT_EVENT_BUFFER)
    }

    /// As [`SqliteStore::open`], buffering `batches` committed batches for watchers (at least 1);
    /// a watcher further behind catches up from the log.
    pub fn open_with_event_buffer(path: &Path, batches: usize) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
        }
        let lock = lock_store(path)?;
        let conn = open_writer(path)?;
        let revision = read_meta(&conn, "revision").map_err(backend)?;
        let compacted = read_meta(&conn, "compacted").map_err(backend)?;
        let state = Arc::new(SharedState {
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            ..SharedState::default()
        });
        let (events, _) = broadcast::channel(batches.max(1));
        let (ops, queue) = mpsc::channel();
        let writer = Writer {
            conn,
            _lock: lock,
            revision,
            compacted,
            state: Arc::clone(&state),
            events: events.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || writer.run(&queue))
            .map_err(|e| StoreError::Backend(format!("starting the store writer: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                ops: Some(ops),
                writer: Some(writer),
                events,
                state,
                readers: Arc::new(ReadPool {
                    path: path.to_owned(),
                    idle: Mutex::new(Vec::new()),
                }),
            }),
        })
    }

    /// The revision at and below which history is forgotten (0 when never compacted).
    pub fn compacted_revision(&self) -> i64 {
        self.inner.state.compacted.load(Ordering::Acquire)
    }

    /// Counters of the writer thread.
    pub fn writer_stats(&self) -> WriterStats {
        let s = &self.inner.state;
        WriterStats {
            batches: s.batches.load(Ordering::Relaxed),
            operations: s.operations.load(Ordering::Relaxed),
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
        }
    }

    /// Keys under `prefix` as they were at `revision` (as [`Store::list`] otherwise): what a
    /// paginated list needs to return every page at the revision of its first page. Fails with
    /// Compacted below the compacted revision and FutureRevision above the current one.
    pub async fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: i64,
    ) -> Result<ListResult, StoreError> {
        let range = KeyRange::new(prefix, start_after);
        self.inner
            .readers
            .read(move |conn| list_at_revision(conn, &range, limit, Some(revision)))
            .await
    }

    /// Queues `op` to the writer and waits for its answer.
    async fn write<T>(
        &self,
        op: Op,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let ops = self
            .inner
            .ops
            .as_ref()
            .ok_or_else(|| StoreError::Backend("store is closing".to_owned()))?;
        ops.send(op)
            .map_err(|_| StoreError::Backend("store writer stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("store writer stopped before answering".to_owned()))?
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish its batch and exit; joining it closes the
        // database before a new open of the same file (a restart in one process) proceeds.
        drop(self.ops.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("store writer thread panicked");
        }
    }
}

impl Store for SqliteStore {
    async fn current_revision(&self) -> Result<i64, StoreError> {
        Ok(self.inner.state.revision.load(Ordering::Acquire))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.as_bytes().to_vec();
        self.inner
            .readers
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT key, value, create_revision, mod_revision FROM kv WHERE key = ?1",
                )
                .and_then(|mut stmt| stmt.query_row([key], kv_from_row).optional())
                .map_err(backend)?
                .transpose()
            })
            .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult, StoreError> {
        let range = KeyRange::new(prefix, start_after);
        self.inner
            .readers
            .read(move |conn| list_at_revision(conn, &range, limit, None))
            .await
    }

    async fn list_at(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: i64,
    ) -> Result<ListResult, StoreError> {
        SqliteStore::list_at(self, prefix, start_after, limit, revision).await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let op = Op::Create {
            key: key.to_owned(),
            value,
            reply,
        };
        self.write(op, answer).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<i64, StoreError> {
        let (reply, answer) = oneshot::channel();
        let op = Op::Update {
            key: key.to_owned(),
            value,
            expected,
            reply,
        };
        self.write(op, answer).await
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<i64>,
    ) -> Result<(KeyValue, i64), StoreError> {
        let (reply, answer) = oneshot::channel();
        let op = Op::Delete {
            key: key.to_owned(),
            expected,
            reply,
        };
        self.write(op, answer).await
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<WatchStream, StoreError> {
        // Revision 0 is before the first write: watching from any earlier one means the same.
        let after = after.max(0);
        // Subscribe before reading the log: every batch committed after the read below is then
        // in the channel, and the ones committed before it are in the log.
        let rx = self.inner.events.subscribe();
        let range = KeyRange::new(prefix, None);
        let first = {
            let range = range.clone();
            self.inner
                .readers
                .read(move |conn| read_log_chunk(conn, &range, after, None))
                .await?
        };
        let mut watch = Watch {
            readers: Arc::clone(&self.inner.readers),
            range,
            rx,
            cursor: after,
            mode: Mode::Live,
            buffer: VecDeque::new(),
            done: false,
        };
        watch.take_chunk(first);
        Ok(Box::pin(futures::stream::unfold(
            watch,
            |mut watch| async move {
                let item = watch.next_event().await?;
                Some((item, watch))
            },
        )))
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.write(Op::Compact { revision, reply }, answer).await
    }
}

fn backend(e: impl Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Takes the lock file next to the database (`<file>.lock`) for the life of the writer: two
/// writers on one file would each count revisions on their own. A separate file, because closing
/// any descriptor of the database would drop SQLite's own POSIX locks on it.
/// How often, and how far apart, taking the store's lock is tried again.
const LOCK_RETRIES: u32 = 20;
const LOCK_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

fn lock_store(path: &Path) -> Result<File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", lock_path.display())))?;
    // A child process between fork and exec shares every descriptor, the lock's included
    // (flock(2) locks belong to the open file description), until its exec closes it: a
    // store closed a moment ago may still look held. Such a hold lasts microseconds, so a
    // few short retries tell it from a store that is really open elsewhere.
    let mut tries = 0;
    let held = loop {
        match file.try_lock() {
            Err(TryLockError::WouldBlock) if tries < LOCK_RETRIES => {
                tries += 1;
                std::thread::sleep(LOCK_RETRY_DELAY);
            }
            other => break other,
        }
    };
    match held {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Backend(format!(
            "store {} is already open in another store or process",
            path.display()
        ))),
        Err(TryLockError::Error(e)) => Err(StoreError::Backend(format!(
            "locking {}: {e}",
            lock_path.display()
        ))),
    }
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)
        .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(backend)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "{}: journal_mode is {mode}, WAL is required",
            path.display()
        )));
    }
    // FULL: the WAL is fsynced at every commit, so an acknowledged write survives a power loss.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(backend)?;
    match version {
        0 => {
            let tx = conn.unchecked_transaction().map_err(backend)?;
            tx.execute_batch(SCHEMA).map_err(backend)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        SCHEMA_VERSION => {}
        other => {
            return Err(StoreError::Backend(format!(
                "{}: unknown store schema version {other}",
                path.display()
            )));
        }
    }
    Ok(conn)
}

fn read_meta(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |row| row.get(0))
}

fn key_from_bytes(bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes)
        .map_err(|e| StoreError::Backend(format!("stored key is not UTF-8: {e}")))
}

/// Reads `key, value, create_revision, mod_revision`.
fn kv_from_row(row: &Row<'_>) -> rusqlite::Result<Result<KeyValue, StoreError>> {
    let key: Vec<u8> = row.get(0)?;
    let value: Vec<u8> = row.get(1)?;
    let create_revision = row.get(2)?;
    let mod_revision = row.get(3)?;
    Ok(key_from_bytes(key).map(|key| KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
    }))
}

/// The smallest byte string greater than every key starting with `prefix` (etcd's range end for
/// a prefix); None when no such bound exists (empty prefix or all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Keys under a prefix, optionally strictly after a key, as SQL conditions on a `key` column.
/// Keys are stored as BLOBs so SQLite orders them bytewise, as etcd does.
#[derive(Debug, Clone)]
struct KeyRange {
    prefix: Vec<u8>,
    end: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
}

impl KeyRange {
    fn new(prefix: &str, start_after: Option<&str>) -> Self {
        Self {
            prefix: prefix.as_bytes().to_vec(),
            end: prefix_end(prefix.as_bytes()),
            after: start_after.map(|k| k.as_bytes().to_vec()),
        }
    }

    fn contains(&self, key: &str) -> bool {
        let key = key.as_bytes();
        key.starts_with(&self.prefix) && self.after.as_deref().is_none_or(|after| key > after)
    }

    /// Appends ` AND <column> ...` conditions to `sql` and their values to `args`.
    fn push_conditions(&self, column: &str, sql: &mut String, args: &mut Vec<Value>) {
        args.push(Value::Blob(self.prefix.clone()));
        sql.push_str(&format!(" AND {column} >= ?{}", args.len()));
        if let Some(end) = &self.end {
            args.push(Value::Blob(end.clone()));
            sql.push_str(&format!(" AND {column} < ?{}", args.len()));
        }
        if let Some(after) = &self.after {
            args.push(Value::Blob(after.clone()));
            sql.push_str(&format!(" AND {column} > ?{}", args.len()));
        }
    }
}

/// Lists `range` at `revision` (None: the current one) in one read transaction.
///
/// The value of a key at an older revision R is the previous value recorded by its first change
/// after R (absent when that change created it); keys unchanged since R have their current value.
fn list_at_revision(
    conn: &mut Connection,
    range: &KeyRange,
    limit: usize,
    revision: Option<i64>,
) -> Result<ListResult, StoreError> {
    // A deferred transaction's snapshot starts at its first read and holds for all the reads.
    let tx = conn.transaction().map_err(backend)?;
    let current = read_meta(&tx, "revision").map_err(backend)?;
    let compacted = read_meta(&tx, "compacted").map_err(backend)?;
    let revision = match revision {
        None => current,
        Some(r) if r > current => {
            return Err(StoreError::FutureRevision {
                requested: r,
                current,
            });
        }
        Some(r) if r < compacted => {
            return Err(StoreError::Compacted {
                requested: r,
                compacted,
            });
        }
        Some(r) => r,
    };
    let mut args = Vec::new();
    let mut sql = String::new();
    if revision == current {
        sql.push_str("SELECT key, value, create_revision, mod_revision FROM kv WHERE 1");
        range.push_conditions("key", &mut sql, &mut args);
    } else {
        args.push(Value::Integer(revision));
        sql.push_str("WITH first_change AS (SELECT key, MIN(revision) AS revision FROM log WHERE revision > ?1");
        range.push_conditions("key", &mut sql, &mut args);
        sql.push_str(
            " GROUP BY key) \
             SELECT key, value, create_revision, mod_revision FROM kv \
             WHERE key NOT IN (SELECT key FROM first_change)",
        );
        range.push_conditions("key", &mut sql, &mut args);
        sql.push_str(
            " UNION ALL \
             SELECT log.key, log.prev_value, log.prev_create_revision, log.prev_mod_revision \
             FROM first_change JOIN log ON log.revision = first_change.revision \
             WHERE log.prev_mod_revision IS NOT NULL",
        );
    }
    sql.push_str(" ORDER BY 1");
    if limit > 0 {
        // One more than asked tells whether more follow.
        args.push(Value::Integer(
            i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1,
        ));
        sql.push_str(&format!(" LIMIT ?{}", args.len()));
    }
    let mut stmt = tx.prepare_cached(&sql).map_err(backend)?;
    let mut items = stmt
        .query_map(params_from_iter(args), kv_from_row)
        .map_err(backend)?
        .map(|row| row.map_err(backend)?)
        .collect::<Result<Vec<_>, _>>()?;
    let more = limit > 0 && items.len() > limit;
    items.truncate(if more { limit } else { items.len() });
    Ok(ListResult {
        items,
        revision,
        more,
    })
}

/// One read of the log for a watch.
#[derive(Debug)]
struct LogChunk {
    /// Changes in the range, in revision order.
    events: Vec<WatchEvent>,
    /// Every revision up to this one has been read.
    covered: i64,
    /// The revision the catch-up this chunk belongs to runs to.
    until: i64,
}

/// Reads the changes in `range` after `cursor`, up to `until` (None: the current revision), at
/// most [`REPLAY_CHUNK`] of them, in one read transaction.
fn read_log_chunk(
    conn: &mut Connection,
    range: &KeyRange,
    cursor: i64,
    until: Option<i64>,
) -> Result<LogChunk, StoreError> {
    let tx = conn.transaction().map_err(backend)?;
    let compacted = read_meta(&tx, "compacted").map_err(backend)?;
    if cursor < compacted {
        return Err(StoreError::Compacted {
            requested: cursor,
            compacted,
        });
    }
    let until = match until {
        Some(until) => until,
        None => read_meta(&tx, "revision").map_err(backend)?,
    };
    let mut args = vec![Value::Integer(cursor), Value::Integer(until)];
    let mut sql =
        "SELECT revision, key, deleted, value, create_revision, prev_value, prev_create_revision, \
                   prev_mod_revision FROM log WHERE revision > ?1 AND revision <= ?2"
            .to_owned();
    range.push_conditions("key", &mut sql, &mut args);
    args.push(Value::Integer(REPLAY_CHUNK as i64));
    sql.push_str(&format!(" ORDER BY revision LIMIT ?{}", args.len()));
    let mut stmt = tx.prepare_cached(&sql).map_err(backend)?;
    let events = stmt
        .query_map(params_from_iter(args), event_from_row)
        .map_err(backend)?
        .map(|row| row.map_err(backend)?)
        .collect::<Result<Vec<_>, _>>()?;
    let covered = match events.last() {
        Some(last) if events.len() == REPLAY_CHUNK => last.revision(),
        _ => until.max(cursor),
    };
    Ok(LogChunk {
        events,
        covered,
        until,
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Result<WatchEvent, StoreError>> {
    let revision: i64 = row.get(0)?;
    let key: Vec<u8> = row.get(1)?;
    let deleted: bool = row.get(2)?;
    let value: Option<Vec<u8>> = row.get(3)?;
    let create_revision: i64 = row.get(4)?;
    let prev_value: Option<Vec<u8>> = row.get(5)?;
    let prev_create_revision: Option<i64> = row.get(6)?;
    let prev_mod_revision: Option<i64> = row.get(7)?;
    let key = match key_from_bytes(key) {
        Ok(key) => key,
        Err(e) => return Ok(Err(e)),
    };
    let prev = match (prev_value, prev_create_revision, prev_mod_revision) {
        (Some(value), Some(create_revision), Some(mod_revision)) => Some(KeyValue {
            key: key.clone(),
            value,
            create_revision,
            mod_revision,
        }),
        _ => None,
    };
    Ok(match (deleted, prev, value) {
        (true, Some(prev), _) => Ok(WatchEvent::Delete { prev, revision }),
        (false, prev, Some(value)) => Ok(WatchEvent::Put {
            kv: KeyValue {
                key,
                value,
                create_revision,
                mod_revision: revision,
            },
            prev,
        }),
        _ => Err(StoreError::Backend(format!(
            "malformed log row at revision {revision}"
        ))),
    })
}

/// Read-only connections, opened on demand and reused.
#[derive(Debug)]
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    /// Runs `f` on a read connection on the blocking pool.
    async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.take()?;
            let out = f(&mut conn);
            pool.give_back(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store read task: {e}")))?
    }

    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(conn);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| {
            StoreError::Backend(format!("opening {} for reading: {e}", self.path.display()))
        })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
    }
}

/// Where a watch takes its next events from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// From the broadcast of committed batches.
    Live,
    /// From the log, up to `until` (None: the revision current at the next read).
    CatchUp { until: Option<i64> },
}

/// The state of one watch stream.
#[derive(Debug)]
struct Watch {
    readers: Arc<ReadPool>,
    range: KeyRange,
    rx: broadcast::Receiver<EventBatch>,
    /// Every change at or below this revision has been delivered (or filtered out).
    cursor: i64,
    mode: Mode,
    buffer: VecDeque<WatchEvent>,
    done: bool,
}

impl Watch {
    fn take_chunk(&mut self, chunk: LogChunk) {
        self.buffer.extend(chunk.events);
        self.cursor = self.cursor.max(chunk.covered);
        self.mode = if self.cursor < chunk.until {
            Mode::CatchUp {
                until: Some(chunk.until),
            }
        } else {
            Mode::Live
        };
    }

    async fn next_event(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            match self.mode {
                Mode::CatchUp { until } => {
                    let range = self.range.clone();
                    let cursor = self.cursor;
                    match self
                        .readers
                        .read(move |conn| read_log_chunk(conn, &range, cursor, until))
                        .await
                    {
                        Ok(chunk) => self.take_chunk(chunk),
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e));
                        }
                    }
                }
                Mode::Live => match self.rx.recv().await {
                    Ok(batch) => self.take_live(&batch),
                    // Batches were dropped for this receiver: they are in the log.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.mode = Mode::CatchUp { until: None }
                    }
                    // The store is gone.
                    Err(broadcast::error::RecvError::Closed) => self.done = true,
                },
            }
        }
    }

    fn take_live(&mut self, batch: &[WatchEvent]) {
        for event in batch {
            let revision = event.revision();
            if revision <= self.cursor {
                continue;
            }
            if revision != self.cursor + 1 {
                // Revisions are dense, so a jump means changes this watch has not seen; read
                // them, and the rest of this batch, from the log.
                self.mode = Mode::CatchUp { until: None };
                return;
            }
            self.cursor = revision;
            let key = match event {
                WatchEvent::Put { kv, .. } => &kv.key,
                WatchEvent::Delete { prev, .. } => &prev.key,
            };
            if self.range.contains(key) {
                self.buffer.push_back(event.clone());
            }
        }
    }
}

/// A write queued to the writer thread with where its answer goes.
#[derive(Debug)]
enum Op {
    Create {
        key: String,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: i64,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
    Delete {
        key: String,
        expected: Option<i64>,
        reply: oneshot::Sender<Result<(KeyValue, i64), StoreError>>,
    },
    Compact {
        revision: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Op {
    /// Key and value bytes the operation writes.
    fn payload_len(&self) -> usize {
        match self {
            Self::Create { key, value, .. } | Self::Update { key, value, .. } => {
                key.len() + value.len()
            }
            Self::Delete { key, .. } => key.len(),
            Self::Compact { .. } => 0,
        }
    }
}

/// An applied operation's answer, sent once its batch commits (or fails).
#[derive(Debug)]
enum Answer {
    Revision(
        oneshot::Sender<Result<i64, StoreError>>,
        Result<i64, StoreError>,
    ),
    Deleted(
        oneshot::Sender<Result<(KeyValue, i64), StoreError>>,
        Result<(KeyValue, i64), StoreError>,
    ),
    Compacted(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
}

impl Answer {
    /// The same answer replaced by a failure of the whole batch.
    fn failed(self, reason: &str) -> Self {
        let err = || StoreError::Backend(reason.to_owned());
        match self {
            Self::Revision(reply, _) => Self::Revision(reply, Err(err())),
            Self::Deleted(reply, _) => Self::Deleted(reply, Err(err())),
            Self::Compacted(reply, _) => Self::Compacted(reply, Err(err())),
        }
    }

    fn send(self) {
        // A caller that stopped waiting does not want the answer.
        let _ = match self {
            Self::Revision(reply, result) => reply.send(result).map_err(drop),
            Self::Deleted(reply, result) => reply.send(result).map_err(drop),
            Self::Compacted(reply, result) => reply.send(result).map_err(drop),
        };
    }
}

/// What a batch has changed so far, before it commits.
#[derive(Debug)]
struct Pending {
    revision: i64,
    compacted: i64,
    events: Vec<WatchEvent>,
}

/// The owner of the write connection.
#[derive(Debug)]
struct Writer {
    conn: Connection,
    /// Held while the writer runs: no other writer on the same file.
    _lock: File,
    /// Committed revision.
    revision: i64,
    compacted: i64,
    state: Arc<SharedState>,
    events: broadcast::Sender<EventBatch>,
}

impl Writer {
    fn run(mut self, queue: &mpsc::Receiver<Op>) {
        let mut trim = TrimPolicy::default();
        loop {
            let first = match trim.idle_deadline() {
                None => match queue.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
                // After a burst of writes, an idle spell gives the freed heap back.
                Some(idle) => match queue.recv_timeout(idle) {
                    Ok(op) => op,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        trim.idle();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            // Everything queued while the previous batch was being committed goes into this one.
            let mut bytes = first.payload_len();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(op) => {
                        bytes += op.payload_len();
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            trim.wrote(batch.len() as u64);
            self.commit_batch(batch);
        }
    }

    fn commit_batch(&mut self, batch: Vec<Op>) {
        let size = batch.len() as u64;
        self.state.batches.fetch_add(1, Ordering::Relaxed);
        self.state.operations.fetch_add(size, Ordering::Relaxed);
        self.state.largest_batch.fetch_max(size, Ordering::Relaxed);

        let (answers, outcome) = self.apply_batch(batch);
        match outcome {
            Ok(pending) => {
                self.revision = pending.revision;
                self.compacted = pending.compacted;
                self.state
                    .compacted
                    .store(pending.compacted, Ordering::Release);
                self.state
                    .revision
                    .store(pending.revision, Ordering::Release);
                if !pending.events.is_empty() {
                    // No receiver (no watch open) is fine.
                    let _ = self.events.send(pending.events.into());
                }
                answers.into_iter().for_each(Answer::send);
            }
            Err(e) => {
                tracing::error!(error = %e, "store write batch failed and was rolled back");
                let reason = format!("store write failed: {e}");
                answers.into_iter().for_each(|a| a.failed(&reason).send());
            }
        }
    }

    /// Applies `batch` in one transaction and commits it; the answers are only valid once the
    /// outcome is Ok.
    fn apply_batch(&mut self, batch: Vec<Op>) -> (Vec<Answer>, rusqlite::Result<Pending>) {
        let mut answers = Vec::with_capacity(batch.len());
        let mut pending = Pending {
            revision: self.revision,
            compacted: self.compacted,
            events: Vec::new(),
        };
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                answers.extend(batch.into_iter().map(|op| not_applied(op, &e)));
                return (answers, Err(e));
            }
        };
        let mut fatal = None;
        for op in batch {
            if let Some(e) = &fatal {
                answers.push(not_applied(op, e));
                continue;
            }
            answers.push(match op {
                Op::Create { key, value, reply } => Answer::Revision(
                    reply,
                    settle(create(&tx, &key, value, &mut pending), &mut fatal),
                ),
                Op::Update {
                    key,
                    value,
                    expected,
                    reply,
                } => Answer::Revision(
                    reply,
                    settle(update(&tx, &key, value, expected, &mut pending), &mut fatal),
                ),
                Op::Delete {
                    key,
                    expected,
                    reply,
                } => Answer::Deleted(
                    reply,
                    settle(delete(&tx, &key, expected, &mut pending), &mut fatal),
                ),
                Op::Compact { revision, reply } => Answer::Compacted(
                    reply,
                    settle(compact(&tx, revision, &mut pending), &mut fatal),
                ),
            });
        }
        if let Some(e) = fatal {
            return (answers, Err(e));
        }
        let finish = || -> rusqlite::Result<()> {
            let mut set = tx.prepare_cached("UPDATE meta SET value = ?2 WHERE name = ?1")?;
            if pending.revision != self.revision {
                set.execute(params!["revision", pending.revision])?;
            }
            if pending.compacted != self.compacted {
                set.execute(params!["compacted", pending.compacted])?;
            }
            Ok(())
        };
        let outcome = finish().and_then(|()| tx.commit());
        (answers, outcome.map(|()| pending))
    }
}

/// The answer to an operation of a batch that failed before reaching it.
fn not_applied(op: Op, e: &rusqlite::Error) -> Answer {
    let err = || StoreError::Backend(format!("store write failed: {e}"));
    match op {
        Op::Create { reply, .. } | Op::Update { reply, .. } => Answer::Revision(reply, Err(err())),
        Op::Delete { reply, .. } => Answer::Deleted(reply, Err(err())),
        Op::Compact { reply, .. } => Answer::Compacted(reply, Err(err())),
    }
}

/// Unwraps an operation's database error into `fatal` (aborting the batch).
fn settle<T>(
    result: rusqlite::Result<Result<T, StoreError>>,
    fatal: &mut Option<rusqlite::Error>,
) -> Result<T, StoreError> {
    result.unwrap_or_else(|e| {
        let answer = Err(backend(&e));
        *fatal = Some(e);
        answer
    })
}

/// The current row of `key` inside the write transaction.
fn current(tx: &Connection, key: &str) -> rusqlite::Result<Option<KeyValue>> {
    tx.prepare_cached("SELECT value, create_revision, mod_revision FROM kv WHERE key = ?1")?
        .query_row([key.as_bytes()], |row| {
            Ok(KeyValue {
                key: key.to_owned(),
                value: row.get(0)?,
                create_revision: row.get(1)?,
                mod_revision: row.get(2)?,
            })
        })
        .optional()
}

/// Appends a change to the log.
fn log_change(
    tx: &Connection,
    revision: i64,
    key: &str,
    value: Option<&[u8]>,
    create_revision: i64,
    prev: Option<&KeyValue>,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO log (revision, key, deleted, value, create_revision, prev_value, prev_create_revision, \
         prev_mod_revision) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        revision,
        key.as_bytes(),
        value.is_none(),
        value,
        create_revision,
        prev.map(|p| p.value.as_slice()),
        prev.map(|p| p.create_revision),
        prev.map(|p| p.mod_revision),
    ])?;
    Ok(())
}

fn create(
    tx: &Connection,
    key: &str,
    value: Vec<u8>,
    pending: &mut Pending,
) -> rusqlite::Result<Result<i64, StoreError>> {
    if current(tx, key)?.is_some() {
        return Ok(Err(StoreError::AlreadyExists(key.to_owned())));
    }
    let revision = pending.revision + 1;
    tx.prepare_cached(
        "INSERT INTO kv (key, value, create_revision, mod_revision) VALUES (?1, ?2, ?3, ?3)",
    )?
    .execute(params![key.as_bytes(), value, revision])?;
    log_change(tx, revision, key, Some(value.as_slice()), revision, None)?;
    pending.revision = revision;
    pending.events.push(WatchEvent::Put {
        kv: KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        },
        prev: None,
    });
    Ok(Ok(revision))
}

fn update(
    tx: &Connection,
    key: &str,
    value: Vec<u8>,
    expected: i64,
    pending: &mut Pending,
) -> rusqlite::Result<Result<i64, StoreError>> {
    let Some(prev) = current(tx, key)? else {
        return Ok(Err(StoreError::NotFound(key.to_owned())));
    };
    if prev.mod_revision != expected {
        return Ok(Err(StoreError::Conflict {
            key: key.to_owned(),
            expected,
            found: prev.mod_revision,
        }));
    }
    let revision = pending.revision + 1;
    tx.prepare_cached("UPDATE kv SET value = ?2, mod_revision = ?3 WHERE key = ?1")?
        .execute(params![key.as_bytes(), value, revision])?;
    log_change(
        tx,
        revision,
        key,
        Some(value.as_slice()),
        prev.create_revision,
        Some(&prev),
    )?;
    pending.revision = revision;
    pending.events.push(WatchEvent::Put {
        kv: KeyValue {
            key: key.to_owned(),
            value,
            create_revision: prev.create_revision,
            mod_revision: revision,
        },
        prev: Some(prev),
    });
    Ok(Ok(revision))
}

fn delete(
    tx: &Connection,
    key: &str,
    expected: Option<i64>,
    pending: &mut Pending,
) -> rusqlite::Result<Result<(KeyValue, i64), StoreError>> {
    let Some(prev) = current(tx, key)? else {
        return Ok(Err(StoreError::NotFound(key.to_owned())));
    };
    if let Some(expected) = expected
        && prev.mod_revision != expected
    {
        return Ok(Err(StoreError::Conflict {
            key: key.to_owned(),
            expected,
            found: prev.mod_revision,
        }));
    }
    let revision = pending.revision + 1;
    tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?
        .execute([key.as_bytes()])?;
    log_change(tx, revision, key, None, prev.create_revision, Some(&prev))?;
    pending.revision = revision;
    pending.events.push(WatchEvent::Delete {
        prev: prev.clone(),
        revision,
    });
    Ok(Ok((prev, revision)))
}

/// Drops the log at and below `revision`. As in etcd, compaction is not a write (the revision
/// does not move), compacting above the current revision is FutureRevision and compacting at or
/// below the compacted revision is Compacted.
fn compact(
    tx: &Connection,
    revision: i64,
    pending: &mut Pending,
) -> rusqlite::Result<Result<(), StoreError>> {
    if revision > pending.revision {
        return Ok(Err(StoreError::FutureRevision {
            requested: revision,
            current: pending.revision,
        }));
    }
    if revision <= pending.compacted {
        return Ok(Err(StoreError::Compacted {
            requested: revision,
            compacted: pending.compacted,
        }));
    }
    tx.prepare_cached("DELETE FROM log WHERE revision <= ?1")?
        .execute([revision])?;
    pending.compacted = revision;
    Ok(Ok(()))
}
