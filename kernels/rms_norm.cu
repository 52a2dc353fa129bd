// rms_norm.cu -- RMSNorm, alone and fused with the residual add.
//
// What:
//   rms_norm_bf16:           out = w * bf16(x * rsqrt(mean(x^2) + eps))
//   fused_add_rms_norm_bf16: residual = bf16(residual + x);
//                            out = w * bf16(residual * rsqrt(mean(residual^2) + eps))
// Why: every decoder layer runs two of these; fusing the residual add saves a
// full read and write of the hidden state per norm. Roundings follow Hugging
// Face's LlamaRMSNorm in bf16 (the sum is kept in bf16, the normalised value is
// cast to bf16 before the weight multiply), so the GPU and the reference agree
// to the last bf16 bit on most elements.
//
// Each thread keeps its slice of the row in registers (at most MAX_VPT vectors
// of 8 values), so the row is read once and written once.
#include "common.cuh"

#define RMS_MAX_VPT 4

// One row per block. `res_io` (nullable) is the residual stream, updated in
// place; with it null the kernel is a plain RMSNorm of `x`.
KILN_DEVICE void rms_norm_row(bf16* __restrict__ out, bf16* __restrict__ res_io, const bf16* __restrict__ x,
                              const bf16* __restrict__ w, int hidden, float eps) {
    __shared__ float scratch[32];
    const int nvec = hidden / 8;
    float v[RMS_MAX_VPT][8];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < RMS_MAX_VPT; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < nvec) {
            load8(x + i * 8, v[j]);
            if (res_io != nullptr) {
                float r[8];
                load8(res_io + i * 8, r);
#pragma unroll
                for (int e = 0; e < 8; e++) v[j][e] = round_bf16(v[j][e] + r[e]);
                store8(res_io + i * 8, v[j]);
            }
#pragma unroll
            for (int e = 0; e < 8; e++) ss += v[j][e] * v[j][e];
        }
    }
    const float total = block_sum(ss, scratch);
    const float r = rsqrtf(total / (float)hidden + eps);
#pragma unroll
    for (int j = 0; j < RMS_MAX_VPT; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < nvec) {
            float wv[8], o[8];
            load8(w + i * 8, wv);
#pragma unroll
            for (int e = 0; e < 8; e++) o[e] = wv[e] * round_bf16(v[j][e] * r);
            store8(out + i * 8, o);
        }
    }
}

// out:    [rows, hidden] bf16
// x:      [rows, hidden] bf16
// weight: [hidden] bf16
// hidden % 8 == 0 and hidden / 8 <= RMS_MAX_VPT * blockDim.x.
extern "C" __global__ void rms_norm_bf16(bf16* __restrict__ out, const bf16* __restrict__ x,
                                         const bf16* __restrict__ weight, int rows, int hidden, float eps) {
    const int row = blockIdx.x;
    if (row >= rows) return;
    const long long off = (long long)row * hidden;
    rms_norm_row(out + off, nullptr, x + off, weight, hidden, eps);
}

// out:      [rows, hidden] bf16
// residual: [rows, hidden] bf16, read and written (residual += x)
// x:        [rows, hidden] bf16 (the attention or MLP output)
// weight:   [hidden] bf16
extern "C" __global__ void fused_add_rms_norm_bf16(bf16* __restrict__ out, bf16* __restrict__ residual,
                                                   const bf16* __restrict__ x, const bf16* __restrict__ weight,
                                                   int rows, int hidden, float eps) {
    const int row = blockIdx.x;
    if (row >= rows) return;
    const long long off = (long long)row * hidden;
    rms_norm_row(out + off, residual + off, x + off, weight, hidden, eps);
}

// Launch (src/backend/cuda/launch.rs: rms_norm_dims): grid (rows), block
// min(1024, round_up(ceil(hidden / 8 / RMS_MAX_VPT), 32)) threads, at least
// 32; no dynamic shared memory. hidden <= 8 * 4 * 1024 = 32768.
