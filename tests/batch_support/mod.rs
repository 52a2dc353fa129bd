//! Helpers of the batch-API tests: a real `kiln serve` child process on an
//! ephemeral loopback port with its own --data-dir (restartable, killable
//! with SIGKILL), a small client of the Files and Batch routes, and input
//! file builders.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const MODEL: &str = "kiln-test";

/// Engine flags small enough for a 2-core CI machine.
pub const SMALL: &[&str] = &["--max-model-len", "512", "--max-num-seqs", "16", "--seed", "0", "--served-model-name", MODEL];

#[path = "../http_support/server.rs"]
mod server;
#[allow(unused_imports)]
pub use server::default_model;

/// A `kiln serve` child process with its own --data-dir.
pub struct Kiln {
    server: server::KilnServer,
    pub base: String,
}

impl Kiln {
    /// Starts `kiln serve` on `data_dir` with SMALL plus `extra` flags and
    /// waits for /health 200. None when the default model is unavailable.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Option<Kiln> {
        let dir = data_dir.to_string_lossy().into_owned();
        let args: Vec<&str> = ["--data-dir", dir.as_str()].into_iter().chain(SMALL.iter().copied()).chain(extra.iter().copied()).collect();
        let server = server::KilnServer::start(&args).await?;
        let base = server.base.clone();
        Some(Kiln { server, base })
    }

    /// `start` with exactly `args` after --data-dir (no SMALL: e.g. for
    /// several models, where --served-model-name does not apply).
    pub async fn start_with(data_dir: &Path, args: &[&str]) -> Option<Kiln> {
        let dir = data_dir.to_string_lossy().into_owned();
        let all: Vec<&str> = ["--data-dir", dir.as_str()].into_iter().chain(args.iter().copied()).collect();
        let server = server::KilnServer::start(&all).await?;
        let base = server.base.clone();
        Some(Kiln { server, base })
    }

    pub fn log_text(&self) -> String {
        self.server.log_text()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// SIGKILL: no chance to flush or clean anything.
    pub fn kill9(&mut self) {
        self.server.kill9();
    }

    pub fn api(&self, key: Option<&str>) -> Api {
        Api { base: self.base.clone(), key: key.map(String::from), http: reqwest::Client::new() }
    }
}


/// A client of the batch routes, optionally with an API key.
pub struct Api {
    pub base: String,
    key: Option<String>,
    http: reqwest::Client,
}

async fn parts(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body expected, got {status} {text:?}")))
}

impl Api {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        parts(self.req(reqwest::Method::GET, path).send().await.unwrap()).await
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.req(reqwest::Method::GET, path).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        parts(self.req(reqwest::Method::POST, path).json(body).send().await.unwrap()).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        parts(self.req(reqwest::Method::DELETE, path).send().await.unwrap()).await
    }

    /// POST /v1/files as multipart/form-data (built by hand: a boundary
    /// that cannot occur in JSON lines).
    pub async fn upload(&self, content: &[u8], purpose: &str) -> (u16, Value) {
        let boundary = "kiln-test-boundary-7f3a9c";
        let mut body = Vec::new();
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n").as_bytes());
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"input.jsonl\"\r\n").as_bytes());
        body.extend(b"Content-Type: application/jsonl\r\n\r\n");
        body.extend(content);
        body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
        let r = self
            .req(reqwest::Method::POST, "/v1/files")
            .header("content-type", format!("multipart/form-data; boundary={boundary}"))
            .body(body)
            .send()
            .await
            .unwrap();
        parts(r).await
    }

    /// Uploads `content` and creates a batch over it; returns the batch.
    pub async fn start_batch(&self, content: &str, endpoint: &str) -> Value {
        let (status, file) = self.upload(content.as_bytes(), "batch").await;
        assert_eq!(status, 200, "{file}");
        let create = json!({"input_file_id": file["id"], "endpoint": endpoint, "completion_window": "24h"});
        let (status, batch) = self.post("/v1/batches", &create).await;
        assert_eq!(status, 200, "{batch}");
        batch
    }

    /// Polls a batch until it reaches a final status.
    pub async fn wait_final(&self, id: &str, secs: u64) -> Value {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, b) = self.get(&format!("/v1/batches/{id}")).await;
            assert_eq!(status, 200, "{b}");
            if ["completed", "failed", "expired", "cancelled"].contains(&b["status"].as_str().unwrap()) {
                return b;
            }
            assert!(Instant::now() < end, "batch {id} not final after {secs}s: {b}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The lines of a file's content, parsed.
    pub async fn result_lines(&self, file_id: &Value) -> Vec<Value> {
        let Some(id) = file_id.as_str() else { return Vec::new() };
        let (status, text) = self.get_text(&format!("/v1/files/{id}/content")).await;
        assert_eq!(status, 200, "{text}");
        text.lines().map(|l| serde_json::from_str(l).expect("result line is JSON")).collect()
    }
}

/// A chat request line.
pub fn chat_line(custom_id: &str, content: &str, max_tokens: u32) -> String {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0});
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}).to_string()
}

/// `n` chat lines req-0..req-n with varied prompts.
pub fn chat_file(n: usize, max_tokens: u32) -> String {
    const TOPICS: &[&str] = &["the sea", "a cat", "bread", "the moon", "rain", "a garden", "music", "winter", "a train", "coffee"];
    (0..n)
        .map(|i| chat_line(&format!("req-{i}"), &format!("Write one sentence about {} number {i}.", TOPICS[i % TOPICS.len()]), max_tokens))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts OpenAI's error shape.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_type: &str, want_param: Option<&str>) {
    assert_eq!(status, want_status, "status; body {body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "message in {body}");
    assert_eq!(e["type"], want_type, "type in {body}");
    assert_eq!(e["param"].as_str(), want_param, "param in {body}");
    let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "exactly message/type/param/code in {body}");
}

/// custom_id -> (content, finish_reason, completion_tokens) of chat answers.
pub fn answers(lines: &[Value]) -> std::collections::BTreeMap<String, (String, String, u64)> {
    lines
        .iter()
        .map(|l| {
            let body = &l["response"]["body"];
            let c = &body["choices"][0];
            let content = c["message"]["content"].as_str().unwrap_or_default().to_string();
            let finish = c["finish_reason"].as_str().unwrap_or_default().to_string();
            (l["custom_id"].as_str().unwrap().to_string(), (content, finish, body["usage"]["completion_tokens"].as_u64().unwrap_or(0)))
        })
        .collect()
}

/// The crash-free reference of a batch: `kiln batch` over the same input
/// file, offline, with the same engine flags (`SMALL`); its output lines.
/// None (the test skips) without the default model.
pub fn offline_reference(dir: &Path, input: &Path) -> Option<Vec<Value>> {
    let model = default_model()?;
    let output = dir.join("reference.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("batch")
        .arg(input)
        .arg("-o")
        .arg(&output)
        .arg("--model")
        .arg(&model)
        .args(SMALL)
        .output()
        .expect("run kiln batch");
    assert!(out.status.success(), "kiln batch failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.join("reference.jsonl.partial").exists(), "the work folder is removed at the end");
    let text = std::fs::read_to_string(&output).unwrap();
    Some(text.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}
