//! Stored responses in SQLite, in `--data-dir` beside the Batch API's
//! database (`kiln-responses.sqlite`, WAL). One row per response: its
//! owner (see `auth::owner_of`), the response object, the input items it
//! was created from, and the conversation so far in the chat template's
//! terms, which `previous_response_id` continues.
//!
//! Like the batch database, the connection holds SQLite's exclusive lock:
//! one kiln process per data directory.

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

pub struct ResponseStore {
    conn: Mutex<Connection>,
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
        Ok(ResponseStore { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, r: &StoredResponse) -> Result<(), StoreError> {
        let items = Value::Array(r.input_items.clone()).to_string();
        let history = Value::Array(r.history.clone()).to_string();
        self.conn().execute(
            "INSERT OR REPLACE INTO responses (id, owner, created_at, response, input_items, history) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![r.id, r.owner, r.created_at as i64, r.response.to_string(), items, history],
        )?;
        Ok(())
    }

    /// The response `id` if `owner` owns it (another owner's is as absent).
    pub fn get(&self, id: &str, owner: &str) -> Result<Option<StoredResponse>, StoreError> {
        let row = self
            .conn()
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
    pub fn delete(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        Ok(self.conn().execute("DELETE FROM responses WHERE id = ?1 AND owner = ?2", [id, owner])? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_round_trip_per_owner_and_survive_reopening() {
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
            store.insert(&row).unwrap();
            assert_eq!(store.get("resp_1", "key:b").unwrap(), None);
            assert!(!store.delete("resp_1", "key:b").unwrap());
        }
        let store = ResponseStore::open(dir.path()).unwrap();
        assert_eq!(store.get("resp_1", "key:a").unwrap(), Some(row));
        assert!(store.delete("resp_1", "key:a").unwrap());
        assert_eq!(store.get("resp_1", "key:a").unwrap(), None);
    }
}
