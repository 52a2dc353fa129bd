//! Compute backends: `cpu` (rayon, always built; the reference) and `cuda`
//! (behind the `cuda` feature).

pub mod cpu;
