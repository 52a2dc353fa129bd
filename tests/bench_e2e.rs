//! `kiln bench` end to end: the kiln binary benchmarking a real `kiln serve`
//! with the default model (small N), offline throughput through the engine,
//! and the command line's errors.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn default_model() -> Option<PathBuf> {
    kiln::launch::resolve_model(&None).map_err(|e| eprintln!("SKIP: the default model is unavailable: {e:#}")).ok()
}

/// A `kiln serve` child on an ephemeral port, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(model: &PathBuf) -> Server {
    let mut child = Command::new(KILN)
        .args(["serve", "--model"])
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", "0", "--max-model-len", "512", "--max-num-seqs", "8", "--seed", "0", "--data-dir", ""])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on http://") {
                let url = line[i + "listening on ".len()..].split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(url);
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(180)).expect("kiln serve printed its address");
    // The bench's own check waits for nothing: wait for /health here.
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while std::time::Instant::now() < deadline {
        if healthy(&base) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Server { child, base }
}

/// GET /health answered 200 (plain HTTP/1.0 over a socket).
fn healthy(base: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(base.trim_start_matches("http://")) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 12];
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_ok() && s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

fn kiln(args: &[&str]) -> Output {
    Command::new(KILN).args(args).output().expect("run kiln")
}

fn ok_json(out: &Output, path: &std::path::Path) -> Value {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(out.status.success(), "kiln bench failed:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn bench_serve_against_kiln_serve() {
    let Some(model) = default_model() else { return };
    let server = start_server(&model);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = kiln(&[
        "bench", "serve", "--base-url", &server.base, "--num-prompts", "4", "--input-len", "32", "--output-len", "8",
        "--ignore-eos", "--max-concurrency", "2", "--result-json", json.to_str().unwrap(),
    ]);
    let r = ok_json(&out, &json);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Serving Benchmark Result"));
    assert_eq!((r["completed"].as_u64(), r["failed"].as_u64()), (Some(4), Some(0)), "{}", r["error_counts"]);
    // Token-id prompts reach the engine as they are; ignore_eos makes every
    // request generate exactly --output-len tokens (the server's usage).
    assert_eq!(r["total_input_tokens"], 4 * 32);
    assert_eq!(r["total_output_tokens"], 4 * 8);
    assert_eq!(r["requests_without_usage"], 0);
    for k in ["mean_ttft_ms", "mean_tpot_ms", "mean_itl_ms", "output_throughput"] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k} = {}", r[k]);
    }
    assert!(r["mean_e2el_ms"].as_f64().unwrap() > r["mean_ttft_ms"].as_f64().unwrap());
    assert_eq!(r["max_concurrent_requests"], 2);

    // Chat, with prefix prompts decoded to text by the model's tokenizer.
    let json2 = dir.path().join("chat.json");
    let out = kiln(&[
        "bench", "serve", "--base-url", &server.base, "--endpoint", "chat", "--dataset", "prefix", "--prefix-len", "48",
        "--input-len", "8", "--output-len", "6", "--ignore-eos", "--num-prompts", "3", "--tokenizer", model.to_str().unwrap(),
        "--result-json", json2.to_str().unwrap(),
    ]);
    let r = ok_json(&out, &json2);
    assert_eq!((r["completed"].as_u64(), r["total_output_tokens"].as_u64()), (Some(3), Some(18)), "{}", r["error_counts"]);
    // The chat template adds tokens around each prompt of about 56 tokens.
    assert!(r["input_lens"].as_array().unwrap().iter().all(|n| n.as_u64().unwrap() > 50), "{}", r["input_lens"]);
}

#[test]
fn bench_throughput_offline() {
    let Some(model) = default_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("t.json");
    let out = kiln(&[
        "bench", "throughput", "--model", model.to_str().unwrap(), "--num-prompts", "4", "--input-len", "16",
        "--output-len", "8", "--max-model-len", "256", "--result-json", json.to_str().unwrap(),
    ]);
    let r = ok_json(&out, &json);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Throughput:"));
    assert_eq!((r["num_requests"].as_u64(), r["failed"].as_u64()), (Some(4), Some(0)));
    assert_eq!((r["total_input_tokens"].as_u64(), r["total_output_tokens"].as_u64()), (Some(64), Some(32)));
    let (secs, tps) = (r["elapsed_time"].as_f64().unwrap(), r["tokens_per_second"].as_f64().unwrap());
    assert!((tps - 96.0 / secs).abs() < 1e-6);
    // A workload longer than the context is refused up front.
    let out = kiln(&["bench", "throughput", "--model", model.to_str().unwrap(), "--input-len", "300", "--output-len", "8", "--max-model-len", "256"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceed the model's context of 256"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn command_line_errors_are_clear() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let cases: [(Vec<&str>, String); 3] = [
        (vec!["--base-url", &base], format!("error: cannot reach the server at {base}/v1/models")),
        (vec!["--dataset", "sharegpt:/nonexistent/sg.json", "--output-len", "4"], "error: cannot read dataset /nonexistent/sg.json".into()),
        (vec!["--dataset", "csv:x"], "unknown dataset \"csv:x\"".into()),
    ];
    for (flags, want) in cases {
        let mut argv = vec!["bench", "serve", "--num-prompts", "2"];
        argv.extend(flags);
        let out = kiln(&argv);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(&want), "{argv:?}: {err}");
    }
}
