//! POST /v1/completions: prompt as a string, strings, token ids or lists of
//! token ids; one engine request per prompt, `n` choices each.

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
use super::logprobs::{push_completion_logprob, push_prompt_logprobs};
use super::port::TextCodec;
use super::reqlog::RequestRecord;
use super::sse::{sse_response, ChunkFormat};
use super::structured::{compile, parse_response_format};
use super::validate::{check_token_id, fit_context, validate_common, Limits};
use super::wire_in::{CompletionRequest, PromptSpec};
use super::wire_out::*;
use super::{AppState, ResponseMeta};

/// A prompt before tokenization.
enum RawPrompt {
    Text(String),
    Ids(Vec<u32>),
}

fn check_count(count: usize, limits: &Limits) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::invalid("prompt must not be empty", "prompt"));
    }
    if count > limits.max_prompts {
        return Err(ApiError::invalid(format!("at most {} prompts per request, got {count}", limits.max_prompts), "prompt"));
    }
    Ok(())
}

fn ids_prompt(ids: &[i64], param: &str, limits: &Limits) -> Result<RawPrompt, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::invalid(format!("{param} must not be empty"), param));
    }
    let ids = ids.iter().map(|&id| check_token_id(id, limits.vocab_size, param)).collect::<Result<_, _>>()?;
    Ok(RawPrompt::Ids(ids))
}

fn text_prompt(text: &str, param: &str) -> Result<RawPrompt, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid(format!("{param} must not be empty"), param));
    }
    Ok(RawPrompt::Text(text.to_string()))
}

/// Every prompt form to a list, checked for emptiness, count and vocabulary.
fn raw_prompts(spec: &PromptSpec, limits: &Limits) -> Result<Vec<RawPrompt>, ApiError> {
    match spec {
        PromptSpec::Text(t) => Ok(vec![text_prompt(t, "prompt")?]),
        PromptSpec::Ids(ids) => Ok(vec![ids_prompt(ids, "prompt", limits)?]),
        PromptSpec::Texts(v) => {
            check_count(v.len(), limits)?;
            v.iter().enumerate().map(|(i, t)| text_prompt(t, &format!("prompt[{i}]"))).collect()
        }
        PromptSpec::IdLists(v) => {
            check_count(v.len(), limits)?;
            v.iter().enumerate().map(|(i, ids)| ids_prompt(ids, &format!("prompt[{i}]"), limits)).collect()
        }
    }
}

fn completion_logprobs(req: &CompletionRequest, limits: &Limits) -> Result<Option<u32>, ApiError> {
    match req.logprobs {
        None => Ok(None),
        Some(k) if k < 0 || k as u64 > limits.max_logprobs as u64 => Err(ApiError::invalid(
            format!("logprobs must be between 0 and {}, got {k}", limits.max_logprobs),
            "logprobs",
        )),
        Some(k) => Ok(Some(k as u32)),
    }
}

/// Token ids and (for echo) text of every prompt.
fn tokenize(codec: &dyn TextCodec, prompts: Vec<RawPrompt>, echo: bool) -> Result<Vec<(Vec<u32>, String)>, ApiError> {
    prompts
        .into_iter()
        .map(|p| match p {
            RawPrompt::Text(t) => Ok((codec.encode(&t, true).map_err(|e| codec_error(e, "prompt"))?, t)),
            RawPrompt::Ids(ids) => {
                let text = if echo { codec.decode(&ids, false).map_err(|e| codec_error(e, "prompt"))? } else { String::new() };
                Ok((ids, text))
            }
        })
        .collect()
}

#[utoipa::path(
    post,
    path = "/v1/completions",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "A completion, or an SSE stream of chunks when stream is true",
            content((CompletionResponse = "application/json"), (CompletionResponse = "text/event-stream"))),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse),
        (status = 415, body = ErrorResponse), (status = 429, body = ErrorResponse),
        (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(record): Extension<RequestRecord>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let state = super::models::route_recorded(&state, &record, &req.model, super::ModelTask::Generate)?;
    record.set_session_key(req.prompt_cache_key.as_deref());
    let echo = req.echo.unwrap_or(false);
    // OpenAI takes echo with max_tokens 0: the prompt alone (with its
    // logprobs when asked), finish_reason "length", no completion tokens.
    let prompt_only = echo && req.max_tokens == Some(0);
    let mut common = req.common();
    if prompt_only {
        common.max_tokens = None;
        if common.n.is_some_and(|n| n > 1) {
            return Err(ApiError::invalid("echo with max_tokens 0 returns the prompt once: n must be 1", "n"));
        }
    }
    let mut params = validate_common(&common, "max_tokens", &state.limits)?;
    if prompt_only {
        params.max_tokens = Some(0);
    }
    params.sampling.logprobs = completion_logprobs(&req, &state.limits)?;
    // echo with logprobs: the prompt's tokens come first in `logprobs`.
    params.sampling.prompt_logprobs = params.sampling.logprobs.filter(|_| echo);
    let raw = raw_prompts(&req.prompt, &state.limits)?;
    let spec = parse_response_format(req.response_format.as_ref())?;
    let grammar = match spec {
        Some(spec) => Some(compile(&state, spec, "response_format").await?),
        None => None,
    };
    let pending = admit(&state, &caller, &record)?;

    let codec = state.codec.clone();
    let prompts = blocking(move || tokenize(codec.as_ref(), raw, echo)).await?;
    let mut jobs = Vec::with_capacity(prompts.len());
    let mut echoes = Vec::with_capacity(prompts.len());
    let mut charge = 0;
    for (ids, text) in prompts {
        if ids.is_empty() {
            return Err(ApiError::invalid("prompt must not be empty", "prompt"));
        }
        let max_tokens = fit_context(ids.len(), params.max_tokens, state.model.max_model_len, "prompt")?;
        charge += ids.len() + max_tokens * params.n;
        jobs.push(PromptJob { prompt_ids: ids, max_tokens, grammar: grammar.clone() });
        echoes.push(if echo { text } else { String::new() });
    }
    charge_tokens(&caller, &record, charge)?;
    let prompt_lens: Vec<usize> = jobs.iter().map(|j| j.prompt_ids.len()).collect();
    record.add_prompt_tokens(prompt_lens.iter().sum());

    let meta = ResponseMeta::new("cmpl", &state);
    let rxs = submit_all(&state, &meta.id, jobs, &params.sampling, &params.stop, params.n)?;
    let running = Running::new(rxs, params.n, prompt_lens, pending, record, state.clone());
    let mut format = CompletionChunks::new(meta, state.codec.clone(), params.include_usage, params.n, echoes);
    if params.stream {
        return Ok(sse_response(running, format, Duration::from_secs(state.config.sse_keepalive)));
    }
    Ok(Json(format.collect(running).await?).into_response())
}

/// Builds `text_completion` objects, streamed or whole. Tracks each
/// choice's text length for logprobs' `text_offset`.
struct CompletionChunks {
    meta: ResponseMeta,
    codec: Arc<dyn TextCodec>,
    include_usage: bool,
    n: usize,
    /// Echoed prompt text per prompt ("" without echo).
    echoes: Vec<String>,
    /// Characters emitted so far per choice.
    offsets: Vec<usize>,
}

impl CompletionChunks {
    fn new(meta: ResponseMeta, codec: Arc<dyn TextCodec>, include_usage: bool, n: usize, echoes: Vec<String>) -> Self {
        let offsets = vec![0; echoes.len() * n];
        CompletionChunks { meta, codec, include_usage, n, echoes, offsets }
    }

    fn response(&self, choices: Vec<CompletionChoice>, usage: Option<Option<Usage>>) -> CompletionResponse {
        CompletionResponse {
            id: self.meta.id.clone(),
            object: "text_completion".into(),
            created: self.meta.created,
            model: self.meta.model.clone(),
            system_fingerprint: self.meta.fingerprint.clone(),
            choices,
            usage,
        }
    }

    /// The delta's logprobs: the prompt's (echo) when it carries them, then its token's.
    fn logprobs_of(&mut self, d: &Delta) -> Option<CompletionLogprobs> {
        if d.logprob.is_none() && d.prompt.is_none() {
            return None;
        }
        let mut out = CompletionLogprobs::default();
        if let Some(p) = &d.prompt {
            push_prompt_logprobs(&mut out, self.codec.as_ref(), p.first_token, &p.logprobs);
        }
        if let Some(lp) = &d.logprob {
            push_completion_logprob(&mut out, self.codec.as_ref(), lp, self.offsets[d.choice]);
        }
        Some(out)
    }

    async fn collect(&mut self, mut running: Running) -> Result<CompletionResponse, ApiError> {
        let k = running.num_choices();
        let mut texts: Vec<String> = (0..k).map(|c| self.echoes[c / self.n].clone()).collect();
        self.offsets = texts.iter().map(|t| t.chars().count()).collect();
        let mut lps: Vec<Option<CompletionLogprobs>> = vec![None; k];
        let mut finish = vec!["stop"; k];
        let usage = loop {
            match running.next_step().await {
                Some(Step::Delta(d)) => {
                    if let Some(lp) = self.logprobs_of(&d) {
                        let all = lps[d.choice].get_or_insert_with(Default::default);
                        all.tokens.extend(lp.tokens);
                        all.token_logprobs.extend(lp.token_logprobs);
                        all.top_logprobs.extend(lp.top_logprobs);
                        all.text_offset.extend(lp.text_offset);
                    }
                    self.offsets[d.choice] += d.text.chars().count();
                    texts[d.choice].push_str(&d.text);
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
            .map(|i| CompletionChoice {
                index: i,
                text: std::mem::take(&mut texts[i]),
                logprobs: lps[i].take(),
                finish_reason: Some(finish[i].to_string()),
            })
            .collect();
        Ok(self.response(choices, Some(Some(usage))))
    }

    fn chunk(&self, choice: CompletionChoice) -> String {
        let usage = self.include_usage.then_some(None);
        serde_json::to_string(&self.response(vec![choice], usage)).unwrap_or_default()
    }
}

impl ChunkFormat for CompletionChunks {
    fn prelude(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for c in 0..self.offsets.len() {
            let echo = &self.echoes[c / self.n];
            if !echo.is_empty() {
                self.offsets[c] = echo.chars().count();
                out.push(self.chunk(CompletionChoice { index: c, text: echo.clone(), logprobs: None, finish_reason: None }));
            }
        }
        out
    }

    fn delta(&mut self, d: Delta) -> Vec<String> {
        let logprobs = self.logprobs_of(&d);
        self.offsets[d.choice] += d.text.chars().count();
        let mut out = Vec::new();
        if !d.text.is_empty() || logprobs.is_some() {
            out.push(self.chunk(CompletionChoice { index: d.choice, text: d.text, logprobs, finish_reason: None }));
        }
        if let Some(f) = d.finish {
            let last = CompletionChoice { index: d.choice, text: String::new(), logprobs: None, finish_reason: Some(f.into()) };
            out.push(self.chunk(last));
        }
        out
    }

    fn usage(&mut self, usage: Usage) -> Option<String> {
        let resp = self.response(Vec::new(), Some(Some(usage)));
        self.include_usage.then(|| serde_json::to_string(&resp).unwrap_or_default())
    }
}
