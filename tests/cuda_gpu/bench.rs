//! GPU timings, run by scripts/gpu-check.sh on the device machine (each test
//! skips unless its variable is set). Results are printed and appended as
//! JSON lines to $KILN_BENCH_OUT.
//!
//! Floors: every number is set against the copy bandwidth measured in the
//! same process (a 2 GiB device-to-device copy, bytes read + written): a
//! memory-bound kernel cannot beat bytes / bandwidth, and batch-1 decode
//! cannot beat weight bytes / bandwidth per token.
//!
//!   KILN_BENCH_MODELS=dir[:dir]   batch-1 decode, CUDA graphs and eager
//!   KILN_BENCH_KERNELS=1          per-kernel medians at the Llama-3.1-8B shape
//!   KILN_THROUGHPUT_MODEL=dir     1,000 requests x (1,024 prompt + 128 output)
use super::support::*;
use kiln::backend::cuda::attention_plan::decode_split;
use kiln::backend::cuda::device::Device;
use kiln::backend::cuda::memory::weight_bytes;
use kiln::backend::cuda::runner::{open_weights, CudaRunner, CudaRunnerOptions};
use kiln::backend::cuda::{launch, ops};
use kiln::model::BatchInput;
use kiln::runner::{ModelRunner, SampleRequest};
use kiln::sampling::SamplingParams;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::time::Instant;

/// Prints `line` and a `KEY ` line that scripts/gpu-check.sh puts in its summary, and
/// appends `line` to $KILN_BENCH_OUT.
fn record(line: serde_json::Value) {
    println!("{line}");
    let f = |k: &str| line.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    match line["bench"].as_str().unwrap_or("") {
        "copy_bandwidth" => println!("KEY copy {:.0} GB/s", f("bytes_per_s") / 1e9),
        "decode_batch1" => println!(
            "KEY {} graphs={}: {:.3} ms/token, {:.0} tok/s, {:.0}% of the floor's speed",
            line["model"].as_str().unwrap_or("?").rsplit('/').next().unwrap_or("?"),
            line["graphs"],
            f("ms_per_token"),
            f("tokens_per_s"),
            100.0 * f("fraction_of_floor_speed")
        ),
        "offline_throughput" => println!("KEY {:.0} output tok/s over {} requests", f("output_tokens_per_s"), line["requests"]),
        "kernel" => println!("KEY {}: {:.0}% of the floor's speed", line["kernel"].as_str().unwrap_or("?"), 100.0 * f("fraction_of_floor_speed")),
        _ => {}
    }
    if let Ok(p) = std::env::var("KILN_BENCH_OUT") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds of `f` over `reps` runs, timed with device events
/// after `warm` warm-up runs.
fn time_ms(dev: &Device, warm: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warm {
        f();
    }
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let g = dev.gpu().expect("timings run on a GPU");
        let (a, b) = (g.ctx.new_event(None).unwrap(), g.ctx.new_event(None).unwrap());
        a.record(&g.stream).unwrap();
        f();
        b.record(&g.stream).unwrap();
        b.synchronize().unwrap();
        t.push(a.elapsed_ms(&b).unwrap() as f64);
    }
    median(t)
}

/// Device-to-device copy bandwidth in bytes/s (read + write counted).
fn copy_bandwidth(dev: &Device) -> f64 {
    let n = 2usize << 30;
    let (a, b) = (dev.alloc(n).unwrap(), dev.alloc(n).unwrap());
    dev.memset(a.ptr, 1, n).unwrap();
    let ms = time_ms(dev, 3, 20, || unsafe {
        cudarc::driver::result::memcpy_dtod_async(b.ptr, a.ptr, n, dev.gpu().unwrap().stream.cu_stream()).unwrap();
    });
    let bw = 2.0 * n as f64 / (ms / 1e3);
    record(serde_json::json!({"bench": "copy_bandwidth", "device": dev.name, "bytes_per_s": bw}));
    bw
}

fn greedy_reqs<'a>(g: &'a SamplingParams, rngs: &'a mut [rand_chacha::ChaCha8Rng]) -> Vec<SampleRequest<'a>> {
    rngs.iter_mut().map(|rng| SampleRequest { params: g, rng, prompt: &[], output: &[], allowed_tokens: None }).collect()
}

/// Batch-1 decode: 128 prompt tokens, then 256 timed steps.
fn decode_batch1(dir: &std::path::Path, eager: bool, bw: f64) {
    let (cfg, src) = open_weights(dir).unwrap();
    let o = CudaRunnerOptions { max_model_len: 1024, max_num_seqs: 8, max_num_batched_tokens: 1024, enforce_eager: eager, ..Default::default() };
    let mut r = CudaRunner::load(&cfg, src.as_ref(), o, |_| {}).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let prompt: Vec<u32> = (0..128).map(|_| rng.gen_range(0..cfg.vocab_size as u32)).collect();
    let table: Vec<u32> = (1..=(128 + 300usize).div_ceil(16) as u32).collect();
    let g = SamplingParams::greedy();
    let mut rngs = vec![rand_chacha::ChaCha8Rng::seed_from_u64(0)];
    let mut last = r.execute(&BatchInput::build(16, &[(&prompt, 0, &table, true)]), &mut greedy_reqs(&g, &mut rngs)).unwrap()[0].token_id;
    let mut times = Vec::new();
    for i in 0..256 {
        let b = BatchInput::build(16, &[(&[last], 128 + i, &table, true)]);
        let t = Instant::now();
        last = r.execute(&b, &mut greedy_reqs(&g, &mut rngs)).unwrap()[0].token_id;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let ms = median(times[16..].to_vec());
    let floor_ms = weight_bytes(&cfg) as f64 / bw * 1e3;
    record(serde_json::json!({
        "bench": "decode_batch1", "model": dir.display().to_string(), "graphs": !eager, "ms_per_token": ms,
        "tokens_per_s": 1e3 / ms, "floor_ms": floor_ms, "fraction_of_floor_speed": floor_ms / ms,
    }));
}

/// The copy floor of this call (scripts/gpu-check.sh's probe step; KILN_BENCH_PROBE=1).
#[test]
fn copy_bandwidth_probe() {
    if std::env::var("KILN_BENCH_PROBE").is_err() {
        println!("SKIPPED copy_bandwidth_probe: KILN_BENCH_PROBE not set");
        return;
    }
    let Some(dev) = gpu_or_skip("copy_bandwidth_probe") else { return };
    copy_bandwidth(&dev);
}

#[test]
fn decode_speed() {
    let dirs = std::env::var("KILN_BENCH_MODELS").unwrap_or_default();
    if dirs.is_empty() {
        println!("SKIPPED decode_speed: KILN_BENCH_MODELS not set");
        return;
    }
    let Some(dev) = gpu_or_skip("decode_speed") else { return };
    let bw = copy_bandwidth(&dev);
    drop(dev);
    for d in dirs.split(':').filter(|s| !s.is_empty()) {
        decode_batch1(std::path::Path::new(d), false, bw);
        decode_batch1(std::path::Path::new(d), true, bw);
    }
}

#[test]
fn kernel_timings() {
    if std::env::var("KILN_BENCH_KERNELS").is_err() {
        println!("SKIPPED kernel_timings: KILN_BENCH_KERNELS not set");
        return;
    }
    let Some(dev) = gpu_or_skip("kernel_timings") else { return };
    let bw = copy_bandwidth(&dev);
    let mut r = rng("kernel_timings");
    let (h, inter, nh, nkv, hd) = (4096usize, 14336usize, 32usize, 8usize, 128usize);
    let report = |name: &str, ms: f64, bytes: f64| {
        let floor = bytes / bw * 1e3;
        record(serde_json::json!({"bench": "kernel", "kernel": name, "ms": ms, "floor_ms": floor, "fraction_of_floor_speed": floor / ms}));
    };
    for t in [1usize, 64, 4096] {
        let (x, res, w) = (upload(&dev, &randn_bf16(&mut r, t * h, 1.0)), upload(&dev, &randn_bf16(&mut r, t * h, 1.0)), upload(&dev, &randn_bf16(&mut r, h, 1.0)));
        let out = poisoned::<u16>(&dev, t * h);
        let ms = time_ms(&dev, 5, 50, || ops::fused_add_rms_norm(&dev, out.ptr, res.ptr, x.ptr, w.ptr, t, h, 1e-5).unwrap());
        report(&format!("fused_add_rms_norm t={t}"), ms, (4 * t * h * 2) as f64);
        let gu = upload(&dev, &randn_bf16(&mut r, t * 2 * inter, 1.0));
        let act = poisoned::<u16>(&dev, t * inter);
        let ms = time_ms(&dev, 5, 50, || ops::silu_and_mul(&dev, act.ptr, gu.ptr, t, inter).unwrap());
        report(&format!("silu_and_mul t={t}"), ms, (3 * t * inter * 2) as f64);
    }
    // Decode attention: (sequences, context).
    for (s, ctx) in [(1usize, 4096usize), (1, 32768), (64, 1024), (256, 512)] {
        let per = ctx.div_ceil(16);
        let blocks = 1 + s * per;
        let (k, v) = (upload(&dev, &randn_bf16(&mut r, blocks * 16 * nkv * hd, 1.0)), upload(&dev, &randn_bf16(&mut r, blocks * 16 * nkv * hd, 1.0)));
        let tables: Vec<i32> = (0..s * per).map(|i| 1 + i as i32).collect();
        let (dt, dc, dr) = (upload(&dev, &tables), upload(&dev, &vec![ctx as i32; s]), upload(&dev, &(0..s as i32).collect::<Vec<_>>()));
        let q = upload(&dev, &randn_bf16(&mut r, s * nh * hd, 1.0));
        let split = decode_split(nkv * (nh / nkv).div_ceil(launch::decode_gmax(nh / nkv, hd)) * s, ctx, dev.num_sms);
        let p = split.num_parts;
        let out = poisoned::<u16>(&dev, s * nh * hd);
        let (po, pm, ps) = (poisoned::<f32>(&dev, s * nh * p * hd), poisoned::<f32>(&dev, s * nh * p), poisoned::<f32>(&dev, s * nh * p));
        let a = ops::Decode {
            out: out.ptr, part_out: po.ptr, part_max: pm.ptr, part_sum: ps.ptr, q: q.ptr, k_cache: k.ptr, v_cache: v.ptr,
            block_tables: dt.ptr, ctx_lens: dc.ptr, q_rows: dr.ptr, num_seqs: s, num_heads: nh, num_kv_heads: nkv,
            head_dim: hd, max_blocks: per, block_size: 16, split,
        };
        let ms = time_ms(&dev, 5, 50, || ops::paged_attention_decode(&dev, &a).unwrap());
        report(&format!("paged_attention_decode seqs={s} ctx={ctx} parts={p}"), ms, (2 * s * ctx * nkv * hd * 2) as f64);
    }
    // Sampling over the Llama-3 vocabulary.
    for rows in [1usize, 64] {
        let vocab = 128_256;
        let logits = upload(&dev, &(0..rows * vocab).map(|_| randn(&mut r) * 3.0).collect::<Vec<f32>>());
        let temp = upload(&dev, &vec![0.8f32; rows]);
        let (tk, tp, mp) = (upload(&dev, &vec![50i32; rows]), upload(&dev, &vec![0.9f32; rows]), upload(&dev, &vec![0f32; rows]));
        let (seeds, steps) = (upload(&dev, &vec![7u64; rows]), upload(&dev, &vec![0u64; rows]));
        let z = upload(&dev, &vec![0i32; rows + 1]);
        let s = ops::SamplingArrays {
            temperature: temp.ptr, top_k: tk.ptr, top_p: tp.ptr, min_p: mp.ptr, seeds: seeds.ptr, steps: steps.ptr,
            repetition: 0, frequency: 0, presence: 0, pen_offsets: z.ptr, pen_ids: 0, pen_counts: 0, bias_offsets: z.ptr,
            bias_ids: 0, bias_values: 0, mask_index: 0, masks: 0,
        };
        let (ids, lps) = (poisoned::<u32>(&dev, rows), poisoned::<f32>(&dev, rows));
        let ms = time_ms(&dev, 5, 50, || ops::sample(&dev, ids.ptr, lps.ptr, logits.ptr, &s, rows, vocab).unwrap());
        report(&format!("sample top_k=50 top_p=0.9 rows={rows}"), ms, (rows * vocab * 4) as f64);
    }
}

struct NoText;
impl kiln::engine::output::TextDecoder for NoText {
    fn stream(&self, _: &[u32]) -> Box<dyn kiln::engine::output::TextStream> {
        Box::new(NoText)
    }
}
impl kiln::engine::output::TextStream for NoText {
    fn push(&mut self, _: u32) -> String {
        String::new()
    }
    fn finish(&mut self) -> String {
        String::new()
    }
}

#[test]
fn offline_throughput() {
    let Ok(dir) = std::env::var("KILN_THROUGHPUT_MODEL") else {
        println!("SKIPPED offline_throughput: KILN_THROUGHPUT_MODEL not set");
        return;
    };
    if gpu_or_skip("offline_throughput").is_none() {
        return;
    }
    let n: usize = std::env::var("KILN_THROUGHPUT_REQUESTS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let (cfg, src) = open_weights(std::path::Path::new(&dir)).unwrap();
    let o = CudaRunnerOptions { max_model_len: 2048, max_num_seqs: 256, max_num_batched_tokens: 8192, ..Default::default() };
    let runner = CudaRunner::load(&cfg, src.as_ref(), o.clone(), |_| {}).unwrap();
    let ec = kiln::engine::EngineConfig {
        block_size: 16, max_num_batched_tokens: 8192, max_num_seqs: 256, max_model_len: 2048, ..Default::default()
    };
    let engine = kiln::engine::EngineHandle::start_with_decoder(ec, Box::new(runner), std::sync::Arc::new(NoText)).unwrap();
    let mut r = rand::rngs::StdRng::seed_from_u64(0);
    let t0 = Instant::now();
    let rxs: Vec<_> = (0..n)
        .map(|i| {
            let req = kiln::engine::ValidRequest {
                request_id: format!("r{i}"),
                prompt_ids: (0..1024).map(|_| r.gen_range(0..cfg.vocab_size as u32)).collect(),
                sampling: SamplingParams::greedy(),
                stop: kiln::engine::StopCriteria { max_tokens: 128, ignore_eos: true, ..Default::default() },
                n: 1,
                priority: Default::default(),
                grammar: None,
            };
            engine.submit(req).unwrap()
        })
        .collect();
    let mut out_tokens = 0usize;
    for mut rx in rxs {
        while let Some(ev) = rx.blocking_recv() {
            match ev.kind {
                kiln::engine::EventKind::Token { .. } => out_tokens += 1,
                kiln::engine::EventKind::Finished { .. } => break,
                kiln::engine::EventKind::Error(e) => panic!("{e}"),
                kiln::engine::EventKind::PromptLogprobs { .. } => {}
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    record(serde_json::json!({"bench": "offline_throughput", "model": dir, "requests": n, "output_tokens": out_tokens, "seconds": secs, "output_tokens_per_s": out_tokens as f64 / secs}));
    engine.shutdown();
}
