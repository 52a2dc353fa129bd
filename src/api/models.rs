//! Several models behind one server: every model has its own `AppState`
//! (engine, tokenizer, limits, metrics handles) and shares the rest (keys,
//! rate limits, admission, lifecycle, the metrics recorder) with the
//! others. Requests are routed by their `model` field.
//!
//! ```text
//! router state = the first model's AppState
//! route(state, "B", task) -> served["B"] (an Arc<AppState>) or 404,
//!                            then 400 unless B serves `task`
//! ```

use std::sync::{Arc, OnceLock, Weak};

use super::error::ApiError;
use super::port::{Engine, TextCodec};
use super::reqlog::RequestRecord;
use super::{AppState, ModelInfo};

/// The engine behind one served model.
pub enum ModelBackend {
    /// A generation engine (chat and completions).
    Generate(Arc<dyn Engine>),
    /// An embedding engine; `matryoshka`: which `dimensions` are allowed.
    Embed { embedder: Arc<dyn super::Embedder>, matryoshka: crate::model::pooling::Matryoshka },
}

/// What loading one model yields.
pub struct Loaded {
    pub backend: ModelBackend,
    pub codec: Arc<dyn TextCodec>,
    pub model: ModelInfo,
}

/// What a served model does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ModelTask {
    /// /v1/chat/completions and /v1/completions.
    #[default]
    Generate,
    /// /v1/embeddings.
    Embed,
}

impl ModelTask {
    fn serves(self) -> &'static str {
        match self {
            ModelTask::Generate => "text generation (/v1/chat/completions and /v1/completions)",
            ModelTask::Embed => "embeddings (/v1/embeddings)",
        }
    }
}

/// Every model of one server, in `--model` order. Holds weak references
/// (the server holds the states); set once, when all are loaded.
#[derive(Default)]
pub struct Served {
    models: OnceLock<Vec<Weak<AppState>>>,
}

impl Served {
    /// Records the server's models (first call wins).
    pub fn set(&self, states: &[Arc<AppState>]) {
        let _ = self.models.set(states.iter().map(Arc::downgrade).collect());
    }

    /// Every model still alive, in order.
    pub fn all(&self) -> Vec<Arc<AppState>> {
        self.models.get().map(|v| v.iter().filter_map(Weak::upgrade).collect()).unwrap_or_default()
    }
}

/// The state of the model named `model` (None: the first), or 404.
pub fn find(state: &Arc<AppState>, model: Option<&str>) -> Result<Arc<AppState>, ApiError> {
    let Some(name) = model else { return Ok(state.served.all().into_iter().next().unwrap_or_else(|| state.clone())) };
    if state.model.name == name {
        return Ok(state.clone());
    }
    state.served.all().into_iter().find(|s| s.model.name == name).ok_or_else(|| ApiError::ModelNotFound(name.to_string()))
}

/// `find`, then a 400 saying what the model serves when it is not `task`.
pub fn route(state: &Arc<AppState>, model: Option<&str>, task: ModelTask) -> Result<Arc<AppState>, ApiError> {
    let target = find(state, model)?;
    if target.task != task {
        let message = format!(
            "The model '{}' serves {} only; this endpoint needs a model that serves {}",
            target.model.name,
            target.task.serves(),
            task.serves()
        );
        return Err(ApiError::Invalid { message, param: Some("model".into()), code: Some("model_not_supported") });
    }
    Ok(target)
}

/// `route` for a request being recorded: its tokens and latencies are
/// counted under the routed model's metrics.
pub fn route_recorded(
    state: &Arc<AppState>,
    record: &RequestRecord,
    model: &str,
    task: ModelTask,
) -> Result<Arc<AppState>, ApiError> {
    let target = route(state, Some(model), task)?;
    if !Arc::ptr_eq(&target, state) {
        record.set_model_metrics(target.metrics.clone());
    }
    Ok(target)
}
