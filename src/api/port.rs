//! What the HTTP layer needs from the engine and the tokenizer, as two small
//! traits. The real `EngineHandle` and `Tokenizer` implement them (see
//! `adapters.rs`); in-process tests plug in fakes. The engine is still one
//! owner on its own thread: `submit` only sends on a channel.

use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::{TokenEvent, ValidRequest};

/// Engine counters the server exposes on /metrics and uses for /health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineGauges {
    pub num_running: usize,
    pub num_waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub num_preemptions: u64,
    /// Model steps run so far (0 until the first forward pass).
    pub steps: u64,
    /// Tokens per KV block (0: no paged cache, e.g. an embedding model).
    pub block_size: usize,
}

/// Why the engine refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// It can never be served as asked (e.g. it cannot fit the KV pool): a 400.
    #[error("{0}")]
    Invalid(String),
    /// The engine has shut down: a 503.
    #[error("the engine has shut down")]
    Closed,
}

/// The engine as the HTTP layer sees it.
pub trait Engine: Send + Sync + 'static {
    /// Queues the request. Events arrive on the receiver; dropping the
    /// receiver aborts every sequence of the request at the next step.
    fn submit(&self, request: ValidRequest) -> Result<UnboundedReceiver<TokenEvent>, SubmitError>;
    fn gauges(&self) -> EngineGauges;
    /// Asks the engine to call `observer` with the tokens of each forward
    /// pass (for `vllm:iteration_tokens_total`). The default ignores it:
    /// an engine without steps of its own (a fake, a wrapper) has none.
    fn observe_steps(&self, observer: crate::engine::handle::StepObserver) {
        let _ = observer;
    }
    /// Time since the engine thread last showed it is alive; None: this
    /// engine publishes no heartbeat (taken as alive).
    fn heartbeat_age(&self) -> Option<std::time::Duration> {
        None
    }
    /// Aborts everything still running and stops the engine thread.
    fn shutdown(&self);
}

/// One chat turn after the API flattened its content parts to text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTurn {
    pub role: String,
    pub content: String,
}

/// Errors a tokenizer reports. `Template` is the client's fault (e.g. roles
/// that do not alternate) and becomes a 400; `Other` becomes a 500.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CodecError {
    #[error("{0}")]
    Template(String),
    #[error("{0}")]
    Other(String),
}

/// The tokenizer as the HTTP layer sees it. The provided methods are what
/// a codec without them (a test fake) falls back to.
pub trait TextCodec: Send + Sync + 'static {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, CodecError>;
    /// Ids of `text` with special tokens, at most `max_tokens` of them:
    /// the text is cut at its end and the special tokens are kept (as
    /// transformers' `truncation=True, max_length=k`). The default cuts the
    /// ids of `encode`.
    fn encode_truncated(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>, CodecError> {
        let mut ids = self.encode(text, true)?;
        ids.truncate(max_tokens);
        Ok(ids)
    }
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, CodecError>;
    fn vocab_size(&self) -> usize;
    fn apply_chat_template(&self, turns: &[ChatTurn], add_generation_prompt: bool) -> Result<String, CodecError>;

    /// Renders messages given as JSON objects (`content` may be null;
    /// `tool_calls`, `tool_call_id`, `name` pass through) with the template's
    /// `tools` variable. The fallback renders role and text turns only.
    fn render_chat(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, CodecError> {
        let _ = tools;
        let turns: Vec<ChatTurn> = messages
            .iter()
            .map(|m| ChatTurn {
                role: m["role"].as_str().unwrap_or_default().to_string(),
                content: m["content"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        self.apply_chat_template(&turns, add_generation_prompt)
    }

    /// Whether the chat template renders the `tools` variable itself.
    fn template_supports_tools(&self) -> bool {
        false
    }

    /// The chat template's source (to pick the tool-call format).
    fn chat_template_source(&self) -> Option<String> {
        None
    }

    /// The raw bytes of token `id` (None: unknown; the decoded text is used).
    fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let _ = id;
        None
    }

    /// The vocabulary for constrained decoding; None: structured outputs
    /// and constrained tool calls are unavailable.
    fn grammar_vocab(&self) -> Option<crate::structured::VocabBytes> {
        None
    }
}
