//! GGUF as a `WeightSource`: tensors answered by Hugging Face name,
//! dequantized to f32, with llama.cpp's rotary permutation of the Q and K
//! projections undone so they match the Hugging Face layout.

use super::gguf::GgufFile;
use super::gguf_config::hf_name;
use super::weights::{HostTensor, WeightSource};
use super::ModelError;
use crate::backend::cpu::WeightData;
use std::collections::HashMap;
use std::path::Path;

pub struct GgufSource {
    file: GgufFile,
    /// Hugging Face name -> GGUF name
    names: HashMap<String, String>,
    /// (heads of q, heads of k) when the file's Q/K rows are permuted.
    permuted: Option<(usize, usize)>,
}

impl GgufSource {
    pub fn new(file: GgufFile, num_heads: usize, num_kv_heads: usize) -> GgufSource {
        let names = file.tensors.iter().filter_map(|t| hf_name(&t.name).map(|h| (h, t.name.clone()))).collect();
        // llama.cpp's converter permutes Q/K only for the llama architecture
        // (which covers Mistral and SmolLM); Qwen GGUFs keep the HF order.
        let permuted = (file.get_str("general.architecture") == Some("llama")).then_some((num_heads, num_kv_heads));
        GgufSource { file, names, permuted }
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

impl WeightSource for GgufSource {
    fn path(&self) -> &Path {
        &self.file.path
    }
    fn contains(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }
    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }
    fn load(&self, name: &str) -> Result<HostTensor, ModelError> {
        let gname = self
            .names
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.file.path.clone(), tensor: name.into() })?;
        let (shape, mut data) = self.file.tensor_f32(gname)?;
        if let Some((nh, nkv)) = self.permuted {
            let heads = if name.ends_with("self_attn.q_proj.weight") {
                Some(nh)
            } else if name.ends_with("self_attn.k_proj.weight") {
                Some(nkv)
            } else {
                None
            };
            if let (Some(heads), [rows, cols]) = (heads, shape.as_slice()) {
                if rows % (2 * heads) != 0 {
                    return Err(ModelError::ConfigMismatch {
                        path: self.file.path.clone(),
                        msg: format!("tensor '{gname}' has {rows} rows, not a multiple of 2 x {heads} heads"),
                    });
                }
                data = super::dequant::unpermute_qk_rows(&data, heads, *rows, *cols);
            }
        }
        Ok(HostTensor { shape, data: WeightData::F32(data) })
    }
}
