// paged_attention_decode.cu -- attention of one new token per sequence over
// its paged KV cache (the decode step), split along the sequence.
//
// What: for sequence s, query head h (kv head kvh = h / G, G = heads per kv
// head) and context length L = ctx_lens[s]:
//   o[h] = sum_{t < L} softmax_t(scale * q[h] . k[t]) v[t]
// with k[t], v[t] read through the block table:
//   slot(t) = block_tables[s, t / block_size] * block_size + t % block_size.
// Why:
//   - GQA-aware: a thread block owns one kv head and up to GMAX of its query
//     heads, so each K and V row is read from memory once for all of them.
//   - Split-K: the context is cut into partitions of `part_size` tokens, one
//     block each (grid.z), so a single long sequence still spreads over the
//     GPU; paged_attention_reduce_bf16 merges the partial results with the
//     usual log-sum-exp rescaling. With one partition the kernel writes the
//     output directly and no reduction runs.
//   - The grid is sized for the largest context a CUDA-graph bucket allows:
//     blocks whose partition starts at or beyond L return at once, so a
//     captured graph replays for any context length.
//
// Shared memory (dynamic, bytes, launch.rs: decode_smem_bytes):
//   max(GMAX * part_size, NWARPS * GMAX * HD) floats -- first the scores of
//   the partition, then reused for the cross-warp sum of the P.V products.
#include "common.cuh"

#define DEC_THREADS 128
#define DEC_WARPS (DEC_THREADS / 32)

template <int HD, int GMAX>
KILN_DEVICE void decode_partition(bf16* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_max,
                                  float* __restrict__ part_sum, const bf16* __restrict__ q,
                                  const bf16* __restrict__ k_cache, const bf16* __restrict__ v_cache,
                                  const int* __restrict__ block_tables, const int* __restrict__ ctx_lens,
                                  const int* __restrict__ q_rows, int num_heads, int num_kv_heads, int max_blocks,
                                  int block_size, int part_size, int num_parts, float scale) {
    constexpr int TPT = HD / 8;         // lanes per token (one 16-byte vector each)
    constexpr int TPW = 32 / TPT;       // tokens per warp per step
    KILN_DYNAMIC_SMEM(float, smem);     // see header comment
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane / TPT, vec = lane % TPT;

    const int group = num_heads / num_kv_heads;          // G
    const int chunks = (group + GMAX - 1) / GMAX;        // blocks per kv head
    const int kvh = blockIdx.x / chunks;
    const int g0 = (blockIdx.x % chunks) * GMAX;         // first head of this block within the group
    const int ng = min(GMAX, group - g0);                // heads of this block
    const int s = blockIdx.y, part = blockIdx.z;
    const int L = ctx_lens[s];
    const int t0 = part * part_size;
    const int t1 = min(L, t0 + part_size);
    const int head0 = kvh * group + g0;
    const long long qrow = q_rows[s];

    if (t0 >= L && !(L == 0 && part == 0)) return;  // empty partition (the reduction skips it)
    if (L == 0) {                                    // padding row of a graph bucket: output zeros
        for (int i = threadIdx.x; i < ng * HD; i += DEC_THREADS) {
            const int g = i / HD, d = i % HD;
            out[(qrow * num_heads + head0 + g) * HD + d] = f32_to_bf16(0.f);
        }
        return;
    }

    // q of this lane's 8 dims for each head, pre-scaled; heads g >= ng (the
    // last chunk of a group that GMAX does not divide) are zero: the score
    // loop below runs over all GMAX lanes and must not read garbage.
    float qv[GMAX][8];
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        if (g < ng) {
            load8(q + (qrow * num_heads + head0 + g) * HD + vec * 8, qv[g]);
#pragma unroll
            for (int e = 0; e < 8; e++) qv[g][e] *= scale;
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) qv[g][e] = 0.f;
        }
    }
    const int* table = block_tables + (long long)s * max_blocks;
    float* scores = smem;  // [GMAX][part_size]

    // Scores: TPT lanes per token, TPW tokens per warp, warps stride the partition.
    for (int base = t0 + warp * TPW; base < t1; base += DEC_WARPS * TPW) {
        const int t = base + sub;
        float kv[8];
        if (t < t1) {
            const long long slot = (long long)table[t / block_size] * block_size + t % block_size;
            load8(k_cache + (slot * num_kv_heads + kvh) * HD + vec * 8, kv);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) kv[e] = 0.f;
        }
#pragma unroll
        for (int g = 0; g < GMAX; g++) {
            float d = 0.f;
#pragma unroll
            for (int e = 0; e < 8; e++) d += qv[g][e] * kv[e];
            d = group_sum<TPT>(d);
            if (g < ng && vec == 0 && t < t1) scores[g * part_size + (t - t0)] = d;
        }
    }
    __syncthreads();

    // Softmax pieces of this partition, per head.
    float mx[GMAX], sm[GMAX];
    const int n = t1 - t0;
#pragma unroll
    for (int g = 0; g < GMAX; g++) {
        mx[g] = -kiln_inf();
        sm[g] = 0.f;
        if (g < ng) {  // ng is uniform over the block: no divergent barrier
            float m = -kiln_inf();
            for (int i = threadIdx.x; i < n; i += DEC_THREADS) m = fmaxf(m, scores[g * part_size + i]);
            m = block_max(m, smem + GMAX * part_size);
            float acc = 0.f;
            for (int i = threadIdx.x; i < n; i += DEC_THREADS) {
                const float p = __expf(scores[g * part_size + i] - m);
                scores[g * part_size + i] = p;
                acc += p;
            }
            mx[g] = m;
            sm[g] = block_sum(acc, smem + GMAX * part_size);
        }
    }
    __syncthreads();

    // P.V: same lane layout as the scores; each lane accumulates 8 dims per head.
    float acc[GMAX][8];
#pragma unroll
    for (int g = 0; g < GMAX; g++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[g][e] = 0.f;
    for (int base = t0 + warp * TPW; base < t1; base += DEC_WARPS * TPW) {
        const int t = base + sub;
        if (t < t1) {
            const long long slot = (long long)table[t / block_size] * block_size + t % block_size;
            float vv[8];
            load8(v_cache + (slot * num_kv_heads + kvh) * HD + vec * 8, vv);
#pragma unroll
            for (int g = 0; g < GMAX; g++) {
                const float p = g < ng ? scores[g * part_size + (t - t0)] : 0.f;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[g][e] += p * vv[e];
            }
        }
    }
    // Sum the TPW token groups of the warp (lanes with equal `vec`).
#pragma unroll
    for (int g = 0; g < GMAX; g++)
#pragma unroll
        for (int e = 0; e < 8; e++)
#pragma unroll
            for (int o = TPT; o < 32; o <<= 1) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
    __syncthreads();  // scores are dead: reuse smem as [DEC_WARPS][GMAX][HD]
    float* red = smem;
    if (sub == 0) {
#pragma unroll
        for (int g = 0; g < GMAX; g++)
#pragma unroll
            for (int e = 0; e < 8; e++) red[(warp * GMAX + g) * HD + vec * 8 + e] = acc[g][e];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < ng * HD; i += DEC_THREADS) {
        const int g = i / HD, d = i % HD;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++) v += red[(w * GMAX + g) * HD + d];
        const int h = head0 + g;
        float m = 0.f, l = 1.f;
#pragma unroll
        for (int gg = 0; gg < GMAX; gg++)
            if (gg == g) { m = mx[gg]; l = sm[gg]; }
        if (num_parts == 1) {
            out[(qrow * num_heads + h) * HD + d] = f32_to_bf16(v / l);
        } else {
            const long long pi = ((long long)s * num_heads + h) * num_parts + part;
            part_out[pi * HD + d] = v;
            if (d == 0) {
                part_max[pi] = m;
                part_sum[pi] = l;
            }
        }
    }
}

// out:          [num_tokens, num_heads, HD] bf16 (row q_rows[s] written)
// part_out:     [num_seqs, num_heads, num_parts, HD] f32 (num_parts > 1 only)
// part_max:     [num_seqs, num_heads, num_parts] f32 (running max of scores)
// part_sum:     [num_seqs, num_heads, num_parts] f32 (sum of exp(score - max))
// q:            [num_tokens, num_heads, HD] bf16 (rotated)
// k_cache:      [num_blocks, block_size, num_kv_heads, HD] bf16
// v_cache:      [num_blocks, block_size, num_kv_heads, HD] bf16
// block_tables: [num_seqs, max_blocks] i32
// ctx_lens:     [num_seqs] i32 (0: padding row, zeros written)
// q_rows:       [num_seqs] i32, the query row of each sequence
#define DEFINE_DECODE(HD, GMAX)                                                                                      \
    extern "C" __global__ void __launch_bounds__(DEC_THREADS) paged_attention_decode_bf16_hd##HD##_g##GMAX(        \
        bf16* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_max,                        \
        float* __restrict__ part_sum, const bf16* __restrict__ q, const bf16* __restrict__ k_cache,                \
        const bf16* __restrict__ v_cache, const int* __restrict__ block_tables, const int* __restrict__ ctx_lens,  \
        const int* __restrict__ q_rows, int num_heads, int num_kv_heads, int max_blocks, int block_size,          \
        int part_size, int num_parts, float scale) {                                                              \
        decode_partition<HD, GMAX>(out, part_out, part_max, part_sum, q, k_cache, v_cache, block_tables, ctx_lens, \
                                   q_rows, num_heads, num_kv_heads, max_blocks, block_size, part_size, num_parts,  \
                                   scale);                                                                         \
    }

DEFINE_DECODE(16, 1)
DEFINE_DECODE(16, 2)
DEFINE_DECODE(16, 4)
DEFINE_DECODE(16, 8)
DEFINE_DECODE(32, 1)
DEFINE_DECODE(32, 2)
DEFINE_DECODE(32, 4)
DEFINE_DECODE(32, 8)
DEFINE_DECODE(64, 1)
DEFINE_DECODE(64, 2)
DEFINE_DECODE(64, 4)
DEFINE_DECODE(64, 8)
DEFINE_DECODE(128, 1)
DEFINE_DECODE(128, 2)
DEFINE_DECODE(128, 4)
DEFINE_DECODE(128, 8)
DEFINE_DECODE(256, 1)
DEFINE_DECODE(256, 2)
DEFINE_DECODE(256, 4)

// Merges the partitions: with M = max_p m_p,
//   o = sum_p exp(m_p - M) o_p / sum_p exp(m_p - M) l_p
// over the partitions that hold tokens (ceil(L / part_size)).
// out:      [num_tokens, num_heads, head_dim] bf16
// part_*:   as above
// ctx_lens, q_rows: [num_seqs] i32
extern "C" __global__ void paged_attention_reduce_bf16(bf16* __restrict__ out, const float* __restrict__ part_out,
                                                       const float* __restrict__ part_max,
                                                       const float* __restrict__ part_sum,
                                                       const int* __restrict__ ctx_lens,
                                                       const int* __restrict__ q_rows, int num_heads, int head_dim,
                                                       int part_size, int num_parts) {
    const int h = blockIdx.x, s = blockIdx.y;
    const int L = ctx_lens[s];
    const int used = min(num_parts, (L + part_size - 1) / part_size);
    const long long base = ((long long)s * num_heads + h) * num_parts;
    bf16* o = out + ((long long)q_rows[s] * num_heads + h) * head_dim;
    float M = -kiln_inf();
    for (int p = 0; p < used; p++) M = fmaxf(M, part_max[base + p]);
    float den = 0.f;
    for (int p = 0; p < used; p++) den += __expf(part_max[base + p] - M) * part_sum[base + p];
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float num = 0.f;
        for (int p = 0; p < used; p++) num += __expf(part_max[base + p] - M) * part_out[(base + p) * head_dim + d];
        o[d] = f32_to_bf16(used > 0 ? num / den : 0.f);
    }
}

// Launch (launch.rs: decode_dims / decode_reduce_dims):
//   decode: grid (num_kv_heads * ceil(G / GMAX), num_seqs, num_parts), block
//           128, dynamic smem decode_smem_bytes(HD, GMAX, part_size);
//           GMAX = the smallest of 1, 2, 4, 8 that is >= G (8 when G > 8).
//   reduce: grid (num_heads, num_seqs), block head_dim; only when num_parts > 1.
