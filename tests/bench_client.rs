//! `kiln bench serve` against a scripted SSE server whose delays are known:
//! the measured TTFT, ITL, TPOT, E2E and throughputs must match the script,
//! failures must be counted with their reasons, and arrivals and the
//! concurrency limit must hold as seen by the server.

mod bench_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bench_support::{serve, serve_args, Fate, Mock};
use kiln::bench::serve::serve as bench;

/// Scheduler noise allowed on top of the scripted delays, in ms. The
/// machine may be busy (2 cores shared with builds), so the upper bounds
/// are loose; the lower bounds are exact: nothing can arrive early.
const SLACK_MS: f64 = 30.0;

fn within(what: &str, got: f64, lo: f64, hi: f64) {
    assert!(got >= lo && got <= hi, "{what} = {got:.2}, expected within [{lo:.2}, {hi:.2}]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latencies_and_throughput_match_the_script() {
    let (first, gap, chunks) = (150.0, 40.0, 6usize);
    let mock = Arc::new(Mock::new(first as u64, gap as u64, chunks));
    let base = serve(mock.clone()).await;
    let (n, c) = (8usize, 2usize);
    let args = serve_args(&["--base-url", &base, "--num-prompts", "8", "--input-len", "16", "--output-len", "6", "--max-concurrency", "2"]);
    let out = bench(&args).await.expect("the benchmark runs");
    let s = &out.summary;
    assert_eq!((s.completed, s.failed), (n, 0));
    // Usage: the mock counts prompt ids; every response has `chunks` tokens.
    assert_eq!(s.total_input_tokens, n * 16);
    assert_eq!(s.total_output_tokens, n * chunks);
    let e2e = first + gap * (chunks - 1) as f64;
    within("median TTFT", s.ttft.median, first, first + SLACK_MS);
    within("mean TTFT", s.ttft.mean, first, first + SLACK_MS);
    within("p99 TTFT", s.ttft.p99, first, first + 2.0 * SLACK_MS);
    // ITL pools every gap: (chunks - 1) per request.
    assert_eq!(s.itl.count, n * (chunks - 1));
    within("median ITL", s.itl.median, gap - 10.0, gap + 10.0);
    within("mean ITL", s.itl.mean, gap - 5.0, gap + SLACK_MS / 2.0);
    // TPOT = (E2E - TTFT) / (tokens - 1) = the scripted gap.
    within("mean TPOT", s.tpot.mean, gap - 5.0, gap + SLACK_MS / 2.0);
    within("median E2E", s.e2el.median, e2e, e2e + SLACK_MS);
    // c requests at a time, each taking e2e: n / c rounds.
    let duration = (n / c) as f64 * e2e / 1000.0;
    within("duration", s.duration, duration, duration * 1.15);
    within("request throughput", s.request_throughput, n as f64 / duration / 1.15, n as f64 / duration);
    within("output throughput", s.output_throughput, (n * chunks) as f64 / duration / 1.15, (n * chunks) as f64 / duration);
    within("total throughput", s.total_token_throughput, (n * 22) as f64 / duration / 1.15, (n * 22) as f64 / duration);
    assert_eq!(s.max_concurrent_requests, c);
    assert_eq!(mock.peak_in_flight.load(Ordering::SeqCst), c);
    assert!(out.table.contains("Successful requests:") && out.table.contains("Median TTFT (ms):"), "{}", out.table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_endpoint_with_sharegpt_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sg.json");
    let convs: Vec<serde_json::Value> = (0..3)
        .map(|i| serde_json::json!({"id": i, "conversations": [{"from": "human", "value": format!("question {i} here")}, {"from": "gpt", "value": "an answer"}]}))
        .collect();
    std::fs::write(&path, serde_json::to_string(&convs).unwrap()).unwrap();
    let mock = Arc::new(Mock::new(100, 30, 4));
    let base = serve(mock).await;
    let dataset = format!("sharegpt:{}", path.display());
    let args = serve_args(&["--base-url", &base, "--endpoint", "chat", "--dataset", &dataset, "--num-prompts", "6", "--output-len", "4"]);
    let s = bench(&args).await.expect("the benchmark runs").summary;
    assert_eq!((s.completed, s.failed), (6, 0));
    // The mock counts the words of the user message: 3 per question.
    assert_eq!(s.total_input_tokens, 6 * 3);
    within("median TTFT", s.ttft.median, 100.0, 100.0 + SLACK_MS);
    within("median ITL", s.itl.median, 20.0, 30.0 + 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_with_their_reasons() {
    let mut mock = Mock::new(20, 10, 5);
    mock.fate = |k| match k % 4 {
        0 => Fate::Http500,
        1 => Fate::Abort,
        2 => Fate::NoDone,
        _ => Fate::Ok,
    };
    let base = serve(Arc::new(mock)).await;
    let args = serve_args(&["--base-url", &base, "--num-prompts", "12", "--input-len", "8", "--output-len", "5", "--max-concurrency", "4"]);
    let out = bench(&args).await.expect("a run with failures still reports");
    let s = &out.summary;
    assert_eq!((s.completed, s.failed), (3, 9));
    // Only successful requests enter the figures.
    assert_eq!(s.ttft.count, 3);
    assert_eq!(s.total_output_tokens, 3 * 5);
    let counts = out.json["error_counts"].as_array().unwrap();
    assert_eq!(counts.len(), 3, "{counts:?}");
    for needle in ["HTTP 500", "stream broke", "without [DONE]"] {
        let hit = counts.iter().find(|c| c["error"].as_str().unwrap().contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in {counts:?}"));
        assert_eq!(hit["count"], 3, "{hit}");
    }
    assert!(out.json["errors"].as_array().unwrap().iter().filter(|e| !e.is_null()).count() == 9);
    assert!(out.table.contains("Failed requests:                          9"), "{}", out.table);
    assert!(out.table.contains("scripted failure"), "the server's message is shown: {}", out.table);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisson_arrivals_are_sent_on_schedule() {
    let base = serve(Arc::new(Mock::new(5, 5, 2))).await;
    let args = serve_args(&["--base-url", &base, "--num-prompts", "30", "--input-len", "4", "--output-len", "2", "--request-rate", "20", "--seed", "3"]);
    let out = bench(&args).await.expect("the benchmark runs");
    let expected = kiln::bench::driver::arrival_times(30, 20.0, 3);
    let starts: Vec<f64> = out.json["start_times"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for (i, (got, want)) in starts.iter().zip(&expected).enumerate() {
        within(&format!("start of request {i} (s)"), *got, *want, want + SLACK_MS / 1000.0);
    }
    assert_eq!(out.json["request_rate"], 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodput_counts_requests_within_every_slo() {
    let base = serve(Arc::new(Mock::new(100, 20, 4))).await;
    let flags = |slo: &'static str| {
        let base = base.clone();
        move || serve_args(&["--base-url", &base, "--num-prompts", "4", "--input-len", "4", "--output-len", "4", "--goodput", slo])
    };
    // TTFT ~100 ms, TPOT ~20 ms, E2E ~160 ms.
    for (slo, all_good) in [("ttft:400 tpot:60", true), ("ttft:50", false), ("tpot:10", false), ("e2el:120", false), ("e2el:600", true)] {
        let s = bench(&flags(slo)()).await.unwrap().summary;
        let good = s.request_goodput.expect("goodput was asked for");
        let want = if all_good { s.request_throughput } else { 0.0 };
        assert!((good - want).abs() < 1e-9, "{slo}: goodput {good}, throughput {}", s.request_throughput);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    for extra in [&[][..], &["--model", "m"][..]] {
        let mut flags = vec!["--base-url", base.as_str(), "--num-prompts", "2", "--input-len", "4"];
        flags.extend_from_slice(extra);
        let e = bench(&serve_args(&flags)).await.err().expect("no server, no run").to_string();
        assert!(e.contains(&format!("cannot reach the server at {base}/v1/models")) && e.contains("is it running"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_every_request_stops_before_the_run() {
    let mut mock = Mock::new(5, 5, 2);
    mock.fate = |_| Fate::Http500;
    mock.probe_too = true;
    let base = serve(Arc::new(mock)).await;
    let args = serve_args(&["--base-url", &base, "--num-prompts", "2", "--input-len", "4"]);
    let e = bench(&args).await.err().expect("a failing server stops the run").to_string();
    let head = format!("the first test request to {base}/v1/completions failed: HTTP 500");
    assert!(e.contains(&head) && e.contains("scripted failure"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_clear_errors() {
    let base = serve(Arc::new(Mock::new(5, 5, 2))).await;
    let cases: [(&[&str], &str); 5] = [
        (&["--endpoint", "chat"], "the chat endpoint takes text: pass --tokenizer"),
        (&["--extra-body", "[1]"], "--extra-body must be a JSON object"),
        (&["--goodput", "ttft=5"], "--goodput \"ttft=5\": expected KEY:MS"),
        (&["--range-ratio", "1.5"], "--range-ratio 1.5 must be in [0, 1)"),
        (&["--max-concurrency", "0"], "--max-concurrency must be at least 1"),
    ];
    for (extra, want) in cases {
        let mut flags = vec!["--base-url", base.as_str(), "--num-prompts", "2", "--input-len", "4"];
        flags.extend_from_slice(extra);
        let e = bench(&serve_args(&flags)).await.err().unwrap_or_else(|| panic!("{extra:?} was accepted")).to_string();
        assert!(e.contains(want), "{extra:?}: {e}");
    }
}
