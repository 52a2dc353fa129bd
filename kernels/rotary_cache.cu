// rotary_cache.cu -- rotary position embedding fused with the paged-cache write.
//
// What: for every token t of the step and every head of the fused QKV
// projection output:
//   - add the projection bias (Qwen2) and apply the per-head RMSNorm of q and k
//     (Qwen3), when their pointers are non-null. With a bias, `qkv` is the
//     GEMM's f32 output and the bias is added before the one rounding to bf16,
//     as transformers' Linear adds it inside the matmul's f32 accumulation
//     (rounding the GEMM output to bf16 first would round twice);
//   - rotate q and k with Hugging Face's half-rotation layout: for i < d/2,
//       a = x[i], b = x[i + d/2], f = pos * inv_freq[i]
//       x'[i]       = a cos f - b sin f
//       x'[i + d/2] = b cos f + a sin f
//   - write q' to q_out, and k' and v into the paged KV cache at slots[t].
// Why: reads the QKV activations once and writes each destination once,
// instead of separate bias, norm, rotary and cache-copy kernels. The
// frequencies come from a host table (`inv_freq`), so llama3 / linear rope
// scaling is applied once on the host (ModelConfig::rope_inv_freq) and the
// kernel stays oblivious to it. Angles are computed as f32(pos * inv_freq)
// with an accurate sincosf, as Hugging Face does in f32.
//
// Cache layout: [num_blocks, block_size, num_kv_heads, head_dim] bf16; slot
// s = block * block_size + offset addresses row s of the flattened
// [num_blocks * block_size, num_kv_heads, head_dim] view. slots[t] < 0 means
// "do not write" (padding rows of a CUDA-graph bucket).
#include "common.cuh"

#define ROPE_MAX_PAIRS_PER_LANE 4  // head_dim <= 256

// RMSNorm over one head held by a warp (lane owns pairs (i, i + d/2)).
KILN_DEVICE void head_rms_norm(float (&a)[ROPE_MAX_PAIRS_PER_LANE], float (&b)[ROPE_MAX_PAIRS_PER_LANE],
                               const bf16* __restrict__ w, int half, float eps) {
    const int lane = threadIdx.x & 31;
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < ROPE_MAX_PAIRS_PER_LANE; j++) {
        const int i = lane + 32 * j;
        if (i < half) ss += a[j] * a[j] + b[j] * b[j];
    }
    const float r = rsqrtf(warp_sum(ss) / (float)(2 * half) + eps);
#pragma unroll
    for (int j = 0; j < ROPE_MAX_PAIRS_PER_LANE; j++) {
        const int i = lane + 32 * j;
        if (i < half) {
            a[j] = round_bf16(bf16_to_f32(w[i]) * round_bf16(a[j] * r));
            b[j] = round_bf16(bf16_to_f32(w[i + half]) * round_bf16(b[j] * r));
        }
    }
}

// q_out:     [num_tokens, num_heads, head_dim] bf16
// k_cache:   [num_blocks, block_size, num_kv_heads, head_dim] bf16
// v_cache:   [num_blocks, block_size, num_kv_heads, head_dim] bf16
// qkv:       [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim] (q heads, k heads, v heads):
//            bf16 when qkv_bias is null, f32 when it is not
// qkv_bias:  [(num_heads + 2 * num_kv_heads) * head_dim] bf16, or null
// q_norm:    [head_dim] bf16, or null;  k_norm: [head_dim] bf16, or null
// inv_freq:  [head_dim / 2] f32
// positions: [num_tokens] i32
// slots:     [num_tokens] i32 (-1: skip the cache write)
// head_dim even and <= 256.
extern "C" __global__ void rotary_qkv_cache_bf16(bf16* __restrict__ q_out, bf16* __restrict__ k_cache,
                                                 bf16* __restrict__ v_cache, const void* __restrict__ qkv,
                                                 const bf16* __restrict__ qkv_bias, const bf16* __restrict__ q_norm,
                                                 const bf16* __restrict__ k_norm, const float* __restrict__ inv_freq,
                                                 const int* __restrict__ positions, const int* __restrict__ slots,
                                                 int num_tokens, int num_heads, int num_kv_heads, int head_dim,
                                                 float eps) {
    const int lane = threadIdx.x & 31;
    const int heads_total = num_heads + 2 * num_kv_heads;
    const long long wid = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (wid >= (long long)num_tokens * heads_total) return;  // whole warp leaves together
    const int t = (int)(wid / heads_total);
    const int h = (int)(wid - (long long)t * heads_total);
    const int half = head_dim / 2;
    const bool is_q = h < num_heads, is_k = !is_q && h < num_heads + num_kv_heads;

    const long long row = ((long long)t * heads_total + h) * head_dim;
    const bf16* bias = qkv_bias ? qkv_bias + (long long)h * head_dim : nullptr;
    float a[ROPE_MAX_PAIRS_PER_LANE], b[ROPE_MAX_PAIRS_PER_LANE];
#pragma unroll
    for (int j = 0; j < ROPE_MAX_PAIRS_PER_LANE; j++) {
        const int i = lane + 32 * j;
        a[j] = b[j] = 0.f;
        if (i < half) {
            if (bias) {  // f32 projection + bias, rounded once
                const float* src = static_cast<const float*>(qkv) + row;
                a[j] = round_bf16(src[i] + bf16_to_f32(bias[i]));
                b[j] = round_bf16(src[i + half] + bf16_to_f32(bias[i + half]));
            } else {
                const bf16* src = static_cast<const bf16*>(qkv) + row;
                a[j] = bf16_to_f32(src[i]);
                b[j] = bf16_to_f32(src[i + half]);
            }
        }
    }
    const bf16* norm_w = is_q ? q_norm : (is_k ? k_norm : nullptr);
    if (norm_w) head_rms_norm(a, b, norm_w, half, eps);

    if (is_q || is_k) {
        const float pos = (float)positions[t];
#pragma unroll
        for (int j = 0; j < ROPE_MAX_PAIRS_PER_LANE; j++) {
            const int i = lane + 32 * j;
            if (i < half) {
                float s, c;
                sincosf(pos * inv_freq[i], &s, &c);
                const float na = a[j] * c - b[j] * s;
                const float nb = b[j] * c + a[j] * s;
                a[j] = na;
                b[j] = nb;
            }
        }
    }

    bf16* dst;
    if (is_q) {
        dst = q_out + ((long long)t * num_heads + h) * head_dim;
    } else {
        const int slot = slots[t];
        if (slot < 0) return;
        const int kvh = is_k ? h - num_heads : h - num_heads - num_kv_heads;
        bf16* cache = is_k ? k_cache : v_cache;
        dst = cache + ((long long)slot * num_kv_heads + kvh) * head_dim;
    }
#pragma unroll
    for (int j = 0; j < ROPE_MAX_PAIRS_PER_LANE; j++) {
        const int i = lane + 32 * j;
        if (i < half) {
            dst[i] = f32_to_bf16(a[j]);
            dst[i + half] = f32_to_bf16(b[j]);
        }
    }
}

// Launch (launch.rs: rotary_dims): one warp per (token, head), 4 warps per
// block: grid ceil(num_tokens * (num_heads + 2 * num_kv_heads) / 4), block 128.
