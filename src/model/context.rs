//! The context limit (`--max-model-len`) a model may be served with.
//!
//! Neither backend implements sliding-window attention (Mistral v0.1's
//! `sliding_window`, Qwen2's `use_sliding_window`): every query attends to
//! the whole context. That is exactly the model's attention as long as no
//! sequence is longer than the window, so a model with a window gets its
//! limit capped to the window (with a log line), and asking for more is an
//! error rather than silently different attention.

/// Why a requested `--max-model-len` cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    #[error(
        "--max-model-len {requested} exceeds the model's sliding attention window of {window} tokens; \
         kiln attends to the whole context (no sliding window), which matches the model only up to \
         {window} tokens: pass --max-model-len {window} or less"
    )]
    BeyondSlidingWindow { requested: usize, window: usize },
    #[error("--max-model-len must be at least 1")]
    Zero,
}

/// The limit to serve with and, when it differs from what was asked for or
/// from the model's own maximum, the reason (for the start-up log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextLimit {
    pub max_model_len: usize,
    pub note: Option<String>,
}

/// `requested` (the user's --max-model-len), else `max_position_embeddings`,
/// capped to `sliding_window` when the model has one.
pub fn max_model_len(max_position_embeddings: usize, sliding_window: Option<usize>, requested: Option<usize>) -> Result<ContextLimit, ContextError> {
    match (requested, sliding_window) {
        (Some(0), _) => Err(ContextError::Zero),
        (Some(r), Some(w)) if r > w => Err(ContextError::BeyondSlidingWindow { requested: r, window: w }),
        (Some(r), _) => Ok(ContextLimit { max_model_len: r, note: None }),
        (None, Some(w)) if w < max_position_embeddings => Ok(ContextLimit {
            max_model_len: w,
            note: Some(format!(
                "--max-model-len capped to the model's sliding attention window ({w} tokens, below its \
                 max_position_embeddings {max_position_embeddings}): kiln attends to the whole context, \
                 which equals sliding-window attention only up to the window"
            )),
        }),
        (None, _) => Ok(ContextLimit { max_model_len: max_position_embeddings, note: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use std::path::Path;

    fn fixture(name: &str) -> ModelConfig {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name).join("config.json");
        ModelConfig::from_hf_json(&p).unwrap()
    }

    /// The fixture's config.json with some keys replaced.
    fn edited(name: &str, edit: &[(&str, serde_json::Value)]) -> ModelConfig {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(name).join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
        for (k, x) in edit {
            v[*k] = x.clone();
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, v.to_string()).unwrap();
        ModelConfig::from_hf_json(&p).unwrap()
    }

    fn limit(c: &ModelConfig, requested: Option<usize>) -> Result<ContextLimit, ContextError> {
        max_model_len(c.max_position_embeddings, c.sliding_window, requested)
    }

    #[test]
    fn mistral_window_caps_the_context() {
        // The fixture has "sliding_window": null (Mistral v0.2 and later).
        let c = fixture("mistral");
        assert_eq!(c.sliding_window, None);
        assert_eq!(limit(&c, None).unwrap(), ContextLimit { max_model_len: 256, note: None });
        // Mistral v0.1: a 4096-token window, here 64 below the 256 positions.
        let c = edited("mistral", &[("sliding_window", 64.into())]);
        assert_eq!(c.sliding_window, Some(64));
        let l = limit(&c, None).unwrap();
        assert_eq!(l.max_model_len, 64);
        assert!(l.note.unwrap().contains("sliding attention window (64 tokens"));
        assert_eq!(limit(&c, Some(64)).unwrap().max_model_len, 64);
        assert_eq!(limit(&c, Some(10)).unwrap(), ContextLimit { max_model_len: 10, note: None });
        let e = limit(&c, Some(65)).unwrap_err();
        assert_eq!(e, ContextError::BeyondSlidingWindow { requested: 65, window: 64 });
        assert!(e.to_string().contains("--max-model-len 64 or less"), "{e}");
        // A window at least as long as the positions changes nothing.
        let c = edited("mistral", &[("sliding_window", 4096.into())]);
        assert_eq!(limit(&c, None).unwrap(), ContextLimit { max_model_len: 256, note: None });
    }

    #[test]
    fn qwen2_window_counts_only_when_a_layer_uses_it() {
        let c = fixture("qwen2_bias");
        assert_eq!(c.sliding_window, None);
        let off = edited("qwen2_bias", &[("sliding_window", 32.into()), ("use_sliding_window", false.into())]);
        assert_eq!(off.sliding_window, None);
        assert_eq!(limit(&off, None).unwrap().max_model_len, 256);
        // Layers from max_window_layers on slide (transformers' Qwen2Config); the
        // transformers 5 fixture also lists layer_types, which then decide.
        let on = [("sliding_window", 32.into()), ("use_sliding_window", true.into()), ("max_window_layers", 1.into())];
        let c = edited("qwen2_bias", &[on[0].clone(), on[1].clone(), on[2].clone(), ("layer_types", serde_json::Value::Null)]);
        assert_eq!(c.sliding_window, Some(32));
        assert_eq!(limit(&c, None).unwrap().max_model_len, 32);
        assert!(limit(&c, Some(33)).is_err());
        let types = serde_json::json!(["full_attention", "sliding_attention"]);
        assert_eq!(edited("qwen2_bias", &[on[0].clone(), on[1].clone(), ("layer_types", types)]).sliding_window, Some(32));
        let c = edited("qwen2_bias", &[on[0].clone(), on[1].clone(), ("max_window_layers", 2.into()), ("layer_types", serde_json::Value::Null)]);
        assert_eq!(c.sliding_window, None, "max_window_layers >= num_hidden_layers: no layer slides");
    }

    /// A GGUF v3 header with u32 metadata (and a string architecture), no tensors.
    fn gguf(arch: &str, keys: &[(&str, u32)]) -> tempfile::NamedTempFile {
        let mut b: Vec<u8> = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((keys.len() as u64 + 1).to_le_bytes());
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        string(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes()); // string
        string(&mut b, arch);
        for (k, v) in keys {
            string(&mut b, &format!("{arch}.{k}"));
            b.extend(4u32.to_le_bytes()); // u32
            b.extend(v.to_le_bytes());
        }
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b).unwrap();
        f
    }

    #[test]
    fn gguf_window_key_caps_the_context() {
        let base = [("embedding_length", 64), ("attention.head_count", 4), ("feed_forward_length", 128), ("block_count", 2), ("vocab_size", 320), ("context_length", 4096)];
        let open = |extra: Option<(&'static str, u32)>| {
            let keys: Vec<(&str, u32)> = base.iter().copied().chain(extra).collect();
            let f = gguf("llama", &keys);
            crate::model::gguf_config::config_from_gguf(&crate::model::gguf::GgufFile::open(f.path()).unwrap()).unwrap()
        };
        assert_eq!(open(None).sliding_window, None);
        let c = open(Some(("attention.sliding_window", 1024)));
        assert_eq!(c.sliding_window, Some(1024));
        assert_eq!(limit(&c, None).unwrap().max_model_len, 1024);
    }

    #[test]
    fn llama_ignores_a_window_key_as_transformers_does() {
        let c = edited("llama3_tied", &[("sliding_window", 16.into())]);
        assert_eq!(c.sliding_window, None);
        assert_eq!(limit(&c, Some(0)), Err(ContextError::Zero));
    }
}
