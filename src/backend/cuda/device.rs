//! The one narrow interface between the CUDA backend and a device: allocate,
//! copy host<->device, memset, launch a kernel by name with its argument list
//! and grid, GEMM, synchronise, capture and replay a graph. Everything above
//! (ops, forward pass, weights, runner) talks only to `Device`.
//!
//! Two implementations, chosen when the device is opened:
//! - `gpu.rs` (feature `cuda`): cudarc + cuBLAS on a real GPU;
//! - `emu/` (feature `emu`): the emulated device: host memory (device
//!   addresses are host addresses), the kernels compiled for the host, a
//!   reference GEMM, graphs that record their launch list, and guard bytes
//!   around every allocation and every named workspace region, checked after
//!   each launch and GEMM (slow; for tests and for changing kernels without
//!   a GPU).
//!
//! Device memory is handled as raw addresses (`u64`) owned by `DeviceMem`;
//! kernels take them as pointer arguments.

use super::error::CudaError;
pub use super::launch::Dims;

/// A kernel argument: device address or scalar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    F32(f32),
    I64(i64),
}

impl Arg {
    /// The argument as one 8-byte little-endian slot, as cuLaunchKernel
    /// reads it (a 4-byte argument sits in the low half).
    pub fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) => p,
            Arg::I32(v) => v as u32 as u64,
            Arg::F32(v) => v.to_bits() as u64,
            Arg::I64(v) => v as u64,
        }
    }
}

/// Output type of a GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Out {
    Bf16,
    F32,
}

/// Who frees a `DeviceMem`.
pub(crate) enum Owner {
    #[cfg(feature = "cuda")]
    Gpu(std::sync::Arc<cudarc::driver::CudaContext>),
    #[cfg(feature = "emu")]
    Emu(std::sync::Arc<super::emu::heap::Heap>),
}

/// An owned device allocation of `bytes` bytes at address `ptr`.
pub struct DeviceMem {
    pub ptr: u64,
    pub bytes: usize,
    owner: Owner,
}

impl DeviceMem {
    pub(crate) fn new(ptr: u64, bytes: usize, owner: Owner) -> DeviceMem {
        DeviceMem { ptr, bytes, owner }
    }

    /// The address `offset` bytes into the allocation.
    pub fn at(&self, offset: usize) -> u64 {
        debug_assert!(offset <= self.bytes);
        self.ptr + offset as u64
    }
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        match &self.owner {
            #[cfg(feature = "cuda")]
            Owner::Gpu(ctx) => super::gpu::free(ctx, self.ptr),
            #[cfg(feature = "emu")]
            Owner::Emu(heap) => heap.free(self.ptr),
        }
    }
}

/// Who frees a `PinnedMem`.
pub(crate) enum PinnedOwner {
    #[cfg(feature = "cuda")]
    Gpu(std::sync::Arc<cudarc::driver::CudaContext>),
    /// Plain host memory (the emulated device): the boxed slice `ptr`
    /// points into, held only to keep it alive.
    #[cfg(feature = "emu")]
    Host(#[allow(dead_code)] Box<[u8]>),
}

/// Host memory the device copies from and to: page-locked on a GPU (so
/// copies are truly asynchronous), plain memory on the emulated device.
pub struct PinnedMem {
    ptr: *mut u8,
    pub bytes: usize,
    owner: PinnedOwner,
}

// SAFETY: plain host memory; access is serialised by the owning runner.
unsafe impl Send for PinnedMem {}

impl PinnedMem {
    /// Takes `bytes` bytes at `ptr` (owned through `owner`) and zeroes them.
    ///
    /// # Safety
    /// `ptr` must point at `bytes` writable bytes that live as long as `owner`.
    pub(crate) unsafe fn new(ptr: *mut u8, bytes: usize, owner: PinnedOwner) -> PinnedMem {
        let mut m = PinnedMem { ptr, bytes, owner };
        m.as_mut_slice().fill(0);
        m
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `bytes` bytes were allocated at `ptr` and are owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.bytes) }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.bytes) }
    }
}

impl Drop for PinnedMem {
    fn drop(&mut self) {
        match &self.owner {
            #[cfg(feature = "cuda")]
            PinnedOwner::Gpu(ctx) => super::gpu::free_pinned(ctx, self.ptr),
            #[cfg(feature = "emu")]
            PinnedOwner::Host(_) => {}
        }
    }
}

/// A captured sequence of launches and GEMMs, replayed with `Device::replay`.
pub struct Graph(GraphImp);

enum GraphImp {
    #[cfg(feature = "cuda")]
    Gpu(cudarc::driver::CudaGraph),
    #[cfg(feature = "emu")]
    Emu(super::emu::Recorded),
}

// SAFETY: a graph exec may be launched from any thread; the runner that owns
// it is used by one thread at a time (ModelRunner takes &mut self).
unsafe impl Send for Graph {}

enum Imp {
    #[cfg(feature = "cuda")]
    Gpu(super::gpu::Gpu),
    #[cfg(feature = "emu")]
    Emu(super::emu::Emu),
}

/// A device: a GPU or the emulator. See the module comment.
pub struct Device {
    /// What the device is ("NVIDIA H100 80GB HBM3", "emulated device").
    pub name: String,
    /// Streaming multiprocessors (sizes grids and the decode split).
    pub num_sms: usize,
    imp: Imp,
}

/// Runs `$call` on whichever implementation `$dev` holds.
macro_rules! dispatch {
    ($dev:expr, $d:ident => $call:expr) => {
        match &$dev.imp {
            #[cfg(feature = "cuda")]
            Imp::Gpu($d) => $call,
            #[cfg(feature = "emu")]
            Imp::Emu($d) => $call,
        }
    };
}

impl Device {
    /// Opens GPU `ordinal` (see gpu.rs).
    #[cfg(feature = "cuda")]
    pub fn open(ordinal: usize) -> Result<Device, CudaError> {
        let g = super::gpu::Gpu::open(ordinal)?;
        Ok(Device { name: g.name.clone(), num_sms: g.num_sms, imp: Imp::Gpu(g) })
    }

    /// Opens the emulated device (see emu/mod.rs).
    #[cfg(feature = "emu")]
    pub fn emulated() -> Device {
        let e = super::emu::Emu::new(super::emu::MEMORY_BYTES);
        Device { name: "emulated device".into(), num_sms: super::emu::NUM_SMS, imp: Imp::Emu(e) }
    }

    /// Whether this is the emulated device.
    pub fn is_emulated(&self) -> bool {
        match &self.imp {
            #[cfg(feature = "cuda")]
            Imp::Gpu(_) => false,
            #[cfg(feature = "emu")]
            Imp::Emu(_) => true,
        }
    }

    /// The GPU behind this device (its context and stream, for event timing
    /// in the benchmarks); None on the emulator.
    #[cfg(feature = "cuda")]
    pub fn gpu(&self) -> Option<&super::gpu::Gpu> {
        match &self.imp {
            Imp::Gpu(g) => Some(g),
            #[cfg(feature = "emu")]
            Imp::Emu(_) => None,
        }
    }

    /// Launches kernel `name` over `dims` with `args` in the kernel's order.
    pub fn launch(&self, name: &str, dims: Dims, args: &[Arg]) -> Result<(), CudaError> {
        dispatch!(self, d => d.launch(name, dims, args))
    }

    /// y[m, n] = x[m, k] · w[n, k]ᵀ, bf16 operands, f32 accumulation, y in
    /// bf16 (round to nearest even) or f32; `mnk` = [m, n, k], all row-major
    /// as in Hugging Face. m = 0 is a no-op.
    pub fn linear(&self, y: u64, out: Out, x: u64, w: u64, mnk: [usize; 3]) -> Result<(), CudaError> {
        dispatch!(self, d => d.linear(y, out, x, w, mnk))
    }

    /// y[m, n] = x[m, k] · w[n, k]ᵀ with f32 operands, f32 accumulation and
    /// f32 output (the encoders' GEMMs: their checkpoints are f32 and they
    /// are held to the CPU encoder at cosine >= 0.99999; docs/gpu.md);
    /// `mnk` = [m, n, k], row-major. m = 0 is a no-op.
    pub fn linear_f32(&self, y: u64, x: u64, w: u64, mnk: [usize; 3]) -> Result<(), CudaError> {
        dispatch!(self, d => d.linear_f32(y, x, w, mnk))
    }

    /// A device allocation of `bytes` bytes (contents undefined).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceMem, CudaError> {
        dispatch!(self, d => d.alloc(bytes))
    }

    /// Zeroed host memory for staging copies.
    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedMem, CudaError> {
        dispatch!(self, d => d.alloc_pinned(bytes))
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        dispatch!(self, d => d.mem_info())
    }

    /// Asynchronous host-to-device copy. `src` must stay untouched until the
    /// stream passes this point (pinned staging buffers are only rewritten
    /// after the step's synchronisation).
    pub fn upload(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        dispatch!(self, d => d.upload(dst, src))
    }

    /// Asynchronous device-to-host copy.
    pub fn download(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
        dispatch!(self, d => d.download(dst, src))
    }

    /// Fills `bytes` at `dst` with `byte` (poisoning buffers in tests, zeroing the KV pool).
    pub fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<(), CudaError> {
        dispatch!(self, d => d.memset(dst, byte, bytes))
    }

    /// Makes this device current on the calling thread (the runner may be
    /// built on one thread and stepped on another).
    pub fn bind(&self) -> Result<(), CudaError> {
        dispatch!(self, d => d.bind())
    }

    /// Waits until every queued operation has finished.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        dispatch!(self, d => d.synchronize())
    }

    /// Starts recording launches and GEMMs into a graph instead of running
    /// them (nothing else may be queued until `end_capture`).
    pub fn begin_capture(&self) -> Result<(), CudaError> {
        dispatch!(self, d => d.begin_capture())
    }

    /// Ends the capture begun by `begin_capture` and returns the graph.
    pub fn end_capture(&self) -> Result<Graph, CudaError> {
        match &self.imp {
            #[cfg(feature = "cuda")]
            Imp::Gpu(g) => g.end_capture().map(|g| Graph(GraphImp::Gpu(g))),
            #[cfg(feature = "emu")]
            Imp::Emu(e) => e.end_capture().map(|r| Graph(GraphImp::Emu(r))),
        }
    }

    /// Queues every launch of `graph` again, with the argument values it was
    /// captured with.
    pub fn replay(&self, graph: &Graph) -> Result<(), CudaError> {
        match (&self.imp, &graph.0) {
            #[cfg(feature = "cuda")]
            (Imp::Gpu(_), GraphImp::Gpu(g)) => g.launch().map_err(super::gpu::drv("cuGraphLaunch")),
            #[cfg(feature = "emu")]
            (Imp::Emu(e), GraphImp::Emu(r)) => e.replay(r),
            #[allow(unreachable_patterns)]
            _ => Err(CudaError::Emulated("a graph captured on another device".into())),
        }
    }

    /// Declares the named regions of the allocation at `base` (byte offset
    /// and size each; `what` names the allocation in errors). The emulator
    /// fills the gap after each region with guard bytes and checks them
    /// after every launch and GEMM; a new declaration for the same `base`
    /// replaces the old. A no-op on a GPU.
    pub fn guard_regions(&self, base: u64, what: &'static str, regions: &[(&'static str, usize, usize)]) -> Result<(), CudaError> {
        match &self.imp {
            #[cfg(feature = "cuda")]
            Imp::Gpu(_) => {
                let _ = (base, what, regions);
                Ok(())
            }
            #[cfg(feature = "emu")]
            Imp::Emu(e) => e.guard_regions(base, what, regions),
        }
    }
}
