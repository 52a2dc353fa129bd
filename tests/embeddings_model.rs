//! Embedding models against independent references:
//! - all-MiniLM-L6-v2 (models/fetch_minilm.sh) against sentence-transformers'
//!   own vectors for 50 sentences (tests/fixtures/embeddings/minilm_golden.json,
//!   made by scripts/gen_embedding_golden.py): same token ids, cosine >= 0.99999;
//! - a tiny random Qwen3 embedding model against transformers' last-token,
//!   L2-normalised `last_hidden_state` (tests/fixtures/embeddings/qwen3_embed).
//! Every input goes through the embedding engine (`EmbedHandle`), several
//! requests at once, as the server sends them.

use base64::Engine as _;
use clap::Parser;
use kiln::embedding::{start_embedding, EmbedEngine};
use kiln::engine::embed::EmbedRequest;
use kiln::engine::Priority;
use kiln::launch::{resolve_minilm, EngineArgs};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Deserialize)]
struct Case {
    text: Option<String>,
    ids: Vec<u32>,
    embedding_f32_b64: String,
}

#[derive(Deserialize)]
struct Golden {
    dimensions: usize,
    cases: Vec<Case>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings")
}

fn golden(path: &Path) -> Golden {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn decode(b64: &str) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn start(path: &Path, flags: &[&str]) -> EmbedEngine {
    let cli = Cli::parse_from(std::iter::once("test").chain(flags.iter().copied()));
    start_embedding(&cli.engine, path).expect("embedding model starts")
}

/// Sends `inputs` as `requests` requests submitted together; vectors in input order.
fn embed_all(e: &EmbedEngine, inputs: &[Vec<u32>], requests: usize) -> Vec<Vec<f32>> {
    let per = inputs.len().div_ceil(requests);
    let rxs: Vec<_> = inputs
        .chunks(per)
        .enumerate()
        .map(|(i, chunk)| {
            let req = EmbedRequest { request_id: format!("t{i}"), inputs: chunk.to_vec(), priority: Priority::Interactive };
            e.handle.submit(req).expect("accepted")
        })
        .collect();
    rxs.into_iter().flat_map(|rx| rx.blocking_recv().expect("reply").expect("vectors")).collect()
}

#[test]
fn minilm_matches_sentence_transformers() {
    let path = resolve_minilm().expect("all-MiniLM-L6-v2 (models/fetch_minilm.sh)");
    let g = golden(&fixtures().join("minilm_golden.json"));
    let e = start(&path, &[]);
    assert_eq!(e.max_model_len, 256, "sentence_bert_config.json's max_seq_length");
    assert_eq!(e.matryoshka, kiln::model::pooling::Matryoshka::No);
    for c in &g.cases {
        let ids = e.tokenizer.encode(c.text.as_deref().unwrap(), true).unwrap();
        assert_eq!(ids, c.ids, "token ids of {:?}", c.text);
    }
    let inputs: Vec<Vec<u32>> = g.cases.iter().map(|c| c.ids.clone()).collect();
    let got = embed_all(&e, &inputs, 5);
    assert_eq!(got.len(), g.cases.len());
    for (c, v) in g.cases.iter().zip(&got) {
        let want = decode(&c.embedding_f32_b64);
        assert_eq!(v.len(), g.dimensions);
        let cos = cosine(v, &want);
        assert!(cos >= 0.99999, "cosine {cos} for {:?} ({} tokens)", c.text, c.ids.len());
        let norm: f64 = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "Normalize module: norm {norm}");
    }
    let stats = e.handle.stats();
    assert_eq!(stats.computed_tokens_total as usize, inputs.iter().map(Vec::len).sum::<usize>(), "each input encoded once");
    e.handle.shutdown();
}

#[test]
fn minilm_limits_and_truncation() {
    let path = resolve_minilm().unwrap();
    let e = start(&path, &["--max-num-batched-tokens", "512", "--max-num-seqs", "4"]);
    let long = "word ".repeat(300);
    let full = e.tokenizer.encode(&long, true).unwrap();
    assert!(full.len() > 256);
    let err = e.handle.submit(EmbedRequest { request_id: "x".into(), inputs: vec![full.clone()], priority: Priority::Interactive });
    let msg = err.unwrap_err().to_string();
    assert!(msg.contains(&full.len().to_string()) && msg.contains("256"), "{msg}");
    // Truncation keeps [CLS] first and [SEP] last, as transformers' truncation=True does.
    let cut = e.tokenizer.encode_truncated(&long, 256).unwrap();
    assert_eq!(cut.len(), 256);
    assert_eq!((cut[0], cut[255]), (full[0], *full.last().unwrap()));
    assert_eq!(&cut[1..255], &full[1..255]);
    // Same vector alone or batched with others under a small step budget.
    let a = embed_all(&e, &[cut.clone()], 1);
    let many = embed_all(&e, &[vec![101, 7592, 102], cut.clone(), vec![101, 2088, 102]], 3);
    assert!(cosine(&a[0], &many[1]) > 0.999999);
    e.handle.shutdown();
}

#[test]
fn qwen3_embedding_fixture_matches_transformers() {
    let dir = fixtures().join("qwen3_embed");
    let g = golden(&dir.join("reference.json"));
    let e = start(&dir, &["--max-num-batched-tokens", "256", "--max-num-seqs", "3"]);
    assert_eq!(e.max_model_len, 128, "sentence_bert_config.json's max_seq_length");
    assert!(e.matryoshka.enabled(), "config.json says is_matryoshka");
    let inputs: Vec<Vec<u32>> = g.cases.iter().map(|c| c.ids.clone()).collect();
    let got = embed_all(&e, &inputs, 2);
    for (c, v) in g.cases.iter().zip(&got) {
        let want = decode(&c.embedding_f32_b64);
        assert_eq!(v.len(), g.dimensions);
        let cos = cosine(v, &want);
        let max_diff = v.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(cos >= 0.99999 && max_diff < 1e-4, "{} ids: cosine {cos}, max |diff| {max_diff}", c.ids.len());
    }
    e.handle.shutdown();
}
