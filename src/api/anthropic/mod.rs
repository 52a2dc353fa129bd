//! Anthropic's Messages API: `POST /v1/messages` (text, `tool_use` and
//! `tool_result` blocks, tools, streaming events) and
//! `POST /v1/messages/count_tokens`, on the same engine, chat template and
//! tool machinery as chat completions (`generate::start_chat`). Keys come
//! as `x-api-key` or `Authorization: Bearer`, with the same per-key limits;
//! errors have Anthropic's shape (`error::reshape`).

pub mod error;
pub mod output;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use self::output::MessageRun;
use self::wire::{chat_tool_choice, chat_tools, template_messages, MessagesRequest};
use super::auth::Caller;
use super::error::ApiError;
use super::generate::{prompt_ids, start_chat, ChatJob, Started};
use super::json::ApiJson;
use super::reqlog::RequestRecord;
use super::sse_named::{drive, named_sse_response};
use super::tools::{parse_plan, ToolPlan};
use super::validate::{refuse_extra, validate_common};
use super::wire_in::{CommonParams, StopSpec};
use super::{AppState, ModelTask};

/// The Messages route group.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/messages", post(messages)).route("/v1/messages/count_tokens", post(count_tokens))
}

/// Messages, tools and tool choice in chat's terms.
fn chat_parts(state: &AppState, req: &MessagesRequest) -> Result<(Vec<Value>, Option<ToolPlan>), ApiError> {
    let messages = template_messages(req)?;
    let tools = chat_tools(req.tools.as_ref())?;
    let (choice, parallel) = chat_tool_choice(req.tool_choice.as_ref())?;
    let plan = parse_plan(tools.as_ref(), choice.as_ref(), Some(parallel), state.tool_format)?;
    Ok((messages, plan))
}

/// `POST /v1/messages`.
pub async fn messages(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(record): Extension<RequestRecord>,
    ApiJson(req): ApiJson<MessagesRequest>,
) -> Result<Response, ApiError> {
    let state = super::models::route_recorded(&state, &record, &req.model, ModelTask::Generate)?;
    refuse_extra(&req.extra, "")?;
    let Some(max_tokens) = req.max_tokens else {
        return Err(ApiError::invalid("max_tokens: Field required", "max_tokens"));
    };
    let stop = req.stop_sequences.clone().map(StopSpec::Many);
    let common = CommonParams {
        max_tokens: Some(max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop: stop.as_ref(),
        stream: req.stream,
        ..Default::default()
    };
    let params = validate_common(&common, "max_tokens", &state.limits)?;
    if req.temperature.is_some_and(|t| t > 1.0) {
        return Err(ApiError::invalid("temperature: must be at most 1.0", "temperature"));
    }
    let (messages, plan) = chat_parts(&state, &req)?;
    let grammar = super::generate::grammar_for(&state, None, "tools", plan.as_ref())?;
    let id = super::new_id("msg");
    let job = ChatJob { messages, plan, grammar, params: params.clone(), prompt_param: "messages" };
    let Started { running, tools, prompt_len } = start_chat(&state, &caller, &record, &id, job).await?;
    let mut run = MessageRun::new(id, state.model.name.clone(), prompt_len, tools);
    if params.stream {
        return Ok(named_sse_response(running, run, Duration::from_secs(state.config.sse_keepalive)));
    }
    drive(running, &mut run).await?;
    Ok(Json(run.result.unwrap_or(Value::Null)).into_response())
}

/// `POST /v1/messages/count_tokens`: the prompt's length, as generation
/// would see it (system, messages and tools through the chat template).
pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    Extension(record): Extension<RequestRecord>,
    ApiJson(req): ApiJson<MessagesRequest>,
) -> Result<Json<Value>, ApiError> {
    let state = super::models::route_recorded(&state, &record, &req.model, ModelTask::Generate)?;
    refuse_extra(&req.extra, "")?;
    let (messages, plan) = chat_parts(&state, &req)?;
    let ids = prompt_ids(&state, messages, plan, "messages").await?;
    Ok(Json(json!({"input_tokens": ids.len()})))
}
