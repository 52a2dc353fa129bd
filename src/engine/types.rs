//! Plain data crossing the engine boundary: what a request asks for
//! (`ValidRequest`) and what the engine sends back (`TokenEvent`).

use std::sync::Arc;

use crate::sampling::SamplingParams;
use crate::structured::CompiledGrammar;

/// Scheduling class: interactive requests always go first; batch requests
/// fill what capacity interactive traffic leaves free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Priority {
    #[default]
    Interactive,
    Batch,
}

/// When a sequence stops generating.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StopCriteria {
    /// Maximum number of generated tokens.
    pub max_tokens: usize,
    /// Extra ids that end the sequence (model EOS ids are added by the engine
    /// unless `ignore_eos`).
    pub stop_token_ids: Vec<u32>,
    /// Stop strings, matched on detokenized text; the match is not emitted.
    pub stop_strings: Vec<String>,
    pub ignore_eos: bool,
}

/// A request that has passed validation, templating and tokenization.
#[derive(Clone, Debug)]
pub struct ValidRequest {
    pub request_id: String,
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub stop: StopCriteria,
    /// Number of independent completions sharing the prompt's KV blocks.
    pub n: usize,
    pub priority: Priority,
    /// Constrained decoding: every sequence's output must match this
    /// grammar (each starts its own copy); a complete grammar ends it.
    pub grammar: Option<Arc<CompiledGrammar>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// max_tokens or the context limit.
    Length,
    /// Aborted by the engine (shutdown) -- never sent for a dropped receiver.
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// Log-probability of one token, with the top alternatives when asked.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    /// (token id, logprob), best first.
    pub top: Vec<(u32, f32)>,
}

/// One event of one of the request's `n` sequences.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    /// Which of the request's n sequences (0..n).
    pub index: usize,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum EventKind {
    /// A generated token. `text` is the newly decodable text (possibly empty
    /// while a UTF-8 sequence is incomplete or a stop string may be forming).
    Token { token_id: u32, text: String, logprob: Option<TokenLogprob> },
    /// The logprobs of the prompt, for a request with
    /// `SamplingParams::prompt_logprobs`: sent once, on sequence 0, before
    /// its first `Token`. `first_token` is prompt token 0 (which has no
    /// logprob); `logprobs[i]` is that of prompt token i + 1 given tokens
    /// 0..=i.
    PromptLogprobs { first_token: u32, logprobs: Vec<TokenLogprob> },
    /// The sequence ended; carries what usage needs. Sent once per sequence;
    /// `text` is any text held back that is now safe to emit; `stop_string`
    /// the stop string that ended it, if one did.
    Finished { reason: FinishReason, text: String, usage: SeqUsage, stop_string: Option<String> },
    /// The engine could not serve the sequence (e.g. it can never fit the KV pool).
    Error(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqUsage {
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// Where the sequence's time went inside the engine.
    pub timing: SeqTiming,
}

/// A sequence's phases inside the engine, as vLLM's request metrics split
/// them (vllm/v1/metrics/stats.py: queued, prefill, decode): `queued` from
/// the engine taking the request in to its first scheduled step; `prefill`
/// from then to its first sampled token; `decode` from that token to its
/// last. A phase never reached is zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqTiming {
    pub queued: std::time::Duration,
    pub prefill: std::time::Duration,
    pub decode: std::time::Duration,
}
