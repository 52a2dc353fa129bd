//! A scripted OpenAI-compatible SSE server for the `kiln bench` tests: each
//! streamed request gets its first text chunk `first_ms` after it arrived,
//! then one chunk every `gap_ms` (on an absolute schedule, so gaps do not
//! drift), a finish chunk, a usage chunk and `[DONE]`. Chosen requests
//! fail in the ways real servers do.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};

/// The probe request `kiln bench` sends before a run is left out of the
/// failure schedule.
const PROBE_MAX_TOKENS: u64 = kiln::bench::serve::PROBE_MAX_TOKENS as u64;

/// How the k-th benchmark request (probe excluded) is answered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fate {
    Ok,
    /// HTTP 500 with an OpenAI error body.
    Http500,
    /// Two text chunks, then the connection is cut.
    Abort,
    /// Two text chunks, then a clean end without [DONE].
    NoDone,
}

pub struct Mock {
    pub first_ms: u64,
    pub gap_ms: u64,
    /// Text chunks per response (the usage reports as many tokens).
    pub chunks: usize,
    pub fate: fn(usize) -> Fate,
    /// Apply `fate` to the probe too (counted as request 0).
    pub probe_too: bool,
    /// Benchmark requests seen (probe excluded).
    pub seen: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub peak_in_flight: AtomicUsize,
}

impl Mock {
    pub fn new(first_ms: u64, gap_ms: u64, chunks: usize) -> Mock {
        Mock {
            first_ms,
            gap_ms,
            chunks,
            fate: |_| Fate::Ok,
            probe_too: false,
            seen: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        }
    }
}

/// Decrements the in-flight count when the response body is dropped.
struct InFlight(Arc<Mock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn sse(v: Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn text_chunk(chat: bool, text: &str, finish: Option<&str>) -> Value {
    if chat {
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}], "usage": null})
    } else {
        json!({"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}], "usage": null})
    }
}

fn prompt_tokens(body: &Value) -> usize {
    match &body["prompt"] {
        Value::Array(ids) => ids.len(),
        Value::String(s) => s.split_whitespace().count(),
        _ => body["messages"][0]["content"].as_str().map_or(0, |s| s.split_whitespace().count()),
    }
}

async fn generate(State(m): State<Arc<Mock>>, chat: bool, Json(body): Json<Value>) -> Response {
    let arrived = Instant::now();
    let probe = body["max_tokens"].as_u64() == Some(PROBE_MAX_TOKENS) && !m.probe_too;
    let fate = if probe { Fate::Ok } else { (m.fate)(m.seen.fetch_add(1, Ordering::SeqCst)) };
    if fate == Fate::Http500 {
        let err = json!({"error": {"message": "scripted failure", "type": "server_error", "code": 500}});
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(err)).into_response();
    }
    let now = m.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    m.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    let guard = InFlight(m.clone());
    let n = if probe { 1 } else { m.chunks };
    let usage = json!({"choices": [], "usage": {"prompt_tokens": prompt_tokens(&body), "completion_tokens": n, "total_tokens": 0}});
    let (first, gap) = (Duration::from_millis(m.first_ms), Duration::from_millis(m.gap_ms));
    let cut = matches!(fate, Fate::Abort | Fate::NoDone).then_some(2);
    let events = stream::iter(0..n.min(cut.unwrap_or(n)))
        .then(move |k| async move {
            sleep_until(arrived + first + gap * k as u32).await;
            Ok::<_, std::io::Error>(sse(text_chunk(chat, "tok ", None)))
        })
        .chain(stream::once(async move {
            match fate {
                Fate::Abort => Err(std::io::Error::other("scripted connection cut")),
                Fate::NoDone => Ok(Bytes::new()),
                _ => Ok(Bytes::from(format!("{}{}data: [DONE]\n\n", String::from_utf8_lossy(&sse(text_chunk(chat, "", Some("length")))), String::from_utf8_lossy(&sse(usage))))),
            }
        }))
        .map(move |item| {
            let _keep = &guard;
            item
        });
    Response::builder().header(header::CONTENT_TYPE, "text/event-stream").body(Body::from_stream(events)).unwrap()
}

/// Serves `mock` on 127.0.0.1 at an ephemeral port; returns its base URL.
pub async fn serve(mock: Arc<Mock>) -> String {
    let app = Router::new()
        .route("/v1/models", get(|| async { Json(json!({"object": "list", "data": [{"id": "mock-model", "object": "model"}]})) }))
        .route("/v1/completions", post(|s: State<Arc<Mock>>, b: Json<Value>| generate(s, false, b)))
        .route("/v1/chat/completions", post(|s: State<Arc<Mock>>, b: Json<Value>| generate(s, true, b)))
        .with_state(mock);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// `kiln bench serve` flags, parsed as the command line parses them.
#[derive(Parser)]
pub struct ServeCli {
    #[command(flatten)]
    args: kiln::bench::ServeArgs,
}

pub fn serve_args(flags: &[&str]) -> kiln::bench::ServeArgs {
    let argv = std::iter::once("serve").chain(flags.iter().copied()).chain(["--no-progress"]);
    ServeCli::try_parse_from(argv).expect("valid flags").args
}
