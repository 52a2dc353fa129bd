//! One streamed request against an OpenAI-compatible server, timed on the
//! client side. A request succeeds only if the server answered 200, sent
//! generated text, and closed the stream with `data: [DONE]`; anything
//! else is a failure carrying the reason.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Map, Value};

use super::args::Endpoint;
use super::dataset::{BenchRequest, Prompt};
use super::sse::SseDecoder;
use super::stats::RequestRecord;
use super::BenchError;

/// Where and how requests are sent.
#[derive(Clone)]
pub struct Target {
    pub client: reqwest::Client,
    /// Server root without a trailing slash.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub endpoint: Endpoint,
    pub ignore_eos: bool,
    pub temperature: f64,
    /// Merged into every body last, so it can override any field.
    pub extra_body: Map<String, Value>,
}

/// The error of a request that finished without generating any text.
pub const NO_TEXT: &str = "the stream carried no generated text";

/// An error and the errors that caused it, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        src = c.source();
    }
    s
}

pub fn http_client(timeout: Duration) -> Result<reqwest::Client, BenchError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .map_err(|e| BenchError::Usage(format!("cannot build the HTTP client: {}", error_chain(&e))))
}

impl Target {
    pub fn body(&self, prompt: &Prompt, max_tokens: usize) -> Result<Value, BenchError> {
        let mut body = json!({
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let obj = body.as_object_mut().expect("a JSON object literal");
        match (self.endpoint, prompt) {
            (Endpoint::Completions, Prompt::Ids(ids)) => obj.insert("prompt".into(), json!(ids)),
            (Endpoint::Completions, Prompt::Text(t)) => obj.insert("prompt".into(), json!(t)),
            (Endpoint::Chat, Prompt::Text(t)) => obj.insert("messages".into(), json!([{"role": "user", "content": t}])),
            (Endpoint::Chat, Prompt::Ids(_)) => {
                return Err(BenchError::Usage("the chat endpoint takes text: pass --tokenizer to turn token-id prompts into text".into()))
            }
        };
        if self.ignore_eos {
            obj.insert("ignore_eos".into(), json!(true));
        }
        obj.extend(self.extra_body.clone());
        Ok(body)
    }

    pub fn request(&self, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.post(format!("{}{}", self.base_url, path));
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// Sends `req` and times it against `t0`, the benchmark's start.
    pub async fn send(&self, req: &BenchRequest, t0: Instant) -> RequestRecord {
        let mut rec = RequestRecord { prompt_len: req.prompt_len, ..Default::default() };
        rec.start = t0.elapsed().as_secs_f64();
        let result = match self.body(&req.prompt, req.output_len) {
            Ok(body) => self.stream(&body, t0, &mut rec).await,
            Err(e) => Err(e.to_string()),
        };
        rec.end = t0.elapsed().as_secs_f64();
        match result {
            Ok(()) if rec.chunk_times.is_empty() => rec.error = Some(NO_TEXT.into()),
            Ok(()) => rec.success = true,
            Err(e) => rec.error = Some(e),
        }
        if !rec.usage_reported {
            rec.output_tokens = rec.chunk_times.len();
        }
        rec
    }

    /// Reads the stream into `rec`; Ok once `[DONE]` arrived.
    async fn stream(&self, body: &Value, t0: Instant, rec: &mut RequestRecord) -> Result<(), String> {
        let resp = self.request(self.endpoint.path()).json(body).send().await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("HTTP {status}: {}", shorten(&text, 300)));
        }
        let mut bytes = resp.bytes_stream();
        let mut sse = SseDecoder::default();
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.map_err(|e| format!("the stream broke after {} text chunks: {}", rec.chunk_times.len(), error_chain(&e)))?;
            let now = t0.elapsed().as_secs_f64();
            for data in sse.push(&chunk) {
                if data == "[DONE]" {
                    return Ok(());
                }
                on_payload(&data, now, rec)?;
            }
        }
        Err(format!("the stream ended without [DONE] after {} text chunks", rec.chunk_times.len()))
    }
}

/// Applies one `data:` payload: text chunks are timed, usage is kept.
fn on_payload(data: &str, now: f64, rec: &mut RequestRecord) -> Result<(), String> {
    let v: Value = serde_json::from_str(data).map_err(|e| format!("invalid JSON in the stream ({e}): {}", shorten(data, 200)))?;
    if let Some(err) = v.get("error") {
        let msg = err.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| err.to_string());
        return Err(format!("error in the stream: {}", shorten(&msg, 300)));
    }
    let choice = v.get("choices").and_then(Value::as_array).and_then(|c| c.first());
    if let Some(c) = choice {
        let text = c.get("text").or_else(|| c.get("delta").and_then(|d| d.get("content")));
        if text.and_then(Value::as_str).is_some_and(|t| !t.is_empty()) {
            rec.chunk_times.push(now);
        }
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        let field = |k: &str| u.get(k).and_then(Value::as_u64).map(|n| n as usize);
        if let Some(n) = field("completion_tokens") {
            rec.output_tokens = n;
            rec.usage_reported = true;
        }
        if let Some(n) = field("prompt_tokens") {
            rec.prompt_len = n;
        }
    }
    Ok(())
}

/// At most `n` characters of `s`, marked when cut.
pub fn shorten(s: &str, n: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
