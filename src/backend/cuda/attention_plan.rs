//! Attention metadata of one step, as plain arrays for the kernels: which
//! sequences take the decode kernel (one query token) and which the prefill
//! kernel (several), the decode split-K partition, and the prefill tile map.

use crate::model::BatchInput;

/// Largest decode partition (tokens): bounds the scores kept in shared memory.
pub const MAX_PART_SIZE: usize = 1024;
/// Smallest decode partition: below this the reduction costs more than it saves.
pub const MIN_PART_SIZE: usize = 128;

/// How the decode kernel cuts each context: `num_parts` partitions of
/// `part_size` tokens (the last may be short or empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeSplit {
    pub part_size: usize,
    pub num_parts: usize,
}

/// Chooses the split so that about two blocks per SM run even when the batch
/// alone would leave the GPU idle (batch 1: 8 kv heads = 8 blocks on 132 SMs).
/// `blocks_per_part` is the decode grid's x * y (kv-head chunks x sequences);
/// `max_ctx` the longest context the launch must cover (for a CUDA graph, the
/// model's maximum length).
pub fn decode_split(blocks_per_part: usize, max_ctx: usize, num_sms: usize) -> DecodeSplit {
    let max_ctx = max_ctx.max(1);
    let wanted = wanted_parts(blocks_per_part, num_sms);
    let part = max_ctx.div_ceil(wanted).div_ceil(64) * 64;
    let part_size = part.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    DecodeSplit { part_size, num_parts: max_ctx.div_ceil(part_size) }
}

/// Partitions per sequence that would give about two blocks per SM.
fn wanted_parts(blocks_per_part: usize, num_sms: usize) -> usize {
    (2 * num_sms.max(1)).div_ceil(blocks_per_part.max(1)).max(1)
}

/// The most partitions `decode_split(blocks_per_part, ctx, num_sms)` gives
/// for any ctx in 1..=max_ctx. Not the count at max_ctx: rounding the
/// partition up to a multiple of 64 can leave a shorter context with one
/// more partition (Llama-3-8B, batch 1, 132 SMs: 4,097 tokens take 33
/// partitions of 128, 8,192 take 32 of 256). Bound: a partition is at least
/// ceil(ctx / wanted) tokens unless it is clamped to MAX_PART_SIZE, and at
/// least MIN_PART_SIZE, so num_parts <= min(max(wanted, ceil(max_ctx /
/// MAX_PART_SIZE)), ceil(max_ctx / MIN_PART_SIZE)).
pub fn max_parts(blocks_per_part: usize, max_ctx: usize, num_sms: usize) -> usize {
    let max_ctx = max_ctx.max(1);
    wanted_parts(blocks_per_part, num_sms).max(max_ctx.div_ceil(MAX_PART_SIZE)).min(max_ctx.div_ceil(MIN_PART_SIZE))
}

/// The most (sequence, partition) pairs any decode launch of up to
/// `max_seqs` sequences over contexts of up to `max_ctx` tokens can use:
/// sizes the partial-result buffers. `kv_chunks` is the decode grid's x.
pub fn max_partial_rows(kv_chunks: usize, max_seqs: usize, max_ctx: usize, num_sms: usize) -> usize {
    (1..=max_seqs.max(1)).map(|s| s * max_parts(kv_chunks * s, max_ctx, num_sms)).max().unwrap_or(1)
}

/// Decode and prefill sequences of a batch, and the per-sequence arrays each
/// kernel reads. Indices are positions in `batch.seqs`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttentionPlan {
    pub decode: Vec<usize>,
    pub prefill: Vec<usize>,
    /// [num_decode] query row (token index) of each decode sequence.
    pub decode_q_rows: Vec<i32>,
    pub decode_ctx_lens: Vec<i32>,
    /// [num_decode, max_blocks] block tables, 0-padded (block 0 is the null block).
    pub decode_tables: Vec<i32>,
    pub prefill_q_start: Vec<i32>,
    pub prefill_q_len: Vec<i32>,
    pub prefill_ctx_len: Vec<i32>,
    /// [num_prefill, max_blocks].
    pub prefill_tables: Vec<i32>,
    /// Prefill tiles: (sequence index within `prefill`, first query of the tile).
    pub tile_seq: Vec<i32>,
    pub tile_q0: Vec<i32>,
    /// Width of the block-table rows.
    pub max_blocks: usize,
}

impl AttentionPlan {
    /// `tokens_per_tile` comes from launch::prefill_tokens_per_tile.
    pub fn build(batch: &BatchInput, tokens_per_tile: usize) -> AttentionPlan {
        let max_blocks = batch.seqs.iter().map(|s| s.block_table.len()).max().unwrap_or(0).max(1);
        let mut p = AttentionPlan { max_blocks, ..Default::default() };
        let table_row = |t: &[u32]| -> Vec<i32> {
            let mut row: Vec<i32> = t.iter().map(|&b| b as i32).collect();
            row.resize(max_blocks, 0);
            row
        };
        for (i, s) in batch.seqs.iter().enumerate() {
            if s.q_len == 0 {
                continue;
            }
            if s.q_len == 1 {
                p.decode.push(i);
                p.decode_q_rows.push(s.q_start as i32);
                p.decode_ctx_lens.push(s.ctx_len as i32);
                p.decode_tables.extend(table_row(&s.block_table));
            } else {
                let k = p.prefill.len() as i32;
                p.prefill.push(i);
                p.prefill_q_start.push(s.q_start as i32);
                p.prefill_q_len.push(s.q_len as i32);
                p.prefill_ctx_len.push(s.ctx_len as i32);
                p.prefill_tables.extend(table_row(&s.block_table));
                for q0 in (0..s.q_len).step_by(tokens_per_tile.max(1)) {
                    p.tile_seq.push(k);
                    p.tile_q0.push(q0 as i32);
                }
            }
        }
        p
    }

    pub fn max_decode_ctx(&self) -> usize {
        self.decode_ctx_lens.iter().copied().max().unwrap_or(0) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_one_is_split_to_fill_the_gpu() {
        // Llama-3.1-8B decode, batch 1: 8 kv heads, 132 SMs, 4k context.
        let s = decode_split(8, 4096, 132);
        assert!(s.num_parts * 8 >= 132, "{s:?}");
        assert!(s.part_size * s.num_parts >= 4096);
        assert_eq!(s.part_size % 64, 0);
    }

    #[test]
    fn big_batches_do_not_split_short_contexts() {
        let s = decode_split(256 * 8, 1000, 132);
        assert_eq!(s, DecodeSplit { part_size: 1024, num_parts: 1 });
    }

    #[test]
    fn split_always_covers_the_context_within_bounds() {
        for blocks in [1, 3, 8, 64, 2048] {
            for ctx in [1, 15, 16, 17, 1000, 4096, 131_072] {
                let s = decode_split(blocks, ctx, 132);
                assert!(s.part_size * s.num_parts >= ctx);
                assert!(s.part_size * (s.num_parts - 1) < ctx, "no empty trailing partition");
                assert!((MIN_PART_SIZE..=MAX_PART_SIZE).contains(&s.part_size));
            }
        }
    }

    #[test]
    fn partial_rows_bound_every_batch() {
        let (chunks, sms, ctx) = (8, 132, 8192);
        let bound = max_partial_rows(chunks, 256, ctx, sms);
        for s in 1..=256 {
            for c in [1, 100, 1000, ctx] {
                assert!(s * decode_split(chunks * s, c, sms).num_parts <= bound);
            }
        }
        // 256 sequences x 8 partitions of 1024 at most.
        assert!(bound <= 256 * 8, "{bound}");
    }

    /// Every (sequences, context) pair a launch can have -- eager steps use the
    /// step's longest context, graphs the model's maximum -- fits the partial
    /// buffers. A shorter context can need more partitions than the longest
    /// (Llama-3-8B, batch 1, 4,097 tokens: 33 partitions of 128 against 32 of
    /// 256 at 8,192), so the bound cannot be taken at the maximum context alone.
    #[test]
    fn partial_rows_bound_every_context_and_batch() {
        use crate::backend::cuda::capacity::{Limits, RunnerCaps};
        use crate::backend::cuda::tests_support::{llama_8b_config, qwen3_0_6b_config, smollm2_135m_config};
        let shapes = [
            (llama_8b_config(), 8192, &[1, 2, 5, 16, 64, 256][..]),
            (qwen3_0_6b_config(), 40_960, &[1, 2, 5, 16, 48][..]),
            (smollm2_135m_config(), 8192, &[1, 2, 5, 16, 64, 256][..]),
        ];
        for (cfg, max_model_len, seq_limits) in shapes {
            for (&max_num_seqs, sms) in seq_limits.iter().flat_map(|m| [46, 108, 132].map(|s| (m, s))) {
                let l = Limits { block_size: 16, max_model_len, max_num_seqs, max_num_batched_tokens: 2048, max_top_logprobs: 0 };
                let caps = RunnerCaps::new(&cfg, l, sms);
                let bound = caps.step.max_partial_rows;
                for s in 1..=max_num_seqs {
                    for ctx in 1..=caps.table_width * l.block_size {
                        let n = s * decode_split(caps.kv_chunks * s, ctx, sms).num_parts;
                        assert!(n <= bound, "{}: {s} seqs, ctx {ctx}, {sms} SMs: {n} rows > {bound}", cfg.arch_name);
                    }
                }
            }
        }
    }

    #[test]
    fn plan_separates_decode_from_prefill_and_tiles_prompts() {
        // seq 0: decode at position 40; seq 1: 20-token chunk after 16 cached; seq 2: 3-token prompt.
        let b = BatchInput::build(
            16,
            &[(&[7], 40, &[3, 4, 5], true), (&[1; 20], 16, &[6, 8, 9], true), (&[2, 3, 4], 0, &[10], false)],
        );
        let p = AttentionPlan::build(&b, 8);
        assert_eq!(p.decode, vec![0]);
        assert_eq!(p.prefill, vec![1, 2]);
        assert_eq!(p.decode_q_rows, vec![0]);
        assert_eq!(p.decode_ctx_lens, vec![41]);
        assert_eq!(p.max_blocks, 3);
        assert_eq!(p.decode_tables, vec![3, 4, 5]);
        assert_eq!(p.prefill_q_start, vec![1, 21]);
        assert_eq!(p.prefill_q_len, vec![20, 3]);
        assert_eq!(p.prefill_ctx_len, vec![36, 3]);
        assert_eq!(p.prefill_tables, vec![6, 8, 9, 10, 0, 0]);
        assert_eq!(p.tile_seq, vec![0, 0, 0, 1]);
        assert_eq!(p.tile_q0, vec![0, 8, 16, 0]);
        assert_eq!(p.max_decode_ctx(), 41);
    }
}
