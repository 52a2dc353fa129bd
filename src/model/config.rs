//! `ModelConfig`: the architecture hyper-parameters, read from a Hugging Face
//! `config.json` or from GGUF metadata, validated once.

use super::ModelError;
use serde::Deserialize;
use std::path::Path;

/// Which member of the Llama family: they differ only in biases and norms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3/3.1/3.2, Mistral, SmolLM2.
    Llama,
    /// q/k/v projections carry a bias.
    Qwen2,
    /// RMSNorm over each head of q and k before rotary embedding.
    Qwen3,
}

/// Llama 3 frequency-dependent rotary scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: usize },
    /// Plain linear position interpolation.
    Linear { factor: f32 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// The architecture name as given by the file (e.g. "LlamaForCausalLM", "llama").
    pub arch_name: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections have a bias (Qwen2).
    pub attention_bias: bool,
    /// q_norm / k_norm per head (Qwen3).
    pub qk_norm: bool,
    /// Tokens a query attends back to in the layers that use sliding-window
    /// attention, when at least one does (Mistral v0.1, Qwen2 with
    /// `use_sliding_window`). Neither backend implements the window:
    /// `context::max_model_len` caps the context to it instead.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers >= 5 writes rope_theta and the scaling here instead.
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    hidden_act: Option<String>,
    sliding_window: Option<usize>,
    /// Qwen2 / Qwen3: the window is used only when this is true ...
    use_sliding_window: Option<bool>,
    /// ... and only by layers from this index on.
    max_window_layers: Option<usize>,
    /// transformers >= 4.56: "full_attention" or "sliding_attention" per layer.
    layer_types: Option<Vec<String>>,
}

/// The window of the layers transformers runs with sliding-window attention,
/// if any layer does (Llama's attention ignores `sliding_window`; Mistral's
/// applies it to every layer; Qwen2/Qwen3's see the fields above).
fn sliding_window(c: &HfConfig, arch: Arch, arch_name: &str) -> Option<usize> {
    let w = c.sliding_window?;
    let mistral = arch_name.to_ascii_lowercase().contains("mistral") || c.model_type.as_deref() == Some("mistral");
    if arch == Arch::Llama && !mistral {
        return None;
    }
    if c.use_sliding_window == Some(false) {
        return None;
    }
    if let Some(types) = &c.layer_types {
        return types.iter().any(|t| t == "sliding_attention").then_some(w);
    }
    match c.use_sliding_window {
        Some(true) => (c.max_window_layers.unwrap_or(0) < c.num_hidden_layers).then_some(w),
        _ => Some(w),
    }
}

/// Reads an id or a list of ids (config.json allows both for eos_token_id).
pub fn ids_from_json(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        _ => vec![],
    }
}

/// Maps an architecture name (HF class, HF model_type or GGUF
/// `general.architecture`) to the family member.
pub fn arch_from_name(name: &str) -> Option<Arch> {
    let n = name.to_ascii_lowercase();
    let n = n.trim_end_matches("forcausallm");
    match n {
        "llama" | "mistral" | "smollm" | "smollm2" => Some(Arch::Llama),
        "qwen2" => Some(Arch::Qwen2),
        "qwen3" => Some(Arch::Qwen3),
        _ => None,
    }
}

fn parse_rope_scaling(v: &serde_json::Value, path: &Path) -> Result<Option<RopeScaling>, ModelError> {
    if v.is_null() {
        return Ok(None);
    }
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("");
    let f = |k: &str, d: f64| v.get(k).and_then(|x| x.as_f64()).unwrap_or(d) as f32;
    match kind {
        "llama3" if v.get("factor").is_none() => Err(ModelError::Corrupt { path: path.into(), msg: "rope_scaling llama3 without factor".into() }),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: f("factor", 8.0),
            low_freq_factor: f("low_freq_factor", 1.0),
            high_freq_factor: f("high_freq_factor", 4.0),
            original_max_position_embeddings: v
                .get("original_max_position_embeddings")
                .and_then(|x| x.as_u64())
                .unwrap_or(8192) as usize,
        })),
        "linear" => Ok(Some(RopeScaling::Linear { factor: f("factor", 1.0) })),
        "default" | "" => Ok(None),
        other => Err(ModelError::Unsupported { path: path.into(), what: "rope_scaling type", name: other.into() }),
    }
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<ModelConfig, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ModelError::NotFound { path: path.into() },
            _ => ModelError::Io { path: path.into(), source: e },
        })?;
        let c: HfConfig = serde_json::from_str(&text)
            .map_err(|e| ModelError::Corrupt { path: path.into(), msg: format!("invalid config.json: {e}") })?;
        let arch_name = c
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or(c.model_type.clone())
            .unwrap_or_default();
        let arch = arch_from_name(&arch_name)
            .or_else(|| c.model_type.as_deref().and_then(arch_from_name))
            .ok_or_else(|| ModelError::UnknownArch { path: path.into(), arch: arch_name.clone() })?;
        if let Some(act) = &c.hidden_act {
            if act != "silu" {
                return Err(ModelError::Unsupported { path: path.into(), what: "hidden_act", name: act.clone() });
            }
        }
        let window = sliding_window(&c, arch, &arch_name);
        let cfg = ModelConfig {
            arch,
            arch_name,
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_layers: c.num_hidden_layers,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads.max(1)),
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta: c
                .rope_theta
                .or_else(|| c.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64()))
                .unwrap_or(10000.0) as f32,
            rope_scaling: match c.rope_scaling.as_ref().or(c.rope_parameters.as_ref()) {
                Some(v) => parse_rope_scaling(v, path)?,
                None => None,
            },
            max_position_embeddings: c.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            attention_bias: c.attention_bias.unwrap_or(arch == Arch::Qwen2),
            qk_norm: arch == Arch::Qwen3,
            sliding_window: window,
            bos_token_id: ids_from_json(&c.bos_token_id).first().copied(),
            eos_token_ids: ids_from_json(&c.eos_token_id),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the values are usable at all (shapes against weights are
    /// checked by the loader).
    pub fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::ConfigMismatch { path: path.into(), msg });
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.head_dim == 0 || self.num_layers == 0 {
            return bad("zero heads, head_dim or layers".into());
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!("head_dim {} is odd", self.head_dim));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.intermediate_size == 0 {
            return bad("zero vocab_size, hidden_size or intermediate_size".into());
        }
        Ok(())
    }

    /// Rotary inverse frequencies for `head_dim`, with rope scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / (self.rope_theta as f64).powf(2.0 * i as f64 / d as f64))
            .collect();
        match &self.rope_scaling {
            None => base.iter().map(|&x| x as f32).collect(),
            Some(RopeScaling::Linear { factor }) => base.iter().map(|&x| (x / *factor as f64) as f32).collect(),
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                let (factor, lo, hi) = (*factor as f64, *low_freq_factor as f64, *high_freq_factor as f64);
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / lo;
                let high_wavelen = old / hi;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let v = if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        };
                        v as f32
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig, ModelError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, json).unwrap();
        ModelConfig::from_hf_json(&p)
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2"#;

    #[test]
    fn reads_transformers5_rope_parameters() {
        let c = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "rope_parameters": {{"rope_type": "llama3", "rope_theta": 500000.0,
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0));
    }

    #[test]
    fn clear_errors() {
        let e = parse(&format!(r#"{{"architectures": ["GPT2LMHeadModel"], {BASE}}}"#)).unwrap_err().to_string();
        assert!(e.contains("unknown architecture 'GPT2LMHeadModel'"), "{e}");
        let e = parse(&format!(r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "num_key_value_heads": 3}}"#)).unwrap_err().to_string();
        assert!(e.contains("not a multiple of num_key_value_heads 3"), "{e}");
        let e = parse("{").unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("invalid config.json"), "{e}");
        let e = ModelConfig::from_hf_json(Path::new("/nonexistent/config.json")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/config.json: no such file"), "{e}");
    }
}
