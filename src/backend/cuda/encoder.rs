//! Embedding models on the CUDA backend: the `EncoderRunner`s of the
//! embedding engine over a `Device` (a GPU or the emulated device). BERT-
//! family encoders get their own f32 pass below (`CudaBertRunner`);
//! decoders used for embeddings reuse the generation runner
//! (`CudaDecoderEmbedRunner`, at the end).
//!
//! ```text
//! step:  tokens of every input back to back (at most max_tokens of them,
//!        at most max_seqs inputs), cu_seqlens = [0, len0, len0+len1, ...]
//!   upload ids, positions, cu_seqlens (one copy)
//!   bert_embeddings_f32 -> layer_norm_f32                         h [T, H]
//!   per layer:
//!     qkv   = h · Wqkvᵀ                     (f32 GEMM)            [T, 3H]
//!     attn  = encoder_attention(qkv + bqkv)  (bidirectional, per input)
//!     h     = LN((attn · Woᵀ + bo) + h)      (layer_norm_f32 adds bias + residual)
//!     inter = gelu(h · Wiᵀ + bi)             (gelu_erf_f32 adds the bias)
//!     h     = LN((inter · Wo2ᵀ + bo2) + h)
//!   embedding_pool_f32 (mean / CLS / last, L2 norm)               [S, H]
//!   download the pooled vectors
//! ```
//! Prefill-only work: no KV cache, nothing kept between steps. Weights are
//! uploaded once, in f32 as the checkpoints store them; activations and
//! GEMMs are f32 too (why: docs/gpu.md, "Encoders"). The workspace is sized
//! once for the engine's token budget and sequence cap.

use super::device::{Device, DeviceMem, PinnedMem};
use super::error::CudaError;
use super::launch;
use super::ops::{self, PoolMode};
use crate::model::bert::{BertConfig, BertModel};
use crate::model::pooling::{Pooling, PoolingMode};
use crate::runner::encoder::EncoderRunner;

/// One encoder layer's tensors on the device (f32; shapes as `BertLayerView`).
struct LayerW {
    qkv_w: DeviceMem,
    qkv_b: DeviceMem,
    attn_out_w: DeviceMem,
    attn_out_b: DeviceMem,
    attn_norm_w: DeviceMem,
    attn_norm_b: DeviceMem,
    inter_w: DeviceMem,
    inter_b: DeviceMem,
    out_w: DeviceMem,
    out_b: DeviceMem,
    out_norm_w: DeviceMem,
    out_norm_b: DeviceMem,
}

/// Byte offsets of the workspace regions (see `Layout::new`).
#[derive(Clone, Copy, Debug)]
struct Layout {
    ids: usize,
    positions: usize,
    cu: usize,
    /// End of the three input arrays (the size of the staging buffer).
    inputs_end: usize,
    h: usize,
    qkv: usize,
    attn: usize,
    tmp: usize,
    inter: usize,
    pooled: usize,
    total: usize,
}

fn align(x: usize) -> usize {
    x.div_ceil(256) * 256
}

impl Layout {
    /// Regions for `t` tokens and `s` sequences of a model with `h` hidden
    /// and `i` intermediate units.
    fn new(t: usize, s: usize, h: usize, i: usize) -> Layout {
        let mut at = 0;
        let mut take = |bytes: usize| {
            let o = at;
            at += align(bytes.max(1));
            o
        };
        let ids = take(4 * t);
        let positions = take(4 * t);
        let cu = take(4 * (s + 1));
        let inputs_end = cu + 4 * (s + 1);
        let h_ = take(4 * t * h);
        let qkv = take(4 * t * 3 * h);
        let attn = take(4 * t * h);
        let tmp = take(4 * t * h);
        let inter = take(4 * t * i);
        let pooled = take(4 * s * h);
        Layout { ids, positions, cu, inputs_end, h: h_, qkv, attn, tmp, inter, pooled, total: at }
    }

    /// The regions as `Device::guard_regions` takes them.
    fn regions(&self, t: usize, s: usize, h: usize, i: usize) -> [(&'static str, usize, usize); 9] {
        [
            ("ids", self.ids, 4 * t),
            ("positions", self.positions, 4 * t),
            ("cu_seqlens", self.cu, 4 * (s + 1)),
            ("hidden", self.h, 4 * t * h),
            ("qkv", self.qkv, 4 * t * 3 * h),
            ("attention", self.attn, 4 * t * h),
            ("gemm out", self.tmp, 4 * t * h),
            ("intermediate", self.inter, 4 * t * i),
            ("pooled", self.pooled, 4 * s * h),
        ]
    }
}

/// A `BertModel` with its sentence-transformers pooling on a device.
pub struct CudaBertRunner {
    dev: Device,
    cfg: BertConfig,
    pooling: Pooling,
    word: DeviceMem,
    position: DeviceMem,
    token_type: DeviceMem,
    embed_norm_w: DeviceMem,
    embed_norm_b: DeviceMem,
    layers: Vec<LayerW>,
    ws: DeviceMem,
    layout: Layout,
    /// Host copy of the input arrays (ids, positions, cu_seqlens), laid out
    /// as the start of the workspace.
    staging: PinnedMem,
    max_tokens: usize,
    max_seqs: usize,
}

fn upload_f32(dev: &Device, v: &[f32]) -> Result<DeviceMem, CudaError> {
    let m = dev.alloc(std::mem::size_of_val(v).max(4))?;
    dev.upload(m.ptr, bytemuck::cast_slice(v))?;
    Ok(m)
}

/// The most blocks a grid may have in y or z (the attention grid's inputs
/// and heads).
const MAX_GRID_Y: usize = 65_535;

/// Whether the CUDA encoder supports `cfg`'s shapes; the error names what it
/// does not.
pub fn check_bert(cfg: &BertConfig) -> Result<(), CudaError> {
    let head_dim = cfg.hidden_size / cfg.num_attention_heads.max(1);
    if !launch::ENCODER_HEAD_DIMS.contains(&head_dim) {
        return Err(CudaError::Unsupported(format!("encoder head_dim {head_dim} (32, 64 or 128)")));
    }
    if cfg.hidden_size % 4 != 0 || cfg.intermediate_size % 4 != 0 {
        return Err(CudaError::Unsupported(format!("hidden {} / intermediate {} not multiples of 4", cfg.hidden_size, cfg.intermediate_size)));
    }
    if cfg.num_attention_heads > MAX_GRID_Y {
        return Err(CudaError::Unsupported(format!("{} attention heads", cfg.num_attention_heads)));
    }
    if cfg.hidden_size > 4 * launch::LN_MAX_VPT * 1024 {
        return Err(CudaError::Unsupported(format!("encoder hidden_size {} above 16384", cfg.hidden_size)));
    }
    Ok(())
}

impl CudaBertRunner {
    /// Uploads `model`'s tensors to `dev` and sizes the workspace for steps
    /// of at most `max_tokens` tokens and `max_seqs` inputs (the embedding
    /// engine's `--max-num-batched-tokens` and `--max-num-seqs`). Errors: a
    /// shape the kernels do not cover (`check_bert`), device memory.
    pub fn new(dev: Device, model: &BertModel, pooling: Pooling, max_tokens: usize, max_seqs: usize) -> Result<CudaBertRunner, CudaError> {
        let cfg = model.cfg.clone();
        check_bert(&cfg)?;
        if max_tokens == 0 || max_seqs == 0 {
            return Err(CudaError::BadBatch("the encoder needs room for at least one token and one input".into()));
        }
        if max_seqs > MAX_GRID_Y {
            // The attention grid has a y block per input (CUDA allows 65535).
            return Err(CudaError::Unsupported(format!("the encoder takes at most {MAX_GRID_Y} inputs per step, not {max_seqs}")));
        }
        dev.bind()?;
        let v = model.view();
        let up = |x: &[f32]| upload_f32(&dev, x);
        let mut layers = Vec::with_capacity(v.layers.len());
        for l in &v.layers {
            layers.push(LayerW {
                qkv_w: up(l.qkv_w)?,
                qkv_b: up(l.qkv_b)?,
                attn_out_w: up(l.attn_out_w)?,
                attn_out_b: up(l.attn_out_b)?,
                attn_norm_w: up(l.attn_norm_w)?,
                attn_norm_b: up(l.attn_norm_b)?,
                inter_w: up(l.inter_w)?,
                inter_b: up(l.inter_b)?,
                out_w: up(l.out_w)?,
                out_b: up(l.out_b)?,
                out_norm_w: up(l.out_norm_w)?,
                out_norm_b: up(l.out_norm_b)?,
            });
        }
        let (word, position, token_type) = (up(v.word)?, up(v.position)?, up(v.token_type)?);
        let (embed_norm_w, embed_norm_b) = (up(v.embed_norm_w)?, up(v.embed_norm_b)?);
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let layout = Layout::new(max_tokens, max_seqs, h, i);
        let ws = dev.alloc(layout.total)?;
        dev.guard_regions(ws.ptr, "the encoder workspace", &layout.regions(max_tokens, max_seqs, h, i))?;
        let staging = dev.alloc_pinned(layout.inputs_end)?;
        dev.synchronize()?;
        Ok(CudaBertRunner {
            dev,
            cfg,
            pooling,
            word,
            position,
            token_type,
            embed_norm_w,
            embed_norm_b,
            layers,
            ws,
            layout,
            staging,
            max_tokens,
            max_seqs,
        })
    }

    /// The device the runner works on.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    /// The last hidden state of a step, left in the workspace (`hidden` region).
    fn forward(&mut self, tokens: &[u32], seqs: &[(usize, usize)]) -> Result<(), CudaError> {
        let c = &self.cfg;
        let (t, s) = (tokens.len(), seqs.len());
        let (h, inter) = (c.hidden_size, c.intermediate_size);
        let eps = c.layer_norm_eps as f32;
        let heads = c.num_attention_heads;
        let max_len = seqs.iter().map(|x| x.1).max().unwrap_or(0);
        let l = self.layout;
        // Inputs: ids, positions (restarting at 0 in each input), cu_seqlens.
        {
            let buf = self.staging.as_mut_slice();
            for (k, &id) in tokens.iter().enumerate() {
                buf[l.ids + 4 * k..l.ids + 4 * k + 4].copy_from_slice(&id.to_le_bytes());
            }
            let mut cu = 0i32;
            buf[l.cu..l.cu + 4].copy_from_slice(&0i32.to_le_bytes());
            for (n, &(start, len)) in seqs.iter().enumerate() {
                for j in 0..len {
                    let at = l.positions + 4 * (start + j);
                    buf[at..at + 4].copy_from_slice(&(j as i32).to_le_bytes());
                }
                cu += len as i32;
                buf[l.cu + 4 * (n + 1)..l.cu + 4 * (n + 2)].copy_from_slice(&cu.to_le_bytes());
            }
        }
        let dev = &self.dev;
        // One copy per region: the gaps between them hold the emulator's guard bytes.
        let staged = self.staging.as_slice();
        for (o, bytes) in [(l.ids, 4 * t), (l.positions, 4 * t), (l.cu, 4 * (s + 1))] {
            dev.upload(self.ws.at(o), &staged[o..o + bytes])?;
        }
        let at = |o: usize| self.ws.at(o);
        let (hs, qkv, attn, tmp, mid) = (at(l.h), at(l.qkv), at(l.attn), at(l.tmp), at(l.inter));
        ops::bert_embeddings(
            dev,
            &ops::BertEmbeddings {
                out: tmp,
                word: self.word.ptr,
                position: self.position.ptr,
                token_type: self.token_type.ptr,
                ids: at(l.ids),
                positions: at(l.positions),
                type_ids: 0,
                tokens: t,
                hidden: h,
                vocab: c.vocab_size,
                max_pos: c.max_position_embeddings,
                type_vocab: 1,
            },
        )?;
        ops::layer_norm(dev, hs, tmp, 0, 0, self.embed_norm_w.ptr, self.embed_norm_b.ptr, t, h, eps)?;
        for w in &self.layers {
            dev.linear_f32(qkv, hs, w.qkv_w.ptr, [t, 3 * h, h])?;
            let a = ops::EncoderAttention {
                out: attn,
                qkv,
                qkv_bias: w.qkv_b.ptr,
                cu_seqlens: at(l.cu),
                num_seqs: s,
                max_len,
                num_heads: heads,
                head_dim: h / heads,
            };
            ops::encoder_attention(dev, &a)?;
            dev.linear_f32(tmp, attn, w.attn_out_w.ptr, [t, h, h])?;
            ops::layer_norm(dev, hs, tmp, w.attn_out_b.ptr, hs, w.attn_norm_w.ptr, w.attn_norm_b.ptr, t, h, eps)?;
            dev.linear_f32(mid, hs, w.inter_w.ptr, [t, inter, h])?;
            ops::gelu_erf(dev, mid, mid, w.inter_b.ptr, t, inter)?;
            dev.linear_f32(tmp, mid, w.out_w.ptr, [t, h, inter])?;
            ops::layer_norm(dev, hs, tmp, w.out_b.ptr, hs, w.out_norm_w.ptr, w.out_norm_b.ptr, t, h, eps)?;
        }
        Ok(())
    }

    /// The last hidden state `[tokens, hidden]` of packed inputs (what
    /// `BertModel::forward` returns on the CPU), for tests.
    pub fn last_hidden_state(&mut self, tokens: &[u32], seqs: &[(usize, usize)]) -> anyhow::Result<Vec<f32>> {
        self.check(tokens, seqs)?;
        self.dev.bind()?;
        self.forward(tokens, seqs)?;
        let mut out = vec![0f32; tokens.len() * self.cfg.hidden_size];
        self.dev.download(bytemuck::cast_slice_mut(&mut out), self.ws.at(self.layout.h))?;
        self.dev.synchronize()?;
        Ok(out)
    }

    fn check(&self, tokens: &[u32], seqs: &[(usize, usize)]) -> anyhow::Result<()> {
        let max = self.cfg.max_position_embeddings;
        if let Some(&(_, len)) = seqs.iter().find(|s| s.1 > max || s.1 == 0) {
            anyhow::bail!("an input of {len} tokens is outside 1..={max} (max_position_embeddings)");
        }
        anyhow::ensure!(
            tokens.len() <= self.max_tokens && seqs.len() <= self.max_seqs,
            "a step of {} tokens in {} inputs is over the encoder's {} tokens / {} inputs",
            tokens.len(),
            seqs.len(),
            self.max_tokens,
            self.max_seqs
        );
        let mut next = 0;
        for &(start, len) in seqs {
            anyhow::ensure!(start == next, "inputs must be packed back to back (input at {start}, expected {next})");
            next = start + len;
        }
        anyhow::ensure!(next == tokens.len(), "inputs cover {next} of {} tokens", tokens.len());
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            anyhow::bail!("token id {id} is outside the vocabulary ({})", self.cfg.vocab_size);
        }
        Ok(())
    }
}

impl EncoderRunner for CudaBertRunner {
    fn encode(&mut self, tokens: &[u32], seqs: &[(usize, usize)]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.check(tokens, seqs)?;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        self.dev.bind()?;
        self.forward(tokens, seqs)?;
        let h = self.cfg.hidden_size;
        let l = self.layout;
        let mode = match self.pooling.mode {
            PoolingMode::Mean => PoolMode::Mean,
            PoolingMode::Cls => PoolMode::First,
            PoolingMode::LastToken => PoolMode::Last,
        };
        let (pooled, hs, cu) = (self.ws.at(l.pooled), self.ws.at(l.h), self.ws.at(l.cu));
        ops::embedding_pool(&self.dev, pooled, hs, cu, seqs.len(), h, mode, self.pooling.normalize)?;
        let mut out = vec![0f32; seqs.len() * h];
        self.dev.download(bytemuck::cast_slice_mut(&mut out), pooled)?;
        self.dev.synchronize()?;
        Ok(out.chunks(h).map(<[f32]>::to_vec).collect())
    }

    fn dimensions(&self) -> usize {
        self.cfg.hidden_size
    }
}

/// A Llama-family decoder used as an embedding model (Qwen3-Embedding, ...)
/// on a device: the generation runner (`CudaRunner`, bf16 weights and
/// activations, eager: no graphs) over a scratch KV pool sized for one step,
/// causal prefill of every input, the final-norm hidden states copied back
/// and pooled on the host (`Pooling::pool`, as the CPU's
/// `DecoderEmbedRunner` does).
pub struct CudaDecoderEmbedRunner {
    runner: super::runner::CudaRunner,
    pooling: Pooling,
    hidden: usize,
    num_blocks: usize,
}

impl CudaDecoderEmbedRunner {
    /// Uploads the model in `src` to `dev` with a KV pool for steps of at
    /// most `max_tokens` tokens in `max_seqs` inputs, each at most
    /// `max_len` tokens long. Errors: shapes the CUDA runner does not
    /// support (`runner::check_model`), device memory.
    pub fn load_on(
        dev: Device,
        cfg: &crate::model::ModelConfig,
        src: &dyn crate::model::weights::WeightSource,
        pooling: Pooling,
        max_tokens: usize,
        max_seqs: usize,
        max_len: usize,
    ) -> anyhow::Result<CudaDecoderEmbedRunner> {
        use crate::runner::encoder::{scratch_blocks, SCRATCH_BLOCK};
        let num_blocks = scratch_blocks(max_tokens, max_seqs, SCRATCH_BLOCK);
        let opts = super::runner::CudaRunnerOptions {
            block_size: SCRATCH_BLOCK,
            max_model_len: max_len.max(1),
            max_num_seqs: max_seqs,
            max_num_batched_tokens: max_tokens,
            enforce_eager: true,
            num_kv_blocks: Some(num_blocks),
            ..Default::default()
        };
        let runner = super::runner::CudaRunner::load_on(dev, cfg, src, opts, |_| {})?;
        let num_blocks = crate::runner::ModelRunner::num_kv_blocks(&runner);
        Ok(CudaDecoderEmbedRunner { runner, pooling, hidden: cfg.hidden_size, num_blocks })
    }
}

impl EncoderRunner for CudaDecoderEmbedRunner {
    fn encode(&mut self, tokens: &[u32], seqs: &[(usize, usize)]) -> anyhow::Result<Vec<Vec<f32>>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let batch = crate::runner::encoder::scratch_batch(tokens, seqs, crate::runner::encoder::SCRATCH_BLOCK, self.num_blocks)?;
        let hidden = self.runner.forward_hidden(&batch)?;
        Ok(self.pooling.pool(&hidden, self.hidden, seqs))
    }

    fn dimensions(&self) -> usize {
        self.hidden
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_regions_are_disjoint_and_aligned() {
        let (t, s, h, i) = (100, 7, 384, 1536);
        let l = Layout::new(t, s, h, i);
        let mut r = l.regions(t, s, h, i).to_vec();
        r.sort_by_key(|x| x.1);
        for w in r.windows(2) {
            assert!(w[0].1 + w[0].2 <= w[1].1, "{} overlaps {}", w[0].0, w[1].0);
        }
        assert!(r.iter().all(|x| x.1 % 256 == 0));
        assert!(r.last().map(|x| x.1 + x.2).unwrap() <= l.total);
        assert_eq!(l.inputs_end, l.cu + 4 * (s + 1));
    }
}
