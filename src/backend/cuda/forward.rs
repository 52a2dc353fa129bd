//! The forward pass of one step on the GPU: a fixed sequence of launches on
//! the stream, reading the step's inputs from the device copy of the staging
//! buffer and leaving f32 logits of the sequences that want them in the
//! workspace. It allocates nothing and never synchronises, so a decode step
//! can be captured once as a CUDA graph and replayed.
//!
//! ```text
//! residual = embed[tokens]
//! per layer:  normed = rms(residual)            (+= previous MLP out, fused)
//!             qkv = normed·Wqkvᵀ (f32 with a bias) ; q, cache[slots] = rope(norm(bf16(qkv + b)))
//!             attn = decode_attention | prefill_attention (per sequence kind)
//!             proj = attn·Woᵀ ; normed = rms(residual += proj)
//!             proj = silu_and_mul(normed·Wguᵀ)·Wdᵀ
//! normed = rms(residual += proj) ; logits = normed[last rows]·Wlmᵀ (f32)
//! ```

use super::attention_plan::DecodeSplit;
use super::device::{Device, DeviceMem, Out};
use super::error::CudaError;
use super::memory::Activations;
use super::ops;
use super::step_inputs::InputLayout;
use super::weights::CudaWeights;
use crate::model::ModelConfig;

/// The paged KV pool: per layer K then V, each [num_blocks, block_size, num_kv_heads, head_dim] bf16.
pub struct KvPool {
    pub mem: DeviceMem,
    pub num_blocks: usize,
    pub block_size: usize,
    /// Bytes of one layer's K (or V).
    pub half_layer_bytes: usize,
}

impl KvPool {
    pub fn k(&self, layer: usize) -> u64 {
        self.mem.at(2 * layer * self.half_layer_bytes)
    }
    pub fn v(&self, layer: usize) -> u64 {
        self.mem.at((2 * layer + 1) * self.half_layer_bytes)
    }
}

/// Borrowed state of one forward pass.
pub struct Forward<'a> {
    pub dev: &'a Device,
    pub cfg: &'a ModelConfig,
    pub w: &'a CudaWeights,
    pub kv: &'a KvPool,
    /// Workspace base address and layout.
    pub ws: u64,
    pub act: &'a Activations,
    /// Device address of the packed step inputs.
    pub inputs: u64,
}

impl Forward<'_> {
    fn a(&self, off: usize) -> u64 {
        self.ws + off as u64
    }
    fn i(&self, off: usize) -> u64 {
        self.inputs + off as u64
    }

    /// Enqueues the whole pass for the step laid out as `l`.
    pub fn run(&self, l: &InputLayout, split: DecodeSplit) -> Result<(), CudaError> {
        let (c, d, a) = (self.cfg, self.dev, self.act);
        let t = l.sizes.tokens;
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        ops::embedding(d, self.a(a.residual), self.w.embed.ptr, self.i(l.tokens), t, h, c.vocab_size)?;
        for (li, lw) in self.w.layers.iter().enumerate() {
            if li == 0 {
                ops::rms_norm(d, self.a(a.normed), self.a(a.residual), lw.input_norm.ptr, t, h, eps)?;
            } else {
                ops::fused_add_rms_norm(d, self.a(a.normed), self.a(a.residual), self.a(a.proj_out), lw.input_norm.ptr, t, h, eps)?;
            }
            self.attention(li, l, split)?;
            ops::fused_add_rms_norm(d, self.a(a.normed), self.a(a.residual), self.a(a.proj_out), lw.post_norm.ptr, t, h, eps)?;
            let inter = c.intermediate_size;
            self.dev.linear(self.a(a.gate_up), Out::Bf16, self.a(a.normed), lw.gate_up.ptr, [t, 2 * inter, h])?;
            ops::silu_and_mul(d, self.a(a.act), self.a(a.gate_up), t, inter)?;
            self.dev.linear(self.a(a.proj_out), Out::Bf16, self.a(a.act), lw.down.ptr, [t, h, inter])?;
        }
        ops::fused_add_rms_norm(d, self.a(a.normed), self.a(a.residual), self.a(a.proj_out), self.w.norm.ptr, t, h, eps)?;
        let rows = l.sizes.rows;
        ops::gather_rows(d, self.a(a.last), self.a(a.normed), self.i(l.last_rows), rows, h)?;
        self.dev.linear(self.a(a.logits), Out::F32, self.a(a.last), self.w.lm_head(), [rows, c.vocab_size, h])
    }

    /// One layer's attention block, from `normed` to `proj_out` (o_proj output).
    fn attention(&self, li: usize, l: &InputLayout, split: DecodeSplit) -> Result<(), CudaError> {
        let (c, d, a) = (self.cfg, self.dev, self.act);
        let lw = &self.w.layers[li];
        let t = l.sizes.tokens;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        // With a bias the GEMM keeps f32 so the bias joins before the one rounding.
        let qkv_out = if lw.qkv_bias.is_some() { Out::F32 } else { Out::Bf16 };
        self.dev.linear(self.a(a.qkv), qkv_out, self.a(a.normed), lw.qkv.ptr, [t, (nh + 2 * nkv) * hd, c.hidden_size])?;
        let opt = |m: &Option<DeviceMem>| m.as_ref().map_or(0, |m| m.ptr);
        ops::rotary_qkv_cache(
            d,
            &ops::Rotary {
                q_out: self.a(a.q),
                k_cache: self.kv.k(li),
                v_cache: self.kv.v(li),
                qkv: self.a(a.qkv),
                qkv_bias: opt(&lw.qkv_bias),
                q_norm: opt(&lw.q_norm),
                k_norm: opt(&lw.k_norm),
                inv_freq: self.w.inv_freq.ptr,
                positions: self.i(l.positions),
                slots: self.i(l.slots),
                tokens: t,
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
                eps: c.rms_norm_eps,
            },
        )?;
        ops::paged_attention_decode(
            d,
            &ops::Decode {
                out: self.a(a.attn),
                part_out: self.a(a.part_out),
                part_max: self.a(a.part_max),
                part_sum: self.a(a.part_sum),
                q: self.a(a.q),
                k_cache: self.kv.k(li),
                v_cache: self.kv.v(li),
                block_tables: self.i(l.dec_tables),
                ctx_lens: self.i(l.dec_ctx),
                q_rows: self.i(l.dec_q_rows),
                num_seqs: l.sizes.decode_seqs,
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
                max_blocks: l.sizes.table_width,
                block_size: self.kv.block_size,
                split,
            },
        )?;
        ops::prefill_attention(
            d,
            &ops::Prefill {
                out: self.a(a.attn),
                q: self.a(a.q),
                k_cache: self.kv.k(li),
                v_cache: self.kv.v(li),
                block_tables: self.i(l.pf_tables),
                q_start: self.i(l.pf_q_start),
                q_len: self.i(l.pf_q_len),
                ctx_len: self.i(l.pf_ctx),
                tile_seq: self.i(l.tile_seq),
                tile_q0: self.i(l.tile_q0),
                num_tiles: l.sizes.tiles,
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
                max_blocks: l.sizes.table_width,
                block_size: self.kv.block_size,
            },
        )?;
        self.dev.linear(self.a(a.proj_out), Out::Bf16, self.a(a.attn), lw.o.ptr, [t, c.hidden_size, nh * hd])
    }

    /// Logits processors, the allowed-token masks (when `any_mask`), the
    /// draw and (when asked) the top logprobs of the first `rows` logits
    /// rows. Never captured in a graph: the arrays' sizes change every step.
    pub fn sample(&self, l: &InputLayout, rows: usize, any_processor: bool, any_mask: bool, top_n: usize) -> Result<(), CudaError> {
        let (d, a, v) = (self.dev, self.act, self.cfg.vocab_size);
        let s = ops::SamplingArrays {
            temperature: self.i(l.temperature),
            top_k: self.i(l.top_k),
            top_p: self.i(l.top_p),
            min_p: self.i(l.min_p),
            seeds: self.i(l.seeds),
            steps: self.i(l.steps),
            repetition: self.i(l.repetition),
            frequency: self.i(l.frequency),
            presence: self.i(l.presence),
            pen_offsets: self.i(l.pen_offsets),
            pen_ids: self.i(l.pen_ids),
            pen_counts: self.i(l.pen_counts),
            bias_offsets: self.i(l.bias_offsets),
            bias_ids: self.i(l.bias_ids),
            bias_values: self.i(l.bias_values),
            mask_index: self.i(l.mask_index),
            masks: self.i(l.masks),
        };
        if any_processor {
            ops::apply_penalties(d, self.a(a.logits), &s, rows, v)?;
        }
        if any_mask {
            ops::apply_token_mask(d, self.a(a.logits), &s, rows, v)?;
        }
        ops::sample(d, self.a(a.out_ids), self.a(a.out_logprobs), self.a(a.logits), &s, rows, v)?;
        ops::top_logprobs(d, self.a(a.top_ids), self.a(a.top_logprobs), self.a(a.logits), rows, top_n, v)
    }
}
