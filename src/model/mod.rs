//! Model configuration, weight loading (Hugging Face safetensors directories and
//! GGUF files) and the transformer architectures.

pub mod batch;
pub mod bert;
pub mod config;
pub mod context;
pub mod dequant;
pub mod gguf;
pub mod gguf_config;
pub mod gguf_weights;
pub mod llama;
pub mod loader;
pub mod pooling;
pub mod weights;

pub use batch::{BatchInput, SeqInput};
pub use config::{ModelConfig, RopeScaling};

use std::path::PathBuf;

/// Everything that can go wrong loading a model. Messages name the file and,
/// where there is one, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: no such file or directory")]
    NotFound { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{path}: tensor '{tensor}': {msg}")]
    BadTensor { path: PathBuf, tensor: String, msg: String },
    #[error("{path}: unsupported {what}: {name}")]
    Unsupported { path: PathBuf, what: &'static str, name: String },
    #[error("{path}: unknown architecture '{arch}' (supported: llama, mistral, qwen2, qwen3, smollm2)")]
    UnknownArch { path: PathBuf, arch: String },
    #[error("{path}: config does not fit the weights: {msg}")]
    ConfigMismatch { path: PathBuf, msg: String },
    #[error("{path}: missing tensor '{tensor}'")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{0}")]
    Other(String),
}
