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
//! Built with `--features cuda` (cudarc with dynamic loading, so building
//! still needs no toolkit): the device, cuBLAS GEMMs, kernel launchers, the
//! forward pass, CUDA graphs and the `ModelRunner`.
//!
//! Built with `--features emu`: `emu`, the kernels compiled for the host and
//! run on an emulated GPU (no cudarc).

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

#[cfg(feature = "cuda")]
pub mod device;
#[cfg(feature = "emu")]
pub mod emu;
#[cfg(feature = "cuda")]
pub mod embedded;
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
