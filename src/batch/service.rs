//! The batch service of one server: its data directory, database, the
//! batches being driven right now, and the supervisor that (re)starts a
//! driver for every active batch, at start-up (resuming after a crash) and
//! whenever a batch is created or cancelled.
//!
//! ```text
//! DATA_DIR/
//!   kiln-batch.sqlite      files and batches (store.rs), exclusively locked
//!   files/FILE_ID.jsonl    uploaded inputs and finished outputs
//!   batches/BATCH_ID/      results of a running batch (sink.rs)
//!   tmp/                   uploads being received
//! ```
//!
//! With `--store postgres://…` the database holds all of it (files' bytes
//! included) and only `tmp/` is used; every replica's supervisor drives
//! every active batch, sharing its lines (`shared.rs`), and a background
//! task renews this replica's claims.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::exec::LineExecutor;
use super::sink::SinkCounts;
use super::store::{BatchStore, Store, StoreError};
use crate::api::AppState;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("batch data directory {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("batch executor: {0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Paths under the data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn db(&self) -> PathBuf {
        self.root.join("kiln-batch.sqlite")
    }
    pub fn files(&self) -> PathBuf {
        self.root.join("files")
    }
    pub fn file(&self, id: &str) -> PathBuf {
        self.files().join(format!("{id}.jsonl"))
    }
    pub fn batches(&self) -> PathBuf {
        self.root.join("batches")
    }
    pub fn batch(&self, id: &str) -> PathBuf {
        self.batches().join(id)
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

/// A batch being driven: its cancel flag and live counts.
#[derive(Default)]
pub struct Live {
    pub cancel: AtomicBool,
    pub counts: Mutex<Option<SinkCounts>>,
}

pub struct BatchService {
    pub dir: DataDir,
    /// Files and batches: SQLite, or the shared store.
    pub store: BatchStore,
    /// This process's name in line claims (`--store` only).
    pub replica: String,
    live: Mutex<HashMap<String, Arc<Live>>>,
    wake: Notify,
    /// In-flight batch sequences (`--max-batch-inflight` places).
    pub slots: Arc<Semaphore>,
    pub cap: usize,
    pub exec: Arc<LineExecutor>,
    pub max_file_bytes: u64,
    pub main: Arc<AppState>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServiceError + '_ {
    move |source| ServiceError::Io { path: path.to_path_buf(), source }
}

impl BatchService {
    /// Opens the data directory (creating it), locks its database and
    /// clears leftovers of a crash: partial uploads, files no row names,
    /// result folders of batches no longer active.
    pub fn open(main: &Arc<AppState>) -> Result<Arc<BatchService>, ServiceError> {
        if let Some(url) = main.config.store_url() {
            return Self::open_shared(main, url);
        }
        let dir = DataDir { root: main.config.data_dir.clone() };
        for d in [dir.root.clone(), dir.files(), dir.batches(), dir.tmp()] {
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let store = Store::open(&dir.db())?;
        let tmp = dir.tmp();
        std::fs::remove_dir_all(&tmp).and_then(|_| std::fs::create_dir_all(&tmp)).map_err(io_err(&tmp))?;
        collect_garbage(&dir, &store)?;
        Self::with_store(main, dir, BatchStore::Sqlite(Mutex::new(store)), String::new())
    }

    /// The service over `store`, its places sized by `--max-batch-inflight`.
    fn with_store(main: &Arc<AppState>, dir: DataDir, store: BatchStore, replica: String) -> Result<Arc<BatchService>, ServiceError> {
        let cap = main.config.max_batch_inflight.get();
        Ok(Arc::new(BatchService {
            dir,
            store,
            replica,
            live: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(cap)),
            cap,
            exec: Arc::new(LineExecutor::new(main)?),
            max_file_bytes: main.config.max_file_bytes,
            main: main.clone(),
        }))
    }

    /// Over the shared store: uploads in transit under `--data-dir/tmp`
    /// (or the system's temporary folder when it is empty).
    fn open_shared(main: &Arc<AppState>, url: &str) -> Result<Arc<BatchService>, ServiceError> {
        let root = match &main.config.data_dir {
            d if d.as_os_str().is_empty() => std::env::temp_dir().join("kiln"),
            d => d.clone(),
        };
        let dir = DataDir { root };
        let tmp = dir.tmp();
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        // Other servers may share this folder (one host, several replicas):
        // only uploads left for an hour (a crash mid-upload) are removed.
        let stale = std::time::SystemTime::now() - Duration::from_secs(3600);
        for entry in std::fs::read_dir(&tmp).map_err(io_err(&tmp))?.flatten() {
            if entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < stale) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let shared = crate::pgstore::SharedStore::new(url, main.config.store_lease).map_err(StoreError::from)?;
        Self::with_store(main, dir, BatchStore::Postgres(super::pg::PgBatchStore { shared }), crate::pgstore::replica_name())
    }

    /// The SQLite store: only the local driver (`driver.rs`) uses it, and
    /// it only runs over SQLite.
    pub fn local_store(&self) -> MutexGuard<'_, Store> {
        self.store.local().expect("the local batch driver runs on the SQLite store only")
    }

    fn live_map(&self) -> MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live(&self, batch_id: &str) -> Option<Arc<Live>> {
        self.live_map().get(batch_id).cloned()
    }

    /// Tells the supervisor to look for work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The server is shutting down: no new batch work starts.
    pub fn is_draining(&self) -> bool {
        self.main.lifecycle.is_draining()
    }

    /// Starts the supervisor on the current tokio runtime.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(supervise(self.clone()));
        if let Some(pg) = self.store.shared() {
            tokio::spawn(renew_claims(pg.clone(), self.replica.clone()));
        }
    }
}

/// Removes what a crash can leave behind.
fn collect_garbage(dir: &DataDir, store: &Store) -> Result<(), ServiceError> {
    let known = store.file_ids()?;
    let files = dir.files();
    for entry in std::fs::read_dir(&files).map_err(io_err(&files))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = name.strip_suffix(".jsonl").unwrap_or(&name);
        if !known.contains(id) {
            tracing::info!(file = %name, "removing a file no batch-API record names");
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let active: std::collections::HashSet<String> = store.active_batches()?.into_iter().map(|b| b.object.id).collect();
    let batches = dir.batches();
    for entry in std::fs::read_dir(&batches).map_err(io_err(&batches))?.flatten() {
        if !active.contains(entry.file_name().to_string_lossy().as_ref()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// Renews this replica's line claims every third of a lease; runs until
/// the runtime stops. A replica that stops renewing (killed, cut off)
/// loses its claims one lease later.
async fn renew_claims(pg: super::pg::PgBatchStore, me: String) {
    let every = Duration::from_millis(pg.shared.lease_secs * 1000 / 3).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = pg.renew(&me).await {
            tracing::warn!(error = %e, "renewing batch line claims");
        }
    }
}

/// Starts a driver for every active batch that has none; runs until the
/// runtime stops.
async fn supervise(svc: Arc<BatchService>) {
    if let Some(pg) = svc.store.shared() {
        // The schema exists when `kiln serve` checked --store at start; a
        // router built otherwise (tests) makes sure here, retrying.
        while let Err(e) = pg.shared.init().await {
            tracing::error!(error = %e, "shared store: cannot create the schema; retrying");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    loop {
        if !svc.is_draining() {
            match svc.store.active_batches().await {
                Ok(rows) => {
                    for row in rows {
                        spawn_driver(&svc, row.object.id);
                    }
                }
                Err(e) => tracing::error!(error = %e, "listing active batches"),
            }
        }
        tokio::select! {
            _ = svc.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

fn spawn_driver(svc: &Arc<BatchService>, id: String) {
    let live = {
        let mut map = svc.live_map();
        if map.contains_key(&id) {
            return;
        }
        let live = Arc::new(Live::default());
        map.insert(id.clone(), live.clone());
        live
    };
    let svc = svc.clone();
    tokio::spawn(async move {
        let result = match svc.store.shared() {
            Some(pg) => super::shared::drive(&svc, pg, &id, &live).await,
            None => super::driver::drive(&svc, &id, &live).await,
        };
        if let Err(e) = result {
            tracing::error!(batch = %id, error = %e, "batch driver failed; it restarts shortly");
        }
        // No wake-up here: a batch that is still active (the engine was
        // unavailable) is retried by the supervisor's next periodic pass.
        svc.live_map().remove(&id);
    });
}
