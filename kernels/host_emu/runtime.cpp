// runtime.cpp -- the host emulator's grid runner and block scheduler
// (kiln_host_emu.h says what is modelled).
//
// A grid is cut into blocks taken in turn by up to KILN_EMU_THREADS OS
// threads (default: the machine's cores, at most 8). An OS thread runs one
// block at a time: every CUDA thread of the block is a fiber, and the
// scheduler runs the runnable fibers in thread-index order, each until it
// reaches a synchronisation point or returns. When none is runnable it
// releases every warp group whose lanes have all arrived at the same warp
// intrinsic (computing the shuffled values), else the block barrier once
// every live thread waits at the same __syncthreads(); anything else is a
// divergence or a deadlock, reported and aborted. Within a block the order
// is fixed, so a launch's results do not depend on which OS thread ran which
// block (atomics across blocks aside).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "fiber.h"
#include "kiln_host_emu.h"

namespace kiln_emu {
namespace {

enum class State : unsigned char { Runnable, AtBarrier, AtWarp, Exited };

struct Fiber : ThreadInfo {
    FiberContext ctx;
    char* stack = nullptr;
    State state = State::Runnable;
    unsigned linear = 0;  // x + y * dim.x + z * dim.x * dim.y: warp = linear / 32
    // The synchronisation point it waits at, and what it brought there.
    Site site{"", 0};
    WarpOp op = WarpOp::Sync;
    unsigned mask = 0;
    uint64_t bits = 0;
    int arg = 0, width = 32;
    uint64_t result = 0;
};

constexpr unsigned kGuardBytes = 64;
constexpr unsigned char kGuardByte = 0xa5;
constexpr unsigned kSmemAlign = 128;

const char* base_name(const char* path) {
    const char* s = strrchr(path, '/');
    return s ? s + 1 : path;
}

const char* op_name(WarpOp op) {
    switch (op) {
        case WarpOp::Sync: return "__syncwarp";
        case WarpOp::ShflIdx: return "__shfl_sync";
        case WarpOp::ShflUp: return "__shfl_up_sync";
        case WarpOp::ShflDown: return "__shfl_down_sync";
        case WarpOp::ShflXor: return "__shfl_xor_sync";
        case WarpOp::Ballot: return "__ballot_sync";
        case WarpOp::Any: return "__any_sync";
        case WarpOp::All: return "__all_sync";
    }
    return "?";
}

std::string where(const Fiber& f) {
    char b[160];
    if (f.state == State::Exited) return "has exited";
    if (f.state == State::AtBarrier) {
        snprintf(b, sizeof b, "waits at __syncthreads() at %s:%d", base_name(f.site.file), f.site.line);
    } else {
        snprintf(b, sizeof b, "waits at %s(mask 0x%08x) at %s:%d", op_name(f.op), f.mask, base_name(f.site.file),
                 f.site.line);
    }
    return b;
}

unsigned max_workers() {
    static const unsigned n = [] {
        if (const char* e = getenv("KILN_EMU_THREADS")) {
            const long v = strtol(e, nullptr, 10);
            if (v >= 1) return (unsigned)std::min(v, 256L);
        }
        return std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
    }();
    return n;
}

class Worker;
thread_local Worker* t_worker = nullptr;

// Runs blocks of one launch on the calling OS thread.
class Worker {
public:
    Worker(const char* kernel, const RawLaunch& l, void (*body)(void*), void* ctx) : l_(l), body_(body), ctx_(ctx) {
        block_.dim = dim3(l.block[0], l.block[1], l.block[2]);
        block_.grid = dim3(l.grid[0], l.grid[1], l.grid[2]);
        block_.kernel = kernel;
        smem_store_.resize(l.smem + kGuardBytes + kSmemAlign);
        const uintptr_t p = reinterpret_cast<uintptr_t>(smem_store_.data());
        block_.dyn_smem = smem_store_.data() + ((kSmemAlign - p % kSmemAlign) % kSmemAlign);
        n_ = l.block[0] * l.block[1] * l.block[2];
        fibers_.resize(n_);
        for (unsigned i = 0; i < n_; i++) {
            Fiber& f = fibers_[i];
            f.linear = i;
            f.idx = uint3{i % l.block[0], (i / l.block[0]) % l.block[1], i / (l.block[0] * l.block[1])};
            f.block = &block_;
            f.stack = stack_acquire();
        }
        prev_ = t_worker;
        t_worker = this;
    }
    ~Worker() {
        for (Fiber& f : fibers_) stack_release(f.stack);
        t_worker = prev_;
    }
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    void run_block(uint64_t b);
    void arrive(Fiber& f);  // called on the fiber: back to the scheduler
    void check_warp_op(const Fiber& f);
    [[noreturn]] void fail(const Fiber& f, const std::string& what);

    static void fiber_entry();

private:
    bool release_warps();
    void release_barrier();
    bool group_ready(unsigned w0, const Fiber& f);
    void complete_group(unsigned w0, unsigned mask, WarpOp op);

    const RawLaunch& l_;
    void (*body_)(void*);
    void* ctx_;
    BlockInfo block_{};
    std::vector<Fiber> fibers_;
    FiberContext sched_;
    unsigned n_ = 0, exited_ = 0;
    std::vector<unsigned char> smem_store_;
    Worker* prev_ = nullptr;
};

void Worker::fail(const Fiber& f, const std::string& what) {
    fprintf(stderr, "kiln emulator: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s\n", block_.kernel,
            block_.idx.x, block_.idx.y, block_.idx.z, f.idx.x, f.idx.y, f.idx.z, what.c_str());
    fflush(stderr);
    abort();
}

void Worker::fiber_entry() {
    Worker* w = t_worker;
    w->body_(w->ctx_);
    Fiber& f = *static_cast<Fiber*>(t_cur);
    f.state = State::Exited;
    w->exited_++;
    fiber_switch(f.ctx, w->sched_);
    abort();  // an exited fiber is never resumed
}

void Worker::arrive(Fiber& f) { fiber_switch(f.ctx, sched_); }

void Worker::run_block(uint64_t b) {
    const uint64_t gx = l_.grid[0], gy = l_.grid[1];
    block_.idx = uint3{(unsigned)(b % gx), (unsigned)(b / gx % gy), (unsigned)(b / (gx * gy))};
    memset(block_.dyn_smem, 0xff, l_.smem);  // uninitialised shared memory reads as NaN / -1
    memset(block_.dyn_smem + l_.smem, kGuardByte, kGuardBytes);
    exited_ = 0;
    for (Fiber& f : fibers_) {
        f.state = State::Runnable;
        fiber_init(f.ctx, f.stack, &Worker::fiber_entry, f.linear);
    }
    for (;;) {
        for (Fiber& f : fibers_) {
            if (f.state != State::Runnable) continue;
            t_cur = &f;
            fiber_switch(sched_, f.ctx);
        }
        t_cur = nullptr;
        if (exited_ == n_) break;
        if (!release_warps()) release_barrier();
    }
    for (unsigned i = 0; i < kGuardBytes; i++) {
        if (block_.dyn_smem[l_.smem + i] != kGuardByte) {
            fail(fibers_[0], "a write past the end of the " + std::to_string(l_.smem) +
                                 " bytes of dynamic shared memory (byte " + std::to_string(l_.smem + i) + ")");
        }
    }
}

// At arrival: the lane must be in its mask, the width a power of two, and
// every lane the mask names must exist and not have exited.
void Worker::check_warp_op(const Fiber& f) {
    const unsigned w0 = f.linear & ~31u, lane = f.linear & 31u;
    const unsigned lanes = std::min(32u, n_ - w0);
    if (!(f.mask >> lane & 1u)) fail(f, where(f) + ": the calling lane is not in the mask");
    if (f.width < 1 || f.width > 32 || (f.width & (f.width - 1)) != 0) fail(f, where(f) + ": width is not 1, 2, .., 32");
    for (unsigned j = 0; j < 32; j++) {
        if (!(f.mask >> j & 1u)) continue;
        if (j >= lanes) {
            fail(f, where(f) + ": the mask names lane " + std::to_string(j) + ", which the block does not have (" +
                        std::to_string(n_) + " threads)");
        }
        if (fibers_[w0 + j].state == State::Exited) {
            fail(f, where(f) + ": the mask names lane " + std::to_string(j) + " of warp " + std::to_string(w0 / 32) +
                        ", which has exited");
        }
    }
}

bool Worker::group_ready(unsigned w0, const Fiber& f) {
    for (unsigned j = 0; j < 32; j++) {
        if (!(f.mask >> j & 1u)) continue;
        const Fiber& g = fibers_[w0 + j];
        if (g.state != State::AtWarp || g.op != f.op || g.mask != f.mask) return false;
        // __syncwarp may be reached at different sites (sm_70+); the others may not.
        if (f.op != WarpOp::Sync && (g.site.line != f.site.line || strcmp(g.site.file, f.site.file) != 0)) return false;
    }
    return true;
}

// Lane whose value lane `lane` receives (CUDA's rules for width segments).
unsigned source_lane(WarpOp op, unsigned lane, int arg, int width) {
    const int l = (int)lane, base = l & ~(width - 1);
    int s = l;
    switch (op) {
        case WarpOp::ShflIdx: s = base + (arg & (width - 1)); break;
        case WarpOp::ShflUp: s = l - arg < base ? l : l - arg; break;
        case WarpOp::ShflDown: s = l + arg >= base + width ? l : l + arg; break;
        case WarpOp::ShflXor: s = (l ^ arg) >= base + width ? l : (l ^ arg); break;
        default: break;
    }
    return (unsigned)s;
}

void Worker::complete_group(unsigned w0, unsigned mask, WarpOp op) {
    uint64_t votes = 0;
    for (unsigned j = 0; j < 32; j++)
        if (mask >> j & 1u && fibers_[w0 + j].bits != 0) votes |= 1ull << j;
    for (unsigned j = 0; j < 32; j++) {
        if (!(mask >> j & 1u)) continue;
        Fiber& g = fibers_[w0 + j];
        switch (op) {
            case WarpOp::Sync: g.result = 0; break;
            case WarpOp::Ballot: g.result = votes; break;
            case WarpOp::Any: g.result = votes != 0; break;
            case WarpOp::All: g.result = votes == mask; break;
            default: {
                const unsigned s = source_lane(op, j, g.arg, g.width);
                if (s > 31 || !(mask >> s & 1u)) fail(g, where(g) + ": reads lane " + std::to_string(s) + ", not in the mask");
                g.result = fibers_[w0 + s].bits;
            }
        }
    }
    for (unsigned j = 0; j < 32; j++)
        if (mask >> j & 1u) fibers_[w0 + j].state = State::Runnable;
}

bool Worker::release_warps() {
    bool progressed = false;
    for (unsigned w0 = 0; w0 < n_; w0 += 32) {
        const unsigned lanes = std::min(32u, n_ - w0);
        for (unsigned i = 0; i < lanes; i++) {
            const Fiber& f = fibers_[w0 + i];
            if (f.state != State::AtWarp || !group_ready(w0, f)) continue;
            complete_group(w0, f.mask, f.op);
            progressed = true;
        }
    }
    return progressed;
}

// No warp group can complete: every live thread must wait at one __syncthreads().
void Worker::release_barrier() {
    const Fiber* first = nullptr;
    const Fiber* gone = nullptr;
    for (const Fiber& f : fibers_) {
        if (f.state == State::Exited) {
            if (!gone) gone = &f;
            continue;
        }
        if (f.state == State::AtWarp) {
            // Stuck: some lane of its mask waits elsewhere.
            const unsigned w0 = f.linear & ~31u;
            for (unsigned j = 0; j < 32; j++) {
                const Fiber& g = fibers_[w0 + j];
                if (!(f.mask >> j & 1u) || &g == &f) continue;
                if (g.state != State::AtWarp || g.op != f.op || g.mask != f.mask || g.site.line != f.site.line ||
                    strcmp(g.site.file, f.site.file) != 0) {
                    char t[64];
                    snprintf(t, sizeof t, "thread (%u,%u,%u) ", g.idx.x, g.idx.y, g.idx.z);
                    fail(f, where(f) + ", but " + t + where(g) + " (divergent warp synchronisation)");
                }
            }
            fail(f, where(f) + ": deadlock");
        }
        if (!first) {
            first = &f;
        } else if (f.site.line != first->site.line || strcmp(f.site.file, first->site.file) != 0) {
            char t[64];
            snprintf(t, sizeof t, "thread (%u,%u,%u) ", first->idx.x, first->idx.y, first->idx.z);
            fail(f, where(f) + ", but " + t + where(*first) + " (barrier in divergent code)");
        }
    }
    if (gone) {
        char t[64];
        snprintf(t, sizeof t, "thread (%u,%u,%u) ", gone->idx.x, gone->idx.y, gone->idx.z);
        fail(*first, where(*first) + ", but " + t + "has exited (barrier after an early return)");
    }
    for (Fiber& f : fibers_) f.state = State::Runnable;
}

Fiber& current(const char* what) {
    if (t_cur == nullptr || t_worker == nullptr) {
        fprintf(stderr, "kiln emulator: %s called outside a kernel\n", what);
        abort();
    }
    return *static_cast<Fiber*>(t_cur);
}

}  // namespace

void sync_threads(Site site) {
    Fiber& f = current("__syncthreads");
    f.state = State::AtBarrier;
    f.site = site;
    t_worker->arrive(f);
}

uint64_t warp_op(Site site, WarpOp op, unsigned mask, uint64_t bits, int arg, int width) {
    Fiber& f = current(op_name(op));
    f.state = State::AtWarp;
    f.site = site;
    f.op = op;
    f.mask = mask;
    f.bits = bits;
    f.arg = arg;
    f.width = width;
    t_worker->check_warp_op(f);
    t_worker->arrive(f);
    return f.result;
}

void run_grid(const char* kernel, const RawLaunch& l, void (*body)(void*), void* ctx) {
    const uint64_t total = (uint64_t)l.grid[0] * l.grid[1] * l.grid[2];
    const unsigned workers = (unsigned)std::min<uint64_t>(total, max_workers());
    std::atomic<uint64_t> next{0};
    auto work = [&] {
        Worker w(kernel, l, body, ctx);
        for (uint64_t b = next.fetch_add(1); b < total; b = next.fetch_add(1)) w.run_block(b);
    };
    std::vector<std::thread> threads;
    for (unsigned i = 1; i < workers; i++) threads.emplace_back(work);
    work();
    for (std::thread& t : threads) t.join();
}

}  // namespace kiln_emu
