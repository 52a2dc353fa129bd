//! The small routes: models, tokenize / detokenize, health, version,
//! metrics, and the 404 / 405 fallbacks.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::admit::{blocking, codec_error};
use super::messages::template_messages;
use super::models::find;
use super::tools::prompt::render_prompt;
use super::error::{ApiError, ErrorResponse};
use super::json::ApiJson;
use super::validate::{check_token_id, refuse_extra};
use super::wire_in::{DetokenizeRequest, TokenizeRequest};
use super::wire_out::*;
use super::AppState;

fn model_card(state: &AppState) -> ModelCard {
    ModelCard {
        id: state.model.name.clone(),
        object: "model".into(),
        created: state.model.created,
        owned_by: "kiln".into(),
        max_model_len: state.model.max_model_len,
    }
}

#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList), (status = 401, body = ErrorResponse)),
    security((), ("bearer" = [])))]
pub async fn list_models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let mut all = state.served.all();
    if all.is_empty() {
        all.push(state.clone());
    }
    Json(ModelList { object: "list".into(), data: all.iter().map(|s| model_card(s)).collect() })
}

#[utoipa::path(get, path = "/v1/models/{model}", params(("model" = String, Path, description = "Model id")),
    responses((status = 200, body = ModelCard), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)),
    security((), ("bearer" = [])))]
pub async fn retrieve_model(State(state): State<Arc<AppState>>, Path(model): Path<String>) -> Result<Json<ModelCard>, ApiError> {
    Ok(Json(model_card(&*find(&state, Some(&model))?)))
}

#[utoipa::path(post, path = "/tokenize", request_body = TokenizeRequest,
    responses((status = 200, body = TokenizeResponse), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)),
    security((), ("bearer" = [])))]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let state = find(&state, req.model.as_deref())?;
    refuse_extra(&req.extra, "")?;
    let codec = state.codec.clone();
    let tokens = match (req.prompt, req.messages) {
        (Some(prompt), None) => {
            let special = req.add_special_tokens.unwrap_or(true);
            blocking(move || codec.encode(&prompt, special).map_err(|e| codec_error(e, "prompt"))).await?
        }
        (None, Some(messages)) => {
            let messages = template_messages(&messages)?;
            let gen = req.add_generation_prompt.unwrap_or(true);
            blocking(move || {
                let text = render_prompt(codec.as_ref(), messages, None, gen).map_err(|e| codec_error(e, "messages"))?;
                codec.encode(&text, false).map_err(|e| codec_error(e, "messages"))
            })
            .await?
        }
        _ => return Err(ApiError::invalid("exactly one of prompt and messages is required", "prompt")),
    };
    Ok(Json(TokenizeResponse { count: tokens.len(), max_model_len: state.model.max_model_len, tokens }))
}

#[utoipa::path(post, path = "/detokenize", request_body = DetokenizeRequest,
    responses((status = 200, body = DetokenizeResponse), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse), (status = 415, body = ErrorResponse)),
    security((), ("bearer" = [])))]
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let state = find(&state, req.model.as_deref())?;
    refuse_extra(&req.extra, "")?;
    let vocab = state.limits.vocab_size;
    let ids = req.tokens.iter().map(|&t| check_token_id(t, vocab, "tokens")).collect::<Result<Vec<_>, _>>()?;
    let codec = state.codec.clone();
    let prompt = blocking(move || codec.decode(&ids, false).map_err(|e| codec_error(e, "tokens"))).await?;
    Ok(Json(DetokenizeResponse { prompt }))
}

/// Readiness: 200 once a real forward pass has run and every engine thread
/// beat within `--engine-heartbeat-timeout`; 503 while loading, draining,
/// or with an engine stalled ("stalled").
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthResponse), (status = 503, body = HealthResponse)))]
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let limit = std::time::Duration::from_secs(state.config.engine_heartbeat_timeout);
    let mut all = state.served.all();
    if all.is_empty() {
        all.push(state.clone());
    }
    let stalled = all.iter().any(|s| s.engine.heartbeat_age().is_some_and(|age| age > limit));
    let (status, text) = if state.lifecycle.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !state.lifecycle.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    } else if stalled {
        (StatusCode::SERVICE_UNAVAILABLE, "stalled")
    } else {
        (StatusCode::OK, "ok")
    };
    (status, Json(HealthResponse { status: text.into() })).into_response()
}

/// Liveness: 200 while the process serves HTTP at all (loading and
/// draining included); a probe that restarts the process keys on this.
#[utoipa::path(get, path = "/live", responses((status = 200, body = HealthResponse)))]
pub async fn live() -> Json<HealthResponse> {
    Json(HealthResponse { status: "alive".into() })
}

#[utoipa::path(get, path = "/version", responses((status = 200, body = VersionResponse), (status = 401, body = ErrorResponse)),
    security((), ("bearer" = [])))]
pub async fn version() -> Json<VersionResponse> {
    Json(VersionResponse { version: env!("CARGO_PKG_VERSION").into() })
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
    (status = 401, body = ErrorResponse)), security((), ("bearer" = [])))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let pending = state.pending.load(Ordering::SeqCst);
    let mut all = state.served.all();
    if all.is_empty() {
        all.push(state.clone());
    }
    for s in &all {
        s.metrics.set_gauges(s.engine.gauges(), pending);
    }
    let text = state.metrics.render_all();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound { method: method.to_string(), path: uri.path().to_string() }
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
}
