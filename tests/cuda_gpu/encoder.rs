//! The CUDA encoder (BERT-family embedding models, kernels/encoder.cu and
//! src/backend/cuda/encoder.rs) against the CPU encoder:
//! - each kernel on fresh random inputs vs the CPU backend's f32 ops, with
//!   outputs poisoned before each launch (every element must be written);
//! - the f32 GEMM (`Device::linear_f32`) vs a plain f64 sum;
//! - random-weight BERTs of three head sizes (32, 64, 128: every compiled
//!   attention kernel) vs `BertModel::forward` on the CPU, several inputs of
//!   mixed lengths in one step (one longer than an attention tile);
//! - all-MiniLM-L6-v2 (models/fetch_minilm.sh; not run where it is absent,
//!   as on the device machine) vs sentence-transformers' vectors
//!   (tests/fixtures/embeddings/minilm_golden.json) and the CPU encoder,
//!   cosine >= 0.99999 per sentence, mixed lengths in one step, both
//!   through the runner and through the embedding engine (`--device emu` or
//!   `cuda`);
//! - the tiny Qwen3 embedding fixture (a decoder, last-token pooling) through
//!   the engine on the device vs transformers, at the bf16 bar of the
//!   generation runner it runs on.
//! Shapes are small on the emulated device (it runs kernels on the CPU).
use super::support::*;
use base64::Engine as _;
use kiln::backend::cpu::encoder as cpu;
use kiln::backend::cpu::WeightData;
use kiln::backend::cuda::encoder::CudaBertRunner;
use kiln::backend::cuda::ops;
use kiln::model::bert::{BertConfig, BertModel};
use kiln::model::pooling::{Matryoshka, Pooling, PoolingMode};
use kiln::model::weights::{HostTensor, WeightSource};
use kiln::model::ModelError;
use kiln::runner::encoder::{BertRunner, EncoderRunner};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The bar every encoder output is held to, per sentence.
const COSINE: f64 = 0.99999;

fn randn_f32(r: &mut StdRng, n: usize, sigma: f32) -> Vec<f32> {
    (0..n).map(|_| randn(r) * sigma).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

/// (start, len) of inputs of these lengths packed back to back.
fn packed(lens: &[usize]) -> Vec<(usize, usize)> {
    let mut at = 0;
    lens.iter()
        .map(|&l| {
            at += l;
            (at - l, l)
        })
        .collect()
}

fn cu_seqlens(lens: &[usize]) -> Vec<i32> {
    std::iter::once(0).chain(lens.iter().scan(0i32, |a, &l| {
        *a += l as i32;
        Some(*a)
    }))
    .collect()
}

#[test]
fn layer_norm_with_bias_and_residual_matches_the_cpu() {
    let Some(dev) = device_or_skip("layer_norm_f32") else { return };
    let mut r = rng("layer_norm_f32");
    for hidden in [384, 1024, 4100] {
        let rows = 7;
        let x = randn_f32(&mut r, rows * hidden, 1.0);
        let xb = randn_f32(&mut r, hidden, 0.5);
        let res = randn_f32(&mut r, rows * hidden, 3.0);
        let w: Vec<f32> = (0..hidden).map(|_| 1.0 + 0.1 * randn(&mut r)).collect();
        let b = randn_f32(&mut r, hidden, 0.1);
        let (dx, dxb, dres, dw, db) = (upload(&dev, &x), upload(&dev, &xb), upload(&dev, &res), upload(&dev, &w), upload(&dev, &b));
        let eps = 1e-12;
        // Plain: the embeddings' norm.
        let out = poisoned::<f32>(&dev, rows * hidden);
        ops::layer_norm(&dev, out.ptr, dx.ptr, 0, 0, dw.ptr, db.ptr, rows, hidden, eps).unwrap();
        let mut want = vec![0f32; rows * hidden];
        cpu::layer_norm(&x, &w, &b, eps, &mut want);
        assert_rel(&download::<f32>(&dev, &out, rows * hidden), &want, 1e-6, &format!("layer_norm h={hidden}"));
        // Bias and residual, written over the residual as the runner does.
        ops::layer_norm(&dev, dres.ptr, dx.ptr, dxb.ptr, dres.ptr, dw.ptr, db.ptr, rows, hidden, eps).unwrap();
        let sum: Vec<f32> = x.iter().enumerate().map(|(i, &v)| (v + xb[i % hidden]) + res[i]).collect();
        cpu::layer_norm(&sum, &w, &b, eps, &mut want);
        assert_rel(&download::<f32>(&dev, &dres, rows * hidden), &want, 1e-6, &format!("layer_norm + bias + residual h={hidden}"));
    }
}

#[test]
fn gelu_erf_with_bias_matches_the_cpu() {
    let Some(dev) = device_or_skip("gelu_erf_f32") else { return };
    let mut r = rng("gelu_erf_f32");
    for (rows, cols) in [(1, 4), (9, 1536), (3, 4100)] {
        let x = randn_f32(&mut r, rows * cols, 3.0);
        let b = randn_f32(&mut r, cols, 1.0);
        let (dx, db) = (upload(&dev, &x), upload(&dev, &b));
        let out = poisoned::<f32>(&dev, rows * cols);
        ops::gelu_erf(&dev, out.ptr, dx.ptr, db.ptr, rows, cols).unwrap();
        let mut want: Vec<f32> = x.iter().enumerate().map(|(i, &v)| v + b[i % cols]).collect();
        cpu::gelu_erf_inplace(&mut want);
        let v: Vec<f32> = x.iter().enumerate().map(|(i, &v)| v + b[i % cols]).collect();
        let got = download::<f32>(&dev, &out, rows * cols);
        close_to_cpu_gelu(&got, &want, &v, &format!("gelu_erf {rows}x{cols}"));
        // In place, without a bias.
        ops::gelu_erf(&dev, dx.ptr, dx.ptr, 0, rows, cols).unwrap();
        let mut want = x.clone();
        cpu::gelu_erf_inplace(&mut want);
        close_to_cpu_gelu(&download::<f32>(&dev, &dx, rows * cols), &want, &x, &format!("gelu_erf in place {rows}x{cols}"));
    }
}

/// The CPU reference takes erf from Abramowitz and Stegun 7.1.26 (5.4e-7
/// absolute error measured in f32), the kernel from CUDA's erff, so
/// GELU(v) = v/2 (1 + erf(v/sqrt 2)) may differ by |v|/2 * that error plus
/// a few ulps of the result, element by element. (A relative-norm bound
/// alone fails on small vectors whose values are all far below zero, where
/// 1 + erf is tiny.) Large vectors are also held to 1e-6 relative in norm.
fn close_to_cpu_gelu(got: &[f32], want: &[f32], v: &[f32], what: &str) {
    for (i, ((g, w), x)) in got.iter().zip(want).zip(v).enumerate() {
        let bound = 0.5 * x.abs() * 1e-6 + 4.0 * f32::EPSILON * w.abs() + 1e-12;
        assert!((g - w).abs() <= bound, "{what}: element {i} (v = {x}): {g} vs {w}, bound {bound}");
    }
    if got.len() >= 1024 {
        assert_rel(got, want, 1e-6, what);
    }
}

#[test]
fn bert_embeddings_sum_three_rows_and_zero_bad_ids() {
    let Some(dev) = device_or_skip("bert_embeddings_f32") else { return };
    let mut r = rng("bert_embeddings_f32");
    let (vocab, max_pos, types, hidden, n) = (300, 40, 2, 128, 23);
    let word = randn_f32(&mut r, vocab * hidden, 1.0);
    let pos = randn_f32(&mut r, max_pos * hidden, 1.0);
    let ty = randn_f32(&mut r, types * hidden, 1.0);
    let mut ids: Vec<u32> = (0..n).map(|_| r.gen_range(0..vocab as u32)).collect();
    let positions: Vec<i32> = (0..n).map(|i| (i % 11) as i32).collect();
    let type_ids: Vec<i32> = (0..n).map(|i| (i % 2) as i32).collect();
    ids[4] = vocab as u32; // out of range: a zero row
    let (dw, dp, dt, di, dpos, dty) =
        (upload(&dev, &word), upload(&dev, &pos), upload(&dev, &ty), upload(&dev, &ids), upload(&dev, &positions), upload(&dev, &type_ids));
    for with_types in [true, false] {
        let out = poisoned::<f32>(&dev, n * hidden);
        let a = ops::BertEmbeddings {
            out: out.ptr,
            word: dw.ptr,
            position: dp.ptr,
            token_type: dt.ptr,
            ids: di.ptr,
            positions: dpos.ptr,
            type_ids: if with_types { dty.ptr } else { 0 },
            tokens: n,
            hidden,
            vocab,
            max_pos,
            type_vocab: types,
        };
        ops::bert_embeddings(&dev, &a).unwrap();
        let got = download::<f32>(&dev, &out, n * hidden);
        for t in 0..n {
            let row = &got[t * hidden..(t + 1) * hidden];
            if ids[t] as usize >= vocab {
                assert!(row.iter().all(|&v| v == 0.0), "row {t}");
                continue;
            }
            let tt = if with_types { type_ids[t] as usize } else { 0 };
            for c in 0..hidden {
                let want = word[ids[t] as usize * hidden + c] + (pos[positions[t] as usize * hidden + c] + ty[tt * hidden + c]);
                assert_eq!(row[c], want, "token {t} column {c} (types {with_types})");
            }
        }
    }
}

#[test]
fn encoder_attention_matches_the_cpu_for_every_head_dim() {
    let Some(dev) = device_or_skip("encoder_attention_f32") else { return };
    let mut r = rng("encoder_attention_f32");
    // Lengths: single tokens, one short of a tile, exactly a tile, past it.
    let lens: &[usize] = if emulated(&dev) { &[1, 31, 3, 40] } else { &[1, 31, 32, 3, 100, 513, 7] };
    for (heads, head_dim) in [(3, 32), (2, 64), (2, 128)] {
        let width = heads * head_dim;
        let tokens: usize = lens.iter().sum();
        let qkv = randn_f32(&mut r, tokens * 3 * width, 1.0);
        let bias = randn_f32(&mut r, 3 * width, 0.5);
        let cu = cu_seqlens(lens);
        let (dq, db, dcu) = (upload(&dev, &qkv), upload(&dev, &bias), upload(&dev, &cu));
        let out = poisoned::<f32>(&dev, tokens * width);
        let a = ops::EncoderAttention {
            out: out.ptr,
            qkv: dq.ptr,
            qkv_bias: db.ptr,
            cu_seqlens: dcu.ptr,
            num_seqs: lens.len(),
            max_len: *lens.iter().max().unwrap(),
            num_heads: heads,
            head_dim,
        };
        ops::encoder_attention(&dev, &a).unwrap();
        let biased: Vec<f32> = qkv.iter().enumerate().map(|(i, &v)| v + bias[i % (3 * width)]).collect();
        let want = cpu::packed_attention(&biased, &packed(lens), heads, head_dim);
        assert_rel(&download::<f32>(&dev, &out, tokens * width), &want, 1e-5, &format!("encoder_attention hd{head_dim}"));
    }
}

#[test]
fn embedding_pool_matches_sentence_transformers_pooling() {
    let Some(dev) = device_or_skip("embedding_pool_f32") else { return };
    let mut r = rng("embedding_pool_f32");
    let (hidden, lens) = (1100, [5usize, 1, 12]);
    let tokens: usize = lens.iter().sum();
    let hs = randn_f32(&mut r, tokens * hidden, 1.0);
    let (dh, dcu) = (upload(&dev, &hs), upload(&dev, &cu_seqlens(&lens)));
    for (mode, kmode) in [(PoolingMode::Mean, ops::PoolMode::Mean), (PoolingMode::Cls, ops::PoolMode::First), (PoolingMode::LastToken, ops::PoolMode::Last)] {
        for normalize in [false, true] {
            let out = poisoned::<f32>(&dev, lens.len() * hidden);
            ops::embedding_pool(&dev, out.ptr, dh.ptr, dcu.ptr, lens.len(), hidden, kmode, normalize).unwrap();
            let p = Pooling { mode, normalize, max_seq_length: None, matryoshka: Matryoshka::No };
            let want: Vec<f32> = p.pool(&hs, hidden, &packed(&lens)).concat();
            assert_rel(&download::<f32>(&dev, &out, lens.len() * hidden), &want, 1e-6, &format!("pool {mode:?} normalize {normalize}"));
        }
    }
}

#[test]
fn linear_f32_matches_an_f64_sum() {
    let Some(dev) = device_or_skip("linear_f32") else { return };
    let mut r = rng("linear_f32");
    for (m, n, k) in [(1, 5, 8), (37, 1152, 384), (9, 384, 1536)] {
        let x = randn_f32(&mut r, m * k, 1.0);
        let w = randn_f32(&mut r, n * k, 0.05);
        let (dx, dw) = (upload(&dev, &x), upload(&dev, &w));
        let y = poisoned::<f32>(&dev, m * n);
        dev.linear_f32(y.ptr, dx.ptr, dw.ptr, [m, n, k]).unwrap();
        let want: Vec<f32> = (0..m * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                (0..k).map(|j| x[row * k + j] as f64 * w[col * k + j] as f64).sum::<f64>() as f32
            })
            .collect();
        assert_rel(&download::<f32>(&dev, &y, m * n), &want, 1e-6, &format!("linear_f32 [{m}, {n}, {k}]"));
    }
}

// ---- whole models ----------------------------------------------------------

/// Tensors by name in memory (a random-weight BERT).
struct MemSource {
    path: PathBuf,
    tensors: HashMap<String, HostTensor>,
}

impl WeightSource for MemSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn load(&self, name: &str) -> Result<HostTensor, ModelError> {
        self.tensors.get(name).cloned().ok_or_else(|| ModelError::Corrupt { path: self.path.clone(), msg: format!("no tensor {name}") })
    }
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// A random-weight `BertModel` of the given shape (weights N(0, 0.05),
/// LayerNorm weights near 1: activations stay in the range of a trained model).
fn random_bert(r: &mut StdRng, hidden: usize, heads: usize, layers: usize, inter: usize) -> BertModel {
    let cfg = BertConfig {
        vocab_size: 500,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        max_position_embeddings: 128,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: "gelu".into(),
        position_embedding_type: "absolute".into(),
    };
    let mut tensors = HashMap::new();
    let mut put = |name: String, shape: Vec<usize>, data: Vec<f32>| {
        tensors.insert(name, HostTensor { shape, data: WeightData::F32(data) });
    };
    let mut rand = |shape: &[usize], sigma: f32, mean: f32| -> Vec<f32> {
        (0..shape.iter().product::<usize>()).map(|_| mean + randn(r) * sigma).collect()
    };
    put("embeddings.word_embeddings.weight".into(), vec![500, hidden], rand(&[500, hidden], 0.5, 0.0));
    put("embeddings.position_embeddings.weight".into(), vec![128, hidden], rand(&[128, hidden], 0.5, 0.0));
    put("embeddings.token_type_embeddings.weight".into(), vec![2, hidden], rand(&[2, hidden], 0.5, 0.0));
    put("embeddings.LayerNorm.weight".into(), vec![hidden], rand(&[hidden], 0.1, 1.0));
    put("embeddings.LayerNorm.bias".into(), vec![hidden], rand(&[hidden], 0.1, 0.0));
    for l in 0..layers {
        let p = format!("encoder.layer.{l}");
        let linears = [
            ("attention.self.query", hidden, hidden),
            ("attention.self.key", hidden, hidden),
            ("attention.self.value", hidden, hidden),
            ("attention.output.dense", hidden, hidden),
            ("intermediate.dense", inter, hidden),
            ("output.dense", hidden, inter),
        ];
        for (name, rows, cols) in linears {
            put(format!("{p}.{name}.weight"), vec![rows, cols], rand(&[rows, cols], 1.0 / (cols as f32).sqrt(), 0.0));
            put(format!("{p}.{name}.bias"), vec![rows], rand(&[rows], 0.1, 0.0));
        }
        for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}.{name}.weight"), vec![hidden], rand(&[hidden], 0.1, 1.0));
            put(format!("{p}.{name}.bias"), vec![hidden], rand(&[hidden], 0.1, 0.0));
        }
    }
    let src = MemSource { path: PathBuf::from("random-bert"), tensors };
    BertModel::load(cfg, &src, |_| {}).unwrap()
}

fn mean_pooling() -> Pooling {
    Pooling { mode: PoolingMode::Mean, normalize: true, max_seq_length: None, matryoshka: Matryoshka::No }
}

#[test]
fn random_berts_match_the_cpu_encoder() {
    let Some(dev0) = device_or_skip("random_bert") else { return };
    let emu = emulated(&dev0);
    drop(dev0);
    let mut r = rng("random_bert");
    let lens: &[usize] = if emu { &[3, 1, 35, 9] } else { &[3, 1, 35, 9, 128, 64, 17] };
    for (hidden, heads) in [(96, 3), (128, 2), (256, 2)] {
        let dev = device_or_skip("random_bert").unwrap();
        let model = random_bert(&mut r, hidden, heads, 2, 4 * hidden);
        let tokens: Vec<u32> = (0..lens.iter().sum::<usize>()).map(|_| r.gen_range(0..500)).collect();
        let seqs = packed(lens);
        let mut gpu = CudaBertRunner::new(dev, &model, mean_pooling(), tokens.len() + 5, lens.len() + 1).unwrap();
        let got = gpu.last_hidden_state(&tokens, &seqs).unwrap();
        let want = model.forward(&tokens, &seqs);
        let what = format!("random BERT hidden {hidden}, head_dim {}", hidden / heads);
        assert_rel(&got, &want, 1e-5, &format!("{what}: last hidden state"));
        let vecs = gpu.encode(&tokens, &seqs).unwrap();
        let cpu_vecs = mean_pooling().pool(&want, hidden, &seqs);
        for (k, (a, b)) in vecs.iter().zip(&cpu_vecs).enumerate() {
            let c = cosine(a, b);
            assert!(c >= COSINE, "{what}: input {k} ({} tokens): cosine {c}", lens[k]);
        }
    }
}

#[test]
fn encoder_runner_refuses_what_it_cannot_run() {
    let Some(dev) = device_or_skip("encoder_limits") else { return };
    let mut r = rng("encoder_limits");
    let model = random_bert(&mut r, 64, 2, 1, 128);
    let mut gpu = CudaBertRunner::new(dev, &model, mean_pooling(), 8, 2).unwrap();
    let e = |res: anyhow::Result<Vec<Vec<f32>>>| res.unwrap_err().to_string();
    assert!(e(gpu.encode(&[1; 9], &[(0, 9)])).contains("over the encoder's 8 tokens"));
    assert!(e(gpu.encode(&[1; 3], &[(0, 1), (1, 1), (2, 1)])).contains("3 inputs"));
    assert!(e(gpu.encode(&[1, 999], &[(0, 2)])).contains("999"));
    // After refusals the runner still works (and empty steps are empty).
    assert_eq!(gpu.encode(&[1, 2, 3], &[(0, 2), (2, 1)]).unwrap().len(), 2);
    assert!(gpu.encode(&[], &[]).unwrap().is_empty());
    // Head sizes without a compiled attention kernel are refused at load.
    let odd = random_bert(&mut r, 48, 3, 1, 96); // head_dim 16
    let err = CudaBertRunner::new(device_or_skip("encoder_limits").unwrap(), &odd, mean_pooling(), 8, 2).err().expect("refused");
    assert!(err.to_string().contains("head_dim 16"), "{err}");
}

// ---- all-MiniLM-L6-v2 ------------------------------------------------------

#[derive(serde::Deserialize)]
struct Case {
    text: Option<String>,
    ids: Vec<u32>,
    embedding_f32_b64: String,
}

#[derive(serde::Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

fn decode_b64(b64: &str) -> Vec<f32> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// models/all-MiniLM-L6-v2 when it has been fetched (never fetched here:
/// the device machine has no network), else None after saying why. The
/// message avoids the word scripts/gpu-check.sh reads as "the whole step
/// skipped": the other tests of its step did run.
fn minilm_or_skip(test: &str) -> Option<PathBuf> {
    let dir = repo_root().join("models/all-MiniLM-L6-v2");
    if dir.join(".complete").exists() {
        return Some(dir);
    }
    println!("{test}: not run: {} is absent (models/fetch_minilm.sh fetches it)", dir.display());
    None
}

/// Golden cases: on the emulated device a handful of mixed lengths (3 to
/// 100 tokens: one to four attention tiles), on a GPU all 50 (up to 256).
fn golden_cases(emu: bool) -> Vec<Case> {
    let path = repo_root().join("tests/fixtures/embeddings/minilm_golden.json");
    let g: Golden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pick = [0, 7, 8, 23, 27, 35, 38];
    g.cases.into_iter().enumerate().filter(|(i, _)| !emu || pick.contains(i)).map(|(_, c)| c).collect()
}

#[test]
fn minilm_on_the_device_matches_sentence_transformers_and_the_cpu() {
    let Some(dev) = device_or_skip("minilm_cuda") else { return };
    let Some(dir) = minilm_or_skip("minilm_cuda") else { return };
    let cases = golden_cases(emulated(&dev));
    let cfg = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let pooling = Pooling::from_dir(&dir).unwrap().unwrap();
    let src = kiln::model::weights::SafetensorsSource::open_dir(&dir).unwrap();
    let model = BertModel::load(cfg, &src, |_| {}).unwrap();
    let tokens: Vec<u32> = cases.iter().flat_map(|c| c.ids.iter().copied()).collect();
    let seqs = packed(&cases.iter().map(|c| c.ids.len()).collect::<Vec<_>>());
    let t0 = std::time::Instant::now();
    let mut gpu = CudaBertRunner::new(dev, &model, pooling.clone(), tokens.len(), cases.len()).unwrap();
    let got = gpu.encode(&tokens, &seqs).unwrap();
    println!("minilm_cuda: {} inputs, {} tokens in one step: {:.2?} (with the upload)", cases.len(), tokens.len(), t0.elapsed());
    let mut cpu_runner = BertRunner { model, pooling };
    let on_cpu = cpu_runner.encode(&tokens, &seqs).unwrap();
    let (mut worst_st, mut worst_cpu) = (1f64, 1f64);
    for ((c, v), w) in cases.iter().zip(&got).zip(&on_cpu) {
        let (st, vs_cpu) = (cosine(v, &decode_b64(&c.embedding_f32_b64)), cosine(v, w));
        assert!(st >= COSINE, "cosine {st} vs sentence-transformers for {:?} ({} tokens)", c.text, c.ids.len());
        assert!(vs_cpu >= COSINE, "cosine {vs_cpu} vs the CPU encoder for {:?} ({} tokens)", c.text, c.ids.len());
        let norm: f64 = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "Normalize module: norm {norm}");
        worst_st = worst_st.min(st);
        worst_cpu = worst_cpu.min(vs_cpu);
    }
    println!(
        "KEY minilm on the device: worst 1 - cosine {:.1e} vs sentence-transformers, {:.1e} vs the CPU encoder ({} sentences)",
        1.0 - worst_st,
        1.0 - worst_cpu,
        cases.len()
    );
}

/// `--device emu` (or `cuda` on a GPU) through `start_embedding` and the
/// embedding engine: the wiring the server uses.
#[test]
fn minilm_serves_through_the_embedding_engine_on_the_device() {
    use clap::Parser;
    use kiln::engine::embed::EmbedRequest;
    use kiln::engine::Priority;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: kiln::launch::EngineArgs,
    }
    let Some(dev) = device_or_skip("minilm_engine") else { return };
    let Some(dir) = minilm_or_skip("minilm_engine") else { return };
    let device = if emulated(&dev) { "emu" } else { "cuda" };
    drop(dev);
    let cases: Vec<Case> = golden_cases(true).into_iter().take(4).collect();
    let cli = Cli::parse_from(["test", "--device", device, "--max-num-batched-tokens", "64", "--max-num-seqs", "3"]);
    let e = kiln::embedding::start_embedding(&cli.engine, &dir).expect("starts on the device");
    let rxs: Vec<_> = cases
        .chunks(2)
        .enumerate()
        .map(|(i, chunk)| {
            let inputs = chunk.iter().map(|c| c.ids.clone()).collect();
            e.handle.submit(EmbedRequest { request_id: format!("r{i}"), inputs, priority: Priority::Interactive }).expect("accepted")
        })
        .collect();
    let got: Vec<Vec<f32>> = rxs.into_iter().flat_map(|rx| rx.blocking_recv().expect("reply").expect("vectors")).collect();
    assert_eq!(got.len(), cases.len());
    for (c, v) in cases.iter().zip(&got) {
        let cos = cosine(v, &decode_b64(&c.embedding_f32_b64));
        assert!(cos >= COSINE, "cosine {cos} for {:?}", c.text);
    }
    e.handle.shutdown();
}

// ---- decoders used for embeddings ------------------------------------------

/// The bar of the decoder embedding path on the device: it is the generation
/// runner, bf16 weights and activations (docs/gpu.md), not f32 like the
/// CPU's and transformers'.
const DECODER_COSINE: f64 = 0.999;

/// The tiny random Qwen3 embedding model (tests/fixtures/embeddings/qwen3_embed:
/// last-token pooling, normalised) through `start_embedding` on the device
/// and the embedding engine, against transformers' vectors.
#[test]
fn qwen3_embedding_fixture_on_the_device_matches_transformers() {
    use clap::Parser;
    use kiln::engine::embed::EmbedRequest;
    use kiln::engine::Priority;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: kiln::launch::EngineArgs,
    }
    let Some(dev) = device_or_skip("qwen3_embed") else { return };
    let device = if emulated(&dev) { "emu" } else { "cuda" };
    drop(dev);
    let dir = repo_root().join("tests/fixtures/embeddings/qwen3_embed");
    let g: Golden = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let cli = Cli::parse_from(["test", "--device", device, "--max-num-batched-tokens", "256", "--max-num-seqs", "3"]);
    let e = kiln::embedding::start_embedding(&cli.engine, &dir).expect("starts on the device");
    let rxs: Vec<_> = g
        .cases
        .chunks(2)
        .enumerate()
        .map(|(i, chunk)| {
            let inputs = chunk.iter().map(|c| c.ids.clone()).collect();
            e.handle.submit(EmbedRequest { request_id: format!("q{i}"), inputs, priority: Priority::Interactive }).expect("accepted")
        })
        .collect();
    let got: Vec<Vec<f32>> = rxs.into_iter().flat_map(|rx| rx.blocking_recv().expect("reply").expect("vectors")).collect();
    assert_eq!(got.len(), g.cases.len());
    let mut worst = 1f64;
    for (c, v) in g.cases.iter().zip(&got) {
        let cos = cosine(v, &decode_b64(&c.embedding_f32_b64));
        assert!(cos >= DECODER_COSINE, "{} ids: cosine {cos}", c.ids.len());
        worst = worst.min(cos);
    }
    println!("KEY qwen3_embed on the device: worst 1 - cosine {:.1e} vs transformers ({} inputs, bf16)", 1.0 - worst, g.cases.len());
    e.handle.shutdown();
}
