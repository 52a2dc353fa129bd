//! Embedding runners: a batch of whole inputs in, one pooled vector per
//! input out. No KV cache outlives a step and nothing is sampled.
//!
//! ```text
//! tokens: [ s0 t0 t1 t2 | s1 t0 | s2 t0 t1 ]   seqs: [(0,3), (3,1), (4,2)]
//!   BertRunner:          BertModel (bidirectional) -> pooling
//!   DecoderEmbedRunner:  LlamaModel (causal, a scratch KV pool for this
//!                        step only) -> last_hidden_state -> pooling
//! (their CUDA twins: backend::cuda::encoder::{CudaBertRunner,
//! CudaDecoderEmbedRunner})
//! ```

use crate::backend::cpu::KvCache;
use crate::model::bert::BertModel;
use crate::model::llama::LlamaModel;
use crate::model::pooling::Pooling;
use crate::model::BatchInput;

/// A model that turns whole inputs into vectors (the embedding engine's runner).
pub trait EncoderRunner: Send {
    /// One pooled (and, as the model asks, normalised) vector per sequence.
    /// `tokens` holds the sequences back to back; `seqs` gives each one's
    /// (first index, length >= 1).
    fn encode(&mut self, tokens: &[u32], seqs: &[(usize, usize)]) -> anyhow::Result<Vec<Vec<f32>>>;
    /// Length of every vector.
    fn dimensions(&self) -> usize;
}

/// A BERT-family encoder with its sentence-transformers pooling.
pub struct BertRunner {
    pub model: BertModel,
    pub pooling: Pooling,
}

impl EncoderRunner for BertRunner {
    fn encode(&mut self, tokens: &[u32], seqs: &[(usize, usize)]) -> anyhow::Result<Vec<Vec<f32>>> {
        let max = self.model.cfg.max_position_embeddings;
        if let Some(&(_, len)) = seqs.iter().find(|s| s.1 > max || s.1 == 0) {
            anyhow::bail!("an input of {len} tokens is outside 1..={max} (max_position_embeddings)");
        }
        let hidden = self.model.forward(tokens, seqs);
        Ok(self.pooling.pool(&hidden, self.model.cfg.hidden_size, seqs))
    }
    fn dimensions(&self) -> usize {
        self.model.cfg.hidden_size
    }
}

/// A Llama-family decoder used as an embedding model (e.g. Qwen3-Embedding):
/// causal prefill of every input in one step, then pooling.
pub struct DecoderEmbedRunner {
    model: LlamaModel,
    cache: KvCache,
    pooling: Pooling,
}

/// Block size of the scratch KV pool.
pub const SCRATCH_BLOCK: usize = 16;

impl DecoderEmbedRunner {
    /// `max_tokens` / `max_seqs`: the most tokens and inputs one step may
    /// carry (the scratch pool is sized for them).
    pub fn new(model: LlamaModel, pooling: Pooling, max_tokens: usize, max_seqs: usize) -> DecoderEmbedRunner {
        let blocks = scratch_blocks(max_tokens, max_seqs, SCRATCH_BLOCK);
        let cache = model.new_kv_cache(blocks, SCRATCH_BLOCK);
        DecoderEmbedRunner { model, cache, pooling }
    }
}

/// KV blocks of `block_size` tokens a scratch pool needs for steps of at
/// most `max_tokens` tokens in `max_seqs` inputs (the null block included).
pub fn scratch_blocks(max_tokens: usize, max_seqs: usize, block_size: usize) -> usize {
    max_tokens.div_ceil(block_size) + max_seqs + 1
}

/// One embedding step as a prefill-only batch over a scratch KV pool of
/// `num_blocks` blocks: block 0 is the null block, each input gets fresh
/// blocks from 1 on, positions start at 0, no input wants logits. Errors
/// when the inputs do not fit the pool.
pub fn scratch_batch(tokens: &[u32], seqs: &[(usize, usize)], block_size: usize, num_blocks: usize) -> anyhow::Result<BatchInput> {
    let need: usize = seqs.iter().map(|s| s.1.div_ceil(block_size)).sum();
    anyhow::ensure!(need < num_blocks, "a step of {} tokens does not fit the scratch KV pool", tokens.len());
    let mut next = 1u32;
    let tables: Vec<Vec<u32>> = seqs
        .iter()
        .map(|&(_, len)| {
            let n = len.div_ceil(block_size) as u32;
            next += n;
            (next - n..next).collect()
        })
        .collect();
    let parts: Vec<(&[u32], usize, &[u32], bool)> =
        seqs.iter().zip(&tables).map(|(&(s, l), t)| (&tokens[s..s + l], 0, t.as_slice(), false)).collect();
    Ok(BatchInput::build(block_size, &parts))
}

impl EncoderRunner for DecoderEmbedRunner {
    fn encode(&mut self, tokens: &[u32], seqs: &[(usize, usize)]) -> anyhow::Result<Vec<Vec<f32>>> {
        let batch = scratch_batch(tokens, seqs, SCRATCH_BLOCK, self.cache.num_blocks)?;
        let hidden = self.model.last_hidden_state(&batch, &mut self.cache);
        Ok(self.pooling.pool(&hidden, self.model.cfg.hidden_size, seqs))
    }
    fn dimensions(&self) -> usize {
        self.model.cfg.hidden_size
    }
}
