//! POST /v1/embeddings: `input` as a string, strings, token ids or lists of
//! token ids; `encoding_format` float or base64 (little-endian f32, as
//! OpenAI's SDK decodes it); `dimensions` (Matryoshka truncation, then
//! re-normalisation, where the model allows it); vLLM's
//! `truncate_prompt_tokens`. One embedding-engine request per HTTP request;
//! the engine batches its inputs with everyone else's.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::Json;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::admit::{admit, blocking, charge_tokens, codec_error};
use super::auth::Caller;
use super::error::{ApiError, ErrorResponse};
use super::json::ApiJson;
use super::models::{route_recorded, ModelTask};
use super::port::{EngineGauges, SubmitError, TextCodec};
use super::reqlog::RequestRecord;
use super::validate::{check_token_id, refuse_extra};
use super::wire_in::PromptSpec;
use super::AppState;
use crate::engine::embed::{EmbedHandle, EmbedReply, EmbedRequest};
use crate::engine::{EngineError, Priority};
use crate::model::pooling::truncate_dims;

/// The embedding engine as the HTTP layer sees it.
pub trait Embedder: Send + Sync + 'static {
    /// Queues the request; its vectors (or the failure) arrive on the receiver.
    fn embed(&self, request: EmbedRequest) -> Result<oneshot::Receiver<EmbedReply>, SubmitError>;
    fn gauges(&self) -> EngineGauges;
    /// Length of the model's vectors.
    fn dimensions(&self) -> usize;
    /// As `Engine::heartbeat_age`; None: no heartbeat (taken as alive).
    fn heartbeat_age(&self) -> Option<std::time::Duration> {
        None
    }
    fn shutdown(&self);
}

impl Embedder for EmbedHandle {
    fn embed(&self, request: EmbedRequest) -> Result<oneshot::Receiver<EmbedReply>, SubmitError> {
        self.submit(request).map_err(|e| match e {
            EngineError::InvalidRequest(m) => SubmitError::Invalid(m),
            EngineError::Shutdown | EngineError::Config(_) => SubmitError::Closed,
        })
    }
    fn gauges(&self) -> EngineGauges {
        let s = self.stats();
        EngineGauges { num_running: s.num_running as usize, num_waiting: s.num_waiting as usize, steps: s.steps, ..Default::default() }
    }
    fn dimensions(&self) -> usize {
        EmbedHandle::dimensions(self)
    }
    fn heartbeat_age(&self) -> Option<std::time::Duration> {
        Some(EmbedHandle::heartbeat_age(self))
    }
    fn shutdown(&self) {
        EmbedHandle::shutdown(self)
    }
}

/// An embedder whose every request runs at `Priority::Batch` (the Batch API's).
pub struct BatchPriorityEmbedder(pub Arc<dyn Embedder>);

impl Embedder for BatchPriorityEmbedder {
    fn embed(&self, mut request: EmbedRequest) -> Result<oneshot::Receiver<EmbedReply>, SubmitError> {
        request.priority = Priority::Batch;
        self.0.embed(request)
    }
    fn gauges(&self) -> EngineGauges {
        self.0.gauges()
    }
    fn dimensions(&self) -> usize {
        self.0.dimensions()
    }
    fn heartbeat_age(&self) -> Option<std::time::Duration> {
        self.0.heartbeat_age()
    }
    /// The batch layer never owns the engine: whoever started it stops it.
    fn shutdown(&self) {}
}

/// The `Engine` of an embedding model: generation work is refused (routing
/// answers 400 before it gets here); gauges and shutdown are the embedder's.
pub struct EmbedOnly(pub Arc<dyn Embedder>);

impl super::port::Engine for EmbedOnly {
    fn submit(&self, _: crate::engine::ValidRequest) -> Result<tokio::sync::mpsc::UnboundedReceiver<crate::engine::TokenEvent>, SubmitError> {
        Err(SubmitError::Invalid("this model serves embeddings only".into()))
    }
    fn gauges(&self) -> EngineGauges {
        self.0.gauges()
    }
    fn heartbeat_age(&self) -> Option<std::time::Duration> {
        self.0.heartbeat_age()
    }
    fn shutdown(&self) {
        self.0.shutdown()
    }
}

/// The body of POST /v1/embeddings.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: PromptSpec,
    /// "float" (default) or "base64".
    #[schema(pattern = "^(float|base64)$")]
    pub encoding_format: Option<String>,
    /// Keep the first `dimensions` values (re-normalised): Matryoshka models only.
    #[schema(minimum = 1)]
    pub dimensions: Option<i64>,
    /// Accepted and logged nowhere (OpenAI uses it for abuse monitoring).
    pub user: Option<String>,
    /// vLLM's: keep the first k tokens of each input (-1: the model's limit)
    /// instead of refusing a longer one. Special tokens are kept.
    pub truncate_prompt_tokens: Option<i64>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

/// An embedding as floats, or as base64 of little-endian f32.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct EmbeddingData {
    pub object: String,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct EmbeddingResponse {
    pub object: String,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

/// An input before tokenization.
enum RawInput {
    Text(String),
    Ids(Vec<u32>),
}

/// What the request asks beside its inputs, checked.
struct Shape {
    base64: bool,
    dimensions: Option<usize>,
    /// Truncate each input to this many tokens.
    truncate: Option<usize>,
}

fn check_shape(req: &EmbeddingRequest, state: &AppState, model_dims: usize) -> Result<Shape, ApiError> {
    refuse_extra(&req.extra, "")?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(ApiError::invalid(format!("encoding_format must be 'float' or 'base64', got '{other}'"), "encoding_format")),
    };
    let dimensions = match req.dimensions {
        None => None,
        Some(d) if d < 1 => return Err(ApiError::invalid(format!("dimensions must be between 1 and {model_dims}, got {d}"), "dimensions")),
        Some(d) => {
            let d = usize::try_from(d).unwrap_or(usize::MAX);
            state.matryoshka.check(d, model_dims).map_err(|m| ApiError::invalid(format!("'{}': {m}", state.model.name), "dimensions"))?;
            // The native size truncates nothing.
            (d != model_dims).then_some(d)
        }
    };
    let limit = state.model.max_model_len;
    let truncate = match req.truncate_prompt_tokens {
        None => None,
        Some(-1) => Some(limit),
        Some(k) if k < 1 || k as u64 > limit as u64 => {
            let msg = format!("truncate_prompt_tokens must be -1 or between 1 and the model's limit of {limit}, got {k}");
            return Err(ApiError::invalid(msg, "truncate_prompt_tokens"));
        }
        Some(k) => Some(k as usize),
    };
    Ok(Shape { base64, dimensions, truncate })
}

fn raw_inputs(spec: &PromptSpec, state: &AppState) -> Result<Vec<RawInput>, ApiError> {
    let vocab = state.limits.vocab_size;
    let ids = |v: &[i64], param: &str| -> Result<RawInput, ApiError> {
        if v.is_empty() {
            return Err(ApiError::invalid(format!("{param} must not be empty"), param));
        }
        Ok(RawInput::Ids(v.iter().map(|&t| check_token_id(t, vocab, param)).collect::<Result<_, _>>()?))
    };
    let text = |t: &str, param: &str| -> Result<RawInput, ApiError> {
        if t.is_empty() {
            return Err(ApiError::invalid(format!("{param} must not be empty"), param));
        }
        Ok(RawInput::Text(t.to_string()))
    };
    let count = |n: usize| -> Result<(), ApiError> {
        let max = state.limits.max_prompts;
        match n {
            0 => Err(ApiError::invalid("input must not be empty", "input")),
            n if n > max => Err(ApiError::invalid(format!("at most {max} inputs per request, got {n}"), "input")),
            _ => Ok(()),
        }
    };
    match spec {
        PromptSpec::Text(t) => Ok(vec![text(t, "input")?]),
        PromptSpec::Ids(v) => Ok(vec![ids(v, "input")?]),
        PromptSpec::Texts(v) => {
            count(v.len())?;
            v.iter().enumerate().map(|(i, t)| text(t, &format!("input[{i}]"))).collect()
        }
        PromptSpec::IdLists(v) => {
            count(v.len())?;
            v.iter().enumerate().map(|(i, t)| ids(t, &format!("input[{i}]"))).collect()
        }
    }
}

/// Token ids of every input, truncated when asked, else checked against the limit.
fn tokenize(codec: &dyn TextCodec, inputs: Vec<RawInput>, truncate: Option<usize>, limit: usize) -> Result<Vec<Vec<u32>>, ApiError> {
    let many = inputs.len() > 1;
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let param = if many { format!("input[{i}]") } else { "input".to_string() };
            let ids = match (raw, truncate) {
                (RawInput::Text(t), Some(k)) => {
                    let ids = codec.encode_truncated(&t, k).map_err(|e| codec_error(e, &param))?;
                    if ids.len() > k {
                        // Only the special tokens are left and they are more than k.
                        let msg = format!(
                            "truncate_prompt_tokens {k} is less than the {} special tokens the model adds to every input",
                            ids.len()
                        );
                        return Err(ApiError::invalid(msg, "truncate_prompt_tokens"));
                    }
                    ids
                }
                (RawInput::Text(t), None) => codec.encode(&t, true).map_err(|e| codec_error(e, &param))?,
                (RawInput::Ids(mut ids), Some(k)) => {
                    ids.truncate(k);
                    ids
                }
                (RawInput::Ids(ids), None) => ids,
            };
            if ids.len() > limit {
                let message = format!(
                    "This model's maximum input length is {limit} tokens. However, {param} has {} tokens. \
                     Shorten it, or set truncate_prompt_tokens to truncate it.",
                    ids.len()
                );
                return Err(ApiError::ContextLength { message, param: "input" });
            }
            if ids.is_empty() {
                return Err(ApiError::invalid(format!("{param} has no tokens"), param));
            }
            Ok(ids)
        })
        .collect()
}

fn le_base64(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// POST /v1/embeddings.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    request_body = EmbeddingRequest,
    responses(
        (status = 200, body = EmbeddingResponse),
        (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 413, body = ErrorResponse),
        (status = 415, body = ErrorResponse), (status = 429, body = ErrorResponse),
        (status = 500, body = ErrorResponse), (status = 503, body = ErrorResponse),
    ),
    security((), ("bearer" = []))
)]
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(record): Extension<RequestRecord>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Result<Json<EmbeddingResponse>, ApiError> {
    let state = route_recorded(&state, &record, &req.model, ModelTask::Embed)?;
    let embedder = state.embedder.clone().ok_or_else(|| ApiError::Internal("embedding model without an embedder".into()))?;
    let shape = check_shape(&req, &state, embedder.dimensions())?;
    let raw = raw_inputs(&req.input, &state)?;
    let _pending = admit(&state, &caller, &record)?;
    let (codec, limit, truncate) = (state.codec.clone(), state.model.max_model_len, shape.truncate);
    let inputs = blocking(move || tokenize(codec.as_ref(), raw, truncate, limit)).await?;
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    charge_tokens(&caller, &record, tokens)?;
    record.add_prompt_tokens(tokens);
    let request = EmbedRequest { request_id: record.id().to_string(), inputs, priority: Priority::Interactive };
    let rx = embedder.embed(request).map_err(|e| match e {
        SubmitError::Invalid(m) => ApiError::Invalid { message: m, param: Some("input".into()), code: None },
        SubmitError::Closed => ApiError::ShuttingDown,
    })?;
    let vectors = rx.await.map_err(|_| ApiError::ShuttingDown)?.map_err(ApiError::Engine)?;
    state.metrics.vllm.on_pooled(tokens);
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let v = match shape.dimensions {
                Some(d) => truncate_dims(v, d),
                None => v,
            };
            let embedding = if shape.base64 { EmbeddingVector::Base64(le_base64(&v)) } else { EmbeddingVector::Float(v) };
            EmbeddingData { object: "embedding".into(), index, embedding }
        })
        .collect();
    let usage = EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens };
    Ok(Json(EmbeddingResponse { object: "list".into(), data, model: state.model.name.clone(), usage }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        let s = le_base64(&[1.0, -2.5]);
        let b = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(b, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
    }
}
