//! Issue 7 over HTTP against a real `kiln serve` (default model, temporary
//! --data-dir): the whole Files + Batch flow with answers checked against
//! the live endpoints' own answers to the same bodies, cancellation,
//! pagination, and every bad input's OpenAI-shaped error.

mod batch_support;

use std::collections::BTreeMap;

use batch_support::*;
use serde_json::{json, Value};

/// Every custom_id of `want` appears exactly once across `lines`.
fn assert_each_once(lines: &[&Value], want: &[String]) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for l in lines {
        *seen.entry(l["custom_id"].as_str().unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), want.len(), "answered ids {:?}", seen.keys());
    for id in want {
        assert_eq!(seen.get(id.as_str()), Some(&1), "custom_id {id} answered exactly once");
    }
}

#[tokio::test]
async fn flow_matches_live_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kiln) = Kiln::start(dir.path(), &[]).await else { return };
    let api = kiln.api(None);
    let mut lines: Vec<String> = chat_file(6, 6).lines().map(String::from).collect();
    let bad_temperature = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 5});
    let other_model = json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    let streamed = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": true});
    for (id, body) in [("bad-temperature", &bad_temperature), ("other-model", &other_model), ("streamed", &streamed)] {
        lines.insert(2, json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions", "body": body}).to_string());
    }
    let ids: Vec<String> = lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["custom_id"].as_str().unwrap().to_string()).collect();
    let meta = json!({"purpose": "test"});
    let (status, file) = api.upload(lines.join("\n").as_bytes(), "batch").await;
    assert_eq!(status, 200, "{file}");
    assert_eq!((file["object"].as_str(), file["purpose"].as_str(), file["status"].as_str()), (Some("file"), Some("batch"), Some("processed")));
    assert_eq!(file["bytes"], lines.join("\n").len());
    let (status, created) =
        api.post("/v1/batches", &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h", "metadata": meta})).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!((created["object"].as_str(), created["status"].as_str()), (Some("batch"), Some("validating")));
    assert_eq!(created["expires_at"].as_u64().unwrap(), created["created_at"].as_u64().unwrap() + 86400);

    let done = api.wait_final(created["id"].as_str().unwrap(), 300).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"], json!({"total": 9, "completed": 6, "failed": 3}));
    assert_eq!(done["metadata"], meta);
    for t in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(done[t].as_u64().unwrap() >= done["created_at"].as_u64().unwrap(), "{t} in {done}");
    }
    assert!(done["cancelled_at"].is_null() && done["failed_at"].is_null() && done["errors"].is_null());
    let outputs = api.result_lines(&done["output_file_id"]).await;
    let errors = api.result_lines(&done["error_file_id"]).await;
    assert_each_once(&outputs.iter().chain(&errors).collect::<Vec<_>>(), &ids);
    let out_ids: Vec<&str> = outputs.iter().map(|l| l["custom_id"].as_str().unwrap()).collect();
    let want_order: Vec<&str> = ids.iter().map(String::as_str).filter(|i| i.starts_with("req-")).collect();
    assert_eq!(out_ids, want_order, "output in input order");

    // Each answer equals the live endpoint's answer to the same body.
    for (line, l) in lines.iter().zip(&ids) {
        let body = &serde_json::from_str::<Value>(line).unwrap()["body"];
        let result = outputs.iter().chain(&errors).find(|r| r["custom_id"] == *l).unwrap();
        assert!(result["id"].as_str().unwrap().starts_with("batch_req_"));
        assert!(result["response"]["request_id"].as_str().is_some_and(|r| !r.is_empty()));
        let got = &result["response"]["body"];
        if l == "streamed" {
            assert_eq!(result["response"]["status_code"], 400);
            assert_eq!(got["error"]["param"], "stream");
            continue;
        }
        let (status, live) = api.post("/v1/chat/completions", body).await;
        assert_eq!(result["response"]["status_code"], status, "{l}: {got} vs live {live}");
        assert!(result["error"].is_null());
        if status != 200 {
            assert_eq!(got, &live, "{l}: the same error as the live endpoint");
            continue;
        }
        assert_eq!(got["object"], "chat.completion");
        assert!(got["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(got["model"], MODEL);
        assert_eq!(got["system_fingerprint"], live["system_fingerprint"]);
        assert_eq!(got["choices"], live["choices"], "{l}: greedy batch answer equals the live one");
        for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
            assert_eq!(got["usage"][k], live["usage"][k], "{l}: usage.{k}");
        }
    }

    // Result files are files of the caller, with their own purpose.
    let (_, out_file) = api.get(&format!("/v1/files/{}", done["output_file_id"].as_str().unwrap())).await;
    assert_eq!(out_file["purpose"], "batch_output");
    let (_, text) = api.get_text(&format!("/v1/files/{}/content", done["output_file_id"].as_str().unwrap())).await;
    assert_eq!(out_file["bytes"], text.len());
    let (_, list) = api.get("/v1/files?purpose=batch_output").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);

    // Pagination: newest first, `after` continues, `limit` bounds.
    let second = api.start_batch(&chat_file(1, 2), "/v1/chat/completions").await;
    let (_, page) = api.get("/v1/batches?limit=1").await;
    assert_eq!((page["object"].as_str(), page["has_more"].as_bool()), (Some("list"), Some(true)));
    assert_eq!(page["data"][0]["id"], second["id"]);
    assert_eq!((&page["first_id"], &page["last_id"]), (&second["id"], &second["id"]));
    let (_, rest) = api.get(&format!("/v1/batches?limit=10&after={}", second["id"].as_str().unwrap())).await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!((rest["data"][0]["id"].clone(), rest["has_more"].as_bool()), (done["id"].clone(), Some(false)));
    let (status, body) = api.get("/v1/batches?limit=0").await;
    assert_error(status, &body, 400, "invalid_request_error", Some("limit"));
    api.wait_final(second["id"].as_str().unwrap(), 120).await;

    // Deleting: the input file goes, reads then say 404.
    let input = format!("/v1/files/{}", file["id"].as_str().unwrap());
    let (status, deleted) = api.delete(&input).await;
    assert_eq!((status, deleted["deleted"].as_bool(), deleted["object"].as_str()), (200, Some(true), Some("file")));
    let (status, body) = api.get(&input).await;
    assert_error(status, &body, 404, "invalid_request_error", Some("file_id"));
}

#[tokio::test]
async fn cancel_answers_every_request_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(kiln) = Kiln::start(dir.path(), &["--max-batch-inflight", "2"]).await else { return };
    let api = kiln.api(None);
    let n = 30;
    let batch = api.start_batch(&chat_file(n, 12), "/v1/chat/completions").await;
    let id = batch["id"].as_str().unwrap().to_string();
    // The input of a running batch cannot be deleted.
    let (status, body) = api.delete(&format!("/v1/files/{}", batch["input_file_id"].as_str().unwrap())).await;
    assert_error(status, &body, 409, "invalid_request_error", None);
    loop {
        let (_, b) = api.get(&format!("/v1/batches/{id}")).await;
        if b["request_counts"]["completed"].as_u64().unwrap() >= 2 {
            break;
        }
        assert_eq!(b["status"].as_str().map(|s| ["validating", "in_progress"].contains(&s)), Some(true), "{b}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, cancelling) = api.post(&format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{cancelling}");
    assert!(["cancelling", "cancelled"].contains(&cancelling["status"].as_str().unwrap()), "{cancelling}");
    assert!(cancelling["cancelling_at"].as_u64().is_some());
    let done = api.wait_final(&id, 120).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["cancelled_at"].as_u64().is_some() && done["completed_at"].is_null());
    let outputs = api.result_lines(&done["output_file_id"]).await;
    let errors = api.result_lines(&done["error_file_id"]).await;
    let ids: Vec<String> = (0..n).map(|i| format!("req-{i}")).collect();
    assert_each_once(&outputs.iter().chain(&errors).collect::<Vec<_>>(), &ids);
    assert!(outputs.len() >= 2 && outputs.len() < n, "partial results: {}", outputs.len());
    assert_eq!(done["request_counts"]["completed"], outputs.len());
    for e in &errors {
        assert!(e["response"].is_null(), "{e}");
        assert_eq!(e["error"]["code"], "batch_cancelled");
    }
    let (status, body) = api.post(&format!("/v1/batches/{id}/cancel"), &json!({})).await;
    assert_error(status, &body, 409, "invalid_request_error", None);
}

#[tokio::test]
async fn bad_inputs_get_openai_errors() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--max-file-bytes", "4096", "--api-key", "sk-alice", "--api-key", "sk-bob"];
    let Some(kiln) = Kiln::start(dir.path(), &extra).await else { return };
    let alice = kiln.api(Some("sk-alice"));
    let bob = kiln.api(Some("sk-bob"));
    let good = chat_line("a", "hi", 2);
    let check_file = |text: String, line: u64, words: &'static [&'static str]| {
        let alice = &alice;
        async move {
            let (status, body) = alice.upload(text.as_bytes(), "batch").await;
            assert_error(status, &body, 400, "invalid_request_error", Some("file"));
            let msg = body["error"]["message"].as_str().unwrap();
            assert!(msg.contains(&format!("line {line}:")), "{msg}");
            for w in words {
                assert!(msg.contains(w), "{msg} should mention {w}");
            }
        }
    };
    check_file(format!("{good}\n{{\"custom_id\": \"b\", \"method\": "), 2, &["invalid JSON"]).await;
    let moderations = json!({"custom_id": "e", "method": "POST", "url": "/v1/moderations", "body": {"model": MODEL, "input": "x"}});
    check_file(format!("{moderations}\n{good}"), 1, &["/v1/moderations"]).await;
    check_file(format!("{good}\n{}\n{good}", chat_line("b", "yo", 2)), 3, &["duplicate custom_id 'a'", "line 1"]).await;
    check_file(format!("{good}\n{}", good.replace("\"POST\"", "\"GET\"").replace("\"a\"", "\"b\"")), 2, &["POST"]).await;

    let big = (0..60).map(|i| chat_line(&format!("r{i}"), "a long enough prompt", 2)).collect::<Vec<_>>().join("\n");
    assert!(big.len() > 4096);
    let (status, body) = alice.upload(big.as_bytes(), "batch").await;
    assert_error(status, &body, 413, "invalid_request_error", Some("file"));
    let (status, body) = alice.upload(good.as_bytes(), "fine-tune").await;
    assert_error(status, &body, 400, "invalid_request_error", Some("purpose"));
    let (status, body) = alice.upload(b"", "batch").await;
    assert_error(status, &body, 400, "invalid_request_error", Some("file"));

    // Unknown ids: 404 with OpenAI's shape.
    let (status, body) = alice.get("/v1/files/file-nope").await;
    assert_error(status, &body, 404, "invalid_request_error", Some("file_id"));
    let (status, body) = alice.get("/v1/files/file-nope/content").await;
    assert_error(status, &body, 404, "invalid_request_error", Some("file_id"));
    let create = |file: &Value, endpoint: &str, window: &str| json!({"input_file_id": file, "endpoint": endpoint, "completion_window": window});
    let (status, body) = alice.post("/v1/batches", &create(&json!("file-nope"), "/v1/chat/completions", "24h")).await;
    assert_error(status, &body, 404, "invalid_request_error", Some("input_file_id"));
    let (status, body) = alice.get("/v1/batches/batch_nope").await;
    assert_error(status, &body, 404, "invalid_request_error", Some("batch_id"));

    // Bad batch parameters.
    let (_, file) = alice.upload(good.as_bytes(), "batch").await;
    let (status, body) = alice.post("/v1/batches", &create(&file["id"], "/v1/moderations", "24h")).await;
    assert_error(status, &body, 400, "invalid_request_error", Some("endpoint"));
    let (status, body) = alice.post("/v1/batches", &create(&file["id"], "/v1/chat/completions", "1h")).await;
    assert_error(status, &body, 400, "invalid_request_error", Some("completion_window"));
    let mut extra_field = create(&file["id"], "/v1/chat/completions", "24h");
    extra_field["priority"] = json!("high");
    let (status, body) = alice.post("/v1/batches", &extra_field).await;
    assert_error(status, &body, 400, "invalid_request_error", Some("priority"));
    let (status, body) = alice.post("/v1/batches", &json!({"endpoint": "/v1/chat/completions", "completion_window": "24h"})).await;
    assert_error(status, &body, 400, "invalid_request_error", Some("input_file_id"));

    // A file whose lines target another endpoint: the batch fails validation.
    let (status, mismatched) = alice.post("/v1/batches", &create(&file["id"], "/v1/completions", "24h")).await;
    assert_eq!(status, 200, "{mismatched}");
    let failed = alice.wait_final(mismatched["id"].as_str().unwrap(), 60).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["failed_at"].as_u64().is_some() && failed["output_file_id"].is_null());
    let err = &failed["errors"]["data"][0];
    assert_eq!((err["line"].as_u64(), err["param"].as_str(), err["code"].as_str()), (Some(1), Some("url"), Some("mismatched_endpoint")));

    // Ownership: bob sees none of alice's files and batches.
    let (status, batch) = alice.post("/v1/batches", &create(&file["id"], "/v1/chat/completions", "24h")).await;
    assert_eq!(status, 200, "{batch}");
    let bid = batch["id"].as_str().unwrap();
    let fid = file["id"].as_str().unwrap();
    for path in [format!("/v1/batches/{bid}"), format!("/v1/files/{fid}"), format!("/v1/files/{fid}/content")] {
        let (status, body) = bob.get(&path).await;
        assert_eq!(status, 404, "bob GET {path}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    let (status, _) = bob.post(&format!("/v1/batches/{bid}/cancel"), &json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = bob.delete(&format!("/v1/files/{fid}")).await;
    assert_eq!(status, 404);
    let (status, _) = bob.post("/v1/batches", &create(&file["id"], "/v1/chat/completions", "24h")).await;
    assert_eq!(status, 404, "bob cannot start a batch on alice's file");
    assert_eq!(bob.get("/v1/batches").await.1["data"], json!([]));
    assert_eq!(bob.get("/v1/files").await.1["data"], json!([]));
    assert_eq!(alice.get(&format!("/v1/batches/{bid}")).await.0, 200);
    assert_eq!(alice.get("/v1/batches?limit=1").await.1["data"][0]["id"], bid);
    let (status, body) = kiln.api(None).get("/v1/batches").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_api_key")));
    let done = alice.wait_final(bid, 120).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(bob.get(&format!("/v1/files/{}/content", done["output_file_id"].as_str().unwrap())).await.0, 404);
}
