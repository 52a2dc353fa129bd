//! Rotary + paged-cache write (llama3 and linear rope scaling, Qwen2 q/k/v
//! bias, Qwen3 q/k norm), decode attention (every compiled head_dim x group
//! instantiation, one and many partitions, contexts ending inside and on
//! block boundaries) and prefill attention (with and without a cached
//! prefix, causal) against the CPU backend, over many head layouts (MHA, GQA
//! groups 2..12, MQA) and head dims 16..256. Fresh random inputs each run;
//! outputs poisoned first. On the emulated device contexts are shorter.
use super::support::*;
use half::bf16;
use kiln::backend::cpu::attention::paged_attention;
use kiln::backend::cpu::{ops as cpu, KvCache};
use kiln::backend::cuda::attention_plan::{decode_split, AttentionPlan, DecodeSplit};
use kiln::backend::cuda::device::Device;
use kiln::backend::cuda::{kernels, launch, ops};
use kiln::model::config::RopeScaling;
use kiln::model::{BatchInput, ModelConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

const BS: usize = 16;

/// Shapes: (heads, kv heads, head_dim).
const SHAPES: &[(usize, usize, usize)] =
    &[(9, 3, 64), (32, 8, 128), (16, 8, 128), (4, 2, 16), (8, 8, 32), (16, 2, 256), (64, 8, 128), (28, 4, 128), (12, 1, 64)];

/// A pool of `blocks` random K and V blocks, on the GPU and as a CPU KvCache.
struct Pool {
    k: kiln::backend::cuda::device::DeviceMem,
    v: kiln::backend::cuda::device::DeviceMem,
    cpu: KvCache,
}

fn pool(dev: &Device, r: &mut StdRng, blocks: usize, nkv: usize, hd: usize) -> Pool {
    let n = blocks * BS * nkv * hd;
    let (k, v) = (randn_bf16(r, n, 1.0), randn_bf16(r, n, 1.0));
    let mut cpu = KvCache::new(1, blocks, BS, nkv, hd);
    cpu.k[0] = to_f32(&k);
    cpu.v[0] = to_f32(&v);
    Pool { k: upload(dev, &k), v: upload(dev, &v), cpu }
}

/// Random block tables (distinct blocks, never block 0) for contexts `ctx`.
fn tables(r: &mut StdRng, ctx: &[usize], blocks: usize) -> Vec<Vec<u32>> {
    let mut free: Vec<u32> = (1..blocks as u32).collect();
    free.shuffle(r);
    ctx.iter().map(|&c| (0..c.div_ceil(BS)).map(|_| free.pop().unwrap()).collect()).collect()
}

/// The rotary frequencies of head_dim `hd`: llama3 scaling (the llama3_tied
/// fixture's config) or, with `linear`, linear scaling by 4.
fn inv_freq(hd: usize, linear: bool) -> Vec<f32> {
    let path = repo_root().join("tests/fixtures/models/llama3_tied/config.json");
    let mut cfg = ModelConfig::from_hf_json(&path).unwrap();
    assert!(matches!(cfg.rope_scaling, Some(RopeScaling::Llama3 { .. })));
    if linear {
        cfg.rope_scaling = Some(RopeScaling::Linear { factor: 4.0 });
    }
    cfg.head_dim = hd;
    cfg.rope_inv_freq()
}

#[test]
fn rotary_writes_q_and_the_cache_like_the_cpu() {
    let Some(dev) = device_or_skip("rotary") else { return };
    let mut r = rng("rotary");
    for &(nh, nkv, hd) in &[(8, 2, 32), (9, 3, 64), (32, 8, 128), (16, 2, 256)] {
        for (bias, qk_norm, linear) in [(false, false, false), (true, false, false), (false, true, false), (false, false, true)] {
            let t = 23;
            let width = (nh + 2 * nkv) * hd;
            // With a bias the kernel reads the GEMM's f32 output (not bf16-rounded).
            let qkv_f32: Vec<f32> = (0..t * width).map(|_| randn(&mut r)).collect();
            let qkv: Vec<bf16> = qkv_f32.iter().map(|&v| bf16::from_f32(v)).collect();
            let b = randn_bf16(&mut r, width, 0.5);
            let qn: Vec<bf16> = (0..hd).map(|_| bf16::from_f32(1.0 + 0.1 * randn(&mut r))).collect();
            let kn: Vec<bf16> = (0..hd).map(|_| bf16::from_f32(1.0 + 0.1 * randn(&mut r))).collect();
            let positions: Vec<i32> = (0..t).map(|_| r.gen_range(0..20_000)).collect();
            let blocks = 8;
            let mut all: Vec<i32> = (0..(blocks * BS) as i32).collect();
            all.shuffle(&mut r);
            let mut slots: Vec<i32> = all[..t].to_vec();
            slots[4] = -1;
            let freq = inv_freq(hd, linear);
            let cache_n = blocks * BS * nkv * hd;
            let (dk, dv) = (poisoned::<u16>(&dev, cache_n), poisoned::<u16>(&dev, cache_n));
            let q_out = poisoned::<u16>(&dev, t * nh * hd);
            let dqkv = if bias { upload(&dev, &qkv_f32) } else { upload(&dev, &qkv) };
            let (db, dqn, dkn) = (upload(&dev, &b), upload(&dev, &qn), upload(&dev, &kn));
            let (dfreq, dpos, dslots) = (upload(&dev, &freq), upload(&dev, &positions), upload(&dev, &slots));
            let eps = 1e-6;
            ops::rotary_qkv_cache(&dev, &ops::Rotary {
                q_out: q_out.ptr, k_cache: dk.ptr, v_cache: dv.ptr, qkv: dqkv.ptr,
                qkv_bias: if bias { db.ptr } else { 0 },
                q_norm: if qk_norm { dqn.ptr } else { 0 },
                k_norm: if qk_norm { dkn.ptr } else { 0 },
                inv_freq: dfreq.ptr, positions: dpos.ptr, slots: dslots.ptr,
                tokens: t, num_heads: nh, num_kv_heads: nkv, head_dim: hd, eps,
            }).unwrap();

            // CPU reference on the same inputs; a bias joins the f32 projection
            // before its one rounding to bf16 (as transformers' Linear does).
            let mut x = to_f32(&qkv);
            if bias {
                x = qkv_f32.clone();
                for row in x.chunks_mut(width) {
                    row.iter_mut().zip(to_f32(&b)).for_each(|(v, b)| *v = bf16::from_f32(*v + b).to_f32());
                }
            }
            let (mut q, mut k, mut v) = (vec![], vec![], vec![]);
            for row in x.chunks(width) {
                q.extend_from_slice(&row[..nh * hd]);
                k.extend_from_slice(&row[nh * hd..(nh + nkv) * hd]);
                v.extend_from_slice(&row[(nh + nkv) * hd..]);
            }
            if qk_norm {
                cpu::rms_norm_heads_inplace(&mut q, &to_f32(&qn), eps);
                cpu::rms_norm_heads_inplace(&mut k, &to_f32(&kn), eps);
            }
            let pos_u: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
            cpu::rotary_inplace(&mut q, &pos_u, nh, &freq);
            cpu::rotary_inplace(&mut k, &pos_u, nkv, &freq);
            let what = format!("rotary nh={nh} nkv={nkv} hd={hd} bias={bias} qk_norm={qk_norm} linear={linear}");
            assert_rel(&download_bf16(&dev, &q_out, t * nh * hd), &q, 1e-2, &format!("{what}: q"));

            let (gk, gv): (Vec<u16>, Vec<u16>) = (download(&dev, &dk, cache_n), download(&dev, &dv, cache_n));
            let row = nkv * hd;
            let (mut got_k, mut want_k) = (vec![], vec![]);
            for (ti, &s) in slots.iter().enumerate() {
                if s < 0 {
                    continue;
                }
                let s = s as usize;
                got_k.extend(gk[s * row..(s + 1) * row].iter().map(|&b| bf16::from_bits(b).to_f32()));
                want_k.extend_from_slice(&k[ti * row..(ti + 1) * row]);
                let vrow: Vec<f32> = gv[s * row..(s + 1) * row].iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
                assert_eq!(vrow, v[ti * row..(ti + 1) * row].to_vec(), "{what}: V of token {ti} copied exactly");
            }
            assert_rel(&got_k, &want_k, 1e-2, &format!("{what}: K in cache"));
            let written: std::collections::HashSet<usize> = slots.iter().filter(|&&s| s >= 0).map(|&s| s as usize).collect();
            for s in 0..blocks * BS {
                if !written.contains(&s) {
                    assert!(gk[s * row..(s + 1) * row].iter().all(|&b| b == 0xFFFF), "{what}: slot {s} written");
                }
            }
        }
    }
}

/// Decode contexts: ending on a block boundary (16, 32), inside a block,
/// within one and across several partitions.
fn decode_contexts(dev: &Device) -> Vec<usize> {
    if emulated(dev) {
        vec![1, 16, 17, 32, 300]
    } else {
        vec![1, 16, 17, 300, 3000]
    }
}

/// One (heads, kv heads, head_dim) per compiled decode instantiation
/// (kernels::FILES: paged_attention_decode_bf16_hd{HD}_g{G}): two kv heads
/// of G query heads each, so the kernel `launch::decode_gmax` picks is that
/// one; plus SHAPES (groups that leave a kernel's last query slots empty).
fn decode_shapes() -> Vec<(usize, usize, usize)> {
    let file = kernels::file_of("paged_attention_reduce_bf16").unwrap();
    let mut shapes: Vec<(usize, usize, usize)> = file
        .functions
        .iter()
        .filter_map(|f| {
            let rest = f.strip_prefix("paged_attention_decode_bf16_hd")?;
            let (hd, g) = rest.split_once("_g")?;
            let (hd, g): (usize, usize) = (hd.parse().ok()?, g.parse().ok()?);
            assert_eq!(launch::decode_gmax(g, hd), g, "{f}");
            Some((2 * g, 2, hd))
        })
        .collect();
    assert_eq!(shapes.len(), 19, "every instantiation found");
    shapes.extend_from_slice(SHAPES);
    shapes
}

fn run_decode(dev: &Device, r: &mut StdRng, (nh, nkv, hd): (usize, usize, usize), split: Option<DecodeSplit>) {
    let ctx = decode_contexts(dev);
    let max_ctx = *ctx.iter().max().unwrap();
    let blocks = ctx.iter().map(|c| c.div_ceil(BS)).sum::<usize>() + 4;
    let p = pool(dev, r, blocks, nkv, hd);
    let tabs = tables(r, &ctx, blocks);
    let width = tabs.iter().map(Vec::len).max().unwrap();
    let s = ctx.len() + 1; // plus a padding row (context 0)
    let q = randn_bf16(r, s * nh * hd, 1.0);
    let mut flat = vec![0i32; s * width];
    for (i, t) in tabs.iter().enumerate() {
        for (j, &b) in t.iter().enumerate() {
            flat[i * width + j] = b as i32;
        }
    }
    let mut ctx_lens: Vec<i32> = ctx.iter().map(|&c| c as i32).collect();
    ctx_lens.push(0);
    let q_rows: Vec<i32> = (0..s as i32).collect();
    let group = nh / nkv;
    let chunks = group.div_ceil(launch::decode_gmax(group, hd));
    let split = split.unwrap_or_else(|| decode_split(nkv * chunks * s, max_ctx, dev.num_sms));
    let parts = split.num_parts;
    let out = poisoned::<u16>(dev, s * nh * hd);
    let (po, pm, ps) = (poisoned::<f32>(dev, s * nh * parts * hd), poisoned::<f32>(dev, s * nh * parts), poisoned::<f32>(dev, s * nh * parts));
    let (dq, dt, dc, dr) = (upload(dev, &q), upload(dev, &flat), upload(dev, &ctx_lens), upload(dev, &q_rows));
    ops::paged_attention_decode(dev, &ops::Decode {
        out: out.ptr, part_out: po.ptr, part_max: pm.ptr, part_sum: ps.ptr, q: dq.ptr, k_cache: p.k.ptr, v_cache: p.v.ptr,
        block_tables: dt.ptr, ctx_lens: dc.ptr, q_rows: dr.ptr, num_seqs: s, num_heads: nh, num_kv_heads: nkv,
        head_dim: hd, max_blocks: width, block_size: BS, split,
    }).unwrap();
    let got = download_bf16(dev, &out, s * nh * hd);

    let seqs: Vec<(Vec<u32>, usize, Vec<u32>, bool)> = ctx.iter().zip(&tabs).map(|(&c, t)| (vec![0u32], c - 1, t.clone(), true)).collect();
    let refs: Vec<(&[u32], usize, &[u32], bool)> = seqs.iter().map(|(a, c, t, w)| (&a[..], *c, &t[..], *w)).collect();
    let batch = BatchInput::build(BS, &refs);
    let mut want = vec![0f32; ctx.len() * nh * hd];
    paged_attention(&batch, &p.cpu, 0, nh, &to_f32(&q[..ctx.len() * nh * hd]), &mut want);
    let what = format!("decode nh={nh} nkv={nkv} hd={hd} split={split:?}");
    assert_rel(&got[..ctx.len() * nh * hd], &want, 1e-2, &what);
    assert!(got[ctx.len() * nh * hd..].iter().all(|&v| v == 0.0), "{what}: padding row must be zeros");
}

#[test]
fn decode_attention_matches_the_cpu_split_or_not() {
    let Some(dev) = device_or_skip("decode_attention") else { return };
    let mut r = rng("decode_attention");
    let max_ctx = *decode_contexts(&dev).iter().max().unwrap();
    for shape in decode_shapes() {
        run_decode(&dev, &mut r, shape, None);
        run_decode(&dev, &mut r, shape, Some(DecodeSplit { part_size: 128, num_parts: max_ctx.div_ceil(128) }));
        // Over-provisioned grid (as in a CUDA graph sized for a longer max length).
        run_decode(&dev, &mut r, shape, Some(DecodeSplit { part_size: 1024, num_parts: 8 }));
    }
}

#[test]
fn prefill_attention_matches_the_cpu_with_and_without_prefix() {
    let Some(dev) = device_or_skip("prefill_attention") else { return };
    let mut r = rng("prefill_attention");
    for &(nh, nkv, hd) in SHAPES {
        // (new tokens, cached tokens before them)
        let spec: &[(usize, usize)] =
            if emulated(&dev) { &[(37, 50), (40, 0), (2, 0), (65, 16), (70, 33)] } else { &[(37, 50), (100, 0), (2, 0), (65, 16), (300, 129)] };
        let ctx: Vec<usize> = spec.iter().map(|(n, c)| n + c).collect();
        let blocks = ctx.iter().map(|c| c.div_ceil(BS)).sum::<usize>() + 4;
        let p = pool(&dev, &mut r, blocks, nkv, hd);
        let tabs = tables(&mut r, &ctx, blocks);
        let toks: Vec<Vec<u32>> = spec.iter().map(|(n, _)| vec![0u32; *n]).collect();
        let refs: Vec<(&[u32], usize, &[u32], bool)> = spec.iter().enumerate().map(|(i, (_, c))| (&toks[i][..], *c, &tabs[i][..], true)).collect();
        let batch = BatchInput::build(BS, &refs);
        let t = batch.num_tokens();
        let q = randn_bf16(&mut r, t * nh * hd, 1.0);
        let plan = AttentionPlan::build(&batch, launch::prefill_tokens_per_tile(nh / nkv));
        let up = |v: &Vec<i32>| upload(&dev, v);
        let (dq, dtab) = (upload(&dev, &q), up(&plan.prefill_tables));
        let (qs, ql, qc, ts, t0) = (up(&plan.prefill_q_start), up(&plan.prefill_q_len), up(&plan.prefill_ctx_len), up(&plan.tile_seq), up(&plan.tile_q0));
        let out = poisoned::<u16>(&dev, t * nh * hd);
        ops::prefill_attention(&dev, &ops::Prefill {
            out: out.ptr, q: dq.ptr, k_cache: p.k.ptr, v_cache: p.v.ptr, block_tables: dtab.ptr, q_start: qs.ptr,
            q_len: ql.ptr, ctx_len: qc.ptr, tile_seq: ts.ptr, tile_q0: t0.ptr, num_tiles: plan.tile_seq.len(),
            num_heads: nh, num_kv_heads: nkv, head_dim: hd, max_blocks: plan.max_blocks, block_size: BS,
        }).unwrap();
        let mut want = vec![0f32; t * nh * hd];
        paged_attention(&batch, &p.cpu, 0, nh, &to_f32(&q), &mut want);
        assert_rel(&download_bf16(&dev, &out, t * nh * hd), &want, 1e-2, &format!("prefill nh={nh} nkv={nkv} hd={hd}"));
    }
}
