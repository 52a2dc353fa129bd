//! Embedding models from a path to a running embedding engine: which task
//! a model serves, loading a BERT-family encoder or a Llama-family decoder
//! with its sentence-transformers pooling, and starting `EmbedHandle`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::engine::embed::{EmbedConfig, EmbedHandle};
use crate::launch::EngineArgs;
use crate::model::bert::{is_bert, BertConfig, BertModel};
use crate::model::pooling::Pooling;
use crate::model::weights::SafetensorsSource;
use crate::runner::encoder::{BertRunner, DecoderEmbedRunner, EncoderRunner};
use crate::tokenizer::Tokenizer;

/// What a served model is for (vLLM's `--task`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// embed for BERT-family encoders and sentence-transformers directories, else generate.
    #[default]
    Auto,
    /// Text generation: /v1/chat/completions and /v1/completions.
    Generate,
    /// Embeddings: /v1/embeddings.
    Embed,
}

/// `NAME=PATH` -> (Some(NAME), PATH); a plain path -> (None, PATH). A `=`
/// inside a path that exists as given is not a separator.
pub fn split_model_spec(spec: &str) -> (Option<String>, PathBuf) {
    match spec.split_once('=') {
        Some((name, path)) if !name.is_empty() && !Path::new(spec).exists() => (Some(name.to_string()), PathBuf::from(path)),
        _ => (None, PathBuf::from(spec)),
    }
}

fn read_config_json(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).ok()?).ok()
}

/// The task `task` resolves to for the model at `path`.
pub fn resolve_task(task: Task, path: &Path) -> Task {
    match task {
        Task::Auto if path.is_dir() => {
            let bert = read_config_json(path).is_some_and(|c| is_bert(&c));
            if bert || path.join("modules.json").is_file() {
                Task::Embed
            } else {
                Task::Generate
            }
        }
        Task::Auto => Task::Generate,
        t => t,
    }
}

/// A started embedding engine and what the server needs beside it.
pub struct EmbedEngine {
    pub handle: EmbedHandle,
    pub tokenizer: Arc<Tokenizer>,
    pub model_name: String,
    /// Most tokens in one input.
    pub max_model_len: usize,
    /// Which `dimensions` the model allows (Matryoshka truncation).
    pub matryoshka: crate::model::pooling::Matryoshka,
}

/// The input limit: the smallest of `--max-model-len`, sentence-transformers'
/// `max_seq_length` and the position table; capped to one step's budget
/// unless `--max-model-len` asked for more (then an error).
fn input_limit(args: &EngineArgs, pooling: &Pooling, positions: usize) -> anyhow::Result<usize> {
    let model = pooling.max_seq_length.unwrap_or(positions).min(positions);
    let want = args.max_model_len.unwrap_or(model).min(model);
    if want > args.max_num_batched_tokens {
        if args.max_model_len.is_some() {
            bail!("--max-model-len {want} is larger than --max-num-batched-tokens {}: an embedding input must fit one step", args.max_num_batched_tokens);
        }
        tracing::warn!(max_model_len = args.max_num_batched_tokens, "embedding inputs limited to --max-num-batched-tokens");
        return Ok(args.max_num_batched_tokens);
    }
    Ok(want)
}

/// Loads the embedding model at `path` on the CPU and starts its engine.
/// Encoders have no CUDA path yet: `--device cuda` is refused for them and
/// `auto` means the CPU.
pub fn start_embedding(args: &EngineArgs, path: &Path) -> anyhow::Result<EmbedEngine> {
    if let crate::backend::cuda::select::DeviceChoice::Cuda(_) = args.device {
        bail!("{}: embedding models run on the CPU backend only for now: pass --device cpu (or auto)", path.display());
    }
    crate::launch::init_threads(args);
    let name = path.file_name().or(path.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let (runner, tokenizer, limit, matryoshka, vocab): (Box<dyn EncoderRunner>, Tokenizer, usize, crate::model::pooling::Matryoshka, usize) =
        if path.is_dir() && read_config_json(path).is_some_and(|c| is_bert(&c)) {
            let cfg = BertConfig::from_file(&path.join("config.json"))?;
            let pooling = Pooling::from_dir(path)?.with_context(|| format!("{}: a BERT model needs sentence-transformers' modules.json and 1_Pooling/", path.display()))?;
            let src = SafetensorsSource::open_dir(path)?;
            let limit = input_limit(args, &pooling, cfg.max_position_embeddings)?;
            let tokenizer = Tokenizer::from_hf_dir(path).map_err(|e| anyhow::anyhow!("{}: tokenizer: {e}", path.display()))?;
            let (matryoshka, vocab) = (pooling.matryoshka.clone(), cfg.vocab_size);
            let model = BertModel::load(cfg, &src, |_| {})?;
            (Box::new(BertRunner { model, pooling }), tokenizer, limit, matryoshka, vocab)
        } else {
            let pooling = if path.is_dir() { Pooling::from_dir(path)? } else { None }.unwrap_or_else(Pooling::decoder_default);
            let loaded = crate::model::loader::load(path, |_, _| {})?;
            let limit = input_limit(args, &pooling, loaded.model.cfg.max_position_embeddings)?;
            let (matryoshka, vocab) = (pooling.matryoshka.clone(), loaded.model.cfg.vocab_size);
            let runner = DecoderEmbedRunner::new(loaded.model, pooling, args.max_num_batched_tokens, args.max_num_seqs);
            (Box::new(runner), loaded.tokenizer, limit, matryoshka, vocab)
        };
    let config = EmbedConfig {
        max_num_batched_tokens: args.max_num_batched_tokens,
        max_num_seqs: args.max_num_seqs,
        max_model_len: limit,
        vocab_size: vocab,
    };
    tracing::info!(model = %path.display(), dimensions = runner.dimensions(), max_model_len = limit, "embedding model loaded");
    let handle = EmbedHandle::start(config, runner)?;
    Ok(EmbedEngine { handle, tokenizer: Arc::new(tokenizer), model_name: name, max_model_len: limit, matryoshka })
}
