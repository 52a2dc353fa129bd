//! The GPU test suite of the CUDA backend, one binary so that the device
//! machine receives a single file (scripts/gpu-check.sh). Every test opens
//! the GPU; without one it runs on the emulated device when built with
//! `--features emu` (what CI does: kernels compiled for the host, guard
//! bytes around every buffer), else it prints why it skips. With
//! KILN_REQUIRE_GPU=1 a missing GPU fails instead. Built with `--features
//! cuda` and/or `--features emu`.
//!
//! - kernels:   elementwise / row kernels vs the CPU backend
//! - attention: rotary + cache write, decode and prefill attention vs the CPU
//! - sampling:  GPU sampling vs the CPU sampler's semantics
//! - model:     whole models: fixtures, random-weight shapes, transformers
//! - runner:    quantized GGUF fixtures, every --max-num-seqs 1..40, long contexts
//! - structured: constrained decoding (a JSON schema) through the engine, vs the CPU
//! - prompt_logprobs: echo with logprobs through the engine vs transformers' logits
//! - encoder:   embedding models: the f32 encoder's kernels, random BERTs and
//!              all-MiniLM-L6-v2 vs the CPU encoder and sentence-transformers,
//!              the Qwen3 embedding fixture (decoder runner) vs transformers
//! - bench:     timings against the memory floor (env-gated; a real GPU only)

#[cfg(any(feature = "cuda", feature = "emu"))]
#[path = "cuda_gpu"]
mod gpu {
    #[allow(dead_code)]
    pub mod support;

    mod attention;
    #[cfg(feature = "cuda")]
    mod bench;
    mod encoder;
    mod kernels;
    mod model;
    mod prompt_logprobs;
    mod runner;
    mod sampling;
    mod structured;
}

#[cfg(not(any(feature = "cuda", feature = "emu")))]
#[test]
fn skipped_without_the_cuda_feature() {
    println!("SKIPPED: the GPU tests need `--features cuda` (and a GPU) or `--features emu`; see docs/gpu.md");
}
