//! Prompt logprobs (the legacy completions' `echo` with `logprobs`, vLLM's
//! `prompt_logprobs`) on the CUDA runner.
//!
//! After a step's draw has been read back, the final-norm hidden rows
//! (`normed`, bf16 [tokens, hidden]) of the prompt positions that want a
//! logprob are gathered, a chunk of at most the workspace's logits rows at
//! a time, into `last`, multiplied by the LM head on the GPU into the f32
//! `logits` region, and copied back. The log-softmax at each target token
//! and the top alternatives are then taken on the host by the same function
//! the CPU runner uses (`sampling::logprob_of`): like the CPU, and vLLM, no
//! logits processor applies to prompt positions.
//!
//! ```text
//! for each chunk of (row in normed, target, top):
//!   last[j] = normed[row_j]            gather_rows_bf16 (indices uploaded to `rows`)
//!   logits[j] = last[j]·Wlmᵀ (f32)     the LM-head GEMM of the forward pass
//!   host: logprob_of(logits[j], target_j, top_j)
//! ```
//! Costs one extra GEMM, copy and synchronisation per chunk, only in steps
//! that carry prompt-logprob rows (never a graph-replayed decode step's).

use super::device::{Device, DeviceMem, Out};
use super::error::CudaError;
use super::memory::Activations;
use super::ops;
use super::weights::CudaWeights;
use crate::model::BatchInput;
use crate::runner::PromptLogprobs;
use crate::sampling::logprob_of;

/// What one prompt-logprob pass reads: the device, the weights, the
/// workspace (after the step's forward pass) and the chunk size.
pub struct PromptPass<'a> {
    pub dev: &'a Device,
    pub w: &'a CudaWeights,
    pub ws: &'a DeviceMem,
    pub act: &'a Activations,
    /// Row indices buffer (u32, `max_rows` long).
    pub rows: &'a DeviceMem,
    /// Rows of the `last` and `logits` regions.
    pub max_rows: usize,
    pub hidden: usize,
    pub vocab: usize,
}

impl PromptPass<'_> {
    /// The prompt logprobs of every sequence of `batch` with
    /// `prompt_targets`, in batch order (`PromptLogprobs::seq` indexes
    /// `batch.seqs`).
    pub fn run(&self, batch: &BatchInput) -> Result<Vec<PromptLogprobs>, CudaError> {
        // (sequence, token row in `normed`, target, top), in batch order.
        let wanted: Vec<(usize, u32, u32, u32)> = batch
            .seqs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.prompt_targets.iter().enumerate().map(move |(j, &t)| (i, (s.q_start + j) as u32, t, s.prompt_top)))
            .collect();
        let mut out: Vec<PromptLogprobs> = Vec::new();
        if wanted.is_empty() {
            return Ok(out);
        }
        let (h, v) = (self.hidden, self.vocab);
        let mut host = vec![0f32; self.max_rows.min(wanted.len()) * v];
        for chunk in wanted.chunks(self.max_rows) {
            let n = chunk.len();
            let idx: Vec<u32> = chunk.iter().map(|w| w.1).collect();
            self.dev.upload(self.rows.ptr, bytemuck::cast_slice(&idx))?;
            ops::gather_rows(self.dev, self.ws.at(self.act.last), self.ws.at(self.act.normed), self.rows.ptr, n, h)?;
            self.dev.linear(self.ws.at(self.act.logits), Out::F32, self.ws.at(self.act.last), self.w.lm_head(), [n, v, h])?;
            self.dev.download(bytemuck::cast_slice_mut(&mut host[..n * v]), self.ws.at(self.act.logits))?;
            // Also what keeps `idx` alive until its copy has been made.
            self.dev.synchronize()?;
            for (j, &(seq, _, target, top)) in chunk.iter().enumerate() {
                let lp = logprob_of(&host[j * v..(j + 1) * v], target, top);
                match out.last_mut() {
                    Some(p) if p.seq == seq => p.logprobs.push(lp),
                    _ => out.push(PromptLogprobs { seq, logprobs: vec![lp] }),
                }
            }
        }
        Ok(out)
    }
}
