//! Server start-up and shutdown.
//!
//! Start: bind, answer 503 (/health: "loading") while the model loads on a
//! blocking thread, then serve it; one real request runs through the engine
//! and only then does /health say 200.
//! Stop (SIGTERM / SIGINT): at once /health says 503 "draining" and new
//! generation requests get 503 with `retry-after` (a proxy retries them on
//! another replica); the listener keeps answering until the requests in
//! flight have ended, for up to `--shutdown-timeout` seconds, then stops
//! accepting; at the deadline the engine aborts the rest (streams get an
//! error event), and `serve_with` returns Ok. /live answers 200 throughout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use tower::ServiceExt;

use super::router;
use crate::api::error::ApiError;
use crate::api::port::{Engine, TextCodec};
use crate::api::wire_out::HealthResponse;
use crate::api::{AppState, Loaded, ModelBackend, ModelInfo};
use crate::config::{LogFormat, ServerConfig};
use crate::engine::{EventKind, Priority, StopCriteria, ValidRequest};
use crate::sampling::SamplingParams;

/// Installs the global tracing subscriber (no-op if one is installed).
/// `RUST_LOG` overrides the default `info` filter.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Runs one real request through a model's engine: one greedy token, or
/// one embedding. True when it came back.
async fn warm_up(state: Arc<AppState>) -> bool {
    let prompt = match state.codec.encode("Hello", true) {
        Ok(ids) if !ids.is_empty() => ids,
        _ => vec![0],
    };
    let name = state.model.name.clone();
    if let Some(embedder) = &state.embedder {
        let req = crate::engine::embed::EmbedRequest { request_id: "warm-up".into(), inputs: vec![prompt], priority: Priority::Interactive };
        return match embedder.embed(req) {
            Ok(rx) => match rx.await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => {
                    tracing::error!(model = %name, error = %e, "warm-up failed; /health stays 503");
                    false
                }
                Err(_) => false,
            },
            Err(e) => {
                tracing::error!(model = %name, error = %e, "warm-up request refused; /health stays 503");
                false
            }
        };
    }
    let req = ValidRequest {
        request_id: "warm-up".into(),
        prompt_ids: prompt,
        sampling: SamplingParams::greedy(),
        stop: StopCriteria { max_tokens: 1, ignore_eos: true, ..Default::default() },
        n: 1,
        priority: Priority::Interactive,
        grammar: None,
    };
    let mut rx = match state.engine.submit(req) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::error!(model = %name, error = %e, "warm-up request refused; /health stays 503");
            return false;
        }
    };
    while let Some(ev) = rx.recv().await {
        match ev.kind {
            EventKind::Finished { .. } => return true,
            EventKind::Error(e) => {
                tracing::error!(model = %name, error = %e, "warm-up failed; /health stays 503");
                return false;
            }
            EventKind::Token { .. } | EventKind::PromptLogprobs { .. } => {}
        }
    }
    tracing::error!(model = %name, "engine closed during warm-up; /health stays 503");
    false
}

/// Warms every model; /health turns 200 once all of them answered.
async fn warm_up_all(states: Vec<Arc<AppState>>) {
    let Some(first) = states.first().cloned() else { return };
    let results = futures::future::join_all(states.into_iter().map(warm_up)).await;
    if results.iter().all(|&ok| ok) {
        first.lifecycle.set_ready();
        tracing::info!("warm-up forward passes done; ready");
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The served app once loading finished; empty while loading.
/// The states are every model's, the first being the router's.
type Slot = Arc<OnceLock<(Router, Vec<Arc<AppState>>)>>;

/// The outer service: the real router once loaded, else 503 "loading".
fn front(slot: Slot) -> Router {
    Router::new().fallback_service(tower::service_fn(move |req: Request| {
        let slot = slot.clone();
        async move {
            match slot.get() {
                Some((app, _)) => app.clone().oneshot(req).await,
                None if req.uri().path() == "/live" => {
                    Ok(Json(HealthResponse { status: "alive".into() }).into_response())
                }
                None if req.uri().path() == "/health" => {
                    Ok((StatusCode::SERVICE_UNAVAILABLE, Json(HealthResponse { status: "loading".into() })).into_response())
                }
                None => Ok(ApiError::Loading.into_response()),
            }
        }
    }))
}

/// Serves until SIGTERM / SIGINT, then drains. Engine and tokenizer come as
/// the traits of `api::port`; `serve` passes the real ones.
pub async fn serve_with(
    config: ServerConfig,
    engine: Arc<dyn Engine>,
    codec: Arc<dyn TextCodec>,
    model: ModelInfo,
) -> anyhow::Result<()> {
    serve_loading(config, move || Ok(vec![Loaded { backend: ModelBackend::Generate(engine), codec, model }])).await
}

/// Binds first and answers 503 while `load` runs on a blocking thread, then
/// serves its models (routed by name, the first one the default); drains on
/// SIGTERM / SIGINT. An error from `load` ends the server with that error.
pub async fn serve_loading<F>(config: ServerConfig, load: F) -> anyhow::Result<()>
where
    F: FnOnce() -> anyhow::Result<Vec<Loaded>> + Send + 'static,
{
    config.check()?;
    config.keys()?;
    if let Some(url) = config.store_url() {
        let store = crate::pgstore::SharedStore::new(url, config.store_lease)?;
        store.init().await.with_context(|| format!("--store {}: cannot use the shared store", crate::pgstore::redact(url)))?;
        tracing::info!(store = %crate::pgstore::redact(url), lease_secs = config.store_lease, "shared store ready");
    }
    let timeout = Duration::from_secs(config.shutdown_timeout);
    let addr = format!("{}:{}", config.host, config.port);
    let listener = TcpListener::bind(&addr).await.with_context(|| format!("cannot bind {addr}"))?;
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(address = %local, keys = !config.keys()?.is_empty(), "listening on http://{local}");

    let slot: Slot = Arc::new(OnceLock::new());
    // stop: the listener stops accepting; drain: the deadline starts.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let load_error = Arc::new(std::sync::Mutex::new(None));
    tokio::spawn(load_then_serve(config, load, slot.clone(), stop_tx.clone(), load_error.clone()));
    let on_signal = slot.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal: draining in-flight requests for up to {}s", timeout.as_secs());
        let _ = drain_tx.send(true);
        if let Some((_, states)) = on_signal.get() {
            let lifecycle = states[0].lifecycle.clone();
            lifecycle.start_draining();
            let idle = async {
                while lifecycle.in_flight() > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            let _ = tokio::time::timeout(timeout, idle).await;
        }
        let _ = stop_tx.send(true);
    });

    let mut graceful_rx = stop_rx.clone();
    let server = axum::serve(listener, front(slot.clone())).with_graceful_shutdown(async move {
        let _ = graceful_rx.wait_for(|&s| s).await;
    });
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    let mut deadline_rx = drain_rx;
    let deadline = async move {
        let _ = deadline_rx.wait_for(|&s| s).await;
        tokio::time::sleep(timeout).await;
    };
    let engines = || slot.get().map(|(_, s)| s.iter().map(|s| s.engine.clone()).collect::<Vec<_>>()).unwrap_or_default();
    tokio::select! {
        res = &mut server => {
            res.context("server error")?;
            tracing::info!("all requests drained");
        }
        _ = deadline => {
            tracing::warn!("shutdown timeout reached: aborting the remaining requests");
            for e in engines() {
                stop_engine(e).await;
            }
            // Let aborted streams write their error event and [DONE].
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut server).await;
        }
    }
    for e in engines() {
        stop_engine(e).await;
    }
    let failed = load_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    failed.map_or(Ok(()), Err)
}

/// Loads on the blocking pool, installs the router, then warms up.
async fn load_then_serve<F>(
    config: ServerConfig,
    load: F,
    slot: Slot,
    stop: Arc<watch::Sender<bool>>,
    error: Arc<std::sync::Mutex<Option<anyhow::Error>>>,
) where
    F: FnOnce() -> anyhow::Result<Vec<Loaded>> + Send + 'static,
{
    let loaded = tokio::task::spawn_blocking(load).await.map_err(|e| anyhow::anyhow!("model loading panicked: {e}"));
    let states = loaded.and_then(|l| l.and_then(|l| Ok(AppState::new_served(config, l)?)));
    match states {
        Ok(states) => {
            for s in &states {
                tracing::info!(model = %s.model.name, max_model_len = s.model.max_model_len, task = ?s.task, "model loaded");
            }
            if *stop.borrow() {
                states[0].lifecycle.start_draining();
            }
            let _ = slot.set((router(states[0].clone()), states.clone()));
            warm_up_all(states).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "loading failed");
            *error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            let _ = stop.send(true);
        }
    }
}

/// `Engine::shutdown` joins the engine thread: keep it off the async workers.
async fn stop_engine(engine: Arc<dyn Engine>) {
    let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
}

/// Serves `engine` and `tokenizer` until SIGTERM / SIGINT.
pub async fn serve(
    config: ServerConfig,
    engine: crate::engine::EngineHandle,
    tokenizer: Arc<crate::tokenizer::Tokenizer>,
    model: ModelInfo,
) -> anyhow::Result<()> {
    serve_with(config, Arc::new(engine), tokenizer, model).await
}
