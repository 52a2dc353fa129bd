// encoder.cu -- the ops of BERT-family encoders (embedding models), in f32.
//
// What:
//   bert_embeddings_f32:   out[t] = word[id_t] + (position[pos_t] + token_type[type_t])
//   layer_norm_f32:        v = (x + x_bias) + residual;
//                          out = (v - mean(v)) * rsqrt(var(v) + eps) * w + b
//                          (biased variance, as torch.nn.LayerNorm; x_bias and
//                          residual optional)
//   gelu_erf_f32:          out = 0.5 v (1 + erf(v / sqrt 2)), v = x + bias
//                          (the exact GELU of Hendrycks and Gimpel 2016, which
//                          transformers calls "gelu"; not the tanh approximation)
//   encoder_attention_f32: bidirectional softmax(q k^T / sqrt(d)) v of packed
//                          variable-length sequences (no mask, no padding, no
//                          KV cache), q/k/v bias added on load
//   embedding_pool_f32:    one vector per sequence (mean, first or last token),
//                          optionally L2-normalised (sentence-transformers'
//                          Pooling and Normalize modules)
// Why: an encoder is post-LayerNorm (Devlin et al. 2018; transformers'
// modeling_bert.py): every linear layer's bias is added by the kernel that
// reads its output (attention for q/k/v, layer_norm_f32 for the two output
// projections, gelu_erf_f32 for the intermediate one), so the GEMMs need no
// epilogue and no separate bias pass over memory.
//
// Everything is f32 in memory (the checkpoints are f32; the CPU encoder and
// sentence-transformers compute in f32, and the CUDA encoder is held to
// cosine >= 0.99999 against them), arithmetic is f32.
//
// Packed sequences: sequence s owns rows cu_seqlens[s] .. cu_seqlens[s + 1]
// of every [tokens, ...] array (the cu_seqlens convention of varlen
// flash-attention), rows of a sequence attend to each other and nothing else.
#include "common.cuh"

// ---------------------------------------------------------------------------
// bert_embeddings_f32
//
// out:        [tokens, hidden] f32
// word:       [vocab, hidden] f32
// position:   [max_pos, hidden] f32
// token_type: [type_vocab, hidden] f32
// ids:        [tokens] u32
// positions:  [tokens] i32 (position of each token in its sequence)
// type_ids:   [tokens] i32, or null (every token has type 0)
// hidden % 4 == 0. An id, position or type out of range gives a zero row
// (inputs are validated on the host; this is a guard, not a feature).
extern "C" __global__ void bert_embeddings_f32(float* __restrict__ out, const float* __restrict__ word,
                                               const float* __restrict__ position,
                                               const float* __restrict__ token_type,
                                               const unsigned* __restrict__ ids, const int* __restrict__ positions,
                                               const int* __restrict__ type_ids, int tokens, int hidden, int vocab,
                                               int max_pos, int type_vocab) {
    const int t = blockIdx.x;
    if (t >= tokens) return;
    const unsigned id = ids[t];
    const int pos = positions[t];
    const int ty = type_ids != nullptr ? type_ids[t] : 0;
    float4* dst = reinterpret_cast<float4*>(out + (long long)t * hidden);
    const int nvec = hidden / 4;
    if (id >= (unsigned)vocab || pos < 0 || pos >= max_pos || ty < 0 || ty >= type_vocab) {
        for (int i = threadIdx.x; i < nvec; i += blockDim.x) dst[i] = make_float4(0.f, 0.f, 0.f, 0.f);
        return;
    }
    const float4* w = reinterpret_cast<const float4*>(word + (long long)id * hidden);
    const float4* p = reinterpret_cast<const float4*>(position + (long long)pos * hidden);
    const float4* y = reinterpret_cast<const float4*>(token_type + (long long)ty * hidden);
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) {
        const float4 a = w[i], b = p[i], c = y[i];
        dst[i] = make_float4(a.x + (b.x + c.x), a.y + (b.y + c.y), a.z + (b.z + c.z), a.w + (b.w + c.w));
    }
}

// Launch (launch.rs: encoder_row_dims): grid (tokens), block
// clamp(round_up(hidden / 4, 32), 32, 1024), no shared memory.

// ---------------------------------------------------------------------------
// layer_norm_f32
//
// Each thread keeps its slice of the row in registers (at most LN_MAX_VPT
// float4 vectors), so the row is read once and written once; mean and
// variance are two block reductions (the variance over (v - mean)^2, not
// E[v^2] - mean^2, which cancels badly).

#define LN_MAX_VPT 4

// out:      [rows, hidden] f32; may be the same array as `residual` (each
//           thread reads its elements before it writes them)
// x:        [rows, hidden] f32 (a GEMM's output, or the embeddings)
// x_bias:   [hidden] f32, or null
// residual: [rows, hidden] f32, or null
// weight, bias: [hidden] f32
// hidden % 4 == 0 and hidden / 4 <= LN_MAX_VPT * blockDim.x.
extern "C" __global__ void layer_norm_f32(float* out, const float* __restrict__ x, const float* __restrict__ x_bias,
                                          const float* residual, const float* __restrict__ weight,
                                          const float* __restrict__ bias, int rows, int hidden, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const long long off = (long long)row * hidden;
    const int nvec = hidden / 4;
    float4 v[LN_MAX_VPT];
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < LN_MAX_VPT; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < nvec) {
            float4 a = reinterpret_cast<const float4*>(x + off)[i];
            if (x_bias != nullptr) {
                const float4 b = reinterpret_cast<const float4*>(x_bias)[i];
                a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
            }
            if (residual != nullptr) {
                const float4 r = reinterpret_cast<const float4*>(residual + off)[i];
                a.x += r.x; a.y += r.y; a.z += r.z; a.w += r.w;
            }
            v[j] = a;
            sum += (a.x + a.y) + (a.z + a.w);
        }
    }
    const float mean = block_sum(sum, scratch) / (float)hidden;
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < LN_MAX_VPT; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < nvec) {
            const float a = v[j].x - mean, b = v[j].y - mean, c = v[j].z - mean, d = v[j].w - mean;
            ss += (a * a + b * b) + (c * c + d * d);
        }
    }
    const float var = block_sum(ss, scratch) / (float)hidden;
    const float inv = 1.f / sqrtf(var + eps);
#pragma unroll
    for (int j = 0; j < LN_MAX_VPT; j++) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < nvec) {
            const float4 g = reinterpret_cast<const float4*>(weight)[i];
            const float4 b = reinterpret_cast<const float4*>(bias)[i];
            float4 o;
            o.x = ((v[j].x - mean) * inv) * g.x + b.x;
            o.y = ((v[j].y - mean) * inv) * g.y + b.y;
            o.z = ((v[j].z - mean) * inv) * g.z + b.z;
            o.w = ((v[j].w - mean) * inv) * g.w + b.w;
            reinterpret_cast<float4*>(out + off)[i] = o;
        }
    }
}

// Launch (launch.rs: layer_norm_dims): grid (rows), block
// clamp(round_up(ceil(hidden / 4 / LN_MAX_VPT), 32), 32, 1024), no dynamic
// shared memory. hidden <= 4 * 4 * 1024 = 16384.

// ---------------------------------------------------------------------------
// gelu_erf_f32
//
// out:  [rows, cols] f32; may be the same array as x
// x:    [rows, cols] f32
// bias: [cols] f32, or null
// cols % 4 == 0. erff is CUDA's (at most 2 ulp).
extern "C" __global__ void gelu_erf_f32(float* out, const float* x, const float* __restrict__ bias, int rows,
                                        int cols) {
    const long long nvec = (long long)rows * cols / 4;
    const int cvec = cols / 4;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < nvec;
         i += (long long)gridDim.x * blockDim.x) {
        float e[4];
        const float4 a = reinterpret_cast<const float4*>(x)[i];
        e[0] = a.x; e[1] = a.y; e[2] = a.z; e[3] = a.w;
        if (bias != nullptr) {
            const float4 b = reinterpret_cast<const float4*>(bias)[i % cvec];
            e[0] += b.x; e[1] += b.y; e[2] += b.z; e[3] += b.w;
        }
#pragma unroll
        for (int k = 0; k < 4; k++) e[k] = 0.5f * e[k] * (1.f + erff(e[k] * 0.70710678118654752f));
        reinterpret_cast<float4*>(out)[i] = make_float4(e[0], e[1], e[2], e[3]);
    }
}

// Launch (launch.rs: elementwise_dims over rows * cols / 4 vectors):
// grid-stride, 256 threads.

// ---------------------------------------------------------------------------
// encoder_attention_f32_hd{HD}
//
// Tiling (flash-attention style, SIMT f32): a block owns EA_ROWS = 32 query
// rows of one sequence and one head; keys stream through shared memory
// EA_BN = 32 at a time, and each row keeps a running max and sum (online
// softmax, Milakov and Gimelshein 2018), so the scores never leave the chip.
// Each warp owns 8 rows; for the scores a lane owns one key, for P.V a lane
// owns HD / 32 output dims (lane, lane + 32, ...).

#define EA_THREADS 128
#define EA_WARPS 4
#define EA_ROWS 32
#define EA_RW 8
#define EA_BN 32

template <int HD>
struct EncoderAttnSmem {
    float q[EA_ROWS][HD];            // query rows (bias added, pre-scaled)
    float k[EA_BN][HD + 1];          // key tile; the pad makes lane j's row reads conflict-free
    float v[EA_BN][HD];              // value tile
    float p[EA_WARPS][EA_RW][EA_BN]; // probabilities of the tile, per warp and row
};

// out:       [tokens, num_heads * HD] f32
// qkv:       [tokens, 3 * num_heads * HD] f32 (q, k, v side by side in each row,
//            head h at columns h * HD of each part; a GEMM's output)
// qkv_bias:  [3 * num_heads * HD] f32, or null
// cu_seqlens: [num_seqs + 1] i32, cu_seqlens[0] = 0, increasing
// scale:     1 / sqrt(HD)
template <int HD>
KILN_DEVICE void encoder_attention(float* __restrict__ out, const float* __restrict__ qkv,
                                   const float* __restrict__ qkv_bias, const int* __restrict__ cu_seqlens,
                                   int num_heads, float scale) {
    static_assert(HD % 32 == 0, "head_dim must be a multiple of 32");
    constexpr int E = HD / 32;
    KILN_DYNAMIC_SMEM(unsigned char, smem_raw);
    EncoderAttnSmem<HD>& sm = *reinterpret_cast<EncoderAttnSmem<HD>*>(smem_raw);
    const int s = blockIdx.y, h = blockIdx.z;
    const int start = cu_seqlens[s], len = cu_seqlens[s + 1] - start;
    const int q0 = blockIdx.x * EA_ROWS;
    if (q0 >= len) return;  // the whole block: tiles past this sequence's end
    const int width = num_heads * HD;
    const long long stride = 3LL * width;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    for (int i = threadIdx.x; i < EA_ROWS * HD; i += EA_THREADS) {
        const int r = i / HD, d = i % HD;
        float q = 0.f;
        if (q0 + r < len) {
            q = qkv[(start + q0 + r) * stride + h * HD + d];
            if (qkv_bias != nullptr) q += qkv_bias[h * HD + d];
            q *= scale;
        }
        sm.q[r][d] = q;
    }

    float m[EA_RW], l[EA_RW], acc[EA_RW][E];
#pragma unroll
    for (int r = 0; r < EA_RW; r++) {
        m[r] = -kiln_inf();
        l[r] = 0.f;
#pragma unroll
        for (int e = 0; e < E; e++) acc[r][e] = 0.f;
    }

    for (int k0 = 0; k0 < len; k0 += EA_BN) {
        __syncthreads();  // the previous tile is no longer read
        for (int i = threadIdx.x; i < EA_BN * HD; i += EA_THREADS) {
            const int j = i / HD, d = i % HD;
            float kk = 0.f, vv = 0.f;
            if (k0 + j < len) {
                const long long row = (start + k0 + j) * stride;
                kk = qkv[row + width + h * HD + d];
                vv = qkv[row + 2 * width + h * HD + d];
                if (qkv_bias != nullptr) {
                    kk += qkv_bias[width + h * HD + d];
                    vv += qkv_bias[2 * width + h * HD + d];
                }
            }
            sm.k[j][d] = kk;
            sm.v[j][d] = vv;
        }
        __syncthreads();
        const int nk = min(EA_BN, len - k0);
        const bool live = lane < nk;
#pragma unroll
        for (int r = 0; r < EA_RW; r++) {
            const int row = warp * EA_RW + r;
            if (q0 + row >= len) break;  // the same for every lane of the warp
            float sc = -kiln_inf();
            if (live) {
                float d0 = 0.f;
#pragma unroll 8
                for (int d = 0; d < HD; d++) d0 += sm.q[row][d] * sm.k[lane][d];
                sc = d0;
            }
            const float m_new = fmaxf(m[r], warp_max(sc));  // finite: key k0 is live
            const float p = live ? expf(sc - m_new) : 0.f;
            const float corr = expf(m[r] - m_new);
            l[r] = l[r] * corr + warp_sum(p);
            m[r] = m_new;
            sm.p[warp][r][lane] = p;
            __syncwarp();
#pragma unroll
            for (int e = 0; e < E; e++) {
                float a = acc[r][e] * corr;
                for (int j = 0; j < nk; j++) a += sm.p[warp][r][j] * sm.v[j][lane + 32 * e];
                acc[r][e] = a;
            }
        }
    }

#pragma unroll
    for (int r = 0; r < EA_RW; r++) {
        const int row = warp * EA_RW + r;
        if (q0 + row >= len) break;
        const float inv = 1.f / l[r];
        float* o = out + (long long)(start + q0 + row) * width + h * HD;
#pragma unroll
        for (int e = 0; e < E; e++) o[lane + 32 * e] = acc[r][e] * inv;
    }
}

#define DEFINE_ENCODER_ATTENTION(HD)                                                                          \
    extern "C" __global__ void __launch_bounds__(EA_THREADS) encoder_attention_f32_hd##HD(                    \
        float* __restrict__ out, const float* __restrict__ qkv, const float* __restrict__ qkv_bias,          \
        const int* __restrict__ cu_seqlens, int num_heads, float scale) {                                     \
        encoder_attention<HD>(out, qkv, qkv_bias, cu_seqlens, num_heads, scale);                             \
    }

DEFINE_ENCODER_ATTENTION(32)
DEFINE_ENCODER_ATTENTION(64)
DEFINE_ENCODER_ATTENTION(128)

// Launch (launch.rs: encoder_attention_dims): grid (ceil(longest sequence /
// EA_ROWS), num_seqs, num_heads), block EA_THREADS, dynamic shared memory
// sizeof(EncoderAttnSmem<HD>) (over 48 KB for HD = 128: the loader opts in).

// ---------------------------------------------------------------------------
// embedding_pool_f32
//
// out:        [num_seqs, hidden] f32
// hidden_states: [tokens, hidden] f32
// cu_seqlens: [num_seqs + 1] i32
// mode: 0 mean over the sequence's rows, 1 its first row (CLS), 2 its last row
// normalize: nonzero: out /= max(||out||, 1e-12) (torch.nn.functional.normalize)
extern "C" __global__ void embedding_pool_f32(float* __restrict__ out, const float* __restrict__ hidden_states,
                                              const int* __restrict__ cu_seqlens, int num_seqs, int hidden, int mode,
                                              int normalize) {
    __shared__ float scratch[32];
    const int s = blockIdx.x;
    if (s >= num_seqs) return;
    const int start = cu_seqlens[s], len = cu_seqlens[s + 1] - start;
    float* o = out + (long long)s * hidden;
    float ss = 0.f;
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        float v;
        if (mode == 0) {
            float sum = 0.f;
            for (int r = 0; r < len; r++) sum += hidden_states[(long long)(start + r) * hidden + c];
            v = sum / (float)len;
        } else {
            const int r = mode == 1 ? start : start + len - 1;
            v = hidden_states[(long long)r * hidden + c];
        }
        o[c] = v;
        ss += v * v;
    }
    if (normalize == 0) return;  // the same for the whole block
    const float inv = 1.f / fmaxf(sqrtf(block_sum(ss, scratch)), 1e-12f);
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) o[c] *= inv;
}

// Launch (launch.rs: pool_dims): grid (num_seqs), block
// clamp(round_up(hidden, 32), 32, 1024), no dynamic shared memory.
