//! `--device auto|cuda[:N]|cpu|emu`: parsing, what `auto` resolves to, and
//! opening the device a choice names.

use super::error::CudaError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first GPU when one is usable, else the CPU.
    Auto,
    Cuda(usize),
    Cpu,
    /// The CUDA runner on the emulated device (feature `emu`): slow, for
    /// tests and for changing kernels without a GPU. Never chosen by `auto`.
    Emu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<DeviceChoice, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "emu" => Ok(DeviceChoice::Emu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("invalid --device '{s}': expected auto, cpu, cuda, cuda:N or emu")),
        }
    }
}

/// Number of CUDA devices the driver sees, or why none can be used. Never
/// panics: the driver library is probed before any call.
pub fn cuda_device_count() -> Result<usize, CudaError> {
    #[cfg(feature = "cuda")]
    {
        super::gpu::device_count()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(CudaError::NotBuilt)
    }
}

/// What `choice` means on this machine: Cuda(n), Emu or Cpu, with the reason
/// `auto` fell back to the CPU (for the start-up log). An explicit `cuda` that
/// cannot be honoured is an error, and so is `emu` in a build without it.
pub fn resolve(choice: DeviceChoice) -> Result<(DeviceChoice, Option<String>), CudaError> {
    match choice {
        DeviceChoice::Cpu => Ok((DeviceChoice::Cpu, None)),
        DeviceChoice::Emu if cfg!(feature = "emu") => Ok((DeviceChoice::Emu, None)),
        DeviceChoice::Emu => Err(CudaError::EmuNotBuilt),
        DeviceChoice::Cuda(n) => {
            let count = cuda_device_count()?;
            if n >= count {
                return Err(CudaError::NoDevice { ordinal: n, count });
            }
            Ok((DeviceChoice::Cuda(n), None))
        }
        DeviceChoice::Auto => match cuda_device_count() {
            Ok(c) if c > 0 => Ok((DeviceChoice::Cuda(0), None)),
            Ok(_) => Ok((DeviceChoice::Cpu, Some("no CUDA device found".into()))),
            Err(e) => Ok((DeviceChoice::Cpu, Some(e.to_string()))),
        },
    }
}

/// Opens the device a resolved choice names: GPU n or the emulated device.
#[cfg(any(feature = "cuda", feature = "emu"))]
pub fn open(choice: DeviceChoice) -> Result<super::device::Device, CudaError> {
    match choice {
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(n) => super::device::Device::open(n),
        #[cfg(feature = "emu")]
        DeviceChoice::Emu => Ok(super::device::Device::emulated()),
        #[cfg(not(feature = "emu"))]
        DeviceChoice::Emu => Err(CudaError::EmuNotBuilt),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => Err(CudaError::NotBuilt),
        other => Err(CudaError::Unsupported(format!("{other:?} is not a CUDA device"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_choices() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("cuda:x".parse::<DeviceChoice>().unwrap_err().contains("cuda:N"));
        assert_eq!("emu".parse(), Ok(DeviceChoice::Emu));
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn emu_needs_its_feature() {
        match resolve(DeviceChoice::Emu) {
            Ok(d) => assert!(cfg!(feature = "emu") && d == (DeviceChoice::Emu, None)),
            Err(e) => {
                assert!(!cfg!(feature = "emu"));
                assert!(e.to_string().contains("--features emu"), "{e}");
            }
        }
    }

    #[test]
    fn auto_always_resolves() {
        // On a machine without a GPU (CI) auto falls back to the CPU with a reason;
        // with one it picks cuda:0. Either way it never errors.
        let (d, why) = resolve(DeviceChoice::Auto).unwrap();
        match d {
            DeviceChoice::Cpu => assert!(why.is_some()),
            DeviceChoice::Cuda(0) => assert!(why.is_none()),
            other => panic!("{other:?}"),
        }
        assert_eq!(resolve(DeviceChoice::Cpu).unwrap(), (DeviceChoice::Cpu, None));
    }
}
