//! Opens a model path — a Hugging Face directory or a GGUF file — into the
//! config, the weights, the tokenizer and the generation defaults.

use super::config::{ids_from_json, ModelConfig};
use super::gguf::GgufFile;
use super::gguf_config::config_from_gguf;
use super::gguf_weights::GgufSource;
use super::llama::LlamaModel;
use super::weights::{SafetensorsSource, WeightSource};
use super::ModelError;
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// Sampling defaults from generation_config.json (None: not set by the model).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub repetition_penalty: Option<f32>,
}

pub struct LoadedModel {
    /// A short name for the API (the directory or file name).
    pub name: String,
    pub path: PathBuf,
    pub model: LlamaModel,
    pub tokenizer: Tokenizer,
    pub generation: GenerationDefaults,
    /// Every id that ends generation: config, generation_config and tokenizer.
    pub eos_token_ids: Vec<u32>,
}

impl LoadedModel {
    pub fn config(&self) -> &ModelConfig {
        &self.model.cfg
    }
}

fn model_name(path: &Path) -> String {
    let stem = if path.is_dir() { path.file_name() } else { path.file_stem() };
    stem.map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Corrupt { path: path.into(), msg: format!("tokenizer: {e}") }
}

/// A model opened but not yet loaded onto a backend: config, weight
/// source, tokenizer and generation defaults.
pub struct OpenedModel {
    pub name: String,
    pub path: PathBuf,
    pub config: ModelConfig,
    pub source: Box<dyn WeightSource>,
    pub tokenizer: Tokenizer,
    pub generation: GenerationDefaults,
    /// Every id that ends generation: config, generation_config and tokenizer.
    pub eos_token_ids: Vec<u32>,
}

/// The config and the weights of a model directory or GGUF file, without
/// its tokenizer (weights stay memory-mapped).
pub fn open_weights(path: &Path) -> Result<(ModelConfig, Box<dyn WeightSource>), ModelError> {
    if !path.exists() {
        return Err(ModelError::NotFound { path: path.into() });
    }
    if path.is_dir() {
        let config = ModelConfig::from_hf_json(&path.join("config.json"))?;
        let source = super::weights::BareModelSource::wrap_if_bare(Box::new(SafetensorsSource::open_dir(path)?));
        Ok((config, source))
    } else {
        let file = GgufFile::open(path)?;
        let config = config_from_gguf(&file)?;
        Ok((config.clone(), Box::new(GgufSource::new(file, config))))
    }
}

/// Opens a model directory or GGUF file: weights, tokenizer, defaults.
pub fn open(path: &Path) -> Result<OpenedModel, ModelError> {
    let (config, source) = open_weights(path)?;
    let (tokenizer, generation, gen_eos) = if path.is_dir() {
        let tokenizer = Tokenizer::from_hf_dir(path).map_err(|e| tok_err(path, e))?;
        let (generation, eos) = read_generation_config(&path.join("generation_config.json"))?;
        (tokenizer, generation, eos)
    } else {
        let tokenizer = Tokenizer::from_gguf(&GgufFile::open(path)?).map_err(|e| tok_err(path, e))?;
        (tokenizer, GenerationDefaults::default(), vec![])
    };
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(ModelError::ConfigMismatch {
            path: path.into(),
            msg: format!("tokenizer has {} tokens, the model only {}", tokenizer.vocab_size(), config.vocab_size),
        });
    }
    let mut eos: Vec<u32> = config.eos_token_ids.clone();
    eos.extend(gen_eos);
    eos.extend(tokenizer.eos_ids());
    eos.sort_unstable();
    eos.dedup();
    Ok(OpenedModel { name: model_name(path), path: path.into(), config, source, tokenizer, generation, eos_token_ids: eos })
}

/// Loads a model directory or GGUF file for the CPU backend. `progress(done,
/// total)` is called as layers load.
pub fn load(path: &Path, mut progress: impl FnMut(usize, usize)) -> Result<LoadedModel, ModelError> {
    let o = open(path)?;
    let total = o.config.num_layers;
    let model = LlamaModel::load(o.config, o.source.as_ref(), |done| progress(done, total))?;
    Ok(LoadedModel { name: o.name, path: o.path, model, tokenizer: o.tokenizer, generation: o.generation, eos_token_ids: o.eos_token_ids })
}

fn read_generation_config(path: &Path) -> Result<(GenerationDefaults, Vec<u32>), ModelError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok((GenerationDefaults::default(), vec![]));
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Corrupt { path: path.into(), msg: e.to_string() })?;
    let f = |k: &str| v.get(k).and_then(|x| x.as_f64()).map(|x| x as f32);
    let defaults = GenerationDefaults {
        temperature: f("temperature"),
        top_p: f("top_p"),
        top_k: v.get("top_k").and_then(|x| x.as_i64()).map(|x| x as i32),
        repetition_penalty: f("repetition_penalty"),
    };
    Ok((defaults, ids_from_json(&v.get("eos_token_id").cloned())))
}
