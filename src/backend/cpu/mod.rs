//! The CPU backend: kiln's reference implementation of every op, and the
//! engine every test and CI run uses. Parallel ops run on kiln's own
//! persistent worker pool (`pool`).

pub mod attention;
pub mod encoder;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod quant;
pub mod quant_f32;
#[cfg(target_arch = "x86_64")]
pub mod quant_vnni;
#[cfg(target_arch = "x86_64")]
mod quant_x86;
pub mod simd;
pub mod tile;

pub use attention::KvCache;
pub use matmul::{matmul, matmul_with, ActQuant, Weight, WeightData};
