// dequant.cu -- GGUF block quantisations to bf16, on the GPU, at load time.
//
// What: expands rows of GGML blocks of 32 weights to bf16:
//   Q8_0: {f16 d; i8 q[32]}             w = d * q
//   Q4_1: {f16 d; f16 m; u8 qs[16]}     w[j] = d * (qs[j] & 15) + m,
//                                       w[j + 16] = d * (qs[j] >> 4) + m
// Why: the engine keeps weights in bf16 on the GPU for now; uploading the
// quantised bytes and expanding them on the device moves 3-4x fewer bytes
// over PCIe than expanding on the host. These are the two types the CPU
// loader keeps in their blocks (backend::cpu::WeightData); every other GGUF
// type (Q4_0, K-quants) reaches the uploader already expanded by
// src/model/dequant.rs, so it has no kernel here.
// Blocks are packed without padding; f16 fields are little-endian and
// unaligned in Q8_0 (34-byte blocks), so they are read byte by byte.
#include "common.cuh"

KILN_DEVICE float f16_bits_to_f32(unsigned short h) {
#ifdef KILN_HOST_EMU
    return kiln_emu::f16_bits_to_f32(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

KILN_DEVICE float read_f16(const unsigned char* p) {
    return f16_bits_to_f32((unsigned short)(p[0] | (p[1] << 8)));
}

// out:        [num_blocks * 32] bf16
// blocks:     [num_blocks] packed GGML blocks of the named type
// One thread per block of 32 weights.
extern "C" __global__ void dequant_q8_0_bf16(bf16* __restrict__ out, const unsigned char* __restrict__ blocks,
                                             long long num_blocks) {
    const long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (b >= num_blocks) return;
    const unsigned char* p = blocks + b * 34;
    const float d = read_f16(p);
    const signed char* q = reinterpret_cast<const signed char*>(p + 2);
    float v[8];
#pragma unroll
    for (int c = 0; c < 4; c++) {
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] = d * (float)q[c * 8 + e];
        store8(out + b * 32 + c * 8, v);
    }
}

extern "C" __global__ void dequant_q4_1_bf16(bf16* __restrict__ out, const unsigned char* __restrict__ blocks,
                                             long long num_blocks) {
    const long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (b >= num_blocks) return;
    const unsigned char* p = blocks + b * 20;
    const float d = read_f16(p), m = read_f16(p + 2);
    const unsigned char* qs = p + 4;
    float lo[8], hi[8];
#pragma unroll
    for (int c = 0; c < 2; c++) {
#pragma unroll
        for (int e = 0; e < 8; e++) {
            lo[e] = d * (float)(qs[c * 8 + e] & 15) + m;
            hi[e] = d * (float)(qs[c * 8 + e] >> 4) + m;
        }
        store8(out + b * 32 + c * 8, lo);
        store8(out + b * 32 + 16 + c * 8, hi);
    }
}

// Launch (launch.rs: elementwise_dims over blocks): block 256, grid
// ceil(num_blocks / 256). `out` must be 16-byte aligned (a fresh allocation).
