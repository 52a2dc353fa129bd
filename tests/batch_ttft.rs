//! Batch work runs below interactive traffic: while a large batch runs
//! (capped by --max-batch-inflight), an interactive request's time to first
//! token stays within a stated factor of the idle server's.
//!
//! TTFT is measured as the latency of a non-streamed max_tokens=1 chat
//! request (queueing + prefill + one token), median of several requests,
//! each with a distinct prompt so the prefix cache does not help.
//! The figures are printed (run with --nocapture) and recorded in
//! docs/batch.md.

mod batch_support;

use std::time::{Duration, Instant};

use batch_support::*;
use serde_json::json;

/// Busy median TTFT <= FACTOR * idle median + SLACK.
const FACTOR: f64 = 3.0;
/// Absolute allowance for scheduling noise on a shared 2-core machine.
const SLACK: Duration = Duration::from_millis(100);
const SAMPLES: usize = 7;
/// --max-batch-inflight (KILN_TTFT_INFLIGHT overrides it, to record figures).
const INFLIGHT: &str = "4";

async fn ttft_median(api: &Api, tag: &str) -> Duration {
    let mut times = Vec::new();
    for i in 0..SAMPLES {
        let prompt = format!("Question {tag}-{i}: name one colour of the rainbow and one fruit.");
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1, "temperature": 0});
        let t0 = Instant::now();
        let (status, answer) = api.post("/v1/chat/completions", &body).await;
        times.push(t0.elapsed());
        assert_eq!(status, 200, "{answer}");
    }
    times.sort();
    eprintln!("{tag}: TTFT samples (ms): {:?}", times.iter().map(|t| t.as_millis()).collect::<Vec<_>>());
    times[SAMPLES / 2]
}

#[tokio::test]
async fn interactive_ttft_while_a_batch_runs() {
    let dir = tempfile::tempdir().unwrap();
    let inflight = std::env::var("KILN_TTFT_INFLIGHT").unwrap_or_else(|_| INFLIGHT.into());
    let Some(kiln) = Kiln::start(dir.path(), &["--max-batch-inflight", &inflight]).await else { return };
    let api = kiln.api(None);
    ttft_median(&api, "warm-up").await;
    let idle = ttft_median(&api, "idle").await;

    let batch = api.start_batch(&chat_file(200, 32), "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, b) = api.get(&format!("/v1/batches/{id}")).await;
        if b["status"] == "in_progress" && b["request_counts"]["completed"].as_u64().unwrap() >= 1 {
            break;
        }
        assert!(Instant::now() < end, "the batch never got going: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy = ttft_median(&api, "busy").await;
    let (_, b) = api.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(b["status"], "in_progress", "the batch ran during the whole measurement: {b}");
    let (status, _) = api.post(&format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200);

    let ratio = busy.as_secs_f64() / idle.as_secs_f64();
    eprintln!(
        "TTFT median: idle {:.1} ms, during a batch (--max-batch-inflight {inflight}) {:.1} ms: x{ratio:.2} (bound: x{FACTOR} + {} ms)",
        idle.as_secs_f64() * 1e3,
        busy.as_secs_f64() * 1e3,
        SLACK.as_millis()
    );
    assert!(busy <= idle.mul_f64(FACTOR) + SLACK, "interactive TTFT {busy:?} during a batch vs {idle:?} idle");
}
