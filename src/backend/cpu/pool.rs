//! kiln's persistent CPU worker pool: the threads every parallel op of the
//! CPU backend runs on (matmuls, norms, rope, SwiGLU, adds, attention).
//!
//! A decode step of a small model is a few hundred short parallel regions
//! (SmolLM2-135M: 151 matmuls and attentions per token, ~5-60 µs each), so
//! what one region costs to start and to finish matters as much as its
//! arithmetic. The pool keeps `threads - 1` workers alive for the life of
//! the process; the calling thread is worker 0 and takes tasks too. A region
//! ([`Pool::run`]) is:
//!
//! ```text
//! caller:  job = (f, n) ; next = 0 ; state = (epoch + 1, open, 0 joined) ; unpark sleepers
//! worker:  sees the new epoch ; joins (joined += 1) if the region is still open
//! all:     loop { t = next.fetch_add(1) ; if t >= n break ; f(t, thread) }
//! worker:  done += 1, then waits for the next epoch
//! caller:  closes the region, waits until done == joined (the barrier),
//!          re-raises a task's panic
//! ```
//!
//! Tasks are handed out by one atomic counter, so a thread slowed by
//! another process on a shared machine simply takes fewer of them, and a
//! worker that wakes after the caller has handed out every task (it was
//! descheduled) finds the region closed and is not waited for: on an
//! oversubscribed machine a region degrades to the caller's own speed
//! instead of waiting a scheduler time slice for a sleeping worker. Between
//! regions an idle worker spins on the epoch (yielding the CPU after a few
//! rounds) for a bounded time (`KILN_POOL_SPIN_US`, default 500 µs: longer
//! than the serial gaps of a decode step, so the workers stay hot through a
//! step and from one step to the next) and then parks
//! (`std::thread::park`, a futex on Linux): an idle engine uses no CPU. The
//! scheme (threads that stay alive, all walking the graph op by op with a
//! cheap barrier between ops) is the one llama.cpp's ggml CPU backend
//! describes; this is an implementation of the idea, not of its code.
//!
//! Safety of borrowing: [`Pool::run`] takes a closure that may borrow the
//! caller's stack and does not return before every worker has stopped
//! touching it (also when a task panics), so the borrow outlives all uses.
//! One region runs at a time per pool (a mutex): a second thread calling
//! `run` waits its turn; a task that calls `run` again (nested, on any pool)
//! runs the inner region inline on its own thread, which cannot deadlock.

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// A value alone on its cache line(s), so the counters the threads hammer do
/// not share lines (AMD and Intel fetch lines in adjacent pairs: 128 bytes).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The task function of the region in flight, its lifetime erased (see
/// `Pool::run` for why that is sound).
type TaskFn = dyn Fn(usize, usize) + Sync;

/// The job of a pool that has run no region yet.
const NOOP: &TaskFn = &|_, _| {};

#[derive(Clone, Copy)]
struct Job {
    f: *const TaskFn,
    n: usize,
}

/// `Shared::state`: region number in the high 32 bits, then the "closed"
/// bit, then the number of workers that joined the region.
const CLOSED: u64 = 1 << 31;
const JOINED: u64 = CLOSED - 1;

fn epoch_of(state: u64) -> u32 {
    (state >> 32) as u32
}

/// One worker's parking state.
struct Slot {
    /// True while the worker is parked or about to park.
    sleeping: AtomicBool,
    thread: OnceLock<Thread>,
}

struct Shared {
    /// The region in flight (see `CLOSED`). A new region stores a new epoch
    /// with 0 joined; a worker takes part only by incrementing the count
    /// while the region is open; the caller closes it once every task has
    /// been handed out and then waits for exactly the workers that joined.
    /// A worker that wakes up late (descheduled on a busy machine) finds the
    /// region closed and is not waited for.
    state: Padded<AtomicU64>,
    /// The next task index to hand out.
    next: Padded<AtomicUsize>,
    /// Joined workers that have finished the current region.
    done: Padded<AtomicUsize>,
    /// Written by the caller between regions; read by a worker only after it
    /// joined an open region.
    job: UnsafeCell<Job>,
    /// The first panic of a task in the current region.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    shutdown: AtomicBool,
    slots: Vec<Slot>,
    spin: Duration,
}

// SAFETY: `job` is the only field without its own synchronisation. It is
// written by the one thread holding `Pool::lock`, between regions: the
// previous region is closed and every worker that joined it has finished
// (`done` == joined, acquire), and a worker reads `job` only after joining
// the region, with an acquire CAS on `state` that reads the caller's release
// store publishing the new epoch (or a later increment in its release
// sequence). The function pointer inside is called only during its region,
// while `Pool::run` keeps the borrow alive.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

thread_local! {
    /// Set on pool workers, and on a caller while its region runs: a region
    /// started from such a thread runs inline.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// Busy-waits (a little), then yields the CPU on each further call: on an
/// oversubscribed machine a waiting thread should let the thread it waits
/// for run.
#[inline]
fn backoff(i: &mut u32) {
    if *i < 64 {
        std::hint::spin_loop();
    } else {
        thread::yield_now();
    }
    *i = i.saturating_add(1);
}

/// A fixed set of worker threads running parallel regions (see the module
/// documentation). `Pool::new(1)` has no workers and runs everything on the
/// calling thread.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    lock: Mutex<()>,
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `threads` threads in all (at least 1): the caller of `run`
    /// and `threads - 1` workers started now, idle until the first region.
    /// Panics if the OS refuses to start a thread.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.clamp(1, JOINED as usize);
        let spin_us = std::env::var("KILN_POOL_SPIN_US").ok().and_then(|v| v.parse().ok()).unwrap_or(500u64);
        let shared = Arc::new(Shared {
            state: Padded(AtomicU64::new(CLOSED)),
            next: Padded(AtomicUsize::new(0)),
            done: Padded(AtomicUsize::new(0)),
            job: UnsafeCell::new(Job { f: NOOP as *const TaskFn, n: 0 }),
            panic: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            slots: (1..threads).map(|_| Slot { sleeping: AtomicBool::new(false), thread: OnceLock::new() }).collect(),
            spin: Duration::from_micros(spin_us),
        });
        let handles = (1..threads)
            .map(|i| {
                let s = Arc::clone(&shared);
                let h = thread::Builder::new()
                    .name(format!("kiln-cpu-{i}"))
                    .spawn(move || worker(&s, i))
                    .expect("starting a CPU pool worker thread");
                let _ = shared.slots[i - 1].thread.set(h.thread().clone());
                h
            })
            .collect();
        Pool { threads, shared, lock: Mutex::new(()), handles }
    }

    /// Threads taking tasks, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(task, thread)` for every `task` in `0..n_tasks`, spread over
    /// the pool's threads, and returns when all have finished. `thread` is in
    /// `0..self.threads()` (0: the calling thread) and no two tasks with the
    /// same `thread` run at once, so it may index per-thread scratch. Order
    /// and placement of tasks are unspecified; a worker that is slow to wake
    /// may take none.
    ///
    /// A panic in a task stops the hand-out of further tasks and is re-raised
    /// here once every thread has left the region. Called from inside a task
    /// (of any pool), or with a single task, or on a 1-thread pool, the
    /// region runs inline on the calling thread.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.threads == 1 || n_tasks == 1 || IN_POOL.get() {
            (0..n_tasks).for_each(|t| f(t, 0));
            return;
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let sh = &*self.shared;
        // SAFETY: only the lifetime is changed. The pointer is used by the
        // workers that join this region, and this function does not return
        // (nor unwind: tasks run under catch_unwind) before all of them are
        // done with it.
        let f_static: *const TaskFn = unsafe { std::mem::transmute::<*const (dyn Fn(usize, usize) + Sync + '_), *const TaskFn>(f) };
        // SAFETY: between regions, see `unsafe impl Sync for Shared`.
        unsafe { *sh.job.get() = Job { f: f_static, n: n_tasks } };
        sh.next.store(0, Ordering::Relaxed);
        sh.done.store(0, Ordering::Relaxed);
        let epoch = epoch_of(sh.state.load(Ordering::Relaxed)).wrapping_add(1);
        sh.state.store((epoch as u64) << 32, Ordering::SeqCst);
        for s in &sh.slots {
            if s.sleeping.swap(false, Ordering::SeqCst) {
                s.thread.get().expect("worker registered").unpark();
            }
        }
        IN_POOL.set(true);
        sh.work(f, n_tasks, 0);
        IN_POOL.set(false);
        // Every task is handed out: close the region, then wait for the
        // workers that joined it to finish their last task (the barrier).
        let joined = (sh.state.fetch_or(CLOSED, Ordering::AcqRel) & JOINED) as usize;
        let mut i = 0;
        while sh.done.load(Ordering::Acquire) != joined {
            backoff(&mut i);
        }
        if let Some(p) = sh.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(p);
        }
    }
}

impl Shared {
    /// Takes tasks of the current region until none are left.
    fn work(&self, f: &(dyn Fn(usize, usize) + Sync + '_), n: usize, thread: usize) {
        loop {
            let t = self.next.fetch_add(1, Ordering::Relaxed);
            if t >= n {
                return;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(t, thread))) {
                self.next.store(n, Ordering::Relaxed);
                self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
                return;
            }
        }
    }

    /// Waits until the epoch differs from `seen` and returns the new one:
    /// spins (yielding after a few rounds) for `self.spin`, then parks.
    fn wait(&self, seen: u32, slot: &Slot) -> u32 {
        let start = Instant::now();
        let mut i = 0u32;
        loop {
            let e = epoch_of(self.state.load(Ordering::Acquire));
            if e != seen {
                return e;
            }
            backoff(&mut i);
            if i % 32 == 0 && start.elapsed() >= self.spin {
                break;
            }
        }
        // Park. The SeqCst store of `sleeping` before the SeqCst load of
        // `state` here, against the caller's SeqCst store of `state` before
        // its SeqCst swap of `sleeping`: either this load sees the new epoch
        // or the caller sees `sleeping` and unparks this thread.
        slot.sleeping.store(true, Ordering::SeqCst);
        loop {
            let e = epoch_of(self.state.load(Ordering::SeqCst));
            if e != seen {
                slot.sleeping.store(false, Ordering::Relaxed);
                return e;
            }
            thread::park();
        }
    }

    /// Joins region `epoch` if it is still open; false if it is over.
    fn join(&self, epoch: u32) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if epoch_of(s) != epoch || s & CLOSED != 0 {
                return false;
            }
            match self.state.compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }
}

fn worker(sh: &Shared, index: usize) {
    IN_POOL.set(true);
    let slot = &sh.slots[index - 1];
    let mut seen = 0;
    loop {
        seen = sh.wait(seen, slot);
        if sh.shutdown.load(Ordering::Acquire) {
            return;
        }
        if !sh.join(seen) {
            continue;
        }
        // SAFETY: joined, so the region is in flight and `job` is its job
        // (published by the release store that the acquire CAS read from);
        // the caller keeps `f` alive until `done` counts this thread, which
        // happens after its last call.
        let job = unsafe { *sh.job.get() };
        sh.work(unsafe { &*job.f }, job.n, index);
        sh.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let sh = &*self.shared;
        sh.shutdown.store(true, Ordering::Release);
        let epoch = epoch_of(sh.state.load(Ordering::Relaxed)).wrapping_add(1);
        sh.state.store(((epoch as u64) << 32) | CLOSED, Ordering::SeqCst);
        for s in &sh.slots {
            if let Some(t) = s.thread.get() {
                t.unpark();
            }
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// Sets the global pool's size (`kiln --threads`); true if this call made
/// it, false if it already existed (then its size stays).
pub fn init(threads: usize) -> bool {
    let mut made = false;
    GLOBAL.get_or_init(|| {
        made = true;
        Pool::new(threads)
    });
    made
}

/// The global pool the CPU backend's ops run on, made on first use with one
/// thread per core (`std::thread::available_parallelism`) unless [`init`]
/// chose otherwise first.
pub fn global() -> &'static Pool {
    GLOBAL.get_or_init(|| Pool::new(thread::available_parallelism().map_or(1, |n| n.get())))
}

/// Threads of the global pool.
pub fn threads() -> usize {
    global().threads()
}

/// `global().run(n_tasks, f)`: `f(task, thread)` for every task in `0..n_tasks`.
pub fn run(n_tasks: usize, f: impl Fn(usize, usize) + Sync) {
    global().run(n_tasks, &f)
}

/// A raw pointer that may cross threads; users guarantee disjoint access.
struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: used only by `for_each_chunk_mut`, `map` and `map_mut`, whose
// tasks touch disjoint elements.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

/// Calls `f(i, chunk)` for each `chunk`-element piece of `data` (the last
/// one may be shorter), `i` its index, in parallel on the global pool: the
/// pool's `par_chunks_mut().enumerate()`. Consecutive chunks are grouped
/// into tasks, about 16 per thread, so tiny chunks do not each pay for a
/// hand-out. Panics if `chunk` is 0.
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    assert!(chunk > 0, "for_each_chunk_mut: chunk of 0 elements");
    let len = data.len();
    let n_chunks = len.div_ceil(chunk);
    let pool = global();
    let group = n_chunks.div_ceil(pool.threads() * 16).max(1);
    let base = SendPtr(data.as_mut_ptr());
    pool.run(n_chunks.div_ceil(group), &|t, _| {
        let base = base;
        for i in t * group..((t + 1) * group).min(n_chunks) {
            let (a, b) = (i * chunk, ((i + 1) * chunk).min(len));
            // SAFETY: chunk i is data[a..b], in bounds, and no other task
            // touches it; `data` is mutably borrowed for the whole region.
            f(i, unsafe { std::slice::from_raw_parts_mut(base.0.add(a), b - a) });
        }
    });
}

/// `[f(0), f(1), …, f(n - 1)]`, computed in parallel on the global pool.
pub fn map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let mut out: Vec<Option<R>> = (0..n).map(|_| None).collect();
    let p = SendPtr(out.as_mut_ptr());
    global().run(n, &|i, _| {
        let p = p;
        let r = f(i);
        // SAFETY: slot i is in bounds and written by task i only; `out`
        // outlives the region.
        unsafe { *p.0.add(i) = Some(r) };
    });
    out.into_iter().map(|r| r.expect("every task ran")).collect()
}

/// `items.iter_mut().map(f).collect()`, in parallel on the global pool
/// (one task per item).
pub fn map_mut<T: Send, R: Send>(items: &mut [T], f: impl Fn(&mut T) -> R + Sync) -> Vec<R> {
    let p = SendPtr(items.as_mut_ptr());
    map(items.len(), |i| {
        let p = p;
        // SAFETY: item i is in bounds and used by task i only; `items` is
        // mutably borrowed for the whole region.
        f(unsafe { &mut *p.0.add(i) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once_over_many_regions() {
        for threads in [1, 2, 3, 5] {
            let pool = Pool::new(threads);
            assert_eq!(pool.threads(), threads);
            for n in [0usize, 1, 2, 3, 7, 64, 1000] {
                for _ in 0..50 {
                    let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                    let bad_thread = AtomicBool::new(false);
                    pool.run(n, &|t, th| {
                        hits[t].fetch_add(1, Ordering::Relaxed);
                        if th >= threads {
                            bad_thread.store(true, Ordering::Relaxed);
                        }
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "threads {threads} n {n}");
                    assert!(!bad_thread.load(Ordering::Relaxed));
                }
            }
        }
    }

    #[test]
    fn borrows_of_the_caller_are_written_and_visible_after_run() {
        let pool = Pool::new(4);
        for round in 0..2000usize {
            let mut out = vec![0usize; 97];
            let p = SendPtr(out.as_mut_ptr());
            pool.run(out.len(), &|t, _| {
                let p = p;
                // SAFETY: each task writes its own element.
                unsafe { *p.0.add(t) = t * round };
            });
            assert!(out.iter().enumerate().all(|(i, &v)| v == i * round));
        }
    }

    #[test]
    fn nested_regions_run_inline() {
        let pool = Pool::new(3);
        let total = AtomicUsize::new(0);
        pool.run(8, &|_, outer| {
            pool.run(5, &|_, inner| {
                assert_eq!(inner, 0, "a nested region runs on its own thread as thread 0");
                total.fetch_add(1, Ordering::Relaxed);
            });
            assert!(outer < 3);
        });
        assert_eq!(total.load(Ordering::Relaxed), 40);
    }

    #[test]
    fn a_panicking_task_propagates_and_the_pool_still_works() {
        let pool = Pool::new(3);
        for victim in [0usize, 5, 99] {
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.run(100, &|t, _| {
                    if t == victim {
                        panic!("task {t} failed");
                    }
                })
            }));
            let msg = r.expect_err("the panic reaches the caller");
            assert_eq!(msg.downcast_ref::<String>().map(String::as_str), Some(format!("task {victim} failed").as_str()));
            let n = AtomicUsize::new(0);
            pool.run(10, &|_, _| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(n.load(Ordering::Relaxed), 10);
        }
    }

    #[test]
    fn concurrent_callers_take_turns() {
        let pool = Pool::new(2);
        let sum = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        pool.run(16, &|t, _| {
                            sum.fetch_add(t, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4 * 200 * (0..16).sum::<usize>());
    }

    #[test]
    fn parked_workers_wake_up() {
        let pool = Pool::new(3);
        for _ in 0..3 {
            // well past the spin budget: the workers are parked
            thread::sleep(Duration::from_millis(5));
            let seen = Mutex::new(std::collections::HashSet::new());
            pool.run(3000, &|_, th| {
                seen.lock().unwrap().insert(th);
                thread::sleep(Duration::from_micros(2));
            });
            assert!(!seen.lock().unwrap().is_empty());
        }
        drop(pool);
    }

    #[test]
    fn map_and_map_mut_keep_order() {
        assert_eq!(map(0, |i| i), Vec::<usize>::new());
        assert_eq!(map(100, |i| i * i), (0..100).map(|i| i * i).collect::<Vec<_>>());
        let mut v: Vec<String> = (0..50).map(|i| i.to_string()).collect();
        let lens = map_mut(&mut v, |s| {
            s.push('!');
            s.len()
        });
        assert_eq!(lens, (0..50).map(|i: usize| i.to_string().len() + 1).collect::<Vec<_>>());
        assert!(v.iter().all(|s| s.ends_with('!')));
    }

    #[test]
    fn chunks_cover_the_slice() {
        for (len, chunk) in [(0usize, 3usize), (1, 3), (10, 3), (10000, 7), (4096, 4096)] {
            let mut v = vec![0usize; len];
            for_each_chunk_mut(&mut v, chunk, |i, c| {
                assert!(c.len() <= chunk);
                c.iter_mut().enumerate().for_each(|(j, x)| *x = i * chunk + j + 1);
            });
            assert!(v.iter().enumerate().all(|(i, &x)| x == i + 1), "len {len} chunk {chunk}");
        }
    }
}
