//! Prometheus metrics. The recorder belongs to the server state (no global
//! recorder): handles are registered on it directly and `render` produces
//! the text format for GET /metrics. Engine gauges are read at scrape time.

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use std::sync::Arc;

use super::port::EngineGauges;
use super::vllm_metrics::{self, VllmMetrics};

const META: Metadata<'static> = Metadata::new("kiln::api", Level::INFO, Some(module_path!()));

/// Latency buckets in seconds, from 1 ms to 5 minutes.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// One model's handles on a recorder that may be shared by every model of
/// the server: each sample but `kiln_requests_total` and
/// `kiln_num_requests_pending` carries a `model` label.
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_latency: Histogram,
    /// Seconds to compile a grammar (response_format schema or tool grammar).
    pub grammar_compile_time: Histogram,
    pub grammar_cache_hits: Counter,
    pub grammar_cache_misses: Counter,
    waiting: Gauge,
    running: Gauge,
    api_pending: Gauge,
    kv_used: Gauge,
    kv_total: Gauge,
    kv_usage: Gauge,
    prefix_queries: Counter,
    prefix_hits: Counter,
    prefix_hit_rate: Gauge,
    preemptions: Counter,
    steps: Counter,
    /// The same model under vLLM's names (see `vllm_metrics`).
    pub vllm: VllmMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Metrics of one model named "" on a recorder of their own.
    pub fn new() -> Self {
        Self::for_model(&Self::recorder(), "")
    }

    /// A recorder to share between the models of one server, for models
    /// of up to 4096 tokens of context (see `recorder_for`).
    pub fn recorder() -> Arc<PrometheusRecorder> {
        Self::recorder_for(4096)
    }

    /// A recorder whose vLLM per-request token histograms have buckets up
    /// to `max_model_len` (the largest context of the served models).
    pub fn recorder_for(max_model_len: usize) -> Arc<PrometheusRecorder> {
        // Full-name matchers (vLLM's buckets) sort before this suffix one.
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("non-empty buckets");
        Arc::new(vllm_metrics::with_buckets(builder, max_model_len).build_recorder())
    }

    /// The handles of generation model `model` on `recorder`.
    pub fn for_model(recorder: &Arc<PrometheusRecorder>, model: &str) -> Self {
        Self::for_model_task(recorder, model, true)
    }

    /// The handles of model `model` on `recorder`. An embedding model
    /// (`generates` false) exports no generation, grammar, KV-cache or
    /// prefix-cache series (it has none of those): their handles are no-ops.
    pub fn for_model_task(recorder: &Arc<PrometheusRecorder>, model: &str, generates: bool) -> Self {
        let handle = recorder.handle();
        let r = recorder.as_ref();
        let key = |name: &'static str| Key::from_parts(name, vec![Label::new("model", model.to_string())]);
        let counter = |name: &'static str, help: &'static str| {
            r.describe_counter(name.into(), None, SharedString::const_str(help));
            r.register_counter(&key(name), &META)
        };
        let gauge = |name: &'static str, help: &'static str| {
            r.describe_gauge(name.into(), None, SharedString::const_str(help));
            r.register_gauge(&key(name), &META)
        };
        let histogram = |name: &'static str, help: &'static str| {
            r.describe_histogram(name.into(), Some(Unit::Seconds), SharedString::const_str(help));
            r.register_histogram(&key(name), &META)
        };
        let gen_counter = |name, help| if generates { counter(name, help) } else { Counter::noop() };
        let gen_gauge = |name, help| if generates { gauge(name, help) } else { Gauge::noop() };
        let gen_histogram = |name, help| if generates { histogram(name, help) } else { Histogram::noop() };
        r.describe_counter("kiln_requests_total".into(), None, "HTTP requests by route and status".into());
        r.describe_gauge("kiln_num_requests_pending".into(), None, "Admitted requests that have no token yet".into());
        Metrics {
            prompt_tokens: counter("kiln_prompt_tokens_total", "Prompt tokens of finished requests"),
            generation_tokens: gen_counter("kiln_generation_tokens_total", "Generated tokens"),
            time_to_first_token: gen_histogram("kiln_time_to_first_token_seconds", "Time from arrival to the first token"),
            inter_token_latency: gen_histogram("kiln_inter_token_latency_seconds", "Time between consecutive tokens"),
            e2e_latency: histogram("kiln_e2e_request_latency_seconds", "Time from arrival to the last byte"),
            grammar_compile_time: gen_histogram("kiln_grammar_compile_seconds", "Time to compile a grammar (cache misses)"),
            grammar_cache_hits: gen_counter("kiln_grammar_cache_hits_total", "Grammars served from the compiled-grammar cache"),
            grammar_cache_misses: gen_counter("kiln_grammar_cache_misses_total", "Grammars compiled (not in the cache)"),
            waiting: gauge("kiln_num_requests_waiting", "Sequences waiting in the engine"),
            running: gauge("kiln_num_requests_running", "Sequences running in the engine"),
            api_pending: r.register_gauge(&Key::from_static_name("kiln_num_requests_pending"), &META),
            kv_used: gen_gauge("kiln_kv_blocks_used", "KV cache blocks in use"),
            kv_total: gen_gauge("kiln_kv_blocks_total", "KV cache blocks in the pool"),
            kv_usage: gen_gauge("kiln_kv_cache_usage_ratio", "KV cache blocks used / total"),
            prefix_queries: gen_counter("kiln_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache"),
            prefix_hits: gen_counter("kiln_prefix_cache_hits_total", "Prompt tokens found in the prefix cache"),
            prefix_hit_rate: gen_gauge("kiln_prefix_cache_hit_rate", "Prefix cache hits / queries"),
            preemptions: gen_counter("kiln_num_preemptions_total", "Sequences preempted for lack of KV blocks"),
            steps: counter("kiln_engine_steps_total", "Engine steps run"),
            vllm: VllmMetrics::new(recorder, model),
            recorder: recorder.clone(),
            handle,
        }
    }

    /// Counts one finished HTTP request.
    pub fn count_request(&self, route: &str, status: u16) {
        let labels = vec![Label::new("route", route.to_string()), Label::new("status", status.to_string())];
        self.recorder.register_counter(&Key::from_parts("kiln_requests_total", labels), &META).increment(1);
    }

    /// The Prometheus text format, with this model's engine gauges as of now.
    pub fn render(&self, g: EngineGauges, api_pending: usize) -> String {
        self.set_gauges(g, api_pending);
        self.handle.render()
    }

    /// The whole recorder's text (every model sharing it), as last set.
    pub fn render_all(&self) -> String {
        self.handle.render()
    }

    /// Sets this model's engine gauges (read at scrape time).
    pub fn set_gauges(&self, g: EngineGauges, api_pending: usize) {
        self.waiting.set(g.num_waiting as f64);
        self.running.set(g.num_running as f64);
        self.api_pending.set(api_pending as f64);
        self.kv_used.set(g.kv_blocks_used as f64);
        self.kv_total.set(g.kv_blocks_total as f64);
        self.kv_usage.set(ratio(g.kv_blocks_used as u64, g.kv_blocks_total as u64));
        self.prefix_queries.absolute(g.prefix_cache_queries);
        self.prefix_hits.absolute(g.prefix_cache_hits);
        self.prefix_hit_rate.set(ratio(g.prefix_cache_hits, g.prefix_cache_queries));
        self.preemptions.absolute(g.num_preemptions);
        self.steps.absolute(g.steps);
        self.vllm.set_gauges(&g);
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the first sample of `name` (any labels) in Prometheus text.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = match rest.strip_prefix('{') {
                Some(r) => r.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            rest.trim().parse().ok()
        })
    }

    #[test]
    fn renders_counters_gauges_histograms() {
        let m = Metrics::new();
        m.count_request("/v1/chat/completions", 200);
        m.count_request("/v1/chat/completions", 200);
        m.generation_tokens.increment(7);
        m.time_to_first_token.record(0.02);
        let g = EngineGauges { kv_blocks_used: 3, kv_blocks_total: 12, prefix_cache_queries: 4, prefix_cache_hits: 1, ..Default::default() };
        let text = m.render(g, 2);
        assert!(text.contains(r#"kiln_requests_total{route="/v1/chat/completions",status="200"} 2"#), "{text}");
        assert_eq!(sample(&text, "kiln_generation_tokens_total"), Some(7.0));
        assert_eq!(sample(&text, "kiln_kv_blocks_used"), Some(3.0));
        assert_eq!(sample(&text, "kiln_kv_cache_usage_ratio"), Some(0.25));
        assert_eq!(sample(&text, "kiln_prefix_cache_hit_rate"), Some(0.25));
        assert_eq!(sample(&text, "kiln_num_requests_pending"), Some(2.0));
        assert!(text.contains(r#"kiln_time_to_first_token_seconds_bucket{model="",le="0.025"} 1"#), "{text}");
    }

    #[test]
    fn models_sharing_a_recorder_are_labelled() {
        let r = Metrics::recorder();
        let (a, b) = (Metrics::for_model(&r, "chat"), Metrics::for_model(&r, "embed"));
        a.generation_tokens.increment(3);
        b.prompt_tokens.increment(9);
        a.set_gauges(EngineGauges { kv_blocks_total: 10, ..Default::default() }, 1);
        let text = b.render(EngineGauges::default(), 1);
        assert!(text.contains(r#"kiln_generation_tokens_total{model="chat"} 3"#), "{text}");
        assert!(text.contains(r#"kiln_prompt_tokens_total{model="embed"} 9"#), "{text}");
        assert!(text.contains(r#"kiln_kv_blocks_total{model="chat"} 10"#), "{text}");
        assert_eq!(sample(&text, "kiln_num_requests_pending"), Some(1.0));
    }

    /// An embedding model exported generation, grammar and KV series (all
    /// zero) beside a chat model's; now only the chat model has them.
    #[test]
    fn embedding_models_export_no_generation_or_grammar_series() {
        let r = Metrics::recorder();
        let (chat, embed) = (Metrics::for_model_task(&r, "chat", true), Metrics::for_model_task(&r, "embed", false));
        embed.prompt_tokens.increment(4);
        embed.generation_tokens.increment(1);
        embed.grammar_cache_hits.increment(1);
        chat.set_gauges(EngineGauges::default(), 0);
        let text = embed.render(EngineGauges { num_running: 2, ..Default::default() }, 0);
        assert!(text.contains(r#"kiln_prompt_tokens_total{model="embed"} 4"#), "{text}");
        assert!(text.contains(r#"kiln_num_requests_running{model="embed"} 2"#), "{text}");
        for series in ["generation_tokens", "grammar_cache", "grammar_compile", "kv_", "prefix_cache", "time_to_first", "inter_token", "preemptions"] {
            assert!(!text.lines().any(|l| l.contains(series) && l.contains(r#"model="embed""#)), "{series} for embed: {text}");
        }
        for series in ["generation_tokens", "grammar_cache", "kv_", "prefix_cache", "preemptions"] {
            assert!(text.lines().any(|l| l.contains(series) && l.contains(r#"model="chat""#)), "{series} for chat: {text}");
        }
    }

    #[test]
    fn two_servers_do_not_share_metrics() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.generation_tokens.increment(5);
        assert_eq!(sample(&b.render(EngineGauges::default(), 0), "kiln_generation_tokens_total"), Some(0.0));
    }
}
