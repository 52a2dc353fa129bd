//! Typed launchers, one per kernel: arguments in the kernels' order
//! (outputs, inputs, sizes), device addresses as `u64` (0 is a null pointer).
//! Shapes are documented on the kernels (kernels/*.cu); geometry comes from
//! `launch`.

use super::attention_plan::DecodeSplit;
use super::device::{Arg, Device};
use super::error::CudaError;
use super::launch;

type R = Result<(), CudaError>;

fn i(v: usize) -> Arg {
    Arg::I32(v as i32)
}

pub fn embedding(dev: &Device, out: u64, table: u64, ids: u64, tokens: usize, hidden: usize, vocab: usize) -> R {
    let d = launch::row_copy_dims(tokens, hidden);
    dev.launch("embedding_bf16", d, &[Arg::Ptr(out), Arg::Ptr(table), Arg::Ptr(ids), i(tokens), i(hidden), i(vocab)])
}

pub fn rms_norm(dev: &Device, out: u64, x: u64, w: u64, rows: usize, hidden: usize, eps: f32) -> R {
    let d = launch::rms_norm_dims(rows, hidden);
    dev.launch("rms_norm_bf16", d, &[Arg::Ptr(out), Arg::Ptr(x), Arg::Ptr(w), i(rows), i(hidden), Arg::F32(eps)])
}

/// residual += x; out = rms_norm(residual) * w.
#[allow(clippy::too_many_arguments)] // the kernel's own argument list
pub fn fused_add_rms_norm(dev: &Device, out: u64, residual: u64, x: u64, w: u64, rows: usize, hidden: usize, eps: f32) -> R {
    let d = launch::rms_norm_dims(rows, hidden);
    let args = [Arg::Ptr(out), Arg::Ptr(residual), Arg::Ptr(x), Arg::Ptr(w), i(rows), i(hidden), Arg::F32(eps)];
    dev.launch("fused_add_rms_norm_bf16", d, &args)
}

/// Arguments of rotary_qkv_cache_bf16 (bias / q_norm / k_norm: 0 when absent).
/// `qkv` is bf16 without a bias and the GEMM's f32 output with one (the bias
/// is added before the single rounding; see kernels/rotary_cache.cu).
pub struct Rotary {
    pub q_out: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    pub qkv: u64,
    pub qkv_bias: u64,
    pub q_norm: u64,
    pub k_norm: u64,
    pub inv_freq: u64,
    pub positions: u64,
    pub slots: u64,
    pub tokens: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
}

pub fn rotary_qkv_cache(dev: &Device, a: &Rotary) -> R {
    let d = launch::rotary_dims(a.tokens, a.num_heads, a.num_kv_heads);
    let p = Arg::Ptr;
    let args = [
        p(a.q_out), p(a.k_cache), p(a.v_cache), p(a.qkv), p(a.qkv_bias), p(a.q_norm), p(a.k_norm), p(a.inv_freq),
        p(a.positions), p(a.slots), i(a.tokens), i(a.num_heads), i(a.num_kv_heads), i(a.head_dim), Arg::F32(a.eps),
    ];
    dev.launch("rotary_qkv_cache_bf16", d, &args)
}

pub fn silu_and_mul(dev: &Device, out: u64, gate_up: u64, tokens: usize, inter: usize) -> R {
    let d = launch::elementwise_dims(tokens * inter / 8, dev.num_sms);
    dev.launch("silu_and_mul_bf16", d, &[Arg::Ptr(out), Arg::Ptr(gate_up), i(tokens), i(inter)])
}

/// Arguments of the decode attention (and its reduction when split).
pub struct Decode {
    pub out: u64,
    pub part_out: u64,
    pub part_max: u64,
    pub part_sum: u64,
    pub q: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    pub block_tables: u64,
    pub ctx_lens: u64,
    pub q_rows: u64,
    pub num_seqs: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_blocks: usize,
    pub block_size: usize,
    pub split: DecodeSplit,
}

pub fn paged_attention_decode(dev: &Device, a: &Decode) -> R {
    if a.num_seqs == 0 {
        return Ok(());
    }
    let gmax = launch::decode_gmax(a.num_heads / a.num_kv_heads, a.head_dim);
    let name = format!("paged_attention_decode_bf16_hd{}_g{gmax}", a.head_dim);
    let d = launch::decode_dims(a.num_seqs, a.num_heads, a.num_kv_heads, a.head_dim, a.split.part_size, a.split.num_parts);
    let p = Arg::Ptr;
    let scale = 1.0 / (a.head_dim as f32).sqrt();
    let args = [
        p(a.out), p(a.part_out), p(a.part_max), p(a.part_sum), p(a.q), p(a.k_cache), p(a.v_cache), p(a.block_tables),
        p(a.ctx_lens), p(a.q_rows), i(a.num_heads), i(a.num_kv_heads), i(a.max_blocks), i(a.block_size),
        i(a.split.part_size), i(a.split.num_parts), Arg::F32(scale),
    ];
    dev.launch(&name, d, &args)?;
    if a.split.num_parts > 1 {
        let d = launch::decode_reduce_dims(a.num_seqs, a.num_heads, a.head_dim);
        let args = [
            p(a.out), p(a.part_out), p(a.part_max), p(a.part_sum), p(a.ctx_lens), p(a.q_rows), i(a.num_heads),
            i(a.head_dim), i(a.split.part_size), i(a.split.num_parts),
        ];
        dev.launch("paged_attention_reduce_bf16", d, &args)?;
    }
    Ok(())
}

/// Arguments of the prefill attention.
pub struct Prefill {
    pub out: u64,
    pub q: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    pub block_tables: u64,
    pub q_start: u64,
    pub q_len: u64,
    pub ctx_len: u64,
    pub tile_seq: u64,
    pub tile_q0: u64,
    pub num_tiles: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_blocks: usize,
    pub block_size: usize,
}

pub fn prefill_attention(dev: &Device, a: &Prefill) -> R {
    if a.num_tiles == 0 {
        return Ok(());
    }
    let group = a.num_heads / a.num_kv_heads;
    let d = launch::prefill_dims(a.num_tiles, a.num_heads, a.num_kv_heads, a.head_dim);
    let p = Arg::Ptr;
    let scale = 1.0 / (a.head_dim as f32).sqrt();
    let args = [
        p(a.out), p(a.q), p(a.k_cache), p(a.v_cache), p(a.block_tables), p(a.q_start), p(a.q_len), p(a.ctx_len),
        p(a.tile_seq), p(a.tile_q0), i(a.num_heads), i(a.num_kv_heads), i(launch::prefill_heads_per_block(group)),
        i(a.max_blocks), i(a.block_size), Arg::F32(scale),
    ];
    dev.launch(&format!("prefill_attention_bf16_hd{}", a.head_dim), d, &args)
}

pub fn gather_rows(dev: &Device, out: u64, x: u64, rows: u64, num_rows: usize, hidden: usize) -> R {
    let d = launch::row_copy_dims(num_rows, hidden);
    dev.launch("gather_rows_bf16", d, &[Arg::Ptr(out), Arg::Ptr(x), Arg::Ptr(rows), i(num_rows), i(hidden)])
}

/// Device addresses of the packed sampling arrays (sampling_plan::SamplingBatch).
pub struct SamplingArrays {
    pub temperature: u64,
    pub top_k: u64,
    pub top_p: u64,
    pub min_p: u64,
    pub seeds: u64,
    pub steps: u64,
    pub repetition: u64,
    pub frequency: u64,
    pub presence: u64,
    pub pen_offsets: u64,
    pub pen_ids: u64,
    pub pen_counts: u64,
    pub bias_offsets: u64,
    pub bias_ids: u64,
    pub bias_values: u64,
    /// [rows] i32: the row of `masks` of each row, or -1 (unconstrained).
    pub mask_index: u64,
    /// [masked rows, ceil(vocab / 32)] u32 packed allowed-token masks.
    pub masks: u64,
}

pub fn apply_penalties(dev: &Device, logits: u64, s: &SamplingArrays, rows: usize, vocab: usize) -> R {
    let p = Arg::Ptr;
    let args = [
        p(logits), p(s.pen_offsets), p(s.pen_ids), p(s.pen_counts), p(s.repetition), p(s.frequency), p(s.presence),
        p(s.bias_offsets), p(s.bias_ids), p(s.bias_values), i(rows), i(vocab),
    ];
    dev.launch("apply_penalties_f32", launch::penalties_dims(rows), &args)
}

/// Constrained decoding: logits of tokens a row's mask does not allow become
/// -inf (rows with mask index -1, and rows whose mask allows nothing, are
/// left as they are).
pub fn apply_token_mask(dev: &Device, logits: u64, s: &SamplingArrays, rows: usize, vocab: usize) -> R {
    if rows == 0 {
        return Ok(());
    }
    let args = [Arg::Ptr(logits), Arg::Ptr(s.mask_index), Arg::Ptr(s.masks), i(rows), i(vocab)];
    dev.launch("apply_token_mask_f32", launch::token_mask_dims(rows), &args)
}

pub fn sample(dev: &Device, out_ids: u64, out_logprobs: u64, logits: u64, s: &SamplingArrays, rows: usize, vocab: usize) -> R {
    if rows == 0 {
        return Ok(());
    }
    let p = Arg::Ptr;
    let args = [
        p(out_ids), p(out_logprobs), p(logits), p(s.temperature), p(s.top_k), p(s.top_p), p(s.min_p), p(s.seeds),
        p(s.steps), i(vocab),
    ];
    dev.launch("sample_f32", launch::sample_dims(rows), &args)
}

pub fn top_logprobs(dev: &Device, out_ids: u64, out_logprobs: u64, logits: u64, rows: usize, n: usize, vocab: usize) -> R {
    if rows == 0 || n == 0 {
        return Ok(());
    }
    let args = [Arg::Ptr(out_ids), Arg::Ptr(out_logprobs), Arg::Ptr(logits), i(n), i(vocab)];
    dev.launch("top_logprobs_f32", launch::sample_dims(rows), &args)
}

/// GGML block types the GPU expands to bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    Q8_0,
    Q4_1,
}

impl Quant {
    pub fn block_bytes(self) -> usize {
        match self {
            Quant::Q8_0 => 34,
            Quant::Q4_1 => 20,
        }
    }
}

/// Expands `num_blocks` blocks of 32 weights at `blocks` into bf16 at `out`.
pub fn dequant(dev: &Device, q: Quant, out: u64, blocks: u64, num_blocks: usize) -> R {
    let name = match q {
        Quant::Q8_0 => "dequant_q8_0_bf16",
        Quant::Q4_1 => "dequant_q4_1_bf16",
    };
    let d = launch::Dims { grid: (num_blocks.div_ceil(256).max(1) as u32, 1, 1), block: (256, 1, 1), smem: 0 };
    dev.launch(name, d, &[Arg::Ptr(out), Arg::Ptr(blocks), Arg::I64(num_blocks as i64)])
}

// ---- encoders (kernels/encoder.cu), all f32 ----

/// Arguments of bert_embeddings_f32: `out[t] = word[ids[t]] +
/// (position[positions[t]] + token_type[type_ids[t]])`, every array f32
/// row-major; `type_ids` 0 means every token has type 0.
pub struct BertEmbeddings {
    /// [tokens, hidden]
    pub out: u64,
    /// [vocab, hidden]
    pub word: u64,
    /// [max_pos, hidden]
    pub position: u64,
    /// [type_vocab, hidden]
    pub token_type: u64,
    /// [tokens] u32
    pub ids: u64,
    /// [tokens] i32
    pub positions: u64,
    /// [tokens] i32, or 0
    pub type_ids: u64,
    pub tokens: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub max_pos: usize,
    pub type_vocab: usize,
}

/// Sums the three embedding rows of every token (see `BertEmbeddings`).
pub fn bert_embeddings(dev: &Device, a: &BertEmbeddings) -> R {
    if a.tokens == 0 {
        return Ok(());
    }
    let p = Arg::Ptr;
    let args = [
        p(a.out), p(a.word), p(a.position), p(a.token_type), p(a.ids), p(a.positions), p(a.type_ids), i(a.tokens),
        i(a.hidden), i(a.vocab), i(a.max_pos), i(a.type_vocab),
    ];
    dev.launch("bert_embeddings_f32", launch::encoder_row_dims(a.tokens, a.hidden), &args)
}

/// `out = LayerNorm((x + x_bias) + residual) * w + b` per row of `[rows,
/// hidden]` f32 (`x_bias` [hidden] and `residual` [rows, hidden] may be 0:
/// absent); `out` may be `residual`. hidden % 4 == 0, hidden <= 16384.
#[allow(clippy::too_many_arguments)] // the kernel's own argument list
pub fn layer_norm(dev: &Device, out: u64, x: u64, x_bias: u64, residual: u64, w: u64, b: u64, rows: usize, hidden: usize, eps: f32) -> R {
    if rows == 0 {
        return Ok(());
    }
    let p = Arg::Ptr;
    let args = [p(out), p(x), p(x_bias), p(residual), p(w), p(b), i(rows), i(hidden), Arg::F32(eps)];
    dev.launch("layer_norm_f32", launch::layer_norm_dims(rows, hidden), &args)
}

/// `out = gelu(x + bias)` (exact erf GELU) over `[rows, cols]` f32; `bias`
/// [cols] may be 0, `out` may be `x`. cols % 4 == 0.
pub fn gelu_erf(dev: &Device, out: u64, x: u64, bias: u64, rows: usize, cols: usize) -> R {
    if rows == 0 {
        return Ok(());
    }
    let d = launch::elementwise_dims(rows * cols / 4, dev.num_sms);
    dev.launch("gelu_erf_f32", d, &[Arg::Ptr(out), Arg::Ptr(x), Arg::Ptr(bias), i(rows), i(cols)])
}

/// Arguments of the encoder attention (bidirectional, packed sequences).
pub struct EncoderAttention {
    /// [tokens, num_heads * head_dim] f32
    pub out: u64,
    /// [tokens, 3 * num_heads * head_dim] f32: q, k, v side by side
    pub qkv: u64,
    /// [3 * num_heads * head_dim] f32, or 0
    pub qkv_bias: u64,
    /// [num_seqs + 1] i32: sequence s owns rows cu_seqlens[s]..cu_seqlens[s + 1]
    pub cu_seqlens: u64,
    pub num_seqs: usize,
    /// The longest sequence (sizes the grid).
    pub max_len: usize,
    pub num_heads: usize,
    /// 32, 64 or 128 (`launch::ENCODER_HEAD_DIMS`).
    pub head_dim: usize,
}

/// softmax(q·kᵀ/√d)·v within each sequence (kernels/encoder.cu).
pub fn encoder_attention(dev: &Device, a: &EncoderAttention) -> R {
    if a.num_seqs == 0 {
        return Ok(());
    }
    let d = launch::encoder_attention_dims(a.max_len, a.num_seqs, a.num_heads, a.head_dim);
    let scale = 1.0 / (a.head_dim as f32).sqrt();
    let p = Arg::Ptr;
    let args = [p(a.out), p(a.qkv), p(a.qkv_bias), p(a.cu_seqlens), i(a.num_heads), Arg::F32(scale)];
    dev.launch(&format!("encoder_attention_f32_hd{}", a.head_dim), d, &args)
}

/// How `embedding_pool` reduces a sequence (the kernel's `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    Mean = 0,
    First = 1,
    Last = 2,
}

/// One vector per sequence into `out [num_seqs, hidden]` f32 from
/// `hidden_states [tokens, hidden]` f32, L2-normalised when `normalize`.
#[allow(clippy::too_many_arguments)] // the kernel's own argument list
pub fn embedding_pool(dev: &Device, out: u64, hidden_states: u64, cu_seqlens: u64, num_seqs: usize, hidden: usize, mode: PoolMode, normalize: bool) -> R {
    if num_seqs == 0 {
        return Ok(());
    }
    let p = Arg::Ptr;
    let args = [p(out), p(hidden_states), p(cu_seqlens), i(num_seqs), i(hidden), Arg::I32(mode as i32), Arg::I32(normalize as i32)];
    dev.launch("embedding_pool_f32", launch::pool_dims(num_seqs, hidden), &args)
}
