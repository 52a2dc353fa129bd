//! The emulated device (feature `emu`): the CUDA backend's device interface
//! (device.rs) over host memory, so the CUDA runner, its kernels and its
//! test suite run on a machine without a GPU. Slow; it exists for tests and
//! for people changing kernels without a GPU.
//!
//! - memory: host allocations, device address = host address, guard bytes
//!   around every allocation and after every declared region (heap.rs),
//!   checked after each launch and GEMM: an overwrite fails the launch with
//!   an error naming the kernel and the region (CI's compute-sanitizer);
//!   copies and memsets must stay inside one allocation;
//! - kernels: kernels/*.cu compiled for the host as C++, CUDA threads run as
//!   fibers (host_kernels.rs, which also refuses launches the driver would:
//!   threads per block, dynamic shared memory, grid size);
//! - GEMM: reference bf16 x bf16 -> f32 and f32 x f32 -> f32 GEMMs standing
//!   in for cuBLAS (gemm.rs);
//! - graphs: capture records the launch list (kernels and GEMMs with their
//!   argument values) instead of running it; replay runs it again.
//!
//! Everything runs synchronously on the calling thread (kernels and GEMMs
//! use rayon inside), so `synchronize` has nothing to wait for.

pub mod gemm;
pub mod heap;
pub mod host_kernels;

use super::device::{Arg, DeviceMem, Out, Owner, PinnedMem, PinnedOwner};
use super::error::CudaError;
use super::launch::Dims;
use heap::Heap;
use std::sync::{Arc, Mutex};

/// Memory the emulated device reports (and allows): 2 GiB.
pub const MEMORY_BYTES: usize = 2 << 30;
/// Multiprocessors it reports: few, so that decode attention splits
/// contexts into partitions already at the short lengths tests use.
pub const NUM_SMS: usize = 8;

/// One recorded operation of a graph.
#[derive(Clone, Debug, PartialEq)]
enum Op {
    Launch { name: String, dims: Dims, slots: Vec<u64> },
    Linear { y: u64, out: Out, x: u64, w: u64, mnk: [usize; 3] },
    LinearF32 { y: u64, x: u64, w: u64, mnk: [usize; 3] },
}

/// A captured graph: its operations in order.
pub struct Recorded {
    ops: Vec<Op>,
}

impl Recorded {
    /// Number of recorded operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The emulated device.
pub struct Emu {
    heap: Arc<Heap>,
    /// Some while a graph is being captured.
    capture: Mutex<Option<Vec<Op>>>,
}

impl Emu {
    /// A device with `capacity` bytes of memory.
    pub fn new(capacity: usize) -> Emu {
        Emu { heap: Arc::new(Heap::new(capacity)), capture: Mutex::new(None) }
    }

    fn capturing(&self) -> std::sync::MutexGuard<'_, Option<Vec<Op>>> {
        self.capture.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `op` when capturing (returns true), else leaves it to run.
    fn record(&self, op: &Op) -> bool {
        match self.capturing().as_mut() {
            Some(ops) => {
                ops.push(op.clone());
                true
            }
            None => false,
        }
    }

    fn no_capture(&self, what: &str) -> Result<(), CudaError> {
        if self.capturing().is_some() {
            return Err(CudaError::Emulated(format!("{what} while a graph is being captured")));
        }
        Ok(())
    }

    fn run(&self, op: &Op) -> Result<(), CudaError> {
        match op {
            Op::Launch { name, dims, slots } => {
                // SAFETY: the slots are what ops.rs packs for this kernel: addresses
                // of live allocations sized for the kernel's shapes. An overrun is
                // caught below by the guard bytes.
                unsafe { host_kernels::launch(name, *dims, slots) }.map_err(|e| CudaError::Emulated(format!("launch refused: {e}")))?;
                self.heap.check(&format!("kernel {name}"))
            }
            &Op::Linear { y, out, x, w, mnk } => {
                let [m, n, k] = mnk;
                let ybytes = m * n * if out == Out::F32 { 4 } else { 2 };
                let what = format!("GEMM [m {m}, n {n}, k {k}]");
                self.heap.check_range(x, m * k * 2, &format!("{what} reading x"))?;
                self.heap.check_range(w, n * k * 2, &format!("{what} reading W"))?;
                self.heap.check_range(y, ybytes, &format!("{what} writing y"))?;
                // SAFETY: the three ranges lie inside live allocations (checked above);
                // y never aliases x or W in the forward pass.
                unsafe { gemm::linear(y, out, x, w, mnk) };
                self.heap.check(&what)
            }
            &Op::LinearF32 { y, x, w, mnk } => {
                let [m, n, k] = mnk;
                let what = format!("f32 GEMM [m {m}, n {n}, k {k}]");
                self.heap.check_range(x, m * k * 4, &format!("{what} reading x"))?;
                self.heap.check_range(w, n * k * 4, &format!("{what} reading W"))?;
                self.heap.check_range(y, m * n * 4, &format!("{what} writing y"))?;
                // SAFETY: as for Op::Linear.
                unsafe { gemm::linear_f32(y, x, w, mnk) };
                self.heap.check(&what)
            }
        }
    }

    pub fn launch(&self, name: &str, dims: Dims, args: &[Arg]) -> Result<(), CudaError> {
        let op = Op::Launch { name: name.to_string(), dims, slots: args.iter().map(|a| a.slot()).collect() };
        if self.record(&op) {
            return Ok(());
        }
        self.run(&op)
    }

    pub fn linear(&self, y: u64, out: Out, x: u64, w: u64, mnk: [usize; 3]) -> Result<(), CudaError> {
        if mnk[0] == 0 {
            return Ok(());
        }
        let op = Op::Linear { y, out, x, w, mnk };
        if self.record(&op) {
            return Ok(());
        }
        self.run(&op)
    }

    pub fn linear_f32(&self, y: u64, x: u64, w: u64, mnk: [usize; 3]) -> Result<(), CudaError> {
        if mnk[0] == 0 {
            return Ok(());
        }
        let op = Op::LinearF32 { y, x, w, mnk };
        if self.record(&op) {
            return Ok(());
        }
        self.run(&op)
    }

    pub fn alloc(&self, bytes: usize) -> Result<DeviceMem, CudaError> {
        let ptr = self.heap.alloc(bytes)?;
        Ok(DeviceMem::new(ptr, bytes, Owner::Emu(self.heap.clone())))
    }

    pub fn alloc_pinned(&self, bytes: usize) -> Result<PinnedMem, CudaError> {
        let mut host = vec![0u8; bytes.max(1)].into_boxed_slice();
        let ptr = host.as_mut_ptr();
        // SAFETY: the boxed slice holds `bytes` bytes and moves into the owner
        // (moving a Box does not move its heap buffer).
        Ok(unsafe { PinnedMem::new(ptr, bytes, PinnedOwner::Host(host)) })
    }

    pub fn mem_info(&self) -> Result<(usize, usize), CudaError> {
        Ok(self.heap.mem_info())
    }

    pub fn upload(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        self.no_capture("an upload")?;
        self.heap.check_range(dst, src.len(), "upload")?;
        // SAFETY: dst .. dst + len lies inside one allocation (checked above).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    pub fn download(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
        self.no_capture("a download")?;
        self.heap.check_range(src, dst.len(), "download")?;
        // SAFETY: src .. src + len lies inside one allocation (checked above).
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    pub fn memset(&self, dst: u64, byte: u8, bytes: usize) -> Result<(), CudaError> {
        self.no_capture("a memset")?;
        self.heap.check_range(dst, bytes, "memset")?;
        // SAFETY: as in upload.
        unsafe { std::ptr::write_bytes(dst as *mut u8, byte, bytes) };
        Ok(())
    }

    pub fn bind(&self) -> Result<(), CudaError> {
        Ok(())
    }

    pub fn synchronize(&self) -> Result<(), CudaError> {
        Ok(())
    }

    pub fn begin_capture(&self) -> Result<(), CudaError> {
        let mut c = self.capturing();
        if c.is_some() {
            return Err(CudaError::Emulated("a capture is already in progress".into()));
        }
        *c = Some(Vec::new());
        Ok(())
    }

    pub fn end_capture(&self) -> Result<Recorded, CudaError> {
        let ops = self.capturing().take().ok_or_else(|| CudaError::Emulated("end_capture without begin_capture".into()))?;
        if ops.is_empty() {
            return Err(CudaError::Emulated("empty graph".into()));
        }
        Ok(Recorded { ops })
    }

    pub fn replay(&self, r: &Recorded) -> Result<(), CudaError> {
        self.no_capture("a graph replay")?;
        r.ops.iter().try_for_each(|op| self.run(op))
    }

    pub fn guard_regions(&self, base: u64, what: &'static str, regions: &[(&'static str, usize, usize)]) -> Result<(), CudaError> {
        self.heap.watch(base, what, regions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn capture_records_instead_of_running_and_replay_runs() {
        let e = Emu::new(1 << 20);
        let (x, w, y) = (e.alloc(4).unwrap(), e.alloc(4).unwrap(), e.alloc(4).unwrap());
        let two: Vec<u8> = [bf16::from_f32(2.0), bf16::from_f32(3.0)].iter().flat_map(|b| b.to_bits().to_le_bytes()).collect();
        e.upload(x.ptr, &two).unwrap();
        e.upload(w.ptr, &two).unwrap();
        e.begin_capture().unwrap();
        e.linear(y.ptr, Out::F32, x.ptr, w.ptr, [1, 1, 2]).unwrap();
        assert!(e.upload(x.ptr, &two).is_err(), "no copies inside a capture");
        let g = e.end_capture().unwrap();
        assert_eq!(g.len(), 1);
        let mut out = [0u8; 4];
        e.download(&mut out, y.ptr).unwrap();
        assert_eq!(f32::from_le_bytes(out), 0.0, "capture does not run");
        e.replay(&g).unwrap();
        e.download(&mut out, y.ptr).unwrap();
        assert_eq!(f32::from_le_bytes(out), 13.0);
    }

    #[test]
    fn a_gemm_writing_past_its_output_names_the_region() {
        let e = Emu::new(1 << 20);
        let (x, w) = (e.alloc(2 * 8).unwrap(), e.alloc(2 * 8 * 4).unwrap());
        let ws = e.alloc(4096).unwrap();
        e.guard_regions(ws.ptr, "the workspace", &[("small", 0, 8), ("next", 512, 64)]).unwrap();
        // 1 x 4 f32 outputs = 16 bytes into an 8-byte region.
        let err = e.linear(ws.ptr, Out::F32, x.ptr, w.ptr, [1, 4, 8]).unwrap_err().to_string();
        assert!(err.contains("GEMM") && err.contains("region 'small' of the workspace"), "{err}");
        e.linear(ws.at(512), Out::F32, x.ptr, w.ptr, [1, 4, 8]).unwrap();
    }
}
