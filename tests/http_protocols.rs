//! The Responses API and Anthropic's Messages API over the fake engine
//! (tests/http_support/fake.rs): event order and sequence numbers, the
//! stored response equal to the streamed one, error shapes on each
//! protocol's routes, mid-stream errors, and disconnects that free the
//! engine's sequences. The official SDKs drive the same routes against the
//! real model in tests/responses_client.py and tests/anthropic_client.py.

mod http_support;

use std::sync::atomic::Ordering;

use futures::StreamExt;
use http_support::*;
use kiln::config::ServerConfig;
use serde_json::{json, Value};

/// `event:` / `data:` pairs of a named-event SSE body.
fn named_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let (mut name, mut data) = (None, None);
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_string());
            } else if let Some(d) = line.strip_prefix("data: ") {
                data = Some(serde_json::from_str(d).expect("data is JSON"));
            } else {
                assert!(line.starts_with(':'), "unexpected SSE line {line:?}");
            }
        }
        if let (Some(n), Some(d)) = (name, data) {
            out.push((n, d));
        }
    }
    out
}

async fn post_text(base: &str, path: &str, body: &Value, key: Option<&str>) -> (u16, String) {
    let mut r = client().post(format!("{base}{path}")).json(body);
    if let Some(k) = key {
        r = r.header("x-api-key", k);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn data_config(dir: &std::path::Path) -> ServerConfig {
    ServerConfig { data_dir: dir.to_path_buf(), ..Default::default() }
}

#[tokio::test]
async fn responses_stream_order_and_the_stored_copy() {
    let dir = tempfile::tempdir().unwrap();
    let s = fake_server(data_config(dir.path())).await;
    let body = json!({"model": FAKE_MODEL, "input": "hi", "max_output_tokens": 4, "stream": true});
    let (status, text) = post_text(&s.base, "/v1/responses", &body, None).await;
    assert_eq!(status, 200, "{text}");
    let events = named_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
            "response.output_text.delta", "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
            "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete",
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!((data["type"].as_str(), data["sequence_number"].as_u64()), (Some(name.as_str()), Some(i as u64)));
    }
    let last = &events.last().unwrap().1["response"];
    assert_eq!(last["status"], "incomplete");
    assert_eq!(last["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(last["output"][0]["content"][0]["text"], "abcd");
    // The message cut by max_output_tokens is itself incomplete, in the
    // final object and in its output_item.done.
    assert_eq!(last["output"][0]["status"], "incomplete");
    let done = events.iter().find(|(n, _)| n == "response.output_item.done").unwrap();
    assert_eq!(done.1["item"]["status"], "incomplete");
    assert_eq!(last["usage"]["output_tokens"], 4);
    let (status, stored) = get_json(&s.base, &format!("/v1/responses/{}", last["id"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(&stored, last);
}

#[tokio::test]
async fn responses_errors_and_the_store_switched_off() {
    let s = fake_server(ServerConfig { data_dir: Default::default(), ..Default::default() }).await;
    let (status, body) = post_json(&s.base, "/v1/responses", &json!({"model": FAKE_MODEL, "input": "hi", "max_output_tokens": 2})).await;
    assert_eq!(status, 200, "{body}");
    let id = body["id"].as_str().unwrap();
    let (status, e) = get_json(&s.base, &format!("/v1/responses/{id}")).await;
    assert_error(status, &e, 404, "invalid_request_error", None, None);
    let prev = json!({"model": FAKE_MODEL, "input": "hi", "previous_response_id": id});
    let (status, e) = post_json(&s.base, "/v1/responses", &prev).await;
    assert_error(status, &e, 400, "invalid_request_error", None, Some("previous_response_id"));
    for (extra, param) in [
        (json!({"tools": [{"type": "file_search"}]}), "tools[0].type"),
        (json!({"include": ["x"]}), "include"),
        (json!({"input": 3}), "input"),
        (json!({"text": {"format": {"type": "yaml"}}}), "text.format"),
        (json!({"max_output_tokens": 0}), "max_output_tokens"),
    ] {
        let mut body = json!({"model": FAKE_MODEL, "input": "hi"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, e) = post_json(&s.base, "/v1/responses", &body).await;
        assert_eq!((status, e["error"]["param"].as_str()), (400, Some(param)), "{e}");
    }
}

#[tokio::test]
async fn responses_accept_the_defaults_they_echo() {
    // What agents such as Codex CLI send on every request: no extra output
    // (`include: []`), the default truncation the response object itself
    // reports, and a prompt-cache routing key (kiln's prefix cache is
    // automatic). None of these may be a 400.
    let s = fake_server(ServerConfig::default()).await;
    let body = json!({"model": FAKE_MODEL, "input": "hi", "max_output_tokens": 2, "include": [],
        "truncation": "disabled", "prompt_cache_key": "conv-1"});
    let (status, r) = post_json(&s.base, "/v1/responses", &body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["truncation"], "disabled");
    // A truncation kiln does not do is still refused, naming the field.
    for (field, value) in [("truncation", json!("auto")), ("prompt_cache_key", json!(3))] {
        let mut bad = json!({"model": FAKE_MODEL, "input": "hi", "max_output_tokens": 2});
        bad[field] = value;
        let (status, e) = post_json(&s.base, "/v1/responses", &bad).await;
        assert_eq!((status, e["error"]["param"].as_str()), (400, Some(field)), "{e}");
    }
}

#[tokio::test]
async fn responses_mid_stream_error_event() {
    let s = fake_server(ServerConfig::default()).await;
    let body = json!({"model": FAKE_MODEL, "input": "FAIL", "max_output_tokens": 8, "stream": true});
    let (_, text) = post_text(&s.base, "/v1/responses", &body, None).await;
    let events = named_events(&text);
    let (name, data) = events.last().unwrap();
    assert_eq!((name.as_str(), data["code"].as_str()), ("error", Some("engine_error")), "{text}");
    assert!(!events.iter().any(|(n, _)| n == "response.completed"));
}

#[tokio::test]
async fn messages_stream_and_whole_answer_agree() {
    let s = fake_server(ServerConfig::default()).await;
    let body = json!({"model": FAKE_MODEL, "max_tokens": 3, "system": "sys", "messages": [{"role": "user", "content": "hi"}]});
    let (status, whole) = post_json(&s.base, "/v1/messages", &body).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["content"], json!([{"type": "text", "text": "abc"}]));
    assert_eq!((whole["stop_reason"].as_str(), whole["usage"]["output_tokens"].as_u64()), (Some("max_tokens"), Some(3)));
    // The fake engine reports one cached prompt token.
    assert_eq!(whole["usage"]["cache_read_input_tokens"], 1);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (_, text) = post_text(&s.base, "/v1/messages", &streamed, None).await;
    let names: Vec<String> = named_events(&text).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta", "content_block_delta",
            "content_block_stop", "message_delta", "message_stop"]
    );
    let (status, count) = post_json(&s.base, "/v1/messages/count_tokens", &json!({"model": FAKE_MODEL, "system": "sys", "messages": body["messages"]})).await;
    assert_eq!(status, 200);
    let prompt = whole["usage"]["input_tokens"].as_u64().unwrap() + 1;
    assert_eq!(count["input_tokens"].as_u64(), Some(prompt));
}

fn assert_anthropic_error(status: u16, text: &str, want_status: u16, want_type: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("JSON error body expected, got {text:?}"));
    assert_eq!(status, want_status, "{text}");
    assert_eq!(v["type"], "error", "{text}");
    assert_eq!(v["error"]["type"], want_type, "{text}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{text}");
}

#[tokio::test]
async fn messages_errors_have_anthropics_shape() {
    let config = ServerConfig { api_keys: vec!["sk-ant".into()], max_body_bytes: 4096, ..Default::default() };
    let s = fake_server(config).await;
    let ok = json!({"model": FAKE_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    let (status, text) = post_text(&s.base, "/v1/messages", &ok, None).await;
    assert_anthropic_error(status, &text, 401, "authentication_error");
    let (status, text) = post_text(&s.base, "/v1/messages", &ok, Some("sk-wrong")).await;
    assert_anthropic_error(status, &text, 401, "authentication_error");
    let (status, _) = post_text(&s.base, "/v1/messages", &ok, Some("sk-ant")).await;
    assert_eq!(status, 200);
    let mut no_max = ok.clone();
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let (status, text) = post_text(&s.base, "/v1/messages", &no_max, Some("sk-ant")).await;
    assert_anthropic_error(status, &text, 400, "invalid_request_error");
    let mut doc = ok.clone();
    doc["messages"][0]["content"] = json!([{"type": "document", "source": {}}]);
    let (status, text) = post_text(&s.base, "/v1/messages", &doc, Some("sk-ant")).await;
    assert_anthropic_error(status, &text, 400, "invalid_request_error");
    assert!(text.contains("'document'"), "{text}");
    // Anthropic's tools take an object schema: a tool whose input_schema is
    // another type (or has no type) could only produce an `input` that is
    // not an object or does not match it.
    for schema in [json!({"type": "string"}), json!({"properties": {"a": {"type": "string"}}})] {
        let mut tool = ok.clone();
        tool["tools"] = json!([{"name": "f", "input_schema": schema}]);
        let (status, text) = post_text(&s.base, "/v1/messages", &tool, Some("sk-ant")).await;
        assert_anthropic_error(status, &text, 400, "invalid_request_error");
        assert!(text.contains("tools.0.input_schema.type"), "{text}");
    }
    // A text block without text, or a user message with no blocks, is a
    // 400 naming it (as in `system`), not a turn silently dropped or emptied.
    for (content, param) in [(json!([{"type": "text"}]), "messages.0.content.0.text"), (json!([]), "messages.0.content")] {
        let mut empty = ok.clone();
        empty["messages"][0]["content"] = content;
        let (status, text) = post_text(&s.base, "/v1/messages", &empty, Some("sk-ant")).await;
        assert_anthropic_error(status, &text, 400, "invalid_request_error");
        assert!(text.contains(param), "{text}");
    }
    let mut model = ok.clone();
    model["model"] = json!("nope");
    let (status, text) = post_text(&s.base, "/v1/messages", &model, Some("sk-ant")).await;
    assert_anthropic_error(status, &text, 404, "not_found_error");
    let mut big = ok.clone();
    big["messages"][0]["content"] = json!("x".repeat(8000));
    let (status, text) = post_text(&s.base, "/v1/messages", &big, Some("sk-ant")).await;
    assert_anthropic_error(status, &text, 413, "request_too_large");
    // Other routes keep OpenAI's shape.
    let (status, text) = post_text(&s.base, "/v1/responses", &json!({"model": "nope", "input": "x"}), Some("sk-ant")).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_error(status, &v, 404, "invalid_request_error", Some("model_not_found"), Some("model"));
}

#[tokio::test]
async fn messages_mid_stream_error_is_an_error_event() {
    let s = fake_server(ServerConfig::default()).await;
    let body = json!({"model": FAKE_MODEL, "max_tokens": 8, "stream": true, "messages": [{"role": "user", "content": "FAIL"}]});
    let (_, text) = post_text(&s.base, "/v1/messages", &body, None).await;
    let (name, data) = named_events(&text).pop().unwrap();
    assert_eq!(name, "error");
    assert_eq!((data["type"].as_str(), data["error"]["type"].as_str()), (Some("error"), Some("api_error")), "{data}");
}

#[tokio::test]
async fn disconnects_free_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let s = fake_server(data_config(dir.path())).await;
    let bodies = [
        ("/v1/responses", json!({"model": FAKE_MODEL, "input": "SLOW", "max_output_tokens": 30, "stream": true})),
        ("/v1/messages", json!({"model": FAKE_MODEL, "max_tokens": 30, "stream": true, "messages": [{"role": "user", "content": "SLOW"}]})),
    ];
    for (path, body) in bodies {
        let r = client().post(format!("{}{path}", s.base)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let mut stream = r.bytes_stream();
        let mut seen = 0;
        while seen < 8 {
            seen += stream.next().await.unwrap().unwrap().iter().filter(|&&b| b == b'\n').count();
        }
        assert_eq!(s.engine.live.load(Ordering::SeqCst), 1, "{path}");
        drop(stream);
        assert!(eventually(5, || s.engine.live.load(Ordering::SeqCst) == 0).await, "{path}: a disconnect aborts the sequence");
    }
}
