//! Launch geometry of every kernel: grid, block and dynamic shared memory, as
//! plain numbers. Each function restates the contract its kernel's "Launch"
//! note gives (kernels/*.cu); the unit tests pin the invariants the kernels
//! rely on (whole warps, enough threads to cover a row, shared memory within
//! the per-block limit).

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
}

impl Dims {
    fn new(grid: (usize, usize, usize), block: usize, smem: usize) -> Dims {
        Dims { grid: (grid.0 as u32, grid.1 as u32, grid.2 as u32), block: (block as u32, 1, 1), smem: smem as u32 }
    }
}

/// Default per-block dynamic shared memory without the opt-in attribute.
pub const SMEM_DEFAULT_LIMIT: usize = 48 * 1024;

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// embedding_bf16 and gather_rows_bf16: one block per row, a thread per 16 bytes.
pub fn row_copy_dims(rows: usize, hidden: usize) -> Dims {
    Dims::new((rows.max(1), 1, 1), round_up(hidden / 8, 32).clamp(32, 1024), 0)
}

/// Vectors of 8 each thread of rms_norm keeps in registers (RMS_MAX_VPT).
pub const RMS_MAX_VPT: usize = 4;

/// rms_norm_bf16 / fused_add_rms_norm_bf16: one block per row; every thread
/// holds at most RMS_MAX_VPT vectors of the row.
pub fn rms_norm_dims(rows: usize, hidden: usize) -> Dims {
    let threads = round_up((hidden / 8).div_ceil(RMS_MAX_VPT), 32).clamp(32, 1024);
    Dims::new((rows.max(1), 1, 1), threads, 0)
}

/// rotary_qkv_cache_bf16: a warp per (token, head), 4 warps per block.
pub fn rotary_dims(tokens: usize, num_heads: usize, num_kv_heads: usize) -> Dims {
    let warps = tokens * (num_heads + 2 * num_kv_heads);
    Dims::new((warps.div_ceil(4).max(1), 1, 1), 128, 0)
}

/// Grid-stride elementwise kernels (silu_and_mul, dequant): 256 threads, at
/// most 16 blocks per SM.
pub fn elementwise_dims(items: usize, num_sms: usize) -> Dims {
    Dims::new((items.div_ceil(256).clamp(1, 16 * num_sms.max(1)), 1, 1), 256, 0)
}

/// Threads of paged_attention_decode (DEC_THREADS) and its warps.
pub const DECODE_THREADS: usize = 128;
const DECODE_WARPS: usize = DECODE_THREADS / 32;

/// Query heads per decode block: the smallest compiled GMAX (1, 2, 4, 8; 4 at
/// most for head_dim 256, to bound registers) covering the group, or the
/// largest when the group is bigger (the group is then split over blocks).
pub fn decode_gmax(group: usize, head_dim: usize) -> usize {
    let cap = if head_dim >= 256 { 4 } else { 8 };
    [1, 2, 4, 8].into_iter().find(|&g| g >= group).unwrap_or(8).min(cap)
}

/// Dynamic shared memory of paged_attention_decode: the partition's scores
/// plus 32 floats of reduction scratch, or the cross-warp P.V sums, whichever
/// is larger.
pub fn decode_smem_bytes(head_dim: usize, gmax: usize, part_size: usize) -> usize {
    4 * (gmax * part_size + 32).max(DECODE_WARPS * gmax * head_dim)
}

/// paged_attention_decode_bf16_hd{head_dim}_g{gmax}.
pub fn decode_dims(num_seqs: usize, num_heads: usize, num_kv_heads: usize, head_dim: usize, part_size: usize, num_parts: usize) -> Dims {
    let group = num_heads / num_kv_heads;
    let gmax = decode_gmax(group, head_dim);
    let chunks = group.div_ceil(gmax);
    Dims::new((num_kv_heads * chunks, num_seqs.max(1), num_parts.max(1)), DECODE_THREADS, decode_smem_bytes(head_dim, gmax, part_size))
}

/// paged_attention_reduce_bf16: a block per (head, sequence), a thread per dim.
pub fn decode_reduce_dims(num_seqs: usize, num_heads: usize, head_dim: usize) -> Dims {
    Dims::new((num_heads, num_seqs.max(1), 1), head_dim, 0)
}

/// Rows of (token, head) per prefill block (PF_ROWS).
pub const PREFILL_ROWS: usize = 32;

/// Query heads of one kv head that a prefill block covers.
pub fn prefill_heads_per_block(group: usize) -> usize {
    group.min(PREFILL_ROWS)
}

/// Query tokens per prefill tile.
pub fn prefill_tokens_per_tile(group: usize) -> usize {
    PREFILL_ROWS / prefill_heads_per_block(group)
}

/// sizeof(PrefillSmem<HD>) in prefill_attention.cu.
pub fn prefill_smem_bytes(head_dim: usize) -> usize {
    let rows = PREFILL_ROWS;
    rows * head_dim * 4 + 32 * (head_dim / 2 + 4) * 4 + 32 * (head_dim / 2) * 4 + 4 * 8 * 32 * 4
}

/// prefill_attention_bf16_hd{head_dim}: a block per (tile, kv head, head chunk).
pub fn prefill_dims(num_tiles: usize, num_heads: usize, num_kv_heads: usize, head_dim: usize) -> Dims {
    let group = num_heads / num_kv_heads;
    let chunks = group.div_ceil(prefill_heads_per_block(group));
    Dims::new((num_tiles.max(1), num_kv_heads * chunks, 1), 128, prefill_smem_bytes(head_dim))
}

/// Dynamic shared memory above the 48 KB default that a kernel may be launched
/// with (the loader raises the function's limit to this).
pub fn smem_opt_in(function: &str) -> Option<usize> {
    let need = match function {
        "prefill_attention_bf16_hd256" => prefill_smem_bytes(256),
        "encoder_attention_f32_hd128" => encoder_attention_smem_bytes(128),
        _ => return None,
    };
    (need > SMEM_DEFAULT_LIMIT).then_some(need)
}

/// Threads of sample_f32 and top_logprobs_f32 (SAMPLE_THREADS).
pub const SAMPLE_THREADS: usize = 1024;

/// sample_f32 / top_logprobs_f32: a block of SAMPLE_THREADS per row.
pub fn sample_dims(rows: usize) -> Dims {
    Dims::new((rows.max(1), 1, 1), SAMPLE_THREADS, 0)
}

/// apply_penalties_f32: a block of 256 per row.
pub fn penalties_dims(rows: usize) -> Dims {
    Dims::new((rows.max(1), 1, 1), 256, 0)
}

/// apply_token_mask_f32: a block of 256 per row.
pub fn token_mask_dims(rows: usize) -> Dims {
    Dims::new((rows.max(1), 1, 1), 256, 0)
}

/// bert_embeddings_f32: one block per token, a thread per 4 floats.
pub fn encoder_row_dims(rows: usize, hidden: usize) -> Dims {
    Dims::new((rows.max(1), 1, 1), round_up(hidden / 4, 32).clamp(32, 1024), 0)
}

/// float4 vectors each thread of layer_norm_f32 keeps in registers (LN_MAX_VPT).
pub const LN_MAX_VPT: usize = 4;

/// layer_norm_f32: one block per row; every thread holds at most LN_MAX_VPT
/// float4 vectors of the row (hidden <= 16384).
pub fn layer_norm_dims(rows: usize, hidden: usize) -> Dims {
    let threads = round_up((hidden / 4).div_ceil(LN_MAX_VPT), 32).clamp(32, 1024);
    Dims::new((rows.max(1), 1, 1), threads, 0)
}

/// Query rows per encoder attention block (EA_ROWS) and its threads (EA_THREADS).
pub const ENCODER_ATTN_ROWS: usize = 32;
const ENCODER_ATTN_THREADS: usize = 128;

/// Head dims encoder_attention_f32 is compiled for.
pub const ENCODER_HEAD_DIMS: [usize; 3] = [32, 64, 128];

/// sizeof(EncoderAttnSmem<HD>) in encoder.cu: q, k (rows padded by one
/// float), v and the per-warp probabilities, all f32.
pub fn encoder_attention_smem_bytes(head_dim: usize) -> usize {
    4 * (ENCODER_ATTN_ROWS * head_dim + 32 * (head_dim + 1) + 32 * head_dim + 4 * 8 * 32)
}

/// encoder_attention_f32_hd{head_dim}: a block per (32-row tile of the
/// longest sequence, sequence, head); tiles past a shorter sequence's end
/// return at once.
pub fn encoder_attention_dims(max_len: usize, num_seqs: usize, num_heads: usize, head_dim: usize) -> Dims {
    let tiles = max_len.div_ceil(ENCODER_ATTN_ROWS).max(1);
    Dims::new((tiles, num_seqs.max(1), num_heads.max(1)), ENCODER_ATTN_THREADS, encoder_attention_smem_bytes(head_dim))
}

/// embedding_pool_f32: a block per sequence, a thread per column (up to 1024).
pub fn pool_dims(num_seqs: usize, hidden: usize) -> Dims {
    Dims::new((num_seqs.max(1), 1, 1), round_up(hidden, 32).clamp(32, 1024), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_covers_every_row_with_whole_warps() {
        for hidden in (8..=32768).step_by(8) {
            let d = rms_norm_dims(3, hidden);
            assert_eq!(d.block.0 % 32, 0);
            assert!(d.block.0 as usize * RMS_MAX_VPT * 8 >= hidden, "hidden {hidden}");
            assert!(d.block.0 <= 1024);
        }
        assert_eq!(rms_norm_dims(5, 4096).grid, (5, 1, 1));
    }

    #[test]
    fn row_copy_uses_whole_warps() {
        assert_eq!(row_copy_dims(7, 4096).block.0, 512);
        assert_eq!(row_copy_dims(7, 576).block.0, 96);
        assert_eq!(row_copy_dims(7, 64 * 1024).block.0, 1024);
        assert_eq!(row_copy_dims(0, 64).grid.0, 1);
    }

    #[test]
    fn rotary_has_a_warp_for_every_token_head() {
        let d = rotary_dims(10, 32, 8);
        assert!(d.grid.0 as usize * (d.block.0 as usize / 32) >= 10 * (32 + 16));
    }

    #[test]
    fn decode_group_choice() {
        assert_eq!(decode_gmax(1, 128), 1);
        assert_eq!(decode_gmax(3, 64), 4); // SmolLM2: 9 heads, 3 kv heads
        assert_eq!(decode_gmax(4, 128), 4);
        assert_eq!(decode_gmax(7, 128), 8);
        assert_eq!(decode_gmax(16, 128), 8);
        assert_eq!(decode_gmax(8, 256), 4);
        // Every head is covered: kv heads x chunks x gmax >= heads.
        for (nh, nkv, hd) in [(9, 3, 64), (32, 8, 128), (16, 8, 128), (64, 8, 128), (28, 4, 128), (32, 1, 256)] {
            let d = decode_dims(2, nh, nkv, hd, 256, 4);
            let gmax = decode_gmax(nh / nkv, hd);
            assert!(d.grid.0 as usize * gmax >= nh, "{nh}/{nkv}");
            assert_eq!(d.grid.0 as usize % nkv, 0);
        }
    }

    #[test]
    fn decode_shared_memory_fits_without_opt_in() {
        for hd in [64, 128, 256] {
            for g in [1, 2, 4, 8] {
                let gmax = decode_gmax(g, hd);
                assert!(decode_smem_bytes(hd, gmax, crate::backend::cuda::attention_plan::MAX_PART_SIZE) <= SMEM_DEFAULT_LIMIT);
            }
        }
    }

    #[test]
    fn prefill_tiles_and_smem() {
        assert_eq!(prefill_tokens_per_tile(4), 8);
        assert_eq!(prefill_tokens_per_tile(3), 10);
        assert_eq!(prefill_tokens_per_tile(1), 32);
        assert_eq!(prefill_tokens_per_tile(64), 1);
        assert_eq!(prefill_smem_bytes(128), 37_376);
        assert!(prefill_smem_bytes(64) <= SMEM_DEFAULT_LIMIT);
        assert_eq!(smem_opt_in("prefill_attention_bf16_hd256"), Some(prefill_smem_bytes(256)));
        assert_eq!(smem_opt_in("prefill_attention_bf16_hd128"), None);
        let d = prefill_dims(5, 64, 1, 128); // group 64 > 32 rows: two head chunks
        assert_eq!(d.grid, (5, 2, 1));
    }

    #[test]
    fn encoder_geometry() {
        for hidden in (4..=16384).step_by(4) {
            let d = layer_norm_dims(2, hidden);
            assert_eq!(d.block.0 % 32, 0);
            assert!(d.block.0 as usize * LN_MAX_VPT * 4 >= hidden, "hidden {hidden}");
        }
        assert_eq!(encoder_attention_smem_bytes(32), 16_512);
        assert!(encoder_attention_smem_bytes(64) <= SMEM_DEFAULT_LIMIT);
        assert_eq!(smem_opt_in("encoder_attention_f32_hd128"), Some(encoder_attention_smem_bytes(128)));
        assert_eq!(smem_opt_in("encoder_attention_f32_hd64"), None);
        assert_eq!(encoder_attention_dims(33, 3, 12, 32).grid, (2, 3, 12));
        assert_eq!(pool_dims(5, 384).block.0, 384);
        assert_eq!(encoder_row_dims(7, 384).block.0, 96);
    }

    #[test]
    fn elementwise_grid_is_bounded() {
        assert_eq!(elementwise_dims(1, 132).grid.0, 1);
        assert_eq!(elementwise_dims(10_000_000, 132).grid.0, 16 * 132);
        assert_eq!(elementwise_dims(0, 132).grid.0, 1);
    }
}
