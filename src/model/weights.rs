//! Weight sources: where the tensors of a model come from. Every source
//! answers by Hugging Face tensor name, so the architectures never see
//! file formats.

use super::ModelError;
use crate::backend::cpu::{Weight, WeightData};
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A tensor in host memory, row-major, shape in PyTorch order.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: WeightData,
}

impl HostTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (a copy, dequantized for block formats).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            WeightData::F32(v) => v.clone(),
            data => {
                let cols = self.shape.last().copied().unwrap_or(1).max(1);
                Weight { rows: self.numel() / cols, cols, data: data.clone() }.to_f32()
            }
        }
    }
}

/// Tensors by Hugging Face name.
pub trait WeightSource: Send + Sync {
    /// The file or directory, for error messages.
    fn path(&self) -> &Path;
    fn contains(&self, name: &str) -> bool;
    /// Loads (and dequantizes, converts) one tensor.
    fn load(&self, name: &str) -> Result<HostTensor, ModelError>;
    /// All tensor names (for diagnostics).
    fn names(&self) -> Vec<String>;
}

pub(crate) fn open_mmap(path: &Path) -> Result<Mmap, ModelError> {
    let f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ModelError::NotFound { path: path.into() },
        _ => ModelError::Io { path: path.into(), source: e },
    })?;
    // SAFETY: the file is opened read-only; kiln never writes model files and
    // treats concurrent modification by others as unsupported.
    unsafe { Mmap::map(&f) }.map_err(|e| ModelError::Io { path: path.into(), source: e })
}

/// One or more memory-mapped .safetensors files (sharded models list theirs
/// in model.safetensors.index.json).
pub struct SafetensorsSource {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name -> index into `files`
    index: HashMap<String, usize>,
}

impl SafetensorsSource {
    pub fn open_dir(dir: &Path) -> Result<SafetensorsSource, ModelError> {
        let index_path = dir.join("model.safetensors.index.json");
        let file_names: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| ModelError::Io { path: index_path.clone(), source: e })?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::Corrupt { path: index_path.clone(), msg: e.to_string() })?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Corrupt {
                path: index_path.clone(),
                msg: "no weight_map object".into(),
            })?;
            let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            names.sort();
            names.dedup();
            names
        } else if dir.join("model.safetensors").exists() {
            vec!["model.safetensors".into()]
        } else {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .map_err(|e| ModelError::Io { path: dir.into(), source: e })?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect();
            names.sort();
            if names.is_empty() {
                return Err(ModelError::NotFound { path: dir.join("model.safetensors") });
            }
            names
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for name in file_names {
            let path = dir.join(&name);
            let mmap = open_mmap(&path)?;
            let st = SafeTensors::deserialize(&mmap)
                .map_err(|e| ModelError::Corrupt { path: path.clone(), msg: format!("invalid safetensors: {e}") })?;
            for t in st.names() {
                index.insert(t.to_string(), files.len());
            }
            files.push((path, mmap));
        }
        Ok(SafetensorsSource { dir: dir.into(), files, index })
    }
}

fn le_chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    b.chunks_exact(N).map(|c| c.try_into().unwrap())
}

impl WeightSource for SafetensorsSource {
    fn path(&self) -> &Path {
        &self.dir
    }
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn load(&self, name: &str) -> Result<HostTensor, ModelError> {
        let &fi = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.dir.clone(), tensor: name.into() })?;
        let (path, mmap) = &self.files[fi];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| ModelError::Corrupt { path: path.clone(), msg: format!("invalid safetensors: {e}") })?;
        let view = st.tensor(name).map_err(|e| ModelError::BadTensor {
            path: path.clone(),
            tensor: name.into(),
            msg: e.to_string(),
        })?;
        let shape = view.shape().to_vec();
        let bytes = view.data();
        let data = match view.dtype() {
            Dtype::F32 => WeightData::F32(le_chunks::<4>(bytes).map(f32::from_le_bytes).collect()),
            Dtype::BF16 => WeightData::Bf16(le_chunks::<2>(bytes).map(|b| bf16::from_bits(u16::from_le_bytes(b))).collect()),
            Dtype::F16 => WeightData::F32(le_chunks::<2>(bytes).map(|b| f16::from_bits(u16::from_le_bytes(b)).to_f32()).collect()),
            other => {
                return Err(ModelError::Unsupported { path: path.clone(), what: "safetensors dtype", name: format!("{other:?} (tensor '{name}')") })
            }
        };
        Ok(HostTensor { shape, data })
    }
}

/// Weights saved from a bare decoder (`Qwen3Model` rather than
/// `Qwen3ForCausalLM`: no `model.` prefix, as Qwen3-Embedding ships them)
/// answered under the prefixed names the architectures ask for.
pub struct BareModelSource(pub Box<dyn WeightSource>);

impl BareModelSource {
    /// Wraps `src` when it holds bare names (`embed_tokens.weight` without
    /// `model.embed_tokens.weight`); else returns it as it is.
    pub fn wrap_if_bare(src: Box<dyn WeightSource>) -> Box<dyn WeightSource> {
        if !src.contains("model.embed_tokens.weight") && src.contains("embed_tokens.weight") {
            Box::new(BareModelSource(src))
        } else {
            src
        }
    }

    fn bare(name: &str) -> &str {
        name.strip_prefix("model.").unwrap_or(name)
    }
}

impl WeightSource for BareModelSource {
    fn path(&self) -> &Path {
        self.0.path()
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains(Self::bare(name))
    }
    fn load(&self, name: &str) -> Result<HostTensor, ModelError> {
        self.0.load(Self::bare(name))
    }
    fn names(&self) -> Vec<String> {
        self.0.names()
    }
}
