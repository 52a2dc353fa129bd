//! The Batch API runs `/v1/embeddings` lines: a server with the default
//! chat model and all-MiniLM-L6-v2, a batch of embedding lines, answers
//! equal to the live endpoint's for the same bodies (and to
//! sentence-transformers' vectors), a bad line in the error file.

mod batch_support;

use base64::Engine as _;
use batch_support::*;
use serde_json::{json, Value};

/// Each embedding of a response's `data`, from floats or base64.
fn vectors(data: &Value) -> Vec<Vec<f32>> {
    data.as_array()
        .unwrap()
        .iter()
        .map(|d| match &d["embedding"] {
            Value::String(s) => {
                let b = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
                b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
            }
            v => v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        })
        .collect()
}

/// Inputs batched with different neighbours go through GEMMs of different
/// shapes, so vectors agree to rounding, not bit for bit.
fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        let dot: f64 = x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum();
        let n = |v: &[f32]| v.iter().map(|&p| (p as f64).powi(2)).sum::<f64>().sqrt();
        let cos = dot / (n(x) * n(y));
        assert!(x.len() == y.len() && cos > 0.999_999, "{what}: cosine {cos}");
    }
}

fn line(id: &str, body: Value) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/embeddings", "body": body}).to_string()
}

#[tokio::test]
async fn batch_of_embedding_lines() {
    let minilm = kiln::launch::resolve_minilm().expect("all-MiniLM-L6-v2 (models/fetch_minilm.sh)");
    let spec = format!("minilm={}", minilm.display());
    let dir = tempfile::tempdir().unwrap();
    let Some(kiln) = Kiln::start_with(dir.path(), &["--model", &spec, "--max-model-len", "512", "--max-num-seqs", "8"]).await else { return };
    let api = kiln.api(None);
    let bodies = [
        json!({"model": "minilm", "input": "The cat sits on the mat."}),
        json!({"model": "minilm", "input": ["Paris is the capital of France.", "東京は日本の首都です。"], "encoding_format": "base64"}),
        json!({"model": "minilm", "input": [101, 7592, 102]}),
    ];
    let mut text: Vec<String> = bodies.iter().enumerate().map(|(i, b)| line(&format!("e{i}"), b.clone())).collect();
    text.push(line("bad", json!({"model": "minilm", "input": "word ".repeat(300)})));
    let batch = api.start_batch(&text.join("\n"), "/v1/embeddings").await;
    let done = api.wait_final(batch["id"].as_str().unwrap(), 300).await;
    assert_eq!(done["status"], "completed", "{done}\n{}", kiln.log_text());
    assert_eq!((done["request_counts"]["completed"].as_u64(), done["request_counts"]["failed"].as_u64()), (Some(3), Some(1)), "{done}");
    let out = api.result_lines(&done["output_file_id"]).await;
    for (i, body) in bodies.iter().enumerate() {
        let got = out.iter().find(|l| l["custom_id"] == format!("e{i}")).unwrap_or_else(|| panic!("e{i} in {out:?}"));
        assert_eq!(got["response"]["status_code"], 200, "{got}");
        let (status, live) = api.post("/v1/embeddings", body).await;
        assert_eq!(status, 200);
        assert_close(&vectors(&got["response"]["body"]["data"]), &vectors(&live["data"]), &format!("batch answer of e{i} against the live endpoint's"));
        assert_eq!(got["response"]["body"]["usage"], live["usage"]);
    }
    let errors = api.result_lines(&done["error_file_id"]).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0]["custom_id"].as_str(), errors[0]["response"]["status_code"].as_u64()), (Some("bad"), Some(400)), "{errors:?}");
}

/// `kiln batch` (offline) on an embedding model: it started a generation
/// engine only and could not load MiniLM; now the model starts as `kiln
/// serve` starts it, and the vectors are sentence-transformers' (the
/// golden file of scripts/gen_embedding_golden.py).
#[test]
fn offline_kiln_batch_runs_embedding_lines() {
    let minilm = kiln::launch::resolve_minilm().expect("all-MiniLM-L6-v2 (models/fetch_minilm.sh)");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings/minilm_golden.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases: Vec<&Value> = golden["cases"].as_array().unwrap().iter().take(6).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut text: Vec<String> = cases.iter().enumerate().map(|(i, c)| line(&format!("e{i}"), json!({"model": "minilm", "input": c["text"]}))).collect();
    text.push(line("bad", json!({"model": "minilm", "input": "word ".repeat(300)})));
    std::fs::write(dir.path().join("in.jsonl"), text.join("\n") + "\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(dir.path())
        .args(["batch", "in.jsonl", "-o", "out.jsonl", "--error-file", "err.jsonl", "--served-model-name", "minilm", "--model"])
        .arg(&minilm)
        .output()
        .unwrap();
    assert!(out.status.success(), "kiln batch failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let read = |name: &str| -> Vec<Value> {
        std::fs::read_to_string(dir.path().join(name)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let answers = read("out.jsonl");
    assert_eq!(answers.len(), cases.len());
    for (i, (a, c)) in answers.iter().zip(&cases).enumerate() {
        assert_eq!((a["custom_id"].as_str(), a["response"]["status_code"].as_u64()), (Some(format!("e{i}").as_str()), Some(200)), "{a}");
        let b = base64::engine::general_purpose::STANDARD.decode(c["embedding_f32_b64"].as_str().unwrap()).unwrap();
        let want: Vec<f32> = b.chunks_exact(4).map(|x| f32::from_le_bytes(x.try_into().unwrap())).collect();
        assert_close(&vectors(&a["response"]["body"]["data"]), &[want], &format!("e{i} against sentence-transformers"));
    }
    let errors = read("err.jsonl");
    assert_eq!((errors.len(), errors[0]["response"]["status_code"].as_u64()), (1, Some(400)), "{errors:?}");
}
