//! Bounded load test on loopback (part of the normal run, about 25 s on two
//! idle cores; scripts/load-test runs it alone with other sizes):
//! KILN_LOAD_CLIENTS concurrent streaming clients (200) share a fixed count
//! of requests (KILN_LOAD_REQUESTS, 400); every third request disconnects at
//! a random point. Asserts: zero 5xx, every finished stream well formed and
//! ending in [DONE], zero KV blocks in use afterwards.

mod http_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_support::server::KilnServer;
use http_support::SseBody;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Default, Debug)]
struct Tally {
    finished: usize,
    disconnected: usize,
    tokens: usize,
    failures: Vec<String>,
}

/// Checks one complete stream: role first, finish_reason on the last
/// choice chunk, usage chunk consistent, [DONE] last.
fn check_stream(text: &str) -> Result<usize, String> {
    let body = SseBody::parse(text);
    if body.data.last().map(String::as_str) != Some("[DONE]") {
        return Err(format!("no [DONE]: {text:?}"));
    }
    let chunks: Vec<Value> = body.data[..body.data.len() - 1].iter().map(|d| serde_json::from_str(d)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    if chunks.iter().any(|c| c.get("error").is_some()) {
        return Err(format!("error event: {text}"));
    }
    if chunks.first().map(|c| c["choices"][0]["delta"]["role"].clone()) != Some(json!("assistant")) {
        return Err("first chunk lacks the role".into());
    }
    let usage = chunks.last().unwrap()["usage"].clone();
    let with_choices: Vec<&Value> = chunks.iter().filter(|c| !c["choices"].as_array().unwrap().is_empty()).collect();
    let last = with_choices.last().ok_or("no choice chunk")?;
    if !["stop", "length"].contains(&last["choices"][0]["finish_reason"].as_str().unwrap_or("")) {
        return Err(format!("last choice chunk has no finish_reason: {last}"));
    }
    usage["completion_tokens"].as_u64().map(|n| n as usize).ok_or_else(|| format!("no usage: {usage}"))
}

async fn one_request(c: &reqwest::Client, url: &str, max_tokens: usize, cut_after: Option<usize>, tally: &Mutex<Tally>) {
    let body = json!({
        "model": "kiln-load", "max_tokens": max_tokens, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": format!("Tell me fact number {max_tokens} about the ocean.")}],
    });
    let r = match c.post(url).json(&body).send().await {
        Ok(r) => r,
        Err(e) => return tally.lock().unwrap().failures.push(format!("connect: {e}")),
    };
    if r.status() != 200 {
        let s = r.status();
        let t = r.text().await.unwrap_or_default();
        return tally.lock().unwrap().failures.push(format!("status {s}: {t}"));
    }
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
            Err(e) => return tally.lock().unwrap().failures.push(format!("body: {e}")),
        }
        if cut_after.is_some_and(|k| text.matches("data: ").count() >= k) {
            tally.lock().unwrap().disconnected += 1;
            return; // dropping the stream closes the connection mid-response
        }
    }
    let mut t = tally.lock().unwrap();
    match check_stream(&text) {
        Ok(n) => {
            t.finished += 1;
            t.tokens += n;
        }
        Err(e) => t.failures.push(e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_streams_with_disconnects() {
    let clients = env_or("KILN_LOAD_CLIENTS", 200);
    let total = env_or("KILN_LOAD_REQUESTS", 400);
    let args = ["--served-model-name", "kiln-load", "--max-model-len", "256", "--max-num-seqs", "64", "--max-waiting", "4096", "--seed", "0"];
    let Some(s) = KilnServer::start(&args).await else { return };
    let url = format!("{}/v1/chat/completions", s.base);
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|w| {
            let (url, next, tally) = (url.clone(), next.clone(), tally.clone());
            tokio::spawn(async move {
                let c = reqwest::Client::builder().timeout(Duration::from_secs(900)).build().unwrap();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(w as u64);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        break;
                    }
                    let max_tokens = rng.gen_range(4..=24);
                    let cut = (i % 3 == 0).then(|| rng.gen_range(1..=max_tokens / 2 + 1));
                    one_request(&c, &url, max_tokens, cut, &tally).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let t = std::mem::take(&mut *tally.lock().unwrap());
    println!(
        "load: {total} requests, {clients} clients, {} finished, {} disconnected, {} tokens in {secs:.1}s ({:.0} tokens/s)",
        t.finished,
        t.disconnected,
        t.tokens,
        t.tokens as f64 / secs
    );
    assert!(t.failures.is_empty(), "{} failures, first: {:?}", t.failures.len(), &t.failures[..t.failures.len().min(3)]);
    assert_eq!(t.finished + t.disconnected, total);
    let mut kv = f64::NAN;
    for _ in 0..300 {
        kv = s.metric("kiln_kv_blocks_used").await;
        if kv == 0.0 && s.metric("kiln_num_requests_running").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(kv, 0.0, "KV blocks in use after the load");
    let metrics = reqwest::get(format!("{}/metrics", s.base)).await.unwrap().text().await.unwrap();
    let five_xx: Vec<&str> = metrics.lines().filter(|l| l.starts_with("kiln_requests_total") && l.contains("status=\"5") && !l.contains("/health")).collect();
    // (/health answers 503 until the warm-up pass; the harness polls it.)
    assert!(five_xx.is_empty(), "5xx counted by the server: {five_xx:?}");
}
