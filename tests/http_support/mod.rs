//! Shared helpers of the HTTP tests: SSE parsing, error assertions, and an
//! in-process server over the fake engine.
#![allow(dead_code)]

pub mod cases;
pub mod fake;
pub mod server;

use std::sync::Arc;

use kiln::api::{AppState, ModelInfo};
use kiln::serve::router;
use kiln::config::ServerConfig;
use serde_json::Value;

/// A parsed SSE body: `data:` payloads in order and the number of comment lines.
#[derive(Debug, Default)]
pub struct SseBody {
    pub data: Vec<String>,
    pub comments: usize,
}

impl SseBody {
    pub fn parse(text: &str) -> SseBody {
        let mut out = SseBody::default();
        for event in text.split("\n\n").filter(|e| !e.is_empty()) {
            for line in event.lines() {
                if let Some(d) = line.strip_prefix("data: ") {
                    out.data.push(d.to_string());
                } else if line.starts_with(':') {
                    out.comments += 1;
                } else {
                    panic!("unexpected SSE line {line:?} in {text:?}");
                }
            }
        }
        out
    }

    /// The JSON chunks (every payload but the final [DONE], which must be there).
    pub fn chunks(&self) -> Vec<Value> {
        assert_eq!(self.data.last().map(String::as_str), Some("[DONE]"), "stream must end with [DONE]: {:?}", self.data);
        assert_eq!(self.data.iter().filter(|d| *d == "[DONE]").count(), 1);
        self.data[..self.data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("chunk is JSON")).collect()
    }
}

/// Asserts OpenAI's error shape and returns the error object.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_type: &str, want_code: Option<&str>, want_param: Option<&str>) {
    assert_eq!(status, want_status, "status; body {body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "message in {body}");
    assert_eq!(e["type"], want_type, "type in {body}");
    assert_eq!(e["code"].as_str(), want_code, "code in {body}");
    assert_eq!(e["param"].as_str(), want_param, "param in {body}");
    let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "exactly message/type/param/code in {body}");
}

/// An in-process server over the fake engine on an ephemeral loopback port.
pub struct FakeServer {
    pub base: String,
    pub engine: Arc<fake::FakeEngine>,
    pub state: Arc<AppState>,
}

pub const FAKE_MODEL: &str = "fake-model";
pub const FAKE_CONTEXT: usize = 64;

pub async fn fake_server(config: ServerConfig) -> FakeServer {
    let engine = Arc::new(fake::FakeEngine::default());
    let model = ModelInfo { name: FAKE_MODEL.into(), max_model_len: FAKE_CONTEXT, created: 1_700_000_000 };
    let state = AppState::new(config, engine.clone(), Arc::new(fake::FakeCodec), model).expect("config");
    state.lifecycle.set_ready();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    FakeServer { base, engine, state }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

/// POSTs JSON, returns (status, headers, body text).
pub async fn post(base: &str, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client().post(format!("{base}{path}")).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

pub async fn post_json(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let (s, _, text) = post(base, path, body).await;
    (s, serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body expected, got {text:?}")))
}

pub async fn get_json(base: &str, path: &str) -> (u16, Value) {
    let r = client().get(format!("{base}{path}")).send().await.unwrap();
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    (s, serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body expected, got {text:?}")))
}

/// Polls `f` every 20 ms for up to `secs` seconds.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    f()
}
