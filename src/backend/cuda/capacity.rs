//! The capacities the CUDA runner allocates at start-up, as one pure
//! function of the engine limits, the model shape and the GPU's SM count:
//! the workspace's step caps, the staging buffer's array sizes and the CUDA
//! graph buckets. Kept apart from the runner so the invariant "every step the
//! runner can launch fits what it allocated" is tested without a GPU.
//!
//! Per-row regions (`last`, `logits`, output ids and logprobs, the sampling
//! arrays, the allowed-token masks of constrained rows) hold `max_num_seqs`
//! rows, and the largest graph bucket is
//! `max_num_seqs` itself (graph_buckets::buckets), so a padded decode step
//! never has more rows than the workspace.

use super::attention_plan::max_partial_rows;
use super::graph_buckets::buckets;
use super::launch;
use super::memory::StepCaps;
use super::step_inputs::InputSizes;
use crate::model::ModelConfig;

/// Logit-bias entries a step may carry per sequence.
pub const MAX_BIAS_PER_SEQ: usize = 1024;

/// The engine limits the runner is built for (CudaRunnerOptions' sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub block_size: usize,
    pub max_model_len: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub max_top_logprobs: usize,
}

/// What the runner allocates for `Limits`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerCaps {
    /// Width of every block-table row: max_model_len / block_size, rounded up.
    pub table_width: usize,
    /// The decode grid's x: kv heads x query-head chunks per kv head.
    pub kv_chunks: usize,
    /// Tokens of the largest step (the token budget, at least max_num_seqs).
    pub max_tokens: usize,
    /// Workspace sizing (memory::activation_layout).
    pub step: StepCaps,
    /// Staging buffer sizing (InputLayout::new(inputs).total bytes).
    pub inputs: InputSizes,
    /// Batch sizes captured as CUDA graphs, ascending; the last is max_num_seqs.
    pub buckets: Vec<usize>,
    /// Bytes of the pinned buffer ids and logprobs are read back into.
    pub out_host_bytes: usize,
}

impl RunnerCaps {
    pub fn new(cfg: &ModelConfig, l: Limits, num_sms: usize) -> RunnerCaps {
        let table_width = l.max_model_len.div_ceil(l.block_size.max(1));
        let group = cfg.num_heads / cfg.num_kv_heads.max(1);
        let kv_chunks = cfg.num_kv_heads * group.div_ceil(launch::decode_gmax(group, cfg.head_dim));
        let max_tokens = l.max_num_batched_tokens.max(l.max_num_seqs);
        let step = StepCaps {
            max_tokens,
            max_seqs: l.max_num_seqs,
            max_partial_rows: max_partial_rows(kv_chunks, l.max_num_seqs, table_width * l.block_size, num_sms),
            max_top_logprobs: l.max_top_logprobs,
        };
        let inputs = InputSizes {
            tokens: max_tokens,
            decode_seqs: l.max_num_seqs,
            prefill_seqs: l.max_num_seqs,
            table_width,
            tiles: max_tokens,
            rows: l.max_num_seqs,
            pen_entries: l.max_num_seqs * l.max_model_len,
            bias_entries: l.max_num_seqs * MAX_BIAS_PER_SEQ,
            mask_rows: l.max_num_seqs,
            mask_width: crate::sampling::mask::mask_words(cfg.vocab_size),
        };
        RunnerCaps {
            table_width,
            kv_chunks,
            max_tokens,
            step,
            inputs,
            buckets: buckets(l.max_num_seqs.min(max_tokens)),
            out_host_bytes: l.max_num_seqs * 8 * (1 + l.max_top_logprobs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::attention_plan::{decode_split, AttentionPlan};
    use crate::backend::cuda::graph_buckets::bucket_for;
    use crate::backend::cuda::memory::activation_layout;
    use crate::backend::cuda::sampling_plan::SamplingBatch;
    use crate::backend::cuda::step_inputs::{HostStep, InputLayout};
    use crate::backend::cuda::tests_support::smollm2_135m_config;
    use crate::model::BatchInput;

    fn fits(s: InputSizes, cap: InputSizes) -> bool {
        s.tokens <= cap.tokens
            && s.decode_seqs <= cap.decode_seqs
            && s.prefill_seqs <= cap.prefill_seqs
            && s.table_width <= cap.table_width
            && s.tiles <= cap.tiles
            && s.rows <= cap.rows
            && s.pen_entries <= cap.pen_entries
            && s.bias_entries <= cap.bias_entries
            && s.mask_rows <= cap.mask_rows
            && s.mask_width == cap.mask_width
    }

    /// Every decode step of 1..=max_num_seqs sequences, padded to its graph
    /// bucket as the runner pads it (and the bucket's own capture step),
    /// fits the rows of the workspace, its partial-result buffers and the
    /// staging buffer. `--max-num-seqs 20` once captured a bucket of 24 rows
    /// into a 20-row workspace.
    #[test]
    fn every_padded_decode_step_fits_what_the_runner_allocates() {
        let cfg = smollm2_135m_config();
        for max_num_seqs in 1..=300 {
            let l = Limits { block_size: 16, max_model_len: 8192, max_num_seqs, max_num_batched_tokens: 2048, max_top_logprobs: 20 };
            let caps = RunnerCaps::new(&cfg, l, 132);
            let act = activation_layout(&cfg, caps.step);
            let cap_bytes = InputLayout::new(caps.inputs).total;
            assert_eq!(caps.buckets.last(), Some(&max_num_seqs));
            for n in 1..=max_num_seqs {
                let b = bucket_for(n, &caps.buckets).unwrap_or_else(|| panic!("max {max_num_seqs}: no bucket for {n}"));
                let mut step = HostStep::new(&BatchInput::default(), AttentionPlan { max_blocks: 1, ..Default::default() }, SamplingBatch::default(), caps.table_width, caps.inputs.mask_width);
                step.pad_decode_to(b);
                let sizes = step.sizes();
                assert!(fits(sizes, caps.inputs), "max {max_num_seqs}, bucket {b}: {sizes:?} > {:?}", caps.inputs);
                assert!(InputLayout::new(sizes).total <= cap_bytes);
                // The forward pass writes `rows` rows of last/logits and reads `tokens` rows of activations.
                assert!(sizes.rows <= caps.step.max_seqs && sizes.tokens <= caps.step.max_tokens, "max {max_num_seqs}: bucket {b}");
                assert!(act.logits + sizes.rows * cfg.vocab_size * 4 <= act.part_out);
                let split = decode_split(caps.kv_chunks * b, caps.table_width * l.block_size, 132);
                assert!(b * split.num_parts <= caps.step.max_partial_rows);
            }
        }
    }

    #[test]
    fn caps_of_the_default_model() {
        let l = Limits { block_size: 16, max_model_len: 8192, max_num_seqs: 256, max_num_batched_tokens: 2048, max_top_logprobs: 20 };
        let caps = RunnerCaps::new(&smollm2_135m_config(), l, 132);
        assert_eq!(caps.table_width, 512);
        // 3 kv heads, 3 query heads each, one chunk per kv head.
        assert_eq!(caps.kv_chunks, 3);
        assert_eq!(caps.max_tokens, 2048);
        assert_eq!(caps.out_host_bytes, 256 * 8 * 21);
    }
}
