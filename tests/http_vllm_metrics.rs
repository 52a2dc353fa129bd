//! Issue 15 part 1: vLLM's metric names on /metrics of a real `kiln serve`
//! (default model), scraped before and after known traffic. Every name has
//! vLLM's type, its `model_name` label, vLLM's buckets, and its change over
//! the traffic agrees with what the responses themselves reported (usage,
//! finish_reason), or with kiln's own engine counters.

mod http_support;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use http_support::server::{KilnServer, SMALL};
use http_support::*;
use serde_json::{json, Value};

const MODEL: &str = "kiln-test";

/// The samples and `# TYPE`s of a Prometheus text page.
struct Scrape {
    types: HashMap<String, String>,
    /// (name, labels as written between braces, value)
    samples: Vec<(String, String, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut types = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let (head, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = match head.split_once('{') {
                    Some((n, l)) => (n, l.trim_end_matches('}')),
                    None => (head, ""),
                };
                samples.push((name.to_string(), labels.to_string(), value.parse().unwrap()));
            }
        }
        Scrape { types, samples }
    }

    /// The sum of `name`'s samples whose labels contain every `want` pair.
    fn value(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let hits: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
            .map(|s| s.2)
            .collect();
        assert!(!hits.is_empty(), "no sample {name} {want:?}");
        hits.iter().sum()
    }

    fn model(&self, name: &str) -> f64 {
        self.value(name, &[("model_name", MODEL)])
    }

    /// The `le` bounds of a histogram's buckets, in order.
    fn buckets(&self, name: &str) -> Vec<String> {
        let bucket = format!("{name}_bucket");
        self.samples
            .iter()
            .filter(|(n, _, _)| *n == bucket)
            .map(|(_, l, _)| l.split("le=\"").nth(1).unwrap().trim_end_matches('"').to_string())
            .collect()
    }
}

async fn scrape(base: &str) -> Scrape {
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    Scrape::parse(&r.text().await.unwrap())
}

/// Usage and finish reason of one chat request (streamed or not).
struct Outcome {
    prompt: f64,
    cached: f64,
    completion: f64,
    finish: String,
}

async fn chat(base: &str, content: &str, max_tokens: usize, stop: Option<&str>, stream: bool) -> Outcome {
    let mut req = json!({"model": MODEL, "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true});
    if let Some(s) = stop {
        req["stop"] = json!([s]);
    }
    if stream {
        req["stream"] = json!(true);
        req["stream_options"] = json!({"include_usage": true});
    }
    let r = client().post(format!("{base}/v1/chat/completions")).json(&req).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (finish, usage) = if stream {
        let chunks = SseBody::parse(&r.text().await.unwrap()).chunks();
        let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str().map(String::from)).unwrap();
        (finish, chunks.last().unwrap()["usage"].clone())
    } else {
        let body: Value = r.json().await.unwrap();
        (body["choices"][0]["finish_reason"].as_str().unwrap().to_string(), body["usage"].clone())
    };
    let cached = usage["prompt_tokens_details"]["cached_tokens"].as_f64().unwrap_or(0.0);
    Outcome { prompt: usage["prompt_tokens"].as_f64().unwrap(), cached, completion: usage["completion_tokens"].as_f64().unwrap(), finish }
}

const GAUGES: &[&str] = &[
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:cache_config_info",
];
const COUNTERS: &[&str] = &[
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
];
const HISTOGRAMS: &[&str] = &[
    "vllm:time_to_first_token_seconds",
    "vllm:time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:iteration_tokens_total",
];

#[tokio::test]
async fn vllm_metrics_agree_with_the_traffic() {
    let mut args = SMALL.to_vec();
    args.extend(["--served-model-name", MODEL]);
    let Some(s) = KilnServer::start(&args).await else { return };
    let before = scrape(&s.base).await;

    // Known traffic: lengths and stops, streamed and not, one prompt twice
    // (a prefix-cache hit), and one stream the client walks away from.
    let mut outcomes = Vec::new();
    for (content, max, stop, stream) in [
        ("Tell me about the sea.", 6, None, false),
        ("Tell me about the sea.", 5, None, true),
        ("Name three colours.", 7, None, false),
        ("Write a sentence about cats.", 16, Some(" "), false),
        ("Write a sentence about dogs.", 16, Some(" "), true),
    ] {
        outcomes.push(chat(&s.base, content, max, stop, stream).await);
    }
    let after = scrape(&s.base).await;
    // Names, types, labels.
    for (names, kind) in [(GAUGES, "gauge"), (COUNTERS, "counter"), (HISTOGRAMS, "histogram")] {
        for name in names {
            assert_eq!(after.types.get(*name).map(String::as_str), Some(kind), "# TYPE of {name}");
            let suffix = if kind == "histogram" { "_count" } else { "" };
            after.model(&format!("{name}{suffix}"));
        }
    }
    for (name, labels, _) in &after.samples {
        if name.starts_with("vllm:") {
            assert!(labels.contains(&format!("model_name=\"{MODEL}\"")), "{name}{{{labels}}} lacks model_name");
        }
    }
    // vLLM's buckets (vllm/v1/metrics/loggers.py), +Inf last.
    let ttft = after.buckets("vllm:time_to_first_token_seconds");
    assert_eq!(ttft.first().map(String::as_str), Some("0.001"));
    assert_eq!(ttft.len(), 23, "{ttft:?}");
    let latency = after.buckets("vllm:e2e_request_latency_seconds");
    assert_eq!((latency[0].as_str(), latency[20].as_str(), latency[21].as_str()), ("0.3", "7680", "+Inf"));
    assert_eq!(after.buckets("vllm:request_prompt_tokens"), ["1", "2", "5", "10", "20", "50", "100", "200", "500", "+Inf"]);
    assert_eq!(after.buckets("vllm:iteration_tokens_total").len(), 14);

    let d = |name: &str| after.model(name) - before.model(name);
    let n = outcomes.len() as f64;
    let prompt: f64 = outcomes.iter().map(|o| o.prompt).sum();
    let cached: f64 = outcomes.iter().map(|o| o.cached).sum();
    let completion: f64 = outcomes.iter().map(|o| o.completion).sum();
    let stops = outcomes.iter().filter(|o| o.finish == "stop").count() as f64;
    assert!(stops == 2.0 && cached > 0.0, "the traffic had its stops and its cache hit: {stops} {cached}");
    let success = |reason: &str| {
        let want = [("model_name", MODEL), ("finished_reason", reason)];
        after.value("vllm:request_success_total", &want) - before.value("vllm:request_success_total", &want)
    };
    assert_eq!(success("stop"), stops);
    assert_eq!(success("length"), n - stops);
    assert_eq!(success("abort"), 0.0);

    // Per-request histograms count the finished requests.
    for h in ["e2e_request_latency_seconds", "request_queue_time_seconds", "request_prefill_time_seconds",
              "request_decode_time_seconds", "request_inference_time_seconds", "request_prompt_tokens", "request_generation_tokens"] {
        assert_eq!(d(&format!("vllm:{h}_count")), n, "{h}");
    }
    assert_eq!(d("vllm:request_prompt_tokens_sum"), prompt);
    assert_eq!(d("vllm:request_generation_tokens_sum"), completion);
    assert_eq!(d("vllm:time_to_first_token_seconds_count"), n);
    assert_eq!(d("vllm:prompt_tokens_total"), prompt);
    assert_eq!(d("vllm:generation_tokens_total"), completion);
    // ignore_eos: every token was sent, and all but each first one was timed.
    assert_eq!(d("vllm:time_per_output_token_seconds_count"), completion - n);
    // The phases lie inside each request's end-to-end time.
    let phases = d("vllm:request_queue_time_seconds_sum") + d("vllm:request_prefill_time_seconds_sum")
        + d("vllm:request_decode_time_seconds_sum");
    assert!(phases <= d("vllm:e2e_request_latency_seconds_sum"), "{phases}");

    // Engine-side numbers agree with kiln's own engine counters.
    let kiln = |s: &Scrape, name: &str| s.value(name, &[("model", MODEL)]);
    assert_eq!(d("vllm:iteration_tokens_total_count"), kiln(&after, "kiln_engine_steps_total") - kiln(&before, "kiln_engine_steps_total"));
    assert_eq!(d("vllm:num_preemptions_total"), 0.0);
    assert_eq!(d("vllm:prefix_cache_hits_total"), cached);
    assert_eq!(d("vllm:prefix_cache_queries_total"), prompt);
    // No preemption: the steps computed every uncached prompt token once and
    // fed back every sampled token but each sequence's last.
    assert_eq!(d("vllm:iteration_tokens_total_sum"), prompt - cached + completion - n);
    let blocks = kiln(&after, "kiln_kv_blocks_total");
    let info = after.value("vllm:cache_config_info", &[("block_size", "16"), ("num_gpu_blocks", &blocks.to_string())]);
    assert_eq!(info, 1.0);
    assert_eq!(after.model("vllm:num_requests_waiting"), 0.0);
    let usage = after.model("vllm:kv_cache_usage_perc");
    assert_eq!(usage, after.model("vllm:gpu_cache_usage_perc"));
    assert_eq!(usage, kiln(&after, "kiln_kv_cache_usage_ratio"));

    // A stream the client walks away from counts as aborted.
    let req = json!({"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 200, "ignore_eos": true, "stream": true});
    let r = client().post(format!("{}/v1/chat/completions", s.base)).json(&req).send().await.unwrap();
    let mut body = r.bytes_stream();
    let _ = tokio::time::timeout(Duration::from_secs(60), body.next()).await.expect("first chunk");
    drop(body);
    let abort = [("model_name", MODEL), ("finished_reason", "abort")];
    let mut last = scrape(&s.base).await;
    for _ in 0..600 {
        if last.value("vllm:request_success_total", &abort) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = scrape(&s.base).await;
    }
    assert_eq!(last.value("vllm:request_success_total", &abort), 1.0, "the stream the client left");
    assert_eq!(last.model("vllm:e2e_request_latency_seconds_count"), after.model("vllm:e2e_request_latency_seconds_count"));
}
