//! Linear layers on cuBLAS: y = x · Wᵀ with bf16 operands and f32
//! accumulation (CUBLAS_COMPUTE_32F, reduced-precision split-K reductions
//! disallowed), y in bf16 (activations) or f32 (logits).
//!
//! Layouts, all row-major as in Hugging Face:
//!   x [m, k], W [n, k], y [m, n].
//! cuBLAS is column-major, so it computes yᵀ [n, m] = W · xᵀ: A = W seen as a
//! k x n column-major matrix (transposed), B = x seen as k x m (as is).
//!
//! The handle owns a fixed 32 MiB workspace so that no GEMM allocates during
//! CUDA graph capture.

use super::device::{DeviceMem, Out};
use super::error::CudaError;
use super::gpu::Gpu;
use cudarc::cublas::{result, sys, CudaBlas};
use std::ffi::c_void;

const WORKSPACE_BYTES: usize = 32 << 20;

fn blas_err(call: &'static str) -> impl Fn(result::CublasError) -> CudaError {
    move |e| CudaError::Blas { call, msg: format!("{e:?}") }
}

/// The cuBLAS handle of a GPU and its fixed workspace.
pub struct Gemm {
    blas: CudaBlas,
    _workspace: DeviceMem,
}

impl Gemm {
    pub fn new(dev: &Gpu) -> Result<Gemm, CudaError> {
        super::cublas_lib::ensure_loaded()?;
        // cudarc panics on a library it cannot resolve; ensure_loaded checked it
        // can, and a panic that still happens (a missing symbol) becomes an error.
        let blas = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| CudaBlas::new(dev.stream.clone())))
            .map_err(|p| CudaError::Blas { call: "cublasCreate", msg: super::panic_message(p.as_ref()) })?
            .map_err(blas_err("cublasCreate"))?;
        let workspace = dev.alloc(WORKSPACE_BYTES)?;
        // SAFETY: the handle is live; the workspace outlives it (field order: blas drops first).
        unsafe {
            sys::cublasSetWorkspace_v2(*blas.handle(), workspace.ptr as *mut c_void, WORKSPACE_BYTES)
                .result()
                .map_err(blas_err("cublasSetWorkspace"))?;
            sys::cublasSetMathMode(*blas.handle(), sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)
                .result()
                .map_err(blas_err("cublasSetMathMode"))?;
        }
        Ok(Gemm { blas, _workspace: workspace })
    }

    /// y[m, n] = x[m, k] · w[n, k]ᵀ on the device's stream, `mnk` = [m, n, k].
    /// Addresses must hold the stated shapes; m = 0 is a no-op.
    pub fn linear(&self, y: u64, out: Out, x: u64, w: u64, mnk: [usize; 3]) -> Result<(), CudaError> {
        let [m, n, k] = mnk;
        if m == 0 {
            return Ok(());
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let c_type = match out {
            Out::Bf16 => sys::cudaDataType::CUDA_R_16BF,
            Out::F32 => sys::cudaDataType::CUDA_R_32F,
        };
        // SAFETY: pointers are device addresses of the stated sizes, alpha and
        // beta are host scalars (the handle's default pointer mode).
        unsafe {
            result::gemm_ex(
                *self.blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                w as *const c_void,
                sys::cudaDataType::CUDA_R_16BF,
                k as i32,
                x as *const c_void,
                sys::cudaDataType::CUDA_R_16BF,
                k as i32,
                (&beta as *const f32).cast(),
                y as *mut c_void,
                c_type,
                n as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("cublasGemmEx"))
    }

    /// y[m, n] = x[m, k] · w[n, k]ᵀ with every operand f32 (the encoders'
    /// GEMMs), same layouts as `linear`. CUBLAS_COMPUTE_32F: plain FP32
    /// arithmetic, no TF32 tensor-core rounding of the inputs (that would
    /// need CUBLAS_COMPUTE_32F_FAST_TF32), so the result agrees with the
    /// CPU encoder to f32 rounding. m = 0 is a no-op.
    pub fn linear_f32(&self, y: u64, x: u64, w: u64, mnk: [usize; 3]) -> Result<(), CudaError> {
        let [m, n, k] = mnk;
        if m == 0 {
            return Ok(());
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let f32t = sys::cudaDataType::CUDA_R_32F;
        // SAFETY: as in `linear`.
        unsafe {
            result::gemm_ex(
                *self.blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                w as *const c_void,
                f32t,
                k as i32,
                x as *const c_void,
                f32t,
                k as i32,
                (&beta as *const f32).cast(),
                y as *mut c_void,
                f32t,
                n as i32,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("cublasGemmEx"))
    }
}
