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

use anyhow::{bail, Context};
use serde::Deserialize;

use super::server::{init_tracing, serve_loading};
pub use crate::api::startup::{check_kv_budget, start_models, ModelSpec};
use crate::config::ServerConfig;
use crate::embedding::{split_model_spec, Task};
use crate::launch::EngineArgs;

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
