//! kiln's CUDA kernels compiled for the host, launched by name on the
//! emulated GPU (`--features emu`).
//!
//! build/host_emu.rs compiles every kernels/*.cu with the C++ compiler after
//! kernels/host_emu/kiln_host_emu.h (which says what the emulator models and
//! what it cannot) and generates, per kernel, a trampoline that decodes the
//! argument slots into the kernel's own parameter types. A launch runs every
//! block of the grid (on a few OS threads), each CUDA thread a fiber with
//! real barriers and warp shuffles; it returns when the grid has finished.
//! A kernel that synchronises in divergent code, or shuffles with lanes that
//! have exited, aborts the process with a message naming kernel, block,
//! thread and source line (as a GPU would hang or fault).

use crate::backend::cuda::launch::{smem_opt_in, Dims, SMEM_DEFAULT_LIMIT};

/// The launch as the C++ trampolines read it (`kiln_emu::RawLaunch` in
/// kiln_host_emu.h; keep the two in step).
#[repr(C)]
struct RawLaunch {
    grid: [u32; 3],
    block: [u32; 3],
    smem: u32,
    nargs: u32,
    args: *const u64,
}
const _: () = assert!(std::mem::size_of::<RawLaunch>() == 40, "RawLaunch must match kiln_host_emu.h");

/// A generated trampoline: 0 on success, 1 with `*expected` set to the
/// kernel's parameter count when `nargs` differs from it.
type LaunchFn = unsafe extern "C" fn(*const RawLaunch, *mut u32) -> i32;

include!(concat!(env!("OUT_DIR"), "/emu_kernels.rs"));

/// Threads of one block at most (every GPU kiln targets).
pub const MAX_BLOCK_THREADS: u32 = 1024;
/// blockDim.z at most.
const MAX_BLOCK_Z: u32 = 64;
/// gridDim.x at most (2^31 - 1); y and z at most 65,535.
const MAX_GRID_X: u32 = i32::MAX as u32;
const MAX_GRID_YZ: u32 = 65_535;

/// Why a launch was refused (nothing ran).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmuError {
    #[error("no host-compiled kernel named {0:?}")]
    UnknownKernel(String),
    #[error("{kernel}: block {block:?} is not 1..=1024 threads (x, y <= 1024, z <= 64)")]
    BlockDims { kernel: String, block: (u32, u32, u32) },
    #[error("{kernel}: grid {grid:?} is out of range (x 1..=2^31-1, y and z 1..=65535)")]
    GridDims { kernel: String, grid: (u32, u32, u32) },
    #[error("{kernel}: {requested} bytes of dynamic shared memory, the launch allows {limit}")]
    SharedMemory { kernel: String, requested: u32, limit: u32 },
    #[error("{kernel} takes {expected} arguments, {given} given")]
    ArgCount { kernel: String, expected: u32, given: usize },
}

/// Runs kernel `name` over the grid on the host; `args` are the 8-byte
/// slots, packed as for cuLaunchKernel (src/backend/cuda/device.rs): pointers
/// as addresses (host addresses here), i32 and f32 bits in the low 32 bits,
/// i64 whole. Dynamic shared memory may be at most 48 KiB, or the kernel's
/// opt-in size (`launch::smem_opt_in`).
///
/// # Safety
/// Every pointer slot must be the address of host memory that stays valid
/// for the launch and is large (and aligned) enough for every access the
/// kernel makes with the given sizes, and no other thread may touch that
/// memory meanwhile: the kernel reads and writes it as a GPU kernel reads
/// and writes device memory. Integer slots are not checked either.
pub unsafe fn launch(name: &str, dims: Dims, args: &[u64]) -> Result<(), EmuError> {
    let entry = find(name).ok_or_else(|| EmuError::UnknownKernel(name.to_owned()))?;
    check_dims(name, &dims)?;
    let raw = RawLaunch {
        grid: [dims.grid.0, dims.grid.1, dims.grid.2],
        block: [dims.block.0, dims.block.1, dims.block.2],
        smem: dims.smem,
        nargs: u32::try_from(args.len()).unwrap_or(u32::MAX),
        args: args.as_ptr(),
    };
    let mut expected = 0u32;
    // SAFETY: `raw` and `args` outlive the call; the caller vouches for the
    // memory behind the pointer slots (see # Safety).
    match unsafe { entry(&raw, &mut expected) } {
        0 => Ok(()),
        _ => Err(EmuError::ArgCount { kernel: name.to_owned(), expected, given: args.len() }),
    }
}

/// Names of the host-compiled kernels: exactly those of `kernels::FILES`, in
/// its order. (The emulator's own self-test kernels, `emu_selftest_*`, also
/// launch by name but are not listed.)
pub fn kernel_names() -> impl Iterator<Item = &'static str> {
    KERNELS.iter().map(|(n, _)| *n)
}

fn find(name: &str) -> Option<LaunchFn> {
    KERNELS.iter().chain(SELFTESTS).find(|(n, _)| *n == name).map(|(_, f)| *f)
}

fn check_dims(name: &str, d: &Dims) -> Result<(), EmuError> {
    let (bx, by, bz) = d.block;
    let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
    if bx == 0 || by == 0 || bz == 0 || bx > MAX_BLOCK_THREADS || by > MAX_BLOCK_THREADS || bz > MAX_BLOCK_Z || threads > u64::from(MAX_BLOCK_THREADS) {
        return Err(EmuError::BlockDims { kernel: name.to_owned(), block: d.block });
    }
    let (gx, gy, gz) = d.grid;
    if gx == 0 || gy == 0 || gz == 0 || gx > MAX_GRID_X || gy > MAX_GRID_YZ || gz > MAX_GRID_YZ {
        return Err(EmuError::GridDims { kernel: name.to_owned(), grid: d.grid });
    }
    let limit = smem_opt_in(name).unwrap_or(SMEM_DEFAULT_LIMIT).max(SMEM_DEFAULT_LIMIT) as u32;
    if d.smem > limit {
        return Err(EmuError::SharedMemory { kernel: name.to_owned(), requested: d.smem, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::kernels::FILES;

    #[test]
    fn names_are_exactly_the_kernel_files_lists() {
        let listed: Vec<&str> = FILES.iter().flat_map(|f| f.functions.iter().copied()).collect();
        assert_eq!(kernel_names().collect::<Vec<_>>(), listed);
    }

    fn dims(grid: (u32, u32, u32), block: (u32, u32, u32), smem: u32) -> Dims {
        Dims { grid, block, smem }
    }

    #[test]
    fn bad_launches_are_refused_before_running() {
        let ok = dims((1, 1, 1), (32, 1, 1), 0);
        // SAFETY (all): every launch below is refused before the kernel runs.
        unsafe {
            assert!(matches!(launch("no_such_kernel", ok, &[]), Err(EmuError::UnknownKernel(_))));
            let r = launch("gather_rows_bf16", dims((1, 1, 1), (1025, 1, 1), 0), &[0; 5]);
            assert!(matches!(r, Err(EmuError::BlockDims { .. })), "{r:?}");
            let r = launch("gather_rows_bf16", dims((1, 1, 1), (64, 1, 65), 0), &[0; 5]);
            assert!(matches!(r, Err(EmuError::BlockDims { .. })), "{r:?}");
            let r = launch("gather_rows_bf16", dims((0, 1, 1), (32, 1, 1), 0), &[0; 5]);
            assert!(matches!(r, Err(EmuError::GridDims { .. })), "{r:?}");
            let r = launch("gather_rows_bf16", dims((1, 1, 1), (32, 1, 1), 48 * 1024 + 1), &[0; 5]);
            assert!(matches!(r, Err(EmuError::SharedMemory { limit: 49_152, .. })), "{r:?}");
            let r = launch("gather_rows_bf16", ok, &[0; 4]);
            assert_eq!(r, Err(EmuError::ArgCount { kernel: "gather_rows_bf16".into(), expected: 5, given: 4 }));
        }
        // The opt-in kernel may use more.
        let big = crate::backend::cuda::launch::prefill_smem_bytes(256) as u32;
        assert!(check_dims("prefill_attention_bf16_hd256", &dims((1, 1, 1), (128, 1, 1), big)).is_ok());
        assert!(check_dims("prefill_attention_bf16_hd128", &dims((1, 1, 1), (128, 1, 1), big)).is_err());
    }

    #[test]
    fn gather_rows_copies_the_listed_rows() {
        let (hidden, rows) = (64usize, [2i32, 0, 2]);
        // u128 storage: the kernel moves 16-byte vectors, which need 16-byte alignment.
        let mut x_store = vec![0u128; 3 * hidden / 8];
        let x: &mut [u16] = bytemuck::cast_slice_mut(&mut x_store);
        x.iter_mut().enumerate().for_each(|(i, v)| *v = i as u16);
        let mut out_store = vec![0u128; rows.len() * hidden / 8];
        let out: &mut [u16] = bytemuck::cast_slice_mut(&mut out_store);
        let args = [out.as_mut_ptr() as u64, x.as_ptr() as u64, rows.as_ptr() as u64, rows.len() as u64, hidden as u64];
        // SAFETY: out, x and rows are live host buffers of the sizes the kernel reads and writes.
        unsafe { launch("gather_rows_bf16", dims((3, 1, 1), (32, 1, 1), 0), &args).unwrap() };
        for (s, &r) in rows.iter().enumerate() {
            assert_eq!(&out[s * hidden..(s + 1) * hidden], &x[r as usize * hidden..(r as usize + 1) * hidden]);
        }
    }
}
