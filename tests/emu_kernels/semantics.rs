//! The emulator's CUDA semantics, with the self-test kernels of
//! kernels/host_emu/emu_selftest.cu against closed forms computed here.
use super::support::*;
use rand::Rng;

#[test]
fn block_sum_and_warp_sum_match_a_plain_sum() {
    let mut r = rng("block_sum");
    // Small integers: every summation order gives the exact sum.
    for (rows, n, block) in [(5usize, 1000usize, 256u32), (3, 37, 64), (2, 4096, 1024), (1, 1, 32)] {
        let x: Vec<f32> = (0..rows * n).map(|_| r.gen_range(-50i32..50) as f32).collect();
        let warps = block as usize / 32;
        let (mut out, mut wout, mut dx) = (Mem::filled(rows * 4, 0xff), Mem::filled(rows * warps * 4, 0xff), Mem::from(&x));
        run("emu_selftest_block_sum", dims((rows as u32, 1, 1), block, 0), &[out.addr(), wout.addr(), dx.addr(), n as u64]).unwrap();
        let (got, got_w) = (out.read::<f32>(), wout.read::<f32>());
        for row in 0..rows {
            let xs = &x[row * n..(row + 1) * n];
            assert_eq!(got[row], xs.iter().sum::<f32>(), "rows {rows} n {n} block {block}: row {row}");
            for w in 0..warps {
                let want: f32 = xs.iter().skip(32 * w).take(32).sum();
                assert_eq!(got_w[row * warps + w], want, "warp {w} of row {row}");
            }
        }
    }
}

/// What lane `lane` of warp `warp` receives, by CUDA's rules (Programming
/// Guide, "Warp Shuffle Functions"): value v(l) = 10 l + warp.
fn shuffle_expected(lane: i32, warp: i32) -> [i32; 12] {
    let v = |l: i32| 10 * l + warp;
    let seg = |w: i32| lane / w * w; // first lane of the width-w segment
    let up = |d: i32, w: i32| if lane - d < seg(w) { v(lane) } else { v(lane - d) };
    let down = |d: i32, w: i32| if lane + d >= seg(w) + w { v(lane) } else { v(lane + d) };
    let xor = |m: i32, w: i32| if (lane ^ m) >= seg(w) + w { v(lane) } else { v(lane ^ m) };
    let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |b, l| b | 1 << l) as i32;
    [xor(1, 32), xor(16, 32), up(3, 32), down(5, 32), v(7), xor(2, 8), up(1, 8), down(2, 8), v(seg(8) + 1), ballot, 1, 1]
}

#[test]
fn warp_shuffles_follow_cuda_lane_rules() {
    let threads = 96;
    let mut out = Mem::filled(threads * 12 * 4, 0xff);
    run("emu_selftest_warp_shuffles", dims((1, 1, 1), threads as u32, 0), &[out.addr()]).unwrap();
    let got = out.read::<i32>();
    for t in 0..threads as i32 {
        let want = shuffle_expected(t % 32, t / 32);
        assert_eq!(&got[t as usize * 12..(t as usize + 1) * 12], &want, "thread {t}");
    }
}

#[test]
fn shfl_up_scan_is_a_prefix_sum() {
    let mut r = rng("scan");
    for (blocks, block) in [(3usize, 1024usize), (2, 96), (1, 32)] {
        let x: Vec<u64> = (0..blocks * block).map(|_| r.gen_range(0..1u64 << 40)).collect();
        let (mut out, mut dx) = (Mem::filled(x.len() * 8, 0xff), Mem::from(&x));
        run("emu_selftest_scan", dims((blocks as u32, 1, 1), block as u32, 0), &[out.addr(), dx.addr()]).unwrap();
        let got = out.read::<u64>();
        for b in 0..blocks {
            let mut acc = 0u64;
            for i in b * block..(b + 1) * block {
                acc += x[i];
                assert_eq!(got[i], acc, "block {b} thread {}", i - b * block);
            }
        }
    }
}

#[test]
fn dynamic_shared_memory_is_the_blocks_own() {
    let (blocks, n) = (4usize, 300usize);
    let mut init = vec![-1i32; blocks * n];
    init.push(1); // cleared by the kernel if the buffer was misaligned
    let mut out = Mem::from(&init);
    run("emu_selftest_dynamic_smem", dims((blocks as u32, 1, 1), 64, (n * 4) as u32), &[out.addr(), n as u64]).unwrap();
    let got = out.read::<i32>();
    for b in 0..blocks {
        for i in 0..n {
            assert_eq!(got[b * n + i], 3 * (n - 1 - i) as i32 + b as i32, "block {b} element {i}");
        }
    }
    assert_eq!(got[blocks * n], 1, "dynamic shared memory not 16-byte aligned");
}

#[test]
fn atomics_add_up_across_blocks_and_os_threads() {
    let (blocks, block) = (257u64, 128u64);
    let total = blocks * block;
    let (mut sum, mut count, mut half, mut hist) = (Mem::from(&[0u64]), Mem::from(&[0i32]), Mem::from(&[0f32]), Mem::from(&[0u32; 16]));
    run("emu_selftest_atomics", dims((blocks as u32, 1, 1), block as u32, 0), &[sum.addr(), count.addr(), half.addr(), hist.addr()]).unwrap();
    assert_eq!(sum.read::<u64>()[0], total * (total + 1) / 2);
    assert_eq!(count.read::<i32>()[0] as u64, total);
    assert_eq!(half.read::<f32>()[0], total as f32 / 2.0); // exact: < 2^24 halves
    assert_eq!(hist.read::<u32>(), vec![(total / 16) as u32; 16]);
}

/// Set in the child process that the abort test starts.
const ABORT_CASE: &str = "KILN_EMU_ABORT_CASE";

/// In the child: launches the self-test kernel named by KILN_EMU_ABORT_CASE
/// over a (3, 2) grid, which must abort the process. Without the variable it
/// does nothing (it is a test only so that the harness can run it).
#[test]
fn abort_child() {
    let Ok(case) = std::env::var(ABORT_CASE) else { return };
    let mut out = Mem::filled(64 * 4, 0);
    let grid = (3, 2, 1);
    let r = match case.as_str() {
        "smem_overrun" => run("emu_selftest_smem_overrun", dims(grid, 32, 64), &[16]),
        name => run(&format!("emu_selftest_{name}"), dims(grid, 64, 0), &[out.addr()]),
    };
    panic!("{case}: the launch returned {r:?} instead of aborting");
}

#[test]
fn divergent_synchronisation_aborts_naming_block_and_thread() {
    let cases = [
        ("divergent_barrier", &["block (2,1,0), thread (16,0,0)", "barrier in divergent code", "emu_selftest.cu:"][..]),
        ("barrier_after_exit", &["block (2,1,0), thread (0,0,0)", "thread (5,0,0) has exited"][..]),
        ("shuffle_after_exit", &["block (2,1,0), thread (8,0,0)", "__shfl_xor_sync", "lane 7 of warp 0, which has exited"][..]),
        ("smem_overrun", &["block (2,1,0)", "past the end of the 64 bytes of dynamic shared memory"][..]),
    ];
    for (case, wants) in cases {
        let o = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "emu::semantics::abort_child", "--nocapture", "--test-threads=1"])
            .env(ABORT_CASE, case)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(o.status.signal(), Some(6), "{case}: not SIGABRT ({:?}); stderr:\n{err}", o.status);
        }
        assert!(!o.status.success(), "{case} did not fail");
        let line = err.lines().find(|l| l.starts_with("kiln emulator:")).unwrap_or_else(|| panic!("{case}: no emulator message in:\n{err}"));
        assert!(line.contains(&format!("kernel emu_selftest_{case}")), "{case}: {line}");
        for w in wants {
            assert!(line.contains(w), "{case}: {w:?} missing from {line:?}");
        }
    }
}
