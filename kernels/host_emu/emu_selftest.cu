// emu_selftest.cu -- kernels that exercise the host emulator itself
// (tests/emu_kernels.rs). Host builds only: not in kernels::FILES, so NVRTC
// and nvcc never compile them. Each kernel's result has a plain closed form
// the test computes independently.
#include "../common.cuh"

// out: [blocks] f32, out[b] = sum of x[b * n .. b * n + n) (block_sum of common.cuh)
// warp_out: [blocks, blockDim.x / 32] f32, the warp_sum of each warp's first elements
// x:   [blocks, n] f32; blockDim.x a multiple of 32
extern "C" __global__ void emu_selftest_block_sum(float* out, float* warp_out, const float* x, int n) {
    __shared__ float scratch[32];
    const float* row = x + (long long)blockIdx.x * n;
    float v = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) v += row[i];
    const float w = warp_sum(threadIdx.x < (unsigned)n ? row[threadIdx.x] : 0.f);
    if ((threadIdx.x & 31) == 0) warp_out[blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32] = w;
    const float total = block_sum(v, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = total;
}

// out: [blockDim.x, 12] i32, per thread: the value (a lane number times 10
// plus the warp) each intrinsic returned, in this order: shfl_xor 1, 16;
// shfl_up 3; shfl_down 5; shfl idx 7; shfl_xor 2 width 8; shfl_up 1 width 8;
// shfl_down 2 width 8; shfl idx 9 width 8 (lane 1 of its segment);
// ballot(lane % 3 == 0); any(lane == 31); all(lane < 32).
extern "C" __global__ void emu_selftest_warp_shuffles(int* out) {
    const int lane = threadIdx.x & 31, v = lane * 10 + (int)(threadIdx.x >> 5);
    const unsigned full = 0xffffffffu;
    int* o = out + threadIdx.x * 12;
    o[0] = __shfl_xor_sync(full, v, 1);
    o[1] = __shfl_xor_sync(full, v, 16);
    o[2] = __shfl_up_sync(full, v, 3);
    o[3] = __shfl_down_sync(full, v, 5);
    o[4] = __shfl_sync(full, v, 7);
    o[5] = __shfl_xor_sync(full, v, 2, 8);
    o[6] = __shfl_up_sync(full, v, 1, 8);
    o[7] = __shfl_down_sync(full, v, 2, 8);
    o[8] = __shfl_sync(full, v, 9, 8);
    o[9] = (int)__ballot_sync(full, lane % 3 == 0);
    o[10] = __any_sync(full, lane == 31);
    o[11] = __all_sync(full, lane < 32);
}

// Inclusive prefix sum over the whole block, u64 (warp scans with
// __shfl_up_sync, then a scan of the warp totals, as sampling.cu does).
// out, x: [blocks, blockDim.x] u64; blockDim.x a multiple of 32, <= 1024.
extern "C" __global__ void emu_selftest_scan(unsigned long long* out, const unsigned long long* x) {
    __shared__ unsigned long long totals[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long v = x[i];
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long n = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += n;
    }
    if (lane == 31) totals[warp] = v;
    __syncthreads();
    if (warp == 0) {
        unsigned long long t = lane < nwarps ? totals[lane] : 0ull;
        for (int o = 1; o < 32; o <<= 1) {
            const unsigned long long n = __shfl_up_sync(0xffffffffu, t, o);
            if (lane >= o) t += n;
        }
        totals[lane] = t;
    }
    __syncthreads();
    out[i] = v + (warp > 0 ? totals[warp - 1] : 0ull);
}

// Dynamic shared memory: thread t writes buf[i] = 3 * i + blockIdx.x for
// i = t, t + blockDim.x, ..; after a barrier out[block, i] = buf[n - 1 - i].
// out[blocks * n] (one extra i32) gets 1 when buf was 16-byte aligned in every block.
// Launch with n * 4 bytes of dynamic shared memory.
extern "C" __global__ void emu_selftest_dynamic_smem(int* out, int n) {
    KILN_DYNAMIC_SMEM(int, buf);
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = 3 * i + (int)blockIdx.x;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[blockIdx.x * n + i] = buf[n - 1 - i];
    if (threadIdx.x == 0 && (reinterpret_cast<unsigned long long>(buf) & 15) != 0) out[gridDim.x * n] = 0;
}

// Every thread of the grid adds its global index + 1 to *sum, 1 to *count and
// 0.5 to *half (all exact), and bumps hist[global index % 16].
extern "C" __global__ void emu_selftest_atomics(unsigned long long* sum, int* count, float* half, unsigned* hist) {
    const unsigned long long g = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(sum, g + 1);
    atomicAdd(count, 1);
    atomicAdd(half, 0.5f);
    atomicAdd(&hist[g % 16], 1u);
}

// The host twins of the inline PTX conversions, element i < n (grid-stride):
// bf[i] = bits of f32_to_bf16(x[i]) (cvt.rn.bf16.f32); packed[i / 2] =
// pack_bf16x2(x[i], x[i + 1]) for even i (cvt.rn.bf16x2.f32); wide[i] = the
// f32 of the f16 bits h[i] (cvt.f32.f16, as dequant.cu uses it).
extern "C" __global__ void emu_selftest_conversions(unsigned short* bf, unsigned* packed, float* wide, const float* x,
                                                    const unsigned short* h, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        bf[i] = f32_to_bf16(x[i]).bits;
        wide[i] = kiln_emu::f16_bits_to_f32(h[i]);
        if (i % 2 == 0 && i + 1 < n) packed[i / 2] = pack_bf16x2(x[i], x[i + 1]);
    }
}

// The four kernels below misbehave only in the last block of the grid, so
// the abort message must name that block.
KILN_DEVICE bool last_block() { return blockIdx.x == gridDim.x - 1 && blockIdx.y == gridDim.y - 1; }

// Aborts: threads below 16 and the others wait at different __syncthreads().
extern "C" __global__ void emu_selftest_divergent_barrier(int* out) {
    if (threadIdx.x < 16 || !last_block()) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

// Aborts: thread 5 returns, the others then wait at __syncthreads().
extern "C" __global__ void emu_selftest_barrier_after_exit(int* out) {
    if (threadIdx.x == 5 && last_block()) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

// Aborts: lane 7 returns, the others shuffle with the full mask.
extern "C" __global__ void emu_selftest_shuffle_after_exit(int* out) {
    if (threadIdx.x == 7 && last_block()) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

// Aborts: writes one int past the end of the dynamic shared memory (n ints).
extern "C" __global__ void emu_selftest_smem_overrun(int n) {
    KILN_DYNAMIC_SMEM(int, buf);
    if (threadIdx.x == 0) buf[last_block() ? n : 0] = 1;
}
