// silu_and_mul.cu -- the SwiGLU activation of the MLP.
//
// What: out[t, i] = bf16(bf16(silu(gate[t, i])) * up[t, i]) where the fused
// gate_up projection writes gate in columns [0, I) and up in [I, 2I).
// Why: one pass over the [T, 2I] GEMM output instead of three elementwise
// kernels; roundings follow Hugging Face's act_fn(gate) * up in bf16.
#include "common.cuh"

KILN_DEVICE float silu(float g) { return g / (1.0f + expf(-g)); }

// out:     [tokens, inter] bf16
// gate_up: [tokens, 2 * inter] bf16
// inter % 8 == 0.
extern "C" __global__ void silu_and_mul_bf16(bf16* __restrict__ out, const bf16* __restrict__ gate_up, int tokens,
                                             int inter) {
    const int nvec = inter / 8;
    const long long total = (long long)tokens * nvec;
    for (long long v = blockIdx.x * (long long)blockDim.x + threadIdx.x; v < total;
         v += (long long)gridDim.x * blockDim.x) {
        const long long t = v / nvec;
        const int i = (int)(v - t * nvec) * 8;
        float g[8], u[8], o[8];
        load8(gate_up + t * 2 * inter + i, g);
        load8(gate_up + t * 2 * inter + inter + i, u);
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] = round_bf16(silu(g[e])) * u[e];
        store8(out + t * inter + i, o);
    }
}

// Launch (launch.rs: elementwise_dims): block 256, grid
// min(ceil(tokens * inter / 8 / 256), 16 * num_SMs), grid-stride loop.
