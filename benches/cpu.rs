//! CPU backend benchmarks: the matmul of a decode step and of a prefill
//! chunk, paged attention, one whole decode step of the default model, and
//! what one parallel region costs on kiln's CPU pool against rayon.
//!
//! cargo bench --bench cpu

use criterion::{criterion_group, criterion_main, Criterion};
use kiln::backend::cpu::attention::paged_attention;
use kiln::backend::cpu::{matmul, matmul_with, ActQuant, KvCache, Weight, WeightData};
use kiln::model::dequant::GgmlType;
use kiln::model::BatchInput;
use std::hint::black_box;

fn bench_matmul(c: &mut Criterion) {
    // SmolLM2-135M's MLP gate+up projection: [2*1536, 576].
    let (n, k) = (3072, 576);
    let w = Weight::f32(n, k, (0..n * k).map(|i| (i % 13) as f32 * 0.01).collect());
    for m in [1usize, 16, 128] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut y = vec![0.0; m * n];
        c.bench_function(&format!("matmul f32 m={m} n={n} k={k}"), |b| b.iter(|| matmul(black_box(&x), m, &w, None, &mut y)));
    }
}

/// `n_blocks` blocks of `bytes` bytes: pseudo-random quants behind fixed
/// small f16 scales at `scales` (byte offsets), so every value is finite.
fn blocks(n_blocks: usize, bytes: usize, scales: &[usize]) -> Vec<u8> {
    let mut v: Vec<u8> = (0..n_blocks * bytes).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    for b in v.chunks_mut(bytes) {
        for &at in scales {
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        }
    }
    v
}

/// Block-format weights at the batch sizes of decode (1 .. 16 sequences)
/// and prefill chunks: where the row kernels hand over to the widen + gemm
/// path (`BLOCK_GEMM_MIN_M` in matmul.rs).
fn bench_block_matmul(c: &mut Criterion) {
    let (n, k) = (3072, 576);
    let q4_1 = Weight { rows: n, cols: k, data: WeightData::Blocks(GgmlType::Q4_1, blocks(n * k / 32, 20, &[0, 2])) };
    let (n4, k4) = (2816, 1024);
    let q4_k = Weight { rows: n4, cols: k4, data: WeightData::Blocks(GgmlType::Q4_K, blocks(n4 * k4 / 256, 144, &[0, 2])) };
    for (name, w) in [("q4_1", &q4_1), ("q4_k", &q4_k)] {
        for m in [1usize, 4, 16, 32, 48, 64, 128, 512] {
            let x: Vec<f32> = (0..m * w.cols).map(|i| (i % 7) as f32 * 0.1).collect();
            let mut y = vec![0.0; m * w.rows];
            c.bench_function(&format!("matmul {name} m={m} n={} k={}", w.rows, w.cols), |b| b.iter(|| matmul(black_box(&x), m, w, None, &mut y)));
            // `--cpu-activations`: 16-bit activations below 4 rows, 8-bit at
            // every m (from 4 rows the VNNI tiles where the CPU has them)
            for act in [ActQuant::Int16, ActQuant::Int8].into_iter().filter(|&a| m < 4 || a == ActQuant::Int8) {
                c.bench_function(&format!("matmul {name} {act:?} m={m} n={} k={}", w.rows, w.cols), |b| {
                    b.iter(|| matmul_with(black_box(&x), m, w, None, &mut y, act))
                });
            }
        }
    }
}

fn bench_attention(c: &mut Criterion) {
    // 9 query heads, 3 KV heads, head_dim 64 (SmolLM2-135M), context 1024.
    let (nh, nkv, hd, bs, ctx) = (9, 3, 64, 16, 1024);
    let blocks = ctx / bs;
    let mut cache = KvCache::new(1, blocks + 1, bs, nkv, hd);
    cache.k[0].iter_mut().enumerate().for_each(|(i, v)| *v = (i % 11) as f32 * 0.01);
    cache.v[0].iter_mut().enumerate().for_each(|(i, v)| *v = (i % 5) as f32 * 0.1);
    let table: Vec<u32> = (1..=blocks as u32).collect();
    for batch in [1usize, 16] {
        let seqs: Vec<(&[u32], usize, &[u32], bool)> = (0..batch).map(|_| (&[0u32][..], ctx - 1, &table[..], true)).collect();
        let b = BatchInput::build(bs, &seqs);
        let q = vec![0.05f32; batch * nh * hd];
        let mut out = vec![0.0; batch * nh * hd];
        c.bench_function(&format!("paged attention decode ctx={ctx} seqs={batch}"), |bch| {
            bch.iter(|| paged_attention(black_box(&b), &cache, 0, nh, &q, &mut out))
        });
    }
    // Prefill: one sequence's 512-token prompt attending causally.
    let toks = vec![0u32; 512];
    let seqs: Vec<(&[u32], usize, &[u32], bool)> = vec![(&toks[..], 0, &table[..], true)];
    let b = BatchInput::build(bs, &seqs);
    let q = vec![0.05f32; 512 * nh * hd];
    let mut out = vec![0.0; 512 * nh * hd];
    c.bench_function("paged attention prefill 512 tokens", |bch| bch.iter(|| paged_attention(black_box(&b), &cache, 0, nh, &q, &mut out)));
}

fn bench_decode_step(c: &mut Criterion) {
    let Ok(path) = kiln::launch::resolve_model(&None) else {
        eprintln!("skipping decode-step bench: the default model is not available");
        return;
    };
    let loaded = kiln::model::loader::load(&path, |_, _| {}).expect("load default model");
    let mut model = loaded.model;
    let bs = 16;
    let ctx = 128;
    let table: Vec<u32> = (1..=(ctx / bs + 1) as u32).collect();
    let mut kv = model.new_kv_cache(table.len() + 1, bs);
    let prompt: Vec<u32> = (0..ctx as u32 - 1).map(|i| 100 + i).collect();
    model.forward(&BatchInput::build(bs, &[(&prompt, 0, &table, true)]), &mut kv);
    let step = BatchInput::build(bs, &[(&[42], ctx - 1, &table, true)]);
    c.bench_function("default model decode step (batch 1, ctx 128)", |b| b.iter(|| model.forward(black_box(&step), &mut kv)));
    model.set_activations(ActQuant::Int8);
    c.bench_function("default model decode step (batch 1, ctx 128), int8 activations", |b| b.iter(|| model.forward(black_box(&step), &mut kv)));
}

fn bench_region(c: &mut Criterion) {
    use rayon::prelude::*;
    use kiln::backend::cpu::pool;
    // 16 tasks of ~1 µs each: a region as short as the smallest matmuls of
    // a decode step (which runs ~120 of them); ideal = 16 µs / threads.
    let task = |t: usize| {
        let mut v = t as f32;
        for _ in 0..1000 {
            v = black_box(v * 0.999 + 0.5);
        }
        black_box(v);
    };
    c.bench_function("16 tasks of ~1 us, serial", |b| b.iter(|| (0..16).for_each(task)));
    c.bench_function(&format!("pool region, 16 tasks of ~1 us, {} threads", pool::threads()), |b| {
        b.iter(|| pool::run(16, |t, _| task(t)))
    });
    let rp = rayon::ThreadPoolBuilder::new().num_threads(pool::threads()).build().unwrap();
    c.bench_function(&format!("rayon region (from inside its pool), 16 tasks of ~1 us, {} threads", pool::threads()), |b| {
        b.iter_custom(|iters| {
            rp.install(|| {
                let t0 = std::time::Instant::now();
                for _ in 0..iters {
                    (0..16usize).into_par_iter().for_each(task);
                }
                t0.elapsed()
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = bench_region, bench_matmul, bench_block_matmul, bench_attention, bench_decode_step
}
criterion_main!(benches);
