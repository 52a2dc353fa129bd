//! Batch-API metadata in SQLite (WAL, synchronous=FULL): files and batches.
//! Request results are not here: they live in append-only files (`sink`).
//!
//! The connection holds SQLite's exclusive lock for its whole life, so two
//! kiln processes can never drive the same data directory's batches.
//!
//! `BatchStore` is what the routes and the supervisor use: this SQLite
//! store, or the shared PostgreSQL store of `pg.rs` (`--store`).

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{Map, Value};

use super::wire::{BatchErrors, BatchObject, BatchStatus, FileObject, RequestCounts};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("batch database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the batch database {0} is in use by another kiln process (give each server its own --data-dir)")]
    Locked(String),
    #[error("batch database: bad stored value: {0}")]
    Corrupt(String),
    /// The shared store (`--store`) failed or cannot be reached.
    #[error(transparent)]
    Shared(#[from] crate::pgstore::PgError),
}

impl StoreError {
    /// Whether the store is unreachable for now (503, worth a retry).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Shared(e) if e.is_unavailable())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileRow {
    pub id: String,
    /// Who may see it (see `http::owner_of`).
    pub owner: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: u64,
    pub created_at: u64,
}

impl FileRow {
    pub fn to_object(&self) -> FileObject {
        FileObject {
            id: self.id.clone(),
            object: "file".into(),
            bytes: self.bytes,
            created_at: self.created_at,
            expires_at: None,
            filename: self.filename.clone(),
            purpose: self.purpose.clone(),
            status: "processed".into(),
            status_details: None,
        }
    }
}

/// A batch row: the wire object plus its owner.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    pub owner: String,
    pub object: BatchObject,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    object TEXT NOT NULL,
    status TEXT NOT NULL,
    input_file_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_status ON batches(status);
";

pub struct Store {
    conn: Connection,
}

fn file_row(r: &Row<'_>) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        id: r.get("id")?,
        owner: r.get("owner")?,
        filename: r.get("filename")?,
        purpose: r.get("purpose")?,
        bytes: r.get::<_, i64>("bytes")? as u64,
        created_at: r.get::<_, i64>("created_at")? as u64,
    })
}

fn batch_row(r: &Row<'_>) -> rusqlite::Result<(String, String)> {
    Ok((r.get("owner")?, r.get("object")?))
}

fn decode(raw: (String, String)) -> Result<BatchRow, StoreError> {
    let object = serde_json::from_str(&raw.1).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(BatchRow { owner: raw.0, object })
}

/// One page of rows (newest first unless `ascending`) and whether more follow.
fn page<T>(mut rows: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}

impl Store {
    /// Opens (creating) the database and takes its exclusive lock.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::ZERO)?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        let locked = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Locked(path.display().to_string())
            }
            _ => StoreError::Sql(e),
        };
        conn.pragma_update(None, "journal_mode", "WAL").map_err(locked)?;
        conn.execute_batch("BEGIN IMMEDIATE; COMMIT;").map_err(locked)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    pub fn insert_file(&self, f: &FileRow) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO files (id, owner, filename, purpose, bytes, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![f.id, f.owner, f.filename, f.purpose, f.bytes as i64, f.created_at as i64],
        )?;
        Ok(())
    }

    pub fn file(&self, id: &str) -> Result<Option<FileRow>, StoreError> {
        Ok(self.conn.query_row("SELECT * FROM files WHERE id = ?1", [id], file_row).optional()?)
    }

    /// `owner`'s files, newest first (or oldest first when `ascending`),
    /// after the file `after` in that order.
    pub fn list_files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
        ascending: bool,
    ) -> Result<(Vec<FileRow>, bool), StoreError> {
        let (cmp, dir) = if ascending { (">", "ASC") } else { ("<", "DESC") };
        let sql = format!(
            "SELECT * FROM files WHERE owner = ?1 AND (?2 IS NULL OR purpose = ?2)
             AND (?3 IS NULL OR seq {cmp} (SELECT seq FROM files WHERE id = ?3)) ORDER BY seq {dir} LIMIT ?4"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![owner, purpose, after, limit as i64 + 1], file_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(page(rows, limit))
    }

    pub fn delete_file(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM files WHERE id = ?1", [id])? > 0)
    }

    pub fn file_ids(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id FROM files")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// An active batch reading `file_id`, if any.
    pub fn batch_using_file(&self, file_id: &str) -> Result<Option<String>, StoreError> {
        let active = active_statuses();
        let sql = format!("SELECT id FROM batches WHERE input_file_id = ?1 AND status IN ({active}) LIMIT 1");
        Ok(self.conn.query_row(&sql, [file_id], |r| r.get(0)).optional()?)
    }

    pub fn insert_batch(&self, b: &BatchRow) -> Result<(), StoreError> {
        let o = &b.object;
        let json = serde_json::to_string(o).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn.execute(
            "INSERT INTO batches (id, owner, object, status, input_file_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![o.id, b.owner, json, o.status.as_str(), o.input_file_id],
        )?;
        Ok(())
    }

    pub fn batch(&self, id: &str) -> Result<Option<BatchRow>, StoreError> {
        let raw = self.conn.query_row("SELECT owner, object FROM batches WHERE id = ?1", [id], batch_row).optional()?;
        raw.map(decode).transpose()
    }

    /// `owner`'s batches, newest first, after the batch `after`.
    pub fn list_batches(&self, owner: &str, after: Option<&str>, limit: usize) -> Result<(Vec<BatchRow>, bool), StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT owner, object FROM batches WHERE owner = ?1
             AND (?2 IS NULL OR seq < (SELECT seq FROM batches WHERE id = ?2)) ORDER BY seq DESC LIMIT ?3",
        )?;
        let raw = stmt.query_map(params![owner, after, limit as i64 + 1], batch_row)?.collect::<Result<Vec<_>, _>>()?;
        let rows = raw.into_iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        Ok(page(rows, limit))
    }

    /// Every batch the worker still owns, oldest first.
    pub fn active_batches(&self) -> Result<Vec<BatchRow>, StoreError> {
        let sql = format!("SELECT owner, object FROM batches WHERE status IN ({}) ORDER BY seq ASC", active_statuses());
        let mut stmt = self.conn.prepare(&sql)?;
        let raw = stmt.query_map([], batch_row)?.collect::<Result<Vec<_>, _>>()?;
        raw.into_iter().map(decode).collect()
    }

    /// Rewrites a batch's object if its stored status is still `from`
    /// (status changes race with cancel requests). Returns whether it did.
    pub fn update_batch(&self, o: &BatchObject, from: BatchStatus) -> Result<bool, StoreError> {
        let json = serde_json::to_string(o).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let n = self.conn.execute(
            "UPDATE batches SET object = ?2, status = ?3 WHERE id = ?1 AND status = ?4",
            params![o.id, json, o.status.as_str(), from.as_str()],
        )?;
        Ok(n > 0)
    }

    /// Registers result files and moves the batch from `from` to its final
    /// state, in one transaction: both happen or neither. Returns whether
    /// the batch was still in `from`.
    pub fn finish_batch(&mut self, o: &BatchObject, from: BatchStatus, files: &[FileRow]) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let json = serde_json::to_string(o).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let n = tx.execute(
            "UPDATE batches SET object = ?2, status = ?3 WHERE id = ?1 AND status = ?4",
            params![o.id, json, o.status.as_str(), from.as_str()],
        )?;
        if n == 0 {
            return Ok(false);
        }
        for f in files {
            tx.execute(
                "INSERT OR REPLACE INTO files (id, owner, filename, purpose, bytes, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![f.id, f.owner, f.filename, f.purpose, f.bytes as i64, f.created_at as i64],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }
}

/// Where batch-API state lives: SQLite under `--data-dir` (one server,
/// bytes as files) or the shared PostgreSQL store (replicas, bytes in the
/// database). Methods are async for the latter; the SQLite ones run
/// inline, as before.
pub enum BatchStore {
    /// `--data-dir/kiln-batch.sqlite`, exclusively locked (one server).
    Sqlite(std::sync::Mutex<Store>),
    /// `--store postgres://…`, shared by replicas.
    Postgres(super::pg::PgBatchStore),
}

impl BatchStore {
    fn sqlite(m: &std::sync::Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The SQLite store, if that is the one.
    pub fn local(&self) -> Option<std::sync::MutexGuard<'_, Store>> {
        match self {
            BatchStore::Sqlite(m) => Some(Self::sqlite(m)),
            BatchStore::Postgres(_) => None,
        }
    }

    /// The shared store, if that is the one.
    pub fn shared(&self) -> Option<&super::pg::PgBatchStore> {
        match self {
            BatchStore::Sqlite(_) => None,
            BatchStore::Postgres(p) => Some(p),
        }
    }

    /// A file's metadata.
    pub async fn file(&self, id: &str) -> Result<Option<FileRow>, StoreError> {
        match self {
            BatchStore::Sqlite(m) => Self::sqlite(m).file(id),
            BatchStore::Postgres(p) => Ok(p.file(id).await?),
        }
    }

    /// See `Store::list_files`.
    pub async fn list_files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
        ascending: bool,
    ) -> Result<(Vec<FileRow>, bool), StoreError> {
        match self {
            BatchStore::Sqlite(m) => Self::sqlite(m).list_files(owner, purpose, after, limit, ascending),
            BatchStore::Postgres(p) => Ok(p.list_files(owner, purpose, after, limit, ascending).await?),
        }
    }

    /// Deletes a file's record unless an active batch reads it: then
    /// `Err(batch id)`. Ok(whether a record went).
    pub async fn delete_file(&self, id: &str) -> Result<Result<bool, String>, StoreError> {
        match self {
            BatchStore::Sqlite(m) => {
                let store = Self::sqlite(m);
                if let Some(batch) = store.batch_using_file(id)? {
                    return Ok(Err(batch));
                }
                Ok(Ok(store.delete_file(id)?))
            }
            BatchStore::Postgres(p) => Ok(p.delete_file(id).await?),
        }
    }

    /// Records a new batch.
    pub async fn insert_batch(&self, b: &BatchRow) -> Result<(), StoreError> {
        match self {
            BatchStore::Sqlite(m) => Self::sqlite(m).insert_batch(b),
            BatchStore::Postgres(p) => Ok(p.insert_batch(b).await?),
        }
    }

    /// A batch (with the shared store, a running batch's counts are its
    /// lines' so far).
    pub async fn batch(&self, id: &str) -> Result<Option<BatchRow>, StoreError> {
        match self {
            BatchStore::Sqlite(m) => Self::sqlite(m).batch(id),
            BatchStore::Postgres(p) => Ok(p.batch(id).await?),
        }
    }

    /// See `Store::list_batches`.
    pub async fn list_batches(&self, owner: &str, after: Option<&str>, limit: usize) -> Result<(Vec<BatchRow>, bool), StoreError> {
        match self {
            BatchStore::Sqlite(m) => Self::sqlite(m).list_batches(owner, after, limit),
            BatchStore::Postgres(p) => Ok(p.list_batches(owner, after, limit).await?),
        }
    }

    /// Every batch not final yet, oldest first.
    pub async fn active_batches(&self) -> Result<Vec<BatchRow>, StoreError> {
        match self {
            BatchStore::Sqlite(m) => Self::sqlite(m).active_batches(),
            BatchStore::Postgres(p) => Ok(p.active_batches().await?),
        }
    }

    /// See `Store::update_batch`.
    pub async fn update_batch(&self, o: &BatchObject, from: BatchStatus) -> Result<bool, StoreError> {
        match self {
            BatchStore::Sqlite(m) => Self::sqlite(m).update_batch(o, from),
            BatchStore::Postgres(p) => Ok(p.update_batch(o, from).await?),
        }
    }
}

fn active_statuses() -> String {
    let active: Vec<String> = BatchStatus::ALL.iter().filter(|s| s.is_active()).map(|s| format!("'{}'", s.as_str())).collect();
    active.join(", ")
}

/// A new batch object in `validating`.
pub fn new_batch(id: String, endpoint: &str, input_file_id: &str, metadata: Option<Map<String, Value>>, now: u64) -> BatchObject {
    BatchObject {
        id,
        object: "batch".into(),
        endpoint: endpoint.into(),
        errors: None::<BatchErrors>,
        input_file_id: input_file_id.into(),
        completion_window: "24h".into(),
        status: BatchStatus::Validating,
        output_file_id: None,
        error_file_id: None,
        created_at: now,
        in_progress_at: None,
        expires_at: Some(now + 24 * 3600),
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        request_counts: RequestCounts::default(),
        metadata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, owner: &str) -> FileRow {
        FileRow { id: id.into(), owner: owner.into(), filename: "in.jsonl".into(), purpose: "batch".into(), bytes: 10, created_at: 1 }
    }

    #[test]
    fn files_pages_and_owners() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).unwrap();
        for i in 0..5 {
            store.insert_file(&file(&format!("file-{i}"), if i == 2 { "bob" } else { "alice" })).unwrap();
        }
        let ids = |rows: &[FileRow]| rows.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        let (rows, more) = store.list_files("alice", None, None, 2, false).unwrap();
        assert_eq!((ids(&rows), more), (vec!["file-4".to_string(), "file-3".into()], true));
        let (rows, more) = store.list_files("alice", None, Some("file-3"), 2, false).unwrap();
        assert_eq!((ids(&rows), more), (vec!["file-1".to_string(), "file-0".into()], false));
        let (rows, _) = store.list_files("alice", None, None, 10, true).unwrap();
        assert_eq!(ids(&rows), ["file-0", "file-1", "file-3", "file-4"]);
        assert!(store.list_files("alice", Some("batch_output"), None, 10, false).unwrap().0.is_empty());
        assert_eq!(store.file("file-2").unwrap().unwrap().owner, "bob");
        assert!(store.delete_file("file-2").unwrap());
        assert!(store.file("file-2").unwrap().is_none());
    }

    #[test]
    fn batches_round_trip_and_activity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut store = Store::open(&path).unwrap();
        let mut b = new_batch("batch_1".into(), "/v1/completions", "file-1", None, 100);
        store.insert_batch(&BatchRow { owner: "alice".into(), object: b.clone() }).unwrap();
        store.insert_batch(&BatchRow { owner: "alice".into(), object: new_batch("batch_2".into(), "/v1/completions", "file-2", None, 101) }).unwrap();
        assert_eq!(store.batch_using_file("file-1").unwrap().as_deref(), Some("batch_1"));
        b.status = BatchStatus::Completed;
        b.output_file_id = Some("file-out".into());
        assert!(!store.finish_batch(&b, BatchStatus::InProgress, &[file("file-out", "alice")]).unwrap(), "stale status");
        assert!(store.file("file-out").unwrap().is_none());
        assert!(store.finish_batch(&b, BatchStatus::Validating, &[file("file-out", "alice")]).unwrap());
        assert_eq!(store.batch("batch_1").unwrap().unwrap().object, b);
        assert!(store.file("file-out").unwrap().is_some());
        assert_eq!(store.batch_using_file("file-1").unwrap(), None);
        let active: Vec<String> = store.active_batches().unwrap().into_iter().map(|r| r.object.id).collect();
        assert_eq!(active, ["batch_2"]);
        let (page, more) = store.list_batches("alice", None, 1).unwrap();
        assert_eq!((page[0].object.id.as_str(), more), ("batch_2", true));
        let (page, more) = store.list_batches("alice", Some("batch_2"), 1).unwrap();
        assert_eq!((page[0].object.id.as_str(), more), ("batch_1", false));
        assert!(store.list_batches("bob", None, 10).unwrap().0.is_empty());

        // A second process (connection) cannot take the same database.
        assert!(matches!(Store::open(&path), Err(StoreError::Locked(_))));
        drop(store);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.batch("batch_1").unwrap().unwrap().object.status, BatchStatus::Completed);
    }
}
