//! The emulated GPU (`--features emu`): kiln's kernels compiled for the host
//! (kernels/host_emu/) and launched by name through
//! `backend::cuda::emu::host_kernels`.
//!
//! - semantics: the emulator itself, with the host-only self-test kernels
//!   (kernels/host_emu/emu_selftest.cu): barriers, shuffles, scans, dynamic
//!   shared memory, atomics across blocks, and its aborts;
//! - twins:     the C++ twins of the kernels' inline PTX against IEEE
//!   rounding (the half crate), and the compile error for PTX without one;
//! - kernels:   kiln kernels against independent references (the CPU
//!   backend's RMSNorm bit for bit, paged decode attention against plain f32
//!   attention), and every listed kernel has an entry point.
//!
//! The whole per-kernel suite against the CPU backend is tests/cuda_gpu,
//! which also runs on the emulated device.

#[cfg(feature = "emu")]
#[path = "emu_kernels"]
mod emu {
    pub mod support;

    mod kernels;
    mod semantics;
    mod twins;
}

#[cfg(not(feature = "emu"))]
#[test]
fn skipped_without_the_emu_feature() {
    println!("SKIPPED: the emulated-GPU tests need `--features emu`");
}
