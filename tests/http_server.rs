//! Issue 4 against a real `kiln serve` on loopback with the default model:
//! every endpoint, every error, streaming, usage, disconnects (KV blocks
//! back to zero, read from /metrics), queue overflow, auth, rate limits,
//! SIGTERM drain. Each test starts its own server with small limits.

mod http_support;

use std::time::Duration;

use futures::StreamExt;
use http_support::server::{KilnServer, SMALL};
use http_support::*;
use serde_json::{json, Value};

const MODEL: &str = "kiln-test";
const CTX: usize = 512;

/// SMALL engine flags (those not in `extra`), the test model name, `extra`.
async fn start(extra: &[&str]) -> Option<KilnServer> {
    let mut args: Vec<&str> = SMALL.chunks(2).filter(|kv| !extra.contains(&kv[0])).flatten().copied().collect();
    args.extend(["--served-model-name", MODEL]);
    args.extend(extra);
    KilnServer::start(&args).await
}

fn chat(content: &str, max_tokens: usize) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0})
}

/// Reads a streamed response until `lines` SSE data lines arrived.
async fn read_lines<B: AsRef<[u8]>>(stream: &mut (impl futures::Stream<Item = reqwest::Result<B>> + Unpin), lines: usize) -> String {
    let mut text = String::new();
    while text.matches("data: ").count() < lines {
        let chunk = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.expect("stream stalled");
        text.push_str(&String::from_utf8_lossy(chunk.expect("stream ended").unwrap().as_ref()));
    }
    text
}

#[tokio::test]
async fn endpoints_streaming_and_usage() {
    let Some(s) = start(&[]).await else { return };
    let (status, plain) = post_json(&s.base, "/v1/chat/completions", &chat("What is the capital of France?", 24)).await;
    assert_eq!(status, 200, "{plain}");
    assert!(plain["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(plain["object"], "chat.completion");
    assert_eq!(plain["model"], MODEL);
    let content = plain["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.is_empty());
    assert!(["stop", "length"].contains(&plain["choices"][0]["finish_reason"].as_str().unwrap()));
    let u = &plain["usage"];
    assert_eq!(u["total_tokens"], u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap());

    let mut req = chat("What is the capital of France?", 24);
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let (status, headers, text) = post(&s.base, "/v1/chat/completions", &req).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let chunks = SseBody::parse(&text).chunks();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(last["usage"][k], plain["usage"][k], "{k}: streamed usage equals non-streamed");
    }
    let finish = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(finish["finish_reason"], plain["choices"][0]["finish_reason"]);
    let streamed: String = chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str().map(String::from)).collect();
    assert_eq!(streamed, content, "greedy stream equals greedy non-stream");
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()));

    // Completions: every prompt form; token ids from /tokenize.
    let (_, tok) = post_json(&s.base, "/tokenize", &json!({"prompt": "The capital of France is"})).await;
    let ids = tok["tokens"].clone();
    assert_eq!(tok["count"], ids.as_array().unwrap().len());
    let (_, detok) = post_json(&s.base, "/detokenize", &json!({"tokens": ids})).await;
    assert!(detok["prompt"].as_str().unwrap().ends_with("The capital of France is"));
    let by_text = post_json(&s.base, "/v1/completions", &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0})).await.1;
    let by_ids = post_json(&s.base, "/v1/completions", &json!({"model": MODEL, "prompt": ids, "max_tokens": 6, "temperature": 0})).await.1;
    assert_eq!(by_text["choices"][0]["text"], by_ids["choices"][0]["text"]);
    let lists = post_json(&s.base, "/v1/completions", &json!({"model": MODEL, "prompt": [ids, ids], "max_tokens": 3, "temperature": 0})).await.1;
    assert_eq!(lists["choices"].as_array().unwrap().len(), 2);
    let texts = post_json(&s.base, "/v1/completions", &json!({"model": MODEL, "prompt": ["Hi", "Bye"], "max_tokens": 3, "n": 2})).await.1;
    let idx: Vec<u64> = texts["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, [0, 1, 2, 3]);
    let echo = post_json(&s.base, "/v1/completions", &json!({"model": MODEL, "prompt": "Once", "max_tokens": 3, "echo": true})).await.1;
    assert!(echo["choices"][0]["text"].as_str().unwrap().starts_with("Once"));

    // Logprobs: chat and completions shapes, top alternatives sorted.
    let mut lp = chat("Say hi", 4);
    lp["logprobs"] = json!(true);
    lp["top_logprobs"] = json!(3);
    let body = post_json(&s.base, "/v1/chat/completions", &lp).await.1;
    let content = body["choices"][0]["logprobs"]["content"].as_array().unwrap();
    // A stop id is counted in usage but sends no token.
    let used = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(content.len() as u64 == used || content.len() as u64 + 1 == used, "{} vs {used}", content.len());
    for t in content {
        let top: Vec<f64> = t["top_logprobs"].as_array().unwrap().iter().map(|a| a["logprob"].as_f64().unwrap()).collect();
        assert_eq!(top.len(), 3);
        assert!(top.windows(2).all(|w| w[0] >= w[1]), "{top:?}");
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        assert!((t["logprob"].as_f64().unwrap() - top[0]).abs() < 1e-4, "greedy picks the top token");
    }

    // Seeds: same seed, same sample.
    let seeded = json!({"model": MODEL, "prompt": "Tell me a story", "max_tokens": 12, "temperature": 1.0, "seed": 1234});
    let a = post_json(&s.base, "/v1/completions", &seeded).await.1;
    let b = post_json(&s.base, "/v1/completions", &seeded).await.1;
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);

    // Models, version, openapi, health, metrics.
    let (_, models) = get_json(&s.base, "/v1/models").await;
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["max_model_len"], CTX);
    assert_eq!(get_json(&s.base, &format!("/v1/models/{MODEL}")).await.1, models["data"][0]);
    assert_eq!(get_json(&s.base, "/version").await.1["version"], env!("CARGO_PKG_VERSION"));
    assert!(get_json(&s.base, "/openapi.json").await.1["paths"]["/v1/chat/completions"]["post"].is_object());
    assert_eq!(get_json(&s.base, "/health").await.1["status"], "ok");
    let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
    for name in [
        "kiln_requests_total{route=\"/v1/chat/completions\",status=\"200\"}",
        "kiln_prompt_tokens_total",
        "kiln_generation_tokens_total",
        "kiln_time_to_first_token_seconds_bucket",
        "kiln_inter_token_latency_seconds_bucket",
        "kiln_e2e_request_latency_seconds_bucket",
        "kiln_num_requests_waiting",
        "kiln_num_requests_running",
        "kiln_kv_blocks_used",
        "kiln_kv_blocks_total",
        "kiln_prefix_cache_hit_rate",
        "kiln_num_preemptions_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // One log line per request, with its id and token counts.
    let log = s.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("kiln::access") && l.contains("/v1/chat/completions")).collect();
    assert!(lines.len() >= 3, "{log}");
    assert!(lines.iter().all(|l| l.contains("request_id=req-") && l.contains("prompt_tokens=") && l.contains("ttft_ms=")));
}

#[tokio::test]
async fn every_error_case() {
    let Some(s) = start(&["--max-body-bytes", "65536"]).await else { return };
    cases::assert_all_bad_requests(&s.base, MODEL, CTX).await;
    let (status, body) = get_json(&s.base, "/v1/nothing").await;
    assert_error(status, &body, 404, "invalid_request_error", Some("unknown_url"), None);
    let (status, body) = get_json(&s.base, "/v1/completions").await;
    assert_error(status, &body, 405, "invalid_request_error", Some("method_not_allowed"), None);
    let mut wrong = chat("hi", 4);
    wrong["model"] = json!("gpt-4o");
    let (status, body) = post_json(&s.base, "/v1/chat/completions", &wrong).await;
    assert_error(status, &body, 404, "invalid_request_error", Some("model_not_found"), Some("model"));
    let huge = chat(&"word ".repeat(20_000), 4);
    let (status, body) = post_json(&s.base, "/v1/chat/completions", &huge).await;
    assert_error(status, &body, 413, "invalid_request_error", Some("request_too_large"), None);
    let r = client().post(format!("{}/v1/chat/completions", s.base)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 415);
    let r = client()
        .post(format!("{}/v1/chat/completions", s.base))
        .header("content-type", "application/json")
        .body("{\"model\": \"kiln-test\", \"messages\": [")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 400, "invalid_request_error", None, None);
    assert_eq!(s.metric("kiln_kv_blocks_used").await, 0.0);
}

#[tokio::test]
async fn disconnects_return_kv_blocks() {
    let Some(s) = start(&[]).await else { return };
    let mut req = chat("Write a long essay about the sea.", 400);
    req["ignore_eos"] = json!(true);
    req["stream"] = json!(true);
    let r = client().post(format!("{}/v1/chat/completions", s.base)).json(&req).send().await.unwrap();
    let mut body = r.bytes_stream();
    read_lines(&mut body, 4).await;
    assert!(s.metric("kiln_kv_blocks_used").await > 0.0);
    drop(body);
    let c = client();
    let mut plain = req.clone();
    plain["stream"] = json!(false);
    let url = format!("{}/v1/chat/completions", s.base);
    let mut zero = false;
    for _ in 0..100 {
        if s.metric("kiln_kv_blocks_used").await == 0.0 && s.metric("kiln_num_requests_running").await == 0.0 {
            zero = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(zero, "a streaming disconnect frees its KV blocks");
    let pending = tokio::spawn(async move { c.post(url).json(&plain).send().await });
    let mut busy = false;
    for _ in 0..200 {
        if s.metric("kiln_kv_blocks_used").await > 0.0 {
            busy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(busy, "the non-streamed request is running");
    pending.abort();
    let mut zero = false;
    for _ in 0..100 {
        if s.metric("kiln_kv_blocks_used").await == 0.0 {
            zero = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(zero, "a non-streaming disconnect frees its KV blocks");
}

#[tokio::test]
async fn queue_overflow_and_keep_alive() {
    let Some(s) = start(&["--max-num-seqs", "1", "--max-waiting", "1", "--sse-keepalive", "1"]).await else { return };
    let mut long = chat("Write a long essay about mountains.", 400);
    long["ignore_eos"] = json!(true);
    long["stream"] = json!(true);
    let c = client();
    let url = format!("{}/v1/chat/completions", s.base);
    let mut running = c.post(&url).json(&long).send().await.unwrap().bytes_stream();
    read_lines(&mut running, 3).await; // role chunk + two tokens: it runs
    let mut waiting = c.post(&url).json(&long).send().await.unwrap().bytes_stream();
    let mut text = String::new();
    while !text.lines().any(|l| l.starts_with(':')) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), waiting.next()).await.expect("keep-alive while queued");
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
    assert_eq!(text.matches("data: ").count(), 1, "only the role chunk before its first token: {text}");
    let (status, headers, body) = post(&s.base, "/v1/chat/completions", &chat("hi", 4)).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_error(status, &body, 503, "server_error", Some("queue_full"), None);
    assert!(headers.contains_key("retry-after"));
    drop(running);
    drop(waiting);
    let mut zero = false;
    for _ in 0..100 {
        if s.metric("kiln_kv_blocks_used").await == 0.0 {
            zero = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(zero);
    assert_eq!(post(&s.base, "/v1/chat/completions", &chat("hi", 2)).await.0, 200);
}

#[tokio::test]
async fn api_keys_on_every_route() {
    let Some(s) = start(&["--api-key", "sk-kiln-secret-1", "--api-key", "sk-kiln-secret-2"]).await else { return };
    let c = client();
    let routes = [
        ("GET", "/v1/models".to_string()),
        ("GET", format!("/v1/models/{MODEL}")),
        ("POST", "/v1/chat/completions".into()),
        ("POST", "/v1/completions".into()),
        ("POST", "/tokenize".into()),
        ("POST", "/detokenize".into()),
        ("GET", "/version".into()),
        ("GET", "/metrics".into()),
        ("GET", "/openapi.json".into()),
        ("GET", "/unknown".into()),
    ];
    for (method, path) in &routes {
        let url = format!("{}{path}", s.base);
        for key in [None, Some("sk-kiln-secret-3"), Some("sk-kiln-secret-")] {
            let req = if *method == "GET" { c.get(&url) } else { c.post(&url).json(&json!({})) };
            let req = match key {
                Some(k) => req.bearer_auth(k),
                None => req,
            };
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            assert_error(status, &r.json().await.unwrap(), 401, "invalid_request_error", Some("invalid_api_key"), None);
        }
    }
    assert_eq!(c.get(format!("{}/health", s.base)).send().await.unwrap().status(), 200);
    let r = c.post(format!("{}/v1/chat/completions", s.base)).bearer_auth("sk-kiln-secret-2").json(&chat("hi", 2)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(format!("{}/v1/models", s.base)).header("x-api-key", "sk-kiln-secret-1").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let logged = eventually(5, || s.log_text().contains("key=key-2")).await;
    let log = s.log_text();
    assert!(logged, "the key's name is logged: {log}");
    assert!(!log.contains("sk-kiln-secret"), "keys never appear in logs");
}

#[tokio::test]
async fn per_key_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let keys = json!({"keys": [{"key": "sk-rpm", "name": "rpm-key", "rpm": 2}, {"key": "sk-tpm", "name": "tpm-key", "tpm": 200}]});
    std::fs::write(&path, keys.to_string()).unwrap();
    let Some(s) = start(&["--api-key-file", path.to_str().unwrap()]).await else { return };
    let c = client();
    let url = format!("{}/v1/completions", s.base);
    let body = json!({"model": MODEL, "prompt": "Hello", "max_tokens": 2});
    for left in ["1", "0"] {
        let r = c.post(&url).bearer_auth("sk-rpm").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "2");
        assert_eq!(r.headers()["x-ratelimit-remaining-requests"], left);
    }
    let r = c.post(&url).bearer_auth("sk-rpm").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.headers().contains_key("x-ratelimit-reset-requests"));
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 429, "requests", Some("rate_limit_exceeded"), None);

    // Tokens: prompt + max_tokens are charged at admission, the unused part
    // credited back when the request ends. "Say hi" answers in a few tokens.
    let url = format!("{}/v1/chat/completions", s.base);
    let say_hi = chat("Say hi", 100);
    let r = c.post(&url).bearer_auth("sk-tpm").json(&say_hi).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "200");
    let left: usize = r.headers()["x-ratelimit-remaining-tokens"].to_str().unwrap().parse().unwrap();
    let usage = r.json::<Value>().await.unwrap()["usage"].clone();
    let (prompt, used) = (usage["prompt_tokens"].as_u64().unwrap() as usize, usage["completion_tokens"].as_u64().unwrap() as usize);
    let charged = prompt + 100;
    assert_eq!(left, 200 - charged, "charged at admission");
    assert!(used <= 40, "greedy 'Say hi' answers briefly ({used} tokens)");
    assert!(left + 10 < charged, "without the credit the same request would not fit");
    let r = c.post(&url).bearer_auth("sk-tpm").json(&say_hi).send().await.unwrap();
    assert_eq!(r.status(), 200, "the {} unused tokens were credited back", 100 - used);
    let huge = chat("Say hi", 300);
    let r = c.post(&url).bearer_auth("sk-tpm").json(&huge).send().await.unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 429, "tokens", Some("rate_limit_exceeded"), None);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let Some(mut s) = start(&["--shutdown-timeout", "60"]).await else { return };
    let mut req = chat("Count from one to one hundred.", 40);
    req["ignore_eos"] = json!(true);
    req["stream"] = json!(true);
    let r = client().post(format!("{}/v1/chat/completions", s.base)).json(&req).send().await.unwrap();
    let mut body = r.bytes_stream();
    let mut text = read_lines(&mut body, 2).await;
    s.terminate();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), body.next()).await.expect("drain stalled") {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    let chunks = SseBody::parse(&text).chunks();
    assert_eq!(chunks[chunks.len() - 1]["choices"][0]["finish_reason"], "length", "drained to completion");
    let tokens = chunks.iter().filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty())).count();
    assert!(tokens >= 30, "{tokens} content chunks");
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0), "exit 0 after draining; log:\n{}", s.log_text());
}

#[tokio::test]
async fn sigterm_timeout_aborts_the_rest() {
    let Some(mut s) = start(&["--shutdown-timeout", "1"]).await else { return };
    let mut req = chat("Write a very long story.", 450);
    req["ignore_eos"] = json!(true);
    req["stream"] = json!(true);
    let r = client().post(format!("{}/v1/chat/completions", s.base)).json(&req).send().await.unwrap();
    let mut body = r.bytes_stream();
    let mut text = read_lines(&mut body, 2).await;
    s.terminate();
    while let Some(Ok(chunk)) = tokio::time::timeout(Duration::from_secs(30), body.next()).await.expect("abort stalled") {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let chunks = SseBody::parse(&text).chunks();
    assert_eq!(chunks.last().unwrap()["error"]["code"], "shutting_down", "{text}");
    assert_eq!(s.wait_exit(Duration::from_secs(30)), Some(0), "log:\n{}", s.log_text());
}
