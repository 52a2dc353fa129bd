// sampling.cu -- logits processing and token sampling on the GPU.
//
// What, for each row (one sequence that wants a token this step):
//   1. apply_penalties_f32: logit bias, then the repetition penalty (divide a
//      positive logit / multiply a negative one, for every token seen in the
//      prompt or the output), then frequency and presence penalties
//      (x -= count * frequency + presence, for tokens of the output).
//   2. apply_token_mask_f32 (constrained decoding, only when a row has a
//      mask): x = -inf for every token the row's packed allowed-token bitmask
//      does not allow (bit i % 32 of word i / 32; bits past V ignored). A
//      mask allowing none of the V tokens leaves its row as it is (the engine
//      fails such a sequence; sampling must not fail first). As the CPU
//      sampler does it (sampling::mask::apply_mask): after bias and
//      penalties, before logprobs, temperature and truncation, so masked
//      tokens are never drawn and logprobs are those of the constrained
//      distribution.
//   3. sample_f32: greedy (temperature 0: argmax, the lowest id on ties), or
//      y = x / temperature restricted to
//        top-k:  the k largest y (ties at the k-th value kept),
//        top-p:  then the fewest largest y whose probability mass >= top_p,
//        min-p:  then y >= max(y) + ln(min_p),
//      and one draw from the renormalised distribution. Also returns the
//      log-probability of the chosen token under log_softmax(x) (after bias
//      and penalties, before temperature and truncation).
//   4. top_logprobs_f32 (only when a request asks): the n most likely ids of
//      log_softmax(x) with their log-probabilities, best first, ties (e.g.
//      the -inf of masked tokens) broken by the lower id.
// Why: only ids (and a few logprobs) cross to the host, not [rows, vocab]
// logits; the step's one synchronisation is reading them.
//
// Determinism: the draw uses Philox4x32-10 keyed by the row's 64-bit seed with
// the row's 64-bit step as counter, so a request's samples depend on
// (seed, step) only -- not on the batch it shares or the run. Thresholds are
// exact radix selections on order-preserving float keys; probability masses
// are summed in 32.32 fixed point (integer adds are order independent), so
// the kept set and the draw are bit-reproducible.
//
// Draw order: token i belongs to thread i % SAMPLE_THREADS; the cumulative
// distribution runs over threads in order, and within a thread over its
// tokens in increasing id. (Any fixed order gives a correct sample; this one
// keeps loads coalesced. The host reference in tests replays the same order.)
#include "common.cuh"

#define SAMPLE_THREADS 1024
#define TOPN_CAP 128

KILN_DEVICE float sane(float x) { return x != x ? -kiln_inf() : x; }  // NaN -> -inf

// exp(y - m) in 32.32 fixed point: <= 2^32, so a vocabulary of 2^20 sums below 2^52.
KILN_DEVICE unsigned long long mass_fp(float y, float m) {
    return (unsigned long long)(expf(y - m) * 4294967296.0f);
}

KILN_DEVICE unsigned long long block_sum_u64(unsigned long long v, unsigned long long* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0ull;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Exclusive prefix sum over threads in index order; *total gets the sum.
KILN_DEVICE unsigned long long block_exclusive_scan_u64(unsigned long long v, unsigned long long* scratch,
                                                        unsigned long long* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    unsigned long long inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long n = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += n;
    }
    __syncthreads();
    if (lane == 31) scratch[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        unsigned long long w = lane < nwarps ? scratch[lane] : 0ull;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const unsigned long long n = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += n;
        }
        if (lane < nwarps) scratch[lane] = w;  // inclusive scan of warp totals
    }
    __syncthreads();
    const unsigned long long before = warp > 0 ? scratch[warp - 1] : 0ull;
    *total = scratch[nwarps - 1];
    return before + inc - v;
}

struct ArgMax {
    float v;
    int i;
};

KILN_DEVICE ArgMax better(ArgMax a, ArgMax b) { return (b.v > a.v || (b.v == a.v && b.i < a.i)) ? b : a; }

KILN_DEVICE ArgMax block_argmax(ArgMax a, float* sv, int* si) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        ArgMax b;
        b.v = __shfl_xor_sync(0xffffffffu, a.v, o);
        b.i = __shfl_xor_sync(0xffffffffu, a.i, o);
        a = better(a, b);
    }
    __syncthreads();
    if (lane == 0) { sv[warp] = a.v; si[warp] = a.i; }
    __syncthreads();
    a.v = lane < nwarps ? sv[lane] : -kiln_inf();
    a.i = lane < nwarps ? si[lane] : 0x7fffffff;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        ArgMax b;
        b.v = __shfl_xor_sync(0xffffffffu, a.v, o);
        b.i = __shfl_xor_sync(0xffffffffu, a.i, o);
        a = better(a, b);
    }
    return a;
}

struct SelectSmem {
    unsigned long long hist[256];
    unsigned long long scratch[32];
    unsigned long long target;
    unsigned prefix;
};

// Radix selection over the keys of y = sane(x) * inv_t restricted to key >= floor_key:
// the largest key K with weight(key >= K) >= target, where the weight of an
// element is 1 (BY_MASS false: K is the target-th largest key) or its fixed-point
// mass exp(y - m) (BY_MASS true). target must be >= 1 and <= the total weight.
template <bool BY_MASS>
KILN_DEVICE unsigned radix_select(const float* __restrict__ x, int V, float inv_t, float m, unsigned floor_key,
                                  unsigned long long target, SelectSmem& sm) {
    unsigned prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) sm.hist[b] = 0ull;
        __syncthreads();
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            const float y = sane(x[i]) * inv_t;
            const unsigned k = float_order_key(y);
            if (k >= floor_key && (k & mask) == prefix)
                atomicAdd(&sm.hist[(k >> shift) & 255u], BY_MASS ? mass_fp(y, m) : 1ull);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned long long cum = 0ull;
            int b = 255;
            for (; b > 0; b--) {
                if (cum + sm.hist[b] >= target) break;
                cum += sm.hist[b];
            }
            sm.prefix = prefix | ((unsigned)b << shift);
            sm.target = target - cum;
        }
        __syncthreads();
        prefix = sm.prefix;
        target = sm.target;
        mask |= 255u << shift;
    }
    return prefix;
}

// logits:       [rows, V] f32, updated in place
// pen_offsets:  [rows + 1] i32, CSR row starts into pen_ids / pen_counts
// pen_ids:      [nnz] u32, distinct per row: every token of the prompt or output
// pen_counts:   [nnz] f32, occurrences of the token in the output (0: prompt only)
// repetition, frequency, presence: [rows] f32 (1, 0, 0: off)
// bias_offsets: [rows + 1] i32; bias_ids: [nb] u32 (distinct per row); bias_values: [nb] f32
extern "C" __global__ void apply_penalties_f32(float* __restrict__ logits, const int* __restrict__ pen_offsets,
                                               const unsigned* __restrict__ pen_ids,
                                               const float* __restrict__ pen_counts,
                                               const float* __restrict__ repetition,
                                               const float* __restrict__ frequency,
                                               const float* __restrict__ presence,
                                               const int* __restrict__ bias_offsets,
                                               const unsigned* __restrict__ bias_ids,
                                               const float* __restrict__ bias_values, int rows, int V) {
    const int row = blockIdx.x;
    if (row >= rows) return;
    float* x = logits + (long long)row * V;
    for (int i = bias_offsets[row] + threadIdx.x; i < bias_offsets[row + 1]; i += blockDim.x)
        if (bias_ids[i] < (unsigned)V) x[bias_ids[i]] += bias_values[i];
    __syncthreads();  // a token may carry both a bias and a penalty
    const float rep = repetition[row], freq = frequency[row], pres = presence[row];
    for (int i = pen_offsets[row] + threadIdx.x; i < pen_offsets[row + 1]; i += blockDim.x) {
        const unsigned id = pen_ids[i];
        if (id >= (unsigned)V) continue;
        float v = x[id];
        v = v > 0.f ? v / rep : v * rep;
        const float c = pen_counts[i];
        if (c > 0.f) v -= c * freq + pres;
        x[id] = v;
    }
}

// logits:     [rows, V] f32, updated in place
// mask_index: [rows] i32, the row of `masks` holding this row's mask; < 0: unconstrained
// masks:      [masked rows, ceil(V / 32)] u32, packed allowed-token bitmasks
extern "C" __global__ void apply_token_mask_f32(float* __restrict__ logits, const int* __restrict__ mask_index,
                                                const unsigned* __restrict__ masks, int rows, int V) {
    __shared__ int any_allowed;
    const int row = blockIdx.x;
    if (row >= rows) return;
    const int k = mask_index[row];
    if (k < 0) return;
    const int W = (V + 31) / 32;
    const unsigned* m = masks + (long long)k * W;
    if (threadIdx.x == 0) any_allowed = 0;
    __syncthreads();
    for (int w = threadIdx.x; w < W; w += blockDim.x) {
        const int live = V - 32 * w;  // tokens of this word inside the vocabulary
        const unsigned keep = live >= 32 ? 0xffffffffu : (1u << live) - 1u;
        if (m[w] & keep) any_allowed = 1;  // every writer stores the same value
    }
    __syncthreads();
    if (!any_allowed) return;
    float* x = logits + (long long)row * V;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
        if (!((m[i >> 5] >> (i & 31)) & 1u)) x[i] = -kiln_inf();
}

// out_ids:      [rows] u32
// out_logprobs: [rows] f32, log_softmax(x)[chosen]
// logits:       [rows, V] f32 (after apply_penalties_f32)
// temperature, top_p, min_p: [rows] f32; top_k: [rows] i32 (<= 0 or >= V: off)
// seeds, steps: [rows] u64 -- Philox key and counter of the row's draw
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_f32(unsigned* __restrict__ out_ids, float* __restrict__ out_logprobs, const float* __restrict__ logits,
               const float* __restrict__ temperature, const int* __restrict__ top_k,
               const float* __restrict__ top_p, const float* __restrict__ min_p,
               const unsigned long long* __restrict__ seeds, const unsigned long long* __restrict__ steps, int V) {
    __shared__ SelectSmem sm;
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ int chosen_sh;
    const int row = blockIdx.x;
    const float* x = logits + (long long)row * V;

    ArgMax best = {-kiln_inf(), 0x7fffffff};
    for (int i = threadIdx.x; i < V; i += blockDim.x) best = better(best, ArgMax{sane(x[i]), i});
    best = block_argmax(best, sv, si);
    const float mx = best.v;
    float zx = 0.f;
    if (mx != -kiln_inf())
        for (int i = threadIdx.x; i < V; i += blockDim.x) zx += expf(sane(x[i]) - mx);
    zx = block_sum(zx, sv);

    const float t = temperature[row];
    int chosen = best.i;
    if (t > 0.f && mx != -kiln_inf()) {
        const float inv_t = 1.f / t;
        const float my = mx * inv_t;
        unsigned floor_key = 0u;
        const int k = top_k[row];
        if (k > 0 && k < V) floor_key = radix_select<false>(x, V, inv_t, my, 0u, (unsigned long long)k, sm);
        const float p = top_p[row];
        if (p < 1.f) {
            unsigned long long z = 0ull;
            for (int i = threadIdx.x; i < V; i += blockDim.x) {
                const float y = sane(x[i]) * inv_t;
                if (float_order_key(y) >= floor_key) z += mass_fp(y, my);
            }
            z = block_sum_u64(z, sm.scratch);
            unsigned long long target = (unsigned long long)ceil((double)fmaxf(p, 0.f) * (double)z);
            if (target < 1ull) target = 1ull;
            if (target > z) target = z;
            floor_key = radix_select<true>(x, V, inv_t, my, floor_key, target, sm);
        }
        const float mp = min_p[row];
        if (mp > 0.f) floor_key = max(floor_key, float_order_key(my + logf(fminf(mp, 1.f))));

        unsigned long long part = 0ull, total = 0ull;
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            const float y = sane(x[i]) * inv_t;
            if (float_order_key(y) >= floor_key) part += mass_fp(y, my);
        }
        const unsigned long long before = block_exclusive_scan_u64(part, sm.scratch, &total);
        const unsigned long long seed = seeds[row], step = steps[row];
        const Philox4 r = philox4x32_10(Philox4{(unsigned)step, (unsigned)(step >> 32), 0u, 0u}, (unsigned)seed,
                                        (unsigned)(seed >> 32));
        const unsigned long long target = (unsigned long long)((double)uniform_from_u32(r.x) * (double)total);
        if (threadIdx.x == 0) chosen_sh = best.i;  // fallback: rounding left target past the end
        __syncthreads();
        if (target >= before && target < before + part) {
            unsigned long long cum = before;
            for (int i = threadIdx.x; i < V; i += blockDim.x) {
                const float y = sane(x[i]) * inv_t;
                if (float_order_key(y) < floor_key) continue;
                cum += mass_fp(y, my);
                if (target < cum) {
                    chosen_sh = i;
                    break;
                }
            }
        }
        __syncthreads();
        chosen = chosen_sh;
    }
    if (threadIdx.x == 0) {
        out_ids[row] = (unsigned)chosen;
        out_logprobs[row] = mx == -kiln_inf() ? -kiln_inf() : sane(x[chosen]) - mx - logf(zx);
    }
}

// Appends the tokens whose key is `kth` to cand_v / cand_i after the *count
// already there, lowest id first, until n are there: a block-wide scan over
// tiles of blockDim ids, stopping at the first tile that fills them.
KILN_DEVICE void take_ties_in_id_order(const float* __restrict__ x, int V, unsigned kth, int n, float* cand_v,
                                       int* cand_i, int* count, unsigned long long* scratch) {
    for (int base = 0; base < V; base += blockDim.x) {
        __syncthreads();
        const int have = *count;  // the same in every thread: written before the barrier
        if (have >= n) break;
        const int i = base + threadIdx.x;
        const bool tie = i < V && float_order_key(sane(x[i])) == kth;
        unsigned long long total = 0ull;
        const unsigned long long before = block_exclusive_scan_u64(tie ? 1ull : 0ull, scratch, &total);
        if (tie && have + (long long)before < n) {
            cand_v[have + before] = sane(x[i]);
            cand_i[have + before] = i;
        }
        __syncthreads();
        if (threadIdx.x == 0) *count = min(n, have + (int)total);
    }
}

// out_ids:      [rows, n] u32, best first (ties: lower id first)
// out_logprobs: [rows, n] f32, log_softmax(x) of those ids
// logits:       [rows, V] f32 (after apply_penalties_f32); 1 <= n <= 64
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    top_logprobs_f32(unsigned* __restrict__ out_ids, float* __restrict__ out_logprobs,
                     const float* __restrict__ logits, int n, int V) {
    __shared__ SelectSmem sm;
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ float cand_v[TOPN_CAP];
    __shared__ int cand_i[TOPN_CAP];
    __shared__ int count;
    const int row = blockIdx.x;
    const float* x = logits + (long long)row * V;

    ArgMax best = {-kiln_inf(), 0x7fffffff};
    for (int i = threadIdx.x; i < V; i += blockDim.x) best = better(best, ArgMax{sane(x[i]), i});
    best = block_argmax(best, sv, si);
    const float mx = best.v;
    float zx = 0.f;
    if (mx != -kiln_inf())
        for (int i = threadIdx.x; i < V; i += blockDim.x) zx += expf(sane(x[i]) - mx);
    zx = block_sum(zx, sv);
    const float lz = mx + logf(zx);

    const unsigned kth = radix_select<false>(x, V, 1.f, mx, 0u, (unsigned long long)min(n, V), sm);
    unsigned long long above = 0ull, ties = 0ull;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const unsigned key = float_order_key(sane(x[i]));
        above += key > kth;
        ties += key == kth;
    }
    above = block_sum_u64(above, sm.scratch);
    ties = block_sum_u64(ties, sm.scratch);
    // Everything at or above the n-th value fits the candidates (the usual
    // case), or only the tokens above it do (< n) and the tied ones (the
    // -inf of a masked row, say) are taken lowest id first, as the CPU does.
    const bool all_fit = above + ties <= TOPN_CAP;
    if (threadIdx.x == 0) count = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float v = sane(x[i]);
        const unsigned key = float_order_key(v);
        if (key > kth || (all_fit && key == kth)) {
            const int slot = atomicAdd(&count, 1);
            cand_v[slot] = v;
            cand_i[slot] = i;
        }
    }
    if (!all_fit) take_ties_in_id_order(x, V, kth, n, cand_v, cand_i, &count, sm.scratch);
    __syncthreads();
    if (threadIdx.x == 0) {
        const int c = min(count, TOPN_CAP);
        for (int a = 0; a < n; a++) {  // selection sort of the first n: c <= 128
            int bi = -1;
            for (int b = a; b < c; b++)
                if (bi < 0 || cand_v[b] > cand_v[bi] || (cand_v[b] == cand_v[bi] && cand_i[b] < cand_i[bi])) bi = b;
            if (bi < 0) {
                out_ids[(long long)row * n + a] = 0u;
                out_logprobs[(long long)row * n + a] = -kiln_inf();
                continue;
            }
            const float tv = cand_v[a]; const int ti = cand_i[a];
            cand_v[a] = cand_v[bi]; cand_i[a] = cand_i[bi];
            cand_v[bi] = tv; cand_i[bi] = ti;
            out_ids[(long long)row * n + a] = (unsigned)cand_i[a];
            out_logprobs[(long long)row * n + a] = cand_v[a] - lz;
        }
    }
}

// Launch (launch.rs: sampling_dims): one block per row.
//   apply_penalties_f32 and apply_token_mask_f32: block 256; sample_f32 and top_logprobs_f32: block
//   SAMPLE_THREADS (1024); static shared memory only (~2.5 KB).
