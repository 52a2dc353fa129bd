//! OpenAI request bodies as they arrive on the wire. Every field a client
//! may send is optional here; `validate` turns them into engine types.
//! Unknown fields land in `extra` so that each one can be refused by name.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// `stop`: one string or a list of strings.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

/// One part of an array `content`: only `{"type": "text", "text": ...}` is served.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    /// system, developer, user, assistant or tool.
    pub role: String,
    /// May be null or absent on an assistant message that has `tool_calls`.
    pub content: Option<MessageContent>,
    /// A participant's name; passed to the chat template.
    pub name: Option<String>,
    /// An assistant's earlier calls: `[{"id", "type": "function", "function": {"name", "arguments"}}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Value>,
    /// On a `tool` message: the call this is the result of.
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

/// Sampling and stopping fields shared by chat and completions, borrowed
/// from either request so validation is written once.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommonParams<'a> {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub stop: Option<&'a StopSpec>,
    pub stop_token_ids: Option<&'a [i64]>,
    pub seed: Option<i64>,
    pub n: Option<i64>,
    pub logit_bias: Option<&'a BTreeMap<String, f64>>,
    pub ignore_eos: Option<bool>,
    pub stream: Option<bool>,
    pub stream_options: Option<&'a StreamOptions>,
    pub extra: Option<&'a Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessageIn>,
    /// Deprecated by OpenAI in favour of max_completion_tokens; both are served.
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 2)]
    pub repetition_penalty: Option<f64>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<i64>>,
    pub seed: Option<i64>,
    #[schema(minimum = 1)]
    pub n: Option<i64>,
    pub logprobs: Option<bool>,
    #[schema(minimum = 0)]
    pub top_logprobs: Option<i64>,
    pub logit_bias: Option<BTreeMap<String, f64>>,
    pub ignore_eos: Option<bool>,
    pub user: Option<String>,
    /// OpenAI's cache-routing key: kiln echoes it in `x-session-id` (an
    /// `x-session-id` request header wins) for a proxy to route on.
    pub prompt_cache_key: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema",
    /// "json_schema": {"name", "schema", "strict"}}`: enforced by constrained decoding.
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// Function tools: `[{"type": "function", "function": {"name", "description", "parameters"}}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// "none", "auto", "required" or `{"type": "function", "function": {"name"}}`.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Whether one response may hold several calls (default true).
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    pub fn common(&self) -> CommonParams<'_> {
        CommonParams {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repetition_penalty: self.repetition_penalty,
            stop: self.stop.as_ref(),
            stop_token_ids: self.stop_token_ids.as_deref(),
            seed: self.seed,
            n: self.n,
            logit_bias: self.logit_bias.as_ref(),
            ignore_eos: self.ignore_eos,
            stream: self.stream,
            stream_options: self.stream_options.as_ref(),
            extra: Some(&self.extra),
        }
    }
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of
/// token-id lists. Order matters for untagged matching: `[]` is `Texts`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<i64>),
    IdLists(Vec<Vec<i64>>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptSpec,
    /// Defaults to 16, as in OpenAI's legacy completions.
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[schema(minimum = -1)]
    pub top_k: Option<i64>,
    #[schema(minimum = 0, maximum = 1)]
    pub min_p: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f64>,
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 2)]
    pub repetition_penalty: Option<f64>,
    pub stop: Option<StopSpec>,
    pub stop_token_ids: Option<Vec<i64>>,
    pub seed: Option<i64>,
    #[schema(minimum = 1)]
    pub n: Option<i64>,
    /// Number of top alternatives per token; absent or null: none.
    #[schema(minimum = 0)]
    pub logprobs: Option<i64>,
    pub logit_bias: Option<BTreeMap<String, f64>>,
    /// Prepend the prompt to each choice's text; with `logprobs`, the
    /// prompt's tokens and logprobs come first in `logprobs` too (the first
    /// token's logprob is null). Such a request takes no prefix-cache hit.
    pub echo: Option<bool>,
    pub ignore_eos: Option<bool>,
    pub user: Option<String>,
    /// OpenAI's cache-routing key: kiln echoes it in `x-session-id` (an
    /// `x-session-id` request header wins) for a proxy to route on.
    pub prompt_cache_key: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// As in chat completions (an extension of the legacy API, as in vLLM).
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

impl CompletionRequest {
    pub fn common(&self) -> CommonParams<'_> {
        CommonParams {
            max_tokens: Some(self.max_tokens.unwrap_or(16)),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repetition_penalty: self.repetition_penalty,
            stop: self.stop.as_ref(),
            stop_token_ids: self.stop_token_ids.as_deref(),
            seed: self.seed,
            n: self.n,
            logit_bias: self.logit_bias.as_ref(),
            ignore_eos: self.ignore_eos,
            stream: self.stream,
            stream_options: self.stream_options.as_ref(),
            extra: Some(&self.extra),
        }
    }
}

/// `POST /tokenize`: either `prompt` or `messages`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessageIn>>,
    /// For `prompt` (default true).
    pub add_special_tokens: Option<bool>,
    /// For `messages` (default true).
    pub add_generation_prompt: Option<bool>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<i64>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: Map<String, Value>,
}
