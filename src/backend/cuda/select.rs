//! `--device auto|cuda[:N]|cpu`: parsing, and what `auto` resolves to.

use super::error::CudaError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first GPU when one is usable, else the CPU.
    Auto,
    Cuda(usize),
    Cpu,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<DeviceChoice, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("invalid --device '{s}': expected auto, cpu, cuda or cuda:N")),
        }
    }
}

/// Number of CUDA devices the driver sees, or why none can be used. Never
/// panics: the driver library is probed before any call.
pub fn cuda_device_count() -> Result<usize, CudaError> {
    #[cfg(feature = "cuda")]
    {
        super::device::device_count()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(CudaError::NotBuilt)
    }
}

/// What `choice` means on this machine: Cuda(n) or Cpu, with the reason `auto`
/// fell back to the CPU (for the start-up log). An explicit `cuda` that cannot
/// be honoured is an error.
pub fn resolve(choice: DeviceChoice) -> Result<(DeviceChoice, Option<String>), CudaError> {
    match choice {
        DeviceChoice::Cpu => Ok((DeviceChoice::Cpu, None)),
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
        assert!("tpu".parse::<DeviceChoice>().is_err());
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
