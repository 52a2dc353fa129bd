//! The GPU test suite of the CUDA backend, one binary so that the device
//! machine receives a single file (scripts/gpu-check.sh). Every test opens
//! the GPU or prints why it skips; with KILN_REQUIRE_GPU=1 a missing GPU
//! fails instead. Built only with `--features cuda`.
//!
//! - kernels:   elementwise / row kernels vs the CPU backend
//! - attention: rotary + cache write, decode and prefill attention vs the CPU
//! - sampling:  GPU sampling vs the CPU sampler's semantics
//! - model:     whole models: fixtures, random-weight shapes, transformers
//! - bench:     timings against the memory floor (env-gated)

#[cfg(feature = "cuda")]
#[path = "cuda_gpu"]
mod gpu {
    #[allow(dead_code)]
    pub mod support;

    mod attention;
    mod bench;
    mod kernels;
    mod model;
    mod sampling;
}

#[cfg(not(feature = "cuda"))]
#[test]
fn skipped_without_the_cuda_feature() {
    println!("SKIPPED: the GPU tests need `--features cuda` (and a GPU); see docs/gpu.md");
}
