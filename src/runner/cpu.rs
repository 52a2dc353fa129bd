//! The CPU model runner: the Llama-family forward pass on the CPU backend,
//! then the sampler on each row of logits.

use super::{ModelRunner, PromptLogprobs, SampleRequest, Sampled};
use crate::backend::cpu::KvCache;
use crate::model::config::ModelConfig;
use crate::model::llama::LlamaModel;
use crate::model::BatchInput;
use crate::sampling::{logprob_of, sample_masked};
use crate::backend::cpu::pool;

pub struct CpuRunner {
    model: LlamaModel,
    cache: KvCache,
    /// Prompt logprobs of the last step, until taken.
    prompt_logprobs: Vec<PromptLogprobs>,
}

/// KV blocks that fit `budget_bytes` (at least 2: the null block and one more).
pub fn kv_blocks_for_budget(cfg: &ModelConfig, budget_bytes: usize, block_size: usize) -> usize {
    let per = KvCache::bytes_per_block(cfg.num_layers, block_size, cfg.num_kv_heads, cfg.head_dim);
    (budget_bytes / per).max(2)
}

impl CpuRunner {
    pub fn new(model: LlamaModel, num_blocks: usize, block_size: usize) -> CpuRunner {
        let cache = model.new_kv_cache(num_blocks, block_size);
        CpuRunner { model, cache, prompt_logprobs: Vec::new() }
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }

    /// The raw forward pass (logits of the sequences wanting them).
    pub fn forward(&mut self, batch: &BatchInput) -> Vec<f32> {
        self.model.forward(batch, &mut self.cache)
    }
}

impl ModelRunner for CpuRunner {
    fn execute(&mut self, batch: &BatchInput, reqs: &mut [SampleRequest<'_>]) -> anyhow::Result<Vec<Sampled>> {
        let want = batch.seqs.iter().filter(|s| s.want_logits).count();
        anyhow::ensure!(want == reqs.len(), "{} sequences want logits but {} sample requests", want, reqs.len());
        let vocab = self.model.cfg.vocab_size;
        let (mut logits, prompt_logits) = self.model.forward_with_prompt(batch, &mut self.cache);
        self.prompt_logprobs = prompt_logprobs(batch, &prompt_logits, vocab);
        let mut rows: Vec<(&mut [f32], &mut SampleRequest<'_>)> = logits.chunks_mut(vocab).zip(reqs.iter_mut()).collect();
        Ok(pool::map_mut(&mut rows, |(row, r)| {
            // Only a constrained row waits for its mask; the others sample at once.
            let mask = r.allowed_tokens.map(|m| m.wait());
            let (token_id, logprob) = sample_masked(row, r.params, r.rng, r.prompt, r.output, mask.as_deref());
            Sampled { token_id, logprob }
        }))
    }
    fn supports_prompt_logprobs(&self) -> bool {
        true
    }
    fn take_prompt_logprobs(&mut self) -> Vec<PromptLogprobs> {
        std::mem::take(&mut self.prompt_logprobs)
    }
    fn num_kv_blocks(&self) -> usize {
        self.cache.num_blocks
    }
    fn block_size(&self) -> usize {
        self.cache.block_size
    }
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }
}

/// The log-softmax of each prompt row of `logits` (`[rows, vocab]`, laid
/// out as `LlamaModel::forward_with_prompt` returns them) at its target
/// token, with the sequence's top alternatives; no sampling processor
/// applies (vLLM reports prompt logprobs of the raw distribution too).
fn prompt_logprobs(batch: &BatchInput, logits: &[f32], vocab: usize) -> Vec<PromptLogprobs> {
    let mut rows = logits.chunks(vocab);
    let mut out = Vec::new();
    for (i, s) in batch.seqs.iter().enumerate() {
        if s.prompt_targets.is_empty() {
            continue;
        }
        let mine: Vec<&[f32]> = rows.by_ref().take(s.prompt_targets.len()).collect();
        let logprobs = pool::map(mine.len(), |i| logprob_of(mine[i], s.prompt_targets[i], s.prompt_top));
        out.push(PromptLogprobs { seq: i, logprobs });
    }
    out
}
