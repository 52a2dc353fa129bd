//! Durability: a batch of 120 requests survives three `kill -9`s of the
//! server mid-way. After each restart on the same --data-dir the batch
//! resumes, nothing already answered is lost, and at the end every
//! custom_id is answered exactly once, with the same greedy answers as a
//! crash-free run of the same file through `kiln batch` (offline).
//! Also: a batch whose completion window passed while the server was down
//! ends `expired`, keeping its answers and listing the rest as expired.

mod batch_support;

use std::time::{Duration, Instant};

use batch_support::*;

const N: usize = 120;
const MAX_TOKENS: u32 = 8;
const SERVER_FLAGS: &[&str] = &["--max-batch-inflight", "16"];

async fn counts(api: &Api, id: &str) -> (String, u64) {
    let (_, b) = api.get(&format!("/v1/batches/{id}")).await;
    (b["status"].as_str().unwrap().to_string(), b["request_counts"]["completed"].as_u64().unwrap())
}

#[tokio::test]
async fn kill9_midway_resumes_each_request_once() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("input.jsonl");
    std::fs::write(&input, chat_file(N, MAX_TOKENS)).unwrap();
    let Some(reference) = offline_reference(work.path(), &input) else { return };
    let ids: Vec<String> = reference.iter().map(|l| l["custom_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, (0..N).map(|i| format!("req-{i}")).collect::<Vec<_>>(), "offline output in input order");
    assert!(reference.iter().all(|l| l["response"]["status_code"] == 200), "every reference request succeeds");

    let data = work.path().join("data");
    let mut kiln = Kiln::start(&data, SERVER_FLAGS).await.expect("model present");
    let batch = kiln.api(None).start_batch(&std::fs::read_to_string(&input).unwrap(), "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap().to_string();
    for round in 1..=3u64 {
        let api = kiln.api(None);
        let target = round * N as u64 / 4;
        let end = Instant::now() + Duration::from_secs(300);
        let before = loop {
            let (status, done) = counts(&api, &id).await;
            assert!(["validating", "in_progress"].contains(&status.as_str()), "the batch must still run at crash {round}: {status}");
            if done >= target {
                break done;
            }
            assert!(Instant::now() < end, "no progress to {target} before crash {round}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        kiln.kill9();
        kiln = Kiln::start(&data, SERVER_FLAGS).await.unwrap();
        // Answers made durable before the crash are still there.
        let api = kiln.api(None);
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, done) = counts(&api, &id).await;
            if done >= before || status == "completed" {
                break;
            }
            assert!(Instant::now() < end, "after crash {round}: {done} answers, {before} before it");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let api = kiln.api(None);
    let done = api.wait_final(&id, 600).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"], serde_json::json!({"total": N, "completed": N, "failed": 0}));
    assert!(done["error_file_id"].is_null());
    let outputs = api.result_lines(&done["output_file_id"]).await;
    let got: Vec<&str> = outputs.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>(), "each custom_id exactly once, in input order");
    let (got, want) = (answers(&outputs), answers(&reference));
    for id in &ids {
        assert_eq!(got[id], want[id], "{id}: the crashed run's answer equals the crash-free one");
    }
}

#[tokio::test]
async fn window_passed_during_downtime_expires() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let flags = ["--max-batch-inflight", "2"];
    let Some(mut kiln) = Kiln::start(&data, &flags).await else { return };
    let n = 30;
    let batch = kiln.api(None).start_batch(&chat_file(n, 16), "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(300);
    while counts(&kiln.api(None), &id).await.1 < 2 {
        assert!(Instant::now() < end, "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kiln.kill9();
    // Move the deadline into the past, as if the server had been down for a day.
    let db = rusqlite::Connection::open(data.join("kiln-batch.sqlite")).unwrap();
    let changed = db.execute("UPDATE batches SET object = json_set(object, '$.expires_at', 1) WHERE id = ?1", [&id]).unwrap();
    assert_eq!(changed, 1);
    drop(db);

    let kiln = Kiln::start(&data, &flags).await.unwrap();
    let api = kiln.api(None);
    let done = api.wait_final(&id, 120).await;
    assert_eq!(done["status"], "expired", "{done}");
    assert!(done["expired_at"].as_u64().is_some() && done["completed_at"].is_null());
    let outputs = api.result_lines(&done["output_file_id"]).await;
    let errors = api.result_lines(&done["error_file_id"]).await;
    assert!(outputs.len() >= 2 && outputs.len() < n, "answers kept: {}", outputs.len());
    assert_eq!(done["request_counts"]["completed"], outputs.len());
    let mut ids: Vec<&str> = outputs.iter().chain(&errors).map(|l| l["custom_id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("req-{i}")).collect();
    want.sort();
    assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>(), "each custom_id exactly once");
    for e in &errors {
        assert!(e["response"].is_null());
        assert_eq!(e["error"]["code"], "batch_expired");
    }
}
