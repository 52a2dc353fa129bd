//! `kiln batch INPUT -o OUTPUT`: killed with SIGKILL mid-way and run again,
//! it resumes and answers every request exactly once, in input order, with
//! the same greedy answers as an uninterrupted run; failed requests go to
//! --error-file; a malformed input is refused with its line number.

mod batch_support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use batch_support::*;
use serde_json::{json, Value};

const N: usize = 24;

fn kiln_batch(cwd: &Path, model: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.current_dir(cwd).arg("batch").args(args).arg("--model").arg(model).args(SMALL).arg("--max-inflight").arg("2");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run kiln batch");
    assert!(out.status.success(), "kiln batch failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn killed_run_resumes_each_request_once() {
    let Some(model) = default_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bad = json!({"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "top_p": 0}});
    let input = format!("{}\n{bad}\n", chat_file(N, 8));
    std::fs::write(dir.path().join("in.jsonl"), input).unwrap();
    let ids: Vec<String> = (0..N).map(|i| format!("req-{i}")).collect();

    let out = run(&mut kiln_batch(dir.path(), &model, &["in.jsonl", "-o", "whole.jsonl", "--error-file", "whole-errors.jsonl"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{} requests: {N} succeeded, 1 failed", N + 1)));
    let whole = read_lines(&dir.path().join("whole.jsonl"));
    let got: Vec<&str> = whole.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    let errors = read_lines(&dir.path().join("whole-errors.jsonl"));
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0]["response"]["status_code"].as_u64(), errors[0]["response"]["body"]["error"]["param"].as_str()), (Some(400), Some("top_p")));

    // Interrupted by SIGKILL once some answers are on disk, then resumed.
    let mut child = kiln_batch(dir.path(), &model, &["in.jsonl", "-o", "resumed.jsonl"]).stderr(Stdio::null()).spawn().unwrap();
    let partial = dir.path().join("resumed.jsonl.partial/output.jsonl");
    let end = Instant::now() + Duration::from_secs(300);
    while std::fs::read_to_string(&partial).map_or(0, |t| t.lines().count()) < 4 {
        assert!(child.try_wait().unwrap().is_none(), "kiln batch ended before it could be interrupted");
        assert!(Instant::now() < end, "no answers appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = run(&mut kiln_batch(dir.path(), &model, &["in.jsonl", "-o", "resumed.jsonl"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("resumed.jsonl.partial").exists());
    let resumed = read_lines(&dir.path().join("resumed.jsonl"));
    let got: Vec<&str> = resumed.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.push("bad");
    assert_eq!(got, want, "each request once, in input order (errors included without --error-file)");
    let (a, b) = (answers(&whole), answers(&resumed[..N]));
    assert_eq!(a, b, "the resumed run's answers equal the uninterrupted run's");

    // A malformed input is refused before the model loads, with its line.
    std::fs::write(dir.path().join("broken.jsonl"), format!("{}\n{{oops\n", chat_line("a", "hi", 2))).unwrap();
    let out = kiln_batch(dir.path(), &model, &["broken.jsonl", "-o", "x.jsonl"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.jsonl:2:") && err.contains("invalid JSON"), "{err}");
}
