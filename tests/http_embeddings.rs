//! One `kiln serve` with the default chat model and all-MiniLM-L6-v2:
//! /v1/embeddings against sentence-transformers' vectors (float and base64
//! decode the same), routing by `model`, the 400s of the wrong task, the
//! length limit, and chat and embedding requests interleaved from 16
//! clients with no 5xx.

mod http_support;

use base64::Engine as _;
use http_support::server::{metric_value, KilnServer, SMALL};
use serde_json::{json, Value};

const CHAT: &str = "SmolLM2-135M-Instruct.Q4_1";

fn golden() -> Vec<(String, Vec<f32>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings/minilm_golden.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["cases"].as_array().unwrap().iter().map(|c| (c["text"].as_str().unwrap().to_string(), decode(c["embedding_f32_b64"].as_str().unwrap()))).collect()
}

fn decode(b64: &str) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

async fn start() -> Option<KilnServer> {
    let minilm = kiln::launch::resolve_minilm().expect("all-MiniLM-L6-v2 (models/fetch_minilm.sh)");
    let spec = format!("minilm={}", minilm.display());
    let mut args = vec!["--model", spec.as_str()];
    args.extend_from_slice(SMALL);
    KilnServer::start(&args).await
}

async fn post(base: &str, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new().post(format!("{base}{path}")).json(body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn chat(text: &str) -> Value {
    json!({"model": CHAT, "messages": [{"role": "user", "content": text}], "max_tokens": 8, "temperature": 0})
}

#[tokio::test]
async fn embeddings_and_chat_in_one_server() {
    let Some(s) = start().await else { return };
    let base = &s.base;
    let g = golden();

    let models: Value = reqwest::get(format!("{base}/v1/models")).await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![CHAT, "minilm"]);

    // Float and base64 of the same inputs: the same vectors, sentence-transformers' own.
    let texts: Vec<&str> = g[..8].iter().map(|c| c.0.as_str()).collect();
    let (st, f) = post(base, "/v1/embeddings", &json!({"model": "minilm", "input": texts})).await;
    assert_eq!(st, 200, "{f}");
    let (st, b) = post(base, "/v1/embeddings", &json!({"model": "minilm", "input": texts, "encoding_format": "base64"})).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!((f["object"].as_str(), f["model"].as_str()), (Some("list"), Some("minilm")));
    let usage = f["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(usage > 8 && f["usage"]["total_tokens"].as_u64() == Some(usage), "{}", f["usage"]);
    for (i, (text, want)) in g[..8].iter().enumerate() {
        assert_eq!((f["data"][i]["index"].as_u64(), f["data"][i]["object"].as_str()), (Some(i as u64), Some("embedding")));
        let fv = floats(&f["data"][i]["embedding"]);
        let bv = decode(b["data"][i]["embedding"].as_str().unwrap());
        assert_eq!(fv, bv, "float and base64 of {text:?}");
        assert!(cosine(&fv, want) >= 0.99999, "{text:?}");
    }

    // Token ids, a single string; the wrong task; unknown models; the limit.
    let (st, one) = post(base, "/v1/embeddings", &json!({"model": "minilm", "input": [101, 7592, 102]})).await;
    assert_eq!((st, one["data"].as_array().unwrap().len()), (200, 1));
    let (st, e) = post(base, "/v1/embeddings", &json!({"model": CHAT, "input": "hi"})).await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("text generation"), "{e}");
    let (st, e) = post(base, "/v1/chat/completions", &json!({"model": "minilm", "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("embeddings (/v1/embeddings)"), "{e}");
    assert_eq!(post(base, "/v1/embeddings", &json!({"model": "nope", "input": "hi"})).await.0, 404);
    let long = "word ".repeat(300);
    let (st, e) = post(base, "/v1/embeddings", &json!({"model": "minilm", "input": long})).await;
    assert_eq!(st, 400, "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("256") && msg.contains("302"), "both numbers: {msg}");
    let (st, t) = post(base, "/v1/embeddings", &json!({"model": "minilm", "input": long, "truncate_prompt_tokens": 256})).await;
    assert_eq!((st, t["usage"]["prompt_tokens"].as_u64()), (200, Some(256)), "{t}");
    // k below the [CLS] and [SEP] every input carries: a 400, not 2 tokens.
    let (st, e) = post(base, "/v1/embeddings", &json!({"model": "minilm", "input": long, "truncate_prompt_tokens": 1})).await;
    assert_eq!((st, e["error"]["param"].as_str()), (400, Some("truncate_prompt_tokens")), "{e}");
    let (st, e) = post(base, "/v1/embeddings", &json!({"model": "minilm", "input": "hi", "dimensions": 64})).await;
    assert_eq!(st, 400, "MiniLM is not a Matryoshka model: {e}");
    // Its native size truncates nothing: accepted (was a 400), same vector.
    let (st, native) = post(base, "/v1/embeddings", &json!({"model": "minilm", "input": "hi", "dimensions": 384})).await;
    let (_, plain) = post(base, "/v1/embeddings", &json!({"model": "minilm", "input": "hi"})).await;
    assert_eq!(st, 200, "{native}");
    assert_eq!(native["data"][0]["embedding"], plain["data"][0]["embedding"]);
    assert_eq!(post(base, "/v1/embeddings", &json!({"model": "minilm", "input": "hi", "encoding_format": "hex"})).await.0, 400);

    // 16 clients, chat and embeddings interleaved: every answer right, no 5xx.
    let (st, solo) = post(base, "/v1/chat/completions", &chat("Name a colour.")).await;
    assert_eq!(st, 200);
    let solo_text = solo["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (base, g, solo) = (base.clone(), g.clone(), solo_text.clone());
            tokio::spawn(async move {
                for round in 0..3 {
                    if (i + round) % 2 == 0 {
                        // kiln's greedy output does not depend on the batch (tests/engine_invariance.rs).
                        let (st, r) = post(&base, "/v1/chat/completions", &chat("Name a colour.")).await;
                        assert_eq!(st, 200, "{r}");
                        assert_eq!(r["choices"][0]["message"]["content"].as_str().unwrap(), solo, "client {i} round {round}");
                    } else {
                        let k = (i * 3 + round) % g.len();
                        let (st, r) = post(&base, "/v1/embeddings", &json!({"model": "minilm", "input": g[k].0})).await;
                        assert_eq!(st, 200, "{r}");
                        assert!(cosine(&floats(&r["data"][0]["embedding"]), &g[k].1) >= 0.99999);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (_, again) = post(base, "/v1/chat/completions", &chat("Name a colour.")).await;
    assert_eq!(again["choices"][0]["message"]["content"].as_str().unwrap(), solo_text, "greedy chat unchanged by embedding load");
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let five_xx: Vec<&str> = metrics.lines().filter(|l| l.starts_with("kiln_requests_total") && l.contains("status=\"5") && !l.contains("/health")).collect();
    assert!(five_xx.is_empty(), "{five_xx:?}");
    assert!(metrics.contains(r#"kiln_prompt_tokens_total{model="minilm"}"#), "{metrics}");
    // vLLM's prefill-token counter counts the embedding model's inputs too.
    let of_minilm = |name: &str| {
        metrics.lines().find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series.starts_with(name) && series.contains("\"minilm\"")).then(|| value.parse::<f64>().ok())?
        })
    };
    let (kiln_tokens, vllm_tokens) = (of_minilm("kiln_prompt_tokens_total{"), of_minilm("vllm:prompt_tokens_total{"));
    assert!(vllm_tokens.is_some_and(|v| v > 0.0) && vllm_tokens == kiln_tokens, "{kiln_tokens:?} {vllm_tokens:?}");
    assert!(metrics.contains(&format!(r#"kiln_generation_tokens_total{{model="{CHAT}"}}"#)), "{metrics}");
    assert!(metric_value(&metrics, "kiln_engine_steps_total").unwrap() > 0.0);
}

/// A decoder embedding model (the tiny Qwen3 fixture, Matryoshka per its
/// config.json) over HTTP: transformers' vectors, and `dimensions`
/// truncating then re-normalising.
#[tokio::test]
async fn decoder_embedding_model_and_dimensions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings/qwen3_embed");
    let spec = format!("qwen={}", dir.display());
    let mut args = vec!["--model", spec.as_str()];
    args.extend_from_slice(SMALL);
    let Some(s) = KilnServer::start(&args).await else { return };
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    let ids: Vec<&Value> = cases.iter().map(|c| &c["ids"]).collect();
    let (st, full) = post(&s.base, "/v1/embeddings", &json!({"model": "qwen", "input": ids})).await;
    assert_eq!(st, 200, "{full}");
    let (st, cut) = post(&s.base, "/v1/embeddings", &json!({"model": "qwen", "input": ids, "dimensions": 16})).await;
    assert_eq!(st, 200, "{cut}");
    for (i, c) in cases.iter().enumerate() {
        let want = decode(c["embedding_f32_b64"].as_str().unwrap());
        let f = floats(&full["data"][i]["embedding"]);
        assert!(cosine(&f, &want) >= 0.99999, "case {i}");
        let d = floats(&cut["data"][i]["embedding"]);
        assert_eq!(d.len(), 16);
        let norm: f64 = d.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "re-normalised: {norm}");
        assert!(cosine(&d, &f[..16]) > 0.99999, "the first 16 values, rescaled");
    }
    let (st, e) = post(&s.base, "/v1/embeddings", &json!({"model": "qwen", "input": "hi", "dimensions": 65})).await;
    assert_eq!(st, 400, "{e}");
    assert_eq!(e["error"]["param"], "dimensions");
}
