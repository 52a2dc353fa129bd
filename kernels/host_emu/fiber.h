// fiber.h -- the execution contexts of the host emulator's CUDA threads.
//
// A fiber is a stack and a saved stack pointer. On x86-64 the switch is a
// few instructions (top-level asm in fiber.cpp): push the callee-saved
// registers and the SSE/x87 control words, store the stack pointer, load the
// other one, pop. Elsewhere it falls back
// to ucontext (swapcontext), which also saves the signal mask with a system
// call per switch and is several times slower (KILN_EMU_UCONTEXT forces it).
//
// Stacks come from a process-wide pool (mmap with a PROT_NONE guard page
// below each, so an overflow faults instead of corrupting a neighbour) and
// go back to it after every launch.
#pragma once

#include <stddef.h>

#if !defined(__x86_64__) || defined(KILN_EMU_UCONTEXT)
#define KILN_EMU_FIBER_UCONTEXT 1
#include <ucontext.h>
#endif

namespace kiln_emu {

// Bytes of one fiber stack (the guard page is extra). Kernels keep small
// arrays in registers on the GPU; here they live on this stack.
constexpr size_t kStackBytes = 256 * 1024;

struct FiberContext {
#if !defined(KILN_EMU_FIBER_UCONTEXT)
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
};

// Takes a stack from the pool (or maps a new one); returns its lowest usable byte.
char* stack_acquire();
// Returns a stack to the pool.
void stack_release(char* stack);

// Prepares `f` to run `entry()` on `stack` (kStackBytes) when first switched to.
// `entry` must never return. `color` (any number, e.g. the thread index)
// staggers the top of the stack by a multiple of 64 bytes within 4 KiB, so
// that the hot top frames of many fibers do not all fall in the same cache sets.
void fiber_init(FiberContext& f, char* stack, void (*entry)(), unsigned color);

// Saves the current context in `from` and resumes `to`.
void fiber_switch(FiberContext& from, FiberContext& to);

}  // namespace kiln_emu
