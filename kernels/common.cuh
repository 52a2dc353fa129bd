// common.cuh -- helpers shared by every kiln kernel.
//
// What: a bf16 storage type with f32 conversion, 16-byte vector load/store of
// 8 bf16, warp and block reductions, and the Philox4x32-10 counter-based RNG.
//
// Why: kernels are compiled at start-up by NVRTC, which ships no CUDA headers
// (the PyPI nvrtc wheel has only nvrtc.h; cuda_bf16.h lives in another wheel
// and may be absent on a serving machine). Everything here is plain CUDA C++
// plus inline PTX that needs sm_80 or newer (cvt.rn.bf16*.f32), so a kernel
// file compiles with no include path at all. The Rust loader pastes this file
// in place of `#include "common.cuh"`; nvcc in build.rs finds it with -I.
//
// Conventions for every kernel file:
//   - arguments go outputs, inputs, sizes; every pointer carries a shape comment;
//   - activations and weights are bf16 in memory, arithmetic is f32;
//   - sizes are int (all tensors here hold < 2^31 elements), offsets that can
//     exceed 2^31 (KV cache, logits) are computed in long long.
#pragma once

#define KILN_DEVICE __device__ __forceinline__

// Dynamic shared memory of a kernel, declared inside its body. Host builds
// (kernels/host_emu/kiln_host_emu.h, KILN_HOST_EMU) define it as the emulated
// block's buffer.
#ifndef KILN_HOST_EMU
#define KILN_DYNAMIC_SMEM(T, name) extern __shared__ __align__(16) T name[]
#endif

// A bf16 value as stored: the top 16 bits of an IEEE f32.
struct __align__(2) bf16 {
    unsigned short bits;
};

KILN_DEVICE float bf16_to_f32(bf16 x) { return __uint_as_float(((unsigned)x.bits) << 16); }

// Round-to-nearest-even f32 -> bf16 (NaN stays NaN), one PTX instruction.
KILN_DEVICE bf16 f32_to_bf16(float f) {
    bf16 r;
#ifdef KILN_HOST_EMU
    r.bits = kiln_emu::f32_to_bf16_bits(f);
#else
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r.bits) : "f"(f));
#endif
    return r;
}

// Two f32 -> packed bf16x2: `lo` in bits 0..15, `hi` in bits 16..31.
KILN_DEVICE unsigned pack_bf16x2(float lo, float hi) {
#ifdef KILN_HOST_EMU
    return kiln_emu::pack_bf16x2(lo, hi);
#else
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

KILN_DEVICE float bf16x2_lo(unsigned w) { return __uint_as_float(w << 16); }
KILN_DEVICE float bf16x2_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }

// Rounds through bf16 and back: what storing a value in a bf16 tensor does.
KILN_DEVICE float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// 8 bf16 <-> 8 f32 through one 16-byte access. `p` must be 16-byte aligned:
// callers index in units of 8 elements of rows whose length is a multiple of 8.
KILN_DEVICE void load8(const bf16* p, float* v) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    v[0] = bf16x2_lo(u.x); v[1] = bf16x2_hi(u.x);
    v[2] = bf16x2_lo(u.y); v[3] = bf16x2_hi(u.y);
    v[4] = bf16x2_lo(u.z); v[5] = bf16x2_hi(u.z);
    v[6] = bf16x2_lo(u.w); v[7] = bf16x2_hi(u.w);
}

KILN_DEVICE void store8(bf16* p, const float* v) {
    uint4 u;
    u.x = pack_bf16x2(v[0], v[1]);
    u.y = pack_bf16x2(v[2], v[3]);
    u.z = pack_bf16x2(v[4], v[5]);
    u.w = pack_bf16x2(v[6], v[7]);
    *reinterpret_cast<uint4*>(p) = u;
}

KILN_DEVICE float kiln_inf() { return __int_as_float(0x7f800000); }

KILN_DEVICE float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

KILN_DEVICE float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a sub-group of `width` lanes (a power of two <= 32, aligned).
template <int WIDTH>
KILN_DEVICE float group_sum(float v) {
#pragma unroll
    for (int o = WIDTH / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide sum; every thread gets the result. `scratch` holds >= 32 floats
// of shared memory and may be reused after the call returns.
KILN_DEVICE float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

KILN_DEVICE float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nwarps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : -kiln_inf();
    return warp_max(v);
}

// Philox4x32-10 (Salmon et al., SC'11): counter (4 words) and key (2 words)
// -> 4 random words. Pure function of its inputs, so a request's stream is
// reproducible from (seed, step) whatever the batch it lands in. Known-answer
// vectors are checked on the host against the Rust twin in
// src/backend/cuda/sampling_plan.rs.
struct Philox4 {
    unsigned x, y, z, w;
};

KILN_DEVICE Philox4 philox4x32_10(Philox4 c, unsigned k0, unsigned k1) {
    const unsigned M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const unsigned W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int r = 0; r < 10; r++) {
        if (r > 0) { k0 += W0; k1 += W1; }
        const unsigned hi0 = __umulhi(M0, c.x), lo0 = M0 * c.x;
        const unsigned hi1 = __umulhi(M1, c.z), lo1 = M1 * c.z;
        Philox4 n;
        n.x = hi1 ^ c.y ^ k0;
        n.y = lo1;
        n.z = hi0 ^ c.w ^ k1;
        n.w = lo0;
        c = n;
    }
    return c;
}

// Uniform float in [0, 1) from the top 24 bits of a random word.
KILN_DEVICE float uniform_from_u32(unsigned x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

// Maps a float to an unsigned key with the same order (larger float ->
// larger key), for radix selection. -0.0 sorts just below +0.0; NaNs are
// never fed here (callers replace them by -inf).
KILN_DEVICE unsigned float_order_key(float f) {
    const unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
