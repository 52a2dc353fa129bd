//! POST /v1/chat/completions: messages (tool history included) through the
//! chat template, response formats and tool grammars compiled, then the
//! response shaped by `chat_out`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::admit::{admit, blocking, charge_tokens, codec_error, submit_all, PromptJob};
use super::auth::Caller;
use super::chat_out::{collect, ChatChunks};
use super::error::{ApiError, ErrorResponse};
use super::events::Running;
use super::json::ApiJson;
use super::messages::template_messages;
use super::reqlog::RequestRecord;
use super::sse::sse_response;
use super::structured::{compile, compile_tools, parse_response_format};
use super::tools::grammar::tool_grammar;
use super::tools::prompt::render_prompt;
use super::tools::{parse_plan, ToolChoice, ToolFormat, ToolPlan};
use super::validate::{fit_context, validate_common, Limits};
use super::wire_in::ChatCompletionRequest;
use super::wire_out::*;
use super::{AppState, ResponseMeta};
use crate::structured::GrammarSpec;

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
    let max_param = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
    let mut params = validate_common(&req.common(), max_param, &state.limits)?;
    params.sampling.logprobs = chat_logprobs(&req, &state.limits)?;
    let messages = template_messages(&req.messages)?;
    let plan = parse_plan(req.tools.as_ref(), req.tool_choice.as_ref(), req.parallel_tool_calls, state.tool_format)?;
    let spec = request_grammar(&state, &req, plan.as_ref())?;
    // Compiled (and checked against llguidance's limits) before admission:
    // a grammar kiln cannot run is a 400 that takes no place in the queue.
    let grammar = match (spec, plan.as_ref()) {
        (Some((spec, "tools")), Some(p)) => Some(compile_tools(&state, spec, p).await?),
        (Some((spec, param)), _) => Some(compile(&state, spec, param).await?),
        (None, _) => None,
    };
    let pending = admit(&state, &caller, &record)?;

    let codec = state.codec.clone();
    let prompt_plan = plan.clone();
    let ids = blocking(move || {
        let text = render_prompt(codec.as_ref(), messages, prompt_plan.as_ref(), true).map_err(|e| codec_error(e, "messages"))?;
        codec.encode(&text, false).map_err(|e| codec_error(e, "messages"))
    })
    .await?;
    let max_tokens = fit_context(ids.len(), params.max_tokens, state.model.max_model_len, "messages")?;
    charge_tokens(&caller, &record, ids.len() + max_tokens * params.n)?;
    record.add_prompt_tokens(ids.len());

    let meta = ResponseMeta::new("chatcmpl", &state);
    let prompt_lens = vec![ids.len()];
    let jobs = vec![PromptJob { prompt_ids: ids, max_tokens, grammar }];
    let rxs = submit_all(&state, &meta.id, jobs, &params.sampling, &params.stop, params.n)?;
    let running = Running::new(rxs, params.n, prompt_lens, pending, record, state.clone());
    let tools = plan.as_ref().and_then(ToolPlan::reading);
    if params.stream {
        let format = ChatChunks::new(meta, state.codec.clone(), params.include_usage, params.n, tools);
        return Ok(sse_response(running, format, Duration::from_secs(state.config.sse_keepalive)));
    }
    Ok(Json(collect(running, meta, state.codec.as_ref(), tools).await?).into_response())
}

/// The grammar a chat request generates under, with the parameter its
/// errors name: the response format, else forced (or lazily constrained)
/// tool calls.
fn request_grammar(
    state: &AppState,
    req: &ChatCompletionRequest,
    plan: Option<&ToolPlan>,
) -> Result<Option<(GrammarSpec, &'static str)>, ApiError> {
    let format = parse_response_format(req.response_format.as_ref())?;
    let forced = plan.is_some_and(|p| matches!(p.choice, ToolChoice::Required | ToolChoice::Named(_)));
    if format.is_some() && forced {
        let msg = "response_format cannot be combined with tool_choice required or a named function";
        return Err(ApiError::invalid(msg, "response_format"));
    }
    if let Some(f) = format {
        return Ok(Some((f, "response_format")));
    }
    let Some(plan) = plan else { return Ok(None) };
    // The format's marker as one control token ([TOOL_CALLS], <|python_tag|>).
    let marker = (plan.format != ToolFormat::Hermes)
        .then(|| plan.format.marker())
        .flatten()
        .and_then(|m| state.codec.encode(m, false).ok())
        .filter(|ids| ids.len() == 1)
        .map(|ids| ids[0]);
    Ok(tool_grammar(plan, marker).map(|g| (g, "tools")))
}
