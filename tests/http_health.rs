//! Issue 15 part 2: readiness, liveness and drain.
//!
//! - In process: a real engine thread over the fake runner whose step takes
//!   seconds stands for a hung engine: /health turns 503 "stalled" while the
//!   thread misses its heartbeat and 200 again once it answers; /live stays 200.
//! - A real `kiln serve` child process on the default model and a real
//!   SIGTERM: /health 503 at once while /live stays 200, new requests get
//!   503 with `retry-after`, the stream in flight finishes, the process exits 0.

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http_support::server::{KilnServer, SMALL};
use http_support::*;
use kiln::api::{AppState, ModelInfo};
use kiln::serve::router;
use kiln::config::ServerConfig;
use kiln::engine::fake::{FakeDecoder, FakeRunner};
use kiln::engine::{EngineConfig, EngineHandle, EventKind, Priority, StopCriteria, ValidRequest};
use kiln::sampling::SamplingParams;
use serde_json::{json, Value};

async fn health(base: &str) -> (u16, String) {
    let (status, body) = get_json(base, "/health").await;
    (status, body["status"].as_str().unwrap_or_default().to_string())
}

/// Polls /health until it reports `want` (status and text), for up to `secs`.
async fn wait_health(base: &str, want: (u16, &str), secs: u64) -> (u16, String) {
    let mut last = health(base).await;
    for _ in 0..secs * 20 {
        if last.0 == want.0 && last.1 == want.1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = health(base).await;
    }
    last
}

#[tokio::test]
async fn a_stalled_engine_thread_turns_health_503_until_it_answers() {
    let cfg = EngineConfig { block_size: 4, max_model_len: 256, ..Default::default() };
    // One step takes 4 s: the engine thread misses its heartbeat meanwhile.
    let runner = FakeRunner::new(64, 4, 300).with_delay(Duration::from_secs(4));
    let engine = EngineHandle::start_with_decoder(cfg, Box::new(runner), Arc::new(FakeDecoder)).unwrap();
    let config = ServerConfig { engine_heartbeat_timeout: 1, ..Default::default() };
    let model = ModelInfo { name: "m".into(), max_model_len: 256, created: 0 };
    let state = AppState::new(config, Arc::new(engine.clone()), Arc::new(fake::FakeCodec), model).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    assert_eq!(health(&base).await, (503, "loading".into()), "not warm yet");
    state.lifecycle.set_ready();
    // Idle for longer than the timeout: the idle engine still beats.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(health(&base).await, (200, "ok".into()));

    let req = ValidRequest {
        request_id: "slow".into(),
        prompt_ids: vec![5, 6, 7],
        sampling: SamplingParams::greedy(),
        stop: StopCriteria { max_tokens: 1, ..Default::default() },
        n: 1,
        priority: Priority::Interactive,
        grammar: None,
    };
    let mut rx = engine.submit(req).unwrap();
    assert_eq!(wait_health(&base, (503, "stalled"), 10).await, (503, "stalled".into()));
    assert_eq!(get_json(&base, "/live").await.0, 200, "the process is alive all the same");
    let mut finished = false;
    while let Some(ev) = rx.recv().await {
        finished |= matches!(ev.kind, EventKind::Finished { .. });
    }
    assert!(finished);
    assert_eq!(wait_health(&base, (200, "ok"), 10).await, (200, "ok".into()), "answers again after the step");
    engine.shutdown();
    assert_eq!(wait_health(&base, (503, "stalled"), 10).await, (503, "stalled".into()), "a stopped engine thread");
}

const MODEL: &str = "kiln-test";

fn chat(content: &str, max_tokens: usize, stream: bool) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
           "temperature": 0, "ignore_eos": true, "stream": stream})
}

#[tokio::test]
async fn sigterm_turns_health_503_refuses_new_work_and_finishes_the_stream() {
    let mut args = SMALL.to_vec();
    args.extend(["--served-model-name", MODEL, "--shutdown-timeout", "60"]);
    let Some(mut s) = KilnServer::start(&args).await else { return };
    assert_eq!(get_json(&s.base, "/live").await, (200, json!({"status": "alive"})));
    assert_eq!(health(&s.base).await, (200, "ok".into()));

    let r = client().post(format!("{}/v1/chat/completions", s.base)).json(&chat("Count to fifty.", 60, true)).send().await.unwrap();
    let mut body = r.bytes_stream();
    let mut text = String::new();
    while text.matches("data: ").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(60), body.next()).await.expect("stream stalled");
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    s.terminate();
    assert_eq!(wait_health(&s.base, (503, "draining"), 10).await, (503, "draining".into()));
    assert_eq!(get_json(&s.base, "/live").await.0, 200, "alive while draining");
    let r = client().post(format!("{}/v1/chat/completions", s.base)).json(&chat("Hi", 4, false)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some(), "a proxy or client knows to retry");
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "shutting_down");

    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), body.next()).await.expect("drain stalled") {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let chunks = SseBody::parse(&text).chunks();
    let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str().map(String::from));
    assert_eq!(finish.as_deref(), Some("length"), "the stream in flight ran to its end: {text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0), "exit 0 once drained; log:\n{}", s.log_text());
}
