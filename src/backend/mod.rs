//! Compute backends: `cpu` (its own thread pool, always built; the reference) and `cuda`
//! (behind the `cuda` feature).

pub mod cpu;
/// CUDA backend: host-side planning (always built, unit-tested without a GPU)
/// and, with the `cuda` feature, the driver-facing runner.
pub mod cuda;
