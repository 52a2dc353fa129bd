//! Quantized GGUF weights stay in their blocks in memory: a random-weight
//! llama GGUF of a larger shape (hidden 1024, 8 layers, vocab 32000, a
//! Q4_K_M-style mix of Q4_K and Q6_K; ~100 MB, written by
//! scripts/gen_quant_fixtures.py with the `gguf` package) is loaded by kiln in
//! a child process, which reports its resident memory (VmRSS from
//! /proc/self/status) before and after. What the load added must be at most
//! the file size + the KV pool + 10% (widened to f32 it would be ~7x the file).

use kiln::backend::cpu::KvCache;
use kiln::model::llama::LlamaModel;
use kiln::model::loader::open_weights;
use kiln::model::BatchInput;
use std::path::{Path, PathBuf};
use std::process::Command;

const CHILD_ENV: &str = "KILN_QUANT_MEMORY_CHILD";
const KV_BLOCKS: usize = 64;
const BLOCK: usize = 16;

/// Resident set size of this process in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// In the child: load, run one prefill through a KV pool, report.
fn child(path: &Path) {
    let before = rss_bytes();
    let (cfg, src) = open_weights(path).unwrap();
    let model = LlamaModel::load(cfg, src.as_ref(), |_| {}).unwrap();
    drop(src); // unmaps the file
    let cfg = &model.cfg;
    let mut kv: KvCache = model.new_kv_cache(KV_BLOCKS, BLOCK);
    let kv_bytes = 2 * cfg.num_layers * KV_BLOCKS * BLOCK * cfg.num_kv_heads * cfg.head_dim * 4;
    let prompt: Vec<u32> = (0..20).map(|i| 3 + 997 * i % 32000).collect();
    let table: Vec<u32> = (1..=2).collect();
    let logits = model.forward(&BatchInput::build(BLOCK, &[(&prompt, 0, &table, true)]), &mut kv);
    let step = model.forward(&BatchInput::build(BLOCK, &[(&[7], prompt.len(), &table, true)]), &mut kv);
    assert!(logits.iter().chain(&step).all(|v| v.is_finite()), "non-finite logits");
    assert_eq!(logits.len(), cfg.vocab_size);
    println!("KILN_RSS before={before} after={} weights={} kv={kv_bytes}", rss_bytes(), model.weight_bytes());
}

fn field(out: &str, key: &str) -> u64 {
    let at = out.find("KILN_RSS ").unwrap_or_else(|| panic!("child said: {out}"));
    let line = out[at..].lines().next().unwrap();
    let kv = line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).unwrap();
    kv.parse().unwrap()
}

#[test]
fn resident_memory_after_load_is_file_size_plus_kv_pool() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        return child(Path::new(&path));
    }
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("random-q4_k_m.gguf");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/gen_quant_fixtures.py");
    let st = Command::new("python3").arg(&script).arg("rss").arg(&gguf).status().expect("python3");
    assert!(st.success(), "{} rss failed", script.display());
    let file = std::fs::metadata(&gguf).unwrap().len();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["resident_memory_after_load_is_file_size_plus_kv_pool", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &gguf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {text}");
    let (before, after, weights, kv) = (field(&text, "before"), field(&text, "after"), field(&text, "weights"), field(&text, "kv"));
    let added = after.saturating_sub(before);
    println!("file {file} B, weights {weights} B, KV pool {kv} B, RSS {before} -> {after} (+{added}) B");
    // the weights are the file's blocks (norms aside), not a widened copy
    assert!(weights as f64 >= 0.95 * file as f64 && weights <= file, "weights {weights} B vs file {file} B");
    let limit = (1.1 * (file + kv) as f64) as u64;
    assert!(added <= limit, "loading added {added} B of resident memory; limit {limit} B (file {file} + KV {kv} + 10%)");
}
