//! The host twins of the kernels' inline PTX (kiln_host_emu.h), and the
//! compile error that inline PTX without a twin must give.
use super::support::*;
use half::{bf16, f16};
use rand::Rng;

#[test]
fn ptx_conversion_twins_match_ieee_rounding() {
    let mut r = rng("conversions");
    let n = 1 << 16;
    // Every f16 bit pattern; f32 edge cases (ties both ways, the largest
    // finite values, infinities, subnormals, NaNs), then random bit patterns.
    let h: Vec<u16> = (0..n as u32).map(|b| b as u16).collect();
    let mut x: Vec<f32> = [0x3f808000u32, 0x3f818000, 0x3f80_8001, 0x7f7f_ffff, 0x7f7f_8000, 0xff7f_ffff, 0x7f80_0000, 0xff80_0000, 0x0000_8000, 0x0000_0001, 0x8001_8000, 0x7fc0_0000, 0xffc0_1234, 0x7f80_0001, 0, 0x8000_0000]
        .map(f32::from_bits)
        .to_vec();
    x.extend((x.len()..n).map(|_| f32::from_bits(r.gen())));
    let (mut bf, mut packed, mut wide) = (Mem::filled(n * 2, 0xff), Mem::filled(n * 2, 0xff), Mem::filled(n * 4, 0xff));
    let (mut dx, mut dh) = (Mem::from(&x), Mem::from(&h));
    run("emu_selftest_conversions", dims((64, 1, 1), 256, 0), &[bf.addr(), packed.addr(), wide.addr(), dx.addr(), dh.addr(), n as u64]).unwrap();
    let (bf, packed, wide) = (bf.read::<u16>(), packed.read::<u32>(), wide.read::<u32>());
    for (i, &v) in x.iter().enumerate() {
        // Round to nearest even as half does; a NaN becomes the canonical 0x7fff (PTX).
        let want = if v.is_nan() { 0x7fff } else { bf16::from_f32(v).to_bits() };
        assert_eq!(bf[i], want, "cvt.rn.bf16.f32 of {:#010x}", v.to_bits());
    }
    for i in (0..n).step_by(2) {
        assert_eq!(packed[i / 2], bf[i] as u32 | (bf[i + 1] as u32) << 16, "cvt.rn.bf16x2.f32, pair {i}");
    }
    for (i, &b) in h.iter().enumerate() {
        assert_eq!(wide[i], f16::from_bits(b).to_f32().to_bits(), "cvt.f32.f16 of {b:#06x}");
    }
}

/// Compiles `body` (a kernel file's text) for the host, as build/host_emu.rs does.
fn compile_for_host(body: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("k.cu");
    let kernels = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels");
    std::fs::write(&src, format!("#include \"{kernels}/common.cuh\"\n{body}")).unwrap();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    std::process::Command::new(cxx)
        .args(["-std=c++17", "-fsyntax-only", "-DKILN_HOST_EMU", "-include"])
        .arg(format!("{kernels}/host_emu/kiln_host_emu.h"))
        .args(["-x", "c++"])
        .arg(&src)
        .output()
        .expect("run the C++ compiler ($CXX or c++)")
}

#[test]
fn inline_ptx_without_a_twin_does_not_compile() {
    let kernel = |stmt: &str| format!("extern \"C\" __global__ void k(unsigned* o) {{ unsigned r = 0; {stmt} o[threadIdx.x] = r; }}\n");
    let plain = compile_for_host(&kernel(""));
    assert!(plain.status.success(), "the kernel without PTX must compile:\n{}", String::from_utf8_lossy(&plain.stderr));
    for stmt in ["asm(\"mov.u32 %0, %laneid;\" : \"=r\"(r));", "asm volatile(\"mov.u32 %0, %laneid;\" : \"=r\"(r));"] {
        let o = compile_for_host(&kernel(stmt));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{stmt} compiled for the host");
        assert!(err.contains("inline_PTX_needs_a_host_twin_under_ifdef_KILN_HOST_EMU"), "{stmt}: {err}");
    }
}
