//! POST /v1/chat/completions.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::admit::{admit, blocking, charge_tokens, codec_error, submit_all, PromptJob};
use super::auth::Caller;
use super::error::{ApiError, ErrorResponse};
use super::events::{Delta, Running, Step};
use super::json::ApiJson;
use super::logprobs::chat_logprob;
use super::port::{ChatTurn, TextCodec};
use super::reqlog::RequestRecord;
use super::sse::{sse_response, ChunkFormat};
use super::validate::{fit_context, refuse_extra, validate_common, Limits};
use super::wire_in::{ChatCompletionRequest, ChatMessageIn, MessageContent};
use super::wire_out::*;
use super::{AppState, ResponseMeta};

/// Roles passed to the chat template; `developer` is OpenAI's new name for `system`.
fn template_role(role: &str, i: usize) -> Result<&'static str, ApiError> {
    match role {
        "system" | "developer" => Ok("system"),
        "user" => Ok("user"),
        "assistant" => Ok("assistant"),
        "tool" | "function" => Err(ApiError::unsupported(
            format!("messages[{i}].role"),
            "is not supported yet: tool calling comes in a later release",
        )),
        other => Err(ApiError::invalid(
            format!("Invalid role '{other}' in messages[{i}]: expected system, developer, user or assistant"),
            format!("messages[{i}].role"),
        )),
    }
}

fn message_text(m: &ChatMessageIn, i: usize) -> Result<String, ApiError> {
    match &m.content {
        None => Err(ApiError::invalid(format!("messages[{i}].content is required"), format!("messages[{i}].content"))),
        Some(MessageContent::Text(t)) => Ok(t.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let param = format!("messages[{i}].content[{j}]");
                if part.kind != "text" {
                    let msg = format!("Only text content parts are supported; {param} has type '{}'", part.kind);
                    return Err(ApiError::invalid(msg, format!("{param}.type")));
                }
                refuse_extra(&part.extra, &format!("{param}."))?;
                let Some(text) = &part.text else {
                    return Err(ApiError::invalid(format!("{param}.text is required"), format!("{param}.text")));
                };
                texts.push(text.as_str());
            }
            Ok(texts.join("\n"))
        }
    }
}

/// Messages to template turns: text only, known roles only.
pub fn flatten_messages(messages: &[ChatMessageIn]) -> Result<Vec<ChatTurn>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages must contain at least one message", "messages"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = template_role(&m.role, i)?;
            refuse_extra(&m.extra, &format!("messages[{i}]."))?;
            Ok(ChatTurn { role: role.to_string(), content: message_text(m, i)? })
        })
        .collect()
}

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
    let turns = flatten_messages(&req.messages)?;
    let pending = admit(&state, &caller, &record)?;

    let codec = state.codec.clone();
    let ids = blocking(move || {
        let text = codec.apply_chat_template(&turns, true).map_err(|e| codec_error(e, "messages"))?;
        codec.encode(&text, false).map_err(|e| codec_error(e, "messages"))
    })
    .await?;
    let max_tokens = fit_context(ids.len(), params.max_tokens, state.model.max_model_len, "messages")?;
    charge_tokens(&caller, &record, ids.len() + max_tokens * params.n)?;
    record.add_prompt_tokens(ids.len());

    let meta = ResponseMeta::new("chatcmpl", &state);
    let prompt_lens = vec![ids.len()];
    let jobs = vec![PromptJob { prompt_ids: ids, max_tokens }];
    let rxs = submit_all(&state, &meta.id, jobs, &params.sampling, &params.stop, params.n)?;
    let running = Running::new(rxs, params.n, prompt_lens, pending, record, state.clone());
    if params.stream {
        let format = ChatChunks { meta, codec: state.codec.clone(), include_usage: params.include_usage, choices: params.n };
        return Ok(sse_response(running, format, Duration::from_secs(state.config.sse_keepalive)));
    }
    Ok(Json(collect(running, meta, state.codec.as_ref()).await?).into_response())
}

/// Waits for every choice and builds the whole response.
async fn collect(mut running: Running, meta: ResponseMeta, codec: &dyn TextCodec) -> Result<ChatCompletionResponse, ApiError> {
    let k = running.num_choices();
    let mut texts = vec![String::new(); k];
    let mut lps: Vec<Option<ChatLogprobs>> = vec![None; k];
    let mut finish = vec!["stop"; k];
    let usage = loop {
        match running.next_step().await {
            Some(Step::Delta(d)) => {
                texts[d.choice].push_str(&d.text);
                if let Some(lp) = &d.logprob {
                    lps[d.choice].get_or_insert_with(Default::default).content.push(chat_logprob(codec, lp));
                }
                if let Some(f) = d.finish {
                    finish[d.choice] = f;
                }
            }
            Some(Step::Usage(u)) => break u,
            Some(Step::Error(e)) => return Err(e),
            None => return Err(ApiError::Internal("stream ended without usage".into())),
        }
    };
    let choices = (0..k)
        .map(|i| ChatChoice {
            index: i,
            message: ChatMessageOut { role: "assistant".into(), content: std::mem::take(&mut texts[i]), refusal: None },
            logprobs: lps[i].take(),
            finish_reason: finish[i].to_string(),
        })
        .collect();
    Ok(ChatCompletionResponse {
        id: meta.id,
        object: "chat.completion".into(),
        created: meta.created,
        model: meta.model,
        system_fingerprint: meta.fingerprint,
        choices,
        usage,
    })
}

/// `chat.completion.chunk` payloads.
struct ChatChunks {
    meta: ResponseMeta,
    codec: Arc<dyn TextCodec>,
    include_usage: bool,
    choices: usize,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> String {
        let chunk = ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.meta.created,
            model: self.meta.model.clone(),
            system_fingerprint: self.meta.fingerprint.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        };
        serde_json::to_string(&chunk).unwrap_or_default()
    }

    fn one(&self, index: usize, delta: ChatDelta, logprobs: Option<ChatLogprobs>, finish: Option<&str>) -> String {
        let choice = ChatChunkChoice { index, delta, logprobs, finish_reason: finish.map(str::to_string) };
        self.chunk(vec![choice], None)
    }
}

impl ChunkFormat for ChatChunks {
    fn prelude(&mut self) -> Vec<String> {
        (0..self.choices)
            .map(|i| {
                let delta = ChatDelta { role: Some("assistant".into()), content: Some(String::new()) };
                self.one(i, delta, None, None)
            })
            .collect()
    }

    fn delta(&mut self, d: Delta) -> Vec<String> {
        let mut out = Vec::new();
        if !d.text.is_empty() || d.logprob.is_some() {
            let lp = d.logprob.as_ref().map(|lp| ChatLogprobs { content: vec![chat_logprob(self.codec.as_ref(), lp)], refusal: None });
            out.push(self.one(d.choice, ChatDelta { role: None, content: Some(d.text) }, lp, None));
        }
        if let Some(f) = d.finish {
            out.push(self.one(d.choice, ChatDelta::default(), None, Some(f)));
        }
        out
    }

    fn usage(&mut self, usage: Usage) -> Option<String> {
        self.include_usage.then(|| self.chunk(Vec::new(), Some(usage)))
    }
}
