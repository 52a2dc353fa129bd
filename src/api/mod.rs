//! The OpenAI-compatible HTTP layer: axum routes, wire types, validation,
//! SSE streaming, auth, per-key rate limits, admission control, metrics and
//! graceful shutdown. Errors become HTTP statuses in one place
//! (`error::ApiError::status_type_code`).

pub mod error;
pub mod json;
pub mod port;
pub mod validate;
pub mod wire_in;
pub mod wire_out;

use std::sync::Arc;

pub use error::ApiError;
pub use port::{ChatTurn, CodecError, Engine, EngineGauges, TextCodec};

use crate::config::ServerConfig;

/// What the server tells clients about the model it serves.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Name clients send as `model` (after `--served-model-name`).
    pub name: String,
    pub max_model_len: usize,
    /// Unix seconds reported as `created` in /v1/models.
    pub created: u64,
}

/// Shared state of every handler.
pub struct AppState {
    pub engine: Arc<dyn Engine>,
    pub codec: Arc<dyn TextCodec>,
    pub model: ModelInfo,
    pub config: ServerConfig,
    pub limits: validate::Limits,
}
