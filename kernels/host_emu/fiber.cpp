// fiber.cpp -- stacks and context switches of the host emulator (fiber.h).
#include "fiber.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mutex>
#include <vector>

namespace kiln_emu {

namespace {

std::mutex g_pool_mutex;
std::vector<char*> g_pool;  // free stacks (lowest usable byte of each)

size_t page_size() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

}  // namespace

char* stack_acquire() {
    {
        std::lock_guard<std::mutex> lock(g_pool_mutex);
        if (!g_pool.empty()) {
            char* s = g_pool.back();
            g_pool.pop_back();
            return s;
        }
    }
    const size_t guard = page_size();
    void* m = mmap(nullptr, guard + kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) {
        perror("kiln emulator: mmap of a fiber stack");
        abort();
    }
    if (mprotect(m, guard, PROT_NONE) != 0) {
        perror("kiln emulator: mprotect of a stack guard page");
        abort();
    }
    return static_cast<char*>(m) + guard;
}

void stack_release(char* stack) {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    g_pool.push_back(stack);
}

#if !defined(KILN_EMU_FIBER_UCONTEXT)

// void kiln_emu_switch(void** save_sp, void* new_sp)  (System V AMD64)
// Saved frame, from the stack pointer up: mxcsr (4 bytes), x87 control word
// (2 bytes, padded to 4), r15, r14, r13, r12, rbx, rbp, return address.
extern "C" void kiln_emu_switch(void** save_sp, void* new_sp);
asm(R"(
    .text
    .globl kiln_emu_switch
    .hidden kiln_emu_switch
    .type kiln_emu_switch, @function
kiln_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size kiln_emu_switch, .-kiln_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");

void fiber_init(FiberContext& f, char* stack, void (*entry)(), unsigned color) {
    // top is 16-byte aligned; `entry` starts as if called (rsp = top - 8).
    uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + kStackBytes - 64 * (color % 64)) & ~(uintptr_t)15;
    uint64_t* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;                                      // entry's return address: it never returns
    *--sp = reinterpret_cast<uint64_t>(entry);      // popped by kiln_emu_switch's ret
    for (int i = 0; i < 6; i++) *--sp = 0;          // rbp rbx r12 r13 r14 r15
    unsigned ctl[2];
    asm volatile("stmxcsr %0" : "=m"(ctl[0]));      // inherit the creator's control words
    asm volatile("fnstcw %0" : "=m"(ctl[1]));
    *--sp = (uint64_t)ctl[0] | ((uint64_t)(ctl[1] & 0xffffu) << 32);
    f.sp = sp;
}

void fiber_switch(FiberContext& from, FiberContext& to) { kiln_emu_switch(&from.sp, to.sp); }

#else

void fiber_init(FiberContext& f, char* stack, void (*entry)(), unsigned color) {
    if (getcontext(&f.uc) != 0) {
        perror("kiln emulator: getcontext");
        abort();
    }
    f.uc.uc_stack.ss_sp = stack;
    f.uc.uc_stack.ss_size = kStackBytes - 64 * (color % 64);
    f.uc.uc_link = nullptr;
    makecontext(&f.uc, entry, 0);
}

void fiber_switch(FiberContext& from, FiberContext& to) { swapcontext(&from.uc, &to.uc); }

#endif

}  // namespace kiln_emu
