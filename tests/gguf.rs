//! GGUF reader, dequantization and GGUF config against the `gguf` Python
//! package: fixtures written by scripts/gen_gguf_fixtures.py (gguf 0.19.0),
//! whose expected values are gguf.quants.dequantize of the same bytes.
//! Dequantization is required to be bit-exact (ggml's f32 operation order).

use kiln::model::config::Arch;
use kiln::model::dequant::unpermute_qk_rows;
use kiln::model::gguf::{GgmlType, GgufFile, GgufValue};
use kiln::model::gguf_config::{config_from_gguf, hf_name, hf_tensor_f32, qk_permuted};
use kiln::model::{ModelError, RopeScaling};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// Bit equality, with any NaN equal to any NaN.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn dequantization_equals_gguf_package_bit_for_bit() {
    let g = GgufFile::open(&fixture("types.gguf")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for t in g.tensors.iter().filter(|t| t.name.starts_with("t.") && !t.name.ends_with(".expected")) {
        let (shape, got) = g.tensor_f32(&t.name).unwrap();
        let (eshape, want) = g.tensor_f32(&format!("{}.expected", t.name)).unwrap();
        assert_eq!(shape, eshape, "{}", t.name);
        assert_eq!(got.len(), want.len(), "{}", t.name);
        let bad = got.iter().zip(&want).position(|(a, b)| !same(*a, *b));
        assert!(bad.is_none(), "{} ({:?}) differs at {}: {} vs {}", t.name, t.ggml_type, bad.unwrap(), got[bad.unwrap()], want[bad.unwrap()]);
        seen.insert(t.ggml_type.name());
    }
    let all = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"];
    assert_eq!(seen, all.iter().map(|s| s.to_string()).collect());
}

/// Every block type kiln multiplies directly (tests/fixtures/gguf/quants.gguf,
/// scripts/gen_quant_fixtures.py): dequantized bit for bit as gguf.quants
/// does, and x · Wᵀ through the CPU matmul — the 16-bit-activation integer
/// dots (3 rows) and the widened-weight GEMM (12 rows) — within 1e-4 of
/// numpy's float64 product, relative to Σ|x·w|.
#[test]
fn block_types_dequantize_and_multiply_like_gguf_package() {
    use kiln::backend::cpu::{matmul, Weight, WeightData};
    let g = GgufFile::open(&fixture("quants.gguf")).unwrap();
    let (xs, x) = g.tensor_f32("x").unwrap();
    let (m, k) = (xs[0], xs[1]);
    let mut seen = vec![];
    for t in g.tensors.iter().filter(|t| t.name.starts_with("w.") && !t.name.ends_with(".expected")) {
        let (shape, got) = g.tensor_f32(&t.name).unwrap();
        let (_, want) = g.tensor_f32(&format!("{}.expected", t.name)).unwrap();
        let bad = got.iter().zip(&want).position(|(a, b)| !same(*a, *b));
        assert!(bad.is_none(), "{} differs at {:?}", t.name, bad.map(|i| (got[i], want[i])));
        let n = shape[0];
        let w = Weight { rows: n, cols: k, data: WeightData::Blocks(t.ggml_type, g.raw_bytes(t).unwrap().to_vec()) };
        let (_, y_want) = g.tensor_f32(&format!("y.{}", &t.name[2..])).unwrap();
        for reps in [1usize, 4] {
            let xr: Vec<f32> = (0..reps).flat_map(|_| x.iter().copied()).collect();
            let mut y = vec![0f32; reps * m * n];
            matmul(&xr, reps * m, &w, None, &mut y);
            for (r, got) in y.iter().enumerate() {
                let (i, j) = ((r / n) % m, r % n);
                let mag: f64 = (0..k).map(|c| (x[i * k + c] as f64 * want[j * k + c] as f64).abs()).sum();
                let want = y_want[i * n + j] as f64;
                assert!((*got as f64 - want).abs() <= 1e-4 * mag, "{} rows {} y[{i},{j}]: {got} vs {want}", t.name, reps * m);
            }
        }
        seen.push(t.ggml_type.name());
    }
    assert_eq!(seen, ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]);
}

#[test]
fn shapes_are_row_major() {
    let g = GgufFile::open(&fixture("types.gguf")).unwrap();
    let t = g.tensor("t.f16").unwrap();
    assert_eq!(t.dims, vec![16, 3, 2]);
    assert_eq!(g.tensor_f32("t.f16").unwrap().0, vec![2, 3, 16]);
    assert_eq!(g.tensor("t.q4_k").unwrap().ggml_type, GgmlType::Q4_K);
    assert_eq!(g.raw_bytes(g.tensor("t.q4_k").unwrap()).unwrap().len(), 4 * 144);
}

fn check_value(key: &str, ty: &str, want: &serde_json::Value, got: &GgufValue) {
    let ok = match (ty, got) {
        ("U8", GgufValue::U8(v)) => want.as_u64() == Some(*v as u64),
        ("I8", GgufValue::I8(v)) => want.as_i64() == Some(*v as i64),
        ("U16", GgufValue::U16(v)) => want.as_u64() == Some(*v as u64),
        ("I16", GgufValue::I16(v)) => want.as_i64() == Some(*v as i64),
        ("U32", GgufValue::U32(v)) => want.as_u64() == Some(*v as u64),
        ("I32", GgufValue::I32(v)) => want.as_i64() == Some(*v as i64),
        ("U64", GgufValue::U64(v)) => want.as_u64() == Some(*v),
        ("I64", GgufValue::I64(v)) => want.as_i64() == Some(*v),
        // The JSON holds the exact f32 value; serde_json's default parser may be
        // 1 ulp off in f64, which rounding to f32 absorbs.
        ("F32", GgufValue::F32(v)) => want.as_f64().map(|w| w as f32) == Some(*v),
        ("F64", GgufValue::F64(v)) => want.as_f64().is_some_and(|w| (w - v).abs() <= f64::EPSILON * v.abs()),
        ("Bool", GgufValue::Bool(v)) => want.as_bool() == Some(*v),
        ("Str", GgufValue::Str(v)) => want.as_str() == Some(v.as_str()),
        _ => false,
    };
    assert!(ok, "{key}: expected {ty} {want}, read {got:?}");
}

#[test]
fn metadata_of_every_type_reads_back() {
    let doc = json("metadata.json");
    let g = GgufFile::open(&fixture("metadata.gguf")).unwrap();
    assert_eq!(g.version, doc["version"].as_u64().unwrap() as u32);
    assert_eq!(g.alignment, doc["alignment"].as_u64().unwrap());
    assert_eq!(g.get_str("general.architecture"), Some("kiln-test"));
    for (key, e) in doc["scalars"].as_object().unwrap() {
        check_value(key, e["type"].as_str().unwrap(), &e["value"], g.get(key).expect(key));
    }
    for (key, e) in doc["arrays"].as_object().unwrap() {
        let ty = e["elem_type"].as_str().unwrap();
        let items = g.get(key).and_then(|v| v.as_array()).expect(key);
        let want = e["value"].as_array().unwrap();
        assert_eq!(items.len(), want.len(), "{key}");
        for (w, v) in want.iter().zip(items) {
            if ty == "Array" {
                let inner: Vec<i64> = v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
                let w: Vec<i64> = w.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
                assert_eq!(inner, w, "{key}");
            } else {
                check_value(key, ty, w, v);
            }
        }
    }
    assert_eq!(g.get_str_array("test.arr_str").unwrap()[2], "Ġthe");
    assert_eq!(g.get_i32_array("test.arr_i32").unwrap()[4], i32::MIN);
    assert_eq!(g.get_f32_array("test.arr_f32").unwrap()[1], -1.25);
    assert_eq!(g.get_u64("test.i8"), None, "negative value is no u64");
    assert!(g.get_str_array("test.arr_i32").is_none());
    for (name, t) in doc["tensors"].as_object().unwrap() {
        let (shape, data) = g.tensor_f32(name).unwrap();
        let want_shape: Vec<usize> = t["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        let want: Vec<f32> = t["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!((shape, data), (want_shape, want), "{name}");
        assert_eq!(g.tensor(name).unwrap().offset % 64, 0);
    }
}

fn temp_copy(src: &str, edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(src);
    let mut bytes = std::fs::read(fixture(src)).unwrap();
    edit(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn version_2_copy_loads() {
    let (_d, path) = temp_copy("types.gguf", |b| b[4..8].copy_from_slice(&2u32.to_le_bytes()));
    let g = GgufFile::open(&path).unwrap();
    let orig = GgufFile::open(&fixture("types.gguf")).unwrap();
    assert_eq!((g.version, orig.version), (2, 3));
    assert_eq!(g.tensor_f32("t.q6_k").unwrap(), orig.tensor_f32("t.q6_k").unwrap());
}

/// Opens `path` expecting an error whose message contains every needle.
fn open_err(path: &Path, needles: &[&str]) -> ModelError {
    let err = GgufFile::open(path).expect_err("corrupt file must not open");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "message does not name the file: {msg}");
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
    err
}

#[test]
fn missing_bad_magic_and_version_errors() {
    let missing = fixture("no-such-file.gguf");
    assert!(matches!(open_err(&missing, &["no such file"]), ModelError::NotFound { .. }));
    let (_d, p) = temp_copy("metadata.gguf", |b| b[0..4].copy_from_slice(b"GGML"));
    open_err(&p, &["not a GGUF file"]);
    for v in [1u32, 4, 0xffff_ffff] {
        let (_d, p) = temp_copy("metadata.gguf", |b| b[4..8].copy_from_slice(&v.to_le_bytes()));
        let e = open_err(&p, &["unsupported GGUF version", &v.to_string()]);
        assert!(matches!(e, ModelError::Unsupported { .. }));
    }
}

#[test]
fn truncated_header_and_metadata_errors() {
    let (_d, p) = temp_copy("metadata.gguf", |b| b.truncate(10));
    open_err(&p, &["truncated header"]);
    let (_d, p) = temp_copy("metadata.gguf", |b| b.truncate(0));
    open_err(&p, &["truncated header"]);
    // Cut inside the first key/value pair.
    let (_d, p) = temp_copy("metadata.gguf", |b| b.truncate(40));
    open_err(&p, &["truncated"]);
    // Cut inside a value: names the key.
    let (_d, p) = temp_copy("metadata.gguf", |b| {
        let key = b"test.str";
        let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 8 + 3;
        b.truncate(at)
    });
    open_err(&p, &["truncated value of metadata key 'test.str'"]);
}

#[test]
fn truncated_tensor_data_names_the_tensor() {
    let orig = GgufFile::open(&fixture("types.gguf")).unwrap();
    let last = orig.tensors.iter().max_by_key(|t| t.offset).unwrap();
    let cut = (orig.data_start + last.offset + 10) as usize;
    let (_d, p) = temp_copy("types.gguf", |b| b.truncate(cut));
    let e = open_err(&p, &["truncated tensor data", &format!("'{}'", last.name)]);
    assert!(matches!(e, ModelError::BadTensor { .. }));
    // Cut inside the tensor table: names the tensor being read.
    let (_d, p) = temp_copy("types.gguf", |b| {
        let at = record_end(b, "t.q6_k_big.expected") - 4;
        b.truncate(at)
    });
    open_err(&p, &["truncated", "tensor 't.q6_k_big.expected'"]);
}

/// Byte offset just past tensor `name`'s info record.
fn record_end(b: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = b.windows(key.len()).position(|w| w == key.as_slice()).expect(name) + key.len();
    let n_dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims + 4 + 8
}

fn patch_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn patch_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn out_of_bounds_and_misaligned_offsets() {
    let (_d, p) = temp_copy("types.gguf", |b| {
        let end = record_end(b, "t.q8_0");
        patch_u64(b, end - 8, 1 << 40);
    });
    open_err(&p, &["out of bounds", "'t.q8_0'"]);
    let (_d, p) = temp_copy("types.gguf", |b| {
        let end = record_end(b, "t.q8_0");
        let off = u64::from_le_bytes(b[end - 8..end].try_into().unwrap());
        patch_u64(b, end - 8, off + 3);
    });
    open_err(&p, &["not a multiple of the alignment", "'t.q8_0'"]);
}

#[test]
fn unsupported_types_name_type_and_tensor() {
    // Q5_K is read since kiln multiplies k-quants directly; an i-quant is not.
    let (_d, p) = temp_copy("types.gguf", |b| {
        let end = record_end(b, "unsupported.q5_k");
        patch_u32(b, end - 12, 17);
    });
    let g = GgufFile::open(&p).unwrap();
    let msg = g.tensor_f32("unsupported.q5_k").unwrap_err().to_string();
    for n in ["IQ2_XS", "'unsupported.q5_k'", "types.gguf"] {
        assert!(msg.contains(n), "{msg}");
    }
    for (id, name) in [(17u32, "IQ2_XS"), (23, "IQ4_XS"), (99, "type 99")] {
        let (_d, p) = temp_copy("types.gguf", |b| {
            let end = record_end(b, "t.f32");
            patch_u32(b, end - 12, id);
        });
        let g = GgufFile::open(&p).unwrap();
        let e = g.tensor_f32("t.f32").unwrap_err();
        assert!(matches!(e, ModelError::Unsupported { .. }));
        let msg = e.to_string();
        assert!(msg.contains(name) && msg.contains("'t.f32'") && msg.contains(&p.display().to_string()), "{msg}");
    }
    let e = g.tensor_f32("nope").unwrap_err();
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e}");
}

#[test]
fn absurd_counts_are_refused_before_allocating() {
    for (at, what) in [(8, "tensor count"), (16, "metadata count")] {
        let (_d, p) = temp_copy("metadata.gguf", |b| patch_u64(b, at, u64::MAX / 2));
        open_err(&p, &[what, "impossible (file truncated or corrupt)"]);
    }
    // The first key's length.
    let (_d, p) = temp_copy("metadata.gguf", |b| patch_u64(b, 24, u64::MAX));
    open_err(&p, &["truncated metadata key"]);
    // An array length.
    let (_d, p) = temp_copy("metadata.gguf", |b| {
        let key = b"test.arr_str";
        let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 8;
        patch_u64(b, at, u64::MAX / 3);
    });
    open_err(&p, &["array length of metadata key 'test.arr_str'", "impossible"]);
    // Too many dimensions, and dims whose product overflows.
    let (_d, p) = temp_copy("types.gguf", |b| {
        let end = record_end(b, "t.f16");
        patch_u32(b, end - 12 - 3 * 8 - 4, 9);
    });
    open_err(&p, &["'t.f16'", "9 dimensions"]);
    let (_d, p) = temp_copy("types.gguf", |b| {
        let end = record_end(b, "t.f16");
        patch_u64(b, end - 12 - 8, u64::MAX / 2);
    });
    open_err(&p, &["'t.f16'", "absurd dimensions"]);
}

#[test]
fn every_truncation_and_byte_flip_is_an_error_not_a_panic() {
    let bytes = std::fs::read(fixture("metadata.gguf")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.gguf");
    for len in 0..bytes.len() {
        std::fs::write(&p, &bytes[..len]).unwrap();
        match GgufFile::open(&p) {
            Err(e) => assert!(e.to_string().contains("t.gguf"), "{e}"),
            // Only a cut inside the final tensor's trailing padding can still open.
            Ok(g) => assert!(len >= (g.data_start + g.tensors[1].offset + 30) as usize, "opened at {len}"),
        }
    }
    let mut rng = 0x9e3779b97f4a7c15u64;
    for _ in 0..3000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut b = bytes.clone();
        let at = (rng % b.len() as u64) as usize;
        b[at] ^= (rng >> 32) as u8 | 1;
        std::fs::write(&p, &b).unwrap();
        if let Ok(g) = GgufFile::open(&p) {
            for t in &g.tensors {
                let _ = g.tensor_f32(&t.name);
            }
        }
    }
}

#[test]
fn unpermute_restores_hf_rows() {
    let g = GgufFile::open(&fixture("types.gguf")).unwrap();
    for tag in ["q", "k", "bias"] {
        let n_head = g.get_u64(&format!("kiln.test.n_head.{tag}")).unwrap() as usize;
        let (shape, hf) = g.tensor_f32(&format!("qk.hf.{tag}")).unwrap();
        let (_, perm) = g.tensor_f32(&format!("qk.permuted.{tag}")).unwrap();
        assert_ne!(hf, perm);
        let cols = shape.get(1).copied().unwrap_or(1);
        assert_eq!(unpermute_qk_rows(&perm, n_head, shape[0], cols), hf, "{tag}");
    }
}

#[test]
fn hf_names_match_gguf_py_tensor_map() {
    let map = json("names.json");
    for (gguf, hf) in map.as_object().unwrap() {
        assert_eq!(hf_name(gguf).as_deref(), hf.as_str(), "{gguf}");
    }
    assert_eq!(hf_name("rope_freqs.weight"), None);
    assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    assert_eq!(hf_name("blk.0.attn_q.scale"), None);
}

fn check_config(name: &str) -> (GgufFile, kiln::model::ModelConfig, serde_json::Value) {
    let g = GgufFile::open(&fixture(&format!("config_{name}.gguf"))).unwrap();
    let c = config_from_gguf(&g).unwrap();
    let e = json(&format!("config_{name}.json"));
    let u = |k: &str| e[k].as_u64().unwrap() as usize;
    assert_eq!(format!("{:?}", c.arch), e["arch"].as_str().unwrap());
    assert_eq!(c.arch_name, e["arch_name"].as_str().unwrap());
    let got = [c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, c.max_position_embeddings];
    let keys = ["vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "max_position_embeddings"];
    assert_eq!(got.to_vec(), keys.iter().map(|k| u(k)).collect::<Vec<_>>(), "{name}");
    assert_eq!(c.rms_norm_eps as f64, e["rms_norm_eps"].as_f64().unwrap());
    assert_eq!(c.rope_theta as f64, e["rope_theta"].as_f64().unwrap());
    assert_eq!(c.tie_word_embeddings, e["tie_word_embeddings"].as_bool().unwrap());
    assert_eq!(c.attention_bias, e["attention_bias"].as_bool().unwrap());
    assert_eq!(c.qk_norm, e["qk_norm"].as_bool().unwrap());
    assert_eq!(c.bos_token_id, Some(u("bos_token_id") as u32));
    let eos: Vec<u32> = e["eos_token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    assert_eq!(c.eos_token_ids, eos);
    assert_eq!(qk_permuted(&g), e["qk_permuted"].as_bool().unwrap());
    (g, c, e)
}

#[test]
fn config_qwen2_with_bias_and_linear_rope() {
    let (g, c, e) = check_config("qwen2");
    assert_eq!(c.arch, Arch::Qwen2);
    let f = e["rope_scaling"]["linear"].as_f64().unwrap() as f32;
    assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: f }));
    // Not permuted: the HF tensor is the stored one.
    let (name, shape, w) = hf_tensor_f32(&g, &c, "blk.0.attn_q.weight").unwrap();
    assert_eq!(name, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!((shape, w), g.tensor_f32("blk.0.attn_q.weight").unwrap());
}

#[test]
fn config_llama3_recovers_rope_scaling_from_rope_freqs() {
    let (_g, c, e) = check_config("llama3");
    assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { .. })), "{:?}", c.rope_scaling);
    let want: Vec<f64> = e["rope_inv_freq"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let got = c.rope_inv_freq();
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let rel = ((*a as f64) - b).abs() / b.abs();
        assert!(rel < 1e-5, "inv_freq[{i}]: {a} vs {b} (rel {rel:e})");
    }
}

fn default_model() -> Option<PathBuf> {
    kiln::launch::resolve_model(&None).map_err(|e| eprintln!("SKIP: the default model is unavailable: {e:#}")).ok()
}

#[test]
fn default_model_config_and_every_tensor_finite() {
    let Some(path) = default_model() else { return };
    let g = GgufFile::open(&path).unwrap();
    let c = config_from_gguf(&g).unwrap();
    assert_eq!(c.arch, Arch::Llama);
    let shape = (c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.vocab_size, c.head_dim);
    assert_eq!(shape, (30, 576, 9, 3, 49152, 64));
    assert_eq!(c.intermediate_size, 1536);
    assert!(c.tie_word_embeddings && !c.attention_bias && !c.qk_norm);
    assert_eq!(g.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    let start = std::time::Instant::now();
    let mut n = 0usize;
    for t in &g.tensors {
        assert!(hf_name(&t.name).is_some(), "no HF name for {}", t.name);
        let (_, data) = g.tensor_f32(&t.name).unwrap();
        assert!(data.iter().all(|x| x.is_finite()), "{} has non-finite values", t.name);
        n += data.len();
    }
    eprintln!("dequantized {n} weights of {} tensors in {:?}", g.tensors.len(), start.elapsed());
    let (h, f, kv) = (c.hidden_size, c.intermediate_size, c.num_kv_heads * c.head_dim);
    let per_layer = 2 * h * h + 2 * kv * h + 3 * f * h + 2 * h;
    assert_eq!(n, c.vocab_size * h + c.num_layers * per_layer + h);
    let (name, shape, q) = hf_tensor_f32(&g, &c, "blk.0.attn_q.weight").unwrap();
    assert_eq!((name.as_str(), shape.as_slice()), ("model.layers.0.self_attn.q_proj.weight", &[576usize, 576][..]));
    assert_ne!(q, g.tensor_f32("blk.0.attn_q.weight").unwrap().1, "llama GGUF q rows must be un-permuted");
}
