//! Starting the models one process serves (`kiln serve`, `kiln batch`):
//! each model's engine flags to a loaded generation or embedding engine,
//! after checking that their KV pools fit the memory available together.

use std::sync::Arc;

use anyhow::bail;

use super::{unix_now, Loaded, ModelBackend, ModelInfo};
use crate::embedding::{resolve_task, start_embedding, Task};
use crate::launch::{resolve_model, start_engine, EngineArgs};

/// One model to serve: its name (None: from the path) and engine flags.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub name: Option<String>,
    pub args: EngineArgs,
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

