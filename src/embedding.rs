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

/// The runner of a loaded BERT encoder on the device `--device` names (see
/// `start_embedding`).
fn bert_runner(args: &EngineArgs, model: BertModel, pooling: Pooling) -> anyhow::Result<Box<dyn EncoderRunner>> {
    let cell = std::cell::RefCell::new(Some(model));
    let cpu = || -> anyhow::Result<Box<dyn EncoderRunner>> {
        let model = cell.borrow_mut().take().expect("the model is taken once");
        tracing::info!(device = "cpu", threads = crate::backend::cpu::pool::threads(), "starting the embedding engine");
        Ok(Box::new(BertRunner { model, pooling: pooling.clone() }))
    };
    let gpu = |choice| -> anyhow::Result<Box<dyn EncoderRunner>> {
        let guard = cell.borrow();
        let model = guard.as_ref().expect("the model is still here");
        cuda_bert_runner(args, choice, model, pooling.clone())
    };
    let (runner, why_cpu) = crate::launch::start_on(args.device, crate::backend::cuda::select::resolve, gpu, cpu)?;
    if let Some(why) = why_cpu {
        tracing::warn!("device auto: using the CPU ({why})");
    }
    Ok(runner)
}

/// The CUDA encoder on GPU n or on the emulated device.
#[cfg(any(feature = "cuda", feature = "emu"))]
fn cuda_bert_runner(
    args: &EngineArgs,
    choice: crate::backend::cuda::select::DeviceChoice,
    model: &BertModel,
    pooling: Pooling,
) -> anyhow::Result<Box<dyn EncoderRunner>> {
    let dev = crate::backend::cuda::select::open(choice)?;
    let name = dev.name.clone();
    let runner = crate::backend::cuda::encoder::CudaBertRunner::new(dev, model, pooling, args.max_num_batched_tokens, args.max_num_seqs)?;
    tracing::info!(device = %name, "starting the embedding engine");
    Ok(Box::new(runner))
}

#[cfg(not(any(feature = "cuda", feature = "emu")))]
fn cuda_bert_runner(
    _: &EngineArgs,
    _: crate::backend::cuda::select::DeviceChoice,
    _: &BertModel,
    _: Pooling,
) -> anyhow::Result<Box<dyn EncoderRunner>> {
    bail!("this kiln was built without CUDA support: rebuild with `cargo build --release --features cuda`, or pass --device cpu")
}

/// A decoder embedding runner with its tokenizer, input limit and vocabulary size.
type Decoder = (Box<dyn EncoderRunner>, Tokenizer, usize, usize);

/// A decoder used for embeddings on GPU n or the emulated device (the CUDA
/// generation runner under `CudaDecoderEmbedRunner`).
#[cfg(any(feature = "cuda", feature = "emu"))]
fn cuda_decoder_runner(args: &EngineArgs, choice: crate::backend::cuda::select::DeviceChoice, path: &Path, pooling: &Pooling) -> anyhow::Result<Decoder> {
    let o = crate::model::loader::open(path)?;
    let limit = input_limit(args, pooling, o.config.max_position_embeddings)?;
    crate::backend::cuda::runner::check_model(&o.config)?;
    let dev = crate::backend::cuda::select::open(choice)?;
    let name = dev.name.clone();
    let runner = crate::backend::cuda::encoder::CudaDecoderEmbedRunner::load_on(
        dev,
        &o.config,
        o.source.as_ref(),
        pooling.clone(),
        args.max_num_batched_tokens,
        args.max_num_seqs,
        limit,
    )?;
    tracing::info!(device = %name, "starting the embedding engine");
    Ok((Box::new(runner), o.tokenizer, limit, o.config.vocab_size))
}

#[cfg(not(any(feature = "cuda", feature = "emu")))]
fn cuda_decoder_runner(_: &EngineArgs, _: crate::backend::cuda::select::DeviceChoice, _: &Path, _: &Pooling) -> anyhow::Result<Decoder> {
    bail!("this kiln was built without CUDA support: rebuild with `cargo build --release --features cuda`, or pass --device cpu")
}

/// Loads the embedding model at `path` and starts its engine. BERT-family
/// encoders run where `--device` says: the CPU, a GPU or the emulated
/// device (the CUDA encoder, src/backend/cuda/encoder.rs); `auto` takes the
/// first GPU when one is usable and falls back to the CPU when starting on
/// it fails, as generation models do. Decoders used for embeddings
/// likewise (the CUDA generation runner, `CudaDecoderEmbedRunner`).
pub fn start_embedding(args: &EngineArgs, path: &Path) -> anyhow::Result<EmbedEngine> {
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
            (bert_runner(args, model, pooling)?, tokenizer, limit, matryoshka, vocab)
        } else {
            let pooling = if path.is_dir() { Pooling::from_dir(path)? } else { None }.unwrap_or_else(Pooling::decoder_default);
            let matryoshka = pooling.matryoshka.clone();
            let cpu = || -> anyhow::Result<Decoder> {
                let loaded = crate::model::loader::load(path, |_, _| {})?;
                let limit = input_limit(args, &pooling, loaded.model.cfg.max_position_embeddings)?;
                let vocab = loaded.model.cfg.vocab_size;
                tracing::info!(device = "cpu", threads = crate::backend::cpu::pool::threads(), "starting the embedding engine");
                let runner = DecoderEmbedRunner::new(loaded.model, pooling.clone(), args.max_num_batched_tokens, args.max_num_seqs);
                Ok((Box::new(runner), loaded.tokenizer, limit, vocab))
            };
            let gpu = |choice| cuda_decoder_runner(args, choice, path, &pooling);
            let ((runner, tokenizer, limit, vocab), why_cpu) = crate::launch::start_on(args.device, crate::backend::cuda::select::resolve, gpu, cpu)?;
            if let Some(why) = why_cpu {
                tracing::warn!("device auto: using the CPU ({why})");
            }
            (runner, tokenizer, limit, matryoshka, vocab)
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
