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
//! Built with `--features cuda` (cudarc with dynamic loading, so building
//! still needs no toolkit): the device, cuBLAS GEMMs, kernel launchers, the
//! forward pass, CUDA graphs and the `ModelRunner`.

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

#[cfg(feature = "cuda")]
pub mod device;
#[cfg(feature = "cuda")]
pub mod forward;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
pub mod ops;
#[cfg(feature = "cuda")]
pub mod runner;
#[cfg(feature = "cuda")]
pub mod weights;

pub use error::CudaError;
pub use select::DeviceChoice;

#[cfg(test)]
pub(crate) mod tests_support;

/// The message of a caught panic (cudarc's lazy library loaders panic).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "panic".into())
}
