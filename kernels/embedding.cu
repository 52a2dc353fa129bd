// embedding.cu -- token embedding gather.
//
// What: out[t, :] = table[ids[t], :] for every token t of the step.
// Why: the first op of every forward pass; a pure copy, so it is written as
// 16-byte loads and stores (8 bf16 per thread per iteration) and is bound by
// memory bandwidth. An id outside [0, vocab) yields a zero row instead of an
// out-of-bounds read (ids are validated by the tokenizer; this is a guard).
#include "common.cuh"

// out:   [num_tokens, hidden] bf16
// table: [vocab, hidden] bf16
// ids:   [num_tokens] u32
// hidden % 8 == 0.
extern "C" __global__ void embedding_bf16(bf16* __restrict__ out, const bf16* __restrict__ table,
                                          const unsigned* __restrict__ ids, int num_tokens, int hidden,
                                          int vocab) {
    const int t = blockIdx.x;
    if (t >= num_tokens) return;
    const unsigned id = ids[t];
    uint4* dst = reinterpret_cast<uint4*>(out + (long long)t * hidden);
    const int nvec = hidden / 8;
    if (id >= (unsigned)vocab) {
        for (int i = threadIdx.x; i < nvec; i += blockDim.x) dst[i] = make_uint4(0u, 0u, 0u, 0u);
        return;
    }
    const uint4* src = reinterpret_cast<const uint4*>(table + (long long)id * hidden);
    for (int i = threadIdx.x; i < nvec; i += blockDim.x) dst[i] = src[i];
}

// Launch: grid (num_tokens), block min(1024, round_up(hidden / 8, 32)) threads,
// no shared memory (src/backend/cuda/launch.rs: embedding_dims).
