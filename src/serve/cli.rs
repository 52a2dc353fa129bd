//! `kiln serve`: engine flags (`launch::EngineArgs`) plus the server's own
//! (`ServerConfig`), from the command line to a drained exit. Several
//! models: `--model` repeated (each optionally NAME=PATH, every one with
//! the command line's engine flags), or `--models-file` (TOML) giving each
//! model its own engine flags:
//!
//! ```toml
//! [[models]]
//! name = "chat"                       # optional: default the file name
//! path = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
//! kv_cache_gib = 1.0                  # any engine flag, snake_case
//! [[models]]
//! path = "models/all-MiniLM-L6-v2"
//! task = "embed"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::server::{init_tracing, serve_loading};
use crate::api::{unix_now, Loaded, ModelBackend, ModelInfo};
use crate::config::ServerConfig;
use crate::embedding::{resolve_task, split_model_spec, start_embedding, Task};
use crate::launch::{resolve_model, start_engine, EngineArgs};

/// One model to serve: its name (None: from the path) and engine flags.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub name: Option<String>,
    pub args: EngineArgs,
}

/// A `[[models]]` entry of `--models-file`: the path, a name and engine
/// flags that override the command line's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModel {
    path: PathBuf,
    name: Option<String>,
    task: Option<Task>,
    max_model_len: Option<usize>,
    max_num_seqs: Option<usize>,
    max_num_batched_tokens: Option<usize>,
    block_size: Option<usize>,
    kv_cache_gib: Option<f64>,
    no_prefix_caching: Option<bool>,
    seed: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelsFile {
    models: Vec<FileModel>,
}

/// The models `kiln serve` serves: from `--models-file`, else one per
/// `--model` (the default model when none is given).
pub fn model_specs(engine: &EngineArgs, models_file: Option<&Path>) -> anyhow::Result<Vec<ModelSpec>> {
    if let Some(file) = models_file {
        if !engine.model.is_empty() {
            bail!("give models either with --model or with --models-file, not both");
        }
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let parsed: ModelsFile = toml::from_str(&text).with_context(|| format!("{}", file.display()))?;
        if parsed.models.is_empty() {
            bail!("{}: no [[models]]", file.display());
        }
        return Ok(parsed.models.into_iter().map(|m| file_spec(engine, m)).collect());
    }
    if engine.model.len() <= 1 {
        let name = engine.model.first().and_then(|m| split_model_spec(m).0);
        return Ok(vec![ModelSpec { name, args: engine.clone() }]);
    }
    Ok(engine
        .model
        .iter()
        .map(|m| {
            let (name, path) = split_model_spec(m);
            ModelSpec { name, args: EngineArgs { model: vec![path.to_string_lossy().into_owned()], ..engine.clone() } }
        })
        .collect())
}

fn file_spec(base: &EngineArgs, m: FileModel) -> ModelSpec {
    let mut a = base.clone();
    a.model = vec![m.path.to_string_lossy().into_owned()];
    a.task = m.task.unwrap_or(a.task);
    a.max_model_len = m.max_model_len.or(a.max_model_len);
    a.max_num_seqs = m.max_num_seqs.unwrap_or(a.max_num_seqs);
    a.max_num_batched_tokens = m.max_num_batched_tokens.unwrap_or(a.max_num_batched_tokens);
    a.block_size = m.block_size.unwrap_or(a.block_size);
    a.kv_cache_gib = m.kv_cache_gib.unwrap_or(a.kv_cache_gib);
    a.no_prefix_caching = m.no_prefix_caching.unwrap_or(a.no_prefix_caching);
    a.seed = m.seed.or(a.seed);
    ModelSpec { name: m.name, args: a }
}

/// Memory the OS says is available, in GiB (None where /proc/meminfo is absent).
fn mem_available_gib() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = text.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// The KV pools of every generation model together must fit the memory
/// available (each pool is sized from its own --kv-cache-gib).
pub fn check_kv_budget(pools: &[(String, f64)], available_gib: Option<f64>) -> anyhow::Result<()> {
    let total: f64 = pools.iter().map(|p| p.1).sum();
    let Some(avail) = available_gib else { return Ok(()) };
    if pools.len() > 1 && total > avail {
        let each: Vec<String> = pools.iter().map(|(n, g)| format!("{n}: {g} GiB")).collect();
        bail!(
            "the KV caches of the {} models need {total:.2} GiB together ({}), but only {avail:.2} GiB of memory is available: lower --kv-cache-gib (per model in --models-file)",
            pools.len(),
            each.join(", ")
        );
    }
    Ok(())
}

/// Loads and starts one model.
fn start_model(spec: &ModelSpec) -> anyhow::Result<Loaded> {
    let path = resolve_model(&spec.args.model_path()?)?;
    let name_or = |n: String| spec.name.clone().unwrap_or(n);
    match resolve_task(spec.args.task, &path) {
        Task::Embed => {
            let e = start_embedding(&spec.args, &path)?;
            let model = ModelInfo { name: name_or(e.model_name), max_model_len: e.max_model_len, created: unix_now() };
            let backend = ModelBackend::Embed { embedder: Arc::new(e.handle), matryoshka: e.matryoshka };
            Ok(Loaded { backend, codec: e.tokenizer, model })
        }
        _ => {
            let started = start_engine(&spec.args)?;
            let model = ModelInfo { name: name_or(started.model_name), max_model_len: started.max_model_len, created: unix_now() };
            Ok(Loaded { backend: ModelBackend::Generate(Arc::new(started.handle)), codec: started.tokenizer, model })
        }
    }
}

/// Loads every model in order (the first is the default of requests that name none).
pub fn start_models(specs: &[ModelSpec]) -> anyhow::Result<Vec<Loaded>> {
    let mut pools = Vec::new();
    for s in specs {
        let path = resolve_model(&s.args.model_path()?)?;
        if resolve_task(s.args.task, &path) != Task::Embed {
            pools.push((s.name.clone().unwrap_or_else(|| path.display().to_string()), s.args.kv_cache_gib));
        }
    }
    check_kv_budget(&pools, mem_available_gib())?;
    specs.iter().map(start_model).collect()
}

/// Runs the server to completion on its own tokio runtime. Installs the
/// tracing subscriber for `--log-format` (call it before any other does).
pub fn run_serve_cli(server: ServerConfig, engine: EngineArgs, models_file: Option<PathBuf>) -> anyhow::Result<()> {
    init_tracing(server.log_format);
    let specs = model_specs(&engine, models_file.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("kiln-http").build()?;
    let result = runtime.block_on(serve_loading(server, move || start_models(&specs)));
    // A load still running after a signal must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    #[test]
    fn specs_from_flags_and_file() {
        let cli = Cli::parse_from(["x", "--model", "chat=/a.gguf", "--model", "/b", "--kv-cache-gib", "3"]);
        let specs = model_specs(&cli.engine, None).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!((specs[0].name.as_deref(), specs[0].args.model_path().unwrap()), (Some("chat"), Some("/a.gguf".into())));
        assert_eq!((specs[1].name.as_deref(), specs[1].args.kv_cache_gib), (None, 3.0));

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.toml");
        std::fs::write(&f, "[[models]]\npath = \"/c\"\nname = \"c\"\nkv_cache_gib = 0.5\n[[models]]\npath = \"/d\"\ntask = \"embed\"\n").unwrap();
        let cli = Cli::parse_from(["x", "--kv-cache-gib", "3"]);
        let specs = model_specs(&cli.engine, Some(&f)).unwrap();
        assert_eq!((specs[0].name.as_deref(), specs[0].args.kv_cache_gib), (Some("c"), 0.5));
        assert_eq!((specs[1].args.task, specs[1].args.kv_cache_gib), (Task::Embed, 3.0));
        std::fs::write(&f, "[[models]]\npath = \"/c\"\nkv_cache_gb = 1\n").unwrap();
        assert!(model_specs(&cli.engine, Some(&f)).is_err(), "a misspelt flag is refused");
    }

    #[test]
    fn kv_budget_is_checked_over_all_models() {
        let pools = vec![("a".to_string(), 2.0), ("b".to_string(), 3.0)];
        let e = check_kv_budget(&pools, Some(4.0)).unwrap_err().to_string();
        assert!(e.contains("5.00 GiB together") && e.contains("a: 2 GiB, b: 3 GiB") && e.contains("4.00 GiB"), "{e}");
        assert!(check_kv_budget(&pools, Some(8.0)).is_ok());
    }
}
