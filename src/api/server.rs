//! Server start-up and shutdown.
//!
//! Start: bind, serve at once (/health says 503 "loading"), run one real
//! request through the engine, then /health says 200.
//! Stop (SIGTERM / SIGINT): /health says 503 "draining", new generation
//! requests get 503, the listener stops accepting, in-flight requests run
//! to completion for up to `--shutdown-timeout` seconds; then the engine
//! aborts the rest (streams get an error event), and `serve_with` returns Ok.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::port::{Engine, TextCodec};
use super::{router, AppState, ModelInfo};
use crate::config::{LogFormat, ServerConfig};
use crate::engine::{EventKind, Priority, StopCriteria, ValidRequest};
use crate::sampling::SamplingParams;

/// Installs the global tracing subscriber (no-op if one is installed).
/// `RUST_LOG` overrides the default `info` filter.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Runs one greedy token through the engine; /health turns 200 after it.
async fn warm_up(state: Arc<AppState>) {
    let prompt = match state.codec.encode("Hello", true) {
        Ok(ids) if !ids.is_empty() => ids,
        _ => vec![0],
    };
    let req = ValidRequest {
        request_id: "warm-up".into(),
        prompt_ids: prompt,
        sampling: SamplingParams::greedy(),
        stop: StopCriteria { max_tokens: 1, ignore_eos: true, ..Default::default() },
        n: 1,
        priority: Priority::Interactive,
    };
    let mut rx = match state.engine.submit(req) {
        Ok(rx) => rx,
        Err(e) => return tracing::error!(error = %e, "warm-up request refused; /health stays 503"),
    };
    while let Some(ev) = rx.recv().await {
        match ev.kind {
            EventKind::Finished { .. } => {
                state.lifecycle.set_ready();
                return tracing::info!("warm-up forward pass done; ready");
            }
            EventKind::Error(e) => return tracing::error!(error = %e, "warm-up failed; /health stays 503"),
            EventKind::Token { .. } => {}
        }
    }
    tracing::error!("engine closed during warm-up; /health stays 503");
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

/// Serves until SIGTERM / SIGINT, then drains. Engine and tokenizer come as
/// the traits of `port`; `serve` (adapters) passes the real ones.
pub async fn serve_with(
    config: ServerConfig,
    engine: Arc<dyn Engine>,
    codec: Arc<dyn TextCodec>,
    model: ModelInfo,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(config.shutdown_timeout);
    let addr = format!("{}:{}", config.host, config.port);
    let state = AppState::new(config, engine.clone(), codec, model)?;
    let listener = TcpListener::bind(&addr).await.with_context(|| format!("cannot bind {addr}"))?;
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(address = %local, model = %state.model.name, keys = state.keys.is_enabled(), "listening on http://{local}");
    tokio::spawn(warm_up(state.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let draining = state.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        draining.lifecycle.start_draining();
        tracing::info!("shutdown signal: draining in-flight requests for up to {}s", timeout.as_secs());
        let _ = stop_tx.send(true);
    });
    let mut graceful_rx = stop_rx.clone();
    let server = axum::serve(listener, router(state.clone())).with_graceful_shutdown(async move {
        let _ = graceful_rx.wait_for(|&s| s).await;
    });
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    let mut deadline_rx = stop_rx;
    let deadline = async move {
        let _ = deadline_rx.wait_for(|&s| s).await;
        tokio::time::sleep(timeout).await;
    };
    tokio::select! {
        res = &mut server => {
            res.context("server error")?;
            tracing::info!("all requests drained");
        }
        _ = deadline => {
            tracing::warn!("shutdown timeout reached: aborting the remaining requests");
            engine.shutdown();
            // Let aborted streams write their error event and [DONE].
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut server).await;
        }
    }
    engine.shutdown();
    Ok(())
}
