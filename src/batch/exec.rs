//! Runs one batch request through the live endpoints' own handlers, so a
//! line is validated, templated, tokenized and answered exactly as the same
//! body posted to /v1/chat/completions, /v1/completions or /v1/embeddings
//! would be, routed by `model` to any model of the server.
//!
//! The handlers run on a private router (with the server's request-log
//! layer: one access line per request) whose `AppState` wraps the engine
//! in `BatchPriority`: every request they submit is `Priority::Batch`. That
//! state has no keys and no per-key limits (a batch was authorized when it
//! was created) and its own metrics, so batch lines do not blur the
//! interactive latency figures on /metrics.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, Request, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::routing::post;
use axum::Router;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;

use super::input::InputLine;
use super::wire::{new_id, Endpoint};
use crate::api::auth::Caller;
use crate::api::reqlog;
use crate::api::embeddings::{self, BatchPriorityEmbedder};
use crate::api::{chat, completions, ApiError, AppState, Engine, EngineGauges, Loaded, ModelBackend, SubmitError};
use crate::config::{ConfigError, ServerConfig};
use crate::engine::{Priority, TokenEvent, ValidRequest};

/// The engine with every request demoted to `Priority::Batch`.
struct BatchPriority(Arc<dyn Engine>);

impl Engine for BatchPriority {
    fn submit(&self, mut request: ValidRequest) -> Result<UnboundedReceiver<TokenEvent>, SubmitError> {
        request.priority = Priority::Batch;
        self.0.submit(request)
    }

    fn gauges(&self) -> EngineGauges {
        self.0.gauges()
    }

    /// The batch layer never owns the engine: whoever started it stops it.
    fn shutdown(&self) {}
}

/// A handler that panicked answers 500, as on the live router.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    axum::response::IntoResponse::into_response(ApiError::Internal("handler panicked".into()))
}

/// What one request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum LineOutcome {
    /// The endpoint answered: 2xx goes to the output file, the rest to the
    /// error file.
    Answered { status: u16, request_id: String, body: Value },
    /// The engine cannot take work now (draining, shut down, full): the
    /// request stays unanswered and runs again later.
    Unavailable(String),
}

pub struct LineExecutor {
    router: Router,
    max_body_bytes: usize,
    /// The batch-priority states of every model (the router reaches the
    /// others through weak references).
    _states: Vec<Arc<AppState>>,
}

impl LineExecutor {
    /// An executor over the engines, tokenizers, models and limits of
    /// `main` and the other models of its server.
    pub fn new(main: &AppState) -> Result<LineExecutor, ConfigError> {
        let config = ServerConfig {
            api_keys: Vec::new(),
            api_key_file: None,
            cors_origins: Vec::new(),
            // The names below are already the served ones.
            served_model_name: None,
            ..main.config.clone()
        };
        let mut models = main.served.all();
        if models.is_empty() {
            models.push(AppState::new(config.clone(), main.engine.clone(), main.codec.clone(), main.model.clone())?);
        }
        let loaded = models
            .iter()
            .map(|m| {
                let backend = match &m.embedder {
                    Some(e) => ModelBackend::Embed { embedder: Arc::new(BatchPriorityEmbedder(e.clone())), matryoshka: m.matryoshka.clone() },
                    None => ModelBackend::Generate(Arc::new(BatchPriority(m.engine.clone()))),
                };
                Loaded { backend, codec: m.codec.clone(), model: m.model.clone() }
            })
            .collect();
        let states = AppState::new_served_sharing(config, loaded, &main.served.all())?;
        let state = states[0].clone();
        let router = Router::new()
            .route(Endpoint::ChatCompletions.as_str(), post(chat::chat_completions))
            .route(Endpoint::Completions.as_str(), post(completions::completions))
            .route(Endpoint::Embeddings.as_str(), post(embeddings::embeddings))
            .layer(DefaultBodyLimit::disable())
            .layer(from_fn_with_state(state.clone(), reqlog::record_request))
            .layer(CatchPanicLayer::custom(panic_response))
            .with_state(state.clone());
        Ok(LineExecutor { router, max_body_bytes: state.config.max_body_bytes, _states: states })
    }

    fn refused(request_id: String, e: ApiError) -> LineOutcome {
        let status = e.status_type_code().0.as_u16();
        LineOutcome::Answered { status, request_id, body: serde_json::to_value(e.body()).unwrap_or(Value::Null) }
    }

    /// Runs one request to its whole (non-streamed) answer.
    pub async fn run(&self, line: InputLine) -> LineOutcome {
        let request_id = new_id("req_");
        if line.body.get("stream").is_some_and(|s| s.as_bool() == Some(true)) {
            let e = ApiError::unsupported("stream", "in a batch request: each answer is one whole response body");
            return Self::refused(request_id, e);
        }
        let bytes = serde_json::to_vec(&line.body).unwrap_or_default();
        if bytes.len() > self.max_body_bytes {
            return Self::refused(request_id, ApiError::PayloadTooLarge { limit: self.max_body_bytes });
        }
        let request = Request::post(line.endpoint.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", &request_id)
            .extension(Caller::anonymous())
            .body(Body::from(bytes));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Self::refused(request_id, ApiError::Internal(format!("building a batch request: {e}"))),
        };
        let response = match self.router.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await;
        let body: Value = match body {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned())),
            Err(e) => return LineOutcome::Unavailable(format!("reading the response: {e}")),
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let why = body["error"]["message"].as_str().unwrap_or("the engine is unavailable").to_string();
            return LineOutcome::Unavailable(why);
        }
        LineOutcome::Answered { status: status.as_u16(), request_id, body }
    }
}
