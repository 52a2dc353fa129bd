// kiln_host_emu.h -- compiles kiln's CUDA kernels (kernels/*.cu) as C++17 for
// the host and runs them on an emulated GPU.
//
// Used only by host builds (`--features emu`: build/host_emu.rs compiles each
// kernels/*.cu with g++ -DKILN_HOST_EMU, this header first). NVRTC and nvcc
// never see it; the GPU code is unchanged, except for the few spots marked
// `#ifdef KILN_HOST_EMU` (exact C++ twins of inline PTX).
//
// Blocks run on up to KILN_EMU_THREADS OS threads (default: the machine's
// cores, at most 8). The self-test kernels of the emulator itself are in
// kernels/host_emu/emu_selftest.cu (tests/emu_kernels.rs).
//
// What it models:
//   - every CUDA thread of a block is a fiber (its own stack and context,
//     fiber.cpp); a block's fibers run on one OS thread, in thread-index
//     order, each until it reaches a synchronisation point (runtime.cpp);
//   - __syncthreads() is a real barrier of the block; __syncwarp() and the
//     warp intrinsics (__shfl_*_sync, __ballot_sync, __any_sync, __all_sync)
//     wait for the lanes named in the mask and exchange values there, with
//     CUDA's `width` segment rules;
//   - threadIdx, blockIdx, blockDim, gridDim of the running fiber;
//   - static __shared__ variables (one copy per OS thread, so per running
//     block) and dynamic shared memory through KILN_DYNAMIC_SMEM (poisoned
//     with 0xff bytes before each block, guard bytes checked after it);
//   - atomics (relaxed, real atomics: blocks run on several OS threads);
//   - the vector types and math intrinsics the kernels use (see below).
// What it aborts on (message naming kernel, block, thread and call site):
//   - __syncthreads() reached at different call sites by threads of one
//     block, or while some threads of the block have exited;
//   - a warp intrinsic whose mask names a lane that has exited or does not
//     exist (a full-mask shuffle in a partial warp), a lane that waits at a
//     different intrinsic, or a shuffle reading a lane outside the mask;
//   - a block that can make no progress (a barrier nobody else reaches);
//   - writes past the end of dynamic shared memory (guard bytes).
// What it cannot tell you:
//   - timing, occupancy, register pressure, bank conflicts, coalescing;
//   - real races: the schedule is one fixed interleaving (thread order,
//     switching only at synchronisation points), so a missing barrier or a
//     read of another thread's unsynchronised write may pass here and fail
//     on a GPU; static shared memory is not poisoned between blocks;
//   - the memory model (fences, volatile, weak/strong ordering) beyond
//     "atomics are atomic";
//   - bit-exact GPU arithmetic where the GPU differs from the C library:
//     __expf/__logf/__sinf are the accurate expf/logf/sinf here, rsqrtf is
//     1/sqrtf, and g++ never fuses a*b+c into an FMA (-ffp-contract=off)
//     while nvcc does; results agree with the GPU to rounding, not bit for
//     bit, in such code (the bf16 conversions, integer code and plain IEEE
//     + - * / sqrt are exact);
//   - misaligned or out-of-bounds global accesses: pointers are host
//     addresses, and a uint4 access needs 16-byte alignment as on a GPU.
// Inline PTX other than the twinned conversions is a compile error here (the
// `asm` keyword is redefined to a name that says a host twin is needed).
#pragma once

#ifndef KILN_HOST_EMU
#error "kiln_host_emu.h is for host builds of kiln's kernels: define KILN_HOST_EMU"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>
#include <utility>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "argument slots are decoded as little-endian");

// ---- qualifiers ----------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __align__(n) alignas(n)
#define __launch_bounds__(...)
// One copy per OS thread: all fibers of a block run on one OS thread, and an
// OS thread runs one block at a time, so this is the block's shared memory.
#define __shared__ static thread_local
// `extern __shared__ T name[]` on the GPU (see common.cuh); here the running
// block's dynamic buffer (16-byte aligned, sized by the launch). Use it inside
// a function body.
#define KILN_DYNAMIC_SMEM(T, name) T* const name = reinterpret_cast<T*>(::kiln_emu::dynamic_smem())

// ---- vector types ----------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

namespace kiln_emu {

// A source location, for messages.
struct Site {
    const char* file;
    int line;
};

// What a kernel thread sees of itself and its block (runtime.cpp owns the rest).
struct BlockInfo {
    uint3 idx;
    dim3 dim, grid;
    unsigned char* dyn_smem;
    const char* kernel;
};
struct ThreadInfo {
    uint3 idx;
    const BlockInfo* block;
};

// The fiber running on this OS thread (null outside a kernel).
inline thread_local ThreadInfo* t_cur = nullptr;

inline unsigned char* dynamic_smem() { return t_cur->block->dyn_smem; }

// ---- synchronisation (runtime.cpp) ----
enum class WarpOp : int { Sync, ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Any, All };
void sync_threads(Site site);
// Waits for the lanes of `mask`; returns the value the op yields to this lane.
uint64_t warp_op(Site site, WarpOp op, unsigned mask, uint64_t bits, int arg, int width);

template <class T>
uint64_t to_bits(T v) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

// The warp intrinsics, bound to their call site by the macros below.
struct At {
    Site site;
    template <class T>
    T shfl(unsigned mask, T v, int src, int width = 32) const {
        return from_bits<T>(warp_op(site, WarpOp::ShflIdx, mask, to_bits(v), src, width));
    }
    template <class T>
    T shfl_up(unsigned mask, T v, unsigned delta, int width = 32) const {
        return from_bits<T>(warp_op(site, WarpOp::ShflUp, mask, to_bits(v), (int)delta, width));
    }
    template <class T>
    T shfl_down(unsigned mask, T v, unsigned delta, int width = 32) const {
        return from_bits<T>(warp_op(site, WarpOp::ShflDown, mask, to_bits(v), (int)delta, width));
    }
    template <class T>
    T shfl_xor(unsigned mask, T v, int lane_mask, int width = 32) const {
        return from_bits<T>(warp_op(site, WarpOp::ShflXor, mask, to_bits(v), lane_mask, width));
    }
    unsigned ballot(unsigned mask, int pred) const {
        return (unsigned)warp_op(site, WarpOp::Ballot, mask, pred != 0, 0, 32);
    }
    int any(unsigned mask, int pred) const { return (int)warp_op(site, WarpOp::Any, mask, pred != 0, 0, 32); }
    int all(unsigned mask, int pred) const { return (int)warp_op(site, WarpOp::All, mask, pred != 0, 0, 32); }
    void syncwarp(unsigned mask = 0xffffffffu) const { warp_op(site, WarpOp::Sync, mask, 0, 0, 32); }
};

}  // namespace kiln_emu

// ---- built-in variables and synchronisation ------------------------------
#define threadIdx (static_cast<const ::kiln_emu::ThreadInfo*>(::kiln_emu::t_cur)->idx)
#define blockIdx (::kiln_emu::t_cur->block->idx)
#define blockDim (::kiln_emu::t_cur->block->dim)
#define gridDim (::kiln_emu::t_cur->block->grid)
#define warpSize 32

#define KILN_EMU_AT (::kiln_emu::At{::kiln_emu::Site{__FILE__, __LINE__}})
#define __syncthreads() ::kiln_emu::sync_threads(::kiln_emu::Site{__FILE__, __LINE__})
#define __syncwarp KILN_EMU_AT.syncwarp
#define __shfl_sync KILN_EMU_AT.shfl
#define __shfl_up_sync KILN_EMU_AT.shfl_up
#define __shfl_down_sync KILN_EMU_AT.shfl_down
#define __shfl_xor_sync KILN_EMU_AT.shfl_xor
#define __ballot_sync KILN_EMU_AT.ballot
#define __any_sync KILN_EMU_AT.any
#define __all_sync KILN_EMU_AT.all

// ---- atomics (relaxed, as CUDA's) ------------------------------------------
#define KILN_EMU_ATOMIC_INT(T)                                                                       \
    inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }              \
    inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }              \
    inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }            \
    inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }              \
    inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }                \
    inline T atomicCAS(T* p, T expected, T v) {                                                      \
        __atomic_compare_exchange_n(p, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);      \
        return expected;                                                                             \
    }                                                                                                \
    inline T atomicMax(T* p, T v) {                                                                  \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                \
        while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
        }                                                                                            \
        return old;                                                                                  \
    }                                                                                                \
    inline T atomicMin(T* p, T v) {                                                                  \
        T old = __atomic_load_n(p, __ATOMIC_RELAXED);                                                \
        while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) { \
        }                                                                                            \
        return old;                                                                                  \
    }
KILN_EMU_ATOMIC_INT(int)
KILN_EMU_ATOMIC_INT(unsigned)
KILN_EMU_ATOMIC_INT(unsigned long long)
#undef KILN_EMU_ATOMIC_INT

// Float add as a compare-and-swap loop on the bit pattern.
inline float atomicAdd(float* p, float v) {
    unsigned* u = reinterpret_cast<unsigned*>(p);
    unsigned old = __atomic_load_n(u, __ATOMIC_RELAXED), next;
    do {
        float f;
        memcpy(&f, &old, 4);
        f += v;
        memcpy(&next, &f, 4);
    } while (!__atomic_compare_exchange_n(u, &old, next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    float r;
    memcpy(&r, &old, 4);
    return r;
}

// ---- integer and float intrinsics ----------------------------------------
inline float __uint_as_float(unsigned u) { return ::kiln_emu::from_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return (unsigned)::kiln_emu::to_bits(f); }
inline float __int_as_float(int i) { return ::kiln_emu::from_bits<float>((unsigned)i); }
inline int __float_as_int(float f) { return (int)(unsigned)::kiln_emu::to_bits(f); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T>
inline T __ldg(const T* p) { return *p; }

// Accurate versions of the fast-math intrinsics (see "cannot tell" above).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x != x ? 0.f : fminf(fmaxf(x, 0.f), 1.f); }

// CUDA's integer min/max overloads (same-type only: mixing is a compile error here).
#define KILN_EMU_MINMAX(T)                              \
    inline T min(T a, T b) { return a < b ? a : b; }   \
    inline T max(T a, T b) { return a > b ? a : b; }
KILN_EMU_MINMAX(int)
KILN_EMU_MINMAX(unsigned)
KILN_EMU_MINMAX(long long)
KILN_EMU_MINMAX(unsigned long long)
#undef KILN_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

// ---- twins of the inline PTX in kernels/*.cu --------------------------------
namespace kiln_emu {

// cvt.rn.bf16.f32: round to nearest, ties to even; subnormals kept; a NaN
// becomes the canonical bf16 NaN 0x7fff (as CUDA's own host conversion).
inline unsigned short f32_to_bf16_bits(float f) {
    const unsigned u = (unsigned)to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// cvt.rn.bf16x2.f32 d, hi, lo: hi converted into bits 16..31, lo into 0..15.
inline unsigned pack_bf16x2(float lo, float hi) {
    return (unsigned)f32_to_bf16_bits(lo) | ((unsigned)f32_to_bf16_bits(hi) << 16);
}

// cvt.f32.f16: exact widening; subnormals normalised, infinities kept, a NaN
// keeps its payload (quietened), as x86's vcvtph2ps does.
inline float f16_bits_to_f32(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16;
    unsigned exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    unsigned bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0u);
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {
            int e = 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                e--;
            }
            bits = sign | ((unsigned)(e + 112) << 23) | ((man & 0x3ffu) << 13);
        }
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    return from_bits<float>(bits);
}

}  // namespace kiln_emu

// ---- launching -------------------------------------------------------------
namespace kiln_emu {

// One launch as the Rust side passes it (src/backend/cuda/emu/host_kernels.rs,
// `RawLaunch`): each argument in an 8-byte slot as for cuLaunchKernel.
struct RawLaunch {
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t smem;
    uint32_t nargs;
    const uint64_t* args;
};
static_assert(sizeof(RawLaunch) == 40, "RawLaunch must match the Rust struct");

// Runs `body(ctx)` as every thread of every block of the grid (runtime.cpp).
void run_grid(const char* kernel, const RawLaunch& l, void (*body)(void*), void* ctx);

// A pointer is the slot's address; a 4-byte scalar is the slot's low half.
template <class T>
T decode_arg(uint64_t slot) {
    if constexpr (std::is_pointer<T>::value) {
        return reinterpret_cast<T>(static_cast<uintptr_t>(slot));
    } else {
        static_assert(std::is_arithmetic<T>::value && (sizeof(T) == 4 || sizeof(T) == 8),
                      "kernel parameters are pointers or 4/8-byte scalars");
        return from_bits<T>(slot);
    }
}

template <class... P>
struct Call {
    void (*kernel)(P...);
    std::tuple<P...> args;
    static void run(void* c) {
        Call* self = static_cast<Call*>(c);
        std::apply(self->kernel, self->args);
    }
};

template <class... P, size_t... I>
std::tuple<P...> decode_args(const uint64_t* slots, std::index_sequence<I...>) {
    return std::tuple<P...>(decode_arg<P>(slots[I])...);
}

// Decodes the slots into the kernel's own parameter types (deduced from the
// function pointer) and runs the grid. Returns 0, or 1 with *expected set
// when the number of slots is not the number of parameters.
template <class... P>
int launch(void (*kernel)(P...), const char* name, const RawLaunch* l, uint32_t* expected) {
    *expected = (uint32_t)sizeof...(P);
    if (l->nargs != sizeof...(P)) return 1;
    Call<P...> call{kernel, decode_args<P...>(l->args, std::index_sequence_for<P...>{})};
    run_grid(name, *l, &Call<P...>::run, &call);
    return 0;
}

}  // namespace kiln_emu

// Inline PTX has no meaning on the host: every use needs a C++ twin under
// `#ifdef KILN_HOST_EMU` (see bf16 conversions in common.cuh). Without one
// the compiler stops at this name.
#define asm kiln_host_emu_error_inline_PTX_needs_a_host_twin_under_ifdef_KILN_HOST_EMU
