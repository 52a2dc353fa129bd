//! `kiln bench serve`: check the server, build the workload, send it,
//! then print the table, write the JSON and draw the charts.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use super::args::{ServeArgs, Slo, WorkloadArgs};
use super::client::{error_chain, http_client, shorten, Target};
use super::dataset::{build, Dataset, DatasetOptions, Prompt};
use super::driver::{run, RunConfig, RunResult};
use super::report::{serve_json, table, RunInfo};
use super::stats::{summarize, Summary};
use super::BenchError;
use crate::model::gguf::GgufFile;
use crate::tokenizer::Tokenizer;

/// A checked server and the workload to send it.
pub struct Prepared {
    pub target: Target,
    pub dataset: Dataset,
    pub slo: Option<Slo>,
}

/// One finished serving run.
pub struct ServeOutcome {
    pub summary: Summary,
    pub run: RunResult,
    pub json: Value,
    pub table: String,
}

/// A GGUF file's tokenizer, or a Hugging Face directory's.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer, BenchError> {
    let fail = |e: String| BenchError::Usage(format!("--tokenizer {}: {e}", path.display()));
    if path.is_dir() {
        Tokenizer::from_hf_dir(path).map_err(|e| fail(e.to_string()))
    } else {
        let g = GgufFile::open(path).map_err(|e| fail(e.to_string()))?;
        Tokenizer::from_gguf(&g).map_err(|e| fail(e.to_string()))
    }
}

fn unreachable(url: &str, e: &reqwest::Error) -> BenchError {
    BenchError::Unreachable { url: url.to_string(), detail: error_chain(e) }
}

/// GET /v1/models: proves the server answers, and names its first model.
/// With `model` given only an unreachable server is an error (some
/// servers list no models).
async fn check_server(w: &WorkloadArgs, client: &reqwest::Client, base: &str) -> Result<String, BenchError> {
    let url = format!("{base}/v1/models");
    let mut req = client.get(&url).timeout(Duration::from_secs(30));
    if let Some(k) = &w.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| unreachable(&url, &e))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| unreachable(&url, &e))?;
    if let Some(m) = &w.model {
        return Ok(m.clone());
    }
    if !status.is_success() {
        return Err(BenchError::Server(format!("GET {url} answered HTTP {status}: {}", shorten(&body, 300))));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| BenchError::Server(format!("GET {url}: not JSON ({e})")))?;
    v.pointer("/data/0/id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| BenchError::Server(format!("GET {url} lists no model; pass --model")))
}

/// max_tokens of the probe: small, and unlike a workload's (so mock servers
/// in tests can tell it apart).
pub const PROBE_MAX_TOKENS: usize = 2;

/// One tiny request, so a wrong flag fails before the run rather than N times.
async fn probe(target: &Target, prompt: &Prompt) -> Result<(), BenchError> {
    let req = super::dataset::BenchRequest { prompt: prompt.clone(), prompt_len: 0, output_len: PROBE_MAX_TOKENS };
    let rec = target.send(&req, std::time::Instant::now()).await;
    match rec.error {
        Some(e) if e != super::client::NO_TEXT => Err(BenchError::Server(format!(
            "the first test request to {}{} failed: {e}",
            target.base_url,
            target.endpoint.path()
        ))),
        _ => Ok(()),
    }
}

/// `--response-format FILE`: a schema becomes a strict json_schema format.
fn response_format(path: &std::path::Path) -> Result<Value, BenchError> {
    let bad = |m: String| BenchError::Usage(format!("--response-format {}: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if !v.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    if v.get("type").and_then(Value::as_str).is_some_and(|t| ["text", "json_object", "json_schema"].contains(&t)) {
        return Ok(v);
    }
    Ok(serde_json::json!({"type": "json_schema", "json_schema": {"name": "bench", "schema": v, "strict": true}}))
}

pub async fn prepare(w: &WorkloadArgs) -> Result<Prepared, BenchError> {
    let slo = Slo::parse(&w.goodput)?;
    let mut extra_body: Map<String, Value> = match &w.extra_body {
        None => Map::new(),
        Some(s) => match serde_json::from_str(s) {
            Ok(Value::Object(m)) => m,
            _ => return Err(BenchError::Usage(format!("--extra-body must be a JSON object, got {s:?}"))),
        },
    };
    if let Some(path) = &w.response_format {
        extra_body.insert("response_format".into(), response_format(path)?);
    }
    if w.request_timeout.is_nan() || w.request_timeout <= 0.0 {
        return Err(BenchError::Usage("--request-timeout must be positive".into()));
    }
    let tokenizer = w.tokenizer.as_deref().map(load_tokenizer).transpose()?;
    let dataset = build(&DatasetOptions {
        spec: &w.dataset,
        num_prompts: w.num_prompts,
        input_len: w.input_len,
        output_len: w.output_len,
        range_ratio: w.range_ratio,
        prefix_len: w.prefix_len,
        vocab_size: w.vocab_size,
        seed: w.seed,
        tokenizer: tokenizer.as_ref(),
        text: tokenizer.is_some(),
    })?;
    let client = http_client(Duration::from_secs_f64(w.request_timeout.min(1e9)))?;
    let base = w.base_url.trim_end_matches('/').to_string();
    let model = check_server(w, &client, &base).await?;
    let target = Target {
        client,
        base_url: base,
        api_key: w.api_key.clone(),
        model,
        endpoint: w.endpoint,
        ignore_eos: w.ignore_eos,
        temperature: w.temperature,
        extra_body,
    };
    // Both fail the same way for every request: say so once, up front.
    target.body(&dataset.probe, 1)?;
    probe(&target, &dataset.probe).await?;
    Ok(Prepared { target, dataset, slo })
}

/// Runs one load point over a prepared workload.
pub async fn run_point(p: &Prepared, args: &ServeArgs) -> ServeOutcome {
    let cfg = RunConfig {
        request_rate: args.request_rate,
        max_concurrency: args.max_concurrency,
        seed: args.workload.seed,
        progress: !args.workload.no_progress,
    };
    let run = run(&p.target, &p.dataset.requests, &cfg).await;
    let summary = summarize(&run.records, run.duration, p.slo.as_ref());
    let info = RunInfo { args, model: &p.target.model, slo: p.slo.as_ref() };
    let json = serve_json(&info, &summary, &run.records);
    let table = table(&info, &summary, &run.records);
    ServeOutcome { summary, run, json, table }
}

pub fn write_json(path: &Path, v: &Value) -> Result<(), BenchError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| BenchError::Io { path: dir.into(), source })?;
    }
    let text = serde_json::to_string_pretty(v).expect("a JSON value always serializes");
    std::fs::write(path, text).map_err(|source| BenchError::Io { path: path.into(), source })
}

/// The whole `kiln bench serve` command.
pub async fn serve(args: &ServeArgs) -> Result<ServeOutcome, BenchError> {
    if args.request_rate.is_nan() || args.request_rate <= 0.0 {
        return Err(BenchError::Usage("--request-rate must be positive (inf sends all at once)".into()));
    }
    if args.max_concurrency == Some(0) {
        return Err(BenchError::Usage("--max-concurrency must be at least 1".into()));
    }
    let prepared = prepare(&args.workload).await?;
    let out = run_point(&prepared, args).await;
    print!("{}", out.table);
    if let Some(path) = &args.result_json {
        write_json(path, &out.json)?;
        eprintln!("kiln bench: results written to {}", path.display());
    }
    if let Some(dir) = &args.plot {
        let files = super::plot::serve_charts(dir, &out.run.records, out.run.duration)?;
        eprintln!("kiln bench: charts written: {}", files.join(", "));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::response_format;

    #[test]
    fn a_schema_file_becomes_a_strict_json_schema_format() {
        let dir = tempfile::tempdir().unwrap();
        let schema = dir.path().join("s.json");
        std::fs::write(&schema, r#"{"type": "object", "properties": {"a": {"type": "integer"}}}"#).unwrap();
        let f = response_format(&schema).unwrap();
        assert_eq!(f["type"], "json_schema");
        assert_eq!(f["json_schema"]["strict"], true);
        assert_eq!(f["json_schema"]["schema"]["properties"]["a"]["type"], "integer");
        let whole = dir.path().join("f.json");
        std::fs::write(&whole, r#"{"type": "json_object"}"#).unwrap();
        assert_eq!(response_format(&whole).unwrap(), serde_json::json!({"type": "json_object"}));
        std::fs::write(&whole, "[1]").unwrap();
        assert!(response_format(&whole).is_err());
    }
}
