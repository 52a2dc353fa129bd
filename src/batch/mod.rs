//! The Batch API: OpenAI's `/v1/files` and `/v1/batches`, durable across
//! crashes and run below interactive traffic; and `kiln batch`, the same
//! JSONL run offline through the engine.
//!
//! ```text
//! upload.rs  POST /v1/files: stream to disk, input.rs checks every line
//! http.rs    the routes; ownership per API key
//! service.rs data dir + store.rs (SQLite) + supervisor: one driver per active batch
//! driver.rs  validating -> in_progress -> finalizing -> completed (| failed,
//!            expired, cancelling -> cancelled); every step redoable after a crash
//! runner.rs  requests in flight under --max-batch-inflight, answers to sink.rs
//!            (append + fsync), each request through exec.rs: the live handlers
//!            at Priority::Batch
//! pg.rs      the same state in the shared store (--store postgres://…)
//! shared.rs  a batch's lines claimed and answered by several replicas
//! cli.rs     kiln batch INPUT -o OUTPUT
//! ```

pub mod cli;
pub mod driver;
pub mod error;
pub mod exec;
pub mod http;
pub mod input;
pub mod pg;
pub mod runner;
pub mod service;
pub mod shared;
pub mod sink;
pub mod store;
pub mod upload;
pub mod wire;

use std::sync::Arc;

pub use cli::{run_cli, BatchCliArgs};
pub use crate::config::default_data_dir;

use crate::api::AppState;

/// The batch routes of a server over `state`. Opens `--data-dir` and starts
/// the batch worker (resuming unfinished batches) on the current tokio
/// runtime; when that is impossible the routes answer 503 and the reason
/// is logged.
pub fn routes(state: &Arc<AppState>) -> axum::Router<Arc<AppState>> {
    http::routes(http::BatchHttp { app: state.clone(), svc: open_service(state) })
}

fn open_service(state: &Arc<AppState>) -> Result<Arc<service::BatchService>, Arc<str>> {
    let dir = &state.config.data_dir;
    if dir.as_os_str().is_empty() && state.config.store_url().is_none() {
        return Err("it is turned off (empty --data-dir)".into());
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return Err("no async runtime to run batches on".into());
    }
    match service::BatchService::open(state) {
        Ok(svc) => {
            svc.start();
            tracing::info!(data_dir = %dir.display(), max_batch_inflight = svc.cap, "batch API ready");
            Ok(svc)
        }
        Err(e) => {
            tracing::error!(error = %e, "the batch API is off: cannot open its data directory");
            Err("the server could not open its batch data directory (see the server log)".into())
        }
    }
}
