//! vLLM's metric names beside kiln's own, so that dashboards, alerts and
//! autoscalers written for vLLM (Grafana boards, KEDA / HPA on
//! `vllm:num_requests_waiting`, the Gateway API inference extension) read
//! kiln unchanged.
//!
//! Names, types, units, help texts' meaning and histogram buckets follow
//! vLLM v1's Prometheus logger (vllm/v1/metrics/loggers.py). vLLM's
//! `prometheus_client` appends `_total` to counters, so its counter
//! `vllm:prompt_tokens` is scraped as `vllm:prompt_tokens_total`; the names
//! here are the scraped ones. Every sample carries `model_name` (the served
//! name) and `engine="0"` (kiln runs one engine per model).
//!
//! What is counted where: request metrics (`request_success`, latencies,
//! per-request token histograms, token counters) per engine sequence, i.e.
//! per choice, as vLLM v1 counts each of `n` child requests; gauges and the
//! prefix-cache and preemption counters are read from the engine at scrape
//! time; `iteration_tokens_total` is fed by the engine thread after each
//! forward pass (warm-up included, as vLLM counts every step).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use super::port::EngineGauges;
use crate::engine::{FinishReason, SeqUsage};

/// The metadata every vllm:* series is registered with.
const META: Metadata<'static> = Metadata::new("kiln::api::vllm", Level::INFO, Some(module_path!()));

/// `vllm:time_to_first_token_seconds` buckets (seconds).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
    640.0, 2560.0,
];
/// `vllm:time_per_output_token_seconds` buckets (seconds).
const TPOT_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
/// Buckets of the whole-request latencies (e2e, queue, prefill, decode, inference), seconds.
const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
    7680.0,
];
/// `vllm:iteration_tokens_total` buckets (tokens per engine step).
const ITERATION_TOKEN_BUCKETS: &[f64] = &[1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];

/// Names of the whole-request latency histograms.
const REQUEST_LATENCIES: &[&str] = &[
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
];
/// Names of the per-request token-count histograms (1-2-5 buckets up to max_model_len).
const REQUEST_TOKENS: &[&str] = &["vllm:request_prompt_tokens", "vllm:request_generation_tokens"];

/// 1, 2, 5, 10, 20, 50, ... up to `max` inclusive (vLLM's `build_1_2_5_buckets`).
pub fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut scale = 1usize;
    loop {
        for m in [1usize, 2, 5] {
            match m.checked_mul(scale) {
                Some(v) if v <= max => out.push(v as f64),
                _ => return out,
            }
        }
        scale = match scale.checked_mul(10) {
            Some(s) => s,
            None => return out,
        };
    }
}

/// Adds vLLM's buckets to a recorder's builder. `max_model_len` bounds the
/// token-count histograms' buckets (the largest of the served models).
pub fn with_buckets(mut b: PrometheusBuilder, max_model_len: usize) -> PrometheusBuilder {
    let token_buckets = buckets_1_2_5(max_model_len.max(1));
    let mut set = |name: &str, buckets: &[f64]| {
        let builder = std::mem::replace(&mut b, PrometheusBuilder::new());
        b = builder.set_buckets_for_metric(Matcher::Full(name.into()), buckets).expect("non-empty buckets");
    };
    set("vllm:time_to_first_token_seconds", TTFT_BUCKETS);
    set("vllm:time_per_output_token_seconds", TPOT_BUCKETS);
    set("vllm:iteration_tokens_total", ITERATION_TOKEN_BUCKETS);
    for name in REQUEST_LATENCIES {
        set(name, REQUEST_LATENCY_BUCKETS);
    }
    for name in REQUEST_TOKENS {
        set(name, &token_buckets);
    }
    b
}

/// One model's vLLM-named handles.
pub struct VllmMetrics {
    recorder: Arc<PrometheusRecorder>,
    model: String,
    running: Gauge,
    waiting: Gauge,
    kv_cache_usage: Gauge,
    gpu_cache_usage: Gauge,
    prefix_queries: Counter,
    prefix_hits: Counter,
    preemptions: Counter,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    success: [Counter; 3],
    ttft: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    queue: Histogram,
    inference: Histogram,
    prefill: Histogram,
    decode: Histogram,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
    iteration_tokens: Histogram,
    /// `vllm:cache_config_info`, registered at the first scrape that knows the block size.
    cache_config: OnceLock<Gauge>,
}

impl VllmMetrics {
    /// Registers model `model`'s vLLM metrics on `recorder`.
    pub fn new(recorder: &Arc<PrometheusRecorder>, model: &str) -> Self {
        let r = recorder.as_ref();
        let labels = || vec![Label::new("model_name", model.to_string()), Label::new("engine", "0")];
        let key = |name: &'static str| Key::from_parts(name, labels());
        let counter = |name: &'static str, help: &'static str| {
            r.describe_counter(name.into(), None, SharedString::const_str(help));
            r.register_counter(&key(name), &META)
        };
        let gauge = |name: &'static str, help: &'static str| {
            r.describe_gauge(name.into(), None, SharedString::const_str(help));
            r.register_gauge(&key(name), &META)
        };
        let histogram = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            r.describe_histogram(name.into(), unit, SharedString::const_str(help));
            r.register_histogram(&key(name), &META)
        };
        r.describe_counter("vllm:request_success_total".into(), None, "Count of successfully processed requests.".into());
        r.describe_gauge("vllm:cache_config_info".into(), None, "Information of the LLMEngine CacheConfig".into());
        let success = [FinishReason::Stop, FinishReason::Length, FinishReason::Abort].map(|reason| {
            let mut l = labels();
            l.push(Label::new("finished_reason", reason.as_str()));
            r.register_counter(&Key::from_parts("vllm:request_success_total", l), &META)
        });
        let s = Some(Unit::Seconds);
        VllmMetrics {
            running: gauge("vllm:num_requests_running", "Number of requests in model execution batches."),
            waiting: gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
            kv_cache_usage: gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
            gpu_cache_usage: gauge(
                "vllm:gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
            ),
            prefix_queries: counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens."),
            prefix_hits: counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens."),
            preemptions: counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine."),
            prompt_tokens: counter("vllm:prompt_tokens_total", "Number of prefill tokens processed."),
            generation_tokens: counter("vllm:generation_tokens_total", "Number of generation tokens processed."),
            success,
            ttft: histogram("vllm:time_to_first_token_seconds", s, "Histogram of time to first token in seconds."),
            tpot: histogram("vllm:time_per_output_token_seconds", s, "Histogram of time per output token in seconds."),
            e2e: histogram("vllm:e2e_request_latency_seconds", s, "Histogram of e2e request latency in seconds."),
            queue: histogram("vllm:request_queue_time_seconds", s, "Histogram of time spent in WAITING phase for request."),
            inference: histogram("vllm:request_inference_time_seconds", s, "Histogram of time spent in RUNNING phase for request."),
            prefill: histogram("vllm:request_prefill_time_seconds", s, "Histogram of time spent in PREFILL phase for request."),
            decode: histogram("vllm:request_decode_time_seconds", s, "Histogram of time spent in DECODE phase for request."),
            request_prompt_tokens: histogram("vllm:request_prompt_tokens", None, "Number of prefill tokens processed."),
            request_generation_tokens: histogram("vllm:request_generation_tokens", None, "Number of generation tokens processed."),
            iteration_tokens: histogram("vllm:iteration_tokens_total", None, "Histogram of number of tokens per engine_step."),
            cache_config: OnceLock::new(),
            recorder: recorder.clone(),
            model: model.to_string(),
        }
    }

    /// The handle the engine thread records each step's token count on.
    pub fn iteration_tokens(&self) -> Histogram {
        self.iteration_tokens.clone()
    }

    /// A sequence's first token (or its end without one), `ttft` after the
    /// request arrived; also counts its prompt as processed.
    pub fn on_first_token(&self, ttft: Duration, prompt_tokens: usize) {
        self.ttft.record(ttft.as_secs_f64());
        self.prompt_tokens.increment(prompt_tokens as u64);
    }

    /// A finished embedding (pooling) request of `prompt_tokens` tokens over
    /// all its inputs: vLLM counts a pooling model's inputs as prefill
    /// tokens (`vllm:prompt_tokens_total`, `vllm:request_prompt_tokens`).
    pub fn on_pooled(&self, prompt_tokens: usize) {
        self.prompt_tokens.increment(prompt_tokens as u64);
        self.request_prompt_tokens.record(prompt_tokens as f64);
    }

    /// One generated token; `since_previous`: time since the sequence's
    /// previous token (None for its first).
    pub fn on_token(&self, since_previous: Option<Duration>) {
        self.generation_tokens.increment(1);
        if let Some(d) = since_previous {
            self.tpot.record(d.as_secs_f64());
        }
    }

    /// Tokens the engine generated without sending them (a stop id).
    pub fn on_unsent_tokens(&self, n: usize) {
        self.generation_tokens.increment(n as u64);
    }

    /// A sequence finished (`reason` stop or length), `e2e` after arrival.
    pub fn on_finished(&self, reason: FinishReason, e2e: Duration, usage: &SeqUsage) {
        self.count_finished(reason);
        let t = usage.timing;
        self.e2e.record(e2e.as_secs_f64());
        self.queue.record(t.queued.as_secs_f64());
        self.prefill.record(t.prefill.as_secs_f64());
        self.decode.record(t.decode.as_secs_f64());
        self.inference.record((t.prefill + t.decode).as_secs_f64());
        self.request_prompt_tokens.record(usage.prompt_tokens as f64);
        self.request_generation_tokens.record(usage.completion_tokens as f64);
    }

    /// Counts one sequence under `vllm:request_success_total{finished_reason}`.
    pub fn count_finished(&self, reason: FinishReason) {
        let i = match reason {
            FinishReason::Stop => 0,
            FinishReason::Length => 1,
            FinishReason::Abort => 2,
        };
        self.success[i].increment(1);
    }

    /// Sets the engine-read gauges and counters (at scrape time).
    pub fn set_gauges(&self, g: &EngineGauges) {
        self.running.set(g.num_running as f64);
        self.waiting.set(g.num_waiting as f64);
        let usage = if g.kv_blocks_total == 0 { 0.0 } else { g.kv_blocks_used as f64 / g.kv_blocks_total as f64 };
        self.kv_cache_usage.set(usage);
        self.gpu_cache_usage.set(usage);
        self.prefix_queries.absolute(g.prefix_cache_queries);
        self.prefix_hits.absolute(g.prefix_cache_hits);
        self.preemptions.absolute(g.num_preemptions);
        if g.block_size > 0 {
            self.cache_config.get_or_init(|| {
                let labels = vec![
                    Label::new("model_name", self.model.clone()),
                    Label::new("engine", "0"),
                    Label::new("block_size", g.block_size.to_string()),
                    Label::new("num_gpu_blocks", g.kv_blocks_total.to_string()),
                ];
                let gauge = self.recorder.register_gauge(&Key::from_parts("vllm:cache_config_info", labels), &META);
                gauge.set(1.0);
                gauge
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_two_five_buckets_as_vllm_builds_them() {
        // vLLM's docstring: build_1_2_5_buckets(100) == [1, 2, 5, 10, 20, 50, 100]
        assert_eq!(buckets_1_2_5(100), [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]);
        assert_eq!(buckets_1_2_5(512), [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]);
        assert_eq!(buckets_1_2_5(1), [1.0]);
    }
}
