//! The CPU backend (rayon): kiln's reference implementation of every op, and
//! the engine every test and CI run uses.

pub mod attention;
pub mod encoder;
pub mod matmul;
pub mod ops;
pub mod quant;
pub mod quant_f32;
#[cfg(target_arch = "x86_64")]
mod quant_x86;
pub mod simd;

pub use attention::KvCache;
pub use matmul::{matmul, matmul_with, ActQuant, Weight, WeightData};
