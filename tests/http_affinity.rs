//! Issue 15 part 3: session affinity.
//!
//! - In process (fake engine): the key kiln used comes back in
//!   `x-session-id`: the request header, else the body's `prompt_cache_key`.
//! - Through a real nginx (Debian's package, installed by
//!   scripts/setup-fleet-tools.sh) on loopback in front of three real
//!   `kiln serve` replicas of the default model, configured as
//!   docs/deploy.md says (`hash $http_x_session_id consistent`, retry the
//!   next replica on error / 503): 8 sessions of 20 turns each stay on one
//!   replica, whose prefix cache then serves the conversation so far
//!   (`cached_tokens`); one replica is sent SIGTERM mid-load, no client
//!   request fails, and its sessions move to another replica and stay there.

mod http_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_support::server::{KilnServer, SMALL};
use http_support::*;
use kiln::config::ServerConfig;
use serde_json::{json, Value};

#[tokio::test]
async fn the_session_key_used_is_echoed() {
    let s = fake_server(ServerConfig::default()).await;
    let url = format!("{}/v1/chat/completions", s.base);
    let body = |key: Option<&str>| {
        let mut b = json!({"model": FAKE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        if let Some(k) = key {
            b["prompt_cache_key"] = json!(k);
        }
        b
    };
    let echo = |r: &reqwest::Response| r.headers().get("x-session-id").map(|v| v.to_str().unwrap().to_string());
    let r = client().post(&url).json(&body(Some("conv-42"))).send().await.unwrap();
    assert_eq!((r.status().as_u16(), echo(&r)), (200, Some("conv-42".into())), "prompt_cache_key");
    let r = client().post(&url).header("x-session-id", "hdr-7").json(&body(None)).send().await.unwrap();
    assert_eq!((r.status().as_u16(), echo(&r)), (200, Some("hdr-7".into())), "x-session-id header");
    let r = client().post(&url).header("x-session-id", "hdr-7").json(&body(Some("conv-42"))).send().await.unwrap();
    assert_eq!(echo(&r), Some("hdr-7".into()), "the header (what a proxy hashed) wins");
    let r = client().post(&url).json(&body(None)).send().await.unwrap();
    assert_eq!(echo(&r), None, "no key, no header");
    let mut completion = json!({"model": FAKE_MODEL, "prompt": "hi", "max_tokens": 2, "prompt_cache_key": "c-1"});
    let r = client().post(format!("{}/v1/completions", s.base)).json(&completion).send().await.unwrap();
    assert_eq!((r.status().as_u16(), echo(&r)), (200, Some("c-1".into())), "/v1/completions too");
    completion["prompt_cache_key"] = json!(7);
    let (status, err) = post_json(&s.base, "/v1/completions", &completion).await;
    assert_eq!((status, err["error"]["type"].as_str()), (400, Some("invalid_request_error")), "{err}");
}

/// Debian's nginx binary, or None (with a printed reason).
fn nginx_binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        eprintln!("SKIP: nginx is not installed (scripts/setup-fleet-tools.sh installs Debian's nginx-light)");
    }
    found
}

/// An nginx in the foreground, configured by `conf`, killed on drop.
struct Nginx(Child);

impl Nginx {
    fn start(bin: &Path, dir: &Path, conf: &str) -> Nginx {
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let check = Command::new(bin).arg("-t").arg("-p").arg(dir).arg("-c").arg(dir.join("nginx.conf")).output().unwrap();
        assert!(check.status.success(), "nginx -t: {}", String::from_utf8_lossy(&check.stderr));
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Nginx(child)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The configuration docs/deploy.md documents, with test-local paths.
fn nginx_conf(dir: &Path, port: u16, upstreams: &[String]) -> String {
    let d = dir.display();
    let servers: String = upstreams.iter().map(|u| format!("    server {u} max_fails=1 fail_timeout=10s;\n")).collect();
    format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
events {{ worker_connections 512; }}\n\
http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
  upstream kiln {{\n    hash $http_x_session_id consistent;\n{servers}  }}\n\
  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://kiln;\n\
      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
      proxy_read_timeout 300s;\n      proxy_next_upstream error timeout http_503 non_idempotent;\n\
      proxy_next_upstream_tries 3;\n      add_header X-Upstream $upstream_addr always;\n    }}\n  }}\n}}\n"
    )
}

/// One turn as the client saw it.
#[derive(Debug, Clone)]
struct Turn {
    replica: String,
    prompt: u64,
    cached: u64,
    /// Answered after the SIGTERM was sent (or while it was).
    after_term: bool,
}

const SESSIONS: usize = 8;
const TURNS: usize = 20;
/// Turns answered (all sessions) before one replica gets SIGTERM.
const TERM_AFTER: usize = SESSIONS * 7;
const BLOCK: u64 = 16;

async fn session(proxy: String, id: usize, done: Arc<AtomicUsize>, termed: Arc<std::sync::atomic::AtomicBool>) -> Vec<Turn> {
    let key = format!("session-{id}");
    let c = client();
    let mut messages = vec![json!({"role": "system", "content": format!("You are assistant number {id}.")})];
    let mut turns = Vec::new();
    for t in 0..TURNS {
        messages.push(json!({"role": "user", "content": format!("Turn {t}. Say one word.")}));
        let body = json!({"model": "kiln-test", "messages": messages, "max_tokens": 3, "temperature": 0});
        let r = c.post(format!("{proxy}/v1/chat/completions")).header("x-session-id", &key).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        let upstream = r.headers().get("x-upstream").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let echoed = r.headers().get("x-session-id").map(|v| v.to_str().unwrap().to_string());
        let text = r.text().await.unwrap();
        // Answered before the SIGTERM was even sent: served by the home replica.
        let after_term = termed.load(Ordering::SeqCst);
        assert_eq!(status, 200, "session {id} turn {t} failed through the proxy (upstreams {upstream}): {text}");
        assert_eq!(echoed.as_deref(), Some(key.as_str()));
        let v: Value = serde_json::from_str(&text).unwrap();
        messages.push(json!({"role": "assistant", "content": v["choices"][0]["message"]["content"]}));
        let replica = upstream.rsplit(", ").next().unwrap().to_string();
        let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
        turns.push(Turn { replica, prompt: v["usage"]["prompt_tokens"].as_u64().unwrap(), cached, after_term });
        done.fetch_add(1, Ordering::SeqCst);
    }
    turns
}

#[tokio::test]
async fn sessions_stick_to_a_replica_through_nginx_and_move_when_it_drains() {
    let Some(bin) = nginx_binary() else { return };
    let mut args: Vec<&str> = SMALL.chunks(2).filter(|kv| kv[0] != "--max-model-len").flatten().copied().collect();
    args.extend(["--max-model-len", "1024", "--served-model-name", "kiln-test", "--threads", "1", "--shutdown-timeout", "30"]);
    let (a, b, c) = tokio::join!(KilnServer::start(&args), KilnServer::start(&args), KilnServer::start(&args));
    let (Some(a), Some(b), Some(c)) = (a, b, c) else { return };
    let mut replicas = vec![a, b, c];
    let addrs: Vec<String> = replicas.iter().map(|r| r.base.trim_start_matches("http://").to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _nginx = Nginx::start(&bin, dir.path(), &nginx_conf(dir.path(), port, &addrs));
    let proxy = format!("http://127.0.0.1:{port}");
    assert!(eventually(10, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).await, "nginx did not listen");

    let done = Arc::new(AtomicUsize::new(0));
    let termed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> =
        (0..SESSIONS).map(|i| tokio::spawn(session(proxy.clone(), i, done.clone(), termed.clone()))).collect();
    while done.load(Ordering::SeqCst) < TERM_AFTER {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGTERM, in the middle of the load, the replica that served the most
    // requests so far (so it holds sessions), as its /metrics says.
    let mut served = Vec::new();
    for r in &replicas {
        served.push(r.metric("vllm:e2e_request_latency_seconds_count").await);
    }
    let victim = (0..3).max_by(|&x, &y| served[x].total_cmp(&served[y])).unwrap();
    termed.store(true, Ordering::SeqCst);
    replicas[victim].terminate();
    let victim_addr = addrs[victim].clone();

    let mut sessions = Vec::new();
    for t in tasks {
        sessions.push(t.await.expect("a session failed"));
    }
    assert_eq!(replicas[victim].wait_exit(Duration::from_secs(60)), Some(0), "the drained replica exits 0");

    let mut moved = 0;
    for (id, turns) in sessions.iter().enumerate() {
        assert_eq!(turns.len(), TURNS);
        let before: Vec<&Turn> = turns.iter().filter(|t| !t.after_term).collect();
        let first = &before.first().copied().unwrap_or(&turns[0]).replica;
        assert!(before.iter().all(|t| &t.replica == first), "session {id} stayed on one replica before the SIGTERM: {turns:?}");
        let later: BTreeSet<&str> = turns.iter().filter(|t| t.after_term).map(|t| t.replica.as_str()).collect();
        if *first == victim_addr {
            // Requests in flight at the SIGTERM finish on the victim; then the session moves, once.
            let elsewhere: Vec<&Turn> = turns.iter().filter(|t| t.after_term && t.replica != victim_addr).collect();
            assert!(!elsewhere.is_empty(), "session {id} moved off the drained replica: {turns:?}");
            let new_home = &elsewhere[0].replica;
            assert!(elsewhere.iter().all(|t| &t.replica == new_home), "session {id} moved to one replica: {turns:?}");
            moved += 1;
        } else {
            assert!(later.iter().all(|r| r == first), "session {id} was not on the drained replica and stayed: {turns:?}");
        }
        // On the same replica as the turn before, the conversation so far
        // comes from that replica's prefix cache (whole blocks of it).
        for w in turns.windows(2) {
            if w[0].replica == w[1].replica {
                let whole = w[0].prompt / BLOCK * BLOCK;
                assert!(w[1].cached + BLOCK >= whole, "session {id}: {} cached of the {} before: {turns:?}", w[1].cached, w[0].prompt);
            }
        }
    }
    assert!(moved >= 1, "the drained replica held sessions");
}
