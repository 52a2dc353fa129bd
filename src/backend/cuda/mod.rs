//! The CUDA backend.
//!
//! Always built (no GPU, driver or toolkit needed; unit-tested in CI):
//! - `kernels`: the .cu sources embedded in the binary;
//! - `nvrtc`: finding NVRTC and compiling a kernel file for one architecture;
//! - `cublas_lib`: finding cuBLAS 13 and checking the version cudarc binds;
//! - `module_cache`: compiled modules on disk, keyed by source, arch, NVRTC;
//! - `embedded`, `modules`: cubins/fatbins embedded at build time, and the
//!   image of every module for one GPU (embedded first, NVRTC in parallel);
//! - `launch`: grid / block / shared memory of every kernel;
//! - `attention_plan`: decode vs prefill sequences, split-K, prefill tiles;
//! - `graph_buckets`: batch sizes captured as CUDA graphs;
//! - `memory`: KV pool sizing from --gpu-memory-utilization, workspace layout;
//! - `capacity`: what the runner allocates for its limits (rows, buckets);
//! - `sampling_plan`: sampling requests packed for the GPU, Philox twin.
//!
//! Built with `--features cuda` or `--features emu`: the device interface
//! (`device`: alloc, copy, memset, launch by name, GEMM, sync, graphs), kernel
//! launchers, weights upload, the forward pass and the `ModelRunner`, and
//! the encoder runner of embedding models (`encoder`). Behind
//! `device` sit `gpu` + `gemm` (feature `cuda`: cudarc with dynamic loading,
//! so building still needs no toolkit; cuBLAS) and `emu` (feature `emu`: the
//! emulated device, host memory with guard bytes and the kernels compiled
//! for the host; for tests and kernel work without a GPU).

pub mod agreement;
pub mod attention_plan;
pub mod capacity;
pub mod cublas_lib;
pub mod embedded;
pub mod error;
pub mod graph_buckets;
pub mod kernels;
pub mod launch;
pub mod memory;
pub mod module_cache;
pub mod modules;
pub mod nvrtc;
pub mod rounding;
pub mod sampling_plan;
pub mod select;
pub mod step_inputs;

#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod device;
#[cfg(feature = "emu")]
pub mod emu;
#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod encoder;
#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod forward;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
pub mod gpu;
#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod ops;
#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod prompt_logprobs;
#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod runner;
#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod weights;

pub use error::CudaError;
pub use select::DeviceChoice;

#[cfg(test)]
pub(crate) mod tests_support;

/// The message of a caught panic (cudarc's lazy library loaders panic).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "panic".into())
}
