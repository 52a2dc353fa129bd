//! The compiled image of every kernel module for one GPU architecture, in
//! order of preference (embedded::source): the cubin embedded for exactly
//! that architecture, the embedded nvcc fatbin, else NVRTC through the
//! on-disk cache (module_cache). Files NVRTC has to compile are compiled on
//! parallel threads, so a cold start on an architecture without embedded
//! code takes about the time of the slowest file, not of all of them.

use super::embedded::{self, Source};
use super::error::CudaError;
use super::kernels::{KernelFile, FILES};
use super::module_cache::{self, Origin};
use super::nvrtc::{self, Arch};
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Where a module's image came from (for the start-up log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleOrigin {
    EmbeddedCubin,
    EmbeddedFatbin,
    Cache,
    Compiled,
}

/// The image of one kernel file for `arch`.
pub fn image(file: &KernelFile, arch: Arch) -> Result<(Cow<'static, [u8]>, ModuleOrigin), CudaError> {
    match embedded::source(file.name, arch) {
        Source::Cubin(c) => Ok((Cow::Borrowed(c), ModuleOrigin::EmbeddedCubin)),
        Source::Fatbin(f) => Ok((Cow::Borrowed(f), ModuleOrigin::EmbeddedFatbin)),
        Source::Nvrtc => {
            let version = nvrtc::version()?;
            let opts = nvrtc::options(arch, false);
            let key = module_cache::cache_key(&file.expanded(), arch, version, &opts);
            let path = module_cache::default_dir().map(|d| module_cache::cache_file(&d, file.name, arch, &key));
            let (image, origin) = module_cache::load_or_compile(path.as_deref(), || nvrtc::compile(file, arch, false).map(|c| c.cubin))?;
            if origin == Origin::Compiled {
                tracing::info!("compiled kernels/{}.cu for {arch} with NVRTC {}.{}", file.name, version.0, version.1);
            }
            Ok((Cow::Owned(image), if origin == Origin::Cache { ModuleOrigin::Cache } else { ModuleOrigin::Compiled }))
        }
    }
}

/// The images of every kernel file (kernels::FILES order) for `arch`.
pub fn images(arch: Arch) -> Result<Vec<(&'static KernelFile, Cow<'static, [u8]>, ModuleOrigin)>, CudaError> {
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<(Cow<'static, [u8]>, ModuleOrigin), CudaError>>>> = FILES.iter().map(|_| Mutex::new(None)).collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(FILES.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(f) = FILES.get(i) else { break };
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(image(f, arch));
            });
        }
    });
    let mut out = Vec::with_capacity(FILES.len());
    for (f, slot) in FILES.iter().zip(slots) {
        let (img, origin) = slot.into_inner().unwrap_or_else(|p| p.into_inner()).expect("every file was taken by a thread")?;
        out.push((f, img, origin));
    }
    let embedded = out.iter().filter(|(_, _, o)| matches!(o, ModuleOrigin::EmbeddedCubin | ModuleOrigin::EmbeddedFatbin)).count();
    tracing::info!("kernel modules for {arch}: {embedded} of {} embedded at build time", out.len());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::nvrtc::CHECKED_ARCHS;

    /// On an architecture with embedded cubins every module comes from the
    /// binary (no NVRTC, no cache), through the parallel path, in FILES order.
    #[test]
    fn embedded_architectures_start_without_compiling() {
        if embedded::cubins().is_empty() {
            println!("SKIPPED: no embedded cubins (built without --features cuda or without NVRTC)");
            return;
        }
        for arch in CHECKED_ARCHS {
            let all = images(arch).unwrap();
            assert_eq!(all.len(), FILES.len());
            for ((f, img, origin), want) in all.iter().zip(FILES) {
                assert_eq!(f.name, want.name);
                assert_eq!(*origin, ModuleOrigin::EmbeddedCubin, "{} {arch}", f.name);
                assert_eq!(&img[..], embedded::cubin(f.name, arch).unwrap());
            }
        }
    }
}
