//! Every elementwise / row kernel against the CPU backend (kiln's reference)
//! on fresh random inputs, outputs poisoned before each launch. Needs a GPU:
//! without one each test prints why it skips. Run on the device machine by
//! scripts/gpu-check.sh (KILN_REQUIRE_GPU=1 there).
use super::support::*;
use half::bf16;
use kiln::backend::cpu::ops as cpu;
use kiln::backend::cuda::ops;
use rand::Rng;

#[test]
fn embedding_gathers_rows_and_zeroes_bad_ids() {
    let Some(dev) = device_or_skip("embedding") else { return };
    let mut r = rng("embedding");
    let (vocab, hidden, n) = (1000, 576, 37);
    let table = randn_bf16(&mut r, vocab * hidden, 1.0);
    let mut ids: Vec<u32> = (0..n).map(|_| r.gen_range(0..vocab as u32)).collect();
    ids[5] = vocab as u32 + 3; // out of range: zero row, no read
    let (t, i) = (upload(&dev, &table), upload(&dev, &ids));
    let out = poisoned::<u16>(&dev, n * hidden);
    ops::embedding(&dev, out.ptr, t.ptr, i.ptr, n, hidden, vocab).unwrap();
    let got = download_bf16(&dev, &out, n * hidden);
    for (k, &id) in ids.iter().enumerate() {
        let row = &got[k * hidden..(k + 1) * hidden];
        if id as usize >= vocab {
            assert!(row.iter().all(|&v| v == 0.0), "row {k}");
        } else {
            assert_eq!(row, &to_f32(&table[id as usize * hidden..(id as usize + 1) * hidden])[..], "row {k}");
        }
    }
}

#[test]
fn rms_norm_and_fused_residual_add_match_the_cpu() {
    let Some(dev) = device_or_skip("rms_norm") else { return };
    let mut r = rng("rms_norm");
    for hidden in [64, 576, 4096, 8192] {
        let rows = 9;
        let x = randn_bf16(&mut r, rows * hidden, 1.0);
        let res = randn_bf16(&mut r, rows * hidden, 3.0);
        let w: Vec<bf16> = (0..hidden).map(|_| bf16::from_f32(1.0 + 0.1 * randn(&mut r))).collect();
        let (dx, dres, dw) = (upload(&dev, &x), upload(&dev, &res), upload(&dev, &w));
        let eps = 1e-5;

        let out = poisoned::<u16>(&dev, rows * hidden);
        ops::rms_norm(&dev, out.ptr, dx.ptr, dw.ptr, rows, hidden, eps).unwrap();
        let mut want = vec![0f32; rows * hidden];
        cpu::rms_norm(&to_f32(&x), &to_f32(&w), eps, &mut want);
        assert_rel(&download_bf16(&dev, &out, rows * hidden), &want, 1e-2, &format!("rms_norm h={hidden}"));

        let out = poisoned::<u16>(&dev, rows * hidden);
        ops::fused_add_rms_norm(&dev, out.ptr, dres.ptr, dx.ptr, dw.ptr, rows, hidden, eps).unwrap();
        let sum: Vec<f32> = to_f32(&x).iter().zip(to_f32(&res)).map(|(a, b)| bf16::from_f32(a + b).to_f32()).collect();
        assert_eq!(download_bf16(&dev, &dres, rows * hidden), sum, "residual += x, rounded to bf16");
        cpu::rms_norm(&sum, &to_f32(&w), eps, &mut want);
        assert_rel(&download_bf16(&dev, &out, rows * hidden), &want, 1e-2, &format!("fused_add_rms_norm h={hidden}"));
    }
}

#[test]
fn silu_and_mul_matches_the_cpu() {
    let Some(dev) = device_or_skip("silu_and_mul") else { return };
    let mut r = rng("silu_and_mul");
    for (tokens, inter) in [(1, 112), (33, 3072), (5, 14336)] {
        let gu = randn_bf16(&mut r, tokens * 2 * inter, 2.0);
        let d = upload(&dev, &gu);
        let out = poisoned::<u16>(&dev, tokens * inter);
        ops::silu_and_mul(&dev, out.ptr, d.ptr, tokens, inter).unwrap();
        let mut want = vec![0f32; tokens * inter];
        cpu::silu_and_mul(&to_f32(&gu), inter, &mut want);
        assert_rel(&download_bf16(&dev, &out, tokens * inter), &want, 1e-2, &format!("silu_and_mul {tokens}x{inter}"));
    }
}

#[test]
fn gather_rows_copies_the_named_rows() {
    let Some(dev) = device_or_skip("gather_rows") else { return };
    let mut r = rng("gather_rows");
    let (tokens, hidden) = (50, 1024);
    let x = randn_bf16(&mut r, tokens * hidden, 1.0);
    let rows: Vec<i32> = vec![49, 0, 17, 17, 3];
    let (dx, drows) = (upload(&dev, &x), upload(&dev, &rows));
    let out = poisoned::<u16>(&dev, rows.len() * hidden);
    ops::gather_rows(&dev, out.ptr, dx.ptr, drows.ptr, rows.len(), hidden).unwrap();
    let got = download_bf16(&dev, &out, rows.len() * hidden);
    for (k, &row) in rows.iter().enumerate() {
        let row = row as usize;
        assert_eq!(&got[k * hidden..(k + 1) * hidden], &to_f32(&x[row * hidden..(row + 1) * hidden])[..]);
    }
}

/// Q8_0 / Q4_1 blocks with random scales, expanded on the GPU, against the
/// CPU's block decoders.
#[test]
fn dequant_matches_the_block_definitions() {
    let Some(dev) = device_or_skip("dequant") else { return };
    let mut r = rng("dequant");
    let nblocks = 4096;
    for q in [ops::Quant::Q8_0, ops::Quant::Q4_1] {
        let bb = q.block_bytes();
        let mut blocks = vec![0u8; nblocks * bb];
        r.fill(&mut blocks[..]);
        for b in blocks.chunks_mut(bb) {
            // finite f16 scales: 0.001 .. 0.1 (and a signed min for Q4_1)
            b[..2].copy_from_slice(&half::f16::from_f32(r.gen_range(0.001..0.1)).to_bits().to_le_bytes());
            if q == ops::Quant::Q4_1 {
                b[2..4].copy_from_slice(&half::f16::from_f32(r.gen_range(-1.0..1.0)).to_bits().to_le_bytes());
            }
        }
        let want: Vec<f32> = blocks.chunks(bb).flat_map(|b| decode_block(q, b)).collect();
        let d = upload(&dev, &blocks);
        let out = poisoned::<u16>(&dev, nblocks * 32);
        ops::dequant(&dev, q, out.ptr, d.ptr, nblocks).unwrap();
        let got = download_bf16(&dev, &out, nblocks * 32);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let ulp = bf16::from_f32(*w).to_f32().abs() / 128.0;
            assert!((g - w).abs() <= ulp + 1e-8, "{q:?} element {i}: {g} vs {w}");
        }
    }
}

fn decode_block(q: ops::Quant, b: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; 32];
    match q {
        ops::Quant::Q8_0 => kiln::backend::cpu::quant::row_q8_0(b, &mut out),
        ops::Quant::Q4_1 => kiln::backend::cpu::quant::row_q4_1(b, &mut out),
    }
    out
}
