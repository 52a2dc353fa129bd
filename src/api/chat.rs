//! POST /v1/chat/completions: messages (tool history included) through the
//! chat template, response formats and tool grammars compiled, then the
//! response shaped by `chat_out`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::Caller;
use super::chat_out::{collect, ChatChunks};
use super::error::{ApiError, ErrorResponse};
use super::generate::{grammar_for, start_chat, ChatJob, Started};
use super::json::ApiJson;
use super::messages::template_messages;
use super::reqlog::RequestRecord;
use super::sse::sse_response;
use super::structured::parse_response_format;
use super::tools::parse_plan;
use super::validate::{validate_common, Limits};
use super::wire_in::ChatCompletionRequest;
use super::wire_out::*;
use super::{AppState, ResponseMeta};

/// `logprobs` + `top_logprobs` to the engine's Some(k).
fn chat_logprobs(req: &ChatCompletionRequest, limits: &Limits) -> Result<Option<u32>, ApiError> {
    let want = req.logprobs.unwrap_or(false);
    match req.top_logprobs {
        Some(k) if k < 0 || k as u64 > limits.max_logprobs as u64 => Err(ApiError::invalid(
            format!("top_logprobs must be between 0 and {}, got {k}", limits.max_logprobs),
            "top_logprobs",
        )),
        Some(_) if !want => Err(ApiError::invalid("top_logprobs requires logprobs to be true", "top_logprobs")),
        Some(k) => Ok(Some(k as u32)),
        None => Ok(want.then_some(0)),
    }
}

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A completion, or an SSE stream of chunks when stream is true",
            content((ChatCompletionResponse = "application/json"), (ChatCompletionChunk = "text/event-stream"))),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse),
        (status = 415, body = ErrorResponse), (status = 429, body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(record): Extension<RequestRecord>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let state = super::models::route_recorded(&state, &record, &req.model, super::ModelTask::Generate)?;
    record.set_session_key(req.prompt_cache_key.as_deref());
    let max_param = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
    let mut params = validate_common(&req.common(), max_param, &state.limits)?;
    params.sampling.logprobs = chat_logprobs(&req, &state.limits)?;
    let messages = template_messages(&req.messages)?;
    let plan = parse_plan(req.tools.as_ref(), req.tool_choice.as_ref(), req.parallel_tool_calls, state.tool_format)?;
    let format = parse_response_format(req.response_format.as_ref())?;
    let grammar = grammar_for(&state, format, "response_format", plan.as_ref())?;
    let meta = ResponseMeta::new("chatcmpl", &state);
    let job = ChatJob { messages, plan, grammar, params: params.clone(), prompt_param: "messages" };
    let Started { running, tools, .. } = start_chat(&state, &caller, &record, &meta.id, job).await?;
    if params.stream {
        let format = ChatChunks::new(meta, state.codec.clone(), params.include_usage, params.n, tools);
        return Ok(sse_response(running, format, Duration::from_secs(state.config.sse_keepalive)));
    }
    Ok(Json(collect(running, meta, state.codec.as_ref(), tools).await?).into_response())
}
