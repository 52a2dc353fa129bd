//! `kiln bench` flags. Names follow `vllm bench serve` where a user would
//! look for them, so the same command lines carry over.

use std::path::PathBuf;
use std::str::FromStr;

use serde::Serialize;

use super::BenchError;

/// Which OpenAI route is driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// POST /v1/completions (prompts as token ids or text).
    Completions,
    /// POST /v1/chat/completions (prompts as one user message of text).
    Chat,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// `--dataset`: random | sharegpt:PATH | prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DatasetSpec {
    Random,
    Sharegpt { path: PathBuf },
    Prefix,
}

impl FromStr for DatasetSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(DatasetSpec::Random),
            "prefix" => Ok(DatasetSpec::Prefix),
            _ => match s.strip_prefix("sharegpt:") {
                Some(p) if !p.is_empty() => Ok(DatasetSpec::Sharegpt { path: PathBuf::from(p) }),
                _ => Err(format!("unknown dataset {s:?}: expected random, prefix or sharegpt:PATH")),
            },
        }
    }
}

/// Service-level objectives of `--goodput`, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

impl Slo {
    /// Parses `ttft:MS tpot:MS e2el:MS` (any subset, any order; one
    /// argument per pair or all pairs in one space-separated argument).
    pub fn parse(items: &[String]) -> Result<Option<Slo>, BenchError> {
        let mut slo = Slo::default();
        let mut any = false;
        for item in items.iter().flat_map(|s| s.split_whitespace()) {
            let bad = || BenchError::Usage(format!("--goodput {item:?}: expected KEY:MS with KEY ttft, tpot or e2el"));
            let (key, value) = item.split_once(':').ok_or_else(bad)?;
            let ms: f64 = value.parse().map_err(|_| bad())?;
            if !(ms.is_finite() && ms > 0.0) {
                return Err(BenchError::Usage(format!("--goodput {item:?}: the limit must be a positive number of ms")));
            }
            match key {
                "ttft" => slo.ttft_ms = Some(ms),
                "tpot" => slo.tpot_ms = Some(ms),
                "e2el" => slo.e2el_ms = Some(ms),
                _ => return Err(bad()),
            }
            any = true;
        }
        Ok(any.then_some(slo))
    }
}

/// What is sent and to whom: shared by `serve` and `sweep`.
#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct WorkloadArgs {
    /// Server root, e.g. http://127.0.0.1:8000.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    /// Bearer token sent as Authorization.
    #[arg(long, env = "KILN_BENCH_API_KEY")]
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Model name to request (default: the first one /v1/models lists).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value_t = Endpoint::Completions)]
    pub endpoint: Endpoint,
    /// random (token ids), sharegpt:PATH (ShareGPT JSON) or prefix
    /// (prompts sharing a --prefix-len token prefix).
    #[arg(long, default_value = "random")]
    pub dataset: DatasetSpec,
    /// Requests to send in all.
    #[arg(long, default_value_t = 100)]
    pub num_prompts: usize,
    /// Prompt tokens (random, and the unique part of prefix prompts).
    #[arg(long, default_value_t = 1024)]
    pub input_len: usize,
    /// Tokens to generate (max_tokens). For sharegpt: default is the
    /// length of the recorded answer (needs --tokenizer).
    #[arg(long)]
    pub output_len: Option<usize>,
    /// Lengths are drawn uniformly from [L*(1-R), L*(1+R)].
    #[arg(long, default_value_t = 0.0)]
    pub range_ratio: f64,
    /// Shared prefix tokens of the prefix dataset.
    #[arg(long, default_value_t = 512)]
    pub prefix_len: usize,
    /// A GGUF file or Hugging Face directory whose tokenizer turns random
    /// prompts into text (needed for the chat endpoint and for servers
    /// that take no token ids) and measures sharegpt prompts.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Token ids of random prompts are drawn from [0, vocab-size) when no
    /// --tokenizer is given.
    #[arg(long, default_value_t = 32000)]
    pub vocab_size: u32,
    /// Send "ignore_eos": true so every request generates output-len tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Sampling temperature of every request (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// A JSON object merged into every request body (e.g. '{"min_tokens": 128}').
    #[arg(long)]
    pub extra_body: Option<String>,
    /// A JSON schema file: every request asks for `response_format`
    /// json_schema with it (constrained decoding). A file holding a whole
    /// response_format object (`{"type": ...}`) is sent as it is.
    #[arg(long)]
    pub response_format: Option<PathBuf>,
    /// Seeds prompts and arrival times: the same seed gives the same workload.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// SLOs for goodput: ttft:MS tpot:MS e2el:MS (any subset).
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 3600.0)]
    pub request_timeout: f64,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `kiln bench serve`.
#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub workload: WorkloadArgs,
    /// Requests per second, with Poisson arrivals; inf sends all at once.
    #[arg(long, default_value_t = f64::INFINITY)]
    #[serde(serialize_with = "super::report::ser_rate")]
    pub request_rate: f64,
    /// Most requests in flight at once.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Write every figure, the configuration and per-request data as JSON.
    #[arg(long)]
    pub result_json: Option<PathBuf>,
    /// Draw latency CDFs and throughput over time (SVG and PNG) into DIR.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// `kiln bench sweep`: one serve benchmark per concurrency (or rate).
#[derive(clap::Args, Clone, Debug, Serialize)]
pub struct SweepArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub workload: WorkloadArgs,
    /// Comma-separated max concurrencies, e.g. 1,4,16,64.
    #[arg(long, value_delimiter = ',', required_unless_present = "rates", conflicts_with = "rates")]
    pub concurrencies: Vec<usize>,
    /// Comma-separated request rates (Poisson), e.g. 1,2,4,8.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// All points' reports in one JSON file.
    #[arg(long)]
    pub result_json: Option<PathBuf>,
    /// Draw throughput against latency (SVG and PNG) into DIR.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// `kiln bench throughput`: offline engine throughput, no HTTP.
#[derive(clap::Args, Clone, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub engine: crate::launch::EngineArgs,
    /// Prompt tokens of each request (random token ids).
    #[arg(long, default_value_t = 1024)]
    pub input_len: usize,
    /// Tokens generated by each request (end-of-sequence ignored).
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// Requests, all submitted at once.
    #[arg(long, default_value_t = 100)]
    pub num_prompts: usize,
    /// Lengths are drawn uniformly from [L*(1-R), L*(1+R)].
    #[arg(long, default_value_t = 0.0)]
    pub range_ratio: f64,
    /// Seeds the random prompts (the engine's --seed seeds sampling).
    #[arg(long, default_value_t = 0)]
    pub dataset_seed: u64,
    #[arg(long)]
    pub result_json: Option<PathBuf>,
}
