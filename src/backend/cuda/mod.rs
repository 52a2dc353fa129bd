//! The CUDA backend.
//!
//! Always built (no GPU, driver or toolkit needed; unit-tested in CI):
//! - `kernels`: the .cu sources embedded in the binary;
//! - `nvrtc`: finding NVRTC and compiling a kernel file for one architecture;
//! - `module_cache`: compiled modules on disk, keyed by source, arch, NVRTC;
//! - `launch`: grid / block / shared memory of every kernel;
//! - `attention_plan`: decode vs prefill sequences, split-K, prefill tiles;
//! - `graph_buckets`: batch sizes captured as CUDA graphs;
//! - `memory`: KV pool sizing from --gpu-memory-utilization, workspace layout;
//! - `sampling_plan`: sampling requests packed for the GPU, Philox twin.
//!
//! Built with `--features cuda` or `--features emu`: the device interface
//! (`device`: alloc, copy, memset, launch by name, GEMM, sync, graphs), kernel
//! launchers, weights upload, the forward pass and the `ModelRunner`. Behind
//! `device` sit `gpu` + `gemm` (feature `cuda`: cudarc with dynamic loading,
//! so building still needs no toolkit; cuBLAS) and `emu` (feature `emu`: the
//! emulated device, host memory with guard bytes and the kernels compiled
//! for the host; for tests and kernel work without a GPU).

pub mod attention_plan;
pub mod error;
pub mod graph_buckets;
pub mod kernels;
pub mod launch;
pub mod memory;
pub mod module_cache;
pub mod nvrtc;
pub mod sampling_plan;
pub mod select;
pub mod step_inputs;

#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod device;
#[cfg(feature = "cuda")]
pub mod embedded;
#[cfg(feature = "emu")]
pub mod emu;
#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod forward;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
pub mod gpu;
#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod ops;
#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod runner;
#[cfg(any(feature = "cuda", feature = "emu"))]
pub mod weights;

pub use error::CudaError;
pub use select::DeviceChoice;

#[cfg(test)]
pub(crate) mod tests_support;
