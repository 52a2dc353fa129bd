//! The model runner: turns one scheduled step (`BatchInput`) into sampled
//! token ids. It owns the backend's KV memory; the engine owns the block ids.

pub mod cpu;
pub mod encoder;

use crate::engine::TokenLogprob;
use crate::model::BatchInput;
use crate::sampling::{SamplingParams, TokenMask};

/// What sampling needs for one sequence that wants logits this step.
pub struct SampleRequest<'a> {
    pub params: &'a SamplingParams,
    /// The sequence's own RNG (seeded per request; advanced only when sampling).
    pub rng: &'a mut rand_chacha::ChaCha8Rng,
    /// Prompt ids and ids generated so far (for repetition/frequency/presence penalties).
    pub prompt: &'a [u32],
    pub output: &'a [u32],
    /// Constrained decoding: the tokens this sequence may sample next, as a
    /// packed bitmask of `ceil(vocab_size / 32)` words (bit `i % 32` of word
    /// `i / 32` set = token `i` allowed; see `sampling::mask`). The grammar
    /// worker fills it while the forward pass runs: a runner calls
    /// `TokenMask::wait` only for this sequence's row, after launching the
    /// forward pass and before sampling it, then applies it after the
    /// penalties (disallowed logits become -inf). None: unconstrained.
    pub allowed_tokens: Option<&'a TokenMask>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    pub token_id: u32,
    /// Present when the request asked for logprobs.
    pub logprob: Option<TokenLogprob>,
}

/// The prompt logprobs one step computed for one sequence of its batch.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptLogprobs {
    /// Index of the sequence in `BatchInput::seqs`.
    pub seq: usize,
    /// One entry per `SeqInput::prompt_targets` entry, in order.
    pub logprobs: Vec<TokenLogprob>,
}

/// A backend able to run steps. The CPU runner (worker pool) and the CUDA runner
/// implement it; scheduler tests use a fake.
pub trait ModelRunner: Send {
    /// Runs the forward pass of `batch`, writing K/V of its tokens into the
    /// paged cache, and samples one token for each sequence of `batch.seqs`
    /// with `want_logits`, in order; `sample` has one entry per such sequence.
    fn execute(&mut self, batch: &BatchInput, sample: &mut [SampleRequest<'_>]) -> anyhow::Result<Vec<Sampled>>;
    /// Number of KV blocks the runner's pool holds (block 0 included, never used).
    /// Whether the runner computes prompt logprobs (`SeqInput::prompt_targets`);
    /// the engine refuses requests asking for them otherwise.
    fn supports_prompt_logprobs(&self) -> bool {
        false
    }
    /// The prompt logprobs of the last `execute`, one entry per sequence of
    /// its batch with `prompt_targets` (taken: a second call returns none).
    fn take_prompt_logprobs(&mut self) -> Vec<PromptLogprobs> {
        Vec::new()
    }
    fn num_kv_blocks(&self) -> usize;
    fn block_size(&self) -> usize;
    fn vocab_size(&self) -> usize;
}
