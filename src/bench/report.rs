//! The serving report: a table for people and a JSON document for tools.
//!
//! The JSON is flat and uses vLLM's key names (`request_throughput`,
//! `median_ttft_ms`, `ttfts`, `itls`, ...) so scripts written for
//! `vllm bench serve --save-result` read it unchanged; kiln adds p90s,
//! failures, the timeline and the whole configuration. Every key is listed
//! in docs/benchmarks.md. Times in per-request arrays are seconds; figures
//! named `*_ms` are milliseconds.

use std::fmt::Write as _;

use serde::Serializer;
use serde_json::{json, Map, Value};

use super::args::{ServeArgs, Slo};
use super::stats::{error_counts, tokens_per_second, Dist, RequestRecord, Summary};

/// Version of the report's layout; bumped when a key changes meaning.
pub const SCHEMA_VERSION: u64 = 1;

/// Infinite rates are written as "inf" (JSON has no infinity).
pub fn ser_rate<S: Serializer>(rate: &f64, s: S) -> Result<S::Ok, S::Error> {
    if rate.is_finite() {
        s.serialize_f64(*rate)
    } else {
        s.serialize_str("inf")
    }
}

pub fn rate_value(rate: f64) -> Value {
    if rate.is_finite() {
        json!(rate)
    } else {
        json!("inf")
    }
}

/// UTC now as vLLM's `date` format, YYYYMMDD-HHMMSS.
pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn put_dist(m: &mut Map<String, Value>, name: &str, d: &Dist) {
    for (stat, v) in [("mean", d.mean), ("median", d.median), ("std", d.std), ("p90", d.p90), ("p99", d.p99)] {
        m.insert(format!("{stat}_{name}_ms"), json!(v));
    }
}

/// What the report says about the run besides the figures.
pub struct RunInfo<'a> {
    pub args: &'a ServeArgs,
    pub model: &'a str,
    pub slo: Option<&'a Slo>,
}

/// The whole JSON report of one serving run.
pub fn serve_json(info: &RunInfo, s: &Summary, records: &[RequestRecord]) -> Value {
    let w = &info.args.workload;
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| m.insert(k.to_string(), v);
    put("schema_version", json!(SCHEMA_VERSION));
    put("date", json!(utc_stamp()));
    put("kiln_version", json!(env!("CARGO_PKG_VERSION")));
    put("backend", json!("openai"));
    put("endpoint_type", json!(w.endpoint));
    put("base_url", json!(w.base_url));
    put("model_id", json!(info.model));
    put("tokenizer_id", json!(w.tokenizer.as_ref().map(|p| p.display().to_string())));
    put("num_prompts", json!(records.len()));
    put("request_rate", rate_value(info.args.request_rate));
    put("burstiness", json!(1.0));
    put("max_concurrency", json!(info.args.max_concurrency));
    put("goodput_slo", json!(info.slo));
    put("config", serde_json::to_value(info.args).unwrap_or(Value::Null));
    if let Value::Object(fig) = serde_json::to_value(s).unwrap_or(Value::Null) {
        for (k, v) in fig.into_iter().filter(|(_, v)| !v.is_object()) {
            put(&k, v);
        }
    }
    for (name, d) in [("ttft", &s.ttft), ("tpot", &s.tpot), ("itl", &s.itl), ("e2el", &s.e2el)] {
        put_dist(&mut m, name, d);
    }
    let per = |f: &dyn Fn(&RequestRecord) -> Value| Value::Array(records.iter().map(f).collect());
    m.insert("input_lens".into(), per(&|r| json!(r.prompt_len)));
    m.insert("output_lens".into(), per(&|r| json!(r.output_tokens)));
    m.insert("start_times".into(), per(&|r| json!(r.start)));
    m.insert("ttfts".into(), per(&|r| json!(r.ttft())));
    m.insert("tpots".into(), per(&|r| json!(r.tpot())));
    m.insert("itls".into(), per(&|r| json!(r.itls().collect::<Vec<f64>>())));
    m.insert("e2els".into(), per(&|r| json!(r.e2el())));
    m.insert("errors".into(), per(&|r| json!(r.error)));
    let counts: Vec<Value> = error_counts(records).into_iter().map(|(e, n)| json!({"error": e, "count": n})).collect();
    m.insert("error_counts".into(), Value::Array(counts));
    m.insert("output_tokens_per_s".into(), json!(tokens_per_second(records)));
    Value::Object(m)
}

fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<42}{value}", format!("{label}:"));
}

fn section(out: &mut String, title: &str) {
    let _ = writeln!(out, "{:-^60}", title);
}

fn dist_lines(out: &mut String, short: &str, d: &Dist) {
    for (stat, v) in [("Mean", d.mean), ("Median", d.median), ("P90", d.p90), ("P99", d.p99)] {
        line(out, &format!("{stat} {short} (ms)"), format!("{v:.2}"));
    }
}

/// The human-readable table (vLLM's layout, plus p90s and failures).
pub fn table(info: &RunInfo, s: &Summary, records: &[RequestRecord]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:=^60}", " Serving Benchmark Result ");
    line(&mut out, "Model", info.model);
    line(&mut out, "Successful requests", s.completed);
    line(&mut out, "Failed requests", s.failed);
    line(&mut out, "Request rate (req/s)", rate_value(info.args.request_rate).to_string().trim_matches('"'));
    line(&mut out, "Maximum request concurrency", info.args.max_concurrency.map_or("none".into(), |c| c.to_string()));
    line(&mut out, "Benchmark duration (s)", format!("{:.2}", s.duration));
    line(&mut out, "Total input tokens", s.total_input_tokens);
    line(&mut out, "Total generated tokens", s.total_output_tokens);
    line(&mut out, "Request throughput (req/s)", format!("{:.2}", s.request_throughput));
    if let Some(g) = s.request_goodput {
        line(&mut out, "Request goodput (req/s)", format!("{g:.2}"));
    }
    line(&mut out, "Input token throughput (tok/s)", format!("{:.2}", s.input_throughput));
    line(&mut out, "Output token throughput (tok/s)", format!("{:.2}", s.output_throughput));
    line(&mut out, "Peak output token throughput (tok/s)", format!("{:.2}", s.max_output_tokens_per_s));
    line(&mut out, "Peak concurrent requests", s.max_concurrent_requests);
    line(&mut out, "Total token throughput (tok/s)", format!("{:.2}", s.total_token_throughput));
    section(&mut out, "Time to First Token");
    dist_lines(&mut out, "TTFT", &s.ttft);
    section(&mut out, "Time per Output Token (excl. 1st token)");
    dist_lines(&mut out, "TPOT", &s.tpot);
    section(&mut out, "Inter-token Latency");
    dist_lines(&mut out, "ITL", &s.itl);
    section(&mut out, "End-to-end Latency");
    dist_lines(&mut out, "E2EL", &s.e2el);
    let _ = writeln!(out, "{:=^60}", "");
    if s.requests_without_usage > 0 {
        let _ = writeln!(out, "note: {} responses had no usage; their tokens were counted as text chunks", s.requests_without_usage);
    }
    let errors = error_counts(records);
    if !errors.is_empty() {
        let _ = writeln!(out, "Errors ({} distinct):", errors.len());
        for (e, n) in errors.iter().take(10) {
            let _ = writeln!(out, "  {n:>6} x {e}");
        }
    }
    out
}
