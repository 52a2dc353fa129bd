//! A real `kiln serve` child process on an ephemeral loopback port.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The default model, fetched by models/fetch_default.sh when missing; None
/// (with a printed reason) when that is impossible.
pub fn default_model() -> Option<PathBuf> {
    kiln::launch::resolve_model(&None).map_err(|e| eprintln!("SKIP: the default model is unavailable: {e:#}")).ok()
}

pub struct KilnServer {
    child: Child,
    pub base: String,
    /// Every stderr line so far (the server logs there).
    pub log: Arc<Mutex<Vec<String>>>,
}

/// Engine flags small enough for a 2-core CI machine.
/// `--data-dir ""` keeps the batch API (and its data directory) out of these tests.
pub const SMALL: &[&str] = &["--max-model-len", "512", "--max-num-seqs", "8", "--seed", "0", "--data-dir", ""];

impl KilnServer {
    /// Starts `kiln serve --port 0 ARGS` with the default model and waits
    /// until /health says 200. None when the model is unavailable.
    pub async fn start(args: &[&str]) -> Option<KilnServer> {
        let model = default_model()?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .arg("--model")
            .arg(&model)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kiln serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let addr = line[i + "listening on ".len()..].split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let base = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("kiln serve did not start; log:\n{}", log.lock().unwrap().join("\n"))
        });
        let server = KilnServer { child, base, log };
        server.wait_healthy(Duration::from_secs(120)).await;
        Some(server)
    }

    async fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        let c = reqwest::Client::new();
        while start.elapsed() < limit {
            if let Ok(r) = c.get(format!("{}/health", self.base)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("/health never turned 200; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or clean anything.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Sends SIGTERM (via kill(1)).
    pub fn terminate(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit, returning its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// One gauge or counter of /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base)).await.unwrap().text().await.unwrap();
        metric_value(&text, name).unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
    }
}

/// The value of the first sample of `name` in Prometheus text, labelled
/// (e.g. by `model`) or not.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?.1,
            None => rest.strip_prefix(' ')?,
        };
        rest.trim().parse().ok()
    })
}

impl Drop for KilnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
