//! Figures of a serving benchmark, computed from per-request timings with
//! vLLM's definitions (vllm/benchmarks/serve.py), so numbers compare:
//!
//! - TTFT: request sent -> first chunk with generated text.
//! - ITL: gaps between consecutive text chunks, pooled over all requests.
//! - TPOT: (E2E - TTFT) / (output tokens - 1), per request with > 1 token;
//!   output tokens come from the server's usage.
//! - E2E: request sent -> stream ended.
//! - throughputs divide totals over successful requests by the duration
//!   (first request sent -> last one ended).
//!
//! Percentiles interpolate linearly between order statistics (numpy's
//! default), so they match what vLLM prints for the same samples.

use serde::Serialize;

use super::args::Slo;

/// What one request did, times in seconds since the benchmark started.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RequestRecord {
    pub success: bool,
    pub error: Option<String>,
    /// Prompt tokens: the server's usage when given, else the dataset's count.
    pub prompt_len: usize,
    /// Generated tokens: the server's usage when given, else text chunks.
    pub output_tokens: usize,
    pub usage_reported: bool,
    /// When the request was sent.
    pub start: f64,
    /// Arrival of each chunk carrying generated text.
    pub chunk_times: Vec<f64>,
    /// When the stream ended (or failed).
    pub end: f64,
}

impl RequestRecord {
    pub fn ttft(&self) -> Option<f64> {
        self.chunk_times.first().map(|t| t - self.start)
    }

    pub fn e2el(&self) -> f64 {
        self.end - self.start
    }

    pub fn itls(&self) -> impl Iterator<Item = f64> + '_ {
        self.chunk_times.windows(2).map(|w| w[1] - w[0])
    }

    /// None for requests of one token or less (vLLM leaves them out too).
    pub fn tpot(&self) -> Option<f64> {
        let ttft = self.ttft()?;
        (self.output_tokens > 1).then(|| (self.e2el() - ttft) / (self.output_tokens - 1) as f64)
    }
}

/// mean, median, std, p90, p99 of one latency, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Dist {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub p90: f64,
    pub p99: f64,
    pub count: usize,
}

/// numpy.percentile(..., method="linear") over a sorted slice; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => {
            let rank = p / 100.0 * (n - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

impl Dist {
    /// Summary of `seconds`, reported in ms; all zero when empty (as vLLM).
    pub fn of_seconds(seconds: &[f64]) -> Dist {
        let mut ms: Vec<f64> = seconds.iter().map(|s| s * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        if n == 0 {
            return Dist::default();
        }
        let mean = ms.iter().sum::<f64>() / n as f64;
        let var = ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        Dist {
            mean,
            median: percentile(&ms, 50.0),
            std: var.sqrt(),
            p90: percentile(&ms, 90.0),
            p99: percentile(&ms, 99.0),
            count: n,
        }
    }
}

/// Every figure of one serving run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub duration: f64,
    pub completed: usize,
    pub failed: usize,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    pub request_throughput: f64,
    pub request_goodput: Option<f64>,
    pub input_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    pub max_output_tokens_per_s: f64,
    pub max_concurrent_requests: usize,
    /// Successful requests whose server sent no usage (tokens were counted
    /// as text chunks instead).
    pub requests_without_usage: usize,
    pub ttft: Dist,
    pub tpot: Dist,
    pub itl: Dist,
    pub e2el: Dist,
}

/// Does a successful request meet every SLO given?
pub fn meets(r: &RequestRecord, slo: &Slo) -> bool {
    let ms = |s: f64| s * 1000.0;
    let ok = |limit: Option<f64>, v: f64| limit.is_none_or(|l| v <= l);
    ok(slo.ttft_ms, ms(r.ttft().unwrap_or(f64::INFINITY))) && ok(slo.tpot_ms, ms(r.tpot().unwrap_or(0.0))) && ok(slo.e2el_ms, ms(r.e2el()))
}

/// Output tokens per 1-second bucket since the start. A request's tokens
/// are spread evenly over its text chunks, so the buckets add up to its
/// usage even when a chunk carries several tokens.
pub fn tokens_per_second(records: &[RequestRecord]) -> Vec<f64> {
    let mut buckets: Vec<f64> = vec![];
    for r in records.iter().filter(|r| r.success && !r.chunk_times.is_empty()) {
        let weight = r.output_tokens as f64 / r.chunk_times.len() as f64;
        for &t in &r.chunk_times {
            let b = t.max(0.0).floor() as usize;
            if buckets.len() <= b {
                buckets.resize(b + 1, 0.0);
            }
            buckets[b] += weight;
        }
    }
    buckets
}

/// Requests in flight at each start/end instant; returns the peak.
pub fn peak_concurrency(records: &[RequestRecord]) -> usize {
    let mut edges: Vec<(f64, i64)> = records.iter().flat_map(|r| [(r.start, 1), (r.end, -1)]).collect();
    // Ends sort before starts at the same instant: back-to-back is not overlap.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

/// The figures of `records` over `duration` seconds.
pub fn summarize(records: &[RequestRecord], duration: f64, slo: Option<&Slo>) -> Summary {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.success).collect();
    let dur = duration.max(1e-9);
    let total_in: usize = ok.iter().map(|r| r.prompt_len).sum();
    let total_out: usize = ok.iter().map(|r| r.output_tokens).sum();
    let ttfts: Vec<f64> = ok.iter().filter_map(|r| r.ttft()).collect();
    let tpots: Vec<f64> = ok.iter().filter_map(|r| r.tpot()).collect();
    let itls: Vec<f64> = ok.iter().flat_map(|r| r.itls()).collect();
    let e2els: Vec<f64> = ok.iter().map(|r| r.e2el()).collect();
    let good = slo.map(|s| ok.iter().filter(|r| meets(r, s)).count() as f64 / dur);
    Summary {
        duration,
        completed: ok.len(),
        failed: records.len() - ok.len(),
        total_input_tokens: total_in,
        total_output_tokens: total_out,
        request_throughput: ok.len() as f64 / dur,
        request_goodput: good,
        input_throughput: total_in as f64 / dur,
        output_throughput: total_out as f64 / dur,
        total_token_throughput: (total_in + total_out) as f64 / dur,
        max_output_tokens_per_s: tokens_per_second(records).into_iter().fold(0.0, f64::max),
        max_concurrent_requests: peak_concurrency(records),
        requests_without_usage: ok.iter().filter(|r| !r.usage_reported).count(),
        ttft: Dist::of_seconds(&ttfts),
        tpot: Dist::of_seconds(&tpots),
        itl: Dist::of_seconds(&itls),
        e2el: Dist::of_seconds(&e2els),
    }
}

/// Distinct error messages with their counts, most frequent first.
pub fn error_counts(records: &[RequestRecord]) -> Vec<(String, usize)> {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in records.iter().filter(|r| !r.success) {
        *counts.entry(r.error.as_deref().unwrap_or("unknown error")).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().map(|(e, n)| (e.to_string(), n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(start: f64, chunks: &[f64], end: f64, tokens: usize) -> RequestRecord {
        RequestRecord { success: true, output_tokens: tokens, start, chunk_times: chunks.to_vec(), end, ..Default::default() }
    }

    #[test]
    fn percentiles_interpolate_between_order_statistics() {
        let hundred: Vec<f64> = (0..=100).map(f64::from).collect();
        for p in [0.0, 12.5, 50.0, 90.0, 99.0, 100.0] {
            assert!((percentile(&hundred, p) - p).abs() < 1e-9);
        }
        // rank = 0.9 * 3 = 2.7: between the 3rd and 4th value.
        assert!((percentile(&[1.0, 2.0, 3.0, 4.0], 90.0) - 3.7).abs() < 1e-9);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
        let d = Dist::of_seconds(&[0.004, 0.001, 0.003, 0.002]);
        assert!((d.mean - 2.5).abs() < 1e-9 && (d.median - 2.5).abs() < 1e-9);
        assert!((d.std - 1.25f64.sqrt()).abs() < 1e-9, "population std, as numpy's default");
        assert_eq!(Dist::of_seconds(&[]), Dist::default());
    }

    #[test]
    fn per_request_latencies() {
        let r = rec(1.0, &[1.1, 1.2, 1.4, 1.5], 1.5, 5);
        assert!((r.ttft().unwrap() - 0.1).abs() < 1e-9);
        let itl: Vec<f64> = r.itls().collect();
        assert_eq!(itl.len(), 3);
        // (E2E - TTFT) / (tokens - 1) = 0.4 / 4.
        assert!((r.tpot().unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(rec(0.0, &[0.3], 0.3, 1).tpot(), None);
    }

    #[test]
    fn output_tokens_are_bucketed_by_second_with_usage_weights() {
        // 10 tokens in 5 chunks: each chunk stands for 2 tokens.
        let r = rec(0.0, &[0.5, 0.9, 1.2, 1.5, 2.1], 2.2, 10);
        let mut failed = rec(0.0, &[0.1], 0.2, 50);
        failed.success = false;
        assert_eq!(tokens_per_second(&[r, failed]), vec![4.0, 4.0, 2.0]);
    }

    #[test]
    fn peak_concurrency_counts_overlaps_only() {
        let rs = [rec(0.0, &[], 1.0, 0), rec(0.5, &[], 2.0, 0), rec(1.0, &[], 3.0, 0), rec(2.5, &[], 2.6, 0)];
        // [0,1) [0.5,2) [1,3) [2.5,2.6): at most two at once.
        assert_eq!(peak_concurrency(&rs), 2);
    }

    #[test]
    fn summary_counts_only_successes() {
        let ok = RequestRecord { prompt_len: 10, ..rec(0.0, &[0.2, 0.3], 0.4, 3) };
        let bad = RequestRecord { success: false, error: Some("x".into()), prompt_len: 99, ..rec(0.0, &[0.1], 0.5, 7) };
        let s = summarize(&[ok.clone(), bad], 2.0, None);
        assert_eq!((s.completed, s.failed, s.total_input_tokens, s.total_output_tokens), (1, 1, 10, 3));
        assert!((s.request_throughput - 0.5).abs() < 1e-9 && (s.total_token_throughput - 6.5).abs() < 1e-9);
        assert_eq!(s.request_goodput, None);
        let slo = Slo { ttft_ms: Some(250.0), ..Default::default() };
        assert_eq!(summarize(std::slice::from_ref(&ok), 1.0, Some(&slo)).request_goodput, Some(1.0));
        let strict = Slo { ttft_ms: Some(150.0), ..Default::default() };
        assert_eq!(summarize(&[ok], 1.0, Some(&strict)).request_goodput, Some(0.0));
    }
}
