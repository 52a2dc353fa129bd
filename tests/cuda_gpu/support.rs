//! Helpers shared by the GPU tests (tests/cuda_*.rs): open the GPU or say why
//! not, move bf16 / f32 / i32 arrays, fresh random inputs, error norms.
//!
//! Every test draws fresh random inputs (the seed is printed, and
//! KILN_TEST_SEED replays one), poisons outputs with 0xFF bytes (a NaN in
//! bf16 and f32) before the kernel runs, and checks every element was written.


use half::bf16;
use kiln::backend::cuda::device::{Device, DeviceMem};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The repository root: where this binary was built, or (on the device
/// machine, which runs a copy elsewhere) the working directory.
pub fn repo_root() -> std::path::PathBuf {
    let built = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if built.join("tests/fixtures").is_dir() {
        built
    } else {
        std::env::current_dir().unwrap()
    }
}

/// GPU 0, or why it cannot be used.
fn open_gpu() -> Result<Device, String> {
    #[cfg(feature = "cuda")]
    {
        match kiln::backend::cuda::select::cuda_device_count() {
            Ok(n) if n > 0 => Device::open(0).map_err(|e| e.to_string()),
            Ok(_) => Err("no CUDA device".to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("built without the `cuda` feature".to_string())
    }
}

/// Whether KILN_REQUIRE_GPU=1 (set by scripts/gpu-check.sh on the device machine).
fn gpu_required() -> bool {
    std::env::var("KILN_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The device a test runs on: the GPU when one is usable; else, in a build
/// with the `emu` feature, the emulated device; else None after printing
/// why the test skips. With KILN_REQUIRE_GPU=1 anything but a GPU fails.
pub fn device_or_skip(test: &str) -> Option<Device> {
    let err = match open_gpu() {
        Ok(d) => return Some(d),
        Err(e) => e,
    };
    if gpu_required() {
        panic!("{test}: KILN_REQUIRE_GPU=1 but {err}");
    }
    #[cfg(feature = "emu")]
    {
        println!("{test}: on the emulated device ({err})");
        Some(Device::emulated())
    }
    #[cfg(not(feature = "emu"))]
    {
        println!("SKIPPED {test}: {err}");
        None
    }
}

/// A real GPU only (timings): None after printing why the test skips.
pub fn gpu_or_skip(test: &str) -> Option<Device> {
    match open_gpu() {
        Ok(d) => Some(d),
        Err(e) if gpu_required() => panic!("{test}: KILN_REQUIRE_GPU=1 but {e}"),
        Err(e) => {
            println!("SKIPPED {test}: timings need a real GPU ({e}); the emulated device is not timed");
            None
        }
    }
}

/// Whether `dev` is the emulated device (tests then use smaller shapes).
pub fn emulated(dev: &Device) -> bool {
    dev.is_emulated()
}

pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("KILN_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("{test}: seed {seed} (KILN_TEST_SEED={seed} replays it)");
    StdRng::seed_from_u64(seed)
}

/// Values drawn from N(0, sigma) (Box-Muller), rounded to bf16.
pub fn randn_bf16(rng: &mut StdRng, n: usize, sigma: f32) -> Vec<bf16> {
    (0..n).map(|_| bf16::from_f32(randn(rng) * sigma)).collect()
}

pub fn randn(rng: &mut StdRng) -> f32 {
    let (u1, u2): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

pub fn to_f32(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

pub fn upload<T: bytemuck::Pod>(dev: &Device, v: &[T]) -> DeviceMem {
    let m = dev.alloc(std::mem::size_of_val(v).max(16)).unwrap();
    dev.upload(m.ptr, bytemuck::cast_slice(v)).unwrap();
    dev.synchronize().unwrap();
    m
}

/// An output buffer of `n` elements of T, poisoned with 0xFF bytes.
pub fn poisoned<T: bytemuck::Pod>(dev: &Device, n: usize) -> DeviceMem {
    let bytes = (n * std::mem::size_of::<T>()).max(16);
    let m = dev.alloc(bytes).unwrap();
    dev.memset(m.ptr, 0xFF, bytes).unwrap();
    m
}

pub fn download<T: bytemuck::Pod + Default + Clone>(dev: &Device, m: &DeviceMem, n: usize) -> Vec<T> {
    let mut v = vec![T::default(); n];
    dev.synchronize().unwrap();
    dev.download(bytemuck::cast_slice_mut(&mut v), m.ptr).unwrap();
    dev.synchronize().unwrap();
    v
}

pub fn download_bf16(dev: &Device, m: &DeviceMem, n: usize) -> Vec<f32> {
    let raw: Vec<u16> = download(dev, m, n);
    raw.into_iter().map(|b| bf16::from_bits(b).to_f32()).collect()
}

/// ||got - want|| / ||want||; panics on any non-finite value in `got`
/// (an unwritten, poisoned element or a NaN the kernel made).
pub fn rel_err(got: &[f32], want: &[f32], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what}: element {i} is {} (unwritten or NaN)", got[i]);
    }
    let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

pub fn assert_rel(got: &[f32], want: &[f32], tol: f64, what: &str) {
    let e = rel_err(got, want, what);
    println!("{what}: relative error {e:.2e} (tolerance {tol:.0e})");
    assert!(e < tol, "{what}: relative error {e:.3e} >= {tol:.0e}");
}
