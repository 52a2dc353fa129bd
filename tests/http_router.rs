//! The HTTP layer in-process, over a scripted fake engine and a byte-level
//! tokenizer (tests/http_support/fake.rs): wire shapes, SSE framing,
//! every error case, auth, rate limits, admission, disconnects.
//! The same behaviours against a real `kiln serve` are in http_server.rs.

mod http_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use http_support::*;
use kiln::config::ServerConfig;
use serde_json::{json, Value};

fn chat(content: &str) -> Value {
    json!({"model": FAKE_MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 5})
}

#[tokio::test]
async fn chat_completion_shape() {
    let s = fake_server(ServerConfig::default()).await;
    let (status, body) = post_json(&s.base, "/v1/chat/completions", &chat("hi")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], FAKE_MODEL);
    assert!(body["system_fingerprint"].as_str().unwrap().starts_with("fp_"));
    let c = &body["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], "abcde");
    assert_eq!(c["logprobs"], Value::Null);
    assert_eq!(c["finish_reason"], "length");
    // The fake template is "<bos>user: hi\nassistant: " = 5 + 9 + 11 bytes.
    let u = &body["usage"];
    assert_eq!(u["prompt_tokens"], 25);
    assert_eq!(u["completion_tokens"], 5);
    assert_eq!(u["total_tokens"], 30);
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 1);
    let sent = s.engine.submitted.lock().unwrap()[0].clone();
    assert_eq!(sent.stop.max_tokens, 5);
    assert_eq!(sent.prompt_ids.len(), 25);
}

#[tokio::test]
async fn stop_reason_and_held_back_text() {
    let s = fake_server(ServerConfig::default()).await;
    let (_, body) = post_json(&s.base, "/v1/chat/completions", &chat("STOP")).await;
    assert_eq!(body["choices"][0]["message"]["content"], "ab.");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn chat_stream_sequence_and_usage() {
    let s = fake_server(ServerConfig::default()).await;
    let (_, plain) = post_json(&s.base, "/v1/chat/completions", &chat("hi")).await;
    let mut req = chat("hi");
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let (status, headers, text) = post(&s.base, "/v1/chat/completions", &req).await;
    assert_eq!(status, 200);
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let chunks = SseBody::parse(&text).chunks();
    let id = chunks[0]["id"].as_str().unwrap();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
        assert!(c.as_object().unwrap().contains_key("usage"), "usage key on every chunk: {c}");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (last_usage, rest) = chunks.split_last().unwrap();
    assert_eq!(last_usage["choices"], json!([]));
    assert_eq!(last_usage["usage"], plain["usage"]);
    let (finish, middle) = rest.split_last().unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let text: String = middle.iter().map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap_or("")).collect();
    assert_eq!(text, plain["choices"][0]["message"]["content"].as_str().unwrap());
    for c in middle {
        assert_eq!(c["usage"], Value::Null);
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
    }
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_key() {
    let s = fake_server(ServerConfig::default()).await;
    let mut req = chat("hi");
    req["stream"] = json!(true);
    let (_, _, text) = post(&s.base, "/v1/chat/completions", &req).await;
    for c in SseBody::parse(&text).chunks() {
        assert!(!c.as_object().unwrap().contains_key("usage"), "{c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn n_choices_and_logprobs() {
    let s = fake_server(ServerConfig::default()).await;
    let mut req = chat("hi");
    req["n"] = json!(3);
    req["logprobs"] = json!(true);
    req["top_logprobs"] = json!(2);
    let (status, body) = post_json(&s.base, "/v1/chat/completions", &req).await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let content = c["logprobs"]["content"].as_array().unwrap();
        assert_eq!(content.len(), 5);
        let text: String = content.iter().map(|t| t["token"].as_str().unwrap()).collect();
        assert_eq!(text, c["message"]["content"].as_str().unwrap());
        assert_eq!(content[0]["logprob"], -0.25);
        assert_eq!(content[0]["bytes"], json!(content[0]["token"].as_str().unwrap().as_bytes()));
        assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    }
    assert_ne!(choices[0]["message"]["content"], choices[1]["message"]["content"]);
    assert_eq!(body["usage"]["completion_tokens"], 15);
    assert_eq!(s.engine.submitted.lock().unwrap()[0].sampling.logprobs, Some(2));
}

#[tokio::test]
async fn completions_prompt_forms() {
    let s = fake_server(ServerConfig::default()).await;
    let cases = [
        (json!("hello"), 1, 6),
        (json!(["ab", "cde"]), 2, 3 + 4),
        (json!([10, 11, 12]), 1, 3),
        (json!([[10], [11, 12]]), 2, 3),
    ];
    for (prompt, choices, prompt_tokens) in cases {
        let req = json!({"model": FAKE_MODEL, "prompt": prompt, "max_tokens": 3, "n": 2});
        let (status, body) = post_json(&s.base, "/v1/completions", &req).await;
        assert_eq!(status, 200, "{prompt}: {body}");
        assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
        assert_eq!(body["object"], "text_completion");
        let cs = body["choices"].as_array().unwrap();
        assert_eq!(cs.len(), choices * 2, "{prompt}");
        for (i, c) in cs.iter().enumerate() {
            assert_eq!(c["index"], i);
            assert_eq!(c["finish_reason"], "length");
            assert_eq!(c["text"].as_str().unwrap().len(), 3);
        }
        assert_eq!(body["usage"]["prompt_tokens"], prompt_tokens, "{prompt}");
        assert_eq!(body["usage"]["completion_tokens"], choices * 2 * 3);
    }
}

#[tokio::test]
async fn completions_default_max_tokens_echo_and_logprobs() {
    let s = fake_server(ServerConfig::default()).await;
    let (_, body) = post_json(&s.base, "/v1/completions", &json!({"model": FAKE_MODEL, "prompt": "x"})).await;
    assert_eq!(body["usage"]["completion_tokens"], 16, "OpenAI's default max_tokens is 16");
    let req = json!({"model": FAKE_MODEL, "prompt": "hey", "max_tokens": 2, "echo": true});
    let (_, body) = post_json(&s.base, "/v1/completions", &req).await;
    assert_eq!(body["choices"][0]["text"], "heyab");
    let req = json!({"model": FAKE_MODEL, "prompt": "hey", "max_tokens": 3, "logprobs": 1});
    let (_, body) = post_json(&s.base, "/v1/completions", &req).await;
    let lp = &body["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!(["a", "b", "c"]));
    assert_eq!(lp["token_logprobs"], json!([-0.25, -0.25, -0.25]));
    assert_eq!(lp["text_offset"], json!([0, 1, 2]));
    assert_eq!(lp["top_logprobs"][0], json!({"a": -0.25}));
}

#[tokio::test]
async fn completions_stream_with_echo_and_usage() {
    let s = fake_server(ServerConfig::default()).await;
    let req = json!({"model": FAKE_MODEL, "prompt": "hey", "max_tokens": 2, "echo": true, "stream": true,
        "stream_options": {"include_usage": true}});
    let (_, _, text) = post(&s.base, "/v1/completions", &req).await;
    let chunks = SseBody::parse(&text).chunks();
    let texts: String = chunks.iter().filter_map(|c| c["choices"].get(0)?.get("text")?.as_str().map(String::from)).collect();
    assert_eq!(texts, "heyab");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 2);
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn mid_stream_error_is_an_error_event_then_done() {
    let s = fake_server(ServerConfig::default()).await;
    let mut req = chat("FAIL");
    req["stream"] = json!(true);
    let (status, _, text) = post(&s.base, "/v1/chat/completions", &req).await;
    assert_eq!(status, 200);
    let chunks = SseBody::parse(&text).chunks();
    let err = chunks.last().unwrap();
    assert_eq!(err["error"]["type"], "server_error");
    assert_eq!(err["error"]["message"], "scripted engine failure");
    // Non-streamed, the same failure is a 500 in OpenAI's shape.
    let (status, body) = post_json(&s.base, "/v1/chat/completions", &chat("FAIL")).await;
    assert_error(status, &body, 500, "server_error", Some("engine_error"), None);
}

#[tokio::test]
async fn every_bad_parameter_is_a_400_naming_it() {
    let s = fake_server(ServerConfig::default()).await;
    cases::assert_all_bad_requests(&s.base, FAKE_MODEL, FAKE_CONTEXT).await;
    let bad = json!({"model": FAKE_MODEL, "messages": [{"role": "user", "content": "BADTEMPLATE"}]});
    let (status, body) = post_json(&s.base, "/v1/chat/completions", &bad).await;
    assert_error(status, &body, 400, "invalid_request_error", None, Some("messages"));
    assert!(s.engine.submitted.lock().unwrap().is_empty(), "nothing invalid reached the engine");
}

#[tokio::test]
async fn malformed_json_and_content_type() {
    let s = fake_server(ServerConfig::default()).await;
    let url = format!("{}/v1/chat/completions", s.base);
    let r = client().post(&url).header("content-type", "application/json").body("{\"model\": ").send().await.unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 400, "invalid_request_error", None, None);
    let r = client().post(&url).header("content-type", "text/plain").body(chat("hi").to_string()).send().await.unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 415, "invalid_request_error", Some("unsupported_media_type"), None);
}

#[tokio::test]
async fn not_found_wrong_method_unknown_model() {
    let s = fake_server(ServerConfig::default()).await;
    let (status, body) = get_json(&s.base, "/v1/nope").await;
    assert_error(status, &body, 404, "invalid_request_error", Some("unknown_url"), None);
    let (status, body) = get_json(&s.base, "/v1/chat/completions").await;
    assert_error(status, &body, 405, "invalid_request_error", Some("method_not_allowed"), None);
    let mut req = chat("hi");
    req["model"] = json!("gpt-4");
    let (status, body) = post_json(&s.base, "/v1/chat/completions", &req).await;
    assert_error(status, &body, 404, "invalid_request_error", Some("model_not_found"), Some("model"));
    let (status, body) = get_json(&s.base, "/v1/models/gpt-4").await;
    assert_error(status, &body, 404, "invalid_request_error", Some("model_not_found"), Some("model"));
}

#[tokio::test]
async fn oversized_body_is_refused_before_reading() {
    let config = ServerConfig { max_body_bytes: 2048, ..Default::default() };
    let s = fake_server(config).await;
    let url = format!("{}/v1/chat/completions", s.base);
    let big = chat(&"x".repeat(4096)).to_string();
    // Content-Length known: refused from the header.
    let r = client().post(&url).header("content-type", "application/json").body(big.clone()).send().await.unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 413, "invalid_request_error", Some("request_too_large"), None);
    // Chunked, no Content-Length: refused while reading.
    let chunks = futures::stream::iter(big.into_bytes().chunks(512).map(|c| Ok::<_, std::io::Error>(c.to_vec())).collect::<Vec<_>>());
    let r = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 413, "invalid_request_error", Some("request_too_large"), None);
}

#[tokio::test]
async fn models_tokenize_detokenize_version_openapi() {
    let s = fake_server(ServerConfig::default()).await;
    let (_, list) = get_json(&s.base, "/v1/models").await;
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], FAKE_MODEL);
    assert_eq!(list["data"][0]["object"], "model");
    let (status, one) = get_json(&s.base, &format!("/v1/models/{FAKE_MODEL}")).await;
    assert_eq!((status, &one), (200, &list["data"][0]));
    let (_, t) = post_json(&s.base, "/tokenize", &json!({"prompt": "ab"})).await;
    assert_eq!(t, json!({"count": 3, "max_model_len": FAKE_CONTEXT, "tokens": [0, 100, 101]}));
    let msgs = json!({"messages": [{"role": "user", "content": "hi"}]});
    let (_, t) = post_json(&s.base, "/tokenize", &msgs).await;
    assert_eq!(t["count"], 25, "the chat prompt of chat_completion_shape");
    let (status, body) = post_json(&s.base, "/tokenize", &json!({"prompt": "a", "messages": []})).await;
    assert_error(status, &body, 400, "invalid_request_error", None, Some("prompt"));
    let (_, d) = post_json(&s.base, "/detokenize", &json!({"tokens": [100, 101]})).await;
    assert_eq!(d, json!({"prompt": "ab"}));
    let (status, body) = post_json(&s.base, "/detokenize", &json!({"tokens": [100000]})).await;
    assert_error(status, &body, 400, "invalid_request_error", None, Some("tokens"));
    let (_, v) = get_json(&s.base, "/version").await;
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let (_, doc) = get_json(&s.base, "/openapi.json").await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in ["/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model}", "/tokenize", "/health"] {
        assert!(doc["paths"].get(p).is_some(), "{p} in openapi");
    }
    assert!(doc["components"]["schemas"]["ChatCompletionRequest"]["properties"].get("extra").is_none());
}

#[tokio::test]
async fn health_follows_lifecycle() {
    let s = fake_server(ServerConfig::default()).await;
    assert_eq!(get_json(&s.base, "/health").await.0, 200);
    s.state.lifecycle.start_draining();
    let (status, body) = get_json(&s.base, "/health").await;
    assert_eq!((status, body["status"].as_str()), (503, Some("draining")));
    let (status, body) = post_json(&s.base, "/v1/chat/completions", &chat("hi")).await;
    assert_error(status, &body, 503, "server_error", Some("shutting_down"), None);
}

#[tokio::test]
async fn auth_on_every_route_but_health() {
    let config = ServerConfig { api_keys: vec!["sk-test-1".into()], ..Default::default() };
    let s = fake_server(config).await;
    let c = client();
    let routes = [
        ("GET", "/v1/models"),
        ("GET", "/v1/models/fake-model"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("GET", "/version"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/no/such/route"),
        ("GET", "//health"),
    ];
    for (method, path) in routes {
        let url = format!("{}{path}", s.base);
        let req = if method == "GET" { c.get(&url) } else { c.post(&url).json(&json!({})) };
        for key in [None, Some("sk-wrong"), Some("sk-test-")] {
            let req = req.try_clone().unwrap();
            let req = if let Some(k) = key { req.bearer_auth(k) } else { req };
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            assert_error(status, &body, 401, "invalid_request_error", Some("invalid_api_key"), None);
            assert!(!body.to_string().contains("sk-"), "the key is never echoed: {body}");
        }
    }
    assert_eq!(c.get(format!("{}/health", s.base)).send().await.unwrap().status(), 200);
    let ok = c.get(format!("{}/v1/models", s.base)).bearer_auth("sk-test-1").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let ok = c.get(format!("{}/v1/models", s.base)).header("x-api-key", "sk-test-1").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let r = c.post(format!("{}/v1/chat/completions", s.base)).bearer_auth("sk-test-1").json(&chat("hi")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

fn key_file(text: &str) -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    f
}

#[tokio::test]
async fn request_rate_limit_with_headers() {
    let f = key_file("[[keys]]\nkey = \"sk-a\"\nname = \"alice\"\nrpm = 2\n\n[[keys]]\nkey = \"sk-b\"\n");
    let s = fake_server(ServerConfig { api_key_file: Some(f.path().into()), ..Default::default() }).await;
    let c = client();
    let send = |key: &'static str| c.post(format!("{}/v1/chat/completions", s.base)).bearer_auth(key).json(&chat("hi")).send();
    for remaining in ["1", "0"] {
        let r = send("sk-a").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "2");
        assert_eq!(r.headers()["x-ratelimit-remaining-requests"], remaining);
        assert!(r.headers().contains_key("x-ratelimit-reset-requests"));
    }
    let r = send("sk-a").await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let body: Value = r.json().await.unwrap();
    assert_error(429, &body, 429, "requests", Some("rate_limit_exceeded"), None);
    assert!(body["error"]["message"].as_str().unwrap().contains("alice"));
    // Another key is not limited by alice's budget and gets no headers.
    let r = send("sk-b").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("x-ratelimit-limit-requests"));
}

#[tokio::test]
async fn token_rate_limit_counts_prompt_plus_max_tokens() {
    let f = key_file("[[keys]]\nkey = \"sk-t\"\ntpm = 20\n");
    let s = fake_server(ServerConfig { api_key_file: Some(f.path().into()), ..Default::default() }).await;
    let c = client();
    let send = |prompt: &str| {
        let body = json!({"model": FAKE_MODEL, "prompt": prompt, "max_tokens": 10});
        c.post(format!("{}/v1/completions", s.base)).bearer_auth("sk-t").json(&body).send()
    };
    // "STOP" is 5 prompt tokens (with BOS): 15 charged, 5 left. It stops after
    // 2 of 10 tokens, so 8 unused tokens are credited back.
    let r = send("STOP").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "20");
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "5");
    // "x" needs 2 + 10 = 12: more than the 5 left in the bucket, admitted with the credit.
    let r = send("x").await.unwrap();
    assert_eq!(r.status(), 200, "credited tokens are usable");
    let r = send("x").await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "20");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["type"], "tokens");
}

#[tokio::test]
async fn queue_full_is_503_before_tokenization() {
    let s = fake_server(ServerConfig { max_waiting: 1, ..Default::default() }).await;
    let mut hang = chat("HANG");
    hang["stream"] = json!(true);
    let held = client().post(format!("{}/v1/chat/completions", s.base)).json(&hang).send().await.unwrap();
    assert_eq!(held.status(), 200);
    assert!(eventually(5, || s.engine.live.load(Ordering::SeqCst) == 1).await);
    let (status, headers, text) = post(&s.base, "/v1/chat/completions", &chat("hi")).await;
    assert_error(status, &serde_json::from_str(&text).unwrap(), 503, "server_error", Some("queue_full"), None);
    assert_eq!(headers["retry-after"], "2");
    // An invalid request is still a 400, not a 503.
    let (status, _) = post_json(&s.base, "/v1/chat/completions", &json!({"model": FAKE_MODEL, "messages": []})).await;
    assert_eq!(status, 400);
    drop(held);
    assert!(eventually(5, || s.engine.live.load(Ordering::SeqCst) == 0).await, "disconnect frees the hung request");
    assert!(eventually(5, || s.state.pending.load(Ordering::SeqCst) == 0).await);
    assert_eq!(post(&s.base, "/v1/chat/completions", &chat("hi")).await.0, 200);
}

#[tokio::test]
async fn disconnects_abort_streaming_and_non_streaming() {
    let s = fake_server(ServerConfig::default()).await;
    let mut slow = chat("SLOW");
    slow["max_tokens"] = json!(30);
    slow["messages"][0]["content"] = json!("SLOW");
    let mut stream_req = slow.clone();
    stream_req["stream"] = json!(true);
    let r = client().post(format!("{}/v1/chat/completions", s.base)).json(&stream_req).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut seen = 0;
    while seen < 3 {
        seen += body.next().await.unwrap().unwrap().iter().filter(|&&b| b == b'\n').count();
    }
    drop(body);
    assert!(eventually(5, || s.engine.live.load(Ordering::SeqCst) == 0).await, "stream disconnect aborts");
    let c = client();
    let url = format!("{}/v1/chat/completions", s.base);
    let pending = tokio::spawn(async move { c.post(url).json(&slow).send().await });
    assert!(eventually(5, || s.engine.live.load(Ordering::SeqCst) == 1).await);
    pending.abort();
    assert!(eventually(5, || s.engine.live.load(Ordering::SeqCst) == 0).await, "non-stream disconnect aborts");
}

#[tokio::test]
async fn idle_stream_gets_keep_alive_comments() {
    let s = fake_server(ServerConfig { sse_keepalive: 1, ..Default::default() }).await;
    let mut hang = chat("HANG");
    hang["stream"] = json!(true);
    let r = client().post(format!("{}/v1/chat/completions", s.base)).json(&hang).send().await.unwrap();
    let mut body = r.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !text.contains("\n:") && !text.starts_with(':') {
        let next = tokio::time::timeout_at(deadline, body.next()).await.expect("keep-alive within 5 s");
        text.push_str(&String::from_utf8_lossy(&next.unwrap().unwrap()));
    }
    assert!(text.contains(": keep-alive") || text.contains(":keep-alive"), "{text:?}");
}

#[tokio::test]
async fn request_id_metrics_and_cors() {
    let config = ServerConfig { cors_origins: vec!["https://app.example".into()], ..Default::default() };
    let s = fake_server(config).await;
    let c = client();
    let r = c.get(format!("{}/v1/models", s.base)).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = c.get(format!("{}/v1/models", s.base)).send().await.unwrap();
    assert!(r.headers()["x-request-id"].to_str().unwrap().starts_with("req-"));
    let r = c.get(format!("{}/v1/models", s.base)).header("origin", "https://app.example").send().await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    let r = c.get(format!("{}/v1/models", s.base)).header("origin", "https://evil.example").send().await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert_eq!(post(&s.base, "/v1/chat/completions", &chat("hi")).await.0, 200);
    let text = c.get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"kiln_requests_total{route="/v1/chat/completions",status="200"} 1"#), "{text}");
    assert!(text.contains(r#"kiln_generation_tokens_total{model="fake-model"} 5"#), "{text}");
    assert!(text.contains("kiln_time_to_first_token_seconds_bucket"), "{text}");
    assert!(text.contains(r#"kiln_kv_blocks_total{model="fake-model"} 100"#), "{text}");

    let plain = fake_server(ServerConfig::default()).await;
    let r = c.get(format!("{}/v1/models", plain.base)).header("origin", "https://app.example").send().await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"), "CORS is off by default");
}
