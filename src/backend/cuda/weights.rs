//! The model's weights on the GPU, bf16, in the layouts the forward pass
//! uses: q/k/v stacked into one [(nh + 2 nkv) * hd, hidden] matrix and
//! gate/up into one [2 * inter, hidden] matrix (one GEMM each), norms as bf16
//! vectors. Tensors come by Hugging Face name from any `WeightSource`;
//! GGUF Q8_0 / Q4_1 blocks are uploaded as stored and expanded on the GPU
//! (kernels/dequant.cu), other types are converted on the host.

use super::device::{Device, DeviceMem};
use super::ops::{self, Quant};
use crate::backend::cpu::WeightData;
use crate::model::dequant::GgmlType;
use crate::model::weights::{HostTensor, WeightSource};
use crate::model::{ModelConfig, ModelError};
use anyhow::Context;
use half::bf16;

pub struct LayerWeights {
    pub input_norm: DeviceMem,
    pub qkv: DeviceMem,
    pub qkv_bias: Option<DeviceMem>,
    pub q_norm: Option<DeviceMem>,
    pub k_norm: Option<DeviceMem>,
    pub o: DeviceMem,
    pub post_norm: DeviceMem,
    pub gate_up: DeviceMem,
    pub down: DeviceMem,
}

pub struct CudaWeights {
    pub embed: DeviceMem,
    pub layers: Vec<LayerWeights>,
    pub norm: DeviceMem,
    /// None: tied to `embed`.
    pub lm_head: Option<DeviceMem>,
    /// [head_dim / 2] f32, rope scaling applied.
    pub inv_freq: DeviceMem,
}

impl CudaWeights {
    pub fn lm_head(&self) -> u64 {
        self.lm_head.as_ref().unwrap_or(&self.embed).ptr
    }
}

struct Uploader<'a> {
    dev: &'a Device,
    src: &'a dyn WeightSource,
}

impl Uploader<'_> {
    fn load(&self, name: &str, shape: &[usize]) -> anyhow::Result<HostTensor> {
        let t = self.src.load(name)?;
        if t.shape != shape {
            return Err(ModelError::ConfigMismatch {
                path: self.src.path().into(),
                msg: format!("tensor '{name}' has shape {:?}, the config implies {shape:?}", t.shape),
            }
            .into());
        }
        Ok(t)
    }

    /// Allocates one bf16 buffer and fills it with the named tensors stacked by rows.
    fn stacked(&self, parts: &[(String, Vec<usize>)]) -> anyhow::Result<DeviceMem> {
        let total: usize = parts.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        let mem = self.dev.alloc(total * 2)?;
        let mut off = 0;
        for (name, shape) in parts {
            let t = self.load(name, shape)?;
            self.write(mem.at(off * 2), &t).with_context(|| format!("uploading {name}"))?;
            off += t.numel();
        }
        Ok(mem)
    }

    fn one(&self, name: &str, shape: &[usize]) -> anyhow::Result<DeviceMem> {
        self.stacked(&[(name.to_string(), shape.to_vec())])
    }

    fn optional(&self, name: &str, shape: &[usize]) -> anyhow::Result<Option<DeviceMem>> {
        if self.src.contains(name) {
            self.one(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Writes tensor `t` as bf16 at `dst`.
    fn write(&self, dst: u64, t: &HostTensor) -> anyhow::Result<()> {
        let quant = |q: Quant, bytes: &[u8]| -> anyhow::Result<()> {
            let blocks = bytes.len() / q.block_bytes();
            anyhow::ensure!(blocks * 32 == t.numel(), "{} blocks for {} values", blocks, t.numel());
            let staging = self.dev.alloc(bytes.len())?;
            self.dev.upload(staging.ptr, bytes)?;
            ops::dequant(self.dev, q, dst, staging.ptr, blocks)?;
            self.dev.synchronize()?; // `bytes` and `staging` must outlive the copy and the kernel
            Ok(())
        };
        match &t.data {
            WeightData::Bf16(v) => {
                self.dev.upload(dst, bytemuck::cast_slice(v))?;
                self.dev.synchronize()?;
            }
            WeightData::Blocks(GgmlType::Q8_0, b) => quant(Quant::Q8_0, b)?,
            WeightData::Blocks(GgmlType::Q4_1, b) => quant(Quant::Q4_1, b)?,
            _ => {
                let v: Vec<bf16> = t.to_f32().into_iter().map(bf16::from_f32).collect();
                self.dev.upload(dst, bytemuck::cast_slice(&v))?;
                self.dev.synchronize()?;
            }
        }
        Ok(())
    }
}

impl CudaWeights {
    /// Uploads every weight of `cfg` from `src`; `progress(layer)` after each layer.
    pub fn load(dev: &Device, cfg: &ModelConfig, src: &dyn WeightSource, mut progress: impl FnMut(usize)) -> anyhow::Result<CudaWeights> {
        let u = Uploader { dev, src };
        let (h, hd, nh, nkv, inter) = (cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size);
        let embed = u.one("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            let n = |s: &str| format!("{p}.{s}");
            let qkv = u.stacked(&[
                (n("self_attn.q_proj.weight"), vec![nh * hd, h]),
                (n("self_attn.k_proj.weight"), vec![nkv * hd, h]),
                (n("self_attn.v_proj.weight"), vec![nkv * hd, h]),
            ])?;
            let qkv_bias = if src.contains(&n("self_attn.q_proj.bias")) {
                Some(u.stacked(&[
                    (n("self_attn.q_proj.bias"), vec![nh * hd]),
                    (n("self_attn.k_proj.bias"), vec![nkv * hd]),
                    (n("self_attn.v_proj.bias"), vec![nkv * hd]),
                ])?)
            } else {
                None
            };
            let gate_up = u.stacked(&[(n("mlp.gate_proj.weight"), vec![inter, h]), (n("mlp.up_proj.weight"), vec![inter, h])])?;
            layers.push(LayerWeights {
                input_norm: u.one(&n("input_layernorm.weight"), &[h])?,
                qkv,
                qkv_bias,
                q_norm: u.optional(&n("self_attn.q_norm.weight"), &[hd])?,
                k_norm: u.optional(&n("self_attn.k_norm.weight"), &[hd])?,
                o: u.one(&n("self_attn.o_proj.weight"), &[h, nh * hd])?,
                post_norm: u.one(&n("post_attention_layernorm.weight"), &[h])?,
                gate_up,
                down: u.one(&n("mlp.down_proj.weight"), &[h, inter])?,
            });
            progress(l + 1);
        }
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(u.one("lm_head.weight", &[cfg.vocab_size, h])?) };
        let norm = u.one("model.norm.weight", &[h])?;
        let inv = cfg.rope_inv_freq();
        let inv_freq = dev.alloc(inv.len() * 4)?;
        dev.upload(inv_freq.ptr, bytemuck::cast_slice(&inv))?;
        dev.synchronize()?;
        Ok(CudaWeights { embed, layers, norm, lm_head, inv_freq })
    }
}
