//! One record per HTTP request, shared by the middleware, the handler and
//! (for streams) the response body. When its last owner drops, i.e. after
//! the last byte of a stream or when the client goes away, it writes the
//! request's one log line, counts it in /metrics and returns unused tokens
//! to the key's per-minute budget.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use rand::Rng;

use super::metrics::Metrics;
use super::ratelimit::{KeyLimits, RateHeaders};
use super::AppState;

/// The session-affinity header: read from the request, echoed on the
/// response with the key kiln used (see docs/deploy.md for routing on it).
pub const SESSION_HEADER: &str = "x-session-id";

/// nginx's status for a request whose client left before the response.
const CLIENT_CLOSED: u16 = 499;

/// Cheap to clone; all clones are one request.
#[derive(Clone)]
pub struct RequestRecord(Arc<Inner>);

struct Inner {
    id: String,
    method: String,
    /// The matched route pattern (bounded label set), or "unmatched".
    route: String,
    start: Instant,
    status: AtomicU16,
    prompt_tokens: AtomicUsize,
    completion_tokens: AtomicUsize,
    first_token: OnceLock<Duration>,
    mutable: Mutex<Mutable>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Mutable {
    key_name: Option<String>,
    rate: RateHeaders,
    /// Tokens charged at admission, settled on drop.
    charged: Option<(Arc<KeyLimits>, usize)>,
    error: Option<String>,
    /// The metrics of the model the request was routed to (default: the
    /// server's first model).
    model_metrics: Option<Arc<Metrics>>,
    /// The session (affinity) key: the `x-session-id` header, else the
    /// body's `prompt_cache_key`; echoed in `x-session-id`.
    session_key: Option<String>,
    /// Counts the request in flight for the drain (None: a probe or scrape).
    _in_flight: Option<super::admit::InFlight>,
}

impl RequestRecord {
    pub fn new(id: String, method: String, route: String, metrics: Arc<Metrics>) -> Self {
        RequestRecord(Arc::new(Inner {
            id,
            method,
            route,
            start: Instant::now(),
            // Until a response exists: the client closed the connection first.
            status: AtomicU16::new(CLIENT_CLOSED),
            prompt_tokens: AtomicUsize::new(0),
            completion_tokens: AtomicUsize::new(0),
            first_token: OnceLock::new(),
            mutable: Mutex::new(Mutable::default()),
            metrics,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mutable> {
        self.0.mutable.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// When the request arrived (its latencies count from here).
    pub fn started(&self) -> Instant {
        self.0.start
    }

    pub fn set_key_name(&self, name: &str) {
        self.lock().key_name = Some(name.to_string());
    }

    pub fn rate_headers(&self) -> RateHeaders {
        self.lock().rate
    }

    pub fn set_rate_headers(&self, rate: RateHeaders) {
        self.lock().rate = rate;
    }

    pub fn set_charge(&self, limits: Arc<KeyLimits>, tokens: usize) {
        self.lock().charged = Some((limits, tokens));
    }

    /// Counts this request's tokens and latencies under `metrics` (the
    /// routed model's) instead of the first model's.
    pub fn set_model_metrics(&self, metrics: Arc<Metrics>) {
        self.lock().model_metrics = Some(metrics);
    }

    /// Sets the session key unless the `x-session-id` header set one.
    pub fn set_session_key(&self, key: Option<&str>) {
        let mut m = self.lock();
        if m.session_key.is_none() {
            m.session_key = key.filter(|k| !k.is_empty()).map(String::from);
        }
    }

    pub fn set_error(&self, error: &str) {
        self.lock().error = Some(error.to_string());
    }

    pub fn add_prompt_tokens(&self, n: usize) {
        self.0.prompt_tokens.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts generated tokens; the first call also fixes time to first token.
    pub fn add_completion_tokens(&self, n: usize) {
        if n > 0 && self.0.first_token.set(self.0.start.elapsed()).is_ok() {
            self.0.metrics.time_to_first_token.record(self.0.start.elapsed().as_secs_f64());
        }
        self.0.completion_tokens.fetch_add(n, Ordering::Relaxed);
    }

    fn set_status(&self, status: u16) {
        self.0.status.store(status, Ordering::Relaxed);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let m = self.mutable.get_mut().unwrap_or_else(|p| p.into_inner());
        let duration = self.start.elapsed();
        let status = *self.status.get_mut();
        let prompt = *self.prompt_tokens.get_mut();
        let completion = *self.completion_tokens.get_mut();
        if let Some((limits, charged)) = m.charged.take() {
            limits.settle_tokens(charged, prompt + completion);
        }
        let metrics = m.model_metrics.take().unwrap_or_else(|| self.metrics.clone());
        metrics.count_request(&self.route, status);
        metrics.e2e_latency.record(duration.as_secs_f64());
        metrics.prompt_tokens.increment(prompt as u64);
        metrics.generation_tokens.increment(completion as u64);
        let ttft_ms = self.first_token.get().map(|d| d.as_secs_f64() * 1e3);
        tracing::info!(
            target: "kiln::access",
            request_id = %self.id,
            key = %m.key_name.as_deref().unwrap_or("-"),
            method = %self.method,
            route = %self.route,
            status,
            prompt_tokens = prompt,
            completion_tokens = completion,
            ttft_ms,
            duration_ms = duration.as_secs_f64() * 1e3,
            error = m.error.as_deref(),
            "request"
        );
    }
}

/// A client-sent id is echoed when it is short and printable; otherwise one
/// is generated.
fn request_id(req: &Request) -> String {
    let sent = req.headers().get("x-request-id").and_then(|v| v.to_str().ok());
    match sent {
        Some(s) if !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()) => s.to_string(),
        _ => format!("req-{:016x}", rand::thread_rng().gen::<u64>()),
    }
}

/// Middleware: creates the record, echoes `x-request-id`, applies the
/// x-ratelimit-* headers the handler decided on.
pub async fn record_request(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    let rec = RequestRecord::new(
        request_id(&req),
        req.method().to_string(),
        route.unwrap_or_else(|| "unmatched".into()),
        state.metrics.clone(),
    );
    if !matches!(rec.0.route.as_str(), "/health" | "/live" | "/metrics") {
        rec.lock()._in_flight = Some(state.lifecycle.enter());
    }
    rec.set_session_key(req.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()));
    req.extensions_mut().insert(rec.clone());
    let mut resp = next.run(req).await;
    rec.set_status(resp.status().as_u16());
    if let Some(note) = resp.extensions().get::<super::error::ErrorNote>() {
        rec.set_error(&note.0);
    }
    rec.rate_headers().apply(resp.headers_mut());
    if let Ok(v) = HeaderValue::from_str(rec.id()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    // A key that is no valid header value (e.g. non-ASCII) is not echoed.
    let session = rec.lock().session_key.clone();
    if let Some(v) = session.and_then(|k| HeaderValue::from_str(&k).ok()) {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    resp
}
