//! The HTTP layer's shared pieces (auth, per-key rate limits, admission,
//! request log, SSE, metrics, the one error-to-status mapping in
//! `error::ApiError::status_type_code`) and the wire protocols built on
//! them: OpenAI chat/completions/embeddings here, `responses/` (OpenAI's
//! Responses API) and `anthropic/` (Anthropic's Messages API). Each
//! protocol offers its route group; `crate::serve::router` assembles them
//! with the Batch API's and puts the layers around them (see there).
//!
//! Inside a generation handler: parse -> model -> validate -> admission
//! (drain, queue cap, request limits) -> template + tokenize -> context
//! window -> token limit -> submit -> respond. Chat, Responses and Messages
//! share those steps in `generate::start_chat`; legacy completions has its own.

pub mod adapters;
pub mod anthropic;
pub mod admit;
pub mod auth;
pub mod blocks;
pub mod chat;
pub mod chat_out;
pub mod completions;
pub mod embeddings;
pub mod error;
pub mod events;
pub mod generate;
pub mod json;
pub mod layers;
pub mod logprobs;
pub mod messages;
pub mod metrics;
pub mod misc;
pub mod models;
pub mod openapi;
pub mod port;
pub mod ratelimit;
pub mod reqlog;
pub mod responses;
pub mod sse;
pub mod startup;
pub mod sse_named;
pub mod structured;
pub mod tools;
pub mod validate;
pub mod vllm_metrics;
pub mod wire_in;
pub mod wire_out;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::{get, post};
use axum::Router;
use rand::distributions::{Alphanumeric, DistString};

pub use error::ApiError;
pub use port::{ChatTurn, CodecError, Engine, EngineGauges, SubmitError, TextCodec};
pub use embeddings::Embedder;
pub use models::{Loaded, ModelBackend, ModelTask};

use crate::config::{ConfigError, ServerConfig};

/// What the server tells clients about the model it serves.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Name clients send as `model` (`--served-model-name` overrides it).
    pub name: String,
    pub max_model_len: usize,
    /// Unix seconds reported as `created` in /v1/models.
    pub created: u64,
}

/// Shared state of every handler: one per served model (see `models`);
/// the fields below `tool_format` are shared by every model of a server.
pub struct AppState {
    /// The generation engine (for an embedding model: one that refuses work
    /// and reports the embedding engine's gauges).
    pub engine: Arc<dyn Engine>,
    pub codec: Arc<dyn TextCodec>,
    pub model: ModelInfo,
    pub limits: validate::Limits,
    pub metrics: Arc<metrics::Metrics>,
    /// `system_fingerprint`: fixed for one build serving one model.
    pub fingerprint: String,
    pub task: ModelTask,
    /// The embedding engine of an embedding model.
    pub embedder: Option<Arc<dyn Embedder>>,
    /// Which `dimensions` the embedding model allows (Matryoshka).
    pub matryoshka: crate::model::pooling::Matryoshka,
    /// Constrained decoding over the model's vocabulary (None: an embedding
    /// model, or the codec gives no vocabulary, and response_format / forced
    /// tool calls get 400).
    pub grammars: Option<Arc<crate::structured::GrammarCompiler>>,
    /// How tool calls are written: `--tool-call-parser`, else from the template.
    pub tool_format: tools::ToolFormat,
    pub config: ServerConfig,
    pub keys: auth::KeyStore,
    pub lifecycle: Arc<admit::Lifecycle>,
    /// Admitted requests that have not received their first token.
    pub pending: Arc<AtomicUsize>,
    /// Every model of the server, for routing by `model`.
    pub served: Arc<models::Served>,
}

/// The pieces every model of one server shares.
struct Shared {
    recorder: Arc<metrics_exporter_prometheus::PrometheusRecorder>,
    lifecycle: Arc<admit::Lifecycle>,
    pending: Arc<AtomicUsize>,
    served: Arc<models::Served>,
}

impl AppState {
    /// One generation model. Checks the config once and loads keys.
    pub fn new(
        config: ServerConfig,
        engine: Arc<dyn Engine>,
        codec: Arc<dyn TextCodec>,
        model: ModelInfo,
    ) -> Result<Arc<AppState>, ConfigError> {
        let loaded = Loaded { backend: ModelBackend::Generate(engine), codec, model };
        let mut states = Self::new_served(config, vec![loaded])?;
        Ok(states.remove(0))
    }

    /// Every model of a server (at least one), sharing keys, limits,
    /// lifecycle and metrics recorder; routed by name (`models::route`).
    /// `--served-model-name` renames a lone model; names must be unique.
    pub fn new_served(config: ServerConfig, models: Vec<Loaded>) -> Result<Vec<Arc<AppState>>, ConfigError> {
        Self::new_served_sharing(config, models, &[])
    }

    /// `new_served` reusing the grammar compiler (and its cache) of the
    /// state in `reuse` with the same model name, as the Batch API's
    /// executor does with the server's models.
    pub fn new_served_sharing(config: ServerConfig, models: Vec<Loaded>, reuse: &[Arc<AppState>]) -> Result<Vec<Arc<AppState>>, ConfigError> {
        config.check()?;
        if models.is_empty() {
            return Err(ConfigError::Invalid("no model to serve".into()));
        }
        if models.len() > 1 && config.served_model_name.is_some() {
            return Err(ConfigError::Invalid("--served-model-name names a lone model: name each of several with --model NAME=PATH".into()));
        }
        let shared = Shared {
            recorder: metrics::Metrics::recorder_for(models.iter().map(|m| m.model.max_model_len).max().unwrap_or(1)),
            lifecycle: Arc::new(admit::Lifecycle::default()),
            pending: Arc::new(AtomicUsize::new(0)),
            served: Arc::new(models::Served::default()),
        };
        let mut states: Vec<Arc<AppState>> = Vec::with_capacity(models.len());
        for (i, loaded) in models.into_iter().enumerate() {
            // The router runs auth on the first model's state: only it holds the keys.
            let keys = if i == 0 { config.keys()? } else { Vec::new() };
            let state = Self::one(config.clone(), loaded, auth::KeyStore::new(&keys), &shared, reuse)?;
            if states.iter().any(|s| s.model.name == state.model.name) {
                return Err(ConfigError::Invalid(format!("two models are named '{}': name them with --model NAME=PATH", state.model.name)));
            }
            states.push(state);
        }
        shared.served.set(&states);
        Ok(states)
    }

    fn one(config: ServerConfig, loaded: Loaded, keys: auth::KeyStore, shared: &Shared, reuse: &[Arc<AppState>]) -> Result<Arc<AppState>, ConfigError> {
        let Loaded { backend, codec, mut model } = loaded;
        if let Some(name) = &config.served_model_name {
            model.name = name.clone();
        }
        let limits = validate::Limits {
            max_n: config.max_n,
            max_stop: config.max_stop,
            max_logprobs: config.max_logprobs,
            max_prompts: config.max_prompts,
            max_model_len: model.max_model_len,
            vocab_size: codec.vocab_size(),
        };
        let tool_format = match config.tool_call_parser.as_deref() {
            Some(name) => tools::ToolFormat::from_name(name)
                .ok_or_else(|| ConfigError::Invalid(format!("unknown --tool-call-parser '{name}'")))?,
            None => tools::ToolFormat::from_template(codec.chat_template_source().as_deref()),
        };
        let digest = blake3::hash(format!("kiln {} {} {}", env!("CARGO_PKG_VERSION"), model.name, model.max_model_len).as_bytes());
        let fingerprint = format!("fp_{}", &digest.to_hex()[..10]);
        let (engine, task, embedder, matryoshka): (Arc<dyn Engine>, _, _, _) = match backend {
            ModelBackend::Generate(engine) => (engine, ModelTask::Generate, None, Default::default()),
            ModelBackend::Embed { embedder, matryoshka } => {
                (Arc::new(embeddings::EmbedOnly(embedder.clone())), ModelTask::Embed, Some(embedder), matryoshka)
            }
        };
        let metrics = Arc::new(metrics::Metrics::for_model_task(&shared.recorder, &model.name, task == ModelTask::Generate));
        if task == ModelTask::Generate {
            let steps = metrics.vllm.iteration_tokens();
            engine.observe_steps(Box::new(move |tokens| steps.record(tokens as f64)));
        }
        let grammars = match task {
            ModelTask::Embed => None,
            ModelTask::Generate => match reuse.iter().find(|s| s.model.name == model.name) {
                Some(s) => s.grammars.clone(),
                None => structured::grammar_compiler(&codec, config.grammar_cache_size),
            },
        };
        Ok(Arc::new(AppState {
            engine,
            codec,
            metrics,
            model,
            limits,
            fingerprint,
            task,
            embedder,
            matryoshka,
            grammars,
            tool_format,
            config,
            keys,
            lifecycle: shared.lifecycle.clone(),
            pending: shared.pending.clone(),
            served: shared.served.clone(),
        }))
    }
}

/// id / created / model / fingerprint shared by a response and its chunks.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub fingerprint: String,
}

impl ResponseMeta {
    pub fn new(prefix: &str, state: &AppState) -> Self {
        let suffix = Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
        ResponseMeta {
            id: format!("{prefix}-{suffix}"),
            created: unix_now(),
            model: state.model.name.clone(),
            fingerprint: state.fingerprint.clone(),
        }
    }
}

/// A new object id: `prefix` + `_` + 24 alphanumerics (OpenAI's `resp_`,
/// `msg_`, `fc_`, `call_`; Anthropic's `msg_`, `toolu_`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Alphanumeric.sample_string(&mut rand::thread_rng(), 24))
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// OpenAI's chat, completions, embeddings and models routes, plus
/// vLLM's tokenize / detokenize. JSON bodies, under the body limit.
pub fn openai_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/models", get(misc::list_models))
        .route("/v1/models/{*model}", get(misc::retrieve_model))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
}

/// Operations: health, version, Prometheus metrics and the OpenAPI document.
pub fn operations_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/health", get(misc::health))
        .route("/live", get(misc::live))
        .route("/version", get(misc::version))
        .route("/metrics", get(misc::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
}
