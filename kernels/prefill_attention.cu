// prefill_attention.cu -- causal attention of many query tokens per sequence
// (prompt prefill and chunked prefill) over the paged KV cache.
//
// What: sequence s has q_len query tokens (rows q_start .. q_start + q_len of
// q) and ctx_len tokens in the cache once this step's K and V are written
// (rotary_cache.cu runs first). Query j sits at position
// p_j = ctx_len - q_len + j and attends to cache positions 0 ..= p_j:
//   o[j, h] = sum_{t <= p_j} softmax_t(scale * q[j, h] . k[t, kvh]) v[t, kvh]
// The cached prefix (prefix caching, earlier chunks) and the new tokens are
// read the same way, through the block table.
// Why: one kernel serves plain prefill, chunked prefill and prefix hits; the
// batch is ragged (variable length) so nothing is padded.
//
// Tiling (flash-attention style, SIMT f32 arithmetic): a thread block owns
// ROWS = 32 (token, head) rows -- TOKS tokens times the GB heads of one kv
// head it covers -- so each K/V tile read from memory serves every query head
// of the group (GQA). Keys stream through shared memory 32 at a time; each
// row keeps a running max and sum (online softmax), so scores never leave
// the chip. Each warp owns 8 rows; for scores a lane owns one key, for P.V a
// lane owns head_dim / 32 output dims.
//
// A tensor-core (mma.sync bf16) version is the planned next step once this
// one is verified on a GPU (docs/gpu.md).
#include "common.cuh"

#define PF_THREADS 128
#define PF_WARPS 4
#define PF_ROWS 32          // rows per block
#define PF_RW 8             // rows per warp
#define PF_BN 32            // keys per tile

template <int HD>
struct PrefillSmem {
    float q[PF_ROWS][HD];                   // query rows, f32, pre-scaled by scale * log2(e)
    unsigned k[PF_BN][HD / 2 + 4];          // key tile, bf16x2 words, rows padded by 16 bytes
    unsigned v[PF_BN][HD / 2];              // value tile, bf16x2 words
    float p[PF_WARPS][PF_RW][PF_BN];        // probabilities of the tile, per warp
};

// Loads keys [k0, k0 + PF_BN) of kv head kvh into the tile; keys >= kv_end are zero.
template <int HD>
KILN_DEVICE void load_kv_tile(PrefillSmem<HD>& sm, const bf16* __restrict__ k_cache, const bf16* __restrict__ v_cache,
                              const int* __restrict__ table, int k0, int kv_end, int kvh, int num_kv_heads,
                              int block_size) {
    constexpr int VPR = HD / 8;  // 16-byte vectors per row
    for (int i = threadIdx.x; i < PF_BN * VPR; i += PF_THREADS) {
        const int j = i / VPR, c = i % VPR;
        const int t = k0 + j;
        uint4 kk = make_uint4(0u, 0u, 0u, 0u), vv = kk;
        if (t < kv_end) {
            const long long slot = (long long)table[t / block_size] * block_size + t % block_size;
            const long long off = (slot * num_kv_heads + kvh) * HD + c * 8;
            kk = *reinterpret_cast<const uint4*>(k_cache + off);
            vv = *reinterpret_cast<const uint4*>(v_cache + off);
        }
        *reinterpret_cast<uint4*>(&sm.k[j][c * 4]) = kk;
        *reinterpret_cast<uint4*>(&sm.v[j][c * 4]) = vv;
    }
}

// The E value dims lane `lane` owns from one value row (bf16x2 words), as f32,
// in one 4/8/16-byte shared load (consecutive lanes read consecutive words:
// no bank conflicts). E == 1 (head_dim 16 and 32): lane owns dim `lane`; lanes
// >= head_dim read a clamped dim and their result is never stored.
template <int HD, int E>
KILN_DEVICE void load_v_dims(const unsigned* row, int lane, float* f) {
    if constexpr (E == 1) {
        const int d = min(lane, HD - 1);
        const unsigned w = row[d >> 1];
        f[0] = (d & 1) ? bf16x2_hi(w) : bf16x2_lo(w);
    } else if constexpr (E == 2) {
        const unsigned w = row[lane];
        f[0] = bf16x2_lo(w); f[1] = bf16x2_hi(w);
    } else if constexpr (E == 4) {
        const uint2 w = *reinterpret_cast<const uint2*>(row + 2 * lane);
        f[0] = bf16x2_lo(w.x); f[1] = bf16x2_hi(w.x); f[2] = bf16x2_lo(w.y); f[3] = bf16x2_hi(w.y);
    } else {
        static_assert(E == 8, "head_dim must be 16, 32, 64, 128 or 256");
        const uint4 w = *reinterpret_cast<const uint4*>(row + 4 * lane);
        f[0] = bf16x2_lo(w.x); f[1] = bf16x2_hi(w.x); f[2] = bf16x2_lo(w.y); f[3] = bf16x2_hi(w.y);
        f[4] = bf16x2_lo(w.z); f[5] = bf16x2_hi(w.z); f[6] = bf16x2_lo(w.w); f[7] = bf16x2_hi(w.w);
    }
}

template <int HD>
KILN_DEVICE void prefill_tile(bf16* __restrict__ out, const bf16* __restrict__ q, const bf16* __restrict__ k_cache,
                              const bf16* __restrict__ v_cache, const int* __restrict__ block_tables,
                              const int* __restrict__ seq_q_start, const int* __restrict__ seq_q_len,
                              const int* __restrict__ seq_ctx_len, const int* __restrict__ tile_seq,
                              const int* __restrict__ tile_q0, int num_heads, int num_kv_heads, int heads_per_block,
                              int max_blocks, int block_size, float scale) {
    constexpr int E = HD >= 32 ? HD / 32 : 1;  // output dims per lane (lanes >= HD idle when HD < 32)
    KILN_DYNAMIC_SMEM(unsigned char, smem_raw);
    PrefillSmem<HD>& sm = *reinterpret_cast<PrefillSmem<HD>*>(smem_raw);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    const int s = tile_seq[blockIdx.x], qt0 = tile_q0[blockIdx.x];
    const int group = num_heads / num_kv_heads;
    const int chunks = (group + heads_per_block - 1) / heads_per_block;
    const int kvh = blockIdx.y / chunks;
    const int g0 = (blockIdx.y % chunks) * heads_per_block;
    const int gb = min(heads_per_block, group - g0);
    const int toks = PF_ROWS / heads_per_block;  // tokens per block
    const int q_start = seq_q_start[s], q_len = seq_q_len[s], ctx = seq_ctx_len[s];
    const int first_pos = ctx - q_len;           // position of query 0
    const int* table = block_tables + (long long)s * max_blocks;

    // Row r of the block: token qt0 + r / heads_per_block, head g0 + r % heads_per_block.
    const float qscale = scale * 1.4426950408889634f;  // exp2-domain softmax
    for (int i = threadIdx.x; i < PF_ROWS * (HD / 8); i += PF_THREADS) {
        const int r = i / (HD / 8), c = i % (HD / 8);
        const int tok = qt0 + r / heads_per_block, g = r % heads_per_block;
        float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (r < toks * heads_per_block && g < gb && tok < q_len) {
            load8(q + ((long long)(q_start + tok) * num_heads + kvh * group + g0 + g) * HD + c * 8, v);
        }
#pragma unroll
        for (int e = 0; e < 8; e++) sm.q[r][c * 8 + e] = v[e] * qscale;
    }

    // Per-row state of this warp's rows (row = warp * PF_RW + rr).
    int qpos[PF_RW];
    float m[PF_RW], l[PF_RW], acc[PF_RW][E];
#pragma unroll
    for (int rr = 0; rr < PF_RW; rr++) {
        const int r = warp * PF_RW + rr;
        const int tok = qt0 + r / heads_per_block, g = r % heads_per_block;
        const bool valid = r < toks * heads_per_block && g < gb && tok < q_len;
        qpos[rr] = valid ? first_pos + tok : -1;  // -1: attends to nothing
        m[rr] = -kiln_inf();
        l[rr] = 0.f;
#pragma unroll
        for (int e = 0; e < E; e++) acc[rr][e] = 0.f;
    }
    const int last_tok = min(qt0 + toks, q_len) - 1;
    const int kv_end = first_pos + last_tok + 1;  // keys any row of the block may see

    for (int k0 = 0; k0 < kv_end; k0 += PF_BN) {
        __syncthreads();  // previous tile fully consumed (and q stored, first time)
        load_kv_tile<HD>(sm, k_cache, v_cache, table, k0, kv_end, kvh, num_kv_heads, block_size);
        __syncthreads();

        // Scores: lane = key k0 + lane.
        float sc[PF_RW];
#pragma unroll
        for (int rr = 0; rr < PF_RW; rr++) sc[rr] = 0.f;
#pragma unroll 4
        for (int c = 0; c < HD / 8; c++) {
            const uint4 kw = *reinterpret_cast<const uint4*>(&sm.k[lane][c * 4]);
            const float kf[8] = {bf16x2_lo(kw.x), bf16x2_hi(kw.x), bf16x2_lo(kw.y), bf16x2_hi(kw.y),
                                 bf16x2_lo(kw.z), bf16x2_hi(kw.z), bf16x2_lo(kw.w), bf16x2_hi(kw.w)};
#pragma unroll
            for (int rr = 0; rr < PF_RW; rr++) {
                const float4 qa = *reinterpret_cast<const float4*>(&sm.q[warp * PF_RW + rr][c * 8]);
                const float4 qb = *reinterpret_cast<const float4*>(&sm.q[warp * PF_RW + rr][c * 8 + 4]);
                sc[rr] += qa.x * kf[0] + qa.y * kf[1] + qa.z * kf[2] + qa.w * kf[3] + qb.x * kf[4] + qb.y * kf[5] +
                          qb.z * kf[6] + qb.w * kf[7];
            }
        }
        // Online softmax per row (exp2 domain).
        const int key = k0 + lane;
#pragma unroll
        for (int rr = 0; rr < PF_RW; rr++) {
            const float s_ = key <= qpos[rr] ? sc[rr] : -kiln_inf();
            const float tile_max = warp_max(s_);
            const float m_new = fmaxf(m[rr], tile_max);
            // Rows that have seen no key yet keep m = -inf; guard the exp arguments.
            const float p = m_new == -kiln_inf() ? 0.f : exp2f(s_ - m_new);
            const float corr = m[rr] == -kiln_inf() ? 0.f : exp2f(m[rr] - m_new);
            l[rr] = l[rr] * corr + warp_sum(p);
            m[rr] = m_new;
#pragma unroll
            for (int e = 0; e < E; e++) acc[rr][e] *= corr;
            sm.p[warp][rr][lane] = p;
        }
        __syncwarp();
        // P.V: lane owns dims [lane * E, lane * E + E).
#pragma unroll 2
        for (int j = 0; j < PF_BN; j += 4) {
            float vf[4][E];
#pragma unroll
            for (int jj = 0; jj < 4; jj++) load_v_dims<HD, E>(sm.v[j + jj], lane, vf[jj]);
#pragma unroll
            for (int rr = 0; rr < PF_RW; rr++) {
                const float4 p4 = *reinterpret_cast<const float4*>(&sm.p[warp][rr][j]);
#pragma unroll
                for (int e = 0; e < E; e++)
                    acc[rr][e] += p4.x * vf[0][e] + p4.y * vf[1][e] + p4.z * vf[2][e] + p4.w * vf[3][e];
            }
        }
        __syncwarp();
    }

#pragma unroll
    for (int rr = 0; rr < PF_RW; rr++) {
        if (qpos[rr] < 0 || lane * E >= HD) continue;
        const int r = warp * PF_RW + rr;
        const int tok = qt0 + r / heads_per_block, g = r % heads_per_block;
        bf16* o = out + ((long long)(q_start + tok) * num_heads + kvh * group + g0 + g) * HD + lane * E;
        const float inv = 1.f / l[rr];
#pragma unroll
        for (int e = 0; e < E; e++) o[e] = f32_to_bf16(acc[rr][e] * inv);
    }
}

// out:          [num_tokens, num_heads, HD] bf16 (rows of the listed sequences)
// q:            [num_tokens, num_heads, HD] bf16 (rotated)
// k_cache:      [num_blocks, block_size, num_kv_heads, HD] bf16
// v_cache:      [num_blocks, block_size, num_kv_heads, HD] bf16
// block_tables: [num_seqs, max_blocks] i32
// seq_q_start, seq_q_len, seq_ctx_len: [num_seqs] i32
// tile_seq, tile_q0: [num_tiles] i32 -- tile i covers queries
//               tile_q0[i] .. tile_q0[i] + PF_ROWS / heads_per_block of sequence tile_seq[i]
// heads_per_block: min(G, 32), and 32 % heads_per_block need not be 0 (rows beyond
//               (32 / heads_per_block) * heads_per_block stay idle).
#define DEFINE_PREFILL(HD)                                                                                           \
    extern "C" __global__ void __launch_bounds__(PF_THREADS) prefill_attention_bf16_hd##HD(                        \
        bf16* __restrict__ out, const bf16* __restrict__ q, const bf16* __restrict__ k_cache,                      \
        const bf16* __restrict__ v_cache, const int* __restrict__ block_tables, const int* __restrict__ seq_q_start, \
        const int* __restrict__ seq_q_len, const int* __restrict__ seq_ctx_len, const int* __restrict__ tile_seq,  \
        const int* __restrict__ tile_q0, int num_heads, int num_kv_heads, int heads_per_block, int max_blocks,     \
        int block_size, float scale) {                                                                             \
        prefill_tile<HD>(out, q, k_cache, v_cache, block_tables, seq_q_start, seq_q_len, seq_ctx_len, tile_seq,   \
                         tile_q0, num_heads, num_kv_heads, heads_per_block, max_blocks, block_size, scale);        \
    }

DEFINE_PREFILL(16)
DEFINE_PREFILL(32)
DEFINE_PREFILL(64)
DEFINE_PREFILL(128)
DEFINE_PREFILL(256)

// Launch (launch.rs: prefill_dims): grid (num_tiles, num_kv_heads *
// ceil(G / heads_per_block)), block 128, dynamic smem sizeof(PrefillSmem<HD>)
// = 32*HD*4 + 32*(HD/2+4)*4 + 32*(HD/2)*4 + 4*8*32*4 bytes (HD=128: 37,376;
// HD=256 needs the >48 KB opt-in, which the launcher sets).
