//! The shared store: `--store postgres://USER[:PASSWORD]@HOST:PORT/DB`.
//! Replicas of one deployment pointed at the same PostgreSQL database share
//! Batch API files (their bytes as `bytea`), batches (their lines as rows
//! that replicas claim with `SELECT … FOR UPDATE SKIP LOCKED` and a lease)
//! and stored responses. Without `--store`, SQLite under `--data-dir` stays
//! the embedded default.
//!
//! ```text
//! kiln_files        files' metadata and bytes
//! kiln_batches      batch objects (JSON text) with their status
//! kiln_batch_lines  one row per input line: state, lease, result
//! kiln_responses    stored responses (Responses API)
//! ```
//!
//! The schema is created at start, idempotently and under an advisory lock,
//! so replicas starting together do not trip over each other. Connections
//! come from a small pool; a database that cannot be reached gives
//! `PgError::Unreachable`, which the routes answer with 503.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

/// Connections one server keeps open at most (per pool).
const POOL_SIZE: usize = 8;
/// How long a request waits for a connection (to connect, or from the pool).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Advisory lock key serialising schema creation across replicas.
const SCHEMA_LOCK: i64 = 0x6b69_6c6e_5f73_6368; // "kiln_sch"

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kiln_files (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    content BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS kiln_batches (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    object TEXT NOT NULL,
    status TEXT NOT NULL,
    input_file_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS kiln_batches_status ON kiln_batches (status);
CREATE TABLE IF NOT EXISTS kiln_batch_lines (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    line BIGINT NOT NULL,
    byte_offset BIGINT NOT NULL,
    byte_len BIGINT NOT NULL,
    weight INTEGER NOT NULL,
    state SMALLINT NOT NULL DEFAULT 0,
    claimed_by TEXT,
    lease_expires_at TIMESTAMPTZ,
    done_by TEXT,
    result TEXT,
    PRIMARY KEY (batch_id, idx),
    UNIQUE (batch_id, custom_id)
);
CREATE INDEX IF NOT EXISTS kiln_batch_lines_claimed ON kiln_batch_lines (claimed_by) WHERE state = 0;
CREATE TABLE IF NOT EXISTS kiln_responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    history TEXT NOT NULL
);
";

/// Errors of the shared store.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// `--store` is not a PostgreSQL connection URL kiln can use.
    #[error("--store: {0}")]
    Config(String),
    /// The database cannot be reached (refused, timed out, connection lost):
    /// requests needing it get 503 and may be retried.
    #[error("the shared store (PostgreSQL) is unreachable: {0}")]
    Unreachable(String),
    /// The database answered with an error.
    #[error("shared store (PostgreSQL): {0}")]
    Sql(String),
    /// A stored value kiln cannot read back.
    #[error("shared store: bad stored value: {0}")]
    Corrupt(String),
}

impl PgError {
    /// Whether the request may succeed later (the database is unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PgError::Unreachable(_))
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            // Connection exceptions (08), insufficient resources (53) and
            // operator intervention (57: shutting down, connection killed)
            // pass: they are the database being away, not a wrong query.
            Some(db) if ["08", "53", "57"].iter().any(|class| db.code().code().starts_with(class)) => {
                PgError::Unreachable(format!("{}: {}", db.code().code(), db.message()))
            }
            Some(db) => PgError::Sql(format!("{}: {}", db.code().code(), db.message())),
            None => PgError::Unreachable(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => PgError::Unreachable(other.to_string()),
        }
    }
}

/// A pool of connections to the shared database (cheap to clone).
#[derive(Clone)]
pub struct SharedStore {
    pool: Pool,
    /// Seconds a replica's claim on batch lines lasts without renewal.
    pub lease_secs: u64,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore").field("lease_secs", &self.lease_secs).finish_non_exhaustive()
    }
}

/// Checks the form of a `--store` value (no connection is made).
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, PgError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(PgError::Config(format!(
            "expected a PostgreSQL URL postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, got '{}'",
            redact(url)
        )));
    }
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| PgError::Config(format!("{e} in '{}'", redact(url))))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

/// `url` with its password replaced by `***` (for messages and logs): the
/// one in `user:password@` and any `password=` query parameter (libpq's
/// URL form accepts both).
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?))) {
        Some((scheme, (userinfo, host))) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    let Some(query) = query else { return base };
    let params: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

impl SharedStore {
    /// A pool for `url` with claims lasting `lease_secs` (at least 1).
    /// Connects lazily: `init` checks the database.
    pub fn new(url: &str, lease_secs: u64) -> Result<SharedStore, PgError> {
        let config = parse_url(url)?;
        let manager = Manager::from_config(config, tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| PgError::Config(e.to_string()))?;
        Ok(SharedStore { pool, lease_secs: lease_secs.max(1) })
    }

    /// Connects and creates the schema if it is missing (idempotent; safe
    /// with several replicas starting at once).
    pub async fn init(&self) -> Result<(), PgError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await?;
        tx.batch_execute(SCHEMA).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        Ok(self.pool.get().await?)
    }
}

/// A name for this process among the replicas: host, pid and a random tag.
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "kiln".into());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(parse_url("postgres://kiln@127.0.0.1:5432/kiln").is_ok());
        assert!(parse_url("postgresql://kiln:pw@db/kiln").is_ok());
        let e = parse_url("mysql://root:secret@db/x").unwrap_err().to_string();
        assert!(e.contains("expected a PostgreSQL URL") && !e.contains("secret"), "{e}");
        assert_eq!(redact("postgres://u:secret@h:1/d"), "postgres://u:***@h:1/d");
        assert_eq!(redact("postgres://u@h/d"), "postgres://u@h/d");
        assert!(SharedStore::new("postgres://u@127.0.0.1:1/d", 0).unwrap().lease_secs == 1);
    }

    #[test]
    fn redact_hides_every_form_of_password() {
        assert_eq!(redact("postgres://kiln:s3cret@db:5432/kiln"), "postgres://kiln:***@db:5432/kiln");
        assert_eq!(redact("postgres://kiln:p@ss@db/kiln"), "postgres://kiln:***@db/kiln");
        assert_eq!(
            redact("postgres://kiln@db/kiln?sslmode=disable&password=s3cret"),
            "postgres://kiln@db/kiln?sslmode=disable&password=***"
        );
        assert_eq!(redact("postgresql://db/kiln?PASSWORD=x&user=k"), "postgresql://db/kiln?PASSWORD=***&user=k");
        assert_eq!(redact("postgres://kiln@db/kiln"), "postgres://kiln@db/kiln");
        for url in ["postgres://a:s3cret@h/d?password=s3cret", "postgres://a@h/d?password=s3cret"] {
            assert!(!redact(url).contains("s3cret"), "{url}");
        }
    }
}
