// gather_last.cu -- rows of the last query token of each sequence.
//
// What: out[s, :] = x[rows[s], :], with rows[s] the index of the last query
// token of the s-th sequence that wants logits.
// Why: the logits GEMM ([S, hidden] x [hidden, vocab]) then runs on S rows
// instead of every token of the step: a 1,024-token prompt chunk costs one
// row of lm_head, not 1,024.
#include "common.cuh"

// out:  [num_rows, hidden] bf16
// x:    [num_tokens, hidden] bf16
// rows: [num_rows] i32, each in [0, num_tokens)
// hidden % 8 == 0.
extern "C" __global__ void gather_rows_bf16(bf16* __restrict__ out, const bf16* __restrict__ x,
                                            const int* __restrict__ rows, int num_rows, int hidden) {
    const int s = blockIdx.x;
    if (s >= num_rows) return;
    const uint4* src = reinterpret_cast<const uint4*>(x + (long long)rows[s] * hidden);
    uint4* dst = reinterpret_cast<uint4*>(out + (long long)s * hidden);
    for (int i = threadIdx.x; i < hidden / 8; i += blockDim.x) dst[i] = src[i];
}

// Launch (launch.rs: embedding_dims, the same row-copy shape): grid
// (num_rows), block min(1024, round_up(hidden / 8, 32)).
