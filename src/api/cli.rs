//! `kiln serve`: engine flags (the lead's `launch::EngineArgs`) plus the
//! server's own (`ServerConfig`), from the command line to a drained exit.

use std::sync::Arc;

use super::server::{init_tracing, serve_loading, Loaded};
use super::{unix_now, ModelInfo};
use crate::config::ServerConfig;
use crate::launch::{start_engine, EngineArgs};

/// Runs the server to completion on its own tokio runtime. Installs the
/// tracing subscriber for `--log-format` (call it before any other does).
pub fn run_serve_cli(server: ServerConfig, engine: EngineArgs) -> anyhow::Result<()> {
    init_tracing(server.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("kiln-http").build()?;
    let result = runtime.block_on(serve_loading(server, move || {
        let started = start_engine(&engine)?;
        let model = ModelInfo { name: started.model_name, max_model_len: started.max_model_len, created: unix_now() };
        Ok(Loaded { engine: Arc::new(started.handle), codec: started.tokenizer, model })
    }));
    // A load still running after a signal must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
