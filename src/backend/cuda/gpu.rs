//! The real GPU behind `device::Device` (feature `cuda`): context, the one
//! stream, device memory, kernel modules, raw launches, cuBLAS (gemm.rs) and
//! CUDA graphs. Only device.rs calls into this file.
//!
//! Device memory is handled as raw addresses (`u64`) owned by `DeviceMem`;
//! kernels take them as pointer arguments. cudarc's per-slice event tracking
//! is switched off: kiln uses a single stream, so stream order is the only
//! synchronisation needed, and CUDA graph capture must not see stray events.

use super::device::{Arg, DeviceMem, Out, Owner, PinnedMem, PinnedOwner};
use super::error::{check_arch, check_driver_version, CudaError};
use super::gemm::Gemm;
use super::kernels::KernelFile;
use super::launch::Dims;
use super::nvrtc::Arch;
use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaGraph, CudaStream};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

pub(crate) fn drv(call: &'static str) -> impl Fn(result::DriverError) -> CudaError {
    move |e| CudaError::Driver { call, msg: format!("{e:?}") }
}

/// Devices the driver sees; probes libcuda first so a machine without a
/// driver gets an error, not a panic.
pub fn device_count() -> Result<usize, CudaError> {
    // SAFETY: only opens and closes the library.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    result::init().map_err(drv("cuInit"))?;
    Ok(result::device::get_count().map_err(drv("cuDeviceGetCount"))? as usize)
}

/// Frees a device allocation (DeviceMem::drop).
pub(crate) fn free(ctx: &CudaContext, ptr: u64) {
    if ptr != 0 && ctx.bind_to_thread().is_ok() {
        // SAFETY: allocated by Gpu::alloc, freed once, its context current.
        let _ = unsafe { result::free_sync(ptr) };
    }
}

/// Frees page-locked host memory (PinnedMem::drop).
pub(crate) fn free_pinned(ctx: &CudaContext, ptr: *mut u8) {
    if ctx.bind_to_thread().is_ok() {
        // SAFETY: allocated by cuMemHostAlloc, freed once.
        let _ = unsafe { result::free_host(ptr.cast()) };
    }
}

/// One GPU: its context and stream (public for timing with events in the
/// GPU benchmarks), architecture, kernels and cuBLAS handle.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub arch: Arch,
    pub num_sms: usize,
    pub name: String,
    funcs: HashMap<&'static str, CudaFunction>,
    gemm: Option<Gemm>,
}

impl Gpu {
    /// Opens GPU `ordinal`, checks driver and architecture, loads every
    /// kernel module (modules::images: the cubin embedded for this
    /// architecture, else the nvcc fatbin, else NVRTC through the cache) and
    /// creates the cuBLAS handle.
    pub fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let mut v = 0;
        // SAFETY: plain out-parameter.
        unsafe { sys::cuDriverGetVersion(&mut v) }.result().map_err(drv("cuDriverGetVersion"))?;
        check_driver_version(v)?;
        let ctx = CudaContext::new(ordinal).map_err(drv("cuCtxCreate"))?;
        // SAFETY: kiln uses one stream; see the module comment.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability().map_err(drv("cuDeviceGetAttribute"))?;
        let name = ctx.name().map_err(drv("cuDeviceGetName"))?;
        check_arch(&name, major as u32, minor as u32)?;
        let num_sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("cuDeviceGetAttribute"))? as usize;
        let stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        let mut gpu = Gpu { ctx, stream, arch: Arch::new(major as u32, minor as u32), num_sms, name, funcs: HashMap::new(), gemm: None };
        for (f, image, _) in super::modules::images(gpu.arch)? {
            gpu.load_file(f, image.into_owned())?;
        }
        gpu.gemm = Some(Gemm::new(&gpu)?);
        tracing::info!("CUDA device {ordinal}: {} ({}, {} SMs, driver {}.{})", gpu.name, gpu.arch, num_sms, v / 1000, (v % 1000) / 10);
        Ok(gpu)
    }

    fn load_file(&mut self, file: &'static KernelFile, image: Vec<u8>) -> Result<(), CudaError> {
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(image))
            .map_err(drv("cuModuleLoadData"))?;
        for &name in file.functions {
            let f = module.load_function(name).map_err(drv("cuModuleGetFunction"))?;
            if let Some(bytes) = super::launch::smem_opt_in(name) {
                f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
                    .map_err(drv("cuFuncSetAttribute"))?;
            }
            self.funcs.insert(name, f);
        }
        Ok(())
    }

    fn func(&self, name: &str) -> Result<&CudaFunction, CudaError> {
        self.funcs.get(name).ok_or_else(|| CudaError::MissingKernel(name.into()))
    }

    /// Launches kernel `name` on the stream.
    pub fn launch(&self, name: &str, dims: Dims, args: &[Arg]) -> Result<(), CudaError> {
        let f = self.func(name)?;
        let mut slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        // Each slot is 8 bytes, little-endian: a 4-byte argument is read from its low half.
        let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| (s as *mut u64).cast()).collect();
        // SAFETY: the function handle lives as long as self; `params` points at
        // `slots`, alive until the call returns (the driver copies arguments).
        unsafe { result::launch_kernel(f.cu_function(), dims.grid, dims.block, dims.smem, self.stream.cu_stream(), &mut params) }
            .map_err(|e| CudaError::Driver { call: "cuLaunchKernel", msg: format!("{name}: {e:?}") })
    }

    /// y[m, n] = x[m, k] · w[n, k]ᵀ on cuBLAS (see gemm.rs).
    pub fn linear(&self, y: u64, out: Out, x: u64, w: u64, mnk: [usize; 3]) -> Result<(), CudaError> {
        self.gemm.as_ref().expect("cuBLAS handle made in open()").linear(y, out, x, w, mnk)
    }

    /// y[m, n] = x[m, k] · w[n, k]ᵀ in f32 on cuBLAS (see gemm.rs).
    pub fn linear_f32(&self, y: u64, x: u64, w: u64, mnk: [usize; 3]) -> Result<(), CudaError> {
        self.gemm.as_ref().expect("cuBLAS handle made in open()").linear_f32(y, x, w, mnk)
    }

    pub fn alloc(&self, bytes: usize) -> Result<DeviceMem, CudaError> {
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        if bytes == 0 {
            return Ok(DeviceMem::new(0, 0, Owner::Gpu(self.ctx.clone())));
        }
        // SAFETY: plain allocation; freed by DeviceMem::drop.
        let ptr = unsafe { result::malloc_sync(bytes) }.map_err(|e| {
            let (free, total) = self.mem_info().unwrap_or((0, 0));
            CudaError::Driver {
                call: "cuMemAlloc",
                msg: format!("{e:?} allocating {} ({} free of {})", super::memory::gib(bytes as u64), super::memory::gib(free as u64), super::memory::gib(total as u64)),
            }
        })?;
        Ok(DeviceMem::new(ptr, bytes, Owner::Gpu(self.ctx.clone())))
    }

    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedMem, CudaError> {
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        // SAFETY: freed by PinnedMem::drop; zeroed by PinnedMem::new before any read.
        let ptr = unsafe { result::malloc_host(bytes.max(1), 0) }.map_err(drv("cuMemHostAlloc"))? as *mut u8;
        // SAFETY: `bytes` bytes were just allocated at `ptr`.
        Ok(unsafe { PinnedMem::new(ptr, bytes, PinnedOwner::Gpu(self.ctx.clone())) })
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        self.ctx.mem_get_info().map_err(drv("cuMemGetInfo"))
    }

    pub fn upload(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: `dst` has room for src.len() bytes (callers slice by layout).
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(drv("cuMemcpyHtoDAsync"))
    }

    pub fn download(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: `src` holds dst.len() readable bytes.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }.map_err(drv("cuMemcpyDtoHAsync"))
    }

    pub fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<(), CudaError> {
        // SAFETY: `dst` holds `bytes` writable bytes.
        unsafe { result::memset_d8_async(dst, byte, bytes, self.stream.cu_stream()) }.map_err(drv("cuMemsetD8Async"))
    }

    pub fn bind(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))
    }

    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
    }

    pub fn begin_capture(&self) -> Result<(), CudaError> {
        self.stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(drv("cuStreamBeginCapture"))
    }

    pub fn end_capture(&self) -> Result<CudaGraph, CudaError> {
        let graph = self.stream.end_capture(sys::CUgraphInstantiate_flags(0)).map_err(drv("cuStreamEndCapture"))?;
        graph.ok_or_else(|| CudaError::Driver { call: "cuStreamEndCapture", msg: "empty graph".into() })
    }
}
