//! The Llama family in one file: Llama 2/3/3.1/3.2, Mistral, SmolLM2 (plain),
//! Qwen2/2.5 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm). Weight names are
//! Hugging Face's, verbatim.
//!
//! block(h):  x = rms_norm(h) ; q,k,v = x·Wqkvᵀ (+b) ; [q,k = head_norm(q,k)] ;
//!            q,k = rope(q,k, pos) ; cache[slots] = k,v ; a = attn(q, cache) ;
//!            h += a·Woᵀ ; x = rms_norm(h) ; h += (silu(x·Wgᵀ) * x·Wuᵀ)·Wdᵀ

use super::config::{Arch, ModelConfig};
use super::weights::{HostTensor, WeightSource};
use super::{BatchInput, ModelError};
use crate::backend::cpu::attention::paged_attention;
use crate::backend::cpu::ops::{add_inplace, rms_norm, rms_norm_heads_inplace, rms_norm_row, rotary_inplace, silu_and_mul};
use crate::backend::cpu::{matmul_with, ActQuant, KvCache, Weight};

/// A linear layer: `y = x·Wᵀ + b`, W `[out, in]`.
pub struct Linear {
    pub w: Weight,
    pub b: Option<Vec<f32>>,
}

impl Linear {
    fn forward(&self, x: &[f32], m: usize, act: ActQuant) -> Vec<f32> {
        let mut y = vec![0.0; m * self.w.rows];
        matmul_with(x, m, &self.w, self.b.as_deref(), &mut y, act);
        y
    }
}

pub struct Layer {
    input_norm: Vec<f32>,
    /// q, k and v projections stacked: [(nh + 2 nkv) * hd, hidden].
    qkv: Linear,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    o: Linear,
    post_norm: Vec<f32>,
    /// gate and up projections stacked: [2 * inter, hidden].
    gate_up: Linear,
    down: Linear,
}

pub struct LlamaModel {
    pub cfg: ModelConfig,
    embed: Weight,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// None when the embeddings are tied.
    lm_head: Option<Weight>,
    inv_freq: Vec<f32>,
    /// How decode-sized matmuls meet block-format weights.
    act: ActQuant,
}

/// Loads tensors by name, checking their shapes against the config.
struct Loader<'a> {
    src: &'a dyn WeightSource,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        let t = self.src.load(name)?;
        if t.shape != shape {
            return Err(ModelError::ConfigMismatch {
                path: self.src.path().into(),
                msg: format!("tensor '{name}' has shape {:?}, the config implies {:?}", t.shape, shape),
            });
        }
        Ok(t)
    }
    fn weight(&self, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        let t = self.tensor(name, &[rows, cols])?;
        Ok(Weight { rows, cols, data: t.data })
    }
    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        Ok(self.tensor(name, &[n])?.to_f32())
    }
    fn opt_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>, ModelError> {
        if self.src.contains(name) {
            self.vector(name, n).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl LlamaModel {
    pub fn load(cfg: ModelConfig, src: &dyn WeightSource, mut progress: impl FnMut(usize)) -> Result<LlamaModel, ModelError> {
        let l = Loader { src };
        let (h, hd, nh, nkv, inter) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size);
        let embed = l.weight("model.embed_tokens.weight", cfg.vocab_size, h)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let q = l.weight(&format!("{p}.self_attn.q_proj.weight"), nh * hd, h)?;
            let k = l.weight(&format!("{p}.self_attn.k_proj.weight"), nkv * hd, h)?;
            let v = l.weight(&format!("{p}.self_attn.v_proj.weight"), nkv * hd, h)?;
            let bias = |n: &str, len| l.opt_vector(&format!("{p}.self_attn.{n}_proj.bias"), len);
            let qkv_b = match (bias("q", nh * hd)?, bias("k", nkv * hd)?, bias("v", nkv * hd)?) {
                (Some(a), Some(b), Some(c)) => Some([a, b, c].concat()),
                (None, None, None) if !cfg.attention_bias => None,
                _ => {
                    return Err(ModelError::ConfigMismatch {
                        path: src.path().into(),
                        msg: format!("layer {i}: q/k/v biases must all be present (attention_bias = {})", cfg.attention_bias),
                    })
                }
            };
            let (q_norm, k_norm) = if cfg.qk_norm || src.contains(&format!("{p}.self_attn.q_norm.weight")) {
                (
                    Some(l.vector(&format!("{p}.self_attn.q_norm.weight"), hd)?),
                    Some(l.vector(&format!("{p}.self_attn.k_norm.weight"), hd)?),
                )
            } else {
                (None, None)
            };
            let gate = l.weight(&format!("{p}.mlp.gate_proj.weight"), inter, h)?;
            let up = l.weight(&format!("{p}.mlp.up_proj.weight"), inter, h)?;
            layers.push(Layer {
                input_norm: l.vector(&format!("{p}.input_layernorm.weight"), h)?,
                qkv: Linear { w: Weight::concat_rows(&[&q, &k, &v]), b: qkv_b },
                q_norm,
                k_norm,
                o: Linear { w: l.weight(&format!("{p}.self_attn.o_proj.weight"), h, nh * hd)?, b: None },
                post_norm: l.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                gate_up: Linear { w: Weight::concat_rows(&[&gate, &up]), b: None },
                down: Linear { w: l.weight(&format!("{p}.mlp.down_proj.weight"), h, inter)?, b: None },
            });
            progress(i + 1);
        }
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else if src.contains("lm_head.weight") {
            Some(l.weight("lm_head.weight", cfg.vocab_size, h)?)
        } else {
            return Err(ModelError::MissingTensor { path: src.path().into(), tensor: "lm_head.weight".into() });
        };
        let norm = l.vector("model.norm.weight", h)?;
        let inv_freq = cfg.rope_inv_freq();
        Ok(LlamaModel { cfg, embed, layers, norm, lm_head, inv_freq, act: ActQuant::default() })
    }

    /// Chooses how decode-sized matmuls meet block-format weights (default
    /// `ActQuant::F32`, exact).
    pub fn set_activations(&mut self, act: ActQuant) {
        self.act = act;
    }

    pub fn arch(&self) -> Arch {
        self.cfg.arch
    }

    /// Bytes of weights held (for the KV budget and benchmarks).
    pub fn weight_bytes(&self) -> usize {
        let lin = |l: &Linear| l.w.bytes();
        self.embed.bytes()
            + self.lm_head.as_ref().map_or(0, |w| w.bytes())
            + self.layers.iter().map(|l| lin(&l.qkv) + lin(&l.o) + lin(&l.gate_up) + lin(&l.down)).sum::<usize>()
    }

    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> KvCache {
        KvCache::new(self.cfg.num_layers, num_blocks, block_size, self.cfg.num_kv_heads, self.cfg.head_dim)
    }

    /// Runs `batch` through the model, writing its K/V into `cache`. Returns
    /// the logits `[n, vocab]` of the last query token of each sequence with
    /// `want_logits`, in order.
    pub fn forward(&self, batch: &BatchInput, cache: &mut KvCache) -> Vec<f32> {
        let hs = self.residual_stream(batch, cache);
        self.logits(batch, &hs)
    }

    /// `forward`, plus the logits `[rows, vocab]` of the query tokens whose
    /// next prompt token is wanted (`SeqInput::prompt_targets`): for each
    /// sequence in batch order, its first `prompt_targets.len()` query rows.
    pub fn forward_with_prompt(&self, batch: &BatchInput, cache: &mut KvCache) -> (Vec<f32>, Vec<f32>) {
        let hs = self.residual_stream(batch, cache);
        let rows: Vec<usize> = batch.seqs.iter().flat_map(|s| s.q_start..s.q_start + s.prompt_targets.len()).collect();
        (self.logits(batch, &hs), self.logits_of_rows(&hs, &rows))
    }

    /// The final-normed hidden state `[tokens, hidden]` of every query token
    /// of `batch` (transformers' `last_hidden_state`; decoder embedding
    /// models pool it), writing K/V into `cache` as `forward` does.
    pub fn last_hidden_state(&self, batch: &BatchInput, cache: &mut KvCache) -> Vec<f32> {
        let hs = self.residual_stream(batch, cache);
        let mut out = vec![0.0f32; hs.len()];
        rms_norm(&hs, &self.norm, self.cfg.rms_norm_eps, &mut out);
        out
    }

    /// Embeddings through every block: the residual stream before the final norm.
    fn residual_stream(&self, batch: &BatchInput, cache: &mut KvCache) -> Vec<f32> {
        let c = &self.cfg;
        let (t, h) = (batch.tokens.len(), c.hidden_size);
        let mut hs = vec![0.0f32; t * h];
        for (row, &tok) in hs.chunks_mut(h).zip(&batch.tokens) {
            self.embed.row_into(tok as usize, row);
        }
        let mut x = vec![0.0f32; t * h];
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&hs, &layer.input_norm, c.rms_norm_eps, &mut x);
            let attn = self.attention(li, layer, batch, &x, cache);
            add_inplace(&mut hs, &layer.o.forward(&attn, t, self.act));
            rms_norm(&hs, &layer.post_norm, c.rms_norm_eps, &mut x);
            let gu = layer.gate_up.forward(&x, t, self.act);
            let mut act = vec![0.0f32; t * c.intermediate_size];
            silu_and_mul(&gu, c.intermediate_size, &mut act);
            add_inplace(&mut hs, &layer.down.forward(&act, t, self.act));
        }
        hs
    }

    fn attention(&self, li: usize, layer: &Layer, batch: &BatchInput, x: &[f32], cache: &mut KvCache) -> Vec<f32> {
        let c = &self.cfg;
        let t = batch.tokens.len();
        let (nq, nk) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let qkv = layer.qkv.forward(x, t, self.act);
        let (mut q, mut k, mut v) = (Vec::with_capacity(t * nq), Vec::with_capacity(t * nk), Vec::with_capacity(t * nk));
        for row in qkv.chunks(nq + 2 * nk) {
            q.extend_from_slice(&row[..nq]);
            k.extend_from_slice(&row[nq..nq + nk]);
            v.extend_from_slice(&row[nq + nk..]);
        }
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            rms_norm_heads_inplace(&mut q, qn, c.rms_norm_eps);
            rms_norm_heads_inplace(&mut k, kn, c.rms_norm_eps);
        }
        rotary_inplace(&mut q, &batch.positions, c.num_heads, &self.inv_freq);
        rotary_inplace(&mut k, &batch.positions, c.num_kv_heads, &self.inv_freq);
        cache.write(li, &batch.slots, &k, &v);
        let mut out = vec![0.0f32; t * nq];
        paged_attention(batch, cache, li, c.num_heads, &q, &mut out);
        out
    }

    fn logits(&self, batch: &BatchInput, hs: &[f32]) -> Vec<f32> {
        let rows: Vec<usize> = batch.seqs.iter().filter(|s| s.want_logits).map(|s| s.q_start + s.q_len - 1).collect();
        self.logits_of_rows(hs, &rows)
    }

    /// Final norm and lm_head of the given rows of the residual stream `hs`.
    fn logits_of_rows(&self, hs: &[f32], rows: &[usize]) -> Vec<f32> {
        let h = self.cfg.hidden_size;
        if rows.is_empty() {
            return Vec::new();
        }
        let mut x = vec![0.0f32; rows.len() * h];
        for (o, &r) in x.chunks_mut(h).zip(rows) {
            rms_norm_row(&hs[r * h..(r + 1) * h], &self.norm, self.cfg.rms_norm_eps, o);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0.0f32; rows.len() * head.rows];
        matmul_with(&x, rows.len(), head, None, &mut logits, self.act);
        logits
    }
}
