//! GGUF metadata -> `ModelConfig`, and GGUF tensor names -> Hugging Face names.
//!
//! Keys read (`{arch}` = `general.architecture`):
//! `{arch}.embedding_length`, `.feed_forward_length`, `.block_count`,
//! `.attention.head_count`, `.attention.head_count_kv`, `.attention.key_length`,
//! `.attention.layer_norm_rms_epsilon`, `.rope.freq_base`, `.rope.scaling.*`,
//! `.context_length`, `.vocab_size`, `.attention.sliding_window`; `tokenizer.ggml.{tokens,bos_token_id,
//! eos_token_id,eot_token_id}`. Facts that GGUF keeps in the tensor table:
//! tied embeddings (no `output.weight`), q/k/v bias (`blk.0.attn_q.bias`),
//! q/k norms (`blk.0.attn_q_norm.weight`), Llama 3 rope scaling
//! (`rope_freqs.weight`, see `llama3_from_factors`).

use super::config::{arch_from_name, Arch, ModelConfig, RopeScaling};
use super::dequant::unpermute_qk_rows;
use super::gguf::GgufFile;
use super::ModelError;

fn missing(g: &GgufFile, key: &str) -> ModelError {
    ModelError::Corrupt { path: g.path.clone(), msg: format!("missing or non-integer metadata key '{key}'") }
}

fn req_usize(g: &GgufFile, key: &str) -> Result<usize, ModelError> {
    g.get_u64(key).and_then(|v| usize::try_from(v).ok()).ok_or_else(|| missing(g, key))
}

fn opt_usize(g: &GgufFile, key: &str) -> Option<usize> {
    g.get_u64(key).and_then(|v| usize::try_from(v).ok())
}

/// Builds the model configuration from GGUF metadata and tensor table.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig, ModelError> {
    let path = &g.path;
    let arch_name = g.get_str("general.architecture").ok_or_else(|| ModelError::Corrupt {
        path: path.clone(),
        msg: "missing metadata key 'general.architecture'".into(),
    })?;
    let arch = arch_from_name(arch_name)
        .ok_or_else(|| ModelError::UnknownArch { path: path.clone(), arch: arch_name.into() })?;
    let k = |s: &str| format!("{arch_name}.{s}");
    let hidden_size = req_usize(g, &k("embedding_length"))?;
    let num_heads = req_usize(g, &k("attention.head_count"))?;
    let head_dim = match opt_usize(g, &k("attention.key_length")) {
        Some(d) => d,
        None => hidden_size / num_heads.max(1),
    };
    if let Some(rot) = opt_usize(g, &k("rope.dimension_count")) {
        if rot != head_dim {
            let name = format!("partial rotary embedding ({rot} of {head_dim} dims)");
            return Err(ModelError::Unsupported { path: path.clone(), what: "rope", name });
        }
    }
    let eos = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"];
    let mut eos_token_ids: Vec<u32> = eos.iter().filter_map(|key| g.get_u64(key)).map(|v| v as u32).collect();
    eos_token_ids.dedup();
    let cfg = ModelConfig {
        arch,
        arch_name: arch_name.to_string(),
        vocab_size: vocab_size(g, &k("vocab_size"))?,
        hidden_size,
        intermediate_size: req_usize(g, &k("feed_forward_length"))?,
        num_layers: req_usize(g, &k("block_count"))?,
        num_heads,
        num_kv_heads: opt_usize(g, &k("attention.head_count_kv")).unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: g.get_f64(&k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6) as f32,
        rope_theta: g.get_f64(&k("rope.freq_base")).unwrap_or(10000.0) as f32,
        rope_scaling: rope_scaling(g, arch_name, head_dim)?,
        max_position_embeddings: opt_usize(g, &k("context_length")).unwrap_or(2048),
        tie_word_embeddings: g.tensor("output.weight").is_none(),
        attention_bias: g.tensor("blk.0.attn_q.bias").is_some(),
        qk_norm: arch == Arch::Qwen3 || g.tensor("blk.0.attn_q_norm.weight").is_some(),
        sliding_window: opt_usize(g, &k("attention.sliding_window")),
        bos_token_id: g.get_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32),
        eos_token_ids,
    };
    cfg.validate(path)?;
    Ok(cfg)
}

/// `{arch}.vocab_size`, else the embedding's row count, else the token list.
fn vocab_size(g: &GgufFile, key: &str) -> Result<usize, ModelError> {
    if let Some(v) = opt_usize(g, key) {
        return Ok(v);
    }
    if let Some(t) = g.tensor("token_embd.weight").or_else(|| g.tensor("output.weight")) {
        if t.dims.len() == 2 {
            return Ok(t.dims[1]);
        }
    }
    match g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
        Some(tokens) => Ok(tokens.len()),
        None => Err(ModelError::Corrupt {
            path: g.path.clone(),
            msg: "cannot tell the vocabulary size: no vocab_size key, token_embd.weight or token list".into(),
        }),
    }
}

fn rope_scaling(g: &GgufFile, arch: &str, head_dim: usize) -> Result<Option<RopeScaling>, ModelError> {
    let kind = g.get_str(&format!("{arch}.rope.scaling.type")).unwrap_or("none");
    let factor = g.get_f64(&format!("{arch}.rope.scaling.factor"));
    match kind {
        "linear" => return Ok(factor.map(|f| RopeScaling::Linear { factor: f as f32 })),
        "none" => {}
        other => {
            let name = other.to_string();
            return Err(ModelError::Unsupported { path: g.path.clone(), what: "rope scaling type", name });
        }
    }
    if g.tensor("rope_freqs.weight").is_none() {
        return Ok(None);
    }
    let (_, factors) = g.tensor_f32("rope_freqs.weight")?;
    let theta = g.get_f64(&format!("{arch}.rope.freq_base")).unwrap_or(10000.0);
    if factors.len() != head_dim / 2 {
        let msg = format!("rope_freqs.weight has {} factors, head_dim {head_dim} needs {}", factors.len(), head_dim / 2);
        return Err(ModelError::ConfigMismatch { path: g.path.clone(), msg });
    }
    llama3_from_factors(&factors, theta, head_dim)
        .map(Some)
        .ok_or_else(|| ModelError::Unsupported {
            path: g.path.clone(),
            what: "rope scaling",
            name: "rope_freqs.weight factors that are not Llama 3 frequency scaling".into(),
        })
}

/// Recovers Llama 3 rope-scaling parameters from the per-frequency divisors
/// llama.cpp stores as `rope_freqs.weight` (r_i = 1 for short wavelengths,
/// `factor` for long ones, and 1 / ((1-s)/factor + s) between, where
/// s = (old/wavelen - lo) / (hi - lo) is linear in 1/wavelen).
/// Only old/lo and old/hi matter, so `old` is fixed at 8192 and lo, hi are
/// solved from the line through the smooth region. None if r is not of that form.
pub fn llama3_from_factors(r: &[f32], theta: f64, head_dim: usize) -> Option<RopeScaling> {
    const OLD: f64 = 8192.0;
    let inv_wavelen = |i: usize| theta.powf(-2.0 * i as f64 / head_dim as f64) / (2.0 * std::f64::consts::PI);
    let factor = r.iter().copied().fold(1.0f32, f32::max) as f64;
    if factor <= 1.0 || r.iter().any(|&x| !(1.0..=factor as f32).contains(&x)) {
        return None;
    }
    let s = |x: f32| (1.0 / x as f64 - 1.0 / factor) / (1.0 - 1.0 / factor);
    let smooth: Vec<usize> = (0..r.len()).filter(|&i| r[i] > 1.0 && (r[i] as f64) < factor).collect();
    let scaling = |lo: f64, hi: f64| RopeScaling::Llama3 {
        factor: factor as f32,
        low_freq_factor: lo as f32,
        high_freq_factor: hi as f32,
        original_max_position_embeddings: OLD as usize,
    };
    if smooth.len() >= 2 {
        // s = a * (1/wavelen) + b with a = old/(hi-lo), b = -lo/(hi-lo).
        let (i, j) = (smooth[0], smooth[smooth.len() - 1]);
        let a = (s(r[j]) - s(r[i])) / (inv_wavelen(j) - inv_wavelen(i));
        let b = s(r[i]) - a * inv_wavelen(i);
        if !(a.is_finite() && a != 0.0) {
            return None;
        }
        let lo = -b * OLD / a;
        return Some(scaling(lo, lo + OLD / a));
    }
    // No usable smooth region: put both thresholds between the last
    // unscaled and the first fully scaled frequency (a step function).
    let first_long = r.iter().position(|&x| x as f64 == factor)?;
    let edge = if first_long == 0 { inv_wavelen(0) * 2.0 } else { (inv_wavelen(first_long - 1) * inv_wavelen(first_long)).sqrt() };
    let lo = OLD * edge;
    Some(scaling(lo, lo * (1.0 + 1e-6)))
}

/// Whether `attn_q` / `attn_k` rows are stored in llama.cpp's rotary
/// permutation. transformers' GGUF loader reverses it for architecture
/// "llama" only (also Mistral and SmolLM2 GGUFs, which say "llama").
pub fn qk_permuted(g: &GgufFile) -> bool {
    g.get_str("general.architecture") == Some("llama")
}

/// Maps a GGUF tensor name to its Hugging Face name.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let (stem, suffix) = gguf_name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let top = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(hf) = top {
        return Some(format!("{hf}.{suffix}"));
    }
    let (layer, part) = stem.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// A GGUF tensor as the Hugging Face model expects it: dequantized to f32,
/// row-major shape, Q/K rows un-permuted where the file permuted them.
/// Returns (hf name, shape, data).
pub fn hf_tensor_f32(
    g: &GgufFile,
    cfg: &ModelConfig,
    gguf_name: &str,
) -> Result<(String, Vec<usize>, Vec<f32>), ModelError> {
    let name = hf_name(gguf_name).ok_or_else(|| ModelError::BadTensor {
        path: g.path.clone(),
        tensor: gguf_name.into(),
        msg: "no Hugging Face name for this tensor".into(),
    })?;
    let (shape, data) = g.tensor_f32(gguf_name)?;
    let n_head = if gguf_name.contains(".attn_q.") {
        cfg.num_heads
    } else if gguf_name.contains(".attn_k.") {
        cfg.num_kv_heads
    } else {
        return Ok((name, shape, data));
    };
    if !qk_permuted(g) {
        return Ok((name, shape, data));
    }
    let rows = shape[0];
    let cols = shape.get(1).copied().unwrap_or(1);
    if shape.len() > 2 || rows != n_head * cfg.head_dim {
        let msg = format!("{gguf_name} has shape {shape:?}, expected {} rows ({n_head} heads x {})", n_head * cfg.head_dim, cfg.head_dim);
        return Err(ModelError::ConfigMismatch { path: g.path.clone(), msg });
    }
    let data = unpermute_qk_rows(&data, n_head, rows, cols);
    Ok((name, shape, data))
}
