//! Every 400 of issue 4's list, as (body, param, code), shared by the
//! in-process tests and the tests against a real `kiln serve`.

use serde_json::{json, Value};

use super::{assert_error, post_json};

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
}

/// A user message longer than `ctx` tokens with any tokenizer.
pub fn long_text(ctx: usize) -> String {
    " hello".repeat(ctx + 8)
}

pub fn chat_errors(model: &str, ctx: usize) -> Vec<(Value, String, Option<&'static str>)> {
    let m = |extra: Value| {
        let mut base = chat_body(model);
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    };
    let image = json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]);
    let cases: Vec<(Value, &str, Option<&'static str>)> = vec![
        (m(json!({"temperature": 2.5})), "temperature", None),
        (m(json!({"temperature": "hot"})), "temperature", None),
        (m(json!({"top_p": 0})), "top_p", None),
        (m(json!({"top_p": 1.5})), "top_p", None),
        (m(json!({"top_k": -2})), "top_k", None),
        (m(json!({"frequency_penalty": 3})), "frequency_penalty", None),
        (m(json!({"presence_penalty": -2.5})), "presence_penalty", None),
        (m(json!({"n": 0})), "n", None),
        (m(json!({"n": 100000})), "n", None),
        (m(json!({"n": "two"})), "n", None),
        (m(json!({"max_tokens": 0})), "max_tokens", None),
        (m(json!({"max_tokens": -5})), "max_tokens", None),
        (m(json!({"max_completion_tokens": 1_000_000_000})), "max_completion_tokens", None),
        (m(json!({"max_tokens": ctx})), "max_tokens", Some("context_length_exceeded")),
        (m(json!({"stop": ["a", "b", "c", "d", "e"]})), "stop", None),
        (m(json!({"stop": ""})), "stop", None),
        (m(json!({"stop": ["ok", ""]})), "stop", None),
        (m(json!({"logit_bias": {"abc": 1}})), "logit_bias", None),
        (m(json!({"logit_bias": {"5": 101}})), "logit_bias", None),
        (m(json!({"logit_bias": {"99999999": 1}})), "logit_bias", None),
        (m(json!({"stop_token_ids": [99_999_999]})), "stop_token_ids", None),
        (m(json!({"logprobs": "yes"})), "logprobs", None),
        (m(json!({"top_logprobs": 3})), "top_logprobs", None),
        (m(json!({"logprobs": true, "top_logprobs": 21})), "top_logprobs", None),
        (m(json!({"stream_options": {"include_usage": true}})), "stream_options", None),
        (m(json!({"stream": true, "stream_options": {"continuous_usage_stats": true}})),
            "stream_options.continuous_usage_stats", Some("unsupported_parameter")),
        (m(json!({"response_format": {"type": "yaml"}})), "response_format", None),
        (m(json!({"response_format": {"type": "json_schema"}})), "response_format", None),
        (m(json!({"tools": [{"type": "code_interpreter"}]})), "tools[0].type", None),
        (m(json!({"tools": [{"type": "function", "function": {"name": "a b"}}]})), "tools[0].function.name", None),
        (m(json!({"tool_choice": "required"})), "tool_choice", None),
        (m(json!({"functions": [{"name": "f"}]})), "functions", Some("unsupported_parameter")),
        (m(json!({"frobnicate": 1})), "frobnicate", Some("unsupported_parameter")),
        (m(json!({"messages": []})), "messages", None),
        (m(json!({"messages": "hi"})), "messages", None),
        (m(json!({"messages": [{"role": "user"}]})), "messages[0].content", None),
        (m(json!({"messages": [{"content": "x"}]})), "messages[0].role", None),
        (m(json!({"messages": [{"role": "wizard", "content": "x"}]})), "messages[0].role", None),
        (m(json!({"messages": [{"role": "tool", "content": "x"}]})), "messages[0].tool_call_id", None),
        (m(json!({"messages": [{"role": "function", "content": "x"}]})), "messages[0].role", Some("unsupported_parameter")),
        (m(json!({"messages": [{"role": "user", "content": "x", "tool_calls": []}]})), "messages[0].tool_calls", None),
        (m(json!({"messages": [{"role": "assistant", "content": null}]})), "messages[0].content", None),
        (m(json!({"messages": image})), "messages[0].content[0].type", None),
        (m(json!({"messages": [{"role": "user", "content": long_text(ctx)}]})), "messages", Some("context_length_exceeded")),
        (json!({"messages": [{"role": "user", "content": "x"}]}), "model", None),
        (json!({"model": 7, "messages": [{"role": "user", "content": "x"}]}), "model", None),
    ];
    cases.into_iter().map(|(b, p, c)| (b, p.to_string(), c)).collect()
}

pub fn completion_errors(model: &str, ctx: usize) -> Vec<(Value, &'static str, Option<&'static str>)> {
    vec![
        (json!({"model": model, "prompt": ""}), "prompt", None),
        (json!({"model": model, "prompt": []}), "prompt", None),
        (json!({"model": model, "prompt": [[1], []]}), "prompt[1]", None),
        (json!({"model": model, "prompt": ["a", ""]}), "prompt[1]", None),
        (json!({"model": model, "prompt": [1, 99_999_999]}), "prompt", None),
        (json!({"model": model, "prompt": [1, -1]}), "prompt", None),
        (json!({"model": model, "prompt": {"x": 1}}), "prompt", None),
        (json!({"model": model}), "prompt", None),
        (json!({"model": model, "prompt": "x", "logprobs": 99}), "logprobs", None),
        (json!({"model": model, "prompt": "x", "suffix": "y"}), "suffix", Some("unsupported_parameter")),
        (json!({"model": model, "prompt": "x", "best_of": 2}), "best_of", Some("unsupported_parameter")),
        (json!({"model": model, "prompt": "x", "max_tokens": ctx}), "max_tokens", Some("context_length_exceeded")),
        (json!({"model": model, "prompt": long_text(ctx)}), "prompt", Some("context_length_exceeded")),
        (json!({"model": model, "prompt": "x", "temperature": -1}), "temperature", None),
    ]
}

/// Sends every case and checks status 400, type, code and param.
pub async fn assert_all_bad_requests(base: &str, model: &str, ctx: usize) {
    for (body, param, code) in chat_errors(model, ctx) {
        let (status, resp) = post_json(base, "/v1/chat/completions", &body).await;
        assert_error(status, &resp, 400, "invalid_request_error", code, Some(&param));
    }
    for (body, param, code) in completion_errors(model, ctx) {
        let (status, resp) = post_json(base, "/v1/completions", &body).await;
        assert_error(status, &resp, 400, "invalid_request_error", code, Some(param));
    }
    let long = json!({"model": model, "messages": [{"role": "user", "content": long_text(ctx)}]});
    let msg = post_json(base, "/v1/chat/completions", &long).await.1["error"]["message"].as_str().unwrap().to_string();
    let numbers: Vec<usize> = msg.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
    assert!(numbers.contains(&ctx) && numbers.iter().any(|&n| n > ctx), "both numbers in: {msg}");
}
