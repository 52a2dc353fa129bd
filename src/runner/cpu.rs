//! The CPU model runner: the Llama-family forward pass on the rayon backend,
//! then the sampler on each row of logits.

use super::{ModelRunner, SampleRequest, Sampled};
use crate::backend::cpu::KvCache;
use crate::model::config::ModelConfig;
use crate::model::llama::LlamaModel;
use crate::model::BatchInput;
use crate::sampling::sample_masked;
use rayon::prelude::*;

pub struct CpuRunner {
    model: LlamaModel,
    cache: KvCache,
}

/// KV blocks that fit `budget_bytes` (at least 2: the null block and one more).
pub fn kv_blocks_for_budget(cfg: &ModelConfig, budget_bytes: usize, block_size: usize) -> usize {
    let per = KvCache::bytes_per_block(cfg.num_layers, block_size, cfg.num_kv_heads, cfg.head_dim);
    (budget_bytes / per).max(2)
}

impl CpuRunner {
    pub fn new(model: LlamaModel, num_blocks: usize, block_size: usize) -> CpuRunner {
        let cache = model.new_kv_cache(num_blocks, block_size);
        CpuRunner { model, cache }
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
        let mut logits = self.forward(batch);
        Ok(logits
            .par_chunks_mut(vocab)
            .zip(reqs.par_iter_mut())
            .map(|(row, r)| {
                // Only a constrained row waits for its mask; the others sample at once.
                let mask = r.allowed_tokens.map(|m| m.wait());
                let (token_id, logprob) = sample_masked(row, r.params, r.rng, r.prompt, r.output, mask.as_deref());
                Sampled { token_id, logprob }
            })
            .collect())
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
