//! Host buffers for emulated launches, and seeded random inputs.
use kiln::backend::cuda::emu::host_kernels::{launch, EmuError};
use kiln::backend::cuda::launch::Dims;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Host memory a kernel reads or writes: 16-byte aligned (as device
/// allocations are; kernels move 16-byte vectors), length in bytes rounded
/// up to 16.
pub struct Mem {
    words: Vec<u128>,
    bytes: usize,
}

impl Mem {
    pub fn from<T: bytemuck::Pod>(v: &[T]) -> Mem {
        let bytes = std::mem::size_of_val(v);
        let mut m = Mem::filled(bytes, 0);
        bytemuck::cast_slice_mut::<u128, u8>(&mut m.words)[..bytes].copy_from_slice(bytemuck::cast_slice(v));
        m
    }

    /// `bytes` bytes, each `byte` (0xff: NaN as f32/bf16, -1 as integers).
    pub fn filled(bytes: usize, byte: u8) -> Mem {
        let mut words = vec![0u128; bytes.div_ceil(16).max(1)];
        bytemuck::cast_slice_mut::<u128, u8>(&mut words).fill(byte);
        Mem { words, bytes }
    }

    /// The address a kernel argument slot carries.
    pub fn addr(&mut self) -> u64 {
        self.words.as_mut_ptr() as u64
    }

    pub fn read<T: bytemuck::Pod>(&self) -> Vec<T> {
        bytemuck::cast_slice::<u128, u8>(&self.words)[..self.bytes]
            .chunks_exact(std::mem::size_of::<T>())
            .map(bytemuck::pod_read_unaligned)
            .collect()
    }
}

/// Launches `name`; every pointer slot comes from a live `Mem` sized for the launch.
pub fn run(name: &str, dims: Dims, args: &[u64]) -> Result<(), EmuError> {
    // SAFETY: callers pass addresses of `Mem` buffers that outlive the call
    // and hold what the kernel's contract (its .cu comments) says it touches.
    unsafe { launch(name, dims, args) }
}

pub fn dims(grid: (u32, u32, u32), block: u32, smem: u32) -> Dims {
    Dims { grid, block: (block, 1, 1), smem }
}

/// A seeded generator; KILN_TEST_SEED replays a run.
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("KILN_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("{test}: seed {seed} (KILN_TEST_SEED={seed} replays it)");
    StdRng::seed_from_u64(seed)
}

/// Standard normal (Box-Muller).
pub fn randn(rng: &mut StdRng) -> f32 {
    let (u1, u2): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}
