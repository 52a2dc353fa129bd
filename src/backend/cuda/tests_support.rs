//! Model shapes for host-side unit tests (config.json values of the public
//! checkpoints; no weights).

use crate::model::config::{Arch, ModelConfig, RopeScaling};

fn base(arch: Arch, name: &str) -> ModelConfig {
    ModelConfig {
        arch,
        arch_name: name.into(),
        vocab_size: 0,
        hidden_size: 0,
        intermediate_size: 0,
        num_layers: 0,
        num_heads: 0,
        num_kv_heads: 0,
        head_dim: 0,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: None,
        max_position_embeddings: 131_072,
        tie_word_embeddings: false,
        attention_bias: false,
        qk_norm: false,
        sliding_window: None,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

/// meta-llama/Llama-3.1-8B.
pub fn llama_8b_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 128_256,
        hidden_size: 4096,
        intermediate_size: 14_336,
        num_layers: 32,
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 128,
        rope_scaling: Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }),
        ..base(Arch::Llama, "LlamaForCausalLM")
    }
}

/// Qwen/Qwen3-0.6B.
pub fn qwen3_0_6b_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 151_936,
        hidden_size: 1024,
        intermediate_size: 3072,
        num_layers: 28,
        num_heads: 16,
        num_kv_heads: 8,
        head_dim: 128,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        max_position_embeddings: 40_960,
        tie_word_embeddings: true,
        qk_norm: true,
        ..base(Arch::Qwen3, "Qwen3ForCausalLM")
    }
}

/// HuggingFaceTB/SmolLM2-135M-Instruct (kiln's default model).
pub fn smollm2_135m_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 49_152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
        rope_theta: 100_000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        ..base(Arch::Llama, "LlamaForCausalLM")
    }
}
