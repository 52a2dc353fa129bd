//! kiln kernels on the emulated GPU against independent references.
//! (Prefill shares the decode problem's paged cache.)
use super::support::*;
use half::bf16;
use kiln::backend::cpu::ops as cpu;
use kiln::backend::cuda::emu::host_kernels::{kernel_names, EmuError};
use kiln::backend::cuda::kernels::FILES;
use kiln::backend::cuda::launch as geom;
use rand::rngs::StdRng;
use rand::Rng;

fn bits(v: &[bf16]) -> Vec<u16> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn f32s(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// A row of integers in [-31, 31] times a power of two: exact in bf16, and
/// every partial sum of squares of up to 8192 of them is exact in f32, so
/// the kernel's tree reduction and the CPU's running sum agree exactly and
/// bit equality is the right requirement.
fn exact_row(r: &mut StdRng, n: usize) -> Vec<bf16> {
    let scale = 2f32.powi(r.gen_range(-6..3));
    (0..n).map(|_| bf16::from_f32(r.gen_range(-31i32..=31) as f32 * scale)).collect()
}

/// Hugging Face's bf16 LlamaRMSNorm on top of the CPU backend's f32 norm:
/// bf16(w * bf16(x / rms(x))).
fn rms_reference(x: &[f32], w: &[bf16], eps: f32) -> Vec<bf16> {
    let hidden = w.len();
    let mut norm = vec![0f32; x.len()];
    cpu::rms_norm(x, &vec![1.0; hidden], eps, &mut norm);
    norm.iter().enumerate().map(|(i, &n)| bf16::from_f32(w[i % hidden].to_f32() * bf16::from_f32(n).to_f32())).collect()
}

#[test]
fn rms_norm_and_fused_add_match_the_cpu_backend_bit_for_bit() {
    let mut r = rng("rms_norm");
    let eps = 1e-5f32;
    for hidden in [64usize, 576, 4096] {
        let rows = 5;
        // x and residual of a row share its scale, so bf16(x + residual) is exact too.
        let mut x = Vec::new();
        let mut res = Vec::new();
        for _ in 0..rows {
            let row = exact_row(&mut r, 2 * hidden);
            x.extend_from_slice(&row[..hidden]);
            res.extend_from_slice(&row[hidden..]);
        }
        let w: Vec<bf16> = (0..hidden).map(|_| bf16::from_f32(1.0 + 0.1 * randn(&mut r))).collect();
        let d = geom::rms_norm_dims(rows, hidden);
        let (mut dx, mut dw) = (Mem::from(&x), Mem::from(&w));
        let tail = [rows as u64, hidden as u64, eps.to_bits() as u64];

        let mut out = Mem::filled(rows * hidden * 2, 0xff);
        run("rms_norm_bf16", d, &[&[out.addr(), dx.addr(), dw.addr()][..], &tail].concat()).unwrap();
        assert_eq!(out.read::<u16>(), bits(&rms_reference(&f32s(&x), &w, eps)), "rms_norm hidden {hidden}");

        let mut out = Mem::filled(rows * hidden * 2, 0xff);
        let mut dres = Mem::from(&res);
        run("fused_add_rms_norm_bf16", d, &[&[out.addr(), dres.addr(), dx.addr(), dw.addr()][..], &tail].concat()).unwrap();
        let sum: Vec<bf16> = x.iter().zip(&res).map(|(a, b)| bf16::from_f32(a.to_f32() + b.to_f32())).collect();
        assert_eq!(dres.read::<u16>(), bits(&sum), "residual += x, hidden {hidden}");
        assert_eq!(out.read::<u16>(), bits(&rms_reference(&f32s(&sum), &w, eps)), "fused_add_rms_norm hidden {hidden}");
    }
}

/// One paged decode problem: SmolLM2's attention shape (9 heads, 3 kv heads,
/// head_dim 64), four sequences of contexts 1, 130, 0 (a padding row) and
/// 500 over a shuffled block table.
struct Decode {
    nh: usize,
    nkv: usize,
    hd: usize,
    bs: usize,
    max_blocks: usize,
    ctx: Vec<i32>,
    q_rows: Vec<i32>,
    q: Vec<bf16>,
    k: Vec<bf16>,
    v: Vec<bf16>,
    tables: Vec<i32>,
}

impl Decode {
    fn new(r: &mut StdRng) -> Decode {
        let (nh, nkv, hd, bs) = (9, 3, 64, 16);
        let ctx = vec![1, 130, 0, 500];
        let max_blocks = 500usize.div_ceil(bs);
        let num_blocks = ctx.len() * max_blocks;
        let mut tables: Vec<i32> = (0..num_blocks as i32).collect();
        for i in (1..tables.len()).rev() {
            tables.swap(i, r.gen_range(0..=i));
        }
        let cache = num_blocks * bs * nkv * hd;
        let randn_bf16 = |r: &mut StdRng, n: usize| (0..n).map(|_| bf16::from_f32(randn(r))).collect::<Vec<_>>();
        Decode {
            nh, nkv, hd, bs, max_blocks, ctx,
            q_rows: vec![2, 0, 3, 1],
            q: randn_bf16(r, 4 * nh * hd),
            k: randn_bf16(r, cache),
            v: randn_bf16(r, cache),
            tables,
        }
    }

    fn scale(&self) -> f32 {
        1.0 / (self.hd as f32).sqrt()
    }

    /// Plain f32 attention of query vector `q` (head h) over the first `len`
    /// cache positions of sequence `s`.
    fn attend(&self, q: &[bf16], s: usize, h: usize, len: usize) -> Vec<f32> {
        let hd = self.hd;
        let kvh = h / (self.nh / self.nkv);
        let at = |t: usize| ((self.tables[s * self.max_blocks + t / self.bs] as usize * self.bs + t % self.bs) * self.nkv + kvh) * hd;
        let scores: Vec<f32> =
            (0..len).map(|t| (0..hd).map(|d| q[d].to_f32() * self.k[at(t) + d].to_f32()).sum::<f32>() * self.scale()).collect();
        let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let p: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f32 = p.iter().sum();
        let mut o = vec![0f32; hd];
        for (t, pt) in p.iter().enumerate() {
            for d in 0..hd {
                o[d] += pt / z * self.v[at(t) + d].to_f32();
            }
        }
        o
    }

    /// out[q_rows[s], h] = attention over sequence s's whole context.
    fn reference(&self) -> Vec<f32> {
        let (nh, hd) = (self.nh, self.hd);
        let mut out = vec![0f32; self.q_rows.len() * nh * hd];
        for (s, &len) in self.ctx.iter().enumerate() {
            for h in 0..nh {
                let row = (self.q_rows[s] as usize * nh + h) * hd;
                out[row..row + hd].copy_from_slice(&self.attend(&self.q[row..row + hd], s, h, len as usize));
            }
        }
        out
    }

    /// Runs the decode kernel (and the reduction when split) on the emulator.
    fn run(&self, part_size: usize, num_parts: usize) -> Vec<bf16> {
        let (nh, hd, seqs) = (self.nh, self.hd, self.ctx.len());
        let gmax = geom::decode_gmax(nh / self.nkv, hd);
        let mut out = Mem::filled(self.q_rows.len() * nh * hd * 2, 0xff);
        let parts = seqs * nh * num_parts;
        let (mut po, mut pm, mut ps) = (Mem::filled(parts * hd * 4, 0xff), Mem::filled(parts * 4, 0xff), Mem::filled(parts * 4, 0xff));
        let (mut q, mut k, mut v) = (Mem::from(&self.q), Mem::from(&self.k), Mem::from(&self.v));
        let (mut tables, mut ctx, mut rows) = (Mem::from(&self.tables), Mem::from(&self.ctx), Mem::from(&self.q_rows));
        let sizes = [nh, self.nkv, self.max_blocks, self.bs, part_size, num_parts].map(|x| x as u64);
        let ptrs = [out.addr(), po.addr(), pm.addr(), ps.addr(), q.addr(), k.addr(), v.addr(), tables.addr(), ctx.addr(), rows.addr()];
        let args = [&ptrs[..], &sizes, &[self.scale().to_bits() as u64]].concat();
        let d = geom::decode_dims(seqs, nh, self.nkv, hd, part_size, num_parts);
        run(&format!("paged_attention_decode_bf16_hd{hd}_g{gmax}"), d, &args).unwrap();
        if num_parts > 1 {
            let args = [out.addr(), po.addr(), pm.addr(), ps.addr(), ctx.addr(), rows.addr(), nh as u64, hd as u64, part_size as u64, num_parts as u64];
            run("paged_attention_reduce_bf16", geom::decode_reduce_dims(seqs, nh, hd), &args).unwrap();
        }
        out.read::<u16>().into_iter().map(bf16::from_bits).collect()
    }
}

#[test]
fn paged_attention_decode_matches_plain_attention() {
    let mut r = rng("paged_decode");
    let p = Decode::new(&mut r);
    let want = p.reference();
    // (part_size, num_parts): one partition covering 500 tokens, and four of 128.
    for (part_size, num_parts) in [(512, 1), (128, 4)] {
        let got = p.run(part_size, num_parts);
        assert_close(&got, &want, &format!("{num_parts} partitions"));
        let pad = p.q_rows[2] as usize * p.nh * p.hd;
        assert!(got[pad..pad + p.nh * p.hd].iter().all(|x| x.to_bits() == 0), "padding row must be +0.0");
    }
}

/// |got - want| <= 2^-8 |want| + 1e-4: the bf16 rounding of the output
/// (2^-9 relative) twice, plus f32 summation-order noise.
fn assert_close(got: &[bf16], want: &[f32], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let g = g.to_f32();
        assert!((g - w).abs() <= w.abs() / 256.0 + 1e-4, "{what}, element {i}: {g} vs {w}");
    }
}

#[test]
fn prefill_attention_matches_plain_causal_attention() {
    let mut r = rng("prefill");
    let p = Decode::new(&mut r);
    let (nh, nkv, hd) = (p.nh, p.nkv, p.hd);
    // (sequence of the decode problem's cache, query tokens, context after
    // this step): a one-token prompt, a chunk after a cached prefix, and a
    // chunk deep into a long context.
    let seqs = [(0usize, 1usize, 1usize), (1, 37, 130), (3, 20, 500)];
    let tokens: usize = seqs.iter().map(|s| s.1).sum();
    let q: Vec<bf16> = (0..tokens * nh * hd).map(|_| bf16::from_f32(randn(&mut r))).collect();
    let group = nh / nkv;
    let (hpb, toks) = (geom::prefill_heads_per_block(group), geom::prefill_tokens_per_tile(group));
    let (mut starts, mut lens, mut ctxs, mut tile_seq, mut tile_q0, mut tables) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut want = vec![0f32; tokens * nh * hd];
    let mut start = 0;
    for (i, &(s, q_len, ctx)) in seqs.iter().enumerate() {
        starts.push(start as i32);
        lens.push(q_len as i32);
        ctxs.push(ctx as i32);
        tables.extend_from_slice(&p.tables[s * p.max_blocks..(s + 1) * p.max_blocks]);
        for q0 in (0..q_len).step_by(toks) {
            tile_seq.push(i as i32);
            tile_q0.push(q0 as i32);
        }
        for j in 0..q_len {
            for h in 0..nh {
                let row = ((start + j) * nh + h) * hd;
                want[row..row + hd].copy_from_slice(&p.attend(&q[row..row + hd], s, h, ctx - q_len + j + 1));
            }
        }
        start += q_len;
    }
    let mut out = Mem::filled(tokens * nh * hd * 2, 0xff);
    let (mut dq, mut k, mut v, mut t) = (Mem::from(&q), Mem::from(&p.k), Mem::from(&p.v), Mem::from(&tables));
    let (mut st, mut ln, mut cx, mut ts, mut tq) = (Mem::from(&starts), Mem::from(&lens), Mem::from(&ctxs), Mem::from(&tile_seq), Mem::from(&tile_q0));
    let ptrs = [out.addr(), dq.addr(), k.addr(), v.addr(), t.addr(), st.addr(), ln.addr(), cx.addr(), ts.addr(), tq.addr()];
    let sizes = [nh, nkv, hpb, p.max_blocks, p.bs].map(|x| x as u64);
    let args = [&ptrs[..], &sizes, &[p.scale().to_bits() as u64]].concat();
    run(&format!("prefill_attention_bf16_hd{hd}"), geom::prefill_dims(tile_seq.len(), nh, nkv, hd), &args).unwrap();
    let got: Vec<bf16> = out.read::<u16>().into_iter().map(bf16::from_bits).collect();
    assert_close(&got, &want, "prefill");
}

#[test]
fn every_listed_kernel_has_an_entry_point() {
    let names: Vec<&str> = kernel_names().collect();
    for f in FILES {
        for k in f.functions {
            assert!(names.contains(k), "{k} ({}.cu) has no host entry point", f.name);
            // The trampoline runs and counts the kernel's real parameters.
            match run(k, dims((1, 1, 1), 32, 0), &[]) {
                Err(EmuError::ArgCount { expected, given: 0, .. }) => assert!(expected > 0, "{k}"),
                other => panic!("{k}: {other:?}"),
            }
        }
    }
}
