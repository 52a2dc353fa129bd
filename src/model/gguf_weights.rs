//! GGUF as a `WeightSource`: tensors answered by Hugging Face name, with
//! llama.cpp's rotary permutation of the Q and K projections undone (see
//! `gguf_config::hf_tensor_f32`). Matrices in block formats (Q4_0 … Q8_0,
//! Q2_K … Q6_K) keep their blocks (the CPU backend multiplies them directly,
//! rows permuted as raw bytes); F32/F16/BF16 tensors and vectors become f32.

use super::config::ModelConfig;
use super::dequant::unpermute_qk_rows;
use super::gguf::GgufFile;
use crate::backend::cpu::quant::is_block_type;
use super::gguf_config::{hf_name, hf_tensor_f32, qk_permuted};
use super::weights::{HostTensor, WeightSource};
use super::ModelError;
use crate::backend::cpu::WeightData;
use std::collections::HashMap;
use std::path::Path;

pub struct GgufSource {
    file: GgufFile,
    cfg: ModelConfig,
    /// Hugging Face name -> GGUF name
    names: HashMap<String, String>,
}

impl GgufSource {
    pub fn new(file: GgufFile, cfg: ModelConfig) -> GgufSource {
        let names = file.tensors.iter().filter_map(|t| hf_name(&t.name).map(|h| (h, t.name.clone()))).collect();
        GgufSource { file, cfg, names }
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
        let info = self.file.tensor(gname).expect("names come from the file's tensors");
        if let (true, [cols, rows]) = (is_block_type(info.ggml_type), info.dims.as_slice()) {
            let (rows, cols, ty) = (*rows, *cols, info.ggml_type);
            let mut raw = self.file.raw_bytes(info)?.to_vec();
            let heads = match name {
                n if n.ends_with("self_attn.q_proj.weight") => Some(self.cfg.num_heads),
                n if n.ends_with("self_attn.k_proj.weight") => Some(self.cfg.num_kv_heads),
                _ => None,
            };
            if let (Some(h), true) = (heads, qk_permuted(&self.file)) {
                if rows % (2 * h) != 0 {
                    let msg = format!("{gname} has {rows} rows, not a multiple of 2 x {h} heads");
                    return Err(ModelError::ConfigMismatch { path: self.file.path.clone(), msg });
                }
                raw = unpermute_qk_rows(&raw, h, rows, raw.len() / rows);
            }
            return Ok(HostTensor { shape: vec![rows, cols], data: WeightData::Blocks(ty, raw) });
        }
        let (_, shape, data) = hf_tensor_f32(&self.file, &self.cfg, gname)?;
        Ok(HostTensor { shape, data: WeightData::F32(data) })
    }
}
