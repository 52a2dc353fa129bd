//! Errors of the CUDA backend: each says what failed and what to do.

use super::cublas_lib::BlasLibError;
use super::memory::MemoryError;
use super::nvrtc::NvrtcError;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("kiln was built without CUDA support; rebuild with `cargo build --release --features cuda`")]
    NotBuilt,
    #[error("no CUDA driver found (libcuda.so.1 is not loadable): is an NVIDIA driver installed?")]
    NoDriver,
    #[error("the NVIDIA driver supports CUDA {found_major}.{found_minor}; kiln needs a driver for CUDA {need_major}.{need_minor} or newer")]
    DriverTooOld { found_major: i32, found_minor: i32, need_major: i32, need_minor: i32 },
    #[error("no CUDA device {ordinal}: the driver sees {count} device(s)")]
    NoDevice { ordinal: usize, count: usize },
    #[error("GPU {name} is sm_{major}{minor}; kiln's kernels need sm_80 or newer (bf16)")]
    ArchTooOld { name: String, major: u32, minor: u32 },
    #[error("CUDA driver call {call} failed: {msg}")]
    Driver { call: &'static str, msg: String },
    #[error("cuBLAS call {call} failed: {msg}")]
    Blas { call: &'static str, msg: String },
    #[error(transparent)]
    BlasLib(#[from] BlasLibError),
    #[error(transparent)]
    Nvrtc(#[from] NvrtcError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("model not supported by the CUDA backend: {0}")]
    Unsupported(String),
    #[error("invalid batch for the CUDA runner: {0}")]
    BadBatch(String),
    #[error("kernel function {0} not found in the loaded modules")]
    MissingKernel(String),
    #[error(
        "kiln was built without the emulated device; rebuild with `cargo build --release --features emu` \
         (it runs the CUDA backend on the CPU, slowly: for tests and for changing kernels without a GPU)"
    )]
    EmuNotBuilt,
    #[error("emulated device: {0}")]
    Emulated(String),
    /// A guard byte of the emulated device changed: `op` wrote out of bounds.
    #[error("emulated device: {op} wrote out of bounds, {region} (guard byte {offset} changed)")]
    GuardOverwritten { op: String, region: String, offset: usize },
}

/// The CUDA version kiln's bindings target (cudarc feature cuda-13000); a
/// driver must support at least this one.
pub const MIN_DRIVER: (i32, i32) = (13, 0);

/// Splits the driver's encoded version (1000 * major + 10 * minor).
pub fn decode_driver_version(v: i32) -> (i32, i32) {
    (v / 1000, (v % 1000) / 10)
}

/// Fails when the driver is older than MIN_DRIVER.
pub fn check_driver_version(encoded: i32) -> Result<(), CudaError> {
    let (major, minor) = decode_driver_version(encoded);
    if (major, minor) < MIN_DRIVER {
        return Err(CudaError::DriverTooOld { found_major: major, found_minor: minor, need_major: MIN_DRIVER.0, need_minor: MIN_DRIVER.1 });
    }
    Ok(())
}

/// Fails on GPUs older than Ampere.
pub fn check_arch(name: &str, major: u32, minor: u32) -> Result<(), CudaError> {
    if major < 8 {
        return Err(CudaError::ArchTooOld { name: name.into(), major, minor });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_versions() {
        assert_eq!(decode_driver_version(13000), (13, 0));
        assert_eq!(decode_driver_version(12080), (12, 8));
        assert!(check_driver_version(13000).is_ok());
        assert!(check_driver_version(13010).is_ok());
        let e = check_driver_version(12040).unwrap_err().to_string();
        assert!(e.contains("CUDA 12.4") && e.contains("13.0"), "{e}");
    }

    #[test]
    fn arch_gate() {
        assert!(check_arch("H100", 9, 0).is_ok());
        assert!(check_arch("A10", 8, 6).is_ok());
        assert!(check_arch("T4", 7, 5).unwrap_err().to_string().contains("sm_75"));
    }
}
