//! Logits processors and samplers: greedy, temperature, top-k, top-p, min-p,
//! repetition / frequency / presence penalties, logit bias, allowed-token
//! masks (constrained decoding), with a seeded RNG per sequence.

/// Per-request sampling parameters, already validated by the API layer.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 or -1: disabled.
    pub top_k: i32,
    /// 1.0: disabled.
    pub top_p: f32,
    /// 0.0: disabled.
    pub min_p: f32,
    /// 1.0: disabled. Divides positive logits / multiplies negative ones of
    /// every token seen in the prompt or output.
    pub repetition_penalty: f32,
    /// 0.0: disabled. Subtracts count * penalty for each output token.
    pub frequency_penalty: f32,
    /// 0.0: disabled. Subtracts penalty once for each token present in the output.
    pub presence_penalty: f32,
    /// Added to the logits of the named token ids before anything else.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of this request's RNG; None draws one from the OS.
    pub seed: Option<u64>,
    /// Some(k): return the chosen token's logprob and the top k alternatives.
    pub logprobs: Option<u32>,
    /// Some(k): also return the logprob of every prompt token after the
    /// first (given the tokens before it), with the top k alternatives
    /// (vLLM's `prompt_logprobs`; the legacy completions API's `echo` with
    /// `logprobs`). Such a request never takes prefix-cache hits.
    pub prompt_logprobs: Option<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }
}

pub mod mask;
mod sampler;
pub use mask::TokenMask;
pub use sampler::{apply_processors, log_softmax, logprob_of, sample, sample_masked, seeded_rng};
