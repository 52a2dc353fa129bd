//! Stored responses in SQLite, in `--data-dir` beside the Batch API's
//! database (`kiln-responses.sqlite`, WAL). One row per response: its
//! owner (see `auth::owner_of`), the response object, the input items it
//! was created from, and the conversation so far in the chat template's
//! terms, which `previous_response_id` continues.
//!
//! Like the batch database, the connection holds SQLite's exclusive lock:
//! one kiln process per data directory. With `--store postgres://…` the
//! rows live in the shared store's `kiln_responses` table instead, so every
//! replica serves every stored response.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("responses database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("responses database: bad stored value: {0}")]
    Corrupt(String),
    /// The shared store failed or cannot be reached.
    #[error(transparent)]
    Shared(#[from] crate::pgstore::PgError),
}

impl StoreError {
    /// Whether the store is unreachable for now (503, worth a retry).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Shared(e) if e.is_unavailable())
    }
}

/// One stored response.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub id: String,
    pub owner: String,
    pub created_at: u64,
    /// The response object as it was answered.
    pub response: Value,
    /// This request's input items, normalized (each with its `id`).
    pub input_items: Vec<Value>,
    /// Template messages of the whole conversation: every earlier turn,
    /// this request's input and this response's output.
    pub history: Vec<Value>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    history TEXT NOT NULL
);
";

/// Stored responses: SQLite in `--data-dir`, or the shared store.
pub enum ResponseStore {
    Sqlite(Mutex<Connection>),
    Postgres(crate::pgstore::SharedStore),
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl ResponseStore {
    /// Opens (creating) `dir/kiln-responses.sqlite`.
    pub fn open(dir: &Path) -> Result<ResponseStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Corrupt(format!("{}: {e}", dir.display())))?;
        let conn = Connection::open(dir.join("kiln-responses.sqlite"))?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(ResponseStore::Sqlite(Mutex::new(conn)))
    }

    /// Over the shared store (its schema is created by `SharedStore::init`).
    pub fn shared(store: crate::pgstore::SharedStore) -> ResponseStore {
        ResponseStore::Postgres(store)
    }

    fn conn(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores (or replaces) a response.
    pub async fn insert(&self, r: &StoredResponse) -> Result<(), StoreError> {
        let items = Value::Array(r.input_items.clone()).to_string();
        let history = Value::Array(r.history.clone()).to_string();
        let m = match self {
            ResponseStore::Sqlite(m) => m,
            ResponseStore::Postgres(pg) => {
                let c = pg.client().await?;
                c.execute(
                    "INSERT INTO kiln_responses (id, owner, created_at, response, input_items, history) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, created_at = EXCLUDED.created_at, response = EXCLUDED.response,
                     input_items = EXCLUDED.input_items, history = EXCLUDED.history",
                    &[&r.id, &r.owner, &(r.created_at as i64), &r.response.to_string(), &items, &history],
                )
                .await
                .map_err(crate::pgstore::PgError::from)?;
                return Ok(());
            }
        };
        Self::conn(m).execute(
            "INSERT OR REPLACE INTO responses (id, owner, created_at, response, input_items, history) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![r.id, r.owner, r.created_at as i64, r.response.to_string(), items, history],
        )?;
        Ok(())
    }

    /// The response `id` if `owner` owns it (another owner's is as absent).
    pub async fn get(&self, id: &str, owner: &str) -> Result<Option<StoredResponse>, StoreError> {
        let m = match self {
            ResponseStore::Sqlite(m) => m,
            ResponseStore::Postgres(pg) => {
                let c = pg.client().await?;
                let row = c
                    .query_opt(
                        "SELECT id, owner, created_at, response, input_items, history FROM kiln_responses WHERE id = $1 AND owner = $2",
                        &[&id, &owner],
                    )
                    .await
                    .map_err(crate::pgstore::PgError::from)?;
                let Some(r) = row else { return Ok(None) };
                return Ok(Some(StoredResponse {
                    id: r.get(0),
                    owner: r.get(1),
                    created_at: r.get::<_, i64>(2) as u64,
                    response: decode(r.get(3))?,
                    input_items: decode(r.get(4))?,
                    history: decode(r.get(5))?,
                }));
            }
        };
        let row = Self::conn(m)
            .query_row(
                "SELECT id, owner, created_at, response, input_items, history FROM responses WHERE id = ?1 AND owner = ?2",
                [id, owner],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, owner, created_at, response, items, history)) = row else { return Ok(None) };
        Ok(Some(StoredResponse {
            id,
            owner,
            created_at: created_at as u64,
            response: decode(&response)?,
            input_items: decode(&items)?,
            history: decode(&history)?,
        }))
    }

    /// Deletes `id` if `owner` owns it; whether it did.
    pub async fn delete(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        let m = match self {
            ResponseStore::Sqlite(m) => m,
            ResponseStore::Postgres(pg) => {
                let c = pg.client().await?;
                let n = c
                    .execute("DELETE FROM kiln_responses WHERE id = $1 AND owner = $2", &[&id, &owner])
                    .await
                    .map_err(crate::pgstore::PgError::from)?;
                return Ok(n > 0);
            }
        };
        Ok(Self::conn(m).execute("DELETE FROM responses WHERE id = ?1 AND owner = ?2", [id, owner])? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn rows_round_trip_per_owner_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let row = StoredResponse {
            id: "resp_1".into(),
            owner: "key:a".into(),
            created_at: 7,
            response: json!({"id": "resp_1", "output": []}),
            input_items: vec![json!({"type": "message", "id": "msg_1"})],
            history: vec![json!({"role": "user", "content": "hi"})],
        };
        {
            let store = ResponseStore::open(dir.path()).unwrap();
            store.insert(&row).await.unwrap();
            assert_eq!(store.get("resp_1", "key:b").await.unwrap(), None);
            assert!(!store.delete("resp_1", "key:b").await.unwrap());
        }
        let store = ResponseStore::open(dir.path()).unwrap();
        assert_eq!(store.get("resp_1", "key:a").await.unwrap(), Some(row));
        assert!(store.delete("resp_1", "key:a").await.unwrap());
        assert_eq!(store.get("resp_1", "key:a").await.unwrap(), None);
    }
}
